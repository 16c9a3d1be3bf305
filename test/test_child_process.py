"""crossview_ros.child_process: a child started with start_child dies when its parent is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import subprocess, sys, time
from crossview_ros.child_process import start_child
cmd = [sys.executable, "-c", "import time; time.sleep(120)"]
child = start_child(cmd) if sys.argv[1] == "guarded" else subprocess.Popen(cmd)
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie waiting for init to reap it is dead


def child_after_parent_killed(mode: str) -> tuple[int, bool]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5.0
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, alive(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_started_child_dies_with_its_killed_parent():
    _, still_alive = child_after_parent_killed("guarded")
    assert not still_alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_plain_child_outlives_its_killed_parent():
    """The contrast that shows the test above can fail: plain Popen leaves an orphan."""
    child, still_alive = child_after_parent_killed("plain")
    try:
        assert still_alive
    finally:
        if still_alive:
            os.kill(child, signal.SIGKILL)
