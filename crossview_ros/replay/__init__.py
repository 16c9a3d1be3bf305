"""crossview-replay: a drive bag played through the real localize_node, its outputs evaluated.

Modules: cli (replay_bag, the command line), player (the ROS 2 side: publish, record, play),
node_process (the node as a child process that dies with the replay), files (outputs.mcap,
frames.csv). Beneath them, outside this package so that the report can use them without the
tools: crossview_ros.bag.drive (the drive bag read once), crossview_ros.replay_evaluation (what
was recorded, judged against ground truth) and crossview_ros.replay_errors. The names below are
the replay's interface: `from crossview_ros.replay import X`.
"""

from crossview_ros.bag.drive import DriveBag, FixSample, read_bag
from crossview_ros.bag.topics import TopicMap, TruthFrame
from crossview_ros.replay.cli import ReplayResult, build_parser, main, replay_bag
from crossview_ros.replay.files import write_frames_csv, write_outputs_mcap
from crossview_ros.replay.node_process import NodeProcess, node_command
from crossview_ros.replay.player import play
from crossview_ros.replay_errors import (
    EXIT_FAILURE, EXIT_OK, EXIT_USAGE, BagError, NodeError, ReplayError, UsageError,
)
from crossview_ros.replay_evaluation import (
    OUTPUT_TOPICS, Evaluation, FrameRecord, Playback, Received, decode_outputs, default_fusion_config, evaluate,
    find_ekf_config,
)

__all__ = [
    "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "OUTPUT_TOPICS", "BagError", "DriveBag", "Evaluation", "FixSample",
    "FrameRecord", "NodeError", "NodeProcess", "Playback", "Received", "ReplayError", "ReplayResult", "TopicMap",
    "TruthFrame", "UsageError", "build_parser", "decode_outputs", "default_fusion_config", "evaluate",
    "find_ekf_config", "main", "node_command", "play", "read_bag", "replay_bag", "write_frames_csv",
    "write_outputs_mcap",
]
