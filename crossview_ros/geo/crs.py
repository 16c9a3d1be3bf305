"""Points between arbitrary coordinate reference systems (orthophotos come in any CRS).

PROJ chooses the operation; CRS objects and transformers are cached because building them
takes milliseconds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pyproj

from crossview_ros.geo.checks import ArrayLike, GeoError, check_finite, is_scalar
from crossview_ros.geo.utm import UTMZone


@lru_cache(maxsize=256)
def _crs_cached(value: Any) -> pyproj.CRS:
    return pyproj.CRS.from_user_input(value)


def _as_crs(value: Any) -> pyproj.CRS:
    if isinstance(value, pyproj.CRS):
        return value
    if isinstance(value, UTMZone):
        return value.crs
    if isinstance(value, (str, int)):
        return _crs_cached(value)
    if hasattr(value, "to_wkt"):  # rasterio CRS and friends
        return _crs_cached(value.to_wkt())
    return pyproj.CRS.from_user_input(value)


@lru_cache(maxsize=64)
def _transformer(src: pyproj.CRS, dst: pyproj.CRS) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def transform_points(x: ArrayLike, y: ArrayLike, src_crs: Any, dst_crs: Any) -> tuple[Any, Any]:
    """Points from one CRS to another, always x = longitude/easting first.

    Accepts anything pyproj.CRS.from_user_input takes ("EPSG:25832", 4326, WKT, pyproj.CRS),
    objects with .to_wkt() (rasterio CRS) and UTMZone. Accuracy is PROJ's for the chosen
    operation; datum shifts without grids can be off by metres (pyproj picks the best available).
    """
    check_finite("x", x)
    check_finite("y", y)
    transformer = _transformer(_as_crs(src_crs), _as_crs(dst_crs))
    scalar = is_scalar(x) and is_scalar(y)
    if scalar:
        xo, yo = transformer.transform(float(x), float(y))
    else:
        xa, ya = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        xo, yo = transformer.transform(xa, ya)
        xo = np.asarray(xo, dtype=np.float64).reshape(xa.shape)
        yo = np.asarray(yo, dtype=np.float64).reshape(xa.shape)
    if not (np.all(np.isfinite(xo)) and np.all(np.isfinite(yo))):
        raise GeoError(
            f"points cannot be transformed from {src_crs!r} to {dst_crs!r} (outside the area of "
            "use of the target CRS?); check the source CRS and the coordinates"
        )
    return xo, yo

