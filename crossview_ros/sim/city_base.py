"""The city's epoch-independent base: paint it, clean it up, texture it, collect what epochs populate.

Blocks are painted first (by kind: park, plaza, parking, industrial, or lots of buildings), then
the streets over them, so that streets cut what reaches into them; buildings a diagonal street
cut down to slivers are removed. Trees, parking slots and traffic queue positions recorded while
painting are kept only where they can stand (no tree on a road or roof, no car on a lawn). The
flat colours are then multiplied by material-dependent multi-scale noise, so that tiles are not
identified by flat colours.
"""

from __future__ import annotations

import cv2
import numpy as np

from crossview_ros.sim.city_canvas import FIX, FIX_BITS, Canvas, jitter, rect_poly
from crossview_ros.sim.city_config import STREAM_TEXTURE, STREAM_TREES, CityConfig, stream_rng
from crossview_ros.sim.city_epoch import Base
from crossview_ros.sim.city_layout import Layout
from crossview_ros.sim.city_painter import Painter, Trees
from crossview_ros.sim.city_palette import GRASS_RGB
from crossview_ros.sim.paint_lots import industrial, lots, parking_lot
from crossview_ros.sim.paint_parks import park, plaza_block
from crossview_ros.sim.paint_streets import paint_streets, traffic_spots
from crossview_ros.sim.scene import Buildings, Material

M = Material

# Texture amplitude per material: white, fine (~0.6 m), medium (~4 m), large (~25 m) noise.
_TEXTURE = np.zeros((len(Material), 4), np.float32)
_TEXTURE[M.ROAD] = (0.05, 0.05, 0.05, 0.06)
_TEXTURE[M.MARKING] = (0.04, 0.06, 0.08, 0.04)
_TEXTURE[M.SIDEWALK] = (0.035, 0.03, 0.04, 0.05)
_TEXTURE[M.GRASS] = (0.07, 0.10, 0.08, 0.07)
_TEXTURE[M.PLAZA] = (0.03, 0.03, 0.03, 0.025)
_TEXTURE[M.BUILDING] = (0.03, 0.025, 0.015, 0.01)
_TEXTURE[M.WATER] = (0.01, 0.02, 0.04, 0.05)


def build_base(layout: Layout, config: CityConfig) -> Base:
    """Paint the base of the city laid out as `layout` (deterministic in config.seed)."""
    painter = Painter(layout, config)
    paint_blocks(painter)
    paint_streets(painter)
    cv = painter.cv
    _remove_slivers(painter)
    trees, spare = _standing_trees(painter)
    slots = _usable_slots(painter)
    traffic, group = traffic_spots(painter)
    if len(traffic):
        inside, mat, b, _ = cv.at(traffic[:, :2])
        ok = inside & ((mat == M.ROAD) | (mat == M.MARKING))
        traffic, group = traffic[ok], group[ok]
    _park_centre(painter)
    del cv.street
    _texture(cv, config.seed)
    buildings = Buildings(
        height_m=np.array(painter.b_height, np.float32),
        facade_rgb=np.clip(np.array(painter.b_facade, np.float32).reshape(-1, 3), 0, 255).astype(np.uint8),
        window_rgb=np.clip(np.array(painter.b_window, np.float32).reshape(-1, 3), 0, 255).astype(np.uint8),
        floor_height_m=np.array(painter.b_floor, np.float32),
        window_spacing_m=np.array(painter.b_spacing, np.float32),
    )
    cv.bid.setflags(write=False)
    leaf_rng = stream_rng(config.seed, STREAM_TREES)
    leaf = _noise(leaf_rng, 512, int(512 * cv.gsd / 0.5)) * 0.6 + _noise(leaf_rng, 512, int(512 * cv.gsd / 1.5)) * 0.4
    landmarks = {k: np.asarray(v, np.float64) for k, v in painter.landmarks.items()}
    extra = {"seed": int(config.seed), "datum_lat_deg": config.datum_lat_deg, "datum_lon_deg": config.datum_lon_deg,
             "generator": "crossview_ros.sim.city", "city_size_m": layout.size_m}
    return Base(height=cv.height, material=cv.material, albedo=cv.albedo, bid=cv.bid, buildings=buildings,
                trees=trees, spare=spare, slots=slots, traffic=traffic, traffic_group=group,
                leaf=leaf.astype(np.float32), landmarks_uv=landmarks, extra=extra)


def paint_blocks(painter: Painter) -> None:
    """Fill every block by its kind, in layout order (one random stream: the order matters)."""
    for blk in painter.layout.blocks:
        a0, a1, b0, b1 = blk.rect
        if a1 - a0 < 4 or b1 - b0 < 4:
            continue
        poly = rect_poly(*blk.rect)
        kind = blk.kind
        if kind == "park":
            park(painter, blk)
        elif kind == "plaza":
            plaza_block(painter, blk)
        elif kind == "parking":
            painter.cv.fill([painter.warp(poly)], M.ROAD, jitter(painter.rng, (88, 88, 90), 0.1))
            parking_lot(painter, blk.rect)
        elif kind == "industrial":
            industrial(painter, blk)
        else:
            ground = (GRASS_RGB, M.GRASS) if kind == "residential" else ((150, 147, 140), M.PLAZA)
            painter.cv.fill([painter.warp(poly)], ground[1], jitter(painter.rng, ground[0], 0.08))
            lots(painter, blk)


def _remove_slivers(painter: Painter) -> None:
    """Buildings mostly cut away by a diagonal street become sidewalk."""
    cv = painter.cv
    nb = len(painter.b_height)
    if nb:
        left = np.bincount(cv.bid.ravel() + 1, minlength=nb + 1)[1:]
        drawn = np.maximum(np.array(painter.b_pixels), 1)
        gone = (left < 0.4 * drawn) | (left * cv.gsd ** 2 < 12.0)
        gone &= left > 0
        if gone.any():
            lut = np.concatenate([[False], gone])
            m = lut[cv.bid + 1]
            cv.material[m] = M.SIDEWALK
            cv.albedo[m] = (172, 170, 165)
            cv.height[m] = 0.0
            cv.bid[m] = -1


def _standing_trees(painter: Painter) -> tuple[Trees, Trees]:
    """The recorded trees (and spare ones) inside the city, off roofs, water and roads; trees not
    planted along a street also stay off the street mask."""
    cv = painter.cv
    trees = Trees.build(painter.trees)
    spare = Trees.build(painter.spare_trees)
    street_flag = np.array(painter.tree_street, bool)
    spare_flag = np.array(painter.spare_street, bool)

    def usable(t: Trees, flag: np.ndarray) -> np.ndarray:
        if len(t) == 0:
            return np.zeros(0, bool)
        inside, mat, b, st = cv.at(t.uv)
        ok = inside & (b < 0) & (mat != M.WATER) & (mat != M.ROAD) & (mat != M.MARKING)
        return ok & np.where(flag, True, st == 0)
    keep = usable(trees, street_flag)
    return trees.take(keep), spare.take(usable(spare, spare_flag))


def _usable_slots(painter: Painter) -> np.ndarray:
    """(S, 4) parking slots still on pavement after painting: kerb slots on the road, lot slots
    on the road off the street mask, driveway slots on paving."""
    cv = painter.cv
    slots = np.array(painter.slots, np.float64).reshape(-1, 4)
    if len(slots):
        inside, mat, b, st = cv.at(slots[:, :2])
        kind = slots[:, 3]
        paved = np.where(kind == 2, mat == M.PLAZA, (mat == M.ROAD) | (mat == M.MARKING))
        ok = inside & (b < 0) & paved & np.where(kind >= 1, st == 0, True)
        slots = slots[ok]
    return slots


def _park_centre(painter: Painter) -> None:
    """Landmark park_centre_uv: the park's most open point, farthest from streets and buildings."""
    cv = painter.cv
    if painter.park_polys:
        f = max(1, int(round(1.0 / cv.gsd)))
        m = max(2, cv.n // f)
        park = np.zeros((m, m), np.uint8)
        scale = m / (cv.n * cv.gsd)
        cv2.fillPoly(park, [np.round(painter.park_polys[0] * scale * FIX).astype(np.int32)], 1, cv2.LINE_8, FIX_BITS)
        busy = cv2.resize(((cv.street > 0) | (cv.bid >= 0)).astype(np.uint8), (m, m), interpolation=cv2.INTER_NEAREST)
        dist = cv2.distanceTransform((park & (1 - busy)).astype(np.uint8), cv2.DIST_L2, 5)
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        if dist[r, c] > 0:
            painter.landmarks["park_centre_uv"] = np.array([(c + 0.5) / scale, (r + 0.5) / scale])


def _noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """(n, n) float32 smooth noise, unit variance, with features ~n/cells pixels across."""
    cells = max(2, cells)
    small = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    big = cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)
    return big / max(float(big.std()), 1e-6)


def _texture(cv: Canvas, seed: int) -> None:
    """Multiply the flat colours by material-dependent multi-scale noise, in row bands."""
    rng = stream_rng(seed, STREAM_TEXTURE)
    n = cv.n
    px_m = cv.gsd
    fine = _noise(rng, n, int(n * px_m / 0.6))
    medium = _noise(rng, n, int(n * px_m / 4.0))
    large = _noise(rng, n, int(n * px_m / 25.0))
    dry = _noise(rng, n, int(n * px_m / 12.0))
    for r0 in range(0, n, 512):
        sl = slice(r0, min(n, r0 + 512))
        amp = _TEXTURE[cv.material[sl]]
        white = rng.standard_normal((sl.stop - r0, n), dtype=np.float32)
        lum = 1.0 + amp[..., 0] * white + amp[..., 1] * fine[sl] + amp[..., 2] * medium[sl] + amp[..., 3] * large[sl]
        rgb = cv.albedo[sl].astype(np.float32) * lum[..., None]
        grass = cv.material[sl] == M.GRASS
        if grass.any():  # dry, yellowish patches in lawns
            d = np.clip(dry[sl] - 0.5, 0.0, None) * 0.15
            rgb[..., 0] += np.where(grass, d * 90.0, 0.0)
            rgb[..., 2] -= np.where(grass, d * 20.0, 0.0)
        np.clip(rgb + 0.5, 0, 255, out=rgb)
        cv.albedo[sl] = rgb.astype(np.uint8)
