"""The state the city painters share: the canvas, the painting random stream, and what they record.

The painters (paint_buildings, paint_lots, paint_parks, paint_streets) draw the
epoch-independent base of the city onto Painter.cv, all drawing from the one Painter.rng in a
fixed order, so that a seed gives the same city. What changes between epochs (trees, parked
cars, traffic) is only recorded here and drawn per epoch (city_epoch): trees with their
colours and shape seeds, parking slots, and the building table (height, façade, windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossview_ros.sim.city_canvas import Canvas, jitter
from crossview_ros.sim.city_config import STREAM_BLOCKS, STREAM_STREETS, CityConfig, stream_rng
from crossview_ros.sim.city_layout import Layout
from crossview_ros.sim.city_palette import TREE_RGB


@dataclass
class Trees:
    """Trees as columns: position (uv metres), crown radius and top height, colour, shape seeds."""

    uv: np.ndarray  # (T, 2)
    radius_m: np.ndarray
    height_m: np.ndarray
    rgb: np.ndarray  # (T, 3) float32
    phase: np.ndarray  # (T, 3) outline lumps and noise offset seeds

    @staticmethod
    def build(rows: list[tuple]) -> Trees:
        """From Painter.tree's rows (u, v, r, h, R, G, B, phase 1, 2, 3)."""
        if not rows:
            z = np.zeros(0)
            return Trees(np.zeros((0, 2)), z, z, np.zeros((0, 3), np.float32), np.zeros((0, 3)))
        a = np.array(rows, np.float64)
        return Trees(a[:, 0:2], a[:, 2], a[:, 3], a[:, 4:7].astype(np.float32), a[:, 7:10])

    def take(self, keep: np.ndarray) -> Trees:
        """The trees selected by a mask or index array."""
        return Trees(self.uv[keep], self.radius_m[keep], self.height_m[keep], self.rgb[keep], self.phase[keep])

    def __len__(self) -> int:
        return len(self.radius_m)


class Painter:
    """The canvas of the epoch-independent base of the city and everything the painters record."""

    def __init__(self, layout: Layout, config: CityConfig) -> None:
        self.layout = layout
        self.config = config
        self.warp = layout.warp
        self.cv = Canvas(layout.n_px, config.gsd_m)
        self.rng = stream_rng(config.seed, STREAM_BLOCKS)
        self.b_height: list[float] = []
        self.b_facade: list[np.ndarray] = []
        self.b_window: list[np.ndarray] = []
        self.b_floor: list[float] = []
        self.b_spacing: list[float] = []
        self.b_pixels: list[int] = []
        self.trees: list[tuple] = []  # (u, v, r, h, R, G, B, lump phase 1, 2, noise seed); see tree_street
        self.tree_street: list[bool] = []
        self.spare_trees: list[tuple] = []
        self.spare_street: list[bool] = []
        self.slots: list[tuple[float, float, float, int]] = []  # (u, v, heading_uv_rad, kind 0 kerb / 1 lot / 2 driveway)
        self.landmarks: dict[str, np.ndarray] = {}
        self.tallest_m = 0.0
        self.park_polys: list[np.ndarray] = []
        style = stream_rng(config.seed, STREAM_STREETS, 1)
        self.style_us = bool(style.random() < 0.6)  # yellow centre lines (else European white)
        self.zebra = bool(style.random() < 0.7)  # zebra crosswalks (else two transverse lines)

    def tree(self, uv: np.ndarray, r: float, h: float, street: bool = False, rgb: Any = None, spare: bool = False) -> None:
        """Record a tree (crown radius r, top h; drawn per epoch). street: allowed on the street
        mask; spare: planted only at a later epoch; rgb None draws a green."""
        rng = self.rng
        col = TREE_RGB[rng.integers(len(TREE_RGB))] if rgb is None else np.asarray(rgb, np.float32)
        col = jitter(rng, col, 0.08)
        row = (float(uv[0]), float(uv[1]), float(r), float(h), *col.tolist(), *rng.uniform(0, 2 * math.pi, 3).tolist())
        (self.spare_trees if spare else self.trees).append(row)
        (self.spare_street if spare else self.tree_street).append(street)

    def local_coords(self, win: tuple, rect: tuple) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Grid-rectangle coordinates (s, t in [0, 1]) of a window's cells via the local affine."""
        a0, a1, b0, b1 = rect
        o, pa, pb = self.warp(np.array([[a0, b0], [a1, b0], [a0, b1]]))
        ex, ey = pa - o, pb - o
        inv = np.linalg.inv(np.array([[ex[0], ey[0]], [ex[1], ey[1]]]))
        u, v = self.cv.cell_uv(win)
        du, dv = u - np.float32(o[0]), v - np.float32(o[1])
        s = np.float32(inv[0, 0]) * du + np.float32(inv[0, 1]) * dv
        t = np.float32(inv[1, 0]) * du + np.float32(inv[1, 1]) * dv
        return s, t, float(np.linalg.norm(ex)), float(np.linalg.norm(ey))
