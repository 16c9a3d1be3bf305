"""rosbag2 (MCAP) writing, replay and evaluation reports."""
