"""Synthetic city speed: panoramas per second, and time to build a city with its orthophoto.

Measures, in one process:
- panorama rendering at 640x320 and 1024x512 from street positions of a generated city, with
  every core (the default) beside the same renderer pinned to one thread (the baseline; ratio =
  speed-up), numba compilation excluded (one warm-up render first);
- building a city of --size-m (default 1 km^2) at 0.15 m/px: layout, scene rasters, orthophoto
  render and GeoTIFF write, each timed.

Targets (design.md / issue 4, 2-core CPU): >= 30 panoramas/s at 640x320; a 1 km^2 city with its
orthophoto at 0.15 m/px in under 2 minutes.

    python -m benchmarks.bench_render --quick
    python -m benchmarks.bench_render --json out/render.json
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from benchmarks._common import describe_machine, latency_stats_ms, machine_info, print_table
from crossview_ros.atomic import write_json_atomic
from crossview_ros.sim.city import CityConfig, generate_city
from crossview_ros.sim.ortho import render_orthophoto, write_orthophoto
from crossview_ros.sim.render import CameraConfig, render_panorama
from crossview_ros.sim.scene import Material, Sun

TARGET_PANO_PER_S = 30.0  # at 640x320
TARGET_CITY_S = 120.0  # 1 km^2 at 0.15 m/px, with orthophoto


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run in seconds: 300 m city, fewer panoramas")
    p.add_argument("--size-m", type=float, default=None, help="city side, metres (default 1000; quick 300)")
    p.add_argument("--gsd-m", type=float, default=0.15, help="city raster resolution, m/px (default 0.15)")
    p.add_argument("--panoramas", type=int, default=None, help="timed panoramas per size (default 100; quick 10)")
    p.add_argument("--seed", type=int, default=0, help="city seed (default 0)")
    p.add_argument("--json", type=Path, help="also write the figures and the machine as JSON here")
    return p.parse_args(argv)


def street_positions(city, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3) easting, northing, yaw on open street cells."""
    scene = city.scene(1)
    nodes, edges = city.streets.nodes_en, city.streets.edges
    out = []
    while len(out) < count:
        k = rng.integers(len(edges))
        t = rng.uniform()
        e, n = nodes[edges[k, 0]] + t * (nodes[edges[k, 1]] - nodes[edges[k, 0]])
        r, c = scene.cell_of(e, n)
        if scene.contains(e, n) and scene.height_m[r, c] <= 0.3 and scene.material[r, c] != Material.BUILDING:
            out.append((e, n, rng.uniform(-math.pi, math.pi)))
    return np.array(out)


def time_panoramas(city, poses: np.ndarray, height_px: int, threads: int) -> dict:
    scene = city.scene(1)
    sun = Sun(140.0, 40.0)
    camera = CameraConfig()
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        render_panorama(scene, *poses[0], height_px=height_px, camera=camera, sun=sun)  # warm-up / compile
        samples = []
        for e, n, yaw in poses:
            t0 = time.perf_counter_ns()
            render_panorama(scene, e, n, yaw, height_px=height_px, camera=camera, sun=sun)
            samples.append(time.perf_counter_ns() - t0)
    finally:
        numba.set_num_threads(previous)
    stats = latency_stats_ms(samples)
    stats["per_s"] = 1000.0 / stats["mean_ms"]
    return stats


def time_city(size_m: float, gsd_m: float, seed: int) -> dict:
    t0 = time.perf_counter()
    city = generate_city(CityConfig(size_m=size_m, gsd_m=gsd_m, seed=seed))
    t1 = time.perf_counter()
    scene = city.scene(0)
    t2 = time.perf_counter()
    image = render_orthophoto(scene, Sun(150.0, 55.0))
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_orthophoto(Path(tmp) / "orthophoto.tif", image, scene)
    t4 = time.perf_counter()
    return {"city": city, "layout_s": t1 - t0, "scene_s": t2 - t1, "ortho_s": t3 - t2, "geotiff_s": t4 - t3,
            "total_s": t4 - t0, "size_px": scene.shape[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size_m = args.size_m or (300.0 if args.quick else 1000.0)
    count = args.panoramas or (10 if args.quick else 100)
    info = machine_info()
    print(describe_machine(info))

    build = time_city(size_m, args.gsd_m, args.seed)
    city = build.pop("city")
    print(f"\ncity {size_m:.0f} m x {size_m:.0f} m at {args.gsd_m} m/px ({build['size_px']} px per side):")
    print_table([build], [("layout_s", "layout s", ".1f"), ("scene_s", "scene s", ".1f"),
                          ("ortho_s", "orthophoto s", ".1f"), ("geotiff_s", "GeoTIFF s", ".1f"),
                          ("total_s", "total s", ".1f")])

    poses = street_positions(city, count, np.random.default_rng(args.seed))
    rows = []
    for height in (320, 512):
        base = time_panoramas(city, poses, height, threads=1)
        full = time_panoramas(city, poses, height, threads=numba.config.NUMBA_NUM_THREADS)
        rows.append({"size": f"{2 * height}x{height}", "threads": numba.config.NUMBA_NUM_THREADS,
                     "p50_ms": full["p50_ms"], "p99_ms": full["p99_ms"], "per_s": full["per_s"],
                     "base_p50_ms": base["p50_ms"], "base_per_s": base["per_s"],
                     "ratio": full["per_s"] / base["per_s"]})
    print(f"\npanoramas ({count} street positions, numba compile excluded; baseline = same renderer, 1 thread):")
    print_table(rows, [("size", "size", str), ("threads", "thr", "d"), ("p50_ms", "p50 ms", ".1f"),
                       ("p99_ms", "p99 ms", ".1f"), ("per_s", "pano/s", ".1f"),
                       ("base_p50_ms", "1-thr p50 ms", ".1f"), ("base_per_s", "1-thr pano/s", ".1f"),
                       ("ratio", "ratio", ".2f")])
    pano_met = rows[0]["per_s"] >= TARGET_PANO_PER_S
    print(f"\ntargets: 640x320 {rows[0]['per_s']:.1f} pano/s >= {TARGET_PANO_PER_S:.0f}: {'met' if pano_met else 'NOT MET'}")
    if size_m >= 1000.0:
        city_met = build["total_s"] < TARGET_CITY_S
        print(f"         1 km^2 city + orthophoto {build['total_s']:.1f} s < {TARGET_CITY_S:.0f} s: "
              f"{'met' if city_met else 'NOT MET'}")
    else:
        print(f"         city build target is for 1 km^2 (this run: {size_m:.0f} m side)")
    if args.json:
        write_json_atomic(args.json, {"machine": info, "city_m": size_m, "gsd_m": args.gsd_m, "city_build": build,
                                      "panoramas": rows, "targets": {"pano_per_s": TARGET_PANO_PER_S,
                                                                     "city_s": TARGET_CITY_S}})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
