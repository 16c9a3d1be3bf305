"""crossview-tiles: build, inspect and query tile sets from the shell (thin front to tiles.py)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.tiles import (
    IMAGE_FORMATS, RESAMPLING_NAMES, TileSet, TileSetError, TilingConfig, build_tile_set,
)

PROG = "crossview-tiles"
_DEFAULTS = TilingConfig()


class _UserError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


def _parse_fix(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise _UserError(f"--fix must be LAT,LON in degrees (e.g. 40.7484,-73.9857), got {text!r}") from None
    geo.check_latlon(lat, lon)
    return lat, lon


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, inspect and query tile sets: north-up aerial tiles cut from "
                    "geo-referenced orthophotos with VIGOR's 50 %% overlap.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{build,info,query}")

    b = sub.add_parser(
        "build", help="cut orthophotos into a tile set",
        description="Cut GeoTIFF orthophotos (any CRS) into L x L metre tiles, north-up on the UTM "
                    "grid of the zone of their centre. Resumable: an interrupted build continues "
                    "from DIR.partial when rerun with the same options.",
    )
    b.add_argument("ortho", nargs="+", metavar="ORTHO", help="GeoTIFF orthophoto(s); where they overlap the first wins")
    b.add_argument("--out", required=True, metavar="DIR", help="tile set directory to create")
    b.add_argument("--tile-size-m", type=float, default=_DEFAULTS.tile_size_m,
                   help=f"tile side L in metres (default {_DEFAULTS.tile_size_m:g}, VIGOR: 640 px x 0.114 m)")
    b.add_argument("--tile-px", type=int, default=_DEFAULTS.tile_px,
                   help=f"tile side in pixels; ground sampling distance = L / px (default {_DEFAULTS.tile_px})")
    b.add_argument("--overlap", type=float, default=_DEFAULTS.overlap,
                   help=f"fraction of a tile shared with each neighbour, in [0, 1) (default {_DEFAULTS.overlap:g}: "
                        "every point inside four tiles)")
    b.add_argument("--format", choices=IMAGE_FORMATS, default=_DEFAULTS.image_format,
                   help=f"tile image format; png is lossless and keeps 16-bit sources (default {_DEFAULTS.image_format})")
    b.add_argument("--jpeg-quality", type=int, default=_DEFAULTS.jpeg_quality,
                   help=f"JPEG quality 1..100, jpg only (default {_DEFAULTS.jpeg_quality})")
    b.add_argument("--resampling", choices=RESAMPLING_NAMES, default=_DEFAULTS.resampling,
                   help=f"GDAL resampling kernel (default {_DEFAULTS.resampling})")
    b.add_argument("--overwrite", action="store_true", help="replace an existing tile set at DIR (default: refuse)")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    i = sub.add_parser("info", help="summarise a tile set",
                       description="Print tile count, UTM zone, extent, tile size and descriptors of a set.")
    i.add_argument("dir", metavar="DIR", help="tile set directory")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")

    q = sub.add_parser(
        "query", help="tiles in scope of a GNSS fix",
        description="List the tiles whose centre lies within --radius-m of a fix (UTM grid distance), "
                    "or with --covering the tiles whose footprint contains it, with their IoU.",
    )
    q.add_argument("dir", metavar="DIR", help="tile set directory")
    q.add_argument("--fix", required=True, metavar="LAT,LON",
                   help="fix in degrees WGS84, e.g. 40.7484,-73.9857 (a negative latitude works too)")
    q.add_argument("--radius-m", type=float, default=200.0, help="scope radius in metres (default 200)")
    q.add_argument("--covering", action="store_true", help="list tiles containing the fix, by IoU, instead")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _join_negative_fix(argv: list[str]) -> list[str]:
    # argparse reads "--fix -33.8,151.2" as two options; glue the value on.
    out: list[str] = []
    k = 0
    while k < len(argv):
        if argv[k] == "--fix" and k + 1 < len(argv) and argv[k + 1].startswith("-") and len(argv[k + 1]) > 1 \
                and (argv[k + 1][1].isdigit() or argv[k + 1][1] == "."):
            out.append(f"--fix={argv[k + 1]}")
            k += 2
        else:
            out.append(argv[k])
            k += 1
    return out


def _cmd_build(args: argparse.Namespace) -> int:
    config = TilingConfig(
        tile_size_m=args.tile_size_m, tile_px=args.tile_px, overlap=args.overlap,
        image_format=args.format, jpeg_quality=args.jpeg_quality, resampling=args.resampling,
    )
    out = build_tile_set(args.ortho, args.out, config, overwrite=args.overwrite, progress=not args.no_progress)
    ts = TileSet.open(out)
    print(f"wrote {len(ts)} tiles ({ts.tile_size_m:g} m, {ts.tile_px} px, zone {ts.zone}) to {out}")
    return 0


def _info(ts: TileSet) -> dict[str, Any]:
    half = 0.5 * ts.tile_size_m
    desc = ts.meta.get("descriptors")
    return {
        "path": str(ts.path),
        "count": len(ts),
        "utm_zone": str(ts.zone),
        "tile_size_m": ts.tile_size_m,
        "tile_px": ts.tile_px,
        "gsd_m": ts.gsd_m,
        "overlap": ts.meta.get("overlap"),
        "image_format": ts.image_format,
        "created_utc": ts.meta.get("created_utc"),
        "extent_utm_m": {  # outer edges of all footprints
            "min_e": float(ts.easting_m.min() - half), "max_e": float(ts.easting_m.max() + half),
            "min_n": float(ts.northing_m.min() - half), "max_n": float(ts.northing_m.max() + half),
        },
        "extent_centres_deg": {
            "min_lat": float(ts.lat_deg.min()), "max_lat": float(ts.lat_deg.max()),
            "min_lon": float(ts.lon_deg.min()), "max_lon": float(ts.lon_deg.max()),
        },
        "sources": ts.meta.get("sources", []),
        "descriptors": None if desc is None else {
            "model_hash": desc["model_hash"], "dim": desc["dim"], "dtype": desc.get("dtype")},
    }


def _cmd_info(args: argparse.Namespace) -> int:
    info = _info(TileSet.open(args.dir))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    ext, cen = info["extent_utm_m"], info["extent_centres_deg"]
    desc = info["descriptors"]
    desc_text = "none" if desc is None else f"{desc['dim']}-D {desc['dtype']}, model {desc['model_hash']}"
    lines = [
        f"tile set     {info['path']}",
        f"tiles        {info['count']}",
        f"utm zone     {info['utm_zone']}",
        f"tile size    {info['tile_size_m']:g} m, {info['tile_px']} px, {info['gsd_m']:.4f} m/px, "
        f"overlap {info['overlap']:g}",
        f"images       {info['image_format'] or 'none'}",
        f"extent       E {ext['min_e']:.1f} .. {ext['max_e']:.1f} m, N {ext['min_n']:.1f} .. {ext['max_n']:.1f} m "
        f"({ext['max_e'] - ext['min_e']:.0f} x {ext['max_n'] - ext['min_n']:.0f} m)",
        f"centres      lat {cen['min_lat']:.6f} .. {cen['max_lat']:.6f}, "
        f"lon {cen['min_lon']:.6f} .. {cen['max_lon']:.6f}",
        f"sources      {', '.join(s['name'] for s in info['sources']) or 'none'}",
        f"descriptors  {desc_text}",
        f"created      {info['created_utc']}",
    ]
    print("\n".join(lines))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    lat, lon = _parse_fix(args.fix)
    if not (math.isfinite(args.radius_m) and args.radius_m >= 0):
        raise _UserError(f"--radius-m must be a finite number >= 0, got {args.radius_m}")
    ts = TileSet.open(args.dir)
    fix = {"lat_deg": lat, "lon_deg": lon}
    if args.covering:
        cov = ts.tiles_covering(lat, lon)
        rows = [{"tile_id": c.tile_id, "iou": c.iou, "offset_e_m": c.offset_e_m, "offset_n_m": c.offset_n_m}
                for c in cov]
        if args.json:
            print(json.dumps({"fix": fix, "covering": rows}, indent=2))
        else:
            print(f"{len(rows)} tiles contain ({lat:.7f}, {lon:.7f})")
            if rows:
                print(f"{'tile_id':>9} {'iou':>7} {'offset_e_m':>11} {'offset_n_m':>11}")
            for r in rows:
                print(f"{r['tile_id']:>9} {r['iou']:>7.4f} {r['offset_e_m']:>11.2f} {r['offset_n_m']:>11.2f}")
        return 0
    ids = ts.tiles_within(lat, lon, args.radius_m)
    dist = np.empty(0)
    if ids.size:
        e, n, _ = geo.latlon_to_utm(lat, lon, zone=ts.zone)
        dist = np.hypot(ts.easting_m[ids] - e, ts.northing_m[ids] - n)
    rows = [{"tile_id": int(i), "distance_m": float(d), "lat_deg": float(ts.lat_deg[i]),
             "lon_deg": float(ts.lon_deg[i])} for i, d in zip(ids, dist)]
    if args.json:
        print(json.dumps({"fix": fix, "radius_m": args.radius_m, "tiles": rows}, indent=2))
    else:
        print(f"{len(rows)} tiles within {args.radius_m:g} m of ({lat:.7f}, {lon:.7f}) (UTM grid distance)")
        if rows:
            print(f"{'tile_id':>9} {'distance_m':>10} {'lat_deg':>12} {'lon_deg':>13}")
        for r in rows:
            print(f"{r['tile_id']:>9} {r['distance_m']:>10.2f} {r['lat_deg']:>12.7f} {r['lon_deg']:>13.7f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-tiles; returns the exit code (2 for bad input)."""
    argv = _join_negative_fix(list(sys.argv[1:] if argv is None else argv))
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"build": _cmd_build, "info": _cmd_info, "query": _cmd_query}
    try:
        return handlers[args.command](args)
    except (TileSetError, geo.GeoError, _UserError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
