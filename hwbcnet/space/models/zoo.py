"""The model zoo: plain nn.Modules written here (no torchvision). Each builder takes the number of classes, a width
multiplier and the input resolution (which picks CIFAR or ImageNet strides where a model has both)."""

from __future__ import annotations

from functools import partial

from torch import nn

from hwbcnet.space.models.common import (
    BasicBlock,
    Bottleneck,
    Classifier,
    ConvBNAct,
    InvertedResidual,
    SqueezeExcite,
    make_divisible,
    scaled,
)


class CifarResNet(nn.Module):
    """ResNet-20/56 for 32x32 inputs (He et al. 2016, section 4.2) with projection shortcuts (option B)."""

    def __init__(self, depth: int, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        widths = [scaled(w, width_mult) for w in (16, 32, 64)]
        self.stem = ConvBNAct(3, widths[0], 3)
        stages, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(c_in, width, width, stride))
                c_in = width
        self.blocks = nn.Sequential(*stages)
        self.head = Classifier(c_in, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018). Inputs below 64 px use the common CIFAR strides (stem and first stride-2
    stage at stride 1); larger inputs use the ImageNet strides."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, resolution: int = 32, dropout: float = 0.2):
        super().__init__()
        cifar = resolution < 64
        c_in = scaled(32, width_mult, 8)
        self.stem = ConvBNAct(3, c_in, 3, 1 if cifar else 2, act=nn.ReLU6)
        blocks = []
        for index, (expand, c, n, s) in enumerate(self.SETTINGS):
            c_out = scaled(c, width_mult, 8)
            stride = 1 if cifar and index == 1 else s
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c_in * expand, c_out, stride if i == 0 else 1, expand=expand != 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        c_last = scaled(1280, max(1.0, width_mult), 8)
        self.last = ConvBNAct(c_in, c_last, 1, act=nn.ReLU6)
        self.head = Classifier(c_last, num_classes, dropout)

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))))


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 (Tan & Le 2019) as torchvision builds it: MBConv blocks with SiLU and a Sigmoid-gated
    squeeze-excitation to a quarter of the block's input width, stochastic depth rising linearly from 0 to 0.2 over
    the blocks, 1x1 conv to 4x the last width, dropout 0.2 before the classifier. Inputs below 64 px use stride 1 in
    the stem and the first stride-2 stage (as MobileNetV2 here)."""

    # expand ratio, kernel, stride of the first block, output channels, blocks
    STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, resolution: int = 224, dropout: float = 0.2,
                 stochastic_depth: float = 0.2):
        super().__init__()
        small_input = resolution < 64
        first_downsampling = next(i for i, stage in enumerate(self.STAGES) if stage[2] == 2)
        c_in = make_divisible(32 * width_mult)
        self.stem = ConvBNAct(3, c_in, 3, 1 if small_input else 2, act=nn.SiLU)
        total_blocks = sum(stage[4] for stage in self.STAGES)
        blocks: list[nn.Module] = []
        for index, (expand, kernel, stride, c, n) in enumerate(self.STAGES):
            c_out = make_divisible(c * width_mult)
            if small_input and index == first_downsampling:
                stride = 1
            for i in range(n):
                c_hidden = make_divisible(c_in * expand)
                se = SqueezeExcite(c_hidden, max(1, c_in // 4), act=nn.SiLU, gate=nn.Sigmoid)
                blocks.append(InvertedResidual(c_in, c_hidden, c_out, stride if i == 0 else 1, act=nn.SiLU,
                                               expand=c_hidden != c_in, kernel=kernel, se=se,
                                               drop_prob=stochastic_depth * len(blocks) / total_blocks))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.last = ConvBNAct(c_in, 4 * c_in, 1, act=nn.SiLU)
        self.head = Classifier(4 * c_in, num_classes, dropout)

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))))


class MobileNetV3(nn.Module):
    """MobileNetV3-Large/-Small (Howard et al. 2019) as torchvision builds them: Hardswish stem, bneck blocks with ReLU
    or Hardswish and a Hardsigmoid-gated squeeze-excitation to a quarter of the expanded width (rounded to 8), 1x1 conv
    to 6x the last width, and a Linear-Hardswish-Dropout(0.2)-Linear classifier. BatchNorm eps 1e-3, momentum 0.01.
    Inputs below 64 px use stride 1 in the stem and the first stride-2 block (as MobileNetV2 here); Small's first
    block (16 -> 16) then gains an identity shortcut, by the rule of every inverted-residual block."""

    # kernel, expanded channels, output channels, squeeze-excitation, activation, stride (the paper's tables 1 and 2)
    SETTINGS = {
        "large": [
            (3, 16, 16, False, nn.ReLU, 1), (3, 64, 24, False, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 1),
            (5, 72, 40, True, nn.ReLU, 2), (5, 120, 40, True, nn.ReLU, 1), (5, 120, 40, True, nn.ReLU, 1),
            (3, 240, 80, False, nn.Hardswish, 2), (3, 200, 80, False, nn.Hardswish, 1),
            (3, 184, 80, False, nn.Hardswish, 1), (3, 184, 80, False, nn.Hardswish, 1),
            (3, 480, 112, True, nn.Hardswish, 1), (3, 672, 112, True, nn.Hardswish, 1),
            (5, 672, 160, True, nn.Hardswish, 2), (5, 960, 160, True, nn.Hardswish, 1),
            (5, 960, 160, True, nn.Hardswish, 1),
        ],
        "small": [
            (3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
            (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1),
            (5, 240, 40, True, nn.Hardswish, 1), (5, 120, 48, True, nn.Hardswish, 1),
            (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
            (5, 576, 96, True, nn.Hardswish, 1), (5, 576, 96, True, nn.Hardswish, 1),
        ],
    }
    CLASSIFIER_HIDDEN = {"large": 1280, "small": 1024}

    def __init__(self, variant: str, num_classes: int = 1000, width_mult: float = 1.0, resolution: int = 224,
                 dropout: float = 0.2):
        super().__init__()
        if variant not in self.SETTINGS:
            raise ValueError(f"MobileNetV3 variant must be one of {sorted(self.SETTINGS)}, got {variant!r}")
        settings = self.SETTINGS[variant]
        small_input = resolution < 64
        first_downsampling = next(i for i, setting in enumerate(settings) if setting[5] == 2)
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        c_in = make_divisible(16 * width_mult)
        self.stem = ConvBNAct(3, c_in, 3, 1 if small_input else 2, act=nn.Hardswish, norm=norm)
        blocks: list[nn.Module] = []
        for index, (kernel, hidden, c, use_se, act, stride) in enumerate(settings):
            c_hidden, c_out = make_divisible(hidden * width_mult), make_divisible(c * width_mult)
            if small_input and index == first_downsampling:
                stride = 1
            se = SqueezeExcite(c_hidden, make_divisible(c_hidden // 4), gate=nn.Hardsigmoid) if use_se else None
            blocks.append(InvertedResidual(c_in, c_hidden, c_out, stride, act=act, expand=c_hidden != c_in,
                                           kernel=kernel, se=se, norm=norm))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.last = ConvBNAct(c_in, 6 * c_in, 1, act=nn.Hardswish, norm=norm)
        self.head = Classifier(6 * c_in, num_classes, dropout,
                               hidden=make_divisible(self.CLASSIFIER_HIDDEN[variant] * width_mult))

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))))


class VGG16(nn.Module):
    """VGG-16 with BatchNorm for CIFAR (13 conv widths, one linear classifier)."""

    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        layers, c_in = [], 3
        for item in self.CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBNAct(c_in, scaled(item, width_mult), 3))
                c_in = scaled(item, width_mult)
        self.features = nn.Sequential(*layers)
        self.head = Classifier(c_in, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class ResNet50(nn.Module):
    """ResNet-50 (ImageNet) with bottleneck blocks."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        c_in = scaled(64, width_mult)
        self.stem = ConvBNAct(3, c_in, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks = []
        for stage, (mid, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            c_mid, c_out = scaled(mid, width_mult), scaled(mid * 4, width_mult)
            for i in range(n):
                blocks.append(Bottleneck(c_in, c_mid, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = Classifier(c_in, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.pool(self.stem(x))))


class CBMResNet(nn.Module):
    """Channel-Bench-Macro ResNet space (Su et al. 2022) at full width: stem 3x3/2 -> 256, two residual blocks at 256,
    a stride-2 block 256 -> 512 without skip, two residual blocks at 512, GAP, FC."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        c1, c2 = scaled(256, width_mult), scaled(512, width_mult)
        self.stem = ConvBNAct(3, c1, 3, 2)
        self.blocks = nn.Sequential(
            BasicBlock(c1, c1, c1),
            BasicBlock(c1, c1, c1),
            BasicBlock(c1, c2, c2, stride=2, skip=False),
            BasicBlock(c2, c2, c2),
            BasicBlock(c2, c2, c2),
        )
        self.head = Classifier(c2, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class CBMMobileNet(nn.Module):
    """Channel-Bench-Macro MobileNet space: stem 3x3/2 -> 128, two MB blocks at 128 (hidden 768), a stride-2 MB block
    128 -> 256 (hidden 768, no skip), one MB block at 256 (hidden 1536), 1x1 conv -> 1024, GAP, FC. ReLU after the
    first two convs of each MB block, none after the projection."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0):
        super().__init__()
        c1, c2, c_last = (scaled(c, width_mult) for c in (128, 256, 1024))
        self.stem = ConvBNAct(3, c1, 3, 2)
        self.blocks = nn.Sequential(
            InvertedResidual(c1, 6 * c1, c1, 1, act=nn.ReLU),
            InvertedResidual(c1, 6 * c1, c1, 1, act=nn.ReLU),
            InvertedResidual(c1, 6 * c1, c2, 2, act=nn.ReLU),
            InvertedResidual(c2, 6 * c2, c2, 1, act=nn.ReLU),
        )
        self.last = ConvBNAct(c2, c_last, 1)
        self.head = Classifier(c_last, num_classes)

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))))
