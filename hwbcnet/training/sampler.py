"""Width draws for supernet training.

Stochastic complementary sampling (BCNet section 3): on even steps every variable draws c_i uniformly and
independently from {m..N}; on odd steps it takes the exact complement B - c_i, so that over each pair of steps every
channel group of every variable is visited equally often (twice, by the left and right paths together).
"""

from __future__ import annotations

import numpy as np
import torch

from hwbcnet.space.space import WidthSpace
from hwbcnet.supernet.principles import Principle


class ComplementarySampler:
    def __init__(self, space: WidthSpace, principle: Principle, seed: int):
        self.space, self.principle = space, principle
        self.generator = torch.Generator().manual_seed(seed)
        self.previous: np.ndarray | None = None

    def uniform(self) -> np.ndarray:
        draw = torch.randint(self.space.min_bins, self.space.bins + 1, (self.space.num_vars,), generator=self.generator)
        return draw.numpy().astype(np.int64)

    def next(self) -> np.ndarray:
        if self.previous is None:
            arch = self.uniform()
            self.previous = arch
        else:
            arch = np.array([self.principle.complement(int(c), self.space.bins, self.space.min_bins) for c in self.previous])
            self.previous = None
        return arch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                "previous": None if self.previous is None else self.previous.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.previous = None if state["previous"] is None else np.array(state["previous"], dtype=np.int64)


class LossRecords:
    """The K lowest path-averaged training losses with their archs (BCNetV2's loss records), feeding the search
    prior. Kept as a plain list so it serialises into the checkpoint without pickling."""

    def __init__(self, capacity: int = 100, records: list | None = None):
        self.capacity = capacity
        self.records: list[tuple[float, list[int]]] = [(float(l), list(map(int, a))) for l, a in (records or [])]

    def add(self, loss: float, arch) -> None:
        if len(self.records) < self.capacity or loss < self.records[-1][0]:
            self.records.append((float(loss), [int(c) for c in arch]))
            self.records.sort(key=lambda r: r[0])
            del self.records[self.capacity:]

    def to_list(self) -> list:
        return [[loss, arch] for loss, arch in self.records]
