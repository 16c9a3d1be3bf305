"""Write synthetic cities in VIGOR's on-disk layout, so one loader reads VIGOR and our data.

Layout (Zhu et al., VIGOR, CVPR 2021; file names and split files as in the released data):

    <root>/<City>/panorama/<prefix>,<lat>,<lon>,.jpg     equirectangular, north in the middle column
    <root>/<City>/satellite/satellite_<lat>_<lon>.png    sat_px x sat_px, north-up
    <root>/<City>/city.json                              our provenance (VIGOR's readers ignore it)
    <root>/<City>/orthophoto.tif                         the aerial survey the tiles were cut from
    <root>/splits/<City>/satellite_list.txt
    <root>/splits/<City>/pano_label_balanced.txt         every panorama (cross-area uses these)
    <root>/splits/<City>/same_area_balanced_train.txt    same-area halves
    <root>/splits/<City>/same_area_balanced_test.txt
    <root>/dataset.json                                  cities, cross-area roles, conventions

A label line is `pano sat0 d0a d0b sat1 d1a d1b sat2 d2a d2b sat3 d3a d3b`: the positive tile
(the one whose central quarter holds the panorama) then the three semi-positives by decreasing
IoU. Each delta pair is the panorama's pixel offset as VIGOR's evaluation code reads it:
`(da, db) = ((N_tile - N_pano), (E_tile - E_pano)) / gsd`, i.e. the panorama sits at image row
`sat_px/2 + da` and column `sat_px/2 - db` of that tile. Tiles are square on the UTM grid (grid
north up), so the deltas are exact in pixels: our `gsd` is the tile's true ground sampling
distance (the issue SliceMatch's corrected labels fix for the real data does not arise).

The satellite images are cut by tiles.build_tile_set from the written orthophoto, the same code
that cuts the runtime tile set, so training and run time see the same tiles.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from crossview_ros.atomic import write_bytes_atomic, write_text_atomic
from crossview_ros.config import check_known_keys
from crossview_ros import geo
from crossview_ros.sim.appearance import apply_appearance, apply_season, sample_appearance
from crossview_ros.sim.city import City, CityConfig, generate_city
from crossview_ros.sim.ortho import render_orthophoto, write_orthophoto
from crossview_ros.sim.render import CameraConfig, Occluder, compile_renderer, render_panorama
from crossview_ros.sim.scene import Material, Sun
from crossview_ros.tiles import VIGOR_TILE_SIZE_M, TileSet, TilingConfig, build_tile_set

log = logging.getLogger(__name__)

FORMAT = "crossview_ros.vigor_synthetic"
FORMAT_VERSION = 1

AERIAL_SUN_AZIMUTH_DEG = (0.0, 360.0)  # per-city survey suns (VigorConfig.aerial_sun None), uniform
AERIAL_SUN_ELEVATION_DEG = (30.0, 70.0)
SEASON_RANGE = (0.0, 0.8)  # apply_season's strength, per city survey and per panorama, uniform

# VIGOR's cross-area protocol: these cities train, the others test (design.md).
VIGOR_CROSS_AREA_TRAIN = ("NewYork", "Seattle")
VIGOR_CROSS_AREA_TEST = ("Chicago", "SanFrancisco")

# Real city centres, so synthetic cities sit where VIGOR's do (and in different UTM zones).
CITY_DATUMS: dict[str, tuple[float, float]] = {
    "NewYork": (40.7580, -73.9855),
    "Seattle": (47.6062, -122.3321),
    "Chicago": (41.8781, -87.6298),
    "SanFrancisco": (37.7749, -122.4194),
}


@dataclass
class VigorConfig:
    """How panoramas and tiles of one synthetic city are produced (seeded, resumable)."""

    panoramas: int = 400  # panoramas per city
    pano_height_px: int = 1024  # panorama height; width = 2 x height (VIGOR: 2048 x 1024)
    sat_px: int = 640  # satellite image side, pixels (VIGOR: 640)
    tile_size_m: float = VIGOR_TILE_SIZE_M  # satellite image side, metres
    max_positives_per_tile: int = 2  # VIGOR's balancing: at most 2 panoramas per positive tile
    same_area_train_fraction: float = 0.5  # share of a city's panoramas in same_area_balanced_train
    jpeg_quality: int = 90  # panorama JPEG quality
    time_gap: bool = True  # panoramas show a later epoch (cars moved, trees changed)
    appearance_gap: bool = True  # different colour response, exposure, noise, blur per view
    occluders_max: int = 3  # pedestrians/vehicles close to the camera, 0..n per panorama
    camera_height_m: tuple[float, float] = (1.6, 2.4)  # uniform range of the camera height
    attitude_jitter_deg: float = 1.5  # std of camera pitch and roll
    # (azimuth bearing, elevation) deg of the survey; None = each city its own sun, drawn from
    # AERIAL_SUN_AZIMUTH_DEG x AERIAL_SUN_ELEVATION_DEG (a model then cannot learn one sun's shadows)
    aerial_sun: tuple[float, float] | None = None
    season_gap: bool = True  # each city's survey and each panorama in its own season (apply_season)
    seed: int = 0  # seeds positions, cameras and appearance (the city has its own seed)

    def validate(self) -> None:
        if self.panoramas < 1:
            raise ValueError(f"panoramas must be >= 1, got {self.panoramas}")
        if self.pano_height_px < 16 or self.pano_height_px % 2:
            raise ValueError(f"pano_height_px must be an even number >= 16, got {self.pano_height_px}")
        if self.sat_px < 16:
            raise ValueError(f"sat_px must be >= 16, got {self.sat_px}")
        if not self.tile_size_m > 0:
            raise ValueError(f"tile_size_m must be > 0, got {self.tile_size_m}")
        if self.max_positives_per_tile < 1:
            raise ValueError(f"max_positives_per_tile must be >= 1, got {self.max_positives_per_tile}")
        if not 0.0 < self.same_area_train_fraction < 1.0:
            raise ValueError(f"same_area_train_fraction must be in (0, 1), got {self.same_area_train_fraction}")
        lo, hi = self.camera_height_m
        if not 0.0 < lo <= hi:
            raise ValueError(f"camera_height_m must be a range 0 < lo <= hi, got {self.camera_height_m}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VigorConfig:
        check_known_keys(cls, values)
        values = dict(values)
        for key in ("camera_height_m", "aerial_sun"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class PanoramaLabel:
    """One panorama and its four covering tiles (positive first), as written to the splits."""

    name: str  # panorama file name
    easting_m: float
    northing_m: float
    tiles: tuple[int, ...]  # tile ids, positive first
    deltas_px: tuple[tuple[float, float], ...]  # VIGOR (da, db) per tile
    iou: tuple[float, ...] = field(default=())

    def line(self, sat_names: Sequence[str]) -> str:
        parts = [self.name]
        for tile_id, (da, db) in zip(self.tiles, self.deltas_px):
            parts += [sat_names[tile_id], f"{da:.6f}", f"{db:.6f}"]
        return " ".join(parts)


def satellite_name(lat_deg: float, lon_deg: float) -> str:
    return f"satellite_{lat_deg:.9f}_{lon_deg:.9f}.png"


def panorama_name(prefix: str, lat_deg: float, lon_deg: float) -> str:
    return f"{prefix},{lat_deg:.9f},{lon_deg:.9f},.jpg"


def vigor_deltas_px(
    tile_e_m: float, tile_n_m: float, pano_e_m: float, pano_n_m: float, gsd_m: float
) -> tuple[float, float]:
    """VIGOR's (da, db) pixel offset of a panorama relative to a tile centre (module docstring)."""
    return (tile_n_m - pano_n_m) / gsd_m, (tile_e_m - pano_e_m) / gsd_m


def _sample_positions(
    city: City, tile_set: TileSet, config: VigorConfig, rng: np.random.Generator
) -> list[tuple[float, float, list]]:
    """Camera positions on streets and sidewalks, each inside four tiles, balanced per tile.

    Positions are drawn along street edges (weighted by length) with a lateral offset across the
    carriageway and sidewalks; cells covered by cars, trees or buildings in either epoch are
    rejected, as are points not covered by four tiles and tiles that already hold
    max_positives_per_tile panoramas.
    """
    streets = city.streets
    p0 = streets.nodes_en[streets.edges[:, 0]]
    p1 = streets.nodes_en[streets.edges[:, 1]]
    length = np.linalg.norm(p1 - p0, axis=1)
    usable = length > 1e-6
    if not usable.any():
        raise ValueError("the city has no streets to place panoramas on")
    weights = np.where(usable, length, 0.0)
    weights /= weights.sum()
    half_width = streets.width_m / 2.0 + streets.sidewalk_m
    scenes = [city.scene(0), city.scene(1) if config.time_gap else city.scene(0)]
    positives: dict[int, int] = {}
    chosen: list[tuple[float, float, list]] = []
    attempts = 0
    max_attempts = 200 * config.panoramas
    while len(chosen) < config.panoramas and attempts < max_attempts:
        attempts += 1
        k = int(rng.choice(len(weights), p=weights))
        t = rng.uniform(0.0, 1.0)
        direction = (p1[k] - p0[k]) / length[k]
        normal = np.array([-direction[1], direction[0]])
        lateral = rng.uniform(-half_width[k], half_width[k])
        e, n = p0[k] + t * (p1[k] - p0[k]) + lateral * normal
        blocked = False
        for scene in scenes:
            if not bool(scene.contains(e, n)):
                blocked = True
                break
            r, c = scene.cell_of(e, n)
            if scene.height_m[r, c] > 0.3 or scene.material[r, c] == Material.BUILDING:
                blocked = True
                break
        if blocked:
            continue
        coverage = tile_set.tiles_covering_utm(e, n)
        if len(coverage) != 4:
            continue
        positive = coverage[0].tile_id
        if positives.get(positive, 0) >= config.max_positives_per_tile:
            continue
        positives[positive] = positives.get(positive, 0) + 1
        chosen.append((float(e), float(n), coverage))
    if len(chosen) < config.panoramas:
        log.warning(
            "placed %d of %d panoramas: the city has too few street positions with four covering "
            "tiles and at most %d panoramas per positive tile; use a larger city or fewer panoramas",
            len(chosen), config.panoramas, config.max_positives_per_tile,
        )
    return chosen


def _occluders(rng: np.random.Generator, e: float, n: float, count: int) -> list[Occluder]:
    out = []
    for _ in range(count):
        person = rng.random() < 0.7
        distance = rng.uniform(1.5, 6.0)
        bearing = rng.uniform(0.0, 2 * math.pi)
        radius = rng.uniform(0.2, 0.3) if person else rng.uniform(0.9, 1.2)
        height = rng.uniform(1.55, 1.9) if person else rng.uniform(1.4, 2.2)
        rgb = tuple(int(v) for v in rng.integers(20, 230, 3))
        out.append(Occluder(e + distance * math.sin(bearing), n + distance * math.cos(bearing), radius, height, rgb))
    return out


def write_vigor_city(
    root: str | os.PathLike, city_name: str, city: City, config: VigorConfig | None = None,
    *, progress: bool = True,
) -> list[PanoramaLabel]:
    """Write one city's orthophoto, satellite images, panoramas and split files.

    Resumable: the orthophoto, the tiles and every panorama already on disk (and matching the
    same city and config, checked through city.json) are kept; split files are rewritten at the
    end, atomically. Returns the labels written.
    """
    config = config or VigorConfig()
    config.validate()
    if not city_name or any(ch in city_name for ch in "/\\,"):
        raise ValueError(f"city name {city_name!r} must be non-empty without '/', '\\' or ','")
    city_dir = Path(root) / city_name
    stamp = _city_stamp(city_dir, city, config)
    city_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, city.config.seed, 0x716])
    ortho_path = _write_city_orthophoto(city_dir, city_name, city, config, rng)
    write_text_atomic(city_dir / "city.json", json.dumps(stamp, indent=2, sort_keys=True))
    tile_set, sat_names = _write_satellite_images(city_dir, ortho_path, config, progress)

    positions = _sample_positions(city, tile_set, config, rng)
    pano_dir = city_dir / "panorama"
    pano_dir.mkdir(exist_ok=True)
    gsd = config.tile_size_m / config.sat_px
    ground_scene = city.scene(1 if config.time_gap else 0)
    labels: list[PanoramaLabel] = []
    compile_renderer(ground_scene)  # before the bar: a fresh install's first panorama would set its ETA
    bar = tqdm(positions, desc=f"{city_name} panoramas", unit="pano", disable=not progress)
    for index, (e, n, coverage) in enumerate(bar):
        lat, lon = geo.utm_to_latlon(e, n, city.zone)
        name = panorama_name(f"{city_name}{index:06d}", lat, lon)
        if not (pano_dir / name).exists():
            _write_panorama(pano_dir / name, ground_scene, e, n, city, config, index)
        tiles = tuple(c.tile_id for c in coverage)
        deltas = tuple(
            vigor_deltas_px(tile_set.easting_m[t], tile_set.northing_m[t], e, n, gsd) for t in tiles
        )
        labels.append(PanoramaLabel(name, e, n, tiles, deltas, tuple(c.iou for c in coverage)))
    _write_splits(Path(root) / "splits" / city_name, labels, sat_names, city, config)
    return labels


def _city_stamp(city_dir: Path, city: City, config: VigorConfig) -> dict[str, Any]:
    """What city.json records; ValueError when the folder already holds another city or settings."""
    # Through JSON once, so that tuples compare equal to the lists read back.
    stamp = json.loads(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "city": city.city_json(),
        "vigor": asdict(config),
    }))
    city_json = city_dir / "city.json"
    if city_json.exists():
        previous = json.loads(city_json.read_text())
        if {k: previous.get(k) for k in stamp} != stamp:
            raise ValueError(
                f"{city_dir} holds a different city or settings (city.json differs); "
                "write to another root or delete that folder"
            )
    return stamp


def survey_conditions(city: City, config: VigorConfig) -> tuple[Sun, float]:
    """The sun and season of a city's aerial survey: config.aerial_sun, or a sun of the city's own
    (seeded by the dataset's and the city's seeds), and the survey's season (0 without season_gap)."""
    rng = np.random.default_rng([config.seed, city.config.seed, 4])
    drawn = Sun(float(rng.uniform(*AERIAL_SUN_AZIMUTH_DEG)), float(rng.uniform(*AERIAL_SUN_ELEVATION_DEG)))
    season = float(rng.uniform(*SEASON_RANGE))
    sun = drawn if config.aerial_sun is None else Sun(*config.aerial_sun)
    return sun, season if config.season_gap else 0.0


def _write_city_orthophoto(city_dir: Path, city_name: str, city: City, config: VigorConfig,
                           rng: np.random.Generator) -> Path:
    """The survey orthophoto (kept when present); draws the aerial appearance from `rng` either way,
    so the panoramas' positions drawn next are the same on a resumed run."""
    ortho_path = city_dir / "orthophoto.tif"
    aerial_appearance = sample_appearance(rng, "aerial") if config.appearance_gap else None
    aerial_rng = np.random.default_rng([config.seed, city.config.seed, 1])
    if not ortho_path.exists():
        sun, season = survey_conditions(city, config)
        log.info("rendering the orthophoto of %s (sun azimuth %.0f deg, elevation %.0f deg; season %.2f)",
                 city_name, sun.azimuth_deg, sun.elevation_deg, season)
        image = render_orthophoto(city.scene(0), sun, aerial_appearance, aerial_rng)
        if season > 0.0:
            image = apply_season(image, season)
        write_orthophoto(ortho_path, image, city.scene(0))
        del image
    return ortho_path


def _write_satellite_images(city_dir: Path, ortho_path: Path, config: VigorConfig,
                            progress: bool) -> tuple[TileSet, list[str]]:
    """The orthophoto cut into VIGOR's satellite images (a hidden tile set, then copies named by
    their centre); returns the tile set and the image names."""
    tiles_dir = city_dir / ".tiles"
    if not (tiles_dir / "meta.json").exists():
        tiling = TilingConfig(tile_size_m=config.tile_size_m, tile_px=config.sat_px, image_format="png")
        build_tile_set([ortho_path], tiles_dir, tiling, overwrite=False, progress=progress)
    tile_set = TileSet.open(tiles_dir)
    sat_dir = city_dir / "satellite"
    sat_dir.mkdir(exist_ok=True)
    sat_names = [satellite_name(tile_set.lat_deg[i], tile_set.lon_deg[i]) for i in range(len(tile_set))]
    for i, name in enumerate(sat_names):
        target = sat_dir / name
        if not target.exists():
            tmp = sat_dir / f".{name}.tmp"
            shutil.copyfile(tile_set.image_path(i), tmp)
            os.replace(tmp, target)
    return tile_set, sat_names


def _write_panorama(path: Path, ground_scene: Any, e: float, n: float, city: City, config: VigorConfig,
                    index: int) -> None:
    """Panorama number `index`: its own generator, so a resumed run draws the same camera for it."""
    prng = np.random.default_rng([config.seed, city.config.seed, 2, index])
    camera = CameraConfig(
        height_m=float(prng.uniform(*config.camera_height_m)),
        pitch_rad=math.radians(prng.normal(0.0, config.attitude_jitter_deg)),
        roll_rad=math.radians(prng.normal(0.0, config.attitude_jitter_deg)),
    )
    sun = Sun(float(prng.uniform(0.0, 360.0)), float(prng.uniform(20.0, 70.0)))
    occluders = _occluders(prng, e, n, int(prng.integers(0, config.occluders_max + 1)))
    # Forward = true south puts true north in the middle column, as in VIGOR.
    image = render_panorama(
        ground_scene, e, n, -math.pi / 2, height_px=config.pano_height_px,
        camera=camera, sun=sun, occluders=occluders,
    )
    if config.appearance_gap:
        image = apply_appearance(image, sample_appearance(prng, "ground"), prng)
    season = float(prng.uniform(*SEASON_RANGE))  # drawn last: the draws above keep their values
    if config.season_gap and season > 0.0:
        image = apply_season(image, season)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding of {path.name} failed")
    write_bytes_atomic(path, jpeg.tobytes())


def _write_splits(split_dir: Path, labels: list[PanoramaLabel], sat_names: list[str], city: City,
                  config: VigorConfig) -> None:
    """VIGOR's split files, each atomically: the satellite list, all labels, same-area train/test."""
    lines = [label.line(sat_names) for label in labels]
    order = np.random.default_rng([config.seed, city.config.seed, 3]).permutation(len(lines))
    n_train = int(round(config.same_area_train_fraction * len(lines)))
    train = sorted(order[:n_train])
    test = sorted(order[n_train:])
    write_text_atomic(split_dir / "satellite_list.txt", "\n".join(sat_names) + "\n")
    write_text_atomic(split_dir / "pano_label_balanced.txt", "\n".join(lines) + "\n")
    write_text_atomic(split_dir / "same_area_balanced_train.txt", "".join(lines[i] + "\n" for i in train))
    write_text_atomic(split_dir / "same_area_balanced_test.txt", "".join(lines[i] + "\n" for i in test))


def write_vigor_dataset(
    root: str | os.PathLike, cities: dict[str, CityConfig], config: VigorConfig | None = None,
    *, cross_area_train: Sequence[str] | None = None, progress: bool = True, jobs: int = 1,
) -> Path:
    """Write several cities and `dataset.json` naming which ones train in the cross-area split.

    jobs > 1 writes that many cities at once, each in its own process (a city's bytes do not
    depend on it: every draw is seeded by the city and the config).

    cross_area_train defaults to VIGOR's (NewYork, Seattle) and their extras (default_cities) among
    the given cities, else the first half of them.
    """
    if len(cities) < 2:
        raise ValueError("a dataset needs at least two differently seeded cities (same- and cross-area splits)")
    seeds = [c.seed for c in cities.values()]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"cities must be seeded differently, got seeds {seeds}")
    names = list(cities)
    if cross_area_train is None:
        cross_area_train = cross_area_train_cities(names) or names[: len(names) // 2]
    unknown = sorted(set(cross_area_train) - set(names))
    if unknown or not 0 < len(cross_area_train) < len(names):
        raise ValueError(f"cross_area_train {list(cross_area_train)} must be a proper subset of {names}")
    root = Path(root)
    if jobs <= 1:
        for name, city_config in cities.items():
            write_vigor_city(root, name, generate_city(city_config), config, progress=progress)
    else:
        _write_cities_in_parallel(root, cities, config, jobs, progress)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "cities": names,
        "cross_area": {"train": list(cross_area_train), "test": [c for c in names if c not in cross_area_train]},
        "conventions": {
            "delta": "(da, db) = ((N_tile - N_pano), (E_tile - E_pano)) / gsd; row = sat_px/2 + da, col = sat_px/2 - db",
            "panorama": "equirectangular, north in the middle column, azimuth increasing to the right",
            "satellite": "north-up on the UTM grid of the city's zone",
        },
        "vigor_config": asdict(config or VigorConfig()),
    }
    write_text_atomic(root / "dataset.json", json.dumps(manifest, indent=2))
    return root


def _write_city_job(root: Path, name: str, city_config: CityConfig, config: VigorConfig | None) -> str:
    write_vigor_city(root, name, generate_city(city_config), config, progress=False)
    return name


def _write_cities_in_parallel(root: Path, cities: dict[str, CityConfig], config: VigorConfig | None,
                              jobs: int, progress: bool) -> None:
    """One process per city (spawned: numba and OpenCV threads do not survive a fork well)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(cities)), mp_context=context) as pool:
        futures = [pool.submit(_write_city_job, root, name, c, config) for name, c in cities.items()]
        for future in tqdm(as_completed(futures), total=len(futures), desc="cities", unit="city",
                           disable=not progress):
            log.info("wrote city %s", future.result())


def default_cities(count: int = 2, *, size_m: float = 1000.0, gsd_m: float = 0.15, seed: int = 0,
                   extra_train: int = 0) -> dict[str, CityConfig]:
    """`count` (2..4) differently seeded cities at VIGOR's city centres, cross-area roles as VIGOR,
    then `extra_train` more training cities (NewYork2, Seattle2, NewYork3, ...) at the training
    cities' datums with seeds of their own: the cross-area test cities stay the same bytes.
    """
    order = ["NewYork", "Chicago", "Seattle", "SanFrancisco"]
    if not 2 <= count <= 4:
        raise ValueError(f"count must be 2..4, got {count}")
    if extra_train < 0:
        raise ValueError(f"extra_train must be >= 0, got {extra_train}")
    out = {}
    for i, name in enumerate(order[:count]):
        lat, lon = CITY_DATUMS[name]
        out[name] = CityConfig(datum_lat_deg=lat, datum_lon_deg=lon, size_m=size_m, gsd_m=gsd_m, seed=seed * 10 + i + 1)
    train = [name for name in out if name in VIGOR_CROSS_AREA_TRAIN]
    for j in range(extra_train):
        base = train[j % len(train)]
        lat, lon = CITY_DATUMS[base]
        out[f"{base}{j // len(train) + 2}"] = CityConfig(datum_lat_deg=lat, datum_lon_deg=lon, size_m=size_m,
                                                         gsd_m=gsd_m, seed=100_000 + seed * 100 + j)
    return out


def cross_area_train_cities(cities: Sequence[str]) -> list[str]:
    """The training cities of the cross-area split: VIGOR's (NewYork, Seattle) and their extras."""
    return [name for name in cities if name.rstrip("0123456789") in VIGOR_CROSS_AREA_TRAIN]
