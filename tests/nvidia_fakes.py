"""A fake NVIDIA machine for tests without a GPU: a `tensorrt` module (the 10.3 Python API, or 11.x) and a
`cuda.bindings.runtime` module (cuda-python 12.6 to 13) that share one simulated device.

They behave as the real bindings do where hwbcnet depends on it (checked against NVIDIA/TensorRT's pyCore.cpp,
NvInfer.h, samples/common and cuda-python's runtime sources):
* enum values: NetworkDefinitionCreationFlag EXPLICIT_BATCH = 0, STRONGLY_TYPED = 1 in 10.3; STRONGLY_TYPED = 0
  (deprecated no-op), PREFER_JIT_PYTHON_PLUGINS = 1 in 11.x; BuilderFlag FP16 = 0, INT8 = 1, TF32 = 6 (on by
  default), FP16/INT8 gone in 11.x; DataType, TensorIOMode, cudaError_t codes as in the headers;
* cuda-python returns (error, *values) tuples, handles that convert with int(), and with cuda-python 12.6 on a
  machine without a driver cudaGetDeviceCount raises RuntimeError("Failed to dlopen libcuda.so.1");
  cudaRuntimeGetVersion reports cuda-python's own build version, getLocalRuntimeVersion the installed libcudart;
* `trt.Builder`/`trt.Runtime` raise TypeError (pybind11 "factory function returned nullptr") without a GPU;
  a strongly typed network with the FP16/INT8 flag fails to build (None); `create_timing_cache` returns None for
  bytes it cannot read; `set_timing_cache` returns False for a cache from another device unless ignore_mismatch;
  `ITimingCache.combine` merges entries (existing ones win) and returns False across devices or versions;
* stream capture: synchronising or allocating on a capturing stream fails with cudaErrorStreamCaptureUnsupported
  and invalidates the capture; `cudaStreamEndCapture` then returns cudaErrorStreamCaptureInvalidated (no graph);
  `execute_async_v3` of an engine that is not capturable returns False under capture and invalidates it.
Time is simulated: an enqueue advances its stream's clock by the engine's kernel time plus a launch gap, a graph
launch by the kernel time alone; events read the clock. Every handle is tracked, so tests can assert no leaks.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import onnx

SUCCESS = 0
TRT_10 = "10.3.0.30"  # JetPack 6.1/6.2
LAUNCH_GAP_MS = 0.01  # what a plain enqueue costs on top of the kernels (a graph launch saves it)


# ----------------------------------------------------------------------------------------------- cuda-python


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class _Handle:
    """cuda-python's opaque handle types (cudaStream_t, ...): int() gives the address."""

    def __init__(self, address: int):
        self._address = address

    def __int__(self) -> int:
        return self._address

    def getPtr(self) -> int:
        return self._address

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._address:#x}>"


class cudaStream_t(_Handle):
    pass


class cudaEvent_t(_Handle):
    pass


class cudaGraph_t(_Handle):
    pass


class cudaGraphExec_t(_Handle):
    pass


@dataclass
class _Stream:
    clock_ms: float = 0.0
    capturing: bool = False
    capture_invalid: bool = False
    captured_ms: float = 0.0


@dataclass
class DeviceProps:
    name: bytes = b"Orin"
    major: int = 8
    minor: int = 7
    pciDomainID: int = 0
    pciBusID: int = 0
    pciDeviceID: int = 0


class FakeCudart(types.ModuleType):
    """`cuda.bindings.runtime`: the calls hwbcnet makes, with cuda-python's return conventions."""

    cudaError_t = cudaError_t
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, gpu: "FakeGpu"):
        super().__init__("cuda.bindings.runtime")
        self.gpu = gpu
        self.memory: dict[int, int] = {}
        self.streams: dict[int, _Stream] = {}
        self.events: dict[int, float | None] = {}
        self.graphs: dict[int, float] = {}
        self.graph_execs: dict[int, float] = {}
        self.last_error = cudaError_t.cudaSuccess
        self._next = 0x7F0000000000

    def _address(self) -> int:
        self._next += 0x1000
        return self._next

    def _fail(self, error: cudaError_t):
        self.last_error = error
        return error

    def live(self) -> dict:
        """Everything allocated and not yet released."""
        return {name: dict(table) for name, table in (("memory", self.memory), ("streams", self.streams),
                                                     ("events", self.events), ("graphs", self.graphs),
                                                     ("graph_execs", self.graph_execs)) if table}

    def _capturing(self) -> list[_Stream]:
        return [stream for stream in self.streams.values() if stream.capturing]

    def _invalidate_captures(self) -> cudaError_t:
        for stream in self._capturing():
            stream.capture_invalid = True
        return self._fail(cudaError_t.cudaErrorStreamCaptureUnsupported)

    # device and versions
    def cudaGetDeviceCount(self):
        if self.gpu.driver == "dlopen-fails":
            raise RuntimeError("Failed to dlopen libcuda.so.1")
        if self.gpu.driver == "insufficient":
            return (self._fail(cudaError_t.cudaErrorInsufficientDriver), 0)
        if self.gpu.driver == "no-device":
            return (self._fail(cudaError_t.cudaErrorNoDevice), 0)
        return (cudaError_t.cudaSuccess, 1)

    def cudaGetDeviceProperties(self, device: int):
        if device != 0 or self.gpu.driver != "ok":
            return (self._fail(cudaError_t.cudaErrorInvalidValue), None)
        return (cudaError_t.cudaSuccess, self.gpu.props)

    def cudaDriverGetVersion(self):
        return (cudaError_t.cudaSuccess, 12060)

    def cudaRuntimeGetVersion(self):
        return (cudaError_t.cudaSuccess, 12090)  # the CUDA version cuda-python was built for, not the library's

    @property
    def getLocalRuntimeVersion(self):
        if self.gpu.local_runtime is None:  # cuda-python before 12.3
            raise AttributeError("module 'cuda.bindings.runtime' has no attribute 'getLocalRuntimeVersion'")
        return self._local_runtime_version

    def _local_runtime_version(self):
        if self.gpu.local_runtime == "dlopen-fails":
            raise RuntimeError("Failed to dlopen libcudart.so.12")
        return (cudaError_t.cudaSuccess, self.gpu.local_runtime)

    def cudaGetLastError(self):
        error, self.last_error = self.last_error, cudaError_t.cudaSuccess
        return (error,)

    # memory
    def cudaMalloc(self, size: int):
        if self._capturing():
            return (self._invalidate_captures(), 0)
        if self.gpu.fail_malloc_after is not None and len(self.memory) >= self.gpu.fail_malloc_after:
            return (self._fail(cudaError_t.cudaErrorMemoryAllocation), 0)
        address = self._address()
        self.memory[address] = int(size)
        return (cudaError_t.cudaSuccess, address)

    def cudaFree(self, address: int):
        if self.memory.pop(int(address), None) is None:
            return (self._fail(cudaError_t.cudaErrorInvalidValue),)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst, src, count: int, kind: cudaMemcpyKind):
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice and self.memory.get(int(dst), -1) < count:
            return (self._fail(cudaError_t.cudaErrorInvalidValue),)
        return (cudaError_t.cudaSuccess,)

    # streams and events
    def cudaStreamCreate(self):
        address = self._address()
        self.streams[address] = _Stream()
        return (cudaError_t.cudaSuccess, cudaStream_t(address))

    def _stream(self, stream) -> _Stream | None:
        return self.streams.get(int(stream))

    def cudaStreamDestroy(self, stream):
        if self.streams.pop(int(stream), None) is None:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle),)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        state = self._stream(stream)
        if state is None:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle),)
        if state.capturing:
            return (self._invalidate_captures(),)
        return (cudaError_t.cudaSuccess,)

    def cudaEventCreate(self):
        address = self._address()
        self.events[address] = None
        return (cudaError_t.cudaSuccess, cudaEvent_t(address))

    def cudaEventDestroy(self, event):
        if int(event) not in self.events:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle),)
        del self.events[int(event)]
        return (cudaError_t.cudaSuccess,)

    def cudaEventRecord(self, event, stream):
        state = self._stream(stream)
        if state is None or int(event) not in self.events:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle),)
        self.events[int(event)] = state.clock_ms
        return (cudaError_t.cudaSuccess,)

    def cudaEventSynchronize(self, event):
        if self.events.get(int(event)) is None:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle),)
        return (cudaError_t.cudaSuccess,)

    def cudaEventElapsedTime(self, start, end):
        begin, finish = self.events.get(int(start)), self.events.get(int(end))
        if begin is None or finish is None:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle), 0.0)
        return (cudaError_t.cudaSuccess, finish - begin)

    # graphs
    def cudaStreamBeginCapture(self, stream, mode: cudaStreamCaptureMode):
        state = self._stream(stream)
        if state is None or state.capturing:
            return (self._fail(cudaError_t.cudaErrorIllegalState),)
        state.capturing, state.capture_invalid, state.captured_ms = True, False, 0.0
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        state = self._stream(stream)
        if state is None or not state.capturing:
            return (self._fail(cudaError_t.cudaErrorIllegalState), cudaGraph_t(0))
        state.capturing = False
        if state.capture_invalid:
            return (self._fail(cudaError_t.cudaErrorStreamCaptureInvalidated), cudaGraph_t(0))
        address = self._address()
        self.graphs[address] = state.captured_ms
        return (cudaError_t.cudaSuccess, cudaGraph_t(address))

    def cudaGraphInstantiate(self, graph, flags: int):
        if int(graph) not in self.graphs:
            return (self._fail(cudaError_t.cudaErrorInvalidValue), cudaGraphExec_t(0))
        address = self._address()
        self.graph_execs[address] = self.graphs[int(graph)]
        return (cudaError_t.cudaSuccess, cudaGraphExec_t(address))

    def cudaGraphDestroy(self, graph):
        if self.graphs.pop(int(graph), None) is None:
            return (self._fail(cudaError_t.cudaErrorInvalidValue),)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        if self.graph_execs.pop(int(graph_exec), None) is None:
            return (self._fail(cudaError_t.cudaErrorInvalidValue),)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphLaunch(self, graph_exec, stream):
        state = self._stream(stream)
        if state is None or int(graph_exec) not in self.graph_execs:
            return (self._fail(cudaError_t.cudaErrorInvalidResourceHandle),)
        state.clock_ms += self.graph_execs[int(graph_exec)]
        self.gpu.graph_launches += 1
        return (cudaError_t.cudaSuccess,)


# -------------------------------------------------------------------------------------------------- tensorrt


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_ONNX_TYPES = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
               onnx.TensorProto.INT8: DataType.INT8, onnx.TensorProto.INT32: DataType.INT32,
               onnx.TensorProto.INT64: DataType.INT64}
_NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
                DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_}
SUPPORTED_OPS = {"Conv", "Gemm", "Relu", "Clip", "Add", "GlobalAveragePool", "AveragePool", "MaxPool", "Flatten",
                 "Reshape", "QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "MatMul"}
_CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"
_PLAN_MAGIC = b"FAKE-TRT-PLAN\n"


class ParserError:
    def __init__(self, desc: str, node: int = -1):
        self._desc, self._node = desc, node

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:  # the bindings print the node, its name and the description
        return f"In node {self._node} with name:  and operator:  (parseGraph): {self._desc}"


class FakeTimingCache:
    def __init__(self, trt_version: str, device: str, entries: dict | None = None):
        self.trt_version, self.device, self.entries = trt_version, device, dict(entries or {})

    def serialize(self) -> bytes:
        header = {"trt": self.trt_version, "device": self.device, "entries": self.entries}
        return _CACHE_MAGIC + json.dumps(header, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> "FakeTimingCache | None":
        if not data.startswith(_CACHE_MAGIC):
            return None
        try:
            header = json.loads(data[len(_CACHE_MAGIC):])
        except ValueError:
            return None
        return cls(header["trt"], header["device"], header["entries"])

    def combine(self, input_cache: "FakeTimingCache", ignore_mismatch: bool) -> bool:
        if input_cache.trt_version != self.trt_version:
            return False
        if input_cache.device != self.device and not ignore_mismatch:
            return False
        for key, value in input_cache.entries.items():
            self.entries.setdefault(key, value)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


def make_tensorrt(gpu: "FakeGpu", version: str) -> types.ModuleType:
    """A `tensorrt` module of the given version bound to `gpu`."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType, trt.TensorIOMode = DataType, TensorIOMode
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1,
                                              "PREFER_AOT_PYTHON_PLUGINS": 2})
        trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4,
                                                       "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7})
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                         {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3,
                                                       "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                                                       "SPARSE_WEIGHTS": 7, "BF16": 17, "FP8": 19})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    strongly_typed_flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    weak_flags = [flag for name, flag in trt.BuilderFlag.__members__.items() if name in ("FP16", "INT8", "BF16")]

    def nptype(dtype):
        return _NUMPY_TYPES[DataType(dtype)]

    def require_gpu():
        if gpu.driver != "ok":
            raise TypeError("pybind11::init(): factory function returned nullptr")

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity=WARNING):
            self.min_severity = min_severity

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.model: onnx.ModelProto | None = None

        def get_flag(self, flag) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def strongly_typed(self) -> bool:
            return major >= 11 or bool(self.flags & strongly_typed_flag)

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> ParserError:
            return self.errors[index]

        def parse(self, model: bytes, path: str | None = None) -> bool:
            gpu.parsed.append(bytes(model))
            try:
                parsed = onnx.load_from_string(bytes(model))
            except Exception:
                self.errors.append(ParserError("Failed to parse ONNX model from file"))
                return False
            for index, node in enumerate(parsed.graph.node):
                if node.op_type not in SUPPORTED_OPS:
                    self.errors.append(ParserError(f"No importer registered for op: {node.op_type}", index))
                    return False
            self.network.model = parsed
            return True

    class Config:
        def __init__(self):
            self.flags = 1 << int(trt.BuilderFlag.TF32)  # "Enabled by default"
            self.pools: dict = {}
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.timing_cache: FakeTimingCache | None = None
            self.max_aux_streams = -1

        def set_flag(self, flag) -> None:
            self.flags |= 1 << int(flag)

        def clear_flag(self, flag) -> None:
            self.flags &= ~(1 << int(flag))

        def get_flag(self, flag) -> bool:
            return bool(self.flags & (1 << int(flag)))

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.pools[pool] = size

        def create_timing_cache(self, serialized_timing_cache: bytes):
            data = bytes(serialized_timing_cache)
            if not data:
                return FakeTimingCache(version, gpu.device_key)
            return FakeTimingCache.parse(data)  # None: the bindings return None for bytes TensorRT cannot read

        def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
            if cache.trt_version != version or (cache.device != gpu.device_key and not ignore_mismatch):
                return False
            self.timing_cache = cache
            return True

    class Builder:
        def __init__(self, logger: Logger):
            require_gpu()

        def create_network(self, flags: int = 0) -> Network:
            return Network(int(flags))

        def create_builder_config(self) -> Config:
            gpu.configs.append(Config())
            return gpu.configs[-1]

        def build_serialized_network(self, network: Network, config: Config):
            if network.model is None:
                return None
            if network.strongly_typed and any(config.get_flag(flag) for flag in weak_flags):
                return None  # "precision flags are not allowed with strongly typed networks"
            # Timing: one cache entry per distinct layer (operator, attributes, weight shapes: not its name), timed
            # only when the cache lacks it.
            shapes = {init.name: list(init.dims) for init in network.model.graph.initializer}
            for node in network.model.graph.node:
                if node.op_type in ("Conv", "Gemm"):
                    signature = [node.op_type, [str(a) for a in node.attribute], [shapes.get(i) for i in node.input]]
                    key = hashlib.sha1(repr(signature).encode()).hexdigest()[:16]
                    if config.timing_cache is not None and key not in config.timing_cache.entries:
                        config.timing_cache.entries[key] = f"tactic-{len(config.timing_cache.entries)}"
                        gpu.tactics_timed += 1
            if gpu.during_build is not None:
                hook, gpu.during_build = gpu.during_build, None
                hook()
            if gpu.build_fails:  # what an unbuildable network (or an out-of-memory build) gives
                return None
            return gpu.plan_for(network.model, tf32=config.get_flag(trt.BuilderFlag.TF32))

    class ExecutionContext:
        def __init__(self, engine: "Engine"):
            self.engine = engine
            self.addresses: dict[str, int] = {}

        def get_tensor_shape(self, name: str) -> tuple:
            return tuple(self.engine.tensors[name]["shape"])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if not isinstance(memory, int) or name not in self.engine.tensors:
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int):  # pybind11 takes the handle as size_t
                raise TypeError("execute_async_v3(): incompatible function arguments")
            cudart = gpu.cudart
            stream = cudart.streams.get(stream_handle)
            if stream is None or set(self.addresses) != set(self.engine.tensors):
                return False
            gpu.enqueues += 1
            if stream.capturing:
                if not self.engine.capturable:
                    # Either an operation capture does not permit invalidated the capture, or TensorRT noticed and
                    # refused before issuing it (the capture then ends with a graph that must not be used).
                    if not gpu.capture_failure_reported:
                        cudart._invalidate_captures()
                    return False
                stream.captured_ms += self.engine.kernel_ms
                return True
            stream.clock_ms += self.engine.kernel_ms + LAUNCH_GAP_MS
            return True

    class Engine:
        def __init__(self, description: dict):
            self.tensors = {tensor["name"]: tensor for tensor in description["io"]}
            self.names = [tensor["name"] for tensor in description["io"]]
            self.kernel_ms, self.capturable = description["kernel_ms"], description["capturable"]

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_shape(self, name: str) -> tuple:
            return tuple(self.tensors[name]["shape"])

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType(self.tensors[name]["dtype"])

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode(self.tensors[name]["mode"])

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger: Logger):
            require_gpu()

        def deserialize_cuda_engine(self, serialized_engine: bytes):
            data = bytes(serialized_engine)
            if not data.startswith(_PLAN_MAGIC):
                return None
            description = json.loads(data[len(_PLAN_MAGIC):])
            if description["trt"] != version or description["device"] != gpu.device_key:
                return None  # "engine plan file is not compatible with this version / device"
            return Engine(description)

    trt.nptype, trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = nptype, Logger, OnnxParser, Builder, Runtime
    return trt


@dataclass
class FakeGpu:
    """One simulated machine. `driver`: "ok", "dlopen-fails" (cuda-python 12.6 without libcuda), "insufficient"
    or "no-device". `capturable`: whether built engines survive CUDA graph capture; when they do not, the failed
    enqueue invalidates the capture, or with `capture_failure_reported` only returns False."""

    trt_version: str = TRT_10
    driver: str = "ok"
    props: DeviceProps = field(default_factory=DeviceProps)
    kernel_ms: float = 0.02
    capturable: bool = True
    capture_failure_reported: bool = False
    local_runtime: int | str | None = 12060
    fail_malloc_after: int | None = None
    build_fails: bool = False
    during_build: object = None  # a callable run once inside the next build (to interleave concurrent builds)
    parsed: list = field(default_factory=list)
    configs: list = field(default_factory=list)
    tactics_timed: int = 0
    enqueues: int = 0
    graph_launches: int = 0

    def __post_init__(self):
        self.cudart = FakeCudart(self)
        self.tensorrt = make_tensorrt(self, self.trt_version)

    @property
    def device_key(self) -> str:
        return f"{self.props.name.decode()}-sm{self.props.major}{self.props.minor}"

    def plan_for(self, model: onnx.ModelProto, tf32: bool) -> bytes:
        initializers = {init.name for init in model.graph.initializer}
        io = []
        for value, mode in [(v, TensorIOMode.INPUT) for v in model.graph.input if v.name not in initializers] + \
                           [(v, TensorIOMode.OUTPUT) for v in model.graph.output]:
            tensor = value.type.tensor_type
            io.append({"name": value.name, "shape": [d.dim_value for d in tensor.shape.dim],
                       "dtype": int(_ONNX_TYPES[tensor.elem_type]), "mode": int(mode)})
        description = {"trt": self.trt_version, "device": self.device_key, "io": io, "kernel_ms": self.kernel_ms,
                       "capturable": self.capturable, "tf32": tf32}
        return _PLAN_MAGIC + json.dumps(description).encode()

    def built_onnx(self, index: int = -1) -> onnx.ModelProto:
        return onnx.load_from_string(self.parsed[index])

    def modules(self) -> dict:
        """sys.modules entries that make `import tensorrt` and `from cuda.bindings import runtime` find the fakes."""
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = self.cudart
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings
        return {"tensorrt": self.tensorrt, "cuda": cuda, "cuda.bindings": bindings,
                "cuda.bindings.runtime": self.cudart}

    def install(self, monkeypatch) -> "FakeGpu":
        for name, module in self.modules().items():
            monkeypatch.setitem(sys.modules, name, module)
        return self


# ------------------------------------------------------------------------------------------- Jetson file trees

L4T_R36 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024"
NVPMODEL_CONF_ORIN_NANO = """< PM_CONFIG DEFAULT=2 >
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=25W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=2 NAME=MAXN_SUPER >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=3 NAME=7W >
CPU_ONLINE CORE_0 1
"""


def jetson_tree(base, *, model: str | None = None, soc_machine: str | None = None, soc_id: str = "35",
                l4t: str | None = L4T_R36, pmode: str | None = "0002", container: bool = False):
    """A fake root with the files a Jetson (or, with everything None, any other machine) has. `model` goes to
    /proc/device-tree/model, unless `container`: Docker masks it there, and only /sys/devices/soc0 remains."""
    root = base / "root"

    def write(relative: str, text: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    root.mkdir(parents=True, exist_ok=True)
    if model is not None and not container:
        write("proc/device-tree/model", model)
    if soc_machine is not None:
        write("sys/devices/soc0/machine", soc_machine)
        write("sys/devices/soc0/family", "Tegra\n")
        write("sys/devices/soc0/soc_id", soc_id + "\n")
    if l4t is not None:
        write("etc/nv_tegra_release", l4t + "\n")
    if pmode is not None:
        write("var/lib/nvpmodel/status", f"pmode:{pmode} fmode:quiet\n")
        write("etc/nvpmodel.conf", NVPMODEL_CONF_ORIN_NANO)
    return root
