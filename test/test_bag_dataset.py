"""crossview-dataset from-bag on a simulated walk: a VIGOR-layout city that load_vigor_split reads.

The bag is read here independently (rosbags): the truth fix and the true pose of every panorama.
Positions, deltas and tiles are recomputed with pyproj from the written names; the north
alignment is checked against the simulator's true yaw (the tool only sees the truth track); a
"foreign" copy of the bag (sqlite3, raw sensor_msgs/Image, other topic names, an RTK fix with a
stated covariance and a few float fixes to drop) must give the same dataset, byte for byte.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pyproj
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from crossview_ros.sim.cli import main as sim_main
from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set
from crossview_training.bag_dataset import main
from crossview_training.datasets import load_vigor_split

TILE_M, TILE_PX = 40.0, 64
ARGS = ["--city", "Walk", "--min-spacing-m", "0", "--min-speed-mps", "0.5", "--block-m", "4",
        "--test-fraction", "0.25", "--no-progress"]
STORE = get_typestore(getattr(Stores, "ROS2_KILTED", None) or Stores.ROS2_JAZZY)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 200 m city, a 15 s walk at 2 Hz (64 px panoramas), a 40 m / 64 px tile set; the dataset of it."""
    root = tmp_path_factory.mktemp("bag_dataset")
    assert sim_main(["city", "--out", str(root / "city"), "--size-m", "200", "--gsd-m", "0.5", "--seed", "3",
                     "--no-progress"]) == 0
    assert sim_main(["drive", "--city", str(root / "city"), "--out", str(root / "bag"), "--duration-s", "15",
                     "--rate-hz", "2", "--pano-height-px", "64", "--seed", "1", "--no-progress"]) == 0
    build_tile_set([root / "city" / "orthophoto.tif"], root / "tiles", TilingConfig(tile_size_m=TILE_M, tile_px=TILE_PX),
                   progress=False)
    rc = main(["from-bag", str(root / "bag"), "--tiles", str(root / "tiles"), "--out", str(root / "data"),
               "--panorama-topic", "/panorama/compressed", "--truth-topic", "/ground_truth/fix", *ARGS])
    assert rc == 0
    return root


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


@pytest.fixture(scope="module")
def recorded(world):
    """{stamp: (jpeg bytes, truth lat/lon, true grid yaw rad)} read straight from the bag."""
    panos, fixes, yaws = {}, {}, {}
    with AnyReader([world / "bag"], default_typestore=STORE) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic not in ("/panorama/compressed", "/ground_truth/fix", "/ground_truth/pose"):
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/panorama/compressed":
                panos[_stamp(msg)] = bytes(msg.data)
            elif conn.topic == "/ground_truth/fix":
                fixes[_stamp(msg)] = (msg.latitude, msg.longitude)
            else:
                q = msg.pose.orientation
                yaws[_stamp(msg)] = 2.0 * math.atan2(q.z, q.w)
    return {t: (panos[t], fixes[t], yaws[t]) for t in sorted(panos)}


def _utm(lat: float, lon: float) -> tuple[float, float]:
    epsg = 32600 + int((lon + 180) // 6) + 1
    return pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)


def _latlon(name: str) -> tuple[float, float]:
    if name.endswith(".jpg"):
        parts = name.split(",")
        return float(parts[1]), float(parts[2])
    lat, lon = name[len("satellite_"):-len(".png")].split("_")
    return float(lat), float(lon)


def test_every_kept_panorama_sits_at_its_truth_fix_with_vigor_labels(world, recorded):
    data = world / "data"
    split = load_vigor_split(data, "cross_train")  # the city trains: every kept panorama
    summary = json.loads((data / "dataset.json").read_text())["summaries"]["Walk"]
    counts = summary["counts"]
    assert counts["panoramas read"] == len(recorded) == 31
    assert counts["panoramas kept"] == len(split) == summary["panoramas"]
    assert len(split) >= 20 and counts.get("skipped: no truth around the stamp") == 2  # first and last: no course
    tiles = TileSet.open(world / "tiles")
    gsd = TILE_M / TILE_PX
    truth_by_latlon = {}
    for t, (_, (lat, lon), _) in recorded.items():
        truth_by_latlon[round(lat, 7), round(lon, 7)] = t
    stamps = []
    for i, path in enumerate(split.pano_paths):
        lat, lon = _latlon(path.name)
        assert path.name.startswith(f"Walk{i:06d},")
        t = truth_by_latlon[round(lat, 7), round(lon, 7)]  # the fix at its own stamp, to 1e-7 deg
        assert abs(lat - recorded[t][1][0]) < 3e-9 and abs(lon - recorded[t][1][1]) < 3e-9
        stamps.append(t)
        pe, pn = _utm(lat, lon)
        for k in range(4):
            sat = split.sat_paths[split.labels[i, k]].name
            se, sn = _utm(*_latlon(sat))
            da, db = split.deltas_px[i, k]
            assert da == pytest.approx((sn - pn) / gsd, abs=2e-3) and db == pytest.approx((se - pe) / gsd, abs=2e-3)
            assert abs(se - pe) <= TILE_M / (4 if k == 0 else 2) + 1e-3 and abs(sn - pn) <= TILE_M / (4 if k == 0 else 2) + 1e-3
    assert stamps == sorted(stamps)
    same = load_vigor_split(data, "same_train"), load_vigor_split(data, "same_test")
    assert len(same[0]) + len(same[1]) == len(split) and len(same[1]) >= 2
    assert {p.name for s in same for p in s.pano_paths} == {p.name for p in split.pano_paths}
    manifest = json.loads((data / "dataset.json").read_text())
    assert manifest["vigor_config"] == {"tile_size_m": TILE_M, "sat_px": TILE_PX}
    # The satellite images are the tile set's, pixel for pixel, under VIGOR's names.
    for sat in split.sat_paths:
        tile = tiles.tiles_covering(*_latlon(sat.name))[0].tile_id
        assert np.array_equal(cv2.imread(str(sat)), cv2.imread(str(tiles.image_path(tile))))


def test_panoramas_are_turned_to_put_grid_north_in_the_middle(world, recorded):
    """Best circular shift between the written panorama and the recorded one, against the true yaw.

    The recorded panorama's column 0 faces the walker's forward direction; VIGOR's middle column
    faces north, i.e. its column 0 faces south: the content moves by (180 - bearing) / 360 x W.
    """
    split = load_vigor_split(world / "data", "cross_train")
    truth_by_latlon = {(round(f[0], 7), round(f[1], 7)): t for t, (_, f, _) in recorded.items()}
    for path in split.pano_paths:
        t = truth_by_latlon[tuple(round(v, 7) for v in _latlon(path.name))]
        jpeg, _, yaw = recorded[t]
        original = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
        written = cv2.imread(str(path)).astype(np.float32)
        w = original.shape[1]
        errors = [np.abs(np.roll(original, s, axis=1) - written).mean() for s in range(w)]
        best = int(np.argmin(errors))
        bearing = (90.0 - math.degrees(yaw)) % 360.0  # grid yaw (0 = east, CCW) -> bearing
        expected = -round((180.0 - bearing) / 360.0 * w) % w
        assert min(abs(best - expected), w - abs(best - expected)) <= 2, (path.name, best, expected)


def _foreign_copy(src: Path, dst: Path) -> None:
    """sqlite3; raw rgb8 Image on /cam/pano; the truth as an RTK NavSatFix on /rtk/fix with a stated
    2 cm sigma, plus a float fix (30 cm) between every two, which the tool must drop."""
    with AnyReader([src], default_typestore=STORE) as reader, Writer(
            dst, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.SQLITE3) as writer:
        image_t, fix_t = "sensor_msgs/msg/Image", "sensor_msgs/msg/NavSatFix"
        pano = writer.add_connection("/cam/pano", image_t, typestore=STORE)
        rtk = writer.add_connection("/rtk/fix", fix_t, typestore=STORE)
        Image, Fix = STORE.types[image_t], STORE.types[fix_t]
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/panorama/compressed":
                rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR),
                                   cv2.COLOR_BGR2RGB)
                h, w = rgb.shape[:2]
                out = Image(header=msg.header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                            data=np.ascontiguousarray(rgb).reshape(-1))
                writer.write(pano, log_ns, STORE.serialize_cdr(out, image_t))
            elif conn.topic == "/ground_truth/fix":
                cov = np.array([4e-4, 0, 0, 0, 4e-4, 0, 0, 0, 1e-3])
                good = Fix(header=msg.header, status=msg.status, latitude=msg.latitude, longitude=msg.longitude,
                           altitude=msg.altitude, position_covariance=cov, position_covariance_type=2)
                writer.write(rtk, log_ns, STORE.serialize_cdr(good, fix_t))
                t = _stamp(msg) + 250_000_000
                stamp = type(msg.header.stamp)(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000)
                header = type(msg.header)(stamp=stamp, frame_id=msg.header.frame_id)
                bad = Fix(header=header, status=msg.status, latitude=msg.latitude + 1e-4, longitude=msg.longitude,
                          altitude=msg.altitude, position_covariance=cov * 225, position_covariance_type=2)
                writer.write(rtk, log_ns + 1, STORE.serialize_cdr(bad, fix_t))


def test_a_foreign_sqlite3_bag_with_raw_images_and_an_rtk_fix_gives_the_same_dataset(world, tmp_path):
    foreign = tmp_path / "foreign"
    _foreign_copy(world / "bag", foreign)
    assert list(foreign.glob("*.db3"))
    out = tmp_path / "data"
    assert main(["from-bag", str(foreign), "--tiles", str(world / "tiles"), "--out", str(out),
                 "--panorama-topic", "/cam/pano", "--truth-topic", "/rtk/fix", *ARGS]) == 0
    counts = json.loads((out / "dataset.json").read_text())["summaries"]["Walk"]["counts"]
    assert counts["truth fixes with sigma > 0.1 m"] == 31  # every float fix dropped, no RTK one
    for rel in ("splits/Walk/pano_label_balanced.txt", "splits/Walk/same_area_balanced_test.txt",
                "splits/Walk/satellite_list.txt"):
        assert (out / rel).read_bytes() == (world / "data" / rel).read_bytes(), rel
    for path in (world / "data" / "Walk" / "panorama").iterdir():  # same pixels in, same JPEG out
        assert (out / "Walk" / "panorama" / path.name).read_bytes() == path.read_bytes()


def test_thinning_reruns_and_refusals(world, tmp_path, capsys):
    base = ["from-bag", str(world / "bag"), "--tiles", str(world / "tiles"), "--panorama-topic",
            "/panorama/compressed", "--truth-topic", "/ground_truth/fix", "--city", "Walk", "--no-progress"]
    out = tmp_path / "thin"
    assert main([*base, "--out", str(out), "--min-spacing-m", "3", "--min-speed-mps", "0.5"]) == 0
    split = load_vigor_split(out, "cross_train")
    en = np.array([_utm(*_latlon(p.name)) for p in split.pano_paths])
    assert 3 <= len(split) < 20 and np.all(np.hypot(*np.diff(en, axis=0).T) >= 3.0)
    labels = (out / "splits" / "Walk" / "pano_label_balanced.txt").read_bytes()
    capsys.readouterr()
    # The same command again: nothing changes; other settings: refused without --overwrite.
    assert main([*base, "--out", str(out), "--min-spacing-m", "3", "--min-speed-mps", "0.5"]) == 0
    assert (out / "splits" / "Walk" / "pano_label_balanced.txt").read_bytes() == labels
    capsys.readouterr()
    assert main([*base, "--out", str(out), "--min-spacing-m", "6", "--min-speed-mps", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other bags or settings; pass --overwrite" in err[0]
    assert main([*base, "--out", str(out), "--min-spacing-m", "6", "--min-speed-mps", "0.5", "--overwrite"]) == 0
    assert len(load_vigor_split(out, "cross_train")) < len(split)
    capsys.readouterr()
    wrong = [a if a != "/ground_truth/fix" else "/gps/fix" for a in base]
    assert main([*wrong, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no truth topic '/gps/fix'" in err[0] and "/ground_truth/fix (sensor_msgs/msg/NavSatFix)" in err[0]


def test_a_training_step_on_the_bag_dataset(world, tmp_path):
    pytest.importorskip("torch")
    from crossview_training import train as tr

    assert tr.main(["--data", str(world / "data"), "--out", str(tmp_path / "run"), "--no-progress", "--set",
                    "area=same", "model=small", "model_overrides={dim: 32}", "ground_size=[32, 64]",
                    "aerial_size=[64, 64]", "batch_size=4", "epochs=1", "threads=1", "val_panoramas=0",
                    "warmup_steps=1", "mining=in_batch"]) == 0
    ckpt = tr.read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["tile_size_m"] == TILE_M and ckpt["global_step"] >= 1
