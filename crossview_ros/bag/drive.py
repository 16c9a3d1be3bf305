"""The drive bag as the replay and the evaluation read it: what to publish (panoramas, or a rig's camera
images with their CameraInfo; fixes, odometry) and what to compare against (ground truth), read once with
rosbags from an MCAP or sqlite3 rosbag2, its topics found by a topic mapping (crossview_ros.bag.topics;
the simulator's by default). With cameras (TopicMap.cameras) the frames are the rig's captures
(crossview_ros.bag.captures) instead of panoramas."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader

from crossview_ros import geo
from crossview_ros.bag.captures import CAMERA_SYNC_S, CameraImages, CameraTrack, image_payload, sync_captures
from crossview_ros.bag.topics import IMAGE_ROLE, INFO_ROLE, MSG_IMAGE, POSE_TYPES, REQUIRED_ROLES, TopicMap, resolve
from crossview_ros.bag.writer import MSG_COMPRESSED, MSG_NAVSAT, typestore
from crossview_ros.replay_errors import BagError

NS = 1_000_000_000
KIND_FIX, KIND_ODOM, KIND_PANORAMA = 0, 1, 2  # playlist kinds, in the order they go at equal stamps
BAG_SUFFIXES = (".mcap", ".db3")


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


def _empty(width: int = 0) -> np.ndarray:
    return np.zeros((0, width) if width else 0, dtype=np.float64)


@dataclass
class DriveBag:
    """What the replay publishes and what the evaluation compares against, read once. Odometry and
    truth arrays are empty when the bag has none (has_odometry, has_truth, has_truth_yaw)."""

    path: Path
    datum: dict  # the /crossview/datum JSON, or the datum derived from the first valid fix
    datum_lat_deg: float
    datum_lon_deg: float
    zone: geo.UTMZone
    panorama_stamp_ns: np.ndarray  # (P,) the frames' stamps in bag order: panoramas, or the cameras' captures
    panorama_raw: list[bytes]  # CDR of each panorama, as stored (none with cameras)
    fixes: list[FixSample]  # in bag order
    fix_raw: list[bytes]
    odom_stamp_s: np.ndarray = field(default_factory=_empty)  # (O,)
    odom_twist: np.ndarray = field(default_factory=lambda: _empty(3))  # (O, 3) vx, vy (m/s), vyaw (rad/s) in base_link
    odom_twist_cov: np.ndarray = field(default_factory=lambda: _empty(36))  # (O, 36) row-major
    odom_pose: np.ndarray = field(default_factory=lambda: _empty(3))  # (O, 3) x, y (m), yaw (rad) in the odom frame
    odom_pose_cov: np.ndarray = field(default_factory=lambda: _empty(36))  # (O, 36) row-major
    odom_raw: list[bytes] = field(default_factory=list)  # CDR of each odometry message, as stored
    truth_stamp_s: np.ndarray = field(default_factory=_empty)  # (T,) truth positions
    truth_lat_deg: np.ndarray = field(default_factory=_empty)
    truth_lon_deg: np.ndarray = field(default_factory=_empty)
    truth_yaw_stamp_s: np.ndarray = field(default_factory=_empty)  # (G,) true yaw, ENU (rad)
    truth_yaw_enu_rad: np.ndarray = field(default_factory=_empty)
    panorama_msgtype: str = MSG_COMPRESSED  # or sensor_msgs/msg/Image
    topics: dict[str, str] = field(default_factory=dict)  # role -> the bag's topic (crossview_ros.bag.topics)
    cameras: tuple[CameraTrack, ...] = ()  # with TopicMap.cameras: the rig's cameras, in the rig file's order
    capture_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))  # (P, cameras) image rows

    @property
    def panorama_stamp_s(self) -> np.ndarray:
        return self.panorama_stamp_ns.astype(np.float64) / NS

    @property
    def raw_panorama(self) -> bool:
        return self.panorama_msgtype == MSG_IMAGE

    @property
    def has_odometry(self) -> bool:
        return self.odom_stamp_s.size > 0

    @property
    def has_truth(self) -> bool:
        return self.truth_stamp_s.size > 0

    @property
    def has_truth_yaw(self) -> bool:
        return self.truth_yaw_stamp_s.size > 0

    def playlist(self) -> list[tuple[int, int, int]]:
        """(stamp_ns, kind, row) to publish: stamp order, at equal stamps the fix, the odometry, then the
        panorama (KIND_*), then bag order."""
        items = [(int(f.stamp_ns), KIND_FIX, i) for i, f in enumerate(self.fixes)]
        items += [(int(round(t * NS)), KIND_ODOM, i) for i, t in enumerate(self.odom_stamp_s)]
        items += [(int(t), KIND_PANORAMA, i) for i, t in enumerate(self.panorama_stamp_ns)]
        items.sort()
        return items

    def capture(self, row: int) -> CameraImages:
        """Frame `row` of a rig's bag: each camera's image and its intrinsics at the capture's stamp."""
        if not self.cameras:
            raise BagError(f"bag {self.path} is read without cameras; its frames are panoramas")
        stamp = int(self.panorama_stamp_ns[row])
        payloads = [track.image_payload(int(r), f"bag {self.path}")
                    for track, r in zip(self.cameras, self.capture_rows[row])]
        return CameraImages(tuple(t.cameras[t.info_index(stamp)] for t in self.cameras),
                            tuple(p[0] for p in payloads), tuple(p[1] for p in payloads))

    def panorama_payload(self, row: int) -> tuple[Any, str | None]:
        """(what Localizer.localize takes, its encoding) of one panorama: JPEG/PNG bytes and None, or a
        uint8 array and its rgb8 | bgr8 | mono8 encoding; BagError for a raw image it cannot read."""
        return image_payload(self.panorama_raw[row], self.panorama_msgtype,
                             f"bag {self.path}: panorama {row} on {self.topics.get('panorama')}")

    def truth_yaw_at(self, stamps_s: np.ndarray) -> np.ndarray:
        """True ENU yaw at the stamps, interpolated on the circle (NaN everywhere without one)."""
        stamps_s = np.asarray(stamps_s, dtype=np.float64)
        if not self.has_truth_yaw:
            return np.full(stamps_s.shape, np.nan)
        unwrapped = np.interp(stamps_s, self.truth_yaw_stamp_s, np.unwrap(self.truth_yaw_enu_rad))
        return np.asarray(geo.wrap_angle_rad(unwrapped))


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header stamp in integer nanoseconds."""
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def yaw_of(q: Any) -> float:
    """The yaw of a quaternion, rad (the rotation about z)."""
    return geo.quaternion_to_yaw(q.x, q.y, q.z, q.w)


def bag_location(path: str | os.PathLike) -> Path:
    """What rosbags opens for `path`: the bag folder, also when given its .mcap/.db3 file (a file with no
    metadata.yaml beside it is opened on its own); BagError when there is nothing there."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist; record one or make one with `crossview-sim drive`")
    if path.is_file():
        if path.suffix not in BAG_SUFFIXES:
            raise BagError(f"{path} is not a rosbag2 file ({' or '.join(BAG_SUFFIXES)}) nor a bag folder")
        if (path.parent / "metadata.yaml").is_file():
            return path.parent
    return path


class _Rows:
    """Numbers of every mapped message as they come (bag order)."""

    def __init__(self) -> None:
        self.datum: dict = {}
        self.pano_ns: list[int] = []
        self.pano_raw: list[bytes] = []
        self.fixes: list[FixSample] = []
        self.fix_raw: list[bytes] = []
        self.odom: list[tuple] = []  # (stamp_s, (vx, vy, wz), twist cov, (x, y, yaw), pose cov)
        self.odom_raw: list[bytes] = []
        self.truth_fix: list[tuple[float, float, float]] = []  # (stamp_s, lat, lon)
        self.truth_pose: list[tuple[float, float, float, float]] = []  # (stamp_s, x, y, yaw) in truth_frame
        self.heading_pose: list[tuple[float, float, float, float]] = []
        self.cameras: dict[str, CameraTrack] = {}  # with TopicMap.cameras, made by read_bag

    def add(self, role: str, msg: Any, raw: bytes, log_ns: int, msgtype: str, path: Path) -> None:
        header = getattr(msg, "header", None)
        t_ns = stamp_ns(header) if header is not None else 0
        t_ns = t_ns or int(log_ns)  # a driver that leaves the header stamp at zero: the log time
        if role.startswith(IMAGE_ROLE):
            self.cameras[role[len(IMAGE_ROLE):]].add_image(t_ns, raw)
        elif role.startswith(INFO_ROLE):
            self.cameras[role[len(INFO_ROLE):]].add_info(t_ns, msg, raw, f"bag {path}")
        elif role == "panorama":
            self.pano_ns.append(t_ns)
            self.pano_raw.append(bytes(raw))
        elif role == "fix":
            cov = (None if int(msg.position_covariance_type) == 0
                   else np.asarray(msg.position_covariance, dtype=np.float64).reshape(3, 3))
            self.fixes.append(FixSample(t_ns, float(msg.latitude), float(msg.longitude), int(msg.status.status), cov))
            self.fix_raw.append(bytes(raw))
        elif role == "odom":
            tw, pose = msg.twist.twist, msg.pose.pose
            self.odom.append((t_ns / NS, (tw.linear.x, tw.linear.y, tw.angular.z), msg.twist.covariance,
                              (pose.position.x, pose.position.y, yaw_of(pose.orientation)), msg.pose.covariance))
            self.odom_raw.append(bytes(raw))
        elif role == "truth" and msgtype == MSG_NAVSAT:
            if int(msg.status.status) >= 0 and math.isfinite(msg.latitude) and math.isfinite(msg.longitude):
                self.truth_fix.append((t_ns / NS, float(msg.latitude), float(msg.longitude)))
        elif role in ("truth", "truth_heading"):
            pose = msg.pose.pose if msgtype != POSE_TYPES[1] else msg.pose  # Odometry / *WithCovariance: nested
            row = (t_ns / NS, float(pose.position.x), float(pose.position.y), yaw_of(pose.orientation))
            (self.truth_pose if role == "truth" else self.heading_pose).append(row)
        elif role == "datum" and not self.datum:
            try:
                self.datum = json.loads(msg.data)
            except json.JSONDecodeError as exc:
                raise BagError(f"bag {path}: datum topic is not JSON ({exc})") from None


def read_bag(path: str | os.PathLike, topics: TopicMap | None = None) -> DriveBag:
    """Read a drive bag through a topic mapping (default: the simulator's topics); BagError, one line,
    naming what is missing or mistyped and the topics the bag has (nothing is started yet)."""
    path = Path(path)
    mapping = topics if topics is not None else TopicMap()
    location = bag_location(path)
    try:
        reader_cm = AnyReader([location], default_typestore=typestore())
        reader = reader_cm.__enter__()
    except Exception as exc:  # rosbags raises several types for unreadable bags
        raise BagError(f"cannot open bag {path}: {' '.join(str(exc).split())}") from None
    rows = _Rows()
    try:
        if not reader.is2:
            raise BagError(f"{path} is a ROS 1 bag; convert it with `rosbags-convert --src {path}` first")
        roles = resolve(mapping, {t: info.msgtype for t, info in reader.topics.items()}, path)
        if "truth" not in roles:  # no truth: no true heading either (a truth-free run)
            roles.pop("truth_heading", None)
        by_topic: dict[str, list[str]] = {}
        for role, topic in roles.items():
            by_topic.setdefault(topic, []).append(role)
        for cam in (mapping.cameras.cameras if mapping.cameras is not None else ()):
            image = roles[IMAGE_ROLE + cam.name]
            rows.cameras[cam.name] = CameraTrack(cam, image, reader.topics[image].msgtype, roles[INFO_ROLE + cam.name])
        conns = [c for c in reader.connections if c.topic in by_topic]
        for conn, log_ns, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            for role in by_topic[conn.topic]:
                rows.add(role, msg, raw, log_ns, conn.msgtype, path)
        pano_type = reader.topics[roles["panorama"]].msgtype if "panorama" in roles else MSG_COMPRESSED
        msgtypes = {role: reader.topics[topic].msgtype for role, topic in roles.items()}
    except BagError:
        raise
    except Exception as exc:
        raise BagError(f"cannot read bag {path}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    finally:
        reader_cm.__exit__(None, None, None)
    for role in REQUIRED_ROLES:
        if role in roles and not (rows.pano_ns if role == "panorama" else rows.fixes):
            raise BagError(f"bag {path}: the {role} topic {roles[role]} holds no messages")
    for track in rows.cameras.values():
        track.check(f"bag {path}")
    return _build(path, rows, roles, msgtypes, mapping, pano_type)


def _datum(path: Path, rows: _Rows, roles: dict[str, str]) -> tuple[dict, float, float, geo.UTMZone]:
    """The datum message's, else the first valid fix's (in stamp order) datum and UTM zone."""
    datum = rows.datum
    if not datum:
        valid = sorted((f for f in rows.fixes if f.valid), key=lambda f: f.stamp_ns)
        if not valid:
            raise BagError(f"bag {path}: no valid fix on {roles['fix']} to take the datum from")
        first = valid[0]
        zone = geo.utm_zone(first.lat_deg, first.lon_deg)
        datum = {"datum_lat_deg": first.lat_deg, "datum_lon_deg": first.lon_deg, "utm_zone": str(zone),
                 "source": f"first valid fix on {roles['fix']}"}
    try:
        lat0, lon0 = float(datum["datum_lat_deg"]), float(datum["datum_lon_deg"])
        geo.check_latlon(lat0, lon0)
        zone = geo.UTMZone.parse(datum["utm_zone"]) if "utm_zone" in datum else geo.utm_zone(lat0, lon0)
    except (KeyError, TypeError, ValueError) as exc:
        raise BagError(f"bag {path}: the datum on {roles.get('datum')} needs datum_lat_deg, datum_lon_deg (and "
                       f"utm_zone): {exc}") from None
    return datum, lat0, lon0, zone


def _build(path: Path, rows: _Rows, roles: dict[str, str], msgtypes: dict[str, str], mapping: TopicMap,
           pano_type: str) -> DriveBag:
    """The DriveBag from the rows: the datum, odometry as arrays, truth turned into latitude/longitude
    and ENU yaw."""
    datum, lat0, lon0, zone = _datum(path, rows, roles)
    bag = DriveBag(path=path, datum=datum, datum_lat_deg=lat0, datum_lon_deg=lon0, zone=zone,
                   panorama_stamp_ns=np.asarray(rows.pano_ns, dtype=np.int64), panorama_raw=rows.pano_raw,
                   fixes=rows.fixes, fix_raw=rows.fix_raw, panorama_msgtype=pano_type, topics=dict(roles))
    if rows.cameras:
        tracks = tuple(rows.cameras.values())
        bag.cameras = tracks
        bag.panorama_stamp_ns, bag.capture_rows = sync_captures([t.image_stamp_ns for t in tracks])
        if not len(bag.panorama_stamp_ns):
            raise BagError(f"bag {path}: the images of cameras {', '.join(t.name for t in tracks)} never lie within "
                           f"{CAMERA_SYNC_S:g} s of each other: no capture to localize")
    if rows.odom:
        t, twist, twist_cov, pose, pose_cov = zip(*rows.odom)
        bag.odom_stamp_s = np.asarray(t, dtype=np.float64)
        bag.odom_twist = np.asarray(twist, dtype=np.float64).reshape(-1, 3)
        bag.odom_twist_cov = np.asarray(twist_cov, dtype=np.float64).reshape(-1, 36)
        bag.odom_pose = np.asarray(pose, dtype=np.float64).reshape(-1, 3)
        bag.odom_pose_cov = np.asarray(pose_cov, dtype=np.float64).reshape(-1, 36)
        bag.odom_raw = rows.odom_raw
    frame = mapping.truth_frame
    if rows.truth_pose:
        t, x, y, yaw = (np.asarray(v, dtype=np.float64) for v in zip(*rows.truth_pose))
        lat, lon, yaw_enu = frame.to_geodetic(x, y, yaw, zone)
        bag.truth_stamp_s, bag.truth_lat_deg, bag.truth_lon_deg = t, lat, lon
        bag.truth_yaw_stamp_s, bag.truth_yaw_enu_rad = t, yaw_enu
    elif rows.truth_fix:
        bag.truth_stamp_s, bag.truth_lat_deg, bag.truth_lon_deg = (np.asarray(v, dtype=np.float64)
                                                                   for v in zip(*rows.truth_fix))
    if rows.heading_pose and ("truth_heading" in mapping.given or msgtypes.get("truth") == MSG_NAVSAT):
        t, x, y, yaw = (np.asarray(v, dtype=np.float64) for v in zip(*rows.heading_pose))
        _, _, yaw_enu = frame.to_geodetic(x, y, yaw, zone)
        bag.truth_yaw_stamp_s, bag.truth_yaw_enu_rad = t, yaw_enu
    if "truth" in roles and not bag.has_truth:
        raise BagError(f"bag {path}: the truth topic {roles['truth']} holds no valid position")
    return bag
