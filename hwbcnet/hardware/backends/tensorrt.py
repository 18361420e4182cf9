"""TensorRT backend (deploy.md sections 2 and 3), written to the TensorRT 10.3 Python API (JetPack 6) with feature
detection for 11.x, and to cuda-python's runtime bindings 12.6 to 13.x (`cuda.bindings.runtime`: every call returns
a tuple (error, *values)).

Build: a strongly typed network parsed from ONNX that is already in the target precision (fp16 inputs, outputs and
weights for an fp16 profile), so TensorRT 10 and 11 share one path (10.x takes the STRONGLY_TYPED creation flag,
11.x types every network strongly). TF32 is switched off: it is on by default for fp32 tensors on Ampere and later
(Orin included), which would make an "fp32" engine compute in TF32. One timing cache file per device and TensorRT
version is shared by every build; like trtexec, a build re-reads the file under a lock and combines its own
entries into it before saving, so concurrent builds add to the cache instead of overwriting each other.
Run: device-resident inputs and outputs (no host copies), CUDA events around `execute_async_v3` on a private stream,
or around `cudaGraphLaunch` of a captured `execute_async_v3` when the profile deploys with CUDA graphs; a sample
holds several back-to-back launches when one is shorter than the profile's `min_sample_ms` (event resolution). An
engine whose enqueue cannot be captured is timed with plain enqueues, as trtexec falls back.

`tensorrt` and `cuda-python` are imported only when this backend is used; without them, or without a driver or
GPU, the user gets a one-line MissingRuntimeError that says what to install.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.fileio import atomic_write_bytes
from hwbcnet.hardware.backends.base import register_backend
from hwbcnet.hardware.nvidia import gpu_provenance
from hwbcnet.hardware.profiles import Profile, TimingPolicy
from hwbcnet.hardware.timing import TimingStats, measure_stable

# `pip install tensorrt` resolves to the CUDA 13 wheels; CUDA 12 machines need the -cu12 ones and a 12.x cuda-python.
CUDA_PYTHON_HINT = "`pip install 'cuda-python>=12.6,<13'` (CUDA 12; 'cuda-python>=13,<14' with CUDA 13)"
INSTALL_HINT = ("on x86-64 with CUDA 12: `pip install tensorrt-cu12 'cuda-python>=12.6,<13'` (CUDA 13: tensorrt-cu13 "
                "and 'cuda-python>=13,<14'); on a Jetson with JetPack 6: `sudo apt install python3-libnvinfer` and a "
                "venv created with --system-site-packages")
NO_DRIVER_HINT = "check the NVIDIA driver (nvidia-smi), or run the container with --runtime nvidia on a Jetson"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise MissingRuntimeError(f"TensorRT is not installed ({INSTALL_HINT})") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:  # cuda-python < 12.6 exposes the runtime API here
            from cuda import cudart
        except ImportError:
            raise MissingRuntimeError(f"cuda-python is not installed ({CUDA_PYTHON_HINT})") from None
    return cudart


def tensorrt_major(trt) -> int:
    match = re.match(r"(\d+)", str(getattr(trt, "__version__", "")))
    if not match:
        raise HwbcnetError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}")
    major = int(match.group(1))
    if major < 10:
        raise HwbcnetError(f"TensorRT {trt.__version__} is too old: hwbcnet needs TensorRT >= 10 (JetPack 6 ships "
                           "10.3; Jetsons that stop at JetPack 5 or older, Xavier included, are not supported)")
    return major


def network_flags(trt) -> int:
    """Network creation flags: STRONGLY_TYPED, whose value the bindings give (1 in 10.x, next to the deprecated
    EXPLICIT_BATCH = 0; 0 in 11.x, where every network is strongly typed and the flag is a deprecated no-op)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _error_name(error) -> str:
    return getattr(error, "name", str(error))


def check_cuda(cudart, result):
    """cuda-python calls return (error, *values); raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise HwbcnetError(f"CUDA call failed: {_error_name(error)}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


def cuda_device_count(cudart) -> int:
    """The number of visible CUDA GPUs; MissingRuntimeError when there is none or no usable driver."""
    try:
        error, count = cudart.cudaGetDeviceCount()
    except (RuntimeError, OSError) as exc:
        # cuda-python 12.6 raises instead of returning an error when it cannot dlopen libcuda.so.1 (no driver).
        raise MissingRuntimeError(f"the NVIDIA driver could not be loaded ({exc}); {NO_DRIVER_HINT}") from None
    if error != cudart.cudaError_t.cudaSuccess:
        raise MissingRuntimeError(f"CUDA found no usable GPU ({_error_name(error)}); {NO_DRIVER_HINT}")
    if count < 1:
        raise MissingRuntimeError(f"no CUDA GPU is visible; {NO_DRIVER_HINT}")
    return int(count)


def gpu_available() -> bool:
    """Whether TensorRT, cuda-python, a driver and a GPU are all there (the GPU tests' skip condition)."""
    try:
        tensorrt_major(import_tensorrt())
        cuda_device_count(import_cudart())
    except HwbcnetError:
        return False
    return True


def gpu_properties(cudart) -> dict:
    """Name, compute capability and PCI bus id of GPU 0; MissingRuntimeError when no GPU is visible."""
    cuda_device_count(cudart)
    props = check_cuda(cudart, cudart.cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    pci = (f"{int(props.pciDomainID):08X}:{int(props.pciBusID):02X}:{int(props.pciDeviceID):02X}.0"
           if hasattr(props, "pciBusID") else None)
    return {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}", "pci_bus_id": pci}


def _version_text(version: int) -> str:
    """CUDA's 1000 * major + 10 * minor encoding as "major.minor"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def cuda_versions(cudart) -> dict:
    """The CUDA runtime library installed here (getLocalRuntimeVersion loads libcudart; cudaRuntimeGetVersion only
    reports the CUDA version cuda-python itself was built for), the driver's CUDA version and cuda-python's."""
    versions = {"cuda_driver": _version_text(check_cuda(cudart, cudart.cudaDriverGetVersion())),
                "cuda_python": _package_version("cuda-python", "cuda-bindings"),
                "cuda_python_built_for": _version_text(check_cuda(cudart, cudart.cudaRuntimeGetVersion()))}
    try:
        versions["cuda_runtime"] = _version_text(check_cuda(cudart, cudart.getLocalRuntimeVersion()))
    except (AttributeError, RuntimeError, OSError, HwbcnetError):
        versions["cuda_runtime"] = None  # no libcudart to load (TensorRT links its own), or cuda-python < 12.3
    return versions


# ----------------------------------------------------------------------------------------------------- build


def timing_cache_path(folder: str | Path, trt) -> Path:
    """The shared timing cache of one device, one file per TensorRT version (caches are version-specific)."""
    return Path(folder) / f"timing-trt{trt.__version__}.cache"


def _cache_lock(path: Path):
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=600)


def _attach_timing_cache(config, path: Path | None):
    """The timing cache a build starts from (the file's, when it can be used), attached to `config`."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None:  # TensorRT could not read the file (truncated or otherwise corrupt)
        warnings.warn(f"{path}: unreadable TensorRT timing cache; building with a new one, which replaces it",
                      RuntimeWarning, stacklevel=3)
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise HwbcnetError(f"{path}: this timing cache was written on another GPU (TensorRT refused its device "
                           "header); move it away, or pass another --timing-cache")
    return cache


def _save_timing_cache(config, cache, path: Path) -> None:
    """Combine the build's cache into the file's current contents (another build may have saved since this one
    started), as trtexec does under its file lock."""
    with _cache_lock(path):
        merged = cache
        if path.is_file():
            on_disk = config.create_timing_cache(path.read_bytes())
            if on_disk is not None and on_disk.combine(cache, ignore_mismatch=False):
                merged = on_disk
        atomic_write_bytes(path, bytes(memoryview(merged.serialize())))


def build_engine(onnx_bytes: bytes, timing_cache: str | Path | None = None, *, workspace_mb: int = 1024,
                 sequential: bool = False, trt=None) -> bytes:
    """Build a serialized engine (plan bytes) from ONNX in its final precision (strongly typed: the ONNX types are
    the engine's). `timing_cache`: a file read before and combined into after the build. `sequential`: no auxiliary
    streams, so parallel branches run one after another (LUT cells count their copies that way)."""
    trt = trt or import_tensorrt()
    tensorrt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # pybind11: "factory function returned nullptr" when CUDA cannot initialise
        raise MissingRuntimeError("TensorRT found no usable GPU (no NVIDIA driver or device); run on the target "
                                  "GPU/Jetson, or profile a CPU device such as --device cpu") from None
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HwbcnetError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 tensors stay fp32 (int8 engines keep their float layers fp32)
    if sequential and hasattr(config, "max_aux_streams"):
        config.max_aux_streams = 0
    cache_path = Path(timing_cache) if timing_cache else None
    cache = _attach_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise HwbcnetError("TensorRT could not build an engine for the model (see the TensorRT log above)")
    if cache_path:
        _save_timing_cache(config, cache, cache_path)
    return bytes(memoryview(plan))


# --------------------------------------------------------------------------------------------------- backend


class TensorRTBackend:
    name = "tensorrt"
    # TensorRT merges parallel convolutions that read one tensor, so each branch of a cell model gets its own input.
    shared_input_branches = False

    def __init__(self, timing_cache_dir: str | Path = "lut"):
        self.trt = import_tensorrt()
        tensorrt_major(self.trt)
        self.cudart = import_cudart()
        cuda_device_count(self.cudart)
        self.timing_cache_dir = Path(timing_cache_dir)

    def environment(self, profile: Profile) -> dict:
        gpu = gpu_properties(self.cudart)
        return {
            "backend": self.name,
            "device": gpu["name"],
            "profile": profile.name,
            "requested_device": profile.resolved_from,
            "compute_capability": gpu["compute_capability"],
            "runtime_versions": {"tensorrt": self.trt.__version__, **cuda_versions(self.cudart),
                                 "python": platform.python_version()},
            "precision": profile.precision,
            "threads": profile.threads,
            "cuda_graphs": profile.cuda_graphs,
            **gpu_provenance(profile, gpu["pci_bus_id"]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def measure(self, onnx_bytes: bytes, profile: Profile, policy: TimingPolicy | None = None) -> TimingStats:
        cache = timing_cache_path(self.timing_cache_dir / profile.name, self.trt)
        plan = build_engine(onnx_bytes, cache, workspace_mb=profile.workspace_mb, sequential=True, trt=self.trt)
        return self.measure_plan(plan, profile, policy)

    def measure_plan(self, plan: bytes, profile: Profile, policy: TimingPolicy | None = None) -> TimingStats:
        """Time a serialized engine (one built here, or an engine file) with the profile's settings."""
        with _Execution(self.trt, self.cudart, plan, profile.cuda_graphs) as run:
            per_launch = run.launch_ms(10)
            run.launches_per_sample = max(1, math.ceil(profile.min_sample_ms / max(per_launch, 1e-6)))
            stats, _ = measure_stable(run.sample, policy or profile.model_timing)
        return stats


class _Execution:
    """One deserialized engine with device-resident I/O, a stream, two events and optionally a CUDA graph. Whatever
    the constructor allocated is released when it fails part way, and by `close` (the context manager's exit)."""

    def __init__(self, trt, cudart, plan: bytes, cuda_graphs: bool):
        self.trt, self.cudart = trt, cudart
        self.buffers: list = []
        self.engine = self.context = None
        self.stream = self.start = self.end = self.graph_exec = None
        self.launches_per_sample = 1
        try:
            self._setup(plan, cuda_graphs)
        except BaseException:
            self.close()
            raise

    def _setup(self, plan: bytes, cuda_graphs: bool) -> None:
        trt, cudart = self.trt, self.cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise HwbcnetError("TensorRT could not deserialize the engine (built by another TensorRT version or for "
                               "another GPU?); rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        self.stream = check_cuda(cudart, cudart.cudaStreamCreate())
        self.start = check_cuda(cudart, cudart.cudaEventCreate())
        self.end = check_cuda(cudart, cudart.cudaEventCreate())
        rng = np.random.default_rng(0)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            pointer = check_cuda(cudart, cudart.cudaMalloc(nbytes))
            self.buffers.append(pointer)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                host = np.ascontiguousarray(rng.standard_normal(shape).astype(dtype))
                check_cuda(cudart, cudart.cudaMemcpy(pointer, host.ctypes.data, nbytes,
                                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            if not self.context.set_tensor_address(name, int(pointer)):
                raise HwbcnetError(f"TensorRT refused the device address of tensor {name!r}")
        self._enqueue()  # TensorRT wants one enqueue before graph capture; it is also the untimed first run
        check_cuda(cudart, cudart.cudaStreamSynchronize(self.stream))
        if cuda_graphs and not self._capture_graph():
            warnings.warn("the engine holds operations that CUDA graph capture does not permit; it is timed with "
                          "plain execute_async_v3 calls instead of graph launches (as trtexec falls back)",
                          RuntimeWarning, stacklevel=4)

    def _capture_graph(self) -> bool:
        """Capture one enqueue into an executable graph; False (the stream out of capture mode, its error cleared,
        nothing leaked) when TensorRT's enqueue fails under capture."""
        cudart = self.cudart
        success = cudart.cudaError_t.cudaSuccess
        check_cuda(cudart, cudart.cudaStreamBeginCapture(
            self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        enqueued = False
        try:
            enqueued = bool(self.context.execute_async_v3(int(self.stream)))
        finally:  # the capture must end whatever happened, or the stream stays unusable
            error, graph = cudart.cudaStreamEndCapture(self.stream)
            captured = error == success  # else the capture was invalidated and no graph came back
            if captured and not enqueued:  # TensorRT reported the failure itself: the graph must not be used
                cudart.cudaGraphDestroy(graph)
        if enqueued and captured:
            try:
                self.graph_exec = check_cuda(cudart, cudart.cudaGraphInstantiate(graph, 0))
            finally:
                cudart.cudaGraphDestroy(graph)  # the executable graph does not need it
            return True
        cudart.cudaGetLastError()  # clear the error the failed capture left, as trtexec does
        return False

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise HwbcnetError("TensorRT execute_async_v3 failed")

    def _launch(self) -> None:
        if self.graph_exec is not None:
            check_cuda(self.cudart, self.cudart.cudaGraphLaunch(self.graph_exec, self.stream))
        else:
            self._enqueue()

    def launch_ms(self, launches: int) -> float:
        """Mean GPU time of `launches` back-to-back launches, from CUDA events."""
        cudart = self.cudart
        check_cuda(cudart, cudart.cudaEventRecord(self.start, self.stream))
        for _ in range(launches):
            self._launch()
        check_cuda(cudart, cudart.cudaEventRecord(self.end, self.stream))
        check_cuda(cudart, cudart.cudaEventSynchronize(self.end))
        return float(check_cuda(cudart, cudart.cudaEventElapsedTime(self.start, self.end))) / launches

    def sample(self) -> float:
        return self.launch_ms(self.launches_per_sample)

    def close(self) -> None:
        """Release everything allocated so far (error codes are ignored: this also runs while an error unwinds)."""
        cudart = self.cudart
        if self.stream is not None:
            cudart.cudaStreamSynchronize(self.stream)
        if self.graph_exec is not None:
            cudart.cudaGraphExecDestroy(self.graph_exec)
        for pointer in self.buffers:
            cudart.cudaFree(pointer)
        for event in (self.start, self.end):
            if event is not None:
                cudart.cudaEventDestroy(event)
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.graph_exec = self.start = self.end = self.stream = self.context = self.engine = None
        self.buffers = []

    def __enter__(self) -> "_Execution":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


register_backend("tensorrt", TensorRTBackend)
