"""Writing a tile set from tile centres (and optionally finished images): tiles.parquet,
meta.json, and the rename into place that makes a set appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crossview_ros import geo
from crossview_ros.atomic import write_json_atomic
from crossview_ros.tiles.config import IMAGE_FORMATS, TileSetError, TilingConfig
from crossview_ros.tiles.layout import (
    FORMAT_NAME, FORMAT_VERSION, IMAGES_DIR, META_FILE, TABLE_FILE, check_replaceable, fsync_dir, image_name,
    partial_dir, utc_now,
)


def swap_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename a finished set into place; an old set is renamed aside first, then deleted."""
    check_replaceable(out, overwrite)
    if out.exists():
        aside = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, aside)
        os.rename(staging, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staging, out)
    fsync_dir(out.parent)


def _source_entry(source: Any) -> dict[str, Any]:
    if isinstance(source, str):
        return {"name": source, "crs": None, "capture_date": None}
    if isinstance(source, dict):
        unknown = set(source) - {"name", "crs", "capture_date", "ground_gsd_m"}
        if "name" not in source or unknown:
            raise TileSetError(f"a source entry needs 'name' (and optionally 'crs', 'capture_date', 'ground_gsd_m'), "
                               f"got {source!r}")
        entry = {"name": str(source["name"]), "crs": source.get("crs"), "capture_date": source.get("capture_date")}
        if source.get("ground_gsd_m") is not None:  # metres per pixel of the imagery at its centre
            entry["ground_gsd_m"] = float(source["ground_gsd_m"])
        return entry
    raise TileSetError(f"sources must be names or dicts {{name, crs, capture_date, ground_gsd_m}}, got {source!r}")


def _dictionary_column(values: Sequence[str | None], index: np.ndarray) -> pa.DictionaryArray:
    """Per-tile strings as a dictionary column (compact for 1 M rows); None values become nulls."""
    uniq = sorted({v for v in values if v is not None})
    code = np.array([-1 if v is None else uniq.index(v) for v in values], dtype=np.int32)
    idx = code[np.asarray(index)]
    return pa.DictionaryArray.from_arrays(
        pa.array(np.maximum(idx, 0), mask=idx < 0), pa.array(uniq, pa.string()))


def _source_columns(sources: Sequence[Any], source_index: np.ndarray | None,
                    capture_date: str | Sequence[str | None] | None, count: int
                    ) -> tuple[list[dict[str, Any]], pa.DictionaryArray, pa.Array]:
    """The checked source entries and the per-tile source and capture_date columns."""
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
    return entries, source_col, date_col


def _tile_table(zone: geo.UTMZone, e: np.ndarray, n: np.ndarray, cfg: TilingConfig,
                source_col: pa.Array, date_col: pa.Array) -> pa.Table:
    """tiles.parquet's table: one row per tile, row i <-> tile_id i."""
    count = int(e.size)
    lat, lon = geo.utm_to_latlon(e, n, zone)
    return pa.table({
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


def _move_images_in(images_dir: str | Path, image_format: str, count: int, staging: Path) -> None:
    """Move a directory holding every tile's image into the staged set (refused if one is missing)."""
    images = Path(images_dir)
    present = set(os.listdir(images)) if images.is_dir() else set()
    missing = [i for i in range(count) if image_name(i, image_format) not in present]
    if missing:
        raise TileSetError(
            f"{images} lacks {len(missing)} of {count} tile images (first: "
            f"{image_name(missing[0], image_format)})"
        )
    shutil.move(str(images), str(staging / IMAGES_DIR))


def _set_meta(zone: geo.UTMZone, cfg: TilingConfig, count: int, image_format: str | None,
              entries: list[dict[str, Any]], extra_meta: dict[str, Any] | None) -> dict[str, Any]:
    """meta.json of a new set (no descriptors yet); extra_meta adds keys but may not override one."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_utc": utc_now(),
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
    return meta


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
    check_replaceable(out, overwrite)
    entries, source_col, date_col = _source_columns(sources, source_index, capture_date, count)
    table = _tile_table(zone, e, n, cfg, source_col, date_col)

    staging = partial_dir(out) / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    if images_dir is not None:
        _move_images_in(images_dir, image_format, count, staging)
    pq.write_table(table, staging / TABLE_FILE, compression="zstd")
    meta = _set_meta(zone, cfg, count, image_format, entries, extra_meta)
    # meta.json last: a staging directory without it is never mistaken for a set.
    write_json_atomic(staging / META_FILE, meta)
    fsync_dir(staging)
    swap_into_place(staging, out, overwrite)
    with contextlib.suppress(OSError):
        partial_dir(out).rmdir()  # only when empty: a build may still keep its work there
    return out
