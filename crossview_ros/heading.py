"""Camera heading from forward-only feature maps: which way does the panorama's column 0 face?

Two estimators on the outputs of the exported encoders (no autograd, no torch at run time):

- ``revisiting_heading``: the baseline of Zhu et al., "Revisiting Street-to-Aerial View Image
  Geo-localization and Orientation Estimation" (WACV 2021), Sec. 4.2: threshold each view's
  activation map, take the angle distribution of the selected pixels in each view, and match
  the two distributions by circular correlation computed with the FFT (their Eq. 5). The paper's
  activation maps are Grad-CAM maps of the similarity; forward-only, we use the exact Grad-CAM
  weights of a global-average-pooled embedding (see ``activation_map``).
- ``polar_correlation_heading`` (the default): DSM-style (Shi et al., CVPR 2020, "Where am I
  looking at?"): sample the aerial feature map on a polar grid around the camera's estimated
  position, collapse both views to one L2-normalised descriptor per azimuth bin (rows pooled,
  or each panorama row below the horizon paired with the ring of ground it sees when the camera
  height is given), and correlate them over every circular shift by FFT (summed over channels).
  It keeps the channels (what is seen) that the baseline throws away, and it looks from where
  the camera stands. On rendered street views with hand-made colour features (test_heading.py)
  it gets 9 headings in 10 within 10 deg with matched rows, about 5 with pooled rows, and the
  baseline about 2.

Conventions (fixed by crossview_ros.sim.render and training.models.polar_grid):

- ground features (C, hg, wg): feature column j looks along azimuth (j + 0.5) / wg * 360 deg
  CLOCKWISE from the camera's forward direction seen from above (column 0 = just right of
  forward); row r looks at elevation 90 - (r + 0.5) / hg * 180 deg (horizon between rows hg/2 - 1
  and hg/2) when the map spans the whole panorama;
- aerial features (C, ha, wa) of a north-up tile of side L metres: row 0 = north edge, column 0
  = west edge; cell (i, j) is centred at east = ((j + 0.5) / wa - 0.5) * L, north = (0.5 - (i +
  0.5) / ha) * L from the tile centre; the camera stands at (dE, dN) metres from the tile centre;
- azimuth bin k of n is centred on compass bearing (k + 0.5) * 360 / n (0 = north, clockwise);
- correlation curve: curve[s] scores camera bearing s * 360 / n (the forward direction), since
  ground column j then looks at bearing s * 360 / n + (j + 0.5) * 360 / n = aerial bin j + s;
- bearings in degrees (0 = north, clockwise, [0, 360)); yaw in radians in ENU (0 = east,
  counter-clockwise, (-pi, pi]) via geo.yaw_enu_from_bearing_deg. The tile is north-up on the
  UTM grid, so the bearing found is a grid bearing; the caller turns the yaw from grid to true
  ENU with geo.yaw_utm_to_enu (grid convergence, up to ~3 deg at a zone's edge).

The confidence (variance, peak ratio, flip score) is raw and uncalibrated: the localizer
calibrates it against ground truth on a validation drive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crossview_ros import geo

# Temperature of the Gibbs ("von Mises-like") weights exp((curve - peak) / T) over the curve, in
# the curve's units (mean cosine, [-1, 1]): a curve A * cos(bearing - b) gives a von Mises density
# with concentration A / T. Bins 0.2 below the peak weigh e^-4; the scale is calibrated later.
DEFAULT_TEMPERATURE = 0.05
# Local maxima closer than this to the main peak belong to its lobe, not to a rival peak.
DEFAULT_EXCLUDE_DEG = 15.0
# Revisiting Sec. 4.2 selects "pixels with values higher than a threshold" without a number;
# relative to the map's maximum, half of it keeps the clearly activated regions.
DEFAULT_THRESHOLD = 0.5
_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class HeadingEstimate:
    """Heading of the camera's forward direction with its raw (uncalibrated) confidence."""

    yaw_enu_rad: float  # of the camera forward (0 = east, CCW), (-pi, pi], on the tile's grid: geo.yaw_utm_to_enu
    bearing_deg: float  # compass (grid) bearing of the camera forward (0 = north, clockwise), [0, 360)
    variance_rad2: float  # yaw variance from the spread of the curve's Gibbs weights, plus bin quantisation
    peak_ratio: float  # (peak - min) / (best rival local maximum - min) >= 1; inf without a rival
    flip_score: float  # curve at bearing + 180 deg (linear interpolation), same units as the curve
    peak_score: float  # curve at the estimate (parabola vertex when refined): compare flip_score with it
    curve: np.ndarray  # (n,) score of camera bearing s * 360 / n deg, s = 0..n-1

    @property
    def bin_deg(self) -> float:
        """Width of one azimuth bin of the curve, degrees."""
        return 360.0 / len(self.curve)


def heading_from_curve(
    curve: np.ndarray,
    *,
    refine: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
    exclude_deg: float = DEFAULT_EXCLUDE_DEG,
) -> HeadingEstimate:
    """Read a heading and its confidence off a circular correlation curve.

    curve (n,): curve[s] scores camera bearing s * 360 / n deg; higher is better; a correlation
    coefficient or mean cosine in [-1, 1] for ``temperature`` to mean the same on every curve.
    refine: fit a parabola through the peak and its two neighbours (sub-bin estimate);
    False keeps the best bin (Revisiting: "the highest peak is selected").
    Variance: weights p_s proportional to exp((curve[s] - max) / temperature), a von Mises-like
    density (the curve read as a log-likelihood), then sum_s p_s * wrap(s * bin - estimate)^2
    + bin^2 / 12 (quantisation). A lone spike gives bin^2 / 12, a flat curve the uniform circle's
    pi^2 / 3, two equal peaks 180 deg apart pi^2 / 2: a weak or ambiguous match is not hidden.
    """
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size < 3:
        raise ValueError(f"curve must be 1-D with at least 3 azimuth bins, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("curve has NaN or inf values; check the feature maps for non-finite numbers")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (curve units), got {temperature}")
    n = c.size
    bin_rad = 2.0 * math.pi / n
    s0 = int(np.argmax(c))
    y_m, y0, y_p = c[(s0 - 1) % n], c[s0], c[(s0 + 1) % n]
    delta = 0.0
    peak = float(y0)
    denom = y_m - 2.0 * y0 + y_p
    if refine and denom < -_EPS:
        delta = float(np.clip(0.5 * (y_m - y_p) / denom, -0.5, 0.5))
        peak = float(y0 - 0.25 * (y_m - y_p) * delta)
    s_hat = (s0 + delta) % n
    bearing = float(s_hat * 360.0 / n) % 360.0

    # Rival peak: the best local maximum outside the main peak's +-exclude window.
    lo = float(c.min())
    local_max = (c >= np.roll(c, 1)) & (c >= np.roll(c, -1))
    dist_bins = np.abs((np.arange(n) - s0 + n / 2.0) % n - n / 2.0)
    exclude_bins = max(1.0, exclude_deg / (360.0 / n))
    rivals = c[local_max & (dist_bins > exclude_bins)]
    if y0 - lo <= _EPS:
        peak_ratio = 1.0  # a flat curve: every bearing is as good
    elif rivals.size == 0 or rivals.max() - lo <= _EPS:
        peak_ratio = math.inf
    else:
        peak_ratio = float((y0 - lo) / (rivals.max() - lo))

    p = np.exp((c - y0) / temperature)
    p /= p.sum()
    err = np.mod(np.arange(n) * bin_rad - s_hat * bin_rad + math.pi, 2.0 * math.pi) - math.pi
    variance = float(np.dot(p, err * err) + bin_rad * bin_rad / 12.0)

    flip_score = float(_interp_circular(c, s_hat + n / 2.0))
    return HeadingEstimate(
        yaw_enu_rad=float(geo.yaw_enu_from_bearing_deg(bearing)),
        bearing_deg=bearing,
        variance_rad2=variance,
        peak_ratio=peak_ratio,
        flip_score=flip_score,
        peak_score=peak,
        curve=c,
    )


def heading_from_columns(
    ground_columns: np.ndarray,
    aerial_columns: np.ndarray,
    *,
    center: bool = True,
    refine: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
    exclude_deg: float = DEFAULT_EXCLUDE_DEG,
) -> HeadingEstimate:
    """Heading from per-azimuth descriptors of both views by FFT circular correlation.

    ground_columns (D, n): column j looks (j + 0.5) * 360 / n deg clockwise from forward.
    aerial_columns (D, n): column k looks along bearing (k + 0.5) * 360 / n deg from north
    (for training.models.polar_grid's layout, whose first column faces south, np.roll by n / 2).
    center: subtract each channel's mean over azimuth first (rotation invariant), so that
    non-negative (ReLU) features are compared by how they vary around the camera, not by
    their common level. Columns are then L2-normalised; the curve is the mean cosine, [-1, 1].
    """
    g = _unit_columns(_check_columns("ground_columns", ground_columns), center)
    a = _unit_columns(_check_columns("aerial_columns", aerial_columns), center)
    if g.shape != a.shape:
        raise ValueError(f"ground_columns {g.shape} and aerial_columns {a.shape} must have the same (D, n)")
    curve = circular_correlation(g, a) / g.shape[1]
    return heading_from_curve(curve, refine=refine, temperature=temperature, exclude_deg=exclude_deg)


def circular_correlation(ground: np.ndarray, aerial: np.ndarray) -> np.ndarray:
    """(D, n), (D, n) -> (n,): curve[s] = sum_d sum_j ground[d, j] * aerial[d, (j + s) % n], by FFT.

    Revisiting's text asks for the shift phi at which p_aerial(theta + phi) best matches
    p_street(theta): this correlation. Its Eq. 5, a circular convolution of p_street with the
    reversed p_aerial, is the same sum with the shift's sign flipped (one view's angles read the
    other way round); here the peak sits directly at the camera bearing's bin s.
    """
    n = ground.shape[-1]
    spectrum = np.conj(np.fft.rfft(ground, axis=-1)) * np.fft.rfft(aerial, axis=-1)
    return np.fft.irfft(spectrum.sum(axis=0), n)


def polar_sample(
    aerial_features: np.ndarray,
    radii_m: np.ndarray,
    n_bins: int,
    *,
    offset_m: tuple[float, float] = (0.0, 0.0),
    tile_size_m: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear polar resampling of a north-up aerial map around the camera.

    aerial_features (C, ha, wa); radii_m (R,) distances from the camera; offset_m = (dE, dN) of
    the camera from the tile centre, metres; tile_size_m = L. Returns samples (C, R, n_bins),
    row r at radius radii_m[r], column k along bearing (k + 0.5) * 360 / n_bins from north,
    clockwise, and valid (R, n_bins), False where the sample falls outside the tile (its value
    is then the nearest edge cell's and should be ignored).
    """
    f = _check_map("aerial_features", aerial_features)
    c, ha, wa = f.shape
    if ha < 2 or wa < 2:
        raise ValueError(f"aerial_features needs at least 2 x 2 cells, got {ha} x {wa}")
    size = _check_tile_size(tile_size_m)
    d_e, d_n = _check_offset(offset_m)
    if int(n_bins) < 3:
        raise ValueError(f"n_bins must be >= 3, got {n_bins}")
    r = np.asarray(radii_m, dtype=np.float64).reshape(-1)
    if r.size == 0 or not np.isfinite(r).all() or (r < 0).any():
        raise ValueError(f"radii_m must be finite distances >= 0 metres, got {radii_m}")
    bearing = (np.arange(int(n_bins)) + 0.5) * (2.0 * math.pi / int(n_bins))
    east = d_e + r[:, None] * np.sin(bearing)[None, :]
    north = d_n + r[:, None] * np.cos(bearing)[None, :]
    x = (east / size + 0.5) * wa - 0.5  # continuous column index, integer = cell centre
    y = (0.5 - north / size) * ha - 0.5  # continuous row index (rows grow southwards)
    valid = (x >= -0.5) & (x <= wa - 0.5) & (y >= -0.5) & (y <= ha - 0.5)
    x = np.clip(x, 0.0, wa - 1.0)
    y = np.clip(y, 0.0, ha - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), wa - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), ha - 2)
    fx = (x - x0).astype(f.dtype)
    fy = (y - y0).astype(f.dtype)
    flat = f.reshape(c, -1)
    i00 = y0 * wa + x0  # flat index of the upper-left neighbour
    top = flat[:, i00] * (1 - fx) + flat[:, i00 + 1] * fx
    bottom = flat[:, i00 + wa] * (1 - fx) + flat[:, i00 + wa + 1] * fx
    return top * (1 - fy) + bottom * fy, valid


def polar_correlation_heading(
    ground_features: np.ndarray,
    aerial_features: np.ndarray,
    *,
    offset_m: tuple[float, float] = (0.0, 0.0),
    tile_size_m: float,
    n_bins: int | None = None,
    radius_range_m: tuple[float, float] | None = None,
    camera_height_m: float | None = None,
    ground_elevation_deg: tuple[float, float] = (90.0, -90.0),
    center: bool = True,
    refine: bool = True,
    temperature: float = DEFAULT_TEMPERATURE,
    exclude_deg: float = DEFAULT_EXCLUDE_DEG,
) -> HeadingEstimate:
    """Heading by correlating the panorama's column features with polar-sampled aerial features.

    ground_features (C, hg, wg): the panorama's feature map; aerial_features (C, ha, wa): the
    north-up tile's feature map (or the tile image, channels first), same channels.
    offset_m = (dE, dN): the camera's estimated position from the tile centre, metres;
    tile_size_m: the tile side L, metres. n_bins: azimuth bins (default wg; the ground columns
    are resampled circularly, linear, when it differs).
    radius_range_m: distances from the camera that the aerial side looks at (default (0, L / 2)),
    sampled one aerial cell apart; samples outside the tile are left out.
    Two ways to collapse the views into per-azimuth descriptors:
    - camera_height_m None (pooled): the mean over all ground rows given against the mean over
      all aerial radii in range; works on any rows (the whole panorama or a band of it);
    - camera_height_m = h (matched row bands, as DSM's polar transform lines up aerial rows with
      panorama rows): each ground row below the horizon whose flat-ground distance
      h / tan(depression) lies in radius_range_m is paired with the aerial ring it sees (radii
      inside the row's depression band); a bearing's descriptor stacks the bands (B * C).
      ground_elevation_deg = (top, bottom) says which elevations the map spans, degrees: the
      whole panorama (90, -90) by default, its lower half (0, -90).
    Both views are then centred over azimuth and L2-normalised per column (heading_from_columns);
    the curve is the mean cosine over columns, [-1, 1].
    """
    g = _check_map("ground_features", ground_features)
    a = _check_map("aerial_features", aerial_features)
    if g.shape[0] != a.shape[0]:
        raise ValueError(f"ground ({g.shape[0]}) and aerial ({a.shape[0]}) feature maps need the same channels")
    size = _check_tile_size(tile_size_m)
    n = g.shape[2] if n_bins is None else int(n_bins)
    if n < 3:
        raise ValueError(f"n_bins must be >= 3, got {n_bins}")
    r_lo, r_hi = (0.0, size / 2.0) if radius_range_m is None else (float(v) for v in radius_range_m)
    if not (0.0 <= r_lo < r_hi and math.isfinite(r_hi)):
        raise ValueError(f"radius_range_m must be 0 <= min < max metres, got {radius_range_m}")
    step = size / max(a.shape[1], a.shape[2])  # one aerial cell
    radii = np.arange(r_lo + step / 2.0, r_hi, step)
    if radii.size == 0:
        radii = np.array([(r_lo + r_hi) / 2.0])
    if camera_height_m is None:
        band = np.zeros(radii.size, np.int64)
        ground_bands = g.mean(axis=1, keepdims=True)  # (C, 1, wg)
    else:
        rows, near_m, far_m, centre_m = _ground_bands(g.shape[1], camera_height_m, ground_elevation_deg, r_lo, r_hi)
        inside = (radii[:, None] >= near_m[None, :]) & (radii[:, None] < far_m[None, :])  # (R, B)
        band = np.where(inside.any(axis=1), np.argmax(inside, axis=1), -1)
        # Every band also samples its own centre distance, so thin near bands are never empty.
        radii = np.concatenate([radii[band >= 0], centre_m])
        band = np.concatenate([band[band >= 0], np.arange(rows.size)])
        ground_bands = g[:, rows, :]  # (C, B, wg)
    samples, valid = polar_sample(a, radii, n, offset_m=offset_m, tile_size_m=size)  # (C, R, n), (R, n)
    member = (band[None, :] == np.arange(ground_bands.shape[1])[:, None]).astype(samples.dtype)  # (B, R)
    valid_f = valid.astype(samples.dtype)
    count = member @ valid_f  # (B, n) valid samples per band and bearing
    aerial_bands = np.matmul(member, samples * valid_f) / np.maximum(count, 1.0)  # (C, B, n); 0: none valid
    aerial_columns = aerial_bands.reshape(-1, n)
    ground_columns = resample_columns(ground_bands.reshape(-1, g.shape[2]), n)
    return heading_from_columns(
        ground_columns, aerial_columns, center=center, refine=refine, temperature=temperature, exclude_deg=exclude_deg
    )


def activation_map(features: np.ndarray, channel_weights: np.ndarray) -> np.ndarray:
    """Grad-CAM-style map ReLU(sum_c w_c * A_c) scaled to [0, 1] by its maximum: (C, h, w) -> (h, w).

    For a similarity s = <GAP(A_g), GAP(A_a)> (unnormalised embeddings, as Revisiting's Grad-CAM
    uses), ds/dA_g[c, y, x] = GAP(A_a)[c] / (hg * wg): Grad-CAM's channel weights of one view
    are the other view's channel means, exactly, with no backward pass. A map with no positive
    value comes back all zeros.
    """
    f = _check_map("features", features)
    w = np.asarray(channel_weights, dtype=f.dtype).reshape(-1)
    if w.size != f.shape[0] or not np.isfinite(w).all():
        raise ValueError(f"channel_weights must be {f.shape[0]} finite numbers, got shape {np.shape(channel_weights)}")
    m = np.maximum(np.tensordot(w, f, axes=1), 0.0)
    top = m.max()
    return m / top if top > 0 else m


def revisiting_heading(
    ground_features: np.ndarray,
    aerial_features: np.ndarray,
    *,
    offset_m: tuple[float, float] | None = None,
    tile_size_m: float | None = None,
    n_bins: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    ground_weights: np.ndarray | None = None,
    aerial_weights: np.ndarray | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> HeadingEstimate:
    """Revisiting (Zhu et al. 2021, Sec. 4.2): match the angle distributions of activated pixels.

    ground_features (C, hg, wg), aerial_features (C, ha, wa): conventions in the module docstring.
    1. activation maps: activation_map with Grad-CAM weights; by default each view's weights are
       the other view's channel means (exact for a GAP embedding); pass ground_weights /
       aerial_weights (C,) for another head (e.g. W^T e_other for a linear head on GAP);
    2. select pixels above `threshold` (relative to the map's maximum);
    3. angle distributions p_street (each selected ground pixel at its column's azimuth from
       forward) and p_aerial (each selected aerial cell at its bearing seen from the camera:
       the tile centre, or offset_m = (dE, dN) metres from it when given, with tile_size_m),
       n_bins bins (default wg), each pixel split linearly between its two nearest bins;
    4. curve[s] = sum_k p_street[k] * p_aerial[k + s] by FFT (Eq. 5); the highest bin is the
       camera bearing (no sub-bin refinement, as in the paper). The curve is returned as a
       circular correlation coefficient (both distributions centred and unit-norm: a constant
       offset and scale of Eq. 5, same argmax), in [-1, 1] like the polar method's, so that
       temperature, peak and flip scores mean the same for both estimators.
    """
    g = _check_map("ground_features", ground_features)
    a = _check_map("aerial_features", aerial_features)
    if g.shape[0] != a.shape[0]:
        raise ValueError(f"ground ({g.shape[0]}) and aerial ({a.shape[0]}) feature maps need the same channels")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold is relative to the map's maximum and must be in [0, 1), got {threshold}")
    _, hg, wg = g.shape
    _, ha, wa = a.shape
    n = wg if n_bins is None else int(n_bins)
    if n < 3:
        raise ValueError(f"n_bins must be >= 3, got {n_bins}")
    if offset_m is None:
        d_e = d_n = 0.0
        size = 1.0  # only the aspect matters when the camera sits at the tile centre
    else:
        if tile_size_m is None:
            raise ValueError("offset_m needs tile_size_m (the tile side L in metres) to place the camera")
        size = _check_tile_size(tile_size_m)
        d_e, d_n = _check_offset(offset_m)

    map_g = activation_map(g, a.mean(axis=(1, 2)) if ground_weights is None else ground_weights)
    map_a = activation_map(a, g.mean(axis=(1, 2)) if aerial_weights is None else aerial_weights)
    sel_g = map_g > threshold  # a map with no positive value selects nothing
    sel_a = map_a > threshold

    col_deg = np.broadcast_to((np.arange(wg) + 0.5) * (360.0 / wg), (hg, wg))
    p_street = _soft_histogram(col_deg[sel_g], n)

    east = ((np.arange(wa) + 0.5) / wa - 0.5) * size - d_e
    north = (0.5 - (np.arange(ha) + 0.5) / ha) * size - d_n
    east, north = np.broadcast_arrays(east[None, :], north[:, None])
    cell = size / max(ha, wa)
    away = np.hypot(east, north) > cell / 2.0  # the camera's own cell has no direction
    keep = sel_a & away
    p_aerial = _soft_histogram(np.degrees(np.arctan2(east[keep], north[keep])), n)

    ps = p_street - p_street.mean()
    pa = p_aerial - p_aerial.mean()
    norm = float(np.linalg.norm(ps) * np.linalg.norm(pa))
    curve = circular_correlation(ps[None, :], pa[None, :]) / max(norm, _EPS)  # all 0 when a view is uniform
    return heading_from_curve(curve, refine=False, temperature=temperature)


def resample_columns(columns: np.ndarray, n_bins: int) -> np.ndarray:
    """(D, w) per-azimuth columns (centres at (j + 0.5) * 360 / w) -> (D, n_bins), circular linear."""
    w = columns.shape[-1]
    if n_bins == w:
        return columns
    x = (np.arange(n_bins) + 0.5) * (w / n_bins) - 0.5  # target centres in source column units
    x0 = np.floor(x).astype(np.int64)
    t = (x - x0).astype(columns.dtype)
    return columns[:, x0 % w] * (1 - t) + columns[:, (x0 + 1) % w] * t


def _ground_bands(
    hg: int, camera_height_m: float, elevation_deg: tuple[float, float], r_lo: float, r_hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ground rows that look at flat ground within [r_lo, r_hi] metres of a camera h metres up.

    Returns rows (B,), and per row the near and far distance of its depression band and the
    distance seen by its centre, metres (flat ground, no occlusion: walls and cars hide the
    ground beyond them; that is what the aerial side's features have to live with).
    """
    h = float(camera_height_m)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"camera_height_m must be > 0 metres above the ground, got {camera_height_m}")
    top, bottom = (float(v) for v in elevation_deg)
    if not (90.0 >= top > bottom >= -90.0):
        raise ValueError(
            f"ground_elevation_deg must be (top, bottom) degrees with 90 >= top > bottom >= -90, got {elevation_deg}"
        )
    edge = np.radians(-(top - np.arange(hg + 1) / hg * (top - bottom)))  # depression of row edges, rad
    centre = (edge[:-1] + edge[1:]) / 2.0

    def distance(depression: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.where(depression > 0, h / np.tan(np.maximum(depression, _EPS)), np.inf)

    centre_m = distance(centre)
    rows = np.flatnonzero((centre_m >= r_lo) & (centre_m <= r_hi))
    if rows.size == 0:
        raise ValueError(
            f"no ground feature row below the horizon looks at ground {r_lo}..{r_hi} m from a camera "
            f"{h} m high (rows span elevations {top}..{bottom} deg); widen radius_range_m, fix "
            "ground_elevation_deg, or leave camera_height_m None to pool the rows"
        )
    return rows, distance(edge[rows + 1]), distance(edge[rows]), centre_m[rows]


def _soft_histogram(angles_deg: np.ndarray, n_bins: int) -> np.ndarray:
    """Angles (any shape) -> (n_bins,) distribution summing to 1 (uniform when empty).

    Each angle is split linearly between the two nearest bin centres (k + 0.5) * 360 / n_bins.
    """
    a = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return np.full(n_bins, 1.0 / n_bins)
    x = np.mod(a, 360.0) / (360.0 / n_bins) - 0.5
    x0 = np.floor(x).astype(np.int64)
    t = x - x0
    hist = np.bincount(x0 % n_bins, weights=1.0 - t, minlength=n_bins)
    hist += np.bincount((x0 + 1) % n_bins, weights=t, minlength=n_bins)
    return hist / hist.sum()


def _interp_circular(c: np.ndarray, x: float) -> float:
    n = c.size
    x = x % n
    i = int(math.floor(x))
    t = x - i
    return float(c[i % n] * (1.0 - t) + c[(i + 1) % n] * t)


def _unit_columns(columns: np.ndarray, center: bool) -> np.ndarray:
    x = columns - columns.mean(axis=1, keepdims=True) if center else columns
    norm = np.linalg.norm(x, axis=0, keepdims=True)
    return x / np.maximum(norm, _EPS)  # an all-zero column stays zero and scores 0


def _check_map(name: str, features: np.ndarray) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim != 3 or min(f.shape) < 1:
        raise ValueError(f"{name} must be a (C, h, w) feature map (channels first), got shape {f.shape}")
    f = f.astype(np.float64 if f.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(f).all():
        raise ValueError(f"{name} has NaN or inf values; check the engine's output")
    return f


def _check_columns(name: str, columns: np.ndarray) -> np.ndarray:
    x = np.asarray(columns, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 3 or x.shape[0] < 1:
        raise ValueError(f"{name} must be (D, n) with n >= 3 azimuth bins, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or inf values")
    return x


def _check_tile_size(tile_size_m: float) -> float:
    size = float(tile_size_m)
    if not (math.isfinite(size) and size > 0.0):
        raise ValueError(f"tile_size_m must be a positive side length in metres, got {tile_size_m}")
    return size


def _check_offset(offset_m: tuple[float, float]) -> tuple[float, float]:
    d = np.asarray(offset_m, dtype=np.float64).reshape(-1)
    if d.size != 2 or not np.isfinite(d).all():
        raise ValueError(f"offset_m must be (dE, dN) in metres from the tile centre, got {offset_m}")
    return float(d[0]), float(d[1])
