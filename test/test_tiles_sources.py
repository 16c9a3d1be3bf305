"""Real imagery: one simulated orthophoto (UTM 33N, 0.2 m) reprojected by GDAL to Web Mercator, a European
and a national CRS, a neighbouring UTM zone and lat/lon, and cut into an XYZ tile folder; every build must
give the tiles of the UTM build. Offsets are measured by phase correlation of the tile images (checked to
see a 1 m shift) and, independently, by the tile centres and a pixel comparison. Also: ground resolution
and capture date in the log and meta.json, missing XYZ tiles, TMS rows, the zoom choice, the bounded tile
cache, bad input, and a walk localized on the XYZ-built tiles against the UTM-built ones."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import cv2
import mercantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from crossview_ros import geo
from crossview_ros.tiles import OrthoArray, TileSet, TilingConfig, XyzFolder, build_tile_set
from crossview_ros.tiles import xyz as tiles_xyz
from crossview_ros.tiles_cli import main as tiles_main

# rasterio's calculate_default_transform still multiplies affines with `*`
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

LAT, LON = 48.2, 16.37  # Vienna, UTM 33N
CITY_M, CITY_GSD_M = 200.0, 0.2
ZOOM = 19  # Web Mercator at 48.2 deg: 0.2986 m projected, 0.199 m on the ground: the orthophoto's resolution
CFG = TilingConfig(tile_size_m=40.0, tile_px=200, image_format="png")  # 0.2 m tiles, lossless
TOLERANCE_M = 0.5  # issue 19: tiles within 0.5 m of the UTM build


# --------------------------------------------------------------------------- helpers


def warp_geotiff(src: Path, out: Path, crs: str, missing: str) -> Path:
    """src reprojected to crs as gdalwarp would (its default grid and resolution); the corners outside the
    footprint marked by an alpha band ("alpha", gdalwarp -dstalpha), nodata 0 ("nodata") or not at all."""
    with rasterio.open(src) as ds:
        img, T, src_crs, tags = ds.read(), ds.transform, ds.crs, ds.tags()
        t, w, h = calculate_default_transform(src_crs, crs, ds.width, ds.height, *ds.bounds)
    opaque = np.full((1, *img.shape[1:]), 255, np.uint8)
    dst = np.zeros((4, h, w), np.uint8)
    reproject(np.concatenate([img, opaque]), dst, src_transform=T, src_crs=src_crs, dst_transform=t, dst_crs=crs,
              src_alpha=4, dst_alpha=4, resampling=Resampling.bilinear)
    profile = dict(driver="GTiff", width=w, height=h, dtype="uint8", crs=crs, transform=t, photometric="RGB")
    if missing == "alpha":
        profile.update(count=4, alpha="YES")
    else:
        profile.update(count=3, nodata=0 if missing == "nodata" else None)
        dst = dst[:3]
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(dst)
        ds.update_tags(**{k: v for k, v in tags.items() if k == "CAPTURE_DATE"})
    return out


def cut_xyz(src: Path, folder: Path, zoom: int, *, tms: bool = False) -> Path:
    """src reprojected onto the pixel grid of Web Mercator zoom `zoom` and cut into 256 px tiles under
    folder/zoom/x/y: JPEG where a tile is wholly inside the imagery, PNG with alpha where partly."""
    with rasterio.open(src) as ds:
        img, T, src_crs = ds.read(), ds.transform, ds.crs
        west, south, east, north = transform_bounds(src_crs, "EPSG:4326", *ds.bounds)
    tiles = list(mercantile.tiles(west, south, east, north, zoom))
    x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
    x1, y1 = max(t.x for t in tiles), max(t.y for t in tiles)
    nw = mercantile.xy_bounds(x0, y0, zoom)
    res = (nw.right - nw.left) / 256
    dst = np.zeros((4, (y1 - y0 + 1) * 256, (x1 - x0 + 1) * 256), np.uint8)
    reproject(np.concatenate([img, np.full((1, *img.shape[1:]), 255, np.uint8)]), dst, src_transform=T,
              src_crs=src_crs, dst_transform=Affine(res, 0, nw.left, 0, -res, nw.top), dst_crs="EPSG:3857",
              src_alpha=4, dst_alpha=4, resampling=Resampling.bilinear)
    for x in range(x0, x1 + 1):
        for y in range(y0, y1 + 1):
            block = np.moveaxis(dst[:, (y - y0) * 256:(y - y0 + 1) * 256, (x - x0) * 256:(x - x0 + 1) * 256], 0, -1)
            if not block[:, :, 3].any():
                continue
            d = folder / str(zoom) / str(x)
            d.mkdir(parents=True, exist_ok=True)
            row = (2 ** zoom - 1 - y) if tms else y
            if block[:, :, 3].min() == 255:
                cv2.imwrite(str(d / f"{row}.jpg"), cv2.cvtColor(block[:, :, :3], cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
            else:
                cv2.imwrite(str(d / f"{row}.png"), cv2.cvtColor(block, cv2.COLOR_RGBA2BGRA))
    return folder


def by_centre(ts: TileSet) -> dict[tuple[int, int], int]:
    """Tile id by its centre rounded to the decimetre (lattice points are multiples of the stride)."""
    return {(round(10 * e), round(10 * n)): i for i, (e, n) in enumerate(zip(ts.easting_m, ts.northing_m))}


def register(a: TileSet, b: TileSet) -> tuple[np.ndarray, np.ndarray]:
    """Per common tile: the (east, south) offset of b's image against a's in metres (phase correlation,
    sub-pixel), and the mean absolute grey difference of the two images."""
    ia, ib = by_centre(a), by_centre(b)
    window = cv2.createHanningWindow((a.tile_px, a.tile_px), cv2.CV_64F)
    offsets, diffs = [], []
    for key in sorted(set(ia) & set(ib)):
        ga = cv2.cvtColor(a.image(ia[key]), cv2.COLOR_RGB2GRAY).astype(np.float64)
        gb = cv2.cvtColor(b.image(ib[key]), cv2.COLOR_RGB2GRAY).astype(np.float64)
        (dx, dy), _ = cv2.phaseCorrelate(ga, gb, window)
        offsets.append((dx * a.gsd_m, dy * a.gsd_m))
        diffs.append(np.abs(ga - gb).mean())
    return np.array(offsets), np.array(diffs)


def build(sources, out: Path, config: TilingConfig = CFG, **kw) -> TileSet:
    return TileSet.open(build_tile_set(sources, out, config, progress=False, **kw))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    """A simulated city's folder: orthophoto.tif (UTM 33N, 0.2 m, CAPTURE_DATE tag) and city.json."""
    from crossview_ros.sim.city import CityConfig
    from crossview_ros.sim.cli import run_city

    out = tmp_path_factory.mktemp("city") / "city"
    run_city(out, CityConfig(datum_lat_deg=LAT, datum_lon_deg=LON, size_m=CITY_M, gsd_m=CITY_GSD_M, seed=300),
             progress=False)
    return out


@pytest.fixture(scope="module")
def utm_tif(city) -> Path:
    return city / "orthophoto.tif"


@pytest.fixture(scope="module")
def utm_set(utm_tif, tmp_path_factory) -> TileSet:
    return build([utm_tif], tmp_path_factory.mktemp("utm") / "set")


@pytest.fixture(scope="module")
def shifted_set(utm_tif, tmp_path_factory) -> TileSet:
    """The control: the same orthophoto geo-referenced 1.0 m too far east and 0.6 m too far north."""
    with rasterio.open(utm_tif) as ds:
        image, T = np.moveaxis(ds.read(), 0, -1), ds.transform
    arr = OrthoArray(image, Affine(T.a, 0, T.c + 1.0, 0, T.e, T.f + 0.6), "EPSG:32633", name="shifted")
    return build([arr], tmp_path_factory.mktemp("shifted") / "set")


@pytest.fixture(scope="module")
def xyz_dir(utm_tif, tmp_path_factory) -> Path:
    """The orthophoto as an XYZ folder at zooms 19 and 18."""
    folder = tmp_path_factory.mktemp("xyz") / "cache"
    cut_xyz(utm_tif, folder, ZOOM)
    cut_xyz(utm_tif, folder, ZOOM - 1)
    return folder


# --------------------------------------------------------------------------- the measurement itself


def test_registration_sees_a_one_metre_error(utm_set, shifted_set):
    """The measuring method can fail: a source geo-referenced 1.0 m east / 0.6 m north of the truth is
    measured as such on every tile (its content appears 1.0 m east, 0.6 m north in the tiles)."""
    offsets, diffs = register(utm_set, shifted_set)
    assert len(utm_set) == 64 and len(offsets) == 56  # the shifted imagery no longer holds the east column
    assert np.all(np.abs(offsets[:, 0] - 1.0) < 0.05) and np.all(np.abs(offsets[:, 1] + 0.6) < 0.05)
    assert np.median(diffs) > 8.0  # grey levels: what a 1.2 m error does to the pixels


# --------------------------------------------------------------------------- GeoTIFFs in any CRS


@pytest.mark.parametrize("crs, missing", [
    ("EPSG:3857", "alpha"),  # Web Mercator, as web-map exports
    ("EPSG:3035", "nodata"),  # ETRS89 / LAEA Europe
    ("EPSG:31287", "alpha"),  # MGI / Austria Lambert: a national CRS on another datum (Bessel, MGI)
    ("EPSG:32632", "nodata"),  # the neighbouring UTM zone
    ("EPSG:4326", "nodata"),  # lat/lon degrees
])
def test_geotiff_in_any_crs_gives_the_utm_tiles(tmp_path, utm_tif, utm_set, shifted_set, crs, missing, caplog):
    tif = warp_geotiff(utm_tif, tmp_path / "ortho.tif", crs, missing)
    with caplog.at_level(logging.INFO, logger="crossview_ros.tiles.cutting"):
        ts = build([tif], tmp_path / "set")
    # Tile centres: the same lattice, and the empty corners of the reprojected raster (marked by its alpha
    # band or nodata) cost no tile: exactly the UTM build's tiles.
    assert str(ts.zone) == "33N"
    assert sorted(by_centre(ts)) == sorted(by_centre(utm_set))
    offsets, diffs = register(utm_set, ts)
    assert np.max(np.abs(offsets)) < TOLERANCE_M
    assert np.max(np.abs(offsets)) < 0.05  # measured: under 0.02 m (two bilinear resamplings)
    _, shifted_diffs = register(utm_set, shifted_set)
    assert np.median(diffs) < 0.4 * np.median(shifted_diffs)  # pixels: far closer than a 1.2 m error
    # Ground resolution, logged and recorded, against the raster's resolution in its own units times the
    # hand-computed metres per unit at Vienna (the coarser axis).
    with rasterio.open(tif) as ds:
        res = max(ds.res)
    entry = ts.meta["sources"][0]
    assert entry["crs"] == crs and entry["capture_date"] == "2023-06-14"  # the tag came along
    assert entry["ground_gsd_m"] == pytest.approx(res * METRES_PER_UNIT[crs], rel=5e-3)
    assert f"ortho.tif: {entry['ground_gsd_m']:.3f} m/px on the ground" in caplog.text


METRES_PER_UNIT = {  # ground metres per CRS unit at 48.2 N 16.37 E
    "EPSG:3857": math.cos(math.radians(LAT)),  # Web Mercator's scale 1/cos(lat)
    "EPSG:3035": 1.0,  # LAEA: within 0.3 % 620 km from its centre
    "EPSG:31287": 1.0,  # Lambert conformal between its standard parallels 46 and 49 N: within 0.1 %
    "EPSG:32632": 1 / (0.9996 * (1 + (math.radians(LON - 9) * math.cos(math.radians(LAT))) ** 2 / 2)),  # 7.4 deg off
    "EPSG:4326": 111_132.954 - 559.822 * math.cos(math.radians(2 * LAT)) + 1.175 * math.cos(math.radians(4 * LAT)),
}  # (lat/lon: a degree of latitude, the longer axis of a square-degree pixel)


def test_unmarked_empty_corners_are_warned_about(tmp_path, utm_tif, utm_set, caplog):
    """A reprojected raster with neither alpha nor nodata: its black corners are indistinguishable from
    imagery, so edge tiles holding them are cut; the build says so and how to mark them."""
    tif = warp_geotiff(utm_tif, tmp_path / "ortho.tif", "EPSG:3857", "none")
    with caplog.at_level(logging.WARNING, logger="crossview_ros.tiles.cutting"):
        ts = build([tif], tmp_path / "set")
    assert "four corners are black" in caplog.text and "gdal_edit.py -a_nodata 0" in caplog.text
    extra = set(by_centre(ts)) - set(by_centre(utm_set))
    assert extra and all((ts.image(by_centre(ts)[k]).max(axis=2) == 0).mean() > 0.01 for k in extra)


# --------------------------------------------------------------------------- XYZ tile folders


def _footprint_utm(x: int, y: int, z: int) -> tuple[float, float, float, float]:
    """A web-map tile's bounds in UTM 33N (its corners transformed; edges curve by millimetres)."""
    b = mercantile.xy_bounds(x, y, z)
    e, n = geo.transform_points(np.array([b.left, b.right, b.left, b.right]),
                                np.array([b.bottom, b.bottom, b.top, b.top]), "EPSG:3857", "EPSG:32633")
    return float(e.min()), float(n.min()), float(e.max()), float(n.max())


def _overlap_m(tile_e: float, tile_n: float, half: float, box: tuple[float, float, float, float]) -> float:
    """How far a tile-set tile reaches into box (negative: its distance from it)."""
    return min(tile_e + half - box[0], box[2] - (tile_e - half), tile_n + half - box[1], box[3] - (tile_n - half))


def test_xyz_folder_gives_the_utm_tiles(tmp_path, xyz_dir, utm_set, shifted_set, caplog):
    folder = tmp_path / "xyz"
    shutil.copytree(xyz_dir, folder)
    # One tile of the deepest zoom missing, as in a cache that never fetched it.
    inner = mercantile.tile(LON, LAT + 0.0001, ZOOM)
    gone = folder / str(ZOOM) / str(inner.x) / f"{inner.y}.jpg"
    gone.unlink()
    with caplog.at_level(logging.INFO, logger="crossview_ros.tiles.cutting"):
        assert tiles_main(["build", f"xyz:{folder}", "--out", str(tmp_path / "set"), "--tile-size-m", "40",
                           "--tile-px", "200", "--format", "png", "--capture-date", "2023-06-14",
                           "--no-progress"]) == 0
    ts = TileSet.open(tmp_path / "set")
    assert str(ts.zone) == "33N"
    # Tile centres: the UTM lattice, less exactly the tiles that reach over the missing one.
    box, half = _footprint_utm(inner.x, inner.y, ZOOM), CFG.tile_size_m / 2
    utm_keys, xyz_keys = by_centre(utm_set), by_centre(ts)
    assert set(xyz_keys) <= set(utm_keys)
    dropped = set(utm_keys) - set(xyz_keys)
    reach = {k: _overlap_m(k[0] / 10, k[1] / 10, half, box) for k in utm_keys}
    assert {k for k, r in reach.items() if r > 0.5} <= dropped  # every tile over the hole is gone
    assert dropped <= {k for k, r in reach.items() if r > -0.5}  # and none further than a kernel from it
    assert 16 <= len(dropped) <= 30  # a 51 m web-map tile under 40 m tiles at a 20 m stride
    # Images: registered within 0.5 m (measured: a few centimetres), pixels far closer than a 1.2 m error.
    offsets, diffs = register(utm_set, ts)
    assert len(offsets) == len(xyz_keys) >= 34
    assert np.max(np.abs(offsets)) < TOLERANCE_M
    assert np.max(np.abs(offsets)) < 0.05
    _, shifted_diffs = register(utm_set, shifted_set)
    assert np.median(diffs) < 0.4 * np.median(shifted_diffs)
    # Ground resolution: zoom 19's 2 pi 6378137 m / 2^19 / 256 px, times cos(lat) on the ground.
    entry = ts.meta["sources"][0]
    assert entry["name"] == f"xyz:xyz/{ZOOM}" and entry["crs"] == "EPSG:3857"
    lat_c = float(np.mean(ts.lat_deg))
    hand = 2 * math.pi * 6378137.0 / 2 ** ZOOM / 256 * math.cos(math.radians(lat_c))
    assert entry["ground_gsd_m"] == pytest.approx(hand, rel=5e-3) and 0.19 < hand < 0.21
    assert f"xyz:xyz/{ZOOM}: {entry['ground_gsd_m']:.3f} m/px on the ground at its centre (the tiles: 0.200" \
        in caplog.text
    assert entry["capture_date"] == "2023-06-14" == ts.tile(0).capture_date
    assert "coarser" not in caplog.text


def test_tms_rows_and_the_zoom_choice(tmp_path, utm_tif, xyz_dir, caplog):
    xyz = build([XyzFolder(xyz_dir)], tmp_path / "xyz")
    tms_dir = cut_xyz(utm_tif, tmp_path / "tms", ZOOM, tms=True)
    tms = build([XyzFolder(tms_dir, tms=True)], tmp_path / "tms_set")
    assert np.array_equal(tms.easting_m, xyz.easting_m) and np.array_equal(tms.northing_m, xyz.northing_m)
    assert all(np.array_equal(tms.image(i), xyz.image(i)) for i in range(0, len(xyz), 7))
    # Read without the flag, TMS rows land on the mirror latitude: a wrong flag is plain to see.
    assert str(build([XyzFolder(tms_dir)], tmp_path / "flipped").zone) == "33S"
    # Zoom 18 asked for: half the resolution (0.4 m), 2x coarser than the tiles: warned.
    with caplog.at_level(logging.WARNING, logger="crossview_ros.tiles.cutting"):
        z18 = build([XyzFolder(xyz_dir, zoom=ZOOM - 1)], tmp_path / "z18")
    assert z18.meta["sources"][0]["ground_gsd_m"] == pytest.approx(2 * xyz.meta["sources"][0]["ground_gsd_m"],
                                                                   rel=1e-3)
    assert f"xyz:cache/{ZOOM - 1} is 2.0x coarser than the tiles" in caplog.text


def test_xyz_tiles_are_decoded_lazily_within_the_cache_bound(tmp_path, xyz_dir, monkeypatch):
    """A 0.5 MB cache (two 256 px tiles) gives the same tiles as the default one, never holding more than
    its bound, and decodes tiles only as windows reach them."""
    reference = build([f"xyz:{xyz_dir}"], tmp_path / "ref")  # the command line's spelling works in Python too
    peak, decoded = [0], []
    real_get, real_decode = tiles_xyz._TileCache.get, tiles_xyz._decode

    def get(self, key):
        out = real_get(self, key)
        peak[0] = max(peak[0], self.bytes)
        return out

    def decode(path):
        decoded.append(path)
        return real_decode(path)

    monkeypatch.setattr(tiles_xyz._TileCache, "get", get)
    monkeypatch.setattr(tiles_xyz, "_decode", decode)
    small = build([XyzFolder(xyz_dir, cache_mb=0.5)], tmp_path / "small")
    assert len(small) == len(reference)
    assert all(np.array_equal(small.image(i), reference.image(i)) for i in range(len(small)))
    assert 0 < peak[0] <= 0.5 * 2 ** 20
    tiles_at_zoom = len(list((xyz_dir / str(ZOOM)).rglob("*.*")))
    assert len(set(decoded)) <= tiles_at_zoom < len(decoded)  # re-decoded: the cache held only two


@pytest.mark.parametrize("argv, message", [
    (["xyz:{tmp}/none"], "is not a directory"),
    (["xyz:"], "give the folder after xyz:"),
    (["xyz:{xyz}", "--xyz-zoom", "7"], "has no zoom level 7; it has 18, 19"),
    (["{tmp}", "--xyz-zoom", "19"], "--xyz-zoom and --xyz-tms apply to xyz:FOLDER sources"),
    (["{xyz}"], "is a folder: give its GeoTIFFs, or xyz:"),
    (["xyz:{xyz}", "--capture-date", "14.06.2023"], "capture date must be YYYY-MM-DD"),
    (["xyz:{xyz}", "--capture-date", "2023-02-30"], "capture date must be YYYY-MM-DD"),
    (["xyz:{tmp}"], "holds no zoom folders"),
])
def test_bad_imagery_arguments_exit_2_with_one_line(tmp_path, xyz_dir, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, xyz=xyz_dir) for a in argv]
    capsys.readouterr()
    assert tiles_main(["build", *argv, "--out", str(tmp_path / "set"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("crossview-tiles: error:")
    assert not (tmp_path / "set").exists()


def test_capture_date_from_the_tiff_tags_or_the_flag(tmp_path, utm_tif):
    src = tmp_path / "stamped.tif"
    shutil.copy(utm_tif, src)
    with rasterio.open(src, "r+") as ds:
        ds.update_tags(CAPTURE_DATE="", TIFFTAG_DATETIME="2021:05:03 10:11:12")
    small = TilingConfig(tile_size_m=40.0, tile_px=32)
    assert build([src], tmp_path / "a", small).meta["sources"][0]["capture_date"] == "2021-05-03"
    flagged = build([src], tmp_path / "b", small, capture_date="2020-09")
    assert flagged.meta["sources"][0]["capture_date"] == "2020-09" == flagged.tile(3).capture_date


# --------------------------------------------------------------------------- a walk on the XYZ-built tiles


def _walk_errors(bags: list[Path], tile_set: Path, model: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of the walks (pooled): the published position (lat, lon) and its error against the truth."""
    from crossview_ros.localize_eval import evaluate_bags, make_config

    positions, errors = [], []
    for bag in bags:
        config = make_config({"tile_set": str(tile_set), "model": str(model), "max_mahalanobis": 1e6,
                              "engine_threads": 1})
        ev = evaluate_bags([bag], [config])
        for frame, est in zip(ev.frames, ev.estimates):
            assert est.accepted, est.reason  # the gate is opened: every frame publishes
            positions.append((est.lat_deg, est.lon_deg))
            errors.append(geo.distance_m(est.lat_deg, est.lon_deg, frame.truth.lat_deg, frame.truth.lon_deg))
    return np.array(positions), np.array(errors)


def test_a_walk_localized_on_xyz_tiles_matches_the_utm_tiles(tmp_path, city, utm_tif, xyz_dir, tiny_export):
    """Two 20 s walks through the city, localized with the session's tiny (random-weight) model on tiles cut
    from the UTM orthophoto and from the XYZ folder. The noise of this fixture: the walks' median error
    moves by its bootstrap spread when frames come and go; an imperceptible change of the tiles moves single
    fixes by a stride (a random model ranks near-equal tiles by chance). The XYZ build must stay within
    twice the bootstrap standard error of the median, and most frames must get the very same fix."""
    from crossview_ros.model_meta import load_model_meta
    from crossview_ros.sim.cli import run_drive
    from crossview_ros.sim.drive import DriveConfig
    from crossview_ros.tiles_cli import encode_tile_set

    model = tiny_export(0)
    config = TilingConfig(tile_size_m=load_model_meta(model).tile_size_m, tile_px=64)  # the tiny model's 40 m
    sets = {}
    for name, source in (("utm", utm_tif), ("xyz", XyzFolder(xyz_dir))):
        sets[name] = build_tile_set([source], tmp_path / name, config, progress=False)
        encode_tile_set(sets[name], model, progress=False)
    bags = [run_drive(city, tmp_path / f"walk{seed}", DriveConfig(mode="walk", rate_hz=2.0, duration_s=20.0,
                                                                  seed=seed), pano_height_px=64, progress=False)
            for seed in (0, 1)]
    utm_pos, utm_err = _walk_errors(bags, sets["utm"], model)
    xyz_pos, xyz_err = _walk_errors(bags, sets["xyz"], model)
    assert len(utm_err) == len(xyz_err) == 82  # 2 walks x 41 frames
    rng = np.random.default_rng(0)
    boot = [np.median(rng.choice(utm_err, utm_err.size)) for _ in range(1000)]
    noise_m = 2.0 * float(np.std(boot))
    assert 0.5 < noise_m < 20.0  # a sane spread (a few metres): the tolerance is not vacuous
    assert abs(np.median(xyz_err) - np.median(utm_err)) <= noise_m
    same = geo.distance_m(utm_pos[:, 0], utm_pos[:, 1], xyz_pos[:, 0], xyz_pos[:, 1]) < 1.0
    assert same.mean() >= 0.6  # measured: 90 %
