"""Covariance of the estimates: the model, its calibration on validation drives, its file.

Covariance model (position, ENU, m^2; isotropic):

    frame_m = sigma0_m * exp(margin_coef * margin + score_coef * score + spread_coef * ln(1 + spread_m)
                             + offset_coef * offset_m + mode_coef * (1 - mode_mass) + view_coef * ln(1 + view_m))
    sigma_m = max(sigma_min_m, sqrt(frame_m^2 + (motion_coef * motion_m)^2))
    covariance = sigma_m^2 * I2

margin: the retrieval margin (cosine, see margin_mode); score: the top-1 cosine; spread_m: the
score-weighted RMS distance between the positions predicted from the candidates that agree with
the top-1 (overlapping tiles regress the same point: their disagreement is the offset head's
spread); offset_m: the distance of the estimate from the chosen tile's centre (near a tile's edge
another tile should have won); mode_mass: the posterior's share near the estimate, and view_m: how
far from the estimate the view alone would have put it (bev models; 1 and 0 otherwise): the
frame's own difficulty, so that a calibration carries to walks it did not see. motion_m: how far
the stream's estimates over the last motion_check_s strayed from odometry's motion
(MotionCheck.gap_m; motion_typical_m, the calibration's median, where none is measured), the
stream's difficulty that no single frame shows: views that hold the estimate on one spot while
the platform walks on look sure frame by frame; an error of the size of that stray is then added
to the frame's, not multiplied into it, so that it counts at the floor too. calibrate() fits the
shape and motion_coef by maximum likelihood of a 2-D Gaussian (covariance_ml), then one scale on
both that puts the target quantile of the squared Mahalanobis errors on the chi-square (2 dof)
quantile: 95 % of d^2 below 5.99. Yaw variance =
max(yaw_variance_min_rad2, yaw_variance_scale * raw^yaw_variance_power), raw being the heading
estimator's variance, scaled so 95 % of the squared yaw errors over variance lie below 3.84
(chi-square, 1 dof). fix_sigma_scale says how much the GNSS receiver understates its sigma
(fit_fix_sigma_scale); every use of the fix's covariance (scope, the bev match's prior, the
Mahalanobis gate) takes it times that factor squared. The defaults are UNCALIBRATED guesses; run
calibrate() on a validation drive and save_covariance() the result beside the model
(covariance.json), which the Localizer then loads.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.atomic import write_json_atomic
from crossview_ros.covariance_ml import fit_log_sigma_and_motion, fit_yaw_power, solve_monotone
from crossview_ros.estimate import (
    NAVSAT_STATUS_NO_FIX, Estimate, Fix, LocalizerError, Reason, fix_covariance_enu_m2, truth_of,
)
from crossview_ros.localizer_config import LocalizerConfig

COVARIANCE_FILE = "covariance.json"  # beside model.json in the model folder
COVARIANCE_FORMAT = "crossview_ros.covariance"
COVARIANCE_FORMAT_VERSION = 1
CHI2_2DOF_95 = 5.991464547107979  # chi-square quantile, 2 dof, 95 %: -2 ln(0.05)
CHI2_1DOF_95 = 3.841458820694124  # chi-square quantile, 1 dof, 95 %
# what calibrate() fits and how, for the tools that keep calibrations (crossview-demo, crossview-walks): a
# calibration made by another version is made again. 2: the scale on the published covariance, the
# imagery floor on the view's score over its scope's median. 3: the imagery Gaussians (the mismatch belief). 4: the
# scale refitted on what the fitted model publishes (localize_eval.refit_on_published). 5: the scale fitted under the
# mismatch share, the protection level without it; a far mass under protection_risk out of the covariance. 6: the
# refit's published frames under the first-fix gate (first_fix_mahalanobis_share). 7: a vouched estimate published
# with the track's covariance where it is the sharper (Estimate.track_covariance_enu_m2). 8: such an estimate's
# imagery covariance kept (Estimate.imagery_covariance_enu_m2), its far mass with it. 9: the refit's published frames
# under the MOTION gate (motion_check_s). 10: the bev track's moved belief a smooth mixture (bev_grid.TrackPrior),
# not interpolated from its grid. 11: the refit's published frames with odometry vouching up to imagery_track_s 60 s
# (was 30 s). 12: the refit repeated until the share of d^2 under 5.99 as the node publishes lies near the quantile.
# 13: each calibration stream localized with its own config (localize_eval.make_localizers had given every stream of
# a tile set the first one's: a city's drives calibrated with its walks' camera height and track speed). 14: the motion
# gap (MotionCheck.gap_m) a covariance feature (ln(1 + gap) in the log-linear sigma). 15: the gap in the covariance
# added in quadrature instead, and in the protection level (added). 16: the track's covariance scaled on its own
# frames (track_scale). 17: the motion gap measured against published estimates only.
CALIBRATION_VERSION = 17
TRACK_SCALE_PASSES = 3  # calibrate(): fits of the track's scale and the imagery's in turn
IMAGERY_BEST_SCORE, IMAGERY_OVER_SCOPE_MEDIAN = 0.0, 1.0
IMAGERY_STATISTICS = {IMAGERY_BEST_SCORE: "the view's score at its pose",  # older calibrations; retrieval models
                      IMAGERY_OVER_SCOPE_MEDIAN: "the view's score at its pose over its median score in the scope"}
MIN_SHAPE_SAMPLES = 200  # calibrate() fits the covariance model's shape, not only its scale, from this many
IMAGERY_LIKELIHOODS = ("imagery_background_mean", "imagery_background_std", "imagery_own_mean", "imagery_own_std",
                       "imagery_background_supported", "imagery_own_supported")
IMAGERY_SUPPORTED = 0.5  # a window is "supported" when at least this share of its views point at their estimate


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
    mode_coef: float = 0.0  # d ln(sigma) / d (1 - mode_mass)
    view_coef: float = 0.0  # d ln(sigma) / d ln(1 + view_distance_m)
    motion_coef: float = 0.0  # 1-sigma per axis, m, per metre of motion gap (MotionCheck.gap_m), added in quadrature
    motion_typical_m: float = 0.0  # the motion gap taken where none is measured (the calibration's median)
    track_scale: float = 1.0  # a vouched estimate's covariance as the track judges it (imagery_window) times this
    yaw_variance_power: float = 1.0  # yaw variance = scale x raw^power
    protection_scale: float = 0.0  # protection level = this x the published sigma (0: not fitted, the Gaussian's)
    protection_risk: float = 0.01  # the share of fixes beyond the protection level that protection_scale was fitted for
    # the window mean (imagery_window views) of the imagery statistic below which the imagery is not this
    # place's (0: not fitted), and which statistic it was fitted on (IMAGERY_STATISTICS)
    imagery_score_floor: float = 0.0
    imagery_statistic: float = IMAGERY_BEST_SCORE
    # Gaussians of that window mean on another place's imagery and on this place's (std 0: not fitted), and
    # the share of their windows that are supported (IMAGERY_SUPPORTED; 0: not fitted): the likelihoods whose
    # ratio the localizer's mismatch belief weighs (imagery_mismatch_llr)
    imagery_background_mean: float = 0.0
    imagery_background_std: float = 0.0
    imagery_own_mean: float = 0.0
    imagery_own_std: float = 0.0
    imagery_background_supported: float = 0.0
    imagery_own_supported: float = 0.0
    calibrated: bool = False
    fit: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    PARAMS = ("sigma0_m", "margin_coef", "score_coef", "spread_coef", "offset_coef", "sigma_min_m",
              "yaw_variance_scale", "yaw_variance_min_rad2", "fix_sigma_scale", "yaw_variance_power",
              "protection_scale", "protection_risk", "mode_coef", "view_coef", "imagery_score_floor",
              "imagery_statistic", "motion_coef", "motion_typical_m", "track_scale") + IMAGERY_LIKELIHOODS
    OPTIONAL = {"fix_sigma_scale": 1.0, "yaw_variance_power": 1.0,  # absent from older calibration files
                "protection_scale": 0.0, "protection_risk": 0.01, "mode_coef": 0.0, "view_coef": 0.0,
                "imagery_score_floor": 0.0, "imagery_statistic": IMAGERY_BEST_SCORE, "motion_coef": 0.0,
                "motion_typical_m": 0.0, "track_scale": 1.0,
                **dict.fromkeys(IMAGERY_LIKELIHOODS, 0.0)}

    @classmethod
    def from_config(cls, config: LocalizerConfig) -> CovarianceModel:
        return cls(config.cov_sigma0_m, config.cov_margin_coef, config.cov_score_coef, config.cov_spread_coef,
                   config.cov_offset_coef, config.cov_sigma_min_m, config.yaw_variance_scale,
                   config.yaw_variance_min_rad2, fix_sigma_scale=config.cov_fix_sigma_scale,
                   yaw_variance_power=config.yaw_variance_power, mode_coef=config.cov_mode_coef,
                   view_coef=config.cov_view_coef, motion_coef=config.cov_motion_coef, calibrated=False)

    @staticmethod
    def features(margin: Any, score: Any, spread_m: Any, offset_m: Any, mode_mass: Any = 1.0,
                 view_m: Any = 0.0) -> np.ndarray:
        """(..., 6) regressors: margin, score, ln(1 + spread_m), offset_m, 1 - mode_mass, ln(1 + view_m)."""
        return np.stack(np.broadcast_arrays(
            np.asarray(margin, np.float64), np.asarray(score, np.float64),
            np.log1p(np.maximum(np.asarray(spread_m, np.float64), 0.0)), np.asarray(offset_m, np.float64),
            1.0 - np.asarray(mode_mass, np.float64), np.log1p(np.maximum(np.asarray(view_m, np.float64), 0.0))),
            axis=-1)

    @property
    def coefs(self) -> np.ndarray:
        return np.array([self.margin_coef, self.score_coef, self.spread_coef, self.offset_coef, self.mode_coef,
                         self.view_coef])

    def motion_m(self, gap_m: float | None) -> float:
        """The motion gap the model takes for a measured one (MotionCheck.gap_m), or the typical one for none."""
        return self.motion_typical_m if gap_m is None else float(gap_m)

    def sigma_m(self, margin: Any, score: Any, spread_m: Any, offset_m: Any, mode_mass: Any = 1.0,
                view_m: Any = 0.0, motion_m: Any = 0.0) -> Any:
        """Horizontal 1-sigma per axis, m (scalars in, float out; arrays broadcast)."""
        z = self.features(margin, score, spread_m, offset_m, mode_mass, view_m) @ self.coefs
        frame = self.sigma0_m * np.exp(np.clip(z, -50.0, 50.0))
        sigma = np.maximum(self.sigma_min_m, np.hypot(frame, self.motion_coef * np.asarray(motion_m, np.float64)))
        return float(sigma) if sigma.ndim == 0 else sigma

    def yaw_variance_rad2(self, raw_variance_rad2: Any) -> Any:
        raw = np.maximum(np.asarray(raw_variance_rad2, float), 1e-12)
        v = np.maximum(self.yaw_variance_min_rad2, self.yaw_variance_scale * raw ** self.yaw_variance_power)
        return float(v) if v.ndim == 0 else v

    def protection_level_m(self, covariance_enu_m2: np.ndarray, risk: float, motion_gap_m: float | None = None) -> float:
        """Horizontal protection level: a radius the true error exceeds on at most `risk` of published fixes.

        protection_scale x the covariance's largest sigma, plus the motion gap (motion_m: the typical one where
        none was measured). The scale is fitted on validation drives for this risk (calibrate: the (1 - risk)
        quantile of (error - gap) / sigma, which holds the heavy tail a Gaussian misses); before calibration, or
        for another risk, the Gaussian's sqrt(-2 ln risk). The gap is a bias, not a noise: where the estimate
        strays that far from where odometry carries the stream's recent ones, it may be off by as much
        (as a RAIM protection level adds the bias its fault test could miss), and the sigma does not say so.
        """
        sigma = math.sqrt(max(float(np.linalg.eigvalsh(np.asarray(covariance_enu_m2, np.float64)).max()), 0.0))
        fitted = self.protection_scale > 0 and abs(self.protection_risk - risk) <= 1e-9
        scale = self.protection_scale if fitted else gaussian_protection_scale(risk)
        return float(sigma * scale + self.motion_m(motion_gap_m))

    def imagery_mismatch_llr(self, window_score: float | None, support: float | None = None) -> float | None:
        """ln p(window | another place's imagery) / p(window | this place's): its mean statistic under the
        calibrated Gaussians plus whether it is supported (IMAGERY_SUPPORTED) under the calibrated shares; the
        evidence MismatchBelief weighs. None when neither is known or fitted."""
        llr = None
        if window_score is not None and math.isfinite(window_score) and self.imagery_gaussians_fitted:

            def log_density(mean: float, std: float) -> float:
                return -0.5 * ((window_score - mean) / std) ** 2 - math.log(std)

            llr = (log_density(self.imagery_background_mean, self.imagery_background_std)
                   - log_density(self.imagery_own_mean, self.imagery_own_std))
        shares = self.imagery_background_supported, self.imagery_own_supported
        if support is not None and math.isfinite(support) and all(0.0 < p < 1.0 for p in shares):
            b, o = shares if support >= IMAGERY_SUPPORTED else (1.0 - shares[0], 1.0 - shares[1])
            llr = (llr or 0.0) + math.log(b / o)
        return None if llr is None else float(llr)

    @property
    def imagery_gaussians_fitted(self) -> bool:
        return self.imagery_background_std > 0.0 and self.imagery_own_std > 0.0

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
                vals["fix_sigma_scale"], vals["yaw_variance_power"], vals["track_scale"]) <= 0 or min(
                vals["protection_scale"], vals["motion_coef"], vals["motion_typical_m"]) < 0 or not (
                0 < vals["protection_risk"] < 1) or vals["imagery_score_floor"] < 0 or (
                vals["imagery_statistic"] not in IMAGERY_STATISTICS) or min(
                vals["imagery_background_std"], vals["imagery_own_std"]) < 0 or not all(
                0 <= vals[p] < 1 for p in ("imagery_background_supported", "imagery_own_supported")):
            raise ValueError(f"covariance parameters must be finite, sigmas, yaw terms and track_scale > 0, "
                             f"protection_scale, the motion terms and the imagery stds >= 0, the supported shares in [0, 1), protection_risk in (0, 1) "
                             f"and imagery_statistic one of "
                             f"{sorted(IMAGERY_STATISTICS)}: {vals}")
        return cls(**vals, calibrated=bool(values.get("calibrated", False)), fit=dict(fit or {}))



def check_imagery_statistic(model: CovarianceModel, statistic: float, min_imagery_score: float) -> None:
    """LocalizerError when the calibrated imagery floor, which the gate would use (min_imagery_score -1),
    was fitted on another statistic than the localizer computes: it would gate on the wrong scale."""
    if min_imagery_score < 0 and model.imagery_score_floor > 0 and model.imagery_statistic != statistic:
        raise LocalizerError(f"the calibration's imagery floor {model.imagery_score_floor:.3f} was fitted on "
                             f"{IMAGERY_STATISTICS[model.imagery_statistic]}, but this model's localizer judges "
                             f"{IMAGERY_STATISTICS[statistic]}: calibrate again (crossview-localize --calibrate on "
                             "drives), or set min_imagery_score")


def gaussian_protection_scale(risk: float) -> float:
    """k with P(|e| > k sigma) = risk for an isotropic 2-D Gaussian error (Rayleigh): sqrt(-2 ln risk)."""
    if not 0 < risk < 1:
        raise ValueError(f"risk must be in (0, 1), got {risk}")
    return math.sqrt(-2.0 * math.log(risk))


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
        t = truth_of(truth)
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
              min_samples: int = 20, protection_risk: float = 0.01,
              imagery_score_floor: float | None = None, imagery_statistic: float | None = None,
              imagery_likelihoods: Mapping[str, float] | None = None, published: Sequence[bool] | None = None) -> CovarianceModel:
    """Fit the covariance model on a validation set so that d^2 follows chi-square (2 dof).

    estimates[i] pairs with truths[i] (Truth, or (lat, lon[, yaw_enu_rad])). Used: estimates with
    a position whose reason is in `reasons`; by default the ones that passed the margin gate,
    including those the Mahalanobis gate (which depends on the covariance being fitted) refused.
    Position: with fit_shape the log-linear coefficients by maximum likelihood, else only sigma0
    with start's shape (None: the shape too from MIN_SHAPE_SAMPLES samples on); then sigma0 is
    scaled so that the `quantile` of d^2 over the set equals the chi-square 2-dof quantile (5.99
    at 95 %), which keeps the share right when the errors are heavier-tailed than a Gaussian. d^2 is
    taken under the covariance the node publishes: the model's sigma^2 I plus what the posterior
    added beyond its mode and the imagery mismatch's share (kept from each estimate); scaled on
    sigma^2 I alone, the published covariances held more than the quantile. A vouched estimate
    published with the track's covariance (the carried anchor's variance plus its offset squared,
    Localizer._vouched_covariance) does not move with that scale: track_scale puts the quantile of those
    frames' d^2 on the chi-square's by itself (TRACK_SCALE_PASSES fits of both in turn, when at least
    min_samples are published that way; else start's).
    Yaw (where estimates and truths have it): with fit_shape, yaw_variance_power by maximum
    likelihood (covariance_ml.fit_yaw_power), then yaw_variance_scale so that the same quantile of e^2 / var
    equals the 1-dof quantile (3.84 at 95 %). sigma_min_m, yaw_variance_min_rad2 and
    fix_sigma_scale (fit_fix_sigma_scale, before the drive is localized: it shapes the estimates)
    are kept from `start` (default: the uncalibrated defaults). Protection level: protection_scale is
    the (1 - protection_risk) quantile of error / published sigma over the set, the published
    covariance being the new model's plus what the posterior added beyond its mode (kept from each
    estimate's covariance) but not the mismatch share, never below the Gaussian's sqrt(-2 ln risk): on
    the calibration walks that share is a stream's start, and fitted with it the factor every frame's
    radius takes fell (the 45-CPU-minute model's urban fixes beyond it: 0.9 -> 1.9 %).
    imagery_score_floor: the MISMATCH gate's floor (imagery_floor.fit_imagery_floor) and the statistic it was fitted on
    (IMAGERY_STATISTICS), None = start's; imagery_likelihoods (IMAGERY_LIKELIHOODS, imagery_floor.fit_imagery_floor; None =
    start's) are kept for the localizer's imagery mismatch. published[i]: whether the node would
    publish estimates[i] once that floor is in place (None: all). The shape is fitted on every estimate
    used (many samples), the scale, the protection level and the yaw on the published ones (at least
    min_samples of them, else on all): fitted on frames the node withholds, every published sigma
    would be too cautious.
    """
    from scipy.stats import chi2

    if len(estimates) != len(truths):
        raise ValueError(f"got {len(estimates)} estimates but {len(truths)} truths; pass one truth per estimate")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    start = start or CovarianceModel.from_config(LocalizerConfig())
    likelihoods = {g: float(getattr(start, g)) for g in IMAGERY_LIKELIHOODS}
    likelihoods.update({g: float(v) for g, v in (imagery_likelihoods or {}).items() if g in likelihoods})
    wanted = {str(r) for r in reasons}
    measured = [e.motion_gap_m for e in estimates
                if e.has_position and str(e.reason) in wanted and e.motion_gap_m is not None]
    typical = float(np.median(measured)) if measured else start.motion_typical_m  # the gap where none is measured
    gaps: list[float] = []
    feats, r2, err, yaw_err2, yaw_raw, added, shares, tracks, pub, yaw_pub = [], [], [], [], [], [], [], [], [], []
    flags = [True] * len(estimates) if published is None else [bool(p) for p in published]
    if len(flags) != len(estimates):
        raise ValueError(f"got {len(estimates)} estimates but {len(flags)} published flags")
    for est, truth, flag in zip(estimates, truths, flags):
        if not est.has_position or str(est.reason) not in wanted:
            continue
        pub.append(flag)
        t = truth_of(truth)
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, est.lat_deg, est.lon_deg)
        r2.append(de * de + dn * dn)
        err.append((de, dn))
        feats.append([est.margin, est.score, est.spread_m or 0.0, math.hypot(*(est.offset_m or (0.0, 0.0))),
                      1.0 if est.mode_mass is None else est.mode_mass,
                      0.0 if est.view_distance_m is None else est.view_distance_m])
        gaps.append(typical if est.motion_gap_m is None else est.motion_gap_m)
        shares.append((est.imagery_mismatch or 0.0) * _mismatch_covariance_m2(est))
        tracks.append(_track_covariance_m2(est))
        # with the motion gap the localizer took (start's typical one where none was measured)
        added.append(_added_covariance_m2(est, start, feats[-1] + [start.motion_m(est.motion_gap_m)], shares[-1]))
        if est.yaw_enu_rad is not None and est.yaw_variance_raw_rad2 is not None and t.yaw_enu_rad is not None:
            yaw_err2.append(float(geo.wrap_angle_rad(est.yaw_enu_rad - t.yaw_enu_rad)) ** 2)
            yaw_raw.append(est.yaw_variance_raw_rad2)
            yaw_pub.append(flag)
    if len(r2) < min_samples:
        raise ValueError(f"calibrate needs at least {min_samples} estimates with a position and reason in "
                         f"{sorted(wanted)}, got {len(r2)}; evaluate a longer validation drive")
    f = CovarianceModel.features(*np.asarray(feats, np.float64).T)
    r2a = np.asarray(r2, np.float64)
    if fit_shape is None:
        fit_shape = len(r2) >= MIN_SHAPE_SAMPLES
    gap_a = np.asarray(gaps, np.float64)
    if fit_shape:
        log_sigma0, coefs, motion = fit_log_sigma_and_motion(f, gap_a, r2a)
    else:
        shape = f @ start.coefs
        log_sigma0 = 0.5 * math.log(max(float(np.mean(r2a * np.exp(-2.0 * shape))) / 2.0, 1e-12))
        coefs, motion = start.coefs, start.motion_coef
    # the scale (of the frame's sigma and the motion term alike) and everything after it on the published
    # estimates (when there are enough)
    keep = np.asarray(pub, bool) if sum(pub) >= min_samples else np.ones(len(r2), bool)
    base = np.hypot(np.exp(np.clip(log_sigma0 + f[keep] @ coefs, -50.0, 50.0)), motion * gap_a[keep])
    r2a, err_k, gap_k = r2a[keep], np.asarray(err, np.float64).reshape(-1, 2)[keep], gap_a[keep]
    added = np.asarray(added, np.float64).reshape(-1, 2, 2)[keep]
    published_added = added + np.asarray(shares, np.float64).reshape(-1, 2, 2)[keep]
    raw_tracks = np.asarray(tracks, np.float64).reshape(-1, 2, 2)[keep] / start.track_scale  # as the track judges
    yaw_keep = np.asarray(yaw_pub, bool) if sum(yaw_pub) >= min_samples else np.ones(len(yaw_pub), bool)
    yaw_err2 = list(np.asarray(yaw_err2)[yaw_keep]) if yaw_err2 else []
    yaw_raw = list(np.asarray(yaw_raw)[yaw_keep]) if yaw_raw else []
    q2 = float(chi2.ppf(quantile, 2))

    def q_pos(log_s: float) -> float:
        sigma = np.maximum(start.sigma_min_m, math.exp(log_s) * base)
        return float(np.quantile(_published_d2(err_k, _published_covariances(sigma, published_added, tracks)[0]),
                                 quantile))

    # the scale of the track's covariance on the frames published with it, the imagery's on all: each
    # puts its frames' quantile on the chi-square's (which frames take the track's moves with both, hence passes)
    track_scale, tracks = start.track_scale, raw_tracks * start.track_scale
    for _ in range(TRACK_SCALE_PASSES):
        log_scale = solve_monotone(q_pos, q2)
        sigma = np.maximum(start.sigma_min_m, math.exp(log_scale) * base)
        by_track = _published_covariances(sigma, published_added, tracks)[1]
        if by_track.sum() < min_samples:
            break
        track_scale = float(np.clip(np.quantile(_published_d2(err_k[by_track], raw_tracks[by_track]), quantile) / q2,
                                    1e-3, 1e3))
        tracks = raw_tracks * track_scale
    log_scale = solve_monotone(q_pos, q2)
    sigma = np.maximum(start.sigma_min_m, math.exp(log_scale) * base)
    published_cov, from_track = _published_covariances(sigma, published_added, tracks)
    d2 = _published_d2(err_k, published_cov)
    fit: dict[str, Any] = {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "samples": len(r2), "published_samples": int(keep.sum()), "quantile": quantile, "fit_shape": fit_shape,
        "chi2_2dof_quantile": q2, "share_d2_below_chi2": float(np.mean(d2 <= q2)),
        "median_error_m": float(np.median(np.sqrt(r2a))), "median_sigma_m": float(np.median(sigma)),
    }
    published_sigma = np.sqrt(np.where(from_track, np.linalg.eigvalsh(tracks)[:, -1], sigma ** 2 + np.linalg.eigvalsh(added)[:, -1]))
    ratio = (np.sqrt(r2a) - gap_k) / published_sigma  # the protection level adds the gap (protection_level_m)
    protection = max(float(np.quantile(ratio, 1.0 - protection_risk, method="higher")),
                     gaussian_protection_scale(protection_risk))
    fit.update({"protection_risk": protection_risk, "protection_scale": protection,
                "share_beyond_protection": float(np.mean(ratio > protection)), "motion_typical_m": typical,
                "track_published": int(from_track.sum()), "track_scale": track_scale})
    yaw_scale, yaw_power = start.yaw_variance_scale, start.yaw_variance_power
    fit["yaw_samples"] = len(yaw_err2)
    if len(yaw_err2) >= min_samples:
        yaw_scale, yaw_power = _calibrate_yaw(np.asarray(yaw_err2), np.asarray(yaw_raw), start, fit_shape, quantile,
                                              fit)
    return CovarianceModel(
        sigma0_m=float(math.exp(log_sigma0 + log_scale)), margin_coef=float(coefs[0]), score_coef=float(coefs[1]),
        spread_coef=float(coefs[2]), offset_coef=float(coefs[3]), mode_coef=float(coefs[4]),
        view_coef=float(coefs[5]), motion_coef=float(motion * math.exp(log_scale)), motion_typical_m=typical,
        track_scale=track_scale,
        sigma_min_m=start.sigma_min_m,
        yaw_variance_scale=float(yaw_scale), yaw_variance_min_rad2=start.yaw_variance_min_rad2,
        fix_sigma_scale=start.fix_sigma_scale, yaw_variance_power=float(yaw_power), protection_scale=protection,
        protection_risk=protection_risk, calibrated=True, fit=fit, **likelihoods,
        imagery_score_floor=start.imagery_score_floor if imagery_score_floor is None else float(imagery_score_floor),
        imagery_statistic=start.imagery_statistic if imagery_statistic is None else float(imagery_statistic))


def _mismatch_covariance_m2(est: Estimate) -> np.ndarray:
    """(2, 2) ENU: the estimate's error covariance if the imagery were not this place's (zeros: not known)."""
    m = est.mismatch_covariance_enu_m2
    return np.zeros((2, 2)) if m is None else np.asarray(m, np.float64)[:2, :2]


def _track_covariance_m2(est: Estimate) -> np.ndarray:
    """(2, 2) ENU: a vouched estimate's covariance as the track judges it (NaN: none)."""
    t = est.track_covariance_enu_m2
    return np.full((2, 2), np.nan) if t is None else np.asarray(t, np.float64)[:2, :2]


def _added_covariance_m2(est: Estimate, start: CovarianceModel, features: list[float],
                         share: np.ndarray) -> np.ndarray:
    """(2, 2) ENU: what the imagery's covariance of the estimate holds beyond start's model (it minus
    sigma^2 I and the imagery mismatch's share, given): the posterior's mass beyond its mode (and a vouched
    fix's widening), which calibration keeps while it refits the model. A vouched estimate records the
    imagery's covariance apart (imagery_covariance_enu_m2): it may have been published with the track's."""
    recorded = est.covariance_enu_m2 if est.imagery_covariance_enu_m2 is None else est.imagery_covariance_enu_m2
    if recorded is None:
        return np.zeros((2, 2))
    added = np.asarray(recorded, np.float64)[:2, :2] - share - np.eye(2) * float(start.sigma_m(*features)) ** 2
    w, v = np.linalg.eigh(0.5 * (added + added.T))
    return (v * np.maximum(w, 0.0)) @ v.T


def _published_covariances(sigma: np.ndarray, added: np.ndarray,
                           track: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, 2) the covariances the node publishes, and (N,) whether each is the track's: sigma^2 I + added,
    or the track's (N, 2, 2; NaN: none) where its largest variance is the smaller
    (Localizer._vouched_covariance)."""
    imagery = added + np.eye(2) * (sigma ** 2)[:, None, None]
    with np.errstate(invalid="ignore"):
        from_track = np.linalg.eigvalsh(track)[:, -1] < np.linalg.eigvalsh(imagery)[:, -1]
    return np.where(from_track[:, None, None], track, imagery), from_track


def _published_d2(err: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances of the (N, 2) errors under the published (N, 2, 2) covariances
    (_published_covariances): what the node publishes, so what the scale is fitted on."""
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    e, n = err[:, 0], err[:, 1]
    return (c * e * e - 2.0 * b * e * n + a * n * n) / (a * c - b * b)


def _calibrate_yaw(e2: np.ndarray, raw: np.ndarray, start: CovarianceModel, fit_shape: bool, quantile: float,
                   fit: dict[str, Any]) -> tuple[float, float]:
    """(yaw_variance_scale, yaw_variance_power): the power by maximum likelihood (with fit_shape, else
    start's), then the scale that puts the quantile of e^2 / var on the chi-square 1-dof quantile."""
    from scipy.stats import chi2

    q1 = float(chi2.ppf(quantile, 1))
    raw = np.maximum(raw, 1e-12)
    yaw_power = fit_yaw_power(e2, raw) if fit_shape else start.yaw_variance_power
    shaped = raw ** yaw_power

    def q_yaw(log_c: float) -> float:
        return float(np.quantile(e2 / np.maximum(start.yaw_variance_min_rad2, math.exp(log_c) * shaped), quantile))

    yaw_scale = math.exp(solve_monotone(q_yaw, q1))
    var = np.maximum(start.yaw_variance_min_rad2, yaw_scale * shaped)
    fit.update({"chi2_1dof_quantile": q1, "yaw_share_below_chi2": float(np.mean(e2 / var <= q1))})
    return yaw_scale, yaw_power


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
