"""The checks a frame's inputs pass before any image is decoded: the panorama's stamp and the GNSS fix.

Each check returns what the localizer needs or raises FrameRejected with the Reason the Estimate carries
(BAD_STAMP, FUTURE_STAMP, OUT_OF_ORDER, NO_FIX, BAD_FIX): bad input ends a frame with a reason, never a
crash. The localizer runs them first on every frame, and Localizer.fix_problem runs the fix's alone for
the node, which takes its datum only from a fix that passes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.estimate import (
    NAVSAT_COVARIANCE_TYPES, NAVSAT_STATUS_NO_FIX, NAVSAT_STATUS_RANGE, NAVSAT_STATUS_UNKNOWN, Fix, Reason,
    finite_or_none, fix_covariance_enu_m2,
)


class FrameRejected(Exception):
    """A frame that ends with a reason (the localizer's control flow, and the checks below)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_stamp(stamp_s: Any, now_s: float, last_stamp_s: float | None, *, max_future_s: float) -> float:
    """The panorama's stamp (s), or FrameRejected: not finite or negative, more than max_future_s ahead of
    now_s, or not after last_stamp_s (the previous frame's, None for the first)."""
    stamp = finite_or_none(stamp_s)
    if stamp is None or stamp < 0.0:
        raise FrameRejected(Reason.BAD_STAMP, f"panorama stamp {stamp_s!r} is not a finite time >= 0 s")
    if stamp > now_s + max_future_s:
        raise FrameRejected(Reason.FUTURE_STAMP, f"panorama stamp {stamp:.3f} s is {stamp - now_s:.3f} s in the "
                                                 f"future (more than max_future_s {max_future_s:g} s)")
    if last_stamp_s is not None and stamp <= last_stamp_s:
        raise FrameRejected(Reason.OUT_OF_ORDER, f"panorama stamp {stamp:.3f} s is not after the previous frame's "
                                                 f"{last_stamp_s:.3f} s")
    return stamp


def check_fix(fix: Any, now_s: float, *, max_future_s: float, default_fix_sigma_m: float) -> np.ndarray:
    """The fix's horizontal covariance (2, 2) ENU m^2, or FrameRejected (NO_FIX, BAD_FIX, FUTURE_STAMP)."""
    if not isinstance(fix, Fix):
        raise FrameRejected(Reason.BAD_FIX, f"fix must be a localizer.Fix, got {type(fix).__name__}")
    status = fix.status
    if isinstance(status, bool) or not isinstance(status, (int, np.integer)):
        raise FrameRejected(Reason.BAD_FIX, f"fix status must be an integer (NavSatStatus), got {status!r}")
    if status in (NAVSAT_STATUS_NO_FIX, NAVSAT_STATUS_UNKNOWN):
        name = "STATUS_NO_FIX" if status == NAVSAT_STATUS_NO_FIX else "STATUS_UNKNOWN"
        raise FrameRejected(Reason.NO_FIX, f"GNSS reports {name}: no position to use")
    if not NAVSAT_STATUS_RANGE[0] <= status <= NAVSAT_STATUS_RANGE[1]:
        raise FrameRejected(Reason.BAD_FIX, f"fix status {status} is not a NavSatStatus value "
                                            f"({NAVSAT_STATUS_RANGE[0]}..{NAVSAT_STATUS_RANGE[1]})")
    if fix.covariance_type is not None and fix.covariance_type not in NAVSAT_COVARIANCE_TYPES:
        raise FrameRejected(Reason.BAD_FIX, f"position_covariance_type {fix.covariance_type} is not a NavSatFix "
                                            f"value ({min(NAVSAT_COVARIANCE_TYPES)}..{max(NAVSAT_COVARIANCE_TYPES)})")
    try:
        geo.check_latlon(float(fix.lat_deg), float(fix.lon_deg))
    except (geo.GeoError, TypeError, ValueError) as exc:
        raise FrameRejected(Reason.BAD_FIX, f"fix position is invalid: {exc}") from None
    if not geo.UTM_LAT_MIN_DEG <= float(fix.lat_deg) <= geo.UTM_LAT_MAX_DEG:
        raise FrameRejected(Reason.BAD_FIX, f"fix latitude {float(fix.lat_deg):g} is outside UTM's "
                                            f"[{geo.UTM_LAT_MIN_DEG:g}, {geo.UTM_LAT_MAX_DEG:g}] degrees, where tiles "
                                            f"exist")
    if finite_or_none(fix.stamp_s) is None:
        raise FrameRejected(Reason.BAD_FIX, f"fix stamp must be a finite number of seconds, got {fix.stamp_s!r}")
    if fix.stamp_s > now_s + max_future_s:
        raise FrameRejected(Reason.FUTURE_STAMP, f"fix stamp {fix.stamp_s:.3f} s is {fix.stamp_s - now_s:.3f} s in "
                                                 f"the future (more than max_future_s {max_future_s:g} s)")
    try:
        return fix_covariance_enu_m2(fix, default_fix_sigma_m)
    except ValueError as exc:
        raise FrameRejected(Reason.BAD_FIX, str(exc)) from None
