"""Drives through the synthetic city: ground-truth trajectories and wheel odometry.

A drive is a walk (on the sidewalk) or a car ride (in a lane) along the street network. It gives
the ground-truth pose at every panorama stamp, a dense track that GNSS and odometry sample at
their own rates, and wheel odometry that drifts the way real odometry does, so that the node is
exercised on the same kind of motion it meets on a robot.

Conventions (the node depends on them):

- positions are UTM easting/northing in the drive's zone; `lat_deg`/`lon_deg` come from crossview_ros.geo;
- ENU yaw in radians, 0 = east, counter-clockwise, wrapped to (-pi, pi]. The path tangent is a
  UTM grid direction; it is turned into an ENU yaw with geo.yaw_utm_to_enu (grid convergence, up
  to ~3 deg at zone edges, is not ignored);
- stamps are Unix seconds (float64; 1.7e9 s keeps ~0.24 us resolution);
- the odometry frame `odom` is the first pose of the drive: odometry starts at x = y = yaw = 0,
  x forward, y left (REP-105 odom -> base_link).

How the path is made: a random route over the graph (at every intersection a random onward
street, never straight back unless it is a dead end; sharp turns are rarer than gentle ones);
each street is offset to the traffic side (sidewalk centre for walks, a lane centre for cars);
consecutive offset lines meet at their intersection on the inside of a turn and by an arc
around the intersection on the outside (a U-turn at a dead end is a half circle around it);
the polyline is then smoothed with a Gaussian of a few metres so heading and curvature are
continuous. Speed follows a slowly wandering cruise speed, capped by lateral acceleration and
yaw rate in curves (this is what rate-limits the yaw at corners), by a lower speed at
intersections for cars, and by acceleration and braking limits; the drive starts at rest.

Staying inside the scene: a city's street graph is cut exactly at the city edge (its
`bounds_en`), so streets leaving the city end there in dead-end nodes, and a sidewalk or lane
offset from such a street, or the U-turn around its end, lies outside the rendered area. Before
routing, every street is therefore clipped to the bounds shrunk by its own lateral offset plus
DriveConfig.edge_margin_m (and the largest connected piece is kept); a route that reaches a
clipped end turns back there. Offset lines, the corner joins (crossings of offset lines, or arcs
of radius <= the larger offset around a node) and the Gaussian smoothing (a convex average)
then all stay inside that shrunk box, so every pose is at least edge_margin_m inside the scene.

Modules: drive_route (route and path over the street graph), odometry (wheel odometry along a
drive).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.spatial import cKDTree

from crossview_ros.config import check_known_keys
from crossview_ros.geo import UTMZone, utm_to_latlon, yaw_utm_to_enu
from crossview_ros.sim.drive_route import (
    StreetGraphLike,
    check_streets,
    fit_to_bounds,
    graph_bounds,
    offset_polyline,
    offsets_m,
    random_route,
    resample,
)

__all__ = ["MODES", "MOTION_PRESETS", "Drive", "DriveConfig", "MotionLimits", "StreetGraphLike", "Track", "plan_drive"]

MODES = ("walk", "drive")


@dataclass(frozen=True)
class MotionLimits:
    """Kinematics of one way of moving; presets in MOTION_PRESETS."""

    speed_range_mps: tuple[float, float]  # cruise speed drawn uniformly from here when not given
    accel_mps2: float  # largest speed-up
    decel_mps2: float  # hardest braking
    lateral_accel_mps2: float  # v^2 * curvature never exceeds this in curves
    yaw_rate_radps: float  # v * curvature never exceeds this: the yaw-rate limit at corners
    intersection_speed_mps: float | None  # speed cap near intersections (degree >= 3); None = none
    intersection_zone_m: float  # the cap applies within this distance of an intersection node
    smooth_sigma_m: float  # Gaussian smoothing of the offset polyline (corner rounding)
    step_m: float  # arc-length spacing of the dense track


MOTION_PRESETS: dict[str, MotionLimits] = {
    # people walk at 1.0-1.6 m/s and turn sharply on the spot, so little smoothing
    "walk": MotionLimits((1.0, 1.6), 0.5, 0.8, 1.0, 1.5, None, 0.0, 0.6, 0.05),
    # urban driving 5-12 m/s, comfortable accelerations, slower through intersections
    "drive": MotionLimits((5.0, 12.0), 1.5, 2.5, 2.0, 0.8, 6.0, 12.0, 3.0, 0.1),
}


@dataclass
class DriveConfig:
    """One drive; unknown keys in from_dict raise."""

    mode: str = "walk"  # "walk" (sidewalk centre) | "drive" (lane centre)
    speed_mps: float | None = None  # cruise speed; None draws one from the mode's speed range
    rate_hz: float = 2.0  # panorama / ground-truth pose rate, 1-10 Hz
    duration_s: float = 60.0  # length of the drive
    seed: int = 0  # route, start point, cruise speed and its wander
    start_time_s: float = 1_700_000_000.0  # Unix stamp of the first panorama
    traffic_side: str = "right"  # "right" (most of the world) | "left" (UK, Japan, ...)
    lane_index: int = 0  # cars: lane counted from the centre line, clipped to the street's lanes
    speed_variation: float = 0.08  # relative std of the slow wander of the cruise speed (0 = off)
    speed_correlation_m: float = 50.0  # distance over which the cruise speed wanders
    edge_margin_m: float = 2.0  # poses stay this far inside the street graph's bounds_en, metres
    limits: MotionLimits | None = None  # None = MOTION_PRESETS[mode]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"DriveConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.traffic_side not in ("right", "left"):
            raise ValueError(
                f"DriveConfig.traffic_side must be 'right' or 'left', got {self.traffic_side!r}"
            )
        if not (0.0 < self.rate_hz <= 100.0):
            raise ValueError(f"DriveConfig.rate_hz must be in (0, 100], got {self.rate_hz}")
        if not self.duration_s > 0.0:
            raise ValueError(f"DriveConfig.duration_s must be positive, got {self.duration_s}")
        if self.speed_mps is not None and not self.speed_mps > 0.0:
            raise ValueError(
                f"DriveConfig.speed_mps must be positive or None, got {self.speed_mps}"
            )
        if self.speed_variation < 0.0 or self.speed_correlation_m <= 0.0:
            raise ValueError("DriveConfig.speed_variation must be >= 0 and speed_correlation_m > 0")
        if self.lane_index < 0:
            raise ValueError(f"DriveConfig.lane_index must be >= 0, got {self.lane_index}")
        if not (self.edge_margin_m >= 0.0 and math.isfinite(self.edge_margin_m)):
            raise ValueError(f"DriveConfig.edge_margin_m must be >= 0, got {self.edge_margin_m}")

    @property
    def motion(self) -> MotionLimits:
        """The limits in force: `limits`, else the mode's preset."""
        return self.limits if self.limits is not None else MOTION_PRESETS[self.mode]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DriveConfig:
        """Strict: unknown keys raise; `limits` may be a dict of MotionLimits fields."""
        check_known_keys(cls, values)
        values = dict(values)
        if isinstance(values.get("limits"), dict):
            limits = dict(values["limits"])
            limits["speed_range_mps"] = tuple(limits.get("speed_range_mps", ()))
            values["limits"] = MotionLimits(**limits)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """All fields (limits as a dict), as from_dict takes them."""
        return asdict(self)


@dataclass
class Track:
    """The dense trajectory, one row per arc-length step (times strictly increasing)."""

    t_s: np.ndarray  # (T,) Unix seconds
    easting_m: np.ndarray  # (T,)
    northing_m: np.ndarray  # (T,)
    yaw_grid_rad: np.ndarray  # (T,) unwrapped heading against UTM grid axes
    speed_mps: np.ndarray  # (T,)
    yaw_rate_radps: np.ndarray  # (T,) d(yaw)/dt
    distance_m: np.ndarray  # (T,) travelled distance since the drive started


@dataclass
class Drive:
    """Ground truth, one row per panorama; `sample` gives the pose at any other stamp."""

    stamp_s: np.ndarray  # (N,) Unix seconds, spaced 1/rate_hz
    easting_m: np.ndarray  # (N,) UTM, camera position
    northing_m: np.ndarray  # (N,)
    yaw_enu_rad: np.ndarray  # (N,) camera forward = direction of motion, ENU, (-pi, pi]
    speed_mps: np.ndarray  # (N,)
    yaw_rate_radps: np.ndarray  # (N,)
    distance_m: np.ndarray  # (N,) travelled distance since the start
    lat_deg: np.ndarray  # (N,) WGS84 via crossview_ros.geo
    lon_deg: np.ndarray  # (N,)
    zone: UTMZone
    config: DriveConfig
    track: Track = field(repr=False)

    def __len__(self) -> int:
        return int(self.stamp_s.shape[0])

    def sample(self, stamp_s: np.ndarray) -> dict[str, np.ndarray]:
        """Pose at arbitrary stamps inside the drive: easting_m, northing_m, yaw_enu_rad,
        speed_mps, yaw_rate_radps, distance_m, lat_deg, lon_deg (linear interpolation of the
        dense track, whose steps are step_m: 5 cm walking, 10 cm driving)."""
        return _sample_track(self.track, self.zone, stamp_s)


def _sample_track(track: Track, zone: UTMZone, stamp_s: np.ndarray) -> dict[str, np.ndarray]:
    t = np.atleast_1d(np.asarray(stamp_s, dtype=np.float64))
    if t.size and (t.min() < track.t_s[0] - 1e-6 or t.max() > track.t_s[-1] + 1e-6):
        raise ValueError(
            f"stamps {t.min():.3f}..{t.max():.3f} lie outside the drive "
            f"{track.t_s[0]:.3f}..{track.t_s[-1]:.3f}; sample inside it"
        )
    e = np.interp(t, track.t_s, track.easting_m)
    n = np.interp(t, track.t_s, track.northing_m)
    lat, lon = utm_to_latlon(e, n, zone)
    yaw_grid = np.interp(t, track.t_s, track.yaw_grid_rad)
    return {
        "easting_m": e,
        "northing_m": n,
        "yaw_enu_rad": np.asarray(yaw_utm_to_enu(yaw_grid, lat, lon, zone)),
        "speed_mps": np.interp(t, track.t_s, track.speed_mps),
        "yaw_rate_radps": np.interp(t, track.t_s, track.yaw_rate_radps),
        "distance_m": np.interp(t, track.t_s, track.distance_m),
        "lat_deg": np.asarray(lat),
        "lon_deg": np.asarray(lon),
    }

def plan_drive(streets: StreetGraphLike, zone: UTMZone, config: DriveConfig) -> Drive:
    """A seeded random drive along `streets` (UTM in `zone`); same config, same arrays.

    If `streets` has `bounds_en` (a city's StreetGraph does), every pose of the drive lies at
    least config.edge_margin_m inside it (see the module docstring)."""
    nodes, edges = check_streets(streets)
    zone = UTMZone.parse(zone)
    offsets = offsets_m(streets, config.mode, config.lane_index)
    # intersections (for the speed cap) are those of the whole graph, clipped or not
    degree = np.bincount(edges.ravel(), minlength=len(nodes))
    crossings = nodes[degree >= 3]
    bounds = graph_bounds(streets)
    if bounds is not None:
        nodes, edges, source = fit_to_bounds(nodes, edges, offsets, bounds, config.edge_margin_m)
        offsets = offsets[source]
    motion = config.motion
    rng = np.random.default_rng(config.seed)
    lo, hi = motion.speed_range_mps
    cruise = float(config.speed_mps) if config.speed_mps is not None else float(rng.uniform(lo, hi))
    v_top = cruise * (1.0 + 2.0 * config.speed_variation)
    if config.speed_mps is None:
        v_top = min(v_top, hi)
    seg_len = np.linalg.norm(nodes[edges[:, 1]] - nodes[edges[:, 0]], axis=1)
    # Every point of the path is at most v_top fast, so this much route always lasts long enough.
    need_m = (
        v_top * config.duration_s * 1.05
        + 8.0 * motion.smooth_sigma_m
        + 2.0 * float(seg_len.max())
        + 50.0
    )
    route = random_route(nodes, edges, need_m, rng)
    poly, first_len = offset_polyline(offsets, nodes, route, config.traffic_side)
    dense, s = _dense_path(poly, first_len, motion, rng)
    heading = np.unwrap(np.arctan2(np.gradient(dense[:, 1]), np.gradient(dense[:, 0])))
    curvature = np.gradient(heading, motion.step_m)
    v, t = _speed_profile(dense, curvature, cruise, crossings, config, rng)

    last = int(np.searchsorted(t, config.duration_s)) + 2  # keep the track just past the end
    track = Track(
        t_s=config.start_time_s + t[:last],
        easting_m=dense[:last, 0].copy(),
        northing_m=dense[:last, 1].copy(),
        yaw_grid_rad=heading[:last],
        speed_mps=v[:last],
        yaw_rate_radps=(v * curvature)[:last],
        distance_m=s[:last],
    )
    n_stamps = int(math.floor(config.duration_s * config.rate_hz + 1e-9)) + 1
    stamps = config.start_time_s + np.arange(n_stamps) / config.rate_hz
    return Drive(
        stamp_s=stamps, **_sample_track(track, zone, stamps), zone=zone, config=config, track=track
    )


def _dense_path(
    poly: np.ndarray, first_len: float, motion: MotionLimits, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The polyline resampled every step_m and smoothed (corner rounding), starting somewhere
    along its first street (not on an intersection): points (T, 2) and arc length (T,)."""
    step = motion.step_m
    dense = resample(poly, step)
    if motion.smooth_sigma_m > 0:
        dense = gaussian_filter1d(dense, motion.smooth_sigma_m / step, axis=0, mode="nearest")
    dense = resample(dense, step)
    s = np.arange(len(dense)) * step
    start = int(rng.uniform(0.2, 0.8) * first_len / step)
    return dense[start:], s[start:] - s[start]


def _speed_profile(
    dense: np.ndarray,
    curvature: np.ndarray,
    cruise: float,
    crossings: np.ndarray,
    config: DriveConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Speed (T,) along the path and the time (T,) since the start: a wandering cruise speed,
    capped in curves (lateral acceleration, yaw rate) and near intersections, then limited by
    acceleration from rest and braking ahead of slow parts."""
    motion = config.motion
    step = motion.step_m
    lo, hi = motion.speed_range_mps
    wander = _smooth_noise(len(dense), config.speed_correlation_m / step, rng)
    v = cruise * (1.0 + config.speed_variation * np.clip(wander, -2.0, 2.0))
    if config.speed_mps is None:
        v = np.clip(v, lo, hi)
    # the curve ahead and behind within half a metre counts, so yaw rate stays under the limit
    kappa = np.maximum(maximum_filter1d(np.abs(curvature), 2 * int(0.5 / step) + 1), 1e-9)
    v = np.minimum(v, np.sqrt(motion.lateral_accel_mps2 / kappa))
    v = np.minimum(v, motion.yaw_rate_radps / kappa)
    if motion.intersection_speed_mps is not None:
        if len(crossings):
            dist, _ = cKDTree(crossings).query(dense, k=1)
            near = dist <= motion.intersection_zone_m
            v[near] = np.minimum(v[near], motion.intersection_speed_mps)
    v[0] = 0.0
    for i in range(1, len(v)):  # speeding up
        v[i] = min(v[i], math.sqrt(v[i - 1] ** 2 + 2.0 * motion.accel_mps2 * step))
    for i in range(len(v) - 2, -1, -1):  # braking ahead of slow parts
        v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + 2.0 * motion.decel_mps2 * step))
    v[1:] = np.maximum(v[1:], 1e-3)
    t = np.concatenate([[0.0], np.cumsum(2.0 * step / (v[1:] + v[:-1]))])
    if t[-1] < config.duration_s:
        raise RuntimeError(
            f"planned path lasts {t[-1]:.1f} s < duration {config.duration_s} s (a bug)"
        )
    return v, t


def _smooth_noise(n: int, corr_samples: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over about `corr_samples` samples."""
    white = rng.standard_normal(n)
    if corr_samples < 1.0:
        return white
    # a unit Gaussian kernel of sigma c samples has sum of squares 1 / (2 c sqrt(pi))
    smooth = gaussian_filter1d(white, corr_samples, mode="wrap")
    return smooth * math.sqrt(2.0 * corr_samples * math.sqrt(math.pi))

