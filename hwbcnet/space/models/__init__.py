"""Built-in model registry: name -> builder and the defaults of its width space (other sources: sources.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from hwbcnet.errors import HwbcnetError
from hwbcnet.space.models import zoo


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]  # (num_classes, width_mult, resolution) -> nn.Module
    resolution: int  # default input size
    bins: int  # default N
    min_bins: int  # default m for bcnetv2
    description: str


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry("resnet20", lambda k, w, r: zoo.CifarResNet(20, k, w), 32, 8, 2, "ResNet-20 (CIFAR)"),
        ModelEntry("resnet56", lambda k, w, r: zoo.CifarResNet(56, k, w), 32, 8, 2, "ResNet-56 (CIFAR)"),
        ModelEntry("mobilenetv2", lambda k, w, r: zoo.MobileNetV2(k, w, r), 32, 8, 2,
                   "MobileNetV2 (CIFAR strides below 64 px, ImageNet strides above)"),
        ModelEntry("vgg16", lambda k, w, r: zoo.VGG16(k, w), 32, 8, 2, "VGG-16 with BatchNorm (CIFAR)"),
        ModelEntry("resnet50", lambda k, w, r: zoo.ResNet50(k, w), 224, 8, 2, "ResNet-50 (ImageNet bottleneck)"),
        ModelEntry("efficientnet-b0", lambda k, w, r: zoo.EfficientNetB0(k, w, r), 224, 8, 2,
                   "EfficientNet-B0 (SiLU, squeeze-excitation, stochastic depth)"),
        ModelEntry("mobilenetv3-large", lambda k, w, r: zoo.MobileNetV3("large", k, w, r), 224, 8, 2,
                   "MobileNetV3-Large (Hardswish, Hardsigmoid squeeze-excitation)"),
        ModelEntry("mobilenetv3-small", lambda k, w, r: zoo.MobileNetV3("small", k, w, r), 224, 8, 2,
                   "MobileNetV3-Small (Hardswish, Hardsigmoid squeeze-excitation)"),
        ModelEntry("cbm-resnet", lambda k, w, r: zoo.CBMResNet(k, w), 32, 4, 1, "Channel-Bench-Macro ResNet space"),
        ModelEntry("cbm-mobilenet", lambda k, w, r: zoo.CBMMobileNet(k, w), 32, 4, 1, "Channel-Bench-Macro MobileNet space"),
    ]
}


def get_model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise HwbcnetError(f"unknown built-in model {name!r}; choose one of: {', '.join(MODELS)} (see `hwbcnet models`)") from None
