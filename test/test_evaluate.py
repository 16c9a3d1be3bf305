"""crossview-eval figures on hand-made similarities and descriptors with known answers.

Positions for the expected metre errors come from the file names alone (pyproj directly), not
from the loader. No torch needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyproj
import pytest

from crossview_ros.sim.city import CityConfig
from crossview_ros.sim.vigor import VigorConfig, write_vigor_dataset
from crossview_training import evaluate as ev
from crossview_training.datasets import cached_images, load_vigor_split, offset_target

CONFIG = VigorConfig(panoramas=12, pano_height_px=32, sat_px=64, tile_size_m=40.0, seed=7)
CITIES = {
    "Seattle": CityConfig(datum_lat_deg=47.6062, datum_lon_deg=-122.3321, size_m=260.0, gsd_m=0.25, seed=21),
    "Chicago": CityConfig(datum_lat_deg=41.8781, datum_lon_deg=-87.6298, size_m=260.0, gsd_m=0.25, seed=22),
}


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vigor_eval")
    write_vigor_dataset(root, CITIES, CONFIG, cross_area_train=["Seattle"], progress=False)
    return root


@pytest.fixture(scope="session")
def test_split(eval_root):
    return load_vigor_split(eval_root, "cross_test")


def _utm_of_name(name: str) -> tuple[float, float]:
    if name.endswith(".jpg"):
        _, lat, lon, _ = name.split(",")
    else:
        _, lat, lon = name[: -len(".png")].split("_")
    lat, lon = float(lat), float(lon)
    epsg = (32600 if lat >= 0 else 32700) + int((lon + 180.0) // 6.0) + 1
    return pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)


def _positions(split) -> tuple[np.ndarray, np.ndarray]:
    pano = np.array([_utm_of_name(p.name) for p in split.pano_paths])
    sat = np.array([_utm_of_name(p.name) for p in split.sat_paths])
    return pano, sat


def _onehot(rows: list[dict[int, float]], m: int) -> np.ndarray:
    out = np.zeros((len(rows), m), np.float32)
    for i, row in enumerate(rows):
        for j, v in row.items():
            out[i, j] = v
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# --------------------------------------------------------------------------- building blocks


def test_recall_at_k_by_hand_with_pessimistic_ties():
    sim = np.array([[0.9, 0.1, 0.5, 0.3],   # positive 0 first -> rank 0
                    [0.2, 0.8, 0.9, 0.1],   # positive 1 behind one -> rank 1
                    [0.5, 0.5, 0.5, 0.1],   # positive 0 tied with two others -> rank 2 (pessimistic)
                    [0.4, 0.3, 0.2, 0.1]])  # positive 3 last -> rank 3
    rec = ev.recall_at_k(sim, np.array([0, 1, 0, 3]), (1, 2, 3, 4))
    assert rec == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}


def test_error_stats_by_hand():
    e = np.array([0.5, 1.0, 4.0, 9.99, 30.0, 60.0])
    s = ev.error_stats(e)
    assert s["mean_m"] == pytest.approx((0.5 + 1.0 + 4.0 + 9.99 + 30.0 + 60.0) / 6)
    assert s["median_m"] == pytest.approx((4.0 + 9.99) / 2)
    # Strictly under each threshold: 1.0 m is not under 1 m.
    assert [s[f"under_{t}m"] for t in (1, 5, 10, 25, 50)] == pytest.approx([1 / 6, 3 / 6, 4 / 6, 4 / 6, 5 / 6])


def test_noisy_fixes_bounds_seed_and_uniformity():
    truth = np.zeros((20000, 2)) + [500000.0, 4600000.0]
    fix = ev.noisy_fixes(truth, seed=3)
    d = fix - truth
    assert np.abs(d).max() <= 100.0 and np.abs(d).max() > 99.0
    # Uniform on [-100, 100] per axis: mean 0, mean |d| 50, std 100/sqrt(3); axes independent.
    assert np.abs(d.mean(axis=0)).max() < 2.0
    np.testing.assert_allclose(np.abs(d).mean(axis=0), 50.0, atol=1.5)
    np.testing.assert_allclose(d.std(axis=0), 100 / math.sqrt(3), atol=1.5)
    assert abs(np.corrcoef(d.T)[0, 1]) < 0.05
    np.testing.assert_array_equal(ev.noisy_fixes(truth, seed=3), fix)
    assert not np.array_equal(ev.noisy_fixes(truth, seed=4), fix)
    narrow = ev.noisy_fixes(truth[:100], seed=3, half_width_m=5.0) - truth[:100]
    assert np.abs(narrow).max() <= 5.0


def test_scoped_top1_by_hand():
    sat_en = np.array([[0.0, 0.0], [100.0, 0.0], [300.0, 0.0], [0.0, 0.0]])
    sat_city = np.array([0, 0, 0, 1])  # tile 3 lies in another city, at the same coordinates
    sim = np.array([[0.1, 0.5, 0.9, 1.0],
                    [0.5, 0.5, 0.2, 0.0],
                    [0.1, 0.2, 0.3, 0.9]])
    fix = np.array([[0.0, 0.0], [0.0, 0.0], [1000.0, 1000.0]])
    city = np.array([0, 0, 1])
    top1, count = ev.scoped_top1(sim, sat_en, sat_city, fix, city, None)
    assert top1.tolist() == [2, 0, 3] and count.tolist() == [3, 3, 1]  # never another city; ties -> lowest
    top1, count = ev.scoped_top1(sim, sat_en, sat_city, fix, city, 200.0)
    assert top1.tolist() == [1, 0, -1] and count.tolist() == [2, 2, 0]
    top1, count = ev.scoped_top1(sim, sat_en, sat_city, fix, city, 100.0)  # the boundary is inside
    assert top1.tolist() == [1, 0, -1] and count.tolist() == [2, 2, 0]
    top1, count = ev.scoped_top1(sim, sat_en, sat_city, fix, city, 99.0)
    assert top1.tolist() == [0, 0, -1] and count.tolist() == [1, 1, 0]


# --------------------------------------------------------------------------- evaluate()


def test_perfect_descriptors(test_split):
    split = test_split
    m = len(split.sat_paths)
    pos = split.labels[:, 0]
    desc = ev.Descriptors(_onehot([{int(p): 1.0} for p in pos], m), np.eye(m, dtype=np.float32))
    r = ev.evaluate(split, desc, tile_size_m=CONFIG.tile_size_m, seed=1)
    assert r["panoramas"] == len(split) and r["tiles"] == m and r["cities"] == ["Chicago"]
    assert r["recall"] == {"top1": 1.0, "top5": 1.0, "top10": 1.0, "top1%": 1.0, "top1%_k": math.ceil(m / 100)}
    assert r["hit_rate"] == 1.0
    pano_en, sat_en = _positions(split)
    expected = np.hypot(*(sat_en[pos] - pano_en).T)  # the positive's centre is at most L/4 * sqrt(2) away
    assert expected.max() <= CONFIG.tile_size_m / 4 * math.sqrt(2) + 1e-3
    assert set(r["scopes"]) == {"all", "1000m", "500m", "200m"}
    for name, row in r["scopes"].items():
        assert row["top1"] == 1.0 and row["hit_rate"] == 1.0 and row["positive_in_scope"] == 1.0, name
        assert row["error_tile_centre"]["mean_m"] == pytest.approx(expected.mean(), abs=1e-3)
        assert row["error_tile_centre"]["median_m"] == pytest.approx(np.median(expected), abs=1e-3)
        assert row["error_tile_centre"]["under_50m"] == 1.0
        assert "error_with_offset" not in row
    assert r["scopes"]["all"]["candidates_mean"] == m
    assert r["scopes"]["200m"]["candidates_mean"] <= m
    # The raw GNSS row: the same protocol on the independently projected positions.
    gnss = np.hypot(*(ev.noisy_fixes(pano_en, 1) - pano_en).T)
    assert r["gnss"]["mean_m"] == pytest.approx(gnss.mean(), abs=1e-3)
    assert r["gnss"]["protocol"] == "uniform +-100 m per axis"
    assert "heading" not in r


def test_perfect_offsets_remove_the_tile_centre_error(test_split):
    split = test_split
    m = len(split.sat_paths)
    pos = split.labels[:, 0]
    calls = []

    def offset_fn(gi, ti):
        calls.append((gi.copy(), ti.copy()))
        k = [list(split.labels[g]).index(t) for g, t in zip(gi, ti)]
        return offset_target(split.deltas_px[gi, k], split.sat_px)

    desc = ev.Descriptors(_onehot([{int(p): 1.0} for p in pos], m), np.eye(m, dtype=np.float32), offset_fn)
    r = ev.evaluate(split, desc, tile_size_m=CONFIG.tile_size_m)
    for row in r["scopes"].values():
        assert row["error_with_offset"]["mean_m"] < 0.01
        assert row["error_tile_centre"]["mean_m"] > 1.0
    gi, ti = calls[0]
    np.testing.assert_array_equal(gi, np.arange(len(split)))
    np.testing.assert_array_equal(ti, pos)
    table = ev.markdown_table(r, "perfect")
    assert "| 0.0 |" in table.splitlines()[6]  # the offset median column of the "all" row


def test_a_known_share_of_wrong_top1(test_split):
    """Odd panoramas rank a semi-positive first and their positive second."""
    split = test_split
    m = len(split.sat_paths)
    pos, semi = split.labels[:, 0].tolist(), split.labels[:, 1].tolist()
    rows = [{pos[i]: 1.0} if i % 2 == 0 else {semi[i]: 1.0, pos[i]: 0.5} for i in range(len(split))]
    desc = ev.Descriptors(_onehot(rows, m), np.eye(m, dtype=np.float32))
    heading = np.array([0.0, 3.0, -7.0, 179.0, -170.0, 12.0, 4.0, -4.0, 9.0, 160.0, 1.0, 2.0][: len(split)])
    r = ev.evaluate(split, desc, tile_size_m=CONFIG.tile_size_m, heading_error_deg=heading)
    evens = math.ceil(len(split) / 2) / len(split)
    assert r["recall"]["top1"] == pytest.approx(evens)
    assert r["recall"]["top5"] == 1.0 and r["hit_rate"] == 1.0
    pano_en, sat_en = _positions(split)
    chosen = np.where(np.arange(len(split)) % 2 == 0, split.labels[:, 0], split.labels[:, 1])
    expected = np.hypot(*(sat_en[chosen] - pano_en).T)
    for row in r["scopes"].values():
        assert row["top1"] == pytest.approx(evens) and row["hit_rate"] == 1.0
        assert row["error_tile_centre"]["mean_m"] == pytest.approx(expected.mean(), abs=1e-3)
    h = np.abs(heading)
    assert r["heading"] == pytest.approx({"median_deg": float(np.median(h)), "under_5deg": np.mean(h < 5),
                                          "under_10deg": np.mean(h < 10), "flip_share": np.mean(h > 150)})
    assert "Heading: median" in ev.markdown_table(r, "t")


def test_scope_study_with_a_far_fix(test_split, monkeypatch):
    """Fixes 300 m east of every panorama: the positive leaves the 200 m scope, not the 500 m one."""
    split = test_split
    m = len(split.sat_paths)
    monkeypatch.setattr(ev, "noisy_fixes", lambda pano_en, seed: pano_en + [300.0, 0.0])
    desc = ev.Descriptors(_onehot([{int(p): 1.0} for p in split.labels[:, 0]], m), np.eye(m, dtype=np.float32))
    r = ev.evaluate(split, desc, tile_size_m=CONFIG.tile_size_m)
    assert r["gnss"]["mean_m"] == pytest.approx(300.0) and r["gnss"]["under_50m"] == 0.0
    near = r["scopes"]["200m"]
    assert near["positive_in_scope"] == 0.0 and near["top1"] == 0.0 and near["hit_rate"] == 0.0
    for name in ("all", "1000m", "500m"):
        assert r["scopes"][name]["positive_in_scope"] == 1.0 and r["scopes"][name]["top1"] == 1.0
    pano_en, sat_en = _positions(split)
    fix = pano_en + [300.0, 0.0]
    inside = [np.flatnonzero(np.hypot(*(sat_en - f).T) <= 200.0) for f in fix]
    assert near["candidates_mean"] == pytest.approx(np.mean([len(x) for x in inside]))
    # Each prediction is a tile inside the scope, or the fix itself when the scope holds none.
    errors = [np.min(np.hypot(*(sat_en[x] - p).T)) if len(x) else 300.0 for x, p in zip(inside, pano_en)]
    assert near["error_tile_centre"]["median_m"] >= np.median(errors) - 1e-3
    assert near["error_tile_centre"]["median_m"] > 100.0


def test_markdown_table_has_every_scope_row(test_split):
    split = test_split
    m = len(split.sat_paths)
    desc = ev.Descriptors(_onehot([{int(p): 1.0} for p in split.labels[:, 0]], m), np.eye(m, dtype=np.float32))
    r = ev.evaluate(split, desc, tile_size_m=CONFIG.tile_size_m)
    table = ev.markdown_table(r, "Perfect descriptors")
    lines = table.splitlines()
    assert lines[0] == "### Perfect descriptors"
    for name in ("all", "1000m", "500m", "200m"):
        row = [line for line in lines if line.startswith(f"| {name} |")]
        assert len(row) == 1 and row[0].count("|") == 12
        assert f"| {100 * r['scopes'][name]['top1']:.1f} |" in row[0]
    assert any(line.startswith("| raw GNSS (uniform +-100 m per axis) |") for line in lines)
    assert "top-1 100.0 %" in table and f"{len(split)} panoramas, {m} tiles (Chicago)" in table


def test_same_area_scopes_never_cross_cities(eval_root):
    split = load_vigor_split(eval_root, "same_test")
    m = len(split.sat_paths)
    desc = ev.Descriptors(_onehot([{int(p): 1.0} for p in split.labels[:, 0]], m), np.eye(m, dtype=np.float32))
    r = ev.evaluate(split, desc, tile_size_m=CONFIG.tile_size_m)
    per_city = np.bincount(split.sat_city)
    assert r["tiles"] == m == per_city.sum()
    assert r["scopes"]["all"]["candidates_mean"] == pytest.approx(per_city[split.pano_city].mean())
    assert r["scopes"]["all"]["top1"] == 1.0


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("name", sorted(ev.BASELINES))
def test_baselines_on_the_tiny_city(test_split, name):
    panos, sats = cached_images(test_split, (32, 64), (64, 64), progress=False)
    desc = ev.BASELINES[name](np.asarray(panos), np.asarray(sats))
    assert desc.ground.shape[0] == len(test_split) and desc.aerial.shape[0] == len(test_split.sat_paths)
    assert desc.ground.shape[1] == desc.aerial.shape[1]
    assert np.isfinite(desc.ground).all() and np.isfinite(desc.aerial).all()
    np.testing.assert_allclose(np.linalg.norm(desc.ground, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(desc.aerial, axis=1), 1.0, atol=1e-5)
    again = ev.BASELINES[name](np.asarray(panos), np.asarray(sats))
    np.testing.assert_array_equal(again.ground, desc.ground)
    r = ev.evaluate(test_split, desc, tile_size_m=CONFIG.tile_size_m)
    assert 0.0 <= r["recall"]["top1"] <= r["recall"]["top5"] <= r["recall"]["top10"] <= 1.0


def test_polar_baseline_orientation():
    """A tile bright only north-east of its centre matches the panorama bright between bearings 0 and 90."""
    s, h, w = 64, 16, 64
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    tile = np.full((s, s, 3), 40, np.uint8)
    tile[(xx > s / 2) & (yy < s / 2)] = 220  # north-east quadrant (north up, east right)
    bearing = (np.arange(w) + 0.5) / w * 360.0 - 180.0  # column c: -180 (south) .. 0 (north, middle) ..
    pano = np.full((h, w, 3), 40, np.uint8)
    pano[h // 2:, (bearing > 0) & (bearing < 90)] = 220
    tiles = np.stack([tile, tile[:, ::-1], tile[::-1], tile[::-1, ::-1]])  # NE, NW, SE, SW
    desc = ev.polar_descriptors(pano[None], tiles)
    sim = (desc.ground @ desc.aerial.T)[0]
    assert int(np.argmax(sim)) == 0 and sim[0] > 0.9


def test_histogram_baseline_matches_colours():
    red = np.zeros((8, 16, 3), np.uint8) + [200, 30, 30]
    blue = np.zeros((8, 16, 3), np.uint8) + [30, 30, 200]
    pano = np.concatenate([blue[:4], red[4:]])  # sky blue, ground red: only the ground half counts
    desc = ev.histogram_descriptors(pano[None].astype(np.uint8),
                                    np.stack([blue[:, :8], red[:, :8]]).astype(np.uint8))
    sim = (desc.ground @ desc.aerial.T)[0]
    assert sim[1] == pytest.approx(1.0, abs=1e-5) and sim[0] < 0.0


# --------------------------------------------------------------------------- CLI


def test_cli_baseline_writes_json_and_markdown(eval_root, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = ev.main(["--data", str(eval_root), "--split", "cross_test", "--baseline", "histogram",
                  "--out", str(out), "--no-progress", "--seed", "2"])
    assert rc == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["title"] == "baseline histogram on cross_test"
    assert result["cities"] == ["Chicago"] and set(result["scopes"]) == {"all", "1000m", "500m", "200m"}
    table = (out / "eval.md").read_text()
    assert table == ev.markdown_table(result, result["title"])
    assert table in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md"]
    # The same figures as the library call on the same cached images and seed.
    split = load_vigor_split(eval_root, "cross_test")
    panos, sats = cached_images(split, (128, 256), (128, 128), progress=False)
    direct = ev.evaluate(split, ev.histogram_descriptors(np.asarray(panos), np.asarray(sats)),
                         tile_size_m=CONFIG.tile_size_m, seed=2)
    assert result["scopes"] == json.loads(json.dumps(direct["scopes"]))


def test_cli_errors(tmp_path, capsys):
    assert ev.main(["--data", str(tmp_path), "--baseline", "polar", "--no-progress"]) == 2
    assert "no splits/ folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--data", str(tmp_path)])  # neither --checkpoint nor --baseline
