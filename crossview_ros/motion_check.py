"""The MOTION gate (Localizer): an estimate must lie where odometry carries one published a few
seconds earlier.

Every single-frame gate judges a frame by itself and by its fix. A look-alike that holds the
estimate at one place while the platform drives on, or a slide the views repeat frame after frame,
passes them all: each frame agrees with the last, and the fix, during an outage carried by the
same odometry, is a weak witness. Over motion_check_s odometry's own displacement separates
them: the estimate then has to have moved as the platform did, within the two estimates'
published covariances and odometry's variance over the gap. The reference is the newest estimate
published at least motion_check_s and at most twice that before, so a wrong reference refuses
good frames for at most motion_check_s before none is left to compare with.

The same comparison, made softly with every estimate published over the last motion_check_s, is
the motion gap (gap_m) that the covariance and the protection level take in: how far the estimate
strays from where odometry carries the stream's recent fixes. A stream whose views hold the
estimate on one spot while the platform walks on, then jump (a street the views hardly tell apart
along its length), strays by metres on every frame, and its fixes deserve more than the confident
ones' sigma even where each frame looks sure. Refused estimates are left out: one wild estimate
the gates caught would otherwise mark the good frames after it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from crossview_ros.odometry import GridOdometry


@dataclass(frozen=True)
class _Published:
    stamp_s: float
    east_m: float
    north_m: float
    covariance_m2: np.ndarray  # (2, 2) on the tile set's grid


class MotionCheck:
    """The estimates published over the last 2 check_s and the test of a new one against them."""

    def __init__(self, check_s: float, max_d2: float) -> None:
        self.check_s, self.max_d2 = float(check_s), float(max_d2)
        self._history: deque[_Published] = deque()

    def clear(self) -> None:
        self._history.clear()

    def gap_m(self, odometry: GridOdometry | None, stamp_s: float, east_m: float, north_m: float) -> float | None:
        """The largest distance between the estimate at stamp_s (grid) and where odometry carries each estimate
        published over the last check_s. None: the check is off, there is no odometry, none published then,
        or odometry cannot carry any (not yet aligned with the grid)."""
        if odometry is None or not self.check_s > 0:
            return None
        carried = (_off_carried(odometry, p, stamp_s, east_m, north_m) for p in self._history
                   if 0 < stamp_s - p.stamp_s <= self.check_s)
        gaps = [math.hypot(*c[0]) for c in carried if c is not None]
        return max(gaps) if gaps else None

    def published(self, stamp_s: float, east_m: float, north_m: float, covariance_m2: np.ndarray) -> None:
        """Record a published estimate (grid position and covariance) and forget those too old to be a reference."""
        if not self.check_s > 0:
            return
        self._history.append(_Published(stamp_s, east_m, north_m, np.asarray(covariance_m2, np.float64)))
        while self._history and stamp_s - self._history[0].stamp_s > 2.0 * self.check_s:
            self._history.popleft()

    def refusal(self, odometry: GridOdometry | None, stamp_s: float, east_m: float, north_m: float,
                covariance_m2: np.ndarray) -> str | None:
        """Why an estimate at stamp_s (grid position and covariance) contradicts odometry, or None: also when
        the check is off, there is no odometry, no reference, or odometry cannot carry it."""
        if odometry is None or not self.check_s > 0:
            return None
        ref = next((p for p in reversed(self._history) if self.check_s <= stamp_s - p.stamp_s <= 2.0 * self.check_s),
                   None)
        if ref is None:
            return None
        carried = _off_carried(odometry, ref, stamp_s, east_m, north_m)
        if carried is None:
            return None
        gap, odometry_var_m2 = carried
        s = ref.covariance_m2 + np.asarray(covariance_m2, np.float64) + np.eye(2) * odometry_var_m2
        d2 = float(gap @ np.linalg.solve(s, gap))
        if d2 <= self.max_d2:
            return None
        return (f"estimate is {float(np.hypot(*gap)):.1f} m from where odometry carries the one published "
                f"{stamp_s - ref.stamp_s:.1f} s earlier: squared Mahalanobis distance {d2:.1f} > "
                f"max_motion_mahalanobis {self.max_d2:g}")


def _off_carried(odometry: GridOdometry, ref: _Published, stamp_s: float, east_m: float,
                 north_m: float) -> tuple[np.ndarray, float] | None:
    """The estimate at stamp_s (grid) minus where odometry carries a published one, and odometry's variance
    over the carry (m^2); None where odometry cannot carry it."""
    moved = odometry.carry(ref.east_m, ref.north_m, ref.stamp_s, stamp_s)
    if moved is None:
        return None
    return np.array([east_m - moved[0], north_m - moved[1]]), float(moved[2])
