"""Orthophotos as geo-referenced rasters read by pixel windows: GeoTIFFs in any CRS through rasterio,
in-memory arrays (OrthoArray), or XYZ tile folders (xyz.py); each checked to be north-up and of a pixel
type tiles can hold. Where imagery is missing is told by a nodata value or by a validity mask (a GeoTIFF's
alpha band or internal mask, an XYZ folder's absent tiles), and the ground resolution of each source is
measured at its centre (geodesic metres per pixel: Web Mercator's 1/cos(lat) scale included)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import re
from collections.abc import Callable
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
    """A geo-referenced raster (open GeoTIFF, OrthoArray or XYZ folder) read by pixel windows.

    Missing imagery is either pixels equal to `nodata` in every band, or, with `mask_reader`, pixels
    whose mask is 0 (mask_reader(row0, row1, col0, col1) -> (h, w) uint8, 0 = missing, 255 = valid).
    """

    def __init__(self, *, name: str, crs: Any, transform: affine.Affine, width: int, height: int,
                 bands: list[int], dtype: np.dtype, nodata: float | None, capture_date: str | None,
                 fingerprint: dict[str, Any], reader: Any,
                 mask_reader: Callable[[int, int, int, int], np.ndarray] | None = None) -> None:
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
        self._mask_reader = mask_reader

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Pixels [row0:row1, col0:col1] as (bands, h, w)."""
        return self._reader(row0, row1, col0, col1)

    @property
    def has_mask(self) -> bool:
        """Missing imagery is told by a validity mask (read_mask), not by a nodata value."""
        return self._mask_reader is not None

    def read_mask(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Validity of pixels [row0:row1, col0:col1] as (h, w) uint8: 0 missing, 255 valid."""
        if self._mask_reader is None:
            return np.full((row1 - row0, col1 - col0), 255, np.uint8)
        return self._mask_reader(row0, row1, col0, col1)

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
    from rasterio.enums import MaskFlags
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

    def read_mask(row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return ds.dataset_mask(window=Window(col0, row0, col1 - col0, row1 - row0))

    # A nodata value tells missing pixels by itself; without one, an alpha band (gdalwarp -dstalpha) or
    # an internal mask does: unread, the empty corners of a reprojected raster would be cut as black imagery.
    flags = ds.mask_flag_enums[bands[0] - 1]
    masked = ds.nodata is None and (MaskFlags.alpha in flags or MaskFlags.per_dataset in flags)
    return RasterSource(
        name=path.name, crs=ds.crs, transform=transform, width=ds.width, height=ds.height,
        bands=bands, dtype=np.dtype(dtypes.pop()), nodata=ds.nodata,
        capture_date=tiff_capture_date(tags),
        fingerprint={"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        reader=read, mask_reader=read_mask if masked else None,
    )


_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def check_capture_date(text: str) -> str:
    """An ISO capture date (YYYY-MM-DD, YYYY-MM or YYYY), stripped; TileSetError for anything else."""
    value = str(text).strip()
    m = _DATE_RE.match(value)
    try:
        if m is None:
            raise ValueError
        datetime.date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
    except ValueError:
        raise TileSetError(f"capture date must be YYYY-MM-DD, YYYY-MM or YYYY, got {text!r}") from None
    return value


def tiff_capture_date(tags: dict[str, str]) -> str | None:
    """The capture date a GeoTIFF states: its CAPTURE_DATE tag (as written), else the date part of
    TIFFTAG_DATETIME ("YYYY:MM:DD HH:MM:SS", often the processing date: --capture-date overrides it)."""
    if tags.get("CAPTURE_DATE"):
        return str(tags["CAPTURE_DATE"]).strip()
    stamp = str(tags.get("TIFFTAG_DATETIME") or "").strip()
    m = re.match(r"^(\d{4}):(\d{2}):(\d{2})", stamp)
    return f"{m[1]}-{m[2]}-{m[3]}" if m else (stamp or None)


def ground_resolution_m(src: RasterSource) -> tuple[float, float]:
    """Geodesic ground metres per pixel (along a row, along a column) at the raster's centre.

    Measured through the source's CRS, so a Web Mercator raster's 1/cos(lat) scale (its pixels are
    cos(lat) times smaller on the ground than in projected metres) and a lat/lon raster's degrees are both
    accounted for.
    """
    from crossview_ros import geo

    c, r = 0.5 * src.width, 0.5 * src.height
    h = max(0.5, min(50.0, 0.25 * src.width, 0.25 * src.height))  # half-baseline in pixels
    cols = np.array([c - h, c + h, c, c])
    rows = np.array([r, r, r - h, r + h])
    T = src.transform
    lon, lat = geo.transform_points(T.a * cols + T.b * rows + T.c, T.d * cols + T.e * rows + T.f,
                                    src.crs_wkt, "EPSG:4326")
    along_row = float(geo.distance_m(lat[0], lon[0], lat[1], lon[1])) / (2 * h)
    along_col = float(geo.distance_m(lat[2], lon[2], lat[3], lon[3])) / (2 * h)
    return along_row, along_col


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
