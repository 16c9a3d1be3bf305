"""Tests for crossview_ros.geo against values computed without PROJ.

Independent references used here:
- GeographicLib (the `geographiclib` package, Karney's geodesic algorithms in pure Python) for
  geodesic distances, azimuths and small geodesic steps;
- Krueger's series for transverse Mercator, written out below from Karney (2011), "Transverse
  Mercator with an accuracy of a few nanometers", J. Geodesy 85, eqs. (7)-(11), (35); first
  checked against published values, then used as the reference at mm level;
- published coordinates (each cited where used);
- closed-form geodetic -> ECEF -> ENU and Web Mercator formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from crossview_ros import geo
from crossview_ros.geo import GeoError, UTMZone
from crossview_ros.geo import grid as geo_grid

WGS84_A_M = 6378137.0
WGS84_F = 1.0 / 298.257223563
GRS80_F = 1.0 / 298.257222101
GEOD = Geodesic.WGS84

# No example database: the tests must not write .hypothesis/ into the source tree.
FAST = settings(max_examples=150, deadline=None, database=None)


def dms(d: float, m: float, s: float) -> float:
    return d + m / 60.0 + s / 3600.0


def kruger(lat_deg: float, lon_deg: float, lon0_deg: float, a: float = WGS84_A_M,
           f: float = WGS84_F, k0: float = 0.9996) -> tuple[float, float, float]:
    """Transverse Mercator (x_m, y_m, gamma_rad) by Krueger's 6th-order series (Karney 2011).

    x, y without false easting/northing; gamma = meridian convergence, clockwise from true
    north to grid north.
    """
    n = f / (2 - f)
    big_a = a / (1 + n) * (1 + n**2 / 4 + n**4 / 64 + n**6 / 256)
    alpha = [
        n / 2 - 2 * n**2 / 3 + 5 * n**3 / 16 + 41 * n**4 / 180 - 127 * n**5 / 288
        + 7891 * n**6 / 37800,
        13 * n**2 / 48 - 3 * n**3 / 5 + 557 * n**4 / 1440 + 281 * n**5 / 630
        - 1983433 * n**6 / 1935360,
        61 * n**3 / 240 - 103 * n**4 / 140 + 15061 * n**5 / 26880 + 167603 * n**6 / 181440,
        49561 * n**4 / 161280 - 179 * n**5 / 168 + 6601661 * n**6 / 7257600,
        34729 * n**5 / 80640 - 3418889 * n**6 / 1995840,
        212378941 * n**6 / 319334400,
    ]
    e = math.sqrt(f * (2 - f))
    lam = math.radians(lon_deg - lon0_deg)
    tau = math.tan(math.radians(lat_deg))
    sigma = math.sinh(e * math.atanh(e * tau / math.sqrt(1 + tau * tau)))
    taup = tau * math.sqrt(1 + sigma * sigma) - sigma * math.sqrt(1 + tau * tau)
    xip = math.atan2(taup, math.cos(lam))
    etap = math.asinh(math.sin(lam) / math.sqrt(taup * taup + math.cos(lam) ** 2))
    xi, eta, p, q = xip, etap, 1.0, 0.0
    for j, aj in enumerate(alpha, start=1):
        xi += aj * math.sin(2 * j * xip) * math.cosh(2 * j * etap)
        eta += aj * math.cos(2 * j * xip) * math.sinh(2 * j * etap)
        p += 2 * j * aj * math.cos(2 * j * xip) * math.cosh(2 * j * etap)
        q += 2 * j * aj * math.sin(2 * j * xip) * math.sinh(2 * j * etap)
    gamma = math.atan(taup / math.sqrt(1 + taup * taup) * math.tan(lam)) + math.atan2(q, p)
    return k0 * big_a * eta, k0 * big_a * xi, gamma


def kruger_utm(lat_deg: float, lon_deg: float, zone: UTMZone) -> tuple[float, float]:
    x, y, _ = kruger(lat_deg, lon_deg, -183.0 + 6.0 * zone.number)
    return x + 500000.0, y + (10_000_000.0 if zone.south else 0.0)


def geodesic_m(lat0: float, lon0: float, lat1: float, lon1: float) -> float:
    return GEOD.Inverse(lat0, lon0, lat1, lon1)["s12"]


def convergence_from_geodesic_step(
    lat: float, lon: float, zone: UTMZone, step_m: float = 5.0
) -> float:
    """Convergence from a short geodesic chord due north through the point, projected to UTM.

    The chord from 5 m south to 5 m north has the grid bearing of true north to O(step^2):
    that bearing is -theta in geo's convention.
    """
    south = GEOD.Direct(lat, lon, 180.0, step_m)
    north = GEOD.Direct(lat, lon, 0.0, step_m)
    e0, n0, _ = geo.latlon_to_utm(south["lat2"], south["lon2"], zone)
    e1, n1, _ = geo.latlon_to_utm(north["lat2"], north["lon2"], zone)
    return -math.atan2(e1 - e0, n1 - n0)


# --------------------------------------------------------------------------- reference checks


def test_kruger_reference_reproduces_snyder_worked_example():
    # Snyder, "Map Projections: A Working Manual", USGS Prof. Paper 1395 (1987), p. 269,
    # transverse Mercator ellipsoidal example: Clarke 1866, phi = 40d30'N, lambda = 73d30'W,
    # lambda0 = 75dW, k0 = 0.9996 -> x = 127,106.5 m, y = 4,484,124.4 m.
    f = 1.0 - math.sqrt(1.0 - 0.00676866)
    x, y, _ = kruger(40.5, -73.5, -75.0, a=6378206.4, f=f)
    assert x == pytest.approx(127106.5, abs=0.05)
    assert y == pytest.approx(4484124.4, abs=0.05)


# PROJ test suite, test/gie/builtins.gie, "+proj=utm +ellps=GRS80 +zone=30" block
# (lon, lat) -> (x, y); zone 30 north, so latitude -1 gives a negative northing.
PROJ_GIE_UTM30_GRS80 = [
    ((2.0, 1.0), (1057002.405491298, 110955.141175949)),
    ((2.0, -1.0), (1057002.405491298, -110955.141175949)),
    ((-2.0, 1.0), (611263.812278904, 110547.105696804)),
    ((-2.0, -1.0), (611263.812278904, -110547.105696804)),
]


@pytest.mark.parametrize(("lonlat", "expected"), PROJ_GIE_UTM30_GRS80)
def test_kruger_reference_reproduces_proj_test_suite(lonlat, expected):
    x, y, _ = kruger(lonlat[1], lonlat[0], -3.0, f=GRS80_F)
    assert x + 500000.0 == pytest.approx(expected[0], abs=1e-6)
    assert y == pytest.approx(expected[1], abs=1e-6)


# --------------------------------------------------------------------------- published UTM values


@pytest.mark.parametrize(("lonlat", "expected"), PROJ_GIE_UTM30_GRS80)
def test_latlon_to_utm_matches_proj_test_suite_values(lonlat, expected):
    # GRS80 and WGS84 differ only in the 11th digit of the flattening: < 0.01 mm here.
    e, n, zone = geo.latlon_to_utm(lonlat[1], lonlat[0], UTMZone(30, False))
    assert zone == UTMZone(30, False)
    assert e == pytest.approx(expected[0], abs=1e-4)
    assert n == pytest.approx(expected[1], abs=1e-4)


def test_latlon_to_utm_cn_tower_wikipedia():
    # Wikipedia, "Universal Transverse Mercator coordinate system": the CN Tower at
    # 43d38'33.24"N 79d23'13.7"W is in zone 17 at 630084 m east, 4833438 m north.
    # Tolerance: 1 m rounding of the grid values plus 0.05" of longitude (1.1 m).
    e, n, zone = geo.latlon_to_utm(dms(43, 38, 33.24), -dms(79, 23, 13.7))
    assert str(zone) == "17N"
    assert e == pytest.approx(630084.0, abs=1.7)
    assert n == pytest.approx(4833438.0, abs=0.8)


def test_utm_to_latlon_geoconvert_example():
    # GeographicLib GeoConvert(1) man page, EXAMPLES: 38SMB4488 = "38n 444500 3688500"
    # = "33.33424 44.40363" = "33:20:03.25N 044:24:13.06E".
    lat, lon = geo.utm_to_latlon(444500.0, 3688500.0, UTMZone.parse("38N"))
    assert lat == pytest.approx(dms(33, 20, 3.25), abs=0.0051 / 3600.0)
    assert lon == pytest.approx(dms(44, 24, 13.06), abs=0.0051 / 3600.0)
    assert round(lat, 5) == 33.33424
    assert round(lon, 5) == 44.40363
    e, n, zone = geo.latlon_to_utm(dms(33, 20, 3.25), dms(44, 24, 13.06))
    assert str(zone) == "38N"
    assert math.hypot(e - 444500.0, n - 3688500.0) < 0.2  # 0.005" is 0.15 m


# --------------------------------------------------------------------------- projection vs Krueger

KRUGER_POINTS = [
    (52.52, 13.405),    # Berlin, 33N
    (40.7128, -74.006),  # New York, 18N
    (-33.8688, 151.2093),  # Sydney, 56S
    (-54.8, -68.3),     # Ushuaia, 19S
    (0.0, 0.0),
    (-0.001, 2.999),    # just south of the equator at a zone edge
    (83.9, -40.0),      # northern limit
    (-79.9, 179.9),     # southern limit, zone 60
    (60.0, 4.0),        # Norway 32V: 5 deg west of the central meridian
    (78.0, 20.0),       # Svalbard 33X: 5 deg east of the central meridian
]


@pytest.mark.parametrize(("lat", "lon"), KRUGER_POINTS)
def test_latlon_to_utm_matches_kruger(lat, lon):
    e, n, zone = geo.latlon_to_utm(lat, lon)
    e_ref, n_ref = kruger_utm(lat, lon, zone)
    assert abs(e - e_ref) < 1e-3 and abs(n - n_ref) < 1e-3


@FAST
@given(lat=st.floats(-80.0, 84.0), lon=st.floats(-180.0, 180.0))
def test_latlon_to_utm_matches_kruger_property(lat, lon):
    e, n, zone = geo.latlon_to_utm(lat, lon)
    e_ref, n_ref = kruger_utm(lat, lon, zone)
    assert abs(e - e_ref) < 1e-3 and abs(n - n_ref) < 1e-3
    assert 100_000.0 < e < 900_000.0  # inside the zone, a point stays within the zone's band


def test_forced_zone_matches_kruger_outside_the_zone():
    # 8 deg west of zone 33's central meridian, i.e. 5 deg outside the zone.
    zone = UTMZone(33, False)
    e, n, _ = geo.latlon_to_utm(48.0, 7.0, zone)
    e_ref, n_ref = kruger_utm(48.0, 7.0, zone)
    assert abs(e - e_ref) < 1e-3 and abs(n - n_ref) < 1e-3


# --------------------------------------------------------------------------- round trips


def _round_trip_error_m(lat: float, lon: float, zone: UTMZone | None = None) -> float:
    e, n, zone = geo.latlon_to_utm(lat, lon, zone)
    lat2, lon2 = geo.utm_to_latlon(e, n, zone)
    return geodesic_m(lat, lon, lat2, lon2)


@FAST
@given(lat=st.floats(-80.0, 84.0), lon=st.floats(-180.0, 180.0))
def test_round_trip_below_1_mm_property(lat, lon):
    assert _round_trip_error_m(lat, lon) < 1e-3


@pytest.mark.parametrize(
    ("lat", "lon"), [(45.0, 9.0), (-45.0, 9.0), (-0.5, -70.0), (0.5, 120.0), (-79.9, -179.9)]
)
def test_round_trip_both_hemispheres(lat, lon):
    assert _round_trip_error_m(lat, lon) < 1e-3


def test_round_trip_across_zone_edge():
    # (50, 5.9) is in zone 31; forced into zone 32 (central meridian 9 E) and back.
    assert geo.utm_zone(50.0, 5.9) == UTMZone(31, False)
    zone32 = UTMZone(32, False)
    e, n, zone = geo.latlon_to_utm(50.0, 5.9, zone32)
    assert zone == zone32
    assert e < 500_000.0 - 200_000.0  # 3.1 deg west of the central meridian
    assert _round_trip_error_m(50.0, 5.9, zone32) < 1e-3
    # The same ground point has different grid coordinates in its own zone.
    e31, _, _ = geo.latlon_to_utm(50.0, 5.9)
    assert e31 > 500_000.0


@FAST
@given(
    lat=st.floats(-80.0, 84.0),
    dlon=st.floats(-8.0, 8.0),
    number=st.integers(1, 60),
)
def test_forced_zone_round_trip_property(lat, dlon, number):
    zone = UTMZone(number, lat < 0)
    lon = (zone.central_meridian_deg + dlon + 180.0) % 360.0 - 180.0
    assert _round_trip_error_m(lat, lon, zone) < 1e-3


def test_arrays_keep_shape_and_use_first_point_zone():
    lat = np.array([[52.0, 52.1], [52.2, 52.3]])
    lon = np.array([[14.9, 15.1], [12.1, 17.9]])
    e, n, zone = geo.latlon_to_utm(lat, lon)
    assert zone == UTMZone(33, False)
    assert e.shape == (2, 2) and n.shape == (2, 2)
    for idx in np.ndindex(lat.shape):
        e_ref, n_ref = kruger_utm(lat[idx], lon[idx], zone)
        assert abs(e[idx] - e_ref) < 1e-3 and abs(n[idx] - n_ref) < 1e-3
    lat2, lon2 = geo.utm_to_latlon(e, n, zone)
    assert lat2.shape == (2, 2)
    np.testing.assert_allclose(lat2, lat, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, atol=1e-9)
    # The first point decides, even when the others lie in another zone.
    _, _, zone = geo.latlon_to_utm(np.array([52.0, 52.0]), np.array([11.9, 13.0]))
    assert zone == UTMZone(32, False)


def test_scalar_in_float_out():
    e, n, _ = geo.latlon_to_utm(52.0, 13.0)
    assert type(e) is float and type(n) is float
    lat, lon = geo.utm_to_latlon(e, n, UTMZone(33, False))
    assert type(lat) is float and type(lon) is float


def test_empty_array_needs_explicit_zone():
    with pytest.raises(GeoError, match="zone="):
        geo.latlon_to_utm(np.array([]), np.array([]))
    e, n, _ = geo.latlon_to_utm(np.array([]), np.array([]), UTMZone(33, False))
    assert e.shape == (0,) and n.shape == (0,)


# --------------------------------------------------------------------------- zones


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (52.5, 13.4, "33N"),
        (0.0, 0.0, "31N"),        # equator belongs to the north
        (-1e-9, 0.0, "31S"),
        (-33.9, 18.4, "34S"),
        (10.0, 5.999999, "31N"),
        (10.0, 6.0, "32N"),       # a 6-deg boundary belongs to the eastern zone
        (10.0, -180.0, "1N"),
        (10.0, -174.0, "2N"),
        (10.0, 179.99, "60N"),
        (10.0, 180.0, "60N"),     # lon 180 wraps to zone 60, not 61
        (-10.0, 180.0, "60S"),
        (60.0, 4.0, "32N"),       # Norway 32V
        (60.0, 2.999, "31N"),
        (60.0, 3.0, "32N"),
        (60.0, 11.999, "32N"),
        (60.0, 12.0, "33N"),
        (55.999, 4.0, "31N"),     # band U: no exception
        (64.0, 4.0, "31N"),       # band W: no exception
        (78.0, 10.0, "33N"),      # Svalbard 33X
        (78.0, 20.0, "33N"),
        (78.0, 30.0, "35N"),
        (78.0, 8.999, "31N"),
        (78.0, 9.0, "33N"),
        (78.0, 21.0, "35N"),
        (78.0, 33.0, "37N"),
        (78.0, 41.999, "37N"),
        (78.0, 42.0, "38N"),
        (78.0, -1.0, "30N"),
        (71.999, 10.0, "32N"),    # band W, below Svalbard
        (72.0, 10.0, "33N"),
        (84.0, 10.0, "33N"),      # northern UTM limit is inclusive
        (-80.0, -70.0, "19S"),    # southern UTM limit is inclusive
    ],
)
def test_utm_zone(lat, lon, expected):
    zone = geo.utm_zone(lat, lon)
    assert str(zone) == expected
    assert zone.epsg == (32700 if expected.endswith("S") else 32600) + int(expected[:-1])


@pytest.mark.parametrize(
    ("lat", "lon"), [(85.0, 10.0), (-81.0, 10.0), (84.0001, 0.0), (-80.0001, 0.0)]
)
def test_utm_refuses_polar_latitudes(lat, lon):
    with pytest.raises(GeoError, match=r"UTM range \[-80, 84\]"):
        geo.utm_zone(lat, lon)
    with pytest.raises(GeoError, match="UPS"):
        geo.latlon_to_utm(lat, lon, UTMZone(31, lat < 0))


def test_forced_zone_too_far_from_central_meridian_refused():
    # PROJ returns finite nonsense 90 deg and more from the central meridian; geo refuses early.
    with pytest.raises(GeoError, match="central meridian 3"):
        geo.latlon_to_utm(10.0, 120.0, UTMZone(31, False))
    with pytest.raises(GeoError, match="own zone"):
        geo.grid_convergence_rad(10.0, 120.0, UTMZone(31, False))
    with pytest.raises(GeoError, match="central meridian"):
        geo.utm_to_latlon(9_000_000.0, 1_000_000.0, UTMZone(31, False))
    # Across the antimeridian the offset is measured the short way round.
    e, _, _ = geo.latlon_to_utm(10.0, -179.0, UTMZone(60, False))
    assert e > 500_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("33N", UTMZone(33, False)), ("33s", UTMZone(33, True)), (" 1 N", UTMZone(1, False)),
     (32760, UTMZone(60, True)), ("EPSG:32618", UTMZone(18, False))],
)
def test_zone_parse(text, expected):
    assert UTMZone.parse(text) == expected
    assert UTMZone.parse(str(expected)) == expected


@pytest.mark.parametrize("bad", ["33Q", "", "N", "61N", 4326, 32661, "EPSG:4326"])
def test_zone_parse_refuses(bad):
    with pytest.raises(GeoError):
        UTMZone.parse(bad)


def test_zone_properties():
    zone = UTMZone(33, True)
    assert zone.epsg == 32733
    assert zone.crs.to_epsg() == 32733
    assert zone.crs is UTMZone(33, True).crs  # cached
    assert zone.central_meridian_deg == 15.0
    assert UTMZone(1, False).central_meridian_deg == -177.0
    with pytest.raises(GeoError):
        UTMZone(0, False)
    with pytest.raises(GeoError):
        UTMZone(61, False)


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("lat", "lon", "pattern"),
    [
        (float("nan"), 0.0, r"latitude nan .*\[-90, 90\]"),
        (0.0, float("inf"), r"longitude inf .*\[-180, 180\]"),
        (90.5, 0.0, r"latitude 90.5 .*\[-90, 90\]"),
        (0.0, -180.5, r"longitude -180.5 .*\[-180, 180\]"),
        (np.array([1.0, 2.0, np.nan]), np.zeros(3), r"latitude nan at index \(2,\)"),
    ],
)
def test_bad_coordinates_refused_with_value_and_range(lat, lon, pattern):
    with pytest.raises(GeoError, match=pattern):
        geo.check_latlon(lat, lon)
    with pytest.raises(GeoError, match=pattern):
        geo.latlon_to_utm(lat, lon, UTMZone(31, False))
    with pytest.raises(GeoError, match=pattern):
        geo.distance_m(lat, lon, 0.0, 0.0)


def test_check_latlon_accepts_limits():
    geo.check_latlon(90.0, 180.0)
    geo.check_latlon(np.array([-90.0, 0.0]), np.array([-180.0, 0.0]))


def test_bad_utm_input_refused():
    with pytest.raises(GeoError, match="easting_m nan"):
        geo.utm_to_latlon(float("nan"), 0.0, UTMZone(31, False))
    with pytest.raises(GeoError, match="finite"):
        geo.yaw_enu_from_bearing_deg(float("inf"))


# --------------------------------------------------------------------------- generic CRS


def test_transform_points_matches_utm_and_web_mercator_closed_form():
    lat = np.array([52.0, 48.5])
    lon = np.array([13.0, 16.0])
    e, n = geo.transform_points(lon, lat, "EPSG:4326", "EPSG:32633")
    e_ref, n_ref, _ = geo.latlon_to_utm(lat, lon, UTMZone(33, False))
    np.testing.assert_allclose(e, e_ref, atol=1e-6)
    np.testing.assert_allclose(n, n_ref, atol=1e-6)
    # Web Mercator (EPSG:3857): x = R lambda, y = R ln tan(pi/4 + phi/2), R = 6378137 m.
    x, y = geo.transform_points(13.0, 52.0, 4326, 3857)
    assert x == pytest.approx(WGS84_A_M * math.radians(13.0), abs=1e-6)
    y_ref = WGS84_A_M * math.log(math.tan(math.pi / 4 + math.radians(52.0) / 2))
    assert y == pytest.approx(y_ref, abs=1e-6)
    # Zone to zone goes through the ground point.
    e32, n32 = geo.transform_points(e, n, UTMZone(33, False), "EPSG:32632")
    e32_ref, n32_ref, _ = geo.latlon_to_utm(lat, lon, UTMZone(32, False))
    np.testing.assert_allclose(e32, e32_ref, atol=1e-6)
    np.testing.assert_allclose(n32, n32_ref, atol=1e-6)


def test_transform_points_accepts_objects_with_to_wkt():
    rasterio_crs = pytest.importorskip("rasterio.crs")
    src, dst = rasterio_crs.CRS.from_epsg(4326), rasterio_crs.CRS.from_epsg(32633)
    x, y = geo.transform_points(13.0, 52.0, src, dst)
    e, n, _ = geo.latlon_to_utm(52.0, 13.0)
    assert x == pytest.approx(e, abs=1e-6) and y == pytest.approx(n, abs=1e-6)


# --------------------------------------------------------------------------- distances, ENU

GEODESIC_PAIRS = [
    (52.0, 13.0, 52.001, 13.002),
    (-33.0, 151.0, -33.5, 150.2),
    (0.0, 179.9, 0.1, -179.9),  # across the antimeridian
    (40.0, -74.0, 51.5, -0.1),  # transatlantic
    (10.0, 20.0, -10.0, -160.0),  # nearly antipodal
]


@pytest.mark.parametrize("pair", GEODESIC_PAIRS)
def test_distance_and_offset_match_geographiclib(pair):
    lat0, lon0, lat1, lon1 = pair
    ref = GEOD.Inverse(lat0, lon0, lat1, lon1)
    assert geo.distance_m(lat0, lon0, lat1, lon1) == pytest.approx(ref["s12"], abs=1e-6)
    de, dn = geo.offset_enu_m(lat0, lon0, lat1, lon1)
    azi = math.radians(ref["azi1"])
    assert de == pytest.approx(ref["s12"] * math.sin(azi), abs=1e-6)
    assert dn == pytest.approx(ref["s12"] * math.cos(azi), abs=1e-6)


def test_distance_and_offset_vectorised():
    a = np.array(GEODESIC_PAIRS).T
    d = geo.distance_m(a[0], a[1], a[2], a[3])
    de, dn = geo.offset_enu_m(a[0], a[1], a[2], a[3])
    assert d.shape == de.shape == dn.shape == (len(GEODESIC_PAIRS),)
    for i, pair in enumerate(GEODESIC_PAIRS):
        assert d[i] == pytest.approx(GEOD.Inverse(*pair)["s12"], abs=1e-6)
    np.testing.assert_allclose(np.hypot(de, dn), d, rtol=1e-12)


def test_offset_signs_due_east_and_north():
    north = GEOD.Direct(45.0, 7.0, 0.0, 100.0)
    de, dn = geo.offset_enu_m(45.0, 7.0, north["lat2"], north["lon2"])
    assert dn == pytest.approx(100.0, abs=1e-6) and abs(de) < 1e-6
    east = GEOD.Direct(45.0, 7.0, 90.0, 100.0)
    de, dn = geo.offset_enu_m(45.0, 7.0, east["lat2"], east["lon2"])
    assert de == pytest.approx(100.0, abs=1e-6) and abs(dn) < 1e-6


def _enu_closed_form(lat0, lon0, h0, lat, lon, h):
    """Geodetic -> ECEF -> ENU written out (e.g. Hofmann-Wellenhof et al., GNSS, 2008)."""
    e2 = WGS84_F * (2 - WGS84_F)

    def ecef(la, lo, hh):
        phi, lam = math.radians(la), math.radians(lo)
        big_n = WGS84_A_M / math.sqrt(1 - e2 * math.sin(phi) ** 2)
        return np.array([(big_n + hh) * math.cos(phi) * math.cos(lam),
                         (big_n + hh) * math.cos(phi) * math.sin(lam),
                         (big_n * (1 - e2) + hh) * math.sin(phi)])

    phi0, lam0 = math.radians(lat0), math.radians(lon0)
    rot = np.array([
        [-math.sin(lam0), math.cos(lam0), 0.0],
        [-math.sin(phi0) * math.cos(lam0), -math.sin(phi0) * math.sin(lam0), math.cos(phi0)],
        [math.cos(phi0) * math.cos(lam0), math.cos(phi0) * math.sin(lam0), math.sin(phi0)],
    ])
    return rot @ (ecef(lat, lon, h) - ecef(lat0, lon0, h0))


@pytest.mark.parametrize(
    ("datum", "point"),
    [((52.0, 13.0, 35.0), (52.01, 13.02, 80.0)),
     ((-33.9, 18.4, 0.0), (-33.8, 18.3, -20.0)),
     ((60.0, 179.99, 10.0), (60.001, -179.99, 10.0))],
)
def test_local_enu_matches_closed_form(datum, point):
    frame = geo.LocalENU(*datum)
    enu = frame.forward(*point)
    np.testing.assert_allclose(enu, _enu_closed_form(*datum, *point), atol=1e-6)
    lat, lon, alt = frame.inverse(*enu)
    assert geodesic_m(lat, lon, point[0], point[1]) < 1e-6
    assert alt == pytest.approx(point[2], abs=1e-6)


def test_local_enu_datum_is_origin_and_arrays_work():
    frame = geo.LocalENU(48.0, 11.0, 500.0)
    assert np.allclose(frame.forward(48.0, 11.0, 500.0), 0.0, atol=1e-6)
    lat = np.array([[48.0, 48.001], [47.999, 48.0005]])
    lon = np.array([[11.0, 11.001], [11.002, 10.999]])
    e, n, u = frame.forward(lat, lon, 500.0)
    assert e.shape == n.shape == u.shape == (2, 2)
    lat2, lon2, alt2 = frame.inverse(e, n, u)
    np.testing.assert_allclose(lat2, lat, atol=1e-11)
    np.testing.assert_allclose(lon2, lon, atol=1e-11)
    np.testing.assert_allclose(alt2, 500.0, atol=1e-6)


@FAST
@given(
    lat0=st.floats(-85.0, 85.0),
    lon0=st.floats(-180.0, 180.0),
    azimuth=st.floats(-180.0, 180.0),
    dist=st.floats(0.0, 1000.0),
)
def test_local_enu_agrees_with_offset_for_small_offsets(lat0, lon0, azimuth, dist):
    target = GEOD.Direct(lat0, lon0, azimuth, dist)
    e, n, u = geo.LocalENU(lat0, lon0).forward(target["lat2"], target["lon2"])
    de, dn = geo.offset_enu_m(lat0, lon0, target["lat2"], target["lon2"])
    # Tangent plane vs azimuthal equidistant: a few um at 1 km; the plane drops ~d^2/2R.
    assert math.hypot(e - de, n - dn) < 1e-3
    assert u == pytest.approx(-dist**2 / (2 * 6371000.0), rel=0.01, abs=1e-6)


def test_local_enu_refuses_bad_datum():
    with pytest.raises(GeoError, match="latitude 95"):
        geo.LocalENU(95.0, 0.0)
    with pytest.raises(GeoError, match="alt0_m"):
        geo.LocalENU(0.0, 0.0, float("nan"))


# --------------------------------------------------------------------------- convergence

CONVERGENCE_CASES = [
    (52.0, 16.0, UTMZone(33, False)),   # east of the central meridian, north
    (52.0, 12.5, UTMZone(33, False)),   # west, north
    (-40.0, 20.0, UTMZone(33, True)),   # east, south
    (-40.0, 13.0, UTMZone(33, True)),   # west, south
    (60.0, 4.0, UTMZone(32, False)),    # Norway 32V, 5 deg west
    (78.0, 20.0, UTMZone(33, False)),   # Svalbard 33X, 5 deg east
    (50.0, 5.9, UTMZone(32, False)),    # forced zone across the edge
    (-79.0, -66.0, UTMZone(19, True)),
]


@pytest.mark.parametrize(("lat", "lon", "zone"), CONVERGENCE_CASES)
def test_grid_convergence_matches_geodesic_step_and_kruger(lat, lon, zone):
    theta = geo.grid_convergence_rad(lat, lon, zone)
    assert theta == pytest.approx(convergence_from_geodesic_step(lat, lon, zone), abs=1e-8)
    assert theta == pytest.approx(kruger(lat, lon, zone.central_meridian_deg)[2], abs=1e-9)


def test_grid_convergence_signs():
    # Meridians converge on the pole above the central meridian: east of it in the north,
    # true north leans west of grid north (theta > 0); in the south the sign flips.
    assert geo.grid_convergence_rad(52.0, 16.0, UTMZone(33, False)) > 0.0
    assert geo.grid_convergence_rad(52.0, 14.0, UTMZone(33, False)) < 0.0
    assert geo.grid_convergence_rad(-40.0, 16.0, UTMZone(33, True)) < 0.0
    assert geo.grid_convergence_rad(52.0, 15.0, UTMZone(33, False)) == pytest.approx(0.0, abs=1e-12)
    # Textbook approximation gamma ~ dlambda sin(phi) (Snyder eq. 8-13 first term).
    assert geo.grid_convergence_rad(52.0, 16.0, UTMZone(33, False)) == pytest.approx(
        math.radians(1.0) * math.sin(math.radians(52.0)), rel=1e-3)


def test_grid_convergence_sign_matches_pyproj_meridian_convergence_field():
    # geo's docstring promises the same sign as pyproj's Factors.meridian_convergence (degrees);
    # if a PROJ release flips that field, this fails and the docstring must change (geo itself
    # does not use the field).
    for lat, lon, zone in CONVERGENCE_CASES:
        field_deg = pyproj.Proj(zone.crs).get_factors(lon, lat).meridian_convergence
        theta = geo.grid_convergence_rad(lat, lon, zone)
        assert theta == pytest.approx(math.radians(field_deg), abs=1e-9)


def test_grid_convergence_vectorised():
    lat = np.array([c[0] for c in CONVERGENCE_CASES[:2]])
    lon = np.array([c[1] for c in CONVERGENCE_CASES[:2]])
    theta = geo.grid_convergence_rad(lat, lon, UTMZone(33, False))
    assert theta.shape == (2,)
    for i in range(2):
        single = geo.grid_convergence_rad(lat[i], lon[i], UTMZone(33, False))
        assert theta[i] == pytest.approx(single, abs=1e-15)


@pytest.mark.parametrize(("lat", "lon", "zone"), CONVERGENCE_CASES)
@pytest.mark.parametrize("azimuth_deg", [0.0, 37.0, 90.0, 200.0, 315.0])
def test_yaw_enu_to_utm_matches_projected_geodesic_direction(lat, lon, zone, azimuth_deg):
    back = GEOD.Direct(lat, lon, azimuth_deg + 180.0, 5.0)
    ahead = GEOD.Direct(lat, lon, azimuth_deg, 5.0)
    e0, n0, _ = geo.latlon_to_utm(back["lat2"], back["lon2"], zone)
    e1, n1, _ = geo.latlon_to_utm(ahead["lat2"], ahead["lon2"], zone)
    yaw_grid_ref = math.atan2(n1 - n0, e1 - e0)
    yaw_enu = geo.yaw_enu_from_bearing_deg(azimuth_deg)
    yaw_grid = geo.yaw_enu_to_utm(yaw_enu, lat, lon, zone)
    assert geo.wrap_angle_rad(yaw_grid - yaw_grid_ref) == pytest.approx(0.0, abs=1e-8)
    yaw_back = geo.yaw_utm_to_enu(yaw_grid, lat, lon, zone)
    assert geo.wrap_angle_rad(yaw_back - yaw_enu) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- covariance


def test_enu_cov_to_utm_hand_computed():
    lat, lon, zone = 52.0, 18.0, UTMZone(33, False)  # 3 deg east: theta ~ +2.36 deg
    theta = convergence_from_geodesic_step(lat, lon, zone)
    c, s = math.cos(theta), math.sin(theta)
    # R diag(4, 1) R^T with R = [[c, -s], [s, c]], multiplied out by hand:
    expected = np.array([[4 * c * c + s * s, 3 * c * s],
                         [3 * c * s, 4 * s * s + c * c]])
    got = geo.enu_cov_to_utm(np.diag([4.0, 1.0]), lat, lon, zone)
    np.testing.assert_allclose(got, expected, atol=1e-8)
    # The major axis (ENU east) points at grid yaw theta: counter-clockwise of grid east.
    w, v = np.linalg.eigh(got)
    major = v[:, np.argmax(w)] * np.sign(v[0, np.argmax(w)])
    assert math.atan2(major[1], major[0]) == pytest.approx(theta, abs=1e-8)
    assert theta > 0.04


def test_cov_rotation_at_a_fixed_angle(monkeypatch):
    # No point in a zone has a 30 deg convergence, so pin the angle and check the arithmetic:
    # c = sqrt(3)/2, s = 1/2, R diag(4, 1) R^T = [[4c^2 + s^2, 3cs], [3cs, 4s^2 + c^2]]
    #                                         = [[3.25, 3 sqrt(3)/4], [3 sqrt(3)/4, 1.75]].
    monkeypatch.setattr(geo_grid, "grid_convergence_rad", lambda lat, lon, zone: math.pi / 6)
    expected = np.array([[3.25, 3 * math.sqrt(3) / 4], [3 * math.sqrt(3) / 4, 1.75]])
    cov = np.diag([4.0, 1.0])
    np.testing.assert_allclose(geo.enu_cov_to_utm(cov, 0.0, 0.0, "31N"), expected, atol=1e-12)
    # Grid to ENU turns the other way: the off-diagonal changes sign.
    expected_back = np.array([[3.25, -3 * math.sqrt(3) / 4], [-3 * math.sqrt(3) / 4, 1.75]])
    np.testing.assert_allclose(geo.utm_cov_to_enu(cov, 0.0, 0.0, "31N"), expected_back, atol=1e-12)
    assert geo.yaw_enu_to_utm(0.0, 0.0, 0.0, "31N") == pytest.approx(math.pi / 6, abs=1e-15)


def test_cov_rotation_between_two_points():
    # ENU->UTM at point 1 then UTM->ENU at point 2 rotates by theta1 - theta2, which at 70 N
    # is close to the textbook 10 deg * sin(70 deg).
    zone = UTMZone(33, False)
    t1 = geo.grid_convergence_rad(70.0, 20.0, zone)
    t2 = geo.grid_convergence_rad(70.0, 10.0, zone)
    in_grid = geo.enu_cov_to_utm(np.diag([4.0, 1.0]), 70.0, 20.0, zone)
    rotated = geo.utm_cov_to_enu(in_grid, 70.0, 10.0, zone)
    c, s = math.cos(t1 - t2), math.sin(t1 - t2)
    expected = [[4 * c * c + s * s, 3 * c * s], [3 * c * s, 4 * s * s + c * c]]
    np.testing.assert_allclose(rotated, expected, atol=1e-12)
    assert t1 - t2 == pytest.approx(math.radians(10.0) * math.sin(math.radians(70.0)), rel=2e-3)


def test_cov_round_trip_3x3_and_up_untouched():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + np.eye(3)
    zone = UTMZone(33, True)
    utm = geo.enu_cov_to_utm(cov, -35.0, 19.0, zone)
    assert utm[2, 2] == pytest.approx(cov[2, 2], abs=1e-12)
    np.testing.assert_allclose(utm, utm.T, atol=1e-12)
    assert np.trace(utm) == pytest.approx(np.trace(cov), abs=1e-12)
    # E/N-U cross terms rotate with the horizontal axes.
    theta = geo.grid_convergence_rad(-35.0, 19.0, zone)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    np.testing.assert_allclose(utm[:2, 2], rot @ cov[:2, 2], atol=1e-12)
    np.testing.assert_allclose(geo.utm_cov_to_enu(utm, -35.0, 19.0, zone), cov, atol=1e-12)


def test_cov_stack_matches_single():
    covs = np.stack([np.diag([4.0, 1.0]), np.array([[2.0, 0.5], [0.5, 1.0]])])
    lat = np.array([52.0, 53.0])
    lon = np.array([17.0, 12.0])
    zone = UTMZone(33, False)
    stacked = geo.enu_cov_to_utm(covs, lat, lon, zone)
    for i in range(2):
        single = geo.enu_cov_to_utm(covs[i], lat[i], lon[i], zone)
        np.testing.assert_allclose(stacked[i], single, atol=1e-14)


@pytest.mark.parametrize("bad", [np.eye(4), np.ones(3), np.array([[1.0, np.nan], [np.nan, 1.0]])])
def test_cov_bad_shapes_refused(bad):
    with pytest.raises(GeoError):
        geo.enu_cov_to_utm(bad, 52.0, 15.0, UTMZone(33, False))


def test_navsat_cov_conversions():
    m = geo.navsat_cov_to_matrix([1.0, 2, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(m, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert m[0, 1] == 2.0 and m[1, 0] == 4.0  # row-major
    out = geo.matrix_to_navsat_cov(m)
    assert out == [1.0, 3.0, 5.0, 3.0, 5.0, 7.0, 5.0, 7.0, 9.0]  # symmetrised
    assert all(type(v) is float for v in out)
    sym = [2.0, 0.1, 0.0, 0.1, 3.0, 0.0, 0.0, 0.0, 9.0]
    assert geo.matrix_to_navsat_cov(geo.navsat_cov_to_matrix(sym)) == sym
    with pytest.raises(GeoError, match="9 floats"):
        geo.navsat_cov_to_matrix([1.0] * 8)
    with pytest.raises(GeoError, match="finite"):
        geo.navsat_cov_to_matrix([float("nan")] * 9)
    with pytest.raises(GeoError, match="3x3"):
        geo.matrix_to_navsat_cov(np.eye(2))


# --------------------------------------------------------------------------- yaw and bearing


@pytest.mark.parametrize(
    ("bearing", "yaw"),
    [(0.0, math.pi / 2), (90.0, 0.0), (180.0, -math.pi / 2), (270.0, math.pi), (45.0, math.pi / 4),
     (360.0, math.pi / 2), (450.0, 0.0), (-90.0, math.pi), (-180.0, -math.pi / 2)],
)
def test_yaw_from_bearing(bearing, yaw):
    assert geo.yaw_enu_from_bearing_deg(bearing) == pytest.approx(yaw, abs=1e-12)


@pytest.mark.parametrize(
    ("yaw", "bearing"),
    [(0.0, 90.0), (math.pi / 2, 0.0), (-math.pi / 2, 180.0), (math.pi, 270.0), (-math.pi, 270.0),
     (3 * math.pi / 4, 315.0), (2 * math.pi + 0.1, 90.0 - math.degrees(0.1))],
)
def test_bearing_from_yaw(yaw, bearing):
    assert geo.bearing_deg_from_yaw_enu(yaw) == pytest.approx(bearing, abs=1e-9)


@pytest.mark.parametrize(
    ("angle", "wrapped"),
    [(math.pi, math.pi), (-math.pi, math.pi), (3 * math.pi, math.pi), (-3 * math.pi, math.pi),
     (0.0, 0.0), (2 * math.pi, 0.0), (-0.5, -0.5), (7.0, 7.0 - 2 * math.pi)],
)
def test_wrap_angle(angle, wrapped):
    assert geo.wrap_angle_rad(angle) == pytest.approx(wrapped, abs=1e-12)


def test_wrap_angle_never_returns_minus_pi_after_rounding():
    # One ulp above pi: the naive pi - mod(pi - a, 2 pi) rounds to exactly -pi.
    just_above_pi = float(np.nextafter(math.pi, 4.0))
    assert geo.wrap_angle_rad(just_above_pi) == math.pi
    assert geo.wrap_angle_rad(np.array([just_above_pi]))[0] == math.pi


@FAST
@given(st.floats(-1e4, 1e4))
def test_angle_ranges_and_round_trip(bearing):
    yaw = geo.yaw_enu_from_bearing_deg(bearing)
    assert -math.pi < yaw <= math.pi
    back = geo.bearing_deg_from_yaw_enu(yaw)
    assert 0.0 <= back < 360.0
    diff = (back - bearing) % 360.0
    assert min(diff, 360.0 - diff) < 1e-9


def test_angle_converters_vectorised():
    bearings = np.array([0.0, 90.0, 180.0, 270.0])
    yaws = geo.yaw_enu_from_bearing_deg(bearings)
    np.testing.assert_allclose(yaws, [math.pi / 2, 0.0, -math.pi / 2, math.pi], atol=1e-12)
    np.testing.assert_allclose(geo.bearing_deg_from_yaw_enu(yaws), bearings, atol=1e-9)
    wrapped = geo.wrap_angle_rad(np.array([-math.pi, 3 * math.pi, 0.25]))
    np.testing.assert_allclose(wrapped, [math.pi, math.pi, 0.25], atol=1e-12)
    assert type(geo.wrap_angle_rad(1.0)) is float
