"""create_engine: the engine for an exported model, by kind or chosen from what the machine has."""

from __future__ import annotations

import logging
import os
from typing import Any

from crossview_ros.engines import devices, onnxrt, tensorrt_engine
from crossview_ros.engines.base import ENGINE_KINDS, Engine

log = logging.getLogger(__name__)


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
        usable, reason = devices.tensorrt_status()
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
        return tensorrt_engine.TensorRTEngine(model_dir, **options)
    return onnxrt.OnnxEngine(model_dir, **options)
