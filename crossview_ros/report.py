"""The replay's report: OUT/report.md with PNG plots and OUT/summary.json, from one Evaluation.

Plots (matplotlib, Agg backend, no display needed): error CDF and error over time of the raw
GNSS, our fixes and both fused tracks (lines broken where a track has no value, a GNSS dropout
included); every track drawn on the orthophoto (a mosaic of the tile set's tile images around the
drive, or a GeoTIFF given with --orthophoto); heading error and latency histograms with their
median, p95 and p99 marked. Tables: summary errors, the tracks ranked by p95, rejections by
reason, the node's counters, the fusion set-up, and what needs no truth (crossview_ros.truth_free:
publication rate, innovation against GNSS with its histogram, consistency with odometry); a bag
without truth gets that section, the trajectory and the histograms, and no error figures. Every
number in report.md is formatted from the same summary dict that summary.json holds, so the two
cannot disagree. Files are written into
the replay's temporary folder, which the replay renames into place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossview_ros import geo, truth_free
from crossview_ros.atomic import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from crossview_ros.bag.drive import DriveBag
    from crossview_ros.replay_evaluation import Evaluation

MOSAIC_MAX_PX = 2000  # longest side of the background image
MARGIN_M = 40.0  # background around the drive's extent
TRACK_STYLE = {  # name -> (label, matplotlib colour)
    "truth": ("ground truth", "black"),
    "gnss": ("raw GNSS", "tab:red"),
    "crossview": ("crossview fix", "tab:blue"),
    "fused": ("fused (odometry + crossview)", "tab:green"),
    "fused_with_gnss": ("fused + GNSS", "tab:olive"),
}
ERROR_FIELDS = {"gnss": "gnss_error_m", "crossview": "error_m", "fused": "fused_error_m",
                "fused_with_gnss": "fused_gnss_error_m"}
TRAJECTORY_ORDER = ("gnss", "crossview", "fused_with_gnss", "fused", "truth")  # drawn in this order, truth on top
GNSS_STALE_INTERVALS = 1.5  # a GNSS value older than this many fix intervals is a dropout, not a fix
HISTOGRAM_MARKERS = ((50.0, "median", ":"), (95.0, "p95", "--"), (99.0, "p99", "-."))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for the report ('n/a' when missing), the same way everywhere."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value)}{unit}"
    return f"{float(value):.{digits}f}{unit}"


# --------------------------------------------------------------------------- plots


def _errors(evaluation: Evaluation, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(stamps relative to the first frame, errors) of one track, finite values only."""
    frames = evaluation.frames
    t0 = frames[0].stamp_s if frames else 0.0
    key = ERROR_FIELDS[name]
    pairs = [(f.stamp_s - t0, getattr(f, key)) for f in frames
             if getattr(f, key) is not None and (name != "crossview" or f.accepted)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    t, e = np.asarray(pairs, dtype=np.float64).T
    return t, e


def gnss_fresh(evaluation: Evaluation) -> np.ndarray:
    """(N,) True where a frame's raw GNSS value is a fix of its own epoch, False where there is none
    or it is held over from before a dropout (older than GNSS_STALE_INTERVALS fix intervals, the
    interval being the median spacing of the distinct fixes the frames saw)."""
    frames = evaluation.frames
    ages = np.asarray([math.nan if f.gnss_age_s is None else f.gnss_age_s for f in frames], dtype=np.float64)
    stamps = np.asarray([f.stamp_s for f in frames], dtype=np.float64)
    fixes = np.unique(np.round((stamps - ages)[np.isfinite(ages)], 3))
    if fixes.size < 2:
        return np.isfinite(ages)
    limit = GNSS_STALE_INTERVALS * float(np.median(np.diff(fixes))) + 1e-6
    return np.isfinite(ages) & (ages <= limit)


def error_series(evaluation: Evaluation, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(stamps since the first frame, errors) of one track at every frame, NaN where it has no value
    (crossview: frame not published; fused: before the first position; GNSS: no fix or a stale one),
    so that a line breaks across the gap instead of ramping straight over it."""
    frames = evaluation.frames
    t0 = frames[0].stamp_s if frames else 0.0
    key = ERROR_FIELDS[name]
    t = np.asarray([f.stamp_s - t0 for f in frames], dtype=np.float64)
    e = np.asarray([math.nan if getattr(f, key) is None or (name == "crossview" and not f.accepted)
                    else getattr(f, key) for f in frames], dtype=np.float64)
    if name == "gnss" and frames:
        e[~gnss_fresh(evaluation)] = math.nan
    return t, e


def plot_error_cdf(evaluation: Evaluation, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    smallest = math.inf
    for name in ERROR_FIELDS:
        _, e = _errors(evaluation, name)
        if e.size == 0:
            continue
        label, colour = TRACK_STYLE[name]
        e = np.sort(np.maximum(e, 0.01))  # log axis: a centimetre is as good as zero here
        smallest = min(smallest, float(e[0]))
        ax.step(e, np.arange(1, e.size + 1) / e.size, where="post", color=colour,
                label=f"{label} (n={e.size}, median {np.median(e):.1f} m, p95 {np.percentile(e, 95):.1f} m)",
                linestyle="--" if name == "fused_with_gnss" else "-")
    for x in (5, 10, 25):
        ax.axvline(x, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    if math.isfinite(smallest):
        ax.set_xlim(left=10.0 ** math.floor(math.log10(smallest)))
    ax.set_xlabel("horizontal error [m]")
    ax.set_ylabel("share of frames")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Error CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_over_time(evaluation: Evaluation, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    for name in ERROR_FIELDS:
        t, e = error_series(evaluation, name)
        if not np.isfinite(e).any():
            continue
        label, colour = TRACK_STYLE[name]
        if name == "crossview":
            ax.plot(t, e, ".", color=colour, markersize=4, label=label)
        else:
            if name == "gnss" and np.isnan(e).any():
                label += " (gaps: no fresh fix)"
            ax.plot(t, e, color=colour, linewidth=1.0 if name != "fused_with_gnss" else 0.8,
                    linestyle="--" if name == "fused_with_gnss" else "-", label=label)
    ax.set_xlabel("time since the first panorama [s]")
    ax.set_ylabel("horizontal error [m]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Error over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tile_mosaic(tiles_dir: Path, bounds_utm: tuple[float, float, float, float],
                max_px: int = MOSAIC_MAX_PX) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
    """North-up mosaic of the tile images that touch bounds (e0, n0, e1, n1, UTM of the set's zone).

    Returns (RGB image, extent (e0, e1, n0, n1) in metres) or None when the set has no images.
    Tiles overlap by half: later tiles overwrite earlier ones, all show the same ground.
    """
    import cv2

    from crossview_ros.tiles import TileSet

    ts = TileSet.open(tiles_dir)
    if ts.image_format is None:
        return None
    e0, n0, e1, n1 = bounds_utm
    half = ts.tile_size_m / 2.0
    pick = np.flatnonzero((ts.easting_m + half > e0) & (ts.easting_m - half < e1)
                          & (ts.northing_m + half > n0) & (ts.northing_m - half < n1))
    if pick.size == 0:
        return None
    e0 = float(min(e0, (ts.easting_m[pick] - half).min()))
    e1 = float(max(e1, (ts.easting_m[pick] + half).max()))
    n0 = float(min(n0, (ts.northing_m[pick] - half).min()))
    n1 = float(max(n1, (ts.northing_m[pick] + half).max()))
    gsd = ts.tile_size_m / ts.tile_px
    scale = min(1.0, max_px / max((e1 - e0) / gsd, (n1 - n0) / gsd))
    m_per_px = gsd / scale
    width, height = int(math.ceil((e1 - e0) / m_per_px)), int(math.ceil((n1 - n0) / m_per_px))
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    side = max(1, int(round(ts.tile_size_m / m_per_px)))
    for i in pick.tolist():
        image = ts.image(i)
        if image.dtype != np.uint8:  # 16-bit PNG tiles
            image = (image / 257).astype(np.uint8)
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        col = int(round((ts.easting_m[i] - half - e0) / m_per_px))
        row = int(round((n1 - (ts.northing_m[i] + half)) / m_per_px))
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + side, height), min(col + side, width)
        if r1 > r0 and c1 > c0:
            canvas[r0:r1, c0:c1] = image[r0 - row:r1 - row, c0 - col:c1 - col]
    return canvas, (e0, e1, n0, n1)


def orthophoto_window(path: Path, zone: geo.UTMZone, bounds_utm: tuple[float, float, float, float],
                      max_px: int = MOSAIC_MAX_PX) -> tuple[np.ndarray, Any, tuple[float, float, float, float]]:
    """Read the part of a GeoTIFF around the drive: (RGB, its CRS, extent (x0, x1, y0, y1) in that CRS)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    e0, n0, e1, n1 = bounds_utm
    with rasterio.open(path) as src:
        corners_x = [e0, e1, e1, e0]
        corners_y = [n0, n0, n1, n1]
        xs, ys = geo.transform_points(corners_x, corners_y, zone.crs, src.crs)
        x0, x1, y0, y1 = float(np.min(xs)), float(np.max(xs)), float(np.min(ys)), float(np.max(ys))
        window = from_bounds(x0, y0, x1, y1, transform=src.transform).round_offsets().round_lengths()
        scale = min(1.0, max_px / max(window.width, window.height, 1))
        shape = (min(src.count, 3), max(1, int(window.height * scale)), max(1, int(window.width * scale)))
        data = src.read(list(range(1, shape[0] + 1)), window=window, out_shape=shape, boundless=True, fill_value=255,
                        resampling=Resampling.average)
        left, bottom, right, top = rasterio.windows.bounds(window, src.transform)
        crs = src.crs
    image = np.moveaxis(data, 0, -1)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype != np.uint8:
        hi = float(np.percentile(image, 99.5)) or 1.0
        image = np.clip(image / hi * 255.0, 0, 255).astype(np.uint8)
    return image, crs, (left, right, bottom, top)


def plot_trajectory(evaluation: Evaluation, drive: DriveBag, path: Path, *, tiles: Path | None = None,
                    orthophoto: Path | None = None) -> tuple[Path, str]:
    """The tracks on the background; returns the PNG and a line saying what the background is."""
    plt = _pyplot()
    tracks = evaluation.track_utm
    # Keep the view on the drive (the truth, else our fixes and the fused track): far-off GNSS outliers
    # should not shrink it to a dot.
    core = [tracks["truth"]] if "truth" in tracks else [tracks[k] for k in ("crossview", "fused") if k in tracks]
    finite = np.vstack([xy[np.all(np.isfinite(xy), axis=1)] for xy in tracks.values()])
    e0, n0 = finite.min(axis=0) - MARGIN_M
    e1, n1 = finite.max(axis=0) + MARGIN_M
    anchor = np.vstack([xy[np.all(np.isfinite(xy), axis=1)] for xy in core])
    if anchor.size:
        te0, tn0 = anchor.min(axis=0) - 4 * MARGIN_M
        te1, tn1 = anchor.max(axis=0) + 4 * MARGIN_M
        e0, n0, e1, n1 = max(e0, te0), max(n0, tn0), min(e1, te1), min(n1, tn1)

    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    background = "none (no tile images; pass --orthophoto)"
    target_crs = None  # None: plot in UTM; else the GeoTIFF's CRS

    def to_xy(xy: np.ndarray) -> np.ndarray:
        """UTM of the drive's zone -> plot coordinates."""
        if target_crs is None:
            return xy
        out = np.full(xy.shape, np.nan)
        ok = np.all(np.isfinite(xy), axis=1)
        if ok.any():
            x, y = geo.transform_points(xy[ok, 0], xy[ok, 1], drive.zone.crs, target_crs)
            out[ok] = np.column_stack([x, y])
        return out

    try:
        if orthophoto is not None:
            image, crs, extent = orthophoto_window(Path(orthophoto), drive.zone, (e0, n0, e1, n1))
            target_crs = crs
            ax.imshow(image, extent=extent, origin="upper")
            background = f"orthophoto {Path(orthophoto).name}"
        elif tiles is not None:
            mosaic = tile_mosaic(Path(tiles), (e0, n0, e1, n1))
            if mosaic is not None:
                image, extent = mosaic
                ax.imshow(image, extent=extent, origin="upper")
                background = f"mosaic of the tile images of {Path(tiles).name}"
    except Exception as exc:  # a background that cannot be read must not cost the report
        background = f"none ({type(exc).__name__}: {exc})"

    fresh = gnss_fresh(evaluation)
    for name in TRAJECTORY_ORDER:
        if name not in tracks:
            continue
        xy = to_xy(tracks[name])
        label, colour = TRACK_STYLE[name]
        if name == "crossview":
            ax.plot(xy[:, 0], xy[:, 1], "o", markersize=3, color=colour, label=label, alpha=0.8)
        elif name == "gnss":  # a fix held over a dropout is not drawn again, nor joined to the next one
            xy = np.where(fresh[:, None], xy, np.nan) if fresh.size == len(xy) else xy
            ax.plot(xy[:, 0], xy[:, 1], ".-", markersize=3, linewidth=0.7, color=colour, label=label, alpha=0.8)
        elif name == "fused_with_gnss":
            ax.plot(xy[:, 0], xy[:, 1], "--", linewidth=1.1, color=colour, label=label)
        else:
            ax.plot(xy[:, 0], xy[:, 1], "-", linewidth=2.0 if name == "truth" else 1.4, color=colour, label=label)
    corners = to_xy(np.array([[e0, n0], [e1, n1]]))
    ax.set_xlim(corners[0, 0], corners[1, 0])
    ax.set_ylim(corners[0, 1], corners[1, 1])
    ax.set_aspect("equal")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    ax.set_xlabel("easting [m]" if orthophoto is None else "x [CRS units]")
    ax.set_ylabel("northing [m]" if orthophoto is None else "y [CRS units]")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"Trajectory (UTM {drive.zone})" if orthophoto is None else "Trajectory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, background


def histogram_markers(values: np.ndarray) -> list[tuple[str, float]]:
    """(name, value) of the median, p95 and p99 of values: the tail a histogram's bulk hides."""
    v = np.asarray(values, dtype=np.float64)
    return [(name, float(np.percentile(v, q))) for q, name, _ in HISTOGRAM_MARKERS] if v.size else []


def plot_histogram(values: np.ndarray, path: Path, *, xlabel: str, title: str, bins: Any, unit: str = "") -> Path:
    """Histogram with vertical lines at its median, p95 and p99 (named with their values in the legend)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
    for (name, value), (_, _, style) in zip(histogram_markers(values), HISTOGRAM_MARKERS):
        ax.axvline(value, color="black", linestyle=style, linewidth=1.0, label=f"{name} {value:.1f}{unit}")
    if len(values):
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("frames")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the report


def _error_table(summary: dict[str, Any]) -> list[str]:
    rows = ["| track | frames | median [m] | mean [m] | p95 [m] | < 5 m [%] | < 10 m [%] | < 25 m [%] |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"gnss": "raw GNSS (every frame with a fix)", "gnss_on_published_frames": "raw GNSS (published frames)",
              "crossview": "crossview fix (published frames)", "fused": "fused: odometry + crossview pose",
              "fused_on_published_frames": "fused: odometry + crossview pose (published frames)",
              "fused_with_gnss": "fused: odometry + crossview pose + GNSS"}
    for key, label in labels.items():
        s = summary["errors"][key]
        rows.append(f"| {label} | {s['count']} | {fmt(s['median_m'])} | {fmt(s['mean_m'])} | {fmt(s['p95_m'])} | "
                    f"{fmt(s['under_5m_pct'], 1)} | {fmt(s['under_10m_pct'], 1)} | {fmt(s['under_25m_pct'], 1)} |")
    return rows


RANKED_LABELS = {"gnss": "raw GNSS", "crossview": "crossview fix (published frames)",
                 "fused": "fused: odometry + crossview pose", "fused_with_gnss": "fused: odometry + crossview pose + GNSS"}


def _ranking(summary: dict[str, Any]) -> list[str]:
    """The tracks best first by p95 (summary['ranking_by_p95']), the best one named."""
    order = summary.get("ranking_by_p95") or []
    ranked = [f"{RANKED_LABELS[k]} {fmt(summary['errors'][k]['p95_m'])} m" for k in order
              if summary["errors"][k]["p95_m"] is not None]
    if not ranked:
        return []
    return [f"Ranked by p95, best first (the tail is what a localizer is trusted for; a median hides a run of "
            f"wrong positions): {'; '.join(ranked)}. Best track: {RANKED_LABELS[order[0]]}. Each track over its "
            "own frames (crossview: the published ones).", ""]


def _topics_line(summary: dict[str, Any]) -> list[str]:
    """Which topic was which input, and where the datum came from."""
    topics = summary.get("topics")
    if not topics:
        return []
    roles = ", ".join(f"{role} `{topic}`" for role, topic in topics.items())
    return [f"Topics: {roles} (panorama type {summary.get('panorama_type', '?').split('/')[-1]}); datum "
            f"{summary.get('datum_source', '?')}.", ""]


def _error_section(summary: dict[str, Any], images: dict[str, str]) -> list[str]:
    """Horizontal errors against the truth; without truth, a pointer to what was measured instead."""
    topics = summary.get("topics") or {}
    if not summary.get("truth", True):
        return ["## Horizontal error", "",
                "The bag has no truth topic (map one with `--truth-topic`, docs/recordings.md), so no error can be "
                "measured: the tables, the CDF and the error over time are left out. See *Without truth* below for "
                "what a recording without truth tells.", ""]
    lines = ["## Horizontal error", "", *_error_table(summary), "", *_ranking(summary),
             f"Errors are geodesic distances to `{topics.get('truth', '/ground_truth/fix')}` interpolated at each "
             f"panorama stamp. Raw GNSS: the newest valid `{topics.get('fix', '/gnss/fix')}` not after the stamp "
             "(what the node was given). Crossview: `crossview/fix` of the frames the node published. Fused: the "
             "filter state at every panorama stamp once a position has come in.", ""]
    if "error_cdf" in images:
        lines += [f"![error CDF]({images['error_cdf']})", "", f"![error over time]({images['error_over_time']})", ""]
    return lines


def _truth_free_section(summary: dict[str, Any], images: dict[str, str]) -> list[str]:
    """What is measured without truth (crossview_ros.truth_free): a table, the innovation histogram."""
    tf = summary.get("truth_free")
    if not tf:
        return []
    lines = ["## Without truth", "",
             "What a recording tells without ground truth (with truth too): how often and how fast fixes come, "
             "how far they lie from the raw GNSS (innovation; d^2 normalised by the receiver's covariance: about "
             "95 % under 5.99 when that covariance is honest), and whether consecutive fixes move as far as the "
             "odometry says (|distance between fixes - odometry distance|; the raw GNSS for comparison).", "",
             *truth_free.markdown_table(tf), ""]
    if "innovation" in images:
        lines += [f"![innovation against GNSS]({images['innovation']})", ""]
    return lines


def render_markdown(summary: dict[str, Any], evaluation: Evaluation, images: dict[str, str],
                    background: str) -> str:
    """report.md from the summary dict (the numbers of summary.json) and the plots written.

    One document in reading order, a list of lines: longer than 80 lines and clearer so.
    """
    rep = summary.get("replay", {})
    lat = summary["latency_ms"]
    head = summary["heading"]
    lines = [
        "# crossview_ros replay report", "",
        f"Bag `{summary['bag']}` ({summary['frames']} panoramas over {fmt(summary['duration_s'], 1)} s), "
        f"tile set `{rep.get('tiles', '?')}`, model `{rep.get('model', '?')}`, "
        f"replayed at {fmt(rep.get('rate'), 2)} x real time through `localize_node` "
        f"(exit code {rep.get('node_exit_code', '?')}, ROS_DOMAIN_ID {rep.get('ros_domain_id', '?')}).", "",
        *_topics_line(summary),
        "## Summary", "",
        "| quantity | value |", "|---|---:|",
        f"| frames in the bag | {summary['frames']} |",
        f"| frames published to the node | {summary['frames_published_by_replay']} |",
        f"| estimates published (frames) | {summary['published']} |",
        f"| published share [%] | {fmt(100.0 * summary['published_share'], 1)} |",
        f"| latency p50 [ms] | {fmt(lat['p50'], 1)} |",
        f"| latency p99 [ms] | {fmt(lat['p99'], 1)} |",
        f"| heading frames | {head['count']} |",
        f"| heading error median [deg] | {fmt(head['median_deg'], 1)} |",
        f"| heading 180 deg flips [%] | {fmt(None if head['flip_share'] is None else 100.0 * head['flip_share'], 1)} |",
        f"| output stamps that are no panorama stamp | {summary['stray_output_stamps']} |",
        "",
        *_error_section(summary, images),
        "## Trajectory", "", f"Background: {background}.", ""]
    if "trajectory" in images:
        lines += [f"![trajectory]({images['trajectory']})", ""]
    lines += ["## Heading", ""]
    if not summary.get("truth_heading", True):
        lines += ["The bag has no true heading (a pose-type truth topic or `--truth-heading-topic`), so heading "
                  "errors cannot be measured.", ""]
    elif head["count"]:
        lines += [f"Heading error |wrap(crossview/heading yaw - truth yaw)| over {head['count']} frames: median "
                  f"{fmt(head['median_deg'], 1)} deg, {fmt(head['under_10deg_pct'], 1)} % under 10 deg, "
                  f"{fmt(100.0 * head['flip_share'], 1)} % flipped (error > 135 deg). Truth yaw: "
                  "`/ground_truth/pose` (UTM grid) turned into ENU by the grid convergence.", "",
                  f"![heading error]({images['heading_error']})", ""]
    else:
        lines += ["No heading was published (the node runs with `heading: false`, or no estimate had a yaw).", ""]
    lines += ["## Latency", ""]
    if lat["count"]:
        lines += [f"Wall time from the replay publishing a panorama to receiving the node's first output with its "
                  f"stamp, {lat['count']} frames: p50 {fmt(lat['p50'], 1)} ms, p99 {fmt(lat['p99'], 1)} ms, mean "
                  f"{fmt(lat['mean'], 1)} ms.", "", f"![latency]({images['latency']})", ""]
    else:
        lines += ["No estimate was published, so there is no latency to show.", ""]
    lines += _truth_free_section(summary, images)
    lines += ["## Rejections", "", "From the node's last `/diagnostics` message.", "",
              "| reason | frames |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in summary["rejections"].items()]
    counters = summary["node_counters"]
    if counters:
        lines += ["", "| node counter | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in counters.items()]
    fusion = summary["fusion"]

    def counts(c: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.items())

    fused_p95 = summary["errors"]["fused"]["p95_m"]
    with_gnss_p95 = summary["errors"]["fused_with_gnss"]["p95_m"]
    if fused_p95 is None or with_gnss_p95 is None:
        verdict = "Whether the raw GNSS helps cannot be told: one of the fused tracks is empty."
    else:
        verdict = (f"Adding the raw GNSS {'lowers' if with_gnss_p95 < fused_p95 else 'does not lower'} the fused "
                   f"p95 error ({fmt(fused_p95)} m without, {fmt(with_gnss_p95)} m with); the primary fused track "
                   f"(the lower p95) is {fusion['primary']}.")
    lines += ["", "## Fusion", "",
              f"Fused track (odometry + crossview pose): {fusion['description']}.", "", verdict, "",
              f"Measurements fused: {counts(fusion['accepted'])}; refused by the Mahalanobis gate: "
              f"{counts(fusion['rejected'])}.", "",
              f"Fused + GNSS (navsat_transform's role switched on): {fusion['with_gnss']['description']}; fused "
              f"{counts(fusion['with_gnss']['accepted'])}; refused {counts(fusion['with_gnss']['rejected'])}.", "",
              "The same set-up for robot_localization is shipped in config/ekf.yaml (ekf_filter_node_map) and "
              "config/navsat_transform.yaml.", "",
              "## Files", "",
              "- `outputs.mcap`: everything the node published (crossview/fix, crossview/pose, crossview/heading, "
              "/diagnostics), log time = header stamp",
              "- `frames.csv`: one row per panorama (the numbers above come from it)",
              "- `summary.json`: the numbers of this report",
              "- `node.log`: the node's console output", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, evaluation: Evaluation, drive: DriveBag, *, tiles: str | Path | None = None,
                 orthophoto: str | Path | None = None) -> Path:
    """Write the plots, summary.json and report.md into out_dir; returns report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = evaluation.summary
    images: dict[str, str] = {}
    if evaluation.frames and summary.get("truth", True):
        images["error_cdf"] = plot_error_cdf(evaluation, out_dir / "error_cdf.png").name
        images["error_over_time"] = plot_error_over_time(evaluation, out_dir / "error_over_time.png").name
    if evaluation.frames:
        traj, background = plot_trajectory(evaluation, drive, out_dir / "trajectory.png",
                                           tiles=None if tiles is None else Path(tiles),
                                           orthophoto=None if orthophoto is None else Path(orthophoto))
        images["trajectory"] = traj.name
    else:
        background = "none (no frames)"
    heading = np.asarray([f.heading_error_deg for f in evaluation.frames if f.heading_error_deg is not None])
    if heading.size:
        images["heading_error"] = plot_histogram(heading, out_dir / "heading_error.png", xlabel="heading error [deg]",
                                                 title="Heading error", bins=np.arange(0.0, 185.0, 5.0),
                                                 unit=" deg").name
    latency = np.asarray([1000.0 * f.latency_s for f in evaluation.frames if f.latency_s is not None])
    if latency.size:
        images["latency"] = plot_histogram(latency, out_dir / "latency.png", xlabel="latency [ms]",
                                           title="Latency: panorama published -> first output received",
                                           bins=min(50, max(5, latency.size // 3)), unit=" ms").name
    innovation = np.asarray([f.gnss_innovation_m for f in evaluation.frames if f.gnss_innovation_m is not None])
    if innovation.size:
        images["innovation"] = plot_histogram(innovation, out_dir / "innovation.png",
                                              xlabel="distance of crossview/fix from the raw GNSS fix [m]",
                                              title="Innovation against GNSS",
                                              bins=min(50, max(5, innovation.size // 3)), unit=" m").name
    summary["plots"] = dict(images)
    summary["trajectory_background"] = background
    write_json_atomic(out_dir / "summary.json", summary)
    return write_text_atomic(out_dir / "report.md", render_markdown(summary, evaluation, images, background))
