"""Building blocks shared by the model definitions. Models only declare layers; which channel dimensions are tied
(residual adds, depthwise convs) is derived later by tracing (hwbcnet.space.tracing)."""

from __future__ import annotations

import math
from typing import Callable

from torch import nn


def scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """Channel count after a width multiplier, rounded up to a multiple of `divisor`."""
    return max(divisor, int(math.ceil(channels * width_mult / divisor)) * divisor)


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, but never more than 10 % down (the TensorFlow MobileNet rule that
    torchvision's `_make_divisible` copies; MobileNetV3 and EfficientNet widths depend on it)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


Norm = Callable[[int], nn.Module]


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: type | None = nn.ReLU, norm: Norm = nn.BatchNorm2d):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            norm(c_out),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, + shortcut (1x1 conv+BN projection when the shape changes), then ReLU.
    `skip=False` gives the plain two-conv block Channel-Bench-Macro uses where a stage changes width."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int = 1, skip: bool = True):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_mid, 3, stride)
        self.conv2 = ConvBNAct(c_mid, c_out, 3, 1, act=None)
        self.skip = skip
        self.shortcut = ConvBNAct(c_in, c_out, 1, stride, act=None) if skip and (stride != 1 or c_in != c_out) else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        if self.skip:
            out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 reduce, 3x3 (stride here, as torchvision v1.5), 1x1 expand, + projection shortcut."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_mid, 1)
        self.conv2 = ConvBNAct(c_mid, c_mid, 3, stride)
        self.conv3 = ConvBNAct(c_mid, c_out, 1, act=None)
        self.shortcut = ConvBNAct(c_in, c_out, 1, stride, act=None) if stride != 1 or c_in != c_out else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = self.shortcut(x) if self.shortcut is not None else x
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x times a per-channel gate computed from globally pooled x by
    1x1 conv (squeeze) - act - 1x1 conv (back to x's channels) - gate (Sigmoid, or Hardsigmoid in MobileNetV3)."""

    def __init__(self, channels: int, squeeze: int, act: type = nn.ReLU, gate: type = nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = act(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class StochasticDepth(nn.Module):
    """Drops a residual branch for whole samples with probability p while training (Huang et al. 2016, torchvision's
    "row" mode), scaling kept samples by 1/(1-p). In eval mode it returns its input and adds no node to an fx graph."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet MBConv block: 1x1 expand-BN-act, depthwise kxk-BN-act, optional
    squeeze-excitation, 1x1 project-BN, + identity when shapes match (through stochastic depth when drop_prob > 0)."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int, stride: int, act: type = nn.ReLU6, expand: bool = True,
                 kernel: int = 3, se: SqueezeExcite | None = None, norm: Norm = nn.BatchNorm2d, drop_prob: float = 0.0):
        super().__init__()
        self.expand = ConvBNAct(c_in, c_hidden, 1, act=act, norm=norm) if expand else None
        self.depthwise = ConvBNAct(c_hidden, c_hidden, kernel, stride, groups=c_hidden, act=act, norm=norm)
        self.se = se
        self.project = ConvBNAct(c_hidden, c_out, 1, act=None, norm=norm)
        self.use_residual = stride == 1 and c_in == c_out
        self.drop_path = StochasticDepth(drop_prob) if self.use_residual and drop_prob > 0 else None

    def forward(self, x):
        out = self.expand(x) if self.expand is not None else x
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        if not self.use_residual:
            return out
        return x + (self.drop_path(out) if self.drop_path is not None else out)


class Classifier(nn.Module):
    """Global average pool + flatten (+ hidden linear-act, as in MobileNetV3) + dropout + linear."""

    def __init__(self, c_in: int, num_classes: int, dropout: float = 0.0, hidden: int | None = None,
                 hidden_act: type = nn.Hardswish):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.hidden = nn.Sequential(nn.Linear(c_in, hidden), hidden_act(inplace=True)) if hidden else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden or c_in, num_classes)

    def forward(self, x):
        x = self.flatten(self.pool(x))
        if self.hidden is not None:
            x = self.hidden(x)
        return self.fc(self.dropout(x))
