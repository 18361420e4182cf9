"""Per-image preprocessing and training augmentation, written with torch ops (torchvision is not a dependency).

Every transform is a small picklable callable `transform(item, generator) -> float tensor (3, R, R)`. Random
choices draw from the `generator` the dataset owns, so a loader built with a seed replays the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hwbcnet.errors import HwbcnetError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet evaluation convention: resize the shorter side to R / 0.875 (256 for 224), then centre-crop R.
EVAL_CROP_FRACTION = 0.875


def resize(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of one (C, H, W) float image; antialiased so that downsizing does not alias."""
    if image.shape[-2:] == (resolution, resolution):
        return image
    return F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)[0]


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (image - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.rand((), generator=generator) < 0.5)


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(high + 1, (), generator=generator))


@dataclass(frozen=True)
class PrepareTensor:
    """In-memory images already at the target resolution and normalized (digits); repeats one channel to three."""

    channels: int = 3

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return image.expand(self.channels, -1, -1) if image.shape[0] == 1 else image


@dataclass(frozen=True)
class Uint8Image:
    """uint8 (3, H, W) images (CIFAR-10): optional pad-and-random-crop plus horizontal flip, then resize and
    normalize. Padding happens on the raw [0, 1] image, so padded pixels are black as in the usual recipe."""

    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0  # 0 = no augmentation
    flip: bool = False

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = image.float() / 255.0
        if self.crop_padding:
            height, width = x.shape[-2:]
            pad = self.crop_padding
            padded = F.pad(x, (pad, pad, pad, pad))
            top, left = _randint(2 * pad, generator), _randint(2 * pad, generator)
            x = padded[:, top : top + height, left : left + width]
        if self.flip and _coin(generator):
            x = x.flip(-1)
        return normalize(resize(x, self.resolution), self.mean, self.std)


def _pil_to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def open_rgb(path) -> "PIL.Image.Image":  # noqa: F821 (PIL is imported lazily)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise HwbcnetError(f"{path}: cannot read this image ({exc}); remove or replace the file") from None


@dataclass(frozen=True)
class ImageFile:
    """An image file on disk. Evaluation: resize the shorter side to R / 0.875 and centre-crop R.
    Training (`augment=True`): random-resized-crop (area 8-100 %, aspect 3/4-4/3) to R plus horizontal flip."""

    resolution: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: bool = False

    def __call__(self, path, generator: torch.Generator) -> torch.Tensor:
        from PIL import Image

        image = open_rgb(path)
        size = (self.resolution, self.resolution)
        if self.augment:
            image = image.resize(size, Image.BILINEAR, box=self._random_box(image.width, image.height, generator))
            if _coin(generator):
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            scale = self.resolution / EVAL_CROP_FRACTION / min(image.width, image.height)
            width = max(self.resolution, round(image.width * scale))
            height = max(self.resolution, round(image.height * scale))
            image = image.resize((width, height), Image.BILINEAR)
            left, top = (width - self.resolution) // 2, (height - self.resolution) // 2
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
        return normalize(_pil_to_tensor(image), self.mean, self.std)

    @staticmethod
    def _random_box(width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """The Inception/torchvision RandomResizedCrop box: 10 tries at a random area and log-uniform aspect
        ratio, else the largest centred crop whose aspect ratio is clamped to [3/4, 4/3]."""
        area = width * height
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        for _ in range(10):
            target_area = area * float(torch.empty(()).uniform_(0.08, 1.0, generator=generator))
            ratio = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=generator)))
            crop_w, crop_h = round(math.sqrt(target_area * ratio)), round(math.sqrt(target_area / ratio))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left, top = _randint(width - crop_w, generator), _randint(height - crop_h, generator)
                return left, top, left + crop_w, top + crop_h
        ratio = width / height
        if ratio < 3 / 4:
            crop_w, crop_h = width, round(width / (3 / 4))
        elif ratio > 4 / 3:
            crop_w, crop_h = round(height * (4 / 3)), height
        else:
            crop_w, crop_h = width, height
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return left, top, left + crop_w, top + crop_h


@dataclass(frozen=True)
class SyntheticImage:
    """Item = (label, noise seed): the class prototype plus unit Gaussian noise drawn from the item's own seed,
    so every split is fixed and nothing is held in memory."""

    prototypes: torch.Tensor  # (classes, 3, R, R)

    def __call__(self, item: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        label, noise_seed = int(item[0]), int(item[1])
        noise = torch.randn(self.prototypes.shape[1:], generator=torch.Generator().manual_seed(noise_seed))
        return self.prototypes[label] + noise
