"""crossview-localize: localize panoramas against a tile set from the shell, or evaluate in batch.

A thin front to localizer.Localizer. Three ways in:

    crossview-localize --tiles DIR --model DIR pano.jpg [more.jpg ...] --fix LAT,LON[,SIGMA_M]
        every panorama with that fix; prints each Estimate (a table, or --json)
    crossview-localize --tiles DIR --model DIR FOLDER_OR_FILES...        (no --fix)
        panoramas named as in VIGOR (`<prefix>,<lat>,<lon>,.jpg`): the name is the truth, the fix
        is drawn with VIGOR's noisy-GPS protocol (uniform +-100 m per axis); prints error statistics
    crossview-localize --model DIR --vigor ROOT --split cross_test [--limit N] [--tiles DIR]
        the same over a VIGOR-layout split; each city's tile set is --tiles, else ROOT/<City>/.tiles
        (written by crossview-sim); --heading adds heading errors (VIGOR: north in the middle column)

--calibrate (batch modes) fits the covariance model on the batch and writes covariance.json beside
the model, which later runs load. Exit codes: 0 done (single mode: every panorama accepted), 1 some
panorama rejected (single mode), 2 bad input on the command line (one line on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.cli_args import join_negative_fix
from crossview_ros.engines import ENGINE_KINDS, EngineError, create_engine
from crossview_ros.index import DescriptorError
from crossview_ros.covariance import CHI2_1DOF_95, CHI2_2DOF_95, calibrate, fit_fix_sigma_scale, save_covariance
from crossview_ros.estimate import Estimate, Fix, LocalizerError, Truth
from crossview_ros.localizer import Localizer, engine_options
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.tiles import TileSetError

log = logging.getLogger(__name__)

PROG = "crossview-localize"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIGOR_SPLITS = ("same_train", "same_test", "cross_train", "cross_test")
VIGOR_CROSS_TRAIN = ("NewYork", "Seattle")  # VIGOR's cross-area training cities (when no dataset.json)
VIGOR_YAW_ENU_RAD = -math.pi / 2  # VIGOR panoramas: north in the middle column, so column 0 faces south
SYNTHETIC_TILES = ".tiles"  # tile set that crossview-sim writes inside each city folder
_DEFAULTS = LocalizerConfig()


class _UserError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


@dataclass(frozen=True)
class _Frame:
    path: Path
    truth: Truth | None  # from a VIGOR name, or a bag's ground truth
    city: str | None = None
    data: bytes | None = None  # the encoded panorama (bag frames); None = read path
    stamp_s: float | None = None  # bag frames: the panorama's stamp


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
                   help="evaluate on a drive bag (crossview-sim drive): its panoramas, GNSS fixes and ground truth, "
                        "frame by frame as a stream; repeat it to pool several walks (each its own stream), e.g. "
                        "to --calibrate on walks of several cities")
    p.add_argument("--split", choices=VIGOR_SPLITS, default="cross_test", help="VIGOR split (default cross_test)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N panoramas, evenly spread (0 = all)")
    p.add_argument("--noise-m", type=float, default=100.0,
                   help="batch fixes: error uniform in [-N, N] m on east and north (VIGOR: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch fixes' noise (default 0)")
    p.add_argument("--calibrate", action="store_true",
                   help="batch modes: fit the covariance model on the batch and write covariance.json beside "
                        "the model")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    return p


def _parse_fix(text: str) -> tuple[float, float, float | None]:
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        values = [float(v) for v in parts]
    except ValueError:
        raise _UserError(f"--fix must be LAT,LON[,SIGMA_M] (degrees, metres), e.g. 40.7484,-73.9857,15; "
                         f"got {text!r}") from None
    geo.check_latlon(values[0], values[1])
    sigma = values[2] if len(values) == 3 else None
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise _UserError(f"--fix sigma must be a finite number of metres >= 0, got {parts[2]!r}")
    return values[0], values[1], sigma


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _UserError(f"cannot read --config {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise their own error types
        raise _UserError(f"--config {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise _UserError(f"--config {path} must hold a mapping of settings")
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
            raise _UserError(f"--set takes KEY=VALUE, got {item!r}")
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
    try:
        return LocalizerConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise _UserError(str(exc)) from None


# --------------------------------------------------------------------------- inputs


def _vigor_truth(path: Path) -> Truth | None:
    """Truth from a VIGOR name `<prefix>,<lat>,<lon>,.jpg`; None when the name is not one."""
    parts = path.name.split(",")
    if len(parts) < 4:
        return None
    try:
        lat, lon = float(parts[1]), float(parts[2])
        geo.check_latlon(lat, lon)
    except (ValueError, geo.GeoError):
        return None
    return Truth(lat, lon, VIGOR_YAW_ENU_RAD)


def _expand(inputs: Sequence[str]) -> tuple[list[Path], bool]:
    """Files to process, and whether a folder was among the inputs."""
    files: list[Path] = []
    folder = False
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = True
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise _UserError(f"folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} panoramas")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise _UserError(f"panorama {path} does not exist")
    return files, folder


def _vigor_cities(root: Path, split: str) -> list[str]:
    splits = root / "splits"
    if not splits.is_dir():
        raise _UserError(f"{root} has no splits/ folder; --vigor takes a VIGOR-layout dataset root")
    cities = sorted(p.name for p in splits.iterdir() if (p / "satellite_list.txt").is_file())
    if not cities:
        raise _UserError(f"{splits} holds no city with a satellite_list.txt")
    if split.startswith("same"):
        return cities
    manifest = root / "dataset.json"
    roles = None
    if manifest.is_file():
        try:
            roles = json.loads(manifest.read_text(encoding="utf-8")).get("cross_area")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise _UserError(f"cannot read {manifest}: {exc}") from None
    train = list(roles["train"]) if roles else [c for c in cities if c in VIGOR_CROSS_TRAIN]
    chosen = train if split == "cross_train" else [c for c in cities if c not in train]
    if not chosen:
        raise _UserError(f"split {split} of {root} has no cities (cities {cities}, cross-area training {train})")
    return chosen


def _vigor_frames(root: Path, split: str, limit: int) -> list[_Frame]:
    label_file = {"same_train": "same_area_balanced_train.txt", "same_test": "same_area_balanced_test.txt",
                  "cross_train": "pano_label_balanced.txt", "cross_test": "pano_label_balanced.txt"}[split]
    frames: list[_Frame] = []
    for city in _vigor_cities(root, split):
        labels = root / "splits" / city / label_file
        if not labels.is_file():
            raise _UserError(f"{labels} is missing; is {root} a complete VIGOR-layout dataset?")
        for line in labels.read_text(encoding="utf-8").splitlines():
            if not line.split():
                continue
            path = root / city / "panorama" / line.split()[0]
            truth = _vigor_truth(path)
            if truth is None:
                raise _UserError(f"{labels}: panorama name {path.name!r} is not '<prefix>,<lat>,<lon>,.jpg'")
            frames.append(_Frame(path, truth, city))
    if not frames:
        raise _UserError(f"split {split} of {root} lists no panoramas")
    if 0 < limit < len(frames):
        keep = np.unique(np.linspace(0, len(frames) - 1, limit).round().astype(int))
        frames = [frames[i] for i in keep]
    return frames


def _noisy_fix(truth: Truth, rng: np.random.Generator, half_width_m: float, stamp_s: float) -> Fix:
    """VIGOR's noisy-GPS protocol: error uniform in [-h, h] m per axis (ENU); sigma = h / sqrt(3)."""
    de, dn = rng.uniform(-half_width_m, half_width_m, size=2)
    lat, lon, _ = geo.LocalENU(truth.lat_deg, truth.lon_deg).inverse(float(de), float(dn))
    return Fix(float(lat), float(lon), stamp_s, status=0, sigma_m=half_width_m / math.sqrt(3.0))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _UserError(f"cannot read panorama {path}: {exc}") from None


# --------------------------------------------------------------------------- output


def _row(name: str, e: Estimate) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    bearing = None if e.yaw_enu_rad is None else float(geo.bearing_deg_from_yaw_enu(e.yaw_enu_rad))
    return (f"{name[:40]:<40} {str(e.reason):<16} {f(e.lat_deg, '.7f'):>12} {f(e.lon_deg, '.7f'):>13} "
            f"{f(e.sigma_m, '.1f'):>8} {f(bearing, '.1f'):>8} {f(e.score, '.4f'):>7} {f(e.margin, '.4f'):>7} "
            f"{f(e.tile_id, 'd'):>7} {e.tiles_in_scope:>6} {e.latency.total_ms:>8.1f}")


_HEADER = (f"{'panorama':<40} {'reason':<16} {'lat_deg':>12} {'lon_deg':>13} {'sigma_m':>8} {'bear_deg':>8} "
           f"{'score':>7} {'margin':>7} {'tile':>7} {'scope':>6} {'total_ms':>8}")


def _percent(mask: np.ndarray) -> float:
    return float(100.0 * np.mean(mask)) if mask.size else float("nan")


def _summary(estimates: list[Estimate], frames: list[_Frame], fixes: list[Fix], heading: bool) -> dict[str, Any]:
    n = len(estimates)
    published = [i for i, e in enumerate(estimates) if e.accepted]
    positioned = [i for i, e in enumerate(estimates) if e.has_position]

    def errors(idx: list[int]) -> np.ndarray:
        return np.array([float(geo.distance_m(frames[i].truth.lat_deg, frames[i].truth.lon_deg,
                                              estimates[i].lat_deg, estimates[i].lon_deg)) for i in idx])

    err = errors(published)
    gnss = np.array([float(geo.distance_m(fr.truth.lat_deg, fr.truth.lon_deg, fx.lat_deg, fx.lon_deg))
                     for fr, fx in zip(frames, fixes)])
    d2 = []
    for i in published:
        t, e = frames[i].truth, estimates[i]
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg)
        v = np.array([de, dn])
        d2.append(float(v @ np.linalg.solve(e.covariance_enu_m2, v)))
    out: dict[str, Any] = {
        "frames": n,
        "published": len(published),
        "published_percent": _percent(np.array([e.accepted for e in estimates])),
        "reasons": dict(sorted(Counter(str(e.reason) for e in estimates).items())),
        "gnss_error_median_m": float(np.median(gnss)) if gnss.size else None,
        "error_m": None if not err.size else {
            "mean": float(err.mean()), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "max": float(err.max()), **{f"under_{t}m_percent": _percent(err < t) for t in (1, 5, 10, 25, 50)},
            "over_25m_percent": _percent(err > 25.0),
        },
        "error_all_positioned_median_m": float(np.median(errors(positioned))) if positioned else None,
        "covariance_share_d2_under_5.99_percent": _percent(np.array(d2) < CHI2_2DOF_95) if d2 else None,
        "latency_ms": {
            "p50": float(np.percentile([e.latency.total_ms for e in estimates], 50)),
            "p99": float(np.percentile([e.latency.total_ms for e in estimates], 99)),
        },
    }
    if heading:
        yaw_idx = [i for i in published if estimates[i].yaw_enu_rad is not None]
        yerr = np.array([abs(float(geo.wrap_angle_rad(estimates[i].yaw_enu_rad - frames[i].truth.yaw_enu_rad)))
                         for i in yaw_idx])
        yd2 = np.array([yerr[k] ** 2 / estimates[i].yaw_variance_rad2 for k, i in enumerate(yaw_idx)])
        deg = np.degrees(yerr)
        out["heading"] = None if not yaw_idx else {
            "frames": len(yaw_idx), "median_error_deg": float(np.median(deg)),
            "under_5deg_percent": _percent(deg < 5), "under_10deg_percent": _percent(deg < 10),
            "flip_percent": _percent(deg > 135), "share_under_3.84_percent": _percent(yd2 < CHI2_1DOF_95),
        }
    return out


def _print_summary(s: dict[str, Any]) -> None:
    print(f"frames {s['frames']}, published {s['published']} ({s['published_percent']:.1f} %)")
    print("reasons: " + ", ".join(f"{k} {v}" for k, v in s["reasons"].items()))
    if s["gnss_error_median_m"] is not None:
        print(f"GNSS fix error median {s['gnss_error_median_m']:.1f} m")
    e = s["error_m"]
    if e:
        print(f"published error: mean {e['mean']:.2f} m, median {e['median']:.2f} m, p90 {e['p90']:.2f} m, "
              f"max {e['max']:.1f} m")
        print("  " + ", ".join(f"< {t} m {e[f'under_{t}m_percent']:.1f} %" for t in (1, 5, 10, 25, 50))
              + f", > 25 m {e['over_25m_percent']:.1f} %")
    if s["error_all_positioned_median_m"] is not None:
        print(f"median error of every positioned frame (gated ones too) {s['error_all_positioned_median_m']:.2f} m")
    if s["covariance_share_d2_under_5.99_percent"] is not None:
        print(f"covariance: {s['covariance_share_d2_under_5.99_percent']:.1f} % of published d^2 < 5.99 "
              "(honest: 90..98 %)")
    h = s.get("heading")
    if h:
        print(f"heading: median error {h['median_error_deg']:.1f} deg, < 5 deg {h['under_5deg_percent']:.1f} %, "
              f"< 10 deg {h['under_10deg_percent']:.1f} %, flips {h['flip_percent']:.1f} %, "
              f"yaw d^2 < 3.84 {h['share_under_3.84_percent']:.1f} %")
    print(f"latency total p50 {s['latency_ms']['p50']:.1f} ms, p99 {s['latency_ms']['p99']:.1f} ms")


# --------------------------------------------------------------------------- modes


def _localizers(args: argparse.Namespace, cities: Sequence[str | None], root: Path | None,
                tiles: dict[str | None, str] | None = None) -> dict[str | None, Localizer]:
    """One Localizer per tile set (per city without --tiles, or as `tiles` says), sharing one engine."""
    sets: dict[str | None, str | None] = {}
    for city in cities:
        if tiles is not None:
            sets[city] = tiles[city]
        elif args.tiles or root is None:
            sets[city] = args.tiles  # None: the --config file's tile_set
        else:
            path = root / city / SYNTHETIC_TILES
            if not path.is_dir():
                raise _UserError(f"no tile set for city {city}: pass --tiles DIR (built and encoded for it) or "
                                 f"write the city with crossview-sim ({path} is missing)")
            sets[city] = str(path)
    configs = {city: _make_config(args, path) for city, path in sets.items()}
    first = next(iter(configs.values()))
    if not str(first.tile_set):
        raise _UserError("--tiles DIR is required (a tile set encoded with --model)")
    if not str(first.model):
        raise _UserError("--model DIR is required (the exported model that encoded the tile set)")
    engine = create_engine(first.model, first.engine, **engine_options(first))
    made: dict[str, Localizer] = {}
    out: dict[str | None, Localizer] = {}
    try:
        for city, config in configs.items():
            key = str(config.tile_set)
            if key not in made:
                made[key] = Localizer(config, engine=engine)
            out[city] = made[key]
    except BaseException:
        engine.close()
        raise
    return out


def _run_single(args: argparse.Namespace, files: list[Path]) -> int:
    lat, lon, sigma = _parse_fix(args.fix)
    localizer = _localizers(args, [None], None)[None]
    estimates = []
    try:
        for path in files:
            data = _read(path)
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
        print(_HEADER)
        for path, e in zip(files, estimates):
            print(_row(path.name, e))
        for path, e in zip(files, estimates):
            if not e.accepted:
                print(f"{path.name}: {e.reason}: {e.message}")
    return 0 if all(e.accepted for e in estimates) else 1


def _run_batch(args: argparse.Namespace, frames: list[_Frame], root: Path | None) -> int:
    cities = list(dict.fromkeys(fr.city for fr in frames))
    localizers = _localizers(args, cities, root)
    any_loc = next(iter(localizers.values()))
    rng = np.random.default_rng(args.seed)
    now = time.time()
    fixes = [_noisy_fix(fr.truth, rng, args.noise_m, now) for fr in frames]
    estimates = []
    try:
        _calibrate_fixes(args, localizers, frames, fixes)
        for fr, fix in zip(frames, fixes):
            data = _read(fr.path)
            loc = localizers[fr.city]
            loc.reset()  # independent panoramas, not a stream
            now = time.time()
            fix = dataclasses.replace(fix, stamp_s=now)
            estimates.append(loc.localize(data, fix, now, now_s=now))
    finally:
        any_loc.engine.close()
    return _report(args, localizers, frames, fixes, estimates)


def _bag_frames(path: Path, limit: int) -> tuple[list[_Frame], list[Fix]]:
    """A drive bag's panoramas in stamp order, each with the newest GNSS fix at its stamp (as the node
    pairs them) and the ground truth (position, and yaw turned from the UTM grid to ENU)."""
    from crossview_ros.bag.writer import typestore
    from crossview_ros.replay import ReplayError, read_bag

    try:
        bag = read_bag(path)
    except ReplayError as exc:
        raise _UserError(str(exc)) from None
    store = typestore()
    fix_stamps = np.array([f.stamp_ns for f in bag.fixes], np.int64)
    order = np.argsort(bag.panorama_stamp_ns, kind="stable")
    if 0 < limit < len(order):
        order = order[np.unique(np.linspace(0, len(order) - 1, limit).round().astype(int))]
    frames, fixes = [], []
    for i in order:
        stamp_ns = int(bag.panorama_stamp_ns[i])
        k = int(np.searchsorted(fix_stamps, stamp_ns, side="right")) - 1
        if k < 0:
            continue  # no fix yet: the node would reject it as NO_FIX; nothing to evaluate
        f = bag.fixes[k]
        cov = None if f.covariance_enu_m2 is None else np.asarray(f.covariance_enu_m2)[:2, :2]
        fixes.append(Fix(f.lat_deg, f.lon_deg, f.stamp_ns / 1e9, status=f.status, covariance_enu_m2=cov))
        t_s = stamp_ns / 1e9
        j = int(np.argmin(np.abs(bag.truth_stamp_s - t_s)))
        g = int(np.argmin(np.abs(bag.truth_pose_stamp_s - t_s)))
        lat, lon = float(bag.truth_lat_deg[j]), float(bag.truth_lon_deg[j])
        yaw = float(geo.yaw_utm_to_enu(float(bag.truth_yaw_utm_rad[g]), lat, lon, bag.zone))
        msg = store.deserialize_cdr(bag.panorama_raw[i], "sensor_msgs/msg/CompressedImage")
        frames.append(_Frame(path, Truth(lat, lon, yaw), data=bytes(msg.data), stamp_s=t_s))
    if not frames:
        raise _UserError(f"{path} has no panorama after a GNSS fix")
    return frames, fixes


def _run_bag(args: argparse.Namespace, tiles: list[str]) -> int:
    """Localize drive bags frame by frame, each as a stream (stamps, fixes and gating as in the node);
    several bags are pooled in one summary (and one calibration)."""
    frames, fixes = [], []
    for i, bag in enumerate(args.bag):
        bag_frames, bag_fixes = _bag_frames(Path(bag), args.limit)
        frames += [dataclasses.replace(fr, city=str(i)) for fr in bag_frames]
        fixes += bag_fixes
    keys = [str(i) for i in range(len(args.bag))]
    localizers = _localizers(args, keys, None, tiles=dict(zip(keys, tiles * len(keys) if len(tiles) == 1 else tiles)))
    any_loc = next(iter(localizers.values()))
    estimates = []
    try:
        _calibrate_fixes(args, localizers, frames, fixes)
        for k, (fr, fix) in enumerate(zip(frames, fixes)):
            loc = localizers[fr.city]
            if k == 0 or frames[k - 1].city != fr.city:
                loc.reset()  # another walk: another stream
            estimates.append(loc.localize(fr.data, fix, fr.stamp_s, now_s=fr.stamp_s))
    finally:
        any_loc.engine.close()
    return _report(args, localizers, frames, fixes, estimates)


def _calibrate_fixes(args: argparse.Namespace, localizers: dict, frames: list[_Frame], fixes: list[Fix]) -> None:
    """--calibrate, first step: how honest the fixes' covariance is (it shapes the estimates through
    the scope, the match prior and the gate, so it is fitted before the batch is localized)."""
    if not args.calibrate:
        return
    any_loc = next(iter(localizers.values()))
    try:
        scale = fit_fix_sigma_scale(fixes, [fr.truth for fr in frames],
                                    default_sigma_m=any_loc.config.default_fix_sigma_m)
    except ValueError as exc:
        raise _UserError(f"--calibrate: {exc}") from None
    for loc in localizers.values():
        loc.covariance = dataclasses.replace(loc.covariance, fix_sigma_scale=scale)
    if not args.json:
        print(f"fix sigma scale {scale:.3f}: the fixes' reported sigma x this puts 95 % of their squared "
              "Mahalanobis errors under 5.99")


def _report(args: argparse.Namespace, localizers: dict, frames: list[_Frame], fixes: list[Fix],
            estimates: list[Estimate]) -> int:
    """Summary (and calibration) of a batch: printed, or JSON with every estimate."""
    any_loc = next(iter(localizers.values()))
    summary = _summary(estimates, frames, fixes, any_loc.config.heading)
    calibration = None
    if args.calibrate:
        try:
            model = calibrate(estimates, [fr.truth for fr in frames], start=any_loc.covariance)
        except ValueError as exc:
            raise _UserError(f"--calibrate: {exc}") from None
        path = save_covariance(model, any_loc.meta.path, any_loc.meta.model_hash)
        calibration = {"path": str(path), "params": model.to_dict(), "fit": dict(model.fit)}
    if args.json:
        doc = {"model": str(any_loc.meta.path), "model_hash": any_loc.meta.model_hash, "engine": any_loc.engine.name,
               "tiles": {str(c): str(loc.tiles.path) for c, loc in localizers.items()},
               "noise_m": args.noise_m, "seed": args.seed, "summary": summary, "calibration": calibration,
               "estimates": [{"panorama": str(fr.path), "truth_lat_deg": fr.truth.lat_deg,
                              "truth_lon_deg": fr.truth.lon_deg, "fix_lat_deg": fx.lat_deg,
                              "fix_lon_deg": fx.lon_deg, **e.to_dict()}
                             for fr, fx, e in zip(frames, fixes, estimates)]}
        print(json.dumps(doc, indent=2))
    else:
        _print_summary(summary)
        if calibration:
            fit = calibration["fit"]
            print(f"covariance calibrated on {fit['samples']} estimates "
                  f"({fit['share_d2_below_chi2'] * 100:.1f} % of d^2 < {fit['chi2_2dof_quantile']:.2f}); "
                  f"wrote {calibration['path']}")
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
        if args.limit < 0:
            raise _UserError(f"--limit must be >= 0, got {args.limit}")
        if not (math.isfinite(args.noise_m) and args.noise_m >= 0):
            raise _UserError(f"--noise-m must be a finite number of metres >= 0, got {args.noise_m}")
        if args.threads is not None and args.threads < 0:
            raise _UserError(f"--threads must be >= 0, got {args.threads}")
        if args.bag:
            if args.panoramas or args.fix or args.vigor:
                raise _UserError("--bag evaluates a drive bag; give no panoramas, --fix or --vigor with it")
            if not args.tiles:
                raise _UserError("--bag needs --tiles DIR (the drive's city, encoded with --model)")
            if len(args.tiles) not in (1, len(args.bag)):
                raise _UserError(f"{len(args.bag)} --bag need one --tiles for all or one per bag, "
                                 f"got {len(args.tiles)}")
            return _run_bag(args, list(args.tiles))
        if len(args.tiles) > 1:
            raise _UserError("give one --tiles DIR (several only with several --bag)")
        args.tiles = args.tiles[0] if args.tiles else None
        if args.vigor:
            if args.panoramas or args.fix:
                raise _UserError("--vigor evaluates a dataset split; give no panoramas and no --fix with it")
            root = Path(args.vigor)
            return _run_batch(args, _vigor_frames(root, args.split, args.limit), root)
        if not args.panoramas:
            raise _UserError("give panorama files or folders, or --vigor ROOT")
        files, _ = _expand(args.panoramas)
        if args.fix:
            if args.calibrate:
                raise _UserError("--calibrate needs the truth: use VIGOR-named panoramas without --fix, or --vigor")
            return _run_single(args, files)
        frames = [_Frame(p, _vigor_truth(p)) for p in files]
        unnamed = [f.path.name for f in frames if f.truth is None]
        if unnamed:
            raise _UserError(f"--fix LAT,LON is required: {unnamed[0]!r} is not a VIGOR name "
                             "'<prefix>,<lat>,<lon>,.jpg' that carries its position")
        if 0 < args.limit < len(frames):
            keep = np.unique(np.linspace(0, len(frames) - 1, args.limit).round().astype(int))
            frames = [frames[i] for i in keep]
        return _run_batch(args, frames, None)
    except (_UserError, TileSetError, EngineError, DescriptorError, LocalizerError, geo.GeoError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
