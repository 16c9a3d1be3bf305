"""Odometry for the track (crossview_ros.odometry): interpolation, the motion between frames in the body
frame, the odom frame's alignment with the grid, and the grid displacement, against values worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.matchers.bev_grid import Belief
from crossview_ros.odometry import (
    ODOM_BUFFER_S, ODOM_FLOOR_SIGMA_M, ODOM_LEAD_S, ODOM_SCALE_SIGMA, CarriedEstimate, GridOdometry, OdomAlignment,
    OdometryBuffer, pose_variance_m2,
)


def cov36(var_xy: float) -> list[float]:
    c = np.zeros(36)
    c[0] = c[7] = var_xy
    return c.tolist()


def test_pose_is_interpolated_between_messages_and_yaw_goes_the_short_way():
    buf = OdometryBuffer(max_age_s=0.5)
    assert buf.add(10.0, 0.0, 0.0, math.radians(170.0), cov36(0.0)) is None
    assert buf.add(10.2, 2.0, 4.0, math.radians(-170.0), cov36(0.4)) is None  # +20 deg across the +-180 seam
    p = buf.pose_at(10.05)
    assert (p.x_m, p.y_m) == pytest.approx((0.5, 1.0))
    assert p.yaw_rad == pytest.approx(math.radians(175.0))  # not through 0
    assert p.variance_m2 == pytest.approx(0.1)
    assert buf.pose_at(10.6).x_m == 2.0  # the newest, up to max_age_s after it
    assert buf.pose_at(10.71) is None and buf.pose_at(9.99) is None


def test_motion_is_in_the_body_frame_of_the_first_stamp():
    buf = OdometryBuffer(max_age_s=0.5)
    # facing +y in the odom frame, then 3 m along +y and 1 m along -x: 3 m forward, 1 m to the left
    buf.add(0.0, 5.0, 5.0, math.pi / 2, cov36(0.01))
    buf.add(0.5, 4.0, 8.0, math.pi / 2 + 0.3, cov36(0.05))
    m = buf.motion(0.0, 0.5)
    assert (m.forward_m, m.left_m) == pytest.approx((3.0, 1.0))
    assert m.dyaw_rad == pytest.approx(0.3)
    d = math.sqrt(10.0)
    assert m.variance_m2 == pytest.approx(0.04 + (ODOM_SCALE_SIGMA * d) ** 2 + ODOM_FLOOR_SIGMA_M ** 2)
    assert buf.motion(0.0, 5.0) is None  # no odometry at the second stamp


def test_bad_and_late_messages_are_refused_and_a_restart_starts_over():
    buf = OdometryBuffer(max_age_s=0.5)
    assert "finite" in buf.add(1.0, float("nan"), 0.0, 0.0)
    assert buf.add(1.0, 0.0, 0.0, 0.0) is None
    assert "not after" in buf.add(0.9, 1.0, 0.0, 0.0)  # jitter: ignored, the buffer is kept
    assert len(buf) == 1
    assert buf.add(0.5 - 100.0, 7.0, 0.0, 0.0) is None  # a bag played again from its start
    assert len(buf) == 1 and buf.pose_at(-99.5).x_m == 7.0
    assert pose_variance_m2([1.0] * 35) == 0.0 and pose_variance_m2(None) == 0.0


def test_a_gap_in_the_odometry_is_not_interpolated_over():
    buf = OdometryBuffer(max_age_s=0.5)
    buf.add(0.0, 0.0, 0.0, 0.0)
    buf.add(3.0, 9.0, 0.0, 0.0)
    assert buf.pose_at(1.5) is None
    assert buf.pose_at(3.0).x_m == 9.0


def test_alignment_is_the_mode_of_the_votes_and_ignores_a_flipped_minority():
    rng = np.random.default_rng(0)
    al = OdomAlignment(window=40, min_votes=4, min_share=0.6, require_course=False)
    for _ in range(3):
        al.vote(0.7)
    assert al.offset() is None  # too few votes
    true = 0.7
    for k in range(30):
        flipped = k % 5 == 0  # 20 % of the bearings point the other way
        al.vote(true + (math.pi if flipped else 0.0) + rng.normal(0, math.radians(3)))
    offset, sigma = al.offset()
    assert abs(math.remainder(offset - true, 2 * math.pi)) < math.radians(2)
    assert math.radians(0.5) < sigma < math.radians(3)
    needs_course = OdomAlignment(require_course=True)  # bearings alone never align (they agree on a flip too)
    for _ in range(10):
        needs_course.vote(0.7)
    assert needs_course.offset() is None
    needs_course.vote(0.72, course=True)
    assert needs_course.offset()[0] == pytest.approx(0.7, abs=0.01)
    split = OdomAlignment(min_votes=4, min_share=0.6, require_course=False)
    for k in range(20):
        split.vote(0.0 if k % 2 else math.pi)  # half and half: no alignment
    assert split.offset() is None


def test_grid_motion_turns_the_displacement_by_the_alignment():
    odo = GridOdometry(max_age_s=1.0)
    odo.add(0.0, 0.0, 0.0, 0.0, cov36(0.0))
    odo.add(1.0, 2.0, 0.0, 0.0, cov36(0.0))  # 2 m straight ahead in the odom frame
    m = odo.motion_grid(0.0, 1.0)
    assert not m.direction_known and (m.east_m, m.north_m) == (0.0, 0.0)
    assert m.variance_m2 == pytest.approx(4.0 + (ODOM_SCALE_SIGMA * 2) ** 2 + ODOM_FLOOR_SIGMA_M ** 2)
    for _ in range(6):  # the frames see the robot facing grid north while odometry says yaw 0
        odo.vote_bearing(0.5, math.pi / 2)
    m = odo.motion_grid(0.0, 1.0)
    assert m.direction_known
    assert (m.east_m, m.north_m) == pytest.approx((0.0, 2.0), abs=1e-9)
    sigma = odo.alignment.offset()[1]
    assert m.variance_m2 == pytest.approx((ODOM_SCALE_SIGMA * 2) ** 2 + ODOM_FLOOR_SIGMA_M ** 2 + (2 * sigma) ** 2)
    assert odo.carry(500.0, 900.0, 0.0, 1.0) == pytest.approx((500.0, 902.0, m.variance_m2))  # a fix moved on
    assert odo.carry(500.0, 900.0, 1.0, 0.0) is None  # only forwards in time
    odo.reset()
    assert not odo.motion_grid(0.0, 1.0).direction_known
    assert odo.carry(500.0, 900.0, 0.0, 1.0) is None  # the length alone says nowhere to go


def test_a_carried_estimate_adds_the_displacement_and_its_variance_within_its_age():
    odo = GridOdometry(max_age_s=1.0)
    odo.add(0.0, 0.0, 0.0, 0.0, cov36(0.0))
    odo.add(1.0, 2.0, 0.0, 0.0, cov36(0.0))
    published = CarriedEstimate(0.0, 500.0, 900.0, 0.25)
    assert published.at(odo, 1.0, 30.0) is None  # odom frame not aligned with the grid yet
    for _ in range(6):
        odo.vote_bearing(0.5, math.pi / 2)
    moved = odo.motion_grid(0.0, 1.0)
    assert published.at(odo, 1.0, 30.0) == pytest.approx((500.0, 902.0, 0.25 + moved.variance_m2))
    assert published.at(odo, 1.0, 0.5) is None  # older than max_age_s
    assert published.at(odo, 0.0, 30.0) is None  # not later


def test_the_buffer_keeps_what_the_checks_look_back_over():
    """An estimate carried 90 s at 1 m/s east (odometry ODOM_LEAD_S past it, as it may run ahead of the frames):
    the default buffer (ODOM_BUFFER_S, 60 s) has forgotten where it started; one built for a 90 s look-back
    (imagery_track_s 90, LocalizerConfig.odometry_look_back_s) carries it 90 m."""
    def carried(look_back_s: float):
        odo = GridOdometry(max_age_s=1.0, look_back_s=look_back_s)
        for t in range(96):
            odo.add(float(t), float(t), 0.0, 0.0, cov36(0.0))
        for _ in range(6):
            odo.vote_bearing(50.0, 0.0)
        return CarriedEstimate(0.0, 500.0, 900.0, 0.25).at(odo, 90.0, 120.0)

    assert ODOM_BUFFER_S == 60.0 and ODOM_LEAD_S == 5.0
    assert carried(0.0) is None
    assert carried(LocalizerConfig(imagery_track_s=90.0).odometry_look_back_s)[:2] == pytest.approx((590.0, 900.0))
    assert LocalizerConfig().odometry_look_back_s == 60.0  # imagery_track_s; fix_overrule_s 30; MOTION 2 x 3 s


def test_prediction_moves_the_belief_by_the_odometry_shift():
    log_p = np.full((30, 30), -np.inf)
    log_p[10, 12] = 0.0
    b = Belief(log_p, corner_e_m=500.0, corner_n_m=900.0, spacing_m=2.0)
    e0, n0 = 500.0 + 12 * 2.0, 900.0 - 10 * 2.0
    still, moved = b.predict(1.0, 0.01), b.predict(1.0, 0.01, 3.0, -5.0)
    np.testing.assert_array_equal(still.weights, moved.weights)
    assert float(moved.log_density(np.array(e0 + 3.0), np.array(n0 - 5.0))) == pytest.approx(
        float(still.log_density(np.array(e0), np.array(n0))))
    with pytest.raises(ValueError, match="finite shift"):
        b.predict(1.0, 0.01, float("nan"), 0.0)


def test_course_votes_align_the_odom_frame_and_keep_their_sources_apart():
    """Positions 20 m of odometry travel apart vote for the alignment with the direction of their
    displacement: the odom frame's x axis runs grid north here, so the offset is +90 deg. Each source
    keeps its own anchors; too uncertain a course (VIGOR's +-100 m fixes) does not vote."""
    def run(sources: tuple[tuple[str, float], ...]) -> GridOdometry:
        odo = GridOdometry(max_age_s=1.0)
        for k in range(81):  # 1 m/s along odom x, a position every 5 s (as they come: the buffer keeps 60 s)
            odo.add(float(k), float(k), 0.0, 0.0)
            for name, sigma_m in sources if k % 5 == 0 else ():  # the positions move grid north
                odo.vote_course(float(k), 500.0, 1000.0 + k, sigma_m, source=name)
        return odo

    offset, _ = run((("gnss", 1.0),)).alignment.offset()  # 4 votes: 20, 40, 60 and 80 m
    assert offset == pytest.approx(math.pi / 2, abs=1e-6)
    assert run((("vague", 60.0),)).alignment.offset() is None
    both, _ = run((("gnss", 1.0), ("vague", 60.0))).alignment.offset()
    assert both == pytest.approx(math.pi / 2, abs=1e-6)
