"""Which topic of a recording is which input: the topic mapping of the replay, crossview-localize --bag
and the calibration (docs/recordings.md).

A mapping names, per role, the topic that carries it:

| role            | message types                                                   | needed            |
|-----------------|-----------------------------------------------------------------|-------------------|
| `panorama`      | sensor_msgs/Image (rgb8, bgr8, mono8) or CompressedImage        | yes               |
| `fix`           | sensor_msgs/NavSatFix                                           | yes               |
| `odom`          | nav_msgs/Odometry                                               | no                |
| `truth`         | NavSatFix (e.g. RTK), or Odometry / PoseStamped / PoseWithCovarianceStamped in `truth_frame` | no |
| `truth_heading` | Odometry / PoseStamped / PoseWithCovarianceStamped in `truth_frame` (yaw only) | no |
| `datum`         | std_msgs/String, the simulator's /crossview/datum JSON          | no                |

The defaults are the simulator's topics (crossview_ros.bag.writer), so a simulated drive needs no
mapping. A role the user names (flag or file) must be in the bag; a default that is not there is
simply absent (no odometry, no truth: the truth-free report; no datum: the first valid fix's).
The message type is read from the bag: a raw or a compressed panorama, a NavSatFix or a pose as truth.
`none` (YAML null) switches a role off. Frames of pose-type truth: `utm` (the datum's zone, or
`utm:33N`) or `enu:LAT,LON[,YAW_DEG]`, a local frame with its origin at LAT, LON whose x axis points
YAW_DEG counter-clockwise from east (0: x east, y north; 90: x north, y west).

Cameras that are not 360° replace the panorama: `--cameras FILE` (a rig file, crossview_ros.bag.rig)
names each camera's mount and topics; their images make the frames (crossview_ros.bag.captures) and
the panorama role is off.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.config import read_yaml
from crossview_ros.bag.rig import RigSpec, load_rig_file, resolve_cameras
from crossview_ros.bag.writer import (
    MSG_CAMERA_INFO, MSG_COMPRESSED, MSG_NAVSAT, MSG_ODOM, MSG_POSE, MSG_STRING, TOPIC_DATUM, TOPIC_GNSS, TOPIC_GT_FIX,
    TOPIC_GT_POSE, TOPIC_ODOM, TOPIC_PANORAMA,
)
from crossview_ros.replay_errors import BagError

MSG_IMAGE = "sensor_msgs/msg/Image"
MSG_POSE_COV = "geometry_msgs/msg/PoseWithCovarianceStamped"
POSE_TYPES = (MSG_ODOM, MSG_POSE, MSG_POSE_COV)
ROLE_TYPES: dict[str, tuple[str, ...]] = {
    "panorama": (MSG_IMAGE, MSG_COMPRESSED),
    "fix": (MSG_NAVSAT,),
    "odom": (MSG_ODOM,),
    "truth": (MSG_NAVSAT, *POSE_TYPES),
    "truth_heading": POSE_TYPES,
    "datum": (MSG_STRING,),
}
REQUIRED_ROLES = ("panorama", "fix")
FLAGS = {"panorama": "--panorama-topic", "fix": "--fix-topic", "odom": "--odom-topic", "truth": "--truth-topic",
         "truth_heading": "--truth-heading-topic", "datum": "--datum-topic", "truth_frame": "--truth-frame"}
FILE_KEYS = (*ROLE_TYPES, "truth_frame")
OFF = "none"  # a flag value that switches a role off
CAMERAS_FLAG = "--cameras"
IMAGE_ROLE, INFO_ROLE = "image:", "camera_info:"  # + a camera's name: the roles of its topics
DOC = "docs/recordings.md"


@dataclass(frozen=True)
class TruthFrame:
    """The frame of a pose-type truth: UTM (zone None = the datum's) or a local ENU frame anchored at a
    latitude/longitude whose x axis points yaw_deg counter-clockwise from east."""

    kind: str  # "utm" | "enu"
    zone: geo.UTMZone | None = None
    lat_deg: float = 0.0
    lon_deg: float = 0.0
    yaw_deg: float = 0.0

    @classmethod
    def parse(cls, value: Any) -> TruthFrame:
        """From `utm`, `utm:33N`, `enu:LAT,LON[,YAW_DEG]` (or a YAML mapping with the same keys); BagError."""
        if isinstance(value, TruthFrame):
            return value
        if isinstance(value, Mapping):
            value = _frame_text(value)
        text = str(value).strip()
        kind, _, rest = text.partition(":")
        kind = kind.strip().lower()
        try:
            if kind == "utm":
                return cls("utm", geo.UTMZone.parse(rest) if rest.strip() else None)
            if kind == "enu":
                parts = [float(v) for v in rest.split(",")]
                if len(parts) not in (2, 3) or not all(math.isfinite(v) for v in parts):
                    raise ValueError("needs LAT,LON[,YAW_DEG]")
                geo.check_latlon(parts[0], parts[1])
                return cls("enu", None, parts[0], parts[1], parts[2] if len(parts) == 3 else 0.0)
        except (ValueError, geo.GeoError) as exc:
            raise BagError(f"truth frame {text!r}: {exc}; write utm, utm:33N or enu:LAT,LON[,YAW_DEG] "
                           f"({DOC})") from None
        raise BagError(f"truth frame {text!r} is neither utm[:ZONE] nor enu:LAT,LON[,YAW_DEG] ({DOC})")

    def __str__(self) -> str:
        if self.kind == "utm":
            return "utm" if self.zone is None else f"utm:{self.zone}"
        return f"enu:{self.lat_deg!r},{self.lon_deg!r},{self.yaw_deg!r}"

    def to_geodetic(self, x_m: np.ndarray, y_m: np.ndarray, yaw_rad: np.ndarray,
                    datum_zone: geo.UTMZone) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions and yaws in this frame -> latitude, longitude (deg) and ENU yaw (rad) at each."""
        x_m, y_m, yaw_rad = (np.asarray(v, dtype=np.float64) for v in (x_m, y_m, yaw_rad))
        if self.kind == "utm":
            zone = self.zone or datum_zone
            lat, lon = geo.utm_to_latlon(x_m, y_m, zone)
            yaw = geo.yaw_utm_to_enu(yaw_rad, lat, lon, zone)
        else:
            a = math.radians(self.yaw_deg)
            east = math.cos(a) * x_m - math.sin(a) * y_m
            north = math.sin(a) * x_m + math.cos(a) * y_m
            lat, lon, _ = geo.LocalENU(self.lat_deg, self.lon_deg).inverse(east, north)
            yaw = geo.wrap_angle_rad(yaw_rad + a)
        return np.asarray(lat, np.float64), np.asarray(lon, np.float64), np.asarray(yaw, np.float64)


def _frame_text(value: Mapping) -> str:
    """A YAML mapping {type: utm, zone: 33N} / {type: enu, lat_deg, lon_deg, yaw_deg} as the flag's text."""
    kind = str(value.get("type", "")).lower()
    if kind == "utm":
        return f"utm:{value['zone']}" if value.get("zone") else "utm"
    try:
        return f"enu:{value['lat_deg']},{value['lon_deg']},{value.get('yaw_deg', 0.0)}"
    except KeyError as exc:
        raise BagError(f"truth_frame {dict(value)} needs type utm (and zone) or type enu with lat_deg, lon_deg "
                       f"(and yaw_deg): {exc} is missing") from None


@dataclass(frozen=True)
class TopicMap:
    """Topic per role (None: switched off) and the truth frame; `given` holds the roles the user named,
    which must then be in the bag (a default that is missing is just absent)."""

    panorama: str = TOPIC_PANORAMA
    fix: str = TOPIC_GNSS
    odom: str | None = TOPIC_ODOM
    truth: str | None = TOPIC_GT_FIX
    truth_heading: str | None = TOPIC_GT_POSE
    datum: str | None = TOPIC_DATUM
    truth_frame: TruthFrame = field(default_factory=lambda: TruthFrame("utm"))
    given: frozenset[str] = frozenset()
    cameras: RigSpec | None = None  # --cameras: the frames are these cameras' captures, not panoramas

    def updated(self, values: Mapping[str, Any], source: str) -> TopicMap:
        """This mapping with `values` (role -> topic, None/"none" = off; truth_frame) set and marked given."""
        unknown = sorted(set(values) - set(FILE_KEYS))
        if unknown:
            raise BagError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(FILE_KEYS)} ({DOC})")
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key == "truth_frame":
                changes[key] = TruthFrame.parse(value)
                continue
            topic = None if value is None or str(value).strip().lower() in (OFF, "") else str(value).strip()
            if topic is None and key in REQUIRED_ROLES:
                raise BagError(f"{source}: the {key} topic cannot be switched off")
            if topic is not None and not topic.startswith("/"):
                topic = "/" + topic  # bags store absolute names
            changes[key] = topic
        return replace(self, **changes, given=self.given | set(changes))

    def to_dict(self) -> dict[str, Any]:
        """The mapping as the YAML file writes it (summary.json carries it too)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name in ROLE_TYPES}
        out["truth_frame"] = str(self.truth_frame)
        if self.cameras is not None:
            out["cameras"] = self.cameras.to_dict()["cameras"]
        return out


def load_topic_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping file (--topics): a flat mapping of FILE_KEYS; BagError saying what is wrong."""
    path = Path(path)
    data = read_yaml(path, "--topics", BagError)
    if not isinstance(data, dict):
        raise BagError(f"--topics {path} must hold a mapping such as 'panorama: /camera/image/compressed' ({DOC})")
    return data


def add_topic_arguments(parser: argparse.ArgumentParser) -> None:
    """The mapping flags, the same on crossview-replay and crossview-localize --bag."""
    g = parser.add_argument_group("recording topics (docs/recordings.md; defaults: the simulator's topics)")
    g.add_argument("--topics", metavar="FILE", help="YAML topic mapping (keys: " + ", ".join(FILE_KEYS)
                   + "); flags below override it")
    g.add_argument("--panorama-topic", metavar="TOPIC",
                   help=f"sensor_msgs/Image or CompressedImage, 360-degree equirectangular (default {TOPIC_PANORAMA})")
    g.add_argument("--fix-topic", metavar="TOPIC", help=f"sensor_msgs/NavSatFix of the GNSS (default {TOPIC_GNSS})")
    g.add_argument("--odom-topic", metavar="TOPIC", help=f"nav_msgs/Odometry, or none (default {TOPIC_ODOM} if there)")
    g.add_argument("--truth-topic", metavar="TOPIC",
                   help="ground truth: NavSatFix (e.g. RTK) or Odometry/PoseStamped in --truth-frame; none = run "
                        f"without truth (default {TOPIC_GT_FIX} if there)")
    g.add_argument("--truth-heading-topic", metavar="TOPIC",
                   help=f"true yaw from an Odometry/PoseStamped in --truth-frame, or none (default {TOPIC_GT_POSE} "
                        "if there; a pose-type --truth-topic gives its own)")
    g.add_argument("--truth-frame", metavar="FRAME",
                   help="frame of pose-type truth: utm (the datum's zone), utm:33N, or enu:LAT,LON[,YAW_DEG] (a "
                        "local frame at LAT, LON whose x axis points YAW_DEG counter-clockwise from east)")
    g.add_argument("--datum-topic", metavar="TOPIC",
                   help=f"the simulator's datum JSON, or none (default {TOPIC_DATUM} if there; without it the datum "
                        "is the first valid fix)")
    g.add_argument(CAMERAS_FLAG, metavar="FILE",
                   help="cameras that are not 360 degrees instead of the panorama: a rig file (YAML, cameras: {NAME: "
                        "{height_m, x_m, y_m, yaw_deg, pitch_deg, roll_deg, image_topic, info_topic}}); intrinsics "
                        "from the bag's CameraInfo; needs a bev model (crossview-sim drive --cameras writes "
                        "BAG/cameras.yaml)")


def topic_map_from_args(args: argparse.Namespace) -> TopicMap:
    """The defaults, then the --topics file, then the flags; BagError for a bad file or value."""
    mapping = TopicMap()
    if getattr(args, "topics", None):
        mapping = mapping.updated(load_topic_file(args.topics), f"--topics {args.topics}")
    flags = {role: getattr(args, flag[2:].replace("-", "_"), None) for role, flag in FLAGS.items()}
    mapping = mapping.updated({k: v for k, v in flags.items() if v is not None}, "flags")
    if getattr(args, "cameras", None):
        mapping = replace(mapping, cameras=load_rig_file(args.cameras))
    return mapping


def describe_topics(bag_topics: Mapping[str, str]) -> str:
    """'/a (Type), /b (Type)' for an error line."""
    return ", ".join(f"{t} ({m.split('/')[-1]})" for t, m in sorted(bag_topics.items())) or "none"


def resolve(mapping: TopicMap, bag_topics: Mapping[str, str], path: Path) -> dict[str, str]:
    """role -> topic of the roles this bag has; BagError (one line naming the bag's topics) when a needed
    or named topic is missing or of a type that role does not take."""
    roles: dict[str, str] = {}
    if mapping.cameras is not None and "panorama" in mapping.given:
        raise BagError(f"{CAMERAS_FLAG} takes the frames from the rig's cameras: give no panorama topic with it")
    for role, types in ROLE_TYPES.items():
        topic = getattr(mapping, role)
        if topic is None or (role == "panorama" and mapping.cameras is not None):
            continue
        how = f"given by {FLAGS[role]}/--topics" if role in mapping.given else "the default"
        if topic not in bag_topics:
            if role in REQUIRED_ROLES or role in mapping.given:
                raise BagError(f"bag {path} has no {role} topic {topic} ({how}); its topics: "
                               f"{describe_topics(bag_topics)}; map them with {FLAGS[role]} or --topics FILE ({DOC})")
            continue
        if bag_topics[topic] not in types:
            raise BagError(f"bag {path}: {role} topic {topic} is {bag_topics[topic]}, expected "
                           f"{' or '.join(types)} ({how}); its topics: {describe_topics(bag_topics)} ({DOC})")
        roles[role] = topic
    for role in ("truth", "truth_heading"):
        if (role in roles and role in mapping.given and bag_topics[roles[role]] in POSE_TYPES
                and "truth_frame" not in mapping.given):
            raise BagError(f"bag {path}: {role} topic {roles[role]} is a pose ({bag_topics[roles[role]]}): say its "
                           f"frame with --truth-frame utm | utm:ZONE | enu:LAT,LON[,YAW_DEG] ({DOC})")
    if mapping.cameras is not None:
        found = resolve_cameras(mapping.cameras, bag_topics, path, ROLE_TYPES["panorama"], MSG_CAMERA_INFO)
        for name, (image, info) in found.items():
            roles[IMAGE_ROLE + name], roles[INFO_ROLE + name] = image, info
    return roles
