"""How a width of c bins selects channels in the supernet, under three principles.

* ``ua`` (unilaterally augmented, AutoSlim): one path, channels [0, k).
* ``bcnet``: every width is evaluated by a left path [0, k) and a right path [C-k, C); the supernet has B = N groups.
* ``bcnetv2``: widths c in {m..N}; every variable is widened to B = N+m groups of the same size C/N, so the supernet
  has ceil(B*C/N) channels; left path [0, k), right path [C_sup-k, C_sup).

k = ceil(c*C/N) in every case (rounded to the variable's divisor, see WidthSpace.channels), so both paths have
exactly the standalone model's channel count. In group units the left path is [0, c) and the right path [B-c, B);
with the complementary draw c' = B-c every group of a variable is visited exactly twice per (c, c') pair (see
`complement`; with a divisor the channel ranges round to it, so the visits are equal up to that rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

from hwbcnet.errors import HwbcnetError

LEFT, RIGHT = "left", "right"


@dataclass(frozen=True)
class Principle:
    name: str

    @property
    def paths(self) -> tuple[str, ...]:
        return (LEFT,) if self.name == "ua" else (LEFT, RIGHT)

    def groups(self, bins: int, min_bins: int) -> int:
        """B: the number of groups the supernet holds per variable."""
        return bins + min_bins if self.name == "bcnetv2" else bins

    def channel_range(self, k: int, total: int, path: str) -> tuple[int, int]:
        """The channels [start, stop) a path uses for k channels of a variable with `total` supernet channels."""
        return (0, k) if path == LEFT else (total - k, total)

    def group_range(self, bins: int, min_bins: int, width: int, path: str) -> tuple[int, int]:
        B = self.groups(bins, min_bins)
        return (0, width) if path == LEFT else (B - width, B)

    def complement(self, width: int, bins: int, min_bins: int) -> int:
        """The width whose left/right paths cover exactly the groups this width's paths leave out: B - c.
        For ``bcnet`` (B = N) the complement of the full width would be empty; full width visits every group
        equally on its own, so it is its own complement there."""
        if self.name == "ua":
            raise HwbcnetError("the ua principle has no complementary width (it trains with the sandwich rule)")
        other = self.groups(bins, min_bins) - width
        return width if other == 0 else other


PRINCIPLES = {name: Principle(name) for name in ("ua", "bcnet", "bcnetv2")}


def get_principle(name: str) -> Principle:
    try:
        return PRINCIPLES[name]
    except KeyError:
        raise HwbcnetError(f"unknown supernet principle {name!r}; choose ua, bcnet or bcnetv2") from None
