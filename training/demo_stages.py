"""The demo's stage bookkeeping: run a stage, or reuse what an earlier run built.

A stage that finishes writes WORK/stages/[SCOPE/]<stage>.json with its settings (params: which
include the identity of its inputs) and what it produced (info); Stages.run reuses a stage whose
record matches and whose output still checks out, resumes one left "running", and otherwise
wipes the output (only ever inside the work folder) and builds it again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossview_ros.atomic import write_json_atomic

log = logging.getLogger("crossview_demo")

RECORD_FORMAT = "crossview_ros.demo_stage"
STAGES = ("dataset", "train", "export", "city", "tiles", "encode", "drive", "calibrate", "replay")


class DemoError(RuntimeError):
    """A stage failed; the message says which and what to do."""


def canonical(obj: Any) -> str:
    """JSON of `obj` as the records store it (sorted keys, tuples as lists, paths as strings)."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(obj: Any) -> str:
    """Short content hash of settings (+ identity of inputs): what downstream stages record."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    """One stage of this run: built or reused, how long, what it produced."""

    name: str
    output: Path
    status: str  # "built" | "reused"
    seconds: float  # this run: build time, or the time to check the reused output
    build_seconds: float  # time the build took (this run's or the earlier run's that built it)
    fingerprint: str  # identity of the output, for the stages after it
    info: dict[str, Any] = field(default_factory=dict)  # what the stage produced (paths, hashes, counts)


class Stages:
    """Runs stages with completion records under WORK/stages (module docstring: Reuse)."""

    def __init__(self, work: Path, overwrite: bool) -> None:
        self.work = work
        self.records = work / "stages"
        self.overwrite = overwrite
        self.results: list[StageResult] = []

    def run(self, name: str, output: Path, params: dict[str, Any], build: Callable[[], dict[str, Any]],
            check: Callable[[dict[str, Any]], bool], *, owns_output: bool = True,
            scope: str = "") -> StageResult:
        """Reuse `name` when its record matches `params` and check(info) passes, else build it.

        build() makes the output and returns its info (identity: hashes, paths); check(info) says
        whether the output on disk is still the one recorded. owns_output: the stage may delete
        `output` before rebuilding with other settings (False for in-place steps). scope: records of
        per-model stages live under stages/<scope>/ (the preset), so switching presets keeps both.
        """
        index = STAGES.index(name) + 1
        path = self.records / scope / f"{name}.json"
        record = _read_record(path)
        started = time.monotonic()
        params = json.loads(canonical(params))  # as the record stores it (tuples as lists, paths as strings)
        same = record is not None and record.get("params") == params
        if not self.overwrite and same and record.get("status") == "done":
            try:
                ok = bool(check(record["info"]))
            except Exception as exc:  # a check is a read of files a user may have changed: any failure = rebuild
                log.info("%s: recorded output does not check out (%s: %s); rebuilding", name, type(exc).__name__, exc)
                ok = False
            if ok:
                result = StageResult(name, output, "reused", time.monotonic() - started,
                                     float(record.get("build_seconds", float("nan"))), record["fingerprint"],
                                     record["info"])
                log.info("[%d/%d] %s: reused %s (built earlier in %s; checked in %.2f s)", index, len(STAGES), name,
                         output, duration(result.build_seconds), result.seconds)
                self.results.append(result)
                return result
        resume = same and record.get("status") == "running" and not self.overwrite
        if owns_output and not resume:
            _remove(output, self.work)
        if owns_output:
            _remove_partials(output, self.work)
        log.info("[%d/%d] %s: %s -> %s", index, len(STAGES), name,
                 "resuming an interrupted build" if resume else "building", output)
        write_json_atomic(path, {"format": RECORD_FORMAT, "stage": name, "status": "running",
                                 "params": params, "output": str(output)}, sort_keys=True)
        info = build()
        seconds = time.monotonic() - started
        fp = fingerprint({"params": params, "info": info})
        write_json_atomic(path, {"format": RECORD_FORMAT, "stage": name, "status": "done", "params": params,
                                 "output": str(output), "info": info, "fingerprint": fp, "build_seconds": seconds,
                                 "finished_utc": _utc_now()}, sort_keys=True)
        result = StageResult(name, output, "built", seconds, seconds, fp, info)
        log.info("[%d/%d] %s: built %s in %s", index, len(STAGES), name, output, duration(seconds))
        self.results.append(result)
        return result


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _remove(path: Path, work: Path) -> None:
    """Delete a stage's old output (only ever inside the work folder)."""
    if not path.exists():
        return
    if work.resolve() not in path.resolve().parents:
        raise DemoError(f"refusing to delete {path}: it is outside the work folder {work}")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_partials(path: Path, work: Path) -> None:
    """Temporary folders that a killed atomic writer of `path` left beside it (.NAME.*.partial)."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*.partial"):
            _remove(stale, work)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """Seconds for a log line: '12.3 s' or '4.5 min' ('?' when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
