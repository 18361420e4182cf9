"""Width spaces: a model's traced width variables, the bin grid, and architectures over it.

A variable with C channels is split into N bins; an architecture gives each variable a width c in {m..N} bins, which
means ceil(c*C/N) channels (rounded up so no width is ever empty and the full width c=N is exactly C), rounded up
to the variable's divisor (the group width of grouped convs, and --channel-divisor for device-friendly widths),
at most C. An arch is
an int array of bins, one per variable in graph order; as text it is the Channel-Bench-Macro digit code (`4432214`)
when N <= 9, a comma list (`8,6,6,...`), `full`, `min`, or a JSON file with {"widths": {variable: bins}}.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from hwbcnet.errors import HwbcnetError
from hwbcnet.space.layers import Layer, Layout
from hwbcnet.space.models.sources import ModelSource, parse_model_source
from hwbcnet.space.tracing import TracedModel, WidthVariable, trace_model


@dataclass
class WidthSpace:
    model: str  # the model spec (hwbcnet/space/models/sources.py)
    resolution: int
    num_classes: int
    width_mult: float
    bins: int  # N
    min_bins: int  # m
    traced: TracedModel
    model_kwargs: dict = field(default_factory=dict)
    fixed: tuple[str, ...] = ()  # --fixed globs
    channel_divisor: int = 1  # --channel-divisor: every width (but the full one) a multiple of it

    @property
    def source(self) -> ModelSource:
        return ModelSource(self.model, json.dumps(self.model_kwargs, sort_keys=True))

    @property
    def slug(self) -> str:
        """The model's name in file names (LUT paths)."""
        return self.source.slug

    @property
    def variables(self) -> list[WidthVariable]:
        return self.traced.variables

    @property
    def layers(self) -> list[Layer]:
        return self.traced.layers

    @property
    def num_vars(self) -> int:
        return len(self.variables)

    @property
    def choices(self) -> range:
        return range(self.min_bins, self.bins + 1)

    @property
    def size(self) -> int:
        return len(self.choices) ** self.num_vars

    def divisor(self, var: int) -> int:
        return math.lcm(self.variables[var].divisor, self.channel_divisor)

    def channels(self, var: int, bins):
        """ceil(bins * C / N) rounded up to the variable's divisor, at most C; elementwise for arrays."""
        C, d = self.variables[var].channels, self.divisor(var)
        return np.minimum(C, _ceil_div(_ceil_div(np.asarray(bins) * C, self.bins), d) * d)

    def supernet_channels(self, var: int, groups: int) -> int:
        """Channels of the variable in a supernet of B = `groups` groups of C/N channels (B = N: exactly C)."""
        C, d = self.variables[var].channels, self.divisor(var)
        if groups == self.bins:
            return C
        return max(C, int(_ceil_div(_ceil_div(groups * C, self.bins), d)) * d)

    @functools.cached_property
    def _channel_table(self) -> np.ndarray:
        widths = np.arange(self.bins + 1)
        return np.stack([self.channels(v, widths) for v in range(self.num_vars)]).astype(np.int64)

    def channel_table(self) -> np.ndarray:
        """Int array (V, N+1): [v, c] = channels of variable v at c bins."""
        return self._channel_table

    def arch_channels(self, archs: np.ndarray) -> np.ndarray:
        """(n, V) bins -> (n, V) channel counts."""
        archs = np.atleast_2d(archs)
        return self._channel_table[np.arange(self.num_vars), archs]

    def full_arch(self) -> np.ndarray:
        return np.full(self.num_vars, self.bins, dtype=np.int64)

    def min_arch(self) -> np.ndarray:
        return np.full(self.num_vars, self.min_bins, dtype=np.int64)

    def random_archs(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.min_bins, self.bins + 1, size=(n, self.num_vars), dtype=np.int64)

    def all_archs(self) -> np.ndarray:
        """Every arch of the space (only for small spaces such as Channel-Bench-Macro's 4^7)."""
        if self.size > 5_000_000:
            raise HwbcnetError(f"{self.model}: the space has {self.size:.3g} archs, too many to enumerate")
        grids = np.meshgrid(*[np.array(self.choices)] * self.num_vars, indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)

    def validate(self, arch) -> np.ndarray:
        arch = np.asarray(arch, dtype=np.int64)
        if arch.shape != (self.num_vars,):
            raise HwbcnetError(f"arch has {arch.size} widths but {self.model} has {self.num_vars} width variables")
        bad = [(self.variables[i].name, int(c)) for i, c in enumerate(arch) if not self.min_bins <= c <= self.bins]
        if bad:
            name, c = bad[0]
            raise HwbcnetError(f"arch width {c} for {name} is outside {self.min_bins}..{self.bins} bins")
        return arch

    def parse_arch(self, text: str) -> np.ndarray:
        text = text.strip()
        if text == "full":
            return self.full_arch()
        if text == "min":
            return self.min_arch()
        if text.endswith(".json") or Path(text).is_file():
            return self.arch_from_json(_read_arch_json(text))
        if "," in text:
            try:
                return self.validate([int(x) for x in text.split(",")])
            except ValueError:
                raise HwbcnetError(f"arch {text!r}: expected comma-separated integers") from None
        if text.isdigit() and self.bins <= 9:
            return self.validate([int(ch) for ch in text])
        raise HwbcnetError(f"arch {text!r}: expected a code like {self.format_arch(self.full_arch())}, "
                           "a comma list, `full`, `min` or a .json file")

    def format_arch(self, arch) -> str:
        arch = [int(c) for c in arch]
        return "".join(map(str, arch)) if self.bins <= 9 else ",".join(map(str, arch))

    def arch_to_json(self, arch) -> dict:
        arch = self.validate(arch)
        return {"model": self.model, "bins": self.bins, "min_bins": self.min_bins, "code": self.format_arch(arch),
                "widths": {v.name: int(c) for v, c in zip(self.variables, arch)},
                "channels": {v.name: int(ch) for v, ch in zip(self.variables, self.arch_channels(arch)[0])}}

    def arch_from_json(self, obj: dict) -> np.ndarray:
        if obj.get("model", self.model) != self.model:
            raise HwbcnetError(f"arch is for model {obj.get('model')!r}, not {self.model!r}")
        if "widths" in obj:
            widths = obj["widths"]
            missing = [v.name for v in self.variables if v.name not in widths]
            if missing:
                raise HwbcnetError(f"arch JSON lacks widths for {', '.join(missing[:5])}")
            return self.validate([widths[v.name] for v in self.variables])
        if "code" in obj:
            return self.parse_arch(str(obj["code"]))
        raise HwbcnetError("arch JSON needs a `widths` mapping or a `code`")

    def describe(self) -> dict:
        """Everything `space_from_description` needs to rebuild this space (recorded in every file hwbcnet writes)."""
        return {"model": self.model, "model_kwargs": self.model_kwargs, "resolution": self.resolution,
                "num_classes": self.num_classes, "width_mult": self.width_mult, "bins": self.bins,
                "min_bins": self.min_bins, "fixed": list(self.fixed), "channel_divisor": self.channel_divisor}

    def fingerprint(self) -> str:
        """Hash of the traced structure: the space's settings, the variables, the executed layers and the shape of
        every channel-dependent tensor. A rebuilt model with another structure gets another fingerprint."""
        payload = json.dumps({"space": self.describe(), "layers": [layer.to_json() for layer in self.layers],
                              "variables": [[v.channels, v.divisor] for v in self.variables],
                              "params": {name: [d.to_json() if isinstance(d, Layout) else d for d in spec.dims]
                                         for name, spec in sorted(self.traced.params.items())}}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def build_template(self) -> nn.Module:
        """A fresh instance of the full-width model (new random weights)."""
        return self.source.build(self.num_classes, self.width_mult, self.resolution)


def _ceil_div(a, b):
    return -(-a // b)


def _read_arch_json(path: str) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HwbcnetError(f"{path}: cannot read arch JSON ({exc})") from None
    # A search result holds the chosen arch under "arch".
    return obj.get("arch", obj) if isinstance(obj, dict) else {}


@functools.lru_cache(maxsize=32)
def _trace_cached(source: ModelSource, num_classes: int, width_mult: float, resolution: int,
                  fixed: tuple[str, ...]) -> TracedModel:
    model = source.build(num_classes, width_mult, resolution)
    return trace_model(model, (1, 3, resolution, resolution), fixed=fixed)


def build_space(model: str, *, bins: int | None = None, min_bins: int | None = None, resolution: int | None = None,
                width_mult: float = 1.0, num_classes: int = 10, model_kwargs: dict | str | None = None,
                fixed: tuple[str, ...] | list[str] = (), channel_divisor: int = 1) -> WidthSpace:
    """The width space of a model (spec forms in hwbcnet/space/models/sources.py), traced at `resolution`."""
    source = parse_model_source(model, model_kwargs)
    default_resolution, default_bins, default_min_bins = source.defaults()
    bins = default_bins if bins is None else int(bins)
    min_bins = default_min_bins if min_bins is None else int(min_bins)
    resolution = default_resolution if resolution is None else int(resolution)
    if bins < 1 or not 1 <= min_bins <= bins:
        raise HwbcnetError(f"bins={bins}, min_bins={min_bins}: need 1 <= min_bins <= bins")
    if resolution < 8:
        raise HwbcnetError(f"resolution {resolution} is too small (at least 8 px)")
    if channel_divisor < 1:
        raise HwbcnetError(f"--channel-divisor {channel_divisor}: must be at least 1")
    fixed = tuple(dict.fromkeys(str(pattern) for pattern in fixed))
    traced = _trace_cached(source, int(num_classes), float(width_mult), resolution, fixed)
    if not traced.variables:
        reasons = "; ".join(traced.pinned[:3]) or "no conv/linear layer produces free channels"
        raise HwbcnetError(f"{source.spec} has no width variable to search ({reasons})")
    return WidthSpace(source.spec, resolution, int(num_classes), float(width_mult), bins, min_bins, traced,
                      source.kwargs, fixed, int(channel_divisor))


def space_from_description(described: dict) -> WidthSpace:
    """The space a file recorded with WidthSpace.describe() (files from before model sources lack some keys)."""
    return build_space(described["model"], bins=described["bins"], min_bins=described["min_bins"],
                       resolution=described["resolution"], width_mult=described.get("width_mult", 1.0),
                       num_classes=described["num_classes"], model_kwargs=described.get("model_kwargs") or {},
                       fixed=tuple(described.get("fixed") or ()),
                       channel_divisor=int(described.get("channel_divisor") or 1))
