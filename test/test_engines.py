"""Engines: model.json reading, preprocessing, ONNX Runtime parity with PyTorch, start-up errors,
engine selection, the TensorRT engine (against a fake backend here, the real one where installed),
and the tile-set model check."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from crossview_ros import engines as E
from crossview_ros import model_meta as MM
from crossview_ros.engines import devices, tensorrt_engine
from crossview_ros.preprocess import preprocess_aerial, preprocess_ground
from crossview_ros.matchers import check_engine_against_tiles
from crossview_ros import geo
from crossview_ros.tiles import TileSet, write_tile_set

REPO = Path(__file__).resolve().parents[1]
GROUND = (64, 128)
AERIAL = (64, 64)
DIM = 32


@pytest.fixture(scope="module")
def model_dir(tiny_export) -> Path:
    return tiny_export(0)


@pytest.fixture(scope="module")
def engine(model_dir) -> E.OnnxEngine:
    return E.OnnxEngine(model_dir, threads=1)


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    """A private copy of the export that a test may damage."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def _edit_json(model: Path, edit) -> None:
    meta = json.loads((model / "model.json").read_text())
    edit(meta)
    (model / "model.json").write_text(json.dumps(meta))


def _images(shape: tuple[int, int], n: int, seed: int) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (7, 7), 2) for _ in range(n)]


# --------------------------------------------------------------------------- metadata


def test_model_meta_reads_the_export(model_dir):
    meta = MM.load_model_meta(model_dir)
    raw = json.loads((model_dir / "model.json").read_text())
    assert meta.model_hash == raw["model_hash"] and meta.name == "small" and meta.descriptor_dim == DIM
    assert meta.ground.size_hw == GROUND and meta.aerial.size_hw == AERIAL
    assert meta.ground.mean == pytest.approx((0.485, 0.456, 0.406)) and meta.aerial.std == pytest.approx(
        (0.229, 0.224, 0.225))
    assert meta.tile_size_m == 40.0
    assert meta.ground_features == tuple(raw["outputs"]["ground_features"]["shape"])
    assert meta.aerial_features == tuple(raw["outputs"]["aerial_features"]["shape"])
    assert meta.files == raw["onnx"]["files"] and meta.opset >= 17
    assert meta.expected_io("offset.onnx") == ({"ground": (None, DIM), "aerial": (None, DIM)},
                                               {"offset": (None, 2)})


def test_missing_model_json_says_how_to_export(model_copy):
    (model_copy / "model.json").unlink()
    with pytest.raises(E.EngineError, match=r"model\.json not found.*crossview-export onnx"):
        E.OnnxEngine(model_copy)
    with pytest.raises(E.EngineError, match="does not exist"):
        MM.load_model_meta(model_copy / "nowhere")


def test_wrong_sha256_names_the_file_and_the_fix(model_copy):
    _edit_json(model_copy, lambda m: m["onnx"]["files"].update({"aerial.onnx": "0" * 64}))
    with pytest.raises(E.EngineError, match=r"aerial\.onnx does not match the sha256.*--overwrite"):
        E.OnnxEngine(model_copy)


def test_corrupt_graph_is_refused_at_construction(model_copy):
    graph = model_copy / "ground.onnx"
    graph.write_bytes(graph.read_bytes()[:5000])  # truncated copy
    with pytest.raises(E.EngineError, match=r"ground\.onnx does not match the sha256"):
        E.OnnxEngine(model_copy)
    # Even with matching metadata (or verify=False) the truncated graph cannot load.
    _edit_json(model_copy, lambda m: m["onnx"]["files"].update({"ground.onnx": MM.sha256_file(graph)}))
    with pytest.raises(E.EngineError, match=r"onnxruntime cannot load .*ground\.onnx.*crossview-export onnx"):
        E.OnnxEngine(model_copy)


def test_missing_graph_is_refused(model_copy):
    (model_copy / "offset.onnx").unlink()
    with pytest.raises(E.EngineError, match=r"offset\.onnx listed in .* is missing"):
        E.OnnxEngine(model_copy)


def test_mismatched_input_size_is_refused_at_construction(model_copy):
    def bigger_aerial(meta):
        meta["inputs"]["aerial"]["size"] = [96, 96]
        meta["onnx"]["graphs"]["aerial.onnx"]["inputs"]["image"] = ["batch", 3, 96, 96]

    _edit_json(model_copy, bigger_aerial)
    MM.load_model_meta(model_copy)  # consistent metadata ...
    with pytest.raises(E.EngineError, match=r"aerial\.onnx input 'image' has shape \[batch, 3, 64, 64\] but "
                                            r"model\.json says \[batch, 3, 96, 96\]"):
        E.OnnxEngine(model_copy)  # ... that the graph contradicts


def test_mismatched_descriptor_size_is_refused_at_construction(model_copy):
    def wider(meta):
        meta["descriptor_dim"] = 64
        for g in ("ground.onnx", "aerial.onnx"):
            meta["onnx"]["graphs"][g]["outputs"]["descriptor"] = ["batch", 64]
        meta["onnx"]["graphs"]["offset.onnx"]["inputs"] = {"ground": ["batch", 64], "aerial": ["batch", 64]}

    _edit_json(model_copy, wider)
    with pytest.raises(E.EngineError, match=r"ground\.onnx output 'descriptor' has shape \[batch, 32\] but "
                                            r"model\.json says \[batch, 64\]"):
        E.OnnxEngine(model_copy)


def test_inconsistent_or_foreign_metadata_is_refused(model_copy):
    _edit_json(model_copy, lambda m: m["inputs"]["ground"].update(size=[32, 64]))
    with pytest.raises(E.EngineError, match=r"onnx\.graphs\.ground\.onnx .* disagrees"):
        MM.load_model_meta(model_copy)
    _edit_json(model_copy, lambda m: m.update(format_version=2))
    with pytest.raises(E.EngineError, match="format_version 2"):
        MM.load_model_meta(model_copy)
    _edit_json(model_copy, lambda m: m.update(format="something.else"))
    with pytest.raises(E.EngineError, match="not a model export"):
        MM.load_model_meta(model_copy)
    (model_copy / "model.json").write_text("{ truncated")
    with pytest.raises(E.EngineError, match="cannot read"):
        MM.load_model_meta(model_copy)


# --------------------------------------------------------------------------- preprocessing


def _meta(ground_hw: tuple[int, int], aerial_hw: tuple[int, int]) -> MM.ModelMeta:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    return MM.ModelMeta(
        path=Path("."), name="hand", model_hash="sha256:x", descriptor_dim=4,
        ground=MM.ImageInput(*ground_hw, mean, std), aerial=MM.ImageInput(*aerial_hw, mean, std),
        tile_size_m=None, ground_features=(1, 1, 1), aerial_features=(1, 1, 1), files={}, opset=17, raw={},
    )


def test_preprocess_matches_a_hand_computation():
    rng = np.random.default_rng(3)
    meta = _meta((2, 4), (3, 3))
    pano = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)
    # INTER_AREA halving = mean of each 2 x 2 block, rounded half up on uint8.
    blocks = pano.reshape(2, 2, 4, 2, 3).astype(np.int64).sum(axis=(1, 3))
    resized = np.floor(blocks / 4.0 + 0.5)
    mean, std = np.array(meta.ground.mean), np.array(meta.ground.std)
    want = ((resized / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    got = preprocess_ground(meta, pano)
    assert got.shape == (1, 3, 2, 4) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    # 6 x 6 -> 3 x 3: mean of 2 x 2 blocks again; a tile already at size is only normalised.
    tile = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    blocks = np.floor(tile.reshape(3, 2, 3, 2, 3).astype(np.int64).sum(axis=(1, 3)) / 4.0 + 0.5)
    np.testing.assert_allclose(preprocess_aerial(meta, tile)[0],
                               ((blocks / 255.0 - mean) / std).transpose(2, 0, 1), atol=1e-5)
    small = tile[:3, :3]
    np.testing.assert_allclose(preprocess_aerial(meta, small)[0],
                               ((small / 255.0 - mean) / std).transpose(2, 0, 1), atol=1e-5)
    deep = small.astype(np.uint16) * 257  # 16-bit PNG tiles use the full 0..65535 range
    np.testing.assert_allclose(preprocess_aerial(meta, deep), preprocess_aerial(meta, small), atol=1e-5)


def test_preprocess_refuses_bad_images():
    meta = _meta((2, 4), (3, 3))
    with pytest.raises(ValueError, match="width == 2 \\* height"):
        preprocess_ground(meta, np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess_aerial(meta, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_aerial(meta, np.zeros((4, 4, 3), np.float32))


# --------------------------------------------------------------------------- ONNX Runtime


def test_onnxruntime_matches_pytorch(engine, tiny_model):
    torch = pytest.importorskip("torch")
    from crossview_training.export import TOLERANCES
    from crossview_training.models import model_hash

    model = tiny_model(0)
    assert model_hash(model) == engine.meta.model_hash  # same weights as the export
    pano_rgb = _images((96, 192), 1, 1)[0]
    pano = np.concatenate([preprocess_ground(engine.meta, im) for im in (pano_rgb, 255 - pano_rgb)])
    sat = np.concatenate([preprocess_aerial(engine.meta, im) for im in _images((100, 100), 2, 2)])
    with torch.no_grad():
        want_g, want_gf = (t.numpy() for t in model.ground_outputs(torch.from_numpy(pano)))
        want_a, want_af = (t.numpy() for t in model.aerial_outputs(torch.from_numpy(sat)))
        want_off = model.offset(torch.from_numpy(want_g), torch.from_numpy(want_a)).numpy()
    got_g, got_gf = engine.encode_ground(pano)
    got_a, got_af = engine.encode_aerial(sat)
    for name, got, want in (("descriptor", got_g, want_g), ("features", got_gf, want_gf),
                            ("descriptor", got_a, want_a), ("features", got_af, want_af)):
        atol, rtol = TOLERANCES[name]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    atol, rtol = TOLERANCES["offset"]
    np.testing.assert_allclose(engine.offset(want_g, want_a), want_off, atol=atol, rtol=rtol)
    np.testing.assert_allclose(np.linalg.norm(got_g, axis=1), 1.0, atol=1e-5)


def test_engine_checks_its_inputs(engine):
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 128\)"):
        engine.encode_ground(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="float32"):
        engine.encode_aerial(np.zeros((1, 3, 64, 64), np.float64))
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        engine.offset(np.zeros((2, DIM), np.float32), np.zeros((3, DIM), np.float32))
    desc, feats = engine.encode_aerial(np.zeros((0, 3, *AERIAL), np.float32))
    assert desc.shape == (0, DIM) and feats.shape == (0, *engine.meta.aerial_features)
    assert engine.offset(np.zeros((0, DIM)), np.zeros((0, DIM))).shape == (0, 2)


def test_select_providers():
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen, why = E.select_providers("auto", everything, gpu=True)
    assert chosen == everything and "TensorrtExecutionProvider is available" in why
    chosen, why = E.select_providers("auto", everything[1:], gpu=True)
    assert chosen == everything[1:]
    chosen, why = E.select_providers("auto", everything, gpu=False)
    assert chosen == ["CPUExecutionProvider"] and "no NVIDIA GPU" in why
    chosen, why = E.select_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"], gpu=True)
    assert chosen == ["CPUExecutionProvider"] and "no GPU execution provider" in why
    assert E.select_providers(["CPUExecutionProvider"], everything, gpu=False)[0] == ["CPUExecutionProvider"]
    with pytest.raises(E.EngineError, match="CUDAExecutionProvider.*not available.*onnxruntime-gpu"):
        E.select_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"], gpu=False)


def test_threads_must_be_a_count(model_dir):
    with pytest.raises(ValueError, match="threads"):
        E.OnnxEngine(model_dir, threads=-1)


# --------------------------------------------------------------------------- selection


def test_auto_picks_onnxruntime_on_cpu_and_says_why(model_dir, caplog, monkeypatch):
    if devices.gpu_present():
        monkeypatch.setattr(devices, "gpu_present", lambda: False)
    with caplog.at_level(logging.INFO, logger="crossview_ros.engines"):
        eng = E.create_engine(model_dir, threads=1)
    assert isinstance(eng, E.OnnxEngine) and eng.name == "onnxruntime:CPUExecutionProvider"
    assert "engine auto: onnxruntime, because no NVIDIA GPU" in caplog.text
    assert "engine onnxruntime:CPUExecutionProvider for model small" in caplog.text


def _fake_tensorrt_present(monkeypatch, cudart_ok: bool = True) -> None:
    monkeypatch.setattr(devices, "gpu_present", lambda: True)
    monkeypatch.setattr(devices, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.fake"))
    if cudart_ok:
        monkeypatch.setattr(devices, "import_cudart", lambda: object())
    else:
        def missing():
            raise E.EngineError("no CUDA bindings: pip install cuda-python")
        monkeypatch.setattr(devices, "import_cudart", missing)


def test_auto_picks_tensorrt_with_gpu_tensorrt_and_cuda_bindings(model_dir, caplog, monkeypatch):
    made = {}

    class Recorder:
        def __init__(self, model_dir, **options):
            made.update(model_dir=model_dir, **options)

    _fake_tensorrt_present(monkeypatch)
    monkeypatch.setattr(tensorrt_engine, "TensorRTEngine", Recorder)
    with caplog.at_level(logging.INFO, logger="crossview_ros.engines"):
        eng = E.create_engine(model_dir, threads=2, max_batch=8)
    assert isinstance(eng, Recorder) and made == {"model_dir": model_dir, "max_batch": 8}
    assert "engine auto: tensorrt, because an NVIDIA GPU, TensorRT 10.9.fake" in caplog.text
    assert "['threads'] do not apply to tensorrt" in caplog.text


def test_auto_falls_back_to_onnxruntime_and_says_why(model_dir, caplog, monkeypatch):
    _fake_tensorrt_present(monkeypatch, cudart_ok=False)
    with caplog.at_level(logging.INFO, logger="crossview_ros.engines"):
        eng = E.create_engine(model_dir, threads=1, max_batch=8)
    assert isinstance(eng, E.OnnxEngine)
    assert "engine auto: onnxruntime, because an NVIDIA GPU is present but no CUDA bindings" in caplog.text

    def no_trt():
        raise E.EngineError("TensorRT is not importable")
    monkeypatch.setattr(devices, "import_tensorrt", no_trt)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="crossview_ros.engines"):
        assert isinstance(E.create_engine(model_dir, threads=1), E.OnnxEngine)
    assert "because an NVIDIA GPU is present but TensorRT is not importable" in caplog.text


def test_create_engine_refuses_unknown_kinds_and_options(model_dir):
    with pytest.raises(ValueError, match="unknown engine kind 'openvino'; valid kinds: auto, onnxruntime, tensorrt"):
        E.create_engine(model_dir, kind="openvino")
    with pytest.raises(TypeError, match=r"\['max_batch'\] do not apply to engine 'onnxruntime'"):
        E.create_engine(model_dir, kind="onnxruntime", max_batch=4)
    with pytest.raises(TypeError, match=r"unknown engine option\(s\) \['thread'\]"):
        E.create_engine(model_dir, thread=1)


# --------------------------------------------------------------------------- TensorRT


def test_tensorrt_engine_without_tensorrt_says_what_to_install(model_dir):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(E.EngineError, match=r"TensorRT is not importable.*pip install tensorrt"):
        E.TensorRTEngine(model_dir)
    with pytest.raises(E.EngineError, match="TensorRT is not importable"):
        E.create_engine(model_dir, kind="tensorrt")


def test_tensorrt_engine_without_cuda_bindings_says_what_to_install(model_dir, monkeypatch):
    monkeypatch.setattr(devices, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.9.fake"))
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import` of them fail
    with pytest.raises(E.EngineError, match=r"CUDA Python bindings.*pip install cuda-python"):
        E.TensorRTEngine(model_dir)


def test_plan_file_name_keys_graph_gpu_and_version():
    sha = "ab" * 32
    name = E.plan_file_name("aerial.onnx", sha, "NVIDIA H100 80GB HBM3", "10.9.0", "fp16", 32)
    assert name == f"aerial-{sha[:16]}-nvidia-h100-80gb-hbm3-trt10.9.0-fp16-b32.plan"
    assert name != E.plan_file_name("aerial.onnx", sha, "NVIDIA A100-SXM4-40GB", "10.9.0", "fp16", 32)
    assert name != E.plan_file_name("aerial.onnx", "cd" * 32, "NVIDIA H100 80GB HBM3", "10.9.0", "fp16", 32)


class _FakeCudart:
    """cuda-python's runtime API on host memory: device pointers are numpy buffers' addresses."""

    class cudaError_t:  # noqa: N801 (mirrors the real names)
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaSetDevice(self, device):
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"Fake GPU 80GB\x00\x00\x00")

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaMalloc(self, nbytes):
        buf = np.zeros(nbytes, np.uint8)
        self.mem[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaFree(self, ptr):
        del self.mem[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaGetErrorString(self, err):
        return 0, b"fake error"


def _fake_tensorrt(builds: list[str]) -> types.SimpleNamespace:
    """Enough of the TensorRT 10 Python API to run our engine code; "engines" run the ONNX graph in onnxruntime."""
    import onnxruntime as ort

    class DataType:
        FLOAT = "float"

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Network:
        path = None

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            self.network.path = path
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self):
            self.flags, self.profiles = [], []

        def set_memory_pool_limit(self, pool, nbytes):
            pass

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            builds.append(Path(network.path).name)
            return json.dumps({"path": network.path, "max": {k: v[2] for k, v in config.profiles[0].shapes.items()},
                               "fp16": config.flags == ["FP16"]}).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.addr, self.shape = engine, {}, {}

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= self.engine.max[name][0]:
                return False
            self.shape[name] = tuple(shape)
            return True

        def _view(self, name, shape):
            n = int(np.prod(shape))
            return np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr[name])).reshape(shape)

        def execute_async_v3(self, stream):
            feeds = {name: self._view(name, shape).copy() for name, shape in self.shape.items()}
            outs = self.engine.session.run(None, feeds)
            for arg, value in zip(self.engine.session.get_outputs(), outs):
                self._view(arg.name, value.shape)[...] = value
            return True

    class CudaEngine:
        def __init__(self, spec):
            self.session = ort.InferenceSession(spec["path"], providers=["CPUExecutionProvider"])
            self.max = spec["max"]
            self.io = ([(a, "in") for a in self.session.get_inputs()]
                       + [(a, "out") for a in self.session.get_outputs()])
            self.num_io_tensors = len(self.io)

        def _arg(self, name):
            return next((a, mode) for a, mode in self.io if a.name == name)

        def get_tensor_name(self, i):
            return self.io[i][0].name

        def get_tensor_shape(self, name):
            return [v if isinstance(v, int) else -1 for v in self._arg(name)[0].shape]

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_mode(self, name):
            return self._arg(name)[1]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                return CudaEngine(json.loads(bytes(data)))
            except ValueError:
                return None

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    return types.SimpleNamespace(
        __version__="10.9.fake", Logger=Logger, Runtime=Runtime, Builder=Builder, OnnxParser=Parser,
        DataType=DataType, TensorIOMode=TensorIOMode, BuilderFlag=types.SimpleNamespace(FP16="FP16"),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
    )


def test_tensorrt_engine_code_path_on_a_fake_backend(model_dir, engine, tmp_path, monkeypatch):
    """Builds, caches, binds and runs through our TensorRT code with a stand-in TensorRT/CUDA that
    runs the graphs in onnxruntime: outputs must equal ONNX Runtime's, batches above max_batch are
    chunked, and a second engine loads the cached plans instead of building."""
    builds: list[str] = []
    cudart = _FakeCudart()
    monkeypatch.setattr(devices, "import_tensorrt", lambda: _fake_tensorrt(builds))
    monkeypatch.setattr(devices, "import_cudart", lambda: cudart)
    trt_engine = E.TensorRTEngine(model_dir, cache_dir=tmp_path, max_batch=2)
    assert trt_engine.name == "tensorrt:Fake GPU 80GB:fp16"
    assert sorted(builds) == ["aerial.onnx", "ground.onnx", "offset.onnx"]
    sha = trt_engine.meta.files["aerial.onnx"]
    plan = tmp_path / f"aerial-{sha[:16]}-fake-gpu-80gb-trt10.9.fake-fp16-b2.plan"
    assert plan.is_file() and json.loads(plan.read_text())["max"] == {"image": [2, 3, *AERIAL]}

    sat = np.concatenate([preprocess_aerial(engine.meta, im) for im in _images((64, 64), 3, 5)])
    want_desc, want_feats = engine.encode_aerial(sat)
    got_desc, got_feats = trt_engine.encode_aerial(sat)  # 3 > max_batch: two chunks
    np.testing.assert_allclose(got_desc, want_desc, atol=1e-6)
    np.testing.assert_allclose(got_feats, want_feats, atol=1e-5)
    g = np.repeat(want_desc[:1], 3, axis=0)
    np.testing.assert_allclose(trt_engine.offset(g, want_desc), engine.offset(g, want_desc), atol=1e-6)
    trt_engine.close()
    assert cudart.mem == {}  # every device buffer freed

    builds.clear()
    E.TensorRTEngine(model_dir, cache_dir=tmp_path, max_batch=2).close()
    assert builds == []  # plans came from the cache
    plan.write_bytes(b"not a plan")
    E.TensorRTEngine(model_dir, cache_dir=tmp_path, max_batch=2).close()
    assert builds == ["aerial.onnx"]  # an unreadable plan is rebuilt


def test_tensorrt_engine_matches_onnxruntime_on_a_gpu(model_dir, engine, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU machine)")
    usable, why = E.tensorrt_status()
    if not usable:
        pytest.skip(f"TensorRT engine unusable here: {why}")
    with E.TensorRTEngine(model_dir, cache_dir=tmp_path, max_batch=4) as trt_engine:
        sat = np.concatenate([preprocess_aerial(engine.meta, im) for im in _images((64, 64), 3, 6)])
        pano = np.concatenate([preprocess_ground(engine.meta, im) for im in _images((64, 128), 3, 7)])
        # FP16 inference: descriptors agree to about 1e-2 and rank the same.
        for got, want in ((trt_engine.encode_aerial(sat)[0], engine.encode_aerial(sat)[0]),
                          (trt_engine.encode_ground(pano)[0], engine.encode_ground(pano)[0])):
            np.testing.assert_allclose(got, want, atol=2e-2)


# --------------------------------------------------------------------------- tile sets


def _tile_set(root: Path, name: str) -> TileSet:
    e = 500_000.0 + np.arange(3) * 20.0
    n = np.full(3, 5_300_000.0)
    return TileSet.open(write_tile_set(root / name, zone=geo.UTMZone(33, False), easting_m=e, northing_m=n,
                                       tile_size_m=40.0, tile_px=64))


def test_check_engine_against_tiles(engine, tmp_path):
    meta = engine.meta
    ts = _tile_set(tmp_path, "set")
    with pytest.raises(E.EngineError, match=r"has no descriptors; run `crossview-tiles encode .* --model "):
        check_engine_against_tiles(engine, ts)
    rng = np.random.default_rng(0)
    ts.write_descriptors(rng.normal(size=(3, DIM)), "sha256:another-model")
    with pytest.raises(E.EngineError, match=r"model 'sha256:another-model'.*crossview-tiles encode .*--overwrite"):
        check_engine_against_tiles(engine, ts)
    ts.write_descriptors(rng.normal(size=(3, DIM * 2)), meta.model_hash)
    with pytest.raises(E.EngineError, match=f"dim {DIM * 2} but the encoder produces dim {DIM}"):
        check_engine_against_tiles(meta, ts.path)
    ts.write_descriptors(rng.normal(size=(3, DIM)), meta.model_hash)
    check_engine_against_tiles(engine, ts)
    check_engine_against_tiles(meta, ts.path)  # a ModelMeta and a path work too
    with pytest.raises(TypeError):
        check_engine_against_tiles("model", ts)


def test_runtime_imports_no_torch(model_dir):
    code = (
        "import sys, numpy as np\n"
        "from crossview_ros import engines, localizer, preprocess, tiles_cli\n"
        f"eng = engines.create_engine({str(model_dir)!r}, threads=1)\n"
        "img = np.zeros((32, 64, 3), np.uint8)\n"
        "eng.encode_ground(preprocess.preprocess_ground(eng.meta, img))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'crossview_training', 'tensorrt'))\n"
        "print('IMPORTED', bad)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout
