"""Input checks shared by every geo function: finite numbers, lat/lon ranges, scalar or array.

Kept apart so that each conversion module refuses bad input with the same GeoError wording.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ArrayLike = Any  # float, sequence of floats or numpy array


class GeoError(ValueError):
    """Invalid coordinates or an operation outside its valid range; the message says how to fix."""


def is_scalar(x: Any) -> bool:
    """True for a Python number or a 0-d array: such inputs give floats back, not arrays."""
    return isinstance(x, (float, int)) or np.ndim(x) == 0


def first_bad(arr: np.ndarray, bad: np.ndarray) -> tuple[Any, Any]:
    """The first offending value of `arr` where `bad`, and " at index (...)" for messages."""
    idx = np.unravel_index(int(np.argmax(bad)), arr.shape) if arr.ndim else ()
    where = f" at index {tuple(int(i) for i in idx)}" if arr.ndim else ""
    return arr[idx], where


def as_output(x: Any, scalar: bool) -> Any:
    """A float for scalar inputs, a float64 array otherwise."""
    return float(x) if scalar else np.asarray(x, dtype=np.float64)


def check_latlon(lat_deg: ArrayLike, lon_deg: ArrayLike) -> None:
    """Refuse NaN, infinities, |lat| > 90 and |lon| > 180 with a GeoError naming the value."""
    if isinstance(lat_deg, (float, int)) and isinstance(lon_deg, (float, int)):
        # Scalar fast path: the localizer calls this per frame.
        if math.isfinite(lat_deg) and math.isfinite(lon_deg) and -90.0 <= lat_deg <= 90.0 \
                and -180.0 <= lon_deg <= 180.0:
            return
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    for name, arr, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = ~np.isfinite(arr)
        if bad.any():
            value, where = first_bad(arr, bad)
            raise GeoError(
                f"{name} {value}{where} is not a finite number; pass degrees in "
                f"[-{limit:g}, {limit:g}] (drop fixes without a position before converting)"
            )
        bad = np.abs(arr) > limit
        if bad.any():
            value, where = first_bad(arr, bad)
            raise GeoError(
                f"{name} {value}{where} is out of range; {name} must be in degrees within "
                f"[-{limit:g}, {limit:g}] (are latitude and longitude swapped, or given in "
                "radians?)"
            )


def check_finite(name: str, x: ArrayLike) -> None:
    """Refuse NaN and infinities in `x` with a GeoError naming `name` and the first bad value."""
    if isinstance(x, (float, int)):
        if math.isfinite(x):
            return
    arr = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        value, where = first_bad(arr, bad)
        raise GeoError(f"{name} {value}{where} is not a finite number; pass finite values")
