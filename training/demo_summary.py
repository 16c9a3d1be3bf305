"""The demo's summary: its figures, taken unchanged from the replay's summary.json, and the printed table."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from crossview_training.demo_config import PROG, DemoConfig


TRACKS = (  # (key in demo_summary.json, key in the replay's summary.json errors, label)
    ("gnss", "gnss", "raw GNSS (/gnss/fix)"),
    ("crossview", "crossview", "crossview fixes (ours)"),
    ("fused", "fused", "fused: odometry + ours"),
    ("fused_with_gnss", "fused_with_gnss", "fused: odometry + ours + GNSS"),
)


def summarize(replay: dict[str, Any], cfg: DemoConfig) -> dict[str, Any]:
    """The demo's figures, taken from the replay's summary.json (nothing recomputed)."""
    frames = int(replay["frames"])
    tracks = {}
    for key, source, label in TRACKS:
        stats = replay["errors"][source]
        tracks[key] = {"label": label, "count": stats["count"], "median_m": stats["median_m"],
                       "p95_m": stats["p95_m"], "under_10m_pct": stats["under_10m_pct"],
                       "share_pct": 100.0 * stats["count"] / frames if frames else 0.0}
    counters = replay.get("node_counters", {})
    return {
        "frames": frames,
        "published": replay["published"],
        "published_share": replay["published_share"],
        "tracks": tracks,
        "heading": replay["heading"],
        "latency_ms": replay["latency_ms"],
        "frames_dropped": counters.get("frames_dropped"),
        "frames_received_by_node": counters.get("frames_received"),
        "rejections": {k: v for k, v in replay.get("rejections", {}).items() if v},
        "drive_s": replay.get("duration_s"),
        "replay_rate": cfg.replay_rate,
    }


def print_summary(summary: dict[str, Any], file: Any = sys.stdout) -> None:
    """The error table, heading and latency lines, the stage times, and where the report is."""
    def num(v: float | None, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    s = summary
    print(f"\n{PROG}: {s['frames']} panoramas over {num(s['drive_s'])} s of drive in the held-out city, "
          f"model {s['model']['preset']} ({s['model']['name']}), replayed at {s['replay_rate']:g}x real time",
          file=file)
    rows = [[t["label"], num(t["median_m"]), num(t["p95_m"]), num(t["under_10m_pct"]), str(t["count"]),
             num(t["share_pct"])] for t in s["tracks"].values()]
    print(format_table(["track", "median m", "p95 m", "< 10 m %", "frames", "% of frames"], rows), file=file)
    h = s["heading"]
    if h.get("count"):
        print(f"heading: median error {num(h['median_deg'])} deg over {h['count']} frames, "
              f"{num(100 * h['flip_share'])} % flipped (> 135 deg)", file=file)
    else:
        print("heading: none published", file=file)
    lat = s["latency_ms"]
    print(f"published {s['published']}/{s['frames']} ({100 * s['published_share']:.1f} %); latency p50 "
          f"{num(lat['p50'])} ms, p99 {num(lat['p99'])} ms; the node received {s['frames_received_by_node']} "
          f"frames and dropped {s['frames_dropped']}"
          + (f"; rejected: {', '.join(f'{k} {v}' for k, v in sorted(s['rejections'].items()))}"
             if s["rejections"] else ""), file=file)
    stage_rows = [[r["name"], r["status"], f"{r['seconds']:.1f}", num(r["build_seconds"])] for r in s["stages"]]
    stage_rows.append(["total", "", f"{s['total_s']:.1f}", ""])
    print(format_table(["stage", "status", "this run s", "build s"], stage_rows), file=file)
    print(f"report: {s['report']}\nsummary: {s['summary_path']}", file=file)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings under headers: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
