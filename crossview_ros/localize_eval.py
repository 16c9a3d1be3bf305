"""Evaluate (and calibrate) the localizer on frames whose truth is known.

The steps behind crossview-localize's batch modes, callable without argv: localizers over one or
more tile sets sharing one engine (make_localizers), a batch localized as independent panoramas
or as the streams of drive bags (evaluate, evaluate_bags), and --calibrate's two fits: the fixes'
sigma scale before localizing (it shapes the scope, the prior and the gate) and the covariance
model after, saved as covariance.json beside the model. run_calibration is the one call that the
demo and `crossview-localize --bag ... --calibrate` share. Bags are read through a topic mapping
(crossview_ros.bag.topics); one without truth is evaluated by what needs none, never calibrated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from crossview_ros.bag.captures import CameraImages
from crossview_ros.bag.topics import TopicMap
from crossview_ros import geo
from crossview_ros.camera import CameraError, CameraFrame, CameraRig
from crossview_ros.covariance import (
    CHI2_2DOF_95, IMAGERY_LIKELIHOODS, CovarianceModel, calibrate, fit_fix_sigma_scale, load_covariance,
    save_covariance,
)
from crossview_ros.engines import create_engine
from crossview_ros.estimate import Estimate, Fix, Reason
from crossview_ros.imagery_floor import fit_imagery_floor
from crossview_ros.localize_frames import Frame, LocalizeInputError, bag_frames, read_panorama
from crossview_ros.localize_summary import print_calibration, print_fix_sigma_scale, print_summary, summarize
from crossview_ros.localizer import Localizer
from crossview_ros.localizer_config import LocalizerConfig, engine_options

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """A localized batch: the frames, their fixes and estimates, the summary and what --calibrate fitted."""

    localizers: dict[Any, Localizer]  # by Frame.city
    frames: list[Frame]
    fixes: list[Fix]
    estimates: list[Estimate]
    summary: dict[str, Any]
    fix_sigma_scale: float | None = None  # --calibrate: fitted before localizing
    calibration: dict[str, Any] | None = None  # --calibrate: {"path", "params", "fit"} of covariance.json

    @property
    def localizer(self) -> Localizer:
        """Any of the localizers (they share the model and the engine)."""
        return next(iter(self.localizers.values()))


def make_config(values: Mapping[str, Any]) -> LocalizerConfig:
    """LocalizerConfig from settings (LocalizeInputError naming a bad one)."""
    try:
        return LocalizerConfig.from_dict(dict(values))
    except (TypeError, ValueError) as exc:
        raise LocalizeInputError(str(exc)) from None


def make_localizers(configs: Mapping[Hashable, LocalizerConfig]) -> dict[Any, Localizer]:
    """One Localizer per distinct config (streams of one tile set and settings share it, reset between them),
    all sharing one engine (the first config's model and engine settings). A walk and a drive in one city
    differ (camera height, track speed): each must be localized with its own."""
    first = next(iter(configs.values()))
    if not str(first.tile_set):
        raise LocalizeInputError("--tiles DIR is required (a tile set encoded with --model)")
    if not str(first.model):
        raise LocalizeInputError("--model DIR is required (the exported model that encoded the tile set)")
    engine = create_engine(first.model, first.engine, **engine_options(first))
    made: dict[str, Localizer] = {}
    out: dict[Any, Localizer] = {}
    try:
        for key, config in configs.items():
            same = repr(sorted(config.to_dict().items()))
            if same not in made:
                made[same] = Localizer(config, engine=engine)
            out[key] = made[same]
    except BaseException:
        engine.close()
        raise
    return out


def fit_fix_scale(localizers: Mapping[Any, Localizer], frames: Sequence[Frame], fixes: Sequence[Fix]) -> float:
    """How honest the fixes' covariance is; set on every localizer's covariance model and returned."""
    any_loc = next(iter(localizers.values()))
    try:
        scale = fit_fix_sigma_scale(list(fixes), [fr.truth for fr in frames],
                                    default_sigma_m=any_loc.config.default_fix_sigma_m)
    except ValueError as exc:
        raise LocalizeInputError(f"--calibrate: {exc}") from None
    for loc in localizers.values():
        loc.covariance = dataclasses.replace(loc.covariance, fix_sigma_scale=scale)
    return scale


def localize_independent(localizers: Mapping[Any, Localizer], frames: Sequence[Frame],
                         fixes: Sequence[Fix]) -> list[Estimate]:
    """Each frame on its own (a reset before each, the fix stamped now), read from its path."""
    estimates = []
    for fr, fix in zip(frames, fixes):
        data = read_panorama(fr.path)
        loc = localizers[fr.city]
        loc.reset()  # independent panoramas, not a stream
        now = time.time()
        estimates.append(loc.localize(data, dataclasses.replace(fix, stamp_s=now), now, now_s=now))
    return estimates


def camera_frame(localizer: Localizer, images: CameraImages, rigs: dict[Any, CameraRig]) -> CameraFrame:
    """A bag's capture as the Localizer takes it; the rig is built once per localizer and set of cameras
    (it changes only with a CameraInfo) and kept in `rigs`. LocalizeInputError for a model that cannot
    take cameras that are not 360°."""
    key = (id(localizer), images.cameras)
    if key not in rigs:
        try:
            rigs[key] = localizer.camera_rig(images.cameras)
        except CameraError as exc:
            raise LocalizeInputError(f"--cameras: {exc}") from None
    return CameraFrame(rigs[key], images.images, images.encodings)


def localize_streams(localizers: Mapping[Any, Localizer], frames: Sequence[Frame],
                     fixes: Sequence[Fix]) -> list[Estimate]:
    """Frames as the streams they were recorded in (stamps, fixes and gating as in the node); a reset
    where the stream (Frame.city) changes. A rig's captures (CameraImages) go in as CameraFrames."""
    estimates = []
    rigs: dict[Any, CameraRig] = {}
    for k, (fr, fix) in enumerate(zip(frames, fixes)):
        loc = localizers[fr.city]
        if k == 0 or frames[k - 1].city != fr.city:
            loc.reset()  # another walk: another stream
            if loc.odometry is not None:
                loc.odometry.buffer.clear()  # and another odometry
        for row in (fr.odometry if fr.odometry is not None else ()):
            loc.add_odometry(float(row[0]), float(row[1]), float(row[2]), float(row[3]), row[4:])
        data = camera_frame(loc, fr.data, rigs) if isinstance(fr.data, CameraImages) else fr.data
        estimates.append(loc.localize(data, fix, fr.stamp_s, encoding=fr.encoding, now_s=fr.stamp_s))
    return estimates


BACKGROUND_OFFSET_M = 250.0  # the calibration walks' fixes moved this far to see another place's imagery
MIN_REFIT_SAMPLES = 20  # published frames under the fitted covariance, below which its scale is not fitted again
REFIT_PASSES = 3  # most localizations of the calibration streams under a fitted covariance (refit_on_published)
REFIT_TOLERANCE = 0.01  # a published d^2 share this close to the fit's quantile ends the refit
_DIRECTIONS = [(math.sin(a), math.cos(a)) for a in np.radians(np.arange(0.0, 360.0, 45.0))]


def background_fixes(localizers: Mapping[Any, Localizer], frames: Sequence[Frame], fixes: Sequence[Fix],
                     offset_m: float = BACKGROUND_OFFSET_M) -> list[Fix]:
    """Each stream's fixes moved offset_m in the one of 8 directions that keeps most of its true positions on
    its tiles: localized with them, the views meet imagery of another place (the MISMATCH floor's background)."""
    moved = list(fixes)
    streams: dict[Any, list[int]] = {}
    for k, fr in enumerate(frames):
        streams.setdefault(fr.city, []).append(k)
    def on_tiles(tiles: Any, k: int, d: tuple[float, float]) -> bool:
        t = frames[k].truth
        lat, lon, _ = geo.LocalENU(t.lat_deg, t.lon_deg).inverse(offset_m * d[0], offset_m * d[1])
        return bool(tiles.tiles_covering(lat, lon))

    for city, ks in streams.items():
        tiles = localizers[city].tiles
        best = max(_DIRECTIONS, key=lambda d: sum(on_tiles(tiles, k, d) for k in ks[::5]))
        for k in ks:
            f = fixes[k]
            lat, lon, _ = geo.LocalENU(f.lat_deg, f.lon_deg).inverse(offset_m * best[0], offset_m * best[1])
            moved[k] = dataclasses.replace(f, lat_deg=float(lat), lon_deg=float(lon))
    return moved


def gate_scores(localizer: Localizer, estimates: Sequence[Estimate], trusted: float = np.nan) -> np.ndarray:
    """The imagery floor's statistic of each frame as the gate read it (Estimate.imagery_score; NaN: not
    matched); `trusted` where the gate does not judge it (ImageryGate.trusted); frames that ran off
    the tiles (OUTSIDE_COVERAGE) are left out, as their scores are of padding."""
    out = np.full(len(estimates), np.nan)
    for k, est in enumerate(estimates):
        if est.imagery_score is not None and est.reason is not Reason.OUTSIDE_COVERAGE:
            out[k] = trusted if localizer.imagery.trusted(est.imagery_support) else est.imagery_score
    return out


def published_under_floor(scores: np.ndarray, floor: float) -> np.ndarray:
    """Whether each frame passes the imagery floor (its gate score, +inf where the gate does not judge it);
    floor 0: the gate is off and every frame passes. Calibration scales the covariance on these: the
    hardest frames, which the floor withholds, would make every published sigma too cautious."""
    scores = np.asarray(scores, np.float64)
    return np.ones(len(scores), bool) if not floor > 0 else ~(scores < floor)


def window_supports(estimates: Sequence[Estimate]) -> np.ndarray:
    """Each matched frame's imagery support (NaN: none, or it ran off the tiles), for the mismatch likelihoods."""
    return np.array([est.imagery_support if est.imagery_support is not None
                     and est.reason is not Reason.OUTSIDE_COVERAGE else np.nan for est in estimates], np.float64)


def calibrate_covariance(localizer: Localizer, frames: Sequence[Frame], estimates: Sequence[Estimate],
                         background: Sequence[Estimate] | None = None) -> dict[str, Any]:
    """Fit the covariance model on the batch and save covariance.json beside the model; with `background`
    (the same streams localized by background_fixes) the MISMATCH gate's imagery floor too."""
    floor, floor_fit, published = None, {}, None
    if background is not None:
        own = gate_scores(localizer, estimates, np.inf)
        floor, floor_fit = fit_imagery_floor(gate_scores(localizer, background), own,
                                             background_support=window_supports(background),
                                             own_support=window_supports(estimates))
        published = published_under_floor(own, floor)
    try:
        model = calibrate(list(estimates), [fr.truth for fr in frames], start=localizer.covariance,
                          protection_risk=localizer.config.protection_risk, imagery_score_floor=floor,
                          imagery_statistic=localizer.imagery_statistic, published=published,
                          imagery_likelihoods={g: floor_fit[g] for g in IMAGERY_LIKELIHOODS if g in floor_fit})
    except ValueError as exc:
        raise LocalizeInputError(f"--calibrate: {exc}") from None
    model.fit.update(floor_fit)
    return _saved(model, localizer)


def _saved(model: CovarianceModel, localizer: Localizer) -> dict[str, Any]:
    """The fitted model written as covariance.json beside the localizer's model; what --calibrate reports."""
    path = save_covariance(model, localizer.meta.path, localizer.meta.model_hash)
    return {"path": str(path), "params": model.to_dict(), "fit": dict(model.fit)}


def refit_on_published(localizers: Mapping[Any, Localizer], frames: Sequence[Frame], fixes: Sequence[Fix],
                       calibration: dict[str, Any]) -> dict[str, Any]:
    """The calibration streams localized again under the fitted covariance, as the node runs them; the
    scale, the protection level and the yaw variance fitted again on the frames that pass publishes,
    the shape kept. The first fit could only guess which frames the node publishes (the uncalibrated pass,
    less the imagery floor): the fitted sigma moves the MAHALANOBIS gate and its resets, and odometry vouches
    for views the floor refuses. A refit moves them again, and the covariance a vouched frame is published
    with (the anchor's variance plus its offset squared) has its own scale (track_scale), so the refit repeats, each
    pass on the frames the last fit publishes, until the share of their d^2 under 5.99, as published, lies
    within REFIT_TOLERANCE (or one frame's share) of the fit's quantile, for at most REFIT_PASSES passes; the
    fit whose published share came closest is kept. The first fit is kept when its pass publishes fewer than
    MIN_REFIT_SAMPLES."""
    first = load_covariance(calibration["path"])
    target = float(first.fit.get("quantile", 0.95))
    any_loc = next(iter(localizers.values()))
    current, path, measured = first, calibration["path"], []  # (|share - target|, pass, model, share, published)
    for k in range(REFIT_PASSES):
        estimates, config = _localize_under(localizers, frames, fixes, path)
        published = [e.accepted for e in estimates]
        share = published_d2_share(estimates, frames)
        usable = math.isfinite(share) and (k == 0 or sum(published) >= MIN_REFIT_SAMPLES)
        measured.append((abs(share - target) if usable else math.inf, k, current, share, sum(published)))
        near = abs(share - target) <= max(REFIT_TOLERANCE, 1.0 / max(sum(published), 1))  # a share resolves 1 / n
        if sum(published) < MIN_REFIT_SAMPLES or near or k == REFIT_PASSES - 1:
            if k == 0 and sum(published) < MIN_REFIT_SAMPLES:
                log.warning("calibration: only %d frames published under the fitted covariance (fewer than %d): "
                            "its scale is kept as fitted on the uncalibrated pass", sum(published), MIN_REFIT_SAMPLES)
            break
        try:
            refit = calibrate(estimates, [fr.truth for fr in frames], start=current, fit_shape=False,
                              protection_risk=config.protection_risk, published=published)
        except ValueError as exc:
            raise LocalizeInputError(f"--calibrate: {exc}") from None
        refit.fit.update({key: v for key, v in first.fit.items() if key.startswith("imagery_")})
        current, path = refit, _saved(refit, any_loc)["path"]
    _, passes, kept, share, count = min(measured, key=lambda m: (m[0], -m[1]))
    log.info("calibration: %d of its streams' frames published under the kept fit (pass %d of %d), %.1f %% of their "
             "d^2 < 5.99 as published (the first fit: %.1f %%)", count, passes + 1, len(measured), 100.0 * share,
             100.0 * measured[0][3])
    kept.fit.update(refit_published=int(count), refit_sigma_ratio=kept.sigma0_m / first.sigma0_m,
                    first_fit_share_d2_below_chi2=measured[0][3], published_share_d2_below_chi2=share,
                    refit_passes=len(measured))
    return _saved(kept, any_loc)


def _localize_under(localizers: Mapping[Any, Localizer], frames: Sequence[Frame], fixes: Sequence[Fix],
                    path: str) -> tuple[list[Estimate], LocalizerConfig]:
    """The streams localized by fresh localizers that load the covariance at path (the engine closed after)."""
    again = make_localizers({key: dataclasses.replace(loc.config, covariance_file=path)
                             for key, loc in localizers.items()})
    any_loc = next(iter(again.values()))
    try:
        return localize_streams(again, frames, fixes), any_loc.config
    finally:
        any_loc.engine.close()


def published_d2_share(estimates: Sequence[Estimate], frames: Sequence[Frame]) -> float:
    """The share of published estimates whose d^2 to the truth, under their published covariance, lies under
    the chi-square 2-dof 95 % quantile."""
    d2 = []
    for est, fr in zip(estimates, frames):
        if not est.accepted or est.covariance_enu_m2 is None:
            continue
        delta = np.array(geo.offset_enu_m(fr.truth.lat_deg, fr.truth.lon_deg, est.lat_deg, est.lon_deg))
        d2.append(float(delta @ np.linalg.solve(np.asarray(est.covariance_enu_m2)[:2, :2], delta)))
    return float(np.mean(np.array(d2) <= CHI2_2DOF_95)) if d2 else float("nan")


def evaluate(localizers: Mapping[Any, Localizer], frames: list[Frame], fixes: list[Fix], *, stream: bool,
             calibrate: bool = False) -> Evaluation:
    """Localize the batch (as streams or independent panoramas), summarize it, and with `calibrate`
    fit the fixes' sigma scale first and the covariance model last. Closes the shared engine."""
    any_loc = next(iter(localizers.values()))
    if calibrate and any(fr.truth is None for fr in frames):
        any_loc.engine.close()
        raise LocalizeInputError("--calibrate needs the truth: the bag has no truth topic; map one with --truth-topic "
                                 "(an RTK NavSatFix, or a pose with --truth-frame; docs/recordings.md)")
    scale = None
    try:
        if calibrate:
            groups = len({fr.city for fr in frames})
            log.info("calibration on %d %s, %d frames: the fixes' sigma scale, then each frame localized, then the "
                     "covariance model", groups, ("walk" if stream else "city") if groups == 1 else
                     ("walks" if stream else "cities"), len(frames))
            scale = fit_fix_scale(localizers, frames, fixes)
            log.info("calibration: fix sigma scale %.3f (the receiver's reported sigma x this is its real one)", scale)
        estimates = (localize_streams if stream else localize_independent)(localizers, frames, fixes)
        background = None
        if calibrate and stream:
            log.info("calibration: the walks again with their fixes moved %.0f m, for the imagery floor (MISMATCH)",
                     BACKGROUND_OFFSET_M)
            background = localize_streams(localizers, frames, background_fixes(localizers, frames, fixes))
    finally:
        any_loc.engine.close()
    summary = summarize(estimates, frames, fixes, any_loc.config.heading)
    calibration = calibrate_covariance(any_loc, frames, estimates, background) if calibrate else None
    if calibration is not None and stream:
        calibration = refit_on_published(localizers, frames, fixes, calibration)
    if calibration is not None:
        log_calibration(calibration)
    return Evaluation(dict(localizers), frames, fixes, estimates, summary, scale, calibration)


def log_calibration(calibration: Mapping[str, Any]) -> None:
    """One log line of what the covariance fit found, so that a calibration run is never silent."""
    fit, params = calibration["fit"], calibration["params"]
    yaw = (f"yaw variance {params['yaw_variance_scale']:.3g} x raw^{params['yaw_variance_power']:.2f} "
           f"on {fit['yaw_samples']} headings" if fit.get("yaw_samples") else "no heading to fit the yaw variance on")
    log.info("calibration: position sigma0 %.2f m on %d estimates (median error %.2f m, median sigma %.2f m, "
             "%.1f %% of d^2 < %.2f), protection level %.2f sigma, %s; wrote %s", params["sigma0_m"], fit["samples"],
             fit["median_error_m"], fit["median_sigma_m"], 100.0 * fit["share_d2_below_chi2"],
             fit["chi2_2dof_quantile"], fit["protection_scale"], yaw, calibration["path"])
    if fit.get("imagery_own_windows"):
        log.info("calibration: imagery floor %.3f (MISMATCH below it): %.1f %% of windows on another place's imagery "
                 "pass it, %.1f %% of the walks' own are withheld (median score %.3f own, %.3f elsewhere)",
                 fit["imagery_score_floor"], 100.0 * (1.0 - fit["imagery_floor_quantile"]),
                 100.0 * fit["imagery_own_withheld_share"], fit["imagery_own_median"], fit["imagery_background_median"])
        log.info("calibration: imagery statistic %.3f +- %.3f own, %.3f +- %.3f elsewhere; windows supported %.0f %% "
                 "own, %.0f %% elsewhere (the imagery mismatch belief weighs each window by these)",
                 fit["imagery_own_mean"], fit["imagery_own_std"], fit["imagery_background_mean"],
                 fit["imagery_background_std"], 100.0 * fit["imagery_own_supported"],
                 100.0 * fit["imagery_background_supported"])
    elif "imagery_background_windows" in fit:
        log.info("calibration: no imagery floor (only %d windows on another place's imagery); the MISMATCH gate "
                 "keeps to min_imagery_support", fit["imagery_background_windows"])


def evaluate_bags(bags: Sequence[Path], configs: Sequence[LocalizerConfig], *, limit: int = 0,
                  calibrate: bool = False, topics: TopicMap | None = None, move_fixes_m: float = 0.0) -> Evaluation:
    """Bags frame by frame, each its own stream localized with its config (one per bag), pooled in one
    summary (and one calibration); topics: how to read them (default the simulator's topics). move_fixes_m > 0:
    every fix moved that far (background_fixes), a receiver fault whose reported sigma hides it."""
    frames, fixes = [], []
    for i, bag in enumerate(bags):
        bag_frames_i, bag_fixes = bag_frames(Path(bag), limit, topics)
        frames += [dataclasses.replace(fr, city=str(i)) for fr in bag_frames_i]
        fixes += bag_fixes
    localizers = make_localizers({str(i): config for i, config in enumerate(configs)})
    if move_fixes_m > 0:
        fixes = background_fixes(localizers, frames, fixes, move_fixes_m)
    return evaluate(localizers, frames, fixes, stream=True, calibrate=calibrate)


def print_report(evaluation: Evaluation, file: TextIO | None = None) -> None:
    """The text report of a batch: the fitted fix sigma scale, the summary, the calibration."""
    if evaluation.fix_sigma_scale is not None:
        print_fix_sigma_scale(evaluation.fix_sigma_scale, file)
    print_summary(evaluation.summary, file)
    if evaluation.calibration:
        print_calibration(evaluation.calibration, file)


def run_calibration(model: Path, tiles: Path, bags: Sequence[Path], *, report: TextIO | None = None,
                    heading: bool = True, settings: Mapping[str, Any] | None = None,
                    topics: TopicMap | None = None) -> Path:
    """Calibrate the model's covariance on drive bags pooled, each a stream in `tiles` (`crossview-localize
    --model M --tiles T --bag B1 --bag B2 ... --calibrate [--heading] [--set K=V ...]`); returns the covariance.json
    written beside the model.

    settings: more LocalizerConfig keys (the --set values); report: where the text report goes (None: nowhere);
    topics: the bag's topic mapping (--topics, --truth-topic ...; default the simulator's topics).
    """
    values = {**(settings or {}), "tile_set": str(tiles), "model": str(model)}
    if heading:
        values["heading"] = True
    evaluation = evaluate_bags(list(bags), [make_config(values)] * len(bags), calibrate=True, topics=topics)
    if report is not None:
        print_report(evaluation, report)
    return Path(evaluation.calibration["path"])
