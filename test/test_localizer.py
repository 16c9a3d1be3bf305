"""Localizer: the (panorama, fix, stamp) -> Estimate pipeline on a tiny exported model and tile set,
the scope formula, every bad input's reason code, gating, covariance calibration and the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossview_ros import engines as E
from crossview_ros import model_meta as MM
from crossview_ros.preprocess import preprocess_aerial, preprocess_ground
from crossview_ros import geo, localize_cli, tiles_cli
from crossview_ros.covariance import (
    CHI2_1DOF_95, CHI2_2DOF_95, CovarianceModel, calibrate, fit_fix_sigma_scale, load_covariance, save_covariance,
)
from crossview_ros.estimate import Estimate, Fix, LocalizerError, Reason, Truth
from crossview_ros.localizer import Localizer, scope_radius_m
from crossview_ros.localizer_config import LocalizerConfig
from crossview_ros.sim.coord_ortho import write_coordinate_geotiff
from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set, write_tile_set

TILE_M = 40.0
NOW = 1_700_000_000.0  # the clock of these tests: every localize() gets now_s=NOW


@pytest.fixture(scope="module")
def model_dir(tiny_export) -> Path:
    return tiny_export(0)


@pytest.fixture(scope="module")
def tile_dir(model_dir, tmp_path_factory) -> Path:
    """25 JPEG tiles of 40 m at 64 px (50 % overlap) cut from a 140 m RGB GeoTIFF, encoded by the model."""
    root = tmp_path_factory.mktemp("localizer")
    tif = write_coordinate_geotiff(root / "ortho.tif", crs="EPSG:3857", gsd_m=1.0, centre_lat_deg=48.2,
                                   centre_lon_deg=16.37, size_m=140.0, kind="rgb")
    out = build_tile_set([tif], root / "set", TilingConfig(tile_size_m=TILE_M, tile_px=64), progress=False)
    tiles_cli.encode_tile_set(out, model_dir, engine="onnxruntime", threads=1, progress=False)
    return out


@pytest.fixture(scope="module")
def tiles(tile_dir) -> TileSet:
    return TileSet.open(tile_dir)


@pytest.fixture(scope="module")
def engine(model_dir) -> E.OnnxEngine:
    return E.OnnxEngine(model_dir, threads=1)


def make_config(tile_dir, model_dir, **overrides) -> LocalizerConfig:
    return LocalizerConfig(tile_set=str(tile_dir), model=str(model_dir), engine="onnxruntime", engine_threads=1,
                           **overrides)


@pytest.fixture(scope="module")
def localizer(tile_dir, model_dir, engine) -> Localizer:
    return Localizer(make_config(tile_dir, model_dir, max_mahalanobis=1e6, log_throttle_s=0.0), engine=engine)


def panorama(seed: int = 0, height: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, 2 * height, 3), dtype=np.uint8), (7, 7), 2)


def jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def centre_fix(tiles: TileSet, stamp_s: float = NOW, **kw) -> Fix:
    lat, lon = geo.utm_to_latlon(float(tiles.easting_m.mean()), float(tiles.northing_m.mean()), tiles.zone)
    kw.setdefault("sigma_m", 20.0)
    return Fix(float(lat), float(lon), stamp_s, **kw)


def assert_no_position(est: Estimate) -> None:
    assert not est.accepted
    assert est.message
    for name in ("lat_deg", "lon_deg", "easting_m", "northing_m", "covariance_enu_m2", "yaw_enu_rad", "tile_id",
                 "score", "margin", "mahalanobis_d2"):
        assert getattr(est, name) is None, name
    assert not est.has_position


# --------------------------------------------------------------------------- the pipeline


def test_panorama_gives_an_estimate_inside_the_scope(localizer, tiles, engine):
    rgb = panorama(1)
    fix = centre_fix(tiles)
    localizer.reset()
    est = localizer.localize(jpeg(rgb), fix, NOW, now_s=NOW)
    assert est.accepted and est.reason == Reason.OK and est.message == ""
    assert est.scope_radius_m == pytest.approx(60.0)  # 3 x 20 m, inside [50, 200]

    # Retrieval, recomputed here: the best cosine among the tiles within 60 m of the fix.
    e_fix, n_fix, _ = geo.latlon_to_utm(fix.lat_deg, fix.lon_deg, tiles.zone)
    scope = np.flatnonzero(np.hypot(tiles.easting_m - e_fix, tiles.northing_m - n_fix) <= 60.0)
    assert est.tiles_in_scope == scope.size > 1
    decoded = cv2.imdecode(np.frombuffer(jpeg(rgb), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    g, _ = engine.encode_ground(preprocess_ground(engine.meta, np.ascontiguousarray(decoded)))
    desc = np.asarray(tiles.descriptors, np.float64)
    cos = desc[scope] @ g[0] / np.linalg.norm(desc[scope], axis=1) / np.linalg.norm(g[0])
    assert est.tile_id == scope[np.argmax(cos)]
    assert est.score == pytest.approx(cos.max(), abs=2e-3)
    assert est.margin == pytest.approx(np.sort(cos)[-1] - np.sort(cos)[-2], abs=2e-3)

    # Offset: tile centre + clipped offset x L (fusion "best"), inside the chosen tile's footprint.
    off = np.clip(engine.offset(g, desc[[est.tile_id]].astype(np.float32))[0], -0.5, 0.5) * TILE_M
    assert est.easting_m == pytest.approx(tiles.easting_m[est.tile_id] + off[0], abs=0.05)
    assert est.northing_m == pytest.approx(tiles.northing_m[est.tile_id] + off[1], abs=0.05)
    lat, lon = geo.utm_to_latlon(est.easting_m, est.northing_m, tiles.zone)
    assert (est.lat_deg, est.lon_deg) == (pytest.approx(lat, abs=1e-9), pytest.approx(lon, abs=1e-9))
    assert est.utm_zone == str(tiles.zone)
    assert geo.distance_m(fix.lat_deg, fix.lon_deg, est.lat_deg, est.lon_deg) <= 60.0 + TILE_M / math.sqrt(2)

    cov = est.covariance_enu_m2
    assert cov.shape == (2, 2) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
    # Uncalibrated default model: sigma = max(1, 25 exp(-10 margin)) (spread/offset/score terms 0).
    sigma = max(1.0, 25.0 * math.exp(-10.0 * est.margin))
    assert np.allclose(cov, np.eye(2) * sigma ** 2)
    de, dn = geo.offset_enu_m(fix.lat_deg, fix.lon_deg, est.lat_deg, est.lon_deg)
    assert est.mahalanobis_d2 == pytest.approx((de * de + dn * dn) / (sigma ** 2 + 20.0 ** 2), rel=1e-6)

    lat_ms = est.latency
    for stage in ("decode_ms", "preprocess_ms", "encode_ms", "search_ms", "offset_ms"):
        assert getattr(lat_ms, stage) > 0, stage
    assert lat_ms.heading_ms == 0 and est.yaw_enu_rad is None
    assert lat_ms.total_ms >= lat_ms.decode_ms + lat_ms.preprocess_ms + lat_ms.encode_ms + lat_ms.search_ms
    json.dumps(est.to_dict())  # JSON-ready


def test_array_encodings_agree_with_jpeg_free_decoding(localizer, tiles):
    rgb = panorama(2, height=64)
    results = []
    for image, encoding in [(rgb, "rgb8"), (np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8")]:
        localizer.reset()
        results.append(localizer.localize(image, centre_fix(tiles), NOW, encoding=encoding, now_s=NOW))
    assert results[0].accepted and results[1].accepted
    assert results[0].easting_m == results[1].easting_m and results[0].score == results[1].score
    localizer.reset()
    mono = localizer.localize(rgb[:, :, 0], centre_fix(tiles), NOW, encoding="mono8", now_s=NOW)
    assert mono.has_position and mono.reason in (Reason.OK, Reason.LOW_MARGIN)


def test_weighted_fusion_averages_agreeing_candidates(tile_dir, model_dir, engine, tiles):
    rgb = panorama(3)
    fix = centre_fix(tiles)
    common = dict(max_mahalanobis=1e6, top_k=25)  # the whole scope: no ranking ties to worry about
    best = Localizer(make_config(tile_dir, model_dir, **common), engine=engine).localize(
        jpeg(rgb), fix, NOW, now_s=NOW)
    alone = Localizer(make_config(tile_dir, model_dir, fusion="weighted", fusion_radius_m=0.0, **common),
                      engine=engine).localize(jpeg(rgb), fix, NOW, now_s=NOW)
    assert alone.easting_m == pytest.approx(best.easting_m) and alone.spread_m == 0.0
    # Everything agrees, flat weights: the plain mean of every scope tile's predicted position.
    flat = Localizer(make_config(tile_dir, model_dir, fusion="weighted", fusion_radius_m=1e4, fusion_temperature=1e6,
                                 **common), engine=engine).localize(jpeg(rgb), fix, NOW, now_s=NOW)
    decoded = cv2.imdecode(np.frombuffer(jpeg(rgb), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    g, _ = engine.encode_ground(preprocess_ground(engine.meta, np.ascontiguousarray(decoded)))
    e_fix, n_fix, _ = geo.latlon_to_utm(fix.lat_deg, fix.lon_deg, tiles.zone)
    scope = np.flatnonzero(np.hypot(tiles.easting_m - e_fix, tiles.northing_m - n_fix) <= 60.0)
    desc = np.asarray(tiles.descriptors, np.float32)
    off = np.clip(engine.offset(np.repeat(g, scope.size, axis=0), desc[scope]), -0.5, 0.5) * TILE_M
    pos = np.column_stack([tiles.easting_m[scope], tiles.northing_m[scope]]) + off
    assert flat.easting_m == pytest.approx(pos[:, 0].mean(), abs=0.05)
    assert flat.northing_m == pytest.approx(pos[:, 1].mean(), abs=0.05)
    spread = math.sqrt(np.mean(np.sum((pos - pos.mean(axis=0)) ** 2, axis=1)))
    assert flat.spread_m == pytest.approx(spread, abs=0.05)


def test_scope_radius_formula_on_hand_numbers(localizer, tiles):
    k = dict(k=3.0, min_m=50.0, max_m=200.0, max_speed_mps=15.0)
    assert scope_radius_m(10.0, 0.0, **k) == 50.0  # 30 m clamped up
    assert scope_radius_m(30.0, 0.0, **k) == 90.0
    assert scope_radius_m(100.0, 0.0, **k) == 200.0  # 300 m clamped down
    assert scope_radius_m(100.0, 2.0, **k) == 230.0  # + 2 s x 15 m/s after the clamp
    assert scope_radius_m(10.0, -1.0, **k) == 65.0  # a fix newer than the panorama widens alike
    # Through the localizer: the largest-axis sigma of an anisotropic covariance (20 m), fix 1 s old.
    localizer.reset()
    cov = np.diag([100.0, 400.0, 9.0])
    est = localizer.localize(jpeg(panorama(4)), centre_fix(tiles, NOW - 1.0, covariance_enu_m2=cov, sigma_m=None),
                             NOW, now_s=NOW)
    assert est.scope_radius_m == pytest.approx(3 * 20.0 + 15.0)
    localizer.reset()
    unknown = localizer.localize(jpeg(panorama(4)), centre_fix(tiles, sigma_m=None), NOW, now_s=NOW)
    assert unknown.scope_radius_m == pytest.approx(90.0)  # default_fix_sigma_m 30 m


def test_fix_sigma_scale_widens_the_scope_and_the_gate(tile_dir, model_dir, engine, tiles):
    """cov_fix_sigma_scale multiplies the reported sigma before the scope and the Mahalanobis gate."""
    loc = Localizer(make_config(tile_dir, model_dir, covariance_file="none", cov_fix_sigma_scale=2.0,
                                max_mahalanobis=1e6), engine=engine)
    fix = centre_fix(tiles, sigma_m=12.0)
    est = loc.localize(jpeg(panorama(1)), fix, NOW, now_s=NOW)
    assert est.scope_radius_m == pytest.approx(3 * 24.0)  # 3 x (2 x 12 m)
    sigma = math.sqrt(est.covariance_enu_m2[0, 0])
    de, dn = geo.offset_enu_m(fix.lat_deg, fix.lon_deg, est.lat_deg, est.lon_deg)
    assert est.mahalanobis_d2 == pytest.approx((de * de + dn * dn) / (sigma ** 2 + 24.0 ** 2), rel=1e-6)


def test_fit_fix_sigma_scale_recovers_an_optimistic_receiver():
    """Fixes whose real error is 2.5 x the reported sigma: the fitted scale is 2.5, and the share of
    the rescaled squared Mahalanobis errors under 5.99 is 95 %."""
    rng = np.random.default_rng(7)
    fixes, truths, d2 = [], [], []
    for i in range(4000):
        t_lat, t_lon = 41.88 + rng.uniform(-0.01, 0.01), -87.63 + rng.uniform(-0.01, 0.01)
        reported = rng.uniform(1.0, 4.0)
        cov = np.diag([reported ** 2, (1.5 * reported) ** 2])  # anisotropic: the test goes through C^-1
        err = rng.multivariate_normal([0.0, 0.0], 2.5 ** 2 * cov)
        lat, lon, _ = geo.LocalENU(t_lat, t_lon).inverse(err[0], err[1])
        fixes.append(Fix(lat, lon, float(i), covariance_enu_m2=cov))
        truths.append((t_lat, t_lon))
        d2.append(float(err @ np.linalg.solve(cov, err)))
    scale = fit_fix_sigma_scale(fixes, truths)
    assert scale == pytest.approx(2.5, rel=0.04)
    assert scale == pytest.approx(math.sqrt(np.quantile(d2, 0.95) / CHI2_2DOF_95), rel=1e-3)
    no_fix = [Fix(0.0, 0.0, 0.0, status=-1)] * 4000
    with pytest.raises(ValueError, match="at least 20"):
        fit_fix_sigma_scale(no_fix, truths)


# --------------------------------------------------------------------------- bad input


def _truncated_png() -> bytes:
    ok, buf = cv2.imencode(".png", panorama(5, 64))
    return buf.tobytes()[: len(buf) // 2]


BAD_IMAGES = {
    "array without encoding": (lambda: panorama(5, 64), None),
    "unknown encoding": (lambda: panorama(5, 64), "rgba8"),
    "rgb8 without channels": (lambda: panorama(5, 64)[:, :, 0], "rgb8"),
    "float image": (lambda: panorama(5, 64).astype(np.float32), "rgb8"),
    "width != 2 height": (lambda: panorama(5, 64)[:, :100], "rgb8"),
    "too small": (lambda: np.zeros((4, 8, 3), np.uint8), "rgb8"),
    "truncated jpeg": (lambda: jpeg(panorama(5, 64))[:1500], None),
    "corrupt jpeg": (lambda: b"\xff\xd8\xff" + bytes(range(256)) * 4 + b"\xff\xd9", None),
    "truncated png": (_truncated_png, None),
    "not an image": (lambda: b"hello world", None),
    "empty bytes": (lambda: b"", None),
    "jpeg of the wrong shape": (lambda: jpeg(np.zeros((64, 64, 3), np.uint8)), None),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_rejected_with_bad_image(localizer, tiles, case):
    make, encoding = BAD_IMAGES[case]
    localizer.reset()
    before = localizer.counts[Reason.BAD_IMAGE]
    est = localizer.localize(make(), centre_fix(tiles), NOW, encoding=encoding, now_s=NOW)
    assert est.reason == Reason.BAD_IMAGE
    assert_no_position(est)
    assert localizer.counts[Reason.BAD_IMAGE] == before + 1


@pytest.mark.parametrize("fix_args, reason", [
    (dict(lat_deg=float("nan")), Reason.BAD_FIX),
    (dict(lon_deg=float("inf")), Reason.BAD_FIX),
    (dict(lat_deg=91.0), Reason.BAD_FIX),
    (dict(lon_deg=-181.0), Reason.BAD_FIX),
    (dict(status=7), Reason.BAD_FIX),
    (dict(sigma_m=-1.0), Reason.BAD_FIX),
    (dict(sigma_m=None, covariance_enu_m2=np.full((3, 3), np.nan)), Reason.BAD_FIX),
    (dict(sigma_m=None, covariance_enu_m2=np.array([[1.0, 5.0], [5.0, 1.0]])), Reason.BAD_FIX),  # not PSD
    (dict(stamp_s=float("nan")), Reason.BAD_FIX),
    (dict(status=-1), Reason.NO_FIX),
    (dict(status=-1, lat_deg=float("nan"), lon_deg=float("nan")), Reason.NO_FIX),
    (dict(lat_deg=48.3), Reason.OUTSIDE_COVERAGE),  # 11 km north of the 140 m coverage
    (dict(lat_deg=-33.86, lon_deg=151.21), Reason.OUTSIDE_COVERAGE),  # another continent, another zone
    (dict(stamp_s=NOW + 10.0), Reason.FUTURE_STAMP),  # fix from the future
    (dict(stamp_s=NOW - 8.0), Reason.STALE_STAMP),  # older than fix_max_age_s (5 s)
])
def test_bad_fixes_are_rejected_with_their_reason(localizer, tiles, fix_args, reason):
    good = centre_fix(tiles)
    fix = Fix(**{**dict(lat_deg=good.lat_deg, lon_deg=good.lon_deg, stamp_s=NOW, sigma_m=20.0), **fix_args})
    localizer.reset()
    est = localizer.localize(jpeg(panorama(6, 64)), fix, NOW, now_s=NOW)
    assert est.reason == reason
    assert_no_position(est)


def test_a_fix_older_than_the_panorama_is_carried_by_odometry(tile_dir, model_dir, engine, tiles):
    """A GNSS dropout: the last fix is 8 s old, taken 16 m south of where the platform is now. Odometry
    (2 m/s along its x axis, aligned with grid north by four bearing votes) carries it 16 m north: the
    frame is localized (not STALE_STAMP), the scope does not widen by 8 s x max_speed_mps, and d^2 is
    measured from the carried fix with odometry's variance added to the fix's."""
    centre_e, centre_n = float(tiles.easting_m.mean()), float(tiles.northing_m.mean())
    taken = Fix(*geo.utm_to_latlon(centre_e, centre_n - 16.0, tiles.zone), NOW - 8.0, sigma_m=2.0)

    def run(**overrides) -> tuple[Localizer, Estimate]:
        loc = Localizer(make_config(tile_dir, model_dir, covariance_file="none", max_mahalanobis=1e12, **overrides),
                        engine=engine)
        for k in range(101):
            loc.add_odometry(NOW - 10.0 + 0.1 * k, 0.2 * k, 0.0, 0.0)
        for k in range(4 if loc.odometry is not None else 0):
            loc.odometry.vote_bearing(NOW - 9.0 + k, math.pi / 2)  # odom x runs grid north
        return loc, loc.localize(jpeg(panorama(3)), taken, NOW, now_s=NOW)

    loc, est = run()
    assert est.has_position and est.reason != Reason.STALE_STAMP
    assert est.scope_radius_m == pytest.approx(50.0)  # scope_min_m; not widened by 8 s x 15 m/s
    motion = loc.odometry.motion_grid(NOW - 8.0, NOW)
    assert (motion.east_m, motion.north_m) == pytest.approx((0.0, 16.0), abs=1e-6)
    de, dn = geo.offset_enu_m(*geo.utm_to_latlon(centre_e, centre_n, tiles.zone), est.lat_deg, est.lon_deg)
    total = est.covariance_enu_m2 + np.eye(2) * (4.0 + motion.variance_m2)
    assert est.mahalanobis_d2 == pytest.approx(float(np.array([de, dn]) @ np.linalg.solve(total, [de, dn])), rel=1e-4)
    _, plain = run(odometry=False)
    assert plain.reason == Reason.STALE_STAMP and "fix_max_age_s 5" in plain.message
    _, never = run(fix_max_age_odometry_s=0.0)
    assert never.reason == Reason.STALE_STAMP
    _, too_old = run(fix_max_age_odometry_s=6.0)
    assert too_old.reason == Reason.STALE_STAMP and "fix_max_age_odometry_s 6" in too_old.message


def test_bad_stamps_are_rejected(localizer, tiles):
    image = jpeg(panorama(7, 64))
    localizer.reset()
    est = localizer.localize(image, centre_fix(tiles, NOW + 10.0), NOW + 10.0, now_s=NOW)
    assert est.reason == Reason.FUTURE_STAMP
    assert_no_position(est)
    for stamp in (float("nan"), float("inf"), -1.0, "soon"):
        est = localizer.localize(image, centre_fix(tiles), stamp, now_s=NOW)
        assert est.reason == Reason.BAD_STAMP
        assert_no_position(est)
    assert localizer.localize(image, centre_fix(tiles), NOW, now_s=NOW).has_position
    for stamp in (NOW, NOW - 0.5):  # a repeated stamp and an older one
        est = localizer.localize(image, centre_fix(tiles, stamp), stamp, now_s=NOW)
        assert est.reason == Reason.OUT_OF_ORDER
        assert_no_position(est)
    # A rejected (future) frame does not move the clock: the next good frame still passes.
    assert localizer.localize(image, centre_fix(tiles, NOW + 0.2), NOW + 0.2, now_s=NOW + 0.2).has_position


def test_rejections_log_one_throttled_line(tile_dir, model_dir, engine, tiles, caplog):
    loc = Localizer(make_config(tile_dir, model_dir, log_throttle_s=3600.0), engine=engine)
    with caplog.at_level(logging.WARNING, logger="crossview_ros.localizer"):
        for k in range(3):
            loc.localize(b"garbage", centre_fix(tiles, NOW + k), NOW + k, now_s=NOW + k)
    lines = [r for r in caplog.records if "BAD_IMAGE" in r.getMessage()]
    assert len(lines) == 1 and "neither JPEG nor PNG" in lines[0].getMessage()
    assert loc.counts[Reason.BAD_IMAGE] == 3


def test_settings_of_the_other_family_are_logged_once_and_change_nothing(tile_dir, model_dir, engine, tiles, caplog):
    """The track settings belong to bev models: a descriptor model's Localizer says once, at start-up,
    that it ignores them, and localizes exactly as without them."""
    default = Localizer(make_config(tile_dir, model_dir, max_mahalanobis=1e6), engine=engine)
    assert default.matcher.kind == "descriptor"
    with caplog.at_level(logging.WARNING, logger="crossview_ros"):
        odd = Localizer(make_config(tile_dir, model_dir, max_mahalanobis=1e6, track=False, track_speed_mps=9.0),
                        engine=engine)
    ignored = [r.getMessage() for r in caplog.records if "ignores" in r.getMessage()]
    assert len(ignored) == 1 and "track=False" in ignored[0] and "track_speed_mps=9.0" in ignored[0]
    rgb, fix = jpeg(panorama(3)), centre_fix(tiles)
    a, b = default.localize(rgb, fix, NOW, now_s=NOW), odd.localize(rgb, fix, NOW, now_s=NOW)
    assert (a.easting_m, a.northing_m, a.margin, a.sigma_m) == (b.easting_m, b.northing_m, b.margin, b.sigma_m)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crossview_ros"):
        Localizer(make_config(tile_dir, model_dir), engine=engine)
    assert not [r for r in caplog.records if "ignores" in r.getMessage()]


def test_model_that_did_not_encode_the_tiles_fails_at_construction(tile_dir, model_dir, tmp_path):
    other = Path(shutil.copytree(model_dir, tmp_path / "other"))
    meta = json.loads((other / "model.json").read_text())
    meta["model_hash"] = "sha256:" + "0" * 64
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(E.EngineError, match=r"crossview-tiles encode .*--model .*other"):
        Localizer(make_config(tile_dir, other))
    with pytest.raises(E.EngineError, match="does not exist"):
        Localizer(make_config(tile_dir, tmp_path / "missing"))


def test_tile_set_without_descriptors_or_images_fails_at_construction(tiles, model_dir, engine, tmp_path):
    bare = write_tile_set(tmp_path / "bare", zone=tiles.zone, easting_m=tiles.easting_m, northing_m=tiles.northing_m,
                          tile_size_m=TILE_M, tile_px=64)
    with pytest.raises(E.EngineError, match="has no descriptors"):
        Localizer(make_config(bare, model_dir), engine=engine)
    TileSet.open(bare).write_descriptors(np.asarray(tiles.descriptors, np.float32), engine.meta.model_hash)
    Localizer(make_config(bare, model_dir), engine=engine)  # retrieval works without images ...
    with pytest.raises(LocalizerError, match="heading needs tile images"):
        Localizer(make_config(bare, model_dir, heading=True), engine=engine)  # ... heading does not


def test_config_is_strict_and_validated():
    with pytest.raises(ValueError, match=r"unknown localizer config keys \['scope_k'\]"):
        LocalizerConfig.from_dict({"scope_k": 3})
    with pytest.raises(ValueError, match="scope_max_m"):
        LocalizerConfig(scope_min_m=100.0, scope_max_m=50.0)
    with pytest.raises(ValueError, match="fusion"):
        LocalizerConfig(fusion="mean")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="track_likelihood_weight"):
            LocalizerConfig(track_likelihood_weight=bad)
    cfg = LocalizerConfig.from_dict({"top_k": 3, "fusion": "weighted"})
    assert LocalizerConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- gating


def test_margin_gate_rejects_with_low_margin(tile_dir, model_dir, engine, tiles):
    loc = Localizer(make_config(tile_dir, model_dir, min_margin=2.5, max_mahalanobis=1e6), engine=engine)
    est = loc.localize(jpeg(panorama(8)), centre_fix(tiles), NOW, now_s=NOW)
    assert est.reason == Reason.LOW_MARGIN and not est.accepted
    assert 0.0 <= est.margin <= 2.0 and est.has_position  # gated estimates keep their position for diagnostics


def test_margin_modes(tile_dir, model_dir, engine, tiles):
    fix = centre_fix(tiles, sigma_m=100.0)  # every tile in scope
    results = {}
    for mode in ("top2", "distinct"):
        loc = Localizer(make_config(tile_dir, model_dir, margin_mode=mode, top_k=36, max_mahalanobis=1e6),
                        engine=engine)
        results[mode] = loc.localize(jpeg(panorama(9)), fix, NOW, now_s=NOW)
    top = results["top2"]
    decoded = cv2.imdecode(np.frombuffer(jpeg(panorama(9)), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    g, _ = engine.encode_ground(preprocess_ground(engine.meta, np.ascontiguousarray(decoded)))
    desc = np.asarray(tiles.descriptors, np.float64)
    cos = desc @ g[0] / np.linalg.norm(desc, axis=1) / np.linalg.norm(g[0])
    best = int(np.argmax(cos))
    apart = np.maximum(abs(tiles.easting_m - tiles.easting_m[best]), abs(tiles.northing_m - tiles.northing_m[best]))
    assert top.margin == pytest.approx(np.sort(cos)[-1] - np.sort(cos)[-2], abs=2e-3)
    assert results["distinct"].margin == pytest.approx(cos[best] - cos[apart >= TILE_M].max(), abs=2e-3)


def test_mahalanobis_gate_against_a_confident_gnss_prior(tile_dir, model_dir, engine, tiles):
    # sigma_est = 1 m, prior sigma 0 m: d^2 is the squared distance to the fix in m^2.
    cov = dict(cov_sigma0_m=1.0, cov_margin_coef=0.0, covariance_file="none")
    fix = Fix(*geo.utm_to_latlon(float(tiles.easting_m.min()), float(tiles.northing_m.min()), tiles.zone), NOW,
              sigma_m=0.0)
    tight = Localizer(make_config(tile_dir, model_dir, max_mahalanobis=1e-6, **cov), engine=engine)
    est = tight.localize(jpeg(panorama(10)), fix, NOW, now_s=NOW)
    de, dn = geo.offset_enu_m(fix.lat_deg, fix.lon_deg, est.lat_deg, est.lon_deg)
    assert math.hypot(de, dn) > 1.0
    assert est.reason == Reason.MAHALANOBIS and not est.accepted
    assert est.mahalanobis_d2 == pytest.approx(de * de + dn * dn, rel=1e-6)
    loose = Localizer(make_config(tile_dir, model_dir, max_mahalanobis=1e12, **cov), engine=engine)
    again = loose.localize(jpeg(panorama(10)), fix, NOW, now_s=NOW)
    assert again.reason == Reason.OK and again.easting_m == est.easting_m


# --------------------------------------------------------------------------- heading


def test_a_bad_tile_image_costs_the_yaw_never_the_position(tile_dir, model_dir, engine, tiles, tmp_path, caplog,
                                                            capsys):
    """Every tile image of a copy of the set corrupted: the heading fails, the fix is published as
    without heading (the same position), with one warning."""
    broken = tmp_path / "broken"
    shutil.copytree(tile_dir, broken)
    for image in (broken / "images").iterdir():
        image.write_bytes(b"not a JPEG any more")
    rgb, fix = panorama(11), centre_fix(tiles)
    want = Localizer(make_config(tile_dir, model_dir, max_mahalanobis=1e6), engine=engine).localize(
        jpeg(rgb), fix, NOW, now_s=NOW)
    loc = Localizer(make_config(broken, model_dir, heading=True, max_mahalanobis=1e6, log_throttle_s=0.0),
                    engine=engine)
    with caplog.at_level(logging.WARNING, logger="crossview_ros"):
        est = loc.localize(jpeg(rgb), fix, NOW, now_s=NOW)
    assert want.accepted and est.accepted and est.yaw_enu_rad is None
    assert (est.lat_deg, est.lon_deg, est.tile_id) == (want.lat_deg, want.lon_deg, want.tile_id)
    assert any("heading failed" in r.getMessage() for r in caplog.records)
    pano = tmp_path / "pano.jpg"  # the same through crossview-localize --heading
    pano.write_bytes(jpeg(rgb))
    code = localize_cli.main(["--tiles", str(broken), "--model", str(model_dir), str(pano), "--fix",
                              f"{fix.lat_deg},{fix.lon_deg},20", "--heading", "--json", "--engine", "onnxruntime",
                              "--threads", "1", "--set", "max_mahalanobis=1e6", "--quiet"])
    (cli,) = json.loads(capsys.readouterr().out)["estimates"]
    assert code == 0 and cli["accepted"] and cli["yaw_enu_rad"] is None
    assert (cli["lat_deg"], cli["lon_deg"]) == pytest.approx((want.lat_deg, want.lon_deg), abs=1e-9)


def test_heading_gives_a_yaw_in_enu(tile_dir, model_dir, engine, tiles):
    from crossview_ros import heading

    loc = Localizer(make_config(tile_dir, model_dir, heading=True, max_mahalanobis=1e6), engine=engine)
    rgb = panorama(11)
    est = loc.localize(jpeg(rgb), centre_fix(tiles), NOW, now_s=NOW)
    assert est.accepted and -math.pi < est.yaw_enu_rad <= math.pi and est.latency.heading_ms > 0
    decoded = cv2.imdecode(np.frombuffer(jpeg(rgb), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    _, gf = engine.encode_ground(preprocess_ground(engine.meta, np.ascontiguousarray(decoded)))
    _, af = engine.encode_aerial(preprocess_aerial(engine.meta, tiles.image(est.tile_id)))
    h = heading.polar_correlation_heading(gf[0], af[0], offset_m=est.offset_m, tile_size_m=TILE_M,
                                          camera_height_m=LocalizerConfig().camera_height_m)
    want = geo.yaw_utm_to_enu(h.yaw_enu_rad, est.lat_deg, est.lon_deg, tiles.zone)
    assert abs(geo.wrap_angle_rad(est.yaw_enu_rad - want)) < 1e-6
    assert est.yaw_variance_raw_rad2 == pytest.approx(h.variance_rad2)
    assert est.yaw_variance_rad2 == pytest.approx(max(1e-4, h.variance_rad2))
    base = Localizer(make_config(tile_dir, model_dir, heading=True, heading_method="revisiting",
                                 max_mahalanobis=1e6), engine=engine).localize(jpeg(rgb), centre_fix(tiles), NOW,
                                                                               now_s=NOW)
    want = heading.revisiting_heading(gf[0], af[0], offset_m=est.offset_m, tile_size_m=TILE_M)
    assert abs(geo.wrap_angle_rad(base.yaw_enu_rad - geo.yaw_utm_to_enu(want.yaw_enu_rad, est.lat_deg, est.lon_deg,
                                                                         tiles.zone))) < 1e-6


# --------------------------------------------------------------------------- calibration


def synthetic_validation(n: int, true_scale: float, seed: int) -> tuple[list[Estimate], list[Truth]]:
    """Estimates whose errors are Gaussian with sigma = true_scale x the default model's sigma,
    and yaw errors with variance 3 x the raw heading variance."""
    rng = np.random.default_rng(seed)
    default = CovarianceModel.from_config(LocalizerConfig())
    enu = geo.LocalENU(48.2, 16.37)
    estimates, truths = [], []
    for _ in range(n):
        margin, score = rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.9)
        spread, offset = rng.uniform(0.0, 10.0), rng.uniform(0.0, 20.0)
        sigma = true_scale * default.sigma_m(margin, score, spread, offset)
        t_e, t_n = rng.uniform(-500, 500, 2)
        err = rng.normal(0.0, sigma, 2)
        t_lat, t_lon, _ = enu.inverse(t_e, t_n)
        lat, lon, _ = geo.LocalENU(t_lat, t_lon).inverse(err[0], err[1])
        raw = rng.uniform(0.01, 0.1)
        yaw_true = rng.uniform(-math.pi, math.pi)
        yaw = float(geo.wrap_angle_rad(yaw_true + rng.normal(0.0, math.sqrt(3.0 * raw))))
        estimates.append(Estimate(stamp_s=0.0, accepted=True, reason=Reason.OK, lat_deg=lat, lon_deg=lon,
                                  score=score, margin=margin, spread_m=spread, offset_m=(offset, 0.0),
                                  yaw_enu_rad=yaw, yaw_variance_raw_rad2=raw))
        truths.append(Truth(t_lat, t_lon, yaw_true))
    return estimates, truths


def test_calibrate_recovers_the_scale_of_the_errors():
    estimates, truths = synthetic_validation(3000, 2.0, seed=0)
    scale_only = calibrate(estimates, truths, fit_shape=False)
    assert scale_only.calibrated
    assert scale_only.sigma0_m == pytest.approx(2.0 * 25.0, rel=0.05)
    assert scale_only.margin_coef == -10.0 and scale_only.spread_coef == 0.0
    assert scale_only.yaw_variance_scale == pytest.approx(3.0, rel=0.1)
    # By construction the 95 % quantile of d^2 sits on 5.99 over the calibration set.
    assert scale_only.fit["share_d2_below_chi2"] == pytest.approx(0.95, abs=0.002)
    assert scale_only.fit["yaw_share_below_chi2"] == pytest.approx(0.95, abs=0.002)

    shaped = calibrate(estimates, truths)
    assert shaped.margin_coef == pytest.approx(-10.0, abs=1.0)
    for name in ("score_coef", "spread_coef", "offset_coef"):
        assert abs(getattr(shaped, name)) < 0.15 * (1.0 if name != "offset_coef" else 0.2), name
    # On fresh samples from the same process, ~95 % of d^2 fall below the chi-square quantile.
    fresh, fresh_truths = synthetic_validation(3000, 2.0, seed=1)
    d2 = []
    for e, t in zip(fresh, fresh_truths):
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg)
        s = shaped.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m))
        d2.append((de * de + dn * dn) / s ** 2)
    assert np.mean(np.array(d2) < CHI2_2DOF_95) == pytest.approx(0.95, abs=0.015)
    assert CHI2_1DOF_95 == pytest.approx(3.841, abs=1e-3)


def test_calibrate_fits_the_power_of_the_yaw_variance():
    """Yaw errors with variance 0.5 x raw^2 (a raw variance that ranks frames but overstates the good
    ones): the fit finds the power 2 and puts 95 % of fresh e^2 / var under 3.84."""

    def drive(seed: int) -> tuple[list[Estimate], list[Truth]]:
        estimates, truths = synthetic_validation(2000, 1.0, seed=seed)
        rng = np.random.default_rng(seed + 100)
        out = []
        for e, t in zip(estimates, truths):
            raw = float(rng.uniform(0.005, 0.5))
            yaw = float(geo.wrap_angle_rad(t.yaw_enu_rad + rng.normal(0.0, math.sqrt(0.5) * raw)))
            out.append(dataclasses.replace(e, yaw_variance_raw_rad2=raw, yaw_enu_rad=yaw))
        return out, truths

    fitted = calibrate(*drive(20))
    assert fitted.yaw_variance_power == pytest.approx(2.0, abs=0.15)
    fresh, fresh_truths = drive(21)
    z2 = [geo.wrap_angle_rad(e.yaw_enu_rad - t.yaw_enu_rad) ** 2 / fitted.yaw_variance_rad2(e.yaw_variance_raw_rad2)
          for e, t in zip(fresh, fresh_truths)]
    assert np.mean(np.array(z2) < CHI2_1DOF_95) == pytest.approx(0.95, abs=0.015)
    assert CovarianceModel.from_dict(fitted.to_dict()) == fitted
    # a calibration file from before fix_sigma_scale and yaw_variance_power reads as 1 and 1
    old = {k: v for k, v in fitted.to_dict().items() if k not in ("fix_sigma_scale", "yaw_variance_power")}
    assert CovarianceModel.from_dict(old).yaw_variance_power == CovarianceModel.from_dict(old).fix_sigma_scale == 1.0


def test_calibrate_fits_the_motion_gap():
    """Errors whose variance is the default model's sigma^2 plus (5 x motion gap)^2, a fifth of them with no gap
    measured (drawn at the median gap, 2 m): the fit finds motion_coef 5 and takes the measured gaps' median
    for the unmeasured; on fresh samples ~95 % of d^2 fall below 5.99 on the low-gap and the high-gap half
    alike, and the protection level (protection_scale x sigma + the gap) is exceeded by about 1 %."""

    def drive(seed: int) -> tuple[list[Estimate], list[Truth]]:
        estimates, truths = synthetic_validation(3000, 1.0, seed=seed)
        default = CovarianceModel.from_config(LocalizerConfig())
        rng = np.random.default_rng(seed + 200)
        out = []
        for e, t in zip(estimates, truths):
            gap = float(rng.uniform(0.0, 4.0))
            measured = rng.uniform() > 0.2
            frame = default.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m))
            sigma = math.hypot(frame, 5.0 * (gap if measured else 2.0))
            lat, lon, _ = geo.LocalENU(t.lat_deg, t.lon_deg).inverse(*rng.normal(0.0, sigma, 2))
            out.append(dataclasses.replace(e, lat_deg=lat, lon_deg=lon, motion_gap_m=gap if measured else None))
        return out, truths

    estimates, truths = drive(30)
    fitted = calibrate(estimates, truths)
    assert fitted.motion_coef == pytest.approx(5.0, rel=0.1)
    assert fitted.margin_coef == pytest.approx(-10.0, abs=1.5)
    assert fitted.motion_typical_m == pytest.approx(
        float(np.median([e.motion_gap_m for e in estimates if e.motion_gap_m is not None])), abs=1e-12)
    assert fitted.motion_m(None) == fitted.motion_typical_m and fitted.motion_m(0.7) == 0.7
    fresh, fresh_truths = drive(31)
    d2, gaps, beyond = [], [], []
    for e, t in zip(fresh, fresh_truths):
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg)
        s = fitted.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m), 1.0, 0.0,
                           fitted.motion_m(e.motion_gap_m))
        d2.append((de * de + dn * dn) / s ** 2)
        gaps.append(fitted.motion_m(e.motion_gap_m))
        beyond.append(math.hypot(de, dn) > fitted.protection_level_m(np.eye(2) * s * s, 0.01, e.motion_gap_m))
    d2, gaps = np.array(d2), np.array(gaps)
    for half in (gaps < 2.0, gaps >= 2.0):
        assert np.mean(d2[half] < CHI2_2DOF_95) == pytest.approx(0.95, abs=0.02)
    assert np.mean(beyond) == pytest.approx(0.01, abs=0.006)
    # the protection level adds the gap (the typical one where none was measured) to protection_scale x sigma
    assert fitted.protection_level_m(np.eye(2) * 4.0, 0.01, 1.5) == pytest.approx(2.0 * fitted.protection_scale + 1.5)
    assert fitted.protection_level_m(np.eye(2) * 4.0, 0.01) == pytest.approx(
        2.0 * fitted.protection_scale + fitted.motion_typical_m)
    assert CovarianceModel.from_dict(fitted.to_dict()) == fitted
    # a calibration file from before the motion gap reads as no effect
    old = {k: v for k, v in fitted.to_dict().items() if k not in ("motion_coef", "motion_typical_m")}
    assert CovarianceModel.from_dict(old).motion_coef == CovarianceModel.from_dict(old).motion_typical_m == 0.0
    # errors the gap does not explain leave motion_coef 0
    plain, plain_truths = synthetic_validation(2000, 1.0, seed=32)
    rng = np.random.default_rng(33)
    plain = [dataclasses.replace(e, motion_gap_m=float(rng.uniform(0.0, 4.0))) for e in plain]
    assert calibrate(plain, plain_truths).motion_coef < 1.0


def test_calibrate_refuses_too_few_samples():
    estimates, truths = synthetic_validation(10, 1.0, seed=2)
    with pytest.raises(ValueError, match="at least 20"):
        calibrate(estimates, truths)
    with pytest.raises(ValueError, match="one truth per estimate"):
        calibrate(estimates, truths[:-1])


def test_calibration_file_beside_the_model_is_loaded(tile_dir, model_dir, engine, tiles, tmp_path):
    model_copy = Path(shutil.copytree(model_dir, tmp_path / "model"))
    estimates, truths = synthetic_validation(200, 0.5, seed=3)
    fitted = calibrate(estimates, truths, fit_shape=False)
    path = save_covariance(fitted, model_copy, engine.meta.model_hash)
    assert path == model_copy / "covariance.json" and not list(model_copy.glob(".covariance.json.tmp*"))
    assert load_covariance(path, engine.meta.model_hash) == fitted
    loc = Localizer(make_config(tile_dir, model_copy, max_mahalanobis=1e6))
    assert loc.covariance == fitted and loc.covariance.calibrated
    est = loc.localize(jpeg(panorama(12)), centre_fix(tiles), NOW, now_s=NOW)
    want = fitted.sigma_m(est.margin, est.score, est.spread_m, math.hypot(*est.offset_m))
    assert np.allclose(est.covariance_enu_m2, np.eye(2) * want ** 2)
    assert not Localizer(make_config(tile_dir, model_copy, covariance_file="none"), engine=engine).covariance.calibrated
    save_covariance(fitted, model_copy, "sha256:another")
    with pytest.raises(LocalizerError, match="calibrates model 'sha256:another'"):
        Localizer(make_config(tile_dir, model_copy), engine=engine)


# --------------------------------------------------------------------------- CLI


def vigor_name(city: str, k: int, lat: float, lon: float) -> str:
    return f"{city}{k:06d},{lat:.9f},{lon:.9f},.jpg"


def test_cli_prints_json_that_parses(tile_dir, model_dir, tiles, tmp_path, capsys):
    pano = tmp_path / "pano.jpg"
    pano.write_bytes(jpeg(panorama(13)))
    fix = centre_fix(tiles)
    args = ["--tiles", str(tile_dir), "--model", str(model_dir), str(pano), "--fix", f"{fix.lat_deg},{fix.lon_deg},20",
            "--json", "--engine", "onnxruntime", "--threads", "1", "--set", "max_mahalanobis=1e6", "--quiet"]
    code = localize_cli.main(args)
    doc = json.loads(capsys.readouterr().out)
    (est,) = doc["estimates"]
    assert code == (0 if est["accepted"] else 1)
    assert est["panorama"] == str(pano) and est["reason"] in {r.value for r in Reason}
    assert est["scope_radius_m"] == pytest.approx(60.0) and len(est["covariance_enu_m2"]) == 2
    assert doc["model_hash"] == MM.load_model_meta(model_dir).model_hash

    table = ["--tiles", str(tile_dir), "--model", str(model_dir), str(pano), "--fix", f"{fix.lat_deg},{fix.lon_deg}",
             "--engine", "onnxruntime", "--quiet"]
    assert localize_cli.main(table) in (0, 1)
    out = capsys.readouterr().out
    assert "pano.jpg" in out and "reason" in out


def test_cli_evaluates_a_vigor_split_and_calibrates(tile_dir, model_dir, tiles, tmp_path, capsys):
    root = tmp_path / "vigor"
    model_copy = Path(shutil.copytree(model_dir, tmp_path / "model"))
    rng = np.random.default_rng(0)
    lines = []
    for k in range(24):
        e = float(tiles.easting_m.mean() + rng.uniform(-30, 30))
        n = float(tiles.northing_m.mean() + rng.uniform(-30, 30))
        lat, lon = geo.utm_to_latlon(e, n, tiles.zone)
        name = vigor_name("Testville", k, lat, lon)
        (root / "Testville" / "panorama").mkdir(parents=True, exist_ok=True)
        (root / "Testville" / "panorama" / name).write_bytes(jpeg(panorama(100 + k, 64)))
        lines.append(f"{name} sat 0 0 sat 0 0 sat 0 0 sat 0 0")
    (root / "splits" / "Testville").mkdir(parents=True)
    (root / "splits" / "Testville" / "satellite_list.txt").write_text("sat\n")
    (root / "splits" / "Otherton").mkdir(parents=True)
    (root / "splits" / "Otherton" / "satellite_list.txt").write_text("sat\n")
    (root / "splits" / "Testville" / "pano_label_balanced.txt").write_text("\n".join(lines) + "\n")
    (root / "dataset.json").write_text(json.dumps({"cross_area": {"train": ["Otherton"], "test": ["Testville"]}}))
    args = ["--model", str(model_copy), "--tiles", str(tile_dir), "--vigor", str(root), "--split", "cross_test",
            "--noise-m", "10", "--engine", "onnxruntime", "--threads", "1", "--calibrate", "--json", "--quiet",
            "--set", "min_margin=-1"]
    assert localize_cli.main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    summary = doc["summary"]
    assert summary["frames"] == 24 and sum(summary["reasons"].values()) == 24
    assert summary["gnss_error_median_m"] <= 10 * math.sqrt(2)
    assert len(doc["estimates"]) == 24 and doc["calibration"]["fit"]["samples"] == 24
    assert load_covariance(model_copy / "covariance.json").calibrated

    # The same panoramas as a folder (truth from the names), limited to 5 of them.
    assert localize_cli.main(["--model", str(model_copy), "--tiles", str(tile_dir), "--limit", "5", "--quiet",
                              "--engine", "onnxruntime", str(root / "Testville" / "panorama")]) == 0
    assert "frames 5, published" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--fix", "91,16"], "latitude"),
    (["--fix", "48.2"], "LAT,LON"),
    (["--fix", "48.2,16.37", "--set", "fusion=mean"], "fusion"),
    (["--fix", "48.2,16.37", "--set", "no_such_key=1"], "unknown localizer config keys"),
    ([], "is not a VIGOR name"),
])
def test_cli_user_errors_exit_2_with_one_line(tile_dir, model_dir, tmp_path, capsys, extra, message):
    pano = tmp_path / "pano.jpg"
    pano.write_bytes(jpeg(panorama(14, 64)))
    code = localize_cli.main(["--tiles", str(tile_dir), "--model", str(model_dir), str(pano), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("crossview-localize: error:") and message in err[0]


def test_cli_refuses_missing_files_and_foreign_tile_sets(tile_dir, model_dir, tmp_path, capsys):
    assert localize_cli.main(["--tiles", str(tile_dir), "--model", str(model_dir), str(tmp_path / "nope.jpg"),
                              "--fix", "48.2,16.37", "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = Path(shutil.copytree(model_dir, tmp_path / "other"))
    meta = json.loads((other / "model.json").read_text())
    meta["model_hash"] = "sha256:" + "1" * 64
    (other / "model.json").write_text(json.dumps(meta))
    pano = tmp_path / "p.jpg"
    pano.write_bytes(jpeg(panorama(15, 64)))
    assert localize_cli.main(["--tiles", str(tile_dir), "--model", str(other), str(pano), "--fix=-33.8,151.2",
                              "--quiet"]) == 2
    assert "crossview-tiles encode" in capsys.readouterr().err


def test_fix_from_navsat_fields_and_numpy_scalars(localizer, tiles):
    good = centre_fix(tiles)
    unknown = Fix.from_navsat(good.lat_deg, good.lon_deg, NOW, 0, [0.0] * 9, 0)
    assert unknown.covariance_enu_m2 is None and unknown.sigma_m is None
    known = Fix.from_navsat(good.lat_deg, good.lon_deg, NOW, 0, [4.0, 0, 0, 0, 9.0, 0, 0, 0, 16.0], 2)
    assert np.array_equal(known.covariance_enu_m2, np.diag([4.0, 9.0, 16.0]))
    localizer.reset()
    fix = Fix(np.float32(good.lat_deg), np.float64(good.lon_deg), np.float64(NOW), np.int8(0), sigma_m=np.float32(30))
    est = localizer.localize(jpeg(panorama(16, 64)), fix, np.float64(NOW), now_s=NOW)
    assert est.has_position and est.scope_radius_m == pytest.approx(90.0)


def test_runtime_imports_no_torch():
    code = ("import sys, crossview_ros.localizer, crossview_ros.localize_cli; "
            "sys.exit(1 if 'torch' in sys.modules or 'crossview_training' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


def test_protection_level_holds_the_heavy_tail_a_gaussian_misses():
    """Errors Gaussian on 96 % of frames and a look-alike 40-80 m away on 4 %: the Gaussian's radius
    (sqrt(-2 ln 0.01) sigma) is exceeded by every look-alike, the fitted protection level on at most
    ~1 % of fresh frames from the same process."""
    from crossview_ros.covariance import gaussian_protection_scale

    def drive(seed: int) -> tuple[list[Estimate], list[Truth]]:
        estimates, truths = synthetic_validation(4000, 1.0, seed=seed)
        rng = np.random.default_rng(seed + 7)
        for i in np.flatnonzero(rng.random(len(estimates)) < 0.04):
            t = truths[i]
            bearing = rng.uniform(0, 2 * math.pi)
            lat, lon, _ = geo.LocalENU(t.lat_deg, t.lon_deg).inverse(*(rng.uniform(40, 80) * np.array(
                [math.cos(bearing), math.sin(bearing)])))
            estimates[i] = dataclasses.replace(estimates[i], lat_deg=lat, lon_deg=lon)
        return estimates, truths

    assert gaussian_protection_scale(0.01) == pytest.approx(math.sqrt(-2 * math.log(0.01)))
    fitted = calibrate(*drive(30), protection_risk=0.01)
    assert fitted.protection_scale > 1.5 * gaussian_protection_scale(0.01)
    assert fitted.fit["share_beyond_protection"] <= 0.01

    def share_beyond(model: CovarianceModel, risk: float) -> float:
        out = []
        for e, t in zip(*drive(31)):
            s = model.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m))
            pl = model.protection_level_m(np.eye(2) * s * s, risk)
            out.append(geo.distance_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg) > pl)
        return float(np.mean(out))

    assert share_beyond(fitted, 0.01) <= 0.015
    # asked for another risk than it was fitted for, the model falls back to the Gaussian's radius
    assert share_beyond(fitted, 0.05) > 0.03
    gaussian = dataclasses.replace(fitted, protection_scale=0.0)
    assert share_beyond(gaussian, 0.01) > 0.03  # the look-alikes
    with pytest.raises(ValueError, match="protection"):
        CovarianceModel.from_dict({**fitted.to_dict(), "protection_risk": 1.5})


def test_calibrate_fits_the_frames_own_difficulty():
    """Errors whose sigma grows as (1 + view distance) and as e^(2 (1 - mode mass)): the shape fit finds
    both slopes (view_coef ~1, mode_coef ~2), so a walk with more hard frames gets larger sigmas."""
    estimates, truths = synthetic_validation(4000, 1.0, seed=40)
    rng = np.random.default_rng(41)
    default = CovarianceModel.from_config(LocalizerConfig())
    out = []
    for e, t in zip(estimates, truths):
        view, mass = float(rng.uniform(0.0, 60.0)), float(rng.uniform(0.5, 1.0))
        sigma = default.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) * (1 + view) * math.exp(
            2.0 * (1 - mass)) / 10.0
        err = rng.normal(0.0, sigma, 2)
        lat, lon, _ = geo.LocalENU(t.lat_deg, t.lon_deg).inverse(err[0], err[1])
        out.append(dataclasses.replace(e, lat_deg=lat, lon_deg=lon, view_distance_m=view, mode_mass=mass))
    fitted = calibrate(out, truths)
    assert fitted.view_coef == pytest.approx(1.0, abs=0.15)
    assert fitted.mode_coef == pytest.approx(2.0, abs=0.4)
    assert fitted.sigma_m(0.1, 0.5, 1.0, 5.0, 0.6, 40.0) > 5 * fitted.sigma_m(0.1, 0.5, 1.0, 5.0, 1.0, 0.0)


def test_the_scale_is_fitted_on_the_covariance_the_node_publishes():
    """Half the estimates carry a look-alike's mass (a 30 m x 10 m far covariance on top of the model's
    sigma^2, as the localizer publishes it) that did not come true: their errors are the model's alone.
    The scale is fitted on d^2 under sigma^2 I + that far covariance, so the published covariances hold
    95 % of the errors; fitted on sigma^2 I alone they would hold 97.2 %."""
    estimates, truths = synthetic_validation(4000, 1.0, seed=50)
    default = CovarianceModel.from_config(LocalizerConfig())
    far = np.array([[900.0, 0.0], [0.0, 100.0]])
    rng = np.random.default_rng(51)
    with_far = []
    for e in estimates:
        s2 = default.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2
        with_far.append(dataclasses.replace(e, covariance_enu_m2=np.eye(2) * s2 + (far if rng.random() < 0.5 else 0)))
    fitted = calibrate(with_far, truths, fit_shape=False)

    def published_d2(e: Estimate, t: Truth) -> float:
        de, dn = geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg)
        s2_old = default.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2
        s2_new = fitted.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2
        cov = np.asarray(e.covariance_enu_m2) - np.eye(2) * s2_old + np.eye(2) * s2_new
        v = np.array([de, dn])
        return float(v @ np.linalg.solve(cov, v))

    share = np.mean([published_d2(e, t) <= CHI2_2DOF_95 for e, t in zip(with_far, truths)])
    assert share == pytest.approx(0.95, abs=0.003)
    assert fitted.fit["share_d2_below_chi2"] == pytest.approx(share, abs=1e-9)
    alone = calibrate(estimates, truths, fit_shape=False)  # no far mass: the model's sigma is the errors'
    assert fitted.sigma0_m < 0.97 * alone.sigma0_m  # the far covariance holds part of what sigma had to


def test_the_covariance_is_scaled_on_the_frames_the_floor_lets_through():
    """Frames below the imagery floor (here three times the error) are withheld by the node, so the
    covariance's scale is fitted without them: the published d^2 then sits at the 95 % quantile, not far
    above it. The shape still comes from every frame (a floor that withholds most frames leaves too few)."""
    from crossview_ros.localize_eval import published_under_floor

    good, truths = synthetic_validation(600, 1.0, seed=7)
    bad, _ = synthetic_validation(600, 3.0, seed=7)
    rng = np.random.default_rng(8)
    hard = rng.random(600) < 0.3
    estimates = [b if h else g for g, b, h in zip(good, bad, hard)]
    scores = np.where(hard, 0.2, 0.6) + rng.normal(0.0, 0.01, 600)
    published = published_under_floor(np.r_[scores[:-1], np.inf], 0.4)
    assert list(published[:-1]) == list(~hard[:-1]) and published[-1]  # +inf: a window the gate does not judge
    published = published_under_floor(scores, 0.4)
    assert published_under_floor(scores, 0.0).all()  # no floor: every frame is published
    naive = calibrate(estimates, truths)
    fitted = calibrate(estimates, truths, published=published)
    assert fitted.fit["samples"] == 600 and fitted.fit["published_samples"] == int(published.sum())
    assert fitted.fit["share_d2_below_chi2"] == pytest.approx(0.95, abs=0.005)

    def share_d2(model):
        d2 = [model.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** -2
              * sum(v * v for v in geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg))
              for e, t, p in zip(estimates, truths, published) if p]
        return float(np.mean(np.array(d2) < 5.991))

    assert share_d2(fitted) == pytest.approx(0.95, abs=0.005)
    assert share_d2(naive) > 0.985  # the hard frames in the scale: every published sigma too cautious
    few = published & (np.arange(600) < 40)  # fewer than min_samples published: scaled on all, as before
    assert calibrate(estimates, truths, published=few, min_samples=50).sigma0_m == pytest.approx(naive.sigma0_m)
    with pytest.raises(ValueError, match="published flags"):
        calibrate(estimates, truths, published=published[:10])


def test_the_imagery_floor_fit():
    """The floor at the background's quantile with the share of the walks' own windows it withholds,
    against numpy on the same numbers (the statistic itself: test_bev, the gate's Estimate.imagery_score)."""
    from crossview_ros.imagery_floor import fit_imagery_floor

    rng = np.random.default_rng(3)
    background, own = rng.normal(0.2, 0.03, 400), rng.normal(0.45, 0.08, 300)
    floor, fit = fit_imagery_floor(np.r_[background, np.nan], own, quantile=0.99)
    assert floor == pytest.approx(np.quantile(background, 0.99))
    assert fit["imagery_own_withheld_share"] == pytest.approx(np.mean(own < floor))
    assert fit["imagery_background_windows"] == 400 and fit["imagery_own_windows"] == 300
    assert fit_imagery_floor(background[:5], own)[0] == 0.0  # too few windows: the gate stays off
    # windows the gate does not judge (+inf: trusted views) count as kept in the withheld share
    _, fit = fit_imagery_floor(background, np.r_[own, np.full(300, np.inf)], quantile=0.99)
    assert fit["imagery_own_withheld_share"] == pytest.approx(np.mean(own < floor) / 2)
    assert fit["imagery_own_median"] == pytest.approx(np.median(own))
    model = CovarianceModel.from_config(LocalizerConfig())
    values = {**model.to_dict(), "imagery_score_floor": floor}
    assert CovarianceModel.from_dict(values).imagery_score_floor == pytest.approx(floor)
    with pytest.raises(ValueError):
        CovarianceModel.from_dict({**values, "imagery_score_floor": -0.1})


GAUSSIANS = {"imagery_background_mean": 0.2, "imagery_background_std": 0.04, "imagery_own_mean": 0.45,
             "imagery_own_std": 0.08}


def test_the_imagery_mismatch_belief_weighs_each_window_on_the_two_fitted_gaussians():
    """fit_imagery_floor records the background's and the own windows' mean and std (numpy on the same
    numbers) and their add-one smoothed shares of supported windows; imagery_mismatch_llr is scipy's logpdf
    difference plus the log ratio of those shares (or of their complements); MismatchBelief adds it / window to the
    log odds from the prior, clamped to [floor, 1 - floor]; the file keeps the Gaussians, an older one loads
    without them."""
    from scipy.special import expit, logit
    from scipy.stats import norm

    from crossview_ros.covariance import IMAGERY_LIKELIHOODS
    from crossview_ros.imagery_floor import fit_imagery_floor
    from crossview_ros.imagery_window import MismatchBelief

    rng = np.random.default_rng(4)
    background, own = rng.normal(0.2, 0.04, 500), rng.normal(0.45, 0.08, 400)
    _, fit = fit_imagery_floor(background, np.r_[own, np.inf, np.nan])  # trusted and unmatched windows left out
    assert fit["imagery_background_mean"] == pytest.approx(np.mean(background))
    assert fit["imagery_background_std"] == pytest.approx(np.std(background))
    assert fit["imagery_own_mean"] == pytest.approx(np.mean(own)) and fit["imagery_own_std"] == pytest.approx(
        np.std(own))
    assert all(fit_imagery_floor(background[:5], own)[1][g] == 0.0 for g in IMAGERY_LIKELIHOODS)
    assert fit["imagery_background_supported"] == 0.0  # no supports given: not fitted
    bg_support, own_support = rng.integers(0, 11, 500) / 10, np.r_[rng.integers(0, 11, 400) / 10, np.nan]
    _, fit = fit_imagery_floor(background, own, background_support=bg_support, own_support=own_support)
    assert fit["imagery_background_supported"] == pytest.approx((np.sum(bg_support >= 0.5) + 1) / 502)
    assert fit["imagery_own_supported"] == pytest.approx((np.sum(own_support[:-1] >= 0.5) + 1) / 402)
    model = dataclasses.replace(CovarianceModel.from_config(LocalizerConfig()), **GAUSSIANS)
    for s in (0.1, 0.28, 0.32, 0.4, 0.6):
        want = norm.logpdf(s, 0.2, 0.04) - norm.logpdf(s, 0.45, 0.08)
        assert model.imagery_mismatch_llr(s) == pytest.approx(want, rel=1e-9)
        assert model.imagery_mismatch_llr(s, 0.3) == pytest.approx(want, rel=1e-9)  # shares not fitted
    assert model.imagery_mismatch_llr(None) is None and model.imagery_mismatch_llr(float("nan")) is None
    assert CovarianceModel.from_config(LocalizerConfig()).imagery_mismatch_llr(0.1, 0.3) is None  # not fitted
    # a window where most views point at their estimate by themselves is likelier on this place's imagery
    supported = dataclasses.replace(model, imagery_background_supported=0.1, imagery_own_supported=0.75)
    want = norm.logpdf(0.3, 0.2, 0.04) - norm.logpdf(0.3, 0.45, 0.08)
    assert supported.imagery_mismatch_llr(0.3, 0.5) == pytest.approx(want + math.log(0.1 / 0.75), rel=1e-9)
    assert supported.imagery_mismatch_llr(0.3, 0.4) == pytest.approx(want + math.log(0.9 / 0.25), rel=1e-9)
    assert supported.imagery_mismatch_llr(None, 1.0) == pytest.approx(math.log(0.1 / 0.75), rel=1e-9)
    scores = [0.2, 0.22, 0.34, 0.5, 0.55, 0.6, 0.33, 0.3, None, 0.25]
    belief, log_odds = MismatchBelief(0.5, 1e-3, window=4), logit(0.5)
    for s in scores:
        llr = model.imagery_mismatch_llr(s)
        if llr is not None:
            log_odds = float(np.clip(log_odds + llr / 4, logit(1e-3), logit(1 - 1e-3)))
        assert belief.update(llr) == pytest.approx(expit(log_odds), rel=1e-9)
    stream = MismatchBelief(0.5, 1e-5, 10)
    assert [stream.update(model.imagery_mismatch_llr(0.2)) for _ in range(60)][-1] == pytest.approx(1 - 1e-5)
    assert stream.update(model.imagery_mismatch_llr(0.34)) > 0.99  # one window just above a floor: still elsewhere
    stream.clear()
    assert stream.p == 0.5
    assert [stream.update(model.imagery_mismatch_llr(0.45)) for _ in range(40)][-1] == pytest.approx(1e-5)
    assert stream.update(model.imagery_mismatch_llr(0.34)) < 1e-4  # its own imagery: one low window is no alarm
    back = CovarianceModel.from_dict(model.to_dict())
    assert {g: getattr(back, g) for g in GAUSSIANS} == GAUSSIANS
    older = {k: v for k, v in model.to_dict().items() if k not in IMAGERY_LIKELIHOODS}
    assert not CovarianceModel.from_dict(older).imagery_gaussians_fitted
    with pytest.raises(ValueError, match="imagery stds"):
        CovarianceModel.from_dict({**model.to_dict(), "imagery_own_std": -0.1})
    with pytest.raises(ValueError, match="supported shares"):
        CovarianceModel.from_dict({**model.to_dict(), "imagery_own_supported": 1.0})
    assert CovarianceModel.from_dict(supported.to_dict()).imagery_own_supported == 0.75


def test_calibration_fits_the_scale_under_the_mismatch_share_and_the_protection_level_without_it():
    """An estimate's published covariance carries its localizer's mismatch share (imagery_mismatch x mismatch
    covariance, 30 m x 10 m here), on the calibration walks too: the scale is fitted under it, so that 95 %
    of d^2 under what the node publishes (the fitted sigma^2 I plus the share, computed here by hand) lie
    below 5.99, where the fit without the share would cover more. The protection level's factor is the
    99 % quantile of error / fitted sigma, the share left out (at a stream's start it would lower the
    factor every frame's radius takes). The fitted model keeps the Gaussians it was given."""
    from scipy.stats import chi2

    from crossview_ros.covariance import gaussian_protection_scale

    estimates, truths = synthetic_validation(3000, 1.0, seed=60)
    rng = np.random.default_rng(61)
    apart = np.array([[900.0, 0.0], [0.0, 100.0]])
    default = CovarianceModel.from_config(LocalizerConfig())
    carrying, shares = [], []
    for e in estimates:
        w = float(rng.uniform(0.0, 0.5))
        s2 = default.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2
        carrying.append(dataclasses.replace(e, imagery_mismatch=w, mismatch_covariance_enu_m2=apart,
                                            covariance_enu_m2=np.eye(2) * s2 + w * apart))
        shares.append(w * apart)
    plain = calibrate(estimates, truths, fit_shape=False)
    fitted = calibrate(carrying, truths, fit_shape=False, imagery_likelihoods=GAUSSIANS)
    errors = np.array([geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg) for e, t in zip(carrying, truths)])

    def sigmas(model: CovarianceModel) -> np.ndarray:
        return np.array([model.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) for e in carrying])

    def share_inside(model: CovarianceModel) -> float:
        d2 = [float(err @ np.linalg.solve(np.eye(2) * s * s + share, err))
              for err, s, share in zip(errors, sigmas(model), shares)]
        return float(np.mean(np.array(d2) <= chi2.ppf(0.95, 2)))

    assert share_inside(fitted) == pytest.approx(0.95, abs=0.002)
    assert fitted.fit["share_d2_below_chi2"] == pytest.approx(share_inside(fitted), abs=1e-9)
    assert share_inside(plain) > 0.96 and fitted.sigma0_m < 0.95 * plain.sigma0_m
    ratio = np.hypot(errors[:, 0], errors[:, 1]) / sigmas(fitted)
    assert fitted.protection_scale == pytest.approx(max(float(np.quantile(ratio, 0.99, method="higher")),
                                                        gaussian_protection_scale(0.01)), rel=1e-9)
    assert {g: getattr(fitted, g) for g in GAUSSIANS} == GAUSSIANS
    assert not plain.imagery_gaussians_fitted  # none given: start's (none)


def test_calibration_takes_a_vouched_estimates_track_covariance_where_the_node_publishes_it():
    """A third of the estimates were vouched for by odometry, with a track covariance (0.3-3 x the
    error's variance) and an imagery covariance holding a far mass (0-3 x it) as well: the node
    publishes the track's where its largest variance is below the imagery's (the model's sigma^2 I plus
    the far mass and the mismatch share), whichever the model, so calibration chooses per frame under the
    model it fits, the far mass kept from the recorded imagery covariance even where the track's was
    published. By hand, with that choice, 95 % of d^2 lie below 5.99 and the protection level's factor is
    the 99 % quantile of error over the published sigma. Calibrated as if every frame published the
    imagery's covariance (no track covariance recorded), or without the imagery's recorded where the
    track's was published (the far mass lost), the same choice covers another share."""
    from scipy.stats import chi2

    from crossview_ros.covariance import gaussian_protection_scale

    estimates, truths = synthetic_validation(3000, 1.0, seed=62)
    rng = np.random.default_rng(63)
    apart = np.array([[900.0, 0.0], [0.0, 100.0]])
    default = CovarianceModel.from_config(LocalizerConfig())
    vouched, shares, fars, tracks = [], [], [], []
    for k, e in enumerate(estimates):
        s2 = default.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2
        track = np.eye(2) * s2 * float(rng.uniform(0.3, 3.0)) if k % 3 == 0 else None
        w = float(rng.uniform(0.0, 0.5 if track is None else 0.002))
        far = np.zeros((2, 2)) if track is None else np.eye(2) * s2 * float(rng.uniform(0.0, 3.0))
        imagery = np.eye(2) * s2 + w * apart + far
        published = imagery if track is None or track.max() >= np.linalg.eigvalsh(imagery).max() else track
        vouched.append(dataclasses.replace(e, imagery_mismatch=w, mismatch_covariance_enu_m2=apart,
                                           covariance_enu_m2=published, track_covariance_enu_m2=track,
                                           imagery_covariance_enu_m2=None if track is None else imagery))
        shares.append(w * apart + far)
        fars.append(far[0, 0])
        tracks.append(track)
    errors = np.array([geo.offset_enu_m(t.lat_deg, t.lon_deg, e.lat_deg, e.lon_deg) for e, t in zip(vouched, truths)])

    def published_by(model: CovarianceModel) -> list[np.ndarray]:
        out = []
        for e, share, track in zip(vouched, shares, tracks):
            imagery = np.eye(2) * model.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2 + share
            scaled = None if track is None else track * model.track_scale
            sharper = scaled is not None and scaled.max() < np.linalg.eigvalsh(imagery).max()
            out.append(scaled if sharper else imagery)
        return out

    def share_inside(model: CovarianceModel) -> float:
        d2 = [float(err @ np.linalg.solve(cov, err)) for err, cov in zip(errors, published_by(model))]
        return float(np.mean(np.array(d2) <= chi2.ppf(0.95, 2)))

    fitted = calibrate(vouched, truths, fit_shape=False)
    assert share_inside(fitted) == pytest.approx(0.95, abs=0.002)
    assert fitted.fit["share_d2_below_chi2"] == pytest.approx(share_inside(fitted), abs=1e-9)
    chosen = [t is not None and np.allclose(c, t * fitted.track_scale) for c, t in zip(published_by(fitted), tracks)]
    assert 300 < sum(chosen) < 1000  # the track's covariance published for some vouched frames, not all
    # ... scaled so that those frames hold the quantile by themselves: published where it is the sharper of
    # the two, the track's 0.3-3 x the error's variance covers less than 95 % unscaled, and the scale widens it
    assert fitted.fit["track_published"] == sum(chosen) and fitted.track_scale > 1.0
    by_track = [float(err @ np.linalg.solve(c, err)) for err, c, k in zip(errors, published_by(fitted), chosen) if k]
    assert np.mean(np.array(by_track) <= chi2.ppf(0.95, 2)) == pytest.approx(0.95, abs=1.5 / len(by_track))
    sigma = np.array([math.sqrt(np.linalg.eigvalsh(c).max()) if k else
                      math.sqrt(fitted.sigma_m(e.margin, e.score, e.spread_m, math.hypot(*e.offset_m)) ** 2 + f)
                      for c, k, e, f in zip(published_by(fitted), chosen, vouched, fars)])
    ratio = np.hypot(errors[:, 0], errors[:, 1]) / sigma
    assert fitted.protection_scale == pytest.approx(max(float(np.quantile(ratio, 0.99, method="higher")),
                                                        gaussian_protection_scale(0.01)), rel=1e-9)
    unaware = calibrate([dataclasses.replace(e, track_covariance_enu_m2=None) for e in vouched], truths,
                        fit_shape=False)
    assert abs(share_inside(unaware) - 0.95) > 0.005
    far_lost = calibrate([dataclasses.replace(e, imagery_covariance_enu_m2=None) for e in vouched], truths,
                         fit_shape=False)
    assert share_inside(far_lost) > 0.953  # the far mass lost: frames the track published seen as the imagery's


def test_streams_of_one_tile_set_with_other_settings_get_their_own_localizer(small_drive):
    """make_localizers: a walk and a drive in one city (one tile set; another camera height and track speed)
    are each localized with their own config, and streams with the same config share one localizer (its
    tile set loaded once); all share one engine. Calibration pools such streams (crossview-walks)."""
    from crossview_ros.localize_eval import make_localizers

    base = dict(tile_set=str(small_drive["tiles"]), model=str(small_drive["model"]), engine="onnxruntime",
                engine_threads=1)
    walk = LocalizerConfig(**base, camera_height_m=1.7)
    drive = LocalizerConfig(**base, camera_height_m=2.0, track_speed_mps=12.0)
    locs = make_localizers({"0": walk, "1": drive, "2": LocalizerConfig(**base, camera_height_m=1.7)})
    try:
        assert locs["0"] is locs["2"] and locs["0"] is not locs["1"]
        assert (locs["0"].config.camera_height_m, locs["0"].config.track_speed_mps) == (1.7, 2.0)
        assert (locs["1"].config.camera_height_m, locs["1"].config.track_speed_mps) == (2.0, 12.0)
        assert locs["0"].engine is locs["1"].engine
    finally:
        locs["0"].engine.close()


def test_calibration_refits_its_scale_on_what_the_fitted_model_publishes(small_drive, tmp_path):
    """refit_on_published: the drive localized again under a first fit that is five times too cautious;
    the scale is fitted again on the frames that pass publishes (95 % of their d^2 under 5.99, where the
    first fit covered nearly all), the shape kept, and the record says what the first fit covered and what
    the kept fit covers as published (measured by a second pass, which ends the refit)."""
    import dataclasses

    from crossview_ros.covariance import CHI2_2DOF_95, load_covariance, save_covariance
    from crossview_ros.localize_eval import evaluate_bags, make_localizers, refit_on_published
    from crossview_ros.localize_frames import bag_frames

    model = Path(shutil.copytree(small_drive["model"], tmp_path / "model"))
    config = LocalizerConfig(tile_set=str(small_drive["tiles"]), model=str(model), engine="onnxruntime",
                             engine_threads=1, max_mahalanobis=1e6, min_margin=-1.0, min_mode_mass=0.0,
                             min_imagery_support=0.0, min_imagery_score=0.0, min_prior_inside=0.0)
    fitted = evaluate_bags([small_drive["bag"]], [config], calibrate=True).calibration
    first = load_covariance(fitted["path"])
    cautious = dataclasses.replace(first, sigma0_m=5.0 * first.sigma0_m)
    path = save_covariance(cautious, tmp_path / "cautious.json", json.loads(Path(fitted["path"]).read_text())["model_hash"])
    frames, fixes = bag_frames(small_drive["bag"], 0)
    frames = [dataclasses.replace(fr, city="0") for fr in frames]
    out = refit_on_published(make_localizers({"0": config}), frames, fixes, {"path": str(path)})
    fit, params = out["fit"], out["params"]
    assert out["path"] == str(model / "covariance.json") and fit["refit_published"] >= 20
    assert fit["first_fit_share_d2_below_chi2"] > 0.97  # five times too wide: nearly every frame inside
    assert fit["share_d2_below_chi2"] == pytest.approx(0.95, abs=1.0 / fit["published_samples"] + 1e-9)
    assert fit["refit_sigma_ratio"] < 0.5 and params["sigma0_m"] == pytest.approx(fit["refit_sigma_ratio"]
                                                                                  * cautious.sigma0_m)
    assert [params[k] for k in ("margin_coef", "score_coef", "spread_coef")] == pytest.approx(
        [cautious.margin_coef, cautious.score_coef, cautious.spread_coef])  # the shape kept
    rerun = evaluate_bags([small_drive["bag"]], [dataclasses.replace(config, covariance_file=out["path"])])
    published = [(e, fr) for e, fr in zip(rerun.estimates, rerun.frames) if e.accepted]
    d2 = [float(d @ np.linalg.solve(e.covariance_enu_m2, d)) for e, fr in published
          for d in [np.array(geo.offset_enu_m(fr.truth.lat_deg, fr.truth.lon_deg, e.lat_deg, e.lon_deg))]]
    assert len(d2) == fit["refit_published"]  # these gates do not depend on the covariance
    assert np.mean(np.array(d2) <= CHI2_2DOF_95) == pytest.approx(fit["share_d2_below_chi2"], abs=1.5 / len(d2))
    # the refit's own pass measured it as published (within one frame's share of 95 %: no third pass), and
    # the rerun publishes exactly that share
    assert fit["refit_passes"] == 2
    assert abs(fit["published_share_d2_below_chi2"] - 0.95) <= max(0.01, 1.0 / fit["refit_published"])
    assert np.mean(np.array(d2) <= CHI2_2DOF_95) == pytest.approx(fit["published_share_d2_below_chi2"], abs=1e-9)


def test_motion_gap_by_hand():
    """MotionCheck.gap_m: odometry (a stand-in that moves everything 10 m east) carries each estimate published
    over the last 3 s; the gap is the farthest of them from the new one. Published at 10 s (100, 200) and 11 s
    (105, 200), a new one at 12 s (120, 203): carried to (110, 200) and (115, 200), 10.44 m and 5.83 m off.
    An estimate not published (refused) is no reference."""
    from crossview_ros.motion_check import MotionCheck

    class Odometry:
        aligned = True

        def carry(self, east_m, north_m, t0_s, t1_s):
            return (east_m + 10.0, north_m, 0.5) if self.aligned else None

    odo, eye = Odometry(), np.eye(2)
    check = MotionCheck(3.0, 5.99)
    assert check.gap_m(odo, 10.0, 100.0, 200.0) is None  # nothing published before
    check.published(10.0, 100.0, 200.0, eye)
    assert check.gap_m(odo, 10.0, 100.0, 200.0) is None  # nor at the same stamp
    assert check.gap_m(odo, 11.0, 105.0, 200.0) == pytest.approx(5.0)  # 100 + 10 is 5 m past 105
    check.published(11.0, 105.0, 200.0, eye)
    assert check.gap_m(odo, 12.0, 120.0, 203.0) == pytest.approx(math.hypot(10.0, 3.0))  # 12 s is not published
    # at 13.5 s the 10 s estimate is over 3 s old (it would be 15 m off): the 11 s one is carried to (115, 200)
    assert check.gap_m(odo, 13.5, 125.0, 200.0) == pytest.approx(10.0)
    odo.aligned = False  # odometry that cannot carry (not aligned with the grid) measures nothing
    assert check.gap_m(odo, 13.5, 0.0, 0.0) is None
    assert check.gap_m(None, 13.5, 0.0, 0.0) is None and MotionCheck(0.0, 5.99).gap_m(odo, 1.0, 0.0, 0.0) is None
    check.clear()
    odo.aligned = True
    assert check.gap_m(odo, 13.5, 0.0, 0.0) is None


def test_motion_check_against_a_reference_carried_by_odometry():
    """MotionCheck by hand: odometry (a stand-in that moves everything 10 m east, variance 0.5 m^2 per axis)
    carries the reference; the estimate lies (3, 4) m from it, both covariances the identity, so
    d^2 = 25 / 2.5 = 10: refused at 5.99, passed at 10.5. The reference is the newest published estimate
    3 to 6 s old: none at 2.9 s or 6.1 s after it; a later publication forgets those over 6 s old."""
    from crossview_ros.motion_check import MotionCheck

    class Odometry:
        def carry(self, east_m, north_m, t0_s, t1_s):
            return east_m + 10.0, north_m, 0.5

    eye = np.eye(2)
    check = MotionCheck(3.0, 5.99)
    check.published(10.0, 100.0, 200.0, eye)
    message = check.refusal(Odometry(), 13.0, 113.0, 204.0, eye)
    assert message is not None and "5.0 m from where odometry carries the one published 3.0 s earlier" in message
    assert "squared Mahalanobis distance 10.0 > max_motion_mahalanobis 5.99" in message
    loose = MotionCheck(3.0, 10.5)
    loose.published(10.0, 100.0, 200.0, eye)
    assert loose.refusal(Odometry(), 13.0, 113.0, 204.0, eye) is None
    assert check.refusal(Odometry(), 12.9, 113.0, 204.0, eye) is None  # too young to compare with
    assert check.refusal(Odometry(), 16.1, 113.0, 204.0, eye) is None  # too old
    assert check.refusal(None, 13.0, 113.0, 204.0, eye) is None  # no odometry
    assert MotionCheck(0.0, 5.99).refusal(Odometry(), 13.0, 113.0, 204.0, eye) is None  # off
    check.published(14.0, 0.0, 0.0, eye)
    check.published(16.5, 0.0, 0.0, eye)  # 10 s is now 6.5 s old: forgotten, 14 s too young at 16.6 s
    assert check.refusal(Odometry(), 16.6, 1e6, 1e6, eye) is None
    assert check.refusal(Odometry(), 17.0, 1e6, 1e6, eye) is not None  # 14 s is 3 s old
    check.clear()
    assert check.refusal(Odometry(), 17.0, 1e6, 1e6, eye) is None
