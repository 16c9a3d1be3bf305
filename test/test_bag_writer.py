"""The drive bag: written with the writer, read back independently with rosbags' AnyReader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from crossview_ros.bag.writer import read_drive_bag
from crossview_ros.geo import latlon_to_utm, yaw_utm_to_enu
from crossview_ros.sim.bag import write_drive_bag
from crossview_ros.sim.city import StreetGraph
from crossview_ros.sim.drive import DriveConfig, plan_drive
from crossview_ros.sim.gnss import UrbanGnss, simulate_gnss
from crossview_ros.sim.odometry import OdometryConfig, wheel_odometry

LAT0, LON0 = -33.8688, 151.2093  # Sydney: southern hemisphere, zone 56S
E0, N0, ZONE = latlon_to_utm(LAT0, LON0)
PANO_H, PANO_W = 48, 96
DATUM = {"datum_lat_deg": LAT0, "datum_lon_deg": LON0, "seed": 42, "city": "test"}


GRAPH = StreetGraph(
    np.array([[E0, N0], [E0 + 120.0, N0], [E0 + 120.0, N0 + 100.0], [E0, N0 + 100.0]]),
    np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]]),
    np.full(5, 10.0),
    np.full(5, 3.0),
    np.ones(5, dtype=np.int64),
)


def panorama_jpegs(n: int):
    """A generator, as a renderer streaming frames would be; frame i has brightness i."""
    for i in range(n):
        image = np.full((PANO_H, PANO_W, 3), (i * 7) % 256, dtype=np.uint8)
        image[:, : PANO_W // 2, 0] = 255
        ok, buf = cv2.imencode(".jpg", image)
        assert ok
        yield buf.tobytes()


def make_inputs(publish_no_fix: bool = False):
    drive = plan_drive(GRAPH, ZONE, DriveConfig(mode="drive", duration_s=30.0, rate_hz=2.0, seed=4))
    gnss = simulate_gnss(
        drive,
        UrbanGnss(
            rate_hz=5.0,
            dropout_rate_hz=0.1,
            dropout_min_s=1.0,
            dropout_max_s=3.0,
            publish_no_fix=publish_no_fix,
        ),
        rng=5,
        canyon_depth=lambda e, n: np.full(np.shape(e), 1.0),
    )
    odo = wheel_odometry(drive, 6, OdometryConfig(rate_hz=20.0))
    return drive, gnss, odo


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    drive, gnss, odo = make_inputs()
    path = write_drive_bag(
        tmp_path_factory.mktemp("bags") / "drive",
        drive,
        gnss,
        odo,
        panorama_jpegs(len(drive)),
        DATUM,
    )
    return path, drive, gnss, odo


def read_all(path: Path):
    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, log_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((log_ns, reader.deserialize(raw, conn.msgtype)))
    return types, out


def test_bag_layout_types_and_counts(written):
    path, drive, gnss, odo = written
    assert sorted(p.name for p in path.iterdir()) == ["drive.mcap", "metadata.yaml"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    types, msgs = read_all(path)
    assert types == {
        "/panorama/compressed": "sensor_msgs/msg/CompressedImage",
        "/gnss/fix": "sensor_msgs/msg/NavSatFix",
        "/odom": "nav_msgs/msg/Odometry",
        "/ground_truth/pose": "geometry_msgs/msg/PoseStamped",
        "/ground_truth/fix": "sensor_msgs/msg/NavSatFix",
        "/crossview/datum": "std_msgs/msg/String",
    }
    assert len(msgs["/panorama/compressed"]) == len(drive) == 61
    assert len(msgs["/ground_truth/pose"]) == len(msgs["/ground_truth/fix"]) == 61
    assert len(msgs["/odom"]) == len(odo) == 601
    assert len(msgs["/crossview/datum"]) == 1
    assert 0 < (~gnss.valid).sum() and len(msgs["/gnss/fix"]) == gnss.valid.sum() < len(gnss)


def test_stamps_in_order_and_equal_to_log_time(written):
    path, drive, gnss, odo = written
    _, msgs = read_all(path)
    first = min(t for topic in msgs.values() for t, _ in topic)
    assert msgs["/crossview/datum"][0][0] == first
    expected = {
        "/panorama/compressed": drive.stamp_s,
        "/ground_truth/pose": drive.stamp_s,
        "/odom": odo.stamp_s,
        "/gnss/fix": gnss.stamp_s[gnss.valid],
    }
    for topic, stamps in expected.items():
        log = np.array([t for t, _ in msgs[topic]])
        header = np.array(
            [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in msgs[topic]]
        )
        assert np.all(np.diff(log) > 0), topic
        np.testing.assert_array_equal(header, log)
        np.testing.assert_allclose(log * 1e-9, stamps, atol=1e-6)


def test_panoramas_decode_to_their_size(written):
    path, drive, _, _ = written
    _, msgs = read_all(path)
    for i, (_, msg) in enumerate(msgs["/panorama/compressed"]):
        assert msg.format == "jpeg" and msg.header.frame_id == "camera"
        image = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (PANO_H, PANO_W, 3)
        assert abs(float(image[:, PANO_W // 2 :].mean()) - (i * 7) % 256) < 3.0  # frames in order


def test_gnss_and_ground_truth_contents(written):
    path, drive, gnss, _ = written
    _, msgs = read_all(path)
    rows = np.flatnonzero(gnss.valid)
    for (_, msg), i in zip(msgs["/gnss/fix"], rows):
        assert (
            msg.status.status == 0
            and msg.position_covariance_type == 2
            and msg.header.frame_id == "gnss"
        )
        assert msg.latitude == gnss.lat_deg[i] and msg.longitude == gnss.lon_deg[i]
        cov = np.asarray(msg.position_covariance).reshape(3, 3)
        np.testing.assert_allclose(
            np.diag(cov)[:2], [gnss.sigma_e_m[i] ** 2, gnss.sigma_n_m[i] ** 2]
        )
        assert np.count_nonzero(cov - np.diag(np.diag(cov))) == 0
    for i, ((_, pose), (_, fix)) in enumerate(
        zip(msgs["/ground_truth/pose"], msgs["/ground_truth/fix"])
    ):
        assert pose.header.frame_id == "utm"
        assert (
            pose.pose.position.x == drive.easting_m[i]
            and pose.pose.position.y == drive.northing_m[i]
        )
        q = pose.pose.orientation
        yaw_grid = 2.0 * math.atan2(q.z, q.w)
        yaw_enu = float(yaw_utm_to_enu(yaw_grid, drive.lat_deg[i], drive.lon_deg[i], ZONE))
        assert math.remainder(yaw_enu - drive.yaw_enu_rad[i], 2 * math.pi) == pytest.approx(
            0.0, abs=1e-9
        )
        assert (
            fix.latitude == drive.lat_deg[i]
            and fix.longitude == drive.lon_deg[i]
            and fix.status.status == 0
        )


def test_odometry_message(written):
    path, _, _, odo = written
    _, msgs = read_all(path)
    for i in (0, 300, 600):
        msg = msgs["/odom"][i][1]
        assert msg.header.frame_id == "odom" and msg.child_frame_id == "base_link"
        assert msg.pose.pose.position.x == odo.x_m[i] and msg.pose.pose.position.y == odo.y_m[i]
        assert 2.0 * math.atan2(
            msg.pose.pose.orientation.z, msg.pose.pose.orientation.w
        ) == pytest.approx(odo.yaw_rad[i])
        cov = np.asarray(msg.pose.covariance).reshape(6, 6)
        np.testing.assert_array_equal(cov[np.ix_([0, 1, 5], [0, 1, 5])], odo.pose_cov[i])
        assert (
            msg.twist.twist.linear.x == odo.speed_mps[i]
            and msg.twist.twist.angular.z == odo.yaw_rate_radps[i]
        )
        assert np.asarray(msg.twist.covariance)[35] == odo.twist_var[i, 1]


def test_datum_message_parses(written):
    path, drive, gnss, _ = written
    _, msgs = read_all(path)
    doc = json.loads(msgs["/crossview/datum"][0][1].data)
    assert doc["datum_lat_deg"] == LAT0 and doc["datum_lon_deg"] == LON0 and doc["seed"] == 42
    assert doc["utm_zone"] == "56S" == str(drive.zone) and doc["city"] == "test"
    assert doc["bag"]["drive"]["seed"] == 4 and doc["bag"]["gnss_model"] == "urban"


def test_read_drive_bag_summary(written):
    path, drive, gnss, odo = written
    summary = read_drive_bag(path)
    assert summary.topics["/panorama/compressed"].count == len(drive)
    assert summary.topics["/gnss/fix"].count == gnss.valid.sum()
    assert summary.topics["/odom"].msgtype == "nav_msgs/msg/Odometry"
    np.testing.assert_array_equal(
        summary.topics["/odom"].stamp_ns, summary.topics["/odom"].log_time_ns
    )
    assert summary.datum["utm_zone"] == "56S"


def test_no_fix_epochs_published_when_asked(tmp_path):
    drive, gnss, odo = make_inputs(publish_no_fix=True)
    path = write_drive_bag(tmp_path / "nofix", drive, gnss, odo, panorama_jpegs(len(drive)), DATUM)
    _, msgs = read_all(path)
    fixes = [m for _, m in msgs["/gnss/fix"]]
    assert len(fixes) == len(gnss)
    status = np.array([m.status.status for m in fixes])
    np.testing.assert_array_equal(status == -1, ~gnss.valid)
    assert all(
        math.isnan(m.latitude) and m.position_covariance_type == 0
        for m in fixes
        if m.status.status == -1
    )


def test_atomic_write_and_refusals(tmp_path):
    drive, gnss, odo = make_inputs()
    target = tmp_path / "bag"
    with pytest.raises(ValueError, match="ran out"):
        write_drive_bag(target, drive, gnss, odo, panorama_jpegs(len(drive) - 1), DATUM)
    with pytest.raises(ValueError, match="more panoramas"):
        write_drive_bag(target, drive, gnss, odo, panorama_jpegs(len(drive) + 1), DATUM)
    with pytest.raises(ValueError, match="not a JPEG"):
        write_drive_bag(target, drive, gnss, odo, (b"\x89PNG" for _ in range(len(drive))), DATUM)
    with pytest.raises(ValueError, match="seed"):
        write_drive_bag(
            target,
            drive,
            gnss,
            odo,
            panorama_jpegs(len(drive)),
            {"datum_lat_deg": 0.0, "datum_lon_deg": 0.0},
        )
    assert list(tmp_path.iterdir()) == []  # failures leave nothing behind, not even temporaries

    write_drive_bag(target, drive, gnss, odo, panorama_jpegs(len(drive)), DATUM)
    with pytest.raises(FileExistsError):
        write_drive_bag(target, drive, gnss, odo, panorama_jpegs(len(drive)), DATUM)
    short = plan_drive(GRAPH, ZONE, DriveConfig(mode="walk", duration_s=5.0, rate_hz=1.0, seed=1))
    short_gnss = simulate_gnss(short, UrbanGnss(dropout_rate_hz=0.0), rng=1)
    write_drive_bag(
        target,
        short,
        short_gnss,
        wheel_odometry(short, 1),
        panorama_jpegs(len(short)),
        DATUM,
        overwrite=True,
    )
    assert read_drive_bag(target).topics["/panorama/compressed"].count == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_city_json_style_datum_is_flattened(tmp_path):
    drive, gnss, odo = make_inputs()
    city_like = {"datum": {"lat_deg": LAT0, "lon_deg": LON0}, "seed": 3, "utm_zone": "56S"}
    path = write_drive_bag(tmp_path / "b", drive, gnss, odo, panorama_jpegs(len(drive)), city_like)
    doc = read_drive_bag(path).datum
    assert (doc["datum_lat_deg"], doc["datum_lon_deg"], doc["seed"]) == (LAT0, LON0, 3)
    with pytest.raises(ValueError, match="zone"):
        write_drive_bag(
            tmp_path / "c",
            drive,
            gnss,
            odo,
            panorama_jpegs(len(drive)),
            {**city_like, "utm_zone": "55S"},
        )
