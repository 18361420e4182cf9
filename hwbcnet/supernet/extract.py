"""Standalone subnets: the model with the arch's channel counts as real smaller tensors (no masks), optionally
inheriting a supernet path's weights."""

from __future__ import annotations

import numpy as np
from torch import fx

from hwbcnet.space.materialize import materialize, prefix_picks
from hwbcnet.space.space import WidthSpace
from hwbcnet.supernet.principles import LEFT
from hwbcnet.supernet.supernet import SuperNet


def build_standalone(space: WidthSpace, arch, supernet: SuperNet | None = None, path: str = LEFT) -> fx.GraphModule:
    """The pruned model for `arch`. Without `supernet` its tensors are the first channels of the traced model's
    (random) ones; with it, the weights and BatchNorm statistics are that path's channel slices, so its outputs
    equal the supernet's sliced forward."""
    arch = space.validate(arch)
    channels = space.arch_channels(arch)[0]
    if supernet is None:
        return materialize(space.traced, prefix_picks(channels), [v.channels for v in space.variables])
    picks = [np.arange(start, stop) for start, stop in supernet.path_ranges(arch, path)]
    return materialize(space.traced, picks, supernet.ranges.full, supernet.net.state_dict())

