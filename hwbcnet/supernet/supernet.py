"""The slimmable supernet: the traced model re-materialised with dynamic modules at the principle's supernet width."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from hwbcnet.space.space import WidthSpace
from hwbcnet.space.tracing import ModuleBinding
from hwbcnet.supernet.dynamic import ActiveRanges, DynamicBatchNorm2d, DynamicConv2d, DynamicLinear
from hwbcnet.supernet.principles import LEFT, Principle, get_principle


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def rematerialize(space: WidthSpace, var_channels, make: Callable[[nn.Module, ModuleBinding, int, int], nn.Module]):
    """A copy of the traced model whose conv/BN/linear modules are rebuilt by `make(old, binding, c_in, c_out)`, with
    c_in/c_out taken from `var_channels` (one count per width variable) or the module's own fixed size."""
    graph_module = copy.deepcopy(space.traced.graph_module)
    for name, binding in space.bindings.items():
        old = graph_module.get_submodule(name)
        fixed_in = {"conv": "in_channels", "depthwise": "in_channels", "linear": "in_features", "bn": "num_features"}
        fixed_out = {"conv": "out_channels", "depthwise": "out_channels", "linear": "out_features", "bn": "num_features"}
        c_in = int(var_channels[binding.in_var]) if binding.in_var is not None else getattr(old, fixed_in[binding.kind])
        c_out = int(var_channels[binding.out_var]) if binding.out_var is not None else getattr(old, fixed_out[binding.kind])
        _set_submodule(graph_module, name, make(old, binding, c_in, c_out))
    return graph_module


def plain_module(old: nn.Module, binding: ModuleBinding, c_in: int, c_out: int, **extra) -> nn.Module:
    """A standard (or, with `extra`, dynamic) module like `old` with new channel counts."""
    if binding.kind in ("conv", "depthwise"):
        cls = DynamicConv2d if extra else nn.Conv2d
        groups = c_out if binding.kind == "depthwise" else 1
        return cls(c_out if groups > 1 else c_in, c_out, old.kernel_size, old.stride, old.padding, old.dilation,
                   groups, old.bias is not None, **extra)
    if binding.kind == "linear":
        cls = DynamicLinear if extra else nn.Linear
        return cls(c_in, c_out, old.bias is not None, **extra)
    if extra:
        return DynamicBatchNorm2d(c_out, old.eps, old.momentum, old.affine, old.track_running_stats,
                                  var=extra["out_var"], ranges=extra["ranges"])
    return nn.BatchNorm2d(c_out, old.eps, old.momentum, old.affine, old.track_running_stats)


class SuperNet(nn.Module):
    """Runs any arch of `space` by slicing: `activate(arch, path)` then call it like a model."""

    def __init__(self, space: WidthSpace, principle: Principle | str):
        super().__init__()
        self.space = space
        self.principle = get_principle(principle) if isinstance(principle, str) else principle
        full = [self.principle.supernet_channels(v.channels, space.bins, space.min_bins) for v in space.variables]
        self.ranges = ActiveRanges(full)

        def make(old, binding, c_in, c_out):
            return plain_module(old, binding, c_in, c_out, in_var=binding.in_var, out_var=binding.out_var,
                                ranges=self.ranges)

        self.net = rematerialize(space, full, make)

    def path_ranges(self, arch, path: str) -> list[tuple[int, int]]:
        arch = np.asarray(arch)
        space, p = self.space, self.principle
        return [p.channel_range(v.channels, space.bins, space.min_bins, int(c), path) for v, c in zip(space.variables, arch)]

    def activate(self, arch, path: str = LEFT) -> "SuperNet":
        self.ranges.ranges = self.path_ranges(arch, path)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
