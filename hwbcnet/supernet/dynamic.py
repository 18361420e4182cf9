"""Slimmable modules: any leaf module (conv, linear, norm, and their subclasses such as timm's BatchNormAct2d or
Conv2dSame) run on the active slice of their channels.

The active (start, stop) range of every width variable lives in one shared `ActiveRanges` object that the supernet
sets per path. A module becomes slimmable by switching its class to a subclass with the `Sliced` mixin: before its
own forward runs, every channel-dependent parameter and buffer is swapped for its active slice (a view when the
channels are one contiguous range, so BatchNorm's running-statistics updates land in the buffers; an index
selection written back afterwards for concatenated layouts), and its size attributes (in_channels, groups,
num_features, normalized_shape, ...) are set to match. Parameter names stay those of the model, so checkpoints and
state_dicts line up with the user's model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from hwbcnet.space.layers import Layout, ModuleSpec
from hwbcnet.space.materialize import layout_index, set_module_sizes


class ActiveRanges:
    """The active channel range of every variable in supernet channel space (`full[v]` channels)."""

    def __init__(self, full: list[int]):
        self.full = full
        self.ranges: list[tuple[int, int]] = [(0, c) for c in full]
        self._cache: dict = {}

    def set(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self._cache.clear()

    def size(self, layout: Layout) -> int:
        return layout.size_at([b - a for a, b in self.ranges])

    def select(self, layout: Layout, device) -> slice | torch.Tensor:
        """A slice when the layout's active entries are contiguous, else a LongTensor of positions."""
        key = (layout, device)
        found = self._cache.get(key)
        if found is None:
            segments = layout.segments
            if len(segments) == 1 and segments[0].repeat == 1:
                var = segments[0].var
                found = slice(0, segments[0].channels) if var is None else slice(*self.ranges[var])
            else:
                picks = [np.arange(a, b) for a, b in self.ranges]
                found = torch.as_tensor(layout_index(layout, picks, self.full), dtype=torch.long, device=device)
            self._cache[key] = found
        return found


class Sliced:
    """Mixin of a slimmable module (see the module docstring). Set up by `make_sliced`."""

    def forward(self, *args, **kwargs):
        ranges: ActiveRanges = self._hwbcnet_ranges
        swapped, written_back = {}, []
        try:
            for attr, dims in self._hwbcnet_tensors.items():
                store = self._parameters if attr in self._parameters else self._buffers
                tensor = store[attr]
                if tensor is None:
                    continue
                active = tensor
                for d, dim in enumerate(dims):
                    if isinstance(dim, Layout) and not dim.is_fixed:
                        selector = ranges.select(dim, tensor.device)
                        if isinstance(selector, slice):
                            active = active.narrow(d, selector.start, selector.stop - selector.start)
                        else:
                            active = active.index_select(d, selector)
                            if store is self._buffers:
                                written_back.append((tensor, d, selector, attr))
                swapped[attr] = (store, tensor)
                store[attr] = active
            spec: ModuleSpec | None = self._hwbcnet_spec
            if spec is not None:
                set_module_sizes(self, spec, ranges.size(spec.in_layout), ranges.size(spec.out_layout))
            if self.training and getattr(self, "process_group", None) is not None:
                return _synced_batch_norm(self, args[0])
            return super().forward(*args, **kwargs)
        finally:
            for tensor, d, selector, attr in written_back:  # running statistics of concatenated channels
                with torch.no_grad():
                    tensor.index_copy_(d, selector, self._buffers[attr])
            for attr, (store, tensor) in swapped.items():
                store[attr] = tensor


_SLICED_CLASSES: dict[type, type] = {}


def make_sliced(module: nn.Module, tensors: dict[str, tuple], spec: ModuleSpec | None, ranges: ActiveRanges) -> None:
    """Turn `module` into its slimmable version in place. `tensors`: its own parameter/buffer names -> dims."""
    cls = type(module)
    if cls not in _SLICED_CLASSES:
        _SLICED_CLASSES[cls] = type(f"Sliced{cls.__name__}", (Sliced, cls), {"__module__": __name__})
    module.__class__ = _SLICED_CLASSES[cls]
    module.__dict__["_hwbcnet_tensors"] = tensors
    module.__dict__["_hwbcnet_spec"] = spec
    module.__dict__["_hwbcnet_ranges"] = ranges  # shared state, not a submodule
    if isinstance(module, nn.BatchNorm2d) and type(module).__mro__[2] is nn.BatchNorm2d:
        module.__dict__["process_group"] = None  # set by distributed training: batch statistics over all ranks


def is_sliced_batchnorm(module: nn.Module) -> bool:
    """A plain BatchNorm2d made slimmable: the ones distributed training synchronises."""
    return isinstance(module, Sliced) and "process_group" in module.__dict__


class SlicedTensor(nn.Module):
    """Stands in for a `get_attr` of a channel-dependent parameter used by a functional op (e.g. ConvNeXt's
    layer scale): returns its active slice. Holds no tensors of its own, so state_dict names do not change."""

    def __init__(self, root: nn.Module, name: str, dims: tuple, ranges: ActiveRanges):
        super().__init__()
        owner_name, _, self.attr = name.rpartition(".")
        self.__dict__["owner"] = root.get_submodule(owner_name) if owner_name else root
        self.dims = dims
        self.__dict__["ranges"] = ranges

    def forward(self) -> torch.Tensor:
        tensor = getattr(self.owner, self.attr)
        for d, dim in enumerate(self.dims):
            if isinstance(dim, Layout) and not dim.is_fixed:
                selector = self.ranges.select(dim, tensor.device)
                tensor = (tensor.narrow(d, selector.start, selector.stop - selector.start)
                          if isinstance(selector, slice) else tensor.index_select(d, selector))
        return tensor


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


def _synced_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm (its tensors already sliced) with mean/variance over the global batch of all ranks (a
    differentiable all-reduce of per-channel sums), so N ranks with batch b train exactly like one process with
    batch N*b. torch.nn.SyncBatchNorm does not run on CPU (gloo), hence this version. A rank with an empty share (a
    batch smaller than the number of ranks) contributes zeros and still joins the all-reduce."""
    count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
    stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
    stats = _SumOverRanks.apply(stats, bn.process_group)
    channels = x.shape[1]
    total = stats[-1]
    mean = stats[:channels] / total
    # E[x^2] - E[x]^2 can round below zero for a near-constant channel
    var = (stats[channels:2 * channels] / total - mean * mean).clamp(min=0)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * total / (total - 1).clamp(min=1)
            bn.running_mean.mul_(1 - factor).add_(factor * mean)
            bn.running_var.mul_(1 - factor).add_(factor * unbiased)
    out = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + bn.eps)
    if bn.weight is not None:
        out = out * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return out
