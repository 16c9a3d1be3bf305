"""BEV training data: city mosaics, ground-view banks and the region batches training draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from crossview_training.bev.fov import MaskBank
from crossview_training.bev.model import (
    STRIDE, VIGOR_BEARING_DEG, BevConfig, BevModel, bev_sampling_grid, project_ground, rotation_grid,
)

REGION_PX = 512  # training aerial region side, px: 233 m at VIGOR's L, a 200 m scope's worth of positions


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


def to_tensor(images: np.ndarray, config: BevConfig) -> Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) model input (0..1, then the config's mean/std)."""
    return normalise(unit_images(images), config)


def unit_images(images: np.ndarray) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in 0..1."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # a slice of a memory-mapped cache
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def normalise(images: Tensor, config: BevConfig) -> Tensor:
    """0..1 images -> the model's input normalisation."""
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (images - mean) / std


def jitter(images: Tensor, rng: np.random.Generator, strength: float) -> Tensor:
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
        x = unit_images(panos[i:i + batch_size]) * 255.0
        view = project_ground(x, grid)
        out[i:i + batch_size] = view.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def views_at(bank: np.ndarray, turn_rad: np.ndarray, config: BevConfig) -> Tensor:
    """(Q, 3, S, S) 0..1 views of the panoramas rolled by turn_rad (the camera turned clockwise)."""
    side = config.kernel_cells * STRIDE
    # the content turns the other way than the features' north-up rotation: the inverse rotation
    grid = rotation_grid(-torch.from_numpy(np.asarray(turn_rad, np.float64)), side, scale=side / bank.shape[1])
    return F.grid_sample(unit_images(bank), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class BevBatch:
    views: Tensor  # (Q, 3, S, S) normalised ground-plane views, camera frame
    bearing_rad: Tensor  # (Q,) forward bearing of each view's camera, clockwise from north
    region: Tensor  # (1, 3, R, R) normalised north-up aerial region holding every camera
    target: Tensor  # (Q,) each camera's cell among the region's flattened positions
    cells: Tensor | None = None  # (Q, 1, K, K) share of each feature cell the view's camera sees (None: all)


def sample_batch(rng: np.random.Generator, bank: np.ndarray, pano_en: np.ndarray, pano_city: np.ndarray,
                 train_idx: np.ndarray, mosaics: dict[int, CityMosaic], config: BevConfig, *, batch_size: int,
                 region_px: int, rotation_deg: float, photometric: float, mirror: float = 0.0,
                 fov: tuple[MaskBank, float] | None = None) -> BevBatch:
    """One training batch: an aerial region of a city, the size of a search scope, and up to
    batch_size panoramas whose cameras stand in it; each must find its cell among all its positions.

    Every position of the region is a negative, as every position of a scope is one at run time,
    and one aerial pass serves the whole batch. With probability `mirror` the batch's world is
    mirrored east-west: the region flipped left-right, each ground view flipped about its forward
    axis and each bearing b turned into -b, a city that could exist (its panoramas see it so).
    With fov = (bank, share), that share of the views sees only a random camera rig's ground
    (crossview_training.bev.fov): black outside, its cells weighted by what they see.
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
    views = jitter(views, rng, photometric)
    cells = torch.ones(len(idx), 1, k, k)
    if fov is not None and fov[1] > 0:
        cut = torch.from_numpy(rng.random(len(idx)) < fov[1])
        pixel_mask, cell_mask = fov[0].draw(rng, len(idx))
        views = torch.where(cut[:, None, None, None], views * pixel_mask, views)
        cells = torch.where(cut[:, None, None, None], cell_mask, cells)
    return BevBatch(views=normalise(views, config), cells=cells,
                    bearing_rad=torch.from_numpy(np.remainder(bearing, 2 * np.pi)),
                    region=normalise(jitter(unit_images(region), rng, photometric / 2), config),
                    target=torch.from_numpy(cell[:, 0] * n_pos + cell[:, 1]))


def batch_loss(model: BevModel, batch: BevBatch) -> tuple[Tensor, float]:
    """Cross-entropy of each panorama's true cell among all positions of the region; and its accuracy."""
    features = model.bev_features(batch.views)
    if batch.cells is not None:
        features = features * batch.cells  # what no camera sees is not correlated (as at run time)
    ground = model.north_up(features, batch.bearing_rad)
    aerial = model.aerial_features(batch.region)
    logits = (model.correlate(ground, aerial)[0] * model.logit_scale).flatten(1)  # (Q, positions)
    loss = F.cross_entropy(logits, batch.target)
    return loss, float((logits.argmax(1) == batch.target).float().mean())


class CitySplit:
    """The attributes build_mosaics reads, restricted to one city (others appear empty)."""

    def __init__(self, split, city: int) -> None:
        self.cities = split.cities
        self.sat_city = np.where(split.sat_city == city, city, -1)
