import json

import numpy as np
import pytest
import torch

from hwbcnet.budgets import parse_budget
from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.search.cbm_bench import run_cbm_bench
from hwbcnet.search.constraints import Constraints
from hwbcnet.search.evolution import EvolutionConfig, EvolutionSearch
from hwbcnet.search.prior import fit_prior, initial_population, loss_table
from hwbcnet.space import build_space
from search_fakes import Killed, dying


@pytest.mark.parametrize("text,cost,value,fraction", [
    ("10ms", "latency", 10.0, None), ("800us", "latency", 0.8, None), ("1.5s", "latency", 1500.0, None),
    ("50%", "flops", None, 0.5), ("300M", "flops", 3e8, None), ("2.5G", "flops", 2.5e9, None),
    ("2M", "params", 2e6, None), ("1e6", "params", 1e6, None)])
def test_budget_strings(text, cost, value, fraction):
    budget = parse_budget(cost, text)
    assert budget.value == value and budget.fraction == fraction


@pytest.mark.parametrize("cost,text", [("flops", "10ms"), ("latency", "300M"), ("flops", "-5M"), ("flops", "150%"),
                                       ("params", "abc"), ("flops", "0")])
def test_malformed_budgets(cost, text):
    with pytest.raises(HwbcnetError):
        parse_budget(cost, text)


def _cbm_oracle(space):
    from hwbcnet.search.cbm_bench import load_ground_truth

    truth = load_ground_truth("resnet" if space.model == "cbm-resnet" else "mobilenet")
    return lambda archs: np.array([truth[space.format_arch(a)]["mean"] for a in archs])


def test_unsatisfiable_budget_names_the_minimum():
    space = build_space("cbm-resnet")
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", "50M"))])
    with pytest.raises(HwbcnetError, match=r"smallest achievable flops is 90\.\d+M"):
        constraints.check_satisfiable(np.random.default_rng(0))


def test_every_returned_arch_lies_in_every_window():
    space = build_space("cbm-mobilenet")
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", "40%")),
                                      (params_cost(space), parse_budget("params", "1.2M"))])
    outcome = EvolutionSearch(space, constraints, _cbm_oracle(space), None, EvolutionConfig(generations=5), seed=1).run()
    archs = np.array([a for a, _ in outcome.top] + [list(k) for k in outcome.scores])
    values = constraints.evaluate(archs)
    for k, c in enumerate(constraints.items):
        assert (values[:, k] <= c.high).all() and (values[:, k] >= c.low).all()


def test_search_finds_brute_force_best_with_known_fitness():
    """A space small enough to enumerate (4^5) with a known fitness: the search must return the best legal arch."""
    space = build_space("cbm-resnet", bins=4, min_bins=2)  # 3^7 = 2187 archs
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", "60%"))])
    weights = np.random.default_rng(3).normal(size=space.num_vars)
    fitness = lambda archs: archs @ weights  # noqa: E731
    archs = space.all_archs()
    legal = constraints.legal(archs)
    best = archs[legal][np.argmax(fitness(archs[legal]))]
    outcome = EvolutionSearch(space, constraints, fitness, None, EvolutionConfig(generations=30), seed=0).run()
    assert outcome.best.tolist() == best.tolist()


def test_same_seed_same_result_and_resume_equals_uninterrupted(tmp_path):
    space = build_space("cbm-resnet")
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", "50%"))])
    probs = fit_prior(space, constraints, [])
    config = EvolutionConfig(population=20, generations=8, mutations=10, crossovers=10)
    oracle = _cbm_oracle(space)
    a = EvolutionSearch(space, constraints, oracle, probs, config, seed=5).run()
    b = EvolutionSearch(space, constraints, oracle, probs, config, seed=5).run()
    assert a.best.tolist() == b.best.tolist() and a.history == b.history

    state = tmp_path / "search.state.json"
    with pytest.raises(Killed):
        EvolutionSearch(space, constraints, dying(oracle, 4), probs, config, seed=5, state_path=state).run()
    assert json.loads(state.read_text())["generation"] == 3
    resumed = EvolutionSearch(space, constraints, oracle, probs, config, seed=5, state_path=state).run()
    assert resumed.best.tolist() == a.best.tolist()
    assert resumed.history == a.history and resumed.scores == a.scores


def test_prior_reaches_budget_in_expectation_and_population_is_legal():
    space = build_space("resnet20", bins=8, min_bins=2)
    flops = flops_cost(space)
    constraints = Constraints(space, [(flops, parse_budget("flops", "50%"))])
    rng = np.random.default_rng(0)
    records = [(float(rng.random()), space.random_archs(rng, 1)[0].tolist()) for _ in range(100)]
    probs = fit_prior(space, constraints, records)
    expected = float(flops.expectation(torch.as_tensor(probs)))
    assert abs(expected / constraints.items[0].high - 1) <= 0.10
    # the exact expectation agrees with Monte Carlo
    from hwbcnet.search.prior import sample_from_prior

    draws = sample_from_prior(space, probs, rng, 20000)
    assert flops(draws).mean() == pytest.approx(expected, rel=0.01)
    population = initial_population(space, constraints, probs, 50, rng, set())
    assert len(population) == 50 and constraints.legal(population).all()
    assert len({tuple(a) for a in population}) == 50


def test_loss_table_means_per_width():
    space = build_space("cbm-resnet")
    records = [(1.0, [1, 2, 3, 4, 1, 2, 3]), (3.0, [1, 1, 1, 1, 1, 1, 1])]
    table = loss_table(space, records)
    assert table[0, 0] == 2.0  # width 1 of variable 0 seen with losses 1 and 3
    assert table[1, 1] == 1.0 and table[1, 0] == 3.0
    assert table[0, 3] == 3.0  # unseen width: as bad as the worst seen


def test_bench_cbm_evolution_no_worse_than_random():
    result = run_cbm_bench("mobilenet", "50%", queries=200, seeds=3)
    methods = result["methods"]
    assert set(methods) == {"evolution-prior", "evolution-random", "random"}
    for name in ("evolution-prior", "evolution-random"):
        assert methods[name]["regret_mean"] <= methods["random"]["regret_mean"]
        assert methods[name]["rank_mean"] >= 1
    assert result["best_in_budget"] >= max(max(m["picks"]) for m in methods.values())


def test_supernet_ranking_against_channel_bench_macro(tmp_path):
    """`bench cbm --checkpoint`: a cbm-* supernet scores archs and is correlated with the benchmark's accuracy."""
    from hwbcnet.search.cbm_bench import supernet_ranking
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    config = TrainConfig(model="cbm-mobilenet", data="synthetic:200", principle="bcnet", width_mult=1 / 32,
                         resolution=8, epochs=1, batch_size=20, max_steps_per_epoch=2)
    checkpoint = train_supernet(config, tmp_path, progress=False).checkpoint
    result = supernet_ranking(str(checkpoint), "mobilenet", limit=12, calibration_batches=1)
    assert result["archs"] == 12
    assert -1.0 <= result["kendall_tau"] <= 1.0 and -1.0 <= result["spearman_rho"] <= 1.0
    with pytest.raises(HwbcnetError, match="cbm-mobilenet supernet, not cbm-resnet"):
        supernet_ranking(str(checkpoint), "resnet", limit=2)
