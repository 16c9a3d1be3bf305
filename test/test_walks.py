"""crossview-walks: the pooled figures on hand-built walks against hand-computed values, the fused
track on synthetic walks (perfect, biased, with outliers, with wrong odometry), bad arguments
(exit 2, nothing written), and a tiny run end to end (two cities, calibration, odometry on and off,
the mismatch check, the fused tracks) that must not write into the model folder and must reuse what
it built."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic

from crossview_ros import fusion, geo
from crossview_ros.estimate import Estimate, Fix, Reason, Truth
from crossview_ros.localize_frames import Frame
from crossview_ros.nodes import convert
from crossview_ros.replay_evaluation import find_ekf_config
from crossview_training import walks
from crossview_training.walks_table import (
    estimate_measurements, fused_figures, pooled_tables, print_mismatch, print_pooled, print_walks, walk_result,
)

LAT0, LON0, YAW0 = 40.758, -73.9855, 0.3


def frame_and_estimate(k: int, error_m: float, sigma_m: float, *, accepted: bool = True,
                       yaw_error_rad: float | None = None, yaw_var_rad2: float | None = None,
                       pl_m: float | None = None) -> tuple[Frame, Fix, Estimate]:
    """A frame whose truth is at (LAT0, LON0 + k mdeg), and an estimate error_m north of it (geodesic)."""
    lat, lon = LAT0, LON0 + 1e-3 * k
    north = Geodesic.WGS84.Direct(lat, lon, 0.0, error_m)
    yaw = None if yaw_error_rad is None else math.remainder(YAW0 + yaw_error_rad, 2 * math.pi)
    est = Estimate(stamp_s=float(k), accepted=accepted, reason=Reason.OK if accepted else Reason.AMBIGUOUS,
                   lat_deg=north["lat2"], lon_deg=north["lon2"], covariance_enu_m2=np.eye(2) * sigma_m ** 2,
                   yaw_enu_rad=yaw, yaw_variance_rad2=yaw_var_rad2, protection_level_m=pl_m)
    return Frame(Path(f"f{k}"), Truth(lat, lon, YAW0), city="0", stamp_s=float(k)), Fix(lat, lon, float(k)), est


def walk(rows: list[tuple[Frame, Fix, Estimate]], **ids):
    frames, fixes, estimates = (list(x) for x in zip(*rows))
    return walk_result(frames, fixes, estimates, True, **ids)


def hand_built_walks():
    a = [frame_and_estimate(0, 1.0, 1.0, yaw_error_rad=0.1, yaw_var_rad2=0.01, pl_m=5.0),  # d2 1, yaw d2 1
         frame_and_estimate(1, 2.0, 1.0, yaw_error_rad=math.pi - 0.2, yaw_var_rad2=1.0, pl_m=1.5),  # flip, PL exceeded
         frame_and_estimate(2, 30.0, 20.0, pl_m=None),  # > 25 m, d2 2.25, no yaw, no protection level
         frame_and_estimate(3, 50.0, 1.0, accepted=False)]  # gated: not published
    b = [frame_and_estimate(4, 3.0, 2.0, yaw_error_rad=0.05, yaw_var_rad2=0.01, pl_m=10.0),  # d2 2.25, yaw d2 0.25
         frame_and_estimate(5, 4.0, 1.0, yaw_error_rad=2.0, yaw_var_rad2=0.5, pl_m=3.0)]  # d2 16, 114.6 deg, PL exceeded
    mismatch = [frame_and_estimate(6, 40.0, 5.0), frame_and_estimate(7, 45.0, 12.0)]
    fault = [frame_and_estimate(8, 240.0, 4.0), frame_and_estimate(9, 230.0, 9.0),  # two confident wrong fixes
             frame_and_estimate(10, 235.0, 60.0), frame_and_estimate(11, 250.0, 4.0, accepted=False)]
    ids = {"mode": "walk", "receiver": "urban"}
    return [walk(a, city_seed=200, walk_seed=0, odometry=True, tiles_city_seed=200, **ids),
            walk(b, city_seed=201, walk_seed=0, odometry=True, tiles_city_seed=201, **ids),
            walk(a[:2], city_seed=200, walk_seed=0, odometry=False, tiles_city_seed=200, **ids),
            walk(mismatch, city_seed=200, walk_seed=0, odometry=True, tiles_city_seed=201, **ids),
            walk(fault, city_seed=201, walk_seed=0, odometry=True, tiles_city_seed=201, fix_offset_m=250.0, **ids)]


def test_pooled_figures_match_the_hand_computed_ones():
    tables = pooled_tables(hand_built_walks(), ["urban"], heading=True)
    on = tables["urban"]["odometry"]
    assert on["walks"] == 2 and on["frames"] == 6 and on["published"] == 5
    assert on["published_percent"] == pytest.approx(500 / 6)
    errors = sorted([1.0, 2.0, 30.0, 3.0, 4.0])
    assert on["error_m"]["median"] == pytest.approx(3.0, abs=1e-6)
    assert on["error_m"]["p95"] == pytest.approx(4.0 + 0.8 * (30.0 - 4.0), abs=1e-5) == pytest.approx(
        np.percentile(errors, 95))
    assert on["error_m"]["over_25m_percent"] == pytest.approx(20.0)
    # every positioned frame, the gated 50 m one too: 30 and 50 m of 6 are beyond 25 m
    assert on["error_all_positioned_over_25m_percent"] == pytest.approx(100 * 2 / 6)
    # d2: walk a 1, 4, 2.25 (all < 5.99); walk b 2.25, 16 -> pooled 4 of 5, worst walk 1 of 2
    assert on["covariance_share_d2_under_5.99_percent"] == pytest.approx(80.0)
    assert on["d2_share_min_over_walks_percent"] == pytest.approx(50.0)
    # headings published: 0.1 rad, 168.5 deg, 0.05 rad, 114.6 deg -> 2 of 4 beyond 90 deg, 1 of 4 beyond 135
    h = on["heading"]
    assert h["frames"] == 4 and h["flip_over_90deg_percent"] == pytest.approx(50.0)
    assert h["flip_percent"] == pytest.approx(25.0)
    # yaw d2: 1, (pi - 0.2)^2 = 8.65, 0.25, 8 -> 2 of 4 under 3.84
    assert h["share_under_3.84_percent"] == pytest.approx(50.0)
    # protection levels 5 (err 1), 1.5 (err 2: exceeded), 10 (err 3), 3 (err 4: exceeded); one fix without
    assert on["protection_level"] == {"with_level": 4, "without_level": 1, "exceeded": 2,
                                      "exceeded_percent": pytest.approx(50.0),
                                      "median_level_m": pytest.approx(4.0), "p95_level_m": pytest.approx(9.25)}
    assert on["reasons"] == {"AMBIGUOUS": 1, "OK": 5}
    assert on["published_sigma_under_10m"] == 4  # the 30 m fix had sigma 20 m

    off = tables["urban"]["no_odometry"]
    assert off["walks"] == 1 and off["frames"] == 2 and off["error_m"]["median"] == pytest.approx(1.5, abs=1e-6)
    assert off["error_all_positioned_over_25m_percent"] == 0.0
    mm = tables["urban"]["mismatch"]
    assert mm["walks"] == 1 and mm["published"] == 2 and mm["published_sigma_under_10m"] == 1
    # the fault walk (its own tiles, odometry on, fixes moved) is in no table but its own
    fault = tables["urban"]["fault"]
    assert fault["walks"] == 1 and fault["frames"] == 4 and fault["published"] == 3
    assert fault["published_sigma_under_10m"] == 2 and fault["error_m"]["median"] == pytest.approx(235.0, abs=1e-6)


def test_odometry_on_and_off_are_compared_on_the_frames_both_positioned(capsys):
    """Odometry carries a stale fix, so its run positions frames the other has no estimate for: the paired
    share counts only the frames both positioned (gated ones too), walk by walk."""
    ids = {"mode": "walk", "receiver": "urban", "tiles_city_seed": 200, "city_seed": 200}
    on = [frame_and_estimate(0, 1.0, 1.0), frame_and_estimate(1, 30.0, 1.0, accepted=False),
          frame_and_estimate(2, 2.0, 1.0), frame_and_estimate(3, 60.0, 1.0, accepted=False)]
    off = [frame_and_estimate(0, 40.0, 1.0, accepted=False), frame_and_estimate(1, 35.0, 1.0, accepted=False),
           frame_and_estimate(2, 3.0, 1.0)]
    fr, fx, _ = frame_and_estimate(3, 0.0, 1.0)
    off.append((fr, fx, Estimate(stamp_s=3.0, accepted=False, reason=Reason.STALE_STAMP)))  # no estimate at all
    other = [frame_and_estimate(9, 50.0, 1.0)]  # a walk run only with odometry: no pair
    results = [walk(on, walk_seed=0, odometry=True, **ids), walk(off, walk_seed=0, odometry=False, **ids),
               walk(other, walk_seed=1, odometry=True, **ids)]
    paired = pooled_tables(results, ["urban"], heading=False)["urban"]["paired"]
    # frames 0, 1, 2 positioned by both: with odometry 30 m (1 of 3) beyond 25 m, without 40 and 35 m (2 of 3)
    assert paired == {"walks": 1, "frames": 3, "odometry_over_25m_percent": pytest.approx(100 / 3),
                      "no_odometry_over_25m_percent": pytest.approx(200 / 3)}
    print_pooled(pooled_tables(results, ["urban"], heading=False))
    assert "  urban: 3 frames of 1 walks, 33.33 % with odometry, 66.67 % without" in capsys.readouterr().out
    assert pooled_tables(results[:1], ["urban"], heading=False)["urban"]["paired"] is None


def test_printed_tables_carry_the_pooled_figures(capsys):
    tables = pooled_tables(hand_built_walks(), ["urban"], heading=True)
    print_pooled(tables)
    print_mismatch(tables)
    print_mismatch(tables, key="fault")
    print_walks([{**w.ids(), "summary": w.summary, "fused": w.fused} for w in hand_built_walks()])
    lines = capsys.readouterr().out.splitlines()
    on = next(line.split() for line in lines if line.split()[:2] == ["urban", "on"])
    assert on == ["urban", "on", "2", "6", "83.3", "3.00", "24.80", "-", "-", "-", "-", "20.0", "33.3", "80.0", "50.0",
                  "50.0", "50.0", "50.00", "4.00", "1"]  # no fused track on these walks: '-' four times; PL median 4 m
    assert any("urban odometry on: AMBIGUOUS 1, OK 5" in line for line in lines)
    mismatch = next(line.split() for line in lines if line.split()[:2] == ["urban", "1"])
    assert mismatch[:5] == ["urban", "1", "2", "2", "1"]
    fault = next(line.split() for line in lines if line.split()[:3] == ["urban", "1", "4"])
    assert fault == ["urban", "1", "4", "3", "2", "235.0"]
    per_walk = [line.split()[:5] for line in lines if line.split()[:1] in (["200"], ["201"])]
    assert per_walk == [["200", "0", "walk", "urban", "on"], ["201", "0", "walk", "urban", "on"],
                        ["200", "0", "walk", "urban", "off"]]  # the mismatch and fault walks have their own tables
    print_mismatch({"urban": {**tables["urban"], "fault": None}}, key="fault")
    assert capsys.readouterr().out.strip() == "GNSS fault check: skipped (--fault-m 0)"


# --------------------------------------------------------------------------- fused track

ENU = geo.LocalENU(LAT0, LON0)
RATE_HZ, SPAN_S, SPEED_MPS = 2.0, 60.0, 1.0  # 121 panoramas; the truth moves east at 1 m/s from (10, 20)
STAMPS_S = np.arange(0.0, SPAN_S + 1e-9, 1.0 / RATE_HZ)


def shipped_fusion() -> fusion.FusionConfig:
    return fusion.FusionConfig.from_ekf_yaml(find_ekf_config())


def synthetic_walk(offset_en_m, odometry_speed_mps: float = SPEED_MPS, accepted=lambda k: True):
    """Frames along the truth, estimates offset_en_m(k) (E, N) from it (sigma 1 m, yaw 0 +- 0.1 rad),
    odometry twist at 10 Hz (vx odometry_speed_mps, sigma 1 cm/s)."""
    frames, fixes, estimates = [], [], []
    for k, t in enumerate(STAMPS_S):
        x, y = 10.0 + SPEED_MPS * t, 20.0
        lat, lon, _ = ENU.inverse(x, y)
        de, dn = offset_en_m(k)
        elat, elon, _ = ENU.inverse(x + de, y + dn)
        ok = accepted(k)
        frames.append(Frame(Path(f"f{k}"), Truth(float(lat), float(lon), 0.0), city="0", stamp_s=float(t)))
        fixes.append(Fix(float(lat), float(lon), float(t)))
        estimates.append(Estimate(stamp_s=float(t), accepted=ok, reason=Reason.OK if ok else Reason.AMBIGUOUS,
                                  lat_deg=float(elat), lon_deg=float(elon), covariance_enu_m2=np.eye(2),
                                  yaw_enu_rad=0.0, yaw_variance_rad2=0.01))
    cov = np.diag([1e-4, 1e-4, 1e-9, 1e-9, 1e-9, 1e-4]).ravel()
    odometry = [fusion.odometry_twist(float(t), odometry_speed_mps, 0.0, 0.0, cov)
                for t in np.arange(0.0, SPAN_S + 1e-9, 0.1)]
    result = walk_result(frames, fixes, estimates, True, city_seed=200, walk_seed=0, mode="walk",
                         receiver="urban", odometry=True, tiles_city_seed=200)
    result.fused, result.fused_error_m = fused_figures(result.frames, estimates, odometry, ENU, shipped_fusion(),
                                                       result.summary["error_m"]["p95"])
    return result


def test_estimates_enter_the_fusion_as_the_node_publishes_them():
    """Pose and heading inputs equal what the node's converters make of the estimate (nodes/convert.py)."""
    lat, lon, _ = ENU.inverse(30.0, -40.0)
    cov = np.array([[4.0, 1.0], [1.2, 9.0]])  # not quite symmetric: the node symmetrizes
    with_yaw = Estimate(stamp_s=7.5, accepted=True, reason=Reason.OK, lat_deg=float(lat), lon_deg=float(lon),
                        covariance_enu_m2=cov, yaw_enu_rad=2.0, yaw_variance_rad2=0.04)
    without = Estimate(stamp_s=8.0, accepted=True, reason=Reason.OK, lat_deg=float(lat), lon_deg=float(lon),
                       covariance_enu_m2=cov)
    rejected = Estimate(stamp_s=8.5, accepted=False, reason=Reason.MAHALANOBIS, lat_deg=float(lat),
                        lon_deg=float(lon), covariance_enu_m2=cov, yaw_enu_rad=1.0, yaw_variance_rad2=0.04)
    pose, heading, pose2 = estimate_measurements([with_yaw, without, rejected], ENU)
    for m, est, yaw_var in ((pose, with_yaw, 0.04), (pose2, without, None)):
        planar = convert.planar_pose(est, "datum", ENU)
        node = fusion.pose_with_covariance(est.stamp_s, planar.x_m, planar.y_m, planar.yaw_rad or 0.0,
                                           convert.pose_covariance(planar.covariance_m2, yaw_var))
        assert m.kind == "pose" and m.stamp_s == est.stamp_s and dict(m.values) == pytest.approx(node.values)
        np.testing.assert_allclose(m.covariance, node.covariance)
    assert pose.values == pytest.approx({"x": 30.0, "y": -40.0, "yaw": 2.0}, abs=1e-6)
    np.testing.assert_allclose(pose.covariance, [[4.0, 1.1, 0.0], [1.1, 9.0, 0.0], [0.0, 0.0, 0.04]])
    assert set(pose2.values) == {"x", "y"}  # no heading: the yaw's variance 1e6 leaves it out
    assert heading.kind == "heading" and heading.values == {"yaw": 2.0} and heading.covariance[0, 0] == 0.04


def test_fused_track_of_perfect_estimates_lies_on_the_truth():
    r = synthetic_walk(lambda k: (0.0, 0.0))
    assert r.fused["frames"] == len(STAMPS_S) == 121
    assert r.fused["p95_m"] < 0.05 and np.nanmax(r.fused_error_m) < 0.05
    assert r.fused["accepted"]["pose"] == 121 and r.fused["rejected"]["pose"] == 0
    assert r.fused["accepted"]["heading"] == 121  # config/ekf.yaml fuses our heading (imu1)


def test_fused_track_of_biased_estimates_keeps_the_bias():
    """Odometry measures only motion: a constant 5 m bias of every pose stays in the track."""
    r = synthetic_walk(lambda k: (0.0, 5.0))
    assert r.fused["ours_p95_m"] == pytest.approx(5.0, abs=0.01)
    assert r.fused["p95_m"] == pytest.approx(5.0, abs=0.05) and r.fused["median_m"] == pytest.approx(5.0, abs=0.05)


def test_fused_track_refuses_outliers_and_beats_our_p95():
    """Every 10th estimate 30 m east (12 of 121: our p95 is 30 m); the gate (3.717 sigma, P + R ~ 2 m^2
    before a pose: d^2 ~ 450) refuses all 12, so the fused track stays on the truth."""
    r = synthetic_walk(lambda k: (30.0, 0.0) if k % 10 == 5 else (0.0, 0.0))
    assert r.fused["ours_p95_m"] == pytest.approx(30.0, abs=0.01)
    assert r.fused["rejected"]["pose"] == 12 and r.fused["accepted"]["pose"] == 109
    assert r.fused["p95_m"] < 0.05 and r.fused["not_above_ours"] is True
    assert r.fused["p95_published_m"] < 0.05 and r.fused["not_above_ours_all_frames"] is True
    assert r.fused["frames_published"] == 121 and r.fused["p95_unpublished_m"] is None


def test_fused_track_drifts_with_wrong_odometry_and_is_flagged():
    """One published fix at t = 0 (perfect), odometry 20 % fast: the track drifts 0.2 m/s, error 0.2 t;
    p95 over t = 0 .. 60 s by 0.5 s is 0.2 x 57 = 11.4 m, above our 0 m: flagged over all frames. On
    the one frame we published, the track is on it: not above ours there."""
    r = synthetic_walk(lambda k: (0.0, 0.0), odometry_speed_mps=1.2 * SPEED_MPS, accepted=lambda k: k == 0)
    np.testing.assert_allclose(r.fused_error_m, 0.2 * STAMPS_S, atol=0.02)
    assert r.fused["p95_m"] == pytest.approx(11.4, abs=0.02) and r.fused["not_above_ours_all_frames"] is False
    assert r.fused["p95_unpublished_m"] == pytest.approx(np.percentile(0.2 * STAMPS_S[1:], 95), abs=0.02)
    assert r.fused["frames_published"] == 1 and r.fused["p95_published_m"] < 0.02
    assert r.fused["not_above_ours"] is True


def test_pooled_and_printed_fused_figures(capsys):
    outliers = synthetic_walk(lambda k: (30.0, 0.0) if k % 10 == 5 else (0.0, 0.0))
    drift = synthetic_walk(lambda k: (0.0, 0.0), odometry_speed_mps=1.2 * SPEED_MPS, accepted=lambda k: k == 0)
    drift.walk_seed = 1
    fz = pooled_tables([outliers, drift], ["urban"], heading=True)["urban"]["odometry"]["fused"]
    assert fz["walks"] == 2 and fz["frames"] == 242 and fz["walks_compared"] == 2
    assert fz["walks_not_above_ours"] == 2 and fz["walks_not_above_ours_all_frames"] == 1
    assert fz["p95_m"] == pytest.approx(np.percentile(np.r_[np.zeros(121), 0.2 * STAMPS_S], 95), abs=0.02)
    assert fz["p95_published_m"] < 0.05  # the outlier walk's 121 frames and the drift walk's first
    assert fz["p95_unpublished_m"] == pytest.approx(np.percentile(0.2 * STAMPS_S[1:], 95), abs=0.02)
    print_pooled({"urban": pooled_tables([outliers, drift], ["urban"], heading=True)["urban"]})
    print_walks([{**r.ids(), "summary": r.summary, "fused": r.fused} for r in (outliers, drift)])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    pooled = next(row for row in lines if row[:2] == ["urban", "on"])
    assert pooled[8] == "2/2" and pooled[10] == "1/2"
    per_walk = [row for row in lines if row[:4] in (["200", "0", "walk", "urban"], ["200", "1", "walk", "urban"])]
    assert [row[9:13] for row in per_walk] == [["0.00", "yes", "0.00", "yes"], ["0.00", "yes", "11.40", "NO"]]
    assert [row[8] for row in per_walk] == ["30.00", "0.00"]  # ours beside it


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("argv, message", [
    (["--city-seeds", "200,200"], "--city-seeds must list distinct seeds"),
    (["--city-seeds", "a,b"], "--city-seeds takes comma-separated values"),
    (["--modes", "walk,fly"], "--modes takes walk,drive"),
    (["--gnss", "gps"], "--gnss takes urban,uniform"),
    (["--walks", "0"], "--walks must be 1..999"),
    (["--duration-s", "1"], "--duration-s must be in 2..3600"),
    (["--fix-sigma-scale", "0"], "--fix-sigma-scale must be in 0.001..1000"),
    (["--fault-m", "-1"], "--fault-m must be in 0..10000"),
    (["--lat", "95"], "--lat/--lon"),
    (["--set", "odometry=false"], "--set odometry: set by crossview-walks itself"),
    (["--set", "min_mode_mass=3"], "--set: localizer config min_mode_mass = 3"),
    (["--set", "no_such_key=1"], "--set: "),
    (["--set", "novalue"], "--set takes KEY=VALUE"),
    ([], "--model /nonexistent/model: model folder /nonexistent/model does not exist"),
    (["--walks", "x"], None),  # argparse's own message
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    work = tmp_path / "work"
    assert walks.main(["--model", "/nonexistent/model", "--work", str(work), *argv]) == 2
    err = capsys.readouterr().err
    assert "error" in err and (message is None or message in err), err
    if message is not None:
        assert len(err.strip().splitlines()) == 1, err
    assert not work.exists()


def test_help_explains_the_procedure(capsys):
    assert walks.main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--model", "--work", "--city-seeds", "--walks", "--calibration-walks", "--modes", "--gnss",
                 "--duration-s", "--set", "--json", "mismatch", "--fault-m", "GNSS fault check", "odometry", "Reuse",
                 "Exit codes"):
        assert word in out, word


# --------------------------------------------------------------------------- end to end


def model_files(model: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model.iterdir())}


def test_tiny_run_end_to_end_pools_calibrates_on_a_copy_and_reuses(tmp_path, tiny_export, capsys):
    """Two 200 m cities, one 8 s test walk and two calibration walks each, urban receiver, with the
    session's tiny (random-weight) model: the pooled figures add up to the walks', the mismatch runs
    use the other city's tiles, the fault runs their own with every fix moved --fault-m, the calibration
    lives under --work and the model folder is untouched."""
    model = tiny_export(0)
    before = model_files(model)
    work, out = tmp_path / "work", tmp_path / "walks.json"
    argv = ["--model", str(model), "--work", str(work), "--city-seeds", "300,301", "--city-m", "200",
            "--gsd-m", "0.5", "--tile-px", "64", "--pano-height-px", "64", "--walks", "1", "--calibration-walks",
            "2", "--duration-s", "8", "--gnss", "urban", "--modes", "walk", "--set", "max_mahalanobis=1000000",
            "engine_threads=1", "--fault-m", "40", "--json", str(out), "--no-progress"]
    assert walks.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert model_files(model) == before  # nothing written into the user's model folder

    runs = report["walks"]
    assert len(runs) == 2 * 4  # 2 cities x 1 test walk x (odometry on, off, mismatch, fault)
    assert {(r["city_seed"], r["tiles_city_seed"]) for r in runs if r["odometry"]} == {
        (300, 300), (301, 301), (300, 301), (301, 300)}
    faults = [r for r in runs if r["fix_offset_m"]]
    assert [(r["fix_offset_m"], r["odometry"], r["tiles_city_seed"] == r["city_seed"]) for r in faults] == [
        (40.0, True, True)] * 2
    for r in faults:  # the same walk's fixes, 40 m further from the truth
        mine = next(o for o in runs if o["odometry"] and o["city_seed"] == r["city_seed"] == o["tiles_city_seed"]
                    and not o["fix_offset_m"])
        assert r["summary"]["gnss_error_median_m"] > mine["summary"]["gnss_error_median_m"] + 20.0
    frames = runs[0]["summary"]["frames"]
    assert frames == 17  # 8 s at 2 Hz, both ends included
    pooled = report["pooled"]["urban"]
    for key, chosen in (("odometry", lambda r: r["odometry"] and r["city_seed"] == r["tiles_city_seed"]
                         and not r["fix_offset_m"]),
                        ("no_odometry", lambda r: not r["odometry"]),
                        ("mismatch", lambda r: r["city_seed"] != r["tiles_city_seed"]),
                        ("fault", lambda r: r["fix_offset_m"] > 0)):
        mine = [r["summary"] for r in runs if chosen(r)]
        assert pooled[key]["walks"] == len(mine) == 2
        assert pooled[key]["frames"] == sum(s["frames"] for s in mine)
        assert pooled[key]["published"] == sum(s["published"] for s in mine)
        assert pooled[key]["published_sigma_under_10m"] == sum(s["published_sigma_under_10m"] for s in mine)

    calibration = report["calibration"]["urban"]
    covariance = Path(calibration["covariance_file"])
    assert covariance.is_file() and work.resolve() in covariance.resolve().parents
    # 2 cities x 2 calibration walks (seeds 1000, 1001), but for a walk whose receiver never published a fix
    assert not [w for w in report["left_out"] if w["walk_seed"] < 1000]
    assert len(calibration["walks"]) == 4 - len(report["left_out"])
    assert all(w["seed"] >= 1000 for w in calibration["walks"])
    assert json.loads(covariance.read_text())["model_hash"] == json.loads((model / "model.json").read_text())[
        "model_hash"]
    for r in runs:  # a fused track for every walk localized as recorded with odometry, none for the others
        own_odometry = r["odometry"] and r["city_seed"] == r["tiles_city_seed"] and not r["fix_offset_m"]
        assert (r["fused"] is not None) == own_odometry
        if own_odometry:
            assert r["fused"]["ours_p95_m"] == (r["summary"]["error_m"] or {}).get("p95")
            assert r["fused"]["accepted"]["odom"] > 0
    fz = pooled["odometry"]["fused"]
    assert fz["walks"] == 2 and pooled["no_odometry"]["fused"] is None and pooled["mismatch"]["fused"] is None
    assert pooled["fault"]["fused"] is None
    assert fz["walks_not_above_ours"] == sum(bool(r["fused"] and r["fused"]["not_above_ours"]) for r in runs)
    assert "ekf.yaml (ekf_filter_node_map)" in report["fusion"]  # the shipped config, as the replay fuses
    for word in ("pooled over test walks", "mismatch check", "GNSS fault check", "every fix moved 40 m", "per walk",
                 "calibration urban", "fused track"):
        assert word in printed

    stamp = covariance.stat().st_mtime_ns
    out.unlink()
    assert walks.main(argv) == 0  # a second run reuses the cities, tiles, bags and calibration
    assert covariance.stat().st_mtime_ns == stamp
    assert figures(json.loads(out.read_text())["pooled"]) == figures(report["pooled"])  # same inputs, same figures

    # --fix-sigma-scale: the test walks take the receiver's sigma x S, the rest of the calibration as it was
    assert walks.main([*argv, "--fix-sigma-scale", "1"]) == 0
    assert "reported sigma x 1 (--fix-sigma-scale)" in capsys.readouterr().out
    assert covariance.stat().st_mtime_ns == stamp
    fitted = json.loads(covariance.read_text())["params"]
    scaled = json.loads(covariance.with_name("covariance-fix-sigma-scale-1.json").read_text())["params"]
    assert fitted["fix_sigma_scale"] != 1.0 and scaled == {**fitted, "fix_sigma_scale": 1.0}


def test_walks_seen_by_a_forward_camera_are_localized_as_its_captures(tmp_path, capsys):
    """--camera forward90: every walk gets a bag with the camera's views and CameraInfo beside its panorama
    bag, and is localized (and calibrated) through the rig file, frame for frame as the panorama walks."""
    torch = pytest.importorskip("torch")
    from crossview_ros.bag.drive import read_bag
    from crossview_training import bev as B
    from crossview_training.walks_build import bag_topics
    from crossview_training.export import export_onnx

    torch.manual_seed(3)
    model = tmp_path / "model"
    export_onnx(B.BevModel(B.BevConfig(pano_size=(32, 64), tile_px=32, tile_size_m=16.0, kernel_cells=4, channels=8,
                                       feature_dim=4)).eval(), model)
    work = tmp_path / "work"
    argv = ["--model", str(model), "--work", str(work), "--city-seeds", "300,301", "--city-m", "200",
            "--gsd-m", "0.5", "--tile-px", "32", "--pano-height-px", "64", "--walks", "1", "--calibration-walks", "1",
            "--duration-s", "8", "--gnss", "urban", "--modes", "walk", "--set", "max_mahalanobis=1000000",
            "engine_threads=1", "min_mode_mass=0", "min_imagery_support=0", "--no-progress"]
    assert walks.main([*argv, "--json", str(tmp_path / "pano.json")]) == 0, capsys.readouterr().err
    assert walks.main([*argv, "--camera", "forward90", "--json", str(tmp_path / "cam.json")]) == 0, \
        capsys.readouterr().err
    pano, cam = (json.loads((tmp_path / f).read_text()) for f in ("pano.json", "cam.json"))
    assert cam["settings"]["camera"] == "forward90" and pano["settings"]["camera"] == "panorama"
    bags = sorted((work / "bags").glob("*/*-cameras-forward90"))
    assert len(bags) == 4  # 2 cities x (1 test + 1 calibration walk)
    for bag in bags:
        assert (bag / "cameras.yaml").is_file()
        assert (bag.with_name(bag.name.split("-cameras-")[0]) / "metadata.yaml").is_file()  # beside its panorama bag
        captures = read_bag(bag, bag_topics(bag))
        assert captures.cameras and captures.panorama_stamp_ns.size == 17  # one capture per panorama
    assert [w["summary"]["frames"] for w in cam["walks"]] == [w["summary"]["frames"] for w in pano["walks"]]
    assert cam["calibration"]["urban"]["covariance_file"] != pano["calibration"]["urban"]["covariance_file"]


def figures(pooled: dict) -> str:
    """The pooled tables without the latencies (wall time, which differs between runs), as comparable text."""
    return json.dumps({r: {k: {f: v for f, v in s.items() if f != "latency_ms"} for k, s in t.items()}
                       for r, t in pooled.items()}, sort_keys=True)


def test_a_survey_under_another_sun_is_another_city_folder_with_the_same_walks(tmp_path):
    """--aerial-sun: the held-out city is rendered again under that sun in a folder of its own, while its
    walks (which see the streets, not the survey) are the default survey's bags; a bad sun exits 2."""
    from crossview_training import walks_build

    config = walks_build.city_config(200, 40.0, -74.0, 600.0, 0.15)
    default = walks_build.city_dir(tmp_path, config)
    other = walks_build.city_dir(tmp_path, config, (100.0, 25.0))
    assert default.name == walks_build.city_dir(tmp_path, config, walks_build.DEFAULT_SUN).name
    assert other != default and other.name.startswith(default.name) and other.name.endswith("100-25")
    drive = {"duration_s": 90.0, "rate_hz": 2.0, "pano_height_px": 320}
    assert (walks_build.bag_path(tmp_path, other, 3, "walk", "urban", drive)
            == walks_build.bag_path(tmp_path, default, 3, "walk", "urban", drive))
    assert walks.sun_of("100,25") == (100.0, 25.0)
    for bad in ("100", "100,0", "100,95", "a,b"):
        with pytest.raises(walks.UsageError):
            walks.sun_of(bad)


def test_compare_two_runs_pools_the_shared_walks_and_resamples_walks(tmp_path, capsys):
    """--compare: the pooled share of frames published and of published fixes > 25 m off, each report over
    the walks both hold (odometry on, own tiles), against hand-computed counts; the interval of B - A comes
    from resampling walks, so it holds the difference, and a walk that only one report has (or a
    foreign-tile run) is left out."""
    from crossview_training.walks_table import compare_runs

    def walk(seed, frames, published, over_pct, odometry=True, tiles=200):
        return {"city_seed": 200, "walk_seed": seed, "mode": "walk", "receiver": "urban", "odometry": odometry,
                "tiles_city_seed": tiles, "summary": {"frames": frames, "published": published,
                                                      "error_m": {"over_25m_percent": over_pct}}}

    a = {"walks": [walk(0, 200, 100, 0.0), walk(1, 100, 50, 10.0), walk(2, 100, 100, 0.0, odometry=False),
                   walk(3, 80, 80, 50.0)]}
    b = {"walks": [walk(0, 200, 150, 2.0), walk(1, 100, 50, 0.0), walk(0, 200, 100, 90.0, tiles=201),
                   walk(4, 10, 10, 100.0)]}
    published, over = compare_runs(a, b, resamples=2000)
    assert published["figure"] == "published" and over["figure"] == "over_25m"
    assert published["walks"] == over["walks"] == 2  # seeds 0 and 1
    assert published["a_percent"] == pytest.approx(100 * 150 / 300)
    assert published["b_percent"] == pytest.approx(100 * 200 / 300)
    assert over["a_percent"] == pytest.approx(100 * 5 / 150)
    assert over["b_percent"] == pytest.approx(100 * 3 / 200)  # 2 % of 150 rounds to 3 fixes
    lo, hi = over["interval_95_points"]
    assert lo <= over["difference_points"] <= hi and lo < 0
    lo, hi = published["interval_95_points"]  # walk 0 gains 50 fixes, walk 1 none: every draw gains or ties
    assert 0 <= lo <= published["difference_points"] <= hi <= 100 * 50 / 200
    paths = []
    for name, report in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    assert walks.main(["--compare", str(paths[0]), str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert "B - A points" in out and "published" in out and "> 25 m" in out
    assert walks.main(["--compare", str(paths[0]), str(tmp_path / "missing.json")]) == 2
