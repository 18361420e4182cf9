"""Human budget strings: `10ms`, `250us`, `50%` (of the full model), `300M`, `2.5G`, `1e6`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hwbcnet.errors import HwbcnetError

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_TIME = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"


@dataclass(frozen=True)
class Budget:
    """An upper bound on one cost. `value` is absolute (ms for latency, a count otherwise) unless `fraction` is set,
    in which case the bound is `fraction` x the cost of the full-width model."""

    cost: str  # "flops" | "params" | "latency"
    value: float | None = None
    fraction: float | None = None
    text: str = ""

    def resolve(self, full_value: float) -> float:
        return self.fraction * full_value if self.fraction is not None else float(self.value)


def parse_budget(cost: str, text: str, option: str | None = None) -> Budget:
    """The budget `text` for `cost` ("flops", "params" or "latency"); errors name `option` (default `--<cost>`)."""
    try:
        return read_budget(cost, text)
    except ValueError as exc:
        raise HwbcnetError(f"{option or '--' + cost} {text!r}: {exc}") from None


def read_budget(cost: str, text: str) -> Budget:
    """`parse_budget` for callers that add their own context: a ValueError says what is allowed."""
    raw = text.strip()
    match = re.fullmatch(_NUMBER + r"\s*%", raw)
    if match:
        fraction = float(match.group(1)) / 100.0
        if not 0 < fraction <= 1:
            raise ValueError("a percentage must lie in (0, 100]")
        return Budget(cost, fraction=fraction, text=raw)
    if cost == "latency":
        match = re.fullmatch(_NUMBER + r"\s*(s|ms|us|µs)", raw)
        if not match:
            raise ValueError("expected a time such as 10ms, 2.5ms, 800us or a percentage such as 60%")
        value = float(match.group(1)) * _TIME[match.group(2)]
    else:
        match = re.fullmatch(_NUMBER + r"\s*([kKMGT]?)", raw)
        if not match:
            raise ValueError("expected a count such as 300M, 2.5G, 1e6 or a percentage such as 50%")
        value = float(match.group(1)) * _SUFFIX[match.group(2)]
    if not 0 < value < math.inf:
        raise ValueError("the budget must be positive and finite")
    return Budget(cost, value=value, text=raw)


def format_count(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def read_margin(text: str) -> float | None:
    """A latency guard band: `auto` (None: derived from the LUT calibration's residuals by the search), a
    percentage such as `3%`, or a fraction such as 0 or 0.03. A ValueError says what is allowed."""
    raw = text.strip()
    if raw == "auto":
        return None
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError("expected auto, a percentage such as 3%, or 0") from None
    if not 0 <= value < 1:
        raise ValueError("expected auto, or a guard band from 0% up to (not including) 100%")
    return value
