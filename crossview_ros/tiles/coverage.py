"""Where a tile set lies, for the localizer's OUTSIDE_COVERAGE: the message a fix off its tiles gets, and
whether a disc (an estimate carried by odometry, with its uncertainty) lies on them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crossview_ros import geo
from crossview_ros.tiles.tile_set import TileSet

INSIDE_M = 0.5  # a fix this close to the coverage box is inside it: without a tile near, it lies in a gap


@dataclass(frozen=True)
class CoverageBox:
    """The latitude/longitude extent of a tile set's centres, half a tile wider: what a fix refused as
    OUTSIDE_COVERAGE is told about (how far off it is, and whether swapping latitude and longitude
    would put it on the tiles, the commonest mistake in a hand-written fix or a driver's mapping)."""

    lat_min_deg: float
    lat_max_deg: float
    lon_min_deg: float
    lon_max_deg: float

    @classmethod
    def of(cls, tiles: TileSet) -> CoverageBox:
        half_m = 0.5 * tiles.tile_size_m
        lat_lo, lat_hi = float(tiles.lat_deg.min()), float(tiles.lat_deg.max())
        dlat = half_m / 111_000.0
        dlon = half_m / (111_000.0 * max(math.cos(math.radians(max(abs(lat_lo), abs(lat_hi)))), 1e-6))
        return cls(max(lat_lo - dlat, -90.0), min(lat_hi + dlat, 90.0), float(tiles.lon_deg.min()) - dlon,
                   float(tiles.lon_deg.max()) + dlon)

    def distance_m(self, lat_deg: float, lon_deg: float) -> float:
        """Geodesic distance from the point to the nearest point of the box (0 inside it)."""
        lat = min(max(lat_deg, self.lat_min_deg), self.lat_max_deg)
        lon = min(max(lon_deg, self.lon_min_deg), self.lon_max_deg)
        return float(geo.distance_m(lat_deg, lon_deg, lat, max(-180.0, min(lon, 180.0))))

    def outside_message(self, lat_deg: float, lon_deg: float, radius_m: float) -> str:
        """Why no tile lies within radius_m of the fix, for the user to act on."""
        off_m = self.distance_m(lat_deg, lon_deg)
        where = (f"covering latitudes {self.lat_min_deg:.5f}..{self.lat_max_deg:.5f} and longitudes "
                 f"{self.lon_min_deg:.5f}..{self.lon_max_deg:.5f}")
        if off_m < INSIDE_M:
            text = (f"no tile within {radius_m:.0f} m of the fix ({lat_deg:.7f}, {lon_deg:.7f}), which lies in a gap "
                    f"of the tile set {where}")
        else:
            far = f"{off_m / 1000.0:.1f} km" if off_m >= 1000.0 else f"{off_m:.0f} m"
            text = (f"fix ({lat_deg:.7f}, {lon_deg:.7f}) is {far} outside the tile set {where}; no tile within the "
                    f"{radius_m:.0f} m search radius")
        if abs(lon_deg) <= 90.0 and off_m > radius_m and self.distance_m(lon_deg, lat_deg) <= radius_m:
            text += (f"; latitude and longitude look swapped: ({lon_deg:.7f}, {lat_deg:.7f}) lies on the tiles "
                     "(NavSatFix.latitude holds the latitude, --fix takes LAT,LON)")
        return text


def disc_on_tiles(tiles: TileSet, easting_m: float, northing_m: float, radius_m: float) -> bool:
    """Whether a disc on the grid lies on the tiles: its centre and eight points of its rim each fall
    on a tile's square (a tile set's coverage need not be a box: it may have gaps)."""
    half = 0.5 * tiles.tile_size_m
    near = tiles.tiles_within_utm(easting_m, northing_m, radius_m + half * math.sqrt(2.0))
    if near.size == 0:
        return False
    te, tn = tiles.easting_m[near], tiles.northing_m[near]
    angles = np.arange(8) * (math.pi / 4)
    pe = np.r_[easting_m, easting_m + radius_m * np.cos(angles)]
    pn = np.r_[northing_m, northing_m + radius_m * np.sin(angles)]
    on = (np.abs(pe[:, None] - te[None, :]) <= half) & (np.abs(pn[:, None] - tn[None, :]) <= half)
    return bool(on.any(axis=1).all())
