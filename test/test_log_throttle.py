"""log_throttle.Throttle: one line per key per period, the swallowed calls counted on the next line."""

from __future__ import annotations

import logging

from crossview_ros import log_throttle
from crossview_ros.log_throttle import Throttle


def test_one_line_per_key_per_period_and_the_next_one_counts_what_was_swallowed(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(log_throttle.time, "monotonic", lambda: clock[0])
    throttle = Throttle(5.0)
    logger = logging.getLogger("test_log_throttle")
    with caplog.at_level(logging.INFO, logger="test_log_throttle"):
        throttle.log(logger, logging.WARNING, "bad", "frame %d refused", 1)
        clock[0] = 103.0
        throttle.log(logger, logging.WARNING, "bad", "frame %d refused", 2)  # within 5 s: swallowed
        throttle.log(logger, logging.WARNING, "bad", "frame %d refused", 3)
        throttle.log(logger, logging.INFO, "other", "another key %s", "passes")
        clock[0] = 105.0
        throttle.log(logger, logging.WARNING, "bad", "frame %d refused", 4)  # 5 s after the first line
    assert [r.getMessage() for r in caplog.records] == [
        "frame 1 refused", "another key passes", "frame 4 refused (2 more since the last such message)"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert throttle.ready("bad") is None  # 0 s after the last line
    clock[0] = 111.0
    assert throttle.ready("bad") == 1 and throttle.ready("new") == 0
