"""A procedural, seeded, geo-referenced city: street graph and 2.5-D scene rasters.

The city is what models are trained and measured on, so it is built to be hard in the ways
real cities are: a street grid turned by a random angle, bent by a smooth warp, with varied
block sizes, jogged and missing cross streets, diagonal avenues, a boulevard with a planted
median, a park and a plaza; lanes with markings, crosswalks and stop lines; sidewalks with
slab joints; blocks cut into lots with buildings from bungalows to towers (heavy-tailed,
tallest downtown, so that street canyons exist), pitched and flat roofs with parapets, HVAC
boxes, penthouses, water tanks, solar panels; trees along streets, in yards and parks; parked
and queued cars. Texture (asphalt patches, grass and roof noise) keeps tiles from being
identified by flat colours; what makes places distinct is layout and shape, as in real imagery.

Geometry is generated in local metres u (east) and v (south) from the north-west corner of
the raster, then stored on the UTM grid of the datum's zone: cell (r, c) covers easting
[origin_e_m + c*gsd_m, +gsd_m) and northing (origin_n_m - (r+1)*gsd_m, origin_n_m - r*gsd_m]
(see scene.py). The city's square is centred on the datum; its origin is a multiple of gsd_m.
Angles: ENU yaw in radians, 0 = east, counter-clockwise; compass bearings in degrees, 0 =
north, clockwise. The UTM grid is used as the local plane (grid convergence and scale factor,
below 0.1 % over a few km, are ignored inside the city).

Epochs: epoch 0 is the aerial survey; epoch e > 0 is a later visit with the same streets and
buildings, where some parked cars left and others arrived, moving traffic is different, and
some trees were cut, planted or changed colour (season). Every random choice draws from a
numpy Generator seeded by (seed, purpose[, epoch]), so one seed gives identical arrays.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from crossview_ros.config import check_known_keys
from crossview_ros import geo
from crossview_ros.sim.scene import Buildings, Material, Scene

_FIX_BITS = 3  # sub-pixel bits of the coordinates handed to OpenCV's rasteriser
_FIX = 1 << _FIX_BITS
_PARKING_LANE_M = 2.3
_CANYON_OPEN = 0.05  # canyon depth (H/W) below which a place counts as open
_MAX_SIDE_PX = 20000  # a 20000^2 city is ~10 GB of rasters: refuse more

# Random streams, one per purpose, so that changing one part never reshuffles another.
_S_GRID, _S_BLOCKS, _S_STREETS, _S_TREES, _S_CARS, _S_TEXTURE, _S_EPOCH = 1, 2, 3, 4, 5, 6, 7

M = Material

# --------------------------------------------------------------------------- palettes (RGB)
_FLAT_ROOF_RGB = np.array([
    (150, 150, 148), (178, 176, 170), (200, 199, 194), (215, 214, 208), (96, 96, 100), (72, 72, 75),
    (165, 156, 140), (140, 131, 120), (120, 125, 131), (186, 180, 165), (128, 118, 110), (160, 165, 170),
], np.float32)
_PITCHED_ROOF_RGB = np.array([
    (158, 84, 62), (135, 72, 55), (118, 80, 62), (82, 82, 88), (92, 97, 108), (140, 60, 50),
    (104, 94, 86), (70, 70, 74), (165, 110, 80),
], np.float32)
_FACADE_RGB = np.array([
    (150, 76, 56), (172, 102, 72), (200, 186, 160), (212, 202, 182), (160, 160, 158), (226, 222, 214),
    (110, 100, 92), (188, 170, 140), (140, 120, 100), (96, 98, 104),
], np.float32)
_GLASS_RGB = np.array([(88, 118, 140), (92, 128, 122), (70, 84, 100), (120, 140, 150), (60, 66, 74)], np.float32)
_CAR_RGB = np.array([
    (235, 235, 232), (240, 240, 238), (20, 20, 22), (30, 32, 36), (150, 152, 155), (175, 178, 180),
    (95, 98, 102), (30, 55, 120), (140, 25, 25), (180, 30, 30), (40, 70, 50), (200, 170, 60), (110, 80, 60),
], np.float32)
_CAR_P = np.array([0.12, 0.11, 0.11, 0.09, 0.12, 0.1, 0.1, 0.07, 0.05, 0.04, 0.03, 0.03, 0.03])
_TREE_RGB = np.array([
    (58, 92, 42), (70, 105, 48), (48, 78, 40), (84, 112, 56), (62, 98, 58), (92, 118, 62), (54, 86, 54),
], np.float32)
_AUTUMN_RGB = np.array([(150, 120, 50), (170, 95, 40), (130, 110, 60), (110, 100, 50), (160, 140, 70)], np.float32)
_GRASS_RGB = (92, 128, 62)
_KERB_RGB = (196, 194, 188)


# --------------------------------------------------------------------------- public API


@dataclass
class CityConfig:
    """How a city is generated; every field has a default and from_dict refuses unknown keys."""

    datum_lat_deg: float = 40.7580  # city centre latitude (default Midtown Manhattan); any hemisphere
    datum_lon_deg: float = -73.9855  # city centre longitude
    size_m: float = 1000.0  # side of the square city, metres
    gsd_m: float = 0.15  # raster / orthophoto cell size, metres
    seed: int = 0  # everything random derives from it: same seed -> identical city
    grid_rotation_max_deg: float = 35.0  # street grid turned by a random angle within +-this; 0 = north-aligned
    avenue_spacing_min_m: float = 110.0  # distance between avenues (long block side), uniform in [min, max]
    avenue_spacing_max_m: float = 230.0
    street_spacing_min_m: float = 55.0  # distance between cross streets (short block side)
    street_spacing_max_m: float = 115.0
    street_drop_share: float = 0.12  # cross-street segments left out (bigger blocks, T-junctions); 0 = full grid
    street_jog_share: float = 0.25  # cross-street segments shifted sideways at an avenue (jogged junctions)
    street_jog_max_m: float = 14.0  # largest such shift, metres
    diagonal_count: int = 2  # straight avenues cutting the grid at an angle; 0 = none
    warp_max_m: float = 35.0  # amplitude of the smooth displacement that bends streets; 0 = straight streets
    core_radius_m: float = 350.0  # downtown radius: buildings tallest inside, towers only there
    tower_share: float = 0.3  # chance that a downtown lot holds a tower (scaled by centrality); 0 = no towers
    tower_max_height_m: float = 300.0  # cap of the heavy-tailed (Pareto) tower heights
    park_share: float = 0.05  # share of the area in the park; 0 = no park
    plaza: bool = True  # a paved plaza with a fountain near downtown
    street_tree_share: float = 0.6  # share of streets lined with trees; 0 = none
    street_tree_spacing_m: float = 9.0  # distance between street trees, metres
    park_tree_density: float = 0.006  # park trees per square metre of lawn
    parking_occupancy: float = 0.6  # share of kerb and lot parking spaces holding a car
    traffic_density: float = 0.25  # chance that a junction approach has a queue of moving cars
    left_hand_traffic: bool = False  # drive on the left (stop lines and queues on that side)
    epoch_car_turnover: float = 0.5  # share of parked cars gone at a later visit (occupancy kept)
    epoch_tree_change: float = 0.12  # share of trees cut, planted, and recoloured (each) at a later visit

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (GeoError for the datum) naming the first bad value and its range."""
        geo.check_latlon(self.datum_lat_deg, self.datum_lon_deg)
        geo.latlon_to_utm(self.datum_lat_deg, self.datum_lon_deg)  # raises outside UTM's latitudes
        if not (self.gsd_m > 0 and math.isfinite(self.gsd_m)):
            raise ValueError(f"gsd_m must be a positive number of metres, got {self.gsd_m!r}")
        if not (self.size_m >= 50 * self.gsd_m and math.isfinite(self.size_m)):
            raise ValueError(f"size_m must be at least 50 cells ({50 * self.gsd_m} m), got {self.size_m!r}")
        if self.size_m / self.gsd_m > _MAX_SIDE_PX:
            raise ValueError(f"size_m / gsd_m = {self.size_m / self.gsd_m:.0f} px per side exceeds "
                             f"{_MAX_SIDE_PX}; use a coarser gsd_m or a smaller size_m")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for lo, hi in (("avenue_spacing_min_m", "avenue_spacing_max_m"),
                       ("street_spacing_min_m", "street_spacing_max_m")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not 30.0 <= a <= b:
                raise ValueError(f"need 30 <= {lo} <= {hi}, got {a} and {b}")
        for name in ("street_drop_share", "street_jog_share", "tower_share", "park_share", "street_tree_share",
                     "parking_occupancy", "traffic_density", "epoch_car_turnover", "epoch_tree_change"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.park_share > 0.3:
            raise ValueError(f"park_share must be <= 0.3, got {self.park_share}")
        if not 0 <= self.diagonal_count <= 4:
            raise ValueError(f"diagonal_count must be in 0..4, got {self.diagonal_count}")
        for name, lo, hi in (("grid_rotation_max_deg", 0, 45), ("warp_max_m", 0, 80), ("street_jog_max_m", 0, 25),
                             ("core_radius_m", 1, 1e5), ("tower_max_height_m", 60, 900),
                             ("street_tree_spacing_m", 4, 100), ("park_tree_density", 0, 0.05)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CityConfig:
        """Strict: unknown keys raise, so that a typo never falls back to a default silently."""
        check_known_keys(cls, values)
        return cls(**values)


@dataclass
class StreetGraph:
    """Centre lines of the drivable streets, as a connected undirected graph in UTM metres.

    Nodes are junctions and polyline vertices (curved streets are split every ~10 m, so
    consecutive edges follow the curve); streets that the city edge cuts off from the rest
    are drawn in the scene but left out here.

    Centre lines are clipped exactly at the city edge, so a street leaving the city ends in a
    node on the edge, and its carriageway and sidewalks there reach past it. `bounds_en` is
    that edge (the scene's extent): drives (drive.plan_drive) keep their poses inside it.
    """

    nodes_en: np.ndarray  # (K, 2) float64 UTM easting, northing of junctions / polyline vertices
    edges: np.ndarray  # (M, 2) int64 node indices (undirected)
    width_m: np.ndarray  # (M,) carriageway width, kerb to kerb (lanes, parking lanes, median)
    sidewalk_m: np.ndarray  # (M,) sidewalk width on each side
    lanes: np.ndarray  # (M,) int64 driving lanes per direction
    # (E_min, N_min, E_max, N_max) UTM of the renderable scene; None = not bounded
    bounds_en: tuple[float, float, float, float] | None = None

    def degree(self) -> np.ndarray:
        """(K,) number of edges at each node."""
        return np.bincount(self.edges.ravel(), minlength=len(self.nodes_en))


class City:
    """A generated city: frame, streets, and its scene rasters per epoch (built lazily, cached)."""

    def __init__(self, config: CityConfig, layout: _Layout) -> None:
        self.config = config
        self.zone: geo.UTMZone = layout.zone
        self.origin_e_m: float = layout.origin_e_m
        self.origin_n_m: float = layout.origin_n_m
        self.centre_e_m: float = layout.centre_e_m
        self.centre_n_m: float = layout.centre_n_m
        self.gsd_m: float = config.gsd_m
        self.size_px: int = layout.n_px
        self.streets: StreetGraph = layout.graph
        self._layout = layout
        self._base: _Base | None = None
        self._scenes: dict[int, Scene] = {}

    @property
    def landmarks(self) -> dict[str, np.ndarray]:
        """UTM (E, N) of features tests and demos aim at: park and plaza centres, tallest building."""
        base = self._get_base()
        return {k.replace("_uv", "_en"): self._local_to_utm(v) for k, v in base.landmarks_uv.items()}

    def scene(self, epoch: int = 0) -> Scene:
        """The city's rasters at `epoch` (0 = aerial survey). Cached; arrays are read-only.

        building_id and the Buildings table are shared by all epochs (buildings never change).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        epoch = int(epoch)
        if epoch not in self._scenes:
            base = self._get_base()
            self._scenes[epoch] = base.epoch_scene(self, epoch)
        return self._scenes[epoch]

    def canyon_depth(self, easting_m: Any, northing_m: Any) -> np.ndarray:
        """Street-canyon height/width ratio at UTM points (0 in the open; > 1 in deep canyons).

        Mean building height within 25 m (weighted up to full when buildings cover >= 35 %
        of the neighbourhood) over the width of the open space there, on a 5 m grid smoothed
        over ~5 m, minus 0.05 (so that the smoothing's far tails read as open sky), sampled
        bilinearly; points outside the city take the nearest edge value.
        """
        from scipy.ndimage import map_coordinates

        base = self._get_base()
        e, n = np.broadcast_arrays(np.asarray(easting_m, np.float64), np.asarray(northing_m, np.float64))
        if not (np.isfinite(e).all() and np.isfinite(n).all()):
            raise ValueError("canyon_depth needs finite UTM coordinates (metres in the city's zone)")
        cell = base.canyon_cell_m
        x = (e - self.origin_e_m) / cell - 0.5  # field sample (i, j) sits at the centre of its cell
        y = (self.origin_n_m - n) / cell - 0.5
        out = map_coordinates(base.canyon, [y.ravel(), x.ravel()], order=1, mode="nearest")
        return out.reshape(e.shape).astype(np.float64)

    def city_json(self) -> dict[str, Any]:
        """What a reader needs to place and regenerate the city (written beside VIGOR-style data)."""
        c = self.config
        return {
            "format": "crossview_ros.synthetic_city", "format_version": 1,
            "datum": {"lat_deg": c.datum_lat_deg, "lon_deg": c.datum_lon_deg},
            "seed": int(c.seed), "gsd_m": c.gsd_m, "size_m": self.size_px * c.gsd_m, "size_px": self.size_px,
            "utm_zone": str(self.zone), "epsg": self.zone.epsg,
            "origin_e_m": self.origin_e_m, "origin_n_m": self.origin_n_m,
            "centre_e_m": self.centre_e_m, "centre_n_m": self.centre_n_m,
            "grid_rotation_deg": self._layout.rotation_deg,
            "config": c.to_dict(),
        }

    def _get_base(self) -> _Base:
        if self._base is None:
            self._base = _build_base(self._layout, self.config)
        return self._base

    def _local_to_utm(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, np.float64)
        return np.stack([self.origin_e_m + uv[..., 0], self.origin_n_m - uv[..., 1]], axis=-1)


def generate_city(config: CityConfig) -> City:
    """Lay out the city (frame, street network, blocks); rasters are built on first use."""
    config.validate()
    return City(config, _make_layout(config))


# --------------------------------------------------------------------------- layout


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


@dataclass
class _Warp:
    """Street-grid coordinates (a, b) -> local metres (u east, v south): rotation plus smooth bumps."""

    origin: np.ndarray  # (2,) uv of (a, b) = (0, 0)
    axis_a: np.ndarray  # (2,) unit vector of a in uv
    axis_b: np.ndarray
    centres: np.ndarray  # (K, 2) uv of displacement bumps
    sigmas: np.ndarray  # (K,)
    amps: np.ndarray  # (K, 2) displacement at each bump's centre, metres

    def __call__(self, ab: np.ndarray) -> np.ndarray:
        ab = np.asarray(ab, np.float64)
        q = self.origin + ab[..., :1] * self.axis_a + ab[..., 1:2] * self.axis_b
        if len(self.sigmas) == 0:
            return q
        d2 = ((q[..., None, :] - self.centres) ** 2).sum(-1)
        w = np.exp(-d2 / (2.0 * self.sigmas ** 2))
        return q + (w[..., None] * self.amps).sum(-2)


@dataclass
class _Street:
    """Cross-section of one street (shared by all its links)."""

    kind: str  # avenue | boulevard | street | diagonal
    lanes: int  # driving lanes per direction
    lane_m: float
    parking: bool  # a parking lane on each side
    median_m: float  # planted median (boulevard), 0 = none
    sidewalk_m: float
    trees: bool
    asphalt: float  # grey level of its carriageway
    sidewalk_rgb: tuple[int, int, int]
    marked: bool  # centre and lane lines painted
    wear: float  # 0 = fresh paint, 0.6 = barely visible

    @property
    def width_m(self) -> float:
        return 2 * self.lanes * self.lane_m + (2 * _PARKING_LANE_M if self.parking else 0.0) + self.median_m

    @property
    def half_m(self) -> float:
        return self.width_m / 2 + self.sidewalk_m


@dataclass
class _Link:
    """A street between two junctions (or a junction and a line end), as a uv polyline."""

    street: _Street
    key0: tuple[float, float]
    key1: tuple[float, float]
    uv: np.ndarray  # (K, 2)
    ends: list  # per end (0 = start, 1 = end): dict(kerb, clear, crosswalk) or None (no junction)


@dataclass
class _Block:
    rect: tuple[float, float, float, float]  # buildable (a0, a1, b0, b1) in grid coordinates
    kind: str  # downtown | midrise | residential | industrial | parking | park | plaza
    centrality: float


@dataclass
class _Layout:
    zone: geo.UTMZone
    origin_e_m: float
    origin_n_m: float
    centre_e_m: float
    centre_n_m: float
    n_px: int
    size_m: float
    rotation_deg: float
    warp: _Warp
    downtown_uv: np.ndarray
    links: list[_Link]
    blocks: list[_Block]
    graph: StreetGraph


def _spacings(rng: np.random.Generator, lo: float, hi: float, extent: float) -> np.ndarray:
    """Sorted line positions covering [-extent, extent] with gaps uniform in [lo, hi]."""
    pos = [rng.uniform(-0.5, 0.5) * lo]
    while pos[-1] < extent + hi:
        pos.append(pos[-1] + rng.uniform(lo, hi))
    while pos[0] > -extent - hi:
        pos.insert(0, pos[0] - rng.uniform(lo, hi))
    return np.array(pos)


def _street(rng: np.random.Generator, kind: str, tree_share: float) -> _Street:
    if kind == "boulevard":
        lanes, lane, parking, median, sidewalk = 3, rng.uniform(3.1, 3.4), rng.random() < 0.6, rng.uniform(3.5, 6.0), rng.uniform(5.0, 7.0)
    elif kind in ("avenue", "diagonal"):
        lanes = int(rng.choice([1, 2, 2, 2, 3]))
        lane, parking, median, sidewalk = rng.uniform(3.0, 3.4), rng.random() < 0.75, 0.0, rng.uniform(3.5, 6.0)
    else:
        lanes = 2 if rng.random() < 0.12 else 1
        lane, parking, median, sidewalk = rng.uniform(2.9, 3.3), rng.random() < 0.85, 0.0, rng.uniform(2.5, 4.5)
    grey = rng.uniform(58, 100)
    side = rng.uniform(148, 182)
    tint = rng.uniform(-6, 6)
    return _Street(
        kind=kind, lanes=lanes, lane_m=float(lane), parking=bool(parking), median_m=float(median),
        sidewalk_m=float(sidewalk),
        trees=bool(rng.random() < (max(tree_share, 0.9) if kind == "boulevard" and tree_share > 0 else tree_share)),
        asphalt=float(grey),
        sidewalk_rgb=(int(side + tint), int(side), int(side - tint)),
        marked=bool(kind != "street" or rng.random() < 0.8), wear=float(rng.uniform(0.0, 0.6)),
    )


def _intersect(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> tuple[float, float] | None:
    """Parameters (t, s) in (0, 1)^2 where segments p and q cross, else None."""
    d1, d2 = p1 - p0, q1 - q0
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-9:
        return None
    w = q0 - p0
    t = (w[0] * d2[1] - w[1] * d2[0]) / den
    s = (w[0] * d1[1] - w[1] * d1[0]) / den
    if 0.0 < t < 1.0 and 0.0 < s < 1.0:
        return float(t), float(s)
    return None


def _key(p: np.ndarray) -> tuple[float, float]:
    return (round(float(p[0]), 3), round(float(p[1]), 3))


def _make_layout(config: CityConfig) -> _Layout:
    rng = _rng(config.seed, _S_GRID)
    ce, cn, zone = geo.latlon_to_utm(config.datum_lat_deg, config.datum_lon_deg)
    gsd = config.gsd_m
    n_px = int(round(config.size_m / gsd))
    size = n_px * gsd
    origin_e = round(math.floor((ce - size / 2) / gsd) * gsd, 9)
    origin_n = round(math.ceil((cn + size / 2) / gsd) * gsd, 9)
    centre_uv = np.array([ce - origin_e, origin_n - cn])

    rot = rng.uniform(-config.grid_rotation_max_deg, config.grid_rotation_max_deg)
    th = math.radians(rot)
    axis_a = np.array([math.cos(th), math.sin(th)])
    axis_b = np.array([-math.sin(th), math.cos(th)])
    grid_origin = centre_uv + rng.uniform(-30, 30, 2)
    k = 3 if config.warp_max_m > 0 else 0
    scale = max(size, 1000.0)  # bends of the same physical size in small and large cities
    warp = _Warp(
        origin=grid_origin, axis_a=axis_a, axis_b=axis_b,
        centres=centre_uv + rng.uniform(-0.5, 0.5, (k, 2)) * size,
        sigmas=rng.uniform(0.15, 0.3, k) * scale,
        amps=(rng.uniform(0.4, 1.0, (k, 1)) * config.warp_max_m) * _unit(rng.uniform(0, 2 * math.pi, k)),
    )
    downtown_uv = centre_uv + rng.uniform(-0.12, 0.12, 2) * size
    ext = size / math.sqrt(2.0) + config.warp_max_m + 60.0
    A = _spacings(rng, config.avenue_spacing_min_m, config.avenue_spacing_max_m, ext)
    B = _spacings(rng, config.street_spacing_min_m, config.street_spacing_max_m, ext)
    # Inverse of the rotation only (warp ignored): grid coordinates of the downtown centre.
    d = downtown_uv - grid_origin
    downtown_ab = np.array([d @ axis_a, d @ axis_b])

    avenues = [_street(rng, "avenue", config.street_tree_share) for _ in A]
    boulevard = int(np.argmin(np.abs(A - downtown_ab[0] - rng.uniform(-150, 150))))
    if rng.random() < 0.8:
        avenues[boulevard] = _street(rng, "boulevard", config.street_tree_share)
    streets = [_street(rng, "street", config.street_tree_share) for _ in B]
    for j in range(len(B)):  # a few wide cross streets
        if rng.random() < 0.15:
            streets[j] = _street(rng, "avenue", config.street_tree_share)

    # Cross-street segments per column i (between avenues i and i+1): b position or None.
    n_col = len(A) - 1
    seg_b: dict[tuple[int, int], float | None] = {}
    for i in range(n_col):
        for j in range(len(B)):
            b = B[j]
            room = min(B[j] - B[j - 1] if j > 0 else 1e9, B[j + 1] - B[j] if j + 1 < len(B) else 1e9)
            if rng.random() < config.street_jog_share:
                b += rng.uniform(-1, 1) * min(config.street_jog_max_m, 0.2 * room)
            seg_b[(i, j)] = b
    for i in range(n_col):
        for j in range(1, len(B) - 1):
            if rng.random() < config.street_drop_share and seg_b.get((i, j - 1)) is not None:
                seg_b[(i, j)] = None

    def cell_centre_uv(i: int, j: int) -> np.ndarray:
        return warp(np.array([(A[i] + A[i + 1]) / 2, (B[j] + B[j + 1]) / 2]))

    def inside(uv: np.ndarray, margin: float) -> bool:
        return bool(margin <= uv[0] <= size - margin and margin <= uv[1] <= size - margin)

    cells = [(i, j) for i in range(n_col) for j in range(len(B) - 1)]
    park_cells: list[tuple[int, int]] = []
    if config.park_share > 0:
        area = (A[1:] - A[:-1]).mean() * (B[1:] - B[:-1]).mean()
        n_rows = int(np.clip(round(config.park_share * size * size / area), 1, 4))
        cand = []
        for i, j in cells:
            if j + n_rows > len(B) - 1:
                continue
            c = (cell_centre_uv(i, j) + cell_centre_uv(i, j + n_rows - 1)) / 2
            if inside(c, 0.22 * size):
                cand.append((i, j))
        if cand:
            i, j = cand[int(rng.integers(len(cand)))]
            park_cells = [(i, j + r) for r in range(n_rows)]
            for r in range(1, n_rows):
                seg_b[(i, j + r)] = None
    plaza_cell = None
    if config.plaza:
        free = [c for c in cells if c not in park_cells and inside(cell_centre_uv(*c), 0.05 * size)]
        if free:
            plaza_cell = min(free, key=lambda c: float(np.linalg.norm(cell_centre_uv(*c) - downtown_uv)))

    # Lines in grid coordinates: (street, p0, p1, points {t: key}).
    lines: list[tuple[_Street, np.ndarray, np.ndarray, dict[float, tuple[float, float]]]] = []
    for i, a in enumerate(A):
        p0, p1 = np.array([a, -ext]), np.array([a, ext])
        pts = {0.0: _key(p0), 1.0: _key(p1)}
        for col in (i - 1, i):
            if 0 <= col < n_col:
                for j in range(len(B)):
                    b = seg_b[(col, j)]
                    if b is not None and -ext < b < ext:
                        pts[(b + ext) / (2 * ext)] = _key(np.array([a, b]))
        lines.append((avenues[i], p0, p1, pts))
    for (i, j), b in seg_b.items():
        if b is None or not -ext < b < ext:
            continue
        p0, p1 = np.array([A[i], b]), np.array([A[i + 1], b])
        lines.append((streets[j], p0, p1, {0.0: _key(p0), 1.0: _key(p1)}))
    for _ in range(config.diagonal_count):
        through = downtown_ab + rng.uniform(-0.3, 0.3, 2) * size
        phi = rng.uniform(25, 65) * rng.choice([-1, 1])
        dvec = np.array([math.cos(math.radians(phi)), math.sin(math.radians(phi))])
        p0, p1 = through - 2 * ext * dvec, through + 2 * ext * dvec
        street = _street(rng, "diagonal", config.street_tree_share)
        pts: dict[float, tuple[float, float]] = {}
        for other in lines:
            hit = _intersect(p0, p1, other[1], other[2])
            if hit is not None:
                key = _key(p0 + hit[0] * (p1 - p0))
                pts[hit[0]] = key
                other[3][hit[1]] = key
        if len(pts) >= 2:
            ts = sorted(pts)
            # The diagonal ends where it leaves the grid's extent (its outermost crossings).
            lines.append((street, p0, p1, {t: pts[t] for t in ts}))

    links: list[_Link] = []
    degree: dict[tuple[float, float], int] = {}
    for street, p0, p1, pts in lines:
        ts = sorted(pts)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            q0, q1 = p0 + t0 * (p1 - p0), p0 + t1 * (p1 - p0)
            n = max(1, int(math.ceil(np.linalg.norm(q1 - q0) / 10.0)))
            f = np.linspace(0.0, 1.0, n + 1)[:, None]
            uv = warp(q0 + f * (q1 - q0))
            links.append(_Link(street, pts[t0], pts[t1], uv, [None, None]))
            degree[pts[t0]] = degree.get(pts[t0], 0) + 1
            degree[pts[t1]] = degree.get(pts[t1], 0) + 1
    _junction_setbacks(links, degree, rng)

    blocks: list[_Block] = []
    for i in range(n_col):
        bs = sorted((seg_b[(i, j)], j) for j in range(len(B)) if seg_b[(i, j)] is not None)
        for (b_lo, j_lo), (b_hi, j_hi) in zip(bs[:-1], bs[1:]):
            rect = (A[i] + avenues[i].half_m, A[i + 1] - avenues[i + 1].half_m,
                    b_lo + streets[j_lo].half_m, b_hi - streets[j_hi].half_m)
            corners = warp(np.array([[rect[0], rect[2]], [rect[1], rect[2]], [rect[1], rect[3]], [rect[0], rect[3]]]))
            if corners[:, 0].max() < 0 or corners[:, 0].min() > size or corners[:, 1].max() < 0 or corners[:, 1].min() > size:
                continue
            centre = corners.mean(axis=0)
            kappa = math.exp(-(np.linalg.norm(centre - downtown_uv) / config.core_radius_m) ** 2)
            b_mid = lambda jj: (B[jj] + B[jj + 1]) / 2  # noqa: E731
            kind = _block_kind(rng, kappa)
            if any(ci == i and b_lo < b_mid(cj) < b_hi for ci, cj in park_cells):
                kind = "park"
            elif plaza_cell is not None and plaza_cell[0] == i and b_lo < b_mid(plaza_cell[1]) < b_hi:
                kind = "plaza"
            blocks.append(_Block(rect=tuple(float(x) for x in rect), kind=kind, centrality=kappa))

    graph = _street_graph(links, size, origin_e, origin_n)
    return _Layout(zone=zone, origin_e_m=origin_e, origin_n_m=origin_n, centre_e_m=float(ce), centre_n_m=float(cn),
                   n_px=n_px, size_m=size, rotation_deg=float(rot), warp=warp, downtown_uv=downtown_uv,
                   links=links, blocks=blocks, graph=graph)


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _block_kind(rng: np.random.Generator, kappa: float) -> str:
    u = kappa + rng.normal(0.0, 0.12)
    if u > 0.55:
        return "downtown"
    if u > 0.28:
        return "midrise" if rng.random() < 0.93 else "parking"
    return str(rng.choice(["residential", "midrise", "industrial", "parking"], p=[0.64, 0.22, 0.09, 0.05]))


def _junction_setbacks(links: list[_Link], degree: dict, rng: np.random.Generator) -> None:
    """Per link end at a junction: kerb distance of the crossing streets, clear zone, crosswalk."""
    at: dict[tuple[float, float], list[tuple[_Link, int, np.ndarray]]] = {}
    for link in links:
        for end, key in ((0, link.key0), (1, link.key1)):
            uv = link.uv if end == 0 else link.uv[::-1]
            d = uv[1] - uv[0]
            at.setdefault(key, []).append((link, end, d / max(np.linalg.norm(d), 1e-9)))
    for key, members in at.items():
        if degree[key] < 3:
            continue
        for link, end, d in members:
            kerb, clear = 0.0, 0.0
            for other, _, od in members:
                if other is link or other.street is link.street:
                    continue
                cross = abs(d[0] * od[1] - d[1] * od[0])
                if cross < 0.3:
                    continue
                cos = abs(d @ od)
                k = (other.street.width_m / 2) / cross + (link.street.width_m / 2) * cos / cross
                kerb = max(kerb, k)
                clear = max(clear, k + other.street.sidewalk_m / cross)
            if clear > 0:
                link.ends[end] = {"kerb": kerb, "clear": max(clear, kerb + 2.5), "crosswalk": bool(rng.random() < 0.8)}


def _street_graph(links: list[_Link], size: float, origin_e: float, origin_n: float) -> StreetGraph:
    """Clip link polylines to the city square, keep the largest connected piece, go to UTM."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes: list[np.ndarray] = []
    index: dict[tuple[float, float], int] = {}

    def node(p: np.ndarray, key: tuple[float, float] | None = None) -> int:
        if key is not None and key in index:
            return index[key]
        nodes.append(np.asarray(p, np.float64))
        if key is not None:
            index[key] = len(nodes) - 1
        return len(nodes) - 1

    edges, attrs = [], []
    for link in links:
        uv = link.uv
        ids = [node(uv[0], link.key0)] + [node(p) for p in uv[1:-1]] + [node(uv[-1], link.key1)]
        for k in range(len(uv) - 1):
            t0, t1 = _clip_segment(uv[k], uv[k + 1], size)
            if t0 >= t1:
                continue
            a = ids[k] if t0 == 0.0 else node(uv[k] + t0 * (uv[k + 1] - uv[k]))
            b = ids[k + 1] if t1 == 1.0 else node(uv[k] + t1 * (uv[k + 1] - uv[k]))
            edges.append((a, b))
            attrs.append((link.street.width_m, link.street.sidewalk_m, link.street.lanes))
    bounds = (float(origin_e), float(origin_n - size), float(origin_e + size), float(origin_n))
    if not edges:
        empty = np.zeros((0,), np.float64)
        return StreetGraph(np.zeros((0, 2)), np.zeros((0, 2), np.int64), empty, empty, np.zeros(0, np.int64),
                           bounds_en=bounds)
    e = np.array(edges, np.int64)
    at = np.array(attrs, np.float64)
    n = len(nodes)
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    used = np.zeros(n, bool)
    used[e.ravel()] = True
    sizes = np.bincount(label[e[:, 0]], minlength=label.max() + 1)
    keep_edge = label[e[:, 0]] == int(np.argmax(sizes))
    e, at = e[keep_edge], at[keep_edge]
    keep_node = np.zeros(n, bool)
    keep_node[e.ravel()] = True
    remap = np.cumsum(keep_node) - 1
    uv = np.array(nodes)[keep_node]
    en = np.stack([origin_e + uv[:, 0], origin_n - uv[:, 1]], axis=1)
    return StreetGraph(nodes_en=en, edges=remap[e].astype(np.int64), width_m=at[:, 0].copy(),
                       sidewalk_m=at[:, 1].copy(), lanes=at[:, 2].astype(np.int64), bounds_en=bounds)


def _clip_segment(p: np.ndarray, q: np.ndarray, size: float) -> tuple[float, float]:
    """Liang-Barsky: the part [t0, t1] of segment p->q inside [0, size]^2 (t0 >= t1: none)."""
    t0, t1 = 0.0, 1.0
    d = q - p
    for k in range(2):
        for num, den in ((p[k], -d[k]), (size - p[k], d[k])):
            if den == 0.0:
                if num < 0:
                    return 1.0, 0.0
                continue
            t = num / den
            if den < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    return t0, t1


# --------------------------------------------------------------------------- rasterising


def _along(uv: np.ndarray, s: np.ndarray, lat: np.ndarray | float = 0.0) -> np.ndarray:
    """Points at arc lengths s along a polyline, offset by lat metres to the right of travel."""
    seg = np.diff(uv, axis=0)
    seg_len = np.maximum(np.linalg.norm(seg, axis=1), 1e-9)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    s = np.asarray(s, np.float64)
    idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    f = (s - cum[idx]) / seg_len[idx]
    p = uv[idx] + f[..., None] * seg[idx]
    d = seg[idx] / seg_len[idx][..., None]
    right = np.stack([-d[..., 1], d[..., 0]], axis=-1)  # uv has v pointing south
    return p + np.asarray(lat, np.float64)[..., None] * right


def _length(uv: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(uv, axis=0), axis=1).sum())


class _Canvas:
    """The four scene rasters plus a street mask, and OpenCV drawing in metres."""

    def __init__(self, n_px: int, gsd_m: float) -> None:
        self.n = n_px
        self.gsd = gsd_m
        self.height = np.zeros((n_px, n_px), np.float32)
        self.material = np.full((n_px, n_px), int(M.GRASS), np.uint8)
        self.albedo = np.empty((n_px, n_px, 3), np.uint8)
        self.albedo[:] = _GRASS_RGB
        self.bid = np.full((n_px, n_px), -1, np.int32)
        self.street = np.zeros((n_px, n_px), np.uint8)

    def px(self, uv: np.ndarray) -> np.ndarray:
        """uv metres -> OpenCV fixed-point (x = column, y = row) of cell centres."""
        return np.round((np.asarray(uv, np.float64) / self.gsd - 0.5) * _FIX).astype(np.int32)

    def fill(self, polys: list[np.ndarray], mat: int, rgb: Any, height: float = 0.0, bid: int = -1) -> None:
        for poly in polys:
            pts = [self.px(poly)]
            cv2.fillPoly(self.material, pts, int(mat), cv2.LINE_8, _FIX_BITS)
            cv2.fillPoly(self.albedo, pts, tuple(int(c) for c in rgb), cv2.LINE_8, _FIX_BITS)
            cv2.fillPoly(self.height, pts, float(height), cv2.LINE_8, _FIX_BITS)
            cv2.fillPoly(self.bid, pts, int(bid), cv2.LINE_8, _FIX_BITS)

    def stroke(self, lines: list[np.ndarray], width_m: float, mat: int | None, rgb: Any, *,
               closed: bool = False, ground: bool = True, street: bool = False) -> None:
        """Draw polylines `width_m` wide; mat None paints colour only; ground clears height/ids."""
        if not lines:
            return
        pts = [self.px(p) for p in lines]
        t = max(1, int(round(width_m / self.gsd)))
        cv2.polylines(self.albedo, pts, closed, tuple(int(c) for c in rgb), t, cv2.LINE_8, _FIX_BITS)
        if mat is not None:
            cv2.polylines(self.material, pts, closed, int(mat), t, cv2.LINE_8, _FIX_BITS)
        if ground:
            cv2.polylines(self.height, pts, closed, 0.0, t, cv2.LINE_8, _FIX_BITS)
            cv2.polylines(self.bid, pts, closed, -1, t, cv2.LINE_8, _FIX_BITS)
        if street:
            cv2.polylines(self.street, pts, closed, 1, t, cv2.LINE_8, _FIX_BITS)

    def window(self, pts: np.ndarray, pad: int = 1) -> tuple[int, int, int, int] | None:
        """(r0, r1, c0, c1) of the cells a fixed-point polygon touches, clipped; None if outside."""
        x, y = pts[:, 0] / _FIX, pts[:, 1] / _FIX
        c0, c1 = max(0, int(math.floor(x.min())) - pad), min(self.n, int(math.ceil(x.max())) + pad + 1)
        r0, r1 = max(0, int(math.floor(y.min())) - pad), min(self.n, int(math.ceil(y.max())) + pad + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def mask(self, win: tuple[int, int, int, int], pts: np.ndarray) -> np.ndarray:
        r0, r1, c0, c1 = win
        m = np.zeros((r1 - r0, c1 - c0), np.uint8)
        cv2.fillPoly(m, [pts - np.array([c0 * _FIX, r0 * _FIX], np.int32)], 1, cv2.LINE_8, _FIX_BITS)
        return m.view(bool)

    def cell_uv(self, win: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        r0, r1, c0, c1 = win
        u = (np.arange(c0, c1, dtype=np.float32) + 0.5) * np.float32(self.gsd)
        v = (np.arange(r0, r1, dtype=np.float32) + 0.5) * np.float32(self.gsd)
        return u[None, :], v[:, None]

    def put(self, win: tuple[int, int, int, int], m: np.ndarray, mat: int, rgb: Any,
            height: Any = None, bid: int | None = None) -> None:
        sl = np.s_[win[0]:win[1], win[2]:win[3]]
        self.material[sl][m] = mat
        if isinstance(rgb, np.ndarray) and rgb.ndim == 3:
            self.albedo[sl][m] = rgb[m]
        else:
            self.albedo[sl][m] = np.asarray(rgb, np.uint8)
        if height is not None:
            h = self.height[sl]
            h[m] = height[m] if isinstance(height, np.ndarray) else height
        if bid is not None:
            self.bid[sl][m] = bid

    def at(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(inside, material, building id, street mask) at uv points (clipped lookups)."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        c = np.floor(uv[:, 0] / self.gsd).astype(np.int64)
        r = np.floor(uv[:, 1] / self.gsd).astype(np.int64)
        inside = (c >= 0) & (c < self.n) & (r >= 0) & (r < self.n)
        c, r = np.clip(c, 0, self.n - 1), np.clip(r, 0, self.n - 1)
        return inside, self.material[r, c], self.bid[r, c], self.street[r, c]


def _rect_poly(a0: float, a1: float, b0: float, b1: float, step: float = 12.0) -> np.ndarray:
    """Closed rectangle in grid coordinates, densified so that the warp bends its sides."""
    def edge(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        n = max(1, int(math.ceil(np.linalg.norm(q - p) / step)))
        return p + np.linspace(0, 1, n, endpoint=False)[:, None] * (q - p)
    c = [np.array(x, np.float64) for x in ((a0, b0), (a1, b0), (a1, b1), (a0, b1))]
    return np.concatenate([edge(c[k], c[(k + 1) % 4]) for k in range(4)])


def _jitter(rng: np.random.Generator, rgb: Any, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 4, 3), 0, 255)


@dataclass
class _Trees:
    uv: np.ndarray  # (T, 2)
    radius_m: np.ndarray
    height_m: np.ndarray
    rgb: np.ndarray  # (T, 3) float32
    phase: np.ndarray  # (T, 3) outline lumps and noise offset seeds

    @staticmethod
    def build(rows: list[tuple]) -> _Trees:
        if not rows:
            z = np.zeros(0)
            return _Trees(np.zeros((0, 2)), z, z, np.zeros((0, 3), np.float32), np.zeros((0, 3)))
        a = np.array(rows, np.float64)
        return _Trees(a[:, 0:2], a[:, 2], a[:, 3], a[:, 4:7].astype(np.float32), a[:, 7:10])

    def take(self, keep: np.ndarray) -> _Trees:
        return _Trees(self.uv[keep], self.radius_m[keep], self.height_m[keep], self.rgb[keep], self.phase[keep])

    def __len__(self) -> int:
        return len(self.radius_m)


class _Painter:
    """Draws the epoch-independent base of the city: ground, blocks, buildings, streets."""

    def __init__(self, layout: _Layout, config: CityConfig) -> None:
        self.layout = layout
        self.config = config
        self.warp = layout.warp
        self.cv = _Canvas(layout.n_px, config.gsd_m)
        self.rng = _rng(config.seed, _S_BLOCKS)
        self.b_height: list[float] = []
        self.b_facade: list[np.ndarray] = []
        self.b_window: list[np.ndarray] = []
        self.b_floor: list[float] = []
        self.b_spacing: list[float] = []
        self.b_pixels: list[int] = []
        self.trees: list[tuple] = []  # (u, v, r, h, R, G, B, lump phase 1, 2, noise seed); see tree_street
        self.tree_street: list[bool] = []
        self.spare_trees: list[tuple] = []
        self.spare_street: list[bool] = []
        self.slots: list[tuple[float, float, float, int]] = []  # (u, v, heading_uv_rad, kind 0 kerb / 1 lot / 2 driveway)
        self.landmarks: dict[str, np.ndarray] = {}
        self.tallest_m = 0.0
        self.park_polys: list[np.ndarray] = []
        style = _rng(config.seed, _S_STREETS, 1)
        self.style_us = bool(style.random() < 0.6)  # yellow centre lines (else European white)
        self.zebra = bool(style.random() < 0.7)  # zebra crosswalks (else two transverse lines)

    # -- trees and parking, recorded here, drawn per epoch
    def tree(self, uv: np.ndarray, r: float, h: float, street: bool = False, rgb: Any = None, spare: bool = False) -> None:
        rng = self.rng
        col = _TREE_RGB[rng.integers(len(_TREE_RGB))] if rgb is None else np.asarray(rgb, np.float32)
        col = _jitter(rng, col, 0.08)
        row = (float(uv[0]), float(uv[1]), float(r), float(h), *col.tolist(), *rng.uniform(0, 2 * math.pi, 3).tolist())
        (self.spare_trees if spare else self.trees).append(row)
        (self.spare_street if spare else self.tree_street).append(street)

    # -- buildings
    def building(self, poly_ab: np.ndarray, top_m: float, *, roof: str = "flat", roof_rgb: Any, facade: Any,
                 window: Any, floor_m: float, spacing_m: float, main: tuple | None = None,
                 rise_m: float = 0.0, details: str | None = "normal", rects: list | None = None,
                 bid: int | None = None) -> int | None:
        """Rasterise one building (or one tier of it when bid is given); returns its id."""
        cv = self.cv
        pts = cv.px(self.warp(poly_ab))
        win = cv.window(pts)
        if win is None:
            return bid
        m = cv.mask(win, pts)
        if not m.any():
            return bid
        if bid is None:
            bid = len(self.b_height)
            self.b_height.append(float(top_m))
            self.b_facade.append(np.asarray(facade, np.float32))
            self.b_window.append(np.asarray(window, np.float32))
            self.b_floor.append(float(floor_m))
            self.b_spacing.append(float(spacing_m))
            self.b_pixels.append(0)
        else:
            self.b_height[bid] = max(self.b_height[bid], float(top_m))
        self.b_pixels[bid] += int(m.sum())
        if roof in ("gable", "hip") and main is not None:
            s, t, la, lb = self._local(win, main)
            if roof == "gable":
                dist = np.minimum(t, 1 - t) * lb if la >= lb else np.minimum(s, 1 - s) * la
                half = min(la, lb) / 2
            else:
                dist = np.minimum(np.minimum(s, 1 - s) * la, np.minimum(t, 1 - t) * lb)
                half = min(la, lb) / 2
            z = (top_m - rise_m) + rise_m * np.clip(dist / max(half, 1e-3), 0.0, 1.0)
            cv.put(win, m, M.BUILDING, np.clip(roof_rgb, 0, 255), z.astype(np.float32), bid)
        else:
            cv.put(win, m, M.BUILDING, np.clip(roof_rgb, 0, 255), float(top_m), bid)
            if details is not None:
                self._roof_details(win, m, pts, bid, top_m, np.asarray(roof_rgb, np.float32), rects or [], details)
        return bid

    def _local(self, win: tuple, rect: tuple) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Grid-rectangle coordinates (s, t in [0, 1]) of a window's cells via the local affine."""
        a0, a1, b0, b1 = rect
        o, pa, pb = self.warp(np.array([[a0, b0], [a1, b0], [a0, b1]]))
        ex, ey = pa - o, pb - o
        inv = np.linalg.inv(np.array([[ex[0], ey[0]], [ex[1], ey[1]]]))
        u, v = self.cv.cell_uv(win)
        du, dv = u - np.float32(o[0]), v - np.float32(o[1])
        s = np.float32(inv[0, 0]) * du + np.float32(inv[0, 1]) * dv
        t = np.float32(inv[1, 0]) * du + np.float32(inv[1, 1]) * dv
        return s, t, float(np.linalg.norm(ex)), float(np.linalg.norm(ey))

    def _roof_details(self, win: tuple, m: np.ndarray, pts: np.ndarray, bid: int, top: float,
                      roof_rgb: np.ndarray, rects: list, style: str) -> None:
        cv, rng = self.cv, self.rng
        r0, _, c0, _ = win
        area = float(m.sum()) * cv.gsd ** 2
        # Parapet: a rim slightly above the roof, inside the footprint.
        if style != "plain" and area > 60 and rng.random() < 0.85:
            rim = np.zeros(m.shape, np.uint8)
            t = max(1, int(round(rng.uniform(0.3, 0.6) / cv.gsd)))
            cv2.polylines(rim, [pts - np.array([c0 * _FIX, r0 * _FIX], np.int32)], True, 1, 2 * t, cv2.LINE_8, _FIX_BITS)
            rim = rim.view(bool) & m
            tone = rng.uniform(0.8, 1.2)
            cv.put(win, rim, M.BUILDING, np.clip(roof_rgb * tone, 0, 255), float(top + rng.uniform(0.5, 1.2)), bid)
        if not rects:
            return

        def box(rect: tuple, w: float, d: float, margin: float = 1.2) -> tuple | None:
            a0, a1, b0, b1 = rect
            if a1 - a0 < w + 2 * margin or b1 - b0 < d + 2 * margin:
                return None
            a = rng.uniform(a0 + margin, a1 - margin - w)
            b = rng.uniform(b0 + margin, b1 - margin - d)
            return a, a + w, b, b + d

        def place(rect: tuple | None, dh: float, rgb: Any, shape: str = "box") -> None:
            if rect is None:
                return
            if shape == "round":
                a0, a1, b0, b1 = rect
                ang = np.linspace(0, 2 * math.pi, 16, endpoint=False)
                poly = np.stack([(a0 + a1) / 2 + (a1 - a0) / 2 * np.cos(ang), (b0 + b1) / 2 + (b1 - b0) / 2 * np.sin(ang)], 1)
            else:
                poly = _rect_poly(*rect, step=50.0)
            p = cv.px(self.warp(poly))
            mm = np.zeros(m.shape, np.uint8)
            cv2.fillPoly(mm, [p - np.array([c0 * _FIX, r0 * _FIX], np.int32)], 1, cv2.LINE_8, _FIX_BITS)
            mm = mm.view(bool) & m
            cv.put(win, mm, M.BUILDING, np.clip(rgb, 0, 255), float(top + dh), bid)

        big = max(rects, key=lambda r: (r[1] - r[0]) * (r[3] - r[2]))
        if style == "industrial":
            n_sky = int(rng.integers(0, 6))
            a0, a1, b0, b1 = big
            for k in range(n_sky):  # skylight rows
                b = b0 + (k + 1) * (b1 - b0) / (n_sky + 1)
                place((a0 + 3, a1 - 3, b - 0.8, b + 0.8), 0.4, (205, 215, 222))
        if area > 250 and rng.random() < 0.55:  # penthouse / machine room
            a0, a1, b0, b1 = big
            w, d = rng.uniform(0.2, 0.4) * (a1 - a0), rng.uniform(0.2, 0.4) * (b1 - b0)
            place(box(big, max(w, 3.0), max(d, 3.0)), rng.uniform(2.8, 5.0), roof_rgb * rng.uniform(0.7, 1.15))
        if style in ("normal", "industrial", "tower"):
            for _ in range(int(min(rng.poisson(area / 220.0), 14))):  # HVAC boxes
                g = rng.uniform(150, 215)
                place(box(rects[int(rng.integers(len(rects)))], rng.uniform(1.0, 4.0), rng.uniform(1.0, 3.0)),
                      rng.uniform(0.8, 2.4), (g, g, g + rng.uniform(-4, 8)))
        if style == "normal" and rng.random() < 0.12:  # water tank on legs
            r = rng.uniform(1.4, 2.2)
            place(box(big, 2 * r, 2 * r), rng.uniform(4.5, 7.0), (118, 84, 58), "round")
        if style in ("normal", "industrial") and rng.random() < 0.1:  # solar panel field
            a0, a1, b0, b1 = big
            rows = int(rng.integers(2, 6))
            for k in range(rows):
                b = b0 + 2 + k * 2.4
                if b + 1.6 < b1 - 2:
                    place((a0 + 2, a0 + 2 + 0.6 * (a1 - a0 - 4), b, b + 1.6), 0.4, (36, 48, 78))
        if style == "tower" and rng.random() < 0.15:  # helipad
            r = rng.uniform(5.0, 7.5)
            rect = box(big, 2 * r, 2 * r, 0.6)
            place(rect, 0.3, (70, 72, 76), "round")

    # -- blocks
    def paint_blocks(self) -> None:
        for blk in self.layout.blocks:
            a0, a1, b0, b1 = blk.rect
            if a1 - a0 < 4 or b1 - b0 < 4:
                continue
            poly = _rect_poly(*blk.rect)
            kind = blk.kind
            if kind == "park":
                self.park(blk)
            elif kind == "plaza":
                self.plaza_block(blk)
            elif kind == "parking":
                self.cv.fill([self.warp(poly)], M.ROAD, _jitter(self.rng, (88, 88, 90), 0.1))
                self.parking_lot(blk.rect)
            elif kind == "industrial":
                self.industrial(blk)
            else:
                ground = (_GRASS_RGB, M.GRASS) if kind == "residential" else ((150, 147, 140), M.PLAZA)
                self.cv.fill([self.warp(poly)], ground[1], _jitter(self.rng, ground[0], 0.08))
                self.lots(blk)

    def lots(self, blk: _Block) -> None:
        rng, kind, kappa = self.rng, blk.kind, blk.centrality
        a0, a1, b0, b1 = blk.rect
        W, D = a1 - a0, b1 - b0
        depth = {"residential": rng.uniform(18, 30), "midrise": rng.uniform(16, 26), "downtown": rng.uniform(20, 36)}[kind]
        front = {"residential": (6.0, 13.0), "midrise": (10.0, 28.0), "downtown": (18.0, 48.0)}[kind]
        lots: list[tuple[float, float, float, float, int]] = []
        long_a = W >= D
        short = D if long_a else W
        if short < 2 * depth + (40 if kind == "residential" else 8):
            depth = short / 2 if short >= 16 else short  # back-to-back lots, yards meeting mid-block
        # Long sides: strips of `depth` over the full length; short sides between them.
        if long_a:
            strips = [((a0, a1, b0, b0 + depth), 2)]
            if depth < short:
                strips.append(((a0, a1, b1 - depth, b1), 3))
            if short > 2 * depth + 8:
                strips += [((a0, a0 + depth, b0 + depth, b1 - depth), 0), ((a1 - depth, a1, b0 + depth, b1 - depth), 1)]
        else:
            strips = [((a0, a0 + depth, b0, b1), 0)]
            if depth < short:
                strips.append(((a1 - depth, a1, b0, b1), 1))
            if short > 2 * depth + 8:
                strips += [((a0 + depth, a1 - depth, b0, b0 + depth), 2), ((a0 + depth, a1 - depth, b1 - depth, b1), 3)]
        for (sa0, sa1, sb0, sb1), f in strips:
            along_a = f in (2, 3)
            length = (sa1 - sa0) if along_a else (sb1 - sb0)
            if length < 3:
                continue
            cuts = _cuts(rng, length, *front)
            for x0, x1 in zip(cuts[:-1], cuts[1:]):
                if along_a:
                    lots.append((sa0 + x0, sa0 + x1, sb0, sb1, f))
                else:
                    lots.append((sa0, sa1, sb0 + x0, sb0 + x1, f))
        for lot in lots:
            self.lot(lot, kind, kappa)
        # Interior of the ring: yards, courtyard trees, or an annex downtown.
        if short > 2 * depth + 8:
            inner = (a0 + depth, a1 - depth, b0 + depth, b1 - depth)
            ia0, ia1, ib0, ib1 = inner
            if kind == "downtown" and rng.random() < 0.6 and min(ia1 - ia0, ib1 - ib0) > 8:
                h = rng.uniform(2, 5) * 3.6
                self._flat_building((ia0 + 2, ia1 - 2, ib0 + 2, ib1 - 2), h, kind)
            else:
                if kind != "residential" and rng.random() < 0.5:
                    self.cv.fill([self.warp(_rect_poly(*inner))], M.GRASS, _jitter(rng, _GRASS_RGB, 0.1))
                for _ in range(int(rng.poisson((ia1 - ia0) * (ib1 - ib0) / (130.0 if kind == "residential" else 250.0)))):
                    p = np.array([rng.uniform(ia0 + 2, ia1 - 2), rng.uniform(ib0 + 2, ib1 - 2)])
                    self.tree(self.warp(p), rng.uniform(2.0, 4.5), rng.uniform(5, 12))

    def lot(self, lot: tuple, kind: str, kappa: float) -> None:
        rng, cfg = self.rng, self.config
        la0, la1, lb0, lb1, f = lot
        ldepth = (la1 - la0) if f in (0, 1) else (lb1 - lb0)
        lfront = (lb1 - lb0) if f in (0, 1) else (la1 - la0)

        def sub(d0: float, d1: float, s0: float, s1: float) -> tuple[float, float, float, float]:
            if f == 0:
                return la0 + d0, la0 + d1, lb0 + s0, lb0 + s1
            if f == 1:
                return la1 - d1, la1 - d0, lb0 + s0, lb0 + s1
            if f == 2:
                return la0 + s0, la0 + s1, lb0 + d0, lb0 + d1
            return la0 + s0, la0 + s1, lb1 - d1, lb1 - d0

        u = rng.random()
        if kind != "downtown" and u < 0.03:  # pocket park
            self.cv.fill([self.warp(_rect_poly(la0, la1, lb0, lb1))], M.GRASS, _jitter(rng, _GRASS_RGB, 0.12))
            for _ in range(1 + int(rng.poisson(ldepth * lfront / 120.0))):
                p = np.array([rng.uniform(la0 + 1.5, la1 - 1.5), rng.uniform(lb0 + 1.5, lb1 - 1.5)])
                self.tree(self.warp(p), rng.uniform(2.5, 5.0), rng.uniform(6, 14))
            return
        if kind == "midrise" and u < 0.07 and ldepth > 14 and lfront > 10:  # surface car park
            self.cv.fill([self.warp(_rect_poly(la0, la1, lb0, lb1))], M.ROAD, _jitter(rng, (92, 92, 94), 0.1))
            self.parking_lot((la0, la1, lb0, lb1))
            return
        if kind != "downtown" and u < 0.085:  # vacant lot: dirt and gravel
            self.cv.fill([self.warp(_rect_poly(la0, la1, lb0, lb1))], M.PLAZA, _jitter(rng, (150, 132, 104), 0.1))
            return
        if kind == "residential":
            setback = rng.uniform(1.0, 5.0) if rng.random() < 0.7 else 0.0
            bdepth = min(ldepth - setback - 1.5, rng.uniform(9, 15))
            g0 = rng.uniform(0.8, 2.5) if rng.random() < 0.5 else 0.0
            g1 = rng.uniform(0.8, 2.5) if rng.random() < 0.5 else 0.0
            if lfront - g0 - g1 < 5 or bdepth < 5:
                g0 = g1 = 0.0
                bdepth = max(bdepth, min(ldepth, 6.0))
            rect = sub(setback, setback + bdepth, g0, lfront - g1)
            floors = int(rng.choice([1, 2, 2, 2, 3, 3, 4]))
            floor_m = rng.uniform(2.8, 3.3)
            roof = str(rng.choice(["gable", "hip", "flat"], p=[0.55, 0.2, 0.25]))
            if roof == "flat":
                self._flat_building(rect, floors * floor_m + rng.uniform(0.3, 0.8), kind, floor_m=floor_m, style="plain")
            else:
                half = min(rect[1] - rect[0], rect[3] - rect[2]) / 2
                rise = min(half * math.tan(math.radians(rng.uniform(22, 40))), 0.6 * floors * floor_m)
                self.building(_rect_poly(*rect, step=50), floors * floor_m + rise, roof=roof, main=rect, rise_m=rise,
                              roof_rgb=_jitter(rng, _PITCHED_ROOF_RGB[rng.integers(len(_PITCHED_ROOF_RGB))], 0.1),
                              facade=_jitter(rng, _FACADE_RGB[rng.integers(len(_FACADE_RGB))], 0.08),
                              window=(rng.uniform(40, 70),) * 3, floor_m=floor_m, spacing_m=rng.uniform(2.4, 4.0))
            yard_d = ldepth - setback - bdepth
            if yard_d > 3:
                yard = sub(setback + bdepth, ldepth, 0, lfront)
                fence = _jitter(rng, (120, 110, 96), 0.15)
                self.cv.stroke([self.warp(_rect_poly(*yard, step=10))], 0.15, None, fence, closed=True, ground=False)
                self._yard(sub, setback + bdepth, ldepth, lfront)
            if max(g0, g1) > 2.2 and setback > 0:  # driveway along the wider side gap
                s0, s1 = (0.2, g0 - 0.2) if g0 >= g1 else (lfront - g1 + 0.2, lfront - 0.2)
                drive = sub(0, setback + bdepth + min(4.0, max(yard_d - 1, 0)), s0, s1)
                self.cv.fill([self.warp(_rect_poly(*drive, step=50))], M.PLAZA, _jitter(rng, (160, 158, 152), 0.06))
                if rng.random() < 0.5:
                    d = sub(0.3, 5.3, s0, s1)
                    p, q = self.warp(np.array([[(d[0] + d[1]) / 2, (d[2] + d[3]) / 2],
                                               [(d[0] + d[1]) / 2 + 0.5 * (f == 0) - 0.5 * (f == 1),
                                                (d[2] + d[3]) / 2 + 0.5 * (f == 2) - 0.5 * (f == 3)]]))
                    if (s1 - s0) > 2.0:
                        self.slots.append((float(p[0]), float(p[1]), math.atan2(q[1] - p[1], q[0] - p[0]), 2))
            return
        gap = rng.random() < (0.15 if kind == "midrise" else 0.08)
        g0 = rng.uniform(1.0, 3.0) if gap and lfront > 10 else 0.0
        if kind == "midrise":
            bdepth = min(ldepth, rng.uniform(14, 24))
            rect = sub(0, bdepth, g0, lfront)
            floors = int(np.clip(round(rng.lognormal(math.log(4 + 4 * kappa), 0.35)), 3, 16))
            floor_m = rng.uniform(3.1, 3.6)
            if rng.random() < 0.12 and bdepth > 8 and lfront > 6:
                half = min(rect[1] - rect[0], rect[3] - rect[2]) / 2
                rise = half * math.tan(math.radians(rng.uniform(25, 40)))
                self.building(_rect_poly(*rect, step=50), floors * floor_m + rise, roof="gable", main=rect, rise_m=rise,
                              roof_rgb=_jitter(rng, _PITCHED_ROOF_RGB[rng.integers(len(_PITCHED_ROOF_RGB))], 0.1),
                              facade=_jitter(rng, _FACADE_RGB[rng.integers(len(_FACADE_RGB))], 0.08),
                              window=(rng.uniform(40, 70),) * 3, floor_m=floor_m, spacing_m=rng.uniform(2.4, 3.6))
                return
            if rng.random() < 0.2 and lfront - g0 > 16 and bdepth > 14:  # L-shape: a rear corner left open
                cut_d, cut_s = rng.uniform(0.35, 0.55) * bdepth, rng.uniform(0.3, 0.5) * (lfront - g0)
                front_rect = sub(0, bdepth - cut_d, g0, lfront)
                wing = sub(bdepth - cut_d, bdepth, g0, lfront - cut_s) if rng.random() < 0.5 else sub(bdepth - cut_d, bdepth, g0 + cut_s, lfront)
                self._flat_building(front_rect, floors * floor_m, kind, floor_m=floor_m, extra=[wing])
                return
            self._flat_building(rect, floors * floor_m + rng.uniform(0.3, 1.0), kind, floor_m=floor_m)
            return
        # downtown
        rect = sub(0, ldepth, g0, lfront)
        area = (rect[1] - rect[0]) * (rect[3] - rect[2])
        if area > 600 and rng.random() < cfg.tower_share * (0.4 + kappa):
            self.tower(rect, kappa)
            return
        floors = int(np.clip(round(rng.lognormal(math.log(6 + 10 * kappa), 0.45)), 3, 25))
        self._flat_building(rect, floors * rng.uniform(3.5, 4.2) + rng.uniform(0.5, 1.5), kind)

    def _yard(self, sub: Any, d0: float, d1: float, width: float) -> None:
        """A back yard between depths d0..d1 of a lot: patio, pool, shed, trees."""
        rng = self.rng
        depth = d1 - d0
        if depth > 5 and rng.random() < 0.3:  # patio behind the house
            pd = min(depth - 1, rng.uniform(2.5, 4.5))
            self.cv.fill([self.warp(_rect_poly(*sub(d0, d0 + pd, 0.5, width - 0.5), step=50))], M.PLAZA,
                         _jitter(rng, [(176, 162, 140), (150, 148, 144), (168, 120, 96)][rng.integers(3)], 0.06))
            d0 += pd
            depth -= pd
        if depth > 11 and width > 7 and rng.random() < 0.1:  # pool with a paved border
            pl, pw = min(depth - 4, rng.uniform(7, 11)), min(width - 3, rng.uniform(3.5, 5.5))
            x = d0 + rng.uniform(1.5, depth - pl - 1.5)
            y = rng.uniform(1.2, width - pw - 1.2)
            self.cv.fill([self.warp(_rect_poly(*sub(x - 0.8, x + pl + 0.8, y - 0.8, y + pw + 0.8), step=50))], M.PLAZA, (200, 196, 186))
            self.cv.fill([self.warp(_rect_poly(*sub(x, x + pl, y, y + pw), step=50))], M.WATER,
                         _jitter(rng, (86, 172, 200), 0.05))
            return
        if depth > 8 and rng.random() < 0.15:  # shed / garage at the back
            sd, sw = rng.uniform(2.5, 5.5), min(width - 1, rng.uniform(2.5, 6.0))
            y = rng.uniform(0.3, max(0.31, width - sw - 0.3))
            self._flat_building(sub(d1 - sd - 0.5, d1 - 0.5, y, y + sw), rng.uniform(2.3, 3.2), "residential",
                                style="plain", floor_m=2.6)
        for _ in range(int(rng.poisson(0.25 + depth * width / 160.0))):
            x, y = rng.uniform(d0 + 1.5, max(d0 + 1.6, d1 - 1.5)), rng.uniform(1.0, max(1.1, width - 1.0))
            r = sub(x, x, y, y)
            self.tree(self.warp(np.array([r[0], r[2]])), rng.uniform(1.8, 4.2), rng.uniform(4, 11))

    def _facade(self, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
        rng = self.rng
        if kind == "tower" or (kind == "downtown" and rng.random() < 0.35):
            return (_jitter(rng, _GLASS_RGB[rng.integers(len(_GLASS_RGB))], 0.08),
                    _jitter(rng, (rng.uniform(60, 140),) * 3, 0.1), rng.uniform(1.4, 2.2))
        if kind == "industrial":
            return _jitter(rng, _FACADE_RGB[rng.integers(len(_FACADE_RGB))], 0.08), np.array([60, 64, 70.0]), 0.0 if rng.random() < 0.6 else 6.0
        return (_jitter(rng, _FACADE_RGB[rng.integers(len(_FACADE_RGB))], 0.08),
                _jitter(rng, (rng.uniform(35, 75),) * 3, 0.1), rng.uniform(2.2, 3.8))

    def _flat_building(self, rect: tuple, top: float, kind: str, *, floor_m: float | None = None,
                       style: str | None = None, extra: list | None = None, bid: int | None = None,
                       roof_rgb: Any = None) -> int | None:
        rng = self.rng
        facade, window, spacing = self._facade(kind)
        if roof_rgb is None:
            roof_rgb = _jitter(rng, _FLAT_ROOF_RGB[rng.integers(len(_FLAT_ROOF_RGB))], 0.08)
            if rng.random() < 0.04:
                roof_rgb = _jitter(rng, (96, 126, 70), 0.1)  # green roof
        rects = [rect] + list(extra or [])
        if extra:
            poly = _union_poly(rect, extra[0])
        else:
            poly = _rect_poly(*rect, step=50)
        style = style or ("industrial" if kind == "industrial" else "tower" if kind == "tower" else "normal")
        return self.building(poly, top, roof="flat", roof_rgb=roof_rgb, facade=facade, window=window,
                             floor_m=floor_m or rng.uniform(3.2, 4.0), spacing_m=spacing, rects=rects,
                             details=style, bid=bid)

    def tower(self, lot: tuple, kappa: float) -> None:
        rng, cfg = self.rng, self.config
        a0, a1, b0, b1 = lot
        h_min = 55.0 * (0.7 + 0.5 * kappa)
        height = float(min(cfg.tower_max_height_m, h_min * rng.random() ** (-1 / 1.7)))
        podium = rng.random() < 0.6
        inset = rng.uniform(3, 7) if podium else rng.uniform(0, 2)
        core = (a0 + inset, a1 - inset, b0 + inset, b1 - inset)
        if min(core[1] - core[0], core[3] - core[2]) < 12:
            core, podium = lot, False
        if podium:
            self._flat_building(lot, rng.uniform(10, 26), "downtown")
        roof = _jitter(rng, _FLAT_ROOF_RGB[rng.integers(len(_FLAT_ROOF_RGB))], 0.08)
        if rng.random() < 0.15:  # round tower
            ca0, ca1, cb0, cb1 = core
            r = min(ca1 - ca0, cb1 - cb0) / 2
            ang = np.linspace(0, 2 * math.pi, 48, endpoint=False)
            cx, cy = (ca0 + ca1) / 2, (cb0 + cb1) / 2
            poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
            facade, window, spacing = self._facade("tower")
            q = r / math.sqrt(2)
            self.building(poly, height, roof="flat", roof_rgb=roof, facade=facade, window=window, floor_m=3.8,
                          spacing_m=spacing, rects=[(cx - q, cx + q, cy - q, cy + q)], details="tower")
            self.landmark_height(height, np.array([cx, cy]))
            return
        tiers = int(rng.choice([1, 1, 2, 3])) if height > 80 else 1
        bid = None
        rect = core
        for k in range(tiers):
            top = height * (k + 1) / tiers if tiers > 1 else height
            style = "tower" if k == tiers - 1 else "plain"
            bid = self._flat_building(rect, top, "tower", floor_m=3.8, style=style, bid=bid, roof_rgb=roof)
            step = rng.uniform(2.0, 4.5)
            nxt = (rect[0] + step, rect[1] - step, rect[2] + step, rect[3] - step)
            if min(nxt[1] - nxt[0], nxt[3] - nxt[2]) < 10:
                break
            rect = nxt
        self.landmark_height(height, np.array([(core[0] + core[1]) / 2, (core[2] + core[3]) / 2]))

    def landmark_height(self, height: float, ab: np.ndarray) -> None:
        if height > self.tallest_m:
            self.tallest_m = height
            self.landmarks["tallest_building_uv"] = self.warp(ab)

    def industrial(self, blk: _Block) -> None:
        rng = self.rng
        a0, a1, b0, b1 = blk.rect
        self.cv.fill([self.warp(_rect_poly(*blk.rect))], M.ROAD, _jitter(rng, (104, 103, 100), 0.1))
        long_a = (a1 - a0) >= (b1 - b0)
        n = int(rng.integers(1, 4))
        cuts = np.linspace(0, 1, n + 1)
        for k in range(n):
            if long_a:
                part = (a0 + cuts[k] * (a1 - a0), a0 + cuts[k + 1] * (a1 - a0), b0, b1)
            else:
                part = (a0, a1, b0 + cuts[k] * (b1 - b0), b0 + cuts[k + 1] * (b1 - b0))
            inset = rng.uniform(3, 10)
            rect = (part[0] + inset, part[1] - inset, part[2] + inset, part[3] - inset)
            if min(rect[1] - rect[0], rect[3] - rect[2]) < 10:
                continue
            roof = _jitter(rng, [(205, 205, 200), (185, 185, 182), (160, 162, 165), (140, 120, 100)][rng.integers(4)], 0.05)
            self._flat_building(rect, rng.uniform(6, 14), "industrial", roof_rgb=roof)
            if rng.random() < 0.5:
                yard = (part[0] + 1, part[1] - 1, part[2] + 1, part[2] + max(inset - 1, 1.5))
                self.parking_lot(yard)

    def parking_lot(self, rect: tuple) -> None:
        """Stall rows (2.6 m x 5.2 m, 6.5 m aisles) along the lot's long axis, slots recorded."""
        cv = self.cv
        a0, a1, b0, b1 = rect
        long_a = (a1 - a0) >= (b1 - b0)
        L, S = ((a1 - a0), (b1 - b0)) if long_a else ((b1 - b0), (a1 - a0))
        lines = []
        row_start = 1.0
        while row_start + 5.2 <= S - 0.5:
            n_st = int((L - 2.0) // 2.6)
            for k in range(n_st + 1):
                x = 1.0 + k * 2.6
                seg = np.array([[x, row_start], [x, row_start + 5.2]])
                lines.append(seg)
                if k < n_st:
                    self._slot(rect, long_a, x + 1.3, row_start + 2.6)
            row_start += 5.2 + (6.5 if (len(lines) // max(n_st + 1, 1)) % 2 == 1 else 0.0)
        paint = []
        for seg in lines:
            ab = np.stack([a0 + seg[:, 0], b0 + seg[:, 1]], 1) if long_a else np.stack([a0 + seg[:, 1], b0 + seg[:, 0]], 1)
            paint.append(self.warp(ab))
        cv.stroke(paint, 0.12, M.MARKING, (222, 222, 215), ground=False)

    def _slot(self, rect: tuple, long_a: bool, x: float, y: float) -> None:
        a0, _, b0, _ = rect
        ab = np.array([a0 + x, b0 + y]) if long_a else np.array([a0 + y, b0 + x])
        p = self.warp(ab)
        q = self.warp(ab + (np.array([0.0, 1.0]) if long_a else np.array([1.0, 0.0])))
        heading = math.atan2(q[1] - p[1], q[0] - p[0]) + (math.pi if self.rng.random() < 0.5 else 0.0)
        self.slots.append((float(p[0]), float(p[1]), heading, 1))

    def park(self, blk: _Block) -> None:
        rng, cv, cfg = self.rng, self.cv, self.config
        a0, a1, b0, b1 = blk.rect
        cv.fill([self.warp(_rect_poly(*blk.rect))], M.GRASS, _jitter(rng, _GRASS_RGB, 0.06))
        path_rgb = _jitter(rng, [(178, 166, 140), (120, 118, 114), (168, 160, 150)][rng.integers(3)], 0.05)
        pw = rng.uniform(2.5, 4.0)
        cv.stroke([self.warp(_rect_poly(a0 + 4, a1 - 4, b0 + 4, b1 - 4, step=8))], pw, M.SIDEWALK, path_rgb, closed=True)
        W, D = a1 - a0, b1 - b0
        # A pond and a sports ground.
        if rng.random() < 0.65 and min(W, D) > 60:
            c = np.array([rng.uniform(a0 + 0.3 * W, a1 - 0.3 * W), rng.uniform(b0 + 0.3 * D, b1 - 0.3 * D)])
            ra, rb = rng.uniform(0.1, 0.2) * W, rng.uniform(0.1, 0.2) * D
            ang = np.linspace(0, 2 * math.pi, 64, endpoint=False)
            wob = 1 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.06 * np.sin(5 * ang + rng.uniform(0, 6))
            poly = np.stack([c[0] + ra * wob * np.cos(ang), c[1] + rb * wob * np.sin(ang)], 1)
            cv.stroke([self.warp(poly)], 1.2, M.SIDEWALK, (170, 160, 140), closed=True)
            cv.fill([self.warp(poly)], M.WATER, _jitter(rng, (52, 84, 92), 0.08))
        if rng.random() < 0.75:
            kind = rng.choice(["tennis", "field", "court"])
            w, d, col = {"tennis": (23.8, 11.0, [(70, 130, 92), (60, 92, 140), (168, 92, 62)][rng.integers(3)]),
                         "field": (min(90.0, 0.5 * W), min(55.0, 0.5 * D), (84, 136, 64)),
                         "court": (28.0, 15.0, (150, 100, 70))}[kind]
            for _ in range(20):
                ca = rng.uniform(a0 + 8 + w / 2, max(a0 + 8 + w / 2, a1 - 8 - w / 2))
                cb = rng.uniform(b0 + 8 + d / 2, max(b0 + 8 + d / 2, b1 - 8 - d / 2))
                rect = (ca - w / 2, ca + w / 2, cb - d / 2, cb + d / 2)
                corners = self.warp(np.array([[rect[0], rect[2]], [rect[1], rect[2]], [rect[1], rect[3]], [rect[0], rect[3]], [ca, cb]]))
                _, mat, _, _ = cv.at(corners)
                if np.all(mat == M.GRASS):
                    margin = 3.0
                    cv.fill([self.warp(_rect_poly(rect[0] - margin, rect[1] + margin, rect[2] - margin, rect[3] + margin))],
                            M.PLAZA if kind != "field" else M.GRASS, np.array(col) * 0.85)
                    cv.fill([self.warp(_rect_poly(*rect))], M.PLAZA if kind != "field" else M.GRASS, col)
                    lines = [self.warp(_rect_poly(*rect, step=5)),
                             self.warp(np.array([[ca, rect[2]], [ca, rect[3]]]))]
                    cv.stroke(lines[:1], 0.12, M.MARKING, (235, 235, 230), closed=True, ground=False)
                    cv.stroke(lines[1:], 0.12, M.MARKING, (235, 235, 230), ground=False)
                    break
        # Winding paths across the park.
        for _ in range(int(rng.integers(2, 5))):
            side = rng.integers(4, size=2)
            p = [_edge_point(blk.rect, int(s), 4.0, rng.uniform(0.2, 0.8)) for s in side]
            ctrl = np.array([rng.uniform(a0 + 0.2 * W, a1 - 0.2 * W), rng.uniform(b0 + 0.2 * D, b1 - 0.2 * D)])
            t = np.linspace(0, 1, 40)[:, None]
            curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * ctrl + t ** 2 * p[1]
            uv = self.warp(curve)
            _, mat, _, _ = cv.at(uv)
            keep = mat != M.WATER
            if keep.all():
                cv.stroke([uv], pw * rng.uniform(0.7, 1.0), M.SIDEWALK, path_rgb)
        # Trees in clumps, on lawn only.
        area = W * D
        n_trees = int(rng.poisson(cfg.park_tree_density * area))
        n_clumps = max(1, n_trees // 8)
        centres = np.stack([rng.uniform(a0 + 6, a1 - 6, n_clumps), rng.uniform(b0 + 6, b1 - 6, n_clumps)], 1)
        pick = centres[rng.integers(n_clumps, size=n_trees)] + rng.normal(0, 12, (n_trees, 2))
        pick[:, 0] = np.clip(pick[:, 0], a0 + 3, a1 - 3)
        pick[:, 1] = np.clip(pick[:, 1], b0 + 3, b1 - 3)
        uv = self.warp(pick)
        _, mat, _, _ = cv.at(uv)
        for p, mt in zip(uv, mat):
            if mt == M.GRASS:
                self.tree(p, rng.uniform(3.0, 6.5), rng.uniform(8, 19))
        spare = self.warp(np.stack([rng.uniform(a0 + 5, a1 - 5, n_trees // 4 + 1), rng.uniform(b0 + 5, b1 - 5, n_trees // 4 + 1)], 1))
        _, mat, _, _ = cv.at(spare)
        for p, mt in zip(spare, mat):
            if mt == M.GRASS:
                self.tree(p, rng.uniform(1.5, 3.0), rng.uniform(4, 8), spare=True)
        self.park_polys.append(self.warp(_rect_poly(*blk.rect)))

    def plaza_block(self, blk: _Block) -> None:
        """A plaza of at most ~90 m along the block, buildings on the rest of a long block."""
        rng = self.rng
        a0, a1, b0, b1 = blk.rect
        long_a = (a1 - a0) >= (b1 - b0)
        L = (a1 - a0) if long_a else (b1 - b0)
        if L <= 110:
            self.plaza(blk)
            return
        length = rng.uniform(60, 90)
        x0 = rng.uniform(0.2, 0.8) * (L - length)
        parts = [(0.0, x0 - 1.0), (x0, x0 + length), (x0 + length + 1.0, L)]
        for k, (p0, p1) in enumerate(parts):
            rect = (a0 + p0, a0 + p1, b0, b1) if long_a else (a0, a1, b0 + p0, b0 + p1)
            if k == 1:
                self.plaza(_Block(rect, "plaza", blk.centrality))
            elif p1 - p0 > 12:
                sub = _Block(rect, "downtown" if blk.centrality > 0.5 else "midrise", blk.centrality)
                self.cv.fill([self.warp(_rect_poly(*rect))], M.PLAZA, _jitter(rng, (150, 147, 140), 0.08))
                self.lots(sub)

    def plaza(self, blk: _Block) -> None:
        rng, cv = self.rng, self.cv
        a0, a1, b0, b1 = blk.rect
        base = _jitter(rng, [(196, 188, 172), (170, 168, 162), (186, 170, 150)][rng.integers(3)], 0.04)
        pts = cv.px(self.warp(_rect_poly(*blk.rect)))
        win = cv.window(pts)
        if win is None:
            return
        m = cv.mask(win, pts)
        s, t, la, lb = self._local(win, blk.rect)
        tile = rng.uniform(3.0, 6.0)
        check = ((np.floor(s * la / tile) + np.floor(t * lb / tile)) % 2).astype(np.float32)
        ring = np.hypot((s - 0.5) * la, (t - 0.5) * lb)
        bands = ((ring // rng.uniform(6, 10)) % 2).astype(np.float32)
        tone = 1.0 + 0.05 * (check - 0.5) + 0.04 * (bands - 0.5)
        rgb = np.clip(base[None, None, :] * tone[..., None], 0, 255).astype(np.uint8)
        cv.put(win, m, M.PLAZA, rgb, 0.0, -1)
        c = np.array([(a0 + a1) / 2, (b0 + b1) / 2])
        r = min(a1 - a0, b1 - b0) * rng.uniform(0.08, 0.14)
        ang = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        circ = lambda rr: self.warp(np.stack([c[0] + rr * np.cos(ang), c[1] + rr * np.sin(ang)], 1))  # noqa: E731
        cv.fill([circ(r + 1.0)], M.PLAZA, base * 0.8)
        cv.fill([circ(r)], M.WATER, (70, 118, 132))
        if rng.random() < 0.6:  # monument in the fountain
            self.building(_rect_poly(c[0] - 1.2, c[0] + 1.2, c[1] - 1.2, c[1] + 1.2, step=50), rng.uniform(12, 30),
                          roof_rgb=(150, 146, 140), facade=(170, 165, 155), window=(170, 165, 155), floor_m=3.0,
                          spacing_m=0.0, details=None)
        for inset in (4.0,):
            per = _rect_poly(a0 + inset, a1 - inset, b0 + inset, b1 - inset, step=rng.uniform(7, 10))
            for p in per:
                self.tree(self.warp(p), rng.uniform(2.0, 3.5), rng.uniform(6, 10))
        self.landmarks["plaza_centre_uv"] = self.warp(c)

    # -- streets
    def paint_streets(self) -> None:
        cv, rng = self.cv, _rng(self.config.seed, _S_STREETS)
        links = self.layout.links
        lhs = self.config.left_hand_traffic
        for link in links:
            st = link.street
            cv.stroke([link.uv], st.width_m + 2 * st.sidewalk_m, M.SIDEWALK, st.sidewalk_rgb, street=True)
        joints = []
        for link in links:  # sidewalk slab joints
            st = link.street
            L = _length(link.uv)
            pitch = rng.uniform(1.5, 2.2)
            s = np.arange(pitch / 2, L, pitch)
            for side in (-1.0, 1.0):
                p0 = _along(link.uv, s, side * (st.width_m / 2 + 0.4))
                p1 = _along(link.uv, s, side * (st.width_m / 2 + st.sidewalk_m))
                joints.extend(np.stack([p0, p1], 1))
        for chunk in range(0, len(joints), 20000):
            cv.stroke(joints[chunk:chunk + 20000], 0.1, None, (128, 126, 122), ground=False)
        for link in links:
            cv.stroke([link.uv], link.street.width_m + 0.5, M.SIDEWALK, _KERB_RGB)
        for link in links:
            g = link.street.asphalt
            cv.stroke([link.uv], link.street.width_m, M.ROAD, (g, g, g + 2))
        for link in links:
            self._street_details(link, rng, lhs)

    def _street_details(self, link: _Link, rng: np.random.Generator, lhs: bool) -> None:
        cv, st, uv = self.cv, link.street, link.uv
        L = _length(uv)
        w = st.width_m
        e0, e1 = link.ends
        s_a = e0["clear"] + 0.8 if e0 else 0.0
        s_b = L - (e1["clear"] + 0.8) if e1 else L
        g = st.asphalt
        # Repair patches (sharp-edged quads) and manholes.
        for _ in range(int(rng.poisson(L / 35.0))):
            s0 = rng.uniform(0, L)
            ln, wd = rng.uniform(1.5, 8.0), rng.uniform(1.0, 3.5)
            lat = rng.uniform(-w / 2 + wd / 2, w / 2 - wd / 2) if w > wd else 0.0
            q = _along(uv, np.array([s0, s0 + ln, s0 + ln, s0]), np.array([lat - wd / 2, lat - wd / 2, lat + wd / 2, lat + wd / 2]))
            tone = g + rng.choice([-1, 1]) * rng.uniform(8, 22)
            cv.fill([q], M.ROAD, (tone, tone, tone + 1))
        lanes_lat = []
        for k in range(st.lanes):
            off = st.median_m / 2 + (k + 0.5) * st.lane_m
            lanes_lat += [off, -off]
        if s_b - s_a > 4:
            s = np.linspace(s_a, s_b, max(2, int((s_b - s_a) / 5)))
            wear = [_along(uv, s, lat) for lat in lanes_lat]
            cv.stroke(wear, 0.9, None, (g - 5, g - 5, g - 4), ground=False)
        for _ in range(int(rng.poisson(L / 40.0))):
            p = _along(uv, np.array([rng.uniform(0, L)]), np.array([rng.uniform(-w / 3, w / 3)]))[0]
            c = cv.px(p)
            cv2.circle(cv.albedo, (int(c[0]), int(c[1])), int(round(0.35 / cv.gsd * _FIX)), (52, 52, 54), -1, cv2.LINE_8, _FIX_BITS)
        # Lines.
        white = np.array([236, 236, 230.0]) * (1 - st.wear) + np.array([g, g, g]) * st.wear
        yellow = np.array([226, 186, 60.0]) * (1 - st.wear) + np.array([g, g, g]) * st.wear
        us = self.style_us
        if st.marked and s_b - s_a > 3:
            def solid(lat: float) -> list[np.ndarray]:
                s = np.linspace(s_a, s_b, max(2, int((s_b - s_a) / 4) + 1))
                return [_along(uv, s, np.full(len(s), lat))]

            def dashed(lat: float, dash: float, gap: float) -> list[np.ndarray]:
                starts = np.arange(s_a, s_b - 0.5, dash + gap)
                ends = np.minimum(starts + dash, s_b)
                return [np.stack([a, b]) for a, b in zip(_along(uv, starts, np.full(len(starts), lat)),
                                                             _along(uv, ends, np.full(len(ends), lat)))]
            if st.median_m == 0:
                if st.lanes == 1:
                    cv.stroke(dashed(0.0, 3.0, 6.0 if us else 3.0), 0.15, M.MARKING, yellow if us else white, ground=False)
                elif us:
                    cv.stroke(solid(-0.18) + solid(0.18), 0.12, M.MARKING, yellow, ground=False)
                else:
                    cv.stroke(solid(0.0), 0.15, M.MARKING, white, ground=False)
            for k in range(1, st.lanes):
                off = st.median_m / 2 + k * st.lane_m
                cv.stroke(dashed(off, 3.0, 9.0) + dashed(-off, 3.0, 9.0), 0.15, M.MARKING, white, ground=False)
            if st.parking and not us:
                edge = w / 2 - _PARKING_LANE_M
                cv.stroke(dashed(edge, 1.0, 1.0) + dashed(-edge, 1.0, 1.0), 0.12, M.MARKING, white, ground=False)
        if st.median_m > 0 and s_b - s_a > 3:
            s = np.linspace(s_a - 0.5, s_b + 0.5, max(2, int((s_b - s_a) / 4) + 1))
            mid = _along(uv, s, np.zeros(len(s)))
            cv.stroke([mid], st.median_m, M.SIDEWALK, _KERB_RGB)
            cv.stroke([mid], st.median_m - 0.6, M.GRASS, _jitter(rng, _GRASS_RGB, 0.08))
            if st.trees:
                for p in _along(uv, np.arange(s_a + 3, s_b - 3, self.config.street_tree_spacing_m), 0.0):
                    self.tree(p, rng.uniform(2.5, 4.0), rng.uniform(6, 12), street=True)
        # Junction approaches: crosswalks, stop lines, parking limits.
        for end, info in ((0, e0), (1, e1)):
            if info is None:
                continue
            d0, d1 = info["kerb"] + 0.4, info["clear"] - 0.3
            if end == 1:
                d0, d1 = L - d1, L - d0
            if info["crosswalk"] and d1 - d0 > 1.5:
                lat = np.arange(-w / 2 + 0.6, w / 2 - 0.3, 1.2)
                if self.zebra:
                    stripes = [np.stack([a, b]) for a, b in zip(_along(uv, np.full(len(lat), d0), lat), _along(uv, np.full(len(lat), d1), lat))]
                    cv.stroke(stripes, 0.55, M.MARKING, white, ground=False)
                else:
                    for d in (d0, d1):
                        cv.stroke([_along(uv, np.full(2, d), np.array([-w / 2, w / 2]))], 0.3, M.MARKING, white, ground=False)
            # Incoming half: right of travel towards this end (left with left-hand traffic).
            sign = (1.0 if end == 1 else -1.0) * (-1.0 if lhs else 1.0)
            ds = (L - (info["clear"] + 0.4)) if end == 1 else info["clear"] + 0.4
            stop = _along(uv, np.full(2, ds), np.array([0.0, sign * (w / 2 - (_PARKING_LANE_M if st.parking else 0.0))]))
            cv.stroke([stop], 0.4, M.MARKING, white, ground=False)
        # Street trees and kerb parking slots.
        if st.trees and st.sidewalk_m >= 2.5:
            sp = self.config.street_tree_spacing_m
            for side in (-1.0, 1.0):
                s = np.arange(s_a + 3 + rng.uniform(0, sp), s_b - 3, sp) + rng.uniform(-0.8, 0.8)
                s = s[(s > 0) & (s < L)]
                for p in _along(uv, s, np.full(len(s), side * (w / 2 + min(1.2, st.sidewalk_m / 2)))):
                    if rng.random() < 0.9:
                        self.tree(p, rng.uniform(2.2, 4.6), rng.uniform(5.5, 13), street=True)
                    else:
                        self.tree(p, rng.uniform(1.2, 2.2), rng.uniform(3.5, 5.5), street=True, spare=True)
        if st.parking:
            for side in (-1.0, 1.0):
                s = np.arange(s_a + 4 + rng.uniform(0, 3), s_b - 5, rng.uniform(5.8, 6.6))
                pts = _along(uv, s, np.full(len(s), side * (w / 2 - 1.15)))
                ahead = _along(uv, s + 0.5, np.full(len(s), side * (w / 2 - 1.15)))
                flip = (side < 0) != lhs
                for p, q in zip(pts, ahead):
                    hd = math.atan2(q[1] - p[1], q[0] - p[0]) + (math.pi if flip else 0.0)
                    self.slots.append((float(p[0]), float(p[1]), hd, 0))

    def traffic_spots(self) -> tuple[np.ndarray, np.ndarray]:
        """Queue positions behind stop lines: (N, 3) u, v, heading and (N,) approach id."""
        rows, group = [], []
        lhs = self.config.left_hand_traffic
        gid = 0
        for link in self.layout.links:
            st, uv = link.street, link.uv
            L = _length(uv)
            for end, info in enumerate(link.ends):
                if info is None:
                    continue
                sign = (1.0 if end == 1 else -1.0) * (-1.0 if lhs else 1.0)
                for k in range(st.lanes):
                    lat = sign * (st.median_m / 2 + (k + 0.5) * st.lane_m)
                    for q in range(4):
                        d = info["clear"] + 3.5 + q * 6.5
                        s = L - d if end == 1 else d
                        if not 0 < s < L:
                            continue
                        p = _along(uv, np.array([s]), np.array([lat]))[0]
                        a = _along(uv, np.array([s + (0.5 if end == 1 else -0.5)]), np.array([lat]))[0]
                        rows.append((p[0], p[1], math.atan2(a[1] - p[1], a[0] - p[0]), q))
                        group.append(gid)
                gid += 1
        if not rows:
            return np.zeros((0, 4)), np.zeros(0, np.int64)
        return np.array(rows), np.array(group, np.int64)


def _union_poly(main: tuple, wing: tuple) -> np.ndarray:
    """Outline of two touching grid rectangles (an L), traced on the union's corner grid."""
    xs = sorted({main[0], main[1], wing[0], wing[1]})
    ys = sorted({main[2], main[3], wing[2], wing[3]})

    def inside(x: float, y: float) -> bool:
        return any(r[0] <= x <= r[1] and r[2] <= y <= r[3] for r in (main, wing))
    # Marching around the cells of the small grid: collect boundary edges, chain them.
    edges = {}
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            cx, cy = (xs[i] + xs[i + 1]) / 2, (ys[j] + ys[j + 1]) / 2
            if not inside(cx, cy):
                continue
            for p, q, nx, ny in (((xs[i], ys[j]), (xs[i + 1], ys[j]), cx, ys[j] - 1e-6),
                                 ((xs[i + 1], ys[j]), (xs[i + 1], ys[j + 1]), xs[i + 1] + 1e-6, cy),
                                 ((xs[i + 1], ys[j + 1]), (xs[i], ys[j + 1]), cx, ys[j + 1] + 1e-6),
                                 ((xs[i], ys[j + 1]), (xs[i], ys[j]), xs[i] - 1e-6, cy)):
                if not inside(nx, ny):
                    edges[p] = q
    start = next(iter(edges))
    out, p = [start], edges[start]
    while p != start and len(out) < 64:
        out.append(p)
        p = edges[p]
    return np.array(out, np.float64)


def _edge_point(rect: tuple, side: int, inset: float, f: float) -> np.ndarray:
    """A point `inset` inside side 0..3 (a0, a1, b0, b1) of a grid rectangle, at fraction f along it."""
    a0, a1, b0, b1 = rect
    return np.array([
        (a0 + inset, b0 + f * (b1 - b0)), (a1 - inset, b0 + f * (b1 - b0)),
        (a0 + f * (a1 - a0), b0 + inset), (a0 + f * (a1 - a0), b1 - inset)][side])


def _cuts(rng: np.random.Generator, length: float, lo: float, hi: float) -> np.ndarray:
    """Positions 0 = x0 < ... < xn = length cutting a strip into lots of widths ~U(lo, hi)."""
    widths = []
    total = 0.0
    while total < length:
        w = rng.uniform(lo, hi)
        widths.append(w)
        total += w
    if len(widths) > 1 and total - length > widths[-1] / 2:
        total -= widths.pop()
    x = np.concatenate([[0.0], np.cumsum(widths)])
    return x * (length / x[-1])


# --------------------------------------------------------------------------- base and epochs


@dataclass
class _Base:
    height: np.ndarray
    material: np.ndarray
    albedo: np.ndarray
    bid: np.ndarray
    buildings: Buildings
    trees: _Trees
    spare: _Trees
    slots: np.ndarray  # (S, 4) u, v, heading, kind
    traffic: np.ndarray  # (N, 4) u, v, heading, queue position
    traffic_group: np.ndarray
    canyon: np.ndarray  # (h, w) float32 canyon depth on the coarse grid
    canyon_cell_m: float
    leaf: np.ndarray  # (512, 512) float32 leaf-clump noise, zero mean
    landmarks_uv: dict[str, np.ndarray]
    extra: dict

    def epoch_scene(self, city: City, epoch: int) -> Scene:
        cfg = city.config
        h, mat, alb = self.height.copy(), self.material.copy(), self.albedo.copy()
        canvas = (h, mat, alb, self.bid)
        rng0 = _rng(cfg.seed, _S_CARS)
        n = len(self.slots)
        occupied0 = rng0.random(n) < cfg.parking_occupancy
        cars0 = _car_specs(rng0, n)
        if epoch == 0:
            occupied, cars = occupied0, cars0
            trees = self.trees
            rng_t = _rng(cfg.seed, _S_CARS, 1)
        else:
            rng_e = _rng(cfg.seed, _S_EPOCH, epoch)
            stay = occupied0 & (rng_e.random(n) >= cfg.epoch_car_turnover)
            free = ~stay
            want = max(0.0, cfg.parking_occupancy * n - stay.sum())  # occupancy stays the same
            arrive = free & (rng_e.random(n) < (want / max(free.sum(), 1)))
            occupied = stay | arrive
            cars = _car_specs(rng_e, n)
            cars = {k: np.where(stay[:, None] if v.ndim == 2 else stay, cars0[k], v) for k, v in cars.items()}
            trees = self._changed_trees(rng_e, cfg)
            rng_t = rng_e
        for k in np.flatnonzero(occupied):
            u, v, hd, _ = self.slots[k]
            c = cars["offset"][k]  # along the kerb, metres
            _draw_car(canvas, city.gsd_m, u + c * math.cos(hd), v + c * math.sin(hd), hd,
                      {kk: vv[k] for kk, vv in cars.items()})
        self._traffic(canvas, city.gsd_m, rng_t, cfg)
        order = np.argsort(trees.height_m, kind="stable")
        for k in order:
            _draw_tree(canvas, city.gsd_m, trees.uv[k], trees.radius_m[k], trees.height_m[k], trees.rgb[k],
                       trees.phase[k], self.leaf)
        for arr in (h, mat, alb):
            arr.setflags(write=False)
        date = (_dt.date(2023, 6, 14) + _dt.timedelta(days=41 * epoch)).isoformat()
        extra = dict(self.extra, epoch=epoch, capture_date=date)
        return Scene(zone=city.zone, origin_e_m=city.origin_e_m, origin_n_m=city.origin_n_m, gsd_m=city.gsd_m,
                     height_m=h, material=mat, albedo=alb, building_id=self.bid, buildings=self.buildings,
                     epoch=epoch, extra=extra)

    def _changed_trees(self, rng: np.random.Generator, cfg: CityConfig) -> _Trees:
        t = self.trees
        n = len(t)
        p = cfg.epoch_tree_change
        keep = rng.random(n) >= p
        rgb = t.rgb.copy()
        recolour = rng.random(n) < p
        autumn = _AUTUMN_RGB[rng.integers(len(_AUTUMN_RGB), size=n)]
        other = _TREE_RGB[rng.integers(len(_TREE_RGB), size=n)]
        mix = np.where((rng.random(n) < 0.5)[:, None], autumn, other)
        rgb[recolour] = mix[recolour] * rng.uniform(0.9, 1.1, (int(recolour.sum()), 1))
        radius = t.radius_m * np.where(rng.random(n) < p, rng.uniform(1.05, 1.2, n), 1.0)
        changed = _Trees(t.uv, radius, t.height_m, rgb.astype(np.float32), t.phase).take(keep)
        s = self.spare
        add = rng.random(len(s)) < min(1.0, p * n / max(len(s), 1))
        added = s.take(add)
        return _Trees(np.concatenate([changed.uv, added.uv]), np.concatenate([changed.radius_m, added.radius_m]),
                      np.concatenate([changed.height_m, added.height_m]), np.concatenate([changed.rgb, added.rgb]),
                      np.concatenate([changed.phase, added.phase]))

    def _traffic(self, canvas: tuple, gsd: float, rng: np.random.Generator, cfg: CityConfig) -> None:
        if len(self.traffic) == 0 or cfg.traffic_density <= 0:
            return
        n_groups = int(self.traffic_group.max()) + 1
        active = rng.random(n_groups) < cfg.traffic_density
        queue = rng.integers(1, 5, n_groups)
        sel = active[self.traffic_group] & (self.traffic[:, 3] < queue[self.traffic_group])
        sel &= rng.random(len(sel)) < 0.8
        idx = np.flatnonzero(sel)
        specs = _car_specs(rng, len(idx))
        for j, k in enumerate(idx):
            u, v, hd, _ = self.traffic[k]
            _draw_car(canvas, gsd, u, v, hd, {kk: vv[j] for kk, vv in specs.items()})


def _car_specs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    van = rng.random(n) < 0.12
    return {
        "rgb": _CAR_RGB[rng.choice(len(_CAR_RGB), size=n, p=_CAR_P / _CAR_P.sum())] * rng.uniform(0.92, 1.06, (n, 1)),
        "len": np.where(van, rng.uniform(5.0, 6.0, n), rng.uniform(4.1, 4.9, n)),
        "wid": np.where(van, rng.uniform(1.95, 2.1, n), rng.uniform(1.72, 1.92, n)),
        "body": rng.uniform(0.9, 1.1, n),
        "top": np.where(van, rng.uniform(1.9, 2.4, n), rng.uniform(1.4, 1.6, n)),
        "van": van.astype(np.float64),
        "offset": rng.uniform(-0.4, 0.4, n),
    }


def _draw_car(canvas: tuple, gsd: float, u: float, v: float, heading: float, spec: dict) -> None:
    """A car as a box with a cabin and dark windscreens, heading in uv radians (front = +x)."""
    h, mat, alb, bid = canvas
    n = h.shape[0]
    half = 0.5 * float(np.hypot(spec["len"], spec["wid"])) + gsd
    c0, c1 = max(0, int((u - half) / gsd)), min(n, int((u + half) / gsd) + 2)
    r0, r1 = max(0, int((v - half) / gsd)), min(n, int((v + half) / gsd) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    uu = (np.arange(c0, c1) + 0.5) * gsd - u
    vv = (np.arange(r0, r1) + 0.5) * gsd - v
    ch, sh = math.cos(heading), math.sin(heading)
    x = uu[None, :] * ch + vv[:, None] * sh
    y = -uu[None, :] * sh + vv[:, None] * ch
    L, W = spec["len"] / 2, spec["wid"] / 2
    body = (np.abs(x) <= L) & (np.abs(y) <= W)
    sl = np.s_[r0:r1, c0:c1]
    body &= (bid[sl] < 0) & (mat[sl] != M.TREE)
    if not body.any():
        return
    rgb = np.asarray(spec["rgb"], np.float32)
    z = np.where(body, spec["body"], 0.0).astype(np.float32)
    colour = np.broadcast_to(rgb, body.shape + (3,)).copy()
    if spec["van"] > 0.5:
        cabin = body & (x > -L + 0.2) & (x < L - 0.9) & (np.abs(y) < W - 0.1)
        screen = body & (x >= L - 0.9) & (x < L - 0.4) & (np.abs(y) < W - 0.15)
    else:
        cabin = body & (x > -0.55 * L) & (x < 0.3 * L) & (np.abs(y) < W - 0.15)
        screen = body & (((x >= 0.3 * L) & (x < 0.55 * L)) | ((x > -0.72 * L) & (x <= -0.55 * L))) & (np.abs(y) < W - 0.2)
    z[cabin] = spec["top"]
    z[screen] = 0.5 * (spec["body"] + spec["top"])
    colour[cabin] = np.clip(rgb * 1.05 + 6, 0, 255)
    colour[screen] = (38, 42, 48)
    hv = h[sl]
    hv[body] = z[body]
    mat[sl][body] = M.CAR
    alb[sl][body] = colour[body].astype(np.uint8)


def _draw_tree(canvas: tuple, gsd: float, uv: np.ndarray, radius: float, top: float, rgb: np.ndarray,
               phase: np.ndarray, leaf: np.ndarray) -> None:
    """A round, lumpy canopy: a dome from top - depth at the rim to top at the centre."""
    h, mat, alb, bid = canvas
    n = h.shape[0]
    u, v = float(uv[0]), float(uv[1])
    R = radius * 1.2
    c0, c1 = max(0, int((u - R) / gsd)), min(n, int((u + R) / gsd) + 2)
    r0, r1 = max(0, int((v - R) / gsd)), min(n, int((v + R) / gsd) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    du = ((np.arange(c0, c1) + 0.5) * gsd - u)[None, :]
    dv = ((np.arange(r0, r1) + 0.5) * gsd - v)[:, None]
    d = np.hypot(du, dv)
    ang = np.arctan2(dv, du)
    rim = radius * (1 + 0.07 * np.sin(3 * ang + phase[0]) + 0.05 * np.sin(5 * ang + phase[1])
                    + 0.03 * np.sin(9 * ang + 2 * phase[0]))
    rel = d / rim
    ls = leaf.shape[0]
    oy, ox = int(phase[2] * 997) % ls, int(phase[2] * 7919) % ls
    tex = leaf[np.ix_((np.arange(r1 - r0) + oy) % ls, (np.arange(c1 - c0) + ox) % ls)]
    inside = rel < 1.0 + 0.06 * tex  # ragged leafy edge
    sl = np.s_[r0:r1, c0:c1]
    depth = min(0.5 * top, 1.1 * radius)
    z = (top - depth + depth * np.sqrt(np.clip(1 - rel * rel, 0, 1))).astype(np.float32)
    ok = inside & (z > h[sl]) & (bid[sl] < 0)
    if not ok.any():
        return
    shade = (0.82 + 0.28 * tex) * (1.0 - 0.22 * rel * rel)
    colour = np.clip(rgb[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    hv = h[sl]
    hv[ok] = z[ok]
    mat[sl][ok] = M.TREE
    alb[sl][ok] = colour[ok]


def _noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """(n, n) float32 smooth noise, unit variance, with features ~n/cells pixels across."""
    cells = max(2, cells)
    small = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    big = cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)
    return big / max(float(big.std()), 1e-6)


# Texture amplitude per material: white, fine (~0.6 m), medium (~4 m), large (~25 m) noise.
_TEXTURE = np.zeros((len(Material), 4), np.float32)
_TEXTURE[M.ROAD] = (0.05, 0.05, 0.05, 0.06)
_TEXTURE[M.MARKING] = (0.04, 0.06, 0.08, 0.04)
_TEXTURE[M.SIDEWALK] = (0.035, 0.03, 0.04, 0.05)
_TEXTURE[M.GRASS] = (0.07, 0.10, 0.08, 0.07)
_TEXTURE[M.PLAZA] = (0.03, 0.03, 0.03, 0.025)
_TEXTURE[M.BUILDING] = (0.03, 0.025, 0.015, 0.01)
_TEXTURE[M.WATER] = (0.01, 0.02, 0.04, 0.05)


def _texture(cv: _Canvas, seed: int) -> None:
    """Multiply the flat colours by material-dependent multi-scale noise, in row bands."""
    rng = _rng(seed, _S_TEXTURE)
    n = cv.n
    px_m = cv.gsd
    fine = _noise(rng, n, int(n * px_m / 0.6))
    medium = _noise(rng, n, int(n * px_m / 4.0))
    large = _noise(rng, n, int(n * px_m / 25.0))
    dry = _noise(rng, n, int(n * px_m / 12.0))
    for r0 in range(0, n, 512):
        sl = slice(r0, min(n, r0 + 512))
        amp = _TEXTURE[cv.material[sl]]
        white = rng.standard_normal((sl.stop - r0, n), dtype=np.float32)
        lum = 1.0 + amp[..., 0] * white + amp[..., 1] * fine[sl] + amp[..., 2] * medium[sl] + amp[..., 3] * large[sl]
        rgb = cv.albedo[sl].astype(np.float32) * lum[..., None]
        grass = cv.material[sl] == M.GRASS
        if grass.any():  # dry, yellowish patches in lawns
            d = np.clip(dry[sl] - 0.5, 0.0, None) * 0.15
            rgb[..., 0] += np.where(grass, d * 90.0, 0.0)
            rgb[..., 2] -= np.where(grass, d * 20.0, 0.0)
        np.clip(rgb + 0.5, 0, 255, out=rgb)
        cv.albedo[sl] = rgb.astype(np.uint8)


def _canyon_field(height: np.ndarray, bid: np.ndarray, gsd: float, cell_m: float = 5.0) -> np.ndarray:
    """Street-canyon height/width ratio on a cell_m grid (see City.canyon_depth)."""
    n = height.shape[0]
    f = max(1, int(round(1.0 / gsd)))
    m = max(2, n // f)  # ~1 m grid
    step = n * gsd / m
    building = (bid >= 0).astype(np.float32)
    frac = cv2.resize(building, (m, m), interpolation=cv2.INTER_AREA)
    hsum = cv2.resize(height * building, (m, m), interpolation=cv2.INTER_AREA)
    k = 2 * int(round(25.0 / step)) + 1
    cov = cv2.blur(frac, (k, k), borderType=cv2.BORDER_CONSTANT)
    hmean = cv2.blur(hsum, (k, k), borderType=cv2.BORDER_CONSTANT) / np.maximum(cov, 1e-6)
    hmean[cov < 1e-4] = 0.0
    openm = (frac < 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(openm, cv2.DIST_L2, 5) * step
    kd = 2 * int(round(20.0 / step)) + 1
    width = 2.0 * cv2.dilate(dist, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kd, kd)))
    ratio = hmean * np.minimum(1.0, cov / 0.35) / np.maximum(width, 4.0)
    ratio = cv2.GaussianBlur(ratio.astype(np.float32), (0, 0), 5.0 / step, borderType=cv2.BORDER_REPLICATE)
    ratio = np.maximum(ratio - _CANYON_OPEN, 0.0)  # blur tails far from buildings count as open sky
    mc = max(1, int(round(n * gsd / cell_m)))
    return cv2.resize(ratio, (mc, mc), interpolation=cv2.INTER_AREA).astype(np.float32)


def _build_base(layout: _Layout, config: CityConfig) -> _Base:
    painter = _Painter(layout, config)
    painter.paint_blocks()
    painter.paint_streets()
    cv = painter.cv
    nb = len(painter.b_height)
    # Buildings mostly cut away by a diagonal street: remove the slivers.
    if nb:
        left = np.bincount(cv.bid.ravel() + 1, minlength=nb + 1)[1:]
        drawn = np.maximum(np.array(painter.b_pixels), 1)
        gone = (left < 0.4 * drawn) | (left * cv.gsd ** 2 < 12.0)
        gone &= left > 0
        if gone.any():
            lut = np.concatenate([[False], gone])
            m = lut[cv.bid + 1]
            cv.material[m] = M.SIDEWALK
            cv.albedo[m] = (172, 170, 165)
            cv.height[m] = 0.0
            cv.bid[m] = -1
    trees = _Trees.build(painter.trees)
    spare = _Trees.build(painter.spare_trees)
    street_flag = np.array(painter.tree_street, bool)
    spare_flag = np.array(painter.spare_street, bool)

    def usable(t: _Trees, flag: np.ndarray) -> np.ndarray:
        if len(t) == 0:
            return np.zeros(0, bool)
        inside, mat, b, st = cv.at(t.uv)
        ok = inside & (b < 0) & (mat != M.WATER) & (mat != M.ROAD) & (mat != M.MARKING)
        return ok & np.where(flag, True, st == 0)
    keep = usable(trees, street_flag)
    trees = trees.take(keep)
    spare = spare.take(usable(spare, spare_flag))
    slots = np.array(painter.slots, np.float64).reshape(-1, 4)
    if len(slots):
        inside, mat, b, st = cv.at(slots[:, :2])
        kind = slots[:, 3]
        paved = np.where(kind == 2, mat == M.PLAZA, (mat == M.ROAD) | (mat == M.MARKING))
        ok = inside & (b < 0) & paved & np.where(kind >= 1, st == 0, True)
        slots = slots[ok]
    traffic, group = painter.traffic_spots()
    if len(traffic):
        inside, mat, b, _ = cv.at(traffic[:, :2])
        ok = inside & ((mat == M.ROAD) | (mat == M.MARKING))
        traffic, group = traffic[ok], group[ok]
    if painter.park_polys:  # the park's most open point: farthest from streets and buildings
        f = max(1, int(round(1.0 / cv.gsd)))
        m = max(2, cv.n // f)
        park = np.zeros((m, m), np.uint8)
        scale = m / (cv.n * cv.gsd)
        cv2.fillPoly(park, [np.round(painter.park_polys[0] * scale * _FIX).astype(np.int32)], 1, cv2.LINE_8, _FIX_BITS)
        busy = cv2.resize(((cv.street > 0) | (cv.bid >= 0)).astype(np.uint8), (m, m), interpolation=cv2.INTER_NEAREST)
        dist = cv2.distanceTransform((park & (1 - busy)).astype(np.uint8), cv2.DIST_L2, 5)
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        if dist[r, c] > 0:
            painter.landmarks["park_centre_uv"] = np.array([(c + 0.5) / scale, (r + 0.5) / scale])
    del cv.street
    _texture(cv, config.seed)
    canyon = _canyon_field(cv.height, cv.bid, cv.gsd)
    buildings = Buildings(
        height_m=np.array(painter.b_height, np.float32),
        facade_rgb=np.clip(np.array(painter.b_facade, np.float32).reshape(-1, 3), 0, 255).astype(np.uint8),
        window_rgb=np.clip(np.array(painter.b_window, np.float32).reshape(-1, 3), 0, 255).astype(np.uint8),
        floor_height_m=np.array(painter.b_floor, np.float32),
        window_spacing_m=np.array(painter.b_spacing, np.float32),
    )
    cv.bid.setflags(write=False)
    leaf_rng = _rng(config.seed, _S_TREES)
    leaf = _noise(leaf_rng, 512, int(512 * cv.gsd / 0.5)) * 0.6 + _noise(leaf_rng, 512, int(512 * cv.gsd / 1.5)) * 0.4
    landmarks = {k: np.asarray(v, np.float64) for k, v in painter.landmarks.items()}
    extra = {"seed": int(config.seed), "datum_lat_deg": config.datum_lat_deg, "datum_lon_deg": config.datum_lon_deg,
             "generator": "crossview_ros.sim.city", "city_size_m": layout.size_m}
    return _Base(height=cv.height, material=cv.material, albedo=cv.albedo, bid=cv.bid, buildings=buildings,
                 trees=trees, spare=spare, slots=slots, traffic=traffic,
                 traffic_group=group, canyon=canyon, canyon_cell_m=layout.size_m / canyon.shape[0],
                 leaf=leaf.astype(np.float32), landmarks_uv=landmarks, extra=extra)
