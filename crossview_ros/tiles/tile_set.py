"""An opened tile set: tile rows, images, and scope queries (tiles within a radius of a fix,
tiles covering a point), with descriptors memory-mapped beside them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from crossview_ros import geo
from crossview_ros.tiles.config import TileSetError
from crossview_ros.tiles.descriptors import open_descriptors, write_descriptor_file
from crossview_ros.tiles.layout import (
    DESCRIPTORS_FILE, IMAGES_DIR, PARTIAL_SUFFIX, REBUILD_HINT, TABLE_COLUMNS, TABLE_FILE, image_name, partial_dir,
    read_meta, require,
)
from crossview_ros.tiles.verify import check_images_present


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
            if partial_dir(path).exists():
                raise TileSetError(
                    f"{path} does not exist but {partial_dir(path).name} does: the build was "
                    "interrupted; rerun the same crossview-tiles build command to resume it"
                )
            raise TileSetError(
                f"{path} is not a directory; build a tile set with crossview-tiles build ORTHO... --out {path}")
        meta = read_meta(path)
        count = int(meta["count"])

        table_path = path / TABLE_FILE
        require(table_path.is_file(), table_path, "tile table is missing")
        try:
            pf = pq.ParquetFile(table_path)
            rows = pf.metadata.num_rows
            names = set(pf.schema_arrow.names)
            missing = [c for c in TABLE_COLUMNS if c not in names]
            require(not missing, table_path, f"columns {missing} are missing")
            require(rows == count, table_path, f"has {rows} rows but meta.json says count {count}")
            table = pf.read(columns=["tile_id", "easting_m", "northing_m", "lat_deg", "lon_deg"])
            cols = {c: table.column(c).to_numpy() for c in table.column_names}
        except (OSError, pa.ArrowException) as exc:
            raise TileSetError(f"{table_path} is unreadable ({exc}); {REBUILD_HINT}") from exc
        del table
        ids = cols["tile_id"]
        require(np.array_equal(ids, np.arange(count)), table_path, "tile_id is not 0..N-1 in row order")
        floats = {c: np.ascontiguousarray(cols[c], dtype=np.float64)
                  for c in ("easting_m", "northing_m", "lat_deg", "lon_deg")}
        for c, arr in floats.items():
            require(bool(np.all(np.isfinite(arr))), table_path, f"column {c} holds NaN or infinity")

        if meta.get("image_format") is not None:
            check_images_present(path, meta["image_format"], count)  # one listing; verify decodes them
        descriptors = open_descriptors(path, meta, mmap)
        return cls(path, meta, floats["easting_m"], floats["northing_m"],
                   floats["lat_deg"], floats["lon_deg"], descriptors)

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
        return self.path / IMAGES_DIR / image_name(i, self.image_format)

    def image(self, tile_id: int) -> np.ndarray:
        """The tile's pixels, (tile_px, tile_px, 3) RGB, uint8 (or uint16 for png)."""
        import cv2

        file = self.image_path(tile_id)
        fix = REBUILD_HINT
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
        self.meta = write_descriptor_file(self.path, self.meta, descriptors, model_hash, len(self))
        self.descriptors = np.load(self.path / DESCRIPTORS_FILE, mmap_mode="r")
