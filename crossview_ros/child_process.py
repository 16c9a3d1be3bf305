"""Child processes that do not outlive their parent.

A tool that starts a ROS 2 node (crossview-replay) must not leave it running when it is killed:
a stray node in the same domain answers the next run's messages too. On Linux the kernel sends
the child a signal when its parent dies (prctl PR_SET_PDEATHSIG), whatever killed the parent,
SIGKILL included; the parent's own SIGTERM/SIGINT handling stops the child the polite way first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A Popen preexec_fn that makes the child receive `sig` when this process dies; None off Linux.

    The kernel watches the thread that forks: call Popen from a thread that lives as long as the
    process (the main thread), or the child gets `sig` when that thread ends."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec: async-signal-safe calls only
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before the prctl: do not start at all
            os._exit(128 + int(sig))

    return arm


def start_child(cmd: Sequence[str], **popen: Any) -> subprocess.Popen:
    """subprocess.Popen(cmd) for a child that receives SIGTERM when this process dies."""
    return subprocess.Popen(list(cmd), preexec_fn=die_with_parent(), **popen)
