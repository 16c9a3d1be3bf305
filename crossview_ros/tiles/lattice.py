"""Planning a tile set: the UTM zone of the sources and the lattice of tile centres whose central
square (min_inside of the side; 1 = the whole tile) lies inside them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from crossview_ros import geo
from crossview_ros.tiles.config import TilingConfig
from crossview_ros.tiles.sources import RasterSource

# Points per side when a footprint is traced through a projection (edges curve slightly).
_EDGE_SAMPLES = 9


def zone_for_sources(sources: Sequence[RasterSource]) -> geo.UTMZone:
    """UTM zone of the centre of the sources' joint lat/lon bounding box."""
    lats, lons = [], []
    for src in sources:
        x, y = src.boundary_xy()
        lon, lat = geo.transform_points(x, y, src.crs_wkt, "EPSG:4326")
        lats += [float(np.min(lat)), float(np.max(lat))]
        lons += [float(np.min(lon)), float(np.max(lon))]
    return geo.utm_zone(0.5 * (min(lats) + max(lats)), 0.5 * (min(lons) + max(lons)))


def tile_outline(e_m: np.ndarray, n_m: np.ndarray, size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Densified outlines of tiles centred at (e_m, n_m): arrays (M, K)."""
    t = np.linspace(-0.5, 0.5, _EDGE_SAMPLES)
    h = np.full_like(t, 0.5)
    u = np.concatenate([t, h, -t, -h]) * size_m
    v = np.concatenate([-h, t, h, -t]) * size_m
    return np.asarray(e_m)[:, None] + u[None, :], np.asarray(n_m)[:, None] + v[None, :]


def _tiles_inside(src: RasterSource, e_m: np.ndarray, n_m: np.ndarray, size_m: float, zone_crs: str) -> np.ndarray:
    """Which tiles lie wholly inside the source's pixel centres (so resampling never runs off it)."""
    inside = np.zeros(e_m.size, dtype=bool)
    chunk = 50_000
    for start in range(0, e_m.size, chunk):
        sl = slice(start, start + chunk)
        ox, oy = tile_outline(e_m[sl], n_m[sl], size_m)
        try:
            x, y = geo.transform_points(ox, oy, zone_crs, src.crs_wkt)
        except geo.GeoError:
            continue  # outside the source CRS's domain: certainly not inside the raster
        cols, rows = src.to_pixel(x, y)
        ok = (cols >= 0.5) & (cols <= src.width - 0.5) & (rows >= 0.5) & (rows <= src.height - 0.5)
        inside[sl] = ok.all(axis=1)
    return inside


def plan_lattice(sources: Sequence[RasterSource], zone: geo.UTMZone, config: TilingConfig
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile centres (E, N) on the stride lattice, and the first source that contains each tile.

    Order: north to south, then west to east, so ids follow image reading order.
    """
    L = float(config.tile_size_m)
    inner = L * float(config.min_inside)  # the part of a tile that must lie inside the imagery
    s = config.stride_m
    zone_crs = f"EPSG:{zone.epsg}"
    chosen: dict[tuple[int, int], int] = {}
    for k, src in enumerate(sources):
        x, y = src.boundary_xy()
        be, bn = geo.transform_points(x, y, src.crs_wkt, zone_crs)
        i0, i1 = math.ceil((be.min() + inner / 2) / s), math.floor((be.max() - inner / 2) / s)
        j0, j1 = math.ceil((bn.min() + inner / 2) / s), math.floor((bn.max() - inner / 2) / s)
        if i1 < i0 or j1 < j0:
            continue
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
        ii, jj = ii.ravel(), jj.ravel()
        inside = _tiles_inside(src, ii * s, jj * s, inner, zone_crs)
        for i, j in zip(ii[inside].tolist(), jj[inside].tolist()):
            chosen.setdefault((i, j), k)
    if not chosen:
        return np.empty(0), np.empty(0), np.empty(0, np.int32)
    keys = sorted(chosen, key=lambda ij: (-ij[1], ij[0]))
    ij = np.array(keys, dtype=np.int64)
    return ij[:, 0] * s, ij[:, 1] * s, np.array([chosen[k] for k in keys], dtype=np.int32)
