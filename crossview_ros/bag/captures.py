"""A rig's cameras as a bag records them: each camera's images and CameraInfo, and the captures they make.

The offline tools take what the node takes (crossview_ros.nodes.cameras): one image per camera whose
stamps lie within CAMERA_SYNC_S of each other make a capture, stamped with the newest image's stamp;
each camera's intrinsics are the newest CameraInfo at or before that stamp (its first before the first
one). A CameraInfo the localizer cannot use (zero focal length, an unknown distortion model) is
refused when the bag is read, naming the camera, the topic and the reason: a bag whose calibration is
broken is broken for every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossview_ros.bag.rig import RigCamera
from crossview_ros.bag.writer import MSG_COMPRESSED, typestore
from crossview_ros.camera import Camera, CameraError, CameraModel
from crossview_ros.raw_image import image_to_array
from crossview_ros.replay_errors import BagError

NS = 1_000_000_000
CAMERA_SYNC_S = 0.05  # the node's camera_sync_s default: images of one capture lie within this


def image_payload(raw: bytes, msgtype: str, where: str) -> tuple[Any, str | None]:
    """One stored image message as Localizer takes it: JPEG/PNG bytes and None (a CompressedImage), or a
    uint8 array and its rgb8 | bgr8 | mono8 encoding (an Image); BagError, `where` first, for a raw image
    it cannot read."""
    msg = typestore().deserialize_cdr(raw, msgtype)
    if msgtype == MSG_COMPRESSED:
        return bytes(memoryview(msg.data).cast("B")), None
    try:
        return image_to_array(msg), str(msg.encoding)
    except ValueError as exc:
        raise BagError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class CameraImages:
    """One capture as a bag holds it, in the rig's camera order: the cameras (their intrinsics at that
    moment) and each image as its message carries it (JPEG/PNG bytes with None, or a uint8 array with
    its encoding). Localizer.camera_rig(cameras) and these make the Localizer's CameraFrame."""

    cameras: tuple[Camera, ...]
    images: tuple[Any, ...]
    encodings: tuple[str | None, ...]


def _info_key(msg: Any) -> tuple:
    """What a CameraInfo says about the intrinsics (a repeat of the same is not parsed again)."""
    return (int(msg.width), int(msg.height), str(msg.distortion_model), tuple(float(v) for v in msg.d),
            tuple(float(v) for v in msg.k))


@dataclass
class CameraTrack:
    """One camera's recording: its images (CDR as stored) and its intrinsics over time."""

    rig: RigCamera
    image_topic: str
    image_msgtype: str
    info_topic: str
    image_stamp_ns: list[int] = field(default_factory=list)  # in bag order
    image_raw: list[bytes] = field(default_factory=list)
    info_stamp_ns: list[int] = field(default_factory=list)  # where the intrinsics change (the first: its first)
    info_raw: list[bytes] = field(default_factory=list)  # the CameraInfo message of each change, as stored
    cameras: list[Camera] = field(default_factory=list)  # the camera of each change
    _keys: list[tuple] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.rig.name

    @property
    def compressed(self) -> bool:
        return self.image_msgtype == MSG_COMPRESSED

    def add_image(self, stamp_ns: int, raw: bytes) -> None:
        self.image_stamp_ns.append(int(stamp_ns))
        self.image_raw.append(bytes(raw))

    def add_info(self, stamp_ns: int, msg: Any, raw: bytes, where: str) -> None:
        """A CameraInfo message; BagError naming the camera when the localizer cannot use it."""
        key = _info_key(msg)
        if self._keys and self._keys[-1] == key:
            return
        try:
            model = CameraModel.from_camera_info(msg)
        except CameraError as exc:
            raise BagError(f"{where}: camera {self.name}: CameraInfo on {self.info_topic} at {stamp_ns / NS:.3f} s: "
                           f"{exc}") from None
        self._keys.append(key)
        self.info_stamp_ns.append(int(stamp_ns))
        self.info_raw.append(bytes(raw))
        self.cameras.append(Camera(self.name, model, self.rig.mount))

    def check(self, where: str) -> None:
        """BagError when the camera has no image or no CameraInfo."""
        if not self.image_raw:
            raise BagError(f"{where}: camera {self.name}'s image topic {self.image_topic} holds no messages")
        if not self.cameras:
            raise BagError(f"{where}: camera {self.name} has no CameraInfo on {self.info_topic}; record its "
                           "camera_info topic with the images (an uncalibrated camera: calibrate it first)")
        order = np.argsort(np.asarray(self.info_stamp_ns, np.int64), kind="stable")
        self.info_stamp_ns = [self.info_stamp_ns[i] for i in order]
        self.info_raw = [self.info_raw[i] for i in order]
        self.cameras = [self.cameras[i] for i in order]

    def info_index(self, stamp_ns: int) -> int:
        """The CameraInfo in force at a stamp: the newest at or before it, else the first."""
        k = int(np.searchsorted(np.asarray(self.info_stamp_ns, np.int64), int(stamp_ns), side="right")) - 1
        return max(k, 0)

    def image_payload(self, row: int, where: str) -> tuple[Any, str | None]:
        """One image as Localizer takes it: JPEG/PNG bytes and None, or a uint8 array and its encoding."""
        return image_payload(self.image_raw[row], self.image_msgtype,
                             f"{where}: camera {self.name}, image {row} on {self.image_topic}")


def sync_captures(stamps_ns: Sequence[Sequence[int]], sync_s: float = CAMERA_SYNC_S) -> tuple[np.ndarray, np.ndarray]:
    """Captures of a rig from each camera's image stamps: (C,) capture stamps (the newest image's) in stamp
    order and (C, cameras) the image row of each camera. The first camera leads: each of its images takes
    every other camera's image nearest in stamp when all lie within sync_s; an image makes one capture at most."""
    stamps = [np.asarray(s, np.int64) for s in stamps_ns]
    orders = [np.argsort(s, kind="stable") for s in stamps]
    sorted_stamps = [s[o] for s, o in zip(stamps, orders)]
    sync_ns = int(round(sync_s * NS))
    last = [-1] * len(stamps)
    out_stamps, out_rows = [], []
    for k in range(len(sorted_stamps[0])):
        t = int(sorted_stamps[0][k])
        picks = [k]
        for s in sorted_stamps[1:]:
            j = int(np.searchsorted(s, t))
            near = [i for i in (j - 1, j) if 0 <= i < len(s)]
            picks.append(min(near, key=lambda i: abs(int(s[i]) - t)) if near else -1)
        if min(picks) < 0 or any(p <= prev for p, prev in zip(picks, last)):
            continue
        ts = [int(s[p]) for s, p in zip(sorted_stamps, picks)]
        if max(ts) - min(ts) > sync_ns:
            continue
        last = picks
        out_stamps.append(max(ts))
        out_rows.append([int(o[p]) for o, p in zip(orders, picks)])
    rows = np.asarray(out_rows, np.int64).reshape(-1, len(stamps))
    return np.asarray(out_stamps, np.int64), rows
