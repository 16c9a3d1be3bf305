"""Drives through the synthetic city: ground-truth trajectories and wheel odometry.

A drive is a walk (on the sidewalk) or a car ride (in a lane) along the street network. It gives
the ground-truth pose at every panorama stamp, a dense track that GNSS and odometry sample at
their own rates, and wheel odometry that drifts the way real odometry does, so that the node is
exercised on the same kind of motion it meets on a robot.

Conventions (the node depends on them):

- positions are UTM easting/northing in the drive's zone; `lat_deg`/`lon_deg` come from geo.py;
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.spatial import cKDTree

from crossview_ros.config import check_known_keys
from crossview_ros.geo import UTMZone, utm_to_latlon, wrap_angle_rad, yaw_utm_to_enu

MODES = ("walk", "drive")


class StreetGraphLike(Protocol):
    """What drives need from city.StreetGraph (any object with these attributes will do).

    An optional attribute `bounds_en` = (E_min, N_min, E_max, N_max), the renderable area,
    keeps every pose of a drive at least DriveConfig.edge_margin_m inside it (None or absent:
    the streets are used as they are).
    """

    nodes_en: (
        np.ndarray
    )  # (K, 2) float64 UTM easting, northing of intersections / polyline vertices
    edges: np.ndarray  # (M, 2) int64 node indices, undirected
    width_m: np.ndarray  # (M,) carriageway width, kerb to kerb
    sidewalk_m: np.ndarray  # (M,) sidewalk width on each side
    lanes: np.ndarray  # (M,) lanes per direction


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
        return self.limits if self.limits is not None else MOTION_PRESETS[self.mode]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DriveConfig:
        check_known_keys(cls, values)
        values = dict(values)
        if isinstance(values.get("limits"), dict):
            limits = dict(values["limits"])
            limits["speed_range_mps"] = tuple(limits.get("speed_range_mps", ()))
            values["limits"] = MotionLimits(**limits)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
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
    lat_deg: np.ndarray  # (N,) WGS84 via geo.py
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


# --------------------------------------------------------------------------- route


def _check_streets(streets: StreetGraphLike) -> tuple[np.ndarray, np.ndarray]:
    nodes = np.asarray(streets.nodes_en, dtype=np.float64)
    edges = np.asarray(streets.edges, dtype=np.int64)
    if (
        nodes.ndim != 2
        or nodes.shape[1] != 2
        or edges.ndim != 2
        or edges.shape[1] != 2
        or len(edges) == 0
    ):
        raise ValueError("street graph needs nodes_en (K, 2) and at least one edge in edges (M, 2)")
    if edges.min() < 0 or edges.max() >= len(nodes):
        raise ValueError("street graph edges refer to nodes that do not exist")
    m = len(edges)
    for name in ("width_m", "sidewalk_m", "lanes"):
        if np.asarray(getattr(streets, name)).shape != (m,):
            raise ValueError(f"street graph {name} must have one value per edge ({m})")
    length = np.linalg.norm(nodes[edges[:, 1]] - nodes[edges[:, 0]], axis=1)
    if np.any(length <= 1e-6):
        raise ValueError("street graph has zero-length edges; merge their nodes")
    return nodes, edges


def _random_route(
    nodes: np.ndarray, edges: np.ndarray, length_m: float, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Random walk over the graph as (edge, from, to) triples, at least `length_m` of centreline."""
    adjacency: list[list[tuple[int, int]]] = [[] for _ in range(len(nodes))]
    for k, (a, b) in enumerate(edges):
        adjacency[a].append((int(b), k))
        adjacency[b].append((int(a), k))
    seg_len = np.linalg.norm(nodes[edges[:, 1]] - nodes[edges[:, 0]], axis=1)
    k = int(rng.choice(len(edges), p=seg_len / seg_len.sum()))
    a, b = (
        (int(edges[k, 0]), int(edges[k, 1]))
        if rng.random() < 0.5
        else (int(edges[k, 1]), int(edges[k, 0]))
    )
    route = [(k, a, b)]
    total = seg_len[k]
    while total < length_m:
        k_prev, a, b = route[-1]
        u_in = nodes[b] - nodes[a]
        options = [(c, e) for c, e in adjacency[b] if e != k_prev]
        if not options:  # dead end: the only way on is back
            options = [(a, k_prev)]
        else:
            turn = np.array(
                [abs(_turn_angle(u_in, nodes[c] - nodes[b])) for c, _ in options], dtype=np.float64
            )
            weight = np.where(turn > math.radians(135.0), 0.15, 1.0)
            choice = int(rng.choice(len(options), p=weight / weight.sum()))
            options = [options[choice]]
        c, e = options[0]
        route.append((e, b, c))
        total += seg_len[e]
    return route


def _turn_angle(u_in: np.ndarray, u_out: np.ndarray) -> float:
    """Signed angle (rad, CCW positive) from direction u_in to direction u_out."""
    cross = u_in[0] * u_out[1] - u_in[1] * u_out[0]
    return math.atan2(cross, float(np.dot(u_in, u_out)))


def _offsets_m(streets: StreetGraphLike, config: DriveConfig) -> np.ndarray:
    """(M,) distance of the path from each street's centre line (sidewalk or lane centre)."""
    width = np.asarray(streets.width_m, dtype=np.float64)
    if config.mode == "walk":
        return 0.5 * width + 0.5 * np.asarray(streets.sidewalk_m, dtype=np.float64)
    lanes = np.maximum(np.asarray(streets.lanes, dtype=np.int64), 1)
    lane = np.minimum(config.lane_index, lanes - 1)
    return (lane + 0.5) * width / (2.0 * lanes)


def _graph_bounds(streets: StreetGraphLike) -> tuple[float, float, float, float] | None:
    bounds = getattr(streets, "bounds_en", None)
    if bounds is None:
        return None
    e0, n0, e1, n1 = (float(x) for x in bounds)
    if not (all(math.isfinite(x) for x in (e0, n0, e1, n1)) and e0 < e1 and n0 < n1):
        raise ValueError(
            f"street graph bounds_en must be finite (E_min, N_min, E_max, N_max), got {bounds}"
        )
    return e0, n0, e1, n1


def _clip_to_box(
    p: np.ndarray, q: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[float, float]:
    """Liang-Barsky: the part [t0, t1] of segment p->q inside the box lo..hi (t0 >= t1: none)."""
    t0, t1 = 0.0, 1.0
    d = q - p
    for k in range(2):
        for num, den in ((p[k] - lo[k], -d[k]), (hi[k] - p[k], d[k])):
            if den == 0.0:
                if num < 0.0:
                    return 1.0, 0.0
                continue
            t = float(num / den)
            if den < 0.0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    return t0, t1


def _fit_to_bounds(
    nodes: np.ndarray,
    edges: np.ndarray,
    offsets: np.ndarray,
    bounds: tuple[float, float, float, float],
    margin_m: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The streets a drive may use: each edge clipped to `bounds` shrunk by its own offset plus
    `margin_m`, then the largest connected piece (by length).

    Returns nodes (the old ones first, then the new clipped ends), edges, and for each edge the
    index of the street it came from. A node kept by several edges lies inside every one of
    their shrunk boxes, so an arc around it of radius <= the largest of their offsets (a corner
    or a U-turn) stays `margin_m` inside the bounds."""
    lo_all, hi_all = np.array(bounds[:2]), np.array(bounds[2:])
    new_nodes: list[np.ndarray] = []
    kept: list[tuple[int, int]] = []
    source: list[int] = []
    for k, (a, b) in enumerate(edges):
        inset = float(offsets[k]) + margin_m
        p, q = nodes[a], nodes[b]
        t0, t1 = _clip_to_box(p, q, lo_all + inset, hi_all - inset)
        if (t1 - t0) * float(np.linalg.norm(q - p)) < 1e-3:  # outside, or a sliver
            continue
        ends = []
        for t, node in ((t0, int(a)), (t1, int(b))):
            if t in (0.0, 1.0):
                ends.append(node)
            else:
                new_nodes.append(p + t * (q - p))
                ends.append(len(nodes) + len(new_nodes) - 1)
        kept.append((ends[0], ends[1]))
        source.append(k)
    if not kept:
        raise ValueError(
            f"no street lies inside the street graph's bounds_en {bounds} with its lateral offset "
            f"and DriveConfig.edge_margin_m = {margin_m} m"
        )
    all_nodes = np.concatenate([nodes, np.asarray(new_nodes).reshape(-1, 2)])
    sub = np.asarray(kept, dtype=np.int64)
    src = np.asarray(source, dtype=np.int64)
    # the largest connected piece, so that the route never needs an edge that was cut away
    label = np.arange(len(all_nodes))

    def find(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = int(label[i])
        return i

    for a, b in sub:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            label[max(ra, rb)] = min(ra, rb)
    root = np.array([find(int(a)) for a in sub[:, 0]])
    length = np.linalg.norm(all_nodes[sub[:, 1]] - all_nodes[sub[:, 0]], axis=1)
    roots, inverse = np.unique(root, return_inverse=True)
    best = int(np.argmax(np.bincount(inverse, weights=length, minlength=len(roots))))
    keep = inverse == best
    return all_nodes, sub[keep], src[keep]


def _offset_polyline(
    offsets: np.ndarray,
    nodes: np.ndarray,
    route: list[tuple[int, int, int]],
    config: DriveConfig,
) -> tuple[np.ndarray, float]:
    """The route's streets offset to the traffic side, joined at the corners.

    `offsets` (M,) is each edge's distance from its centre line. Returns the (P, 2) polyline
    and the length of its first straight piece (where drives start)."""
    side = -1.0 if config.traffic_side == "right" else 1.0  # offset along side * left normal
    segs = []
    for k, a, b in route:
        u = nodes[b] - nodes[a]
        length = float(np.linalg.norm(u))
        u = u / length
        normal = side * np.array([-u[1], u[0]])
        d = float(offsets[k])
        segs.append((nodes[a] + d * normal, u, length, d, b))
    points: list[np.ndarray] = []
    join_index: list[int] = []
    start_t = 0.0
    for i, (p0, u, length, d, node) in enumerate(segs):
        points.append(p0 + start_t * u)
        if i + 1 == len(segs):
            points.append(p0 + length * u)
            break
        q0, v, length_next, d_next, _ = segs[i + 1]
        centre = nodes[node]
        reverse = route[i + 1][2] == route[i][1] and route[i + 1][0] == route[i][0]
        theta = -side * math.pi if reverse else _turn_angle(u, v)
        join_index.append(len(points))
        start_t = 0.0
        if abs(theta) < 1e-3:  # straight on (a lateral step if the widths differ; smoothed later)
            points.append(p0 + length * u)
            continue
        if theta * side > 0.0 and not reverse:  # inside of the turn: meet where the lines cross
            denom = u[0] * v[1] - u[1] * v[0]
            w = q0 - p0
            t = (w[0] * v[1] - w[1] * v[0]) / denom
            s = (w[0] * u[1] - w[1] * u[0]) / denom
            if t > float(np.dot(points[-1] - p0, u)) and t <= length and 0.0 <= s < length_next:
                points.append(p0 + t * u)
                start_t = s
                continue
        # outside of the turn (or a corner too tight to meet): arc around the intersection
        a0 = math.atan2(*(p0 + length * u - centre)[::-1])
        steps = max(2, int(math.ceil(abs(theta) / 0.1)) + 1)
        for f in np.linspace(0.0, 1.0, steps):
            ang = a0 + f * theta
            r = d + f * (d_next - d)
            points.append(centre + r * np.array([math.cos(ang), math.sin(ang)]))
    poly = np.asarray(points)
    first_len = (
        float(np.linalg.norm(poly[join_index[0]] - poly[0])) if join_index else float(segs[0][2])
    )
    keep = np.concatenate([[True], np.linalg.norm(np.diff(poly, axis=0), axis=1) > 1e-9])
    return poly[keep], first_len


def _resample(poly: np.ndarray, step_m: float) -> np.ndarray:
    """Points every `step_m` of arc length along a polyline."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    s_new = np.arange(0.0, s[-1], step_m)
    return np.stack([np.interp(s_new, s, poly[:, 0]), np.interp(s_new, s, poly[:, 1])], axis=1)


def _smooth_noise(n: int, corr_samples: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over about `corr_samples` samples."""
    white = rng.standard_normal(n)
    if corr_samples < 1.0:
        return white
    # a unit Gaussian kernel of sigma c samples has sum of squares 1 / (2 c sqrt(pi))
    smooth = gaussian_filter1d(white, corr_samples, mode="wrap")
    return smooth * math.sqrt(2.0 * corr_samples * math.sqrt(math.pi))


# --------------------------------------------------------------------------- drive


def plan_drive(streets: StreetGraphLike, zone: UTMZone, config: DriveConfig) -> Drive:
    """A seeded random drive along `streets` (UTM in `zone`); same config, same arrays.

    If `streets` has `bounds_en` (a city's StreetGraph does), every pose of the drive lies at
    least config.edge_margin_m inside it (see the module docstring)."""
    nodes, edges = _check_streets(streets)
    zone = UTMZone.parse(zone)
    offsets = _offsets_m(streets, config)
    # intersections (for the speed cap) are those of the whole graph, clipped or not
    degree = np.bincount(edges.ravel(), minlength=len(nodes))
    crossings = nodes[degree >= 3]
    bounds = _graph_bounds(streets)
    if bounds is not None:
        nodes, edges, source = _fit_to_bounds(nodes, edges, offsets, bounds, config.edge_margin_m)
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
    route = _random_route(nodes, edges, need_m, rng)
    poly, first_len = _offset_polyline(offsets, nodes, route, config)

    step = motion.step_m
    dense = _resample(poly, step)
    if motion.smooth_sigma_m > 0:
        dense = gaussian_filter1d(dense, motion.smooth_sigma_m / step, axis=0, mode="nearest")
    dense = _resample(dense, step)
    s = np.arange(len(dense)) * step

    # the start: somewhere along the first street, not on an intersection
    start = int(rng.uniform(0.2, 0.8) * first_len / step)
    dense = dense[start:]
    s = s[start:] - s[start]

    heading = np.unwrap(np.arctan2(np.gradient(dense[:, 1]), np.gradient(dense[:, 0])))
    curvature = np.gradient(heading, step)

    # speed: wandering cruise, capped in curves and at intersections, then accel/brake limits
    wander = _smooth_noise(len(s), config.speed_correlation_m / step, rng)
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


# --------------------------------------------------------------------------- odometry


@dataclass
class OdometryConfig:
    """Wheel odometry errors; all errors are drawn from the rng given to wheel_odometry."""

    rate_hz: float = 50.0  # odometry message rate
    speed_scale_sigma: float = (
        0.02  # wheel-radius scale error, drawn once per drive (1-sigma, relative)
    )
    speed_noise_mps: float = 0.02  # white noise on the measured speed while moving
    yaw_rate_bias_sigma_radps: float = 5e-4  # constant yaw-rate bias, drawn once (~0.03 deg/s)
    yaw_rate_noise_radps: float = 0.01  # white noise on the measured yaw rate
    yaw_rate_scale_sigma: float = 0.01  # track-width scale error on the yaw rate, drawn once

    def __post_init__(self) -> None:
        if not self.rate_hz > 0.0:
            raise ValueError(f"OdometryConfig.rate_hz must be positive, got {self.rate_hz}")
        for f in fields(self):
            if getattr(self, f.name) < 0.0:
                raise ValueError(f"OdometryConfig.{f.name} must be >= 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OdometryConfig:
        check_known_keys(cls, values)
        return cls(**values)


@dataclass
class Odometry:
    """Dead-reckoned pose of base_link in the odom frame (= the first pose of the drive).

    The covariance is what a wheel-odometry driver would report: the configured noise
    propagated through the motion model, without the per-drive scale and bias errors, so it
    grows with distance but, like real odometry covariances, is optimistic over long runs.
    """

    stamp_s: np.ndarray  # (N,) Unix seconds
    x_m: np.ndarray  # (N,) odom frame, x = forward at the start
    y_m: np.ndarray  # (N,) odom frame, y = left at the start
    yaw_rad: np.ndarray  # (N,) odom frame, wrapped to (-pi, pi]
    speed_mps: np.ndarray  # (N,) measured forward speed (base_link)
    yaw_rate_radps: np.ndarray  # (N,) measured yaw rate
    pose_cov: np.ndarray  # (N, 3, 3) covariance of (x, y, yaw), m^2, m*rad, rad^2
    twist_var: np.ndarray  # (N, 2) variance of (speed, yaw rate)
    speed_scale_error: float  # drawn per-drive errors, kept for analysis
    yaw_rate_bias_radps: float
    yaw_rate_scale_error: float

    def __len__(self) -> int:
        return int(self.stamp_s.shape[0])


def wheel_odometry(
    drive: Drive, rng: np.random.Generator | int, config: OdometryConfig | None = None
) -> Odometry:
    """Integrate noisy wheel speed and yaw rate (scale errors, yaw-rate bias, white noise)."""
    config = config if config is not None else OdometryConfig()
    rng = np.random.default_rng(rng)
    t0, t1 = float(drive.stamp_s[0]), float(drive.stamp_s[-1])
    stamps = t0 + np.arange(int(math.floor((t1 - t0) * config.rate_hz + 1e-9)) + 1) / config.rate_hz
    truth = drive.sample(stamps)
    n = len(stamps)
    scale = float(rng.normal(0.0, config.speed_scale_sigma))
    bias = float(rng.normal(0.0, config.yaw_rate_bias_sigma_radps))
    yaw_scale = float(rng.normal(0.0, config.yaw_rate_scale_sigma))
    moving = truth["speed_mps"] > 1e-3  # encoders read exactly zero at rest
    v = (1.0 + scale) * truth["speed_mps"] + moving * rng.normal(0.0, config.speed_noise_mps, n)
    w = (
        (1.0 + yaw_scale) * truth["yaw_rate_radps"]
        + bias
        + rng.normal(0.0, config.yaw_rate_noise_radps, n)
    )

    dt = np.diff(stamps)
    # midpoint integration of the unicycle model
    yaw = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * dt)])
    yaw_mid = 0.5 * (yaw[1:] + yaw[:-1])
    step = 0.5 * (v[1:] + v[:-1]) * dt
    x = np.concatenate([[0.0], np.cumsum(step * np.cos(yaw_mid))])
    y = np.concatenate([[0.0], np.cumsum(step * np.sin(yaw_mid))])

    var_v = config.speed_noise_mps**2
    var_w = config.yaw_rate_noise_radps**2
    # P <- F P F^T + G diag(var_v, var_w) G^T with F = d(x, y, yaw)+/d(x, y, yaw) and
    # G = d(x, y, yaw)+/d(v, w), written out in scalars (this loop runs at the odometry rate)
    cov = np.zeros((n, 3, 3))
    p00 = p01 = p02 = p11 = p12 = p22 = 0.0
    cos_mid, sin_mid = np.cos(yaw_mid).tolist(), np.sin(yaw_mid).tolist()
    for i, (c, s, d, ds) in enumerate(zip(cos_mid, sin_mid, dt.tolist(), step.tolist()), start=1):
        a, b = -ds * s, ds * c
        p00, p01, p11 = (
            p00 + 2.0 * a * p02 + a * a * p22 + c * c * d * d * var_v,
            p01 + a * p12 + b * p02 + a * b * p22 + c * s * d * d * var_v,
            p11 + 2.0 * b * p12 + b * b * p22 + s * s * d * d * var_v,
        )
        p02, p12 = p02 + a * p22, p12 + b * p22
        p22 = p22 + d * d * var_w
        cov[i] = ((p00, p01, p02), (p01, p11, p12), (p02, p12, p22))
    return Odometry(
        stamp_s=stamps,
        x_m=x,
        y_m=y,
        yaw_rad=np.asarray(wrap_angle_rad(yaw)),
        speed_mps=v,
        yaw_rate_radps=w,
        pose_cov=cov,
        twist_var=np.tile([var_v, var_w], (n, 1)),
        speed_scale_error=scale,
        yaw_rate_bias_radps=bias,
        yaw_rate_scale_error=yaw_scale,
    )
