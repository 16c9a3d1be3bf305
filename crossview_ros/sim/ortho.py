"""The aerial view of a synthetic city: a shaded, shadowed orthophoto and its GeoTIFF.

The orthophoto is the scene seen from straight above (a "true ortho": roofs where their
footprints are, no leaning façades), lit by one Sun:

- cast shadows: a cell is shadowed when the height field rises above the ray from the cell
  towards the sun. One sweep over the rows (or columns) in the sun's dominant direction carries
  a "shadow surface" that drops by tan(elevation) per metre away from the sun; linear
  interpolation between neighbouring cells gives a penumbra that widens with the distance from
  the caster (about the square root of the steps, in pixels), like the real sun's 0.5 deg disc;
- direct light by a Lambert term from the height field's normals (gable roofs and tree domes
  get a lit and a dark side; vertical jumps such as walls count as flat);
- sky light, dimmed by a coarse ambient occlusion so that deep street canyons are darker.

A flat, sunlit, unoccluded cell shows its albedo exactly; a shadowed one keeps about 40 % of it,
bluish (sky light). Conventions as in scene.py: row 0 = north, column 0 = west, Sun.azimuth_deg
is the compass bearing towards the sun (0 = north, clockwise).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from crossview_ros.sim.scene import Scene, Sun

if TYPE_CHECKING:  # appearance.py is optional at import time (lazy import below)
    from crossview_ros.sim.appearance import Appearance

# Sky light relative to the direct sun on a flat surface (per channel, RGB): shadows are bluish.
AMBIENT_RGB = (0.36, 0.40, 0.48)
# Vertical softness of the shadow edge, metres: anti-aliases the shadow boundary.
SHADOW_SOFTNESS_M = 0.3
# Surface slopes (rise over run) steeper than this are walls or canopy rims: shaded as flat.
MAX_SLOPE = 2.5
# Ambient occlusion: how much sky light the bottom of a canyon loses, and the neighbourhood.
AO_STRENGTH = 0.35
AO_RADIUS_M = 12.0
_BAND_ROWS = 512


def sun_shadow(height_m: np.ndarray, gsd_m: float, sun: Sun, softness_m: float = SHADOW_SOFTNESS_M) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how much of the direct sun each cell misses (1 = full shadow).

    height_m is a north-up raster (row 0 = north) of top-surface heights with cell size gsd_m.
    Cells outside the raster count as flat ground. The sweep is exact for sun directions along
    the raster axes and the diagonals; in between, the interpolation blurs the shadow edge by
    about 0.5 * sqrt(n) pixels after n cells, which is the size of the real penumbra.
    """
    if not 0.0 < sun.elevation_deg <= 90.0:
        raise ValueError(f"sun elevation must be in (0, 90] degrees, got {sun.elevation_deg}")
    h = np.asarray(height_m, dtype=np.float32)
    if sun.elevation_deg >= 89.99:
        return np.zeros(h.shape, np.float32)
    se, sn, su = sun.direction_enu()
    tan_el = su / math.hypot(se, sn)
    # Step towards the sun in raster axes (rows grow southwards).
    d_row, d_col = -sn, se
    transposed = abs(d_col) > abs(d_row)
    if transposed:
        h = np.ascontiguousarray(h.T)
        d_row, d_col = d_col, d_row
    step = 1 if d_row > 0 else -1  # rows towards the sun
    slope = d_col / abs(d_row)  # columns moved per row towards the sun, |slope| <= 1
    drop = float(gsd_m * math.hypot(1.0, slope) * tan_el)
    shift = math.floor(slope)
    frac = np.float32(slope - shift)
    n_rows, n_cols = h.shape
    out = np.empty_like(h)
    surface = np.zeros(n_cols + 2, np.float32)  # padded: 0 outside the raster
    sampled = np.empty(n_cols, np.float32)
    rows = range(n_rows - 1, -1, -1) if step > 0 else range(n_rows)
    # Column c samples the previous surface at c + slope = c + shift + frac.
    lo = 1 + shift
    src0 = slice(max(0, lo), min(n_cols + 2, lo + n_cols))
    dst0 = slice(src0.start - lo, src0.stop - lo)
    src1 = slice(max(0, lo + 1), min(n_cols + 2, lo + 1 + n_cols))
    dst1 = slice(src1.start - lo - 1, src1.stop - lo - 1)
    a = np.float32(1.0) - frac
    inv_soft = np.float32(1.0 / softness_m)
    first = True
    for r in rows:
        row = h[r]
        if first:
            out[r] = 0.0
            surface[1:-1] = row
            first = False
            continue
        sampled.fill(0.0)
        sampled[dst0] = a * surface[src0]
        sampled[dst1] += frac * surface[src1]
        sampled -= drop
        np.clip((sampled - row) * inv_soft, 0.0, 1.0, out=out[r])
        np.maximum(sampled, row, out=surface[1:-1])
    return np.ascontiguousarray(out.T) if transposed else out


def _ambient_occlusion(height_m: np.ndarray, gsd_m: float) -> np.ndarray:
    """(H, W) float32 in [1 - AO_STRENGTH, 1]: sky light left at each cell.

    A cheap sky-view term on a ~1 m grid: how far the mean height around a cell (radius
    AO_RADIUS_M) rises above it; tan-h saturates at canyons deeper than ~2x their width.
    """
    n_rows, n_cols = height_m.shape
    factor = max(1, int(round(1.0 / gsd_m)))
    small = cv2.resize(height_m, (max(1, n_cols // factor), max(1, n_rows // factor)), interpolation=cv2.INTER_AREA)
    k = 2 * int(round(AO_RADIUS_M / (gsd_m * factor))) + 1
    mean = cv2.blur(small, (k, k), borderType=cv2.BORDER_REPLICATE)
    rise = np.maximum(mean - small, 0.0)
    ao_small = 1.0 - AO_STRENGTH * np.tanh(rise / (2.0 * AO_RADIUS_M))
    return cv2.resize(ao_small.astype(np.float32), (n_cols, n_rows), interpolation=cv2.INTER_LINEAR)


def _shading(scene: Scene, sun: Sun, rows: slice, shadow: np.ndarray, ao: np.ndarray) -> np.ndarray:
    """(rows, W, 3) float32 light factor per channel for a band of rows (1.0 = flat, sunlit)."""
    h = scene.height_m
    r0, r1 = rows.start, rows.stop
    g0, g1 = max(0, r0 - 1), min(h.shape[0], r1 + 1)
    band = h[g0:g1].astype(np.float32)
    inv2 = np.float32(0.5 / scene.gsd_m)
    gx = np.zeros_like(band)
    gx[:, 1:-1] = (band[:, 2:] - band[:, :-2]) * inv2  # dh/de
    gy = np.zeros_like(band)
    gy[1:-1] = (band[:-2] - band[2:]) * inv2  # dh/dn (rows grow southwards)
    gx, gy = gx[r0 - g0:r0 - g0 + (r1 - r0)], gy[r0 - g0:r0 - g0 + (r1 - r0)]
    steep = (gx * gx + gy * gy) > MAX_SLOPE * MAX_SLOPE
    gx[steep] = 0.0
    gy[steep] = 0.0
    se, sn, su = (np.float32(v) for v in sun.direction_enu())
    # n = (-gx, -gy, 1) / |.|; lit fraction relative to a flat surface.
    ratio = (su - gx * se - gy * sn) / (np.sqrt(1.0 + gx * gx + gy * gy) * su)
    np.clip(ratio, 0.0, 1.6, out=ratio)
    direct = (1.0 - shadow[r0:r1]) * ratio
    sky = ao[r0:r1]
    out = np.empty((r1 - r0, h.shape[1], 3), np.float32)
    for c, amb in enumerate(AMBIENT_RGB):
        out[..., c] = np.float32(amb) * sky + np.float32(1.0 - amb) * direct
    return out


def render_orthophoto(
    scene: Scene,
    sun: Sun,
    appearance: Appearance | None = None,
    rng: np.random.Generator | None = None,
    *,
    blur_sigma_px: float = 0.5,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB orthophoto of the scene under `sun`, north-up on the scene's grid.

    blur_sigma_px: a camera-like Gaussian blur (0 = none) that also hides the rasteriser's
    staircase edges. appearance (optional, from appearance.py) is then applied with rng
    (a default_rng(0) when None), e.g. colour response, noise, JPEG.
    """
    h = scene.height_m
    shadow = sun_shadow(h, scene.gsd_m, sun)
    # A one-pixel blur of the shadow mask: the sun's disc makes even short shadows soft-edged.
    cv2.GaussianBlur(shadow, (0, 0), 0.8, dst=shadow)
    ao = _ambient_occlusion(h, scene.gsd_m)
    image = np.empty(scene.albedo.shape, np.uint8)
    for r0 in range(0, h.shape[0], _BAND_ROWS):
        rows = slice(r0, min(h.shape[0], r0 + _BAND_ROWS))
        light = _shading(scene, sun, rows, shadow, ao)
        light *= scene.albedo[rows]
        np.clip(light + 0.5, 0.0, 255.0, out=light)
        image[rows] = light.astype(np.uint8)
    del shadow, ao
    if blur_sigma_px > 0:
        cv2.GaussianBlur(image, (0, 0), blur_sigma_px, dst=image)
    if appearance is not None:
        from crossview_ros.sim.appearance import apply_appearance

        image = apply_appearance(image, appearance, rng if rng is not None else np.random.default_rng(0))
    return image


def capture_date(scene: Scene) -> str:
    """The scene's survey date (ISO), from scene.extra, else today's (UTC)."""
    date = scene.extra.get("capture_date")
    return str(date) if date else _dt.datetime.now(_dt.timezone.utc).date().isoformat()


def write_orthophoto(
    path: str | os.PathLike,
    image: np.ndarray,
    scene: Scene,
    *,
    compress: str = "jpeg",
    jpeg_quality: int = 90,
    tags: dict[str, Any] | None = None,
) -> Path:
    """Write `image` as a tiled (256 x 256), compressed GeoTIFF in the scene's UTM zone; atomic.

    compress: "jpeg" (JPEG-in-TIFF, YCbCr, like survey deliveries; lossy, ~1/6 of deflate's
    size) or "deflate" (lossless, horizontal predictor). The affine is the scene's
    (gsd_m, 0, origin_e_m, 0, -gsd_m, origin_n_m) and the CRS EPSG:326NN/327NN of scene.zone.
    Tags: CAPTURE_DATE (read by crossview_ros.tiles), the scene's seed/epoch/datum and any `tags` given.
    Written to a temporary name beside `path` and renamed, so a crash leaves no half file.
    """
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path = Path(path)
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"orthophoto must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if img.shape[:2] != scene.shape:
        raise ValueError(f"orthophoto is {img.shape[:2]} but the scene is {scene.shape}; render it from this scene")
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": img.shape[1], "height": img.shape[0], "count": 3, "dtype": "uint8",
        "crs": f"EPSG:{scene.zone.epsg}", "transform": Affine(*scene.transform),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }
    if compress == "jpeg":
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        profile.update(compress="JPEG", photometric="YCBCR", jpeg_quality=int(jpeg_quality))
    elif compress == "deflate":
        profile.update(compress="DEFLATE", predictor=2, zlevel=6)
    else:
        raise ValueError(f"compress must be 'jpeg' or 'deflate', got {compress!r}")
    all_tags = {"CAPTURE_DATE": capture_date(scene), "CROSSVIEW_EPOCH": str(scene.epoch)}
    for key in ("seed", "datum_lat_deg", "datum_lon_deg"):
        if key in scene.extra:
            all_tags[f"CROSSVIEW_{key.upper()}"] = str(scene.extra[key])
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.update_tags(**all_tags)
            for r0 in range(0, img.shape[0], 1024):
                r1 = min(img.shape[0], r0 + 1024)
                ds.write(np.ascontiguousarray(img[r0:r1].transpose(2, 0, 1)),
                         window=Window(0, r0, img.shape[1], r1 - r0))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

