"""ENU axes versus UTM grid axes: meridian convergence, and covariances and yaws rotated by it.

Covariance and yaw rotation to the grid ignore the UTM point scale factor (0.9996 to about
1.001 inside a zone): variances are off by at most 0.2 %.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crossview_ros.geo.angles import wrap_angle_rad
from crossview_ros.geo.checks import ArrayLike, GeoError, check_finite, check_latlon, is_scalar
from crossview_ros.geo.utm import UTMZone, as_zone, check_utm_lat, check_zone_offset, utm_proj


def grid_convergence_rad(lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int) -> Any:
    """Angle theta rotating ENU into the UTM grid: v_grid = R(theta) @ v_enu, R counter-clockwise.

    theta is the bearing of grid north measured clockwise from true north, i.e. the textbook
    meridian convergence gamma (Snyder; Karney 2011), positive east of the central meridian in
    the northern hemisphere; same sign as pyproj's Factors.meridian_convergence (which is in
    degrees; checked with PROJ 9.5.1, see test_geo). We derive it from PROJ's meridian
    direction (dx/dphi, dy/dphi), whose sign cannot be mistaken, rather than trust that field's
    sign across PROJ versions. Error ~1e-9 rad (PROJ's numerical derivatives). True north
    points along grid yaw pi/2 + theta, i.e. grid bearing -theta.
    """
    zone = as_zone(zone)
    check_latlon(lat_deg, lon_deg)
    check_utm_lat(lat_deg)
    scalar = is_scalar(lat_deg) and is_scalar(lon_deg)
    check_zone_offset(float(lon_deg) if scalar else lon_deg, zone)
    if scalar:
        factors = utm_proj(zone).get_factors(float(lon_deg), float(lat_deg))
        theta = math.atan2(-factors.dx_dphi, factors.dy_dphi)
        if not math.isfinite(theta):
            raise GeoError(f"grid convergence undefined at ({lat_deg}, {lon_deg}) in zone {zone}")
        return theta
    lat, lon = np.broadcast_arrays(np.asarray(lat_deg, float), np.asarray(lon_deg, float))
    factors = utm_proj(zone).get_factors(lon, lat)
    dx_dphi = np.asarray(factors.dx_dphi, dtype=np.float64)
    dy_dphi = np.asarray(factors.dy_dphi, dtype=np.float64)
    theta = np.arctan2(-dx_dphi, dy_dphi).reshape(lat.shape)
    if not np.all(np.isfinite(theta)):
        raise GeoError(
            f"grid convergence undefined for some points in zone {zone}; pass points inside it"
        )
    return theta


def _rotate_cov(cov: ArrayLike, theta: Any) -> np.ndarray:
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2] or c.shape[-1] not in (2, 3):
        raise GeoError(f"covariance must be 2x2 (E, N) or 3x3 (E, N, U), got shape {c.shape}")
    check_finite("covariance entry", c)
    cos_t = np.cos(theta)
    sin_t = np.sin(theta)
    rot = np.zeros(np.shape(theta) + c.shape[-2:], dtype=np.float64)
    rot[..., 0, 0] = cos_t
    rot[..., 0, 1] = -sin_t
    rot[..., 1, 0] = sin_t
    rot[..., 1, 1] = cos_t
    if c.shape[-1] == 3:
        rot[..., 2, 2] = 1.0
    return rot @ c @ np.swapaxes(rot, -1, -2)


def enu_cov_to_utm(
    cov: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int
) -> np.ndarray:
    """Position covariance (m^2) from ENU axes to UTM grid axes: R(theta) C R(theta)^T.

    cov is 2x2 (E, N) or 3x3 (E, N, U), or a stack (..., k, k) matching the points' shape. Up
    stays up: var(U) is unchanged and the E/N-U cross terms rotate with the horizontal axes.
    The scale factor is ignored (variances off by <= 0.2 % inside a zone).
    """
    return _rotate_cov(cov, grid_convergence_rad(lat_deg, lon_deg, zone))


def utm_cov_to_enu(
    cov: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int
) -> np.ndarray:
    """Position covariance (m^2) from UTM grid axes to ENU axes; inverse of enu_cov_to_utm."""
    return _rotate_cov(cov, -np.asarray(grid_convergence_rad(lat_deg, lon_deg, zone)))

def yaw_enu_to_utm(
    yaw_enu_rad: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int
) -> Any:
    """ENU yaw (0 = east, CCW) -> yaw of the same direction against UTM grid axes, wrapped."""
    check_finite("yaw_enu_rad", yaw_enu_rad)
    return wrap_angle_rad(np.add(yaw_enu_rad, grid_convergence_rad(lat_deg, lon_deg, zone)))


def yaw_utm_to_enu(
    yaw_utm_rad: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int
) -> Any:
    """UTM grid yaw (0 = grid east, CCW) -> ENU yaw, wrapped; inverse of yaw_enu_to_utm."""
    check_finite("yaw_utm_rad", yaw_utm_rad)
    return wrap_angle_rad(np.subtract(yaw_utm_rad, grid_convergence_rad(lat_deg, lon_deg, zone)))

