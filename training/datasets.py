"""Datasets: VIGOR's on-disk layout (real VIGOR and our synthetic cities alike) and CVUSA.

VIGOR (Zhu et al., CVPR 2021, section 3): every panorama lies inside four aerial images (50 %
overlap); the one whose central quarter holds it is the positive, the other three are
semi-positives. A label line is `pano sat0 d0a d0b ... sat3 d3a d3b`, the deltas being the
panorama's pixel offset from each tile centre as VIGOR's code reads them: the panorama sits at
row `S/2 + da` and column `S/2 - db` of an S x S tile (see crossview_ros/sim/vigor.py).

Splits (VIGOR section 3 and its released loader):
- same-area: every city; panoramas from `same_area_balanced_{train,test}.txt`;
- cross-area: training cities (NewYork, Seattle in VIGOR; `dataset.json` names ours) with all
  their panoramas (`pano_label_balanced.txt`), testing on the other cities.
Aerial images are the union of every city's `satellite_list.txt` in the split's cities.

Two label sets (`labels=`), same line format and sign convention, whole pixels of the 640 px image:
- "original": `splits/<City>/*.txt` as VIGOR ships them, deltas computed at VIGOR's stated
  0.114 m/px (its evaluate_from_npy.py), which is wrong by up to 12 % (Seattle);
- "corrected": SliceMatch's `splits__corrected/<City>/*__corrected.txt` (Lentsch et al., CVPR
  2023, supplementary A), `round((N_tile - N_pano, E_tile - E_pano) / gsd)` in the point's UTM
  zone at the city's zoom-20 Web Mercator resolution (VIGOR_CORRECTED_GSD_M); real VIGOR only.
docs/training.md has the folder layout and the sources.

Images are decoded once into pre-resized uint8 caches (`.crossview_cache/` under the root,
memory-mapped .npy, written atomically) so that data loading never starves the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from crossview_ros import geo
from crossview_ros.tiles import VIGOR_TILE_SIZE_M

log = logging.getLogger(__name__)

VIGOR_CITIES = ("NewYork", "Seattle", "SanFrancisco", "Chicago")
VIGOR_CROSS_TRAIN = ("NewYork", "Seattle")
VIGOR_SAT_PX = 640  # raw VIGOR aerial image side
VIGOR_GSD_M = 0.114  # VIGOR's stated ground resolution, behind the original labels
# m/px of each city's 640 px aerial images behind the corrected labels: Google's zoom 20,
# 156543.03392 x cos(lat) / 2^20 at the city's latitude (CCVPE's train_VIGOR.py, SliceMatch supp. A)
VIGOR_CORRECTED_GSD_M = {"NewYork": 0.113248, "Seattle": 0.100817, "SanFrancisco": 0.118141, "Chicago": 0.111262}
SPLITS = ("same_train", "same_test", "cross_train", "cross_test")
LABEL_SETS = ("original", "corrected")
LABEL_FOLDERS = {"original": "splits", "corrected": "splits__corrected"}  # beside the city folders
_LABEL_FILES = {"same_train": "same_area_balanced_train", "same_test": "same_area_balanced_test",
                "cross_train": "pano_label_balanced", "cross_test": "pano_label_balanced"}


def tile_iou(da_px: np.ndarray, db_px: np.ndarray, size_px: float) -> np.ndarray:
    """IoU of a tile with the tile of the same size centred on the panorama (VIGOR section 3)."""
    ox = np.clip(size_px - np.abs(np.asarray(db_px, np.float64)), 0.0, None)
    oy = np.clip(size_px - np.abs(np.asarray(da_px, np.float64)), 0.0, None)
    inter = ox * oy
    return inter / (2.0 * size_px * size_px - inter)


def parse_pano_name(name: str) -> tuple[float, float]:
    """(lat, lon) from `<prefix>,<lat>,<lon>,.jpg`."""
    parts = name.split(",")
    if len(parts) < 3:
        raise ValueError(f"panorama name {name!r} is not '<prefix>,<lat>,<lon>,.jpg'")
    return float(parts[1]), float(parts[2])


def parse_sat_name(name: str) -> tuple[float, float]:
    """(lat, lon) from `satellite_<lat>_<lon>.png`."""
    stem = name.rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) != 3 or parts[0] != "satellite":
        raise ValueError(f"satellite name {name!r} is not 'satellite_<lat>_<lon>.png'")
    return float(parts[1]), float(parts[2])


@dataclass
class VigorSplit:
    """One split, flattened: panoramas with their four tiles, and the aerial gallery."""

    root: Path
    split: str
    cities: tuple[str, ...]
    pano_paths: list[Path]  # (N,)
    pano_city: np.ndarray  # (N,) int index into cities
    pano_latlon: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N, 4) int gallery indices, positive first
    deltas_px: np.ndarray  # (N, 4, 2) VIGOR (da, db)
    sat_paths: list[Path]  # (M,)
    sat_city: np.ndarray  # (M,) int
    sat_latlon: np.ndarray  # (M, 2)
    sat_px: int  # raw aerial image side
    label_set: str = "original"  # which labels were read (LABEL_SETS)

    def __len__(self) -> int:
        return len(self.pano_paths)

    def city_gsd_m(self) -> np.ndarray:
        """(len(cities),) m per raw aerial pixel the deltas were computed with: metres = deltas x this."""
        if self.label_set == "corrected":
            unknown = [c for c in self.cities if c not in VIGOR_CORRECTED_GSD_M]
            if unknown:
                raise ValueError(f"no corrected-label resolution for cities {unknown} (real VIGOR cities only)")
            return np.array([VIGOR_CORRECTED_GSD_M[c] for c in self.cities])
        manifest = dataset_manifest(self.root)
        gsd = dataset_tile_size_m(self.root) / self.sat_px if manifest else VIGOR_GSD_M
        return np.full(len(self.cities), gsd)

    @property
    def iou(self) -> np.ndarray:
        """(N, 4) IoU of each of the four tiles with the panorama-centred tile."""
        return tile_iou(self.deltas_px[..., 0], self.deltas_px[..., 1], self.sat_px)

    def metric_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """UTM (E, N) of panoramas and tiles, each city in its own zone, (N, 2) and (M, 2)."""
        pano = np.zeros((len(self), 2))
        sat = np.zeros((len(self.sat_paths), 2))
        for c in range(len(self.cities)):
            pm, sm = self.pano_city == c, self.sat_city == c
            if not sm.any():
                continue
            lat0, lon0 = self.sat_latlon[sm].mean(axis=0)
            zone = geo.utm_zone(float(lat0), float(lon0))
            if pm.any():
                e, n, _ = geo.latlon_to_utm(self.pano_latlon[pm, 0], self.pano_latlon[pm, 1], zone)
                pano[pm] = np.stack([e, n], axis=1)
            e, n, _ = geo.latlon_to_utm(self.sat_latlon[sm, 0], self.sat_latlon[sm, 1], zone)
            sat[sm] = np.stack([e, n], axis=1)
        return pano, sat


def dataset_manifest(root: str | os.PathLike) -> dict:
    """dataset.json of a crossview-sim root (city roles, the VigorConfig it was made with); {} for real VIGOR."""
    path = Path(root) / "dataset.json"
    return json.loads(path.read_text()) if path.exists() else {}


def dataset_tile_size_m(root: str | os.PathLike) -> float:
    """Aerial image side L in metres: dataset.json's for our data, VIGOR's (640 px x 0.114 m) otherwise."""
    manifest = dataset_manifest(root)
    return float(manifest["vigor_config"]["tile_size_m"]) if manifest else VIGOR_TILE_SIZE_M


def label_dir(root: str | os.PathLike, labels: str = "original") -> Path:
    """The folder of a label set (`splits/` or `splits__corrected/`); FileNotFoundError saying where to get it."""
    if labels not in LABEL_SETS:
        raise ValueError(f"labels must be one of {LABEL_SETS}, got {labels!r}")
    path = Path(root) / LABEL_FOLDERS[labels]
    if path.is_dir():
        return path
    if labels == "corrected":
        raise FileNotFoundError(
            f"{root} has no splits__corrected/ folder: the corrected labels are a separate download "
            "(github.com/tudelft-iv/SliceMatch, VIGOR_corrected_labels/splits__corrected); put that folder "
            "beside splits/, or use labels=original")
    raise FileNotFoundError(f"{root} has no splits/ folder; is it a VIGOR-layout dataset root?")


def label_file(split: str, labels: str = "original") -> str:
    """File name of a split's label lines in a city's label folder."""
    return _LABEL_FILES[split] + ("__corrected" if labels == "corrected" else "") + ".txt"


def available_cities(root: Path, labels: str = "original") -> list[str]:
    return sorted(p.name for p in label_dir(root, labels).iterdir() if (p / "satellite_list.txt").exists())


def cross_area_cities(root: Path, labels: str = "original") -> tuple[list[str], list[str]]:
    """(train, test) cities: dataset.json's roles for our data, VIGOR's for VIGOR."""
    cities = available_cities(root, labels)
    roles = dataset_manifest(root).get("cross_area")
    if roles:
        return list(roles["train"]), list(roles["test"])
    train = [c for c in cities if c in VIGOR_CROSS_TRAIN]
    if not train or len(train) == len(cities):
        raise ValueError(f"cannot tell cross-area train/test cities in {root} (cities {cities}); "
                         "add dataset.json with {'cross_area': {'train': [...], 'test': [...]}}")
    return train, [c for c in cities if c not in train]


def load_vigor_split(root: str | os.PathLike, split: str, cities: Sequence[str] | None = None, *,
                     labels: str = "original") -> VigorSplit:
    """Read one split of a VIGOR-layout root ("same_train", "same_test", "cross_train", "cross_test").

    labels: "original" (`splits/`) or "corrected" (`splits__corrected/`, SliceMatch's files).
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = label_dir(root, labels)
    if cities is None:
        if split.startswith("same"):
            cities = available_cities(root, labels)
        else:
            train, test = cross_area_cities(root, labels)
            cities = train if split == "cross_train" else test
    cities = tuple(cities)
    name = label_file(split, labels)
    sat_paths: list[Path] = []
    sat_city: list[int] = []
    sat_index: dict[tuple[str, str], int] = {}
    pano_paths: list[Path] = []
    pano_city: list[int] = []
    tiles: list[list[int]] = []
    deltas: list[list[tuple[float, float]]] = []
    for ci, city in enumerate(cities):
        listing = folder / city / "satellite_list.txt"
        if not listing.exists():
            raise FileNotFoundError(f"{listing} is missing; city {city!r} is not in this dataset")
        for sat in listing.read_text().split():
            sat_index[(city, sat)] = len(sat_paths)
            sat_paths.append(root / city / "satellite" / sat)
            sat_city.append(ci)
        path = folder / city / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing (the {split} labels of {city})")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 13:
                raise ValueError(f"{city}/{name} line {number}: expected 13 fields, got {len(parts)}")
            try:
                tiles.append([sat_index[(city, parts[i])] for i in (1, 4, 7, 10)])
            except KeyError as exc:
                raise ValueError(f"{city}/{name} line {number}: tile {exc.args[0][1]} is not in "
                                 "satellite_list.txt") from None
            deltas.append([(float(parts[i]), float(parts[i + 1])) for i in (2, 5, 8, 11)])
            pano_paths.append(root / city / "panorama" / parts[0])
            pano_city.append(ci)
    if not pano_paths:
        raise ValueError(f"split {split} of {root} has no panoramas (cities {cities})")
    first = cv2.imread(str(sat_paths[0]), cv2.IMREAD_UNCHANGED)
    if first is None:
        raise FileNotFoundError(f"cannot read aerial image {sat_paths[0]}")
    return VigorSplit(
        root=root, split=split, cities=cities, pano_paths=pano_paths, pano_city=np.array(pano_city),
        pano_latlon=np.array([parse_pano_name(p.name) for p in pano_paths]),
        labels=np.array(tiles, dtype=np.int64), deltas_px=np.array(deltas, dtype=np.float64),
        sat_paths=sat_paths, sat_city=np.array(sat_city),
        sat_latlon=np.array([parse_sat_name(p.name) for p in sat_paths]), sat_px=int(first.shape[0]),
        label_set=labels,
    )


def _decode(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path} (missing or corrupt)")
    image = cv2.resize(image, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_cache(paths: Sequence[Path], size_hw: tuple[int, int], cache_file: Path, *, progress: bool = True) -> np.ndarray:
    """(N, H, W, 3) uint8 of `paths` resized, from a memory-mapped cache built once (atomically).

    The cache is keyed by the file list and size (a sidecar JSON); a different list rebuilds it.
    """
    key = {"size_hw": list(size_hw), "files": [str(p) for p in paths]}
    sidecar = cache_file.with_suffix(".json")
    if cache_file.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == key:
        return np.load(cache_file, mmap_mode="r")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *size_hw, 3))
    try:
        for i, path in enumerate(tqdm(paths, desc=f"cache {cache_file.stem}", unit="img", disable=not progress)):
            out[i] = _decode(path, size_hw)
        out.flush()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        del out
    # The old key must not outlive the old data (a crash before the new key is written rebuilds).
    sidecar.unlink(missing_ok=True)
    os.replace(tmp, cache_file)
    # pid in the name: DDP ranks may build the same cache at once.
    tmp_side = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp_side.write_text(json.dumps(key))
    os.replace(tmp_side, sidecar)
    return np.load(cache_file, mmap_mode="r")


CACHE_TAG_MAX_CHARS = 96  # a file name is at most 255 bytes; the tag leaves room for the size and temporary suffix


def cache_tag(split: str, cities: Sequence[str]) -> str:
    """The cache files' name for a split's cities: the names joined while short, else the first city, the
    count and a hash of the list (32 training cities joined passed the file system's 255-byte limit)."""
    tag = f"{split}_{'-'.join(cities)}"
    if len(tag) <= CACHE_TAG_MAX_CHARS:
        return tag
    digest = hashlib.sha1("\n".join(cities).encode()).hexdigest()[:12]
    return f"{split}_{cities[0]}-and-{len(cities) - 1}-more-{digest}"


def cached_images(split: VigorSplit, ground_hw: tuple[int, int], aerial_hw: tuple[int, int],
                  *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pre-resized panoramas and aerial images of a split, (N, Hg, Wg, 3) and (M, Ha, Wa, 3)."""
    cache = split.root / ".crossview_cache"
    tag = cache_tag(split.split, split.cities)
    panos = image_cache(split.pano_paths, ground_hw, cache / f"{tag}_pano_{ground_hw[0]}x{ground_hw[1]}.npy",
                        progress=progress)
    sats = image_cache(split.sat_paths, aerial_hw, cache / f"{tag}_sat_{aerial_hw[0]}x{aerial_hw[1]}.npy",
                       progress=progress)
    return panos, sats


def load_cvusa_pairs(root: str | os.PathLike, split: str = "train") -> list[tuple[Path, Path]]:
    """CVUSA's aligned (aerial, ground) pairs from `splits/train-19zl.csv` / `val-19zl.csv`.

    Each CSV line is `bingmap/19/xxx.jpg,streetview/panos/xxx.jpg,annotations/...`: the aerial
    image is centred on the panorama and the panorama's middle column faces north.
    """
    root = Path(root)
    name = {"train": "train-19zl.csv", "val": "val-19zl.csv"}.get(split)
    if name is None:
        raise ValueError(f"CVUSA split must be 'train' or 'val', got {split!r}")
    path = root / "splits" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; is {root} a CVUSA root?")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            if line.strip():
                raise ValueError(f"{path} line {number}: expected 'aerial,ground,...'")
            continue
        pairs.append((root / parts[0], root / parts[1]))
    return pairs


# --------------------------------------------------------------------------- augmentation


def roll_panorama(pano: np.ndarray, shift_px: int) -> np.ndarray:
    """Turn the camera: roll columns by shift_px (> 0 moves content right = camera turned left)."""
    return np.roll(pano, shift_px, axis=1)


def rotate_aerial(sat: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate an aerial image about its centre, counter-clockwise by angle_deg, reflecting borders."""
    h, w = sat.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle_deg, 1.0)
    return cv2.warpAffine(sat, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Brightness, contrast, per-channel gain and saturation jitter (uint8 in, uint8 out)."""
    x = image.astype(np.float32)
    gain = 1.0 + rng.uniform(-strength, strength) + rng.uniform(-strength / 3, strength / 3, 3)
    bias = rng.uniform(-strength, strength) * 40.0
    mean = x.mean()
    contrast = 1.0 + rng.uniform(-strength, strength)
    x = (x - mean) * contrast + mean
    grey = x.mean(axis=2, keepdims=True)
    sat = 1.0 + rng.uniform(-strength, strength)
    x = grey + (x - grey) * sat
    x = x * gain + bias
    return np.clip(x, 0, 255).astype(np.uint8)


def pano_rotation_px(width: int, angle_deg: float) -> int:
    """Column shift that turns a panorama by angle_deg (camera turned clockwise by that angle)."""
    return -int(round(angle_deg / 360.0 * width))


def offset_target(deltas_px: np.ndarray, sat_px: int) -> np.ndarray:
    """(dE, dN) / L of the camera relative to a tile centre, from VIGOR deltas (offset head target)."""
    deltas_px = np.asarray(deltas_px, np.float64)
    return np.stack([-deltas_px[..., 1], -deltas_px[..., 0]], axis=-1) / float(sat_px)


# --------------------------------------------------------------------------- torch datasets


class VigorPairs:
    """torch Dataset of (panorama, aerial tile) training pairs from pre-resized caches.

    Each item takes the panorama and, with probability `semi_positive_prob`, one of its
    semi-positives on which the camera lies instead of the positive (VIGOR trains on both). Returns a dict of
    ground (3, Hg, Wg) and aerial (3, Ha, Wa) float32 normalised with mean/std, `pano` index,
    `tile` gallery index, `offset` (2,) = (dE, dN)/L of the camera from that tile's centre,
    `iou` with the panorama-centred tile, and `positive` (bool).
    """

    def __init__(self, split: VigorSplit, panos: np.ndarray, sats: np.ndarray, *,
                 mean: Sequence[float], std: Sequence[float], semi_positive_prob: float = 0.0,
                 rotation_deg: float = 0.0, photometric_strength: float = 0.0, seed: int = 0) -> None:
        if len(panos) != len(split) or len(sats) != len(split.sat_paths):
            raise ValueError("image caches do not match the split (rebuild them with cached_images)")
        self.split, self.panos, self.sats = split, panos, sats
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.semi_positive_prob = float(semi_positive_prob)
        self.rotation_deg = float(rotation_deg)
        self.photometric_strength = float(photometric_strength)
        self.seed = int(seed)
        self.epoch = 0
        self.iou = split.iou  # (N, 4) IoU of each panorama with its positive and semi-positives
        half = split.sat_px / 2
        shown = np.all(np.abs(split.deltas_px) <= half, axis=2)  # (N, 4) the camera lies on the tile
        self.semi_inside = [1 + np.flatnonzero(row[1:]) for row in shown]

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on (seed, epoch, index): reproducible and resumable."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split)

    def image_tensor(self, image: np.ndarray):
        """(H, W, 3) uint8 RGB -> (3, H, W) float32 tensor, 0..1 then normalised with mean/std."""
        import torch

        x = image.astype(np.float32).transpose(2, 0, 1) / 255.0
        return torch.from_numpy((x - self.mean) / self.std)

    def __getitem__(self, index: int) -> dict:
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        k = 0
        if self.semi_positive_prob > 0 and rng.random() < self.semi_positive_prob:
            # Only semi-positives that show the camera: real VIGOR's corrected labels put it off
            # the image for some (|delta| > S/2), where no offset can be learnt (as SliceMatch, CCVPE).
            inside = self.semi_inside[index]
            if len(inside):
                k = int(inside[int(rng.integers(0, len(inside)))])
        tile = int(self.split.labels[index, k])
        pano = np.asarray(self.panos[index])
        sat = np.asarray(self.sats[tile])
        if self.rotation_deg > 0:
            pano = roll_panorama(pano, pano_rotation_px(pano.shape[1], rng.uniform(-self.rotation_deg,
                                                                                    self.rotation_deg)))
        if self.photometric_strength > 0:
            pano = photometric(pano, rng, self.photometric_strength)
            sat = photometric(sat, rng, self.photometric_strength)
        return {
            "ground": self.image_tensor(pano), "aerial": self.image_tensor(sat),
            "pano": torch.tensor(index), "tile": torch.tensor(tile),
            "offset": torch.from_numpy(offset_target(self.split.deltas_px[index, k], self.split.sat_px).astype(np.float32)),
            "iou": torch.tensor(float(self.iou[index, k])), "positive": torch.tensor(k == 0),
        }


def neighbour_batches(split: VigorSplit, batch_size: int, *, seed: int, epoch: int,
                      neighbours: int | None = None) -> list[list[int]]:
    """Batches of geographically close panoramas with no tile shared inside a batch.

    In-batch negatives then come from the same neighbourhood, which is what the runtime must
    tell apart inside its GNSS scope (Sample4Geo's GPS-sampled hard negatives); no two panoramas
    of a batch share any of their four tiles, so none is a false negative for another. Each
    batch grows from a random seed panorama through its nearest unused neighbours (closest
    first, `neighbours` = 8 x batch_size by default, i.e. a few hundred metres); what is left
    at the end is packed into batches the same way with no distance limit. Deterministic in
    (seed, epoch); every panorama appears exactly once per epoch.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng([seed, epoch, 0xBA7C])
    pos, _ = split.metric_positions()
    # Cities live in different UTM zones; push them far apart so that no batch mixes cities.
    pos = pos + split.pano_city[:, None] * 1e7
    tree = cKDTree(pos)
    k = min(len(split), neighbours or 8 * batch_size)
    unused = np.ones(len(split), bool)
    batches: list[list[int]] = []

    def grow(candidates: np.ndarray) -> list[int]:
        batch, tiles = [], set()
        for j in candidates:
            if not unused[j]:
                continue
            own = set(split.labels[j].tolist())
            if own & tiles:
                continue
            batch.append(int(j))
            tiles |= own
            unused[j] = False
            if len(batch) == batch_size:
                break
        return batch

    tried = np.zeros(len(split), bool)
    for start in rng.permutation(len(split)):
        if not unused[start] or tried[start]:
            continue
        _, near = tree.query(pos[start], k=k)
        batch = grow(np.atleast_1d(near))
        if len(batch) < batch_size // 2:  # a sparse corner: leave it to the final packing
            unused[batch] = True
            tried[batch] = True
            continue
        batches.append(batch)
    rest = np.flatnonzero(unused)
    rest = rest[rng.permutation(len(rest))]
    while unused.any():
        batches.append(grow(rest))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def subset(split: VigorSplit, indices: Sequence[int], name: str) -> VigorSplit:
    """The same split restricted to some panoramas (the aerial gallery is kept whole)."""
    import dataclasses

    idx = np.asarray(indices, dtype=np.int64)
    return dataclasses.replace(
        split, split=name, pano_paths=[split.pano_paths[i] for i in idx], pano_city=split.pano_city[idx],
        pano_latlon=split.pano_latlon[idx], labels=split.labels[idx], deltas_px=split.deltas_px[idx])
