"""An Estimate as the node publishes it, in numbers: the pose in its frame and the covariance layouts.

The node (nodes/convert.py, which re-exports these) and anything that must reproduce its outputs
without ROS (crossview-walks' fused track) share this one definition, so the two cannot drift.
Layouts: PoseWithCovariance covariance (x, y, z, roll, pitch, yaw) 6x6 row-major; Imu
orientation_covariance (roll, pitch, yaw) 3x3 row-major; yaw ENU, rad, 0 = east, counter-clockwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossview_ros import geo
from crossview_ros.estimate import Estimate

UNKNOWN_VARIANCE = 1e6  # variance of what the estimate does not observe (z, roll, pitch; yaw without heading)


def pose_covariance(cov_xy_m2: np.ndarray, yaw_var_rad2: float | None) -> list[float]:
    """(2, 2) x/y covariance + yaw variance -> PoseWithCovariance covariance (36 floats, row-major);
    z, roll and pitch (and yaw without a heading) get UNKNOWN_VARIANCE."""
    c = np.zeros((6, 6))
    c[:2, :2] = 0.5 * (np.asarray(cov_xy_m2, np.float64) + np.asarray(cov_xy_m2, np.float64).T)
    c[2, 2] = c[3, 3] = c[4, 4] = UNKNOWN_VARIANCE
    c[5, 5] = UNKNOWN_VARIANCE if yaw_var_rad2 is None else float(yaw_var_rad2)
    return [float(v) for v in c.ravel()]


def orientation_covariance(yaw_var_rad2: float) -> list[float]:
    """Imu orientation_covariance (roll, pitch, yaw) for a yaw-only measurement, row-major."""
    return [UNKNOWN_VARIANCE, 0.0, 0.0, 0.0, UNKNOWN_VARIANCE, 0.0, 0.0, 0.0, float(yaw_var_rad2)]


@dataclass(frozen=True)
class PlanarPose:
    """An estimate expressed in the pose frame: x, y (m), yaw (rad, None without heading), (2, 2) covariance."""

    x_m: float
    y_m: float
    yaw_rad: float | None
    covariance_m2: np.ndarray


def planar_pose(est: Estimate, origin: str, enu: geo.LocalENU | None = None) -> PlanarPose:
    """The estimate in the pose frame.

    origin "datum": x east, y north in the tangent plane of `enu` (geo.LocalENU at the datum); the
    covariance and the yaw keep the estimate's own ENU axes, which differ from the datum's by the
    convergence of the meridians (about 1.6e-4 rad per km east-west at 45 deg latitude; ignored).
    origin "utm": x easting, y northing in the tile set's zone; covariance and yaw rotated onto the
    grid (geo.enu_cov_to_utm, geo.yaw_enu_to_utm).
    """
    cov = np.asarray(est.covariance_enu_m2, np.float64)
    if origin == "utm":
        zone = est.utm_zone
        yaw = None if est.yaw_enu_rad is None else float(
            geo.yaw_enu_to_utm(est.yaw_enu_rad, est.lat_deg, est.lon_deg, zone))
        return PlanarPose(float(est.easting_m), float(est.northing_m), yaw,
                          geo.enu_cov_to_utm(cov, est.lat_deg, est.lon_deg, zone))
    if origin != "datum" or enu is None:
        raise ValueError(f"pose origin must be 'utm', or 'datum' with a LocalENU; got {origin!r}, {enu!r}")
    e_m, n_m, _ = enu.forward(est.lat_deg, est.lon_deg, 0.0)
    return PlanarPose(float(e_m), float(n_m), est.yaw_enu_rad, cov)
