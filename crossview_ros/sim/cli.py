"""crossview-sim: make the synthetic city, its VIGOR-layout dataset and drive bags.

    crossview-sim city   --out DIR                 orthophoto.tif + city.json of one city
    crossview-sim vigor  --root DIR                two or more cities in VIGOR's on-disk layout
    crossview-sim drive  --city DIR --out BAG      a drive through a city as a rosbag2 (MCAP), [--cameras RIG]
                                                   with pinhole or fisheye views and their CameraInfo
    crossview-sim sheet  --root DIR --out PNG      contact sheet: tiles beside their panoramas

Every command is seeded (same seed, same bytes), shows progress, and writes atomically; `vigor`
resumes an interrupted run and `city` skips a city already written with the same settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
from tqdm import tqdm

from crossview_ros.tiles import VIGOR_TILE_SIZE_M
from crossview_ros.sim.appearance import apply_appearance, apply_season, sample_appearance
from crossview_ros.sim.bag import write_drive_bag
from crossview_ros.sim.cameras import CAMERA_RIGS, ViewRenderer, camera_height_m, encode_jpeg, rig_cameras
from crossview_ros.sim.city import City, CityConfig, generate_city
from crossview_ros.sim.drive import DriveConfig, plan_drive
from crossview_ros.sim.gnss import UniformGnss, UrbanGnss, simulate_gnss
from crossview_ros.sim.odometry import wheel_odometry
from crossview_ros.sim.ortho import render_orthophoto, write_orthophoto
from crossview_ros.sim.render import CameraConfig, compile_renderer, render_panorama
from crossview_ros.sim.scene import Sun
from crossview_ros.sim.vigor import VigorConfig, default_cities, write_vigor_dataset

log = logging.getLogger("crossview_sim")


def _city_config_from_args(args: argparse.Namespace) -> CityConfig:
    return CityConfig(datum_lat_deg=args.lat, datum_lon_deg=args.lon, size_m=args.size_m,
                      gsd_m=args.gsd_m, seed=args.seed)


def load_city(city_dir: str | Path) -> City:
    """Regenerate the city described by a city.json (from `city` or from a VIGOR city folder)."""
    path = Path(city_dir) / "city.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; make the city with `crossview-sim city --out {city_dir}`")
    doc = json.loads(path.read_text())
    city_doc = doc.get("city", doc)
    if "config" not in city_doc:
        raise ValueError(f"{path} has no city config; it was not written by crossview-sim")
    return generate_city(CityConfig.from_dict(city_doc["config"]))


def run_city(out: str | Path, config: CityConfig, *, sun_azimuth_deg: float = 150.0,
             sun_elevation_deg: float = 55.0, season: float = 0.0, preview: str | Path | None = None,
             progress: bool = True, file: TextIO | None = None) -> Path:
    """One city: out/orthophoto.tif (surveyed under that sun, in that season) + out/city.json; returns `out`.

    Nothing is done when `out` already holds this city with these settings. file: where the one-line
    account goes (None: nowhere); preview: also a 1024 px PNG of the orthophoto there.
    """
    out = Path(out)
    city = generate_city(config)
    doc = {"city": city.city_json(), "aerial_sun": [sun_azimuth_deg, sun_elevation_deg]}
    if season:
        doc["season"] = season
    doc = json.loads(json.dumps(doc))
    meta = out / "city.json"
    if meta.exists() and (out / "orthophoto.tif").exists() and json.loads(meta.read_text()) == doc:
        if file is not None:
            print(f"{out} already holds this city; nothing to do", file=file)
        return out
    with tqdm(total=3, desc="city", unit="step", disable=not progress) as bar:
        scene = city.scene(0)
        bar.update()
        image = apply_season(render_orthophoto(scene, Sun(sun_azimuth_deg, sun_elevation_deg)), season)
        bar.update()
        write_orthophoto(out / "orthophoto.tif", image, scene)
        bar.update()
    tmp = meta.with_name(".city.json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(meta)
    if preview:
        small = cv2.resize(image, (1024, 1024), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(preview), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if file is not None:
        print(f"wrote {out / 'orthophoto.tif'} ({scene.shape[1]} x {scene.shape[0]} px, {config.gsd_m} m/px, "
              f"zone {city.zone}) and city.json", file=file)
    return out


def cmd_city(args: argparse.Namespace) -> int:
    run_city(args.out, _city_config_from_args(args), sun_azimuth_deg=args.sun_azimuth_deg,
             sun_elevation_deg=args.sun_elevation_deg, season=args.season, preview=args.preview, progress=not args.no_progress,
             file=sys.stdout)
    return 0


def _aerial_sun(text: str) -> tuple[float, float] | None:
    """--aerial-sun: "per-city" (None) or "AZ,EL" in degrees."""
    if text == "per-city":
        return None
    try:
        azimuth, elevation = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--aerial-sun must be per-city or AZIMUTH,ELEVATION in degrees, got {text!r}") from None
    if not 0.0 < elevation <= 90.0:
        raise ValueError(f"--aerial-sun elevation must be in (0, 90] deg, got {elevation}")
    return azimuth, elevation


def cmd_vigor(args: argparse.Namespace) -> int:
    config = VigorConfig(panoramas=args.panoramas, pano_height_px=args.pano_height_px, sat_px=args.sat_px,
                         tile_size_m=args.tile_size_m, seed=args.seed,
                         appearance_gap=not args.no_appearance_gap, time_gap=not args.no_time_gap,
                         aerial_sun=_aerial_sun(args.aerial_sun), season_gap=not args.no_season_gap)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    cities = default_cities(args.cities, size_m=args.size_m, gsd_m=args.gsd_m, seed=args.seed,
                            extra_train=args.extra_train_cities)
    root = write_vigor_dataset(args.root, cities, config, progress=not args.no_progress, jobs=args.jobs)
    print(f"wrote {len(cities)} cities ({', '.join(cities)}) in VIGOR layout to {root}")
    if args.contact_sheet:
        contact_sheet(root, next(iter(cities)), args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}")
    return 0


def contact_sheet(root: str | Path, city_name: str, out: str | Path, *, count: int = 4, height_px: int = 256) -> Path:
    """A PNG of `count` panoramas, each beside its positive tile with the camera marked.

    The panorama's middle column faces north, like the tile's top; the red dot is where the
    labels put the camera (VIGOR deltas).
    """
    root = Path(root)
    lines = (root / "splits" / city_name / "pano_label_balanced.txt").read_text().split("\n")
    lines = [line.split() for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"no panoramas listed for {city_name} under {root}")
    picks = np.linspace(0, len(lines) - 1, min(count, len(lines))).round().astype(int)
    rows = []
    for i in picks:
        parts = lines[i]
        pano = cv2.imread(str(root / city_name / "panorama" / parts[0]))
        sat = cv2.imread(str(root / city_name / "satellite" / parts[1]))
        if pano is None or sat is None:
            raise FileNotFoundError(f"missing image for {parts[0]} or {parts[1]}")
        da, db = float(parts[2]), float(parts[3])
        size = sat.shape[0]
        row, col = size / 2 + da, size / 2 - db
        cv2.circle(sat, (int(round(col)), int(round(row))), max(3, size // 80), (0, 0, 255), -1)
        sat = cv2.resize(sat, (height_px, height_px), interpolation=cv2.INTER_AREA)
        pano = cv2.resize(pano, (2 * height_px, height_px), interpolation=cv2.INTER_AREA)
        cv2.line(pano, (height_px, 0), (height_px, 12), (0, 0, 255), 2)  # north tick
        rows.append(np.hstack([sat, np.full((height_px, 8, 3), 255, np.uint8), pano]))
    sheet = np.vstack([np.vstack([r, np.full((8, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    cv2.imwrite(str(tmp), sheet)
    tmp.replace(out)
    return out


def cmd_sheet(args: argparse.Namespace) -> int:
    contact_sheet(args.root, args.city, args.out, count=args.count)
    print(f"wrote {args.out}")
    return 0


def drive_images(
    city: City, drive, *, height_px: int, seed: int, appearance_gap: bool = True, time_gap: bool = True,
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """RGB panoramas along a drive, rendered lazily (column 0 = direction of travel)."""
    rng = np.random.default_rng([seed, 0xD81])
    scene = city.scene(1 if time_gap else 0)
    camera = CameraConfig(height_m=camera_height_m(drive.config.mode))
    sun = Sun(float(rng.uniform(0.0, 360.0)), float(rng.uniform(25.0, 65.0)))
    appearance = sample_appearance(rng, "ground") if appearance_gap else None
    compile_renderer(scene)  # before the bar: a fresh install's first panorama would set its ETA
    for k in tqdm(range(len(drive)), desc="panoramas", unit="pano", disable=not progress):
        image = render_panorama(scene, float(drive.easting_m[k]), float(drive.northing_m[k]),
                                float(drive.yaw_enu_rad[k]), height_px=height_px, camera=camera, sun=sun)
        if appearance is not None:
            image = apply_appearance(image, appearance, np.random.default_rng([seed, 0xD82, k]))
        yield image


def drive_panoramas(
    city: City, drive, *, height_px: int, seed: int, appearance_gap: bool = True, time_gap: bool = True,
    progress: bool = True,
) -> Iterator[bytes]:
    """JPEG panoramas along a drive, rendered lazily (column 0 = direction of travel)."""
    images = drive_images(city, drive, height_px=height_px, seed=seed, appearance_gap=appearance_gap,
                          time_gap=time_gap, progress=progress)
    for k, image in enumerate(images):
        yield encode_jpeg(image, f"panorama {k}")


def with_views(images: Iterator[np.ndarray], renderer: ViewRenderer) -> Iterator[tuple[bytes, list[bytes]]]:
    """(panorama JPEG, each camera's JPEG view) per RGB panorama: the views come from the panorama before
    its JPEG, as a camera would see the scene."""
    for k, image in enumerate(images):
        views = renderer(image)
        yield encode_jpeg(image, f"panorama {k}"), [encode_jpeg(v, f"view {k}") for v in views]


def run_drive(city_dir: str | Path, out: str | Path, config: DriveConfig, *, gnss: str = "urban",
              pano_height_px: int = 320, overwrite: bool = False, progress: bool = True,
              file: TextIO | None = None, cameras: str | None = None) -> Path:
    """A drive through the city of `city_dir` (its city.json) as a rosbag2 MCAP bag at `out`; returns it.

    config.seed seeds the route, the GNSS and odometry noise and the panoramas' appearance; gnss:
    "urban" (Gauss-Markov bias growing in street canyons) or "uniform" (VIGOR's +-100 m). file:
    where the one-line account goes (None: nowhere). cameras: a rig of crossview_ros.sim.cameras
    (forward90, rig4, fisheye) whose views and CameraInfo go into the bag beside the panoramas, the
    cameras at the panorama's optical centre; its rig file goes into the bag folder.
    """
    rig = rig_cameras(cameras, camera_height_m(config.mode)) if cameras else []
    city = load_city(city_dir)
    drive = plan_drive(city.streets, city.zone, config)
    rng = np.random.default_rng([config.seed, 0x6A55])
    model = UrbanGnss() if gnss == "urban" else UniformGnss()
    track = simulate_gnss(drive, model, rng, canyon_depth=city.canyon_depth)
    odometry = wheel_odometry(drive, np.random.default_rng([config.seed, 0x0D0]))
    if rig:
        images = drive_images(city, drive, height_px=pano_height_px, seed=config.seed, progress=progress)
        frames: Iterator[Any] = with_views(images, ViewRenderer(rig, (pano_height_px, 2 * pano_height_px)))
    else:
        frames = drive_panoramas(city, drive, height_px=pano_height_px, seed=config.seed, progress=progress)
    bag = write_drive_bag(out, drive, track, odometry, frames, city.city_json(), overwrite=overwrite, cameras=rig)
    if file is not None:
        views = f", views of cameras {', '.join(c.name for c in rig)} ({cameras})" if rig else ""
        print(f"wrote {bag}: {len(drive)} panoramas over {drive.distance_m[-1]:.0f} m{views}, "
              f"{int(track.published.sum())} GNSS fixes ({gnss})", file=file)
    return Path(bag)


def cmd_drive(args: argparse.Namespace) -> int:
    config = DriveConfig(mode=args.mode, rate_hz=args.rate_hz, duration_s=args.duration_s, seed=args.seed)
    run_drive(args.city, args.out, config, gnss=args.gnss, pano_height_px=args.pano_height_px,
              overwrite=args.overwrite, progress=not args.no_progress, file=sys.stdout, cameras=args.cameras)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossview-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def city_options(p: argparse.ArgumentParser, with_datum: bool = True) -> None:
        if with_datum:
            p.add_argument("--lat", type=float, default=40.7580, help="city centre latitude, deg (default Midtown Manhattan)")
            p.add_argument("--lon", type=float, default=-73.9855, help="city centre longitude, deg")
        p.add_argument("--size-m", type=float, default=1000.0, help="side of the square city, metres (default 1000)")
        p.add_argument("--gsd-m", type=float, default=0.15, help="orthophoto ground sampling distance, m/px (default 0.15)")
        p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same city (default 0)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("city", help="one city: orthophoto GeoTIFF (UTM) + city.json")
    p.add_argument("--out", required=True, help="output folder")
    city_options(p)
    p.add_argument("--sun-azimuth-deg", type=float, default=150.0, help="sun bearing for the survey, deg (default 150)")
    p.add_argument("--sun-elevation-deg", type=float, default=55.0, help="sun elevation, deg (default 55)")
    p.add_argument("--season", type=float, default=0.0,
                   help="vegetation's season, 0 = summer green .. 1 = dry straw (default 0)")
    p.add_argument("--preview", help="also write a 1024 px PNG preview of the orthophoto here")
    p.set_defaults(func=cmd_city)

    p = sub.add_parser("vigor", help="cities in VIGOR's on-disk layout (same- and cross-area splits)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--cities", type=int, default=2, help="number of cities, 2..4, at VIGOR's city centres (default 2)")
    p.add_argument("--extra-train-cities", type=int, default=0,
                   help="more cross-area training cities (NewYork2, Seattle2, ...), differently seeded; the test "
                        "cities do not change (default 0)")
    city_options(p, with_datum=False)
    p.add_argument("--panoramas", type=int, default=400, help="panoramas per city (default 400)")
    p.add_argument("--pano-height-px", type=int, default=1024, help="panorama height; width is twice (default 1024, VIGOR)")
    p.add_argument("--sat-px", type=int, default=640, help="satellite image side, px (default 640, VIGOR)")
    p.add_argument("--tile-size-m", type=float, default=VIGOR_TILE_SIZE_M,
                   help=f"satellite image side, m (default {VIGOR_TILE_SIZE_M}, VIGOR)")
    p.add_argument("--no-appearance-gap", action="store_true", help="same colour response in both views")
    p.add_argument("--no-time-gap", action="store_true", help="panoramas of the survey epoch (no moved cars/trees)")
    p.add_argument("--aerial-sun", default="per-city", metavar="per-city|AZ,EL",
                   help="the surveys' sun: per-city (each city its own, azimuth 0-360, elevation 30-70 deg; "
                        "default) or one AZIMUTH,ELEVATION in degrees for every city")
    p.add_argument("--no-season-gap", action="store_true",
                   help="every survey and panorama in summer (default: each in a season of its own)")
    p.add_argument("--jobs", type=int, default=1, help="cities written at once, one process each (default 1)")
    p.add_argument("--contact-sheet", help="also write a contact sheet PNG of the first city here")
    p.set_defaults(func=cmd_vigor)

    p = sub.add_parser("drive", help="a drive through a city as a rosbag2 MCAP bag")
    p.add_argument("--city", required=True, help="folder with city.json (from `city` or a VIGOR city folder)")
    p.add_argument("--out", required=True, help="bag folder to write")
    p.add_argument("--mode", choices=("walk", "drive"), default="walk", help="walk on sidewalks or drive in a lane")
    p.add_argument("--duration-s", type=float, default=120.0, help="drive length, seconds (default 120)")
    p.add_argument("--rate-hz", type=float, default=2.0, help="panorama rate, Hz (default 2)")
    p.add_argument("--gnss", choices=("urban", "uniform"), default="urban",
                   help="urban: Gauss-Markov bias growing in street canyons; uniform: VIGOR's +-100 m")
    p.add_argument("--pano-height-px", type=int, default=320, help="panorama height, px (default 320)")
    p.add_argument("--seed", type=int, default=0, help="route, noise and appearance seed (default 0)")
    p.add_argument("--cameras", choices=CAMERA_RIGS, default=None,
                   help="also the views of a camera rig (forward90: one 90 deg pinhole; rig4: four 100 deg pinholes; "
                        "fisheye: one 190 deg fisheye) as /N/image/compressed with /N/camera_info, and the rig file "
                        "BAG/cameras.yaml (default none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_drive)

    p = sub.add_parser("sheet", help="contact sheet of a VIGOR-layout city")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--city", required=True, help="city name under the root")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--count", type=int, default=4, help="number of panoramas (default 4)")
    p.set_defaults(func=cmd_sheet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"crossview-sim {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
