"""Derive width variables and the executed-layer list of a model by tracing it with torch.fx.

Every conv/linear output starts its own *channel source*. Sources are merged with union-find where the graph forces
equal channel counts: the operands of a residual add share one source, and a depthwise conv's output is its input's
source. Sources reaching the model input or output (the classifier's classes) are fixed. Each remaining source is one
width variable. Nothing here knows a particular model, in the spirit of Torch-Pruning's dependency graph.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from hwbcnet.errors import HwbcnetError
from hwbcnet.space.layers import Layer

_PASS_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
                 nn.MaxPool2d, nn.Flatten)
_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.flatten, F.adaptive_avg_pool2d, F.dropout, torch.mean}
_PASS_METHODS = {"relu", "relu_", "flatten", "view", "reshape", "mean", "contiguous"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_RESHAPES = {torch.flatten, "flatten", "view", "reshape", nn.Flatten}


@dataclass
class WidthVariable:
    """A group of tied output-channel dimensions that shrink together."""

    name: str  # the first module (in graph order) that produces these channels
    channels: int  # C at full width
    members: tuple[str, ...]  # modules whose output channels this variable sets (convs, BNs, linears)


@dataclass
class ModuleBinding:
    """Which width variable sets a parameterised module's input and output channels (None = fixed)."""

    kind: str  # "conv" | "depthwise" | "linear" | "bn"
    in_var: int | None
    out_var: int | None


@dataclass
class TracedModel:
    graph_module: fx.GraphModule
    variables: list[WidthVariable]
    layers: list[Layer]
    bindings: dict[str, ModuleBinding] = field(default_factory=dict)


class _Sources:
    """Union-find over channel sources."""

    def __init__(self):
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.fixed: list[bool] = []
        self.producers: list[list[str]] = []

    def new(self, channels: int, producer: str | None = None, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(channels)
        self.fixed.append(fixed)
        self.producers.append([producer] if producer else [])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.channels[ra] != self.channels[rb]:
            raise HwbcnetError(f"{where}: adds tensors with {self.channels[ra]} and {self.channels[rb]} channels")
        keep, drop = min(ra, rb), max(ra, rb)  # the earlier source names the group
        self.parent[drop] = keep
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]
        self.producers[keep] += self.producers[drop]
        return keep


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _is_tensor(arg) -> bool:
    return isinstance(arg, fx.Node) and "tensor_meta" in arg.meta and hasattr(arg.meta["tensor_meta"], "shape")


def _unsupported(node: fx.Node) -> HwbcnetError:
    return HwbcnetError(
        f"cannot derive channel coupling through `{node.format_node()}`; hwbcnet supports conv, linear, BatchNorm, "
        "ReLU/ReLU6, pooling, flatten and residual adds (mark other modules with `hwbcnet_fixed = True`)"
    )


def trace_model(model: nn.Module, input_shape: tuple[int, ...]) -> TracedModel:
    model = model.eval()
    graph_module = fx.symbolic_trace(model)
    ShapeProp(graph_module).propagate(torch.zeros(input_shape))
    modules = dict(graph_module.named_modules())
    sources = _Sources()
    source_of: dict[fx.Node, int] = {}
    module_source: dict[str, tuple[int | None, int, str]] = {}  # name -> (in source, out source, kind)

    for node in graph_module.graph.nodes:
        tensor_inputs = [a for a in node.args if isinstance(a, fx.Node) and a in source_of]
        first = source_of[tensor_inputs[0]] if tensor_inputs else None
        if node.op == "placeholder":
            source_of[node] = sources.new(_shape(node)[1], fixed=True)
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, fx.Node) and result in source_of:
                sources.fixed[sources.find(source_of[result])] = True
        elif node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, nn.Conv2d):
                if module.groups == 1:
                    out = sources.new(module.out_channels, node.target, fixed=getattr(module, "hwbcnet_fixed", False))
                    module_source[node.target] = (first, out, "conv")
                elif module.groups == module.in_channels == module.out_channels:
                    out = first  # a depthwise conv's output channels are its input channels
                    sources.producers[sources.find(first)].append(node.target)
                    module_source[node.target] = (first, out, "depthwise")
                else:
                    raise HwbcnetError(f"{node.target}: grouped conv with groups={module.groups} is not supported "
                                       "(only groups=1 and depthwise)")
                source_of[node] = out
            elif isinstance(module, nn.Linear):
                if len(_shape(tensor_inputs[0])) != 2:
                    raise HwbcnetError(f"{node.target}: linear layers must act on (batch, features) tensors")
                out = sources.new(module.out_features, node.target, fixed=getattr(module, "hwbcnet_fixed", False))
                module_source[node.target] = (first, out, "linear")
                source_of[node] = out
            elif isinstance(module, _PASS_MODULES):
                if isinstance(module, nn.BatchNorm2d):
                    module_source[node.target] = (None, first, "bn")
                    sources.producers[sources.find(first)].append(node.target)
                if isinstance(module, nn.Flatten):
                    _check_flatten(node, tensor_inputs[0])
                source_of[node] = first
            else:
                raise _unsupported(node)
        elif node.op == "call_function":
            if node.target in _ADD_FUNCTIONS and len(tensor_inputs) == 2:
                source_of[node] = sources.union(source_of[tensor_inputs[0]], source_of[tensor_inputs[1]], node.name)
            elif node.target in _PASS_FUNCTIONS or (node.target in _ADD_FUNCTIONS and len(tensor_inputs) == 1):
                if node.target in _RESHAPES:
                    _check_flatten(node, tensor_inputs[0])
                source_of[node] = first
            elif first is not None:
                raise _unsupported(node)
        elif node.op == "call_method":
            if node.target in _PASS_METHODS:
                if node.target in _RESHAPES:
                    _check_flatten(node, tensor_inputs[0])
                source_of[node] = first
            elif node.target != "size" and first is not None:
                raise _unsupported(node)
        elif node.op == "get_attr" and node.users:
            raise _unsupported(node)

    # Number the free sources in graph order; fixed ones get no variable.
    var_of_root: dict[int, int] = {}
    variables: list[WidthVariable] = []
    for src in range(len(sources.parent)):
        root = sources.find(src)
        if root in var_of_root or sources.fixed[root] or not sources.producers[root]:
            continue
        var_of_root[root] = len(variables)
        variables.append(WidthVariable(sources.producers[root][0], sources.channels[root], tuple(sources.producers[root])))

    def var(src: int | None) -> int | None:
        return None if src is None else var_of_root.get(sources.find(src))

    bindings = {name: ModuleBinding(kind, var(src_in), var(src_out)) for name, (src_in, src_out, kind) in module_source.items()}
    layers = _executed_layers(graph_module, modules, source_of, var)
    return TracedModel(graph_module, variables, layers, bindings)


def _check_flatten(node: fx.Node, source: fx.Node) -> None:
    shape = _shape(source)
    if len(shape) == 4 and shape[2] * shape[3] != 1:
        raise HwbcnetError(f"{node.name}: flattening a {shape[2]}x{shape[3]} feature map ties channels to spatial "
                           "positions; pool to 1x1 before the classifier")


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _activation(node: fx.Node | None, modules) -> str | None:
    if node is None:
        return None
    if node.op == "call_module":
        return _ACT_MODULES.get(type(modules[node.target]))
    if node.op == "call_function":
        return _ACT_FUNCTIONS.get(node.target)
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _executed_layers(graph_module, modules, source_of, var) -> list[Layer]:
    """Group conv+BN+activation and add+activation into the units a runtime executes (fusion-closed cells)."""
    layers: list[Layer] = []
    for node in graph_module.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        inputs = [a for a in node.args if isinstance(a, fx.Node) and a in source_of]
        if not inputs:
            continue
        in_shape, out_shape = _shape(inputs[0]), _shape(node)
        in_var, out_var = var(source_of[inputs[0]]), var(source_of.get(node))
        spatial = dict(in_hw=tuple(in_shape[2:4]) if len(in_shape) == 4 else (1, 1),
                       out_hw=tuple(out_shape[2:4]) if len(out_shape) == 4 else (1, 1))
        if isinstance(module, nn.Conv2d):
            follower, bn = _single_user(node), False
            if follower is not None and follower.op == "call_module" and isinstance(modules[follower.target], nn.BatchNorm2d):
                bn, follower = True, _single_user(follower)
            layers.append(Layer(node.target, "conv", in_var, out_var, module.in_channels, module.out_channels,
                                kernel=module.kernel_size[0], stride=module.stride[0], padding=module.padding[0],
                                depthwise=module.groups > 1, bias=module.bias is not None, bn=bn,
                                act=_activation(follower, modules), **spatial))
        elif isinstance(module, nn.Linear):
            layers.append(Layer(node.target, "linear", in_var, out_var, module.in_features, module.out_features,
                                bias=module.bias is not None, **spatial))
        elif node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(inputs) == 2:
            layers.append(Layer(node.name, "add", out_var, out_var, out_shape[1], out_shape[1],
                                act=_activation(_single_user(node), modules), **spatial))
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)) or node.target in (F.adaptive_avg_pool2d, "mean"):
            layers.append(Layer(node.target if module is not None else node.name, "pool", in_var, in_var, in_shape[1],
                                in_shape[1], kernel=in_shape[2], stride=in_shape[2], pool="avg", **spatial))
        elif isinstance(module, nn.MaxPool2d):
            layers.append(Layer(node.target, "pool", in_var, in_var, in_shape[1], in_shape[1], kernel=_int(module.kernel_size),
                                stride=_int(module.stride), padding=_int(module.padding), pool="max", **spatial))
    return layers


def _int(value) -> int:
    return value[0] if isinstance(value, (tuple, list)) else int(value)
