"""The traced layer list of a width space: what costs (FLOPs, params, latency cells) are computed from.

A `Layer` is one unit the runtime executes: a convolution with its BatchNorm and activation fused, a linear layer,
a residual add with its activation, or a global average pool. Its channel counts refer to the *standalone*
(non-enlarged) network; `in_var`/`out_var` name the width variable that sets them (None = fixed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

LayerKind = Literal["conv", "linear", "add", "pool"]


@dataclass(frozen=True)
class Layer:
    name: str
    kind: LayerKind
    in_var: int | None
    out_var: int | None
    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    depthwise: bool = False  # groups == channels: in and out channel counts are the same variable
    bias: bool = False
    bn: bool = False
    act: str | None = None  # "relu" | "relu6" | None: the activation fused into this unit
    pool: str | None = None  # kind "pool" only: "avg" (global average) or "max"

    def to_json(self) -> dict:
        return asdict(self)
