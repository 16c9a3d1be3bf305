"""The node's plumbing: its log handler, throttle and the newest-wins mailbox between its threads."""

from __future__ import annotations

import logging
import threading
from typing import Any, Generic, TypeVar

T = TypeVar("T")


# --------------------------------------------------------------------------- logging


class RosLogHandler(logging.Handler):
    """Forwards the library's Python log records (Localizer, engines) to the node's ROS logger."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(msg)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(msg)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(msg)
            else:
                self.ros_logger.debug(msg)
        except Exception:  # a log line must never take the node down
            self.handleError(record)


# --------------------------------------------------------------------------- state shared by the threads


class NewestSlot(Generic[T]):
    """A mailbox of one item: put() replaces what is still waiting (newest wins), take() blocks.

    How the node drops stale frames instead of queueing them: the executor puts, the worker takes.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced one that nobody had taken (a dropped item)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout_s: float | None = None) -> T | None:
        """The waiting item (removing it); None once closed, or when timeout_s passes with nothing."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout=timeout_s)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every taker with None; later puts are kept but never taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
