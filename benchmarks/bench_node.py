"""localize_node end to end: latency at 10 Hz, throughput with every frame processed, RSS over a long run.

Plays a drive bag through the real node over DDS with crossview_ros.replay.replay_bag (the node
is a child process, as in a deployment) and measures:
- latency: per panorama, wall time from the replay publishing it to receiving the node's first
  output with its stamp (replay FrameRecord.latency_s: DDS both ways, the node's one-frame queue
  and its work), p50/p99 over a replay at --rate-hz (a 2 Hz drive is played 5x faster to give
  10 panoramas/s). A node slower than the rate drops frames (newest wins): counted beside.
- throughput with every frame processed: a lockstep replay (replay_bag(lockstep=True)) sends each
  panorama once the node has published or counted the previous one, so no frame is dropped and the
  pace is the node's own; frames/s = panoramas / wall time of the publishing phase. We measure
  this directly rather than searching for the highest rate with zero drops: one run, no rate
  grid, and the figure includes the per-frame round trip a real-time stream would also pay.
- RSS of the node process (VmRSS of /proc/PID/status) when playback starts, every
  --rss-period-s, and after the last frame, over a long replay of --long-minutes (the drive looped
  into one bag with shifted stamps, played at --long-rate-hz); growth = last sample against the
  first periodic one (the node warmed up: ONNX Runtime's arenas allocate on the first frames).
  Off by default (not for CI); the short runs report their start/end RSS for information.
- the baseline, measured in the same run: the same frames through Localizer in this process
  (benchmarks.bench_localizer.time_pipeline, ONNX Runtime, same settings); ratio = node / in-process.

Gates are opened (min_margin -1, max_mahalanobis 1e12) so that every frame with a usable fix
publishes: the default model has random weights, which would be gated, and a gated frame has no
output to time. Speed does not depend on the weights.

Targets (design.md, 2-core CPU, small model at 640x320): latency p50 <= 60 ms and p99 <= 120 ms at
10 Hz; >= 10 frames/s with every frame processed; RSS growth < 5 % over a 30-minute replay.

    python -m benchmarks.bench_node --quick
    python -m benchmarks.bench_node --json out/node.json
    python -m benchmarks.bench_node --long-minutes 30 --json out/node_long.json
    python -m benchmarks.bench_node --model MODEL_DIR --tiles DIR --bag BAG

Without --model / --tiles / --bag, the artefacts of benchmarks/bench_localizer.py are built (or
reused) under the same --workdir with its own helpers: the small preset with random weights at
640x320, a generated city cut into an encoded tile set, a simulated drive of --frames panoramas.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bench_localizer
from benchmarks._common import describe_machine, latency_stats_ms, machine_info, print_table, print_targets
from crossview_ros.atomic import write_json_atomic

log = logging.getLogger("bench_node")

NS = 1_000_000_000
# Targets (design.md, CPU machine, small model at 640x320).
TARGET_P50_MS = 60.0
TARGET_P99_MS = 120.0
TARGET_FPS = 10.0
TARGET_RSS_GROWTH_PCT = 5.0
# Gates open: every frame with a usable fix publishes (speed only; see the module docstring).
OPEN_GATES = ("-p", "min_margin:=-1.0", "-p", "max_mahalanobis:=1000000000000.0")
OPEN_GATES_CONFIG = {"min_margin": -1.0, "max_mahalanobis": 1e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small run: 40 panoramas, 3 warm-up frames for the baseline, no long run")
    p.add_argument("--model", type=Path, default=None,
                   help="exported model folder; default: bench_localizer's (small preset, random weights, 640x320)")
    p.add_argument("--tiles", type=Path, default=None, help="tile set encoded with --model, covering the drive")
    p.add_argument("--bag", type=Path, default=None,
                   help="drive bag with the topics crossview-sim drive writes (the replay evaluates against its "
                        "ground truth); default: --frames panoramas simulated in the generated city")
    p.add_argument("--frames", type=int, default=None,
                   help="panoramas of the simulated drive (default 300; quick 40); ignored with --bag")
    p.add_argument("--rate-hz", type=float, default=10.0,
                   help="panoramas per second sent to the node in the latency run (default 10)")
    p.add_argument("--warmup", type=int, default=None,
                   help="frames run first through the in-process baseline, untimed (default 10; quick 3); the node "
                        "gets no warm-up: its first frames count, as in a deployment")
    p.add_argument("--long-minutes", type=float, default=0.0,
                   help="also replay the drive looped for this many minutes and sample the node's RSS (default 0 = "
                        "off; the target is stated for 30)")
    p.add_argument("--long-rate-hz", type=float, default=None,
                   help="panoramas per second in the long run (default: --rate-hz). The looped bag holds every "
                        "frame: ~60 kB per 640x320 panorama on disk and in the replay's memory (10 Hz x 30 min: ~1 GB)")
    p.add_argument("--rss-period-s", type=float, default=60.0,
                   help="seconds between RSS samples of the node in the long run (default 60)")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads of the node and the baseline; 0 = its default (one per "
                        "physical core) (default 0)")
    heading = p.add_mutually_exclusive_group()
    heading.add_argument("--heading", dest="heading", action="store_true", default=True,
                         help="the node estimates the heading too (default)")
    heading.add_argument("--no-heading", dest="heading", action="store_false", help="position only")
    p.add_argument("--city-m", type=float, default=1000.0, help="side of the generated city, metres (default 1000)")
    p.add_argument("--mode", choices=("walk", "drive"), default="walk", help="simulated drive mode (default walk)")
    p.add_argument("--pano-height-px", type=int, default=bench_localizer.GROUND_SIZE[0],
                   help=f"simulated panorama height; width is twice (default {bench_localizer.GROUND_SIZE[0]})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, the city and the drive")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="longest wait for the node to connect, to finish, and (lockstep) for one frame (default 60)")
    p.add_argument("--workdir", "--work", type=Path,
                   default=Path(tempfile.gettempdir()) / "crossview_bench" / "localizer",
                   help="where the artefacts are built and reused (bench_localizer's default, so both share them) "
                        "and the replays are written (node_runs/) (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the replays' progress bars")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 3 if args.quick else 10
    if args.frames is None:
        args.frames = 40 if args.quick else 300
    if args.quick and args.long_minutes:
        p.error("--quick runs no long replay; drop --long-minutes or --quick")
    if args.long_rate_hz is None:
        args.long_rate_hz = args.rate_hz
    if args.frames < 2 or args.warmup < 0 or args.threads < 0:
        p.error("--frames must be >= 2, --warmup and --threads >= 0")
    for name in ("rate_hz", "long_rate_hz", "rss_period_s", "timeout_s"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            p.error(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if not (math.isfinite(args.long_minutes) and args.long_minutes >= 0):
        p.error(f"--long-minutes must be >= 0, got {args.long_minutes}")
    return args


# --------------------------------------------------------------------------- artefacts


def artefacts(args: argparse.Namespace) -> bench_localizer.Artefacts:
    """bench_localizer's model, tile set and drive under the same workdir (built in a child when missing)."""
    argv = ["--workdir", str(args.workdir), "--frames", str(args.frames), "--city-m", repr(args.city_m),
            "--mode", args.mode, "--pano-height-px", str(args.pano_height_px), "--seed", str(args.seed)]
    for flag, value in (("--model", args.model), ("--tiles", args.tiles), ("--bag", args.bag)):
        if value is not None:
            argv += [flag, str(value)]
    largs = bench_localizer.parse_args(argv)
    if args.bag is not None:
        largs.frames = None  # every panorama of a given bag
    art = bench_localizer.plan_artefacts(largs)
    if args.model is None or args.tiles is None or args.bag is None:
        bench_localizer.build_in_child(largs, art)
    return art


def loop_bag(src: Path, dst: Path, loops: int) -> Path:
    """`src` played `loops` times in a row as one bag: every header stamp and log time shifted by the drive's
    period per loop (/crossview/datum written once). Built in a temporary folder and renamed: present =
    complete, so a later run reuses it."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from crossview_ros.bag.writer import TOPIC_DATUM, TOPIC_PANORAMA, typestore

    if dst.exists():
        return dst
    ts = typestore()
    with AnyReader([src], default_typestore=ts) as reader:
        rows = [(c.topic, c.msgtype, int(t), bytes(raw)) for c, t, raw in reader.messages()]
    headers = [ts.deserialize_cdr(raw, m).header for topic, m, _, raw in rows if topic == TOPIC_PANORAMA]
    stamps = sorted(int(h.stamp.sec) * NS + int(h.stamp.nanosec) for h in headers)
    if len(stamps) < 2:
        raise SystemExit(f"{src} holds fewer than 2 panoramas; cannot loop it")
    period_ns = stamps[-1] - stamps[0] + int(np.median(np.diff(stamps)))  # one frame interval between loops
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        with Writer(work / dst.name, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
            conns = {}
            for topic, msgtype, _, _ in rows:
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            for k in range(loops):
                shift = k * period_ns
                for topic, msgtype, log_ns, raw in rows:
                    if topic == TOPIC_DATUM:
                        if k == 0:
                            writer.write(conns[topic], log_ns, raw)
                        continue
                    msg = ts.deserialize_cdr(raw, msgtype)
                    stamp = msg.header.stamp
                    stamp.sec, stamp.nanosec = divmod(int(stamp.sec) * NS + int(stamp.nanosec) + shift, NS)
                    writer.write(conns[topic], log_ns + shift, ts.serialize_cdr(msg, msgtype))
        os.replace(work / dst.name, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst


def drive_rate_hz(frames: list[bench_localizer.Frame]) -> float:
    """Panorama rate of the bag from its stamps (median interval)."""
    dt = np.diff([f.stamp_s for f in frames])
    dt = dt[dt > 0]
    if dt.size == 0:
        raise SystemExit("the bag's panoramas share one stamp; cannot derive its rate")
    return float(1.0 / np.median(dt))


# --------------------------------------------------------------------------- measuring


def node_rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


@dataclass
class RssSampler:
    """replay_bag monitor: the node's RSS when playback starts, every period_s, and after the last frame."""

    period_s: float
    samples: list[dict[str, Any]] = field(default_factory=list)  # {"t_s": since playback start, "rss_mb", "at"}
    _pid: int = field(default=0, init=False)
    _t0: float = field(default=0.0, init=False)  # monotonic time of playback start
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __call__(self, event: str, pid: int) -> None:
        if event == "playing":
            self._t0 = time.monotonic()
            self._pid = pid
            self._sample("start")
            self._thread = threading.Thread(target=self._run, name="rss_sampler", daemon=True)
            self._thread.start()
        elif event == "drained":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._sample("end")

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample("periodic")

    def _sample(self, at: str) -> None:
        rss = node_rss_mb(self._pid)
        if rss is not None:
            self.samples.append({"t_s": time.monotonic() - self._t0, "rss_mb": rss, "at": at})

    def figures(self) -> dict[str, Any]:
        """Start, warm (first periodic sample), end, peak and growth in %."""
        if not self.samples:
            return {"samples": []}
        start, end = self.samples[0], self.samples[-1]
        periodic = [s for s in self.samples if s["at"] == "periodic"]
        warm = periodic[0] if periodic else None
        out = {"samples": self.samples, "start_mb": start["rss_mb"], "end_mb": end["rss_mb"],
               "peak_mb": max(s["rss_mb"] for s in self.samples),
               "growth_from_start_pct": 100.0 * (end["rss_mb"] - start["rss_mb"]) / start["rss_mb"],
               "warm_mb": warm["rss_mb"] if warm else None, "warm_at_s": warm["t_s"] if warm else None,
               "growth_pct": (100.0 * (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]) if warm else None}
        return out


def node_args(args: argparse.Namespace) -> list[str]:
    """The node's settings: ONNX Runtime on the CPU, threads, heading, gates open, no covariance file."""
    return ["-p", "engine:=onnxruntime", "-p", f"engine_threads:={args.threads}",
            "-p", f"heading:={'true' if args.heading else 'false'}", "-p", "covariance_file:=none", *OPEN_GATES]


def replay_run(name: str, bag: Path, art: bench_localizer.Artefacts, args: argparse.Namespace, *, rate: float,
               lockstep: bool = False, rss_period_s: float) -> dict[str, Any]:
    """One replay through the node; latency over the frames it published, counters, throughput, RSS."""
    from crossview_ros.replay import replay_bag

    sampler = RssSampler(rss_period_s)
    log.info("%s: replaying %s (%s)", name, bag, "lockstep" if lockstep else f"rate {rate:g}x real time")
    result = replay_bag(bag, art.tiles, art.model, args.workdir / "node_runs" / name, rate=rate,
                        node_args=node_args(args), progress=not args.no_progress, timeout_s=args.timeout_s,
                        overwrite=True, lockstep=lockstep, monitor=sampler)
    s = result.summary
    counters, rep = s["node_counters"], s["replay"]
    latency_ns = [f.latency_s * 1e9 for f in result.frames if f.latency_s is not None]
    frames = s["frames"]
    return {
        "out": str(result.out),
        "rate": None if lockstep else rate,
        "lockstep": lockstep,
        "frames": frames,
        "published": s["published"],
        "received_by_node": counters.get("frames_received"),
        "processed": counters.get("frames_processed"),
        "dropped": counters.get("frames_dropped"),
        "lost_in_transport": rep.get("frames_lost", 0),
        "every_frame_processed": (counters.get("frames_processed") == frames and counters.get("frames_dropped") == 0),
        "rejections": {k: v for k, v in s["rejections"].items() if v},
        "latency": latency_stats_ms(latency_ns),
        "publish_s": rep["publish_s"],
        "frames_per_s": rep["frames_per_s"],
        "wall_s": rep["wall_s"],
        "rss": sampler.figures(),
    }


def baseline(args: argparse.Namespace, art: bench_localizer.Artefacts,
             frames: list[bench_localizer.Frame]) -> dict[str, Any]:
    """The same frames through Localizer in this process with the node's settings (ONNX Runtime, CPU)."""
    from crossview_ros.engines import OnnxEngine
    from crossview_ros.localizer_config import LocalizerConfig

    config = LocalizerConfig(tile_set=str(art.tiles), model=str(art.model), engine="onnxruntime",
                             engine_threads=args.threads, heading=args.heading, covariance_file="none",
                             **OPEN_GATES_CONFIG)
    engine = OnnxEngine(art.model, providers=["CPUExecutionProvider"], threads=args.threads)
    try:
        run = bench_localizer.time_pipeline(engine, config, frames, args.warmup)
    finally:
        engine.close()
    run.pop("_estimates")
    return run


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    from crossview_ros.model_meta import load_model_meta
    from crossview_ros.tiles import TileSet

    art = artefacts(args)
    frames = bench_localizer.read_frames(art.bag, None)
    bag_hz = drive_rate_hz(frames)
    meta = load_model_meta(art.model)
    (args.workdir / "node_runs").mkdir(parents=True, exist_ok=True)

    base = baseline(args, art, frames)
    latency = replay_run("latency", art.bag, art, args, rate=args.rate_hz / bag_hz, rss_period_s=args.rss_period_s)
    lockstep = replay_run("lockstep", art.bag, art, args, rate=1.0, lockstep=True, rss_period_s=args.rss_period_s)
    long_run = None
    if args.long_minutes > 0:
        per_loop_s = len(frames) / args.long_rate_hz
        loops = max(1, math.ceil(args.long_minutes * 60.0 / per_loop_s))
        looped = loop_bag(art.bag, args.workdir / f"{art.bag.name}_loop{loops}", loops)
        long_run = replay_run("long", looped, art, args, rate=args.long_rate_hz / bag_hz,
                              rss_period_s=args.rss_period_s)
        long_run["loops"] = loops

    ratio = {
        "latency_p50": _ratio(latency["latency"]["p50_ms"], base["stages"]["total"]["p50_ms"]),
        "latency_p99": _ratio(latency["latency"]["p99_ms"], base["stages"]["total"]["p99_ms"]),
        "frames_per_s": _ratio(lockstep["frames_per_s"], base["frames_per_s"]),
    }
    info = machine_info()
    info.update(onnxruntime=onnxruntime.__version__)
    return {
        "benchmark": "bench_node",
        "machine": info,
        "config": {
            "model": str(art.model), "model_name": meta.name, "model_hash": meta.model_hash,
            "model_random_weights": args.model is None, "ground_input_hw": list(meta.ground.size_hw),
            "tiles": str(art.tiles), "tile_count": len(TileSet.open(art.tiles)), "bag": str(art.bag),
            "frames": len(frames), "bag_rate_hz": bag_hz, "rate_hz": args.rate_hz,
            "replay_rate": args.rate_hz / bag_hz, "long_minutes": args.long_minutes,
            "long_rate_hz": args.long_rate_hz if args.long_minutes else None, "rss_period_s": args.rss_period_s,
            "heading": args.heading, "threads_requested": args.threads, "node_args": node_args(args),
            "baseline_warmup": args.warmup, "quick": args.quick, "seed": args.seed,
            "latency_definition": "replay publish of the panorama -> receipt of the node's first output with its "
                                  "stamp (wall clock of the replay process; DDS both ways included)",
            "throughput_definition": "lockstep replay: each panorama sent once the node published or counted the "
                                     "previous one; frames / wall time of the publishing phase",
        },
        "results": {"node_latency": latency, "node_lockstep": lockstep, "node_long": long_run,
                    "in_process": base, "ratio_node_over_in_process": ratio},
        "targets": check_targets(latency, lockstep, long_run, meta),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def check_targets(latency: dict[str, Any], lockstep: dict[str, Any], long_run: dict[str, Any] | None,
                  meta: Any) -> dict[str, Any]:
    """The design targets; RSS growth is judged only on a long run (None = not measured)."""
    growth = long_run["rss"].get("growth_pct") if long_run else None
    fps = lockstep["frames_per_s"] if lockstep["every_frame_processed"] else 0.0
    checks = {
        "latency_p50_ms": (latency["latency"]["p50_ms"], "<=", TARGET_P50_MS),
        "latency_p99_ms": (latency["latency"]["p99_ms"], "<=", TARGET_P99_MS),
        "frames_per_s_every_frame": (fps, ">=", TARGET_FPS),
        "rss_growth_pct": (growth, "<", TARGET_RSS_GROWTH_PCT),
    }
    size = bench_localizer.GROUND_SIZE
    stated = meta.name == bench_localizer.MODEL_PRESET and tuple(meta.ground.size_hw) == size
    out: dict[str, Any] = {"stated_for": f"{bench_localizer.MODEL_PRESET} model, {size[1]}x{size[0]} input, CPU",
                           "judged_on": f"{meta.name} model, {meta.ground.width_px}x{meta.ground.height_px} input",
                           "applies": bool(stated)}
    for name, (value, op, limit) in checks.items():
        met = None
        if value is not None and math.isfinite(value):
            met = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
        out[name] = {"value": value, "target": f"{op} {limit:g}", "met": met}
    return out


def report(summary: dict[str, Any]) -> None:
    res, cfg = summary["results"], summary["config"]
    lat, ls, base, ratio = (res["node_latency"], res["node_lockstep"], res["in_process"],
                            res["ratio_node_over_in_process"])
    print(describe_machine(summary["machine"]))
    weights = "random weights" if cfg["model_random_weights"] else "exported weights"
    print(f"model {cfg['model_name']} ({weights}), {cfg['ground_input_hw'][1]}x{cfg['ground_input_hw'][0]} input, "
          f"{cfg['tile_count']} tiles, heading {'on' if cfg['heading'] else 'off'}, gates open; drive of "
          f"{cfg['frames']} panoramas at {cfg['bag_rate_hz']:.3g} Hz played at {cfg['rate_hz']:g} Hz "
          f"({cfg['replay_rate']:g}x); in-process baseline: Localizer with the same settings")
    rows = [
        {"measure": f"latency p50 ms ({cfg['rate_hz']:g} Hz)", "node": lat["latency"]["p50_ms"],
         "base": base["stages"]["total"]["p50_ms"], "ratio": ratio["latency_p50"]},
        {"measure": f"latency p99 ms ({cfg['rate_hz']:g} Hz)", "node": lat["latency"]["p99_ms"],
         "base": base["stages"]["total"]["p99_ms"], "ratio": ratio["latency_p99"]},
        {"measure": "latency p50 ms (lockstep)", "node": ls["latency"]["p50_ms"],
         "base": base["stages"]["total"]["p50_ms"], "ratio": _ratio(ls["latency"]["p50_ms"],
                                                                     base["stages"]["total"]["p50_ms"])},
        {"measure": "frames/s, every frame processed", "node": ls["frames_per_s"], "base": base["frames_per_s"],
         "ratio": ratio["frames_per_s"]},
    ]
    print_table(rows, [("measure", "measure", str), ("node", "node", ".2f"), ("base", "in-process", ".2f"),
                       ("ratio", "node / in-process", ".2f")])
    print()
    runs = []
    for label, r in (("latency", lat), ("lockstep", ls), ("long", res["node_long"])):
        if r is None:
            continue
        rss = r["rss"]
        runs.append({"run": label, "frames": r["frames"], "out": r["published"], "dropped": r["dropped"],
                     "lost": r["lost_in_transport"], "all": "yes" if r["every_frame_processed"] else "no",
                     "p50": r["latency"]["p50_ms"], "p99": r["latency"]["p99_ms"], "rss0": rss.get("start_mb"),
                     "rss1": rss.get("end_mb"), "growth": rss.get("growth_pct"),
                     "rej": ", ".join(f"{k} {v}" for k, v in sorted(r["rejections"].items())) or "-"})
    print_table(runs, [("run", "run", str), ("frames", "frames", "d"), ("out", "published", "d"),
                       ("dropped", "dropped", "d"), ("lost", "lost", "d"), ("all", "all processed", str),
                       ("p50", "p50 ms", ".1f"), ("p99", "p99 ms", ".1f"), ("rss0", "RSS start MB", ".1f"),
                       ("rss1", "RSS end MB", ".1f"), ("growth", "growth % (warm)", "+.2f"),
                       ("rej", "rejected", str)])
    if res["node_long"] is not None:
        samples = res["node_long"]["rss"]["samples"]
        print("long run RSS samples (s: MB): " + ", ".join(f"{s['t_s']:.0f}: {s['rss_mb']:.1f}" for s in samples))
    print_targets(summary["targets"], 26, ".2f")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("crossview_replay").setLevel(logging.INFO)
    summary = run(args)
    report(summary)
    if args.json:
        print(f"wrote {write_json_atomic(args.json, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
