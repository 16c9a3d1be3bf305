"""crossview-demo --gnss: the drive is simulated with the chosen receiver, a changed receiver rebuilds the
drive (its stage record includes it), and an unknown receiver is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")  # crossview_training.demo_pipeline imports the training code

from crossview_ros.bag.writer import read_drive_bag  # noqa: E402
from crossview_training import demo  # noqa: E402
from crossview_training.demo_config import DemoConfig, DemoPaths  # noqa: E402
from crossview_training.demo_pipeline import city_stage, drive_stage  # noqa: E402
from crossview_training.demo_stages import Stages  # noqa: E402


def gnss_model(bag: Path) -> str:
    """The receiver model the bag's datum message records (written by crossview-sim drive)."""
    return read_drive_bag(bag).datum["bag"]["gnss_model"]


def test_gnss_flag_picks_the_drives_receiver_and_a_change_rebuilds_the_drive(tmp_path):
    cfg = DemoConfig(work=tmp_path / "work", test_city_m=150.0, gsd_m=0.5, drive_s=2.0, pano_height_px=32,
                     progress=False)
    paths = DemoPaths.of(cfg)
    city = city_stage(Stages(cfg.work, False), cfg, paths)

    urban = drive_stage(Stages(cfg.work, False), cfg, paths, city)
    assert urban.status == "built" and gnss_model(paths.drive) == "urban"  # the default
    again = drive_stage(Stages(cfg.work, False), cfg, paths, city)
    assert again.status == "reused" and again.fingerprint == urban.fingerprint

    cfg.gnss = "uniform"
    uniform = drive_stage(Stages(cfg.work, False), cfg, paths, city)
    assert uniform.status == "built" and uniform.fingerprint != urban.fingerprint
    assert gnss_model(paths.drive) == "uniform"


def test_unknown_receiver_exits_2_and_writes_nothing(tmp_path, capsys):
    work = tmp_path / "work"
    assert demo.main(["--work", str(work), "--gnss", "gps"]) == 2
    assert "--gnss" in capsys.readouterr().err
    assert not work.exists()
    with pytest.raises(demo.UsageError, match="--gnss must be urban or uniform"):
        DemoConfig(work=work, gnss="gps").validate()


def test_help_names_the_receivers(capsys):
    assert demo.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--gnss" in out and "uniform" in out and "urban" in out
