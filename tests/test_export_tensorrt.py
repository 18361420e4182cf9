"""TensorRT export without a GPU: ONNX preparation (static batch, fp16, INT8 Q/DQ), the engine sidecar and the error
paths, against a fake `tensorrt` and `cuda.bindings.runtime` injected through sys.modules. The real build runs
only under @pytest.mark.gpu."""

import json
import sys
import types
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.export.onnx_export import export_onnx
from hwbcnet.export.tensorrt_export import export_tensorrt, prepare_onnx, sidecar_path, with_static_batch
from hwbcnet.fileio import file_sha256
from hwbcnet.space import build_space
from hwbcnet.supernet.extract import build_standalone

PLAN = b"fake serialized engine"
CACHE = b"fake timing cache"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dynamic-batch cbm-mobilenet export (conv, depthwise, residual add, linear head) and its space/arch."""
    space = build_space("cbm-mobilenet")
    arch = space.parse_arch("1234321")
    torch.manual_seed(0)
    model = build_standalone(space, arch).eval()
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(model, space, arch, path, dynamic_batch=True)
    return path, space, arch, model


class FakeTensorRT(types.ModuleType):
    """The parts of the TensorRT 10.3 Python API the build uses; records what it was given."""

    def __init__(self, version="10.3.0", strongly_typed=True):
        super().__init__("tensorrt")
        self.__version__ = version
        self.parsed: list[bytes] = []
        self.flags_set: list = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Network:
            def __init__(self, flags):
                self.flags = flags

        class Cache:
            def serialize(self):
                return CACHE

        class Config:
            max_aux_streams = -1

            def set_memory_pool_limit(self, pool, size):
                self.workspace = size

            def set_flag(self, flag):
                fake.flags_set.append(flag)

            def create_timing_cache(self, data):
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.network_flags = flags
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return PLAN

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                fake.parsed.append(bytes(data))
                return True

        creation = types.SimpleNamespace(STRONGLY_TYPED=0) if strongly_typed else types.SimpleNamespace()
        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = creation
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")

    def built_onnx(self) -> onnx.ModelProto:
        assert len(self.parsed) == 1
        return onnx.load_from_string(self.parsed[0])


def fake_cudart(devices=1):
    success = "cudaSuccess"
    props = types.SimpleNamespace(name=b"Orin (nvgpu)\x00", major=8, minor=7)
    return types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=success),
        cudaGetDeviceCount=lambda: (success, devices),
        cudaGetDeviceProperties=lambda index: (success, props),
    )


@pytest.fixture
def fake_trt(monkeypatch):
    trt = FakeTensorRT()
    runtime = fake_cudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    return trt


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


def test_fp16_engine_and_sidecar(exported, fake_trt, tmp_path):
    path, space, arch, _ = exported
    engine = tmp_path / "model.engine"
    sidecar = export_tensorrt(path, engine, precision="fp16")

    assert engine.read_bytes() == PLAN
    assert (tmp_path / "timing-trt10.3.0.cache").read_bytes() == CACHE
    assert json.loads(sidecar_path(engine).read_text()) == sidecar
    assert sidecar_path(engine).name == "model.engine.json"
    created = sidecar.pop("created")
    assert created.endswith("+00:00")
    assert sidecar == {
        "kind": "hwbcnet.engine", "schema_version": 1, "engine": "model.engine", "engine_sha256": file_sha256(engine),
        "tensorrt_version": "10.3.0", "strongly_typed": True, "gpu": "Orin (nvgpu)", "compute_capability": "8.7",
        "precision": "fp16", "batch": 1,
        "inputs": [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "float16"}],
        "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float16"}],
        "onnx": {"path": str(path), "sha256": file_sha256(path)}, "calibration": None,
        "timing_cache": str(tmp_path / "timing-trt10.3.0.cache"), "device_profile": None,
        "model": "cbm-mobilenet", "arch": space.arch_to_json(arch), "hwbcnet_version": "0.1.0",
    }
    built = fake_trt.built_onnx()
    assert built.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert fake_trt.network_flags == 1 and fake_trt.flags_set == []  # strongly typed: no precision flags


def test_int8_engine_with_device_profile(exported, fake_trt, tmp_path, monkeypatch):
    path, *_ = exported
    monkeypatch.chdir(tmp_path)
    sidecar = export_tensorrt(path, tmp_path / "out" / "int8.engine", precision="int8", calib="digits",
                              calib_images=40, device_profile="jetson-orin-nano")
    assert sidecar["calibration"] == {"source": "digits", "images": 64}  # two batches of 32
    assert sidecar["device_profile"] == "jetson-orin-nano" and sidecar["batch"] == 1
    # The timing cache is the one the device's LUT builds share.
    assert sidecar["timing_cache"] == "lut/jetson-orin-nano/timing-trt10.3.0.cache"
    assert (tmp_path / "lut" / "jetson-orin-nano" / "timing-trt10.3.0.cache").read_bytes() == CACHE
    ops = Counter(node.op_type for node in fake_trt.built_onnx().graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert sidecar["inputs"][0]["dtype"] == "float32"  # Q/DQ models keep float I/O


def test_fp32_engine_at_a_chosen_batch(exported, fake_trt, tmp_path):
    path, *_ = exported
    sidecar = export_tensorrt(path, tmp_path / "b8.engine", precision="fp32", batch=8,
                              timing_cache=tmp_path / "my.cache")
    assert sidecar["inputs"] == [{"name": "input", "shape": [8, 3, 32, 32], "dtype": "float32"}]
    assert (tmp_path / "my.cache").read_bytes() == CACHE


def test_missing_tensorrt_is_a_one_line_install_hint(exported, tmp_path, monkeypatch):
    path, *_ = exported
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingRuntimeError) as info:
        export_tensorrt(path, tmp_path / "m.engine")
    message = str(info.value)
    assert "pip install tensorrt cuda-python" in message and "python3-libnvinfer" in message
    assert "\n" not in message and info.value.exit_code == 2
    assert not (tmp_path / "m.engine").exists()


def test_no_gpu(exported, fake_trt, tmp_path, monkeypatch):
    path, *_ = exported
    monkeypatch.setattr(sys.modules["cuda.bindings"], "runtime", fake_cudart(devices=0))
    with pytest.raises(MissingRuntimeError, match="no CUDA GPU is visible"):
        export_tensorrt(path, tmp_path / "m.engine")


def test_bad_requests(exported, tmp_path):
    path, *_ = exported
    with pytest.raises(HwbcnetError, match="precision 'bf16'"):
        export_tensorrt(path, tmp_path / "m.engine", precision="bf16")
    with pytest.raises(HwbcnetError, match="INT8 needs calibration images"):
        export_tensorrt(path, tmp_path / "m.engine", precision="int8")
    with pytest.raises(HwbcnetError, match="device cpu runs on onnxruntime"):
        export_tensorrt(path, tmp_path / "m.engine", device_profile="cpu")


def _gpu_available() -> bool:
    try:
        import tensorrt  # noqa: F401

        from hwbcnet.hardware.backends.tensorrt import import_cudart

        cudart = import_cudart()
        count = cudart.cudaGetDeviceCount()
        return count[0] == cudart.cudaError_t.cudaSuccess and count[1] > 0
    except (ImportError, MissingRuntimeError):
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs TensorRT, cuda-python and an NVIDIA GPU")
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
