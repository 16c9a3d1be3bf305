"""crossview-sim end to end on tiny cities: files written, read back, reruns skip finished work."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import rasterio

from crossview_ros.bag.writer import read_drive_bag
from crossview_ros.sim.cli import main


def test_city_then_drive_bag(tmp_path, capsys):
    city_dir = tmp_path / "city"
    assert main(["city", "--out", str(city_dir), "--size-m", "200", "--gsd-m", "0.5", "--seed", "3",
                 "--no-progress"]) == 0
    with rasterio.open(city_dir / "orthophoto.tif") as src:
        assert src.width == src.height == 400
        assert src.crs.to_epsg() == 32618
    doc = json.loads((city_dir / "city.json").read_text())
    assert doc["city"]["seed"] == 3
    capsys.readouterr()
    assert main(["city", "--out", str(city_dir), "--size-m", "200", "--gsd-m", "0.5", "--seed", "3"]) == 0
    assert "nothing to do" in capsys.readouterr().out

    bag = tmp_path / "drive_bag"
    assert main(["drive", "--city", str(city_dir), "--out", str(bag), "--duration-s", "4", "--rate-hz", "2",
                 "--pano-height-px", "32", "--seed", "1", "--no-progress"]) == 0
    summary = read_drive_bag(bag)
    panos = summary.topics["/panorama/compressed"]
    assert panos.count == summary.topics["/ground_truth/pose"].count == 4 * 2 + 1  # both ends included
    assert list(panos.stamp_ns) == sorted(panos.stamp_ns)
    assert summary.datum["seed"] == 3


def test_vigor_with_contact_sheet(tmp_path):
    sheet = tmp_path / "sheet.png"
    assert main(["vigor", "--root", str(tmp_path / "data"), "--size-m", "200", "--gsd-m", "0.5",
                 "--panoramas", "3", "--pano-height-px", "32", "--sat-px", "64", "--tile-size-m", "40",
                 "--contact-sheet", str(sheet), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert manifest["cross_area"] == {"train": ["NewYork"], "test": ["Chicago"]}
    for city in ("NewYork", "Chicago"):
        lines = (tmp_path / "data" / "splits" / city / "pano_label_balanced.txt").read_text().split("\n")
        assert len([line for line in lines if line]) == 3
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[1] == 256 + 8 + 512


def test_user_errors_exit_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "crossview_ros.sim.cli", "drive", "--city", str(tmp_path),
                             "--out", str(tmp_path / "bag")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "city.json not found" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_drive_leaves_a_partial_folder_that_the_rerun_removes(tmp_path):
    """kill -9 while the bag is being written, then the same command again: one finished bag, no leftovers."""
    import os
    import signal
    import time

    city_dir = tmp_path / "city"
    assert main(["city", "--out", str(city_dir), "--size-m", "200", "--gsd-m", "0.5", "--seed", "3",
                 "--no-progress"]) == 0
    bag = tmp_path / "drive_bag"
    argv = [sys.executable, "-m", "crossview_ros.sim.cli", "drive", "--city", str(city_dir), "--out", str(bag),
            "--duration-s", "600", "--rate-hz", "2", "--pano-height-px", "64", "--seed", "1", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120.0
    try:
        while not list(tmp_path.glob(".drive_bag.*.partial/drive_bag/*.mcap")):
            assert proc.poll() is None and time.monotonic() < deadline, "the drive never started its bag"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".drive_bag.*.partial")) and not bag.exists()
    short = [a if a != "600" else "3" for a in argv]
    assert subprocess.run(short, capture_output=True).returncode == 0
    assert not list(tmp_path.glob(".drive_bag*")), list(tmp_path.iterdir())
    assert read_drive_bag(bag).topics["/panorama/compressed"].count == 3 * 2 + 1
