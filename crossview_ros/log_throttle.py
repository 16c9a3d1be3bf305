"""At most one log line per key per period, for the Localizer's frame problems and the node's own."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any


class Throttle:
    """At most one line per key per period; counts the calls it swallowed in between. Thread-safe."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()
        self._lock = threading.Lock()

    def ready(self, key: str) -> int | None:
        """None when a line for `key` went out less than period_s ago (this call is counted); else how many
        calls were swallowed since that line (0 is a go too: test `is not None`)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._skipped[key] += 1
                return None
            self._last[key] = now
            return self._skipped.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: Any) -> None:
        """logger.log(level, msg, *args) unless throttled; the first line after a quiet period says how many
        lines it stands for."""
        skipped = self.ready(key)
        if skipped is None:
            return
        if skipped:
            msg += f" ({skipped} more since the last such message)"
        logger.log(level, msg, *args)
