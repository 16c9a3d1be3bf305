"""Tile sets: north-up aerial tiles cut from orthophotos, stored on disk, queried by GNSS fix.

A tile set is a directory (format version 1):

    meta.json            format name and version, UTM zone, tile size, sources, descriptors stamp
    tiles.parquet        one row per tile, row i <-> tile_id i (ids are 0..N-1)
    images/              {tile_id:08d}.jpg|png (absent when the set has no images)
    descriptors.f16.npy  optional (N, D) float16, L2-normalised rows, memory-mapped
    index.faiss          optional, written by crossview_ros.index

Tiles are squares of L metres, north-up on the UTM grid of one zone, centred on a lattice of
stride L * (1 - overlap) anchored to multiples of the stride. With VIGOR's 50 % overlap every
point is inside exactly four tiles: one positive (the point in its central L/2 square) and three
semi-positives (VIGOR section 3). Sets are built in `<out>.partial/` and renamed into place, so
a crash never leaves a directory that opens as a set. Projection maths lives in geo.py; raster
resampling is GDAL's (rasterio.warp.reproject), one tile at a time from a window of the source.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import affine
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from crossview_ros.atomic import write_bytes_atomic, write_json_atomic
from crossview_ros.config import check_known_keys
from crossview_ros import geo

log = logging.getLogger(__name__)

FORMAT_NAME = "crossview_ros.tile_set"
FORMAT_VERSION = 1
PLAN_VERSION = 1

META_FILE = "meta.json"
TABLE_FILE = "tiles.parquet"
IMAGES_DIR = "images"
DESCRIPTORS_FILE = "descriptors.f16.npy"
PLAN_FILE = "plan.json"
PARTIAL_SUFFIX = ".partial"

RESAMPLING_NAMES = ("nearest", "bilinear", "cubic", "average", "lanczos")
IMAGE_FORMATS = ("jpg", "png")
TABLE_COLUMNS = (
    "tile_id", "lat_deg", "lon_deg", "utm_zone", "easting_m", "northing_m",
    "size_m", "gsd_m", "source", "capture_date",
)

_MIB = 1 << 20
_REBUILD = "rebuild the set with crossview-tiles build ... --overwrite"
# Widest resampling kernel radius in source pixels (lanczos: 3); windows are padded by it.
_KERNEL_RADIUS_PX = 3
# Points per side when a footprint is traced through a projection (edges curve slightly).
_EDGE_SAMPLES = 9
# Trailers that a completely written image ends with; used to verify tiles when resuming.
_TRAILERS = {"jpg": b"\xff\xd9", "png": b"IEND\xaeB`\x82"}


# VIGOR's aerial image side: 640 px at 0.114 m. The default tile side everywhere (sim, training,
# tiles); a model records the side it was trained on in model.json, and a tile set must match it.
VIGOR_TILE_SIZE_M = 72.96


class TileSetError(RuntimeError):
    """A tile set or its inputs are unusable; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- configuration


@dataclass
class TilingConfig:
    """How orthophotos are cut into tiles; defaults reproduce VIGOR's aerial images."""

    tile_size_m: float = VIGOR_TILE_SIZE_M  # side L in metres
    tile_px: int = 640  # side in pixels; ground sampling distance = tile_size_m / tile_px
    overlap: float = 0.5  # fraction shared by neighbours; VIGOR 0.5: every point in four tiles
    image_format: str = "jpg"  # "jpg" (uint8 RGB) or "png" (lossless, keeps uint16)
    jpeg_quality: int = 95  # 1..100, only used for "jpg"
    resampling: str = "bilinear"  # nearest | bilinear | cubic | average | lanczos (GDAL names)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise TileSetError naming the first bad value."""
        L = self.tile_size_m
        if isinstance(L, bool) or not isinstance(L, (int, float)) or not math.isfinite(L) or L <= 0:
            raise TileSetError(f"tile_size_m must be a finite number > 0 (metres), got {L!r}")
        px = self.tile_px
        if isinstance(px, bool) or not isinstance(px, (int, np.integer)) or not 8 <= px <= 16384:
            raise TileSetError(f"tile_px must be an int in 8..16384, got {px!r}")
        ov = self.overlap
        if isinstance(ov, bool) or not isinstance(ov, (int, float)) or not 0.0 <= ov < 1.0:
            raise TileSetError(f"overlap must be in [0, 1) (0.5 = VIGOR), got {ov!r}")
        if self.image_format not in IMAGE_FORMATS:
            raise TileSetError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        q = self.jpeg_quality
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100:
            raise TileSetError(f"jpeg_quality must be an int in 1..100, got {q!r}")
        if self.resampling not in RESAMPLING_NAMES:
            raise TileSetError(f"resampling must be one of {RESAMPLING_NAMES}, got {self.resampling!r}")

    @property
    def gsd_m(self) -> float:
        """Ground sampling distance of the tiles, metres per pixel."""
        return float(self.tile_size_m) / int(self.tile_px)

    @property
    def stride_m(self) -> float:
        """Distance between neighbouring tile centres."""
        return float(self.tile_size_m) * (1.0 - float(self.overlap))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile_size_m": float(self.tile_size_m), "tile_px": int(self.tile_px),
            "overlap": float(self.overlap), "image_format": self.image_format,
            "jpeg_quality": int(self.jpeg_quality), "resampling": self.resampling,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TilingConfig:
        """Strict: unknown keys raise, so a typo never silently falls back to a default."""
        check_known_keys(cls, values, error=TileSetError)
        return cls(**values)


@dataclass
class OrthoArray:
    """An in-memory orthophoto: pixels plus a north-up geo-reference."""

    image: np.ndarray  # (H, W, C) or (H, W), uint8 or uint16
    transform: affine.Affine  # pixel -> CRS, north-up, no rotation or shear
    crs: Any  # anything pyproj/rasterio accepts ("EPSG:4326", pyproj.CRS, WKT)
    name: str = "array"
    capture_date: str | None = None


@dataclass(frozen=True)
class Tile:
    """One tile's row of tiles.parquet."""

    tile_id: int
    lat_deg: float
    lon_deg: float
    utm_zone: str
    easting_m: float
    northing_m: float
    size_m: float
    gsd_m: float
    source: str
    capture_date: str | None


@dataclass(frozen=True)
class Coverage:
    """A tile whose footprint contains a point, and how well it is centred on it."""

    tile_id: int
    iou: float  # IoU with the L x L square centred on the point (VIGOR's semi-positive weight)
    offset_e_m: float  # point minus tile centre, UTM grid east
    offset_n_m: float  # point minus tile centre, UTM grid north


def square_iou(dx_m: Any, dy_m: Any, size_m: float) -> Any:
    """IoU of two axis-aligned L x L squares whose centres differ by (dx, dy); 0 when disjoint."""
    L = float(size_m)
    inter = np.clip(L - np.abs(dx_m), 0.0, None) * np.clip(L - np.abs(dy_m), 0.0, None)
    return inter / (2.0 * L * L - inter)


# --------------------------------------------------------------------------- small file helpers


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace(src: Path, dst: Path) -> None:
    """os.replace, kept as one function so tests can simulate a crash between two renames."""
    os.replace(src, dst)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _is_tile_set_dir(path: Path) -> bool:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse early to clobber an existing set (without overwrite) or anything that is not a set."""
    if not out.exists():
        return
    if not overwrite:
        raise TileSetError(
            f"{out} already exists; pass overwrite=True (crossview-tiles build --overwrite) to replace it"
        )
    if not out.is_dir() or (any(out.iterdir()) and not _is_tile_set_dir(out)):
        raise TileSetError(
            f"refusing to replace {out}: it is not a tile set (no {META_FILE} of format "
            f"{FORMAT_NAME}); choose another --out or remove it yourself"
        )


def _swap_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename a finished set into place; an old set is renamed aside first, then deleted."""
    _check_replaceable(out, overwrite)
    if out.exists():
        aside = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, aside)
        os.rename(staging, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, out)
    _fsync_dir(out.parent)


def _image_name(tile_id: int, image_format: str) -> str:
    return f"{int(tile_id):08d}.{image_format}"


# --------------------------------------------------------------------------- writing a set


def _source_entry(source: Any) -> dict[str, Any]:
    if isinstance(source, str):
        return {"name": source, "crs": None, "capture_date": None}
    if isinstance(source, dict):
        unknown = set(source) - {"name", "crs", "capture_date"}
        if "name" not in source or unknown:
            raise TileSetError(f"a source entry needs 'name' (and optionally 'crs', 'capture_date'), got {source!r}")
        return {"name": str(source["name"]), "crs": source.get("crs"), "capture_date": source.get("capture_date")}
    raise TileSetError(f"sources must be names or dicts {{name, crs, capture_date}}, got {source!r}")


def _dictionary_column(values: Sequence[str | None], index: np.ndarray) -> pa.DictionaryArray:
    """Per-tile strings as a dictionary column (compact for 1 M rows); None values become nulls."""
    uniq = sorted({v for v in values if v is not None})
    code = np.array([-1 if v is None else uniq.index(v) for v in values], dtype=np.int32)
    idx = code[np.asarray(index)]
    return pa.DictionaryArray.from_arrays(
        pa.array(np.maximum(idx, 0), mask=idx < 0), pa.array(uniq, pa.string()))


def write_tile_set(
    out_dir: str | Path,
    *,
    zone: geo.UTMZone | str,
    easting_m: np.ndarray,
    northing_m: np.ndarray,
    tile_size_m: float,
    tile_px: int,
    overlap: float = 0.5,
    sources: Sequence[Any] = (),
    source_index: np.ndarray | None = None,
    capture_date: str | Sequence[str | None] | None = None,
    image_format: str | None = None,
    images_dir: str | Path | None = None,
    overwrite: bool = False,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write meta.json + tiles.parquet (+ move images_dir in) and rename the set into place.

    Tile i is centred at (easting_m[i], northing_m[i]) in `zone`; `images_dir` must hold
    {i:08d}.{image_format} for every i and is moved, not copied. `sources` are names or dicts
    {name, crs, capture_date}; `source_index[i]` says which one tile i came from. capture_date
    (one string for all tiles, or one per tile) overrides the sources' dates. Returns out_dir.
    """
    out = Path(out_dir)
    zone = geo.UTMZone.parse(zone)
    e = np.asarray(easting_m, dtype=np.float64)
    n = np.asarray(northing_m, dtype=np.float64)
    if e.ndim != 1 or e.shape != n.shape or e.size == 0:
        raise TileSetError(f"easting_m and northing_m must be equal-length 1-D arrays, got {e.shape} and {n.shape}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(n))):
        raise TileSetError("tile centres contain NaN or infinity")
    count = int(e.size)
    cfg = TilingConfig(tile_size_m=float(tile_size_m), tile_px=int(tile_px), overlap=float(overlap))
    if image_format not in (None, *IMAGE_FORMATS):
        raise TileSetError(f"image_format must be None or one of {IMAGE_FORMATS}, got {image_format!r}")
    if (image_format is None) != (images_dir is None):
        raise TileSetError("image_format and images_dir go together: give both or neither")
    _check_replaceable(out, overwrite)

    entries = [_source_entry(s) for s in sources]
    if source_index is None:
        if len(entries) > 1:
            raise TileSetError("several sources given: pass source_index (which source each tile came from)")
        src_idx = np.zeros(count, dtype=np.int32)
    else:
        src_idx = np.asarray(source_index)
        if src_idx.shape != (count,) or not np.issubdtype(src_idx.dtype, np.integer):
            raise TileSetError(f"source_index must be {count} integers, got shape {src_idx.shape}")
        if count and (src_idx.min() < 0 or src_idx.max() >= max(len(entries), 1)):
            raise TileSetError(f"source_index values must be in 0..{len(entries) - 1}")
        src_idx = src_idx.astype(np.int32)
    names = [s["name"] for s in entries] or [""]
    source_col = _dictionary_column(names, src_idx)
    if capture_date is None:
        date_col = _dictionary_column([s["capture_date"] for s in entries] or [None], src_idx)
    elif isinstance(capture_date, str):
        date_col = _dictionary_column([capture_date], np.zeros(count, np.int32))
    else:
        dates = list(capture_date)
        if len(dates) != count:
            raise TileSetError(f"capture_date must be one string or {count} of them, got {len(dates)}")
        date_col = pa.array(dates, pa.string()).dictionary_encode()

    lat, lon = geo.utm_to_latlon(e, n, zone)
    table = pa.table({
        "tile_id": pa.array(np.arange(count, dtype=np.int64)),
        "lat_deg": pa.array(np.asarray(lat, np.float64)),
        "lon_deg": pa.array(np.asarray(lon, np.float64)),
        "utm_zone": _dictionary_column([str(zone)], np.zeros(count, np.int32)),
        "easting_m": pa.array(e),
        "northing_m": pa.array(n),
        "size_m": pa.array(np.full(count, cfg.tile_size_m)),
        "gsd_m": pa.array(np.full(count, cfg.gsd_m)),
        "source": source_col,
        "capture_date": date_col,
    })

    staging = _partial_dir(out) / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    if images_dir is not None:
        images = Path(images_dir)
        present = set(os.listdir(images)) if images.is_dir() else set()
        missing = [i for i in range(count) if _image_name(i, image_format) not in present]
        if missing:
            raise TileSetError(
                f"{images} lacks {len(missing)} of {count} tile images (first: "
                f"{_image_name(missing[0], image_format)})"
            )
        shutil.move(str(images), str(staging / IMAGES_DIR))
    pq.write_table(table, staging / TABLE_FILE, compression="zstd")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_utc": _utc_now(),
        "utm_zone": str(zone),
        "tile_size_m": cfg.tile_size_m,
        "tile_px": cfg.tile_px,
        "gsd_m": cfg.gsd_m,
        "overlap": cfg.overlap,
        "count": count,
        "image_format": image_format,
        "sources": entries,
        "descriptors": None,
    }
    for key, value in (extra_meta or {}).items():
        if key in meta:
            raise TileSetError(f"extra_meta may not override {key!r}")
        meta[key] = value
    # meta.json last: a staging directory without it is never mistaken for a set.
    write_json_atomic(staging / META_FILE, meta)
    _fsync_dir(staging)
    _swap_into_place(staging, out, overwrite)
    with contextlib.suppress(OSError):
        _partial_dir(out).rmdir()  # only when empty: a build may still keep its work there
    return out


# --------------------------------------------------------------------------- sources


class _Source:
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


def _open_path_source(path: Path, stack: contextlib.ExitStack) -> _Source:
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

    return _Source(
        name=path.name, crs=ds.crs, transform=transform, width=ds.width, height=ds.height,
        bands=bands, dtype=np.dtype(dtypes.pop()), nodata=ds.nodata,
        capture_date=tags.get("CAPTURE_DATE") or tags.get("TIFFTAG_DATETIME"),
        fingerprint={"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        reader=read,
    )


def _open_array_source(src: OrthoArray) -> _Source:
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

    return _Source(
        name=name, crs=crs, transform=transform, width=image.shape[1], height=image.shape[0],
        bands=bands, dtype=image.dtype, nodata=None, capture_date=src.capture_date,
        fingerprint=fingerprint, reader=read,
    )


def _check_source_dtype(src: _Source, config: TilingConfig) -> None:
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


# --------------------------------------------------------------------------- planning


def _zone_for_sources(sources: Sequence[_Source]) -> geo.UTMZone:
    """UTM zone of the centre of the sources' joint lat/lon bounding box."""
    lats, lons = [], []
    for src in sources:
        x, y = src.boundary_xy()
        lon, lat = geo.transform_points(x, y, src.crs_wkt, "EPSG:4326")
        lats += [float(np.min(lat)), float(np.max(lat))]
        lons += [float(np.min(lon)), float(np.max(lon))]
    return geo.utm_zone(0.5 * (min(lats) + max(lats)), 0.5 * (min(lons) + max(lons)))


def _tile_outline(e_m: np.ndarray, n_m: np.ndarray, size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Densified outlines of tiles centred at (e_m, n_m): arrays (M, K)."""
    t = np.linspace(-0.5, 0.5, _EDGE_SAMPLES)
    h = np.full_like(t, 0.5)
    u = np.concatenate([t, h, -t, -h]) * size_m
    v = np.concatenate([-h, t, h, -t]) * size_m
    return np.asarray(e_m)[:, None] + u[None, :], np.asarray(n_m)[:, None] + v[None, :]


def _tiles_inside(src: _Source, e_m: np.ndarray, n_m: np.ndarray, size_m: float, zone_crs: str) -> np.ndarray:
    """Which tiles lie wholly inside the source's pixel centres (so resampling never runs off it)."""
    inside = np.zeros(e_m.size, dtype=bool)
    chunk = 50_000
    for start in range(0, e_m.size, chunk):
        sl = slice(start, start + chunk)
        ox, oy = _tile_outline(e_m[sl], n_m[sl], size_m)
        try:
            x, y = geo.transform_points(ox, oy, zone_crs, src.crs_wkt)
        except geo.GeoError:
            continue  # outside the source CRS's domain: certainly not inside the raster
        cols, rows = src.to_pixel(x, y)
        ok = (cols >= 0.5) & (cols <= src.width - 0.5) & (rows >= 0.5) & (rows <= src.height - 0.5)
        inside[sl] = ok.all(axis=1)
    return inside


def _plan_lattice(sources: Sequence[_Source], zone: geo.UTMZone, config: TilingConfig
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile centres (E, N) on the stride lattice, and the first source that contains each tile.

    Order: north to south, then west to east, so ids follow image reading order.
    """
    L = float(config.tile_size_m)
    s = config.stride_m
    zone_crs = f"EPSG:{zone.epsg}"
    chosen: dict[tuple[int, int], int] = {}
    for k, src in enumerate(sources):
        x, y = src.boundary_xy()
        be, bn = geo.transform_points(x, y, src.crs_wkt, zone_crs)
        i0, i1 = math.ceil((be.min() + L / 2) / s), math.floor((be.max() - L / 2) / s)
        j0, j1 = math.ceil((bn.min() + L / 2) / s), math.floor((bn.max() - L / 2) / s)
        if i1 < i0 or j1 < j0:
            continue
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
        ii, jj = ii.ravel(), jj.ravel()
        inside = _tiles_inside(src, ii * s, jj * s, L, zone_crs)
        for i, j in zip(ii[inside].tolist(), jj[inside].tolist()):
            chosen.setdefault((i, j), k)
    if not chosen:
        return np.empty(0), np.empty(0), np.empty(0, np.int32)
    keys = sorted(chosen, key=lambda ij: (-ij[1], ij[0]))
    ij = np.array(keys, dtype=np.int64)
    return ij[:, 0] * s, ij[:, 1] * s, np.array([chosen[k] for k in keys], dtype=np.int32)


# --------------------------------------------------------------------------- one tile


def _warp_tile(src: _Source, e_m: float, n_m: float, zone: geo.UTMZone, config: TilingConfig
               ) -> np.ndarray | None:
    """Resample one north-up tile centred at (e_m, n_m) from a window of the source.

    Returns (tile_px, tile_px, bands) in the source dtype, or None when the tile touches the
    source's nodata (outside its valid coverage).
    """
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    L, px = float(config.tile_size_m), int(config.tile_px)
    gsd = L / px
    ox, oy = _tile_outline(np.array([e_m]), np.array([n_m]), L)
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
    dst = np.zeros((window.shape[0], px, px), dtype=src.dtype)
    if src.nodata is not None:
        dst.fill(src.nodata)
    reproject(
        source=window,
        destination=dst,
        src_transform=_shift(src.transform, col0, row0),
        src_crs=src.crs,
        src_nodata=src.nodata,
        dst_transform=affine.Affine(gsd, 0.0, e_m - L / 2, 0.0, -gsd, n_m + L / 2),
        dst_crs=CRS.from_epsg(zone.epsg),
        dst_nodata=src.nodata,
        resampling=Resampling[config.resampling],
        num_threads=1,
    )
    if src.nodata is not None and np.any(np.all(dst == src.nodata, axis=0)):
        return None
    return np.moveaxis(dst, 0, -1)


def _shift(t: affine.Affine, col0: int, row0: int) -> affine.Affine:
    """Transform of a window starting at pixel (col0, row0) (t composed with a translation)."""
    return affine.Affine(t.a, t.b, t.c + t.a * col0 + t.b * row0, t.d, t.e, t.f + t.d * col0 + t.e * row0)


def _encode_image(image: np.ndarray, config: TilingConfig) -> bytes:
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


def _tile_verified(path: Path, image_format: str) -> bool:
    """A tile written earlier is complete: present, non-empty, ends with its format's trailer."""
    trailer = _TRAILERS[image_format]
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 64:
                return False
            f.seek(-len(trailer), os.SEEK_END)
            return f.read() == trailer
    except OSError:
        return False


# --------------------------------------------------------------------------- building


def _prepare_partial(partial: Path, plan: dict[str, Any]) -> None:
    """Keep a partial build with the same plan, restart one with another plan."""
    plan_path = partial / PLAN_FILE
    if partial.exists():
        try:
            old = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            old = None
        if old == plan:
            log.info("resuming the build in %s", partial)
            return
        log.info("%s holds a build with another plan; starting afresh", partial)
        shutil.rmtree(partial)
    (partial / "tiles").mkdir(parents=True)
    write_json_atomic(plan_path, plan)


def build_tile_set(
    sources: Sequence[str | Path | OrthoArray] | str | Path | OrthoArray,
    out_dir: str | Path,
    config: TilingConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Cut orthophotos into a tile set at out_dir; resumable; returns out_dir.

    Tiles: L x L metres, north-up on the UTM grid of the zone of the sources' centre, centres on
    the lattice of stride L * (1 - overlap) anchored to multiples of the stride, resampled to
    tile_px pixels by GDAL from any source CRS. Only tiles wholly inside a source (and free of
    its nodata) are kept; where sources overlap, the first source listed wins. Work goes to
    `<out>.partial/`; rerunning with the same plan (config + sources) skips tiles already
    written, another plan starts afresh. An existing set is only replaced with overwrite=True.
    """
    from tqdm import tqdm

    config = TilingConfig() if config is None else config
    if not isinstance(config, TilingConfig):
        raise TileSetError(f"config must be a TilingConfig, got {type(config).__name__}")
    config.validate()
    if isinstance(sources, (str, Path, OrthoArray)):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise TileSetError("no orthophotos given; pass at least one GeoTIFF or OrthoArray")
    out = Path(out_dir)
    if out.name.endswith(PARTIAL_SUFFIX):
        raise TileSetError(f"output {out} may not end in {PARTIAL_SUFFIX} (reserved for unfinished builds)")
    _check_replaceable(out, overwrite)

    with contextlib.ExitStack() as stack:
        srcs = [_open_array_source(s) if isinstance(s, OrthoArray) else _open_path_source(Path(s), stack)
                for s in sources]
        for src in srcs:
            _check_source_dtype(src, config)
        if len({(s.dtype.str, len(s.bands)) for s in srcs}) > 1:
            raise TileSetError("all orthophotos of one set must share pixel type and band count")
        zone = _zone_for_sources(srcs)
        plan_e, plan_n, plan_src = _plan_lattice(srcs, zone, config)
        if plan_e.size == 0:
            raise TileSetError(
                f"no {config.tile_size_m:g} m tile fits inside the orthophoto(s) "
                f"{[s.name for s in srcs]}; use a smaller tile size (--tile-size-m) or larger orthophotos"
            )
        centres = hashlib.sha256(np.stack([plan_e, plan_n, plan_src.astype(np.float64)]).tobytes())
        plan = {
            "plan_version": PLAN_VERSION, "format_version": FORMAT_VERSION,
            "config": config.to_dict(), "zone": str(zone),
            "sources": [s.fingerprint for s in srcs], "count": int(plan_e.size),
            "centres_sha256": centres.hexdigest(),
        }
        partial = _partial_dir(out)
        _prepare_partial(partial, plan)
        tiles_dir = partial / "tiles"
        fmt = config.image_format
        count = int(plan_e.size)

        def image_path(idx: int) -> Path:
            return tiles_dir / _image_name(idx, fmt)

        def nodata_path(idx: int) -> Path:
            return tiles_dir / f"{idx:08d}.nodata"

        present = set(os.listdir(tiles_dir))  # one listing instead of N stats on resume
        todo = [i for i in range(count) if not (
            nodata_path(i).name in present
            or (image_path(i).name in present and _tile_verified(image_path(i), fmt)))]
        if len(todo) < count:
            log.info("%d of %d tiles already done in %s", count - len(todo), count, partial)
        with tqdm(total=count, initial=count - len(todo), disable=not progress, unit="tile",
                  desc=f"tiles -> {out.name}") as bar:
            for idx in todo:
                image = _warp_tile(srcs[plan_src[idx]], float(plan_e[idx]), float(plan_n[idx]), zone, config)
                if image is None:
                    nodata_path(idx).touch()
                else:
                    write_bytes_atomic(image_path(idx), _encode_image(image, config), durable=False)
                bar.update(1)

        present = set(os.listdir(tiles_dir))
        kept = np.array([i for i in range(count) if nodata_path(i).name not in present], dtype=np.int64)
        if kept.size == 0:
            raise TileSetError(
                f"every tile touches nodata in {[s.name for s in srcs]}; no tile lies in valid coverage"
            )
        # Renumber by hard links, so a crash from here on leaves tiles/ intact for a resume.
        final_images = partial / "final_images"
        if final_images.exists():
            shutil.rmtree(final_images)
        final_images.mkdir()
        for new_id, idx in enumerate(kept.tolist()):
            target = final_images / _image_name(new_id, fmt)
            try:
                os.link(image_path(idx), target)
            except OSError:
                shutil.copy2(image_path(idx), target)
        write_tile_set(
            out, zone=zone, easting_m=plan_e[kept], northing_m=plan_n[kept],
            tile_size_m=config.tile_size_m, tile_px=config.tile_px, overlap=config.overlap,
            sources=[{"name": s.name, "crs": s.crs.to_string(), "capture_date": s.capture_date} for s in srcs],
            source_index=plan_src[kept], image_format=fmt, images_dir=final_images,
            overwrite=overwrite, extra_meta={"tiling": config.to_dict()},
        )
    shutil.rmtree(partial, ignore_errors=True)
    log.info("wrote %d tiles to %s (zone %s)", kept.size, out, zone)
    return out


# --------------------------------------------------------------------------- reading a set


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return shape, fortran, dtype, f.tell()


def descriptor_fingerprint(path: str | Path) -> str:
    """Cheap fingerprint of a descriptors file: sha256 of its size, .npy header, first and last MiB.

    It catches a file swapped without meta.json (a crash between the two renames of
    write_descriptors, another model's file copied in), not bit rot in the middle of big files.
    """
    path = Path(path)
    _, _, _, offset = _npy_header(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(offset))
        h.update(f.read(_MIB))
        tail = max(offset + _MIB, size - _MIB)
        if tail < size:
            f.seek(tail)
            h.update(f.read())
    return "sha256-headtail:" + h.hexdigest()


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise TileSetError(f"{path}: {what}; {_REBUILD}")


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise TileSetError(
            f"{meta_path} is missing: {path} is not a (finished) tile set; "
            "build one with crossview-tiles build ORTHO... --out DIR"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise TileSetError(f"{meta_path} is not valid JSON ({exc}); {_REBUILD}") from exc
    _require(isinstance(meta, dict) and meta.get("format") == FORMAT_NAME, meta_path,
             f"not a tile set meta file (format is not {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise TileSetError(
            f"{meta_path}: tile set format_version {version!r}, but this crossview_ros reads "
            f"format_version {FORMAT_VERSION}; {_REBUILD}"
        )
    for key, kind in (("tile_size_m", (int, float)), ("tile_px", int), ("gsd_m", (int, float)),
                      ("count", int), ("overlap", (int, float)), ("utm_zone", str), ("sources", list)):
        _require(isinstance(meta.get(key), kind) and not isinstance(meta.get(key), bool), meta_path,
                 f"field {key!r} is missing or has the wrong type ({meta.get(key)!r})")
    _require(meta["tile_size_m"] > 0 and meta["tile_px"] > 0 and meta["count"] > 0, meta_path,
             "tile_size_m, tile_px and count must be positive")
    _require(abs(meta["gsd_m"] * meta["tile_px"] - meta["tile_size_m"]) < 1e-6 * meta["tile_size_m"],
             meta_path, "gsd_m * tile_px != tile_size_m")
    _require(meta.get("image_format") in (None, *IMAGE_FORMATS), meta_path,
             f"image_format must be null or one of {IMAGE_FORMATS}")
    try:
        geo.UTMZone.parse(meta["utm_zone"])
    except geo.GeoError as exc:
        raise TileSetError(f"{meta_path}: bad utm_zone: {exc}") from exc
    desc = meta.get("descriptors")
    if desc is not None:
        _require(isinstance(desc, dict) and isinstance(desc.get("model_hash"), str)
                 and isinstance(desc.get("dim"), int) and desc["dim"] > 0
                 and isinstance(desc.get("fingerprint"), str), meta_path,
                 "'descriptors' must be null or {model_hash, dim, count, dtype, fingerprint}")
    return meta


class TileSet:
    """An opened tile set: centres in memory with a KD-tree, descriptors memory-mapped.

    Scope distances are UTM grid distances in the set's zone. Grid and geodesic distance differ
    by the point scale factor (0.9996 .. 1.001 inside a zone: under 0.1 %, 0.2 m at 200 m;
    about 0.4 % 6 deg outside it), negligible against GNSS errors of tens of metres.
    """

    def __init__(self, path: Path, meta: dict[str, Any], easting_m: np.ndarray,
                 northing_m: np.ndarray, lat_deg: np.ndarray, lon_deg: np.ndarray,
                 descriptors: np.ndarray | None) -> None:
        self.path = path
        self.meta = meta
        self.zone = geo.UTMZone.parse(meta["utm_zone"])
        self.tile_size_m = float(meta["tile_size_m"])
        self.tile_px = int(meta["tile_px"])
        self.gsd_m = float(meta["gsd_m"])
        self.image_format: str | None = meta.get("image_format")
        self.easting_m = easting_m
        self.northing_m = northing_m
        self.lat_deg = lat_deg
        self.lon_deg = lon_deg
        self.descriptors = descriptors
        self._tree = cKDTree(np.column_stack([easting_m, northing_m]), leafsize=32,
                             balanced_tree=False, compact_nodes=False)
        self._lat_range = (float(lat_deg.min()), float(lat_deg.max()))
        self._lon_range = (float(lon_deg.min()), float(lon_deg.max()))
        self._strings: pa.Table | None = None

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | Path, *, mmap: bool = True) -> TileSet:
        """Open and validate a tile set; TileSetError names the bad file and how to fix it."""
        path = Path(path)
        if path.name.endswith(PARTIAL_SUFFIX) or path.parent.name.endswith(PARTIAL_SUFFIX):
            raise TileSetError(
                f"{path} is an unfinished build, not a tile set; rerun the same crossview-tiles "
                "build command to resume it"
            )
        if not path.is_dir():
            if _partial_dir(path).exists():
                raise TileSetError(
                    f"{path} does not exist but {_partial_dir(path).name} does: the build was "
                    "interrupted; rerun the same crossview-tiles build command to resume it"
                )
            raise TileSetError(
                f"{path} is not a directory; build a tile set with crossview-tiles build ORTHO... --out {path}")
        meta = _read_meta(path)
        count = int(meta["count"])

        table_path = path / TABLE_FILE
        _require(table_path.is_file(), table_path, "tile table is missing")
        try:
            pf = pq.ParquetFile(table_path)
            rows = pf.metadata.num_rows
            names = set(pf.schema_arrow.names)
            missing = [c for c in TABLE_COLUMNS if c not in names]
            _require(not missing, table_path, f"columns {missing} are missing")
            _require(rows == count, table_path, f"has {rows} rows but meta.json says count {count}")
            table = pf.read(columns=["tile_id", "easting_m", "northing_m", "lat_deg", "lon_deg"])
            cols = {c: table.column(c).to_numpy() for c in table.column_names}
        except (OSError, pa.ArrowException) as exc:
            raise TileSetError(f"{table_path} is unreadable ({exc}); {_REBUILD}") from exc
        del table
        ids = cols["tile_id"]
        _require(np.array_equal(ids, np.arange(count)), table_path, "tile_id is not 0..N-1 in row order")
        floats = {c: np.ascontiguousarray(cols[c], dtype=np.float64)
                  for c in ("easting_m", "northing_m", "lat_deg", "lon_deg")}
        for c, arr in floats.items():
            _require(bool(np.all(np.isfinite(arr))), table_path, f"column {c} holds NaN or infinity")

        if meta.get("image_format") is not None:
            images = path / IMAGES_DIR
            _require(images.is_dir(), images, "image directory is missing")
        descriptors = cls._open_descriptors(path, meta, mmap)
        return cls(path, meta, floats["easting_m"], floats["northing_m"],
                   floats["lat_deg"], floats["lon_deg"], descriptors)

    @staticmethod
    def _open_descriptors(path: Path, meta: dict[str, Any], mmap: bool) -> np.ndarray | None:
        desc = meta.get("descriptors")
        file = path / DESCRIPTORS_FILE
        if desc is None:
            if file.exists():
                log.warning("%s exists but meta.json lists no descriptors (interrupted "
                            "write_descriptors?); ignoring it", file)
            return None
        fix = "recompute the descriptors (TileSet.write_descriptors) for this set"
        if not file.is_file():
            raise TileSetError(f"{file} is missing but meta.json lists descriptors; {fix}")
        count, dim = int(meta["count"]), int(desc["dim"])
        if desc.get("dtype") != "float16" or desc.get("count") != count:
            raise TileSetError(f"{path / META_FILE}: descriptors must be float16 with count {count}; {fix}")
        try:
            shape, fortran, dtype, offset = _npy_header(file)
        except (OSError, ValueError) as exc:
            raise TileSetError(f"{file} is not a readable .npy file ({exc}); {fix}") from exc
        if shape != (count, dim) or dtype != np.dtype("<f2") or fortran:
            raise TileSetError(
                f"{file} holds {dtype} {shape}{' (Fortran order)' if fortran else ''}, meta.json says "
                f"float16 ({count}, {dim}); {fix}"
            )
        if file.stat().st_size != offset + count * dim * 2:
            raise TileSetError(f"{file} is truncated or padded ({file.stat().st_size} bytes); {fix}")
        if descriptor_fingerprint(file) != desc["fingerprint"]:
            raise TileSetError(
                f"{file} does not match the fingerprint in meta.json (interrupted write_descriptors, "
                f"or a file from another run); {fix}"
            )
        if mmap:
            return np.load(file, mmap_mode="r")
        arr = np.load(file)
        arr.flags.writeable = False
        return arr

    # ----------------------------------------------------------------- tiles

    def __len__(self) -> int:
        return int(self.easting_m.size)

    def __repr__(self) -> str:
        return f"TileSet({str(self.path)!r}, {len(self)} tiles, zone {self.zone}, {self.tile_size_m:g} m)"

    @property
    def model_hash(self) -> str | None:
        """Hash of the model that produced the descriptors, or None without descriptors."""
        desc = self.meta.get("descriptors")
        return None if desc is None else desc["model_hash"]

    def _check_id(self, tile_id: int) -> int:
        i = int(tile_id)
        if i != tile_id or not 0 <= i < len(self):
            raise IndexError(f"tile id {tile_id!r} out of range 0..{len(self) - 1}")
        return i

    def tile(self, tile_id: int) -> Tile:
        """The tile's full row (string columns are read on first use)."""
        i = self._check_id(tile_id)
        if self._strings is None:
            self._strings = pq.read_table(self.path / TABLE_FILE,
                                          columns=["utm_zone", "size_m", "gsd_m", "source", "capture_date"])
        row = {c: self._strings.column(c)[i].as_py() for c in self._strings.column_names}
        return Tile(
            tile_id=i, lat_deg=float(self.lat_deg[i]), lon_deg=float(self.lon_deg[i]),
            utm_zone=str(row["utm_zone"]), easting_m=float(self.easting_m[i]),
            northing_m=float(self.northing_m[i]), size_m=float(row["size_m"]),
            gsd_m=float(row["gsd_m"]), source=str(row["source"]), capture_date=row["capture_date"],
        )

    def image_path(self, tile_id: int) -> Path:
        """Where the tile's image lives; TileSetError when the set has no images."""
        i = self._check_id(tile_id)
        if self.image_format is None:
            raise TileSetError(f"{self.path} has no tile images (built without images)")
        return self.path / IMAGES_DIR / _image_name(i, self.image_format)

    def image(self, tile_id: int) -> np.ndarray:
        """The tile's pixels, (tile_px, tile_px, 3) RGB, uint8 (or uint16 for png)."""
        import cv2

        file = self.image_path(tile_id)
        fix = _REBUILD
        if not file.is_file():
            raise TileSetError(f"tile image {file} is missing; {fix}")
        image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise TileSetError(f"tile image {file} is corrupt (cannot be decoded); {fix}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        image = np.ascontiguousarray(image[:, :, 2::-1])
        if image.shape != (self.tile_px, self.tile_px, 3):
            raise TileSetError(
                f"tile image {file} is {image.shape}, expected ({self.tile_px}, {self.tile_px}, 3); {fix}")
        return image

    # ----------------------------------------------------------------- queries

    def _far_from_coverage(self, lat_deg: float, lon_deg: float, radius_m: float) -> bool:
        """True when the fix is certainly farther than radius_m from every tile centre.

        Cheap lat/lon box test (conservative by 1 km plus a tile) that also keeps fixes from
        other continents away from the zone's projection, which refuses them.
        """
        margin_m = radius_m + self.tile_size_m + 1000.0
        dlat = margin_m / 110_000.0
        lo, hi = self._lat_range
        if not lo - dlat <= lat_deg <= hi + dlat:
            return True
        max_lat = min(89.0, max(abs(lo), abs(hi)) + dlat)
        dlon = margin_m / (111_000.0 * math.cos(math.radians(max_lat)))
        if dlon >= 180.0:
            return False
        lon_lo, lon_hi = self._lon_range
        gaps = [max(lon_lo - v, v - lon_hi, 0.0) for v in (lon_deg - 360.0, lon_deg, lon_deg + 360.0)]
        return min(gaps) > dlon

    @staticmethod
    def _check_radius(radius_m: float) -> float:
        r = float(radius_m)
        if not (math.isfinite(r) and r >= 0.0):
            raise ValueError(f"radius_m must be a finite number >= 0, got {radius_m!r}")
        return r

    def tiles_within_utm(self, easting_m: float, northing_m: float, radius_m: float) -> np.ndarray:
        """Ids (ascending int64) of tiles whose centre is within radius_m (grid distance, <=)."""
        r = self._check_radius(radius_m)
        e, n = float(easting_m), float(northing_m)
        if not (math.isfinite(e) and math.isfinite(n)):
            raise ValueError(f"easting/northing must be finite, got ({easting_m!r}, {northing_m!r})")
        ids = self._tree.query_ball_point((e, n), r, return_sorted=True)
        return np.asarray(ids, dtype=np.int64)

    def tiles_within(self, lat_deg: float, lon_deg: float, radius_m: float) -> np.ndarray:
        """Ids (ascending int64) of tiles whose centre is within radius_m of the fix.

        Invalid lat/lon raise geo.GeoError; a fix far from the coverage gives an empty array.
        """
        geo.check_latlon(lat_deg, lon_deg)
        r = self._check_radius(radius_m)
        if self._far_from_coverage(float(lat_deg), float(lon_deg), r):
            return np.empty(0, dtype=np.int64)
        e, n, _ = geo.latlon_to_utm(float(lat_deg), float(lon_deg), zone=self.zone)
        return self.tiles_within_utm(e, n, r)

    def tiles_covering_utm(self, easting_m: float, northing_m: float) -> list[Coverage]:
        """Tiles whose footprint [E - L/2, E + L/2) x [N - L/2, N + L/2) holds the point.

        Half-open footprints make every interior point belong to exactly four tiles at 50 %
        overlap. Sorted by IoU with the square centred on the point, descending; ties by id.
        """
        e, n = float(easting_m), float(northing_m)
        if not (math.isfinite(e) and math.isfinite(n)):
            raise ValueError(f"easting/northing must be finite, got ({easting_m!r}, {northing_m!r})")
        half = 0.5 * self.tile_size_m
        ids = np.asarray(self._tree.query_ball_point((e, n), half, p=np.inf), dtype=np.int64)
        dx = e - self.easting_m[ids]
        dy = n - self.northing_m[ids]
        keep = (dx >= -half) & (dx < half) & (dy >= -half) & (dy < half)
        ids, dx, dy = ids[keep], dx[keep], dy[keep]
        iou = square_iou(dx, dy, self.tile_size_m)
        order = np.lexsort((ids, -iou))
        return [Coverage(int(ids[k]), float(iou[k]), float(dx[k]), float(dy[k])) for k in order]

    def tiles_covering(self, lat_deg: float, lon_deg: float) -> list[Coverage]:
        """Tiles whose footprint holds the fix, best-centred first (see tiles_covering_utm)."""
        geo.check_latlon(lat_deg, lon_deg)
        if self._far_from_coverage(float(lat_deg), float(lon_deg), 0.0):
            return []
        e, n, _ = geo.latlon_to_utm(float(lat_deg), float(lon_deg), zone=self.zone)
        return self.tiles_covering_utm(e, n)

    # ----------------------------------------------------------------- descriptors

    def write_descriptors(self, descriptors: np.ndarray, model_hash: str) -> None:
        """Store (N, D) descriptors, L2-normalised, as float16, and stamp meta.json with the model.

        Atomic: the .npy and the new meta.json are written to temporary names and renamed, the
        .npy first; a crash between the renames is caught at open by the fingerprint.
        Refuses (ValueError) a wrong row count, non-finite values and all-zero rows.
        """
        if not isinstance(model_hash, str) or not model_hash.strip():
            raise ValueError(f"model_hash must be a non-empty string, got {model_hash!r}")
        arr = descriptors
        if not hasattr(arr, "shape") or len(arr.shape) != 2:
            raise ValueError(f"descriptors must be a 2-D array (N, D), got shape {getattr(arr, 'shape', None)}")
        count, dim = int(arr.shape[0]), int(arr.shape[1])
        if count != len(self) or dim < 1:
            raise ValueError(
                f"descriptors have shape {arr.shape}; this set needs ({len(self)}, D>=1), one row per tile id")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"descriptors must be numeric, got dtype {arr.dtype}")
        tmp = self.path / f".{DESCRIPTORS_FILE}.tmp-{os.getpid()}"
        meta_tmp = self.path / f".{META_FILE}.tmp-{os.getpid()}"
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, dim))
            chunk = max(1, (32 * _MIB) // (8 * dim))
            for start in range(0, count, chunk):
                block = np.asarray(arr[start:start + chunk], dtype=np.float64)
                if not np.all(np.isfinite(block)):
                    bad = start + int(np.argmax(~np.all(np.isfinite(block), axis=1)))
                    raise ValueError(f"descriptor row {bad} holds NaN or infinity")
                norm = np.linalg.norm(block, axis=1, keepdims=True)
                if np.any(norm == 0.0):
                    bad = start + int(np.argmin(norm))
                    raise ValueError(f"descriptor row {bad} is all zeros (cannot be normalised)")
                out[start:start + chunk] = block / norm
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            meta = dict(self.meta)
            meta["descriptors"] = {
                "model_hash": model_hash, "dim": dim, "count": count, "dtype": "float16",
                "fingerprint": descriptor_fingerprint(tmp),
            }
            with open(meta_tmp, "wb") as f:
                f.write((json.dumps(meta, indent=2) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
            _replace(tmp, self.path / DESCRIPTORS_FILE)
            _replace(meta_tmp, self.path / META_FILE)
            _fsync_dir(self.path)
        finally:
            for leftover in (tmp, meta_tmp):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        self.meta = meta
        self.descriptors = np.load(self.path / DESCRIPTORS_FILE, mmap_mode="r")
