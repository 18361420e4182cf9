"""Budget windows over costs. A candidate is legal when every budgeted cost lies in [lower x budget, budget]
(lower = 0.8 by default, as BCNetV2). The costs are opaque callables (hwbcnet.costs.base.Cost).

A cost that is a prediction of a measurement (latency) may get a guard band `margin`: its window's top becomes
(1 - margin) x budget, so that a pick at the top of the window still measures within the budget when the
prediction errs by the margin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwbcnet.budgets import Budget, format_count
from hwbcnet.costs.base import Cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.space.space import WidthSpace


@dataclass
class Constraint:
    cost: Cost
    budget: Budget
    high: float  # the resolved budget
    low: float
    margin: float = 0.0

    @property
    def limit(self) -> float:
        """The top of the legal window: the budget less the guard band."""
        return self.high * (1.0 - self.margin)

    def describe(self) -> str:
        return f"{self.cost.name} in [{_fmt(self.low, self.cost)}, {_fmt(self.limit, self.cost)}]"


def _fmt(value: float, cost: Cost) -> str:
    return f"{value:.3f} ms" if cost.unit == "ms" else format_count(value)


class Constraints:
    def __init__(self, space: WidthSpace, pairs: list[tuple[Cost, Budget]], lower: float = 0.8,
                 margins: dict[str, float] | None = None):
        """`margins`: guard band per cost name (a fraction of the budget), e.g. {"latency": 0.03}."""
        if not 0 <= lower < 1:
            raise HwbcnetError(f"--lower {lower}: must lie in [0, 1)")
        margins = margins or {}
        self.space, self.lower = space, lower
        full = space.full_arch()[None]
        self.items = []
        for cost, budget in pairs:
            margin = float(margins.get(cost.name, 0.0))
            if not 0 <= margin < 1 - lower:
                raise HwbcnetError(f"--margin {100 * margin:g}%: the {cost.name} guard band must lie in [0, "
                                   f"{100 * (1 - lower):g}%) so that the window [lower x budget, (1 - margin) x "
                                   "budget] is not empty; lower it or lower --lower")
            high = budget.resolve(float(cost(full)[0]))
            self.items.append(Constraint(cost, budget, high, lower * high, margin))

    @property
    def costs(self) -> list[Cost]:
        return [c.cost for c in self.items]

    def evaluate(self, archs: np.ndarray) -> np.ndarray:
        """(n, k) cost values."""
        archs = np.atleast_2d(archs)
        if not self.items:
            return np.zeros((len(archs), 0))
        return np.stack([c.cost(archs) for c in self.items], axis=1)

    def legal(self, archs: np.ndarray) -> np.ndarray:
        values = self.evaluate(archs)
        if not self.items:
            return np.ones(len(values), dtype=bool)
        low = np.array([c.low for c in self.items])
        high = np.array([c.limit for c in self.items])
        return np.all((values >= low) & (values <= high), axis=1)

    def item(self, name: str) -> Constraint | None:
        return next((c for c in self.items if c.cost.name == name), None)

    def check_satisfiable(self, rng: np.random.Generator, samples: int = 20000) -> None:
        """Fail before any search when no arch can meet the budgets, naming the smallest achievable value."""
        space = self.space
        uniform = np.stack([np.full(space.num_vars, c) for c in space.choices])
        probe = np.concatenate([uniform, space.random_archs(rng, samples)])
        values = self.evaluate(probe)
        for k, c in enumerate(self.items):
            smallest = float(values[:, k].min())
            if smallest > c.limit:
                guard = f" less a {100 * c.margin:.1f} % guard band" if c.margin else ""
                raise HwbcnetError(f"--{c.budget.cost} {c.budget.text} is unsatisfiable: the smallest achievable "
                                   f"{c.cost.name} is {_fmt(smallest, c.cost)} (budget {_fmt(c.high, c.cost)}"
                                   f"{guard}); raise the budget" + (" or lower the guard band (--margin, e.g. 2%)"
                                                                 if smallest <= c.high else ""))
        if not self.legal(probe).any():
            ranges = "; ".join(f"{c.cost.name} {_fmt(values[:, k].min(), c.cost)}..{_fmt(values[:, k].max(), c.cost)}"
                               for k, c in enumerate(self.items))
            raise HwbcnetError(f"no arch found inside every budget window ({', '.join(c.describe() for c in self.items)}); "
                               f"sampled ranges: {ranges}; widen a budget or lower --lower")

    def describe(self) -> list[dict]:
        """Per budget: the user's budget (`high`), the window's bottom (`low`) and, with a guard band, `margin` and
        the window's top `limit`."""
        described = []
        for c in self.items:
            entry = {"cost": c.cost.name, "unit": c.cost.unit, "budget": c.budget.text, "high": c.high, "low": c.low}
            if c.margin:
                entry.update(margin=c.margin, limit=c.limit)
            described.append(entry)
        return described
