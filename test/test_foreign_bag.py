"""A robot's recording instead of the simulator's: the small drive (conftest.small_drive) converted into a
"foreign" bag (sqlite3, /camera/image/compressed, /gps/fix, /wheel/odom, truth as an RTK NavSatFix on
/rtk/fix, no /crossview/datum) with the documented converter, then replayed through the real node,
evaluated and calibrated through the documented topic mapping: every figure against the truth equals
the same drive read natively. Without truth: the truth-free report, its numbers recomputed here from the
bag and the node's outputs. MCAP with raw sensor_msgs/Image panoramas and pose-type truth in a local ENU
or UTM frame at the reader level; the mapping's errors; the truth-free maths on hand-made numbers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from crossview_ros import geo, truth_free
from crossview_ros.bag.drive import read_bag
from crossview_ros.bag.topics import TopicMap, TruthFrame, load_topic_file
from crossview_ros.bag.writer import typestore
from crossview_ros.covariance import CHI2_2DOF_95
from crossview_ros.replay_errors import BagError

pytest.importorskip("rclpy")
pytest.importorskip("filterpy")
pytest.importorskip("matplotlib")

# As test_replay: the tiny model has random weights, so the GNSS gate is opened and heading switched on.
NODE_ARGS = ("-p", "engine_threads:=1", "-p", "max_mahalanobis:=1000000.0", "-p", "heading:=true")
LOCALIZE_ARGS = ("--threads", "1", "--quiet", "--set", "max_mahalanobis=1000000.0", "--json")
FOREIGN_TOPICS = {"/camera/image/compressed": "sensor_msgs/msg/CompressedImage",
                  "/gps/fix": "sensor_msgs/msg/NavSatFix",
                  "/wheel/odom": "nav_msgs/msg/Odometry", "/rtk/fix": "sensor_msgs/msg/NavSatFix"}


def convert(src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    """The documented converter, as a newcomer runs it."""
    return subprocess.run([sys.executable, "-m", "crossview_ros.bag.foreign", str(src), str(dst), *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def foreign(small_drive, tmp_path_factory):
    """The foreign sqlite3 bag and the YAML mapping the converter writes for it."""
    root = tmp_path_factory.mktemp("foreign")
    done = convert(small_drive["bag"], root / "robot_bag", "--write-topics", str(root / "topics.yaml"))
    assert done.returncode == 0, done.stderr
    assert "--panorama-topic /camera/image/compressed --fix-topic /gps/fix" in done.stdout
    return {"root": root, "bag": root / "robot_bag", "topics": root / "topics.yaml"}


def mapping(path: Path) -> TopicMap:
    return TopicMap().updated(load_topic_file(path), str(path))


def replay(world: dict, bag: Path, out: Path, *flags: str) -> dict:
    """crossview-replay in lockstep (every frame processed, whatever the machine's load) as a process."""
    argv = [sys.executable, "-m", "crossview_ros.replay", str(bag), "--tiles", str(world["tiles"]), "--model",
            str(world["model"]), "--out", str(out), "--lockstep", "--no-progress", *flags,
            *(f"--node-arg={a}" for a in NODE_ARGS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def frames_csv(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "frames.csv") as fh:
        return list(csv.DictReader(fh))


def localize(capsys, world: dict, bag: Path, *flags: str, model: Path | None = None) -> dict:
    from crossview_ros import localize_cli

    code = localize_cli.main(["--model", str(model or world["model"]), "--tiles", str(world["tiles"]), "--bag",
                              str(bag), *LOCALIZE_ARGS, *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def native_replay(small_drive, tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / "out"
    return out, replay(small_drive, small_drive["bag"], out)


@pytest.fixture(scope="module")
def foreign_replay(small_drive, foreign):
    out = foreign["root"] / "out_truth"
    return out, replay(small_drive, foreign["bag"], out, "--topics", str(foreign["topics"]))


@pytest.fixture(scope="module")
def truth_free_replay(small_drive, foreign):
    out = foreign["root"] / "out_no_truth"
    return out, replay(small_drive, foreign["bag"], out, "--topics", str(foreign["topics"]), "--truth-topic", "none")


# --------------------------------------------------------------------------- the converted bag


def test_the_converted_bag_is_what_a_robot_records(small_drive, foreign):
    from rosbags.rosbag2 import Reader

    files = sorted(p.name for p in foreign["bag"].iterdir())
    assert files == ["metadata.yaml", "robot_bag.db3"]
    meta = yaml.safe_load((foreign["bag"] / "metadata.yaml").read_text())
    assert meta["rosbag2_bagfile_information"]["storage_identifier"] == "sqlite3"
    with Reader(foreign["bag"]) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == FOREIGN_TOPICS
        counts = {c.topic: c.msgcount for c in reader.connections}
    with Reader(small_drive["bag"]) as reader:
        native = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {"/camera/image/compressed": native["/panorama/compressed"], "/gps/fix": native["/gnss/fix"],
                      "/wheel/odom": native["/odom"], "/rtk/fix": native["/ground_truth/fix"]}
    with AnyReader([foreign["bag"]], default_typestore=typestore()) as reader:
        rtk = [reader.deserialize(raw, c.msgtype) for c, _, raw in
               reader.messages(connections=[c for c in reader.connections if c.topic == "/rtk/fix"])]
    assert all(m.status.status == 2 and m.position_covariance_type == 2 for m in rtk)  # GBAS_FIX, diagonal known
    assert rtk[0].position_covariance[0] == pytest.approx(0.02 ** 2)
    assert yaml.safe_load(foreign["topics"].read_text()) == {
        "panorama": "/camera/image/compressed", "fix": "/gps/fix", "odom": "/wheel/odom", "truth": "/rtk/fix",
        "truth_heading": None, "datum": None}


def test_the_mapping_reads_the_foreign_bag_as_the_native_one(small_drive, foreign):
    """The same messages byte for byte, the same truth; the datum from the first valid fix, in its zone."""
    native = read_bag(small_drive["bag"])
    for path in (foreign["bag"], foreign["bag"] / "robot_bag.db3"):  # the folder or its .db3 file
        bag = read_bag(path, mapping(foreign["topics"]))
        assert bag.panorama_raw == native.panorama_raw and bag.fix_raw == native.fix_raw
        assert bag.odom_raw == native.odom_raw
        assert np.array_equal(bag.panorama_stamp_ns, native.panorama_stamp_ns)
        np.testing.assert_array_equal(bag.odom_pose, native.odom_pose)
        np.testing.assert_array_equal(bag.truth_lat_deg, native.truth_lat_deg)
        np.testing.assert_array_equal(bag.truth_lon_deg, native.truth_lon_deg)
        assert bag.has_truth and not bag.has_truth_yaw and native.has_truth_yaw
        first = min((f for f in native.fixes if f.valid), key=lambda f: f.stamp_ns)
        assert (bag.datum_lat_deg, bag.datum_lon_deg) == (first.lat_deg, first.lon_deg)
        assert bag.zone == native.zone and bag.datum["source"] == "first valid fix on /gps/fix"
        assert bag.topics == {"panorama": "/camera/image/compressed", "fix": "/gps/fix", "odom": "/wheel/odom",
                              "truth": "/rtk/fix"}
    bare = read_bag(foreign["bag"], mapping(foreign["topics"]).updated({"truth": None, "odom": None}, "test"))
    assert not bare.has_truth and not bare.has_odometry and bare.odom_raw == []
    assert [kind for _, kind, _ in bare.playlist()].count(1) == 0  # no odometry to publish


@pytest.mark.parametrize("truth", ["odom-enu", "pose-utm"])
def test_mcap_with_raw_images_and_a_pose_truth_reads_back(small_drive, tmp_path, truth):
    """MCAP, raw sensor_msgs/Image (bgr8) panoramas, the truth as an Odometry in a local ENU frame turned
    30 deg from east (or a PoseStamped in UTM): the pixels of the JPEG, the true positions and yaws."""
    done = convert(small_drive["bag"], tmp_path / "raw", "--storage", "mcap", "--image", "raw", "--truth", truth,
                   "--write-topics", str(tmp_path / "raw.yaml"))
    assert done.returncode == 0, done.stderr
    topics = mapping(tmp_path / "raw.yaml")
    if truth == "odom-enu":
        assert topics.truth_frame.kind == "enu" and topics.truth_frame.yaw_deg == 30.0
    native = read_bag(small_drive["bag"])
    bag = read_bag(tmp_path / "raw" / "raw.mcap", topics)
    assert bag.raw_panorama and bag.panorama_msgtype == "sensor_msgs/msg/Image"
    for row in (0, len(bag.panorama_raw) - 1):
        pixels, encoding = bag.panorama_payload(row)
        jpeg, _ = native.panorama_payload(row)
        assert encoding == "bgr8"
        np.testing.assert_array_equal(pixels, cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    assert bag.truth_stamp_s == pytest.approx(native.truth_yaw_stamp_s, abs=1e-9)
    dist = geo.distance_m(bag.truth_lat_deg, bag.truth_lon_deg, native.truth_lat_deg, native.truth_lon_deg)
    assert np.max(dist) < 1e-3  # a millimetre: the UTM and ENU round trips
    dyaw = geo.wrap_angle_rad(bag.truth_yaw_enu_rad - native.truth_yaw_enu_rad)
    assert np.max(np.abs(dyaw)) < 1e-9


# --------------------------------------------------------------------------- replay, evaluation, calibration


def test_replay_through_the_mapping_equals_the_native_replay(native_replay, foreign_replay):
    """The strong check: the node sees the same messages, the truth is the same, so every figure against
    the truth is the native one (the datum differs: the fused tracks' plane moves, by micrometres here)."""
    out, summary = foreign_replay
    native_out, native_replay = native_replay
    assert summary["truth"] is True and summary["truth_heading"] is False
    assert summary["topics"]["truth"] == "/rtk/fix" and summary["datum_source"] == "first valid fix on /gps/fix"
    assert summary["published"] == native_replay["published"] and summary["rejections"] == native_replay["rejections"]
    assert 5 <= summary["published"] <= 31
    for track in ("gnss", "crossview", "gnss_on_published_frames", "fused", "fused_on_published_frames",
                  "fused_with_gnss"):
        mine, theirs = summary["errors"][track], native_replay["errors"][track]
        assert mine["count"] == theirs["count"] > 0, track
        for key in ("median_m", "mean_m", "p95_m"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-3), (track, key)
    assert summary["ranking_by_p95"] == native_replay["ranking_by_p95"]
    assert summary["heading"]["count"] == 0 < native_replay["heading"]["count"]  # no true heading in an RTK fix
    rows, native_rows = frames_csv(out), frames_csv(native_out)
    assert [r["accepted"] for r in rows] == [r["accepted"] for r in native_rows]
    for r, n in zip(rows, native_rows):
        for key in ("lat_deg", "lon_deg", "error_m", "gnss_error_m", "fused_error_m"):
            assert (r[key] == "") == (n[key] == ""), key
            if r[key]:
                assert float(r[key]) == pytest.approx(float(n[key]), abs=1e-3 if "error" in key else 1e-8), key
    md = (out / "report.md").read_text()
    assert "Topics: panorama `/camera/image/compressed`, fix `/gps/fix`" in md and "## Without truth" in md
    assert "The bag has no true heading" in md
    assert (out / "error_cdf.png").stat().st_size > 1000


def test_localize_bag_and_calibration_through_the_mapping_equal_native(small_drive, foreign, tmp_path, capsys):
    """crossview-localize --bag: the same estimates and summary; --calibrate: the same covariance model."""
    native = localize(capsys, small_drive, small_drive["bag"])
    mine = localize(capsys, small_drive, foreign["bag"], "--topics", str(foreign["topics"]))
    assert [e["reason"] for e in mine["estimates"]] == [e["reason"] for e in native["estimates"]]
    for a, b in zip(mine["estimates"], native["estimates"]):
        assert (a["lat_deg"], a["lon_deg"], a["truth_lat_deg"]) == (b["lat_deg"], b["lon_deg"], b["truth_lat_deg"])
    for key in ("frames", "published", "reasons", "gnss_error_median_m", "error_m",
                "covariance_share_d2_under_5.99_percent"):
        assert mine["summary"][key] == native["summary"][key], key
    fitted = {}
    for name, bag, flags in (("native", small_drive["bag"], ()), ("foreign", foreign["bag"],
                                                                 ("--topics", str(foreign["topics"])))):
        model = tmp_path / f"model_{name}"
        shutil.copytree(small_drive["model"], model)
        doc = localize(capsys, small_drive, bag, "--calibrate", *flags, model=model)
        assert doc["calibration"]["path"] == str(model / "covariance.json")
        fitted[name] = json.loads((model / "covariance.json").read_text())
        fitted[name]["fit"].pop("created_utc")  # when each fit ran, the one thing allowed to differ
    assert fitted["foreign"] == fitted["native"]
    assert fitted["native"]["fit"]["samples"] == native["summary"]["published"] >= 5


# --------------------------------------------------------------------------- without truth


def independent_truth_free(bag_dir: Path, outputs_mcap: Path) -> dict:
    """The truth-free figures recomputed from the foreign bag and the node's recorded fixes, without the
    project's bag reader: innovation against the newest valid /gps/fix, odometry consistency from /wheel/odom."""
    fixes, odom, panos = [], [], []
    with AnyReader([bag_dir], default_typestore=typestore()) as reader:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            if conn.topic == "/gps/fix" and msg.status.status >= 0 and math.isfinite(msg.latitude):
                cov = np.asarray(msg.position_covariance).reshape(3, 3)[:2, :2]
                fixes.append((t, msg.latitude, msg.longitude, cov))
            elif conn.topic == "/wheel/odom":
                odom.append((t, msg.pose.pose.position.x, msg.pose.pose.position.y))
            elif conn.topic == "/camera/image/compressed":
                panos.append(t)
    ours = []
    with AnyReader([outputs_mcap], default_typestore=typestore()) as reader:
        for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic == "/crossview/fix"]):
            msg = reader.deserialize(raw, conn.msgtype)
            ours.append((msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, msg.latitude, msg.longitude))
    ours.sort()
    dist, d2 = [], []
    for t, lat, lon in ours:
        g = [f for f in fixes if f[0] <= t + 1e-9][-1]
        dist.append(geo.distance_m(g[1], g[2], lat, lon))
        v = np.array(geo.offset_enu_m(g[1], g[2], lat, lon))
        d2.append(float(v @ np.linalg.inv(g[3]) @ v))
    ot, ox, oy = (np.array(c) for c in zip(*odom))

    def residuals(track: list[tuple[float, float, float]]) -> list[float]:
        out = []
        for (t0, la0, lo0), (t1, la1, lo1) in zip(track, track[1:]):
            d_odom = math.hypot(np.interp(t1, ot, ox) - np.interp(t0, ot, ox),
                                np.interp(t1, ot, oy) - np.interp(t0, ot, oy))
            out.append(abs(geo.distance_m(la0, lo0, la1, lo1) - d_odom))
        return out

    paired = sorted({max((f for f in fixes if f[0] <= t + 1e-9), key=lambda f: f[0])[:3] for t in panos})
    return {"published": len(ours), "duration_s": max(panos) - min(panos), "dist": dist, "d2": d2,
            "odom": residuals(ours), "gnss_odom": residuals(paired)}


def check_truth_free(tf: dict, ref: dict) -> None:
    assert tf["published"] == ref["published"] > 0
    assert tf["published_per_s"] == pytest.approx(ref["published"] / ref["duration_s"])
    g = tf["gnss_innovation"]
    assert g["count"] == len(ref["dist"]) and g["normalised_count"] == len(ref["d2"])
    assert g["median_m"] == pytest.approx(np.median(ref["dist"]), abs=1e-6)
    assert g["p95_m"] == pytest.approx(np.percentile(ref["dist"], 95), abs=1e-6)
    assert g["d2_median"] == pytest.approx(np.median(ref["d2"]), rel=1e-6)
    assert g["d2_under_5.99_pct"] == pytest.approx(100.0 * np.mean(np.array(ref["d2"]) < CHI2_2DOF_95))
    o = tf["odometry_consistency"]
    assert o["count"] == len(ref["odom"]) and o["gnss"]["count"] == len(ref["gnss_odom"]) >= 10
    assert o["median_m"] == pytest.approx(np.median(ref["odom"]), abs=1e-6)
    assert o["p95_m"] == pytest.approx(np.percentile(ref["odom"], 95), abs=1e-6)
    assert o["gnss"]["median_m"] == pytest.approx(np.median(ref["gnss_odom"]), abs=1e-6)


def test_a_replay_without_truth_gives_the_truth_free_report(foreign, truth_free_replay, foreign_replay):
    out, summary = truth_free_replay
    assert summary["truth"] is False and "truth" not in summary["topics"]
    assert all(s["count"] == 0 for s in summary["errors"].values())
    tf = summary["truth_free"]
    check_truth_free(tf, independent_truth_free(foreign["bag"], out / "outputs.mcap"))
    assert tf["withheld"] == {k: v for k, v in summary["rejections"].items() if v}
    assert tf["latency_ms"]["count"] == summary["published"]
    assert tf == foreign_replay[1]["truth_free"] | {"latency_ms": tf["latency_ms"]}  # truth changes none of it
    md = (out / "report.md").read_text()
    assert "The bag has no truth topic" in md and "## Without truth" in md
    assert f"| innovation against GNSS median / p95 [m] | {tf['gnss_innovation']['median_m']:.2f} / " in md
    assert not (out / "error_cdf.png").exists() and (out / "innovation.png").stat().st_size > 1000
    assert (out / "trajectory.png").stat().st_size > 1000
    rows = frames_csv(out)
    assert all(r["truth_lat_deg"] == "" and r["error_m"] == "" for r in rows)
    assert sorted(float(r["gnss_innovation_m"]) for r in rows if r["gnss_innovation_m"]) == pytest.approx(
        sorted(independent_truth_free(foreign["bag"], out / "outputs.mcap")["dist"]), abs=1e-6)


def test_localize_without_truth_reports_truth_free_and_refuses_to_calibrate(small_drive, foreign, capsys, tmp_path):
    from crossview_ros import localize_cli

    flags = ("--topics", str(foreign["topics"]), "--truth-topic", "none")
    doc = localize(capsys, small_drive, foreign["bag"], *flags)
    s = doc["summary"]
    assert s["truth"] is False and s["error_m"] is None and s["heading"] is None
    assert all(e["truth_lat_deg"] is None for e in doc["estimates"])
    tf = s["truth_free"]
    ests = [e for e in doc["estimates"] if e["accepted"]]
    dist = [geo.distance_m(e["fix_lat_deg"], e["fix_lon_deg"], e["lat_deg"], e["lon_deg"]) for e in ests]
    assert tf["published"] == len(ests) and tf["gnss_innovation"]["median_m"] == pytest.approx(np.median(dist))
    assert tf["latency_ms"]["of"].startswith("processing")
    model = tmp_path / "model"
    shutil.copytree(small_drive["model"], model)
    code = localize_cli.main(["--model", str(model), "--tiles", str(small_drive["tiles"]), "--bag",
                              str(foreign["bag"]), *flags, "--calibrate", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--calibrate needs the truth" in err
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in small_drive["model"].iterdir())
    assert localize_cli.main(["--model", str(small_drive["model"]), "--tiles", str(small_drive["tiles"]), "--bag",
                              str(foreign["bag"]), *flags, "--quiet", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "without truth:" in printed and "innovation against GNSS over" in printed


# --------------------------------------------------------------------------- the mapping's errors


def test_an_unmapped_bag_exits_2_naming_its_topics(small_drive, foreign, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "crossview_ros.replay", str(foreign["bag"]), "--tiles",
                           str(small_drive["tiles"]), "--model", str(small_drive["model"]), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "has no panorama topic /panorama/compressed (the default)" in line
    assert ("its topics: /camera/image/compressed (CompressedImage), /gps/fix (NavSatFix), /rtk/fix (NavSatFix), "
            "/wheel/odom (Odometry)") in line
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (("--truth-topic", "/rtk/nope"), "has no truth topic /rtk/nope (given by --truth-topic/--topics)"),
    (("--truth-topic", "/wheel/odom"), "truth topic /wheel/odom is a pose (nav_msgs/msg/Odometry): say its frame"),
    (("--odom-topic", "/gps/fix"), "odom topic /gps/fix is sensor_msgs/msg/NavSatFix, expected nav_msgs/msg/Odometry"),
    (("--truth-topic", "/wheel/odom", "--truth-frame", "enu:91,0"), "truth frame 'enu:91,0'"),
])
def test_bad_mappings_exit_2_with_one_line(small_drive, foreign, capsys, flags, message):
    from crossview_ros import localize_cli

    code = localize_cli.main(["--model", str(small_drive["model"]), "--tiles", str(small_drive["tiles"]), "--bag",
                              str(foreign["bag"]), "--topics", str(foreign["topics"]), *flags, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_topic_file_and_the_flags(tmp_path):
    """File keys as documented, flags over the file, `none` / null switch a role off, unknown keys refused."""
    import argparse

    from crossview_ros.bag.topics import add_topic_arguments, topic_map_from_args

    path = tmp_path / "topics.yaml"
    path.write_text("panorama: /cam/compressed\nfix: gps/fix\nodom: null\ntruth: /rtk/odom\n"
                    "truth_frame: {type: enu, lat_deg: 48.1, lon_deg: 11.5, yaw_deg: 90}\n")
    parser = argparse.ArgumentParser()
    add_topic_arguments(parser)
    m = topic_map_from_args(parser.parse_args(["--topics", str(path), "--truth-topic", "none",
                                               "--odom-topic", "/odom2"]))
    assert (m.panorama, m.fix, m.odom, m.truth) == ("/cam/compressed", "/gps/fix", "/odom2", None)
    assert m.truth_frame == TruthFrame("enu", None, 48.1, 11.5, 90.0) and m.datum == "/crossview/datum"
    assert {"panorama", "fix", "odom", "truth", "truth_frame"} <= m.given and "datum" not in m.given
    path.write_text("panorama: /cam\ncamera_info: /cam/info\n")
    with pytest.raises(BagError, match="unknown key.*camera_info"):
        topic_map_from_args(parser.parse_args(["--topics", str(path)]))
    with pytest.raises(BagError, match="cannot be switched off"):
        topic_map_from_args(parser.parse_args(["--fix-topic", "none"]))


# --------------------------------------------------------------------------- the maths, by hand


def test_a_local_enu_frame_turns_and_moves_as_stated():
    """enu:LAT,LON,90: x points north, y west; a yaw of 0 in it faces north (pi/2 in ENU)."""
    frame = TruthFrame.parse("enu:48.0,11.0,90")
    lat, lon, yaw = frame.to_geodetic(np.array([10.0, 0.0]), np.array([0.0, 5.0]), np.array([0.0, 0.5]),
                                      geo.UTMZone.parse("32N"))
    de, dn = geo.offset_enu_m(48.0, 11.0, lat, lon)
    assert de == pytest.approx([0.0, -5.0], abs=1e-6) and dn == pytest.approx([10.0, 0.0], abs=1e-6)
    assert yaw == pytest.approx([math.pi / 2, math.pi / 2 + 0.5])
    utm = TruthFrame.parse("utm:32N")
    e, n, _ = geo.latlon_to_utm(48.0, 11.0, zone="32N")
    lat, lon, _ = utm.to_geodetic(np.array([e]), np.array([n]), np.zeros(1), geo.UTMZone.parse("33N"))
    assert (float(lat[0]), float(lon[0])) == (pytest.approx(48.0, abs=1e-9), pytest.approx(11.0, abs=1e-9))


def test_truth_free_figures_by_hand():
    """A robot going east at 1 m/s on the equator; frames at t = 0..4 s. Our fixes sit on the truth but for a
    2 m jump north at t = 3 s and one frame withheld (t = 1 s); the GNSS is 3 m east of the truth with
    variance 4 m^2 per axis: innovation 3 m, d^2 = 9 / 4 (2 m jump: sqrt(9 + 4) m, d^2 = 13 / 4)."""
    enu = geo.LocalENU(0.0, 0.0)
    t = np.arange(5.0)
    lat, lon, _ = enu.inverse(t, np.array([0, 0, 0, 2.0, 0]))
    g_lat, g_lon, _ = enu.inverse(t + 3.0, np.zeros(5))
    accepted = np.array([True, False, True, True, True])
    s = truth_free.Stream(stamp_s=t, accepted=accepted, lat_deg=np.where(accepted, lat, np.nan),
                          lon_deg=np.where(accepted, lon, np.nan), gnss_stamp_s=t, gnss_lat_deg=g_lat,
                          gnss_lon_deg=g_lon, gnss_cov_enu_m2=np.tile(np.eye(2) * 4.0, (5, 1, 1)),
                          odom_stamp_s=np.arange(0.0, 4.01, 0.5), odom_xy_m=np.column_stack(
                              [np.arange(0.0, 4.01, 0.5), np.zeros(9)]))
    dist, d2 = truth_free.innovation(s)
    assert np.isnan(dist[1]) and np.isnan(d2[1])
    assert dist[[0, 2, 4]] == pytest.approx([3.0, 3.0, 3.0], abs=1e-4)
    assert dist[3] == pytest.approx(math.sqrt(13.0), abs=1e-4) and d2[3] == pytest.approx(13.0 / 4.0, abs=1e-4)
    assert d2[[0, 2, 4]] == pytest.approx([9.0 / 4.0] * 3, abs=1e-4)
    out = truth_free.summarize([s], {"LOW_MARGIN": 1, "NO_FIX": 0}, [10.0, 20.0, 30.0, 40.0], "test")
    assert out["published"] == 4 and out["published_per_s"] == pytest.approx(1.0) and out["frames_per_s"] == 1.25
    assert out["withheld"] == {"LOW_MARGIN": 1} and out["latency_ms"]["p50"] == pytest.approx(25.0)
    assert out["gnss_innovation"]["d2_under_5.99_pct"] == pytest.approx(100.0)
    # pairs (0, 2): |2 - 2| = 0; (2, 3): |sqrt(1 + 4) - 1|; (3, 4): the same back; the GNSS: 4 pairs of 0
    o = out["odometry_consistency"]
    assert o["count"] == 3 and o["median_m"] == pytest.approx(math.sqrt(5.0) - 1.0, abs=1e-4)
    assert o["max_m"] == pytest.approx(math.sqrt(5.0) - 1.0, abs=1e-4) and o["median_interval_s"] == 1.0
    assert o["gnss"]["count"] == 4 and o["gnss"]["max_m"] == pytest.approx(0.0, abs=1e-4)
    no_odom = truth_free.Stream(**{**s.__dict__, "odom_stamp_s": np.zeros(0), "odom_xy_m": np.zeros((0, 2))})
    assert truth_free.summarize([no_odom], {}, [], "test")["odometry_consistency"] is None
