"""What the machine offers: an NVIDIA GPU, TensorRT, CUDA bindings, ONNX Runtime providers.

Probes are cheap and import nothing heavy unless asked: "auto" never imports TensorRT nor picks a
GPU execution provider without a GPU device node.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossview_ros.model_meta import EngineError

ORT_PROVIDERS_BY_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = ORT_PROVIDERS_BY_PREFERENCE[:2]
# Device nodes of the NVIDIA driver (desktop/server) and of Jetson's integrated GPU.
GPU_DEVICE_GLOBS = ("/dev/nvidia[0-9]*", "/dev/nvhost-ctrl-gpu")


def gpu_present() -> bool:
    """An NVIDIA GPU device node exists (cheap; imports nothing)."""
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_GLOBS)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(f"TensorRT is not importable ({exc}); install it on the GPU machine "
                          "(`pip install tensorrt`, or NVIDIA's JetPack on Jetson) or use engine "
                          "'onnxruntime'") from exc
    return tensorrt


def import_cudart() -> Any:
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
    if not gpu_present():
        return False, f"no NVIDIA GPU (no device node matching {' or '.join(GPU_DEVICE_GLOBS)})"
    try:
        trt = import_tensorrt()
        import_cudart()
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
