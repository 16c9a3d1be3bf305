"""rosbag2 files: the drive bag's format and writer (writer), any recording read through a topic
mapping, MCAP or sqlite3 (topics, drive), and a simulated drive rewritten as a robot's recording (foreign)."""
