"""Smoke run of benchmarks/bench_bev_correlate.py at a tiny size: both ways agree and the table says which
one correlate takes (no timing asserted)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from benchmarks import bench_bev_correlate  # noqa: E402
from crossview_training.bev.model import DIRECT_MAX_KERNEL  # noqa: E402


def test_bench_bev_correlate_measures_both_ways_and_writes_its_json(tmp_path):
    out = tmp_path / "correlate.json"
    kernels = (DIRECT_MAX_KERNEL, DIRECT_MAX_KERNEL + 4)
    assert bench_bev_correlate.main(["--kernels", ",".join(map(str, kernels)), "--queries", "2", "--cells", "40",
                                     "--repeats", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernel_cells"] for r in rows] == list(kernels)
    assert [r["used"] for r in rows] == ["direct", "fft"]
    for r in rows:
        assert r["max_rel_diff"] < 1e-4  # the same numbers both ways
        assert r["direct_p50_ms"] > 0 and r["fft_p50_ms"] > 0 and r["ratio"] > 0
