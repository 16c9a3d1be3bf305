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
a crash never leaves a directory that opens as a set. Projection maths lives in geo; raster
resampling is GDAL's (rasterio.warp.reproject), one tile at a time from a window of the source.

Modules: config (TilingConfig, VIGOR_TILE_SIZE_M, TileSetError), layout (file names, meta.json,
shared file steps), writer (write_tile_set), sources (orthophotos as rasters: GeoTIFFs in any CRS, arrays;
their ground resolution and capture date), xyz (z/x/y tile folders as Web Mercator rasters), lattice (zone and
tile centres), warp (one tile resampled and encoded), cutting (build_tile_set, resumable),
descriptors (descriptors.f16.npy), tile_set (TileSet: opening and queries), verify (the cheap
check at open, the full one after a build or an encode and in `crossview-tiles verify`). The names below are
the package's interface: `from crossview_ros.tiles import X`.
"""

from crossview_ros.tiles.config import (
    IMAGE_FORMATS, RESAMPLING_NAMES, VIGOR_TILE_SIZE_M, TileSetError, TilingConfig, min_inside_for,
)
from crossview_ros.tiles.cutting import PLAN_FILE, PLAN_VERSION, build_tile_set
from crossview_ros.tiles.descriptors import descriptor_fingerprint
from crossview_ros.tiles.layout import (
    DESCRIPTORS_FILE, FORMAT_NAME, FORMAT_VERSION, IMAGES_DIR, META_FILE, PARTIAL_SUFFIX, TABLE_COLUMNS, TABLE_FILE,
)
from crossview_ros.tiles.sources import OrthoArray, ground_resolution_m
from crossview_ros.tiles.tile_set import Coverage, Tile, TileSet, square_iou
from crossview_ros.tiles.verify import VerifyReport, verify_tile_set
from crossview_ros.tiles.writer import write_tile_set
from crossview_ros.tiles.xyz import XYZ_PREFIX, XyzFolder

__all__ = [
    "DESCRIPTORS_FILE", "FORMAT_NAME", "FORMAT_VERSION", "IMAGES_DIR", "IMAGE_FORMATS", "META_FILE",
    "PARTIAL_SUFFIX", "PLAN_FILE", "PLAN_VERSION", "RESAMPLING_NAMES", "TABLE_COLUMNS", "TABLE_FILE",
    "VIGOR_TILE_SIZE_M", "Coverage", "OrthoArray", "Tile", "TileSet", "TileSetError", "TilingConfig", "min_inside_for",
    "VerifyReport", "XYZ_PREFIX", "XyzFolder", "build_tile_set", "descriptor_fingerprint", "ground_resolution_m",
    "square_iou", "verify_tile_set", "write_tile_set",
]
