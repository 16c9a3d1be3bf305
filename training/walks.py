"""crossview-walks: one exported model evaluated over many walks in held-out cities, in one pooled table.

    crossview-walks --model MODEL_DIR [--work walks] [--city-seeds 200,201] [--walks 4] [--modes walk,drive]
                    [--gnss urban,uniform] [--duration-s 90] [--calibration-walks 4] [--fault-m 250]
                    [--json OUT.json] [--set KEY=VALUE ...]

What it does (the issue's procedure, so that no single lucky walk stands for the model):

  1 cities     crossview-sim city: one held-out city per --city-seeds seed, all at --lat/--lon, so
               their tiles overlap in coordinates and differ in imagery (the seeds must not be
               the seeds of the model's training cities)
  2 tiles      crossview-tiles build + encode: each city's orthophoto cut at the model's tile size
               (--tile-px pixels, the demo's 640) and encoded with the model
  3 walks      crossview-sim drive: per city and receiver (--gnss), --walks test walks (seeds 0,
               1, ...) and --calibration-walks calibration walks (seeds 1000, 1001, ...: other
               routes, never a test walk), the modes taken in turn from --modes; a receiver's
               walks and the other receiver's follow the same routes (paired)
  4 calibrate  per receiver, crossview-localize --calibrate --heading on its calibration walks of
               every city pooled (each in its own city's tiles), on a copy of the model under
               --work (the model folder given is never written; the fit starts uncalibrated)
  5 localize   every test walk as a stream in its own city's tiles with the receiver's calibrated
               covariance, heading on, twice: with odometry (odometry=true) and without
               (odometry=false); once in the NEXT city's tiles (same coordinates, other imagery):
               the mismatch check; and once in its own city's tiles with every fix moved --fault-m
               (a receiver fault its reported sigma hides; the direction that keeps most of the walk
               on the tiles, so the views meet another place of the same city): the GNSS fault
               check. In both checks every fix is wrong and none should claim sigma < 10 m
  6 fuse       every test walk localized with odometry in its own city: the fused track of the
               replay (crossview_ros.fusion, the map-frame EKF of config/ekf.yaml) fed the bag's
               odometry twist and our accepted estimates as the node publishes them (pose in the
               datum's ENU plane with its covariance, heading), read at the panorama stamps

then three tables: pooled per receiver and odometry setting (walks, frames, published %, median
and p95 error of published fixes; the fused track's p95 on the frames we published, like for like
with ours, and on how many walks it is not above ours; the same over all frames, where the gaps
between our fixes are dead-reckoned on wheel odometry; > 25 m % of published fixes, and of every positioned
frame, gated ones too (what odometry does to the track itself, which the gates hide); share of d^2 < 5.99
pooled and on the worst walk,
heading flips > 90 deg and yaw d^2 < 3.84 among published headings, share of published fixes whose
error exceeds their protection level and the count published without one, and the reasons
counted), the mismatch and GNSS fault checks, and one line per walk. --json writes all of it (every walk's
crossview-localize summary included).

Drives ('drive' mode) get the demo's car track speed (track_speed_mps 12); --set KEY=VALUE
applies LocalizerConfig keys (crossview-localize --set) to every run, calibration included; the
tool itself sets tile_set, model, covariance_file and odometry.

Reuse: cities, tile sets, bags and calibrations are kept under --work (folder names carry a
fingerprint of their settings) and reused by a later run with the same settings; a killed run
resumes where it stopped (localizing is redone: it is what is measured). --recalibrate fits the
calibrations again (after a change to the localizer).

Exit codes: 0 done; 2 bad arguments (one line says which); 1 a step failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crossview_ros import fusion, geo
from crossview_ros.atomic import write_json_atomic
from crossview_ros.estimate import LocalizerError
from crossview_ros.index import DescriptorError
from crossview_ros.localize_eval import BACKGROUND_OFFSET_M, evaluate_bags
from crossview_ros.localize_frames import LocalizeInputError
from crossview_ros.model_meta import EngineError, ModelMeta, load_model_meta
from crossview_ros.replay_evaluation import default_fusion_config
from crossview_ros.tiles import TileSetError
from crossview_training.demo_config import TEST_CITY_LAT_DEG, TEST_CITY_LON_DEG
from crossview_training.demo_stages import canonical
from crossview_ros.sim.cameras import PANORAMA_RIG, RIGS, add_cameras
from crossview_training.walks_build import (
    CALIBRATION_SEED_BASE, DEFAULT_SUN, Calibration, WalkSpec, bag_path, bag_topics, camera_bag_path, city_config,
    ensure_bag, ensure_calibration, ensure_city, ensure_tiles, gnss_fix_count, panorama_bag_path, run_config,
    with_fix_sigma_scale,
)
from crossview_training.walks_table import (
    WalkResult, compare_runs, fused_walk, pooled_tables, print_comparison, print_mismatch, print_pooled, print_walks,
    walk_result,
)

PROG = "crossview-walks"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
OWNED_KEYS = ("tile_set", "model", "covariance_file", "odometry")  # set per run by crossview-walks
MODES, RECEIVERS = ("walk", "drive"), ("urban", "uniform")

log = logging.getLogger("crossview_walks")


class UsageError(ValueError):
    """Bad arguments (exit code 2)."""


@dataclass
class WalksConfig:
    """Every setting of a run (one field per flag)."""

    model: Path
    work: Path = Path("walks")
    city_seeds: tuple[int, ...] = (200, 201)
    lat_deg: float = TEST_CITY_LAT_DEG
    lon_deg: float = TEST_CITY_LON_DEG
    city_m: float = 600.0
    gsd_m: float = 0.15
    walks: int = 4  # test walks per city and receiver
    calibration_walks: int = 4  # per city and receiver: 8 walks per calibration with the two default cities
    modes: tuple[str, ...] = MODES
    receivers: tuple[str, ...] = RECEIVERS
    duration_s: float = 90.0
    rate_hz: float = 2.0
    pano_height_px: int = 320
    tile_px: int = 640
    aerial_sun: tuple[float, float] = DEFAULT_SUN  # the held-out cities' survey sun (azimuth, elevation) deg
    camera: str = PANORAMA_RIG  # the walks seen by this rig (crossview_ros.sim.cameras.RIGS)
    settings: dict[str, Any] = field(default_factory=dict)  # --set
    fix_sigma_scale: float | None = None  # --fix-sigma-scale: the test runs' factor on the fixes' sigma
    fault_m: float = BACKGROUND_OFFSET_M  # --fault-m: the GNSS fault check moves every fix this far (0: off)
    json_out: Path | None = None
    recalibrate: bool = False
    progress: bool = True

    def drive(self) -> dict[str, Any]:
        """The settings every bag shares (part of its fingerprint)."""
        return {"duration_s": self.duration_s, "rate_hz": self.rate_hz, "pano_height_px": self.pano_height_px}

    def validate(self) -> ModelMeta:
        """UsageError naming the first bad setting; returns the model's metadata."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        def positive(name: str, value: float, lo: float, hi: float = math.inf) -> None:
            need(math.isfinite(value) and lo <= value <= hi, f"--{name} must be in {lo:g}..{hi:g}, got {value:g}")

        need(len(self.city_seeds) >= 1 and len(set(self.city_seeds)) == len(self.city_seeds),
             f"--city-seeds must list distinct seeds, got {list(self.city_seeds)}")
        try:
            geo.check_latlon(self.lat_deg, self.lon_deg)
        except geo.GeoError as exc:
            raise UsageError(f"--lat/--lon: {exc}") from None
        positive("gsd-m", self.gsd_m, 0.02, 2.0)
        positive("duration-s", self.duration_s, 2.0, 3600.0)
        positive("rate-hz", self.rate_hz, 0.1, 30.0)
        need(1 <= self.walks < CALIBRATION_SEED_BASE, f"--walks must be 1..{CALIBRATION_SEED_BASE - 1}, got {self.walks}")
        need(self.calibration_walks >= 1, f"--calibration-walks must be >= 1, got {self.calibration_walks}")
        need(bool(self.modes) and set(self.modes) <= set(MODES), f"--modes takes walk,drive; got {','.join(self.modes)}")
        need(bool(self.receivers) and set(self.receivers) <= set(RECEIVERS),
             f"--gnss takes urban,uniform; got {','.join(self.receivers)}")
        need(self.pano_height_px >= 16 and self.pano_height_px % 2 == 0,
             f"--pano-height-px must be an even number >= 16, got {self.pano_height_px}")
        need(self.tile_px >= 16, f"--tile-px must be >= 16, got {self.tile_px}")
        need(self.camera in RIGS, f"--camera takes one of {', '.join(RIGS)}; got {self.camera}")
        positive("fault-m", self.fault_m, 0.0, 10_000.0)
        if self.fix_sigma_scale is not None:
            positive("fix-sigma-scale", self.fix_sigma_scale, 1e-3, 1e3)
        owned = sorted(set(self.settings) & set(OWNED_KEYS))
        need(not owned, f"--set {', '.join(owned)}: set by {PROG} itself (each run's tiles, the calibrated "
                        "model and covariance, odometry on and off)")
        try:
            run_config(self.settings, model=Path(), tiles=Path(), mode="walk")
        except LocalizeInputError as exc:
            raise UsageError(f"--set: {exc}") from None
        need(not self.work.exists() or self.work.is_dir(), f"--work {self.work} exists and is not a folder")
        try:
            meta = load_model_meta(self.model)
        except (EngineError, OSError) as exc:
            raise UsageError(f"--model {self.model}: {exc}") from None
        tile_m = float(meta.tile_size_m or 72.96)
        need(math.isfinite(self.city_m) and self.city_m >= 2.5 * tile_m,
             f"--city-m must be >= 2.5 x the model's tile size ({2.5 * tile_m:g} m), got {self.city_m:g}")
        return meta


def walk_specs(cfg: WalksConfig, cities: dict[int, Path]) -> list[WalkSpec]:
    """Test walks (seeds 0..) and calibration walks (seeds 1000..) per receiver and city, modes in turn."""
    specs = []
    for receiver in cfg.receivers:
        for seed, city in cities.items():
            seeds = [*range(cfg.walks), *range(CALIBRATION_SEED_BASE, CALIBRATION_SEED_BASE + cfg.calibration_walks)]
            for s in seeds:
                mode = cfg.modes[(s % CALIBRATION_SEED_BASE) % len(cfg.modes)]
                specs.append(WalkSpec(seed, s, mode, receiver, bag_path(cfg.work, city, s, mode, receiver, cfg.drive())))
    return specs


def localize_receiver(cfg: WalksConfig, receiver: str, tests: Sequence[WalkSpec], tiles: dict[int, Path],
                      calibration: Calibration, fusion_config: fusion.FusionConfig) -> list[WalkResult]:
    """The receiver's test walks with and without odometry in their city's tiles, and with odometry in
    the next city's tiles (the mismatch check, when there are two cities or more) and in their own with
    every fix moved cfg.fault_m (the GNSS fault check, when it is > 0); the walks as recorded, with
    odometry, get their fused track."""
    seeds = list(tiles)
    covariance_file = (calibration.covariance_file if cfg.fix_sigma_scale is None
                       else with_fix_sigma_scale(calibration, cfg.fix_sigma_scale))
    runs = []
    for walk in tests:
        other = seeds[(seeds.index(walk.city_seed) + 1) % len(seeds)]
        runs += [(walk, walk.city_seed, True, 0.0), (walk, walk.city_seed, False, 0.0)]
        if other != walk.city_seed:
            runs.append((walk, other, True, 0.0))
        if cfg.fault_m > 0:
            runs.append((walk, walk.city_seed, True, cfg.fault_m))
    results = []
    for walk, tiles_seed, odometry, moved_m in tqdm(runs, desc=f"localize {receiver}", unit="walk",
                                                    disable=not cfg.progress):
        config = run_config(cfg.settings, model=calibration.model, tiles=tiles[tiles_seed], mode=walk.mode,
                            odometry=odometry, covariance_file=covariance_file)
        ev = evaluate_bags([walk.path], [config], topics=bag_topics(walk.path), move_fixes_m=moved_m)
        results.append(walk_result(ev.frames, ev.fixes, ev.estimates, config.heading, city_seed=walk.city_seed,
                                   walk_seed=walk.walk_seed, mode=walk.mode, receiver=receiver, odometry=odometry,
                                   tiles_city_seed=tiles_seed, fix_offset_m=moved_m))
        if odometry and results[-1].own:
            fused_walk(walk.path, results[-1], ev.estimates, fusion_config)
    return results


def build_inputs(cfg: WalksConfig, meta: ModelMeta) -> tuple[dict[int, Path], list[WalkSpec]]:
    """Cities, their encoded tile sets and every walk's bag (each reused when already built)."""
    cities, tiles = {}, {}
    for seed in tqdm(cfg.city_seeds, desc="cities + tiles", unit="city", disable=not cfg.progress):
        cities[seed] = ensure_city(cfg.work, city_config(seed, cfg.lat_deg, cfg.lon_deg, cfg.city_m, cfg.gsd_m),
                                   cfg.aerial_sun)
        tiles[seed] = ensure_tiles(cfg.work, cities[seed], meta, cfg.tile_px, progress=False)
    specs = walk_specs(cfg, cities)
    todo = [s for s in specs if not s.path.is_dir()]
    log.info("%d walks of %g s (%d to simulate)", len(specs), cfg.duration_s, len(todo))
    for spec in tqdm(todo, desc="simulate walks", unit="walk", disable=not cfg.progress):
        ensure_bag(cities[spec.city_seed], spec, cfg.drive())
    if cfg.camera != PANORAMA_RIG:
        specs = [dataclasses.replace(s, path=camera_bag_path(s.path, cfg.camera)) for s in specs]
        todo = [s for s in specs if not s.path.is_dir()]
        for spec in tqdm(todo, desc=f"render {cfg.camera} views", unit="walk", disable=not cfg.progress):
            add_cameras(panorama_bag_path(spec.path), spec.path, cfg.camera)
    return tiles, specs


def usable(specs: Sequence[WalkSpec]) -> tuple[list[WalkSpec], list[WalkSpec]]:
    """The walks that can be localized, and those left out: a receiver that published no fix the whole
    walk long (a short urban walk inside a dropout) leaves nothing to localize."""
    left_out = [s for s in specs if gnss_fix_count(s.path) == 0]
    for s in left_out:
        log.warning("walk %s left out: its receiver published no fix", s.path)
    return [s for s in specs if s not in left_out], left_out


def run_walks(cfg: WalksConfig) -> dict[str, Any]:
    """Everything in the module docstring; returns the report (what --json writes)."""
    started = time.monotonic()
    meta = cfg.validate()
    cfg.work.mkdir(parents=True, exist_ok=True)
    tiles, specs = build_inputs(cfg, meta)
    specs, left_out = usable(specs)
    results: list[WalkResult] = []
    calibrations = {}
    fusion_config = default_fusion_config()  # config/ekf.yaml's map-frame filter, as the replay uses
    for receiver in cfg.receivers:
        calib = [(s, tiles[s.city_seed]) for s in specs if s.receiver == receiver and s.calibration]
        if not calib:
            raise UsageError(f"no calibration walk of the {receiver} receiver has a GNSS fix: raise --duration-s "
                             "or --calibration-walks")
        log.info("calibrating %s on %d walks", receiver, len(calib))
        calibrations[receiver] = ensure_calibration(cfg.work, meta, receiver, calib, cfg.settings,
                                                    rebuild=cfg.recalibrate)
        tests = [s for s in specs if s.receiver == receiver and not s.calibration]
        results += localize_receiver(cfg, receiver, tests, tiles, calibrations[receiver], fusion_config)
    heading = run_config(cfg.settings, model=Path(), tiles=Path(), mode="walk").heading
    return {
        "model": {"path": str(cfg.model), "name": meta.name, "model_hash": meta.model_hash},
        "settings": json.loads(canonical(dataclasses.asdict(cfg))),
        "calibration": {r: {"covariance_file": str(c.covariance_file), "fix_sigma_scale": c.record["fix_sigma_scale"],
                            "fit": c.record["fit"], "summary": c.record["summary"], "walks": c.record["walks"]}
                        for r, c in calibrations.items()},
        "fusion": fusion_config.describe(),
        "pooled": pooled_tables(results, cfg.receivers, heading),
        "walks": [{**r.ids(), "summary": r.summary, "fused": r.fused} for r in results],
        "left_out": [{"city_seed": w.city_seed, "walk_seed": w.walk_seed, "mode": w.mode, "receiver": w.receiver,
                      "bag": str(w.path), "why": "no GNSS fix"} for w in left_out],
        "wall_s": time.monotonic() - started,
    }


def print_report(report: dict[str, Any]) -> None:
    """The calibrations, the pooled table, the mismatch check and the per-walk table."""
    for receiver, c in report["calibration"].items():
        s = c["summary"]
        print(f"calibration {receiver}: {len(c['walks'])} walks, {s['frames']} frames, fix sigma scale "
              f"{c['fix_sigma_scale']:.3f}, {100 * c['fit']['share_d2_below_chi2']:.1f} % of d^2 < 5.99 on them; "
              f"{c['covariance_file']}")
    if report["settings"].get("fix_sigma_scale") is not None:
        print(f"test walks localized with the fixes' reported sigma x {report['settings']['fix_sigma_scale']:g} "
              "(--fix-sigma-scale), not the calibrated factor")
    print(f"\n{PROG}: model {report['model']['name']} ({report['model']['path']}), pooled over test walks")
    print_pooled(report["pooled"])
    print(f"fused track: {report['fusion']}")
    print("\nmismatch check: test walks localized in another city's tiles at the same coordinates (with odometry)")
    print_mismatch(report["pooled"])
    fault_m = report["settings"].get("fault_m", 0.0)
    print()
    if fault_m > 0:
        print(f"GNSS fault check: test walks localized in their own city's tiles with every fix moved {fault_m:g} m "
              "(with odometry)")
    print_mismatch(report["pooled"], key="fault")
    print("\nper walk:")
    print_walks(report["walks"])
    for w in report["left_out"]:
        print(f"left out: {w['receiver']} {w['mode']} seed {w['walk_seed']} in city {w['city_seed']} ({w['why']})")
    print(f"\nwall time {report['wall_s'] / 60:.1f} min")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """--set KEY=VALUE values: JSON where it parses (numbers, true/false), else the string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def csv_of(kind: type, text: str, flag: str) -> tuple[Any, ...]:
    """A comma-separated flag value as a tuple of `kind`."""
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated values, got {text!r}") from None


def sun_of(text: str) -> tuple[float, float]:
    """--aerial-sun AZ,EL in degrees, elevation in (0, 90]."""
    values = csv_of(float, text, "--aerial-sun")
    if len(values) != 2 or not 0.0 < values[1] <= 90.0:
        raise UsageError(f"--aerial-sun takes AZIMUTH,ELEVATION in degrees (elevation 0-90), got {text!r}")
    return values[0], values[1]


def build_parser() -> argparse.ArgumentParser:
    d = WalksConfig(model=Path())
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="exported model folder (crossview-export); only read; required "
                                                "unless --compare")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("A.json", "B.json"),
                   help="instead of running: compare two runs' --json reports (published and > 25 m shares per "
                        "receiver, B - A, with a 95 %% interval from resampling the walks both hold)")
    p.add_argument("--work", type=Path, default=d.work, help=f"folder for cities, tiles, bags, calibrations "
                                                             f"(default ./{d.work}); reused by later runs")
    g = p.add_argument_group("cities")
    g.add_argument("--city-seeds", default="200,201", help="held-out city seeds, comma-separated (default 200,201); "
                   "not seeds the model trained on (crossview-demo trains on 10 x --seed + 1..4)")
    g.add_argument("--lat", type=float, default=d.lat_deg, help=f"every city's centre latitude (default {d.lat_deg})")
    g.add_argument("--lon", type=float, default=d.lon_deg, help=f"every city's centre longitude (default {d.lon_deg})")
    g.add_argument("--city-m", type=float, default=d.city_m, help=f"side of each city, m (default {d.city_m:g})")
    g.add_argument("--gsd-m", type=float, default=d.gsd_m, help=f"orthophoto m/px (default {d.gsd_m:g}, the demo's)")
    g.add_argument("--tile-px", type=int, default=d.tile_px, help=f"tile image side, px (default {d.tile_px})")
    g.add_argument("--aerial-sun", default=",".join(f"{v:g}" for v in d.aerial_sun), metavar="AZ,EL",
                   help="the held-out cities' survey sun, azimuth,elevation deg (default %(default)s); the walks "
                        "stay the same, so a run per sun compares one model under two surveys")
    g = p.add_argument_group("walks")
    g.add_argument("--walks", type=int, default=d.walks, help=f"test walks per city and receiver (default {d.walks})")
    g.add_argument("--calibration-walks", type=int, default=d.calibration_walks,
                   help=f"calibration walks per city and receiver, pooled over the cities into one calibration per "
                        f"receiver (default {d.calibration_walks})")
    g.add_argument("--modes", default=",".join(d.modes), help="walk and/or drive, taken in turn (default walk,drive)")
    g.add_argument("--gnss", default=",".join(d.receivers), help="receivers: urban (street-canyon bias) and/or "
                   "uniform (VIGOR's +-100 m) (default urban,uniform)")
    g.add_argument("--duration-s", type=float, default=d.duration_s, help=f"each walk's length, s (default "
                                                                           f"{d.duration_s:g})")
    g.add_argument("--rate-hz", type=float, default=d.rate_hz, help=f"panoramas per second (default {d.rate_hz:g})")
    g.add_argument("--pano-height-px", type=int, default=d.pano_height_px,
                   help=f"panorama height; width is twice (default {d.pano_height_px}, the demo's)")
    g.add_argument("--camera", default=d.camera, choices=RIGS,
                   help="what the walks see: the 360 panorama (default), or the views of a rig rendered from it "
                        "with CameraInfo (crossview_ros.sim.cameras: forward90 a 90 deg forward camera, rig4 four "
                        "100 deg cameras, fisheye one 190 deg fisheye), localized as --cameras captures")
    g = p.add_argument_group("localizing")
    g.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="LocalizerConfig settings for every run (crossview-localize --set), e.g. min_mode_mass=0.9")
    g.add_argument("--recalibrate", action="store_true", help="fit the calibrations again instead of reusing them")
    g.add_argument("--fix-sigma-scale", type=float, default=None, metavar="S",
                   help="localize the test walks with the fixes' reported sigma x S instead of the factor calibration "
                        "fitted (1: the receiver's own sigma, as an uncalibrated node takes it); the rest of the "
                        "calibration is kept")
    g.add_argument("--fault-m", type=float, default=d.fault_m, metavar="M",
                   help=f"the GNSS fault check: each test walk localized once more with every fix moved M m, its "
                        f"reported sigma unchanged; no published fix should claim sigma < 10 m (default {d.fault_m:g}, "
                        "the calibration's imagery background offset; 0: off)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write every figure as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> WalksConfig:
    return WalksConfig(
        model=args.model, work=args.work, city_seeds=csv_of(int, args.city_seeds, "--city-seeds"), lat_deg=args.lat,
        lon_deg=args.lon, city_m=args.city_m, gsd_m=args.gsd_m, walks=args.walks,
        calibration_walks=args.calibration_walks, modes=csv_of(str, args.modes, "--modes"),
        receivers=csv_of(str, args.gnss, "--gnss"), duration_s=args.duration_s, rate_hz=args.rate_hz,
        pano_height_px=args.pano_height_px, tile_px=args.tile_px,
        aerial_sun=sun_of(args.aerial_sun), camera=args.camera, settings=parse_set(args.set),
        fix_sigma_scale=args.fix_sigma_scale, fault_m=args.fault_m,
        json_out=args.json, recalibrate=args.recalibrate, progress=not args.no_progress)


def compare_reports(a: Path, b: Path) -> int:
    """--compare: the published and > 25 m shares of two reports and their differences' intervals; 2 when unreadable."""
    try:
        reports = [json.loads(Path(path).read_text()) for path in (a, b)]
        rows = compare_runs(*reports)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{PROG}: error: --compare needs two crossview-walks --json reports: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not rows:
        print(f"{PROG}: error: {a} and {b} hold no test walk in common", file=sys.stderr)
        return EXIT_USAGE
    print_comparison(rows, (str(a), str(b)))
    return EXIT_OK


EXPECTED_FAILURES = (  # errors of the steps that explain themselves (no traceback needed)
    LocalizeInputError, LocalizerError, EngineError, TileSetError, DescriptorError, geo.GeoError, FileNotFoundError,
    FileExistsError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-walks; returns the exit code (module docstring)."""
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.compare:
        return compare_reports(*args.compare)
    quiet = logging.getLogger("crossview_ros.localizer")  # gated frames: counted in the table
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        quiet.setLevel(level)  # main() called in-process (tests) leaves the localizer's logging as it was


def _run(args: argparse.Namespace) -> int:
    """main() after the arguments are parsed and logging set up."""
    try:
        if args.model is None:
            raise UsageError("--model is required (or --compare A.json B.json)")
        cfg = config_from_args(args)
        report = run_walks(cfg)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a step failed: say which; what is built is kept
        if not isinstance(exc, EXPECTED_FAILURES):
            log.exception("unexpected failure")
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print_report(report)
    if cfg.json_out is not None:
        write_json_atomic(cfg.json_out, report)
        print(f"wrote {cfg.json_out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
