"""Painting buildings: footprints with flat, gable or hip roofs, roof details, towers.

A building is rasterised into height, material (BUILDING), albedo (roof colour) and building
id, and gets a row in the building table (height, façade and window colours, floor height,
window spacing) that the street-level renderer uses for walls. Flat roofs get parapets,
penthouses, HVAC boxes, water tanks, solar panels or skylights; towers stand on podiums and
step back in tiers. Footprints are given in grid coordinates (a, b) and warped to uv.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from crossview_ros.sim.city_canvas import FIX, FIX_BITS, jitter, rect_poly
from crossview_ros.sim.city_painter import Painter
from crossview_ros.sim.city_palette import FACADE_RGB, FLAT_ROOF_RGB, GLASS_RGB
from crossview_ros.sim.scene import Material

M = Material


def building(painter: Painter, poly_ab: np.ndarray, top_m: float, *, roof: str = "flat", roof_rgb: Any, facade: Any,
             window: Any, floor_m: float, spacing_m: float, main: tuple | None = None,
             rise_m: float = 0.0, details: str | None = "normal", rects: list | None = None,
             bid: int | None = None) -> int | None:
    """Rasterise one building (or one tier of it when bid is given); returns its id."""
    cv = painter.cv
    pts = cv.px(painter.warp(poly_ab))
    win = cv.window(pts)
    if win is None:
        return bid
    m = cv.mask(win, pts)
    if not m.any():
        return bid
    if bid is None:
        bid = len(painter.b_height)
        painter.b_height.append(float(top_m))
        painter.b_facade.append(np.asarray(facade, np.float32))
        painter.b_window.append(np.asarray(window, np.float32))
        painter.b_floor.append(float(floor_m))
        painter.b_spacing.append(float(spacing_m))
        painter.b_pixels.append(0)
    else:
        painter.b_height[bid] = max(painter.b_height[bid], float(top_m))
    painter.b_pixels[bid] += int(m.sum())
    if roof in ("gable", "hip") and main is not None:
        s, t, la, lb = painter.local_coords(win, main)
        if roof == "gable":
            dist = np.minimum(t, 1 - t) * lb if la >= lb else np.minimum(s, 1 - s) * la
            half = min(la, lb) / 2
        else:
            dist = np.minimum(np.minimum(s, 1 - s) * la, np.minimum(t, 1 - t) * lb)
            half = min(la, lb) / 2
        z = (top_m - rise_m) + rise_m * np.clip(dist / max(half, 1e-3), 0.0, 1.0)
        cv.put(win, m, M.BUILDING, np.clip(roof_rgb, 0, 255), z.astype(np.float32), bid)
    else:
        cv.put(win, m, M.BUILDING, np.clip(roof_rgb, 0, 255), float(top_m), bid)
        if details is not None:
            _roof_details(painter, win, m, pts, bid, top_m, np.asarray(roof_rgb, np.float32), rects or [], details)
    return bid


def _roof_details(painter: Painter, win: tuple, m: np.ndarray, pts: np.ndarray, bid: int, top: float,
                  roof_rgb: np.ndarray, rects: list, style: str) -> None:
    """Parapet and roof furniture by style (plain, normal, industrial, tower) inside the footprint."""
    cv, rng = painter.cv, painter.rng
    r0, _, c0, _ = win
    area = float(m.sum()) * cv.gsd ** 2
    # Parapet: a rim slightly above the roof, inside the footprint.
    if style != "plain" and area > 60 and rng.random() < 0.85:
        rim = np.zeros(m.shape, np.uint8)
        t = max(1, int(round(rng.uniform(0.3, 0.6) / cv.gsd)))
        cv2.polylines(rim, [pts - np.array([c0 * FIX, r0 * FIX], np.int32)], True, 1, 2 * t, cv2.LINE_8, FIX_BITS)
        rim = rim.view(bool) & m
        tone = rng.uniform(0.8, 1.2)
        cv.put(win, rim, M.BUILDING, np.clip(roof_rgb * tone, 0, 255), float(top + rng.uniform(0.5, 1.2)), bid)
    if not rects:
        return

    def box(rect: tuple, w: float, d: float, margin: float = 1.2) -> tuple | None:
        a0, a1, b0, b1 = rect
        if a1 - a0 < w + 2 * margin or b1 - b0 < d + 2 * margin:
            return None
        a = rng.uniform(a0 + margin, a1 - margin - w)
        b = rng.uniform(b0 + margin, b1 - margin - d)
        return a, a + w, b, b + d

    def place(rect: tuple | None, dh: float, rgb: Any, shape: str = "box") -> None:
        if rect is None:
            return
        if shape == "round":
            a0, a1, b0, b1 = rect
            ang = np.linspace(0, 2 * math.pi, 16, endpoint=False)
            poly = np.stack([(a0 + a1) / 2 + (a1 - a0) / 2 * np.cos(ang), (b0 + b1) / 2 + (b1 - b0) / 2 * np.sin(ang)], 1)
        else:
            poly = rect_poly(*rect, step=50.0)
        p = cv.px(painter.warp(poly))
        mm = np.zeros(m.shape, np.uint8)
        cv2.fillPoly(mm, [p - np.array([c0 * FIX, r0 * FIX], np.int32)], 1, cv2.LINE_8, FIX_BITS)
        mm = mm.view(bool) & m
        cv.put(win, mm, M.BUILDING, np.clip(rgb, 0, 255), float(top + dh), bid)

    big = max(rects, key=lambda r: (r[1] - r[0]) * (r[3] - r[2]))
    if style == "industrial":
        n_sky = int(rng.integers(0, 6))
        a0, a1, b0, b1 = big
        for k in range(n_sky):  # skylight rows
            b = b0 + (k + 1) * (b1 - b0) / (n_sky + 1)
            place((a0 + 3, a1 - 3, b - 0.8, b + 0.8), 0.4, (205, 215, 222))
    if area > 250 and rng.random() < 0.55:  # penthouse / machine room
        a0, a1, b0, b1 = big
        w, d = rng.uniform(0.2, 0.4) * (a1 - a0), rng.uniform(0.2, 0.4) * (b1 - b0)
        place(box(big, max(w, 3.0), max(d, 3.0)), rng.uniform(2.8, 5.0), roof_rgb * rng.uniform(0.7, 1.15))
    if style in ("normal", "industrial", "tower"):
        for _ in range(int(min(rng.poisson(area / 220.0), 14))):  # HVAC boxes
            g = rng.uniform(150, 215)
            place(box(rects[int(rng.integers(len(rects)))], rng.uniform(1.0, 4.0), rng.uniform(1.0, 3.0)),
                  rng.uniform(0.8, 2.4), (g, g, g + rng.uniform(-4, 8)))
    if style == "normal" and rng.random() < 0.12:  # water tank on legs
        r = rng.uniform(1.4, 2.2)
        place(box(big, 2 * r, 2 * r), rng.uniform(4.5, 7.0), (118, 84, 58), "round")
    if style in ("normal", "industrial") and rng.random() < 0.1:  # solar panel field
        a0, a1, b0, b1 = big
        rows = int(rng.integers(2, 6))
        for k in range(rows):
            b = b0 + 2 + k * 2.4
            if b + 1.6 < b1 - 2:
                place((a0 + 2, a0 + 2 + 0.6 * (a1 - a0 - 4), b, b + 1.6), 0.4, (36, 48, 78))
    if style == "tower" and rng.random() < 0.15:  # helipad
        r = rng.uniform(5.0, 7.5)
        rect = box(big, 2 * r, 2 * r, 0.6)
        place(rect, 0.3, (70, 72, 76), "round")


def _facade_colours(painter: Painter, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    rng = painter.rng
    if kind == "tower" or (kind == "downtown" and rng.random() < 0.35):
        return (jitter(rng, GLASS_RGB[rng.integers(len(GLASS_RGB))], 0.08),
                jitter(rng, (rng.uniform(60, 140),) * 3, 0.1), rng.uniform(1.4, 2.2))
    if kind == "industrial":
        return jitter(rng, FACADE_RGB[rng.integers(len(FACADE_RGB))], 0.08), np.array([60, 64, 70.0]), 0.0 if rng.random() < 0.6 else 6.0
    return (jitter(rng, FACADE_RGB[rng.integers(len(FACADE_RGB))], 0.08),
            jitter(rng, (rng.uniform(35, 75),) * 3, 0.1), rng.uniform(2.2, 3.8))


def flat_building(painter: Painter, rect: tuple, top: float, kind: str, *, floor_m: float | None = None,
                  style: str | None = None, extra: list | None = None, bid: int | None = None,
                  roof_rgb: Any = None) -> int | None:
    """A flat-roofed building on a grid rectangle (an L with one `extra` wing), façade by kind."""
    rng = painter.rng
    facade, window, spacing = _facade_colours(painter, kind)
    if roof_rgb is None:
        roof_rgb = jitter(rng, FLAT_ROOF_RGB[rng.integers(len(FLAT_ROOF_RGB))], 0.08)
        if rng.random() < 0.04:
            roof_rgb = jitter(rng, (96, 126, 70), 0.1)  # green roof
    rects = [rect] + list(extra or [])
    if extra:
        poly = _union_poly(rect, extra[0])
    else:
        poly = rect_poly(*rect, step=50)
    style = style or ("industrial" if kind == "industrial" else "tower" if kind == "tower" else "normal")
    return building(painter, poly, top, roof="flat", roof_rgb=roof_rgb, facade=facade, window=window,
                    floor_m=floor_m or rng.uniform(3.2, 4.0), spacing_m=spacing, rects=rects,
                    details=style, bid=bid)


def tower(painter: Painter, lot: tuple, kappa: float) -> None:
    """A tower (Pareto height, taller downtown) on a lot: maybe a podium, round or in tiers."""
    rng, cfg = painter.rng, painter.config
    a0, a1, b0, b1 = lot
    h_min = 55.0 * (0.7 + 0.5 * kappa)
    height = float(min(cfg.tower_max_height_m, h_min * rng.random() ** (-1 / 1.7)))
    podium = rng.random() < 0.6
    inset = rng.uniform(3, 7) if podium else rng.uniform(0, 2)
    core = (a0 + inset, a1 - inset, b0 + inset, b1 - inset)
    if min(core[1] - core[0], core[3] - core[2]) < 12:
        core, podium = lot, False
    if podium:
        flat_building(painter, lot, rng.uniform(10, 26), "downtown")
    roof = jitter(rng, FLAT_ROOF_RGB[rng.integers(len(FLAT_ROOF_RGB))], 0.08)
    if rng.random() < 0.15:  # round tower
        ca0, ca1, cb0, cb1 = core
        r = min(ca1 - ca0, cb1 - cb0) / 2
        ang = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        cx, cy = (ca0 + ca1) / 2, (cb0 + cb1) / 2
        poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
        facade, window, spacing = _facade_colours(painter, "tower")
        q = r / math.sqrt(2)
        building(painter, poly, height, roof="flat", roof_rgb=roof, facade=facade, window=window, floor_m=3.8,
                 spacing_m=spacing, rects=[(cx - q, cx + q, cy - q, cy + q)], details="tower")
        _landmark_height(painter, height, np.array([cx, cy]))
        return
    tiers = int(rng.choice([1, 1, 2, 3])) if height > 80 else 1
    bid = None
    rect = core
    for k in range(tiers):
        top = height * (k + 1) / tiers if tiers > 1 else height
        style = "tower" if k == tiers - 1 else "plain"
        bid = flat_building(painter, rect, top, "tower", floor_m=3.8, style=style, bid=bid, roof_rgb=roof)
        step = rng.uniform(2.0, 4.5)
        nxt = (rect[0] + step, rect[1] - step, rect[2] + step, rect[3] - step)
        if min(nxt[1] - nxt[0], nxt[3] - nxt[2]) < 10:
            break
        rect = nxt
    _landmark_height(painter, height, np.array([(core[0] + core[1]) / 2, (core[2] + core[3]) / 2]))


def _landmark_height(painter: Painter, height: float, ab: np.ndarray) -> None:
    if height > painter.tallest_m:
        painter.tallest_m = height
        painter.landmarks["tallest_building_uv"] = painter.warp(ab)


def _union_poly(main: tuple, wing: tuple) -> np.ndarray:
    """Outline of two touching grid rectangles (an L), traced on the union's corner grid."""
    xs = sorted({main[0], main[1], wing[0], wing[1]})
    ys = sorted({main[2], main[3], wing[2], wing[3]})

    def inside(x: float, y: float) -> bool:
        return any(r[0] <= x <= r[1] and r[2] <= y <= r[3] for r in (main, wing))
    # Marching around the cells of the small grid: collect boundary edges, chain them.
    edges = {}
    for i in range(len(xs) - 1):
        for j in range(len(ys) - 1):
            cx, cy = (xs[i] + xs[i + 1]) / 2, (ys[j] + ys[j + 1]) / 2
            if not inside(cx, cy):
                continue
            for p, q, nx, ny in (((xs[i], ys[j]), (xs[i + 1], ys[j]), cx, ys[j] - 1e-6),
                                 ((xs[i + 1], ys[j]), (xs[i + 1], ys[j + 1]), xs[i + 1] + 1e-6, cy),
                                 ((xs[i + 1], ys[j + 1]), (xs[i], ys[j + 1]), cx, ys[j + 1] + 1e-6),
                                 ((xs[i], ys[j + 1]), (xs[i], ys[j]), xs[i] - 1e-6, cy)):
                if not inside(nx, ny):
                    edges[p] = q
    start = next(iter(edges))
    out, p = [start], edges[start]
    while p != start and len(out) < 64:
        out.append(p)
        p = edges[p]
    return np.array(out, np.float64)
