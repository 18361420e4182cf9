"""TensorRT export without a GPU: ONNX preparation (static batch, fp16, INT8 Q/DQ), the engine sidecar and the error
paths, against the fake `tensorrt` and `cuda.bindings.runtime` of tests/nvidia_fakes.py injected through
sys.modules. The real build runs only under @pytest.mark.gpu."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.export.onnx_export import export_onnx
from hwbcnet.export.tensorrt_export import export_tensorrt, prepare_onnx, sidecar_path, with_static_batch
from hwbcnet.fileio import file_sha256
from hwbcnet.hardware.backends.tensorrt import gpu_available
from hwbcnet.space import build_space
from hwbcnet.supernet.extract import build_standalone
from nvidia_fakes import FakeGpu, FakeTimingCache

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dynamic-batch cbm-mobilenet export (conv, depthwise, residual add, linear head) and its space/arch."""
    space = build_space("cbm-mobilenet")
    arch = space.parse_arch("1234321")
    torch.manual_seed(0)
    model = build_standalone(space, arch).eval()
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(model, space, arch, path, dynamic_batch=True, metadata={"device": "jetson-orin-nano",
                                                                         "predicted_latency_ms": 1.5})
    return path, space, arch, model


@pytest.fixture
def gpu(monkeypatch):
    return FakeGpu().install(monkeypatch)


def cache_entries(path):
    cache = FakeTimingCache.parse(path.read_bytes())
    assert cache is not None, f"{path} is not a timing cache TensorRT can read"
    return cache.entries


def dims(value):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_static_batch(exported):
    path, *_ = exported
    model = onnx.load(path)
    static = with_static_batch(model, 4)
    assert dims(static.graph.input[0]) == [4, 3, 32, 32] and dims(static.graph.output[0]) == [4, 10]
    assert dims(model.graph.input[0])[0] == "batch"  # the source model is untouched
    with pytest.raises(HwbcnetError, match="fixed batch of 4, not 1"):
        with_static_batch(static, 1)


def test_fp16_preparation(exported):
    path, space, arch, model = exported
    fp16 = prepare_onnx(onnx.load(path), "fp16", batch=1)
    onnx.checker.check_model(fp16)
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {init.data_type for init in fp16.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert "Cast" not in {node.op_type for node in fp16.graph.node}  # fp16 end to end, nothing left in fp32
    images = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": images.astype(np.float16)})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert np.abs(logits.astype(np.float32) - expected).max() < 2e-2 * max(1.0, np.abs(expected).max())


def test_int8_preparation_puts_qdq_on_every_conv_and_gemm(exported):
    path, *_ = exported
    int8 = prepare_onnx(onnx.load(path), "int8", batch=1, calib="digits", calib_images=32)
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    layers = [node for node in int8.graph.node if node.op_type in ("Conv", "Gemm")]
    assert len(layers) == 15
    for node in layers:
        assert producers[node.input[0]] == producers[node.input[1]] == "DequantizeLinear", node.name
    assert dims(int8.graph.input[0]) == [1, 3, 32, 32]
    with pytest.raises(HwbcnetError, match="--calib digits"):
        prepare_onnx(onnx.load(path), "int8", batch=1)


def test_fp16_engine_and_sidecar(exported, gpu, tmp_path):
    path, space, arch, _ = exported
    engine = tmp_path / "model.engine"
    sidecar = export_tensorrt(path, engine, precision="fp16")

    trt = gpu.tensorrt
    deserialized = trt.Runtime(trt.Logger()).deserialize_cuda_engine(engine.read_bytes())
    assert [deserialized.get_tensor_name(i) for i in range(deserialized.num_io_tensors)] == ["input", "logits"]
    assert deserialized.get_tensor_dtype("input") == trt.DataType.HALF
    assert cache_entries(tmp_path / "timing-trt10.3.0.30.cache")
    assert json.loads(sidecar_path(engine).read_text()) == sidecar
    assert sidecar_path(engine).name == "model.engine.json"
    created = sidecar.pop("created")
    metadata = sidecar.pop("metadata")
    assert created.endswith("+00:00")
    assert metadata["arch"] == space.arch_to_json(arch) and metadata["predicted_latency_ms"] == 1.5
    assert sidecar == {
        "kind": "hwbcnet.engine", "schema_version": 1, "engine": "model.engine", "engine_sha256": file_sha256(engine),
        "tensorrt_version": "10.3.0.30", "strongly_typed": True, "gpu": "Orin", "compute_capability": "8.7",
        "precision": "fp16", "batch": 1,
        "inputs": [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "float16"}],
        "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float16"}],
        "onnx": {"path": str(path), "sha256": file_sha256(path)}, "calibration": None,
        "timing_cache": str(tmp_path / "timing-trt10.3.0.30.cache"), "device_profile": None,
        "model": "cbm-mobilenet", "arch": space.arch_to_json(arch), "hwbcnet_version": "0.1.0",
    }
    built = gpu.built_onnx()
    assert built.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    config = gpu.configs[-1]
    assert config.timing_cache is not None and not config.get_flag(trt.BuilderFlag.FP16)


def test_int8_calibration_without_torch_is_a_one_line_error(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # a target without torch
    for name in [name for name in sys.modules if name.startswith("hwbcnet.data")]:
        monkeypatch.delitem(sys.modules, name)  # so the data package imports torch again
    with pytest.raises(HwbcnetError, match="INT8 calibration reads its images with torch, which is not installed"):
        prepare_onnx(onnx.load(exported[0]), "int8", batch=1, calib="digits", calib_images=32)


def test_int8_engine_with_device_profile(exported, gpu, tmp_path, monkeypatch):
    path, *_ = exported
    monkeypatch.chdir(tmp_path)
    sidecar = export_tensorrt(path, tmp_path / "out" / "int8.engine", precision="int8", calib="digits",
                              calib_images=40, device_profile="jetson-orin-nano")
    assert sidecar["calibration"] == {"source": "digits", "images": 64}  # two batches of 32
    assert sidecar["device_profile"] == "jetson-orin-nano" and sidecar["batch"] == 1
    # The timing cache is the one the device's LUT builds share.
    assert sidecar["timing_cache"] == "lut/jetson-orin-nano/timing-trt10.3.0.30.cache"
    assert cache_entries(tmp_path / "lut" / "jetson-orin-nano" / "timing-trt10.3.0.30.cache")
    ops = Counter(node.op_type for node in gpu.built_onnx().graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert sidecar["inputs"][0]["dtype"] == "float32"  # Q/DQ models keep float I/O
    # The float layers an INT8 engine keeps run in fp32, not TF32; no weak-typing INT8 flag either.
    config = gpu.configs[-1]
    assert not config.get_flag(gpu.tensorrt.BuilderFlag.TF32) and not config.get_flag(gpu.tensorrt.BuilderFlag.INT8)


def test_engine_precision_follows_the_device_profile(exported, gpu, tmp_path, monkeypatch):
    path = shutil.copy(exported[0], tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    assert export_tensorrt(path, device_profile="gpu")["precision"] == "fp16"  # the gpu profile's
    assert (tmp_path / "m.engine").is_file() and (tmp_path / "m.engine.json").is_file()  # next to the ONNX
    assert export_tensorrt(path, tmp_path / "b.engine")["precision"] == "fp32"  # no profile: fp32, TF32 off
    assert not gpu.configs[-1].get_flag(gpu.tensorrt.BuilderFlag.TF32)


def test_fp32_engine_at_a_chosen_batch(exported, gpu, tmp_path):
    path, *_ = exported
    sidecar = export_tensorrt(path, tmp_path / "b8.engine", precision="fp32", batch=8,
                              timing_cache=tmp_path / "my.cache")
    assert sidecar["inputs"] == [{"name": "input", "shape": [8, 3, 32, 32], "dtype": "float32"}]
    assert cache_entries(tmp_path / "my.cache")


def test_missing_tensorrt_is_a_one_line_install_hint(exported, tmp_path, monkeypatch):
    path, *_ = exported
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingRuntimeError) as info:
        export_tensorrt(path, tmp_path / "m.engine")
    message = str(info.value)
    # `pip install tensorrt` would bring the CUDA 13 wheels: name the CUDA 12 ones and a matching cuda-python.
    assert "pip install tensorrt-cu12 'cuda-python>=12.6,<13'" in message and "python3-libnvinfer" in message
    assert "\n" not in message and info.value.exit_code == 2
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("driver, message", [
    ("dlopen-fails", "the NVIDIA driver could not be loaded (Failed to dlopen libcuda.so.1)"),
    ("insufficient", "CUDA found no usable GPU (cudaErrorInsufficientDriver)"),
    ("no-device", "CUDA found no usable GPU (cudaErrorNoDevice)"),
])
def test_no_driver_or_gpu(exported, tmp_path, monkeypatch, driver, message):
    path, *_ = exported
    FakeGpu(driver=driver).install(monkeypatch)
    with pytest.raises(MissingRuntimeError) as info:
        export_tensorrt(path, tmp_path / "m.engine")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_requests(exported, tmp_path):
    path, *_ = exported
    with pytest.raises(HwbcnetError, match="precision 'bf16'"):
        export_tensorrt(path, tmp_path / "m.engine", precision="bf16")
    with pytest.raises(HwbcnetError, match="INT8 needs calibration images"):
        export_tensorrt(path, tmp_path / "m.engine", precision="int8")
    with pytest.raises(HwbcnetError, match="device cpu runs on onnxruntime"):
        export_tensorrt(path, tmp_path / "m.engine", device_profile="cpu")
    with pytest.raises(HwbcnetError, match="ONNX file not found"):
        export_tensorrt(tmp_path / "missing.onnx")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs TensorRT, cuda-python and an NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_builds_and_deserializes(exported, tmp_path, precision):
    import tensorrt as trt

    path, *_ = exported
    engine = tmp_path / f"{precision}.engine"
    sidecar = export_tensorrt(path, engine, precision=precision, calib="digits", calib_images=64)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    deserialized = runtime.deserialize_cuda_engine(engine.read_bytes())
    assert deserialized is not None
    names = [deserialized.get_tensor_name(i) for i in range(deserialized.num_io_tensors)]
    assert names == ["input", "logits"]
    assert list(deserialized.get_tensor_shape("input")) == sidecar["inputs"][0]["shape"]


# -------------------------------------------------------------------------------- building and verifying on the target

TARGET_SCRIPT = """
import json, sys
sys.modules["torch"] = None  # the target machine has no torch: any `import torch` fails
sys.path.insert(0, {tests!r})
from nvidia_fakes import FakeGpu
sys.modules.update(FakeGpu().modules())
from hwbcnet.cli import main
for args in {commands!r}:
    try:
        main(args)
    except SystemExit as exit_:
        assert exit_.code in (0, None), (args, exit_.code)
"""


def test_engine_built_and_verified_on_a_target_without_torch(exported, tmp_path):
    """The cross-device workflow's target side: only the ONNX file travelled; the engine is built from it and
    verified, with torch unimportable (a Jetson image without torch) and the fake GPU."""
    onnx_file = shutil.copy(exported[0], tmp_path / "model.onnx")
    commands = [["export", "--from-onnx", "model.onnx", "--device", "jetson-orin-nano", "--json"],
                ["verify", "--device", "jetson-orin-nano", "--model", "model.engine", "--budget", "5ms", "--json"]]
    script = TARGET_SCRIPT.format(tests=str(Path(__file__).parent), commands=commands)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    built, verified = (json.loads(line) for line in done.stdout.splitlines())
    sidecar = built["tensorrt"]
    assert "onnx" not in built  # nothing was exported: the ONNX came from elsewhere
    assert (sidecar["engine"], sidecar["precision"], sidecar["device_profile"]) == \
        ("model.engine", "fp16", "jetson-orin-nano")
    assert sidecar["onnx"]["sha256"] == file_sha256(onnx_file)
    assert (tmp_path / "lut/jetson-orin-nano/timing-trt10.3.0.30.cache").is_file()
    assert verified["model_kind"] == "engine" and verified["device_name"] == "Orin"
    assert verified["measured_ms"] == pytest.approx(0.03)  # the fake GPU's kernels + enqueue gap
    assert verified["within_budget"] is True
    # No torch to rebuild the width space: the prediction recorded at export for this device is used.
    assert verified["predicted_ms"] == 1.5 and "torch is not installed" in verified["predicted_note"]


def test_verify_an_engine(exported, gpu, tmp_path, monkeypatch):
    from hwbcnet.export.verify import verify

    monkeypatch.chdir(tmp_path)
    path = shutil.copy(exported[0], tmp_path / "model.onnx")
    export_tensorrt(path, device_profile="jetson-orin-nano")
    result = verify(tmp_path / "model.engine", "jetson-orin-nano")
    assert result["model_kind"] == "engine" and result["measured_ms"] == pytest.approx(0.03)
    assert result["predicted_ms"] == 1.5 and result["predicted_note"].startswith("recorded at export time (no LUT")
    assert gpu.cudart.live() == {}
    # An fp32 engine is not what the fp16 LUT predicts: measured, but no prediction.
    export_tensorrt(path, tmp_path / "fp32.engine", precision="fp32")
    result = verify(tmp_path / "fp32.engine", "jetson-orin-nano")
    assert result["predicted_ms"] is None and "engine is fp32 at batch 1" in result["predicted_note"]
    with pytest.raises(HwbcnetError, match="is a TensorRT engine but device cpu runs on onnxruntime"):
        verify(tmp_path / "model.engine", "cpu")


def test_engine_from_another_machine_is_refused_before_timing(exported, tmp_path, monkeypatch):
    from hwbcnet.export.verify import verify

    monkeypatch.chdir(tmp_path)
    path = shutil.copy(exported[0], tmp_path / "model.onnx")
    FakeGpu(trt_version="10.7.0.23").install(monkeypatch)
    export_tensorrt(path, device_profile="gpu")
    FakeGpu().install(monkeypatch)
    with pytest.raises(HwbcnetError, match=r"built with TensorRT 10\.7\.0\.23 for Orin .*this machine has TensorRT "
                                           r"10\.3\.0\.30 .*rebuild it here: hwbcnet export --from-onnx"):
        verify(tmp_path / "model.engine", "gpu")
