"""Scoring an arch with the supernet: recalibrate BatchNorm statistics for the path on K training batches
(cumulative average, as BCNetV2's evaluator), then top-1 accuracy on the validation split. The BC score averages
the left and right paths; ``ua`` uses the left path only.

Where the time goes (resnet20 on digits at 32 px, one core): BN recalibration on 1,258 training images is ~83 % of
an arch's score, the 270 validation images the rest; activating a path is negligible. Scoring therefore runs in
inference mode on channels-last batches (the same scores up to float rounding: 59 of 60 archs identical
in a check, one a single validation image apart; ~1.4x faster on CPU), and the search scores candidates with
few calibration batches and re-scores only its final top-k with many (see hwbcnet/search/runner.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hwbcnet.supernet.supernet import SuperNet


@dataclass
class EvalData:
    """Batches held in memory so every candidate sees the same data: `calibration` for BN, `validation` to score."""

    calibration: list[torch.Tensor]
    validation: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def from_splits(cls, splits, batch_size: int = 128, calibration_batches: int = 20, seed: int = 0) -> "EvalData":
        calibration = []
        for images, _ in splits.loader("train", batch_size, shuffle=True, seed=seed):
            calibration.append(images)
            if len(calibration) == calibration_batches:
                break
        validation = [(x, y) for x, y in splits.loader("val", 256)]
        return cls(calibration, validation)

    def to(self, device) -> "EvalData":
        """The batches on `device`; images channels-last on CPU, where the convolutions run faster that way (same
        results up to float rounding)."""
        device = torch.device(device)
        layout = torch.channels_last if device.type == "cpu" else torch.preserve_format

        def move(images: torch.Tensor) -> torch.Tensor:
            return images.to(device, memory_format=layout) if images.dim() == 4 else images.to(device)

        return EvalData([move(x) for x in self.calibration], [(move(x), y.to(device)) for x, y in self.validation])

    @property
    def calibration_images(self) -> int:
        return sum(len(x) for x in self.calibration)

    @property
    def validation_images(self) -> int:
        return sum(len(y) for _, y in self.validation)

    def shard(self, dist) -> "EvalData":
        """This rank's share of every batch; BN statistics and counts are then all-reduced (see score_arch)."""
        return EvalData([dist.shard(x) for x in self.calibration],
                        [(dist.shard(x), dist.shard(y)) for x, y in self.validation])


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.inference_mode()
def recalibrate_bn(model: nn.Module, batches) -> None:
    bns = _batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for images in batches:
        model(images)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, batches) -> tuple[int, int]:
    """(correct, total) so that distributed callers can sum before dividing."""
    model.eval()
    correct = total = 0
    for images, labels in batches:
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct, total


def score_arch(supernet: SuperNet, arch: np.ndarray, data: EvalData, reduce=None) -> dict:
    """{"left": acc, ["right": acc,] "score": mean} in percent. `reduce` sums (correct, total) across processes."""
    result = {}
    for path in supernet.principle.paths:
        supernet.activate(arch, path)
        recalibrate_bn(supernet, data.calibration)
        correct, total = accuracy(supernet, data.validation)
        if reduce is not None:
            correct, total = reduce(correct, total)
        result[path] = 100.0 * correct / max(total, 1)
    result["score"] = float(np.mean([result[p] for p in supernet.principle.paths]))
    return result
