"""Tests for the heading estimators (crossview_ros.heading).

The synthetic scenes are written here from the documented conventions alone: an aerial map
north-up with row 0 north and cell (i, j) centred at east = ((j + 0.5)/w - 0.5) L, north =
(0.5 - (i + 0.5)/h) L from the tile centre; a ground map whose column c looks along bearing
theta + (c + 0.5)/W * 360 deg (clockwise from north) for a camera facing bearing theta; a
full-panorama row r at elevation 90 - (r + 0.5)/H * 180 deg. Every expected heading is the
theta the scene was built with. The last test runs both estimators on rendered city views.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from crossview_ros import geo
from crossview_ros.heading import (
    HeadingEstimate,
    activation_map,
    heading_from_curve,
    polar_correlation_heading,
    revisiting_heading,
)

TILE_M = 64.0  # tile side L
TILE_PX = 64  # aerial cells per side (1 m cells)
CAMERA_OFFSET_M = (10.0, -12.0)  # (dE, dN) of the camera from the tile centre
LANDMARK_BEARINGS_DEG = (20.0, 75.0, 140.0, 230.0, 290.0, 330.0)  # irregular: no symmetry
LANDMARK_DIST_M = 15.0
LANDMARK_SIGMA_M = 3.0
GROUND_W = 72  # 5 deg per ground column
GROUND_H = 8


def ang_err_deg(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def cell_centres_en(size_px: int = TILE_PX, tile_m: float = TILE_M) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) east and north of the aerial cell centres from the tile centre, metres."""
    east = ((np.arange(size_px) + 0.5) / size_px - 0.5) * tile_m
    north = (0.5 - (np.arange(size_px) + 0.5) / size_px) * tile_m
    return np.meshgrid(east, north)


def aerial_landmarks(
    bearings_deg=LANDMARK_BEARINGS_DEG, dist_m=LANDMARK_DIST_M, camera_en=CAMERA_OFFSET_M, channels=None
) -> np.ndarray:
    """(C, 64, 64): channel k holds a Gaussian blob dist_m from the camera along bearings_deg[k]
    (channels[k] instead of k when given, so that one channel can hold several blobs)."""
    east, north = cell_centres_en()
    channels = list(range(len(bearings_deg))) if channels is None else list(channels)
    out = np.zeros((max(channels) + 1, TILE_PX, TILE_PX))
    for ch, b in zip(channels, bearings_deg):
        ce = camera_en[0] + dist_m * math.sin(math.radians(b))
        cn = camera_en[1] + dist_m * math.cos(math.radians(b))
        out[ch] += np.exp(-((east - ce) ** 2 + (north - cn) ** 2) / (2 * LANDMARK_SIGMA_M**2))
    return out


def ground_landmarks(theta_deg: float, bearings_deg=LANDMARK_BEARINGS_DEG, channels=None, width=GROUND_W) -> np.ndarray:
    """(C, 8, width): what a camera facing theta_deg sees: channel k bright in the columns that
    look along bearings_deg[k] (a von Mises bump over azimuth, the same in every row)."""
    bearing = theta_deg + (np.arange(width) + 0.5) / width * 360.0
    channels = list(range(len(bearings_deg))) if channels is None else list(channels)
    out = np.zeros((max(channels) + 1, width))
    for ch, b in zip(channels, bearings_deg):
        out[ch] += np.exp(8.0 * (np.cos(np.radians(bearing - b)) - 1.0))
    return np.repeat(out[:, None, :], GROUND_H, axis=1)


def polar(ground, aerial, offset_m=CAMERA_OFFSET_M, **kw) -> HeadingEstimate:
    return polar_correlation_heading(ground, aerial, offset_m=offset_m, tile_size_m=TILE_M, **kw)


def revisiting(ground, aerial, offset_m=CAMERA_OFFSET_M, **kw) -> HeadingEstimate:
    return revisiting_heading(ground, aerial, offset_m=offset_m, tile_size_m=TILE_M, **kw)


# ----------------------------------------------------------------------------------- curve reading


@pytest.mark.parametrize(
    "peak_bin, bearing_deg, yaw_rad",
    [(0, 0.0, math.pi / 2), (2, 90.0, 0.0), (4, 180.0, -math.pi / 2), (6, 270.0, math.pi), (1, 45.0, math.pi / 4)],
)
def test_bearing_to_enu_yaw_hand_cases(peak_bin, bearing_deg, yaw_rad):
    """curve[s] scores bearing s * 360/n; ENU yaw = 90 deg - bearing, wrapped to (-pi, pi]."""
    curve = np.zeros(8)
    curve[peak_bin] = 1.0
    est = heading_from_curve(curve)
    assert est.bearing_deg == pytest.approx(bearing_deg, abs=1e-12)
    assert est.yaw_enu_rad == pytest.approx(yaw_rad, abs=1e-12)
    assert -math.pi < est.yaw_enu_rad <= math.pi


def test_parabolic_refinement_peak_ratio_and_flip_score_numbers():
    n = 72  # 5 deg bins
    curve = np.zeros(n)
    curve[[9, 10, 11]] = [0.5, 1.0, 0.0]
    curve[40] = 0.4  # rival peak
    curve[46] = 0.3  # the bin opposite the peak
    est = heading_from_curve(curve)
    # Parabola through (-1, 0.5), (0, 1), (1, 0): y = -0.75 x^2 - 0.25 x + 1, vertex x = -1/6.
    assert est.bearing_deg == pytest.approx((10 - 1 / 6) * 5.0, abs=1e-9)
    assert est.peak_score == pytest.approx(1.0 + 0.25**2 / (4 * 0.75), abs=1e-9)
    assert est.peak_ratio == pytest.approx(1.0 / 0.4, abs=1e-9)  # min is 0
    # Opposite of bin 9 5/6 is bin 45 5/6: 5/6 of the way from bin 45 (0) to bin 46 (0.3).
    assert est.flip_score == pytest.approx(0.3 * 5 / 6, abs=1e-9)
    assert est.bin_deg == 5.0
    assert heading_from_curve(curve, refine=False).bearing_deg == 50.0


def test_variance_of_sharp_flat_and_two_peaked_curves():
    n = 72
    bin_rad = math.radians(5.0)
    spike = np.zeros(n)
    spike[30] = 1.0
    sharp = heading_from_curve(spike)
    flat = heading_from_curve(np.full(n, 0.3))
    twin = np.zeros(n)
    twin[[30, 66]] = 1.0
    two = heading_from_curve(twin)
    # A lone spike leaves only the bin's own quantisation (uniform within +-half a bin).
    assert sharp.variance_rad2 == pytest.approx(bin_rad**2 / 12, rel=0.01)
    # A flat curve: the uniform circle's pi^2/3 (plus bin-size terms of order bin^2).
    assert flat.variance_rad2 == pytest.approx(math.pi**2 / 3, abs=0.01)
    assert flat.peak_ratio == 1.0
    # Two equal peaks 180 deg apart: half the mass pi away.
    assert two.variance_rad2 == pytest.approx(math.pi**2 / 2, abs=0.02)
    assert two.flip_score == pytest.approx(two.peak_score)
    assert math.isinf(sharp.peak_ratio)  # no rival local maximum


def test_activation_map_weights_are_grad_cam_of_a_gap_inner_product():
    """Grad-CAM weight of channel c = mean over pixels of d<GAP(Ag), GAP(Aa)>/dAg[c]; measured
    here by finite differences and compared with the forward-only weights (Aa's channel means)."""
    rng = np.random.default_rng(1)
    ground = rng.normal(size=(5, 3, 6))
    aerial = rng.normal(size=(5, 4, 4))

    def sim(g):
        return float(g.mean(axis=(1, 2)) @ aerial.mean(axis=(1, 2)))

    eps = 1e-6
    grad = np.zeros_like(ground)
    for idx in np.ndindex(ground.shape):
        bumped = ground.copy()
        bumped[idx] += eps
        grad[idx] = (sim(bumped) - sim(ground)) / eps
    alpha = grad.mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(alpha, ground, axes=1), 0)
    expected = cam / cam.max()
    np.testing.assert_allclose(activation_map(ground, aerial.mean(axis=(1, 2))), expected, atol=1e-6)


# ----------------------------------------------------------------------------------- synthetic scenes


@pytest.mark.parametrize("theta_deg", [0.0, 0.3, 7.0, 123.4, 200.0, 355.5, 359.9])
def test_both_estimators_recover_the_heading(theta_deg):
    aerial = aerial_landmarks()
    ground = ground_landmarks(theta_deg)
    est = polar(ground, aerial)
    assert ang_err_deg(est.bearing_deg, theta_deg) < 0.25 * 5.0  # sub-bin refinement
    assert 0.0 <= est.bearing_deg < 360.0
    assert est.yaw_enu_rad == pytest.approx(geo.yaw_enu_from_bearing_deg(est.bearing_deg), abs=1e-12)
    assert est.peak_score > 0.8  # mean cosine of the columns at the right shift
    base = revisiting(ground, aerial)
    assert ang_err_deg(base.bearing_deg, theta_deg) <= 5.0  # within one bin: no refinement


@pytest.mark.parametrize("theta_deg", [2.0, 181.7, 358.6])
def test_polar_with_more_bins_than_ground_columns(theta_deg):
    est = polar(ground_landmarks(theta_deg), aerial_landmarks(), n_bins=2 * GROUND_W)
    assert len(est.curve) == 2 * GROUND_W
    assert ang_err_deg(est.bearing_deg, theta_deg) < 0.25 * 2.5


def test_zero_bearing_faces_north_and_ninety_faces_east():
    aerial = aerial_landmarks()
    north = polar(ground_landmarks(0.0), aerial)
    east = polar(ground_landmarks(90.0), aerial)
    assert north.yaw_enu_rad == pytest.approx(math.pi / 2, abs=math.radians(1.0))
    assert east.yaw_enu_rad == pytest.approx(0.0, abs=math.radians(1.0))


def test_camera_offset_is_used_with_the_right_east_north_signs():
    theta = 123.4
    aerial = aerial_landmarks()
    ground = ground_landmarks(theta)
    right = polar(ground, aerial, offset_m=CAMERA_OFFSET_M)
    de, dn = CAMERA_OFFSET_M
    assert ang_err_deg(right.bearing_deg, theta) < 0.25 * 5.0
    for wrong_offset in [(-de, dn), (de, -dn), (0.0, 0.0), (dn, de)]:
        wrong = polar(ground, aerial, offset_m=wrong_offset)
        assert right.peak_score - wrong.peak_score > 0.3, wrong_offset
        assert ang_err_deg(wrong.bearing_deg, theta) > 10.0, wrong_offset


def test_revisiting_bins_aerial_angles_around_the_camera_when_given():
    theta = 47.0
    aerial = aerial_landmarks()
    ground = ground_landmarks(theta)
    assert ang_err_deg(revisiting(ground, aerial).bearing_deg, theta) <= 5.0
    de, dn = CAMERA_OFFSET_M
    # Seen from the mirrored position the landmarks sit at other angles: the peak moves away.
    assert ang_err_deg(revisiting(ground, aerial, offset_m=(-de, -dn)).bearing_deg, theta) > 10.0


@pytest.mark.parametrize("k", [1, 5, 36, 71])
def test_rolling_the_ground_map_turns_the_heading_clockwise(k):
    """Turning the camera clockwise by k columns brings column k to column 0: roll by -k."""
    rng = np.random.default_rng(k)
    ground = rng.normal(size=(6, 4, GROUND_W))
    aerial = rng.normal(size=(6, 32, 32))
    step = 360.0 / GROUND_W
    for estimate in (
        lambda g: polar(g, aerial),
        lambda g: polar(g, aerial, n_bins=3 * GROUND_W),
        lambda g: revisiting(g, aerial),
    ):
        before = estimate(ground)
        after = estimate(np.roll(ground, -k, axis=2))
        assert ang_err_deg(after.bearing_deg, before.bearing_deg + k * step) < 1e-6
        np.testing.assert_allclose(after.curve, np.roll(before.curve, len(before.curve) // GROUND_W * k), atol=1e-9)


def test_sharp_match_has_smaller_variance_than_noise():
    rng = np.random.default_rng(7)
    aerial = aerial_landmarks()
    clean = polar(ground_landmarks(200.0), aerial)
    noise = polar(rng.normal(size=(6, GROUND_H, GROUND_W)), aerial)
    assert clean.variance_rad2 < 0.05  # ~13 deg standard deviation at most
    assert noise.variance_rad2 > 4 * clean.variance_rad2
    assert clean.peak_ratio > 2 * noise.peak_ratio


def test_flip_score_reports_a_symmetric_scene():
    """A street-like scene: channel 0 seen along 60 and 240 deg (the road both ways) plus a
    landmark at 150 deg; without the landmark the view is 180-deg symmetric."""
    theta = 30.0
    sym_b, sym_ch = (60.0, 240.0), (0, 0)
    aerial = aerial_landmarks(sym_b + (150.0,), channels=sym_ch + (1,))
    asym = polar(ground_landmarks(theta, sym_b + (150.0,), channels=sym_ch + (1,)), aerial)
    assert ang_err_deg(asym.bearing_deg, theta) < 1.25
    assert asym.flip_score < asym.peak_score - 0.2
    sym_aerial = aerial_landmarks(sym_b, channels=sym_ch)
    sym = polar(ground_landmarks(theta, sym_b, channels=sym_ch), sym_aerial)
    assert min(ang_err_deg(sym.bearing_deg, theta), ang_err_deg(sym.bearing_deg, theta + 180)) < 1.25
    assert sym.flip_score == pytest.approx(sym.peak_score, abs=0.02)
    assert sym.variance_rad2 > 1.0  # the ambiguity shows in the variance
    assert sym.peak_ratio == pytest.approx(1.0, abs=0.05)


def flat_ground_view(field, theta_deg, camera_height_m, rows=32, width=GROUND_W):
    """(C, rows, width) full panorama of a flat ground painted with field(east, north) -> (C, ...),
    each row below the horizon sampling the ground point its centre ray hits; sky rows zero."""
    depression = np.radians((np.arange(rows) + 0.5) / rows * 180.0 - 90.0)
    below = depression > 0
    dist = np.where(below, camera_height_m / np.tan(np.where(below, depression, 1.0)), 0.0)
    bearing = np.radians(theta_deg + (np.arange(width) + 0.5) / width * 360.0)
    east = CAMERA_OFFSET_M[0] + dist[:, None] * np.sin(bearing)[None, :]
    north = CAMERA_OFFSET_M[1] + dist[:, None] * np.cos(bearing)[None, :]
    return field(east, north) * below[None, :, None]


def test_matched_row_bands_pair_panorama_rows_with_ground_distances():
    """One channel, two blobs in opposite directions: near (3.3 m) at 40 deg and far (15 m) at
    220 deg. Only the row geometry tells the two apart; the rows' pooled columns cannot."""
    theta = 75.0
    near = (40.0, 3.3, 0.7)
    far = (220.0, 15.0, 3.0)

    def field(east, north):
        out = 0.0
        for b, d, s in (near, far):
            ce = CAMERA_OFFSET_M[0] + d * math.sin(math.radians(b))
            cn = CAMERA_OFFSET_M[1] + d * math.cos(math.radians(b))
            out = out + np.exp(-((east - ce) ** 2 + (north - cn) ** 2) / (2 * s * s))
        return out[None]

    ground = flat_ground_view(field, theta, camera_height_m=2.0)
    east, north = cell_centres_en()
    aerial = field(east, north)
    matched = polar(ground, aerial, camera_height_m=2.0)
    assert ang_err_deg(matched.bearing_deg, theta) < 0.5 * 5.0
    assert matched.flip_score < matched.peak_score - 0.3
    lower = polar(ground[:, 16:], aerial, camera_height_m=2.0, ground_elevation_deg=(0.0, -90.0))
    assert lower.bearing_deg == pytest.approx(matched.bearing_deg, abs=1e-9)  # same rows, same answer
    pooled = polar(ground, aerial)
    assert pooled.flip_score > matched.flip_score + 0.3


def test_bad_inputs_raise_clear_errors():
    aerial = aerial_landmarks()
    ground = ground_landmarks(10.0)
    with pytest.raises(ValueError, match="channels first"):
        polar(ground[0], aerial)
    with pytest.raises(ValueError, match="same channels"):
        polar(ground[:3], aerial)
    bad = ground.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        revisiting(bad, aerial)
    with pytest.raises(ValueError, match="tile_size_m"):
        revisiting_heading(ground, aerial, offset_m=(1.0, 2.0))
    with pytest.raises(ValueError, match="tile_size_m"):
        polar_correlation_heading(ground, aerial, tile_size_m=-1.0)
    with pytest.raises(ValueError, match="radius_range_m"):
        polar(ground, aerial, camera_height_m=2.0, radius_range_m=(100.0, 200.0))
    with pytest.raises(ValueError, match="offset_m"):
        polar(ground, aerial, offset_m=(1.0, math.inf))


# ----------------------------------------------------------------------------------- rendered city


def simple_features(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) image -> (3, h, w): two chromaticity channels and high-passed log luminance,
    which survive the views' different lighting and the aerial's cast shadows better than RGB."""
    img = cv2.resize(rgb.astype(np.float32) / 255.0, size_wh, interpolation=cv2.INTER_AREA)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    lum = (r + g + b) / 3.0 + 1e-3
    log_lum = np.log(lum)
    return np.stack([(r - g) / lum, (b - (r + g) / 2.0) / lum, log_lum - cv2.GaussianBlur(log_lum, (0, 0), 3.0)])


def test_rendered_city_polar_method_recovers_most_headings():
    from crossview_ros.sim import ortho, render
    from crossview_ros.sim.city import CityConfig, generate_city
    from crossview_ros.sim.scene import Sun

    city = generate_city(CityConfig(size_m=260, gsd_m=0.25, seed=11))
    scene = city.scene(0)
    orthophoto = ortho.render_orthophoto(scene, Sun(azimuth_deg=135.0, elevation_deg=45.0))
    tile_m = 48.0
    tile_px = int(round(tile_m / scene.gsd_m))
    camera_height_m = render.CameraConfig().height_m
    rng = np.random.default_rng(11)
    nodes, edges = city.streets.nodes_en, city.streets.edges
    errors = {"polar": [], "polar_pooled": [], "revisiting": []}
    while len(errors["polar"]) < 10:
        a, b = nodes[edges[rng.integers(len(edges))]]
        cam = a + rng.uniform(0.1, 0.9) * (b - a)
        offset = rng.uniform(-tile_m / 4, tile_m / 4, 2)  # camera minus tile centre
        col = (cam[0] - offset[0] - scene.origin_e_m) / scene.gsd_m - tile_px / 2  # tile's west edge
        row = (scene.origin_n_m - (cam[1] - offset[1])) / scene.gsd_m - tile_px / 2  # tile's north edge
        if not (0 <= col and col + tile_px <= scene.shape[1] and 0 <= row and row + tile_px <= scene.shape[0]):
            continue
        bearing = rng.uniform(0.0, 360.0)  # grid bearing of the camera forward
        lat, lon = geo.utm_to_latlon(cam[0], cam[1], scene.zone)
        yaw_enu = geo.yaw_utm_to_enu(geo.yaw_enu_from_bearing_deg(bearing), lat, lon, scene.zone)
        pano = render.render_panorama(
            scene, cam[0], cam[1], yaw_enu, height_px=128, sun=Sun(azimuth_deg=200.0, elevation_deg=35.0)
        )
        shift = np.float32([[1, 0, col], [0, 1, row]])
        tile = cv2.warpAffine(orthophoto, shift, (tile_px, tile_px), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
        ground = simple_features(pano, (128, 64))[:, 32:]  # the panorama's lower half, 2.8 deg cells
        aerial = simple_features(tile, (48, 48))  # 1 m cells
        kw = dict(offset_m=tuple(offset), tile_size_m=tile_m)
        estimates = {
            "polar": polar_correlation_heading(
                ground, aerial, camera_height_m=camera_height_m, ground_elevation_deg=(0.0, -90.0), **kw
            ),
            "polar_pooled": polar_correlation_heading(ground, aerial, **kw),
            "revisiting": revisiting_heading(ground, aerial, **kw),
        }
        for name, est in estimates.items():
            errors[name].append(ang_err_deg(est.bearing_deg, bearing))
    share = {name: float(np.mean(np.asarray(e) < 10.0)) for name, e in errors.items()}
    flips = {name: float(np.mean(np.asarray(e) > 170.0)) for name, e in errors.items()}
    print(f"\nheading within 10 deg on 10 rendered street views: {share}; ~180 deg flips: {flips}")
    print({name: np.round(e, 1).tolist() for name, e in errors.items()})
    assert share["polar"] >= 0.6
