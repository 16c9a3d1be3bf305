"""sensor_msgs/NavSatFix position_covariance (9 row-major floats) <-> 3x3 ENU matrices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crossview_ros.geo.checks import ArrayLike, GeoError, check_finite

def navsat_cov_to_matrix(position_covariance: Sequence[float]) -> np.ndarray:
    """sensor_msgs/NavSatFix position_covariance (9 floats, ENU, m^2, row-major) -> (3, 3)."""
    c = np.asarray(position_covariance, dtype=np.float64)
    if c.shape != (9,):
        raise GeoError(
            "NavSatFix position_covariance must hold 9 floats (row-major 3x3 ENU, m^2), "
            f"got shape {c.shape}"
        )
    check_finite("position_covariance entry", c)
    return c.reshape(3, 3).copy()


def matrix_to_navsat_cov(cov3x3: ArrayLike) -> list[float]:
    """(3, 3) ENU covariance (m^2) -> 9 row-major floats for NavSatFix, symmetrised."""
    c = np.asarray(cov3x3, dtype=np.float64)
    if c.shape != (3, 3):
        raise GeoError(
            f"covariance must be 3x3 (E, N, U in m^2) for NavSatFix, got shape {c.shape}"
        )
    check_finite("covariance entry", c)
    return [float(v) for v in (0.5 * (c + c.T)).ravel()]

