"""Test orthophotos whose pixels encode their own coordinates, to check tiling end to end.

kind "coords" (encoding "coords-u16-v1"): three uint16 bands,
    band 1 = round(65535 * (x - x_min) / (x_max - x_min))   x of the pixel centre, source CRS
    band 2 = round(65535 * (y - y_min) / (y_max - y_min))   y of the pixel centre, source CRS
    band 3 = MARKER (constant), to check that band order and values survive storage
with (x_min, x_max, y_min, y_max) = the raster's bounds, stored as GeoTIFF tags. Any resampled
pixel decodes back to a position (CoordinateEncoding.decode): coordinates are linear across the
raster, so nearest or bilinear resampling keeps a pixel's centre decodable to within the
quantisation step (extent / 65535: 1.5 cm per km) plus the warper's approximation. Tile sets
keep these losslessly as 16-bit PNG (TilingConfig(image_format="png")).

kind "rgb": uint8 RGB that looks like something (red = x ramp, green = y ramp, blue = checker of
checker_m metres), so a demo tile set gives viewable JPEG tiles.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossview_ros import geo

ENCODING = "coords-u16-v1"
MARKER = 4242
_FULL = 65535
_TAG_PREFIX = "CROSSVIEW_"
KINDS = ("coords", "rgb")


@dataclass(frozen=True)
class CoordinateEncoding:
    """How a "coords" raster maps its band 1/2 values to x/y in its CRS."""

    crs: str  # the raster's CRS (EPSG code or WKT); decoded x/y are in it
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def encode(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        u = np.rint(_FULL * (np.asarray(x, np.float64) - self.x_min) / (self.x_max - self.x_min))
        v = np.rint(_FULL * (np.asarray(y, np.float64) - self.y_min) / (self.y_max - self.y_min))
        return np.clip(u, 0, _FULL).astype(np.uint16), np.clip(v, 0, _FULL).astype(np.uint16)

    def decode(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., >=2) pixel values (bands 1, 2; any dtype, may be averaged) -> (x, y) in crs."""
        p = np.asarray(pixels, dtype=np.float64)
        x = self.x_min + p[..., 0] / _FULL * (self.x_max - self.x_min)
        y = self.y_min + p[..., 1] / _FULL * (self.y_max - self.y_min)
        return x, y

    @property
    def step(self) -> tuple[float, float]:
        """Quantisation step of x and y, in CRS units."""
        return (self.x_max - self.x_min) / _FULL, (self.y_max - self.y_min) / _FULL

    def to_tags(self) -> dict[str, str]:
        return {
            f"{_TAG_PREFIX}ENCODING": ENCODING, f"{_TAG_PREFIX}CRS": self.crs,
            f"{_TAG_PREFIX}X_MIN": repr(self.x_min), f"{_TAG_PREFIX}X_MAX": repr(self.x_max),
            f"{_TAG_PREFIX}Y_MIN": repr(self.y_min), f"{_TAG_PREFIX}Y_MAX": repr(self.y_max),
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> CoordinateEncoding:
        if tags.get(f"{_TAG_PREFIX}ENCODING") != ENCODING:
            raise ValueError(f"raster is not a {ENCODING} coordinate raster (tags: {sorted(tags)})")
        return cls(
            crs=tags[f"{_TAG_PREFIX}CRS"],
            **{k: float(tags[f"{_TAG_PREFIX}{k.upper()}"]) for k in ("x_min", "x_max", "y_min", "y_max")},
        )


def read_encoding(path: str | Path) -> CoordinateEncoding:
    """The encoding of a "coords" GeoTIFF written by write_coordinate_geotiff."""
    import rasterio

    with rasterio.open(path) as ds:
        return CoordinateEncoding.from_tags(ds.tags())


def _metres_per_unit(cx: float, cy: float, dx: float, dy: float, crs: str) -> tuple[float, float]:
    """Ground metres per CRS unit along x and y at (cx, cy) (geodesic over a small step)."""
    lon, lat = geo.transform_points(np.array([cx - dx, cx + dx, cx, cx]),
                                    np.array([cy, cy, cy - dy, cy + dy]), crs, "EPSG:4326")
    mx = geo.distance_m(lat[0], lon[0], lat[1], lon[1]) / (2 * dx)
    my = geo.distance_m(lat[2], lon[2], lat[3], lon[3]) / (2 * dy)
    return float(mx), float(my)


def _bounds_around(lat_deg: float, lon_deg: float, size_m: float, crs: str) -> tuple[float, float, float, float]:
    """Bounding box in `crs` of the size_m square (local east/north) centred on the point."""
    enu = geo.LocalENU(lat_deg, lon_deg)
    t = np.linspace(-0.5, 0.5, 17) * size_m
    h = np.full_like(t, 0.5 * size_m)
    lat, lon, _ = enu.inverse(np.concatenate([t, h, -t, -h]), np.concatenate([-h, t, h, -t]))
    x, y = geo.transform_points(lon, lat, "EPSG:4326", crs)
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def write_coordinate_geotiff(
    path: str | Path,
    *,
    crs: str | int,
    gsd_m: float,
    bounds: tuple[float, float, float, float] | None = None,
    centre_lat_deg: float | None = None,
    centre_lon_deg: float | None = None,
    size_m: float | None = None,
    kind: str = "coords",
    capture_date: str | None = None,
    nodata: int | None = None,
    checker_m: float = 8.0,
) -> Path:
    """Write a tiled, deflate-compressed GeoTIFF north-up in `crs`; returns path.

    Extent: `bounds` (x_min, y_min, x_max, y_max in crs units) or a square of size_m ground
    metres centred on (centre_lat_deg, centre_lon_deg). gsd_m is ground metres per pixel at
    the centre (converted to crs units there, so EPSG:4326 and EPSG:3857 rasters come out at
    the asked ground resolution). kind "coords" or "rgb" (see the module docstring). A little over
    80 lines: the checks of its many keyword arguments come first, then one linear write.
    """
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(gsd_m, (int, float)) and math.isfinite(gsd_m) and gsd_m > 0):
        raise ValueError(f"gsd_m must be a finite number > 0, got {gsd_m!r}")
    crs_text = f"EPSG:{crs}" if isinstance(crs, int) else str(crs)
    if bounds is None:
        if centre_lat_deg is None or centre_lon_deg is None or size_m is None:
            raise ValueError("give bounds=, or centre_lat_deg=, centre_lon_deg= and size_m=")
        if not (math.isfinite(size_m) and size_m > 0):
            raise ValueError(f"size_m must be a finite number > 0, got {size_m!r}")
        bounds = _bounds_around(float(centre_lat_deg), float(centre_lon_deg), float(size_m), crs_text)
    x_min, y_min, x_max, y_max = (float(v) for v in bounds)
    if not (x_max > x_min and y_max > y_min):
        raise ValueError(f"bounds must be (x_min, y_min, x_max, y_max) with max > min, got {bounds}")
    mx, my = _metres_per_unit(0.5 * (x_min + x_max), 0.5 * (y_min + y_max),
                              1e-3 * (x_max - x_min), 1e-3 * (y_max - y_min), crs_text)
    width = max(2, int(round((x_max - x_min) * mx / gsd_m)))
    height = max(2, int(round((y_max - y_min) * my / gsd_m)))
    if width * height > 400_000_000:
        raise ValueError(f"{width} x {height} pixels is too large for a test raster; raise gsd_m")
    transform = Affine((x_max - x_min) / width, 0.0, x_min, 0.0, -(y_max - y_min) / height, y_max)
    encoding = CoordinateEncoding(crs_text, x_min, x_max, y_min, y_max)
    # Pixel-centre coordinates: x depends on the column only, y on the row only (north-up).
    xs = transform.c + transform.a * (np.arange(width) + 0.5)
    dtype = "uint16" if kind == "coords" else "uint8"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    profile = dict(
        driver="GTiff", width=width, height=height, count=3, dtype=dtype, crs=crs_text,
        transform=transform, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
        predictor=2, nodata=nodata,
    )
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            tags = encoding.to_tags() if kind == "coords" else {f"{_TAG_PREFIX}KIND": "rgb"}
            if capture_date:
                tags["CAPTURE_DATE"] = capture_date
            dst.update_tags(**tags)
            for row0 in range(0, height, 256):
                rows = min(256, height - row0)
                ys = transform.f + transform.e * (np.arange(row0, row0 + rows) + 0.5)
                X, Y = np.meshgrid(xs, ys)
                if kind == "coords":
                    u, v = encoding.encode(X, Y)
                    bands = np.stack([u, v, np.full_like(u, MARKER)])
                else:
                    fx = (X - x_min) / (x_max - x_min)
                    fy = (Y - y_min) / (y_max - y_min)
                    cell = (np.floor((X - x_min) * mx / checker_m) + np.floor((Y - y_min) * my / checker_m)) % 2
                    bands = np.stack([40 + 200 * fx, 40 + 200 * fy, np.where(cell > 0, 220, 30)])
                    bands = np.rint(bands).astype(np.uint8)
                dst.write(bands, window=Window(0, row0, width, rows))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crossview_ros.sim.coord_ortho",
        description="Write a synthetic GeoTIFF orthophoto for testing and demos: 'coords' pixels "
                    "encode their own coordinates (3 x uint16; tile with --format png), 'rgb' "
                    "pixels are a viewable gradient and checker (3 x uint8).",
    )
    parser.add_argument("--out", required=True, help="GeoTIFF to write (replaced atomically)")
    parser.add_argument("--lat", type=float, default=40.7484, help="centre latitude, degrees WGS84 (default 40.7484)")
    parser.add_argument("--lon", type=float, default=-73.9857, help="centre longitude, degrees WGS84 (default -73.9857)")
    parser.add_argument("--size-m", type=float, default=400.0, help="side of the square, ground metres (default 400)")
    parser.add_argument("--gsd-m", type=float, default=0.25, help="ground metres per pixel at the centre (default 0.25)")
    parser.add_argument("--crs", default="EPSG:3857",
                        help="CRS of the raster: EPSG code, WKT, or 'utm' for the UTM zone of the "
                             "centre (default EPSG:3857, web-map imagery)")
    parser.add_argument("--kind", choices=KINDS, default="rgb", help="pixel content (default rgb)")
    parser.add_argument("--capture-date", default=None, help="date stored as CAPTURE_DATE tag, e.g. 2024-05-01")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        crs = args.crs
        if crs.lower() == "utm":
            crs = f"EPSG:{geo.utm_zone(args.lat, args.lon).epsg}"
        path = write_coordinate_geotiff(
            args.out, crs=crs, gsd_m=args.gsd_m, centre_lat_deg=args.lat, centre_lon_deg=args.lon,
            size_m=args.size_m, kind=args.kind, capture_date=args.capture_date,
        )
    except (ValueError, OSError) as exc:
        print(f"coord_ortho: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # rasterio/pyproj errors on a bad --crs
        if type(exc).__module__.split(".")[0] in ("rasterio", "pyproj"):
            print(f"coord_ortho: error: {exc}", file=sys.stderr)
            return 2
        raise
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
