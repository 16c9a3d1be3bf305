"""Launch the crossview_ros localizer with its parameter file.

    ros2 launch crossview_ros localize.launch.py tile_set:=/data/tiles model:=/data/model
    ros2 launch crossview_ros localize.launch.py tile_set:=... model:=... config:=my.yaml namespace:=robot1

tile_set and model are required and override the parameter file; every other parameter, with
its unit and default, is documented in config/localize.yaml (copy it, edit it, pass config:=).
The file's key `/**/crossview_localizer` matches the node in any namespace. Without `ros2 launch`
the same is: localize_node --ros-args --params-file FILE -p tile_set:=DIR -p model:=DIR.
test/test_launch.py checks that this file sets only parameters the node declares.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("crossview_ros"), "config", "localize.yaml")
    args = [
        DeclareLaunchArgument("tile_set", description="tile set folder (crossview-tiles build + encode)"),
        DeclareLaunchArgument("model", description="exported model folder that encoded the tile set"),
        DeclareLaunchArgument("config", default_value=default_config, description="parameter file"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace (one per robot)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
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
                # value_type keeps a path such as "2024" a string and "false" a bool.
                "tile_set": ParameterValue(LaunchConfiguration("tile_set"), value_type=str),
                "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
    )
    return LaunchDescription([*args, node])
