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

Modules: city_config (CityConfig, random streams), city_layout (grid, streets, blocks,
StreetGraph), city_canvas and city_palette (drawing), city_painter with paint_buildings,
paint_lots, paint_parks and paint_streets (the base), city_base (painting order, clean-up,
texture), city_epoch (cars and trees per epoch). This module is the entry point: City,
generate_city, and the street-canyon depth that the GNSS simulator asks for.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy.ndimage import map_coordinates

from crossview_ros import geo
from crossview_ros.sim.city_base import build_base
from crossview_ros.sim.city_config import CityConfig
from crossview_ros.sim.city_epoch import Base
from crossview_ros.sim.city_layout import Layout, StreetGraph, make_layout
from crossview_ros.sim.scene import Scene

__all__ = ["City", "CityConfig", "StreetGraph", "generate_city"]

_CANYON_OPEN = 0.05  # canyon depth (H/W) below which a place counts as open
_CANYON_CELL_M = 5.0  # grid of the canyon-depth field


class City:
    """A generated city: frame, streets, and its scene rasters per epoch (built lazily, cached)."""

    def __init__(self, config: CityConfig, layout: Layout) -> None:
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
        self._base: Base | None = None
        self._canyon: np.ndarray | None = None
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
            self._scenes[epoch] = base.epoch_scene(self.config, self.zone, self.origin_e_m, self.origin_n_m, epoch)
        return self._scenes[epoch]

    def canyon_depth(self, easting_m: Any, northing_m: Any) -> np.ndarray:
        """Street-canyon height/width ratio at UTM points (0 in the open; > 1 in deep canyons).

        Mean building height within 25 m (weighted up to full when buildings cover >= 35 %
        of the neighbourhood) over the width of the open space there, on a 5 m grid smoothed
        over ~5 m, minus 0.05 (so that the smoothing's far tails read as open sky), sampled
        bilinearly; points outside the city take the nearest edge value.
        """
        e, n = np.broadcast_arrays(np.asarray(easting_m, np.float64), np.asarray(northing_m, np.float64))
        if not (np.isfinite(e).all() and np.isfinite(n).all()):
            raise ValueError("canyon_depth needs finite UTM coordinates (metres in the city's zone)")
        if self._canyon is None:
            base = self._get_base()
            self._canyon = _canyon_field(base.height, base.bid, self.gsd_m, _CANYON_CELL_M)
        cell = self._layout.size_m / self._canyon.shape[0]
        x = (e - self.origin_e_m) / cell - 0.5  # field sample (i, j) sits at the centre of its cell
        y = (self.origin_n_m - n) / cell - 0.5
        out = map_coordinates(self._canyon, [y.ravel(), x.ravel()], order=1, mode="nearest")
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

    def _get_base(self) -> Base:
        """The painted base, built on first use (seconds to minutes for a large city)."""
        if self._base is None:
            self._base = build_base(self._layout, self.config)
        return self._base

    def _local_to_utm(self, uv: np.ndarray) -> np.ndarray:
        """Local metres (u east, v south of the NW corner) -> UTM (E, N)."""
        uv = np.asarray(uv, np.float64)
        return np.stack([self.origin_e_m + uv[..., 0], self.origin_n_m - uv[..., 1]], axis=-1)


def generate_city(config: CityConfig) -> City:
    """Lay out the city (frame, street network, blocks); rasters are built on first use."""
    config.validate()
    return City(config, make_layout(config))


def _canyon_field(height: np.ndarray, bid: np.ndarray, gsd: float, cell_m: float = _CANYON_CELL_M) -> np.ndarray:
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
