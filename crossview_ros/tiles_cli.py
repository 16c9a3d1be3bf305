"""crossview-tiles: build, inspect, query, encode and verify tile sets from the shell.

build/info/query/verify are thin fronts to crossview_ros.tiles. encode is the descriptor precomputation step
(`encode_tile_set`, callable from Python too): an exported model's aerial graph over every tile
image, through crossview_ros.engines, stored with TileSet.write_descriptors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros import geo
from crossview_ros.atomic import write_json_atomic
from crossview_ros.cli_args import join_negative_fix
from crossview_ros.engines import ENGINE_KINDS, Engine, EngineError, create_engine
from crossview_ros.model_meta import ModelMeta, load_model_meta
from crossview_ros.preprocess import preprocess_aerial
from crossview_ros.tiles import (
    IMAGE_FORMATS, RESAMPLING_NAMES, XYZ_PREFIX, TileSet, TileSetError, TilingConfig, XyzFolder, build_tile_set,
    verify_tile_set,
)

log = logging.getLogger(__name__)

PROG = "crossview-tiles"
_DEFAULTS = TilingConfig()
PARTIAL_DESCRIPTORS = "descriptors.partial.npy"  # (N, D) float32 rows encoded so far, inside the set
PARTIAL_STATE = "descriptors.partial.json"  # model hash, dim, count and rows done; renamed into place
PARTIAL_FORMAT = "crossview_ros.partial_descriptors"
DEFAULT_BATCH_SIZE = 32
DEFAULT_SAVE_EVERY = 10  # batches between progress saves of an encode run


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
    """Every subcommand and option with its help, declared in one place (long, and clearer so)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build, inspect and query tile sets: north-up aerial tiles cut from "
                    "geo-referenced orthophotos with VIGOR's 50 % overlap.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{build,info,query,encode,verify}")

    b = sub.add_parser(
        "build", help="cut orthophotos into a tile set",
        description="Cut GeoTIFF orthophotos (any CRS: reprojected by GDAL) or an XYZ tile folder (xyz:DIR, "
                    "DIR/z/x/y.png|jpg, Web Mercator) into L x L metre tiles, north-up on the UTM grid of the zone "
                    "of their centre. Logs each source's ground resolution (m/px at its centre) and warns when it "
                    "is over 1.5x coarser than the tiles. Resumable: an interrupted build continues from "
                    "DIR.partial when rerun with the same options. See docs/imagery.md.",
    )
    b.add_argument("ortho", nargs="+", metavar="ORTHO",
                   help=f"GeoTIFF orthophoto(s) in any CRS, or {XYZ_PREFIX}FOLDER for a folder of z/x/y.png|jpg|jpeg "
                        "tiles (the deepest zoom present); where they overlap the first wins")
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
    b.add_argument("--min-inside", type=float, default=_DEFAULTS.min_inside,
                   help="share of the tile side, centred, that must lie inside the imagery; 0.5 keeps edge tiles "
                        "whose central half (what a bev model matches) is inside, the rest padded black, so walks "
                        "near the edge keep their coverage; descriptor models see the padding: keep 1 "
                        f"(default {_DEFAULTS.min_inside:g})")
    b.add_argument("--xyz-zoom", type=int, default=None, metavar="Z",
                   help=f"zoom level of the {XYZ_PREFIX} folders to read (default: the deepest present)")
    b.add_argument("--xyz-tms", action="store_true",
                   help=f"the {XYZ_PREFIX} folders number rows from the south (TMS, a {{-y}} URL template); "
                        "default: from the north (XYZ, as OSM and Google)")
    b.add_argument("--capture-date", metavar="DATE", default=None,
                   help="capture date of the imagery, YYYY-MM-DD (or YYYY-MM, YYYY), recorded in the tile set for "
                        "every source; default: a GeoTIFF's CAPTURE_DATE or TIFFTAG_DATETIME tag, else unknown")
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

    e = sub.add_parser(
        "encode", help="fill a tile set's descriptors with an exported model",
        description="Encode every tile image with the model's aerial graph and store the L2-normalised "
                    "descriptors (float16) in the set, stamped with the model hash. Resumable: progress is "
                    f"saved to DIR/{PARTIAL_DESCRIPTORS} every --save-every batches and a rerun with the same "
                    "model continues from there.",
    )
    e.add_argument("dir", metavar="DIR", help="tile set directory (built with images)")
    e.add_argument("--model", required=True, metavar="MODEL_DIR", help="folder written by crossview-export onnx")
    e.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"tiles per inference (default {DEFAULT_BATCH_SIZE})")
    e.add_argument("--engine", choices=ENGINE_KINDS, default="auto",
                   help="runtime: auto (TensorRT with a GPU, else ONNX Runtime), onnxruntime or tensorrt "
                        "(default auto)")
    e.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime intra-op threads, 0 = one per physical core (default 0)")
    e.add_argument("--save-every", type=int, default=DEFAULT_SAVE_EVERY,
                   help=f"batches between progress saves (default {DEFAULT_SAVE_EVERY})")
    e.add_argument("--overwrite", action="store_true",
                   help="replace descriptors of another model, or re-encode with the same one (default: refuse "
                        "another model's, skip when this model's are present)")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    v = sub.add_parser(
        "verify", help="decode every tile image and read every descriptor row",
        description="The full check of a tile set (opening one only checks that every image file is there): "
                    "every image decodes to the size meta.json says, every descriptor row is finite and of unit "
                    "length. build and encode run it when they finish. Exit code 0 when all is well, 1 when a "
                    "tile is bad (each named), 2 when the set does not open.",
    )
    v.add_argument("dir", metavar="DIR", help="tile set directory")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _cmd_build(args: argparse.Namespace) -> int:
    config = TilingConfig(
        tile_size_m=args.tile_size_m, tile_px=args.tile_px, overlap=args.overlap,
        image_format=args.format, jpeg_quality=args.jpeg_quality, resampling=args.resampling,
        min_inside=args.min_inside,
    )
    sources: list[str | XyzFolder] = []
    for text in args.ortho:
        if text.startswith(XYZ_PREFIX):
            if not text[len(XYZ_PREFIX):]:
                raise _UserError(f"{text!r}: give the folder after {XYZ_PREFIX} (e.g. {XYZ_PREFIX}cache/tiles)")
            sources.append(XyzFolder(text[len(XYZ_PREFIX):], zoom=args.xyz_zoom, tms=args.xyz_tms))
        else:
            sources.append(text)
    if (args.xyz_zoom is not None or args.xyz_tms) and not any(isinstance(s, XyzFolder) for s in sources):
        raise _UserError(f"--xyz-zoom and --xyz-tms apply to {XYZ_PREFIX}FOLDER sources; none was given")
    out = build_tile_set(sources, args.out, config, overwrite=args.overwrite, progress=not args.no_progress,
                         capture_date=args.capture_date)
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


def _source_text(source: dict[str, Any]) -> str:
    """'name (0.250 m/px, 2023-06-14)': what info says of one source."""
    notes = ([f"{source['ground_gsd_m']:.3f} m/px"] if source.get("ground_gsd_m") else []) + \
        ([str(source["capture_date"])] if source.get("capture_date") else [])
    return f"{source['name']} ({', '.join(notes)})" if notes else str(source["name"])


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
        f"sources      {', '.join(_source_text(s) for s in info['sources']) or 'none'}",
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


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _remove_partial(ts: TileSet) -> None:
    for name in (PARTIAL_STATE, PARTIAL_DESCRIPTORS):
        (ts.path / name).unlink(missing_ok=True)


def _open_partial(ts: TileSet, meta: ModelMeta) -> tuple[np.ndarray, int]:
    """(float32 (N, D) rows memory-mapped for writing, rows already done) for an encode run.

    The state json is the commit record: rows below its `done` were flushed before it was renamed
    into place, so a crash at any point leaves a consistent (if older) resume point. A partial
    from another model, dimension or build of the set is discarded.
    """
    count, dim = len(ts), meta.descriptor_dim
    state_path, data_path = ts.path / PARTIAL_STATE, ts.path / PARTIAL_DESCRIPTORS
    done = 0
    if state_path.exists():
        why = None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            data = np.load(data_path, mmap_mode="r+")
        except (OSError, ValueError) as exc:
            state, data, why = {}, None, f"it is unreadable ({exc})"
        if why is None:
            expected = {"format": PARTIAL_FORMAT, "model_hash": meta.model_hash, "dim": dim, "count": count,
                        "tile_set_created_utc": ts.meta.get("created_utc")}
            diff = [k for k, v in expected.items() if state.get(k) != v]
            if diff:
                why = f"it differs in {', '.join(diff)} (made by model {state.get('model_hash')!r})"
            elif data.shape != (count, dim) or data.dtype != np.float32:
                why = f"its array is {data.dtype} {data.shape}, expected float32 {(count, dim)}"
            elif not (isinstance(state.get("done"), int) and 0 <= state["done"] <= count):
                why = f"its row count done={state.get('done')!r} is invalid"
        if why is None:
            done = int(state["done"])
            log.info("resuming the encoding of %s at tile %d of %d (model %s)", ts.path, done, count,
                     meta.model_hash)
            return data, done
        log.warning("discarding the partial descriptors in %s: %s; starting over", ts.path, why)
        del data
        _remove_partial(ts)
    data = np.lib.format.open_memmap(data_path, mode="w+", dtype=np.float32, shape=(count, dim))
    _save_partial(ts, meta, data, 0)
    return data, done


def _save_partial(ts: TileSet, meta: ModelMeta, data: np.ndarray, done: int) -> None:
    data.flush()
    write_json_atomic(ts.path / PARTIAL_STATE, {
        "format": PARTIAL_FORMAT, "model_hash": meta.model_hash, "dim": meta.descriptor_dim, "count": len(ts),
        "done": done, "tile_set_created_utc": ts.meta.get("created_utc"), "updated_utc": _utc_now(),
    })


def encode_tile_set(tile_dir: str | os.PathLike, model: str | os.PathLike | Engine, *, engine: str = "auto",
                    batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False, progress: bool = True,
                    save_every: int = DEFAULT_SAVE_EVERY, threads: int = 0) -> Path:
    """Encode every tile image of a set with the model's aerial graph and store the descriptors; returns the set.

    model: an export folder (an engine of kind `engine` is created, `threads` for ONNX Runtime) or
    a ready Engine. Descriptors go through TileSet.write_descriptors (atomic, stamped with the
    model hash). Work already done is kept: a set holding this model's descriptors is skipped
    unless overwrite; an interrupted run resumes from the last progress save (every save_every
    batches, and on an exception). Another model's descriptors are replaced only with overwrite.
    """
    from tqdm import tqdm

    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (isinstance(save_every, int) and save_every >= 1):
        raise ValueError(f"save_every must be an integer >= 1, got {save_every!r}")
    ts = TileSet.open(tile_dir)
    if ts.image_format is None:
        raise TileSetError(f"{ts.path} has no tile images (built without images), so there is nothing to encode; "
                           "build the set from orthophotos with crossview-tiles build ORTHO... --out DIR")
    meta = model.meta if isinstance(model, Engine) else load_model_meta(model)
    old = ts.model_hash
    if old is not None and not overwrite:
        if old == meta.model_hash:  # TileSet.open checked the stored rows against meta.json
            log.info("%s already holds descriptors of model %s; nothing to do (pass --overwrite to re-encode)",
                     ts.path, old)
            return ts.path
        raise EngineError(f"{ts.path} holds descriptors of another model ({old}, dim "
                          f"{ts.meta['descriptors']['dim']}); this model is {meta.model_hash} (dim "
                          f"{meta.descriptor_dim}); pass --overwrite to replace them")
    if meta.tile_size_m is not None and abs(meta.tile_size_m - ts.tile_size_m) > 1e-6 * meta.tile_size_m:
        log.warning("model %s was exported for %g m tiles, %s has %g m tiles", meta.name, meta.tile_size_m,
                    ts.path, ts.tile_size_m)
    options = {"threads": threads} if threads else {}
    runner = model if isinstance(model, Engine) else create_engine(model, engine, **options)
    data, done = _open_partial(ts, meta)
    count = len(ts)
    batches = 0
    try:
        with tqdm(total=count, initial=done, unit="tile", disable=not progress, desc="encode") as bar:
            for start in range(done, count, batch_size):
                stop = min(count, start + batch_size)
                images = np.concatenate([preprocess_aerial(meta, ts.image(i)) for i in range(start, stop)])
                desc, _ = runner.encode_aerial(images)
                bad = ~np.all(np.isfinite(desc), axis=1) | ~np.any(desc != 0, axis=1)
                if bad.any():
                    raise EngineError(f"{runner.name} gave a non-finite or all-zero descriptor for tile "
                                      f"{start + int(np.argmax(bad))} of {ts.path}; check that image and the model")
                data[start:stop] = desc
                done = stop
                batches += 1
                bar.update(stop - start)
                if batches % save_every == 0:
                    _save_partial(ts, meta, data, done)
    except BaseException:
        _save_partial(ts, meta, data, done)  # rows below done are complete: the rerun continues there
        log.info("saved the encoding progress of %s at tile %d of %d; rerun to continue", ts.path, done, count)
        raise
    finally:
        if runner is not model:
            runner.close()
    _save_partial(ts, meta, data, done)  # should the final write fail, a rerun goes straight to it
    ts.write_descriptors(data, meta.model_hash)
    del data
    verify_tile_set(TileSet.open(ts.path), images=False).raise_if_bad()  # every row reads back finite, unit length
    _remove_partial(ts)
    log.info("encoded %d tiles of %s with model %s (%s, dim %d) on %s", count, ts.path, meta.name, meta.model_hash,
             meta.descriptor_dim, runner.name)
    return ts.path


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify_tile_set(TileSet.open(args.dir), progress=not args.no_progress)
    if args.json:
        print(json.dumps({"path": str(report.path), "tiles": report.tiles, "ok": report.ok,
                          "images_checked": report.images_checked,
                          "descriptor_rows_checked": report.descriptor_rows_checked,
                          "bad_images": {str(k): v for k, v in sorted(report.bad_images.items())},
                          "bad_descriptor_rows": {str(k): v for k, v in sorted(report.bad_descriptor_rows.items())}},
                         indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


def _cmd_encode(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise _UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.save_every < 1:
        raise _UserError(f"--save-every must be >= 1, got {args.save_every}")
    if args.threads < 0:
        raise _UserError(f"--threads must be >= 0, got {args.threads}")
    if args.threads and args.engine == "tensorrt":
        raise _UserError("--threads sets ONNX Runtime's threads; it does not apply to --engine tensorrt")
    out = encode_tile_set(args.dir, args.model, engine=args.engine, batch_size=args.batch_size,
                          overwrite=args.overwrite, progress=not args.no_progress, save_every=args.save_every,
                          threads=args.threads)
    ts = TileSet.open(out)
    desc = ts.meta["descriptors"]
    print(f"{len(ts)} tiles of {out} hold {desc['dim']}-D descriptors of model {desc['model_hash']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-tiles; returns the exit code (2 for bad input)."""
    argv = join_negative_fix(list(sys.argv[1:] if argv is None else argv))
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"build": _cmd_build, "info": _cmd_info, "query": _cmd_query, "encode": _cmd_encode,
                "verify": _cmd_verify}
    try:
        return handlers[args.command](args)
    except (TileSetError, geo.GeoError, _UserError, EngineError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
