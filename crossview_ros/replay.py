"""crossview-replay: play a drive bag through the real localize_node and evaluate what it publishes.

    crossview-replay BAG --tiles DIR --model DIR --out DIR [--rate 1.0 | --lockstep] [--params-file YAML]
                     [--node-arg ARG ...] [--ekf-config config/ekf.yaml] [--timeout-s 60]

One step, one function (replay_bag), a thin CLI. The replay:

1. reads the drive bag (rosbags; topics of crossview_ros.bag.writer) and refuses a bag that lacks
   a topic it needs, naming it (exit code 2);
2. starts `localize_node` as a subprocess with use_sim_time, the bag's datum and pose_origin
   "datum", in the replay's ROS_DOMAIN_ID (a random one, discovery limited to this host, when the
   environment sets none), and waits until its subscriptions and publications are matched;
3. publishes /clock and the bag's /panorama/compressed and /gnss/fix (never ground truth or
   odometry) in stamp order at `rate` x real time; at equal stamps the fix goes first, so the
   node pairs a panorama with the fix of its own stamp; with `lockstep`, each panorama is sent
   only once the node has published or counted the previous one (throughput, no frame dropped);
4. records crossview/fix, crossview/pose, crossview/heading and /diagnostics as they arrive, with
   the wall time of receipt; latency = receipt of the first output of a stamp minus the moment
   the replay published that panorama (one monotonic clock, in this process);
5. waits until the node's diagnostics say every received frame is processed, stops it with
   SIGINT and writes OUT/outputs.mcap, OUT/frames.csv, OUT/node.log, then the evaluation:
   OUT/report.md, OUT/*.png, OUT/summary.json (crossview_ros.report).

Everything goes to a hidden temporary folder beside OUT that is renamed into place at the end:
a failure (missing topic, node dying, Ctrl-C) leaves no OUT behind.

Evaluation, per panorama of the bag: our fix's horizontal error against /ground_truth/fix at
that stamp (interpolated), the raw GNSS error (newest fix not after the stamp), the fused track's
error (crossview_ros.fusion over /odom twist + our /crossview/pose, set up from config/ekf.yaml;
also with the raw GNSS added), the heading error against /ground_truth/pose (UTM grid yaw turned
into ENU), the published share, the node's rejections by reason (its last /diagnostics) and
latency percentiles.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.bag.writer import (
    MSG_COMPRESSED, MSG_NAVSAT, MSG_ODOM, MSG_POSE, MSG_STRING, TOPIC_DATUM, TOPIC_GNSS, TOPIC_GT_FIX, TOPIC_GT_POSE,
    TOPIC_ODOM, TOPIC_PANORAMA, typestore,
)

log = logging.getLogger("crossview_replay")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
NODE_EXECUTABLE = "localize_node"
NODE_NAME = "crossview_localizer"
REQUIRED_TOPICS: dict[str, str] = {  # what the replay and the evaluation read
    TOPIC_DATUM: MSG_STRING,
    TOPIC_PANORAMA: MSG_COMPRESSED,
    TOPIC_GNSS: MSG_NAVSAT,
    TOPIC_ODOM: MSG_ODOM,
    TOPIC_GT_FIX: MSG_NAVSAT,
    TOPIC_GT_POSE: MSG_POSE,
}
TOPIC_OUT_FIX = "/crossview/fix"
TOPIC_OUT_POSE = "/crossview/pose"
TOPIC_OUT_HEADING = "/crossview/heading"
TOPIC_DIAGNOSTICS = "/diagnostics"
OUTPUT_TOPICS: dict[str, str] = {
    TOPIC_OUT_FIX: "sensor_msgs/msg/NavSatFix",
    TOPIC_OUT_POSE: "geometry_msgs/msg/PoseWithCovarianceStamped",
    TOPIC_OUT_HEADING: "sensor_msgs/msg/Imu",
    TOPIC_DIAGNOSTICS: "diagnostic_msgs/msg/DiagnosticArray",
}
ESTIMATE_TOPICS = (TOPIC_OUT_FIX, TOPIC_OUT_POSE, TOPIC_OUT_HEADING)
CLOCK_PERIOD_S = 0.02  # wall seconds between /clock messages while waiting (rosbag2 play: 40 Hz)
# Lockstep: the node's diagnostics period (sim s) the replay asks for, so that a rejected frame (no output) is
# seen counted within a few clock ticks; user --node-args come later and may override it.
LOCKSTEP_DIAGNOSTICS_PERIOD_S = CLOCK_PERIOD_S
LOCKSTEP_LOST_S = 0.5  # lockstep: node idle without the frame just sent for this long (wall s) = frame lost
SETTLE_S = 0.5  # after discovery matched both ways, let the node's side finish matching too
DELIVERY_S = 0.3  # after the node reports all frames processed, outputs still in flight
STOP_TIMEOUT_S = 10.0  # SIGINT -> exit; then SIGTERM, then SIGKILL
# Random ROS_DOMAIN_ID when the environment sets none: the ids whose DDS ports stay clear of
# Linux's ephemeral range (0-101, 215-232; ROS 2 docs "The ROS_DOMAIN_ID"); 0 is left to users.
DOMAIN_IDS = tuple(range(1, 102)) + tuple(range(215, 233))
POSE_ORIGIN_TOLERANCE_M = 1.0  # crossview/pose must sit where crossview/fix is in the datum's ENU plane
LOG_TAIL_LINES = 25
NS = 1_000_000_000


class ReplayError(RuntimeError):
    """The replay cannot go on; the message says what to fix. exit_code: what the CLI returns."""

    exit_code = EXIT_FAILURE


class BagError(ReplayError):
    """The bag cannot be replayed (missing topic, wrong type, unreadable)."""

    exit_code = EXIT_USAGE


class NodeError(ReplayError):
    """localize_node failed to start or died; the message carries the tail of its log."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.exit_code = EXIT_USAGE if returncode == EXIT_USAGE else EXIT_FAILURE


# --------------------------------------------------------------------------- the bag


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
        """(stamp_ns, kind, row) to publish: stamp order, at equal stamps the fix (kind 0) before the
        panorama (kind 1), then bag order."""
        items = [(int(f.stamp_ns), 0, i) for i, f in enumerate(self.fixes)]
        items += [(int(t), 1, i) for i, t in enumerate(self.panorama_stamp_ns)]
        items.sort()
        return items


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def _yaw_of(q: Any) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def read_bag(path: str | os.PathLike) -> DriveBag:
    """Read a drive bag; BagError naming every missing or mistyped topic (nothing is started yet)."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist; record one or make one with `crossview-sim drive`")
    try:
        reader_cm = AnyReader([path], default_typestore=typestore())
        reader = reader_cm.__enter__()
    except Exception as exc:  # rosbags raises several types for unreadable bags
        raise BagError(f"cannot open bag {path}: {exc}") from None
    try:
        topics = {t: info.msgtype for t, info in reader.topics.items()}
        missing = [t for t in REQUIRED_TOPICS if t not in topics]
        wrong = [f"{t} is {topics[t]}, expected {m}" for t, m in REQUIRED_TOPICS.items()
                 if t in topics and topics[t] != m]
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"missing topic(s) {', '.join(missing)}")
            if wrong:
                parts.append("; ".join(wrong))
            raise BagError(f"bag {path} cannot be replayed: {'; '.join(parts)}. The replay needs "
                           f"{', '.join(REQUIRED_TOPICS)} (written by `crossview-sim drive`; a real bag needs "
                           "ground truth for the evaluation)")
        conns = [c for c in reader.connections if c.topic in REQUIRED_TOPICS]
        datum: dict = {}
        pano_ns, pano_raw, fixes, fix_raw = [], [], [], []
        odom_t, odom_v, odom_c = [], [], []
        gt_t, gt_lat, gt_lon = [], [], []
        gp_t, gp_e, gp_n, gp_yaw = [], [], [], []
        for conn, _log_ns, raw in reader.messages(connections=conns):
            topic = conn.topic
            if topic == TOPIC_PANORAMA:
                msg = reader.deserialize(raw, conn.msgtype)
                pano_ns.append(_stamp_ns(msg.header))
                pano_raw.append(bytes(raw))
            elif topic == TOPIC_GNSS:
                msg = reader.deserialize(raw, conn.msgtype)
                cov = (None if int(msg.position_covariance_type) == 0
                       else np.asarray(msg.position_covariance, dtype=np.float64).reshape(3, 3))
                fixes.append(FixSample(_stamp_ns(msg.header), float(msg.latitude), float(msg.longitude),
                                       int(msg.status.status), cov))
                fix_raw.append(bytes(raw))
            elif topic == TOPIC_ODOM:
                msg = reader.deserialize(raw, conn.msgtype)
                tw = msg.twist.twist
                odom_t.append(_stamp_ns(msg.header) / NS)
                odom_v.append((tw.linear.x, tw.linear.y, tw.angular.z))
                odom_c.append(np.asarray(msg.twist.covariance, dtype=np.float64))
            elif topic == TOPIC_GT_FIX:
                msg = reader.deserialize(raw, conn.msgtype)
                gt_t.append(_stamp_ns(msg.header) / NS)
                gt_lat.append(msg.latitude)
                gt_lon.append(msg.longitude)
            elif topic == TOPIC_GT_POSE:
                msg = reader.deserialize(raw, conn.msgtype)
                gp_t.append(_stamp_ns(msg.header) / NS)
                gp_e.append(msg.pose.position.x)
                gp_n.append(msg.pose.position.y)
                gp_yaw.append(_yaw_of(msg.pose.orientation))
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
        truth_stamp_s=np.asarray(gt_t), truth_lat_deg=np.asarray(gt_lat), truth_lon_deg=np.asarray(gt_lon),
        truth_pose_stamp_s=np.asarray(gp_t), truth_easting_m=np.asarray(gp_e), truth_northing_m=np.asarray(gp_n),
        truth_yaw_utm_rad=np.asarray(gp_yaw),
    )


# --------------------------------------------------------------------------- the node's outputs


@dataclass
class Received:
    """One message from the node: topic, replay-clock time of receipt (s), serialized CDR."""

    topic: str
    received_s: float
    raw: bytes


@dataclass
class Playback:
    """What happened on the wire."""

    received: list[Received]
    published_s: dict[int, float]  # panorama stamp_ns -> replay-clock time (s) it was published
    frames_published: int
    fixes_published: int
    node_returncode: int | None
    wall_s: float
    domain_id: int
    node_command: list[str]
    publish_s: float = 0.0  # wall time from the first message published to the last (lockstep: to the last frame done)
    lockstep: bool = False  # each panorama waited for (output or counted by the node) before the next was sent
    frames_lost: int = 0  # lockstep: panoramas the node never received (best effort), moved on after diagnostics


def node_command(tiles: Path, model: Path, datum_lat_deg: float, datum_lon_deg: float, *,
                 params_file: str | os.PathLike | None = None, node_args: Sequence[str] = ()) -> list[str]:
    """localize_node's argv: the console script beside this Python (else on PATH), sim time, the datum.

    The params file comes first, then the replay's -p (tile set, model, sim time, datum, pose origin),
    then node_args, so the user has the last word."""
    exe = Path(sys.executable).parent / NODE_EXECUTABLE
    cmd = [str(exe)] if exe.exists() else ([found] if (found := shutil.which(NODE_EXECUTABLE)) else
                                            [sys.executable, "-m", "crossview_ros.nodes.localize_node"])
    cmd.append("--ros-args")
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    cmd += ["-p", f"tile_set:={tiles}", "-p", f"model:={model}", "-p", "use_sim_time:=true",
            "-p", f"datum:=[{float(datum_lat_deg)!r},{float(datum_lon_deg)!r}]", "-p", "pose_origin:=datum"]
    cmd += list(node_args)
    return cmd


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    rows = [r for r in text.splitlines() if r.strip()]
    return "\n".join(rows[-lines:]) if rows else "(empty log)"


def _diag_values(raw: bytes) -> dict[str, str]:
    """KeyValues of the localizer's status in one /diagnostics message (empty if another status)."""
    msg = typestore().deserialize_cdr(raw, OUTPUT_TOPICS[TOPIC_DIAGNOSTICS])
    for status in msg.status:
        if str(status.name).startswith(NODE_NAME):
            return {str(kv.key): str(kv.value) for kv in status.values}
    return {}


def _int(values: dict[str, str], key: str) -> int:
    try:
        return int(float(values.get(key, "0")))
    except ValueError:
        return 0


class _Player:
    """The replay's rclpy side: its own context, a node with the publishers and recorders, a spin thread."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, NavSatFix

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("crossview_replay", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        # Reliable publishers match the node's best-effort subscriptions as well as reliable ones.
        self.clock_pub = self.node.create_publisher(Clock, "/clock", reliable)
        self.pano_pub = self.node.create_publisher(CompressedImage, TOPIC_PANORAMA, reliable)
        self.fix_pub = self.node.create_publisher(NavSatFix, TOPIC_GNSS, reliable)
        self._clock_cls = Clock
        self._qos = (QoSProfile, HistoryPolicy, ReliabilityPolicy, DurabilityPolicy)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified on every recorded message (lockstep waits on it)
        self.t0 = time.monotonic()
        self.counts: dict[str, int] = {}
        self.subs: dict[str, Any] = {}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="crossview_replay_spin", daemon=True)
        self._thread.start()
        self.last_clock_ns = 0

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok() and not self._stop.is_set():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):  # shut down under us: nothing left to record
            return

    def subscribe_outputs(self) -> None:
        """Subscribe (raw CDR) to every output topic the node offers, with a QoS its publisher matches."""
        import importlib

        QoSProfile, HistoryPolicy, ReliabilityPolicy, DurabilityPolicy = self._qos
        for topic, msgtype in OUTPUT_TOPICS.items():
            if topic in self.subs:
                continue
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                             reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
            pkg, _, name = msgtype.split("/")
            cls = getattr(importlib.import_module(f"{pkg}.msg"), name)
            self.subs[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self._record(t, raw), qos, raw=True)

    def _record(self, topic: str, raw: bytes) -> None:
        item = Received(topic, self.now_s(), bytes(raw))
        with self._arrived:
            self.received.append(item)
            self.counts[topic] = self.counts.get(topic, 0) + 1
            self._arrived.notify_all()

    def received_since(self, index: int, timeout_s: float) -> list[Received]:
        """Messages recorded from position `index` on; waits up to timeout_s for one when there is none yet."""
        with self._arrived:
            if len(self.received) <= index:
                self._arrived.wait(timeout=timeout_s)
            return self.received[index:]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def publish_clock(self, stamp_ns: int) -> None:
        stamp_ns = max(int(stamp_ns), self.last_clock_ns)  # sim time never runs backwards
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(stamp_ns, NS)
        self.clock_pub.publish(msg)
        self.last_clock_ns = stamp_ns

    def matched(self) -> dict[str, bool]:
        """Which links are up: the node subscribes to our three topics and we to its estimate topics."""
        out = {"/clock": self.clock_pub.get_subscription_count() > 0,
               TOPIC_PANORAMA: self.pano_pub.get_subscription_count() > 0,
               TOPIC_GNSS: self.fix_pub.get_subscription_count() > 0}
        for topic in (TOPIC_OUT_FIX, TOPIC_OUT_POSE, TOPIC_DIAGNOSTICS):
            sub = self.subs.get(topic)
            out[topic] = sub is not None and sub.get_publisher_count() > 0
        return out

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(timeout=2.0)
        for step in (lambda: self.executor.shutdown(timeout_sec=1.0), self.node.destroy_node):
            try:
                step()
            except Exception:  # already gone with the context; nothing to release
                pass
        rclpy.try_shutdown(context=self.context)


class _NodeProcess:
    """localize_node as a child process with its log in a file; stop() = SIGINT, then harder."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.cmd, self.log_path = cmd, log_path
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise NodeError(f"cannot start {cmd[0]}: {exc}; is crossview_ros installed with its console "
                            "scripts (pip install -e '.[ros]')?", None) from None

    def check_alive(self, doing: str) -> None:
        code = self.proc.poll()
        if code is not None:
            self._log.flush()
            raise NodeError(f"localize_node exited with code {code} while {doing}; its log ends:\n"
                            f"{_tail(self.log_path)}", code)

    def stop(self) -> int:
        """SIGINT and wait; SIGTERM, SIGKILL if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("localize_node ignored %s for %.0f s", signal.Signals(sig).name, wait_s)
        self._log.close()
        return int(self.proc.wait())


def _ros_environment() -> tuple[dict[str, str], int]:
    """The child's environment and the domain id both sides use (random, localhost-only, if unset)."""
    env = dict(os.environ)
    if env.get("ROS_DOMAIN_ID", "").strip():
        try:
            domain = int(env["ROS_DOMAIN_ID"])
        except ValueError:
            raise ReplayError(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']!r} is not an integer") from None
    else:
        domain = random.choice(DOMAIN_IDS)
        env["ROS_DOMAIN_ID"] = str(domain)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        # This process's DDS participant reads the discovery range from its own environment.
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    return env, domain


def _await_frame(player: _Player, node: _NodeProcess, stamp_ns: int, frames_sent: int, scan: list[int],
                 timeout_s: float) -> bool:
    """Lockstep: wait until the node has dealt with the panorama just sent (the frames_sent-th, stamp_ns).

    Done when crossview/fix with its stamp arrives, or when a /diagnostics report counts frames_sent
    panoramas processed or dropped (a rejected frame publishes nothing). Sim time runs on at real-time
    speed meanwhile, so that the node's diagnostics timer fires. Returns False when the node keeps
    reporting itself idle with fewer panoramas received than sent for LOCKSTEP_LOST_S: the frame was
    lost on the way (best-effort subscription). scan[0]: position in player.received already looked at.
    """
    sent = time.monotonic()
    deadline = sent + timeout_s
    short_since: float | None = None  # when the node was first seen idle without this frame
    last_clock = next_check = sent
    fix_type = OUTPUT_TOPICS[TOPIC_OUT_FIX]
    while True:
        new = player.received_since(scan[0], CLOCK_PERIOD_S)
        scan[0] += len(new)
        for r in new:
            if r.topic == TOPIC_OUT_FIX:
                if _stamp_ns(typestore().deserialize_cdr(r.raw, fix_type).header) == stamp_ns:
                    return True
            elif r.topic == TOPIC_DIAGNOSTICS and (values := _diag_values(r.raw)):
                received = _int(values, "frames_received")
                done = _int(values, "frames_processed") + _int(values, "frames_dropped")
                if done >= frames_sent:
                    return True
                if received < frames_sent and done >= received:
                    short_since = r.received_s if short_since is None else short_since
                    if r.received_s - short_since >= LOCKSTEP_LOST_S:
                        return False
                else:
                    short_since = None
        now = time.monotonic()
        if now - last_clock >= CLOCK_PERIOD_S:
            player.publish_clock(stamp_ns + int((now - sent) * NS))
            last_clock = now
        if now >= next_check:
            node.check_alive("replaying (lockstep)")
            next_check = now + 1.0
        if now > deadline:
            raise NodeError(f"lockstep: localize_node neither published nor counted the panorama of stamp "
                            f"{stamp_ns / NS:.3f} s within {timeout_s:g} s; its log ends:\n{_tail(node.log_path)}", None)


def play(bag: DriveBag, cmd: list[str], log_path: Path, *, rate: float = 1.0, timeout_s: float = 60.0,
         progress: bool = True, lockstep: bool = False,
         monitor: Callable[[str, int], None] | None = None) -> Playback:
    """Start the node, publish the bag to it at `rate` x real time, record its outputs, stop it.

    lockstep: ignore `rate`; send each panorama only once the node has dealt with the previous one
    (_await_frame), so every frame is processed and the pace is the node's own (throughput).
    monitor(event, pid): called with "playing" just before the first message and "drained" after the
    last frame is processed, before the node is stopped (e.g. to sample the node's memory).
    """
    from tqdm import tqdm

    env, domain = _ros_environment()
    started = time.monotonic()
    player = _Player(domain)
    node = None
    try:
        node = _NodeProcess(cmd, env, log_path)
        items = bag.playlist()
        t0_ns = items[0][0]
        # 1. Wait until both sides see each other; keep the sim clock at the first stamp meanwhile.
        deadline = time.monotonic() + timeout_s
        last_clock = 0.0
        while True:
            node.check_alive("starting")
            player.subscribe_outputs()
            links = player.matched()
            if all(links.values()):
                others = player.node.count_publishers(TOPIC_OUT_FIX)
                if others > 1:
                    raise ReplayError(f"{others} nodes publish {TOPIC_OUT_FIX} in ROS_DOMAIN_ID {domain}: another "
                                      "localizer runs there and would mix into the recording; stop it or set "
                                      "another ROS_DOMAIN_ID")
                break
            if time.monotonic() > deadline:
                down = [t for t, ok in links.items() if not ok]
                raise NodeError(f"localize_node did not connect within {timeout_s:g} s (not matched: "
                                f"{', '.join(down)}); its log ends:\n{_tail(log_path)}", None)
            if time.monotonic() - last_clock >= CLOCK_PERIOD_S:
                player.publish_clock(t0_ns)
                last_clock = time.monotonic()
            time.sleep(0.01)
        settle_end = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_end:
            player.publish_clock(t0_ns)
            time.sleep(CLOCK_PERIOD_S)

        # 2. Publish in stamp order at rate x real time (or lockstep), /clock running alongside.
        published_s: dict[int, float] = {}
        n_frames = n_fixes = lost = 0
        scan = [len(player.snapshot())]
        if monitor is not None:
            monitor("playing", node.proc.pid)
        mono0 = time.monotonic()
        last_clock = 0.0
        bar = tqdm(total=len(bag.panorama_raw), desc="replay (lockstep)" if lockstep else "replay", unit="frame",
                   disable=not progress)
        try:
            for stamp_ns, kind, row in items:
                target = mono0 + (stamp_ns - t0_ns) / NS / rate
                while not lockstep:
                    now = time.monotonic()
                    if now >= target:
                        break
                    if now - last_clock >= CLOCK_PERIOD_S:
                        node.check_alive("replaying")
                        player.publish_clock(t0_ns + int((now - mono0) * rate * NS))
                        last_clock = now
                    time.sleep(min(CLOCK_PERIOD_S, target - now))
                player.publish_clock(stamp_ns)
                if kind == 0:
                    player.fix_pub.publish(bag.fix_raw[row])
                    n_fixes += 1
                else:
                    published_s.setdefault(stamp_ns, player.now_s())
                    player.pano_pub.publish(bag.panorama_raw[row])
                    n_frames += 1
                    if lockstep and not _await_frame(player, node, stamp_ns, n_frames, scan, timeout_s):
                        lost += 1
                    bar.update()
                    bar.set_postfix(estimates=player.counts.get(TOPIC_OUT_FIX, 0), refresh=False)
        finally:
            bar.close()
        publish_s = time.monotonic() - mono0
        if lost:
            log.warning("lockstep: %d of %d panoramas never reached the node (best-effort delivery)", lost, n_frames)

        # 3. Drain: run the clock on until the node's diagnostics say every frame it received is
        # processed, and either all published frames arrived or two reports agree (frames lost
        # on the way, best effort, never arrive).
        last_stamp_ns = items[-1][0]
        end_mono = time.monotonic()
        drain_deadline = end_mono + timeout_s
        seen = 0
        previous: tuple[int, int] | None = None
        while True:
            node.check_alive("finishing the last frames")
            now = time.monotonic()
            player.publish_clock(last_stamp_ns + int((now - end_mono) * rate * NS))
            since_end_s = end_mono - player.t0
            diags = [r for r in player.snapshot() if r.topic == TOPIC_DIAGNOSTICS and r.received_s > since_end_s]
            if len(diags) > seen:
                seen = len(diags)
                values = _diag_values(diags[-1].raw)
                received = _int(values, "frames_received")
                done = _int(values, "frames_processed") + _int(values, "frames_dropped")
                idle = received > 0 and done >= received
                if idle and (received >= n_frames or previous == (received, done)):
                    break
                previous = (received, done) if idle else None
            if now > drain_deadline:
                log.warning("the node did not report all frames processed within %.0f s; stopping it", timeout_s)
                break
            time.sleep(CLOCK_PERIOD_S)
        time.sleep(DELIVERY_S)
        node.check_alive("finishing")
        if monitor is not None:
            monitor("drained", node.proc.pid)
        code = node.stop()
        node = None
        return Playback(received=player.snapshot(), published_s=published_s, frames_published=n_frames,
                        fixes_published=n_fixes, node_returncode=code, wall_s=time.monotonic() - started,
                        domain_id=domain, node_command=cmd, publish_s=publish_s, lockstep=lockstep,
                        frames_lost=lost)
    finally:
        if node is not None:
            node.stop()
        player.close()


# --------------------------------------------------------------------------- evaluation


@dataclass
class FrameRecord:
    """One panorama of the bag: what we published for it, what the truth and the receiver said."""

    index: int
    stamp_s: float
    published_s: float | None  # replay clock (s) when the panorama was published; None if not
    received_s: float | None  # replay clock (s) of the first output with this stamp
    latency_s: float | None  # received_s - published_s
    accepted: bool  # the node published an estimate for this frame
    lat_deg: float | None  # our fix
    lon_deg: float | None
    sigma_m: float | None  # our fix's horizontal 1-sigma (largest axis)
    yaw_enu_rad: float | None  # our heading (crossview/heading)
    truth_lat_deg: float
    truth_lon_deg: float
    truth_yaw_enu_rad: float
    gnss_lat_deg: float | None  # newest valid raw fix not after the stamp
    gnss_lon_deg: float | None
    gnss_age_s: float | None
    fused_lat_deg: float | None  # fused track (odometry + crossview pose) at the stamp
    fused_lon_deg: float | None
    fused_gnss_lat_deg: float | None  # fused track with the raw GNSS added
    fused_gnss_lon_deg: float | None
    error_m: float | None
    gnss_error_m: float | None
    fused_error_m: float | None
    fused_gnss_error_m: float | None
    heading_error_deg: float | None  # |wrap(ours - truth)|


@dataclass
class Evaluation:
    frames: list[FrameRecord]
    summary: dict[str, Any]
    rejections: dict[str, int]  # reason -> count, from the node's last diagnostics
    diagnostics: dict[str, str]  # the node's last diagnostics KeyValues
    fusion_description: str
    fusion_gnss_description: str
    stray_stamps_s: list[float]  # output stamps that are no panorama stamp (should be none)
    track_utm: dict[str, np.ndarray] = field(default_factory=dict)  # for the trajectory plot: name -> (N, 2)


@dataclass
class Outputs:
    """The node's outputs decoded, per topic, in order of receipt."""

    fixes: list[tuple[int, float, Any]]  # (stamp_ns, received_s, msg)
    poses: list[tuple[int, float, Any]]
    headings: list[tuple[int, float, Any]]
    diagnostics: list[tuple[int, float, dict[str, str]]]


def decode_outputs(received: Sequence[Received]) -> Outputs:
    ts = typestore()
    out = Outputs([], [], [], [])
    for r in received:
        msg = ts.deserialize_cdr(r.raw, OUTPUT_TOPICS[r.topic])
        stamp = _stamp_ns(msg.header)
        if r.topic == TOPIC_OUT_FIX:
            out.fixes.append((stamp, r.received_s, msg))
        elif r.topic == TOPIC_OUT_POSE:
            out.poses.append((stamp, r.received_s, msg))
        elif r.topic == TOPIC_OUT_HEADING:
            out.headings.append((stamp, r.received_s, msg))
        else:  # /diagnostics may carry other nodes' statuses too: keep the localizer's
            for status in msg.status:
                if str(status.name).startswith(NODE_NAME):
                    out.diagnostics.append((stamp, r.received_s, {str(kv.key): str(kv.value) for kv in status.values}))
    return out


def _stats(errors_m: Sequence[float]) -> dict[str, Any]:
    """median/mean/p95 and shares under 5/10/25 m of the finite errors (None when there are none)."""
    e = np.asarray([v for v in errors_m if v is not None and math.isfinite(v)], dtype=np.float64)
    if e.size == 0:
        return {"count": 0, "median_m": None, "mean_m": None, "p95_m": None, "under_5m_pct": None,
                "under_10m_pct": None, "under_25m_pct": None}
    return {"count": int(e.size), "median_m": float(np.median(e)), "mean_m": float(e.mean()),
            "p95_m": float(np.percentile(e, 95)), "under_5m_pct": float(100.0 * np.mean(e < 5.0)),
            "under_10m_pct": float(100.0 * np.mean(e < 10.0)), "under_25m_pct": float(100.0 * np.mean(e < 25.0))}


def _interp_angle(t: np.ndarray, tp: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.asarray(geo.wrap_angle_rad(np.interp(t, tp, np.unwrap(angles))))


def _fusion_measurements(bag: DriveBag, outputs: Outputs, enu: geo.LocalENU) -> tuple[list, list]:
    """(odometry + pose measurements, raw GNSS measurements) for crossview_ros.fusion."""
    from crossview_ros import fusion

    ms = [fusion.odometry_twist(float(t), *map(float, v), c)
          for t, v, c in zip(bag.odom_stamp_s, bag.odom_twist, bag.odom_twist_cov)]
    for stamp, _, msg in outputs.poses:
        p = msg.pose.pose
        ms.append(fusion.pose_with_covariance(stamp / NS, float(p.position.x), float(p.position.y),
                                              _yaw_of(p.orientation), np.asarray(msg.pose.covariance, np.float64)))
    for stamp, _, msg in outputs.headings:
        ms.append(fusion.heading_yaw(stamp / NS, _yaw_of(msg.orientation), float(msg.orientation_covariance[8])))
    gnss = []
    for f in bag.fixes:
        if not f.valid:
            continue
        e, n, _ = enu.forward(f.lat_deg, f.lon_deg, 0.0)
        cov = f.covariance_enu_m2[:2, :2] if f.covariance_enu_m2 is not None else np.eye(2) * 30.0 ** 2
        gnss.append(fusion.gnss_position(f.stamp_ns / NS, float(e), float(n), cov))
    return ms, gnss


def _check_pose_origin(outputs: Outputs, enu: geo.LocalENU) -> None:
    """crossview/pose must be in the datum's ENU plane (pose_origin datum): compare with crossview/fix."""
    fixes = {s: m for s, _, m in outputs.fixes}
    for stamp, _, pose in outputs.poses[:5]:
        fix = fixes.get(stamp)
        if fix is None:
            continue
        e, n, _ = enu.forward(float(fix.latitude), float(fix.longitude), 0.0)
        gap = math.hypot(e - pose.pose.pose.position.x, n - pose.pose.pose.position.y)
        if gap > POSE_ORIGIN_TOLERANCE_M:
            raise ReplayError(f"crossview/pose lies {gap:.1f} m from crossview/fix in the datum's ENU plane: the "
                              "node is not publishing poses with pose_origin 'datum' at the bag's datum; do not "
                              "override pose_origin or datum in --params-file / --node-arg")


def evaluate(bag: DriveBag, playback: Playback, *, fusion_config: Any = None) -> Evaluation:
    """Per-frame errors and the summary (module docstring) from the bag and what the node published."""
    from crossview_ros import fusion

    enu = geo.LocalENU(bag.datum_lat_deg, bag.datum_lon_deg)
    outputs = decode_outputs(playback.received)
    _check_pose_origin(outputs, enu)
    stamps_ns = bag.panorama_stamp_ns
    stamps_s = bag.panorama_stamp_s
    index_of = {int(s): i for i, s in enumerate(stamps_ns)}
    stray = sorted({s / NS for s, _, _ in outputs.fixes + outputs.poses + outputs.headings if s not in index_of})

    # Truth at the panorama stamps: positions interpolated in the datum's ENU plane, yaw on the circle.
    te, tn, _ = enu.forward(bag.truth_lat_deg, bag.truth_lon_deg, np.zeros_like(bag.truth_lat_deg))
    tlat, tlon, _ = enu.inverse(np.interp(stamps_s, bag.truth_stamp_s, te), np.interp(stamps_s, bag.truth_stamp_s, tn))
    gp_lat, gp_lon = geo.utm_to_latlon(bag.truth_easting_m, bag.truth_northing_m, bag.zone)
    yaw_enu_truth = np.asarray(geo.yaw_utm_to_enu(bag.truth_yaw_utm_rad, gp_lat, gp_lon, bag.zone))
    truth_yaw = _interp_angle(stamps_s, bag.truth_pose_stamp_s, yaw_enu_truth)

    # Raw GNSS: the newest valid fix whose stamp is not after the panorama's.
    valid = [f for f in bag.fixes if f.valid]
    fix_ns = np.asarray([f.stamp_ns for f in valid], dtype=np.int64)
    gnss_rows = np.searchsorted(fix_ns, stamps_ns, side="right") - 1

    first_out: dict[int, float] = {}
    for stamp, t, _ in outputs.fixes + outputs.poses + outputs.headings:
        first_out[stamp] = min(t, first_out.get(stamp, math.inf))
    ours = {s: m for s, _, m in outputs.fixes}
    headings = {s: _yaw_of(m.orientation) for s, _, m in outputs.headings}

    config = fusion_config if fusion_config is not None else default_fusion_config()
    ms, gnss_ms = _fusion_measurements(bag, outputs, enu)
    fused = fusion.fuse_track(ms, stamps_s, fusion.with_gnss(config, False))
    fused_g = fusion.fuse_track(ms + gnss_ms, stamps_s, fusion.with_gnss(config, True))

    def to_latlon(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(x) & np.isfinite(y)
        lat, lon = np.full(x.shape, np.nan), np.full(x.shape, np.nan)
        if ok.any():
            la, lo, _ = enu.inverse(x[ok], y[ok])
            lat[ok], lon[ok] = la, lo
        return lat, lon

    f_lat, f_lon = to_latlon(fused.x_m, fused.y_m)
    g_lat, g_lon = to_latlon(fused_g.x_m, fused_g.y_m)

    def dist(lat: float | None, lon: float | None, i: int) -> float | None:
        if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        return float(geo.distance_m(float(tlat[i]), float(tlon[i]), float(lat), float(lon)))

    def opt(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    frames: list[FrameRecord] = []
    for i, stamp in enumerate(stamps_ns.tolist()):
        msg = ours.get(stamp)
        lat = lon = sigma = None
        if msg is not None:
            lat, lon = float(msg.latitude), float(msg.longitude)
            cov = np.asarray(msg.position_covariance, dtype=np.float64).reshape(3, 3)[:2, :2]
            sigma = float(math.sqrt(max(float(np.linalg.eigvalsh(cov).max()), 0.0)))
        g = int(gnss_rows[i])
        glat = glon = gage = None
        if g >= 0:
            glat, glon, gage = valid[g].lat_deg, valid[g].lon_deg, (stamp - int(fix_ns[g])) / NS
        pub = playback.published_s.get(stamp)
        rec = first_out.get(stamp)
        yaw = headings.get(stamp)
        frames.append(FrameRecord(
            index=i, stamp_s=stamp / NS, published_s=pub, received_s=rec,
            latency_s=None if pub is None or rec is None else rec - pub, accepted=msg is not None,
            lat_deg=lat, lon_deg=lon, sigma_m=sigma, yaw_enu_rad=yaw,
            truth_lat_deg=float(tlat[i]), truth_lon_deg=float(tlon[i]), truth_yaw_enu_rad=float(truth_yaw[i]),
            gnss_lat_deg=glat, gnss_lon_deg=glon, gnss_age_s=gage,
            fused_lat_deg=opt(f_lat[i]), fused_lon_deg=opt(f_lon[i]),
            fused_gnss_lat_deg=opt(g_lat[i]), fused_gnss_lon_deg=opt(g_lon[i]),
            error_m=dist(lat, lon, i), gnss_error_m=dist(glat, glon, i),
            fused_error_m=dist(opt(f_lat[i]), opt(f_lon[i]), i),
            fused_gnss_error_m=dist(opt(g_lat[i]), opt(g_lon[i]), i),
            heading_error_deg=None if yaw is None else abs(math.degrees(geo.wrap_angle_rad(yaw - truth_yaw[i]))),
        ))

    diag = outputs.diagnostics[-1][2] if outputs.diagnostics else {}
    rejections = {k[len("rejected_"):]: _int(diag, k) for k in sorted(diag) if k.startswith("rejected_")}
    summary = _summary(bag, playback, frames, diag, rejections, fused, fused_g, len(stray))

    track_utm: dict[str, np.ndarray] = {}
    for name, la, lo in (("truth", tlat, tlon),
                         ("gnss", [f.gnss_lat_deg for f in frames], [f.gnss_lon_deg for f in frames]),
                         ("crossview", [f.lat_deg for f in frames], [f.lon_deg for f in frames]),
                         ("fused", f_lat, f_lon)):
        la = np.asarray([np.nan if v is None else v for v in la], dtype=np.float64)
        lo = np.asarray([np.nan if v is None else v for v in lo], dtype=np.float64)
        xy = np.full((la.size, 2), np.nan)
        ok = np.isfinite(la) & np.isfinite(lo)
        if ok.any():
            e, n, _ = geo.latlon_to_utm(la[ok], lo[ok], zone=bag.zone)
            xy[ok] = np.column_stack([e, n])
        track_utm[name] = xy
    return Evaluation(frames=frames, summary=summary, rejections=rejections, diagnostics=diag,
                      fusion_description=fused.config.describe(), fusion_gnss_description=fused_g.config.describe(),
                      stray_stamps_s=stray, track_utm=track_utm)


def _summary(bag: DriveBag, playback: Playback, frames: list[FrameRecord], diag: dict[str, str],
             rejections: dict[str, int], fused: Any, fused_g: Any, stray: int) -> dict[str, Any]:
    n = len(frames)
    published = [f for f in frames if f.accepted]
    heading = [f.heading_error_deg for f in frames if f.heading_error_deg is not None]
    latency_ms = [1000.0 * f.latency_s for f in published if f.latency_s is not None]
    gnss_pub = [f.gnss_error_m for f in published]
    return {
        "frames": n,
        "frames_published_by_replay": playback.frames_published,
        "published": len(published),
        "published_share": len(published) / n if n else 0.0,
        "errors": {
            "gnss": _stats([f.gnss_error_m for f in frames]),
            "crossview": _stats([f.error_m for f in published]),
            "gnss_on_published_frames": _stats(gnss_pub),
            "fused": _stats([f.fused_error_m for f in frames]),
            "fused_with_gnss": _stats([f.fused_gnss_error_m for f in frames]),
        },
        "heading": {
            "count": len(heading),
            "median_deg": float(np.median(heading)) if heading else None,
            "under_10deg_pct": float(100.0 * np.mean(np.asarray(heading) < 10.0)) if heading else None,
            "flip_share": float(np.mean(np.asarray(heading) > 135.0)) if heading else None,  # within 45 deg of 180
        },
        "latency_ms": {
            "count": len(latency_ms),
            "p50": float(np.percentile(latency_ms, 50)) if latency_ms else None,
            "p99": float(np.percentile(latency_ms, 99)) if latency_ms else None,
            "mean": float(np.mean(latency_ms)) if latency_ms else None,
        },
        "rejections": rejections,
        "node_counters": {k: _int(diag, k) for k in ("frames_received", "frames_processed", "frames_dropped",
                                                      "estimates_published", "errors") if k in diag},
        "fusion": {"primary": "odometry + crossview pose", "description": fused.config.describe(),
                   "accepted": fused.accepted, "rejected": fused.rejected,
                   "with_gnss": {"description": fused_g.config.describe(), "accepted": fused_g.accepted,
                                 "rejected": fused_g.rejected}},
        "stray_output_stamps": stray,
        "bag": str(bag.path),
        "datum": [bag.datum_lat_deg, bag.datum_lon_deg],
        "duration_s": float(bag.panorama_stamp_s[-1] - bag.panorama_stamp_s[0]) if n else 0.0,
    }


def default_fusion_config() -> Any:
    """The map-frame block of config/ekf.yaml if found (repository or installed share), else the
    built-in robot_localization defaults (the report says which)."""
    from crossview_ros import fusion

    path = find_ekf_config()
    return fusion.FusionConfig.from_ekf_yaml(path) if path is not None else fusion.FusionConfig()


def find_ekf_config() -> Path | None:
    here = Path(__file__).resolve().parents[1] / "config" / "ekf.yaml"  # source checkout / editable install
    if here.is_file():
        return here
    share = Path(sys.prefix) / "share" / "crossview_ros" / "config" / "ekf.yaml"  # colcon / pip data_files
    return share if share.is_file() else None


# --------------------------------------------------------------------------- writing


def write_outputs_mcap(path: Path, received: Sequence[Received]) -> Path:
    """The node's messages as one MCAP file (rosbags), log time = header stamp, in stamp order."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    rows = []
    for r in received:
        msg = ts.deserialize_cdr(r.raw, OUTPUT_TOPICS[r.topic])
        rows.append((_stamp_ns(msg.header), r.received_s, r.topic, r.raw))
    rows.sort(key=lambda x: (x[0], x[1]))
    work = Path(tempfile.mkdtemp(prefix=".outputs.", dir=path.parent))
    try:
        bag_dir = work / path.stem
        with Writer(bag_dir, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
            conns = {t: writer.add_connection(t, m, typestore=ts) for t, m in OUTPUT_TOPICS.items()}
            for stamp, _, topic, raw in rows:
                writer.write(conns[topic], stamp, raw)
        os.replace(bag_dir / f"{path.stem}.mcap", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


FRAME_COLUMNS = [f for f in FrameRecord.__dataclass_fields__]


def write_frames_csv(path: Path, frames: Sequence[FrameRecord]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FRAME_COLUMNS)
    for f in frames:
        row = asdict(f)
        w.writerow(["" if row[c] is None else (f"{row[c]:.9f}" if isinstance(row[c], float) else row[c])
                    for c in FRAME_COLUMNS])
    path.write_text(buf.getvalue())
    return path


@dataclass
class ReplayResult:
    """What replay_bag produced: the folder, per-frame records, the summary written to summary.json."""

    out: Path
    frames: list[FrameRecord]
    summary: dict[str, Any]
    rejections: dict[str, int]
    node_returncode: int | None
    wall_s: float
    outputs_mcap: Path
    report: Path


def replay_bag(bag: str | os.PathLike, tiles: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
               rate: float = 1.0, config: str | os.PathLike | None = None, node_args: Sequence[str] = (),
               progress: bool = True, *, timeout_s: float = 60.0, ekf_config: str | os.PathLike | None = None,
               orthophoto: str | os.PathLike | None = None, overwrite: bool = False, lockstep: bool = False,
               monitor: Callable[[str, int], None] | None = None) -> ReplayResult:
    """Replay `bag` through localize_node and write OUT (module docstring); returns the records.

    config: the node's --params-file; node_args: more ROS arguments for it (e.g. "-p", "heading:=true");
    lockstep: send each panorama once the node has published or counted the previous one, `rate`
    ignored (every frame processed, at the node's own pace; the node's diagnostics_period_s is set to
    LOCKSTEP_DIAGNOSTICS_PERIOD_S unless node_args set it); monitor(event, node_pid): see play();
    ekf_config: robot_localization YAML whose map block sets up the fused track (default
    config/ekf.yaml); orthophoto: a GeoTIFF to draw the trajectory on (default: the tile set's tiles).
    Raises ReplayError (BagError, NodeError) with exit_code; OUT is then not written.
    """
    from crossview_ros import fusion, report

    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise ReplayError(f"rate must be > 0 (1 = real time), got {rate!r}")
    out = Path(out)
    tiles, model = Path(tiles).resolve(), Path(model).resolve()
    for what, p in (("tile set", tiles), ("model", model)):
        if not p.is_dir():
            raise ReplayError(f"{what} folder {p} does not exist")
    if config is not None and not Path(config).is_file():
        raise ReplayError(f"params file {config} does not exist")
    if out.exists() and not overwrite:
        raise ReplayError(f"{out} exists; pass overwrite=True (--overwrite) or choose another folder")
    fusion_config = (fusion.FusionConfig.from_ekf_yaml(ekf_config) if ekf_config is not None
                     else default_fusion_config())
    drive = read_bag(bag)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        extra = ("-p", f"diagnostics_period_s:={LOCKSTEP_DIAGNOSTICS_PERIOD_S}") if lockstep else ()
        cmd = node_command(tiles, model, drive.datum_lat_deg, drive.datum_lon_deg,
                           params_file=Path(config).resolve() if config is not None else None,
                           node_args=(*extra, *node_args))
        playback = play(drive, cmd, work / "node.log", rate=rate, timeout_s=timeout_s, progress=progress,
                        lockstep=lockstep, monitor=monitor)
        evaluation = evaluate(drive, playback, fusion_config=fusion_config)
        evaluation.summary["replay"] = {
            "rate": rate, "tiles": str(tiles), "model": str(model),
            "params_file": None if config is None else str(config), "node_args": list(node_args),
            "node_command": playback.node_command, "node_exit_code": playback.node_returncode,
            "ros_domain_id": playback.domain_id, "wall_s": playback.wall_s,
            "lockstep": playback.lockstep, "publish_s": playback.publish_s, "frames_lost": playback.frames_lost,
            "frames_per_s": playback.frames_published / playback.publish_s if playback.publish_s > 0 else None,
            "fixes_published_by_replay": playback.fixes_published,
        }
        write_outputs_mcap(work / "outputs.mcap", playback.received)
        write_frames_csv(work / "frames.csv", evaluation.frames)
        report.write_report(work, evaluation, drive, tiles=tiles, orthophoto=orthophoto)
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp made it private; the result is an ordinary folder
        if out.exists():
            os.replace(out, work / ".replaced")
        os.replace(work, out)
        shutil.rmtree(out / ".replaced", ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ReplayResult(out=out, frames=evaluation.frames, summary=evaluation.summary,
                        rejections=evaluation.rejections, node_returncode=playback.node_returncode,
                        wall_s=playback.wall_s, outputs_mcap=out / "outputs.mcap", report=out / "report.md")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossview-replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="drive bag folder (crossview-sim drive, or a recording with the same topics)")
    p.add_argument("--tiles", required=True, help="tile set folder encoded with --model")
    p.add_argument("--model", required=True, help="exported model folder")
    p.add_argument("--out", required=True, help="output folder (outputs.mcap, report.md, *.png, summary.json)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="playback speed, x real time (default 1.0; 2 = twice as fast)")
    p.add_argument("--lockstep", action="store_true",
                   help="ignore --rate: send each panorama once the node has published or counted the previous "
                        "one (every frame processed, at the node's own pace; summary.json replay.frames_per_s)")
    p.add_argument("--params-file", "--config", dest="params_file",
                   help="node parameters YAML (e.g. config/localize.yaml); tile_set, model, datum and sim time "
                        "are set by the replay")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="one more ROS argument for the node, repeatable: --node-arg=-p --node-arg=heading:=true")
    p.add_argument("--ekf-config", help="robot_localization YAML for the fused track (default config/ekf.yaml)")
    p.add_argument("--orthophoto", help="GeoTIFF to draw the trajectory on (default: mosaic of the tile images)")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="longest wait for the node to connect, and to finish after the last frame (default 60)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        result = replay_bag(args.bag, args.tiles, args.model, args.out, rate=args.rate, config=args.params_file,
                            node_args=args.node_arg, progress=not args.no_progress, timeout_s=args.timeout_s,
                            ekf_config=args.ekf_config, orthophoto=args.orthophoto, overwrite=args.overwrite,
                            lockstep=args.lockstep)
    except ReplayError as exc:
        print(f"crossview-replay: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError) as exc:  # fusion config, orthophoto
        print(f"crossview-replay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("crossview-replay: interrupted; nothing written", file=sys.stderr)
        return 130
    s = result.summary
    ours, gnss, fused = (s["errors"][k] for k in ("crossview", "gnss", "fused"))

    def med(stats: dict) -> str:
        return "n/a" if stats["median_m"] is None else f"{stats['median_m']:.1f} m"

    print(f"wrote {result.out}: {s['published']}/{s['frames']} frames published ({100 * s['published_share']:.0f} %), "
          f"median error crossview {med(ours)}, raw GNSS {med(gnss)}, fused {med(fused)}; see {result.report}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
