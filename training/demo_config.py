"""The demo's settings (DemoConfig: one field per crossview-demo flag) and where each stage writes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from crossview_ros.sim.vigor import default_cities

PROG = "crossview-demo"
DRIVE_TRACK_SPEED_MPS = 12.0  # the drive preset's fastest cruise speed, m/s (sim.drive MOTION_PRESETS)
MIN_VALIDATION_S = 30.0  # each calibration walk is as long as the drive, and at least this
SAME_AREA_TRAIN_FRACTION = 0.9  # share of each city's panoramas in same_area_balanced_train (the demo trains on it)
TEST_CITY_LAT_DEG, TEST_CITY_LON_DEG = 40.7580, -73.9855  # held-out city centre (crossview-sim city's default)
GNSS_RECEIVERS = ("urban", "uniform")  # crossview-sim drive --gnss: street-canyon bias, or VIGOR's uniform +-100 m


class UsageError(ValueError):
    """Bad arguments (exit code 2)."""


@dataclass
class DemoConfig:
    """Every setting of a demo run (the CLI flags); the stage records keep the ones each stage uses."""

    work: Path = Path("demo")  # everything is written under this folder
    preset: str = "cpu-bev-any-yaw"  # crossview-train preset (training.train.PRESETS); cpu-bev-any-yaw: any camera heading
    train_minutes: float = 5.0  # training time budget, minutes (crossview-train time_budget_min)
    train_set: tuple[str, ...] = ()  # more TrainConfig KEY=VALUE overrides, applied last
    cities: int = 2  # training cities, 2..4 (VIGOR's centres: NewYork, Chicago, Seattle, SanFrancisco)
    city_m: float = 600.0  # side of each training city, metres
    panoramas: int = 300  # panoramas per training city (VIGOR caps 2 per positive tile)
    pano_height_px: int = 320  # panorama height of the dataset and the drive (width = 2 x height)
    sat_px: int = 640  # training aerial image side and runtime tile side, pixels
    tile_size_m: float = 72.96  # training aerial image side and runtime tile side, metres (VIGOR's L)
    gsd_m: float = 0.15  # orthophoto ground sampling distance of every city, m/px
    test_city_m: float = 600.0  # side of the held-out city, metres
    test_seed: int = 100  # city seed of the held-out city (must differ from the training cities')
    drive_s: float = 180.0  # length of the drive, seconds
    drive_rate_hz: float = 2.0  # panorama rate of the drive, Hz
    mode: str = "walk"  # walk on sidewalks or drive in a lane
    gnss: str = "urban"  # receiver of the drive and the calibration walks: urban (street-canyon bias) or uniform (+-100 m)
    calibration_walks: int = 4  # validation walks the calibration pools (seeds seed + 1, + 2, ...: other routes)
    replay_rate: float = 4.0  # replay speed, x real time (2 Hz x 4 = 8 panoramas/s to the node)
    heading: bool = True  # the node estimates and publishes the heading too
    params_file: Path | None = None  # node parameters YAML (default: the node's defaults = config/localize.yaml)
    node_args: tuple[str, ...] = ()  # more ROS arguments for localize_node (after the replay's own)
    seed: int = 0  # training cities, panorama sampling, training and drive seed
    overwrite: bool = False  # rebuild every stage
    progress: bool = True  # progress bars

    def training_seeds(self) -> list[int]:
        """City seeds of the training cities (the held-out city must not be one of them)."""
        return [c.seed for c in default_cities(self.cities, size_m=self.city_m, gsd_m=self.gsd_m,
                                               seed=self.seed).values()]

    def validate(self) -> None:
        """UsageError naming the first bad setting and how to fix it."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        def finite(name: str, value: float, lo: float) -> None:
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= lo,
                 f"--{name.replace('_', '-')} must be a number >= {lo:g}, got {value!r}")

        need(isinstance(self.calibration_walks, int) and 1 <= self.calibration_walks <= 20,
             f"--calibration-walks must be 1..20, got {self.calibration_walks!r}")
        need(2 <= self.cities <= 4, f"--cities must be 2..4 (VIGOR's four city centres), got {self.cities}")
        finite("city_m", self.city_m, 150.0)
        finite("test_city_m", self.test_city_m, 150.0)
        need(self.panoramas >= 8, f"--panoramas must be >= 8 per city, got {self.panoramas}")
        need(self.pano_height_px >= 16 and self.pano_height_px % 2 == 0,
             f"--pano-height-px must be an even number >= 16, got {self.pano_height_px}")
        need(self.sat_px >= 16, f"--sat-px must be >= 16, got {self.sat_px}")
        finite("tile_size_m", self.tile_size_m, 1.0)
        need(math.isfinite(self.gsd_m) and 0.02 <= self.gsd_m <= 2.0, f"--gsd-m must be in 0.02..2 m/px, got {self.gsd_m}")
        need(self.tile_size_m * 2.5 <= min(self.city_m, self.test_city_m),
             f"cities of {min(self.city_m, self.test_city_m):g} m are too small for {self.tile_size_m:g} m tiles: "
             "--city-m and --test-city-m must be >= 2.5 x --tile-size-m")
        need(math.isfinite(self.train_minutes) and self.train_minutes > 0,
             f"--train-minutes must be > 0, got {self.train_minutes}")
        need(math.isfinite(self.drive_s) and self.drive_s >= 2.0, f"--drive-s must be >= 2, got {self.drive_s}")
        need(math.isfinite(self.drive_rate_hz) and 0.1 <= self.drive_rate_hz <= 30,
             f"--drive-rate-hz must be in 0.1..30, got {self.drive_rate_hz}")
        need(self.drive_s * self.drive_rate_hz >= 2, "the drive needs at least 2 panoramas: raise --drive-s")
        need(math.isfinite(self.replay_rate) and self.replay_rate > 0,
             f"--replay-rate must be > 0 (x real time), got {self.replay_rate}")
        need(self.mode in ("walk", "drive"), f"--mode must be walk or drive, got {self.mode!r}")
        need(self.gnss in GNSS_RECEIVERS, f"--gnss must be urban or uniform, got {self.gnss!r}")
        need(self.test_seed not in self.training_seeds(),
             f"--test-seed {self.test_seed} is the seed of a training city ({self.training_seeds()}); the drive "
             "must run in a city no training panorama shows: pick another")
        need(not self.work.exists() or self.work.is_dir(), f"--work {self.work} exists and is not a folder")
        need(self.params_file is None or self.params_file.is_file(), f"--params-file {self.params_file} not found")


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage writes: shared stages under WORK, per-model ones under WORK/PRESET."""

    dataset: Path
    train: Path
    model: Path
    city: Path
    tiles: Path
    drive: Path
    calibration: Path
    replay: Path
    summary: Path  # demo_summary.json

    @classmethod
    def of(cls, cfg: DemoConfig) -> DemoPaths:
        work, per_model = cfg.work, cfg.work / cfg.preset
        return cls(dataset=work / "dataset", train=per_model / "train", model=per_model / "model",
                   city=work / "city", tiles=per_model / "tiles", drive=work / "drive",
                   calibration=per_model / "calibration", replay=per_model / "replay",
                   summary=per_model / "demo_summary.json")
