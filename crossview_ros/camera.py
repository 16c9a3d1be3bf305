"""Cameras that are not 360°: CameraInfo models, their mounts, and a rig's view as the model's panorama.

A top-down model only needs the ground around the robot. Any central camera that sees part of it
can be resampled into the equirectangular panorama the model was trained on, with a visibility
mask for what no camera sees; the bev matcher then correlates only the visible ground
(crossview_ros.matchers.bev_view). So one trained model serves a panorama, a forward camera and
a surround rig.

Conventions:
- CameraModel follows sensor_msgs/CameraInfo: K's fx, fy, cx, cy in pixels (pixel centres at
  integer coordinates, as OpenCV), distortion_model "plumb_bob" (k1 k2 p1 p2 k3),
  "rational_polynomial" (k1 k2 p1 p2 k3 k4 k5 k6), "equidistant" (the fisheye model of OpenCV
  and ROS: theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)), or "" / "none"
  with no distortion. Rays are in the optical frame: z forward, x right, y down.
- CameraMount follows REP-103 in base_link (x forward, y left, z up): the optical centre at
  (x_m, y_m, height_m above the ground), yaw_deg counter-clockwise from forward, pitch_deg > 0
  looking down, roll_deg > 0 turning the image clockwise as seen from behind.
- The panorama (crossview_ros.sim.render's convention): column c looks at azimuth (c + 0.5) / W x
  360° clockwise from base_link's forward, row r at elevation 90° - (r + 0.5) / H x 180°.

Below the horizon a panorama pixel stands for a point on flat ground, at the distance the model's
own camera height (model.json camera_height_m) gives its depression; each real camera is asked
for that ground point from where it is mounted. So a camera at another height or off the robot's
centre still lands its ground where the model expects it. Above the horizon only the direction
is kept.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossview_ros.config import check_known_keys

DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4, "": 0, "none": 0}
MAX_FISHEYE_THETA_RAD = math.radians(110.0)  # the widest half-angle an equidistant model is trusted to
HORIZON_DISTANCE_M = 1000.0  # ground points of rows nearer the horizon than this are taken as directions
_R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # optical axes in body


class CameraError(ValueError):
    """A CameraInfo, mount or image the localizer cannot use; the message says what is wrong."""


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of one camera as sensor_msgs/CameraInfo states them (module docstring)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = ""
    d: tuple[float, ...] = ()
    _theta_max: float = field(default=math.pi / 2, compare=False, repr=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise CameraError(problem)
        object.__setattr__(self, "d", tuple(float(v) for v in self.d))
        object.__setattr__(self, "_theta_max", self._monotonic_limit())

    def _problem(self) -> str | None:
        model = str(self.distortion_model).lower()
        if not (isinstance(self.width, (int, np.integer)) and isinstance(self.height, (int, np.integer))
                and self.width > 0 and self.height > 0):
            return f"CameraInfo width and height must be > 0 pixels, got {self.width} x {self.height}"
        k = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(float(v)) for v in k):
            return f"CameraInfo K must be finite, got fx {self.fx} fy {self.fy} cx {self.cx} cy {self.cy}"
        if self.fx <= 0 or self.fy <= 0:
            return (f"CameraInfo focal length must be > 0 (K[0] fx {self.fx:g}, K[4] fy {self.fy:g}); an "
                    "uncalibrated camera publishes zeros: calibrate it (camera_calibration)")
        if model not in DISTORTION_MODELS:
            return (f"CameraInfo distortion_model {self.distortion_model!r} is not supported; use one of "
                    f"{sorted(m for m in DISTORTION_MODELS if m)}")
        need = DISTORTION_MODELS[model]
        d = tuple(self.d)
        if not all(math.isfinite(float(v)) for v in d):
            return f"CameraInfo D must be finite, got {list(d)}"
        if model not in ("", "none") and len(d) != need:
            return f"CameraInfo distortion_model {model} takes {need} D coefficients, got {len(d)}"
        if model in ("", "none") and any(d):
            return f"CameraInfo D has non-zero coefficients {list(d)} but no distortion_model"
        return None

    @property
    def kind(self) -> str:
        m = str(self.distortion_model).lower()
        return "fisheye" if m == "equidistant" else "pinhole"

    @classmethod
    def from_camera_info(cls, info: Any) -> CameraModel:
        """From a sensor_msgs/CameraInfo (or anything with width, height, k, d, distortion_model);
        CameraError saying what is wrong (zero focal length, unknown model, bad coefficients)."""
        try:
            k = [float(v) for v in info.k]
            d = tuple(float(v) for v in info.d)
            width, height, model = int(info.width), int(info.height), str(info.distortion_model)
        except (AttributeError, TypeError, ValueError) as exc:
            raise CameraError(f"not a CameraInfo: {exc}") from None
        if len(k) != 9:
            raise CameraError(f"CameraInfo K must have 9 values, got {len(k)}")
        if k[1] != 0.0:
            raise CameraError(f"CameraInfo K has a skew K[1] = {k[1]:g}; skewed pixels are not supported")
        return cls(width, height, k[0], k[4], k[2], k[5], model, d)

    @classmethod
    def pinhole(cls, width: int, height: int, hfov_deg: float) -> CameraModel:
        """An ideal pinhole camera of the given horizontal field of view, square pixels, centred."""
        f = width / 2 / math.tan(math.radians(hfov_deg) / 2)
        return cls(int(width), int(height), f, f, (width - 1) / 2, (height - 1) / 2, "plumb_bob", (0.0,) * 5)

    @classmethod
    def fisheye(cls, width: int, height: int, fov_deg: float, d: Sequence[float] = (0.0, 0.0, 0.0, 0.0)
                ) -> CameraModel:
        """An equidistant fisheye whose image circle of `fov_deg` fits the shorter image side."""
        f = min(width, height) / 2 / math.radians(fov_deg / 2)
        return cls(int(width), int(height), f, f, (width - 1) / 2, (height - 1) / 2, "equidistant", tuple(d))

    def camera_info_fields(self) -> dict[str, Any]:
        """width, height, distortion_model, d, k, r, p as sensor_msgs/CameraInfo holds them."""
        k = [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]
        return {"width": self.width, "height": self.height, "distortion_model": self.distortion_model or "plumb_bob",
                "d": list(self.d) if self.distortion_model else [0.0] * 5, "k": k,
                "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                "p": [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]}

    def check_image(self, width: int, height: int) -> None:
        """CameraError when an image's size is not the CameraInfo's (binning and ROI are not applied)."""
        if (int(width), int(height)) != (self.width, self.height):
            raise CameraError(f"image is {width} x {height} px but its CameraInfo says {self.width} x {self.height} "
                              "px; publish the CameraInfo of the image's resolution")

    # ---------------------------------------------------------------- geometry

    def _radial(self, r2: np.ndarray) -> np.ndarray:
        d = self.d + (0.0,) * 8
        if self.distortion_model == "rational_polynomial":
            return (1 + d[0] * r2 + d[1] * r2 ** 2 + d[4] * r2 ** 3) / (1 + d[5] * r2 + d[6] * r2 ** 2 + d[7] * r2 ** 3)
        return 1 + d[0] * r2 + d[1] * r2 ** 2 + d[4] * r2 ** 3

    def _distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (x, y) on the z = 1 plane (pinhole) or theta-scaled (fisheye) -> distorted."""
        if self.distortion_model == "equidistant":
            return x, y  # fisheye distortion acts on theta (_theta_d)
        if not self.distortion_model or self.distortion_model == "none":
            return x, y
        r2 = x * x + y * y
        radial = self._radial(r2)
        p1, p2 = self.d[2], self.d[3]
        return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)

    def _theta_d(self, theta: np.ndarray) -> np.ndarray:
        k1, k2, k3, k4 = (self.d + (0.0,) * 4)[:4]
        t2 = theta * theta
        return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))

    def _monotonic_limit(self) -> float:
        """Largest ray angle from the axis where the model still maps farther rays farther out: beyond
        it a polynomial folds back and would put a ray behind the camera into the image."""
        if self.distortion_model == "equidistant":
            theta = np.linspace(0.0, MAX_FISHEYE_THETA_RAD, 2000)
            radius = self._theta_d(theta)
        else:
            theta = np.linspace(0.0, math.radians(89.0), 2000)
            r = np.tan(theta)
            radius = r * self._radial(r * r) if self.distortion_model not in ("", "none") else r
        bad = np.flatnonzero(np.diff(radius) <= 0)
        return float(theta[bad[0]] if len(bad) else theta[-1])

    def project(self, rays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) rays in the optical frame -> (N, 2) pixel (u, v) and (N,) whether the camera sees them
        (inside the image, in front of a pinhole, within the model's trusted angle)."""
        rays = np.asarray(rays, np.float64)
        x, y, z = rays[:, 0], rays[:, 1], rays[:, 2]
        norm = np.linalg.norm(rays, axis=1)
        theta = np.arccos(np.clip(z / np.maximum(norm, 1e-12), -1.0, 1.0))
        ok = theta < self._theta_max
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.distortion_model == "equidistant":
                rho = np.hypot(x, y)
                scale = np.where(rho > 1e-12, self._theta_d(theta) / np.maximum(rho, 1e-12), 0.0)
                xd, yd = x * scale, y * scale
            else:
                ok &= z > 1e-9
                zs = np.where(ok, z, 1.0)
                xd, yd = self._distort(x / zs, y / zs)
        u = self.fx * xd + self.cx
        v = self.fy * yd + self.cy
        ok &= (u >= -0.5) & (u <= self.width - 0.5) & (v >= -0.5) & (v <= self.height - 0.5)
        ok &= np.isfinite(u) & np.isfinite(v)
        return np.stack([np.where(ok, u, -1.0), np.where(ok, v, -1.0)], axis=1), ok

    def unproject(self, uv: np.ndarray, iterations: int = 20) -> np.ndarray:
        """(N, 2) pixels -> (N, 3) unit rays in the optical frame (distortion inverted by fixed-point
        iteration, as OpenCV's undistortPoints; the simulator renders views with it)."""
        uv = np.asarray(uv, np.float64)
        xd = (uv[:, 0] - self.cx) / self.fx
        yd = (uv[:, 1] - self.cy) / self.fy
        if self.distortion_model == "equidistant":
            theta_d = np.hypot(xd, yd)
            theta = theta_d.copy()
            for _ in range(iterations):  # Newton on theta_d(theta) = theta_d
                f = self._theta_d(theta) - theta_d
                h = 1e-6
                df = (self._theta_d(theta + h) - self._theta_d(theta - h)) / (2 * h)
                theta = theta - f / np.where(np.abs(df) > 1e-9, df, 1.0)
            scale = np.where(theta_d > 1e-12, np.sin(theta) / np.maximum(theta_d, 1e-12), 1.0)
            rays = np.stack([xd * scale, yd * scale, np.cos(theta)], axis=1)
        else:
            x, y = xd.copy(), yd.copy()
            if self.distortion_model not in ("", "none"):
                for _ in range(iterations):
                    dx, dy = self._distort(x, y)
                    x, y = x + (xd - dx), y + (yd - dy)
            rays = np.stack([x, y, np.ones_like(x)], axis=1)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)


@dataclass(frozen=True)
class CameraMount:
    """Where a camera sits on the robot (base_link, REP-103; module docstring)."""

    height_m: float = 2.0  # optical centre above the ground
    x_m: float = 0.0  # forward of base_link's origin
    y_m: float = 0.0  # left of base_link's origin
    yaw_deg: float = 0.0  # counter-clockwise from forward: a left camera is 90
    pitch_deg: float = 0.0  # > 0 looks down
    roll_deg: float = 0.0

    def __post_init__(self) -> None:
        values = (self.height_m, self.x_m, self.y_m, self.yaw_deg, self.pitch_deg, self.roll_deg)
        if not all(math.isfinite(float(v)) for v in values):
            raise CameraError(f"camera mount must be finite, got {self}")
        if self.height_m <= 0:
            raise CameraError(f"camera height_m must be > 0 above the ground, got {self.height_m:g}")
        if abs(self.pitch_deg) > 90:
            raise CameraError(f"camera pitch_deg must be within [-90, 90], got {self.pitch_deg:g}")

    def base_from_optical(self) -> np.ndarray:
        """(3, 3) rotation taking optical-frame rays into base_link."""
        y, p, r = (math.radians(v) for v in (self.yaw_deg, self.pitch_deg, self.roll_deg))
        rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
        ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
        rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
        return rz @ ry @ rx @ _R_BODY_OPTICAL


CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # a camera's name: a topic token and a parameter prefix
MOUNT_KEYS = ("height_m", "x_m", "y_m", "yaw_deg", "pitch_deg", "roll_deg")


def check_camera_name(name: str) -> None:
    """CameraError unless `name` can name a camera's topics and the node's parameters (CAMERA_NAME)."""
    if not CAMERA_NAME.match(name):
        raise CameraError(f"a camera name must start with a letter and hold only letters, digits and _ (it names "
                          f"the camera's topics and the node's parameters), got {name!r}")


def mounts_from_dict(values: Mapping[str, Mapping[str, Any]]) -> dict[str, CameraMount]:
    """{camera name: {height_m, x_m, y_m, yaw_deg, pitch_deg, roll_deg}} (a rig file's `cameras`, the
    node's per-camera parameters) -> mounts in the given order; CameraError naming a bad key or value."""
    if not isinstance(values, Mapping) or not values:
        raise CameraError("cameras must map each camera name to its mount {height_m, pitch_deg, yaw_deg, ...}")
    out = {}
    for name, mount in values.items():
        if not isinstance(mount, Mapping):
            raise CameraError(f"camera {name}: its mount must be a mapping of {list(MOUNT_KEYS)}, got {mount!r}")
        check_known_keys(CameraMount, mount, error=CameraError, what=f"camera {name} mount")
        try:
            out[str(name)] = CameraMount(**{k: float(v) for k, v in mount.items()})
        except (TypeError, ValueError) as exc:
            raise CameraError(f"camera {name}: {exc}") from None
    return out


@dataclass(frozen=True)
class Camera:
    """One camera of a rig: its name (topics, logs), intrinsics and mount."""

    name: str
    model: CameraModel
    mount: CameraMount


def _row_elevation(h: int) -> np.ndarray:
    """(h,) elevation of each equirectangular panorama row's centre, rad (+pi/2 at the top)."""
    return math.pi / 2 - (np.arange(h) + 0.5) / h * math.pi


def _ground_distance(elevation: np.ndarray, height_m: float) -> np.ndarray:
    """Horizontal distance of the flat-ground point seen at each elevation from height_m (inf at or above
    the horizon)."""
    with np.errstate(divide="ignore"):
        return np.where(elevation < 0, height_m / np.tan(-elevation), np.inf)


def panorama_rays(size_hw: tuple[int, int], model_height_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Per panorama pixel, (H, W, 3) the point it stands for in base_link (ground points below the
    horizon at the model's camera height; unit directions above) and (H, W) whether it is a point."""
    h, w = size_hw
    azimuth = (np.arange(w) + 0.5) / w * 2 * math.pi  # clockwise from forward
    el, az = np.meshgrid(_row_elevation(h), azimuth, indexing="ij")
    direction = np.stack([np.cos(el) * np.cos(az), -np.cos(el) * np.sin(az), np.sin(el)], axis=-1)
    dist = _ground_distance(el, model_height_m)
    ground = dist < HORIZON_DISTANCE_M
    point = np.stack([dist * np.cos(az), -dist * np.sin(az), np.zeros_like(dist)], axis=-1)
    return np.where(ground[..., None], point, direction), ground


def panorama_height_rows(size_hw: tuple[int, int], camera_height_m: float, model_height_m: float) -> np.ndarray:
    """(H,) float32 source row, in a panorama of size_hw taken camera_height_m above flat ground, of each row
    of the same panorama seen from model_height_m: below the horizon the row of the same ground point,
    above it the same row. A 360° camera at another height than the model's then lands its ground where
    the model expects it (azimuths do not change, so only rows move)."""
    h = size_hw[0]
    elevation = _row_elevation(h)
    dist = _ground_distance(elevation, model_height_m)
    source = np.where(dist < HORIZON_DISTANCE_M, -np.arctan(camera_height_m / np.minimum(dist, HORIZON_DISTANCE_M)),
                      elevation)
    return ((math.pi / 2 - source) / math.pi * h - 0.5).astype(np.float32)


def reproject_panorama_height(panorama: np.ndarray, camera_height_m: float, model_height_m: float) -> np.ndarray:
    """An (H, W, 3) panorama taken camera_height_m high, as seen from model_height_m (panorama_height_rows)."""
    import cv2

    h, w = panorama.shape[:2]
    rows = panorama_height_rows((h, w), camera_height_m, model_height_m)
    map_y = np.repeat(rows[:, None], w, axis=1)
    map_x = np.repeat(np.arange(w, dtype=np.float32)[None], h, axis=0)
    return cv2.remap(panorama, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class CameraRig:
    """One or more cameras -> the model's panorama of what they see, and its visibility.

    The remap is computed once per rig (cameras and panorama size); compose() then costs one
    cv2.remap per camera. Where cameras overlap, the one that sees the point nearest its optical
    axis gives the pixel.
    """

    def __init__(self, cameras: Sequence[Camera], size_hw: tuple[int, int], model_height_m: float) -> None:
        if not cameras:
            raise CameraError("a camera rig needs at least one camera")
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise CameraError(f"camera names must differ, got {names}")
        self.cameras = tuple(cameras)
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        points, is_point = panorama_rays(self.size_hw, model_height_m)
        flat_pts, flat_is_point = points.reshape(-1, 3), is_point.reshape(-1)
        best = np.full(len(flat_pts), -np.inf)
        owner = np.full(len(flat_pts), -1, np.int32)
        uvs = []
        for i, cam in enumerate(self.cameras):
            centre = np.array([cam.mount.x_m, cam.mount.y_m, cam.mount.height_m])
            rays = np.where(flat_is_point[:, None], flat_pts - centre, flat_pts)
            rays_optical = rays @ cam.mount.base_from_optical()  # R^T r for each row
            uv, ok = cam.model.project(rays_optical)
            cos_axis = rays_optical[:, 2] / np.maximum(np.linalg.norm(rays_optical, axis=1), 1e-12)
            take = ok & (cos_axis > best)
            best = np.where(take, cos_axis, best)
            owner = np.where(take, i, owner)
            uvs.append(uv)
        h, w = self.size_hw
        self._maps = []
        for i, uv in enumerate(uvs):
            mine = owner == i
            map_x = np.where(mine, uv[:, 0], -1.0).reshape(h, w).astype(np.float32)
            map_y = np.where(mine, uv[:, 1], -1.0).reshape(h, w).astype(np.float32)
            self._maps.append((map_x, map_y, mine.reshape(h, w)))
        self.visibility = (owner >= 0).reshape(h, w)
        self.owner = owner.reshape(h, w)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def compose(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images (H_i, W_i, 3) uint8 in the rig's camera order -> (H, W, 3) uint8 panorama, black
        where no camera sees (see `visibility`); CameraError when an image's size is not its CameraInfo's."""
        import cv2

        if len(images) != len(self.cameras):
            raise CameraError(f"the rig has {len(self.cameras)} cameras ({', '.join(self.names)}) but "
                              f"{len(images)} images came")
        out = np.zeros((*self.size_hw, 3), np.uint8)
        for cam, image, (map_x, map_y, mine) in zip(self.cameras, images, self._maps):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise CameraError(f"camera {cam.name}: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
            cam.model.check_image(image.shape[1], image.shape[0])
            view = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            out[mine] = view[mine]
        return out


@dataclass(frozen=True)
class CameraFrame:
    """One capture of a rig for Localizer.localize: the images in the rig's camera order, each as a
    message carries it (a uint8 array with its encoding, or JPEG/PNG bytes with None)."""

    rig: CameraRig
    images: tuple[Any, ...]
    encodings: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.encodings):
            raise CameraError(f"{len(self.images)} images but {len(self.encodings)} encodings")


def field_of_view_deg(camera: Camera) -> float:
    """Horizontal field of view of a camera's image (across its middle row), degrees."""
    m = camera.model
    left, right = m.unproject(np.array([[-0.5, m.cy], [m.width - 0.5, m.cy]]))
    return math.degrees(sum(math.atan2(abs(float(r[0])), float(r[2])) for r in (left, right)))
