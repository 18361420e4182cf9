"""The slimmable supernet: the traced model re-materialised at the principle's supernet width, every
channel-dependent module made slimmable (supernet/dynamic.py).

Initialisation. Without weights, every leaf module is re-initialised by its own `reset_parameters` after the
global seed is set (the traced template's weights come from whatever the RNG held when it was traced). With
pretrained weights (`weights`: a state_dict of the user's model), each variable's C channels fill the supernet's
enlarged width *cyclically*: supernet channel i holds model channel i mod C. For ua and bcnet (B = N) that is the
model itself. For bcnetv2 (B = N+m groups) the left path at full width is the model's channels [0, C) and the right
path [Ksup-C, Ksup) is the same channels rotated by Ksup-C; every module of a variable rotates alike, so both full-
width paths compute exactly the pretrained model. Narrower widths start from the model's first (left) or rotated
last (right) channels, as slimmable networks start from a trained model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from hwbcnet.errors import HwbcnetError
from hwbcnet.space.materialize import materialize
from hwbcnet.space.space import WidthSpace
from hwbcnet.supernet.dynamic import ActiveRanges, SlicedTensor, make_sliced
from hwbcnet.supernet.principles import LEFT, Principle, get_principle


def _own_tensors(traced, module_name: str) -> dict[str, tuple]:
    prefix = f"{module_name}."
    return {name[len(prefix):]: spec.dims for name, spec in traced.params.items()
            if name.startswith(prefix) and "." not in name[len(prefix):]}


def _slice_functional_parameters(graph_module: fx.GraphModule, traced, ranges: ActiveRanges) -> None:
    """Route every get_attr of a channel-dependent tensor (not owned by a sliced module) through SlicedTensor."""
    owned = {name for name in traced.params if name.rpartition(".")[0] in traced.modules}
    graph = graph_module.graph
    for index, node in enumerate(list(graph.nodes)):
        if node.op != "get_attr" or node.target not in traced.params or node.target in owned:
            continue
        slot = f"_hwbcnet_sliced_{index}"
        graph_module.add_submodule(slot, SlicedTensor(graph_module, node.target, traced.params[node.target].dims,
                                                      ranges))
        with graph.inserting_after(node):
            replacement = graph.call_module(slot)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    graph_module.recompile()


class SuperNet(nn.Module):
    """Runs any arch of `space` by slicing: `activate(arch, path)` then call it like a model."""

    def __init__(self, space: WidthSpace, principle: Principle | str, weights: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.space = space
        self.principle = get_principle(principle) if isinstance(principle, str) else principle
        groups = self.principle.groups(space.bins, space.min_bins)
        full = [space.supernet_channels(v, groups) for v in range(space.num_vars)]
        self.ranges = ActiveRanges(full)
        traced = space.traced
        cyclic = [np.arange(k) % v.channels for k, v in zip(full, space.variables)]
        if weights is not None:
            check_weights(traced.graph_module, weights)
        net = materialize(traced, cyclic, [v.channels for v in space.variables], weights)
        if weights is None:
            for module in net.modules():
                if hasattr(module, "reset_parameters") and module is not net:
                    module.reset_parameters()
        for name, spec in traced.modules.items():
            make_sliced(net.get_submodule(name), _own_tensors(traced, name), spec, self.ranges)
        _slice_functional_parameters(net, traced, self.ranges)
        self.net = net

    def path_ranges(self, arch, path: str) -> list[tuple[int, int]]:
        channels = self.space.arch_channels(np.asarray(arch))[0]
        return [self.principle.channel_range(int(k), total, path) for k, total in zip(channels, self.ranges.full)]

    def activate(self, arch, path: str = LEFT) -> "SuperNet":
        self.ranges.set(self.path_ranges(arch, path))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_weights(graph_module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor the traced model uses must be in `weights` with its shape; tensors of modules the traced
    forward never runs (e.g. an auxiliary classifier) may be extra."""
    expected = dict(graph_module.named_parameters())
    expected.update(graph_module.named_buffers())
    missing = [name for name in expected if name not in weights]
    if missing:
        raise HwbcnetError(f"the weights lack {len(missing)} tensors of the model (e.g. {', '.join(missing[:3])}); "
                           "pass a state_dict of this model with these options")
    wrong = [f"{name} {tuple(weights[name].shape)} vs {tuple(tensor.shape)}" for name, tensor in expected.items()
             if tuple(weights[name].shape) != tuple(tensor.shape)]
    if wrong:
        raise HwbcnetError(f"the weights do not fit the model ({len(wrong)} shape mismatches, e.g. {wrong[0]}); "
                           "were they saved for another model or number of classes?")
