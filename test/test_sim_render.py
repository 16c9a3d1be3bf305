"""Tests for the panorama renderer and the appearance gap.

The scenes are built by hand here (not by the procedural city) so that every expected pixel
comes from plain geometry written in this file: ray/box slab intersections, ray/plane
intersections, ray/circle intersections and the documented panorama conventions
(column c looks at azimuth (c + 0.5)/W*360 deg clockwise from forward, row r at elevation
90 - (r + 0.5)/H*180 deg). Scenes sit on the central meridian of zone 33N (E = 500000), where
grid convergence is zero, except the one test that checks the convergence itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossview_ros import geo
from crossview_ros.geo import UTMZone
from crossview_ros.sim.appearance import PARTS, Appearance, apply_appearance, sample_appearance
from crossview_ros.sim.render import CameraConfig, Occluder, render_panorama, render_panorama_with_range
from crossview_ros.sim.scene import Buildings, Material, Scene, Sun

ZONE = UTMZone(33, False)
CAM_E = 500000.0
CAM_N = 5000000.0
NO_HAZE = CameraConfig(haze_m=0.0)


# ----------------------------------------------------------------------------------- helpers


def flat_scene(size_m=200.0, gsd_m=0.25, ground_rgb=(128, 128, 128), centre=(CAM_E, CAM_N)) -> Scene:
    n = int(round(size_m / gsd_m))
    return Scene(
        zone=ZONE,
        origin_e_m=centre[0] - size_m / 2,
        origin_n_m=centre[1] + size_m / 2,
        gsd_m=gsd_m,
        height_m=np.zeros((n, n), np.float32),
        material=np.full((n, n), int(Material.ROAD), np.uint8),
        albedo=np.broadcast_to(np.asarray(ground_rgb, np.uint8), (n, n, 3)).copy(),
        building_id=np.full((n, n), -1, np.int32),
        buildings=Buildings(
            height_m=np.zeros(0, np.float32),
            facade_rgb=np.zeros((0, 3), np.uint8),
            window_rgb=np.zeros((0, 3), np.uint8),
            floor_height_m=np.zeros(0, np.float32),
            window_spacing_m=np.zeros(0, np.float32),
        ),
    )


def add_building(scene, box, height_m, facade_rgb, window_rgb=(0, 0, 0), floor_m=0.0, spacing_m=0.0):
    """Box (e0, e1, n0, n1) in UTM metres, snapped to cell edges; returns the snapped box."""
    g = scene.gsd_m
    e0, e1, n0, n1 = box
    c0, c1 = round((e0 - scene.origin_e_m) / g), round((e1 - scene.origin_e_m) / g)
    r0, r1 = round((scene.origin_n_m - n1) / g), round((scene.origin_n_m - n0) / g)
    bid = len(scene.buildings)
    scene.height_m[r0:r1, c0:c1] = height_m
    scene.material[r0:r1, c0:c1] = Material.BUILDING
    scene.building_id[r0:r1, c0:c1] = bid
    scene.albedo[r0:r1, c0:c1] = (90, 90, 90)
    b = scene.buildings
    scene.buildings = Buildings(
        height_m=np.append(b.height_m, np.float32(height_m)),
        facade_rgb=np.vstack([b.facade_rgb, np.asarray(facade_rgb, np.uint8)]),
        window_rgb=np.vstack([b.window_rgb, np.asarray(window_rgb, np.uint8)]),
        floor_height_m=np.append(b.floor_height_m, np.float32(floor_m)),
        window_spacing_m=np.append(b.window_spacing_m, np.float32(spacing_m)),
    )
    return (
        scene.origin_e_m + c0 * g,
        scene.origin_e_m + c1 * g,
        scene.origin_n_m - r1 * g,
        scene.origin_n_m - r0 * g,
    )


def column_bearings_deg(forward_bearing_deg: float, width: int) -> np.ndarray:
    return forward_bearing_deg + (np.arange(width) + 0.5) / width * 360.0


def row_elevations_deg(height: int) -> np.ndarray:
    return 90.0 - (np.arange(height) + 0.5) / height * 180.0


def ray_box_entry(cam_e, cam_n, bearing_deg, box) -> np.ndarray:
    """Horizontal distance at which rays with these bearings enter the box; inf if they miss."""
    b = np.radians(bearing_deg)
    de, dn = np.sin(b), np.cos(b)
    e0, e1, n0, n1 = box
    with np.errstate(divide="ignore", invalid="ignore"):
        te = np.stack([(e0 - cam_e) / de, (e1 - cam_e) / de])
        tn = np.stack([(n0 - cam_n) / dn, (n1 - cam_n) / dn])
    t_in = np.maximum(np.nanmin(te, axis=0), np.nanmin(tn, axis=0))
    t_out = np.minimum(np.nanmax(te, axis=0), np.nanmax(tn, axis=0))
    return np.where((t_in < t_out) & (t_in > 0), t_in, np.inf)


def first_row_at_or_below(el_deg, height: int) -> int:
    """Index of the first row whose centre elevation is <= el_deg."""
    return int(np.argmax(row_elevations_deg(height) <= el_deg))


def is_red(img):
    img = img.astype(int)
    return (img[..., 0] > 90) & (img[..., 1] < 60) & (img[..., 2] < 60)


def is_green(img):
    img = img.astype(int)
    return (img[..., 1] > 90) & (img[..., 0] < 60) & (img[..., 2] < 60)


def yaw_from_bearing(bearing_deg: float) -> float:
    return math.radians(90.0 - bearing_deg)


# ------------------------------------------------------------------------------- geometry


def test_lone_tower_appears_at_predicted_columns_and_top_row():
    scene = flat_scene()
    b = math.radians(57.0)
    ce, cn = CAM_E + 60.0 * math.sin(b), CAM_N + 60.0 * math.cos(b)
    box = add_building(scene, (ce - 4, ce + 4, cn - 4, cn + 4), 100.0, (220, 30, 30))
    h, w = 512, 1024
    forward = 200.0
    img = render_panorama(scene, CAM_E, CAM_N, yaw_from_bearing(forward), height_px=h, camera=NO_HAZE, sun=Sun(57, 40))

    t_entry = ray_box_entry(CAM_E, CAM_N, column_bearings_deg(forward, w), box)
    pred_cols = np.flatnonzero(np.isfinite(t_entry))
    # the tower is at bearing 57, i.e. 217 deg clockwise of forward: column ~617 of 1024
    assert 600 < pred_cols.mean() < 635
    row = first_row_at_or_below(20.0, h)  # tower only, sky elsewhere
    seen_cols = np.flatnonzero(is_red(img[row]))
    assert abs(seen_cols[0] - pred_cols[0]) <= 1 and abs(seen_cols[-1] - pred_cols[-1]) <= 1
    assert len(seen_cols) == seen_cols[-1] - seen_cols[0] + 1  # one solid run

    for c in (pred_cols[len(pred_cols) // 2], pred_cols[2], pred_cols[-3]):
        el_top = math.degrees(math.atan2(100.0 - 2.0, t_entry[c]))
        el_foot = math.degrees(math.atan2(-2.0, t_entry[c]))
        red_rows = np.flatnonzero(is_red(img[:, c]))
        assert abs(red_rows[0] - first_row_at_or_below(el_top, h)) <= 1
        assert abs(red_rows[-1] - (first_row_at_or_below(el_foot, h) - 1)) <= 1


def test_tower_edges_follow_pixel_centres_exactly():
    """Half a pixel matters: with both edges a quarter pixel from a pixel centre, the covered
    columns are exactly the ones whose centre ray (c + 0.5) hits the tower."""
    h, w = 512, 1024
    forward = 180.0  # tower due north, in the middle of the image
    near_n = 56.0
    for half_m in np.arange(3.0, 6.0, 0.25):  # pick a width whose edges sit between pixel centres
        edge_px = w * math.degrees(math.atan(half_m / near_n)) / 360.0
        if 0.2 < (edge_px % 1.0) < 0.3 or 0.7 < (edge_px % 1.0) < 0.8:
            break
    else:
        pytest.fail("no tower width puts its edges between pixel centres")
    scene = flat_scene()
    box = add_building(scene, (CAM_E - half_m, CAM_E + half_m, CAM_N + near_n, CAM_N + near_n + 8), 90.0, (220, 30, 30))
    img = render_panorama(scene, CAM_E, CAM_N, yaw_from_bearing(forward), height_px=h, camera=NO_HAZE)
    pred = np.isfinite(ray_box_entry(CAM_E, CAM_N, column_bearings_deg(forward, w), box))
    assert np.array_equal(is_red(img[first_row_at_or_below(20.0, h)]), pred)


def test_grid_convergence_turns_the_view_off_the_central_meridian():
    # 200 km east of the central meridian at 45 N the grid is turned by ~1.8 deg (~5 px here)
    centre = (700000.0, 5000000.0)
    scene = flat_scene(centre=centre)
    box = add_building(scene, (centre[0] - 4, centre[0] + 4, centre[1] + 56, centre[1] + 64), 80.0, (220, 30, 30))
    lat, lon = geo.utm_to_latlon(centre[0], centre[1], ZONE)
    gamma_deg = math.degrees(geo.grid_convergence_rad(lat, lon, ZONE))
    assert 1.5 < gamma_deg < 2.1
    h, w = 512, 1024
    yaw_enu = yaw_from_bearing(300.0)
    img = render_panorama(scene, *centre, yaw_enu, height_px=h, camera=NO_HAZE)
    forward_grid_bearing = geo.bearing_deg_from_yaw_enu(geo.yaw_enu_to_utm(yaw_enu, lat, lon, ZONE))
    pred_cols = np.flatnonzero(np.isfinite(ray_box_entry(*centre, column_bearings_deg(forward_grid_bearing, w), box)))
    seen_cols = np.flatnonzero(is_red(img[first_row_at_or_below(20.0, h)]))
    assert abs(seen_cols[0] - pred_cols[0]) <= 1 and abs(seen_cols[-1] - pred_cols[-1]) <= 1
    ignoring = np.flatnonzero(np.isfinite(ray_box_entry(*centre, column_bearings_deg(300.0, w), box)))
    assert abs(ignoring.mean() - pred_cols.mean()) > 4  # the test can tell the difference


def test_turning_the_camera_rolls_the_panorama():
    scene = flat_scene()
    add_building(scene, (CAM_E + 20, CAM_E + 30, CAM_N + 10, CAM_N + 14), 30.0, (200, 180, 150), (40, 60, 90), 3.0, 2.0)
    add_building(scene, (CAM_E - 50, CAM_E - 42, CAM_N - 40, CAM_N - 20), 12.0, (120, 160, 200), (30, 30, 40), 3.5, 2.5)
    h, w = 256, 512
    shift = 37
    yaw0 = 0.4
    sun = Sun(150.0, 35.0)
    img0 = render_panorama(scene, CAM_E, CAM_N, yaw0, height_px=h, sun=sun)
    # turning clockwise by theta (ENU yaw decreases) shows at column c what column c + shift showed
    img1 = render_panorama(scene, CAM_E, CAM_N, yaw0 - shift * 2 * math.pi / w, height_px=h, sun=sun)
    same = np.all(img1 == np.roll(img0, -shift, axis=1), axis=2)
    assert same.mean() > 0.995
    wrong_way = np.all(img1 == np.roll(img0, shift, axis=1), axis=2)
    assert wrong_way.mean() < 0.9


def test_horizon_is_the_middle_row_at_zero_pitch():
    scene = flat_scene(ground_rgb=(200, 0, 200))
    h = 256
    img, range_m = render_panorama_with_range(scene, CAM_E, CAM_N, 1.0, height_px=h, camera=NO_HAZE, sun=Sun())
    sky = (img[..., 2] > 150) & (img[..., 1] > 100)  # pale to deep blue
    ground = img[..., 1] < 10  # magenta
    assert np.all(sky[: h // 2]) and np.all(ground[h // 2 :])
    assert np.all(np.isinf(range_m[: h // 2])) and np.all(np.isfinite(range_m[h // 2 :]))


def horizon_rows(img) -> np.ndarray:
    """Per column, the first row of the (magenta, green-free) ground."""
    return np.argmax(img[..., 1] < 75, axis=0)


def predicted_horizon_rows(h: int, w: int, level_z) -> np.ndarray:
    """First row whose pixel-centre ray points below the horizon, from level_z(el, phi)."""
    el = np.radians(row_elevations_deg(h))[:, None]
    phi = np.radians((np.arange(w) + 0.5) / w * 360.0)[None, :]
    return np.argmax(level_z(el, phi) < 0.0, axis=0)


@pytest.mark.parametrize("pitch_rows, roll_rows", [(6, 0), (-4, 0), (0, 5)])
def test_pitch_and_roll_move_the_horizon_by_the_predicted_rows(pitch_rows, roll_rows):
    scene = flat_scene(ground_rgb=(200, 0, 200))
    h, w = 256, 512
    pitch = pitch_rows * math.pi / h
    roll = roll_rows * math.pi / h
    cam = CameraConfig(pitch_rad=pitch, roll_rad=roll, haze_m=0.0)
    img = render_panorama(scene, CAM_E, CAM_N, 0.3, height_px=h, camera=cam, sun=Sun())

    # REP-103 body frame (x forward, y left, z up), level = Ry(pitch) Rx(roll) body; a pixel at
    # azimuth phi clockwise looks along body (cos el cos phi, -cos el sin phi, sin el).
    def level_z(el, phi):
        bx, by, bz = np.cos(el) * np.cos(phi), -np.cos(el) * np.sin(phi), np.sin(el)
        z1 = math.sin(roll) * by + math.cos(roll) * bz  # Rx(roll)
        return -math.sin(pitch) * bx + math.cos(pitch) * z1  # Ry(pitch)

    pred = predicted_horizon_rows(h, w, level_z)
    seen = horizon_rows(img)
    assert np.max(np.abs(seen - pred)) <= 1
    # explicitly: pitch down (> 0) raises the horizon at the forward column, roll right-down
    # (> 0) raises it at the right-hand column W/4
    assert abs(seen[0] - (h // 2 - pitch_rows)) <= 1
    assert abs(seen[w // 4] - (h // 2 - roll_rows)) <= 1


def test_ground_below_the_horizon_shows_the_albedo_at_the_predicted_distance():
    g = 0.1
    scene = flat_scene(size_m=80.0, gsd_m=g, ground_rgb=(120, 120, 120))
    n = scene.shape[0]
    centre_e = scene.origin_e_m + (np.arange(n) + 0.5) * g
    centre_n = scene.origin_n_m - (np.arange(n) + 0.5) * g
    de, dn = centre_e[None, :] - CAM_E, centre_n[:, None] - CAM_N
    dist = np.hypot(de, dn)
    bearing = np.degrees(np.arctan2(de, dn)) % 360.0
    ring = (dist >= 8.0) & (dist < 12.0)
    scene.albedo[ring] = (0, 200, 0)
    scene.albedo[ring & (bearing >= 100.0) & (bearing < 110.0)] = (220, 220, 0)

    h, w = 512, 1024
    forward = 30.0
    img = render_panorama(scene, CAM_E, CAM_N, yaw_from_bearing(forward), height_px=h, camera=NO_HAZE)

    # independent ray/plane intersection for every ground pixel centre, albedo looked up there
    el = np.radians(row_elevations_deg(h))
    rows = np.flatnonzero(el < -np.radians(0.6))
    rows = rows[2.0 / np.tan(-el[rows]) < 39.0]  # inside the 80 m scene
    bear = np.radians(column_bearings_deg(forward, w))
    t = 2.0 / np.tan(-el[rows])[:, None]
    pe, pn = CAM_E + t * np.sin(bear)[None, :], CAM_N + t * np.cos(bear)[None, :]
    r_idx, c_idx = scene.cell_of(pe, pn)
    expected = scene.albedo[r_idx, c_idx]
    got = img[rows]
    # classes: 0 grey, 4 green, 5 yellow
    cls_expected = np.where(expected[..., 1] == 120, 0, np.where(expected[..., 0] > 150, 5, 4))
    cls_got = np.where(
        (np.abs(got[..., 0].astype(int) - got[..., 1]) < 10) & (got[..., 2] > 60), 0, np.where(got[..., 0] > 150, 5, 4)
    )
    assert (cls_expected == cls_got).mean() > 0.998

    # and in plain numbers: at the sector's middle bearing 105 (75 deg right of forward) the
    # ring spans elevations -atan(2/8) .. -atan(2/12)
    col = int(75.0 / 360.0 * w)
    yellow = np.flatnonzero((img[:, col, 0] > 150) & (img[:, col, 1] > 150) & (img[:, col, 2] < 60))
    assert abs(yellow[0] - first_row_at_or_below(-math.degrees(math.atan(2.0 / 12.0)), h)) <= 1
    assert abs(yellow[-1] - (first_row_at_or_below(-math.degrees(math.atan(2.0 / 8.0)), h) - 1)) <= 1


def test_occluders_appear_at_their_bearing_and_hide_behind_walls():
    scene = flat_scene()
    box = add_building(scene, (CAM_E - 5, CAM_E + 5, CAM_N + 30, CAM_N + 34), 20.0, (220, 30, 30))
    b = math.radians(250.0)
    near = Occluder(CAM_E + 6.0 * math.sin(b), CAM_N + 6.0 * math.cos(b), 0.4, 1.8, (0, 230, 0))
    hidden = Occluder(CAM_E, CAM_N + 60.0, 1.0, 1.8, (0, 230, 0))  # behind the wall to the north
    h, w = 512, 1024
    forward = 10.0
    img = render_panorama(
        scene, CAM_E, CAM_N, yaw_from_bearing(forward), height_px=h, camera=NO_HAZE, sun=Sun(), occluders=[near, hidden]
    )
    bear = np.radians(column_bearings_deg(forward, w))
    rel_e, rel_n = near.e_m - CAM_E, near.n_m - CAM_N
    along = rel_e * np.sin(bear) + rel_n * np.cos(bear)
    perp = np.abs(rel_e * np.cos(bear) - rel_n * np.sin(bear))
    pred_cols = np.flatnonzero((perp < near.radius_m) & (along > 0))
    row = first_row_at_or_below(-10.0, h)  # z ~ 1 m on the cylinder's near side
    seen = np.flatnonzero(is_green(img[row]))
    assert abs(seen[0] - pred_cols[0]) <= 1 and abs(seen[-1] - pred_cols[-1]) <= 1
    assert np.all(np.abs(seen - pred_cols.mean()) < 0.5 * len(pred_cols) + 2)
    # the far occluder is hidden: no green anywhere around bearing 0 (columns of the wall)
    wall_cols = np.flatnonzero(np.isfinite(ray_box_entry(CAM_E, CAM_N, column_bearings_deg(forward, w), box)))
    assert not is_green(img[:, wall_cols]).any()
    assert is_red(img[:, wall_cols]).any()


def facade_brightness(scene, cam_e, cam_n, bearing_deg, sun):
    h, w = 256, 512
    img = render_panorama(scene, cam_e, cam_n, yaw_from_bearing(bearing_deg), height_px=h, camera=NO_HAZE, sun=sun)
    # the wall straight ahead: columns around forward (both ends), rows 10..30 deg up
    cols = np.r_[0:4, w - 4 : w]
    rows = np.flatnonzero((row_elevations_deg(h) > 10) & (row_elevations_deg(h) < 30))
    patch = img[np.ix_(rows, cols)].astype(float)
    assert is_red(img[np.ix_(rows, cols)]).all()
    return patch[..., 0].mean()


def test_sun_facing_wall_is_brighter_than_the_opposite_wall():
    scene = flat_scene()
    add_building(scene, (CAM_E - 6, CAM_E + 6, CAM_N + 24, CAM_N + 36), 40.0, (220, 30, 30))
    sun_south = Sun(180.0, 30.0)
    south_face = facade_brightness(scene, CAM_E, CAM_N, 0.0, sun_south)  # from the south, looking north
    north_face = facade_brightness(scene, CAM_E, CAM_N + 60.0, 180.0, sun_south)
    assert south_face > 1.3 * north_face
    # overcast: no direction is favoured
    assert facade_brightness(scene, CAM_E, CAM_N, 0.0, None) == pytest.approx(
        facade_brightness(scene, CAM_E, CAM_N + 60.0, 180.0, None), abs=1.0
    )


def test_window_rows_repeat_with_the_floor_height():
    scene = flat_scene()
    floor_m, spacing_m = 4.0, 3.0
    footprint = (CAM_E - 15, CAM_E + 15, CAM_N + 20, CAM_N + 30)
    box = add_building(scene, footprint, 60.0, (230, 230, 230), (20, 30, 120), floor_m, spacing_m)
    h = 512
    img = render_panorama(scene, CAM_E, CAM_N, yaw_from_bearing(0.0), height_px=h, camera=NO_HAZE, sun=Sun(180, 40))
    # the column looking straight at the south face
    col = 0
    dark = img[:, col].astype(int).sum(axis=1) < 300
    el = np.radians(row_elevations_deg(h))
    z = 2.0 + (box[2] - CAM_N) * np.tan(el)  # height on the wall seen by each row
    on_wall = (z > floor_m) & (z < 60.0 - 1.0)
    runs = np.flatnonzero(np.diff(dark.astype(int)) == 1) + 1  # top row of each window run
    runs = runs[on_wall[runs]]
    z_tops = z[runs]
    row_m = z[runs - 1] - z[runs]  # wall height one row spans there: the quantisation of a top
    assert len(z_tops) >= 8
    assert np.all(np.abs(np.diff(z_tops) + floor_m) <= row_m[:-1] + row_m[1:] + 0.01)


@pytest.mark.parametrize("angle_deg", [0.0, 12.0, 30.0, -25.0])
def test_wall_direction_of_a_rotated_building(angle_deg):
    """Windows follow walls that are not aligned with the raster: the renderer takes each
    building's wall direction from its footprint (private helper, checked against the angle
    the rectangle was drawn with)."""
    from crossview_ros.sim.render_walls import wall_axes as _wall_axes

    g = 0.2
    n = 400
    yy, xx = np.mgrid[0:n, 0:n]
    e, north = (xx + 0.5 - n / 2) * g, -(yy + 0.5 - n / 2) * g
    a = math.radians(angle_deg)
    along, across = e * math.cos(a) + north * math.sin(a), -e * math.sin(a) + north * math.cos(a)
    bid = np.where((np.abs(along) < 18.0) & (np.abs(across) < 9.0), 0, -1).astype(np.int32)
    got = math.degrees(float(_wall_axes(bid, 1)[0]))
    diff = (got - angle_deg + 45.0) % 90.0 - 45.0  # walls repeat every 90 deg
    assert abs(diff) < 1.0


def test_render_refuses_bad_input():
    scene = flat_scene()
    with pytest.raises(ValueError, match="outside the scene"):
        render_panorama(scene, CAM_E + 500.0, CAM_N, 0.0)
    with pytest.raises(ValueError, match="even"):
        render_panorama(scene, CAM_E, CAM_N, 0.0, height_px=33)
    with pytest.raises(ValueError, match="height_m"):
        render_panorama(scene, CAM_E, CAM_N, 0.0, camera=CameraConfig(height_m=0.0))
    with pytest.raises(ValueError, match="unknown CameraConfig keys"):
        CameraConfig.from_dict({"height": 2.0})
    assert CameraConfig.from_dict({"height_m": 1.6}).height_m == 1.6


def test_panorama_shape_and_determinism():
    scene = flat_scene()
    add_building(scene, (CAM_E + 10, CAM_E + 20, CAM_N - 5, CAM_N + 5), 15.0, (200, 180, 150), (40, 60, 90), 3.0, 2.0)
    a = render_panorama(scene, CAM_E, CAM_N, 0.1, height_px=64, sun=Sun())
    b = render_panorama(scene, CAM_E, CAM_N, 0.1, height_px=64, sun=Sun())
    assert a.shape == (64, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- appearance


def sample_image() -> np.ndarray:
    rng = np.random.default_rng(5)
    img = np.zeros((64, 96, 3), np.uint8)
    img[:, :48] = (180, 120, 60)
    img[:, 48:] = (40, 90, 160)
    img[::8] = 230
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def test_sample_appearance_is_seeded_and_views_differ():
    a1 = sample_appearance(np.random.default_rng(3), "ground")
    a2 = sample_appearance(np.random.default_rng(3), "ground")
    a3 = sample_appearance(np.random.default_rng(4), "ground")
    assert a1 == a2 and a1 != a3
    ground = [sample_appearance(np.random.default_rng(s), "ground") for s in range(200)]
    aerial = [sample_appearance(np.random.default_rng(s), "aerial") for s in range(200)]
    assert np.mean([a.noise_sigma for a in ground]) > 1.5 * np.mean([a.noise_sigma for a in aerial])
    assert np.mean([a.saturation for a in ground]) > np.mean([a.saturation for a in aerial])
    with pytest.raises(ValueError, match="view"):
        sample_appearance(np.random.default_rng(0), "oblique")
    with pytest.raises(ValueError, match="unknown appearance parts"):
        sample_appearance(np.random.default_rng(0), "ground", enabled=["fog"])


def test_disabled_parts_stay_neutral_and_enabled_ones_keep_their_draw():
    full = sample_appearance(np.random.default_rng(9), "ground")
    only_noise = sample_appearance(np.random.default_rng(9), "ground", enabled=["noise"])
    assert only_noise == Appearance(noise_sigma=full.noise_sigma)
    assert sample_appearance(np.random.default_rng(9), "aerial", enabled=()) == Appearance()


def test_apply_appearance_is_deterministic_and_identity_when_off():
    img = sample_image()
    app = sample_appearance(np.random.default_rng(1), "ground")
    out1 = apply_appearance(img, app, np.random.default_rng(7))
    out2 = apply_appearance(img, app, np.random.default_rng(7))
    out3 = apply_appearance(img, app, np.random.default_rng(8))
    assert np.array_equal(out1, out2) and not np.array_equal(out1, out3)
    assert np.array_equal(apply_appearance(img, Appearance(), np.random.default_rng(0)), img)
    assert out1.shape == img.shape and out1.dtype == np.uint8


SWITCHES = {
    "tone": Appearance(gamma=1.3, contrast=0.3),
    "white_balance": Appearance(wb_gain_rgb=(1.1, 1.0, 0.9)),
    "exposure": Appearance(exposure_ev=0.5),
    "saturation": Appearance(saturation=0.6),
    "noise": Appearance(noise_sigma=3.0),
    "blur": Appearance(blur_sigma_px=1.0),
    "jpeg": Appearance(jpeg_quality=60),
}


@pytest.mark.parametrize("part", PARTS)
def test_each_switch_changes_the_image(part):
    img = sample_image()
    out = apply_appearance(img, SWITCHES[part], np.random.default_rng(0))
    assert np.abs(out.astype(int) - img).mean() > 0.5


def test_appearance_parts_do_what_they_say():
    flat = np.full((64, 64, 3), 128, np.uint8)
    # exposure +1 EV doubles linear intensity: 128 -> 255 * (2 * (128/255)**2.2)**(1/2.2)
    up = apply_appearance(flat, Appearance(exposure_ev=1.0))
    assert np.all(np.abs(up.astype(int) - round(255 * (2 * (128 / 255) ** 2.2) ** (1 / 2.2))) <= 1)
    # white balance only scales the channels it names
    wb = apply_appearance(flat, Appearance(wb_gain_rgb=(1.2, 1.0, 1.0)))
    assert wb[0, 0, 0] > 135 and wb[0, 0, 1] == 128 and wb[0, 0, 2] == 128
    # saturation 0 is grey
    grey = apply_appearance(sample_image(), Appearance(saturation=0.0))
    assert np.all(np.abs(grey.astype(int) - grey[..., :1]) <= 1)
    # noise: std at mid-grey close to noise_sigma (8-bit levels)
    noisy = apply_appearance(np.full((256, 256, 3), 128, np.uint8), Appearance(noise_sigma=4.0), 0)
    assert noisy.astype(float).std() == pytest.approx(4.0, rel=0.1)
    # blur lowers the contrast of fine detail; stronger JPEG compression loses more
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    assert apply_appearance(checker, Appearance(blur_sigma_px=1.5)).std() < 0.5 * checker.std()
    img = sample_image()
    err = [np.abs(apply_appearance(img, Appearance(jpeg_quality=q)).astype(int) - img).mean() for q in (95, 20)]
    assert err[1] > err[0] > 0
    with pytest.raises(ValueError):
        apply_appearance(img.astype(np.float32), Appearance())


def test_season_turns_vegetation_dry_and_leaves_the_rest():
    from crossview_ros.sim.appearance import apply_season

    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = (70, 105, 48)  # tree green: greenness (105 - 70) / 105 = 0.33 > 0.15, full weight
    image[0, 1] = (150, 150, 148)  # grey roof
    image[0, 2] = (158, 84, 62)  # red roof
    image[1, 0] = (100, 104, 100)  # barely green: greenness 0.04, weight 0.04 / 0.15 of the season
    image[1, 1] = (92, 128, 62)  # grass
    image[1, 2] = (30, 55, 120)  # blue car
    assert np.array_equal(apply_season(image, 0.0), image)
    dry = apply_season(image, 1.0)
    for r, c in ((0, 1), (0, 2), (1, 2)):
        assert np.array_equal(dry[r, c], image[r, c])
    for r, c in ((0, 0), (1, 1)):  # fully dry: the pixel's luma times the straw tint
        luma = image[r, c].astype(float) @ np.array([0.2126, 0.7152, 0.0722])
        assert np.abs(dry[r, c].astype(float) - luma * np.array([1.35, 1.1, 0.55])).max() <= 1.0
        assert dry[r, c, 0] > dry[r, c, 1] > dry[r, c, 2]  # straw: red over green over blue
    half = apply_season(image, 0.5).astype(float)
    assert np.abs(half[0, 0] - (image[0, 0] + dry[0, 0].astype(float)) / 2).max() <= 1.0
    weak = (0.04 / 0.15) * 1.0
    luma = image[1, 0].astype(float) @ np.array([0.2126, 0.7152, 0.0722])
    expected = image[1, 0] + weak * (luma * np.array([1.35, 1.1, 0.55]) - image[1, 0])
    assert np.abs(dry[1, 0].astype(float) - expected).max() <= 1.0
    with pytest.raises(ValueError):
        apply_season(image, 1.5)
