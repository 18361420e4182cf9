import sys
import types

import pytest

from hardware_fakes import fast_profile
from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.hardware.backends import Backend, get_backend
from hwbcnet.hardware.backends import tensorrt as trt_backend
from hwbcnet.hardware.cells import CellKey, cell_onnx
from hwbcnet.hardware.profiler import measure_cell


def test_registry_knows_builtin_backends_and_refuses_others():
    assert isinstance(get_backend("onnxruntime"), Backend)
    with pytest.raises(HwbcnetError, match="unknown backend 'tvm'; known backends: onnxruntime, tensorrt"):
        get_backend("tvm")


def test_onnxruntime_measures_a_tiny_cell_with_sane_statistics():
    backend = get_backend("onnxruntime")
    profile = fast_profile()
    cell = CellKey("conv", 8, 8, 8, 8, kernel=3, padding=1, bn=True, act="relu")
    stats = backend.measure(cell_onnx(cell, 1, "fp32", copies=2), profile, profile.cell_timing)
    assert stats.n >= 50 and len(stats.samples) == stats.n
    assert 0 < stats.min <= stats.p10 <= stats.median <= stats.p90
    record = measure_cell(backend, cell, profile)
    assert record["n"] >= 100 and record["p10_ms"] <= record["ms"] <= record["p90_ms"]
    environment = backend.environment(profile)
    assert environment["runtime_versions"]["onnxruntime"] and environment["threads"] == 1


def test_onnxruntime_refuses_fp16_profiles():
    with pytest.raises(HwbcnetError, match="fp32 only"):
        get_backend("onnxruntime").measure(b"", fast_profile(precision="fp16"))


# ----------------------------------------------------------------------------------------- TensorRT via a fake


def fake_tensorrt(version="10.3.0", strongly_typed=True, fp16_flag=True, parse_ok=True, build_ok=True,
                  gpu=True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    log = trt.log = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Cache:
        def __init__(self, data):
            log.append(("cache_in", bytes(data)))

        def serialize(self):
            return b"cache-v2"

    class Config:
        def __init__(self):
            self.max_aux_streams = -1

        def set_memory_pool_limit(self, pool, size):
            log.append(("workspace", size))

        def set_flag(self, flag):
            log.append(("flag", flag))

        def create_timing_cache(self, data):
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            log.append(("ignore_mismatch", ignore_mismatch))

    class Builder:
        def __init__(self, logger):
            if not gpu:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags):
            log.append(("network_flags", flags))
            return object()

        def create_builder_config(self):
            trt.config = Config()
            return trt.config

        def build_serialized_network(self, network, config):
            return b"plan" if build_ok else None

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            return parse_ok

        def get_error(self, i):
            return "Unsupported op Foo"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    flags = {"STRONGLY_TYPED": 5} if strongly_typed else {}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16"} if fp16_flag else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    return trt


def test_tensorrt_10_builds_strongly_typed_with_shared_timing_cache(tmp_path):
    trt = fake_tensorrt("10.3.0")
    cache = tmp_path / "dev" / "timing.cache"
    plan = trt_backend.build_engine(b"onnx", "fp16", cache, workspace_mb=256, sequential=True, trt=trt)
    assert plan == b"plan"
    assert ("network_flags", 1 << 5) in trt.log and not [e for e in trt.log if e[0] == "flag"]
    assert ("workspace", 256 << 20) in trt.log and ("cache_in", b"") in trt.log
    assert trt.config.max_aux_streams == 0 and trt.config.profiling_verbosity == "DETAILED"
    assert cache.read_bytes() == b"cache-v2"
    trt_backend.build_engine(b"onnx", "fp16", cache, trt=trt)
    assert ("cache_in", b"cache-v2") in trt.log  # the second build starts from the saved cache
    assert trt.config.max_aux_streams == -1  # whole-model builds keep TensorRT's default


def test_tensorrt_11_without_weak_typing_flags():
    trt = fake_tensorrt("11.4.0", fp16_flag=False)
    assert trt_backend.tensorrt_major(trt) == 11
    assert trt_backend.build_engine(b"onnx", "fp16", trt=trt) == b"plan"
    assert not [e for e in trt.log if e[0] == "flag"]


def test_weakly_typed_tensorrt_gets_the_fp16_flag():
    trt = fake_tensorrt("10.0.1", strongly_typed=False)
    assert trt_backend.network_flags(trt) == (0, False)
    trt_backend.build_engine(b"onnx", "fp16", trt=trt)
    assert ("flag", "FP16") in trt.log
    trt_backend.build_engine(b"onnx", "fp32", trt=trt)
    assert trt.log.count(("flag", "FP16")) == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"version": "8.6.1"}, HwbcnetError, "too old"),
    ({"parse_ok": False}, HwbcnetError, "could not parse the ONNX model: Unsupported op Foo"),
    ({"build_ok": False}, HwbcnetError, "could not build an engine"),
    ({"gpu": False}, MissingRuntimeError, "no usable GPU"),
    ({"strongly_typed": False, "fp16_flag": False}, HwbcnetError, "neither strong typing nor the FP16 flag"),
])
def test_tensorrt_error_paths(kwargs, error, message):
    with pytest.raises(error, match=message):
        trt_backend.build_engine(b"onnx", "fp16", trt=fake_tensorrt(**kwargs))


def test_missing_tensorrt_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingRuntimeError, match="pip install tensorrt cuda-python.*python3-libnvinfer"):
        trt_backend.import_tensorrt()
    with pytest.raises(MissingRuntimeError):
        trt_backend.TensorRTBackend()


def test_missing_cuda_python_says_what_to_install(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingRuntimeError, match="pip install 'cuda-python"):
        trt_backend.import_cudart()


def test_jetson_provenance_and_clock_warnings(tmp_path):
    assert trt_backend.parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == "MAXN_SUPER"
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0")
    gpu = tmp_path / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    for name, value in (("min_freq", "306000000"), ("max_freq", "1020000000"), ("cur_freq", "306000000")):
        (gpu / name).write_text(value)
    state = trt_backend.jetson_state(tmp_path)
    assert state["module"] == "NVIDIA Jetson Orin Nano Developer Kit" and state["l4t"].startswith("# R36")
    assert state["clocks_locked"] is False and state["gpu_max_freq"] == 1020000000
    profile = fast_profile(name="jetson-orin-nano", backend="tensorrt", precision="fp16", power_mode="MAXN_SUPER",
                           locked_clocks=True)
    state["power_mode"] = "15W"
    warnings = trt_backend.clock_warnings(profile, state)
    assert any("power mode is 15W" in w for w in warnings) and any("jetson_clocks" in w for w in warnings)
    assert trt_backend.clock_warnings(profile, None) == ["profile jetson-orin-nano expects a Jetson but this machine is not one"]
    assert trt_backend.jetson_state(tmp_path / "nothing") is None


def _gpu_available() -> bool:
    try:
        trt_backend.import_tensorrt()
        cudart = trt_backend.import_cudart()
        error, count = cudart.cudaGetDeviceCount()
        return error == cudart.cudaError_t.cudaSuccess and count > 0
    except MissingRuntimeError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs TensorRT, cuda-python and an NVIDIA GPU")
def test_tensorrt_measures_a_cell_on_the_gpu(tmp_path):
    backend = trt_backend.TensorRTBackend(timing_cache_dir=tmp_path)
    profile = fast_profile(name="gpu", backend="tensorrt", precision="fp16")
    cell = CellKey("conv", 32, 32, 16, 16, kernel=3, padding=1, bn=True, act="relu")
    stats = backend.measure(cell_onnx(cell, 1, "fp16", copies=2, shared_input=False), profile, profile.cell_timing)
    assert stats.n >= 50 and 0 < stats.p10 <= stats.median <= stats.p90
    assert backend.environment(profile)["runtime_versions"]["tensorrt"]
    assert list(tmp_path.glob("gpu/timing-trt*.cache"))
