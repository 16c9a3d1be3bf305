"""crossview-replay: play a drive bag through the real localize_node and evaluate what it publishes.

    crossview-replay BAG --tiles DIR --model DIR --out DIR [--rate 1.0 | --lockstep] [--params-file YAML]
                     [--node-arg ARG ...] [--ekf-config config/ekf.yaml] [--timeout-s 60]
                     [--topics FILE] [--panorama-topic T] [--fix-topic T] [--odom-topic T] [--truth-topic T]
                     [--truth-frame utm|enu:LAT,LON[,YAW_DEG]] [--cameras RIG_FILE] ...

One step, one function (replay_bag), a thin CLI. The replay:

1. reads the bag (rosbags: MCAP or sqlite3 rosbag2, the folder or its .mcap/.db3 file) through the
   topic mapping (the simulator's topics by default; docs/recordings.md) and refuses a bag that lacks
   a topic it needs, naming the topics it has (exit code 2); without a datum topic the datum is the
   first valid fix;
2. starts `localize_node` as a subprocess with use_sim_time, the bag's datum and pose_origin
   "datum", in the replay's ROS_DOMAIN_ID (a random one, discovery limited to this host, when the
   environment sets none), and waits until its subscriptions and publications are matched;
3. publishes /clock and the bag's panoramas, fixes and odometry (never ground truth) under the
   node's topic names (panorama/compressed or panorama, gnss/fix, odom; with --cameras a rig file,
   each camera's images and CameraInfo on N/image/compressed or N/image and N/camera_info, the node
   given `cameras` and each camera's mount as parameters) in stamp order at `rate` x
   real time; at equal stamps the fix goes first, so the node pairs a panorama with the fix of its
   own stamp; with `lockstep`, each panorama is sent only once the node has published or counted
   the previous one (throughput, no frame dropped);
4. records crossview/fix, crossview/pose, crossview/heading and /diagnostics as they arrive, with
   the wall time of receipt; latency = receipt of the first output of a stamp minus the moment
   the replay published that panorama (one monotonic clock, in this process);
5. waits until the node's diagnostics say every received frame is processed, stops it with
   SIGINT and writes OUT/outputs.mcap, OUT/frames.csv, OUT/node.log, then the evaluation:
   OUT/report.md, OUT/*.png, OUT/summary.json (crossview_ros.report).

Everything goes to a hidden temporary folder beside OUT that is renamed into place at the end:
a failure (missing topic, node dying, Ctrl-C) leaves no OUT behind.

Evaluation, per panorama of the bag: our fix's horizontal error against the truth at that stamp
(interpolated), the raw GNSS error (newest fix not after the stamp), the fused track's error
(crossview_ros.fusion over the odometry twist + our /crossview/pose, set up from config/ekf.yaml;
also with the raw GNSS added), the heading error against the true yaw (the simulator's
/ground_truth/pose, UTM grid yaw turned into ENU, or a pose-type truth topic), the published
share, the node's rejections by reason (its last /diagnostics) and latency percentiles; and, truth or not, what needs no truth (crossview_ros.truth_free): publication
rate, innovation against the raw GNSS, consistency with odometry. A bag without truth gets only
that (summary.json "truth": false).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossview_ros import fusion, report
from crossview_ros.atomic import staging_dir
from crossview_ros.bag.drive import read_bag
from crossview_ros.bag.topics import TopicMap, add_topic_arguments, topic_map_from_args
from crossview_ros.replay_errors import EXIT_OK, EXIT_USAGE, ReplayError, UsageError
from crossview_ros.replay_evaluation import FrameRecord, default_fusion_config, evaluate
from crossview_ros.replay.files import write_frames_csv, write_outputs_mcap
from crossview_ros.replay.node_process import camera_parameters, node_command
from crossview_ros.replay.player import LOCKSTEP_DIAGNOSTICS_PERIOD_S, play


@dataclass
class ReplayResult:
    """What replay_bag produced: the folder, per-frame records, the summary written to summary.json."""

    out: Path
    frames: list[FrameRecord]
    summary: dict[str, Any]
    rejections: dict[str, int]
    node_returncode: int | None
    wall_s: float
    outputs_mcap: Path
    report: Path


def _check_arguments(rate: Any, tiles: str | os.PathLike, model: str | os.PathLike,
                     config: str | os.PathLike | None, out: str | os.PathLike, overwrite: bool) -> None:
    """UsageError (exit code 2) for a bad rate, a missing folder or file, or an output in the way."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise UsageError(f"rate must be > 0 (1 = real time), got {rate!r}")
    for what, p in (("tile set", Path(tiles)), ("model", Path(model))):
        if not p.is_dir():
            raise UsageError(f"{what} folder {p} does not exist")
    if config is not None and not Path(config).is_file():
        raise UsageError(f"params file {config} does not exist")
    if Path(out).exists() and not overwrite:
        raise UsageError(f"{out} exists; pass overwrite=True (--overwrite) or choose another folder")


def replay_bag(bag: str | os.PathLike, tiles: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
               rate: float = 1.0, config: str | os.PathLike | None = None, node_args: Sequence[str] = (),
               progress: bool = True, *, timeout_s: float = 60.0, ekf_config: str | os.PathLike | None = None,
               orthophoto: str | os.PathLike | None = None, overwrite: bool = False, lockstep: bool = False,
               monitor: Callable[[str, int], None] | None = None, topics: TopicMap | None = None) -> ReplayResult:
    """Replay `bag` through localize_node and write OUT (module docstring); returns the records.

    config: the node's --params-file; node_args: more ROS arguments for it (e.g. "-p", "heading:=true");
    lockstep: send each panorama once the node has published or counted the previous one, `rate`
    ignored (every frame processed, at the node's own pace; the node's diagnostics_period_s is set to
    LOCKSTEP_DIAGNOSTICS_PERIOD_S unless node_args set it); monitor(event, node_pid): see play();
    ekf_config: robot_localization YAML whose map block sets up the fused track (default
    config/ekf.yaml); orthophoto: a GeoTIFF to draw the trajectory on (default: the tile set's tiles);
    topics: which topic is which input (crossview_ros.bag.topics; default the simulator's).
    Raises ReplayError (UsageError, BagError, NodeError) with exit_code; OUT is then not written.
    """
    _check_arguments(rate, tiles, model, config, out, overwrite)
    out, tiles, model = Path(out), Path(tiles).resolve(), Path(model).resolve()
    fusion_config = (fusion.FusionConfig.from_ekf_yaml(ekf_config) if ekf_config is not None
                     else default_fusion_config())
    drive = read_bag(bag, topics)
    with staging_dir(out) as work:  # a killed replay's leftover is removed by the next
        extra = ("-p", f"diagnostics_period_s:={LOCKSTEP_DIAGNOSTICS_PERIOD_S}") if lockstep else ()
        rig = camera_parameters(topics.cameras) if topics is not None and topics.cameras is not None else []
        cmd = node_command(tiles, model, drive.datum_lat_deg, drive.datum_lon_deg,
                           params_file=Path(config).resolve() if config is not None else None,
                           node_args=(*extra, *rig, *node_args))
        playback = play(drive, cmd, work / "node.log", rate=rate, timeout_s=timeout_s, progress=progress,
                        lockstep=lockstep, monitor=monitor)
        evaluation = evaluate(drive, playback, fusion_config=fusion_config)
        evaluation.summary["replay"] = {
            "rate": rate, "tiles": str(tiles), "model": str(model),
            "params_file": None if config is None else str(config), "node_args": list(node_args),
            "node_command": playback.node_command, "node_exit_code": playback.node_returncode,
            "ros_domain_id": playback.domain_id, "wall_s": playback.wall_s,
            "lockstep": playback.lockstep, "publish_s": playback.publish_s, "frames_lost": playback.frames_lost,
            "frames_per_s": playback.frames_published / playback.publish_s if playback.publish_s > 0 else None,
            "fixes_published_by_replay": playback.fixes_published,
            "cameras": None if not drive.cameras else {t.name: t.image_topic for t in drive.cameras},
        }
        result = work / "result"
        result.mkdir()
        (work / "node.log").replace(result / "node.log")
        write_outputs_mcap(result / "outputs.mcap", playback.received)
        write_frames_csv(result / "frames.csv", evaluation.frames)
        report.write_report(result, evaluation, drive, tiles=tiles, orthophoto=orthophoto)
        if out.exists():
            os.replace(out, work / "replaced")
        os.replace(result, out)
    return ReplayResult(out=out, frames=evaluation.frames, summary=evaluation.summary,
                        rejections=evaluation.rejections, node_returncode=playback.node_returncode,
                        wall_s=playback.wall_s, outputs_mcap=out / "outputs.mcap", report=out / "report.md")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossview-replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="rosbag2 folder or its .mcap/.db3 file: a drive (crossview-sim drive) or a robot's "
                               "recording (map its topics below)")
    p.add_argument("--tiles", required=True, help="tile set folder encoded with --model")
    p.add_argument("--model", required=True, help="exported model folder")
    p.add_argument("--out", required=True, help="output folder (outputs.mcap, report.md, *.png, summary.json)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="playback speed, x real time (default 1.0; 2 = twice as fast)")
    p.add_argument("--lockstep", action="store_true",
                   help="ignore --rate: send each panorama once the node has published or counted the previous "
                        "one (every frame processed, at the node's own pace; summary.json replay.frames_per_s)")
    p.add_argument("--params-file", "--config", dest="params_file",
                   help="node parameters YAML (e.g. config/localize.yaml); tile_set, model, datum and sim time "
                        "are set by the replay")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="one more ROS argument for the node, repeatable: --node-arg=-p --node-arg=heading:=true")
    p.add_argument("--ekf-config", help="robot_localization YAML for the fused track (default config/ekf.yaml)")
    p.add_argument("--orthophoto", help="GeoTIFF to draw the trajectory on (default: mosaic of the tile images)")
    p.add_argument("--timeout-s", type=float, default=60.0,
                   help="longest wait for the node to connect, and to finish after the last frame (default 60)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_topic_arguments(p)
    return p


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, so the node is stopped and nothing half-written stays."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = replay_bag(args.bag, args.tiles, args.model, args.out, rate=args.rate, config=args.params_file,
                            node_args=args.node_arg, progress=not args.no_progress, timeout_s=args.timeout_s,
                            ekf_config=args.ekf_config, orthophoto=args.orthophoto, overwrite=args.overwrite,
                            lockstep=args.lockstep, topics=topic_map_from_args(args))
    except ReplayError as exc:
        print(f"crossview-replay: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError) as exc:  # fusion config, orthophoto
        print(f"crossview-replay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("crossview-replay: interrupted; nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print("crossview-replay: terminated (SIGTERM); nothing written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    s = result.summary
    ours, gnss, fused = (s["errors"][k] for k in ("crossview", "gnss", "fused"))

    def med(stats: dict) -> str:
        return "n/a" if stats["median_m"] is None else f"{stats['median_m']:.1f} m"

    head = f"wrote {result.out}: {s['published']}/{s['frames']} frames published ({100 * s['published_share']:.0f} %)"
    if s["truth"]:
        print(f"{head}, median error crossview {med(ours)}, raw GNSS {med(gnss)}, fused {med(fused)}; "
              f"see {result.report}")
    else:
        g = s["truth_free"]["gnss_innovation"]
        print(f"{head}; no truth: median innovation against GNSS {med(g)}; see {result.report}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
