"""What a user reads: every console script's --help (no flag that does not exist, no stray %%), the
train and export help texts, the replay's exit code for an output in the way, the message for a fix
outside the tiles (no internal names, a hint when latitude and longitude are swapped), and the log
lines a calibration run writes."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossview_ros import geo, localize_cli, tiles_cli
from crossview_ros.estimate import Fix, Reason
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig

ROOT = Path(__file__).resolve().parents[1]
TILE_M = 40.0
CENTRE = (48.2, 16.37)  # the test orthophoto's centre
OTHER_TOOLS_FLAGS = {"--ros-args", "--params-file", "--remap", "--param", "--log-level", "--enclave",  # ROS 2
                     "--nproc_per_node"}  # torchrun
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")


def console_scripts() -> dict[str, str]:
    """name -> "module:function" of every console script in setup.py."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', text))


def run_help(target: str, argv: list[str]) -> str:
    """The text `main(argv)` prints (stdout), run in-process; it must exit 0."""
    module, func = target.split(":")
    main = getattr(importlib.import_module(module), func)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    assert code in (0, None), f"{target} {argv} exited with {code}"
    return out.getvalue()


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Every console script's --help and each subcommand's, by "script [subcommand]"."""
    pytest.importorskip("torch")  # crossview-train, -eval, -export, -demo and -walks need the train extra
    pytest.importorskip("rclpy")
    texts = {}
    for name, target in console_scripts().items():
        if name == "localize_node":  # its --help is printed before rclpy parses the ROS arguments
            proc = subprocess.run([sys.executable, "-m", "crossview_ros.nodes.localize_node", "--help"],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            texts[name] = proc.stdout
            continue
        text = texts[name] = run_help(target, ["--help"])
        usage = re.search(r"\{([\w,-]+)\} \.\.\.", text)  # subcommands, not a flag's choices
        for sub in (usage.group(1).split(",") if usage else []):
            texts[f"{name} {sub}"] = run_help(target, [sub, "--help"])
    return texts


def test_every_help_names_only_flags_that_exist(helps):
    assert {"crossview-tiles build", "crossview-export onnx", "crossview-sim drive", "crossview-train"} <= set(helps)
    options = set(OTHER_TOOLS_FLAGS)
    for text in helps.values():  # a flag exists when some parser lists it under its options
        section = text.split("options:", 1)[1] if "options:" in text else ""
        for entry in re.findall(r"^ {2}(-.*)$", section, re.M):
            options |= set(FLAG.findall(re.split(r"\s{2,}", entry)[0]))
    unwrapped = {name: re.sub(r"-\n\s+", "-", text) for name, text in helps.items()}  # argparse breaks at hyphens
    unknown = {f"{name}: {flag}" for name, text in unwrapped.items() for flag in FLAG.findall(text)
               if flag not in options}
    assert not unknown, sorted(unknown)
    stray = [name for name, text in helps.items() if "%%" in text]
    assert not stray, f"a literal %% in the help of {stray}"


def test_train_help_lists_every_set_key(helps):
    from crossview_training.train_config import TrainConfig
    import dataclasses

    text = helps["crossview-train"]
    keys = text.split("--set keys", 1)[1]
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not re.search(rf"^\s+{f.name} \(default", keys, re.M)]
    assert not missing, f"crossview-train --help does not list --set keys {missing}"
    assert "--checkpoint-every" not in text


def test_export_help_says_which_graphs_each_family_gets(helps):
    text = " ".join(helps["crossview-export onnx"].split())
    assert "offset.onnx (descriptor models)" in text and "match.onnx (bev models)" in text


def test_replay_into_an_existing_folder_exits_2_with_one_line(tmp_path):
    for name in ("tiles", "model", "out"):
        (tmp_path / name).mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "crossview_ros.replay", str(tmp_path / "bag"), "--tiles",
                           str(tmp_path / "tiles"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists" in lines[0] and "--overwrite" in lines[0], proc.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- a fix outside the tiles


@pytest.fixture(scope="module")
def tile_dir(tiny_export, tmp_path_factory) -> Path:
    """25 tiles of 40 m cut from a 140 m orthophoto at CENTRE, encoded by the tiny model."""
    from crossview_ros.sim.coord_ortho import write_coordinate_geotiff
    from crossview_ros.tiles import TilingConfig, build_tile_set

    root = tmp_path_factory.mktemp("messages")
    tif = write_coordinate_geotiff(root / "ortho.tif", crs="EPSG:3857", gsd_m=1.0, centre_lat_deg=CENTRE[0],
                                   centre_lon_deg=CENTRE[1], size_m=140.0, kind="rgb")
    out = build_tile_set([tif], root / "set", TilingConfig(tile_size_m=TILE_M, tile_px=64), progress=False)
    tiles_cli.encode_tile_set(out, tiny_export(0), engine="onnxruntime", threads=1, progress=False)
    return out


@pytest.fixture(scope="module")
def localizer(tile_dir, tiny_export) -> Localizer:
    return Localizer(LocalizerConfig(tile_set=str(tile_dir), model=str(tiny_export(0)), engine="onnxruntime",
                                     engine_threads=1, log_throttle_s=0.0))


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8), (7, 7), 2)
    ok, buf = cv2.imencode(".jpg", rgb)
    assert ok
    return buf.tobytes()


def outside(localizer: Localizer, lat: float, lon: float) -> str:
    localizer.reset()
    est = localizer.localize(jpeg(0), Fix(lat, lon, 100.0, sigma_m=20.0), 100.0, now_s=100.0)
    assert est.reason == Reason.OUTSIDE_COVERAGE and not est.has_position
    assert not re.search(r"\w\(\)", est.message), est.message  # no internal function named
    return est.message


def test_swapped_latitude_and_longitude_get_a_hint(localizer):
    message = outside(localizer, CENTRE[1], CENTRE[0])  # (16.37, 48.2): another UTM zone, Africa
    assert "latitude and longitude look swapped" in message
    assert f"({CENTRE[0]:.7f}, {CENTRE[1]:.7f}) lies on the tiles" in message


def test_a_fix_far_off_says_how_far_and_no_swap_hint(localizer):
    message = outside(localizer, 48.3, CENTRE[1])  # 11 km north: the same zone
    assert "swapped" not in message
    km = float(re.search(r"is ([\d.]+) km outside the tile set", message).group(1))
    # The coverage ends half a tile north of the northernmost tile centre.
    tiles = localizer.tiles
    top = int(np.argmax(tiles.northing_m))
    edge_lat, _ = geo.utm_to_latlon(float(tiles.easting_m[top]), float(tiles.northing_m[top]) + TILE_M / 2, tiles.zone)
    assert km == pytest.approx(geo.distance_m(48.3, CENTRE[1], float(edge_lat), CENTRE[1]) / 1000.0, abs=0.05)
    far = outside(localizer, -33.86, 151.21)  # Sydney: swapping gives an invalid latitude, no hint
    assert "swapped" not in far and "outside the tile set" in far


def test_a_fix_just_off_the_edge_is_outside_not_in_a_gap(localizer):
    """A fix a few metres beyond the coverage, within the search radius of its edge, is told how far
    outside it lies; 'a gap' is for a fix inside the box with no tile near (coverage with holes)."""
    from geographiclib.geodesic import Geodesic

    from crossview_ros.tiles.coverage import CoverageBox

    box = CoverageBox.of(localizer.tiles)
    south = Geodesic.WGS84.Direct(box.lat_min_deg, CENTRE[1], 180.0, 9.0)["lat2"]
    message = box.outside_message(south, CENTRE[1], 50.0)
    assert re.search(r"is 9 m outside the tile set", message) and "gap" not in message, message
    assert "gap" in box.outside_message(box.lat_min_deg + 0.5 * (box.lat_max_deg - box.lat_min_deg), CENTRE[1], 50.0)


def test_cli_prints_the_swap_hint(tile_dir, tiny_export, tmp_path, capsys):
    pano = tmp_path / "pano.jpg"
    pano.write_bytes(jpeg(1))
    code = localize_cli.main(["--tiles", str(tile_dir), "--model", str(tiny_export(0)), str(pano), "--fix",
                              f"{CENTRE[1]},{CENTRE[0]}", "--engine", "onnxruntime", "--quiet"])
    assert code == 1
    out = capsys.readouterr().out
    assert "OUTSIDE_COVERAGE" in out and "look swapped" in out


# --------------------------------------------------------------------------- calibration says what it does


def test_calibration_logs_its_walks_frames_and_fitted_values(tile_dir, tiny_export, tmp_path, capsys, caplog):
    from crossview_ros.tiles import TileSet

    tiles = TileSet.open(tile_dir)
    model = Path(shutil.copytree(tiny_export(0), tmp_path / "model"))
    root = tmp_path / "vigor"
    rng = np.random.default_rng(0)
    lines = []
    (root / "Testville" / "panorama").mkdir(parents=True)
    for k in range(24):
        e = float(tiles.easting_m.mean() + rng.uniform(-30, 30))
        n = float(tiles.northing_m.mean() + rng.uniform(-30, 30))
        lat, lon = geo.utm_to_latlon(e, n, tiles.zone)
        name = f"Testville{k:06d},{lat:.9f},{lon:.9f},.jpg"
        (root / "Testville" / "panorama" / name).write_bytes(jpeg(100 + k))
        lines.append(f"{name} sat 0 0 sat 0 0 sat 0 0 sat 0 0")
    for city in ("Testville", "Otherton"):
        (root / "splits" / city).mkdir(parents=True)
        (root / "splits" / city / "satellite_list.txt").write_text("sat\n")
    (root / "splits" / "Testville" / "pano_label_balanced.txt").write_text("\n".join(lines) + "\n")
    (root / "dataset.json").write_text(json.dumps({"cross_area": {"train": ["Otherton"], "test": ["Testville"]}}))
    with caplog.at_level(logging.INFO, logger="crossview_ros.localize_eval"):
        code = localize_cli.main(["--model", str(model), "--tiles", str(tile_dir), "--vigor", str(root), "--split",
                                  "cross_test", "--noise-m", "10", "--engine", "onnxruntime", "--threads", "1",
                                  "--calibrate", "--json", "--set", "min_margin=-1"])
    assert code == 0
    params = json.loads(capsys.readouterr().out)["calibration"]["params"]
    said = [r.getMessage() for r in caplog.records if r.name == "crossview_ros.localize_eval"]
    assert any("calibration on 1 city, 24 frames" in s for s in said), said
    assert any(f"fix sigma scale {params['fix_sigma_scale']:.3f}" in s for s in said), said
    fitted = [s for s in said if "position sigma0" in s]
    assert len(fitted) == 1 and f"sigma0 {params['sigma0_m']:.2f} m on 24 estimates" in fitted[0]
    assert str(model / "covariance.json") in fitted[0]
