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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from crossview_ros.camera import Camera, CameraModel, CameraMount

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
        import cv2

        if panorama.shape[:2] != self.pano_hw:
            raise ValueError(f"panorama is {panorama.shape[:2]}, the renderer was built for {self.pano_hw}")
        padded = np.concatenate([panorama[:, -1:], panorama, panorama[:, :1]], axis=1)
        views = []
        for map_x, map_y, ok in self._maps:
            view = cv2.remap(padded, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            view[~ok] = 0
            views.append(view)
        return views
