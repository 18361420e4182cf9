"""Element-wise operations: activations, dropout-like no-ops, and arithmetic.

Activations keep their input's channels; the executed-layer pass fuses them into the conv/linear/norm/add before
them. Arithmetic between two tensors broadcasts along the channel axis:
* equal channel layouts (a residual add, x * a full-size gate): the operands' sources are tied;
* one operand with a single channel (a spatial attention map): the other operand's channels pass;
* an (N, C, 1, 1) operand computed from the tensor (a squeeze-excitation gate): tied, like an add;
* a parameter, or an expression of parameters only, such as ConvNeXt's layer scale (C, 1, 1), `weight[:, None,
  None]` of a channels-first LayerNorm or FrozenBatchNorm's `weight * (running_var + eps).rsqrt()` reshaped to
  (1, C, 1, 1): every parameter in it follows the tensor's channels.

Squeeze-excitation (x * gate(expand(act(reduce(pool(x)))))): the gate's channels *are* x's channels, so the mul
ties the expand conv/linear's output to x's variable, while the reduction width (reduce's output) is a width
variable of its own, searched like any other layer: SE-Net and EfficientNet fix it as a ratio of the block's
width, but nothing in the computation couples the two, and a searched reduction is what a width search of the
block would want (BCNet searches every conv's output). units.py then times the whole gate as one "se" layer whose
`mid` is the reduction width.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from hwbcnet.space.ops import function_name_rule, function_rule, method_rule, module_name_rule, module_rule
from hwbcnet.space.tracing import Channels, _SegmentMismatch

# Canonical activation names (the latency cells know how each is executed).
ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.LeakyReLU: "leakyrelu", nn.Mish: "mish", nn.Tanh: "tanh",
    nn.ELU: "elu", nn.Hardtanh: "hardtanh",
}
ACTIVATION_FUNCTIONS: dict[object, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.relu6: "relu6",
    F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid",
    torch.sigmoid_: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu", F.leaky_relu: "leakyrelu",
    F.leaky_relu_: "leakyrelu", F.mish: "mish", torch.tanh: "tanh", torch.tanh_: "tanh", F.tanh: "tanh",
    F.elu: "elu", F.elu_: "elu", F.hardtanh: "hardtanh", F.hardtanh_: "hardtanh",
}
ACTIVATION_METHODS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh",
}

# Shape- and channel-preserving ops that cost nothing at inference (or are not activations).
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Softmax, nn.Softmax2d,
                     nn.LogSoftmax)
_IDENTITY_FUNCTIONS = (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout, torch.clamp, torch.clip, F.softmax,
                       F.log_softmax, torch.softmax, torch.clone, torch.detach, F.normalize)
_IDENTITY_METHODS = ("contiguous", "clone", "detach", "float", "half", "to", "type_as", "clamp", "clamp_", "clip",
                     "softmax", "requires_grad_")
# Element-wise math on one tensor, and activations no latency cell knows: channels pass, listed as untimed.
_UNARY_MODULES = (nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink, nn.Hardshrink,
                  nn.Softshrink, nn.Threshold)
_UNARY_FUNCTIONS = (torch.neg, torch.abs, torch.exp, torch.sqrt, torch.rsqrt, torch.square, torch.reciprocal,
                    torch.log, torch.log1p, torch.erf, torch.sign, torch.floor, torch.ceil, torch.round, torch.sin,
                    torch.cos, operator.neg, F.selu, F.celu, F.softplus, F.softsign, F.logsigmoid, F.tanhshrink,
                    F.hardshrink, F.softshrink, F.threshold)
_UNARY_METHODS = ("neg", "abs", "exp", "sqrt", "rsqrt", "square", "reciprocal", "log", "log1p", "erf", "sign",
                  "floor", "ceil", "round", "sin", "cos", "exp_", "sqrt_", "rsqrt_", "neg_", "abs_")
_BINARY_FUNCTIONS = (operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div,
                     torch.pow, torch.maximum, torch.minimum)
_BINARY_METHODS = ("add", "sub", "mul", "div", "pow", "add_", "sub_", "mul_", "div_", "pow_", "maximum", "minimum")


def activation_of(node: fx.Node | None, modules: dict) -> str | None:
    """The canonical activation a node applies, or None."""
    if node is None:
        return None
    if node.op == "call_module":
        return module_activation(modules[node.target])
    if node.op == "call_function":
        name = ACTIVATION_FUNCTIONS.get(node.target)
        return "gelu-tanh" if name == "gelu" and node.kwargs.get("approximate") == "tanh" else name
    if node.op == "call_method":
        return ACTIVATION_METHODS.get(node.target)
    return None


def module_activation(module: nn.Module | None) -> str | None:
    """The canonical name of an activation module (None for Identity or no module)."""
    if module is None:
        return None
    for cls in type(module).__mro__:
        if cls in ACTIVATION_MODULES:
            name = ACTIVATION_MODULES[cls]
            return "gelu-tanh" if name == "gelu" and getattr(module, "approximate", "none") == "tanh" else name
    return None


def _pass_first(node: fx.Node, t) -> None:
    inputs = t.tensor_args(node)
    info = t.info.get(inputs[0]) if inputs else None
    if info is None:
        t.fixed_like(node)
    else:
        t.set(node, info)


@module_rule(*ACTIVATION_MODULES)
@function_rule(*ACTIVATION_FUNCTIONS)
@method_rule(*ACTIVATION_METHODS)
def activation(node: fx.Node, t) -> None:
    _pass_first(node, t)
    t.category(node, "act", act=activation_of(node, t.modules))


@module_rule(*_IDENTITY_MODULES)
@module_name_rule("StochasticDepth", "DropPath", "DropBlock2d")  # torchvision/timm, not importable here
@function_name_rule("stochastic_depth", "drop_path", "drop_block_2d")
@function_rule(*_IDENTITY_FUNCTIONS)
@method_rule(*_IDENTITY_METHODS)
def identity(node: fx.Node, t) -> None:
    _pass_first(node, t)
    t.category(node, "nop")


@module_rule(*_UNARY_MODULES)
@function_rule(*_UNARY_FUNCTIONS)
@method_rule(*_UNARY_METHODS)
def unary(node: fx.Node, t) -> None:
    _pass_first(node, t)
    t.category(node, "scalar")


@function_rule(*_BINARY_FUNCTIONS)
@method_rule(*_BINARY_METHODS)
def binary(node: fx.Node, t) -> None:
    operands = [node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]
    tensors = [a for a in operands if isinstance(a, fx.Node) and t.shape(a) is not None]
    if len(tensors) < 2:  # tensor with a Python number (e.g. timm's hard_sigmoid: relu6(x + 3) / 6)
        _pass_first(node, t)
        t.category(node, "scalar")
        return
    a, b = tensors
    ia, ib = t.channels(a), t.channels(b)
    out_shape = t.shape(node)
    if ia is None and ib is None:
        t.fixed_like(node)
        return
    expressions = [t.parameter_leaves.get(arg) is not None for arg in (a, b)]
    if expressions[0] != expressions[1]:  # a parameter (expression) scales or shifts a tensor: it follows
        tensor, expression = (b, a) if expressions[0] else (a, b)
        tensor_info = t.channels(tensor)
        if tensor_info is None:
            t.fixed_like(node)
            return
        _parameters_follow(expression, tensor_info, node, t)
        t.set(node, tensor_info.with_axis(tensor_info.axis, len(out_shape)))
        t.category(node, "scale")
        return
    if ia is None or ib is None:
        known, unknown = (ia, b) if ia is not None else (ib, a)
        if t.is_free(known):
            raise t.unsupported(node, f"operand `{unknown.name}` carries no channel information")
        t.fixed_like(node)
        return
    sa, sb = t.shape(a), t.shape(b)
    size_a, size_b = sa[ia.axis], sb[ib.axis]
    if ia.axis == ib.axis and size_a == size_b:
        try:
            t.union(ia, ib, node.name)
            t.set(node, ia)
        except _SegmentMismatch:  # same size, different concat structure: cannot be tied segment by segment
            t.pin(ia, f"{node.name}: combines differently concatenated channels")
            t.pin(ib, f"{node.name}: combines differently concatenated channels")
            t.set(node, ia)
        gate = tuple(sb) != tuple(sa) and len(sb) == 4 and sb[2] == sb[3] == 1 or \
            tuple(sa) != tuple(sb) and len(sa) == 4 and sa[2] == sa[3] == 1
        kind = "add" if node.target in (operator.add, operator.iadd, torch.add, "add", "add_") else "mul"
        t.category(node, "gate" if gate and kind == "mul" else kind)
        return
    if size_b == 1 and ib.axis < len(sb):  # broadcast over channels (a spatial map): channels of a pass
        t.set(node, ia.with_axis(ia.axis, len(out_shape)))
        t.category(node, "mul")
        return
    if size_a == 1:
        t.set(node, ib.with_axis(ib.axis, len(out_shape)))
        t.category(node, "mul")
        return
    raise t.unsupported(node, f"broadcasts {size_a} against {size_b} channels")


def _parameters_follow(expression: fx.Node, info: Channels, node: fx.Node, t) -> None:
    """A parameter expression (a parameter, `weight[:, None, None]`, FrozenBatchNorm's `weight * (var +
    eps).rsqrt()` reshaped to (1, C, 1, 1), ...) combined with a tensor: when it broadcasts along the tensor's
    channel axis, every parameter it is computed from follows those channels in its one dim of that size."""
    shape = t.shape(expression)
    channel_dim = info.axis - (info.ndim - len(shape))  # trailing dims align under broadcasting
    if not 0 <= channel_dim < len(shape) or shape[channel_dim] == 1:
        return  # the expression does not vary along the channels (a scalar or per-pixel parameter)
    if shape[channel_dim] != info.size:
        raise t.unsupported(node, f"a parameter of shape {tuple(shape)} meets {info.size} channels")
    if _spells_channel_count(expression, info.size):  # e.g. weight.view(1, 64, 1, 1): only right at full width
        t.pin(info, f"{node.name}: a parameter is reshaped with a literal channel count")
        return
    for leaf in t.parameter_leaves[expression]:
        dims = [int(d) for d in t.shape(leaf)]
        along = [d for d, size in enumerate(dims) if size == info.size]
        if math.prod(dims) == 1:
            continue  # a scalar (an eps tensor)
        if len(along) != 1 or math.prod(dims) != info.size:
            raise t.unsupported(node, f"parameter `{leaf.target}` of shape {tuple(dims)} cannot follow "
                                      f"{info.size} channels")
        previous = t.params.get(leaf.target)
        if previous is not None and isinstance(previous[along[0]], Channels):  # used with other channels too
            try:
                t.union(previous[along[0]], info, node.name)
            except _SegmentMismatch:
                t.pin(info, f"{node.name}: parameter `{leaf.target}` meets differently concatenated channels")
                t.pin(previous[along[0]], f"{node.name}: parameter `{leaf.target}` meets differently "
                                          "concatenated channels")
            continue
        dims[along[0]] = info
        t.param(leaf.target, dims)


def _spells_channel_count(expression: fx.Node, channels: int) -> bool:
    """Whether a reshape inside a parameter expression spells the channel count as a literal."""
    pending, seen = [expression], set()
    while pending:
        node = pending.pop()
        if node in seen or node.op == "get_attr":
            continue
        seen.add(node)
        if node.target in ("view", "reshape", "expand", "repeat", torch.reshape) and channels > 1:
            literals = [a for a in node.args[1:] for a in (a if isinstance(a, (tuple, list)) else (a,))]
            if channels in literals:
                return True
        pending += node.all_input_nodes
    return False
