"""What a replay recorded and how it is judged: the node's outputs decoded, each panorama's error
against ground truth (ours, raw GNSS, the fused tracks), heading errors, latency, the figures that
need no truth (crossview_ros.truth_free: all a recording without truth gets), and the summary that
summary.json and the report show. Plain data in, plain data out: no ROS 2, no processes."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import fusion, geo, truth_free
from crossview_ros.bag.drive import NS, DriveBag, stamp_ns, yaw_of
from crossview_ros.bag.writer import typestore
from crossview_ros.replay_errors import ReplayError

NODE_NAME = "crossview_localizer"
TOPIC_OUT_FIX = "/crossview/fix"
TOPIC_OUT_POSE = "/crossview/pose"
TOPIC_OUT_HEADING = "/crossview/heading"
TOPIC_DIAGNOSTICS = "/diagnostics"
OUTPUT_TOPICS: dict[str, str] = {
    TOPIC_OUT_FIX: "sensor_msgs/msg/NavSatFix",
    TOPIC_OUT_POSE: "geometry_msgs/msg/PoseWithCovarianceStamped",
    TOPIC_OUT_HEADING: "sensor_msgs/msg/Imu",
    TOPIC_DIAGNOSTICS: "diagnostic_msgs/msg/DiagnosticArray",
}
ESTIMATE_TOPICS = (TOPIC_OUT_FIX, TOPIC_OUT_POSE, TOPIC_OUT_HEADING)
POSE_ORIGIN_TOLERANCE_M = 1.0  # crossview/pose must sit where crossview/fix is in the datum's ENU plane
# The tracks the summary ranks and the trajectory plot draws (besides the truth), with their names.
TRACK_LABELS = {"gnss": "raw GNSS", "crossview": "crossview fix", "fused": "odometry + crossview pose",
                "fused_with_gnss": "odometry + crossview pose + GNSS"}
FUSED_TRACKS = ("fused", "fused_with_gnss")


@dataclass
class Received:
    """One message from the node: topic, replay-clock time of receipt (s), serialized CDR."""

    topic: str
    received_s: float
    raw: bytes


@dataclass
class Playback:
    """What happened on the wire."""

    received: list[Received]
    published_s: dict[int, float]  # panorama stamp_ns -> replay-clock time (s) it was published
    frames_published: int
    fixes_published: int
    node_returncode: int | None
    wall_s: float
    domain_id: int
    node_command: list[str]
    publish_s: float = 0.0  # wall time from the first message published to the last (lockstep: to the last frame done)
    lockstep: bool = False  # each panorama waited for (output or counted by the node) before the next was sent
    frames_lost: int = 0  # lockstep: panoramas the node never received (best effort), moved on after diagnostics


def diag_values(raw: bytes) -> dict[str, str]:
    """KeyValues of the localizer's status in one /diagnostics message (empty if another status)."""
    msg = typestore().deserialize_cdr(raw, OUTPUT_TOPICS[TOPIC_DIAGNOSTICS])
    for status in msg.status:
        if str(status.name).startswith(NODE_NAME):
            return {str(kv.key): str(kv.value) for kv in status.values}
    return {}


def diag_int(values: dict[str, str], key: str) -> int:
    try:
        return int(float(values.get(key, "0")))
    except ValueError:
        return 0


@dataclass
class FrameRecord:
    """One panorama of the bag: what we published for it, what the truth and the receiver said."""

    index: int
    stamp_s: float
    published_s: float | None  # replay clock (s) when the panorama was published; None if not
    received_s: float | None  # replay clock (s) of the first output with this stamp
    latency_s: float | None  # received_s - published_s
    accepted: bool  # the node published an estimate for this frame
    lat_deg: float | None  # our fix
    lon_deg: float | None
    sigma_m: float | None  # our fix's horizontal 1-sigma (largest axis)
    yaw_enu_rad: float | None  # our heading (crossview/heading)
    truth_lat_deg: float | None  # None: the bag has no truth (the truth-free report)
    truth_lon_deg: float | None
    truth_yaw_enu_rad: float | None  # None: no true heading
    gnss_lat_deg: float | None  # newest valid raw fix not after the stamp
    gnss_lon_deg: float | None
    gnss_age_s: float | None
    fused_lat_deg: float | None  # fused track (odometry + crossview pose) at the stamp
    fused_lon_deg: float | None
    fused_gnss_lat_deg: float | None  # fused track with the raw GNSS added
    fused_gnss_lon_deg: float | None
    error_m: float | None
    gnss_error_m: float | None
    fused_error_m: float | None
    fused_gnss_error_m: float | None
    heading_error_deg: float | None  # |wrap(ours - truth)|
    gnss_innovation_m: float | None = None  # distance of our fix from the raw GNSS fix (truth_free)
    gnss_innovation_d2: float | None = None  # its squared Mahalanobis distance under the GNSS covariance


@dataclass
class Evaluation:
    frames: list[FrameRecord]
    summary: dict[str, Any]
    rejections: dict[str, int]  # reason -> count, from the node's last diagnostics
    diagnostics: dict[str, str]  # the node's last diagnostics KeyValues
    fusion_description: str
    fusion_gnss_description: str
    stray_stamps_s: list[float]  # output stamps that are no panorama stamp (should be none)
    track_utm: dict[str, np.ndarray] = field(default_factory=dict)  # for the trajectory plot: name -> (N, 2)


@dataclass
class Outputs:
    """The node's outputs decoded, per topic, in order of receipt."""

    fixes: list[tuple[int, float, Any]]  # (stamp_ns, received_s, msg)
    poses: list[tuple[int, float, Any]]
    headings: list[tuple[int, float, Any]]
    diagnostics: list[tuple[int, float, dict[str, str]]]


def decode_outputs(received: Sequence[Received]) -> Outputs:
    ts = typestore()
    out = Outputs([], [], [], [])
    for r in received:
        msg = ts.deserialize_cdr(r.raw, OUTPUT_TOPICS[r.topic])
        stamp = stamp_ns(msg.header)
        if r.topic == TOPIC_OUT_FIX:
            out.fixes.append((stamp, r.received_s, msg))
        elif r.topic == TOPIC_OUT_POSE:
            out.poses.append((stamp, r.received_s, msg))
        elif r.topic == TOPIC_OUT_HEADING:
            out.headings.append((stamp, r.received_s, msg))
        else:  # /diagnostics may carry other nodes' statuses too: keep the localizer's
            for status in msg.status:
                if str(status.name).startswith(NODE_NAME):
                    out.diagnostics.append((stamp, r.received_s, {str(kv.key): str(kv.value) for kv in status.values}))
    return out


def _stats(errors_m: Sequence[float]) -> dict[str, Any]:
    """median/mean/p95 and shares under 5/10/25 m of the finite errors (None when there are none)."""
    e = np.asarray([v for v in errors_m if v is not None and math.isfinite(v)], dtype=np.float64)
    if e.size == 0:
        return {"count": 0, "median_m": None, "mean_m": None, "p95_m": None, "under_5m_pct": None,
                "under_10m_pct": None, "under_25m_pct": None}
    return {"count": int(e.size), "median_m": float(np.median(e)), "mean_m": float(e.mean()),
            "p95_m": float(np.percentile(e, 95)), "under_5m_pct": float(100.0 * np.mean(e < 5.0)),
            "under_10m_pct": float(100.0 * np.mean(e < 10.0)), "under_25m_pct": float(100.0 * np.mean(e < 25.0))}


def odometry_measurements(bag: DriveBag) -> list[fusion.Measurement]:
    """The bag's wheel odometry twist (base_link, with its covariance) as the fused tracks' odom input;
    public so that crossview-walks fuses the same odometry as the replay."""
    return [fusion.odometry_twist(float(t), *map(float, v), c)
            for t, v, c in zip(bag.odom_stamp_s, bag.odom_twist, bag.odom_twist_cov)]


def _fusion_measurements(bag: DriveBag, outputs: Outputs, enu: geo.LocalENU) -> tuple[list, list]:
    """(odometry + pose measurements, raw GNSS measurements) for crossview_ros.fusion."""
    ms = odometry_measurements(bag)
    for stamp, _, msg in outputs.poses:
        p = msg.pose.pose
        ms.append(fusion.pose_with_covariance(stamp / NS, float(p.position.x), float(p.position.y),
                                              yaw_of(p.orientation), np.asarray(msg.pose.covariance, np.float64)))
    for stamp, _, msg in outputs.headings:
        ms.append(fusion.heading_yaw(stamp / NS, yaw_of(msg.orientation), float(msg.orientation_covariance[8])))
    gnss = []
    for f in bag.fixes:
        if not f.valid:
            continue
        e, n, _ = enu.forward(f.lat_deg, f.lon_deg, 0.0)
        cov = f.covariance_enu_m2[:2, :2] if f.covariance_enu_m2 is not None else np.eye(2) * 30.0 ** 2
        gnss.append(fusion.gnss_position(f.stamp_ns / NS, float(e), float(n), cov))
    return ms, gnss


def _check_pose_origin(outputs: Outputs, enu: geo.LocalENU) -> None:
    """crossview/pose must be in the datum's ENU plane (pose_origin datum): compare with crossview/fix."""
    fixes = {s: m for s, _, m in outputs.fixes}
    for stamp, _, pose in outputs.poses[:5]:
        fix = fixes.get(stamp)
        if fix is None:
            continue
        e, n, _ = enu.forward(float(fix.latitude), float(fix.longitude), 0.0)
        gap = math.hypot(e - pose.pose.pose.position.x, n - pose.pose.pose.position.y)
        if gap > POSE_ORIGIN_TOLERANCE_M:
            raise ReplayError(f"crossview/pose lies {gap:.1f} m from crossview/fix in the datum's ENU plane: the "
                              "node is not publishing poses with pose_origin 'datum' at the bag's datum; do not "
                              "override pose_origin or datum in --params-file / --node-arg")


def evaluate(bag: DriveBag, playback: Playback, *, fusion_config: Any = None) -> Evaluation:
    """Per-frame errors and the summary (module docstring) from the bag and what the node published."""
    enu = geo.LocalENU(bag.datum_lat_deg, bag.datum_lon_deg)
    outputs = decode_outputs(playback.received)
    _check_pose_origin(outputs, enu)
    stamps_ns = bag.panorama_stamp_ns
    stamps_s = bag.panorama_stamp_s
    index_of = {int(s): i for i, s in enumerate(stamps_ns)}
    stray = sorted({s / NS for s, _, _ in outputs.fixes + outputs.poses + outputs.headings if s not in index_of})

    truth = _truth_at(bag, enu, stamps_s) if bag.has_truth else None
    config = fusion_config if fusion_config is not None else default_fusion_config()
    ms, gnss_ms = _fusion_measurements(bag, outputs, enu)
    fused = fusion.fuse_track(ms, stamps_s, fusion.with_gnss(config, False))
    fused_g = fusion.fuse_track(ms + gnss_ms, stamps_s, fusion.with_gnss(config, True))
    frames = _frame_records(bag, playback, outputs, truth, _track_latlon(fused, enu), _track_latlon(fused_g, enu))
    diag = outputs.diagnostics[-1][2] if outputs.diagnostics else {}
    rejections = {k[len("rejected_"):]: diag_int(diag, k) for k in sorted(diag) if k.startswith("rejected_")}
    summary = _summary(bag, playback, frames, diag, rejections, fused, fused_g, len(stray))
    summary["truth_free"] = _truth_free(bag, frames, rejections)

    track_utm = _tracks_utm(bag, frames, truth)
    return Evaluation(frames=frames, summary=summary, rejections=rejections, diagnostics=diag,
                      fusion_description=fused.config.describe(), fusion_gnss_description=fused_g.config.describe(),
                      stray_stamps_s=stray, track_utm=track_utm)


@dataclass
class _Truth:
    """Ground truth at the panorama stamps: positions interpolated in the datum's ENU plane, yaw on the circle."""

    lat_deg: np.ndarray
    lon_deg: np.ndarray
    yaw_enu_rad: np.ndarray


def _truth_at(bag: DriveBag, enu: geo.LocalENU, stamps_s: np.ndarray) -> _Truth:
    te, tn, _ = enu.forward(bag.truth_lat_deg, bag.truth_lon_deg, np.zeros_like(bag.truth_lat_deg))
    tlat, tlon, _ = enu.inverse(np.interp(stamps_s, bag.truth_stamp_s, te), np.interp(stamps_s, bag.truth_stamp_s, tn))
    return _Truth(np.asarray(tlat), np.asarray(tlon), bag.truth_yaw_at(stamps_s))


def _track_latlon(track: Any, enu: geo.LocalENU) -> tuple[np.ndarray, np.ndarray]:
    """A fused track's ENU positions as latitude/longitude (NaN where the track has none)."""
    x, y = track.x_m, track.y_m
    ok = np.isfinite(x) & np.isfinite(y)
    lat, lon = np.full(x.shape, np.nan), np.full(x.shape, np.nan)
    if ok.any():
        la, lo, _ = enu.inverse(x[ok], y[ok])
        lat[ok], lon[ok] = la, lo
    return lat, lon


def _opt(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _frame_records(bag: DriveBag, playback: Playback, outputs: Outputs, truth: _Truth | None,
                   fused: tuple[np.ndarray, np.ndarray], fused_g: tuple[np.ndarray, np.ndarray]) -> list[FrameRecord]:
    """One FrameRecord per panorama of the bag: ours, the raw GNSS (the newest valid fix not after the
    stamp), both fused tracks, each against the truth; latency and heading error."""
    valid = sorted((f for f in bag.fixes if f.valid), key=lambda f: f.stamp_ns)
    fix_ns = np.asarray([f.stamp_ns for f in valid], dtype=np.int64)
    gnss_rows = np.searchsorted(fix_ns, bag.panorama_stamp_ns, side="right") - 1
    first_out: dict[int, float] = {}
    for stamp, t, _ in outputs.fixes + outputs.poses + outputs.headings:
        first_out[stamp] = min(t, first_out.get(stamp, math.inf))
    ours = {s: m for s, _, m in outputs.fixes}
    headings = {s: yaw_of(m.orientation) for s, _, m in outputs.headings}

    def dist(lat: float | None, lon: float | None, i: int) -> float | None:
        if truth is None or lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        return float(geo.distance_m(float(truth.lat_deg[i]), float(truth.lon_deg[i]), float(lat), float(lon)))

    frames: list[FrameRecord] = []
    for i, stamp in enumerate(bag.panorama_stamp_ns.tolist()):
        msg = ours.get(stamp)
        lat = lon = sigma = None
        if msg is not None:
            lat, lon = float(msg.latitude), float(msg.longitude)
            cov = np.asarray(msg.position_covariance, dtype=np.float64).reshape(3, 3)[:2, :2]
            sigma = float(math.sqrt(max(float(np.linalg.eigvalsh(cov).max()), 0.0)))
        g = int(gnss_rows[i])
        glat = glon = gage = None
        if g >= 0:
            glat, glon, gage = valid[g].lat_deg, valid[g].lon_deg, (stamp - int(fix_ns[g])) / NS
        pub, rec, yaw = playback.published_s.get(stamp), first_out.get(stamp), headings.get(stamp)
        f_lat, f_lon, g_lat, g_lon = _opt(fused[0][i]), _opt(fused[1][i]), _opt(fused_g[0][i]), _opt(fused_g[1][i])
        frames.append(FrameRecord(
            index=i, stamp_s=stamp / NS, published_s=pub, received_s=rec,
            latency_s=None if pub is None or rec is None else rec - pub, accepted=msg is not None,
            lat_deg=lat, lon_deg=lon, sigma_m=sigma, yaw_enu_rad=yaw,
            truth_lat_deg=None if truth is None else float(truth.lat_deg[i]),
            truth_lon_deg=None if truth is None else float(truth.lon_deg[i]),
            truth_yaw_enu_rad=None if truth is None else _opt(float(truth.yaw_enu_rad[i])),
            gnss_lat_deg=glat, gnss_lon_deg=glon, gnss_age_s=gage,
            fused_lat_deg=f_lat, fused_lon_deg=f_lon, fused_gnss_lat_deg=g_lat, fused_gnss_lon_deg=g_lon,
            error_m=dist(lat, lon, i), gnss_error_m=dist(glat, glon, i), fused_error_m=dist(f_lat, f_lon, i),
            fused_gnss_error_m=dist(g_lat, g_lon, i),
            heading_error_deg=_heading_error_deg(yaw, truth, i),
            gnss_innovation_m=None, gnss_innovation_d2=None,  # set by _truth_free
        ))
    return frames


def _heading_error_deg(yaw: float | None, truth: _Truth | None, i: int) -> float | None:
    """|wrap(ours - true yaw)| in degrees; None without either."""
    if yaw is None or truth is None or not math.isfinite(float(truth.yaw_enu_rad[i])):
        return None
    return abs(math.degrees(geo.wrap_angle_rad(yaw - float(truth.yaw_enu_rad[i]))))


def _truth_free(bag: DriveBag, frames: list[FrameRecord], rejections: dict[str, int]) -> dict[str, Any]:
    """The truth-free figures (crossview_ros.truth_free) of the replay; sets each frame's innovation."""
    valid = sorted((f for f in bag.fixes if f.valid), key=lambda f: f.stamp_ns)  # as _frame_records pairs them
    rows = np.searchsorted(np.asarray([f.stamp_ns for f in valid], dtype=np.int64), bag.panorama_stamp_ns,
                           side="right") - 1
    paired = [valid[g] if g >= 0 else None for g in rows.tolist()]

    def opt(v: float | None) -> float:
        return math.nan if v is None else float(v)

    gnss_t = np.array([math.nan if fix is None else fix.stamp_ns / NS for fix in paired])
    covs = [np.full((2, 2), np.nan) if fix is None or fix.covariance_enu_m2 is None
            else np.asarray(fix.covariance_enu_m2, dtype=np.float64)[:2, :2] for fix in paired]
    stream = truth_free.Stream(
        stamp_s=np.array([f.stamp_s for f in frames]), accepted=np.array([f.accepted for f in frames], dtype=bool),
        lat_deg=np.array([opt(f.lat_deg) for f in frames]), lon_deg=np.array([opt(f.lon_deg) for f in frames]),
        gnss_stamp_s=gnss_t, gnss_lat_deg=np.array([opt(f.gnss_lat_deg) for f in frames]),
        gnss_lon_deg=np.array([opt(f.gnss_lon_deg) for f in frames]), gnss_cov_enu_m2=np.array(covs).reshape(-1, 2, 2),
        odom_stamp_s=bag.odom_stamp_s, odom_xy_m=bag.odom_pose[:, :2])
    dist, d2 = truth_free.innovation(stream)
    for f, d, q in zip(frames, dist, d2):
        f.gnss_innovation_m, f.gnss_innovation_d2 = _opt(float(d)), _opt(float(q))
    latency_ms = [1000.0 * f.latency_s for f in frames if f.accepted and f.latency_s is not None]
    return truth_free.summarize([stream], rejections, latency_ms, "end to end: panorama published -> first output")


def _tracks_utm(bag: DriveBag, frames: list[FrameRecord], truth: _Truth | None) -> dict[str, np.ndarray]:
    """(N, 2) UTM easting/northing per frame of every track (truth, when there is one, and TRACK_LABELS)
    for the report's plot; NaN where a track has no position at that frame."""
    track_utm: dict[str, np.ndarray] = {}
    tracks = [] if truth is None else [("truth", truth.lat_deg, truth.lon_deg)]
    for name, la, lo in (*tracks,
                         ("gnss", [f.gnss_lat_deg for f in frames], [f.gnss_lon_deg for f in frames]),
                         ("crossview", [f.lat_deg for f in frames], [f.lon_deg for f in frames]),
                         ("fused", [f.fused_lat_deg for f in frames], [f.fused_lon_deg for f in frames]),
                         ("fused_with_gnss", [f.fused_gnss_lat_deg for f in frames],
                          [f.fused_gnss_lon_deg for f in frames])):
        la = np.asarray([np.nan if v is None else v for v in la], dtype=np.float64)
        lo = np.asarray([np.nan if v is None else v for v in lo], dtype=np.float64)
        xy = np.full((la.size, 2), np.nan)
        ok = np.isfinite(la) & np.isfinite(lo)
        if ok.any():
            e, n, _ = geo.latlon_to_utm(la[ok], lo[ok], zone=bag.zone)
            xy[ok] = np.column_stack([e, n])
        track_utm[name] = xy
    return track_utm


def rank_by_p95(errors: dict[str, dict[str, Any]], tracks: Sequence[str] = tuple(TRACK_LABELS)) -> list[str]:
    """Track keys best first by p95 error (ties: the order given; tracks with no errors last).

    The p95, not the median: a localizer is trusted for its tail, and a median hides a run of
    wrong positions (a fused track that is 27 m off a third of the time can have a 1 m median).
    """
    def key(item: tuple[int, str]) -> tuple[bool, float, int]:
        p95 = errors[item[1]]["p95_m"]
        return p95 is None, math.inf if p95 is None else float(p95), item[0]

    return [name for _, name in sorted(enumerate(tracks), key=key)]


def _summary(bag: DriveBag, playback: Playback, frames: list[FrameRecord], diag: dict[str, str],
             rejections: dict[str, int], fused: Any, fused_g: Any, stray: int) -> dict[str, Any]:
    n = len(frames)
    published = [f for f in frames if f.accepted]
    heading = [f.heading_error_deg for f in frames if f.heading_error_deg is not None]
    latency_ms = [1000.0 * f.latency_s for f in published if f.latency_s is not None]
    gnss_pub = [f.gnss_error_m for f in published]
    errors = {
        "gnss": _stats([f.gnss_error_m for f in frames]),
        "crossview": _stats([f.error_m for f in published]),
        "gnss_on_published_frames": _stats(gnss_pub),
        "fused": _stats([f.fused_error_m for f in frames]),
        "fused_on_published_frames": _stats([f.fused_error_m for f in published]),
        "fused_with_gnss": _stats([f.fused_gnss_error_m for f in frames]),
    }
    primary = rank_by_p95(errors, FUSED_TRACKS)[0]
    return {
        "frames": n,
        "frames_published_by_replay": playback.frames_published,
        "published": len(published),
        "published_share": len(published) / n if n else 0.0,
        "errors": errors,
        "ranking_by_p95": rank_by_p95(errors),
        "heading": {
            "count": len(heading),
            "median_deg": float(np.median(heading)) if heading else None,
            "under_10deg_pct": float(100.0 * np.mean(np.asarray(heading) < 10.0)) if heading else None,
            "flip_share": float(np.mean(np.asarray(heading) > 135.0)) if heading else None,  # within 45 deg of 180
        },
        "latency_ms": {
            "count": len(latency_ms),
            "p50": float(np.percentile(latency_ms, 50)) if latency_ms else None,
            "p99": float(np.percentile(latency_ms, 99)) if latency_ms else None,
            "mean": float(np.mean(latency_ms)) if latency_ms else None,
        },
        "rejections": rejections,
        "node_counters": {k: diag_int(diag, k) for k in ("frames_received", "frames_processed", "frames_dropped",
                                                      "estimates_published", "errors") if k in diag},
        "fusion": {"primary": TRACK_LABELS[primary], "primary_track": primary, "description": fused.config.describe(),
                   "accepted": fused.accepted, "rejected": fused.rejected,
                   "with_gnss": {"description": fused_g.config.describe(), "accepted": fused_g.accepted,
                                 "rejected": fused_g.rejected}},
        "stray_output_stamps": stray,
        "bag": str(bag.path),
        "truth": bag.has_truth,  # False: the errors are empty, truth_free holds what could be measured
        "truth_heading": bag.has_truth_yaw,
        "topics": dict(bag.topics),  # role -> the bag's topic (crossview_ros.bag.topics)
        "panorama_type": bag.panorama_msgtype,
        "datum": [bag.datum_lat_deg, bag.datum_lon_deg],
        "datum_source": bag.datum.get("source", "datum topic"),
        "duration_s": float(bag.panorama_stamp_s[-1] - bag.panorama_stamp_s[0]) if n else 0.0,
    }


def default_fusion_config() -> Any:
    """The map-frame block of config/ekf.yaml if found (repository or installed share), else the
    built-in robot_localization defaults (the report says which)."""
    path = find_ekf_config()
    return fusion.FusionConfig.from_ekf_yaml(path) if path is not None else fusion.FusionConfig()


def find_ekf_config() -> Path | None:
    here = Path(__file__).resolve().parents[1] / "config" / "ekf.yaml"  # source checkout / editable install
    if here.is_file():
        return here
    share = Path(sys.prefix) / "share" / "crossview_ros" / "config" / "ekf.yaml"  # colcon / pip data_files
    return share if share.is_file() else None
