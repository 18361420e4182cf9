"""Evolutionary width search (BCNetV2 defaults): population 50, 40 generations, top-10 elitist archive, 25 mutations
(each gene resampled with p=0.1 from the prior, mixed 80/20 with uniform so no width is unreachable) and 25 uniform
crossovers per generation; illegal or already-seen
children are rejected and redrawn. Fitness is any callable over a batch of archs (the supernet's BC score, or a
benchmark's ground truth), cached per arch. The state is saved after every generation, so a killed search resumes
and ends exactly where an uninterrupted one would.

With `screen` = k > 1, each generation draws k times as many legal children as it will score, an accuracy
predictor fitted on every score so far (hwbcnet/search/predictor.py) ranks them, and only the predicted best
`mutations` + `crossovers` reach the fitness: the same number of fitness queries, spent on likelier children.
Children the screen drops are not marked as seen, so a later generation may still draw and score them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import atomic_write_json, read_json
from hwbcnet.search.constraints import Constraints
from hwbcnet.search.predictor import AccuracyPredictor, AdditiveRidgePredictor
from hwbcnet.search.prior import initial_population, sample_from_prior
from hwbcnet.space.space import WidthSpace

STATE_KIND = "hwbcnet.search-state"
STATE_VERSION = 1


@dataclass
class EvolutionConfig:
    population: int = 50
    generations: int = 40
    top_k: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1
    mutation_uniform: float = 0.2  # share of mutated genes drawn uniformly instead of from the prior (exploration)
    tries_factor: int = 10  # at most tries_factor x mutations (crossovers) attempts per generation
    max_queries: int | None = None  # stop after this many distinct fitness evaluations
    screen: int = 1  # > 1: draw screen x the children, score only the predicted best (accuracy predictor)

    def __post_init__(self) -> None:
        # a search with no generation or an empty archive has no result to return
        if min(self.population, self.generations, self.top_k) < 1 or min(self.mutations, self.crossovers) < 0:
            raise HwbcnetError(f"evolution: population {self.population}, generations {self.generations} and top-k "
                               f"{self.top_k} must be >= 1, mutations {self.mutations} and crossovers "
                               f"{self.crossovers} >= 0")

    @classmethod
    def of_population(cls, population: int, **options) -> "EvolutionConfig":
        """A generation of `population` children, half mutations and half crossovers (BCNetV2's split)."""
        return cls(population=population, mutations=population // 2, crossovers=population - population // 2,
                   **options)


@dataclass
class SearchOutcome:
    best: np.ndarray
    best_score: float
    top: list[tuple[np.ndarray, float]]
    history: list[dict] = field(default_factory=list)
    queries: int = 0
    scores: dict = field(default_factory=dict)  # arch tuple -> score, every evaluated arch


Fitness = Callable[[np.ndarray], np.ndarray]


class EvolutionSearch:
    def __init__(self, space: WidthSpace, constraints: Constraints, fitness: Fitness, probs: np.ndarray | None,
                 config: EvolutionConfig = EvolutionConfig(), seed: int = 0, state_path: str | Path | None = None,
                 on_evaluated: Callable[[int, int], None] | None = None, predictor: AccuracyPredictor | None = None):
        if config.screen < 1:
            raise HwbcnetError(f"--screen {config.screen}: must be at least 1 (1 = no accuracy predictor)")
        self.space, self.constraints, self.fitness = space, constraints, fitness
        self.predictor = predictor if predictor is not None else AdditiveRidgePredictor(space)
        self.probs, self.config, self.seed = probs, config, seed
        self.state_path = Path(state_path) if state_path else None
        self.on_evaluated = on_evaluated  # (evaluated so far, planned) for progress bars
        self.rng = np.random.default_rng(seed)
        self.cache: dict[tuple, float] = {}
        self.seen: set[tuple] = set()
        self.population = np.zeros((0, space.num_vars), dtype=np.int64)
        self.top: list[tuple[tuple, float]] = []
        self.generation = 0
        self.history: list[dict] = []

    # -- state -------------------------------------------------------------------------------------------------
    def _signature(self) -> dict:
        return {"space": self.space.fingerprint(), "seed": self.seed, "config": asdict(self.config),
                "constraints": self.constraints.describe(),
                "prior": None if self.probs is None else np.round(self.probs, 12).tolist()}

    def save_state(self) -> None:
        if self.state_path is None:
            return
        atomic_write_json(self.state_path, {
            "kind": STATE_KIND, "schema_version": STATE_VERSION, "signature": self._signature(),
            "generation": self.generation, "rng": self.rng.bit_generator.state,
            "population": self.population.tolist(), "top": [[list(a), s] for a, s in self.top],
            "seen": [list(a) for a in sorted(self.seen)], "cache": [[list(a), s] for a, s in self.cache.items()],
            "history": self.history})

    def load_state(self) -> bool:
        if self.state_path is None or not self.state_path.exists():
            return False
        state = read_json(self.state_path, kind=STATE_KIND, schema_version=STATE_VERSION)
        if state["signature"] != self._signature():
            raise HwbcnetError(f"{self.state_path}: belongs to a search with other settings; delete it or use the same "
                               "options to resume")
        self.generation = state["generation"]
        self.rng.bit_generator.state = state["rng"]
        self.population = np.array(state["population"], dtype=np.int64).reshape(-1, self.space.num_vars)
        self.top = [(tuple(a), float(s)) for a, s in state["top"]]
        self.seen = {tuple(a) for a in state["seen"]}
        self.cache = {tuple(a): float(s) for a, s in state["cache"]}
        self.history = state["history"]
        return True

    # -- operators ---------------------------------------------------------------------------------------------
    def _draw(self, n: int, uniform_share: float = 0.0) -> np.ndarray:
        if self.probs is None:
            return self.space.random_archs(self.rng, n)
        probs = (1 - uniform_share) * self.probs + uniform_share / self.probs.shape[1]
        return sample_from_prior(self.space, probs, self.rng, n)

    def _accept(self, child: np.ndarray, pending: set | None = None) -> bool:
        """Whether `child` is a legal arch not drawn before. Rejected candidates are never retried. With `pending`
        (a screened generation), a legal child is only reserved there: the caller marks the ones it keeps as seen."""
        key = tuple(int(c) for c in child)
        if key in self.seen or (pending is not None and key in pending):
            return False
        legal = bool(self.constraints.legal(child[None])[0])
        if pending is not None and legal:
            pending.add(key)
        else:
            self.seen.add(key)
        return legal

    def _mutate(self, count: int, pending: set | None = None) -> list[np.ndarray]:
        children, cfg = [], self.config
        for _ in range(cfg.tries_factor * count):
            if len(children) == count:
                break
            parent = np.array(self.top[self.rng.integers(len(self.top))][0])
            resample = self.rng.random(self.space.num_vars) < cfg.mutation_prob
            # a prior that is sharp for some variable would make widths it disfavours unreachable by mutation alone
            child = np.where(resample, self._draw(1, self.config.mutation_uniform)[0], parent)
            if self._accept(child, pending):
                children.append(child)
        return children

    def _crossover(self, count: int, pending: set | None = None) -> list[np.ndarray]:
        children, cfg = [], self.config
        for _ in range(cfg.tries_factor * count):
            if len(children) == count:
                break
            a, b = (np.array(self.top[i][0]) for i in self.rng.integers(len(self.top), size=2))
            child = np.where(self.rng.random(self.space.num_vars) < 0.5, a, b)
            if self._accept(child, pending):
                children.append(child)
        return children

    def _children(self) -> list[np.ndarray]:
        cfg = self.config
        if cfg.screen == 1:
            return self._mutate(cfg.mutations) + self._crossover(cfg.crossovers)
        pending: set = set()
        mutated = self._mutate(cfg.screen * cfg.mutations, pending)
        crossed = self._crossover(cfg.screen * cfg.crossovers, pending)
        known = sorted(self.cache)  # sorted: the fit does not depend on the order archs were scored in
        self.predictor.fit(np.array(known), np.array([self.cache[k] for k in known]))
        kept = []
        for candidates, count in ((mutated, cfg.mutations), (crossed, cfg.crossovers)):
            if candidates:
                predicted = self.predictor.predict(np.array(candidates))
                order = np.argsort(-predicted, kind="stable")[:count]
                kept += [candidates[i] for i in order]
        for child in kept:
            self.seen.add(tuple(int(c) for c in child))
        return kept

    def _evaluate(self, archs: np.ndarray) -> list[float]:
        keys = [tuple(int(c) for c in a) for a in archs]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if self.config.max_queries is not None:
            todo = todo[: max(0, self.config.max_queries - len(self.cache))]
        if todo:
            scores = self.fitness(archs[todo])
            for i, score in zip(todo, scores):
                self.cache[keys[i]] = float(score)
        if self.on_evaluated:
            self.on_evaluated(len(self.cache), self.planned_queries)
        return [self.cache[k] for k in keys if k in self.cache]

    @property
    def planned_queries(self) -> int:
        planned = self.config.population * self.config.generations
        return min(planned, self.config.max_queries) if self.config.max_queries else planned

    def _budget_left(self) -> bool:
        return self.config.max_queries is None or len(self.cache) < self.config.max_queries

    # -- main loop ---------------------------------------------------------------------------------------------
    def run(self, initial: np.ndarray | None = None, resume: bool = True) -> SearchOutcome:
        cfg = self.config
        if not (resume and self.load_state()):
            self.population = initial if initial is not None else initial_population(
                self.space, self.constraints, self.probs, cfg.population, self.rng, self.seen)
            for arch in self.population:
                self.seen.add(tuple(int(c) for c in arch))
        while self.generation < cfg.generations and self._budget_left():
            refill = initial_population(self.space, self.constraints, self.probs,
                                        cfg.population - len(self.population), self.rng, self.seen)
            self.population = np.concatenate([self.population, refill]).astype(np.int64)
            if len(self.population) == 0:
                if self.top:  # every legal arch it could reach has been evaluated: nothing left to learn
                    break
                raise HwbcnetError("the search found no legal arch to evaluate; widen the budgets")
            self._evaluate(self.population)
            keys = {tuple(int(c) for c in a) for a in self.population} | {a for a, _ in self.top}
            ranked = sorted((k for k in keys if k in self.cache), key=lambda k: (-self.cache[k], k))
            self.top = [(k, self.cache[k]) for k in ranked[: cfg.top_k]]
            self.history.append({"generation": self.generation, "best": self.top[0][1],
                                 "mean_top": float(np.mean([s for _, s in self.top])), "queries": len(self.cache)})
            children = self._children()
            self.population = np.array(children, dtype=np.int64).reshape(-1, self.space.num_vars)
            self.generation += 1
            self.save_state()
        best, best_score = self.top[0]
        return SearchOutcome(np.array(best), best_score, [(np.array(a), s) for a, s in self.top], self.history,
                             len(self.cache), dict(self.cache))
