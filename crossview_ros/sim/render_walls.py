"""Wall directions of buildings, for the renderer's window grids.

Windows must follow walls that are not aligned with the raster, so each building's dominant
wall orientation is estimated once per scene from its footprint (the smoothed building mask's
gradient) and cached per Scene object.
"""

from __future__ import annotations

import weakref

import cv2
import numpy as np

from crossview_ros.sim.scene import Scene


# Per-building wall direction, computed once per Scene object (scenes are not edited after they
# are first rendered; a changed building_id buffer or building count recomputes it).
_AXES_CACHE: dict[int, tuple[weakref.ref, tuple, np.ndarray]] = {}


def building_wall_axes(scene: Scene) -> np.ndarray:
    """(B,) float32 ENU angle (rad, in [-pi/4, pi/4)) of one outward wall normal per building;
    the other walls are assumed at multiples of 90 deg from it."""
    key = id(scene)
    fingerprint = (scene.building_id.__array_interface__["data"][0], scene.building_id.shape, len(scene.buildings))
    hit = _AXES_CACHE.get(key)
    if hit is not None and hit[0]() is scene and hit[1] == fingerprint:
        return hit[2]
    axes = wall_axes(np.asarray(scene.building_id), len(scene.buildings))
    _AXES_CACHE[key] = (weakref.ref(scene, lambda _, k=key: _AXES_CACHE.pop(k, None)), fingerprint, axes)
    return axes


def wall_axes(building_id: np.ndarray, n_buildings: int, strip_rows: int = 1024) -> np.ndarray:
    """Dominant wall orientation per building from the smoothed building mask's gradient: the
    gradient-weighted circular mean of 4 x its direction (4-fold symmetric, so all four walls of
    a rectangle vote for the same angle and the raster's staircase averages out)."""
    sums_cos = np.zeros(n_buildings)
    sums_sin = np.zeros(n_buildings)
    rows = building_id.shape[0]
    pad = 8
    for r0 in range(0, rows, strip_rows):
        a, b = max(0, r0 - pad), min(rows, r0 + strip_rows + pad)
        mask = cv2.GaussianBlur((building_id[a:b] >= 0).astype(np.float32), (0, 0), 2.0)
        core = slice(r0 - a, r0 - a + min(strip_rows, rows - r0))
        g_e = cv2.Sobel(mask, cv2.CV_32F, 1, 0, ksize=3)[core]
        g_n = -cv2.Sobel(mask, cv2.CV_32F, 0, 1, ksize=3)[core]  # rows run south
        bid = building_id[r0 : r0 + g_e.shape[0]]
        mag = np.hypot(g_e, g_n)
        sel = (bid >= 0) & (mag > 1e-3)
        phi4 = 4.0 * np.arctan2(g_n[sel], g_e[sel])
        sums_cos += np.bincount(bid[sel], mag[sel] * np.cos(phi4), minlength=n_buildings)[:n_buildings]
        sums_sin += np.bincount(bid[sel], mag[sel] * np.sin(phi4), minlength=n_buildings)[:n_buildings]
    return (0.25 * np.arctan2(sums_sin, sums_cos)).astype(np.float32)
