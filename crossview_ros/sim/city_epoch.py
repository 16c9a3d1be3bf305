"""The city at one epoch: the painted base plus parked cars, moving traffic and trees.

Epoch 0 is the aerial survey; epoch e > 0 is a later visit with the same streets and buildings,
where some parked cars left and others arrived (occupancy kept), moving traffic is different,
and some trees were cut, planted or changed colour (season). Cars and tree crowns are drawn
into copies of the base rasters; buildings and the building table are shared by all epochs.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np

from crossview_ros import geo
from crossview_ros.sim.city_config import STREAM_CARS, STREAM_EPOCH, CityConfig, stream_rng
from crossview_ros.sim.city_painter import Trees
from crossview_ros.sim.city_palette import AUTUMN_RGB, CAR_P, CAR_RGB, TREE_RGB
from crossview_ros.sim.scene import Buildings, Material, Scene

M = Material


@dataclass
class Base:
    """The epoch-independent city: rasters, building table, and the trees, slots and traffic
    queue positions to populate per epoch (uv metres)."""

    height: np.ndarray
    material: np.ndarray
    albedo: np.ndarray
    bid: np.ndarray
    buildings: Buildings
    trees: Trees
    spare: Trees
    slots: np.ndarray  # (S, 4) u, v, heading, kind
    traffic: np.ndarray  # (N, 4) u, v, heading, queue position
    traffic_group: np.ndarray
    leaf: np.ndarray  # (512, 512) float32 leaf-clump noise, zero mean
    landmarks_uv: dict[str, np.ndarray]
    extra: dict

    def epoch_scene(self, config: CityConfig, zone: geo.UTMZone, origin_e_m: float, origin_n_m: float,
                    epoch: int) -> Scene:
        """The scene at `epoch` of a city with this frame (gsd_m from config)."""
        cfg = config
        gsd_m = config.gsd_m
        h, mat, alb = self.height.copy(), self.material.copy(), self.albedo.copy()
        canvas = (h, mat, alb, self.bid)
        rng0 = stream_rng(cfg.seed, STREAM_CARS)
        n = len(self.slots)
        occupied0 = rng0.random(n) < cfg.parking_occupancy
        cars0 = _car_specs(rng0, n)
        if epoch == 0:
            occupied, cars = occupied0, cars0
            trees = self.trees
            rng_t = stream_rng(cfg.seed, STREAM_CARS, 1)
        else:
            rng_e = stream_rng(cfg.seed, STREAM_EPOCH, epoch)
            stay = occupied0 & (rng_e.random(n) >= cfg.epoch_car_turnover)
            free = ~stay
            want = max(0.0, cfg.parking_occupancy * n - stay.sum())  # occupancy stays the same
            arrive = free & (rng_e.random(n) < (want / max(free.sum(), 1)))
            occupied = stay | arrive
            cars = _car_specs(rng_e, n)
            cars = {k: np.where(stay[:, None] if v.ndim == 2 else stay, cars0[k], v) for k, v in cars.items()}
            trees = self._changed_trees(rng_e, cfg)
            rng_t = rng_e
        for k in np.flatnonzero(occupied):
            u, v, hd, _ = self.slots[k]
            c = cars["offset"][k]  # along the kerb, metres
            _draw_car(canvas, gsd_m, u + c * math.cos(hd), v + c * math.sin(hd), hd,
                      {kk: vv[k] for kk, vv in cars.items()})
        self._traffic(canvas, gsd_m, rng_t, cfg)
        order = np.argsort(trees.height_m, kind="stable")
        for k in order:
            _draw_tree(canvas, gsd_m, trees.uv[k], trees.radius_m[k], trees.height_m[k], trees.rgb[k],
                       trees.phase[k], self.leaf)
        for arr in (h, mat, alb):
            arr.setflags(write=False)
        date = (_dt.date(2023, 6, 14) + _dt.timedelta(days=41 * epoch)).isoformat()
        extra = dict(self.extra, epoch=epoch, capture_date=date)
        return Scene(zone=zone, origin_e_m=origin_e_m, origin_n_m=origin_n_m, gsd_m=gsd_m,
                     height_m=h, material=mat, albedo=alb, building_id=self.bid, buildings=self.buildings,
                     epoch=epoch, extra=extra)

    def _changed_trees(self, rng: np.random.Generator, cfg: CityConfig) -> Trees:
        t = self.trees
        n = len(t)
        p = cfg.epoch_tree_change
        keep = rng.random(n) >= p
        rgb = t.rgb.copy()
        recolour = rng.random(n) < p
        autumn = AUTUMN_RGB[rng.integers(len(AUTUMN_RGB), size=n)]
        other = TREE_RGB[rng.integers(len(TREE_RGB), size=n)]
        mix = np.where((rng.random(n) < 0.5)[:, None], autumn, other)
        rgb[recolour] = mix[recolour] * rng.uniform(0.9, 1.1, (int(recolour.sum()), 1))
        radius = t.radius_m * np.where(rng.random(n) < p, rng.uniform(1.05, 1.2, n), 1.0)
        changed = Trees(t.uv, radius, t.height_m, rgb.astype(np.float32), t.phase).take(keep)
        s = self.spare
        add = rng.random(len(s)) < min(1.0, p * n / max(len(s), 1))
        added = s.take(add)
        return Trees(np.concatenate([changed.uv, added.uv]), np.concatenate([changed.radius_m, added.radius_m]),
                      np.concatenate([changed.height_m, added.height_m]), np.concatenate([changed.rgb, added.rgb]),
                      np.concatenate([changed.phase, added.phase]))

    def _traffic(self, canvas: tuple, gsd: float, rng: np.random.Generator, cfg: CityConfig) -> None:
        if len(self.traffic) == 0 or cfg.traffic_density <= 0:
            return
        n_groups = int(self.traffic_group.max()) + 1
        active = rng.random(n_groups) < cfg.traffic_density
        queue = rng.integers(1, 5, n_groups)
        sel = active[self.traffic_group] & (self.traffic[:, 3] < queue[self.traffic_group])
        sel &= rng.random(len(sel)) < 0.8
        idx = np.flatnonzero(sel)
        specs = _car_specs(rng, len(idx))
        for j, k in enumerate(idx):
            u, v, hd, _ = self.traffic[k]
            _draw_car(canvas, gsd, u, v, hd, {kk: vv[j] for kk, vv in specs.items()})


def _car_specs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    van = rng.random(n) < 0.12
    return {
        "rgb": CAR_RGB[rng.choice(len(CAR_RGB), size=n, p=CAR_P / CAR_P.sum())] * rng.uniform(0.92, 1.06, (n, 1)),
        "len": np.where(van, rng.uniform(5.0, 6.0, n), rng.uniform(4.1, 4.9, n)),
        "wid": np.where(van, rng.uniform(1.95, 2.1, n), rng.uniform(1.72, 1.92, n)),
        "body": rng.uniform(0.9, 1.1, n),
        "top": np.where(van, rng.uniform(1.9, 2.4, n), rng.uniform(1.4, 1.6, n)),
        "van": van.astype(np.float64),
        "offset": rng.uniform(-0.4, 0.4, n),
    }


def _draw_car(canvas: tuple, gsd: float, u: float, v: float, heading: float, spec: dict) -> None:
    """A car as a box with a cabin and dark windscreens, heading in uv radians (front = +x)."""
    h, mat, alb, bid = canvas
    n = h.shape[0]
    half = 0.5 * float(np.hypot(spec["len"], spec["wid"])) + gsd
    c0, c1 = max(0, int((u - half) / gsd)), min(n, int((u + half) / gsd) + 2)
    r0, r1 = max(0, int((v - half) / gsd)), min(n, int((v + half) / gsd) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    uu = (np.arange(c0, c1) + 0.5) * gsd - u
    vv = (np.arange(r0, r1) + 0.5) * gsd - v
    ch, sh = math.cos(heading), math.sin(heading)
    x = uu[None, :] * ch + vv[:, None] * sh
    y = -uu[None, :] * sh + vv[:, None] * ch
    L, W = spec["len"] / 2, spec["wid"] / 2
    body = (np.abs(x) <= L) & (np.abs(y) <= W)
    sl = np.s_[r0:r1, c0:c1]
    body &= (bid[sl] < 0) & (mat[sl] != M.TREE)
    if not body.any():
        return
    rgb = np.asarray(spec["rgb"], np.float32)
    z = np.where(body, spec["body"], 0.0).astype(np.float32)
    colour = np.broadcast_to(rgb, body.shape + (3,)).copy()
    if spec["van"] > 0.5:
        cabin = body & (x > -L + 0.2) & (x < L - 0.9) & (np.abs(y) < W - 0.1)
        screen = body & (x >= L - 0.9) & (x < L - 0.4) & (np.abs(y) < W - 0.15)
    else:
        cabin = body & (x > -0.55 * L) & (x < 0.3 * L) & (np.abs(y) < W - 0.15)
        screen = body & (((x >= 0.3 * L) & (x < 0.55 * L)) | ((x > -0.72 * L) & (x <= -0.55 * L))) & (np.abs(y) < W - 0.2)
    z[cabin] = spec["top"]
    z[screen] = 0.5 * (spec["body"] + spec["top"])
    colour[cabin] = np.clip(rgb * 1.05 + 6, 0, 255)
    colour[screen] = (38, 42, 48)
    hv = h[sl]
    hv[body] = z[body]
    mat[sl][body] = M.CAR
    alb[sl][body] = colour[body].astype(np.uint8)


def _draw_tree(canvas: tuple, gsd: float, uv: np.ndarray, radius: float, top: float, rgb: np.ndarray,
               phase: np.ndarray, leaf: np.ndarray) -> None:
    """A round, lumpy canopy: a dome from top - depth at the rim to top at the centre."""
    h, mat, alb, bid = canvas
    n = h.shape[0]
    u, v = float(uv[0]), float(uv[1])
    R = radius * 1.2
    c0, c1 = max(0, int((u - R) / gsd)), min(n, int((u + R) / gsd) + 2)
    r0, r1 = max(0, int((v - R) / gsd)), min(n, int((v + R) / gsd) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    du = ((np.arange(c0, c1) + 0.5) * gsd - u)[None, :]
    dv = ((np.arange(r0, r1) + 0.5) * gsd - v)[:, None]
    d = np.hypot(du, dv)
    ang = np.arctan2(dv, du)
    rim = radius * (1 + 0.07 * np.sin(3 * ang + phase[0]) + 0.05 * np.sin(5 * ang + phase[1])
                    + 0.03 * np.sin(9 * ang + 2 * phase[0]))
    rel = d / rim
    ls = leaf.shape[0]
    oy, ox = int(phase[2] * 997) % ls, int(phase[2] * 7919) % ls
    tex = leaf[np.ix_((np.arange(r1 - r0) + oy) % ls, (np.arange(c1 - c0) + ox) % ls)]
    inside = rel < 1.0 + 0.06 * tex  # ragged leafy edge
    sl = np.s_[r0:r1, c0:c1]
    depth = min(0.5 * top, 1.1 * radius)
    z = (top - depth + depth * np.sqrt(np.clip(1 - rel * rel, 0, 1))).astype(np.float32)
    ok = inside & (z > h[sl]) & (bid[sl] < 0)
    if not ok.any():
        return
    shade = (0.82 + 0.28 * tex) * (1.0 - 0.22 * rel * rel)
    colour = np.clip(rgb[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    hv = h[sl]
    hv[ok] = z[ok]
    mat[sl][ok] = M.TREE
    alb[sl][ok] = colour[ok]
