"""Derive the width variables of any PyTorch CNN by tracing it with torch.fx.

Every tensor that carries channels gets a channel axis and a list of *segments*, each a run of channels from one
*channel source*. Every conv/linear output starts a source. Sources are merged with union-find where the graph
forces equal channel counts: the operands of a residual add or of a channel gate (squeeze-excitation) share one
source, a depthwise or grouped conv's output is its input's source. A concatenation along channels keeps its
operands' segments in order, a flattened CxHxW map repeats each channel H*W times. Operations that mix channels in
ways slicing cannot follow (channel shuffle, splits with constant sizes) *pin* their sources at full width, with
the reason recorded. Sources reaching the model input or output (the classes) are fixed. Each remaining source is
one width variable. How each op family maps channels is a rule in hwbcnet/space/ops; nothing here knows a
particular model, in the spirit of Torch-Pruning's dependency graph.

After the analysis the model is materialised at probe widths and run: every tensor's channel count must be what
the analysis predicts, so a coupling the rules got wrong is an error naming the node, never a silent acceptance.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from hwbcnet.errors import HwbcnetError
from hwbcnet.space.layers import Layer, Layout, MacTerm, ModuleSpec, ParamSpec, Segment

# Modules fx must not trace into: their forward reads `self.training` at run time (so a traced graph keeps
# stochastic depth and dropout working while the supernet trains).
_LEAF_CLASS_NAMES = {"StochasticDepth", "DropPath", "DropBlock2d"}
_OUTPUT = "model output"


@dataclass
class WidthVariable:
    """A group of tied output-channel dimensions that shrink together."""

    name: str  # the first module (in graph order) that produces these channels
    channels: int  # C at full width
    members: tuple[str, ...]  # modules whose channels this variable sets (convs, norms, linears, ...)
    divisor: int = 1  # every width is a multiple of this (group width of grouped convs, a channel divisor)


@dataclass
class TracedModel:
    graph_module: fx.GraphModule
    variables: list[WidthVariable]
    layers: list[Layer]
    params: dict[str, ParamSpec]  # qualified tensor name -> shape in terms of the variables
    modules: dict[str, ModuleSpec]  # leaf modules whose size attributes follow the variables
    macs: list[MacTerm]
    pinned: list[str] = field(default_factory=list)  # why channels were pinned at full width
    untimed: list[str] = field(default_factory=list)  # executed ops no latency cell covers


@dataclass(frozen=True)
class Seg:
    """A segment while tracing: `src` is a channel source (resolved to a variable at the end)."""

    src: int
    channels: int
    repeat: int = 1


@dataclass(frozen=True)
class Channels:
    """Channel information of one tensor: the axis that carries channels and its segments."""

    axis: int
    segs: tuple[Seg, ...]
    ndim: int

    @property
    def size(self) -> int:
        return sum(s.channels * s.repeat for s in self.segs)

    def with_axis(self, axis: int, ndim: int) -> "Channels":
        return Channels(axis, self.segs, ndim)


class Sources:
    """Union-find over channel sources."""

    def __init__(self):
        self.parent: list[int] = []
        self.channels: list[int] = []
        self.fixed: list[bool] = []
        self.producers: list[list[str]] = []
        self.divisor: list[int] = []

    def new(self, channels: int, producer: str | None = None, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(int(channels))
        self.fixed.append(fixed or channels <= 1)  # a single channel cannot shrink
        self.producers.append([producer] if producer else [])
        self.divisor.append(1)
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
            raise HwbcnetError(f"{where}: ties tensors with {self.channels[ra]} and {self.channels[rb]} channels")
        keep, drop = min(ra, rb), max(ra, rb)  # the earlier source names the group
        self.parent[drop] = keep
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]
        self.producers[keep] += self.producers[drop]
        self.divisor[keep] = math.lcm(self.divisor[keep], self.divisor[drop])
        return keep

    def is_free(self, src: int) -> bool:
        return not self.fixed[self.find(src)]


class ChannelTracer(fx.Tracer):
    """torch.fx tracer whose leaves are torch.nn modules plus every norm and conv subclass (timm's BatchNormAct2d,
    Conv2dSame, LayerNorm2d, ...: one rule handles the whole module), stochastic-depth modules, modules the user
    pinned, and the modules timm registers as not traceable."""

    def __init__(self, pinned: set[str]):
        super().__init__(autowrap_functions=_timm_autowrap_functions())
        self.pinned = pinned
        self.extra_leaves = _timm_leaf_modules()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.pinned or getattr(m, "hwbcnet_fixed", False):
            return True
        if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                          nn.Linear)):
            return True
        if type(m).__name__ in _LEAF_CLASS_NAMES or isinstance(m, self.extra_leaves):
            return True
        return super().is_leaf_module(m, qualname)


def _timm_leaf_modules() -> tuple[type, ...]:
    """timm marks some modules as not symbolically traceable; treat them as leaves (their rules, if any, apply)."""
    import sys

    fx_registry = sys.modules.get("timm.layers._fx")
    if fx_registry is None:
        return ()
    try:
        return tuple(fx_registry.get_notrace_modules())
    except Exception:  # an older/newer timm without this helper: nothing extra
        return ()


def _timm_autowrap_functions() -> tuple:
    import sys

    fx_registry = sys.modules.get("timm.layers._fx")
    if fx_registry is None:
        return ()
    try:
        return tuple(fx_registry.get_notrace_functions())
    except Exception:
        return ()


class Tracing:
    """The state the op rules read and write while one model is traced."""

    def __init__(self, graph_module: fx.GraphModule, pinned_modules: Sequence[str]):
        self.graph_module = graph_module
        self.modules = dict(graph_module.named_modules())
        self.sources = Sources()
        self.info: dict[fx.Node, object] = {}  # Channels, a tuple of them (split outputs) or absent
        self.params: dict[str, tuple] = {}  # tensor name -> dims (Channels or int)
        self.module_specs: dict[str, tuple] = {}  # module -> (kind, in Channels, out Channels, group width)
        self.mac_terms: list[tuple] = []  # (Channels, Channels | None, coef)
        self.categories: dict[fx.Node, tuple] = {}  # node -> (category, details...) for the executed-layer pass
        self.pin_reasons: dict[int, str] = {}  # source -> first reason it was pinned
        self.pinned_modules = set(pinned_modules)
        self.members: dict[int, list[str]] = {}  # source -> modules whose channels it sets besides its producers

    # ------------------------------------------------------------------------------------------------ reading

    def shape(self, node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def channels(self, arg) -> Channels | None:
        value = self.info.get(arg) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, Channels) else None

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        """The node's tensor inputs in argument order (lists/tuples flattened, e.g. torch.cat's operand list)."""
        found: list[fx.Node] = []

        def visit(arg):
            if isinstance(arg, fx.Node):
                if self.shape(arg) is not None or isinstance(self.info.get(arg), tuple):
                    found.append(arg)
            elif isinstance(arg, (list, tuple)):
                for item in arg:
                    visit(item)
            elif isinstance(arg, dict):
                for item in arg.values():
                    visit(item)

        visit(node.args)
        visit(node.kwargs)
        return found

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def is_free(self, info: Channels | None) -> bool:
        return info is not None and any(self.sources.is_free(s.src) for s in info.segs)

    def is_pinned_module(self, name: str, module: nn.Module) -> bool:
        return name in self.pinned_modules or bool(getattr(module, "hwbcnet_fixed", False))

    # ------------------------------------------------------------------------------------------------ writing

    def set(self, node: fx.Node, info) -> None:
        self.info[node] = info

    def new_channels(self, node: fx.Node, channels: int, axis: int = 1, producer: str | None = None,
                     fixed: bool = False) -> Channels:
        shape = self.shape(node)
        return Channels(axis, (Seg(self.sources.new(channels, producer, fixed), channels),), len(shape))

    def fixed_like(self, node: fx.Node) -> None:
        """Give a node's tensor output(s) new fixed channel sources (an op whose channels cannot vary)."""
        meta = node.meta.get("tensor_meta")
        if meta is None:
            return
        if hasattr(meta, "shape"):
            shape = tuple(meta.shape)
            if len(shape) >= 2:
                self.set(node, Channels(1, (Seg(self.sources.new(shape[1], fixed=True), shape[1]),), len(shape)))
        elif isinstance(meta, (tuple, list)):
            parts = []
            for item in meta:
                shape = tuple(item.shape) if hasattr(item, "shape") else ()
                parts.append(Channels(1, (Seg(self.sources.new(shape[1], fixed=True), shape[1]),), len(shape))
                             if len(shape) >= 2 else None)
            self.set(node, tuple(parts))

    def union(self, a: Channels, b: Channels, where: str) -> Channels:
        """Tie two channel layouts segment by segment (they must have the same structure)."""
        if [(s.channels, s.repeat) for s in a.segs] != [(s.channels, s.repeat) for s in b.segs]:
            raise _SegmentMismatch()
        for sa, sb in zip(a.segs, b.segs):
            self.sources.union(sa.src, sb.src, where)
        return a

    def pin(self, info, reason: str) -> None:
        """Fix every source of `info` at full width."""
        items = info if isinstance(info, tuple) else (info,)
        for item in items:
            if item is None:
                continue
            for seg in item.segs:
                root = self.sources.find(seg.src)
                if not self.sources.fixed[root]:
                    self.sources.fixed[root] = True
                    self.pin_reasons.setdefault(root, reason)

    def require_divisor(self, info: Channels, divisor: int, node: fx.Node) -> None:
        for seg in info.segs:
            root = self.sources.find(seg.src)
            self.sources.divisor[root] = math.lcm(self.sources.divisor[root], divisor)

    def add_member(self, info: Channels, name: str) -> None:
        for seg in info.segs:
            self.members.setdefault(seg.src, []).append(name)

    def param(self, name: str, dims: Sequence) -> None:
        self.params[name] = tuple(dims)

    def module_spec(self, name: str, kind: str, inputs: Channels, outputs: Channels, group_width: int = 0) -> None:
        self.module_specs[name] = (kind, inputs, outputs, group_width)

    def macs(self, a: Channels, b: Channels | None, coef: int) -> None:
        self.mac_terms.append((a, b, int(coef)))

    def category(self, node: fx.Node, kind: str, **details) -> None:
        self.categories[node] = (kind, details)

    # ------------------------------------------------------------------------------------------------ errors

    def unsupported(self, node: fx.Node, why: str = "") -> HwbcnetError:
        """The one-line error for an op the rules do not understand, naming the way out: pin the modules that
        produce its inputs' channels (--fixed GLOB) or the module itself (`hwbcnet_fixed = True`)."""
        producers = []
        for arg in self.tensor_args(node):
            info = self.channels(arg)
            for seg in (info.segs if info else ()):
                root = self.sources.find(seg.src)
                if not self.sources.fixed[root]:
                    producers += self.sources.producers[root][:1]
        producers = list(dict.fromkeys(producers))
        where = f"`{node.format_node()}`"
        hint = (f"pin its input channels with --fixed '{producers[0]}'" + (f" (and {len(producers) - 1} more)"
                if len(producers) > 1 else "") if producers else "pin the module with --fixed")
        return HwbcnetError(f"cannot derive channel coupling through {where}{': ' + why if why else ''}; {hint} "
                            "or set `hwbcnet_fixed = True` on the module that contains it")


class _SegmentMismatch(Exception):
    """Two layouts that must be tied have different segment structures (handled by the caller: it pins them)."""


# ---------------------------------------------------------------------------------------------------- driver


def trace_model(model: nn.Module, input_shape: tuple[int, ...], fixed: Iterable[str] = (), verify: bool = True,
                probe_seed: int = 0) -> TracedModel:
    """Trace `model` (eval mode) on an input of `input_shape`. `fixed`: glob patterns of module names whose
    channels stay at full width (conv/linear/norm: their outputs; any other module: its inputs and outputs)."""
    from hwbcnet.space import ops

    model = model.eval()
    patterns = list(fixed)
    names = [name for name, _ in model.named_modules() if name]
    pinned = {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in names)]
    if unmatched:
        raise HwbcnetError(f"--fixed {unmatched[0]!r} matches no module of the model; module names look like "
                           f"{', '.join(names[:3])}")
    graph_module = _symbolic_trace(model, pinned)
    try:
        propagate_shapes(graph_module, input_shape)
    except Exception as exc:
        raise HwbcnetError(f"the model does not run on a {tuple(input_shape)} input ({_first_line(exc)})") from None

    tracing = Tracing(graph_module, pinned)
    for node in graph_module.graph.nodes:
        _visit(node, tracing, ops)
    traced = _finalize(tracing)
    if verify and traced.variables:
        verify_traced(traced, input_shape, seed=probe_seed)
    return traced


def _symbolic_trace(model: nn.Module, pinned: set[str]) -> fx.GraphModule:
    tracer = ChannelTracer(pinned)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError ... for untraceable code
        raise HwbcnetError(f"torch.fx cannot trace {type(model).__name__} ({_first_line(exc)}); make the forward "
                           "traceable (no Python control flow on tensor values) or pin the offending module with "
                           "--fixed GLOB") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def propagate_shapes(graph_module: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """Record every node's output shape (node.meta["tensor_meta"]). Runs on a copy on the meta device (shapes only,
    no arithmetic); models with ops the meta device cannot run are run for real on zeros."""
    try:
        meta_copy = copy.deepcopy(graph_module).to("meta")
        ShapeProp(meta_copy).propagate(torch.zeros(input_shape, device="meta"))
    except Exception:
        ShapeProp(graph_module).propagate(torch.zeros(input_shape))
        return
    for node, twin in zip(graph_module.graph.nodes, meta_copy.graph.nodes):
        if "tensor_meta" in twin.meta:
            node.meta["tensor_meta"] = twin.meta["tensor_meta"]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _visit(node: fx.Node, t: Tracing, ops) -> None:
    if node.op == "placeholder":
        shape = t.shape(node)
        if shape is not None and len(shape) >= 2:
            t.set(node, t.new_channels(node, shape[1], fixed=True))
        return
    if node.op == "output":
        for arg in t.tensor_args(node):
            info = t.info.get(arg)
            t.pin(info, _OUTPUT)
        return
    if node.op == "get_attr":
        return  # parameters are specified by the rule of the op that uses them
    rule = ops.rule_for(node, t.modules)
    inputs = t.tensor_args(node)
    if node.op == "call_module" and t.is_pinned_module(node.target, t.module(node)) and rule is None:
        rule = _opaque
    if rule is None:
        produces_tensor = node.meta.get("tensor_meta") is not None
        if not inputs or not produces_tensor:
            return  # sizes, shapes, asserts and other non-tensor values pass through
        if any(t.is_free(t.channels(arg)) or _tuple_free(t, arg) for arg in inputs):
            raise t.unsupported(node)
        t.fixed_like(node)  # everything it reads is fixed: its output is a fixed-size tensor too
        return
    rule(node, t)


def _tuple_free(t: Tracing, arg) -> bool:
    value = t.info.get(arg)
    return isinstance(value, tuple) and any(t.is_free(item) for item in value)


def _opaque(node: fx.Node, t: Tracing) -> None:
    """A module the user pinned (--fixed / hwbcnet_fixed) that no rule slices: its inputs and outputs keep their
    full channel counts and it runs unchanged."""
    for arg in t.tensor_args(node):
        t.pin(t.info.get(arg), f"{node.target} is pinned")
    t.fixed_like(node)


# ------------------------------------------------------------------------------------------------- finalizing


def _finalize(t: Tracing) -> TracedModel:
    from hwbcnet.space.units import executed_layers

    sources = t.sources
    for src in range(len(sources.parent)):  # a divisor the channel count does not honour pins the source
        root = sources.find(src)
        if not sources.fixed[root] and sources.channels[root] % sources.divisor[root]:
            sources.fixed[root] = True
            t.pin_reasons.setdefault(root, f"{sources.channels[root]} channels are not a multiple of the group width "
                                           f"{sources.divisor[root]}")
    var_of_root: dict[int, int] = {}
    variables: list[WidthVariable] = []
    members: dict[int, list[str]] = {}
    for src, names in t.members.items():
        members.setdefault(sources.find(src), []).extend(names)
    for src in range(len(sources.parent)):
        root = sources.find(src)
        if root in var_of_root or sources.fixed[root] or not sources.producers[root]:
            continue
        var_of_root[root] = len(variables)
        names = list(dict.fromkeys(sources.producers[root] + members.get(root, [])))
        variables.append(WidthVariable(sources.producers[root][0], sources.channels[root], tuple(names),
                                       sources.divisor[root]))

    def layout(info: Channels) -> Layout:
        return Layout(tuple(Segment(var_of_root.get(sources.find(s.src)), s.channels, s.repeat) for s in info.segs))

    def dim(d):
        return layout(d) if isinstance(d, Channels) else int(d)

    params = {name: ParamSpec(tuple(dim(d) for d in dims)) for name, dims in t.params.items()}
    modules = {name: ModuleSpec(kind, layout(a), layout(b), gw) for name, (kind, a, b, gw) in t.module_specs.items()}
    macs = [MacTerm(layout(a), None if b is None else layout(b), coef) for a, b, coef in t.mac_terms]
    layouts = {node: (info.axis, layout(info)) for node, info in t.info.items() if isinstance(info, Channels)}
    layers, untimed = executed_layers(t, layouts)
    pinned = [f"{sources.producers[root][0]}: {reason}" for root, reason in t.pin_reasons.items()
              if sources.producers[root] and reason != _OUTPUT]
    traced = TracedModel(t.graph_module, variables, layers, params, modules, macs, pinned, untimed)
    traced.node_layouts = {node.name: value for node, value in layouts.items()}
    return traced


# ------------------------------------------------------------------------------------------------ verification


def verify_traced(traced: TracedModel, input_shape: tuple[int, ...], seed: int = 0) -> None:
    """Materialise the model at random widths and check every tensor's channel count against the analysis."""
    from hwbcnet.space.materialize import materialize, prefix_picks

    rng = np.random.default_rng(seed)
    probe = []
    for v in traced.variables:
        steps = v.channels // v.divisor
        probe.append(v.divisor * int(rng.integers(max(1, steps // 3), steps + 1)) if steps > 1 else v.channels)
    model = materialize(traced, prefix_picks(probe), [v.channels for v in traced.variables])
    try:
        propagate_shapes(model, input_shape)
    except Exception as exc:
        node = _failing_node(exc)
        raise HwbcnetError(f"slicing the model's channels breaks {node} ({_first_line(exc)}); it likely hard-codes a "
                           "channel count: pin the channels it uses with --fixed GLOB") from None
    for node in model.graph.nodes:
        expected = traced.node_layouts.get(node.name)
        meta = node.meta.get("tensor_meta")
        if expected is None or meta is None or not hasattr(meta, "shape"):
            continue
        axis, layout = expected
        actual = tuple(meta.shape)[axis]
        if actual != layout.size_at(probe):
            raise HwbcnetError(f"channel analysis disagrees with the model at `{node.format_node()}` ({actual} "
                               f"channels instead of {layout.size_at(probe)} at probe widths); pin the channels "
                               "around it with --fixed GLOB and please report the model")


def _failing_node(exc: Exception) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "node=" in line or "While executing" in line:
            return line.strip()[:200]
    return "a node"
