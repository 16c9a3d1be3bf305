"""The engine interface: run an exported model's graphs on checked inputs, whatever the backend."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from crossview_ros.model_meta import (
    AERIAL_GRAPH, BATCH, GROUND_GRAPH, MATCH_GRAPH, OFFSET_GRAPH, REEXPORT_HINT, EngineError, ModelMeta, format_shape,
    is_int,
)

ENGINE_KINDS = ("auto", "onnxruntime", "tensorrt")


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
                             "use crossview_ros.preprocess")
        if x.dtype != np.float32:
            raise ValueError(f"{graph} takes float32 normalised images, got {x.dtype}; "
                             "use crossview_ros.preprocess")
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
                               (BATCH, int(self.meta.bev["rotations"]), h_out, h_out))
            return
        off = self._offset(descs[GROUND_GRAPH][0], descs[AERIAL_GRAPH][0])
        self._check_output(OFFSET_GRAPH, "offset", off, (BATCH, 2))

    def _check_output(self, graph: str, name: str, arr: np.ndarray, want: tuple) -> None:
        if tuple(arr.shape) != (1, *want[1:]):
            raise EngineError(f"{self.meta.graph_path(graph)} output {name!r} has shape {tuple(arr.shape)} on a "
                              f"batch of one, model.json says {format_shape(want)}; {REEXPORT_HINT}")
        if not np.all(np.isfinite(arr)):
            raise EngineError(f"{self.meta.graph_path(graph)} output {name!r} is not finite on the warm-up input "
                              f"({self.name}); {REEXPORT_HINT}")


def check_graph_io(meta: ModelMeta, graph: str, inputs: Sequence[tuple[str, Sequence, str]],
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
                              f"crossview export or belongs to another version; {REEXPORT_HINT}")
        for name, shape, dtype in got:
            if dtype != float_type:
                raise EngineError(f"{path} {kind[:-1]} {name!r} is {dtype}, expected float32; {REEXPORT_HINT}")
            exp = want[name]
            fixed = [v if is_int(v) and v >= 0 else None for v in shape]
            if len(fixed) != len(exp) or fixed[0] is not None or any(
                    f is not None and f != e for f, e in zip(fixed[1:], exp[1:])):
                raise EngineError(f"{path} {kind[:-1]} {name!r} has shape {format_shape(fixed)} but model.json "
                                  f"says {format_shape(exp)} (input size or descriptor size mismatch: the graph "
                                  f"and model.json come from different exports); {REEXPORT_HINT}")
