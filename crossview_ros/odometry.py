"""Odometry between frames: the motion the track moves its belief by, instead of a random walk.

A grid filter without odometry must assume the platform may have gone anywhere within
speed x dt, so a look-alike a few tens of metres away stays reachable and the belief it holds
never narrows below that walk. Wheel or visual odometry (nav_msgs/Odometry, or
robot_localization's odometry/filtered) says how far and which way the platform went, to a few
per cent. Two pieces:

- OdometryBuffer: the odom-frame poses as they arrive (thread-safe: the node's executor adds, its
  worker reads), interpolated at frame stamps; the displacement between two frames in the body
  frame of the first, with a variance from the poses' covariances and a floor for scale errors
  that odometry covariances leave out (they are optimistic over long runs).
- OdomAlignment: the odom frame's rotation onto the tile grid (yaw_grid = yaw_odom + offset),
  voted by the frames' own bearings and by the GNSS course (the fixes' displacement against
  odometry's over COURSE_MIN_M of travel, as navsat_transform would take a heading; independent of
  vision, it settles a model that sees a street the wrong way round). The vote is a robust mode
  over a window, so a minority of flipped or wrong votes cannot move it; until enough votes agree
  there is no alignment, and the track uses the displacement's length only (a random walk).

GridOdometry puts both together for the matcher: motion_grid(t0, t1) is the displacement on the
grid (east, north) with its variance, or None where odometry has nothing to say.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossview_ros.geo import wrap_angle_rad

ODOM_SCALE_SIGMA = 0.05  # relative 1-sigma on the distance travelled that the reported covariance leaves out
ODOM_FLOOR_SIGMA_M = 0.05  # absolute 1-sigma per axis of any displacement
ODOM_BUFFER_S = 60.0  # odometry older than the newest message by more than this is forgotten
ODOM_LEAD_S = 5.0  # how far odometry may run ahead of the frames whose look-back the buffer must still cover
COURSE_MIN_M = 20.0  # a GNSS course vote needs this much travel by odometry between its two fixes
COURSE_MAX_SIGMA_RAD = math.radians(25.0)  # courses less certain than this do not vote (VIGOR's +-100 m fixes)
VISION_VOTE_SIGMA_RAD = math.radians(15.0)  # what one frame's bearing vote is taken to be worth


@dataclass(frozen=True)
class OdomPose:
    """base_link in the odom frame at one stamp."""

    stamp_s: float
    x_m: float
    y_m: float
    yaw_rad: float  # unwrapped along the buffer (continuous), CCW from the odom frame's x axis
    variance_m2: float  # per-axis position variance as reported (mean of the x and y variances)


@dataclass(frozen=True)
class Motion:
    """How the platform moved between two stamps, by odometry."""

    forward_m: float  # displacement along the body x axis at the first stamp
    left_m: float  # along the body y axis at the first stamp
    dyaw_rad: float  # yaw change, CCW
    variance_m2: float  # per-axis variance of the displacement
    yaw_start_odom_rad: float  # odom-frame yaw at the first stamp

    @property
    def distance_m(self) -> float:
        return math.hypot(self.forward_m, self.left_m)


@dataclass(frozen=True)
class GridMotion:
    """A Motion on the tile grid: the displacement (east, north), or only its length when the odom frame
    is not aligned with the grid yet (direction_known False: east = north = 0)."""

    east_m: float
    north_m: float
    variance_m2: float  # per axis
    direction_known: bool
    distance_m: float


def pose_variance_m2(pose_covariance: Any) -> float:
    """Mean of the x and y variances of a 6x6 (36 values, row-major) pose covariance; 0 when absent or bad."""
    if pose_covariance is None:
        return 0.0
    c = np.asarray(pose_covariance, np.float64).reshape(-1)
    if c.size != 36 or not np.all(np.isfinite(c[[0, 7]])):
        return 0.0
    return float(max(0.5 * (c[0] + c[7]), 0.0))


class OdometryBuffer:
    """Odom-frame poses in stamp order, interpolated at frame stamps."""

    def __init__(self, max_age_s: float, horizon_s: float = ODOM_BUFFER_S) -> None:
        self.max_age_s = float(max_age_s)
        self.horizon_s = float(horizon_s)
        self._poses: deque[OdomPose] = deque()
        self._stamps: deque[float] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._poses)

    def clear(self) -> None:
        with self._lock:
            self._poses.clear()
            self._stamps.clear()

    def add(self, stamp_s: float, x_m: float, y_m: float, yaw_rad: float, pose_covariance: Any = None) -> str | None:
        """Append one pose; a problem (non-finite, not after the last stamp) comes back as text and the
        pose is not kept. A stamp before the last one by more than the buffer's horizon (a restarted bag
        or odometry driver) clears the buffer and starts over."""
        values = (stamp_s, x_m, y_m, yaw_rad)
        if not all(isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) for v in values):
            return f"odometry pose ignored: stamp, x, y and yaw must be finite, got {values}"
        with self._lock:
            if self._poses and stamp_s <= self._stamps[-1]:
                if self._stamps[-1] - stamp_s > self.horizon_s:
                    self._poses.clear()
                    self._stamps.clear()
                else:
                    return (f"odometry pose ignored: stamp {stamp_s:.3f} s is not after the last one "
                            f"{self._stamps[-1]:.3f} s")
            yaw = float(yaw_rad)
            if self._poses:  # keep yaw continuous so that interpolation never goes the long way round
                last = self._poses[-1].yaw_rad
                yaw = last + wrap_angle_rad(yaw - last)
            self._poses.append(OdomPose(float(stamp_s), float(x_m), float(y_m), yaw, pose_variance_m2(pose_covariance)))
            self._stamps.append(float(stamp_s))
            while self._stamps and self._stamps[0] < stamp_s - self.horizon_s:
                self._stamps.popleft()
                self._poses.popleft()
        return None

    def pose_at(self, stamp_s: float) -> OdomPose | None:
        """The pose at stamp_s, linear between the two around it; the newest one up to max_age_s past it;
        None before the first or beyond that."""
        with self._lock:
            if not self._poses:
                return None
            stamps = self._stamps
            if stamp_s > stamps[-1]:
                return self._poses[-1] if stamp_s - stamps[-1] <= self.max_age_s else None
            k = bisect.bisect_left(stamps, stamp_s)
            if k == 0:
                return self._poses[0] if stamps[0] == stamp_s else None
            a, b = self._poses[k - 1], self._poses[k]
        if b.stamp_s - a.stamp_s > self.max_age_s + 1e-9 and stamp_s not in (a.stamp_s, b.stamp_s):
            return None  # a gap in the odometry: nothing to interpolate over
        w = (stamp_s - a.stamp_s) / (b.stamp_s - a.stamp_s)
        return OdomPose(stamp_s, a.x_m + w * (b.x_m - a.x_m), a.y_m + w * (b.y_m - a.y_m),
                        a.yaw_rad + w * (b.yaw_rad - a.yaw_rad), a.variance_m2 + w * (b.variance_m2 - a.variance_m2))

    def motion(self, t0_s: float, t1_s: float) -> Motion | None:
        """The displacement from t0 to t1 in the body frame at t0, or None when either end has no pose.

        Its variance: the growth of the reported position variance between the two (what the driver
        says accumulated), plus ODOM_SCALE_SIGMA of the distance and ODOM_FLOOR_SIGMA_M, squared.
        """
        p0, p1 = self.pose_at(t0_s), self.pose_at(t1_s)
        if p0 is None or p1 is None:
            return None
        dx, dy = p1.x_m - p0.x_m, p1.y_m - p0.y_m
        c, s = math.cos(p0.yaw_rad), math.sin(p0.yaw_rad)
        forward, left = c * dx + s * dy, -s * dx + c * dy
        distance = math.hypot(dx, dy)
        variance = (max(p1.variance_m2 - p0.variance_m2, 0.0) + (ODOM_SCALE_SIGMA * distance) ** 2
                    + ODOM_FLOOR_SIGMA_M ** 2)
        return Motion(forward, left, p1.yaw_rad - p0.yaw_rad, variance, p0.yaw_rad)


class OdomAlignment:
    """The rotation of the odom frame onto the grid, a robust mode of the frames' votes.

    Each vote is offset = yaw_grid (a frame's bearing, as yaw) - yaw_odom at its stamp. The offset is
    the vote with the most weight within kernel_rad of it, refined to the circular mean of those
    inliers; it is given only when at least min_votes inliers hold min_share of the window's weight,
    and, with require_course, one of them is a course vote. Bearings alone agree just as well on a
    street seen the wrong way round (two held-out uniform-receiver walks locked onto a flipped
    alignment that way); but requiring a course left most uniform-receiver walks unaligned, and
    pooled over 16 held-out walks that cost more than the locks did (> 25 m 12.4 % against 8.6 %,
    docs/results.md), so the default takes bearings alone.
    """

    def __init__(self, window: int = 40, kernel_rad: float = math.radians(15.0), min_votes: int = 4,
                 min_share: float = 0.6, require_course: bool = False) -> None:
        self.kernel_rad, self.min_votes, self.min_share = kernel_rad, min_votes, min_share
        self.require_course = require_course
        self._votes: deque[tuple[float, float, bool]] = deque(maxlen=window)
        self._cache: tuple[float, float] | None = None
        self._dirty = False

    def clear(self) -> None:
        self._votes.clear()
        self._cache, self._dirty = None, False

    def vote(self, offset_rad: float, weight: float = 1.0, course: bool = False) -> None:
        """One vote; course: it comes from positions' displacement (GNSS or estimates), not a bearing."""
        if math.isfinite(offset_rad) and weight > 0:
            self._votes.append((wrap_angle_rad(offset_rad), float(weight), bool(course)))
            self._dirty = True

    def offset(self) -> tuple[float, float] | None:
        """(offset_rad, sigma_rad) when the votes agree, else None."""
        if self._dirty:
            self._cache, self._dirty = self._mode(), False
        return self._cache

    def _mode(self) -> tuple[float, float] | None:
        if len(self._votes) < self.min_votes:
            return None
        angles = np.array([v[0] for v in self._votes])
        weights = np.array([v[1] for v in self._votes])
        near = np.abs(wrap_angle_rad(angles[:, None] - angles[None, :])) <= self.kernel_rad
        support = near @ weights
        best = int(np.argmax(support))
        inliers = near[best]
        if inliers.sum() < self.min_votes or support[best] < self.min_share * weights.sum():
            return None
        if self.require_course and not any(v[2] for v, keep in zip(self._votes, inliers) if keep):
            return None
        w = weights[inliers]
        resid = wrap_angle_rad(angles[inliers] - angles[best])
        centre = float(wrap_angle_rad(angles[best] + np.sum(w * resid) / w.sum()))
        spread = float(np.sqrt(np.sum(w * wrap_angle_rad(angles[inliers] - centre) ** 2) / w.sum()))
        sigma = max(spread / math.sqrt(float(inliers.sum())), math.radians(1.0))
        return centre, sigma


class GridOdometry:
    """Odometry for the track on the tile grid: the buffer, the alignment, and the motion between frames."""

    def __init__(self, max_age_s: float, look_back_s: float = 0.0) -> None:
        """look_back_s: how far back a caller carries estimates (the buffer keeps that, a margin for odometry
        running ahead of the frames, and never less than ODOM_BUFFER_S)."""
        self.buffer = OdometryBuffer(max_age_s, max(ODOM_BUFFER_S, look_back_s + ODOM_LEAD_S))
        self.alignment = OdomAlignment()
        # per source ("gnss", "estimate"): the last anchor position: stamp, E, N, sigma, odom pose
        self._anchors: dict[str, tuple[float, float, float, float, OdomPose]] = {}

    def reset(self) -> None:
        """Forget the alignment (a new stream); the buffer keeps what it has (odometry is continuous)."""
        self.alignment.clear()
        self._anchors.clear()

    def vote_course(self, stamp_s: float, east_m: float, north_m: float, sigma_m: float,
                    source: str = "gnss") -> None:
        """A position on the grid (its 1-sigma per axis) from `source` (GNSS fixes, or the published
        estimates: positions, not bearings, so a view seen the wrong way round cannot vote twice): once
        odometry has carried the platform COURSE_MIN_M from that source's last anchor, the positions'
        displacement direction against odometry's votes for the alignment, weighted by its certainty
        against a frame's bearing vote."""
        pose = self.buffer.pose_at(stamp_s)
        if pose is None:
            return
        anchor = self._anchors.get(source)
        if anchor is None or stamp_s <= anchor[0]:
            self._anchors[source] = (stamp_s, east_m, north_m, sigma_m, pose)
            return
        _, e0, n0, s0, p0 = anchor
        travel = math.hypot(pose.x_m - p0.x_m, pose.y_m - p0.y_m)
        if travel < COURSE_MIN_M:
            return
        sigma = math.sqrt(s0 * s0 + sigma_m * sigma_m) / travel
        if sigma <= COURSE_MAX_SIGMA_RAD:
            course = math.atan2(north_m - n0, east_m - e0)
            odom = math.atan2(pose.y_m - p0.y_m, pose.x_m - p0.x_m)
            self.alignment.vote(course - odom, min((VISION_VOTE_SIGMA_RAD / sigma) ** 2, 4.0), course=True)
        self._anchors[source] = (stamp_s, east_m, north_m, sigma_m, pose)

    def add(self, stamp_s: float, x_m: float, y_m: float, yaw_rad: float, pose_covariance: Any = None) -> str | None:
        return self.buffer.add(stamp_s, x_m, y_m, yaw_rad, pose_covariance)

    def vote_bearing(self, stamp_s: float, yaw_grid_rad: float, weight: float = 1.0) -> None:
        """A frame's yaw on the grid (counter-clockwise from grid east) votes for the alignment."""
        pose = self.buffer.pose_at(stamp_s)
        if pose is not None:
            self.alignment.vote(yaw_grid_rad - pose.yaw_rad, weight)

    def yaw_grid(self, stamp_s: float) -> tuple[float, float] | None:
        """(yaw on the grid, 1-sigma) that odometry and the alignment predict at stamp_s, or None."""
        pose = self.buffer.pose_at(stamp_s)
        aligned = self.alignment.offset()
        if pose is None or aligned is None:
            return None
        return float(wrap_angle_rad(pose.yaw_rad + aligned[0])), aligned[1]

    def carry(self, east_m: float, north_m: float, t0_s: float, t1_s: float) -> tuple[float, float, float] | None:
        """A grid position at t0 moved by odometry to t1: (east, north, the displacement's variance per axis);
        None unless odometry covers both stamps, t1 is later, and the odom frame is aligned with the grid."""
        m = self.motion_grid(t0_s, t1_s) if t1_s > t0_s else None
        if m is None or not m.direction_known:
            return None
        return east_m + m.east_m, north_m + m.north_m, m.variance_m2

    def motion_grid(self, t0_s: float, t1_s: float) -> GridMotion | None:
        """The displacement from t0 to t1 on the grid, its direction from the alignment when there is one."""
        m = self.buffer.motion(t0_s, t1_s)
        if m is None:
            return None
        aligned = self.alignment.offset()
        if aligned is None:
            return GridMotion(0.0, 0.0, m.distance_m ** 2 + m.variance_m2, False, m.distance_m)
        offset, sigma = aligned
        yaw = m.yaw_start_odom_rad + offset
        c, s = math.cos(yaw), math.sin(yaw)
        east, north = c * m.forward_m - s * m.left_m, s * m.forward_m + c * m.left_m
        return GridMotion(east, north, m.variance_m2 + (m.distance_m * sigma) ** 2, True, m.distance_m)


@dataclass(frozen=True)
class CarriedEstimate:
    """A published grid position that odometry can carry forward: the localizer's last estimate (does it
    keep the platform on the tiles?) and its last one the fix agreed with (does a fix that contradicts
    the imagery have multipath?)."""

    stamp_s: float
    east_m: float
    north_m: float
    variance_m2: float  # per axis (the covariance's largest eigenvalue)

    def at(self, odometry: GridOdometry, stamp_s: float, max_age_s: float) -> tuple[float, float, float] | None:
        """(east, north, variance per axis) carried to stamp_s, the displacement's variance added; None when
        stamp_s is not later by at most max_age_s or odometry cannot carry it (GridOdometry.carry)."""
        if not 0.0 < stamp_s - self.stamp_s <= max_age_s:
            return None
        moved = odometry.carry(self.east_m, self.north_m, self.stamp_s, stamp_s)
        return None if moved is None else (moved[0], moved[1], self.variance_m2 + moved[2])
