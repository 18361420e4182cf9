"""LUT cells: the units a runtime executes, and the ONNX models that measure them.

A cell is one `Layer` (hwbcnet/space/layers.py) at concrete channel counts: a convolution (dense, depthwise or
grouped) with its BatchNorm and activation (both fused by ONNX Runtime and TensorRT), a linear layer
(+activation), a residual add (+activation), a squeeze-excitation gate, a pooling, a concatenation, a standalone
norm or activation, a channel shuffle, a broadcast mul. `CellKey` holds every shape parameter; its string form
(`conv k3 s1 p1 bn relu 16->24 32x32`) is the key in a LUT file, followed by the profile's settings tag
(`| b1 fp32 ort-t1-all`). How each kind is built as ONNX is one entry of `_BRANCH_BUILDERS`.

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

Activations are built as torch's ONNX exporter (opset 17) writes them, so a cell runs the ops the exported model
runs (SiLU as Sigmoid+Mul, GELU with Erf, Hardswish as HardSwish, ...).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwbcnet.errors import HwbcnetError

OPSET = 17
_DTYPES = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}
KINDS = ("conv", "linear", "add", "mul", "pool", "se", "concat", "norm", "act", "shuffle")
ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "hardsigmoid", "sigmoid", "gelu", "gelu-tanh", "leakyrelu",
               "mish", "tanh", "elu", "hardtanh")
NORMS = ("bn", "ln", "gn")


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _spatial(prefix: str, value: tuple[int, int]) -> str:
    return f"{prefix}{value[0]}" if value[0] == value[1] else f"{prefix}{value[0]}x{value[1]}"


@dataclass(frozen=True, order=True)
class CellKey:
    kind: str  # see KINDS
    c_in: int
    c_out: int
    h: int  # input height and width
    w: int
    kernel: tuple[int, int] | int = (1, 1)
    stride: tuple[int, int] | int = (1, 1)
    padding: tuple[int, int] | int = (0, 0)
    group_width: int = 0  # conv: 0 dense, 1 depthwise, g channels per group
    bn: bool = False
    bias: bool = False
    act: str | None = None  # see ACTIVATIONS
    pool: str | None = None  # avg | max (kind pool only)
    c_mid: int = 0  # se: the reduced width
    gate: str | None = None  # se: sigmoid | hardsigmoid
    parts: int = 1  # concat: operands
    norm: str | None = None  # norm: bn | ln | gn
    groups: int = 1  # shuffle: groups

    def __post_init__(self):
        for name in ("kernel", "stride", "padding"):
            object.__setattr__(self, name, _pair(getattr(self, name)))

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.group_width == 1

    @property
    def conv_groups(self) -> int:
        return self.c_in // self.group_width if self.group_width else 1

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind != "conv" and self.kind != "pool":
            return self.h, self.w
        if self.is_global_pool:
            return 1, 1
        return tuple((size + 2 * p - k) // s + 1 for size, p, k, s in zip((self.h, self.w), self.padding, self.kernel,
                                                                            self.stride))

    @property
    def is_global_pool(self) -> bool:
        return self.kind == "pool" and self.pool == "avg" and self.kernel == (self.h, self.w) and self.padding == (0, 0)

    def __str__(self) -> str:
        parts = [self.kind]
        if self.kind in ("conv", "pool"):
            parts += [_spatial("k", self.kernel), _spatial("s", self.stride), _spatial("p", self.padding)]
        if self.kind == "conv" and self.group_width:
            parts.append("dw" if self.group_width == 1 else f"g{self.group_width}")
        if self.kind == "se":
            parts.append(f"r{self.c_mid}")
        if self.kind == "concat":
            parts.append(f"n{self.parts}")
        if self.kind == "shuffle":
            parts.append(f"g{self.groups}")
        parts += [flag for flag, on in (("bn", self.bn), ("bias", self.bias)) if on]
        parts += [name for name in (self.norm, self.pool, self.act) if name]
        if self.gate:
            parts.append(f"gate-{self.gate}")
        parts += [f"{self.c_in}->{self.c_out}", f"{self.h}x{self.w}"]
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> "CellKey":
        """Inverse of str(); also accepts a full LUT key (the settings tag after ` | ` is ignored)."""
        tokens = text.split(" | ")[0].split()
        if not tokens or tokens[0] not in KINDS:
            raise HwbcnetError(f"cell key {text!r}: expected it to start with one of {', '.join(KINDS)}")
        kind = tokens[0]
        fields: dict = {"kind": kind}
        names = {"k": "kernel", "s": "stride", "p": "padding"}
        for token in tokens[1:]:
            if match := re.fullmatch(r"([ksp])(\d+)(?:x(\d+))?", token):
                first = int(match.group(2))
                fields[names[match.group(1)]] = (first, int(match.group(3) or first))
            elif match := re.fullmatch(r"(\d+)->(\d+)", token):
                fields["c_in"], fields["c_out"] = int(match.group(1)), int(match.group(2))
            elif match := re.fullmatch(r"(\d+)x(\d+)", token):
                fields["h"], fields["w"] = int(match.group(1)), int(match.group(2))
            elif match := re.fullmatch(r"([grn])(\d+)", token):
                value = int(match.group(2))
                key = {"r": "c_mid", "n": "parts"}.get(match.group(1), "groups" if kind == "shuffle" else "group_width")
                fields[key] = value
            elif token == "dw":
                fields["group_width"] = 1
            elif token in ("bn", "bias") and not (token == "bn" and kind == "norm"):
                fields[token] = True
            elif token in NORMS and kind == "norm":
                fields["norm"] = token
            elif token.startswith("gate-") and token[5:] in ACTIVATIONS:
                fields["gate"] = token[5:]
            elif token in ACTIVATIONS:
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


# ------------------------------------------------------------------------------------------ cells of a space


def cell_for_layer(layer, sizes: tuple[int, ...]) -> CellKey:
    """The layer's cell when its axes (Layer.axes) have these sizes."""
    h, w = layer.in_hw
    if layer.kind == "linear":
        h = w = 1
    if layer.kind == "se":
        c_in = c_out = sizes[0]
        c_mid = sizes[1]
    else:
        c_in, c_out, c_mid = sizes[0], sizes[-1], 0
    return CellKey(
        kind=layer.kind, c_in=int(c_in), c_out=int(c_out), h=int(h), w=int(w),
        kernel=layer.kernel if layer.kind in ("conv", "pool") else 1,
        stride=layer.stride if layer.kind in ("conv", "pool") else 1,
        padding=layer.padding if layer.kind in ("conv", "pool") else 0,
        group_width=layer.group_width if layer.kind == "conv" else 0, bn=bool(layer.bn), bias=bool(layer.bias),
        act=layer.act, pool=layer.pool if layer.kind == "pool" else None, c_mid=int(c_mid), gate=layer.gate,
        parts=layer.parts if layer.kind == "concat" else 1, norm=layer.norm, groups=layer.groups,
    )


def variable_choices(space) -> list[np.ndarray]:
    """The distinct channel counts each variable can take."""
    return [np.unique(space.channels(v, np.arange(space.min_bins, space.bins + 1))) for v in range(space.num_vars)]


def axis_values(layout, choices: list[np.ndarray]) -> np.ndarray:
    """Every size a layout can take (sum over its segments of coef x a choice of that variable's channels)."""
    coef, constant = layout.coefficients()
    values = np.array([constant])
    for var, c in coef.items():
        values = np.unique((values[:, None] + c * choices[var][None, :]).ravel())
    return values


def layer_sizes(layer, space, choices: list[np.ndarray] | None = None) -> list[tuple[int, ...]]:
    """Every combination of axis sizes the layer can take in the space. Axes that share a variable are
    enumerated jointly (a conv whose input and output follow one variable only sees equal widths)."""
    choices = variable_choices(space) if choices is None else choices
    axes = layer.axes
    if len(axes) == 1 or not set(axes[0].vars) & set(axes[1].vars):
        grids = np.meshgrid(*[axis_values(axis, choices) for axis in axes], indexing="ij")
        return sorted(set(zip(*[g.ravel().tolist() for g in grids])))
    variables = sorted(set(axes[0].vars) | set(axes[1].vars))
    combos = np.array(np.meshgrid(*[choices[v] for v in variables], indexing="ij")).reshape(len(variables), -1).T
    if len(combos) > 1_000_000:
        raise HwbcnetError(f"layer {layer.name}: too many width combinations to enumerate ({len(combos)})")
    channels = np.zeros((len(combos), space.num_vars), dtype=np.int64)
    channels[:, variables] = combos
    sizes = {tuple(axis.size_at(row) for axis in axes) for row in channels}
    return sorted(sizes)


def cells_for_layer(layer, space) -> set[CellKey]:
    return {cell_for_layer(layer, sizes) for sizes in layer_sizes(layer, space)}


def enumerate_cells(space) -> list[CellKey]:
    """The deduplicated set of cells that any arch of the space executes, sorted."""
    choices = variable_choices(space)
    cells: set[CellKey] = set()
    for layer in space.layers:
        cells |= {cell_for_layer(layer, sizes) for sizes in layer_sizes(layer, space, choices)}
    return sorted(cells, key=str)


def arch_cells(space, arch) -> list[CellKey]:
    """The cell each layer executes for one arch (one entry per layer, in layer order)."""
    channels = space.arch_channels(np.asarray(arch, dtype=np.int64))[0]
    return [cell_for_layer(layer, tuple(axis.size_at(channels) for axis in layer.axes)) for layer in space.layers]


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
        """The activation as torch's ONNX exporter (opset 17) writes it."""
        if act is None:
            return x
        if act == "relu":
            return self.node("Relu", [x], f"{prefix}_relu")
        if act in ("relu6", "hardtanh"):
            low, high = (0.0, 6.0) if act == "relu6" else (-1.0, 1.0)
            return self.node("Clip", [x, self.constant(f"{prefix}_min", low), self.constant(f"{prefix}_max", high)],
                             f"{prefix}_clip")
        if act == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], f"{prefix}_sigmoid")], f"{prefix}_silu")
        if act == "hardswish":
            return self.node("HardSwish", [x], f"{prefix}_hardswish")
        if act == "hardsigmoid":
            return self.node("HardSigmoid", [x], f"{prefix}_hardsigmoid", alpha=1.0 / 6.0)
        if act == "sigmoid":
            return self.node("Sigmoid", [x], f"{prefix}_sigmoid")
        if act == "tanh":
            return self.node("Tanh", [x], f"{prefix}_tanh")
        if act == "leakyrelu":
            return self.node("LeakyRelu", [x], f"{prefix}_leakyrelu", alpha=0.01)
        if act == "elu":
            return self.node("Elu", [x], f"{prefix}_elu", alpha=1.0)
        if act == "mish":
            softplus = self.node("Softplus", [x], f"{prefix}_softplus")
            return self.node("Mul", [x, self.node("Tanh", [softplus], f"{prefix}_tanh")], f"{prefix}_mish")
        if act == "gelu":  # x * 0.5 * (1 + erf(x / sqrt(2)))
            scaled = self.node("Div", [x, self.constant(f"{prefix}_sqrt2", 2 ** 0.5)], f"{prefix}_div")
            erf = self.node("Erf", [scaled], f"{prefix}_erf")
            one = self.node("Add", [erf, self.constant(f"{prefix}_one", 1.0)], f"{prefix}_add")
            return self.node("Mul", [self.node("Mul", [x, one], f"{prefix}_mul"), self.constant(f"{prefix}_half", 0.5)],
                             f"{prefix}_gelu")
        if act == "gelu-tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = self.node("Mul", [x, self.node("Mul", [x, x], f"{prefix}_sq")], f"{prefix}_cube")
            inner = self.node("Add", [x, self.node("Mul", [cube, self.constant(f"{prefix}_c", 0.044715)],
                                                   f"{prefix}_cubec")], f"{prefix}_inner")
            tanh = self.node("Tanh", [self.node("Mul", [inner, self.constant(f"{prefix}_k", (2 / np.pi) ** 0.5)],
                                                f"{prefix}_scaled")], f"{prefix}_tanh")
            one = self.node("Add", [tanh, self.constant(f"{prefix}_one", 1.0)], f"{prefix}_add")
            half = self.node("Mul", [x, self.constant(f"{prefix}_half", 0.5)], f"{prefix}_halfx")
            return self.node("Mul", [half, one], f"{prefix}_gelu")
        raise HwbcnetError(f"activation {act!r} is not supported in LUT cells ({', '.join(ACTIVATIONS)} or none)")

    def conv(self, x: str, c_in: int, c_out: int, prefix: str, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
             groups: int = 1, bias: bool = True) -> str:
        fan_in = c_in // groups * kernel[0] * kernel[1]
        inputs = [x, self.weight(f"{prefix}_w", (c_out, c_in // groups, *kernel), scale=1.0 / np.sqrt(fan_in))]
        if bias:
            inputs.append(self.weight(f"{prefix}_b", (c_out,), scale=0.1))
        return self.node("Conv", inputs, f"{prefix}_conv", kernel_shape=list(kernel), strides=list(stride),
                         pads=[padding[0], padding[1], padding[0], padding[1]], group=groups)


# One builder per cell kind: (graph, input names of this branch, cell, prefix, baseline) -> output name.
BranchBuilder = Callable[[_Graph, list[str], CellKey, str, bool], str]


def _conv(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    # BatchNorm appears folded into the conv's bias, as in a model exported from PyTorch in eval mode (and as both
    # runtimes execute it anyway).
    y = g.conv(xs[0], cell.c_in, cell.c_out, prefix, cell.kernel, cell.stride, cell.padding, cell.conv_groups,
               bias=cell.bias or cell.bn)
    return g.activation(y, cell.act, prefix)


def _add(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    residual = g.conv(xs[0], cell.c_out, cell.c_out, f"{prefix}_r")
    y = g.conv(residual, cell.c_out, cell.c_out, prefix)
    if not baseline:
        y = g.node("Add", [y, residual], f"{prefix}_add")
    return g.activation(y, cell.act, prefix)


def _linear(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    inputs = [xs[0], g.weight(f"{prefix}_w", (cell.c_out, cell.c_in), scale=1.0 / np.sqrt(cell.c_in))]
    if cell.bias:
        inputs.append(g.weight(f"{prefix}_b", (cell.c_out,), scale=0.1))
    return g.activation(g.node("Gemm", inputs, f"{prefix}_gemm", transB=1), cell.act, prefix)


def _pool(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    if cell.is_global_pool:
        return g.node("GlobalAveragePool", [xs[0]], f"{prefix}_gap")
    op = {"avg": "AveragePool", "max": "MaxPool"}[cell.pool]
    return g.node(op, [xs[0]], f"{prefix}_pool", kernel_shape=list(cell.kernel), strides=list(cell.stride),
                  pads=[cell.padding[0], cell.padding[1], cell.padding[0], cell.padding[1]])


def _se(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    """x * gate(expand(act(reduce(avgpool(x))))), as torchvision/timm SE blocks export."""
    pooled = g.node("GlobalAveragePool", [xs[0]], f"{prefix}_gap")
    reduced = g.activation(g.conv(pooled, cell.c_in, cell.c_mid, f"{prefix}_reduce", bias=cell.bias), cell.act,
                           f"{prefix}_a")
    gate = g.activation(g.conv(reduced, cell.c_mid, cell.c_in, f"{prefix}_expand", bias=cell.bias), cell.gate,
                        f"{prefix}_g")
    return g.node("Mul", [xs[0], gate], f"{prefix}_scale")


def _mul(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    return g.node("Mul", [xs[0], g.weight(f"{prefix}_m", (1, cell.c_in, 1, 1))], f"{prefix}_mul")


def _concat(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    return g.node("Concat", list(xs), f"{prefix}_concat", axis=1)


def _norm(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    c = cell.c_in
    if cell.norm == "bn":
        y = g.node("BatchNormalization", [xs[0], g.weight(f"{prefix}_s", (c,)), g.weight(f"{prefix}_b", (c,)),
                                          g.weight(f"{prefix}_m", (c,)), _positive(g, f"{prefix}_v", c)],
                   f"{prefix}_bn")
    elif cell.norm == "ln":  # LayerNorm over the channels of an NCHW map (LayerNorm2d), channels last inside
        moved = g.node("Transpose", [xs[0]], f"{prefix}_nhwc", perm=[0, 2, 3, 1])
        normed = g.node("LayerNormalization", [moved, g.weight(f"{prefix}_s", (c,)), g.weight(f"{prefix}_b", (c,))],
                        f"{prefix}_ln", axis=-1)
        y = g.node("Transpose", [normed], f"{prefix}_nchw", perm=[0, 3, 1, 2])
    else:
        raise HwbcnetError(f"norm {cell.norm!r} cells are not supported (bn, ln)")
    return g.activation(y, cell.act, prefix)


def _positive(g: _Graph, name: str, size: int) -> str:
    """Random variances (BatchNorm needs them positive)."""
    g.inits.append(numpy_helper.from_array((1.0 + g.rng.random(size)).astype(g.dtype), name))
    return name


def _act(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    return g.activation(xs[0], cell.act, prefix)


def _shuffle(g: _Graph, xs, cell: CellKey, prefix: str, baseline: bool) -> str:
    """x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W), as torchvision's channel_shuffle exports."""
    c, groups = cell.c_in, cell.groups
    split = g.node("Reshape", [xs[0], _shape(g, f"{prefix}_s5", [-1, groups, c // groups, cell.h, cell.w])],
                   f"{prefix}_split")
    swapped = g.node("Transpose", [split], f"{prefix}_swap", perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [swapped, _shape(g, f"{prefix}_s4", [-1, c, cell.h, cell.w])], f"{prefix}_merge")


def _shape(g: _Graph, name: str, shape: list[int]) -> str:
    g.inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), name))
    return name


_BRANCH_BUILDERS: dict[str, BranchBuilder] = {
    "conv": _conv, "add": _add, "linear": _linear, "pool": _pool, "se": _se, "mul": _mul, "concat": _concat,
    "norm": _norm, "act": _act, "shuffle": _shuffle,
}


def _concat_parts(cell: CellKey) -> list[int]:
    base, extra = divmod(cell.c_in, cell.parts)
    return [base + (i < extra) for i in range(cell.parts)]


def cell_shapes(cell: CellKey, batch: int) -> tuple[list[list[int]], list[int]]:
    """(input shapes of one copy, output shape) of the cell."""
    if cell.kind == "linear":
        return [[batch, cell.c_in]], [batch, cell.c_out]
    out_h, out_w = cell.out_hw
    if cell.kind == "concat":
        return [[batch, part, cell.h, cell.w] for part in _concat_parts(cell)], [batch, cell.c_out, out_h, out_w]
    return [[batch, cell.c_in, cell.h, cell.w]], [batch, cell.c_out, out_h, out_w]


def cell_onnx(cell: CellKey, batch: int, precision: str, copies: int = 1, shared_input: bool = True,
              baseline: bool = False, seed: int = 0) -> bytes:
    """An ONNX model (opset 17) with `copies` parallel branches of the cell, random weights, inputs and outputs in
    the target precision (fp16 models build as fp16 strongly typed TensorRT networks). With `shared_input` all
    branches read the same inputs `x` (`x_0`, `x_1`, ... for a concatenation's parts); otherwise branch i reads its
    own (`x0`, or `x0_0`, ...). Branch i writes output `y{i}`. `baseline`: the model subtracted from an add
    cell's (its branches without the add)."""
    if precision not in _DTYPES:
        raise HwbcnetError(f"precision {precision!r} is not one of {', '.join(_DTYPES)}")
    if copies < 1:
        raise HwbcnetError("a cell model needs at least one copy")
    builder = _BRANCH_BUILDERS.get(cell.kind)
    if builder is None:
        raise HwbcnetError(f"cell kind {cell.kind!r} cannot be measured")
    graph = _Graph(precision, np.random.default_rng(seed))
    in_shapes, out_shape = cell_shapes(cell, batch)
    multi = len(in_shapes) > 1

    def names(branch: str) -> list[str]:
        return [f"x{branch}_{j}" if multi else f"x{branch}" for j in range(len(in_shapes))]

    branch_inputs = [names("") if shared_input else names(str(i)) for i in range(copies)]
    graph_inputs = list(dict.fromkeys(name for group in branch_inputs for name in group))
    outputs = []
    for i in range(copies):
        builder(graph, branch_inputs[i], cell, f"c{i}", baseline)
        graph.nodes[-1].output[0] = f"y{i}"  # every branch ends with the node that produces its result
        outputs.append(f"y{i}")
    shape_of = {name: in_shapes[int(name.rpartition("_")[2]) if multi else 0] for name in graph_inputs}
    model = helper.make_model(
        helper.make_graph(
            graph.nodes, f"cell_{cell.kind}",
            [helper.make_tensor_value_info(name, graph.onnx_type, shape_of[name]) for name in graph_inputs],
            [helper.make_tensor_value_info(name, graph.onnx_type, out_shape) for name in outputs],
            initializer=graph.inits,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="hwbcnet",
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()
