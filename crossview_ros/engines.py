"""Encoder runtimes behind one interface: ONNX Runtime (CPU, CUDA, TensorRT EPs) and native TensorRT.

An exported model is a folder written by `crossview-export onnx` (training/export.py):

    ground.onnx   image (B, 3, Hg, Wg) float32 normalised -> descriptor (B, D), features (B, C, hg, wg)
    aerial.onnx   image (B, 3, Ha, Wa) float32 normalised -> descriptor (B, D), features (B, C, ha, wa)
    offset.onnx   ground (B, D), aerial (B, D) -> offset (B, 2) = (dE, dN) / L
    match.onnx    instead of offset.onnx in a top-down (bev) model: ground features (1, C, K, K),
                  a scope's aerial feature map (1, C, H, W) -> scores (1, R, H', W') per bearing
    model.json    preprocessing, sizes, descriptor size, tile size L, model hash, sha256 of each graph

The runtime reads model.json itself (no torch, no crossview_training) and checks everything it
can at construction: the metadata's format and consistency, each graph's sha256, the graphs'
input/output names and shapes against the metadata, and one warm-up inference. A missing,
corrupt or mismatched artefact is an EngineError at start-up, never at the first frame.
`check_engine_against_tiles` refuses a tile set encoded by another model.

TensorRT and the CUDA Python bindings are imported lazily, only when a TensorRT engine is asked
for (or `auto` finds a GPU); onnxruntime only by OnnxEngine; cv2 only by the preprocessing.
"""

from __future__ import annotations

import abc
import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from crossview_ros.tiles import TileSet

log = logging.getLogger(__name__)

MODEL_FORMAT = "crossview_ros.model"
MODEL_FORMAT_VERSION = 1
METADATA_FILE = "model.json"
GROUND_GRAPH = "ground.onnx"
AERIAL_GRAPH = "aerial.onnx"
OFFSET_GRAPH = "offset.onnx"
MATCH_GRAPH = "match.onnx"
GRAPHS = (GROUND_GRAPH, AERIAL_GRAPH, OFFSET_GRAPH)  # a descriptor model (global descriptors + offset head)
BEV_GRAPHS = (GROUND_GRAPH, AERIAL_GRAPH, MATCH_GRAPH)  # a top-down correlation model (crossview_training.bev)
ENGINE_KINDS = ("auto", "onnxruntime", "tensorrt")
ORT_PROVIDERS_BY_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = ORT_PROVIDERS_BY_PREFERENCE[:2]
# Device nodes of the NVIDIA driver (desktop/server) and of Jetson's integrated GPU; without one,
# "auto" never imports TensorRT nor picks a GPU execution provider.
_GPU_DEVICE_GLOBS = ("/dev/nvidia[0-9]*", "/dev/nvhost-ctrl-gpu")
_REEXPORT = "re-export with `crossview-export onnx --checkpoint CKPT --out DIR --overwrite`"
_BATCH = None  # the dynamic batch axis in expected shapes
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class EngineError(RuntimeError):
    """An exported model or engine that cannot be used; the message says what and how to fix it."""


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class ImageInput:
    """One encoder's input: size and normalisation, as training fed it."""

    height_px: int
    width_px: int
    mean: tuple[float, float, float]  # per RGB channel, on 0..1 values
    std: tuple[float, float, float]

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height_px, self.width_px


@dataclass(frozen=True, eq=False)
class ModelMeta:
    """model.json of an export, read without torch; `raw` keeps every key for later readers."""

    path: Path  # the model folder
    name: str
    model_hash: str
    descriptor_dim: int
    ground: ImageInput
    aerial: ImageInput
    tile_size_m: float | None  # L that the offset is normalised by; None when the export did not record it
    ground_features: tuple[int, int, int]  # (C, h, w) of ground.onnx's "features"
    aerial_features: tuple[int, int, int]  # (C, h, w) of aerial.onnx's "features"
    files: Mapping[str, str]  # graph file name -> sha256 hex digest
    opset: int
    raw: Mapping[str, Any] = field(repr=False)
    matching: str = "descriptor"  # descriptor (cosine of global descriptors + offset head) | bev (match.onnx)

    @property
    def graphs(self) -> tuple[str, ...]:
        return BEV_GRAPHS if self.matching == "bev" else GRAPHS

    @property
    def bev(self) -> Mapping[str, Any]:
        """model.json's "matching" block of a bev model (rotations, kernel_cells, block_cells, cell_m, ...)."""
        return self.raw["matching"]

    def graph_path(self, graph: str) -> Path:
        return self.path / graph

    def expected_io(self, graph: str) -> tuple[dict[str, tuple], dict[str, tuple]]:
        """({input: shape}, {output: shape}) of a graph; shape[0] is None (dynamic batch), None elsewhere
        is a dynamic size (match.onnx's map)."""
        d = self.descriptor_dim
        if graph == OFFSET_GRAPH:
            return {"ground": (_BATCH, d), "aerial": (_BATCH, d)}, {"offset": (_BATCH, 2)}
        if graph == MATCH_GRAPH:
            c = self.ground_features[0]
            return ({"ground": (_BATCH, *self.ground_features), "aerial_map": (_BATCH, c, None, None)},
                    {"scores": (_BATCH, int(self.bev["rotations"]), None, None)})
        spec, feats = (self.ground, self.ground_features) if graph == GROUND_GRAPH else (self.aerial,
                                                                                           self.aerial_features)
        dim = int(np.prod(feats)) if graph == GROUND_GRAPH and self.matching == "bev" else d
        return ({"image": (_BATCH, 3, *spec.size_hw)},
                {"descriptor": (_BATCH, dim), "features": (_BATCH, *feats)})


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lookup(data: Any, dotted: str) -> Any:
    """data["a"]["b"] for "a/b" (keys like "ground.onnx" hold dots); KeyError(dotted) when absent."""
    cur = data
    for key in dotted.split("/"):
        if not isinstance(cur, dict) or key not in cur:
            raise KeyError(dotted)
        cur = cur[key]
    return cur


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _image_input(raw: dict[str, Any], view: str, bad: Callable[[str], EngineError]) -> ImageInput:
    try:
        spec = _lookup(raw, f"inputs/{view}")
        size, mean, std = spec["size"], spec["mean"], spec["std"]
    except (KeyError, TypeError):
        raise bad(f"inputs.{view} must hold size, mean and std") from None
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise bad(f"inputs.{view}.size must be [H, W] positive integers, got {size!r}")
    for key, vals in (("mean", mean), ("std", std)):
        if not (isinstance(vals, list) and len(vals) == 3 and all(_is_number(v) for v in vals)):
            raise bad(f"inputs.{view}.{key} must be three numbers (RGB), got {vals!r}")
    if min(std) <= 0:
        raise bad(f"inputs.{view}.std must be positive, got {std!r}")
    return ImageInput(int(size[0]), int(size[1]), tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _shape_spec(value: Any) -> tuple:
    """["batch", 3, 64, 64] -> (None, 3, 64, 64); a name for a dynamic size -> None; ValueError otherwise."""
    if not (isinstance(value, list) and value and value[0] == "batch"
            and all((_is_int(v) and v > 0) or (isinstance(v, str) and v) for v in value[1:])):
        raise ValueError(value)
    return (_BATCH, *(v if _is_int(v) else None for v in value[1:]))


def load_model_meta(model_dir: str | os.PathLike, verify: bool = True) -> ModelMeta:
    """Read and check model.json; with verify, every graph must exist and match its sha256.

    EngineError names the file at fault and says how to fix it (mostly: re-export).
    """
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    if not model_dir.is_dir():
        raise EngineError(f"model folder {model_dir} does not exist; export a model with "
                          "`crossview-export onnx --checkpoint CKPT --out DIR` and pass that DIR")
    if not path.is_file():
        raise EngineError(f"{path} not found: {model_dir} is not a crossview model export; "
                          "export one with `crossview-export onnx --checkpoint CKPT --out DIR`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"cannot read {path} ({exc}); {_REEXPORT}") from exc

    def bad(what: str) -> EngineError:
        return EngineError(f"{path}: {what}; {_REEXPORT}")

    if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
        raise bad(f"not a model export (format is not {MODEL_FORMAT!r})")
    if raw.get("format_version") != MODEL_FORMAT_VERSION:
        raise EngineError(f"{path} is format_version {raw.get('format_version')!r}, this crossview_ros reads "
                          f"version {MODEL_FORMAT_VERSION}; update crossview_ros or {_REEXPORT}")
    for key in ("model_hash", "name"):
        if not (isinstance(raw.get(key), str) and raw[key]):
            raise bad(f"{key!r} must be a non-empty string, got {raw.get(key)!r}")
    dim = raw.get("descriptor_dim")
    if not (_is_int(dim) and dim > 0):
        raise bad(f"descriptor_dim must be a positive integer, got {dim!r}")
    ground, aerial = _image_input(raw, "ground", bad), _image_input(raw, "aerial", bad)
    feats = {}
    for view in ("ground", "aerial"):
        try:
            shape = _lookup(raw, f"outputs/{view}_features/shape")
        except KeyError:
            shape = None
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
            raise bad(f"outputs.{view}_features.shape must be [C, h, w] positive integers, got {shape!r}")
        feats[view] = tuple(shape)
    try:
        tile_size_m = _lookup(raw, "outputs/offset/tile_size_m")
    except KeyError:
        tile_size_m = None
    if tile_size_m is not None and not (_is_number(tile_size_m) and tile_size_m > 0):
        raise bad(f"outputs.offset.tile_size_m must be null or a positive number, got {tile_size_m!r}")
    try:
        files, graphs, opset = (_lookup(raw, "onnx/files"), _lookup(raw, "onnx/graphs"), _lookup(raw, "onnx/opset"))
    except KeyError as exc:
        raise bad(f"onnx.{exc.args[0].split('/')[-1]} is missing") from None
    block = raw.get("matching", {"kind": "descriptor"})  # exports before bev models have none
    matching = block.get("kind") if isinstance(block, dict) else None
    if matching not in ("descriptor", "bev"):
        raise bad(f"matching.kind must be 'descriptor' or 'bev', got {matching!r}")
    if matching == "bev":
        m = raw["matching"]
        for key in ("rotations", "match_stride", "kernel_cells", "block_cells"):
            if not (_is_int(m.get(key)) and m[key] > 0):
                raise bad(f"matching.{key} must be a positive integer, got {m.get(key)!r}")
        for key in ("cell_m", "logit_scale"):
            if not (_is_number(m.get(key)) and m[key] > 0):
                raise bad(f"matching.{key} must be a positive number, got {m.get(key)!r}")
        if feats["ground"][1:] != (m["kernel_cells"],) * 2 or dim != feats["aerial"][0] * m["block_cells"] ** 2:
            raise bad("matching.kernel_cells / block_cells disagree with the feature shapes and descriptor_dim")
    wanted = BEV_GRAPHS if matching == "bev" else GRAPHS
    if not (isinstance(files, dict) and set(files) == set(wanted)
            and all(isinstance(v, str) and _SHA256_RE.match(v) for v in files.values())):
        raise bad(f"onnx.files must map each of {wanted} to its sha256 hex digest")
    if not _is_int(opset):
        raise bad(f"onnx.opset must be an integer, got {opset!r}")

    meta = ModelMeta(
        path=model_dir, name=raw["name"], model_hash=raw["model_hash"], descriptor_dim=int(dim), ground=ground,
        aerial=aerial, tile_size_m=None if tile_size_m is None else float(tile_size_m),
        ground_features=feats["ground"], aerial_features=feats["aerial"], files=dict(files), opset=int(opset),
        raw=raw, matching=matching,
    )
    # The graph I/O table must agree with the sizes above: the runtime validates graphs against it.
    for graph in meta.graphs:
        want_in, want_out = meta.expected_io(graph)
        spec = graphs.get(graph) if isinstance(graphs, dict) else None
        try:
            got_in = {k: _shape_spec(v) for k, v in spec["inputs"].items()}
            got_out = {k: _shape_spec(v) for k, v in spec["outputs"].items()}
        except (TypeError, KeyError, AttributeError, ValueError):
            raise bad(f"onnx.graphs.{graph} must list inputs and outputs as [\"batch\", dims...]") from None
        if got_in != want_in or got_out != want_out:
            raise bad(f"onnx.graphs.{graph} ({_fmt_io(got_in, got_out)}) disagrees with the sizes in the same file "
                      f"({_fmt_io(want_in, want_out)})")
    if verify:
        for graph in meta.graphs:
            file = model_dir / graph
            if not file.is_file():
                raise EngineError(f"{file} listed in {path} is missing; {_REEXPORT}")
            if sha256_file(file) != meta.files[graph]:
                raise EngineError(f"{file} does not match the sha256 recorded in {path} (changed, corrupt or "
                                  f"half-copied); {_REEXPORT}")
    return meta


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join("batch" if v is None else str(v) for v in shape) + "]"


def _fmt_io(inputs: Mapping[str, Sequence], outputs: Mapping[str, Sequence]) -> str:
    ins = ", ".join(f"{k} {_fmt_shape(v)}" for k, v in inputs.items())
    outs = ", ".join(f"{k} {_fmt_shape(v)}" for k, v in outputs.items())
    return f"{ins} -> {outs}"


# --------------------------------------------------------------------------- preprocessing


def _preprocess(rgb: np.ndarray, spec: ImageInput, view: str) -> np.ndarray:
    import cv2

    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"{view} image must be an (H, W, 3) RGB array, got "
                         f"{getattr(rgb, 'shape', type(rgb).__name__)}")
    if rgb.dtype == np.uint8:
        full_scale = 255.0
    elif rgb.dtype == np.uint16:
        full_scale = 65535.0  # 16-bit PNG tiles: same 0..1 range
    else:
        raise ValueError(f"{view} image must be uint8 (or uint16), got {rgb.dtype}")
    h, w = spec.size_hw
    # Same steps as training's image cache and dataset: INTER_AREA resize of the integer image,
    # then 0..1, then (x - mean) / std in float32.
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    x = rgb.astype(np.float32).transpose(2, 0, 1) / np.float32(full_scale)
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(((x - mean) / std)[None])


def preprocess_ground(meta: ModelMeta, rgb: np.ndarray) -> np.ndarray:
    """Panorama (H, W, 3) RGB uint8 with W == 2 H, any size -> (1, 3, Hg, Wg) float32 for encode_ground."""
    if isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[1] != 2 * rgb.shape[0]:
        raise ValueError(f"panorama must be equirectangular with width == 2 * height, got "
                         f"{rgb.shape[1]} x {rgb.shape[0]} px")
    return _preprocess(rgb, meta.ground, "ground")


def preprocess_aerial(meta: ModelMeta, rgb: np.ndarray) -> np.ndarray:
    """Aerial tile (H, W, 3) RGB uint8 (uint16 scaled by 65535), any size -> (1, 3, Ha, Wa) float32."""
    return _preprocess(rgb, meta.aerial, "aerial")


# --------------------------------------------------------------------------- the interface


class Engine(abc.ABC):
    """Runs an exported model. Subclasses set `meta` and `name` and implement _encode/_offset.

    The public methods check shapes and dtypes, so a wrong input is a ValueError that names the
    expected shape instead of a backend error.
    """

    meta: ModelMeta
    name: str  # backend and device, e.g. "onnxruntime:CPUExecutionProvider"

    def encode_ground(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (B, 3, Hg, Wg) float32 normalised -> descriptor (B, D) L2-normalised, features (B, C, hg, wg)."""
        return self._encode_checked(GROUND_GRAPH, images)

    def encode_aerial(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (B, 3, Ha, Wa) float32 normalised -> descriptor (B, D) L2-normalised, features (B, C, ha, wa)."""
        return self._encode_checked(AERIAL_GRAPH, images)

    def offset(self, ground: np.ndarray, aerial: np.ndarray) -> np.ndarray:
        """ground (B, D), aerial (B, D) descriptors -> (B, 2) = (dE, dN) / L of the camera from the tile centre."""
        d = self.meta.descriptor_dim
        g = np.ascontiguousarray(ground, dtype=np.float32)
        a = np.ascontiguousarray(aerial, dtype=np.float32)
        if g.ndim != 2 or a.ndim != 2 or g.shape != a.shape or g.shape[1] != d:
            raise ValueError(f"offset needs ground and aerial descriptors of shape (B, {d}), got "
                             f"{np.shape(ground)} and {np.shape(aerial)}")
        if g.shape[0] == 0:
            return np.zeros((0, 2), np.float32)
        return self._offset(g, a)

    def match(self, ground: np.ndarray, aerial_map: np.ndarray) -> np.ndarray:
        """bev models: ground features (1, C, K, K) x padded aerial feature map (1, C, H, W) ->
        scores (1, R, H', W') for R camera bearings at every match_stride-th position (match.onnx)."""
        if self.meta.matching != "bev":
            raise ValueError(f"model {self.meta.name} is a descriptor model: it has no match graph")
        g = np.ascontiguousarray(ground, dtype=np.float32)
        a = np.ascontiguousarray(aerial_map, dtype=np.float32)
        c, k = self.meta.ground_features[0], self.meta.ground_features[1]
        if g.shape != (1, *self.meta.ground_features) or a.ndim != 4 or a.shape[:2] != (1, c) or min(a.shape[2:]) < k:
            raise ValueError(f"match needs ground (1, {c}, {k}, {k}) and a map (1, {c}, H >= {k}, W >= {k}), got "
                             f"{np.shape(ground)} and {np.shape(aerial_map)}")
        return self._match(g, a)

    def _match(self, ground: np.ndarray, aerial_map: np.ndarray) -> np.ndarray:
        raise EngineError(f"{type(self).__name__} does not run match graphs (bev models); use onnxruntime")

    def close(self) -> None:
        """Release backend resources (GPU memory); the engine is unusable afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, model {self.meta.name} {self.meta.model_hash})"

    @abc.abstractmethod
    def _encode(self, graph: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run an encoder graph on a checked (B >= 1, 3, H, W) float32 C-contiguous batch."""

    @abc.abstractmethod
    def _offset(self, ground: np.ndarray, aerial: np.ndarray) -> np.ndarray:
        """Run the offset graph on checked (B >= 1, D) float32 C-contiguous descriptors."""

    def _encode_checked(self, graph: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        want_in, outs = self.meta.expected_io(graph)
        want = want_in["image"]
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1:] != want[1:]:
            raise ValueError(f"{graph} takes images of shape (B, {', '.join(map(str, want[1:]))}), got {x.shape}; "
                             "use preprocess_ground/preprocess_aerial")
        if x.dtype != np.float32:
            raise ValueError(f"{graph} takes float32 normalised images, got {x.dtype}; "
                             "use preprocess_ground/preprocess_aerial")
        if x.shape[0] == 0:
            return (np.zeros((0, *outs["descriptor"][1:]), np.float32),
                    np.zeros((0, *outs["features"][1:]), np.float32))
        return self._encode(graph, np.ascontiguousarray(x))

    def _warmup(self) -> None:
        """One inference per graph on a batch of one, checking output shapes and values against model.json."""
        descs = {}
        for graph, spec in ((GROUND_GRAPH, self.meta.ground), (AERIAL_GRAPH, self.meta.aerial)):
            _, want = self.meta.expected_io(graph)
            desc, feats = self._encode(graph, np.zeros((1, 3, *spec.size_hw), np.float32))
            for out, arr in (("descriptor", desc), ("features", feats)):
                self._check_output(graph, out, arr, want[out])
            descs[graph] = (desc, feats)
        if self.meta.matching == "bev":
            k = self.meta.ground_features[1]
            scores = self._match(descs[GROUND_GRAPH][1][:1], descs[AERIAL_GRAPH][1][:1])
            h_out = (self.meta.aerial_features[1] - k) // int(self.meta.bev["match_stride"]) + 1
            self._check_output(MATCH_GRAPH, "scores", scores,
                               (_BATCH, int(self.meta.bev["rotations"]), h_out, h_out))
            return
        off = self._offset(descs[GROUND_GRAPH][0], descs[AERIAL_GRAPH][0])
        self._check_output(OFFSET_GRAPH, "offset", off, (_BATCH, 2))

    def _check_output(self, graph: str, name: str, arr: np.ndarray, want: tuple) -> None:
        if tuple(arr.shape) != (1, *want[1:]):
            raise EngineError(f"{self.meta.graph_path(graph)} output {name!r} has shape {tuple(arr.shape)} on a "
                              f"batch of one, model.json says {_fmt_shape(want)}; {_REEXPORT}")
        if not np.all(np.isfinite(arr)):
            raise EngineError(f"{self.meta.graph_path(graph)} output {name!r} is not finite on the warm-up input "
                              f"({self.name}); {_REEXPORT}")


def _check_graph_io(meta: ModelMeta, graph: str, inputs: Sequence[tuple[str, Sequence, str]],
                    outputs: Sequence[tuple[str, Sequence, str]], float_type: Any) -> None:
    """Compare a backend's (name, shape, dtype) of a graph's inputs/outputs with model.json.

    shape entries: int for a fixed size, anything else (str, None, -1) for a symbolic one. A
    symbolic size where model.json has a fixed one is accepted (the warm-up checks the result);
    a fixed batch size is refused (the export makes it dynamic).
    """
    want_in, want_out = meta.expected_io(graph)
    path = meta.graph_path(graph)
    for kind, want, got in (("inputs", want_in, inputs), ("outputs", want_out, outputs)):
        names = [n for n, _, _ in got]
        if sorted(names) != sorted(want):
            raise EngineError(f"{path} has {kind} {names}, model.json expects {sorted(want)}: the graph is not a "
                              f"crossview export or belongs to another version; {_REEXPORT}")
        for name, shape, dtype in got:
            if dtype != float_type:
                raise EngineError(f"{path} {kind[:-1]} {name!r} is {dtype}, expected float32; {_REEXPORT}")
            exp = want[name]
            fixed = [v if _is_int(v) and v >= 0 else None for v in shape]
            if len(fixed) != len(exp) or fixed[0] is not None or any(
                    f is not None and f != e for f, e in zip(fixed[1:], exp[1:])):
                raise EngineError(f"{path} {kind[:-1]} {name!r} has shape {_fmt_shape(fixed)} but model.json "
                                  f"says {_fmt_shape(exp)} (input size or descriptor size mismatch: the graph "
                                  f"and model.json come from different exports); {_REEXPORT}")


# --------------------------------------------------------------------------- device probes


def _gpu_present() -> bool:
    """An NVIDIA GPU device node exists (cheap; imports nothing)."""
    return any(glob.glob(pattern) for pattern in _GPU_DEVICE_GLOBS)


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(f"TensorRT is not importable ({exc}); install it on the GPU machine "
                          "(`pip install tensorrt`, or NVIDIA's JetPack on Jetson) or use engine "
                          "'onnxruntime'") from exc
    return tensorrt


def _import_cudart() -> Any:
    """The CUDA runtime API of cuda-python (cuda.bindings.runtime; older releases: cuda.cudart)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise EngineError("the TensorRT engine needs the CUDA Python bindings for device memory and "
                              "streams; install them with `pip install cuda-python` (provides "
                              "cuda.bindings.runtime) or use engine 'onnxruntime'") from exc
    return cudart


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why): TensorRT, the CUDA bindings and an NVIDIA GPU are all present."""
    if not _gpu_present():
        return False, f"no NVIDIA GPU (no device node matching {' or '.join(_GPU_DEVICE_GLOBS)})"
    try:
        trt = _import_tensorrt()
        _import_cudart()
    except EngineError as exc:
        return False, f"an NVIDIA GPU is present but {exc}"
    return True, f"an NVIDIA GPU, TensorRT {getattr(trt, '__version__', '?')} and the CUDA bindings are present"


def select_providers(requested: str | Sequence[Any], available: Sequence[str],
                     gpu: bool) -> tuple[list[Any], str]:
    """ONNX Runtime execution providers to ask for, and why.

    "auto": TensorRT EP > CUDA EP > CPU among the available ones; GPU providers only with a GPU
    device present (an installed onnxruntime-gpu without a GPU falls back to CPU anyway, noisily).
    A list: used as given (entries may be (name, options) pairs); each must be available.
    """
    if isinstance(requested, str) and requested == "auto":
        gpu_eps = [p for p in _GPU_PROVIDERS if p in available]
        if gpu_eps and gpu:
            chosen = gpu_eps + ["CPUExecutionProvider"]
            return chosen, f"auto: {gpu_eps[0]} is available and an NVIDIA GPU is present"
        if gpu_eps:
            return ["CPUExecutionProvider"], f"auto: {', '.join(gpu_eps)} installed but no NVIDIA GPU device found"
        return ["CPUExecutionProvider"], ("auto: no GPU execution provider in this onnxruntime "
                                          f"(available: {', '.join(available)})")
    if isinstance(requested, str):
        requested = [requested]
    chosen = list(requested)
    if not chosen:
        raise EngineError("providers must be 'auto' or a non-empty list of execution provider names")
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in chosen]
    missing = [n for n in names if n not in available]
    if missing:
        raise EngineError(f"onnxruntime execution provider(s) {missing} are not available in this install "
                          f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT "
                          "or use providers='auto'")
    return chosen, f"as requested ({', '.join(names)})"


def default_cache_dir() -> Path:
    """Where built TensorRT plans live: $XDG_CACHE_HOME/crossview_ros/tensorrt (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crossview_ros" / "tensorrt"


# --------------------------------------------------------------------------- ONNX Runtime


class OnnxEngine(Engine):
    """The three graphs in ONNX Runtime sessions (CPU by default; CUDA/TensorRT EPs when installed)."""

    def __init__(self, model_dir: str | os.PathLike, providers: str | Sequence[Any] = "auto", threads: int = 0,
                 *, verify: bool = True, warmup: bool = True, cache_dir: str | os.PathLike | None = None) -> None:
        """providers: "auto" or a list (see select_providers); threads: intra-op threads, 0 = onnxruntime's
        default (one per physical core); verify: check the graphs' sha256; cache_dir: TensorRT EP engine
        cache (default_cache_dir())."""
        import onnxruntime as ort

        if not (_is_int(threads) and threads >= 0):
            raise ValueError(f"threads must be an integer >= 0 (0 = onnxruntime's default), got {threads!r}")
        self.meta = load_model_meta(model_dir, verify=verify)
        chosen, reason = select_providers(providers, ort.get_available_providers(), _gpu_present())
        if providers == "auto" and chosen and chosen[0] == "TensorrtExecutionProvider":
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            chosen[0] = ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                                       "trt_engine_cache_path": str(cache)})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sessions: dict[str, Any] = {}
        for graph in self.meta.graphs:
            path = self.meta.graph_path(graph)
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
            except Exception as exc:  # onnxruntime raises its own pybind exception types
                raise EngineError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {exc}); "
                                  f"{_REEXPORT}") from exc
            _check_graph_io(
                self.meta, graph,
                [(a.name, a.shape, a.type) for a in session.get_inputs()],
                [(a.name, a.shape, a.type) for a in session.get_outputs()], "tensor(float)")
            self._sessions[graph] = session
        used = self._sessions[GROUND_GRAPH].get_providers()
        self.providers = list(used)
        self.name = f"onnxruntime:{used[0]}"
        wanted = chosen[0][0] if isinstance(chosen[0], (tuple, list)) else chosen[0]
        if used[0] != wanted:
            log.warning("onnxruntime could not start %s and fell back to %s", wanted, used[0])
        log.info("engine %s for model %s (%s), threads %s: %s", self.name, self.meta.name, self.meta.model_hash,
                 threads or "default", reason)
        if warmup:
            self._warmup()

    def _encode(self, graph: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        desc, feats = self._sessions[graph].run(["descriptor", "features"], {"image": images})
        return desc, feats

    def _offset(self, ground: np.ndarray, aerial: np.ndarray) -> np.ndarray:
        if OFFSET_GRAPH not in self._sessions:
            raise EngineError(f"model {self.meta.name} is a bev model: it has no offset head")
        (off,) = self._sessions[OFFSET_GRAPH].run(["offset"], {"ground": ground, "aerial": aerial})
        return off

    def _match(self, ground: np.ndarray, aerial_map: np.ndarray) -> np.ndarray:
        (scores,) = self._sessions[MATCH_GRAPH].run(["scores"], {"ground": ground, "aerial_map": aerial_map})
        return scores


# --------------------------------------------------------------------------- TensorRT


def plan_file_name(graph: str, sha256: str, gpu_name: str, trt_version: str, precision: str,
                   max_batch: int) -> str:
    """Cache file of a built plan; plans only load on the GPU model and TensorRT version that built them."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return f"{Path(graph).stem}-{sha256[:16]}-{slug}-trt{trt_version}-{precision}-b{max_batch}.plan"


class _TrtGraph:
    """One deserialised engine with its context and fixed device buffers sized for max_batch."""

    def __init__(self, engine: Any, context: Any, inputs: list[str], outputs: list[str],
                 shapes: dict[str, tuple[int, ...]], buffers: dict[str, int]) -> None:
        self.engine = engine
        self.context = context
        self.inputs = inputs
        self.outputs = outputs
        self.shapes = shapes  # per-sample shape (without batch) of every I/O tensor
        self.buffers = buffers  # device pointer of every I/O tensor


def _stream_handle(stream: Any) -> int:
    try:
        return int(stream)
    except TypeError:
        return int(stream.getPtr())


class TensorRTEngine(Engine):
    """The three graphs as TensorRT engines (FP16 by default), with device memory from cuda-python.

    Plans are built from the ONNX graphs once per (graph sha256, GPU, TensorRT version, precision,
    max batch) and cached (plan_file_name) under cache_dir, written atomically. Profiles: batch
    1..max_batch, tuned for 1 (ground, offset: one panorama per frame) and max_batch (aerial:
    tile precomputation); larger batches run in chunks.
    """

    def __init__(self, model_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 max_batch: int = 32, fp16: bool = True, workspace_mib: int = 2048, device: int = 0,
                 verify: bool = True, warmup: bool = True) -> None:
        self._cudart: Any = None
        self._graphs: dict[str, _TrtGraph] = {}
        self._allocations: list[int] = []  # every device buffer, freed by close()
        self._stream: Any = None
        if not (_is_int(max_batch) and max_batch >= 1):
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.meta = load_model_meta(model_dir, verify=verify)
        if self.meta.matching != "descriptor":
            raise EngineError(f"{model_dir} is a {self.meta.matching} model: its match graph (dynamic map size) "
                              "runs in onnxruntime only; use engine onnxruntime (its CUDA/TensorRT EPs when present)")
        trt = _import_tensorrt()
        cudart = _import_cudart()
        self._trt, self._cudart = trt, cudart
        self.max_batch = max_batch
        count = self._cuda(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if not 0 <= device < count:
            raise EngineError(f"CUDA device {device} does not exist ({count} visible); pick device 0..{count - 1}")
        self._cuda(cudart.cudaSetDevice(device), "cudaSetDevice")
        prop = self._cuda(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        raw_name = prop.name
        self.gpu_name = (raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else str(raw_name)
                         ).split("\x00")[0].strip()
        precision = "fp16" if fp16 else "fp32"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._stream = self._cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        try:
            for graph in GRAPHS:
                opt = max_batch if graph == AERIAL_GRAPH else 1
                plan = self.cache_dir / plan_file_name(graph, self.meta.files[graph], self.gpu_name,
                                                       trt.__version__, precision, max_batch)
                engine = self._load_or_build(graph, plan, fp16, opt, workspace_mib)
                self._graphs[graph] = self._bind(graph, engine)
            self.name = f"tensorrt:{self.gpu_name}:{precision}"
            log.info("engine %s (TensorRT %s) for model %s (%s), plans in %s", self.name, trt.__version__,
                     self.meta.name, self.meta.model_hash, self.cache_dir)
            if warmup:
                self._warmup()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- CUDA helpers

    def _cuda(self, result: Any, what: str) -> Any:
        """Unwrap cuda-python's (err, value...) tuples; EngineError on a CUDA error."""
        cudart = self._cudart
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != cudart.cudaError_t.cudaSuccess:
            _, text = cudart.cudaGetErrorString(err)
            raise EngineError(f"{what} failed: {err} ({text.decode() if isinstance(text, bytes) else text})")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    # ----------------------------------------------------------------- building

    def _load_or_build(self, graph: str, plan: Path, fp16: bool, opt_batch: int, workspace_mib: int) -> Any:
        if plan.is_file():
            engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is not None:
                log.info("loaded TensorRT plan %s", plan)
                return engine
            log.warning("TensorRT plan %s does not deserialise (other TensorRT build or corrupt); rebuilding", plan)
        log.info("building TensorRT engine for %s (%s, batch 1..%d); this takes a while once per GPU",
                 self.meta.graph_path(graph), "fp16" if fp16 else "fp32", self.max_batch)
        data = self._build(graph, fp16, opt_batch, workspace_mib)
        plan.parent.mkdir(parents=True, exist_ok=True)
        tmp = plan.with_name(f".{plan.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, plan)
        finally:
            tmp.unlink(missing_ok=True)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineError(f"TensorRT built but cannot deserialise the engine for {graph}; see the TensorRT log")
        return engine

    def _build(self, graph: str, fp16: bool, opt_batch: int, workspace_mib: int) -> bytes:
        trt = self._trt
        path = self.meta.graph_path(graph)
        builder = trt.Builder(self._logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT cannot parse {path}: {errors}; {_REEXPORT}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        want_in, _ = self.meta.expected_io(graph)
        for name, shape in want_in.items():
            sample = tuple(shape[1:])
            profile.set_shape(name, (1, *sample), (opt_batch, *sample), (self.max_batch, *sample))
        config.add_optimization_profile(profile)
        data = builder.build_serialized_network(network, config)
        if data is None:
            raise EngineError(f"TensorRT failed to build an engine for {path}; see the TensorRT log above")
        return bytes(data)

    def _bind(self, graph: str, engine: Any) -> _TrtGraph:
        """Check the engine's I/O against model.json and give every tensor a max_batch device buffer."""
        trt = self._trt
        io: dict[str, list[tuple[str, Sequence, str]]] = {"in": [], "out": []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(v) for v in engine.get_tensor_shape(name))
            dtype = "float32" if engine.get_tensor_dtype(name) == trt.DataType.FLOAT else str(
                engine.get_tensor_dtype(name))
            mode = "in" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "out"
            io[mode].append((name, shape, dtype))
        _check_graph_io(self.meta, graph, io["in"], io["out"], "float32")
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"TensorRT cannot create an execution context for {graph} (out of GPU memory?)")
        want_in, want_out = self.meta.expected_io(graph)
        shapes, buffers = {}, {}
        for name, want in {**want_in, **want_out}.items():
            shapes[name] = tuple(int(v) for v in want[1:])
            nbytes = self.max_batch * int(np.prod(shapes[name])) * 4
            buffers[name] = int(self._cuda(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._allocations.append(buffers[name])
            if not context.set_tensor_address(name, buffers[name]):
                raise EngineError(f"TensorRT refused the device address of {graph} tensor {name!r}")
        return _TrtGraph(engine, context, [n for n, _, _ in io["in"]], [n for n, _, _ in io["out"]], shapes,
                         buffers)

    # ----------------------------------------------------------------- running

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self._graphs[graph]
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        batch = next(iter(feeds.values())).shape[0]
        results = {name: np.empty((batch, *g.shapes[name]), np.float32) for name in g.outputs}
        stream = _stream_handle(self._stream)
        for start in range(0, batch, self.max_batch):
            stop = min(batch, start + self.max_batch)
            chunks = {}
            for name in g.inputs:
                chunk = np.ascontiguousarray(feeds[name][start:stop], dtype=np.float32)
                chunks[name] = chunk  # must outlive the asynchronous copy
                if not g.context.set_input_shape(name, chunk.shape):
                    raise EngineError(f"TensorRT refused input shape {chunk.shape} for {graph} tensor {name!r}")
                self._cuda(cudart.cudaMemcpyAsync(g.buffers[name], chunk.ctypes.data, chunk.nbytes, h2d,
                                                  self._stream), "cudaMemcpyAsync (host to device)")
            if not g.context.execute_async_v3(stream):
                raise EngineError(f"TensorRT execution of {graph} failed; see the TensorRT log")
            outs = {name: np.empty((stop - start, *g.shapes[name]), np.float32) for name in g.outputs}
            for name, host in outs.items():
                self._cuda(cudart.cudaMemcpyAsync(host.ctypes.data, g.buffers[name], host.nbytes, d2h,
                                                  self._stream), "cudaMemcpyAsync (device to host)")
            self._cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            for name, host in outs.items():
                results[name][start:stop] = host
        return results

    def _encode(self, graph: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._run(graph, {"image": images})
        return out["descriptor"], out["features"]

    def _offset(self, ground: np.ndarray, aerial: np.ndarray) -> np.ndarray:
        return self._run(OFFSET_GRAPH, {"ground": ground, "aerial": aerial})["offset"]

    def close(self) -> None:
        cudart = self._cudart
        if cudart is None:
            return
        for ptr in self._allocations:
            cudart.cudaFree(ptr)
        self._allocations = []
        self._graphs = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._cudart = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA bindings may be gone already
            pass


# --------------------------------------------------------------------------- selection


_COMMON_OPTIONS = frozenset({"verify", "warmup", "cache_dir"})
ENGINE_OPTIONS: dict[str, frozenset[str]] = {
    "onnxruntime": _COMMON_OPTIONS | {"providers", "threads"},
    "tensorrt": _COMMON_OPTIONS | {"max_batch", "fp16", "workspace_mib", "device"},
}


def create_engine(model_dir: str | os.PathLike, kind: str = "auto", **options: Any) -> Engine:
    """The engine for an exported model: "onnxruntime", "tensorrt", or "auto".

    auto = TensorRT when an NVIDIA GPU, TensorRT and the CUDA bindings are all present, else ONNX
    Runtime; the log says which and why. Options go to the engine's constructor; with auto,
    options meant only for the engine not chosen are dropped (logged), unknown ones raise TypeError.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {', '.join(ENGINE_KINDS)}")
    known = set().union(*ENGINE_OPTIONS.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown engine option(s) {unknown}; valid: {sorted(known)}")
    if kind == "auto":
        usable, reason = tensorrt_status()
        chosen = "tensorrt" if usable else "onnxruntime"
        dropped = sorted(set(options) - ENGINE_OPTIONS[chosen])
        if dropped:
            log.info("engine auto: options %s do not apply to %s and are ignored", dropped, chosen)
        options = {k: v for k, v in options.items() if k in ENGINE_OPTIONS[chosen]}
        log.info("engine auto: %s, because %s", chosen, reason)
    else:
        chosen = kind
        wrong = sorted(set(options) - ENGINE_OPTIONS[chosen])
        if wrong:
            raise TypeError(f"option(s) {wrong} do not apply to engine {chosen!r}; "
                            f"valid: {sorted(ENGINE_OPTIONS[chosen])}")
    if chosen == "tensorrt":
        return TensorRTEngine(model_dir, **options)
    return OnnxEngine(model_dir, **options)


# --------------------------------------------------------------------------- tile sets


def check_engine_against_tiles(engine_or_meta: Engine | ModelMeta,
                               tile_set: TileSet | str | os.PathLike) -> None:
    """Refuse (EngineError) a tile set whose descriptors this model did not make, or that has none.

    Cosine between descriptors of different models is meaningless: a mismatch would silently
    pick wrong tiles, so it stops the start-up instead. A different tile size only warns (the
    model may have been trained at another L; retrieval degrades, it does not break).
    """
    from crossview_ros.index import DescriptorError, check_descriptors
    from crossview_ros.tiles import TileSet

    meta = getattr(engine_or_meta, "meta", engine_or_meta)
    if not isinstance(meta, ModelMeta):
        raise TypeError(f"expected an Engine or a ModelMeta, got {type(engine_or_meta).__name__}")
    if not isinstance(tile_set, TileSet):
        tile_set = TileSet.open(tile_set)
    fix = f"run `crossview-tiles encode {tile_set.path} --model {meta.path}`"
    if tile_set.descriptors is None:
        raise EngineError(f"tile set {tile_set.path} has no descriptors; {fix}")
    try:
        check_descriptors(tile_set, meta.model_hash, meta.descriptor_dim)
    except DescriptorError as exc:
        raise EngineError(f"{exc} ({fix} --overwrite to replace them)") from exc
    if meta.tile_size_m is not None and abs(meta.tile_size_m - tile_set.tile_size_m) > 1e-6 * meta.tile_size_m:
        log.warning("model %s was exported for %g m tiles, tile set %s has %g m tiles: retrieval and offsets "
                    "degrade; encode a tile set cut at the model's tile size", meta.name, meta.tile_size_m, tile_set.path, tile_set.tile_size_m)
