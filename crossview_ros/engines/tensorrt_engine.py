"""Native TensorRT engine: plans built from the ONNX graphs once per GPU, device memory from cuda-python.

TensorRT and the CUDA bindings are imported only when this engine is constructed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros.engines import devices
from crossview_ros.engines.base import Engine, check_graph_io
from crossview_ros.model_meta import (
    AERIAL_GRAPH, GRAPHS, OFFSET_GRAPH, REEXPORT_HINT, EngineError, is_int, load_model_meta,
)

log = logging.getLogger(__name__)


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
        if not (is_int(max_batch) and max_batch >= 1):
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.meta = load_model_meta(model_dir, verify=verify)
        if self.meta.matching != "descriptor":
            raise EngineError(f"{model_dir} is a {self.meta.matching} model: its match graph (dynamic map size) "
                              "runs in onnxruntime only; use engine onnxruntime (its CUDA/TensorRT EPs when present)")
        trt = devices.import_tensorrt()
        cudart = devices.import_cudart()
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
        self.cache_dir = Path(cache_dir) if cache_dir is not None else devices.default_cache_dir()
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
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICITBATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT cannot parse {path}: {errors}; {REEXPORT_HINT}")
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
        check_graph_io(self.meta, graph, io["in"], io["out"], "float32")
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
