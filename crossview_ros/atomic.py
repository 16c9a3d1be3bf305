"""Atomic file writes: a temporary name beside the target, then a rename.

Every file the project writes goes through here (or renames a whole folder the same way), so a
crash never leaves a half-written artefact that a later run would load.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("crossview_ros")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write `data` to `path` atomically; durable=False skips the fsync (for many small files
    that a resumed run re-verifies anyway, e.g. tile images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False, durable: bool = True) -> Path:
    """`obj` as indented JSON with a final newline, atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", durable=durable)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Remove the `.NAME.<pid>.partial` folders (and `.NAME.tmp-<pid>` files) that runs building
    `target` left when they were killed: those whose process is gone. Returns what was removed."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)\.partial|tmp-(\d+))$")
    removed = []
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live run is building the same target
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d leftover(s) of killed runs beside %s: %s", len(removed), target,
                 ", ".join(e.name for e in removed))
    return removed


@contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden folder `.NAME.<pid>.partial` beside `target` to build it in (then rename the
    result onto `target`); what killed runs left there is removed first, and the folder on exit."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    work = target.parent / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
