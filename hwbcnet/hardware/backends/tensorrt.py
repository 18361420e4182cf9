"""TensorRT backend (deploy.md sections 2 and 3), written to the TensorRT 10.3 Python API (JetPack 6) with feature
detection for 11.x.

Build: a strongly typed network parsed from ONNX that is already in the target precision (fp16 inputs, outputs and
weights for an fp16 profile), so TensorRT 10 and 11 share one path. Only a TensorRT without strong typing falls back
to a weakly typed network with the FP16 builder flag (the flag is gone in 11.x). One timing cache file per device
and TensorRT version is shared by every build, which saves re-timing identical layers.
Run: device-resident inputs and outputs (no host copies), CUDA events around `execute_async_v3` on a private stream,
or around `cudaGraphLaunch` of a captured `execute_async_v3` when the profile deploys with CUDA graphs; a sample
holds several back-to-back launches when one is shorter than the profile's `min_sample_ms` (event resolution).

`tensorrt` and `cuda-python` are imported only when this backend is used; without them, or without a GPU, the
user gets a one-line MissingRuntimeError that says what to install.
"""

from __future__ import annotations

import datetime
import math
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.fileio import atomic_write_bytes
from hwbcnet.hardware.backends.base import register_backend
from hwbcnet.hardware.profiles import Profile, TimingPolicy
from hwbcnet.hardware.timing import TimingStats, measure_stable

INSTALL_HINT = ("on x86-64 with CUDA 12: `pip install tensorrt cuda-python`; on a Jetson (JetPack 6): "
                "`sudo apt install python3-libnvinfer` and a venv created with --system-site-packages")


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
            raise MissingRuntimeError("cuda-python is not installed (`pip install 'cuda-python>=12,<13'`)") from None
    return cudart


def tensorrt_major(trt) -> int:
    match = re.match(r"(\d+)", str(getattr(trt, "__version__", "")))
    if not match:
        raise HwbcnetError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}")
    major = int(match.group(1))
    if major < 10:
        raise HwbcnetError(f"TensorRT {trt.__version__} is too old; hwbcnet needs TensorRT >= 10.3 (JetPack 6)")
    return major


def network_flags(trt) -> tuple[int, bool]:
    """(creation flags, strongly typed). 10.x has the STRONGLY_TYPED flag; 11.x accepts and ignores it because every
    network is strongly typed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        return 0, False
    return 1 << int(flag), True


def check_cuda(cudart, result):
    """cuda-python calls return (error, *values); raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise HwbcnetError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def timing_cache_path(folder: str | Path, trt) -> Path:
    """The shared timing cache of one device, one file per TensorRT version (caches are version-specific)."""
    return Path(folder) / f"timing-trt{trt.__version__}.cache"


def build_engine(onnx_bytes: bytes, precision: str, timing_cache: str | Path | None = None, *,
                 workspace_mb: int = 1024, sequential: bool = False, trt=None) -> bytes:
    """Build a serialized engine (plan bytes) from ONNX. `precision` is the precision the ONNX model is in; a
    strongly typed network keeps it, a weakly typed one (TensorRT without strong typing) gets the FP16 flag.
    `timing_cache`: a file read before and updated after the build. `sequential`: no auxiliary streams, so
    parallel branches run one after another (LUT cells count their copies that way)."""
    trt = trt or import_tensorrt()
    tensorrt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # pybind11: "factory function returned nullptr" when CUDA cannot initialise
        raise MissingRuntimeError("TensorRT found no usable GPU (no NVIDIA driver or device); run on the target "
                                  "GPU/Jetson, or profile a CPU device such as --device cpu") from None
    flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HwbcnetError(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if sequential and hasattr(config, "max_aux_streams"):
        config.max_aux_streams = 0
    if precision == "fp16" and not strongly_typed:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise HwbcnetError(f"TensorRT {trt.__version__} has neither strong typing nor the FP16 flag")
        config.set_flag(trt.BuilderFlag.FP16)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise HwbcnetError("TensorRT could not build an engine for the model (see the TensorRT log above)")
    if cache_path:
        atomic_write_bytes(cache_path, bytes(memoryview(cache.serialize())))
    return bytes(memoryview(plan))


# ------------------------------------------------------------------------------------------------- provenance


def parse_nvpmodel(text: str) -> str | None:
    """The power mode name from `nvpmodel -q` output ("NV Power Mode: MAXN")."""
    match = re.search(r"NV Power Mode:\s*(\S+)", text)
    return match.group(1) if match else None


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip("\x00 \n")
    except OSError:
        return None


def jetson_state(root: Path = Path("/")) -> dict | None:
    """Module, L4T release, power mode and GPU clock range of a Jetson; None elsewhere. jetson_clocks pins the GPU's
    devfreq minimum to its maximum, so min == max means the clocks are locked."""
    model = _read(root / "proc/device-tree/model")
    if not model or "jetson" not in model.lower():
        return None
    state = {"module": model, "l4t": _read(root / "etc/nv_tegra_release"),
             "power_mode": parse_nvpmodel(_run(["nvpmodel", "-q"]) or "")}
    for devfreq in sorted((root / "sys/class/devfreq").glob("*gpu*")):
        low, high, cur = (_read(devfreq / name) for name in ("min_freq", "max_freq", "cur_freq"))
        if low and high:
            state.update(gpu_min_freq=int(low), gpu_max_freq=int(high), gpu_cur_freq=int(cur) if cur else None,
                         clocks_locked=low == high)
            break
    return state


def gpu_clock_state() -> dict:
    """dGPU clocks from nvidia-smi (current vs maximum SM clock and active throttle reasons), when available."""
    out = _run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,clocks_throttle_reasons.active",
                "--format=csv,noheader,nounits"])
    if not out:
        return {"source": "unavailable"}
    sm, max_sm, throttle = (part.strip() for part in out.splitlines()[0].split(","))
    return {"source": "nvidia-smi", "sm_clock_mhz": sm, "max_sm_clock_mhz": max_sm, "throttle_reasons": throttle}


def clock_warnings(profile: Profile, jetson: dict | None) -> list[str]:
    """Differences between the state a profile expects (power mode, locked clocks) and what was found."""
    warnings = []
    if profile.power_mode or profile.locked_clocks:
        if jetson is None:
            return [f"profile {profile.name} expects a Jetson but this machine is not one"]
        if profile.power_mode and jetson.get("power_mode") != profile.power_mode:
            warnings.append(f"power mode is {jetson.get('power_mode')}, profile expects {profile.power_mode} "
                            "(sudo nvpmodel -m <id>)")
        if profile.locked_clocks and not jetson.get("clocks_locked"):
            warnings.append("GPU clocks are not locked (sudo jetson_clocks)")
    return warnings


# --------------------------------------------------------------------------------------------------- backend


class TensorRTBackend:
    name = "tensorrt"
    # TensorRT merges parallel convolutions that read one tensor, so each branch of a cell model gets its own input.
    shared_input_branches = False

    def __init__(self, timing_cache_dir: str | Path = "lut"):
        self.trt = import_tensorrt()
        tensorrt_major(self.trt)
        self.cudart = import_cudart()
        count = self.cudart.cudaGetDeviceCount()
        if count[0] != self.cudart.cudaError_t.cudaSuccess or count[1] < 1:
            raise MissingRuntimeError("no CUDA GPU is visible (check the NVIDIA driver, or run the container with "
                                      "--runtime nvidia on a Jetson)")
        self.timing_cache_dir = Path(timing_cache_dir)

    def environment(self, profile: Profile) -> dict:
        cudart = self.cudart
        props = check_cuda(cudart, cudart.cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace").strip("\x00 ") if isinstance(props.name, bytes) else str(props.name)
        jetson = jetson_state()
        return {
            "backend": self.name,
            "device": name,
            "compute_capability": f"{props.major}.{props.minor}",
            "runtime_versions": {
                "tensorrt": self.trt.__version__,
                "cuda_runtime": check_cuda(cudart, cudart.cudaRuntimeGetVersion()),
                "cuda_driver": check_cuda(cudart, cudart.cudaDriverGetVersion()),
                "python": platform.python_version(),
            },
            "precision": profile.precision,
            "threads": profile.threads,
            "cuda_graphs": profile.cuda_graphs,
            "clock_state": jetson if jetson is not None else gpu_clock_state(),
            "clock_warnings": clock_warnings(profile, jetson),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def measure(self, onnx_bytes: bytes, profile: Profile, policy: TimingPolicy | None = None) -> TimingStats:
        cache = timing_cache_path(self.timing_cache_dir / profile.name, self.trt)
        plan = build_engine(onnx_bytes, profile.precision, cache, workspace_mb=profile.workspace_mb,
                            sequential=True, trt=self.trt)
        with _Execution(self.trt, self.cudart, plan, profile.cuda_graphs) as run:
            per_launch = run.launch_ms(10)
            run.launches_per_sample = max(1, math.ceil(profile.min_sample_ms / max(per_launch, 1e-6)))
            stats, _ = measure_stable(run.sample, policy or profile.model_timing)
        return stats


class _Execution:
    """One deserialized engine with device-resident I/O, a stream, two events and optionally a CUDA graph."""

    def __init__(self, trt, cudart, plan: bytes, cuda_graphs: bool):
        self.trt, self.cudart = trt, cudart
        self.buffers: list = []
        self.graph = self.graph_exec = None
        self.launches_per_sample = 1
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise HwbcnetError("TensorRT could not deserialize the engine it just built")
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
            self.context.set_tensor_address(name, int(pointer))
        self._enqueue()  # TensorRT wants one enqueue before graph capture; it is also the untimed first run
        check_cuda(cudart, cudart.cudaStreamSynchronize(self.stream))
        if cuda_graphs:
            check_cuda(cudart, cudart.cudaStreamBeginCapture(
                self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            self._enqueue()
            self.graph = check_cuda(cudart, cudart.cudaStreamEndCapture(self.stream))
            self.graph_exec = check_cuda(cudart, cudart.cudaGraphInstantiate(self.graph, 0))

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
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

    def __enter__(self) -> "_Execution":
        return self

    def __exit__(self, *exc) -> None:
        cudart = self.cudart
        if self.graph_exec is not None:
            cudart.cudaGraphExecDestroy(self.graph_exec)
            cudart.cudaGraphDestroy(self.graph)
        for pointer in self.buffers:
            cudart.cudaFree(pointer)
        cudart.cudaEventDestroy(self.start)
        cudart.cudaEventDestroy(self.end)
        cudart.cudaStreamDestroy(self.stream)


register_backend("tensorrt", TensorRTBackend)
