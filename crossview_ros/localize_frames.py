"""Frames for crossview-localize: panoramas with their truth and the fix each is localized with.

Three sources, one Frame type: image files (VIGOR names carry the truth), a VIGOR-layout split,
and drive bags or robot recordings read through a topic mapping (panoramas, or with a rig file the
cameras' captures, in stamp order with the fix the node would pair them with; the truth when the bag
has one). Batch
frames get VIGOR's noisy-GPS fixes (noisy_fix).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.bag.drive import DriveBag, read_bag
from crossview_ros.bag.topics import TopicMap
from crossview_ros.estimate import Fix, Truth
from crossview_ros.replay_errors import ReplayError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIGOR_SPLITS = ("same_train", "same_test", "cross_train", "cross_test")
VIGOR_CROSS_TRAIN = ("NewYork", "Seattle")  # VIGOR's cross-area training cities (when no dataset.json)
VIGOR_YAW_ENU_RAD = -math.pi / 2  # VIGOR panoramas: north in the middle column, so column 0 faces south
VIGOR_LABEL_FILES = {"same_train": "same_area_balanced_train.txt", "same_test": "same_area_balanced_test.txt",
                     "cross_train": "pano_label_balanced.txt", "cross_test": "pano_label_balanced.txt"}


class LocalizeInputError(Exception):
    """Bad input on the command line or in the files it names: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Frame:
    """One panorama to localize: where it comes from and, for evaluation, the truth."""

    path: Path
    truth: Truth | None  # from a VIGOR name, or a bag's ground truth
    city: str | None = None  # the tile set it is localized in (a VIGOR city, or a bag's index)
    data: Any = None  # bag frames: JPEG/PNG bytes, a uint8 array with `encoding`, or a rig's CameraImages
    # (localize_eval makes the CameraFrame with the localizer's rig); None = read path
    stamp_s: float | None = None  # bag frames: the panorama's stamp
    odometry: np.ndarray | None = None  # bag frames: (k, 40) odometry since the previous frame: stamp_s, x_m, y_m,
    # yaw_rad, then the 36 pose covariance values (what Localizer.add_odometry takes), up to this frame's stamp
    encoding: str | None = None  # a raw panorama's rgb8 | bgr8 | mono8 (None: encoded bytes)


def spread(count: int, limit: int) -> np.ndarray:
    """Indices of at most `limit` of `count` items, evenly spread (all when limit is 0)."""
    if 0 < limit < count:
        return np.unique(np.linspace(0, count - 1, limit).round().astype(int))
    return np.arange(count)


def vigor_truth(path: Path) -> Truth | None:
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


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], bool]:
    """Files to process, and whether a folder was among the inputs."""
    files: list[Path] = []
    folder = False
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = True
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise LocalizeInputError(f"folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} panoramas")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise LocalizeInputError(f"panorama {path} does not exist")
    return files, folder


def named_frames(files: Sequence[Path], limit: int) -> list[Frame]:
    """VIGOR-named panorama files as frames (their names are the truth), at most `limit` of them."""
    frames = [Frame(p, vigor_truth(p)) for p in files]
    unnamed = [f.path.name for f in frames if f.truth is None]
    if unnamed:
        raise LocalizeInputError(f"--fix LAT,LON is required: {unnamed[0]!r} is not a VIGOR name "
                                 "'<prefix>,<lat>,<lon>,.jpg' that carries its position")
    return [frames[i] for i in spread(len(frames), limit)]


def vigor_cities(root: Path, split: str) -> list[str]:
    """The cities of a VIGOR-layout root in `split` (cross-area roles from dataset.json, else VIGOR's)."""
    splits = root / "splits"
    if not splits.is_dir():
        raise LocalizeInputError(f"{root} has no splits/ folder; --vigor takes a VIGOR-layout dataset root")
    cities = sorted(p.name for p in splits.iterdir() if (p / "satellite_list.txt").is_file())
    if not cities:
        raise LocalizeInputError(f"{splits} holds no city with a satellite_list.txt")
    if split.startswith("same"):
        return cities
    manifest = root / "dataset.json"
    roles = None
    if manifest.is_file():
        try:
            roles = json.loads(manifest.read_text(encoding="utf-8")).get("cross_area")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise LocalizeInputError(f"cannot read {manifest}: {exc}") from None
    train = list(roles["train"]) if roles else [c for c in cities if c in VIGOR_CROSS_TRAIN]
    chosen = train if split == "cross_train" else [c for c in cities if c not in train]
    if not chosen:
        raise LocalizeInputError(f"split {split} of {root} has no cities (cities {cities}, cross-area training {train})")
    return chosen


def vigor_frames(root: Path, split: str, limit: int) -> list[Frame]:
    """The panoramas a VIGOR-layout split lists, each with its city and the truth of its name."""
    label_file = VIGOR_LABEL_FILES[split]
    frames: list[Frame] = []
    for city in vigor_cities(root, split):
        labels = root / "splits" / city / label_file
        if not labels.is_file():
            raise LocalizeInputError(f"{labels} is missing; is {root} a complete VIGOR-layout dataset?")
        for line in labels.read_text(encoding="utf-8").splitlines():
            if not line.split():
                continue
            path = root / city / "panorama" / line.split()[0]
            truth = vigor_truth(path)
            if truth is None:
                raise LocalizeInputError(f"{labels}: panorama name {path.name!r} is not '<prefix>,<lat>,<lon>,.jpg'")
            frames.append(Frame(path, truth, city))
    if not frames:
        raise LocalizeInputError(f"split {split} of {root} lists no panoramas")
    return [frames[i] for i in spread(len(frames), limit)]


def noisy_fix(truth: Truth, rng: np.random.Generator, half_width_m: float, stamp_s: float) -> Fix:
    """VIGOR's noisy-GPS protocol: error uniform in [-h, h] m per axis (ENU); sigma = h / sqrt(3)."""
    de, dn = rng.uniform(-half_width_m, half_width_m, size=2)
    lat, lon, _ = geo.LocalENU(truth.lat_deg, truth.lon_deg).inverse(float(de), float(dn))
    return Fix(float(lat), float(lon), stamp_s, status=0, sigma_m=half_width_m / math.sqrt(3.0))


def read_panorama(path: Path) -> bytes:
    """The encoded panorama at `path` (LocalizeInputError when it cannot be read)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LocalizeInputError(f"cannot read panorama {path}: {exc}") from None


def bag_frames(path: Path, limit: int, topics: TopicMap | None = None) -> tuple[list[Frame], list[Fix]]:
    """A bag's panoramas (or, with topics.cameras, its cameras' captures) in stamp order, each with the newest
    GNSS fix at its stamp (as the node pairs them), the odometry the node would have received since the
    previous one, and the ground truth nearest its stamp (position, and ENU yaw where the bag has one; None
    without truth)."""
    try:
        bag = read_bag(path, topics)
    except ReplayError as exc:
        raise LocalizeInputError(str(exc)) from None
    bag_fixes = sorted(bag.fixes, key=lambda f: f.stamp_ns)
    fix_stamps = np.array([f.stamp_ns for f in bag_fixes], np.int64)
    order = np.argsort(bag.panorama_stamp_ns, kind="stable")
    order = order[spread(len(order), limit)]
    frames, fixes = [], []
    odom = np.concatenate([bag.odom_stamp_s[:, None], bag.odom_pose, bag.odom_pose_cov], axis=1)
    odom_sent = 0
    for i in order:
        stamp_ns = int(bag.panorama_stamp_ns[i])
        k = int(np.searchsorted(fix_stamps, stamp_ns, side="right")) - 1
        if k < 0:
            continue  # no fix yet: the node would reject it as NO_FIX; nothing to evaluate
        f = bag_fixes[k]
        cov = None if f.covariance_enu_m2 is None else np.asarray(f.covariance_enu_m2)[:2, :2]
        fixes.append(Fix(f.lat_deg, f.lon_deg, f.stamp_ns / 1e9, status=f.status, covariance_enu_m2=cov))
        t_s = stamp_ns / 1e9
        try:
            if bag.cameras:
                data, encoding = bag.capture(int(i)), None
            else:
                data, encoding = bag.panorama_payload(int(i))
        except ReplayError as exc:
            raise LocalizeInputError(str(exc)) from None
        odom_until = int(np.searchsorted(bag.odom_stamp_s, t_s, side="right"))
        frames.append(Frame(path, _truth_near(bag, t_s), data=data, stamp_s=t_s,
                            odometry=odom[odom_sent:odom_until], encoding=encoding))
        odom_sent = max(odom_sent, odom_until)
    if not frames:
        raise LocalizeInputError(f"{path} has no {'capture' if bag.cameras else 'panorama'} after a GNSS fix")
    return frames, fixes


def _truth_near(bag: DriveBag, t_s: float) -> Truth | None:
    """The truth sample nearest the stamp (position, and the nearest true yaw if any); None without truth."""
    if not bag.has_truth:
        return None
    j = int(np.argmin(np.abs(bag.truth_stamp_s - t_s)))
    yaw = None
    if bag.has_truth_yaw:
        yaw = float(bag.truth_yaw_enu_rad[int(np.argmin(np.abs(bag.truth_yaw_stamp_s - t_s)))])
    return Truth(float(bag.truth_lat_deg[j]), float(bag.truth_lon_deg[j]), yaw)
