"""Tile sets: geometry of the tiling (decoded from coordinate-encoding rasters), storage
integrity, crash safety and resume, scope queries against brute force, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine

from crossview_ros import geo, tiles
from crossview_ros.sim.coord_ortho import MARKER, read_encoding, write_coordinate_geotiff
from crossview_ros.tiles import cutting as tiles_cutting
from crossview_ros.tiles import descriptors as tiles_descriptors
from crossview_ros.tiles import writer as tiles_writer
from crossview_ros.tiles import (
    OrthoArray, TileSet, TileSetError, TilingConfig, build_tile_set, write_tile_set,
)

L = 40.0  # tile side of the small test sets, metres
S = L / 2  # stride at 50 % overlap
VIENNA = (48.2, 16.37)  # UTM 33N
ZONE = geo.UTMZone(33, False)


def _anchor() -> tuple[float, float]:
    """A lattice point (multiple of the stride) near Vienna, to centre test rasters on."""
    e, n, _ = geo.latlon_to_utm(*VIENNA, zone=ZONE)
    return S * round(e / S), S * round(n / S)


def _centre_decode(ts: TileSet, tile_id: int, enc) -> tuple[float, float]:
    """Source-CRS position of the tile's centre: mean of the 2 x 2 central pixels (even tile_px)."""
    h = ts.tile_px // 2
    pix = ts.image(tile_id)[h - 1:h + 1, h - 1:h + 1].reshape(-1, 3).astype(np.float64).mean(axis=0)
    x, y = enc.decode(pix)
    return float(x), float(y)


def _pixel_grid_utm(ts: TileSet, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected UTM position of every pixel centre of a north-up tile."""
    k = np.arange(ts.tile_px) + 0.5
    e = ts.easting_m[tile_id] - ts.tile_size_m / 2 + k * ts.gsd_m
    n = ts.northing_m[tile_id] + ts.tile_size_m / 2 - k * ts.gsd_m
    return np.meshgrid(e, n)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def utm_tif(tmp_path_factory) -> Path:
    """Coordinate raster in the set's own zone: 202 m x 0.5 m px around Vienna (9 x 9 tiles)."""
    x0, y0 = _anchor()
    return write_coordinate_geotiff(
        tmp_path_factory.mktemp("src") / "utm.tif", crs=f"EPSG:{ZONE.epsg}", gsd_m=0.5,
        bounds=(x0 - 101, y0 - 101, x0 + 101, y0 + 101), capture_date="2024-05-01",
    )


@pytest.fixture(scope="module")
def utm_set(utm_tif, tmp_path_factory) -> TileSet:
    out = tmp_path_factory.mktemp("sets") / "utm"
    cfg = TilingConfig(tile_size_m=L, tile_px=64, image_format="png")
    return TileSet.open(build_tile_set([utm_tif], out, cfg, progress=False))


@pytest.fixture(scope="module")
def small_tif(tmp_path_factory) -> Path:
    """122 m coordinate raster at 1 m px: 5 x 5 tiles of 40 m, for crash/resume tests."""
    x0, y0 = _anchor()
    return write_coordinate_geotiff(
        tmp_path_factory.mktemp("small") / "small.tif", crs=f"EPSG:{ZONE.epsg}", gsd_m=1.0,
        bounds=(x0 - 61, y0 - 61, x0 + 61, y0 + 61),
    )


SMALL_CFG = TilingConfig(tile_size_m=L, tile_px=32, image_format="png")


@pytest.fixture()
def lattice_set(tmp_path) -> TileSet:
    """A 10 x 8 lattice without images, for storage tests."""
    i, j = np.meshgrid(np.arange(10), np.arange(8))
    e = 600_000.0 + S * i.ravel()
    n = 5_340_000.0 + S * j.ravel()
    path = write_tile_set(tmp_path / "lat", zone=geo.UTMZone(33, False), easting_m=e, northing_m=n,
                          tile_size_m=L, tile_px=64, sources=["lattice"])
    return TileSet.open(path)


# --------------------------------------------------------------------------- geometry


def test_every_tile_centre_decodes_to_its_stored_centre(utm_set, utm_tif):
    enc = read_encoding(utm_tif)
    assert len(utm_set) == 81  # (200 - 40) / 20 + 1 = 9 per axis; independent count below
    for i in range(len(utm_set)):
        x, y = _centre_decode(utm_set, i, enc)  # same CRS as the zone: no transform needed
        # Mean of the 4 central pixels sits exactly on the centre: stricter than half a pixel.
        assert abs(x - utm_set.easting_m[i]) < 0.05 * utm_set.gsd_m
        assert abs(y - utm_set.northing_m[i]) < 0.05 * utm_set.gsd_m
        # The pixel right below-right of the centre is half a pixel east and south of it.
        h = utm_set.tile_px // 2
        px, py = enc.decode(utm_set.image(i)[h, h].astype(np.float64))
        assert abs(px - (utm_set.easting_m[i] + utm_set.gsd_m / 2)) < 0.05 * utm_set.gsd_m
        assert abs(py - (utm_set.northing_m[i] - utm_set.gsd_m / 2)) < 0.05 * utm_set.gsd_m


def test_tiles_are_north_up_with_the_promised_pixel_size(utm_set, utm_tif):
    enc = read_encoding(utm_tif)
    for i in (0, len(utm_set) // 2, len(utm_set) - 1):
        img = utm_set.image(i)
        assert img.dtype == np.uint16 and img.shape == (64, 64, 3)
        assert np.all(img[:, :, 2] == MARKER)  # lossless storage keeps the marker band exactly
        x, y = enc.decode(img.astype(np.float64))
        e, n = _pixel_grid_utm(utm_set, i)
        assert np.max(np.abs(x - e)) < 0.05 * utm_set.gsd_m
        assert np.max(np.abs(y - n)) < 0.05 * utm_set.gsd_m


def test_lattice_is_anchored_and_covers_every_fitting_tile(utm_set, utm_tif):
    with rasterio.open(utm_tif) as ds:
        b, res = ds.bounds, ds.res[0]
    # Anchored to multiples of the stride.
    assert np.all(np.abs(utm_set.easting_m / S - np.round(utm_set.easting_m / S)) < 1e-9)
    assert np.all(np.abs(utm_set.northing_m / S - np.round(utm_set.northing_m / S)) < 1e-9)
    # Exactly the lattice tiles that fit inside the source's pixel centres.
    ie = np.arange(math.ceil((b.left + res / 2 + L / 2) / S), math.floor((b.right - res / 2 - L / 2) / S) + 1)
    jn = np.arange(math.ceil((b.bottom + res / 2 + L / 2) / S), math.floor((b.top - res / 2 - L / 2) / S) + 1)
    expected = {(i * S, j * S) for i in ie for j in jn}
    assert set(zip(utm_set.easting_m.tolist(), utm_set.northing_m.tolist())) == expected
    # Ids follow reading order: north to south, west to east.
    order = np.lexsort((utm_set.easting_m, -utm_set.northing_m))
    assert np.array_equal(order, np.arange(len(utm_set)))
    t = utm_set.tile(0)
    assert t.source == "utm.tif" and t.capture_date == "2024-05-01" and t.utm_zone == "33N"
    assert t.size_m == L and t.gsd_m == L / 64
    lat, lon = geo.utm_to_latlon(t.easting_m, t.northing_m, geo.UTMZone(33, False))
    assert (t.lat_deg, t.lon_deg) == pytest.approx((lat, lon), abs=1e-12)


def test_neighbours_overlap_by_half(utm_set):
    e, n = utm_set.easting_m, utm_set.northing_m
    assert np.allclose(np.diff(np.unique(e)), L / 2)
    assert np.allclose(np.diff(np.unique(n)), L / 2)
    where = {(round(a, 6), round(b, 6)): k for k, (a, b) in enumerate(zip(e, n))}
    half_px = utm_set.tile_px // 2
    pairs = 0
    for k in range(len(utm_set)):
        east = where.get((round(e[k] + S, 6), round(n[k], 6)))
        south = where.get((round(e[k], 6), round(n[k] - S, 6)))
        diag = where.get((round(e[k] + S, 6), round(n[k] - S, 6)))
        for other, expected_iou in ((east, 1 / 3), (south, 1 / 3), (diag, 1 / 7)):
            if other is None:
                continue
            # IoU from the footprints' interval intersection, not from the module's formula.
            wx = min(e[k], e[other]) + L / 2 - (max(e[k], e[other]) - L / 2)
            wy = min(n[k], n[other]) + L / 2 - (max(n[k], n[other]) - L / 2)
            inter = wx * wy
            assert inter / (2 * L * L - inter) == pytest.approx(expected_iou, abs=1e-12)
        if east is not None:  # shared half is the same ground, sampled on the same grid
            assert np.array_equal(utm_set.image(k)[:, half_px:], utm_set.image(east)[:, :half_px])
            pairs += 1
        if south is not None:
            assert np.array_equal(utm_set.image(k)[half_px:], utm_set.image(south)[:half_px])
    assert pairs == 72


def test_point_away_from_edges_is_covered_by_four_tiles_with_vigor_ious(utm_set):
    zone = utm_set.zone
    mid = len(utm_set) // 2
    e = utm_set.easting_m[mid] + 3.1
    n = utm_set.northing_m[mid] - 7.3
    lat, lon = geo.utm_to_latlon(e, n, zone)
    cov = utm_set.tiles_covering(lat, lon)
    # By hand: the lattice columns/rows whose half-open footprint holds the point.
    i0, j0 = math.floor(e / S), math.floor(n / S)
    expected = {}
    for ce in (i0 * S, (i0 + 1) * S):
        for cn in (j0 * S, (j0 + 1) * S):
            dx, dy = e - ce, n - cn
            a = (L - abs(dx)) * (L - abs(dy))
            expected[(ce, cn)] = (a / (2 * L * L - a), dx, dy)
    assert len(cov) == 4
    got = {(utm_set.easting_m[c.tile_id], utm_set.northing_m[c.tile_id]): c for c in cov}
    assert set(got) == set(expected)
    for key, (iou, dx, dy) in expected.items():
        assert got[key].iou == pytest.approx(iou, abs=1e-9)
        assert (got[key].offset_e_m, got[key].offset_n_m) == pytest.approx((dx, dy), abs=1e-6)
    assert [c.iou for c in cov] == sorted((c.iou for c in cov), reverse=True)
    # Here: dx = 3.1, dy = -7.3 from the middle tile -> (36.9 * 32.7) / (3200 - 36.9 * 32.7).
    assert cov[0].iou == pytest.approx(36.9 * 32.7 / (3200 - 36.9 * 32.7), abs=1e-9)


def test_random_interior_points_get_one_positive_and_three_semi_positives(utm_set):
    rng = np.random.default_rng(3)
    e0, e1 = utm_set.easting_m.min(), utm_set.easting_m.max()
    n0, n1 = utm_set.northing_m.min(), utm_set.northing_m.max()
    for e, n in zip(rng.uniform(e0, e1, 200), rng.uniform(n0, n1, 200)):
        cov = utm_set.tiles_covering_utm(e, n)
        assert len(cov) == 4
        # VIGOR section 3: the positive holds the point in its central L/2 square and has
        # IoU >= 9/23 ~ 0.39; every semi-positive still shares at least 1/7.
        assert max(abs(cov[0].offset_e_m), abs(cov[0].offset_n_m)) <= L / 4 + 1e-9
        assert cov[0].iou >= 9 / 23 - 1e-12
        assert all(max(abs(c.offset_e_m), abs(c.offset_n_m)) > L / 4 - 1e-9 for c in cov[1:])
        assert all(1 / 7 - 1e-12 <= c.iou <= cov[0].iou for c in cov[1:])


def test_ties_in_iou_are_broken_by_id(lattice_set):
    # A point midway between four centres: L/4 off each of them, all four IoUs are 9/23.
    e = lattice_set.easting_m[0] + S / 2
    n = lattice_set.northing_m[0] + S / 2
    cov = lattice_set.tiles_covering_utm(e, n)
    assert [c.iou for c in cov] == pytest.approx([9 / 23] * 4, abs=1e-12)
    assert [c.tile_id for c in cov] == sorted(c.tile_id for c in cov)


# --------------------------------------------------------------------------- other CRSs


@pytest.mark.parametrize(
    "crs, lat, lon, zone",
    [
        ("EPSG:4326", 48.2, 16.37, "33N"),  # geographic degrees
        ("EPSG:3857", 40.7484, -73.9857, "18N"),  # web Mercator, scale 1/cos(lat) = 1.32
        ("EPSG:32755", -33.87, 151.21, "56S"),  # south, source in the neighbouring zone 55S
        ("EPSG:4326", -22.95, -43.21, "23S"),  # south-west hemisphere
    ],
)
def test_sources_in_other_crs_land_where_they_should(tmp_path, crs, lat, lon, zone):
    tif = write_coordinate_geotiff(tmp_path / "src.tif", crs=crs, gsd_m=0.5,
                                   centre_lat_deg=lat, centre_lon_deg=lon, size_m=150)
    enc = read_encoding(tif)
    cfg = TilingConfig(tile_size_m=L, tile_px=32, image_format="png")
    ts = TileSet.open(build_tile_set([tif], tmp_path / "set", cfg, progress=False))
    assert str(ts.zone) == zone == str(geo.utm_zone(lat, lon))
    assert len(ts) >= 16
    for i in range(len(ts)):
        x, y = _centre_decode(ts, i, enc)
        e, n = geo.transform_points(x, y, crs, ts.zone.epsg)
        # Half a pixel is the promise; GDAL's approximate transformer stays far below it.
        assert abs(e - ts.easting_m[i]) < 0.25 * ts.gsd_m
        assert abs(n - ts.northing_m[i]) < 0.25 * ts.gsd_m
    # Whole tile: north-up on the UTM grid (not on the source's grid).
    img = ts.image(len(ts) // 2).astype(np.float64)
    x, y = enc.decode(img)
    e, n = geo.transform_points(x, y, crs, ts.zone.epsg)
    ee, nn = _pixel_grid_utm(ts, len(ts) // 2)
    assert np.max(np.abs(e - ee)) < 0.25 * ts.gsd_m
    assert np.max(np.abs(n - nn)) < 0.25 * ts.gsd_m


def test_orthoarray_source_matches_geotiff_source(tmp_path, small_tif):
    with rasterio.open(small_tif) as ds:
        arr = np.moveaxis(ds.read(), 0, -1)
        oa = OrthoArray(arr, ds.transform, ds.crs.to_string(), name="mem", capture_date="2023-01-02")
    a = TileSet.open(build_tile_set([small_tif], tmp_path / "a", SMALL_CFG, progress=False))
    b = TileSet.open(build_tile_set([oa], tmp_path / "b", SMALL_CFG, progress=False))
    assert len(a) == len(b) == 25
    assert np.array_equal(a.easting_m, b.easting_m) and np.array_equal(a.northing_m, b.northing_m)
    for i in (0, 12, 24):
        assert np.array_equal(a.image(i), b.image(i))
    assert b.tile(0).source == "mem" and b.tile(0).capture_date == "2023-01-02"


@pytest.mark.parametrize("order", [("west", "east"), ("east", "west")])
def test_two_sources_first_wins_and_union_is_tiled(tmp_path, small_tif, order):
    x0, _ = _anchor()
    with rasterio.open(small_tif) as ds:
        arr = np.moveaxis(ds.read(), 0, -1)
        # Same pixels 60 m further east: its coordinate encoding reads 60 m short there.
        rasters = {"west": OrthoArray(arr, ds.transform, ds.crs.to_string(), name="west"),
                   "east": OrthoArray(arr, Affine.translation(60.0, 0.0) @ ds.transform,
                                      ds.crs.to_string(), name="east")}
    enc = read_encoding(small_tif)
    ts = TileSet.open(build_tile_set([rasters[k] for k in order], tmp_path / "two", SMALL_CFG, progress=False))
    # West holds centres x0-40..x0+40, east x0+20..x0+100: 8 columns of 5 rows.
    assert len(ts) == 40
    assert sorted(set(ts.easting_m - x0)) == [-40, -20, 0, 20, 40, 60, 80, 100]
    for i in range(len(ts)):
        de = ts.easting_m[i] - x0
        expected = order[0] if 20 <= de <= 40 else ("west" if de < 20 else "east")
        assert ts.tile(i).source == expected
        x, _ = _centre_decode(ts, i, enc)
        assert x == pytest.approx(ts.easting_m[i] - (60.0 if expected == "east" else 0.0), abs=0.05)
    assert [s["name"] for s in ts.meta["sources"]] == list(order)


def test_nodata_tiles_are_dropped(tmp_path):
    x0, y0 = _anchor()
    tif = write_coordinate_geotiff(tmp_path / "nd.tif", crs=f"EPSG:{ZONE.epsg}", gsd_m=1.0,
                                   bounds=(x0 - 61, y0 - 61, x0 + 61, y0 + 61), nodata=65535)
    with rasterio.open(tif, "r+") as ds:  # hole x0-56..x0-46, y0+46..y0+56: only the NW tile reaches it
        ds.write(np.full((3, 10, 10), 65535, np.uint16), window=rasterio.windows.Window(5, 5, 10, 10))
    ts = TileSet.open(build_tile_set([tif], tmp_path / "nd", SMALL_CFG, progress=False))
    assert len(ts) == 24
    assert (x0 - 40, y0 + 40) not in set(zip(ts.easting_m.tolist(), ts.northing_m.tolist()))
    enc = read_encoding(tif)
    for i in range(len(ts)):  # ids renumbered 0..N-1 and images follow them
        x, y = _centre_decode(ts, i, enc)
        assert (x, y) == pytest.approx((ts.easting_m[i], ts.northing_m[i]), abs=0.05)


def test_jpeg_rgb_tiles(tmp_path):
    tif = write_coordinate_geotiff(tmp_path / "rgb.tif", crs="EPSG:3857", gsd_m=0.5, kind="rgb",
                                   centre_lat_deg=VIENNA[0], centre_lon_deg=VIENNA[1], size_m=100)
    ts = TileSet.open(build_tile_set([tif], tmp_path / "rgb", TilingConfig(tile_size_m=L, tile_px=32),
                                     progress=False))
    assert ts.image_format == "jpg"
    img = ts.image(0)
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    # Red ramps west -> east and green south -> north (north-up, RGB order kept).
    assert img[:, -1, 0].mean() > img[:, 0, 0].mean() + 5
    assert img[0, :, 1].mean() > img[-1, :, 1].mean() + 5


def test_grey_source_gives_grey_rgb_tiles(tmp_path):
    x0, y0 = _anchor()
    ramp = np.tile(np.arange(120, dtype=np.uint8)[None, :] * 2, (120, 1))  # brighter to the east
    oa = OrthoArray(ramp, Affine(1.0, 0, x0 - 60, 0, -1.0, y0 + 60), f"EPSG:{ZONE.epsg}", name="grey")
    ts = TileSet.open(build_tile_set([oa], tmp_path / "g", TilingConfig(tile_size_m=L, tile_px=40,
                                                                     image_format="png"), progress=False))
    img = ts.image(0)
    assert img.shape == (40, 40, 3) and np.array_equal(img[:, :, 0], img[:, :, 2])
    # Tile pixel k (1 m) centre sits at x = E - 20 + k + 0.5, i.e. source column E - x0 + 40 + k.
    col = ts.easting_m[0] - (x0 - 60) - 20 + np.arange(40)
    assert np.array_equal(img[7, :, 1], (2 * col).astype(np.uint8))


# --------------------------------------------------------------------------- crash safety, resume


class _Counter:
    def __init__(self, real, crash_after: int | None = None):
        self.real, self.crash_after, self.calls = real, crash_after, 0

    def __call__(self, *args, **kwargs):
        if self.crash_after is not None and self.calls == self.crash_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.real(*args, **kwargs)


def test_crash_mid_build_leaves_no_set_and_resume_skips_finished_tiles(tmp_path, small_tif, monkeypatch):
    real = tiles_cutting.warp_tile
    clean = _Counter(real)
    monkeypatch.setattr(tiles_cutting, "warp_tile", clean)
    reference = TileSet.open(build_tile_set([small_tif], tmp_path / "ref", SMALL_CFG, progress=False))
    total = clean.calls
    assert total == len(reference) == 25

    out = tmp_path / "set"
    crashing = _Counter(real, crash_after=7)
    monkeypatch.setattr(tiles_cutting, "warp_tile", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tile_set([small_tif], out, SMALL_CFG, progress=False)
    partial = out.with_name("set.partial")
    assert not out.exists() and partial.is_dir()
    with pytest.raises(TileSetError, match="interrupted"):
        TileSet.open(out)
    with pytest.raises(TileSetError, match="unfinished build"):
        TileSet.open(partial)

    # A tile cut short on disk is not trusted: it is redone.
    done = sorted((partial / "tiles").glob("*.png"))
    assert len(done) == 7
    done[3].write_bytes(done[3].read_bytes()[:100])

    resumed = _Counter(real)
    monkeypatch.setattr(tiles_cutting, "warp_tile", resumed)
    build_tile_set([small_tif], out, SMALL_CFG, progress=False)
    assert resumed.calls == total - 7 + 1
    assert not partial.exists()
    ts = TileSet.open(out)
    assert len(ts) == total
    for i in range(total):
        assert np.array_equal(ts.image(i), reference.image(i))


def test_another_plan_restarts_the_partial_build(tmp_path, small_tif, monkeypatch):
    real = tiles_cutting.warp_tile
    monkeypatch.setattr(tiles_cutting, "warp_tile", _Counter(real, crash_after=10))
    out = tmp_path / "set"
    with pytest.raises(RuntimeError):
        build_tile_set([small_tif], out, SMALL_CFG, progress=False)
    other = TilingConfig(tile_size_m=L, tile_px=32, image_format="png", resampling="nearest")
    counter = _Counter(real)
    monkeypatch.setattr(tiles_cutting, "warp_tile", counter)
    build_tile_set([small_tif], out, other, progress=False)
    assert counter.calls == 25
    assert TileSet.open(out).meta["tiling"]["resampling"] == "nearest"


def test_crash_while_renaming_into_place_leaves_no_set(tmp_path, small_tif, monkeypatch):
    out = tmp_path / "set"

    def boom(*args, **kwargs):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(tiles_writer, "swap_into_place", boom)
    with pytest.raises(OSError):
        build_tile_set([small_tif], out, SMALL_CFG, progress=False)
    with pytest.raises(TileSetError):
        TileSet.open(out)
    with pytest.raises(TileSetError):
        TileSet.open(out.with_name("set.partial") / "staging")
    monkeypatch.undo()
    counter = _Counter(tiles_cutting.warp_tile)
    monkeypatch.setattr(tiles_cutting, "warp_tile", counter)
    build_tile_set([small_tif], out, SMALL_CFG, progress=False)
    assert counter.calls == 0  # every tile was already written and verified
    assert len(TileSet.open(out)) == 25


def test_existing_set_is_replaced_only_with_overwrite(tmp_path, small_tif):
    out = build_tile_set([small_tif], tmp_path / "set", SMALL_CFG, progress=False)
    with pytest.raises(TileSetError, match="overwrite"):
        build_tile_set([small_tif], out, SMALL_CFG, progress=False)
    cfg = TilingConfig(tile_size_m=L, tile_px=16, image_format="png")
    build_tile_set([small_tif], out, cfg, overwrite=True, progress=False)
    ts = TileSet.open(out)
    assert ts.tile_px == 16 and ts.image(0).shape == (16, 16, 3) and len(ts) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # old set renamed aside, deleted
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    with pytest.raises(TileSetError, match="not a tile set"):
        build_tile_set([small_tif], stranger, SMALL_CFG, overwrite=True, progress=False)
    assert (stranger / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- scope queries


@pytest.fixture(scope="module")
def random_set(tmp_path_factory) -> tuple[TileSet, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    zone = geo.UTMZone(33, False)
    e = rng.uniform(598_000, 600_000, 3000)
    n = rng.uniform(5_339_000, 5_341_000, 3000)
    path = write_tile_set(tmp_path_factory.mktemp("rand") / "rand", zone=zone, easting_m=e,
                          northing_m=n, tile_size_m=L, tile_px=64)
    return TileSet.open(path), e, n


def test_tiles_within_utm_equals_brute_force(random_set):
    ts, e, n = random_set
    rng = np.random.default_rng(11)
    for qe, qn, r in zip(rng.uniform(597_700, 600_300, 300), rng.uniform(5_338_700, 5_341_300, 300),
                         rng.uniform(0, 400, 300)):
        got = ts.tiles_within_utm(qe, qn, r)
        assert got.dtype == np.int64
        assert np.array_equal(got, np.flatnonzero(np.hypot(e - qe, n - qn) <= r))


def test_tiles_within_latlon_equals_brute_force(random_set):
    ts, e, n = random_set
    rng = np.random.default_rng(12)
    qe = rng.uniform(597_700, 600_300, 200)  # includes fixes up to 300 m outside the coverage
    qn = rng.uniform(5_338_700, 5_341_300, 200)
    lat, lon = geo.utm_to_latlon(qe, qn, ts.zone)
    for k in range(qe.size):
        got = ts.tiles_within(float(lat[k]), float(lon[k]), 250.0)
        assert np.array_equal(got, np.flatnonzero(np.hypot(e - qe[k], n - qn[k]) <= 250.0))
    assert ts.tiles_within(float(lat[0]), float(lon[0]), 0.0).size == 0


def test_fix_far_from_coverage_gives_empty_scope(random_set):
    ts, _, _ = random_set
    for lat, lon in ((-33.87, 151.21), (48.2, -179.9), (85.0, 16.0), (48.25, 16.9), (0.0, 0.0)):
        got = ts.tiles_within(lat, lon, 200.0)
        assert got.dtype == np.int64 and got.size == 0
        assert ts.tiles_covering(lat, lon) == []
    # ~40 km away: empty with a 200 m scope, the whole set with a 100 km one.
    assert ts.tiles_within(48.2, 16.37 + 0.5, 200.0).size == 0
    assert ts.tiles_within(48.2, 16.37 + 0.5, 100_000.0).size == len(ts)


@pytest.mark.parametrize("lat, lon", [(91.0, 16.0), (-90.5, 16.0), (48.0, 181.0), (float("nan"), 16.0),
                                      (48.0, float("inf"))])
def test_invalid_fix_raises_geo_error(random_set, lat, lon):
    ts, _, _ = random_set
    with pytest.raises(geo.GeoError):
        ts.tiles_within(lat, lon, 200.0)
    with pytest.raises(geo.GeoError):
        ts.tiles_covering(lat, lon)


def test_bad_radius_raises(random_set):
    ts, _, _ = random_set
    for r in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="radius_m"):
            ts.tiles_within(48.2, 16.37, r)


# --------------------------------------------------------------------------- descriptors


def test_write_descriptors_normalises_stores_float16_and_memory_maps(lattice_set):
    rng = np.random.default_rng(5)
    d = rng.standard_normal((len(lattice_set), 16)) * rng.uniform(0.1, 50, (len(lattice_set), 1))
    lattice_set.write_descriptors(d, "model-a")
    expected = d / np.linalg.norm(d, axis=1, keepdims=True)
    for ts in (lattice_set, TileSet.open(lattice_set.path)):
        assert ts.model_hash == "model-a"
        assert isinstance(ts.descriptors, np.memmap) and not ts.descriptors.flags.writeable
        assert ts.descriptors.dtype == np.float16 and ts.descriptors.shape == (80, 16)
        assert np.allclose(ts.descriptors.astype(np.float64), expected, atol=1e-3)
        assert np.allclose(np.linalg.norm(ts.descriptors.astype(np.float64), axis=1), 1.0, atol=2e-3)
    meta = json.loads((lattice_set.path / "meta.json").read_text())
    assert meta["descriptors"]["dim"] == 16 and meta["descriptors"]["count"] == 80
    assert meta["descriptors"]["dtype"] == "float16"
    assert meta["descriptors"]["fingerprint"] == tiles.descriptor_fingerprint(lattice_set.path / "descriptors.f16.npy")
    assert not TileSet.open(lattice_set.path, mmap=False).descriptors.flags.writeable


@pytest.mark.parametrize("bad, match", [
    (np.ones((79, 8)), "shape"),
    (np.ones((80,)), "2-D"),
    (np.where(np.arange(80)[:, None] == 41, np.nan, 1.0) * np.ones((80, 8)), "row 41"),
    (np.where(np.arange(80)[:, None] == 3, np.inf, 1.0) * np.ones((80, 8)), "row 3"),
    (np.where(np.arange(80)[:, None] == 9, 0.0, 1.0) * np.ones((80, 8)), "row 9 is all zeros"),
])
def test_write_descriptors_refuses_bad_arrays(lattice_set, bad, match):
    with pytest.raises(ValueError, match=match):
        lattice_set.write_descriptors(bad, "model-a")
    assert lattice_set.descriptors is None
    assert json.loads((lattice_set.path / "meta.json").read_text())["descriptors"] is None
    assert sorted(p.name for p in lattice_set.path.iterdir()) == ["meta.json", "tiles.parquet"]


def test_crash_between_descriptor_and_meta_renames_is_detected(lattice_set, monkeypatch):
    rng = np.random.default_rng(1)
    lattice_set.write_descriptors(rng.standard_normal((80, 8)), "model-a")
    real = tiles_descriptors.replace_file
    calls = []

    def crash_on_meta(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "meta.json":
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(tiles_descriptors, "replace_file", crash_on_meta)
    with pytest.raises(OSError, match="simulated"):
        lattice_set.write_descriptors(rng.standard_normal((80, 8)), "model-b")
    assert calls == ["descriptors.f16.npy", "meta.json"]
    with pytest.raises(TileSetError, match="fingerprint"):
        TileSet.open(lattice_set.path)
    monkeypatch.undo()
    lattice_set.write_descriptors(rng.standard_normal((80, 8)), "model-b")
    assert TileSet.open(lattice_set.path).model_hash == "model-b"


# --------------------------------------------------------------------------- bad input


def _set_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))


def test_meta_of_another_version_is_refused_with_both_versions_named(lattice_set):
    _set_meta(lattice_set.path, format_version=2)
    with pytest.raises(TileSetError, match=r"format_version 2.*format_version 1.*rebuild"):
        TileSet.open(lattice_set.path)


@pytest.mark.parametrize("damage, match", [
    (lambda p: (p / "meta.json").unlink(), "meta.json is missing"),
    (lambda p: (p / "meta.json").write_text("{not json"), "meta.json is not valid JSON"),
    (lambda p: _set_meta(p, format="something.else"), "not a tile set meta"),
    (lambda p: _set_meta(p, utm_zone="33X"), "utm_zone"),
    (lambda p: _set_meta(p, gsd_m=1.0), "gsd_m"),
    (lambda p: _set_meta(p, count=81), "80 rows but meta.json says count 81"),
    (lambda p: _set_meta(p, image_format="png"), "images"),
    (lambda p: (p / "tiles.parquet").unlink(), "tiles.parquet: tile table is missing"),
    (lambda p: (p / "tiles.parquet").write_bytes(b"PAR1" + b"\0" * 500 + b"PAR1"), "tiles.parquet is unreadable"),
    (lambda p: (p / "tiles.parquet").write_bytes((p / "tiles.parquet").read_bytes()[:300]), "tiles.parquet"),
])
def test_damaged_sets_are_refused_naming_the_file(lattice_set, damage, match):
    damage(lattice_set.path)
    with pytest.raises(TileSetError, match=match):
        TileSet.open(lattice_set.path)


def test_tile_ids_out_of_order_are_refused(lattice_set):
    table = pq.read_table(lattice_set.path / "tiles.parquet")
    ids = table.column("tile_id").to_numpy()[::-1].copy()
    table = table.set_column(0, "tile_id", pa.array(ids))
    pq.write_table(table, lattice_set.path / "tiles.parquet")
    with pytest.raises(TileSetError, match="tile_id is not 0..N-1"):
        TileSet.open(lattice_set.path)


@pytest.mark.parametrize("replacement, match", [
    (np.zeros((80, 9), np.float16), r"\(80, 9\)"),
    (np.zeros((80, 8), np.float32), "float32"),
    (np.zeros((79, 8), np.float16), r"\(79, 8\)"),
])
def test_descriptor_file_of_wrong_shape_or_dtype_is_refused(lattice_set, replacement, match):
    lattice_set.write_descriptors(np.ones((80, 8)), "model-a")
    np.save(lattice_set.path / "descriptors.f16.npy", replacement)
    with pytest.raises(TileSetError, match=match):
        TileSet.open(lattice_set.path)


def test_tampered_or_missing_descriptors_are_refused(lattice_set):
    lattice_set.write_descriptors(np.ones((80, 8)), "model-a")
    file = lattice_set.path / "descriptors.f16.npy"
    raw = bytearray(file.read_bytes())
    raw[-7] ^= 0x01  # same shape, dtype and size: only the fingerprint can tell
    file.write_bytes(bytes(raw))
    with pytest.raises(TileSetError, match="fingerprint"):
        TileSet.open(lattice_set.path)
    file.write_bytes(bytes(raw[:-2]))
    with pytest.raises(TileSetError, match="truncated"):
        TileSet.open(lattice_set.path)
    file.unlink()
    with pytest.raises(TileSetError, match="descriptors.f16.npy is missing"):
        TileSet.open(lattice_set.path)


def test_missing_or_corrupt_image_is_reported_at_read(tmp_path, small_tif):
    ts = TileSet.open(build_tile_set([small_tif], tmp_path / "s", SMALL_CFG, progress=False))
    ts.image_path(3).unlink()
    ts.image_path(4).write_bytes(b"\x89PNG garbage")
    assert ts.image(5).shape == (32, 32, 3)
    with pytest.raises(TileSetError, match=r"00000003\.png is missing"):
        ts.image(3)
    with pytest.raises(TileSetError, match=r"00000004\.png is corrupt"):
        ts.image(4)
    with pytest.raises(IndexError):
        ts.image(25)


def test_partial_directory_never_opens(tmp_path, lattice_set):
    fake = tmp_path / "copy.partial"
    shutil.copytree(lattice_set.path, fake)  # even a complete-looking copy
    with pytest.raises(TileSetError, match="unfinished build"):
        TileSet.open(fake)


def test_source_without_crs_is_refused(tmp_path):
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8",
                       transform=Affine(0.5, 0, 600_000, 0, -0.5, 5_340_000)) as ds:
        ds.write(np.zeros((3, 200, 200), np.uint8))
    with pytest.raises(TileSetError, match="no CRS"):
        build_tile_set([path], tmp_path / "out", TilingConfig(tile_size_m=L, tile_px=32), progress=False)
    arr = OrthoArray(np.zeros((200, 200, 3), np.uint8), Affine(0.5, 0, 600_000, 0, -0.5, 5_340_000), None)
    with pytest.raises(TileSetError, match="no CRS"):
        build_tile_set([arr], tmp_path / "out", TilingConfig(tile_size_m=L, tile_px=32), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_rotated_or_sheared_transform_is_refused(tmp_path):
    base = Affine.translation(600_000, 5_340_000)
    for transform in (base @ Affine.rotation(15) @ Affine.scale(0.5, -0.5),
                      base @ Affine.shear(10, 0) @ Affine.scale(0.5, -0.5)):
        arr = OrthoArray(np.zeros((200, 200, 3), np.uint8), transform, "EPSG:32633")
        with pytest.raises(TileSetError, match="rotated or sheared"):
            build_tile_set([arr], tmp_path / "out", TilingConfig(tile_size_m=L, tile_px=32), progress=False)
    path = tmp_path / "rot.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=base @ Affine.rotation(30) @ Affine.scale(0.5, -0.5)) as ds:
        ds.write(np.zeros((1, 200, 200), np.uint8))
    with pytest.raises(TileSetError, match="rotated or sheared"):
        build_tile_set([path], tmp_path / "out", TilingConfig(tile_size_m=L, tile_px=32), progress=False)


def test_source_too_small_for_one_tile_is_refused(tmp_path):
    arr = OrthoArray(np.zeros((60, 60, 3), np.uint8), Affine(0.5, 0, 600_000, 0, -0.5, 5_340_000), "EPSG:32633")
    with pytest.raises(TileSetError, match="no 40 m tile fits"):
        build_tile_set([arr], tmp_path / "out", TilingConfig(tile_size_m=L, tile_px=32), progress=False)


def test_unsupported_pixel_types_are_refused(tmp_path):
    T = Affine(0.5, 0, 600_000, 0, -0.5, 5_340_000)
    with pytest.raises(TileSetError, match="float32"):
        build_tile_set([OrthoArray(np.zeros((200, 200, 3), np.float32), T, "EPSG:32633")], tmp_path / "o",
                       TilingConfig(tile_size_m=L, tile_px=32, image_format="png"), progress=False)
    with pytest.raises(TileSetError, match="png"):
        build_tile_set([OrthoArray(np.zeros((200, 200, 3), np.uint16), T, "EPSG:32633")], tmp_path / "o",
                       TilingConfig(tile_size_m=L, tile_px=32, image_format="jpg"), progress=False)
    with pytest.raises(TileSetError, match="does not exist"):
        build_tile_set([tmp_path / "nope.tif"], tmp_path / "o", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"tile_size_m": 0.0}, "tile_size_m"), ({"tile_size_m": float("nan")}, "tile_size_m"),
    ({"tile_px": 4}, "tile_px"), ({"tile_px": 64.0}, "tile_px"),
    ({"overlap": 1.0}, "overlap"), ({"overlap": -0.1}, "overlap"),
    ({"image_format": "gif"}, "image_format"), ({"jpeg_quality": 0}, "jpeg_quality"),
    ({"resampling": "magic"}, "resampling"),
])
def test_bad_config_values_are_refused(kwargs, match):
    with pytest.raises(TileSetError, match=match):
        TilingConfig(**kwargs)


def test_config_from_dict_is_strict():
    assert TilingConfig.from_dict({"tile_size_m": 50.0, "tile_px": 320}).gsd_m == pytest.approx(50 / 320)
    with pytest.raises(TileSetError, match="unknown TilingConfig keys"):
        TilingConfig.from_dict({"tile_size": 50.0})


def test_write_tile_set_refuses_inconsistent_input(tmp_path):
    zone = geo.UTMZone(33, False)
    e = np.array([600_000.0, 600_020.0])
    with pytest.raises(TileSetError, match="equal-length"):
        write_tile_set(tmp_path / "a", zone=zone, easting_m=e, northing_m=e[:1], tile_size_m=L, tile_px=64)
    with pytest.raises(TileSetError, match="NaN"):
        write_tile_set(tmp_path / "a", zone=zone, easting_m=np.array([np.nan, 1.0]), northing_m=e,
                       tile_size_m=L, tile_px=64)
    with pytest.raises(TileSetError, match="lacks 2 of 2"):
        (tmp_path / "imgs").mkdir()
        write_tile_set(tmp_path / "a", zone=zone, easting_m=e, northing_m=e + 5e6, tile_size_m=L,
                       tile_px=64, image_format="png", images_dir=tmp_path / "imgs")
    assert not (tmp_path / "a").exists()



def test_edge_tiles_keep_their_central_half_and_pad_the_rest(tmp_path):
    """min_inside 0.5: a tile is kept when its central half lies inside the imagery; the rest of an edge
    tile is black, the central half holds the imagery as a whole-tile build would cut it. On a 142 m
    square of imagery with 40 m tiles (stride 20 m), whole tiles have centres up to 51 m from its
    middle (5 x 5 of them), edge tiles up to 61 m (7 x 7)."""
    x0, y0 = _anchor()
    tif = write_coordinate_geotiff(tmp_path / "edge.tif", crs=f"EPSG:{ZONE.epsg}", gsd_m=1.0,
                                   bounds=(x0 - 71, y0 - 71, x0 + 71, y0 + 71), nodata=65535)
    whole = TileSet.open(build_tile_set([tif], tmp_path / "whole", SMALL_CFG, progress=False))
    edge_cfg = TilingConfig(tile_size_m=L, tile_px=32, image_format="png", min_inside=0.5)
    edge = TileSet.open(build_tile_set([tif], tmp_path / "edge", edge_cfg, progress=False))
    half_side = 71 - L / 4  # a centre may lie this far from x0 when only the central half must be inside
    assert np.all(np.abs(edge.easting_m - x0) <= half_side) and np.all(np.abs(edge.northing_m - y0) <= half_side)
    assert np.all(np.abs(whole.easting_m - x0) <= 71 - L / 2)
    rows = int(round(2 * math.floor(half_side / S) + 1))
    assert len(edge) == rows * rows == 49 and len(whole) == 25
    centres = dict(zip(zip(edge.easting_m.tolist(), edge.northing_m.tolist()), range(len(edge))))
    corner = centres[(x0 + S * math.floor(half_side / S), y0 + S * math.floor(half_side / S))]  # the NE corner tile
    img = edge.image(corner)
    quarter = img.shape[0] // 4
    assert np.all(img[quarter:-quarter, quarter:-quarter].max(axis=-1) > 0)  # the central half: imagery
    assert np.all(img[:2, :] == 0) and np.all(img[:, -2:] == 0)  # beyond the NE edges: black padding
    same = {k: v for k, v in centres.items() if k in set(zip(whole.easting_m.tolist(), whole.northing_m.tolist()))}
    k = next(iter(same))  # a tile wholly inside is cut exactly as in the whole-tile build
    w = dict(zip(zip(whole.easting_m.tolist(), whole.northing_m.tolist()), range(len(whole))))[k]
    np.testing.assert_array_equal(edge.image(same[k]), whole.image(w))
    with pytest.raises(TileSetError, match="min_inside"):
        TilingConfig(min_inside=0.0)
