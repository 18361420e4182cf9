"""Building blocks shared by the model definitions. Models only declare layers; which channel dimensions are tied
(residual adds, depthwise convs) is derived later by tracing (hwbcnet.space.tracing)."""

from __future__ import annotations

import math

from torch import nn


def scaled(channels: int, width_mult: float, divisor: int = 1) -> int:
    """Channel count after a width multiplier, rounded up to a multiple of `divisor`."""
    return max(divisor, int(math.ceil(channels * width_mult / divisor)) * divisor)


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
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


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-act, depthwise 3x3-BN-act, 1x1 project-BN, + identity when shapes match."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int, stride: int, act: type = nn.ReLU6, expand: bool = True):
        super().__init__()
        self.expand = ConvBNAct(c_in, c_hidden, 1, act=act) if expand else None
        self.depthwise = ConvBNAct(c_hidden, c_hidden, 3, stride, groups=c_hidden, act=act)
        self.project = ConvBNAct(c_hidden, c_out, 1, act=None)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return x + out if self.use_residual else out


class Classifier(nn.Module):
    """Global average pool + flatten + linear."""

    def __init__(self, c_in: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.flatten(self.pool(x))))
