"""Geodesy for the whole package: WGS84 <-> UTM, local ENU, distances, frame conversions.

The only module that does projection maths; everything else calls it. pyproj (PROJ) does the
heavy lifting, this module picks zones, caches transformers, checks inputs and fixes the
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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyproj

# Latitudes where UTM is defined; beyond them only UPS is, which we do not support.
UTM_LAT_MIN_DEG = -80.0
UTM_LAT_MAX_DEG = 84.0

# Farthest a point may lie from its zone's central meridian when the zone is forced. PROJ's
# series is good to nanometres within 3900 km of it (Karney 2011); 30 deg is under 3500 km.
# PROJ itself returns finite nonsense past 90 deg, so the limit is ours to enforce.
MAX_CENTRAL_MERIDIAN_OFFSET_DEG = 30.0

_WGS84_GEOD = pyproj.Geod(ellps="WGS84")
_TWO_PI = 2.0 * math.pi

ArrayLike = Any  # float, sequence of floats or numpy array


class GeoError(ValueError):
    """Invalid coordinates or an operation outside its valid range; the message says how to fix."""


# --------------------------------------------------------------------------- zones


@dataclass(frozen=True)
class UTMZone:
    """A UTM zone on WGS84: number 1..60 and hemisphere (not an MGRS latitude band)."""

    number: int
    south: bool

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, (int, np.integer)):
            raise GeoError(f"UTM zone number must be an int in 1..60, got {self.number!r}")
        if not 1 <= int(self.number) <= 60:
            raise GeoError(f"UTM zone number must be in 1..60, got {self.number}")
        if not isinstance(self.south, (bool, np.bool_)):
            raise GeoError(f"UTMZone.south must be a bool, got {self.south!r}")
        object.__setattr__(self, "number", int(self.number))
        object.__setattr__(self, "south", bool(self.south))

    @property
    def epsg(self) -> int:
        """EPSG code of 'WGS 84 / UTM zone NN{N,S}': 326NN north, 327NN south."""
        return (32700 if self.south else 32600) + self.number

    @property
    def crs(self) -> pyproj.CRS:
        """The zone's pyproj CRS (cached: building CRS objects is slow)."""
        return _crs_from_epsg(self.epsg)

    @property
    def central_meridian_deg(self) -> float:
        """Longitude of the zone's central meridian."""
        return -183.0 + 6.0 * self.number

    def __str__(self) -> str:
        return f"{self.number}{'S' if self.south else 'N'}"

    @classmethod
    def parse(cls, value: str | int | UTMZone) -> UTMZone:
        """Zone from "33N" / "33S" (hemisphere letter), an EPSG code 326NN/327NN or "EPSG:326NN"."""
        if isinstance(value, UTMZone):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return cls._from_epsg(int(value))
        if isinstance(value, str):
            text = value.strip().upper().replace(" ", "")
            if text.startswith("EPSG:") and text[5:].isdigit():
                return cls._from_epsg(int(text[5:]))
            if len(text) >= 2 and text[:-1].isdigit() and text[-1] in "NS":
                return cls(int(text[:-1]), text[-1] == "S")
        raise GeoError(
            f"cannot parse UTM zone {value!r}: write the zone number and the hemisphere letter "
            "N or S (e.g. '33N', '18S'; MGRS latitude bands are not accepted), or an EPSG "
            "code 32601..32660 / 32701..32760"
        )

    @classmethod
    def _from_epsg(cls, code: int) -> UTMZone:
        if 32601 <= code <= 32660:
            return cls(code - 32600, False)
        if 32701 <= code <= 32760:
            return cls(code - 32700, True)
        raise GeoError(
            f"EPSG:{code} is not a WGS 84 UTM zone; expected 32601..32660 (north) "
            "or 32701..32760 (south)"
        )


@lru_cache(maxsize=None)
def _crs_from_epsg(epsg: int) -> pyproj.CRS:
    return pyproj.CRS.from_epsg(epsg)


@lru_cache(maxsize=None)
def _utm_transformer(zone: UTMZone) -> pyproj.Transformer:
    # Transformers take milliseconds to build and are thread-safe since pyproj 3.1: cache them.
    return pyproj.Transformer.from_crs(_crs_from_epsg(4326), zone.crs, always_xy=True)


@lru_cache(maxsize=None)
def _utm_proj(zone: UTMZone) -> pyproj.Proj:
    return pyproj.Proj(zone.crs)


# --------------------------------------------------------------------------- input checks


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (float, int)) or np.ndim(x) == 0


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> tuple[Any, Any]:
    idx = np.unravel_index(int(np.argmax(bad)), arr.shape) if arr.ndim else ()
    where = f" at index {tuple(int(i) for i in idx)}" if arr.ndim else ""
    return arr[idx], where


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
            value, where = _first_bad(arr, bad)
            raise GeoError(
                f"{name} {value}{where} is not a finite number; pass degrees in "
                f"[-{limit:g}, {limit:g}] (drop fixes without a position before converting)"
            )
        bad = np.abs(arr) > limit
        if bad.any():
            value, where = _first_bad(arr, bad)
            raise GeoError(
                f"{name} {value}{where} is out of range; {name} must be in degrees within "
                f"[-{limit:g}, {limit:g}] (are latitude and longitude swapped, or given in "
                "radians?)"
            )


def _check_utm_lat(lat_deg: ArrayLike) -> None:
    if isinstance(lat_deg, (float, int)):
        if UTM_LAT_MIN_DEG <= lat_deg <= UTM_LAT_MAX_DEG:
            return
    lat = np.asarray(lat_deg, dtype=np.float64)
    bad = (lat < UTM_LAT_MIN_DEG) | (lat > UTM_LAT_MAX_DEG)
    if bad.any():
        value, where = _first_bad(lat, bad)
        raise GeoError(
            f"latitude {value}{where} is outside the UTM range [{UTM_LAT_MIN_DEG:g}, "
            f"{UTM_LAT_MAX_DEG:g}] degrees; polar regions need UPS, which is not supported"
        )


def _check_finite(name: str, x: ArrayLike) -> None:
    if isinstance(x, (float, int)):
        if math.isfinite(x):
            return
    arr = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        value, where = _first_bad(arr, bad)
        raise GeoError(f"{name} {value}{where} is not a finite number; pass finite values")


def _check_zone_offset(lon_deg: ArrayLike, zone: UTMZone, what: str = "longitude") -> None:
    cm = zone.central_meridian_deg
    if isinstance(lon_deg, float):
        if abs((lon_deg - cm + 180.0) % 360.0 - 180.0) <= MAX_CENTRAL_MERIDIAN_OFFSET_DEG:
            return
    lon = np.asarray(lon_deg, dtype=np.float64)
    bad = np.abs(np.mod(lon - cm + 180.0, 360.0) - 180.0) > MAX_CENTRAL_MERIDIAN_OFFSET_DEG
    if bad.any():
        value, where = _first_bad(lon, bad)
        raise GeoError(
            f"{what} {value}{where} is more than {MAX_CENTRAL_MERIDIAN_OFFSET_DEG:g} deg from the "
            f"central meridian {cm:g} of UTM zone {zone}; project it in its own zone (utm_zone())"
        )


def _as_zone(zone: UTMZone | str | int) -> UTMZone:
    return zone if isinstance(zone, UTMZone) else UTMZone.parse(zone)


def _out(x: Any, scalar: bool) -> Any:
    return float(x) if scalar else np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- UTM


def utm_zone(lat_deg: float, lon_deg: float) -> UTMZone:
    """Standard UTM zone of a point, with the Norway (32V) and Svalbard (31X-37X) exceptions.

    Zone boundaries belong to the eastern zone (lon 6.0 -> zone 32); lon 180 is zone 60.
    """
    check_latlon(lat_deg, lon_deg)
    _check_utm_lat(lat_deg)
    lat = float(lat_deg)
    lon = float(lon_deg)
    number = min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        number = 32  # Norway: band V, zone 32 widened west to 3 deg E
    elif lat >= 72.0 and 0.0 <= lon < 42.0:
        # Svalbard: band X uses only the odd zones 31, 33, 35, 37 (boundaries 9, 21, 33 deg E).
        number = 31 if lon < 9.0 else 33 if lon < 21.0 else 35 if lon < 33.0 else 37
    return UTMZone(number, lat < 0.0)


def latlon_to_utm(
    lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int | None = None
) -> tuple[Any, Any, UTMZone]:
    """WGS84 -> UTM (easting_m, northing_m, zone); scalars in, floats out; arrays keep their shape.

    zone=None picks the zone of the point (of the first point for arrays). A forced zone may be
    used for points outside it (tile sets spanning a zone edge): PROJ stays accurate to
    nanometres within 3900 km of the central meridian, but the scale factor grows with the
    distance x from it (k ~ 0.9996 (1 + x^2 / 2R^2): 1.001 at 3 deg, 1.005 at 6 deg off at the
    equator), so grid distances there overstate ground distances accordingly. Points of the
    other hemisphere get northings below 0 (north zone) or above 10,000 km (south zone).
    Points more than MAX_CENTRAL_MERIDIAN_OFFSET_DEG from the central meridian are refused.
    """
    check_latlon(lat_deg, lon_deg)
    _check_utm_lat(lat_deg)
    scalar = _is_scalar(lat_deg) and _is_scalar(lon_deg)
    if zone is None:
        if scalar:
            zone = utm_zone(float(lat_deg), float(lon_deg))
        else:
            lat_a, lon_a = np.broadcast_arrays(
                np.asarray(lat_deg, float), np.asarray(lon_deg, float)
            )
            if lat_a.size == 0:
                raise GeoError("cannot pick a UTM zone for an empty array; pass zone= explicitly")
            zone = utm_zone(float(lat_a.flat[0]), float(lon_a.flat[0]))
    else:
        zone = _as_zone(zone)
    _check_zone_offset(float(lon_deg) if scalar else lon_deg, zone)
    if scalar:
        e, n = _utm_transformer(zone).transform(float(lon_deg), float(lat_deg))
        if not (math.isfinite(e) and math.isfinite(n)):
            raise GeoError(
                f"({lat_deg}, {lon_deg}) cannot be projected into zone {zone}: it is too far from "
                f"the central meridian {zone.central_meridian_deg:g} deg; use the point's own zone"
            )
        return e, n, zone
    lat, lon = np.broadcast_arrays(np.asarray(lat_deg, float), np.asarray(lon_deg, float))
    e, n = _utm_transformer(zone).transform(lon, lat)
    e = np.asarray(e, dtype=np.float64).reshape(lat.shape)
    n = np.asarray(n, dtype=np.float64).reshape(lat.shape)
    bad = ~(np.isfinite(e) & np.isfinite(n))
    if bad.any():
        _, where = _first_bad(e, bad)
        raise GeoError(
            f"point{where} cannot be projected into zone {zone}: it is too far from the central "
            f"meridian {zone.central_meridian_deg:g} deg; split the points by zone"
        )
    return e, n, zone


def utm_to_latlon(e_m: ArrayLike, n_m: ArrayLike, zone: UTMZone | str | int) -> tuple[Any, Any]:
    """UTM (easting_m, northing_m) in `zone` -> WGS84 (lat_deg, lon_deg); undoes latlon_to_utm."""
    zone = _as_zone(zone)
    _check_finite("easting_m", e_m)
    _check_finite("northing_m", n_m)
    scalar = _is_scalar(e_m) and _is_scalar(n_m)
    if scalar:
        lon, lat = _utm_transformer(zone).transform(float(e_m), float(n_m), direction="INVERSE")
        if math.isfinite(lat) and math.isfinite(lon):
            _check_zone_offset(lon, zone, "easting/northing give longitude")
            return lat, lon
    else:
        e, n = np.broadcast_arrays(np.asarray(e_m, float), np.asarray(n_m, float))
        lon, lat = _utm_transformer(zone).transform(e, n, direction="INVERSE")
        lon = np.asarray(lon, dtype=np.float64).reshape(e.shape)
        lat = np.asarray(lat, dtype=np.float64).reshape(e.shape)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise GeoError(
            f"UTM coordinates cannot be inverted in zone {zone}: easting/northing far outside "
            "the zone (is the zone or the hemisphere wrong?)"
        )
    _check_zone_offset(lon, zone, "easting/northing give longitude")
    return lat, lon


# --------------------------------------------------------------------------- generic CRS


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
    _check_finite("x", x)
    _check_finite("y", y)
    transformer = _transformer(_as_crs(src_crs), _as_crs(dst_crs))
    scalar = _is_scalar(x) and _is_scalar(y)
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


# --------------------------------------------------------------------------- ENU, distances


class LocalENU:
    """East-North-Up tangent plane at a datum (geodetic -> ECEF -> topocentric, exact).

    Heights are above the WGS84 ellipsoid. The frame is exact in 3D; its horizontal plane
    leaves the ground (u ~ -d^2 / 2R: -8 cm at 1 km, -8 m at 10 km), so use it for small areas.
    """

    def __init__(self, lat0_deg: float, lon0_deg: float, alt0_m: float = 0.0) -> None:
        check_latlon(lat0_deg, lon0_deg)
        _check_finite("alt0_m", alt0_m)
        self.lat0_deg = float(lat0_deg)
        self.lon0_deg = float(lon0_deg)
        self.alt0_m = float(alt0_m)
        # proj=topocentric needs PROJ >= 8 (pyproj wheels ship 9.x).
        self._transformer = pyproj.Transformer.from_pipeline(
            "+proj=pipeline"
            " +step +proj=unitconvert +xy_in=deg +xy_out=rad"
            " +step +proj=cart +ellps=WGS84"
            f" +step +proj=topocentric +ellps=WGS84 +lat_0={self.lat0_deg!r}"
            f" +lon_0={self.lon0_deg!r} +h_0={self.alt0_m!r}"
        )

    def __repr__(self) -> str:
        return (
            f"LocalENU(lat0_deg={self.lat0_deg!r}, lon0_deg={self.lon0_deg!r}, "
            f"alt0_m={self.alt0_m!r})"
        )

    def forward(
        self, lat_deg: ArrayLike, lon_deg: ArrayLike, alt_m: ArrayLike = 0.0
    ) -> tuple[Any, Any, Any]:
        """WGS84 (lat_deg, lon_deg, alt_m) -> (e_m, n_m, u_m) in this frame."""
        check_latlon(lat_deg, lon_deg)
        _check_finite("alt_m", alt_m)
        scalar = _is_scalar(lat_deg) and _is_scalar(lon_deg) and _is_scalar(alt_m)
        if scalar:
            return self._transformer.transform(float(lon_deg), float(lat_deg), float(alt_m))
        lat, lon, alt = np.broadcast_arrays(
            np.asarray(lat_deg, float), np.asarray(lon_deg, float), np.asarray(alt_m, float)
        )
        e, n, u = self._transformer.transform(lon, lat, alt)
        return tuple(np.asarray(v, dtype=np.float64).reshape(lat.shape) for v in (e, n, u))

    def inverse(
        self, e_m: ArrayLike, n_m: ArrayLike, u_m: ArrayLike = 0.0
    ) -> tuple[Any, Any, Any]:
        """(e_m, n_m, u_m) in this frame -> WGS84 (lat_deg, lon_deg, alt_m)."""
        for name, v in (("e_m", e_m), ("n_m", n_m), ("u_m", u_m)):
            _check_finite(name, v)
        scalar = _is_scalar(e_m) and _is_scalar(n_m) and _is_scalar(u_m)
        if scalar:
            lon, lat, alt = self._transformer.transform(
                float(e_m), float(n_m), float(u_m), direction="INVERSE"
            )
            return lat, lon, alt
        e, n, u = np.broadcast_arrays(
            np.asarray(e_m, float), np.asarray(n_m, float), np.asarray(u_m, float)
        )
        lon, lat, alt = self._transformer.transform(e, n, u, direction="INVERSE")
        return tuple(np.asarray(v, dtype=np.float64).reshape(e.shape) for v in (lat, lon, alt))


def offset_enu_m(
    lat0_deg: ArrayLike, lon0_deg: ArrayLike, lat1_deg: ArrayLike, lon1_deg: ArrayLike
) -> tuple[Any, Any]:
    """Horizontal offset (de_m, dn_m) of point 1 seen from point 0, in point 0's east/north axes.

    Azimuthal equidistant: length = geodesic distance, direction = geodesic azimuth at point 0.
    Against the tangent-plane ENU of LocalENU the length differs by about d^3 / 6R^2
    (4 um at 1 km, 4 mm at 10 km).
    """
    check_latlon(lat0_deg, lon0_deg)
    check_latlon(lat1_deg, lon1_deg)
    scalar = all(_is_scalar(v) for v in (lat0_deg, lon0_deg, lat1_deg, lon1_deg))
    if scalar:
        az_deg, _, dist_m = _WGS84_GEOD.inv(
            float(lon0_deg), float(lat0_deg), float(lon1_deg), float(lat1_deg)
        )
        az = math.radians(az_deg)
        return dist_m * math.sin(az), dist_m * math.cos(az)
    lat0, lon0, lat1, lon1 = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lat0_deg, lon0_deg, lat1_deg, lon1_deg))
    )
    az_deg, _, dist_m = _WGS84_GEOD.inv(lon0, lat0, lon1, lat1)
    az = np.radians(np.asarray(az_deg, dtype=np.float64)).reshape(lat0.shape)
    dist_m = np.asarray(dist_m, dtype=np.float64).reshape(lat0.shape)
    return dist_m * np.sin(az), dist_m * np.cos(az)


def distance_m(
    lat0_deg: ArrayLike, lon0_deg: ArrayLike, lat1_deg: ArrayLike, lon1_deg: ArrayLike
) -> Any:
    """WGS84 geodesic distance in metres (Karney's algorithm, about 15 nm accuracy)."""
    check_latlon(lat0_deg, lon0_deg)
    check_latlon(lat1_deg, lon1_deg)
    scalar = all(_is_scalar(v) for v in (lat0_deg, lon0_deg, lat1_deg, lon1_deg))
    if scalar:
        return _WGS84_GEOD.inv(
            float(lon0_deg), float(lat0_deg), float(lon1_deg), float(lat1_deg)
        )[2]
    lat0, lon0, lat1, lon1 = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lat0_deg, lon0_deg, lat1_deg, lon1_deg))
    )
    dist_m = _WGS84_GEOD.inv(lon0, lat0, lon1, lat1)[2]
    return np.asarray(dist_m, dtype=np.float64).reshape(lat0.shape)


# --------------------------------------------------------------------------- grid convergence


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
    zone = _as_zone(zone)
    check_latlon(lat_deg, lon_deg)
    _check_utm_lat(lat_deg)
    scalar = _is_scalar(lat_deg) and _is_scalar(lon_deg)
    _check_zone_offset(float(lon_deg) if scalar else lon_deg, zone)
    if scalar:
        factors = _utm_proj(zone).get_factors(float(lon_deg), float(lat_deg))
        theta = math.atan2(-factors.dx_dphi, factors.dy_dphi)
        if not math.isfinite(theta):
            raise GeoError(f"grid convergence undefined at ({lat_deg}, {lon_deg}) in zone {zone}")
        return theta
    lat, lon = np.broadcast_arrays(np.asarray(lat_deg, float), np.asarray(lon_deg, float))
    factors = _utm_proj(zone).get_factors(lon, lat)
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
    _check_finite("covariance entry", c)
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


def navsat_cov_to_matrix(position_covariance: Sequence[float]) -> np.ndarray:
    """sensor_msgs/NavSatFix position_covariance (9 floats, ENU, m^2, row-major) -> (3, 3)."""
    c = np.asarray(position_covariance, dtype=np.float64)
    if c.shape != (9,):
        raise GeoError(
            "NavSatFix position_covariance must hold 9 floats (row-major 3x3 ENU, m^2), "
            f"got shape {c.shape}"
        )
    _check_finite("position_covariance entry", c)
    return c.reshape(3, 3).copy()


def matrix_to_navsat_cov(cov3x3: ArrayLike) -> list[float]:
    """(3, 3) ENU covariance (m^2) -> 9 row-major floats for NavSatFix, symmetrised."""
    c = np.asarray(cov3x3, dtype=np.float64)
    if c.shape != (3, 3):
        raise GeoError(
            f"covariance must be 3x3 (E, N, U in m^2) for NavSatFix, got shape {c.shape}"
        )
    _check_finite("covariance entry", c)
    return [float(v) for v in (0.5 * (c + c.T)).ravel()]


# --------------------------------------------------------------------------- angles


def wrap_angle_rad(a: ArrayLike) -> Any:
    """Angle wrapped to (-pi, pi]."""
    _check_finite("angle_rad", a)
    scalar = _is_scalar(a)
    w = math.pi - np.mod(math.pi - np.asarray(a, dtype=np.float64), _TWO_PI)
    w = np.where(w <= -math.pi, math.pi, w)
    return _out(w, scalar)


def yaw_enu_to_utm(
    yaw_enu_rad: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int
) -> Any:
    """ENU yaw (0 = east, CCW) -> yaw of the same direction against UTM grid axes, wrapped."""
    _check_finite("yaw_enu_rad", yaw_enu_rad)
    return wrap_angle_rad(np.add(yaw_enu_rad, grid_convergence_rad(lat_deg, lon_deg, zone)))


def yaw_utm_to_enu(
    yaw_utm_rad: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike, zone: UTMZone | str | int
) -> Any:
    """UTM grid yaw (0 = grid east, CCW) -> ENU yaw, wrapped; inverse of yaw_enu_to_utm."""
    _check_finite("yaw_utm_rad", yaw_utm_rad)
    return wrap_angle_rad(np.subtract(yaw_utm_rad, grid_convergence_rad(lat_deg, lon_deg, zone)))


def yaw_enu_from_bearing_deg(bearing_deg: ArrayLike) -> Any:
    """Compass bearing (deg, 0 = north, clockwise) -> ENU yaw (rad, 0 = east, CCW) in (-pi, pi]."""
    _check_finite("bearing_deg", bearing_deg)
    scalar = _is_scalar(bearing_deg)
    return _out(wrap_angle_rad(math.pi / 2.0 - np.radians(np.asarray(bearing_deg, float))), scalar)


def bearing_deg_from_yaw_enu(yaw_enu_rad: ArrayLike) -> Any:
    """ENU yaw (rad, 0 = east, CCW) -> compass bearing (deg, 0 = north, clockwise) in [0, 360)."""
    _check_finite("yaw_enu_rad", yaw_enu_rad)
    scalar = _is_scalar(yaw_enu_rad)
    b = np.mod(90.0 - np.degrees(np.asarray(yaw_enu_rad, float)), 360.0)
    b = np.where(b >= 360.0, 0.0, b)
    return _out(b, scalar)
