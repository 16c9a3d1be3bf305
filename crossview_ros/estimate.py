"""The localizer's data contracts: what goes in (Fix, a panorama's stamp), what comes out (Estimate,
Reason, Latency), and the truth that calibration and evaluation compare against.

Plain dataclasses without ROS types: the node converts messages to and from them (nodes/convert.py).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NAVSAT_STATUS_UNKNOWN = -2  # sensor_msgs/NavSatStatus.STATUS_UNKNOWN (newer ROS 2): no fix to use either
NAVSAT_STATUS_NO_FIX = -1  # sensor_msgs/NavSatStatus.STATUS_NO_FIX
NAVSAT_STATUS_RANGE = (-2, 2)  # STATUS_UNKNOWN (-2) .. STATUS_GBAS_FIX (2)
NAVSAT_COVARIANCE_TYPES = (0, 1, 2, 3)  # NavSatFix COVARIANCE_TYPE_UNKNOWN, APPROXIMATED, DIAGONAL_KNOWN, KNOWN


class LocalizerError(RuntimeError):
    """A Localizer that cannot start (configuration, calibration file, heading); says how to fix it."""


class Reason(str, enum.Enum):
    """Why an Estimate was (not) accepted; the node counts these in its diagnostics. str(r) = r.value."""

    OK = "OK"  # accepted: publish
    BAD_IMAGE = "BAD_IMAGE"  # wrong encoding, dtype or shape (width != 2 height), corrupt or truncated JPEG/PNG
    BAD_CAMERA = "BAD_CAMERA"  # no or a bad CameraInfo (zero focal length, unknown model), image size not its CameraInfo's
    BAD_FIX = "BAD_FIX"  # NaN/inf/out-of-range latitude or longitude, bad covariance, status or fix stamp
    NO_FIX = "NO_FIX"  # NavSatStatus STATUS_NO_FIX
    BAD_STAMP = "BAD_STAMP"  # the panorama stamp is NaN, inf or negative
    STALE_STAMP = "STALE_STAMP"  # the fix is older (or newer) than fix_max_age_s from the panorama
    FUTURE_STAMP = "FUTURE_STAMP"  # panorama or fix stamp later than now + max_future_s
    OUT_OF_ORDER = "OUT_OF_ORDER"  # panorama stamp not after the previous frame's
    OUTSIDE_COVERAGE = "OUTSIDE_COVERAGE"  # no tile in the scope, or the fix lies mostly off the tiles (min_prior_inside)
    LOW_MARGIN = "LOW_MARGIN"  # retrieval margin not above min_margin: the best tile is ambiguous
    MAHALANOBIS = "MAHALANOBIS"  # the estimate contradicts the GNSS prior (d^2 > max_mahalanobis)
    AMBIGUOUS = "AMBIGUOUS"  # the posterior holds real mass at distinct places (min_mode_mass): no single fix
    MISMATCH = "MISMATCH"  # the recent views do not match the imagery (min_imagery_support, min_imagery_score)
    MOTION = "MOTION"  # not where odometry carries the estimate published motion_check_s before (max_motion_mahalanobis)

    def __str__(self) -> str:
        return self.value


BAD_INPUT_REASONS = frozenset({Reason.BAD_IMAGE, Reason.BAD_CAMERA, Reason.BAD_FIX, Reason.NO_FIX, Reason.BAD_STAMP,
                               Reason.STALE_STAMP, Reason.FUTURE_STAMP, Reason.OUT_OF_ORDER,
                               Reason.OUTSIDE_COVERAGE})
GATE_REASONS = frozenset({Reason.LOW_MARGIN, Reason.MAHALANOBIS, Reason.AMBIGUOUS, Reason.MISMATCH, Reason.MOTION})


@dataclass(frozen=True)
class Fix:
    """A GNSS fix as sensor_msgs/NavSatFix carries it (without ROS types)."""

    lat_deg: float
    lon_deg: float
    stamp_s: float  # seconds, same clock as the panorama stamps
    status: int = 0  # NavSatStatus: -2 UNKNOWN, -1 NO_FIX, 0 FIX, 1 SBAS_FIX, 2 GBAS_FIX
    covariance_enu_m2: Any = None  # 2x2 (E, N) or 3x3 (E, N, U) m^2; None = not reported
    sigma_m: float | None = None  # horizontal 1-sigma per axis, m; used when covariance_enu_m2 is None
    covariance_type: int | None = None  # NavSatFix position_covariance_type as received; None = not from a message

    @classmethod
    def from_navsat(cls, lat_deg: float, lon_deg: float, stamp_s: float, status: int,
                    position_covariance: Sequence[float], covariance_type: int) -> Fix:
        """From NavSatFix fields; COVARIANCE_TYPE_UNKNOWN (0) means no covariance (default sigma)."""
        cov = None
        if covariance_type != 0:
            cov = np.asarray(position_covariance, dtype=np.float64).reshape(3, 3)
        return cls(lat_deg, lon_deg, stamp_s, status, cov, covariance_type=int(covariance_type))


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
    protection_level_m: float | None = None  # horizontal radius the true error exceeds on at most protection_risk of fixes
    mode_mass: float | None = None  # posterior mass within mode_radius_m of the estimate (1: one clear place)
    view_distance_m: float | None = None  # from the estimate to the place the view alone prefers, m
    motion_gap_m: float | None = None  # how far from where odometry carries the recent fixes, m (MotionCheck.gap_m)
    imagery_support: float | None = None  # share of the last imagery_window views that point at their estimate
    imagery_score: float | None = None  # mean imagery statistic of the last imagery_window matched views (MISMATCH
    # floor): their score, over their median score in the scope for bev models
    imagery_mismatch: float | None = None  # P(the tiles do not show this place), filtered along the stream
    mismatch_covariance_enu_m2: np.ndarray | None = None  # (2, 2) ENU m^2: the error's covariance if they do not
    # (the fix's, plus the estimate's offset from the fix squared); covariance_enu_m2 holds imagery_mismatch x this
    fix_overruled: bool = False  # published although its fix contradicted it: odometry vouched (fix_overrule_s)
    imagery_vouched: bool = False  # published although the MISMATCH gate refused its view: odometry vouched
    # (imagery_track_s)
    ambiguity_vouched: bool = False  # published although its posterior held distinct places (AMBIGUOUS): odometry
    # vouched for the place the track is at (imagery_track_s)
    track_covariance_enu_m2: np.ndarray | None = None  # (2, 2) ENU m^2, vouched estimates only: the error's
    # covariance as the track judges it (the carried anchor's, plus the offset from it squared); published
    # in covariance_enu_m2 when its largest variance is below the imagery's
    imagery_covariance_enu_m2: np.ndarray | None = None  # (2, 2) ENU m^2, vouched estimates only: the imagery's
    # covariance (the posterior's, plus the mismatch share), published unless the track's is the sharper
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



def finite_or_none(value: Any) -> float | None:
    """float(value) when it is a finite real number (numpy scalars too), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None



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
        if asymmetric or float(np.linalg.eigvalsh(0.5 * (h + h.T)).min()) <= 1e-12 * scale:
            raise ValueError(f"fix covariance is not symmetric positive definite: {h.tolist()} (a receiver that "
                             "claims zero variance claims the impossible)")
        return 0.5 * (h + h.T)
    sigma = finite_or_none(default_sigma_m if fix.sigma_m is None else fix.sigma_m)
    if sigma is None or sigma < 0:
        raise ValueError(f"fix sigma_m must be a finite number >= 0 m, got {fix.sigma_m!r}")
    return np.eye(2) * sigma ** 2


def truth_of(t: Any) -> Truth:
    """A Truth from a Truth, anything with lat_deg/lon_deg[/yaw_enu_rad], or a 2/3-tuple."""
    if isinstance(t, Truth):
        return t
    if hasattr(t, "lat_deg") and hasattr(t, "lon_deg"):
        return Truth(float(t.lat_deg), float(t.lon_deg), getattr(t, "yaw_enu_rad", None))
    vals = tuple(t)
    if len(vals) not in (2, 3):
        raise ValueError(f"a truth is Truth(lat_deg, lon_deg[, yaw_enu_rad]) or a 2/3-tuple, got {t!r}")
    return Truth(float(vals[0]), float(vals[1]), None if len(vals) == 2 or vals[2] is None else float(vals[2]))
