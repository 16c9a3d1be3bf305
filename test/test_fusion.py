"""The replay's planar EKF (crossview_ros.fusion) on numbers one can check by hand: the 1-D Kalman
recursion, dead reckoning at constant velocity, Mahalanobis gating, yaw wrap-around, and reading
config/ekf.yaml so the shipped robot_localization set-up and the evaluated filter agree."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from crossview_ros import fusion as F

CONFIG = Path(__file__).resolve().parents[1] / "config" / "ekf.yaml"
UNOBSERVED = 1e6


def pose_cov(var_xy: float, var_yaw: float = UNOBSERVED) -> np.ndarray:
    return np.diag([var_xy, var_xy, UNOBSERVED, UNOBSERVED, UNOBSERVED, var_yaw]).ravel()


def twist_cov(var_v: float = 1e-4, var_w: float = 1e-4) -> np.ndarray:
    return np.diag([var_v, var_v, UNOBSERVED, UNOBSERVED, UNOBSERVED, var_w]).ravel()


def config(q_xy: float = 0.0, p0: tuple = (1e8, 1e8, 0.0, 0.0, 0.0, 0.0), x0=(0.0,) * 6,
           pose_vars=("x", "y"), threshold: float = math.inf) -> F.FusionConfig:
    """Process noise only on x and y (q_xy per second), so x and y follow the scalar Kalman recursion."""
    return F.FusionConfig(process_noise_per_s=np.diag([q_xy, q_xy, 0.0, 0.0, 0.0, 0.0]),
                          initial_covariance=np.diag(p0), initial_state=np.asarray(x0, float),
                          pose=F.SensorConfig(tuple(pose_vars), threshold))


def test_repeated_positions_at_one_stamp_give_the_mean_and_variance_r_over_n():
    """No time passes, so no process noise: n measurements of variance R -> mean, R / n."""
    ekf = F.PlanarEKF(config())
    z = [3.0, 5.0, 4.0, 8.0]
    for k, value in enumerate(z):
        result = ekf.update(F.pose_with_covariance(10.0, value, -value, 0.0, pose_cov(4.0)))
        assert result.accepted
        assert result.mahalanobis_d2 == (0.0 if k == 0 else pytest.approx(result.mahalanobis_d2))
    assert ekf.state[0] == pytest.approx(np.mean(z), abs=1e-9)
    assert ekf.state[1] == pytest.approx(-np.mean(z), abs=1e-9)
    assert ekf.covariance[0, 0] == pytest.approx(4.0 / len(z), rel=1e-9)
    assert ekf.covariance[1, 1] == pytest.approx(4.0 / len(z), rel=1e-9)


def test_static_state_with_process_noise_matches_the_closed_form_1d_kalman():
    """x static, measured once a second with R = 9, Q = 0.5 m^2/s: P- = P + q dt, K = P- / (P- + R)."""
    q, r = 0.5, 9.0
    rng = np.random.default_rng(3)
    z = 7.0 + rng.normal(0.0, 3.0, 200)
    ekf = F.PlanarEKF(config(q_xy=q))
    x_ref = p_ref = None
    for k, value in enumerate(z):
        ekf.update(F.pose_with_covariance(float(k), float(value), 0.0, 0.0, pose_cov(r)))
        if k == 0:  # the first measurement initialises (robot_localization's rule)
            x_ref, p_ref = value, r
        else:
            p_pred = p_ref + q * 1.0
            gain = p_pred / (p_pred + r)
            x_ref, p_ref = x_ref + gain * (value - x_ref), (1.0 - gain) * p_pred
        assert ekf.state[0] == pytest.approx(x_ref, abs=1e-9)
        assert ekf.covariance[0, 0] == pytest.approx(p_ref, rel=1e-9)
    # Steady state of the scalar Riccati equation: P = (-q + sqrt(q^2 + 4 q r)) / 2 (posterior).
    p_inf = (-q + math.sqrt(q * q + 4.0 * q * r)) / 2.0
    assert ekf.covariance[0, 0] == pytest.approx(p_inf, rel=1e-6)
    assert abs(ekf.state[0] - 7.0) < 3.0 * math.sqrt(p_inf)


def test_static_state_without_process_noise_converges_to_the_sample_mean():
    """With Q = 0 the filter is the running average: mean of all, variance R / n."""
    rng = np.random.default_rng(0)
    z = 12.0 + rng.normal(0.0, 2.0, 500)
    ekf = F.PlanarEKF(config(q_xy=0.0))
    for k, value in enumerate(z):
        ekf.update(F.pose_with_covariance(0.1 * k, float(value), 0.0, 0.0, pose_cov(4.0)))
    assert ekf.state[0] == pytest.approx(z.mean(), abs=1e-9)
    assert ekf.covariance[0, 0] == pytest.approx(4.0 / z.size, rel=1e-9)


@pytest.mark.parametrize("yaw", [0.0, math.pi / 2, -2.5])
def test_constant_velocity_from_odometry_only_integrates_v_times_t(yaw):
    """2 m/s forward for 10 s from the origin along yaw: 20 m, whatever the heading. The velocities
    start unknown (variance 1e8), so the first twist sets them."""
    cfg = config(p0=(1e-9, 1e-9, 1e-9, 1e8, 1e8, 1e8), x0=(0.0, 0.0, yaw, 0.0, 0.0, 0.0))
    ekf = F.PlanarEKF(cfg)
    ekf.initialized = True  # the pose is known (initial_state): odometry only moves it
    ekf.position_known = True
    for k in range(101):  # 10 Hz for 10 s
        assert ekf.update(F.odometry_twist(0.1 * k, 2.0, 0.0, 0.0, twist_cov())).accepted
    x, y, yaw_out, vx, vy, vyaw = ekf.state
    assert (x, y) == (pytest.approx(20.0 * math.cos(yaw), abs=1e-9), pytest.approx(20.0 * math.sin(yaw), abs=1e-9))
    assert yaw_out == pytest.approx(yaw) and vx == pytest.approx(2.0) and vy == 0.0 and vyaw == 0.0


def test_fuse_track_dead_reckons_a_straight_line_after_the_first_pose():
    """The first pose sets the start; odometry alone carries it on at v t; queries read the state."""
    ms = [F.pose_with_covariance(0.0, 100.0, 50.0, math.pi / 2, pose_cov(1e-6, 1e-6))]
    ms += [F.odometry_twist(0.02 * k, 1.5, 0.0, 0.0, twist_cov(1e-6, 1e-6)) for k in range(501)]
    cfg = config(p0=(1e8, 1e8, 1e8, 1e8, 1e8, 1e8), pose_vars=("x", "y", "yaw"))
    track = F.fuse_track(ms, [0.0, 4.0, 10.0], cfg)
    assert track.x_m == pytest.approx([100.0, 100.0, 100.0], abs=1e-6)
    assert track.y_m == pytest.approx([50.0, 56.0, 65.0], abs=1e-6)
    assert track.accepted == {"odom": 501, "pose": 1, "gnss": 0, "heading": 0}


def test_query_before_any_position_is_nan():
    ms = [F.odometry_twist(0.0, 1.0, 0.0, 0.0, twist_cov()),
          F.pose_with_covariance(2.0, 5.0, 5.0, 0.0, pose_cov(1.0))]
    track = F.fuse_track(ms, [1.0, 2.0], config())
    assert math.isnan(track.x_m[0]) and track.x_m[1] == pytest.approx(5.0)


def test_outlier_pose_beyond_the_threshold_is_rejected_and_changes_nothing():
    cfg = config(threshold=5.0)
    ekf = F.PlanarEKF(cfg)
    for _ in range(4):
        ekf.update(F.pose_with_covariance(0.0, 0.0, 0.0, 0.0, pose_cov(4.0)))
    # P = 1 (4 / 4), R = 4: S = 5 per axis. d^2 = 24.9 / 5 < 25 passes, 25.1 / 5 >= 25 ... check both sides.
    before_x, before_p = ekf.state.copy(), ekf.covariance.copy()
    far = ekf.update(F.pose_with_covariance(0.0, 100.0, 0.0, 0.0, pose_cov(4.0)))
    assert not far.accepted and far.mahalanobis_d2 == pytest.approx(100.0 ** 2 / 5.0)
    assert np.array_equal(ekf.state, before_x) and np.array_equal(ekf.covariance, before_p)
    edge = math.sqrt(25.0 * 5.0)  # d^2 exactly threshold^2: robot_localization rejects (>=)
    assert not ekf.update(F.pose_with_covariance(0.0, edge + 1e-9, 0.0, 0.0, pose_cov(4.0))).accepted
    inside = ekf.update(F.pose_with_covariance(0.0, edge - 1e-3, 0.0, 0.0, pose_cov(4.0)))
    assert inside.accepted and inside.mahalanobis_d2 < 25.0
    assert ekf.state[0] == pytest.approx((edge - 1e-3) * 1.0 / 5.0)  # K = P / S = 1 / 5


def test_fuse_track_counts_rejections_per_input():
    ms = [F.pose_with_covariance(float(k), 0.0, 0.0, 0.0, pose_cov(1.0)) for k in range(5)]
    ms.append(F.pose_with_covariance(5.0, 500.0, 0.0, 0.0, pose_cov(1.0)))
    track = F.fuse_track(ms, [5.0], config(q_xy=0.05, threshold=5.0))
    assert track.accepted["pose"] == 5 and track.rejected["pose"] == 1
    assert abs(track.x_m[0]) < 1.0


def test_yaw_innovation_wraps_at_plus_minus_pi():
    """State yaw 3.1 rad, measured -3.1 rad: the error is 0.083 rad across pi, not 6.2 rad."""
    cfg = config(p0=(1e8, 1e8, 1.0, 1e-9, 1e-9, 1e-9), x0=(0.0, 0.0, 3.1, 0.0, 0.0, 0.0),
                 pose_vars=("x", "y", "yaw"), threshold=3.0)
    ekf = F.PlanarEKF(cfg)
    ekf.initialized = True
    result = ekf.update(F.pose_with_covariance(0.0, 0.0, 0.0, -3.1, pose_cov(1.0, 1.0)))
    gap = 2.0 * math.pi - 6.2
    assert result.accepted
    assert result.mahalanobis_d2 == pytest.approx(gap ** 2 / 2.0)  # P_yaw + R_yaw = 2
    assert abs(ekf.state[2]) == pytest.approx(math.pi, abs=1e-3)  # half-way: 3.1 + 0.0416 = pi + 0.0001
    assert -math.pi < ekf.state[2] <= math.pi
    assert ekf.covariance[2, 2] == pytest.approx(0.5)


def test_prediction_wraps_yaw_past_pi():
    cfg = config(p0=(1e-9,) * 6, x0=(0.0, 0.0, 3.0, 0.0, 0.0, 0.5))
    ekf = F.PlanarEKF(cfg)
    ekf.initialized = ekf.position_known = True
    ekf.predict_to(0.0)
    ekf.predict_to(1.0)
    assert ekf.state[2] == pytest.approx(3.5 - 2.0 * math.pi)


def test_unknown_pose_yaw_is_not_fused():
    """The node sends yaw variance 1e6 when it has no heading: only x and y go in."""
    m = F.pose_with_covariance(0.0, 1.0, 2.0, 0.0, pose_cov(4.0, UNOBSERVED))
    assert m.variables == ("x", "y")
    m = F.pose_with_covariance(0.0, 1.0, 2.0, 0.3, pose_cov(4.0, 0.01))
    assert m.variables == ("x", "y", "yaw") and m.covariance[2, 2] == 0.01


def test_gnss_is_a_switch():
    ms = [F.pose_with_covariance(0.0, 0.0, 0.0, 0.0, pose_cov(1.0)),
          F.gnss_position(1.0, 2.0, 0.0, np.eye(2) * 1.0)]
    off = F.fuse_track(ms, [1.0], config())
    on = F.fuse_track(ms, [1.0], F.with_gnss(config(), True))
    assert off.x_m[0] == pytest.approx(0.0) and off.accepted["gnss"] == 0
    assert on.x_m[0] == pytest.approx(1.0) and on.accepted["gnss"] == 1  # two equal variances: the midpoint


def test_heading_is_its_own_input_so_flipped_headings_cannot_lock_out_positions():
    """Yaw 0 known to 0.01 rad^2, then a run of flipped headings (pi, variance 0.01): each is refused
    on its own test (d^2 = pi^2 / 0.02 >= 25) and the positions that follow are still fused. With
    the yaw inside the pose, the same pose messages are refused whole."""
    def run(cfg: F.FusionConfig, split: bool) -> tuple[F.PlanarEKF, list[bool]]:
        ekf = F.PlanarEKF(cfg)
        ekf.update(F.pose_with_covariance(0.0, 0.0, 0.0, 0.0, pose_cov(1.0, 0.01)))
        if split:
            assert ekf.update(F.heading_yaw(0.0, 0.0, 0.01)).accepted
        assert ekf.covariance[2, 2] == pytest.approx(0.01, rel=0.01)
        taken = []
        for k in range(1, 6):
            if split:
                taken.append(ekf.update(F.heading_yaw(float(k), math.pi, 0.01)).accepted)
                taken.append(ekf.update(F.pose_with_covariance(float(k), 0.5, 0.0, 0.0, pose_cov(1.0))).accepted)
            else:
                taken.append(ekf.update(F.pose_with_covariance(float(k), 0.5, 0.0, math.pi, pose_cov(1.0, 0.01)))
                             .accepted)
        return ekf, taken

    base = dict(p0=(1e8, 1e8, math.pi ** 2, 1e-9, 1e-9, 1e-9), threshold=5.0)
    split = dataclasses.replace(config(**base), heading=F.SensorConfig(("yaw",), 5.0))
    ekf, taken = run(split, True)
    assert taken == [False, True] * 5  # every flip refused, every position fused
    assert ekf.state[2] == pytest.approx(0.0) and ekf.state[0] > 0.3
    ekf, taken = run(config(pose_vars=("x", "y", "yaw"), **base), False)
    assert taken == [False] * 5 and ekf.state[0] == 0.0  # the joint test refuses the positions too
    assert F.fuse_track([F.heading_yaw(0.0, 1.0, 0.01)], [0.0], config()).accepted["heading"] == 0  # not configured


def test_config_mirrors_the_map_block_of_ekf_yaml():
    import yaml

    cfg = F.FusionConfig.from_ekf_yaml(CONFIG)
    params = yaml.safe_load(CONFIG.read_text())["ekf_filter_node_map"]["ros__parameters"]
    q = np.asarray(params["process_noise_covariance"]).reshape(15, 15)
    p0 = np.asarray(params["initial_estimate_covariance"]).reshape(15, 15)
    for i, name in enumerate(F.STATE):
        j = F.RL_INDEX[name]
        assert cfg.process_noise_per_s[i, i] == q[j, j]
        assert cfg.initial_covariance[i, i] == p0[j, j]
    assert cfg.pose.rejection_threshold == params["pose0_rejection_threshold"]
    assert cfg.pose.topic == "/crossview/pose" and cfg.pose.variables == ("x", "y")
    assert cfg.heading.topic == "/crossview/heading" and cfg.heading.variables == ("yaw",)
    assert cfg.heading.rejection_threshold == params["imu1_pose_rejection_threshold"]
    assert cfg.odom.variables == ("vx", "vy", "vyaw") and math.isinf(cfg.odom.rejection_threshold)
    assert cfg.gnss.rejection_threshold == params["odom1_pose_rejection_threshold"]
    assert cfg.gnss.topic == "/odometry/gps" and not cfg.use_gnss
    assert F.FusionConfig.from_ekf_yaml(CONFIG, use_gnss=True).use_gnss
    assert "ekf.yaml" in cfg.describe() and "3.717 sigma" in cfg.describe()
    # robot_localization's default Q for the planar variables, except x and y (see the next tests)
    assert np.diag(cfg.process_noise_per_s).tolist() == [1.0, 1.0, 0.06, 0.025, 0.025, 0.02]


def test_gates_are_the_chi_square_quantiles_the_yaml_names():
    """Our covariance is calibrated (d^2 < 5.99 for ~95 %, chi-square 2 dof): the pose gate is the
    99.9 % quantile of 2 dof, -2 ln(0.001) = 13.82, the heading gate that of 1 dof, z(0.9995)^2 = 10.83."""
    from statistics import NormalDist

    cfg = F.FusionConfig.from_ekf_yaml(CONFIG)
    assert cfg.pose.rejection_threshold ** 2 == pytest.approx(-2.0 * math.log(0.001), rel=1e-3)
    assert cfg.heading.rejection_threshold ** 2 == pytest.approx(NormalDist().inv_cdf(0.9995) ** 2, rel=1e-3)


def test_config_errors_say_what_to_fix(tmp_path):
    bad = tmp_path / "ekf.yaml"
    bad.write_text("ekf_filter_node_map:\n  ros__parameters:\n    two_d_mode: false\n")
    with pytest.raises(ValueError, match="two_d_mode"):
        F.FusionConfig.from_ekf_yaml(bad)
    bad.write_text("ekf_filter_node_map:\n  ros__parameters:\n    two_d_mode: true\n    odom0: /odom\n")
    with pytest.raises(ValueError, match="crossview/pose"):
        F.FusionConfig.from_ekf_yaml(bad)
    with pytest.raises(ValueError, match="no other_node"):
        F.FusionConfig.from_ekf_yaml(CONFIG, node="other_node")
    text = CONFIG.read_text()
    pose_yaw = "    pose0_config: [true,  true,  false,   # x, y: fused with the node's covariance; z: not estimated\n" \
               "                   false, false, false,"
    assert pose_yaw in text
    bad.write_text(text.replace(pose_yaw, pose_yaw[:-7] + " true, "))  # yaw in pose0 as well as in imu1
    with pytest.raises(ValueError, match="pose0_config fuses the yaw and imu1"):
        F.FusionConfig.from_ekf_yaml(bad)


# --------------------------------------------------------------------------- a bad run must not lock the filter out

BAD_START_S = 30.0
WRONG_POSE_M = 15.0  # a wrong tile: 15 m east, published with the usual 1 m sigma
GOOD_SIGMA_M = 1.0
HEADING_SIGMA_RAD = math.radians(3.0)
SPEED_MPS = 1.3
ODOMETRY_YAW_BIAS_RADPS = 0.01  # wheel odometry: a small yaw-rate bias the headings normally correct


def stream_with_a_bad_run(bad_s: float, duration_s: float = 100.0, seed: int = 0):
    """A drive at 1.3 m/s with a 90-degree turn every 30 s: 10 Hz odometry twist (honest noise, a
    0.01 rad/s yaw-rate bias), 2 Hz poses (1 m noise, covariance 1 m^2) and headings (3 deg).
    From BAD_START_S for bad_s seconds every heading is flipped (pi off, still 3 deg) and every pose
    lies 15 m east (still 1 m^2). Returns (measurements, truth stamps, x, y)."""
    rng = np.random.default_rng(seed)
    dt = 0.02
    t = np.arange(int(duration_s / dt) + 1) * dt
    w = np.where(t % 30.0 > 24.0, (math.pi / 2.0) / 6.0, 0.0)
    yaw = 0.3 + np.concatenate([[0.0], np.cumsum(w[:-1] * dt)])
    x = np.concatenate([[0.0], np.cumsum(SPEED_MPS * np.cos(yaw[:-1]) * dt)])
    y = np.concatenate([[0.0], np.cumsum(SPEED_MPS * np.sin(yaw[:-1]) * dt)])
    ms = [F.odometry_twist(t[k], SPEED_MPS + rng.normal(0.0, 0.02), 0.0,
                           w[k] + ODOMETRY_YAW_BIAS_RADPS + rng.normal(0.0, 0.01), twist_cov(4e-4, 1e-4))
          for k in range(0, t.size, 5)]
    for k in range(0, t.size, 25):
        if BAD_START_S <= t[k] < BAD_START_S + bad_s:
            ms.append(F.pose_with_covariance(t[k], x[k] + WRONG_POSE_M, y[k], 0.0, pose_cov(GOOD_SIGMA_M ** 2)))
            ms.append(F.heading_yaw(t[k], F.wrap_rad(yaw[k] + math.pi), HEADING_SIGMA_RAD ** 2))
        else:
            ms.append(F.pose_with_covariance(t[k], x[k] + rng.normal(0.0, GOOD_SIGMA_M),
                                             y[k] + rng.normal(0.0, GOOD_SIGMA_M), 0.0, pose_cov(GOOD_SIGMA_M ** 2)))
            ms.append(F.heading_yaw(t[k], F.wrap_rad(yaw[k] + rng.normal(0.0, HEADING_SIGMA_RAD)),
                                    HEADING_SIGMA_RAD ** 2))
    return ms, t, x, y


def run_with_a_bad_run(cfg: F.FusionConfig, bad_s: float, seed: int = 0) -> dict:
    """Filter the stream; count what was taken during and after the bad run; the final error."""
    ms, t, x, y = stream_with_a_bad_run(bad_s, seed=seed)
    ekf = F.PlanarEKF(cfg)
    out = {"flips_taken": 0, "good_after": 0, "taken_after": 0, "first_taken_after_s": None}
    end = BAD_START_S + bad_s
    for m in sorted(ms, key=lambda m: m.stamp_s):
        taken = ekf.update(m).accepted
        if m.kind == "heading" and BAD_START_S <= m.stamp_s < end:
            out["flips_taken"] += taken
        if m.kind == "pose" and m.stamp_s >= end:
            out["good_after"] += 1
            out["taken_after"] += taken
            if taken and out["first_taken_after_s"] is None:
                out["first_taken_after_s"] = m.stamp_s - end
    ekf.predict_to(float(t[-1]))
    out["final_error_m"] = math.hypot(ekf.state[0] - x[-1], ekf.state[1] - y[-1])
    return out


def old_config() -> F.FusionConfig:
    """What config/ekf.yaml said before: robot_localization's default x, y process noise 0.05 m^2/s and
    5-sigma gates on the pose and the heading. The demo replay locked itself out with it."""
    cfg = F.FusionConfig.from_ekf_yaml(CONFIG)
    q = cfg.process_noise_per_s.copy()
    q[0, 0] = q[1, 1] = 0.05
    return dataclasses.replace(cfg, process_noise_per_s=q, pose=dataclasses.replace(cfg.pose, rejection_threshold=5.0),
                               heading=dataclasses.replace(cfg.heading, rejection_threshold=5.0))


@pytest.mark.parametrize("bad_s", [5.0, 10.0, 30.0])
def test_shipped_config_takes_good_poses_back_after_a_run_of_flips_and_wrong_poses(bad_s):
    """However long the bad run, the shipped filter is back on the good poses within the re-entry time
    its own numbers give: a track displaced by D = 15 m (the wrong poses) takes a good pose once
    D^2 / (P + R) < threshold^2, P growing by q per second: t = (D^2 / threshold^2 - R) / q."""
    cfg = F.FusionConfig.from_ekf_yaml(CONFIG)
    r = run_with_a_bad_run(cfg, bad_s)
    if bad_s <= 10.0:  # shorter than the heading gate's ~15 s: no confident flip gets in
        assert r["flips_taken"] == 0
    assert_back_on_good_poses(r, reentry_time_s(cfg))


def reentry_time_s(cfg: F.FusionConfig) -> float:
    """(D^2 / threshold^2 - R) / q for D = 15 m, R = 1 m^2: 15.3 s with 3.717 sigma and 1.0 m^2/s."""
    return (WRONG_POSE_M ** 2 / cfg.pose.rejection_threshold ** 2 - GOOD_SIGMA_M ** 2) / cfg.process_noise_per_s[0, 0]


def assert_back_on_good_poses(r: dict, reentry_s: float) -> None:
    assert 10.0 < reentry_s < 20.0
    assert r["first_taken_after_s"] is not None and r["first_taken_after_s"] <= reentry_s + 1.0
    assert r["taken_after"] >= r["good_after"] - 2 * (reentry_s + 1.0) - 2  # 2 Hz: all but those before re-entry
    assert r["final_error_m"] < 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_old_numbers_lock_the_filter_out_after_the_same_bad_run(seed):
    """Evidence that the test above can fail: with the old numbers a 10 s bad run lets the confident
    flips in once P_yaw reaches pi^2 / 25 (~6.6 s at 0.06 rad^2/s), the track turns round, and
    with P growing by 0.05 m^2/s no good pose is taken again: the track drifts away for good."""
    r = run_with_a_bad_run(old_config(), 10.0, seed=seed)
    assert r["flips_taken"] > 0
    assert r["taken_after"] == 0 and r["good_after"] > 100
    assert r["final_error_m"] > 10.0
    shipped = F.FusionConfig.from_ekf_yaml(CONFIG)
    assert_back_on_good_poses(run_with_a_bad_run(shipped, 10.0, seed=seed), reentry_time_s(shipped))
