"""The drive bag format: a rosbag2 (MCAP) that the node and replay read like a real one.

This module is the format layer and knows nothing of where the data come from: the topic,
frame and QoS constants, the ROS messages built from plain numbers (DriveMessages), an atomic
writer of a stream of (topic, stamp, message) (write_bag) and a reader that summarises a bag
(read_drive_bag). The simulator turns a drive into such a stream (its own module, not this one).

The bag goes through the `rosbags` library (no ROS install needed) with the newest ROS 2 message
definitions it ships that match our target distribution (Kilted, else Jazzy; the message layouts
used here are the same in both). It is written inside a hidden temporary directory next to the
target and renamed into place, so a crash never leaves a half-written bag that later opens.

Topics (header stamp = bag log time = Unix time of the sample):

| topic                  | type                            | frame_id (child)     | rate           |
|------------------------|---------------------------------|----------------------|----------------|
| `/crossview/datum`     | std_msgs/msg/String             | -                    | once, first    |
| `/panorama/compressed` | sensor_msgs/msg/CompressedImage | `camera`             | drive rate_hz  |
| `/gnss/fix`            | sensor_msgs/msg/NavSatFix       | `gnss`               | GNSS rate_hz   |
| `/odom`                | nav_msgs/msg/Odometry           | `odom` (`base_link`) | odometry rate  |
| `/ground_truth/pose`   | geometry_msgs/msg/PoseStamped   | `utm`                | drive rate_hz  |
| `/ground_truth/fix`    | sensor_msgs/msg/NavSatFix       | `base_link`          | drive rate_hz  |
| `/N/image/compressed`  | sensor_msgs/msg/CompressedImage | `N`                  | drive rate_hz  |
| `/N/camera_info`       | sensor_msgs/msg/CameraInfo      | `N`                  | drive rate_hz  |

- `/crossview/datum`: JSON with datum_lat_deg, datum_lon_deg, seed, utm_zone, the caller's other
  keys, and a `bag` block (format, version, topics, frames, drive config, GNSS model).
- `/panorama/compressed`: format "jpeg", equirectangular, column 0 = camera forward.
- `/gnss/fix`: the receiver's fix, status FIX, covariance DIAGONAL_KNOWN from the reported sigma
  (east, north, up). Dropouts: no message, or, when the GNSS model publishes them,
  STATUS_NO_FIX with NaN latitude/longitude/altitude and covariance type UNKNOWN.
- `/odom`: dead-reckoned pose of base_link in odom, twist in base_link, covariances.
- `/ground_truth/pose`: x = UTM easting, y = northing in the datum's zone, z = 0, yaw against
  the UTM grid.
- `/ground_truth/fix`: true latitude/longitude, status FIX, covariance type UNKNOWN (exact).
- `/N/image/compressed`, `/N/camera_info` (only with `crossview-sim drive --cameras RIG`): camera N of
  the rig, its JPEG view of each panorama and its CameraInfo, at the panorama's stamp; the rig file of
  their mounts is written beside metadata.yaml (crossview_ros.bag.rig.RIG_SIDECAR).

Frames: the camera, the GNSS antenna and base_link coincide in the horizontal plane (no lever
arms; no /tf is written). `utm` is the UTM grid of the zone in the datum message; its yaw
differs from ENU yaw by the grid convergence (geo.yaw_enu_to_utm). Odometry variances of what
a planar odometry does not observe (z, roll, pitch and their rates) are UNOBSERVED_VARIANCE.
The datum message is offered with transient-local durability so that `ros2 bag play` latches it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from crossview_ros.atomic import staging_dir
from crossview_ros.geo import matrix_to_navsat_cov

FORMAT = "crossview_ros.drive_bag"
FORMAT_VERSION = 1

TOPIC_DATUM = "/crossview/datum"
TOPIC_PANORAMA = "/panorama/compressed"
TOPIC_GNSS = "/gnss/fix"
TOPIC_ODOM = "/odom"
TOPIC_GT_POSE = "/ground_truth/pose"
TOPIC_GT_FIX = "/ground_truth/fix"

MSG_STRING = "std_msgs/msg/String"
MSG_COMPRESSED = "sensor_msgs/msg/CompressedImage"
MSG_NAVSAT = "sensor_msgs/msg/NavSatFix"
MSG_ODOM = "nav_msgs/msg/Odometry"
MSG_POSE = "geometry_msgs/msg/PoseStamped"
MSG_CAMERA_INFO = "sensor_msgs/msg/CameraInfo"

TOPICS: dict[str, str] = {
    TOPIC_DATUM: MSG_STRING,
    TOPIC_PANORAMA: MSG_COMPRESSED,
    TOPIC_GNSS: MSG_NAVSAT,
    TOPIC_ODOM: MSG_ODOM,
    TOPIC_GT_POSE: MSG_POSE,
    TOPIC_GT_FIX: MSG_NAVSAT,
}

FRAME_CAMERA = "camera"
FRAME_GNSS = "gnss"
FRAME_ODOM = "odom"
FRAME_BASE = "base_link"
FRAME_UTM = "utm"

UNOBSERVED_VARIANCE = 1e6  # variance of odometry dimensions a planar odometry does not measure
LATERAL_SPEED_VARIANCE = 1e-4  # m^2/s^2: wheels do not slide sideways (non-holonomic constraint)
REQUIRED_DATUM_KEYS = ("datum_lat_deg", "datum_lon_deg", "seed")

_ZERO = QosTime(0, 0)  # rmw "unspecified" = the default
QOS_SENSOR = Qos(
    QosHistory.KEEP_LAST,
    10,
    QosReliability.RELIABLE,
    QosDurability.VOLATILE,
    _ZERO,
    _ZERO,
    QosLiveliness.AUTOMATIC,
    _ZERO,
    False,
)
QOS_LATCHED = Qos(
    QosHistory.KEEP_LAST,
    1,
    QosReliability.RELIABLE,
    QosDurability.TRANSIENT_LOCAL,
    _ZERO,
    _ZERO,
    QosLiveliness.AUTOMATIC,
    _ZERO,
    False,
)


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The rosbags typestore used for writing: ROS 2 Kilted if this rosbags has it, else Jazzy."""
    store = getattr(Stores, "ROS2_KILTED", None) or Stores.ROS2_JAZZY
    return get_typestore(store)


def stamp_ns(stamp_s: float) -> int:
    """Unix seconds (float64) -> integer nanoseconds, exact to the float's resolution."""
    sec = math.floor(stamp_s)
    nsec = int(round((stamp_s - sec) * 1e9))
    return int(sec) * 1_000_000_000 + nsec


def datum_document(datum: dict, zone: str) -> dict:
    """The datum document: the caller's keys plus flat datum_lat_deg/datum_lon_deg and utm_zone.

    City.city_json() nests the datum as {"datum": {"lat_deg", "lon_deg"}}; that form is
    accepted and flattened. ValueError if a required key is missing or utm_zone differs."""
    doc = dict(datum)
    nested = doc.get("datum")
    if isinstance(nested, dict):
        doc.setdefault("datum_lat_deg", nested.get("lat_deg"))
        doc.setdefault("datum_lon_deg", nested.get("lon_deg"))
    missing = [k for k in REQUIRED_DATUM_KEYS if doc.get(k) is None]
    if missing:
        raise ValueError(
            f"datum is missing {missing}; it needs {list(REQUIRED_DATUM_KEYS)} "
            "(or City.city_json()'s datum block) and may hold more"
        )
    if "utm_zone" in doc and str(doc["utm_zone"]) != zone:
        raise ValueError(
            f"datum utm_zone {doc['utm_zone']!r} differs from the drive's zone {zone}; "
            "plan the drive in the city's zone"
        )
    doc["utm_zone"] = zone
    return doc


def check_target(path: Path, overwrite: bool) -> None:
    """FileExistsError if a bag would replace `path` without overwrite=True."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another path")


def write_bag(path: str | Path, messages: Iterable[tuple[str, int, Any]], *, overwrite: bool = False,
              topics: Mapping[str, str] | None = None, sidecars: Mapping[str, str] | None = None) -> Path:
    """Write (topic, stamp_ns, message) in order as an MCAP bag with the connections of `topics`
    (topic -> message type; default TOPICS). A message is a typestore message or its CDR bytes.

    The stream may be a generator (messages built while the bag is written); an exception
    from it leaves no bag behind. The stamp is the log time. sidecars: file name -> text, written
    beside metadata.yaml (a rig file). Returns the bag directory (`<path>/<name>.mcap` + metadata.yaml)."""
    path = Path(path)
    check_target(path, overwrite)
    with staging_dir(path) as work:  # a killed run's leftover is removed by the next
        bag = work / path.name  # the MCAP file inside is named after this directory
        _write(bag, messages, dict(TOPICS if topics is None else topics))
        for name, text in (sidecars or {}).items():
            (bag / name).write_text(text, encoding="utf-8")
        if path.exists():
            os.replace(path, work / "replaced")
        os.replace(bag, path)
    return path


def _write(bag: Path, messages: Iterable[tuple[str, int, Any]], topics: Mapping[str, str]) -> None:
    ts = typestore()
    with Writer(bag, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {
            topic: writer.add_connection(
                topic,
                msgtype,
                typestore=ts,
                offered_qos_profiles=[QOS_LATCHED if topic == TOPIC_DATUM else QOS_SENSOR],
            )
            for topic, msgtype in topics.items()
        }
        for topic, t_ns, msg in messages:
            raw = bytes(msg) if isinstance(msg, (bytes, bytearray, memoryview)) else ts.serialize_cdr(msg, topics[topic])
            writer.write(conns[topic], t_ns, raw)


class DriveMessages:
    """Builds the drive bag's ROS messages from plain numbers (SI units, UTM grid yaw)."""

    def __init__(self) -> None:
        self.ts = typestore()
        self.t = self.ts.types
        self.fix_cls = self.t[MSG_NAVSAT]
        self.status_cls = self.t["sensor_msgs/msg/NavSatStatus"]

    def datum(self, datum_json: str) -> Any:
        """The /crossview/datum message."""
        return self.t[MSG_STRING](data=datum_json)

    def header(self, t_ns: int, frame_id: str) -> Any:
        """std_msgs/Header at a stamp in integer nanoseconds."""
        stamp = self.t["builtin_interfaces/msg/Time"](
            sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000
        )
        return self.t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def pose(self, x: float, y: float, yaw_rad: float) -> Any:
        """geometry_msgs/Pose in the plane (z = 0, yaw about z)."""
        half = 0.5 * yaw_rad
        return self.t["geometry_msgs/msg/Pose"](
            position=self.t["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=0.0),
            orientation=self.t["geometry_msgs/msg/Quaternion"](
                x=0.0, y=0.0, z=math.sin(half), w=math.cos(half)
            ),
        )

    def navsat(self, t_ns: int, frame_id: str, lat_lon_alt: tuple, status: int, cov: Any) -> Any:
        """NavSatFix; cov None = covariance type UNKNOWN (zeros), else 3 variances (E, N, U)."""
        known = cov is not None
        return self.fix_cls(
            header=self.header(t_ns, frame_id),
            status=self.status_cls(status=status, service=self.status_cls.SERVICE_GPS),
            latitude=float(lat_lon_alt[0]),
            longitude=float(lat_lon_alt[1]),
            altitude=float(lat_lon_alt[2]),
            position_covariance=np.asarray(
                matrix_to_navsat_cov(np.diag(cov)) if known else [0.0] * 9, dtype=np.float64
            ),
            position_covariance_type=(
                self.fix_cls.COVARIANCE_TYPE_DIAGONAL_KNOWN
                if known
                else self.fix_cls.COVARIANCE_TYPE_UNKNOWN
            ),
        )

    def panorama(self, t_ns: int, jpeg: bytes, easting_m: float, northing_m: float, yaw_grid_rad: float,
                 lat_deg: float, lon_deg: float) -> dict[str, Any]:
        """A panorama (encoded JPEG) and its ground truth (UTM pose, yaw against the grid;
        latitude/longitude), by topic."""
        return {
            TOPIC_PANORAMA: self.camera_image(t_ns, FRAME_CAMERA, jpeg),
            TOPIC_GT_POSE: self.t[MSG_POSE](
                header=self.header(t_ns, FRAME_UTM),
                pose=self.pose(easting_m, northing_m, yaw_grid_rad),
            ),
            TOPIC_GT_FIX: self.navsat(
                t_ns,
                FRAME_BASE,
                (lat_deg, lon_deg, 0.0),
                self.status_cls.STATUS_FIX,
                None,
            ),
        }

    def camera_image(self, t_ns: int, frame_id: str, jpeg: bytes) -> Any:
        """A camera's view (the panorama's, or a rig camera's) as sensor_msgs/CompressedImage (JPEG)."""
        return self.t[MSG_COMPRESSED](header=self.header(t_ns, frame_id), format="jpeg",
                                      data=np.frombuffer(jpeg, dtype=np.uint8))

    def camera_info(self, t_ns: int, frame_id: str, fields: Mapping[str, Any]) -> Any:
        """sensor_msgs/CameraInfo from width, height, distortion_model, d, k, r, p (CameraModel.camera_info_fields)."""
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        arrays = {key: np.asarray(fields[key], dtype=np.float64) for key in ("d", "k", "r", "p")}
        return self.t[MSG_CAMERA_INFO](header=self.header(t_ns, frame_id), height=int(fields["height"]),
                                       width=int(fields["width"]), distortion_model=str(fields["distortion_model"]),
                                       **arrays, binning_x=0, binning_y=0, roi=roi)

    def fix(self, t_ns: int, lat_lon_alt: tuple | None, sigma_enu_m: Sequence[float] = ()) -> Any:
        """/gnss/fix: lat_lon_alt None = STATUS_NO_FIX (NaN position, covariance UNKNOWN);
        else STATUS_FIX with the diagonal covariance of the 1-sigma (east, north, up)."""
        if lat_lon_alt is None:
            return self.navsat(
                t_ns, FRAME_GNSS, (math.nan,) * 3, self.status_cls.STATUS_NO_FIX, None
            )
        variances = [s**2 for s in sigma_enu_m]
        return self.navsat(t_ns, FRAME_GNSS, lat_lon_alt, self.status_cls.STATUS_FIX, variances)

    def odometry(self, t_ns: int, x_m: float, y_m: float, yaw_rad: float, pose_cov: np.ndarray,
                 speed_mps: float, yaw_rate_radps: float, twist_var: np.ndarray) -> Any:
        """/odom: pose (x, y, yaw) of base_link in odom with its 3 x 3 covariance, twist (speed,
        yaw rate) in base_link with their 2 variances; what a planar odometry does not observe
        gets UNOBSERVED_VARIANCE, the lateral speed LATERAL_SPEED_VARIANCE."""
        cov = np.diag([0.0, 0.0] + [UNOBSERVED_VARIANCE] * 3 + [0.0])
        cov[np.ix_([0, 1, 5], [0, 1, 5])] = pose_cov
        twist_cov = np.diag([twist_var[0], LATERAL_SPEED_VARIANCE] + [UNOBSERVED_VARIANCE] * 3 + [twist_var[1]])
        vec = self.t["geometry_msgs/msg/Vector3"]
        twist = self.t["geometry_msgs/msg/Twist"](
            linear=vec(x=float(speed_mps), y=0.0, z=0.0),
            angular=vec(x=0.0, y=0.0, z=float(yaw_rate_radps)),
        )
        return self.t[MSG_ODOM](
            header=self.header(t_ns, FRAME_ODOM),
            child_frame_id=FRAME_BASE,
            pose=self.t["geometry_msgs/msg/PoseWithCovariance"](
                pose=self.pose(x_m, y_m, float(yaw_rad)),
                covariance=cov.ravel(),
            ),
            twist=self.t["geometry_msgs/msg/TwistWithCovariance"](
                twist=twist, covariance=twist_cov.ravel()
            ),
        )


# --------------------------------------------------------------------------- reading back


@dataclass
class TopicSummary:
    """One topic of a bag: message type, count, header and log stamps."""

    msgtype: str
    count: int
    stamp_ns: np.ndarray  # (count,) int64 header stamps, in bag order
    log_time_ns: np.ndarray  # (count,) int64 bag log times, in bag order


@dataclass
class DriveBagSummary:
    """What read_drive_bag finds: a TopicSummary per topic and the datum document."""

    topics: dict[str, TopicSummary]
    datum: dict  # the parsed /crossview/datum JSON (empty if the topic is missing)


def read_drive_bag(path: str | Path) -> DriveBagSummary:
    """Counts, types and stamps per topic of a bag, and its datum (for tests and replay checks)."""
    collected: dict[str, tuple[str, list[int], list[int]]] = {}
    datum: dict = {}
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            entry = collected.setdefault(conn.topic, (conn.msgtype, [], []))
            header = getattr(msg, "header", None)
            entry[1].append(
                log_ns
                if header is None
                else header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
            )
            entry[2].append(log_ns)
            if conn.topic == TOPIC_DATUM and not datum:
                datum = json.loads(msg.data)
    return DriveBagSummary(
        topics={
            topic: TopicSummary(
                msgtype,
                len(stamps),
                np.asarray(stamps, dtype=np.int64),
                np.asarray(logs, dtype=np.int64),
            )
            for topic, (msgtype, stamps, logs) in collected.items()
        },
        datum=datum,
    )
