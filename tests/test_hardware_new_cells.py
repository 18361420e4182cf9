"""LUT cells for the operators beyond conv/add/pool/linear: activations as torch exports them, squeeze-excitation
gates, grouped convs, concatenation, standalone norms and activations, channel shuffle; and the latency predictor
over layers whose input is a concatenation of several variables."""

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hardware_fakes import fast_profile
from hwbcnet.costs.latency import LatencyCost
from hwbcnet.hardware.cells import ACTIVATIONS, CellKey, arch_cells, cell_onnx, cell_shapes, enumerate_cells
from hwbcnet.hardware.lut import Lut
from hwbcnet.space import build_space

ACT_MODULES = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU(), "hardswish": nn.Hardswish(),
               "hardsigmoid": nn.Hardsigmoid(), "sigmoid": nn.Sigmoid(), "gelu": nn.GELU(),
               "gelu-tanh": nn.GELU(approximate="tanh"), "leakyrelu": nn.LeakyReLU(), "mish": nn.Mish(),
               "tanh": nn.Tanh(), "elu": nn.ELU(), "hardtanh": nn.Hardtanh()}


def _ops(model_bytes_or_proto) -> list[str]:
    model = model_bytes_or_proto if isinstance(model_bytes_or_proto, onnx.ModelProto) else \
        onnx.load_from_string(model_bytes_or_proto)
    return [node.op_type for node in model.graph.node if node.op_type != "Constant"]


def _export_ops(model: nn.Module, channels: int) -> list[str]:
    """The ops torch's exporter writes for `model` with BatchNorm folded, as hwbcnet.supernet.onnx exports."""
    import io
    import warnings

    from torch.fx.experimental.optimization import fuse

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fuse(model.eval()), (torch.zeros(1, channels, 8, 8),), buffer, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    return _ops(onnx.load_from_string(buffer.getvalue()))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_conv_cells_run_the_ops_torch_exports_for_each_activation(act):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), ACT_MODULES[act])
    exported = _export_ops(model, 4)
    cell = CellKey("conv", 4, 8, 8, 8, kernel=3, padding=1, bn=True, act=act)
    assert _ops(cell_onnx(cell, 1, "fp32")) == exported


def test_se_cell_runs_the_ops_of_an_exported_squeeze_excitation_block():
    from hwbcnet.space.models.common import SqueezeExcite

    block = SqueezeExcite(16, 4, nn.ReLU, nn.Hardsigmoid).eval()
    exported = _export_ops(block, 16)
    cell = CellKey("se", 16, 16, 8, 8, c_mid=4, bias=True, act="relu", gate="hardsigmoid")
    assert _ops(cell_onnx(cell, 1, "fp32")) == exported == ["GlobalAveragePool", "Conv", "Relu", "Conv",
                                                           "HardSigmoid", "Mul"]


EXTRA_CELLS = [
    CellKey("conv", 32, 32, 8, 8, kernel=3, padding=1, group_width=8, bn=True, act="relu"),  # grouped
    CellKey("conv", 8, 8, 8, 8, kernel=(1, 7), padding=(0, 3), bn=True, act="relu"),  # Inception's 1x7
    CellKey("concat", 48, 48, 8, 8, parts=3),
    CellKey("norm", 24, 24, 8, 8, norm="bn", act="relu"),
    CellKey("norm", 24, 24, 8, 8, norm="ln"),
    CellKey("act", 24, 24, 8, 8, act="silu"),
    CellKey("shuffle", 24, 24, 8, 8, groups=2),
    CellKey("mul", 24, 24, 8, 8),
    CellKey("se", 24, 24, 8, 8, c_mid=6, bias=True, act="silu", gate="sigmoid"),
]


@pytest.mark.parametrize("cell", EXTRA_CELLS, ids=str)
@pytest.mark.parametrize("shared", [True, False])
def test_new_cell_kinds_build_run_and_round_trip(cell, shared):
    assert CellKey.parse(str(cell)) == cell
    model = cell_onnx(cell, batch=2, precision="fp32", copies=3, shared_input=shared)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    in_shapes, out_shape = cell_shapes(cell, 2)
    rng = np.random.default_rng(0)
    feeds = {}
    for tensor in session.get_inputs():
        part = int(tensor.name.rpartition("_")[2]) if cell.kind == "concat" else 0
        feeds[tensor.name] = rng.standard_normal(in_shapes[part]).astype(np.float32)
    assert len(feeds) == len(in_shapes) * (1 if shared else 3)
    outputs = session.run(None, feeds)
    assert [list(o.shape) for o in outputs] == [out_shape] * 3
    if cell.kind == "shuffle":  # the cell computes torchvision's channel_shuffle
        x = torch.from_numpy(feeds[session.get_inputs()[0].name])
        shuffled = x.view(2, 2, 12, 8, 8).transpose(1, 2).reshape(2, 24, 8, 8)
        np.testing.assert_allclose(outputs[0], shuffled.numpy())


def test_fp16_cells_of_every_new_kind():
    for cell in EXTRA_CELLS:
        model = onnx.load_from_string(cell_onnx(cell, 1, "fp16", copies=2, shared_input=False))
        types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
        assert types == {onnx.TensorProto.FLOAT16}, cell


CONCAT_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    class Dense(nn.Module):
        """Stem, three concatenated branches (an Inception-like mix), a grouped conv and an SE gate."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = block(3, 16)
            self.a, self.b, self.c = block(16, 8), block(16, 12), block(16, 8)
            self.mix = block(28, 32)
            self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32),
                                         nn.SiLU())
            self.reduce, self.expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
            self.head = nn.Linear(32, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = self.grouped(self.mix(torch.cat([self.a(x), self.b(x), self.c(x)], 1)))
            gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x * gate, 1), 1))

    def build(num_classes=10):
        return Dense(num_classes)
''')


@pytest.fixture(scope="module")
def concat_space(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "dense.py"
    path.write_text(CONCAT_MODEL)
    return build_space(f"{path}:build", resolution=8, bins=4, min_bins=1)


def test_layers_of_a_concat_space(concat_space):
    kinds = [layer.kind for layer in concat_space.layers]
    assert kinds.count("se") == 1 and kinds.count("concat") == 1
    mix = next(layer for layer in concat_space.layers if layer.name == "mix.0")
    assert len(mix.inputs.segments) == 3 and mix.inputs.size == 28
    grouped = next(layer for layer in concat_space.layers if layer.name == "grouped.0")
    assert grouped.group_width == 8
    assert all(int(c) % 8 == 0 for c in concat_space.channels(concat_space.variables.index(
        next(v for v in concat_space.variables if "grouped.0" in v.members)), range(1, 5)))


def test_predictor_sums_and_expectation_over_concatenated_inputs(concat_space, tmp_path):
    import torch as torch_

    from hwbcnet.search.prior import sample_from_prior

    space = concat_space
    lut = Lut.new(tmp_path / "known.json", space, fast_profile(), {"device": "x"})
    rng = np.random.default_rng(3)
    known = {cell: float(rng.uniform(0.001, 1.0)) for cell in enumerate_cells(space)}
    for cell, value in known.items():
        lut.cells[lut.key(cell)] = {"median_ms": value, "stable": True}
    cost = LatencyCost(space, lut)
    archs = space.random_archs(rng, 300)
    expected = np.array([sum(known[c] for c in arch_cells(space, arch)) for arch in archs])
    np.testing.assert_allclose(cost(archs), expected, rtol=1e-12)
    probs = rng.dirichlet(np.ones(space.bins - space.min_bins + 1), size=space.num_vars)
    exact = float(cost.expectation(torch_.as_tensor(probs)))
    assert cost(sample_from_prior(space, probs, rng, 100_000)).mean() == pytest.approx(exact, rel=5e-3)
