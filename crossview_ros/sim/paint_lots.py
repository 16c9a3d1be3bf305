"""Painting built-up blocks: blocks cut into lots, and what stands on each lot.

A block's buildable rectangle is ringed by strips of lots facing its streets (side f: 0 = the
a0 side, 1 = a1, 2 = b0, 3 = b1), cut into frontages that suit the block kind (residential,
midrise, downtown); its interior holds yards, trees or a downtown annex. A lot holds a house
with a yard and driveway, a midrise (sometimes pitched or L-shaped), a downtown block or a
tower, or now and then a pocket park, a surface car park or a vacant lot. Industrial blocks
are sheds on paved yards; parking lots record their stalls as car slots.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from crossview_ros.sim.city_canvas import jitter, rect_poly
from crossview_ros.sim.city_layout import Block
from crossview_ros.sim.city_painter import Painter
from crossview_ros.sim.city_palette import FACADE_RGB, GRASS_RGB, PITCHED_ROOF_RGB
from crossview_ros.sim.paint_buildings import building, flat_building, tower
from crossview_ros.sim.scene import Material

M = Material

# (depth from the street, depth, along the frontage, along) -> grid rectangle (a0, a1, b0, b1)
LotFrame = Callable[[float, float, float, float], tuple[float, float, float, float]]


def lots(painter: Painter, blk: Block) -> None:
    """A block ringed by lots facing its streets, and its interior (yards, trees or an annex)."""
    rng, kind, kappa = painter.rng, blk.kind, blk.centrality
    a0, a1, b0, b1 = blk.rect
    W, D = a1 - a0, b1 - b0
    depth = {"residential": rng.uniform(18, 30), "midrise": rng.uniform(16, 26), "downtown": rng.uniform(20, 36)}[kind]
    front = {"residential": (6.0, 13.0), "midrise": (10.0, 28.0), "downtown": (18.0, 48.0)}[kind]
    lots: list[tuple[float, float, float, float, int]] = []
    long_a = W >= D
    short = D if long_a else W
    if short < 2 * depth + (40 if kind == "residential" else 8):
        depth = short / 2 if short >= 16 else short  # back-to-back lots, yards meeting mid-block
    # Long sides: strips of `depth` over the full length; short sides between them.
    if long_a:
        strips = [((a0, a1, b0, b0 + depth), 2)]
        if depth < short:
            strips.append(((a0, a1, b1 - depth, b1), 3))
        if short > 2 * depth + 8:
            strips += [((a0, a0 + depth, b0 + depth, b1 - depth), 0), ((a1 - depth, a1, b0 + depth, b1 - depth), 1)]
    else:
        strips = [((a0, a0 + depth, b0, b1), 0)]
        if depth < short:
            strips.append(((a1 - depth, a1, b0, b1), 1))
        if short > 2 * depth + 8:
            strips += [((a0 + depth, a1 - depth, b0, b0 + depth), 2), ((a0 + depth, a1 - depth, b1 - depth, b1), 3)]
    for (sa0, sa1, sb0, sb1), f in strips:
        along_a = f in (2, 3)
        length = (sa1 - sa0) if along_a else (sb1 - sb0)
        if length < 3:
            continue
        cuts = _cuts(rng, length, *front)
        for x0, x1 in zip(cuts[:-1], cuts[1:]):
            if along_a:
                lots.append((sa0 + x0, sa0 + x1, sb0, sb1, f))
            else:
                lots.append((sa0, sa1, sb0 + x0, sb0 + x1, f))
    for lot in lots:
        _lot(painter, lot, kind, kappa)
    # Interior of the ring: yards, courtyard trees, or an annex downtown.
    if short > 2 * depth + 8:
        inner = (a0 + depth, a1 - depth, b0 + depth, b1 - depth)
        ia0, ia1, ib0, ib1 = inner
        if kind == "downtown" and rng.random() < 0.6 and min(ia1 - ia0, ib1 - ib0) > 8:
            h = rng.uniform(2, 5) * 3.6
            flat_building(painter, (ia0 + 2, ia1 - 2, ib0 + 2, ib1 - 2), h, kind)
        else:
            if kind != "residential" and rng.random() < 0.5:
                painter.cv.fill([painter.warp(rect_poly(*inner))], M.GRASS, jitter(rng, GRASS_RGB, 0.1))
            for _ in range(int(rng.poisson((ia1 - ia0) * (ib1 - ib0) / (130.0 if kind == "residential" else 250.0)))):
                p = np.array([rng.uniform(ia0 + 2, ia1 - 2), rng.uniform(ib0 + 2, ib1 - 2)])
                painter.tree(painter.warp(p), rng.uniform(2.0, 4.5), rng.uniform(5, 12))


def _lot_frame(lot: tuple) -> LotFrame:
    """Rectangles of a lot given in its own frame: depth from its street and position along it."""
    la0, la1, lb0, lb1, f = lot

    def sub(d0: float, d1: float, s0: float, s1: float) -> tuple[float, float, float, float]:
        if f == 0:
            return la0 + d0, la0 + d1, lb0 + s0, lb0 + s1
        if f == 1:
            return la1 - d1, la1 - d0, lb0 + s0, lb0 + s1
        if f == 2:
            return la0 + s0, la0 + s1, lb0 + d0, lb0 + d1
        return la0 + s0, la0 + s1, lb1 - d1, lb1 - d0

    return sub


def _lot(painter: Painter, lot: tuple, kind: str, kappa: float) -> None:
    """One lot (a0, a1, b0, b1, f): a special use now and then, else a building of the block's kind."""
    rng, cfg = painter.rng, painter.config
    la0, la1, lb0, lb1, f = lot
    ldepth = (la1 - la0) if f in (0, 1) else (lb1 - lb0)
    lfront = (lb1 - lb0) if f in (0, 1) else (la1 - la0)
    sub = _lot_frame(lot)
    if _special_lot(painter, lot, kind, rng.random(), ldepth, lfront):
        return
    if kind == "residential":
        _house(painter, sub, f, ldepth, lfront, kind)
        return
    gap = rng.random() < (0.15 if kind == "midrise" else 0.08)
    g0 = rng.uniform(1.0, 3.0) if gap and lfront > 10 else 0.0
    if kind == "midrise":
        _midrise(painter, sub, ldepth, lfront, g0, kind, kappa)
        return
    # downtown
    rect = sub(0, ldepth, g0, lfront)
    area = (rect[1] - rect[0]) * (rect[3] - rect[2])
    if area > 600 and rng.random() < cfg.tower_share * (0.4 + kappa):
        tower(painter, rect, kappa)
        return
    floors = int(np.clip(round(rng.lognormal(math.log(6 + 10 * kappa), 0.45)), 3, 25))
    flat_building(painter, rect, floors * rng.uniform(3.5, 4.2) + rng.uniform(0.5, 1.5), kind)


def _special_lot(painter: Painter, lot: tuple, kind: str, u: float, ldepth: float, lfront: float) -> bool:
    """A pocket park, surface car park or vacant lot when the draw u says so; True if painted."""
    rng = painter.rng
    la0, la1, lb0, lb1, _ = lot
    if kind != "downtown" and u < 0.03:  # pocket park
        painter.cv.fill([painter.warp(rect_poly(la0, la1, lb0, lb1))], M.GRASS, jitter(rng, GRASS_RGB, 0.12))
        for _ in range(1 + int(rng.poisson(ldepth * lfront / 120.0))):
            p = np.array([rng.uniform(la0 + 1.5, la1 - 1.5), rng.uniform(lb0 + 1.5, lb1 - 1.5)])
            painter.tree(painter.warp(p), rng.uniform(2.5, 5.0), rng.uniform(6, 14))
        return True
    if kind == "midrise" and u < 0.07 and ldepth > 14 and lfront > 10:  # surface car park
        painter.cv.fill([painter.warp(rect_poly(la0, la1, lb0, lb1))], M.ROAD, jitter(rng, (92, 92, 94), 0.1))
        parking_lot(painter, (la0, la1, lb0, lb1))
        return True
    if kind != "downtown" and u < 0.085:  # vacant lot: dirt and gravel
        painter.cv.fill([painter.warp(rect_poly(la0, la1, lb0, lb1))], M.PLAZA, jitter(rng, (150, 132, 104), 0.1))
        return True
    return False


def _house(painter: Painter, sub: LotFrame, f: int, ldepth: float, lfront: float, kind: str) -> None:
    """A house set back from the street, with side gaps, a back yard and maybe a driveway."""
    rng = painter.rng
    setback = rng.uniform(1.0, 5.0) if rng.random() < 0.7 else 0.0
    bdepth = min(ldepth - setback - 1.5, rng.uniform(9, 15))
    g0 = rng.uniform(0.8, 2.5) if rng.random() < 0.5 else 0.0
    g1 = rng.uniform(0.8, 2.5) if rng.random() < 0.5 else 0.0
    if lfront - g0 - g1 < 5 or bdepth < 5:
        g0 = g1 = 0.0
        bdepth = max(bdepth, min(ldepth, 6.0))
    rect = sub(setback, setback + bdepth, g0, lfront - g1)
    floors = int(rng.choice([1, 2, 2, 2, 3, 3, 4]))
    floor_m = rng.uniform(2.8, 3.3)
    roof = str(rng.choice(["gable", "hip", "flat"], p=[0.55, 0.2, 0.25]))
    if roof == "flat":
        flat_building(painter, rect, floors * floor_m + rng.uniform(0.3, 0.8), kind, floor_m=floor_m, style="plain")
    else:
        half = min(rect[1] - rect[0], rect[3] - rect[2]) / 2
        rise = min(half * math.tan(math.radians(rng.uniform(22, 40))), 0.6 * floors * floor_m)
        building(painter, rect_poly(*rect, step=50), floors * floor_m + rise, roof=roof, main=rect, rise_m=rise,
                 roof_rgb=jitter(rng, PITCHED_ROOF_RGB[rng.integers(len(PITCHED_ROOF_RGB))], 0.1),
                 facade=jitter(rng, FACADE_RGB[rng.integers(len(FACADE_RGB))], 0.08),
                 window=(rng.uniform(40, 70),) * 3, floor_m=floor_m, spacing_m=rng.uniform(2.4, 4.0))
    yard_d = ldepth - setback - bdepth
    if yard_d > 3:
        yard = sub(setback + bdepth, ldepth, 0, lfront)
        fence = jitter(rng, (120, 110, 96), 0.15)
        painter.cv.stroke([painter.warp(rect_poly(*yard, step=10))], 0.15, None, fence, closed=True, ground=False)
        _yard(painter, sub, setback + bdepth, ldepth, lfront)
    if max(g0, g1) > 2.2 and setback > 0:  # driveway along the wider side gap
        s0, s1 = (0.2, g0 - 0.2) if g0 >= g1 else (lfront - g1 + 0.2, lfront - 0.2)
        drive = sub(0, setback + bdepth + min(4.0, max(yard_d - 1, 0)), s0, s1)
        painter.cv.fill([painter.warp(rect_poly(*drive, step=50))], M.PLAZA, jitter(rng, (160, 158, 152), 0.06))
        if rng.random() < 0.5:
            d = sub(0.3, 5.3, s0, s1)
            p, q = painter.warp(np.array([[(d[0] + d[1]) / 2, (d[2] + d[3]) / 2],
                                          [(d[0] + d[1]) / 2 + 0.5 * (f == 0) - 0.5 * (f == 1),
                                           (d[2] + d[3]) / 2 + 0.5 * (f == 2) - 0.5 * (f == 3)]]))
            if (s1 - s0) > 2.0:
                painter.slots.append((float(p[0]), float(p[1]), math.atan2(q[1] - p[1], q[0] - p[0]), 2))


def _midrise(painter: Painter, sub: LotFrame, ldepth: float, lfront: float, g0: float, kind: str,
             kappa: float) -> None:
    """A midrise on the street line: flat-roofed, sometimes pitched or L-shaped (a rear corner open)."""
    rng = painter.rng
    bdepth = min(ldepth, rng.uniform(14, 24))
    rect = sub(0, bdepth, g0, lfront)
    floors = int(np.clip(round(rng.lognormal(math.log(4 + 4 * kappa), 0.35)), 3, 16))
    floor_m = rng.uniform(3.1, 3.6)
    if rng.random() < 0.12 and bdepth > 8 and lfront > 6:
        half = min(rect[1] - rect[0], rect[3] - rect[2]) / 2
        rise = half * math.tan(math.radians(rng.uniform(25, 40)))
        building(painter, rect_poly(*rect, step=50), floors * floor_m + rise, roof="gable", main=rect, rise_m=rise,
                 roof_rgb=jitter(rng, PITCHED_ROOF_RGB[rng.integers(len(PITCHED_ROOF_RGB))], 0.1),
                 facade=jitter(rng, FACADE_RGB[rng.integers(len(FACADE_RGB))], 0.08),
                 window=(rng.uniform(40, 70),) * 3, floor_m=floor_m, spacing_m=rng.uniform(2.4, 3.6))
        return
    if rng.random() < 0.2 and lfront - g0 > 16 and bdepth > 14:  # L-shape: a rear corner left open
        cut_d, cut_s = rng.uniform(0.35, 0.55) * bdepth, rng.uniform(0.3, 0.5) * (lfront - g0)
        front_rect = sub(0, bdepth - cut_d, g0, lfront)
        wing = sub(bdepth - cut_d, bdepth, g0, lfront - cut_s) if rng.random() < 0.5 else sub(bdepth - cut_d, bdepth, g0 + cut_s, lfront)
        flat_building(painter, front_rect, floors * floor_m, kind, floor_m=floor_m, extra=[wing])
        return
    flat_building(painter, rect, floors * floor_m + rng.uniform(0.3, 1.0), kind, floor_m=floor_m)


def _yard(painter: Painter, sub: LotFrame, d0: float, d1: float, width: float) -> None:
    """A back yard between depths d0..d1 of a lot: patio, pool, shed, trees."""
    rng = painter.rng
    depth = d1 - d0
    if depth > 5 and rng.random() < 0.3:  # patio behind the house
        pd = min(depth - 1, rng.uniform(2.5, 4.5))
        painter.cv.fill([painter.warp(rect_poly(*sub(d0, d0 + pd, 0.5, width - 0.5), step=50))], M.PLAZA,
                        jitter(rng, [(176, 162, 140), (150, 148, 144), (168, 120, 96)][rng.integers(3)], 0.06))
        d0 += pd
        depth -= pd
    if depth > 11 and width > 7 and rng.random() < 0.1:  # pool with a paved border
        pl, pw = min(depth - 4, rng.uniform(7, 11)), min(width - 3, rng.uniform(3.5, 5.5))
        x = d0 + rng.uniform(1.5, depth - pl - 1.5)
        y = rng.uniform(1.2, width - pw - 1.2)
        painter.cv.fill([painter.warp(rect_poly(*sub(x - 0.8, x + pl + 0.8, y - 0.8, y + pw + 0.8), step=50))], M.PLAZA, (200, 196, 186))
        painter.cv.fill([painter.warp(rect_poly(*sub(x, x + pl, y, y + pw), step=50))], M.WATER,
                        jitter(rng, (86, 172, 200), 0.05))
        return
    if depth > 8 and rng.random() < 0.15:  # shed / garage at the back
        sd, sw = rng.uniform(2.5, 5.5), min(width - 1, rng.uniform(2.5, 6.0))
        y = rng.uniform(0.3, max(0.31, width - sw - 0.3))
        flat_building(painter, sub(d1 - sd - 0.5, d1 - 0.5, y, y + sw), rng.uniform(2.3, 3.2), "residential",
                      style="plain", floor_m=2.6)
    for _ in range(int(rng.poisson(0.25 + depth * width / 160.0))):
        x, y = rng.uniform(d0 + 1.5, max(d0 + 1.6, d1 - 1.5)), rng.uniform(1.0, max(1.1, width - 1.0))
        r = sub(x, x, y, y)
        painter.tree(painter.warp(np.array([r[0], r[2]])), rng.uniform(1.8, 4.2), rng.uniform(4, 11))


def industrial(painter: Painter, blk: Block) -> None:
    """A paved block of 1-3 sheds, some with a parking yard in front."""
    rng = painter.rng
    a0, a1, b0, b1 = blk.rect
    painter.cv.fill([painter.warp(rect_poly(*blk.rect))], M.ROAD, jitter(rng, (104, 103, 100), 0.1))
    long_a = (a1 - a0) >= (b1 - b0)
    n = int(rng.integers(1, 4))
    cuts = np.linspace(0, 1, n + 1)
    for k in range(n):
        if long_a:
            part = (a0 + cuts[k] * (a1 - a0), a0 + cuts[k + 1] * (a1 - a0), b0, b1)
        else:
            part = (a0, a1, b0 + cuts[k] * (b1 - b0), b0 + cuts[k + 1] * (b1 - b0))
        inset = rng.uniform(3, 10)
        rect = (part[0] + inset, part[1] - inset, part[2] + inset, part[3] - inset)
        if min(rect[1] - rect[0], rect[3] - rect[2]) < 10:
            continue
        roof = jitter(rng, [(205, 205, 200), (185, 185, 182), (160, 162, 165), (140, 120, 100)][rng.integers(4)], 0.05)
        flat_building(painter, rect, rng.uniform(6, 14), "industrial", roof_rgb=roof)
        if rng.random() < 0.5:
            yard = (part[0] + 1, part[1] - 1, part[2] + 1, part[2] + max(inset - 1, 1.5))
            parking_lot(painter, yard)


def parking_lot(painter: Painter, rect: tuple) -> None:
    """Stall rows (2.6 m x 5.2 m, 6.5 m aisles) along the lot's long axis, slots recorded."""
    cv = painter.cv
    a0, a1, b0, b1 = rect
    long_a = (a1 - a0) >= (b1 - b0)
    L, S = ((a1 - a0), (b1 - b0)) if long_a else ((b1 - b0), (a1 - a0))
    lines = []
    row_start = 1.0
    while row_start + 5.2 <= S - 0.5:
        n_st = int((L - 2.0) // 2.6)
        for k in range(n_st + 1):
            x = 1.0 + k * 2.6
            seg = np.array([[x, row_start], [x, row_start + 5.2]])
            lines.append(seg)
            if k < n_st:
                _slot(painter, rect, long_a, x + 1.3, row_start + 2.6)
        row_start += 5.2 + (6.5 if (len(lines) // max(n_st + 1, 1)) % 2 == 1 else 0.0)
    paint = []
    for seg in lines:
        ab = np.stack([a0 + seg[:, 0], b0 + seg[:, 1]], 1) if long_a else np.stack([a0 + seg[:, 1], b0 + seg[:, 0]], 1)
        paint.append(painter.warp(ab))
    cv.stroke(paint, 0.12, M.MARKING, (222, 222, 215), ground=False)


def _slot(painter: Painter, rect: tuple, long_a: bool, x: float, y: float) -> None:
    a0, _, b0, _ = rect
    ab = np.array([a0 + x, b0 + y]) if long_a else np.array([a0 + y, b0 + x])
    p = painter.warp(ab)
    q = painter.warp(ab + (np.array([0.0, 1.0]) if long_a else np.array([1.0, 0.0])))
    heading = math.atan2(q[1] - p[1], q[0] - p[0]) + (math.pi if painter.rng.random() < 0.5 else 0.0)
    painter.slots.append((float(p[0]), float(p[1]), heading, 1))


def _cuts(rng: np.random.Generator, length: float, lo: float, hi: float) -> np.ndarray:
    """Positions 0 = x0 < ... < xn = length cutting a strip into lots of widths ~U(lo, hi)."""
    widths = []
    total = 0.0
    while total < length:
        w = rng.uniform(lo, hi)
        widths.append(w)
        total += w
    if len(widths) > 1 and total - length > widths[-1] / 2:
        total -= widths.pop()
    x = np.concatenate([[0.0], np.cumsum(widths)])
    return x * (length / x[-1])


# --------------------------------------------------------------------------- base and epochs
