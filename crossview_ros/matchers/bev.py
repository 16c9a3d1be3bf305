"""Top-down (bev) matching: the panorama's ground features correlated with the scope's aerial map.

score_scope builds the scope's feature map from the tiles' stored blocks and runs the dense match
(crossview_ros.matchers.bev_grid) with the GNSS prior and, on a stream, the last frame's
posterior moved by a random walk (a grid filter, `track`): the only state a bev matcher keeps,
cleared by reset(). The bearing comes with the position: heading needs no second step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crossview_ros.engines.base import Engine
from crossview_ros.estimate import LocalizerError
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.matchers import bev_grid
from crossview_ros.matchers.base import GroundView, Heading, Matcher, PoseMatch, Scope, register
from crossview_ros.tiles import TileSet


@dataclass(frozen=True)
class _Track:
    """The grid filter's state between frames: the last posterior and what it already holds."""

    stamp_s: float  # the frame it was computed for
    fix_stamp_s: float  # the newest GNSS fix multiplied into it
    belief: bev_grid.Belief


@dataclass(frozen=True)
class BevPose(PoseMatch):
    """A PoseMatch with the bearing the match found with it."""

    bearing_rad: float = 0.0  # camera forward, clockwise from grid north
    bearing_variance_rad2: float = 0.0


@register
class BevMatcher(Matcher):
    """Dense top-down correlation over the scope (model.json matching "bev")."""

    kind = "bev"
    settings = frozenset({"match_prior", "track", "track_speed_mps", "track_max_gap_s", "track_uniform_weight",
                          "track_likelihood_weight"})

    def __init__(self, engine: Engine, tiles: TileSet, config: LocalizerConfig) -> None:
        super().__init__(engine, tiles, config)
        bev = self.meta.bev
        self.cell_m = float(bev["cell_m"])
        self.block_cells = int(bev["block_cells"])
        if abs(self.cell_m * self.block_cells * 2 - tiles.tile_size_m) > 1e-3 * tiles.tile_size_m:
            raise LocalizerError(f"model {self.meta.name} matches {2 * self.block_cells} cells of {self.cell_m:.4f} m "
                                 f"per tile but the tile set's tiles are {tiles.tile_size_m:g} m; cut the tiles at "
                                 "the model's size")
        self._track: _Track | None = None

    def reset(self) -> None:
        self._track = None

    def score_scope(self, ground: GroundView, scope: Scope) -> bev_grid.BevMatch:
        cfg = self.config
        ids = np.sort(scope.tile_ids)  # increasing rows: one sequential read of the memory-mapped descriptors
        smap = bev_grid.scope_map(self.tiles.descriptors[ids], ids, self.tiles.easting_m[ids],
                                  self.tiles.northing_m[ids], channels=self.meta.ground_features[0],
                                  block_cells=self.block_cells, cell_m=self.cell_m)
        last = self._track
        track = None
        if cfg.track and last is not None and 0 < scope.stamp_s - last.stamp_s <= cfg.track_max_gap_s:
            track = last.belief.predict(max(cfg.track_speed_mps * (scope.stamp_s - last.stamp_s),
                                            last.belief.spacing_m), cfg.track_uniform_weight)
        prior = None
        # a fix already in the track's belief is not multiplied in again (its error would count twice)
        if cfg.match_prior and (track is None or scope.fix_stamp_s != last.fix_stamp_s):
            # floored at one cell: a fix that claims zero variance still leaves the model its cell
            prior = bev_grid.Prior(scope.fix_easting_m, scope.fix_northing_m,
                                   scope.prior_covariance_m2 + np.eye(2) * self.cell_m ** 2)
        match = bev_grid.match_scope(self.engine, ground.features[None], smap, exclusion_m=cfg.fusion_radius_m,
                                     top_k=cfg.top_k, prior=prior, track=track,
                                     likelihood_weight=cfg.track_likelihood_weight if cfg.track else 1.0)
        if cfg.track and match.belief is not None:
            self._track = _Track(scope.stamp_s, scope.fix_stamp_s, match.belief)
        return match

    def refine_pose(self, ground: GroundView, candidates: bev_grid.BevMatch) -> BevPose:
        m = candidates
        return BevPose(m.easting_m, m.northing_m, m.tile_id, m.score, m.margin, m.spread_m,
                       bearing_rad=m.bearing_rad, bearing_variance_rad2=m.bearing_variance_rad2)

    def heading(self, ground: GroundView, pose: BevPose) -> Heading | None:
        if not self.config.heading:
            return None
        # bearing clockwise from grid north -> yaw counter-clockwise from grid east
        return Heading(math.pi / 2 - pose.bearing_rad, pose.bearing_variance_rad2)
