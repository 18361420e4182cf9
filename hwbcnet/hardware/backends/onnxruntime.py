"""ONNX Runtime CPU backend (deploy.md 1.1-1.3): explicit intra-op threads, one inter-op thread, sequential
execution, the profile's graph optimisation level, spin-waiting, IOBinding with preallocated inputs and outputs (no
per-run conversion or allocation), warm-up, and `time.perf_counter_ns` around `run_with_iobinding`."""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError
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
    name = "onnxruntime"
    shared_input_branches = True

    def __init__(self):
        import onnxruntime

        self.ort = onnxruntime

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

    def environment(self, profile: Profile) -> dict:
        return {
            "backend": self.name,
            "device": cpu_name(),
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
        if profile.precision != "fp32":
            raise HwbcnetError(f"device {profile.name}: the onnxruntime CPU backend measures fp32 only, "
                               f"not {profile.precision}; set precision = \"fp32\" in the profile")
        ort = self.ort
        try:
            session = ort.InferenceSession(onnx_bytes, self.session_options(profile), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise HwbcnetError(f"onnxruntime could not load the model: {exc}") from None
        binding = session.io_binding()
        rng = np.random.default_rng(0)
        for tensor in session.get_inputs():
            dtype = _NUMPY_TYPES.get(tensor.type)
            if dtype is None:
                raise HwbcnetError(f"model input {tensor.name} has type {tensor.type}; only float inputs are timed")
            data = rng.standard_normal(_static_shape(tensor.shape, profile.batch)).astype(dtype)
            binding.bind_ortvalue_input(tensor.name, ort.OrtValue.ortvalue_from_numpy(data))
        for tensor in session.get_outputs():
            binding.bind_output(tensor.name, "cpu")
        session.run_with_iobinding(binding)  # the first run plans memory and sizes the outputs; never timed
        # Rebind the outputs it allocated, so later runs write into the same buffers instead of allocating.
        for tensor, value in zip(session.get_outputs(), binding.get_outputs()):
            binding.bind_ortvalue_output(tensor.name, value)

        def timed_run() -> float:
            start = time.perf_counter_ns()
            session.run_with_iobinding(binding)
            return (time.perf_counter_ns() - start) / 1e6

        stats, _ = measure_stable(timed_run, policy or profile.model_timing)
        return stats


register_backend("onnxruntime", OnnxRuntimeBackend)
