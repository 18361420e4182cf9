"""Group traced nodes into the units a runtime executes: the layers that latency cells time.

ONNX Runtime and TensorRT fuse a convolution with the BatchNorm and activation after it, a linear layer with its
activation, a residual add with the activation after it; a squeeze-excitation gate (pool -> reduce -> act ->
expand -> gate -> mul) runs as a short chain of tiny kernels that is timed as one unit. Whatever is not fused
(a norm or activation after a concatenation, a pooling, a concatenation, a channel shuffle, a broadcast mul) is a
unit of its own. Element-wise arithmetic with constants or parameters (layer scales, hand-written hard-sigmoids)
is listed as untimed: the LUT calibration absorbs it.
"""

from __future__ import annotations

from torch import fx

from hwbcnet.space.layers import Layer, Layout
from hwbcnet.space.ops.elementwise import module_activation

_UNTIMED = ("scalar", "scale", "other")


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _hw(shape, axis: int) -> tuple[int, int]:
    """Spatial size of a tensor whose channels sit on `axis` (NCHW, channels-last NHWC, or (N, C))."""
    if len(shape) == 4:
        return (int(shape[2]), int(shape[3])) if axis == 1 else (int(shape[1]), int(shape[2]))
    return (1, 1)


class _Units:
    def __init__(self, t, layouts: dict[fx.Node, tuple[int, Layout]]):
        self.t = t
        self.layouts = layouts
        self.consumed: set[fx.Node] = set()
        self.layers: list[tuple[int, Layer]] = []
        self.order = {node: index for index, node in enumerate(t.graph_module.graph.nodes)}

    def kind(self, node) -> str | None:
        return self.t.categories.get(node, (None, {}))[0] if isinstance(node, fx.Node) else None

    def details(self, node) -> dict:
        return self.t.categories.get(node, (None, {}))[1]

    def layout(self, node) -> Layout:
        return self.layouts[node][1]

    def hw(self, node) -> tuple[int, int]:
        return _hw(self.t.shape(node), self.layouts[node][0])

    def add(self, node: fx.Node, layer: Layer) -> None:
        self.layers.append((self.order[node], layer))

    def fused_activation(self, node: fx.Node) -> tuple[str | None, fx.Node | None]:
        follower = _single_user(node)
        if follower is not None and self.kind(follower) == "act" and follower not in self.consumed:
            self.consumed.add(follower)
            return self.details(follower)["act"], follower
        return None, None

    # ------------------------------------------------------------------------------------------------ units

    def conv(self, node: fx.Node) -> None:
        module = self.t.module(node)
        bn, act = False, None
        follower = _single_user(node)
        if follower is not None and self.kind(follower) == "bn" and follower not in self.consumed:
            bn = True
            self.consumed.add(follower)
            act = module_activation(self.details(follower).get("act"))
            if act is None:
                act, _ = self.fused_activation(follower)
        elif follower is not None:
            act, _ = self.fused_activation(node)
        x = node.args[0]
        self.add(node, Layer(node.target, "conv", self.layout(x), self.layout(node), self.hw(x), self.hw(node),
                             kernel=tuple(module.kernel_size), stride=tuple(module.stride),
                             padding=_padding(module), group_width=self.details(node)["group_width"],
                             bias=module.bias is not None, bn=bn, act=act))

    def linear(self, node: fx.Node) -> None:
        module = self.t.module(node)
        act, _ = self.fused_activation(node)
        x = node.args[0]
        self.add(node, Layer(node.target, "linear", self.layout(x), self.layout(node), self.hw(x), self.hw(node),
                             bias=module.bias is not None, act=act))

    def elementwise(self, node: fx.Node, kind: str) -> None:
        act, _ = self.fused_activation(node) if kind == "add" else (None, None)
        layout = self.layout(node)
        self.add(node, Layer(_name(node), kind, layout, layout, self.hw(node), self.hw(node), act=act))

    def activation(self, node: fx.Node) -> None:
        layout = self.layout(node)
        self.add(node, Layer(_name(node), "act", layout, layout, self.hw(node), self.hw(node),
                             act=self.details(node)["act"]))

    def norm(self, node: fx.Node, norm: str) -> None:
        act = module_activation(self.details(node).get("act"))
        if act is None:
            act, _ = self.fused_activation(node)
        layout = self.layout(node)
        self.add(node, Layer(_name(node), "norm", layout, layout, self.hw(node), self.hw(node), act=act, norm=norm))

    def pool(self, node: fx.Node) -> None:
        d = self.details(node)
        x = node.args[0]
        self.add(node, Layer(_name(node), "pool", self.layout(x),
                             self.layout(node), self.hw(x), self.hw(node), kernel=tuple(d["kernel"]),
                             stride=tuple(d["stride"]), padding=tuple(d["padding"]), pool=d["pool"]))

    def squeeze_excitation(self, mul: fx.Node) -> bool:
        """Match x * gate(x) with gate = gate_act(expand(act(reduce(avgpool(x))))) and record it as one unit."""
        a, b = [arg for arg in mul.args[:2]]
        x, gate = (a, b) if self.t.shape(a)[2:] != (1, 1) else (b, a)
        chain = []

        def back(node, *kinds):
            while self.kind(node) == "nop" and len(node.users) == 1:
                chain.append(node)
                node = node.args[0]
            if self.kind(node) not in kinds or len(node.users) != 1:
                return None
            chain.append(node)
            return node

        gate_act = back(gate, "act")
        if gate_act is None or self.details(gate_act)["act"] not in ("sigmoid", "hardsigmoid"):
            return False
        expand = back(gate_act.args[0], "conv", "linear")
        if expand is None:
            return False
        inner = back(expand.args[0], "act", "bn")
        act = None
        if inner is not None and self.kind(inner) == "bn":
            inner = back(inner.args[0], "act")
        if inner is not None:
            act = self.details(inner)["act"]
            reduce = back(inner.args[0], "conv", "linear")
        else:
            reduce = back(expand.args[0], "conv", "linear")
        if reduce is None:
            return False
        pool = back(reduce.args[0], "pool")
        if pool is None or not self.details(pool).get("global_pool") or self.details(pool)["pool"] != "avg":
            return False
        source = pool.args[0]
        while self.kind(source) == "nop" and source is not x:
            source = source.args[0]
        if source is not x:
            return False
        reduce_module = self.t.module(reduce)
        self.consumed.update(chain)
        self.consumed.add(mul)
        self.add(mul, Layer(reduce.target.rpartition(".")[0] or mul.name, "se", self.layout(x), self.layout(x), self.hw(x), self.hw(x),
                            bias=reduce_module.bias is not None, act=act, mid=self.layout(reduce),
                            gate=self.details(gate_act)["act"]))
        return True


def _name(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else node.name


def _padding(module) -> tuple[int, int]:
    padding = module.padding
    if isinstance(padding, str):  # "same" / "valid"
        if padding == "valid":
            return (0, 0)
        return tuple((k - 1) * d // 2 for k, d in zip(module.kernel_size, module.dilation))
    return tuple(int(p) for p in padding)


def executed_layers(t, layouts) -> tuple[list[Layer], list[str]]:
    """(the executed layers in graph order, the names of executed ops no layer times)."""
    units = _Units(t, layouts)
    nodes = list(t.graph_module.graph.nodes)
    for node in nodes:
        if units.kind(node) == "gate":
            units.squeeze_excitation(node)
    untimed = []
    for node in nodes:
        kind = units.kind(node)
        if node in units.consumed or kind is None or node not in layouts and kind not in _UNTIMED:
            continue
        if kind == "conv":
            units.conv(node)
        elif kind == "linear":
            units.linear(node)
        elif kind in ("add", "mul", "gate"):
            units.elementwise(node, "add" if kind == "add" else "mul")
        elif kind == "bn" or kind == "ln" or kind == "gn":
            units.norm(node, kind)
        elif kind == "act":
            units.activation(node)
        elif kind == "pool":
            units.pool(node)
        elif kind == "concat":
            layout = units.layout(node)
            units.add(node, Layer(node.name, "concat", layout, layout, units.hw(node), units.hw(node),
                                  parts=units.details(node)["parts"]))
        elif kind == "shuffle":
            d = units.details(node)
            layout = Layout.fixed(d["channels"])
            units.add(node, Layer(node.name, "shuffle", layout, layout, d["hw"], d["hw"], groups=d["groups"]))
        elif kind in _UNTIMED:
            untimed.append(node.name)
    layers = [layer for _, layer in sorted(units.layers, key=lambda item: item[0])]
    return layers, untimed
