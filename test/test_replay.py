"""crossview-replay end to end: a small synthetic city, a 31-frame drive bag, a tile set encoded with the
tiny exported model, the real localize_node over DDS; then the outputs, the evaluation against an
independent in-process Localizer, the report, and the failures (missing topic, node dying)."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from crossview_ros import geo, replay
from crossview_ros.bag.writer import read_drive_bag, typestore
from crossview_ros.estimate import Fix, Reason
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig

pytest.importorskip("rclpy")
pytest.importorskip("filterpy")
pytest.importorskip("matplotlib")

RATE = 2.0  # twice real time: 15 s of drive in 7.5 s
# The tiny model has random weights: open the GNSS gate, switch heading on; min_margin comes from `gate`.
NODE_ARGS = ("-p", "engine_threads:=1", "-p", "max_mahalanobis:=1000000.0", "-p", "heading:=true")


@pytest.fixture(scope="module")
def world(small_drive):
    """City (200 m), drive bag (15 s at 2 Hz, 64 px panoramas), tile set encoded with the tiny model (conftest)."""
    return small_drive


@pytest.fixture(scope="module")
def bag_messages(world):
    """The bag read independently of the replay: panoramas, fixes, ground truth by stamp (ns)."""
    panos, fixes, truth, truth_pose = [], [], {}, {}
    with AnyReader([world["bag"]], default_typestore=typestore()) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in ("/odom", "/crossview/datum"):
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/panorama/compressed":
                panos.append((stamp_ns(msg), bytes(msg.data)))
            elif conn.topic == "/gnss/fix":
                fixes.append((stamp_ns(msg), msg))
            elif conn.topic == "/ground_truth/fix":
                truth[stamp_ns(msg)] = (msg.latitude, msg.longitude)
            else:
                q = msg.pose.orientation
                truth_pose[stamp_ns(msg)] = (2.0 * math.atan2(q.z, q.w), msg.pose.position.x, msg.pose.position.y)
    return {"panos": panos, "fixes": fixes, "truth": truth, "truth_pose": truth_pose}


def localize_all(world, bag_messages, **overrides) -> dict[int, object]:
    """In-process Localizer with the node's settings over every panorama, each with the newest fix not
    after its stamp (the replay sends a fix before a panorama of the same stamp): stamp_ns -> Estimate."""
    config = LocalizerConfig(tile_set=str(world["tiles"]), model=str(world["model"]), engine="onnxruntime",
                             engine_threads=1, max_mahalanobis=1e6, heading=True, **overrides)
    out = {}
    with Localizer(config) as localizer:
        for t_ns, jpeg in bag_messages["panos"]:
            older = [m for s, m in bag_messages["fixes"] if s <= t_ns]
            if not older:
                out[t_ns] = None
                continue
            m = older[-1]
            fix = Fix.from_navsat(m.latitude, m.longitude, stamp_ns(m) / 1e9, int(m.status.status),
                                  list(m.position_covariance), int(m.position_covariance_type))
            out[t_ns] = localizer.localize(jpeg, fix, t_ns / 1e9, now_s=t_ns / 1e9)
    return out


@pytest.fixture(scope="module")
def gate(world, bag_messages) -> float:
    """A min_margin inside the widest gap of the middle half of the margins: about half the frames
    are then rejected LOW_MARGIN, far from any float tie between the node and the reference."""
    margins = np.sort([e.margin for e in localize_all(world, bag_messages).values() if e is not None])
    middle = margins[len(margins) // 4: 3 * len(margins) // 4 + 1]
    k = int(np.argmax(np.diff(middle)))
    assert middle[k + 1] - middle[k] > 1e-7, "no gap between the margins to put the gate in"
    return float(0.5 * (middle[k] + middle[k + 1]))


@pytest.fixture(scope="module")
def result(world, gate):
    return replay.replay_bag(world["bag"], world["tiles"], world["model"], world["root"] / "out", rate=RATE,
                             node_args=(*NODE_ARGS, "-p", f"min_margin:={gate!r}"), progress=False, timeout_s=60.0)


def read_outputs(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=typestore()) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((log_ns, msg))
    return out


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# --------------------------------------------------------------------------- the recording


def test_outputs_mcap_holds_what_the_node_published(result, world):
    bag = read_drive_bag(world["bag"])
    pano_ns = set(bag.topics["/panorama/compressed"].stamp_ns.tolist())
    outputs = read_outputs(result.outputs_mcap)
    published = [f for f in result.frames if f.accepted]
    assert len(result.frames) == len(pano_ns) == 31
    assert 5 <= len(published) <= 28  # the min_margin gate rejects some
    assert len(outputs["/crossview/fix"]) == len(outputs["/crossview/pose"]) == len(published)
    assert 1 <= len(outputs["/crossview/heading"]) <= len(published)  # a heading when the estimate has a yaw
    assert len(outputs["/diagnostics"]) >= 1
    heading_ns = {stamp_ns(m) for _, m in outputs["/crossview/heading"]}
    assert heading_ns <= pano_ns
    assert heading_ns == {round(f.stamp_s * 1e9) for f in result.frames if f.yaw_enu_rad is not None}
    for topic in ("/crossview/fix", "/crossview/pose"):
        stamps = [stamp_ns(m) for _, m in outputs[topic]]
        assert set(stamps) <= pano_ns, f"{topic} carries a stamp that is no panorama's"
        assert sorted(stamps) == sorted(round(f.stamp_s * 1e9) for f in published)
        assert all(log == s for (log, _), s in zip(outputs[topic], stamps))  # log time = header stamp
    assert result.summary["stray_output_stamps"] == 0
    # The pose is the fix in the datum's ENU plane (pose_origin "datum" with the bag's datum).
    enu = geo.LocalENU(bag.datum["datum_lat_deg"], bag.datum["datum_lon_deg"])
    poses = {stamp_ns(m): m for _, m in outputs["/crossview/pose"]}
    for _, fix in outputs["/crossview/fix"]:
        e, n, _ = enu.forward(fix.latitude, fix.longitude, 0.0)
        p = poses[stamp_ns(fix)].pose.pose.position
        assert (p.x, p.y) == (pytest.approx(e, abs=1e-6), pytest.approx(n, abs=1e-6))
    assert result.node_returncode == 0  # stopped cleanly with SIGINT


def test_node_counters_and_rejections_add_up(result):
    s = result.summary
    counters = s["node_counters"]
    assert counters["frames_received"] == s["frames_published_by_replay"] == 31
    assert counters["frames_processed"] + counters["frames_dropped"] == counters["frames_received"]
    assert counters["estimates_published"] == s["published"]
    assert set(result.rejections) == {str(r) for r in Reason if r is not Reason.OK}
    assert sum(result.rejections.values()) + s["published"] == counters["frames_processed"]
    assert s["published_share"] == pytest.approx(s["published"] / 31)


def test_latency_is_measured_per_published_frame(result):
    for f in result.frames:
        assert f.published_s is not None  # every panorama went out
        if f.accepted:
            assert f.received_s >= f.published_s and f.latency_s == pytest.approx(f.received_s - f.published_s)
            assert f.latency_s < 5.0
        else:
            assert f.latency_s is None
    lat = np.asarray([1000.0 * f.latency_s for f in result.frames if f.accepted])
    assert result.summary["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
    assert result.summary["latency_ms"]["p99"] == pytest.approx(np.percentile(lat, 99))


# --------------------------------------------------------------------------- the evaluation


def test_positions_and_errors_match_an_independent_localizer(result, world, bag_messages, gate):
    """The same frames through an in-process Localizer with the node's settings: same decisions,
    same positions and headings; errors recomputed from the bag's ground truth."""
    reference = localize_all(world, bag_messages, min_margin=gate)
    by_stamp = {round(f.stamp_s * 1e9): f for f in result.frames}
    truth, truth_pose = bag_messages["truth"], bag_messages["truth_pose"]
    zone = read_drive_bag(world["bag"]).datum["utm_zone"]
    compared = headings = 0
    for t_ns, est in reference.items():
        frame = by_stamp[t_ns]
        if est is None:
            assert not frame.accepted
            continue
        assert frame.accepted == est.accepted, (t_ns, est.reason, est.message)
        assert est.accepted or est.reason == Reason.LOW_MARGIN
        if not est.accepted:
            assert frame.lat_deg is None and frame.error_m is None and frame.latency_s is None
            continue
        assert frame.lat_deg == pytest.approx(est.lat_deg, abs=1e-8)
        assert frame.lon_deg == pytest.approx(est.lon_deg, abs=1e-8)
        assert frame.sigma_m == pytest.approx(est.sigma_m, rel=1e-6)
        tlat, tlon = truth[t_ns]
        assert frame.error_m == pytest.approx(geo.distance_m(tlat, tlon, est.lat_deg, est.lon_deg), abs=1e-3)
        compared += 1
        if est.yaw_enu_rad is None:
            assert frame.yaw_enu_rad is None and frame.heading_error_deg is None
        else:
            assert frame.yaw_enu_rad == pytest.approx(est.yaw_enu_rad, abs=1e-6)
            yaw_grid, e_m, n_m = truth_pose[t_ns]
            lat, lon = geo.utm_to_latlon(e_m, n_m, zone)
            yaw_true = geo.yaw_utm_to_enu(yaw_grid, lat, lon, zone)
            err = abs(math.degrees(geo.wrap_angle_rad(est.yaw_enu_rad - yaw_true)))
            assert frame.heading_error_deg == pytest.approx(err, abs=1e-4)
            headings += 1
    for t_ns, frame in by_stamp.items():  # raw GNSS: the newest valid fix not after the stamp
        valid = [m for s, m in bag_messages["fixes"] if s <= t_ns and m.status.status >= 0]
        if valid:
            expected = geo.distance_m(*truth[t_ns], valid[-1].latitude, valid[-1].longitude)
            assert frame.gnss_error_m == pytest.approx(expected, abs=1e-3)
    low_margin = sum(e is not None and e.reason == Reason.LOW_MARGIN for e in reference.values())
    assert result.rejections["LOW_MARGIN"] == low_margin >= 3
    assert compared == sum(f.accepted for f in result.frames) >= 5
    assert headings == result.summary["heading"]["count"] >= 1


def test_fused_track_and_summary_statistics(result):
    s = result.summary
    fused = [f.fused_error_m for f in result.frames if f.fused_error_m is not None]
    first_published = min(f.index for f in result.frames if f.accepted)
    assert len(fused) == len(result.frames) - first_published  # a fused position from the first pose on
    ours = np.asarray([f.error_m for f in result.frames if f.accepted])
    assert s["errors"]["crossview"]["count"] == ours.size
    assert s["errors"]["crossview"]["median_m"] == pytest.approx(np.median(ours))
    assert s["errors"]["crossview"]["p95_m"] == pytest.approx(np.percentile(ours, 95))
    assert s["errors"]["crossview"]["under_25m_pct"] == pytest.approx(100.0 * np.mean(ours < 25.0))
    assert s["errors"]["fused"]["mean_m"] == pytest.approx(np.mean(fused))
    fused_ours = [f.fused_error_m for f in result.frames if f.accepted]  # like for like with ours
    assert s["errors"]["fused_on_published_frames"]["count"] == ours.size == len(fused_ours)
    assert s["errors"]["fused_on_published_frames"]["p95_m"] == pytest.approx(np.percentile(fused_ours, 95))
    assert s["fusion"]["accepted"]["pose"] + s["fusion"]["rejected"]["pose"] == ours.size
    assert s["fusion"]["accepted"]["odom"] > 100  # 50 Hz wheel odometry
    assert "ekf.yaml" in s["fusion"]["description"]
    assert s["fusion"]["with_gnss"]["accepted"]["gnss"] > 0


def test_report_and_summary_json_agree(result):
    out = result.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    md = (out / "report.md").read_text()
    e = summary["errors"]["crossview"]
    assert (f"| crossview fix (published frames) | {e['count']} | {e['median_m']:.2f} | {e['mean_m']:.2f} | "
            f"{e['p95_m']:.2f} |") in md
    g = summary["errors"]["gnss"]
    assert f"| raw GNSS (every frame with a fix) | {g['count']} | {g['median_m']:.2f} |" in md
    assert f"| latency p50 [ms] | {summary['latency_ms']['p50']:.1f} |" in md
    assert f"| published share [%] | {100 * summary['published_share']:.1f} |" in md
    for reason, count in summary["rejections"].items():
        assert f"| {reason} | {count} |" in md
    h = summary["heading"]
    assert f"| heading error median [deg] | {h['median_deg']:.1f} |" in md
    for name in ("error_cdf.png", "error_over_time.png", "trajectory.png", "latency.png", "heading_error.png"):
        assert (out / name).stat().st_size > 1000 and f"]({name})" in md
    assert "mosaic of the tile images" in summary["trajectory_background"]
    with open(out / "frames.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 31
    assert [r["accepted"] == "True" for r in rows] == [f.accepted for f in result.frames]
    assert not list(out.parent.glob(".out.*"))  # the temporary folder was renamed, nothing left beside


# --------------------------------------------------------------------------- ranking and plots


def test_tracks_are_ranked_by_p95_not_median():
    """Track a has the lower median, track b the lower p95: b ranks first; a track with no errors last."""
    from crossview_ros.replay_evaluation import rank_by_p95

    errors = {"a": {"median_m": 0.8, "p95_m": 27.0}, "b": {"median_m": 1.1, "p95_m": 3.0},
              "c": {"median_m": None, "p95_m": None}, "d": {"median_m": 2.0, "p95_m": 27.0}}
    assert rank_by_p95(errors, ("c", "a", "b", "d")) == ["b", "a", "d", "c"]  # a before d: the order given


def test_summary_and_report_name_the_best_tracks_by_p95(result):
    s = result.summary
    p95 = {k: s["errors"][k]["p95_m"] for k in ("gnss", "crossview", "fused", "fused_with_gnss")}
    ranked = sorted((k for k in p95 if p95[k] is not None), key=lambda k: p95[k])
    assert s["ranking_by_p95"][:len(ranked)] == ranked
    best_fused = min(("fused", "fused_with_gnss"), key=lambda k: p95[k])
    assert s["fusion"]["primary_track"] == best_fused
    md = (result.out / "report.md").read_text()
    assert "Ranked by p95, best first" in md
    assert f"the primary fused track (the lower p95) is {s['fusion']['primary']}." in md


def frame(index: int, stamp_s: float, **values) -> object:
    """A FrameRecord with nothing but what a test sets (the rest None / False / 0)."""
    from crossview_ros.replay_evaluation import FrameRecord

    fields = {name: None for name in FrameRecord.__dataclass_fields__}
    fields.update(index=index, stamp_s=stamp_s, accepted=False, truth_lat_deg=0.0, truth_lon_deg=0.0,
                  truth_yaw_enu_rad=0.0)
    fields.update(values)
    return FrameRecord(**fields)


def test_error_over_time_breaks_the_lines_where_a_track_has_no_value():
    """Frames at 2 Hz, GNSS at 1 Hz with a 5 s dropout (t = 10..15 s): the frames that only hold the fix
    of t = 10 s for more than 1.5 fix intervals (ages 2.0 .. 4.5 s) are gaps, not a ramp; so are unpublished
    crossview frames and a fused track before its first position."""
    from crossview_ros.replay_evaluation import Evaluation
    from crossview_ros.report import error_series, gnss_fresh

    frames = []
    for i in range(41):
        t = 100.0 + 0.5 * i
        fix_t = 110.0 if 110.0 <= t < 115.0 else math.floor(t)
        frames.append(frame(i, t, gnss_age_s=t - fix_t, gnss_error_m=0.1 * i, accepted=i % 4 != 3,
                            error_m=1.0, fused_error_m=None if i < 2 else 2.0, fused_gnss_error_m=3.0))
    ev = Evaluation(frames=frames, summary={}, rejections={}, diagnostics={}, fusion_description="",
                    fusion_gnss_description="", stray_stamps_s=[])
    stale = [i for i, f in enumerate(frames) if f.gnss_age_s > 1.5]
    assert stale == list(range(24, 30))  # t = 112.0 .. 114.5
    assert np.flatnonzero(~gnss_fresh(ev)).tolist() == stale
    t, e = error_series(ev, "gnss")
    assert t[0] == 0.0 and t[-1] == 20.0 and e.size == 41
    assert np.flatnonzero(np.isnan(e)).tolist() == stale
    assert e[23] == pytest.approx(2.3) and e[30] == pytest.approx(3.0)  # the last fresh one, the next fix
    _, e = error_series(ev, "crossview")
    assert np.flatnonzero(np.isnan(e)).tolist() == [i for i in range(41) if i % 4 == 3]
    _, e = error_series(ev, "fused")
    assert np.flatnonzero(np.isnan(e)).tolist() == [0, 1]


def test_histograms_mark_median_p95_and_p99():
    from crossview_ros.report import histogram_markers

    # 1..100: percentile q sits at index q/100 * 99 (linear), so p95 = 95.05 and p99 = 99.01
    assert histogram_markers(np.arange(1.0, 101.0)) == [("median", pytest.approx(50.5)), ("p95", pytest.approx(95.05)),
                                                        ("p99", pytest.approx(99.01))]
    assert histogram_markers(np.zeros(0)) == []


def test_recorded_outputs_re_evaluate_to_the_same_errors_with_every_track_for_the_plot(result, world):
    """The fused tracks can be recomputed from outputs.mcap and the bag (no node): the same errors per
    frame; the trajectory gets all five tracks, fused + GNSS at the positions its frames hold."""
    from rosbags.rosbag2 import Reader

    from crossview_ros.bag.drive import read_bag
    from crossview_ros.replay_evaluation import Playback, Received, evaluate
    from crossview_ros.report import TRAJECTORY_ORDER

    received = []
    with Reader(result.outputs_mcap) as reader:
        for conn, log_ns, raw in reader.messages():
            received.append(Received(conn.topic, log_ns / 1e9, bytes(raw)))
    bag = read_bag(world["bag"])
    playback = Playback(received=received, published_s={}, frames_published=len(result.frames), fixes_published=0,
                        node_returncode=0, wall_s=0.0, domain_id=0, node_command=[])
    ev = evaluate(bag, playback)
    for key in ("error_m", "gnss_error_m", "fused_error_m", "fused_gnss_error_m"):
        assert [getattr(f, key) for f in ev.frames] == pytest.approx([getattr(f, key) for f in result.frames])
    assert set(ev.track_utm) == set(TRAJECTORY_ORDER) == {"truth", "gnss", "crossview", "fused", "fused_with_gnss"}
    xy = ev.track_utm["fused_with_gnss"]
    held = [i for i, f in enumerate(ev.frames) if f.fused_gnss_lat_deg is not None]
    assert held and np.isfinite(xy[held]).all()
    i = held[-1]
    e, n, _ = geo.latlon_to_utm(ev.frames[i].fused_gnss_lat_deg, ev.frames[i].fused_gnss_lon_deg, zone=bag.zone)
    assert xy[i] == pytest.approx([float(e), float(n)], abs=1e-6)


# --------------------------------------------------------------------------- failures


def copy_bag_without(src: Path, dst: Path, drop: str) -> Path:
    """The bag with one topic left out."""
    ts = typestore()
    with AnyReader([src], default_typestore=ts) as reader, \
            Writer(dst, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=ts)
                 for c in reader.connections if c.topic != drop}
        for conn, log_ns, raw in reader.messages():
            if conn.topic != drop:
                writer.write(conns[conn.topic], log_ns, raw)
    return dst


def test_missing_topic_exits_2_and_writes_nothing(world, tmp_path):
    """A needed topic missing: one line naming it and the topics the bag has; exit 2, nothing written."""
    bag = copy_bag_without(world["bag"], tmp_path / "no_gnss", "/gnss/fix")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "crossview_ros.replay", str(bag), "--tiles", str(world["tiles"]),
                           "--model", str(world["model"]), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("crossview-replay: error: bag ") and "has no fix topic /gnss/fix (the default)" in error
    assert "its topics: /crossview/datum (String), /ground_truth/fix (NavSatFix)" in error
    assert "--fix-topic" in error and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_node_that_dies_is_reported_with_its_log(world, tmp_path):
    broken = tmp_path / "broken_model"
    shutil.copytree(world["model"], broken)
    (broken / "model.json").write_text("{ not json")
    out = tmp_path / "out"
    with pytest.raises(replay.NodeError) as info:
        replay.replay_bag(world["bag"], world["tiles"], broken, out, rate=RATE, node_args=NODE_ARGS,
                          progress=False, timeout_s=60.0)
    assert info.value.returncode == 2 and info.value.exit_code == 2
    assert "exited with code 2" in str(info.value)
    assert "cannot start the localizer" in str(info.value)  # the node's own ERROR line, from its log tail
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_existing_out_is_refused_unless_overwrite(world, result):
    with pytest.raises(replay.ReplayError, match="exists"):
        replay.replay_bag(world["bag"], world["tiles"], world["model"], result.out, progress=False)


def test_localize_cli_evaluates_a_bag_as_the_stream_the_node_sees(world, bag_messages, capsys):
    from crossview_ros import localize_cli

    code = localize_cli.main(["--model", str(world["model"]), "--tiles", str(world["tiles"]), "--bag",
                              str(world["bag"]), "--heading", "--json", "--threads", "1", "--quiet",
                              "--set", "max_mahalanobis=1000000.0"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    want = {t: e for t, e in localize_all(world, bag_messages).items() if e is not None}
    rows = doc["estimates"]
    assert len(rows) == len(want) and doc["summary"]["frames"] == len(want)
    for row, (t_ns, est) in zip(rows, sorted(want.items())):
        assert row["stamp_s"] == pytest.approx(t_ns / 1e9)
        assert row["accepted"] == est.accepted
        if est.has_position:
            assert row["lat_deg"] == pytest.approx(est.lat_deg, abs=1e-9)
            assert row["lon_deg"] == pytest.approx(est.lon_deg, abs=1e-9)
        lat, lon = bag_messages["truth"][t_ns]
        assert (row["truth_lat_deg"], row["truth_lon_deg"]) == pytest.approx((lat, lon), abs=1e-9)
    assert doc["summary"]["published"] == sum(e.accepted for e in want.values())


def test_localize_cli_pools_several_bags_each_its_own_stream(world, capsys):
    """The same walk twice: twice the frames, each half the single walk's estimates (a new stream:
    its stamps start over and nothing of the first walk's track is left); tile sets must pair up."""
    from crossview_ros import localize_cli

    base = ["--model", str(world["model"]), "--tiles", str(world["tiles"]), "--json", "--threads", "1", "--quiet",
            "--set", "max_mahalanobis=1000000.0"]

    def run(*extra: str) -> dict:
        assert localize_cli.main(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)

    one = run("--bag", str(world["bag"]))["estimates"]
    two = run("--bag", str(world["bag"]), "--bag", str(world["bag"]))["estimates"]
    assert len(two) == 2 * len(one)
    for half in (two[:len(one)], two[len(one):]):
        assert [r["reason"] for r in half] == [r["reason"] for r in one]
        assert [r["lat_deg"] for r in half] == [r["lat_deg"] for r in one]
    assert localize_cli.main(base + ["--tiles", str(world["tiles"])] + ["--bag", str(world["bag"])] * 3) == 2
    assert "one --tiles for all or one per bag" in capsys.readouterr().err


# --------------------------------------------------------------------------- killed replays, stray nodes


def replay_argv(world, out: Path, rate: str = "0.5") -> list[str]:
    return [sys.executable, "-m", "crossview_ros.replay", str(world["bag"]), "--tiles", str(world["tiles"]),
            "--model", str(world["model"]), "--out", str(out), "--rate", rate, "--no-progress",
            *(f"--node-arg={a}" for a in NODE_ARGS)]


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def start_replay_until_playing(world, out: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """crossview-replay as a process, returned once its node runs and frames flow (node.log has content)."""
    proc = subprocess.Popen(replay_argv(world, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 90.0
    while True:
        assert proc.poll() is None, proc.stderr.read()
        nodes = children_of(proc.pid)
        logs = list(out.parent.glob(f".{out.name}.*.partial/node.log"))
        if nodes and logs and "datum" in logs[0].read_text(errors="replace"):
            return proc, nodes[0]
        assert time.monotonic() < deadline, "the replay's node never started"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_replay_takes_its_node_along_and_the_rerun_is_clean(world, tmp_path, sig):
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.SystemRandom().randint(120, 200)),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    out = tmp_path / "out"
    proc, node = start_replay_until_playing(world, out, env)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    deadline = time.monotonic() + 20.0
    while pid_alive(node) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(node), "localize_node outlived its replay"
    assert not out.exists()
    if sig == signal.SIGTERM:  # unwound: the node stopped, nothing half-written left
        assert code == 128 + signal.SIGTERM and "terminated" in proc.stderr.read()
        assert not list(tmp_path.glob(".out*"))
    done = subprocess.run(replay_argv(world, out, rate=str(RATE)), env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())  # a SIGKILLed run's folder swept
    summary = json.loads((out / "summary.json").read_text())
    fixes = read_outputs(out / "outputs.mcap").get("/crossview/fix", [])
    # one node answered: one fix per published stamp, its counters no larger than what this replay sent
    assert len(fixes) == summary["published"] == len({m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
                                                      for _, m in fixes})
    assert summary["stray_output_stamps"] == 0
    assert summary["node_counters"]["frames_received"] <= summary["frames_published_by_replay"]


def test_a_replay_refuses_to_start_beside_a_stray_node(world, tmp_path):
    domain = random.SystemRandom().randint(120, 200)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    stray_cmd = replay.node_command(world["tiles"], world["model"], 40.0, -74.0, node_args=NODE_ARGS)
    stray = subprocess.Popen(stray_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stray.stdout), daemon=True)  # keeps the pipe drained
    reader.start()
    try:
        deadline = time.monotonic() + 60.0  # the stray node up (its model loaded: slow on a busy machine)
        while not any("ready:" in line for line in list(lines)) and time.monotonic() < deadline:
            assert stray.poll() is None, "".join(lines)[-2000:]
            time.sleep(0.1)
        assert any("ready:" in line for line in list(lines)), "".join(lines)[-2000:]
        time.sleep(1.0)  # and announced on this host
        out = tmp_path / "out"
        done = subprocess.run(replay_argv(world, out), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr[-2000:]
        assert f"already runs in ROS_DOMAIN_ID {domain}" in done.stderr and "Traceback" not in done.stderr
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    finally:
        stray.send_signal(signal.SIGINT)
        stray.wait(timeout=20)
