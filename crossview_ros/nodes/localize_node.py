"""ROS 2 node `crossview_localizer`: panoramas + GNSS fixes in, corrected fix, pose and heading out.

Thin by design: it converts messages (nodes/convert.py), calls Localizer.localize and publishes.
Everything about gating, covariances and bad input lives in the Localizer, which never raises
on bad input: each frame ends with a Reason that the node counts in /diagnostics.

    localize_node --ros-args -p tile_set:=DIR -p model:=DIR [--params-file config/localize.yaml]

Threads: the executor only runs callbacks that store the newest panorama (newest wins: a frame
not yet taken by the worker is replaced and counted in frames_dropped) and the newest fix, and
the diagnostics timer. One worker thread owns the Localizer (not thread-safe) and publishes.
So a slow frame never blocks the executor, and the node never queues stale frames.

Topics (relative, remappable): subscribes `panorama` (sensor_msgs/Image rgb8|bgr8|mono8) and
`panorama/compressed` (CompressedImage JPEG/PNG), both best effort keep-last 1, or with the
`cameras` parameter set, per camera N `N/image`, `N/image/compressed` and `N/camera_info`
(CameraInfo), all best effort keep-last 1 (nodes/cameras.py: a capture is one image per camera
within camera_sync_s); and `gnss/fix` (NavSatFix, best effort so that any publisher matches);
publishes `crossview/fix` (NavSatFix), `crossview/pose` (PoseWithCovarianceStamped),
`crossview/heading` (Imu, only with a yaw) and `/diagnostics`. Every output's header.stamp is the
panorama's (a capture's: its newest image's). Exit codes: 0 clean shutdown
(SIGINT, SIGTERM), 1 an unexpected failure, 2 a start-up failure (bad parameter or ROS
argument, missing or corrupt tile set or model, cameras without a bev model) with one ERROR line
saying what to fix.
"""

from __future__ import annotations

import copy
import faulthandler
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image, Imu, NavSatFix, NavSatStatus

from crossview_ros import geo
from crossview_ros.estimate import Estimate, Fix, Reason
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.log_throttle import Throttle
from crossview_ros.nodes import cameras, convert
from crossview_ros.nodes.plumbing import NewestSlot, RosLogHandler, exit_deadline
from crossview_ros.nodes.parameters import (
    BY_NAME, DYNAMIC_KEYS, NODE_NAME, PARAMETERS, NodeSettings, ParamSpec, check_frame_id, is_ros_own, parse_datum,
    localizer_config, node_settings,
)

EXIT_OK, EXIT_FAILURE, EXIT_STARTUP = 0, 1, 2
TEARDOWN_S = 10.0  # [s] destroying the node and shutting rclpy down past this exits anyway (plumbing.exit_deadline)
DIAGNOSTIC_NAME = f"{NODE_NAME}: localization"  # in the root namespace; prefixed by a namespace otherwise
HARDWARE_ID = "crossview_ros"
REJECT_KEYS = tuple(f"rejected_{r}" for r in Reason if r is not Reason.OK)

# Panoramas: best effort, keep last 1 (design.md: drop stale frames rather than queue them).
PANORAMA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
FIX_QOS = qos_profile_sensor_data  # best effort: matches reliable and best-effort GNSS drivers alike
ODOM_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)

_TYPES = {"bool": Parameter.Type.BOOL, "integer": Parameter.Type.INTEGER, "double": Parameter.Type.DOUBLE,
          "string": Parameter.Type.STRING, "double_array": Parameter.Type.DOUBLE_ARRAY}


class StartupError(Exception):
    """The node cannot start; the message says what is wrong and how to fix it. Raised by the
    constructor, it carries the half-built node (`node`) for main() to log through and destroy."""

    node: Node | None = None


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor of one parameter: description with the unit, range, constraints, read_only."""
    unit = f" [{spec.unit}]" if spec.unit else ""
    d = ParameterDescriptor(description=f"{spec.description}{unit}", read_only=spec.read_only,
                            type=_TYPES[spec.type_name].value)
    if spec.choices:
        extra = " or cuda:N" if spec.name == "search_device" else ""
        d.additional_constraints = f"one of: {', '.join(spec.choices)}{extra}"
    if spec.range is not None:
        if spec.type_name == "integer":
            d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                         to_value=float(spec.range[1]), step=0.0)]
    return d


@dataclass(frozen=True)
class _Frame:
    """A panorama as received: the message, which kind, and when it arrived (monotonic s)."""

    msg: Any
    compressed: bool
    received_s: float


@dataclass(frozen=True)
class _FixRecord:
    """The newest fix: the Localizer's view plus what crossview/fix copies from it."""

    fix: Fix
    altitude_m: float
    up_variance_m2: float
    service: int


@dataclass
class _Period:
    """What happened since the last diagnostics message."""

    frames: int = 0
    estimates: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # receipt -> result, every processed frame
    localize_ms: list[float] = field(default_factory=list)  # Localizer.localize total, every processed frame
    started_s: float = field(default_factory=time.monotonic)


# --------------------------------------------------------------------------- the node


class LocalizeNode(Node):
    """Declares and validates the parameters; start() builds the Localizer and wires the topics."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            values = self._declare_parameters()
            try:
                self.config: LocalizerConfig = localizer_config(values)
                self.settings: NodeSettings = node_settings(values)
            except (TypeError, ValueError) as exc:
                raise StartupError(f"invalid parameter: {exc}") from None
        except StartupError as exc:
            # main() must destroy this half-built node before rclpy's shutdown: left to the garbage
            # collector after it, its handles crashed the process (SIGSEGV instead of exit code 2)
            exc.node = self
            raise
        self.localizer: Localizer | None = None
        self.cameras: cameras.CameraInputs | None = None  # start() sets it when `cameras` names some
        self._lock = threading.Lock()
        self._frames: NewestSlot[_Frame] = NewestSlot()
        self._fix: _FixRecord | None = None
        self._worker: threading.Thread | None = None
        self._enu = None if self.settings.datum is None else geo.LocalENU(*self.settings.datum)
        self.counts: Counter[str] = Counter()
        self._period = _Period()
        self._last_scope_tiles = 0
        self._last_reason = ""
        self._last_protection_m = float("nan")
        self._last_error = ""
        self._throttle = Throttle(self.config.log_throttle_s)
        self._log_handler: RosLogHandler | None = None
        # Several robots' nodes publish on the one /diagnostics: the namespace tells them apart.
        self.diagnostic_name = f"{self.get_fully_qualified_name().lstrip('/')}: localization"

    # ----------------------------------------------------------------- parameters

    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter with its descriptor; refuse unknown overrides and wrong types."""
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            try:
                if spec.array:  # an empty default has no type of its own: declare the type, value unset
                    param = self.declare_parameter(spec.name, Parameter.Type.DOUBLE_ARRAY, descriptor(spec))
                else:
                    param = self.declare_parameter(spec.name, spec.default, descriptor(spec))
            except InvalidParameterTypeException:
                hint = " (write doubles with a decimal point, e.g. 50.0)" if spec.type_name == "double" else ""
                raise StartupError(f"invalid parameter: {spec.name} must be of type {spec.type_name}{hint}; "
                                   f"default {spec.default!r}") from None
            except InvalidParameterValueException:
                lo, hi = spec.range if spec.range is not None else (None, None)
                given = getattr(self, "_parameter_overrides", {}).get(spec.name)
                raise StartupError(f"invalid parameter: {spec.name} = {getattr(given, 'value', '?')!r} is outside "
                                   f"its range [{lo}, {hi}]") from None
            value = param.value
            if spec.array:
                value = [] if value is None else [float(v) for v in value]
            values[spec.name] = value
        try:
            self.camera_settings = cameras.declare_parameters(self)
        except ValueError as exc:
            raise StartupError(f"invalid parameter: {exc}") from None
        valid = {*BY_NAME, *self.camera_settings.parameter_names}
        # rclpy has no public accessor for the overrides it was given; without one this check is skipped.
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(n for n in overrides if n not in valid and not is_ros_own(n))
        if unknown:
            raise StartupError(f"unknown parameter(s) {unknown} for {NODE_NAME}; valid: {sorted(valid)} "
                               "(see config/localize.yaml, config/cameras_example.yaml)")
        return values

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Runtime changes: the frame ids, and the datum ([] takes the next valid fix, as navsat_transform's
        set_datum resets it); read-only parameters are refused by rclpy."""
        changes: dict[str, Any] = {}
        for p in params:
            if p.name not in DYNAMIC_KEYS:
                continue
            try:
                changes[p.name] = parse_datum(p.value) if p.name == "datum" else check_frame_id(p.name, p.value)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if changes:
            self.settings = replace(self.settings, **changes)
            if "datum" in changes:
                datum = changes["datum"]
                self._enu = None if datum is None else geo.LocalENU(*datum)
                self.get_logger().info(f"datum reset to {list(datum)} by parameter" if datum is not None else
                                       "datum cleared by parameter: the next valid GNSS fix sets it")
            frames = {k: v for k, v in changes.items() if k != "datum"}
            if frames:
                self.get_logger().info(f"frames now: {frames}")
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------- start-up

    def start(self) -> None:
        """Build the Localizer (loads and checks the artefacts), then create topics, timer and worker."""
        lib_log = logging.getLogger("crossview_ros")
        self._log_handler = RosLogHandler(self.get_logger())
        self._log_handler.setFormatter(logging.Formatter("%(message)s"))
        lib_log.addHandler(self._log_handler)
        lib_log.setLevel(logging.INFO)
        lib_log.propagate = False
        try:
            self.localizer = Localizer(self.config)
        except Exception as exc:  # TileSetError, EngineError, LocalizerError, runtime errors of a corrupt file
            raise StartupError(f"cannot start the localizer: {exc}") from None
        if self.camera_settings.names:
            try:
                self.cameras = cameras.CameraInputs(self.camera_settings, self.localizer, self, self._warn)
            except ValueError as exc:  # CameraError: the model takes only whole panoramas
                raise StartupError(f"cannot start: {exc}") from None
        if self.settings.datum is not None:
            self.get_logger().info(f"datum ({self.settings.datum[0]:.7f}, {self.settings.datum[1]:.7f}) "
                                   "from the datum parameter")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Every endpoint's history, depth, reliability and durability can be overridden at start-up:
        # -p qos_overrides./<ns>/panorama.subscription.reliability:=reliable (see docs/reference.md, Parameters: QoS).
        # rclpy writes the overrides into the profile it is given: each endpoint gets its own copy.
        def qos(profile: QoSProfile) -> dict[str, Any]:
            return {"qos_profile": copy.copy(profile),
                    "qos_overriding_options": QoSOverridingOptions.with_default_policies()}

        self.pub_fix = self.create_publisher(NavSatFix, "crossview/fix", **qos(OUTPUT_QOS))
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "crossview/pose", **qos(OUTPUT_QOS))
        self.pub_heading = self.create_publisher(Imu, "crossview/heading", **qos(OUTPUT_QOS))
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", **qos(OUTPUT_QOS))
        self._worker = threading.Thread(target=self._work, name="crossview_localizer_worker", daemon=True)
        self._worker.start()
        self.create_subscription(NavSatFix, "gnss/fix", self._on_fix, **qos(FIX_QOS))
        if self.cameras is not None:  # a capture of the cameras takes a panorama's place
            self.cameras.subscribe(self, qos, lambda capture: self._on_panorama(capture, False))
        else:
            self.create_subscription(Image, "panorama", lambda m: self._on_panorama(m, False), **qos(PANORAMA_QOS))
            self.create_subscription(CompressedImage, "panorama/compressed", lambda m: self._on_panorama(m, True),
                                     **qos(PANORAMA_QOS))
        if self.config.odometry:  # the track moves by odometry (nav_msgs/Odometry, e.g. odometry/filtered)
            self.create_subscription(Odometry, "odom", self._on_odom, **qos(ODOM_QOS))
        self.create_timer(self.settings.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(f"ready: pose_origin {self.settings.pose_origin} in frame "
                               f"{self.settings.pose_frame!r}, heading {'on' if self.config.heading else 'off'}")

    def stop(self) -> None:
        """Stop the worker (after the frame in hand) and release the engine."""
        self._frames.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
        if self.localizer is not None:
            self.localizer.close()
        if self._log_handler is not None:
            logging.getLogger("crossview_ros").removeHandler(self._log_handler)

    # ----------------------------------------------------------------- callbacks (executor thread)

    def _on_panorama(self, msg: Any, compressed: bool) -> None:
        with self._lock:  # counted before the worker can see it: processed + dropped never exceeds received
            self.counts["frames_received"] += 1
            self._period.frames += 1
        if self._frames.put(_Frame(msg, compressed, time.monotonic())):
            with self._lock:
                self.counts["frames_dropped"] += 1

    def _on_fix(self, msg: NavSatFix) -> None:
        try:
            record = _FixRecord(convert.fix_from_navsat(msg), float(msg.altitude), convert.up_variance_m2(msg),
                                int(msg.status.service))
        except Exception as exc:  # a malformed message must not take the executor down
            self._warn("fix", f"GNSS fix ignored, cannot read it: {exc}")
            return
        with self._lock:
            self._fix = record
            self.counts["fixes_received"] += 1
        if self.settings.pose_origin == "datum" and self._enu is None:
            self._take_datum(record.fix)

    def _on_odom(self, msg: Odometry) -> None:
        try:
            problem = self.localizer.add_odometry(*convert.odometry_pose(msg))
        except Exception as exc:  # a malformed message must not take the executor down
            problem = f"odometry ignored, cannot read it: {exc}"
        with self._lock:
            self.counts["odometry_received" if problem is None else "odometry_ignored"] += 1
        if problem is not None:
            self._warn("odom", problem)

    def _take_datum(self, fix: Any) -> None:
        """The datum from the first fix that passes every check the localizer makes of a fix."""
        problem = self.localizer.fix_problem(fix, self.get_clock().now().nanoseconds * 1e-9)
        if problem is not None:
            self._warn("datum", f"GNSS fix not taken as the datum ({problem[0]}): {problem[1]}")
            return
        self._enu = geo.LocalENU(fix.lat_deg, fix.lon_deg)
        self.get_logger().info(f"datum ({fix.lat_deg:.7f}, {fix.lon_deg:.7f}) from the first valid GNSS fix")

    # ----------------------------------------------------------------- the worker

    def _work(self) -> None:
        while True:
            frame = self._frames.take()
            if frame is None:
                return
            with self._lock:
                fix = self._fix
            try:
                self._process(frame, fix)
            except Exception as exc:  # engine failure or a bug: report, keep serving the next frames
                if not self.context.ok():  # shutting down: publishers are gone, nothing to report
                    return
                with self._lock:
                    self.counts["frames_processed"] += 1
                    self.counts["errors"] += 1
                    self._period.errors += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                if self._throttle.ready("error") is not None:
                    self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}")

    def _process(self, frame: _Frame, fix: _FixRecord | None) -> None:
        msg = frame.msg
        stamp_s = convert.stamp_to_s(msg.header.stamp)
        est: Estimate | None = None
        if fix is None:
            self._reject(Reason.NO_FIX, f"frame {stamp_s:.3f} rejected, NO_FIX: no GNSS fix received yet on "
                                        f"{self.resolve_topic_name('gnss/fix')}")
        else:
            try:
                if isinstance(msg, cameras.Capture):
                    panorama, encoding = self.cameras.frame(msg), None
                else:
                    panorama = convert.compressed_to_bytes(msg) if frame.compressed else convert.image_to_array(msg)
                    encoding = None if frame.compressed else str(msg.encoding)
            except cameras.FrameRefused as exc:
                self._reject(exc.reason, f"frame {stamp_s:.3f} rejected, {exc.reason}: {exc}")
            except ValueError as exc:
                self._reject(Reason.BAD_IMAGE, f"frame {stamp_s:.3f} rejected, BAD_IMAGE: {exc}")
            else:
                now_s = self.get_clock().now().nanoseconds * 1e-9
                est = self.localizer.localize(panorama, fix.fix, stamp_s, encoding=encoding, now_s=now_s)
                if est.accepted:
                    self._publish(est, msg.header.stamp, fix)
        latency_ms = 1000.0 * (time.monotonic() - frame.received_s)
        with self._lock:
            self.counts["frames_processed"] += 1
            self._period.latencies_ms.append(latency_ms)
            if est is not None:
                self.counts[f"rejected_{est.reason}" if not est.accepted else "estimates_published"] += 1
                self._period.estimates += int(est.accepted)
                self._period.localize_ms.append(est.latency.total_ms)
                self._last_scope_tiles = est.tiles_in_scope
                self._last_reason = str(est.reason)
                if est.accepted and est.protection_level_m is not None:
                    self._last_protection_m = est.protection_level_m

    def _reject(self, reason: Reason, message: str) -> None:
        """A frame the node refuses before the Localizer sees it (same counter keys as the Localizer's)."""
        with self._lock:
            self.counts[f"rejected_{reason}"] += 1
            self._last_reason = str(reason)
            self._last_scope_tiles = 0
        self._warn(str(reason), message)

    def _warn(self, key: str, message: str) -> None:
        if self._throttle.ready(key) is not None:
            self.get_logger().warning(message)

    # ----------------------------------------------------------------- outputs

    def _publish(self, est: Estimate, stamp: Time, fix: _FixRecord) -> None:
        settings = self.settings  # one snapshot: a runtime frame change applies to whole frames
        stamp = Time(sec=stamp.sec, nanosec=stamp.nanosec)

        out = NavSatFix()
        out.header.stamp = stamp
        out.header.frame_id = settings.fix_frame
        out.status.status = NavSatStatus.STATUS_FIX
        out.status.service = fix.service
        out.latitude = float(est.lat_deg)
        out.longitude = float(est.lon_deg)
        out.altitude = fix.altitude_m if math.isfinite(fix.altitude_m) else float("nan")
        out.position_covariance = convert.navsat_covariance(est.covariance_enu_m2, fix.up_variance_m2)
        out.position_covariance_type = NavSatFix.COVARIANCE_TYPE_KNOWN

        if settings.pose_origin == "datum" and self._enu is None:  # cannot happen after a valid fix; be safe
            self._enu = geo.LocalENU(est.lat_deg, est.lon_deg)
        planar = convert.planar_pose(est, settings.pose_origin, self._enu)
        pose = PoseWithCovarianceStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = settings.pose_frame
        pose.pose.pose.position.x = planar.x_m
        pose.pose.pose.position.y = planar.y_m
        pose.pose.pose.position.z = 0.0
        q = convert.yaw_to_quaternion(0.0 if planar.yaw_rad is None else planar.yaw_rad)
        o = pose.pose.pose.orientation
        o.x, o.y, o.z, o.w = q
        pose.pose.covariance = convert.pose_covariance(planar.covariance_m2, est.yaw_variance_rad2
                                                       if planar.yaw_rad is not None else None)

        self.pub_fix.publish(out)
        self.pub_pose.publish(pose)
        if est.yaw_enu_rad is not None:
            imu = Imu()
            imu.header.stamp = stamp
            imu.header.frame_id = settings.base_frame
            o = imu.orientation
            o.x, o.y, o.z, o.w = convert.yaw_to_quaternion(est.yaw_enu_rad)
            imu.orientation_covariance = convert.orientation_covariance(est.yaw_variance_rad2)
            imu.angular_velocity_covariance[0] = -1.0
            imu.linear_acceleration_covariance[0] = -1.0
            self.pub_heading.publish(imu)

    def _publish_diagnostics(self) -> None:
        with self._lock:
            counts = Counter(self.counts)
            period, self._period = self._period, _Period()
            last_scope, last_reason, last_error = self._last_scope_tiles, self._last_reason, self._last_error
            protection_m = self._last_protection_m
        elapsed_s = max(time.monotonic() - period.started_s, 1e-9)
        if period.errors:
            level, message = DiagnosticStatus.ERROR, f"{period.errors} frame(s) failed: {last_error}"
        elif period.frames and not period.estimates:
            level, message = DiagnosticStatus.WARN, (f"no estimate from {period.frames} panorama(s) in the last "
                                                     f"{elapsed_s:.1f} s; last reason {last_reason}")
        elif period.frames:
            level, message = DiagnosticStatus.OK, f"{period.estimates} estimate(s) from {period.frames} panorama(s)"
        else:
            level, message = DiagnosticStatus.OK, "waiting for panoramas"

        def pct(values: list, q: float) -> str:
            return f"{float(np.percentile(values, q)):.2f}" if values else "nan"

        values = {
            "frames_received": counts["frames_received"], "frames_processed": counts["frames_processed"],
            "frames_dropped": counts["frames_dropped"], "estimates_published": counts["estimates_published"],
            **{key: counts[key] for key in REJECT_KEYS},
            "errors": counts["errors"], "fixes_received": counts["fixes_received"],
            "latency_p50_ms": pct(period.latencies_ms, 50), "latency_p99_ms": pct(period.latencies_ms, 99),
            "localize_p50_ms": pct(period.localize_ms, 50),
            "processed_rate_hz": f"{len(period.latencies_ms) / elapsed_s:.2f}",
            "estimates_rate_hz": f"{period.estimates / elapsed_s:.2f}",
            "last_scope_tiles": last_scope, "last_reason": last_reason or "none",
            "protection_level_m": f"{protection_m:.2f}", "yaw_withheld": self.localizer.yaw_withheld,
            "fix_overruled": self.localizer.fix_overruled,
            "imagery_vouched": self.localizer.imagery.vouched,
            "ambiguity_vouched": self.localizer.imagery.ambiguity_vouched,
            "odometry_received": counts["odometry_received"], "odometry_ignored": counts["odometry_ignored"],
            "odometry_aligned": str(self.localizer.odometry is not None
                                    and self.localizer.odometry.alignment.offset() is not None).lower(),
            "pose_origin": self.settings.pose_origin,
            "datum": "unset" if self._enu is None else f"{self._enu.lat0_deg:.7f},{self._enu.lon0_deg:.7f}",
            **(self.cameras.diagnostic_values() if self.cameras is not None else {}),
        }
        status = DiagnosticStatus(level=level, name=self.diagnostic_name, message=message, hardware_id=HARDWARE_ID,
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(array)


# --------------------------------------------------------------------------- main

USAGE = """usage: localize_node --ros-args -p tile_set:=DIR -p model:=DIR [--params-file config/localize.yaml]
                     [-r __ns:=/NAMESPACE] [-r panorama:=TOPIC ...]
                     [-p cameras:=[front] ...: per camera N, N/image, N/image/compressed, N/camera_info
                      instead of panorama; mounts in config/cameras_example.yaml]

Corrects GNSS fixes by matching panoramas against aerial tiles (crossview_ros). Every parameter,
with unit and default, is listed in config/localize.yaml. Exit codes: 0 shutdown, 1 failure,
2 start-up failure (bad parameter, missing or corrupt tile set or model).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `localize_node`; argv: the arguments after the program name (default sys.argv)."""
    args = list(sys.argv) if argv is None else ["localize_node", *argv]
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: every thread's Python stack on stderr (a hung node says where)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    logger = get_logger(NODE_NAME)
    try:
        plain = remove_ros_args(args)[1:]
    except Exception as exc:  # rcl could not parse the --ros-args
        logger.error(f"cannot start: bad ROS arguments: {exc}")
        return EXIT_STARTUP
    if any(a in ("-h", "--help") for a in plain):
        print(USAGE, end="")
        return EXIT_OK
    if plain:
        logger.error(f"unexpected arguments {plain}; ROS arguments go after --ros-args (see --help)")
        return EXIT_STARTUP
    try:
        rclpy.init(args=args)
    except Exception as exc:  # rcl could not parse the --ros-args
        logger.error(f"cannot start: bad ROS arguments: {exc}")
        return EXIT_STARTUP
    node: LocalizeNode | None = None
    half_built: Node | None = None  # the constructor refused its parameters (StartupError.node)
    code = EXIT_OK
    try:
        node = LocalizeNode()
        node.start()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except StartupError as exc:
        half_built = exc.node
        if node is None and half_built is None:
            logger.error(str(exc))
        else:  # no local name for it: nothing of rclpy may outlive the shutdown below
            (node if node is not None else half_built).get_logger().error(str(exc))
        code = EXIT_STARTUP
    except (KeyboardInterrupt, ExternalShutdownException):
        code = EXIT_OK
    except Exception as exc:  # a bug: say so in one line, with the type, and fail
        if rclpy.ok():
            logger.fatal(f"unexpected failure: {type(exc).__name__}: {exc}")
            code = EXIT_FAILURE
        else:  # SIGINT/SIGTERM shut the context down while spin built its wait set (rclpy raises RCLError then)
            code = EXIT_OK
    finally:
        if node is not None:
            node.stop()
        with exit_deadline(TEARDOWN_S, code):
            if node is not None:
                node.destroy_node()
            if half_built is not None:
                half_built.destroy_node()
            node = half_built = None  # nothing of rclpy may outlive its shutdown: freed after it, a handle can crash
            rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
