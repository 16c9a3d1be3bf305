"""City layout: the street grid and its warp, street cross-sections, blocks and the street graph.

Geometry is laid out in local metres u (east) and v (south) from the north-west corner of the
city's raster. The street grid (avenues along a, cross streets along b) is turned by a random
angle and bent by a smooth warp (Warp); cross-street segments are jogged or dropped, diagonal
avenues cut the grid, and one column of cells may become the park and one cell the plaza.
Streets are cut into links between junctions; the blocks between them are what the painters
fill. StreetGraph is the drivable part of it in UTM, what drives are planned on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from crossview_ros import geo
from crossview_ros.sim.city_config import STREAM_GRID, CityConfig, stream_rng

PARKING_LANE_M = 2.3


@dataclass
class StreetGraph:
    """Centre lines of the drivable streets, as a connected undirected graph in UTM metres.

    Nodes are junctions and polyline vertices (curved streets are split every ~10 m, so
    consecutive edges follow the curve); streets that the city edge cuts off from the rest
    are drawn in the scene but left out here.

    Centre lines are clipped exactly at the city edge, so a street leaving the city ends in a
    node on the edge, and its carriageway and sidewalks there reach past it. `bounds_en` is
    that edge (the scene's extent): drives (drive.plan_drive) keep their poses inside it.
    """

    nodes_en: np.ndarray  # (K, 2) float64 UTM easting, northing of junctions / polyline vertices
    edges: np.ndarray  # (M, 2) int64 node indices (undirected)
    width_m: np.ndarray  # (M,) carriageway width, kerb to kerb (lanes, parking lanes, median)
    sidewalk_m: np.ndarray  # (M,) sidewalk width on each side
    lanes: np.ndarray  # (M,) int64 driving lanes per direction
    # (E_min, N_min, E_max, N_max) UTM of the renderable scene; None = not bounded
    bounds_en: tuple[float, float, float, float] | None = None

    def degree(self) -> np.ndarray:
        """(K,) number of edges at each node."""
        return np.bincount(self.edges.ravel(), minlength=len(self.nodes_en))


@dataclass
class Warp:
    """Street-grid coordinates (a, b) -> local metres (u east, v south): rotation plus smooth bumps."""

    origin: np.ndarray  # (2,) uv of (a, b) = (0, 0)
    axis_a: np.ndarray  # (2,) unit vector of a in uv
    axis_b: np.ndarray
    centres: np.ndarray  # (K, 2) uv of displacement bumps
    sigmas: np.ndarray  # (K,)
    amps: np.ndarray  # (K, 2) displacement at each bump's centre, metres

    def __call__(self, ab: np.ndarray) -> np.ndarray:
        ab = np.asarray(ab, np.float64)
        q = self.origin + ab[..., :1] * self.axis_a + ab[..., 1:2] * self.axis_b
        if len(self.sigmas) == 0:
            return q
        d2 = ((q[..., None, :] - self.centres) ** 2).sum(-1)
        w = np.exp(-d2 / (2.0 * self.sigmas ** 2))
        return q + (w[..., None] * self.amps).sum(-2)


@dataclass
class Street:
    """Cross-section of one street (shared by all its links)."""

    kind: str  # avenue | boulevard | street | diagonal
    lanes: int  # driving lanes per direction
    lane_m: float
    parking: bool  # a parking lane on each side
    median_m: float  # planted median (boulevard), 0 = none
    sidewalk_m: float
    trees: bool
    asphalt: float  # grey level of its carriageway
    sidewalk_rgb: tuple[int, int, int]
    marked: bool  # centre and lane lines painted
    wear: float  # 0 = fresh paint, 0.6 = barely visible

    @property
    def width_m(self) -> float:
        """Carriageway width, kerb to kerb (lanes, parking lanes, median)."""
        return 2 * self.lanes * self.lane_m + (2 * PARKING_LANE_M if self.parking else 0.0) + self.median_m

    @property
    def half_m(self) -> float:
        """Centre line to the back of the sidewalk."""
        return self.width_m / 2 + self.sidewalk_m


@dataclass
class Link:
    """A street between two junctions (or a junction and a line end), as a uv polyline."""

    street: Street
    key0: tuple[float, float]
    key1: tuple[float, float]
    uv: np.ndarray  # (K, 2)
    ends: list  # per end (0 = start, 1 = end): dict(kerb, clear, crosswalk) or None (no junction)


@dataclass
class Block:
    """A buildable rectangle between streets and what it becomes."""

    rect: tuple[float, float, float, float]  # buildable (a0, a1, b0, b1) in grid coordinates
    kind: str  # downtown | midrise | residential | industrial | parking | park | plaza
    centrality: float


@dataclass
class Layout:
    """Everything generate_city lays out before painting: frame, warp, links, blocks, graph."""

    zone: geo.UTMZone
    origin_e_m: float
    origin_n_m: float
    centre_e_m: float
    centre_n_m: float
    n_px: int
    size_m: float
    rotation_deg: float
    warp: Warp
    downtown_uv: np.ndarray
    links: list[Link]
    blocks: list[Block]
    graph: StreetGraph


def _spacings(rng: np.random.Generator, lo: float, hi: float, extent: float) -> np.ndarray:
    """Sorted line positions covering [-extent, extent] with gaps uniform in [lo, hi]."""
    pos = [rng.uniform(-0.5, 0.5) * lo]
    while pos[-1] < extent + hi:
        pos.append(pos[-1] + rng.uniform(lo, hi))
    while pos[0] > -extent - hi:
        pos.insert(0, pos[0] - rng.uniform(lo, hi))
    return np.array(pos)


def _street(rng: np.random.Generator, kind: str, tree_share: float) -> Street:
    if kind == "boulevard":
        lanes, lane, parking, median, sidewalk = 3, rng.uniform(3.1, 3.4), rng.random() < 0.6, rng.uniform(3.5, 6.0), rng.uniform(5.0, 7.0)
    elif kind in ("avenue", "diagonal"):
        lanes = int(rng.choice([1, 2, 2, 2, 3]))
        lane, parking, median, sidewalk = rng.uniform(3.0, 3.4), rng.random() < 0.75, 0.0, rng.uniform(3.5, 6.0)
    else:
        lanes = 2 if rng.random() < 0.12 else 1
        lane, parking, median, sidewalk = rng.uniform(2.9, 3.3), rng.random() < 0.85, 0.0, rng.uniform(2.5, 4.5)
    grey = rng.uniform(58, 100)
    side = rng.uniform(148, 182)
    tint = rng.uniform(-6, 6)
    return Street(
        kind=kind, lanes=lanes, lane_m=float(lane), parking=bool(parking), median_m=float(median),
        sidewalk_m=float(sidewalk),
        trees=bool(rng.random() < (max(tree_share, 0.9) if kind == "boulevard" and tree_share > 0 else tree_share)),
        asphalt=float(grey),
        sidewalk_rgb=(int(side + tint), int(side), int(side - tint)),
        marked=bool(kind != "street" or rng.random() < 0.8), wear=float(rng.uniform(0.0, 0.6)),
    )


def _intersect(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> tuple[float, float] | None:
    """Parameters (t, s) in (0, 1)^2 where segments p and q cross, else None."""
    d1, d2 = p1 - p0, q1 - q0
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if abs(den) < 1e-9:
        return None
    w = q0 - p0
    t = (w[0] * d2[1] - w[1] * d2[0]) / den
    s = (w[0] * d1[1] - w[1] * d1[0]) / den
    if 0.0 < t < 1.0 and 0.0 < s < 1.0:
        return float(t), float(s)
    return None


def _key(p: np.ndarray) -> tuple[float, float]:
    return (round(float(p[0]), 3), round(float(p[1]), 3))


@dataclass
class _Grid:
    """The street grid in grid coordinates (a along avenues' normals, b along cross streets')."""

    a: np.ndarray  # (I,) avenue positions
    b: np.ndarray  # (J,) cross-street positions
    avenues: list[Street]  # (I,) cross sections
    streets: list[Street]  # (J,)
    seg_b: dict[tuple[int, int], float | None]  # (column i, street j) -> b of that segment; None = dropped
    ext: float  # the grid covers [-ext, ext] on both axes


def make_layout(config: CityConfig) -> Layout:
    """The city's frame, street grid, links and blocks; draws from the STREAM_GRID stream only."""
    rng = stream_rng(config.seed, STREAM_GRID)
    ce, cn, zone = geo.latlon_to_utm(config.datum_lat_deg, config.datum_lon_deg)
    gsd = config.gsd_m
    n_px = int(round(config.size_m / gsd))
    size = n_px * gsd
    origin_e = round(math.floor((ce - size / 2) / gsd) * gsd, 9)
    origin_n = round(math.ceil((cn + size / 2) / gsd) * gsd, 9)
    centre_uv = np.array([ce - origin_e, origin_n - cn])

    rot, warp = _make_warp(rng, config, centre_uv, size)
    downtown_uv = centre_uv + rng.uniform(-0.12, 0.12, 2) * size
    ext = size / math.sqrt(2.0) + config.warp_max_m + 60.0
    A = _spacings(rng, config.avenue_spacing_min_m, config.avenue_spacing_max_m, ext)
    B = _spacings(rng, config.street_spacing_min_m, config.street_spacing_max_m, ext)
    # Inverse of the rotation only (warp ignored): grid coordinates of the downtown centre.
    d = downtown_uv - warp.origin
    downtown_ab = np.array([d @ warp.axis_a, d @ warp.axis_b])
    avenues, streets = _cross_sections(rng, config, A, B, downtown_ab)
    grid = _Grid(A, B, avenues, streets, _cross_segments(rng, config, A, B), ext)
    park_cells, plaza_cell = _park_and_plaza(rng, config, grid, warp, size, downtown_uv)
    lines = _grid_lines(rng, config, grid, downtown_ab, size)
    links = _links(lines, warp, rng)
    blocks = _blocks(rng, config, grid, warp, size, downtown_uv, park_cells, plaza_cell)
    graph = _street_graph(links, size, origin_e, origin_n)
    return Layout(zone=zone, origin_e_m=origin_e, origin_n_m=origin_n, centre_e_m=float(ce), centre_n_m=float(cn),
                  n_px=n_px, size_m=size, rotation_deg=float(rot), warp=warp, downtown_uv=downtown_uv,
                  links=links, blocks=blocks, graph=graph)


def _make_warp(rng: np.random.Generator, config: CityConfig, centre_uv: np.ndarray, size: float) -> tuple[float, Warp]:
    """The grid's random rotation (degrees) and the warp: that rotation plus up to 3 smooth bumps."""
    rot = rng.uniform(-config.grid_rotation_max_deg, config.grid_rotation_max_deg)
    th = math.radians(rot)
    axis_a = np.array([math.cos(th), math.sin(th)])
    axis_b = np.array([-math.sin(th), math.cos(th)])
    grid_origin = centre_uv + rng.uniform(-30, 30, 2)
    k = 3 if config.warp_max_m > 0 else 0
    scale = max(size, 1000.0)  # bends of the same physical size in small and large cities
    warp = Warp(
        origin=grid_origin, axis_a=axis_a, axis_b=axis_b,
        centres=centre_uv + rng.uniform(-0.5, 0.5, (k, 2)) * size,
        sigmas=rng.uniform(0.15, 0.3, k) * scale,
        amps=(rng.uniform(0.4, 1.0, (k, 1)) * config.warp_max_m) * _unit(rng.uniform(0, 2 * math.pi, k)),
    )
    return rot, warp


def _cross_sections(rng: np.random.Generator, config: CityConfig, A: np.ndarray, B: np.ndarray,
                    downtown_ab: np.ndarray) -> tuple[list[Street], list[Street]]:
    """Cross sections of the avenues (one may be a boulevard) and the cross streets (a few wide)."""
    avenues = [_street(rng, "avenue", config.street_tree_share) for _ in A]
    boulevard = int(np.argmin(np.abs(A - downtown_ab[0] - rng.uniform(-150, 150))))
    if rng.random() < 0.8:
        avenues[boulevard] = _street(rng, "boulevard", config.street_tree_share)
    streets = [_street(rng, "street", config.street_tree_share) for _ in B]
    for j in range(len(B)):  # a few wide cross streets
        if rng.random() < 0.15:
            streets[j] = _street(rng, "avenue", config.street_tree_share)
    return avenues, streets


def _cross_segments(rng: np.random.Generator, config: CityConfig, A: np.ndarray,
                    B: np.ndarray) -> dict[tuple[int, int], float | None]:
    """Cross-street segments per column i (between avenues i and i+1): b position, or None (dropped)."""
    n_col = len(A) - 1
    seg_b: dict[tuple[int, int], float | None] = {}
    for i in range(n_col):
        for j in range(len(B)):
            b = B[j]
            room = min(B[j] - B[j - 1] if j > 0 else 1e9, B[j + 1] - B[j] if j + 1 < len(B) else 1e9)
            if rng.random() < config.street_jog_share:
                b += rng.uniform(-1, 1) * min(config.street_jog_max_m, 0.2 * room)
            seg_b[(i, j)] = b
    for i in range(n_col):
        for j in range(1, len(B) - 1):
            if rng.random() < config.street_drop_share and seg_b.get((i, j - 1)) is not None:
                seg_b[(i, j)] = None
    return seg_b


def _park_and_plaza(rng: np.random.Generator, config: CityConfig, grid: _Grid, warp: Warp, size: float,
                    downtown_uv: np.ndarray) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Grid cells of the park (a column of 1-4 cells, its inner cross streets dropped) and the plaza."""
    A, B, seg_b = grid.a, grid.b, grid.seg_b
    n_col = len(A) - 1

    def cell_centre_uv(i: int, j: int) -> np.ndarray:
        return warp(np.array([(A[i] + A[i + 1]) / 2, (B[j] + B[j + 1]) / 2]))

    def inside(uv: np.ndarray, margin: float) -> bool:
        return bool(margin <= uv[0] <= size - margin and margin <= uv[1] <= size - margin)

    cells = [(i, j) for i in range(n_col) for j in range(len(B) - 1)]
    park_cells: list[tuple[int, int]] = []
    if config.park_share > 0:
        area = (A[1:] - A[:-1]).mean() * (B[1:] - B[:-1]).mean()
        n_rows = int(np.clip(round(config.park_share * size * size / area), 1, 4))
        cand = []
        for i, j in cells:
            if j + n_rows > len(B) - 1:
                continue
            c = (cell_centre_uv(i, j) + cell_centre_uv(i, j + n_rows - 1)) / 2
            if inside(c, 0.22 * size):
                cand.append((i, j))
        if cand:
            i, j = cand[int(rng.integers(len(cand)))]
            park_cells = [(i, j + r) for r in range(n_rows)]
            for r in range(1, n_rows):
                seg_b[(i, j + r)] = None
    plaza_cell = None
    if config.plaza:
        free = [c for c in cells if c not in park_cells and inside(cell_centre_uv(*c), 0.05 * size)]
        if free:
            plaza_cell = min(free, key=lambda c: float(np.linalg.norm(cell_centre_uv(*c) - downtown_uv)))
    return park_cells, plaza_cell


_Line = tuple[Street, np.ndarray, np.ndarray, dict[float, tuple[float, float]]]


def _grid_lines(rng: np.random.Generator, config: CityConfig, grid: _Grid, downtown_ab: np.ndarray,
                size: float) -> list[_Line]:
    """Street lines in grid coordinates: (street, p0, p1, junctions {t along p0->p1: key})."""
    A, B, seg_b, ext = grid.a, grid.b, grid.seg_b, grid.ext
    n_col = len(A) - 1
    lines: list[_Line] = []
    for i, a in enumerate(A):
        p0, p1 = np.array([a, -ext]), np.array([a, ext])
        pts = {0.0: _key(p0), 1.0: _key(p1)}
        for col in (i - 1, i):
            if 0 <= col < n_col:
                for j in range(len(B)):
                    b = seg_b[(col, j)]
                    if b is not None and -ext < b < ext:
                        pts[(b + ext) / (2 * ext)] = _key(np.array([a, b]))
        lines.append((grid.avenues[i], p0, p1, pts))
    for (i, j), b in seg_b.items():
        if b is None or not -ext < b < ext:
            continue
        p0, p1 = np.array([A[i], b]), np.array([A[i + 1], b])
        lines.append((grid.streets[j], p0, p1, {0.0: _key(p0), 1.0: _key(p1)}))
    for _ in range(config.diagonal_count):
        through = downtown_ab + rng.uniform(-0.3, 0.3, 2) * size
        phi = rng.uniform(25, 65) * rng.choice([-1, 1])
        dvec = np.array([math.cos(math.radians(phi)), math.sin(math.radians(phi))])
        p0, p1 = through - 2 * ext * dvec, through + 2 * ext * dvec
        street = _street(rng, "diagonal", config.street_tree_share)
        pts: dict[float, tuple[float, float]] = {}
        for other in lines:
            hit = _intersect(p0, p1, other[1], other[2])
            if hit is not None:
                key = _key(p0 + hit[0] * (p1 - p0))
                pts[hit[0]] = key
                other[3][hit[1]] = key
        if len(pts) >= 2:
            ts = sorted(pts)
            # The diagonal ends where it leaves the grid's extent (its outermost crossings).
            lines.append((street, p0, p1, {t: pts[t] for t in ts}))
    return lines


def _links(lines: list[_Line], warp: Warp, rng: np.random.Generator) -> list[Link]:
    """The lines cut at their junctions into warped uv polylines (~10 m steps), with junction setbacks."""
    links: list[Link] = []
    degree: dict[tuple[float, float], int] = {}
    for street, p0, p1, pts in lines:
        ts = sorted(pts)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            q0, q1 = p0 + t0 * (p1 - p0), p0 + t1 * (p1 - p0)
            n = max(1, int(math.ceil(np.linalg.norm(q1 - q0) / 10.0)))
            f = np.linspace(0.0, 1.0, n + 1)[:, None]
            uv = warp(q0 + f * (q1 - q0))
            links.append(Link(street, pts[t0], pts[t1], uv, [None, None]))
            degree[pts[t0]] = degree.get(pts[t0], 0) + 1
            degree[pts[t1]] = degree.get(pts[t1], 0) + 1
    _junction_setbacks(links, degree, rng)
    return links


def _blocks(rng: np.random.Generator, config: CityConfig, grid: _Grid, warp: Warp, size: float,
            downtown_uv: np.ndarray, park_cells: list[tuple[int, int]],
            plaza_cell: tuple[int, int] | None) -> list[Block]:
    """The buildable rectangles between the streets that touch the city, each with its kind."""
    A, B, seg_b, avenues, streets = grid.a, grid.b, grid.seg_b, grid.avenues, grid.streets
    blocks: list[Block] = []
    for i in range(len(A) - 1):
        bs = sorted((seg_b[(i, j)], j) for j in range(len(B)) if seg_b[(i, j)] is not None)
        for (b_lo, j_lo), (b_hi, j_hi) in zip(bs[:-1], bs[1:]):
            rect = (A[i] + avenues[i].half_m, A[i + 1] - avenues[i + 1].half_m,
                    b_lo + streets[j_lo].half_m, b_hi - streets[j_hi].half_m)
            corners = warp(np.array([[rect[0], rect[2]], [rect[1], rect[2]], [rect[1], rect[3]], [rect[0], rect[3]]]))
            if corners[:, 0].max() < 0 or corners[:, 0].min() > size or corners[:, 1].max() < 0 or corners[:, 1].min() > size:
                continue
            centre = corners.mean(axis=0)
            kappa = math.exp(-(np.linalg.norm(centre - downtown_uv) / config.core_radius_m) ** 2)
            b_mid = lambda jj: (B[jj] + B[jj + 1]) / 2  # noqa: E731
            kind = _block_kind(rng, kappa)
            if any(ci == i and b_lo < b_mid(cj) < b_hi for ci, cj in park_cells):
                kind = "park"
            elif plaza_cell is not None and plaza_cell[0] == i and b_lo < b_mid(plaza_cell[1]) < b_hi:
                kind = "plaza"
            blocks.append(Block(rect=tuple(float(x) for x in rect), kind=kind, centrality=kappa))
    return blocks


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _block_kind(rng: np.random.Generator, kappa: float) -> str:
    u = kappa + rng.normal(0.0, 0.12)
    if u > 0.55:
        return "downtown"
    if u > 0.28:
        return "midrise" if rng.random() < 0.93 else "parking"
    return str(rng.choice(["residential", "midrise", "industrial", "parking"], p=[0.64, 0.22, 0.09, 0.05]))


def _junction_setbacks(links: list[Link], degree: dict, rng: np.random.Generator) -> None:
    """Per link end at a junction: kerb distance of the crossing streets, clear zone, crosswalk."""
    at: dict[tuple[float, float], list[tuple[Link, int, np.ndarray]]] = {}
    for link in links:
        for end, key in ((0, link.key0), (1, link.key1)):
            uv = link.uv if end == 0 else link.uv[::-1]
            d = uv[1] - uv[0]
            at.setdefault(key, []).append((link, end, d / max(np.linalg.norm(d), 1e-9)))
    for key, members in at.items():
        if degree[key] < 3:
            continue
        for link, end, d in members:
            kerb, clear = 0.0, 0.0
            for other, _, od in members:
                if other is link or other.street is link.street:
                    continue
                cross = abs(d[0] * od[1] - d[1] * od[0])
                if cross < 0.3:
                    continue
                cos = abs(d @ od)
                k = (other.street.width_m / 2) / cross + (link.street.width_m / 2) * cos / cross
                kerb = max(kerb, k)
                clear = max(clear, k + other.street.sidewalk_m / cross)
            if clear > 0:
                link.ends[end] = {"kerb": kerb, "clear": max(clear, kerb + 2.5), "crosswalk": bool(rng.random() < 0.8)}


def _street_graph(links: list[Link], size: float, origin_e: float, origin_n: float) -> StreetGraph:
    """Clip link polylines to the city square, keep the largest connected piece, go to UTM."""
    nodes: list[np.ndarray] = []
    index: dict[tuple[float, float], int] = {}

    def node(p: np.ndarray, key: tuple[float, float] | None = None) -> int:
        if key is not None and key in index:
            return index[key]
        nodes.append(np.asarray(p, np.float64))
        if key is not None:
            index[key] = len(nodes) - 1
        return len(nodes) - 1

    edges, attrs = [], []
    for link in links:
        uv = link.uv
        ids = [node(uv[0], link.key0)] + [node(p) for p in uv[1:-1]] + [node(uv[-1], link.key1)]
        for k in range(len(uv) - 1):
            t0, t1 = _clip_segment(uv[k], uv[k + 1], size)
            if t0 >= t1:
                continue
            a = ids[k] if t0 == 0.0 else node(uv[k] + t0 * (uv[k + 1] - uv[k]))
            b = ids[k + 1] if t1 == 1.0 else node(uv[k] + t1 * (uv[k + 1] - uv[k]))
            edges.append((a, b))
            attrs.append((link.street.width_m, link.street.sidewalk_m, link.street.lanes))
    bounds = (float(origin_e), float(origin_n - size), float(origin_e + size), float(origin_n))
    if not edges:
        empty = np.zeros((0,), np.float64)
        return StreetGraph(np.zeros((0, 2)), np.zeros((0, 2), np.int64), empty, empty, np.zeros(0, np.int64),
                           bounds_en=bounds)
    e = np.array(edges, np.int64)
    at = np.array(attrs, np.float64)
    n = len(nodes)
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    used = np.zeros(n, bool)
    used[e.ravel()] = True
    sizes = np.bincount(label[e[:, 0]], minlength=label.max() + 1)
    keep_edge = label[e[:, 0]] == int(np.argmax(sizes))
    e, at = e[keep_edge], at[keep_edge]
    keep_node = np.zeros(n, bool)
    keep_node[e.ravel()] = True
    remap = np.cumsum(keep_node) - 1
    uv = np.array(nodes)[keep_node]
    en = np.stack([origin_e + uv[:, 0], origin_n - uv[:, 1]], axis=1)
    return StreetGraph(nodes_en=en, edges=remap[e].astype(np.int64), width_m=at[:, 0].copy(),
                       sidewalk_m=at[:, 1].copy(), lanes=at[:, 2].astype(np.int64), bounds_en=bounds)


def _clip_segment(p: np.ndarray, q: np.ndarray, size: float) -> tuple[float, float]:
    """Liang-Barsky: the part [t0, t1] of segment p->q inside [0, size]^2 (t0 >= t1: none)."""
    t0, t1 = 0.0, 1.0
    d = q - p
    for k in range(2):
        for num, den in ((p[k], -d[k]), (size - p[k], d[k])):
            if den == 0.0:
                if num < 0:
                    return 1.0, 0.0
                continue
            t = num / den
            if den < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    return t0, t1


# --------------------------------------------------------------------------- rasterising
