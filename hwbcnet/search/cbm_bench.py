"""Channel-Bench-Macro benchmark of the search algorithms, with the benchmark's ground-truth accuracy as the oracle.

For each seed, evolution (prior and random initial population) and random search each get the same number of
oracle queries under the same FLOPs window; the pick is the best-scored arch a method queried. Reported per method:
the pick's ground-truth mean accuracy, its rank among all in-budget archs (1 = best), regret against the best
in-budget arch, and wins/ties/losses against random search on the same seed. Without loss records the "prior" is
the FLOPs-only prior (section 5 with E = 0): a per-variable distribution whose expected FLOPs sit in the window.

With a supernet checkpoint trained on CIFAR-10 with a cbm-* model, `supernet_ranking` scores every arch with the
supernet and reports Kendall tau and Spearman rho against the ground truth.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

import numpy as np

from hwbcnet.budgets import parse_budget
from hwbcnet.costs.flops import flops_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.search.constraints import Constraints
from hwbcnet.search.evolution import EvolutionConfig, EvolutionSearch
from hwbcnet.search.prior import fit_prior
from hwbcnet.space.space import build_space

SPACES = {"resnet": "cbm-resnet", "mobilenet": "cbm-mobilenet"}


def load_ground_truth(space_name: str) -> dict:
    """{code: {acc, mean, std, flops, params}} from the packaged benchmark data."""
    if space_name not in SPACES:
        raise HwbcnetError(f"--space {space_name!r}: choose resnet or mobilenet")
    with resources.files("hwbcnet.resources").joinpath(f"cbm/{space_name}.json.gz").open("rb") as handle:
        return json.loads(gzip.decompress(handle.read()))


def _random_search(space, constraints, oracle, queries: int, rng) -> tuple[np.ndarray, float]:
    picked, seen = [], set()
    while len(picked) < queries:
        batch = space.random_archs(rng, 4096)
        for arch in batch[constraints.legal(batch)]:
            key = tuple(arch)
            if key not in seen:
                seen.add(key)
                picked.append(arch)
                if len(picked) == queries:
                    break
    picked = np.array(picked)
    scores = oracle(picked)
    return picked[int(np.argmax(scores))], float(scores.max())


def run_cbm_bench(space_name: str = "resnet", flops: str = "50%", queries: int = 500, seeds: int = 10,
                  lower: float = 0.8, evolution: EvolutionConfig | None = None, progress=None) -> dict:
    gt = load_ground_truth(space_name)
    space = build_space(SPACES[space_name])
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", flops))], lower)
    constraints.check_satisfiable(np.random.default_rng(0))
    all_archs = space.all_archs()
    mean_acc = np.array([gt[space.format_arch(a)]["mean"] for a in all_archs])
    legal = constraints.legal(all_archs)
    legal_acc = np.sort(mean_acc[legal])[::-1]
    best = float(legal_acc[0])
    lookup = {space.format_arch(a): acc for a, acc in zip(all_archs, mean_acc)}

    def oracle(archs):
        return np.array([lookup[space.format_arch(a)] for a in archs])

    def rank(acc: float) -> int:
        return int((legal_acc > acc).sum()) + 1

    config = evolution or EvolutionConfig()
    config = EvolutionConfig(**{**config.__dict__, "max_queries": queries,
                                "generations": max(config.generations, -(-queries // config.population) + 1)})
    prior = fit_prior(space, constraints, [], seed=0)
    picks: dict[str, list[float]] = {"evolution-prior": [], "evolution-random": [], "random": []}
    for seed in range(seeds):
        for method, probs in (("evolution-prior", prior), ("evolution-random", None)):
            outcome = EvolutionSearch(space, constraints, oracle, probs, config, seed=seed).run(resume=False)
            picks[method].append(outcome.best_score)
        _, score = _random_search(space, constraints, oracle, queries, np.random.default_rng(10_000 + seed))
        picks["random"].append(score)
        if progress is not None:
            progress(seed + 1, seeds)
    methods = {}
    for method, accs in picks.items():
        accs_arr = np.array(accs)
        methods[method] = {
            "acc_mean": float(accs_arr.mean()), "acc_std": float(accs_arr.std()),
            "regret_mean": float((best - accs_arr).mean()), "rank_mean": float(np.mean([rank(a) for a in accs])),
            "wins_vs_random": int((accs_arr > np.array(picks["random"])).sum()),
            "ties_vs_random": int((accs_arr == np.array(picks["random"])).sum()),
            "picks": accs,
        }
    return {"space": space_name, "flops_budget": flops, "window": constraints.describe(), "queries": queries,
            "seeds": seeds, "in_budget": int(legal.sum()), "best_in_budget": best, "methods": methods}


def supernet_ranking(checkpoint: str, space_name: str, data: str | None = None, limit: int | None = None,
                     calibration_batches: int = 20, seed: int = 0, progress=None) -> dict:
    """Kendall tau / Spearman rho of a cbm-* supernet's scores against the benchmark's mean accuracy."""
    from scipy.stats import kendalltau, spearmanr

    from hwbcnet.data import load_data
    from hwbcnet.training.checkpoint import recorded_data
    from hwbcnet.training.scoring import EvalData, score_arch
    from hwbcnet.training.trainer import default_device, load_supernet

    supernet, payload = load_supernet(checkpoint)
    if supernet.space.model != SPACES[space_name]:
        raise HwbcnetError(f"{checkpoint} is a {supernet.space.model} supernet, not {SPACES[space_name]}")
    gt = load_ground_truth(space_name)
    space = supernet.space
    archs = space.all_archs()
    if limit is not None:
        archs = archs[np.random.default_rng(seed).permutation(len(archs))[:limit]]
    splits = load_data(data or recorded_data(payload, checkpoint), space.resolution, seed=payload["config"]["seed"])
    device = default_device()
    supernet.to(device)
    eval_data = EvalData.from_splits(splits, calibration_batches=calibration_batches, seed=seed).to(device)
    scores = []
    for i, arch in enumerate(archs):
        scores.append(score_arch(supernet, arch, eval_data)["score"])
        if progress is not None:
            progress(i + 1, len(archs))
    truth = np.array([gt[space.format_arch(a)]["mean"] for a in archs])
    return {"archs": len(archs), "kendall_tau": float(kendalltau(scores, truth)[0]),
            "spearman_rho": float(spearmanr(scores, truth)[0])}
