"""crossview-demo: the whole chain on a fresh install, from synthetic data to an evaluated replay.

    crossview-demo [--work demo] [--preset cpu-bev-any-yaw] [--train-minutes 5] [--drive-s 180] ...

Stages, each one call of a project step (hloc style: the pipeline only chains them):

  1 dataset  crossview-sim vigor     --cities training cities in VIGOR's layout    WORK/dataset
  2 train    crossview-train         --preset, stopped after --train-minutes       WORK/PRESET/train
  3 export   crossview-export onnx   the checkpoint (best.pt, else last.pt)        WORK/PRESET/model
  4 city     crossview-sim city      a held-out city (--test-seed) + orthophoto    WORK/city
  5 tiles    crossview-tiles build   that orthophoto cut like the training tiles   WORK/PRESET/tiles
  6 encode   crossview-tiles encode  the tiles' descriptors with the export        (in place)
  7 drive    crossview-sim drive     a 2 Hz walk with urban GNSS, as a bag         WORK/drive
  8 calibrate crossview-localize      --calibrate on a validation walk (next seed)  WORK/PRESET/calibration
                                     in the held-out city: the receiver's sigma    (+ model/covariance.json)
                                     scale, the position and yaw covariance
  9 replay   crossview-replay        the bag through the real localize_node        WORK/PRESET/replay

then a summary (raw GNSS vs our fixes vs the fused track: median / p95 error, share published,
heading) printed and written to WORK/PRESET/demo_summary.json, with the path of the replay's
report.md.

Reuse: a stage that finishes writes WORK/stages/[PRESET/]<stage>.json with its settings and what it
produced (checkpoint sha256, model hash, ...). A later run skips a stage whose record matches its
settings (which include the identity of its inputs) and whose output still checks out (the model
loads and its graphs match their sha256, the tile set opens with this model's descriptors, ...);
a record left "running" by a killed run resumes the stage (every step writes atomically and
resumes: dataset panoramas, training from last.pt, tile cutting and encoding); changed settings
rebuild the stage and everything after it. --overwrite rebuilds everything. A resumed training
gets a fresh --train-minutes budget.

The training cities are VIGOR's city centres (seeds 10 x --seed + 1, 2, ...); the drive runs in a
city of another seed that no training panorama shows. The held-out city plays VIGOR's cross-area
test role, so every generated city trains (area=same, 90 % of each city's panoramas; pass
--train-set area=cross for VIGOR's cross-area training split instead).

Exit codes: 0 done; 2 bad arguments (one line says which and how to fix it); 1 a stage failed
(its error is printed; rerun to resume); 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossview_ros.atomic import write_json_atomic
from crossview_ros.model_meta import sha256_file

log = logging.getLogger("crossview_demo")

PROG = "crossview-demo"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RECORD_FORMAT = "crossview_ros.demo_stage"
DRIVE_TRACK_SPEED_MPS = 12.0  # the drive preset's fastest cruise speed, m/s (sim.drive MOTION_PRESETS)
STAGES = ("dataset", "train", "export", "city", "tiles", "encode", "drive", "calibrate", "replay")
MIN_VALIDATION_S = 30.0  # the calibration walk is as long as the drive, and at least this
SAME_AREA_TRAIN_FRACTION = 0.9  # share of each city's panoramas in same_area_balanced_train (the demo trains on it)
TEST_CITY_LAT_DEG, TEST_CITY_LON_DEG = 40.7580, -73.9855  # held-out city centre (crossview-sim city's default)


class DemoError(RuntimeError):
    """A stage failed; the message says which and what to do."""


class UsageError(ValueError):
    """Bad arguments (exit code 2)."""


@dataclass
class DemoConfig:
    """Every setting of a demo run (the CLI flags); the stage records keep the ones each stage uses."""

    work: Path = Path("demo")  # everything is written under this folder
    preset: str = "cpu-bev-any-yaw"  # crossview-train preset (training.train.PRESETS); cpu-bev-any-yaw: any camera heading
    train_minutes: float = 5.0  # training time budget, minutes (crossview-train time_budget_min)
    train_set: tuple[str, ...] = ()  # more TrainConfig KEY=VALUE overrides, applied last
    cities: int = 2  # training cities, 2..4 (VIGOR's centres: NewYork, Chicago, Seattle, SanFrancisco)
    city_m: float = 600.0  # side of each training city, metres
    panoramas: int = 300  # panoramas per training city (VIGOR caps 2 per positive tile)
    pano_height_px: int = 320  # panorama height of the dataset and the drive (width = 2 x height)
    sat_px: int = 640  # training aerial image side and runtime tile side, pixels
    tile_size_m: float = 72.96  # training aerial image side and runtime tile side, metres (VIGOR's L)
    gsd_m: float = 0.15  # orthophoto ground sampling distance of every city, m/px
    test_city_m: float = 600.0  # side of the held-out city, metres
    test_seed: int = 100  # city seed of the held-out city (must differ from the training cities')
    drive_s: float = 180.0  # length of the drive, seconds
    drive_rate_hz: float = 2.0  # panorama rate of the drive, Hz
    mode: str = "walk"  # walk on sidewalks or drive in a lane
    replay_rate: float = 4.0  # replay speed, x real time (2 Hz x 4 = 8 panoramas/s to the node)
    heading: bool = True  # the node estimates and publishes the heading too
    params_file: Path | None = None  # node parameters YAML (default: the node's defaults = config/localize.yaml)
    node_args: tuple[str, ...] = ()  # more ROS arguments for localize_node (after the replay's own)
    seed: int = 0  # training cities, panorama sampling, training and drive seed
    overwrite: bool = False  # rebuild every stage
    progress: bool = True  # progress bars

    def training_seeds(self) -> list[int]:
        from crossview_ros.sim.vigor import default_cities

        return [c.seed for c in default_cities(self.cities, size_m=self.city_m, gsd_m=self.gsd_m,
                                               seed=self.seed).values()]

    def validate(self) -> None:
        """UsageError naming the first bad setting and how to fix it."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        def finite(name: str, value: float, lo: float) -> None:
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= lo,
                 f"--{name.replace('_', '-')} must be a number >= {lo:g}, got {value!r}")

        need(2 <= self.cities <= 4, f"--cities must be 2..4 (VIGOR's four city centres), got {self.cities}")
        finite("city_m", self.city_m, 150.0)
        finite("test_city_m", self.test_city_m, 150.0)
        need(self.panoramas >= 8, f"--panoramas must be >= 8 per city, got {self.panoramas}")
        need(self.pano_height_px >= 16 and self.pano_height_px % 2 == 0,
             f"--pano-height-px must be an even number >= 16, got {self.pano_height_px}")
        need(self.sat_px >= 16, f"--sat-px must be >= 16, got {self.sat_px}")
        finite("tile_size_m", self.tile_size_m, 1.0)
        need(math.isfinite(self.gsd_m) and 0.02 <= self.gsd_m <= 2.0, f"--gsd-m must be in 0.02..2 m/px, got {self.gsd_m}")
        need(self.tile_size_m * 2.5 <= min(self.city_m, self.test_city_m),
             f"cities of {min(self.city_m, self.test_city_m):g} m are too small for {self.tile_size_m:g} m tiles: "
             "--city-m and --test-city-m must be >= 2.5 x --tile-size-m")
        need(math.isfinite(self.train_minutes) and self.train_minutes > 0,
             f"--train-minutes must be > 0, got {self.train_minutes}")
        need(math.isfinite(self.drive_s) and self.drive_s >= 2.0, f"--drive-s must be >= 2, got {self.drive_s}")
        need(math.isfinite(self.drive_rate_hz) and 0.1 <= self.drive_rate_hz <= 30,
             f"--drive-rate-hz must be in 0.1..30, got {self.drive_rate_hz}")
        need(self.drive_s * self.drive_rate_hz >= 2, "the drive needs at least 2 panoramas: raise --drive-s")
        need(math.isfinite(self.replay_rate) and self.replay_rate > 0,
             f"--replay-rate must be > 0 (x real time), got {self.replay_rate}")
        need(self.mode in ("walk", "drive"), f"--mode must be walk or drive, got {self.mode!r}")
        need(self.test_seed not in self.training_seeds(),
             f"--test-seed {self.test_seed} is the seed of a training city ({self.training_seeds()}); the drive "
             "must run in a city no training panorama shows: pick another")
        need(not self.work.exists() or self.work.is_dir(), f"--work {self.work} exists and is not a folder")
        need(self.params_file is None or self.params_file.is_file(), f"--params-file {self.params_file} not found")


# --------------------------------------------------------------------------- stage bookkeeping


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(obj: Any) -> str:
    """Short content hash of settings (+ identity of inputs): what downstream stages record."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    """One stage of this run: built or reused, how long, what it produced."""

    name: str
    output: Path
    status: str  # "built" | "reused"
    seconds: float  # this run: build time, or the time to check the reused output
    build_seconds: float  # time the build took (this run's or the earlier run's that built it)
    fingerprint: str  # identity of the output, for the stages after it
    info: dict[str, Any] = field(default_factory=dict)  # what the stage produced (paths, hashes, counts)


class Stages:
    """Runs stages with completion records under WORK/stages (module docstring: Reuse)."""

    def __init__(self, work: Path, overwrite: bool) -> None:
        self.work = work
        self.records = work / "stages"
        self.overwrite = overwrite
        self.results: list[StageResult] = []

    def run(self, name: str, output: Path, params: dict[str, Any], build: Callable[[], dict[str, Any]],
            check: Callable[[dict[str, Any]], bool], *, owns_output: bool = True,
            scope: str = "") -> StageResult:
        """Reuse `name` when its record matches `params` and check(info) passes, else build it.

        build() makes the output and returns its info (identity: hashes, paths); check(info) says
        whether the output on disk is still the one recorded. owns_output: the stage may delete
        `output` before rebuilding with other settings (False for in-place steps). scope: records of
        per-model stages live under stages/<scope>/ (the preset), so switching presets keeps both.
        """
        index = STAGES.index(name) + 1
        path = self.records / scope / f"{name}.json"
        record = _read_record(path)
        started = time.monotonic()
        params = json.loads(_canonical(params))  # as the record stores it (tuples as lists, paths as strings)
        same = record is not None and record.get("params") == params
        if not self.overwrite and same and record.get("status") == "done":
            try:
                ok = bool(check(record["info"]))
            except Exception as exc:  # a check is a read of files a user may have changed: any failure = rebuild
                log.info("%s: recorded output does not check out (%s: %s); rebuilding", name, type(exc).__name__, exc)
                ok = False
            if ok:
                result = StageResult(name, output, "reused", time.monotonic() - started,
                                     float(record.get("build_seconds", float("nan"))), record["fingerprint"],
                                     record["info"])
                log.info("[%d/%d] %s: reused %s (built earlier in %s; checked in %.2f s)", index, len(STAGES), name,
                         output, _duration(result.build_seconds), result.seconds)
                self.results.append(result)
                return result
        resume = same and record.get("status") == "running" and not self.overwrite
        if owns_output and not resume:
            _remove(output, self.work)
        if owns_output:
            _remove_partials(output, self.work)
        log.info("[%d/%d] %s: %s -> %s", index, len(STAGES), name,
                 "resuming an interrupted build" if resume else "building", output)
        write_json_atomic(path, {"format": RECORD_FORMAT, "stage": name, "status": "running",
                                 "params": params, "output": str(output)}, sort_keys=True)
        info = build()
        seconds = time.monotonic() - started
        fp = fingerprint({"params": params, "info": info})
        write_json_atomic(path, {"format": RECORD_FORMAT, "stage": name, "status": "done", "params": params,
                                 "output": str(output), "info": info, "fingerprint": fp, "build_seconds": seconds,
                                 "finished_utc": _utc_now()}, sort_keys=True)
        result = StageResult(name, output, "built", seconds, seconds, fp, info)
        log.info("[%d/%d] %s: built %s in %s", index, len(STAGES), name, output, _duration(seconds))
        self.results.append(result)
        return result


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _remove(path: Path, work: Path) -> None:
    """Delete a stage's old output (only ever inside the work folder)."""
    if not path.exists():
        return
    if work.resolve() not in path.resolve().parents:
        raise DemoError(f"refusing to delete {path}: it is outside the work folder {work}")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_partials(path: Path, work: Path) -> None:
    """Temporary folders that a killed atomic writer of `path` left beside it (.NAME.*.partial)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.partial"):
            _remove(stale, work)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _step(what: str, code: int) -> None:
    if code != 0:
        raise DemoError(f"{what} failed (exit code {code}); see its message above")


# --------------------------------------------------------------------------- the stages


def make_dataset(root: Path, cfg: DemoConfig) -> Path:
    """crossview-sim vigor: the training cities in VIGOR's layout (resumes panorama by panorama)."""
    from crossview_ros.sim.vigor import default_cities, write_vigor_dataset

    cities = default_cities(cfg.cities, size_m=cfg.city_m, gsd_m=cfg.gsd_m, seed=cfg.seed)
    return write_vigor_dataset(root, cities, vigor_config(cfg), progress=cfg.progress)


def vigor_config(cfg: DemoConfig) -> Any:
    from crossview_ros.sim.vigor import VigorConfig

    return VigorConfig(panoramas=cfg.panoramas, pano_height_px=cfg.pano_height_px, sat_px=cfg.sat_px,
                       tile_size_m=cfg.tile_size_m, seed=cfg.seed, same_area_train_fraction=SAME_AREA_TRAIN_FRACTION)


def check_dataset(root: Path, cfg: DemoConfig) -> bool:
    """dataset.json (written last) describes these cities and settings, and every split file is there."""
    manifest = json.loads((root / "dataset.json").read_text())
    want = json.loads(_canonical(dataclasses.asdict(vigor_config(cfg))))
    if json.loads(_canonical(manifest.get("vigor_config"))) != want:
        return False
    return all((root / "splits" / c / "same_area_balanced_train.txt").is_file() for c in manifest["cities"])


def train_overrides(cfg: DemoConfig, data: Path) -> list[str]:
    """crossview-train --set values: the demo's (data, area, budget, seed) first, the user's --train-set last."""
    return [f"data={data}", "area=same", f"time_budget_min={cfg.train_minutes!r}", f"seed={cfg.seed}",
            *cfg.train_set]


def train_config(cfg: DemoConfig, data: Path) -> dict[str, Any]:
    """The TrainConfig crossview-train will run (UsageError for a bad preset or --train-set)."""
    from crossview_training.train import PRESETS, build_config

    if cfg.preset not in PRESETS:
        raise UsageError(f"unknown --preset {cfg.preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    try:
        return build_config(cfg.preset, None, train_overrides(cfg, data)).to_dict()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--train-set: {exc}") from None


def train_model(run: Path, data: Path, cfg: DemoConfig) -> Path:
    """crossview-train --preset P: trains into `run` (resumes last.pt); returns the checkpoint to export."""
    from crossview_training.train import main as train_main

    argv = ["--preset", cfg.preset, "--out", str(run), "--set", *train_overrides(cfg, data)]
    _step("crossview-train", train_main(argv + ([] if cfg.progress else ["--no-progress"])))
    return pick_checkpoint(run)


def pick_checkpoint(run: Path) -> Path:
    """best.pt (best validation epoch) when training wrote one, else last.pt."""
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise DemoError(f"crossview-train wrote no checkpoint in {run}")


def export_model(checkpoint: Path, out: Path, check_images: Path) -> Path:
    """crossview-export onnx, with real panoramas and tiles of a training city in the parity check."""
    from crossview_training.export import main as export_main

    _step("crossview-export onnx", export_main(["onnx", "--checkpoint", str(checkpoint), "--out", str(out),
                                                "--check-images", str(check_images), "--overwrite"]))
    return out


def make_city(out: Path, cfg: DemoConfig) -> Path:
    """crossview-sim city: the held-out city and its orthophoto."""
    from crossview_ros.sim import cli as sim_cli

    _step("crossview-sim city", sim_cli.main(
        ["city", "--out", str(out), "--size-m", repr(cfg.test_city_m), "--gsd-m", repr(cfg.gsd_m),
         "--seed", str(cfg.test_seed), "--lat", repr(TEST_CITY_LAT_DEG), "--lon", repr(TEST_CITY_LON_DEG)]
        + ([] if cfg.progress else ["--no-progress"])))
    return out


def make_tiles(ortho: Path, out: Path, tile_size_m: float, cfg: DemoConfig) -> Path:
    """crossview-tiles build: the orthophoto cut like the training aerial images (same L, same pixels)."""
    from crossview_ros.tiles import TilingConfig, build_tile_set

    return build_tile_set([ortho], out, TilingConfig(tile_size_m=tile_size_m, tile_px=cfg.sat_px), overwrite=True,
                          progress=cfg.progress)


def make_drive(city: Path, out: Path, cfg: DemoConfig, *, duration_s: float | None = None,
               seed: int | None = None) -> Path:
    """crossview-sim drive: a walk (or drive) with urban GNSS, written as an MCAP bag (the drive's
    length and seed unless given)."""
    from crossview_ros.sim import cli as sim_cli

    duration_s = cfg.drive_s if duration_s is None else duration_s
    seed = cfg.seed if seed is None else seed
    _step("crossview-sim drive", sim_cli.main(
        ["drive", "--city", str(city), "--out", str(out), "--mode", cfg.mode, "--duration-s", repr(duration_s),
         "--rate-hz", repr(cfg.drive_rate_hz), "--gnss", "urban", "--pano-height-px", str(cfg.pano_height_px),
         "--seed", str(seed), "--overwrite"] + ([] if cfg.progress else ["--no-progress"])))
    return out


def calibrate_model(model: Path, tiles: Path, city: Path, out: Path, cfg: DemoConfig) -> Path:
    """A validation walk (seed + 1: another route and GNSS history in the held-out city; same-city,
    so it is the optimistic case of calibration) under out/, then crossview-localize --calibrate on
    it: covariance.json beside the model; its printout in out/calibration.txt."""
    import contextlib

    from crossview_ros import localize_cli

    bag = make_drive(city, out / "validation_drive", cfg, duration_s=max(cfg.drive_s, MIN_VALIDATION_S),
                     seed=cfg.seed + 1)
    with open(out / "calibration.txt", "w") as f, contextlib.redirect_stdout(f):
        # with the heading always: the yaw variance is calibrated too, whatever the replay then runs
        code = localize_cli.main(["--model", str(model), "--tiles", str(tiles), "--bag", str(bag), "--calibrate",
                                  "--heading", *track_args(cfg, "--set", "=")])
    _step("crossview-localize --calibrate", code)
    return model / "covariance.json"


def _ekf_config_sha256() -> str | None:
    """The EKF set-up the replay's fused track is computed with (an edit re-evaluates the replay)."""
    from crossview_ros.replay import find_ekf_config

    path = find_ekf_config()
    return sha256_file(path) if path is not None else None


def node_args(cfg: DemoConfig) -> list[str]:
    return (["-p", "heading:=true"] if cfg.heading else []) + track_args(cfg, "-p", ":=") + list(cfg.node_args)


def track_args(cfg: DemoConfig, flag: str, sep: str) -> list[str]:
    """The track's motion model for a driving platform (the defaults are a walker's)."""
    return [flag, f"track_speed_mps{sep}{DRIVE_TRACK_SPEED_MPS!r}"] if cfg.mode == "drive" else []


# --------------------------------------------------------------------------- the pipeline


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """All stages (module docstring), then the summary; returns it (also written to demo_summary.json)."""
    cfg.validate()
    work = cfg.work
    data_root = work / "dataset"
    train_cfg = train_config(cfg, data_root)  # fails fast on a bad preset or --train-set
    work.mkdir(parents=True, exist_ok=True)
    per_model = work / cfg.preset
    stages = Stages(work, cfg.overwrite)
    started = time.monotonic()

    vigor = json.loads(_canonical(dataclasses.asdict(vigor_config(cfg))))
    dataset = stages.run(
        "dataset", data_root,
        {"cities": cfg.cities, "city_m": cfg.city_m, "gsd_m": cfg.gsd_m, "seed": cfg.seed, "vigor": vigor},
        lambda: {"cities": json.loads((make_dataset(data_root, cfg) / "dataset.json").read_text())["cities"]},
        lambda info: check_dataset(data_root, cfg))

    run_dir = per_model / "train"

    def build_train() -> dict[str, Any]:
        ckpt = train_model(run_dir, data_root, cfg)
        return {"checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt)}

    train = stages.run("train", run_dir, {"train_config": train_cfg, "dataset": dataset.fingerprint}, build_train,
                       lambda info: sha256_file(Path(info["checkpoint"])) == info["checkpoint_sha256"],
                       scope=cfg.preset)

    model_dir = per_model / "model"

    def build_export() -> dict[str, Any]:
        from crossview_ros.model_meta import load_model_meta

        first_city = data_root / dataset.info["cities"][0]
        meta = load_model_meta(export_model(Path(train.info["checkpoint"]), model_dir, first_city))
        return {"model_hash": meta.model_hash, "name": meta.name, "tile_size_m": meta.tile_size_m}

    def check_export(info: dict[str, Any]) -> bool:
        from crossview_ros.model_meta import load_model_meta

        return load_model_meta(model_dir).model_hash == info["model_hash"]  # graphs checked against their sha256

    export = stages.run("export", model_dir, {"checkpoint_sha256": train.info["checkpoint_sha256"]},
                        build_export, check_export, scope=cfg.preset)

    city_dir = work / "city"
    city_params = {"size_m": cfg.test_city_m, "gsd_m": cfg.gsd_m, "seed": cfg.test_seed,
                   "lat_deg": TEST_CITY_LAT_DEG, "lon_deg": TEST_CITY_LON_DEG}
    city = stages.run("city", city_dir, city_params,
                      lambda: {"city_json_sha256": sha256_file(make_city(city_dir, cfg) / "city.json")},
                      lambda info: ((city_dir / "orthophoto.tif").is_file()
                                    and sha256_file(city_dir / "city.json") == info["city_json_sha256"]))

    tiles_dir = per_model / "tiles"
    tile_size_m = float(export.info["tile_size_m"] or cfg.tile_size_m)

    def build_tiles() -> dict[str, Any]:
        from crossview_ros.tiles import TileSet

        ts = TileSet.open(make_tiles(city_dir / "orthophoto.tif", tiles_dir, tile_size_m, cfg))
        return {"tiles": len(ts), "created_utc": ts.meta.get("created_utc")}

    def check_tiles(info: dict[str, Any]) -> bool:
        from crossview_ros.tiles import TileSet

        ts = TileSet.open(tiles_dir)
        return len(ts) == info["tiles"] and ts.meta.get("created_utc") == info["created_utc"]

    tiles = stages.run("tiles", tiles_dir, {"city": city.fingerprint, "tile_size_m": tile_size_m,
                                            "tile_px": cfg.sat_px}, build_tiles, check_tiles, scope=cfg.preset)

    def build_encode() -> dict[str, Any]:
        from crossview_ros.tiles import TileSet
        from crossview_ros.tiles_cli import encode_tile_set

        current = TileSet.open(tiles_dir).model_hash
        encode_tile_set(tiles_dir, model_dir, overwrite=current not in (None, export.info["model_hash"]),
                        progress=cfg.progress)
        return {"model_hash": TileSet.open(tiles_dir).model_hash}

    def check_encode(info: dict[str, Any]) -> bool:
        from crossview_ros.tiles import TileSet

        return TileSet.open(tiles_dir).model_hash == info["model_hash"] == export.info["model_hash"]

    encode = stages.run("encode", tiles_dir, {"tiles": tiles.fingerprint, "model_hash": export.info["model_hash"]},
                        build_encode, check_encode, owns_output=False, scope=cfg.preset)

    drive_dir = work / "drive"
    drive_params = {"city": city.fingerprint, "mode": cfg.mode, "duration_s": cfg.drive_s,
                    "rate_hz": cfg.drive_rate_hz, "gnss": "urban", "pano_height_px": cfg.pano_height_px,
                    "seed": cfg.seed}
    drive = stages.run("drive", drive_dir, drive_params,
                       lambda: {"bag_files": sorted(p.name for p in make_drive(city_dir, drive_dir, cfg).iterdir())},
                       lambda info: sorted(p.name for p in drive_dir.iterdir()) == info["bag_files"])

    calib_dir = per_model / "calibration"
    calib_params = {"city": city.fingerprint, "tiles": encode.fingerprint, "model_hash": export.info["model_hash"],
                    "mode": cfg.mode, "duration_s": max(cfg.drive_s, MIN_VALIDATION_S), "rate_hz": cfg.drive_rate_hz,
                    "pano_height_px": cfg.pano_height_px, "seed": cfg.seed + 1}

    def build_calibration() -> dict[str, Any]:
        calib_dir.mkdir(parents=True, exist_ok=True)
        path = calibrate_model(model_dir, tiles_dir, city_dir, calib_dir, cfg)
        return {"covariance": str(path), "covariance_sha256": sha256_file(path)}

    calibration = stages.run(
        "calibrate", calib_dir, calib_params, build_calibration,
        lambda info: sha256_file(Path(info["covariance"])) == info["covariance_sha256"], scope=cfg.preset)

    replay_dir = per_model / "replay"
    params_file = cfg.params_file.resolve() if cfg.params_file is not None else None
    replay_params = {"drive": drive.fingerprint, "tiles": encode.fingerprint, "model_hash": export.info["model_hash"],
                     "calibration": calibration.fingerprint, "ekf_config_sha256": _ekf_config_sha256(),
                     "rate": cfg.replay_rate, "node_args": node_args(cfg),
                     "params_file_sha256": sha256_file(params_file) if params_file is not None else None}

    def build_replay() -> dict[str, Any]:
        from crossview_ros.replay import replay_bag

        result = replay_bag(drive_dir, tiles_dir, model_dir, replay_dir, rate=cfg.replay_rate, config=params_file,
                            node_args=node_args(cfg), progress=cfg.progress, overwrite=True)
        return {"summary_sha256": sha256_file(result.out / "summary.json"), "report": str(result.report)}

    replay = stages.run("replay", replay_dir, replay_params, build_replay,
                        lambda info: sha256_file(replay_dir / "summary.json") == info["summary_sha256"],
                        scope=cfg.preset)

    summary = summarize(json.loads((replay_dir / "summary.json").read_text()), cfg)
    if summary["frames_dropped"]:
        log.warning("the node dropped %d of %d panoramas at --replay-rate %g (it could not keep up on this machine); "
                    "lower --replay-rate for an evaluation of every frame", summary["frames_dropped"],
                    summary["frames"], cfg.replay_rate)
    summary.update({
        "replay_summary": str(replay_dir / "summary.json"), "report": replay.info["report"],
        "model": {"preset": cfg.preset, "path": str(model_dir), **export.info},
        "stages": [{"name": r.name, "status": r.status, "seconds": r.seconds, "build_seconds": r.build_seconds,
                    "output": str(r.output)} for r in stages.results],
        "total_s": time.monotonic() - started,
        "settings": json.loads(_canonical(dataclasses.asdict(cfg))),
        "summary_path": str(per_model / "demo_summary.json"),
    })
    write_json_atomic(summary["summary_path"], summary)
    return summary


TRACKS = (  # (key in demo_summary.json, key in the replay's summary.json errors, label)
    ("gnss", "gnss", "raw GNSS (/gnss/fix)"),
    ("crossview", "crossview", "crossview fixes (ours)"),
    ("fused", "fused", "fused: odometry + ours"),
    ("fused_with_gnss", "fused_with_gnss", "fused: odometry + ours + GNSS"),
)


def summarize(replay: dict[str, Any], cfg: DemoConfig) -> dict[str, Any]:
    """The demo's figures, taken from the replay's summary.json (nothing recomputed)."""
    frames = int(replay["frames"])
    tracks = {}
    for key, source, label in TRACKS:
        stats = replay["errors"][source]
        tracks[key] = {"label": label, "count": stats["count"], "median_m": stats["median_m"],
                       "p95_m": stats["p95_m"], "under_10m_pct": stats["under_10m_pct"],
                       "share_pct": 100.0 * stats["count"] / frames if frames else 0.0}
    counters = replay.get("node_counters", {})
    return {
        "frames": frames,
        "published": replay["published"],
        "published_share": replay["published_share"],
        "tracks": tracks,
        "heading": replay["heading"],
        "latency_ms": replay["latency_ms"],
        "frames_dropped": counters.get("frames_dropped"),
        "frames_received_by_node": counters.get("frames_received"),
        "rejections": {k: v for k, v in replay.get("rejections", {}).items() if v},
        "drive_s": replay.get("duration_s"),
        "replay_rate": cfg.replay_rate,
    }


def print_summary(summary: dict[str, Any], file: Any = sys.stdout) -> None:
    """The error table, heading and latency lines, the stage times, and where the report is."""
    def num(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    s = summary
    print(f"\n{PROG}: {s['frames']} panoramas over {num(s['drive_s'])} s of drive in the held-out city, "
          f"model {s['model']['preset']} ({s['model']['name']}), replayed at {s['replay_rate']:g}x real time",
          file=file)
    rows = [[t["label"], num(t["median_m"]), num(t["p95_m"]), num(t["under_10m_pct"]), str(t["count"]),
             num(t["share_pct"])] for t in s["tracks"].values()]
    print(format_table(["track", "median m", "p95 m", "< 10 m %", "frames", "% of frames"], rows), file=file)
    h = s["heading"]
    if h.get("count"):
        print(f"heading: median error {num(h['median_deg'])} deg over {h['count']} frames, "
              f"{num(100 * h['flip_share'])} % flipped (> 135 deg)", file=file)
    else:
        print("heading: none published", file=file)
    lat = s["latency_ms"]
    print(f"published {s['published']}/{s['frames']} ({100 * s['published_share']:.1f} %); latency p50 "
          f"{num(lat['p50'])} ms, p99 {num(lat['p99'])} ms; the node received {s['frames_received_by_node']} "
          f"frames and dropped {s['frames_dropped']}"
          + (f"; rejected: {', '.join(f'{k} {v}' for k, v in sorted(s['rejections'].items()))}"
             if s["rejections"] else ""), file=file)
    stage_rows = [[r["name"], r["status"], f"{r['seconds']:.1f}", num(r["build_seconds"])] for r in s["stages"]]
    stage_rows.append(["total", "", f"{s['total_s']:.1f}", ""])
    print(format_table(["stage", "status", "this run s", "build s"], stage_rows), file=file)
    print(f"report: {s['report']}\nsummary: {s['summary_path']}", file=file)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings under headers: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=d.work, help=f"folder for everything (default ./{d.work})")
    g = p.add_argument_group("training")
    g.add_argument("--preset", default=d.preset,
                   help=f"crossview-train preset (default {d.preset}; crossview-train --help lists them)")
    g.add_argument("--train-minutes", type=float, default=d.train_minutes,
                   help=f"training time budget, minutes (default {d.train_minutes:g})")
    g.add_argument("--train-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more crossview-train --set overrides, applied last (e.g. epochs=4 batch_size=16)")
    g.add_argument("--cities", type=int, default=d.cities, help=f"training cities, 2..4 (default {d.cities})")
    g.add_argument("--city-m", type=float, default=d.city_m, help=f"side of each training city, m (default {d.city_m:g})")
    g.add_argument("--panoramas", type=int, default=d.panoramas,
                   help=f"panoramas per training city (default {d.panoramas})")
    g.add_argument("--pano-height-px", type=int, default=d.pano_height_px,
                   help=f"panorama height of the dataset and the drive; width is twice (default {d.pano_height_px})")
    g.add_argument("--sat-px", type=int, default=d.sat_px,
                   help=f"aerial image side of the dataset and the runtime tiles, px (default {d.sat_px})")
    g.add_argument("--tile-size-m", type=float, default=d.tile_size_m,
                   help=f"aerial image side of the dataset and the runtime tiles, m (default {d.tile_size_m:g}, VIGOR)")
    g.add_argument("--gsd-m", type=float, default=d.gsd_m,
                   help=f"orthophoto ground sampling distance of every city, m/px (default {d.gsd_m:g})")
    g = p.add_argument_group("held-out city and drive")
    g.add_argument("--test-city-m", type=float, default=d.test_city_m,
                   help=f"side of the held-out city, m (default {d.test_city_m:g})")
    g.add_argument("--test-seed", type=int, default=d.test_seed,
                   help=f"seed of the held-out city; must differ from the training cities' (default {d.test_seed})")
    g.add_argument("--drive-s", type=float, default=d.drive_s, help=f"drive length, s (default {d.drive_s:g})")
    g.add_argument("--drive-rate-hz", type=float, default=d.drive_rate_hz,
                   help=f"panorama rate of the drive, Hz (default {d.drive_rate_hz:g})")
    g.add_argument("--mode", choices=("walk", "drive"), default=d.mode, help=f"walk or drive (default {d.mode})")
    g = p.add_argument_group("replay")
    g.add_argument("--replay-rate", type=float, default=d.replay_rate,
                   help=f"replay speed, x real time (default {d.replay_rate:g}); lower it if the summary reports "
                        "frames dropped by the node")
    g.add_argument("--no-heading", action="store_true", help="position only (the node's heading: false)")
    g.add_argument("--params-file", type=Path, default=None,
                   help="node parameters YAML (default: the node's defaults, as in config/localize.yaml)")
    g.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="one more ROS argument for localize_node, repeatable: --node-arg=-p --node-arg=min_margin:=0.01")
    p.add_argument("--seed", type=int, default=d.seed, help=f"training cities, training and drive seed (default {d.seed})")
    p.add_argument("--overwrite", action="store_true", help="rebuild every stage instead of reusing finished ones")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        work=args.work, preset=args.preset, train_minutes=args.train_minutes, train_set=tuple(args.train_set),
        cities=args.cities, city_m=args.city_m, panoramas=args.panoramas, pano_height_px=args.pano_height_px,
        sat_px=args.sat_px, tile_size_m=args.tile_size_m, gsd_m=args.gsd_m, test_city_m=args.test_city_m,
        test_seed=args.test_seed, drive_s=args.drive_s, drive_rate_hz=args.drive_rate_hz, mode=args.mode,
        replay_rate=args.replay_rate, heading=not args.no_heading, params_file=args.params_file,
        node_args=tuple(args.node_arg), seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress)


def _expected_failure(exc: BaseException) -> bool:
    """Errors of the steps that explain themselves (no traceback needed): ours, the replay's, the artefacts'."""
    from crossview_ros.model_meta import EngineError
    from crossview_ros.replay import ReplayError
    from crossview_ros.tiles import TileSetError

    return isinstance(exc, (DemoError, ReplayError, EngineError, TileSetError, FileNotFoundError, FileExistsError))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-demo; returns the exit code (module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    cfg = config_from_args(args)
    try:
        summary = run_demo(cfg)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        print(f"{PROG}: error: {exc}; the demo trains a model: install the extras with pip install '.[ros,train,replay]'",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a stage failed: say which, keep what is done
        if not _expected_failure(exc):
            log.exception("unexpected failure")
        print(f"{PROG}: error: {type(exc).__name__}: {exc}\n{PROG}: finished stages are kept under {cfg.work}; "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILURE
    print_summary(summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
