"""crossview-tiles and the coord_ortho generator, driven through their main() like a shell would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossview_ros import geo
from crossview_ros.sim import coord_ortho
from crossview_ros.tiles import TileSet
from crossview_ros.tiles_cli import main

LAT, LON = 48.2, 16.37
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    tif = root / "ortho.tif"
    assert coord_ortho.main(["--out", str(tif), "--lat", str(LAT), "--lon", str(LON), "--size-m", "160",
                             "--gsd-m", "0.5", "--crs", "EPSG:3857", "--kind", "rgb",
                             "--capture-date", "2024-06-01"]) == 0
    out = root / "set"
    assert main(["build", str(tif), "--out", str(out), "--tile-size-m", "40", "--tile-px", "32",
                 "--no-progress"]) == 0
    return out


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_build_writes_a_jpeg_set(built):
    ts = TileSet.open(built)
    assert ts.image_format == "jpg" and ts.tile_size_m == 40.0 and ts.tile_px == 32
    assert str(ts.zone) == "33N"
    img = ts.image(0)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert ts.tile(0).capture_date == "2024-06-01" and ts.tile(0).source == "ortho.tif"


def test_info_json_and_text(built, capsys):
    ts = TileSet.open(built)
    rc, out, _ = _run(capsys, ["info", str(built), "--json"])
    assert rc == 0
    info = json.loads(out)
    assert info["count"] == len(ts) and info["utm_zone"] == "33N"
    assert info["tile_size_m"] == 40.0 and info["tile_px"] == 32 and info["gsd_m"] == 1.25
    assert info["extent_utm_m"]["min_e"] == pytest.approx(ts.easting_m.min() - 20.0)
    assert info["extent_utm_m"]["max_n"] == pytest.approx(ts.northing_m.max() + 20.0)
    assert info["descriptors"] is None
    rc, out, _ = _run(capsys, ["info", str(built)])
    assert rc == 0 and f"tiles        {len(ts)}" in out and "33N" in out and "descriptors  none" in out


def test_info_shows_the_model_hash(tmp_path, built, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(built), str(copy)], check=True)
    ts = TileSet.open(copy)
    ts.write_descriptors(np.random.default_rng(0).standard_normal((len(ts), 8)), "abc123")
    rc, out, _ = _run(capsys, ["info", str(copy), "--json"])
    assert rc == 0 and json.loads(out)["descriptors"] == {"model_hash": "abc123", "dim": 8, "dtype": "float16"}


def test_query_lists_tiles_in_scope_with_distances(built, capsys):
    ts = TileSet.open(built)
    rc, out, _ = _run(capsys, ["query", str(built), "--fix", f"{LAT},{LON}", "--radius-m", "35", "--json"])
    assert rc == 0
    rows = json.loads(out)["tiles"]
    e, n, _ = geo.latlon_to_utm(LAT, LON, zone=ts.zone)
    dist = np.hypot(ts.easting_m - e, ts.northing_m - n)
    assert [r["tile_id"] for r in rows] == np.flatnonzero(dist <= 35.0).tolist()
    assert len(rows) >= 4
    for r in rows:
        assert r["distance_m"] == pytest.approx(dist[r["tile_id"]], abs=1e-6)
    rc, out, _ = _run(capsys, ["query", str(built), "--fix", f"{LAT},{LON}", "--radius-m", "35"])
    assert rc == 0 and out.startswith(f"{len(rows)} tiles within 35 m")


def test_query_covering_lists_four_tiles_by_iou(built, capsys):
    ts = TileSet.open(built)
    rc, out, _ = _run(capsys, ["query", str(built), "--fix", f"{LAT},{LON}", "--covering", "--json"])
    assert rc == 0
    rows = json.loads(out)["covering"]
    assert len(rows) == 4
    assert [r["tile_id"] for r in rows] == [c.tile_id for c in ts.tiles_covering(LAT, LON)]
    e, n, _ = geo.latlon_to_utm(LAT, LON, zone=ts.zone)
    for r in rows:
        dx, dy = e - ts.easting_m[r["tile_id"]], n - ts.northing_m[r["tile_id"]]
        a = (40 - abs(dx)) * (40 - abs(dy))
        assert r["iou"] == pytest.approx(a / (2 * 40 * 40 - a), abs=1e-9)
    assert [r["iou"] for r in rows] == sorted((r["iou"] for r in rows), reverse=True)


def test_query_far_away_southern_fix_is_empty(built, capsys):
    rc, out, _ = _run(capsys, ["query", str(built), "--fix", "-33.87,151.21", "--json"])
    assert rc == 0 and json.loads(out)["tiles"] == []


@pytest.mark.parametrize("argv, message", [
    (["info", "{tmp}/missing"], "is not a directory"),
    (["query", "{set}", "--fix", "abc"], "--fix must be LAT,LON"),
    (["query", "{set}", "--fix", "48.2"], "--fix must be LAT,LON"),
    (["query", "{set}", "--fix", "91,16"], "latitude 91.0 is out of range"),
    (["query", "{set}", "--fix", "48.2,16.37", "--radius-m", "-5"], "--radius-m"),
    (["build", "{tmp}/nope.tif", "--out", "{tmp}/o"], "does not exist"),
    (["build", "{tif}", "--out", "{set}"], "already exists"),
    (["build", "{tif}", "--out", "{tmp}/o", "--overlap", "1.5"], "overlap must be in [0, 1)"),
    (["build", "{tif}", "--out", "{tmp}/o", "--tile-px", "2"], "tile_px"),
])
def test_user_errors_are_one_line_with_exit_code_2(built, tmp_path, capsys, argv, message):
    subs = {"{tmp}": str(tmp_path), "{set}": str(built), "{tif}": str(built.parent / "ortho.tif")}
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    rc, _, err = _run(capsys, argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossview-tiles: error:"), err
    assert message in lines[0] and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    rc, _, err = _run(capsys, ["frobnicate"])
    assert rc == 2 and "invalid choice" in err
    rc, _, err = _run(capsys, ["query", "somewhere"])
    assert rc == 2 and "--fix" in err


def test_subcommand_help_documents_units_and_defaults(capsys):
    rc, out, _ = _run(capsys, ["build", "--help"])
    assert rc == 0
    for text in ("--tile-size-m", "metres", "default 72.96", "--tile-px", "default 640", "--overlap",
                 "default 0.5", "--format", "--jpeg-quality", "--resampling", "--overwrite"):
        assert text in out
    rc, out, _ = _run(capsys, ["query", "--help"])
    assert rc == 0 and "--radius-m" in out and "default 200" in out and "--covering" in out


def test_module_help_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "crossview_ros.tiles_cli", "--help"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "build" in proc.stdout and "info" in proc.stdout and "query" in proc.stdout


def test_coord_ortho_cli_writes_decodable_utm_raster(tmp_path, capsys):
    import rasterio

    tif = tmp_path / "c.tif"
    rc = coord_ortho.main(["--out", str(tif), "--lat", "-33.87", "--lon", "151.21", "--size-m", "50",
                           "--gsd-m", "1", "--crs", "utm", "--kind", "coords"])
    assert rc == 0
    enc = coord_ortho.read_encoding(tif)
    with rasterio.open(tif) as ds:
        assert ds.crs.to_epsg() == 32756 and ds.count == 3 and ds.dtypes[0] == "uint16"
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        pix = np.moveaxis(ds.read(), 0, -1)
        x, y = enc.decode(pix[7, 11].astype(np.float64))
        cx, cy = ds.xy(7, 11)  # rasterio's own pixel-centre coordinates
    assert (x, y) == pytest.approx((cx, cy), abs=max(enc.step) + 1e-9)
    rc, _, err = _run(capsys, [])  # tiles_cli without a subcommand
    assert rc == 2
    assert coord_ortho.main(["--out", str(tmp_path / "x.tif"), "--crs", "EPSG:999999"]) == 2


def _copy_set(built: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(built, out)
    return out


def test_verify_passes_a_good_set_and_names_a_corrupt_image(built, tmp_path, capsys):
    rc, out, _ = _run(capsys, ["verify", str(built), "--no-progress"])
    assert rc == 0 and out.strip().endswith("OK")
    broken = _copy_set(built, tmp_path)
    ts = TileSet.open(broken)
    ts.image_path(3).write_bytes(ts.image_path(3).read_bytes()[:100])  # cut short: libjpeg cannot decode it
    assert TileSet.open(broken).path == broken  # the cheap check at open sees the file, not its contents
    rc, out, _ = _run(capsys, ["verify", str(broken), "--json", "--no-progress"])
    report = json.loads(out)
    assert rc == 1 and not report["ok"] and list(report["bad_images"]) == ["3"]
    assert report["images_checked"] == len(ts)


def test_a_missing_tile_image_is_refused_at_open(built, tmp_path, capsys):
    broken = _copy_set(built, tmp_path)
    ts = TileSet.open(broken)
    ts.image_path(2).unlink()
    rc, _, err = _run(capsys, ["info", str(broken)])
    assert rc == 2 and "1 of" in err and "(tile ids 2)" in err and "crossview-tiles build" in err


def test_verify_finds_a_nan_row_the_fingerprint_cannot_see(tmp_path, capsys):
    """A descriptors file over 2 MiB: the fingerprint reads its first and last MiB, verify reads every row."""
    from crossview_ros.tiles import DESCRIPTORS_FILE, write_tile_set

    n, dim = 20_000, 64  # 2.4 MiB of float16
    side = int(np.ceil(np.sqrt(n)))
    e = 500_000.0 + 20.0 * (np.arange(n) % side)
    north = 5_300_000.0 + 20.0 * (np.arange(n) // side)
    out = write_tile_set(tmp_path / "big", zone="33N", easting_m=e, northing_m=north, tile_size_m=40.0, tile_px=32)
    rows = np.random.default_rng(0).normal(size=(n, dim))
    TileSet.open(out).write_descriptors(rows, "model-a")
    path = out / DESCRIPTORS_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) - (n // 2) * dim * 2  # row n/2 from the end: inside neither fingerprinted MiB
    data[middle:middle + 2] = np.array([np.nan], np.float16).tobytes()
    path.write_bytes(bytes(data))
    TileSet.open(out)  # still opens: the damage is where the cheap check does not look
    rc, text, _ = _run(capsys, ["verify", str(out), "--json", "--no-progress"])
    report = json.loads(text)
    assert rc == 1 and report["bad_descriptor_rows"] == {str(n - n // 2): "NaN or infinity"}
    assert report["descriptor_rows_checked"] == n
