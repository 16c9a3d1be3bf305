"""crossview-tiles encode: descriptors of every tile from an exported model, resumable, refusing to mix models."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from crossview_ros import engines as E
from crossview_ros import model_meta as MM
from crossview_ros.preprocess import preprocess_aerial
from crossview_ros.matchers import check_engine_against_tiles
from crossview_ros import geo
from crossview_ros import tiles_cli
from crossview_ros.sim.coord_ortho import write_coordinate_geotiff
from crossview_ros.tiles import TileSet, TilingConfig, build_tile_set, write_tile_set

BATCH = 4
ENCODE = ["--batch-size", str(BATCH), "--engine", "onnxruntime", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def model_a(tiny_export) -> Path:
    return tiny_export(0)


@pytest.fixture(scope="module")
def model_b(tiny_export) -> Path:
    return tiny_export(1)


@pytest.fixture(scope="module")
def base_set(tmp_path_factory) -> Path:
    """25 JPEG tiles of 40 m at 64 px cut from a small RGB GeoTIFF."""
    root = tmp_path_factory.mktemp("encode")
    tif = write_coordinate_geotiff(root / "ortho.tif", crs="EPSG:3857", gsd_m=1.0, centre_lat_deg=48.2,
                                   centre_lon_deg=16.37, size_m=140.0, kind="rgb")
    return build_tile_set([tif], root / "set", TilingConfig(tile_size_m=40.0, tile_px=64), progress=False)


@pytest.fixture(scope="module")
def encoded(base_set, model_a, tmp_path_factory) -> Path:
    """base_set encoded by model A in one uninterrupted run."""
    out = Path(shutil.copytree(base_set, tmp_path_factory.mktemp("encoded") / "set"))
    assert tiles_cli.main(["encode", str(out), "--model", str(model_a), *ENCODE]) == 0
    return out


@pytest.fixture
def fresh_set(base_set, tmp_path) -> Path:
    return Path(shutil.copytree(base_set, tmp_path / "set"))


_REAL_ENCODE_AERIAL = E.OnnxEngine.encode_aerial


class Interrupt(RuntimeError):
    """Stands in for a crash in the middle of encoding."""


def _count_calls(monkeypatch, fail_on_call: int | None = None, on_fail=None) -> list[int]:
    """Wrap OnnxEngine.encode_aerial: record each batch size; raise Interrupt on call number fail_on_call."""
    calls: list[int] = []

    def wrapped(self, images):
        if fail_on_call is not None and len(calls) + 1 == fail_on_call:
            if on_fail is not None:
                on_fail()
            raise Interrupt("simulated crash")
        calls.append(images.shape[0])
        return _REAL_ENCODE_AERIAL(self, images)

    monkeypatch.setattr(E.OnnxEngine, "encode_aerial", wrapped)
    return calls


def test_encode_writes_the_engines_descriptors_stamped_with_the_model(encoded, model_a, capsys):
    ts = TileSet.open(encoded)
    meta = MM.load_model_meta(model_a)
    assert ts.model_hash == meta.model_hash and ts.meta["descriptors"]["dim"] == meta.descriptor_dim
    desc = np.asarray(ts.descriptors, dtype=np.float64)
    assert desc.shape == (len(ts), meta.descriptor_dim) and ts.descriptors.dtype == np.float16
    engine = E.OnnxEngine(model_a, threads=1)
    for i in range(len(ts)):
        want, _ = engine.encode_aerial(preprocess_aerial(meta, ts.image(i)))
        np.testing.assert_allclose(desc[i], want[0] / np.linalg.norm(want[0]), atol=1e-3)
    assert not (encoded / tiles_cli.PARTIAL_DESCRIPTORS).exists()
    assert not (encoded / tiles_cli.PARTIAL_STATE).exists()
    check_engine_against_tiles(engine, ts)


def test_rerun_with_the_same_model_does_nothing(encoded, model_a, monkeypatch, caplog):
    before = (encoded / "descriptors.f16.npy").stat().st_mtime_ns

    def no_engine(*args, **kwargs):
        raise AssertionError("no engine should be built for a finished set")

    monkeypatch.setattr(tiles_cli, "create_engine", no_engine)
    with caplog.at_level(logging.INFO, logger="crossview_ros.tiles_cli"):
        assert tiles_cli.main(["encode", str(encoded), "--model", str(model_a), *ENCODE]) == 0
    assert "nothing to do" in caplog.text
    assert (encoded / "descriptors.f16.npy").stat().st_mtime_ns == before


def test_interrupted_encode_resumes_and_gives_identical_descriptors(fresh_set, encoded, model_a, monkeypatch):
    count = len(TileSet.open(fresh_set))
    state_file = fresh_set / tiles_cli.PARTIAL_STATE
    seen_at_crash = {}
    # save every 2 batches; the crash comes on the 4th batch, after 3 finished ones.
    _count_calls(monkeypatch, fail_on_call=4,
                 on_fail=lambda: seen_at_crash.update(json.loads(state_file.read_text())))
    with pytest.raises(Interrupt):
        tiles_cli.main(["encode", str(fresh_set), "--model", str(model_a), "--save-every", "2", *ENCODE])
    assert seen_at_crash["done"] == 2 * BATCH  # the periodic save
    state = json.loads(state_file.read_text())
    assert state["done"] == 3 * BATCH and state["model_hash"] == MM.load_model_meta(model_a).model_hash
    assert TileSet.open(fresh_set).descriptors is None  # nothing half-written became the set's descriptors

    calls = _count_calls(monkeypatch)
    assert tiles_cli.main(["encode", str(fresh_set), "--model", str(model_a), *ENCODE]) == 0
    assert sum(calls) == count - 3 * BATCH and len(calls) == math.ceil((count - 3 * BATCH) / BATCH)
    resumed, whole = TileSet.open(fresh_set), TileSet.open(encoded)
    assert resumed.model_hash == whole.model_hash
    np.testing.assert_array_equal(np.asarray(resumed.descriptors), np.asarray(whole.descriptors))
    assert not state_file.exists()


def test_partial_of_another_model_starts_over(fresh_set, model_a, model_b, monkeypatch, caplog):
    count = len(TileSet.open(fresh_set))
    _count_calls(monkeypatch, fail_on_call=3)
    with pytest.raises(Interrupt):
        tiles_cli.main(["encode", str(fresh_set), "--model", str(model_a), *ENCODE])
    calls = _count_calls(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="crossview_ros.tiles_cli"):
        assert tiles_cli.main(["encode", str(fresh_set), "--model", str(model_b), *ENCODE]) == 0
    assert "discarding the partial descriptors" in caplog.text and "model_hash" in caplog.text
    assert sum(calls) == count
    assert TileSet.open(fresh_set).model_hash == MM.load_model_meta(model_b).model_hash


def test_another_models_descriptors_need_overwrite(encoded, model_a, model_b, tmp_path, capsys):
    target = Path(shutil.copytree(encoded, tmp_path / "set"))
    before = np.array(TileSet.open(target).descriptors)
    capsys.readouterr()
    assert tiles_cli.main(["encode", str(target), "--model", str(model_b), *ENCODE]) == 2
    err = capsys.readouterr().err
    assert "holds descriptors of another model" in err and "--overwrite" in err
    np.testing.assert_array_equal(np.asarray(TileSet.open(target).descriptors), before)

    assert tiles_cli.main(["encode", str(target), "--model", str(model_b), *ENCODE, "--overwrite"]) == 0
    ts = TileSet.open(target)
    meta_b = MM.load_model_meta(model_b)
    assert ts.model_hash == meta_b.model_hash
    assert not np.array_equal(np.asarray(ts.descriptors), before)
    check_engine_against_tiles(meta_b, ts)
    with pytest.raises(E.EngineError, match="come from model"):
        check_engine_against_tiles(MM.load_model_meta(model_a), ts)


def test_set_without_images_is_a_clear_error(model_a, tmp_path, capsys):
    path = write_tile_set(tmp_path / "bare", zone=geo.UTMZone(33, False), easting_m=np.array([500_000.0]),
                          northing_m=np.array([5_300_000.0]), tile_size_m=40.0, tile_px=64)
    capsys.readouterr()
    assert tiles_cli.main(["encode", str(path), "--model", str(model_a), *ENCODE]) == 2
    assert "has no tile images" in capsys.readouterr().err


def test_bad_arguments_are_refused(fresh_set, model_a, tmp_path, capsys):
    for argv, message in (
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--engine", "tensorrt", "--threads", "2"], "does not apply to --engine tensorrt"),
    ):
        capsys.readouterr()
        assert tiles_cli.main(["encode", str(fresh_set), "--model", str(model_a), *argv]) == 2
        assert message in capsys.readouterr().err
    capsys.readouterr()
    assert tiles_cli.main(["encode", str(fresh_set), "--model", str(tmp_path / "none"), *ENCODE]) == 2
    assert "does not exist" in capsys.readouterr().err
