"""crossview-walks' figures: each walk's localization kept as a WalkResult, pooled per receiver and
odometry setting, and printed as the pooled, mismatch and per-walk tables.

Every figure of our fixes comes from crossview_ros.localize_summary.summarize (the same numbers
crossview-localize prints), run once on a walk and once on the pooled frames of many walks; this
module adds the spread over walks, the layout, and the fused track of each walk localized with
odometry (fused_walk: the replay's EKF, crossview_ros.fusion with config/ekf.yaml, fed the bag's
odometry twist and our accepted estimates as the node would publish them).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from crossview_ros import fusion, geo
from crossview_ros.bag.drive import read_bag
from crossview_ros.estimate import Estimate, Fix
from crossview_ros.localize_frames import Frame
from crossview_ros.localize_summary import position_errors_m, reasons_text, summarize
from crossview_ros.pose_output import planar_pose, pose_covariance
from crossview_ros.replay_evaluation import odometry_measurements
from crossview_training.demo_summary import format_table

D2_KEY = "covariance_share_d2_under_5.99_percent"
SAME_M = 0.005  # a fused p95 this close to ours is not above it (the table prints centimetres)
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
    fused: dict[str, Any] | None = None  # fused_walk()'s figures (walks localized with odometry in their city)
    fused_error_m: np.ndarray | None = None  # the fused track's error at each frame (NaN before our first pose)
    fix_offset_m: float = 0.0  # every fix moved this far from the receiver's (the GNSS fault check)

    @property
    def mismatched(self) -> bool:
        return self.tiles_city_seed != self.city_seed

    @property
    def faulted(self) -> bool:
        return self.fix_offset_m > 0.0

    @property
    def own(self) -> bool:
        """The walk as recorded: its own city's tiles, its receiver's fixes."""
        return not self.mismatched and not self.faulted

    def ids(self) -> dict[str, Any]:
        """The walk's identity, as the JSON output lists it."""
        return {"city_seed": self.city_seed, "walk_seed": self.walk_seed, "mode": self.mode,
                "receiver": self.receiver, "odometry": self.odometry, "tiles_city_seed": self.tiles_city_seed,
                "fix_offset_m": self.fix_offset_m}


def walk_result(frames: Sequence[Frame], fixes: Sequence[Fix], estimates: Sequence[Estimate], heading: bool,
                **ids: Any) -> WalkResult:
    """A WalkResult from one walk's localization (its panoramas dropped to keep many walks in memory)."""
    light = [dataclasses.replace(fr, data=None, odometry=None) for fr in frames]
    return WalkResult(frames=light, fixes=list(fixes), estimates=list(estimates),
                      summary=summarize(estimates, frames, fixes, heading), **ids)


def estimate_measurements(estimates: Sequence[Estimate], enu: geo.LocalENU) -> list[fusion.Measurement]:
    """Our accepted estimates as the node publishes them (crossview_ros.pose_output, the node's own
    conversion), as inputs of the fused track: crossview/pose in the datum's ENU plane with its
    covariance (the yaw's variance when there is a yaw, UNKNOWN_VARIANCE otherwise: fusion then leaves
    the yaw out), and crossview/heading when there is a yaw. Rejected estimates publish nothing."""
    out: list[fusion.Measurement] = []
    for e in estimates:
        if not e.accepted:
            continue
        planar = planar_pose(e, "datum", enu)
        has_yaw = planar.yaw_rad is not None
        out.append(fusion.pose_with_covariance(
            e.stamp_s, planar.x_m, planar.y_m, float(planar.yaw_rad) if has_yaw else 0.0,
            pose_covariance(planar.covariance_m2, e.yaw_variance_rad2 if has_yaw else None)))
        if has_yaw and e.yaw_variance_rad2 is not None:
            out.append(fusion.heading_yaw(e.stamp_s, float(e.yaw_enu_rad), float(e.yaw_variance_rad2)))
    return out


def p95_m(error_m: np.ndarray, mask: np.ndarray) -> float | None:
    """p95 of the finite errors where mask holds (None: none)."""
    err = error_m[np.isfinite(error_m) & mask]
    return float(np.percentile(err, 95)) if err.size else None


def published_frames(frames: Sequence[Frame], estimates: Sequence[Estimate]) -> np.ndarray:
    """(N,) bool: the frames we published a fix for."""
    published = {e.stamp_s for e in estimates if e.accepted}
    return np.array([fr.stamp_s in published for fr in frames], dtype=bool)


def fused_figures(frames: Sequence[Frame], estimates: Sequence[Estimate], odometry: Sequence[fusion.Measurement],
                  enu: geo.LocalENU, config: fusion.FusionConfig,
                  ours_p95_m: float | None) -> tuple[dict[str, Any], np.ndarray]:
    """The fused track (odometry twist + our poses and headings, no raw GNSS) read at each frame's stamp
    and measured against the frame's truth (the truth our fixes are measured against): its figures
    beside our fixes' p95, and its error per frame (NaN before our first published pose).

    Two p95s, because our fixes exist only on the frames we publish: p95_published_m over those
    frames, like for like with ours (not_above_ours: it is <= our p95, so fusion made no published
    position worse, a captured filter would), and p95_m over every frame the track has a position
    at, the gaps included, where the track is wheel odometry dead-reckoned from the last pose it took
    (not_above_ours_all_frames, p95_unpublished_m). None where a figure has no frames."""
    track = fusion.fuse_track([*odometry, *estimate_measurements(estimates, enu)], [fr.stamp_s for fr in frames],
                              fusion.with_gnss(config, False))
    error_m = np.full(len(frames), np.nan)
    ok = np.isfinite(track.x_m) & np.isfinite(track.y_m)
    if ok.any():
        lat, lon, _ = enu.inverse(track.x_m[ok], track.y_m[ok])
        truth = np.array([[fr.truth.lat_deg, fr.truth.lon_deg] for fr in frames])[ok]
        error_m[ok] = geo.distance_m(truth[:, 0], truth[:, 1], lat, lon)
    on_ours = published_frames(frames, estimates)

    def not_above(value: float | None) -> bool | None:
        return None if value is None or ours_p95_m is None else bool(value <= ours_p95_m + SAME_M)

    p95_all, p95_ours = p95_m(error_m, ok), p95_m(error_m, on_ours)
    figures = {"frames": int(ok.sum()), "median_m": float(np.median(error_m[ok])) if ok.any() else None,
               "p95_m": p95_all, "p95_published_m": p95_ours, "p95_unpublished_m": p95_m(error_m, ~on_ours),
               "frames_published": int((ok & on_ours).sum()), "ours_p95_m": ours_p95_m,
               "not_above_ours": not_above(p95_ours), "not_above_ours_all_frames": not_above(p95_all),
               "accepted": dict(track.accepted), "rejected": dict(track.rejected)}
    return figures, error_m


def fused_walk(bag: Path, result: WalkResult, estimates: Sequence[Estimate], config: fusion.FusionConfig) -> None:
    """Set result.fused and result.fused_error_m: the walk's fused track, in the plane of the bag's
    datum (the node's pose_origin 'datum'), with the bag's odometry twist."""
    drive = read_bag(bag)
    enu = geo.LocalENU(drive.datum_lat_deg, drive.datum_lon_deg)
    ours = (result.summary["error_m"] or {}).get("p95")
    result.fused, result.fused_error_m = fused_figures(result.frames, estimates, odometry_measurements(drive), enu,
                                                       config, ours)


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
    out["fused"] = pool_fused(results)
    return out


def pool_fused(results: Sequence[WalkResult]) -> dict[str, Any] | None:
    """The fused tracks of the walks that have one: p95 and median over their frames pooled (all of them,
    and those we published a fix for), and on how many walks the fused p95 is not above our fixes' p95
    (of those where both exist; on the same frames, and over all frames); None for none."""
    fused = [r for r in results if r.fused is not None and r.fused_error_m is not None]
    if not fused:
        return None
    err = np.concatenate([r.fused_error_m for r in fused])
    ours = np.concatenate([published_frames(r.frames, r.estimates) for r in fused])
    ok = np.isfinite(err)

    def count(key: str) -> tuple[int, int]:
        flags = [r.fused[key] for r in fused if r.fused.get(key) is not None]
        return sum(flags), len(flags)

    (same, compared), (all_frames, _) = count("not_above_ours"), count("not_above_ours_all_frames")
    return {"walks": len(fused), "frames": int(ok.sum()), "median_m": float(np.median(err[ok])) if ok.any() else None,
            "p95_m": p95_m(err, ok), "p95_published_m": p95_m(err, ours), "p95_unpublished_m": p95_m(err, ~ours),
            "walks_compared": compared, "walks_not_above_ours": same, "walks_not_above_ours_all_frames": all_frames}


def _positioned_errors_m(result: WalkResult) -> dict[float, float]:
    """{frame stamp: the estimate's error (m)} over the frames the walk positioned, published or not."""
    idx = [i for i, (fr, e) in enumerate(zip(result.frames, result.estimates))
           if e.has_position and fr.truth is not None and fr.stamp_s is not None]
    errors = position_errors_m(result.frames, result.estimates, idx)
    return {result.frames[i].stamp_s: float(err) for i, err in zip(idx, errors)}


def paired_over_25(results: Sequence[WalkResult]) -> dict[str, Any] | None:
    """Odometry on against off on the same frames: over the frames both runs of a walk positioned (published
    or withheld), the share of each run's estimates beyond 25 m. With odometry a fix gone stale is carried
    and its frames positioned, where without they have no estimate: the shares of each run's own positioned
    frames compare different frames, these compare the same ones. None when no walk has both runs."""
    def key(r: WalkResult) -> tuple[int, int, str]:
        return r.city_seed, r.walk_seed, r.mode

    on = {key(r): r for r in results if r.own and r.odometry}
    off = {key(r): r for r in results if r.own and not r.odometry}
    walks, frames, over_on, over_off = 0, 0, 0, 0
    for k in sorted(on.keys() & off.keys()):
        a, b = _positioned_errors_m(on[k]), _positioned_errors_m(off[k])
        both = a.keys() & b.keys()
        walks += 1
        frames += len(both)
        over_on += sum(a[t] > 25.0 for t in both)
        over_off += sum(b[t] > 25.0 for t in both)
    if not walks:
        return None
    return {"walks": walks, "frames": frames,
            "odometry_over_25m_percent": 100.0 * over_on / frames if frames else None,
            "no_odometry_over_25m_percent": 100.0 * over_off / frames if frames else None}


def pooled_tables(results: Sequence[WalkResult], receivers: Sequence[str], heading: bool) -> dict[str, Any]:
    """{receiver: {"odometry": pooled, "no_odometry": pooled, "mismatch": pooled, "fault": pooled, "paired":
    paired_over_25}} over the results: the walks as recorded with and without odometry (and the two on the
    frames both positioned), in another city's tiles, with their fixes moved."""
    out: dict[str, Any] = {}
    for receiver in receivers:
        mine = [r for r in results if r.receiver == receiver]
        out[receiver] = {
            "odometry": pool([r for r in mine if r.odometry and r.own], heading),
            "no_odometry": pool([r for r in mine if not r.odometry and r.own], heading),
            "mismatch": pool([r for r in mine if r.mismatched], heading),
            "fault": pool([r for r in mine if r.faulted and not r.mismatched], heading),
            "paired": paired_over_25(mine),
        }
    return out


def num(value: float | None, spec: str = ".1f") -> str:
    """A figure for a table cell ('-' when there is none)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def pooled_row(receiver: str, odometry: str, s: dict[str, Any]) -> list[str]:
    """One line of the pooled table."""
    e, h, pl = s["error_m"] or {}, s.get("heading") or {}, s.get("protection_level") or {}
    fz = s.get("fused")
    return [receiver, odometry, str(s["walks"]), str(s["frames"]), num(s["published_percent"]),
            num(e.get("median"), ".2f"), num(e.get("p95"), ".2f"), num(fz and fz.get("p95_published_m"), ".2f"),
            f"{fz['walks_not_above_ours']}/{fz['walks_compared']}" if fz else "-", num(fz and fz["p95_m"], ".2f"),
            f"{fz['walks_not_above_ours_all_frames']}/{fz['walks_compared']}" if fz else "-",
            num(e.get("over_25m_percent")), num(s.get("error_all_positioned_over_25m_percent")),
            num(s[D2_KEY]), num(s["d2_share_min_over_walks_percent"]), num(h.get("flip_over_90deg_percent")),
            num(h.get("share_under_3.84_percent")), num(pl.get("exceeded_percent"), ".2f"),
            num(pl.get("median_level_m"), ".2f"), str(pl.get("without_level", "-"))]


POOLED_HEADERS = ["receiver", "odometry", "walks", "frames", "publ %", "median m", "p95 m", "fused p95 m",
                  "fused<=ours walks", "fused p95 all m", "all<=ours walks", "> 25 m %",
                  "> 25 m gated too %", "d2<5.99 %", "worst walk d2 %", "flips>90 %", "yaw d2<3.84 %", "> PL %", "PL median m",
                  "no PL"]


def print_pooled(tables: dict[str, Any], file: TextIO | None = None) -> None:
    """The pooled table (per receiver, with and without odometry) and each row's reasons."""
    rows, reasons = [], []
    for receiver, t in tables.items():
        for key, label in (("odometry", "on"), ("no_odometry", "off")):
            if t[key] is not None:
                rows.append(pooled_row(receiver, label, t[key]))
                reasons.append(f"  {receiver} odometry {label}: {reasons_text(t[key])}")
    print(format_table(POOLED_HEADERS, rows), file=file or sys.stdout)
    print("reasons (frames):", *reasons, sep="\n", file=file or sys.stdout)
    paired = [f"  {receiver}: {p['frames']} frames of {p['walks']} walks, "
              f"{num(p['odometry_over_25m_percent'], '.2f')} % with odometry, "
              f"{num(p['no_odometry_over_25m_percent'], '.2f')} % without"
              for receiver, t in tables.items() if (p := t.get("paired")) is not None]
    if paired:
        print("> 25 m on the same frames (positioned with and without odometry, gated ones too):", *paired,
              sep="\n", file=file or sys.stdout)


CHECK_SKIPPED = {"mismatch": "mismatch check: skipped (it needs two or more --city-seeds)",
                 "fault": "GNSS fault check: skipped (--fault-m 0)"}


def print_mismatch(tables: dict[str, Any], file: TextIO | None = None, key: str = "mismatch") -> None:
    """A check where every published fix is wrong and none should claim < 10 m: the test walks against another
    city's tiles ("mismatch") or with their fixes moved --fault-m in their own ("fault")."""
    rows = []
    for receiver, t in tables.items():
        s = t.get(key)
        if s is not None:
            rows.append([receiver, str(s["walks"]), str(s["frames"]), str(s["published"]),
                         str(s["published_sigma_under_10m"]), num((s["error_m"] or {}).get("median"))])
    out = file or sys.stdout
    if not rows:
        print(CHECK_SKIPPED[key], file=out)
        return
    print(format_table(["receiver", "walks", "frames", "published", f"sigma < {MISMATCH_SIGMA_M:g} m",
                        "median error m"], rows), file=out)


def yes_no(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def as_recorded(walk: dict[str, Any]) -> bool:
    """WalkResult.own of a walk as the JSON lists it: its own city's tiles, its receiver's fixes (a report
    from before the fault check has no fix_offset_m)."""
    return walk["tiles_city_seed"] == walk["city_seed"] and not walk.get("fix_offset_m")


def print_walks(walks: Sequence[dict[str, Any]], file: TextIO | None = None) -> None:
    """One line per localized walk ({**WalkResult.ids(), "summary": ...}, as the JSON lists them);
    mismatch and fault runs are left out (their tables pool them)."""
    rows = []
    for w in walks:
        if not as_recorded(w):
            continue
        s = w["summary"]
        e, h, fz = s["error_m"] or {}, s.get("heading") or {}, w.get("fused")
        flag = None if fz is None else fz["not_above_ours"]
        flag_all = None if fz is None else fz.get("not_above_ours_all_frames")
        rows.append([str(w["city_seed"]), str(w["walk_seed"]), w["mode"], w["receiver"],
                     "on" if w["odometry"] else "off", str(s["frames"]), num(s["published_percent"]),
                     num(e.get("median"), ".2f"), num(e.get("p95"), ".2f"), num(fz and fz.get("p95_published_m"), ".2f"),
                     yes_no(flag), num(fz and fz["p95_m"], ".2f"), yes_no(flag_all), num(e.get("over_25m_percent")),
                     num(s[D2_KEY]), num(h.get("flip_over_90deg_percent"))])
    print(format_table(["city", "seed", "mode", "receiver", "odometry", "frames", "publ %", "median m", "p95 m",
                        "fused p95 m", "fused<=ours", "fused p95 all m", "all<=ours", "> 25 m %", "d2<5.99 %",
                        "flips>90 %"], rows),
          file=file or sys.stdout)


def _counts(walk: dict[str, Any]) -> tuple[int, int, int]:
    """(frames, published fixes, of them > 25 m off) of one walk's summary."""
    s = walk["summary"]
    published = int(s["published"])
    over = int(round(published * s["error_m"]["over_25m_percent"] / 100.0)) if published else 0
    return int(s["frames"]), published, over


def _test_walks(report: dict[str, Any], receiver: str) -> dict[tuple[int, int, str], tuple[int, int, int]]:
    """A report's test walks of one receiver (odometry on, own tiles, own fixes) by (city, seed, mode): _counts."""
    return {(w["city_seed"], w["walk_seed"], w["mode"]): _counts(w) for w in report["walks"]
            if w["receiver"] == receiver and w["odometry"] and as_recorded(w)}


def _pooled_share(x: np.ndarray, num_col: int, den_col: int) -> np.ndarray:
    """(..., walks, 3) _counts -> the pooled share in percent over the walks axis."""
    return 100.0 * x[..., num_col].sum(-1) / np.maximum(x[..., den_col].sum(-1), 1.0)


# What --compare sets side by side: (name, printed label, numerator column, denominator column) of _counts.
COMPARED = (("published", "published", 1, 0), ("over_25m", "> 25 m", 2, 1))


def compare_runs(a: dict[str, Any], b: dict[str, Any], *, resamples: int = 5000, seed: int = 0) -> list[dict[str, Any]]:
    """Pooled shares of two crossview-walks reports (--json) per receiver, over the test walks both hold
    (odometry on, their own tiles): frames published, and published fixes > 25 m off; each with a 95 %
    interval of the difference b - a by resampling those walks with replacement, paired: the walks, not
    the frames, are the independent draws (a look-alike lock takes a run of frames of one walk, and a walk
    the model cannot read withholds most of its frames)."""
    rng = np.random.default_rng(seed)
    rows = []
    for receiver in sorted({w["receiver"] for w in a["walks"]} & {w["receiver"] for w in b["walks"]}):
        wa, wb = _test_walks(a, receiver), _test_walks(b, receiver)
        keys = sorted(set(wa) & set(wb))
        if not keys:
            continue
        xa, xb = np.array([wa[k] for k in keys], float), np.array([wb[k] for k in keys], float)
        draws = rng.integers(0, len(keys), (resamples, len(keys)))
        for figure, _, num_col, den_col in COMPARED:
            pa, pb = _pooled_share(xa, num_col, den_col), _pooled_share(xb, num_col, den_col)
            diffs = _pooled_share(xb[draws], num_col, den_col) - _pooled_share(xa[draws], num_col, den_col)
            lo, hi = np.percentile(diffs, [2.5, 97.5])
            rows.append({"receiver": receiver, "figure": figure, "walks": len(keys), "a_percent": float(pa),
                         "b_percent": float(pb), "difference_points": float(pb - pa),
                         "interval_95_points": [float(lo), float(hi)]})
    return rows


def print_comparison(rows: Sequence[dict[str, Any]], names: tuple[str, str], file: TextIO | None = None) -> None:
    print(f"Pooled shares, A = {names[0]}, B = {names[1]} (odometry on, own tiles; 95 % interval of B - A by "
          "resampling walks): published = of frames, > 25 m = of published fixes", file=file)
    label = {figure: text for figure, text, *_ in COMPARED}
    table = [[r["receiver"], label[r["figure"]], str(r["walks"]), num(r["a_percent"], ".2f"), num(r["b_percent"], ".2f"),
              f"{r['difference_points']:+.2f}",
              f"[{r['interval_95_points'][0]:+.2f}, {r['interval_95_points'][1]:+.2f}]"] for r in rows]
    print(format_table(["receiver", "figure", "walks", "A %", "B %", "B - A points", "95 % interval"], table),
          file=file)
