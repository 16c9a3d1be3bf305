"""How a synthetic city is generated (CityConfig) and the random streams its seed feeds.

Every random choice of the generator draws from a numpy Generator seeded by
(seed, stream[, sub-stream]), one stream per purpose, so that changing one part of the
generator never reshuffles another and one seed gives identical arrays.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.config import check_known_keys

MAX_SIDE_PX = 20000  # a 20000^2 city is ~10 GB of rasters: refuse more

# Random streams, one per purpose.
STREAM_GRID, STREAM_BLOCKS, STREAM_STREETS, STREAM_TREES, STREAM_CARS, STREAM_TEXTURE, STREAM_EPOCH = 1, 2, 3, 4, 5, 6, 7


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The Generator of one purpose (STREAM_*, optionally a sub-stream) of a city seed."""
    return np.random.default_rng([int(seed), *stream])


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
        if self.size_m / self.gsd_m > MAX_SIDE_PX:
            raise ValueError(f"size_m / gsd_m = {self.size_m / self.gsd_m:.0f} px per side exceeds "
                             f"{MAX_SIDE_PX}; use a coarser gsd_m or a smaller size_m")
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
        """All fields, as from_dict takes them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CityConfig:
        """Strict: unknown keys raise, so that a typo never falls back to a default silently."""
        check_known_keys(cls, values)
        return cls(**values)
