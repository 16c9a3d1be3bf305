"""Descriptor retrieval: global descriptors ranked by cosine in the scope, then the offset head.

score_scope: exact top-k of the tiles in scope by cosine with the panorama's descriptor.
refine_pose: the offset head regresses (dE, dN) / L inside each candidate tile; the estimate is
the top-1 tile's position (fusion best) or the score-weighted mean of the candidates that agree
with it (fusion weighted); the spread of the agreeing candidates and the margin (top2 or
distinct) feed the covariance. heading: the panorama's features against the chosen tile's aerial
features (crossview_ros.heading), the tile's features cached since a drive revisits tiles.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossview_ros import heading as heading_estimators
from crossview_ros.engines.base import Engine
from crossview_ros.estimate import LocalizerError
from crossview_ros.index import ScopedSearch
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.matchers.base import GroundView, Heading, Matcher, PoseMatch, Scope, register
from crossview_ros.preprocess import preprocess_aerial
from crossview_ros.tiles import TileSet

AERIAL_FEATURE_CACHE = 16  # tiles whose aerial features (heading) stay cached: a drive revisits them


@dataclass(frozen=True)
class Candidates:
    """The scope's top-k tiles by cosine, best first."""

    ids: np.ndarray
    scores: np.ndarray  # float64 cosines


@register
class RetrievalMatcher(Matcher):
    """Global descriptors + offset head (model.json matching "descriptor")."""

    kind = "descriptor"
    settings = frozenset({"search_device", "fusion", "fusion_temperature", "margin_mode", "heading_method"})

    def __init__(self, engine: Engine, tiles: TileSet, config: LocalizerConfig) -> None:
        super().__init__(engine, tiles, config)
        self.search = ScopedSearch(tiles.descriptors, device=config.search_device)
        self._estimator = self._heading_estimator() if config.heading else None
        self._aerial_cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _heading_estimator(self) -> Callable[..., Any]:
        if self.tiles.image_format is None:
            raise LocalizerError(f"heading needs tile images but {self.tiles.path} has none; build the tile set "
                                 "with images or set heading false")
        cg, ca = self.meta.ground_features[0], self.meta.aerial_features[0]
        if cg != ca:
            raise LocalizerError(f"heading correlates ground and aerial features channel by channel, but model "
                                 f"{self.meta.name} has {cg} and {ca} channels; use a model whose feature maps match "
                                 "or set heading false")
        if self.config.heading_method == "polar":
            return heading_estimators.polar_correlation_heading
        return heading_estimators.revisiting_heading

    def score_scope(self, ground: GroundView, scope: Scope) -> Candidates:
        result = self.search.search(ground.descriptor, scope.tile_ids, self.config.top_k)
        return Candidates(result.ids, result.scores.astype(np.float64))

    def refine_pose(self, ground: GroundView, candidates: Candidates) -> PoseMatch:
        cfg = self.config
        ids, scores = candidates.ids, candidates.scores
        tile_desc = np.asarray(self.tiles.descriptors[ids], dtype=np.float32)
        queries = np.repeat(ground.descriptor[None].astype(np.float32), len(ids), axis=0)
        offsets = self.engine.offset(queries, tile_desc).astype(np.float64)
        # The camera lies inside every tile that a correct retrieval returns (positive or
        # semi-positive), so an offset beyond half a tile is the head extrapolating: clip it.
        offsets = np.clip(offsets, -0.5, 0.5)
        centres = np.column_stack([self.tiles.easting_m[ids], self.tiles.northing_m[ids]])
        positions = centres + offsets * self.tiles.tile_size_m
        agree = np.hypot(*(positions - positions[0]).T) <= cfg.fusion_radius_m
        weights = np.where(agree, np.exp((scores - scores[0]) / cfg.fusion_temperature), 0.0)
        weights /= weights.sum()
        est = weights @ positions if cfg.fusion == "weighted" else positions[0]
        spread_m = float(math.sqrt(weights @ np.sum((positions - est) ** 2, axis=1)))
        return PoseMatch(float(est[0]), float(est[1]), int(ids[0]), float(scores[0]), self._margin(ids, scores),
                         spread_m)

    def _margin(self, ids: np.ndarray, scores: np.ndarray) -> float:
        """top1 - top2 (top2), or top1 - the best tile whose footprint does not overlap the top-1's
        (distinct; the k-th score when all top-k overlap, a lower bound). 0 with one candidate."""
        if len(ids) < 2:
            return 0.0
        if self.config.margin_mode == "top2":
            return float(scores[0] - scores[1])
        L = self.tiles.tile_size_m
        de = np.abs(self.tiles.easting_m[ids[1:]] - self.tiles.easting_m[ids[0]])
        dn = np.abs(self.tiles.northing_m[ids[1:]] - self.tiles.northing_m[ids[0]])
        apart = np.flatnonzero(np.maximum(de, dn) >= L - 1e-6)
        return float(scores[0] - (scores[1 + apart[0]] if apart.size else scores[-1]))

    def heading(self, ground: GroundView, pose: PoseMatch) -> Heading | None:
        if self._estimator is None:
            return None
        feats = self._aerial_features(pose.tile_id)
        cfg = self.config
        extra = ({"camera_height_m": cfg.camera_height_m}
                 if cfg.heading_method == "polar" and cfg.camera_height_m > 0 else {})
        h = self._estimator(ground.features, feats, offset_m=self.tile_offset_m(pose),
                            tile_size_m=self.tiles.tile_size_m, **extra)
        # the tile's axes are the UTM grid: the estimator's "ENU" yaw is a grid yaw here
        return Heading(float(h.yaw_enu_rad), float(h.variance_rad2))

    def _aerial_features(self, tile_id: int) -> np.ndarray:
        feats = self._aerial_cache.get(tile_id)
        if feats is None:
            _, out = self.engine.encode_aerial(preprocess_aerial(self.meta, self.tiles.image(tile_id)))
            feats = out[0]
            self._aerial_cache[tile_id] = feats
            if len(self._aerial_cache) > AERIAL_FEATURE_CACHE:
                self._aerial_cache.popitem(last=False)
        else:
            self._aerial_cache.move_to_end(tile_id)
        return feats
