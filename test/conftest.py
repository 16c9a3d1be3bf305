"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_GROUND = (64, 128)  # panorama input of the tiny test model
TINY_AERIAL = (64, 64)  # tile input
TINY_DIM = 32  # descriptor size
TINY_TILE_M = 40.0  # tile side the tiny model's offsets refer to


@pytest.fixture(scope="session")
def tiny_model():
    """tiny_model(seed): the small preset at test size; the same seed gives the same weights."""
    torch = pytest.importorskip("torch")
    from crossview_training.models import create_model

    def make(seed: int):
        torch.manual_seed(seed)
        return create_model("small", ground_size=TINY_GROUND, aerial_size=TINY_AERIAL, dim=TINY_DIM).eval()

    return make


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model):
    """tiny_export(seed): the ONNX export of tiny_model(seed), made once per session."""
    torch = pytest.importorskip("torch")
    from crossview_training.export import export_onnx

    def make(seed: int) -> Path:
        out = tmp_path_factory.getbasetemp() / f"tiny-export-seed{seed}"
        if not (out / "model.json").is_file():
            torch.set_num_threads(1)
            export_onnx(tiny_model(seed), out, tile_size_m=TINY_TILE_M)
        return out

    return make


@pytest.fixture(scope="session")
def small_drive(tmp_path_factory, tiny_export):
    """A small synthetic city (200 m), a drive bag in it (15 s at 2 Hz, 64 px panoramas: 31 frames) and its
    tile set encoded with the tiny model (seed 0): what test_replay and test_foreign_bag replay."""
    from crossview_ros import tiles_cli
    from crossview_ros.sim.cli import main as sim_main
    from crossview_ros.tiles import TilingConfig, build_tile_set

    root = tmp_path_factory.mktemp("drive")
    assert sim_main(["city", "--out", str(root / "city"), "--size-m", "200", "--gsd-m", "0.5", "--seed", "3",
                     "--no-progress"]) == 0
    assert sim_main(["drive", "--city", str(root / "city"), "--out", str(root / "bag"), "--duration-s", "15",
                     "--rate-hz", "2", "--pano-height-px", "64", "--seed", "1", "--no-progress"]) == 0
    model = tiny_export(0)
    tiles = build_tile_set([root / "city" / "orthophoto.tif"], root / "tiles",
                           TilingConfig(tile_size_m=TINY_TILE_M, tile_px=64), progress=False)
    tiles_cli.encode_tile_set(tiles, model, engine="onnxruntime", threads=1, progress=False)
    return {"root": root, "bag": root / "bag", "tiles": tiles, "model": model}
