import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware_fakes import TinySpace
from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.cells import (CellKey, arch_cells, cell_onnx, cell_shapes, enumerate_cells, lut_key,
                                    needs_baseline)
from hwbcnet.space import build_space


@pytest.fixture(scope="module")
def resnet20():
    return build_space("resnet20")


def test_tiny_space_cells_are_exactly_the_reachable_ones():
    space = TinySpace()
    cells = enumerate_cells(space)
    # stem 3 out widths, conv1 3x3 width pairs, conv2 3x3, depthwise 3, add 3, pool 3, linear 3 (all distinct)
    assert len(cells) == 3 + 9 + 9 + 3 + 3 + 3 + 3
    depthwise = [c for c in cells if c.depthwise]
    assert all(c.group_width == 1 for c in depthwise)
    assert sorted((c.c_in, c.c_out) for c in depthwise) == [(4, 4), (6, 6), (8, 8)]
    stem = [c for c in cells if c.c_in == 3]
    assert sorted(c.c_out for c in stem) == [4, 6, 8]
    assert {c.c_out for c in cells if c.kind == "linear"} == {10}


def _covers_exactly(space):
    """Every enumerated cell is used by some arch and every arch uses only enumerated cells: for each layer, all
    width combinations of the variables it depends on (the others at full width)."""
    import itertools

    enumerated = set(enumerate_cells(space))
    used = set()
    for index, layer in enumerate(space.layers):
        variables = sorted({v for axis in layer.axes for v in axis.vars})
        for widths in itertools.product(space.choices, repeat=len(variables)):
            arch = space.full_arch().copy()
            arch[variables] = widths
            used.add(arch_cells(space, arch)[index])
    assert used == enumerated


def test_enumeration_covers_exactly_the_cells_archs_use(resnet20):
    _covers_exactly(TinySpace())
    _covers_exactly(resnet20)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_random_arch_uses_only_enumerated_cells(resnet20, seed):
    cells = set(enumerate_cells(resnet20))
    for arch in resnet20.random_archs(np.random.default_rng(seed), 20):
        used = arch_cells(resnet20, arch)
        assert len(used) == len(resnet20.layers) and set(used) <= cells


def test_cell_key_string_round_trips(resnet20):
    for cell in enumerate_cells(resnet20) + enumerate_cells(TinySpace()):
        assert CellKey.parse(str(cell)) == cell
        assert CellKey.parse(lut_key(cell, "b1 fp32 ort-t1-all")) == cell
    cell = CellKey("conv", 16, 24, 32, 32, kernel=3, stride=1, padding=1, bn=True, act="relu")
    assert str(cell) == "conv k3 s1 p1 bn relu 16->24 32x32"
    with pytest.raises(HwbcnetError):
        CellKey.parse("conv k3 16->24")


def test_add_cell_is_measured_inside_a_conv_against_a_baseline_without_the_add():
    add = CellKey("add", 8, 8, 4, 4, act="relu")
    assert needs_baseline(add) and not needs_baseline(CellKey("conv", 8, 8, 4, 4))
    ops = [n.op_type for n in onnx.load_from_string(cell_onnx(add, 1, "fp32")).graph.node]
    baseline = [n.op_type for n in onnx.load_from_string(cell_onnx(add, 1, "fp32", baseline=True)).graph.node]
    assert ops == ["Conv", "Conv", "Add", "Relu"] and baseline == ["Conv", "Conv", "Relu"]


@pytest.mark.parametrize("shared", [True, False])
def test_cell_models_run_with_the_expected_shapes(shared):
    rng = np.random.default_rng(0)
    for cell in enumerate_cells(TinySpace())[::4]:
        model = cell_onnx(cell, batch=2, precision="fp32", copies=3, shared_input=shared)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        assert len(session.get_inputs()) == (1 if shared else 3)
        in_shapes, out_shape = cell_shapes(cell, 2)
        feeds = {i.name: rng.standard_normal(in_shapes[0]).astype(np.float32) for i in session.get_inputs()}
        outputs = session.run(None, feeds)
        assert [list(o.shape) for o in outputs] == [out_shape] * 3


def test_fp16_cells_are_fp16_end_to_end():
    cell = CellKey("conv", 8, 16, 8, 8, kernel=3, padding=1, bn=True, act="relu6")
    model = onnx.load_from_string(cell_onnx(cell, 1, "fp16", copies=2, shared_input=False))
    assert model.opset_import[0].version == 17
    types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert types == {onnx.TensorProto.FLOAT16}
    assert {init.data_type for init in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert [n.op_type for n in model.graph.node] == ["Conv", "Clip"] * 2
