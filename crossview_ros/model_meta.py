"""model.json: the contract between an export (training/export.py) and the runtime.

An exported model is a folder written by `crossview-export onnx`:

    ground.onnx   image (B, 3, Hg, Wg) float32 normalised -> descriptor (B, D), features (B, C, hg, wg)
    aerial.onnx   image (B, 3, Ha, Wa) float32 normalised -> descriptor (B, D), features (B, C, ha, wa)
    offset.onnx   ground (B, D), aerial (B, D) -> offset (B, 2) = (dE, dN) / L
    match.onnx    instead of offset.onnx in a top-down (bev) model: ground features (1, C, K, K),
                  a scope's aerial feature map (1, C, H, W) -> scores (1, R, H', W') per bearing
    model.json    preprocessing, sizes, descriptor size, tile size L, model hash, sha256 of each graph

The schema's names live here once: the exporter writes them and the runtime reads them. Reading
needs neither torch nor onnxruntime; load_model_meta checks the metadata's format and
consistency and each graph's sha256, and says how to fix what is wrong (mostly: re-export).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FORMAT = "crossview_ros.model"
MODEL_FORMAT_VERSION = 1
METADATA_FILE = "model.json"
GROUND_GRAPH = "ground.onnx"
AERIAL_GRAPH = "aerial.onnx"
OFFSET_GRAPH = "offset.onnx"
MATCH_GRAPH = "match.onnx"
GRAPHS = (GROUND_GRAPH, AERIAL_GRAPH, OFFSET_GRAPH)  # a descriptor model (global descriptors + offset head)
BEV_GRAPHS = (GROUND_GRAPH, AERIAL_GRAPH, MATCH_GRAPH)  # a top-down correlation model (matching kind "bev")
REEXPORT_HINT = "re-export with `crossview-export onnx --checkpoint CKPT --out DIR --overwrite`"
BATCH = None  # the dynamic batch axis in expected shapes
MATCHING_KINDS = ("descriptor", "bev")  # global descriptors + offset head | top-down correlation (match.onnx)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class EngineError(RuntimeError):
    """An exported model or engine that cannot be used; the message says what and how to fix it."""


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
            return {"ground": (BATCH, d), "aerial": (BATCH, d)}, {"offset": (BATCH, 2)}
        if graph == MATCH_GRAPH:
            c = self.ground_features[0]
            return ({"ground": (BATCH, *self.ground_features), "aerial_map": (BATCH, c, None, None)},
                    {"scores": (BATCH, int(self.bev["rotations"]), None, None)})
        spec, feats = (self.ground, self.ground_features) if graph == GROUND_GRAPH else (self.aerial,
                                                                                           self.aerial_features)
        dim = int(np.prod(feats)) if graph == GROUND_GRAPH and self.matching == "bev" else d
        return ({"image": (BATCH, 3, *spec.size_hw)},
                {"descriptor": (BATCH, dim), "features": (BATCH, *feats)})


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


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _image_input(raw: dict[str, Any], view: str, bad: Callable[[str], EngineError]) -> ImageInput:
    try:
        spec = _lookup(raw, f"inputs/{view}")
        size, mean, std = spec["size"], spec["mean"], spec["std"]
    except (KeyError, TypeError):
        raise bad(f"inputs.{view} must hold size, mean and std") from None
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        raise bad(f"inputs.{view}.size must be [H, W] positive integers, got {size!r}")
    for key, vals in (("mean", mean), ("std", std)):
        if not (isinstance(vals, list) and len(vals) == 3 and all(is_number(v) for v in vals)):
            raise bad(f"inputs.{view}.{key} must be three numbers (RGB), got {vals!r}")
    if min(std) <= 0:
        raise bad(f"inputs.{view}.std must be positive, got {std!r}")
    return ImageInput(int(size[0]), int(size[1]), tuple(float(v) for v in mean), tuple(float(v) for v in std))


def _shape_spec(value: Any) -> tuple:
    """["batch", 3, 64, 64] -> (None, 3, 64, 64); a name for a dynamic size -> None; ValueError otherwise."""
    if not (isinstance(value, list) and value and value[0] == "batch"
            and all((is_int(v) and v > 0) or (isinstance(v, str) and v) for v in value[1:])):
        raise ValueError(value)
    return (BATCH, *(v if is_int(v) else None for v in value[1:]))


def load_model_meta(model_dir: str | os.PathLike, verify: bool = True) -> ModelMeta:
    """Read and check model.json; with verify, every graph must exist and match its sha256.

    EngineError names the file at fault and says how to fix it (mostly: re-export). Kept as one
    sequence of checks (a little over 80 lines) because their order is the order a user fixes them in.
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
        raise EngineError(f"cannot read {path} ({exc}); {REEXPORT_HINT}") from exc

    def bad(what: str) -> EngineError:
        return EngineError(f"{path}: {what}; {REEXPORT_HINT}")

    if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
        raise bad(f"not a model export (format is not {MODEL_FORMAT!r})")
    if raw.get("format_version") != MODEL_FORMAT_VERSION:
        raise EngineError(f"{path} is format_version {raw.get('format_version')!r}, this crossview_ros reads "
                          f"version {MODEL_FORMAT_VERSION}; update crossview_ros or {REEXPORT_HINT}")
    for key in ("model_hash", "name"):
        if not (isinstance(raw.get(key), str) and raw[key]):
            raise bad(f"{key!r} must be a non-empty string, got {raw.get(key)!r}")
    dim = raw.get("descriptor_dim")
    if not (is_int(dim) and dim > 0):
        raise bad(f"descriptor_dim must be a positive integer, got {dim!r}")
    ground, aerial = _image_input(raw, "ground", bad), _image_input(raw, "aerial", bad)
    feats = {}
    for view in ("ground", "aerial"):
        try:
            shape = _lookup(raw, f"outputs/{view}_features/shape")
        except KeyError:
            shape = None
        if not (isinstance(shape, list) and len(shape) == 3 and all(is_int(v) and v > 0 for v in shape)):
            raise bad(f"outputs.{view}_features.shape must be [C, h, w] positive integers, got {shape!r}")
        feats[view] = tuple(shape)
    try:
        tile_size_m = _lookup(raw, "outputs/offset/tile_size_m")
    except KeyError:
        tile_size_m = None
    if tile_size_m is not None and not (is_number(tile_size_m) and tile_size_m > 0):
        raise bad(f"outputs.offset.tile_size_m must be null or a positive number, got {tile_size_m!r}")
    try:
        files, graphs, opset = (_lookup(raw, "onnx/files"), _lookup(raw, "onnx/graphs"), _lookup(raw, "onnx/opset"))
    except KeyError as exc:
        raise bad(f"onnx.{exc.args[0].split('/')[-1]} is missing") from None
    block = raw.get("matching", {"kind": "descriptor"})  # exports before bev models have none
    matching = block.get("kind") if isinstance(block, dict) else None
    if matching not in MATCHING_KINDS:
        raise bad(f"matching.kind must be one of {MATCHING_KINDS}, got {matching!r}")
    if matching == "bev":
        _check_bev_block(raw["matching"], feats, dim, bad)
    wanted = BEV_GRAPHS if matching == "bev" else GRAPHS
    if not (isinstance(files, dict) and set(files) == set(wanted)
            and all(isinstance(v, str) and _SHA256_RE.match(v) for v in files.values())):
        raise bad(f"onnx.files must map each of {wanted} to its sha256 hex digest")
    if not is_int(opset):
        raise bad(f"onnx.opset must be an integer, got {opset!r}")

    meta = ModelMeta(
        path=model_dir, name=raw["name"], model_hash=raw["model_hash"], descriptor_dim=int(dim), ground=ground,
        aerial=aerial, tile_size_m=None if tile_size_m is None else float(tile_size_m),
        ground_features=feats["ground"], aerial_features=feats["aerial"], files=dict(files), opset=int(opset),
        raw=raw, matching=matching,
    )
    _check_graph_table(meta, graphs, bad)
    if verify:
        for graph in meta.graphs:
            file = model_dir / graph
            if not file.is_file():
                raise EngineError(f"{file} listed in {path} is missing; {REEXPORT_HINT}")
            if sha256_file(file) != meta.files[graph]:
                raise EngineError(f"{file} does not match the sha256 recorded in {path} (changed, corrupt or "
                                  f"half-copied); {REEXPORT_HINT}")
    return meta


def _check_bev_block(m: Mapping[str, Any], feats: Mapping[str, tuple[int, int, int]], dim: int,
                     bad: Callable[[str], EngineError]) -> None:
    """A bev model's "matching" block: positive sizes that agree with the feature shapes."""
    for key in ("rotations", "match_stride", "kernel_cells", "block_cells"):
        if not (is_int(m.get(key)) and m[key] > 0):
            raise bad(f"matching.{key} must be a positive integer, got {m.get(key)!r}")
    for key in ("cell_m", "logit_scale"):
        if not (is_number(m.get(key)) and m[key] > 0):
            raise bad(f"matching.{key} must be a positive number, got {m.get(key)!r}")
    if feats["ground"][1:] != (m["kernel_cells"],) * 2 or dim != feats["aerial"][0] * m["block_cells"] ** 2:
        raise bad("matching.kernel_cells / block_cells disagree with the feature shapes and descriptor_dim")


def _check_graph_table(meta: ModelMeta, graphs: Any, bad: Callable[[str], EngineError]) -> None:
    """The graph I/O table must agree with the sizes: the runtime validates the graphs against it."""
    for graph in meta.graphs:
        want_in, want_out = meta.expected_io(graph)
        spec = graphs.get(graph) if isinstance(graphs, dict) else None
        try:
            got_in = {k: _shape_spec(v) for k, v in spec["inputs"].items()}
            got_out = {k: _shape_spec(v) for k, v in spec["outputs"].items()}
        except (TypeError, KeyError, AttributeError, ValueError):
            raise bad(f"onnx.graphs.{graph} must list inputs and outputs as [\"batch\", dims...]") from None
        if got_in != want_in or got_out != want_out:
            raise bad(f"onnx.graphs.{graph} ({format_io(got_in, got_out)}) disagrees with the sizes in the same file "
                      f"({format_io(want_in, want_out)})")


def format_shape(shape: Sequence) -> str:
    return "[" + ", ".join("batch" if v is None else str(v) for v in shape) + "]"


def format_io(inputs: Mapping[str, Sequence], outputs: Mapping[str, Sequence]) -> str:
    ins = ", ".join(f"{k} {format_shape(v)}" for k, v in inputs.items())
    outs = ", ".join(f"{k} {format_shape(v)}" for k, v in outputs.items())
    return f"{ins} -> {outs}"
