"""Launch the crossview_ros localizer with its parameter file.

    ros2 launch crossview_ros localize.launch.py tile_set:=/data/tiles model:=/data/model

Arguments override the parameter file; every parameter is documented in config/localize.yaml.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(
        get_package_share_directory("crossview_ros"), "config", "localize.yaml"
    )
    args = [
        DeclareLaunchArgument("tile_set", description="tile set directory (crossview-tiles build)"),
        DeclareLaunchArgument("model", default_value="", description="exported model directory"),
        DeclareLaunchArgument("config", default_value=default_config, description="parameter file"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
    ]
    node = Node(
        package="crossview_ros",
        executable="localize_node",
        name="crossview_localizer",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("config"),
            {
                "tile_set": LaunchConfiguration("tile_set"),
                "model": LaunchConfiguration("model"),
                "use_sim_time": LaunchConfiguration("use_sim_time"),
            },
        ],
    )
    return LaunchDescription([*args, node])
