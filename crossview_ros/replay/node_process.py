"""localize_node as the replay's child process: its command line, its environment (the ROS domain),
its log, and a stop that asks politely first. The child dies with the replay, however the replay
ends (crossview_ros.child_process)."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from crossview_ros.bag.rig import RigSpec
from crossview_ros.camera import MOUNT_KEYS
from crossview_ros.child_process import start_child
from crossview_ros.replay_errors import NodeError, ReplayError
from crossview_ros.replay_evaluation import NODE_NAME

log = logging.getLogger("crossview_replay")

NODE_EXECUTABLE = "localize_node"
STOP_TIMEOUT_S = 10.0  # SIGINT -> exit; then SIGTERM, then SIGKILL
# Random ROS_DOMAIN_ID when the environment sets none: the ids whose DDS ports stay clear of
# Linux's ephemeral range (0-101, 215-232; ROS 2 docs "The ROS_DOMAIN_ID"); 0 is left to users.
DOMAIN_IDS = tuple(range(1, 102)) + tuple(range(215, 233))
LOG_TAIL_LINES = 25

__all__ = ["NODE_NAME", "NodeProcess", "camera_parameters", "node_command", "ros_environment", "tail"]


def node_command(tiles: Path, model: Path, datum_lat_deg: float, datum_lon_deg: float, *,
                 params_file: str | os.PathLike | None = None, node_args: Sequence[str] = ()) -> list[str]:
    """localize_node's argv: the console script beside this Python (else on PATH), sim time, the datum.

    The params file comes first, then the replay's -p (tile set, model, sim time, datum, pose origin),
    then node_args, so the user has the last word."""
    exe = Path(sys.executable).parent / NODE_EXECUTABLE
    cmd = [str(exe)] if exe.exists() else ([found] if (found := shutil.which(NODE_EXECUTABLE)) else
                                            [sys.executable, "-m", "crossview_ros.nodes.localize_node"])
    cmd.append("--ros-args")
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    cmd += ["-p", f"tile_set:={tiles}", "-p", f"model:={model}", "-p", "use_sim_time:=true",
            "-p", f"datum:=[{float(datum_lat_deg)!r},{float(datum_lon_deg)!r}]", "-p", "pose_origin:=datum"]
    cmd += list(node_args)
    return cmd


def camera_parameters(rig: RigSpec) -> list[str]:
    """The node's ROS arguments for a rig (crossview_ros.nodes.cameras): `cameras` and each camera's mount.
    Names are quoted (a camera called `on` stays a string); mounts are written with a decimal point (doubles)."""
    names = ",".join(f"'{name}'" for name in rig.names)
    out = ["-p", f"cameras:=[{names}]"]
    for cam in rig.cameras:
        for key in MOUNT_KEYS:
            out += ["-p", f"{cam.name}.{key}:={float(getattr(cam.mount, key)):.9f}"]
    return out


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    rows = [r for r in text.splitlines() if r.strip()]
    return "\n".join(rows[-lines:]) if rows else "(empty log)"


class NodeProcess:
    """localize_node as a child process with its log in a file; stop() = SIGINT, then harder."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.cmd, self.log_path = cmd, log_path
        self._log = open(log_path, "wb")
        try:
            self.proc = start_child(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise NodeError(f"cannot start {cmd[0]}: {exc}; is crossview_ros installed with its console "
                            "scripts (pip install -e '.[ros]')?", None) from None

    def check_alive(self, doing: str) -> None:
        code = self.proc.poll()
        if code is not None:
            self._log.flush()
            raise NodeError(f"localize_node exited with code {code} while {doing}; its log ends:\n"
                            f"{tail(self.log_path)}", code)

    def stop(self) -> int:
        """SIGINT and wait; SIGTERM, SIGKILL if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    self.proc.send_signal(sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    log.warning("localize_node ignored %s for %.0f s", signal.Signals(sig).name, wait_s)
        self._log.close()
        return int(self.proc.wait())


def ros_environment() -> tuple[dict[str, str], int]:
    """The child's environment and the domain id both sides use (random, localhost-only, if unset)."""
    env = dict(os.environ)
    if env.get("ROS_DOMAIN_ID", "").strip():
        try:
            domain = int(env["ROS_DOMAIN_ID"])
        except ValueError:
            raise ReplayError(f"ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']!r} is not an integer") from None
    else:
        domain = random.choice(DOMAIN_IDS)
        env["ROS_DOMAIN_ID"] = str(domain)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        # This process's DDS participant reads the discovery range from its own environment.
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    return env, domain
