"""Hostile panoramas: how fast, and with how much memory, the decoder refuses them.

Measures, in one process, crossview_ros.panorama.decode_panorama (what the node's worker runs
first on every frame) on:
- the decompression bomb of issue 18: a few hundred bytes of valid JPEG whose frame header claims
  32768 x 16384 px (it used to take 12-14 s and 3 GB, then publish a grey image);
- a truncated JPEG with an end marker appended, and one whose scan data is garbage (libjpeg warns
  about both; the strict decoder refuses them);
- the baseline: the same-size valid panorama (1024 x 512) decoded, in the same process.

For each: p50 / p99 per call, whether every call was refused, and the peak RSS growth over the
calls (VmHWM, reset through /proc/self/clear_refs where the kernel allows it). Targets (issue 18):
the bomb refused in under 0.1 s with at most 100 MB of extra memory.

    python -m benchmarks.bench_hostile
    python -m benchmarks.bench_hostile --repeats 20 --json out/hostile.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks._common import describe_machine, latency_stats_ms, machine_info, print_table, print_targets
from crossview_ros.atomic import write_json_atomic
from crossview_ros.panorama import decode_panorama

TARGET_BOMB_S = 0.1
TARGET_BOMB_EXTRA_MB = 100.0
BOMB_SIZE_PX = (32768, 16384)  # width, height the bomb's header claims


def panorama_jpeg(height_px: int = 512, seed: int = 0) -> bytes:
    """A textured equirectangular panorama (2 h x h) as a quality-95 JPEG."""
    rng = np.random.default_rng(seed)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (height_px, 2 * height_px, 3), dtype=np.uint8), (5, 5), 1.5)
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("OpenCV could not encode the test panorama")
    return buf.tobytes()


def jpeg_bomb(width_px: int = BOMB_SIZE_PX[0], height_px: int = BOMB_SIZE_PX[1]) -> bytes:
    """A valid 32 x 16 px JPEG whose start-of-frame header is rewritten to claim width x height px."""
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 32, 3), np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode the bomb's seed image")
    data = bytearray(buf.tobytes())
    i = 2
    while i + 4 <= len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            data[i + 5:i + 9] = height_px.to_bytes(2, "big") + width_px.to_bytes(2, "big")
            return bytes(data)
        i += 2 + length
    raise RuntimeError("no start-of-frame marker in the encoded JPEG")


def corrupt_jpegs(good: bytes, seed: int = 7) -> dict[str, bytes]:
    """JPEGs libjpeg decodes with a warning into a partly grey or wrong image."""
    sos = good.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(good[sos + 2:sos + 4], "big")
    noise = np.random.default_rng(seed).integers(0, 255, len(good) - 2 - scan, dtype=np.uint8).tobytes()
    return {"truncated_with_eoi": good[:scan + (len(good) - scan) // 2] + b"\xff\xd9",
            "garbage_scan": good[:scan] + noise.replace(b"\xff", b"\x00") + b"\xff\xd9"}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def time_decode(data: bytes, repeats: int, decode: Callable[[bytes], Any] = decode_panorama) -> dict[str, Any]:
    """Per-call latency of decode(data), how many calls raised ValueError, and the peak RSS growth."""
    decode_or_none(decode, data)  # warm-up: first-call allocations are not the input's cost
    peak_reset = reset_peak_rss()
    rss_before_kb = _status_kb("VmRSS:")
    samples, refused = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        refused += decode_or_none(decode, data) is None
        samples.append(time.perf_counter_ns() - t0)
    extra_mb = (_status_kb("VmHWM:") - rss_before_kb) / 1024.0 if peak_reset else None
    return {**latency_stats_ms(samples), "bytes": len(data), "refused": refused, "peak_extra_mb": extra_mb}


def decode_or_none(decode: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return decode(data)
    except ValueError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=100, help="timed calls per input (default 100)")
    p.add_argument("--pano-height-px", type=int, default=512, help="baseline panorama height, px (default 512)")
    p.add_argument("--json", type=Path, help="also write the figures and the machine as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(describe_machine(info))
    good = panorama_jpeg(args.pano_height_px)
    inputs = {"valid (baseline)": good, "bomb 32768x16384": jpeg_bomb(), **corrupt_jpegs(good)}
    rows = []
    for name, data in inputs.items():
        row = {"input": name, **time_decode(data, args.repeats)}
        rows.append(row)
    base_ms = rows[0]["p50_ms"]
    for row in rows:
        row["ratio"] = row["p50_ms"] / base_ms if base_ms > 0 else None
    print(f"\ndecode_panorama, {args.repeats} calls per input (ratio: p50 against the valid panorama's):")
    print_table(rows, [("input", "input", "s"), ("bytes", "bytes", "d"), ("refused", "refused", "d"),
                       ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"), ("ratio", "ratio", ".3f"),
                       ("peak_extra_mb", "peak +MB", ".1f")])
    bomb = rows[1]
    targets = {
        "bomb p99": {"value": bomb["p99_ms"] / 1000.0, "target": f"< {TARGET_BOMB_S:g} s",
                     "met": bomb["p99_ms"] / 1000.0 < TARGET_BOMB_S and bomb["refused"] == args.repeats},
        "bomb peak +MB": {"value": bomb["peak_extra_mb"], "target": f"<= {TARGET_BOMB_EXTRA_MB:g}",
                          "met": None if bomb["peak_extra_mb"] is None
                          else bomb["peak_extra_mb"] <= TARGET_BOMB_EXTRA_MB},
    }
    print()
    print_targets(targets, 14, ".3f")
    if args.json:
        write_json_atomic(args.json, {"machine": info, "repeats": args.repeats, "rows": rows,
                                      "targets": targets})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
