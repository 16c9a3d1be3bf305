"""The on-disk layout of a tile set (file names, format version, meta.json) and the small file
steps that every writer and reader of a set shares (partial directories, safe replacement)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Any

from crossview_ros import geo
from crossview_ros.tiles.config import IMAGE_FORMATS, TileSetError

FORMAT_NAME = "crossview_ros.tile_set"
FORMAT_VERSION = 1

META_FILE = "meta.json"
TABLE_FILE = "tiles.parquet"
IMAGES_DIR = "images"
DESCRIPTORS_FILE = "descriptors.f16.npy"
PARTIAL_SUFFIX = ".partial"

TABLE_COLUMNS = (
    "tile_id", "lat_deg", "lon_deg", "utm_zone", "easting_m", "northing_m",
    "size_m", "gsd_m", "source", "capture_date",
)

REBUILD_HINT = "rebuild the set with crossview-tiles build ... --overwrite"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: some file systems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second, for meta.json."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def partial_dir(out: Path) -> Path:
    """`<out>.partial`, where an unfinished build of `out` keeps its work."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def is_tile_set_dir(path: Path) -> bool:
    """True when `path` holds a meta.json of this format (finished or not, valid or not)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse early to clobber an existing set (without overwrite) or anything that is not a set."""
    if not out.exists():
        return
    if not overwrite:
        raise TileSetError(
            f"{out} already exists; pass overwrite=True (crossview-tiles build --overwrite) to replace it"
        )
    if not out.is_dir() or (any(out.iterdir()) and not is_tile_set_dir(out)):
        raise TileSetError(
            f"refusing to replace {out}: it is not a tile set (no {META_FILE} of format "
            f"{FORMAT_NAME}); choose another --out or remove it yourself"
        )


def image_name(tile_id: int, image_format: str) -> str:
    """File name of a tile image: zero-padded id and format, e.g. 00000042.jpg."""
    return f"{int(tile_id):08d}.{image_format}"


def require(cond: bool, path: Path, what: str) -> None:
    """TileSetError "<path>: <what>; rebuild ..." unless `cond` holds."""
    if not cond:
        raise TileSetError(f"{path}: {what}; {REBUILD_HINT}")


def read_meta(path: Path) -> dict[str, Any]:
    """meta.json of the set at `path`, checked field by field; TileSetError says what is wrong."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise TileSetError(
            f"{meta_path} is missing: {path} is not a (finished) tile set; "
            "build one with crossview-tiles build ORTHO... --out DIR"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise TileSetError(f"{meta_path} is not valid JSON ({exc}); {REBUILD_HINT}") from exc
    require(isinstance(meta, dict) and meta.get("format") == FORMAT_NAME, meta_path,
             f"not a tile set meta file (format is not {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise TileSetError(
            f"{meta_path}: tile set format_version {version!r}, but this crossview_ros reads "
            f"format_version {FORMAT_VERSION}; {REBUILD_HINT}"
        )
    for key, kind in (("tile_size_m", (int, float)), ("tile_px", int), ("gsd_m", (int, float)),
                      ("count", int), ("overlap", (int, float)), ("utm_zone", str), ("sources", list)):
        require(isinstance(meta.get(key), kind) and not isinstance(meta.get(key), bool), meta_path,
                f"field {key!r} is missing or has the wrong type ({meta.get(key)!r})")
    require(meta["tile_size_m"] > 0 and meta["tile_px"] > 0 and meta["count"] > 0, meta_path,
             "tile_size_m, tile_px and count must be positive")
    require(abs(meta["gsd_m"] * meta["tile_px"] - meta["tile_size_m"]) < 1e-6 * meta["tile_size_m"],
             meta_path, "gsd_m * tile_px != tile_size_m")
    require(meta.get("image_format") in (None, *IMAGE_FORMATS), meta_path,
             f"image_format must be null or one of {IMAGE_FORMATS}")
    try:
        geo.UTMZone.parse(meta["utm_zone"])
    except geo.GeoError as exc:
        raise TileSetError(f"{meta_path}: bad utm_zone: {exc}") from exc
    desc = meta.get("descriptors")
    if desc is not None:
        require(isinstance(desc, dict) and isinstance(desc.get("model_hash"), str)
                and isinstance(desc.get("dim"), int) and desc["dim"] > 0
                and isinstance(desc.get("fingerprint"), str), meta_path,
                "'descriptors' must be null or {model_hash, dim, count, dtype, fingerprint}")
    return meta
