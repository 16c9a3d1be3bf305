"""crossview-train: config building, a tiny run's files, resume equality and two-process DDP.

The tiny runs use 32x64 panoramas and 64x64 tiles of a 16-panorama synthetic city (the aerial
side stays 64: models.py measures the feature map with one image in training mode, which a
BatchNorm backbone refuses for a 1x1 map). The DDP comparison uses timm's `test_convnext`
backbone: LayerNorm only, because per-rank BatchNorm statistics differ from the combined
batch's by design (train.py's docstring).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from crossview_ros.sim.city import CityConfig  # noqa: E402
from crossview_ros.sim.vigor import VigorConfig, write_vigor_dataset  # noqa: E402
from crossview_training import evaluate as ev  # noqa: E402
from crossview_training import train as tr  # noqa: E402
from crossview_training.models import load_checkpoint, model_hash, read_checkpoint  # noqa: E402

torch.set_num_threads(1)

CITIES = {
    "NewYork": CityConfig(datum_lat_deg=40.7580, datum_lon_deg=-73.9855, size_m=260.0, gsd_m=0.25, seed=31),
    "Chicago": CityConfig(datum_lat_deg=41.8781, datum_lon_deg=-87.6298, size_m=260.0, gsd_m=0.25, seed=32),
}
VIGOR = VigorConfig(panoramas=16, pano_height_px=32, sat_px=64, tile_size_m=40.0, seed=5)
TINY = ["model=small", "model_overrides={dim: 32}", "ground_size=[32, 64]", "aerial_size=[64, 64]",
        "batch_size=4", "epochs=2", "threads=1", "val_panoramas=2", "warmup_steps=2", "rotation_deg=20"]
# BatchNorm-free model, batches of 4 (16 panoramas, no validation hold-out): even on 2 ranks.
DDP = ["model=small", "model_overrides={backbone: test_convnext, dim: 32}", "ground_size=[32, 64]",
       "aerial_size=[32, 32]", "batch_size=4", "epochs=2", "threads=1", "val_panoramas=0", "mining=in_batch",
       "warmup_steps=2"]


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vigor_train")
    write_vigor_dataset(root, CITIES, VIGOR, cross_area_train=["NewYork"], progress=False)
    return root


def _config(root: Path, overrides: list[str]) -> tr.TrainConfig:
    return tr.build_config(None, None, [f"data={root}", *overrides])


@pytest.fixture(scope="session")
def finished(train_root, tmp_path_factory):
    """(config, folder) of an uninterrupted tiny run."""
    config = _config(train_root, TINY)
    out = tmp_path_factory.mktemp("run_full")
    tr.train(config, out, progress=False)
    return config, out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0 or not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0.0, msg=key)


# --------------------------------------------------------------------------- config


def test_build_config_preset_yaml_then_overrides(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("epochs: 3\nlr: 0.002\nground_size: [64, 128]\nloss: triplet\n")
    config = tr.build_config("cpu-small", str(yaml_file), ["lr=5e-4", "model_overrides={dim: 64}", "data=/d"])
    assert config.model == "small" and config.mining == "neighbours" and config.threads == 2  # preset
    assert config.epochs == 3 and config.loss == "triplet" and config.ground_size == (64, 128)  # YAML
    assert config.lr == 5e-4 and config.model_overrides == {"dim": 64} and config.data == "/d"  # --set
    assert config.aerial_size == (128, 128)
    assert tr.build_config("vgg16-paper", None, []).model == "vgg16_safa"
    # PyYAML reads 2e-5 (no dot) as a string; numbers still come out as numbers.
    assert tr.build_config(None, None, ["lr=2e-5", "epochs=4.0"]).lr == 2e-5
    assert type(tr.build_config(None, None, ["epochs=4.0"]).epochs) is int
    plain = tr.build_config(None, None, [])
    assert plain == tr.TrainConfig()
    assert tr.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_build_config_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"unknown train config keys \['epoch'\]; valid keys: .*'epochs'"):
        tr.build_config(None, None, ["epoch=3"])
    with pytest.raises(ValueError, match="unknown preset 'gpu-huge'; valid presets: cpu-bev, cpu-bev-any-yaw, cpu-small, vgg16-paper"):
        tr.build_config("gpu-huge", None, [])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        tr.build_config(None, None, ["epochs"])
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        tr.build_config(None, None, ["lr=fast"])
    with pytest.raises(ValueError, match="epochs must be an integer, got 2.5"):
        tr.build_config(None, None, ["epochs=2.5"])
    with pytest.raises(ValueError, match="loss must be one of"):
        tr.build_config(None, None, ["loss=contrastive"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        tr.build_config(None, str(bad), [])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("bach_size: 8\n")
    with pytest.raises(ValueError, match="bach_size"):
        tr.build_config(None, str(unknown), [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_fails_at_once(tmp_path, capsys):
    message = r"device cuda requested but torch.cuda.is_available\(\) is False; use device=cpu or auto"
    with pytest.raises(ValueError, match=message):
        tr.build_config("cpu-bev-any-yaw", None, ["device=cuda", "data=/nonexistent"])
    config = tr.TrainConfig.from_dict({**tr.PRESETS["cpu-bev-any-yaw"], "device": "cuda", "data": "/nonexistent"})
    with pytest.raises(ValueError, match=message):  # before any data is read: the root does not exist
        tr.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert tr.main(["--preset", "cpu-bev", "--out", str(tmp_path / "run"), "--data", "/x", "--set", "device=cuda"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_fields_a_family_cannot_use_are_refused():
    with pytest.raises(ValueError, match=r"family bev\) cannot use: loss='triplet' .*workers=2"):
        tr.build_config("cpu-bev", None, ["loss=triplet", "workers=2"])
    with pytest.raises(ValueError, match=r"family descriptor\) cannot use: mirror=0.5"):
        tr.build_config("cpu-small", None, ["mirror=0.5"])
    with pytest.raises(ValueError, match="device must be one of"):
        tr.build_config(None, None, ["device=gpu"])


def test_cli_refuses_a_missing_data_root(tmp_path, capsys):
    assert tr.main(["--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "crossview-train: error:" in err and "--data" in err
    assert tr.main(["--out", str(tmp_path / "run"), "--data", "/x", "--set", "epoch=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- a tiny run


def test_tiny_run_writes_config_metrics_and_checkpoints(finished):
    config, out = finished
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv",
                                                     "metrics.jsonl"]
    assert json.loads((out / "config.json").read_text()) == config.to_dict()
    rows = _metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1]
    keys = {"epoch", "steps", "loss", "lr", "elapsed_min", "val_top1_all", "val_top1_200m", "val_median_m_200m"}
    assert all(set(r) == keys for r in rows)
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(rows[0]) and len(csv_lines) == 3
    assert float(csv_lines[2].split(",")[2]) == pytest.approx(rows[1]["loss"])
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows)  # finite, not NaN
    assert all(0.0 <= r["val_top1_200m"] <= 1.0 for r in rows)
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step_in_epoch"] == 0
    assert ckpt["global_step"] == sum(r["steps"] for r in rows)
    assert ckpt["train_config"] == config.to_dict() and ckpt["tile_size_m"] == VIGOR.tile_size_m
    model = load_checkpoint(out / "last.pt")
    assert model.config.dim == 32 and model.config.ground_size == (32, 64)
    assert model_hash(model) == ckpt["model_hash"]
    # Weights moved away from the seeded initialisation.
    fresh = tr.create_model("small", dim=32, ground_size=(32, 64), aerial_size=(64, 64))
    assert model_hash(fresh) != ckpt["model_hash"]


def test_a_finished_run_resumes_to_nothing(finished, tmp_path):
    config, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tr.train(config, copy, progress=False)
    _assert_same_weights(read_checkpoint(copy / "last.pt")["state_dict"],
                         read_checkpoint(out / "last.pt")["state_dict"])
    assert (copy / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()


def test_eval_cli_on_the_checkpoint(finished, train_root, tmp_path):
    _, out = finished
    rc = ev.main(["--data", str(train_root), "--split", "cross_test", "--checkpoint", str(out / "last.pt"),
                  "--out", str(tmp_path), "--no-progress", "--batch-size", "64"])
    assert rc == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["panoramas"] == 16 and result["cities"] == ["Chicago"]
    assert all("error_with_offset" in row for row in result["scopes"].values())  # the model's offset head


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_interrupted_then_resumed_equals_uninterrupted(finished, tmp_path, where):
    config, full = finished
    first_epoch_steps = _metrics(full)[0]["steps"]
    k = 2 if where == "mid_epoch" else first_epoch_steps
    assert 0 < k <= first_epoch_steps
    out = tmp_path / "run"
    tr.train(config, out, progress=False, stop_after_steps=k)
    stopped = read_checkpoint(out / "last.pt")
    assert stopped["global_step"] == k and stopped["epoch"] == 0
    assert not (out / "metrics.jsonl").exists()
    tr.train(config, out, progress=False)
    _assert_same_weights(read_checkpoint(out / "last.pt")["state_dict"],
                         read_checkpoint(full / "last.pt")["state_dict"])
    resumed, reference = _metrics(out), _metrics(full)
    assert len(resumed) == len(reference) == 2
    for a, b in zip(resumed, reference):
        a.pop("elapsed_min"), b.pop("elapsed_min")
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)  # same epoch losses and validation figures
    last = read_checkpoint(out / "last.pt")
    ref = read_checkpoint(full / "last.pt")
    assert last["global_step"] == ref["global_step"]
    torch.testing.assert_close(last["criterion"], ref["criterion"], rtol=0, atol=0)


def test_resuming_with_another_config_is_refused(finished, tmp_path):
    config, full = finished
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "config.json"):
        shutil.copy(full / name, out / name)
    other = tr.TrainConfig.from_dict({**config.to_dict(), "lr": config.lr * 2})
    with pytest.raises(ValueError, match="another config"):
        tr.train(other, out, progress=False)
    assert json.loads((out / "config.json").read_text()) == config.to_dict()  # still describes last.pt


# --------------------------------------------------------------------------- distributed


def test_two_process_gloo_torchrun_equals_one_process_on_the_combined_batch(train_root, tmp_path):
    single = tmp_path / "single"
    tr.train(_config(train_root, DDP), single, progress=False)
    ddp = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "crossview_training.train", "--data", str(train_root), "--out", str(ddp), "--no-progress",
           "--set", *DDP]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = read_checkpoint(single / "last.pt")
    b = read_checkpoint(ddp / "last.pt")
    assert a["global_step"] == b["global_step"] == 2 * 4  # 16 panoramas in batches of 4, two epochs
    assert b["train_config"] == a["train_config"]
    _assert_same_weights(a["state_dict"], b["state_dict"], atol=1e-5)
    torch.testing.assert_close(a["criterion"], b["criterion"], atol=1e-5, rtol=0)
    for x, y in zip(_metrics(single), _metrics(ddp)):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
    # The weights did move: equality is not the trivial one of two untouched models.
    start = tr.create_model("small", backbone="test_convnext", dim=32, ground_size=(32, 64), aerial_size=(32, 32))
    assert model_hash(start) != a["model_hash"]
