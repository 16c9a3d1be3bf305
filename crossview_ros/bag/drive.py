"""The drive bag as the replay and the evaluation read it: what to publish (panoramas, fixes) and
what to compare against (ground truth fix and pose, odometry), read once with rosbags."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from crossview_ros import geo
from crossview_ros.bag.writer import (
    MSG_COMPRESSED, MSG_NAVSAT, MSG_ODOM, MSG_POSE, MSG_STRING, TOPIC_DATUM, TOPIC_GNSS, TOPIC_GT_FIX, TOPIC_GT_POSE,
    TOPIC_ODOM, TOPIC_PANORAMA, typestore,
)
from crossview_ros.replay_errors import BagError

NS = 1_000_000_000
KIND_FIX, KIND_ODOM, KIND_PANORAMA = 0, 1, 2  # playlist kinds, in the order they go at equal stamps
REQUIRED_TOPICS: dict[str, str] = {  # what the replay and the evaluation read
    TOPIC_DATUM: MSG_STRING,
    TOPIC_PANORAMA: MSG_COMPRESSED,
    TOPIC_GNSS: MSG_NAVSAT,
    TOPIC_ODOM: MSG_ODOM,
    TOPIC_GT_FIX: MSG_NAVSAT,
    TOPIC_GT_POSE: MSG_POSE,
}


@dataclass
class FixSample:
    stamp_ns: int
    lat_deg: float
    lon_deg: float
    status: int
    covariance_enu_m2: np.ndarray | None  # (3, 3) or None (COVARIANCE_TYPE_UNKNOWN)

    @property
    def valid(self) -> bool:
        """A position a receiver user would take: status not NO_FIX, finite, in range."""
        return (self.status >= 0 and math.isfinite(self.lat_deg) and math.isfinite(self.lon_deg)
                and abs(self.lat_deg) <= 90.0 and abs(self.lon_deg) <= 180.0)


@dataclass
class DriveBag:
    """What the replay publishes and what the evaluation compares against, read once."""

    path: Path
    datum: dict  # the /crossview/datum JSON
    datum_lat_deg: float
    datum_lon_deg: float
    zone: geo.UTMZone
    panorama_stamp_ns: np.ndarray  # (P,) in bag order
    panorama_raw: list[bytes]  # CDR of each panorama, as stored
    fixes: list[FixSample]  # in bag order
    fix_raw: list[bytes]
    odom_stamp_s: np.ndarray  # (O,)
    odom_twist: np.ndarray  # (O, 3) vx, vy (m/s), vyaw (rad/s) in base_link
    odom_twist_cov: np.ndarray  # (O, 36) row-major
    odom_pose: np.ndarray  # (O, 3) x, y (m), yaw (rad) of base_link in the odom frame
    odom_pose_cov: np.ndarray  # (O, 36) row-major
    odom_raw: list[bytes]  # CDR of each odometry message, as stored
    truth_stamp_s: np.ndarray  # (T,) /ground_truth/fix
    truth_lat_deg: np.ndarray
    truth_lon_deg: np.ndarray
    truth_pose_stamp_s: np.ndarray  # (G,) /ground_truth/pose
    truth_easting_m: np.ndarray
    truth_northing_m: np.ndarray
    truth_yaw_utm_rad: np.ndarray

    @property
    def panorama_stamp_s(self) -> np.ndarray:
        return self.panorama_stamp_ns.astype(np.float64) / NS

    def playlist(self) -> list[tuple[int, int, int]]:
        """(stamp_ns, kind, row) to publish: stamp order, at equal stamps the fix, the odometry, then the
        panorama (KIND_*), then bag order."""
        items = [(int(f.stamp_ns), KIND_FIX, i) for i, f in enumerate(self.fixes)]
        items += [(int(round(t * NS)), KIND_ODOM, i) for i, t in enumerate(self.odom_stamp_s)]
        items += [(int(t), KIND_PANORAMA, i) for i, t in enumerate(self.panorama_stamp_ns)]
        items.sort()
        return items


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header stamp in integer nanoseconds."""
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def yaw_of(q: Any) -> float:
    """The yaw of a quaternion, rad (the rotation about z)."""
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def _check_topics(path: Path, topics: dict[str, str]) -> None:
    """BagError naming every required topic that is missing or of another type."""
    missing = [t for t in REQUIRED_TOPICS if t not in topics]
    wrong = [f"{t} is {topics[t]}, expected {m}" for t, m in REQUIRED_TOPICS.items() if t in topics and topics[t] != m]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing topic(s) {', '.join(missing)}")
        if wrong:
            parts.append("; ".join(wrong))
        raise BagError(f"bag {path} cannot be replayed: {'; '.join(parts)}. The replay needs "
                       f"{', '.join(REQUIRED_TOPICS)} (written by `crossview-sim drive`; a real bag needs "
                       "ground truth for the evaluation)")


def read_bag(path: str | os.PathLike) -> DriveBag:
    """Read a drive bag; BagError naming every missing or mistyped topic (nothing is started yet)."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist; record one or make one with `crossview-sim drive`")
    try:
        reader_cm = AnyReader([path], default_typestore=typestore())
        reader = reader_cm.__enter__()
    except Exception as exc:  # rosbags raises several types for unreadable bags
        raise BagError(f"cannot open bag {path}: {exc}") from None
    try:
        _check_topics(path, {t: info.msgtype for t, info in reader.topics.items()})
        conns = [c for c in reader.connections if c.topic in REQUIRED_TOPICS]
        datum: dict = {}
        pano_ns, pano_raw, fixes, fix_raw = [], [], [], []
        odom_t, odom_v, odom_c, odom_p, odom_pc, odom_raw = [], [], [], [], [], []
        gt_t, gt_lat, gt_lon = [], [], []
        gp_t, gp_e, gp_n, gp_yaw = [], [], [], []
        for conn, _log_ns, raw in reader.messages(connections=conns):
            topic = conn.topic
            if topic == TOPIC_PANORAMA:
                msg = reader.deserialize(raw, conn.msgtype)
                pano_ns.append(stamp_ns(msg.header))
                pano_raw.append(bytes(raw))
            elif topic == TOPIC_GNSS:
                msg = reader.deserialize(raw, conn.msgtype)
                cov = (None if int(msg.position_covariance_type) == 0
                       else np.asarray(msg.position_covariance, dtype=np.float64).reshape(3, 3))
                fixes.append(FixSample(stamp_ns(msg.header), float(msg.latitude), float(msg.longitude),
                                       int(msg.status.status), cov))
                fix_raw.append(bytes(raw))
            elif topic == TOPIC_ODOM:
                msg = reader.deserialize(raw, conn.msgtype)
                tw = msg.twist.twist
                odom_t.append(stamp_ns(msg.header) / NS)
                odom_v.append((tw.linear.x, tw.linear.y, tw.angular.z))
                odom_c.append(np.asarray(msg.twist.covariance, dtype=np.float64))
                pose = msg.pose.pose
                odom_p.append((pose.position.x, pose.position.y, yaw_of(pose.orientation)))
                odom_pc.append(np.asarray(msg.pose.covariance, dtype=np.float64))
                odom_raw.append(bytes(raw))
            elif topic == TOPIC_GT_FIX:
                msg = reader.deserialize(raw, conn.msgtype)
                gt_t.append(stamp_ns(msg.header) / NS)
                gt_lat.append(msg.latitude)
                gt_lon.append(msg.longitude)
            elif topic == TOPIC_GT_POSE:
                msg = reader.deserialize(raw, conn.msgtype)
                gp_t.append(stamp_ns(msg.header) / NS)
                gp_e.append(msg.pose.position.x)
                gp_n.append(msg.pose.position.y)
                gp_yaw.append(yaw_of(msg.pose.orientation))
            elif topic == TOPIC_DATUM and not datum:
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    datum = json.loads(msg.data)
                except json.JSONDecodeError as exc:
                    raise BagError(f"bag {path}: {TOPIC_DATUM} is not JSON ({exc})") from None
    except BagError:
        raise
    except Exception as exc:
        raise BagError(f"cannot read bag {path}: {type(exc).__name__}: {exc}") from None
    finally:
        reader_cm.__exit__(None, None, None)

    for topic, rows in ((TOPIC_PANORAMA, pano_ns), (TOPIC_GNSS, fixes), (TOPIC_GT_FIX, gt_t), (TOPIC_GT_POSE, gp_t),
                        (TOPIC_ODOM, odom_t)):
        if not rows:
            raise BagError(f"bag {path}: topic {topic} holds no messages")
    try:
        lat0, lon0 = float(datum["datum_lat_deg"]), float(datum["datum_lon_deg"])
        geo.check_latlon(lat0, lon0)
        zone = geo.UTMZone.parse(datum["utm_zone"]) if "utm_zone" in datum else geo.utm_zone(lat0, lon0)
    except (KeyError, TypeError, ValueError) as exc:
        raise BagError(f"bag {path}: {TOPIC_DATUM} needs datum_lat_deg, datum_lon_deg (and utm_zone): {exc}") from None
    return DriveBag(
        path=path, datum=datum, datum_lat_deg=lat0, datum_lon_deg=lon0, zone=zone,
        panorama_stamp_ns=np.asarray(pano_ns, dtype=np.int64), panorama_raw=pano_raw, fixes=fixes, fix_raw=fix_raw,
        odom_stamp_s=np.asarray(odom_t), odom_twist=np.asarray(odom_v, dtype=np.float64).reshape(-1, 3),
        odom_twist_cov=np.asarray(odom_c, dtype=np.float64).reshape(-1, 36),
        odom_pose=np.asarray(odom_p, dtype=np.float64).reshape(-1, 3),
        odom_pose_cov=np.asarray(odom_pc, dtype=np.float64).reshape(-1, 36), odom_raw=odom_raw,
        truth_stamp_s=np.asarray(gt_t), truth_lat_deg=np.asarray(gt_lat), truth_lon_deg=np.asarray(gt_lon),
        truth_pose_stamp_s=np.asarray(gp_t), truth_easting_m=np.asarray(gp_e), truth_northing_m=np.asarray(gp_n),
        truth_yaw_utm_rad=np.asarray(gp_yaw),
    )


# --------------------------------------------------------------------------- the node's outputs
