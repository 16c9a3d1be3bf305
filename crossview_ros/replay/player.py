"""The replay's ROS 2 side: publishes /clock and the bag's panoramas and fixes to the node, records
what the node publishes, and runs one playback (play) from start-up through the last frame. The
node always gets the simulator's topic names (panorama/compressed or panorama for a raw Image,
gnss/fix, odom), whatever the bag calls them (crossview_ros.bag.topics); a rig's cameras go to the
node's camera topics (per camera N: N/image/compressed or N/image, and N/camera_info before each
image), each capture's images together, their CameraInfo also once before the first frame."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crossview_ros.bag.captures import CameraTrack
from crossview_ros.bag.drive import KIND_FIX, KIND_ODOM, NS, DriveBag
from crossview_ros.bag.drive import stamp_ns as header_stamp_ns
from crossview_ros.bag.writer import TOPIC_GNSS, TOPIC_ODOM, TOPIC_PANORAMA, typestore
from crossview_ros.replay_errors import NodeError, ReplayError
from crossview_ros.replay_evaluation import (
    NODE_NAME, OUTPUT_TOPICS, TOPIC_DIAGNOSTICS, TOPIC_OUT_FIX, TOPIC_OUT_POSE, Playback, Received, diag_int,
    diag_values,
)
from crossview_ros.replay.node_process import NodeProcess, ros_environment, tail

log = logging.getLogger("crossview_replay")

CLOCK_PERIOD_S = 0.02  # wall seconds between /clock messages while waiting (rosbag2 play: 40 Hz)
# Lockstep: the node's diagnostics period (sim s) the replay asks for, so that a rejected frame (no output) is
# seen counted within a few clock ticks; user --node-args come later and may override it.
LOCKSTEP_DIAGNOSTICS_PERIOD_S = CLOCK_PERIOD_S
LOCKSTEP_LOST_S = 0.5  # lockstep: node idle without the frame just sent for this long (wall s) = frame lost
DISCOVERY_S = 1.0  # before starting the node: time for a stray localize_node in the domain to be seen
SETTLE_S = 0.5  # after discovery matched both ways, let the node's side finish matching too
DELIVERY_S = 0.3  # after the node reports all frames processed, outputs still in flight
STOP_TIMEOUT_S = 10.0  # SIGINT -> exit; then SIGTERM, then SIGKILL
TOPIC_PANORAMA_RAW = "/panorama"  # the node's sensor_msgs/Image input


class Player:
    """The replay's rclpy side: its own context, a node with the publishers and recorders, a spin thread."""

    def __init__(self, domain_id: int, raw_panorama: bool = False, cameras: Sequence[CameraTrack] = ()) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from nav_msgs.msg import Odometry
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("crossview_replay", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        # Reliable publishers match the node's best-effort subscriptions as well as reliable ones.
        self.clock_pub = self.node.create_publisher(Clock, "/clock", reliable)
        self.pano_topic = TOPIC_PANORAMA_RAW if raw_panorama else TOPIC_PANORAMA  # the node subscribes to both
        self.cameras = tuple(cameras)
        self.camera_pubs: list[tuple[Any, Any]] = []  # (image, CameraInfo) publisher per camera, in rig order
        self.pano_pub = None
        if self.cameras:
            for track in self.cameras:
                image_type, suffix = (CompressedImage, "image/compressed") if track.compressed else (Image, "image")
                self.camera_pubs.append((
                    self.node.create_publisher(image_type, f"/{track.name}/{suffix}", reliable),
                    self.node.create_publisher(CameraInfo, f"/{track.name}/camera_info", reliable)))
        else:
            self.pano_pub = self.node.create_publisher(Image if raw_panorama else CompressedImage, self.pano_topic,
                                                       reliable)
        self.fix_pub = self.node.create_publisher(NavSatFix, TOPIC_GNSS, reliable)
        self.odom_pub = self.node.create_publisher(Odometry, TOPIC_ODOM, reliable)
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
               TOPIC_GNSS: self.fix_pub.get_subscription_count() > 0}
        if self.pano_pub is not None:
            out[self.pano_topic] = self.pano_pub.get_subscription_count() > 0
        for pubs in self.camera_pubs:
            out.update({pub.topic_name: pub.get_subscription_count() > 0 for pub in pubs})
        for topic in (TOPIC_OUT_FIX, TOPIC_OUT_POSE, TOPIC_DIAGNOSTICS):
            sub = self.subs.get(topic)
            out[topic] = sub is not None and sub.get_publisher_count() > 0
        return out

    def publish_camera_infos(self, stamp_ns: int) -> None:
        """Each camera's CameraInfo in force at a stamp (the node parses a repeat no further)."""
        for track, (_, info_pub) in zip(self.cameras, self.camera_pubs):
            info_pub.publish(track.info_raw[track.info_index(stamp_ns)])

    def publish_capture(self, bag: DriveBag, row: int) -> None:
        """One capture: each camera's CameraInfo, then each camera's image."""
        stamp = int(bag.panorama_stamp_ns[row])
        self.publish_camera_infos(stamp)
        for track, (image_pub, _), image_row in zip(self.cameras, self.camera_pubs, bag.capture_rows[row]):
            image_pub.publish(track.image_raw[int(image_row)])

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


def await_frame(player: Player, node: NodeProcess, stamp_ns: int, frames_sent: int, scan: list[int],
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
                if header_stamp_ns(typestore().deserialize_cdr(r.raw, fix_type).header) == stamp_ns:
                    return True
            elif r.topic == TOPIC_DIAGNOSTICS and (values := diag_values(r.raw)):
                received = diag_int(values, "frames_received")
                done = diag_int(values, "frames_processed") + diag_int(values, "frames_dropped")
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
                            f"{stamp_ns / NS:.3f} s within {timeout_s:g} s; its log ends:\n{tail(node.log_path)}", None)


def play(bag: DriveBag, cmd: list[str], log_path: Path, *, rate: float = 1.0, timeout_s: float = 60.0,
         progress: bool = True, lockstep: bool = False,
         monitor: Callable[[str, int], None] | None = None) -> Playback:
    """Start the node, publish the bag to it at `rate` x real time, record its outputs, stop it.

    lockstep: ignore `rate`; send each panorama only once the node has dealt with the previous one
    (await_frame), so every frame is processed and the pace is the node's own (throughput).
    monitor(event, pid): called with "playing" just before the first message and "drained" after the
    last frame is processed, before the node is stopped (e.g. to sample the node's memory).
    """
    env, domain = ros_environment()
    started = time.monotonic()
    player = Player(domain, raw_panorama=bag.raw_panorama, cameras=bag.cameras)
    node = None
    try:
        check_no_other_localizer(player, domain)
        node = NodeProcess(cmd, env, log_path)
        items = bag.playlist()
        connect(player, node, items[0][0], domain, timeout_s)
        if monitor is not None:
            monitor("playing", node.proc.pid)
        sent = publish_bag(player, node, bag, items, rate=rate, lockstep=lockstep, timeout_s=timeout_s,
                           progress=progress)
        drain(player, node, items[-1][0], sent.frames, rate=rate, timeout_s=timeout_s)
        check_alone(player, domain)  # a stray one seen only once it answered our frames (a very busy host)
        if monitor is not None:
            monitor("drained", node.proc.pid)
        code = node.stop()
        node = None
        return Playback(received=player.snapshot(), published_s=sent.published_s, frames_published=sent.frames,
                        fixes_published=sent.fixes, node_returncode=code, wall_s=time.monotonic() - started,
                        domain_id=domain, node_command=cmd, publish_s=sent.wall_s, lockstep=lockstep,
                        frames_lost=sent.lost)
    finally:
        if node is not None:
            node.stop()
        player.close()


def localizers_in_graph(player: Player) -> list[str]:
    """The localize_nodes this process sees in its domain at the root namespace, where the replay's runs."""
    return [f"/{name}" for name, ns in player.node.get_node_names_and_namespaces() if name == NODE_NAME and ns == "/"]


def check_no_other_localizer(player: Player, domain: int) -> None:
    """ReplayError when a localize_node already runs in this domain (a stray one would answer our frames
    too, and its diagnostics would mix with ours): discovery on this host settles within a second."""
    deadline = time.monotonic() + DISCOVERY_S
    while time.monotonic() < deadline:
        if found := localizers_in_graph(player):
            raise stray_localizer(domain, ", ".join(found))
        time.sleep(0.05)


def stray_localizer(domain: int, which: str) -> ReplayError:
    return ReplayError(f"a localize_node ({which}) already runs in ROS_DOMAIN_ID {domain}; its outputs would mix "
                       "into this replay's: stop it (a replay killed before its node could be stopped?) or set "
                       "another ROS_DOMAIN_ID")


def check_alone(player: Player, domain: int) -> None:
    """ReplayError when more than our node publishes crossview/fix or is named localize_node here."""
    others = max(player.node.count_publishers(TOPIC_OUT_FIX), len(localizers_in_graph(player)))
    if others > 1:
        raise stray_localizer(domain, f"{others} localizers publish {TOPIC_OUT_FIX}, ours included")


def connect(player: Player, node: NodeProcess, t0_ns: int, domain: int, timeout_s: float) -> None:
    """Wait until the node and the player see each other both ways, the sim clock held at the first
    stamp; then let the node finish matching (SETTLE_S)."""
    deadline = time.monotonic() + timeout_s
    last_clock = 0.0
    while True:
        node.check_alive("starting")
        player.subscribe_outputs()
        links = player.matched()
        if all(links.values()):
            check_alone(player, domain)
            break
        if time.monotonic() > deadline:
            down = [t for t, ok in links.items() if not ok]
            raise NodeError(f"localize_node did not connect within {timeout_s:g} s (not matched: "
                            f"{', '.join(down)}); its log ends:\n{tail(node.log_path)}", None)
        if time.monotonic() - last_clock >= CLOCK_PERIOD_S:
            player.publish_clock(t0_ns)
            last_clock = time.monotonic()
        time.sleep(0.01)
    settle_end = time.monotonic() + SETTLE_S
    if player.cameras:  # the node knows each camera's intrinsics before the first capture comes
        player.publish_camera_infos(t0_ns)
    while time.monotonic() < settle_end:
        player.publish_clock(t0_ns)
        time.sleep(CLOCK_PERIOD_S)
    check_alone(player, domain)  # once more: on a busy host a stray one may be seen only now


@dataclass
class Sent:
    """What publish_bag sent: counts, when each panorama went out (replay clock, s), frames lost."""

    frames: int = 0
    fixes: int = 0
    lost: int = 0
    wall_s: float = 0.0
    published_s: dict[int, float] = field(default_factory=dict)


def publish_bag(player: Player, node: NodeProcess, bag: DriveBag, items: list[tuple[int, int, int]], *,
                rate: float, lockstep: bool, timeout_s: float, progress: bool) -> Sent:
    """Publish the playlist in stamp order at rate x real time (or lockstep), /clock running alongside."""
    sent = Sent()
    t0_ns = items[0][0]
    scan = [len(player.snapshot())]
    mono0 = time.monotonic()
    last_clock = 0.0
    with tqdm(total=len(bag.panorama_stamp_ns), desc="replay (lockstep)" if lockstep else "replay", unit="frame",
              disable=not progress) as bar:
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
            if kind == KIND_FIX:
                player.fix_pub.publish(bag.fix_raw[row])
                sent.fixes += 1
                continue
            if kind == KIND_ODOM:
                player.odom_pub.publish(bag.odom_raw[row])
                continue
            sent.published_s.setdefault(stamp_ns, player.now_s())
            if player.cameras:
                player.publish_capture(bag, row)
            else:
                player.pano_pub.publish(bag.panorama_raw[row])
            sent.frames += 1
            if lockstep and not await_frame(player, node, stamp_ns, sent.frames, scan, timeout_s):
                sent.lost += 1
            bar.update()
            bar.set_postfix(estimates=player.counts.get(TOPIC_OUT_FIX, 0), refresh=False)
    sent.wall_s = time.monotonic() - mono0
    if sent.lost:
        log.warning("lockstep: %d of %d panoramas never reached the node (best-effort delivery)", sent.lost,
                    sent.frames)
    return sent


def drain(player: Player, node: NodeProcess, last_stamp_ns: int, frames_sent: int, *, rate: float,
          timeout_s: float) -> None:
    """Run the clock on until the node's diagnostics say every frame it received is processed, and either
    all published frames arrived or two reports agree (frames lost on the way, best effort, never arrive)."""
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
            values = diag_values(diags[-1].raw)
            received = diag_int(values, "frames_received")
            done = diag_int(values, "frames_processed") + diag_int(values, "frames_dropped")
            idle = received > 0 and done >= received
            if idle and (received >= frames_sent or previous == (received, done)):
                break
            previous = (received, done) if idle else None
        if now > drain_deadline:
            log.warning("the node did not report all frames processed within %.0f s; stopping it", timeout_s)
            break
        time.sleep(CLOCK_PERIOD_S)
    time.sleep(DELIVERY_S)
    node.check_alive("finishing")
