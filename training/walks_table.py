"""crossview-walks' figures: each walk's localization kept as a WalkResult, pooled per receiver and
odometry setting, and printed as the pooled, mismatch and per-walk tables.

Every figure comes from crossview_ros.localize_summary.summarize (the same numbers crossview-localize
prints), run once on a walk and once on the pooled frames of many walks; this module only adds the
spread over walks and the layout.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from crossview_ros.estimate import Estimate, Fix
from crossview_ros.localize_frames import Frame
from crossview_ros.localize_summary import summarize
from crossview_training.demo_summary import format_table

D2_KEY = "covariance_share_d2_under_5.99_percent"
MISMATCH_SIGMA_M = 10.0  # a fix against another city's tiles with a sigma under this is a confident wrong fix


@dataclass
class WalkResult:
    """One walk localized once: which walk, against which city's tiles, with or without odometry."""

    city_seed: int  # the city the walk was driven in
    walk_seed: int
    mode: str  # walk | drive
    receiver: str  # urban | uniform
    odometry: bool
    tiles_city_seed: int  # the city whose tiles it was localized in (another one: the mismatch check)
    frames: list[Frame]  # without their panoramas (Frame.data), which are not needed after localizing
    fixes: list[Fix]
    estimates: list[Estimate]
    summary: dict[str, Any]  # summarize() of this walk

    @property
    def mismatched(self) -> bool:
        return self.tiles_city_seed != self.city_seed

    def ids(self) -> dict[str, Any]:
        """The walk's identity, as the JSON output lists it."""
        return {"city_seed": self.city_seed, "walk_seed": self.walk_seed, "mode": self.mode,
                "receiver": self.receiver, "odometry": self.odometry, "tiles_city_seed": self.tiles_city_seed}


def walk_result(frames: Sequence[Frame], fixes: Sequence[Fix], estimates: Sequence[Estimate], heading: bool,
                **ids: Any) -> WalkResult:
    """A WalkResult from one walk's localization (its panoramas dropped to keep many walks in memory)."""
    light = [dataclasses.replace(fr, data=None, odometry=None) for fr in frames]
    return WalkResult(frames=light, fixes=list(fixes), estimates=list(estimates),
                      summary=summarize(estimates, frames, fixes, heading), **ids)


def pool(results: Sequence[WalkResult], heading: bool) -> dict[str, Any] | None:
    """summarize() of the walks' frames together, plus the number of walks and the worst walk's
    d^2 share (the issue's per-walk floor); None for no walks."""
    if not results:
        return None
    frames = [fr for r in results for fr in r.frames]
    fixes = [fx for r in results for fx in r.fixes]
    estimates = [e for r in results for e in r.estimates]
    out = summarize(estimates, frames, fixes, heading)
    shares = [r.summary[D2_KEY] for r in results if r.summary[D2_KEY] is not None]
    out["walks"] = len(results)
    out["d2_share_min_over_walks_percent"] = min(shares) if shares else None
    out["walks_without_published_fix"] = sum(1 for r in results if r.summary[D2_KEY] is None)
    return out


def pooled_tables(results: Sequence[WalkResult], receivers: Sequence[str], heading: bool) -> dict[str, Any]:
    """{receiver: {"odometry": pooled, "no_odometry": pooled, "mismatch": pooled}} over the results."""
    out: dict[str, Any] = {}
    for receiver in receivers:
        mine = [r for r in results if r.receiver == receiver]
        out[receiver] = {
            "odometry": pool([r for r in mine if r.odometry and not r.mismatched], heading),
            "no_odometry": pool([r for r in mine if not r.odometry and not r.mismatched], heading),
            "mismatch": pool([r for r in mine if r.mismatched], heading),
        }
    return out


def num(value: float | None, spec: str = ".1f") -> str:
    """A figure for a table cell ('-' when there is none)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def pooled_row(receiver: str, odometry: str, s: dict[str, Any]) -> list[str]:
    """One line of the pooled table."""
    e, h, pl = s["error_m"] or {}, s.get("heading") or {}, s.get("protection_level") or {}
    return [receiver, odometry, str(s["walks"]), str(s["frames"]), num(s["published_percent"]),
            num(e.get("median"), ".2f"), num(e.get("p95"), ".2f"), num(e.get("over_25m_percent")),
            num(s[D2_KEY]), num(s["d2_share_min_over_walks_percent"]), num(h.get("flip_over_90deg_percent")),
            num(h.get("share_under_3.84_percent")), num(pl.get("exceeded_percent"), ".2f"),
            str(pl.get("without_level", "-"))]


POOLED_HEADERS = ["receiver", "odometry", "walks", "frames", "publ %", "median m", "p95 m", "> 25 m %",
                  "d2<5.99 %", "worst walk d2 %", "flips>90 %", "yaw d2<3.84 %", "> PL %", "no PL"]


def print_pooled(tables: dict[str, Any], file: TextIO | None = None) -> None:
    """The pooled table (per receiver, with and without odometry) and each row's reasons."""
    rows, reasons = [], []
    for receiver, t in tables.items():
        for key, label in (("odometry", "on"), ("no_odometry", "off")):
            if t[key] is not None:
                rows.append(pooled_row(receiver, label, t[key]))
                reasons.append(f"  {receiver} odometry {label}: "
                               + ", ".join(f"{k} {v}" for k, v in t[key]["reasons"].items()))
    print(format_table(POOLED_HEADERS, rows), file=file or sys.stdout)
    print("reasons (frames):", *reasons, sep="\n", file=file or sys.stdout)


def print_mismatch(tables: dict[str, Any], file: TextIO | None = None) -> None:
    """The mismatch check: test walks against another city's tiles; no published fix should claim < 10 m."""
    rows = []
    for receiver, t in tables.items():
        s = t["mismatch"]
        if s is not None:
            rows.append([receiver, str(s["walks"]), str(s["frames"]), str(s["published"]),
                         str(s["published_sigma_under_10m"]), num((s["error_m"] or {}).get("median"))])
    out = file or sys.stdout
    if not rows:
        print("mismatch check: skipped (it needs two or more --city-seeds)", file=out)
        return
    print(format_table(["receiver", "walks", "frames", "published", f"sigma < {MISMATCH_SIGMA_M:g} m",
                        "median error m"], rows), file=out)


def print_walks(walks: Sequence[dict[str, Any]], file: TextIO | None = None) -> None:
    """One line per localized walk ({**WalkResult.ids(), "summary": ...}, as the JSON lists them);
    mismatch runs are left out (the mismatch table pools them)."""
    rows = []
    for w in walks:
        if w["tiles_city_seed"] != w["city_seed"]:
            continue
        s = w["summary"]
        e, h = s["error_m"] or {}, s.get("heading") or {}
        rows.append([str(w["city_seed"]), str(w["walk_seed"]), w["mode"], w["receiver"],
                     "on" if w["odometry"] else "off", str(s["frames"]), num(s["published_percent"]),
                     num(e.get("median"), ".2f"), num(e.get("p95"), ".2f"), num(e.get("over_25m_percent")),
                     num(s[D2_KEY]), num(h.get("flip_over_90deg_percent"))])
    print(format_table(["city", "seed", "mode", "receiver", "odometry", "frames", "publ %", "median m", "p95 m",
                        "> 25 m %", "d2<5.99 %", "flips>90 %"], rows), file=file or sys.stdout)
