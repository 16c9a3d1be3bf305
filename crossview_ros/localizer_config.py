"""LocalizerConfig: the one schema of the localizer's settings.

Each field carries its default, unit, one-line description, section and valid range
(`param(...)` metadata). validate() checks values against that range, the node declares its
ROS parameters from it (nodes/parameters.py), and config/localize.yaml is generated from it:
a default, a unit or a range is written once, here.

Ranges: validate() refuses values outside [lo, hi] (lo_open / hi_open exclude a bound: > 0, < 1);
the ROS parameter descriptor announces the closed [lo, hi] where both bounds are finite (a
descriptor cannot say "open"), no range otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossview_ros.config import check_known_keys
from crossview_ros.engines.base import ENGINE_KINDS
from crossview_ros.panorama import DEFAULT_MAX_PIXELS

FUSION_MODES = ("best", "weighted")
MARGIN_MODES = ("top2", "distinct")
HEADING_METHODS = ("polar", "revisiting")
SEARCH_DEVICES = ("cpu", "cuda", "auto")

SECTIONS: dict[str, str] = {
    "artefacts": "Artefacts, loaded once at start-up (tile set and model must match: same model hash).",
    "scope": "Search scope around the GNSS fix: radius = clamp(k x sigma, min, max) + age x max speed.",
    "stamps": "Pairing of panorama and fix stamps; bad stamps are counted in /diagnostics, never published.",
    "input": "Input checks: what a panorama may be before it is decoded.",
    "retrieval": "Matching inside the scope: descriptor retrieval and offset fusion, or the bev match and its track.",
    "gating": "Gating: a frame is published only when it passes both gates.",
    "heading": "Heading (yaw) from the panorama against the chosen tile.",
    "covariance": "Covariance model (UNCALIBRATED defaults: calibrate on a validation drive, see docs/reference.md).",
    "node": "Node: frames, output conventions, diagnostics and logging.",
}


@dataclass(frozen=True)
class ParamDoc:
    """What a user reads about a setting, and the range validate() enforces."""

    unit: str  # "m", "s", "1" (dimensionless), "path", "bool", ... ("" for a choice)
    description: str
    section: str  # key of SECTIONS
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()

    @property
    def range(self) -> tuple[float, float] | None:
        """The closed [lo, hi] a ROS parameter descriptor announces; None when unbounded."""
        if self.lo is None or self.hi is None:
            return None
        return self.lo, self.hi

    def describe_range(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo}, {hi}{right}"

    def contains(self, value: float) -> bool:
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))


def param(default: Any, unit: str, section: str, description: str, **limits: Any) -> Any:
    """A dataclass field with its ParamDoc as metadata."""
    return dataclasses.field(default=default, metadata={"doc": ParamDoc(unit, description, section, **limits)})


def param_doc(name: str) -> ParamDoc:
    return _DOCS[name]


@dataclass
class LocalizerConfig:
    """Everything the Localizer, the node, the CLI and the launch file set.

    The cov_* and yaw_variance_* values are UNCALIBRATED defaults: a covariance.json beside the
    model (calibrate() + save_covariance()) replaces them, see covariance_file. Settings that only
    one matcher family reads are listed in each matcher's `settings` (crossview_ros.matchers).
    """

    tile_set: str = param("", "path", "artefacts",
                          "tile set folder (crossview-tiles build, then encode with this model); required")
    model: str = param("", "path", "artefacts",
                       "exported model folder (crossview-export onnx) that encoded the tile set; required")
    engine: str = param("auto", "", "artefacts", "encoder runtime; auto: TensorRT where a GPU and TensorRT are "
                        "present, else ONNX Runtime", choices=ENGINE_KINDS)
    engine_threads: int = param(0, "1", "artefacts", "ONNX Runtime intra-op threads, 0 = its default (one per core)",
                                lo=0, hi=256)
    search_device: str = param("cpu", "", "artefacts", "where the scoped search runs (or cuda:N); ~100 rows per "
                               "frame: cpu is enough", choices=SEARCH_DEVICES)
    scope_sigma_k: float = param(3.0, "1", "scope", "search radius = k x the fix's horizontal sigma (largest axis), "
                                 "before clamping", lo=0.0, hi=100.0, lo_open=True)
    scope_min_m: float = param(50.0, "m", "scope", "smallest search radius, whatever the fix claims",
                               lo=0.0, hi=1.0e5, lo_open=True)
    scope_max_m: float = param(200.0, "m", "scope", "largest search radius before stale widening (VIGOR's "
                               "noisy-GPS protocol: 200 m)", lo=0.0, hi=1.0e5)
    default_fix_sigma_m: float = param(30.0, "m", "scope", "horizontal 1-sigma assumed when the fix reports no "
                                       "covariance", lo=0.0, hi=1.0e5, lo_open=True)
    max_speed_mps: float = param(15.0, "m/s", "scope", "fastest platform speed: the radius grows by |panorama - "
                                 "fix stamp| x this", lo=0.0, hi=1000.0)
    fix_max_age_s: float = param(5.0, "s", "stamps", "|panorama stamp - fix stamp| above this rejects the frame "
                                 "(STALE_STAMP)", lo=0.0, hi=3600.0)
    fix_max_age_odometry_s: float = param(30.0, "s", "stamps", "with odometry aligned to the grid, a fix older than "
                                          "the panorama is carried to it by odometry's displacement (a GNSS dropout); "
                                          "up to this age (0: never carried)", lo=0.0, hi=3600.0)
    max_future_s: float = param(0.5, "s", "stamps", "panorama or fix stamps later than now + this are rejected "
                                "(FUTURE_STAMP)", lo=0.0, hi=3600.0)
    max_panorama_pixels: int = param(DEFAULT_MAX_PIXELS, "px", "input", "largest panorama (width x height) decoded; "
                                     "larger ones are refused from their header (BAD_IMAGE)", lo=1, hi=2 ** 31 - 1)
    top_k: int = param(5, "1", "retrieval", "candidate tiles retrieved in the scope (fusion, spread and margin use "
                       "them)", lo=1, hi=10000)
    fusion: str = param("best", "", "retrieval", "best: the top-1 tile's offset; weighted: score-weighted mean of "
                        "agreeing ones", choices=FUSION_MODES)
    fusion_temperature: float = param(0.02, "1", "retrieval", "softmax temperature on cosine scores for the fusion "
                                      "and spread weights", lo=0.0, lo_open=True)
    fusion_radius_m: float = param(20.0, "m", "retrieval", "candidates whose position lies within this of the "
                                   "top-1's agree with it (bev: the margin's exclusion radius)", lo=0.0, hi=1.0e4)
    margin_mode: str = param("top2", "", "retrieval", "top2: top-1 minus top-2 score; distinct: minus the best "
                             "non-overlapping tile", choices=MARGIN_MODES)
    match_prior: bool = param(True, "bool", "retrieval", "bev models: pick the pose maximising model likelihood x "
                              "GNSS prior (false: the likelihood alone)")
    track: bool = param(True, "bool", "retrieval", "bev models on a stream: the last frame's posterior, moved, is a "
                        "prior too (a grid filter; false: every frame alone)")
    track_speed_mps: float = param(2.0, "m/s", "retrieval", "1-sigma speed of the track's random walk between frames "
                                   "(walk ~1.5, car ~10)", lo=0.0, hi=100.0, lo_open=True)
    track_max_gap_s: float = param(10.0, "s", "retrieval", "a frame more than this after the last matched one starts "
                                   "a new track", lo=0.0, hi=3600.0, lo_open=True)
    track_uniform_weight: float = param(0.05, "1", "retrieval", "share of the moved belief spread evenly over its "
                                        "area, so a wrong lock can go", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    track_likelihood_weight: float = param(1.0, "1", "retrieval", "exponent on each frame's model likelihood in a "
                                           "track (consecutive views repeat their errors; 1: independent frames)",
                                           lo=0.0, hi=1.0, lo_open=True)
    odometry: bool = param(True, "bool", "retrieval", "bev track: move the belief by the odometry's displacement "
                           "and its covariance between frames when odometry arrives (false: the random walk)")
    odom_max_age_s: float = param(0.5, "s", "retrieval", "odometry newer than a frame by more than this, or older, "
                                  "is not interpolated: the track falls back to the random walk", lo=0.0, hi=60.0,
                                  lo_open=True)
    odom_yaw_uniform_weight: float = param(0.1, "1", "retrieval", "bev track with odometry: share of the bearing "
                                           "prior (odometry's yaw on the grid) spread evenly, so a clear view can "
                                           "overrule it", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    min_mode_mass: float = param(0.8, "1", "gating", "gate: publish only when at least this share of the posterior "
                                 "lies within mode_radius_m of the estimate (AMBIGUOUS; 0 = off)", lo=0.0, hi=1.0)
    mode_radius_m: float = param(10.0, "m", "gating", "radius around the estimate that counts as its mode for "
                                 "min_mode_mass and the published covariance", lo=0.0, hi=1.0e4, lo_open=True)
    imagery_window: int = param(10, "frames", "gating", "the last this many matched frames judge whether the "
                                "imagery matches (MISMATCH)", lo=1, hi=10000)
    min_imagery_support: float = param(0.2, "1", "gating", "gate: publish only when at least this share of the last "
                                       "imagery_window views, alone, point within mode_radius_m of their estimate "
                                       "(MISMATCH: wrong or outdated tiles; 0 = off)", lo=0.0, hi=1.0)
    min_imagery_score: float = param(-1.0, "score", "gating", "gate: publish only when the mean over the last "
                                     "imagery_window matched views of their score (bev: over their median score in "
                                     "the scope) is at least this (MISMATCH: imagery of another place scores low); "
                                     "-1 = the calibrated floor (covariance.json imagery_score_floor; off until "
                                     "calibrated), 0 = off", lo=-1.0, hi=1.0)
    imagery_trust_support: float = param(1.0, "1", "gating", "below 1, the imagery floor (min_imagery_score) "
                                         "spares windows where at least this share of the views point at their "
                                         "estimate by themselves (more fixes, but a track locked on a look-alike "
                                         "is spared too); 1 = every window is judged", lo=0.0, hi=1.0, lo_open=True)
    imagery_track_s: float = param(60.0, "s", "gating", "with odometry aligned to the grid: a view the MISMATCH or "
                                   "AMBIGUOUS gate refuses is still published, no sharper than the anchor, when it "
                                   "lies within imagery_track_radius_m of the anchor (an estimate that passed the gates "
                                   "unaided, the sharper of the carried one and each new pass) carried by odometry, at "
                                   "most this long after it (a view that does not stand out from its scope, where the "
                                   "track says the platform is; 0 = off)", lo=0.0, hi=3600.0)
    imagery_track_radius_m: float = param(5.0, "m", "gating", "how far from where odometry carries the anchor "
                                          "(imagery_track_s) a view the MISMATCH or AMBIGUOUS gate refuses may lie and "
                                          "still be published", lo=0.0, hi=1.0e4, lo_open=True)
    min_prior_inside: float = param(0.5, "1", "gating", "gate: refuse a frame whose fix has less than this share of "
                                    "its uncertainty on the tiles (OUTSIDE_COVERAGE: the tiles cannot correct it)",
                                    lo=0.0, hi=1.0)
    min_margin: float = param(0.0, "1", "gating", "gate: publish only when the margin (score units; bev: posterior) "
                              "is above this (LOW_MARGIN)")
    max_mahalanobis: float = param(13.8, "1", "gating", "gate: refuse a squared Mahalanobis distance to the fix "
                                   "above this (MAHALANOBIS; chi2 2 dof 99.9 %)", lo=0.0, hi=1.0e12, lo_open=True)
    first_fix_mahalanobis_share: float = param(0.3, "1", "gating", "gate: a stream's first fix (none published in "
                                               "the last imagery_track_s) is refused (MAHALANOBIS) when the last "
                                               "imagery_window matched views' mean squared Mahalanobis distance to "
                                               "their fixes is above this share of max_mahalanobis: with no track to "
                                               "carry, the views must agree with the GNSS over a while, not in one "
                                               "frame (0 = off)", lo=0.0, hi=1.0)
    fix_overrule_s: float = param(30.0, "s", "gating", "with odometry aligned to the grid: an estimate the fix "
                                  "contradicts (MAHALANOBIS) is still published when it lies within max_mahalanobis of "
                                  "the last estimate the fix agreed with, carried by odometry, at most this long after "
                                  "it (a multipath excursion of the fix; 0 = off)", lo=0.0, hi=3600.0)
    motion_check_s: float = param(3.0, "s", "gating", "with odometry aligned to the grid: refuse an estimate that "
                                  "is not where odometry carries the newest one published at least this long (and at "
                                  "most twice this) before (MOTION; a look-alike holding the estimate while the "
                                  "platform moves; 0 = off)", lo=0.0, hi=600.0)
    max_motion_mahalanobis: float = param(5.99, "1", "gating", "the MOTION gate's limit on the squared Mahalanobis "
                                          "distance between the two, their covariances and odometry's variance "
                                          "summed (chi2 2 dof 95 %)", lo=0.0, hi=1.0e12, lo_open=True)
    heading: bool = param(False, "bool", "heading", "estimate yaw and publish crossview/heading (needs tile images; "
                          "one aerial encode)")
    heading_method: str = param("polar", "", "heading", "polar: DSM-style polar correlation; revisiting: Zhu 2021 "
                                "baseline", choices=HEADING_METHODS)
    camera_height_m: float = param(2.0, "m", "input", "the 360° camera above the ground: a bev model sees its ground "
                                   "moved to its own camera height (model.json); the retrieval polar heading's row "
                                   "bands; 0 = as it is (bev), pooled rows (polar)", lo=0.0, hi=100.0)
    yaw_max_flip_mass: float = param(0.1, "1", "heading", "publish no yaw when the bearings more than 90 deg from the "
                                     "best one hold more than this share of the heading's probability", lo=0.0, hi=1.0)
    covariance_file: str = param("", "path", "covariance", "'' = <model>/covariance.json if present, 'none' = the "
                                 "cov_* values below, or a calibration file")
    cov_sigma0_m: float = param(25.0, "m", "covariance", "1-sigma at margin = score = spread = offset = 0 "
                                "(uncalibrated default)", lo=0.0, hi=1.0e5, lo_open=True)
    cov_margin_coef: float = param(-10.0, "1", "covariance", "d ln(sigma) / d margin (uncalibrated default)")
    cov_score_coef: float = param(0.0, "1", "covariance", "d ln(sigma) / d score (uncalibrated default)")
    cov_spread_coef: float = param(0.0, "1", "covariance", "d ln(sigma) / d ln(1 + spread_m) (uncalibrated default)")
    cov_offset_coef: float = param(0.0, "1/m", "covariance", "d ln(sigma) / d offset from the tile centre "
                                   "(uncalibrated default)")
    cov_mode_coef: float = param(0.0, "1", "covariance", "d ln(sigma) / d (1 - mode_mass) (uncalibrated default)")
    cov_view_coef: float = param(0.0, "1", "covariance", "d ln(sigma) / d ln(1 + the view's own distance from the "
                                 "estimate, m) (uncalibrated default)")
    cov_motion_coef: float = param(0.0, "1", "covariance", "1-sigma added in quadrature per metre the estimates over "
                                   "the last motion_check_s strayed from odometry's motion (uncalibrated default)")
    cov_sigma_min_m: float = param(0.3, "m", "covariance", "1-sigma floor of the position covariance (calibration "
                                   "fits above it; at 1 m it held a bev model's 0.4 m fixes too cautious)",
                                   lo=0.0, hi=1.0e5, lo_open=True)
    cov_fix_sigma_scale: float = param(1.0, "1", "covariance", "the fix's reported sigma x this is used (scope, "
                                       "match prior, gate); urban receivers are optimistic (uncalibrated default)",
                                       lo=0.0, hi=1.0e3, lo_open=True)
    yaw_variance_scale: float = param(1.0, "rad^(2-2p)", "covariance", "yaw variance = this x the heading "
                                      "estimator's raw variance^power (uncalibrated)", lo=0.0, hi=1.0e6, lo_open=True)
    yaw_variance_power: float = param(1.0, "1", "covariance", "the power p on the raw yaw variance (uncalibrated; "
                                      "1 = proportional)", lo=0.0, hi=4.0, lo_open=True)
    yaw_variance_min_rad2: float = param(1e-4, "rad^2", "covariance", "yaw variance floor",
                                         lo=0.0, hi=10.0, lo_open=True)
    protection_risk: float = param(0.01, "1", "covariance", "the protection level is the radius the true error "
                                   "exceeds on at most this share of published fixes; the posterior's mass beyond "
                                   "mode_radius_m enters the covariance from this share on", lo=0.0, hi=0.5, lo_open=True)
    imagery_mismatch_prior: float = param(0.5, "1", "covariance", "P(the tiles do not show the views' place) at a "
                                          "stream's start, then filtered by each window's imagery statistic and "
                                          "support (calibrated likelihoods; off until calibrated): the published "
                                          "covariance adds "
                                          "P x (the fix's covariance + the estimate's offset from the fix, squared); "
                                          "0 = off", lo=0.0, hi=1.0, hi_open=True)
    imagery_mismatch_floor: float = param(1e-5, "1", "covariance", "that probability never falls below this, nor rises "
                                          "above 1 - this (tiles that matched may stop matching)",
                                          lo=0.0, hi=0.5, lo_open=True)
    log_throttle_s: float = param(5.0, "s", "node", "at most one log line per rejection reason per this many "
                                  "seconds", lo=0.0, hi=3600.0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the field, its value and what is allowed (from each field's ParamDoc)."""
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name), f.default, _DOCS[f.name])
        if self.scope_max_m < self.scope_min_m:
            raise ValueError(f"localizer config scope_max_m = {self.scope_max_m!r}: must be >= scope_min_m "
                             f"({self.scope_min_m!r})")

    @property
    def odometry_look_back_s(self) -> float:
        """The longest a check carries an estimate by odometry: imagery_track_s, fix_overrule_s, or the MOTION
        window (twice motion_check_s); the odometry buffer keeps at least this much."""
        return max(self.imagery_track_s, self.fix_overrule_s, 2.0 * self.motion_check_s)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = os.fspath(value) if isinstance(value, os.PathLike) else value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LocalizerConfig:
        """Strict: unknown keys raise ValueError naming the valid ones."""
        check_known_keys(cls, values, what="localizer config")
        return cls(**values)


_DOCS: dict[str, ParamDoc] = {f.name: f.metadata["doc"] for f in dataclasses.fields(LocalizerConfig)}


def _check_field(name: str, value: Any, default: Any, doc: ParamDoc) -> None:
    def bad(what: str) -> ValueError:
        return ValueError(f"localizer config {name} = {value!r}: {what}")

    if doc.unit == "path":
        if not isinstance(value, (str, os.PathLike)):
            raise bad("must be a path string")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("must be true or false")
    elif doc.choices:
        cuda_n = name == "search_device" and isinstance(value, str) and value.startswith("cuda:")
        if value not in doc.choices and not cuda_n:
            raise bad(f"must be one of {doc.choices}" + (" or cuda:N" if name == "search_device" else ""))
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or not doc.contains(value):
            raise bad(f"must be an integer in {doc.describe_range()}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("must be a finite number")
        if not doc.contains(value):
            unit = "" if doc.unit in ("1", "") else f" {doc.unit}"
            raise bad(f"must be in {doc.describe_range()}{unit}")


def engine_options(config: LocalizerConfig) -> dict[str, Any]:
    """create_engine options from the config (threads only where ONNX Runtime may run)."""
    return {"threads": config.engine_threads} if config.engine_threads and config.engine != "tensorrt" else {}
