"""Cameras that are not 360° for the localize node: their parameters, topics, CameraInfo and capture sync.

With the node parameter `cameras` set (e.g. [front], or [front, left, rear, right] for a surround
rig) the node takes each camera's images instead of `panorama`: a bev model composes them into its
panorama (crossview_ros.camera, Localizer.camera_rig). Per camera N (relative topics, remappable):
`N/image` (sensor_msgs/Image), `N/image/compressed` (CompressedImage), both best effort keep-last 1
like the panorama topics, and `N/camera_info` (CameraInfo, best effort keep-last 1).

Why it looks like this:
- CameraInfo is parsed on receipt (a repeat of the same fields is not parsed again): a bad one is
  counted (camera_info_refused), warned with its reason, and leaves the camera without a model
  until a good one comes. The rig costs ~0.1 s a camera, so the worker rebuilds it only when a
  model changes, never per frame.
- A capture is one image per camera, all within camera_sync_s of the newest; it is handed to the
  node's worker like a panorama (newest wins), stamped with the newest image's stamp. Images that
  never make a capture are only counted (camera_images_received).
- A frame from a camera without a valid CameraInfo is refused as BAD_CAMERA, saying which topic.

The mount (N.height_m, N.x_m, N.y_m, N.yaw_deg, N.pitch_deg, N.roll_deg) is a parameter: the static
transform is not read. Copy it from `ros2 run tf2_ros tf2_echo base_link <camera body frame>`
(e.g. camera_link): x_m, y_m from the translation, height_m = its z plus base_link's height above
the ground, and the `RPY (degree)` values as roll_deg, pitch_deg, yaw_deg. The mount is the
camera's body frame (REP-103: x forward, z up), not its optical frame: `<camera>_optical_frame`
has the same origin but is the body turned by roll -90°, yaw -90° (z forward), so its RPY is not
the mount's.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from crossview_ros.camera import (
    Camera, CameraError, CameraFrame, CameraModel, CameraMount, CameraRig, check_camera_name, mounts_from_dict,
)
from crossview_ros.estimate import Reason
from crossview_ros.localizer import Localizer
from crossview_ros.nodes import convert

# Images and CameraInfo: best effort, keep last 1, as the panorama topics (stale frames are dropped).
CAMERA_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
RIG_PARAMETERS = ("cameras", "camera_sync_s")  # beside each camera's mount: N.height_m, N.x_m, ...
DEFAULT_SYNC_S = 0.05
MAX_SYNC_S = 10.0
# Per camera: key -> (default, unit, description); the keys are CameraMount's (crossview_ros/camera.py).
MOUNT_PARAMETERS: dict[str, tuple[float, str, str]] = {
    "height_m": (2.0, "m", "optical centre above the ground (tf2_echo base_link's z + base_link's height)"),
    "x_m": (0.0, "m", "optical centre forward of base_link (REP-103)"),
    "y_m": (0.0, "m", "optical centre left of base_link (REP-103)"),
    "yaw_deg": (0.0, "deg", "camera body frame's yaw: counter-clockwise from forward, a left camera is 90"),
    "pitch_deg": (0.0, "deg", "camera body frame's pitch: > 0 looks down, within [-90, 90]"),
    "roll_deg": (0.0, "deg", "camera body frame's roll about its forward axis"),
}


class FrameRefused(Exception):
    """A capture the node refuses before the Localizer sees it; reason is the Reason to count."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CameraSettings:
    """The camera parameters, validated: no names = the panorama topics."""

    names: tuple[str, ...]
    mounts: dict[str, CameraMount]
    sync_s: float
    parameter_names: frozenset[str]  # every parameter declared here (the node's unknown-parameter check)


def _descriptor(description: str, unit: str, type_: Parameter.Type,
                range_: tuple[float, float] | None = None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=f"{description} [{unit}]" if unit else description, read_only=True,
                            type=type_.value)
    if range_ is not None:
        d.floating_point_range = [FloatingPointRange(from_value=range_[0], to_value=range_[1], step=0.0)]
    return d


def _declare(node: Node, name: str, default: Any, descriptor: ParameterDescriptor) -> Any:
    """Declare one parameter; ValueError saying what is wrong with a given value."""
    try:
        return node.declare_parameter(name, default, descriptor).value
    except InvalidParameterTypeException:
        if isinstance(default, float):
            raise ValueError(f"{name} must be of type double (write it with a decimal point, e.g. "
                             f"{default!r}); default {default!r}") from None
        raise ValueError(f"{name} must be a string array of camera names, e.g. cameras:=[front] or "
                         "[front, left, rear, right]") from None
    except InvalidParameterValueException:
        limits = [f"{r.from_value:g} .. {r.to_value:g}" for r in descriptor.floating_point_range]
        raise ValueError(f"{name} is outside its range {' '.join(limits)}") from None


def declare_parameters(node: Node) -> CameraSettings:
    """Declare `cameras`, `camera_sync_s` and each named camera's mount; ValueError naming a bad one."""
    names = _declare(node, "cameras", Parameter.Type.STRING_ARRAY, _descriptor(
        "cameras that are not 360° (topics N/image, N/image/compressed, N/camera_info); [] = the panorama "
        "topics", "", Parameter.Type.STRING_ARRAY)) or []
    sync_s = float(_declare(node, "camera_sync_s", DEFAULT_SYNC_S, _descriptor(
        "images of one capture lie within this of the newest; the capture takes the newest's stamp", "s",
        Parameter.Type.DOUBLE, (0.0, MAX_SYNC_S))))
    declared = set(RIG_PARAMETERS)
    try:
        for name in names:
            check_camera_name(name)
    except CameraError as exc:
        raise ValueError(f"cameras {list(names)}: {exc}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"cameras {list(names)}: each camera name must be given once")
    values: dict[str, dict[str, float]] = {}
    for name in names:
        values[name] = {}
        for key, (default, unit, description) in MOUNT_PARAMETERS.items():
            full = f"{name}.{key}"
            values[name][key] = _declare(node, full, default, _descriptor(f"camera {name}: {description}", unit,
                                                                          Parameter.Type.DOUBLE))
            declared.add(full)
    try:
        mounts = mounts_from_dict(values) if names else {}
    except CameraError as exc:
        raise ValueError(str(exc)) from None
    return CameraSettings(tuple(names), mounts, sync_s, frozenset(declared))


@dataclass(frozen=True)
class _Shot:
    """One camera's newest image as received."""

    msg: Any
    compressed: bool
    stamp_s: float


@dataclass(frozen=True)
class Capture:
    """One image per camera, in the order of `cameras`; header is the newest image's (its stamp is
    the capture's, which every output copies)."""

    images: tuple[Any, ...]
    compressed: tuple[bool, ...]
    header: Any


class CameraInputs:
    """The cameras' subscriptions and state: models from CameraInfo, the newest image per camera, the rig.

    The executor thread calls the callbacks; the node's worker calls frame(). One lock guards what
    both touch; the rig is the worker's alone.
    """

    def __init__(self, settings: CameraSettings, localizer: Localizer, node: Node,
                 warn: Callable[[str, str], None]) -> None:
        if not localizer.matcher.partial_views:
            raise CameraError(f"cameras {list(settings.names)} need a bev model: model {localizer.meta.name} is a "
                              f"{localizer.matcher.kind} model, which takes only whole 360° panoramas; unset "
                              "`cameras` to subscribe `panorama`, or run a bev model")
        self.settings = settings
        self.localizer = localizer
        self._logger = node.get_logger()
        self._warn = warn
        n = len(settings.names)
        self._info_topics = [node.resolve_topic_name(f"{name}/camera_info") for name in settings.names]
        self._lock = threading.Lock()
        self._models: list[CameraModel | None] = [None] * n
        self._problems = [f"no CameraInfo on {topic} yet" for topic in self._info_topics]
        self._info_keys: list[tuple | None] = [None] * n  # the last CameraInfo's fields, parsed or refused
        self._latest: list[_Shot | None] = [None] * n
        self.counts: Counter[str] = Counter()
        self._rig: CameraRig | None = None  # the worker's alone
        self._rig_models: tuple[CameraModel | None, ...] | None = None
        self._on_capture: Callable[[Capture], None] | None = None

    def subscribe(self, node: Node, qos: Callable[[QoSProfile], dict[str, Any]],
                  on_capture: Callable[[Capture], None]) -> None:
        """Subscribe every camera's image, compressed image and CameraInfo; on_capture gets each capture."""
        self._on_capture = on_capture
        for i, name in enumerate(self.settings.names):
            node.create_subscription(Image, f"{name}/image", partial(self._on_image, i, False), **qos(CAMERA_QOS))
            node.create_subscription(CompressedImage, f"{name}/image/compressed", partial(self._on_image, i, True),
                                     **qos(CAMERA_QOS))
            node.create_subscription(CameraInfo, f"{name}/camera_info", partial(self._on_info, i),
                                     **qos(CAMERA_QOS))

    # ----------------------------------------------------------------- callbacks (executor thread)

    def _on_info(self, i: int, msg: CameraInfo) -> None:
        name, topic = self.settings.names[i], self._info_topics[i]
        try:
            key: tuple | None = (int(msg.width), int(msg.height), str(msg.distortion_model), tuple(msg.k),
                                 tuple(msg.d))
        except (TypeError, ValueError):  # not a CameraInfo's fields: parse it to say why
            key = None
        with self._lock:
            self.counts["camera_info_received"] += 1
            if key is not None and key == self._info_keys[i]:  # a repeat: its verdict stands
                problem = None if self._models[i] is not None else self._problems[i]
                if problem is not None:
                    self.counts["camera_info_refused"] += 1
                model = changed = None
            else:
                try:
                    model, problem = CameraModel.from_camera_info(msg), None
                except CameraError as exc:
                    model, problem = None, f"CameraInfo on {topic} refused: {exc}"
                changed = model != self._models[i]
                self._models[i], self._info_keys[i] = model, key
                self._problems[i] = problem or ""
                if problem is not None:
                    self.counts["camera_info_refused"] += 1
        if problem is not None:
            self._warn(f"camera_info {name}", f"camera {name}: {problem}; its frames are refused (BAD_CAMERA) "
                                              "until a valid CameraInfo comes")
        elif changed:
            self._logger.info(f"camera {name}: CameraInfo {model.width} x {model.height} {model.kind} "
                              f"({model.distortion_model or 'no distortion'}) from {topic}")

    def _on_image(self, i: int, compressed: bool, msg: Any) -> None:
        shot = _Shot(msg, compressed, convert.stamp_to_s(msg.header.stamp))
        with self._lock:
            self.counts["camera_images_received"] += 1
            self._latest[i] = shot
            shots = list(self._latest)
            if any(s is None for s in shots):
                return
            newest = max(shots, key=lambda s: s.stamp_s)
            spread_s = newest.stamp_s - min(s.stamp_s for s in shots)
            synced = spread_s <= self.settings.sync_s
            if synced:
                self._latest = [None] * len(shots)
        if synced:
            self._on_capture(Capture(tuple(s.msg for s in shots), tuple(s.compressed for s in shots),
                                     newest.msg.header))
        else:
            stamps = ", ".join(f"{n} {s.stamp_s:.3f}" for n, s in zip(self.settings.names, shots))
            self._warn("camera_sync", f"camera images not within camera_sync_s {self.settings.sync_s:g} s of the "
                                      f"newest (stamps {stamps}; spread {spread_s:.3f} s): no capture yet")

    # ----------------------------------------------------------------- the worker

    def frame(self, capture: Capture) -> CameraFrame:
        """The CameraFrame of a capture for Localizer.localize; FrameRefused (BAD_CAMERA: no or a bad
        CameraInfo; BAD_IMAGE: an image message that cannot be read). Rebuilds the rig when a model changed."""
        with self._lock:
            models, problems = tuple(self._models), tuple(self._problems)
        missing = [f"camera {n}: {p}" for n, m, p in zip(self.settings.names, models, problems) if m is None]
        if missing:
            raise FrameRefused(Reason.BAD_CAMERA, "; ".join(missing))
        if models != self._rig_models:
            cams = [Camera(n, m, self.settings.mounts[n]) for n, m in zip(self.settings.names, models)]
            try:
                self._rig = self.localizer.camera_rig(cams)
            except CameraError as exc:
                raise FrameRefused(Reason.BAD_CAMERA, str(exc)) from None
            self._rig_models = models
            with self._lock:
                self.counts["camera_rigs_built"] += 1
            self._logger.info(f"camera rig built: {', '.join(self.settings.names)} on the model's "
                              f"{self._rig.size_hw[1]} x {self._rig.size_hw[0]} panorama, "
                              f"{100.0 * self._rig.visibility.mean():.0f} % of it seen")
        images, encodings = [], []
        for name, msg, compressed in zip(self.settings.names, capture.images, capture.compressed):
            try:
                images.append(convert.compressed_to_bytes(msg) if compressed else convert.image_to_array(msg))
            except ValueError as exc:
                raise FrameRefused(Reason.BAD_IMAGE, f"camera {name}: {exc}") from None
            encodings.append(None if compressed else str(msg.encoding))
        return CameraFrame(self._rig, tuple(images), tuple(encodings))

    # ----------------------------------------------------------------- diagnostics

    def diagnostic_values(self) -> dict[str, Any]:
        """The cameras' counters and each camera's model (`none` until a valid CameraInfo)."""
        with self._lock:
            counts, models = Counter(self.counts), list(self._models)
        state = ", ".join(f"{n} {'none' if m is None else f'{m.width}x{m.height} {m.kind}'}"
                          for n, m in zip(self.settings.names, models))
        keys = ("camera_images_received", "camera_info_received", "camera_info_refused", "camera_rigs_built")
        return {**{k: counts[k] for k in keys}, "cameras": state}
