"""ONNX Runtime engine: the model's graphs in InferenceSessions (CPU; CUDA/TensorRT EPs when installed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros.engines import devices
from crossview_ros.engines.base import Engine, check_graph_io
from crossview_ros.model_meta import (
    GROUND_GRAPH, MATCH_GRAPH, OFFSET_GRAPH, REEXPORT_HINT, EngineError, is_int, load_model_meta,
)

log = logging.getLogger(__name__)


class OnnxEngine(Engine):
    """The three graphs in ONNX Runtime sessions (CPU by default; CUDA/TensorRT EPs when installed)."""

    def __init__(self, model_dir: str | os.PathLike, providers: str | Sequence[Any] = "auto", threads: int = 0,
                 *, verify: bool = True, warmup: bool = True, cache_dir: str | os.PathLike | None = None) -> None:
        """providers: "auto" or a list (see select_providers); threads: intra-op threads, 0 = onnxruntime's
        default (one per physical core); verify: check the graphs' sha256; cache_dir: TensorRT EP engine
        cache (devices.default_cache_dir())."""
        import onnxruntime as ort

        if not (is_int(threads) and threads >= 0):
            raise ValueError(f"threads must be an integer >= 0 (0 = onnxruntime's default), got {threads!r}")
        self.meta = load_model_meta(model_dir, verify=verify)
        chosen, reason = devices.select_providers(providers, ort.get_available_providers(), devices.gpu_present())
        if providers == "auto" and chosen and chosen[0] == "TensorrtExecutionProvider":
            cache = Path(cache_dir) if cache_dir is not None else devices.default_cache_dir()
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
                                  f"{REEXPORT_HINT}") from exc
            check_graph_io(
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
