"""The maximum-likelihood fits behind covariance.calibrate(): the log-linear sigma with the motion gap's
term, the yaw variance's power, and the monotone solve that puts a quantile on its target. numpy and
scipy only (scipy imported where a fit runs: the node never fits)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def solve_monotone(fn: Callable[[float], float], target: float, lo: float = -30.0, hi: float = 30.0) -> float:
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
_FEATURE_SCALES = np.array([0.1, 0.5, 1.0, 10.0, 0.2, 1.0])
_RIDGE = 2.0


def _design(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The features' means and the fits' design matrix: a constant, then each feature centred and in
    _FEATURE_SCALES units (where the ridge applies)."""
    mu = features.mean(axis=0)
    return mu, np.column_stack([np.ones(len(features)), (features - mu) / _FEATURE_SCALES])


def _fit_log_sigma(features: np.ndarray, r2: np.ndarray) -> tuple[float, np.ndarray]:
    """Maximum likelihood of isotropic 2-D Gaussian errors with ln sigma = a0 + features @ a.

    Negative log-likelihood per sample (constants dropped): 2 z + r^2 / 2 exp(-2 z), z = ln sigma:
    convex in (a0, a); plus a ridge penalty on the slopes in _FEATURE_SCALES units (a Gaussian
    prior of sd 1/sqrt(2 _RIDGE) on the change of ln sigma per physical step).
    """
    from scipy.optimize import minimize

    mu, design = _design(features)
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


def fit_log_sigma_and_motion(features: np.ndarray, gaps_m: np.ndarray,
                             r2: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(ln sigma0, slopes, motion_coef): maximum likelihood of isotropic 2-D Gaussian errors with variance
    v = exp(2 (a0 + features @ a)) + (c gap)^2, the same ridge on the slopes. Not convex in c: started from the
    convex fit without the gap (_fit_log_sigma) at several c, the best kept (c >= 0)."""
    from scipy.optimize import minimize

    log_sigma0, slopes = _fit_log_sigma(features, r2)
    g2 = np.asarray(gaps_m, np.float64) ** 2
    if not np.any(g2 > 0):
        return log_sigma0, slopes, 0.0
    mu, design = _design(features)
    start = np.concatenate([[log_sigma0 + float(np.sum(slopes * mu))], slopes * _FEATURE_SCALES])

    def nll(x: np.ndarray) -> tuple[float, np.ndarray]:
        a, log_c = x[:-1], x[-1]
        e2z = np.exp(2.0 * np.clip(design @ a, -50.0, 50.0))
        m2 = math.exp(2.0 * log_c) * g2
        v = e2z + m2
        dv = 1.0 / v - r2 / (2.0 * v * v)  # d nll / d v per sample
        value = float(np.sum(np.log(v) + r2 / (2.0 * v)) + _RIDGE * np.sum(a[1:] ** 2))
        grad_a = design.T @ (dv * 2.0 * e2z)
        grad_a[1:] += 2.0 * _RIDGE * a[1:]
        return value, np.concatenate([grad_a, [float(np.sum(dv * 2.0 * m2))]])

    best = None
    for c0 in (0.05, 0.2, 0.5):
        res = minimize(nll, np.concatenate([start, [math.log(c0)]]), jac=True, method="L-BFGS-B",
                       bounds=[(None, None)] * len(start) + [(math.log(1e-4), math.log(10.0))])
        if best is None or res.fun < best.fun:
            best = res
    a, c = best.x[:-1], math.exp(best.x[-1])
    without = nll(np.concatenate([start, [math.log(1e-4)]]))[0]
    if without <= best.fun:  # the gap explains nothing the frame's features do not
        return log_sigma0, slopes, 0.0
    slopes = a[1:] / _FEATURE_SCALES
    return float(a[0] - np.sum(slopes * mu)), slopes, float(c)


def fit_yaw_power(e2: np.ndarray, raw: np.ndarray) -> float:
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
