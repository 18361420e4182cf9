"""Channel-Bench-Macro benchmark of the search algorithms, with the benchmark's ground-truth accuracy as the oracle.

For each seed, evolution (prior and random initial population) and random search each get the same number of
oracle queries under the same FLOPs window; the pick is the best-scored arch a method queried. Reported per method:
the pick's ground-truth mean accuracy, its rank among all in-budget archs (1 = best), regret against the best
in-budget arch, and wins/ties/losses against random search on the same seed. Without loss records the "prior" is
the FLOPs-only prior (section 5 with E = 0): a per-variable distribution whose expected FLOPs sit in the window.

`run_cbm_latency_bench` is the latency-constrained version: the budget is a latency on a device, predicted by the
device's calibrated LUT of the cbm model, and every pick is measured end to end on the device (see its docstring).

With a supernet checkpoint trained on CIFAR-10 with a cbm-* model, `supernet_ranking` scores every arch with the
supernet and reports Kendall tau and Spearman rho against the ground truth.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

import numpy as np

from hwbcnet.budgets import Budget, parse_budget
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
    """The best of `queries` distinct archs drawn uniformly from the window, or of all of them when it holds fewer
    (a narrow latency window after a noisy calibration can)."""
    queries = min(queries, int(constraints.legal(space.all_archs()).sum()))
    if queries == 0:
        raise HwbcnetError("random search: no arch of the space lies in the window")
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


HIT_LOW = 0.9  # a pick hits its budget B when it measures within [0.9 B, B]


def _widest_uniform(space, cost, high: float) -> np.ndarray | None:
    """The widest arch with every variable at the same width whose predicted cost is within `high`."""
    for width in reversed(space.choices):
        arch = np.full(space.num_vars, width, dtype=np.int64)
        if cost(arch[None])[0] <= high:
            return arch
    return None


LOOP_METHOD = "lut-evolution-prior, --verify loop"


def oracle_latency_loop(space, device: str, lut_file, budget_ms: float, lower: float, margin, scores: dict, oracle,
                        config: EvolutionConfig, seed: int, backend=None, progress: bool = False) -> dict:
    """What `hwbcnet search --verify` adds to a search with the ground truth as fitness: the evaluated archs
    (`scores`) go through the latency loop (measure the pick; on a miss refit `lut_file` and correct the prediction,
    re-rank, search again with seed + 1). The budget stays `budget_ms`: a percentage would be re-resolved against
    each refit. Returns close_latency_loop's record."""
    from hwbcnet.hardware.profiles import load_profile
    from hwbcnet.search.latency_loop import LoopConfig, close_latency_loop
    from hwbcnet.search.runner import build_constraints

    budget = Budget("latency", value=budget_ms, text=f"{budget_ms:.3f}ms")

    def make_constraints() -> Constraints:
        return build_constraints(space, latency=budget, device=device, lut_path=lut_file, lower=lower,
                                 margin=margin)[0]

    def research(constraints, known):
        again = EvolutionSearch(space, constraints, oracle, fit_prior(space, constraints, [], seed=seed + 1),
                                config, seed=seed + 1).run(resume=False)
        return sorted((k for k in again.scores if k not in known), key=lambda k: (-again.scores[k], k))

    ranked = sorted(scores, key=lambda key: (-scores[key], key))
    return close_latency_loop(space, load_profile(device), lut_file, ranked, make_constraints, research, LoopConfig(),
                              backend=backend, progress=progress)


def _through_the_loop(space, device, lut_file, budget_ms, lower, margin, scores, oracle, config, seed,
                      backend) -> tuple:
    """The loop's accepted arch, on a copy of the LUT so that every seed starts from the same calibration."""
    import shutil
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        lut_copy = Path(folder) / "lut.json"
        shutil.copy(lut_file, lut_copy)
        loop = oracle_latency_loop(space, device, lut_copy, budget_ms, lower, margin, scores, oracle, config, seed,
                                   backend)
    return tuple(int(c) for c in loop["arch"])


def run_cbm_latency_bench(space_name: str = "resnet", latency: str = "50%", device: str = "cpu",
                          lut_path: str | None = None, queries: int = 500, seeds: int = 5, lower: float = HIT_LOW,
                          margin: str | float = "auto", repeats: int = 5, candidates: int = 10,
                          evolution: EvolutionConfig | None = None, backend=None, progress: bool = True) -> dict:
    """Channel-Bench-Macro under a latency budget on a device, with the benchmark's accuracy as the oracle.

    The budget B resolves against the LUT-predicted latency of the full arch. Methods, each with `queries` oracle
    queries per seed: evolution under the LUT latency window [lower x B, (1 - margin) x B] from the latency prior,
    the same from uniform draws, the same with the predictor screen (4x children), the same without the guard band,
    evolution under a FLOPs window of the same fraction of the full model's FLOPs (a user without a LUT), random
    search in the LUT window, the widest uniform width predicted within B (one pick), and the LUT-guided search's
    evaluated archs through the latency loop of `--verify` (its accepted pick). Every distinct pick is then
    built standalone, exported to ONNX and timed on the device, `repeats` interleaved rounds, median, together with
    the best candidates for the window's ground-truth optimum: the `candidates` most accurate archs whose predicted
    latency lies within 5 % of [0.9 B, B]; the confirmed optimum is the most accurate of them that measures inside
    [0.9 B, B]. Per pick: GT accuracy, measured / B, hit (measured in [0.9 B, B]) and regret against that optimum.
    A few of the LUT's calibration subnets are measured in the same rounds: their measured / predicted ratio is the
    drift of the machine since the calibration."""
    from hwbcnet.costs.calibration import anchor_archs, measure_archs
    from hwbcnet.costs.latency import latency_cost_for
    from hwbcnet.hardware.profiles import load_profile
    from hwbcnet.search.runner import parse_margin

    if repeats < 1 or candidates < 1 or seeds < 1 or queries < 1:
        raise HwbcnetError("--repeats, --candidates, --seeds and --queries must be at least 1")
    gt = load_ground_truth(space_name)
    space = build_space(SPACES[space_name])
    profile = load_profile(device)
    cost = latency_cost_for(space, device, lut_path)
    if not cost.calibrated:
        raise HwbcnetError(f"{cost.lut.path} has no calibration; run `hwbcnet lut calibrate --device {device} "
                           f"--model {space.model}` first (the bench compares predictions with measurements)")
    budget = parse_budget("latency", latency)
    full_ms = float(cost(space.full_arch()[None])[0])
    high = budget.resolve(full_ms)
    guard = parse_margin(margin, cost)
    lut_window = Constraints(space, [(cost, budget)], lower, {"latency": guard})
    lut_window.check_satisfiable(np.random.default_rng(0))
    no_guard = Constraints(space, [(cost, budget)], lower)
    fraction = high / full_ms
    flops_window = Constraints(space, [(flops_cost(space), Budget("flops", fraction=min(fraction, 1.0),
                                                                  text=f"{100 * fraction:.1f}%"))], lower)

    all_archs = space.all_archs()
    mean_acc = np.array([gt[space.format_arch(a)]["mean"] for a in all_archs])
    predicted_all = cost(all_archs)
    lookup = {tuple(a): acc for a, acc in zip(all_archs.tolist(), mean_acc)}

    def oracle(archs):
        return np.array([lookup[tuple(a)] for a in np.asarray(archs).tolist()])

    config = evolution or EvolutionConfig()
    config = EvolutionConfig(**{**config.__dict__, "max_queries": queries,
                                "generations": max(config.generations, -(-queries // config.population) + 1)})
    screened = EvolutionConfig(**{**config.__dict__, "screen": 4})
    lut_prior = fit_prior(space, lut_window, [], seed=0)
    methods = {  # name -> (constraints, prior, config) for the evolution methods
        "lut-evolution-prior": (lut_window, lut_prior, config),
        "lut-evolution-random": (lut_window, None, config),
        "lut-evolution-prior+predictor": (lut_window, lut_prior, screened),
        "lut-evolution-prior, no guard band": (no_guard, fit_prior(space, no_guard, [], seed=0), config),
        "flops-evolution-prior": (flops_window, fit_prior(space, flops_window, [], seed=0), config),
    }
    picks: dict[str, list[tuple]] = {name: [] for name in [*methods, LOOP_METHOD, "lut-random", "uniform"]}
    for seed in range(seeds):
        for name, (constraints, probs, cfg) in methods.items():
            outcome = EvolutionSearch(space, constraints, oracle, probs, cfg, seed=seed).run(resume=False)
            picks[name].append(tuple(int(c) for c in outcome.best))
            if name == "lut-evolution-prior":
                picks[LOOP_METHOD].append(_through_the_loop(space, device, cost.lut.path, high, lower, margin,
                                                            outcome.scores, oracle, config, seed, backend))
        arch, _ = _random_search(space, lut_window, oracle, queries, np.random.default_rng(10_000 + seed))
        picks["lut-random"].append(tuple(int(c) for c in arch))
    uniform = _widest_uniform(space, cost, high)
    if uniform is not None:
        picks["uniform"] = [tuple(int(c) for c in uniform)] * seeds
    else:
        picks.pop("uniform")

    # the window's optimum: the most accurate archs predicted near [0.9 B, B], confirmed by measuring them
    near = (predicted_all >= 0.95 * HIT_LOW * high) & (predicted_all <= 1.05 * high)
    order = np.flatnonzero(near)[np.argsort(-mean_acc[near], kind="stable")][:candidates]
    candidate_keys = [tuple(int(c) for c in all_archs[i]) for i in order]
    in_window_predicted = (predicted_all >= HIT_LOW * high) & (predicted_all <= high)
    anchors = [tuple(int(c) for c in a) for a in anchor_archs(space, cost.lut, 6)]
    to_measure = list(dict.fromkeys([key for keys in picks.values() for key in keys] + candidate_keys + anchors))
    times = measure_archs(space, profile, np.array(to_measure, dtype=np.int64), repeats=repeats, backend=backend,
                          progress=progress)
    measured = dict(zip(to_measure, np.median(times, axis=1).tolist()))
    predicted = dict(zip(to_measure, cost(np.array(to_measure, dtype=np.int64)).tolist()))
    confirmed = [key for key in candidate_keys if HIT_LOW * high <= measured[key] <= high]
    best_key = max(confirmed, key=lambda key: (lookup[key], key)) if confirmed else None
    best = lookup[best_key] if best_key is not None else float(mean_acc[in_window_predicted].max())

    results = {}
    for name, keys in picks.items():
        rows = [{"seed": seed, "arch": space.format_arch(key), "acc": float(lookup[key]),
                 "predicted_ms": predicted[key], "measured_ms": measured[key], "ratio": measured[key] / high,
                 "hit": bool(HIT_LOW * high <= measured[key] <= high), "within_budget": bool(measured[key] <= high),
                 "regret": float(best - lookup[key])} for seed, key in enumerate(keys)]
        accs = np.array([r["acc"] for r in rows])
        ratios = np.array([r["ratio"] for r in rows])
        within = np.array([r["within_budget"] for r in rows])
        results[name] = {
            "acc_mean": float(accs.mean()), "acc_std": float(accs.std()),
            "ratio_mean": float(ratios.mean()), "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
            "hit_rate": float(np.mean([r["hit"] for r in rows])), "within_rate": float(within.mean()),
            "acc_within_mean": float(accs[within].mean()) if within.any() else None,
            "regret_mean": float(np.mean([r["regret"] for r in rows])),
            "distinct_picks": len(set(keys)), "picks": rows,
        }
    anchor_ratio = [measured[key] / predicted[key] for key in anchors]
    return {
        "space": space_name, "model": space.model, "device": profile.name, "lut": str(cost.lut.path),
        "latency_budget": latency, "budget_ms": high, "full_predicted_ms": full_ms, "lower": lower,
        "margin": guard, "flops_fraction": fraction, "queries": queries, "seeds": seeds, "repeats": repeats,
        "calibration": {"a_ms": cost.a, "b": cost.b, "date": cost.lut.calibration.get("date")},
        "in_window_predicted": int(in_window_predicted.sum()),
        "best_in_window": {"acc": best, "arch": space.format_arch(best_key) if best_key else None,
                           "confirmed": best_key is not None, "measured_ms": measured.get(best_key),
                           "lut_only_acc": float(mean_acc[in_window_predicted].max()) if in_window_predicted.any()
                           else None,
                           "candidates": [{"arch": space.format_arch(k), "acc": float(lookup[k]),
                                           "predicted_ms": predicted[k], "measured_ms": measured[k]}
                                          for k in candidate_keys]},
        "drift": {"anchors": [space.format_arch(k) for k in anchors],
                  "measured_over_predicted_median": float(np.median(anchor_ratio))},
        "methods": results,
    }


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
