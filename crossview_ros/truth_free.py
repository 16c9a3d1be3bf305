"""What can be measured on a recording without ground truth: the truth-free report of the replay and of
crossview-localize --bag (docs/recordings.md).

- publication rate: the share of frames with a published fix, and fixes per second of recording;
- why fixes were withheld: the rejection reasons and their counts;
- latency (the caller says of what: end to end in the replay, processing in crossview-localize);
- innovation against GNSS: the distance of each published fix from the raw GNSS fix it was paired
  with (the newest valid one not after its stamp), and that distance normalised by the GNSS's own
  covariance where the receiver gives one, d^2 = v^T C^-1 v. Our fix being far better than the
  GNSS, d^2 follows a chi-square with 2 degrees of freedom when the receiver's covariance is honest:
  95 % under 5.99. A share far below says the GNSS (or our fix) is off by more than it claims;
- consistency with odometry: the distance between consecutive published fixes against the distance
  the odometry travelled between the same stamps, |d_fix - d_odom| (lengths: the odometry's frame
  needs no alignment); the same for consecutive raw GNSS fixes is the baseline to compare with. A
  jump of our fix shows as a large residual, a drifting odometry as a slowly growing one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from crossview_ros import geo
from crossview_ros.covariance import CHI2_2DOF_95


@dataclass
class Stream:
    """One recording's frames, in stamp order, as the truth-free figures need them (arrays of N frames;
    NaN where a frame has no value) and its odometry (x, y in the odometry's frame, any frame)."""

    stamp_s: np.ndarray
    accepted: np.ndarray  # bool: a fix was published
    lat_deg: np.ndarray  # our published fix
    lon_deg: np.ndarray
    gnss_stamp_s: np.ndarray  # the raw GNSS fix paired with the frame
    gnss_lat_deg: np.ndarray
    gnss_lon_deg: np.ndarray
    gnss_cov_enu_m2: np.ndarray  # (N, 2, 2) horizontal covariance, NaN when the receiver gives none
    odom_stamp_s: np.ndarray  # (O,) empty without odometry
    odom_xy_m: np.ndarray  # (O, 2)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _stats(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    v = _finite(values)
    if not v.size:
        return {"count": 0, "median_m": None, "p95_m": None, "max_m": None}
    return {"count": int(v.size), "median_m": float(np.median(v)), "p95_m": float(np.percentile(v, 95)),
            "max_m": float(v.max())}


def innovation(s: Stream) -> tuple[np.ndarray, np.ndarray]:
    """(distance m, d^2 against the GNSS covariance) of each published fix from its raw GNSS fix; NaN
    where there is no published fix, no GNSS fix, or (d^2) no usable GNSS covariance."""
    n = s.stamp_s.size
    dist, d2 = np.full(n, np.nan), np.full(n, np.nan)
    ok = s.accepted & np.isfinite(s.lat_deg) & np.isfinite(s.gnss_lat_deg)
    if not ok.any():
        return dist, d2
    de, dn = geo.offset_enu_m(s.gnss_lat_deg[ok], s.gnss_lon_deg[ok], s.lat_deg[ok], s.lon_deg[ok])
    v = np.column_stack([np.atleast_1d(de), np.atleast_1d(dn)])
    dist[ok] = np.hypot(v[:, 0], v[:, 1])
    for k, i in enumerate(np.flatnonzero(ok)):
        cov = s.gnss_cov_enu_m2[i]
        if np.all(np.isfinite(cov)) and np.linalg.det(cov) > 0.0:
            d2[i] = float(v[k] @ np.linalg.solve(cov, v[k]))
    return dist, d2


def odometry_residuals(stamp_s: np.ndarray, lat_deg: np.ndarray, lon_deg: np.ndarray, odom_stamp_s: np.ndarray,
                       odom_xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|d_fix - d_odom| m, interval s) of each pair of consecutive positions (NaN ones skipped) whose
    stamps both lie within the odometry; empty without odometry."""
    keep = np.isfinite(lat_deg) & np.isfinite(lon_deg)
    t, lat, lon = stamp_s[keep], lat_deg[keep], lon_deg[keep]
    if t.size < 2 or odom_stamp_s.size < 2:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(t, kind="stable")
    t, lat, lon = t[order], lat[order], lon[order]
    inside = (t[:-1] >= odom_stamp_s[0]) & (t[1:] <= odom_stamp_s[-1])
    ox = np.interp(t, odom_stamp_s, odom_xy_m[:, 0])
    oy = np.interp(t, odom_stamp_s, odom_xy_m[:, 1])
    d_odom = np.hypot(np.diff(ox), np.diff(oy))
    d_fix = np.atleast_1d(geo.distance_m(lat[:-1], lon[:-1], lat[1:], lon[1:]))
    return np.abs(d_fix - d_odom)[inside], np.diff(t)[inside]


def _gnss_track(s: Stream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct raw GNSS fixes the frames were paired with, by stamp."""
    ok = np.isfinite(s.gnss_stamp_s) & np.isfinite(s.gnss_lat_deg)
    _, first = np.unique(s.gnss_stamp_s[ok], return_index=True)
    return s.gnss_stamp_s[ok][first], s.gnss_lat_deg[ok][first], s.gnss_lon_deg[ok][first]


def summarize(streams: Sequence[Stream], withheld: Mapping[str, int], latency_ms: Sequence[float],
              latency_what: str) -> dict[str, Any]:
    """The truth-free figures (module docstring) over one or more recordings (pairs never span two)."""
    frames = sum(s.stamp_s.size for s in streams)
    published = int(sum(int(np.sum(s.accepted)) for s in streams))
    duration_s = float(sum(float(s.stamp_s.max() - s.stamp_s.min()) for s in streams if s.stamp_s.size > 1))
    dist, d2, res, gap, g_res = [], [], [], [], []
    has_odometry = any(s.odom_stamp_s.size > 1 for s in streams)
    for s in streams:
        di, d2i = innovation(s)
        dist.append(di)
        d2.append(d2i)
        lat = np.where(s.accepted, s.lat_deg, np.nan)
        r, g = odometry_residuals(s.stamp_s, lat, np.where(s.accepted, s.lon_deg, np.nan), s.odom_stamp_s, s.odom_xy_m)
        res.append(r)
        gap.append(g)
        g_res.append(odometry_residuals(*_gnss_track(s), s.odom_stamp_s, s.odom_xy_m)[0])
    d2_all = _finite(np.concatenate(d2) if d2 else [])
    lat_ms = _finite(latency_ms)
    out: dict[str, Any] = {
        "frames": frames, "published": published, "published_share": published / frames if frames else 0.0,
        "duration_s": duration_s,
        "frames_per_s": frames / duration_s if duration_s > 0 else None,
        "published_per_s": published / duration_s if duration_s > 0 else None,
        "withheld": {k: int(v) for k, v in sorted(withheld.items()) if v},
        "latency_ms": {"of": latency_what, "count": int(lat_ms.size),
                       **{f"p{q}": float(np.percentile(lat_ms, q)) if lat_ms.size else None for q in (50, 95, 99)}},
        "gnss_innovation": {**_stats(np.concatenate(dist) if dist else []), "normalised_count": int(d2_all.size),
                            "d2_median": float(np.median(d2_all)) if d2_all.size else None,
                            "d2_under_5.99_pct": float(100.0 * np.mean(d2_all < CHI2_2DOF_95)) if d2_all.size
                            else None},
        "odometry_consistency": None,
    }
    if has_odometry:
        gaps = _finite(np.concatenate(gap))
        ours, gnss = _stats(np.concatenate(res)), _stats(np.concatenate(g_res))
        out["odometry_consistency"] = {**ours, "median_interval_s": float(np.median(gaps)) if gaps.size else None,
                                       "gnss": gnss}
    return out


def _f(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def lines(s: dict[str, Any]) -> list[str]:
    """The figures as plain sentences (crossview-localize prints them, the replay's report quotes them)."""
    lat = s["latency_ms"]
    out = [f"published {s['published']} of {s['frames']} frames ({_f(100.0 * s['published_share'], 1)} %), "
           f"{_f(s['published_per_s'])} fixes/s over {_f(s['duration_s'], 1)} s ({_f(s['frames_per_s'])} frames/s)",
           "withheld: " + (", ".join(f"{k} {v}" for k, v in s["withheld"].items()) or "none"),
           f"latency ({lat['of']}): p50 {_f(lat['p50'], 1)} ms, p95 {_f(lat['p95'], 1)} ms, p99 {_f(lat['p99'], 1)} ms"]
    g = s["gnss_innovation"]
    out.append(f"innovation against GNSS over {g['count']} published fixes: median {_f(g['median_m'])} m, p95 "
               f"{_f(g['p95_m'])} m, max {_f(g['max_m'])} m" + (
                   f"; normalised by the GNSS covariance ({g['normalised_count']} fixes): d^2 median "
                   f"{_f(g['d2_median'])}, {_f(g['d2_under_5.99_pct'], 1)} % under 5.99 (an honest receiver "
                   "covariance: about 95 %)" if g["normalised_count"] else "; the GNSS gives no covariance"))
    o = s["odometry_consistency"]
    if o is None:
        out.append("consistency with odometry: no odometry topic")
    else:
        out.append(f"consistency with odometry, |distance between consecutive fixes - odometry distance| over "
                   f"{o['count']} pairs (median interval {_f(o['median_interval_s'])} s): median "
                   f"{_f(o['median_m'])} m, p95 {_f(o['p95_m'])} m; raw GNSS over {o['gnss']['count']} pairs: median "
                   f"{_f(o['gnss']['median_m'])} m, p95 {_f(o['gnss']['p95_m'])} m")
    return out


def print_lines(s: dict[str, Any], file: TextIO | None = None) -> None:
    """crossview-localize --bag without truth: the truth-free figures."""
    print("without truth:", file=file)
    for line in lines(s):
        print("  " + line, file=file)


def markdown_table(s: dict[str, Any]) -> list[str]:
    """The figures as the replay report's table."""
    g, o, lat = s["gnss_innovation"], s["odometry_consistency"], s["latency_ms"]
    rows = ["| quantity | value |", "|---|---:|",
            f"| published share [%] | {_f(100.0 * s['published_share'], 1)} |",
            f"| published fixes per second | {_f(s['published_per_s'])} |",
            f"| frames per second in the recording | {_f(s['frames_per_s'])} |",
            f"| latency p50 / p95 / p99 [ms] ({lat['of']}) | {_f(lat['p50'], 1)} / {_f(lat['p95'], 1)} / "
            f"{_f(lat['p99'], 1)} |",
            f"| innovation against GNSS median / p95 [m] | {_f(g['median_m'])} / {_f(g['p95_m'])} |",
            f"| innovation d^2 median (GNSS covariance) | {_f(g['d2_median'])} |",
            f"| innovation d^2 < 5.99 [%] | {_f(g['d2_under_5.99_pct'], 1)} |"]
    if o is not None:
        rows += [f"| odometry consistency median / p95 [m] (crossview, {o['count']} pairs) | {_f(o['median_m'])} / "
                 f"{_f(o['p95_m'])} |",
                 f"| odometry consistency median / p95 [m] (raw GNSS, {o['gnss']['count']} pairs) | "
                 f"{_f(o['gnss']['median_m'])} / {_f(o['gnss']['p95_m'])} |"]
    rows += ["| withheld | " + (", ".join(f"{k} {v}" for k, v in s["withheld"].items()) or "none") + " |"]
    return rows
