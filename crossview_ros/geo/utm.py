"""UTM zones and the WGS84 <-> UTM projection (zone choice, forced zones, their limits).

PROJ's transverse Mercator (Poder/Engsager, Krueger series of order 6) is accurate to about
5 nm within 3900 km of the central meridian (Karney 2011, J. Geodesy 85); this module picks
zones, caches transformers and refuses points the series cannot serve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyproj

from crossview_ros.geo.checks import ArrayLike, GeoError, check_finite, check_latlon, first_bad, is_scalar

# Latitudes where UTM is defined; beyond them only UPS is, which we do not support.
UTM_LAT_MIN_DEG = -80.0
UTM_LAT_MAX_DEG = 84.0

# Farthest a point may lie from its zone's central meridian when the zone is forced. PROJ's
# series is good to nanometres within 3900 km of it (Karney 2011); 30 deg is under 3500 km.
# PROJ itself returns finite nonsense past 90 deg, so the limit is ours to enforce.
MAX_CENTRAL_MERIDIAN_OFFSET_DEG = 30.0


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
        return crs_from_epsg(self.epsg)

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
def crs_from_epsg(epsg: int) -> pyproj.CRS:
    return pyproj.CRS.from_epsg(epsg)


@lru_cache(maxsize=None)
def utm_transformer(zone: UTMZone) -> pyproj.Transformer:
    # Transformers take milliseconds to build and are thread-safe since pyproj 3.1: cache them.
    return pyproj.Transformer.from_crs(crs_from_epsg(4326), zone.crs, always_xy=True)


@lru_cache(maxsize=None)
def utm_proj(zone: UTMZone) -> pyproj.Proj:
    return pyproj.Proj(zone.crs)


def check_utm_lat(lat_deg: ArrayLike) -> None:
    if isinstance(lat_deg, (float, int)):
        if UTM_LAT_MIN_DEG <= lat_deg <= UTM_LAT_MAX_DEG:
            return
    lat = np.asarray(lat_deg, dtype=np.float64)
    bad = (lat < UTM_LAT_MIN_DEG) | (lat > UTM_LAT_MAX_DEG)
    if bad.any():
        value, where = first_bad(lat, bad)
        raise GeoError(
            f"latitude {value}{where} is outside the UTM range [{UTM_LAT_MIN_DEG:g}, "
            f"{UTM_LAT_MAX_DEG:g}] degrees; polar regions need UPS, which is not supported"
        )


def check_zone_offset(lon_deg: ArrayLike, zone: UTMZone, what: str = "longitude") -> None:
    cm = zone.central_meridian_deg
    if isinstance(lon_deg, float):
        if abs((lon_deg - cm + 180.0) % 360.0 - 180.0) <= MAX_CENTRAL_MERIDIAN_OFFSET_DEG:
            return
    lon = np.asarray(lon_deg, dtype=np.float64)
    bad = np.abs(np.mod(lon - cm + 180.0, 360.0) - 180.0) > MAX_CENTRAL_MERIDIAN_OFFSET_DEG
    if bad.any():
        value, where = first_bad(lon, bad)
        raise GeoError(
            f"{what} {value}{where} is more than {MAX_CENTRAL_MERIDIAN_OFFSET_DEG:g} deg from the "
            f"central meridian {cm:g} of UTM zone {zone}; project it in its own zone (utm_zone())"
        )


def as_zone(zone: UTMZone | str | int) -> UTMZone:
    return zone if isinstance(zone, UTMZone) else UTMZone.parse(zone)


def utm_zone(lat_deg: float, lon_deg: float) -> UTMZone:
    """Standard UTM zone of a point, with the Norway (32V) and Svalbard (31X-37X) exceptions.

    Zone boundaries belong to the eastern zone (lon 6.0 -> zone 32); lon 180 is zone 60.
    """
    check_latlon(lat_deg, lon_deg)
    check_utm_lat(lat_deg)
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
    check_utm_lat(lat_deg)
    scalar = is_scalar(lat_deg) and is_scalar(lon_deg)
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
        zone = as_zone(zone)
    check_zone_offset(float(lon_deg) if scalar else lon_deg, zone)
    if scalar:
        e, n = utm_transformer(zone).transform(float(lon_deg), float(lat_deg))
        if not (math.isfinite(e) and math.isfinite(n)):
            raise GeoError(
                f"({lat_deg}, {lon_deg}) cannot be projected into zone {zone}: it is too far from "
                f"the central meridian {zone.central_meridian_deg:g} deg; use the point's own zone"
            )
        return e, n, zone
    lat, lon = np.broadcast_arrays(np.asarray(lat_deg, float), np.asarray(lon_deg, float))
    e, n = utm_transformer(zone).transform(lon, lat)
    e = np.asarray(e, dtype=np.float64).reshape(lat.shape)
    n = np.asarray(n, dtype=np.float64).reshape(lat.shape)
    bad = ~(np.isfinite(e) & np.isfinite(n))
    if bad.any():
        _, where = first_bad(e, bad)
        raise GeoError(
            f"point{where} cannot be projected into zone {zone}: it is too far from the central "
            f"meridian {zone.central_meridian_deg:g} deg; split the points by zone"
        )
    return e, n, zone


def utm_to_latlon(e_m: ArrayLike, n_m: ArrayLike, zone: UTMZone | str | int) -> tuple[Any, Any]:
    """UTM (easting_m, northing_m) in `zone` -> WGS84 (lat_deg, lon_deg); undoes latlon_to_utm."""
    zone = as_zone(zone)
    check_finite("easting_m", e_m)
    check_finite("northing_m", n_m)
    scalar = is_scalar(e_m) and is_scalar(n_m)
    if scalar:
        lon, lat = utm_transformer(zone).transform(float(e_m), float(n_m), direction="INVERSE")
        if math.isfinite(lat) and math.isfinite(lon):
            check_zone_offset(lon, zone, "easting/northing give longitude")
            return lat, lon
    else:
        e, n = np.broadcast_arrays(np.asarray(e_m, float), np.asarray(n_m, float))
        lon, lat = utm_transformer(zone).transform(e, n, direction="INVERSE")
        lon = np.asarray(lon, dtype=np.float64).reshape(e.shape)
        lat = np.asarray(lat, dtype=np.float64).reshape(e.shape)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise GeoError(
            f"UTM coordinates cannot be inverted in zone {zone}: easting/northing far outside "
            "the zone (is the zone or the hemisphere wrong?)"
        )
    check_zone_offset(lon, zone, "easting/northing give longitude")
    return lat, lon

