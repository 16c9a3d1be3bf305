"""The route of a drive over the street graph, and the path it follows there.

check_streets validates a street graph; fit_to_bounds clips every street to the graph's bounds
shrunk by its own lateral offset plus a margin (keeping the largest connected piece), so that
paths stay inside the rendered scene; random_route walks the graph (never straight back unless at
a dead end, sharp turns rarer than gentle ones); offset_polyline offsets each street of the
route to the traffic side and joins consecutive offset lines at their crossing on the inside of
a turn and by an arc around the intersection on the outside (a U-turn at a dead end is a half
circle). See drive.py for the conventions.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

class StreetGraphLike(Protocol):
    """What drives need from city.StreetGraph (any object with these attributes will do).

    An optional attribute `bounds_en` = (E_min, N_min, E_max, N_max), the renderable area,
    keeps every pose of a drive at least DriveConfig.edge_margin_m inside it (None or absent:
    the streets are used as they are).
    """

    nodes_en: (
        np.ndarray
    )  # (K, 2) float64 UTM easting, northing of intersections / polyline vertices
    edges: np.ndarray  # (M, 2) int64 node indices, undirected
    width_m: np.ndarray  # (M,) carriageway width, kerb to kerb
    sidewalk_m: np.ndarray  # (M,) sidewalk width on each side
    lanes: np.ndarray  # (M,) lanes per direction



def check_streets(streets: StreetGraphLike) -> tuple[np.ndarray, np.ndarray]:
    """nodes (K, 2) float64 and edges (M, 2) int64 of a street graph, checked (ValueError)."""
    nodes = np.asarray(streets.nodes_en, dtype=np.float64)
    edges = np.asarray(streets.edges, dtype=np.int64)
    if (
        nodes.ndim != 2
        or nodes.shape[1] != 2
        or edges.ndim != 2
        or edges.shape[1] != 2
        or len(edges) == 0
    ):
        raise ValueError("street graph needs nodes_en (K, 2) and at least one edge in edges (M, 2)")
    if edges.min() < 0 or edges.max() >= len(nodes):
        raise ValueError("street graph edges refer to nodes that do not exist")
    m = len(edges)
    for name in ("width_m", "sidewalk_m", "lanes"):
        if np.asarray(getattr(streets, name)).shape != (m,):
            raise ValueError(f"street graph {name} must have one value per edge ({m})")
    length = np.linalg.norm(nodes[edges[:, 1]] - nodes[edges[:, 0]], axis=1)
    if np.any(length <= 1e-6):
        raise ValueError("street graph has zero-length edges; merge their nodes")
    return nodes, edges


def random_route(
    nodes: np.ndarray, edges: np.ndarray, length_m: float, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Random walk over the graph as (edge, from, to) triples, at least `length_m` of centreline."""
    adjacency: list[list[tuple[int, int]]] = [[] for _ in range(len(nodes))]
    for k, (a, b) in enumerate(edges):
        adjacency[a].append((int(b), k))
        adjacency[b].append((int(a), k))
    seg_len = np.linalg.norm(nodes[edges[:, 1]] - nodes[edges[:, 0]], axis=1)
    k = int(rng.choice(len(edges), p=seg_len / seg_len.sum()))
    a, b = (
        (int(edges[k, 0]), int(edges[k, 1]))
        if rng.random() < 0.5
        else (int(edges[k, 1]), int(edges[k, 0]))
    )
    route = [(k, a, b)]
    total = seg_len[k]
    while total < length_m:
        k_prev, a, b = route[-1]
        u_in = nodes[b] - nodes[a]
        options = [(c, e) for c, e in adjacency[b] if e != k_prev]
        if not options:  # dead end: the only way on is back
            options = [(a, k_prev)]
        else:
            turn = np.array(
                [abs(_turn_angle(u_in, nodes[c] - nodes[b])) for c, _ in options], dtype=np.float64
            )
            weight = np.where(turn > math.radians(135.0), 0.15, 1.0)
            choice = int(rng.choice(len(options), p=weight / weight.sum()))
            options = [options[choice]]
        c, e = options[0]
        route.append((e, b, c))
        total += seg_len[e]
    return route


def _turn_angle(u_in: np.ndarray, u_out: np.ndarray) -> float:
    """Signed angle (rad, CCW positive) from direction u_in to direction u_out."""
    cross = u_in[0] * u_out[1] - u_in[1] * u_out[0]
    return math.atan2(cross, float(np.dot(u_in, u_out)))


def offsets_m(streets: StreetGraphLike, mode: str, lane_index: int) -> np.ndarray:
    """(M,) distance of the path from each street's centre line: the sidewalk centre for mode
    "walk", else the centre of lane `lane_index` (from the centre line, clipped to the lanes)."""
    width = np.asarray(streets.width_m, dtype=np.float64)
    if mode == "walk":
        return 0.5 * width + 0.5 * np.asarray(streets.sidewalk_m, dtype=np.float64)
    lanes = np.maximum(np.asarray(streets.lanes, dtype=np.int64), 1)
    lane = np.minimum(lane_index, lanes - 1)
    return (lane + 0.5) * width / (2.0 * lanes)


def graph_bounds(streets: StreetGraphLike) -> tuple[float, float, float, float] | None:
    """The graph's bounds_en, checked; None when it has none."""
    bounds = getattr(streets, "bounds_en", None)
    if bounds is None:
        return None
    e0, n0, e1, n1 = (float(x) for x in bounds)
    if not (all(math.isfinite(x) for x in (e0, n0, e1, n1)) and e0 < e1 and n0 < n1):
        raise ValueError(
            f"street graph bounds_en must be finite (E_min, N_min, E_max, N_max), got {bounds}"
        )
    return e0, n0, e1, n1


def _clip_to_box(
    p: np.ndarray, q: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[float, float]:
    """Liang-Barsky: the part [t0, t1] of segment p->q inside the box lo..hi (t0 >= t1: none)."""
    t0, t1 = 0.0, 1.0
    d = q - p
    for k in range(2):
        for num, den in ((p[k] - lo[k], -d[k]), (hi[k] - p[k], d[k])):
            if den == 0.0:
                if num < 0.0:
                    return 1.0, 0.0
                continue
            t = float(num / den)
            if den < 0.0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    return t0, t1


def fit_to_bounds(
    nodes: np.ndarray,
    edges: np.ndarray,
    offsets: np.ndarray,
    bounds: tuple[float, float, float, float],
    margin_m: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The streets a drive may use: each edge clipped to `bounds` shrunk by its own offset plus
    `margin_m`, then the largest connected piece (by length).

    Returns nodes (the old ones first, then the new clipped ends), edges, and for each edge the
    index of the street it came from. A node kept by several edges lies inside every one of
    their shrunk boxes, so an arc around it of radius <= the largest of their offsets (a corner
    or a U-turn) stays `margin_m` inside the bounds."""
    lo_all, hi_all = np.array(bounds[:2]), np.array(bounds[2:])
    new_nodes: list[np.ndarray] = []
    kept: list[tuple[int, int]] = []
    source: list[int] = []
    for k, (a, b) in enumerate(edges):
        inset = float(offsets[k]) + margin_m
        p, q = nodes[a], nodes[b]
        t0, t1 = _clip_to_box(p, q, lo_all + inset, hi_all - inset)
        if (t1 - t0) * float(np.linalg.norm(q - p)) < 1e-3:  # outside, or a sliver
            continue
        ends = []
        for t, node in ((t0, int(a)), (t1, int(b))):
            if t in (0.0, 1.0):
                ends.append(node)
            else:
                new_nodes.append(p + t * (q - p))
                ends.append(len(nodes) + len(new_nodes) - 1)
        kept.append((ends[0], ends[1]))
        source.append(k)
    if not kept:
        raise ValueError(
            f"no street lies inside the street graph's bounds_en {bounds} with its lateral offset "
            f"and DriveConfig.edge_margin_m = {margin_m} m"
        )
    all_nodes = np.concatenate([nodes, np.asarray(new_nodes).reshape(-1, 2)])
    sub = np.asarray(kept, dtype=np.int64)
    src = np.asarray(source, dtype=np.int64)
    # the largest connected piece, so that the route never needs an edge that was cut away
    label = np.arange(len(all_nodes))

    def find(i: int) -> int:
        while label[i] != i:
            label[i] = label[label[i]]
            i = int(label[i])
        return i

    for a, b in sub:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            label[max(ra, rb)] = min(ra, rb)
    root = np.array([find(int(a)) for a in sub[:, 0]])
    length = np.linalg.norm(all_nodes[sub[:, 1]] - all_nodes[sub[:, 0]], axis=1)
    roots, inverse = np.unique(root, return_inverse=True)
    best = int(np.argmax(np.bincount(inverse, weights=length, minlength=len(roots))))
    keep = inverse == best
    return all_nodes, sub[keep], src[keep]


def offset_polyline(
    offsets: np.ndarray,
    nodes: np.ndarray,
    route: list[tuple[int, int, int]],
    traffic_side: str,
) -> tuple[np.ndarray, float]:
    """The route's streets offset to the traffic side, joined at the corners.

    `offsets` (M,) is each edge's distance from its centre line; traffic_side is "right" or
    "left". Returns the (P, 2) polyline and the length of its first straight piece (where
    drives start)."""
    side = -1.0 if traffic_side == "right" else 1.0  # offset along side * left normal
    segs = []
    for k, a, b in route:
        u = nodes[b] - nodes[a]
        length = float(np.linalg.norm(u))
        u = u / length
        normal = side * np.array([-u[1], u[0]])
        d = float(offsets[k])
        segs.append((nodes[a] + d * normal, u, length, d, b))
    points: list[np.ndarray] = []
    join_index: list[int] = []
    start_t = 0.0
    for i, (p0, u, length, d, node) in enumerate(segs):
        points.append(p0 + start_t * u)
        if i + 1 == len(segs):
            points.append(p0 + length * u)
            break
        q0, v, length_next, d_next, _ = segs[i + 1]
        centre = nodes[node]
        reverse = route[i + 1][2] == route[i][1] and route[i + 1][0] == route[i][0]
        theta = -side * math.pi if reverse else _turn_angle(u, v)
        join_index.append(len(points))
        start_t = 0.0
        if abs(theta) < 1e-3:  # straight on (a lateral step if the widths differ; smoothed later)
            points.append(p0 + length * u)
            continue
        if theta * side > 0.0 and not reverse:  # inside of the turn: meet where the lines cross
            denom = u[0] * v[1] - u[1] * v[0]
            w = q0 - p0
            t = (w[0] * v[1] - w[1] * v[0]) / denom
            s = (w[0] * u[1] - w[1] * u[0]) / denom
            if t > float(np.dot(points[-1] - p0, u)) and t <= length and 0.0 <= s < length_next:
                points.append(p0 + t * u)
                start_t = s
                continue
        # outside of the turn (or a corner too tight to meet): arc around the intersection
        a0 = math.atan2(*(p0 + length * u - centre)[::-1])
        steps = max(2, int(math.ceil(abs(theta) / 0.1)) + 1)
        for f in np.linspace(0.0, 1.0, steps):
            ang = a0 + f * theta
            r = d + f * (d_next - d)
            points.append(centre + r * np.array([math.cos(ang), math.sin(ang)]))
    poly = np.asarray(points)
    first_len = (
        float(np.linalg.norm(poly[join_index[0]] - poly[0])) if join_index else float(segs[0][2])
    )
    keep = np.concatenate([[True], np.linalg.norm(np.diff(poly, axis=0), axis=1) > 1e-9])
    return poly[keep], first_len


def resample(poly: np.ndarray, step_m: float) -> np.ndarray:
    """Points every `step_m` of arc length along a polyline."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    s_new = np.arange(0.0, s[-1], step_m)
    return np.stack([np.interp(s_new, s, poly[:, 0]), np.interp(s_new, s, poly[:, 1])], axis=1)


