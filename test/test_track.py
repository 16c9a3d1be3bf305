"""The grid filter's state (crossview_ros.matchers.bev_grid.Belief): prediction and the prior it gives,
checked against moments and values computed by hand. numpy only, like the runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossview_ros.matchers.bev_grid import Belief


def point_belief(shape=(40, 50), at=(17, 31), spacing_m=2.0, elsewhere=-np.inf) -> Belief:
    """All the mass at one position; `elsewhere` (finite) makes every position part of the support."""
    log_p = np.full(shape, elsewhere)
    log_p[at] = 0.0
    return Belief(log_p, corner_e_m=1000.0, corner_n_m=5000.0, spacing_m=spacing_m)


def prior_on_grid(track, pad: int):
    """The prior's probability per position (its floor taken off) on the belief's grid, padded by `pad`
    positions each side, and the grid's northings (rows) and eastings (columns)."""
    h, w = track.weights.shape
    rows = track.corner_n_m - np.arange(-pad, h + pad) * track.spacing_m
    cols = track.corner_e_m + np.arange(-pad, w + pad) * track.spacing_m
    return np.exp(track.log_density(cols[None, :], rows[:, None])) - track.floor, rows, cols


def test_prediction_keeps_the_mass_and_spreads_it_by_sigma():
    b = point_belief()
    sigma_m, weight = 6.0, 0.1  # 3 grid steps
    track = b.predict(sigma_m, weight)
    p, rows, cols = prior_on_grid(track, pad=20)
    assert p.sum() == pytest.approx(1 - weight, rel=1e-9)  # the mixture off the belief's grid is kept
    w = p / p.sum()
    mean_n, mean_e = (w.sum(1) * rows).sum(), (w.sum(0) * cols).sum()
    want_e, want_n = 1000.0 + 31 * 2.0, 5000.0 - 17 * 2.0
    assert (mean_e, mean_n) == pytest.approx((want_e, want_n), abs=1e-9)
    var_e = (w.sum(0) * (cols - mean_e) ** 2).sum()
    var_n = (w.sum(1) * (rows - mean_n) ** 2).sum()
    # a Gaussian sampled every sigma / 3 has the variance of the continuous one to well under 1 %
    assert var_e == pytest.approx(sigma_m ** 2, rel=0.01) and var_n == pytest.approx(sigma_m ** 2, rel=0.01)
    # the uniform share is spread over the belief's support (here its one position)
    assert track.floor == pytest.approx(weight / 1)


def test_track_prior_density_on_and_off_the_grid():
    b = point_belief(elsewhere=-80.0)
    sigma_m, spacing_m, u = 4.0, 2.0, 0.05
    track = b.predict(sigma_m, u)
    e0, n0 = 1000.0 + 31 * 2.0, 5000.0 - 17 * 2.0
    assert track.floor == pytest.approx(0.05 / (40 * 50))  # the uniform share over the whole support
    k = np.arange(-30, 31)
    per_position = np.sum(np.exp(-0.5 * (k * spacing_m / sigma_m) ** 2)) ** 2  # the sampled Gaussian's sum
    # (the other positions' e^-80 is below the floor's resolution)
    peak = track.log_density(np.array(e0), np.array(n0))
    assert float(peak) == pytest.approx(math.log((1 - u) / per_position + track.floor), rel=1e-9)
    # halfway between two positions: the Gaussian 1 m off its centre, not the mean of the two positions
    mid = track.log_density(np.array(e0 + 1.0), np.array(n0))
    want = (1 - u) * math.exp(-0.5 * (1.0 / sigma_m) ** 2) / per_position + track.floor
    assert float(mid) == pytest.approx(math.log(want), rel=1e-9)
    # far off the grid only the uniform share is left, and it is the smallest value anywhere
    far = track.log_density(np.array([e0 + 1e4]), np.array([n0]))
    assert far[0] == pytest.approx(math.log(track.floor))
    # the log-density ratio of the peak to a point 2 sigma east is the Gaussian's, e^2, up to the floor
    two_sigma = track.log_density(np.array(e0 + 8.0), np.array(n0))
    assert float(peak - two_sigma) == pytest.approx(2.0, abs=0.02)


def test_prediction_refuses_meaningless_settings():
    b = point_belief()
    for sigma, weight in ((0.0, 0.1), (1.0, 0.0), (1.0, 1.0), (-1.0, 0.5)):
        with pytest.raises(ValueError, match="predict needs"):
            b.predict(sigma, weight)
