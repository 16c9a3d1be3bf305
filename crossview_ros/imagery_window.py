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
