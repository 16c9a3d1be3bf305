"""Building a tile set from orthophotos, resumably: tiles are cut into `<out>.partial/`, a rerun
with the same plan skips the finished ones, and the set is written only when all are done."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.atomic import write_bytes_atomic, write_json_atomic
from crossview_ros.tiles.config import TileSetError, TilingConfig
from crossview_ros.tiles.lattice import plan_lattice, zone_for_sources
from crossview_ros.tiles.layout import FORMAT_VERSION, PARTIAL_SUFFIX, check_replaceable, image_name, partial_dir
from crossview_ros.tiles.sources import (
    OrthoArray, RasterSource, check_capture_date, check_source_dtype, ground_resolution_m, open_array_source,
    open_path_source,
)
from crossview_ros.tiles.tile_set import TileSet
from crossview_ros.tiles.verify import verify_tile_set
from crossview_ros.tiles.warp import encode_image, warp_tile
from crossview_ros.tiles.writer import write_tile_set
from crossview_ros.tiles.xyz import XYZ_PREFIX, XyzFolder, open_xyz_source

log = logging.getLogger(__name__)

PLAN_VERSION = 1
PLAN_FILE = "plan.json"
# A source coarser than the tiles by more than this is upsampled into blurry tiles: build_tile_set warns.
COARSE_SOURCE_RATIO = 1.5
# Trailers that a completely written image ends with; used to verify tiles when resuming.
_TRAILERS = {"jpg": b"\xff\xd9", "png": b"IEND\xaeB`\x82"}


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


def _nodata_name(idx: int) -> str:
    """Marker of a planned tile that touches nodata (cut, but not kept)."""
    return f"{idx:08d}.nodata"


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


Source = str | Path | OrthoArray | XyzFolder


def _check_build_args(sources: Sequence[Source] | Source, out_dir: str | Path, config: TilingConfig | None,
                      overwrite: bool) -> tuple[list[Source], Path, TilingConfig]:
    """The sources as a list, the output path and the config, each checked before any work."""
    config = TilingConfig() if config is None else config
    if not isinstance(config, TilingConfig):
        raise TileSetError(f"config must be a TilingConfig, got {type(config).__name__}")
    config.validate()
    if isinstance(sources, (str, Path, OrthoArray, XyzFolder)):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise TileSetError("no orthophotos given; pass at least one GeoTIFF, XyzFolder or OrthoArray")
    for s in sources:
        if isinstance(s, (str, Path)) and Path(s).is_dir():
            raise TileSetError(f"{s} is a folder: give its GeoTIFFs, or xyz:{s} (XyzFolder) for z/x/y tiles")
    out = Path(out_dir)
    if out.name.endswith(PARTIAL_SUFFIX):
        raise TileSetError(f"output {out} may not end in {PARTIAL_SUFFIX} (reserved for unfinished builds)")
    check_replaceable(out, overwrite)
    return sources, out, config


def _open_source(source: Source, stack: contextlib.ExitStack) -> RasterSource:
    if isinstance(source, OrthoArray):
        return open_array_source(source)
    if isinstance(source, XyzFolder):
        return open_xyz_source(source)
    if isinstance(source, str) and source.startswith(XYZ_PREFIX):  # "xyz:FOLDER", as on the command line
        return open_xyz_source(XyzFolder(source[len(XYZ_PREFIX):]))
    return open_path_source(Path(source), stack)


def _open_sources(sources: list[Source], config: TilingConfig, stack: contextlib.ExitStack) -> list[RasterSource]:
    """Open every orthophoto; all must share pixel type and band count."""
    srcs = [_open_source(s, stack) for s in sources]
    for src in srcs:
        check_source_dtype(src, config)
    if len({(s.dtype.str, len(s.bands)) for s in srcs}) > 1:
        raise TileSetError("all orthophotos of one set must share pixel type and band count")
    return srcs


def _corners_black(src: RasterSource) -> bool:
    """Every band of the four corner pixels is 0 (what a reprojection leaves outside its footprint)."""
    w, h = src.width, src.height
    return all(not np.any(src.read(r, r + 1, c, c + 1)) for r, c in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)))


def _ground_resolutions(srcs: list[RasterSource], config: TilingConfig) -> list[float]:
    """Each source's ground metres per pixel at its centre, logged; a warning for one much coarser than the tiles."""
    out = []
    for src in srcs:
        gsd_m = max(ground_resolution_m(src))
        out.append(gsd_m)
        ratio = gsd_m / config.gsd_m
        log.info("%s: %.3f m/px on the ground at its centre (the tiles: %.3f m/px, %g m in %d px)%s", src.name,
                 gsd_m, config.gsd_m, config.tile_size_m, config.tile_px,
                 "" if src.capture_date else "; capture date unknown (--capture-date)")
        if src.nodata is None and not src.has_mask and _corners_black(src):
            log.warning(
                "%s has no nodata value or alpha band, and its four corners are black: if they are the empty "
                "corners of a reprojected raster, they are cut as imagery; mark them (gdal_edit.py -a_nodata 0 FILE, "
                "or gdalwarp -dstalpha)", src.name)
        if ratio > COARSE_SOURCE_RATIO:
            log.warning(
                "%s is %.1fx coarser than the tiles (%.3f vs %.3f m/px): the tiles upsample it and hold less detail "
                "than they promise; fine when the model's aerial input is as coarse (tile size / its input px), "
                "else use finer imagery or fewer --tile-px", src.name, ratio, gsd_m, config.gsd_m)
    return out


def _plan_record(srcs: list[RasterSource], zone: geo.UTMZone, config: TilingConfig, plan_e: np.ndarray,
                 plan_n: np.ndarray, plan_src: np.ndarray) -> dict[str, Any]:
    """What plan.json records: a partial build resumes only under an identical plan."""
    centres = hashlib.sha256(np.stack([plan_e, plan_n, plan_src.astype(np.float64)]).tobytes())
    return {
        "plan_version": PLAN_VERSION, "format_version": FORMAT_VERSION,
        "config": config.to_dict(), "zone": str(zone),
        "sources": [s.fingerprint for s in srcs], "count": int(plan_e.size),
        "centres_sha256": centres.hexdigest(),
    }


def _cut_missing_tiles(srcs: list[RasterSource], zone: geo.UTMZone, config: TilingConfig, plan_e: np.ndarray,
                       plan_n: np.ndarray, plan_src: np.ndarray, tiles_dir: Path, label: str,
                       progress: bool) -> None:
    """Cut every planned tile not already in tiles_dir (an image verified complete, or a nodata mark)."""
    from tqdm import tqdm

    fmt = config.image_format
    count = int(plan_e.size)
    present = set(os.listdir(tiles_dir))  # one listing instead of N stats on resume
    todo = [i for i in range(count) if not (
        _nodata_name(i) in present
        or (image_name(i, fmt) in present and _tile_verified(tiles_dir / image_name(i, fmt), fmt)))]
    if len(todo) < count:
        log.info("%d of %d tiles already done in %s", count - len(todo), count, tiles_dir.parent)
    with tqdm(total=count, initial=count - len(todo), disable=not progress, unit="tile",
              desc=f"tiles -> {label}") as bar:
        for idx in todo:
            image = warp_tile(srcs[plan_src[idx]], float(plan_e[idx]), float(plan_n[idx]), zone, config)
            if image is None:
                (tiles_dir / _nodata_name(idx)).touch()
            else:
                write_bytes_atomic(tiles_dir / image_name(idx, fmt), encode_image(image, config), durable=False)
            bar.update(1)


def _link_kept_images(partial: Path, count: int, fmt: str, src_names: list[str]) -> tuple[np.ndarray, Path]:
    """Plan indices of the tiles kept (free of nodata), and a directory of their images renumbered 0..K-1.

    Renumbered by hard links, so a crash from here on leaves tiles/ intact for a resume.
    """
    tiles_dir = partial / "tiles"
    present = set(os.listdir(tiles_dir))
    kept = np.array([i for i in range(count) if _nodata_name(i) not in present], dtype=np.int64)
    if kept.size == 0:
        raise TileSetError(
            f"every tile touches nodata in {src_names}; no tile lies in valid coverage"
        )
    final_images = partial / "final_images"
    if final_images.exists():
        shutil.rmtree(final_images)
    final_images.mkdir()
    for new_id, idx in enumerate(kept.tolist()):
        target = final_images / image_name(new_id, fmt)
        try:
            os.link(tiles_dir / image_name(idx, fmt), target)
        except OSError:
            shutil.copy2(tiles_dir / image_name(idx, fmt), target)
    return kept, final_images


def build_tile_set(
    sources: Sequence[Source] | Source,
    out_dir: str | Path,
    config: TilingConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    capture_date: str | None = None,
) -> Path:
    """Cut orthophotos into a tile set at out_dir; resumable; returns out_dir.

    Sources: GeoTIFF paths (any CRS), XyzFolder or "xyz:FOLDER" (z/x/y tiles, Web Mercator) or OrthoArray. Tiles: L x L
    metres, north-up on the UTM grid of the zone of the sources' centre, centres on the lattice of stride
    L * (1 - overlap) anchored to multiples of the stride, resampled to tile_px pixels by GDAL from any
    source CRS. Only tiles inside a source (and free of its missing imagery) are kept; where sources
    overlap, the first source listed wins. Each source's ground resolution is logged (a warning when it is
    much coarser than the tiles) and recorded in meta.json with its capture date (capture_date, ISO, sets
    every source's). Work goes to `<out>.partial/`; rerunning with the same plan (config + sources) skips
    tiles already written, another plan starts afresh. An existing set is only replaced with overwrite=True.
    """
    sources, out, config = _check_build_args(sources, out_dir, config, overwrite)
    date = None if capture_date is None else check_capture_date(capture_date)
    with contextlib.ExitStack() as stack:
        srcs = _open_sources(sources, config, stack)
        for src in srcs:
            src.capture_date = date or src.capture_date
        gsds = _ground_resolutions(srcs, config)
        zone = zone_for_sources(srcs)
        plan_e, plan_n, plan_src = plan_lattice(srcs, zone, config)
        if plan_e.size == 0:
            raise TileSetError(
                f"no {config.tile_size_m:g} m tile fits inside the orthophoto(s) "
                f"{[s.name for s in srcs]}; use a smaller tile size (--tile-size-m) or larger orthophotos"
            )
        partial = partial_dir(out)
        _prepare_partial(partial, _plan_record(srcs, zone, config, plan_e, plan_n, plan_src))
        _cut_missing_tiles(srcs, zone, config, plan_e, plan_n, plan_src, partial / "tiles", out.name, progress)
        kept, final_images = _link_kept_images(partial, int(plan_e.size), config.image_format,
                                               [s.name for s in srcs])
        write_tile_set(
            out, zone=zone, easting_m=plan_e[kept], northing_m=plan_n[kept],
            tile_size_m=config.tile_size_m, tile_px=config.tile_px, overlap=config.overlap,
            sources=[{"name": s.name, "crs": s.crs.to_string(), "capture_date": s.capture_date,
                      "ground_gsd_m": round(g, 4)} for s, g in zip(srcs, gsds)],
            source_index=plan_src[kept], image_format=config.image_format, images_dir=final_images,
            overwrite=overwrite, extra_meta={"tiling": config.to_dict()},
        )
    shutil.rmtree(partial, ignore_errors=True)
    verify_tile_set(TileSet.open(out), descriptors=False).raise_if_bad()  # every image decodes as written
    log.info("wrote %d tiles to %s (zone %s), every image verified", kept.size, out, zone)
    return out
