"""Shared helpers for benchmarks: the machine, latency statistics, RSS, tables, JSON.

Every benchmark prints a table and, with --json PATH, writes the same figures plus the
machine they were measured on, so numbers from different runs can be compared honestly.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


def machine_info() -> dict[str, Any]:
    """CPU model, cores (online and usable by this process), GPU names, software versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": gpu_names(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def gpu_names() -> list[str]:
    """NVIDIA GPU names from nvidia-smi; empty when there is none (or no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def describe_machine(info: dict[str, Any]) -> str:
    """One line naming the machine, for the head of a table."""
    gpu = ", ".join(info["gpu"]) or "none"
    return (
        f"machine: {info['cpu_model']}, {info['cpu_cores_usable']} of {info['cpu_cores']} cores usable, "
        f"GPU: {gpu}; Python {info['python']}, numpy {info['numpy']}"
    )


def latency_stats_ms(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / mean / max in milliseconds of per-call times in nanoseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def rss_mb() -> float:
    """Resident set size of this process in MiB (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, Callable[[Any], str] | str]],
                file=sys.stdout) -> None:
    """Print rows as an aligned text table; columns are (key, header, format spec or function)."""
    cells = []
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            if value is None:
                line.append("-")
            elif callable(fmt):
                line.append(fmt(value))
            else:
                line.append(format(value, fmt))
        cells.append(line)
    headers = [header for _, header, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)), file=file)


def print_targets(targets: dict[str, Any], name_width: int, value_fmt: str, title: str = "targets",
                  file=sys.stdout) -> None:
    """A title line, then one line per target check ({"value", "target", "met"} dicts among `targets`):
    met, NOT MET, or not measured (met None). With "applies" False in `targets`, the title says what
    the targets were stated for ("stated_for") and what this run judged ("judged_on")."""
    note = ("" if targets.get("applies", True)
            else f" (stated for the {targets['stated_for']}; this run: {targets['judged_on']})")
    print(f"{title}{note}:", file=file)
    for name, check in targets.items():
        if isinstance(check, dict):
            value = "-" if check["value"] is None else format(check["value"], value_fmt)
            verdict = {True: "met", False: "NOT MET", None: "not measured"}[check["met"]]
            print(f"  {name:{name_width}s} {value:>10s}  target {check['target']:8s} {verdict}", file=file)


def parse_count(text: str) -> int:
    """'10k' -> 10000, '1M' -> 1000000, '2500' -> 2500."""
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    digits = t[:-1] if scale != 1 else t
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise ValueError(f"not a count: {text!r} (use e.g. 10000, 10k or 1M)") from None
    if value < 1:
        raise ValueError(f"count must be >= 1, got {text!r}")
    return value
