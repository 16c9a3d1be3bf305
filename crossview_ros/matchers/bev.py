"""Top-down (bev) matching: the panorama's ground features correlated with the scope's aerial map.

score_scope builds the scope's feature map from the tiles' stored blocks and runs the dense match
(crossview_ros.matchers.bev_grid) with the GNSS prior and, on a stream, the last frame's
posterior moved by odometry's displacement (or a random walk without it; a grid filter, `track`),
with odometry's yaw as a prior on the bearing once its frame is aligned with the grid: the only
state a bev matcher keeps, cleared by reset(). The bearing comes with the position: heading needs no second step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crossview_ros.engines.base import Engine
from crossview_ros.estimate import LocalizerError
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.matchers import bev_grid, bev_view
from crossview_ros.matchers.base import GroundView, Heading, Matcher, PoseMatch, Scope, register
from crossview_ros.tiles import TileSet


DEFAULT_CAMERA_HEIGHT_M = 2.0  # models exported before model.json stated their camera height
BEARING_PRIOR_MIN_SIGMA_RAD = math.radians(10.0)  # the odometry bearing prior is never sharper than this


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
    bearing_flip_mass: float = 0.0  # softmax mass of the bearings more than 90 deg from bearing_rad
    bearing_likelihood_rad: float = 0.0  # the likelihood's own best bearing (what votes for the odometry alignment)


@register
class BevMatcher(Matcher):
    """Dense top-down correlation over the scope (model.json matching "bev")."""

    kind = "bev"
    heading_is_free = True
    partial_views = True
    scope_level = True
    settings = frozenset({"match_prior", "track", "track_speed_mps", "track_max_gap_s", "track_uniform_weight",
                          "track_likelihood_weight", "odometry", "odom_max_age_s", "odom_yaw_uniform_weight",
                          "min_mode_mass", "mode_radius_m", "imagery_window", "min_imagery_support",
                          "min_prior_inside", "yaw_max_flip_mass"})

    def __init__(self, engine: Engine, tiles: TileSet, config: LocalizerConfig) -> None:
        super().__init__(engine, tiles, config)
        bev = self.meta.bev
        self.cell_m = float(bev["cell_m"])
        self.block_cells = int(bev["block_cells"])
        if abs(self.cell_m * self.block_cells * 2 - tiles.tile_size_m) > 1e-3 * tiles.tile_size_m:
            raise LocalizerError(f"model {self.meta.name} matches {2 * self.block_cells} cells of {self.cell_m:.4f} m "
                                 f"per tile but the tile set's tiles are {tiles.tile_size_m:g} m; cut the tiles at "
                                 "the model's size")
        self.camera_height_m = float(bev.get("camera_height_m", DEFAULT_CAMERA_HEIGHT_M))
        self._track: _Track | None = None
        self._visible_cells: tuple[bytes, np.ndarray] | None = None  # the last mask's cells (a rig's mask is fixed)

    def encode_ground(self, x: np.ndarray, visibility: np.ndarray | None = None) -> GroundView:
        """The ground features with the cells no camera sees zeroed: only the seen ground is correlated,
        and a view that sees less scores (and so believes) less."""
        view = super().encode_ground(x)
        if visibility is None or np.all(visibility):
            return view
        cells = self.visible_cells(np.asarray(visibility, bool))
        features = view.features * cells[None]
        return GroundView(features.reshape(-1), features)

    def visible_cells(self, visibility: np.ndarray) -> np.ndarray:
        """(K, K) share of each ground feature cell that the panorama visibility covers (cached per mask)."""
        key = np.packbits(visibility).tobytes()
        if self._visible_cells is None or self._visible_cells[0] != key:
            k = int(self.meta.bev["kernel_cells"])
            n = bev_view.SAMPLES_PER_CELL
            cells = bev_view.cell_visibility(visibility, res_m=self.cell_m / n, cells=k, stride=n,
                                             height_m=self.camera_height_m)
            self._visible_cells = (key, cells.astype(np.float32))
        return self._visible_cells[1]

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
            track = self._predict(last, scope)
        prior = None
        # a fix already in the track's belief is not multiplied in again (its error would count twice)
        if cfg.match_prior and (track is None or scope.fix_stamp_s != last.fix_stamp_s):
            # floored at one cell: a fix that claims zero variance still leaves the model its cell
            prior = bev_grid.Prior(scope.fix_easting_m, scope.fix_northing_m,
                                   scope.prior_covariance_m2 + np.eye(2) * self.cell_m ** 2)
        match = bev_grid.match_scope(self.engine, ground.features[None], smap, exclusion_m=cfg.fusion_radius_m,
                                     top_k=cfg.top_k, prior=prior, track=track,
                                     likelihood_weight=cfg.track_likelihood_weight if cfg.track else 1.0,
                                     mode_radius_m=cfg.mode_radius_m, bearing_prior=self._bearing_prior(scope))
        if cfg.track and match.belief is not None:
            self._track = _Track(scope.stamp_s, scope.fix_stamp_s, match.belief)
        return match

    def _predict(self, last: _Track, scope: Scope) -> bev_grid.TrackPrior:
        """The last belief moved to this frame: by the odometry's displacement and its uncertainty when
        there is odometry for both stamps (its length only, as a random walk, until the odom frame is
        aligned with the grid), else by the random walk of track_speed_mps."""
        cfg = self.config
        floor_m = last.belief.spacing_m
        motion = scope.odometry.motion_grid(last.stamp_s, scope.stamp_s) if scope.odometry is not None else None
        if motion is None:
            return last.belief.predict(max(cfg.track_speed_mps * (scope.stamp_s - last.stamp_s), floor_m),
                                       cfg.track_uniform_weight)
        return last.belief.predict(max(math.sqrt(motion.variance_m2), floor_m), cfg.track_uniform_weight,
                                   motion.east_m, motion.north_m)

    def _bearing_prior(self, scope: Scope) -> np.ndarray | None:
        """The bearings' prior from odometry's yaw once the odom frame is aligned with the grid (the
        alignment absorbs the camera's mounting yaw): a flipped view then needs strong evidence."""
        if scope.odometry is None or not self.config.track:
            return None
        predicted = scope.odometry.yaw_grid(scope.stamp_s)
        if predicted is None:
            return None
        yaw_grid, sigma = predicted
        # yaw counter-clockwise from grid east -> bearing clockwise from grid north
        return bev_grid.bearing_log_prior(int(self.meta.bev["rotations"]), math.pi / 2 - yaw_grid,
                                          max(sigma, BEARING_PRIOR_MIN_SIGMA_RAD), self.config.odom_yaw_uniform_weight)

    def refine_pose(self, ground: GroundView, candidates: bev_grid.BevMatch) -> BevPose:
        m = candidates
        return BevPose(m.easting_m, m.northing_m, m.tile_id, m.score, m.margin, m.spread_m, mode_mass=m.mode_mass,
                       far_covariance_m2=m.far_covariance_m2, view_distance_m=m.view_distance_m,
                       prior_inside=m.prior_inside, scope_median_score=m.scope_median_score, bearing_rad=m.bearing_rad,
                       bearing_variance_rad2=m.bearing_variance_rad2, bearing_flip_mass=m.bearing_flip_mass,
                       bearing_likelihood_rad=m.bearing_likelihood_rad)

    def heading(self, ground: GroundView, pose: BevPose) -> Heading | None:
        # bearing clockwise from grid north -> yaw counter-clockwise from grid east
        return Heading(math.pi / 2 - pose.bearing_rad, pose.bearing_variance_rad2, pose.bearing_flip_mass,
                       math.pi / 2 - pose.bearing_likelihood_rad)
