"""`hwbcnet search`: score archs with a trained supernet under budgets and write DIR/search.json.

Scoring is where a search spends its time (BN recalibration, then validation accuracy, per path; see
hwbcnet/training/scoring.py). The search scores candidates with `calibration_batches` BN batches; when that is
fewer than `final_calibration_batches`, it re-scores the `rescore` archs with the best search scores (at least its
top-k) with the latter and chooses among them by that score. By default both are 20 batches (every training image
of digits): fewer batches rank archs wrongly (hwbcnet/search/defaults.py). With `screen` > 1 an accuracy predictor
picks which children deserve a supernet query at all.

search.json (kind "hwbcnet.search", schema_version 1):
    arch        the chosen arch (model, bins, min_bins, code, widths per variable, channels per variable)
    score       its BC score (left/right validation accuracy average after per-path BN recalibration; left for ua)
                at the final scorer's fidelity, with `paths` holding each path's accuracy
    costs       its flops, params (and latency_ms when a device was given)
    budgets     [{cost, unit, budget, low, high[, margin, limit]}], `lower` the window's lower fraction; a latency
                budget's guard band `margin` puts the window's top at `limit` = (1 - margin) x high
    space       the width space; `checkpoint` {path, sha256} of the supernet; `data`, `device`, `lut`
    top         the best top-k of the re-scored archs [{code, score, search_score, costs}] (score: final
                fidelity, search_score: the search's); `history` per generation; `seed`, `init`, `evolution`
    scoring     {bn_images, final_bn_images, val_images, threads, queries_this_run, search_seconds, rescored,
                rescore_seconds, seconds, archs_per_s}: the scorer's fidelity and where this run's time went
    verification  with --verify: {status "met" | "unmet", rounds [{arch, predicted_ms (corrected near the archs
                measured before), lut_predicted_ms, measured_ms, budget_ms, accept_ms, status "within" | "edge"
                | "over" | "under", ...}], message}; `arch` is then the pick that measured inside the window
The evolution state is kept next to it (search.state.json) so a killed search resumes.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hwbcnet.budgets import Budget, parse_budget, read_margin
from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import NUMBER, atomic_write_json, check_fields, file_sha256, read_json
from hwbcnet.search.constraints import Constraints
from hwbcnet.search.defaults import (DEFAULT_BN_BATCHES, DEFAULT_GENERATIONS, DEFAULT_POPULATION, DEFAULT_SCREEN,
                                     FINAL_BN_BATCHES, FINAL_RESCORE)
from hwbcnet.search.evolution import EvolutionConfig, EvolutionSearch
from hwbcnet.search.latency_loop import LoopConfig, close_latency_loop
from hwbcnet.search.prior import fit_prior

KIND = "hwbcnet.search"
SCHEMA_VERSION = 1
_FIELDS = {"arch": dict, "checkpoint": dict, "data": str}  # what extraction needs
_OPTIONAL = {"score": NUMBER, "paths": dict, "costs": dict, "budgets": list, "top": list}


def parse_margin(text: str | float | None, latency_cost=None) -> float:
    """The latency guard band as a fraction: `auto` (from the LUT calibration's residuals, see
    hwbcnet.costs.calibration.prediction_margin), a percentage such as `3%`, or 0."""
    from hwbcnet.costs.calibration import prediction_margin

    if text is None:
        return 0.0
    try:
        value = read_margin(str(text))
    except ValueError as exc:
        raise HwbcnetError(f"--margin {text!r}: {exc}") from None
    if value is None:
        return prediction_margin(latency_cost.lut.calibration) if latency_cost is not None else 0.0
    return value


def build_constraints(space, *, flops=None, params=None, latency=None, device=None, lut_path=None, lower=0.8,
                      margin: str | float | None = "auto"):
    """Costs for every budget given (a budget string, or a parsed Budget); FLOPs and params are always reported,
    latency when a device is given. `margin` is the latency budget's guard band (ignored without a latency
    budget)."""
    costs = {"flops": flops_cost(space), "params": params_cost(space)}
    if device is not None:
        from hwbcnet.costs.latency import latency_cost_for

        costs["latency"] = latency_cost_for(space, device, lut_path)
    elif latency is not None:
        raise HwbcnetError("--latency needs --device (the LUT's device profile, e.g. --device cpu)")
    pairs = [(costs[name], text if isinstance(text, Budget) else parse_budget(name, text)) for name, text in
             (("flops", flops), ("params", params), ("latency", latency)) if text is not None]
    if not pairs:
        raise HwbcnetError("give at least one budget: --flops, --params or --latency")
    margins = {"latency": parse_margin(margin, costs.get("latency"))} if latency is not None else {}
    return Constraints(space, pairs, lower, margins), costs


def supernet_fitness(supernet, eval_data, reduce=None, details: dict | None = None):
    from hwbcnet.training.scoring import score_arch

    def fitness(archs: np.ndarray) -> np.ndarray:
        scores = []
        for arch in archs:
            result = score_arch(supernet, arch, eval_data, reduce)
            if details is not None:
                details[tuple(int(c) for c in arch)] = result
            scores.append(result["score"])
        return np.array(scores)

    return fitness


def cached(fitness, known: dict):
    """`fitness` that looks archs up in `known` first (a re-search reuses every score it already has)."""
    def lookup(archs: np.ndarray) -> np.ndarray:
        keys = [tuple(int(c) for c in arch) for arch in archs]
        todo = [key for key in keys if key not in known]
        if todo:
            known.update(zip(todo, fitness(np.array(todo, dtype=np.int64)).tolist()))
        return np.array([known[key] for key in keys])

    return lookup


def run_search(checkpoint: str | Path, out: str | Path, *, flops=None, params=None, latency=None, device=None,
               lut_path=None, lower: float = 0.8, margin: str | float | None = "auto", init: str = "prior",
               evolution: EvolutionConfig | None = None, seed: int = 0, data: str | None = None,
               calibration_batches: int = DEFAULT_BN_BATCHES, final_calibration_batches: int | None = FINAL_BN_BATCHES,
               rescore: int = FINAL_RESCORE, threads: int | None = None, verify: bool = False,
               loop: LoopConfig | None = None, progress: bool = True, dist=None, backend=None) -> dict:
    """`final_calibration_batches`: BN batches for re-scoring the `rescore` best archs by search score (at least
    the top-k; None: no re-scoring).
    `threads`: torch intra-op threads while scoring (None: auto_threads). `verify`: export and measure the
    pick on `device` and close the loop on a miss (hwbcnet/search/latency_loop.py); `backend` overrides the
    device profile's timing backend (tests)."""
    import torch

    if init not in ("prior", "random"):
        raise HwbcnetError(f"--init {init!r}: choose prior or random")
    if calibration_batches < 1 or (final_calibration_batches is not None and final_calibration_batches < 1):
        raise HwbcnetError("--bn-batches and --final-bn-batches must be at least 1")
    if threads is not None and threads < 1:
        raise HwbcnetError(f"--threads {threads}: must be at least 1")
    if rescore < 1:
        raise HwbcnetError(f"--rescore {rescore}: must be at least 1")
    if verify and latency is None:
        raise HwbcnetError("--verify measures the pick against a latency budget: add --latency and --device")
    if verify and dist is not None:
        raise HwbcnetError("--verify times the pick on this machine: run it without torchrun")
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or auto_threads(dist))
        return _run_search(checkpoint, out, flops=flops, params=params, latency=latency, device=device,
                           lut_path=lut_path, lower=lower, margin=margin, init=init, evolution=evolution, seed=seed,
                           data=data, calibration_batches=calibration_batches,
                           final_calibration_batches=final_calibration_batches, rescore=rescore, verify=verify,
                           loop=loop, progress=progress, dist=dist, backend=backend)
    finally:
        torch.set_num_threads(previous_threads)


def auto_threads(dist=None) -> int:
    """Torch threads for scoring on this machine now: one per core that other processes leave idle (at least one).
    Two threads on a 2-core machine whose other core is busy wait on each other and score slower than one."""
    import torch

    from hwbcnet.hardware.machine import busy_cores

    cores = torch.get_num_threads()  # torch's default: one per physical core (or what OMP_NUM_THREADS says)
    if dist is not None or cores == 1:
        return cores
    busy = busy_cores()
    return max(1, cores - int(round(busy))) if busy is not None else cores


def _run_search(checkpoint, out, *, flops, params, latency, device, lut_path, lower, margin, init, evolution, seed,
                data, calibration_batches, final_calibration_batches, rescore, verify, loop, progress, dist,
                backend) -> dict:
    import torch

    from hwbcnet.data import load_data
    from hwbcnet.training.checkpoint import recorded_data
    from hwbcnet.training.scoring import EvalData
    from hwbcnet.training.trainer import default_device, load_supernet

    started = time.perf_counter()
    supernet, payload = load_supernet(checkpoint)
    space = supernet.space
    constraints, costs = build_constraints(space, flops=flops, params=params, latency=latency, device=device,
                                           lut_path=lut_path, lower=lower, margin=margin)
    rng = np.random.default_rng(seed)
    constraints.check_satisfiable(rng)
    probs = fit_prior(space, constraints, payload.get("loss_records", []), seed=seed) if init == "prior" else None

    data = data or recorded_data(payload, checkpoint)
    splits = load_data(data, space.resolution, seed=payload["config"]["seed"])
    eval_data = EvalData.from_splits(splits, calibration_batches=calibration_batches, seed=seed)
    final_data = (EvalData.from_splits(splits, calibration_batches=final_calibration_batches, seed=seed)
                  if final_calibration_batches is not None else None)
    if final_data is not None and final_data.calibration_images == eval_data.calibration_images:
        final_data = None  # the search's own scores already have the final fidelity
    reduce = None
    if dist is not None:
        supernet.to(dist.device)
        dist.sync_batchnorm(supernet)
        eval_data, reduce = eval_data.shard(dist), dist.sum_counts
        final_data = final_data.shard(dist) if final_data is not None else None
    else:
        compute = default_device()
        supernet.to(compute)
        eval_data = eval_data.to(compute)
        final_data = final_data.to(compute) if final_data is not None else None
    details: dict = {}
    out = Path(out)
    # the command line's defaults: a small population, few generations, strongly screened children
    # (docs/benchmarks.md, "Search speed")
    config = evolution or EvolutionConfig.of_population(DEFAULT_POPULATION, generations=DEFAULT_GENERATIONS,
                                                        screen=DEFAULT_SCREEN)
    show = progress and (dist is None or dist.rank == 0)
    fitness = supernet_fitness(supernet, eval_data, reduce, details)
    columns = [TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]:.2f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    search_started = time.perf_counter()
    with Progress(*columns, disable=not show) as bar:
        task = bar.add_task("search", total=config.population * config.generations, best=float("nan"))
        search = EvolutionSearch(space, constraints, fitness, probs, config, seed,
                                 state_path=out.with_name(out.stem + ".state.json") if out.suffix else None)

        def on_evaluated(done, planned):
            bar.update(task, completed=done, total=planned, best=search.top[0][1] if search.top else float("nan"))

        search.on_evaluated = on_evaluated
        outcome = search.run()
    search_seconds = time.perf_counter() - search_started
    new_queries = len(details)  # archs this process scored (a resumed search scored the rest before)

    # The best archs by search score (the top-k at least) at full fidelity: the pick is the best of them by that.
    final_details: dict = {}
    by_search_score = sorted(outcome.scores.items(), key=lambda item: (-item[1], item[0]))
    top_keys = list(dict.fromkeys([tuple(int(c) for c in arch) for arch, _ in outcome.top]
                                  + [key for key, _ in by_search_score[:rescore]]))
    search_scores = {key: outcome.scores[key] for key in top_keys}
    if final_data is not None:
        rescore_started = time.perf_counter()
        supernet_fitness(supernet, final_data, reduce, final_details)(np.array(top_keys, dtype=np.int64))
        final_scores = {key: final_details[key]["score"] for key in top_keys}
        rescore_seconds = time.perf_counter() - rescore_started
    else:
        missing = [key for key in top_keys if key not in details]  # scores that came from a resumed state
        if missing:
            supernet_fitness(supernet, eval_data, reduce, details)(np.array(missing, dtype=np.int64))
        final_details = {key: details[key] for key in top_keys}
        final_scores = dict(search_scores)
        rescore_seconds = 0.0
    ranked = sorted(top_keys, key=lambda key: (-final_scores[key], -search_scores[key], key))
    best_key = ranked[0]

    verification = None
    all_scores = dict(outcome.scores)  # every evaluated arch (a re-search of the latency loop adds to it)
    if verify:
        if latency is not None:
            # a percentage is resolved once, against the LUT the search ran on: the loop's refits must not move the
            # budget (on a device 15 % slower than calibrated, 60 % of the refitted full model would let the very
            # pick that measured over the budget fit)
            latency = Budget("latency", value=constraints.item("latency").high, text=latency)
        verification, best_key, costs = _verify_pick(
            space, device, lut_path, costs, all_scores, final_scores, ranked,
            dict(flops=flops, params=params, latency=latency, device=device, lut_path=lut_path, lower=lower,
                 margin=margin),
            cached(fitness, all_scores), probs, payload["loss_records"], config, seed, out, loop or LoopConfig(),
            backend, show)
        if best_key is None:
            best_key = ranked[0]
        if best_key not in final_scores:  # a pick from beyond the re-scored set: score it like them
            pick_data = final_data if final_data is not None else eval_data
            supernet_fitness(supernet, pick_data, reduce, final_details)(np.array([best_key], dtype=np.int64))
            final_scores[best_key] = final_details[best_key]["score"]
            search_scores[best_key] = all_scores[best_key]
        constraints = build_constraints(space, flops=flops, params=params, latency=latency, device=device,
                                        lut_path=lut_path, lower=lower, margin=margin)[0]
    best = np.array(best_key, dtype=np.int64)

    def cost_values(arch) -> dict:
        values = {name: float(cost(arch[None])[0]) for name, cost in costs.items()}
        result = {"flops": int(round(values["flops"])), "params": int(round(values["params"]))}
        if "latency" in values:
            result["latency_ms"] = values["latency"]
        return result

    total_seconds = time.perf_counter() - started
    result = {
        "kind": KIND, "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arch": space.arch_to_json(best), "score": final_scores[best_key],
        "paths": {k: v for k, v in final_details[best_key].items() if k != "score"},
        "costs": cost_values(best), "budgets": constraints.describe(), "lower": lower,
        "space": space.describe(), "principle": payload["config"]["principle"],
        "checkpoint": {"path": str(Path(checkpoint)), "sha256": file_sha256(checkpoint)},
        "data": data, "device": device, "lut": str(lut_path) if lut_path else None,
        "seed": seed, "init": init, "evolution": asdict(config), "queries": outcome.queries,
        "top": [{"code": space.format_arch(np.array(key)), "score": final_scores[key],
                 "search_score": search_scores[key], "costs": cost_values(np.array(key))}
                for key in ranked[: config.top_k]],
        "history": outcome.history,
        "scoring": {"bn_images": eval_data.calibration_images,
                    "final_bn_images": final_data.calibration_images if final_data is not None else None,
                    "val_images": eval_data.validation_images, "threads": torch.get_num_threads(),
                    "queries_this_run": new_queries, "search_seconds": search_seconds,
                    "rescored": len(top_keys) if final_data is not None else 0, "rescore_seconds": rescore_seconds,
                    "seconds": total_seconds,
                    "archs_per_s": new_queries / search_seconds if search_seconds > 0 else None},
    }
    if verification is not None:
        result["verification"] = verification
    if dist is None or dist.rank == 0:
        atomic_write_json(out, result)
        evaluated = np.array([list(k) for k in all_scores])
        scores = np.array(list(all_scores.values()))
        chosen = int(np.flatnonzero((evaluated == best).all(1))[0])
        from hwbcnet.plots import pareto_png

        plot_costs = {name: cost(evaluated) for name, cost in costs.items()}
        windows = {c.cost.name: (c.low, c.limit) for c in constraints.items}
        result["pareto_png"] = str(pareto_png(out.with_name(out.stem + "-pareto.png"), scores, plot_costs, chosen,
                                              windows, f"{space.model} search ({result['principle']})"))
    return result


def _verify_pick(space, device, lut_path, costs, search_scores, final_scores, ranked_top, budget_args, fitness,
                 probs, loss_records, config, seed, out, loop, backend, show):
    """Run the latency loop on the search's pick. Returns (verification record, chosen arch, costs under the
    possibly recalibrated LUT)."""
    from hwbcnet.costs.latency import latency_cost_for
    from hwbcnet.hardware.lut import lut_path as default_lut_path
    from hwbcnet.hardware.profiles import load_profile
    from hwbcnet.reporting import console

    profile = load_profile(device)
    path = Path(lut_path) if lut_path else default_lut_path(profile.name, space.slug, space.resolution,
                                                             profile.batch)
    # the re-scored archs in their final order first (the pick without --verify comes first), then the rest
    rest = sorted((key for key in search_scores if key not in final_scores), key=lambda key: (-search_scores[key], key))
    ranked = list(ranked_top) + rest

    def make_constraints():
        return build_constraints(space, **budget_args)[0]

    def research(new_constraints, known):
        # the prior aims at the corrected window, as a new search under it would
        new_probs = fit_prior(space, new_constraints, loss_records, seed=seed + 1) if probs is not None else None
        again = EvolutionSearch(space, new_constraints, fitness, new_probs, replace(config, max_queries=None),
                                seed + 1)
        found = again.run(resume=False).scores
        search_scores.update(found)
        return sorted((key for key in found if key not in known), key=lambda key: (-found[key], key))

    log = (lambda message: console.print(f"[bold]verify[/bold] {message}")) if show else None
    outcome = close_latency_loop(space, profile, path, ranked, make_constraints, research, loop, backend=backend,
                                 source={"search": str(out)}, progress=show, log=log)
    if outcome["status"] != "met" and show:
        console.print(f"[red]verify: {outcome['message']}[/red]")
    costs = dict(costs, latency=latency_cost_for(space, device, lut_path))
    verification = {"status": outcome["status"], "message": outcome["message"], "rounds": outcome["rounds"],
                    "researched": outcome["researched"], "loop": asdict(loop)}
    return verification, outcome["arch"], costs


def load_search(path: str | Path) -> dict:
    result = check_fields(read_json(path, kind=KIND, schema_version=SCHEMA_VERSION), _FIELDS, path, optional=_OPTIONAL)
    check_fields(result["checkpoint"], {"path": str, "sha256": str}, path, "checkpoint.")
    check_fields(result.get("paths", {}), dict.fromkeys(result.get("paths", {}), NUMBER), path, "paths.")
    for index, budget in enumerate(result.get("budgets", [])):
        check_fields(budget, {"cost": str, "high": NUMBER}, path, f"budgets[{index}].")
    return result
