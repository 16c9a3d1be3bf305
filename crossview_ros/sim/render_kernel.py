"""The panorama ray-marching kernel (numba, one thread per column); see render.py for the model.

render_level fills a level panorama column by column: each column marches outward along its
ray over the height raster (_march_column: tree crowns, walls and tops), then the rows still
empty get the ground plane or the sky (_far_rows), occluder cylinders are z-tested against what
is there (_occluders), and haze is applied as each pixel is written (_haze_and_write). Frame and
colour conventions are those of render_shading.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from crossview_ros.sim.render_shading import (
    AMBIENT,
    BUILDING,
    CANOPY_SHADE,
    CAR,
    FASTMATH,
    OVERCAST,
    RISE_M,
    STEP_PER_PIXEL,
    SUN,
    TREE,
    WALL_AMBIENT,
    facade_rgb,
    fill_top,
    first_rise,
    hash01,
    put_pixel,
    row_of_point,
    sky_rows,
    wall_normal,
)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def render_level(
    height, material, albedo, building_id, facade, window, floor_h, spacing, b_height, b_axis,
    cam_x, cam_y, cam_h, yaw_grid, gsd, max_range, haze_m, sun_enu, sunny, mean_ground, occ,
    out, rng_m,
):  # fmt: skip
    """Level panorama into out (H, W, 3) and rng_m (H, W): one column per prange iteration."""
    h = out.shape[0]
    w = out.shape[1]
    if sunny:
        top_light = AMBIENT + SUN * sun_enu[2]
    else:
        top_light = OVERCAST
    tan_el, cos_el, sin_el, haze_per_m = _row_tables(h, haze_m)
    sky = sky_rows(h, sunny)
    pix_ang = math.pi / h
    for c in prange(w):
        a = yaw_grid - 2.0 * math.pi * (c + 0.5) / w
        de = math.cos(a)  # ENU direction of the ray
        dn = math.sin(a)
        col_rgb = np.empty((h, 3), np.float32)
        col_t = np.full(h, np.inf, np.float32)
        rgb = np.empty(3, np.float32)
        _march_column(
            col_rgb, col_t, rgb, height, material, albedo, building_id, facade, window, floor_h, spacing,
            b_height, b_axis, cam_x, cam_y, cam_h, de, dn, gsd, max_range, sun_enu, sunny, top_light,
            mean_ground, tan_el, pix_ang,
        )  # fmt: skip
        _far_rows(col_rgb, col_t, albedo, cam_x, cam_y, cam_h, de, dn, gsd, tan_el, cos_el, sin_el, sky,
                  sun_enu, sunny, top_light, mean_ground)  # fmt: skip
        _occluders(col_rgb, col_t, occ, cam_x, cam_y, cam_h, de, dn, tan_el, sun_enu, sunny, top_light)
        _haze_and_write(out, rng_m, c, col_rgb, col_t, rgb, haze_m, haze_per_m, sunny)


@njit(cache=True, fastmath=FASTMATH)
def _row_tables(h, haze_m):
    """Per row: tan, cos and sin of the elevation, and the haze extinction per metre of
    horizontal distance (zeros without haze)."""
    tan_el = np.empty(h)
    cos_el = np.empty(h)
    sin_el = np.empty(h)
    for r in range(h):
        el = 0.5 * math.pi - (r + 0.5) * math.pi / h
        tan_el[r] = math.tan(el)
        cos_el[r] = math.cos(el)
        sin_el[r] = math.sin(el)
    haze_per_m = np.zeros(h)
    if haze_m > 0.0:
        for r in range(h):
            haze_per_m[r] = 1.0 / (max(cos_el[r], 1e-6) * haze_m)
    return tan_el, cos_el, sin_el, haze_per_m


@njit(cache=True, fastmath=FASTMATH)
def _march_column(
    col_rgb, col_t, rgb, height, material, albedo, building_id, facade, window, floor_h, spacing,
    b_height, b_axis, cam_x, cam_y, cam_h, de, dn, gsd, max_range, sun_enu, sunny, top_light,
    mean_ground, tan_el, pix_ang,
):  # fmt: skip
    """March one ray outward until max_range or every row is filled; rows fill from the bottom."""
    h = col_t.shape[0]
    rows, cols = height.shape
    dx = de
    dy = -dn
    min_step = 0.5 * gsd
    under = np.empty(3, np.float32)
    for k in range(3):
        under[k] = mean_ground[k] * CANOPY_SHADE
    y_lo = h  # rows >= y_lo are filled contiguously from the bottom
    r0 = int(math.floor(cam_y / gsd))
    c0 = int(math.floor(cam_x / gsd))
    h_prev = 0.0
    if material[r0, c0] != TREE:
        h_prev = height[r0, c0]
    t = 0.0
    while t < max_range and y_lo > 0:
        step = max(min_step, t * pix_ang * STEP_PER_PIXEL)
        t_next = min(t + step, max_range)
        x = cam_x + t_next * dx
        y = cam_y + t_next * dy
        sr = int(math.floor(y / gsd))
        sc = int(math.floor(x / gsd))
        if sr < 0 or sr >= rows or sc < 0 or sc >= cols:
            break
        hs = height[sr, sc]
        ms = material[sr, sc]
        rise = ms != TREE and hs > h_prev + RISE_M
        if not rise and (hs - cam_h) < t_next * tan_el[y_lo - 1]:
            # the top of this sample is below every unfilled row: nothing new is visible
            h_prev = 0.0 if ms == TREE else hs
            t = t_next
            continue
        if ms == TREE:
            y_lo = _tree_sample(col_rgb, col_t, rgb, under, y_lo, sr, sc, hs, x, y, t, t_next, cam_x, cam_y, cam_h,
                                dx, dy, tan_el, gsd, height, material, albedo, top_light, pix_ang)  # fmt: skip
            h_prev = 0.0
            t = t_next
            continue
        y_lo = _surface_sample(
            col_rgb, col_t, rgb, under, y_lo, rise, h_prev, sr, sc, hs, t, t_next, height, material, albedo,
            building_id, facade, window, floor_h, spacing, b_height, b_axis, cam_x, cam_y, cam_h, de, dn, gsd,
            sun_enu, sunny, top_light, tan_el, pix_ang,
        )  # fmt: skip
        h_prev = hs
        t = t_next


@njit(cache=True, fastmath=FASTMATH)
def _tree_sample(col_rgb, col_t, rgb, under, y_lo, sr, sc, hs, x, y, t, t_next, cam_x, cam_y, cam_h, dx, dy,
                 tan_el, gsd, height, material, albedo, top_light, pix_ang):  # fmt: skip
    """A tree cell: shaded ground up to it, a floating canopy [bottom, top] at the sample
    distance, and a trunk if this is the crown's highest cell. Returns the new y_lo."""
    h = col_t.shape[0]
    rows, cols = height.shape
    bottom = min(0.4 * hs, 2.5)
    r_top = row_of_point(hs - cam_h, t_next, h)
    r_bot = row_of_point(bottom - cam_h, t_next, h)
    light = 0.8 * top_light + 0.1
    r_g = row_of_point(-cam_h, t_next, h)
    if r_g < y_lo:
        fill_top(col_rgb, col_t, r_g, y_lo, 0.0, t, t_next, cam_x, cam_y, cam_h, dx, dy, tan_el, gsd,
                 height, material, albedo, sr, sc, top_light, pix_ang, under, rgb)  # fmt: skip
        y_lo = r_g
    for r in range(r_top, min(r_bot, y_lo)):
        if col_t[r] == np.inf:
            z = cam_h + t_next * tan_el[r]
            # leaf clusters (0.4 m) and leaves (0.1 m) around the sampled point
            lx = x / 0.1
            ly = y / 0.1
            lz = z / 0.1
            nz = 0.55 * hash01(int(lx // 4), int(ly // 4), int(lz // 4))
            nz += 0.45 * hash01(int(lx), int(ly), int(lz))
            shade = light * (0.45 + 0.55 * nz) * (0.7 + 0.3 * (z - bottom) / max(hs - bottom, 1e-3))
            col_rgb[r, 0] = albedo[sr, sc, 0] * shade
            col_rgb[r, 1] = albedo[sr, sc, 1] * shade
            col_rgb[r, 2] = albedo[sr, sc, 2] * shade
            col_t[r] = t_next
    trunk = True
    for dr in range(-1, 2):
        for dc in range(-1, 2):
            rr = sr + dr
            cc = sc + dc
            if (dr != 0 or dc != 0) and 0 <= rr < rows and 0 <= cc < cols:
                hn = height[rr, cc]
                if hn > hs or (hn == hs and (dr < 0 or (dr == 0 and dc < 0))):
                    trunk = False
    if trunk:
        r_tt = row_of_point(bottom - cam_h, t_next, h)
        for r in range(r_tt, y_lo):
            if col_t[r] == np.inf:
                col_rgb[r, 0] = 85.0 * light
                col_rgb[r, 1] = 68.0 * light
                col_rgb[r, 2] = 52.0 * light
                col_t[r] = t_next
        if r_tt < y_lo:
            y_lo = r_tt
    elif r_bot >= y_lo and r_top < y_lo:
        y_lo = r_top
    return y_lo


@njit(cache=True, fastmath=FASTMATH)
def _surface_sample(
    col_rgb, col_t, rgb, under, y_lo, rise, h_prev, sr, sc, hs, t, t_next, height, material, albedo,
    building_id, facade, window, floor_h, spacing, b_height, b_axis, cam_x, cam_y, cam_h, de, dn, gsd,
    sun_enu, sunny, top_light, tan_el, pix_ang,
):  # fmt: skip
    """A non-tree sample: the wall of a rising edge (refined by DDA to the face), or the top
    surface seen from above. Returns the new y_lo."""
    h = col_t.shape[0]
    dx = de
    dy = -dn
    wall = False
    t_hit = t_next
    hr = sr
    hc = sc
    ne = 0.0
    nn = 0.0
    if rise:
        found, te, rr, cc, ane, ann = first_rise(
            height, material, cam_x, cam_y, dx, dy, t, t_next, gsd, h_prev + RISE_M
        )
        if found:
            t_hit = te
            hr = rr
            hc = cc
            ne = ane
            nn = ann
        else:
            ne = -de
            nn = -dn
        wall = True
    elif hs > cam_h:
        # inside a tall object without a detected edge: show it as a wall at the sample
        wall = True
        ne = -de
        nn = -dn
    hh = height[hr, hc]
    mh = material[hr, hc]
    r_top = row_of_point(hh - cam_h, t_hit, h)
    if r_top < y_lo:
        if wall:
            _wall_rows(col_rgb, col_t, rgb, r_top, y_lo, hr, hc, hh, mh, t_hit, ne, nn, cam_x, cam_y, cam_h, dx, dy,
                       tan_el, gsd, building_id, material, albedo, facade, window, floor_h, spacing, b_height,
                       b_axis, sun_enu, sunny)  # fmt: skip
        else:
            fill_top(col_rgb, col_t, r_top, y_lo, hh, t, t_next, cam_x, cam_y, cam_h, dx, dy, tan_el, gsd,
                     height, material, albedo, hr, hc, top_light, pix_ang, under, rgb)  # fmt: skip
        y_lo = r_top
    return y_lo


@njit(cache=True, fastmath=FASTMATH)
def _wall_rows(col_rgb, col_t, rgb, r_top, y_lo, hr, hc, hh, mh, t_hit, ne, nn, cam_x, cam_y, cam_h, dx, dy,
               tan_el, gsd, building_id, material, albedo, facade, window, floor_h, spacing, b_height, b_axis,
               sun_enu, sunny):  # fmt: skip
    """Rows r_top..y_lo-1 of a wall hit at cell (hr, hc): façade with windows for buildings,
    tyres and windows for cars, plain albedo otherwise, lit through the wall normal."""
    bid = building_id[hr, hc]
    ne, nn = wall_normal(building_id, material, hr, hc, bid, ne, nn, gsd)
    if bid >= 0:
        # snap to the nearest of the building's four wall directions: a steady
        # normal keeps the window grid straight along walls off the raster axes
        ax = b_axis[bid]
        q = math.floor((math.atan2(nn, ne) - ax) / (0.5 * math.pi) + 0.5)
        ne = math.cos(ax + q * 0.5 * math.pi)
        nn = math.sin(ax + q * 0.5 * math.pi)
    if sunny:
        light = WALL_AMBIENT + SUN * max(0.0, ne * sun_enu[0] + nn * sun_enu[1])
    else:
        light = WALL_AMBIENT + 0.25
    px_e = cam_x + t_hit * dx
    px_n = -(cam_y + t_hit * dy)
    u = px_e * (-nn) + px_n * ne
    for r in range(r_top, y_lo):
        if col_t[r] != np.inf:
            continue
        z = cam_h + t_hit * tan_el[r]
        if mh == BUILDING and bid >= 0:
            facade_rgb(bid, z, u, facade, window, floor_h, spacing, b_height, light, rgb)
        elif mh == CAR:
            if z < 0.35:
                rgb[0] = 30.0 * light
                rgb[1] = 30.0 * light
                rgb[2] = 32.0 * light
            elif z > hh - 0.6 and z < hh - 0.08:
                rgb[0] = 40.0 * (0.6 + 0.4 * light)
                rgb[1] = 48.0 * (0.6 + 0.4 * light)
                rgb[2] = 58.0 * (0.6 + 0.4 * light)
            else:
                rgb[0] = albedo[hr, hc, 0] * light
                rgb[1] = albedo[hr, hc, 1] * light
                rgb[2] = albedo[hr, hc, 2] * light
        else:
            rgb[0] = albedo[hr, hc, 0] * light
            rgb[1] = albedo[hr, hc, 1] * light
            rgb[2] = albedo[hr, hc, 2] * light
        col_rgb[r, 0] = rgb[0]
        col_rgb[r, 1] = rgb[1]
        col_rgb[r, 2] = rgb[2]
        col_t[r] = t_hit


@njit(cache=True, fastmath=FASTMATH)
def _far_rows(col_rgb, col_t, albedo, cam_x, cam_y, cam_h, de, dn, gsd, tan_el, cos_el, sin_el, sky, sun_enu,
              sunny, top_light, mean_ground):  # fmt: skip
    """Beyond the march: the ground plane below the horizon (albedo inside the scene, the mean
    ground colour outside), the sky above it with the sun's disc and glow."""
    h = col_t.shape[0]
    rows, cols = albedo.shape[0], albedo.shape[1]
    dx = de
    dy = -dn
    for r in range(h):
        if col_t[r] != np.inf:
            continue
        if tan_el[r] < 0.0:
            tg = cam_h / (-tan_el[r])
            qr = int(math.floor((cam_y + tg * dy) / gsd))
            qc = int(math.floor((cam_x + tg * dx) / gsd))
            if 0 <= qr < rows and 0 <= qc < cols:
                for k in range(3):
                    col_rgb[r, k] = albedo[qr, qc, k] * top_light
            else:
                for k in range(3):
                    col_rgb[r, k] = mean_ground[k] * top_light
            col_t[r] = tg
        else:
            glow = 0.0
            if sunny:
                # sun disc and glow, negligible (< 0.1 level) beyond ~30 deg from the sun
                cosang = cos_el[r] * (de * sun_enu[0] + dn * sun_enu[1]) + sin_el[r] * sun_enu[2]
                if cosang > 0.85:
                    glow = 200.0 * math.exp((cosang - 1.0) / 0.0008) + 60.0 * math.exp((cosang - 1.0) / 0.03)
            col_rgb[r, 0] = sky[r, 0] + glow
            col_rgb[r, 1] = sky[r, 1] + glow * 0.95
            col_rgb[r, 2] = sky[r, 2] + glow * 0.8


@njit(cache=True, fastmath=FASTMATH)
def _occluders(col_rgb, col_t, occ, cam_x, cam_y, cam_h, de, dn, tan_el, sun_enu, sunny, top_light):
    """Occluders: vertical cylinders (side and top cap) z-tested against the scene."""
    h = col_t.shape[0]
    for k in range(occ.shape[0]):
        rel_e = occ[k, 0] - cam_x
        rel_n = occ[k, 1] - (-cam_y)
        rad = occ[k, 2]
        top = occ[k, 3]
        proj = rel_e * de + rel_n * dn
        perp2 = rel_e * rel_e + rel_n * rel_n - proj * proj
        if perp2 >= rad * rad or proj <= 0.0:
            continue
        half = math.sqrt(rad * rad - perp2)
        t_in = proj - half
        t_out = proj + half
        if t_in <= 0.05:
            continue
        hit_e = t_in * de - rel_e
        hit_n = t_in * dn - rel_n
        if sunny:
            light = WALL_AMBIENT + SUN * max(0.0, (hit_e * sun_enu[0] + hit_n * sun_enu[1]) / rad)
        else:
            light = WALL_AMBIENT + 0.25
        for r in range(h):
            z = cam_h + t_in * tan_el[r]
            tt = t_in
            cap = False
            if z > top:
                if tan_el[r] < 0.0:
                    tc = (cam_h - top) / (-tan_el[r])
                    if tc <= t_out:
                        tt = tc
                        cap = True
                if not cap:
                    continue
            elif z < 0.0:
                continue
            if tt >= col_t[r]:
                continue
            if cap:
                f = top_light
            elif z < 0.4 * top:
                f = 0.6 * light
            else:
                f = light
            col_rgb[r, 0] = occ[k, 4] * f
            col_rgb[r, 1] = occ[k, 5] * f
            col_rgb[r, 2] = occ[k, 6] * f
            col_t[r] = tt


@njit(cache=True, fastmath=FASTMATH)
def _haze_and_write(out, rng_m, c, col_rgb, col_t, rgb, haze_m, haze_per_m, sunny):
    """Blend every surface towards the horizon colour with distance and write column c."""
    h = col_t.shape[0]
    haze_r = 200.0 if sunny else 205.0
    haze_g = 218.0 if sunny else 208.0
    haze_b = 238.0 if sunny else 212.0
    for r in range(h):
        tt = col_t[r]
        if haze_m > 0.0 and tt != np.inf:
            f = math.exp(-tt * haze_per_m[r])
            rgb[0] = col_rgb[r, 0] * f + haze_r * (1.0 - f)
            rgb[1] = col_rgb[r, 1] * f + haze_g * (1.0 - f)
            rgb[2] = col_rgb[r, 2] * f + haze_b * (1.0 - f)
        else:
            rgb[0] = col_rgb[r, 0]
            rgb[1] = col_rgb[r, 1]
            rgb[2] = col_rgb[r, 2]
        put_pixel(out, rng_m, r, c, rgb, tt)
