"""Painting streets: sidewalks with slab joints, kerbs, carriageways and everything on them.

Per link (a street between junctions), in this order: repair patches, lane wear and manholes;
centre, lane and parking lines (US yellow or European white style, worn per street); the planted
median of a boulevard; crosswalks and stop lines at junction approaches (on the incoming side,
which depends on left- or right-hand traffic); street trees and kerb parking slots. Queue
positions behind the stop lines (traffic_spots) are where moving cars wait at each epoch.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from crossview_ros.sim.city_canvas import FIX, FIX_BITS, along, jitter, polyline_length
from crossview_ros.sim.city_config import STREAM_STREETS, stream_rng
from crossview_ros.sim.city_layout import PARKING_LANE_M, Link
from crossview_ros.sim.city_painter import Painter
from crossview_ros.sim.city_palette import GRASS_RGB, KERB_RGB
from crossview_ros.sim.scene import Material

M = Material


def paint_streets(painter: Painter) -> None:
    """All links: sidewalks and slab joints, kerbs, carriageways, then each link's details."""
    cv, rng = painter.cv, stream_rng(painter.config.seed, STREAM_STREETS)
    links = painter.layout.links
    lhs = painter.config.left_hand_traffic
    for link in links:
        st = link.street
        cv.stroke([link.uv], st.width_m + 2 * st.sidewalk_m, M.SIDEWALK, st.sidewalk_rgb, street=True)
    joints = []
    for link in links:  # sidewalk slab joints
        st = link.street
        L = polyline_length(link.uv)
        pitch = rng.uniform(1.5, 2.2)
        s = np.arange(pitch / 2, L, pitch)
        for side in (-1.0, 1.0):
            p0 = along(link.uv, s, side * (st.width_m / 2 + 0.4))
            p1 = along(link.uv, s, side * (st.width_m / 2 + st.sidewalk_m))
            joints.extend(np.stack([p0, p1], 1))
    for chunk in range(0, len(joints), 20000):
        cv.stroke(joints[chunk:chunk + 20000], 0.1, None, (128, 126, 122), ground=False)
    for link in links:
        cv.stroke([link.uv], link.street.width_m + 0.5, M.SIDEWALK, KERB_RGB)
    for link in links:
        g = link.street.asphalt
        cv.stroke([link.uv], link.street.width_m, M.ROAD, (g, g, g + 2))
    for link in links:
        _street_details(painter, link, rng, lhs)


def _street_details(painter: Painter, link: Link, rng: np.random.Generator, lhs: bool) -> None:
    """One link's surface, markings, median, junction approaches, street trees and parking slots."""
    st, uv = link.street, link.uv
    L = polyline_length(uv)
    e0, e1 = link.ends
    s_a = e0["clear"] + 0.8 if e0 else 0.0
    s_b = L - (e1["clear"] + 0.8) if e1 else L
    _surface(painter, link, rng, L, s_a, s_b)
    g = st.asphalt
    white = np.array([236, 236, 230.0]) * (1 - st.wear) + np.array([g, g, g]) * st.wear
    yellow = np.array([226, 186, 60.0]) * (1 - st.wear) + np.array([g, g, g]) * st.wear
    if st.marked and s_b - s_a > 3:
        _lines(painter, link, s_a, s_b, white, yellow)
    if st.median_m > 0 and s_b - s_a > 3:
        _median(painter, link, rng, s_a, s_b)
    _junction_marks(painter, link, lhs, L, white)
    _kerbside(painter, link, rng, lhs, L, s_a, s_b)


def _surface(painter: Painter, link: Link, rng: np.random.Generator, L: float, s_a: float, s_b: float) -> None:
    """Repair patches (sharp-edged quads), wear along the lanes between the junctions, manholes."""
    cv, st, uv = painter.cv, link.street, link.uv
    w = st.width_m
    g = st.asphalt
    for _ in range(int(rng.poisson(L / 35.0))):
        s0 = rng.uniform(0, L)
        ln, wd = rng.uniform(1.5, 8.0), rng.uniform(1.0, 3.5)
        lat = rng.uniform(-w / 2 + wd / 2, w / 2 - wd / 2) if w > wd else 0.0
        q = along(uv, np.array([s0, s0 + ln, s0 + ln, s0]), np.array([lat - wd / 2, lat - wd / 2, lat + wd / 2, lat + wd / 2]))
        tone = g + rng.choice([-1, 1]) * rng.uniform(8, 22)
        cv.fill([q], M.ROAD, (tone, tone, tone + 1))
    lanes_lat = []
    for k in range(st.lanes):
        off = st.median_m / 2 + (k + 0.5) * st.lane_m
        lanes_lat += [off, -off]
    if s_b - s_a > 4:
        s = np.linspace(s_a, s_b, max(2, int((s_b - s_a) / 5)))
        wear = [along(uv, s, lat) for lat in lanes_lat]
        cv.stroke(wear, 0.9, None, (g - 5, g - 5, g - 4), ground=False)
    for _ in range(int(rng.poisson(L / 40.0))):
        p = along(uv, np.array([rng.uniform(0, L)]), np.array([rng.uniform(-w / 3, w / 3)]))[0]
        c = cv.px(p)
        cv2.circle(cv.albedo, (int(c[0]), int(c[1])), int(round(0.35 / cv.gsd * FIX)), (52, 52, 54), -1, cv2.LINE_8, FIX_BITS)


def _lines(painter: Painter, link: Link, s_a: float, s_b: float, white: np.ndarray, yellow: np.ndarray) -> None:
    """Centre line (none beside a median), lane lines and, in European style, parking-lane limits."""
    cv, st, uv = painter.cv, link.street, link.uv
    w = st.width_m
    us = painter.style_us

    def solid(lat: float) -> list[np.ndarray]:
        s = np.linspace(s_a, s_b, max(2, int((s_b - s_a) / 4) + 1))
        return [along(uv, s, np.full(len(s), lat))]

    def dashed(lat: float, dash: float, gap: float) -> list[np.ndarray]:
        starts = np.arange(s_a, s_b - 0.5, dash + gap)
        ends = np.minimum(starts + dash, s_b)
        return [np.stack([a, b]) for a, b in zip(along(uv, starts, np.full(len(starts), lat)),
                                                 along(uv, ends, np.full(len(ends), lat)))]
    if st.median_m == 0:
        if st.lanes == 1:
            cv.stroke(dashed(0.0, 3.0, 6.0 if us else 3.0), 0.15, M.MARKING, yellow if us else white, ground=False)
        elif us:
            cv.stroke(solid(-0.18) + solid(0.18), 0.12, M.MARKING, yellow, ground=False)
        else:
            cv.stroke(solid(0.0), 0.15, M.MARKING, white, ground=False)
    for k in range(1, st.lanes):
        off = st.median_m / 2 + k * st.lane_m
        cv.stroke(dashed(off, 3.0, 9.0) + dashed(-off, 3.0, 9.0), 0.15, M.MARKING, white, ground=False)
    if st.parking and not us:
        edge = w / 2 - PARKING_LANE_M
        cv.stroke(dashed(edge, 1.0, 1.0) + dashed(-edge, 1.0, 1.0), 0.12, M.MARKING, white, ground=False)


def _median(painter: Painter, link: Link, rng: np.random.Generator, s_a: float, s_b: float) -> None:
    """A boulevard's planted median: kerbed grass strip, trees if the street has them."""
    cv, st, uv = painter.cv, link.street, link.uv
    s = np.linspace(s_a - 0.5, s_b + 0.5, max(2, int((s_b - s_a) / 4) + 1))
    mid = along(uv, s, np.zeros(len(s)))
    cv.stroke([mid], st.median_m, M.SIDEWALK, KERB_RGB)
    cv.stroke([mid], st.median_m - 0.6, M.GRASS, jitter(rng, GRASS_RGB, 0.08))
    if st.trees:
        for p in along(uv, np.arange(s_a + 3, s_b - 3, painter.config.street_tree_spacing_m), 0.0):
            painter.tree(p, rng.uniform(2.5, 4.0), rng.uniform(6, 12), street=True)


def _junction_marks(painter: Painter, link: Link, lhs: bool, L: float, white: np.ndarray) -> None:
    """Junction approaches: crosswalks (zebra or two transverse lines) and stop lines."""
    cv, st, uv = painter.cv, link.street, link.uv
    w = st.width_m
    for end, info in enumerate(link.ends):
        if info is None:
            continue
        d0, d1 = info["kerb"] + 0.4, info["clear"] - 0.3
        if end == 1:
            d0, d1 = L - d1, L - d0
        if info["crosswalk"] and d1 - d0 > 1.5:
            lat = np.arange(-w / 2 + 0.6, w / 2 - 0.3, 1.2)
            if painter.zebra:
                stripes = [np.stack([a, b]) for a, b in zip(along(uv, np.full(len(lat), d0), lat), along(uv, np.full(len(lat), d1), lat))]
                cv.stroke(stripes, 0.55, M.MARKING, white, ground=False)
            else:
                for d in (d0, d1):
                    cv.stroke([along(uv, np.full(2, d), np.array([-w / 2, w / 2]))], 0.3, M.MARKING, white, ground=False)
        # Incoming half: right of travel towards this end (left with left-hand traffic).
        sign = (1.0 if end == 1 else -1.0) * (-1.0 if lhs else 1.0)
        ds = (L - (info["clear"] + 0.4)) if end == 1 else info["clear"] + 0.4
        stop = along(uv, np.full(2, ds), np.array([0.0, sign * (w / 2 - (PARKING_LANE_M if st.parking else 0.0))]))
        cv.stroke([stop], 0.4, M.MARKING, white, ground=False)


def _kerbside(painter: Painter, link: Link, rng: np.random.Generator, lhs: bool, L: float, s_a: float,
              s_b: float) -> None:
    """Street trees on wide sidewalks and kerb parking slots (cars face the traffic direction)."""
    st, uv = link.street, link.uv
    w = st.width_m
    if st.trees and st.sidewalk_m >= 2.5:
        sp = painter.config.street_tree_spacing_m
        for side in (-1.0, 1.0):
            s = np.arange(s_a + 3 + rng.uniform(0, sp), s_b - 3, sp) + rng.uniform(-0.8, 0.8)
            s = s[(s > 0) & (s < L)]
            for p in along(uv, s, np.full(len(s), side * (w / 2 + min(1.2, st.sidewalk_m / 2)))):
                if rng.random() < 0.9:
                    painter.tree(p, rng.uniform(2.2, 4.6), rng.uniform(5.5, 13), street=True)
                else:
                    painter.tree(p, rng.uniform(1.2, 2.2), rng.uniform(3.5, 5.5), street=True, spare=True)
    if st.parking:
        for side in (-1.0, 1.0):
            s = np.arange(s_a + 4 + rng.uniform(0, 3), s_b - 5, rng.uniform(5.8, 6.6))
            pts = along(uv, s, np.full(len(s), side * (w / 2 - 1.15)))
            ahead = along(uv, s + 0.5, np.full(len(s), side * (w / 2 - 1.15)))
            flip = (side < 0) != lhs
            for p, q in zip(pts, ahead):
                hd = math.atan2(q[1] - p[1], q[0] - p[0]) + (math.pi if flip else 0.0)
                painter.slots.append((float(p[0]), float(p[1]), hd, 0))


def traffic_spots(painter: Painter) -> tuple[np.ndarray, np.ndarray]:
    """Queue positions behind stop lines: (N, 3) u, v, heading and (N,) approach id."""
    rows, group = [], []
    lhs = painter.config.left_hand_traffic
    gid = 0
    for link in painter.layout.links:
        st, uv = link.street, link.uv
        L = polyline_length(uv)
        for end, info in enumerate(link.ends):
            if info is None:
                continue
            sign = (1.0 if end == 1 else -1.0) * (-1.0 if lhs else 1.0)
            for k in range(st.lanes):
                lat = sign * (st.median_m / 2 + (k + 0.5) * st.lane_m)
                for q in range(4):
                    d = info["clear"] + 3.5 + q * 6.5
                    s = L - d if end == 1 else d
                    if not 0 < s < L:
                        continue
                    p = along(uv, np.array([s]), np.array([lat]))[0]
                    a = along(uv, np.array([s + (0.5 if end == 1 else -0.5)]), np.array([lat]))[0]
                    rows.append((p[0], p[1], math.atan2(a[1] - p[1], a[0] - p[0]), q))
                    group.append(gid)
            gid += 1
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    return np.array(rows), np.array(group, np.int64)
