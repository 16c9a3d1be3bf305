"""The real localize_node with cameras that are not 360° (the `cameras` parameter, nodes/cameras.py), over DDS.

test_node.py's set-up: its synthetic city, random ROS domain, LOCALHOST discovery, probe and node
process; the model here is a random-weight bev model (only bev models take partial views) with the
city's tiles encoded by it, and its gates open so that every good frame is published. Camera images
are rendered from the city's panoramas (sim/cameras.py); every published fix is compared with the
Localizer run in-process on the same CameraFrame, its rig built from the test's own mounts.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix  # noqa: E402
from rclpy.qos import ReliabilityPolicy  # noqa: E402

from crossview_ros.camera import MOUNT_KEYS, Camera, CameraFrame, CameraModel, CameraMount  # noqa: E402
from crossview_ros.estimate import Estimate  # noqa: E402
from crossview_ros.localizer import Localizer  # noqa: E402
from crossview_ros.localizer_config import LocalizerConfig  # noqa: E402
from crossview_ros.nodes.cameras import MOUNT_PARAMETERS, RIG_PARAMETERS  # noqa: E402
from crossview_ros.sim.cameras import render_views, rig_cameras  # noqa: E402
import test_node  # noqa: E402
from test_node import (  # noqa: E402  the node test's helpers, reused
    FIX_ALTITUDE_M, FRAME_TIMEOUT_S, GRACE_S, PANO_H, START_TIMEOUT_S, TILE_M, Clock, NodeProcess, Probe,
    World, _header, fix_msg, fix_of, jpeg_bytes, image_msg, node_params, same_stamp, time_s,
    assert_startup_failures, to_time, wait_until,
)

FORWARD = rig_cameras("forward90", 2.0)[0]  # 640 x 480, 90°, pitch 10°
FISHEYE = rig_cameras("fisheye", 2.0)[0].model  # 800 x 800 equidistant, 190°, with distortion
RIG4 = rig_cameras("rig4", 2.0)  # front, left, rear, right: 640 x 480, 100°, pitch 15°


# --------------------------------------------------------------------------- pure parts


def test_mount_parameters_are_the_mount_fields_with_their_defaults():
    assert tuple(MOUNT_PARAMETERS) == MOUNT_KEYS
    default = CameraMount()
    assert {k: v[0] for k, v in MOUNT_PARAMETERS.items()} == {k: getattr(default, k) for k in MOUNT_KEYS}
    assert {v[1] for v in MOUNT_PARAMETERS.values()} == {"m", "deg"}


def test_example_parameter_file_declares_a_forward_camera_and_a_rig(monkeypatch):
    """config/cameras_example.yaml read by rcl, as the node declares it, in each robot's namespace."""
    import random

    from rclpy.context import Context

    from crossview_ros.nodes.localize_node import LocalizeNode

    example = os.path.join(os.path.dirname(__file__), "..", "config", "cameras_example.yaml")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    got = {}
    for ns in ("car", "rover"):
        context = Context()
        rclpy.init(context=context, args=["localize_node", "--ros-args", "--params-file", example, "-r",
                                          f"__ns:=/{ns}"], domain_id=random.SystemRandom().randint(1, 100))
        try:
            node = LocalizeNode(context=context)
            got[ns] = node.camera_settings
            describe = node.describe_parameters(["front.pitch_deg", "camera_sync_s"])
            assert describe[0].description.endswith("[deg]") and describe[1].description.endswith("[s]")
            assert all(d.read_only for d in describe)
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)
    assert got["car"].names == ("front",)
    assert got["car"].mounts["front"] == CameraMount(height_m=1.45, x_m=1.2, pitch_deg=8.0)
    assert got["rover"].names == ("front", "left", "rear", "right") and got["rover"].sync_s == 0.05
    assert [got["rover"].mounts[n].yaw_deg for n in got["rover"].names] == [0.0, 90.0, 180.0, -90.0]
    assert {f"{n}.{k}" for n in got["rover"].names for k in MOUNT_KEYS} | set(RIG_PARAMETERS) == \
        set(got["rover"].parameter_names)


# --------------------------------------------------------------------------- the city, the bev model and its tiles


ros = test_node.ros  # test_node's rclpy context fixture, one per module (module scope)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_export) -> World:
    return World(tmp_path_factory.mktemp("cameras_city"), tiny_export(0))


@pytest.fixture(scope="module")
def bev(world: World, tmp_path_factory) -> tuple[str, str]:
    """A random-weight bev model for the city's panorama size and a copy of the city's tiles encoded by it."""
    torch = pytest.importorskip("torch")
    from crossview_ros.tiles_cli import encode_tile_set
    from crossview_training.bev import BevConfig, BevModel
    from crossview_training.export import export_onnx

    work = tmp_path_factory.mktemp("cameras_bev")
    torch.manual_seed(5)
    torch.set_num_threads(1)
    model = BevModel(BevConfig(pano_size=(PANO_H, 2 * PANO_H), tile_px=64, tile_size_m=TILE_M, kernel_cells=4,
                               channels=8, feature_dim=4)).eval()
    model_dir = export_onnx(model, work / "model")
    tile_dir = work / "tiles"
    shutil.copytree(world.tile_dir, tile_dir)
    encode_tile_set(tile_dir, model_dir, engine="onnxruntime", threads=1, progress=False, overwrite=True)
    return str(model_dir), str(tile_dir)


def camera_config(bev: tuple[str, str]) -> LocalizerConfig:
    """Gates open for the untrained model (as test_camera.py's Localizer test): every good frame is published."""
    return LocalizerConfig(tile_set=bev[1], model=bev[0], engine="onnxruntime", engine_threads=1, log_throttle_s=0.0,
                           heading=True, max_mahalanobis=1e6, scope_min_m=20.0, min_mode_mass=0.0,
                           yaw_max_flip_mass=1.0, min_imagery_support=0.0, track=False)


def camera_params(ns: str, cameras: list[Camera]) -> dict[str, Any]:
    """The cameras and their mounts; raw images reliable, as docs/reference.md advises for large raw images
    (a 640 x 480 rgb8 image is 0.9 MB: under best effort, one lost UDP fragment loses it)."""
    return {"cameras": [c.name for c in cameras],
            **{f"{c.name}.{k}": float(getattr(c.mount, k)) for c in cameras for k in MOUNT_KEYS},
            **{f"qos_overrides.{ns}/{c.name}/image.subscription.reliability": "reliable" for c in cameras}}


# --------------------------------------------------------------------------- messages


def info_msg(model: CameraModel, frame_id: str = "camera_optical_frame") -> CameraInfo:
    f = model.camera_info_fields()
    return CameraInfo(header=_header(to_time(time.time()), frame_id), width=f["width"], height=f["height"],
                      distortion_model=f["distortion_model"], d=f["d"], k=f["k"], r=f["r"], p=f["p"])


def compressed_camera_msg(rgb: np.ndarray, stamp: Any) -> CompressedImage:
    return CompressedImage(header=_header(stamp, "camera_optical_frame"), format="jpeg", data=jpeg_bytes(rgb))


def in_process(twin: Localizer, cameras: list[Camera], msgs: list[Any], fix: NavSatFix, stamp: Any) -> Estimate:
    """The Localizer on the same capture: a rig of the test's cameras, each image as its message carries it."""
    twin.reset()
    images, encodings = [], []
    for msg in msgs:
        if isinstance(msg, CompressedImage):
            images.append(bytes(msg.data))
            encodings.append(None)
        else:
            images.append(np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3))
            encodings.append(msg.encoding)
    frame = CameraFrame(twin.camera_rig(cameras), tuple(images), tuple(encodings))
    return twin.localize(frame, fix_of(fix), time_s(stamp), now_s=time_s(stamp))


def assert_outputs_equal(out: dict[str, Any], est: Estimate, stamp: Any) -> None:
    assert est.accepted, est.message
    fix = out["fix"]
    for m in (fix, out["pose"], out["heading"]):
        assert same_stamp(m.header.stamp, stamp)  # exactly the capture's (its newest image's) stamp
    assert (fix.latitude, fix.longitude) == (pytest.approx(est.lat_deg, abs=1e-9), pytest.approx(est.lon_deg, abs=1e-9))
    assert fix.altitude == FIX_ALTITUDE_M
    np.testing.assert_allclose(np.array(fix.position_covariance).reshape(3, 3)[:2, :2], est.covariance_enu_m2,
                               rtol=1e-6)
    q = out["heading"].orientation
    assert math.atan2(2.0 * q.w * q.z, 1.0 - 2.0 * q.z * q.z) == pytest.approx(est.yaw_enu_rad, abs=1e-9)


# --------------------------------------------------------------------------- the test side


class CameraProbe(Probe):
    """test_node's Probe plus each camera's image, compressed image and CameraInfo publishers."""

    def __init__(self, ros: Any, ns: str, names: list[str]) -> None:
        super().__init__(ros, ns)
        self.names = names
        self.pub_cam = {n: self.node.create_publisher(Image, f"{ns}/{n}/image", 10) for n in names}
        self.pub_cam_compressed = {n: self.node.create_publisher(CompressedImage, f"{ns}/{n}/image/compressed", 10)
                                   for n in names}
        self.pub_info = {n: self.node.create_publisher(CameraInfo, f"{ns}/{n}/camera_info", 10) for n in names}

    def camera_publishers(self) -> list[Any]:
        return [*self.pub_cam.values(), *self.pub_cam_compressed.values(), *self.pub_info.values()]

    def send_info(self, name: str, msg: CameraInfo) -> dict[str, int]:
        """Publish a CameraInfo, wait until the node counted it; returns the counter deltas."""
        before = self.counters()
        for _ in range(3):
            self.pub_info[name].publish(msg)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                if self.counter("camera_info_received") > before["camera_info_received"]:
                    after = self.counters()
                    return {k: after[k] - before.get(k, 0) for k in after}
                time.sleep(0.01)
        pytest.fail(f"the node never counted the CameraInfo of {name} (camera_info_received)")

    def _deliver(self, shots: list[tuple[str, Any]], done: Any, what: str) -> None:
        """Publish the shots and wait until done(); raw images go reliable (camera_params) and are sent once,
        a compressed one (best effort) is sent again every 1.5 s until done."""
        deadline = time.monotonic() + FRAME_TIMEOUT_S
        resend = [(n, m) for n, m in shots if isinstance(m, CompressedImage)]
        batch = shots
        while True:
            for name, msg in batch:
                (self.pub_cam_compressed if isinstance(msg, CompressedImage) else self.pub_cam)[name].publish(msg)
            retry = min(time.monotonic() + 1.5, deadline)
            while time.monotonic() < retry and not done():
                time.sleep(0.01)
            if done():
                return
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {FRAME_TIMEOUT_S:g} s waiting for {what}")
            batch = resend

    def send_capture(self, shots: list[tuple[str, Any]]) -> dict[str, int]:
        """Publish one image per camera, wait until the node processed the capture; the counter deltas."""
        before = self.counters()
        self._deliver(shots, lambda: self.counter("frames_received") > before["frames_received"],
                      f"a capture of {[n for n, _ in shots]} (frames_received)")
        wait_until(lambda: self.counter("frames_processed") > before["frames_processed"], FRAME_TIMEOUT_S,
                   "frames_processed")
        after = self.counters()
        return {k: after[k] - before.get(k, 0) for k in after}

    def send_unsynced(self, shots: list[tuple[str, Any]]) -> dict[str, int]:
        """Publish images that must not make a capture; the counter deltas once all were received."""
        before = self.counters()
        self._deliver(shots, lambda: self.counter("camera_images_received") >=
                      before["camera_images_received"] + len(shots), "the images (camera_images_received)")
        time.sleep(GRACE_S)  # a capture wrongly formed would be counted by now
        after = self.counters()
        return {k: after[k] - before.get(k, 0) for k in after}


class CameraSession:
    """A node with cameras, its probe, the in-process twin and a stamp clock."""

    def __init__(self, proc: NodeProcess, probe: CameraProbe, twin: Localizer) -> None:
        self.proc, self.probe, self.twin = proc, probe, twin
        self.clock = Clock()
        self.startup: dict[str, Any] = {}

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.proc.poll() is not None:
                pytest.fail(f"localize_node exited with {self.proc.proc.returncode}:\n{self.proc.text()}")
            return (all(p.get_subscription_count() >= 1 for p in self.probe.camera_publishers())
                    and self.probe.pub_fix.get_subscription_count() >= 1 and self.probe.diag_count() > 0)

        wait_until(ready, START_TIMEOUT_S, f"localize_node in {self.proc.ns} to start")

    def good_fix(self, world: World, k: int) -> NavSatFix:
        msg = fix_msg(*world.latlon(k, 6.0, -4.0), to_time(self.clock.next()))
        self.probe.send_fix(msg)
        return msg


def start_session(ros: Any, bev: tuple[str, str], ns: str, cameras: list[Camera], work: Any) -> CameraSession:
    config = camera_config(bev)
    probe = CameraProbe(ros, ns, [c.name for c in cameras])
    proc = NodeProcess(ns, node_params(config, **camera_params(ns, cameras)), work)
    return CameraSession(proc, probe, Localizer(config))


# --------------------------------------------------------------------------- one camera: pinhole, fisheye, bad ones


@pytest.fixture(scope="class")
def one_cam(ros, world, bev, tmp_path_factory):
    session = start_session(ros, bev, "/cam_one", [FORWARD], tmp_path_factory.mktemp("cam_one"))
    try:
        session.wait_ready()
        # Before any CameraInfo (a fix is there): the frame is refused as BAD_CAMERA, recorded for a test.
        session.good_fix(world, 1)
        view = render_views(world.panorama(1), [FORWARD])[0]
        stamp = to_time(session.clock.next())
        delta = session.probe.send_capture([("front", image_msg(view, stamp))])
        session.startup = {"stamp": stamp, "delta": delta}
        yield session
    finally:
        session.proc.stop(signal.SIGINT)
        session.probe.close()
        session.twin.close()


@pytest.mark.usefixtures("one_cam")
class TestOneCamera:
    """cameras: [front], a forward camera's mount; its CameraInfo switched between pinhole, fisheye and bad ones."""

    def test_camera_topics_replace_the_panorama_topics(self, one_cam):
        probe = one_cam.probe
        assert probe.pub_image.get_subscription_count() == 0 and probe.pub_compressed.get_subscription_count() == 0
        for topic, reliability in (("/cam_one/front/image", ReliabilityPolicy.RELIABLE),  # its qos_overrides
                                   ("/cam_one/front/image/compressed", ReliabilityPolicy.BEST_EFFORT),
                                   ("/cam_one/front/camera_info", ReliabilityPolicy.BEST_EFFORT)):
            subs = [e for e in probe.node.get_subscriptions_info_by_topic(topic)
                    if e.node_name == "crossview_localizer"]
            assert len(subs) == 1 and subs[0].qos_profile.reliability == reliability, topic

    def test_a_frame_before_any_camera_info_is_bad_camera(self, one_cam):
        delta = one_cam.startup["delta"]
        assert delta["rejected_BAD_CAMERA"] == 1 and delta["estimates_published"] == 0, delta
        assert delta["frames_received"] == 1 and delta["camera_images_received"] == 1
        one_cam.probe.assert_nothing_published(one_cam.startup["stamp"])
        wait_until(lambda: "BAD_CAMERA: camera front: no CameraInfo on /cam_one/front/camera_info yet"
                   in one_cam.proc.text(), 5.0, "the log line")
        assert one_cam.probe.values()["cameras"] == "front none"

    def test_pinhole_outputs_equal_the_in_process_localizer(self, one_cam, world):
        probe = one_cam.probe
        delta = probe.send_info("front", info_msg(FORWARD.model))
        assert delta["camera_info_refused"] == 0
        view = render_views(world.panorama(2), [FORWARD])[0]
        for make in (lambda s: image_msg(view, s), lambda s: compressed_camera_msg(view, s)):
            fix = one_cam.good_fix(world, 2)
            stamp = to_time(one_cam.clock.next())
            msg = make(stamp)
            delta = probe.send_capture([("front", msg)])
            assert delta["estimates_published"] == 1, (delta, one_cam.proc.text()[-2000:])
            out = probe.wait_outputs(stamp, heading=True)
            assert_outputs_equal(out, in_process(one_cam.twin, [FORWARD], [msg], fix, stamp), stamp)
        assert probe.counter("camera_rigs_built") == 1
        assert probe.values()["cameras"] == "front 640x480 pinhole"

    def test_the_same_camera_info_again_does_not_rebuild_the_rig(self, one_cam, world):
        probe = one_cam.probe
        for _ in range(3):
            probe.send_info("front", info_msg(FORWARD.model))
        one_cam.good_fix(world, 3)
        view = render_views(world.panorama(3), [FORWARD])[0]
        delta = probe.send_capture([("front", image_msg(view, to_time(one_cam.clock.next())))])
        assert delta["estimates_published"] == 1 and delta["camera_rigs_built"] == 0, delta

    def test_fisheye_outputs_equal_the_in_process_localizer(self, one_cam, world):
        probe = one_cam.probe
        fisheye = Camera("front", FISHEYE, FORWARD.mount)  # the same mount: a fisheye lens on it
        assert probe.send_info("front", info_msg(FISHEYE))["camera_info_refused"] == 0
        fix = one_cam.good_fix(world, 4)
        view = render_views(world.panorama(4), [fisheye])[0]
        stamp = to_time(one_cam.clock.next())
        msg = image_msg(view, stamp)
        delta = probe.send_capture([("front", msg)])
        assert delta["estimates_published"] == 1 and delta["camera_rigs_built"] == 1, delta
        out = probe.wait_outputs(stamp, heading=True)
        assert_outputs_equal(out, in_process(one_cam.twin, [fisheye], [msg], fix, stamp), stamp)
        assert probe.values()["cameras"] == "front 800x800 fisheye"
        wait_until(lambda: "camera front: CameraInfo 800 x 800 fisheye (equidistant)" in one_cam.proc.text(), 5.0,
                   "the log line")

    @pytest.mark.parametrize("case, log", [
        ("zero_focal_length", "focal length must be > 0"),
        ("unknown_distortion_model", "distortion_model 'kannala_brandt8' is not supported"),
        ("wrong_d_length", "takes 5 D coefficients, got 3"),
    ])
    def test_a_bad_camera_info_is_refused_until_a_good_one_comes(self, one_cam, world, case, log):
        probe = one_cam.probe
        bad = info_msg(FORWARD.model)
        if case == "zero_focal_length":
            bad.k = [0.0] * 9  # an uncalibrated driver's CameraInfo
        elif case == "unknown_distortion_model":
            bad.distortion_model = "kannala_brandt8"
        else:
            bad.d = [0.1, 0.0, 0.0]
        delta = probe.send_info("front", bad)
        assert delta["camera_info_refused"] == 1, delta
        wait_until(lambda: "camera front: CameraInfo on /cam_one/front/camera_info refused: " in one_cam.proc.text()
                   and log in one_cam.proc.text(), 5.0, "the refusal's log line")
        assert probe.values()["cameras"] == "front none"
        one_cam.good_fix(world, 5)
        view = render_views(world.panorama(5), [FORWARD])[0]
        stamp = to_time(one_cam.clock.next())
        delta = probe.send_capture([("front", image_msg(view, stamp))])
        assert delta["rejected_BAD_CAMERA"] == 1 and delta["estimates_published"] == 0, delta
        probe.assert_nothing_published(stamp)
        assert one_cam.proc.proc.poll() is None, "the node died"
        # a good CameraInfo: the node answers again
        assert probe.send_info("front", info_msg(FORWARD.model))["camera_info_refused"] == 0
        fix = one_cam.good_fix(world, 5)
        stamp = to_time(one_cam.clock.next())
        msg = image_msg(view, stamp)
        delta = probe.send_capture([("front", msg)])
        assert delta["estimates_published"] == 1, delta
        assert_outputs_equal(probe.wait_outputs(stamp, heading=True),
                             in_process(one_cam.twin, [FORWARD], [msg], fix, stamp), stamp)

    def test_an_image_not_of_its_camera_info_size_is_bad_camera(self, one_cam, world):
        probe = one_cam.probe
        probe.send_info("front", info_msg(FORWARD.model))  # 640 x 480
        one_cam.good_fix(world, 6)
        small = cv2.resize(render_views(world.panorama(6), [FORWARD])[0], (320, 240))
        stamp = to_time(one_cam.clock.next())
        delta = probe.send_capture([("front", image_msg(small, stamp))])
        assert delta["rejected_BAD_CAMERA"] == 1 and delta["estimates_published"] == 0, delta
        probe.assert_nothing_published(stamp)
        wait_until(lambda: "image is 320 x 240 px but its CameraInfo says 640 x 480 px" in one_cam.proc.text(), 5.0,
                   "the log line")

    def test_an_image_that_cannot_be_read_is_bad_image(self, one_cam, world):
        probe = one_cam.probe
        one_cam.good_fix(world, 6)
        stamp = to_time(one_cam.clock.next())
        delta = probe.send_capture([("front", CompressedImage(header=_header(stamp, "camera"), format="jpeg",
                                                              data=b"not a JPEG"))])
        assert delta["rejected_BAD_IMAGE"] == 1 and delta["estimates_published"] == 0, delta
        probe.assert_nothing_published(stamp)

    def test_diagnostics_and_clean_exit(self, one_cam):
        values = one_cam.probe.values()
        for key in ("camera_images_received", "camera_info_received", "camera_info_refused", "camera_rigs_built",
                    "cameras", "rejected_BAD_CAMERA"):
            assert key in values, key
        assert int(values["camera_info_refused"]) >= 1 and int(values["rejected_BAD_CAMERA"]) >= 1
        assert one_cam.proc.stop(signal.SIGINT) == 0
        assert "Traceback" not in one_cam.proc.text()


# --------------------------------------------------------------------------- a surround rig: sync


@pytest.fixture(scope="class")
def rig_node(ros, world, bev, tmp_path_factory):
    session = start_session(ros, bev, "/cam_rig", RIG4, tmp_path_factory.mktemp("cam_rig"))
    try:
        session.wait_ready()
        for cam in RIG4:
            session.probe.send_info(cam.name, info_msg(cam.model))
        yield session
    finally:
        session.proc.stop(signal.SIGINT)
        session.probe.close()
        session.twin.close()


def rig_shots(world: World, k: int, stamps: list[Any]) -> list[tuple[str, Any]]:
    """The rig's four views at street position k; front and rear raw, left and right JPEG."""
    views = render_views(world.panorama(k), RIG4)
    return [(cam.name, (compressed_camera_msg if cam.name in ("left", "right") else image_msg)(view, stamp))
            for cam, view, stamp in zip(RIG4, views, stamps)]


@pytest.mark.usefixtures("rig_node")
class TestRigSync:
    """cameras: [front, left, rear, right] (rig4's mounts), camera_sync_s 0.05 s (the default)."""

    def test_images_within_camera_sync_s_make_one_frame_stamped_with_the_newest(self, rig_node, world):
        fix = rig_node.good_fix(world, 2)
        t0 = rig_node.clock.next()
        offsets_s = [0.01, 0.045, 0.0, 0.03]  # the newest (left) is not the last one sent
        stamps = [to_time(t0 + dt) for dt in offsets_s]
        rig_node.clock.last = t0 + max(offsets_s)
        shots = rig_shots(world, 2, stamps)
        delta = rig_node.probe.send_capture(shots)
        assert delta["frames_received"] == 1 and delta["camera_images_received"] >= 4, delta
        assert delta["estimates_published"] == 1, (delta, rig_node.proc.text()[-2000:])
        newest = stamps[1]
        out = rig_node.probe.wait_outputs(newest, heading=True)
        est = in_process(rig_node.twin, RIG4, [m for _, m in shots], fix, newest)
        assert_outputs_equal(out, est, newest)
        for s in stamps[:1] + stamps[2:]:
            assert rig_node.probe.outputs_at(s) == {"fix": [], "pose": [], "heading": []}
        assert rig_node.probe.values()["cameras"] == ("front 640x480 pinhole, left 640x480 pinhole, "
                                                      "rear 640x480 pinhole, right 640x480 pinhole")

    def test_images_farther_apart_make_no_frame(self, rig_node, world):
        rig_node.good_fix(world, 3)
        t0 = rig_node.clock.next()
        stamps = [to_time(t0 + dt) for dt in (0.0, 0.02, 0.04, 0.12)]  # rear's and right's 0.08 s apart
        rig_node.clock.last = t0 + 0.12
        delta = rig_node.probe.send_unsynced(rig_shots(world, 3, stamps))
        assert delta["camera_images_received"] >= 4 and delta["frames_received"] == 0, delta
        assert delta["frames_processed"] == 0 and delta["estimates_published"] == 0, delta
        for s in stamps:
            assert rig_node.probe.outputs_at(s) == {"fix": [], "pose": [], "heading": []}
        wait_until(lambda: "camera images not within camera_sync_s 0.05 s" in rig_node.proc.text(), 5.0,
                   "the log line")
        # the next capture in sync is one frame again, whatever was left of the last one
        fix = rig_node.good_fix(world, 3)
        t1 = rig_node.clock.next()
        stamps = [to_time(t1 + dt) for dt in (0.0, 0.01, 0.02, 0.03)]
        rig_node.clock.last = t1 + 0.03
        shots = rig_shots(world, 3, stamps)
        delta = rig_node.probe.send_capture(shots)
        assert delta["frames_received"] == 1 and delta["estimates_published"] == 1, delta
        assert_outputs_equal(rig_node.probe.wait_outputs(stamps[-1], heading=True),
                             in_process(rig_node.twin, RIG4, [m for _, m in shots], fix, stamps[-1]), stamps[-1])

    def test_a_camera_without_camera_info_refuses_the_capture(self, rig_node, world):
        probe = rig_node.probe
        bad = info_msg(RIG4[2].model)
        bad.k = [0.0] * 9
        assert probe.send_info("rear", bad)["camera_info_refused"] == 1
        rig_node.good_fix(world, 4)
        t0 = rig_node.clock.next()
        stamps = [to_time(t0)] * 4
        delta = probe.send_capture(rig_shots(world, 4, stamps))
        assert delta["rejected_BAD_CAMERA"] == 1 and delta["estimates_published"] == 0, delta
        probe.assert_nothing_published(stamps[0])
        wait_until(lambda: "BAD_CAMERA: camera rear: CameraInfo on /cam_rig/rear/camera_info refused" in
                   rig_node.proc.text(), 5.0, "the log line")
        probe.send_info("rear", info_msg(RIG4[2].model))
        rig_node.good_fix(world, 4)
        stamps = [to_time(rig_node.clock.next())] * 4
        assert probe.send_capture(rig_shots(world, 4, stamps))["estimates_published"] == 1
        assert rig_node.proc.stop(signal.SIGTERM) == 0
        assert "Traceback" not in rig_node.proc.text()


# --------------------------------------------------------------------------- start-up failures


def test_camera_startup_failures_exit_2_with_one_error_line(world, bev, tmp_path):
    model, tiles = bev
    good = ["-p", f"tile_set:={tiles}", "-p", f"model:={model}", "-p", "engine:=onnxruntime"]
    cases = {
        "retrieval model": (["-p", f"tile_set:={world.tile_dir}", "-p", f"model:={world.model_dir}", "-p",
                             "engine:=onnxruntime", "-p", "cameras:=[front]"], "need a bev model"),
        "bad name": ([*good, "-p", "cameras:=[front-left]"], "a camera name must start with a letter"),
        "twice": ([*good, "-p", "cameras:=[front, front]"], "each camera name must be given once"),
        "not a list": ([*good, "-p", "cameras:=front"], "cameras must be a string array"),
        "mount of no camera": ([*good, "-p", "cameras:=[front]", "-p", "rear.height_m:=1.5"],
                               "unknown parameter(s) ['rear.height_m']"),
        "pitch": ([*good, "-p", "cameras:=[front]", "-p", "front.pitch_deg:=120.0"], "pitch_deg must be within"),
        "integer": ([*good, "-p", "cameras:=[front]", "-p", "front.height_m:=2"],
                    "front.height_m must be of type double"),
        "sync": ([*good, "-p", "camera_sync_s:=-1.0"], "camera_sync_s is outside its range"),
    }
    assert_startup_failures(cases)


def test_help_names_the_camera_topics():
    proc = subprocess.run([sys.executable, "-m", "crossview_ros.nodes.localize_node", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "N/image/compressed" in proc.stdout and "N/camera_info" in proc.stdout
