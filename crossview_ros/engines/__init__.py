"""Encoder runtimes behind one interface: ONNX Runtime (CPU, CUDA, TensorRT EPs) and native TensorRT.

An engine runs the graphs of an exported model (crossview_ros.model_meta describes the folder)
and checks everything it can at construction: the metadata, each graph's sha256, the graphs'
input/output names and shapes against the metadata, and one warm-up inference. A missing,
corrupt or mismatched artefact is an EngineError at start-up, never at the first frame.

    base             the Engine interface (encode_ground, encode_aerial, offset, match)
    onnxrt           OnnxEngine
    tensorrt_engine  TensorRTEngine (TensorRT and cuda-python imported only when constructed)
    devices          GPU / TensorRT / execution-provider probes
    factory          create_engine("auto" | "onnxruntime" | "tensorrt")
"""

from crossview_ros.engines.base import ENGINE_KINDS, Engine, check_graph_io
from crossview_ros.engines.devices import (
    ORT_PROVIDERS_BY_PREFERENCE, default_cache_dir, gpu_present, select_providers, tensorrt_status,
)
from crossview_ros.engines.factory import ENGINE_OPTIONS, create_engine
from crossview_ros.engines.onnxrt import OnnxEngine
from crossview_ros.engines.tensorrt_engine import TensorRTEngine, plan_file_name
from crossview_ros.model_meta import EngineError

__all__ = [
    "ENGINE_KINDS", "ENGINE_OPTIONS", "ORT_PROVIDERS_BY_PREFERENCE", "Engine", "EngineError", "OnnxEngine",
    "TensorRTEngine", "check_graph_io", "create_engine", "default_cache_dir", "gpu_present", "plan_file_name",
    "select_providers", "tensorrt_status",
]
