"""Scope query + exact scoped search vs FAISS flat search over all tiles.

For tile sets of 10 k, 100 k and 1 M tiles (lattice of 36.48 m stride around New York, one
UTM zone, random 512-d float16 descriptors, no images) this measures, in one process:
- opening each set (TileSet.open): wall time and RSS added;
- the localizer's hot path: tiles_within(fix, 200 m) + ScopedSearch.search top-10;
- the baseline in the same run: FAISS IndexFlatIP over all tiles, k = 10, one query at a time;
and prints p50 / p99 / mean plus ratio = FAISS p50 / scoped p50.

Targets (design.md, 2-core CPU): 1 M tiles: scoped p50 <= 0.5 ms and >= 100x faster than
FAISS flat; open < 2 s and < 300 MB RSS added.

    python -m benchmarks.bench_scope --quick
    python -m benchmarks.bench_scope --json out/scope.json
Sets are built once under --workdir and reused by later runs.
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._common import (
    describe_machine,
    latency_stats_ms,
    machine_info,
    parse_count,
    print_table,
    print_targets,
    rss_mb,
)
from crossview_ros import geo, tiles
from crossview_ros.atomic import write_json_atomic
from crossview_ros.index import ScopedSearch

CENTRE_LAT_DEG, CENTRE_LON_DEG = 40.7505, -73.9934  # Manhattan, zone 18N
STRIDE_M = 36.48  # VIGOR tile (640 px x 0.114 m = 72.96 m) at 50 % overlap
TILE_SIZE_M = 2 * STRIDE_M
TILE_PX = 640
SCOPE_RADIUS_M = 200.0
TOP_K = 10
# Targets for the largest (1 M) set, from design.md.
TARGET_SCOPED_P50_MS = 0.5
TARGET_RATIO = 100.0
TARGET_OPEN_S = 2.0
TARGET_OPEN_RSS_MB = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small run in seconds: 10k and 100k tiles, fewer queries")
    p.add_argument("--sizes", default=None,
                   help="comma-separated tile counts (e.g. 10k,100k,1M); default 10k,100k,1M (quick: 10k,100k)")
    p.add_argument("--dim", type=int, default=512, help="descriptor size (default 512)")
    p.add_argument("--queries", type=int, default=None,
                   help="timed scoped queries per set (default 2000; quick 200)")
    p.add_argument("--faiss-queries", type=int, default=None,
                   help="timed FAISS flat queries per set (default 30; quick 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed queries first (default 100; quick 20)")
    p.add_argument("--device", default="cpu", choices=("cpu", "auto", "cuda"),
                   help="ScopedSearch device (default cpu: the target is the 2-core CPU machine)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "crossview_bench" / "scope",
                   help="where tile sets are built and reused (default: %(default)s)")
    p.add_argument("--cold", action="store_true",
                   help="do not read the descriptor file into the page cache before timing "
                        "(then first touches of a page may wait for the disk)")
    p.add_argument("--seed", type=int, default=0, help="random seed for descriptors, fixes and queries")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    try:
        default_sizes = "10k,100k" if args.quick else "10k,100k,1M"
        args.sizes = [parse_count(s) for s in (args.sizes or default_sizes).split(",") if s.strip()]
    except ValueError as exc:
        p.error(str(exc))
    for name, quick, full in (("queries", 200, 2000), ("faiss_queries", 10, 30), ("warmup", 20, 100)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.dim < 1 or args.queries < 1 or args.faiss_queries < 1 or args.warmup < 0:
        p.error("--dim, --queries and --faiss-queries must be >= 1, --warmup >= 0")
    return args


def model_hash(dim: int, seed: int) -> str:
    return f"bench-random-d{dim}-seed{seed}"


def lattice(count: int) -> tuple[geo.UTMZone, np.ndarray, np.ndarray]:
    """count tile centres, row by row, on a near-square lattice centred on Manhattan."""
    e_c, n_c, zone = geo.latlon_to_utm(CENTRE_LAT_DEG, CENTRE_LON_DEG)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    e0 = round(e_c / STRIDE_M - cols / 2) * STRIDE_M  # anchored to multiples of the stride
    n0 = round(n_c / STRIDE_M - rows / 2) * STRIDE_M
    i = np.arange(count)
    return zone, e0 + (i % cols) * STRIDE_M, n0 + (i // cols) * STRIDE_M


def set_path(workdir: Path, count: int, dim: int, seed: int) -> Path:
    return workdir / f"scope_n{count}_d{dim}_s{seed}"


def ensure_tile_set(workdir: Path, count: int, dim: int, seed: int) -> Path:
    """The set for (count, dim, seed) under workdir, built on first use."""
    path = set_path(workdir, count, dim, seed)
    try:
        ts = tiles.TileSet.open(path)
        if len(ts) == count and ts.descriptors is not None and ts.model_hash == model_hash(dim, seed):
            return path
    except tiles.TileSetError:
        pass
    workdir.mkdir(parents=True, exist_ok=True)
    zone, east, north = lattice(count)
    tiles.write_tile_set(path, zone=zone, easting_m=east, northing_m=north, tile_size_m=TILE_SIZE_M,
                         tile_px=TILE_PX, sources=["bench-lattice"], overwrite=True)
    scratch = workdir / f".{path.name}.random.f16.npy"
    rng = np.random.default_rng(seed)
    try:
        rows = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float16, shape=(count, dim))
        step = 65536
        for start in tqdm(range(0, count, step), desc=f"descriptors {count:,}", unit="chunk", leave=False):
            block = rng.standard_normal((min(step, count - start), dim), dtype=np.float32)
            rows[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        rows.flush()
        tiles.TileSet.open(path).write_descriptors(rows, model_hash(dim, seed))
        del rows
    finally:
        scratch.unlink(missing_ok=True)
    return path


def random_fixes(ts: tiles.TileSet, n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """n fixes uniform in the set's bounding box (inside the lattice), as lat/lon."""
    e = rng.uniform(ts.easting_m.min(), ts.easting_m.max(), n)
    nn = rng.uniform(ts.northing_m.min(), ts.northing_m.max(), n)
    lat, lon = geo.utm_to_latlon(e, nn, ts.zone)
    return list(zip(np.asarray(lat).tolist(), np.asarray(lon).tolist()))


def random_queries(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal((n, dim), dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def warm_page_cache(path: Path) -> float:
    """Stream a file once so its pages sit in the OS page cache (not in this process's RSS).

    A running localizer has long since touched the tiles around it; random fixes over the
    whole set would otherwise time the disk, not the search. Returns seconds taken.
    """
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass
    return time.perf_counter() - t0


def time_scoped(ts: tiles.TileSet, search: ScopedSearch, args: argparse.Namespace,
                rng: np.random.Generator) -> dict[str, Any]:
    """Per-query scope query, search and their sum, after untimed warm-up queries."""
    total_n = args.warmup + args.queries
    fixes = random_fixes(ts, total_n, rng)
    queries = random_queries(total_n, ts.descriptors.shape[1], rng)
    scope_ns, search_ns, both_ns, found = [], [], [], []
    clock = time.perf_counter_ns
    for i, ((lat, lon), q) in enumerate(zip(fixes, queries)):
        t0 = clock()
        ids = ts.tiles_within(lat, lon, SCOPE_RADIUS_M)
        t1 = clock()
        result = search.search(q, ids, TOP_K)
        t2 = clock()
        if i >= args.warmup:
            scope_ns.append(t1 - t0)
            search_ns.append(t2 - t1)
            both_ns.append(t2 - t0)
            found.append(ids.size)
        if len(result) != min(TOP_K, ids.size):
            raise RuntimeError(f"scoped search returned {len(result)} results for {ids.size} candidates")
    return {
        "candidates_mean": float(np.mean(found)),
        "scope": latency_stats_ms(scope_ns),
        "search": latency_stats_ms(search_ns),
        "scoped": latency_stats_ms(both_ns),
    }


def time_faiss(descriptors: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """The baseline: FAISS IndexFlatIP over every tile (normalised float32), k = 10, batch 1.

    Timed with 1 OpenMP thread and with all of them; the faster setting is the baseline
    (on small VMs, waking threads for one query can cost more than the scan itself).
    """
    import faiss

    n, dim = descriptors.shape
    index = faiss.IndexFlatIP(dim)
    step = 65536
    for start in tqdm(range(0, n, step), desc=f"faiss add {n:,}", unit="chunk", leave=False):
        block = np.asarray(descriptors[start : start + step], dtype=np.float32)
        index.add(block / np.linalg.norm(block, axis=1, keepdims=True))
    max_threads = faiss.omp_get_max_threads()
    by_threads = {}
    try:
        for threads in sorted({1, max_threads}):
            faiss.omp_set_num_threads(threads)
            queries = random_queries(2 + args.faiss_queries, dim, rng)
            samples = []
            for i, q in enumerate(queries):
                t0 = time.perf_counter_ns()
                index.search(q[None], TOP_K)
                if i >= 2:  # two warm-up searches
                    samples.append(time.perf_counter_ns() - t0)
            by_threads[threads] = latency_stats_ms(samples)
    finally:
        faiss.omp_set_num_threads(max_threads)
    best = min(by_threads, key=lambda t: by_threads[t]["p50_ms"])
    del index
    gc.collect()
    return {**by_threads[best], "threads": best, "by_threads": {str(t): s for t, s in by_threads.items()}}


def build_in_child(workdir: Path, count: int, dim: int, seed: int) -> Path:
    """ensure_tile_set in a spawned process, so building leaves no heap behind in this one
    (the RSS added by opening a set is measured here)."""
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=ensure_tile_set, args=(workdir, count, dim, seed))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"building the {count}-tile set under {workdir} failed (exit code {child.exitcode})")
    return set_path(workdir, count, dim, seed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    paths = {n: build_in_child(args.workdir, n, args.dim, args.seed)
             for n in tqdm(args.sizes, desc="tile sets", unit="set")}
    opened: dict[int, tuple[tiles.TileSet, dict[str, float]]] = {}
    for n in args.sizes:  # open every set before any search allocates (RSS deltas stay clean)
        rss0 = rss_mb()
        t0 = time.perf_counter_ns()
        ts = tiles.TileSet.open(paths[n])
        open_s = (time.perf_counter_ns() - t0) / 1e9
        opened[n] = (ts, {"open_s": open_s, "open_rss_mb": rss_mb() - rss0})
    rng = np.random.default_rng(args.seed + 1)
    results = []
    for n in args.sizes:
        ts, open_stats = opened[n]
        warm_s = None if args.cold else warm_page_cache(paths[n] / tiles.DESCRIPTORS_FILE)
        search = ScopedSearch(ts.descriptors, device=args.device)
        scoped = time_scoped(ts, search, args, rng)
        faiss_stats = time_faiss(ts.descriptors, args, rng)
        results.append({
            "tiles": n,
            "path": str(paths[n]),
            **open_stats,
            "page_cache_warm_s": warm_s,
            **scoped,
            "faiss_flat": faiss_stats,
            "ratio_faiss_over_scoped_p50": faiss_stats["p50_ms"] / scoped["scoped"]["p50_ms"],
        })
    return {
        "benchmark": "bench_scope",
        "machine": machine_info(),
        "config": {
            "sizes": args.sizes, "dim": args.dim, "queries": args.queries, "faiss_queries": args.faiss_queries,
            "warmup": args.warmup, "device": search.device, "scope_radius_m": SCOPE_RADIUS_M, "k": TOP_K,
            "stride_m": STRIDE_M, "seed": args.seed, "quick": args.quick,
            "page_cache": "cold" if args.cold else "descriptor file read once before timing",
        },
        "results": results,
        "targets": check_targets(results),
    }


def check_targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The design targets, judged on the largest set measured (they are stated for 1 M)."""
    big = max(results, key=lambda r: r["tiles"])
    checks = {
        "scoped_p50_ms": (big["scoped"]["p50_ms"], "<=", TARGET_SCOPED_P50_MS),
        "ratio_faiss_over_scoped_p50": (big["ratio_faiss_over_scoped_p50"], ">=", TARGET_RATIO),
        "open_s": (big["open_s"], "<", TARGET_OPEN_S),
        "open_rss_mb": (big["open_rss_mb"], "<", TARGET_OPEN_RSS_MB),
    }
    out: dict[str, Any] = {"judged_on_tiles": big["tiles"], "stated_for_tiles": 1_000_000}
    for name, (value, op, limit) in checks.items():
        ok = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
        out[name] = {"value": value, "target": f"{op} {limit:g}", "met": bool(ok)}
    return out


def report(summary: dict[str, Any]) -> None:
    rows = []
    for r in summary["results"]:
        rows.append({
            "tiles": r["tiles"], "open_s": r["open_s"], "open_rss_mb": r["open_rss_mb"],
            "cand": r["candidates_mean"], "scope_p50": r["scope"]["p50_ms"], "search_p50": r["search"]["p50_ms"],
            "p50": r["scoped"]["p50_ms"], "p99": r["scoped"]["p99_ms"], "mean": r["scoped"]["mean_ms"],
            "faiss_p50": r["faiss_flat"]["p50_ms"], "faiss_p99": r["faiss_flat"]["p99_ms"],
            "faiss_threads": r["faiss_flat"]["threads"],
            "ratio": r["ratio_faiss_over_scoped_p50"],
        })
    cfg = summary["config"]
    print(describe_machine(summary["machine"]))
    print(f"scope {cfg['scope_radius_m']:g} m, top-{cfg['k']}, dim {cfg['dim']}, {cfg['queries']} scoped queries "
          f"(+{cfg['warmup']} warm-up) and {cfg['faiss_queries']} FAISS queries per set, scoped search on "
          f"{cfg['device']}; page cache: {cfg['page_cache']}; times in ms; FAISS at its faster thread count (thr)")
    print_table(rows, [
        ("tiles", "tiles", ","), ("open_s", "open s", ".3f"), ("open_rss_mb", "open +RSS MB", ".1f"),
        ("cand", "cand", ".1f"), ("scope_p50", "scope p50", ".3f"), ("search_p50", "search p50", ".3f"),
        ("p50", "scoped p50", ".3f"), ("p99", "scoped p99", ".3f"), ("mean", "scoped mean", ".3f"),
        ("faiss_p50", "faiss p50", ".2f"), ("faiss_p99", "faiss p99", ".2f"), ("faiss_threads", "thr", "d"),
        ("ratio", "ratio", ".0f"),
    ])
    t = summary["targets"]
    note = "" if t["judged_on_tiles"] == t["stated_for_tiles"] else " (targets are stated for 1 M tiles)"
    print_targets(t, 30, ".3f", title=f"targets on the {t['judged_on_tiles']:,}-tile set{note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    report(summary)
    if args.json:
        print(f"wrote {write_json_atomic(args.json, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
