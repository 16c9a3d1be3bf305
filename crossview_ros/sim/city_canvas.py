"""The city's drawing surface: the scene rasters being painted and OpenCV drawing in metres.

Coordinates are local metres u (east) and v (south) from the north-west corner of the raster;
cell (r, c) covers u in [c*gsd, (c+1)*gsd) and v in [r*gsd, (r+1)*gsd). Polygons and polylines
are handed to OpenCV in fixed point (FIX_BITS sub-pixel bits). Also the small geometry helpers
the painters share: points along a polyline, densified rectangles, jittered colours.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from crossview_ros.sim.city_palette import GRASS_RGB
from crossview_ros.sim.scene import Material

FIX_BITS = 3  # sub-pixel bits of the coordinates handed to OpenCV's rasteriser
FIX = 1 << FIX_BITS

M = Material


def along(uv: np.ndarray, s: np.ndarray, lat: np.ndarray | float = 0.0) -> np.ndarray:
    """Points at arc lengths s along a polyline, offset by lat metres to the right of travel."""
    seg = np.diff(uv, axis=0)
    seg_len = np.maximum(np.linalg.norm(seg, axis=1), 1e-9)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    s = np.asarray(s, np.float64)
    idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    f = (s - cum[idx]) / seg_len[idx]
    p = uv[idx] + f[..., None] * seg[idx]
    d = seg[idx] / seg_len[idx][..., None]
    right = np.stack([-d[..., 1], d[..., 0]], axis=-1)  # uv has v pointing south
    return p + np.asarray(lat, np.float64)[..., None] * right


def polyline_length(uv: np.ndarray) -> float:
    """Length of a (K, 2) polyline, metres."""
    return float(np.linalg.norm(np.diff(uv, axis=0), axis=1).sum())


class Canvas:
    """The four scene rasters plus a street mask, and OpenCV drawing in metres."""

    def __init__(self, n_px: int, gsd_m: float) -> None:
        self.n = n_px
        self.gsd = gsd_m
        self.height = np.zeros((n_px, n_px), np.float32)
        self.material = np.full((n_px, n_px), int(M.GRASS), np.uint8)
        self.albedo = np.empty((n_px, n_px, 3), np.uint8)
        self.albedo[:] = GRASS_RGB
        self.bid = np.full((n_px, n_px), -1, np.int32)
        self.street = np.zeros((n_px, n_px), np.uint8)

    def px(self, uv: np.ndarray) -> np.ndarray:
        """uv metres -> OpenCV fixed-point (x = column, y = row) of cell centres."""
        return np.round((np.asarray(uv, np.float64) / self.gsd - 0.5) * FIX).astype(np.int32)

    def fill(self, polys: list[np.ndarray], mat: int, rgb: Any, height: float = 0.0, bid: int = -1) -> None:
        """Fill uv polygons with a material, colour, height and building id."""
        for poly in polys:
            pts = [self.px(poly)]
            cv2.fillPoly(self.material, pts, int(mat), cv2.LINE_8, FIX_BITS)
            cv2.fillPoly(self.albedo, pts, tuple(int(c) for c in rgb), cv2.LINE_8, FIX_BITS)
            cv2.fillPoly(self.height, pts, float(height), cv2.LINE_8, FIX_BITS)
            cv2.fillPoly(self.bid, pts, int(bid), cv2.LINE_8, FIX_BITS)

    def stroke(self, lines: list[np.ndarray], width_m: float, mat: int | None, rgb: Any, *,
               closed: bool = False, ground: bool = True, street: bool = False) -> None:
        """Draw polylines `width_m` wide; mat None paints colour only; ground clears height/ids."""
        if not lines:
            return
        pts = [self.px(p) for p in lines]
        t = max(1, int(round(width_m / self.gsd)))
        cv2.polylines(self.albedo, pts, closed, tuple(int(c) for c in rgb), t, cv2.LINE_8, FIX_BITS)
        if mat is not None:
            cv2.polylines(self.material, pts, closed, int(mat), t, cv2.LINE_8, FIX_BITS)
        if ground:
            cv2.polylines(self.height, pts, closed, 0.0, t, cv2.LINE_8, FIX_BITS)
            cv2.polylines(self.bid, pts, closed, -1, t, cv2.LINE_8, FIX_BITS)
        if street:
            cv2.polylines(self.street, pts, closed, 1, t, cv2.LINE_8, FIX_BITS)

    def window(self, pts: np.ndarray, pad: int = 1) -> tuple[int, int, int, int] | None:
        """(r0, r1, c0, c1) of the cells a fixed-point polygon touches, clipped; None if outside."""
        x, y = pts[:, 0] / FIX, pts[:, 1] / FIX
        c0, c1 = max(0, int(math.floor(x.min())) - pad), min(self.n, int(math.ceil(x.max())) + pad + 1)
        r0, r1 = max(0, int(math.floor(y.min())) - pad), min(self.n, int(math.ceil(y.max())) + pad + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def mask(self, win: tuple[int, int, int, int], pts: np.ndarray) -> np.ndarray:
        """Boolean mask over a window of the cells inside a fixed-point polygon."""
        r0, r1, c0, c1 = win
        m = np.zeros((r1 - r0, c1 - c0), np.uint8)
        cv2.fillPoly(m, [pts - np.array([c0 * FIX, r0 * FIX], np.int32)], 1, cv2.LINE_8, FIX_BITS)
        return m.view(bool)

    def cell_uv(self, win: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """uv metres of a window's cell centres: u (1, w) and v (h, 1), float32."""
        r0, r1, c0, c1 = win
        u = (np.arange(c0, c1, dtype=np.float32) + 0.5) * np.float32(self.gsd)
        v = (np.arange(r0, r1, dtype=np.float32) + 0.5) * np.float32(self.gsd)
        return u[None, :], v[:, None]

    def put(self, win: tuple[int, int, int, int], m: np.ndarray, mat: int, rgb: Any,
            height: Any = None, bid: int | None = None) -> None:
        """Set material, colour (one or per cell), height and building id where m is True."""
        sl = np.s_[win[0]:win[1], win[2]:win[3]]
        self.material[sl][m] = mat
        if isinstance(rgb, np.ndarray) and rgb.ndim == 3:
            self.albedo[sl][m] = rgb[m]
        else:
            self.albedo[sl][m] = np.asarray(rgb, np.uint8)
        if height is not None:
            h = self.height[sl]
            h[m] = height[m] if isinstance(height, np.ndarray) else height
        if bid is not None:
            self.bid[sl][m] = bid

    def at(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(inside, material, building id, street mask) at uv points (clipped lookups)."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        c = np.floor(uv[:, 0] / self.gsd).astype(np.int64)
        r = np.floor(uv[:, 1] / self.gsd).astype(np.int64)
        inside = (c >= 0) & (c < self.n) & (r >= 0) & (r < self.n)
        c, r = np.clip(c, 0, self.n - 1), np.clip(r, 0, self.n - 1)
        return inside, self.material[r, c], self.bid[r, c], self.street[r, c]


def rect_poly(a0: float, a1: float, b0: float, b1: float, step: float = 12.0) -> np.ndarray:
    """Closed rectangle in grid coordinates, densified so that the warp bends its sides."""
    def edge(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        n = max(1, int(math.ceil(np.linalg.norm(q - p) / step)))
        return p + np.linspace(0, 1, n, endpoint=False)[:, None] * (q - p)
    c = [np.array(x, np.float64) for x in ((a0, b0), (a1, b0), (a1, b1), (a0, b1))]
    return np.concatenate([edge(c[k], c[(k + 1) % 4]) for k in range(4)])


def jitter(rng: np.random.Generator, rgb: Any, amount: float) -> np.ndarray:
    """A colour scaled by U(1 - amount, 1 + amount) plus a little per-channel noise, clipped."""
    return np.clip(np.asarray(rgb, np.float32) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 4, 3), 0, 255)
