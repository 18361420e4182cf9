"""Element-wise operations: activations, dropout-like no-ops, and arithmetic.

Activations keep their input's channels; the executed-layer pass fuses them into the conv/linear/norm/add before
them. Arithmetic between two tensors broadcasts along the channel axis:
* equal channel layouts (a residual add, x * a full-size gate): the operands' sources are tied;
* one operand with a single channel (a spatial attention map): the other operand's channels pass;
* an (N, C, 1, 1) operand computed from the tensor (a squeeze-excitation gate): tied, like an add;
* a parameter such as ConvNeXt's layer scale (C, 1, 1): the parameter follows the tensor's channels.
"""

from __future__ import annotations

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
    F.sigmoid: "sigmoid", F.gelu: "gelu", F.leaky_relu: "leakyrelu", F.leaky_relu_: "leakyrelu", F.mish: "mish",
    torch.tanh: "tanh", F.tanh: "tanh", F.elu: "elu", F.hardtanh: "hardtanh",
}
ACTIVATION_METHODS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh",
}

# Shape- and channel-preserving ops that cost nothing at inference (or are not activations).
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Softmax, nn.Softmax2d,
                     nn.LogSoftmax)
_IDENTITY_FUNCTIONS = (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout, torch.clamp, torch.clip, F.softmax,
                       F.log_softmax, torch.softmax, torch.neg, torch.abs, torch.exp, torch.sqrt, torch.square,
                       torch.clone, torch.detach, F.normalize)
_IDENTITY_METHODS = ("contiguous", "clone", "detach", "float", "half", "to", "type_as", "clamp", "clamp_", "clip",
                     "softmax", "neg", "abs", "exp", "sqrt", "square", "add_", "mul_", "div_", "requires_grad_")
_BINARY_FUNCTIONS = (operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
                     torch.minimum)
_BINARY_METHODS = ("add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum")


def activation_of(node: fx.Node | None, modules: dict) -> str | None:
    """The canonical activation a node applies, or None."""
    if node is None:
        return None
    if node.op == "call_module":
        module = modules[node.target]
        for cls in type(module).__mro__:
            if cls in ACTIVATION_MODULES:
                return ACTIVATION_MODULES[cls]
        return None
    if node.op == "call_function":
        return ACTIVATION_FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return ACTIVATION_METHODS.get(node.target)
    return None


def module_activation(module: nn.Module | None) -> str | None:
    """The canonical name of an activation module (None for Identity or no module)."""
    if module is None:
        return None
    for cls in type(module).__mro__:
        if cls in ACTIVATION_MODULES:
            return ACTIVATION_MODULES[cls]
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
    params = [arg for arg, info in ((a, ia), (b, ib)) if info is None and arg.op == "get_attr"]
    if params:  # tensor op parameter: the parameter's broadcast channel dim follows the tensor
        tensor_info = ia if ia is not None else ib
        _parameter_follows(params[0], tensor_info, t)
        t.set(node, tensor_info)
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


def _parameter_follows(param_node: fx.Node, info: Channels, t) -> None:
    """A parameter (get_attr) combined with a tensor: the dim that broadcasts against the channel axis follows it."""
    shape = t.shape(param_node)
    out_ndim = info.ndim
    # align trailing dims: param dim j corresponds to tensor dim j + (out_ndim - len(shape))
    channel_dim = info.axis - (out_ndim - len(shape))
    if not 0 <= channel_dim < len(shape) or shape[channel_dim] == 1:
        return  # the parameter does not vary along the channels (a scalar or per-pixel parameter)
    if shape[channel_dim] != info.size:
        raise t.unsupported(param_node, f"parameter of shape {shape} does not match {info.size} channels")
    dims = [int(d) for d in shape]
    dims[channel_dim] = info
    t.param(param_node.target, dims)
