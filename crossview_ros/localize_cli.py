"""crossview-localize: localize panoramas against a tile set from the shell, or evaluate in batch.

A thin front to localizer.Localizer. Three ways in:

    crossview-localize --tiles DIR --model DIR pano.jpg [more.jpg ...] --fix LAT,LON[,SIGMA_M]
        every panorama with that fix; prints each Estimate (a table, or --json)
    crossview-localize --tiles DIR --model DIR FOLDER_OR_FILES...        (no --fix)
        panoramas named as in VIGOR (`<prefix>,<lat>,<lon>,.jpg`): the name is the truth, the fix
        is drawn with VIGOR's noisy-GPS protocol (uniform +-100 m per axis); prints error statistics
    crossview-localize --model DIR --tiles DIR --bag BAG [--bag BAG ...] [--topics FILE | --panorama-topic T ...]
        drive bags or a robot's recordings (MCAP or sqlite3) as the streams the node sees, their topics
        mapped (docs/recordings.md); against the truth when the bag has one, else the truth-free figures;
        --cameras FILE: a rig of cameras that are not 360° (a rig file: mounts and topics) instead of panoramas
    crossview-localize --model DIR --vigor ROOT --split cross_test [--limit N] [--tiles DIR]
        the same over a VIGOR-layout split; each city's tile set is --tiles, else ROOT/<City>/.tiles
        (written by crossview-sim); --heading adds heading errors (VIGOR: north in the middle column)

--calibrate (batch modes, with truth) fits the covariance model on the batch and writes
covariance.json beside the model, which later runs load. Exit codes: 0 done (single mode: every
panorama accepted), 1 some panorama rejected (single mode), 2 bad input on the command line (one
line on stderr).

This module is the command line only: the frames come from localize_frames, the batch evaluation
and calibration from localize_eval (run_calibration: the step the demo calls too), the printed
figures from localize_summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crossview_ros import geo
from crossview_ros.bag.topics import FLAGS as TOPIC_FLAGS
from crossview_ros.bag.topics import add_topic_arguments, topic_map_from_args
from crossview_ros.cli_args import join_negative_fix
from crossview_ros.engines import ENGINE_KINDS, EngineError
from crossview_ros.estimate import Fix, LocalizerError
from crossview_ros.index import DescriptorError
from crossview_ros.localize_eval import (
    Evaluation, evaluate, evaluate_bags, make_config, make_localizers, print_report,
)
from crossview_ros.localize_frames import (
    VIGOR_SPLITS, Frame, LocalizeInputError, expand_inputs, named_frames, noisy_fix, read_panorama, vigor_frames,
)
from crossview_ros.localize_summary import TABLE_HEADER, estimate_row
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.replay_errors import ReplayError
from crossview_ros.tiles import TileSetError

log = logging.getLogger(__name__)

PROG = "crossview-localize"
SYNTHETIC_TILES = ".tiles"  # tile set that crossview-sim writes inside each city folder
_DEFAULTS = LocalizerConfig()


# --------------------------------------------------------------------------- arguments


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Correct a GNSS fix by matching 360-degree panoramas against a tile set, or evaluate the "
                    "localizer on a folder of VIGOR-named panoramas or a VIGOR split.",
    )
    p.add_argument("panoramas", nargs="*", metavar="PANORAMA",
                   help="equirectangular JPEG/PNG files (width = 2 x height) or folders of them")
    p.add_argument("--tiles", metavar="DIR", action="append", default=[],
                   help="tile set encoded with --model (crossview-tiles encode); with several --bag, one for all "
                        "or one per bag, in the same order")
    p.add_argument("--model", metavar="DIR", help="exported model folder (crossview-export onnx)")
    p.add_argument("--fix", metavar="LAT,LON[,SIGMA_M]",
                   help="GNSS fix in degrees WGS84 and its horizontal 1-sigma in metres (default "
                        f"{_DEFAULTS.default_fix_sigma_m:g}); without it panorama names must carry the truth")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--heading", action="store_true", help="estimate the camera yaw too")
    p.add_argument("--engine", choices=ENGINE_KINDS, default=None,
                   help="runtime: auto (TensorRT with a GPU, else ONNX Runtime), onnxruntime or tensorrt "
                        f"(default: the config's, {_DEFAULTS.engine})")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads, 0 = its default")
    p.add_argument("--config", metavar="FILE",
                   help="localizer settings, YAML or JSON: a flat mapping of LocalizerConfig keys, or the "
                        "node's parameter file (its localizer keys are used)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one localizer setting (repeatable), e.g. --set fusion=weighted")
    p.add_argument("--vigor", metavar="ROOT", help="evaluate on a VIGOR-layout dataset root")
    p.add_argument("--bag", metavar="BAG", action="append", default=[],
                   help="evaluate on a rosbag2 (folder or .mcap/.db3 file): a drive (crossview-sim drive) or a "
                        "robot's recording, its topics mapped with the flags below; its panoramas, GNSS fixes and "
                        "truth (without truth: the truth-free figures), frame by frame as a stream; repeat it to "
                        "pool several walks (each its own stream), e.g. to --calibrate on walks of several cities")
    p.add_argument("--split", choices=VIGOR_SPLITS, default="cross_test", help="VIGOR split (default cross_test)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N panoramas, evenly spread (0 = all)")
    p.add_argument("--noise-m", type=float, default=100.0,
                   help="batch fixes: error uniform in [-N, N] m on east and north (VIGOR: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch fixes' noise (default 0)")
    p.add_argument("--calibrate", action="store_true",
                   help="batch modes: fit the covariance model on the batch and write covariance.json beside "
                        "the model")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    add_topic_arguments(p)
    return p


def _parse_fix(text: str) -> tuple[float, float, float | None]:
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        values = [float(v) for v in parts]
    except ValueError:
        raise LocalizeInputError(f"--fix must be LAT,LON[,SIGMA_M] (degrees, metres), e.g. 40.7484,-73.9857,15; "
                                 f"got {text!r}") from None
    geo.check_latlon(values[0], values[1])
    sigma = values[2] if len(values) == 3 else None
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise LocalizeInputError(f"--fix sigma must be a finite number of metres >= 0, got {parts[2]!r}")
    return values[0], values[1], sigma


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalizeInputError(f"cannot read --config {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise their own error types
        raise LocalizeInputError(f"--config {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise LocalizeInputError(f"--config {path} must hold a mapping of settings")
    return data


def _config_values(path: Path) -> dict[str, Any]:
    """Flat LocalizerConfig keys (strict), or a ROS parameter file `<node>: ros__parameters: {...}`
    from which the localizer's keys are taken (the node's own keys, topics and QoS, are not ours)."""
    data = _read_mapping(path)
    if len(data) == 1:
        inner = next(iter(data.values()))
        if isinstance(inner, dict) and isinstance(inner.get("ros__parameters"), dict):
            params = inner["ros__parameters"]
            known = set(_DEFAULTS.to_dict())
            ignored = sorted(set(params) - known)
            if ignored:
                log.info("--config %s: node parameters %s are not localizer settings; ignored here", path, ignored)
            return {k: v for k, v in params.items() if k in known}
    return data


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LocalizeInputError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw  # a bare string (paths, mode names)
    return out


def _make_config(args: argparse.Namespace, tile_set: str | None) -> LocalizerConfig:
    values = _config_values(Path(args.config)) if args.config else {}
    values.update(_parse_set(args.set))
    if tile_set is not None:
        values["tile_set"] = tile_set
    if args.model:
        values["model"] = args.model
    if args.engine:
        values["engine"] = args.engine
    if args.threads is not None:
        values["engine_threads"] = args.threads
    if args.heading:
        values["heading"] = True
    return make_config(values)


# --------------------------------------------------------------------------- modes


def _localizers(args: argparse.Namespace, cities: Sequence[str | None], root: Path | None) -> dict[str | None, Localizer]:
    """One Localizer per tile set (per city without --tiles), sharing one engine."""
    sets: dict[str | None, str | None] = {}
    for city in cities:
        if args.tiles or root is None:
            sets[city] = args.tiles  # None: the --config file's tile_set
        else:
            path = root / city / SYNTHETIC_TILES
            if not path.is_dir():
                raise LocalizeInputError(f"no tile set for city {city}: pass --tiles DIR (built and encoded for it) "
                                         f"or write the city with crossview-sim ({path} is missing)")
            sets[city] = str(path)
    return make_localizers({city: _make_config(args, path) for city, path in sets.items()})


def _run_single(args: argparse.Namespace, files: list[Path]) -> int:
    lat, lon, sigma = _parse_fix(args.fix)
    localizer = _localizers(args, [None], None)[None]
    estimates = []
    try:
        for path in files:
            data = read_panorama(path)
            localizer.reset()  # independent queries, not a stream
            now = time.time()
            estimates.append(localizer.localize(data, Fix(lat, lon, now, sigma_m=sigma), now, now_s=now))
    finally:
        localizer.engine.close()
    if args.json:
        doc = {"tiles": str(localizer.tiles.path), "model": str(localizer.meta.path),
               "model_hash": localizer.meta.model_hash, "engine": localizer.engine.name,
               "covariance_calibrated": localizer.covariance.calibrated,
               "estimates": [{"panorama": str(p), **e.to_dict()} for p, e in zip(files, estimates)]}
        print(json.dumps(doc, indent=2))
    else:
        print(TABLE_HEADER)
        for path, e in zip(files, estimates):
            print(estimate_row(path.name, e))
        for path, e in zip(files, estimates):
            if not e.accepted:
                print(f"{path.name}: {e.reason}: {e.message}")
    return 0 if all(e.accepted for e in estimates) else 1


def _run_batch(args: argparse.Namespace, frames: list[Frame], root: Path | None) -> int:
    """Independent panoramas with VIGOR's noisy fixes (seeded), each in its city's tile set."""
    localizers = _localizers(args, list(dict.fromkeys(fr.city for fr in frames)), root)
    rng = np.random.default_rng(args.seed)
    now = time.time()
    fixes = [noisy_fix(fr.truth, rng, args.noise_m, now) for fr in frames]
    return _report(args, evaluate(localizers, frames, fixes, stream=False, calibrate=args.calibrate))


def _run_bag(args: argparse.Namespace, tiles: list[str]) -> int:
    """Drive bags as streams (one --tiles for all, or one per bag), pooled in one summary."""
    tiles = tiles * len(args.bag) if len(tiles) == 1 else tiles
    try:
        topics = topic_map_from_args(args)
    except ReplayError as exc:
        raise LocalizeInputError(str(exc)) from None
    configs = [_make_config(args, t) for t in tiles]
    return _report(args, evaluate_bags([Path(b) for b in args.bag], configs, limit=args.limit,
                                       calibrate=args.calibrate, topics=topics))


def _report(args: argparse.Namespace, ev: Evaluation) -> int:
    """Summary (and calibration) of a batch: printed, or JSON with every estimate."""
    if not args.json:
        print_report(ev)
        return 0
    loc = ev.localizer
    doc = {"model": str(loc.meta.path), "model_hash": loc.meta.model_hash, "engine": loc.engine.name,
           "tiles": {str(c): str(lz.tiles.path) for c, lz in ev.localizers.items()},
           "noise_m": args.noise_m, "seed": args.seed, "summary": ev.summary, "calibration": ev.calibration,
           "estimates": [{"panorama": str(fr.path), "truth_lat_deg": None if fr.truth is None else fr.truth.lat_deg,
                          "truth_lon_deg": None if fr.truth is None else fr.truth.lon_deg, "fix_lat_deg": fx.lat_deg,
                          "fix_lon_deg": fx.lon_deg, **e.to_dict()}
                         for fr, fx, e in zip(ev.frames, ev.fixes, ev.estimates)]}
    print(json.dumps(doc, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-localize; returns the exit code (2 for bad input)."""
    argv = join_negative_fix(list(sys.argv[1:] if argv is None else argv))
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except (LocalizeInputError, TileSetError, EngineError, DescriptorError, LocalizerError, geo.GeoError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """The mode the arguments choose (module docstring), after checking they fit together."""
    if args.limit < 0:
        raise LocalizeInputError(f"--limit must be >= 0, got {args.limit}")
    if not (math.isfinite(args.noise_m) and args.noise_m >= 0):
        raise LocalizeInputError(f"--noise-m must be a finite number of metres >= 0, got {args.noise_m}")
    if args.threads is not None and args.threads < 0:
        raise LocalizeInputError(f"--threads must be >= 0, got {args.threads}")
    mapped = [f for f in ("topics", "cameras", *(v[2:].replace("-", "_") for v in TOPIC_FLAGS.values()))
              if getattr(args, f)]
    if mapped and not args.bag:
        raise LocalizeInputError(f"--{mapped[0].replace('_', '-')} maps a bag's topics: it goes with --bag")
    if args.bag:
        if args.panoramas or args.fix or args.vigor:
            raise LocalizeInputError("--bag evaluates a drive bag; give no panoramas, --fix or --vigor with it")
        if not args.tiles:
            raise LocalizeInputError("--bag needs --tiles DIR (the drive's city, encoded with --model)")
        if len(args.tiles) not in (1, len(args.bag)):
            raise LocalizeInputError(f"{len(args.bag)} --bag need one --tiles for all or one per bag, "
                                     f"got {len(args.tiles)}")
        return _run_bag(args, list(args.tiles))
    if len(args.tiles) > 1:
        raise LocalizeInputError("give one --tiles DIR (several only with several --bag)")
    args.tiles = args.tiles[0] if args.tiles else None
    if args.vigor:
        if args.panoramas or args.fix:
            raise LocalizeInputError("--vigor evaluates a dataset split; give no panoramas and no --fix with it")
        root = Path(args.vigor)
        return _run_batch(args, vigor_frames(root, args.split, args.limit), root)
    if not args.panoramas:
        raise LocalizeInputError("give panorama files or folders, or --vigor ROOT")
    files, _ = expand_inputs(args.panoramas)
    if args.fix:
        if args.calibrate:
            raise LocalizeInputError("--calibrate needs the truth: use VIGOR-named panoramas without --fix, "
                                     "or --vigor")
        return _run_single(args, files)
    return _run_batch(args, named_frames(files, args.limit), None)

if __name__ == "__main__":
    sys.exit(main())
