"""benchmarks/bench_hostile.py at a tiny size: every hostile input refused, the valid one decoded (no timing asserted)."""

from __future__ import annotations

import json

from benchmarks import bench_hostile


def test_bench_hostile_refuses_every_hostile_input(tmp_path):
    out = tmp_path / "hostile.json"
    assert bench_hostile.main(["--repeats", "3", "--pano-height-px", "64", "--json", str(out)]) == 0
    rows = {r["input"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows.pop("valid (baseline)")["refused"] == 0
    assert set(rows) == {"bomb 32768x16384", "truncated_with_eoi", "garbage_scan"}
    assert all(r["refused"] == 3 for r in rows.values()), rows
    assert rows["bomb 32768x16384"]["bytes"] < 1000  # a few hundred bytes claiming half a gigapixel


def test_the_bomb_header_claims_what_it_says():
    import cv2
    import numpy as np

    data = bench_hostile.jpeg_bomb(4000, 2000)
    header = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)  # 1/8 scale: 500 x 250
    assert header is not None and header.shape[:2] == (250, 500)
