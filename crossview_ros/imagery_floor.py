"""The MISMATCH gate's floor and the imagery likelihoods, fitted a-contrario on calibration walks.

calibrate (covariance) fits what a fix's covariance is; this fits when imagery is not this place's:
the floor on the window statistic and the two populations' Gaussians that the localizer's mismatch
belief weighs (CovarianceModel.imagery_mismatch_llr).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossview_ros.covariance import IMAGERY_LIKELIHOODS, IMAGERY_SUPPORTED

IMAGERY_FLOOR_QUANTILE = 0.995  # of the background windows' mean score: where the MISMATCH floor sits


def fit_imagery_floor(background: np.ndarray, own: np.ndarray, *, quantile: float = IMAGERY_FLOOR_QUANTILE,
                      min_samples: int = 20, background_support: np.ndarray | None = None,
                      own_support: np.ndarray | None = None) -> tuple[float, dict[str, Any]]:
    """The MISMATCH floor on the window mean score, a-contrario: the `quantile` of the windows where the
    views were matched against another place's imagery (background: the calibration walks localized
    with their fixes moved off their own place), so that imagery that is not this place passes the
    gate in at most 1 - quantile of windows whatever the model's score scale; `own` (the same walks
    at their place; +inf for windows the gate does not judge) gives the share of their windows it
    withholds. NaN: no window. 0 (gate off) with too few samples. The record also holds the two
    populations' likelihoods (IMAGERY_LIKELIHOODS, CovarianceModel.imagery_mismatch_llr's): the statistic's
    Gaussians, and from `*_support` (each window's support; NaN: none) the share of windows at least
    IMAGERY_SUPPORTED supported, add-one smoothed (0: fewer than min_samples)."""
    background = np.asarray(background, np.float64)
    background = background[np.isfinite(background)]
    own = np.asarray(own, np.float64)
    own = own[~np.isnan(own)]
    judged = own[np.isfinite(own)]
    if len(background) < min_samples or len(own) < min_samples:
        return 0.0, {"imagery_background_windows": int(len(background)), "imagery_score_floor": 0.0,
                     **dict.fromkeys(IMAGERY_LIKELIHOODS, 0.0)}
    floor = float(np.quantile(background, quantile))
    likelihoods = {"imagery_background_mean": float(np.mean(background)),
                   "imagery_background_std": float(np.std(background)),
                   "imagery_own_mean": float(np.mean(judged)) if len(judged) >= min_samples else 0.0,
                   "imagery_own_std": float(np.std(judged)) if len(judged) >= min_samples else 0.0,
                   "imagery_background_supported": _supported_share(background_support, min_samples),
                   "imagery_own_supported": _supported_share(own_support, min_samples)}
    return floor, {**likelihoods, "imagery_background_windows": int(len(background)), "imagery_own_windows": int(len(own)),
                   "imagery_floor_quantile": quantile, "imagery_score_floor": floor,
                   "imagery_background_median": float(np.median(background)),
                   "imagery_own_median": float(np.median(judged)) if len(judged) else float("nan"),
                   "imagery_own_withheld_share": float(np.mean(own < floor))}


def _supported_share(support: np.ndarray | None, min_samples: int) -> float:
    """The add-one smoothed share of windows at least IMAGERY_SUPPORTED supported (0: too few windows)."""
    values = np.asarray([] if support is None else support, np.float64)
    values = values[np.isfinite(values)]
    if len(values) < min_samples:
        return 0.0
    return float((np.sum(values >= IMAGERY_SUPPORTED) + 1.0) / (len(values) + 2.0))
