"""crossview-walks' inputs, each built once under --work and reused: the held-out cities, their tile
sets encoded with the model, the walks' bags, and one covariance calibration per receiver.

Every artefact is written atomically (a staging folder renamed onto its place, or the project
step's own resumable writer), and its folder name carries a fingerprint of what it was built from,
so a finished one is reused as it is and a changed setting builds a new one beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crossview_ros.atomic import staging_dir, write_json_atomic
from crossview_ros.bag.rig import RIG_SIDECAR, load_rig_file
from crossview_ros.bag.topics import TopicMap
from crossview_ros.bag.writer import TOPIC_GNSS
from crossview_ros.covariance import CALIBRATION_VERSION, load_covariance, save_covariance
from crossview_ros.localize_eval import evaluate_bags, make_config, print_report
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.model_meta import ModelMeta
from crossview_ros.sim.cameras import camera_height_m
from crossview_ros.sim.city import CityConfig
from crossview_ros.sim.cli import run_city, run_drive
from crossview_ros.sim.drive import DriveConfig
from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set, min_inside_for
from crossview_ros.tiles_cli import encode_tile_set
from crossview_training.demo_config import DRIVE_TRACK_SPEED_MPS
from crossview_training.demo_stages import canonical, fingerprint

log = logging.getLogger("crossview_walks")

CALIBRATION_SEED_BASE = 1000  # calibration walk j has seed 1000 + j; test walks 0.. stay below it


@dataclass(frozen=True)
class WalkSpec:
    """One simulated walk (or drive): where, how, with which receiver; its bag lives at `path`."""

    city_seed: int
    walk_seed: int
    mode: str  # walk | drive
    receiver: str  # urban | uniform
    path: Path

    @property
    def calibration(self) -> bool:
        return self.walk_seed >= CALIBRATION_SEED_BASE


@dataclass(frozen=True)
class Calibration:
    """A receiver's calibrated copy of the model: its covariance.json and what the fit said."""

    receiver: str
    model: Path  # the copy (the user's model folder is never written)
    covariance_file: Path
    record: dict[str, Any]  # calibration.json: walks, settings, fix sigma scale, fit, summary


def city_config(seed: int, lat_deg: float, lon_deg: float, size_m: float, gsd_m: float) -> CityConfig:
    """A held-out city (crossview-sim city): every city shares the datum and differs by its seed."""
    return CityConfig(datum_lat_deg=lat_deg, datum_lon_deg=lon_deg, size_m=size_m, gsd_m=gsd_m, seed=seed)


DEFAULT_SUN = (150.0, 55.0)  # crossview-sim city's survey sun (azimuth, elevation) deg
SURVEY_MARK = "-survey"  # city folder suffix of a survey under another sun: its walks are the default's


def city_dir(work: Path, config: CityConfig, sun: tuple[float, float] = DEFAULT_SUN) -> Path:
    name = f"seed{config.seed}-{fingerprint(config.to_dict())[:8]}"
    if tuple(sun) != DEFAULT_SUN:
        name += f"{SURVEY_MARK}{sun[0]:g}-{sun[1]:g}"
    return work / "cities" / name


def ensure_city(work: Path, config: CityConfig, sun: tuple[float, float] = DEFAULT_SUN) -> Path:
    """The city's orthophoto.tif (surveyed under `sun`) and city.json under work/cities/ (built in a
    staging folder, then renamed)."""
    out = city_dir(work, config, sun)
    if (out / "city.json").is_file() and (out / "orthophoto.tif").is_file():
        return out
    with staging_dir(out) as tmp:
        run_city(tmp, config, sun_azimuth_deg=sun[0], sun_elevation_deg=sun[1], progress=False)
        if out.exists():  # an incomplete folder of another writer: replace it
            shutil.rmtree(out)
        tmp.rename(out)
    return out


def ensure_tiles(work: Path, city: Path, model: ModelMeta, tile_px: int, *, progress: bool) -> Path:
    """The city's tile set cut at the model's tile size and encoded with it (crossview-tiles build +
    encode; both resume an interrupted run and skip finished work)."""
    tile_size_m = float(model.tile_size_m or 72.96)
    min_inside = min_inside_for(model.matching)  # edge tiles where the family can use them
    key = fingerprint({"city": city.name, "tile_size_m": tile_size_m, "tile_px": tile_px, "min_inside": min_inside})[:8]
    out = work / "models" / model_key(model) / "tiles" / f"{city.name}-{key}"
    if not is_tile_set(out):
        build_tile_set([city / "orthophoto.tif"], out, TilingConfig(tile_size_m=tile_size_m, tile_px=tile_px,
                                                                    min_inside=min_inside), progress=progress)
    encode_tile_set(out, model.path, progress=progress)
    return out


def is_tile_set(path: Path) -> bool:
    try:
        TileSet.open(path)
    except Exception:  # missing or incomplete: build (resumes what a killed build left)
        return False
    return True


def model_key(model: ModelMeta) -> str:
    """Per-model folder name: the model hash's first 12 hex digits."""
    return model.model_hash.split(":")[-1][:12]


def bag_path(work: Path, city: Path, walk_seed: int, mode: str, receiver: str, drive: Mapping[str, Any]) -> Path:
    """Where a walk's bag lives: under its city, named by receiver, mode, seed and a fingerprint of
    the drive's settings (duration, rate, panorama height). A walk sees the streets, not the aerial
    survey: every survey of one city shares its walks."""
    key = fingerprint(dict(drive))[:8]
    return work / "bags" / city.name.split(SURVEY_MARK)[0] / f"{receiver}-{mode}-seed{walk_seed}-{key}"


CAMERA_MARK = "-cameras-"  # a walk's bag with a rig's views: its panorama bag's name + this + the rig


def camera_bag_path(bag: Path, rig: str) -> Path:
    """Where the walk's bag with the rig's views lives: beside its panorama bag."""
    return bag.with_name(f"{bag.name}{CAMERA_MARK}{rig}")


def panorama_bag_path(bag: Path) -> Path:
    """The panorama bag a camera bag was rendered from (itself when it is one)."""
    return bag.with_name(bag.name.split(CAMERA_MARK)[0])


def bag_topics(bag: Path) -> TopicMap | None:
    """How to read a walk's bag: a camera bag through its rig file, a panorama bag as the simulator wrote it."""
    if CAMERA_MARK not in bag.name:
        return None
    return TopicMap(cameras=load_rig_file(bag / RIG_SIDECAR))


def ensure_bag(city: Path, walk: WalkSpec, drive: Mapping[str, Any]) -> Path:
    """crossview-sim drive: the walk's MCAP bag (written atomically by the bag writer; reused when there)."""
    if walk.path.is_dir():
        return walk.path
    config = DriveConfig(mode=walk.mode, rate_hz=float(drive["rate_hz"]), duration_s=float(drive["duration_s"]),
                         seed=walk.walk_seed)
    return run_drive(city, walk.path, config, gnss=walk.receiver, pano_height_px=int(drive["pano_height_px"]),
                     progress=False)


def gnss_fix_count(bag: Path) -> int:
    """GNSS fixes in a bag (from its metadata.yaml): a short urban walk inside a dropout has none, and
    a walk without a single fix cannot be localized."""
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return sum(int(t["message_count"]) for t in meta["topics_with_message_count"]
               if t["topic_metadata"]["name"] == TOPIC_GNSS)


def run_config(settings: Mapping[str, Any], *, model: Path, tiles: Path, mode: str, odometry: bool = True,
               covariance_file: Path | None = None) -> LocalizerConfig:
    """A walk's localizer settings: heading on, the mode's 360° camera height (the simulator's), a car's track
    speed for drives, the user's --set, then
    the artefacts and the odometry switch (which crossview-walks owns)."""
    values: dict[str, Any] = {"heading": True, "camera_height_m": camera_height_m(mode)}
    if mode == "drive":
        values["track_speed_mps"] = DRIVE_TRACK_SPEED_MPS
    values.update(settings)
    values.update({"tile_set": str(tiles), "model": str(model), "odometry": odometry})
    if covariance_file is not None:
        values["covariance_file"] = str(covariance_file)
    return make_config(values)


def ensure_calibration(work: Path, model: ModelMeta, receiver: str, walks: Sequence[tuple[WalkSpec, Path]],
                       settings: Mapping[str, Any], *, rebuild: bool = False) -> Calibration:
    """crossview-localize --bag ... --calibrate --heading on the receiver's calibration walks pooled
    (each in its own city's tiles), on a copy of the model without its covariance.json: the user's
    model folder is never written, and the fit starts from the uncalibrated defaults."""
    params = {"model_hash": model.model_hash, "receiver": receiver, "settings": dict(settings),
              "calibration_version": CALIBRATION_VERSION,
              "camera_height_m": {w.mode: camera_height_m(w.mode) for w, _ in walks},
              "walks": [[str(w.path), str(tiles)] for w, tiles in walks]}
    out = work / "models" / model_key(model) / f"calibration-{receiver}-{fingerprint(params)[:8]}"
    if (out / "calibration.json").is_file() and not rebuild:
        return load_calibration(out, receiver)
    with staging_dir(out) as tmp:
        copy = tmp / "model"
        shutil.copytree(model.path, copy)
        (copy / "covariance.json").unlink(missing_ok=True)
        configs = [run_config(settings, model=copy, tiles=tiles, mode=w.mode) for w, tiles in walks]
        evaluation = evaluate_bags([w.path for w, _ in walks], configs, calibrate=True,
                                   topics=bag_topics(walks[0][0].path))
        with open(tmp / "calibration.txt", "w") as report:
            print_report(evaluation, report)
        fit = dict(evaluation.calibration["fit"])
        write_json_atomic(tmp / "calibration.json", {
            "params": json.loads(canonical(params)), "fix_sigma_scale": evaluation.fix_sigma_scale, "fit": fit,
            "summary": evaluation.summary, "walks": [{"city": w.path.parent.name, "seed": w.walk_seed,
                                                      "mode": w.mode} for w, _ in walks]})
        if out.exists():  # --recalibrate: replace the earlier calibration
            shutil.rmtree(out)
        tmp.rename(out)
    return load_calibration(out, receiver)


def load_calibration(out: Path, receiver: str) -> Calibration:
    return Calibration(receiver, out / "model", out / "model" / "covariance.json",
                       json.loads((out / "calibration.json").read_text()))


def with_fix_sigma_scale(calibration: Calibration, scale: float) -> Path:
    """A copy of the calibration's covariance.json with another factor on the fixes' sigma (beside it, named by
    the factor): what the test walks give with a receiver whose covariance was not calibrated."""
    model = load_covariance(calibration.covariance_file)
    path = calibration.covariance_file.with_name(f"covariance-fix-sigma-scale-{scale:g}.json")
    return save_covariance(dataclasses.replace(model, fix_sigma_scale=float(scale)), path,
                           json.loads(calibration.covariance_file.read_text(encoding="utf-8"))["model_hash"])
