"""What tracing derives from a model, in terms of width variables: channel layouts, the shapes of parameters, the
multiply-accumulates of every conv/linear, and the executed layers (cost units) that latency cells are built from.

A `Layout` describes one tensor axis that carries channels: a sequence of `Segment`s, each a run of channels whose
count one width variable sets (`var`, None = fixed). Most axes are one segment; a concatenation along channels has
one segment per operand, in order; a CxHxW map flattened into a vector has segments whose channels `repeat` H*W
times. Channel counts refer to the *standalone* (non-enlarged) network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

LayerKind = Literal["conv", "linear", "add", "mul", "pool", "se", "concat", "norm", "act", "shuffle"]


@dataclass(frozen=True)
class Segment:
    var: int | None  # the width variable that sets its channel count; None = fixed
    channels: int  # channels at full width
    repeat: int = 1  # entries per channel along the axis (H*W for a flattened CxHxW map)


@dataclass(frozen=True)
class Layout:
    segments: tuple[Segment, ...]

    @classmethod
    def fixed(cls, channels: int) -> "Layout":
        return cls((Segment(None, int(channels)),))

    @property
    def size(self) -> int:
        """Entries along the axis at full width."""
        return sum(s.channels * s.repeat for s in self.segments)

    @property
    def vars(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(s.var for s in self.segments if s.var is not None))

    @property
    def is_fixed(self) -> bool:
        return not self.vars

    def size_at(self, channels) -> int:
        """Entries along the axis when variable v has channels[v] channels."""
        return sum((s.channels if s.var is None else int(channels[s.var])) * s.repeat for s in self.segments)

    def coefficients(self) -> tuple[dict[int, int], int]:
        """size = sum_v coef[v] * channels[v] + constant."""
        coef: dict[int, int] = {}
        constant = 0
        for s in self.segments:
            if s.var is None:
                constant += s.channels * s.repeat
            else:
                coef[s.var] = coef.get(s.var, 0) + s.repeat
        return coef, constant

    def to_json(self) -> list:
        return [[s.var, s.channels, s.repeat] for s in self.segments]


@dataclass(frozen=True)
class ParamSpec:
    """The shape of a parameter or buffer: each dim a Layout (follows the widths) or a fixed int."""

    dims: tuple[Layout | int, ...]

    @property
    def varies(self) -> bool:
        return any(isinstance(d, Layout) and not d.is_fixed for d in self.dims)

    def shape_at(self, channels) -> tuple[int, ...]:
        return tuple(d.size_at(channels) if isinstance(d, Layout) else d for d in self.dims)


@dataclass(frozen=True)
class ModuleSpec:
    """A leaf module whose size attributes follow the widths: `kind` says which attributes (see supernet/resize.py),
    `group_width` the channels per group of a grouped conv or GroupNorm (0 = not grouped)."""

    kind: Literal["conv", "linear", "batchnorm", "layernorm", "groupnorm"]
    in_layout: Layout
    out_layout: Layout
    group_width: int = 0


@dataclass(frozen=True)
class MacTerm:
    """coef * size(a) * size(b) multiply-accumulates (b None: coef * size(a)); per image."""

    a: Layout
    b: Layout | None
    coef: int


@dataclass(frozen=True)
class Layer:
    """One unit the runtime executes, the thing a latency cell times: a convolution with its BatchNorm and
    activation fused, a linear layer (+activation), a residual add (+activation), a squeeze-excitation gate, a
    pooling, a concatenation, a standalone norm (+activation) or activation, a channel shuffle, a broadcast mul.
    `inputs` is the layout read, `outputs` the layout written, `mid` the reduced width of an SE gate."""

    name: str
    kind: LayerKind
    inputs: Layout
    outputs: Layout
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    group_width: int = 0  # conv: 0 dense, 1 depthwise, g channels per group
    bias: bool = False
    bn: bool = False
    act: str | None = None  # activation fused into the unit (see space/ops/activations.py for the names)
    pool: str | None = None  # pool: "avg" | "max"; global when the kernel covers the input
    mid: Layout | None = None  # se: reduction width
    gate: str | None = None  # se: gate activation ("sigmoid" | "hardsigmoid")
    parts: int = 1  # concat: operands
    norm: str | None = None  # norm: "bn" | "ln" | "gn"
    groups: int = 1  # shuffle: groups
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def axes(self) -> tuple[Layout, ...]:
        """The layouts whose sizes decide the cell: (inputs, outputs), or one of them when both are the same
        channels (depthwise/grouped convs, adds, pools, norms), plus `mid` for an SE gate."""
        if self.kind == "se":
            return (self.inputs, self.mid)
        if self.inputs == self.outputs or self.kind in ("add", "mul", "pool", "norm", "act", "concat", "shuffle"):
            return (self.outputs,)
        return (self.inputs, self.outputs)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        for key in ("inputs", "outputs", "mid"):
            data[key] = None if getattr(self, key) is None else getattr(self, key).to_json()
        return data
