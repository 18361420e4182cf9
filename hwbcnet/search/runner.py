"""`hwbcnet search`: score archs with a trained supernet under budgets and write DIR/search.json.

search.json (kind "hwbcnet.search", schema_version 1):
    arch        the chosen arch (model, bins, min_bins, code, widths per variable, channels per variable)
    score       its BC score (left/right validation accuracy average after per-path BN recalibration; left for ua),
                with `paths` holding each path's accuracy
    costs       its flops, params (and latency_ms when a device was given)
    budgets     [{cost, unit, budget, low, high}], `lower` the window's lower fraction
    space       the width space; `checkpoint` {path, sha256} of the supernet; `data`, `device`, `lut`
    top         the final top-k [{code, score, costs}]; `history` per generation; `seed`, `init`, `evolution`
The evolution state is kept next to it (search.state.json) so a killed search resumes.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hwbcnet.budgets import parse_budget
from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import NUMBER, atomic_write_json, check_fields, file_sha256, read_json
from hwbcnet.search.constraints import Constraints
from hwbcnet.search.evolution import EvolutionConfig, EvolutionSearch
from hwbcnet.search.prior import fit_prior

KIND = "hwbcnet.search"
SCHEMA_VERSION = 1
_FIELDS = {"arch": dict, "checkpoint": dict, "data": str}  # what extraction needs
_OPTIONAL = {"score": NUMBER, "paths": dict, "costs": dict, "budgets": list, "top": list}


def build_constraints(space, *, flops=None, params=None, latency=None, device=None, lut_path=None, lower=0.8):
    """Costs for every budget given; FLOPs and params are always reported, latency when a device is given."""
    costs = {"flops": flops_cost(space), "params": params_cost(space)}
    if device is not None:
        from hwbcnet.costs.latency import latency_cost_for

        costs["latency"] = latency_cost_for(space, device, lut_path)
    elif latency is not None:
        raise HwbcnetError("--latency needs --device (the LUT's device profile, e.g. --device cpu)")
    pairs = [(costs[name], parse_budget(name, text)) for name, text in
             (("flops", flops), ("params", params), ("latency", latency)) if text is not None]
    if not pairs:
        raise HwbcnetError("give at least one budget: --flops, --params or --latency")
    return Constraints(space, pairs, lower), costs


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


def run_search(checkpoint: str | Path, out: str | Path, *, flops=None, params=None, latency=None, device=None,
               lut_path=None, lower: float = 0.8, init: str = "prior", evolution: EvolutionConfig | None = None,
               seed: int = 0, data: str | None = None, calibration_batches: int = 20, progress: bool = True,
               dist=None) -> dict:
    from hwbcnet.data import load_data
    from hwbcnet.training.checkpoint import recorded_data
    from hwbcnet.training.scoring import EvalData
    from hwbcnet.training.trainer import default_device, load_supernet

    if init not in ("prior", "random"):
        raise HwbcnetError(f"--init {init!r}: choose prior or random")
    supernet, payload = load_supernet(checkpoint)
    space = supernet.space
    constraints, costs = build_constraints(space, flops=flops, params=params, latency=latency, device=device,
                                           lut_path=lut_path, lower=lower)
    rng = np.random.default_rng(seed)
    constraints.check_satisfiable(rng)
    probs = fit_prior(space, constraints, payload.get("loss_records", []), seed=seed) if init == "prior" else None

    data = data or recorded_data(payload, checkpoint)
    splits = load_data(data, space.resolution, seed=payload["config"]["seed"])
    eval_data = EvalData.from_splits(splits, calibration_batches=calibration_batches, seed=seed)
    reduce = None
    if dist is not None:
        supernet.to(dist.device)
        dist.sync_batchnorm(supernet)
        eval_data, reduce = eval_data.shard(dist), dist.sum_counts
    else:
        compute = default_device()
        supernet.to(compute)
        eval_data = eval_data.to(compute)
    details: dict = {}
    out = Path(out)
    config = evolution or EvolutionConfig()
    show = progress and (dist is None or dist.rank == 0)
    columns = [TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]:.2f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not show) as bar:
        task = bar.add_task("search", total=config.population * config.generations, best=float("nan"))
        search = EvolutionSearch(space, constraints, supernet_fitness(supernet, eval_data, reduce, details), probs,
                                 config, seed, state_path=out.with_name(out.stem + ".state.json") if out.suffix else None)

        def on_evaluated(done, planned):
            bar.update(task, completed=done, total=planned, best=search.top[0][1] if search.top else float("nan"))

        search.on_evaluated = on_evaluated
        outcome = search.run()

    best = outcome.best
    best_key = tuple(int(c) for c in best)
    if best_key not in details:  # the score came from a resumed state: recompute the per-path accuracies
        supernet_fitness(supernet, eval_data, reduce, details)(best[None])

    def cost_values(arch) -> dict:
        values = {name: float(cost(arch[None])[0]) for name, cost in costs.items()}
        result = {"flops": int(round(values["flops"])), "params": int(round(values["params"]))}
        if "latency" in values:
            result["latency_ms"] = values["latency"]
        return result

    result = {
        "kind": KIND, "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arch": space.arch_to_json(best), "score": outcome.best_score,
        "paths": {k: v for k, v in details[best_key].items() if k != "score"},
        "costs": cost_values(best), "budgets": constraints.describe(), "lower": lower,
        "space": space.describe(), "principle": payload["config"]["principle"],
        "checkpoint": {"path": str(Path(checkpoint)), "sha256": file_sha256(checkpoint)},
        "data": data, "device": device, "lut": str(lut_path) if lut_path else None,
        "seed": seed, "init": init, "evolution": asdict(config), "queries": outcome.queries,
        "top": [{"code": space.format_arch(a), "score": s, "costs": cost_values(a)} for a, s in outcome.top],
        "history": outcome.history,
    }
    if dist is None or dist.rank == 0:
        atomic_write_json(out, result)
        evaluated = np.array([list(k) for k in outcome.scores])
        scores = np.array(list(outcome.scores.values()))
        chosen = int(np.flatnonzero((evaluated == best).all(1))[0])
        from hwbcnet.plots import pareto_png

        plot_costs = {name: cost(evaluated) for name, cost in costs.items()}
        windows = {c.cost.name: (c.low, c.high) for c in constraints.items}
        result["pareto_png"] = str(pareto_png(out.with_name(out.stem + "-pareto.png"), scores, plot_costs, chosen,
                                              windows, f"{space.model} search ({result['principle']})"))
    return result


def load_search(path: str | Path) -> dict:
    result = check_fields(read_json(path, kind=KIND, schema_version=SCHEMA_VERSION), _FIELDS, path, optional=_OPTIONAL)
    check_fields(result["checkpoint"], {"path": str, "sha256": str}, path, "checkpoint.")
    check_fields(result.get("paths", {}), dict.fromkeys(result.get("paths", {}), NUMBER), path, "paths.")
    for index, budget in enumerate(result.get("budgets", [])):
        check_fields(budget, {"cost": str, "high": NUMBER}, path, f"budgets[{index}].")
    return result
