"""crossview_ros: GNSS correction by ground-to-aerial image matching for ROS 2.

The runtime library (geodesy, tile sets, descriptor search, engines, localizer) and the
ROS 2 nodes. Nothing here imports torch or the offline training package.
"""

__version__ = "0.1.0"
