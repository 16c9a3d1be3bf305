"""crossview-dataset from-bag: recorded panoramas + RTK truth + a tile set -> a VIGOR-layout city.

    crossview-dataset from-bag BAG [BAG ...] --tiles TILES --out ROOT --city NAME \\
        --panorama-topic /camera/panorama/compressed --truth-topic /rtk/fix

For fine-tuning on your own robot's data (docs/training.md): every panorama that has a truth fix
around it is written north-aligned into ROOT/NAME/panorama/, the tile set's tiles within
--scope-m of the kept panoramas into ROOT/NAME/satellite/, and the label files into
ROOT/splits/NAME/, as crossview-sim vigor writes them (load_vigor_split reads both). ROOT/dataset.json
records the tile size (the offsets' L) and the cross-area role (the city trains).

- Bags: rosbag2 MCAP or sqlite3 folders, read with rosbags; several bags go into one city.
- Panoramas: sensor_msgs/CompressedImage (JPEG/PNG) or sensor_msgs/Image (rgb8, bgr8, mono8),
  equirectangular, column 0 facing the vehicle's forward direction plus --camera-yaw-deg
  (clockwise seen from above), azimuth increasing to the right.
- Truth: sensor_msgs/NavSatFix (an RTK receiver), interpolated to each panorama's header stamp
  between the two fixes around it (at most --max-truth-gap-s apart). Fixes with status NO_FIX,
  NaN, or a stated horizontal sigma above --max-truth-sigma-m are dropped.
- Heading: the course over ground of the truth track (UTM grid bearing over +-0.5 s), so the
  vehicle must drive forward; frames slower than --min-speed-mps are skipped (a standing
  vehicle has no course). A panorama is turned to put grid north in its middle column (VIGOR's).
- Thinning: a frame closer than --min-spacing-m to the last kept one is skipped.
- Splits: same_area_balanced_test takes every k-th --block-m of the drive (k = 1 / --test-fraction),
  so that test panoramas are not next to training ones; pano_label_balanced holds all.
- Labels: (da, db) = ((N_tile - N_pano), (E_tile - E_pano)) / gsd in the tile set's zone, gsd =
  tile_size_m / tile_px; positive (best-centred) tile first.

A rerun with the same arguments finishes an interrupted one (panoramas on disk are kept); another
city joins an existing ROOT (same tile size); a city made with other arguments is refused
without --overwrite. Exit 2 with one line for bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from crossview_ros import geo
from crossview_ros.atomic import write_bytes_atomic, write_text_atomic
from crossview_ros.panorama import decode_panorama
from crossview_ros.tiles import TileSet, TileSetError
from crossview_training.datasets import pano_rotation_px, roll_panorama

FORMAT = "crossview_training.bag_dataset"
FORMAT_VERSION = 1
IMAGE_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image")
NAVSAT_TYPE = "sensor_msgs/msg/NavSatFix"
COURSE_HALF_WINDOW_S = 0.5  # course over ground from the truth track at t - 0.5 s and t + 0.5 s


class DatasetError(ValueError):
    """Bad input: printed as one line, exit code 2."""


@dataclass
class Truth:
    """Usable truth fixes, sorted by stamp: UTM grid E/N in the tile set's zone."""

    stamp_ns: np.ndarray  # (K,) int64
    en_m: np.ndarray  # (K, 2)
    max_gap_s: float

    def at(self, stamp_ns: int) -> np.ndarray | None:
        """(E, N) linearly interpolated at the stamp, or None without fixes on both sides close enough."""
        k = int(np.searchsorted(self.stamp_ns, stamp_ns))
        if k < len(self.stamp_ns) and self.stamp_ns[k] == stamp_ns:
            return self.en_m[k]
        if k == 0 or k == len(self.stamp_ns):
            return None
        t0, t1 = self.stamp_ns[k - 1], self.stamp_ns[k]
        if (t1 - t0) * 1e-9 > self.max_gap_s:
            return None
        w = (stamp_ns - t0) / (t1 - t0)
        return (1 - w) * self.en_m[k - 1] + w * self.en_m[k]

    def course_deg(self, stamp_ns: int) -> tuple[float, float] | None:
        """(grid bearing of travel, speed m/s) over +-COURSE_HALF_WINDOW_S, or None without truth there."""
        h = int(COURSE_HALF_WINDOW_S * 1e9)
        a, b = self.at(stamp_ns - h), self.at(stamp_ns + h)
        if a is None or b is None:
            return None
        d = b - a
        return math.degrees(math.atan2(d[0], d[1])) % 360.0, float(np.hypot(*d)) / (2 * COURSE_HALF_WINDOW_S)


def _stamp_ns(msg, log_time_ns: int) -> int:
    stamp = msg.header.stamp
    ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return ns if ns > 0 else int(log_time_ns)


def _reader(bags: Sequence[Path]):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    store = getattr(Stores, "ROS2_KILTED", None) or Stores.ROS2_JAZZY
    return AnyReader(list(bags), default_typestore=get_typestore(store))


def _connections(reader, topic: str, types: Sequence[str], what: str) -> list:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        have = ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections}))
        raise DatasetError(f"no {what} topic {topic!r} in the bag(s); topics: {have}")
    bad = [c.msgtype for c in conns if c.msgtype not in types]
    if bad:
        raise DatasetError(f"{what} topic {topic} has type {bad[0]}; expected one of {', '.join(types)}")
    return conns


def read_truth(reader, topic: str, zone: geo.UTMZone, *, max_sigma_m: float, max_gap_s: float,
               counts: Counter) -> Truth:
    """Usable NavSatFix truth of a topic (module docstring), projected to the tile set's zone."""
    stamps, lat, lon = [], [], []
    for conn, log_ns, raw in reader.messages(connections=_connections(reader, topic, (NAVSAT_TYPE,), "truth")):
        msg = reader.deserialize(raw, conn.msgtype)
        cov = np.asarray(msg.position_covariance, np.float64)
        sigma = math.sqrt(max(cov[0], cov[4], 0.0)) if int(msg.position_covariance_type) > 0 else 0.0
        if int(msg.status.status) < 0 or not (math.isfinite(msg.latitude) and math.isfinite(msg.longitude)):
            counts["truth fixes without a fix"] += 1
        elif sigma > max_sigma_m:
            counts[f"truth fixes with sigma > {max_sigma_m:g} m"] += 1
        else:
            stamps.append(_stamp_ns(msg, log_ns))
            lat.append(msg.latitude)
            lon.append(msg.longitude)
    if not stamps:
        raise DatasetError(f"truth topic {topic} has no usable fix ({dict(counts) or 'no messages'})")
    order = np.argsort(stamps, kind="stable")
    e, n, _ = geo.latlon_to_utm(np.asarray(lat)[order], np.asarray(lon)[order], zone=zone)
    return Truth(np.asarray(stamps, np.int64)[order], np.stack([e, n], axis=1), max_gap_s)


def _decode(msg, msgtype: str) -> np.ndarray:
    """RGB pixels of a CompressedImage or an Image message (ValueError when they do not decode)."""
    if msgtype.endswith("CompressedImage"):
        return decode_panorama(bytes(msg.data), msg.format)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    channels = 1 if msg.encoding == "mono8" else 3
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if data.size != h * step or step < w * channels:
        raise ValueError(f"{msg.encoding} image of {w} x {h} px has {data.size} bytes with step {step}")
    return decode_panorama(data.reshape(h, step)[:, : w * channels].reshape(h, w, channels), msg.encoding)


@dataclass
class Frame:
    """One kept panorama: its file name, position, north-aligned pixels and label parts."""

    name: str
    lat_deg: float
    lon_deg: float
    en_m: np.ndarray
    tiles: list[int]  # positive first


def _north_aligned(rgb: np.ndarray, forward_bearing_deg: float, height_px: int) -> np.ndarray:
    """Turn the panorama so grid north is in the middle column (VIGOR's: forward = south)."""
    if height_px and rgb.shape[0] != height_px:
        rgb = cv2.resize(rgb, (2 * height_px, height_px), interpolation=cv2.INTER_AREA)
    return roll_panorama(rgb, pano_rotation_px(rgb.shape[1], 180.0 - forward_bearing_deg))


def collect_frames(reader, args: argparse.Namespace, tiles: TileSet, truth: Truth, pano_dir: Path,
                   counts: Counter) -> list[Frame]:
    """Walk the panoramas in stamp order; write the kept ones (north-aligned JPEG) as they come."""
    conns = _connections(reader, args.panorama_topic, IMAGE_TYPES, "panorama")
    frames: list[Frame] = []
    total = sum(c.msgcount for c in conns)
    for conn, log_ns, raw in tqdm(reader.messages(connections=conns), total=total, desc=f"{args.city} panoramas",
                                  unit="frame", disable=args.no_progress):
        counts["panoramas read"] += 1
        msg = reader.deserialize(raw, conn.msgtype)
        t = _stamp_ns(msg, log_ns)
        en, course = truth.at(t), truth.course_deg(t)
        if en is None or course is None:
            counts["skipped: no truth around the stamp"] += 1
            continue
        if course[1] < args.min_speed_mps:
            counts[f"skipped: slower than {args.min_speed_mps:g} m/s"] += 1
            continue
        if frames and float(np.hypot(*(en - frames[-1].en_m))) < args.min_spacing_m:
            counts[f"skipped: within {args.min_spacing_m:g} m of the last kept"] += 1
            continue
        cover = tiles.tiles_covering_utm(float(en[0]), float(en[1]))
        if len(cover) != 4:
            counts["skipped: not inside four tiles"] += 1
            continue
        lat, lon = geo.utm_to_latlon(float(en[0]), float(en[1]), tiles.zone)
        name = f"{args.city}{len(frames):06d},{lat:.9f},{lon:.9f},.jpg"
        if not (pano_dir / name).exists():
            try:
                rgb = _decode(msg, conn.msgtype)
            except ValueError:
                counts["skipped: panorama does not decode"] += 1
                continue
            image = _north_aligned(rgb, course[0] + args.camera_yaw_deg, args.pano_height_px)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding of {name} failed")
            write_bytes_atomic(pano_dir / name, jpeg.tobytes())
        frames.append(Frame(name, float(lat), float(lon), en, [c.tile_id for c in cover]))
        counts["panoramas kept"] += 1
    return frames


def test_blocks(frames: list[Frame], block_m: float, test_fraction: float) -> np.ndarray:
    """(len(frames),) bool: frame in the test half, every k-th block of `block_m` metres along the drive."""
    if not frames:
        return np.zeros(0, bool)
    steps = [0.0] + [float(np.hypot(*(b.en_m - a.en_m))) for a, b in zip(frames, frames[1:])]
    block = (np.cumsum(steps) // block_m).astype(int)
    k = max(2, round(1.0 / test_fraction))
    return block % k == k - 1


def write_city(args: argparse.Namespace, tiles: TileSet, frames: list[Frame]) -> dict:
    """Satellite images, label files and dataset.json for the kept frames; returns the city's summary."""
    root, city = Path(args.out), args.city
    sat_dir = root / city / "satellite"
    sat_dir.mkdir(parents=True, exist_ok=True)
    distance, _ = cKDTree(np.stack([f.en_m for f in frames])).query(
        np.column_stack([tiles.easting_m, tiles.northing_m]), distance_upper_bound=args.scope_m)
    near = {int(i) for i in np.flatnonzero(np.isfinite(distance))}
    used = sorted(near | {t for f in frames for t in f.tiles})
    names = {t: f"satellite_{tiles.lat_deg[t]:.9f}_{tiles.lon_deg[t]:.9f}.png" for t in used}
    for t in tqdm(used, desc=f"{city} tiles", unit="tile", disable=args.no_progress):
        if not (sat_dir / names[t]).exists():
            image = cv2.imread(str(tiles.image_path(t)), cv2.IMREAD_COLOR)  # 8-bit BGR whatever the format
            if image is None:
                raise DatasetError(f"tile image {tiles.image_path(t)} cannot be decoded; crossview-tiles verify")
            write_bytes_atomic(sat_dir / names[t], cv2.imencode(".png", image)[1].tobytes())
    gsd = tiles.tile_size_m / tiles.tile_px
    lines = []
    for f in frames:
        parts = [f.name]
        for t in f.tiles:
            da = (tiles.northing_m[t] - f.en_m[1]) / gsd
            db = (tiles.easting_m[t] - f.en_m[0]) / gsd
            parts += [names[t], f"{da:.6f}", f"{db:.6f}"]
        lines.append(" ".join(parts) + "\n")
    test = test_blocks(frames, args.block_m, args.test_fraction)
    split_dir = root / "splits" / city
    listing = sorted(names.values(), key=lambda s: tuple(float(v) for v in s[10:-4].split("_")))
    write_text_atomic(split_dir / "satellite_list.txt", "\n".join(listing) + "\n")
    write_text_atomic(split_dir / "pano_label_balanced.txt", "".join(lines))
    write_text_atomic(split_dir / "same_area_balanced_train.txt", "".join(x for x, s in zip(lines, test) if not s))
    write_text_atomic(split_dir / "same_area_balanced_test.txt", "".join(x for x, s in zip(lines, test) if s))
    return {"panoramas": len(frames), "test_panoramas": int(test.sum()), "tiles": len(used)}


def _stamp(args: argparse.Namespace, tiles: TileSet) -> dict:
    keys = ("bags", "panorama_topic", "truth_topic", "camera_yaw_deg", "min_speed_mps", "min_spacing_m",
            "max_truth_gap_s", "max_truth_sigma_m", "scope_m", "block_m", "test_fraction", "pano_height_px",
            "jpeg_quality")
    stamp = {k: getattr(args, k) for k in keys}
    stamp["bags"] = [str(Path(b).resolve()) for b in args.bags]
    stamp["tiles"] = {"path": str(Path(args.tiles).resolve()), "utm_zone": str(tiles.zone),
                      "tile_size_m": tiles.tile_size_m, "tile_px": tiles.tile_px}
    return stamp


def _prepare_root(args: argparse.Namespace, tiles: TileSet, stamp: dict) -> dict:
    """dataset.json so far (refusing another tile size); the city's folder fresh or resumable."""
    root = Path(args.out)
    manifest_path = root / "dataset.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest and manifest.get("format") != FORMAT:
        raise DatasetError(f"{root} holds another kind of dataset ({manifest.get('format')}); use another --out")
    size = manifest.get("vigor_config", {})
    if size and (size["tile_size_m"], size["sat_px"]) != (tiles.tile_size_m, tiles.tile_px):
        raise DatasetError(f"{root} holds {size['tile_size_m']} m / {size['sat_px']} px tiles; this tile set has "
                           f"{tiles.tile_size_m} m / {tiles.tile_px} px (one dataset, one tile size)")
    city_dir = root / args.city
    previous = manifest.get("sources", {}).get(args.city) or _read_json(city_dir / ".bag_dataset.json")
    if city_dir.exists() and previous != stamp:
        if not args.overwrite:
            raise DatasetError(f"{city_dir} was made from other bags or settings; pass --overwrite to replace it")
        shutil.rmtree(city_dir)
        shutil.rmtree(root / "splits" / args.city, ignore_errors=True)
    (city_dir / "panorama").mkdir(parents=True, exist_ok=True)
    write_text_atomic(city_dir / ".bag_dataset.json", json.dumps(stamp, indent=2))
    return manifest


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def from_bag(args: argparse.Namespace) -> dict:
    """The whole conversion (module docstring); returns the city's summary."""
    if any(ch in args.city for ch in "/\\, ") or not args.city:
        raise DatasetError(f"--city {args.city!r} must be a non-empty name without '/', '\\', ',' or spaces")
    for bag in args.bags:
        if not Path(bag).exists():
            raise DatasetError(f"bag {bag} does not exist")
    try:
        tiles = TileSet.open(args.tiles)
        tiles.image_path(0)
    except TileSetError as exc:
        raise DatasetError(str(exc)) from None
    stamp = _stamp(args, tiles)
    manifest = _prepare_root(args, tiles, stamp)
    counts: Counter = Counter()
    with _reader([Path(b) for b in args.bags]) as reader:
        truth = read_truth(reader, args.truth_topic, tiles.zone, max_sigma_m=args.max_truth_sigma_m,
                           max_gap_s=args.max_truth_gap_s, counts=counts)
        frames = collect_frames(reader, args, tiles, truth, Path(args.out) / args.city / "panorama", counts)
    if not frames:
        raise DatasetError(f"no panorama kept ({dict(counts)}); check the topics, the truth and the tile coverage")
    summary = {**write_city(args, tiles, frames), "counts": dict(counts)}
    cities = [c for c in manifest.get("cities", []) if c != args.city] + [args.city]
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cities": cities,
        "cross_area": {"train": cities, "test": []},  # your data trains; evaluate with --split same_test
        "conventions": {
            "delta": "(da, db) = ((N_tile - N_pano), (E_tile - E_pano)) / gsd; row = sat_px/2 + da, col = sat_px/2 - db",
            "panorama": "equirectangular, grid north in the middle column, azimuth increasing to the right",
            "satellite": "north-up on the UTM grid of the tile set's zone",
        },
        "vigor_config": {"tile_size_m": tiles.tile_size_m, "sat_px": tiles.tile_px},
        "sources": {**manifest.get("sources", {}), args.city: stamp},
        "summaries": {**manifest.get("summaries", {}), args.city: summary},
    }
    write_text_atomic(Path(args.out) / "dataset.json", json.dumps(manifest, indent=2))
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossview-dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("from-bag", help="recorded panoramas + RTK truth + a tile set -> a VIGOR-layout city",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 folders (MCAP or sqlite3)")
    b.add_argument("--tiles", required=True, help="tile set of the area (crossview-tiles build)")
    b.add_argument("--out", required=True, help="dataset root (created; another city may already be in it)")
    b.add_argument("--city", required=True, help="name of this area's folder, e.g. Campus")
    b.add_argument("--panorama-topic", required=True, help="sensor_msgs/CompressedImage or Image panoramas")
    b.add_argument("--truth-topic", required=True, help="sensor_msgs/NavSatFix truth (RTK)")
    b.add_argument("--camera-yaw-deg", type=float, default=0.0,
                   help="bearing of the panorama's column 0 from the vehicle's forward, clockwise (default 0)")
    b.add_argument("--min-speed-mps", type=float, default=1.0, help="skip slower frames: no course (default 1)")
    b.add_argument("--min-spacing-m", type=float, default=5.0, help="skip frames closer to the last kept (default 5)")
    b.add_argument("--max-truth-gap-s", type=float, default=1.0,
                   help="largest gap between the two truth fixes around a frame (default 1)")
    b.add_argument("--max-truth-sigma-m", type=float, default=0.1,
                   help="drop truth fixes whose stated horizontal sigma is larger (default 0.1: RTK fixed)")
    b.add_argument("--scope-m", type=float, default=200.0,
                   help="keep the tiles within this distance of a kept frame (default 200: the runtime's scope)")
    b.add_argument("--block-m", type=float, default=100.0, help="length of the drive's split blocks (default 100)")
    b.add_argument("--test-fraction", type=float, default=0.2, help="share of blocks in the test split (default 0.2)")
    b.add_argument("--pano-height-px", type=int, default=0, help="resize panoramas to this height; 0 keeps them")
    b.add_argument("--jpeg-quality", type=int, default=90, help="panorama JPEG quality (default 90)")
    b.add_argument("--overwrite", action="store_true", help="replace a city made from other bags or settings")
    b.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-dataset; 0 done, 2 bad input (one line)."""
    args = _parser().parse_args(argv)
    bad = [f"{k} must be > 0" for k in ("block_m", "scope_m", "max_truth_gap_s") if not getattr(args, k) > 0]
    if not 0.0 < args.test_fraction <= 0.5:
        bad.append("--test-fraction must be in (0, 0.5]")
    if bad:
        print(f"crossview-dataset: error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    try:
        summary = from_bag(args)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"crossview-dataset: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"city": args.city, "root": os.fspath(args.out), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
