"""The MISMATCH gate's memory (Localizer): the recent matched views' imagery statistic and whether
each view, alone, pointed at its estimate."""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class ImageryWindow:
    """The last `size` matched views: each one's imagery statistic (its score, over its median score in
    the scope where the matcher measures one) and whether it pointed within mode_radius_m of its
    estimate by itself."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.views: deque[bool] = deque(maxlen=self.size)
        self.scores: deque[float] = deque(maxlen=self.size)

    def clear(self) -> None:
        self.views.clear()
        self.scores.clear()

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
