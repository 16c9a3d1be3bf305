"""The localization pipeline without ROS: (panorama, GNSS fix, stamp) -> Estimate.

One frame goes: check stamps and fix -> decode (crossview_ros.panorama) -> scope from the fix
(k-sigma radius, clamped, widened by elapsed time x max speed; with odometry aligned to the grid, an
older fix is carried to the panorama's stamp by odometry's displacement instead) -> preprocess -> the matcher of the
loaded model (crossview_ros.matchers: encode the panorama, score the scope, refine the pose,
heading) -> covariance (crossview_ros.covariance) -> gating -> Estimate. The Localizer does not
know which model family it runs: model.json's matching kind picks the matcher.

Every frame ends in an Estimate with `accepted` and a `reason` (Reason). Bad input (image, fix,
stamps, a fix outside the coverage) never raises: the Estimate carries the reason, a message and
no position, and one throttled log line says what was wrong. Gating rejections keep the computed
position for diagnostics and calibration: publish only estimates with `accepted` True. The gates
stand between the posterior and a confident wrong fix: the fix's uncertainty mostly off the tiles
(OUTSIDE_COVERAGE), too few recent views that point at their estimate by themselves (MISMATCH),
a posterior split between distinct places (AMBIGUOUS), the margin (LOW_MARGIN), the GNSS prior
(MAHALANOBIS, which also resets the track) and odometry over seconds (MOTION: motion_check). The
published covariance adds to the calibrated sigma the posterior's mass beyond its mode and the
chance that the imagery is not this place's (imagery_mismatch_prior); the protection level is the
radius the error exceeds on at most protection_risk of fixes. Odometry (add_odometry, thread-safe) moves the matcher's
track between frames (crossview_ros.odometry), carries a fix through a GNSS dropout (fix_max_age_odometry_s), carries
the last published estimate so that a fix running off the tiles near their edge is not taken for a platform beyond
them, and carries the last estimate the fix agreed with so that a fix in a multipath excursion does not refuse, or
reset, a track that odometry vouches for (fix_overrule_s), and an anchor that passed the MISMATCH gate unaided, so
that a view that does not stand out from its scope is still published where the track says the platform is
(imagery_track_s; imagery_window.ImageryGate).
Artefact problems (missing or corrupt engine, descriptors of another model, an unusable calibration
file) raise at construction, never at the first frame.

A Localizer is not thread-safe (it keeps the last stamp for the order check and the matcher's
track): one per thread.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.camera import Camera, CameraError, CameraFrame, CameraRig, reproject_panorama_height
from crossview_ros.covariance import (
    COVARIANCE_FILE, IMAGERY_BEST_SCORE, IMAGERY_OVER_SCOPE_MEDIAN, CovarianceModel, check_imagery_statistic,
    load_covariance,
)
from crossview_ros.engines import Engine, create_engine
from crossview_ros.estimate import (
    BAD_INPUT_REASONS, GATE_REASONS, Estimate, Fix, Latency, LocalizerError, Reason, finite_or_none,
)
from crossview_ros.frame_checks import FrameRejected, check_fix, check_stamp
from crossview_ros.imagery_window import ImageryGate
from crossview_ros.localizer_config import LocalizerConfig, engine_options
from crossview_ros.log_throttle import Throttle
from crossview_ros.matchers import Heading, PoseMatch, Scope, check_engine_against_tiles, create_matcher
from crossview_ros.model_meta import load_model_meta
from crossview_ros.motion_check import MotionCheck
from crossview_ros.odometry import CarriedEstimate, GridOdometry
from crossview_ros.panorama import decode_image, decode_panorama
from crossview_ros.preprocess import fit_ground_input, preprocess_ground
from crossview_ros.tiles import TileSet, TileSetError
from crossview_ros.tiles.coverage import CoverageBox, disc_on_tiles

log = logging.getLogger(__name__)


def scope_radius_m(sigma_horizontal_m: float, age_s: float, *, k: float, min_m: float, max_m: float,
                   max_speed_mps: float) -> float:
    """Search radius around the fix: clamp(k sigma, min, max) + |age| x max speed, metres.

    The clamp bounds what the receiver's own sigma can ask for; the widening covers how far the
    platform may have moved between the fix and the panorama, however confident the fix was.
    """
    return float(min(max(k * sigma_horizontal_m, min_m), max_m) + abs(age_s) * max_speed_mps)


@dataclass(frozen=True)
class _GnssPrior:
    """The fix at the panorama's stamp (Localizer._gnss_prior), ENU m^2, the fix_sigma_scale applied."""

    lat_deg: float
    lon_deg: float
    covariance_enu_m2: np.ndarray  # what the fix says of the platform now (the match's prior, the d^2 gate)
    widen_age_s: float  # the age that still widens the search radius by max_speed_mps (0 once carried)
    sigma_covariance_enu_m2: np.ndarray  # what the search radius's k sigma is taken from
    carried: bool = False  # odometry carried the fix to the panorama's stamp


class Localizer:
    """(panorama, fix, stamp) -> Estimate, with everything loaded and checked at construction."""

    def __init__(self, config: LocalizerConfig, *, engine: Engine | None = None) -> None:
        """Open the tile set, create the engine (or take `engine`), check that the model made the
        tile set's descriptors, create the model family's matcher and load the covariance calibration.

        Raises TileSetError, EngineError or LocalizerError naming the problem and the fix.
        """
        config.validate()
        self.config = config
        if not str(config.tile_set):
            raise LocalizerError("config tile_set is empty; pass the tile set folder (crossview-tiles build + encode)")
        if engine is None and not str(config.model):
            raise LocalizerError("config model is empty; pass the exported model folder (crossview-export onnx)")
        self.tiles = TileSet.open(config.tile_set)
        own_engine = engine is None
        if engine is None:
            engine = create_engine(config.model, config.engine, **engine_options(config))
        self.engine = engine
        self._owns_engine = own_engine
        try:
            self.meta = engine.meta
            self.model_dir = Path(config.model) if str(config.model) else Path(self.meta.path)
            if not own_engine and str(config.model):
                given = load_model_meta(config.model, verify=False).model_hash
                if given != self.meta.model_hash:
                    raise LocalizerError(f"the engine runs model {self.meta.model_hash} but config model "
                                         f"{config.model} is {given}; pass the engine of that model or leave "
                                         "config model empty")
            check_engine_against_tiles(engine, self.tiles)
            self.covariance = self._load_covariance()
            self.matcher = create_matcher(engine, self.tiles, config)
            self.imagery_statistic = IMAGERY_OVER_SCOPE_MEDIAN if self.matcher.scope_level else IMAGERY_BEST_SCORE
            check_imagery_statistic(self.covariance, self.imagery_statistic, config.min_imagery_score)
        except BaseException:
            self.close()
            raise
        self.counts: Counter[Reason] = Counter()  # frames per reason since construction (diagnostics)
        self.yaw_withheld = 0  # accepted frames published without yaw: a flipped bearing held real mass
        self.odometry = GridOdometry(config.odom_max_age_s, config.odometry_look_back_s) if config.odometry else None
        self._course_fix_stamp_s: float | None = None
        self.imagery = ImageryGate(config, self.covariance, self.imagery_statistic)  # MISMATCH
        self.motion = MotionCheck(config.motion_check_s, config.max_motion_mahalanobis)  # MOTION
        self._last_stamp_s: float | None = None
        self._published: CarriedEstimate | None = None  # the last accepted estimate
        self._agreed: CarriedEstimate | None = None  # the last accepted estimate the fix agreed with
        self.fix_overruled = 0  # accepted frames whose fix contradicted them: odometry vouched (fix_overrule_s)
        self._throttle = functools.partial(Throttle(config.log_throttle_s).log, log)
        self._coverage = CoverageBox.of(self.tiles)
        self._panorama_height_m = self._check_panorama_height()
        log.info("localizer ready: %d tiles of %s (zone %s, %g m), %s model %s on %s, covariance %s", len(self.tiles),
                 self.tiles.path, self.tiles.zone, self.tiles.tile_size_m, self.matcher.kind, self.meta.model_hash,
                 engine.name, "calibrated" if self.covariance.calibrated else "UNCALIBRATED (defaults; run --calibrate)")

    def _load_covariance(self) -> CovarianceModel:
        choice = str(self.config.covariance_file)
        if choice.lower() == "none":
            return CovarianceModel.from_config(self.config)
        if choice:
            path = Path(choice)
            if path.is_dir():
                path = path / COVARIANCE_FILE
            if not path.is_file():
                raise LocalizerError(f"covariance_file {choice} does not exist; calibrate first, or set it to '' "
                                     "(use <model>/covariance.json when present) or 'none' (uncalibrated defaults)")
        else:
            path = self.model_dir / COVARIANCE_FILE
            if not path.is_file():
                return CovarianceModel.from_config(self.config)
        model = load_covariance(path, self.meta.model_hash)
        log.info("covariance calibration %s loaded", path)
        return model

    def close(self) -> None:
        """Release the engine when this Localizer created it."""
        if getattr(self, "_owns_engine", False) and getattr(self, "engine", None) is not None:
            self.engine.close()
            self._owns_engine = False

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the stream: after a time jump backwards (a bag restarting), between unrelated panoramas."""
        self._last_stamp_s = None
        self._published = self._agreed = None
        self.matcher.reset()
        self.imagery.clear()
        self.motion.clear()
        if self.odometry is not None:
            self.odometry.reset()

    def add_odometry(self, stamp_s: float, x_m: float, y_m: float, yaw_rad: float,
                     pose_covariance: Any = None) -> str | None:
        """One odometry pose (base_link in the odom frame; pose_covariance: the 36 values of
        nav_msgs/Odometry's pose covariance, or None). Thread-safe against localize(). Returns what was
        wrong with it (the pose is then ignored), or None; ignored when config odometry is false."""
        if self.odometry is None:
            return None
        return self.odometry.add(stamp_s, x_m, y_m, yaw_rad, pose_covariance)

    # ----------------------------------------------------------------- the frame

    def scope_radius_m(self, sigma_horizontal_m: float, age_s: float) -> float:
        c = self.config
        return scope_radius_m(sigma_horizontal_m, age_s, k=c.scope_sigma_k, min_m=c.scope_min_m,
                              max_m=c.scope_max_m, max_speed_mps=c.max_speed_mps)

    def localize(self, panorama: Any, fix: Fix, stamp_s: float, *, encoding: str | None = None,
                 now_s: float | None = None) -> Estimate:
        """Localize one panorama; never raises on bad input (see Reason).

        panorama: uint8 array with encoding rgb8 | bgr8 | mono8, or JPEG/PNG bytes (decode_panorama);
        or a CameraFrame: the images of cameras that are not 360° (crossview_ros.camera, camera_rig).
        fix: the latest GNSS fix; stamp_s: the panorama's stamp (s); now_s: the current time on the
        same clock (default time.time(); the node passes its clock, which follows /clock in replay).
        Engine failures (a bug or a broken GPU, not bad input) do raise.
        """
        t_start = time.perf_counter()
        times: dict[str, float] = {}
        context: dict[str, Any] = {}
        try:
            return self._run(panorama, fix, stamp_s, encoding, time.time() if now_s is None else now_s,
                             times, context, t_start)
        except FrameRejected as rej:
            stamp = finite_or_none(stamp_s)
            stamp = float("nan") if stamp is None else stamp
            return self._finish(Estimate(stamp_s=stamp, accepted=False, reason=rej.reason, message=rej.message,
                                         **context, latency=self._latency(times, t_start)))

    def _run(self, panorama: Any, fix: Fix, stamp_s: Any, encoding: str | None, now_s: float,
             times: dict[str, float], context: dict[str, Any], t_start: float) -> Estimate:
        """The frame's stages in order; each stage's wall time goes into `times`, what is known of the
        estimate into `context` (kept by a rejection)."""
        cfg = self.config
        stamp = check_stamp(stamp_s, now_s, self._last_stamp_s, max_future_s=self.config.max_future_s)
        self._last_stamp_s = min(stamp, now_s)  # an early stamp counts as now: it must not make later frames old
        fix_cov = self._check_fix(fix, now_s) * self.covariance.fix_sigma_scale ** 2
        age_s = stamp - fix.stamp_s
        prior = self._gnss_prior(fix, fix_cov, stamp, age_s)
        if abs(age_s) > cfg.fix_max_age_s and (not prior.carried or age_s > cfg.fix_max_age_odometry_s):
            limit = "fix_max_age_odometry_s" if prior.carried else "fix_max_age_s"
            raise FrameRejected(Reason.STALE_STAMP, f"fix is {abs(age_s):.3f} s {'older' if age_s > 0 else 'newer'} "
                                                    f"than the panorama (more than {limit} {getattr(cfg, limit):g} s)")

        t = time.perf_counter()
        rgb, visibility = self._decode(panorama, encoding)
        times["decode_ms"] = time.perf_counter() - t

        t = time.perf_counter()
        scope = self._scope(fix, prior, stamp, context)
        search_s = time.perf_counter() - t

        t = time.perf_counter()
        x = preprocess_ground(self.meta, rgb)
        times["preprocess_ms"] = time.perf_counter() - t
        t = time.perf_counter()
        ground = self.matcher.encode_ground(x, visibility)
        times["encode_ms"] = time.perf_counter() - t

        t = time.perf_counter()
        candidates = self.matcher.score_scope(ground, scope)
        times["search_ms"] = search_s + time.perf_counter() - t

        t = time.perf_counter()
        pose = self.matcher.refine_pose(ground, candidates)
        offset_m = self.matcher.tile_offset_m(pose)
        lat, lon = geo.utm_to_latlon(pose.easting_m, pose.northing_m, self.tiles.zone)
        support = self.imagery.record(pose)
        context["motion_gap_m"] = gap = self.motion.gap_m(self.odometry, stamp, pose.easting_m, pose.northing_m)
        base, far, d2, from_fix_m, mismatch = self._covariance_and_d2(prior, lat, lon, pose, offset_m, gap)
        self.imagery.window.add_fix_d2(d2)
        share = mismatch["imagery_mismatch"] * mismatch["mismatch_covariance_enu_m2"]
        cov = base + share
        times["offset_ms"] = time.perf_counter() - t
        context.update(lat_deg=float(lat), lon_deg=float(lon), utm_zone=str(self.tiles.zone),
                       easting_m=pose.easting_m, northing_m=pose.northing_m, covariance_enu_m2=cov,
                       score=pose.score, margin=pose.margin, tile_id=pose.tile_id, offset_m=offset_m,
                       spread_m=pose.spread_m, mahalanobis_d2=d2, **mismatch)
        context.update(protection_level_m=self.covariance.protection_level_m(cov, cfg.protection_risk, gap),
                       mode_mass=pose.mode_mass, view_distance_m=pose.view_distance_m,
                       imagery_support=support, imagery_score=self.imagery.window.score())

        heading = None
        if cfg.heading or (self.odometry is not None and self.matcher.heading_is_free):
            t = time.perf_counter()
            heading = self._heading(ground, pose)
            if cfg.heading and heading is not None:
                context.update(self._yaw(heading, lat, lon))
            times["heading_ms"] = time.perf_counter() - t

        try:
            track, vouched = self._gate(pose, f"tile {pose.tile_id}, score {pose.score:.4f}", stamp)
            if track is not None:
                cov = self._vouched_covariance(track, vouched, base, far, share, pose, lat, lon, context)
            overruled = False
            if d2 > cfg.max_mahalanobis:
                overruled = self._fix_overruled(pose, cov, lat, lon, stamp, from_fix_m, d2)
                if not overruled:
                    raise FrameRejected(Reason.MAHALANOBIS, f"estimate is {from_fix_m:.1f} m from the fix, squared "
                                                            f"Mahalanobis distance {d2:.1f} > max_mahalanobis "
                                                            f"{cfg.max_mahalanobis:g}")
        except FrameRejected as rej:
            if rej.reason is Reason.MAHALANOBIS:
                self.matcher.reset()  # a track whose best place the GNSS contradicts must not carry on
                self._published = self._agreed = self.imagery.anchor = None  # nor vouch for anything
            raise
        self._check_first_fix(stamp)
        cov_grid = geo.enu_cov_to_utm(cov, lat, lon, self.tiles.zone)
        motion = self.motion.refusal(self.odometry, stamp, pose.easting_m, pose.northing_m, cov_grid)
        if motion is not None:
            raise FrameRejected(Reason.MOTION, motion)
        self.motion.published(stamp, pose.easting_m, pose.northing_m, cov_grid)
        variance = float(np.linalg.eigvalsh(cov).max())  # per axis, the covariance's largest
        if self.odometry is not None and not vouched:  # a frame the track vouched for is no evidence of its alignment
            if heading is not None and heading.flip_mass <= cfg.yaw_max_flip_mass:
                # the view's own yaw votes (not the posterior's, which holds odometry's prior: no self-confirmation)
                evidence = (heading.yaw_grid_rad if heading.evidence_yaw_grid_rad is None
                            else heading.evidence_yaw_grid_rad)
                self.odometry.vote_bearing(stamp, evidence)
            # the published positions' course against odometry's
            self.odometry.vote_course(stamp, pose.easting_m, pose.northing_m, math.sqrt(variance), source="estimate")
        self._published = CarriedEstimate(stamp, pose.easting_m, pose.northing_m, variance)
        if overruled:
            self.fix_overruled += 1
        else:
            self._agreed = self._published
        self.imagery.published(self.odometry, stamp, pose.easting_m, pose.northing_m, variance, vouched)
        return self._finish(Estimate(stamp_s=stamp, accepted=True, reason=Reason.OK, **context,
                                     fix_overruled=bool(overruled), imagery_vouched=Reason.MISMATCH in vouched,
                                     ambiguity_vouched=Reason.AMBIGUOUS in vouched,
                                     latency=self._latency(times, t_start)))

    def _vouched_covariance(self, track: tuple[float, float, float], vouched: frozenset[Reason], base: np.ndarray,
                            far: np.ndarray, share: np.ndarray, pose: PoseMatch, lat: float, lon: float,
                            context: dict[str, Any]) -> np.ndarray:
        """The covariance of an estimate odometry vouched for: the imagery's (the posterior's, the others'
        mass out when the track said which place of an AMBIGUOUS posterior, no sharper than the carried
        anchor, plus the mismatch share), or the track's (ImageryGate.track_covariance, times the calibrated
        track_scale) where its largest
        variance is the smaller: both bound the same error, and the track's holds whether or not the tiles
        show this place. Both go in context, with the protection level on the one published."""
        imagery = self.imagery.no_sharper_than(base - far if Reason.AMBIGUOUS in vouched else base, track[2]) + share
        by_track = self.covariance.track_scale * geo.utm_cov_to_enu(
            self.imagery.track_covariance(track, pose.easting_m, pose.northing_m), lat, lon, self.tiles.zone)
        cov = by_track if np.linalg.eigvalsh(by_track).max() < np.linalg.eigvalsh(imagery).max() else imagery
        context.update(covariance_enu_m2=cov, track_covariance_enu_m2=by_track, imagery_covariance_enu_m2=imagery,
                       protection_level_m=self.covariance.protection_level_m(cov, self.config.protection_risk,
                                                                             context["motion_gap_m"]))
        return cov

    def _on_tiles_by_odometry(self, stamp: float) -> bool:
        """Whether the last published estimate, carried here by odometry (as a fix is, fix_max_age_odometry_s),
        lies on the tiles with 2 sigma to spare: then a fix whose uncertainty runs off the tiles near an edge
        is not taken for a platform beyond them (min_prior_inside)."""
        if self.odometry is None or self._published is None:
            return False
        carried = self._published.at(self.odometry, stamp, self.config.fix_max_age_odometry_s)
        return carried is not None and disc_on_tiles(self.tiles, carried[0], carried[1], 2.0 * math.sqrt(carried[2]))

    def _fix_overruled(self, pose: PoseMatch, cov_enu: np.ndarray, lat: float, lon: float, stamp: float,
                       from_fix_m: float, d2: float) -> bool:
        """Whether odometry vouches for an estimate the fix contradicts: it lies within max_mahalanobis of the
        last estimate the fix agreed with, carried here by odometry no more than fix_overrule_s later. A fix in
        a multipath excursion then costs nothing; one that is right still breaks a track that drifted, once
        fix_overrule_s has passed since the two last agreed."""
        cfg = self.config
        if self.odometry is None or self._agreed is None or not cfg.fix_overrule_s > 0:
            return False
        carried = self._agreed.at(self.odometry, stamp, cfg.fix_overrule_s)
        if carried is None:
            return False
        gap = np.array([pose.easting_m - carried[0], pose.northing_m - carried[1]])
        s = geo.enu_cov_to_utm(cov_enu, lat, lon, self.tiles.zone) + np.eye(2) * carried[2]
        d2_odometry = float(gap @ np.linalg.solve(s, gap))
        if not d2_odometry <= cfg.max_mahalanobis:
            return False
        self._throttle(logging.INFO, "overruled", "frame %.3f: the fix is %.1f m away (squared Mahalanobis %.1f), "
                       "but odometry carries the estimate of %.1f s ago to %.1f m of it (%.1f): published "
                       "(fix_overrule_s)", stamp, from_fix_m, d2, stamp - self._agreed.stamp_s, float(np.hypot(*gap)),
                       d2_odometry)
        return True

    def _check_panorama_height(self) -> float | None:
        """The panorama camera's height when its ground must be moved to the model's (None: nothing to do)."""
        height = self.config.camera_height_m
        if not height or not self.matcher.partial_views:  # retrieval reads it for its polar heading only
            return None
        return None if abs(height - self.matcher.camera_height_m) < 1e-6 else float(height)

    def camera_rig(self, cameras: Sequence[Camera]) -> CameraRig:
        """The rig of these cameras on this model's panorama (size and camera height from model.json):
        what a CameraFrame for localize() carries. CameraError when the model cannot take partial views."""
        if not self.matcher.partial_views:
            raise CameraError(f"model {self.meta.name} is a {self.matcher.kind} model: it needs a whole 360° "
                              "panorama; cameras that are not 360° need a bev model")
        return CameraRig(cameras, self.meta.ground.size_hw, self.matcher.camera_height_m)

    def _decode(self, frame: Any, encoding: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """A panorama, or a rig's images composed into one: (RGB, visibility or None when whole)."""
        max_pixels = self.config.max_panorama_pixels
        if not isinstance(frame, CameraFrame):
            try:
                rgb = decode_panorama(frame, encoding, max_pixels=max_pixels)
            except ValueError as exc:
                raise FrameRejected(Reason.BAD_IMAGE, str(exc)) from None
            if self._panorama_height_m is None:
                return rgb, None
            # at the model's input size first (as preprocess would resize it), then the rows move
            return reproject_panorama_height(fit_ground_input(self.meta, rgb), self._panorama_height_m,
                                             self.matcher.camera_height_m), None
        images = []
        for cam, image, enc in zip(frame.rig.cameras, frame.images, frame.encodings):
            try:
                images.append(decode_image(image, enc, max_pixels=max_pixels))
            except ValueError as exc:
                raise FrameRejected(Reason.BAD_IMAGE, f"camera {cam.name}: {exc}") from None
        if frame.rig.size_hw != self.meta.ground.size_hw:
            raise FrameRejected(Reason.BAD_CAMERA, f"the rig composes {frame.rig.size_hw} panoramas, the model takes "
                                                   f"{self.meta.ground.size_hw}; build it with Localizer.camera_rig")
        try:
            return frame.rig.compose(images), frame.rig.visibility
        except CameraError as exc:
            raise FrameRejected(Reason.BAD_CAMERA, str(exc)) from None

    def _gnss_prior(self, fix: Fix, fix_cov: np.ndarray, stamp: float, age_s: float) -> _GnssPrior:
        """Where the fix puts the platform at the panorama's stamp. A fix older than the panorama is carried
        by odometry's displacement since its stamp once the odom frame is aligned with the grid (a GNSS
        dropout costs odometry's drift, not max_speed_mps x its age); otherwise the fix stays where it was,
        widened by |age| x max_speed_mps."""
        lat, lon = float(fix.lat_deg), float(fix.lon_deg)
        widened = _GnssPrior(lat, lon, fix_cov + np.eye(2) * (age_s * self.config.max_speed_mps) ** 2, abs(age_s),
                             fix_cov)
        if self.odometry is None or not self.config.fix_max_age_odometry_s > 0.0:
            return widened
        try:
            e, n, _ = geo.latlon_to_utm(lat, lon, zone=self.tiles.zone)
            carried = self.odometry.carry(e, n, float(fix.stamp_s), stamp)
            if carried is None:
                return widened
            lat_now, lon_now = geo.utm_to_latlon(carried[0], carried[1], self.tiles.zone)
        except geo.GeoError:  # far outside the tile set's zone: _scope says so
            return widened
        cov = fix_cov + np.eye(2) * carried[2]
        return _GnssPrior(float(lat_now), float(lon_now), cov, 0.0, cov, carried=True)

    def _scope(self, fix: Fix, prior: _GnssPrior, stamp: float, context: dict[str, Any]) -> Scope:
        """The tiles within the search radius of the prior's centre, and the GNSS prior on the tile set's grid."""
        sigma_fix_m = float(math.sqrt(max(float(np.linalg.eigvalsh(prior.sigma_covariance_enu_m2).max()), 0.0)))
        radius_m = self.scope_radius_m(sigma_fix_m, prior.widen_age_s)
        context["scope_radius_m"] = radius_m
        lat, lon = prior.lat_deg, prior.lon_deg
        try:
            e_fix, n_fix, _ = geo.latlon_to_utm(lat, lon, zone=self.tiles.zone)
        except geo.GeoError:  # far outside the tile set's UTM zone
            raise FrameRejected(Reason.OUTSIDE_COVERAGE, self._coverage.outside_message(lat, lon, radius_m)) from None
        ids = self.tiles.tiles_within_utm(e_fix, n_fix, radius_m)
        if ids.size == 0:
            raise FrameRejected(Reason.OUTSIDE_COVERAGE, self._coverage.outside_message(lat, lon, radius_m))
        context["tiles_in_scope"] = int(ids.size)
        if self.odometry is not None and fix.stamp_s != self._course_fix_stamp_s:
            self._course_fix_stamp_s = fix.stamp_s  # one vote per fix, whatever the frame rate; where it was taken
            e_taken, n_taken, _ = geo.latlon_to_utm(float(fix.lat_deg), float(fix.lon_deg), zone=self.tiles.zone)
            self.odometry.vote_course(float(fix.stamp_s), float(e_taken), float(n_taken), sigma_fix_m)
        prior_grid = geo.enu_cov_to_utm(prior.covariance_enu_m2, lat, lon, self.tiles.zone)
        return Scope(ids, float(e_fix), float(n_fix), prior_grid, stamp, float(fix.stamp_s), self.odometry)

    def _heading(self, ground: Any, pose: PoseMatch) -> Heading | None:
        """The matcher's heading, or None when it has none for this frame. A heading that fails (a
        missing or corrupt tile image, a degenerate correlation) costs the yaw, never the position."""
        try:
            return self.matcher.heading(ground, pose)
        except (ValueError, TileSetError, OSError) as exc:
            self._throttle(logging.WARNING, "heading", "heading failed, estimate without yaw: %s", exc)
            return None

    def _yaw(self, h: Heading, lat: float, lon: float) -> dict[str, Any]:
        """yaw_enu_rad and its variances; nothing when a flipped bearing holds more than yaw_max_flip_mass
        (a small variance around one of two opposite bearings would be a confident lie)."""
        if h.flip_mass > self.config.yaw_max_flip_mass:
            self.yaw_withheld += 1
            return {}
        yaw = float(geo.yaw_utm_to_enu(h.yaw_grid_rad, lat, lon, self.tiles.zone))
        return {"yaw_enu_rad": yaw, "yaw_variance_raw_rad2": h.variance_raw_rad2,
                "yaw_variance_rad2": float(self.covariance.yaw_variance_rad2(h.variance_raw_rad2))}

    def _covariance_and_d2(self, prior: _GnssPrior, lat: float, lon: float, pose: PoseMatch,
                           offset_m: tuple[float, float], motion_gap_m: float | None
                           ) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, Any]]:
        """The 2x2 ENU covariance without the mismatch share, the far mass's part of it (_far_enu), d^2 to
        the GNSS prior, the distance from its centre (m), the mismatch fields.

        The calibrated model's (CovarianceModel), plus the posterior's mass beyond mode_radius_m (sum of
        p d d^T: a far look-alike widens it, as a mixture's covariance would). The published one adds
        P(mismatch) (the imagery gate's belief, updated with this frame's window) x the error's covariance
        were the tiles not this place (the prior's, plus the offset from it squared). d^2 leaves that share
        out: it asks whether the views contradict the fix."""
        sigma = self.covariance.sigma_m(pose.margin, pose.score, pose.spread_m, math.hypot(*offset_m),
                                        1.0 if pose.mode_mass is None else pose.mode_mass,
                                        0.0 if pose.view_distance_m is None else pose.view_distance_m,
                                        self.covariance.motion_m(motion_gap_m))
        far = self._far_enu(pose, lat, lon)
        cov = np.eye(2) * sigma * sigma + far
        de, dn = geo.offset_enu_m(prior.lat_deg, prior.lon_deg, lat, lon)
        innovation = np.array([de, dn])
        d2 = float(innovation @ np.linalg.solve(cov + prior.covariance_enu_m2, innovation))
        weight = self.imagery.mismatch
        apart = prior.covariance_enu_m2 + np.outer(innovation, innovation)
        return cov, far, d2, math.hypot(de, dn), {"imagery_mismatch": weight, "mismatch_covariance_enu_m2": apart}

    def _far_enu(self, pose: PoseMatch, lat: float, lon: float) -> np.ndarray:
        """(2, 2) ENU m^2: the posterior's second moment beyond mode_radius_m about the estimate; zeros when
        that mass is under protection_risk: a Gaussian cannot hold so slight a far mode without losing its
        core, and the protection level, fitted on the published errors, carries that risk."""
        far_mass = 1.0 - (1.0 if pose.mode_mass is None else pose.mode_mass)
        if pose.far_covariance_m2 is None or far_mass < self.config.protection_risk:
            return np.zeros((2, 2))
        return geo.utm_cov_to_enu(pose.far_covariance_m2, lat, lon, self.tiles.zone)

    def _gate(self, pose: PoseMatch, detail: str,
              stamp: float) -> tuple[tuple[float, float, float] | None, frozenset[Reason]]:
        """OUTSIDE_COVERAGE (the fix's uncertainty runs mostly off the tiles, and odometry does not carry the
        last published estimate onto them), MISMATCH (too few recent views point at their estimates, or they
        score below the imagery floor; unless odometry vouches: ImageryGate), AMBIGUOUS (the posterior
        holds distinct places), LOW_MARGIN; each keeps the estimate in the Estimate. MAHALANOBIS, against the
        GNSS prior, comes after them (_run), as odometry may overrule the fix. The carried anchor (east, north,
        variance per axis) when odometry vouched for a MISMATCH or AMBIGUOUS refusal (ImageryGate.vouches: the
        estimate is where the track is), else None; and the refusals it vouched for."""
        cfg = self.config
        margin = pose.margin
        if (pose.prior_inside is not None and not pose.prior_inside >= cfg.min_prior_inside
                and not self._on_tiles_by_odometry(stamp)):
            raise FrameRejected(Reason.OUTSIDE_COVERAGE, f"only {100 * pose.prior_inside:.0f} % of the fix's "
                                                         f"uncertainty lies on the tiles (min_prior_inside "
                                                         f"{cfg.min_prior_inside:g}): the platform may be beyond their "
                                                         f"coverage ({detail})")
        vouched: set[Reason] = set()
        track = None
        mismatch = self.imagery.refusal(detail)
        if mismatch is not None:
            track = self.imagery.vouches(self.odometry, pose.easting_m, pose.northing_m, stamp)
            if track is None:
                raise FrameRejected(Reason.MISMATCH, mismatch)
            vouched.add(Reason.MISMATCH)
        if pose.mode_mass is not None and not pose.mode_mass >= cfg.min_mode_mass:
            if track is None:  # not yet asked (a MISMATCH refusal it vouched for already carried the anchor)
                track = self.imagery.vouches(self.odometry, pose.easting_m, pose.northing_m, stamp)
            if track is None:
                raise FrameRejected(Reason.AMBIGUOUS, f"only {100 * pose.mode_mass:.0f} % of the posterior lies within "
                                                      f"mode_radius_m {cfg.mode_radius_m:g} m of the estimate "
                                                      f"(min_mode_mass {cfg.min_mode_mass:g}; {detail})")
            vouched.add(Reason.AMBIGUOUS)
        if not margin > cfg.min_margin:
            raise FrameRejected(Reason.LOW_MARGIN, f"margin {margin:.4f} is not above min_margin {cfg.min_margin:g} "
                                                   f"({detail})")
        return track, frozenset(vouched)

    def _check_first_fix(self, stamp: float) -> None:
        """MAHALANOBIS for a stream's first fix (none published in the last imagery_track_s, so nothing for
        odometry to carry) whose recent views disagree with their fixes on average: a look-alike a street away
        can pass max_mahalanobis frame by frame while the views lean on it. The matcher keeps its track."""
        cfg = self.config
        limit = cfg.first_fix_mahalanobis_share * cfg.max_mahalanobis
        recent = self._published is not None and stamp - self._published.stamp_s <= cfg.imagery_track_s
        mean_d2 = self.imagery.window.mean_fix_d2()
        if limit > 0 and not recent and mean_d2 is not None and mean_d2 > limit:
            views = len(self.imagery.window.fix_d2)
            raise FrameRejected(Reason.MAHALANOBIS, f"first fix (none published in the last imagery_track_s "
                                                    f"{cfg.imagery_track_s:g} s): the last {views} views' mean "
                                                    f"squared Mahalanobis distance to their fixes {mean_d2:.1f} > "
                                                    f"{limit:.1f} (first_fix_mahalanobis_share "
                                                    f"{cfg.first_fix_mahalanobis_share:g} x max_mahalanobis "
                                                    f"{cfg.max_mahalanobis:g})")

    def _check_fix(self, fix: Any, now_s: float) -> np.ndarray:
        return check_fix(fix, now_s, max_future_s=self.config.max_future_s,
                         default_fix_sigma_m=self.config.default_fix_sigma_m)

    def fix_problem(self, fix: Any, now_s: float) -> tuple[Reason, str] | None:
        """(reason, message) when this fix would make a frame fail (NO_FIX, BAD_FIX, FUTURE_STAMP), None
        when the localizer would use it: the node takes its datum only from a fix that passes."""
        try:
            self._check_fix(fix, now_s)
        except FrameRejected as rej:
            return rej.reason, rej.message
        return None

    @staticmethod
    def _latency(times: dict[str, float], t_start: float) -> Latency:
        return Latency(**{k: 1000.0 * v for k, v in times.items()},
                       total_ms=1000.0 * (time.perf_counter() - t_start))

    def _finish(self, estimate: Estimate) -> Estimate:
        self.counts[estimate.reason] += 1
        if estimate.reason in BAD_INPUT_REASONS:
            self._throttle(logging.WARNING, str(estimate.reason), "frame %.3f rejected, %s: %s", estimate.stamp_s,
                           estimate.reason, estimate.message)
        elif estimate.reason in GATE_REASONS:
            self._throttle(logging.INFO, str(estimate.reason), "frame %.3f gated, %s: %s", estimate.stamp_s,
                           estimate.reason, estimate.message)
        return estimate
