import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from hwbcnet.errors import HwbcnetError
from hwbcnet.export.quantize import calibration_batches_from, insert_qdq

RESOLUTION = 16


class ResidualNet(torch.nn.Module):
    """Conv-BN-ReLU, a residual block (Conv-BN + identity, Add, ReLU), global pool and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
        )
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(self.bn(self.conv(y)) + y)
        return self.head(y.mean((2, 3)))


def _export(batch: int | None, opset: int = 17) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    for bn in (model.stem[1], model.bn):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    buffer = io.BytesIO()
    dynamic = None if batch else {"input": {0: "batch"}}
    torch.onnx.export(model, (torch.randn(batch or 2, 3, RESOLUTION, RESOLUTION),), buffer, opset_version=opset,
                      input_names=["input"], output_names=["logits"], dynamic_axes=dynamic, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def fp32_model():
    return _export(batch=None)


@pytest.fixture(scope="module")
def calibration():
    return calibration_batches_from("digits", RESOLUTION, n_batches=4, batch_size=16)


def _producers(model):
    return {output: node for node in model.graph.node for output in node.output}


def _run(model, images):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_qdq_placement_follows_tensorrt_rules(fp32_model, calibration):
    quantized = insert_qdq(fp32_model, calibration, per_channel=True)
    onnx.checker.check_model(quantized)
    assert max(entry.version for entry in quantized.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    producers = _producers(quantized)
    initializers = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    weighted = [node for node in quantized.graph.node if node.op_type in ("Conv", "Gemm")]
    assert [node.op_type for node in weighted] == ["Conv", "Conv", "Gemm"]
    for node in weighted:
        activation_dq = producers[node.input[0]]
        assert activation_dq.op_type == "DequantizeLinear" and producers[activation_dq.input[0]].op_type == "QuantizeLinear"
        assert initializers[activation_dq.input[1]].shape == ()  # per tensor
        assert initializers[activation_dq.input[2]].dtype == np.int8 and initializers[activation_dq.input[2]] == 0
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        weight = initializers[weight_dq.input[0]]
        assert weight.dtype == np.int8 and np.abs(weight).max() == 127  # symmetric: the largest weight maps to 127
        axis = next(onnx.helper.get_attribute_value(a) for a in weight_dq.attribute if a.name == "axis")
        assert axis == 0 and initializers[weight_dq.input[1]].shape == (weight.shape[0],)
        assert not initializers[weight_dq.input[2]].any()
        assert initializers[node.input[2]].dtype == np.float32  # bias stays float
    # nothing quantizes a Conv/Gemm output: TensorRT fuses BN/ReLU/Add into the convolution
    weighted_outputs = {out for node in weighted for out in node.output}
    assert not [n for n in quantized.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in weighted_outputs]
    assert sum(node.op_type == "QuantizeLinear" for node in quantized.graph.node) == 3
    # the residual Add reads the Q/DQ'd block input it shares with the convolution (TensorRT's residual fusion)
    add = next(node for node in quantized.graph.node if node.op_type == "Add")
    assert {producers[name].op_type for name in add.input} == {"Conv", "DequantizeLinear"}
    # max calibration: the input scale is max |x| / 127 over the calibration images
    input_q = next(node for node in quantized.graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "input")
    expected = np.abs(np.concatenate(calibration)).max() / 127
    assert initializers[input_q.input[1]] == pytest.approx(expected, rel=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", ["max", "percentile"])
def test_int8_outputs_stay_close_to_fp32(fp32_model, calibration, method):
    quantized = insert_qdq(fp32_model, calibration, method=method)
    images = calibration_batches_from("digits", RESOLUTION, n_batches=1, batch_size=128, seed=7)[0]
    reference, int8 = _run(fp32_model, images), _run(quantized, images)
    assert np.abs(int8 - reference).max() / np.abs(reference).max() < 0.05
    assert (int8.argmax(1) == reference.argmax(1)).mean() >= 0.95


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_per_tensor_weights_fixed_batch_and_old_opset(calibration):
    model = _export(batch=1, opset=13)  # a batch-1 input: calibration batches are split into single images
    quantized = insert_qdq(model, calibration, per_channel=False)
    assert [entry.version for entry in quantized.opset_import if entry.domain in ("", "ai.onnx")] == [17]  # upgraded
    initializers = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    producers = _producers(quantized)
    conv = next(node for node in quantized.graph.node if node.op_type == "Conv")
    assert initializers[producers[conv.input[1]].input[1]].shape == ()
    assert _run(quantized, calibration[0][:1]).shape == (1, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_calibration_errors(fp32_model, calibration):
    with pytest.raises(HwbcnetError, match="no batches"):
        insert_qdq(fp32_model, [])
    with pytest.raises(HwbcnetError, match="does not fit model input"):
        insert_qdq(fp32_model, calibration_batches_from("digits", 8, 1, 4))
    with pytest.raises(HwbcnetError, match="calibration method"):
        insert_qdq(fp32_model, calibration, method="entropy")
    with pytest.raises(HwbcnetError, match="multiple of the model's fixed batch size 2"):
        insert_qdq(_export(batch=2), [calibration[0][:3]])


def test_calibration_batches_from_specs_and_folders(tmp_path):
    from PIL import Image

    batches = calibration_batches_from("digits", 8, n_batches=3, batch_size=5)
    assert len(batches) == 3 and batches[0].shape == (5, 3, 8, 8) and batches[0].dtype == np.float32
    flat = np.concatenate(batches)
    assert len({row.tobytes() for row in flat}) == 15  # drawn without replacement
    assert np.array_equal(flat, np.concatenate(calibration_batches_from("digits", 8, 3, 5)))

    for i in range(3):
        Image.fromarray(np.full((10, 14, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    from_folder = calibration_batches_from(str(tmp_path), 8, n_batches=2, batch_size=3)  # 6 > 3 images: with replacement
    assert np.stack(from_folder).shape == (2, 3, 3, 8, 8)
    with pytest.raises(HwbcnetError, match="folder of"):
        calibration_batches_from(str(tmp_path / "nothing"), 8, 1, 1)
    with pytest.raises(HwbcnetError, match="at least one batch"):
        calibration_batches_from("digits", 8, 0, 4)
