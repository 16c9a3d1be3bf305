"""Pinhole and fisheye views along the simulator's drives, with their CameraInfo.

A central camera sees exactly the rays of a panorama taken from its optical centre, so each view
is rendered by looking its pixels' rays up in the drive's panorama (crossview_ros.camera for the
intrinsics, bilinear, wrapping around the seam): exact geometry, with the panorama's angular
resolution (360° / its width per pixel) as the limit on detail. The simulated cameras therefore
sit at the panorama's optical centre (the mode's camera height, no offset); their pitch and yaw
are free.

Named rigs (RIGS) are what the pooled walks compare: `forward90` a 90° forward camera,
`rig4` four 100° cameras looking forward, left, back and right, `fisheye` one forward
equidistant fisheye of 190°, and `panorama` the 360° panorama itself.

`crossview-sim drive --cameras RIG` writes the views into the drive bag; for a drive bag made
without them, the converter adds them, rendered from the bag's (JPEG) panoramas:

    python -m crossview_ros.sim.cameras BAG OUT --rig forward90|rig4|fisheye [--overwrite]

OUT is BAG with, per camera N, /N/image/compressed and /N/camera_info after each panorama (same
stamp), the rig in the datum's `bag.cameras` and the rig file OUT/cameras.yaml
(crossview_ros.bag.rig); read it with `--cameras OUT/cameras.yaml`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.highlevel import AnyReader

from crossview_ros.bag.drive import bag_location, stamp_ns
from crossview_ros.bag.rig import RIG_SIDECAR, rig_file_text
from crossview_ros.bag.writer import (
    MSG_STRING, TOPIC_DATUM, TOPIC_PANORAMA, DriveMessages, check_target, typestore, write_bag,
)
from crossview_ros.camera import Camera, CameraModel, CameraMount
from crossview_ros.panorama import decode_image
from crossview_ros.replay_errors import ReplayError
from crossview_ros.sim.bag import camera_messages, camera_topics, rig_spec

PANORAMA_RIG = "panorama"


def camera_height_m(mode: str) -> float:
    """The simulator's camera height for a drive mode: a person's 360 camera walking, a car's roof driving."""
    return 1.7 if mode == "walk" else 2.0


def rig_cameras(name: str, height_m: float) -> list[Camera]:
    """The cameras of a named rig at the given optical-centre height (ValueError for an unknown name)."""
    if name == "forward90":
        return [Camera("front", CameraModel.pinhole(640, 480, 90.0), CameraMount(height_m=height_m, pitch_deg=10.0))]
    if name == "rig4":
        return [Camera(n, CameraModel.pinhole(640, 480, 100.0),
                       CameraMount(height_m=height_m, yaw_deg=yaw, pitch_deg=15.0))
                for n, yaw in (("front", 0.0), ("left", 90.0), ("rear", 180.0), ("right", 270.0))]
    if name == "fisheye":
        return [Camera("front", CameraModel.fisheye(800, 800, 190.0, (0.01, -0.002, 0.0, 0.0)),
                       CameraMount(height_m=height_m, pitch_deg=20.0))]
    raise ValueError(f"unknown camera rig {name!r}; use one of {sorted(RIGS)}")


RIGS = ("forward90", "rig4", "fisheye", PANORAMA_RIG)
CAMERA_RIGS = tuple(r for r in RIGS if r != PANORAMA_RIG)  # the rigs of cameras that are not 360°
JPEG_QUALITY = 90  # the drive bag's panoramas and views


def encode_jpeg(image_rgb: np.ndarray, what: str) -> bytes:
    """An RGB uint8 image as the drive bag's JPEG."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding of {what} failed")
    return jpeg.tobytes()


def view_maps(camera: Camera, pano_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2.remap maps (map_x, map_y) into a panorama padded by one column on each side, and the
    (H, W) mask of the pixels whose ray the camera model maps (outside a fisheye's circle: black)."""
    m = camera.model
    v, u = np.mgrid[0:m.height, 0:m.width].astype(np.float64)
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    rays_optical = m.unproject(uv)
    _, ok = m.project(rays_optical)  # the round trip: a fisheye's corners beyond its trusted angle are dark
    rays = rays_optical @ camera.mount.base_from_optical().T
    azimuth = np.remainder(np.arctan2(-rays[:, 1], rays[:, 0]), 2 * math.pi)  # clockwise from forward
    elevation = np.arcsin(np.clip(rays[:, 2], -1.0, 1.0))
    h, w = pano_hw
    col = azimuth / (2 * math.pi) * w - 0.5 + 1.0  # +1: the padded column
    row = (math.pi / 2 - elevation) / math.pi * h - 0.5
    shape = (m.height, m.width)
    return col.reshape(shape).astype(np.float32), row.reshape(shape).astype(np.float32), ok.reshape(shape)


def render_views(panorama: np.ndarray, cameras: Sequence[Camera]) -> list[np.ndarray]:
    """(H, 2H, 3) uint8 panorama (column 0 = forward) -> each camera's (height, width, 3) uint8 image."""
    return ViewRenderer(cameras, panorama.shape[:2])(panorama)


class ViewRenderer:
    """render_views with the maps computed once for a rig and a panorama size."""

    def __init__(self, cameras: Sequence[Camera], pano_hw: tuple[int, int]) -> None:
        self.cameras = list(cameras)
        self.pano_hw = tuple(pano_hw)
        self._maps = [view_maps(cam, self.pano_hw) for cam in self.cameras]

    def __call__(self, panorama: np.ndarray) -> list[np.ndarray]:
        if panorama.shape[:2] != self.pano_hw:
            raise ValueError(f"panorama is {panorama.shape[:2]}, the renderer was built for {self.pano_hw}")
        padded = np.concatenate([panorama[:, -1:], panorama, panorama[:, :1]], axis=1)
        views = []
        for map_x, map_y, ok in self._maps:
            view = cv2.remap(padded, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            view[~ok] = 0
            views.append(view)
        return views


# --------------------------------------------------------------------------- the converter


def _datum_with_cameras(doc: dict, ts: Any, cameras: Sequence[Camera], topics: dict[str, str]) -> Any:
    """The datum message with the rig and its topics added to its `bag` block (as drive --cameras writes it)."""
    block = dict(doc.get("bag", {}))
    block["topics"] = topics
    block["cameras"] = rig_spec(cameras).to_dict()["cameras"]
    return ts.types[MSG_STRING](data=json.dumps({**doc, "bag": block}, sort_keys=True, allow_nan=False))


def add_cameras(src: str | Path, dst: str | Path, rig: str, *, overwrite: bool = False) -> Path:
    """Write `dst`: the drive bag `src` with the views of rig `rig` (module docstring); returns dst.
    ValueError when src is not a simulated drive bag or already has camera topics."""
    if rig not in CAMERA_RIGS:
        raise ValueError(f"rig {rig!r}: use one of {list(CAMERA_RIGS)}")
    dst = Path(dst)
    check_target(dst, overwrite)
    ts = typestore()
    with AnyReader([bag_location(src)], default_typestore=ts) as reader:
        source_topics = {c.topic: c.msgtype for c in reader.connections}
        if not {TOPIC_PANORAMA, TOPIC_DATUM} <= set(source_topics):
            raise ValueError(f"{src} is not a drive bag of crossview-sim (it has {sorted(source_topics)})")
        datum_conns = [c for c in reader.connections if c.topic == TOPIC_DATUM]
        _, _, datum_raw = next(reader.messages(connections=datum_conns))
        datum = json.loads(ts.deserialize_cdr(datum_raw, MSG_STRING).data)
        mode = datum.get("bag", {}).get("drive", {}).get("mode")
        if mode not in ("walk", "drive"):
            raise ValueError(f"{src}: its datum names no drive mode (walk or drive), so the camera height is unknown")
        cameras = rig_cameras(rig, camera_height_m(mode))
        extra = camera_topics(cameras)
        if set(extra) & set(source_topics):
            raise ValueError(f"{src} already has camera topics {sorted(set(extra) & set(source_topics))}")
        topics = {**source_topics, **extra}
        build = DriveMessages()
        renderers: dict[tuple[int, int], ViewRenderer] = {}

        def messages() -> Iterator[tuple[str, int, Any]]:
            for conn, log_ns, raw in reader.messages():
                if conn.topic == TOPIC_DATUM:
                    yield conn.topic, log_ns, _datum_with_cameras(datum, ts, cameras, topics)
                    continue
                yield conn.topic, log_ns, bytes(raw)
                if conn.topic != TOPIC_PANORAMA:
                    continue
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                try:
                    pano = decode_image(bytes(memoryview(msg.data).cast("B")))
                except ValueError as exc:
                    raise ValueError(f"{src}: the panorama at {log_ns / 1e9:.3f} s: {exc}") from None
                if pano.shape[:2] not in renderers:
                    renderers[pano.shape[:2]] = ViewRenderer(cameras, pano.shape[:2])
                renderer = renderers[pano.shape[:2]]
                t_ns = stamp_ns(msg.header)
                views = [encode_jpeg(v, f"view at {t_ns / 1e9:.3f} s") for v in renderer(pano)]
                yield from camera_messages(build, t_ns, cameras, views, f"panorama at {t_ns / 1e9:.3f} s")

        return write_bag(dst, messages(), overwrite=overwrite, topics=topics,
                         sidecars={RIG_SIDECAR: rig_file_text(rig_spec(cameras))})


def main(argv: Sequence[str] | None = None) -> int:
    """python -m crossview_ros.sim.cameras BAG OUT --rig RIG: exit 0 done, 2 bad input (one line on stderr)."""
    p = argparse.ArgumentParser(prog="python -m crossview_ros.sim.cameras", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="drive bag of crossview-sim drive")
    p.add_argument("dst", help="bag folder to write: the drive with the rig's views")
    p.add_argument("--rig", required=True, choices=CAMERA_RIGS, help="the camera rig to render")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = p.parse_args(argv)
    try:
        out = add_cameras(args.src, args.dst, args.rig, overwrite=args.overwrite)
    except (ValueError, FileExistsError, OSError, ReplayError) as exc:
        print(f"crossview_ros.sim.cameras: error: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(c.name for c in rig_cameras(args.rig, 2.0))
    print(f"wrote {out} with the views of {args.rig} ({names}); read it with --cameras {out / 'cameras.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
