"""Orthophotos as geo-referenced rasters read by pixel windows: GeoTIFFs through rasterio, or
in-memory arrays (OrthoArray); each checked to be north-up and of a pixel type tiles can hold."""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import affine
import numpy as np

from crossview_ros.tiles.config import TileSetError, TilingConfig


@dataclass
class OrthoArray:
    """An in-memory orthophoto: pixels plus a north-up geo-reference."""

    image: np.ndarray  # (H, W, C) or (H, W), uint8 or uint16
    transform: affine.Affine  # pixel -> CRS, north-up, no rotation or shear
    crs: Any  # anything pyproj/rasterio accepts ("EPSG:4326", pyproj.CRS, WKT)
    name: str = "array"
    capture_date: str | None = None


class RasterSource:
    """A geo-referenced raster (open GeoTIFF or OrthoArray) read by pixel windows."""

    def __init__(self, *, name: str, crs: Any, transform: affine.Affine, width: int, height: int,
                 bands: list[int], dtype: np.dtype, nodata: float | None, capture_date: str | None,
                 fingerprint: dict[str, Any], reader: Any) -> None:
        self.name = name
        self.crs = crs  # rasterio CRS
        self.crs_wkt = crs.to_wkt()
        self.transform = transform
        self.width = width
        self.height = height
        self.bands = bands  # 1-based band numbers to read (1 or 3)
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.capture_date = capture_date
        self.fingerprint = fingerprint
        self._reader = reader

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Pixels [row0:row1, col0:col1] as (bands, h, w)."""
        return self._reader(row0, row1, col0, col1)

    def to_pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source CRS -> fractional (col, row); pixel (0, 0) spans [0, 1) x [0, 1)."""
        inv = ~self.transform
        return inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f

    def boundary_xy(self) -> tuple[np.ndarray, np.ndarray]:
        """The raster's outline in its CRS, densified so that it survives projection."""
        t = np.linspace(0.0, 1.0, 65)
        cols = np.concatenate([t * self.width, np.full_like(t, self.width), (1 - t) * self.width, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * self.height, np.full_like(t, self.height), (1 - t) * self.height])
        T = self.transform
        return T.a * cols + T.b * rows + T.c, T.d * cols + T.e * rows + T.f


def _check_transform(transform: Any, name: str) -> affine.Affine:
    if not isinstance(transform, affine.Affine):
        try:
            transform = affine.Affine(*tuple(transform)[:6])
        except (TypeError, ValueError) as exc:
            raise TileSetError(f"{name}: transform must be an affine.Affine, got {transform!r}") from exc
    T = transform
    if not all(math.isfinite(v) for v in (T.a, T.b, T.c, T.d, T.e, T.f)):
        raise TileSetError(f"{name}: transform has non-finite entries {tuple(T)[:6]}")
    scale = max(abs(T.a), abs(T.e))
    if scale == 0 or abs(T.b) > 1e-9 * scale or abs(T.d) > 1e-9 * scale or T.a == 0 or T.e == 0:
        raise TileSetError(
            f"{name}: geo-transform is rotated or sheared ({tuple(T)[:6]}); tiles need a north-up "
            "source: warp it first (gdalwarp -t_srs <its CRS> in.tif out.tif)"
        )
    return T


def _pick_bands(count: int, name: str) -> list[int]:
    # 1 band: grey; 2 bands: grey + alpha (alpha ignored); >= 3: the first three are RGB.
    if count >= 3:
        return [1, 2, 3]
    if count >= 1:
        return [1]
    raise TileSetError(f"{name}: raster has no bands")


def open_path_source(path: Path, stack: contextlib.ExitStack) -> RasterSource:
    """A GeoTIFF (or any raster GDAL reads) opened for the life of `stack`; TileSetError says
    what is missing (file, CRS, north-up transform, matching band types)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    if not path.is_file():
        raise TileSetError(f"orthophoto {path} does not exist")
    try:
        ds = stack.enter_context(rasterio.open(path))
    except RasterioIOError as exc:
        raise TileSetError(f"cannot read orthophoto {path}: {exc} (is it a GeoTIFF?)") from exc
    if ds.crs is None:
        raise TileSetError(
            f"{path} has no CRS; georeference it first (gdal_translate -a_srs EPSG:<code> "
            "-a_ullr <ulx> <uly> <lrx> <lry> in.tif out.tif)"
        )
    transform = _check_transform(ds.transform, str(path))
    bands = _pick_bands(ds.count, str(path))
    dtypes = {ds.dtypes[b - 1] for b in bands}
    if len(dtypes) != 1:
        raise TileSetError(f"{path}: bands {bands} have different dtypes {sorted(dtypes)}")
    tags = ds.tags()
    stat = path.stat()

    def read(row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return ds.read(bands, window=Window(col0, row0, col1 - col0, row1 - row0))

    return RasterSource(
        name=path.name, crs=ds.crs, transform=transform, width=ds.width, height=ds.height,
        bands=bands, dtype=np.dtype(dtypes.pop()), nodata=ds.nodata,
        capture_date=tags.get("CAPTURE_DATE") or tags.get("TIFFTAG_DATETIME"),
        fingerprint={"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        reader=read,
    )


def open_array_source(src: OrthoArray) -> RasterSource:
    """An OrthoArray as a source; fingerprinted by a hash of its pixels and geo-reference."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    name = src.name
    image = np.asarray(src.image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise TileSetError(f"{name}: image must be (H, W) or (H, W, C), got shape {np.shape(src.image)}")
    if src.crs is None:
        raise TileSetError(f"{name}: OrthoArray has no CRS; set crs= (e.g. 'EPSG:32633')")
    try:
        crs = CRS.from_user_input(src.crs.to_wkt() if hasattr(src.crs, "to_wkt") else src.crs)
    except CRSError as exc:
        raise TileSetError(f"{name}: cannot understand CRS {src.crs!r}: {exc}") from exc
    transform = _check_transform(src.transform, name)
    bands = _pick_bands(image.shape[2], name)
    sel = image[:, :, [b - 1 for b in bands]]
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(image).data)
    fingerprint = {
        "array_sha256": digest.hexdigest(), "shape": list(image.shape), "dtype": str(image.dtype),
        "transform": list(tuple(transform)[:6]), "crs": crs.to_wkt(),
    }

    def read(row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(sel[row0:row1, col0:col1], -1, 0))

    return RasterSource(
        name=name, crs=crs, transform=transform, width=image.shape[1], height=image.shape[0],
        bands=bands, dtype=image.dtype, nodata=None, capture_date=src.capture_date,
        fingerprint=fingerprint, reader=read,
    )


def check_source_dtype(src: RasterSource, config: TilingConfig) -> None:
    """uint8 for any format, uint16 only for png; anything else raises TileSetError."""
    if src.dtype == np.uint8:
        return
    if src.dtype == np.uint16:
        if config.image_format != "png":
            raise TileSetError(f"{src.name}: uint16 pixels need image_format 'png' (--format png); JPEG is 8-bit")
        return
    raise TileSetError(
        f"{src.name}: pixel type {src.dtype} is not supported; convert to uint8 or uint16 "
        "(gdal_translate -ot Byte -scale in.tif out.tif)"
    )
