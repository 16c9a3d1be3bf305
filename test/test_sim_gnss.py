"""GNSS error models: VIGOR's uniform protocol and the urban Gauss-Markov model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossview_ros.geo import latlon_to_utm, offset_enu_m
from crossview_ros.sim.city import StreetGraph
from crossview_ros.sim.drive import DriveConfig, plan_drive
from crossview_ros.sim.gnss import UniformGnss, UrbanGnss, simulate_gnss, simulate_gnss_at

# 2.6 deg east of zone 33's central meridian at 60 N: grid convergence ~2.2 deg, so an error
# box that was not turned from ENU into the grid would stick out of [-100, 100] m by ~4 m.
LAT0, LON0 = 59.86, 17.6
E0, N0, ZONE = latlon_to_utm(LAT0, LON0)


def stationary(n: int, rate_hz: float = 1.0):
    t = 1_700_000_000.0 + np.arange(n) / rate_hz
    return t, np.full(n, E0), np.full(n, N0)


def quiet_urban(**kw) -> UrbanGnss:
    """The urban model with only what a test looks at switched on."""
    base = dict(white_sigma_m=0.0, multipath_rate_hz=0.0, dropout_rate_hz=0.0)
    base.update(kw)
    return UrbanGnss(**base)


def enu_error(track):
    """True error of each fix in local ENU metres, measured from lat/lon (not from our arrays)."""
    return offset_enu_m(track.true_lat_deg, track.true_lon_deg, track.lat_deg, track.lon_deg)


def lag1_correlation_time(x: np.ndarray, dt: float) -> float:
    x = x - x.mean()
    rho = np.dot(x[:-1], x[1:]) / np.dot(x, x)
    return -dt / math.log(rho)


def test_uniform_protocol_in_bounds_and_uniform():
    track = simulate_gnss_at(*stationary(20000), ZONE, UniformGnss(), rng=1)
    de, dn = enu_error(track)
    for err in (de, dn):
        assert np.abs(err).max() <= 100.0 + 0.1  # 0.1 m: UTM scale factor, ignored by design
        assert np.abs(err).max() > 99.0
        assert abs(err.mean()) < 1.5  # standard error 0.41 m
        assert err.std() == pytest.approx(100.0 / math.sqrt(3.0), rel=0.02)
        counts, _ = np.histogram(err, bins=10, range=(-100.0, 100.0))
        np.testing.assert_allclose(counts, 2000, rtol=0.1)
        assert abs(np.corrcoef(err[:-1], err[1:])[0, 1]) < 0.05  # independent per fix
    assert abs(np.corrcoef(de, dn)[0, 1]) < 0.05  # independent per axis
    np.testing.assert_allclose(track.error_e_m, de, atol=0.1)
    assert track.valid.all() and track.published.all()
    np.testing.assert_allclose(track.sigma_e_m, 100.0 / math.sqrt(3.0))


@pytest.mark.parametrize("depth", [0.0, 1.5])
def test_urban_bias_sigma_and_correlation_time_match_parameters(depth):
    model = quiet_urban(bias_sigma_open_m=2.0, bias_sigma_per_canyon_m=3.0, correlation_time_s=20.0)
    # 100 000 s = 5000 tau: std of the sigma estimate ~1 %, of the tau estimate ~2 %
    track = simulate_gnss_at(
        *stationary(100_000),
        ZONE,
        model,
        rng=2,
        canyon_depth=lambda e, n: np.full(np.shape(e), depth),
    )
    expected_sigma = math.sqrt(2.0**2 + (3.0 * depth) ** 2)
    de, dn = enu_error(track)
    for bias, measured in ((track.bias_e_m, de), (track.bias_n_m, dn)):
        np.testing.assert_allclose(measured, bias, atol=0.02)  # only the bias is on
        assert bias.std() == pytest.approx(expected_sigma, rel=0.10)
        assert lag1_correlation_time(bias, 1.0) == pytest.approx(20.0, rel=0.10)
        # the autocorrelation at lag tau is exp(-1)
        b = bias - bias.mean()
        assert np.dot(b[:-20], b[20:]) / np.dot(b, b) == pytest.approx(math.exp(-1.0), abs=0.05)


def test_bias_sigma_grows_with_canyon_depth():
    model = quiet_urban(correlation_time_s=10.0)
    rows = []
    for depth in (0.0, 0.5, 1.0, 2.0):
        track = simulate_gnss_at(
            *stationary(30_000),
            ZONE,
            model,
            rng=3,
            canyon_depth=lambda e, n, d=depth: np.full(np.shape(e), d),
        )
        rows.append(np.hypot(track.bias_e_m.std(), track.bias_n_m.std()) / math.sqrt(2.0))
        assert rows[-1] == pytest.approx(float(model.bias_sigma_m(depth)), rel=0.1)
    assert np.all(np.diff(rows) > 0.0)


def test_bias_follows_the_canyon_along_the_path():
    model = quiet_urban(correlation_time_s=5.0)
    n = 40_000
    t = 1_700_000_000.0 + np.arange(n)
    e = E0 + np.where(np.arange(n) < n // 2, 0.0, 500.0)  # open square, then a deep canyon
    track = simulate_gnss_at(
        t,
        e,
        np.full(n, N0),
        ZONE,
        model,
        rng=4,
        canyon_depth=lambda e_m, n_m: np.where(e_m > E0 + 250.0, 2.5, 0.0),
    )
    open_sky, canyon = track.bias_e_m[: n // 2], track.bias_e_m[n // 2 + 100 :]
    assert open_sky.std() == pytest.approx(model.bias_sigma_open_m, rel=0.1)
    assert canyon.std() == pytest.approx(float(model.bias_sigma_m(2.5)), rel=0.1)
    np.testing.assert_array_equal(track.canyon_depth[n // 2 :], 2.5)


def test_total_error_and_optimistic_reported_sigma():
    model = UrbanGnss(dropout_rate_hz=0.0, reported_sigma_scale=0.5)
    track = simulate_gnss_at(
        *stationary(100_000),
        ZONE,
        model,
        rng=5,
        canyon_depth=lambda e, n: np.full(np.shape(e), 1.0),
    )
    de, dn = enu_error(track)
    true_var = 0.5 * (de.var() + dn.var())
    # the model's stated sigma (bias + stationary multipath + white) is the empirical one
    assert math.sqrt(true_var) == pytest.approx(float(track.true_sigma_m[0]), rel=0.1)
    reported_var = np.mean(track.sigma_e_m**2)
    assert reported_var < true_var
    assert reported_var / true_var == pytest.approx(0.25, rel=0.2)
    # multipath jumps: the error minus the Gauss-Markov bias and white noise has steps
    steps = np.abs(np.diff(track.error_e_m - track.bias_e_m))
    assert np.sum(steps > 5.0) > 100


def test_dropouts_produce_no_message():
    model = quiet_urban(dropout_rate_hz=1.0 / 60.0, dropout_min_s=3.0, dropout_max_s=10.0)
    track = simulate_gnss_at(*stationary(20_000), ZONE, model, rng=6)
    pub = track.stamp_s[track.published]
    assert np.array_equal(track.published, track.valid)
    gaps = np.diff(pub)
    missing = np.round(gaps[gaps > 1.5]) - 1.0  # epochs without a message in each gap
    # about one onset per 60 s of reception: 20 000 s / (60 + 6.5) s
    assert len(missing) == pytest.approx(20_000 / 66.5, rel=0.2)
    # a dropout of D s in [3, 10] silences ceil(D) epochs; back-to-back dropouts merge (rarely)
    assert missing.min() >= 4.0
    assert np.mean(missing <= 10.0) > 0.95
    assert missing.sum() == np.sum(~track.valid)
    assert np.all(np.isnan(track.lat_deg[~track.valid])) and np.all(
        np.isfinite(track.lat_deg[track.valid])
    )

    flagged = simulate_gnss_at(
        *stationary(20_000), ZONE, quiet_urban(**{**model.__dict__, "publish_no_fix": True}), rng=6
    )
    assert flagged.published.all()
    np.testing.assert_array_equal(flagged.valid, track.valid)


def test_dropouts_more_frequent_in_canyons():
    model = quiet_urban(dropout_rate_hz=1.0 / 200.0, dropout_min_s=1.0, dropout_max_s=2.0)
    open_sky = simulate_gnss_at(*stationary(40_000), ZONE, model, rng=7)
    canyon = simulate_gnss_at(
        *stationary(40_000), ZONE, model, rng=7, canyon_depth=lambda e, n: np.full(np.shape(e), 3.0)
    )

    def onsets(track):
        return int(np.sum(track.valid[:-1] & ~track.valid[1:]))

    assert onsets(canyon) == pytest.approx(4.0 * onsets(open_sky), rel=0.2)


def test_simulate_gnss_along_a_drive_is_seeded():
    g = StreetGraph(
        np.array([[E0, N0], [E0 + 150.0, N0], [E0 + 150.0, N0 + 120.0]]),
        np.array([[0, 1], [1, 2]]),
        np.array([10.0, 10.0]),
        np.array([3.0, 3.0]),
        np.array([1, 1]),
    )
    drive = plan_drive(g, ZONE, DriveConfig(mode="walk", duration_s=100.0, rate_hz=5.0, seed=1))
    model = UrbanGnss(rate_hz=2.0)
    a, b = simulate_gnss(drive, model, 9), simulate_gnss(drive, model, 9)
    c = simulate_gnss(drive, model, 10)
    np.testing.assert_allclose(np.diff(a.stamp_s), 0.5, atol=1e-6)
    assert a.stamp_s[0] == drive.stamp_s[0] and len(a) == 201
    truth = drive.sample(a.stamp_s)
    np.testing.assert_allclose(a.true_easting_m, truth["easting_m"])
    np.testing.assert_array_equal(a.error_e_m, b.error_e_m)
    np.testing.assert_array_equal(a.lat_deg, b.lat_deg)
    assert not np.allclose(a.error_e_m, c.error_e_m)


def test_invalid_models_refused():
    with pytest.raises(ValueError, match="unknown UrbanGnss keys"):
        UrbanGnss.from_dict({"tau": 3.0})
    with pytest.raises(ValueError):
        UrbanGnss(correlation_time_s=0.0)
    with pytest.raises(ValueError):
        UrbanGnss(dropout_min_s=5.0, dropout_max_s=1.0)
    with pytest.raises(ValueError, match="increasing"):
        simulate_gnss_at(
            np.array([2.0, 1.0]), np.full(2, E0), np.full(2, N0), ZONE, UniformGnss(), 0
        )
