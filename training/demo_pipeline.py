"""The demo's pipeline: the nine stages in order, each with the settings it records, how it builds
its output (demo_steps) and how a reuse checks that output; then the summary.

Every stage's params include the fingerprints of the stages it reads, so a change upstream
rebuilds everything after it (demo_stages.Stages).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from crossview_ros.atomic import write_json_atomic
from crossview_ros.covariance import CALIBRATION_VERSION
from crossview_ros.model_meta import load_model_meta, sha256_file
from crossview_ros.replay import replay_bag
from crossview_ros.tiles import TileSet, min_inside_for
from crossview_ros.tiles_cli import encode_tile_set
from crossview_training.demo_config import (
    MIN_VALIDATION_S, TEST_CITY_LAT_DEG, TEST_CITY_LON_DEG, DemoConfig, DemoPaths,
)
from crossview_training.demo_stages import StageResult, Stages, canonical
from crossview_training.demo_steps import (
    calibrate_model, check_dataset, ekf_config_sha256, export_model, make_city, make_dataset, make_drive,
    make_tiles, node_args, train_config, train_model, validation_seeds, vigor_config,
)
from crossview_training.demo_summary import summarize
from crossview_training.train_config import TrainConfig

log = logging.getLogger("crossview_demo")


def dataset_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths) -> StageResult:
    root = paths.dataset
    vigor = json.loads(canonical(dataclasses.asdict(vigor_config(cfg))))
    return stages.run(
        "dataset", root,
        {"cities": cfg.cities, "city_m": cfg.city_m, "gsd_m": cfg.gsd_m, "seed": cfg.seed, "vigor": vigor},
        lambda: {"cities": json.loads((make_dataset(root, cfg) / "dataset.json").read_text())["cities"]},
        lambda info: check_dataset(root, cfg))


def train_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, config: TrainConfig,
                dataset: StageResult) -> StageResult:
    def build() -> dict[str, Any]:
        ckpt = train_model(paths.train, config, cfg)
        return {"checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt)}

    return stages.run("train", paths.train, {"train_config": config.to_dict(), "dataset": dataset.fingerprint},
                      build, lambda info: sha256_file(Path(info["checkpoint"])) == info["checkpoint_sha256"],
                      scope=cfg.preset)


def export_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, dataset: StageResult,
                 train: StageResult) -> StageResult:
    def build() -> dict[str, Any]:
        first_city = paths.dataset / dataset.info["cities"][0]
        meta = load_model_meta(export_model(Path(train.info["checkpoint"]), paths.model, first_city))
        return {"model_hash": meta.model_hash, "name": meta.name, "tile_size_m": meta.tile_size_m}

    def check(info: dict[str, Any]) -> bool:
        return load_model_meta(paths.model).model_hash == info["model_hash"]  # graphs checked against their sha256

    return stages.run("export", paths.model, {"checkpoint_sha256": train.info["checkpoint_sha256"]}, build, check,
                      scope=cfg.preset)


def city_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths) -> StageResult:
    city_dir = paths.city
    params = {"size_m": cfg.test_city_m, "gsd_m": cfg.gsd_m, "seed": cfg.test_seed,
              "lat_deg": TEST_CITY_LAT_DEG, "lon_deg": TEST_CITY_LON_DEG}
    return stages.run("city", city_dir, params,
                      lambda: {"city_json_sha256": sha256_file(make_city(city_dir, cfg) / "city.json")},
                      lambda info: ((city_dir / "orthophoto.tif").is_file()
                                    and sha256_file(city_dir / "city.json") == info["city_json_sha256"]))


def tiles_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, city: StageResult,
                export: StageResult) -> StageResult:
    tiles_dir = paths.tiles
    tile_size_m = float(export.info["tile_size_m"] or cfg.tile_size_m)
    min_inside = min_inside_for(load_model_meta(paths.model, verify=False).matching)

    def build() -> dict[str, Any]:
        ts = TileSet.open(make_tiles(paths.city / "orthophoto.tif", tiles_dir, tile_size_m, cfg, min_inside))
        return {"tiles": len(ts), "created_utc": ts.meta.get("created_utc")}

    def check(info: dict[str, Any]) -> bool:
        ts = TileSet.open(tiles_dir)
        return len(ts) == info["tiles"] and ts.meta.get("created_utc") == info["created_utc"]

    return stages.run("tiles", tiles_dir, {"city": city.fingerprint, "tile_size_m": tile_size_m,
                                           "tile_px": cfg.sat_px, "min_inside": min_inside}, build, check,
                      scope=cfg.preset)


def encode_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, tiles: StageResult,
                 export: StageResult) -> StageResult:
    tiles_dir, model_hash = paths.tiles, export.info["model_hash"]

    def build() -> dict[str, Any]:
        current = TileSet.open(tiles_dir).model_hash
        encode_tile_set(tiles_dir, paths.model, overwrite=current not in (None, model_hash), progress=cfg.progress)
        return {"model_hash": TileSet.open(tiles_dir).model_hash}

    def check(info: dict[str, Any]) -> bool:
        return TileSet.open(tiles_dir).model_hash == info["model_hash"] == model_hash

    return stages.run("encode", tiles_dir, {"tiles": tiles.fingerprint, "model_hash": model_hash},
                      build, check, owns_output=False, scope=cfg.preset)


def drive_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, city: StageResult) -> StageResult:
    drive_dir = paths.drive
    params = {"city": city.fingerprint, "mode": cfg.mode, "duration_s": cfg.drive_s, "rate_hz": cfg.drive_rate_hz,
              "gnss": cfg.gnss, "pano_height_px": cfg.pano_height_px, "seed": cfg.seed}
    return stages.run(
        "drive", drive_dir, params,
        lambda: {"bag_files": sorted(p.name for p in make_drive(paths.city, drive_dir, cfg).iterdir())},
        lambda info: sorted(p.name for p in drive_dir.iterdir()) == info["bag_files"])


def calibrate_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, city: StageResult, encode: StageResult,
                    export: StageResult) -> StageResult:
    calib_dir = paths.calibration
    params = {"city": city.fingerprint, "tiles": encode.fingerprint, "model_hash": export.info["model_hash"],
              "mode": cfg.mode, "duration_s": max(cfg.drive_s, MIN_VALIDATION_S), "rate_hz": cfg.drive_rate_hz,
              "pano_height_px": cfg.pano_height_px, "seeds": validation_seeds(cfg), "gnss": cfg.gnss,
              "calibration_version": CALIBRATION_VERSION}

    def build() -> dict[str, Any]:
        calib_dir.mkdir(parents=True, exist_ok=True)
        path = calibrate_model(paths.model, paths.tiles, paths.city, calib_dir, cfg)
        return {"covariance": str(path), "covariance_sha256": sha256_file(path)}

    return stages.run("calibrate", calib_dir, params, build,
                      lambda info: sha256_file(Path(info["covariance"])) == info["covariance_sha256"],
                      scope=cfg.preset)


def replay_stage(stages: Stages, cfg: DemoConfig, paths: DemoPaths, drive: StageResult, encode: StageResult,
                 export: StageResult, calibration: StageResult) -> StageResult:
    replay_dir = paths.replay
    params_file = cfg.params_file.resolve() if cfg.params_file is not None else None
    params = {"drive": drive.fingerprint, "tiles": encode.fingerprint, "model_hash": export.info["model_hash"],
              "calibration": calibration.fingerprint, "ekf_config_sha256": ekf_config_sha256(),
              "rate": cfg.replay_rate, "node_args": node_args(cfg),
              "params_file_sha256": sha256_file(params_file) if params_file is not None else None}

    def build() -> dict[str, Any]:
        result = replay_bag(paths.drive, paths.tiles, paths.model, replay_dir, rate=cfg.replay_rate,
                            config=params_file, node_args=node_args(cfg), progress=cfg.progress, overwrite=True)
        return {"summary_sha256": sha256_file(result.out / "summary.json"), "report": str(result.report)}

    return stages.run("replay", replay_dir, params, build,
                      lambda info: sha256_file(replay_dir / "summary.json") == info["summary_sha256"],
                      scope=cfg.preset)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """All stages (crossview_training.demo's docstring), then the summary; returns it (also written to
    demo_summary.json)."""
    cfg.validate()
    paths = DemoPaths.of(cfg)
    config = train_config(cfg, paths.dataset)  # fails fast on a bad preset or --train-set
    cfg.work.mkdir(parents=True, exist_ok=True)
    stages = Stages(cfg.work, cfg.overwrite)
    started = time.monotonic()

    dataset = dataset_stage(stages, cfg, paths)
    train = train_stage(stages, cfg, paths, config, dataset)
    export = export_stage(stages, cfg, paths, dataset, train)
    city = city_stage(stages, cfg, paths)
    tiles = tiles_stage(stages, cfg, paths, city, export)
    encode = encode_stage(stages, cfg, paths, tiles, export)
    drive = drive_stage(stages, cfg, paths, city)
    calibration = calibrate_stage(stages, cfg, paths, city, encode, export)
    replay = replay_stage(stages, cfg, paths, drive, encode, export, calibration)
    return write_summary(cfg, paths, stages, export, replay, time.monotonic() - started)


def write_summary(cfg: DemoConfig, paths: DemoPaths, stages: Stages, export: StageResult, replay: StageResult,
                  total_s: float) -> dict[str, Any]:
    """The summary of the replay, with the model, the stages and the settings; written to demo_summary.json."""
    summary = summarize(json.loads((paths.replay / "summary.json").read_text()), cfg)
    if summary["frames_dropped"]:
        log.warning("the node dropped %d of %d panoramas at --replay-rate %g (it could not keep up on this machine); "
                    "lower --replay-rate for an evaluation of every frame", summary["frames_dropped"],
                    summary["frames"], cfg.replay_rate)
    summary.update({
        "replay_summary": str(paths.replay / "summary.json"), "report": replay.info["report"],
        "model": {"preset": cfg.preset, "path": str(paths.model), **export.info},
        "stages": [{"name": r.name, "status": r.status, "seconds": r.seconds, "build_seconds": r.build_seconds,
                    "output": str(r.output)} for r in stages.results],
        "total_s": total_s,
        "settings": json.loads(canonical(dataclasses.asdict(cfg))),
        "summary_path": str(paths.summary),
    })
    write_json_atomic(summary["summary_path"], summary)
    return summary
