"""Drives on a hand-made street graph: on the streets, plausible speeds, honest yaw, odometry."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from crossview_ros.geo import latlon_to_utm, offset_enu_m, wrap_angle_rad, yaw_enu_to_utm
from crossview_ros.sim.city import StreetGraph
from crossview_ros.sim.drive import MOTION_PRESETS, DriveConfig, plan_drive
from crossview_ros.sim.odometry import OdometryConfig, wheel_odometry

# Uppsala: 2.6 deg east of zone 33's central meridian at 60 N, so the grid convergence is
# about 2.2 deg and a yaw that forgot it is caught.
LAT0, LON0 = 59.86, 17.6


def make_graph() -> tuple[StreetGraph, object]:
    """3 x 3 blocks of 90-120 m, an avenue, a diagonal, a curved street and a dead end."""
    e0, n0, zone = latlon_to_utm(LAT0, LON0)
    xs, ys = (0.0, 110.0, 200.0), (0.0, 90.0, 210.0)
    nodes = [(x, y) for y in ys for x in xs]
    edges, width, sidewalk, lanes = [], [], [], []

    def add(a, b, w=10.0, sw=3.0, ln=1):
        edges.append((a, b))
        width.append(w)
        sidewalk.append(sw)
        lanes.append(ln)

    for j in range(3):
        for i in range(3):
            k = 3 * j + i
            if i < 2:  # the middle east-west street is a wide avenue
                add(k, k + 1, *((16.0, 4.0, 2) if j == 1 else (10.0, 3.0, 1)))
            if j < 2:
                add(k, k + 3)
    add(0, 4, 9.0, 2.5, 1)  # diagonal
    # curved street from node 2 to node 8, bulging east, as a polyline
    chain = [2]
    for a in np.linspace(-math.pi / 2, math.pi / 2, 11)[1:-1]:
        nodes.append((200.0 + 70.0 * math.cos(a), 105.0 + 105.0 * math.sin(a)))
        chain.append(len(nodes) - 1)
    chain.append(8)
    for a, b in zip(chain[:-1], chain[1:]):
        add(a, b, 8.0, 2.0, 1)
    nodes.append((-60.0, 90.0))  # dead end off node 3
    add(3, len(nodes) - 1, 8.0, 2.0, 1)
    g = StreetGraph(
        nodes_en=np.asarray(nodes) + [e0, n0],
        edges=np.asarray(edges, dtype=np.int64),
        width_m=np.asarray(width),
        sidewalk_m=np.asarray(sidewalk),
        lanes=np.asarray(lanes, dtype=np.int64),
    )
    return g, zone


def edge_geometry(g: StreetGraph, p: np.ndarray):
    """Per point and edge: distance to the segment, and the parameter of the closest point."""
    a = g.nodes_en[g.edges[:, 0]]
    ab = g.nodes_en[g.edges[:, 1]] - a
    ap = p[:, None, :] - a[None]
    t = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None, :] - closest, axis=-1), t


GRAPH, ZONE = make_graph()


@pytest.fixture(scope="module", params=["walk", "drive"])
def drive(request):
    return plan_drive(
        GRAPH, ZONE, DriveConfig(mode=request.param, duration_s=400.0, rate_hz=10.0, seed=7)
    )


def test_drive_stays_on_the_street_network(drive):
    tr = drive.track
    p = np.stack([tr.easting_m, tr.northing_m], axis=1)[::2]
    dist, _ = edge_geometry(GRAPH, p)
    limit = 0.5 * GRAPH.width_m + GRAPH.sidewalk_m
    # every point is within the road + sidewalk corridor of some street
    assert np.all(np.any(dist <= limit[None] + 1e-6, axis=1))
    # and the drive covers ground: it is not stuck on one street
    assert np.unique(np.argmin(dist, axis=1)).size >= 5


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", ["walk", "drive"])
def test_offset_to_traffic_side_mid_block(mode, side):
    duration = 900.0 if mode == "walk" else 300.0
    d = plan_drive(
        GRAPH, ZONE, DriveConfig(mode=mode, duration_s=duration, seed=3, traffic_side=side)
    )
    tr = d.track
    p = np.stack([tr.easting_m, tr.northing_m], axis=1)[::5]
    dist, t = edge_geometry(GRAPH, p)
    k = np.argmin(dist, axis=1)
    seg_len = np.linalg.norm(np.diff(GRAPH.nodes_en[GRAPH.edges], axis=1)[:, 0], axis=1)
    row = np.arange(len(p))
    # well inside long straight blocks, away from corner rounding
    mid = (
        (seg_len[k] > 80.0)
        & (t[row, k] * seg_len[k] > 35.0)
        & ((1.0 - t[row, k]) * seg_len[k] > 35.0)
    )
    assert mid.sum() > 50
    a = GRAPH.nodes_en[GRAPH.edges[k, 0]]
    closest = a + t[row, k][:, None] * (GRAPH.nodes_en[GRAPH.edges[k, 1]] - a)
    yaw = tr.yaw_grid_rad[::5]
    left = np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
    lateral = np.sum((p - closest) * left, axis=1)[mid]  # + = left of the direction of travel
    w, sw, ln = GRAPH.width_m[k][mid], GRAPH.sidewalk_m[k][mid], GRAPH.lanes[k][mid]
    expected = 0.5 * w + 0.5 * sw if mode == "walk" else 0.5 * w / (2 * ln)
    sign = -1.0 if side == "right" else 1.0
    np.testing.assert_allclose(lateral, sign * expected, atol=0.05)


def test_speeds_are_plausible(drive):
    motion = MOTION_PRESETS[drive.config.mode]
    lo, hi = motion.speed_range_mps
    v = drive.track.speed_mps
    assert v[0] == 0.0 and np.all(v >= 0.0) and v.max() <= hi + 1e-9
    assert lo * 0.8 <= np.mean(drive.speed_mps) <= hi
    # speed from positions, independent of the stored speed
    step = np.hypot(np.diff(drive.easting_m), np.diff(drive.northing_m)) * drive.config.rate_hz
    assert step.max() <= hi * 1.01
    # accelerations and braking within the limits
    dv = np.diff(v) / np.diff(drive.track.t_s)
    assert dv.max() <= motion.accel_mps2 * 1.05 and dv.min() >= -motion.decel_mps2 * 1.05


def test_yaw_rate_limited_and_slow_in_turns(drive):
    motion = MOTION_PRESETS[drive.config.mode]
    yaw_rate = wrap_angle_rad(np.diff(drive.yaw_enu_rad)) * drive.config.rate_hz
    assert np.abs(yaw_rate).max() <= motion.yaw_rate_radps * 1.05
    turning = np.abs(drive.yaw_rate_radps) > 0.3 * motion.yaw_rate_radps
    straight = np.abs(drive.yaw_rate_radps) < 0.01
    assert turning.sum() > 10 and straight.sum() > 10
    assert np.median(drive.speed_mps[turning]) < 0.8 * np.median(drive.speed_mps[straight])


def test_cars_slow_down_at_intersections():
    d = plan_drive(
        GRAPH,
        ZONE,
        DriveConfig(mode="drive", duration_s=400.0, rate_hz=10.0, seed=11, speed_mps=11.0),
    )
    degree = np.bincount(GRAPH.edges.ravel())
    crossing = GRAPH.nodes_en[degree >= 3]
    p = np.stack([d.easting_m, d.northing_m], axis=1)
    near = np.linalg.norm(p[:, None] - crossing[None], axis=-1).min(axis=1) < 8.0
    cap = MOTION_PRESETS["drive"].intersection_speed_mps
    assert near.sum() > 10
    assert d.speed_mps[near].max() <= cap + 1e-6 and d.speed_mps[~near].max() > 10.0


def test_yaw_follows_the_direction_of_motion(drive):
    # direction of motion in true ENU from consecutive lat/lon, not from UTM
    de, dn = offset_enu_m(
        drive.lat_deg[:-1], drive.lon_deg[:-1], drive.lat_deg[1:], drive.lon_deg[1:]
    )
    motion = np.arctan2(dn, de)
    moving = drive.speed_mps[:-1] > 0.5
    mid_yaw = drive.yaw_enu_rad[:-1] + 0.5 * wrap_angle_rad(np.diff(drive.yaw_enu_rad))
    err = np.degrees(np.abs(wrap_angle_rad(motion - mid_yaw)))[moving]
    assert moving.sum() > 100
    assert np.percentile(err, 99) < 0.3 and err.max() < 1.0


def test_lat_lon_match_utm(drive):
    e, n, _ = latlon_to_utm(drive.lat_deg, drive.lon_deg, ZONE)
    np.testing.assert_allclose(e, drive.easting_m, atol=1e-6)
    np.testing.assert_allclose(n, drive.northing_m, atol=1e-6)
    np.testing.assert_allclose(np.diff(drive.stamp_s), 1.0 / drive.config.rate_hz, atol=1e-6)
    assert len(drive) == 4001


def test_same_seed_same_arrays_different_seed_differs():
    cfg = DriveConfig(mode="drive", duration_s=60.0, seed=5)
    a, b = plan_drive(GRAPH, ZONE, cfg), plan_drive(GRAPH, ZONE, cfg)
    c = plan_drive(GRAPH, ZONE, DriveConfig(mode="drive", duration_s=60.0, seed=6))
    for name in ("stamp_s", "easting_m", "northing_m", "yaw_enu_rad", "speed_mps", "lat_deg"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(a.easting_m, c.easting_m)
    oa, ob = wheel_odometry(a, 1), wheel_odometry(a, 1)
    np.testing.assert_array_equal(oa.x_m, ob.x_m)
    np.testing.assert_array_equal(oa.pose_cov, ob.pose_cov)


def test_dead_end_turns_back_and_single_street_works():
    g = StreetGraph(
        np.array([[500000.0, 6600000.0], [500080.0, 6600000.0]]),
        np.array([[0, 1]]),
        np.array([10.0]),
        np.array([3.0]),
        np.array([1]),
    )
    d = plan_drive(g, "33N", DriveConfig(mode="walk", duration_s=200.0, seed=0))
    dist, _ = edge_geometry(g, np.stack([d.track.easting_m, d.track.northing_m], axis=1))
    assert dist.max() <= 8.0 + 1e-6
    assert np.cos(d.yaw_enu_rad).max() > 0.99 and np.cos(d.yaw_enu_rad).min() < -0.99  # both ways


def test_config_validation():
    with pytest.raises(ValueError, match="unknown DriveConfig keys"):
        DriveConfig.from_dict({"mode": "walk", "sped": 1.0})
    with pytest.raises(ValueError, match="mode"):
        DriveConfig(mode="fly")
    assert DriveConfig.from_dict(DriveConfig(mode="drive").to_dict()) == DriveConfig(mode="drive")


def _odometry_in_utm(drive, odo):
    """Odometry poses mapped into UTM through the first true pose (the odom frame's origin)."""
    yaw0 = float(
        yaw_enu_to_utm(drive.yaw_enu_rad[0], drive.lat_deg[0], drive.lon_deg[0], drive.zone)
    )
    c, s = math.cos(yaw0), math.sin(yaw0)
    return (
        drive.easting_m[0] + c * odo.x_m - s * odo.y_m,
        drive.northing_m[0] + s * odo.x_m + c * odo.y_m,
    )


def test_noise_free_odometry_reproduces_the_drive():
    d = plan_drive(GRAPH, ZONE, DriveConfig(mode="drive", duration_s=120.0, seed=2))
    odo = wheel_odometry(
        d,
        0,
        OdometryConfig(
            rate_hz=50.0,
            speed_scale_sigma=0.0,
            speed_noise_mps=0.0,
            yaw_rate_bias_sigma_radps=0.0,
            yaw_rate_noise_radps=0.0,
            yaw_rate_scale_sigma=0.0,
        ),
    )
    assert len(odo) == 120 * 50 + 1 and odo.x_m[0] == 0.0 and odo.yaw_rad[0] == 0.0
    truth = d.sample(odo.stamp_s)
    e, n = _odometry_in_utm(d, odo)
    err = np.hypot(e - truth["easting_m"], n - truth["northing_m"])
    assert (
        truth["distance_m"][-1] > 500.0
        and err.max() < 0.02 * truth["distance_m"][-1]
        and err.max() < 3.0
    )


def test_odometry_drift_grows_with_distance():
    errors = []
    for seed in range(4):
        d = plan_drive(GRAPH, ZONE, DriveConfig(mode="drive", duration_s=240.0, seed=seed))
        odo = wheel_odometry(d, 100 + seed, OdometryConfig(rate_hz=20.0))
        truth = d.sample(odo.stamp_s)
        e, n = _odometry_in_utm(d, odo)
        err = np.hypot(e - truth["easting_m"], n - truth["northing_m"])
        quarter = np.searchsorted(
            truth["distance_m"], truth["distance_m"][-1] * np.array([0.25, 0.5, 1.0]) - 1e-9
        )
        errors.append([np.abs(err[: quarter[0]]).mean(), err[quarter[1] :].mean()])
        cov = odo.pose_cov
        assert np.all(np.diff(cov[:, 2, 2]) > 0.0)  # yaw variance grows every step
        pos_var = cov[:, 0, 0] + cov[:, 1, 1]
        # position variance may shrink when the drive heads back (a yaw error then cancels),
        # but over the drive it grows
        assert pos_var[-1] > pos_var[len(pos_var) // 10] > 0.0
    errors = np.asarray(errors)
    assert np.all(errors[:, 1] > errors[:, 0])  # farther -> larger error, in every drive
    assert errors[:, 1].mean() > 3.0 * errors[:, 0].mean()


# --------------------------------------------------------------------------- scene bounds


def _margin_to_bounds(bounds, e, n):
    e0, n0, e1, n1 = bounds
    return np.minimum.reduce([e - e0, e1 - e, n - n0, n1 - n])


@pytest.mark.parametrize("mode", ["walk", "drive"])
def test_drives_stay_inside_a_small_city(mode):
    # Regression: a 500 m city's street graph is cut at the city edge, so streets end in
    # dead-end nodes on it; walks turned around those ends (and sidewalks of streets along the
    # edge) up to ~12 m outside the scene, and rendering the panorama there failed. Seeds 0, 2,
    # 4, 5 of a 150 s walk used to leave the scene.
    from crossview_ros.sim.city import CityConfig, generate_city

    city = generate_city(CityConfig(size_m=500.0, seed=0))  # layout only, no rasters
    g = city.streets
    size = city.size_px * city.gsd_m  # the scene's extent, as render.py checks it
    assert g.bounds_en == pytest.approx(
        (city.origin_e_m, city.origin_n_m - size, city.origin_e_m + size, city.origin_n_m)
    )
    margin = DriveConfig().edge_margin_m
    assert margin >= 1.0
    for seed in range(6):
        d = plan_drive(g, city.zone, DriveConfig(mode=mode, duration_s=150.0, seed=seed))
        for e, n in ((d.easting_m, d.northing_m), (d.track.easting_m, d.track.northing_m)):
            inside = _margin_to_bounds(g.bounds_en, e, n)
            assert inside.min() >= margin - 1e-6, (mode, seed, inside.min())
        assert d.distance_m[-1] > 50.0  # it did not get stuck: clipping left a usable network


def test_bounds_clip_streets_that_leave_the_scene():
    # GRAPH cut by a box just east of x = 110 m: the east column and the curved street end
    # at the box (dead ends there), the 3 m margin is kept, and the drive still turns corners.
    e0, n0 = GRAPH.nodes_en[0]
    bounds = (e0 - 70.0, n0 - 10.0, e0 + 140.0, n0 + 220.0)
    g = dataclasses.replace(GRAPH, bounds_en=bounds)
    for mode in ("walk", "drive"):
        free = plan_drive(GRAPH, ZONE, DriveConfig(mode=mode, duration_s=300.0, seed=1))
        assert _margin_to_bounds(bounds, free.track.easting_m, free.track.northing_m).min() < 0.0
        for seed in range(3):
            cfg = DriveConfig(mode=mode, duration_s=300.0, seed=seed, edge_margin_m=3.0)
            d = plan_drive(g, ZONE, cfg)
            inside = _margin_to_bounds(bounds, d.track.easting_m, d.track.northing_m)
            assert inside.min() >= 3.0 - 1e-6
            p = np.stack([d.track.easting_m, d.track.northing_m], axis=1)[::4]
            dist, _ = edge_geometry(GRAPH, p)
            limit = 0.5 * GRAPH.width_m + GRAPH.sidewalk_m
            assert np.all(np.any(dist <= limit[None] + 1e-6, axis=1))  # still on the streets
    # no street fits: a clear error, not a drive through the void
    tiny = dataclasses.replace(GRAPH, bounds_en=(e0 - 5.0, n0 - 5.0, e0 + 5.0, n0 + 5.0))
    with pytest.raises(ValueError, match="bounds_en"):
        plan_drive(tiny, ZONE, DriveConfig(mode="walk", duration_s=30.0))
    with pytest.raises(ValueError, match="edge_margin_m"):
        DriveConfig(edge_margin_m=-1.0)
