"""Build the traced model at other channel counts: every channel-dependent tensor is an index selection of a
source tensor, every size attribute (in_channels, groups, num_features, normalized_shape, ...) follows.

`picks[v]` are the channel positions of variable v taken from the source tensors, whose variable segments hold
`sizes[v]` channels. The standalone model of an arch takes the first k channels of the model's own tensors
(`prefix_picks`), a supernet path takes its channel range from the supernet's tensors, and the enlarged BCNetV2
supernet extends a model's tensors cyclically (position i takes channel i mod C).
"""

from __future__ import annotations

import copy
import operator
from typing import Sequence

import numpy as np
import torch
from torch import fx, nn

from hwbcnet.space.layers import Layout, ModuleSpec


def prefix_picks(channels: Sequence[int]) -> list[np.ndarray]:
    """The first k channels of every variable."""
    return [np.arange(int(k)) for k in channels]


def layout_index(layout: Layout, picks: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """Positions along a dim laid out as `layout` (variable segments of sizes[v] channels in the source) that the
    picks select, in order; each picked channel brings its `repeat` consecutive entries."""
    parts, offset = [], 0
    for seg in layout.segments:
        size = seg.channels if seg.var is None else int(sizes[seg.var])
        chosen = np.arange(seg.channels) if seg.var is None else np.asarray(picks[seg.var])
        parts.append(offset + (chosen[:, None] * seg.repeat + np.arange(seg.repeat)).ravel())
        offset += size * seg.repeat
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def select(tensor: torch.Tensor, dims, picks, sizes) -> torch.Tensor:
    for d, dim in enumerate(dims):
        if isinstance(dim, Layout) and not dim.is_fixed:
            index = torch.as_tensor(layout_index(dim, picks, sizes), dtype=torch.long, device=tensor.device)
            tensor = tensor.index_select(d, index)
    return tensor


def set_module_sizes(module: nn.Module, spec: ModuleSpec, in_size: int, out_size: int) -> None:
    """The size attributes of a module whose tensors now have `in_size` input and `out_size` output channels."""
    if spec.kind == "conv":
        module.in_channels, module.out_channels = in_size, out_size
        if spec.group_width:
            module.groups = out_size // spec.group_width
    elif spec.kind == "linear":
        module.in_features, module.out_features = in_size, out_size
    elif spec.kind == "batchnorm":
        module.num_features = out_size
    elif spec.kind == "layernorm":
        module.normalized_shape = (out_size,)
    elif spec.kind == "groupnorm":
        module.num_channels = out_size
        if spec.group_width:
            module.num_groups = out_size // spec.group_width


def set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace the parameter or buffer `name` of `root` (a parameter stays a parameter)."""
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)


def materialize(traced, picks, sizes, state: dict[str, torch.Tensor] | None = None) -> fx.GraphModule:
    """A copy of the traced model with every channel-dependent tensor selected from `state` (default: the traced
    model's own tensors) by `picks`, and the size attributes set to match."""
    graph_module = copy.deepcopy(traced.graph_module)
    state = {} if state is None else state
    channels = [len(p) for p in picks]
    tensors = dict(graph_module.named_parameters())
    tensors.update(graph_module.named_buffers())
    with torch.no_grad():
        for name, current in tensors.items():
            if current is None:
                continue
            spec = traced.params.get(name)
            source = state.get(name, current)
            value = select(source, spec.dims, picks, sizes) if spec is not None else source
            set_tensor(graph_module, name, value.detach().clone().to(current.dtype))
    for name, spec in traced.modules.items():
        set_module_sizes(graph_module.get_submodule(name), spec, spec.in_layout.size_at(channels),
                         spec.out_layout.size_at(channels))
    drop_shape_asserts(graph_module)
    return graph_module


def drop_shape_asserts(graph_module: fx.GraphModule) -> None:
    """Remove `torch._assert` checks (and the size arithmetic only they used): they compare shapes with the
    full-width values recorded at trace time."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch._assert:
            inputs = list(node.all_input_nodes)
            graph.erase_node(node)
            pending = inputs
            while pending:
                candidate = pending.pop()
                if candidate.users or candidate.op != "call_function" or candidate.meta.get("tensor_meta") is not None:
                    continue
                if candidate.target in (operator.eq, operator.ne, operator.getitem, getattr, operator.and_,
                                        operator.lt, operator.le, operator.gt, operator.ge, operator.mod, len):
                    pending += list(candidate.all_input_nodes)
                    graph.erase_node(candidate)
    graph_module.recompile()
