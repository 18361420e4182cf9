"""The accuracy-predictor screen of the evolution (OFA's seam), with Channel-Bench-Macro's ground truth or a known
fitness as the oracle."""

import numpy as np
import pytest

from hwbcnet.budgets import parse_budget
from hwbcnet.costs.flops import flops_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.search.cbm_bench import load_ground_truth
from hwbcnet.search.constraints import Constraints
from hwbcnet.search.evolution import EvolutionConfig, EvolutionSearch
from hwbcnet.search.predictor import AdditiveRidgePredictor
from hwbcnet.search.prior import fit_prior
from hwbcnet.space import build_space
from search_fakes import Killed, dying


def test_additive_predictor_recovers_an_additive_fitness():
    space = build_space("cbm-resnet")
    effects = np.random.default_rng(0).normal(size=(space.num_vars, len(space.choices)))

    def fitness(archs):
        return effects[np.arange(space.num_vars), archs - space.min_bins].sum(1)

    train = space.random_archs(np.random.default_rng(1), 200)
    predictor = AdditiveRidgePredictor(space, alpha=1e-6).fit(train, fitness(train))
    test = space.random_archs(np.random.default_rng(2), 500)
    assert predictor.predict(test) == pytest.approx(fitness(test), abs=1e-4)
    # a width never seen in the scores gets no effect (the ridge penalty): the screen invents no preference for it
    only_low = np.full((20, space.num_vars), space.min_bins)
    only_low[:, 0] = np.arange(20) % 2 + space.min_bins
    unseen = AdditiveRidgePredictor(space).fit(only_low, np.arange(20.0))
    assert unseen.coef[space.bins - space.min_bins] == 0.0
    probe = only_low[:1].copy()
    with pytest.raises(HwbcnetError):
        AdditiveRidgePredictor(space).predict(probe)


def _cbm(space_name="mobilenet", flops="50%"):
    space = build_space(f"cbm-{space_name}")
    truth = load_ground_truth(space_name)
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", flops))])
    all_archs = space.all_archs()
    accuracy = {tuple(a): truth[space.format_arch(a)]["mean"] for a in all_archs.tolist()}
    best = max(v for k, v in accuracy.items() if constraints.legal(np.array([k]))[0])
    return space, constraints, (lambda archs: np.array([accuracy[tuple(a)] for a in np.asarray(archs).tolist()])), best


def test_screened_evolution_spends_the_same_queries_better():
    """At equal oracle queries the screen lowers the mean regret on CBM (fixed seeds: deterministic)."""
    space, constraints, oracle, best = _cbm()
    prior = fit_prior(space, constraints, [], seed=0)
    regrets = {}
    for screen in (1, 4):
        config = EvolutionConfig(max_queries=200, generations=6, screen=screen)
        outcomes = [EvolutionSearch(space, constraints, oracle, prior, config, seed=s).run() for s in range(8)]
        assert all(o.queries == 200 for o in outcomes)
        regrets[screen] = np.mean([best - o.best_score for o in outcomes])
    assert regrets[4] < regrets[1]


def test_screened_children_are_legal_unseen_and_resume_exactly(tmp_path):
    space, constraints, oracle, _ = _cbm("resnet", "40%")
    config = EvolutionConfig(population=20, generations=6, mutations=10, crossovers=10, screen=3)
    whole = EvolutionSearch(space, constraints, oracle, None, config, seed=4).run()
    assert whole.queries == len(whole.scores) == 20 * 6
    assert constraints.legal(np.array(list(whole.scores))).all()

    state = tmp_path / "state.json"
    with pytest.raises(Killed):
        EvolutionSearch(space, constraints, dying(oracle, 4), None, config, seed=4, state_path=state).run()
    resumed = EvolutionSearch(space, constraints, oracle, None, config, seed=4, state_path=state).run()
    assert resumed.best.tolist() == whole.best.tolist() and resumed.history == whole.history
    with pytest.raises(HwbcnetError, match="--screen 0"):
        EvolutionSearch(space, constraints, oracle, None, EvolutionConfig(screen=0))
