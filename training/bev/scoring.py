"""BEV scoring as the runtime does it: tile descriptors (central feature blocks), their mosaic and
the best camera cell of every tile; used by evaluation and validation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from crossview_training.bev.data import CitySplit, build_mosaics, to_tensor
from crossview_training.bev.model import VIGOR_BEARING_DEG, BevModel


@torch.no_grad()
def tile_blocks(model: BevModel, sats: np.ndarray, batch_size: int = 64, progress: bool = False) -> Tensor:
    """(M, C, b, b) descriptors of tiles (their central feature blocks), as the runtime stores them."""
    device = model.mask.device
    out = []
    for i in tqdm(range(0, len(sats), batch_size), desc="tiles", unit="batch", disable=not progress):
        x = to_tensor(sats[i:i + batch_size], model.config).to(device)
        out.append(model.block(model.aerial_features(x)).cpu())
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
    t_r, t_c = torch.from_numpy(grid[:, 0]).to(best.device), torch.from_numpy(grid[:, 1]).to(best.device)
    best_t = best[:, t_r, t_c]
    arg_t = arg[:, t_r, t_c]
    return best_t, torch.stack([arg_t // b, arg_t % b], dim=-1)


def bev_similarity(model: BevModel, split, panos: np.ndarray, sats: np.ndarray, *, batch_size: int = 16,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Tile scores (N, M) and offsets (N, M, 2) as (dE, dN)/L of the best camera cell of each tile.

    A query is scored against the tiles of its own city only (others get -inf), as a query is
    never compared with another city in the protocols. Panoramas are VIGOR-aligned (bearing 180).
    Runs on the model's device; the figures come back as numpy arrays.
    """
    model.eval()
    device = model.mask.device
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
        mosaic = build_mosaics(CitySplit(split, c), sats, sat_en, cfg)[c]
        fmap, grid = block_mosaic(blocks[mosaic.tiles], mosaic.tile_rc, cfg.tile_px // 2)
        fmap = fmap.to(device)
        for i in tqdm(range(0, len(queries), batch_size), desc=f"{split.cities[c]} queries", unit="batch",
                      disable=not progress):
            q = queries[i:i + batch_size]
            with torch.no_grad():
                g = model.ground_features(to_tensor(panos[q], cfg).to(device))
                g = model.north_up(g, torch.full((len(q),), math.radians(VIGOR_BEARING_DEG)))
                best, cell = (t.cpu() for t in score_blocks(model, g, fmap, grid))
            sim[np.ix_(q, mosaic.tiles)] = best.numpy()
            # position (i, j) puts the camera on the corner between cells, as in training; the
            # tile centre is the corner b / 2 cells into its block
            d_row = (cell[..., 0].numpy() - b / 2) * cfg.cell_m
            d_col = (cell[..., 1].numpy() - b / 2) * cfg.cell_m
            offsets[np.ix_(q, mosaic.tiles)] = np.stack([d_col, -d_row], -1) / cfg.tile_size_m
    return sim, offsets
