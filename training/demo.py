"""crossview-demo: the whole chain on a fresh install, from synthetic data to an evaluated replay.

    crossview-demo [--work demo] [--preset cpu-bev-any-yaw] [--train-minutes 5] [--drive-s 180] ...

Stages, each one call of the step function behind a project tool (hloc style: the pipeline only
chains them, with typed settings, no argv):

  1 dataset  crossview-sim vigor     --cities training cities in VIGOR's layout    WORK/dataset
  2 train    crossview-train         --preset, stopped after --train-minutes       WORK/PRESET/train
  3 export   crossview-export onnx   the checkpoint (best.pt, else last.pt)        WORK/PRESET/model
  4 city     crossview-sim city      a held-out city (--test-seed) + orthophoto    WORK/city
  5 tiles    crossview-tiles build   that orthophoto cut like the training tiles   WORK/PRESET/tiles
  6 encode   crossview-tiles encode  the tiles' descriptors with the export        (in place)
  7 drive    crossview-sim drive     a 2 Hz walk with --gnss GNSS, as a bag        WORK/drive
  8 calibrate crossview-localize      --calibrate on --calibration-walks validation WORK/PRESET/calibration
                                     walks pooled (the next seeds: other routes in (+ model/covariance.json)
                                     the held-out city): the receiver's sigma
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
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from crossview_ros.estimate import LocalizerError
from crossview_ros.geo import GeoError
from crossview_ros.index import DescriptorError
from crossview_ros.localize_frames import LocalizeInputError
from crossview_ros.model_meta import EngineError
from crossview_ros.replay import ReplayError
from crossview_ros.tiles import TileSetError
from crossview_training.demo_config import GNSS_RECEIVERS, PROG, DemoConfig, UsageError
from crossview_training.demo_pipeline import run_demo
from crossview_training.demo_stages import STAGES, DemoError, Stages
from crossview_training.demo_summary import print_summary
from crossview_training.export_common import ExportError
from crossview_training.models import WeightsError

__all__ = ["STAGES", "DemoConfig", "DemoError", "Stages", "UsageError", "main", "run_demo"]

log = logging.getLogger("crossview_demo")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """crossview-demo's flags (DemoConfig's fields; its defaults)."""
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
    g.add_argument("--calibration-walks", type=int, default=d.calibration_walks,
                   help="validation walks the covariance calibration pools, in the held-out city on other routes "
                        f"(seeds --seed + 1, + 2, ...; the drive's mode and receiver; default {d.calibration_walks})")
    g.add_argument("--gnss", choices=GNSS_RECEIVERS, default=d.gnss,
                   help=f"GNSS receiver of the drive and the calibration walks: urban (bias growing in street "
                        f"canyons) or uniform (VIGOR's +-100 m) (default {d.gnss})")
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
    """The DemoConfig of parsed flags."""
    return DemoConfig(
        work=args.work, preset=args.preset, train_minutes=args.train_minutes, train_set=tuple(args.train_set),
        cities=args.cities, city_m=args.city_m, panoramas=args.panoramas, pano_height_px=args.pano_height_px,
        sat_px=args.sat_px, tile_size_m=args.tile_size_m, gsd_m=args.gsd_m, test_city_m=args.test_city_m,
        test_seed=args.test_seed, drive_s=args.drive_s, drive_rate_hz=args.drive_rate_hz, mode=args.mode,
        gnss=args.gnss, calibration_walks=args.calibration_walks,
        replay_rate=args.replay_rate, heading=not args.no_heading, params_file=args.params_file,
        node_args=tuple(args.node_arg), seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress)


EXPECTED_FAILURES = (  # errors of the steps that explain themselves (no traceback needed)
    DemoError, ReplayError, EngineError, TileSetError, ExportError, WeightsError, LocalizeInputError, LocalizerError,
    DescriptorError, GeoError, FileNotFoundError, FileExistsError,
)


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
        if not isinstance(exc, EXPECTED_FAILURES):
            log.exception("unexpected failure")
        print(f"{PROG}: error: {type(exc).__name__}: {exc}\n{PROG}: finished stages are kept under {cfg.work}; "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILURE
    print_summary(summary)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
