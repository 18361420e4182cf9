"""EfficientNet-B0 and MobileNetV3-Large/-Small as written in the zoo, checked against their published structure
(torchvision 0.29's builds; benchmarks/zoo_reference_check.py compares outputs with torchvision itself)."""

import operator

import pytest
import torch
import torch.fx as fx
from torch import nn

from hwbcnet.space.models import zoo
from hwbcnet.space.models.common import InvertedResidual, SqueezeExcite, StochasticDepth, make_divisible

BUILDERS = {
    "efficientnet-b0": lambda k, w, r: zoo.EfficientNetB0(k, w, r),
    "mobilenetv3-large": lambda k, w, r: zoo.MobileNetV3("large", k, w, r),
    "mobilenetv3-small": lambda k, w, r: zoo.MobileNetV3("small", k, w, r),
}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def blocks(model: nn.Module) -> list[InvertedResidual]:
    return list(model.blocks)


@pytest.mark.parametrize("name, expected", [
    ("efficientnet-b0", 5_288_548), ("mobilenetv3-large", 5_483_032), ("mobilenetv3-small", 2_542_856)])
def test_published_parameter_counts(name, expected):
    assert params(BUILDERS[name](1000, 1.0, 224)) == expected


@pytest.mark.parametrize("name, expected", [
    ("efficientnet-b0", 1_077_932), ("mobilenetv3-large", 1_099_986), ("mobilenetv3-small", 409_394)])
def test_half_width_parameter_counts_match_torchvision(name, expected):
    # torchvision's builds at width_mult=0.5, 10 classes: every width goes through the same divisible-by-8 rounding
    assert params(BUILDERS[name](10, 0.5, 224)) == expected


def test_make_divisible_rounds_to_nearest_eight_but_never_10_percent_down():
    assert [make_divisible(c) for c in (4, 8.4, 12, 18, 30, 120, 168)] == [8, 8, 16, 24, 32, 120, 168]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("resolution, feature_hw", [(32, 4), (64, 2), (224, 7)])
def test_forward_shapes_and_strides(name, resolution, feature_hw):
    # below 64 px the stem and the first stride-2 stage keep the resolution (overall stride 8, not 32)
    model = BUILDERS[name](10, 1.0, resolution).eval()
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        features = model.last(model.blocks(model.stem(x)))
        assert features.shape[-2:] == (feature_hw, feature_hw)
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", BUILDERS)
def test_eval_is_deterministic_and_train_is_not(name):
    torch.manual_seed(0)
    model = BUILDERS[name](10, 1.0, 32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()  # dropout (and stochastic depth in EfficientNet) draw new masks
        assert not torch.equal(model(x), model(x))


def se_blocks(model: nn.Module) -> dict[int, SqueezeExcite]:
    return {i: block.se for i, block in enumerate(blocks(model)) if block.se is not None}


def test_efficientnet_b0_structure():
    model = zoo.EfficientNetB0(1000, 1.0, 224)
    assert len(blocks(model)) == 16
    # every MBConv has a Sigmoid-gated SE squeezing to a quarter of the block's input width, with SiLU inside
    se = se_blocks(model)
    assert list(se) == list(range(16))
    assert [s.reduce.out_channels for s in se.values()] == [8, 4, 6, 6, 10, 10, 20, 20, 20, 28, 28, 28, 48, 48, 48, 48]
    assert all(isinstance(s.act, nn.SiLU) and isinstance(s.gate, nn.Sigmoid) for s in se.values())
    assert [b.depthwise[0].kernel_size[0] for b in blocks(model)] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert blocks(model)[0].expand is None  # expand ratio 1: no 1x1 expansion
    assert all(isinstance(conv[2], nn.SiLU) for b in blocks(model) for conv in (b.expand, b.depthwise) if conv)
    # stochastic depth rises linearly over the 16 blocks; only residual blocks apply it
    residual = [i for i, b in enumerate(blocks(model)) if b.use_residual]
    assert residual == [2, 4, 6, 7, 9, 10, 12, 13, 14]
    assert [blocks(model)[i].drop_path.p for i in residual] == pytest.approx([0.2 * i / 16 for i in residual])
    assert model.last[0].out_channels == 1280 and isinstance(model.last[2], nn.SiLU)
    assert model.head.hidden is None and model.head.dropout.p == 0.2 and model.head.fc.in_features == 1280
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


@pytest.mark.parametrize("variant, se_at, squeeze, relu_blocks, hidden", [
    ("large", [3, 4, 5, 10, 11, 12, 13, 14], [24, 32, 32, 120, 168, 168, 240, 240], 6, 1280),
    ("small", [0, 3, 4, 5, 6, 7, 8, 9, 10], [8, 24, 64, 64, 32, 40, 72, 144, 144], 3, 1024),
])
def test_mobilenetv3_structure(variant, se_at, squeeze, relu_blocks, hidden):
    model = zoo.MobileNetV3(variant, 1000, 1.0, 224)
    assert isinstance(model.stem[2], nn.Hardswish)
    se = se_blocks(model)
    assert list(se) == se_at
    assert [s.reduce.out_channels for s in se.values()] == squeeze
    assert all(isinstance(s.act, nn.ReLU) and isinstance(s.gate, nn.Hardsigmoid) for s in se.values())
    acts = [type(b.depthwise[2]) for b in blocks(model)]
    assert acts == [nn.ReLU] * relu_blocks + [nn.Hardswish] * (len(acts) - relu_blocks)
    assert blocks(model)[0].expand is None  # expanded width == input width
    assert all(b.drop_path is None for b in blocks(model))
    c_last = 6 * blocks(model)[-1].project[0].out_channels
    assert model.last[0].out_channels == c_last and isinstance(model.last[2], nn.Hardswish)
    head = model.head
    assert (head.hidden[0].in_features, head.hidden[0].out_features) == (c_last, hidden)
    assert isinstance(head.hidden[1], nn.Hardswish) and head.dropout.p == 0.2 and head.fc.in_features == hidden
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


def test_unknown_mobilenetv3_variant():
    with pytest.raises(ValueError, match="large"):
        zoo.MobileNetV3("medium")


@pytest.mark.parametrize("name, resolution, residual_adds", [
    ("efficientnet-b0", 224, 9), ("mobilenetv3-large", 224, 10), ("mobilenetv3-small", 224, 6),
    ("efficientnet-b0", 32, 9), ("mobilenetv3-large", 32, 10),
    ("mobilenetv3-small", 32, 7),  # its first block (16 -> 16) at stride 1 gains the identity shortcut
])
def test_fx_graph_has_only_standard_modules_adds_and_gate_products(name, resolution, residual_adds):
    # what a channel tracer sees in eval mode: no getattr/size/ndim nodes, stochastic depth absent, each SE gate a
    # `x * gate(...)` product whose second operand is a Sigmoid/Hardsigmoid output computed from x
    model = BUILDERS[name](10, 1.0, resolution).eval()
    graph_module = fx.symbolic_trace(model)
    modules = dict(graph_module.named_modules())
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid,
               nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear)
    ops = {"placeholder": 0, "output": 0, "call_module": 0, "call_function": 0}
    for node in graph_module.graph.nodes:
        ops[node.op] += 1  # a KeyError here is a node kind the zoo models must not produce
        if node.op == "call_module":
            assert isinstance(modules[node.target], allowed), node.format_node()
        elif node.op == "call_function":
            assert node.target in (operator.add, operator.mul), node.format_node()
    adds = [n for n in graph_module.graph.nodes if n.target is operator.add]
    products = [n for n in graph_module.graph.nodes if n.target is operator.mul]
    assert len(adds) == residual_adds
    assert len(products) == len(se_blocks(model))
    for product in products:
        x, gate = product.args
        assert isinstance(modules[gate.target], (nn.Sigmoid, nn.Hardsigmoid))
        squeeze_input = gate.args[0].args[0].args[0].args[0].args[0]  # gate <- expand <- act <- reduce <- pool <- x
        assert squeeze_input is x


def test_squeeze_excite_scales_each_channel_by_its_gate():
    se = SqueezeExcite(4, 2)
    with torch.no_grad():
        for conv in (se.reduce, se.expand):
            conv.weight.zero_()
        se.expand.bias.copy_(torch.tensor([0.0, 100.0, -100.0, 0.0]))
    x = torch.randn(3, 4, 5, 5)
    scale = torch.tensor([0.5, 1.0, 0.0, 0.5]).view(1, 4, 1, 1)
    torch.testing.assert_close(se(x), x * scale)


def test_stochastic_depth_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    drop = StochasticDepth(0.25)
    x = torch.ones(4000, 3, 2, 2)
    drop.eval()
    assert drop(x) is x
    drop.train()
    out = drop(x)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # all or nothing per sample
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError):
        StochasticDepth(1.0)
