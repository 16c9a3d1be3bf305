"""Smoke run of benchmarks/bench_node.py at a tiny size: latency, lockstep and a short looped long run through
the real localize_node must keep working and report consistent counts (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("rclpy")
pytest.importorskip("filterpy")
pytest.importorskip("matplotlib")


def test_bench_node_runs_and_writes_its_json(tmp_path, tiny_export):
    """Tiny model, a 300 m city, an 8-panorama walk at 2 Hz played at 10 Hz, lockstep, and a 3 s long run at
    10 Hz (the walk looped 4 times) with the node's RSS sampled every second."""
    out = tmp_path / "node.json"
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_node", "--model", str(tiny_export(0)), "--city-m", "300",
         "--frames", "8", "--warmup", "1", "--pano-height-px", "64", "--threads", "1", "--long-minutes", "0.05",
         "--rss-period-s", "1", "--workdir", str(work), "--no-progress", "--json", str(out)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(out.read_text())
    res, cfg = summary["results"], summary["config"]
    assert cfg["frames"] == 8 and cfg["bag_rate_hz"] == pytest.approx(2.0) and cfg["replay_rate"] == pytest.approx(5.0)
    assert "min_margin:=-1.0" in cfg["node_args"] and "heading:=true" in cfg["node_args"]

    lat = res["node_latency"]
    assert lat["frames"] == 8 and not lat["lockstep"] and lat["rate"] == pytest.approx(5.0)
    assert lat["latency"]["n"] == lat["published"] >= 1  # one latency per published frame
    assert lat["received_by_node"] == 8 and lat["processed"] + lat["dropped"] == 8

    ls = res["node_lockstep"]
    assert ls["lockstep"] and ls["every_frame_processed"] and ls["dropped"] == 0 and ls["lost_in_transport"] == 0
    assert ls["processed"] == 8 and ls["frames_per_s"] > 0 and ls["publish_s"] > 0
    assert ls["rss"]["start_mb"] > 0 and ls["rss"]["end_mb"] > 0

    long_run = res["node_long"]
    assert long_run["loops"] == 4 and long_run["frames"] == 32  # 3 s at 10 Hz = 30 frames -> 4 loops of 8
    assert long_run["received_by_node"] == 32
    rss = long_run["rss"]
    assert [s["at"] for s in rss["samples"]][0] == "start" and rss["samples"][-1]["at"] == "end"
    assert any(s["at"] == "periodic" for s in rss["samples"]) and rss["growth_pct"] is not None
    assert (work / "drive_city_300m_seed0_walk_8f_2hz_128x64_seed0_loop4" / "metadata.yaml").is_file()

    base = res["in_process"]
    assert base["frames"] == 8 and base["stages"]["total"]["n"] >= 1
    assert set(res["ratio_node_over_in_process"]) == {"latency_p50", "latency_p99", "frames_per_s"}
    targets = summary["targets"]
    assert not targets["applies"]  # stated for the small model at 640x320; this one is 128x64
    assert set(targets) >= {"latency_p50_ms", "latency_p99_ms", "frames_per_s_every_frame", "rss_growth_pct"}
    assert targets["rss_growth_pct"]["met"] in (True, False)
    assert "frames/s, every frame processed" in done.stdout and "long run RSS samples" in done.stdout
