"""Painting open spaces: the park (lawn, paths, pond, a sports ground, clumps of trees) and the plaza.

The park is the city's open sky (its most open point is a landmark); the plaza is a paved
square with a fountain, perhaps a monument, and a ring of trees, taking at most ~90 m of a
long block with buildings on the rest.
"""

from __future__ import annotations

import math

import numpy as np

from crossview_ros.sim.city_canvas import jitter, rect_poly
from crossview_ros.sim.city_layout import Block
from crossview_ros.sim.city_painter import Painter
from crossview_ros.sim.city_palette import GRASS_RGB
from crossview_ros.sim.paint_buildings import building
from crossview_ros.sim.paint_lots import lots
from crossview_ros.sim.scene import Material

M = Material


def park(painter: Painter, blk: Block) -> None:
    """Lawn with a ring path, maybe a pond and a sports ground, winding paths, clumps of trees."""
    rng, cv, cfg = painter.rng, painter.cv, painter.config
    a0, a1, b0, b1 = blk.rect
    cv.fill([painter.warp(rect_poly(*blk.rect))], M.GRASS, jitter(rng, GRASS_RGB, 0.06))
    path_rgb = jitter(rng, [(178, 166, 140), (120, 118, 114), (168, 160, 150)][rng.integers(3)], 0.05)
    pw = rng.uniform(2.5, 4.0)
    cv.stroke([painter.warp(rect_poly(a0 + 4, a1 - 4, b0 + 4, b1 - 4, step=8))], pw, M.SIDEWALK, path_rgb, closed=True)
    W, D = a1 - a0, b1 - b0
    # A pond and a sports ground.
    if rng.random() < 0.65 and min(W, D) > 60:
        c = np.array([rng.uniform(a0 + 0.3 * W, a1 - 0.3 * W), rng.uniform(b0 + 0.3 * D, b1 - 0.3 * D)])
        ra, rb = rng.uniform(0.1, 0.2) * W, rng.uniform(0.1, 0.2) * D
        ang = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        wob = 1 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.06 * np.sin(5 * ang + rng.uniform(0, 6))
        poly = np.stack([c[0] + ra * wob * np.cos(ang), c[1] + rb * wob * np.sin(ang)], 1)
        cv.stroke([painter.warp(poly)], 1.2, M.SIDEWALK, (170, 160, 140), closed=True)
        cv.fill([painter.warp(poly)], M.WATER, jitter(rng, (52, 84, 92), 0.08))
    if rng.random() < 0.75:
        kind = rng.choice(["tennis", "field", "court"])
        w, d, col = {"tennis": (23.8, 11.0, [(70, 130, 92), (60, 92, 140), (168, 92, 62)][rng.integers(3)]),
                     "field": (min(90.0, 0.5 * W), min(55.0, 0.5 * D), (84, 136, 64)),
                     "court": (28.0, 15.0, (150, 100, 70))}[kind]
        for _ in range(20):
            ca = rng.uniform(a0 + 8 + w / 2, max(a0 + 8 + w / 2, a1 - 8 - w / 2))
            cb = rng.uniform(b0 + 8 + d / 2, max(b0 + 8 + d / 2, b1 - 8 - d / 2))
            rect = (ca - w / 2, ca + w / 2, cb - d / 2, cb + d / 2)
            corners = painter.warp(np.array([[rect[0], rect[2]], [rect[1], rect[2]], [rect[1], rect[3]], [rect[0], rect[3]], [ca, cb]]))
            _, mat, _, _ = cv.at(corners)
            if np.all(mat == M.GRASS):
                margin = 3.0
                cv.fill([painter.warp(rect_poly(rect[0] - margin, rect[1] + margin, rect[2] - margin, rect[3] + margin))],
                        M.PLAZA if kind != "field" else M.GRASS, np.array(col) * 0.85)
                cv.fill([painter.warp(rect_poly(*rect))], M.PLAZA if kind != "field" else M.GRASS, col)
                lines = [painter.warp(rect_poly(*rect, step=5)),
                         painter.warp(np.array([[ca, rect[2]], [ca, rect[3]]]))]
                cv.stroke(lines[:1], 0.12, M.MARKING, (235, 235, 230), closed=True, ground=False)
                cv.stroke(lines[1:], 0.12, M.MARKING, (235, 235, 230), ground=False)
                break
    # Winding paths across the park.
    for _ in range(int(rng.integers(2, 5))):
        side = rng.integers(4, size=2)
        p = [_edge_point(blk.rect, int(s), 4.0, rng.uniform(0.2, 0.8)) for s in side]
        ctrl = np.array([rng.uniform(a0 + 0.2 * W, a1 - 0.2 * W), rng.uniform(b0 + 0.2 * D, b1 - 0.2 * D)])
        t = np.linspace(0, 1, 40)[:, None]
        curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * ctrl + t ** 2 * p[1]
        uv = painter.warp(curve)
        _, mat, _, _ = cv.at(uv)
        keep = mat != M.WATER
        if keep.all():
            cv.stroke([uv], pw * rng.uniform(0.7, 1.0), M.SIDEWALK, path_rgb)
    # Trees in clumps, on lawn only.
    area = W * D
    n_trees = int(rng.poisson(cfg.park_tree_density * area))
    n_clumps = max(1, n_trees // 8)
    centres = np.stack([rng.uniform(a0 + 6, a1 - 6, n_clumps), rng.uniform(b0 + 6, b1 - 6, n_clumps)], 1)
    pick = centres[rng.integers(n_clumps, size=n_trees)] + rng.normal(0, 12, (n_trees, 2))
    pick[:, 0] = np.clip(pick[:, 0], a0 + 3, a1 - 3)
    pick[:, 1] = np.clip(pick[:, 1], b0 + 3, b1 - 3)
    uv = painter.warp(pick)
    _, mat, _, _ = cv.at(uv)
    for p, mt in zip(uv, mat):
        if mt == M.GRASS:
            painter.tree(p, rng.uniform(3.0, 6.5), rng.uniform(8, 19))
    spare = painter.warp(np.stack([rng.uniform(a0 + 5, a1 - 5, n_trees // 4 + 1), rng.uniform(b0 + 5, b1 - 5, n_trees // 4 + 1)], 1))
    _, mat, _, _ = cv.at(spare)
    for p, mt in zip(spare, mat):
        if mt == M.GRASS:
            painter.tree(p, rng.uniform(1.5, 3.0), rng.uniform(4, 8), spare=True)
    painter.park_polys.append(painter.warp(rect_poly(*blk.rect)))


def plaza_block(painter: Painter, blk: Block) -> None:
    """A plaza of at most ~90 m along the block, buildings on the rest of a long block."""
    rng = painter.rng
    a0, a1, b0, b1 = blk.rect
    long_a = (a1 - a0) >= (b1 - b0)
    L = (a1 - a0) if long_a else (b1 - b0)
    if L <= 110:
        _plaza(painter, blk)
        return
    length = rng.uniform(60, 90)
    x0 = rng.uniform(0.2, 0.8) * (L - length)
    parts = [(0.0, x0 - 1.0), (x0, x0 + length), (x0 + length + 1.0, L)]
    for k, (p0, p1) in enumerate(parts):
        rect = (a0 + p0, a0 + p1, b0, b1) if long_a else (a0, a1, b0 + p0, b0 + p1)
        if k == 1:
            _plaza(painter, Block(rect, "plaza", blk.centrality))
        elif p1 - p0 > 12:
            sub = Block(rect, "downtown" if blk.centrality > 0.5 else "midrise", blk.centrality)
            painter.cv.fill([painter.warp(rect_poly(*rect))], M.PLAZA, jitter(rng, (150, 147, 140), 0.08))
            lots(painter, sub)


def _plaza(painter: Painter, blk: Block) -> None:
    rng, cv = painter.rng, painter.cv
    a0, a1, b0, b1 = blk.rect
    base = jitter(rng, [(196, 188, 172), (170, 168, 162), (186, 170, 150)][rng.integers(3)], 0.04)
    pts = cv.px(painter.warp(rect_poly(*blk.rect)))
    win = cv.window(pts)
    if win is None:
        return
    m = cv.mask(win, pts)
    s, t, la, lb = painter.local_coords(win, blk.rect)
    tile = rng.uniform(3.0, 6.0)
    check = ((np.floor(s * la / tile) + np.floor(t * lb / tile)) % 2).astype(np.float32)
    ring = np.hypot((s - 0.5) * la, (t - 0.5) * lb)
    bands = ((ring // rng.uniform(6, 10)) % 2).astype(np.float32)
    tone = 1.0 + 0.05 * (check - 0.5) + 0.04 * (bands - 0.5)
    rgb = np.clip(base[None, None, :] * tone[..., None], 0, 255).astype(np.uint8)
    cv.put(win, m, M.PLAZA, rgb, 0.0, -1)
    c = np.array([(a0 + a1) / 2, (b0 + b1) / 2])
    r = min(a1 - a0, b1 - b0) * rng.uniform(0.08, 0.14)
    ang = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    circ = lambda rr: painter.warp(np.stack([c[0] + rr * np.cos(ang), c[1] + rr * np.sin(ang)], 1))  # noqa: E731
    cv.fill([circ(r + 1.0)], M.PLAZA, base * 0.8)
    cv.fill([circ(r)], M.WATER, (70, 118, 132))
    if rng.random() < 0.6:  # monument in the fountain
        building(painter, rect_poly(c[0] - 1.2, c[0] + 1.2, c[1] - 1.2, c[1] + 1.2, step=50), rng.uniform(12, 30),
                 roof_rgb=(150, 146, 140), facade=(170, 165, 155), window=(170, 165, 155), floor_m=3.0,
                 spacing_m=0.0, details=None)
    for inset in (4.0,):
        per = rect_poly(a0 + inset, a1 - inset, b0 + inset, b1 - inset, step=rng.uniform(7, 10))
        for p in per:
            painter.tree(painter.warp(p), rng.uniform(2.0, 3.5), rng.uniform(6, 10))
    painter.landmarks["plaza_centre_uv"] = painter.warp(c)


def _edge_point(rect: tuple, side: int, inset: float, f: float) -> np.ndarray:
    """A point `inset` inside side 0..3 (a0, a1, b0, b1) of a grid rectangle, at fraction f along it."""
    a0, a1, b0, b1 = rect
    return np.array([
        (a0 + inset, b0 + f * (b1 - b0)), (a1 - inset, b0 + f * (b1 - b0)),
        (a0 + f * (a1 - a0), b0 + inset), (a0 + f * (a1 - a0), b1 - inset)][side])
