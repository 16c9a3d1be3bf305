"""The matcher interface: what the localizer asks of a model family, whatever the family.

A matcher turns one panorama and the tiles of a GNSS scope into a metric pose on the tile set's
UTM grid, in four steps the localizer times separately:

    encode_ground(x)               -> GroundView   the panorama through the ground encoder
    score_scope(ground, scope)     -> candidates   which places of the scope look like it
    refine_pose(ground, candidates)-> PoseMatch    where exactly, with score, margin and spread
    heading(ground, pose)          -> Heading      which way the camera faces (None: no estimate)

Families register under model.json's matching kind; create_matcher picks one from the model.
Each family names the LocalizerConfig settings only it reads (`settings`): the localizer logs,
once at start-up, the ones set away from their defaults that the loaded model ignores.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from crossview_ros.engines.base import Engine
from crossview_ros.index import DescriptorError, check_descriptors
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.model_meta import EngineError, ModelMeta
from crossview_ros.odometry import GridOdometry
from crossview_ros.tiles import TileSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroundView:
    """One panorama through the ground encoder."""

    descriptor: np.ndarray  # (D,) global descriptor (a bev model: its flattened ground features)
    features: np.ndarray  # (C, h, w) feature map


@dataclass(frozen=True)
class Scope:
    """The tiles a fix allows and the GNSS prior over them, on the tile set's UTM grid."""

    tile_ids: np.ndarray  # rows of the tile set within the search radius
    fix_easting_m: float
    fix_northing_m: float
    prior_covariance_m2: np.ndarray  # (2, 2) grid axes: the fix's covariance (scaled) widened by its age
    stamp_s: float  # the panorama's stamp
    fix_stamp_s: float
    odometry: GridOdometry | None = None  # the motion between frames for a track (None: no odometry in use)


@dataclass(frozen=True)
class PoseMatch:
    """The camera's position in the scope, with what the covariance model and the gates read."""

    easting_m: float
    northing_m: float
    tile_id: int  # the chosen tile (its centre is the reference of offset_m)
    score: float  # similarity of the chosen place (cosine)
    margin: float  # score units: how far the chosen place stands above the best distinct one
    spread_m: float  # RMS distance of the places the model also believes in, m
    mode_mass: float | None = None  # posterior mass within mode_radius_m of the pose (None: the family has none)
    far_covariance_m2: np.ndarray | None = None  # (2, 2) grid: the posterior's second moment beyond mode_radius_m
    view_distance_m: float | None = None  # from the pose to the place the view alone prefers (None: not measured)
    prior_inside: float | None = None  # share of the GNSS prior on the scope's tiles (None: not measured)
    scope_median_score: float | None = None  # the view's median score over the scope (None: not measured)


@dataclass(frozen=True)
class Heading:
    """Camera forward (panorama column 0) on the tile set's grid: 0 = grid east, counter-clockwise."""

    yaw_grid_rad: float
    variance_raw_rad2: float  # the estimator's own variance, before calibration
    flip_mass: float = 0.0  # probability of the bearings more than 90 deg from this one (a flipped view)
    evidence_yaw_grid_rad: float | None = None  # the view's own yaw, before any odometry prior (None: the same)


class Matcher(abc.ABC):
    """One model family's way from a panorama and a scope to a pose (module docstring)."""

    kind: ClassVar[str]  # model.json's matching kind
    settings: ClassVar[frozenset[str]] = frozenset()  # LocalizerConfig fields only this family reads
    heading_is_free: ClassVar[bool] = False  # the heading comes with the pose (no extra encode): always asked for
    partial_views: ClassVar[bool] = False  # takes a panorama only part of which cameras see (encode_ground visibility)
    scope_level: ClassVar[bool] = False  # its PoseMatch carries scope_median_score (the imagery floor's reference)

    def __init__(self, engine: Engine, tiles: TileSet, config: LocalizerConfig) -> None:
        self.engine = engine
        self.meta: ModelMeta = engine.meta
        self.tiles = tiles
        self.config = config

    def encode_ground(self, x: np.ndarray, visibility: np.ndarray | None = None) -> GroundView:
        """x (1, 3, Hg, Wg) float32 from crossview_ros.preprocess -> the panorama's GroundView.

        visibility: (Hg, Wg) bool, which pixels some camera sees (None: all); only a family with
        partial_views takes a partial one."""
        if visibility is not None and not self.partial_views and not np.all(visibility):
            raise ValueError(f"a {self.kind} model needs a whole panorama")
        descriptor, features = self.engine.encode_ground(x)
        return GroundView(descriptor[0], features[0])

    @abc.abstractmethod
    def score_scope(self, ground: GroundView, scope: Scope) -> Any:
        """Candidates of the scope for refine_pose (a family's own type)."""

    @abc.abstractmethod
    def refine_pose(self, ground: GroundView, candidates: Any) -> PoseMatch:
        """The pose from score_scope's candidates."""

    def heading(self, ground: GroundView, pose: PoseMatch) -> Heading | None:
        """The camera's heading at the pose; ValueError when the estimator fails on this frame."""
        return None

    def reset(self) -> None:
        """Forget state carried between frames (a stream's track)."""

    def tile_offset_m(self, pose: PoseMatch) -> tuple[float, float]:
        """(dE, dN) of the pose from its tile's centre, grid metres."""
        return (pose.easting_m - float(self.tiles.easting_m[pose.tile_id]),
                pose.northing_m - float(self.tiles.northing_m[pose.tile_id]))


MATCHERS: dict[str, type[Matcher]] = {}


def register(cls: type[Matcher]) -> type[Matcher]:
    """Class decorator: the family serves models whose model.json says matching kind `cls.kind`."""
    MATCHERS[cls.kind] = cls
    return cls


def create_matcher(engine: Engine, tiles: TileSet, config: LocalizerConfig) -> Matcher:
    """The matcher of the engine's model family; logs once the settings that family ignores."""
    kind = engine.meta.matching
    if kind not in MATCHERS:
        raise EngineError(f"model {engine.meta.name} has matching kind {kind!r}; this crossview_ros runs "
                          f"{sorted(MATCHERS)}")
    cls = MATCHERS[kind]
    ignored = unused_settings(cls, config)
    if ignored:
        log.warning("model %s is a %s model: it ignores %s (set away from their defaults)", engine.meta.name, kind,
                    ", ".join(f"{k}={getattr(config, k)!r}" for k in ignored))
    return cls(engine, tiles, config)


def unused_settings(cls: type[Matcher], config: LocalizerConfig) -> list[str]:
    """Fields of `config` that another family reads, cls does not, and that differ from their default."""
    others = set().union(*(m.settings for m in MATCHERS.values() if m is not cls)) - cls.settings
    return [f.name for f in dataclasses.fields(config)
            if f.name in others and getattr(config, f.name) != f.default]


def check_engine_against_tiles(engine_or_meta: Engine | ModelMeta, tile_set: TileSet | str | os.PathLike) -> None:
    """Refuse (EngineError) a tile set whose descriptors this model did not make, or that has none.

    Cosine between descriptors of different models is meaningless: a mismatch would silently
    pick wrong tiles, so it stops the start-up instead. A different tile size only warns (the
    model may have been trained at another L; retrieval degrades, it does not break).
    """
    meta = getattr(engine_or_meta, "meta", engine_or_meta)
    if not isinstance(meta, ModelMeta):
        raise TypeError(f"expected an Engine or a ModelMeta, got {type(engine_or_meta).__name__}")
    if not isinstance(tile_set, TileSet):
        tile_set = TileSet.open(tile_set)
    fix = f"run `crossview-tiles encode {tile_set.path} --model {meta.path}`"
    if tile_set.descriptors is None:
        raise EngineError(f"tile set {tile_set.path} has no descriptors; {fix}")
    try:
        check_descriptors(tile_set, meta.model_hash, meta.descriptor_dim)
    except DescriptorError as exc:
        raise EngineError(f"{exc} ({fix} --overwrite to replace them)") from exc
    if meta.tile_size_m is not None and abs(meta.tile_size_m - tile_set.tile_size_m) > 1e-6 * meta.tile_size_m:
        log.warning("model %s was exported for %g m tiles, tile set %s has %g m tiles: retrieval and offsets "
                    "degrade; encode a tile set cut at the model's tile size", meta.name, meta.tile_size_m,
                    tile_set.path, tile_set.tile_size_m)
