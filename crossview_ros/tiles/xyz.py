"""An XYZ (slippy-map) tile folder as an orthophoto: `FOLDER/{z}/{x}/{y}.png|jpg|jpeg`, as tile
servers and their caches store imagery, read as one Web Mercator (EPSG:3857) raster.

One zoom level is used: the deepest present, or the one asked for. Its tiles form a mosaic spanning
the bounding box of the tiles present; absent tiles (and transparent pixels of PNG tiles) are missing
imagery, so tile-set tiles touching them are dropped like those on a GeoTIFF's nodata. Pixels are read
by windows: only the tiles a window touches are decoded, and decoded tiles are kept in a cache of
bounded size, so a city's worth of tiles never sits in memory at once. With `tms=True` rows are counted
from the south (TMS, a `{-y}` URL template) instead of from the north (XYZ, Google, OSM). The tile
maths (tile bounds in Web Mercator metres) is mercantile's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import affine
import numpy as np

from crossview_ros.tiles.config import TileSetError
from crossview_ros.tiles.sources import RasterSource, check_capture_date

log = logging.getLogger(__name__)

XYZ_PREFIX = "xyz:"  # crossview-tiles build xyz:FOLDER
TILE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_CACHE_MB = 256  # decoded tiles kept in memory: about a thousand 256 px RGB tiles


@dataclass
class XyzFolder:
    """A folder of z/x/y tiles to build a tile set from (a source of build_tile_set)."""

    path: str | os.PathLike
    zoom: int | None = None  # None: the deepest zoom present
    tms: bool = False  # rows counted from the south ({-y}, TMS) instead of from the north (XYZ)
    capture_date: str | None = None  # ISO date of the imagery; tile folders carry none
    cache_mb: float = DEFAULT_CACHE_MB


def _digits(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def _zooms(root: Path) -> list[int]:
    return sorted(z for e in os.scandir(root) if e.is_dir() and (z := _digits(e.name)) is not None)


def _scan_zoom(root: Path, zoom: int, tms: bool) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(x, y) in XYZ numbering -> (path, size, mtime_ns) of every tile of one zoom level."""
    import mercantile

    lo, hi = mercantile.minmax(zoom)
    found: dict[tuple[int, int], tuple[str, int, int]] = {}
    for xdir in sorted(os.scandir(root / str(zoom)), key=lambda e: e.name):
        x = _digits(xdir.name)
        if x is None or not xdir.is_dir():
            continue
        for entry in sorted(os.scandir(xdir.path), key=lambda e: e.name):
            stem, suffix = os.path.splitext(entry.name)
            y = _digits(stem)
            if y is None or suffix.lower() not in TILE_SUFFIXES or not entry.is_file():
                continue
            if not (lo <= x <= hi and lo <= y <= hi):
                raise TileSetError(f"{entry.path}: tile {zoom}/{x}/{y} does not exist at zoom {zoom} "
                                   f"(x and y run from {lo} to {hi})")
            key = (x, hi - y if tms else y)
            if key not in found:  # 12.png beside 12.jpg: the first by name
                stat = entry.stat()
                found[key] = (entry.path, stat.st_size, stat.st_mtime_ns)
    return found


def _decode(path: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(H, W, 3) uint8 RGB and (H, W) uint8 alpha (None when opaque), or None when undecodable."""
    import cv2

    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.dtype != np.uint8:
        raise TileSetError(f"{path}: {image.dtype} tile; XYZ tiles must be 8-bit")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2), None
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), image[:, :, 3].copy()
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None


class _TileCache:
    """Decoded tiles by (x, y), least recently used dropped beyond max_bytes."""

    def __init__(self, files: dict[tuple[int, int], tuple[str, int, int]], tile_px: int, max_bytes: float) -> None:
        self.files, self.tile_px, self.max_bytes = files, tile_px, max_bytes
        self.cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray | None] | None] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None] | None:
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        entry = self.files.get(key)
        tile = None if entry is None else _decode(entry[0])
        if entry is not None and tile is None:
            log.warning("cannot decode %s; its area counts as missing imagery", entry[0])
        if tile is not None and tile[0].shape[:2] != (self.tile_px, self.tile_px):
            raise TileSetError(f"{entry[0]} is {tile[0].shape[1]} x {tile[0].shape[0]} px; the other tiles of its "
                               f"zoom level are {self.tile_px} x {self.tile_px}")
        self.cache[key] = tile
        self.bytes += 0 if tile is None else tile[0].nbytes + (0 if tile[1] is None else tile[1].nbytes)
        while self.bytes > self.max_bytes and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.bytes -= 0 if old is None else old[0].nbytes + (0 if old[1] is None else old[1].nbytes)
        return tile


def _check_folder(folder: XyzFolder) -> tuple[Path, int]:
    """The folder and the zoom level to read; TileSetError says what is missing."""
    root = Path(folder.path)
    if not root.is_dir():
        raise TileSetError(f"XYZ tile folder {root} is not a directory")
    zooms = _zooms(root)
    if not zooms:
        raise TileSetError(f"{root} holds no zoom folders; an XYZ tile folder is laid out as {root}/z/x/y.png")
    if folder.zoom is None:
        return root, zooms[-1]
    if isinstance(folder.zoom, bool) or not isinstance(folder.zoom, (int, np.integer)) or folder.zoom not in zooms:
        raise TileSetError(f"{root} has no zoom level {folder.zoom!r}; it has {', '.join(map(str, zooms))}")
    return root, int(folder.zoom)


def open_xyz_source(folder: XyzFolder) -> RasterSource:
    """The tiles of one zoom level of an XYZ folder as a Web Mercator raster read by windows."""
    import mercantile
    from rasterio.crs import CRS

    root, zoom = _check_folder(folder)
    if not (isinstance(folder.cache_mb, (int, float)) and folder.cache_mb > 0):
        raise TileSetError(f"cache_mb must be a number > 0, got {folder.cache_mb!r}")
    files = _scan_zoom(root, zoom, bool(folder.tms))
    if not files:
        raise TileSetError(f"{root}/{zoom} holds no tiles named x/y{'|'.join(TILE_SUFFIXES)}")
    first = next((t for t in (_decode(path) for path, _, _ in files.values()) if t is not None), None)
    if first is None or first[0].shape[0] != first[0].shape[1]:
        raise TileSetError(f"{root}/{zoom}: no tile decodes as a square image")
    tile_px = int(first[0].shape[0])
    xs, ys = [k[0] for k in files], [k[1] for k in files]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    nw = mercantile.xy_bounds(x0, y0, zoom)
    res = (nw.right - nw.left) / tile_px  # projected metres per pixel, the same for every tile of a zoom
    transform = affine.Affine(res, 0.0, nw.left, 0.0, -res, nw.top)
    cache = _TileCache(files, tile_px, float(folder.cache_mb) * 2 ** 20)
    last: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def mosaic(row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels and validity of a window; the last window is kept (read, then read_mask)."""
        key = (row0, row1, col0, col1)
        if key not in last:
            image = np.zeros((3, row1 - row0, col1 - col0), np.uint8)
            valid = np.zeros((row1 - row0, col1 - col0), np.uint8)
            for ty in range(row0 // tile_px, (row1 - 1) // tile_px + 1):
                for tx in range(col0 // tile_px, (col1 - 1) // tile_px + 1):
                    tile = cache.get((x0 + tx, y0 + ty))
                    if tile is None:
                        continue
                    r0, r1 = max(row0, ty * tile_px), min(row1, (ty + 1) * tile_px)
                    c0, c1 = max(col0, tx * tile_px), min(col1, (tx + 1) * tile_px)
                    src_r, src_c = slice(r0 - ty * tile_px, r1 - ty * tile_px), slice(c0 - tx * tile_px, c1 - tx * tile_px)
                    dst_r, dst_c = slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0)
                    image[:, dst_r, dst_c] = np.moveaxis(tile[0][src_r, src_c], -1, 0)
                    valid[dst_r, dst_c] = 255 if tile[1] is None else tile[1][src_r, src_c]
            last.clear()
            last[key] = (image, valid)
        return last[key]

    listing = hashlib.sha256(repr(sorted(files.items())).encode())
    return RasterSource(
        name=f"{XYZ_PREFIX}{root.name}/{zoom}", crs=CRS.from_epsg(3857), transform=transform,
        width=(x1 - x0 + 1) * tile_px, height=(y1 - y0 + 1) * tile_px, bands=[1, 2, 3], dtype=np.dtype(np.uint8),
        nodata=None, capture_date=None if folder.capture_date is None else check_capture_date(folder.capture_date),
        fingerprint={"xyz": str(root.resolve()), "zoom": zoom, "tms": bool(folder.tms), "tiles": len(files),
                     "listing_sha256": listing.hexdigest()},
        reader=lambda *w: mosaic(*w)[0], mask_reader=lambda *w: mosaic(*w)[1],
    )
