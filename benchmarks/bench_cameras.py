"""Latency per frame of cameras that are not 360°, against the panorama in the same process.

Replays a drive bag's panoramas through Localizer.localize twice per rig: once as the 360°
panorama (the baseline, JPEG bytes as the node receives them) and once as each rig's camera
images (crossview_ros.sim.cameras renders them from the panorama outside the timed part, JPEG
bytes per camera), composed by the localizer (CameraFrame). Estimate.latency gives decode (with
the rig's composition), encode, search and the total; ratio = rig / panorama per row. Rigs run
in turn on fresh Localizers with the track off, so each frame does the same work.

    python -m benchmarks.bench_cameras --model MODEL --tiles TILES --bag BAG [--frames 60] [--json OUT]

MODEL must be a bev model (cameras need one); TILES its encoded tile set of the bag's city.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks._common import describe_machine, latency_stats_ms, machine_info
from crossview_ros.atomic import write_json_atomic
from crossview_ros.camera import CameraFrame
from crossview_ros.localize_frames import bag_frames
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.panorama import decode_panorama
from crossview_ros.sim.cameras import RIGS, ViewRenderer, rig_cameras

ROWS = ("decode", "preprocess", "encode", "search", "total")


def jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def run(model: Path, tiles: Path, bag: Path, frames: int, height_m: float) -> dict[str, Any]:
    frame_list, fixes = bag_frames(bag, frames)
    config = LocalizerConfig(tile_set=str(tiles), model=str(model), engine="onnxruntime", track=False,
                             odometry=False, covariance_file="none")
    results: dict[str, Any] = {}
    for rig_name in RIGS:
        with Localizer(config) as loc:
            inputs = []
            if rig_name == "panorama":
                inputs = [(fr.data, fr.encoding) for fr in frame_list]
            else:
                cams = rig_cameras(rig_name, height_m)
                rig = loc.camera_rig(cams)
                render = None
                for fr in frame_list:
                    pano = decode_panorama(fr.data, fr.encoding)
                    render = render or ViewRenderer(cams, pano.shape[:2])
                    views = tuple(jpeg(v) for v in render(pano))
                    inputs.append((CameraFrame(rig, views, (None,) * len(views)), None))
            samples: dict[str, list[int]] = {row: [] for row in ROWS}
            for (data, encoding), fr, fix in zip(inputs, frame_list, fixes):
                est = loc.localize(data, fix, fr.stamp_s, encoding=encoding, now_s=fr.stamp_s)
                if not est.has_position:
                    continue
                lat = est.latency
                for row in ROWS:
                    samples[row].append(int(getattr(lat, f"{row}_ms") * 1e6))
            results[rig_name] = {row: latency_stats_ms(v) for row, v in samples.items()}
    base = results["panorama"]
    for rows in results.values():
        for row, stats in rows.items():
            stats["ratio_p50"] = stats["p50_ms"] / base[row]["p50_ms"] if base[row]["p50_ms"] else float("nan")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_cameras", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="exported bev model folder")
    p.add_argument("--tiles", type=Path, required=True, help="its encoded tile set of the bag's city")
    p.add_argument("--bag", type=Path, required=True, help="a simulated drive bag (its panoramas become the views)")
    p.add_argument("--frames", type=int, default=60, help="frames per rig (default 60)")
    p.add_argument("--camera-height-m", type=float, default=1.7,
                   help="the simulated cameras' height: the bag's panorama height (walk 1.7, drive 2.0)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    info = machine_info()
    results = run(args.model, args.tiles, args.bag, args.frames, args.camera_height_m)
    print(describe_machine(info))
    print(f"{'rig':<10} " + " ".join(f"{r + ' p50/p99 ms':>22}" for r in ROWS) + "   total p50 / panorama")
    for rig_name, rows in results.items():
        cells = " ".join(f"{rows[r]['p50_ms']:>10.1f} /{rows[r]['p99_ms']:>9.1f}" for r in ROWS)
        print(f"{rig_name:<10} {cells}   {rows['total']['ratio_p50']:.2f} ({rows['total']['n']} frames)")
    if args.json:
        write_json_atomic(args.json, {"machine": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
