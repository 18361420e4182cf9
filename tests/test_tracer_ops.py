"""Tracer coverage (issue 9, item 3): every op family on a small in-house model, checked end to end.

For each family: the sliced supernet equals the standalone pruned model (ua, bcnet, bcnetv2; both paths; min, full
and random archs), the analytic MACs and parameter counts equal torch's flop counter and the standalone model's
numels, and the pruned model exported to ONNX gives PyTorch's logits in ONNX Runtime. benchmarks/zoo_coverage.py
runs the same checks over the torchvision and timm zoos; each rule added for a zoo model has its pattern here.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.export.onnx_export import export_onnx
from hwbcnet.space import Layout, Segment, WidthSpace, build_space
from hwbcnet.space.tracing import trace_model
from hwbcnet.supernet.extract import build_standalone
from hwbcnet.supernet.supernet import SuperNet

RESOLUTION = 16
CLASSES = 10


def make_space(model: nn.Module, resolution: int = RESOLUTION, fixed=(), bins: int = 4) -> WidthSpace:
    torch.manual_seed(0)
    traced = trace_model(model, (1, 3, resolution, resolution), fixed=fixed)
    return WidthSpace("test", resolution, CLASSES, 1.0, bins, 1, traced, fixed=tuple(fixed))


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Norm statistics and every per-channel vector (affines, biases, layer scales) away from their identity
    init, so a channel taken from the wrong place changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
        for p in module.parameters():
            if p.numel() == max(p.shape, default=1):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)


def assert_exact(space: WidthSpace, tmp_path=None, random_archs: int = 2, seed: int = 0) -> None:
    """Sliced == standalone for every principle and path, exact MACs/params, and ONNX == PyTorch."""
    rng = np.random.default_rng(seed)
    x = torch.randn(2, 3, space.resolution, space.resolution, generator=torch.Generator().manual_seed(seed))
    for principle in ("ua", "bcnet", "bcnetv2"):
        s = dataclasses.replace(space, min_bins=2) if principle == "bcnetv2" else space
        supernet = SuperNet(s, principle).eval()
        randomize(supernet, seed)
        for arch in [s.min_arch(), s.full_arch(), *s.random_archs(rng, random_archs)]:
            for path in supernet.principle.paths:
                standalone = build_standalone(s, arch, supernet, path).eval()
                with torch.no_grad():
                    torch.testing.assert_close(supernet.activate(arch, path)(x), standalone(x), rtol=1e-5, atol=1e-5)
    flops, params = flops_cost(space), params_cost(space)
    for arch in [space.min_arch(), space.full_arch(), *space.random_archs(rng, random_archs)]:
        model = build_standalone(space, arch).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x[:1])
        assert flops(arch[None])[0] == counter.get_total_flops() // 2  # the counter counts a MAC as 2 FLOPs
        assert params(arch[None])[0] == sum(p.numel() for p in model.parameters())
    if tmp_path is not None:
        arch = space.random_archs(rng, 1)[0]
        model = build_standalone(space, arch).eval()
        randomize(model, seed + 1)
        report = export_onnx(model, space, arch, tmp_path / "model.onnx")  # raises unless ONNX == PyTorch
        assert report.max_abs_diff < 1e-4


def var_of(space: WidthSpace, module: str) -> int | None:
    """The width variable that sets a module's output channels (None: fixed)."""
    layout = space.traced.modules[module].out_layout
    assert len(layout.segments) == 1
    return layout.segments[0].var


def conv_bn(cin, cout, kernel=3, stride=1, groups=1, act=None):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act] if act is not None else []))


class Head(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


# ------------------------------------------------------------------------------------------------ activations


class ActivationChain(nn.Module):
    """One conv (+BN for the even ones) per activation; `acts` are modules or callables (functions, lambdas)."""

    def __init__(self, acts):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = 3
        for i, _ in enumerate(acts):
            self.convs.append(nn.Conv2d(channels, 8 + 2 * (i % 3), 3, padding=1, bias=i % 2 == 1))
            channels = 8 + 2 * (i % 3)
            self.norms.append(nn.BatchNorm2d(channels) if i % 2 == 0 else nn.Identity())
        self.acts = nn.ModuleList(a for a in acts if isinstance(a, nn.Module))
        self.calls = [a if not isinstance(a, nn.Module) else None for a in acts]
        self.head = Head(channels)

    def forward(self, x):
        modules = iter(self.acts)
        for conv, norm, call in zip(self.convs, self.norms, self.calls):
            x = norm(conv(x))
            x = next(modules)(x) if call is None else call(x)
        return self.head(x)


NAMES = ["silu", "hardswish", "hardsigmoid", "sigmoid", "gelu", "gelu-tanh", "leakyrelu", "mish", "tanh"]
ACTIVATION_FORMS = {
    "modules": [nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(), nn.GELU(), nn.GELU(approximate="tanh"),
                nn.LeakyReLU(0.1), nn.Mish(), nn.Tanh()],
    "inplace modules": [nn.SiLU(inplace=True), nn.Hardswish(inplace=True), nn.Hardsigmoid(inplace=True),
                        nn.Sigmoid(), nn.GELU(), nn.GELU(approximate="tanh"), nn.LeakyReLU(0.1, inplace=True),
                        nn.Mish(inplace=True), nn.Tanh()],
    "functions": [F.silu, F.hardswish, F.hardsigmoid, torch.sigmoid, F.gelu,
                  functools.partial(F.gelu, approximate="tanh"), functools.partial(F.leaky_relu, negative_slope=0.1),
                  F.mish, torch.tanh],
    "inplace functions": [functools.partial(F.silu, inplace=True), functools.partial(F.hardswish, inplace=True),
                          functools.partial(F.hardsigmoid, inplace=True), torch.sigmoid_, F.gelu,
                          functools.partial(F.gelu, approximate="tanh"), F.leaky_relu_,
                          functools.partial(F.mish, inplace=True), torch.tanh_],
    "methods": [F.silu, F.hardswish, F.hardsigmoid, lambda x: x.sigmoid(), F.gelu,
                functools.partial(F.gelu, approximate="tanh"), lambda x: F.leaky_relu(x, 0.1), F.mish,
                lambda x: x.tanh()],
    "inplace methods": [F.silu, F.hardswish, F.hardsigmoid, lambda x: x.sigmoid_(), F.gelu,
                        functools.partial(F.gelu, approximate="tanh"), lambda x: F.leaky_relu(x, 0.1), F.mish,
                        lambda x: x.tanh_()],
}


@pytest.mark.parametrize("form", ACTIVATION_FORMS)
def test_activations_fuse_into_their_conv_and_slice_exactly(form, tmp_path):
    space = make_space(ActivationChain(ACTIVATION_FORMS[form]))
    convs = [layer for layer in space.layers if layer.kind == "conv"]
    assert [layer.act for layer in convs] == NAMES
    assert [layer.bn for layer in convs] == [i % 2 == 0 for i in range(len(NAMES))]
    assert space.num_vars == len(NAMES) and not space.traced.pinned
    assert_exact(space, tmp_path, random_archs=1)


# ------------------------------------------------------------------------------------------ squeeze-excitation


class ConvGate(nn.Module):
    """torchvision's SqueezeExcitation: pool -> 1x1 conv -> act -> 1x1 conv -> gate, x * scale."""

    def __init__(self, channels, reduced, gate=nn.Sigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.act, self.gate = nn.ReLU(), gate()

    def forward(self, x):
        scale = self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


class LinearGate(nn.Module):
    """The original SE-Net form: mean -> linear -> act -> linear -> hard-sigmoid, reshaped, gate * x."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.reduce = nn.Linear(channels, reduced)
        self.expand = nn.Linear(reduced, channels)

    def forward(self, x):
        n, c = x.shape[:2]
        gate = F.hardsigmoid(self.expand(F.silu(self.reduce(x.mean((2, 3))))))
        return gate.view(n, c, 1, 1) * x


class SENet(nn.Module):
    def __init__(self, gate):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.expand = conv_bn(16, 32, act=nn.SiLU())
        self.se = gate(32, 8)
        self.project = conv_bn(32, 16)
        self.head = Head(16)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.project(self.se(self.expand(x))))


@pytest.mark.parametrize("gate, reduce, expand", [(ConvGate, "se.fc1", "se.fc2"),
                                                  (LinearGate, "se.reduce", "se.expand")])
def test_squeeze_excitation_gate_ties_to_its_input_and_reduction_is_searched(gate, reduce, expand, tmp_path):
    space = make_space(SENet(gate))
    # the gate's channels are x's channels; the reduced width is a variable of its own
    assert var_of(space, expand) == var_of(space, "expand.0") is not None
    assert var_of(space, reduce) not in (None, var_of(space, "expand.0"))
    assert space.num_vars == 3  # residual stream, expansion (+ gate), reduction
    se = [layer for layer in space.layers if layer.kind == "se"]
    assert len(se) == 1 and se[0].mid == space.traced.modules[reduce].out_layout
    assert se[0].gate == ("sigmoid" if gate is ConvGate else "hardsigmoid")
    assert not space.traced.pinned
    assert_exact(space, tmp_path)


# ------------------------------------------------------------------------------------------------ grouped convs


class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped 3x3 conv (group width 4) and GroupNorm (8 channels per group) in the middle."""

    def __init__(self, channels, width, group_width, stride=1):
        super().__init__()
        self.reduce = conv_bn(channels, width, 1, act=nn.ReLU())
        self.grouped = nn.Conv2d(width, width, 3, stride, 1, groups=width // group_width, bias=False)
        self.norm = nn.GroupNorm(width // 8, width)
        self.se = ConvGate(width, 4)  # RegNet-Y puts an SE gate after the grouped conv
        self.project = conv_bn(width, channels * stride, 1)
        self.shortcut = conv_bn(channels, channels * stride, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        y = self.se(F.relu(self.norm(self.grouped(self.reduce(x)))))
        return F.relu(self.project(y) + self.shortcut(x))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.block1 = ResNeXtBlock(16, 32, 4)
        self.block2 = ResNeXtBlock(16, 48, 8, stride=2)
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


def test_grouped_convs_keep_their_group_width_and_the_groups_follow_the_width(tmp_path):
    space = make_space(GroupedNet(), bins=6)
    v1, v2 = var_of(space, "block1.reduce.0"), var_of(space, "block2.reduce.0")
    # the grouped conv, its GroupNorm and its gate follow the conv before it; widths are whole groups
    assert space.traced.modules["block1.grouped"].out_layout.vars == (v1,)
    assert space.traced.modules["block1.grouped"].group_width == 4
    assert space.variables[v1].divisor == 8  # lcm of the conv's 4 and the GroupNorm's 8 channels per group
    assert space.variables[v2].divisor == 8
    assert var_of(space, "block2.se.fc2") == v2
    for arch in [space.min_arch(), *space.random_archs(np.random.default_rng(0), 3)]:
        model = build_standalone(space, arch)
        for name, gw in (("block1.grouped", 4), ("block2.grouped", 8)):
            conv = model.get_submodule(name)
            assert conv.out_channels % 8 == 0 and conv.groups == conv.out_channels // gw
            assert conv.weight.shape[1] == gw
        norm = model.get_submodule("block1.norm")
        assert norm.num_groups == norm.num_channels // 8
    assert_exact(space, tmp_path)


class ExpandingGroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.grouped = conv_bn(16, 32, groups=4, act=nn.ReLU())  # 4 input and 8 output channels per group
        self.project = conv_bn(32, 24, 1, act=nn.ReLU())
        self.head = Head(24)

    def forward(self, x):
        return self.head(self.project(self.grouped(self.stem(x))))


def test_grouped_conv_that_changes_the_channel_count_is_pinned_with_its_reason(tmp_path):
    space = make_space(ExpandingGroupedConv())
    assert var_of(space, "stem.0") is None and var_of(space, "grouped.0") is None
    assert [v.name for v in space.variables] == ["project.0"]
    assert space.traced.pinned == ["stem.0: grouped.0: grouped conv with 16 input and 32 output channels"]
    assert_exact(space, tmp_path)


# ------------------------------------------------------------------------------------------------ concatenation


class DenseBlock(nn.Module):
    """DenseNet: every layer reads the concatenation of the block input and all earlier layers' outputs."""

    def __init__(self, channels, growth, layers):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels + i * growth), nn.ReLU(),
                          nn.Conv2d(channels + i * growth, growth, 3, padding=1, bias=False)) for i in range(layers))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block = DenseBlock(16, 8, 3)
        self.transition = nn.Sequential(nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 24, 1, bias=False),
                                        nn.AvgPool2d(2))
        self.head = Head(24)

    def forward(self, x):
        return self.head(self.transition(self.block(self.stem(x))))


def test_dense_concatenation_is_seen_in_order_by_its_consumers(tmp_path):
    space = make_space(DenseNet())
    parts = [var_of(space, name) for name in ("stem", "block.layers.0.2", "block.layers.1.2", "block.layers.2.2")]
    assert None not in parts and len(set(parts)) == 4
    layout = space.traced.modules["transition.2"].in_layout
    assert layout == Layout(tuple(Segment(v, c) for v, c in zip(parts, (16, 8, 8, 8))))
    assert space.traced.params["transition.0.running_mean"].dims == (layout,)
    # torch.cat of the block input alone (the first layer's input) is no concat cell
    assert [layer.parts for layer in space.layers if layer.kind == "concat"] == [2, 3, 4]
    assert_exact(space, tmp_path)


class Inception(nn.Module):
    """GoogLeNet's module: 1x1, 1x1 -> 3x3, 1x1 -> 5x5 and pool -> 1x1 branches concatenated."""

    def __init__(self, channels):
        super().__init__()
        self.b1 = conv_bn(channels, 8, 1, act=nn.ReLU())
        self.b2 = nn.Sequential(conv_bn(channels, 6, 1, act=nn.ReLU()), conv_bn(6, 12, 3, act=nn.ReLU()))
        self.b3 = nn.Sequential(conv_bn(channels, 4, 1, act=nn.ReLU()), conv_bn(4, 6, 5, act=nn.ReLU()))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(channels, 6, 1, act=nn.ReLU()))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class Fire(nn.Module):
    """SqueezeNet: squeeze 1x1, then 1x1 and 3x3 expansions concatenated."""

    def __init__(self, channels, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(channels, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x), inplace=True)
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class Ghost(nn.Module):
    """GhostNet: a primary conv, a cheap depthwise conv of its output, concatenated, cut to `out` channels."""

    def __init__(self, channels, out, relu=True):
        super().__init__()
        self.out = out
        init = -(-out // 2)
        self.primary = conv_bn(channels, init, 1, act=nn.ReLU() if relu else None)
        self.cheap = conv_bn(init, init, 3, groups=init, act=nn.ReLU() if relu else None)

    def forward(self, x):
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out, :, :]


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.inception = Inception(16)
        self.fire = Fire(32, 8, 12)
        self.ghost = Ghost(24, 16)
        self.ghost_odd = Ghost(16, 15, relu=False)  # 8 + 8 channels cut to 15: a real slice of the concat
        self.head = Head(15)

    def forward(self, x):
        return self.head(self.ghost_odd(self.ghost(self.fire(self.inception(self.stem(x))))))


def test_inception_fire_and_ghost_concatenations_slice_exactly(tmp_path):
    space = make_space(ConcatNet())
    branches = [var_of(space, n) for n in ("inception.b1.0", "inception.b2.1.0", "inception.b3.1.0",
                                           "inception.b4.1.0")]
    assert space.traced.modules["fire.squeeze"].in_layout.vars == tuple(branches)
    expand = [var_of(space, n) for n in ("fire.expand1x1", "fire.expand3x3")]
    assert space.traced.modules["ghost.primary.0"].in_layout.vars == tuple(expand)
    # the cheap depthwise conv follows the primary conv: the ghost output is one variable, twice
    ghost = var_of(space, "ghost.primary.0")
    assert space.traced.modules["ghost_odd.primary.0"].in_layout == Layout((Segment(ghost, 8), Segment(ghost, 8)))
    # [:, :15] of 8 + 8 channels: the primary conv's output is cut into channels 0:7 (searched) and 7:8 (a single
    # channel, fixed), and the slice's bound follows the widths
    odd = space.traced.modules["ghost_odd.primary.0"].out_layout
    assert [(seg.var is None, seg.channels) for seg in odd.segments] == [(False, 7), (True, 1)]
    assert space.variables[odd.segments[0].var].name == "ghost_odd.primary.0[0:7]"
    assert list(space.traced.layout_args) == ["getitem_1"] and not space.traced.pinned
    assert_exact(space, tmp_path)


# --------------------------------------------------------------------- splits and slices at constant positions


class CSPStage(nn.Module):
    """CSPNet: the expanded channels are split in two halves (constant sizes); one half runs the blocks."""

    def __init__(self, channels):
        super().__init__()
        self.conv_exp = conv_bn(channels, 32, 1, act=nn.ReLU())
        self.block = conv_bn(16, 16, act=nn.ReLU())
        self.conv_transition = conv_bn(32, 24, 1, act=nn.ReLU())

    def forward(self, x):
        xs, xb = self.conv_exp(x).split(16, dim=1)
        return self.conv_transition(torch.cat([xs, xb + self.block(xb)], dim=1))


class Res2NetBlock(nn.Module):
    """Res2Net: 4 splits of 6 channels, each conv also adds the previous one's output; the last passes."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = conv_bn(channels, 24, 1, act=nn.ReLU())
        self.convs = nn.ModuleList(conv_bn(6, 6, act=nn.ReLU()) for _ in range(3))
        self.conv3 = conv_bn(24, channels, 1)

    def forward(self, x):
        parts = torch.split(self.conv1(x), 6, 1)
        outputs, sp = [], parts[0]
        for i, conv in enumerate(self.convs):
            sp = conv(sp if i == 0 else sp + parts[i])
            outputs.append(sp)
        return F.relu(x + self.conv3(torch.cat(outputs + [parts[-1]], 1)))


class MixedConv(nn.Module):
    """MixNet: the channels split into uneven groups, each with its own depthwise kernel size."""

    def __init__(self, channels, splits=(10, 8, 6)):
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
                                   for c, k in zip(splits, (3, 5, 7)))

    def forward(self, x):
        parts = torch.split(x, self.splits, 1)  # indexed, as timm's MixedConv2d does: fx cannot iterate a proxy
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], 1)


class DualPath(nn.Module):
    """DPN: one conv's output sliced into a residual part (added) and a dense part (concatenated)."""

    def __init__(self):
        super().__init__()
        self.conv = conv_bn(24, 16 + 8, 1, act=nn.ReLU())

    def forward(self, resid, dense):
        x = self.conv(torch.cat([resid, dense], 1))
        return resid + x[:, :16, :, :], torch.cat([dense, x[:, 16:, :, :]], 1)


class PartialResidual(nn.Module):
    """ReXNet: the shortcut is added to the first channels only; GhostNet's residual: a ghost module's output
    (a concatenation) plus a conv shortcut; and an in-place write into a slice."""

    def __init__(self):
        super().__init__()
        self.expand = conv_bn(16, 28, 1, act=nn.ReLU())
        self.ghost = Ghost(28, 24, relu=False)
        self.shortcut = conv_bn(16, 24, 1)
        self.update = conv_bn(24, 6, 1)

    def forward(self, x):
        y = self.expand(x)
        y = torch.cat([y[:, 0:16] + x, y[:, 16:]], dim=1)
        y = self.ghost(y) + self.shortcut(x)
        y[:, 2:8] = y[:, 2:8] * self.update(y)
        return y


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.csp = CSPStage(16)
        self.res2 = Res2NetBlock(24)
        self.mixed = nn.Sequential(conv_bn(24, 24, 1, act=nn.ReLU()), MixedConv(24), nn.BatchNorm2d(24))
        self.dense = conv_bn(24, 8, 1, act=nn.ReLU())
        self.dual = DualPath()
        self.partial = PartialResidual()
        self.head = Head(24)

    def forward(self, x):
        x = self.mixed(self.res2(self.csp(self.stem(x))))
        resid, dense = self.dual(x[:, :16], self.dense(x))
        return self.head(self.partial(resid) + torch.cat([dense, x[:, 16:]], 1))


def test_constant_splits_and_slices_cut_their_sources_and_follow_the_widths(tmp_path):
    space = make_space(SplitNet(), bins=6)
    assert not space.traced.pinned
    names = {v.name for v in space.variables}
    # CSP halves and Res2Net quarters are variables of their own
    assert {"csp.conv_exp.0[0:16]", "csp.conv_exp.0[16:32]", "res2.conv1.0[0:6]", "res2.conv1.0[6:12]",
            "res2.conv1.0[12:18]", "res2.conv1.0[18:24]"} <= names
    # each MixNet group reads searched channels of its own, cut where the split cuts (and finer, where DPN's
    # slices, GhostNet's concatenation and the in-place write meet the same channels)
    groups = [space.traced.modules[f"mixed.1.convs.{i}"].in_layout for i in range(3)]
    assert [g.size for g in groups] == [10, 8, 6] and all(s.var is not None for g in groups for s in g.segments)
    assert not set(groups[0].vars) & set(groups[1].vars + groups[2].vars)
    kinds = {args.kind for args in space.traced.layout_args.values()}
    assert kinds == {"split", "slice"} and len(space.traced.layout_args) >= 8
    assert_exact(space, tmp_path)


# ---------------------------------------------------------------------------------------------- channel shuffle


def channel_shuffle(x, groups: int):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's unit: stride 1 splits the channels in half (chunk), stride 2 runs two branches; the halves
    are concatenated and shuffled."""

    def __init__(self, channels, out, stride):
        super().__init__()
        self.stride = stride
        half = out // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(channels, channels, 3, stride, groups=channels),
                                         conv_bn(channels, half, 1, act=nn.ReLU()))
        self.branch2 = nn.Sequential(conv_bn(channels if stride > 1 else half, half, 1, act=nn.ReLU()),
                                     conv_bn(half, half, 3, stride, groups=half),
                                     conv_bn(half, half, 1, act=nn.ReLU()))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 12, act=nn.ReLU())
        self.down = ShuffleBlock(12, 24, 2)
        self.unit = ShuffleBlock(24, 24, 1)
        self.last = conv_bn(24, 32, 1, act=nn.ReLU())
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.last(self.unit(self.down(self.stem(x)))))


def test_channel_shuffle_pins_the_shuffled_channels_and_keeps_the_rest_searchable(tmp_path):
    space = make_space(ShuffleNet())
    reasons = space.traced.pinned
    assert reasons and all("reshapes channels to (1, 2, 12, 8, 8)" in reason for reason in reasons)
    # what the shuffle mixes is pinned; the stem and every conv inside a branch stay searchable
    assert var_of(space, "down.branch1.1.0") is None and var_of(space, "unit.branch2.2.0") is None
    searchable = {v.name for v in space.variables}
    assert searchable == {"stem.0", "down.branch2.0.0", "unit.branch2.0.0", "last.0"}
    assert [layer.groups for layer in space.layers if layer.kind == "shuffle"] == [2, 2]
    assert_exact(space, tmp_path)


class ShuffleModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.mix = conv_bn(16, 16, 1, act=nn.ReLU())
        self.shuffle = nn.ChannelShuffle(4)
        self.head = Head(16)

    def forward(self, x):
        return self.head(self.shuffle(self.mix(self.stem(x))))


def test_channel_shuffle_module_is_pinned_with_its_reason():
    space = make_space(ShuffleModule())
    assert space.traced.pinned == ["mix.0: shuffle: ChannelShuffle mixes channels"]
    assert [v.name for v in space.variables] == ["stem.0"]
    assert_exact(space)  # torch cannot export aten::channel_shuffle to ONNX opset 17


# --------------------------------------------------------------------------------------- flatten into a linear


class VGGLike(nn.Module):
    """VGG/AlexNet's classifier: a 7x7 adaptive pool flattened into a linear layer."""

    def __init__(self, flatten):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, act=nn.ReLU()), nn.MaxPool2d(2), conv_bn(16, 24, act=nn.ReLU()),
                                      nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.flatten = flatten
        self.classifier = nn.Sequential(nn.Linear(24 * 49, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, CLASSES))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(self.flatten(x))


@pytest.mark.parametrize("flatten", [nn.Flatten(), functools.partial(torch.flatten, start_dim=1),
                                     lambda x: x.view(x.size(0), -1)], ids=["module", "function", "view"])
def test_flattened_map_repeats_each_channel_in_the_linear_input(flatten, tmp_path):
    space = make_space(VGGLike(flatten), resolution=28)  # a 7x7 map: the ONNX exporter needs a whole pooling
    conv = var_of(space, "features.2.0")
    assert space.traced.modules["classifier.0"].in_layout == Layout((Segment(conv, 24, 49),))
    assert space.traced.params["classifier.0.weight"].dims[1] == Layout((Segment(conv, 24, 49),))
    assert_exact(space, tmp_path)


# ---------------------------------------------------------------------------------------------- non-tensor nodes


class DropPath(nn.Module):
    """timm's stochastic depth (the tracer keeps modules of this name whole: they read self.training)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class StochasticDepth(DropPath):
    """torchvision's name for the same thing."""


class ShapeReadingNet(nn.Module):
    """Reads sizes, shapes and ndim, asserts on them, and drops residual branches while training."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.block1 = conv_bn(16, 16, act=nn.ReLU())
        self.block2 = conv_bn(16, 16, act=nn.ReLU())
        self.drop1, self.drop2 = DropPath(0.5), StochasticDepth(0.5)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected NCHW")
        x = self.stem(x)
        n, c, h, w = x.shape
        torch._assert(getattr(x, "shape")[1] == c, "channels")
        x = x + self.drop1(self.block1(x))
        x = x + self.drop2(self.block2(x))
        x = x.reshape(x.size(0), x.size(1), h * w).mean(-1)
        return self.fc(x.view(n, -1))


def test_shape_reads_asserts_and_stochastic_depth_pass_through(tmp_path):
    space = make_space(ShapeReadingNet())
    assert [v.name for v in space.variables] == ["stem.0"] and not space.traced.pinned
    assert_exact(space, tmp_path)
    model = build_standalone(space, space.min_arch()).train()  # stochastic depth still draws in training mode
    x = torch.randn(8, 3, RESOLUTION, RESOLUTION)
    torch.manual_seed(0)
    first = model(x)
    assert not torch.equal(first, model(x))


# --------------------------------------------------------------------------------------- LayerNorm over channels


class LayerNorm2d(nn.LayerNorm):
    """timm/torchvision's LayerNorm over the channels of an NCHW map, permuting inside."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's reference `LayerNorm(data_format="channels_first")`: mean and variance over dim 1."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-6))
        self.drop_path = DropPath(0.1)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + self.drop_path(y)


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 2, 2), LayerNorm2d(16, eps=1e-6))
        self.stage1 = ConvNeXtBlock(16)
        self.down = nn.Sequential(ChannelsFirstLayerNorm(16), nn.Conv2d(16, 24, 2, 2))
        self.stage2 = ConvNeXtBlock(24)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((-2, -1))))


def test_convnext_layer_norms_between_permutes_and_layer_scale_follow_the_channels(tmp_path):
    space = make_space(ConvNeXt())
    stream1, stream2 = var_of(space, "stem.0"), var_of(space, "down.1")
    assert [v.name for v in space.variables] == ["stem.0", "stage1.pwconv1", "down.1", "stage2.pwconv1"]
    assert not space.traced.pinned
    params = space.traced.params
    assert params["stem.1.weight"].dims == (Layout((Segment(stream1, 16),)),)  # LayerNorm2d
    assert params["down.0.weight"].dims == (Layout((Segment(stream1, 16),)),)  # functional channels-first norm
    assert params["stage2.norm.weight"].dims == (Layout((Segment(stream2, 24),)),)  # channels-last LayerNorm
    assert params["stage2.gamma"].dims == (Layout((Segment(stream2, 24),)),)  # layer scale
    assert params["norm.bias"].dims == (Layout((Segment(stream2, 24),)),)
    assert_exact(space, tmp_path)


# ------------------------------------------------------------------------------------- refusals and the way out


class Rolled(nn.Module):
    def forward(self, x):
        return torch.roll(x, 1, dims=1)  # moves channels: no rule knows how slicing would follow it


class RollNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.conv1 = conv_bn(16, 16, act=nn.ReLU())
        self.mix = Rolled()
        self.conv2 = conv_bn(16, 24, act=nn.ReLU())
        self.head = Head(24)

    def forward(self, x):
        return self.head(self.conv2(self.mix(self.conv1(self.stem(x)))))


MODEL_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.roll(torch.relu(self.conv1(x)), 1, dims=1)))
        return self.fc(x.mean((2, 3)))


def build(num_classes=10):
    return Net(num_classes)
'''


def test_an_op_without_a_rule_is_a_one_line_error_naming_the_node_and_the_way_out():
    with pytest.raises(HwbcnetError) as caught:
        make_space(RollNet())
    message = str(caught.value)
    assert "\n" not in message
    assert "torch.roll" in message and "--fixed 'conv1.0'" in message and "hwbcnet_fixed = True" in message


def test_pinning_the_producer_or_the_module_gets_past_the_refusal(tmp_path):
    space = make_space(RollNet(), fixed=["conv1.0"])
    assert [v.name for v in space.variables] == ["stem.0", "conv2.0"]
    assert_exact(space, tmp_path)
    model = RollNet()
    model.mix.hwbcnet_fixed = True  # the module that holds the op: its inputs and outputs keep full width
    space = make_space(model)
    assert [v.name for v in space.variables] == ["stem.0", "conv2.0"]
    assert space.traced.pinned == ["conv1.0: mix is pinned"]
    assert_exact(space)


def test_build_space_takes_fixed_globs_for_a_users_model_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(MODEL_FILE)
    with pytest.raises(HwbcnetError, match=r"torch.roll.*--fixed 'conv1'"):
        build_space(f"{path}:build", resolution=RESOLUTION)
    space = build_space(f"{path}:build", resolution=RESOLUTION, fixed=["conv*1"])
    assert [v.name for v in space.variables] == ["conv2"] and space.fixed == ("conv*1",)
    with pytest.raises(HwbcnetError, match="matches no module"):
        build_space(f"{path}:build", resolution=RESOLUTION, fixed=["conv3"])


# ------------------------------------------------------------------------------------ hard-coded channel counts


class HardCodedView(nn.Module):
    def __init__(self, reshape):
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.ReLU())
        self.conv = conv_bn(16, 64, 1, act=nn.ReLU())
        self.fc = nn.Linear(64, CLASSES)
        self.reshape = reshape

    def forward(self, x):
        return self.fc(self.reshape(self.conv(self.stem(x))))


HARD_CODED = {
    "view(-1, 64)": lambda x: F.adaptive_avg_pool2d(x, 1).view(-1, 64),
    "reshape(n, 64, h*w)": lambda x: x.reshape(x.shape[0], 64, x.shape[2] * x.shape[3]).mean(2),
}


@pytest.mark.parametrize("reshape", HARD_CODED)
def test_a_hard_coded_channel_count_pins_those_channels(reshape, tmp_path):
    space = make_space(HardCodedView(HARD_CODED[reshape]))
    assert [v.name for v in space.variables] == ["stem.0"]
    assert len(space.traced.pinned) == 1 and space.traced.pinned[0].startswith("conv.0: ")
    assert space.traced.pinned[0].endswith("with a literal size")
    assert_exact(space, tmp_path)


@pytest.mark.parametrize("reshape", HARD_CODED)
def test_probe_verification_catches_a_rule_that_misses_a_hard_coded_count(reshape, monkeypatch):
    from hwbcnet.space.ops import structure

    monkeypatch.setattr(structure, "_literal_channel_arg", lambda node, axis: False)  # a rule with a blind spot
    with pytest.raises(HwbcnetError) as caught:
        make_space(HardCodedView(HARD_CODED[reshape]))
    message = str(caught.value)
    assert "\n" not in message and "--fixed" in message
    assert "hard-codes a channel count" in message or "channel analysis disagrees" in message


# -------------------------------------------------------------------------------------- parameter expressions


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.FrozenBatchNorm2d: BatchNorm as arithmetic on reshaped buffers."""

    def __init__(self, channels):
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), value))

    def forward(self, x):
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + 1e-5).rsqrt()
        return x * scale + (self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale)


class ScaledNet(nn.Module):
    def __init__(self, literal):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), FrozenBatchNorm2d(16), nn.ReLU())
        self.conv = nn.Conv2d(16, 24, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(24) + 0.5)
        self.literal = literal
        self.head = Head(24)

    def forward(self, x):
        x = self.conv(self.stem(x))
        gamma = self.gamma.view(1, 24, 1, 1) if self.literal else self.gamma.reshape(1, -1, 1, 1)  # timm's LayerScale
        return self.head(x.mul(gamma))


def test_parameter_expressions_follow_the_channels_they_scale(tmp_path):
    space = make_space(ScaledNet(literal=False))
    assert [v.name for v in space.variables] == ["stem.0", "conv"] and not space.traced.pinned
    for name in ("stem.1.weight", "stem.1.running_var", "stem.1.running_mean"):
        assert space.traced.params[name].dims == (Layout((Segment(0, 16),)),)
    assert space.traced.params["gamma"].dims == (Layout((Segment(1, 24),)),)
    assert_exact(space, tmp_path)


def test_a_parameter_reshaped_with_a_literal_channel_count_pins_them_with_the_reason(tmp_path):
    space = make_space(ScaledNet(literal=True))
    assert [v.name for v in space.variables] == ["stem.0"]
    # mul_3: FrozenBatchNorm2d's arithmetic holds mul .. mul_2
    assert space.traced.pinned == ["conv: mul_3: a parameter is reshaped with a literal channel count"]
    assert_exact(space, tmp_path)


# ------------------------------------------------------------------------------ modules kept whole, and export


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNorm with its activation inside: one leaf for the tracer, a BatchNorm fx's fuse cannot fold."""

    def __init__(self, channels):
        super().__init__(channels)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(super().forward(x))


class ConvMlp(nn.Module):
    """timm's VGG head: control flow on the input size, which torch.fx cannot trace."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 4)
        self.fc2 = nn.Conv2d(hidden, CLASSES, 1)

    def forward(self, x):
        if x.shape[-2] < 4 or x.shape[-1] < 4:
            x = F.adaptive_avg_pool2d(x, 4)
        return self.fc2(F.relu(self.fc1(x)))


class KeptWhole(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), BatchNormAct2d(16))
        self.conv = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1, bias=False), BatchNormAct2d(24))
        self.pre_logits = ConvMlp(24, 32)

    def forward(self, x):
        return self.pre_logits(self.conv(self.stem(x))).flatten(1)


def test_an_untraceable_module_pinned_by_fixed_stays_whole_through_slicing_and_export(tmp_path):
    with pytest.raises(HwbcnetError, match=r"torch.fx cannot trace KeptWhole .* --fixed GLOB"):
        make_space(KeptWhole())
    space = make_space(KeptWhole(), fixed=["pre_logits"])
    assert [v.name for v in space.variables] == ["stem.0"]
    assert space.traced.pinned == ["conv.0: pre_logits is pinned"]
    bn = next(layer for layer in space.layers if layer.name == "stem.0")
    assert bn.bn and bn.act == "hardswish"  # the BatchNorm subclass carries its activation into the conv's cell
    assert_exact(space, tmp_path)  # export names the weights after their modules although the exporter folds BN
