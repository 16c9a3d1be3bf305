"""The 2.5-D scene that both views of the synthetic city are made from.

A scene is a stack of north-up rasters on the UTM grid of one zone: the orthophoto is the scene
seen from straight above, the panorama is the same rasters ray-cast from the street. Keeping one
representation for both views is what makes the two views agree geometrically, while the
appearance gap (sun, colour response, time gap) is added on top by each view's own renderer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from crossview_ros.geo import UTMZone


class Material(IntEnum):
    """What covers a raster cell; the renderers choose shading and texture by it."""

    ROAD = 0
    MARKING = 1
    SIDEWALK = 2
    GRASS = 3
    PLAZA = 4
    BUILDING = 5
    TREE = 6
    CAR = 7
    WATER = 8


@dataclass
class Buildings:
    """Per-building attributes, indexed by the ids in `Scene.building_id`."""

    height_m: np.ndarray  # (B,) float32 roof height above ground
    facade_rgb: np.ndarray  # (B, 3) uint8 wall colour
    window_rgb: np.ndarray  # (B, 3) uint8 window colour
    floor_height_m: np.ndarray  # (B,) float32 storey height (window rows)
    window_spacing_m: np.ndarray  # (B,) float32 horizontal window pitch (0 = blank wall)

    def __len__(self) -> int:
        return int(self.height_m.shape[0])


@dataclass
class Scene:
    """Rasters of one epoch of a city, row 0 = north edge, column 0 = west edge.

    Cell (r, c) covers easting [origin_e_m + c*gsd_m, +gsd_m) and northing
    (origin_n_m - (r+1)*gsd_m, origin_n_m - r*gsd_m]; the GeoTIFF affine of every raster is
    (gsd_m, 0, origin_e_m, 0, -gsd_m, origin_n_m) in `zone`.
    """

    zone: UTMZone
    origin_e_m: float  # UTM easting of the north-west corner
    origin_n_m: float  # UTM northing of the north-west corner
    gsd_m: float  # cell size, metres
    height_m: np.ndarray  # (H, W) float32 top-surface height above ground (0 = ground)
    material: np.ndarray  # (H, W) uint8 Material
    albedo: np.ndarray  # (H, W, 3) uint8 top-view colour without shading or shadows
    building_id: np.ndarray  # (H, W) int32 index into `buildings`, -1 where no building
    buildings: Buildings
    epoch: int = 0  # 0 = the aerial survey; >0 = later visits (cars moved, trees changed)
    extra: dict = field(default_factory=dict)  # free-form provenance (seed, datum, ...)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.height_m.shape[0]), int(self.height_m.shape[1])

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL/affine order (a, b, c, d, e, f) of the rasters' geo-transform."""
        return (self.gsd_m, 0.0, self.origin_e_m, 0.0, -self.gsd_m, self.origin_n_m)

    def cell_of(self, easting_m, northing_m) -> tuple[np.ndarray, np.ndarray]:
        """Row and column (integer, unclipped) of the cells containing UTM points."""
        col = np.floor((np.asarray(easting_m) - self.origin_e_m) / self.gsd_m).astype(np.int64)
        row = np.floor((self.origin_n_m - np.asarray(northing_m)) / self.gsd_m).astype(np.int64)
        return row, col

    def contains(self, easting_m, northing_m) -> np.ndarray:
        row, col = self.cell_of(easting_m, northing_m)
        h, w = self.shape
        return (row >= 0) & (row < h) & (col >= 0) & (col < w)


@dataclass(frozen=True)
class Sun:
    """Where the light comes from; the aerial survey and each drive get their own sun."""

    azimuth_deg: float = 135.0  # compass bearing towards the sun (0 = north, clockwise)
    elevation_deg: float = 45.0  # above the horizon, (0, 90]

    def direction_enu(self) -> np.ndarray:
        """Unit vector (E, N, U) pointing from the ground towards the sun."""
        az = np.radians(self.azimuth_deg)
        el = np.radians(self.elevation_deg)
        return np.array([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])
