"""Street-level equirectangular panoramas ray-cast from the 2.5-D scene.

The panorama is the ground half of the training pair, and the node reads real panoramas with
the same conventions, so they are fixed here and tested to the pixel:

- width = 2 * height; column c (pixel centre c + 0.5) looks at azimuth (c + 0.5) / W * 360 deg
  CLOCKWISE from the camera's forward direction seen from above, i.e. along ENU angle
  yaw_enu - 2*pi*(c + 0.5)/W. Column 0 is (just right of) forward.
- row r (pixel centre r + 0.5) has elevation 90 deg - (r + 0.5) / H * 180 deg; the boundary
  between rows H/2 - 1 and H/2 is the horizon at zero pitch and roll.
- ENU yaw in radians, 0 = east, counter-clockwise. The scene lives on the UTM grid, so the yaw
  is turned into grid yaw with geo.yaw_enu_to_utm (grid convergence, up to ~3 deg at the edge of
  a zone); Sun.azimuth_deg is taken as a bearing on the scene's grid.
- VIGOR panoramas have north in the middle column: render them with forward = south.
- Camera attitude (CameraConfig) follows REP-103 with body axes x forward, y left, z up:
  body -> level = Ry(pitch) @ Rx(roll). pitch_rad > 0 tilts the forward axis down, so the
  horizon moves UP in the image at column 0 by pitch_rad / pi * H rows; roll_rad > 0 lowers
  the right side, so the horizon moves up at column W/4 (the right) by roll_rad / pi * H rows.

How (a heightfield "voxel space" renderer, numba, one thread per column): each column marches
outward along its ray over the height raster with steps of one pixel's footprint (never finer
than half a cell), keeping the lowest row still unfilled. Each sample fills the rows between
that row and the elevation angle of its top: ground and roofs seen from above take the albedo
where each row's ray meets that surface's plane (the orthophoto's texture; bilinear where a
pixel is smaller than a cell); a rising edge is refined cell by cell (DDA) to the exact wall
face, whose rows get the building's façade colour and window grid (rows by floor_height_m,
columns by window_spacing_m along the wall, blank parapet) lit by the sun through the wall
normal. Wall normals snap to each building's own four wall directions (estimated once per scene
from its footprint), so windows stay regular on walls that are not aligned with the raster.
Tree cells are a floating canopy (textured green, bottom at 40 % of the top, at most 2.5 m)
with a trunk at the crown's highest cell and shaded ground below; cars show their albedo with
dark tyres and windows. Rows still empty after max_range_m show the ground plane to the horizon
(albedo inside the scene, the scene's mean ground colour beyond), rows above the horizon the sky
(gradient plus sun disc and glow). Occluders are vertical cylinders intersected analytically
per ray and z-tested against the scene. Haze blends every surface towards the horizon colour
with distance. A non-level camera renders the level panorama first and resamples it (bilinear)
through the attitude rotation.

Not modelled: cast shadows on the ground (the orthophoto has them; the street view gets sun on
façades only), reflections, overhangs (2.5-D).

Modules: render_kernel (the ray march), render_shading (surfaces, façades, sky; numba),
render_walls (each building's wall directions), render_attitude (pitch and roll).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crossview_ros import geo
from crossview_ros.config import check_known_keys
from crossview_ros.sim.render_attitude import apply_attitude
from crossview_ros.sim.render_kernel import render_level
from crossview_ros.sim.render_walls import building_wall_axes
from crossview_ros.sim.scene import Scene, Sun

log = logging.getLogger(__name__)


@dataclass
class CameraConfig:
    """The street camera and how far it sees; defaults suit a person-height 360 camera."""

    height_m: float = 2.0  # optical centre above the ground
    pitch_rad: float = 0.0  # REP-103: > 0 tilts the forward axis down (horizon moves up at column 0)
    roll_rad: float = 0.0  # REP-103: > 0 lowers the right side (horizon moves up at column W/4)
    max_range_m: float = 250.0  # rays stop here; the ground plane continues to the horizon
    haze_m: float = 1500.0  # extinction distance of aerial perspective; 0 turns haze off

    @classmethod
    def from_dict(cls, values: dict) -> CameraConfig:
        """Strict: unknown keys raise."""
        check_known_keys(cls, values)
        return cls(**values)


@dataclass(frozen=True)
class Occluder:
    """A vertical cylinder close to the camera (pedestrian, vehicle) that the scene lacks."""

    e_m: float  # UTM easting of the axis
    n_m: float  # UTM northing of the axis
    radius_m: float
    height_m: float  # top above the ground
    rgb: tuple[int, int, int]


def render_panorama(
    scene: Scene,
    easting_m: float,
    northing_m: float,
    yaw_enu_rad: float,
    *,
    height_px: int = 320,
    camera: CameraConfig | None = None,
    sun: Sun | None = None,
    occluders: Sequence[Occluder] = (),
) -> np.ndarray:
    """Equirectangular RGB panorama (height_px, 2*height_px, 3) uint8 from a UTM position.

    yaw_enu_rad is the camera's forward direction (ENU, 0 = east, CCW); sun=None renders an
    overcast day (ambient light only, grey sky, no glow). See the module docstring for the
    pixel conventions.
    """
    image, _ = render_panorama_with_range(
        scene, easting_m, northing_m, yaw_enu_rad, height_px=height_px, camera=camera, sun=sun, occluders=occluders
    )
    return image


def compile_renderer(scene: Scene) -> float:
    """Render one 4 x 8 panorama (tilted camera, sun, an occluder) so that numba compiles every kernel,
    or loads it from its cache, now: called before a progress bar starts, since on a fresh install the
    first panorama takes ~15 s and the bar's first ETA would read hours. Returns the seconds it took."""
    started = time.monotonic()
    rows, cols = scene.shape
    e = scene.origin_e_m + 0.5 * cols * scene.gsd_m
    n = scene.origin_n_m - 0.5 * rows * scene.gsd_m
    render_panorama(scene, e, n, 0.0, height_px=4, camera=CameraConfig(pitch_rad=0.01, roll_rad=0.01),
                    sun=Sun(180.0, 45.0), occluders=(Occluder(e + 1.0, n, 0.3, 1.7, (90, 90, 90)),))
    took_s = time.monotonic() - started
    if took_s > 5.0:  # compiled, not loaded from the cache
        log.info("compiled the panorama renderer in %.0f s (numba, once per install)", took_s)
    return took_s


def render_panorama_with_range(
    scene: Scene,
    easting_m: float,
    northing_m: float,
    yaw_enu_rad: float,
    *,
    height_px: int = 320,
    camera: CameraConfig | None = None,
    sun: Sun | None = None,
    occluders: Sequence[Occluder] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Like render_panorama, plus the horizontal distance (H, W) float32 in metres of what each
    pixel shows (inf for sky; the ground plane beyond max_range_m included)."""
    camera = camera or CameraConfig()
    h = int(height_px)
    _check_request(scene, easting_m, northing_m, yaw_enu_rad, height_px, camera)
    lat_deg, lon_deg = geo.utm_to_latlon(easting_m, northing_m, scene.zone)
    yaw_grid_rad = float(geo.yaw_enu_to_utm(yaw_enu_rad, lat_deg, lon_deg, scene.zone))

    height = np.ascontiguousarray(scene.height_m, dtype=np.float32)
    material = np.ascontiguousarray(scene.material, dtype=np.uint8)
    albedo = np.ascontiguousarray(scene.albedo, dtype=np.uint8)
    building_id = np.ascontiguousarray(scene.building_id, dtype=np.int32)
    facade, window, floor_h, spacing, b_height, b_axis = _building_arrays(scene)

    if sun is None:
        sun_enu = np.zeros(3)
        sunny = False
    else:
        if not 0.0 < sun.elevation_deg <= 90.0:
            raise ValueError(f"sun elevation_deg must be in (0, 90], got {sun.elevation_deg}")
        sun_enu = sun.direction_enu()
        sunny = True
    for o in occluders:
        if not (o.radius_m > 0.0 and o.height_m > 0.0):
            raise ValueError(f"occluder radius_m and height_m must be > 0, got {o}")
    occ = np.array(
        [(o.e_m - scene.origin_e_m, o.n_m - scene.origin_n_m, o.radius_m, o.height_m, *o.rgb) for o in occluders],
        dtype=np.float64,
    ).reshape(-1, 7)

    w = 2 * h
    image = np.empty((h, w, 3), np.uint8)
    range_m = np.empty((h, w), np.float32)
    render_level(
        height, material, albedo, building_id, facade, window, floor_h, spacing, b_height, b_axis,
        float(easting_m - scene.origin_e_m), float(scene.origin_n_m - northing_m), float(camera.height_m),
        yaw_grid_rad, float(scene.gsd_m), float(camera.max_range_m), float(camera.haze_m),
        sun_enu.astype(np.float64), sunny, _mean_ground_rgb(scene), occ, image, range_m,
    )  # fmt: skip
    if camera.pitch_rad != 0.0 or camera.roll_rad != 0.0:
        image, range_m = apply_attitude(image, range_m, camera.pitch_rad, camera.roll_rad)
    return image, range_m


def _check_request(scene: Scene, easting_m: float, northing_m: float, yaw_enu_rad: float, height_px: int,
                   camera: CameraConfig) -> None:
    """Raise ValueError naming the first bad size, camera setting or pose (outside the scene)."""
    h = int(height_px)
    if h < 4 or h % 2:
        raise ValueError(f"height_px must be an even number >= 4, got {height_px}")
    if not camera.height_m > 0.0:
        raise ValueError(f"camera height_m must be > 0 (above the ground), got {camera.height_m}")
    if not camera.max_range_m > 0.0:
        raise ValueError(f"max_range_m must be > 0, got {camera.max_range_m}")
    if not camera.haze_m >= 0.0:
        raise ValueError(f"haze_m must be >= 0 (0 = no haze), got {camera.haze_m}")
    if not (math.isfinite(easting_m) and math.isfinite(northing_m) and math.isfinite(yaw_enu_rad)):
        raise ValueError(f"camera pose must be finite, got E={easting_m} N={northing_m} yaw={yaw_enu_rad}")
    if not bool(scene.contains(easting_m, northing_m)):
        rows, cols = scene.shape
        raise ValueError(
            f"camera at E={easting_m:.2f} N={northing_m:.2f} is outside the scene "
            f"(E {scene.origin_e_m:.2f}..{scene.origin_e_m + cols * scene.gsd_m:.2f}, "
            f"N {scene.origin_n_m - rows * scene.gsd_m:.2f}..{scene.origin_n_m:.2f}); pick a pose inside the city"
        )


def _building_arrays(scene: Scene) -> tuple[np.ndarray, ...]:
    """The building table as the kernel's contiguous float32 arrays (placeholders when empty):
    façade and window colours, floor height, window spacing, height, wall direction."""
    b = scene.buildings
    if len(b) > 0:
        facade = np.ascontiguousarray(b.facade_rgb, dtype=np.float32)
        window = np.ascontiguousarray(b.window_rgb, dtype=np.float32)
        floor_h = np.ascontiguousarray(b.floor_height_m, dtype=np.float32)
        spacing = np.ascontiguousarray(b.window_spacing_m, dtype=np.float32)
        b_height = np.ascontiguousarray(b.height_m, dtype=np.float32)
        b_axis = building_wall_axes(scene)
    else:
        facade = window = np.zeros((1, 3), np.float32)
        floor_h = spacing = b_height = b_axis = np.zeros(1, np.float32)
    return facade, window, floor_h, spacing, b_height, b_axis


def _mean_ground_rgb(scene: Scene) -> np.ndarray:
    """Mean albedo of flat cells from a sparse subsample: the ground colour beyond the scene."""
    step = max(1, int(min(scene.shape) // 64))
    alb = scene.albedo[::step, ::step].reshape(-1, 3)
    flat = (scene.height_m[::step, ::step] <= 0.0).reshape(-1)
    pick = alb[flat] if np.any(flat) else alb
    return pick.astype(np.float64).mean(axis=0)
