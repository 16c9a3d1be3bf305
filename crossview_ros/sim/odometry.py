"""Wheel odometry along a drive: noisy speed and yaw rate integrated in the odom frame.

Odometry drifts the way real wheel odometry does: a wheel-radius scale error and a track-width
scale error on the yaw rate and a constant yaw-rate bias, drawn once per drive, plus white
noise on both measurements. The odom frame is the first pose of the drive (x forward, y left,
REP-105 odom -> base_link); the reported covariance propagates only the white noise, so, like
real odometry covariances, it is optimistic over long runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from crossview_ros.config import check_known_keys
from crossview_ros.geo import wrap_angle_rad
from crossview_ros.sim.drive import Drive


@dataclass
class OdometryConfig:
    """Wheel odometry errors; all errors are drawn from the rng given to wheel_odometry."""

    rate_hz: float = 50.0  # odometry message rate
    speed_scale_sigma: float = (
        0.02  # wheel-radius scale error, drawn once per drive (1-sigma, relative)
    )
    speed_noise_mps: float = 0.02  # white noise on the measured speed while moving
    yaw_rate_bias_sigma_radps: float = 5e-4  # constant yaw-rate bias, drawn once (~0.03 deg/s)
    yaw_rate_noise_radps: float = 0.01  # white noise on the measured yaw rate
    yaw_rate_scale_sigma: float = 0.01  # track-width scale error on the yaw rate, drawn once

    def __post_init__(self) -> None:
        if not self.rate_hz > 0.0:
            raise ValueError(f"OdometryConfig.rate_hz must be positive, got {self.rate_hz}")
        for f in fields(self):
            if getattr(self, f.name) < 0.0:
                raise ValueError(f"OdometryConfig.{f.name} must be >= 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OdometryConfig:
        """Strict: unknown keys raise."""
        check_known_keys(cls, values)
        return cls(**values)


@dataclass
class Odometry:
    """Dead-reckoned pose of base_link in the odom frame (= the first pose of the drive).

    The covariance is what a wheel-odometry driver would report: the configured noise
    propagated through the motion model, without the per-drive scale and bias errors, so it
    grows with distance but, like real odometry covariances, is optimistic over long runs.
    """

    stamp_s: np.ndarray  # (N,) Unix seconds
    x_m: np.ndarray  # (N,) odom frame, x = forward at the start
    y_m: np.ndarray  # (N,) odom frame, y = left at the start
    yaw_rad: np.ndarray  # (N,) odom frame, wrapped to (-pi, pi]
    speed_mps: np.ndarray  # (N,) measured forward speed (base_link)
    yaw_rate_radps: np.ndarray  # (N,) measured yaw rate
    pose_cov: np.ndarray  # (N, 3, 3) covariance of (x, y, yaw), m^2, m*rad, rad^2
    twist_var: np.ndarray  # (N, 2) variance of (speed, yaw rate)
    speed_scale_error: float  # drawn per-drive errors, kept for analysis
    yaw_rate_bias_radps: float
    yaw_rate_scale_error: float

    def __len__(self) -> int:
        return int(self.stamp_s.shape[0])


def wheel_odometry(
    drive: Drive, rng: np.random.Generator | int, config: OdometryConfig | None = None
) -> Odometry:
    """Integrate noisy wheel speed and yaw rate (scale errors, yaw-rate bias, white noise)."""
    config = config if config is not None else OdometryConfig()
    rng = np.random.default_rng(rng)
    t0, t1 = float(drive.stamp_s[0]), float(drive.stamp_s[-1])
    stamps = t0 + np.arange(int(math.floor((t1 - t0) * config.rate_hz + 1e-9)) + 1) / config.rate_hz
    truth = drive.sample(stamps)
    n = len(stamps)
    scale = float(rng.normal(0.0, config.speed_scale_sigma))
    bias = float(rng.normal(0.0, config.yaw_rate_bias_sigma_radps))
    yaw_scale = float(rng.normal(0.0, config.yaw_rate_scale_sigma))
    moving = truth["speed_mps"] > 1e-3  # encoders read exactly zero at rest
    v = (1.0 + scale) * truth["speed_mps"] + moving * rng.normal(0.0, config.speed_noise_mps, n)
    w = (
        (1.0 + yaw_scale) * truth["yaw_rate_radps"]
        + bias
        + rng.normal(0.0, config.yaw_rate_noise_radps, n)
    )

    dt = np.diff(stamps)
    # midpoint integration of the unicycle model
    yaw = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * dt)])
    yaw_mid = 0.5 * (yaw[1:] + yaw[:-1])
    step = 0.5 * (v[1:] + v[:-1]) * dt
    x = np.concatenate([[0.0], np.cumsum(step * np.cos(yaw_mid))])
    y = np.concatenate([[0.0], np.cumsum(step * np.sin(yaw_mid))])

    var_v = config.speed_noise_mps**2
    var_w = config.yaw_rate_noise_radps**2
    # P <- F P F^T + G diag(var_v, var_w) G^T with F = d(x, y, yaw)+/d(x, y, yaw) and
    # G = d(x, y, yaw)+/d(v, w), written out in scalars (this loop runs at the odometry rate)
    cov = np.zeros((n, 3, 3))
    p00 = p01 = p02 = p11 = p12 = p22 = 0.0
    cos_mid, sin_mid = np.cos(yaw_mid).tolist(), np.sin(yaw_mid).tolist()
    for i, (c, s, d, ds) in enumerate(zip(cos_mid, sin_mid, dt.tolist(), step.tolist()), start=1):
        a, b = -ds * s, ds * c
        p00, p01, p11 = (
            p00 + 2.0 * a * p02 + a * a * p22 + c * c * d * d * var_v,
            p01 + a * p12 + b * p02 + a * b * p22 + c * s * d * d * var_v,
            p11 + 2.0 * b * p12 + b * b * p22 + s * s * d * d * var_v,
        )
        p02, p12 = p02 + a * p22, p12 + b * p22
        p22 = p22 + d * d * var_w
        cov[i] = ((p00, p01, p02), (p01, p11, p12), (p02, p12, p22))
    return Odometry(
        stamp_s=stamps,
        x_m=x,
        y_m=y,
        yaw_rad=np.asarray(wrap_angle_rad(yaw)),
        speed_mps=v,
        yaw_rate_radps=w,
        pose_cov=cov,
        twist_var=np.tile([var_v, var_w], (n, 1)),
        speed_scale_error=scale,
        yaw_rate_bias_radps=bias,
        yaw_rate_scale_error=yaw_scale,
    )
