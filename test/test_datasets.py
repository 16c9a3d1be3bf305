"""VIGOR-layout loader, caches, batching and augmentation conventions.

The label checks re-derive everything from the file names alone: latitude/longitude parsed
here, projected with pyproj directly (not crossview_ros.geo) to the city's UTM zone, VIGOR's deltas
(da, db) = ((N_tile - N_pano), (E_tile - E_pano)) / gsd and the IoU of two axis-aligned squares
of side L written out by hand. Only the VigorPairs test needs torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyproj
import pytest

from crossview_ros.sim.city import CityConfig
from crossview_ros.sim.vigor import VigorConfig, write_vigor_dataset
from crossview_training import datasets
from crossview_training.datasets import (
    SPLITS, cross_area_cities, image_cache, load_cvusa_pairs, load_vigor_split, neighbour_batches, offset_target,
    pano_rotation_px, roll_panorama, subset, tile_iou,
)

CONFIG = VigorConfig(panoramas=16, pano_height_px=32, sat_px=64, tile_size_m=40.0, seed=3)
GSD_M = CONFIG.tile_size_m / CONFIG.sat_px
CITIES = {
    "NewYork": CityConfig(datum_lat_deg=40.7580, datum_lon_deg=-73.9855, size_m=260.0, gsd_m=0.25, seed=11),
    "Chicago": CityConfig(datum_lat_deg=41.8781, datum_lon_deg=-87.6298, size_m=260.0, gsd_m=0.25, seed=12),
}


@pytest.fixture(scope="session")
def vigor_root(tmp_path_factory) -> Path:
    """Two differently seeded tiny cities in VIGOR layout (built once, about 3 s)."""
    root = tmp_path_factory.mktemp("vigor_datasets")
    write_vigor_dataset(root, CITIES, CONFIG, cross_area_train=["NewYork"], progress=False)
    return root


# --------------------------------------------------------------------------- independent helpers


def _latlon_from_name(name: str) -> tuple[float, float]:
    """Latitude/longitude from `<prefix>,<lat>,<lon>,.jpg` or `satellite_<lat>_<lon>.png`."""
    if name.endswith(".jpg"):
        _, lat, lon, _ = name.split(",")
    else:
        _, lat, lon = name[: -len(".png")].split("_")
    return float(lat), float(lon)


def _utm(lat: float, lon: float) -> tuple[float, float]:
    """UTM (E, N) in the standard 6-degree zone of the point, via pyproj alone."""
    zone = int((lon + 180.0) // 6.0) + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    return pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)


def _square_iou(c0: tuple[float, float], c1: tuple[float, float], side: float) -> float:
    """IoU of two axis-aligned squares of side `side` centred at c0 and c1 (interval overlap)."""
    def overlap(a: float, b: float) -> float:
        return max(0.0, min(a + side / 2, b + side / 2) - max(a - side / 2, b - side / 2))

    inter = overlap(c0[0], c1[0]) * overlap(c0[1], c1[1])
    return inter / (side * side + side * side - inter)


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- labels


def test_positives_semi_positives_deltas_and_iou_from_the_file_names(vigor_root):
    for name in ("same_train", "same_test"):
        split = load_vigor_split(vigor_root, name)
        assert split.sat_px == CONFIG.sat_px
        iou = split.iou
        for i, pano_path in enumerate(split.pano_paths):
            pe, pn = _utm(*_latlon_from_name(pano_path.name))
            tiles = split.labels[i]
            assert len(set(tiles.tolist())) == 4
            hand_iou = []
            for k, t in enumerate(tiles):
                sat_path = split.sat_paths[t]
                assert split.sat_city[t] == split.pano_city[i]
                assert sat_path.parent.parent.name == split.cities[split.pano_city[i]]
                se, sn = _utm(*_latlon_from_name(sat_path.name))
                da, db = split.deltas_px[i, k]
                assert da == pytest.approx((sn - pn) / GSD_M, abs=0.01)
                assert db == pytest.approx((se - pe) / GSD_M, abs=0.01)
                hand_iou.append(_square_iou((pe, pn), (se, sn), CONFIG.tile_size_m))
                if k == 0:  # the positive holds the panorama in its central quarter
                    assert abs(pe - se) <= CONFIG.tile_size_m / 4 + 1e-3
                    assert abs(pn - sn) <= CONFIG.tile_size_m / 4 + 1e-3
                else:  # a semi-positive still covers it
                    assert abs(pe - se) <= CONFIG.tile_size_m / 2 and abs(pn - sn) <= CONFIG.tile_size_m / 2
            # Names hold 1e-9 deg (~0.1 mm): the IoU from them agrees to ~1e-5.
            np.testing.assert_allclose(iou[i], hand_iou, atol=1e-4)
            assert hand_iou[0] == max(hand_iou)
            assert hand_iou[1:] == sorted(hand_iou[1:], reverse=True)
            # Semi-positives overlap the panorama-centred tile less than the positive, and all
            # four overlap it by at least a quarter of a tile (VIGOR section 3: 50 % overlap).
            assert min(hand_iou) >= (0.5 * 0.5) / (2 - 0.5 * 0.5) - 1e-6


def test_tile_iou_by_hand():
    # Offsets (da, db) of (0, 0): identical squares; (S/2, 0): half overlap -> 1/3; S: none.
    s = 64.0
    np.testing.assert_allclose(tile_iou(np.array([0.0, 32.0, 64.0, 16.0]), np.array([0.0, 0.0, 10.0, 16.0]), s),
                               [1.0, (32 * 64) / (2 * 64 * 64 - 32 * 64), 0.0,
                                (48 * 48) / (2 * 64 * 64 - 48 * 48)])
    # Sign does not matter, only |offset|.
    assert tile_iou(-10.0, 7.0, s) == pytest.approx(tile_iou(10.0, -7.0, s))


def test_metric_positions_match_pyproj(vigor_root):
    split = load_vigor_split(vigor_root, "same_test")
    pano_en, sat_en = split.metric_positions()
    for i, p in enumerate(split.pano_paths):
        np.testing.assert_allclose(pano_en[i], _utm(*_latlon_from_name(p.name)), atol=1e-3)
    for j in range(0, len(split.sat_paths), 17):
        np.testing.assert_allclose(sat_en[j], _utm(*_latlon_from_name(split.sat_paths[j].name)), atol=1e-3)


# --------------------------------------------------------------------------- splits


def test_same_area_splits_partition_each_city(vigor_root):
    train = load_vigor_split(vigor_root, "same_train")
    test = load_vigor_split(vigor_root, "same_test")
    assert train.cities == test.cities == tuple(sorted(CITIES))
    for ci, city in enumerate(train.cities):
        everything = {p[0] for p in _lines(vigor_root / "splits" / city / "pano_label_balanced.txt")}
        a = {p.name for p, c in zip(train.pano_paths, train.pano_city) if c == ci}
        b = {p.name for p, c in zip(test.pano_paths, test.pano_city) if c == test.cities.index(city)}
        assert a and b
        assert a | b == everything and not a & b
        assert all(p.parent == vigor_root / city / "panorama" for p in train.pano_paths if p.name in a)


def test_cross_area_splits_follow_dataset_json(vigor_root):
    roles = json.loads((vigor_root / "dataset.json").read_text())["cross_area"]
    assert cross_area_cities(vigor_root) == (roles["train"], roles["test"]) == (["NewYork"], ["Chicago"])
    for name, cities in (("cross_train", roles["train"]), ("cross_test", roles["test"])):
        split = load_vigor_split(vigor_root, name)
        assert list(split.cities) == cities
        expected = [p[0] for city in cities for p in _lines(vigor_root / "splits" / city / "pano_label_balanced.txt")]
        assert [p.name for p in split.pano_paths] == expected  # every panorama of those cities, in file order
        np.testing.assert_allclose(split.pano_latlon, [_latlon_from_name(n) for n in expected])


@pytest.mark.parametrize("name", SPLITS)
def test_gallery_is_the_union_of_the_satellite_lists(vigor_root, name):
    split = load_vigor_split(vigor_root, name)
    expected = [vigor_root / city / "satellite" / n for city in split.cities
                for n in (vigor_root / "splits" / city / "satellite_list.txt").read_text().split()]
    assert split.sat_paths == expected
    assert all(p.exists() for p in split.sat_paths)
    assert [split.cities[c] for c in split.sat_city] == [p.parent.parent.name for p in split.sat_paths]


def test_explicit_cities_and_subset(vigor_root):
    split = load_vigor_split(vigor_root, "same_train", cities=["Chicago"])
    assert split.cities == ("Chicago",) and set(split.pano_city.tolist()) == {0}
    part = subset(split, [2, 0], "few")
    assert part.split == "few" and len(part) == 2
    assert part.pano_paths == [split.pano_paths[2], split.pano_paths[0]]
    np.testing.assert_array_equal(part.labels, split.labels[[2, 0]])
    np.testing.assert_array_equal(part.deltas_px, split.deltas_px[[2, 0]])
    assert part.sat_paths == split.sat_paths  # the gallery stays whole


def test_vigor_fallback_roles_without_dataset_json(tmp_path):
    for city in ("Chicago", "NewYork", "Seattle"):
        (tmp_path / "splits" / city).mkdir(parents=True)
        (tmp_path / "splits" / city / "satellite_list.txt").write_text("")
    assert cross_area_cities(tmp_path) == (["NewYork", "Seattle"], ["Chicago"])
    other = tmp_path / "other"
    for city in ("A", "B"):
        (other / "splits" / city).mkdir(parents=True)
        (other / "splits" / city / "satellite_list.txt").write_text("")
    with pytest.raises(ValueError, match="dataset.json"):
        cross_area_cities(other)


# --------------------------------------------------------------------------- bad inputs


SAT_NAMES = [f"satellite_40.75{i}000000_-73.98{i}000000.png" for i in range(5)]
PANO_NAME = "P0,40.751000000,-73.981000000,.jpg"


def _fake_root(root: Path, label_line: str) -> Path:
    """A one-city VIGOR-layout root written by hand (one readable satellite image)."""
    (root / "splits" / "Town").mkdir(parents=True)
    (root / "Town" / "satellite").mkdir(parents=True)
    cv2.imwrite(str(root / "Town" / "satellite" / SAT_NAMES[0]), np.zeros((20, 20, 3), np.uint8))
    (root / "splits" / "Town" / "satellite_list.txt").write_text("\n".join(SAT_NAMES[:4]) + "\n")
    text = f"{PANO_NAME} {SAT_NAMES[1]} 1 2 {SAT_NAMES[0]} 3 4 {SAT_NAMES[2]} 5 6 {SAT_NAMES[3]} 7 8\n"
    (root / "splits" / "Town" / "same_area_balanced_train.txt").write_text(text + "\n" + label_line + "\n")
    return root


def test_a_hand_written_root_loads(tmp_path):
    split = load_vigor_split(_fake_root(tmp_path, ""), "same_train")
    assert len(split) == 1 and split.sat_px == 20
    np.testing.assert_array_equal(split.labels[0], [1, 0, 2, 3])
    np.testing.assert_array_equal(split.deltas_px[0], [[1, 2], [3, 4], [5, 6], [7, 8]])
    assert split.pano_latlon[0] == pytest.approx([40.751, -73.981])


def test_missing_splits_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="splits"):
        load_vigor_split(tmp_path, "same_train")


def test_unknown_split_name(tmp_path):
    with pytest.raises(ValueError, match="same_train"):
        load_vigor_split(tmp_path, "train")


def test_malformed_label_line_names_file_and_line(tmp_path):
    root = _fake_root(tmp_path, f"{PANO_NAME} {SAT_NAMES[0]} 1 2")
    with pytest.raises(ValueError, match=r"same_area_balanced_train\.txt line 3: expected 13 fields, got 4"):
        load_vigor_split(root, "same_train")


def test_label_naming_an_unknown_tile_names_file_line_and_tile(tmp_path):
    line = f"{PANO_NAME} {SAT_NAMES[4]} 1 2 {SAT_NAMES[0]} 3 4 {SAT_NAMES[2]} 5 6 {SAT_NAMES[3]} 7 8"
    root = _fake_root(tmp_path, line)
    with pytest.raises(ValueError, match=r"same_area_balanced_train\.txt line 3: tile .*-73\.984000000\.png is not in "
                                         r"satellite_list\.txt"):
        load_vigor_split(root, "same_train")


def test_missing_label_file_names_it(tmp_path):
    root = _fake_root(tmp_path, "")
    with pytest.raises(FileNotFoundError, match="same_area_balanced_test.txt"):
        load_vigor_split(root, "same_test")


def test_unknown_city_refused(vigor_root):
    with pytest.raises(FileNotFoundError, match="Atlantis"):
        load_vigor_split(vigor_root, "same_train", cities=["Atlantis"])


# --------------------------------------------------------------------------- image cache


def _write_images(folder: Path, colours: list[tuple[int, int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate(colours):
        image = np.zeros((12, 24, 3), np.uint8)
        image[:, :12] = rgb
        image[:, 12:] = (255 - rgb[0], 255 - rgb[1], 255 - rgb[2])
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_image_cache_content_is_rgb_and_resized(tmp_path):
    paths = _write_images(tmp_path / "img", [(255, 0, 0), (10, 200, 30)])
    cache = image_cache(paths, (6, 8), tmp_path / "c" / "x.npy", progress=False)
    assert cache.shape == (2, 6, 8, 3) and cache.dtype == np.uint8
    np.testing.assert_array_equal(cache[0, :, :4], np.broadcast_to([255, 0, 0], (6, 4, 3)))
    np.testing.assert_array_equal(cache[1, :, 4:], np.broadcast_to([245, 55, 225], (6, 4, 3)))


def test_image_cache_built_once_reused_and_rebuilt_when_files_change(tmp_path, monkeypatch):
    paths = _write_images(tmp_path / "img", [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    decoded = []
    real = datasets._decode
    monkeypatch.setattr(datasets, "_decode", lambda p, s: decoded.append(p) or real(p, s))
    target = tmp_path / "cache" / "c.npy"
    image_cache(paths, (6, 8), target, progress=False)
    assert len(decoded) == 3
    stamp = target.stat().st_mtime_ns
    again = image_cache(paths, (6, 8), target, progress=False)
    assert len(decoded) == 3  # nothing decoded again
    assert target.stat().st_mtime_ns == stamp
    assert isinstance(again, np.memmap) and again.shape == (3, 6, 8, 3)
    # A different file list (or size) rebuilds it.
    fewer = image_cache(paths[:2], (6, 8), target, progress=False)
    assert len(decoded) == 5 and fewer.shape == (2, 6, 8, 3)
    bigger = image_cache(paths[:2], (4, 4), target, progress=False)
    assert len(decoded) == 7 and bigger.shape == (2, 4, 4, 3)
    assert sorted(p.name for p in target.parent.iterdir()) == ["c.json", "c.npy"]  # no temporaries left


def test_corrupt_image_raises_naming_the_file_and_leaves_no_temporary(tmp_path):
    paths = _write_images(tmp_path / "img", [(1, 2, 3), (4, 5, 6)])
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")
    with pytest.raises(ValueError, match="broken.png"):
        image_cache([paths[0], bad, paths[1]], (6, 8), tmp_path / "cache" / "c.npy", progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_cached_images_of_a_split(vigor_root):
    split = load_vigor_split(vigor_root, "cross_test")
    panos, sats = datasets.cached_images(split, (16, 32), (24, 24), progress=False)
    assert panos.shape == (len(split), 16, 32, 3) and sats.shape == (len(split.sat_paths), 24, 24, 3)
    first = cv2.cvtColor(cv2.imread(str(split.sat_paths[5])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(sats[5], cv2.resize(first, (24, 24), interpolation=cv2.INTER_AREA))


def test_cache_names_stay_short_for_many_cities_and_differ_per_city_list(tmp_path):
    """Two cities keep their readable name; 34 cities (more than the 60-CPU-minute reference set's 32) would pass
    the file system's 255-byte name limit joined, so they get the first city, the count and a hash: a cache
    with that name builds and reads back, and another list of the same length gets another name."""
    assert datasets.cache_tag("cross_train", ["NewYork", "Seattle"]) == "cross_train_NewYork-Seattle"
    many = ["NewYork", "Seattle"] + [f"{c}{k}" for k in range(2, 18) for c in ("NewYork", "Seattle")]
    tag = datasets.cache_tag("cross_train", many)
    assert tag.startswith("cross_train_NewYork-and-33-more-") and len(tag) <= datasets.CACHE_TAG_MAX_CHARS
    assert datasets.cache_tag("cross_train", many[:-1] + ["Chicago9"]) != tag
    paths = _write_images(tmp_path / "img", [(1, 2, 3), (4, 5, 6)])
    cache = image_cache(paths, (6, 8), tmp_path / "cache" / f"{tag}_pano_6x8.npy", progress=False)
    assert cache.shape == (2, 6, 8, 3) and len(f".{tag}_pano_320x640.npy.4194304.tmp.npy") < 255

# --------------------------------------------------------------------------- batches


def _check_batches(split, batches):
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # every panorama at most once per epoch
    assert set(flat) <= set(range(len(split)))
    for b in batches:
        seen = set()
        for i in b:
            own = set(split.labels[i].tolist())
            assert not own & seen, f"batch {b} shares a tile"
            seen |= own


@pytest.mark.parametrize("batch_size", [2, 4, 8])
def test_neighbour_batches_rules(vigor_root, batch_size):
    split = load_vigor_split(vigor_root, "same_train")
    epochs = [neighbour_batches(split, batch_size, seed=5, epoch=e) for e in range(3)]
    for batches in epochs:
        _check_batches(split, batches)
        assert all(1 <= len(b) <= batch_size for b in batches)
    assert neighbour_batches(split, batch_size, seed=5, epoch=1) == epochs[1]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert neighbour_batches(split, batch_size, seed=6, epoch=1) != epochs[1]


def test_neighbour_batches_stay_in_one_city_when_it_has_enough_neighbours(vigor_root):
    split = load_vigor_split(vigor_root, "same_train")
    per_city = np.bincount(split.pano_city).min()
    batches = neighbour_batches(split, 3, seed=0, epoch=0, neighbours=int(per_city))
    _check_batches(split, batches)
    pano_en, _ = split.metric_positions()
    for b in batches:
        assert len(set(split.pano_city[b].tolist())) == 1
        spread = np.ptp(pano_en[b], axis=0)
        assert (spread < 300.0).all()  # one tiny city (260 m)


# --------------------------------------------------------------------------- conventions


def test_offset_target_sign_on_a_hand_case():
    # Panorama 3 m east and 4 m north of the tile centre, gsd 0.5 m, 80 px tile (L = 40 m):
    # da = (N_tile - N_pano) / gsd = -8, db = (E_tile - E_pano) / gsd = -6.
    target = offset_target(np.array([-8.0, -6.0]), 80)
    np.testing.assert_allclose(target, [3.0 / 40.0, 4.0 / 40.0])
    # West and south -> both negative; batched input keeps its leading shape.
    both = offset_target(np.array([[[8.0, 6.0], [-8.0, 0.0]]]), 80)
    assert both.shape == (1, 2, 2)
    np.testing.assert_allclose(both[0], [[-0.075, -0.1], [0.0, 0.1]])


def test_offset_target_agrees_with_the_file_names(vigor_root):
    split = load_vigor_split(vigor_root, "cross_train")
    for i in range(0, len(split), 3):
        pe, pn = _utm(*_latlon_from_name(split.pano_paths[i].name))
        for k in range(4):
            se, sn = _utm(*_latlon_from_name(split.sat_paths[split.labels[i, k]].name))
            np.testing.assert_allclose(offset_target(split.deltas_px[i, k], split.sat_px) * CONFIG.tile_size_m,
                                       [pe - se, pn - sn], atol=1e-3)


def _azimuth_panorama(width: int = 360) -> np.ndarray:
    """(2, W, 3) panorama whose column c shows azimuth c * 360 / W - 180 (north in the middle)."""
    az = np.arange(width) * 360 // width  # 0..359, 180 = north
    return np.repeat(np.stack([az, az, az], axis=-1)[None], 2, axis=0).astype(np.int64)


def test_roll_and_rotation_direction():
    pano = _azimuth_panorama(360)
    mid = 180
    assert pano[0, mid, 0] - 180 == 0  # north in the middle
    # Camera turned clockwise by 90 deg: it now faces east, east in the middle column.
    turned = roll_panorama(pano, pano_rotation_px(360, 90.0))
    assert pano_rotation_px(360, 90.0) == -90
    assert turned[0, mid, 0] - 180 == 90
    # Positive shift moves content right: the camera turned left (counter-clockwise) -> west.
    left = roll_panorama(pano, 90)
    assert left[0, mid, 0] - 180 == -90
    assert left[0, mid + 90, 0] - 180 == 0  # north moved right by 90 columns
    # Rounding to whole columns, and a full turn is the identity.
    assert pano_rotation_px(2048, 1.0) == -6
    np.testing.assert_array_equal(roll_panorama(pano, pano_rotation_px(360, 360.0)), pano)
    np.testing.assert_array_equal(roll_panorama(roll_panorama(pano, pano_rotation_px(360, 30.0)),
                                                pano_rotation_px(360, -30.0)), pano)


def test_rotate_aerial_counter_clockwise():
    sat = np.zeros((33, 33, 3), np.uint8)
    sat[2:8, 14:19] = 255  # a blob north of the centre
    rot = datasets.rotate_aerial(sat, 90.0)
    ys, xs = np.nonzero(rot[..., 0] > 128)
    assert xs.mean() < 10 and abs(ys.mean() - 16) < 2  # north went west: counter-clockwise


def test_photometric_is_seeded_and_stays_uint8():
    image = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    a = datasets.photometric(image, np.random.default_rng(1), 0.3)
    b = datasets.photometric(image, np.random.default_rng(1), 0.3)
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image)
    np.testing.assert_array_equal(datasets.photometric(image, np.random.default_rng(1), 0.0), image)


# --------------------------------------------------------------------------- CVUSA


def test_cvusa_pairs(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train-19zl.csv").write_text(
        "bingmap/19/0000001.jpg,streetview/panos/0000001.jpg,annotations/0000001.npy\n"
        "\n"
        "bingmap/19/0000002.jpg, streetview/panos/0000002.jpg ,annotations/0000002.npy\n")
    pairs = load_cvusa_pairs(tmp_path, "train")
    assert pairs == [(tmp_path / "bingmap/19/0000001.jpg", tmp_path / "streetview/panos/0000001.jpg"),
                     (tmp_path / "bingmap/19/0000002.jpg", tmp_path / "streetview/panos/0000002.jpg")]
    (tmp_path / "splits" / "val-19zl.csv").write_text("bingmap/19/1.jpg,streetview/panos/1.jpg\nonly-one-field\n")
    with pytest.raises(ValueError, match=r"val-19zl\.csv line 2"):
        load_cvusa_pairs(tmp_path, "val")
    with pytest.raises(ValueError, match="'train' or 'val'"):
        load_cvusa_pairs(tmp_path, "test")
    shutil.rmtree(tmp_path / "splits")
    with pytest.raises(FileNotFoundError, match="CVUSA"):
        load_cvusa_pairs(tmp_path, "train")


# --------------------------------------------------------------------------- torch dataset


def test_vigor_pairs_items(vigor_root):
    torch = pytest.importorskip("torch")
    split = load_vigor_split(vigor_root, "cross_train")
    panos, sats = datasets.cached_images(split, (16, 32), (24, 24), progress=False)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    plain = datasets.VigorPairs(split, panos, sats, mean=mean, std=std)
    item = plain[3]
    assert item["ground"].shape == (3, 16, 32) and item["aerial"].shape == (3, 24, 24)
    assert item["ground"].dtype == torch.float32
    expected = (np.asarray(panos[3], np.float32).transpose(2, 0, 1) / 255.0 - np.reshape(mean, (3, 1, 1))) \
        / np.reshape(std, (3, 1, 1))
    np.testing.assert_allclose(item["ground"].numpy(), expected, atol=1e-6)
    assert int(item["tile"]) == split.labels[3, 0] and bool(item["positive"])
    np.testing.assert_allclose(item["offset"].numpy(), offset_target(split.deltas_px[3, 0], split.sat_px), atol=1e-7)
    assert float(item["iou"]) == pytest.approx(split.iou[3, 0], abs=1e-6)

    semi = datasets.VigorPairs(split, panos, sats, mean=mean, std=std, semi_positive_prob=1.0, seed=2)
    for i in range(len(split)):
        it = semi[i]
        k = list(split.labels[i]).index(int(it["tile"]))
        assert k in (1, 2, 3) and not bool(it["positive"])
        np.testing.assert_allclose(it["offset"].numpy(), offset_target(split.deltas_px[i, k], split.sat_px), atol=1e-7)

    aug = datasets.VigorPairs(split, panos, sats, mean=mean, std=std, rotation_deg=180.0,
                              photometric_strength=0.3, seed=4)
    aug.set_epoch(1)
    a1, a2 = aug[2], aug[2]
    assert torch.equal(a1["ground"], a2["ground"]) and torch.equal(a1["aerial"], a2["aerial"])
    aug.set_epoch(2)
    assert not torch.equal(aug[2]["ground"], a1["ground"])
    with pytest.raises(ValueError, match="caches"):
        datasets.VigorPairs(split, panos[:3], sats, mean=mean, std=std)


def test_vigor_pairs_rotation_is_a_roll(vigor_root):
    pytest.importorskip("torch")
    split = load_vigor_split(vigor_root, "cross_train")
    panos, sats = datasets.cached_images(split, (16, 32), (24, 24), progress=False)
    rot = datasets.VigorPairs(split, panos, sats, mean=(0, 0, 0), std=(1, 1, 1), rotation_deg=180.0, seed=1)
    ground = rot[0]["ground"].numpy().transpose(1, 2, 0) * 255.0
    rolls = [np.roll(np.asarray(panos[0], np.float32), s, axis=1) for s in range(32)]
    assert min(np.abs(ground - r).max() for r in rolls) < 1e-3
