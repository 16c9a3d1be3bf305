"""Cameras that are not 360° (crossview_ros.camera): CameraInfo models against OpenCV's own projection,
mount rotations on hand-computed cases, a rig's panorama and visibility, the seen ground cells, and the
Localizer and bev matcher taking a CameraFrame."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from crossview_ros.camera import (
    Camera, CameraError, CameraFrame, CameraModel, CameraMount, CameraRig, field_of_view_deg, mounts_from_dict,
    panorama_rays,
)
from crossview_ros.matchers.bev_view import cell_visibility, ground_plane_pixels
from crossview_ros.sim.cameras import RIGS, ViewRenderer, render_views, rig_cameras


def info(**overrides):
    values = dict(width=640, height=480, k=[400.0, 0, 320, 0, 410.0, 240, 0, 0, 1], d=[-0.2, 0.05, 0.001, -0.002, 0.0],
                  distortion_model="plumb_bob")
    values.update(overrides)
    return SimpleNamespace(**values)


def random_rays(n: int, max_angle_deg: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = np.radians(rng.uniform(0, max_angle_deg, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1)


def test_camera_info_is_read_and_bad_ones_are_refused_with_their_reason():
    m = CameraModel.from_camera_info(info())
    assert (m.width, m.height, m.fx, m.fy, m.cx, m.cy) == (640, 480, 400.0, 410.0, 320.0, 240.0)
    assert m.kind == "pinhole" and CameraModel.from_camera_info(info(distortion_model="equidistant",
                                                                     d=[0.1, 0, 0, 0])).kind == "fisheye"
    cases = {
        "focal length must be > 0": info(k=[0.0] * 9),
        "is not supported": info(distortion_model="kannala_brandt_9"),
        "takes 5 D coefficients": info(d=[0.1, 0.2]),
        "takes 4 D coefficients": info(distortion_model="equidistant", d=[0.1] * 5),
        "skew": info(k=[400.0, 3.0, 320, 0, 410.0, 240, 0, 0, 1]),
        "width and height must be > 0": info(width=0),
        "K must be finite": info(k=[400.0, 0, float("nan"), 0, 410.0, 240, 0, 0, 1]),
        "K must have 9 values": info(k=[400.0, 0, 320]),
        "not a CameraInfo": SimpleNamespace(width=640),
    }
    for reason, msg in cases.items():
        with pytest.raises(CameraError, match=reason):
            CameraModel.from_camera_info(msg)
    with pytest.raises(CameraError, match="480 px; publish the CameraInfo"):
        m.check_image(320, 240)


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial"])
def test_pinhole_projection_equals_opencv(model):
    d = [-0.2, 0.05, 0.001, -0.002, 0.01] if model == "plumb_bob" else [-0.2, 0.05, 0.001, -0.002, 0.01, 0.1, 0.02, 0.003]
    m = CameraModel.from_camera_info(info(distortion_model=model, d=d))
    rays = random_rays(500, 35.0)
    uv, ok = m.project(rays)
    k = np.array([[m.fx, 0, m.cx], [0, m.fy, m.cy], [0, 0, 1]])
    ref, _ = cv2.projectPoints(rays[:, None], np.zeros(3), np.zeros(3), k, np.array(d))
    ref = ref[:, 0]
    inside = (ref[:, 0] >= -0.5) & (ref[:, 0] <= 639.5) & (ref[:, 1] >= -0.5) & (ref[:, 1] <= 479.5)
    np.testing.assert_array_equal(ok, inside)
    np.testing.assert_allclose(uv[ok], ref[ok], atol=1e-6)
    back = m.unproject(uv[ok])
    np.testing.assert_allclose(back, rays[ok], atol=1e-7)
    assert not m.project(np.array([[0.0, 0.0, -1.0]]))[1][0]  # behind a pinhole: never seen


def test_fisheye_projection_equals_opencv_and_sees_behind_its_plane():
    d = [0.05, -0.01, 0.002, -0.0005]
    m = CameraModel.from_camera_info(info(width=800, height=800, k=[250.0, 0, 399.5, 0, 250.0, 399.5, 0, 0, 1],
                                          distortion_model="equidistant", d=d))
    rays = random_rays(500, 95.0, seed=1)
    uv, ok = m.project(rays)
    k = np.array([[m.fx, 0, m.cx], [0, m.fy, m.cy], [0, 0, 1]])
    ref, _ = cv2.fisheye.projectPoints(rays[rays[:, 2] > 0][:, None], np.zeros(3), np.zeros(3), k, np.array(d))
    front = rays[:, 2] > 0
    np.testing.assert_allclose(uv[front & ok], ref[:, 0][ok[front]], atol=1e-6)
    assert ok[~front].any()  # a 190° fisheye sees rays a little behind its image plane
    np.testing.assert_allclose(m.unproject(uv[ok]), rays[ok], atol=1e-7)
    assert field_of_view_deg(Camera("f", CameraModel.fisheye(800, 800, 190.0), CameraMount())) == pytest.approx(190.0)
    assert field_of_view_deg(Camera("p", CameraModel.pinhole(640, 480, 90.0), CameraMount())) == pytest.approx(90.0)


def test_mount_rotations_follow_rep103():
    axis = np.array([0.0, 0.0, 1.0])  # the optical axis
    right = np.array([1.0, 0.0, 0.0])  # the image's +u
    fwd = CameraMount(pitch_deg=10.0).base_from_optical()
    np.testing.assert_allclose(fwd @ axis, [math.cos(math.radians(10)), 0, -math.sin(math.radians(10))], atol=1e-12)
    np.testing.assert_allclose(fwd @ right, [0, -1, 0], atol=1e-12)  # image right is the robot's right
    np.testing.assert_allclose(CameraMount(yaw_deg=90.0).base_from_optical() @ axis, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(CameraMount(yaw_deg=90.0).base_from_optical() @ right, [1, 0, 0], atol=1e-12)
    with pytest.raises(CameraError, match="height_m must be > 0"):
        CameraMount(height_m=0.0)
    mounts = mounts_from_dict({"front": {"height_m": 1.2, "pitch_deg": 10}, "left": {"yaw_deg": 90}})
    assert list(mounts) == ["front", "left"] and mounts["front"] == CameraMount(height_m=1.2, pitch_deg=10.0)
    with pytest.raises(CameraError, match="unknown camera front mount keys"):
        mounts_from_dict({"front": {"hight_m": 1.2}})


def test_a_forward_camera_fills_the_front_of_the_panorama_and_lands_its_ground_at_the_model_height():
    """A camera at 1 m, looking ahead and down: the panorama pixel of a ground point d ahead (depression
    atan(2 / d) at the model's 2 m) must sample the camera pixel of depression atan(1 / d)."""
    cam = Camera("front", CameraModel.pinhole(640, 480, 90.0), CameraMount(height_m=1.0, pitch_deg=20.0))
    h, w = 160, 320
    rig = CameraRig([cam], (h, w), model_height_m=2.0)
    cols_seen = np.flatnonzero(rig.visibility[h // 2 - 1])  # just above the horizon
    az = np.where((cols_seen + 0.5) / w * 360.0 > 180, (cols_seen + 0.5) / w * 360.0 - 360, (cols_seen + 0.5) / w * 360)
    # at the horizon a camera pitched by p sees azimuths up to atan(tan 45° cos p) either side
    assert np.abs(az).max() == pytest.approx(math.degrees(math.atan(math.cos(math.radians(20.0)))), abs=1.2)
    # an image whose row value is its row: which camera row does a ground point 6 m ahead land on?
    rows = np.repeat(np.arange(480, dtype=np.float64)[:, None], 640, axis=1)
    image = np.clip(rows / 2, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    pano = rig.compose([image])
    d = 6.0
    depression_model = math.atan(2.0 / d)
    r = int(round((math.pi / 2 + depression_model) / math.pi * h - 0.5))
    got_row = float(pano[r, 0, 0]) * 2  # column 0: straight ahead
    # the camera ray to that ground point, the pixel row it hits (independently of the rig's code)
    depression_cam = math.atan(1.0 / d) - math.radians(20.0)  # below the optical axis
    want_row = 239.5 + cam.model.fy * math.tan(depression_cam)
    # the panorama row holds a band of ground; the camera row of the model row's ground point is within it
    r_lo, r_hi = [(math.pi / 2 + math.atan(2.0 / dd)) / math.pi * h - 0.5 for dd in (d * 1.05, d / 1.05)]
    assert r_lo <= r <= r_hi
    assert got_row == pytest.approx(want_row, abs=14.0)


@pytest.mark.parametrize("name", [r for r in RIGS if r != "panorama"])
def test_rendered_views_compose_back_into_the_panorama(name):
    """The simulator's views of a panorama, composed by the runtime at the same height, give the panorama
    back where the rig sees; the visibility is what each rig's geometry says."""
    h = 96
    r, c = np.mgrid[0:h, 0:2 * h]
    pano = np.stack([128 + 100 * np.sin(c / (2 * h) * 2 * np.pi * 3), r * 255.0 / h,
                     128 + 100 * np.cos(c / (2 * h) * 2 * np.pi * 5)], axis=-1).astype(np.uint8)
    cams = rig_cameras(name, 2.0)
    views = render_views(pano, cams)
    assert [v.shape[:2] for v in views] == [(cam.model.height, cam.model.width) for cam in cams]
    rig = CameraRig(cams, (h, 2 * h), 2.0)
    back = rig.compose(views)
    err = np.abs(back.astype(int) - pano.astype(int))[rig.visibility]
    assert np.percentile(err, 99) <= 3
    share = rig.visibility.mean()
    assert {"forward90": (0.05, 0.15), "rig4": (0.35, 0.6), "fisheye": (0.4, 0.7)}[name][0] < share
    assert share < {"forward90": (0.05, 0.15), "rig4": (0.35, 0.6), "fisheye": (0.4, 0.7)}[name][1]
    np.testing.assert_array_equal(back[~rig.visibility], 0)
    with pytest.raises(CameraError, match="cameras"):
        rig.compose(views[:-1] if len(views) > 1 else [])
    with pytest.raises(ValueError, match="renderer was built for"):
        ViewRenderer(cams, (h, 2 * h))(pano[: h // 2, :h])


def test_seen_cells_are_the_ground_in_front_of_a_forward_camera():
    k, n, res_m = 8, 4, 1.0
    whole = cell_visibility(np.ones((64, 128), bool), res_m=res_m, cells=k, stride=n, height_m=2.0)
    np.testing.assert_array_equal(whole, 1.0)
    cam = Camera("front", CameraModel.pinhole(640, 480, 90.0), CameraMount(height_m=2.0, pitch_deg=30.0))
    vis = CameraRig([cam], (64, 128), 2.0).visibility
    cells = cell_visibility(vis, res_m=res_m, cells=k, stride=n, height_m=2.0)
    # row 0 = farthest forward; the cell 10 m ahead is seen, the one behind and the ones to the side are not
    assert cells[0, k // 2 - 1] == 1.0 and cells[0, k // 2] == 1.0
    assert cells[k - 1].max() == 0.0 and cells[k // 2:, 0].max() == 0.0
    # independently: the ground point at each cell's centre, inside the camera's +-45° and in front
    row, col = ground_plane_pixels((64, 128), res_m * n, k, 2.0)
    az = (col + 0.5) / 128 * 360.0
    ahead = (az < 40) | (az > 320)
    assert np.all(cells[ahead & (row > 40)] > 0.5)  # ahead and a few metres out: seen


def test_panorama_rays_are_ground_points_below_the_horizon():
    pts, is_point = panorama_rays((8, 16), 2.0)
    assert not is_point[:4].any() and is_point[4:].all()
    r, c = 5, 0  # depression 22.5 + 11.25 = 33.75 deg, azimuth 11.25 deg clockwise
    dep, az = math.radians(33.75), math.radians(11.25)
    d = 2.0 / math.tan(dep)
    np.testing.assert_allclose(pts[r, c], [d * math.cos(az), -d * math.sin(az), 0.0], atol=1e-12)


def test_localizer_takes_a_camera_frame_and_refuses_a_bad_one(tmp_path):
    torch = pytest.importorskip("torch")
    from crossview_ros.estimate import Fix, Reason
    from crossview_ros.localizer import Localizer
    from crossview_ros.localizer_config import LocalizerConfig
    from crossview_training import bev as B
    from crossview_training.export import export_onnx

    from test_bev import TINY, bev_world

    torch.manual_seed(3)
    export_onnx(B.BevModel(B.BevConfig(**TINY)).eval(), tmp_path / "model")
    _, tile_dir, _, lat, lon, pano = bev_world(tmp_path / "model", tmp_path)
    config = LocalizerConfig(tile_set=str(tile_dir), model=str(tmp_path / "model"), engine="onnxruntime",
                             engine_threads=1, heading=True, max_mahalanobis=1e6, scope_min_m=20.0, min_mode_mass=0.0,
                             yaw_max_flip_mass=1.0, min_imagery_support=0.0, track=False)
    loc = Localizer(config)
    cams = rig_cameras("forward90", 2.0)
    rig = loc.camera_rig(cams)
    assert rig.size_hw == tuple(TINY["pano_size"])
    views = render_views(pano, cams)
    fix = Fix(float(lat), float(lon), 10.0, sigma_m=8.0)
    est = loc.localize(CameraFrame(rig, tuple(views), ("rgb8",)), fix, 10.0, now_s=10.0)
    assert est.accepted, est.message
    # the same frame by hand: the composed panorama, its unseen cells zeroed, through the same matcher
    from crossview_ros.preprocess import preprocess_ground

    view = loc.matcher.encode_ground(preprocess_ground(loc.meta, rig.compose(views)), rig.visibility)
    cells = loc.matcher.visible_cells(rig.visibility)
    assert 0 < cells.mean() < 0.5 and np.all(view.features[:, cells == 0] == 0)
    whole = loc.matcher.encode_ground(preprocess_ground(loc.meta, rig.compose(views)))
    np.testing.assert_allclose(view.features, whole.features * cells[None], rtol=1e-6)
    # JPEG bytes of the same view: decoded per camera
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(views[0], cv2.COLOR_RGB2BGR))
    assert loc.localize(CameraFrame(rig, (jpeg.tobytes(),), (None,)), fix, 11.0, now_s=11.0).reason is not \
        Reason.BAD_IMAGE
    small = cv2.resize(views[0], (320, 240))
    bad = loc.localize(CameraFrame(rig, (small,), ("rgb8",)), fix, 12.0, now_s=12.0)
    assert bad.reason is Reason.BAD_CAMERA and "CameraInfo says 640 x 480" in bad.message
    garbage = loc.localize(CameraFrame(rig, (b"\xff\xd8 nope",), (None,)), fix, 13.0, now_s=13.0)
    assert garbage.reason is Reason.BAD_IMAGE and garbage.message.startswith("camera front")
    assert loc.counts[Reason.BAD_CAMERA] == 1
    # a 360° camera 1.5 m high: its panorama is moved to the model's 2 m before it is encoded
    import dataclasses

    from crossview_ros.camera import reproject_panorama_height

    with Localizer(dataclasses.replace(config, camera_height_m=1.5)) as low:
        got = low.localize(pano, dataclasses.replace(fix, stamp_s=20.0), 20.0, encoding="rgb8", now_s=20.0)
    want = loc.localize(reproject_panorama_height(pano, 1.5, 2.0), dataclasses.replace(fix, stamp_s=20.0), 20.0,
                        encoding="rgb8", now_s=20.0)
    same = loc.localize(pano, dataclasses.replace(fix, stamp_s=21.0), 21.0, encoding="rgb8", now_s=21.0)
    assert (got.easting_m, got.northing_m, got.score) == (want.easting_m, want.northing_m, want.score)
    assert got.score != same.score  # it did move
    loc.close()


def test_a_panorama_taken_lower_is_moved_to_the_model_height_as_the_renderer_sees_it_there():
    """The simulator renders flat textured ground from 1.5 m and from 2 m; the 1.5 m panorama moved to 2 m
    (reproject_panorama_height) matches the 2 m render on the ground far better than the 1.5 m one does."""
    from test_sim_render import CAM_E, CAM_N, NO_HAZE, flat_scene

    from crossview_ros.camera import reproject_panorama_height
    from crossview_ros.sim.render import CameraConfig, render_panorama
    from crossview_ros.sim.scene import Sun

    scene = flat_scene(size_m=120.0, gsd_m=0.1)
    yy, xx = np.mgrid[0:scene.albedo.shape[0], 0:scene.albedo.shape[1]]
    rings = (np.hypot(yy - yy.mean(), xx - xx.mean()) * scene.gsd_m) % 4.0 < 2.0  # 2 m rings around the camera
    scene.albedo[rings] = (230, 230, 230)
    scene.albedo[~rings] = (30, 30, 30)

    def render(height_m: float) -> np.ndarray:
        camera = CameraConfig(height_m=height_m, haze_m=NO_HAZE.haze_m)
        return render_panorama(scene, CAM_E, CAM_N, 0.0, height_px=128, camera=camera, sun=Sun(0, 45)).astype(float)

    low, high = render(1.5), render(2.0)
    moved = reproject_panorama_height(low.astype(np.uint8), 1.5, 2.0).astype(float)
    ground = slice(64 + 4, 128 - 4)  # below the horizon, off its grazing rows and the nadir
    before = np.abs(low[ground] - high[ground]).mean()
    after = np.abs(moved[ground] - high[ground]).mean()
    assert after < 0.35 * before, (before, after)
    np.testing.assert_array_equal(reproject_panorama_height(low.astype(np.uint8), 2.0, 2.0), low.astype(np.uint8))
