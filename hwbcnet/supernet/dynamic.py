"""Slimmable modules: conv, BatchNorm and linear layers that run on a slice of their channels.

Each module knows which width variable sets its input and output channels; the active (start, stop) range of every
variable lives in one shared `ActiveRanges` object that the supernet sets per path. BatchNorm slices its affine
parameters and running statistics with the same range (the statistics are views, so updates land in the buffers).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn


class ActiveRanges:
    def __init__(self, full: list[int]):
        self.full = full
        self.ranges: list[tuple[int, int]] = [(0, c) for c in full]

    def get(self, var: int | None, fixed: int) -> slice:
        if var is None:
            return slice(0, fixed)
        start, stop = self.ranges[var]
        return slice(start, stop)


class DynamicConv2d(nn.Conv2d):
    def __init__(self, *args, in_var: int | None, out_var: int | None, ranges: ActiveRanges, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_var, self.out_var = in_var, out_var
        self.__dict__["ranges"] = ranges  # shared state, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_slice = self.ranges.get(self.out_var, self.out_channels)
        if self.groups > 1:  # depthwise: one filter per active channel
            weight = self.weight[out_slice]
            groups = weight.shape[0]
        else:
            weight = self.weight[out_slice, self.ranges.get(self.in_var, self.in_channels)]
            groups = 1
        bias = self.bias[out_slice] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class DynamicLinear(nn.Linear):
    def __init__(self, *args, in_var: int | None, out_var: int | None, ranges: ActiveRanges, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_var, self.out_var = in_var, out_var
        self.__dict__["ranges"] = ranges

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_slice = self.ranges.get(self.out_var, self.out_features)
        weight = self.weight[out_slice, self.ranges.get(self.in_var, self.in_features)]
        return F.linear(x, weight, self.bias[out_slice] if self.bias is not None else None)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's loss depends on every rank's
    contribution to the sum. DDP's 1/N gradient averaging then yields the gradient of the mean loss."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(grad, group=ctx.group)
        return grad, None


class DynamicBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, *args, var: int | None, ranges: ActiveRanges, **kwargs):
        super().__init__(*args, **kwargs)
        self.var = var
        self.__dict__["ranges"] = ranges
        self.__dict__["process_group"] = None  # set by distributed training: batch statistics over all ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.ranges.get(self.var, self.num_features)
        if self.training and self.process_group is not None:
            return self._synced_forward(x, s)
        use_batch_stats = self.training or self.running_mean is None
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            # momentum None = cumulative average, used to recalibrate statistics per path before scoring
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return F.batch_norm(
            x,
            self.running_mean[s] if not use_batch_stats or self.training else None,
            self.running_var[s] if not use_batch_stats or self.training else None,
            self.weight[s] if self.weight is not None else None,
            self.bias[s] if self.bias is not None else None,
            use_batch_stats, factor, self.eps,
        )

    def _synced_forward(self, x: torch.Tensor, s: slice) -> torch.Tensor:
        """Training-mode BatchNorm with mean/variance over the global batch of all ranks (a differentiable
        all-reduce of per-channel sums), so N ranks with batch b train exactly like one process with batch N*b.
        torch.nn.SyncBatchNorm does not run on CPU (gloo), hence this version. A rank with an empty share (a batch
        smaller than the number of ranks) contributes zeros and still joins the all-reduce."""
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        stats = _SumOverRanks.apply(stats, self.process_group)
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        # E[x^2] - E[x]^2 can round below zero for a near-constant channel
        var = (stats[channels:2 * channels] / total - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_mean[s].mul_(1 - factor).add_(factor * mean)
                self.running_var[s].mul_(1 - factor).add_(factor * unbiased)
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.weight is not None:
            out = out * self.weight[s][None, :, None, None] + self.bias[s][None, :, None, None]
        return out
