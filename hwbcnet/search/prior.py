"""Prior initial population (BCNet section 5, with the spec's fixes).

E[i, w] is the mean recorded training loss of the kept (lowest-loss) records in which variable i had width w
(unseen widths get the largest observed loss). Each variable gets a categorical distribution p_i = softmax(theta_i)
over {m..N}, fitted to minimise  mean_i sum_w p_i(w) E[i,w] + lambda * sum_costs (1 - E_p[cost] / target)^2,
where E_p[cost] is the *exact* expectation of each budgeted cost that can provide one (`cost.expectation`: FLOPs and
params are quadratic forms in independent channel counts, LUT latency a sum of per-layer cell tables) and the target
sits a quarter window below the window's top (0.95 x budget for the default window [0.8, 1] x budget; the top is the
budget less its guard band, if any), with no 0.4x fudge factor: draws then land mostly inside the window.
"""

from __future__ import annotations

import numpy as np
import torch

from hwbcnet.search.constraints import Constraints
from hwbcnet.space.space import WidthSpace


def loss_table(space: WidthSpace, records: list) -> np.ndarray:
    """(V, K) mean loss per variable and width choice; K = N - m + 1."""
    choices = np.array(space.choices)
    total = np.zeros((space.num_vars, len(choices)))
    count = np.zeros_like(total)
    for loss, arch in records:
        columns = np.asarray(arch) - space.min_bins
        total[np.arange(space.num_vars), columns] += loss
        count[np.arange(space.num_vars), columns] += 1
    seen = count > 0
    means = total / np.maximum(count, 1)
    worst = means[seen].max() if seen.any() else 0.0  # an unseen width is taken as bad as the worst seen one
    return np.where(seen, means, worst)


def fit_prior(space: WidthSpace, constraints: Constraints, records: list, steps: int = 600, lam: float = 100.0,
              seed: int = 0) -> np.ndarray:
    """(V, K) probabilities over widths m..N."""
    generator = torch.Generator().manual_seed(seed)
    E = torch.as_tensor(loss_table(space, records) if records else np.zeros((space.num_vars, len(space.choices))))
    E = E / E.abs().max().clamp(min=1e-12)  # scale-free, so lambda means the same for every model
    theta = (0.01 * torch.randn(E.shape, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = [(c.cost, c.limit - 0.25 * (c.limit - c.low)) for c in constraints.items if hasattr(c.cost, "expectation")]
    optimizer = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        probs = theta.softmax(1)
        objective = (probs * E).sum(1).mean()
        for cost, target in targets:
            objective = objective + lam * (1 - cost.expectation(probs) / target) ** 2
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
    return theta.detach().softmax(1).numpy()


def sample_from_prior(space: WidthSpace, probs: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    cumulative = probs.cumsum(1)
    u = rng.random((n, space.num_vars, 1))
    columns = (u > cumulative[None]).sum(2)
    return np.minimum(columns, probs.shape[1] - 1) + space.min_bins


def initial_population(space: WidthSpace, constraints: Constraints, probs: np.ndarray | None, size: int,
                       rng: np.random.Generator, seen: set, max_draws: int = 200_000) -> np.ndarray:
    """`size` distinct legal archs drawn from the prior (uniformly when `probs` is None)."""
    population: list[np.ndarray] = []
    drawn = 0
    while len(population) < size and drawn < max_draws:
        batch = (sample_from_prior(space, probs, rng, 1024) if probs is not None else space.random_archs(rng, 1024))
        drawn += len(batch)
        for arch in batch[constraints.legal(batch)]:
            key = tuple(int(c) for c in arch)
            if key not in seen:
                seen.add(key)
                population.append(arch)
                if len(population) == size:
                    break
    return np.array(population, dtype=np.int64).reshape(-1, space.num_vars)
