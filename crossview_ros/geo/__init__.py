"""Geodesy for the whole package: WGS84 <-> UTM, local ENU, distances, frame conversions.

The only package that does projection maths; everything else calls it. pyproj (PROJ) does the
heavy lifting, these modules pick zones, cache transformers, check inputs and fix the
conventions:

- latitude/longitude in degrees on WGS84, heights above the WGS84 ellipsoid (NavSatFix
  altitude), never above mean sea level;
- ENU yaw in radians, 0 = east, counter-clockwise, wrapped to (-pi, pi];
- compass bearing in degrees, 0 = north, clockwise, in [0, 360);
- UTM grid frame: x = easting, y = northing, same handedness as ENU.

Error budget (stated once here, repeated where it matters):

- UTM: PROJ's default transverse Mercator (Poder/Engsager, Krueger series of order 6) is
  accurate to about 5 nm within 3900 km of the central meridian (Karney 2011, J. Geodesy 85).
  Inside a zone the projection error is therefore nil for our purposes.
- Geodesic distance: pyproj.Geod uses Karney's algorithm, accurate to about 15 nm.
- Covariance and yaw rotation to the grid ignore the UTM point scale factor (0.9996 to
  about 1.001 inside a zone): variances are off by at most 0.2 %.

Every function refuses NaN, infinities and out-of-range coordinates with a GeoError that says
what was wrong and what is allowed.

Modules: checks (GeoError, input checks), utm (zones, WGS84 <-> UTM), crs (any CRS to any),
enu (local ENU frames, geodesic offsets and distances), grid (ENU vs UTM grid axes:
convergence, covariance and yaw rotation), angles (yaw, bearing and quaternion conventions), navsat
(NavSatFix covariance layout). Callers use `from crossview_ros import geo; geo.X`.
"""

from crossview_ros.geo.angles import (
    bearing_deg_from_yaw_enu, quaternion_to_yaw, wrap_angle_rad, yaw_enu_from_bearing_deg,
)
from crossview_ros.geo.checks import ArrayLike, GeoError, check_latlon
from crossview_ros.geo.crs import transform_points
from crossview_ros.geo.enu import LocalENU, distance_m, offset_enu_m
from crossview_ros.geo.grid import (
    enu_cov_to_utm, grid_convergence_rad, utm_cov_to_enu, yaw_enu_to_utm, yaw_utm_to_enu,
)
from crossview_ros.geo.navsat import matrix_to_navsat_cov, navsat_cov_to_matrix
from crossview_ros.geo.utm import (
    MAX_CENTRAL_MERIDIAN_OFFSET_DEG, UTM_LAT_MAX_DEG, UTM_LAT_MIN_DEG, UTMZone, latlon_to_utm, utm_to_latlon,
    utm_zone,
)

__all__ = [
    "MAX_CENTRAL_MERIDIAN_OFFSET_DEG", "UTM_LAT_MAX_DEG", "UTM_LAT_MIN_DEG", "ArrayLike", "GeoError",
    "LocalENU", "UTMZone", "bearing_deg_from_yaw_enu", "check_latlon", "distance_m", "enu_cov_to_utm",
    "grid_convergence_rad", "latlon_to_utm", "matrix_to_navsat_cov", "navsat_cov_to_matrix", "offset_enu_m",
    "quaternion_to_yaw", "transform_points", "utm_cov_to_enu", "utm_to_latlon", "utm_zone", "wrap_angle_rad",
    "yaw_enu_from_bearing_deg", "yaw_enu_to_utm", "yaw_utm_to_enu",
]
