"""INT8 for TensorRT through explicit QuantizeLinear/DequantizeLinear (Q/DQ) nodes.

TensorRT 10 builds INT8 engines from Q/DQ in the ONNX graph, and TensorRT 11 accepts nothing else (implicit INT8
calibrators were removed). The Q/DQ are inserted by ONNX Runtime's static quantizer (`quantize_static`, QDQ
format), configured for TensorRT's explicit-quantization placement rules:

* activations feeding Conv/Gemm: one per-tensor symmetric int8 Q->DQ pair (zero point 0), scale from calibration
  (max |x|, or a percentile of |x|) over the calibration batches, run in ONNX Runtime on CPU;
* weights of Conv/Gemm: int8 initializers + DequantizeLinear, per output channel (axis 0; `per_channel=True`) or
  per tensor, symmetric (TensorRT requires zero points of 0);
* no Q/DQ on Conv/Gemm outputs or biases, nothing around BatchNorm/ReLU/Add/pooling: TensorRT fuses those into
  the convolution. A tensor that feeds both a Conv and a residual Add shares its Q/DQ pair, which is the residual
  quantization TensorRT needs to fuse the Add into the preceding convolution.

ONNX Runtime's quantizer is used rather than hand-written graph surgery: it is maintained, runs offline, and its
output with these options is exactly the placement above (tests/test_quantize.py checks every node).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from hwbcnet.errors import HwbcnetError

QUANTIZED_OPS = ("Conv", "Gemm")
MIN_OPSET = 17
CALIBRATION_METHODS = ("max", "percentile")


def insert_qdq(
    model: onnx.ModelProto,
    calibration_batches: Iterable[np.ndarray],
    per_channel: bool = True,
    method: str = "max",
    percentile: float = 99.999,
) -> onnx.ModelProto:
    """Return a copy of the fp32 `model` with INT8 Q/DQ on the inputs and weights of every Conv and Gemm.

    `calibration_batches`: float32 arrays (N, C, H, W) preprocessed exactly like deployment inputs; a model with a
    fixed batch size B accepts any N divisible by B. `method`: "max" (max |activation|, no clipping) or
    "percentile" (the `percentile` of |activation|, histogram-based, clips rare outliers).
    The result is opset >= 17 and passes onnx.checker."""
    if method not in CALIBRATION_METHODS:
        raise HwbcnetError(f"calibration method {method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
    model = _at_least_opset(model, MIN_OPSET)
    input_name, input_shape = _image_input(model)
    options = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT adds the bias in float after the int8 convolution
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        "CalibTensorRangeSymmetric": True,
    }
    # "max" needs no memory option: its calibration model reduces each tensor to min/max inside ONNX Runtime.
    # (Do not set CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards the ranges collected so far.)
    if method == "percentile":
        options["CalibPercentile"] = percentile
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise HwbcnetError("INT8 calibration got no batches; pass calibration images (--calib digits or --calib <dir>)")
    reader = _CalibrationReader(input_name, input_shape, itertools.chain([first], batches))
    with tempfile.TemporaryDirectory(prefix="hwbcnet-qdq-") as workdir, _quiet_quantizer():
        source, target = Path(workdir) / "fp32.onnx", Path(workdir) / "int8_qdq.onnx"
        onnx.save(model, source)
        quantize_static(
            str(source),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax if method == "max" else CalibrationMethod.Percentile,
            extra_options=options,
        )
        quantized = onnx.load(target)
    onnx.checker.check_model(quantized)
    return quantized


def calibration_batches_from(spec: str, resolution: int, n_batches: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """`n_batches` float32 arrays (batch_size, 3, R, R) for `--calib`: a data spec (digits, cifar10:<dir>,
    imagefolder:<dir>, synthetic) draws training images with evaluation preprocessing (never the test split);
    a bare folder is read as imagefolder:<dir> when it has train/, else as a folder of images (ImageNet
    normalization). Preprocessing must match what the model was trained on. Samples without replacement while
    the source has enough images."""
    from hwbcnet.data import DATA_KINDS, load_data, unlabeled_images

    if n_batches < 1 or batch_size < 1:
        raise HwbcnetError(f"calibration needs at least one batch of one image (got {n_batches} x {batch_size})")
    folder = Path(spec).expanduser()
    if spec.partition(":")[0] in DATA_KINDS:
        dataset = load_data(spec, resolution).train_eval
    elif (folder / "train").is_dir():
        dataset = load_data(f"imagefolder:{folder}", resolution).train_eval
    else:
        dataset = unlabeled_images(folder, resolution)
    wanted = n_batches * batch_size
    rng = np.random.RandomState(seed)
    picks = rng.permutation(len(dataset))[:wanted] if wanted <= len(dataset) else rng.randint(len(dataset), size=wanted)
    images = np.stack([dataset[int(i)][0].numpy() for i in picks]).astype(np.float32)
    return list(images.reshape(n_batches, batch_size, *images.shape[1:]))


class _CalibrationReader(CalibrationDataReader):
    """The user's batches as onnxruntime calibration feeds, each split to the model's fixed batch size."""

    def __init__(self, input_name: str, input_shape: list[int | None], batches: Iterator[np.ndarray]):
        self.input_name, self.input_shape = input_name, input_shape
        self.feeds = self._split(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)

    def _split(self, batches: Iterator[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        shape = self.input_shape
        for batch in batches:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            if batch.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape[1:], batch.shape[1:])):
                raise HwbcnetError(
                    f"calibration batch of shape {tuple(batch.shape)} does not fit model input {self.input_name!r} "
                    f"{tuple('N' if d is None else d for d in shape)}; calibrate at the model's resolution"
                )
            chunk = shape[0] or len(batch)
            if len(batch) % chunk:
                raise HwbcnetError(
                    f"calibration batch size {len(batch)} is not a multiple of the model's fixed batch size {chunk}"
                )
            for start in range(0, len(batch), chunk):
                yield {self.input_name: batch[start : start + chunk]}


def _image_input(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """The single graph input that is not an initializer, with its dims (None = symbolic)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = [value.name for value in inputs]
        raise HwbcnetError(f"INT8 calibration expects a model with one image input, found {len(inputs)}: {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]


def _at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if current is None or current >= opset:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, opset)


@contextlib.contextmanager
def _quiet_quantizer():
    """quantize_static logs a root-logger warning recommending its optional pre-processing step (shape
    inference and graph fusions; exported graphs already have BatchNorm folded), and the percentile calibrator
    prints progress to stdout; hide both for the duration of the call."""

    def drop_preprocess_advice(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop_preprocess_advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(drop_preprocess_advice)
