"""Angle conventions: ENU yaw (rad, 0 = east, CCW, (-pi, pi]) and compass bearing (deg, 0 = north, CW)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crossview_ros.geo.checks import ArrayLike, as_output, check_finite, is_scalar

_TWO_PI = 2.0 * math.pi


def wrap_angle_rad(a: ArrayLike) -> Any:
    """Angle wrapped to (-pi, pi]."""
    check_finite("angle_rad", a)
    scalar = is_scalar(a)
    w = math.pi - np.mod(math.pi - np.asarray(a, dtype=np.float64), _TWO_PI)
    w = np.where(w <= -math.pi, math.pi, w)
    return as_output(w, scalar)


def yaw_enu_from_bearing_deg(bearing_deg: ArrayLike) -> Any:
    """Compass bearing (deg, 0 = north, clockwise) -> ENU yaw (rad, 0 = east, CCW) in (-pi, pi]."""
    check_finite("bearing_deg", bearing_deg)
    scalar = is_scalar(bearing_deg)
    return as_output(wrap_angle_rad(math.pi / 2.0 - np.radians(np.asarray(bearing_deg, float))), scalar)


def bearing_deg_from_yaw_enu(yaw_enu_rad: ArrayLike) -> Any:
    """ENU yaw (rad, 0 = east, CCW) -> compass bearing (deg, 0 = north, clockwise) in [0, 360)."""
    check_finite("yaw_enu_rad", yaw_enu_rad)
    scalar = is_scalar(yaw_enu_rad)
    b = np.mod(90.0 - np.degrees(np.asarray(yaw_enu_rad, float)), 360.0)
    b = np.where(b >= 360.0, 0.0, b)
    return as_output(b, scalar)


def quaternion_to_yaw(x: float, y: float, z: float, w: float) -> float:
    """Yaw (rad, (-pi, pi]) of a quaternion (x, y, z, w); exact for rotations about z."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
