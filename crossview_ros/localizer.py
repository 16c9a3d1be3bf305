"""The localization pipeline without ROS: (panorama, GNSS fix, stamp) -> Estimate.

One frame goes: decode (OpenCV) -> validate -> preprocess -> encode the panorama -> scope from the
fix (k-sigma radius, clamped, widened by elapsed time x max speed) -> exact top-k retrieval inside
the scope -> offset regression inside the best tile (or a score-weighted fusion of the top-k
candidates that agree with it) -> heading (optional) -> covariance -> gating -> Estimate.
A bev model replaces retrieval, offset and heading by one dense match over the scope; on a stream
it also keeps the last frame's posterior as a prior (a grid filter, `track`): the Localizer's only
state besides the last stamp, both cleared by reset().

Every frame ends in an Estimate with `accepted` and a `reason` (Reason). Bad input (image, fix,
stamps, a fix outside the coverage) never raises: the Estimate carries the reason, a message and
no position, and one throttled log line says what was wrong. Gating rejections (LOW_MARGIN,
MAHALANOBIS) keep the computed position for diagnostics and calibration: publish only estimates
with `accepted` True. Artefact problems (missing or corrupt engine, descriptors of another
model, an unusable calibration file) raise at construction, never at the first frame.

Covariance model (position, ENU, m^2; isotropic):

    sigma_m = max(sigma_min_m, sigma0_m * exp(margin_coef * margin + score_coef * score
                                             + spread_coef * ln(1 + spread_m) + offset_coef * offset_m))
    covariance = sigma_m^2 * I2

margin: the retrieval margin (cosine, see margin_mode); score: the top-1 cosine; spread_m: the
score-weighted RMS distance between the positions predicted from the candidates that agree with
the top-1 (overlapping tiles regress the same point: their disagreement is the offset head's
spread); offset_m: the distance of the estimate from the chosen tile's centre (near a tile's edge
another tile should have won). Log-linear, so calibrate() is a convex maximum-likelihood fit of a
2-D Gaussian, followed by one scale that puts the target quantile of the squared Mahalanobis
errors on the chi-square (2 dof) quantile: 95 % of d^2 below 5.99. Yaw variance =
max(yaw_variance_min_rad2, yaw_variance_scale * raw^yaw_variance_power), raw being the heading
estimator's variance, scaled so 95 % of the squared yaw errors over variance lie below 3.84
(chi-square, 1 dof). fix_sigma_scale says how much the GNSS receiver understates its sigma
(fit_fix_sigma_scale); every use of the fix's covariance (scope, the bev match's prior, the
Mahalanobis gate) takes it times that factor squared. The defaults are UNCALIBRATED guesses; run
calibrate() on a validation drive and save_covariance() the result beside the model
(covariance.json), which the Localizer then loads.

A Localizer is not thread-safe (it keeps the last stamp for the order check): one per thread.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import bev_match, geo
from crossview_ros.atomic import write_json_atomic
from crossview_ros.config import check_known_keys
from crossview_ros.engines import (
    ENGINE_KINDS, Engine, check_engine_against_tiles, create_engine, load_model_meta, preprocess_aerial,
    preprocess_ground,
)
from crossview_ros.index import ScopedSearch
from crossview_ros.tiles import TileSet

log = logging.getLogger(__name__)

COVARIANCE_FILE = "covariance.json"  # beside model.json in the model folder
COVARIANCE_FORMAT = "crossview_ros.covariance"
COVARIANCE_FORMAT_VERSION = 1
CHI2_2DOF_95 = 5.991464547107979  # chi-square quantile, 2 dof, 95 %: -2 ln(0.05)
CHI2_1DOF_95 = 3.841458820694124  # chi-square quantile, 1 dof, 95 %
MIN_SHAPE_SAMPLES = 200  # calibrate() fits the covariance model's shape, not only its scale, from this many
NAVSAT_STATUS_NO_FIX = -1  # sensor_msgs/NavSatStatus.STATUS_NO_FIX
NAVSAT_STATUS_RANGE = (-2, 2)  # STATUS_UNKNOWN (-2, newer ROS 2) .. STATUS_GBAS_FIX (2)
FUSION_MODES = ("best", "weighted")
MARGIN_MODES = ("top2", "distinct")
HEADING_METHODS = ("polar", "revisiting")
SEARCH_DEVICES = ("cpu", "cuda", "auto")
ARRAY_ENCODINGS = ("rgb8", "bgr8", "mono8")
MIN_PANORAMA_HEIGHT_PX = 8
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_AERIAL_FEATURE_CACHE = 16  # tiles whose aerial features (heading) stay cached: a drive revisits them


class LocalizerError(RuntimeError):
    """A Localizer that cannot start (configuration, calibration file, heading); says how to fix it."""


class Reason(str, enum.Enum):
    """Why an Estimate was (not) accepted; the node counts these in its diagnostics. str(r) = r.value."""

    OK = "OK"  # accepted: publish
    BAD_IMAGE = "BAD_IMAGE"  # wrong encoding, dtype or shape (width != 2 height), corrupt or truncated JPEG/PNG
    BAD_FIX = "BAD_FIX"  # NaN/inf/out-of-range latitude or longitude, bad covariance, status or fix stamp
    NO_FIX = "NO_FIX"  # NavSatStatus STATUS_NO_FIX
    BAD_STAMP = "BAD_STAMP"  # the panorama stamp is NaN, inf or negative
    STALE_STAMP = "STALE_STAMP"  # the fix is older (or newer) than fix_max_age_s from the panorama
    FUTURE_STAMP = "FUTURE_STAMP"  # panorama or fix stamp later than now + max_future_s
    OUT_OF_ORDER = "OUT_OF_ORDER"  # panorama stamp not after the previous frame's
    OUTSIDE_COVERAGE = "OUTSIDE_COVERAGE"  # no tile centre inside the scope around the fix
    LOW_MARGIN = "LOW_MARGIN"  # retrieval margin not above min_margin: the best tile is ambiguous
    MAHALANOBIS = "MAHALANOBIS"  # the estimate contradicts the GNSS prior (d^2 > max_mahalanobis)

    def __str__(self) -> str:
        return self.value


BAD_INPUT_REASONS = frozenset({Reason.BAD_IMAGE, Reason.BAD_FIX, Reason.NO_FIX, Reason.BAD_STAMP,
                               Reason.STALE_STAMP, Reason.FUTURE_STAMP, Reason.OUT_OF_ORDER,
                               Reason.OUTSIDE_COVERAGE})
GATE_REASONS = frozenset({Reason.LOW_MARGIN, Reason.MAHALANOBIS})


# --------------------------------------------------------------------------- configuration


@dataclass
class LocalizerConfig:
    """Everything the Localizer, the node, the CLI and the launch file set; one comment per field.

    The cov_* and yaw_variance_* values are UNCALIBRATED defaults: a covariance.json beside the
    model (calibrate() + save_covariance()) replaces them, see covariance_file.
    """

    tile_set: str = ""  # tile set folder (crossview-tiles build, then encode with this model); required
    model: str = ""  # exported model folder (crossview-export onnx); required
    engine: str = "auto"  # auto | onnxruntime | tensorrt (engines.create_engine; the log says which and why)
    engine_threads: int = 0  # ONNX Runtime intra-op threads, 0 = its default (one per core)
    search_device: str = "cpu"  # scoped search: cpu (numpy) | cuda | auto; ~100 rows per frame: cpu is enough
    scope_sigma_k: float = 3.0  # scope radius = k x the fix's horizontal sigma (largest axis), before clamping
    scope_min_m: float = 50.0  # scope radius floor, m (an over-confident fix still gets a neighbourhood)
    scope_max_m: float = 200.0  # scope radius cap before stale widening, m (VIGOR Table 8: 200 m)
    default_fix_sigma_m: float = 30.0  # horizontal 1-sigma assumed when the fix reports no covariance, m
    max_speed_mps: float = 15.0  # fastest platform speed: scope += |stamp - fix stamp| x this, m/s
    fix_max_age_s: float = 5.0  # |panorama stamp - fix stamp| above this: STALE_STAMP, s (a 1 Hz receiver may drop a few fixes)
    max_future_s: float = 0.5  # panorama or fix stamp later than now + this: FUTURE_STAMP, s
    top_k: int = 5  # candidates retrieved in the scope (fusion, spread and the margin use them)
    fusion: str = "best"  # best: the top-1 tile's offset | weighted: score-weighted mean of agreeing candidates
    fusion_temperature: float = 0.02  # softmax temperature on cosine scores for the weights (fusion, spread)
    fusion_radius_m: float = 20.0  # candidates whose position lies within this of the top-1's agree, m
    margin_mode: str = "top2"  # top2: top1 - top2 score | distinct: top1 - best tile not overlapping the top-1
    match_prior: bool = True  # bev models: the pose maximising model likelihood x GNSS prior (false: likelihood alone)
    track: bool = True  # bev models on a stream: the last frame's posterior, moved, is a prior too (a grid filter)
    track_speed_mps: float = 2.0  # 1-sigma speed of the track's random walk between frames, m/s (walk ~1.5, car ~10)
    track_max_gap_s: float = 10.0  # a frame more than this after the last matched one starts a new track, s
    track_uniform_weight: float = 0.05  # share of the moved belief spread evenly over its area (a wrong lock can go)
    track_likelihood_weight: float = 1.0  # exponent on each frame's model likelihood in a track (frames' errors correlate)
    min_margin: float = 0.0  # LOW_MARGIN unless margin > this (score units; bev: posterior); 0 rejects only ties
    max_mahalanobis: float = 13.8  # MAHALANOBIS when d^2 vs the GNSS prior exceeds this (chi2 2 dof: 13.8 = 99.9 %)
    heading: bool = False  # estimate yaw (needs tile images and crossview_ros.heading); adds one aerial encode
    heading_method: str = "polar"  # polar (DSM-style polar correlation) | revisiting (Zhu 2021 baseline)
    camera_height_m: float = 2.0  # camera above the ground, m: polar heading matches panorama rows to ground rings; 0 = pooled rows
    covariance_file: str = ""  # "" = <model>/covariance.json if present else the values below | "none" | a path
    cov_sigma0_m: float = 25.0  # sigma at margin = score = spread = offset = 0, m (uncalibrated)
    cov_margin_coef: float = -10.0  # d ln(sigma) / d margin (uncalibrated)
    cov_score_coef: float = 0.0  # d ln(sigma) / d score (uncalibrated)
    cov_spread_coef: float = 0.0  # d ln(sigma) / d ln(1 + spread_m) (uncalibrated)
    cov_offset_coef: float = 0.0  # d ln(sigma) / d offset_m, per metre (uncalibrated)
    cov_sigma_min_m: float = 1.0  # sigma floor, m (kept by calibrate)
    cov_fix_sigma_scale: float = 1.0  # the fix's covariance is scaled by this squared before any use (uncalibrated)
    yaw_variance_scale: float = 1.0  # yaw variance = scale x the heading's raw variance^power (uncalibrated)
    yaw_variance_power: float = 1.0  # the power on the raw variance (uncalibrated)
    yaw_variance_min_rad2: float = 1e-4  # yaw variance floor, rad^2 ((0.57 deg)^2)
    log_throttle_s: float = 5.0  # one log line per rejection reason per this many seconds

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the field, its value and the valid range."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"localizer config {name} = {getattr(self, name)!r}: {what}")

        def number(name: str) -> float:
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), name,
                 "must be a finite number")
            return float(v)

        for name in ("tile_set", "model", "covariance_file"):
            need(isinstance(getattr(self, name), (str, os.PathLike)), name, "must be a path string")
        need(self.engine in ENGINE_KINDS, "engine", f"must be one of {ENGINE_KINDS}")
        need(isinstance(self.engine_threads, int) and not isinstance(self.engine_threads, bool)
             and self.engine_threads >= 0, "engine_threads", "must be an integer >= 0")
        need(self.search_device in SEARCH_DEVICES or str(self.search_device).startswith("cuda:"),
             "search_device", f"must be one of {SEARCH_DEVICES} or cuda:N")
        need(number("scope_sigma_k") > 0, "scope_sigma_k", "must be > 0")
        need(number("scope_min_m") > 0, "scope_min_m", "must be > 0 m")
        need(number("scope_max_m") >= self.scope_min_m, "scope_max_m", "must be >= scope_min_m")
        need(number("default_fix_sigma_m") > 0, "default_fix_sigma_m", "must be > 0 m")
        need(number("max_speed_mps") >= 0, "max_speed_mps", "must be >= 0 m/s")
        need(number("fix_max_age_s") >= 0, "fix_max_age_s", "must be >= 0 s")
        need(number("max_future_s") >= 0, "max_future_s", "must be >= 0 s")
        need(isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 1, "top_k",
             "must be an integer >= 1")
        need(self.fusion in FUSION_MODES, "fusion", f"must be one of {FUSION_MODES}")
        need(number("fusion_temperature") > 0, "fusion_temperature", "must be > 0")
        need(number("fusion_radius_m") >= 0, "fusion_radius_m", "must be >= 0 m")
        need(self.margin_mode in MARGIN_MODES, "margin_mode", f"must be one of {MARGIN_MODES}")
        number("min_margin")
        need(number("max_mahalanobis") > 0, "max_mahalanobis", "must be > 0 (chi-square 2 dof, e.g. 13.8)")
        need(isinstance(self.heading, bool), "heading", "must be true or false")
        need(isinstance(self.match_prior, bool), "match_prior", "must be true or false")
        need(isinstance(self.track, bool), "track", "must be true or false")
        need(number("track_speed_mps") > 0, "track_speed_mps", "must be > 0 m/s")
        need(number("track_max_gap_s") > 0, "track_max_gap_s", "must be > 0 s")
        need(0 < number("track_uniform_weight") < 1, "track_uniform_weight", "must be in (0, 1)")
        need(0 < number("track_likelihood_weight") <= 1, "track_likelihood_weight", "must be in (0, 1]")
        need(self.heading_method in HEADING_METHODS, "heading_method", f"must be one of {HEADING_METHODS}")
        need(number("camera_height_m") >= 0, "camera_height_m", "must be >= 0 m (0 = pooled rows)")
        need(number("cov_sigma0_m") > 0, "cov_sigma0_m", "must be > 0 m")
        for name in ("cov_margin_coef", "cov_score_coef", "cov_spread_coef", "cov_offset_coef"):
            number(name)
        need(number("cov_sigma_min_m") > 0, "cov_sigma_min_m", "must be > 0 m")
        need(number("cov_fix_sigma_scale") > 0, "cov_fix_sigma_scale", "must be > 0")
        need(number("yaw_variance_scale") > 0, "yaw_variance_scale", "must be > 0")
        need(0 < number("yaw_variance_power") <= 4, "yaw_variance_power", "must be in (0, 4]")
        need(number("yaw_variance_min_rad2") > 0, "yaw_variance_min_rad2", "must be > 0 rad^2")
        need(number("log_throttle_s") >= 0, "log_throttle_s", "must be >= 0 s")

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


def scope_radius_m(sigma_horizontal_m: float, age_s: float, *, k: float, min_m: float, max_m: float,
                   max_speed_mps: float) -> float:
    """Search radius around the fix: clamp(k sigma, min, max) + |age| x max speed, metres.

    The clamp bounds what the receiver's own sigma can ask for; the widening covers how far the
    platform may have moved between the fix and the panorama, however confident the fix was.
    """
    return float(min(max(k * sigma_horizontal_m, min_m), max_m) + abs(age_s) * max_speed_mps)


# --------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class Fix:
    """A GNSS fix as sensor_msgs/NavSatFix carries it (without ROS types)."""

    lat_deg: float
    lon_deg: float
    stamp_s: float  # seconds, same clock as the panorama stamps
    status: int = 0  # NavSatStatus: -2 UNKNOWN, -1 NO_FIX, 0 FIX, 1 SBAS_FIX, 2 GBAS_FIX
    covariance_enu_m2: Any = None  # 2x2 (E, N) or 3x3 (E, N, U) m^2; None = not reported
    sigma_m: float | None = None  # horizontal 1-sigma per axis, m; used when covariance_enu_m2 is None

    @classmethod
    def from_navsat(cls, lat_deg: float, lon_deg: float, stamp_s: float, status: int,
                    position_covariance: Sequence[float], covariance_type: int) -> Fix:
        """From NavSatFix fields; COVARIANCE_TYPE_UNKNOWN (0) means no covariance (default sigma)."""
        cov = None
        if covariance_type != 0:
            cov = np.asarray(position_covariance, dtype=np.float64).reshape(3, 3)
        return cls(lat_deg, lon_deg, stamp_s, status, cov)


@dataclass(frozen=True)
class Truth:
    """Ground truth of one frame for calibrate(): position and, optionally, yaw (ENU)."""

    lat_deg: float
    lon_deg: float
    yaw_enu_rad: float | None = None


@dataclass(frozen=True)
class Latency:
    """Wall time of each stage of one frame, milliseconds (0 for stages not reached)."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    encode_ms: float = 0.0
    search_ms: float = 0.0  # scope query + scoped top-k
    offset_ms: float = 0.0  # offset head on the top-k, fusion, covariance, gating
    heading_ms: float = 0.0  # aerial features of the chosen tile (cached) + correlation
    total_ms: float = 0.0


@dataclass(frozen=True, eq=False)
class Estimate:
    """The corrected fix of one panorama (design.md's Estimate contract plus accepted/reason).

    Position fields are None for bad input; gated estimates (LOW_MARGIN, MAHALANOBIS) keep them
    for diagnostics. Publish only when `accepted`.
    """

    stamp_s: float
    accepted: bool
    reason: Reason
    message: str = ""  # why, in words (empty when accepted)
    lat_deg: float | None = None
    lon_deg: float | None = None
    utm_zone: str | None = None  # the tile set's zone, e.g. "18N"
    easting_m: float | None = None
    northing_m: float | None = None
    covariance_enu_m2: np.ndarray | None = None  # (2, 2) position covariance, ENU (E, N), m^2
    yaw_enu_rad: float | None = None  # camera forward (panorama column 0), ENU: 0 = east, CCW, (-pi, pi]
    yaw_variance_rad2: float | None = None
    yaw_variance_raw_rad2: float | None = None  # the heading estimator's own variance, before calibration
    score: float | None = None  # cosine of the chosen (top-1) tile
    margin: float | None = None  # retrieval margin (cosine), see LocalizerConfig.margin_mode
    tile_id: int | None = None  # the top-1 tile
    tiles_in_scope: int = 0
    scope_radius_m: float | None = None
    offset_m: tuple[float, float] | None = None  # (dE, dN) of the estimate from the tile centre, UTM grid, m
    spread_m: float | None = None  # weighted RMS distance of the agreeing candidates' positions, m
    mahalanobis_d2: float | None = None  # squared Mahalanobis distance to the GNSS prior
    latency: Latency = field(default_factory=Latency)

    @property
    def has_position(self) -> bool:
        return self.lat_deg is not None

    @property
    def sigma_m(self) -> float | None:
        """Horizontal 1-sigma (square root of the covariance's largest eigenvalue), m."""
        if self.covariance_enu_m2 is None:
            return None
        return float(math.sqrt(max(np.linalg.eigvalsh(self.covariance_enu_m2))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats, lists and strings only."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Latency):
                v = dataclasses.asdict(v)
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, Reason):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


# --------------------------------------------------------------------------- covariance


@dataclass(frozen=True)
class CovarianceModel:
    """Parameters of the covariance model (module docstring); `fit` holds calibrate()'s record."""

    sigma0_m: float
    margin_coef: float
    score_coef: float
    spread_coef: float
    offset_coef: float
    sigma_min_m: float
    yaw_variance_scale: float
    yaw_variance_min_rad2: float
    fix_sigma_scale: float = 1.0  # the GNSS receiver's honesty: its reported sigma times this is its real one
    yaw_variance_power: float = 1.0  # yaw variance = scale x raw^power
    calibrated: bool = False
    fit: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    PARAMS = ("sigma0_m", "margin_coef", "score_coef", "spread_coef", "offset_coef", "sigma_min_m",
              "yaw_variance_scale", "yaw_variance_min_rad2", "fix_sigma_scale", "yaw_variance_power")
    OPTIONAL = {"fix_sigma_scale": 1.0, "yaw_variance_power": 1.0}  # absent from older calibration files

    @classmethod
    def from_config(cls, config: LocalizerConfig) -> CovarianceModel:
        return cls(config.cov_sigma0_m, config.cov_margin_coef, config.cov_score_coef, config.cov_spread_coef,
                   config.cov_offset_coef, config.cov_sigma_min_m, config.yaw_variance_scale,
                   config.yaw_variance_min_rad2, fix_sigma_scale=config.cov_fix_sigma_scale,
                   yaw_variance_power=config.yaw_variance_power, calibrated=False)

    @staticmethod
    def features(margin: Any, score: Any, spread_m: Any, offset_m: Any) -> np.ndarray:
        """(..., 4) regressors: margin, score, ln(1 + spread_m), offset_m."""
        return np.stack(np.broadcast_arrays(
            np.asarray(margin, np.float64), np.asarray(score, np.float64),
            np.log1p(np.maximum(np.asarray(spread_m, np.float64), 0.0)), np.asarray(offset_m, np.float64)), axis=-1)

    @property
    def coefs(self) -> np.ndarray:
        return np.array([self.margin_coef, self.score_coef, self.spread_coef, self.offset_coef])

    def sigma_m(self, margin: Any, score: Any, spread_m: Any, offset_m: Any) -> Any:
        """Horizontal 1-sigma per axis, m (scalars in, float out; arrays broadcast)."""
        z = self.features(margin, score, spread_m, offset_m) @ self.coefs
        sigma = np.maximum(self.sigma_min_m, self.sigma0_m * np.exp(np.clip(z, -50.0, 50.0)))
        return float(sigma) if sigma.ndim == 0 else sigma

    def yaw_variance_rad2(self, raw_variance_rad2: Any) -> Any:
        raw = np.maximum(np.asarray(raw_variance_rad2, float), 1e-12)
        v = np.maximum(self.yaw_variance_min_rad2, self.yaw_variance_scale * raw ** self.yaw_variance_power)
        return float(v) if v.ndim == 0 else v

    def to_dict(self) -> dict[str, Any]:
        return {**{p: float(getattr(self, p)) for p in self.PARAMS}, "calibrated": bool(self.calibrated)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], fit: Mapping[str, Any] | None = None) -> CovarianceModel:
        missing = [p for p in cls.PARAMS if p not in values and p not in cls.OPTIONAL]
        unknown = sorted(set(values) - set(cls.PARAMS) - {"calibrated"})
        if missing or unknown:
            raise ValueError(f"covariance parameters: missing {missing}, unknown {unknown}; "
                             f"expected {list(cls.PARAMS)}")
        vals = {p: float(values.get(p, cls.OPTIONAL.get(p))) for p in cls.PARAMS}
        if not all(math.isfinite(v) for v in vals.values()) or min(
                vals["sigma0_m"], vals["sigma_min_m"], vals["yaw_variance_scale"], vals["yaw_variance_min_rad2"],
                vals["fix_sigma_scale"], vals["yaw_variance_power"]) <= 0:
            raise ValueError(f"covariance parameters must be finite, sigmas and yaw terms > 0: {vals}")
        return cls(**vals, calibrated=bool(values.get("calibrated", False)), fit=dict(fit or {}))


def fix_covariance_enu_m2(fix: Fix, default_sigma_m: float) -> np.ndarray:
    """The fix's horizontal covariance (2, 2), ENU m^2, as reported: its covariance, else its sigma,
    else default_sigma_m; ValueError saying what is wrong with a covariance or sigma."""
    if fix.covariance_enu_m2 is not None:
        try:
            c = np.asarray(fix.covariance_enu_m2, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("fix covariance is not numeric") from None
        if c.shape not in ((2, 2), (3, 3)):
            raise ValueError(f"fix covariance must be 2x2 or 3x3 (ENU, m^2), got shape {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError("fix covariance holds NaN or infinity")
        h = c[:2, :2]
        scale = max(float(np.abs(h).max()), 1e-12)
        asymmetric = abs(h[0, 1] - h[1, 0]) > 1e-6 * scale
        if asymmetric or float(np.linalg.eigvalsh(0.5 * (h + h.T)).min()) < -1e-9 * scale:
            raise ValueError(f"fix covariance is not symmetric positive semi-definite: {h.tolist()}")
        return 0.5 * (h + h.T)
    sigma = _finite(default_sigma_m if fix.sigma_m is None else fix.sigma_m)
    if sigma is None or sigma < 0:
        raise ValueError(f"fix sigma_m must be a finite number >= 0 m, got {fix.sigma_m!r}")
    return np.eye(2) * sigma ** 2


def _truth_of(t: Any) -> Truth:
    if isinstance(t, Truth):
        return t
    if hasattr(t, "lat_deg") and hasattr(t, "lon_deg"):
        return Truth(float(t.lat_deg), float(t.lon_deg), getattr(t, "yaw_enu_rad", None))
    vals = tuple(t)
    if len(vals) not in (2, 3):
        raise ValueError(f"a truth is Truth(lat_deg, lon_deg[, yaw_enu_rad]) or a 2/3-tuple, got {t!r}")
    return Truth(float(vals[0]), float(vals[1]), None if len(vals) == 2 or vals[2] is None else float(vals[2]))


def _solve_monotone(fn: Callable[[float], float], target: float, lo: float = -30.0, hi: float = 30.0) -> float:
    """x in [lo, hi] with fn(x) = target for a non-increasing fn (bisection; clamps at the ends)."""
    if fn(lo) <= target:
        return lo
    if fn(hi) >= target:
        return hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if fn(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


# Physical scale of each regressor (margin, score, ln(1 + spread_m), offset_m): the ridge penalty
# of the fit is on the change of ln(sigma) over one such step, so a regressor that barely varies
# in the validation set cannot buy a large coefficient.
_FEATURE_SCALES = np.array([0.1, 0.5, 1.0, 10.0])
_RIDGE = 2.0


def _fit_log_sigma(features: np.ndarray, r2: np.ndarray) -> tuple[float, np.ndarray]:
    """Maximum likelihood of isotropic 2-D Gaussian errors with ln sigma = a0 + features @ a.

    Negative log-likelihood per sample (constants dropped): 2 z + r^2 / 2 exp(-2 z), z = ln sigma:
    convex in (a0, a); plus a ridge penalty on the slopes in _FEATURE_SCALES units (a Gaussian
    prior of sd 1/sqrt(2 _RIDGE) on the change of ln sigma per physical step).
    """
    from scipy.optimize import minimize

    mu = features.mean(axis=0)
    design = np.column_stack([np.ones(len(r2)), (features - mu) / _FEATURE_SCALES])
    a_start = np.zeros(design.shape[1])
    a_start[0] = 0.5 * math.log(max(float(np.mean(r2)) / 2.0, 1e-12))

    def nll(a: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.clip(design @ a, -50.0, 50.0)
        w = r2 * np.exp(-2.0 * z)
        value = float(np.sum(2.0 * z + 0.5 * w) + _RIDGE * np.sum(a[1:] ** 2))
        grad = design.T @ (2.0 - w)
        grad[1:] += 2.0 * _RIDGE * a[1:]
        return value, grad

    a = minimize(nll, a_start, jac=True, method="L-BFGS-B").x
    slopes = a[1:] / _FEATURE_SCALES
    return float(a[0] - np.sum(slopes * mu)), slopes


def _fit_yaw_power(e2: np.ndarray, raw: np.ndarray) -> float:
    """p of ln var = c + p ln raw by maximum likelihood of 1-D Gaussian yaw errors, with a ridge
    pulling p towards 1 (raw variance taken at its word). A heading estimator's raw variance
    ranks frames better than it scales them: broad for the good ones, a flip's not broad enough."""
    from scipy.optimize import minimize

    x = np.log(raw)
    x = x - x.mean()

    def nll(a: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.clip(a[0] + a[1] * x, -50.0, 50.0)  # ln variance
        w = e2 * np.exp(-z)
        value = float(np.sum(z + w) + _RIDGE * (a[1] - 1.0) ** 2)
        g = 1.0 - w
        return value, np.array([np.sum(g), np.sum(g * x) + 2.0 * _RIDGE * (a[1] - 1.0)])

    a = minimize(nll, np.array([math.log(max(float(np.mean(e2)), 1e-12)), 1.0]), jac=True, method="L-BFGS-B",
                 bounds=[(None, None), (0.05, 4.0)]).x
    return float(a[1])


def fit_fix_sigma_scale(fixes: Sequence[Fix], truths: Sequence[Any], *, quantile: float = 0.95,
                        default_sigma_m: float = LocalizerConfig.default_fix_sigma_m, min_samples: int = 20) -> float:
    """The factor on the fixes' reported sigma that makes them honest on a validation drive.

    Urban receivers report too small a covariance (multipath, canyons). With the factor s, the
    `quantile` of the squared Mahalanobis errors e^T (s^2 C)^-1 e of the fixes against the truth
    equals the chi-square 2-dof quantile (5.99 at 95 %), as calibrate() does for our estimates:
    s = sqrt(quantile of e^T C^-1 e / 5.99). C: the fix's ENU covariance, or default_sigma_m^2 I.
    """
    from scipy.stats import chi2

    if len(fixes) != len(truths):
        raise ValueError(f"got {len(fixes)} fixes but {len(truths)} truths; pass one truth per fix")
    d2 = []
    for fix, truth in zip(fixes, truths):
        t = _truth_of(truth)
        if fix.status == NAVSAT_STATUS_NO_FIX or not all(map(math.isfinite, (fix.lat_deg, fix.lon_deg))):
            continue
        try:
            cov = fix_covariance_enu_m2(fix, default_sigma_m)
        except ValueError:
            continue  # the localizer refuses such a fix (BAD_FIX) too
        if np.linalg.eigvalsh(cov).min() <= 0:
            continue
        e = np.array(geo.offset_enu_m(t.lat_deg, t.lon_deg, fix.lat_deg, fix.lon_deg))
        d2.append(float(e @ np.linalg.solve(cov, e)))
    if len(d2) < min_samples:
        raise ValueError(f"fitting the fix sigma scale needs at least {min_samples} fixes with a position and a "
                         f"positive covariance, got {len(d2)}")
    return float(math.sqrt(float(np.quantile(d2, quantile)) / float(chi2.ppf(quantile, 2))))


def calibrate(estimates: Sequence[Estimate], truths: Sequence[Any], *, start: CovarianceModel | None = None,
              fit_shape: bool | None = None, quantile: float = 0.95,
              reasons: Sequence[Reason | str] = (Reason.OK, Reason.MAHALANOBIS),
              min_samples: int = 20) -> CovarianceModel:
    """Fit the covariance model on a validation set so that d^2 follows chi-square (2 dof).

    estimates[i] pairs with truths[i] (Truth, or (lat, lon[, yaw_enu_rad])). Used: estimates with
    a position whose reason is in `reasons`; by default the ones that passed the margin gate,
    including those the Mahalanobis gate (which depends on the covariance being fitted) refused.
    Position: with fit_shape the log-linear coefficients by maximum likelihood, else only sigma0
    with start's shape (None: the shape too from MIN_SHAPE_SAMPLES samples on); then sigma0 is
    scaled so that the `quantile` of d^2 over the set equals the chi-square 2-dof quantile (5.99
    at 95 %), which keeps the share right when the errors are heavier-tailed than a Gaussian.
    Yaw (where estimates and truths have it): with fit_shape, yaw_variance_power by maximum
    likelihood (_fit_yaw_power), then yaw_variance_scale so that the same quantile of e^2 / var
    equals the 1-dof quantile (3.84 at 95 %). sigma_min_m, yaw_variance_min_rad2 and
    fix_sigma_scale (fit_fix_sigma_scale, before the drive is localized: it shapes the estimates)
    are kept from `start` (default: the uncalibrated defaults).
    """
    from scipy.stats import chi2

    if len(estimates) != len(truths):
        raise ValueError(f"got {len(estimates)} estimates but {len(truths)} truths; pass one truth per estimate")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    start = start or CovarianceModel.from_config(LocalizerConfig())
    wanted = {str(r) for r in reasons}
    feats, r2, yaw_err2, yaw_raw = [], [], [], []
    for est, truth in zip(estimates, truths):
        if not est.has_position or str(est.reason) not in wanted:
            continue
        t = _truth_of(truth)
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, est.lat_deg, est.lon_deg)
        r2.append(de * de + dn * dn)
        feats.append([est.margin, est.score, est.spread_m or 0.0, math.hypot(*(est.offset_m or (0.0, 0.0)))])
        if est.yaw_enu_rad is not None and est.yaw_variance_raw_rad2 is not None and t.yaw_enu_rad is not None:
            yaw_err2.append(float(geo.wrap_angle_rad(est.yaw_enu_rad - t.yaw_enu_rad)) ** 2)
            yaw_raw.append(est.yaw_variance_raw_rad2)
    if len(r2) < min_samples:
        raise ValueError(f"calibrate needs at least {min_samples} estimates with a position and reason in "
                         f"{sorted(wanted)}, got {len(r2)}; evaluate a longer validation drive")
    f = CovarianceModel.features(*np.asarray(feats, np.float64).T)
    r2a = np.asarray(r2, np.float64)
    if fit_shape is None:
        fit_shape = len(r2) >= MIN_SHAPE_SAMPLES
    if fit_shape:
        log_sigma0, coefs = _fit_log_sigma(f, r2a)
    else:
        shape = f @ start.coefs
        log_sigma0 = 0.5 * math.log(max(float(np.mean(r2a * np.exp(-2.0 * shape))) / 2.0, 1e-12))
        coefs = start.coefs
    base = np.exp(np.clip(log_sigma0 + f @ coefs, -50.0, 50.0))
    q2 = float(chi2.ppf(quantile, 2))

    def q_pos(log_s: float) -> float:
        sigma = np.maximum(start.sigma_min_m, math.exp(log_s) * base)
        return float(np.quantile(r2a / sigma ** 2, quantile))

    log_scale = _solve_monotone(q_pos, q2)
    sigma = np.maximum(start.sigma_min_m, math.exp(log_scale) * base)
    d2 = r2a / sigma ** 2
    fit: dict[str, Any] = {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "samples": len(r2), "quantile": quantile, "fit_shape": fit_shape,
        "chi2_2dof_quantile": q2, "share_d2_below_chi2": float(np.mean(d2 <= q2)),
        "median_error_m": float(np.median(np.sqrt(r2a))), "median_sigma_m": float(np.median(sigma)),
    }
    yaw_scale, yaw_power = start.yaw_variance_scale, start.yaw_variance_power
    if len(yaw_err2) >= min_samples:
        q1 = float(chi2.ppf(quantile, 1))
        e2, raw = np.asarray(yaw_err2), np.maximum(np.asarray(yaw_raw), 1e-12)
        if fit_shape:
            yaw_power = _fit_yaw_power(e2, raw)
        shaped = raw ** yaw_power

        def q_yaw(log_c: float) -> float:
            return float(np.quantile(e2 / np.maximum(start.yaw_variance_min_rad2, math.exp(log_c) * shaped),
                                     quantile))

        yaw_scale = math.exp(_solve_monotone(q_yaw, q1))
        var = np.maximum(start.yaw_variance_min_rad2, yaw_scale * shaped)
        fit.update({"yaw_samples": len(yaw_err2), "chi2_1dof_quantile": q1,
                    "yaw_share_below_chi2": float(np.mean(e2 / var <= q1))})
    else:
        fit["yaw_samples"] = len(yaw_err2)
    return CovarianceModel(
        sigma0_m=float(math.exp(log_sigma0 + log_scale)), margin_coef=float(coefs[0]), score_coef=float(coefs[1]),
        spread_coef=float(coefs[2]), offset_coef=float(coefs[3]), sigma_min_m=start.sigma_min_m,
        yaw_variance_scale=float(yaw_scale), yaw_variance_min_rad2=start.yaw_variance_min_rad2,
        fix_sigma_scale=start.fix_sigma_scale, yaw_variance_power=float(yaw_power), calibrated=True, fit=fit)


def save_covariance(model: CovarianceModel, path: str | os.PathLike, model_hash: str) -> Path:
    """Write the parameters as JSON, atomically; `path` is a model folder (-> covariance.json) or a file."""
    path = Path(path)
    if path.is_dir():
        path = path / COVARIANCE_FILE
    doc = {"format": COVARIANCE_FORMAT, "format_version": COVARIANCE_FORMAT_VERSION, "model_hash": model_hash,
           "params": model.to_dict(), "fit": dict(model.fit)}
    return write_json_atomic(path, doc)


def load_covariance(path: str | os.PathLike, model_hash: str | None = None) -> CovarianceModel:
    """Read a covariance.json; LocalizerError when unreadable or made for another model."""
    path = Path(path)
    fix = "recalibrate with `crossview-localize ... --calibrate` (or calibrate() + save_covariance())"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LocalizerError(f"cannot read covariance calibration {path} ({exc}); {fix}") from exc
    if not isinstance(doc, dict) or doc.get("format") != COVARIANCE_FORMAT:
        raise LocalizerError(f"{path} is not a covariance calibration (format is not {COVARIANCE_FORMAT!r}); {fix}")
    if doc.get("format_version") != COVARIANCE_FORMAT_VERSION:
        raise LocalizerError(f"{path} is format_version {doc.get('format_version')!r}, this crossview_ros reads "
                             f"{COVARIANCE_FORMAT_VERSION}; {fix}")
    if model_hash is not None and doc.get("model_hash") != model_hash:
        raise LocalizerError(f"{path} calibrates model {doc.get('model_hash')!r}, the engine runs model "
                             f"{model_hash!r}; {fix}, or point covariance_file elsewhere")
    try:
        return CovarianceModel.from_dict(doc.get("params") or {}, doc.get("fit"))
    except (ValueError, TypeError) as exc:
        raise LocalizerError(f"{path}: {exc}; {fix}") from exc


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _Track:
    """The grid filter's state between frames: the last posterior and what it already holds."""

    stamp_s: float  # the frame it was computed for
    fix_stamp_s: float  # the newest GNSS fix multiplied into it
    belief: bev_match.Belief


class _Reject(Exception):
    """A frame that ends with a reason (internal control flow of localize)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_panorama(panorama: Any, encoding: str | None = None) -> np.ndarray:
    """Panorama -> (H, W, 3) RGB uint8 with W == 2 H; ValueError saying what is wrong.

    panorama: an (H, W, 3) rgb8/bgr8 or (H, W[, 1]) mono8 uint8 array with `encoding`
    (sensor_msgs/Image encodings), or JPEG/PNG bytes (sensor_msgs/CompressedImage data; the
    format is recognised from the bytes, `encoding` may be None or the message's format string).
    A JPEG without its end marker or a PNG without IEND is refused as truncated: OpenCV would
    decode it into a partly grey image without complaint.
    """
    import cv2

    if isinstance(panorama, np.ndarray) and not (panorama.ndim == 1 and panorama.dtype == np.uint8
                                                 and encoding not in ARRAY_ENCODINGS):
        if encoding not in ARRAY_ENCODINGS:
            raise ValueError(f"an array panorama needs encoding one of {ARRAY_ENCODINGS}, got {encoding!r}")
        if panorama.dtype != np.uint8:
            raise ValueError(f"{encoding} panorama must be uint8, got {panorama.dtype}")
        a = panorama
        if encoding == "mono8":
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            if a.ndim != 2:
                raise ValueError(f"mono8 panorama must be (H, W) or (H, W, 1), got shape {panorama.shape}")
            rgb = np.repeat(a[:, :, None], 3, axis=2)
        else:
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"{encoding} panorama must be (H, W, 3), got shape {panorama.shape}")
            rgb = a[:, :, ::-1] if encoding == "bgr8" else a
    else:
        try:
            data = bytes(memoryview(panorama).cast("B"))
        except TypeError:
            raise ValueError(f"panorama must be a uint8 array or JPEG/PNG bytes, got "
                             f"{type(panorama).__name__}") from None
        body = data.rstrip(b"\x00")  # some drivers pad compressed frames with zeros
        if body.startswith(_JPEG_SOI):
            if not body.endswith(_JPEG_EOI):
                raise ValueError(f"JPEG panorama is truncated (no end-of-image marker after {len(data)} bytes)")
        elif body.startswith(_PNG_SIGNATURE):
            if not body.endswith(_PNG_IEND):
                raise ValueError(f"PNG panorama is truncated (no IEND chunk after {len(data)} bytes)")
        else:
            raise ValueError(f"compressed panorama is neither JPEG nor PNG ({len(data)} bytes, starts with "
                             f"{data[:4].hex() or 'nothing'})")
        try:
            bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:
            raise ValueError(f"compressed panorama cannot be decoded ({exc})") from None
        if bgr is None:
            raise ValueError(f"compressed panorama is corrupt: OpenCV cannot decode its {len(data)} bytes")
        rgb = bgr[:, :, ::-1]
    h, w = rgb.shape[:2]
    if w != 2 * h or h < MIN_PANORAMA_HEIGHT_PX:
        raise ValueError(f"panorama must be equirectangular, width == 2 x height >= {2 * MIN_PANORAMA_HEIGHT_PX} "
                         f"px, got {w} x {h} px")
    return np.ascontiguousarray(rgb)


# --------------------------------------------------------------------------- heading adapter


def _heading_function(method: str) -> Callable[..., Any]:
    """The heading estimator (crossview_ros.heading), imported at construction when heading is on."""
    from crossview_ros import heading

    return heading.polar_correlation_heading if method == "polar" else heading.revisiting_heading


# --------------------------------------------------------------------------- the pipeline


def engine_options(config: LocalizerConfig) -> dict[str, Any]:
    """create_engine options from the config (threads only where ONNX Runtime may run)."""
    return {"threads": config.engine_threads} if config.engine_threads and config.engine != "tensorrt" else {}


def _finite(value: Any) -> float | None:
    """float(value) when it is a finite real number (numpy scalars too), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


class _Throttle:
    """At most one log line per key per period; counts the lines it swallowed in between."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._skipped[key] += 1
            return
        skipped = self._skipped.pop(key, 0)
        self._last[key] = now
        if skipped:
            msg += f" ({skipped} more since the last such message)"
        log.log(level, msg, *args)


class Localizer:
    """(panorama, fix, stamp) -> Estimate, with everything loaded and checked at construction."""

    def __init__(self, config: LocalizerConfig, *, engine: Engine | None = None) -> None:
        """Open the tile set, create the engine (or take `engine`), check that the model made the
        tile set's descriptors, build the scoped search and load the covariance calibration.

        Raises TileSetError, EngineError or LocalizerError naming the problem and the fix.
        """
        config.validate()
        self.config = config
        if not str(config.tile_set):
            raise LocalizerError("config tile_set is empty; pass the tile set folder (crossview-tiles build + encode)")
        if engine is None and not str(config.model):
            raise LocalizerError("config model is empty; pass the exported model folder (crossview-export onnx)")
        self.tiles = TileSet.open(config.tile_set)
        own_engine = engine is None
        if engine is None:
            engine = create_engine(config.model, config.engine, **engine_options(config))
        self.engine = engine
        self._owns_engine = own_engine
        try:
            self.meta = engine.meta
            self.model_dir = Path(config.model) if str(config.model) else Path(self.meta.path)
            if not own_engine and str(config.model):
                given = load_model_meta(config.model, verify=False).model_hash
                if given != self.meta.model_hash:
                    raise LocalizerError(f"the engine runs model {self.meta.model_hash} but config model "
                                         f"{config.model} is {given}; pass the engine of that model or leave "
                                         "config model empty")
            check_engine_against_tiles(engine, self.tiles)
            self.search = ScopedSearch(self.tiles.descriptors, device=config.search_device)
            self.covariance = self._load_covariance()
            bev = self.meta.matching == "bev"
            if bev and abs(float(self.meta.bev["cell_m"]) * int(self.meta.bev["block_cells"]) * 2
                           - self.tiles.tile_size_m) > 1e-3 * self.tiles.tile_size_m:
                raise LocalizerError(f"model {self.meta.name} matches {2 * self.meta.bev['block_cells']} cells of "
                                     f"{self.meta.bev['cell_m']:.4f} m per tile but the tile set's tiles are "
                                     f"{self.tiles.tile_size_m:g} m; cut the tiles at the model's size")
            # a bev model finds the bearing with the position: no separate heading step
            self._heading = self._setup_heading() if config.heading and not bev else None
        except BaseException:
            self.close()
            raise
        self.counts: Counter[Reason] = Counter()  # frames per reason since construction (diagnostics)
        self._last_stamp_s: float | None = None
        self._track: _Track | None = None  # the last bev match's posterior
        self._throttle = _Throttle(config.log_throttle_s)
        self._aerial_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        log.info("localizer ready: %d tiles of %s (zone %s, %g m), model %s on %s, covariance %s", len(self.tiles),
                 self.tiles.path, self.tiles.zone, self.tiles.tile_size_m, self.meta.model_hash, engine.name,
                 "calibrated" if self.covariance.calibrated else "UNCALIBRATED (defaults; run --calibrate)")

    # ----------------------------------------------------------------- set-up

    def _load_covariance(self) -> CovarianceModel:
        choice = str(self.config.covariance_file)
        if choice.lower() == "none":
            return CovarianceModel.from_config(self.config)
        if choice:
            path = Path(choice)
            if path.is_dir():
                path = path / COVARIANCE_FILE
            if not path.is_file():
                raise LocalizerError(f"covariance_file {choice} does not exist; calibrate first, or set it to '' "
                                     "(use <model>/covariance.json when present) or 'none' (uncalibrated defaults)")
        else:
            path = self.model_dir / COVARIANCE_FILE
            if not path.is_file():
                return CovarianceModel.from_config(self.config)
        model = load_covariance(path, self.meta.model_hash)
        log.info("covariance calibration %s loaded", path)
        return model

    def _setup_heading(self) -> Callable[..., Any]:
        if self.tiles.image_format is None:
            raise LocalizerError(f"heading needs tile images but {self.tiles.path} has none; build the tile set "
                                 "with images or set heading false")
        cg, ca = self.meta.ground_features[0], self.meta.aerial_features[0]
        if cg != ca:
            raise LocalizerError(f"heading correlates ground and aerial features channel by channel, but model "
                                 f"{self.meta.name} has {cg} and {ca} channels; use a model whose feature maps match "
                                 "or set heading false")
        try:
            return _heading_function(self.config.heading_method)
        except ImportError as exc:
            raise LocalizerError(f"heading is on but crossview_ros.heading cannot be imported ({exc}); "
                                 "reinstall crossview_ros or set heading false") from exc

    def close(self) -> None:
        """Release the engine when this Localizer created it."""
        if getattr(self, "_owns_engine", False) and getattr(self, "engine", None) is not None:
            self.engine.close()
            self._owns_engine = False

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the last stamp and the track (call after a time jump backwards, e.g. a bag restarting,
        and between panoramas that are not a stream)."""
        self._last_stamp_s = None
        self._track = None

    # ----------------------------------------------------------------- the frame

    def scope_radius_m(self, sigma_horizontal_m: float, age_s: float) -> float:
        c = self.config
        return scope_radius_m(sigma_horizontal_m, age_s, k=c.scope_sigma_k, min_m=c.scope_min_m,
                              max_m=c.scope_max_m, max_speed_mps=c.max_speed_mps)

    def localize(self, panorama: Any, fix: Fix, stamp_s: float, *, encoding: str | None = None,
                 now_s: float | None = None) -> Estimate:
        """Localize one panorama; never raises on bad input (see Reason).

        panorama: uint8 array with encoding rgb8 | bgr8 | mono8, or JPEG/PNG bytes (decode_panorama).
        fix: the latest GNSS fix; stamp_s: the panorama's stamp (s); now_s: the current time on the
        same clock (default time.time(); the node passes its clock, which follows /clock in replay).
        Engine failures (a bug or a broken GPU, not bad input) do raise.
        """
        t_start = time.perf_counter()
        times: dict[str, float] = {}
        context: dict[str, Any] = {}
        try:
            return self._run(panorama, fix, stamp_s, encoding, time.time() if now_s is None else now_s,
                             times, context, t_start)
        except _Reject as rej:
            stamp = _finite(stamp_s)
            stamp = float("nan") if stamp is None else stamp
            return self._finish(Estimate(stamp_s=stamp, accepted=False, reason=rej.reason, message=rej.message,
                                         **context, latency=self._latency(times, t_start)))

    def _run(self, panorama: Any, fix: Fix, stamp_s: Any, encoding: str | None, now_s: float,
             times: dict[str, float], context: dict[str, Any], t_start: float) -> Estimate:
        cfg = self.config
        stamp = self._check_stamp(stamp_s, now_s)
        fix_cov = self._check_fix(fix) * self.covariance.fix_sigma_scale ** 2
        if fix.stamp_s > now_s + cfg.max_future_s:
            raise _Reject(Reason.FUTURE_STAMP, f"fix stamp {fix.stamp_s:.3f} s is {fix.stamp_s - now_s:.3f} s in "
                                               f"the future (more than max_future_s {cfg.max_future_s:g} s)")
        age_s = stamp - fix.stamp_s
        if abs(age_s) > cfg.fix_max_age_s:
            raise _Reject(Reason.STALE_STAMP, f"fix is {abs(age_s):.3f} s {'older' if age_s > 0 else 'newer'} than "
                                              f"the panorama (more than fix_max_age_s {cfg.fix_max_age_s:g} s)")

        t = time.perf_counter()
        try:
            rgb = decode_panorama(panorama, encoding)
        except ValueError as exc:
            raise _Reject(Reason.BAD_IMAGE, str(exc)) from None
        times["decode_ms"] = time.perf_counter() - t

        t = time.perf_counter()
        sigma_fix_m = float(math.sqrt(max(float(np.linalg.eigvalsh(fix_cov).max()), 0.0)))
        radius_m = self.scope_radius_m(sigma_fix_m, age_s)
        context["scope_radius_m"] = radius_m
        try:
            e_fix, n_fix, _ = geo.latlon_to_utm(float(fix.lat_deg), float(fix.lon_deg), zone=self.tiles.zone)
        except geo.GeoError as exc:
            raise _Reject(Reason.OUTSIDE_COVERAGE, f"fix ({fix.lat_deg:.7f}, {fix.lon_deg:.7f}) cannot be placed "
                                                   f"in the tile set's zone {self.tiles.zone}: {exc}") from None
        scope = self.tiles.tiles_within_utm(e_fix, n_fix, radius_m)
        if scope.size == 0:
            raise _Reject(Reason.OUTSIDE_COVERAGE, f"no tile within {radius_m:.0f} m of the fix "
                                                   f"({fix.lat_deg:.7f}, {fix.lon_deg:.7f})")
        context["tiles_in_scope"] = int(scope.size)
        search_s = time.perf_counter() - t

        t = time.perf_counter()
        x = preprocess_ground(self.meta, rgb)
        times["preprocess_ms"] = time.perf_counter() - t
        t = time.perf_counter()
        ground_desc, ground_feats = self.engine.encode_ground(x)
        times["encode_ms"] = time.perf_counter() - t

        if self.meta.matching == "bev":
            return self._run_bev(ground_feats, scope, fix, fix_cov, (float(e_fix), float(n_fix)), age_s, stamp, times,
                                 context, t_start, search_s)

        t = time.perf_counter()
        result = self.search.search(ground_desc[0], scope, cfg.top_k)
        times["search_ms"] = search_s + time.perf_counter() - t
        ids, scores = result.ids, result.scores.astype(np.float64)

        t = time.perf_counter()
        L = self.tiles.tile_size_m
        tile_desc = np.asarray(self.tiles.descriptors[ids], dtype=np.float32)
        offsets = self.engine.offset(np.repeat(ground_desc[:1], len(ids), axis=0), tile_desc).astype(np.float64)
        # The camera lies inside every tile that a correct retrieval returns (positive or
        # semi-positive), so an offset beyond half a tile is the head extrapolating: clip it.
        offsets = np.clip(offsets, -0.5, 0.5)
        centres = np.column_stack([self.tiles.easting_m[ids], self.tiles.northing_m[ids]])
        positions = centres + offsets * L
        agree = np.hypot(*(positions - positions[0]).T) <= cfg.fusion_radius_m
        weights = np.where(agree, np.exp((scores - scores[0]) / cfg.fusion_temperature), 0.0)
        weights /= weights.sum()
        est = weights @ positions if cfg.fusion == "weighted" else positions[0]
        spread_m = float(math.sqrt(weights @ np.sum((positions - est) ** 2, axis=1)))
        offset_m = (float(est[0] - centres[0, 0]), float(est[1] - centres[0, 1]))
        margin = self._margin(ids, scores)
        lat, lon = geo.utm_to_latlon(float(est[0]), float(est[1]), self.tiles.zone)
        cov, d2, from_fix_m = self._covariance_and_d2(fix, fix_cov, age_s, lat, lon, margin, float(scores[0]),
                                                      spread_m, offset_m)
        times["offset_ms"] = time.perf_counter() - t
        context.update(lat_deg=float(lat), lon_deg=float(lon), utm_zone=str(self.tiles.zone),
                       easting_m=float(est[0]), northing_m=float(est[1]), covariance_enu_m2=cov,
                       score=float(scores[0]), margin=margin, tile_id=int(ids[0]), offset_m=offset_m,
                       spread_m=spread_m, mahalanobis_d2=d2)

        if self._heading is not None:
            t = time.perf_counter()
            context.update(self._estimate_heading(ground_feats[0], int(ids[0]), offset_m, lat, lon))
            times["heading_ms"] = time.perf_counter() - t

        self._gate(margin, d2, from_fix_m, f"top-1 tile {int(ids[0])}, score {scores[0]:.4f}")
        return self._finish(Estimate(stamp_s=stamp, accepted=True, reason=Reason.OK, **context,
                                     latency=self._latency(times, t_start)))

    def _run_bev(self, ground_feats: np.ndarray, scope: np.ndarray, fix: Fix, fix_cov: np.ndarray,
                 fix_utm: tuple[float, float], age_s: float, stamp: float, times: dict[str, float],
                 context: dict[str, Any], t_start: float, search_s: float) -> Estimate:
        """Position and bearing from a top-down correlation model (crossview_ros.bev_match)."""
        cfg = self.config
        t = time.perf_counter()
        bev = self.meta.bev
        ids = np.sort(scope)  # increasing rows: one sequential read of the memory-mapped descriptors
        smap = bev_match.scope_map(self.tiles.descriptors[ids], ids, self.tiles.easting_m[ids],
                                   self.tiles.northing_m[ids], channels=self.meta.ground_features[0],
                                   block_cells=int(bev["block_cells"]), cell_m=float(bev["cell_m"]))
        track = None
        if cfg.track and self._track is not None and 0 < stamp - self._track.stamp_s <= cfg.track_max_gap_s:
            belief = self._track.belief
            track = belief.predict(max(cfg.track_speed_mps * (stamp - self._track.stamp_s), belief.spacing_m),
                                   cfg.track_uniform_weight)
        prior = None
        # a fix already in the track's belief is not multiplied in again (its error would count twice)
        if cfg.match_prior and (track is None or fix.stamp_s != self._track.fix_stamp_s):
            # floored at one cell: a fix that claims zero variance still leaves the model its cell
            cov_grid = geo.enu_cov_to_utm(self._prior_cov(fix_cov, age_s), float(fix.lat_deg), float(fix.lon_deg),
                                          self.tiles.zone) + np.eye(2) * float(bev["cell_m"]) ** 2
            prior = bev_match.Prior(*fix_utm, cov_grid)
        m = bev_match.match_scope(self.engine, ground_feats[:1], smap, exclusion_m=cfg.fusion_radius_m,
                                  top_k=cfg.top_k, prior=prior, track=track,
                                  likelihood_weight=cfg.track_likelihood_weight if cfg.track else 1.0)
        if cfg.track and m.belief is not None:
            self._track = _Track(stamp, float(fix.stamp_s), m.belief)
        times["search_ms"] = search_s + time.perf_counter() - t
        t = time.perf_counter()
        east, north = m.easting_m, m.northing_m
        offset_m = (east - float(self.tiles.easting_m[m.tile_id]), north - float(self.tiles.northing_m[m.tile_id]))
        lat, lon = geo.utm_to_latlon(east, north, self.tiles.zone)
        cov, d2, from_fix_m = self._covariance_and_d2(fix, fix_cov, age_s, lat, lon, m.margin, m.score, m.spread_m,
                                                      offset_m)
        times["offset_ms"] = time.perf_counter() - t
        context.update(lat_deg=float(lat), lon_deg=float(lon), utm_zone=str(self.tiles.zone), easting_m=east,
                       northing_m=north, covariance_enu_m2=cov, score=m.score, margin=m.margin, tile_id=m.tile_id,
                       offset_m=offset_m, spread_m=m.spread_m, mahalanobis_d2=d2)
        if cfg.heading:
            yaw_grid = math.pi / 2 - m.bearing_rad  # bearing clockwise from grid north -> CCW from grid east
            yaw = float(geo.wrap_angle_rad(geo.yaw_utm_to_enu(yaw_grid, lat, lon, self.tiles.zone)))
            context.update(yaw_enu_rad=yaw, yaw_variance_raw_rad2=m.bearing_variance_rad2,
                           yaw_variance_rad2=float(self.covariance.yaw_variance_rad2(m.bearing_variance_rad2)))
        self._gate(m.margin, d2, from_fix_m, f"tile {m.tile_id}, score {m.score:.4f}")
        return self._finish(Estimate(stamp_s=stamp, accepted=True, reason=Reason.OK, **context,
                                     latency=self._latency(times, t_start)))

    def _covariance_and_d2(self, fix: Fix, fix_cov: np.ndarray, age_s: float, lat: float, lon: float,
                           margin: float, score: float, spread_m: float, offset_m: tuple[float, float]
                           ) -> tuple[np.ndarray, float, float]:
        """The estimate's 2x2 ENU covariance (CovarianceModel), its squared Mahalanobis distance to the
        GNSS prior (the fix's covariance widened by age x max speed) and its distance from the fix, m."""
        sigma = self.covariance.sigma_m(margin, score, spread_m, math.hypot(*offset_m))
        cov = np.eye(2) * sigma * sigma
        de, dn = geo.offset_enu_m(float(fix.lat_deg), float(fix.lon_deg), lat, lon)
        innovation = np.array([de, dn])
        return (cov, float(innovation @ np.linalg.solve(cov + self._prior_cov(fix_cov, age_s), innovation)),
                math.hypot(de, dn))

    def _prior_cov(self, fix_cov: np.ndarray, age_s: float) -> np.ndarray:
        """The GNSS prior at the panorama's stamp, ENU m^2: the fix's covariance (already scaled by
        fix_sigma_scale) widened by how far the platform may have moved since the fix."""
        return fix_cov + np.eye(2) * (age_s * self.config.max_speed_mps) ** 2

    def _gate(self, margin: float, d2: float, distance_m: float, detail: str) -> None:
        """LOW_MARGIN, then MAHALANOBIS against the GNSS prior; both keep the estimate in the Estimate."""
        cfg = self.config
        if not margin > cfg.min_margin:
            raise _Reject(Reason.LOW_MARGIN, f"margin {margin:.4f} is not above min_margin {cfg.min_margin:g} "
                                             f"({detail})")
        if d2 > cfg.max_mahalanobis:
            raise _Reject(Reason.MAHALANOBIS, f"estimate is {distance_m:.1f} m from the fix, squared Mahalanobis "
                                              f"distance {d2:.1f} > max_mahalanobis {cfg.max_mahalanobis:g}")

    def _check_stamp(self, stamp_s: Any, now_s: float) -> float:
        stamp = _finite(stamp_s)
        if stamp is None or stamp < 0.0:
            raise _Reject(Reason.BAD_STAMP, f"panorama stamp {stamp_s!r} is not a finite time >= 0 s")
        if stamp > now_s + self.config.max_future_s:
            raise _Reject(Reason.FUTURE_STAMP, f"panorama stamp {stamp:.3f} s is {stamp - now_s:.3f} s in the "
                                               f"future (more than max_future_s {self.config.max_future_s:g} s)")
        if self._last_stamp_s is not None and stamp <= self._last_stamp_s:
            raise _Reject(Reason.OUT_OF_ORDER, f"panorama stamp {stamp:.3f} s is not after the previous frame's "
                                               f"{self._last_stamp_s:.3f} s")
        self._last_stamp_s = stamp
        return stamp

    def _check_fix(self, fix: Any) -> np.ndarray:
        """The fix's horizontal covariance (2, 2) ENU m^2, or _Reject (NO_FIX, BAD_FIX)."""
        if not isinstance(fix, Fix):
            raise _Reject(Reason.BAD_FIX, f"fix must be a localizer.Fix, got {type(fix).__name__}")
        status = fix.status
        if isinstance(status, bool) or not isinstance(status, (int, np.integer)):
            raise _Reject(Reason.BAD_FIX, f"fix status must be an integer (NavSatStatus), got {status!r}")
        if status == NAVSAT_STATUS_NO_FIX:
            raise _Reject(Reason.NO_FIX, "GNSS reports STATUS_NO_FIX")
        if not NAVSAT_STATUS_RANGE[0] <= status <= NAVSAT_STATUS_RANGE[1]:
            raise _Reject(Reason.BAD_FIX, f"fix status {status} is not a NavSatStatus value "
                                          f"({NAVSAT_STATUS_RANGE[0]}..{NAVSAT_STATUS_RANGE[1]})")
        try:
            geo.check_latlon(float(fix.lat_deg), float(fix.lon_deg))
        except (geo.GeoError, TypeError, ValueError) as exc:
            raise _Reject(Reason.BAD_FIX, f"fix position is invalid: {exc}") from None
        if _finite(fix.stamp_s) is None:
            raise _Reject(Reason.BAD_FIX, f"fix stamp must be a finite number of seconds, got {fix.stamp_s!r}")
        try:
            return fix_covariance_enu_m2(fix, self.config.default_fix_sigma_m)
        except ValueError as exc:
            raise _Reject(Reason.BAD_FIX, str(exc)) from None

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

    def _estimate_heading(self, ground_feats: np.ndarray, tile_id: int, offset_m: tuple[float, float],
                          lat: float, lon: float) -> dict[str, Any]:
        feats = self._aerial_cache.get(tile_id)
        if feats is None:
            _, out = self.engine.encode_aerial(preprocess_aerial(self.meta, self.tiles.image(tile_id)))
            feats = out[0]
            self._aerial_cache[tile_id] = feats
            if len(self._aerial_cache) > _AERIAL_FEATURE_CACHE:
                self._aerial_cache.popitem(last=False)
        else:
            self._aerial_cache.move_to_end(tile_id)
        try:
            extra = ({"camera_height_m": self.config.camera_height_m}
                     if self.config.heading_method == "polar" and self.config.camera_height_m > 0 else {})
            h = self._heading(ground_feats, feats, offset_m=offset_m, tile_size_m=self.tiles.tile_size_m, **extra)
        except ValueError as exc:
            self._throttle(logging.WARNING, "heading", "heading failed, estimate without yaw: %s", exc)
            return {}
        yaw = float(geo.yaw_utm_to_enu(h.yaw_enu_rad, lat, lon, self.tiles.zone))  # tile axes are the UTM grid
        raw = float(h.variance_rad2)
        return {"yaw_enu_rad": yaw, "yaw_variance_raw_rad2": raw,
                "yaw_variance_rad2": float(self.covariance.yaw_variance_rad2(raw))}

    @staticmethod
    def _latency(times: dict[str, float], t_start: float) -> Latency:
        return Latency(**{k: 1000.0 * v for k, v in times.items()},
                       total_ms=1000.0 * (time.perf_counter() - t_start))

    def _finish(self, estimate: Estimate) -> Estimate:
        self.counts[estimate.reason] += 1
        if estimate.reason in BAD_INPUT_REASONS:
            self._throttle(logging.WARNING, str(estimate.reason), "frame %.3f rejected, %s: %s", estimate.stamp_s,
                           estimate.reason, estimate.message)
        elif estimate.reason in GATE_REASONS:
            self._throttle(logging.INFO, str(estimate.reason), "frame %.3f gated, %s: %s", estimate.stamp_s,
                           estimate.reason, estimate.message)
        return estimate
