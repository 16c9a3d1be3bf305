"""Position and bearing of the camera from a top-down correlation model (model.json matching "bev").

A bev model's tile descriptor is the central half-block of the tile's aerial feature map; tiles
overlap by 50 %, so the blocks of the scope's tiles, put side by side at their grid places, form
one feature map of the whole scope. match.onnx correlates the panorama's ground features, rotated
to each of R camera bearings, with that map at every other cell; the best (bearing, position) is
then refined at every cell around it and to sub-cell / sub-step precision with parabolas.

Everything the localizer needs comes out of the score volume: the position, the bearing (so
yaw, with no separate heading step), a margin against the best distinct place, and a spread (the
RMS distance of the positions weighted by the model's own softmax) for the covariance.

With a GNSS prior (a Gaussian on the fix), the pose is the maximum of the posterior instead of
the likelihood: the model was trained as a softmax over positions with logit_scale, so
logit_scale x score is its log-likelihood, and the log-prior -d^T P^-1 d / 2 is added to it
(OrienterNet does the same with its GPS prior). A place that looks alike but lies far outside
the fix's uncertainty then loses to the right one near the fix; within that uncertainty the
model still decides. The margin and the spread are taken on the posterior (in score units).

On a stream, the posterior of the last frame is a second prior (a grid Bayes filter, as
OrienterNet's sequential localization): the Belief over the scope's positions, moved by
odometry's displacement and spread by its uncertainty (or, without odometry, spread by how far
the platform may have moved since: a Gaussian random walk), mixed
with a little uniform mass so that a wrong lock can be left when the views disagree with it, and
multiplied into the next frame's posterior. Independent frames are the special case without it.
Consecutive views of one street repeat the model's errors (a look-alike that wins one frame wins
the next): at full weight a run of such frames counts as that many independent votes against the
fixes. likelihood_weight, a power below one on each frame's likelihood, counts them for less; it
pays off only where the fixes' own errors are independent (Localizer's track_likelihood_weight).
Only numpy here: the correlation itself runs in the engine (onnxruntime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


@dataclass
class Belief:
    """The posterior over camera positions after a frame: the state of the grid filter."""

    log_p: np.ndarray  # (H, W) natural-log probabilities of the grid's positions, summing to 1; -inf outside
    corner_e_m: float  # UTM easting of position [0, 0]
    corner_n_m: float  # UTM northing of position [0, 0]
    spacing_m: float  # distance between neighbouring positions, m

    def predict(self, sigma_m: float, uniform_weight: float, shift_e_m: float = 0.0,
                shift_n_m: float = 0.0) -> TrackPrior:
        """The belief after a move by (shift_e_m, shift_n_m) (odometry; 0 for a random walk) with 1-sigma
        sigma_m per axis, mixed with uniform_weight of mass spread evenly over the belief's support."""
        if not (sigma_m > 0 and 0 < uniform_weight < 1 and math.isfinite(shift_e_m) and math.isfinite(shift_n_m)):
            raise ValueError(f"predict needs sigma_m > 0, uniform_weight in (0, 1) and a finite shift, got {sigma_m}, "
                             f"{uniform_weight}, ({shift_e_m}, {shift_n_m})")
        p = np.exp(self.log_p - np.max(self.log_p))
        p /= p.sum()
        floor = uniform_weight / max(1, int(np.isfinite(self.log_p).sum()))
        return TrackPrior((1 - uniform_weight) * p, floor, self.corner_e_m + shift_e_m, self.corner_n_m + shift_n_m,
                          self.spacing_m, float(sigma_m))


@dataclass(frozen=True)
class TrackPrior:
    """A predicted Belief as a prior on positions: each grid position's mass moved by the shift and spread
    by a Gaussian of sigma_m, a mixture evaluated wherever it is asked (smooth between the grid's
    positions: interpolating it from them would put kinks at them that hold the pose there while the
    platform moves on), plus a floor. Probabilities per grid position: the Gaussian sampled on the grid
    sums to one."""

    weights: np.ndarray  # (H, W) the belief's mass at its grid positions, times (1 - uniform_weight)
    floor: float  # probability of a position without track mass (the uniform part)
    corner_e_m: float  # easting of weights[0, 0], the shift applied
    corner_n_m: float  # northing of weights[0, 0], the shift applied
    spacing_m: float
    sigma_m: float

    def _kernel(self, at: np.ndarray, first: float, step: float) -> np.ndarray:
        """(len(at), n) the Gaussian from each of the n grid lines first + k step to each coordinate in `at`."""
        n = self.weights.shape[0] if step < 0 else self.weights.shape[1]
        d = (np.asarray(at, np.float64).reshape(-1)[:, None] - (first + step * np.arange(n))[None, :]) / self.sigma_m
        return np.exp(-0.5 * d * d)

    @cached_property
    def _norm(self) -> float:
        """The Gaussian sampled on the grid, summed: what makes the mixture a probability per grid position."""
        half = int(math.ceil(10 * self.sigma_m / self.spacing_m))  # the tails beyond are under 1e-22
        return float(np.sum(np.exp(-0.5 * (np.arange(-half, half + 1) * self.spacing_m / self.sigma_m) ** 2))) ** 2

    def log_density(self, east: np.ndarray, north: np.ndarray) -> np.ndarray:
        """ln(p + floor) at the given positions. A lattice (east varying along the last axis only, north along
        the first only, as _Grid asks) takes two matrix products; any other shape a sum per position."""
        east, north = np.asarray(east, np.float64), np.asarray(north, np.float64)
        lattice = east.ndim == 2 and north.ndim == 2 and east.shape[0] == 1 and north.shape[1] == 1
        if not lattice:
            east, north = np.broadcast_arrays(east, north)
        rows = self._kernel(north, self.corner_n_m, -self.spacing_m)
        cols = self._kernel(east, self.corner_e_m, self.spacing_m)
        p = rows @ self.weights @ cols.T if lattice else np.sum((rows @ self.weights) * cols, axis=1).reshape(east.shape)
        return np.log(p / self._norm + self.floor)


@dataclass
class BevMatch:
    """The best camera pose in a scope; positions on the tile set's UTM grid."""

    easting_m: float
    northing_m: float
    bearing_rad: float  # camera forward (panorama column 0), clockwise from grid north
    score: float  # mean cosine at the best pose (the likelihood alone)
    margin: float  # posterior score - the best posterior score farther than exclusion_m (any bearing)
    spread_m: float  # posterior-weighted RMS distance of all positions from the best one
    bearing_variance_rad2: float  # softmax-weighted circular variance over bearings at the best position
    tile_id: int  # the tile whose central block holds the camera
    tile_ids: np.ndarray  # tiles ranked by their best posterior score (top_k)
    tile_scores: np.ndarray  # those posterior scores (score + log-prior / logit_scale; the score without a prior)
    belief: Belief | None = None  # the posterior over the scope's coarse positions (the next frame's track)
    mode_mass: float = 1.0  # posterior mass within mode_radius_m of the pose
    far_covariance_m2: np.ndarray | None = None  # (2, 2) grid: sum of p d d^T over the positions beyond mode_radius_m
    view_distance_m: float = 0.0  # from the pose to the place the view alone likes best (no prior, no track)
    prior_inside: float = 1.0  # share of the GNSS prior's mass on the scope's tiles (1 without a prior)
    bearing_flip_mass: float = 0.0  # softmax mass of the bearings more than 90 deg from the best one
    bearing_likelihood_rad: float = 0.0  # the best bearing of the likelihood alone at the pose (no bearing prior)
    scope_median_score: float = math.nan  # median over the scope's positions of the likelihood's best bearing


@dataclass
class ScopeMap:
    """The scope's tile blocks side by side; cell corner (i, j) is a camera position."""

    fmap: np.ndarray  # (C, H, W) float32
    owner: np.ndarray  # (rows, cols) tile id of each block, -1 where no tile
    corner_e_m: float  # easting of corner (0, 0)
    corner_n_m: float  # northing of corner (0, 0)
    cell_m: float
    block_cells: int

    def position(self, i: float, j: float) -> tuple[float, float]:
        """UTM (E, N) of corner (i, j) (fractional allowed)."""
        return self.corner_e_m + j * self.cell_m, self.corner_n_m - i * self.cell_m

    def tile_at(self, i: int, j: int) -> int:
        """Tile whose block holds corner (i, j), or -1."""
        b = self.block_cells
        r, c = i // b, j // b
        if 0 <= r < self.owner.shape[0] and 0 <= c < self.owner.shape[1] and i >= 0 and j >= 0:
            return int(self.owner[r, c])
        return -1


def scope_map(descriptors: np.ndarray, tile_ids: np.ndarray, easting_m: np.ndarray, northing_m: np.ndarray,
              *, channels: int, block_cells: int, cell_m: float) -> ScopeMap:
    """Place the tiles' blocks on their grid: descriptors (T, C*b*b) rows as the tile set stores them
    (L2-normalised: every cell is a unit vector, so the row norm is b and is undone here)."""
    b = block_cells
    block_m = b * cell_m
    blocks = np.asarray(descriptors, np.float32).reshape(len(tile_ids), channels, b, b) * np.float32(b)
    e_min, n_max = float(np.min(easting_m)), float(np.max(northing_m))
    cols = np.round((np.asarray(easting_m) - e_min) / block_m).astype(int)
    rows = np.round((n_max - np.asarray(northing_m)) / block_m).astype(int)
    owner = np.full((rows.max() + 1, cols.max() + 1), -1, np.int64)
    fmap = np.zeros((channels, owner.shape[0] * b, owner.shape[1] * b), np.float32)
    for t, r, c, blk in zip(tile_ids, rows, cols, blocks):
        owner[r, c] = t
        fmap[:, r * b:(r + 1) * b, c * b:(c + 1) * b] = blk
    return ScopeMap(fmap, owner, e_min - block_m / 2, n_max + block_m / 2, cell_m, b)


def _parabola(s_minus: float, s0: float, s_plus: float) -> float:
    """Sub-sample offset of a peak in [-0.5, 0.5] from three samples."""
    den = s_minus - 2 * s0 + s_plus
    if not (math.isfinite(s_minus) and math.isfinite(s_plus) and den < 0):
        return 0.0  # an edge of the scope, or a flat top
    return float(np.clip(0.5 * (s_minus - s_plus) / den, -0.5, 0.5))


@dataclass(frozen=True)
class Prior:
    """A Gaussian on the camera position from the GNSS fix, on the tile set's UTM grid."""

    easting_m: float
    northing_m: float
    covariance_m2: np.ndarray  # (2, 2), grid axes (E, N)

    def log_density(self, east: np.ndarray, north: np.ndarray) -> np.ndarray:
        """-d^T P^-1 d / 2 at the given positions (the normalising constant dropped)."""
        inv = np.linalg.inv(np.asarray(self.covariance_m2, np.float64))
        de, dn = np.asarray(east, np.float64) - self.easting_m, np.asarray(north, np.float64) - self.northing_m
        return -0.5 * (inv[0, 0] * de * de + (inv[0, 1] + inv[1, 0]) * de * dn + inv[1, 1] * dn * dn)


def bearing_log_prior(n_rot: int, bearing_rad: float, sigma_rad: float, uniform_weight: float) -> np.ndarray:
    """(n_rot,) natural-log probabilities of the match's bearings (k x 2 pi / n_rot, clockwise from grid
    north): a wrapped Gaussian around bearing_rad mixed with uniform_weight spread evenly, so that a
    view that clearly faces elsewhere can still win (odometry's heading, predicted for this frame)."""
    if not (n_rot > 0 and sigma_rad > 0 and 0 < uniform_weight < 1 and math.isfinite(bearing_rad)):
        raise ValueError(f"bearing_log_prior needs n_rot > 0, sigma_rad > 0, uniform_weight in (0, 1) and a finite "
                         f"bearing, got {n_rot}, {sigma_rad}, {uniform_weight}, {bearing_rad}")
    angles = np.arange(n_rot) * (2 * math.pi / n_rot)
    d = np.remainder(angles - bearing_rad + math.pi, 2 * math.pi) - math.pi
    g = np.exp(-0.5 * (d / sigma_rad) ** 2)
    return np.log((1 - uniform_weight) * g / g.sum() + uniform_weight / n_rot)


def match_scope(engine: Any, ground: np.ndarray, smap: ScopeMap, *, exclusion_m: float, top_k: int,
                prior: Prior | None = None, track: TrackPrior | None = None,
                likelihood_weight: float = 1.0, mode_radius_m: float = 10.0,
                bearing_prior: np.ndarray | None = None) -> BevMatch:
    """Best bearing and position of the camera in the scope map (see the module docstring).

    ground: (1, C, K, K) camera-frame ground features from the engine's ground graph. prior: the
    GNSS fix as a Gaussian; track: the last frame's predicted Belief; the pose then maximises the
    posterior, not the likelihood alone. likelihood_weight: the exponent on the model's likelihood
    in that posterior (below 1 when consecutive frames' errors are correlated, see Localizer's track).
    mode_radius_m: the radius around the pose whose posterior mass is the match's mode_mass.
    bearing_prior: (R,) natural-log probabilities of the bearings (bearing_log_prior), or None.
    """
    if not 0 < likelihood_weight <= 1:
        raise ValueError(f"likelihood_weight must be in (0, 1], got {likelihood_weight}")
    grid = _Grid(engine, ground, smap, (prior, track), likelihood_weight, bearing_prior)
    coarse = grid.coarse()
    fine = grid.fine(coarse)
    return grid.result(coarse, fine, exclusion_m, top_k, mode_radius_m)


@dataclass
class _Coarse:
    """Every match_stride-th corner of the scope at its best bearing."""

    scores: np.ndarray  # (R, H', W') likelihood per bearing
    ii: np.ndarray  # corner rows of the coarse grid
    jj: np.ndarray  # corner columns
    tile_of: np.ndarray  # (H', W') tile id of each coarse corner, -1 where no tile
    valid: np.ndarray  # tile_of >= 0
    post: np.ndarray  # log-posterior / logit_scale at the best bearing
    masked: np.ndarray  # post, -inf where no tile
    peak: tuple[int, int, int]  # (bearing, row, column) of the best coarse corner

    @cached_property
    def likelihood(self) -> np.ndarray:
        """(H', W') the likelihood alone at each coarse corner, its best bearing."""
        return self.scores.max(axis=0)


@dataclass
class _Fine:
    """The (2s+1)^2 corners around the coarse peak, the best of them refined below a cell."""

    i_lo: int
    j_lo: int
    scores: np.ndarray  # (R, span, span) likelihood, -inf where no tile
    at: np.ndarray  # (R,) likelihood per bearing at the best corner
    r_best: int
    s0: float  # likelihood at the best corner and bearing
    p0: float  # posterior there
    i_best: int
    j_best: int
    di: float  # sub-cell refinement of row and column, and sub-step of the bearing
    dj: float
    dr: float


class _Grid:
    """One frame's match: the engine's score volume over a scope map, and the priors on it."""

    def __init__(self, engine: Any, ground: np.ndarray, smap: ScopeMap, priors: tuple[Any, ...],
                 likelihood_weight: float, bearing_prior: np.ndarray | None = None) -> None:
        meta = engine.meta.bev
        self.engine, self.ground, self.smap, self.priors = engine, ground, smap, priors
        self.weight = likelihood_weight
        self.k, self.stride, self.n_rot = int(meta["kernel_cells"]), int(meta["match_stride"]), int(meta["rotations"])
        self.scale = float(meta["logit_scale"])
        if bearing_prior is not None and np.shape(bearing_prior) != (self.n_rot,):
            raise ValueError(f"bearing_prior must have one value per rotation ({self.n_rot}), got {np.shape(bearing_prior)}")
        # the bearings' prior in score units, 0 without one
        self.bearing = (np.zeros(self.n_rot) if bearing_prior is None else
                        np.asarray(bearing_prior, np.float64) / self.scale).astype(np.float32)
        k = self.k
        self.padded = np.pad(smap.fmap, ((0, 0), (k // 2, k // 2 - 1), (k // 2, k // 2 - 1)))[None]

    def log_prior(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """The priors at corners (i, j) in score units (divided by logit_scale); 0 without any."""
        out = np.zeros(np.broadcast_shapes(np.shape(i), np.shape(j)), np.float64)
        for p in self.priors:
            if p is not None:
                out = out + p.log_density(*self.smap.position(i, j))
        return (out / self.scale).astype(np.float32)

    def coarse(self) -> _Coarse:
        smap, stride = self.smap, self.stride
        scores = self.engine.match(self.ground, self.padded)[0]  # (R, ceil(H / s), ceil(W / s)) at (s i, s j)
        ii = np.arange(scores.shape[1]) * stride
        jj = np.arange(scores.shape[2]) * stride
        b = smap.block_cells
        tile_of = smap.owner[np.minimum(ii // b, smap.owner.shape[0] - 1)][:, np.minimum(jj // b,
                                                                                        smap.owner.shape[1] - 1)]
        valid = tile_of >= 0
        turned = self.weight * scores + self.bearing[:, None, None]
        post = turned.max(axis=0) + self.log_prior(ii[:, None], jj[None, :])
        masked = np.where(valid, post, -np.inf)
        ci, cj = np.unravel_index(int(np.argmax(masked)), masked.shape)
        return _Coarse(scores, ii, jj, tile_of, valid, post, masked, (int(np.argmax(turned[:, ci, cj])), ci, cj))

    def _corners(self, lo: int, phase: int, size: int, span: int) -> tuple[int, int]:
        """First and last corner >= 0, < size, in [lo + phase, lo + span) with lo + phase's residue."""
        stride = self.stride
        first = lo + phase
        if first < 0:
            first += -(first // stride) * stride
        last = min(lo + span - 1, size - 1)
        last -= (last - first) % stride
        return first, last

    def fine(self, c: _Coarse) -> _Fine:
        """Every corner in a (2s+1)^2 window around the coarse peak (one stride-s call per phase), then
        the best bearing and corner on the posterior, refined by parabolas."""
        k, stride, n_rot, smap = self.k, self.stride, self.n_rot, self.smap
        r0, ci, cj = c.peak
        _, h, w = smap.fmap.shape
        i_lo, j_lo = c.ii[ci] - stride, c.jj[cj] - stride
        span = 2 * stride + 1
        fine = np.full((n_rot, span, span), -np.inf, np.float32)
        for di in range(stride):
            for dj in range(stride):
                a0, a1 = self._corners(i_lo, di, h, span)
                b0, b1 = self._corners(j_lo, dj, w, span)
                if a0 > a1 or b0 > b1:
                    continue
                s = self.engine.match(self.ground, np.ascontiguousarray(self.padded[:, :, a0:a1 + k, b0:b1 + k]))[0]
                fi = a0 - i_lo + stride * np.arange(s.shape[1])
                fj = b0 - j_lo + stride * np.arange(s.shape[2])
                fine[:, fi[:, None], fj[None, :]] = s
        for a in range(span):
            for bb in range(span):
                if smap.tile_at(i_lo + a, j_lo + bb) < 0:
                    fine[:, a, bb] = -np.inf
        fine_post = self.weight * fine + self.bearing[:, None, None] + self.log_prior(
            i_lo + np.arange(span)[:, None], j_lo + np.arange(span)[None, :])[None]
        rots = [(r0 - 1) % n_rot, r0, (r0 + 1) % n_rot]
        sub = fine_post[rots]
        ri, fa, fb = np.unravel_index(int(np.argmax(sub)), sub.shape)
        r_best = rots[ri]
        s0 = float(fine[r_best, fa, fb])
        p0 = float(fine_post[r_best, fa, fb])
        # sub-cell refinement and sub-step of the bearing, both on the posterior
        fp = fine_post[r_best]
        da = _parabola(float(fp[fa - 1, fb]), p0, float(fp[fa + 1, fb])) if 0 < fa < span - 1 else 0.0
        db = _parabola(float(fp[fa, fb - 1]), p0, float(fp[fa, fb + 1])) if 0 < fb < span - 1 else 0.0
        at = fine[:, fa, fb]
        bp = self.weight * at + self.bearing
        dr = _parabola(float(bp[(r_best - 1) % n_rot]), float(bp[r_best]), float(bp[(r_best + 1) % n_rot]))
        return _Fine(int(i_lo), int(j_lo), fine, at, r_best, s0, p0, int(i_lo + fa), int(j_lo + fb), da, db, dr)

    def result(self, c: _Coarse, f: _Fine, exclusion_m: float, top_k: int, mode_radius_m: float) -> BevMatch:
        """The pose, with the margin against distinct places and the spread from the posterior, the
        bearing variance from the model's softmax, the tiles ranked and the belief for the track."""
        smap, scale, n_rot = self.smap, self.scale, self.n_rot
        east, north = smap.position(f.i_best + f.di, f.j_best + f.dj)
        step = 2 * math.pi / n_rot
        bearing = float(np.remainder((f.r_best + f.dr) * step, 2 * math.pi))
        pe, pn = smap.position(c.ii[:, None], c.jj[None, :])
        dist = np.hypot(pe - east, pn - north)
        far = c.valid & (dist > exclusion_m)
        margin = f.p0 - float(c.post[far].max()) if far.any() else f.p0 + 1.0
        shifted = c.masked * scale - float(np.max(c.masked)) * scale  # the posterior's logits, peak 0, -inf off map
        p = np.exp(shifted)
        total = float(p.sum())
        p /= total
        spread = float(math.sqrt(float(np.sum(p * dist ** 2))))
        near = dist <= mode_radius_m
        de, dn = np.where(near, 0.0, pe - east), np.where(near, 0.0, pn - north)
        far_cov = np.array([[np.sum(p * de * de), np.sum(p * de * dn)], [np.sum(p * de * dn), np.sum(p * dn * dn)]])
        at_post = self.weight * f.at + self.bearing  # the bearings' posterior at the pose, score units
        q = np.exp((at_post - at_post.max()) * scale)
        q /= q.sum()
        angles = np.arange(n_rot) * step
        resultant = abs(complex(np.sum(q * np.cos(angles)), np.sum(q * np.sin(angles))))
        bearing_var = float(max(-2.0 * math.log(max(resultant, 1e-9)), (step / 2) ** 2 / 3))
        off = np.abs(np.remainder(angles - bearing + math.pi, 2 * math.pi) - math.pi) > math.pi / 2

        # the tile whose block holds the refined position (a corner refined across a block edge moves on)
        tile_id = smap.tile_at(math.floor(f.i_best + f.di), math.floor(f.j_best + f.dj))
        if tile_id < 0:
            tile_id = smap.tile_at(f.i_best, f.j_best)
        # tiles ranked by their best posterior score (coarse, and the refined one for the chosen tile)
        ids = np.unique(c.tile_of[c.valid])
        per_tile = np.array([c.post[c.valid & (c.tile_of == t)].max() for t in ids])
        per_tile[ids == tile_id] = np.maximum(per_tile[ids == tile_id], f.p0)
        order = np.argsort(-per_tile, kind="stable")[:max(1, top_k)]
        e0, n0 = smap.position(0, 0)
        belief = Belief(shifted - math.log(total), float(e0), float(n0), self.stride * smap.cell_m)
        return BevMatch(float(east), float(north), bearing, f.s0, float(margin), spread, bearing_var, tile_id,
                        ids[order], per_tile[order], belief, mode_mass=float(np.sum(p[near])),
                        far_covariance_m2=far_cov, view_distance_m=self.view_distance_m(c, east, north),
                        prior_inside=self.prior_inside(c),
                        bearing_flip_mass=float(np.sum(q[off])), bearing_likelihood_rad=float(np.argmax(f.at) * step),
                        scope_median_score=self.scope_median_score(c))

    @staticmethod
    def scope_median_score(c: _Coarse) -> float:
        """What the view scores at a typical place of the scope (the median over its positions, best
        bearing each): the level its best score is judged against. A view that scores high everywhere
        (a bland street, imagery of another place that resembles nothing in particular) has a high level."""
        lik = c.likelihood[c.valid]
        lik = lik[np.isfinite(lik)]
        return float(np.median(lik)) if lik.size else math.nan

    def prior_inside(self, c: _Coarse) -> float:
        """Share of the GNSS prior's probability on the scope's tiles (their blocks' cells): a fix
        whose uncertainty runs mostly off the tiles cannot be corrected by them, however the match looks
        (the posterior knows nothing of the places beyond, and puts the pose on the nearest edge)."""
        prior = self.priors[0]
        if prior is None:
            return 1.0
        smap = self.smap
        cov = np.asarray(prior.covariance_m2, np.float64)
        total = 2 * math.pi * math.sqrt(max(float(np.linalg.det(cov)), 1e-12)) / smap.cell_m ** 2  # per cell
        h, w = smap.fmap.shape[1:]
        pe, pn = smap.position(np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5)  # cell centres
        b = smap.block_cells
        on_tile = np.repeat(np.repeat(smap.owner >= 0, b, axis=0), b, axis=1)[:h, :w]
        inside = float(np.sum(np.exp(prior.log_density(pe, pn))[on_tile]))  # the midpoint rule over the blocks
        return float(min(inside / total, 1.0))

    def view_distance_m(self, c: _Coarse, east: float, north: float) -> float:
        """Distance from the pose to the coarse position the likelihood alone prefers (any bearing). With
        imagery of this place the view often points at the pose by itself; with another place's imagery
        its best place is anywhere in the scope, so it rarely falls near a pose the priors chose."""
        lik = np.where(c.valid, c.likelihood, -np.inf)
        i, j = np.unravel_index(int(np.argmax(lik)), lik.shape)
        e, n = self.smap.position(c.ii[i], c.jj[j])
        return float(math.hypot(e - east, n - north))
