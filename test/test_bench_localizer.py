"""Smoke run of benchmarks/bench_localizer.py at a tiny size: it must keep working (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_localizer_runs_and_writes_its_json(tmp_path, tiny_model, tiny_export):
    """Tiny model (with its checkpoint for the PyTorch side), a 300 m city, a 6-panorama walk."""
    pytest.importorskip("torch")
    from crossview_training.models import save_checkpoint

    checkpoint = save_checkpoint(tiny_model(0), tmp_path / "tiny.pt")
    out = tmp_path / "localizer.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_localizer", "--model", str(tiny_export(0)), "--checkpoint",
         str(checkpoint), "--city-m", "300", "--frames", "6", "--warmup", "1", "--pano-height-px", "64",
         "--threads", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(out.read_text())
    res = summary["results"]
    for pipeline in ("onnxruntime", "torch_eager"):
        run = res[pipeline]
        assert run["frames"] == 6 and sum(run["reasons"].values()) == 6
        assert run["frames_full"] >= 1
        assert set(run["stages"]) == {"decode", "preprocess", "encode", "search", "offset", "heading", "other",
                                      "total"}
        assert run["stages"]["total"]["n"] == run["frames_full"] and run["stages"]["heading"]["p50_ms"] > 0
        assert run["rss"]["window_frames"] == 3 and run["rss"]["first_mb"] > 0
    assert res["onnxruntime"]["engine"].startswith("onnxruntime:CPU")
    assert res["torch_eager"]["engine"].startswith("torch-eager")
    assert not summary["config"]["torch_random_weights"]  # the checkpoint matched the export's model hash
    assert res["agreement"]["frames"] >= 1
    assert set(res["ratio_torch_over_onnx"]["total"]) == {"p50", "p99"}
    assert not summary["targets"]["applies"]  # targets are stated for 640x320; this model is 128x64
    assert "ratio p50" in done.stdout and "onnxruntime" in done.stdout
