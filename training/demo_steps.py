"""The demo's steps: each one call of a project step function with the demo's settings (hloc style).

Nothing here parses or builds argv: the dataset, the training, the export, the held-out city, its
tiles, the drives and the calibration are the same functions crossview-sim, crossview-train,
crossview-export, crossview-tiles and crossview-localize run behind their flags.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from crossview_ros.localize_eval import run_calibration
from crossview_ros.model_meta import sha256_file
from crossview_ros.replay import find_ekf_config
from crossview_ros.sim.city import CityConfig
from crossview_ros.sim.cli import run_city, run_drive
from crossview_ros.sim.drive import DriveConfig
from crossview_ros.sim.vigor import VigorConfig, default_cities, write_vigor_dataset
from crossview_ros.tiles import TilingConfig, build_tile_set
from crossview_training.demo_config import (
    DRIVE_TRACK_SPEED_MPS, MIN_VALIDATION_S, SAME_AREA_TRAIN_FRACTION, TEST_CITY_LAT_DEG, TEST_CITY_LON_DEG,
    DemoConfig, UsageError,
)
from crossview_training.demo_stages import DemoError, canonical
from crossview_training.export import export_checkpoint
from crossview_training.train import train
from crossview_training.train_config import PRESETS, TrainConfig, build_config


def vigor_config(cfg: DemoConfig) -> VigorConfig:
    """The dataset's settings (crossview-sim vigor), as the dataset stage records them."""
    return VigorConfig(panoramas=cfg.panoramas, pano_height_px=cfg.pano_height_px, sat_px=cfg.sat_px,
                       tile_size_m=cfg.tile_size_m, seed=cfg.seed, same_area_train_fraction=SAME_AREA_TRAIN_FRACTION)


def make_dataset(root: Path, cfg: DemoConfig) -> Path:
    """crossview-sim vigor: the training cities in VIGOR's layout (resumes panorama by panorama)."""
    cities = default_cities(cfg.cities, size_m=cfg.city_m, gsd_m=cfg.gsd_m, seed=cfg.seed)
    return write_vigor_dataset(root, cities, vigor_config(cfg), progress=cfg.progress)


def check_dataset(root: Path, cfg: DemoConfig) -> bool:
    """dataset.json (written last) describes these cities and settings, and every split file is there."""
    manifest = json.loads((root / "dataset.json").read_text())
    want = json.loads(canonical(dataclasses.asdict(vigor_config(cfg))))
    if json.loads(canonical(manifest.get("vigor_config"))) != want:
        return False
    return all((root / "splits" / c / "same_area_balanced_train.txt").is_file() for c in manifest["cities"])


def train_overrides(cfg: DemoConfig, data: Path) -> list[str]:
    """crossview-train --set values: the demo's (data, area, budget, seed) first, the user's --train-set last."""
    return [f"data={data}", "area=same", f"time_budget_min={cfg.train_minutes!r}", f"seed={cfg.seed}",
            *cfg.train_set]


def train_config(cfg: DemoConfig, data: Path) -> TrainConfig:
    """The TrainConfig the training runs (UsageError for a bad preset or --train-set)."""
    if cfg.preset not in PRESETS:
        raise UsageError(f"unknown --preset {cfg.preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    try:
        return build_config(cfg.preset, None, train_overrides(cfg, data))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--train-set: {exc}") from None


def train_model(run: Path, config: TrainConfig, cfg: DemoConfig) -> Path:
    """crossview-train: trains into `run` (resumes last.pt); returns the checkpoint to export."""
    train(config, run, progress=cfg.progress)
    return pick_checkpoint(run)


def pick_checkpoint(run: Path) -> Path:
    """best.pt (best validation epoch) when training wrote one, else last.pt."""
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise DemoError(f"crossview-train wrote no checkpoint in {run}")


def export_model(checkpoint: Path, out: Path, check_images: Path) -> Path:
    """crossview-export onnx, with real panoramas and tiles of a training city in the parity check."""
    return export_checkpoint(checkpoint, out, check_images=check_images, overwrite=True)


def make_city(out: Path, cfg: DemoConfig) -> Path:
    """crossview-sim city: the held-out city and its orthophoto."""
    config = CityConfig(datum_lat_deg=TEST_CITY_LAT_DEG, datum_lon_deg=TEST_CITY_LON_DEG, size_m=cfg.test_city_m,
                        gsd_m=cfg.gsd_m, seed=cfg.test_seed)
    return run_city(out, config, progress=cfg.progress)


def make_tiles(ortho: Path, out: Path, tile_size_m: float, cfg: DemoConfig, min_inside: float = 1.0) -> Path:
    """crossview-tiles build: the orthophoto cut like the training aerial images (same L, same pixels),
    with the edge tiles the model family can use (tiles.min_inside_for)."""
    return build_tile_set([ortho], out, TilingConfig(tile_size_m=tile_size_m, tile_px=cfg.sat_px,
                                                     min_inside=min_inside), overwrite=True, progress=cfg.progress)


def make_drive(city: Path, out: Path, cfg: DemoConfig, *, duration_s: float | None = None,
               seed: int | None = None) -> Path:
    """crossview-sim drive: a walk (or drive) with the --gnss receiver, written as an MCAP bag (the
    drive's length and seed unless given)."""
    config = DriveConfig(mode=cfg.mode, rate_hz=cfg.drive_rate_hz,
                         duration_s=cfg.drive_s if duration_s is None else duration_s,
                         seed=cfg.seed if seed is None else seed)
    return run_drive(city, out, config, gnss=cfg.gnss, pano_height_px=cfg.pano_height_px, overwrite=True,
                     progress=cfg.progress)


def validation_seeds(cfg: DemoConfig) -> list[int]:
    """The calibration walks' seeds: the ones after the drive's, one per --calibration-walks."""
    return [cfg.seed + 1 + k for k in range(cfg.calibration_walks)]


def calibrate_model(model: Path, tiles: Path, city: Path, out: Path, cfg: DemoConfig) -> Path:
    """The validation walks (validation_seeds: other routes and GNSS histories in the held-out city;
    same-city, so the optimistic case of calibration) under out/validation_drives/, then
    crossview-localize --calibrate on them pooled: one walk's covariance does not carry to the next,
    several walks' does better (crossview-walks measures it). covariance.json beside the model
    (returned); the report in out/calibration.txt."""
    bags = [make_drive(city, out / "validation_drives" / f"seed{seed}", cfg,
                       duration_s=max(cfg.drive_s, MIN_VALIDATION_S), seed=seed) for seed in validation_seeds(cfg)]
    with open(out / "calibration.txt", "w") as report:
        # with the heading always: the yaw variance is calibrated too, whatever the replay then runs
        return run_calibration(model, tiles, bags, report=report, heading=True, settings=track_settings(cfg))


def ekf_config_sha256() -> str | None:
    """The EKF set-up the replay's fused track is computed with (an edit re-evaluates the replay)."""
    path = find_ekf_config()
    return sha256_file(path) if path is not None else None


def track_settings(cfg: DemoConfig) -> dict[str, Any]:
    """The track's motion model for a driving platform (the defaults are a walker's): localizer settings."""
    return {"track_speed_mps": DRIVE_TRACK_SPEED_MPS} if cfg.mode == "drive" else {}


def node_args(cfg: DemoConfig) -> list[str]:
    """ROS arguments of the replay's localize_node: the heading, the track's settings, then --node-arg."""
    track = [arg for key, value in track_settings(cfg).items() for arg in ("-p", f"{key}:={value!r}")]
    return (["-p", "heading:=true"] if cfg.heading else []) + track + list(cfg.node_args)
