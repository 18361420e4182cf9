"""ONNX Runtime backends (deploy.md 1.1-1.3): explicit intra-op threads, one inter-op thread, sequential
execution, the profile's graph optimisation level, spin-waiting, IOBinding with preallocated inputs and outputs (no
per-run conversion or allocation), warm-up, and `time.perf_counter_ns` around `run_with_iobinding`.

`onnxruntime` runs on the CPU (fp32). `onnxruntime-cuda` runs on ONNX Runtime's CUDA execution provider (the
onnxruntime-gpu package) with inputs and outputs bound on the GPU; a run returns once the GPU has finished
(execution providers are synchronised at the end of every run), so a sample is the latency a program using this
runtime sees, launch overhead included. fp32 profiles switch TF32 off (`use_tf32`), fp16 profiles time fp16 models.
A missing provider or a provider that cannot start (no GPU, no CUDA/cuDNN libraries) is a one-line error, never a
silent fall back to the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.hardware.backends.base import register_backend
from hwbcnet.hardware.profiles import Profile, TimingPolicy
from hwbcnet.hardware.timing import TimingStats, measure_stable

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nchwc_block_size() -> int:
    """The channel block of ONNX Runtime's NCHWc convolution kernels on this CPU (MLAS: 16 with AVX-512F, 8 with
    AVX/AVX2, none elsewhere). Convolutions whose channel counts are not multiples of it fall off that path:
    measured here (benchmarks/channel_divisor.py) a depthwise conv with 1 channel fewer than a multiple of 16 runs
    3.5-20x slower. It is the `auto` channel divisor of the CPU profiles."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "avx" in flags or (not flags and platform.machine().lower() in ("x86_64", "amd64")):
        return 8
    return 1


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_clock_state() -> dict:
    """Frequency governor and current frequency of cpu0 (when the kernel exposes them) and the load average:
    a LUT measured under a powersave governor or a busy machine is worth knowing about."""
    base = "/sys/devices/system/cpu/cpu0/cpufreq/"
    freq = _read(base + "scaling_cur_freq")
    return {
        "governor": _read(base + "scaling_governor") or "unknown",
        "cur_freq_mhz": int(freq) / 1000 if freq and freq.isdigit() else None,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _static_shape(shape, batch: int) -> list[int]:
    """A model input's shape with any symbolic dimension (an exported batch axis) set to the profile's batch."""
    return [dim if isinstance(dim, int) and dim > 0 else batch for dim in shape]


class OnnxRuntimeBackend:
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"
    shared_input_branches = True
    device = "cpu"  # where IOBinding keeps inputs and outputs

    def __init__(self, ort=None):
        if ort is None:
            import onnxruntime as ort
        self.ort = ort

    def session_options(self, profile: Profile):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = profile.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[profile.optimization_level]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if profile.allow_spinning else "0")
        return options

    def providers(self, profile: Profile) -> list:
        if profile.precision != "fp32":
            raise HwbcnetError(f"device {profile.name}: the onnxruntime CPU backend measures fp32 only, "
                               f"not {profile.precision}; set precision = \"fp32\" in the profile")
        return ["CPUExecutionProvider"]

    def session(self, onnx_bytes: bytes, profile: Profile):
        """An inference session on this backend's execution provider (and only there)."""
        providers = self.providers(profile)
        try:
            session = self.ort.InferenceSession(onnx_bytes, self.session_options(profile), providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise HwbcnetError(f"onnxruntime could not load the model: {exc}") from None
        return session

    def environment(self, profile: Profile) -> dict:
        return {
            "backend": self.name,
            "device": cpu_name(),
            "profile": profile.name,
            "logical_cpus": os.cpu_count(),
            "runtime_versions": {"onnxruntime": self.ort.__version__, "numpy": np.__version__,
                                 "python": platform.python_version()},
            "platform": platform.platform(),
            "precision": profile.precision,
            "threads": profile.threads,
            "optimization_level": profile.optimization_level,
            "clock_state": cpu_clock_state(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def measure(self, onnx_bytes: bytes, profile: Profile, policy: TimingPolicy | None = None) -> TimingStats:
        ort = self.ort
        session = self.session(onnx_bytes, profile)
        binding = session.io_binding()
        rng = np.random.default_rng(0)
        for tensor in session.get_inputs():
            dtype = _NUMPY_TYPES.get(tensor.type)
            if dtype is None:
                raise HwbcnetError(f"model input {tensor.name} has type {tensor.type}; only float inputs are timed")
            data = rng.standard_normal(_static_shape(tensor.shape, profile.batch)).astype(dtype)
            binding.bind_ortvalue_input(tensor.name, ort.OrtValue.ortvalue_from_numpy(data, self.device, 0))
        for tensor in session.get_outputs():
            binding.bind_output(tensor.name, self.device, 0)
        run_options = ort.RunOptions()
        # A run returns only once the execution provider has finished (ONNX Runtime's default, made explicit).
        run_options.add_run_config_entry("disable_synchronize_execution_providers", "0")
        session.run_with_iobinding(binding, run_options)  # plans memory and sizes the outputs; never timed
        # Rebind the outputs it allocated, so later runs write into the same buffers instead of allocating.
        for tensor, value in zip(session.get_outputs(), binding.get_outputs()):
            binding.bind_ortvalue_output(tensor.name, value)

        def timed_run() -> float:
            start = time.perf_counter_ns()
            session.run_with_iobinding(binding, run_options)
            return (time.perf_counter_ns() - start) / 1e6

        stats, _ = measure_stable(timed_run, policy or profile.model_timing)
        return stats


CUDA_PROVIDER = "CUDAExecutionProvider"
ORT_GPU_HINT = ("`pip uninstall -y onnxruntime && pip install onnxruntime-gpu` (CUDA 12 with cuDNN 9; CUDA and cuDNN "
                "also come from a CUDA build of torch), or NVIDIA's JetPack onnxruntime-gpu wheel on a Jetson")


def cuda_provider_options(profile: Profile) -> dict:
    """CUDA execution provider options for a profile: GPU 0, exhaustive cuDNN algorithm search (once per session,
    as deployed), copies on the compute stream, and TF32 off for fp32 (ONNX Runtime enables it by default on
    Ampere and later, so an fp32 LUT would otherwise time TF32 arithmetic)."""
    return {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1",
            "use_tf32": "1" if profile.precision != "fp32" else "0"}


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    """ONNX Runtime's CUDA execution provider: a GPU LUT (fp32 or fp16) on a CUDA machine without TensorRT."""

    name = "onnxruntime-cuda"
    device = "cuda"

    def __init__(self, ort=None):
        super().__init__(ort)
        available = self.ort.get_available_providers()
        if CUDA_PROVIDER not in available:
            raise MissingRuntimeError(f"this onnxruntime {self.ort.__version__} has no CUDA execution provider "
                                      f"(it has {', '.join(available)}): {ORT_GPU_HINT}")
        if hasattr(self.ort, "preload_dlls"):
            # onnxruntime-gpu >= 1.21 loads CUDA and cuDNN from pip packages (a CUDA torch brings them); it prints
            # what it cannot find, which belongs on stderr (stdout may carry --json output).
            with contextlib.redirect_stdout(sys.stderr):
                self.ort.preload_dlls()

    def providers(self, profile: Profile) -> list:
        return [(CUDA_PROVIDER, cuda_provider_options(profile))]

    def session(self, onnx_bytes: bytes, profile: Profile):
        session = super().session(onnx_bytes, profile)
        # ONNX Runtime falls back to the CPU, with a log line only, when the CUDA provider cannot start.
        if session.get_providers()[:1] != [CUDA_PROVIDER]:
            raise MissingRuntimeError("ONNX Runtime could not start its CUDA execution provider (no NVIDIA GPU or "
                                      "driver, or the CUDA 12 / cuDNN 9 libraries are missing): check nvidia-smi, "
                                      f"then {ORT_GPU_HINT}")
        return session

    def environment(self, profile: Profile) -> dict:
        from hwbcnet.hardware.nvidia import gpu_clock_state, gpu_provenance, jetson_state

        jetson = jetson_state()
        dgpu = gpu_clock_state() if jetson is None else {}
        return {
            "backend": self.name,
            "device": (jetson or {}).get("module") or dgpu.get("name") or "CUDA GPU (nvidia-smi unavailable)",
            "profile": profile.name,
            "requested_device": profile.resolved_from,
            "runtime_versions": {"onnxruntime": self.ort.__version__, "cuda_driver": dgpu.get("driver_version"),
                                 "numpy": np.__version__, "python": platform.python_version()},
            "precision": profile.precision,
            "threads": profile.threads,
            "optimization_level": profile.optimization_level,
            "provider_options": cuda_provider_options(profile),
            **gpu_provenance(profile),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }


register_backend("onnxruntime", OnnxRuntimeBackend)
register_backend("onnxruntime-cuda", OnnxRuntimeCudaBackend)
