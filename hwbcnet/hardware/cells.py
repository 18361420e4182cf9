"""LUT cells: the units a runtime executes, and the ONNX models that measure them.

A cell is one `Layer` at concrete channel counts: a convolution with its BatchNorm and activation (both fused by
ONNX Runtime and TensorRT), a linear layer, a pooling layer, or a residual add with its activation. `CellKey` holds
every shape parameter; its string form (`conv k3 s1 p1 bn relu 16->24 32x32`) is the key in a LUT file, followed by
the profile's settings tag (`| b1 fp32 ort-t1-all`).

How a cell is measured (differential measurement, deploy.md section 4.2). A model holding one cell counts the fixed
per-run cost (the run call, input/output handling, layout reorders at the model's edges) in full, which a cell
inside a real network does not pay. So each cell is measured in models with k copies for several k and its time is
the least-squares slope over k. The copies are *parallel branches*, not a chain: in a width space almost every
convolution changes the channel count (its input and output widths are different variables), so identical copies
cannot be chained; branches work for every cell, which keeps the remaining per-copy bias (writing one more output)
uniform across cells, and the calibration T = a + b * sum absorbs it. ONNX Runtime branches share one input (it
does not merge parallel convolutions); TensorRT branches get one input each, because TensorRT fuses parallel
convolutions that read the same tensor into one wider convolution, which would hide the per-copy cost.

The residual add is not executed on its own: both runtimes fuse it into the epilogue of the convolution that
produces one of its operands (ORT's NCHWc Conv+Sum fusion, TensorRT's conv+eltwise fusion), when the other operand
is an intermediate tensor of the network (in ORT: already in the NCHWc layout). An add cell is therefore measured
as branches act(conv1x1(r) + r) with r = conv1x1(x), minus the same models without the add (`baseline=True`): the
marginal cost of the add inside a convolution, which is what the real network pays.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwbcnet.errors import HwbcnetError

OPSET = 17
_DTYPES = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}


@dataclass(frozen=True, order=True)
class CellKey:
    kind: str  # conv | linear | add | pool
    c_in: int
    c_out: int
    h: int  # input height and width
    w: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    bn: bool = False
    bias: bool = False
    act: str | None = None  # relu | relu6
    pool: str | None = None  # avg | max (kind pool only)

    @property
    def groups(self) -> int:
        return self.c_in if self.depthwise else 1

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind in ("linear", "add"):
            return self.h, self.w
        if self.kind == "pool" and self.is_global_pool:
            return 1, 1
        return tuple((size + 2 * self.padding - self.kernel) // self.stride + 1 for size in (self.h, self.w))

    @property
    def is_global_pool(self) -> bool:
        return self.kind == "pool" and self.pool == "avg" and self.kernel == self.h and self.kernel == self.w and self.padding == 0

    def __str__(self) -> str:
        parts = [self.kind]
        if self.kind in ("conv", "pool"):
            parts += [f"k{self.kernel}", f"s{self.stride}", f"p{self.padding}"]
        parts += [flag for flag, on in (("dw", self.depthwise), ("bn", self.bn), ("bias", self.bias)) if on]
        parts += [name for name in (self.pool, self.act) if name]
        parts += [f"{self.c_in}->{self.c_out}", f"{self.h}x{self.w}"]
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> "CellKey":
        """Inverse of str(); also accepts a full LUT key (the settings tag after ` | ` is ignored)."""
        tokens = text.split(" | ")[0].split()
        if not tokens or tokens[0] not in ("conv", "linear", "add", "pool"):
            raise HwbcnetError(f"cell key {text!r}: expected it to start with conv, linear, add or pool")
        fields: dict = {"kind": tokens[0]}
        for token in tokens[1:]:
            if match := re.fullmatch(r"([ksp])(\d+)", token):
                fields[{"k": "kernel", "s": "stride", "p": "padding"}[match.group(1)]] = int(match.group(2))
            elif match := re.fullmatch(r"(\d+)->(\d+)", token):
                fields["c_in"], fields["c_out"] = int(match.group(1)), int(match.group(2))
            elif match := re.fullmatch(r"(\d+)x(\d+)", token):
                fields["h"], fields["w"] = int(match.group(1)), int(match.group(2))
            elif token in ("dw", "bn", "bias"):
                fields[{"dw": "depthwise"}.get(token, token)] = True
            elif token in ("relu", "relu6"):
                fields["act"] = token
            elif token in ("avg", "max"):
                fields["pool"] = token
            else:
                raise HwbcnetError(f"cell key {text!r}: unknown token {token!r}")
        if not {"c_in", "h"} <= set(fields):
            raise HwbcnetError(f"cell key {text!r}: missing the channels (a->b) or the size (HxW)")
        return cls(**fields)

    def to_json(self) -> dict:
        return asdict(self)


def lut_key(cell: CellKey, settings_tag: str) -> str:
    """The key of a cell in a LUT: the cell plus the profile's settings (batch, precision, backend settings)."""
    return f"{cell} | {settings_tag}"


def cell_for_layer(layer, c_in: int, c_out: int) -> CellKey:
    h, w = layer.in_hw
    if layer.kind == "linear":
        h = w = 1
    return CellKey(
        kind=layer.kind, c_in=int(c_in), c_out=int(c_out), h=int(h), w=int(w),
        kernel=int(layer.kernel) if layer.kind in ("conv", "pool") else 1,
        stride=int(layer.stride) if layer.kind in ("conv", "pool") else 1,
        padding=int(layer.padding) if layer.kind in ("conv", "pool") else 0,
        depthwise=bool(layer.depthwise), bn=bool(layer.bn), bias=bool(layer.bias), act=layer.act,
        pool=getattr(layer, "pool", None) if layer.kind == "pool" else None,
    )


def _var_choices(space, var: int | None) -> list[int]:
    # A fixed (None) variable is looked up at bin N: the predictor appends a constant column of N for it.
    return [space.bins] if var is None else list(space.choices)


def _channels(space, var: int | None, bins: int, full: int) -> int:
    return int(full) if var is None else int(space.channels(var, bins))


def layer_cells(layer, space) -> list[tuple[int, int, CellKey]]:
    """Every (in bins, out bins, cell) the layer can take in the space. When input and output are the same
    variable (depthwise convs, adds, pools, or a conv inside a residual stage) only equal bins are reachable."""
    rows = []
    for b_in in _var_choices(space, layer.in_var):
        for b_out in _var_choices(space, layer.out_var):
            if layer.in_var is not None and layer.in_var == layer.out_var and b_in != b_out:
                continue
            c_in = _channels(space, layer.in_var, b_in, layer.in_channels)
            c_out = _channels(space, layer.out_var, b_out, layer.out_channels)
            rows.append((b_in, b_out, cell_for_layer(layer, c_in, c_out)))
    return rows


def cells_for_layer(layer, space) -> set[CellKey]:
    return {cell for _, _, cell in layer_cells(layer, space)}


def enumerate_cells(space) -> list[CellKey]:
    """The deduplicated set of cells that any arch of the space executes, sorted."""
    cells: set[CellKey] = set()
    for layer in space.layers:
        cells |= cells_for_layer(layer, space)
    return sorted(cells, key=str)


def arch_cells(space, arch) -> list[CellKey]:
    """The cell each layer executes for one arch (one entry per layer, in layer order)."""
    arch = np.append(np.asarray(arch, dtype=np.int64), space.bins)  # index -1 (fixed variables) -> bin N
    cells = []
    for layer in space.layers:
        b_in = arch[-1 if layer.in_var is None else layer.in_var]
        b_out = arch[-1 if layer.out_var is None else layer.out_var]
        c_in = _channels(space, layer.in_var, b_in, layer.in_channels)
        c_out = _channels(space, layer.out_var, b_out, layer.out_channels)
        cells.append(cell_for_layer(layer, c_in, c_out))
    return cells


def needs_baseline(cell: CellKey) -> bool:
    """Whether the cell's time is its models' time minus that of baseline models (add cells, see above)."""
    return cell.kind == "add"


# ---------------------------------------------------------------------------------------------------- ONNX models


class _Graph:
    """Accumulates nodes and random initializers for one cell model."""

    def __init__(self, precision: str, rng: np.random.Generator):
        self.dtype, self.onnx_type = _DTYPES[precision]
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []

    def weight(self, name: str, shape, scale: float = 1.0) -> str:
        values = self.rng.standard_normal(shape) * scale
        self.inits.append(numpy_helper.from_array(values.astype(self.dtype), name))
        return name

    def constant(self, name: str, value: float) -> str:
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=self.dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def activation(self, x: str, act: str | None, prefix: str) -> str:
        if act == "relu":
            return self.node("Relu", [x], f"{prefix}_relu")
        if act == "relu6":
            # torch exports ReLU6 as Clip(0, 6); both runtimes fuse Conv+Clip.
            low, high = self.constant(f"{prefix}_min", 0.0), self.constant(f"{prefix}_max", 6.0)
            return self.node("Clip", [x, low, high], f"{prefix}_clip")
        if act is None:
            return x
        raise HwbcnetError(f"activation {act!r} is not supported in LUT cells (relu, relu6 or none)")

    def conv(self, x: str, cell: CellKey, prefix: str) -> str:
        fan_in = cell.c_in // cell.groups * cell.kernel ** 2
        inputs = [x, self.weight(f"{prefix}_w", (cell.c_out, cell.c_in // cell.groups, cell.kernel, cell.kernel),
                                 scale=1.0 / np.sqrt(fan_in))]
        # BatchNorm appears folded into the conv's bias, as in a model exported from PyTorch in eval mode (and as
        # both runtimes execute it anyway).
        if cell.bias or cell.bn:
            inputs.append(self.weight(f"{prefix}_b", (cell.c_out,), scale=0.1))
        return self.node("Conv", inputs, f"{prefix}_conv", kernel_shape=[cell.kernel] * 2, strides=[cell.stride] * 2,
                         pads=[cell.padding] * 4, group=cell.groups)

    def branch(self, x: str, cell: CellKey, prefix: str, baseline: bool) -> str:
        if cell.kind == "conv":
            return self.activation(self.conv(x, cell, prefix), cell.act, prefix)
        if cell.kind == "add":
            proxy = CellKey("conv", cell.c_out, cell.c_out, cell.h, cell.w, bias=True)
            residual = self.conv(x, proxy, f"{prefix}_r")
            y = self.conv(residual, proxy, prefix)
            if not baseline:
                y = self.node("Add", [y, residual], f"{prefix}_add")
            return self.activation(y, cell.act, prefix)
        if cell.kind == "linear":
            inputs = [x, self.weight(f"{prefix}_w", (cell.c_out, cell.c_in), scale=1.0 / np.sqrt(cell.c_in))]
            if cell.bias:
                inputs.append(self.weight(f"{prefix}_b", (cell.c_out,), scale=0.1))
            return self.activation(self.node("Gemm", inputs, f"{prefix}_gemm", transB=1), cell.act, prefix)
        if cell.kind == "pool":
            if cell.is_global_pool:
                return self.node("GlobalAveragePool", [x], f"{prefix}_gap")
            op = {"avg": "AveragePool", "max": "MaxPool"}[cell.pool]
            return self.node(op, [x], f"{prefix}_pool", kernel_shape=[cell.kernel] * 2, strides=[cell.stride] * 2,
                             pads=[cell.padding] * 4)
        raise HwbcnetError(f"cell kind {cell.kind!r} cannot be measured")


def cell_shapes(cell: CellKey, batch: int) -> tuple[list[int], list[int]]:
    """(input shape, output shape) of one copy of the cell."""
    if cell.kind == "linear":
        return [batch, cell.c_in], [batch, cell.c_out]
    out_h, out_w = cell.out_hw
    return [batch, cell.c_in, cell.h, cell.w], [batch, cell.c_out, out_h, out_w]


def cell_onnx(cell: CellKey, batch: int, precision: str, copies: int = 1, shared_input: bool = True,
              baseline: bool = False, seed: int = 0) -> bytes:
    """An ONNX model (opset 17) with `copies` parallel branches of the cell, random weights, inputs and outputs in
    the target precision (fp16 models build as fp16 strongly typed TensorRT networks). With `shared_input` all
    branches read input `x`; otherwise branch i reads `x{i}`. Branch i writes output `y{i}`. `baseline`: the
    model subtracted from an add cell's (its branches without the add)."""
    if precision not in _DTYPES:
        raise HwbcnetError(f"precision {precision!r} is not one of {', '.join(_DTYPES)}")
    if copies < 1:
        raise HwbcnetError("a cell model needs at least one copy")
    graph = _Graph(precision, np.random.default_rng(seed))
    in_shape, out_shape = cell_shapes(cell, batch)
    input_names = ["x"] if shared_input else [f"x{i}" for i in range(copies)]
    outputs = []
    for i in range(copies):
        graph.branch(input_names[0] if shared_input else input_names[i], cell, f"c{i}", baseline)
        graph.nodes[-1].output[0] = f"y{i}"  # every branch ends with the node that produces its result
        outputs.append(f"y{i}")
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, f"cell_{cell.kind}",
            [helper.make_tensor_value_info(name, graph.onnx_type, in_shape) for name in input_names],
            [helper.make_tensor_value_info(name, graph.onnx_type, out_shape) for name in outputs],
            initializer=graph.inits,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="hwbcnet",
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()
