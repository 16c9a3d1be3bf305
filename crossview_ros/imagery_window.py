"""The MISMATCH gate (Localizer): the recent matched views' imagery statistic and whether each view,
alone, pointed at its estimate; the belief that the imagery is another place's; and odometry's word for
a view the gate refuses where the track already is."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from crossview_ros.covariance import IMAGERY_OVER_SCOPE_MEDIAN, CovarianceModel
from crossview_ros.estimate import Reason
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.matchers import PoseMatch
from crossview_ros.odometry import CarriedEstimate, GridOdometry


class ImageryWindow:
    """The last `size` matched views: each one's imagery statistic (its score, over its median score in
    the scope where the matcher measures one), whether it pointed within mode_radius_m of its
    estimate by itself, and its estimate's squared Mahalanobis distance to its fix."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.views: deque[bool] = deque(maxlen=self.size)
        self.scores: deque[float] = deque(maxlen=self.size)
        self.fix_d2: deque[float] = deque(maxlen=self.size)

    def clear(self) -> None:
        self.views.clear()
        self.scores.clear()
        self.fix_d2.clear()

    def add(self, statistic: float | None, points_at_estimate: bool | None) -> None:
        """One view: a statistic that is None or not finite, or no verdict (None), is not recorded."""
        if statistic is not None and math.isfinite(statistic):
            self.scores.append(float(statistic))
        if points_at_estimate is not None:
            self.views.append(bool(points_at_estimate))

    def support(self) -> float | None:
        """The share of the window whose views pointed at their estimate (None before the first verdict);
        the denominator is the whole window, so a new stream earns its support."""
        return sum(self.views) / self.size if self.views else None

    def score(self) -> float | None:
        """The mean statistic over the recorded views (None before the first)."""
        return float(np.mean(self.scores)) if self.scores else None

    def add_fix_d2(self, d2: float) -> None:
        if math.isfinite(d2):
            self.fix_d2.append(float(d2))

    def mean_fix_d2(self) -> float | None:
        """The mean squared Mahalanobis distance of the recorded estimates to their fixes (None before the first)."""
        return float(np.mean(self.fix_d2)) if self.fix_d2 else None


class MismatchBelief:
    """P(the tiles do not show the place the views see), filtered along the stream.

    Each matched frame weighs its window's log-likelihood ratio (CovarianceModel.imagery_mismatch_llr)
    divided by the window's size: successive windows share all but one view, so a window's evidence is
    counted once over the frames it spans. The belief starts at `prior` and stays within [floor, 1 - floor]:
    tiles that matched may stop matching (an outdated tile set), and the other way round. A stream on its
    own imagery sinks to `floor` within a few windows and a window that scores just above the imagery
    floor barely moves it; a stream on another place's imagery stays near 1, so the few windows that pass
    the floor there are published with the fix's uncertainty, not as 1 m fixes."""

    def __init__(self, prior: float, floor: float, window: int) -> None:
        self.prior, self.floor, self.window = float(prior), float(floor), max(int(window), 1)
        self.clear()

    def clear(self) -> None:
        self._log_odds = self._clamp(self._logit(self.prior))

    def update(self, llr: float | None) -> float:
        """One matched frame's window evidence (None: none); the belief after it."""
        if llr is not None and math.isfinite(llr):
            self._log_odds = self._clamp(self._log_odds + llr / self.window)
        return self.p

    @property
    def p(self) -> float:
        return 1.0 / (1.0 + math.exp(-self._log_odds))

    def _clamp(self, log_odds: float) -> float:
        bound = self._logit(1.0 - self.floor)
        return min(max(log_odds, -bound), bound)

    @staticmethod
    def _logit(p: float) -> float:
        p = min(max(p, 1e-300), 1.0 - 1e-16)
        return math.log(p) - math.log1p(-p)


class ImageryGate:
    """MISMATCH: does the tile set show the place the views see? The gate refuses a frame when too few
    recent views point at their estimate by themselves (min_imagery_support) or their statistic lies below
    the imagery floor (min_imagery_score, calibrated on another place's imagery), unless odometry vouches
    for it (vouches); the belief (MismatchBelief) weighs the same windows into the published covariance. The
    same anchor lets odometry vouch for an estimate whose posterior holds distinct places (AMBIGUOUS): the
    track says which of them the platform is at."""

    def __init__(self, config: LocalizerConfig, covariance: CovarianceModel, statistic: float) -> None:
        self.config, self.covariance, self.statistic = config, covariance, statistic
        self.window = ImageryWindow(config.imagery_window)
        fitted = covariance.imagery_gaussians_fitted and covariance.imagery_statistic == statistic
        self.belief = MismatchBelief(config.imagery_mismatch_prior, config.imagery_mismatch_floor,
                                     config.imagery_window) if fitted and config.imagery_mismatch_prior > 0 else None
        self.anchor: CarriedEstimate | None = None  # an accepted estimate that passed the gate unaided (published)
        self.vouched = 0  # accepted frames the gate refused: odometry vouched (imagery_track_s)
        self.ambiguity_vouched = 0  # accepted frames the AMBIGUOUS gate refused: odometry vouched (the same anchor)

    def clear(self) -> None:
        """A new stream: no views, the belief at its prior, no anchor."""
        self.window.clear()
        if self.belief is not None:
            self.belief.clear()
        self.anchor = None

    @property
    def mismatch(self) -> float:
        """P(the tiles do not show the views' place); 0 when the belief is off."""
        return 0.0 if self.belief is None else self.belief.p

    @property
    def floor(self) -> float:
        """The floor on the window mean statistic: min_imagery_score, or (-1) the calibrated one."""
        chosen = self.config.min_imagery_score
        return float(self.covariance.imagery_score_floor if chosen < 0 else chosen)

    def trusted(self, support: float | None) -> bool:
        """Whether imagery_trust_support spares a window with this support from the floor (the gate, and
        calibration fitting the floor on the windows the gate judges)."""
        trust = self.config.imagery_trust_support
        return support is not None and trust < 1.0 and support >= trust

    def record(self, pose: PoseMatch) -> float | None:
        """Record this view's statistic (its score, over its median score in the scope where the matcher
        measures one) and whether it, alone, points within mode_radius_m of its estimate, and the window's
        evidence in the belief; the share of the window that did (None when the view gave no verdict)."""
        level = pose.scope_median_score if self.statistic == IMAGERY_OVER_SCOPE_MEDIAN else 0.0
        points = None if pose.view_distance_m is None else pose.view_distance_m <= self.config.mode_radius_m
        self.window.add(None if level is None else float(pose.score) - float(level), points)
        if self.belief is not None:
            self.belief.update(self.covariance.imagery_mismatch_llr(self.window.score(), self.window.support()))
        return None if points is None else self.window.support()

    def refusal(self, detail: str) -> str | None:
        """Why the gate refuses the recent views, or None."""
        cfg = self.config
        support = self.window.support()
        if support is not None and cfg.min_imagery_support > 0 and not support >= cfg.min_imagery_support:
            return (f"{sum(self.window.views)} of the last {cfg.imagery_window} views point within mode_radius_m "
                    f"{cfg.mode_radius_m:g} m of their estimate by themselves (min_imagery_support "
                    f"{cfg.min_imagery_support:g}): the tiles may not show this place ({detail})")
        floor, score = self.floor, self.window.score()
        if floor > 0 and score is not None and not self.trusted(support) and not score >= floor:
            spared = (f", and fewer than imagery_trust_support {cfg.imagery_trust_support:g} of them point at their "
                      "estimate" if cfg.imagery_trust_support < 1.0 else "")
            return (f"the last {len(self.window.scores)} views score {score:.3f} on average, below the imagery "
                    f"floor {floor:.3f} (min_imagery_score; calibrated on another place's imagery){spared}: the "
                    f"tiles may not show this place ({detail})")
        return None

    def vouches(self, odometry: GridOdometry | None, east_m: float,
                north_m: float, stamp_s: float) -> tuple[float, float, float] | None:
        """The carried anchor (east, north on the grid, its variance per axis: its own plus odometry's since)
        when odometry vouches for an estimate the gate refuses: it lies within imagery_track_radius_m of the
        anchor, carried here by odometry no more than imagery_track_s later; else None. A view of this place
        that does not stand out from its scope then lands where the track already is; a look-alike seldom
        does. Only an unaided pass renews the anchor (published), so a vouched run ends imagery_track_s after
        the anchor's."""
        cfg = self.config
        if odometry is None or self.anchor is None or not cfg.imagery_track_s > 0:
            return None
        carried = self.anchor.at(odometry, stamp_s, cfg.imagery_track_s)
        if carried is None or not math.hypot(east_m - carried[0], north_m - carried[1]) <= cfg.imagery_track_radius_m:
            return None
        return carried

    @staticmethod
    def no_sharper_than(covariance: np.ndarray, variance_m2: float) -> np.ndarray:
        """A vouched estimate's covariance, widened evenly until its largest variance is at least the carried
        anchor's: it is only as sure as the anchor and odometry that vouched for it."""
        short = variance_m2 - float(np.linalg.eigvalsh(covariance).max())
        return covariance + np.eye(2) * short if short > 0 else covariance

    @staticmethod
    def track_covariance(carried: tuple[float, float, float], east_m: float, north_m: float) -> np.ndarray:
        """(2, 2) grid m^2: a vouched estimate's error covariance as the track judges it, whatever the imagery
        shows: the truth lies about the carried anchor (its variance per axis), and the estimate is where it
        is, at most imagery_track_radius_m from it (that offset squared). The imagery's covariance may be far
        wider (the mismatch share prices the estimate as if anywhere in the fix's scope); this one is never
        sharper than the anchor, so a stream whose anchor was not sure gains nothing from it."""
        offset = np.array([east_m - carried[0], north_m - carried[1]])
        return np.eye(2) * carried[2] + np.outer(offset, offset)

    def published(self, odometry: GridOdometry | None, stamp_s: float, east_m: float, north_m: float,
                  variance_m2: float, vouched: frozenset[Reason]) -> None:
        """An accepted frame: a vouched one is counted; an unaided pass, with its variance per axis (the
        largest of its published covariance, the mismatch share included: on imagery that may be another
        place's, the anchor may sit on a look-alike), becomes the anchor unless the anchor, carried here by
        odometry, is still the sharper: the last pass of a good stretch often has its posterior already
        spreading, and one a few metres off must not move the anchor off a sharp one."""
        if vouched:
            self.vouched += Reason.MISMATCH in vouched
            self.ambiguity_vouched += Reason.AMBIGUOUS in vouched
            return
        carried = None if odometry is None or self.anchor is None else self.anchor.at(
            odometry, stamp_s, self.config.imagery_track_s)
        if carried is None or not carried[2] < variance_m2:
            self.anchor = CarriedEstimate(stamp_s, east_m, north_m, variance_m2)
