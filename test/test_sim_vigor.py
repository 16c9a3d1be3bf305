"""VIGOR-layout writer: files, labels and split files checked against independent computations.

The label check re-derives every delta from the latitude/longitude in the file names alone
(pyproj directly, not crossview_ros.geo), using VIGOR's reading of the deltas: the panorama sits at row
sat_px/2 + da and column sat_px/2 - db of the tile.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pyproj
import pytest
import rasterio

from crossview_ros.sim.city import CityConfig, generate_city
from crossview_ros.sim.vigor import VigorConfig, write_vigor_city, write_vigor_dataset
from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set

CITY = "Testville"
CONFIG = VigorConfig(panoramas=10, pano_height_px=64, sat_px=128, tile_size_m=40.0, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("vigor")
    city = generate_city(CityConfig(datum_lat_deg=-33.8688, datum_lon_deg=151.2093, size_m=260.0, gsd_m=0.25, seed=5))
    labels = write_vigor_city(root, CITY, city, CONFIG, progress=False)
    return root, city, labels


def _parse_latlon(name: str, kind: str) -> tuple[float, float]:
    if kind == "pano":
        _, lat, lon, _ = name.split(",")
    else:
        _, lat, lon = name[: -len(".png")].split("_")
    return float(lat), float(lon)


def _read_lines(path):
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def test_layout_and_image_sizes(written):
    root, _, labels = written
    assert len(labels) == CONFIG.panoramas
    panos = sorted((root / CITY / "panorama").glob("*.jpg"))
    sats = sorted((root / CITY / "satellite").glob("*.png"))
    assert len(panos) == CONFIG.panoramas
    sat_list = (root / "splits" / CITY / "satellite_list.txt").read_text().split()
    assert sorted(sat_list) == sorted(p.name for p in sats)
    pano = cv2.imread(str(panos[0]))
    assert pano.shape == (CONFIG.pano_height_px, 2 * CONFIG.pano_height_px, 3)
    sat = cv2.imread(str(sats[0]))
    assert sat.shape == (CONFIG.sat_px, CONFIG.sat_px, 3)
    meta = json.loads((root / CITY / "city.json").read_text())
    assert meta["city"]["utm_zone"] == "56S"


def test_every_delta_matches_the_file_names(written):
    """Deltas, positive choice and covering from lat/lon in the names, via pyproj alone."""
    root, city, _ = written
    lines = _read_lines(root / "splits" / CITY / "pano_label_balanced.txt")
    assert len(lines) == CONFIG.panoramas
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32756", always_xy=True)
    gsd = CONFIG.tile_size_m / CONFIG.sat_px
    half = CONFIG.tile_size_m / 2
    for parts in lines:
        assert len(parts) == 13
        pe, pn = to_utm.transform(*_parse_latlon(parts[0], "pano")[::-1])
        offsets = []
        for k in range(4):
            sat, da, db = parts[1 + 3 * k], float(parts[2 + 3 * k]), float(parts[3 + 3 * k])
            se, sn = to_utm.transform(*_parse_latlon(sat, "sat")[::-1])
            # Row/column of the panorama in the tile image, as VIGOR's evaluation reads it.
            row, col = CONFIG.sat_px / 2 + da, CONFIG.sat_px / 2 - db
            assert row == pytest.approx(CONFIG.sat_px / 2 + (sn - pn) / gsd, abs=0.01)
            assert col == pytest.approx(CONFIG.sat_px / 2 + (pe - se) / gsd, abs=0.01)
            assert 0 <= row < CONFIG.sat_px and 0 <= col < CONFIG.sat_px  # inside the tile
            offsets.append((abs(pe - se), abs(pn - sn)))
        # The positive holds the panorama in its central quarter; the others are semi-positives.
        assert offsets[0][0] <= half / 2 + 1e-6 and offsets[0][1] <= half / 2 + 1e-6
        ious = [(2 * half - dx) * (2 * half - dy) / (2 * (2 * half) ** 2 - (2 * half - dx) * (2 * half - dy))
                for dx, dy in offsets]
        assert ious[0] == max(ious)
        assert ious[1:] == sorted(ious[1:], reverse=True)
        assert len({p for p in parts[1::3]}) == 4


def test_panoramas_on_open_ground_and_balanced(written):
    root, city, labels = written
    scene = city.scene(1)
    positives = {}
    for label in labels:
        r, c = scene.cell_of(label.easting_m, label.northing_m)
        assert scene.height_m[r, c] <= 0.3
        positives[label.tiles[0]] = positives.get(label.tiles[0], 0) + 1
    assert max(positives.values()) <= CONFIG.max_positives_per_tile


def test_same_area_split_partitions_the_panoramas(written):
    root, _, _ = written
    split = root / "splits" / CITY
    everything = {p[0] for p in _read_lines(split / "pano_label_balanced.txt")}
    train = {p[0] for p in _read_lines(split / "same_area_balanced_train.txt")}
    test = {p[0] for p in _read_lines(split / "same_area_balanced_test.txt")}
    assert train | test == everything and not train & test
    assert len(train) == round(CONFIG.same_area_train_fraction * len(everything))


def test_satellite_images_equal_tiles_cut_by_crossview_tiles(written, tmp_path):
    """The same content as a tile set cut independently from the orthophoto at the same centre."""
    root, _, _ = written
    ortho = root / CITY / "orthophoto.tif"
    out = build_tile_set([ortho], tmp_path / "tiles",
                         TilingConfig(tile_size_m=CONFIG.tile_size_m, tile_px=CONFIG.sat_px, image_format="png"),
                         progress=False)
    tile_set = TileSet.open(out)
    sat_dir = root / CITY / "satellite"
    for name in (root / "splits" / CITY / "satellite_list.txt").read_text().split()[:6]:
        lat, lon = _parse_latlon(name, "sat")
        ids = tile_set.tiles_within(lat, lon, 0.01)
        assert len(ids) == 1
        sat = cv2.cvtColor(cv2.imread(str(sat_dir / name)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(sat, tile_set.image(int(ids[0])))


def test_satellite_centre_shows_the_orthophoto_there(written):
    """Independent of crossview_ros.tiles: the tile's central patch equals the orthophoto around its centre."""
    root, _, _ = written
    name = (root / "splits" / CITY / "satellite_list.txt").read_text().split()[0]
    lat, lon = _parse_latlon(name, "sat")
    e, n = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32756", always_xy=True).transform(lon, lat)
    sat = cv2.cvtColor(cv2.imread(str(root / CITY / "satellite" / name)), cv2.COLOR_BGR2RGB).astype(float)
    with rasterio.open(root / CITY / "orthophoto.tif") as src:
        r, c = src.index(e, n)
        patch = src.read(window=((r - 8, r + 8), (c - 8, c + 8))).transpose(1, 2, 0).astype(float)
    scale = src.res[0] / (CONFIG.tile_size_m / CONFIG.sat_px)  # tile pixels per orthophoto pixel
    half = int(round(8 * scale))
    centre = sat[CONFIG.sat_px // 2 - half: CONFIG.sat_px // 2 + half, CONFIG.sat_px // 2 - half: CONFIG.sat_px // 2 + half]
    small = cv2.resize(centre, (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(small - patch).mean() < 12.0
    # And not merely similar to any patch: a patch 10 m away differs more.
    with rasterio.open(root / CITY / "orthophoto.tif") as src:
        away = src.read(window=((r - 8 + 40, r + 8 + 40), (c - 8, c + 8))).transpose(1, 2, 0).astype(float)
    assert np.abs(small - away).mean() > np.abs(small - patch).mean()


def test_resume_reuses_files_and_same_seed_same_bytes(written, tmp_path):
    root, city, labels = written
    first = sorted((root / CITY / "panorama").glob("*.jpg"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in first}
    again = write_vigor_city(root, CITY, city, CONFIG, progress=False)
    assert [label.name for label in again] == [label.name for label in labels]
    assert {p.name: p.stat().st_mtime_ns for p in (root / CITY / "panorama").glob("*.jpg")} == mtimes
    # A fresh root with the same seeds gives identical bytes for a panorama.
    fresh = write_vigor_city(tmp_path, CITY, city, CONFIG, progress=False)
    name = fresh[0].name
    assert (tmp_path / CITY / "panorama" / name).read_bytes() == (root / CITY / "panorama" / name).read_bytes()


def test_refuses_a_different_city_in_the_same_folder(written):
    root, _, _ = written
    other = generate_city(CityConfig(datum_lat_deg=-33.8688, datum_lon_deg=151.2093, size_m=260.0, gsd_m=0.25, seed=6))
    with pytest.raises(ValueError, match="different city"):
        write_vigor_city(root, CITY, other, CONFIG, progress=False)


def test_dataset_needs_distinct_seeds(tmp_path):
    same = {"A": CityConfig(size_m=200.0, gsd_m=0.5, seed=1), "B": CityConfig(size_m=200.0, gsd_m=0.5, seed=1)}
    with pytest.raises(ValueError, match="seeded differently"):
        write_vigor_dataset(tmp_path, same, CONFIG, progress=False)


def test_panoramas_face_true_south(written, tmp_path, monkeypatch):
    """Column 0 = forward = true south puts true north in the middle column, as in VIGOR."""
    _, city, _ = written
    from crossview_ros.sim import vigor

    calls = []
    real = vigor.render_panorama

    def spy(scene, e, n, yaw_enu_rad, **kwargs):
        calls.append(yaw_enu_rad)
        return real(scene, e, n, yaw_enu_rad, **kwargs)

    monkeypatch.setattr(vigor, "render_panorama", spy)
    write_vigor_city(tmp_path, CITY, city, VigorConfig(panoramas=2, pano_height_px=32, sat_px=64,
                                                       tile_size_m=40.0, seed=4), progress=False)
    assert calls and all(yaw == pytest.approx(-math.pi / 2) for yaw in calls)


def test_extra_training_cities_leave_the_test_cities_unchanged():
    from crossview_ros.sim.vigor import CITY_DATUMS, cross_area_train_cities, default_cities

    base = default_cities(4, seed=3)
    more = default_cities(4, seed=3, extra_train=3)
    assert list(more) == ["NewYork", "Chicago", "Seattle", "SanFrancisco", "NewYork2", "Seattle2", "NewYork3"]
    for name, config in base.items():  # the four VIGOR cities are the same cities, test cities included
        assert more[name] == config
    assert len({c.seed for c in more.values()}) == len(more)  # write_vigor_dataset needs distinct seeds
    assert (more["Seattle2"].datum_lat_deg, more["Seattle2"].datum_lon_deg) == CITY_DATUMS["Seattle"]
    assert cross_area_train_cities(list(more)) == ["NewYork", "Seattle", "NewYork2", "Seattle2", "NewYork3"]
    assert cross_area_train_cities(["NewYork", "Chicago"]) == ["NewYork"]
    with pytest.raises(ValueError, match="extra_train"):
        default_cities(2, extra_train=-1)


def test_each_city_surveyed_under_its_own_sun_and_season(monkeypatch, tmp_path):
    """aerial_sun None: every city's orthophoto is rendered under a sun of its own, drawn in range
    and repeatable; a fixed aerial_sun is used as given; season_gap False leaves the survey green."""
    from crossview_ros.sim import vigor

    suns, seasons = {}, {}
    real_render, real_season = vigor.render_orthophoto, vigor.apply_season

    def render_spy(scene, sun, *args, **kwargs):
        suns[scene.shape] = (sun.azimuth_deg, sun.elevation_deg)
        return real_render(scene, sun, *args, **kwargs)

    def season_spy(image, season):
        seasons.setdefault(image.shape[:2], []).append(season)
        return real_season(image, season)

    monkeypatch.setattr(vigor, "render_orthophoto", render_spy)
    monkeypatch.setattr(vigor, "apply_season", season_spy)
    config = VigorConfig(panoramas=2, pano_height_px=32, sat_px=64, tile_size_m=40.0, seed=4)
    drawn = {}
    for seed, size in ((11, 200.0), (12, 220.0)):
        city = generate_city(CityConfig(size_m=size, gsd_m=0.5, seed=seed))
        drawn[seed] = vigor.survey_conditions(city, config)
        write_vigor_city(tmp_path / str(seed), "C", city, config, progress=False)
        assert suns[city.scene(0).shape] == (drawn[seed][0].azimuth_deg, drawn[seed][0].elevation_deg)
        assert seasons[city.scene(0).shape] == [drawn[seed][1]]
    (sun_a, season_a), (sun_b, season_b) = drawn.values()
    assert (sun_a.azimuth_deg, sun_a.elevation_deg) != (sun_b.azimuth_deg, sun_b.elevation_deg)
    for sun, season in drawn.values():
        assert vigor.AERIAL_SUN_AZIMUTH_DEG[0] <= sun.azimuth_deg < vigor.AERIAL_SUN_AZIMUTH_DEG[1]
        assert vigor.AERIAL_SUN_ELEVATION_DEG[0] <= sun.elevation_deg <= vigor.AERIAL_SUN_ELEVATION_DEG[1]
        assert vigor.SEASON_RANGE[0] <= season <= vigor.SEASON_RANGE[1]
    city = generate_city(CityConfig(size_m=200.0, gsd_m=0.5, seed=11))
    again = vigor.survey_conditions(city, config)
    assert (again[0].azimuth_deg, again[1]) == (sun_a.azimuth_deg, season_a)
    fixed = VigorConfig(panoramas=2, pano_height_px=32, sat_px=64, tile_size_m=40.0, seed=4,
                        aerial_sun=(200.0, 35.0), season_gap=False)
    sun, season = vigor.survey_conditions(city, fixed)
    assert (sun.azimuth_deg, sun.elevation_deg, season) == (200.0, 35.0, 0.0)


def test_parallel_cities_write_the_same_bytes_as_one_process(tmp_path):
    config = VigorConfig(panoramas=3, pano_height_px=32, sat_px=64, tile_size_m=40.0, seed=4)
    cities = {"A": CityConfig(size_m=200.0, gsd_m=0.5, seed=21), "B": CityConfig(size_m=200.0, gsd_m=0.5, seed=22)}
    write_vigor_dataset(tmp_path / "serial", cities, config, progress=False)
    write_vigor_dataset(tmp_path / "parallel", cities, config, progress=False, jobs=2)
    serial = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    parallel = sorted(p.relative_to(tmp_path / "parallel") for p in (tmp_path / "parallel").rglob("*") if p.is_file())
    assert serial == parallel and any(p.suffix == ".jpg" for p in serial)
    for rel in serial:
        if rel.suffix in (".jpg", ".png", ".txt"):
            assert (tmp_path / "serial" / rel).read_bytes() == (tmp_path / "parallel" / rel).read_bytes(), rel
