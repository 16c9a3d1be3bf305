"""The node's plumbing: its log handler, the newest-wins mailbox between its threads, and the deadline
on its exit."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


# --------------------------------------------------------------------------- exit


@contextmanager
def exit_deadline(seconds: float, code: int) -> Iterator[None]:
    """Leave the process with `code` if the block has not finished within `seconds`.

    The middleware's teardown (destroying the node's DDS participant, shutting the context down) can
    block on another process's stale shared memory; a node that failed to start, or was told to stop,
    must still exit, or launch and systemd never see it go. The one line on stderr says so."""
    def expire() -> None:
        sys.stderr.write(f"[crossview] teardown still running after {seconds:g} s: exiting with code {code} "
                         "without it\n")
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
