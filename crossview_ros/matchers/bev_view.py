"""The bev model's ground-plane view: which panorama pixel each top-down pixel samples.

One definition for training (crossview_training.bev.model samples panoramas through it) and the
runtime (which cells of a partial view, a forward camera or a rig, see the ground at all).
"""

from __future__ import annotations

import math

import numpy as np

SAMPLES_PER_CELL = 4  # top-down samples per feature cell side when measuring what a cell sees (the model's stride)


def ground_plane_pixels(size_hw: tuple[int, int], res_m: float, side: int, height_m: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) float64 (S, S) panorama coordinates (pixel centres at integers) of each top-down pixel.

    Top-down pixel (i, j): x right, y forward of the camera, res_m apart, row 0 farthest forward;
    its ground point at camera height `height_m` is seen at azimuth atan2(x, y) clockwise from
    forward and depression atan(h / d) (d floored at 0.25 m).
    """
    h_px, w_px = size_hw
    xs = (np.arange(side, dtype=np.float64) + 0.5 - side / 2) * res_m
    y, x = np.meshgrid(-xs, xs, indexing="ij")
    dist = np.maximum(np.hypot(x, y), 0.25)
    azimuth = np.remainder(np.arctan2(x, y), 2 * math.pi)
    depression = np.arctan(height_m / dist)
    col = azimuth / (2 * math.pi) * w_px - 0.5
    row = (math.pi / 2 + depression) / math.pi * h_px - 0.5
    return row, col


def nearest_ground_pixels(size_hw: tuple[int, int], *, res_m: float, side: int, height_m: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) int (side, side): the panorama pixel nearest each top-down pixel's ground point, to read
    a (H, W) mask with (mask[row, col]); one pair serves every mask of that size."""
    row, col = ground_plane_pixels(size_hw, res_m, side, height_m)
    return np.clip(np.round(row).astype(int), 0, size_hw[0] - 1), np.round(col).astype(int) % size_hw[1]


def seen_ground(visibility: np.ndarray, *, res_m: float, side: int, height_m: float) -> np.ndarray:
    """(side, side) bool: which top-down pixels (res_m apart) a (H, W) panorama visibility mask (True: some
    camera sees it) covers, each read at its nearest panorama pixel."""
    vis = np.asarray(visibility, bool)
    return vis[nearest_ground_pixels(vis.shape, res_m=res_m, side=side, height_m=height_m)]


def cell_share(seen: np.ndarray, cells: int, stride: int = SAMPLES_PER_CELL) -> np.ndarray:
    """(cells, cells) float32 share of each feature cell's stride x stride top-down pixels that are seen."""
    return seen.astype(np.float32).reshape(cells, stride, cells, stride).mean(axis=(1, 3))


def cell_visibility(visibility: np.ndarray, *, res_m: float, cells: int, stride: int = SAMPLES_PER_CELL,
                    height_m: float) -> np.ndarray:
    """(cells, cells) float32 share of each feature cell's top-down pixels (stride x stride of res_m
    each) that a (H, W) panorama visibility mask (True: some camera sees it) covers; all ones for a
    whole panorama."""
    return cell_share(seen_ground(visibility, res_m=res_m, side=cells * stride, height_m=height_m), cells, stride)
