"""TensorRT engine export: the ONNX model is first rewritten into the precision the engine should run in, then built
as a strongly typed network by the same `build_engine` the TensorRT latency backend uses (hardware/backends), so
TensorRT 10.3 (JetPack 6) and 11.x build it the same way and an engine runs what its LUT cells measured.

* fp32: the exported model as is, built with TF32 off (TensorRT's default would compute it in TF32 on Ampere and
  later, Orin included).
* fp16: inputs, outputs, weights and every intermediate tensor in float16 (onnxruntime's float16 converter, which
  ships with onnxruntime). A strongly typed network keeps exactly these types.
* int8: Q/DQ nodes on every Conv/Gemm input and weight (export/quantize.py), calibrated on `--calib` images in
  ONNX Runtime. TensorRT 11 removed implicit INT8 calibration, so explicit Q/DQ is the path that works on both.
  Layers without Q/DQ stay float32 (TF32 off here too).

The batch axis is fixed before the build (one engine per shape: no optimization profiles). Next to the engine goes
`<engine>.json` (kind "hwbcnet.engine", schema 1) recording what the engine is bound to: TensorRT version, GPU and
compute capability, precision, I/O names, shapes and dtypes, the source ONNX's path and sha256, the arch, and the
source's whole hwbcnet metadata (`metadata`: width space, arch, the device and latency predicted at export), so
`hwbcnet verify` can hold an engine against its LUT prediction without the ONNX file.

Only `onnx` and `onnxruntime` are needed besides TensorRT: an engine is built on the target from an ONNX file
exported elsewhere, with neither torch nor the supernet there (`hwbcnet export --from-onnx model.onnx --trt`).
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import numpy as np
import onnx

from hwbcnet.errors import HwbcnetError
from hwbcnet.export.onnx_export import load_onnx, read_export_metadata
from hwbcnet.fileio import atomic_write_bytes, atomic_write_json, file_sha256, read_json
from hwbcnet.supernet.onnx import to_fp16

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_KIND = "hwbcnet.engine"
ENGINE_SCHEMA_VERSION = 1
CALIBRATION_IMAGES = 512  # TensorRT's guidance: about 500 images cover the activation ranges of an ImageNet CNN
CALIBRATION_BATCH = 32
DEFAULT_WORKSPACE_MB = 1024


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise HwbcnetError(f"expected an ONNX model with one NCHW image input, found {[v.name for v in inputs]}")
    return inputs[0]


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The model's batch size, or None when the batch axis is dynamic."""
    dim = image_input(model).type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def with_static_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose dynamic batch axis is set to `batch` (inputs, outputs, re-inferred intermediate shapes). A model
    exported with another fixed batch is refused: its graph may depend on that batch."""
    current = fixed_batch(model)
    if current is not None:
        if current != batch:
            raise HwbcnetError(f"the ONNX model has a fixed batch of {current}, not {batch}; export it with "
                               f"--batch {batch} or --dynamic-batch")
        return model
    model = copy.deepcopy(model)
    for value in [image_input(model), *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def calibration_plan(images: int, batch: int) -> tuple[int, int]:
    """(batches, batch size) for at least `images` calibration images; the batch size is a multiple of the
    model's fixed batch, which the calibrator splits every batch into."""
    if images < 1:
        raise HwbcnetError(f"calibration images {images}: need at least 1")
    batch_size = batch * max(1, CALIBRATION_BATCH // batch)
    return -(-images // batch_size), batch_size


def prepare_onnx(model: onnx.ModelProto, precision: str, *, batch: int, calib: str | None = None,
                 calib_images: int = CALIBRATION_IMAGES) -> onnx.ModelProto:
    """The ONNX model TensorRT builds for `precision`: static batch, then fp16 types or INT8 Q/DQ (calibrated on
    `calib` images: `digits`, a data spec or an image folder)."""
    if precision not in PRECISIONS:
        raise HwbcnetError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    model = with_static_batch(model, batch)
    if precision == "fp16":
        return to_fp16(model)
    if precision == "int8":
        from hwbcnet.export.quantize import calibration_batches_from, insert_qdq

        if calib is None:
            raise HwbcnetError("INT8 needs calibration images: --calib digits, --calib <data spec> or --calib <dir>")
        n_batches, batch_size = calibration_plan(calib_images, batch)
        resolution = image_input(model).type.tensor_type.shape.dim[2].dim_value
        try:
            batches = calibration_batches_from(calib, resolution, n_batches, batch_size)
        except ImportError as exc:
            if exc.name != "torch":
                raise
            raise HwbcnetError("INT8 calibration reads its images with torch, which is not installed here (a Jetson "
                               "image without torch): install torch (docs/jetson.md) or build an fp16 engine") from None
        return insert_qdq(model, batches)
    return model


def io_tensors(model: onnx.ModelProto) -> dict:
    """Names, shapes and numpy dtype names of the model's inputs and outputs (the engine's, under strong typing)."""
    def describe(value):
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in tensor.shape.dim]
        return {"name": value.name, "shape": shape,
                "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name}

    return {"inputs": [describe(image_input(model))], "outputs": [describe(value) for value in model.graph.output]}


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def engine_sidecar(*, engine_path: Path, onnx_path: Path, metadata: dict, prepared: onnx.ModelProto, precision: str,
                   batch: int, tensorrt_version: str, gpu: dict, timing_cache: Path,
                   calibration: dict | None, device_profile: str | None) -> dict:
    """The `<engine>.json` record; `metadata` is the source ONNX's hwbcnet metadata (empty for a foreign model)."""
    from hwbcnet import __version__

    return {
        "kind": ENGINE_KIND,
        "schema_version": ENGINE_SCHEMA_VERSION,
        "engine": engine_path.name,
        "engine_sha256": file_sha256(engine_path),
        "tensorrt_version": tensorrt_version,
        "strongly_typed": True,  # every engine: the ONNX types are the engine's
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "precision": precision,
        "batch": batch,
        **io_tensors(prepared),
        "onnx": {"path": str(onnx_path), "sha256": file_sha256(onnx_path)},
        "calibration": calibration,
        "timing_cache": str(timing_cache),
        "device_profile": device_profile,
        "model": metadata.get("model"),
        "arch": metadata.get("arch"),
        "metadata": metadata,
        "hwbcnet_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_tensorrt(onnx_path: str | Path, engine_path: str | Path | None = None, *, precision: str | None = None,
                    calib: str | None = None, timing_cache: str | Path | None = None, device_profile=None,
                    batch: int | None = None, calib_images: int = CALIBRATION_IMAGES) -> dict:
    """Build a TensorRT engine from an exported ONNX model; write the engine, its timing cache and `<engine>.json`.

    `engine_path` defaults to the ONNX path with the suffix .engine. `device_profile` (a Profile or a profile
    name, tensorrt backend; `jetson`/`gpu` for this machine's own): its precision (unless `precision` is given),
    batch and workspace are used and the timing cache defaults to the one its LUT builds share
    (lut/<device>/timing-trt<version>.cache). Otherwise the precision is fp32 and the cache goes next to the
    engine. `batch` defaults to the model's fixed batch, the profile's, or 1. Returns the sidecar record. Needs
    TensorRT and a GPU: MissingRuntimeError otherwise."""
    from hwbcnet.hardware.backends.tensorrt import (
        build_engine,
        gpu_properties,
        import_cudart,
        import_tensorrt,
        tensorrt_major,
        timing_cache_path,
    )
    from hwbcnet.hardware.profiles import load_profile

    if precision is not None and precision not in PRECISIONS:
        raise HwbcnetError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    profile = load_profile(device_profile) if isinstance(device_profile, (str, Path)) else device_profile
    if profile is not None and profile.backend != "tensorrt":
        raise HwbcnetError(f"device {profile.name} runs on {profile.backend}; a TensorRT engine needs a tensorrt "
                           "device profile such as gpu or jetson-orin-nano")
    precision = precision or (profile.precision if profile else "fp32")
    if precision == "int8" and calib is None:
        raise HwbcnetError("INT8 needs calibration images: --calib digits, --calib <data spec> or --calib <dir>")
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    source = load_onnx(onnx_path)
    trt = import_tensorrt()  # before the model preparation: a machine without TensorRT fails at once
    tensorrt_major(trt)
    gpu = gpu_properties(import_cudart())
    batch = batch or fixed_batch(source) or (profile.batch if profile else 1)
    prepared = prepare_onnx(source, precision, batch=batch, calib=calib, calib_images=calib_images)
    if timing_cache is None:
        timing_cache = timing_cache_path(Path("lut") / profile.name if profile else engine_path.parent, trt)
    plan = build_engine(prepared.SerializeToString(), timing_cache,
                        workspace_mb=profile.workspace_mb if profile else DEFAULT_WORKSPACE_MB, trt=trt)
    atomic_write_bytes(engine_path, plan)
    sidecar = engine_sidecar(
        engine_path=engine_path, onnx_path=onnx_path, metadata=read_export_metadata(source), prepared=prepared,
        precision=precision, batch=batch, tensorrt_version=str(trt.__version__), gpu=gpu,
        timing_cache=Path(timing_cache),
        calibration={"source": calib, "images": int(np.prod(calibration_plan(calib_images, batch)))}
        if precision == "int8" else None,
        device_profile=profile.name if profile else None,
    )
    atomic_write_json(sidecar_path(engine_path), sidecar)
    return sidecar


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def is_engine(path: str | Path) -> bool:
    """Whether `path` names a TensorRT engine (by its suffix, or by the `<engine>.json` written next to it)."""
    path = Path(path)
    return path.suffix.lower() in ENGINE_SUFFIXES or sidecar_path(path).is_file()


def read_engine(path: str | Path) -> tuple[bytes, dict | None]:
    """(plan bytes, sidecar record or None for an engine hwbcnet did not build)."""
    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"{path}: engine not found; build it with `hwbcnet export --from-onnx <model.onnx> --trt`")
    sidecar = sidecar_path(path)
    record = read_json(sidecar, kind=ENGINE_KIND, schema_version=ENGINE_SCHEMA_VERSION) if sidecar.is_file() else None
    return path.read_bytes(), record
