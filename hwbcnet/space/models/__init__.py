"""Model registry: name -> builder and the defaults of its width space."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path
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
        ModelEntry("cbm-resnet", lambda k, w, r: zoo.CBMResNet(k, w), 32, 4, 1, "Channel-Bench-Macro ResNet space"),
        ModelEntry("cbm-mobilenet", lambda k, w, r: zoo.CBMMobileNet(k, w), 32, 4, 1, "Channel-Bench-Macro MobileNet space"),
    ]
}


def get_model_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise HwbcnetError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (see `hwbcnet models`)") from None


MODEL_SOURCES = "torchvision:NAME, timm:NAME, package.module:factory or path/to/file.py:factory"
_TORCHVISION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*")  # timm names carry tags: resnet50.a1_in1k


def _identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def check_model_spec(text: str) -> str:
    """`text` when it is a built-in model name or a well-formed model source (only the syntax, and that a
    file.py exists: nothing is imported). A ValueError says what is allowed."""
    if text in MODELS:
        return text
    kind, colon, rest = text.partition(":")
    if colon and kind == "torchvision":
        if not _TORCHVISION_NAME.fullmatch(rest):
            raise ValueError("expected torchvision:NAME with a torchvision model builder name such as resnet18")
        return text
    if colon and kind == "timm":
        if not _TIMM_NAME.fullmatch(rest):
            raise ValueError("expected timm:NAME with a timm model name such as resnet50 or resnet50.a1_in1k")
        return text
    source, colon, factory = text.rpartition(":")
    if colon and source.endswith(".py"):
        try:
            is_file = Path(source).is_file()
        except (OSError, ValueError):  # too long for a path, NUL byte
            is_file = False
        if not is_file:
            raise ValueError(f"{source!r} is not a file; expected path/to/file.py:factory")
        if not _identifier(factory):
            raise ValueError(f"{factory!r} is not a Python name; expected path/to/file.py:factory")
        return text
    if colon:
        if not all(_identifier(part) for part in source.split(".")) or not _identifier(factory):
            raise ValueError("expected package.module:factory with Python names such as mymodels.nets:build")
        return text
    raise ValueError(f"unknown model; expected one of {', '.join(MODELS)} (see `hwbcnet models`) or a source: "
                     f"{MODEL_SOURCES}")
