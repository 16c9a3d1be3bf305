"""Recordings of cameras that are not 360°: `crossview-sim drive --cameras forward90` writes each view with its
CameraInfo beside the panorama (the CameraInfo is the rig's model, the view is ViewRenderer's on the panorama),
the converter adds the same views to an existing drive, and `crossview-localize --bag --cameras` reads the
captures through a rig file and runs them through the real Localizer: the same estimates as the Localizer
given the bag's images by hand, the same again from raw images on a robot's topic names. A zero-focal
CameraInfo is refused in one line naming the camera; rig files round-trip and bad ones say what is wrong;
captures are synchronised by stamp."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from crossview_ros import localize_cli
from crossview_ros.bag.captures import sync_captures
from crossview_ros.bag.drive import read_bag
from crossview_ros.bag.rig import RIG_SIDECAR, RigCamera, RigSpec, load_rig_file, save_rig_file
from crossview_ros.bag.topics import MSG_IMAGE, TopicMap
from crossview_ros.bag.writer import MSG_CAMERA_INFO, TOPIC_GNSS, TOPIC_PANORAMA, typestore, write_bag
from crossview_ros.camera import CameraModel, CameraMount
from crossview_ros.replay_errors import BagError
from crossview_ros.sim.cameras import ViewRenderer, camera_height_m, rig_cameras
from crossview_ros.sim.cli import main as sim_main

torch = pytest.importorskip("torch")

TINY_BEV = dict(pano_size=(32, 64), tile_px=32, tile_size_m=16.0, kernel_cells=4, channels=8, feature_dim=4)
DRIVE = ["--duration-s", "15", "--rate-hz", "2", "--pano-height-px", "64", "--seed", "1", "--no-progress"]
# The bev model has random weights: the gates are opened so that frames are published; odometry is off so that
# the hand-run below needs only the images and the fixes.
SETTINGS = ("--threads", "1", "--quiet", "--json", "--set", "max_mahalanobis=1000000.0", "--set",
            "min_imagery_support=0.0", "--set", "min_mode_mass=0.0", "--set", "odometry=false")
IMAGE, INFO = "/front/image/compressed", "/front/camera_info"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 200 m city, a walk with forward90 views, the same walk without them, a tiny bev model and its tiles."""
    from crossview_training import bev as B
    from crossview_training.export import export_onnx

    from crossview_ros import tiles_cli
    from crossview_ros.tiles import TilingConfig, build_tile_set

    root = tmp_path_factory.mktemp("cameras")
    assert sim_main(["city", "--out", str(root / "city"), "--size-m", "200", "--gsd-m", "0.5", "--seed", "3",
                     "--no-progress"]) == 0
    assert sim_main(["drive", "--city", str(root / "city"), "--out", str(root / "bag"), *DRIVE,
                     "--cameras", "forward90"]) == 0
    assert sim_main(["drive", "--city", str(root / "city"), "--out", str(root / "plain"), *DRIVE]) == 0
    torch.manual_seed(3)
    export_onnx(B.BevModel(B.BevConfig(**TINY_BEV)).eval(), root / "model")
    tiles = build_tile_set([root / "city" / "orthophoto.tif"], root / "tiles",
                           TilingConfig(tile_size_m=16.0, tile_px=32), progress=False)
    tiles_cli.encode_tile_set(tiles, root / "model", engine="onnxruntime", threads=1, progress=False)
    return {"root": root, "bag": root / "bag", "plain": root / "plain", "model": root / "model", "tiles": tiles}


def messages(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(log time, CDR)] in bag order."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    with AnyReader([bag], default_typestore=typestore()) as reader:
        for conn, log_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((log_ns, bytes(raw)))
    return out


def decode(raw: bytes, msgtype: str = "sensor_msgs/msg/CompressedImage") -> np.ndarray:
    msg = typestore().deserialize_cdr(raw, msgtype)
    bgr = cv2.imdecode(np.frombuffer(bytes(memoryview(msg.data).cast("B")), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def header_ns(raw: bytes, msgtype: str) -> tuple[int, str]:
    h = typestore().deserialize_cdr(raw, msgtype).header
    return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec, h.frame_id


def localize(capsys, world: dict, bag: Path, rig: Path) -> dict:
    code = localize_cli.main(["--model", str(world["model"]), "--tiles", str(world["tiles"]), "--bag", str(bag),
                              "--cameras", str(rig), *SETTINGS])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_the_drive_records_each_view_with_the_rigs_camera_info(world):
    msgs = messages(world["bag"])
    camera = rig_cameras("forward90", camera_height_m("walk"))[0]
    panoramas = msgs[TOPIC_PANORAMA]
    assert len(msgs[IMAGE]) == len(msgs[INFO]) == len(panoramas) == 31
    renderer = ViewRenderer([camera], (64, 128))
    wrong = ViewRenderer([dataclasses.replace(camera, mount=dataclasses.replace(camera.mount, yaw_deg=20.0))],
                         (64, 128))
    fields = camera.model.camera_info_fields()
    for (_, pano), (_, image), (_, info_raw) in zip(panoramas, msgs[IMAGE], msgs[INFO]):
        stamp, _ = header_ns(pano, "sensor_msgs/msg/CompressedImage")
        assert header_ns(image, "sensor_msgs/msg/CompressedImage") == (stamp, "front")
        assert header_ns(info_raw, MSG_CAMERA_INFO) == (stamp, "front")
        info = typestore().deserialize_cdr(info_raw, MSG_CAMERA_INFO)
        assert (info.width, info.height, info.distortion_model) == (640, 480, "plumb_bob")
        for key in ("k", "d", "r", "p"):
            np.testing.assert_array_equal(np.asarray(getattr(info, key)), fields[key])
        assert CameraModel.from_camera_info(info) == camera.model
        view, panorama = decode(image).astype(float), decode(pano)
        # the view was rendered from the panorama before its JPEG: equal to JPEG tolerance (two encodings)
        assert np.abs(view - renderer(panorama)[0]).mean() < 2.0
        assert np.abs(view - wrong(panorama)[0]).mean() > 10.0  # 20 deg off would be seen
    # the mounts: the rig file in the bag folder and the datum's bag block
    rig = load_rig_file(world["bag"] / RIG_SIDECAR)
    assert rig == RigSpec((RigCamera("front", CameraMount(height_m=1.7, pitch_deg=10.0)),))
    datum = json.loads(typestore().deserialize_cdr(msgs["/crossview/datum"][0][1], "std_msgs/msg/String").data)
    assert datum["bag"]["cameras"] == rig.to_dict()["cameras"]
    assert datum["bag"]["topics"][IMAGE] == "sensor_msgs/msg/CompressedImage"


def test_the_converter_adds_the_same_views_to_an_existing_drive(world):
    out = world["root"] / "converted"
    done = subprocess.run([sys.executable, "-m", "crossview_ros.sim.cameras", str(world["plain"]), str(out),
                           "--rig", "forward90"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"--cameras {out / RIG_SIDECAR}" in done.stdout
    converted, plain, direct = messages(out), messages(world["plain"]), messages(world["bag"])
    for topic, items in plain.items():  # the drive's own messages are untouched, but the datum gains the rig
        if topic != "/crossview/datum":
            assert converted[topic] == items, topic
    assert converted[INFO] == direct[INFO]  # the same CameraInfo at the same stamps
    for (t_conv, conv), (t_direct, dir_) in zip(converted[IMAGE], direct[IMAGE]):
        assert t_conv == t_direct
        # rendered from the bag's JPEG panorama instead of the panorama before it: JPEG tolerance
        assert np.abs(decode(conv).astype(float) - decode(dir_)).mean() < 2.0
    assert load_rig_file(out / RIG_SIDECAR) == load_rig_file(world["bag"] / RIG_SIDECAR)
    again = subprocess.run([sys.executable, "-m", "crossview_ros.sim.cameras", str(out), str(world["root"] / "x"),
                            "--rig", "rig4"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already has camera topics" in again.stderr


def hand_run(world: dict, bag: Path, image_topic: str, image_type: str, info_topic: str) -> list:
    """The Localizer given the bag's images by hand: each image with the newest GNSS fix at its stamp, the
    camera from its first CameraInfo and the simulator's mount."""
    from crossview_ros.camera import Camera, CameraFrame
    from crossview_ros.estimate import Fix
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig

    msgs = messages(bag)
    ts = typestore()
    fixes = []
    for _, raw in msgs[TOPIC_GNSS]:
        f = ts.deserialize_cdr(raw, "sensor_msgs/msg/NavSatFix")
        cov = None if f.position_covariance_type == 0 else np.asarray(f.position_covariance).reshape(3, 3)[:2, :2]
        stamp = f.header.stamp.sec + f.header.stamp.nanosec / 1e9
        fixes.append(Fix(f.latitude, f.longitude, stamp, status=int(f.status.status), covariance_enu_m2=cov))
    config = LocalizerConfig(tile_set=str(world["tiles"]), model=str(world["model"]), engine_threads=1,
                             max_mahalanobis=1e6, min_imagery_support=0.0, min_mode_mass=0.0, odometry=False)
    loc = Localizer(config)
    info = ts.deserialize_cdr(msgs[info_topic][0][1], MSG_CAMERA_INFO)
    rig = loc.camera_rig([Camera("front", CameraModel.from_camera_info(info), CameraMount(1.7, pitch_deg=10.0))])
    out = []
    for _, raw in msgs[image_topic]:
        msg = ts.deserialize_cdr(raw, image_type)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec / 1e9
        fix = [f for f in fixes if f.stamp_s <= stamp]
        if not fix:
            continue
        if image_type == MSG_IMAGE:
            frame = CameraFrame(rig, (np.asarray(msg.data).reshape(msg.height, msg.width, 3),), ("bgr8",))
        else:
            frame = CameraFrame(rig, (bytes(memoryview(msg.data).cast("B")),), (None,))
        out.append(loc.localize(frame, fix[-1], stamp, now_s=stamp))
    loc.close()
    return out


def same_estimates(doc: dict, estimates: list) -> None:
    assert len(doc["estimates"]) == len(estimates) > 20
    for got, want in zip(doc["estimates"], estimates):
        assert (got["accepted"], got["reason"]) == (want.accepted, str(want.reason))
        if want.lat_deg is not None:
            assert got["lat_deg"] == pytest.approx(want.lat_deg, abs=1e-9)
            assert got["lon_deg"] == pytest.approx(want.lon_deg, abs=1e-9)


def test_localize_bag_with_cameras_runs_the_localizer_on_each_capture(world, capsys):
    doc = localize(capsys, world, world["bag"], world["bag"] / RIG_SIDECAR)
    assert sum(e["accepted"] for e in doc["estimates"]) > 0
    assert doc["summary"]["frames"] == len(doc["estimates"])
    same_estimates(doc, hand_run(world, world["bag"], IMAGE, "sensor_msgs/msg/CompressedImage", INFO))


def rewrite(src: Path, dst: Path, change) -> None:
    """src's messages into dst, each through change(topic, raw) -> (topic, msgtype, raw) or None to drop it."""
    out, topics = [], {}
    with AnyReader([src], default_typestore=typestore()) as reader:
        for conn, log_ns, raw in reader.messages():
            new = change(conn.topic, conn.msgtype, bytes(raw))
            if new is not None:
                topics[new[0]] = new[1]
                out.append((new[0], log_ns, new[2]))
    write_bag(dst, out, topics=topics)


def test_raw_images_on_a_robots_topics_give_the_same_estimates(world, capsys, tmp_path):
    ts = typestore()

    def robot(topic: str, msgtype: str, raw: bytes):
        if topic == IMAGE:  # a driver's raw bgr8 of the same pixels, under its own name
            msg = ts.deserialize_cdr(raw, msgtype)
            bgr = cv2.imdecode(np.frombuffer(bytes(memoryview(msg.data).cast("B")), np.uint8), cv2.IMREAD_COLOR)
            h, w = bgr.shape[:2]
            image = ts.types[MSG_IMAGE](header=msg.header, height=h, width=w, encoding="bgr8", is_bigendian=0,
                                        step=w * 3, data=bgr.reshape(-1))
            return "/cam/image_raw", MSG_IMAGE, ts.serialize_cdr(image, MSG_IMAGE)
        if topic == INFO:
            return "/cam/camera_info", msgtype, raw
        return None if topic == TOPIC_PANORAMA else (topic, msgtype, raw)  # a robot has no panorama

    rewrite(world["bag"], tmp_path / "robot", robot)
    rig = tmp_path / "rig.yaml"
    rig.write_text(yaml.safe_dump({"cameras": {"front": {"height_m": 1.7, "pitch_deg": 10.0,
                                                         "image_topic": "/cam/image_raw",
                                                         "info_topic": "cam/camera_info"}}}))
    doc = localize(capsys, world, tmp_path / "robot", rig)
    compressed = localize(capsys, world, world["bag"], world["bag"] / RIG_SIDECAR)
    assert [(e["lat_deg"], e["lon_deg"], e["reason"]) for e in doc["estimates"]] == \
        [(e["lat_deg"], e["lon_deg"], e["reason"]) for e in compressed["estimates"]]
    same_estimates(doc, hand_run(world, tmp_path / "robot", "/cam/image_raw", MSG_IMAGE, "/cam/camera_info"))


def test_a_zero_focal_camera_info_is_refused_in_one_line_naming_the_camera(world, capsys, tmp_path):
    ts = typestore()

    def uncalibrated(topic: str, msgtype: str, raw: bytes):
        if topic == INFO:
            msg = dataclasses.replace(ts.deserialize_cdr(raw, msgtype), k=np.zeros(9))
            return topic, msgtype, ts.serialize_cdr(msg, msgtype)
        return topic, msgtype, raw

    rewrite(world["bag"], tmp_path / "uncalibrated", uncalibrated)
    code = localize_cli.main(["--model", str(world["model"]), "--tiles", str(world["tiles"]), "--bag",
                              str(tmp_path / "uncalibrated"), "--cameras", str(world["bag"] / RIG_SIDECAR), *SETTINGS])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "camera front: CameraInfo on /front/camera_info" in err and "focal length must be > 0" in err
    with pytest.raises(BagError, match="camera front"):
        read_bag(tmp_path / "uncalibrated", TopicMap(cameras=load_rig_file(world["bag"] / RIG_SIDECAR)))
    # without --cameras the bag is its panoramas, whatever its CameraInfo
    assert len(read_bag(tmp_path / "uncalibrated").panorama_stamp_ns) == 31


def test_a_bag_without_the_cameras_topics_names_them(world, capsys):
    code = localize_cli.main(["--model", str(world["model"]), "--tiles", str(world["tiles"]), "--bag",
                              str(world["plain"]), "--cameras", str(world["bag"] / RIG_SIDECAR), *SETTINGS])
    err = capsys.readouterr().err
    assert code == 2 and "has no image topic of camera front (/front/image/compressed or /front/image" in err
    assert "/panorama/compressed (CompressedImage)" in err


def test_the_rig_file_round_trips_and_bad_ones_say_what_is_wrong(tmp_path):
    rig = RigSpec((RigCamera("front", CameraMount(1.45, 1.2, 0.0, 0.0, 8.0, 0.5), "/camera/color/image_raw",
                             "/camera/color/camera_info"),
                   RigCamera("left", CameraMount(1.9, 0.0, 0.3, 90.0, 15.0, 0.0))))
    path = save_rig_file(tmp_path / "rig.yaml", rig)
    assert load_rig_file(path) == rig
    assert list(load_rig_file(path).names) == ["front", "left"]  # the file's order is the rig's
    assert yaml.safe_load(path.read_text())["cameras"]["left"] == {
        "height_m": 1.9, "x_m": 0.0, "y_m": 0.3, "yaw_deg": 90.0, "pitch_deg": 15.0, "roll_deg": 0.0}
    assert rig.cameras[1].image_topics() == ("/left/image/compressed", "/left/image")
    assert rig.cameras[1].camera_info_topic == "/left/camera_info"
    bad = {"cameras: []": "holds one key, cameras", "cameras: {}": "cameras is empty",
           "cameras: {front: {height_m: 2, fov: 90}}": "camera front: unknown key(s) ['fov']",
           "cameras: {front: {height_m: -1}}": "height_m must be > 0",
           "cameras: {front: {pitch_deg: 120}}": "pitch_deg must be within [-90, 90]",
           "cameras: {2cam: {height_m: 2}}": "must start with a letter",
           "cameras: {front: 2}": "camera front must map its mount keys",
           "cameras: {front: {height_m: 2}": "is not valid YAML"}
    for text, message in bad.items():
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(BagError) as err:
            load_rig_file(tmp_path / "bad.yaml")
        assert message in str(err.value) and str(tmp_path / "bad.yaml") in str(err.value)


def test_captures_pair_the_nearest_images_within_the_sync_window():
    ms = 1_000_000
    front = [0, 500 * ms, 1000 * ms, 1500 * ms]
    left = [20 * ms, 430 * ms, 1100 * ms, 1510 * ms, 1520 * ms]  # 70 ms and 100 ms off: no capture
    stamps, rows = sync_captures([front, left])
    assert stamps.tolist() == [20 * ms, 1510 * ms] and rows.tolist() == [[0, 0], [3, 3]]
    # out of order in the bag: rows point into bag order; an image makes one capture at most
    stamps, rows = sync_captures([[1000 * ms, 0], [10 * ms, 990 * ms]])
    assert stamps.tolist() == [10 * ms, 1000 * ms] and rows.tolist() == [[1, 0], [0, 1]]
    stamps, rows = sync_captures([[0, 10 * ms], [5 * ms]])
    assert stamps.tolist() == [5 * ms] and rows.tolist() == [[0, 0]]


def test_replay_with_cameras_gives_the_node_the_rig_and_equals_localize_bag(world, capsys, tmp_path):
    """The real node over DDS, given the rig as parameters and the captures on its camera topics: every frame
    processed, each estimate the one crossview-localize --bag --cameras gives in-process."""
    import csv

    pytest.importorskip("rclpy")
    out = tmp_path / "replay"
    node = ("engine_threads:=1", "max_mahalanobis:=1000000.0", "min_imagery_support:=0.0", "min_mode_mass:=0.0",
            "odometry:=false")
    done = subprocess.run([sys.executable, "-m", "crossview_ros.replay", str(world["bag"]), "--tiles",
                           str(world["tiles"]), "--model", str(world["model"]), "--out", str(out), "--lockstep",
                           "--no-progress", "--cameras", str(world["bag"] / RIG_SIDECAR),
                           *(f"--node-arg={a}" for p in node for a in ("-p", p))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    command = " ".join(summary["replay"]["node_command"])
    assert "cameras:=['front']" in command and "front.height_m:=1.700000000" in command
    assert "front.pitch_deg:=10.000000000" in command
    assert summary["replay"]["cameras"] == {"front": IMAGE}
    assert "camera rig built: front" in (out / "node.log").read_text()
    with open(out / "frames.csv") as fh:
        rows = list(csv.DictReader(fh))
    doc = localize(capsys, world, world["bag"], world["bag"] / RIG_SIDECAR)
    assert len(rows) == len(doc["estimates"]) == 31
    assert sum(r["accepted"] == "True" for r in rows) > 0
    for row, est in zip(rows, doc["estimates"]):
        assert (row["accepted"] == "True") == est["accepted"]
        if est["accepted"]:
            assert float(row["lat_deg"]) == pytest.approx(est["lat_deg"], abs=1e-8)
            assert float(row["lon_deg"]) == pytest.approx(est["lon_deg"], abs=1e-8)
