"""Simulated GNSS fixes along a drive: VIGOR's uniform protocol and an urban error model.

Two models, one output (GnssTrack):

- UniformGnss, VIGOR's noisy-GPS protocol: an error uniform in [-h, h] m on each of the east and
  north axes, independent per fix (h = 100 m in the paper). Reported sigma = scale * h/sqrt(3).
- UrbanGnss, what a receiver between tall buildings does. Per axis (east, north), the error is

      e_k = b_k + m_k + w_k

  b: first-order Gauss-Markov bias with correlation time tau and a size that grows with the
     street-canyon depth c at the receiver: sigma_b^2 = sigma_open^2 + (k c)^2, propagated
     with the exact discretisation b_{k+1} = phi b_k + sqrt(1 - phi^2) sigma_b w_k,
     phi = exp(-dt/tau), started from its stationary distribution;
  m: multipath, Poisson events (rate lambda (1 + c)) that each add a Gaussian step offset which
     then decays with time constant tau_m;
  w: white noise.
  Dropouts start as Poisson events (rate mu (1 + c)) and last a uniformly drawn duration; the
  error processes keep running underneath. The reported sigma is optimistic: scale * the model's
  true per-axis sigma sqrt(sigma_b^2 + sigma_mp^2 + sigma_w^2), scale < 1, where
  sigma_mp^2 = lambda (1 + c) J^2 tau_m / 2 is the stationary multipath variance.

Dropouts: by default a dropout epoch produces no NavSatFix message at all (a receiver that
stops talking). With `publish_no_fix=True` the epoch is published with status STATUS_NO_FIX,
latitude/longitude NaN and covariance type UNKNOWN, which robot_localization's
navsat_transform and our node drop.

Errors are drawn in local ENU metres and turned into UTM grid offsets by the grid convergence
(geo.grid_convergence_rad); the UTM point scale factor (0.9996-1.001 in a zone) is ignored, an
error of at most 0.1 % of the offset, 10 cm on a 100 m error. Altitude is the flat city's
ground (ellipsoidal height `altitude_m` of the model); the urban model adds white noise of 1.5 x
its horizontal sigma, the uniform protocol leaves it exact (reported up sigma = horizontal).
Stamps are Unix seconds at the model's rate, starting with the drive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from crossview_ros.config import check_known_keys
from crossview_ros.geo import UTMZone, grid_convergence_rad, utm_to_latlon
from crossview_ros.sim.drive import Drive

CanyonDepth = Callable[
    [np.ndarray, np.ndarray], np.ndarray
]  # (easting_m, northing_m) -> height/width


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    check_known_keys(cls, values)
    return cls(**values)


@dataclass
class UniformGnss:
    """VIGOR's protocol: uniform error per axis, independent per fix."""

    half_width_m: float = 100.0  # error uniform in [-half_width_m, half_width_m] on east and north
    rate_hz: float = 1.0  # fix rate
    reported_sigma_scale: float = (
        1.0  # reported sigma = scale * half_width_m / sqrt(3) (1 = honest)
    )
    altitude_m: float = 0.0  # ellipsoidal height of the ground

    def __post_init__(self) -> None:
        if not (
            self.half_width_m >= 0.0 and self.rate_hz > 0.0 and self.reported_sigma_scale > 0.0
        ):
            raise ValueError(
                "UniformGnss needs half_width_m >= 0, rate_hz > 0, reported_sigma_scale > 0"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UniformGnss:
        return _from_dict(cls, values)


@dataclass
class UrbanGnss:
    """Urban receiver: canyon-dependent Gauss-Markov bias, multipath, white noise, dropouts."""

    rate_hz: float = 1.0  # fix rate
    bias_sigma_open_m: float = 1.5  # stationary bias sigma per axis under open sky
    bias_sigma_per_canyon_m: float = 4.0  # k: sigma_b^2 = open^2 + (k * canyon_depth)^2
    correlation_time_s: float = 30.0  # tau of the Gauss-Markov bias
    white_sigma_m: float = 0.5  # white noise per axis (0 = off)
    multipath_rate_hz: float = (
        1.0 / 120.0
    )  # jump onsets under open sky; x (1 + canyon_depth) (0 = off)
    multipath_jump_m: float = 6.0  # sigma per axis of one jump
    multipath_decay_s: float = 10.0  # time constant of a jump's decay
    dropout_rate_hz: float = (
        1.0 / 300.0
    )  # dropout onsets under open sky; x (1 + canyon_depth) (0 = off)
    dropout_min_s: float = 2.0  # dropout duration is uniform in [min, max]
    dropout_max_s: float = 15.0
    reported_sigma_scale: float = 0.5  # reported sigma = scale * true sigma; < 1 is optimistic
    publish_no_fix: bool = False  # dropouts: False = no message, True = STATUS_NO_FIX message
    altitude_m: float = 0.0  # ellipsoidal height of the ground

    def __post_init__(self) -> None:
        positive = ("rate_hz", "correlation_time_s", "multipath_decay_s", "reported_sigma_scale")
        for name in positive:
            if not getattr(self, name) > 0.0:
                raise ValueError(f"UrbanGnss.{name} must be positive, got {getattr(self, name)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                isinstance(value, float)
                and not (math.isfinite(value) and value >= 0.0)
                and f.name != "altitude_m"
            ):
                raise ValueError(f"UrbanGnss.{f.name} must be finite and >= 0, got {value}")
        if self.dropout_max_s < self.dropout_min_s:
            raise ValueError("UrbanGnss.dropout_max_s must be >= dropout_min_s")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> UrbanGnss:
        return _from_dict(cls, values)

    def bias_sigma_m(self, canyon_depth: np.ndarray) -> np.ndarray:
        """Stationary per-axis bias sigma at a canyon depth (height/width ratio, 0 = open)."""
        c = np.asarray(canyon_depth, dtype=np.float64)
        return np.sqrt(self.bias_sigma_open_m**2 + (self.bias_sigma_per_canyon_m * c) ** 2)

    def true_sigma_m(self, canyon_depth: np.ndarray) -> np.ndarray:
        """The model's per-axis error sigma (bias, stationary multipath and white noise)."""
        c = np.asarray(canyon_depth, dtype=np.float64)
        multipath_var = (
            self.multipath_rate_hz
            * (1.0 + c)
            * self.multipath_jump_m**2
            * self.multipath_decay_s
            / 2.0
        )
        return np.sqrt(self.bias_sigma_m(c) ** 2 + multipath_var + self.white_sigma_m**2)


GnssModel = UniformGnss | UrbanGnss


@dataclass
class GnssTrack:
    """All fix epochs of a drive; `published` says which of them become NavSatFix messages."""

    stamp_s: np.ndarray  # (N,) Unix seconds
    valid: np.ndarray  # (N,) bool, False during a dropout
    lat_deg: np.ndarray  # (N,) measured, NaN where not valid
    lon_deg: np.ndarray  # (N,)
    altitude_m: np.ndarray  # (N,) measured ellipsoidal height, NaN where not valid
    easting_m: np.ndarray  # (N,) measured UTM, NaN where not valid
    northing_m: np.ndarray  # (N,)
    sigma_e_m: np.ndarray  # (N,) reported 1-sigma, east (what the receiver claims)
    sigma_n_m: np.ndarray  # (N,) reported 1-sigma, north
    sigma_u_m: np.ndarray  # (N,) reported 1-sigma, up
    true_sigma_m: np.ndarray  # (N,) the model's true per-axis sigma
    error_e_m: np.ndarray  # (N,) true error, ENU metres (also defined during dropouts)
    error_n_m: np.ndarray  # (N,)
    bias_e_m: np.ndarray  # (N,) Gauss-Markov part of the error (zeros for the uniform model)
    bias_n_m: np.ndarray  # (N,)
    canyon_depth: np.ndarray  # (N,) canyon depth at the true position
    true_easting_m: np.ndarray  # (N,)
    true_northing_m: np.ndarray  # (N,)
    true_lat_deg: np.ndarray  # (N,)
    true_lon_deg: np.ndarray  # (N,)
    zone: UTMZone
    publish_no_fix: bool  # dropout epochs: True = STATUS_NO_FIX message, False = no message
    model: str  # "uniform" | "urban"

    def __len__(self) -> int:
        return int(self.stamp_s.shape[0])

    @property
    def published(self) -> np.ndarray:
        """(N,) bool: epochs that produce a NavSatFix message."""
        return self.valid | self.publish_no_fix


def _ar1(phi: list[float], innovation: list[float], x0: float) -> np.ndarray:
    """x_0 = x0, x_k = phi_{k-1} x_{k-1} + innovation_{k-1}."""
    out = [x0]
    x = x0
    for p, q in zip(phi, innovation):
        x = p * x + q
        out.append(x)
    return np.asarray(out)


def _dropouts(
    stamp_s: np.ndarray, rate_hz: np.ndarray, model: UrbanGnss, rng: np.random.Generator
) -> np.ndarray:
    """(N,) bool, True where a dropout is running; onsets are Poisson in each inter-fix gap."""
    n = len(stamp_s)
    dt = np.diff(stamp_s, prepend=stamp_s[0] - 1.0 / model.rate_hz)
    onset = rng.random(n) < -np.expm1(-rate_hz * dt)
    duration = rng.uniform(model.dropout_min_s, model.dropout_max_s, n)
    out = np.zeros(n, dtype=bool)
    until = -math.inf
    for i, (t, start, dur) in enumerate(zip(stamp_s.tolist(), onset.tolist(), duration.tolist())):
        if t >= until and start:
            until = t + dur
        out[i] = t < until
    return out


def _canyon_depths(canyon_depth: CanyonDepth | None, e_true: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """The street-canyon depth at each true position (zeros without a canyon field)."""
    if canyon_depth is None:
        return np.zeros(len(e_true))
    depth = np.broadcast_to(np.asarray(canyon_depth(e_true, n_true), dtype=np.float64), (len(e_true),)).copy()
    if not np.all(np.isfinite(depth) & (depth >= 0.0)):
        raise ValueError("canyon_depth must return finite values >= 0")
    return depth


def _urban_errors(t: np.ndarray, depth: np.ndarray, model: UrbanGnss,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(2, n) ENU position errors and their slow bias part: a first-order Gauss-Markov bias that
    grows with canyon depth, multipath jumps that decay, white noise."""
    n = len(t)
    dt = np.diff(t)
    phi = np.exp(-dt / model.correlation_time_s)
    sigma_b = model.bias_sigma_m(depth)
    bias = np.empty((2, n))
    multipath = np.empty((2, n))
    decay = np.exp(-dt / model.multipath_decay_s).tolist()
    mp_rate = model.multipath_rate_hz * (1.0 + depth)
    for axis in range(2):
        w = rng.standard_normal(n)
        innovation = np.sqrt(-np.expm1(-2.0 * dt / model.correlation_time_s)) * sigma_b[1:] * w[1:]
        bias[axis] = _ar1(phi.tolist(), innovation.tolist(), float(sigma_b[0] * w[0]))
        jumps = rng.poisson(mp_rate[1:] * dt)
        jump_size = rng.normal(0.0, model.multipath_jump_m * np.sqrt(np.maximum(jumps, 1))) * (jumps > 0)
        multipath[axis] = _ar1(decay, jump_size.tolist(), 0.0)
    white = rng.normal(0.0, model.white_sigma_m, size=(2, n))
    return bias + multipath + white, bias


def simulate_gnss_at(
    stamp_s: np.ndarray,
    easting_m: np.ndarray,
    northing_m: np.ndarray,
    zone: UTMZone,
    model: GnssModel,
    rng: np.random.Generator | int,
    canyon_depth: CanyonDepth | None = None,
) -> GnssTrack:
    """Fixes of a receiver whose true UTM position at `stamp_s` (increasing) is given."""
    rng = np.random.default_rng(rng)
    t = np.asarray(stamp_s, dtype=np.float64)
    e_true = np.asarray(easting_m, dtype=np.float64)
    n_true = np.asarray(northing_m, dtype=np.float64)
    n = len(t)
    if n == 0 or e_true.shape != t.shape or n_true.shape != t.shape:
        raise ValueError("stamp_s, easting_m and northing_m must be non-empty and of one shape")
    if n > 1 and not np.all(np.diff(t) > 0.0):
        raise ValueError("GNSS stamps must be strictly increasing")
    lat_true, lon_true = utm_to_latlon(e_true, n_true, zone)
    lat_true, lon_true = np.asarray(lat_true), np.asarray(lon_true)
    depth = _canyon_depths(canyon_depth, e_true, n_true)
    if isinstance(model, UniformGnss):
        err = rng.uniform(-model.half_width_m, model.half_width_m, size=(2, n))
        bias = np.zeros((2, n))
        true_sigma = np.full(n, model.half_width_m / math.sqrt(3.0))
        valid = np.ones(n, dtype=bool)
        publish_no_fix = False
        name = "uniform"
        vertical_sigma = np.zeros(n)  # the protocol perturbs the horizontal position only
    elif isinstance(model, UrbanGnss):
        err, bias = _urban_errors(t, depth, model, rng)
        true_sigma = model.true_sigma_m(depth)
        valid = ~_dropouts(t, model.dropout_rate_hz * (1.0 + depth), model, rng)
        publish_no_fix = model.publish_no_fix
        name = "urban"
        vertical_sigma = 1.5 * true_sigma
    else:
        raise TypeError(f"unknown GNSS model {type(model).__name__}; use UniformGnss or UrbanGnss")

    # ENU error -> UTM grid offset: v_grid = R(theta) v_enu (scale factor ignored, see module doc)
    theta = np.asarray(grid_convergence_rad(lat_true, lon_true, zone))
    c, s = np.cos(theta), np.sin(theta)
    e_meas = e_true + c * err[0] - s * err[1]
    n_meas = n_true + s * err[0] + c * err[1]
    lat, lon = utm_to_latlon(e_meas, n_meas, zone)
    reported = model.reported_sigma_scale * true_sigma
    nan = np.where(valid, 0.0, np.nan)
    return GnssTrack(
        stamp_s=t,
        valid=valid,
        lat_deg=np.asarray(lat) + nan,
        lon_deg=np.asarray(lon) + nan,
        altitude_m=model.altitude_m + vertical_sigma * rng.standard_normal(n) + nan,
        easting_m=e_meas + nan,
        northing_m=n_meas + nan,
        sigma_e_m=reported,
        sigma_n_m=reported.copy(),
        sigma_u_m=np.maximum(1.5 * model.reported_sigma_scale * vertical_sigma, reported),
        true_sigma_m=true_sigma,
        error_e_m=err[0],
        error_n_m=err[1],
        bias_e_m=bias[0],
        bias_n_m=bias[1],
        canyon_depth=depth,
        true_easting_m=e_true,
        true_northing_m=n_true,
        true_lat_deg=lat_true,
        true_lon_deg=lon_true,
        zone=zone,
        publish_no_fix=publish_no_fix,
        model=name,
    )


def simulate_gnss(
    drive: Drive,
    model: GnssModel,
    rng: np.random.Generator | int,
    canyon_depth: CanyonDepth | None = None,
) -> GnssTrack:
    """Fixes at `model.rate_hz` over a drive, from its first stamp on."""
    t0, t1 = float(drive.stamp_s[0]), float(drive.stamp_s[-1])
    stamps = t0 + np.arange(int(math.floor((t1 - t0) * model.rate_hz + 1e-9)) + 1) / model.rate_hz
    truth = drive.sample(stamps)
    return simulate_gnss_at(
        stamps, truth["easting_m"], truth["northing_m"], drive.zone, model, rng, canyon_depth
    )
