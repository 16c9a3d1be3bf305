"""BEV training correlation: direct convolution against the FFT, forward and backward.

One training step of the bev recipe correlates a batch of panoramas' north-up BEV kernels
(Q, C, K, K) with one region's aerial feature map (1, C, h, w) and back-propagates through
both. BevModel.correlate does it by direct convolution up to DIRECT_MAX_KERNEL cells a side and
by FFT above; this measures both ways in one process, per kernel size, on the recipe's shapes
(32 panoramas, 16 channels, a 512 px region: 128 x 128 cells), and prints p50 / p99 and
ratio = FFT p50 / direct p50 (> 1: the direct way is faster). It also checks that both give
the same numbers.

    python -m benchmarks.bench_bev_correlate --quick
    python -m benchmarks.bench_bev_correlate --threads 1 --json out/bev_correlate.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

from benchmarks._common import describe_machine, latency_stats_ms, machine_info, print_table
from crossview_ros.atomic import write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", default="16,20,24,32", help="kernel sizes in cells, comma-separated")
    p.add_argument("--queries", type=int, default=32, help="panoramas per step (the recipe's batch_size)")
    p.add_argument("--cells", type=int, default=128, help="aerial map side in cells (region_px / 4)")
    p.add_argument("--repeats", type=int, default=20, help="timed forward+backward passes per way and size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU recipes train with 1)")
    p.add_argument("--quick", action="store_true", help="3 repeats, kernels 16 and 32")
    p.add_argument("--json", type=Path, help="also write the figures and the machine as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("this benchmark needs the [train] extra (torch)", file=sys.stderr)
        return 2
    from crossview_training.bev import model as bev_model
    from crossview_training.bev.model import DIRECT_MAX_KERNEL, BevConfig, BevModel

    torch.set_num_threads(args.threads)
    kernels = [16, 32] if args.quick else [int(k) for k in args.kernels.split(",")]
    repeats = 3 if args.quick else args.repeats
    info = machine_info()
    rows = []
    for k in kernels:
        model = BevModel(BevConfig(kernel_cells=k))
        gen = torch.Generator().manual_seed(k)
        channels = model.config.feature_dim
        ground = torch.randn(args.queries, channels, k, k, generator=gen)
        aerial = torch.randn(1, channels, args.cells, args.cells, generator=gen)
        times, outs = {}, {}
        for way, limit in (("direct", k), ("fft", 0)):
            samples = []
            with mock.patch.object(bev_model, "DIRECT_MAX_KERNEL", limit):  # each way through the model's correlate
                for i in range(repeats + 1):
                    g, a = ground.clone().requires_grad_(), aerial.clone().requires_grad_()
                    start = time.perf_counter_ns()
                    out = model.correlate(g, a)
                    out.square().sum().backward()
                    if i:  # the first pass warms the allocator
                        samples.append(time.perf_counter_ns() - start)
            times[way], outs[way] = latency_stats_ms(samples), out.detach()
        scale = float(outs["fft"].abs().max())
        rows.append({"kernel_cells": k, "direct_p50_ms": times["direct"]["p50_ms"],
                     "direct_p99_ms": times["direct"]["p99_ms"], "fft_p50_ms": times["fft"]["p50_ms"],
                     "fft_p99_ms": times["fft"]["p99_ms"],
                     "ratio": times["fft"]["p50_ms"] / times["direct"]["p50_ms"],
                     "max_rel_diff": float((outs["direct"] - outs["fft"]).abs().max()) / max(scale, 1e-12),
                     "used": "direct" if k <= DIRECT_MAX_KERNEL else "fft"})
    print(describe_machine(info))
    print(f"correlate forward + backward: {args.queries} kernels x {channels} channels on a {args.cells} x {args.cells} map, "
          f"{args.threads} thread(s), {repeats} passes")
    print_table(rows, [("kernel_cells", "K", "d"), ("direct_p50_ms", "direct p50 ms", ".1f"),
                       ("direct_p99_ms", "p99", ".1f"), ("fft_p50_ms", "fft p50 ms", ".1f"),
                       ("fft_p99_ms", "p99", ".1f"), ("ratio", "fft/direct", ".2f"),
                       ("max_rel_diff", "max rel diff", ".1e"), ("used", "correlate uses", "s")])
    if args.json:
        write_json_atomic(args.json, {"machine": info, "queries": args.queries, "cells": args.cells,
                                      "threads": args.threads, "repeats": repeats, "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
