"""Localizer latency per stage, ONNX Runtime beside PyTorch eager, and RSS over a synthetic drive.

Replays the panoramas of a drive bag through Localizer.localize(jpeg bytes, fix, stamp), each
with the newest GNSS fix of the bag at its stamp, and reads Estimate.latency: decode,
preprocess, encode, search, offset, heading, the rest ("other": stamp and fix checks, scope
radius, gating) and the total. Measured in one process:
- the runtime pipeline: the exported model in ONNX Runtime on the CPU (CPUExecutionProvider);
- the baseline in the same run: the same Localizer, with an engine that runs the PyTorch model
  in eval mode under torch.inference_mode (TorchEagerEngine); ratio = torch / onnx per stage;
- RSS after every frame: mean over the first and the last 100 frames, growth in %.
Stage figures cover the frames that ran every stage (estimates with a position, gated ones
included); frames refused earlier (e.g. STALE_STAMP in a GNSS dropout) are counted by reason.

Targets (design.md, 2-core CPU, small model at 640x320): end-to-end p50 <= 50 ms and p99 <=
100 ms; RSS stable: < 2 % growth between the first and the last hundred frames.

    python -m benchmarks.bench_localizer --quick
    python -m benchmarks.bench_localizer --json out/localizer.json
    python -m benchmarks.bench_localizer --model MODEL_DIR --checkpoint CKPT --tiles DIR --bag BAG

Without --model, the `small` preset with random weights is exported at 640x320 (latency does
not depend on the weights); without --tiles, a city is generated (crossview-sim city), cut
into a tile set and encoded with the model; without --bag, a drive of --frames panoramas is
simulated in that city (crossview-sim drive). All of it is built once under --workdir, in a
child process (this one imports torch only for the baseline, after the ONNX Runtime run), and
reused by later runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    describe_machine, latency_stats_ms, machine_info, print_table, print_targets, rss_mb,
)
from crossview_ros.atomic import write_json_atomic
from crossview_ros.engines import Engine, OnnxEngine
from crossview_ros.model_meta import GROUND_GRAPH, load_model_meta
from crossview_ros.estimate import Estimate, Fix
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig

log = logging.getLogger("bench_localizer")

STAGES = ("decode", "preprocess", "encode", "search", "offset", "heading")
ROWS = STAGES + ("other", "total")  # other = total - the stages (checks, scope radius, covariance, gating)
MODEL_PRESET = "small"
GROUND_SIZE = (320, 640)  # (H, W) of the panorama input: the target's 640x320
AERIAL_SIZE = (320, 320)
TILE_SIZE_M = 72.96  # TilingConfig's default (VIGOR); the export records it as the offset's L
CHECKPOINT_FILE = "checkpoint.pt"  # the PyTorch weights, written beside a model this benchmark exports
RSS_WINDOW = 100  # frames at each end of the run whose RSS is compared
# Targets (design.md, CPU machine, small model at 640x320).
TARGET_P50_MS = 50.0
TARGET_P99_MS = 100.0
TARGET_RSS_GROWTH_PCT = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small run: 40 panoramas, 3 warm-up frames (seconds once the artefacts exist)")
    p.add_argument("--model", type=Path, default=None,
                   help="exported model folder (crossview-export onnx); default: the small preset with random "
                        "weights at 640x320, exported under --workdir")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="PyTorch checkpoint the --model was exported from (crossview-train), for the eager "
                        f"baseline; default: MODEL/{CHECKPOINT_FILE} when present, else the same architecture "
                        "with random weights (same latency, different estimates)")
    p.add_argument("--tiles", type=Path, default=None,
                   help="tile set encoded with --model, covering the drive; default: built from a generated "
                        "city (or the city recorded in --bag) and encoded under --workdir")
    p.add_argument("--bag", type=Path, default=None,
                   help="drive bag (crossview-sim drive); default: --frames panoramas simulated in the city")
    p.add_argument("--frames", type=int, default=None,
                   help="panoramas of the simulated drive (default 300; quick 40); with --bag, at most this "
                        "many of its panoramas (default all)")
    p.add_argument("--warmup", type=int, default=None,
                   help="frames run first through a separate Localizer on the same engine, untimed "
                        "(default 10; quick 3)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads of ONNX Runtime and of PyTorch; 0 = each library's default "
                        "(one per physical core) (default 0)")
    heading = p.add_mutually_exclusive_group()
    heading.add_argument("--heading", dest="heading", action="store_true", default=True,
                         help="estimate the heading too (default)")
    heading.add_argument("--no-heading", dest="heading", action="store_false", help="position only")
    p.add_argument("--city-m", type=float, default=1000.0,
                   help="side of the generated city, metres (default 1000, as crossview-sim city; a 200 m scope "
                        "then holds ~94 tiles)")
    p.add_argument("--mode", choices=("walk", "drive"), default="walk",
                   help="simulated drive: walk on sidewalks or drive in a lane (default walk)")
    p.add_argument("--rate-hz", type=float, default=2.0, help="panorama rate of the simulated drive (default 2)")
    p.add_argument("--pano-height-px", type=int, default=GROUND_SIZE[0],
                   help=f"simulated panorama height; width is twice (default {GROUND_SIZE[0]})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, the city and the drive")
    p.add_argument("--workdir", "--work", type=Path,
                   default=Path(tempfile.gettempdir()) / "crossview_bench" / "localizer",
                   help="where the model, city, tile set and bag are built and reused (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 3 if args.quick else 10
    if args.frames is None and args.bag is None:
        args.frames = 40 if args.quick else 300
    if args.frames is not None and args.frames < 2:
        p.error("--frames must be >= 2")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be >= 0")
    if args.city_m < 150 or args.rate_hz <= 0 or args.pano_height_px < 8:
        p.error("--city-m must be >= 150 m, --rate-hz > 0, --pano-height-px >= 8")
    if args.checkpoint is not None and args.model is None:
        p.error("--checkpoint belongs to --model (the export made from it); pass both")
    return args


# --------------------------------------------------------------------------- artefacts


@dataclass(frozen=True)
class Artefacts:
    """Where the model, the tile set and the bag are (built by ensure_artefacts unless given)."""

    model: Path
    checkpoint: Path | None  # PyTorch weights of the model, for the eager baseline; None = random
    tiles: Path
    bag: Path
    city: Path | None  # the generated city folder, when the tile set or the bag is made here
    city_config: dict[str, Any] | None  # its CityConfig (crossview-sim city options)


def _fmt(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def plan_artefacts(args: argparse.Namespace) -> Artefacts:
    """The paths of every artefact; names under --workdir record the settings that made them."""
    from crossview_ros.sim.city import CityConfig

    w = args.workdir
    model = args.model or w / f"model_{MODEL_PRESET}_{GROUND_SIZE[1]}x{GROUND_SIZE[0]}_seed{args.seed}"
    checkpoint = args.checkpoint
    if checkpoint is None and (args.model is None or (model / CHECKPOINT_FILE).is_file()):
        checkpoint = model / CHECKPOINT_FILE  # the benchmark's own export keeps its weights there
    city = city_config = None
    if args.tiles is None or args.bag is None:
        # the tile set is cut from the city the given bag was driven in, else from a new one
        config = _bag_city(args.bag) if args.bag is not None else CityConfig(size_m=args.city_m, seed=args.seed)
        city_config = config.to_dict()
        city = w / f"city_{_fmt(config.size_m)}m_seed{config.seed}"
    tiles = args.tiles or w / f"tiles_{city.name}_L{_fmt(TILE_SIZE_M)}"
    bag = args.bag or w / (f"drive_{city.name}_{args.mode}_{args.frames}f_{_fmt(args.rate_hz)}hz_"
                           f"{2 * args.pano_height_px}x{args.pano_height_px}_seed{args.seed}")
    return Artefacts(model=model, checkpoint=checkpoint, tiles=tiles, bag=bag, city=city, city_config=city_config)


def _bag_city(bag: Path) -> Any:
    """The CityConfig of the city a crossview-sim drive bag records in its datum."""
    from crossview_ros.bag.writer import read_drive_bag
    from crossview_ros.sim.city import CityConfig

    datum = read_drive_bag(bag).datum
    if not isinstance(datum.get("config"), dict):
        raise SystemExit(f"{bag} records no city in its datum (not a crossview-sim drive bag); "
                         "pass --tiles covering the drive")
    config = CityConfig.from_dict(datum["config"])
    plain = CityConfig(datum_lat_deg=config.datum_lat_deg, datum_lon_deg=config.datum_lon_deg,
                       size_m=config.size_m, gsd_m=config.gsd_m, seed=config.seed)
    if config.to_dict() != plain.to_dict():
        raise SystemExit(f"{bag} was driven in a city with settings crossview-sim city cannot repeat; "
                         "pass --tiles covering the drive")
    return config


def ensure_artefacts(args: argparse.Namespace, art: Artefacts) -> None:
    """Build what is missing: model export (+ checkpoint), city, tile set (+ descriptors), bag."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        _ensure_model(art.model, args.seed)
    if art.city is not None:  # skipped by crossview-sim when already there
        c = art.city_config
        _sim(["city", "--out", str(art.city), "--lat", repr(c["datum_lat_deg"]), "--lon", repr(c["datum_lon_deg"]),
              "--size-m", repr(c["size_m"]), "--gsd-m", repr(c["gsd_m"]), "--seed", str(c["seed"]), "--no-progress"])
    if args.tiles is None:
        _ensure_tiles(art.city / "orthophoto.tif", art.tiles, art.model, args.threads)
    if args.bag is None and not art.bag.exists():  # bags are written atomically: present = complete
        _sim(["drive", "--city", str(art.city), "--out", str(art.bag), "--mode", args.mode,
              "--duration-s", repr((args.frames - 1) / args.rate_hz), "--rate-hz", repr(args.rate_hz),
              "--pano-height-px", str(args.pano_height_px), "--seed", str(args.seed), "--no-progress"])


def _sim(argv: list[str]) -> None:
    from crossview_ros.sim import cli

    log.info("crossview-sim %s", " ".join(argv))
    code = cli.main(argv)
    if code != 0:
        raise RuntimeError(f"crossview-sim {' '.join(argv)} failed (exit code {code})")


def _ensure_model(out: Path, seed: int) -> None:
    """The small preset, random weights, 640x320: checkpoint first, then the export (model.json last)."""
    if (out / "model.json").is_file() and (out / CHECKPOINT_FILE).is_file():
        return
    import torch

    from crossview_training.export import export_onnx
    from crossview_training.models import create_model, save_checkpoint

    log.warning("exporting the %s preset with RANDOM weights (seed %d) to %s: latency does not depend on the "
                "weights, so this measures speed only; estimates are meaningless", MODEL_PRESET, seed, out)
    torch.manual_seed(seed)
    model = create_model(MODEL_PRESET, ground_size=GROUND_SIZE, aerial_size=AERIAL_SIZE).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out / CHECKPOINT_FILE, tile_size_m=TILE_SIZE_M)
    export_onnx(model, out, tile_size_m=TILE_SIZE_M, overwrite=True, seed=seed)


def _ensure_tiles(ortho: Path, out: Path, model: Path, threads: int) -> None:
    from crossview_ros.model_meta import load_model_meta
    from crossview_ros.tiles import TileSet, TileSetError, TilingConfig, build_tile_set
    from crossview_ros.tiles_cli import encode_tile_set

    try:
        ts = TileSet.open(out)
    except TileSetError:
        build_tile_set([ortho], out, TilingConfig(tile_size_m=TILE_SIZE_M), progress=False)
        ts = TileSet.open(out)
    want = load_model_meta(model, verify=False).model_hash
    if ts.model_hash not in (None, want):
        log.info("%s holds descriptors of model %s; re-encoding with %s", out, ts.model_hash, want)
    encode_tile_set(out, model, engine="onnxruntime", overwrite=ts.model_hash not in (None, want),
                    progress=False, threads=threads)


def build_in_child(args: argparse.Namespace, art: Artefacts) -> None:
    """ensure_artefacts in a spawned process: torch, the renderer and the builds leave no heap here."""
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=ensure_artefacts, args=(args, art))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"building the benchmark's artefacts under {args.workdir} failed "
                           f"(exit code {child.exitcode}); see the log above (a drive that leaves the city: "
                           "try another --seed or a larger --city-m)")


# --------------------------------------------------------------------------- the drive


@dataclass(frozen=True)
class Frame:
    jpeg: bytes
    stamp_s: float
    fix: Fix | None  # the newest /gnss/fix at or before the panorama's stamp; None before the first


def read_frames(bag: Path, limit: int | None) -> list[Frame]:
    """Panoramas (JPEG bytes, header stamp) of a drive bag, each with the newest fix at its stamp."""
    from rosbags.highlevel import AnyReader

    from crossview_ros.bag.writer import TOPIC_GNSS, TOPIC_PANORAMA, typestore

    panos: list[tuple[float, bytes]] = []
    fixes: list[Fix] = []
    with AnyReader([Path(bag)], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic in (TOPIC_PANORAMA, TOPIC_GNSS)]
        if not any(c.topic == TOPIC_PANORAMA for c in conns) or not any(c.topic == TOPIC_GNSS for c in conns):
            raise SystemExit(f"{bag} needs topics {TOPIC_PANORAMA} and {TOPIC_GNSS} (a crossview-sim drive bag)")
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            if conn.topic == TOPIC_PANORAMA:
                panos.append((stamp, bytes(msg.data)))
            else:
                fixes.append(Fix.from_navsat(float(msg.latitude), float(msg.longitude), stamp, int(msg.status.status),
                                             msg.position_covariance, int(msg.position_covariance_type)))
    panos.sort(key=lambda p: p[0])
    fixes.sort(key=lambda f: f.stamp_s)
    fix_stamps = np.array([f.stamp_s for f in fixes])
    frames = []
    for stamp, jpeg in panos[:limit]:
        k = int(np.searchsorted(fix_stamps, stamp, side="right")) - 1
        frames.append(Frame(jpeg, stamp, fixes[k] if k >= 0 else None))
    return frames


# --------------------------------------------------------------------------- the baseline engine


class TorchEagerEngine(Engine):
    """The PyTorch model behind the Engine interface: eval mode, torch.inference_mode, CPU, float32.

    `meta` is the export's model.json (same preprocessing, sizes and model hash), so the
    Localizer accepts it for the tile set encoded by that export.
    """

    def __init__(self, model_dir: Path, checkpoint: Path | None, threads: int = 0) -> None:
        import torch

        from crossview_training.models import CrossViewModel, ModelConfig, load_checkpoint, model_hash

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.meta = load_model_meta(model_dir)
        if checkpoint is not None:
            model = load_checkpoint(checkpoint)
            got = model_hash(model)
            if got != self.meta.model_hash:
                raise SystemExit(f"checkpoint {checkpoint} is model {got}, but {model_dir} exports "
                                 f"{self.meta.model_hash}; pass the checkpoint that export was made from")
            self.random_weights = False
        else:
            log.warning("no checkpoint for %s: the PyTorch baseline runs the same architecture with random "
                        "weights (same latency, different estimates); pass --checkpoint for the real ones",
                        model_dir)
            model = CrossViewModel(ModelConfig.from_dict(dict(self.meta.raw["config"])), name=self.meta.name)
            self.random_weights = True
        self.model = model.to("cpu", torch.float32).eval()
        self.threads = torch.get_num_threads()
        self.torch_version = torch.__version__
        self.name = f"torch-eager:{torch.__version__}:cpu:{self.threads}thr"
        self._warmup()

    def _encode(self, graph: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(images)
            desc, feats = (self.model.ground_outputs(x) if graph == GROUND_GRAPH else self.model.aerial_outputs(x))
        return desc.numpy(), feats.numpy()

    def _offset(self, ground: np.ndarray, aerial: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model.offset(self._torch.from_numpy(ground), self._torch.from_numpy(aerial)).numpy()


# --------------------------------------------------------------------------- measuring


def localizer_config(args: argparse.Namespace, art: Artefacts) -> LocalizerConfig:
    """Default localizer settings; heading as asked; no covariance calibration (speed only)."""
    return LocalizerConfig(tile_set=str(art.tiles), model=str(art.model), engine="onnxruntime",
                           engine_threads=args.threads, heading=args.heading, covariance_file="none")


def time_pipeline(engine: Engine, config: LocalizerConfig, frames: list[Frame], warmup: int) -> dict[str, Any]:
    """Warm-up frames through one Localizer, then every frame through a fresh one on the same engine."""
    usable = [f for f in frames if f.fix is not None]
    if warmup:
        warm = Localizer(config, engine=engine)
        for f in usable[:warmup]:
            warm.localize(f.jpeg, f.fix, f.stamp_s, now_s=f.stamp_s)
        warm.close()
    loc = Localizer(config, engine=engine)
    estimates: list[Estimate] = []
    rss: list[float] = []
    t0 = time.perf_counter()
    for f in usable:
        estimates.append(loc.localize(f.jpeg, f.fix, f.stamp_s, now_s=f.stamp_s))
        rss.append(rss_mb())
    wall_s = time.perf_counter() - t0
    loc.close()
    full = [e for e in estimates if e.has_position]
    stages: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        stages[stage] = latency_stats_ms([getattr(e.latency, f"{stage}_ms") * 1e6 for e in full])
    stages["other"] = latency_stats_ms([(e.latency.total_ms - sum(getattr(e.latency, f"{s}_ms") for s in STAGES))
                                        * 1e6 for e in full])
    stages["total"] = latency_stats_ms([e.latency.total_ms * 1e6 for e in full])
    reasons: dict[str, int] = {}
    for e in estimates:
        reasons[str(e.reason)] = reasons.get(str(e.reason), 0) + 1
    window = min(RSS_WINDOW, len(rss) // 2)
    first, last = float(np.mean(rss[:window])), float(np.mean(rss[-window:]))
    return {
        "engine": engine.name,
        "frames": len(estimates),
        "frames_full": len(full),
        "frames_without_fix": len(frames) - len(usable),
        "reasons": reasons,
        "stages": stages,
        "wall_s": wall_s,
        "frames_per_s": len(estimates) / wall_s,
        "rss": {"window_frames": window, "first_mb": first, "last_mb": last, "peak_mb": float(max(rss)),
                "growth_pct": 100.0 * (last - first) / first},
        "_estimates": estimates,  # dropped before the JSON
    }


def agreement(a: list[Estimate], b: list[Estimate]) -> dict[str, Any]:
    """How alike the two pipelines' estimates are (same weights: same tiles, positions within mm)."""
    pairs = [(x, y) for x, y in zip(a, b) if x.has_position and y.has_position]
    if not pairs:
        return {"frames": 0}
    dist = [math.hypot(x.easting_m - y.easting_m, x.northing_m - y.northing_m) for x, y in pairs]
    return {"frames": len(pairs), "same_tile_share": float(np.mean([x.tile_id == y.tile_id for x, y in pairs])),
            "position_diff_median_m": float(np.median(dist)), "position_diff_max_m": float(np.max(dist))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crossview_ros.tiles import TileSet

    art = plan_artefacts(args)
    if art.model.is_dir() and (art.model / "model.json").is_file():
        if load_model_meta(art.model, verify=False).matching == "bev":
            raise SystemExit(f"{art.model} is a bev model: this benchmark's PyTorch baseline runs retrieval models "
                             "only; time a bev model through the node with benchmarks/bench_node.py")
    if args.model is None or args.tiles is None or args.bag is None:
        build_in_child(args, art)
    frames = read_frames(art.bag, args.frames if args.bag is not None else None)
    if sum(f.fix is not None for f in frames) < 2:
        raise SystemExit(f"{art.bag} has fewer than 2 panoramas with a GNSS fix before them")
    config = localizer_config(args, art)

    # ONNX Runtime first, before torch is imported into this process (the runtime never imports it).
    import onnxruntime

    onnx_engine = OnnxEngine(art.model, providers=["CPUExecutionProvider"], threads=args.threads)
    meta = onnx_engine.meta
    onnx = time_pipeline(onnx_engine, config, frames, args.warmup)
    onnx_engine.close()
    del onnx_engine

    torch_engine = TorchEagerEngine(art.model, art.checkpoint, threads=args.threads)
    eager = time_pipeline(torch_engine, config, frames, args.warmup)
    torch_engine.close()

    agree = agreement(onnx.pop("_estimates"), eager.pop("_estimates"))
    ratio = {}
    for row in ROWS:
        o, t = onnx["stages"][row], eager["stages"][row]
        ratio[row] = {k: (t[f"{k}_ms"] / o[f"{k}_ms"] if o[f"{k}_ms"] > 0 else None)  # None: stage not run
                      for k in ("p50", "p99")}
    info = machine_info()
    info.update(onnxruntime=onnxruntime.__version__, torch=torch_engine.torch_version)
    return {
        "benchmark": "bench_localizer",
        "machine": info,
        "config": {
            "model": str(art.model), "model_name": meta.name, "model_hash": meta.model_hash,
            "model_random_weights": args.model is None, "torch_random_weights": torch_engine.random_weights,
            "checkpoint": None if art.checkpoint is None else str(art.checkpoint),
            "ground_input_hw": list(meta.ground.size_hw), "aerial_input_hw": list(meta.aerial.size_hw),
            "descriptor_dim": meta.descriptor_dim,
            "tiles": str(art.tiles), "tile_count": len(TileSet.open(art.tiles)), "bag": str(art.bag),
            "frames": len(frames), "warmup": args.warmup, "heading": args.heading,
            "threads_requested": args.threads,
            "onnxruntime_threads": args.threads or "default (one per physical core)",
            "torch_threads": torch_engine.threads, "quick": args.quick, "seed": args.seed,
            "localizer": {k: v for k, v in config.to_dict().items() if k not in ("tile_set", "model")},
        },
        "results": {"onnxruntime": onnx, "torch_eager": eager, "ratio_torch_over_onnx": ratio,
                    "agreement": agree},
        "targets": check_targets(onnx, meta),
    }


def check_targets(onnx: dict[str, Any], meta: Any) -> dict[str, Any]:
    """The design targets, judged on the ONNX Runtime pipeline (the one the node runs)."""
    total = onnx["stages"]["total"]
    checks = {
        "e2e_p50_ms": (total["p50_ms"], "<=", TARGET_P50_MS),
        "e2e_p99_ms": (total["p99_ms"], "<=", TARGET_P99_MS),
        "rss_growth_pct": (onnx["rss"]["growth_pct"], "<", TARGET_RSS_GROWTH_PCT),
    }
    stated = meta.name == MODEL_PRESET and meta.ground.size_hw == GROUND_SIZE
    out: dict[str, Any] = {"stated_for": f"{MODEL_PRESET} model, {GROUND_SIZE[1]}x{GROUND_SIZE[0]} input, CPU",
                           "judged_on": f"{meta.name} model, {meta.ground.width_px}x{meta.ground.height_px} input",
                           "applies": bool(stated)}
    for name, (value, op, limit) in checks.items():
        ok = value <= limit if op == "<=" else value < limit
        out[name] = {"value": value, "target": f"{op} {limit:g}", "met": bool(ok)}
    return out


def report(summary: dict[str, Any]) -> None:
    res, cfg = summary["results"], summary["config"]
    onnx, tch, ratio = res["onnxruntime"], res["torch_eager"], res["ratio_torch_over_onnx"]
    rows = []
    for row in ROWS:
        o, t = onnx["stages"][row], tch["stages"][row]
        rows.append({"stage": row, "o50": o["p50_ms"], "o99": o["p99_ms"], "t50": t["p50_ms"], "t99": t["p99_ms"],
                     "r50": ratio[row]["p50"], "r99": ratio[row]["p99"]})
    print(describe_machine(summary["machine"]))
    weights = "random weights" if cfg["model_random_weights"] else "exported weights"
    print(f"model {cfg['model_name']} ({weights}), {cfg['ground_input_hw'][1]}x{cfg['ground_input_hw'][0]} "
          f"panoramas, {cfg['tile_count']} tiles, heading {'on' if cfg['heading'] else 'off'}; "
          f"{onnx['frames_full']} of {onnx['frames']} frames ran every stage (+{cfg['warmup']} warm-up); "
          f"threads: onnxruntime {cfg['onnxruntime_threads']}, torch {cfg['torch_threads']}; "
          f"times in ms; ratio = torch eager / onnxruntime")
    print_table(rows, [
        ("stage", "stage", str), ("o50", "onnx p50", ".2f"), ("o99", "onnx p99", ".2f"),
        ("t50", "torch p50", ".2f"), ("t99", "torch p99", ".2f"), ("r50", "ratio p50", ".2f"),
        ("r99", "ratio p99", ".2f"),
    ])
    print()
    runs = []
    for label, r in (("onnxruntime", onnx), ("torch eager", tch)):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items()))
        runs.append({"pipeline": label, "fps": r["frames_per_s"], "rss0": r["rss"]["first_mb"],
                     "rss1": r["rss"]["last_mb"], "peak": r["rss"]["peak_mb"], "growth": r["rss"]["growth_pct"],
                     "reasons": reasons})
    window = onnx["rss"]["window_frames"]
    print_table(runs, [
        ("pipeline", "pipeline", str), ("fps", "frames/s", ".1f"), ("rss0", f"RSS first {window} MB", ".1f"),
        ("rss1", f"RSS last {window} MB", ".1f"), ("peak", "RSS peak MB", ".1f"), ("growth", "growth %", "+.2f"),
        ("reasons", "estimates by reason", str),
    ])
    agree = res["agreement"]
    if agree.get("frames"):
        print(f"agreement: same top-1 tile in {100 * agree['same_tile_share']:.1f} % of {agree['frames']} frames, "
              f"position difference median {agree['position_diff_median_m']:.3g} m, max "
              f"{agree['position_diff_max_m']:.3g} m" + (" (torch ran random weights)" if cfg["torch_random_weights"]
                                                        else ""))
    print_targets(summary["targets"], 16, ".2f", title="targets on the onnxruntime pipeline")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    summary = run(args)
    report(summary)
    if args.json:
        print(f"wrote {write_json_atomic(args.json, summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
