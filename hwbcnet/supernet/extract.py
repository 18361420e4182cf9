"""Standalone subnets: a plain nn.Module with the arch's channel counts, optionally inheriting supernet weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from hwbcnet.space.space import WidthSpace
from hwbcnet.supernet.principles import LEFT
from hwbcnet.supernet.supernet import SuperNet, plain_module, rematerialize


def build_standalone(space: WidthSpace, arch, supernet: SuperNet | None = None, path: str = LEFT) -> fx.GraphModule:
    """The pruned model for `arch`: real smaller tensors, no masks. With `supernet`, the weights (and BatchNorm
    statistics) are copied from that path's channel slices, so its outputs equal the supernet's sliced forward."""
    arch = space.validate(arch)
    channels = space.arch_channels(arch)[0]
    model = rematerialize(space, channels, plain_module)
    if supernet is not None:
        copy_sliced_weights(supernet, model, arch, path)
    return model


@torch.no_grad()
def copy_sliced_weights(supernet: SuperNet, model: torch.nn.Module, arch: np.ndarray, path: str) -> None:
    supernet.activate(arch, path)
    ranges = supernet.ranges
    for name, binding in supernet.space.bindings.items():
        src, dst = supernet.net.get_submodule(name), model.get_submodule(name)
        if binding.kind == "bn":
            s = ranges.get(binding.out_var, src.num_features)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(src, attr) is not None:
                    getattr(dst, attr).copy_(getattr(src, attr)[s])
            dst.num_batches_tracked.copy_(src.num_batches_tracked)
            continue
        fixed_out = src.out_channels if binding.kind != "linear" else src.out_features
        fixed_in = src.in_channels if binding.kind != "linear" else src.in_features
        out_s = ranges.get(binding.out_var, fixed_out)
        weight = src.weight[out_s] if binding.kind == "depthwise" else src.weight[out_s, ranges.get(binding.in_var, fixed_in)]
        dst.weight.copy_(weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias[out_s])
