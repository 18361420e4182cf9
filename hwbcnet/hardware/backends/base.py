"""The backend seam: everything the profiler needs from a runtime is `environment` (provenance recorded in the LUT)
and `measure` (time one ONNX model under a profile's settings). Backends register by name; the TensorRT one is
imported only when asked for, so nothing here needs TensorRT or a GPU."""

from __future__ import annotations

import importlib
from typing import Callable, Protocol, runtime_checkable

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.profiles import Profile, TimingPolicy
from hwbcnet.hardware.timing import TimingStats


@runtime_checkable
class Backend(Protocol):
    name: str
    # Whether the parallel branches of a cell model may read one shared input (see hardware/cells.py).
    shared_input_branches: bool

    def environment(self, profile: Profile) -> dict:
        """Provenance: device name, runtime versions, precision, threads, clock state."""
        ...

    def measure(self, onnx_bytes: bytes, profile: Profile, policy: TimingPolicy | None = None) -> TimingStats:
        """Time one model (random inputs, outputs preallocated) under `policy` (default: the profile's
        model policy). Returns the statistics, samples included."""
        ...


_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
# Built-in backends live in their own module, imported on first use (tensorrt needs optional packages).
_BUILTIN = {"onnxruntime": "hwbcnet.hardware.backends.onnxruntime",
            "onnxruntime-cuda": "hwbcnet.hardware.backends.onnxruntime",
            "tensorrt": "hwbcnet.hardware.backends.tensorrt"}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def get_backend(name: str) -> Backend:
    if name not in _FACTORIES and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _FACTORIES:
        known = sorted(set(_FACTORIES) | set(_BUILTIN))
        raise HwbcnetError(f"unknown backend {name!r}; known backends: {', '.join(known)}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]
