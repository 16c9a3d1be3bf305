"""The real localize_node, started as a subprocess, against a test node over DDS on loopback.

One synthetic city (orthophoto -> 40 m tile set encoded by the tiny exported model) serves every
test; panoramas are rendered in it at street positions. Each node process runs in its own
namespace, in a per-module random ROS domain, LOCALHOST discovery. Every output is compared with
the Localizer run in-process on the same panorama, fix and stamp: the node must add nothing but
message conversion. Waits are deadlines on observed events (diagnostics counters the node
publishes every 0.1 s, messages arriving), never bare sleeps, except the short grace period
that a "nothing was published" assertion needs.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, Imu, NavSatFix, NavSatStatus  # noqa: E402

from benchmarks.bench_hostile import corrupt_jpegs, jpeg_bomb  # noqa: E402
from crossview_ros import engines as E  # noqa: E402
from crossview_ros.preprocess import preprocess_ground  # noqa: E402
from crossview_ros import geo  # noqa: E402
from crossview_ros.estimate import Estimate, Fix, Reason  # noqa: E402
from crossview_ros.localizer import Localizer  # noqa: E402
from crossview_ros.localizer_config import LocalizerConfig  # noqa: E402
from crossview_ros.nodes import convert  # noqa: E402
from crossview_ros.nodes.localize_node import HARDWARE_ID, REJECT_KEYS  # noqa: E402
from crossview_ros.nodes.plumbing import NewestSlot  # noqa: E402
from crossview_ros.nodes.parameters import PARAMETERS, YAML_NODE_KEY, format_yaml_value  # noqa: E402

DOMAIN_ID = random.SystemRandom().randint(1, 100)
ROS_ENV = {"ROS_DOMAIN_ID": str(DOMAIN_ID), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
TILE_M = 40.0
PANO_H = 64  # the tiny model's ground input is 64 x 128
FIX_SIGMA_M = 15.0
FIX_UP_VAR_M2 = 9.0
FIX_ALTITUDE_M = 12.5
START_TIMEOUT_S = 60.0
FRAME_TIMEOUT_S = 10.0
GRACE_S = 0.3  # after the node counted a rejected frame: time for a wrongly published output to arrive


def node_command() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("localize_node")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "crossview_ros.nodes.localize_node"]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.01)


def to_time(stamp_s: float) -> Time:
    sec = math.floor(stamp_s)
    return Time(sec=int(sec), nanosec=min(int(round((stamp_s - sec) * 1e9)), 999_999_999))


def time_s(t: Time) -> float:
    return t.sec + t.nanosec * 1e-9


def same_stamp(a: Time, b: Time) -> bool:
    return (a.sec, a.nanosec) == (b.sec, b.nanosec)


class Clock:
    """Strictly increasing stamps on the node's clock: wall time, or wall time + offset_s (sim time)."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s
        self.last = 0.0

    def now(self) -> float:
        return time.time() + self.offset_s

    def next(self) -> float:
        self.last = max(self.now(), self.last + 0.001)
        return self.last


# --------------------------------------------------------------------------- pure parts (no DDS)


def test_newest_slot_keeps_only_the_newest_item():
    slot: NewestSlot[int] = NewestSlot()
    assert slot.take(timeout_s=0.0) is None
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken: dropped
    assert slot.take() == 2 and slot.take(timeout_s=0.01) is None
    got = []
    taker = threading.Thread(target=lambda: got.append(slot.take()))
    taker.start()
    slot.close()  # wakes a blocked taker with None
    taker.join(timeout=5.0)
    assert got == [None]


def test_exit_deadline_leaves_a_hung_teardown_with_its_code():
    """A teardown that blocks (a middleware hang) ends the process with the code after the deadline;
    one that finishes cancels it."""
    head = "import time\nfrom crossview_ros.nodes.plumbing import exit_deadline\n"
    hung = subprocess.run([sys.executable, "-c", head + "with exit_deadline(0.5, 2):\n    time.sleep(120)\n"],
                          capture_output=True, text=True, timeout=60)
    assert hung.returncode == 2 and "teardown still running after 0.5 s: exiting with code 2" in hung.stderr
    done = subprocess.run([sys.executable, "-c", head + "with exit_deadline(0.5, 2):\n    pass\n"
                           "time.sleep(1.5)\nprint('done')\n"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "done\n" and done.stderr == ""


def test_image_rows_with_padding_and_bad_sizes():
    rgb = np.arange(4 * 8 * 3, dtype=np.uint8).reshape(4, 8, 3)
    padded = np.zeros((4, 8 * 3 + 5), np.uint8)
    padded[:, :24] = rgb.reshape(4, 24)
    msg = Image(height=4, width=8, encoding="rgb8", step=29, data=padded.tobytes())
    assert np.array_equal(convert.image_to_array(msg), rgb)
    mono = Image(height=4, width=8, encoding="mono8", step=8, data=rgb[:, :, 0].tobytes())
    assert np.array_equal(convert.image_to_array(mono), rgb[:, :, 0])
    for bad, match in ((dict(step=20), "step"), (dict(encoding="16UC1"), "not supported"),
                       (dict(height=0), "empty"), (dict(data=padded.tobytes()[:-1]), "holds")):
        fields = dict(height=4, width=8, encoding="rgb8", step=29, data=padded.tobytes()) | bad
        with pytest.raises(ValueError, match=match):
            convert.image_to_array(Image(**fields))


def test_fix_conversion_never_raises_and_keeps_the_covariance():
    msg = fix_msg(math.nan, math.inf, Time(sec=10, nanosec=500_000_000), status=NavSatStatus.STATUS_NO_FIX)
    fix = convert.fix_from_navsat(msg)
    assert math.isnan(fix.lat_deg) and fix.stamp_s == 10.5 and fix.status == -1
    assert fix.covariance_enu_m2.shape == (3, 3) and fix.covariance_enu_m2[2, 2] == FIX_UP_VAR_M2
    assert convert.up_variance_m2(msg) == FIX_UP_VAR_M2
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
    assert convert.fix_from_navsat(msg).covariance_enu_m2 is None
    assert convert.up_variance_m2(msg) == convert.UNKNOWN_VARIANCE
    good = convert.fix_from_navsat(fix_msg(40.0, -74.0, Time(sec=1)))
    assert good.covariance_type == NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN and good.status == 0


def test_odometry_pose_conversion():
    msg = Odometry()
    msg.header.stamp = to_time(12.5)
    msg.pose.pose.position.x, msg.pose.pose.position.y = 3.0, -4.0
    q = convert.yaw_to_quaternion(2.0)
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = q
    msg.pose.covariance[0] = 0.25
    stamp_s, x, y, yaw, cov = convert.odometry_pose(msg)
    assert (stamp_s, x, y) == (12.5, 3.0, -4.0) and yaw == pytest.approx(2.0) and cov[0] == 0.25 and len(cov) == 36


def test_quaternion_and_covariance_layouts():
    for yaw in (0.0, 0.3, math.pi / 2, -2.0, math.pi):
        assert convert.quaternion_to_yaw(*convert.yaw_to_quaternion(yaw)) == pytest.approx(
            geo.wrap_angle_rad(yaw), abs=1e-12)
    cov = np.array([[4.0, 1.0], [1.0, 9.0]])
    assert convert.navsat_covariance(cov, 2.0) == [4.0, 1.0, 0.0, 1.0, 9.0, 0.0, 0.0, 0.0, 2.0]
    c6 = np.array(convert.pose_covariance(cov, None)).reshape(6, 6)
    assert np.array_equal(c6[:2, :2], cov) and list(np.diag(c6)[2:]) == [1e6] * 4
    assert np.array(convert.pose_covariance(cov, 0.01)).reshape(6, 6)[5, 5] == 0.01
    assert convert.orientation_covariance(0.02)[8] == 0.02


# --------------------------------------------------------------------------- the synthetic city


class World:
    """The city scene, its tile set, the model and panoramas rendered at street positions."""

    def __init__(self, root: Path, model_dir: Path) -> None:
        from crossview_ros.sim.city import CityConfig, generate_city
        from crossview_ros.sim.ortho import render_orthophoto, write_orthophoto
        from crossview_ros.sim.scene import Sun
        from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set
        from crossview_ros.tiles_cli import encode_tile_set

        self.city = generate_city(CityConfig(size_m=200.0, gsd_m=0.25, seed=11))
        self.scene = self.city.scene(0)
        tif = write_orthophoto(root / "ortho.tif", render_orthophoto(self.scene, Sun(135.0, 45.0)), self.scene,
                               compress="deflate")
        self.tile_dir = build_tile_set([tif], root / "tiles", TilingConfig(tile_size_m=TILE_M, tile_px=64),
                                       progress=False)
        encode_tile_set(self.tile_dir, model_dir, engine="onnxruntime", threads=1, progress=False)
        self.model_dir = model_dir
        self.tiles = TileSet.open(self.tile_dir)
        self.zone = self.tiles.zone
        # Street positions well inside the tiles' coverage (so that every scope holds tiles).
        e0, e1 = self.tiles.easting_m.min(), self.tiles.easting_m.max()
        n0, n1 = self.tiles.northing_m.min(), self.tiles.northing_m.max()
        rng = np.random.default_rng(7)
        nodes, edges = self.city.streets.nodes_en, self.city.streets.edges
        self.positions: list[np.ndarray] = []
        while len(self.positions) < 8:
            a, b = nodes[edges[rng.integers(len(edges))]]
            p = a + rng.uniform(0.2, 0.8) * (b - a)
            if e0 + 5 <= p[0] <= e1 - 5 and n0 + 5 <= p[1] <= n1 - 5:
                self.positions.append(p)

    def panorama(self, k: int, yaw_enu_rad: float = 0.0) -> np.ndarray:
        """(64, 128, 3) RGB rendered at street position k, camera forward at yaw_enu_rad."""
        from crossview_ros.sim.render import render_panorama
        from crossview_ros.sim.scene import Sun

        e, n = self.positions[k]
        return render_panorama(self.scene, float(e), float(n), yaw_enu_rad, height_px=PANO_H,
                               sun=Sun(200.0, 35.0))

    def latlon(self, k: int, de_m: float = 0.0, dn_m: float = 0.0) -> tuple[float, float]:
        e, n = self.positions[k]
        lat, lon = geo.utm_to_latlon(float(e + de_m), float(n + dn_m), self.zone)
        return float(lat), float(lon)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_export) -> World:
    return World(tmp_path_factory.mktemp("node_city"), tiny_export(0))


@pytest.fixture(scope="module")
def engine(world) -> E.OnnxEngine:
    return E.OnnxEngine(world.model_dir, threads=1)


def base_config(world: World, **overrides: Any) -> LocalizerConfig:
    return LocalizerConfig(tile_set=str(world.tile_dir), model=str(world.model_dir), engine="onnxruntime",
                           engine_threads=1, log_throttle_s=0.0, **overrides)


# --------------------------------------------------------------------------- messages


def image_msg(rgb: np.ndarray, stamp: Time, encoding: str = "rgb8") -> Image:
    a = np.ascontiguousarray(rgb)
    channels = 1 if a.ndim == 2 else a.shape[2]
    return Image(header=_header(stamp, "camera"), height=a.shape[0], width=a.shape[1], encoding=encoding,
                 is_bigendian=0, step=a.shape[1] * channels, data=a.tobytes())


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def compressed_msg(data: bytes, stamp: Time) -> CompressedImage:
    return CompressedImage(header=_header(stamp, "camera"), format="jpeg", data=data)


def _header(stamp: Time, frame_id: str) -> Any:
    from std_msgs.msg import Header

    return Header(stamp=stamp, frame_id=frame_id)


def fix_msg(lat: float, lon: float, stamp: Time, *, status: int = NavSatStatus.STATUS_FIX,
            sigma_m: float = FIX_SIGMA_M) -> NavSatFix:
    msg = NavSatFix(header=_header(stamp, "gnss"), latitude=lat, longitude=lon, altitude=FIX_ALTITUDE_M)
    msg.status.status = status
    msg.status.service = NavSatStatus.SERVICE_GPS
    msg.position_covariance = [sigma_m ** 2, 0.0, 0.0, 0.0, sigma_m ** 2, 0.0, 0.0, 0.0, FIX_UP_VAR_M2]
    msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN
    return msg


def fix_of(msg: NavSatFix) -> Fix:
    """The Fix the in-process Localizer gets for `msg`, built independently of nodes/convert.py."""
    return Fix(msg.latitude, msg.longitude, time_s(msg.header.stamp), int(msg.status.status),
               np.array(msg.position_covariance, dtype=np.float64).reshape(3, 3))


def hostile_fixes(lat: float, lon: float, now_s: float) -> dict[str, NavSatFix]:
    """Fixes the localizer refuses although they have a position (each case names its flaw)."""
    out = {}
    nan_cov = fix_msg(lat, lon, to_time(now_s))
    nan_cov.position_covariance = [math.nan] * 9
    out["nan_covariance"] = nan_cov
    out["far_future_stamp"] = fix_msg(lat, lon, to_time(now_s + 3600.0))
    out["latitude_90"] = fix_msg(90.0, lon, to_time(now_s))
    out["status_unknown"] = fix_msg(lat, lon, to_time(now_s), status=-2)
    kind = fix_msg(lat, lon, to_time(now_s))
    kind.position_covariance_type = 99
    out["covariance_type_99"] = kind
    zero = fix_msg(lat, lon, to_time(now_s))
    zero.position_covariance = [0.0] * 9
    zero.position_covariance_type = NavSatFix.COVARIANCE_TYPE_KNOWN
    out["zero_covariance_known"] = zero
    return out


def hostile_jpegs(rgb: np.ndarray) -> dict[str, bytes]:
    """JPEGs OpenCV decodes without a word into a huge, partly grey or wrong image."""
    corrupt = corrupt_jpegs(jpeg_bytes(rgb))
    return {"jpeg_bomb": jpeg_bomb(), "jpeg_truncated_with_eoi": corrupt["truncated_with_eoi"],
            "jpeg_garbage_scan": corrupt["garbage_scan"]}


FUZZ_MESSAGES = 1200
FUZZ_RSS_GROWTH_MB = 150.0  # the 629-byte bomb alone took 3 GB before the pixel limit


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set size (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmHWM for pid {pid}")


def fuzz_fix(kind: str, lat: float, lon: float, now_s: float, rng: np.random.Generator) -> NavSatFix:
    """A fix of one fuzz class: a named hostile fix, a good one, or random fields of the right types."""
    if kind == "good":
        return fix_msg(lat, lon, to_time(now_s))
    if kind != "random":
        return hostile_fixes(lat, lon, now_s)[kind]
    wild = [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0]
    msg = fix_msg(float(rng.choice([*wild, rng.uniform(-200, 200)])), float(rng.choice([*wild, rng.uniform(-400, 400)])),
                  to_time(max(0.0, now_s + rng.uniform(-1e5, 1e5))), status=int(rng.integers(-128, 128)))
    msg.position_covariance = [float(rng.choice([*wild, rng.normal(0, 100)])) for _ in range(9)]
    msg.position_covariance_type = int(rng.integers(0, 256))
    return msg


def yaw_of(q: Any) -> float:
    assert abs(q.x) < 1e-12 and abs(q.y) < 1e-12, "orientation must be a pure yaw"
    assert q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2 == pytest.approx(1.0, abs=1e-9)
    return math.atan2(2.0 * q.w * q.z, 1.0 - 2.0 * q.z * q.z)


def angle_diff(a: float, b: float) -> float:
    return float(geo.wrap_angle_rad(a - b))


# --------------------------------------------------------------------------- ROS plumbing of the test side


class Ros:
    """This test module's own rclpy context and an executor spinning in a background thread."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def ros():
    with pytest.MonkeyPatch.context() as mp:  # discovery settings are read from the environment at init
        for key, value in ROS_ENV.items():
            mp.setenv(key, value)
        r = Ros()
        yield r
        r.close()


class Probe:
    """Publishes panoramas and fixes into one node's namespace and records what it publishes."""

    OUT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)

    def __init__(self, ros: Ros, ns: str, sim_clock: Clock | None = None) -> None:
        self.ns = ns
        self.node = rclpy.create_node(f"probe_{ns.strip('/')}", context=ros.context)
        if sim_clock is not None:  # drive the node's ROS time, as a bag replay does
            from rosgraph_msgs.msg import Clock as ClockMsg

            pub_clock = self.node.create_publisher(ClockMsg, "/clock", 10)
            self.node.create_timer(0.01, lambda: pub_clock.publish(ClockMsg(clock=to_time(sim_clock.now()))))
        self.pub_image = self.node.create_publisher(Image, f"{ns}/panorama", 10)
        self.pub_compressed = self.node.create_publisher(CompressedImage, f"{ns}/panorama/compressed", 10)
        self.pub_fix = self.node.create_publisher(NavSatFix, f"{ns}/gnss/fix", 10)
        self.lock = threading.Lock()
        self.outputs: dict[str, list] = {"fix": [], "pose": [], "heading": []}
        self.diagnostics: list[DiagnosticStatus] = []
        self.diag_name = f"{ns.strip('/')}/crossview_localizer: localization"
        for key, kind, topic in (("fix", NavSatFix, "crossview/fix"),
                                 ("pose", PoseWithCovarianceStamped, "crossview/pose"),
                                 ("heading", Imu, "crossview/heading")):
            self.node.create_subscription(kind, f"{ns}/{topic}", lambda m, k=key: self._store(k, m), self.OUT_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, self.OUT_QOS)
        ros.executor.add_node(self.node)
        self.ros = ros

    def _store(self, key: str, msg: Any) -> None:
        with self.lock:
            self.outputs[key].append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics.extend(s for s in msg.status if s.name == self.diag_name)

    def close(self) -> None:
        self.ros.executor.remove_node(self.node)
        self.node.destroy_node()

    # ----------------------------------------------------------------- diagnostics

    def values(self, index: int = -1) -> dict[str, str]:
        with self.lock:
            return {kv.key: kv.value for kv in self.diagnostics[index].values} if self.diagnostics else {}

    def counter(self, key: str) -> int:
        return int(self.values().get(key, 0))

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.values().items() if v.lstrip("-").isdigit()}

    def diag_count(self) -> int:
        with self.lock:
            return len(self.diagnostics)

    # ----------------------------------------------------------------- sending, with delivery confirmed

    def send_fix(self, msg: NavSatFix) -> None:
        """Publish a fix and wait until the node counted it (so the next panorama is paired with it)."""
        before = self.counter("fixes_received")
        for _ in range(3):
            self.pub_fix.publish(msg)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                if self.counter("fixes_received") > before:
                    return
                time.sleep(0.01)
        pytest.fail("the node never counted the fix (fixes_received)")

    def send_panorama(self, msg: Image | CompressedImage) -> dict[str, int]:
        """Publish a panorama, wait until the node processed it; returns the counter deltas."""
        before = self.counters()
        pub = self.pub_compressed if isinstance(msg, CompressedImage) else self.pub_image
        for _ in range(3):  # best effort: resend only when the frame never arrived
            pub.publish(msg)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline and self.counter("frames_received") <= before["frames_received"]:
                time.sleep(0.01)
            if self.counter("frames_received") > before["frames_received"]:
                break
        else:
            pytest.fail("the node never received the panorama (frames_received)")
        wait_until(lambda: self.counter("frames_processed") > before["frames_processed"], FRAME_TIMEOUT_S,
                   "frames_processed")
        after = self.counters()
        return {k: after[k] - before.get(k, 0) for k in after}

    def outputs_at(self, stamp: Time) -> dict[str, list]:
        with self.lock:
            return {k: [m for m in v if same_stamp(m.header.stamp, stamp)] for k, v in self.outputs.items()}

    def wait_outputs(self, stamp: Time, heading: bool) -> dict[str, Any]:
        """The fix, pose (and heading) stamped `stamp`, once all have arrived."""
        keys = ("fix", "pose", "heading") if heading else ("fix", "pose")

        def arrived() -> dict[str, list] | None:
            got = self.outputs_at(stamp)
            return got if all(got[k] for k in keys) else None

        got = wait_until(arrived, FRAME_TIMEOUT_S, f"outputs {keys} stamped {time_s(stamp):.3f}")
        return {k: got[k][0] if got[k] else None for k in ("fix", "pose", "heading")}

    def assert_nothing_published(self, stamp: Time) -> None:
        time.sleep(GRACE_S)
        assert self.outputs_at(stamp) == {"fix": [], "pose": [], "heading": []}


class NodeProcess:
    """localize_node in a namespace with a parameter file; its stdout/stderr go to a log file."""

    def __init__(self, ns: str, params: dict[str, Any], work: Path) -> None:
        self.ns = ns
        self.params_file = work / f"{ns.strip('/')}.yaml"
        body = "\n".join(f"    {k}: {format_yaml_value(v)}" for k, v in params.items())
        self.params_file.write_text(f"{YAML_NODE_KEY}:\n  ros__parameters:\n{body}\n")
        self.log_path = work / f"{ns.strip('/')}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*node_command(), "--ros-args", "-r", f"__ns:={ns}", "--params-file", str(self.params_file)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **ROS_ENV})

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, probe: Probe) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"localize_node exited with {self.proc.returncode}:\n{self.text()}")
            return (probe.pub_image.get_subscription_count() >= 1
                    and probe.pub_compressed.get_subscription_count() >= 1
                    and probe.pub_fix.get_subscription_count() >= 1 and probe.diag_count() > 0)

        wait_until(ready, START_TIMEOUT_S, f"localize_node in {self.ns} to start")

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def node_params(config: LocalizerConfig, **node_only: Any) -> dict[str, Any]:
    return {**config.to_dict(), "diagnostics_period_s": 0.1, **node_only}


def run_in_process(localizer: Localizer, panorama: Any, fix: Fix, stamp: Time, encoding: str | None) -> Estimate:
    localizer.reset()
    stamp_s = time_s(stamp)
    return localizer.localize(panorama, fix, stamp_s, encoding=encoding, now_s=stamp_s)


# --------------------------------------------------------------------------- node A: datum pose, heading


class Session:
    """A running node with its probe, the in-process twin Localizer and a stamp clock."""

    def __init__(self, proc: NodeProcess, probe: Probe, twin: Localizer, config: LocalizerConfig,
                 clock: Clock | None = None) -> None:
        self.proc, self.probe, self.twin, self.config = proc, probe, twin, config
        self.clock = clock or Clock()
        self.startup: dict[str, Any] = {}
        self.cases: dict[str, int] = {}

    def good_fix(self, world: World, k: int, **kw: Any) -> NavSatFix:
        lat, lon = world.latlon(k, 6.0, -4.0)  # a few metres off the camera, like a decent GNSS fix
        msg = fix_msg(lat, lon, to_time(self.clock.next()), **kw)
        self.probe.send_fix(msg)
        return msg

    def frame(self, msg_maker: Callable[[Time], Any]) -> tuple[Time, dict[str, int]]:
        stamp = to_time(self.clock.next())
        return stamp, self.probe.send_panorama(msg_maker(stamp))


@pytest.fixture(scope="class")
def node_a(ros, world, engine, tmp_path_factory):
    config = base_config(world, heading=True, heading_method="polar", camera_height_m=2.0, min_margin=-1.0,
                         max_mahalanobis=1e6)
    probe = Probe(ros, "/node_a")
    proc = NodeProcess("/node_a", node_params(config), tmp_path_factory.mktemp("node_a"))
    session = Session(proc, probe, Localizer(config, engine=engine), config)
    try:
        proc.wait_ready(probe)
        # Before any fix: a panorama is refused as NO_FIX (recorded here, checked by a test).
        stamp, delta = session.frame(lambda s: image_msg(world.panorama(0), s))
        session.startup = {"stamp": stamp, "delta": delta, "values": probe.values()}
        # The datum is the first VALID fix: a NaN fix first, then a good one.
        lat, lon = world.latlon(1, 6.0, -4.0)
        probe.send_fix(fix_msg(math.nan, lon, to_time(session.clock.next())))
        session.startup["datum_after_nan_fix"] = probe.values()["datum"]
        for bad in hostile_fixes(lat, lon, session.clock.next()).values():  # each refused by the localizer
            probe.send_fix(bad)
        session.startup["datum_after_bad_fixes"] = probe.values()["datum"]
        session.startup["first_fix"] = session.good_fix(world, 1)
        wait_until(lambda: probe.values()["datum"] != "unset", 5.0, "the datum")
        yield session
    finally:
        proc.stop(signal.SIGINT)
        probe.close()


@pytest.mark.usefixtures("node_a")
class TestDatumNode:
    """pose_origin datum (the first valid fix), heading on, gates open: every good frame is published."""

    def test_panorama_before_any_fix_is_counted_as_no_fix(self, node_a):
        delta = node_a.startup["delta"]
        assert delta["rejected_NO_FIX"] == 1 and delta["estimates_published"] == 0
        assert node_a.startup["values"]["datum"] == "unset"
        node_a.probe.assert_nothing_published(node_a.startup["stamp"])
        wait_until(lambda: "rejected, NO_FIX: no GNSS fix received yet" in node_a.proc.text(), 5.0, "the log line")

    def test_datum_is_the_first_valid_fix(self, node_a):
        assert node_a.startup["datum_after_nan_fix"] == "unset"
        assert node_a.startup["datum_after_bad_fixes"] == "unset"  # NaN covariance, future stamp, lat 90, ...
        first = node_a.startup["first_fix"]
        assert node_a.probe.values()["datum"] == f"{first.latitude:.7f},{first.longitude:.7f}"

    def test_outputs_equal_the_in_process_localizer(self, node_a, world):
        fix_in = node_a.good_fix(world, 1)
        rgb = world.panorama(1)
        stamp, delta = node_a.frame(lambda s: image_msg(rgb, s))
        assert delta["estimates_published"] == 1, delta
        out = node_a.probe.wait_outputs(stamp, heading=True)
        est = run_in_process(node_a.twin, rgb, fix_of(fix_in), stamp, "rgb8")
        assert est.accepted and est.yaw_enu_rad is not None

        fix, pose, imu = out["fix"], out["pose"], out["heading"]
        assert isinstance(fix, NavSatFix) and isinstance(pose, PoseWithCovarianceStamped) and isinstance(imu, Imu)
        for m in (fix, pose, imu):
            assert same_stamp(m.header.stamp, stamp)  # exactly the panorama's stamp
        assert (fix.header.frame_id, pose.header.frame_id, imu.header.frame_id) == ("gnss", "map", "base_link")

        # crossview/fix: the estimate's position and covariance (ENU), up variance and altitude of the input.
        assert fix.status.status == NavSatStatus.STATUS_FIX and fix.status.service == NavSatStatus.SERVICE_GPS
        assert fix.position_covariance_type == NavSatFix.COVARIANCE_TYPE_KNOWN
        assert (fix.latitude, fix.longitude) == (pytest.approx(est.lat_deg, abs=1e-9),
                                                 pytest.approx(est.lon_deg, abs=1e-9))
        assert fix.altitude == FIX_ALTITUDE_M
        cov3 = np.array(fix.position_covariance).reshape(3, 3)
        np.testing.assert_allclose(cov3[:2, :2], est.covariance_enu_m2, rtol=1e-6)
        assert cov3[2, 2] == FIX_UP_VAR_M2 and np.all(cov3[2, :2] == 0) and np.all(cov3[:2, 2] == 0)
        assert np.array_equal(cov3, cov3.T) and np.all(np.linalg.eigvalsh(cov3) > 0)

        # crossview/pose: x east, y north in the ENU plane of the datum (the first valid fix).
        first = node_a.startup["first_fix"]
        enu = geo.LocalENU(first.latitude, first.longitude)
        e, n, _ = enu.forward(est.lat_deg, est.lon_deg, 0.0)
        p = pose.pose.pose.position
        assert (p.x, p.y, p.z) == (pytest.approx(e, abs=1e-3), pytest.approx(n, abs=1e-3), 0.0)
        cov6 = np.array(pose.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov6[:2, :2], est.covariance_enu_m2, rtol=1e-6)
        assert np.array_equal(cov6, cov6.T) and np.all(np.linalg.eigvalsh(cov6) > 0)
        assert list(np.diag(cov6)[2:5]) == [1e6, 1e6, 1e6]
        assert cov6[5, 5] == pytest.approx(est.yaw_variance_rad2, rel=1e-9)
        assert yaw_of(pose.pose.pose.orientation) == pytest.approx(est.yaw_enu_rad, abs=1e-9)

        # crossview/heading: orientation only, ENU yaw; unused covariances flagged -1.
        assert yaw_of(imu.orientation) == pytest.approx(est.yaw_enu_rad, abs=1e-9)
        oc = np.array(imu.orientation_covariance).reshape(3, 3)
        assert list(np.diag(oc)) == [1e6, 1e6, pytest.approx(est.yaw_variance_rad2, rel=1e-9)]
        assert imu.angular_velocity_covariance[0] == -1.0 and imu.linear_acceleration_covariance[0] == -1.0

    def test_yaw_convention_east_and_north_facing(self, node_a, world):
        """Camera forward east (yaw 0) and the same panorama turned to face north (rolled W/4 columns:
        column 0 = forward, azimuth clockwise): the node publishes the Localizer's ENU yaw for both,
        the north one through panorama/compressed."""
        fix = node_a.good_fix(world, 2)
        east = world.panorama(2, yaw_enu_rad=0.0)
        north = np.roll(east, east.shape[1] // 4, axis=1)
        # The roll is exactly the renderer's north-facing view (up to the half-pixel column centres).
        rendered_north = world.panorama(2, yaw_enu_rad=math.pi / 2)
        assert np.mean(np.abs(rendered_north.astype(int) - north.astype(int))) < 3.0
        yaws = {}
        for name, make, data, enc in (("east", lambda s: image_msg(east, s), east, "rgb8"),
                                      ("north", lambda s: compressed_msg(jpeg_bytes(north), s), jpeg_bytes(north),
                                       None)):
            stamp, delta = node_a.frame(make)
            assert delta["estimates_published"] == 1, (name, delta)
            out = node_a.probe.wait_outputs(stamp, heading=True)
            est = run_in_process(node_a.twin, data, fix_of(fix), stamp, enc)
            yaws[name] = yaw_of(out["heading"].orientation)
            assert yaws[name] == pytest.approx(est.yaw_enu_rad, abs=1e-9), name
            assert yaw_of(out["pose"].pose.pose.orientation) == pytest.approx(est.yaw_enu_rad, abs=1e-9)
        # Absolute accuracy needs a trained model (the tiny test model is untrained): reported, not asserted.
        print(f"\nyaw with the untrained tiny model: east {math.degrees(yaws['east']):.1f} deg (truth 0), "
              f"north {math.degrees(yaws['north']):.1f} deg (truth 90), difference "
              f"{math.degrees(angle_diff(yaws['north'], yaws['east'])):.1f} deg (truth 90)")

    def test_bgr8_and_mono8_images(self, node_a, world):
        fix = node_a.good_fix(world, 3)
        rgb = world.panorama(3)
        results = {}
        for enc, image in (("rgb8", rgb), ("bgr8", rgb[:, :, ::-1]), ("mono8", rgb[:, :, 1])):
            stamp, delta = node_a.frame(lambda s, image=image, enc=enc: image_msg(image, s, enc))
            assert delta["estimates_published"] == 1, (enc, delta)
            results[enc] = node_a.probe.wait_outputs(stamp, heading=True)["fix"]
            est = run_in_process(node_a.twin, np.ascontiguousarray(image), fix_of(fix), stamp, enc)
            assert results[enc].latitude == pytest.approx(est.lat_deg, abs=1e-9), enc
        assert results["bgr8"].latitude == results["rgb8"].latitude
        assert results["bgr8"].longitude == results["rgb8"].longitude

    @pytest.mark.parametrize("case", [
        "encoding", "width_not_2h", "data_size", "truncated_jpeg", "not_an_image",
        "nan_latitude", "inf_longitude", "latitude_95", "status_no_fix", "stale_fix", "fix_outside_coverage",
        "out_of_order", "future_stamp", "negative_stamp", "jpeg_bomb", "jpeg_truncated_with_eoi",
        "jpeg_garbage_scan", "status_unknown", "covariance_type_99", "zero_covariance_known",
    ])
    def test_bad_input_is_counted_and_not_published(self, node_a, world, case):
        rgb = world.panorama(4)
        lat, lon = world.latlon(4)
        now = node_a.clock.next()
        reason = {"encoding": "BAD_IMAGE", "width_not_2h": "BAD_IMAGE", "data_size": "BAD_IMAGE",
                  "truncated_jpeg": "BAD_IMAGE", "not_an_image": "BAD_IMAGE", "nan_latitude": "BAD_FIX",
                  "inf_longitude": "BAD_FIX", "latitude_95": "BAD_FIX", "status_no_fix": "NO_FIX",
                  "stale_fix": "STALE_STAMP", "fix_outside_coverage": "OUTSIDE_COVERAGE",
                  "out_of_order": "OUT_OF_ORDER", "future_stamp": "FUTURE_STAMP", "negative_stamp": "BAD_STAMP",
                  "jpeg_bomb": "BAD_IMAGE", "jpeg_truncated_with_eoi": "BAD_IMAGE", "jpeg_garbage_scan": "BAD_IMAGE",
                  "status_unknown": "NO_FIX", "covariance_type_99": "BAD_FIX", "zero_covariance_known": "BAD_FIX"}[case]
        fix = {"nan_latitude": fix_msg(math.nan, lon, to_time(now)),
               "inf_longitude": fix_msg(lat, math.inf, to_time(now)),
               "latitude_95": fix_msg(95.0, lon, to_time(now)),
               "status_no_fix": fix_msg(lat, lon, to_time(now), status=NavSatStatus.STATUS_NO_FIX),
               "stale_fix": fix_msg(lat, lon, to_time(now - 10.0)),
               "fix_outside_coverage": fix_msg(*world.latlon(4, 0.0, 5000.0), to_time(now)),
               **{k: v for k, v in hostile_fixes(lat, lon, now).items() if k == case},
               }.get(case, fix_msg(lat, lon, to_time(now)))
        node_a.probe.send_fix(fix)  # the fix callback survives whatever the fix holds
        stamp = to_time(node_a.clock.next())
        if case == "out_of_order":  # a good frame, then one stamped before it
            node_a.probe.send_panorama(image_msg(rgb, stamp))
            stamp = to_time(time_s(stamp) - 0.5)
        elif case == "future_stamp":
            stamp = to_time(time.time() + 60.0)
        elif case == "negative_stamp":
            stamp = Time(sec=-5, nanosec=0)
        image = image_msg(rgb, stamp)
        if case == "encoding":
            image.encoding = "rgba8"
        elif case == "width_not_2h":
            image = image_msg(np.ascontiguousarray(rgb[:, :100]), stamp)
        elif case == "data_size":
            image.data = bytes(image.data)[:-7]
        elif case == "truncated_jpeg":
            image = compressed_msg(jpeg_bytes(rgb)[:-200], stamp)
        elif case == "not_an_image":
            image = compressed_msg(b"this is not a JPEG", stamp)
        elif case.startswith("jpeg_"):
            image = compressed_msg(hostile_jpegs(rgb)[case], stamp)
        delta = node_a.probe.send_panorama(image)
        assert delta[f"rejected_{reason}"] == 1, delta
        assert delta["estimates_published"] == 0
        node_a.probe.assert_nothing_published(stamp)
        wait_until(lambda: f"rejected, {reason}" in node_a.proc.text(), 5.0, f"a log line for {reason}")
        assert node_a.proc.proc.poll() is None, "the node died"

    def test_still_publishes_after_bad_input(self, node_a, world):
        node_a.good_fix(world, 5)
        stamp, delta = node_a.frame(lambda s: image_msg(world.panorama(5), s))
        assert delta["estimates_published"] == 1
        node_a.probe.wait_outputs(stamp, heading=True)
        assert "Traceback" not in node_a.proc.text()

    def test_newest_frame_wins(self, node_a, world):
        node_a.good_fix(world, 6)
        probe = node_a.probe
        before = probe.counters()
        stamps = [to_time(node_a.clock.next()) for _ in range(6)]
        frames = [image_msg(world.panorama(6), s) for s in stamps]
        for f in frames:  # a burst: the worker is busy with one frame while the next ones arrive
            probe.pub_image.publish(f)
            time.sleep(0.003)  # let the executor take each one (the DDS reader keeps only the last)
        probe.wait_outputs(stamps[-1], heading=True)  # the newest frame is always processed

        def settled() -> dict[str, int] | None:
            c = probe.counters()
            d = {k: c[k] - before[k] for k in ("frames_received", "frames_processed", "frames_dropped")}
            return d if d["frames_received"] >= 1 and d["frames_processed"] + d["frames_dropped"] == \
                d["frames_received"] else None

        d = wait_until(settled, FRAME_TIMEOUT_S, "processed + dropped == received")
        published = sum(bool(probe.outputs_at(s)["fix"]) for s in stamps)
        assert published == d["frames_processed"] and d["frames_received"] <= 6
        print(f"\nburst of 6: received {d['frames_received']}, processed {d['frames_processed']}, "
              f"dropped {d['frames_dropped']}")

    def test_diagnostics(self, node_a, world):
        probe = node_a.probe
        with probe.lock:
            status = probe.diagnostics[-1]
        assert status.hardware_id == HARDWARE_ID and status.name == "node_a/crossview_localizer: localization"
        values = probe.values()
        for key in ("frames_received", "frames_processed", "frames_dropped", "estimates_published",
                    "latency_p50_ms", "latency_p99_ms", "last_scope_tiles", *REJECT_KEYS):
            assert key in values, key
        assert {f"rejected_{r}" for r in Reason if r is not Reason.OK} == set(REJECT_KEYS)
        # A period with frames but no estimate is WARN; one with estimates OK, with latencies.
        node_a.good_fix(world, 7)
        n = probe.diag_count()
        bad = image_msg(world.panorama(7), to_time(node_a.clock.next()))
        bad.encoding = "32FC1"
        probe.send_panorama(bad)
        wait_until(lambda: any(s.level == DiagnosticStatus.WARN for s in probe.diagnostics[n:]), 5.0, "a WARN")
        n = probe.diag_count()
        stamp, _ = node_a.frame(lambda s: image_msg(world.panorama(7), s))
        ok = wait_until(lambda: [s for s in probe.diagnostics[n:] if s.level == DiagnosticStatus.OK
                                 and "estimate" in s.message], 5.0, "an OK period with an estimate")[0]
        v = {kv.key: kv.value for kv in ok.values}
        assert 0.0 < float(v["latency_p50_ms"]) <= float(v["latency_p99_ms"]) < 10_000.0
        assert int(v["last_scope_tiles"]) > 0

    def test_parameters_described_and_frames_dynamic(self, node_a, world, ros):
        probe = node_a.probe
        client = AsyncParameterClient(probe.node, "/node_a/crossview_localizer")
        assert client.wait_for_services(timeout_sec=10.0)

        def call(future: Any) -> Any:
            return wait_until(lambda: future.result() if future.done() else None, 10.0, "a parameter service")

        names = [p.name for p in PARAMETERS]
        described = {d.name: d for d in call(client.describe_parameters(names)).descriptors}
        assert set(described) == set(names)
        for spec in PARAMETERS:
            d = described[spec.name]
            assert d.description and d.read_only == spec.read_only, spec.name
            if spec.unit:
                assert d.description.endswith(f"[{spec.unit}]"), spec.name
            if spec.range is not None:
                r = (d.integer_range or d.floating_point_range)[0]
                assert (r.from_value, r.to_value) == spec.range, spec.name
        refused = call(client.set_parameters([Parameter("tile_set", value="/elsewhere")])).results[0]
        assert not refused.successful and "read-only" in refused.reason
        refused = call(client.set_parameters([Parameter("fix_frame", value="/gnss")])).results[0]
        assert not refused.successful and "must not start with '/'" in refused.reason
        assert call(client.set_parameters([Parameter("fix_frame", value="antenna")])).results[0].successful
        try:
            node_a.good_fix(world, 0)
            stamp, _ = node_a.frame(lambda s: image_msg(world.panorama(0), s))
            assert node_a.probe.wait_outputs(stamp, heading=True)["fix"].header.frame_id == "antenna"
        finally:
            assert call(client.set_parameters([Parameter("fix_frame", value="gnss")])).results[0].successful

    def test_a_stamp_just_ahead_of_time_does_not_reject_the_frames_after_it(self, node_a, world):
        node_a.good_fix(world, 2)
        ahead_s = node_a.clock.now() + 0.45  # within max_future_s (0.5 s): accepted
        delta = node_a.probe.send_panorama(image_msg(world.panorama(2), to_time(ahead_s)))
        assert delta["estimates_published"] == 1, delta
        for i in range(3):  # stamped before the early one, after the frames before it: still good frames
            node_a.good_fix(world, 2)
            delta = node_a.probe.send_panorama(image_msg(world.panorama(2), to_time(ahead_s - 0.1 + 0.02 * i)))
            assert delta["estimates_published"] == 1, delta
        node_a.clock.last = max(node_a.clock.last, ahead_s)

    def test_datum_is_reset_by_its_parameter(self, node_a, world):
        client = AsyncParameterClient(node_a.probe.node, "/node_a/crossview_localizer")
        assert client.wait_for_services(timeout_sec=10.0)

        def set_datum(value: list[float]) -> Any:
            future = client.set_parameters([Parameter("datum", Parameter.Type.DOUBLE_ARRAY, value)])
            return wait_until(lambda: future.result() if future.done() else None, 10.0, "set datum").results[0]

        original = node_a.probe.values()["datum"]
        assert not set_datum([95.0, 10.0]).successful  # refused with its reason; the datum stays
        assert node_a.probe.values()["datum"] == original
        try:
            assert set_datum([]).successful
            wait_until(lambda: node_a.probe.values()["datum"] == "unset", 5.0, "the datum cleared")
            fresh = node_a.good_fix(world, 3)
            wait_until(lambda: node_a.probe.values()["datum"] == f"{fresh.latitude:.7f},{fresh.longitude:.7f}", 5.0,
                       "the next valid fix as the datum")
        finally:
            assert set_datum([float(v) for v in original.split(",")]).successful
            wait_until(lambda: node_a.probe.values()["datum"] == original, 5.0, "the datum restored")

    def test_fuzz_hostile_messages_of_every_class(self, node_a, world):
        """1,200 hostile messages, in rounds over every class issue 18 names (hostile JPEGs and bombs,
        bit flips, bad raw images, bad fixes, stamps ahead, behind and absurd), published back to back:
        the node lives, its counters add up, peak RSS grows by less than FUZZ_RSS_GROWTH_MB, and a good
        frame is answered afterwards."""
        rng = np.random.default_rng(20261203)
        rgb = world.panorama(4)
        good = jpeg_bytes(rgb)
        lat, lon = world.latlon(4, 6.0, -4.0)
        jpegs = hostile_jpegs(rgb)
        pid = node_a.proc.proc.pid
        peak_before_mb = peak_rss_mb(pid)
        before = node_a.probe.counters()
        classes = [*(f"fix_{k}" for k in hostile_fixes(lat, lon, 0.0)), "fix_random", "fix_good",
                   *jpegs, "jpeg_bit_flips", "random_bytes", "raw_wrong_size", "raw_bad_encoding", "raw_huge_claim",
                   "stamp_ahead", "stamp_far_future", "stamp_behind", "stamp_negative"]
        fixes_sent = 0
        latest_s = node_a.clock.last
        for i in range(FUZZ_MESSAGES):
            if i % len(classes) == 0:  # every class once per round, in a new order: frames follow every fix
                rng.shuffle(classes)
            kind = classes[i % len(classes)]
            now = node_a.clock.now()
            if kind.startswith("fix_"):
                node_a.probe.pub_fix.publish(fuzz_fix(kind[4:], lat, lon, now, rng))
                fixes_sent += 1
                continue
            stamp_s = {"stamp_ahead": now + rng.uniform(0.0, 0.45), "stamp_far_future": now + rng.uniform(10, 1e6),
                       "stamp_behind": now - rng.uniform(0.0, 30.0), "stamp_negative": -rng.uniform(0.0, 1e6)}.get(kind, now)
            if kind != "stamp_far_future":  # the stamps the node may have taken as its latest
                latest_s = max(latest_s, stamp_s)
            stamp = to_time(stamp_s)
            if kind in jpegs:
                node_a.probe.pub_compressed.publish(compressed_msg(jpegs[kind], stamp))
            elif kind == "jpeg_bit_flips":
                data = bytearray(good)
                for at in rng.integers(len(good) // 4, len(good) - 2, size=int(rng.integers(1, 9))):
                    data[at] ^= 1 << int(rng.integers(0, 8))
                node_a.probe.pub_compressed.publish(compressed_msg(bytes(data), stamp))
            elif kind == "random_bytes":
                node_a.probe.pub_compressed.publish(compressed_msg(rng.bytes(int(rng.integers(0, 4096))), stamp))
            elif kind.startswith("raw_"):
                msg = image_msg(rgb, stamp)
                if kind == "raw_wrong_size":
                    msg.width = int(rng.integers(1, 4 * rgb.shape[1]))
                elif kind == "raw_bad_encoding":
                    msg.encoding = rng.choice(["16UC1", "yuv422", "", "rgb8\x00", "bayer_rggb8"])
                else:
                    msg.height, msg.width, msg.step = 16384, 32768, 32768 * 3
                node_a.probe.pub_image.publish(msg)
            else:
                node_a.probe.pub_image.publish(image_msg(rgb, stamp))
            time.sleep(0.002)
        node_a.clock.last = max(node_a.clock.last, latest_s)

        def settled() -> dict[str, int] | None:  # every received frame processed or dropped
            now = node_a.probe.counters()
            delta = {k: now[k] - before.get(k, 0) for k in now}
            return delta if delta["frames_received"] == delta["frames_processed"] + delta["frames_dropped"] else None

        delta = wait_until(settled, 60.0, "the node to work through the fuzz frames")
        assert node_a.proc.proc.poll() is None, "the node died"
        assert "Traceback" not in node_a.proc.text()
        rejected = sum(v for k, v in delta.items() if k.startswith("rejected_"))
        assert delta["errors"] == 0, delta
        assert delta["frames_processed"] == delta["estimates_published"] + rejected, delta
        assert 0 < delta["frames_received"] <= FUZZ_MESSAGES - fixes_sent, delta
        assert 0 < delta["fixes_received"] <= fixes_sent, delta
        for reason in ("BAD_IMAGE", "BAD_FIX", "NO_FIX", "FUTURE_STAMP", "OUT_OF_ORDER", "BAD_STAMP"):
            assert delta[f"rejected_{reason}"] > 0, (reason, delta)
        growth_mb = peak_rss_mb(pid) - peak_before_mb
        assert growth_mb < FUZZ_RSS_GROWTH_MB, f"peak RSS grew {growth_mb:.0f} MB"
        node_a.good_fix(world, 2)
        stamp, delta = node_a.frame(lambda s: image_msg(world.panorama(2), s))
        assert delta["estimates_published"] == 1, {k: v for k, v in delta.items() if v}
        node_a.probe.wait_outputs(stamp, heading=True)

    def test_sigint_exits_cleanly(self, node_a):
        assert node_a.proc.stop(signal.SIGINT) == 0
        assert "Traceback" not in node_a.proc.text()


# --------------------------------------------------------------------------- node B: UTM pose and the gates


@pytest.fixture(scope="class")
def node_b(ros, world, engine, tmp_path_factory):
    """UTM pose; min_margin between two panoramas' margins; a tight covariance model so that a tight fix
    contradicts the estimate (MAHALANOBIS) while a loose one accepts it. Cases are chosen in-process."""
    open_config = base_config(world, heading=True, min_margin=-1.0, cov_sigma0_m=0.5, cov_sigma_min_m=0.5,
                              covariance_file="none")
    probe_loc = Localizer(open_config, engine=engine)
    stamp = to_time(time.time())
    loose = {k: fix_msg(*world.latlon(k, 6.0, -4.0), stamp, sigma_m=100.0) for k in range(len(world.positions))}
    margins = {k: run_in_process(probe_loc, world.panorama(k), fix_of(loose[k]), stamp, "rgb8").margin
               for k in loose}
    low, high = min(margins, key=margins.get), max(margins, key=margins.get)
    assert margins[high] > margins[low], margins
    config = LocalizerConfig.from_dict({**open_config.to_dict(), "min_margin": 0.5 * (margins[low] + margins[high])})
    twin = Localizer(config, engine=engine)
    cases = {"accepted": high, "low_margin": low}
    for k in sorted(margins, key=margins.get, reverse=True):
        tight = fix_msg(*world.latlon(k, 6.0, -4.0), stamp, sigma_m=0.05)
        if run_in_process(twin, world.panorama(k), fix_of(tight), stamp, "rgb8").reason == Reason.MAHALANOBIS:
            cases["mahalanobis"] = k
            break
    assert "mahalanobis" in cases, "no panorama gives MAHALANOBIS in-process; widen the search"
    assert run_in_process(twin, world.panorama(low), fix_of(loose[low]), stamp, "rgb8").reason == Reason.LOW_MARGIN
    assert run_in_process(twin, world.panorama(high), fix_of(loose[high]), stamp, "rgb8").accepted

    sim_clock = Clock(offset_s=-1000.0)  # ROS time 1000 s behind the wall clock: stamps must follow it
    probe = Probe(ros, "/node_b", sim_clock)
    proc = NodeProcess("/node_b", node_params(config, pose_origin="utm", pose_frame="utm", use_sim_time=True),
                       tmp_path_factory.mktemp("node_b"))
    session = Session(proc, probe, twin, config, sim_clock)
    session.cases = cases
    try:
        proc.wait_ready(probe)
        yield session
    finally:
        proc.stop(signal.SIGTERM)
        probe.close()


@pytest.mark.usefixtures("node_b")
class TestUtmGatingNode:
    """pose_origin utm, use_sim_time with /clock 1000 s behind the wall clock, gates set per case."""

    def test_stamps_are_judged_on_the_ros_clock(self, node_b, world):
        k = node_b.cases["accepted"]
        node_b.good_fix(world, k, sigma_m=100.0)
        wall = to_time(time.time())  # 1000 s ahead of the node's (simulated) now
        delta = node_b.probe.send_panorama(image_msg(world.panorama(k), wall))
        assert delta["rejected_FUTURE_STAMP"] == 1, delta
        node_b.probe.assert_nothing_published(wall)

    def test_utm_pose_and_grid_yaw(self, node_b, world):
        k = node_b.cases["accepted"]
        fix = node_b.good_fix(world, k, sigma_m=100.0)
        rgb = world.panorama(k)
        stamp, delta = node_b.frame(lambda s: image_msg(rgb, s))
        assert delta["estimates_published"] == 1, delta
        out = node_b.probe.wait_outputs(stamp, heading=True)
        est = run_in_process(node_b.twin, rgb, fix_of(fix), stamp, "rgb8")
        assert est.accepted
        pose = out["pose"]
        assert pose.header.frame_id == "utm"
        p = pose.pose.pose.position
        assert (p.x, p.y) == (pytest.approx(est.easting_m, abs=1e-6), pytest.approx(est.northing_m, abs=1e-6))
        cov6 = np.array(pose.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov6[:2, :2], geo.enu_cov_to_utm(est.covariance_enu_m2, est.lat_deg,
                                                                    est.lon_deg, world.zone), rtol=1e-6)
        assert np.array_equal(cov6, cov6.T) and np.all(np.linalg.eigvalsh(cov6) > 0)
        # Pose yaw on the UTM grid, heading (Imu) in ENU: they differ by the grid convergence.
        grid_yaw = geo.yaw_enu_to_utm(est.yaw_enu_rad, est.lat_deg, est.lon_deg, world.zone)
        assert yaw_of(pose.pose.pose.orientation) == pytest.approx(grid_yaw, abs=1e-9)
        assert yaw_of(out["heading"].orientation) == pytest.approx(est.yaw_enu_rad, abs=1e-9)
        convergence = geo.grid_convergence_rad(est.lat_deg, est.lon_deg, world.zone)
        assert abs(convergence) > 1e-3  # the city lies off its zone's central meridian: the check means something
        assert angle_diff(yaw_of(pose.pose.pose.orientation), yaw_of(out["heading"].orientation)) == \
            pytest.approx(convergence, abs=1e-9)
        assert out["fix"].latitude == pytest.approx(est.lat_deg, abs=1e-9)

    @pytest.mark.parametrize("case, reason, sigma_m", [("low_margin", "LOW_MARGIN", 100.0),
                                                       ("mahalanobis", "MAHALANOBIS", 0.05)])
    def test_gated_frames_are_counted_not_published(self, node_b, world, case, reason, sigma_m):
        k = node_b.cases[case]
        stamp = to_time(node_b.clock.next())  # fix and panorama at one instant, as when the case was chosen
        fix = fix_msg(*world.latlon(k, 6.0, -4.0), stamp, sigma_m=sigma_m)
        node_b.probe.send_fix(fix)
        delta = node_b.probe.send_panorama(image_msg(world.panorama(k), stamp))
        assert run_in_process(node_b.twin, world.panorama(k), fix_of(fix), stamp, "rgb8").reason == reason
        assert delta[f"rejected_{reason}"] == 1 and delta["estimates_published"] == 0, delta
        node_b.probe.assert_nothing_published(stamp)

    def test_sigusr1_prints_every_thread_stack(self, node_b):
        """`kill -USR1` on a running node: every thread's Python stack on stderr, and the node runs on."""
        mark = len(node_b.proc.text())
        node_b.proc.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: "in main" in node_b.proc.text()[mark:], 10.0, "the node's stacks")
        dump = node_b.proc.text()[mark:]
        assert "in _work" in dump and "in spin" in dump, dump  # the worker thread and the executor's
        assert node_b.proc.proc.poll() is None

    def test_sigterm_exits_cleanly(self, node_b):
        assert node_b.proc.stop(signal.SIGTERM) == 0
        assert "Traceback" not in node_b.proc.text()


# --------------------------------------------------------------------------- start-up failures


def test_startup_failures_exit_2_with_one_error_line(world, tmp_path):
    corrupt = tmp_path / "corrupt_model"
    corrupt.mkdir()
    for f in world.model_dir.iterdir():
        if f.is_file():
            data = f.read_bytes()
            (corrupt / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".onnx" else data)
    good = ["-p", f"tile_set:={world.tile_dir}", "-p", f"model:={world.model_dir}", "-p", "engine:=onnxruntime"]
    cases = {
        "missing tile set": (["-p", f"tile_set:={tmp_path / 'nope'}", "-p", f"model:={world.model_dir}"],
                             str(tmp_path / "nope")),
        "corrupt model": (["-p", f"tile_set:={world.tile_dir}", "-p", f"model:={corrupt}"], str(corrupt)),
        "no model": (["-p", f"tile_set:={world.tile_dir}"], "model is empty"),
        "out of range": ([*good, "-p", "top_k:=0"], "top_k = 0 is outside its range"),
        "invalid config": ([*good, "-p", "scope_max_m:=10.0"], "scope_max_m"),
        "wrong type": ([*good, "-p", "scope_min_m:=50"], "scope_min_m must be of type double"),
        "unknown": ([*good, "-p", "scope_mni_m:=50.0"], "unknown parameter(s) ['scope_mni_m']"),
        "bad datum": ([*good, "-p", "datum:=[95.0, 10.0]"], "parameter datum"),
        "bad origin": ([*good, "-p", "pose_origin:=ecef"], "pose_origin"),
    }
    assert_startup_failures(cases)


def communicate_or_stacks(proc: subprocess.Popen, timeout_s: float) -> tuple[str, str]:
    """The node's stdout and stderr once it exits; a node still running after timeout_s is asked for
    its threads' stacks (SIGUSR1, faulthandler) and killed, and the test fails with them."""
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"localize_node {proc.args[2:]} still running after {timeout_s:g} s; its stacks:\n{err}\n{out}")


def assert_startup_failures(cases: dict[str, tuple[list[str], str]]) -> None:
    """Each case's ROS arguments start the node into exit code 2 with one ERROR line holding its text."""
    env = {**os.environ, **ROS_ENV}
    procs = {name: subprocess.Popen([*node_command(), "--ros-args", *args], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        out, err = communicate_or_stacks(proc, 60.0)
        assert proc.returncode == 2, (name, out, err)
        errors = [line for line in err.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1 and cases[name][1] in errors[0], (name, err)
        assert "Traceback" not in err, (name, err)


# --------------------------------------------------------------------------- absolute yaw, bev model


@pytest.fixture(scope="class")
def bev_node(ros, world, tmp_path_factory):
    """A node running a top-down (bev) model on a copy of the city's tile set whose descriptors are
    planted: around street position 2 the aerial features are a panorama's ground features turned
    north-up for a camera facing east (bearing 90 deg); around position 5, those of the same
    panorama rolled a quarter turn, i.e. facing north (bearing 0). Random smooth unit features
    elsewhere. The matcher must find each place and bearing; the node must publish them as ENU yaw."""
    torch = pytest.importorskip("torch")
    from scipy.ndimage import gaussian_filter

    from crossview_training.bev import BevConfig, BevModel
    from crossview_training.export import export_onnx
    from crossview_ros.matchers import bev_grid as bev_match
    from crossview_ros.tiles import TileSet

    work = tmp_path_factory.mktemp("bev_node")
    torch.manual_seed(5)
    model = BevModel(BevConfig(pano_size=(PANO_H, 2 * PANO_H), tile_px=64, tile_size_m=TILE_M, kernel_cells=4,
                               channels=8, feature_dim=4))
    # An untrained network's features are nearly the same in every cell (no bearing to find): set its
    # BatchNorm statistics on textured panoramas, so that the cells differ as a trained model's do. A
    # street seen from its middle looks alike both ways (a 180 deg ambiguity only training resolves),
    # so the panoramas here are textures with no symmetry.
    from crossview_training.bev import to_tensor

    rng = np.random.default_rng(3)
    views = np.stack([cv2.GaussianBlur(rng.integers(0, 256, (PANO_H, 2 * PANO_H, 3), dtype=np.uint8), (5, 5), 1.5)
                      for _ in range(9)])
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # cumulative average over the calibration passes
    with torch.no_grad():
        for _ in range(3):
            model.ground_features(to_tensor(views, model.config))
    model.eval()
    model_dir = export_onnx(model, work / "model")
    tile_dir = work / "tiles"
    shutil.copytree(world.tile_dir, tile_dir)
    bev_engine = E.OnnxEngine(model_dir, threads=1)
    meta = bev_engine.meta.bev
    k, b, c = int(meta["kernel_cells"]), int(meta["block_cells"]), bev_engine.meta.ground_features[0]
    tiles = world.tiles
    ids = np.arange(len(tiles))
    smap = bev_match.scope_map(np.ones((len(ids), c * b * b), np.float32), ids, tiles.easting_m, tiles.northing_m,
                               channels=c, block_cells=b, cell_m=float(meta["cell_m"]))
    field = gaussian_filter(rng.normal(size=smap.fmap.shape), sigma=(0, 1.0, 1.0))
    field /= np.linalg.norm(field, axis=0, keepdims=True)
    cc = np.arange(k) + 0.5 - k / 2
    inside = np.hypot(cc[:, None], cc[None, :]) <= k / 2
    east = views[0].copy()  # taken as facing east
    east[PANO_H // 2:, :PANO_H // 2] = (255, 40, 40)  # the ground ahead-right is red: no symmetry left
    north = np.roll(views[0], PANO_H // 2, axis=1)  # the same camera turned to face north (column 0 forward)
    planted = {}
    for name, k_pos, pano, turns in (("east", 2, east, 1), ("north", 5, north, 0)):
        _, g = bev_engine.encode_ground(preprocess_ground(bev_engine.meta, pano))
        north_up = np.rot90(g[0], -turns, axes=(1, 2))  # bearing turns x 90 deg -> north-up
        e, n = world.positions[k_pos]
        # an even corner: match.onnx scores every other one first (block sides are even, so a scope's
        # own map keeps the parity), and this planted patch has no smooth surroundings to be seen from
        i = 2 * int(round((smap.corner_n_m - n) / smap.cell_m / 2))
        j = 2 * int(round((e - smap.corner_e_m) / smap.cell_m / 2))
        window = field[:, i - k // 2:i + k // 2, j - k // 2:j + k // 2]
        window[:, inside] = north_up[:, inside]
        planted[name] = smap.position(i, j)
    grid = smap.owner
    blocks = np.zeros((len(ids), c, b, b), np.float32)
    for r in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            if grid[r, col] >= 0:
                blocks[grid[r, col]] = field[:, r * b:(r + 1) * b, col * b:(col + 1) * b]
    TileSet.open(tile_dir).write_descriptors(blocks.reshape(len(ids), -1), bev_engine.meta.model_hash)
    bev_engine.close()
    config = LocalizerConfig(tile_set=str(tile_dir), model=str(model_dir), engine="onnxruntime", engine_threads=1,
                             log_throttle_s=0.0, heading=True, max_mahalanobis=1e6, scope_min_m=15.0,
                             min_imagery_support=0.1)  # each planted view points at itself: one frame is support
    probe = Probe(ros, "/node_bev")
    proc = NodeProcess("/node_bev", node_params(config), work)
    session = Session(proc, probe, Localizer(config), config)
    session.startup = {"east": east, "north": north, "planted": planted}
    try:
        proc.wait_ready(probe)
        yield session
    finally:
        proc.stop(signal.SIGINT)
        probe.close()


class TestBevYawNode:
    def test_facing_east_is_yaw_zero_and_facing_north_is_plus_half_pi(self, bev_node, world):
        for name, k_pos, want_yaw in (("east", 2, 0.0), ("north", 5, math.pi / 2)):
            lat, lon = world.latlon(k_pos, 1.5, -1.0)
            bev_node.probe.send_fix(fix_msg(lat, lon, to_time(bev_node.clock.next()), sigma_m=2.0))
            stamp, delta = bev_node.frame(lambda s, p=bev_node.startup[name]: image_msg(p, s))
            assert delta["estimates_published"] == 1, (name, delta, bev_node.proc.text()[-2000:])
            out = bev_node.probe.wait_outputs(stamp, heading=True)
            yaw = yaw_of(out["heading"].orientation)
            assert abs(angle_diff(yaw, want_yaw)) < math.radians(6), (name, math.degrees(yaw))
            assert yaw_of(out["pose"].pose.pose.orientation) == pytest.approx(yaw, abs=1e-9)
            e_want, n_want = bev_node.startup["planted"][name]
            lat_w, lon_w = geo.utm_to_latlon(e_want, n_want, world.zone)
            assert geo.distance_m(lat_w, lon_w, out["fix"].latitude, out["fix"].longitude) < 2.0, name


    def test_odometry_is_taken_and_bad_odometry_counted(self, bev_node, world):
        """The bev node takes nav_msgs/Odometry on odom (the track's motion), counts what it refuses, and
        publishes a protection level in its diagnostics."""
        probe = bev_node.probe
        pub = probe.node.create_publisher(Odometry, "/node_bev/odom", 10)

        def odom(x_m: float, stamp_s: float) -> Odometry:
            msg = Odometry()
            msg.header.stamp = to_time(stamp_s)
            msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
            msg.pose.pose.position.x = x_m
            msg.pose.pose.orientation.w = 1.0
            return msg

        x = 0.0
        wait_until(lambda: pub.get_subscription_count() > 0, 5.0, "the node's odom subscription")
        deadline = time.monotonic() + 10.0
        while probe.counter("odometry_received") < 5 and time.monotonic() < deadline:
            x += 0.1
            pub.publish(odom(x, bev_node.clock.next()))
            time.sleep(0.05)
        assert probe.counter("odometry_received") >= 5
        while probe.counter("odometry_ignored") < 1 and time.monotonic() < deadline:
            pub.publish(odom(math.nan, bev_node.clock.next()))
            time.sleep(0.05)
        assert probe.counter("odometry_ignored") >= 1
        wait_until(lambda: "odometry pose ignored" in bev_node.proc.text(), 5.0, "the log line")
        lat, lon = world.latlon(2, 1.5, -1.0)
        probe.send_fix(fix_msg(lat, lon, to_time(bev_node.clock.next()), sigma_m=2.0))
        stamp, delta = bev_node.frame(lambda s: image_msg(bev_node.startup["east"], s))
        assert delta["estimates_published"] == 1, delta
        wait_until(lambda: math.isfinite(float(probe.values().get("protection_level_m", "nan"))), 5.0,
                   "a protection level")
        assert float(probe.values()["protection_level_m"]) > 0.0
        assert probe.values()["odometry_aligned"] in ("true", "false")
        probe.node.destroy_publisher(pub)


def test_qos_overrides_apply_to_the_subscriptions(ros, world, tmp_path):
    """qos_overrides.* parameters reach the endpoints: the raw panorama subscription made reliable,
    the compressed one left at its best-effort default."""
    config = base_config(world)
    ns = "/node_qos"
    params = tmp_path / "qos.yaml"
    body = "\n".join(f"    {k}: {format_yaml_value(v)}" for k, v in node_params(config).items())
    params.write_text(f"{YAML_NODE_KEY}:\n  ros__parameters:\n{body}\n")
    log_path = tmp_path / "qos.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*node_command(), "--ros-args", "-r", f"__ns:={ns}", "--params-file", str(params),
             "-p", f"qos_overrides.{ns}/panorama.subscription.reliability:=reliable"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ROS_ENV})
    node = rclpy.create_node("qos_probe", context=ros.context)
    try:
        def endpoints(topic: str) -> list:
            if proc.poll() is not None:
                pytest.fail(f"localize_node exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            return [e for e in node.get_subscriptions_info_by_topic(topic) if e.node_name == "crossview_localizer"]

        raw = wait_until(lambda: endpoints(f"{ns}/panorama"), START_TIMEOUT_S, "the panorama subscription")
        compressed = wait_until(lambda: endpoints(f"{ns}/panorama/compressed"), 5.0, "the compressed subscription")
        assert raw[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE
        assert compressed[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    finally:
        node.destroy_node()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
