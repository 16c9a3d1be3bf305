"""One tile: resampled by GDAL (rasterio.warp.reproject) from a window of its source, then
encoded as JPEG or PNG."""

from __future__ import annotations

import math

import affine
import numpy as np

from crossview_ros import geo
from crossview_ros.tiles.config import TileSetError, TilingConfig
from crossview_ros.tiles.lattice import tile_outline
from crossview_ros.tiles.sources import RasterSource

# Widest resampling kernel radius in source pixels (lanczos: 3); windows are padded by it.
_KERNEL_RADIUS_PX = 3


def warp_tile(src: RasterSource, e_m: float, n_m: float, zone: geo.UTMZone, config: TilingConfig
              ) -> np.ndarray | None:
    """Resample one north-up tile centred at (e_m, n_m) from a window of the source.

    Returns (tile_px, tile_px, bands) in the source dtype, or None when the tile's central square
    (config.min_inside of its side) touches missing imagery (the source's nodata, or its mask's zeros);
    outside that square, pixels beyond the imagery or on missing ones are 0 (black padding of an edge tile).
    """
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    L, px = float(config.tile_size_m), int(config.tile_px)
    gsd = L / px
    ox, oy = tile_outline(np.array([e_m]), np.array([n_m]), L)
    x, y = geo.transform_points(ox.ravel(), oy.ravel(), f"EPSG:{zone.epsg}", src.crs_wkt)
    cols, rows = src.to_pixel(x, y)
    # Downsampling widens GDAL's kernels by the scale factor; pad the window accordingly.
    scale = max(np.ptp(cols), np.ptp(rows)) / px
    pad = int(math.ceil(_KERNEL_RADIUS_PX * max(1.0, scale))) + 1
    col0 = max(0, int(math.floor(cols.min())) - pad)
    col1 = min(src.width, int(math.ceil(cols.max())) + pad)
    row0 = max(0, int(math.floor(rows.min())) - pad)
    row1 = min(src.height, int(math.ceil(rows.max())) + pad)
    window = src.read(row0, row1, col0, col1)
    dst_transform = affine.Affine(gsd, 0.0, e_m - L / 2, 0.0, -gsd, n_m + L / 2)
    options = dict(src_transform=_shift(src.transform, col0, row0), src_crs=src.crs, dst_transform=dst_transform,
                   dst_crs=CRS.from_epsg(zone.epsg), resampling=Resampling[config.resampling], num_threads=1)
    if src.has_mask:
        # The mask travels as an alpha band: GDAL weighs each source pixel by it and writes the coverage.
        full = np.iinfo(src.dtype).max
        alpha = np.clip(src.read_mask(row0, row1, col0, col1), 0, 255).astype(np.float64) * (full / 255.0)
        stack = np.concatenate([window, np.rint(alpha).astype(src.dtype)[None]])
        dst = np.zeros((stack.shape[0], px, px), dtype=src.dtype)
        reproject(source=stack, destination=dst, src_alpha=stack.shape[0], dst_alpha=stack.shape[0], **options)
        missing, dst = dst[-1] == 0, dst[:-1]
    else:
        dst = np.zeros((window.shape[0], px, px), dtype=src.dtype)
        if src.nodata is not None:
            dst.fill(src.nodata)
        reproject(source=window, destination=dst, src_nodata=src.nodata, dst_nodata=src.nodata, **options)
        missing = np.all(dst == src.nodata, axis=0) if src.nodata is not None else None
    if missing is not None:
        m = int(round(px * (1.0 - float(config.min_inside)) / 2))
        if np.any(missing[m:px - m, m:px - m]):
            return None
        dst[:, missing] = 0
    return np.moveaxis(dst, 0, -1)


def _shift(t: affine.Affine, col0: int, row0: int) -> affine.Affine:
    """Transform of a window starting at pixel (col0, row0) (t composed with a translation)."""
    return affine.Affine(t.a, t.b, t.c + t.a * col0 + t.b * row0, t.d, t.e, t.f + t.d * col0 + t.e * row0)


def encode_image(image: np.ndarray, config: TilingConfig) -> bytes:
    """A (px, px, 1 or 3) RGB tile as JPEG or PNG bytes (config.image_format); grey becomes RGB."""
    import cv2

    if image.shape[2] == 1:
        bgr = cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2BGR)
    else:
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if config.image_format == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise TileSetError(f"OpenCV failed to encode a {image.dtype} tile as {config.image_format}")
    return buf.tobytes()
