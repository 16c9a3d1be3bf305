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
