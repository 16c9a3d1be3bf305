"""What crossview-localize prints: the single-mode table row, and a batch's error statistics.

summarize() measures a batch against the frames' truth; a bag without truth by what needs none
(crossview_ros.truth_free); print_summary() writes it as text (the --json output carries the same
dict).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from crossview_ros import geo, truth_free
from crossview_ros.covariance import CHI2_1DOF_95, CHI2_2DOF_95
from crossview_ros.estimate import Estimate, Fix
from crossview_ros.localize_frames import Frame


def estimate_row(name: str, e: Estimate) -> str:
    """One line of the single-mode table (under TABLE_HEADER)."""
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    bearing = None if e.yaw_enu_rad is None else float(geo.bearing_deg_from_yaw_enu(e.yaw_enu_rad))
    return (f"{name[:40]:<40} {str(e.reason):<16} {f(e.lat_deg, '.7f'):>12} {f(e.lon_deg, '.7f'):>13} "
            f"{f(e.sigma_m, '.1f'):>8} {f(bearing, '.1f'):>8} {f(e.score, '.4f'):>7} {f(e.margin, '.4f'):>7} "
            f"{f(e.tile_id, 'd'):>7} {e.tiles_in_scope:>6} {e.latency.total_ms:>8.1f}")


TABLE_HEADER = (f"{'panorama':<40} {'reason':<16} {'lat_deg':>12} {'lon_deg':>13} {'sigma_m':>8} {'bear_deg':>8} "
                f"{'score':>7} {'margin':>7} {'tile':>7} {'scope':>6} {'total_ms':>8}")


def percent(mask: np.ndarray) -> float:
    """Share of True in `mask`, percent (nan when empty)."""
    return float(100.0 * np.mean(mask)) if mask.size else float("nan")


def protection_summary(published: Sequence[Estimate], error_m: np.ndarray) -> dict[str, Any] | None:
    """How often the true error of a published fix exceeds its protection level (integrity: at most
    protection_risk of them should), and how wide the levels are (a level wide enough is never exceeded,
    so the share alone proves nothing); fixes published without a level are counted apart."""
    if not published:
        return None
    has = np.array([e.protection_level_m is not None for e in published])
    level_m = np.array([e.protection_level_m for e in published if e.protection_level_m is not None], dtype=float)
    exceeded = error_m[has] > level_m
    return {"with_level": int(has.sum()), "without_level": int((~has).sum()), "exceeded": int(exceeded.sum()),
            "exceeded_percent": percent(exceeded) if exceeded.size else None,
            "median_level_m": float(np.median(level_m)) if level_m.size else None,
            "p95_level_m": float(np.percentile(level_m, 95)) if level_m.size else None}


def _streams(estimates: Sequence[Estimate], frames: Sequence[Frame], fixes: Sequence[Fix]) -> list[truth_free.Stream]:
    """The frames of each recording (Frame.city and path) as truth_free streams, their odometry pieced
    together from the rows each frame carries."""
    groups: dict[tuple[str | None, str], list[int]] = {}
    for i, fr in enumerate(frames):
        groups.setdefault((fr.city, str(fr.path)), []).append(i)
    out = []
    for idx in groups.values():
        odom = [frames[i].odometry for i in idx if frames[i].odometry is not None and len(frames[i].odometry)]
        rows = np.concatenate(odom) if odom else np.zeros((0, 3))
        covs = []
        for i in idx:
            cov = fixes[i].covariance_enu_m2
            covs.append(np.asarray(cov, dtype=np.float64)[:2, :2] if cov is not None else np.full((2, 2), np.nan))
        est = [estimates[i] for i in idx]
        out.append(truth_free.Stream(
            stamp_s=np.array([frames[i].stamp_s for i in idx], dtype=np.float64),
            accepted=np.array([e.accepted for e in est], dtype=bool),
            lat_deg=np.array([e.lat_deg if e.accepted else np.nan for e in est], dtype=np.float64),
            lon_deg=np.array([e.lon_deg if e.accepted else np.nan for e in est], dtype=np.float64),
            gnss_stamp_s=np.array([fixes[i].stamp_s for i in idx], dtype=np.float64),
            gnss_lat_deg=np.array([fixes[i].lat_deg for i in idx], dtype=np.float64),
            gnss_lon_deg=np.array([fixes[i].lon_deg for i in idx], dtype=np.float64),
            gnss_cov_enu_m2=np.array(covs).reshape(-1, 2, 2),
            odom_stamp_s=rows[:, 0], odom_xy_m=rows[:, 1:3]))
    return out


def summarize_truth_free(estimates: Sequence[Estimate], frames: Sequence[Frame],
                         fixes: Sequence[Fix]) -> dict[str, Any] | None:
    """The truth-free figures of stream frames (None for independent panoramas, which have no stamps)."""
    if not frames or any(fr.stamp_s is None for fr in frames):
        return None
    withheld = Counter(str(e.reason) for e in estimates if not e.accepted)
    return truth_free.summarize(_streams(estimates, frames, fixes), withheld,
                                [e.latency.total_ms for e in estimates], "processing, decode to decision")


def summarize(estimates: Sequence[Estimate], frames: Sequence[Frame], fixes: Sequence[Fix],
              heading: bool) -> dict[str, Any]:
    """Error statistics of a batch against the frames' truth (and of the fixes), as crossview-localize --json
    prints; when a frame has no truth: "truth" False, the error figures None and "truth_free" (streams)."""
    n = len(estimates)
    published = [i for i, e in enumerate(estimates) if e.accepted]
    base: dict[str, Any] = {
        "frames": n, "published": len(published),
        "published_percent": percent(np.array([e.accepted for e in estimates])),
        "reasons": dict(sorted(Counter(str(e.reason) for e in estimates).items())),
        "fix_overruled": sum(1 for e in estimates if e.accepted and e.fix_overruled),
        "imagery_vouched": sum(1 for e in estimates if e.accepted and e.imagery_vouched),
        "ambiguity_vouched": sum(1 for e in estimates if e.accepted and e.ambiguity_vouched),
        "truth": all(fr.truth is not None for fr in frames),
    }
    latency = {"p50": float(np.percentile([e.latency.total_ms for e in estimates], 50)),
               "p99": float(np.percentile([e.latency.total_ms for e in estimates], 99))}
    if not base["truth"]:
        tf = summarize_truth_free(estimates, frames, fixes)
        return {**base, "gnss_error_median_m": None, "error_m": None, "error_all_positioned_median_m": None,
                "error_all_positioned_over_25m_percent": None,
                "covariance_share_d2_under_5.99_percent": None,
                "published_sigma_under_10m": sum(1 for i in published if estimates[i].sigma_m is not None
                                                 and estimates[i].sigma_m < 10.0),
                "protection_level": None, "latency_ms": latency, "heading": None, "truth_free": tf}
    out = _summarize_truth(estimates, frames, fixes, heading, published)
    return {**base, **out, "latency_ms": latency}


def position_errors_m(frames: Sequence[Frame], estimates: Sequence[Estimate], idx: Sequence[int]) -> np.ndarray:
    """(len(idx),) metres from each listed frame's truth to its estimate (both must be there)."""
    return np.array([float(geo.distance_m(frames[i].truth.lat_deg, frames[i].truth.lon_deg,
                                          estimates[i].lat_deg, estimates[i].lon_deg)) for i in idx])


def _summarize_truth(estimates: Sequence[Estimate], frames: Sequence[Frame], fixes: Sequence[Fix], heading: bool,
                     published: list[int]) -> dict[str, Any]:
    """The figures against the truth (summarize)."""
    positioned = [i for i, e in enumerate(estimates) if e.has_position]
    err, everywhere = position_errors_m(frames, estimates, published), position_errors_m(frames, estimates, positioned)
    gnss = np.array([float(geo.distance_m(fr.truth.lat_deg, fr.truth.lon_deg, fx.lat_deg, fx.lon_deg))
                     for fr, fx in zip(frames, fixes)])
    d2 = []
    for i in published:
        t, e = frames[i].truth, estimates[i]
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg)
        v = np.array([de, dn])
        d2.append(float(v @ np.linalg.solve(e.covariance_enu_m2, v)))
    out: dict[str, Any] = {
        "gnss_error_median_m": float(np.median(gnss)) if gnss.size else None,
        "error_m": None if not err.size else {
            "mean": float(err.mean()), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "p95": float(np.percentile(err, 95)),
            "max": float(err.max()), **{f"under_{t}m_percent": percent(err < t) for t in (1, 5, 10, 25, 50)},
            "over_25m_percent": percent(err > 25.0),
        },
        "error_all_positioned_median_m": float(np.median(everywhere)) if positioned else None,
        "error_all_positioned_over_25m_percent": percent(everywhere > 25.0) if positioned else None,
        "covariance_share_d2_under_5.99_percent": percent(np.array(d2) < CHI2_2DOF_95) if d2 else None,
        "published_sigma_under_10m": sum(1 for i in published
                                         if estimates[i].sigma_m is not None and estimates[i].sigma_m < 10.0),
        "protection_level": protection_summary([estimates[i] for i in published], err),
    }
    if heading:
        yaw_idx = [i for i in published if estimates[i].yaw_enu_rad is not None
                   and frames[i].truth.yaw_enu_rad is not None]
        yerr = np.array([abs(float(geo.wrap_angle_rad(estimates[i].yaw_enu_rad - frames[i].truth.yaw_enu_rad)))
                         for i in yaw_idx])
        yd2 = np.array([yerr[k] ** 2 / estimates[i].yaw_variance_rad2 for k, i in enumerate(yaw_idx)])
        deg = np.degrees(yerr)
        out["heading"] = None if not yaw_idx else {
            "frames": len(yaw_idx), "median_error_deg": float(np.median(deg)),
            "under_5deg_percent": percent(deg < 5), "under_10deg_percent": percent(deg < 10),
            "flip_percent": percent(deg > 135), "flip_over_90deg_percent": percent(deg > 90),
            "share_under_3.84_percent": percent(yd2 < CHI2_1DOF_95),
        }
    return out


def reasons_text(s: dict[str, Any]) -> str:
    """A summary's frames per reason, and how many of the OK ones odometry published over their fix or over
    the MISMATCH or AMBIGUOUS gate."""
    vouched = [f"{n} whose {what} odometry overruled"
               for n, what in ((s.get("fix_overruled"), "fix"), (s.get("imagery_vouched"), "MISMATCH"),
                               (s.get("ambiguity_vouched"), "AMBIGUOUS")) if n]
    return (", ".join(f"{k} {v}" for k, v in s["reasons"].items())
            + (f" (OK includes {' and '.join(vouched)})" if vouched else ""))


def print_summary(s: dict[str, Any], file: TextIO | None = None) -> None:
    """The summary as text lines (to stdout unless `file`)."""
    print(f"frames {s['frames']}, published {s['published']} ({s['published_percent']:.1f} %)", file=file)
    print("reasons: " + reasons_text(s), file=file)
    if s["gnss_error_median_m"] is not None:
        print(f"GNSS fix error median {s['gnss_error_median_m']:.1f} m", file=file)
    e = s["error_m"]
    if e:
        print(f"published error: mean {e['mean']:.2f} m, median {e['median']:.2f} m, p90 {e['p90']:.2f} m, "
              f"p95 {e['p95']:.2f} m, max {e['max']:.1f} m", file=file)
        print("  " + ", ".join(f"< {t} m {e[f'under_{t}m_percent']:.1f} %" for t in (1, 5, 10, 25, 50))
              + f", > 25 m {e['over_25m_percent']:.1f} %", file=file)
    if s["error_all_positioned_median_m"] is not None:
        print(f"every positioned frame (gated ones too): median error {s['error_all_positioned_median_m']:.2f} m, "
              f"> 25 m {s['error_all_positioned_over_25m_percent']:.1f} %", file=file)
    if s["covariance_share_d2_under_5.99_percent"] is not None:
        print(f"covariance: {s['covariance_share_d2_under_5.99_percent']:.1f} % of published d^2 < 5.99 "
              "(honest: 90..98 %)", file=file)
    pl = s.get("protection_level")
    if pl and pl["exceeded_percent"] is not None:
        without = f"; {pl['without_level']} published without one" if pl["without_level"] else ""
        print(f"protection level: exceeded by {pl['exceeded']} of {pl['with_level']} published fixes "
              f"({pl['exceeded_percent']:.1f} %), median level {pl['median_level_m']:.2f} m{without}", file=file)
    h = s.get("heading")
    if "heading" in s and h is None and s.get("truth", True):
        print("heading: no published frame has both a yaw and a true yaw (an RTK fix as truth gives none; map a "
              "pose as --truth-heading-topic)", file=file)
    if h:
        print(f"heading: median error {h['median_error_deg']:.1f} deg, < 5 deg {h['under_5deg_percent']:.1f} %, "
              f"< 10 deg {h['under_10deg_percent']:.1f} %, flips (> 135 deg) {h['flip_percent']:.1f} %, "
              f"> 90 deg {h['flip_over_90deg_percent']:.1f} %, "
              f"yaw d^2 < 3.84 {h['share_under_3.84_percent']:.1f} %", file=file)
    print(f"latency total p50 {s['latency_ms']['p50']:.1f} ms, p99 {s['latency_ms']['p99']:.1f} ms", file=file)
    if not s.get("truth", True) and s.get("truth_free"):
        truth_free.print_lines(s["truth_free"], file)


def print_fix_sigma_scale(scale: float, file: TextIO | None = None) -> None:
    """--calibrate, first line: the factor fitted to the fixes' reported sigma."""
    print(f"fix sigma scale {scale:.3f}: the fixes' reported sigma x this puts 95 % of their squared "
          "Mahalanobis errors under 5.99", file=file)


def print_calibration(calibration: dict[str, Any], file: TextIO | None = None) -> None:
    """--calibrate, last line: how well the fitted covariance model covers the batch, and where it went."""
    fit = calibration["fit"]
    print(f"covariance calibrated on {fit['samples']} estimates "
          f"({fit['share_d2_below_chi2'] * 100:.1f} % of d^2 < {fit['chi2_2dof_quantile']:.2f}); "
          f"wrote {calibration['path']}", file=file)
