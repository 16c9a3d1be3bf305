"""Rig files: which cameras of a recording to localize with, where they sit on the robot, their topics.

A bag records images and CameraInfo, never where the cameras are mounted (a robot's /tf would, but
the offline tools do not read it), so `--cameras FILE` (crossview-localize --bag, --calibrate,
crossview-replay) says it:

    cameras:
      front:                      # the camera's name: its topics' default prefix, the node's parameter prefix
        height_m: 1.45            # the mount, as the node's per-camera parameters (crossview_ros.camera.CameraMount)
        x_m: 1.2
        y_m: 0.0
        yaw_deg: 0.0
        pitch_deg: 8.0
        roll_deg: 0.0
        image_topic: /camera/color/image_raw/compressed   # optional: default /front/image/compressed, else /front/image
        info_topic: /camera/color/camera_info            # optional: default /front/camera_info

The intrinsics come from the bag's CameraInfo. `crossview-sim drive --cameras RIG` writes the rig file
of its cameras into the bag folder (RIG_SIDECAR), so a simulated bag is read with
`--cameras BAG/cameras.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossview_ros.atomic import write_text_atomic
from crossview_ros.config import read_yaml
from crossview_ros.camera import MOUNT_KEYS, CameraError, CameraMount, check_camera_name, mounts_from_dict
from crossview_ros.replay_errors import BagError

RIG_SIDECAR = "cameras.yaml"  # the rig file crossview-sim writes inside a bag folder
TOPIC_KEYS = ("image_topic", "info_topic")
DOC = "docs/recordings.md"


@dataclass(frozen=True)
class RigCamera:
    """One camera of a rig file: its name, mount and (optional) topics."""

    name: str
    mount: CameraMount
    image_topic: str | None = None  # None: /N/image/compressed where the bag has it, else /N/image
    info_topic: str | None = None  # None: /N/camera_info

    def image_topics(self) -> tuple[str, ...]:
        """The topics its images may be on, in order of preference."""
        if self.image_topic is not None:
            return (self.image_topic,)
        return (f"/{self.name}/image/compressed", f"/{self.name}/image")

    @property
    def camera_info_topic(self) -> str:
        return self.info_topic or f"/{self.name}/camera_info"


@dataclass(frozen=True)
class RigSpec:
    """The cameras of a rig file, in its order (the order of the node's `cameras` parameter)."""

    cameras: tuple[RigCamera, ...]
    source: str = field(default="", compare=False)  # where it was read from, for error lines

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> RigSpec:
        """From a rig file's document {cameras: {N: {mount keys, image_topic, info_topic}}}; BagError
        naming the camera and the key that is wrong."""
        if not isinstance(doc, Mapping) or set(doc) != {"cameras"} or not isinstance(doc["cameras"], Mapping):
            raise BagError(f"{source}: a rig file holds one key, cameras, mapping each camera name to its mount "
                           f"{{height_m, x_m, y_m, yaw_deg, pitch_deg, roll_deg}} ({DOC})")
        cameras = doc["cameras"]
        if not cameras:
            raise BagError(f"{source}: cameras is empty; name at least one camera ({DOC})")
        mounts: dict[str, dict[str, Any]] = {}
        topics: dict[str, dict[str, str | None]] = {}
        for name, entry in cameras.items():
            name = str(name)
            try:
                check_camera_name(name)
            except CameraError as exc:
                raise BagError(f"{source}: {exc}") from None
            if not isinstance(entry, Mapping):
                raise BagError(f"{source}: camera {name} must map its mount keys {list(MOUNT_KEYS)} (and "
                               f"{', '.join(TOPIC_KEYS)}), got {entry!r}")
            unknown = sorted(set(entry) - set(MOUNT_KEYS) - set(TOPIC_KEYS))
            if unknown:
                raise BagError(f"{source}: camera {name}: unknown key(s) {unknown}; valid keys: "
                               f"{[*MOUNT_KEYS, *TOPIC_KEYS]}")
            mounts[name] = {k: v for k, v in entry.items() if k in MOUNT_KEYS}
            topics[name] = {k: _topic(entry.get(k), f"{source}: camera {name} {k}") for k in TOPIC_KEYS}
        try:
            parsed = mounts_from_dict(mounts)
        except CameraError as exc:
            raise BagError(f"{source}: {exc}") from None
        return cls(tuple(RigCamera(n, parsed[n], topics[n]["image_topic"], topics[n]["info_topic"]) for n in parsed),
                   source)

    def to_dict(self) -> dict[str, Any]:
        """The rig file's document (every mount key; topics only where set)."""
        out: dict[str, Any] = {}
        for cam in self.cameras:
            entry: dict[str, Any] = {k: float(getattr(cam.mount, k)) for k in MOUNT_KEYS}
            entry.update({k: getattr(cam, k) for k in TOPIC_KEYS if getattr(cam, k) is not None})
            out[cam.name] = entry
        return {"cameras": out}


def _topic(value: Any, what: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        raise BagError(f"{what} is empty; leave the key out for the default topic")
    return text if text.startswith("/") else "/" + text  # bags store absolute names


def load_rig_file(path: str | Path) -> RigSpec:
    """The rig file at `path` (--cameras FILE); BagError, one line, saying what is wrong."""
    doc = read_yaml(path, "--cameras", BagError)
    return RigSpec.from_dict(doc, f"--cameras {path}")


def rig_file_text(rig: RigSpec) -> str:
    """The YAML text of a rig file."""
    return yaml.safe_dump(rig.to_dict(), sort_keys=False)


def save_rig_file(path: str | Path, rig: RigSpec) -> Path:
    """Write the rig file atomically; returns its path."""
    return write_text_atomic(path, rig_file_text(rig))


def resolve_cameras(rig: RigSpec, bag_topics: Mapping[str, str], path: Path, image_types: tuple[str, ...],
                    info_type: str) -> dict[str, tuple[str, str]]:
    """camera name -> (image topic, CameraInfo topic) in this bag; BagError (one line naming the camera and
    the bag's topics) when one is missing or of another type."""
    listed = ", ".join(f"{t} ({m.split('/')[-1]})" for t, m in sorted(bag_topics.items())) or "none"
    out = {}
    for cam in rig.cameras:
        image = next((t for t in cam.image_topics() if t in bag_topics), None)
        if image is None:
            raise BagError(f"bag {path} has no image topic of camera {cam.name} ({' or '.join(cam.image_topics())}; "
                           f"{rig.source}); its topics: {listed}; set image_topic in the rig file ({DOC})")
        if bag_topics[image] not in image_types:
            raise BagError(f"bag {path}: camera {cam.name}'s image topic {image} is {bag_topics[image]}, expected "
                           f"{' or '.join(image_types)}")
        info = cam.camera_info_topic
        if info not in bag_topics:
            raise BagError(f"bag {path} has no CameraInfo topic of camera {cam.name} ({info}; {rig.source}); its "
                           f"topics: {listed}; set info_topic in the rig file ({DOC})")
        if bag_topics[info] != info_type:
            raise BagError(f"bag {path}: camera {cam.name}'s info topic {info} is {bag_topics[info]}, expected "
                           f"{info_type}")
        out[cam.name] = (image, info)
    return out
