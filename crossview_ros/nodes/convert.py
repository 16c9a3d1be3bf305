"""Message <-> numbers for the localize node, without rclpy: testable with plain pytest.

Inputs are read duck-typed (any object with the message's fields), outputs are plain numbers and
lists that the node copies into messages. Conventions (REP-103/105, design.md):

- stamps: builtin_interfaces/Time (sec, nanosec) <-> float seconds; outputs copy the panorama's
  Time message itself, so no float round trip touches a published stamp;
- NavSatFix position_covariance: ENU (E, N, U), m^2, row-major 3x3;
- PoseWithCovariance covariance: (x, y, z, roll, pitch, yaw) 6x6 row-major;
- yaw: ENU, rad, 0 = facing east, counter-clockwise; the quaternion is a pure rotation about z.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crossview_ros.raw_image import IMAGE_CHANNELS, image_to_array  # noqa: F401 (re-exported for the node)
from crossview_ros.estimate import Fix
from crossview_ros.geo import quaternion_to_yaw  # noqa: F401 (re-exported for the node)
from crossview_ros.pose_output import (  # noqa: F401 (the node's output conventions, re-exported for it)
    UNKNOWN_VARIANCE, PlanarPose, orientation_covariance, planar_pose, pose_covariance,
)

COVARIANCE_TYPE_UNKNOWN = 0  # sensor_msgs/NavSatFix
COVARIANCE_TYPE_KNOWN = 3


def stamp_to_s(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds (ns resolution kept to ~0.1 us at Unix times)."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def compressed_to_bytes(msg: Any) -> bytes:
    """sensor_msgs/CompressedImage -> its JPEG/PNG bytes (the Localizer recognises the format from them)."""
    return bytes(memoryview(msg.data).cast("B"))


def odometry_pose(msg: Any) -> tuple[float, float, float, float, list[float]]:
    """nav_msgs/Odometry -> (stamp_s, x_m, y_m, yaw_rad, pose covariance (36 values)): base_link in the
    odom frame, as Localizer.add_odometry takes it (it judges non-finite values)."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    return (stamp_to_s(msg.header.stamp), float(p.x), float(p.y), quaternion_to_yaw(q.x, q.y, q.z, q.w),
            list(msg.pose.covariance))


def fix_from_navsat(msg: Any) -> Fix:
    """sensor_msgs/NavSatFix -> localizer.Fix; never raises: NaN, NO_FIX and the like are the Localizer's
    to judge (it rejects the frame with BAD_FIX / NO_FIX and says why)."""
    stamp_s = stamp_to_s(msg.header.stamp)
    status = int(msg.status.status)
    cov_type = int(msg.position_covariance_type)
    cov = np.asarray(msg.position_covariance, dtype=np.float64)
    if cov_type == COVARIANCE_TYPE_UNKNOWN or cov.size != 9:
        return Fix(float(msg.latitude), float(msg.longitude), stamp_s, status, covariance_type=cov_type)
    return Fix(float(msg.latitude), float(msg.longitude), stamp_s, status, cov.reshape(3, 3).copy(),
               covariance_type=cov_type)


def up_variance_m2(msg: Any) -> float:
    """Variance of the input fix's altitude (m^2) when it reports one, else UNKNOWN_VARIANCE."""
    if int(msg.position_covariance_type) == COVARIANCE_TYPE_UNKNOWN:
        return UNKNOWN_VARIANCE
    value = float(np.asarray(msg.position_covariance, dtype=np.float64).ravel()[8])
    return value if math.isfinite(value) and value > 0.0 else UNKNOWN_VARIANCE


def yaw_to_quaternion(yaw_rad: float) -> tuple[float, float, float, float]:
    """Rotation about z by yaw -> quaternion (x, y, z, w)."""
    return 0.0, 0.0, math.sin(0.5 * yaw_rad), math.cos(0.5 * yaw_rad)


def navsat_covariance(cov_en_m2: np.ndarray, up_var_m2: float) -> list[float]:
    """(2, 2) E/N covariance + up variance -> NavSatFix position_covariance (9 floats, ENU, row-major)."""
    c = np.zeros((3, 3))
    c[:2, :2] = 0.5 * (np.asarray(cov_en_m2, np.float64) + np.asarray(cov_en_m2, np.float64).T)
    c[2, 2] = up_var_m2
    return [float(v) for v in c.ravel()]


