import dataclasses
import sys
import warnings

import onnx
import onnxruntime as ort
import pytest

from hardware_fakes import fast_profile
from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.hardware import nvidia
from hwbcnet.hardware.backends import Backend, get_backend
from hwbcnet.hardware.backends import tensorrt as trt_backend
from hwbcnet.hardware.backends.onnxruntime import OnnxRuntimeCudaBackend
from hwbcnet.hardware.cells import CellKey, cell_onnx
from hwbcnet.hardware.profiler import measure_cell
from hwbcnet.hardware.profiles import load_profile
from nvidia_fakes import DeviceProps, FakeGpu, FakeTimingCache, cudaError_t, jetson_tree


def test_registry_knows_builtin_backends_and_refuses_others():
    assert isinstance(get_backend("onnxruntime"), Backend)
    with pytest.raises(HwbcnetError, match="unknown backend 'tvm'; known backends: onnxruntime, onnxruntime-cuda, "
                                           "tensorrt"):
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


# ---------------------------------------------------------------------------------- TensorRT against the fakes


def cell_model(c_out: int = 8, precision: str = "fp16", copies: int = 2) -> bytes:
    cell = CellKey("conv", 8, c_out, 8, 8, kernel=3, padding=1, bn=True, act="relu")
    return cell_onnx(cell, 1, precision, copies=copies, shared_input=False)


def trt_profile(**changes):
    return fast_profile(name="gpu", backend="tensorrt", precision="fp16", **changes)


@pytest.fixture
def no_jetson(monkeypatch, tmp_path):
    """This machine's /proc, /sys and /etc as an empty tree: not a Jetson, whatever runs the tests."""
    monkeypatch.setattr(nvidia, "SYSTEM_ROOT", tmp_path / "root")


def test_tensorrt_10_builds_strongly_typed_with_tf32_off_and_a_shared_cache(tmp_path):
    gpu = FakeGpu()
    trt = gpu.tensorrt
    cache = tmp_path / "dev" / "timing.cache"
    plan = trt_backend.build_engine(cell_model(), cache, workspace_mb=256, sequential=True, trt=trt)
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(plan).num_io_tensors == 4
    assert trt_backend.network_flags(trt) == 1 << 1  # STRONGLY_TYPED = 1 in 10.3 (EXPLICIT_BATCH = 0 stays off)
    config = gpu.configs[-1]
    assert config.pools == {trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert config.max_aux_streams == 0 and config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert not config.get_flag(trt.BuilderFlag.TF32) and not config.get_flag(trt.BuilderFlag.FP16)
    # The two copies of the cell are one layer signature: timed once.
    assert len(FakeTimingCache.parse(cache.read_bytes()).entries) == 1 and gpu.tactics_timed == 1
    trt_backend.build_engine(cell_model(), cache, trt=trt)
    assert gpu.tactics_timed == 1  # the second build found its layer in the saved cache
    assert gpu.configs[-1].max_aux_streams == -1  # whole-model builds keep TensorRT's default


def test_tensorrt_11_flags(tmp_path):
    gpu = FakeGpu(trt_version="11.4.0.106")
    trt = gpu.tensorrt
    assert trt_backend.tensorrt_major(trt) == 11 and not hasattr(trt.BuilderFlag, "FP16")
    # STRONGLY_TYPED is 0 in 11.x (a deprecated no-op); 1 << 1 would ask for JIT Python plugins instead.
    assert trt_backend.network_flags(trt) == 1 << 0
    assert trt_backend.build_engine(cell_model(), trt=trt).startswith(b"FAKE-TRT-PLAN")
    assert not gpu.configs[-1].get_flag(trt.BuilderFlag.TF32)


def unsupported_op_model() -> bytes:
    graph = onnx.helper.make_graph([onnx.helper.make_node("Foo", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    return onnx.helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize("gpu_args, model, error, message", [
    ({"trt_version": "8.5.2.2"}, None, HwbcnetError, "TensorRT 8.5.2.2 is too old.*JetPack 5"),
    ({}, unsupported_op_model(), HwbcnetError, "could not parse the ONNX model: In node 0 .*op: Foo"),
    ({"build_fails": True}, None, HwbcnetError, "could not build an engine"),
    ({"driver": "no-device"}, None, MissingRuntimeError, "no usable GPU"),
])
def test_tensorrt_build_error_paths(gpu_args, model, error, message):
    with pytest.raises(error, match=message):
        trt_backend.build_engine(model or cell_model(), trt=FakeGpu(**gpu_args).tensorrt)


def test_timing_cache_of_another_gpu_is_refused_and_kept(tmp_path):
    cache = tmp_path / "timing.cache"
    trt_backend.build_engine(cell_model(), cache, trt=FakeGpu(props=DeviceProps(name=b"NVIDIA A100", major=8,
                                                                                 minor=0)).tensorrt)
    before = cache.read_bytes()
    with pytest.raises(HwbcnetError, match="timing.cache: this timing cache was written on another GPU"):
        trt_backend.build_engine(cell_model(), cache, trt=FakeGpu().tensorrt)
    assert cache.read_bytes() == before


def test_corrupt_timing_cache_is_replaced(tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00truncated")
    gpu = FakeGpu()
    with pytest.warns(RuntimeWarning, match="unreadable TensorRT timing cache"):
        trt_backend.build_engine(cell_model(), cache, trt=gpu.tensorrt)
    assert len(FakeTimingCache.parse(cache.read_bytes()).entries) == 1


def test_concurrent_builds_combine_their_timing_caches(tmp_path):
    """Build B starts and saves while build A is running (both read the same, empty, file first); A's save must
    combine B's entries instead of overwriting them, as trtexec's updateTimingCacheFile does."""
    cache = tmp_path / "timing.cache"
    gpu = FakeGpu()
    gpu.during_build = lambda: trt_backend.build_engine(cell_model(c_out=16), cache, trt=gpu.tensorrt)
    trt_backend.build_engine(cell_model(c_out=8), cache, trt=gpu.tensorrt)
    assert gpu.tactics_timed == 2 and len(FakeTimingCache.parse(cache.read_bytes()).entries) == 2


@pytest.mark.parametrize("driver", ["dlopen-fails", "insufficient", "no-device"])
def test_no_driver_or_gpu_is_a_one_line_error_and_skips_gpu_tests(monkeypatch, driver):
    FakeGpu(driver=driver).install(monkeypatch)
    with pytest.raises(MissingRuntimeError) as info:
        trt_backend.TensorRTBackend()
    assert "\n" not in str(info.value) and "nvidia-smi" in str(info.value)
    assert trt_backend.gpu_available() is False


def test_gpu_available_with_a_working_fake(monkeypatch):
    FakeGpu().install(monkeypatch)
    assert trt_backend.gpu_available() is True
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert trt_backend.gpu_available() is False


def test_missing_tensorrt_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingRuntimeError, match="pip install tensorrt-cu12 'cuda-python>=12.6,<13'.*"
                                                  "python3-libnvinfer"):
        trt_backend.import_tensorrt()
    with pytest.raises(MissingRuntimeError):
        trt_backend.TensorRTBackend()


def test_missing_cuda_python_says_what_to_install(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingRuntimeError, match="pip install 'cuda-python>=12.6,<13'"):
        trt_backend.import_cudart()


@pytest.mark.parametrize("cuda_graphs, capturable, reported, per_launch_ms, graph_launches", [
    (False, True, False, 0.03, False),  # kernels 0.02 ms + 0.01 ms enqueue gap per execute_async_v3
    (True, True, False, 0.02, True),  # graph launches: the kernels alone
    # Capture fails (invalidated, or refused by TensorRT with a graph that must be dropped): timed with plain
    # enqueues, as trtexec falls back.
    (True, False, False, 0.03, False),
    (True, False, True, 0.03, False),
])
def test_tensorrt_execution_path(monkeypatch, tmp_path, no_jetson, cuda_graphs, capturable, reported, per_launch_ms,
                                 graph_launches):
    gpu = FakeGpu(capturable=capturable, capture_failure_reported=reported).install(monkeypatch)
    backend = trt_backend.TensorRTBackend(timing_cache_dir=tmp_path)
    profile = trt_profile(cuda_graphs=cuda_graphs, min_sample_ms=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = backend.measure(cell_model(), profile, profile.cell_timing)
    fell_back = [w for w in caught if "CUDA graph capture does not permit" in str(w.message)]
    assert len(fell_back) == (cuda_graphs and not capturable)
    assert stats.n >= 50 and stats.median == pytest.approx(per_launch_ms)
    assert (gpu.graph_launches > 0) == graph_launches
    # Every buffer, event, stream and graph is released, no stream is left capturing, no error is left pending.
    assert gpu.cudart.live() == {}
    assert gpu.cudart.cudaGetLastError() == (cudaError_t.cudaSuccess,)
    assert list(tmp_path.glob("gpu/timing-trt10.3.0.30.cache"))


def test_failed_setup_releases_what_it_allocated(monkeypatch, tmp_path):
    gpu = FakeGpu(fail_malloc_after=2).install(monkeypatch)  # the third of four tensors cannot be allocated
    backend = trt_backend.TensorRTBackend(timing_cache_dir=tmp_path)
    with pytest.raises(HwbcnetError, match="CUDA call failed: cudaErrorMemoryAllocation"):
        backend.measure(cell_model(), trt_profile())
    assert gpu.cudart.live() == {}


def test_engine_from_another_tensorrt_is_refused(monkeypatch, tmp_path):
    plan = trt_backend.build_engine(cell_model(), trt=FakeGpu(trt_version="10.7.0.23").tensorrt)
    FakeGpu().install(monkeypatch)
    with pytest.raises(HwbcnetError, match="could not deserialize the engine"):
        trt_backend.TensorRTBackend(timing_cache_dir=tmp_path).measure_plan(plan, trt_profile())


@pytest.mark.parametrize("local_runtime, expected", [(12060, "12.6"), ("dlopen-fails", None), (None, None)])
def test_tensorrt_environment_records_the_installed_cuda_runtime(monkeypatch, no_jetson, local_runtime, expected):
    FakeGpu(local_runtime=local_runtime).install(monkeypatch)
    monkeypatch.setenv("PATH", "")  # no nvidia-smi
    profile = dataclasses.replace(load_profile("gpu"), resolved_from="gpu")
    environment = trt_backend.TensorRTBackend().environment(profile)
    versions = environment["runtime_versions"]
    assert versions["cuda_runtime"] == expected  # the library's own version, not cuda-python's
    assert versions["cuda_python_built_for"] == "12.9" and versions["cuda_driver"] == "12.6"
    assert versions["tensorrt"] == "10.3.0.30"
    assert (environment["device"], environment["compute_capability"]) == ("Orin", "8.7")
    assert (environment["profile"], environment["requested_device"]) == ("gpu", "gpu")
    assert environment["clock_state"] == {"source": "unavailable", "reason": "nvidia-smi is not installed"}


# ------------------------------------------------------------------------------- nvidia-smi and Jetson state


def fake_nvidia_smi(folder, script: str):
    """An executable `nvidia-smi` on PATH that runs `script` (sh) with the query arguments in $@."""
    folder.mkdir(exist_ok=True)
    path = folder / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return folder


@pytest.mark.parametrize("script, expected", [
    ('echo "NVIDIA GeForce RTX 4090, 550.54.14, 2520, 3120, 0x0000000000000001"',
     {"source": "nvidia-smi", "name": "NVIDIA GeForce RTX 4090", "driver_version": "550.54.14", "sm_clock_mhz": "2520",
      "max_sm_clock_mhz": "3120", "clock_event_reasons": "0x0000000000000001"}),
    ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9',
     {"source": "unavailable", "reason": "nvidia-smi exited with 9: NVIDIA-SMI has failed because it couldn't "
                                         "communicate with the NVIDIA driver."}),
    ('echo "[N/A], [N/A]"', {"source": "unavailable", "reason": "unexpected nvidia-smi output '[N/A], [N/A]'"}),
    # A driver older than 535 knows only clocks_throttle_reasons: the query is retried with that name.
    ('case "$1" in *event_reasons*) echo "Field is not a valid field to query."; exit 2;; esac\n'
     'echo "Tesla T4, 470.82.01, 585, 1590, 0x0000000000000000"',
     {"source": "nvidia-smi", "name": "Tesla T4", "driver_version": "470.82.01", "sm_clock_mhz": "585",
      "max_sm_clock_mhz": "1590", "clock_event_reasons": "0x0000000000000000"}),
])
def test_gpu_clock_state_checks_exit_code_and_fields(tmp_path, monkeypatch, script, expected):
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", script)))
    assert nvidia.gpu_clock_state("00000000:01:00.0") == expected


def test_jetson_provenance_and_clock_warnings(tmp_path):
    assert nvidia.parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == "MAXN_SUPER"
    root = jetson_tree(tmp_path, model="NVIDIA Jetson Orin Nano Developer Kit\x00")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    for name, value in (("min_freq", "306000000"), ("max_freq", "1020000000"), ("cur_freq", "306000000")):
        (gpu / name).write_text(value)
    state = nvidia.jetson_state(root)
    assert state["module"] == "NVIDIA Jetson Orin Nano Developer Kit" and state["l4t"].startswith("# R36")
    assert (state["power_mode"], state["power_mode_source"]) == ("MAXN_SUPER", "/var/lib/nvpmodel/status")
    assert state["clocks_locked"] is False and state["gpu_max_freq"] == 1020000000
    profile = load_profile("jetson-orin-nano")
    state["power_mode"] = "15W"
    warnings_ = nvidia.clock_warnings(profile, state)
    assert any("power mode is 15W" in w for w in warnings_) and any("jetson_clocks" in w for w in warnings_)
    assert nvidia.clock_warnings(profile, None) == ["profile jetson-orin-nano expects a Jetson but this machine is "
                                                    "not one"]
    assert nvidia.jetson_state(tmp_path / "nothing") is None


# ----------------------------------------------------------------------- ONNX Runtime's CUDA execution provider


class FakeOrt:
    """onnxruntime as onnxruntime-gpu presents itself: provider list, preload_dlls, sessions on a provider."""

    __version__ = "1.31.1"
    SessionOptions, ExecutionMode, GraphOptimizationLevel = ort.SessionOptions, ort.ExecutionMode, \
        ort.GraphOptimizationLevel

    def __init__(self, providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
                 cuda_starts=True):
        self.available, self.cuda_starts, self.sessions = list(providers), cuda_starts, []

    def get_available_providers(self):
        return self.available

    def preload_dlls(self):
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    def InferenceSession(self, model, options, providers):
        fake = self

        class Session:
            def get_providers(self):
                names = [p[0] if isinstance(p, tuple) else p for p in providers]
                # Like ONNX Runtime: a provider that cannot start is dropped and the CPU takes over.
                return names if fake.cuda_starts else ["CPUExecutionProvider"]

        fake.sessions.append((providers, options))
        return Session()


def test_ort_cuda_needs_the_cuda_provider():
    with pytest.raises(MissingRuntimeError, match="no CUDA execution provider .*CPUExecutionProvider.*onnxruntime-gpu"):
        OnnxRuntimeCudaBackend(FakeOrt(providers=("CPUExecutionProvider",)))
    with pytest.raises(MissingRuntimeError, match="no CUDA execution provider"):
        get_backend("onnxruntime-cuda")  # this machine's onnxruntime is the CPU build


def test_ort_cuda_refuses_a_silent_cpu_fallback(capsys):
    backend = OnnxRuntimeCudaBackend(FakeOrt(cuda_starts=False))
    assert "libcudnn" in capsys.readouterr().err  # preload_dlls' report goes to stderr, not into --json output
    with pytest.raises(MissingRuntimeError, match="could not start its CUDA execution provider .*nvidia-smi"):
        backend.session(b"model", load_profile("ort-cuda-fp16"))


@pytest.mark.parametrize("device, use_tf32", [("ort-cuda-fp32", "0"), ("ort-cuda-fp16", "1")])
def test_ort_cuda_provider_selection(device, use_tf32):
    fake = FakeOrt()
    profile = load_profile(device)
    OnnxRuntimeCudaBackend(fake).session(b"model", profile)
    (providers, options), = fake.sessions
    # Only the CUDA provider is asked for, TF32 off for fp32, the profile's threads and optimisation level.
    assert providers == [("CUDAExecutionProvider", {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                    "do_copy_in_default_stream": "1", "use_tf32": use_tf32})]
    assert options.intra_op_num_threads == 1 and options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert profile.settings_tag() == f"b1 {profile.precision} ortcuda-t1-all"


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_ort_cuda_measures_a_cell_on_the_gpu():
    backend = get_backend("onnxruntime-cuda")
    profile = dataclasses.replace(load_profile("ort-cuda-fp16"), cell_timing=fast_profile().cell_timing)
    stats = backend.measure(cell_model(c_out=32), profile, profile.cell_timing)
    assert stats.n >= 50 and 0 < stats.p10 <= stats.median <= stats.p90
    assert backend.environment(profile)["device"]


@pytest.mark.gpu
@pytest.mark.skipif(not trt_backend.gpu_available(), reason="needs TensorRT, cuda-python and an NVIDIA GPU")
def test_tensorrt_measures_a_cell_on_the_gpu(tmp_path):
    backend = trt_backend.TensorRTBackend(timing_cache_dir=tmp_path)
    profile = trt_profile()
    cell = CellKey("conv", 32, 32, 16, 16, kernel=3, padding=1, bn=True, act="relu")
    stats = backend.measure(cell_onnx(cell, 1, "fp16", copies=2, shared_input=False), profile, profile.cell_timing)
    assert stats.n >= 50 and 0 < stats.p10 <= stats.median <= stats.p90
    assert backend.environment(profile)["runtime_versions"]["tensorrt"]
    assert list(tmp_path.glob("gpu/timing-trt*.cache"))
