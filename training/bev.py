"""Top-down correlation localizer: the panorama's ground projected to a bird's-eye view (BEV) and
matched densely against aerial features, for CPU training in minutes.

Why not a global descriptor: inside a 200 m scope the tiles that must be told apart are the
neighbours of the right one, and a 2-core CPU cannot train a retrieval network that separates
them in 30 minutes (docs/results.md: 2.7 % top-1). Matching *where* things are on the ground is
far easier to learn: the panorama's lower half is projected onto the ground plane (camera height
known), a small CNN turns it into a K x K grid of features around the camera, another CNN turns
aerial images into features at the same metres per cell, and their correlation scores every
candidate camera position at once (OrienterNet-style, with the geometry fixed instead of learned).

Conventions
- Panorama: equirectangular, column 0 = camera forward, azimuth increasing clockwise seen from
  above. VIGOR panoramas have north in the middle column: their forward bearing is 180 deg.
- BEV features come out in the camera frame (up = forward) and are rotated to north-up by the
  camera's bearing (clockwise from north) before matching; at run time the bearing is searched.
- Aerial: north-up, `tile_px` square for `tile_size_m`; features at stride 4. The tiles of a tile
  set overlap by 50 %, so the central half-block of every tile's features tiles the plane: a tile's
  descriptor is that block, and a scope's blocks side by side are its feature map.
- Scores: mean cosine over the kernel's valid (inside the BEV circle) cells, in [-1, 1].

Training (train_bev): each step takes panoramas from one city within `neighbour_radius_m` of each
other, cuts for each an aerial crop of the city's tile mosaic with the camera at a random place,
and asks for the camera's cell among every position of every crop in the batch (cross-entropy
over all of them): the other positions of the same crop are the metre-level negatives, the other
crops the nearby-place negatives the runtime must reject inside its scope. Positions of other
crops within `same_place_m` of a panorama's true position are left out of its softmax.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from crossview_ros.config import check_known_keys

log = logging.getLogger("crossview_train.bev")

STRIDE = 4  # input pixels per feature cell side (aerial and BEV)
CROP_PX = 224  # training aerial crop side, px: 102 m at VIGOR's L, ~1700 candidate positions each
NEIGHBOUR_RADIUS_M = 250.0  # a batch's panoramas lie within this of its first one (scope-sized negatives)
VIGOR_BEARING_DEG = 180.0  # forward bearing of a VIGOR panorama (north in its middle column)


@dataclass
class BevConfig:
    """Geometry and size of a BEV correlation model; stored in checkpoints and model.json."""

    pano_size: tuple = (320, 640)  # (H, W) panorama input, width = 2 x height
    tile_px: int = 160  # aerial input side, px
    tile_size_m: float = 72.96  # aerial input side, m (VIGOR's L): res_m = tile_size_m / tile_px
    kernel_cells: int = 16  # BEV side in feature cells (x STRIDE px x res_m: +-14.6 m at VIGOR's L)
    camera_height_m: float = 2.0  # camera above the ground for the ground-plane projection, m
    channels: int = 32  # width of the first CNN stages (the last doubles it)
    feature_dim: int = 16  # channels of the matched features
    mean: tuple = (0.5, 0.5, 0.5)  # input normalisation (images scaled to 0..1 first)
    std: tuple = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        self.pano_size = tuple(int(v) for v in self.pano_size)
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if self.pano_size[1] != 2 * self.pano_size[0]:
            raise ValueError(f"pano_size must be (H, 2H), got {self.pano_size}")
        if self.tile_px % (2 * STRIDE) or self.kernel_cells < 2 or self.kernel_cells % 2:
            raise ValueError("tile_px must be a multiple of 8 and kernel_cells an even number >= 2")
        if not (self.tile_size_m > 0 and self.camera_height_m > 0):
            raise ValueError("tile_size_m and camera_height_m must be > 0")

    @property
    def res_m(self) -> float:
        """Metres per aerial/BEV input pixel."""
        return self.tile_size_m / self.tile_px

    @property
    def cell_m(self) -> float:
        """Metres per feature cell."""
        return self.res_m * STRIDE

    @property
    def block_cells(self) -> int:
        """Side of a tile's central half-block in cells: its descriptor covers block_cells^2 cells."""
        return self.tile_px // STRIDE // 2

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BevConfig:
        check_known_keys(cls, values, what="BEV model config")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _cnn(cin: int, c: int, out: int) -> nn.Sequential:
    def block(i: int, o: int, s: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
    return nn.Sequential(*block(cin, c), *block(c, c, 2), *block(c, c), *block(c, 2 * c, 2), *block(2 * c, 2 * c),
                         *block(2 * c, 2 * c), nn.Conv2d(2 * c, out, 1))


def bev_sampling_grid(config: BevConfig) -> Tensor:
    """(1, S, S, 2) grid_sample coordinates into a panorama padded by one column on each side.

    BEV pixel (row, col): x right, y forward of the camera, at res_m; ground point at camera
    height h seen at azimuth atan2(x, y) clockwise from forward and depression atan(h / d).
    """
    h_px, w_px = config.pano_size
    side = config.kernel_cells * STRIDE
    xs = (torch.arange(side, dtype=torch.float64) + 0.5 - side / 2) * config.res_m
    y, x = torch.meshgrid(-xs, xs, indexing="ij")  # row 0 = farthest forward
    dist = torch.hypot(x, y).clamp(min=0.25)
    azimuth = torch.remainder(torch.atan2(x, y), 2 * math.pi)  # clockwise from forward
    depression = torch.atan(config.camera_height_m / dist)
    col = azimuth / (2 * math.pi) * w_px - 0.5 + 1.0  # +1: the padded column on the left
    row = (math.pi / 2 + depression) / math.pi * h_px - 0.5
    gx = (col + 0.5) / (w_px + 2) * 2 - 1  # align_corners=False
    gy = (row + 0.5) / h_px * 2 - 1
    return torch.stack([gx, gy], dim=-1).float()[None]


def circle_mask(cells: int) -> Tensor:
    """(1, 1, K, K) 1 inside the BEV's inscribed circle: corners are lost when it rotates."""
    c = torch.arange(cells, dtype=torch.float32) + 0.5 - cells / 2
    return (torch.hypot(c[:, None], c[None, :]) <= cells / 2).float()[None, None]


def rotation_grid(bearing_rad: Tensor, cells: int) -> Tensor:
    """affine_grid that turns camera-frame maps (up = forward) into north-up maps for the bearings."""
    cos, sin = torch.cos(bearing_rad), torch.sin(bearing_rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], -2)
    return F.affine_grid(theta.float(), [len(bearing_rad), 1, cells, cells], align_corners=False)


class BevModel(nn.Module):
    """Ground (panorama -> BEV features) and aerial (image -> feature map) encoders, not shared."""

    def __init__(self, config: BevConfig, name: str = "bev_small") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.ground_cnn = _cnn(3, config.channels, config.feature_dim)
        self.aerial_cnn = _cnn(3, config.channels, config.feature_dim)
        self.register_buffer("bev_grid", bev_sampling_grid(config), persistent=False)
        self.register_buffer("mask", circle_mask(config.kernel_cells), persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))

    def bev_image(self, pano: Tensor) -> Tensor:
        """(B, 3, H, W) normalised panorama -> (B, 3, S, S) ground-plane view, camera frame."""
        padded = torch.cat([pano[..., -1:], pano, pano[..., :1]], dim=-1)
        return F.grid_sample(padded, self.bev_grid.expand(pano.shape[0], -1, -1, -1), mode="bilinear",
                             padding_mode="border", align_corners=False)

    def ground_features(self, pano: Tensor) -> Tensor:
        """(B, C, K, K) unit features of the ground around the camera, camera frame, zero outside the circle."""
        return F.normalize(self.ground_cnn(self.bev_image(pano)), dim=1) * self.mask

    def aerial_features(self, image: Tensor) -> Tensor:
        """(B, C, h, w) unit features of north-up aerial images, one per STRIDE x STRIDE pixels."""
        return F.normalize(self.aerial_cnn(image), dim=1)

    def north_up(self, ground: Tensor, bearing_rad: Tensor) -> Tensor:
        """Rotate camera-frame features by each camera's forward bearing (clockwise from north)."""
        grid = rotation_grid(bearing_rad.to(ground.device), ground.shape[-1])
        return F.grid_sample(ground, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * self.mask

    def correlate(self, ground_north: Tensor, aerial: Tensor) -> Tensor:
        """(Q, C, K, K) x (T, C, h, w) -> (T, Q, h-K+1, w-K+1) mean cosine over the circle's cells."""
        return F.conv2d(aerial, ground_north) / self.mask.sum()

    def block(self, aerial: Tensor) -> Tensor:
        """The central half-block of tile feature maps: the tile's descriptor, (B, C, b, b)."""
        b = self.config.block_cells
        o = (aerial.shape[-1] - b) // 2
        return aerial[..., o:o + b, o:o + b]


# --------------------------------------------------------------------------- data


@dataclass
class CityMosaic:
    """The tiles' central blocks of one city side by side: one seamless north-up image."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at res_m
    e0: float  # UTM easting of the left edge, m
    n0: float  # UTM northing of the top edge, m
    res_m: float
    tile_rc: np.ndarray  # (M_city, 2) top-left (row, col) of each tile's block in px
    tiles: np.ndarray  # (M_city,) split tile indices

    def pixel(self, en: np.ndarray) -> np.ndarray:
        """(.., 2) UTM (E, N) -> (.., 2) (row, col) in px (continuous)."""
        en = np.asarray(en, np.float64)
        return np.stack([(self.n0 - en[..., 1]) / self.res_m, (en[..., 0] - self.e0) / self.res_m], axis=-1)


def build_mosaics(split, sats: np.ndarray, sat_en: np.ndarray, config: BevConfig) -> dict[int, CityMosaic]:
    """One CityMosaic per city of the split from its tiles (sats: (M, tile_px, tile_px, 3) RGB).

    Works for real VIGOR (tiles on a regular 50 % overlap grid) and our synthetic cities alike:
    each tile's centre is rounded to the block grid; a tile off the grid by more than 10 % of a
    block is an error (the mosaic would be wrong).
    """
    out = {}
    half = config.tile_px // 2  # block side in px
    for c in range(len(split.cities)):
        idx = np.flatnonzero(split.sat_city == c)
        if not len(idx):
            continue
        en = sat_en[idx]
        e0 = en[:, 0].min() - half * config.res_m / 2
        n0 = en[:, 1].max() + half * config.res_m / 2
        rc_f = np.stack([(n0 - en[:, 1]) / config.res_m - half / 2, (en[:, 0] - e0) / config.res_m - half / 2], 1)
        rc = np.round(rc_f / half).astype(int) * half
        off = np.abs(rc_f - rc).max()
        if off > 0.1 * half:
            raise ValueError(f"tiles of {split.cities[c]} are not on a 50 % overlap grid (off by {off:.1f} px)")
        image = np.zeros((rc[:, 0].max() + half, rc[:, 1].max() + half, 3), np.uint8)
        q = half // 2
        for t, (r, cc) in zip(idx, rc):
            image[r:r + half, cc:cc + half] = sats[t][q:q + half, q:q + half]
        out[c] = CityMosaic(image, float(e0), float(n0), config.res_m, rc, idx)
    return out


def _to_tensor(images: np.ndarray, config: BevConfig) -> Tensor:
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # a slice of a memory-mapped cache
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _jitter(images: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Per-image colour gain and brightness offset (the views' camera responses differ)."""
    if strength <= 0:
        return images
    n = len(images)
    gain = rng.uniform(1 - strength, 1 + strength, (n, 1, 1, 3))
    bias = rng.uniform(-100 * strength, 100 * strength, (n, 1, 1, 1))
    return np.clip(images.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


@dataclass
class BevBatch:
    panos: np.ndarray  # (B, H, W, 3) uint8
    bearing_rad: np.ndarray  # (B,) forward bearing of each panorama
    crops: np.ndarray  # (B, A, A, 3) uint8
    target: np.ndarray  # (B,) index into the flattened (crop, row, col) positions
    exclude: np.ndarray  # (B, B, P, P) bool: positions showing the query's place in another crop


def sample_batch(rng: np.random.Generator, panos: np.ndarray, pano_en: np.ndarray, pano_city: np.ndarray,
                 train_idx: np.ndarray, mosaics: dict[int, CityMosaic], config: BevConfig, *, batch_size: int,
                 crop_px: int, neighbour_radius_m: float, rotation_deg: float, photometric: float,
                 same_place_m: float = 6.0) -> BevBatch:
    """One training batch: GPS-near panoramas of one city, each with a crop holding its camera."""
    k = config.kernel_cells
    n_pos = crop_px // STRIDE - k + 1
    anchor = train_idx[rng.integers(len(train_idx))]
    pool = train_idx[pano_city[train_idx] == pano_city[anchor]]
    near = pool[np.hypot(*(pano_en[pool] - pano_en[anchor]).T) < neighbour_radius_m]
    pool = near if len(near) >= batch_size else pool
    idx = rng.choice(pool, batch_size, replace=False)
    mosaic = mosaics[int(pano_city[anchor])]
    px = mosaic.pixel(pano_en[idx])
    lo, hi = STRIDE * k / 2, crop_px - STRIDE * k / 2 - 1
    origins = np.zeros((batch_size, 2), int)
    crops = np.empty((batch_size, crop_px, crop_px, 3), np.uint8)
    target = np.zeros(batch_size, np.int64)
    lim = np.array(mosaic.image.shape[:2]) - crop_px
    for j in range(batch_size):
        at = rng.uniform(lo, hi, 2)
        origins[j] = np.clip(np.round(px[j] - at), 0, lim).astype(int)
        r0, c0 = origins[j]
        crops[j] = mosaic.image[r0:r0 + crop_px, c0:c0 + crop_px]
        cell = np.clip(np.round((px[j] - origins[j]) / STRIDE - k / 2), 0, n_pos - 1).astype(int)
        target[j] = (j * n_pos + cell[0]) * n_pos + cell[1]
    centres = (np.arange(n_pos) + k / 2) * STRIDE  # camera px of each position inside a crop
    rows = origins[None, :, 0, None, None] + centres[None, None, :, None]  # (1, T, P, 1)
    cols = origins[None, :, 1, None, None] + centres[None, None, None, :]  # (1, T, 1, P)
    dist_m = np.hypot(rows - px[:, None, None, None, 0], cols - px[:, None, None, None, 1]) * config.res_m
    exclude = dist_m < same_place_m
    exclude[np.arange(batch_size), np.arange(batch_size)] = False
    shift = np.zeros(batch_size, int)
    if rotation_deg > 0:
        w = panos.shape[2]
        shift = np.round(rng.uniform(-rotation_deg, rotation_deg, batch_size) / 360 * w).astype(int)
    images = np.stack([np.roll(panos[i], s, axis=1) for i, s in zip(idx, shift)])
    bearing = np.radians(VIGOR_BEARING_DEG - shift * 360.0 / panos.shape[2])
    return BevBatch(_jitter(images, rng, photometric), bearing, _jitter(crops, rng, photometric / 2), target, exclude)


def batch_loss(model: BevModel, batch: BevBatch) -> tuple[Tensor, float]:
    """Cross-entropy of each panorama's true cell among all positions of all crops; and its accuracy."""
    ground = model.north_up(model.ground_features(_to_tensor(batch.panos, model.config)),
                            torch.from_numpy(batch.bearing_rad))
    aerial = model.aerial_features(_to_tensor(batch.crops, model.config))
    logits = model.correlate(ground, aerial).transpose(0, 1) * model.logit_scale  # (Q, T, P, P)
    logits = logits.masked_fill(torch.from_numpy(batch.exclude), -1e4).flatten(1)
    target = torch.from_numpy(batch.target)
    loss = F.cross_entropy(logits, target)
    return loss, float((logits.argmax(1) == target).float().mean())


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def tile_blocks(model: BevModel, sats: np.ndarray, batch_size: int = 64, progress: bool = False) -> Tensor:
    """(M, C, b, b) descriptors of tiles (their central feature blocks), as the runtime stores them."""
    out = []
    for i in tqdm(range(0, len(sats), batch_size), desc="tiles", unit="batch", disable=not progress):
        out.append(model.block(model.aerial_features(_to_tensor(sats[i:i + batch_size], model.config))))
    return torch.cat(out)


def block_mosaic(blocks: Tensor, tile_rc_px: np.ndarray, block_px: int) -> tuple[Tensor, np.ndarray]:
    """Blocks side by side at their grid places: (C, Hc, Wc) map and each tile's (row, col) in blocks."""
    grid = (np.asarray(tile_rc_px) // block_px).astype(int)
    grid -= grid.min(axis=0)
    b = blocks.shape[-1]
    rows, cols = grid.max(axis=0) + 1
    fmap = blocks.new_zeros((blocks.shape[1], rows * b, cols * b))
    for t, (r, c) in enumerate(grid):
        fmap[:, r * b:(r + 1) * b, c * b:(c + 1) * b] = blocks[t]
    return fmap, grid


@torch.no_grad()
def score_blocks(model: BevModel, ground_north: Tensor, fmap: Tensor, grid: np.ndarray) -> tuple[Tensor, Tensor]:
    """Best score of every tile (camera inside its block) and its cell inside the block.

    ground_north (Q, C, K, K); fmap (C, Hc, Wc) from block_mosaic. Returns (Q, M) scores and
    (Q, M, 2) (row, col) of the best camera cell within each tile's block (cell units, 0..b).
    """
    k = model.config.kernel_cells
    b = model.config.block_cells
    pad = k // 2
    padded = F.pad(fmap[None], (pad, pad - 1, pad, pad - 1))  # position (i, j): camera at the corner of cell (i, j)
    scores = model.correlate(ground_north, padded)[0]  # (Q, Hc, Wc)
    q = len(scores)
    rows, cols = fmap.shape[1] // b, fmap.shape[2] // b
    per_block = scores.reshape(q, rows, b, cols, b).permute(0, 1, 3, 2, 4).reshape(q, rows, cols, b * b)
    best, arg = per_block.max(dim=-1)
    t_r, t_c = torch.from_numpy(grid[:, 0]), torch.from_numpy(grid[:, 1])
    best_t = best[:, t_r, t_c]
    arg_t = arg[:, t_r, t_c]
    return best_t, torch.stack([arg_t // b, arg_t % b], dim=-1)


def bev_similarity(model: BevModel, split, panos: np.ndarray, sats: np.ndarray, *, batch_size: int = 16,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Tile scores (N, M) and offsets (N, M, 2) as (dE, dN)/L of the best camera cell of each tile.

    A query is scored against the tiles of its own city only (others get -inf), as a query is
    never compared with another city in the protocols. Panoramas are VIGOR-aligned (bearing 180).
    """
    model.eval()
    cfg = model.config
    _, sat_en = split.metric_positions()
    blocks = tile_blocks(model, sats, progress=progress)
    n, m = len(split), len(sats)
    sim = np.full((n, m), -np.inf, np.float32)
    offsets = np.zeros((n, m, 2), np.float32)
    b = cfg.block_cells
    for c in range(len(split.cities)):
        tiles = np.flatnonzero(split.sat_city == c)
        queries = np.flatnonzero(split.pano_city == c)
        if not len(tiles) or not len(queries):
            continue
        mosaic = build_mosaics(_CitySplit(split, c), sats, sat_en, cfg)[c]
        fmap, grid = block_mosaic(blocks[mosaic.tiles], mosaic.tile_rc, cfg.tile_px // 2)
        for i in tqdm(range(0, len(queries), batch_size), desc=f"{split.cities[c]} queries", unit="batch",
                      disable=not progress):
            q = queries[i:i + batch_size]
            with torch.no_grad():
                g = model.ground_features(_to_tensor(panos[q], cfg))
                g = model.north_up(g, torch.full((len(q),), math.radians(VIGOR_BEARING_DEG)))
                best, cell = score_blocks(model, g, fmap, grid)
            sim[np.ix_(q, mosaic.tiles)] = best.numpy()
            # position (i, j) puts the camera on the corner between cells, as in training; the
            # tile centre is the corner b / 2 cells into its block
            d_row = (cell[..., 0].numpy() - b / 2) * cfg.cell_m
            d_col = (cell[..., 1].numpy() - b / 2) * cfg.cell_m
            offsets[np.ix_(q, mosaic.tiles)] = np.stack([d_col, -d_row], -1) / cfg.tile_size_m
    return sim, offsets


class _CitySplit:
    """The attributes build_mosaics reads, restricted to one city (others appear empty)."""

    def __init__(self, split, city: int) -> None:
        self.cities = split.cities
        self.sat_city = np.where(split.sat_city == city, city, -1)


# --------------------------------------------------------------------------- training


def create_bev_model(name: str = "bev_small", **overrides: Any) -> BevModel:
    """The BEV model with BevConfig overrides (random init: it trains in minutes from scratch)."""
    return BevModel(BevConfig.from_dict(dict(overrides)), name=name)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train_bev(config: Any, out: str | Path, *, tile_size_m: float, progress: bool = True,
              stop_after_steps: int | None = None) -> Path:
    """crossview-train for BEV models (config: train.TrainConfig, model == "bev_small").

    Steps = epochs x (training panoramas / batch size); with time_budget_min the cosine schedule
    runs over the number of steps that fit the budget (measured on the first 20 steps), so a
    short budget still anneals. Resumable: last.pt holds the weights, optimiser, step, the
    planned total and the RNG state, written atomically every checkpoint_every steps.
    """
    from crossview_training.datasets import cached_images, load_vigor_split
    from crossview_training.models import model_hash, read_checkpoint, save_checkpoint

    out = Path(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    bev_cfg = BevConfig.from_dict({"tile_size_m": tile_size_m, **dict(config.model_overrides)})
    model = BevModel(bev_cfg)
    split = load_vigor_split(config.data, f"{config.area}_train")
    h, w = bev_cfg.pano_size
    panos, sats = cached_images(split, (h, w), (bev_cfg.tile_px, bev_cfg.tile_px), progress=progress)
    panos, sats = np.asarray(panos), np.asarray(sats)
    pano_en, sat_en = split.metric_positions()
    mosaics = build_mosaics(split, sats, sat_en, bev_cfg)
    smallest = min(min(m.image.shape[:2]) for m in mosaics.values())
    crop_px = min(CROP_PX, smallest // STRIDE * STRIDE)  # small (test) cities: the whole city
    if crop_px < bev_cfg.kernel_cells * STRIDE + STRIDE:
        raise ValueError(f"cities of {config.data} are too small for a {bev_cfg.kernel_cells}-cell BEV")
    train_idx = np.arange(len(split))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(split) // config.batch_size)
    total = steps_per_epoch * config.epochs
    step = 0
    rng_state: dict | None = None
    last = out / "last.pt"
    if last.exists():
        ckpt = read_checkpoint(last)
        if ckpt.get("train_config") != config.to_dict():
            raise ValueError(f"{last} was written with another config; use a new --out or the same settings")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, total = int(ckpt["global_step"]), int(ckpt["total_steps"])
        rng_state = json.loads(ckpt["numpy_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed from %s at step %d of %d", last, step, total)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    rng = np.random.default_rng([config.seed, 0xBE7])
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    def save(path: Path) -> None:
        save_checkpoint(model, path, train_config=config.to_dict(), optimizer=optimizer.state_dict(),
                        global_step=step, total_steps=total, numpy_rng=json.dumps(rng.bit_generator.state),
                        torch_rng=torch.get_rng_state(), model_hash=model_hash(model),
                        tile_size_m=bev_cfg.tile_size_m)

    started = time.monotonic()
    budget_s = 60 * config.time_budget_min
    planned = False
    first_step = step
    bar = tqdm(total=total, initial=step, desc="bev", unit="step", disable=not progress)
    recent: list[tuple[float, float]] = []
    model.train()
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, config.lr, config.warmup_steps)
        batch = sample_batch(rng, panos, pano_en, split.pano_city, train_idx, mosaics, bev_cfg,
                             batch_size=config.batch_size, crop_px=crop_px, neighbour_radius_m=NEIGHBOUR_RADIUS_M,
                             rotation_deg=config.rotation_deg, photometric=config.photometric)
        loss, acc = batch_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        recent = (recent + [(loss.item(), acc)])[-50:]
        bar.update()
        bar.set_postfix(loss=f"{np.mean([r[0] for r in recent]):.3f}", acc=f"{np.mean([r[1] for r in recent]):.2f}")
        elapsed = time.monotonic() - started
        if budget_s > 0 and step - first_step >= 20 and (not planned or step % 50 == 0):
            # re-planned as the pace changes (a busy machine), so the schedule ends with the budget
            done_here = step - first_step
            fit = int(step + (budget_s - elapsed) / (elapsed / done_here))
            if not planned or abs(fit - total) > 0.02 * total:
                log.info("time budget %.1f min: planning %d steps (was %d)", config.time_budget_min, fit, total)
                total = max(step + 1, min(fit, steps_per_epoch * config.epochs))
                bar.total = total
            planned = True
        if stop_after_steps is not None and step >= stop_after_steps:
            save(last)
            bar.close()
            return last
        out_of_time = budget_s > 0 and elapsed > budget_s
        if step % config.checkpoint_every == 0 or step == total or out_of_time:
            save(last)
            with (out / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": step, "loss": float(np.mean([r[0] for r in recent])),
                                     "acc": float(np.mean([r[1] for r in recent])),
                                     "lr": optimizer.param_groups[0]["lr"], "elapsed_min": elapsed / 60}) + "\n")
        if out_of_time:
            log.warning("time budget of %.1f min passed at step %d; stopping (checkpoint kept)",
                        config.time_budget_min, step)
            break
    bar.close()
    return last


# --------------------------------------------------------------------------- export

MATCH_ROTATIONS = 36  # camera bearings searched at run time (10 deg apart; refined by a parabola)
MATCH_STRIDE = 2  # positions scored by match.onnx: every other cell (refined at stride 1 near the peak)


class _GroundGraph(nn.Module):
    """panorama -> (camera-frame features flattened, camera-frame features (B, C, K, K))."""

    def __init__(self, model: BevModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.model.ground_features(image)
        return feats.flatten(1), feats


class _AerialGraph(nn.Module):
    """tile -> (central block flattened: the tile set's descriptor, full feature map)."""

    def __init__(self, model: BevModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.model.aerial_features(image)
        return self.model.block(feats).flatten(1), feats


class _MatchGraph(nn.Module):
    """(ground (1, C, K, K) camera frame, padded aerial map (1, C, H, W)) -> scores (1, R, H', W').

    scores[0, r, i, j]: mean cosine with the camera facing bearing r x 360 / R (clockwise from
    north) and standing on the corner of cell (STRIDE_M i, STRIDE_M j) of the unpadded map.
    """

    def __init__(self, model: BevModel, rotations: int, stride: int) -> None:
        super().__init__()
        self.model = model
        self.stride = stride
        bearings = torch.arange(rotations, dtype=torch.float64) * 2 * math.pi / rotations
        self.register_buffer("grid", rotation_grid(bearings, model.config.kernel_cells), persistent=False)

    def forward(self, ground: Tensor, aerial_map: Tensor) -> Tensor:
        kernels = F.grid_sample(ground[:1].expand(self.grid.shape[0], -1, -1, -1), self.grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False) * self.model.mask
        return F.conv2d(aerial_map, kernels, stride=self.stride) / self.model.mask.sum()


def export_bev_onnx(model: BevModel, out_dir: str | Path, *, opset: int, overwrite: bool,
                    train_config: dict[str, Any] | None, seed: int = 0) -> Path:
    """ground.onnx, aerial.onnx, match.onnx and model.json (matching.kind "bev") into out_dir."""
    import datetime as dt
    import os
    import shutil
    import tempfile

    import onnxruntime as ort

    from crossview_ros.atomic import write_json_atomic
    from crossview_training.export import (
        FORMAT, FORMAT_VERSION, LAYOUT, METADATA, ExportError, _check_target, _compare, _export_graph, sha256_file,
    )
    from crossview_training.models import model_hash

    cfg = model.config
    model = model.eval()
    digest = model_hash(model)
    out_dir = Path(out_dir)
    _check_target(out_dir, digest, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    c, k = cfg.feature_dim, cfg.kernel_cells
    side = cfg.tile_px // STRIDE
    files = ("ground.onnx", "aerial.onnx", "match.onnx")
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        pano = torch.zeros(1, 3, *cfg.pano_size)
        sat = torch.zeros(1, 3, cfg.tile_px, cfg.tile_px)
        _export_graph(_GroundGraph(model), (pano,), work / files[0], opset, ["image"], ["descriptor", "features"])
        _export_graph(_AerialGraph(model), (sat,), work / files[1], opset, ["image"], ["descriptor", "features"])
        match = _MatchGraph(model, MATCH_ROTATIONS, MATCH_STRIDE).eval()  # export restores the mode it finds
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(match, (torch.zeros(1, c, k, k), torch.zeros(1, c, 3 * k, 3 * k)), str(work / files[2]),
                              dynamo=False, opset_version=opset, input_names=["ground", "aerial_map"],
                              output_names=["scores"], do_constant_folding=True,
                              dynamic_axes={"ground": {0: "batch"}, "aerial_map": {0: "batch", 2: "h", 3: "w"},
                                            "scores": {0: "batch", 2: "h_out", 3: "w_out"}})
        if model_hash(model) != digest:
            raise ExportError("the model's weights changed during export; this is a bug in the export wrappers")
        # parity: every graph in onnxruntime (CPU) against PyTorch on random inputs
        gen = torch.Generator().manual_seed(seed)
        sessions = {f: ort.InferenceSession(str(work / f), providers=["CPUExecutionProvider"]) for f in files}
        worst: dict[str, dict[str, float]] = {f: {} for f in files}
        for b in (1, 3):
            x = torch.randn(b, 3, *cfg.pano_size, generator=gen)
            y = torch.randn(b, 3, cfg.tile_px, cfg.tile_px, generator=gen)
            with torch.no_grad():
                g_ref = _GroundGraph(model)(x)
                a_ref = _AerialGraph(model)(y)
                m_ref = match(g_ref[1][:1], F.pad(a_ref[1][:1], (k // 2, k // 2 - 1, k // 2, k // 2 - 1)))
            for f, ref, inp in ((files[0], g_ref, x), (files[1], a_ref, y)):
                got = sessions[f].run(["descriptor", "features"], {"image": inp.numpy()})
                for name, g, r in zip(("descriptor", "features"), got, ref):
                    worst[f][name] = max(worst[f].get(name, 0.0), _compare(name, g, r.numpy(), f, f"random batch {b}"))
            (got,) = sessions[files[2]].run(["scores"], {
                "ground": g_ref[1][:1].numpy(),
                "aerial_map": F.pad(a_ref[1][:1], (k // 2, k // 2 - 1, k // 2, k // 2 - 1)).numpy()})
            worst[files[2]]["scores"] = max(worst[files[2]].get("scores", 0.0),
                                            _compare("features", got, m_ref.numpy(), files[2], f"random batch {b}"))
        hashes = {f: sha256_file(work / f) for f in files}
        image = {"mean": list(cfg.mean), "std": list(cfg.std), "layout": LAYOUT}
        d = c * cfg.block_cells ** 2
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_hash": digest, "name": model.name,
            "config": cfg.to_dict(), "train_config": train_config,
            "matching": {"kind": "bev", "rotations": MATCH_ROTATIONS, "match_stride": MATCH_STRIDE,
                         "kernel_cells": k, "block_cells": cfg.block_cells, "cell_m": cfg.cell_m,
                         "tile_size_m": cfg.tile_size_m, "camera_height_m": cfg.camera_height_m,
                         "logit_scale": float(model.logit_scale.detach()),
                         "meaning": "descriptor of a tile = its central feature block (C, b, b) flattened; "
                                    "the blocks of a 50 % overlap tile set tile the plane; match.onnx scores "
                                    "camera positions (cell corners, every match_stride cells) and bearings"},
            "inputs": {"ground": {"size": list(cfg.pano_size), **image},
                       "aerial": {"size": [cfg.tile_px, cfg.tile_px], **image}},
            "descriptor_dim": d,
            "outputs": {
                "descriptor": {"dim": d, "dtype": "float32", "l2_normalised": False,
                               "similarity": "correlation with the rotated ground features (match.onnx)"},
                "ground_features": {"shape": [c, k, k], "stride_px": STRIDE},
                "aerial_features": {"shape": [c, side, side], "stride_px": STRIDE},
                "offset": {"tile_size_m": cfg.tile_size_m, "meaning": "from the matched position"},
            },
            "onnx": {
                "opset": opset, "dynamic_axes": {"batch": 0}, "files": hashes,
                "graphs": {
                    files[0]: {"inputs": {"image": ["batch", 3, *cfg.pano_size]},
                               "outputs": {"descriptor": ["batch", c * k * k], "features": ["batch", c, k, k]}},
                    files[1]: {"inputs": {"image": ["batch", 3, cfg.tile_px, cfg.tile_px]},
                               "outputs": {"descriptor": ["batch", d], "features": ["batch", c, side, side]}},
                    files[2]: {"inputs": {"ground": ["batch", c, k, k], "aerial_map": ["batch", c, "h", "w"]},
                               "outputs": {"scores": ["batch", MATCH_ROTATIONS, "h_out", "w_out"]}},
                },
            },
            "parity": {"provider": "CPUExecutionProvider", "onnxruntime_version": ort.__version__,
                       "checked_on": ["random batch 1", "random batch 3"],
                       "files": {f: {o: {"max_abs_err": e} for o, e in outs.items()} for f, outs in worst.items()}},
            "exported_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "torch_version": torch.__version__,
        }
        (out_dir / METADATA).unlink(missing_ok=True)
        for stale in ("offset.onnx",):
            (out_dir / stale).unlink(missing_ok=True)
        for f in files:
            os.replace(work / f, out_dir / f)
        write_json_atomic(out_dir / METADATA, meta, sort_keys=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s (%s) to %s", model.name, digest, out_dir)
    return out_dir
