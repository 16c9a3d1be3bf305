"""crossview-export onnx: graphs, checker, parity through onnxruntime, model.json, overwrite rules."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from crossview_training import export as E  # noqa: E402
from crossview_training import models as M  # noqa: E402

GROUND = (64, 128)
AERIAL = (64, 64)

torch.set_num_threads(1)


def tiny(seed: int) -> M.CrossViewModel:
    torch.manual_seed(seed)
    return M.create_model("small", ground_size=GROUND, aerial_size=AERIAL).eval()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The small preset at tiny size, exported through the CLI with two real check images per view."""
    root = tmp_path_factory.mktemp("export")
    model = tiny(0)
    ckpt = M.save_checkpoint(model, root / "model.pt", tile_size_m=72.96, train_config={"lr": 1e-4, "epochs": 2})
    city = root / "City"
    rng = np.random.default_rng(0)
    for sub, shape, ext in (("panorama", (256, 512, 3), "jpg"), ("satellite", (160, 160, 3), "png")):
        (city / sub).mkdir(parents=True)
        for i in range(2):
            img = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (9, 9), 3)
            assert cv2.imwrite(str(city / sub / f"img{i},1.0,2.0,.{ext}"), img)
    out = root / "out"
    assert E.main(["onnx", "--checkpoint", str(ckpt), "--out", str(out), "--check-images", str(city)]) == 0
    return model, ckpt, out


def test_graphs_pass_the_checker_with_opset_17_and_dynamic_batch(exported):
    _, _, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["aerial.onnx", "ground.onnx", "model.json", "offset.onnx"]
    expected = {"ground.onnx": (["image"], ["descriptor", "features"]),
                "aerial.onnx": (["image"], ["descriptor", "features"]),
                "offset.onnx": (["ground", "aerial"], ["offset"])}
    for name, (ins, outs) in expected.items():
        graph = onnx.load(str(out / name))
        onnx.checker.check_model(graph)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert [i.name for i in graph.graph.input] == ins and [o.name for o in graph.graph.output] == outs
        for value in list(graph.graph.input) + list(graph.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(exported, batch):
    model, _, out = exported
    gen = torch.Generator().manual_seed(100 + batch)
    pano = torch.randn(batch, 3, *GROUND, generator=gen)
    sat = torch.randn(batch, 3, *AERIAL, generator=gen)
    run = {n: ort.InferenceSession(str(out / n), providers=["CPUExecutionProvider"]) for n in E.GRAPHS}
    with torch.no_grad():
        g, gf = model.ground_outputs(pano)
        a, af = model.aerial_outputs(sat)
        off = model.offset(g, a)
    og, ogf = run["ground.onnx"].run(None, {"image": pano.numpy()})
    oa, oaf = run["aerial.onnx"].run(None, {"image": sat.numpy()})
    (ooff,) = run["offset.onnx"].run(None, {"ground": g.numpy(), "aerial": a.numpy()})
    assert og.shape == (batch, 256) and ogf.shape == (batch, 576, 2, 4) and ooff.shape == (batch, 2)  # 576 = MobileNetV3-small last stage
    np.testing.assert_allclose(og, g.numpy(), atol=1e-4, rtol=0)  # the stated descriptor tolerance
    np.testing.assert_allclose(oa, a.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ogf, gf.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(oaf, af.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(ooff, off.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(og, axis=1), 1.0, atol=1e-5)


def test_metadata_round_trips_and_matches_the_files(exported):
    model, _, out = exported
    raw = json.loads((out / "model.json").read_text())
    meta = E.read_metadata(out)
    assert meta == raw
    assert meta["format"] == "crossview_ros.model" and meta["format_version"] == 1
    assert meta["model_hash"] == M.model_hash(model) and meta["name"] == "small"
    assert M.ModelConfig.from_dict(meta["config"]) == model.config
    assert meta["descriptor_dim"] == 256
    assert meta["inputs"]["ground"]["size"] == [64, 128] and meta["inputs"]["aerial"]["size"] == [64, 64]
    assert meta["inputs"]["ground"]["mean"] == list(M.IMAGENET_MEAN)
    assert meta["inputs"]["aerial"]["std"] == list(M.IMAGENET_STD)
    assert meta["outputs"]["ground_features"]["shape"] == [576, 2, 4]
    assert meta["outputs"]["offset"]["tile_size_m"] == 72.96
    assert meta["train_config"] == {"lr": 1e-4, "epochs": 2}
    assert meta["onnx"]["opset"] == 17
    assert meta["onnx"]["files"] == {n: sha256(out / n) for n in E.GRAPHS}
    parity = meta["parity"]
    assert parity["check_images"] == {"ground": 2, "aerial": 2}
    assert parity["checked_on"] == ["random batch 1", "random batch 3", "check images"]
    for graph, outputs in parity["files"].items():
        for name, fig in outputs.items():
            assert 0.0 <= fig["max_abs_err"] <= fig["atol"], (graph, name, fig)
    assert parity["files"]["ground.onnx"]["descriptor"]["atol"] == 1e-4


def test_a_changed_graph_fails_verification(exported, tmp_path):
    _, _, out = exported
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for p in out.iterdir():
        (copy_dir / p.name).write_bytes(p.read_bytes())
    with open(copy_dir / "offset.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(E.ExportError, match="sha256"):
        E.read_metadata(copy_dir)
    (copy_dir / "aerial.onnx").unlink()
    with pytest.raises(E.ExportError, match="missing"):
        E.read_metadata(copy_dir)


def test_another_models_export_is_not_overwritten(exported, tmp_path, capsys):
    model, ckpt, out = exported
    before = (out / "model.json").read_bytes()
    other = tiny(1)
    with pytest.raises(E.ExportError, match="another model"):
        E.export_onnx(other, out)
    other_ckpt = M.save_checkpoint(other, tmp_path / "other.pt")
    assert E.main(["onnx", "--checkpoint", str(other_ckpt), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model.json").read_bytes() == before

    target = tmp_path / "target"
    E.export_onnx(model, target)
    E.export_onnx(model, target)  # the same model may be re-exported
    other.train()
    E.export_onnx(other, target, overwrite=True)
    assert other.training  # the caller's mode is restored
    assert E.read_metadata(target)["model_hash"] == M.model_hash(other)
    assert sorted(p.name for p in target.iterdir()) == ["aerial.onnx", "ground.onnx", "model.json", "offset.onnx"]


def test_unknown_graphs_without_metadata_are_not_overwritten(tmp_path):
    (tmp_path / "ground.onnx").write_bytes(b"not ours")
    with pytest.raises(E.ExportError, match="without model.json"):
        E.export_onnx(tiny(0), tmp_path)


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(E.TOLERANCES, "descriptor", (-1.0, 0.0))  # no error can pass a negative tolerance
    with pytest.raises(E.ExportError, match="descriptor differs from PyTorch"):
        E.export_onnx(tiny(0), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_requests_are_refused(tmp_path, capsys):
    with pytest.raises(E.ExportError, match="opset 16"):
        E.export_onnx(tiny(0), tmp_path, opset=16)
    assert E.main(["onnx", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert E.main(["onnx", "--help"]) == 0
    assert "--check-images" in capsys.readouterr().out
    assert E.main(["onnx"]) == 2
