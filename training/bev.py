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

Training (train_bev): each step cuts an aerial region the size of a search scope (REGION_PX,
233 m at VIGOR's L) from a city's tile mosaic and takes up to batch_size panoramas whose cameras
stand in it; each must find its camera's cell among every position of the region (cross-entropy
over all of them), which is the run-time question: the neighbouring cells are the metre-level
negatives, the rest of the region the look-alike places of the scope. One aerial pass serves the
whole batch, and the ground-plane views are projected once before training (view_bank), so a
step costs little more than the aerial CNN; the correlation runs by FFT, whose cost barely grows
with the view.
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
REGION_PX = 512  # training aerial region side, px: 233 m at VIGOR's L, a 200 m scope's worth of positions
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


def bev_sampling_grid(config: BevConfig, side: int | None = None) -> Tensor:
    """(1, S, S, 2) grid_sample coordinates into a panorama padded by one column on each side.

    BEV pixel (row, col): x right, y forward of the camera, at res_m; ground point at camera
    height h seen at azimuth atan2(x, y) clockwise from forward and depression atan(h / d).
    S is the model's BEV side (kernel_cells x STRIDE) unless given.
    """
    h_px, w_px = config.pano_size
    side = config.kernel_cells * STRIDE if side is None else int(side)
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


def project_ground(pano: Tensor, grid: Tensor) -> Tensor:
    """(B, 3, H, W) panoramas sampled at a bev_sampling_grid: (B, 3, S, S) ground-plane views."""
    padded = torch.cat([pano[..., -1:], pano, pano[..., :1]], dim=-1)
    return F.grid_sample(padded, grid.expand(pano.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def circle_mask(cells: int) -> Tensor:
    """(1, 1, K, K) 1 inside the BEV's inscribed circle: corners are lost when it rotates."""
    c = torch.arange(cells, dtype=torch.float32) + 0.5 - cells / 2
    return (torch.hypot(c[:, None], c[None, :]) <= cells / 2).float()[None, None]


def rotation_grid(bearing_rad: Tensor, cells: int, scale: float = 1.0) -> Tensor:
    """affine_grid that turns camera-frame maps (up = forward) into north-up maps for the bearings.

    scale < 1 samples the central part of a larger input (cells / input side) while turning it.
    """
    cos, sin = torch.cos(bearing_rad) * scale, torch.sin(bearing_rad) * scale
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
        return project_ground(pano, self.bev_grid)

    def ground_features(self, pano: Tensor) -> Tensor:
        """(B, C, K, K) unit features of the ground around the camera, camera frame, zero outside the circle."""
        return self.bev_features(self.bev_image(pano))

    def bev_features(self, bev: Tensor) -> Tensor:
        """ground_features from the ground-plane view (B, 3, S, S) itself (training precomputes views)."""
        return F.normalize(self.ground_cnn(bev), dim=1) * self.mask

    def aerial_features(self, image: Tensor) -> Tensor:
        """(B, C, h, w) unit features of north-up aerial images, one per STRIDE x STRIDE pixels."""
        return F.normalize(self.aerial_cnn(image), dim=1)

    def north_up(self, ground: Tensor, bearing_rad: Tensor) -> Tensor:
        """Rotate camera-frame features by each camera's forward bearing (clockwise from north)."""
        grid = rotation_grid(bearing_rad.to(ground.device), ground.shape[-1])
        return F.grid_sample(ground, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * self.mask

    def correlate(self, ground_north: Tensor, aerial: Tensor) -> Tensor:
        """(Q, C, K, K) x (T, C, h, w) -> (T, Q, h-K+1, w-K+1) mean cosine over the circle's cells.

        By FFT: the same numbers as conv2d(aerial, ground_north), but its cost hardly depends on
        K, so large views and scope-sized maps train and evaluate on a CPU. Positions where the
        kernel fits inside the map do not wrap around.
        """
        k = ground_north.shape[-1]
        h, w = aerial.shape[-2:]
        fa = torch.fft.rfft2(aerial, s=(h, w))
        fg = torch.fft.rfft2(ground_north, s=(h, w))
        out = torch.fft.irfft2(torch.einsum("tcij,qcij->tqij", fa, fg.conj()), s=(h, w))
        return out[..., :h - k + 1, :w - k + 1] / self.mask.sum()

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
    return _normalise(_unit(images), config)


def _unit(images: np.ndarray) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in 0..1."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # a slice of a memory-mapped cache
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _normalise(images: Tensor, config: BevConfig) -> Tensor:
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (images - mean) / std


def _jitter(images: Tensor, rng: np.random.Generator, strength: float) -> Tensor:
    """Per-image colour gain and brightness offset on 0..1 images (the views' camera responses differ)."""
    if strength <= 0:
        return images
    n = len(images)
    gain = torch.from_numpy(rng.uniform(1 - strength, 1 + strength, (n, 3, 1, 1))).float()
    bias = torch.from_numpy(rng.uniform(-strength, strength, (n, 1, 1, 1)) * 100 / 255).float()
    return (images * gain + bias).clamp(0, 1)


def view_bank_side(config: BevConfig) -> int:
    """Side of the stored ground-plane views: any rotation of the model's S x S view lies inside."""
    side = config.kernel_cells * STRIDE
    return side + 2 * math.ceil(side * (math.sqrt(2) - 1) / 2) + 2


def view_bank(config: BevConfig, panos: np.ndarray, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """(N, S', S', 3) uint8 ground-plane views of panoramas (camera frame), computed once for training.

    A step then rotates a small stored view (views_at) instead of projecting a whole panorama:
    the projection is linear, so photometric jitter applied to the view is the jitter of the
    panorama, and a view rotated by delta is the view of the panorama rolled by delta.
    """
    side = view_bank_side(config)
    grid = bev_sampling_grid(config, side)
    out = np.empty((len(panos), side, side, 3), np.uint8)
    for i in tqdm(range(0, len(panos), batch_size), desc="ground views", unit="batch", disable=not progress):
        x = _unit(panos[i:i + batch_size]) * 255.0
        view = project_ground(x, grid)
        out[i:i + batch_size] = view.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def views_at(bank: np.ndarray, turn_rad: np.ndarray, config: BevConfig) -> Tensor:
    """(Q, 3, S, S) 0..1 views of the panoramas rolled by turn_rad (the camera turned clockwise)."""
    side = config.kernel_cells * STRIDE
    # the content turns the other way than the features' north-up rotation: the inverse rotation
    grid = rotation_grid(-torch.from_numpy(np.asarray(turn_rad, np.float64)), side, scale=side / bank.shape[1])
    return F.grid_sample(_unit(bank), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class BevBatch:
    views: Tensor  # (Q, 3, S, S) normalised ground-plane views, camera frame
    bearing_rad: Tensor  # (Q,) forward bearing of each view's camera, clockwise from north
    region: Tensor  # (1, 3, R, R) normalised north-up aerial region holding every camera
    target: Tensor  # (Q,) each camera's cell among the region's flattened positions


def sample_batch(rng: np.random.Generator, bank: np.ndarray, pano_en: np.ndarray, pano_city: np.ndarray,
                 train_idx: np.ndarray, mosaics: dict[int, CityMosaic], config: BevConfig, *, batch_size: int,
                 region_px: int, rotation_deg: float, photometric: float, mirror: float = 0.0) -> BevBatch:
    """One training batch: an aerial region of a city, the size of a search scope, and up to
    batch_size panoramas whose cameras stand in it; each must find its cell among all its positions.

    Every position of the region is a negative, as every position of a scope is one at run time,
    and one aerial pass serves the whole batch. With probability `mirror` the batch's world is
    mirrored east-west: the region flipped left-right, each ground view flipped about its forward
    axis and each bearing b turned into -b, a city that could exist (its panoramas see it so).
    """
    k = config.kernel_cells
    margin = STRIDE * k / 2  # the camera of a view that fits the region exactly at its edge
    n_pos = region_px // STRIDE - k + 1
    for _ in range(100):
        anchor = train_idx[rng.integers(len(train_idx))]
        city = int(pano_city[anchor])
        mosaic = mosaics[city]
        lim = np.array(mosaic.image.shape[:2]) - region_px
        at = rng.uniform(margin, region_px - margin, 2)
        origin = np.clip(np.round(mosaic.pixel(pano_en[anchor]) - at), 0, lim).astype(int)
        pool = train_idx[pano_city[train_idx] == city]
        px = mosaic.pixel(pano_en[pool]) - origin
        inside = np.flatnonzero(np.all((px >= margin) & (px <= region_px - margin), axis=1))
        if len(inside) >= 2:
            break
    else:
        raise ValueError("no aerial region holds two training panoramas; the data set is too sparse")
    pick = rng.choice(inside, min(batch_size, len(inside)), replace=False)
    idx = pool[pick]
    cam = px[pick]
    turn = np.zeros(len(idx))
    if rotation_deg > 0:
        turn = np.radians(rng.uniform(-rotation_deg, rotation_deg, len(idx)))
    views = views_at(bank[idx], turn, config)
    bearing = np.radians(VIGOR_BEARING_DEG) + turn
    region = mosaic.image[origin[0]:origin[0] + region_px, origin[1]:origin[1] + region_px][None]
    if rng.random() < mirror:
        region = region[:, :, ::-1]
        cam = np.stack([cam[:, 0], region_px - cam[:, 1]], axis=1)
        views = views.flip(-1)
        bearing = -bearing
    cell = np.clip(np.round(cam / STRIDE - k / 2), 0, n_pos - 1).astype(int)
    return BevBatch(views=_normalise(_jitter(views, rng, photometric), config),
                    bearing_rad=torch.from_numpy(np.remainder(bearing, 2 * np.pi)),
                    region=_normalise(_jitter(_unit(region), rng, photometric / 2), config),
                    target=torch.from_numpy(cell[:, 0] * n_pos + cell[:, 1]))


def batch_loss(model: BevModel, batch: BevBatch) -> tuple[Tensor, float]:
    """Cross-entropy of each panorama's true cell among all positions of the region; and its accuracy."""
    ground = model.north_up(model.bev_features(batch.views), batch.bearing_rad)
    aerial = model.aerial_features(batch.region)
    logits = (model.correlate(ground, aerial)[0] * model.logit_scale).flatten(1)  # (Q, positions)
    loss = F.cross_entropy(logits, batch.target)
    return loss, float((logits.argmax(1) == batch.target).float().mean())


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
    bank = view_bank(bev_cfg, panos, progress=progress)
    pano_en, sat_en = split.metric_positions()
    mosaics = build_mosaics(split, np.asarray(sats), sat_en, bev_cfg)
    smallest = min(min(m.image.shape[:2]) for m in mosaics.values())
    region_px = min(REGION_PX, smallest // STRIDE * STRIDE)  # small (test) cities: the whole city
    if region_px < bev_cfg.kernel_cells * STRIDE + STRIDE:
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
        batch = sample_batch(rng, bank, pano_en, split.pano_city, train_idx, mosaics, bev_cfg,
                             batch_size=config.batch_size, region_px=region_px, rotation_deg=config.rotation_deg,
                             photometric=config.photometric, mirror=config.mirror)
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
