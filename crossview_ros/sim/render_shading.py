"""Shading primitives of the panorama renderer (numba): surfaces, walls, façades, sky.

Raster frame of all kernels: x = metres east of the scene's NW corner, y = metres SOUTH of it,
so cell (row, col) = (floor(y / gsd), floor(x / gsd)). A ray with ENU angle a moves along
(dx, dy) = (cos a, -sin a). Colours are float RGB in 0..255 until written out. Lighting:
colour = albedo * light, ambient sky light plus a direct sun term (overcast: ambient only),
chosen so that sunlit ground at 45 deg sun has light ~1.

Importing this module also picks numba's threading layer for the parallel kernels.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit

from crossview_ros.sim.scene import Material

# numba's default OpenMP layer spins when the two cores are shared (with torch, with other
# processes) and then runs slower than one thread; the workqueue layer does not. A user's
# NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

TREE = int(Material.TREE)
CAR = int(Material.CAR)
BUILDING = int(Material.BUILDING)

# Lighting (colour = albedo * light): ambient sky light plus a direct sun term; overcast is
# ambient only. Chosen so that sunlit ground at 45 deg sun has light ~1.
AMBIENT = 0.6
SUN = 0.55
OVERCAST = 0.9
WALL_AMBIENT = 0.5  # a wall sees half the sky
STEP_PER_PIXEL = 1.0  # march step as a fraction of a pixel's footprint at that distance
RISE_M = 0.05  # height step that counts as a new wall
CANOPY_SHADE = 0.55  # ground under a crown (unseen from above): the scene's mean ground, shaded
# fastmath without the no-NaN/no-inf assumptions: the kernels compare against inf.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, fastmath=FASTMATH, inline="always")
def hash01(a, b, c):
    """Deterministic pseudo-random number in [0, 1) from three integers."""
    h = (a * 73856093) ^ (b * 19349663) ^ (c * 83492791)
    h = h & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF) / 16777216.0


@njit(cache=True, fastmath=FASTMATH)
def row_of_point(z_rel, t, h):
    """First row at or below the elevation of a point z_rel above the camera at distance t."""
    el = math.atan2(z_rel, t)
    r = math.ceil((0.5 * math.pi - el) * h / math.pi - 0.5)
    if r < 0:
        return 0
    if r > h:
        return h
    return r


@njit(cache=True, fastmath=FASTMATH)
def wall_normal(building_id, material, r, c, bid, axis_ne, axis_nn, gsd):
    """Outward horizontal normal (E, N) of the wall at cell (r, c): the smoothed gradient of the
    building mask, snapped to the face the ray crossed when the two agree within ~20 deg."""
    rows, cols = building_id.shape
    k = int(round(0.5 / gsd))
    k = max(1, min(3, k))
    ge = 0.0
    gn = 0.0
    for dr in range(-k, k + 1):
        rr = r + dr
        if rr < 0 or rr >= rows:
            continue
        for dc in range(-k, k + 1):
            cc = c + dc
            if cc < 0 or cc >= cols:
                continue
            if bid >= 0:
                inside = building_id[rr, cc] == bid
            else:
                inside = material[rr, cc] == material[r, c]
            if inside:
                ge += dc
                gn -= dr
    norm = math.sqrt(ge * ge + gn * gn)
    if norm < 1e-6:
        return axis_ne, axis_nn
    ne = -ge / norm
    nn = -gn / norm
    if axis_ne * ne + axis_nn * nn > 0.94:
        return axis_ne, axis_nn
    return ne, nn


@njit(cache=True, fastmath=FASTMATH)
def first_rise(height, material, x0, y0, dx, dy, t0, t1, gsd, h_thr):
    """Walk the cells between ray distances t0 and t1 (DDA) and return the first non-tree cell
    higher than h_thr: (found, t_enter, row, col, normal_e, normal_n)."""
    rows, cols = height.shape
    x = x0 + t0 * dx
    y = y0 + t0 * dy
    c = int(math.floor(x / gsd))
    r = int(math.floor(y / gsd))
    inf = 1e30
    if dx > 1e-12:
        sc = 1
        tmx = t0 + ((c + 1) * gsd - x) / dx
        tdx = gsd / dx
    elif dx < -1e-12:
        sc = -1
        tmx = t0 + (c * gsd - x) / dx
        tdx = -gsd / dx
    else:
        sc = 0
        tmx = inf
        tdx = inf
    if dy > 1e-12:
        sr = 1
        tmy = t0 + ((r + 1) * gsd - y) / dy
        tdy = gsd / dy
    elif dy < -1e-12:
        sr = -1
        tmy = t0 + (r * gsd - y) / dy
        tdy = -gsd / dy
    else:
        sr = 0
        tmy = inf
        tdy = inf
    for _ in range(100000):
        if tmx < tmy:
            t_enter = tmx
            c += sc
            tmx += tdx
            ne = -float(sc)
            nn = 0.0
        else:
            t_enter = tmy
            r += sr
            tmy += tdy
            ne = 0.0
            nn = float(sr)  # moving south (rows +) enters through the north face
        if t_enter > t1 + 1e-9:
            break
        if r < 0 or r >= rows or c < 0 or c >= cols:
            break
        if material[r, c] != TREE and height[r, c] > h_thr:
            return True, t_enter, r, c, ne, nn
    return False, 0.0, 0, 0, 0.0, 0.0


@njit(cache=True, fastmath=FASTMATH)
def facade_rgb(b, z, u, facade, window, floor_h, spacing, b_height, light, rgb_out):
    """Façade colour at height z and wall coordinate u of building b: wall, floor slabs and a
    window grid (rows by floor height, columns by window spacing; shop windows on the ground
    floor; blank parapet under the roof); windows vary per pane and reflect more than walls."""
    f_r = facade[b, 0] * light
    f_g = facade[b, 1] * light
    f_b = facade[b, 2] * light
    fh = floor_h[b]
    ws = spacing[b]
    if fh > 0.5 and z < b_height[b] - 0.7 and z >= 0.0:
        fl = math.floor(z / fh)
        v = z / fh - fl
        if v < 0.06:
            f_r *= 0.82
            f_g *= 0.82
            f_b *= 0.82
        if ws > 0.3:
            wu = u / ws
            k = math.floor(wu)
            w = wu - k
            if fl == 0:
                inside = 0.12 < v < 0.85 and 0.08 < w < 0.92
            else:
                inside = 0.3 < v < 0.8 and 0.2 < w < 0.8
            if inside:
                n = hash01(b, int(fl), int(k))
                shade = (0.7 + 0.5 * n) * (0.55 + 0.45 * light) * (0.85 + 0.3 * v)
                f_r = window[b, 0] * shade
                f_g = window[b, 1] * shade
                f_b = window[b, 2] * shade
    rgb_out[0] = f_r
    rgb_out[1] = f_g
    rgb_out[2] = f_b


@njit(cache=True, fastmath=FASTMATH)
def sky_rows(h, sunny):
    """Per-row sky gradient (H, 3): pale horizon to deeper zenith (grey when overcast)."""
    sky = np.zeros((h, 3))
    if sunny:
        hor = (200.0, 218.0, 238.0)
        zen = (70.0, 125.0, 210.0)
    else:
        hor = (205.0, 208.0, 212.0)
        zen = (160.0, 165.0, 175.0)
    for r in range(h):
        el = 0.5 * math.pi - (r + 0.5) * math.pi / h
        s = math.sqrt(max(el, 0.0) / (0.5 * math.pi))
        sky[r, 0] = hor[0] + (zen[0] - hor[0]) * s
        sky[r, 1] = hor[1] + (zen[1] - hor[1]) * s
        sky[r, 2] = hor[2] + (zen[2] - hor[2]) * s
    return sky


@njit(cache=True, fastmath=FASTMATH)
def bilinear(albedo, fy, fx, scale, rgb_out):
    """Albedo interpolated between cell centres at fractional (row, col) fy, fx (centres at
    integers), clamped at the raster edge, times scale."""
    rows, cols = albedo.shape[0], albedo.shape[1]
    r0 = int(math.floor(fy))
    c0 = int(math.floor(fx))
    wy = fy - r0
    wx = fx - c0
    ra = min(max(r0, 0), rows - 1)
    rb = min(max(r0 + 1, 0), rows - 1)
    ca = min(max(c0, 0), cols - 1)
    cb = min(max(c0 + 1, 0), cols - 1)
    for k in range(3):
        top = albedo[ra, ca, k] * (1.0 - wx) + albedo[ra, cb, k] * wx
        bot = albedo[rb, ca, k] * (1.0 - wx) + albedo[rb, cb, k] * wx
        rgb_out[k] = (top * (1.0 - wy) + bot * wy) * scale


@njit(cache=True, fastmath=FASTMATH)
def fill_top(col_rgb, col_t, r_from, r_to, hh, t0, t1, cam_x, cam_y, cam_h, dx, dy, tan_el, gsd,
              height, material, albedo, fall_r, fall_c, light, pix_ang, under, rgb):  # fmt: skip
    """Fill the empty rows r_from..r_to-1 with a horizontal surface at height hh seen from above
    between ray distances t0 and t1: each row takes the albedo where its ray meets the plane
    (bilinear when a pixel is smaller than a cell); ground under a canopy takes `under`."""
    rows, cols = height.shape
    for r in range(r_from, r_to):
        if col_t[r] != np.inf:
            continue
        te = t1
        if tan_el[r] < -1e-9:
            te = (cam_h - hh) / (-tan_el[r])
            if te < t0:
                te = t0
            if te > t1:
                te = t1
        fy = (cam_y + te * dy) / gsd
        fx = (cam_x + te * dx) / gsd
        qr = int(math.floor(fy))
        qc = int(math.floor(fx))
        if not (0 <= qr < rows and 0 <= qc < cols):
            qr = fall_r
            qc = fall_c
            fy = qr + 0.5
            fx = qc + 0.5
        if material[qr, qc] == TREE:
            mottle = light * (0.85 + 0.3 * hash01(int(fx * gsd / 0.3), int(fy * gsd / 0.3), 7))
            rgb[0] = under[0] * mottle
            rgb[1] = under[1] * mottle
            rgb[2] = under[2] * mottle
        elif abs(height[qr, qc] - hh) > 0.25:
            rgb[0] = albedo[fall_r, fall_c, 0] * light
            rgb[1] = albedo[fall_r, fall_c, 1] * light
            rgb[2] = albedo[fall_r, fall_c, 2] * light
        elif te * pix_ang < gsd:
            bilinear(albedo, fy - 0.5, fx - 0.5, light, rgb)
        else:
            rgb[0] = albedo[qr, qc, 0] * light
            rgb[1] = albedo[qr, qc, 1] * light
            rgb[2] = albedo[qr, qc, 2] * light
        col_rgb[r, 0] = rgb[0]
        col_rgb[r, 1] = rgb[1]
        col_rgb[r, 2] = rgb[2]
        col_t[r] = te


@njit(cache=True, fastmath=FASTMATH)
def put_pixel(out, rng_m, row, col, rgb, t):
    """Write one pixel: range t and the colour rounded and clipped to uint8."""
    rng_m[row, col] = t
    for k in range(3):
        v = rgb[k]
        if v < 0.0:
            v = 0.0
        elif v > 255.0:
            v = 255.0
        out[row, col, k] = np.uint8(v + 0.5)
