"""A search that fits in minutes (issue 11, part 4): where a supernet search spends its time, what the speed levers
buy, and whether the fast default search loses quality.

    python benchmarks/search_speed.py --profile          # CPU time per path: BN recalibration vs evaluation (heavy)
    python benchmarks/search_speed.py --threads          # 1 vs 2 threads, idle vs one core busy (quiet)
    python benchmarks/search_speed.py --time             # the default search end to end, before and after (quiet)
    python benchmarks/search_speed.py --reference SEED   # the full search (pre-change defaults; ~1 hour, heavy)
    python benchmarks/search_speed.py --fast SEED        # today's default search on the same seed (heavy)
    python benchmarks/search_speed.py --cbm-predictor    # CBM regret with and without the predictor screen (heavy)
    python benchmarks/search_speed.py --fidelity         # how well fewer BN batches rank the full search's archs
    python benchmarks/search_speed.py --table            # docs section from the saved results

Supernet: runs/bench/supernets/resnet20/supernet.pt (`hwbcnet train --model resnet20 --data digits --epochs 10`:
bcnetv2, N = 8, m = 2, 32 px). Budget --flops 50% (the budget does not change the cost of scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _report import RESULTS, ROOT, markdown_table, write_section

from hwbcnet.fileio import atomic_write_json, read_json
from hwbcnet.search.defaults import DEFAULT_POPULATION, DEFAULT_SCREEN

SECTION = "Search speed"
RESULT_FILE = RESULTS / "search_speed.json"
KIND = "hwbcnet.bench-search-speed"
CHECKPOINT = Path("runs/bench/supernets/resnet20/supernet.pt")
WORK = Path("runs/bench/search_speed")
BUDGET = ["--flops", "50%"]
SCREENS = tuple(dict.fromkeys((1, 4, DEFAULT_SCREEN)))  # no screen first: the baseline


def full_search(generations: int = 40) -> list[str]:
    """The pre-change default search, run with today's code (channels-last scoring gives the same scores up to float
    rounding): population 50, 40 generations, no screen, every candidate scored with 20 BN batches (so there is
    nothing to re-score at the end)."""
    return ["--population", "50", "--generations", str(generations), "--screen", "1", "--bn-batches", "20",
            "--final-bn-batches", "20"]


def load_results() -> dict:
    if RESULT_FILE.exists():
        return read_json(RESULT_FILE, kind=KIND, schema_version=1)
    return {"kind": KIND, "schema_version": 1}


def save(results: dict, key: str) -> None:
    """Write `key` of `results` into the file as it is now: steps run as separate processes, side by side."""
    current = load_results()
    if key in ("reference", "fast"):  # per seed
        current.setdefault(key, {}).update(results[key])
    else:
        current[key] = results[key]
    atomic_write_json(RESULT_FILE, current)


def profile(results: dict) -> None:
    """CPU time (one thread) of activating a path, recalibrating its BN and evaluating it, per arch (both paths),
    with the old batches (NCHW) and with channels-last batches, for 20 and 2 calibration batches."""
    import torch

    from hwbcnet.budgets import parse_budget
    from hwbcnet.costs.flops import flops_cost
    from hwbcnet.data import load_data
    from hwbcnet.search.constraints import Constraints
    from hwbcnet.training.scoring import EvalData, accuracy, recalibrate_bn
    from hwbcnet.training.trainer import load_supernet

    torch.set_num_threads(1)
    supernet, payload = load_supernet(CHECKPOINT)
    space = supernet.space
    splits = load_data(payload["config"]["data"], space.resolution, seed=payload["config"]["seed"])
    constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", "50%"))])
    archs = space.random_archs(np.random.default_rng(0), 5000)
    archs = archs[constraints.legal(archs)][:12]
    rows = []
    for layout, batches in (("NCHW (before)", 20), ("channels-last", 20), ("channels-last", 2)):
        data = EvalData.from_splits(splits, calibration_batches=batches, seed=0)
        if layout == "channels-last":
            data = data.to("cpu")
        times = {"activate": 0.0, "bn": 0.0, "eval": 0.0}
        for arch in archs:
            for path in supernet.principle.paths:
                t0 = time.process_time()
                supernet.activate(arch, path)
                t1 = time.process_time()
                recalibrate_bn(supernet, data.calibration)
                t2 = time.process_time()
                accuracy(supernet, data.validation)
                t3 = time.process_time()
                times["activate"] += t1 - t0
                times["bn"] += t2 - t1
                times["eval"] += t3 - t2
        per_arch = {k: v / len(archs) for k, v in times.items()}
        rows.append({"layout": layout, "bn_images": data.calibration_images, "val_images": data.validation_images,
                     **{f"{k}_s": v for k, v in per_arch.items()}, "total_s": sum(per_arch.values())})
        print(rows[-1])
    results["profile"] = {"archs": len(archs), "paths": list(supernet.principle.paths), "rows": rows}
    save(results, "profile")


def fidelity(results: dict, batches=(2, 4, 6, 20), seed: int = 0) -> None:
    """How well cheaper BN recalibration ranks archs: the 40 best archs of the full search (`--reference SEED`,
    scored with 20 BN batches) and 40 others it scored, re-scored with fewer batches; Spearman against the full
    scores (all 80, and among the 40 best, where a search makes its choices), the mean and spread of the
    difference, and wall seconds per arch (both paths, 2 threads)."""
    import torch
    from scipy.stats import spearmanr

    from hwbcnet.data import load_data
    from hwbcnet.search.evolution import STATE_KIND
    from hwbcnet.training.scoring import EvalData, score_arch
    from hwbcnet.training.trainer import load_supernet

    torch.set_num_threads(2)
    supernet, payload = load_supernet(CHECKPOINT)
    splits = load_data(payload["config"]["data"], supernet.space.resolution, seed=payload["config"]["seed"])
    state = read_json(WORK / f"reference-s{seed}" / "search.state.json", kind=STATE_KIND)
    scored = sorted(((tuple(arch), score) for arch, score in state["cache"]), key=lambda item: (-item[1], item[0]))
    others = np.random.default_rng(1).choice(np.arange(40, len(scored)), 40, replace=False)
    sample = scored[:40] + [scored[i] for i in sorted(others)]
    full = np.array([score for _, score in sample])
    rows = []
    for count in batches:
        data = EvalData.from_splits(splits, calibration_batches=count, seed=seed).to("cpu")
        started = time.perf_counter()
        scores = np.array([score_arch(supernet, np.array(arch), data)["score"] for arch, _ in sample])
        seconds = (time.perf_counter() - started) / len(sample)
        difference = scores - full
        rows.append({"batches": count, "bn_images": data.calibration_images, "s_per_arch": seconds,
                     "spearman_all": float(spearmanr(scores, full)[0]),
                     "spearman_best40": float(spearmanr(scores[:40], full[:40])[0]),
                     "bias": float(difference.mean()), "spread": float(difference.std()),
                     "best40_bias": float(difference[:40].mean())})
        print(rows[-1])
    results["fidelity"] = {"seed": seed, "archs": len(sample), "rows": rows}
    save(results, "fidelity")


def _score_rate(threads: int, archs, busy: bool) -> float:
    """Wall seconds per arch scored with `threads` threads (20 BN batches, channels-last), optionally while a
    spinning helper process keeps one core busy."""
    code = f"""
import time, numpy as np, torch
torch.set_num_threads({threads})
from hwbcnet.data import load_data
from hwbcnet.training.scoring import EvalData, score_arch
from hwbcnet.training.trainer import load_supernet
supernet, payload = load_supernet({str(CHECKPOINT)!r})
splits = load_data(payload["config"]["data"], supernet.space.resolution, seed=payload["config"]["seed"])
data = EvalData.from_splits(splits, calibration_batches=2, seed=0).to("cpu")
archs = np.array({archs.tolist()})
score_arch(supernet, archs[0], data)
start = time.perf_counter()
for arch in archs:
    score_arch(supernet, arch, data)
print((time.perf_counter() - start) / len(archs))
"""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(1.0 if busy else 0.0)
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.wait()
    return float(output.strip().splitlines()[-1])


def threads(results: dict) -> None:
    from hwbcnet.space import build_space

    space = build_space("resnet20")
    archs = space.random_archs(np.random.default_rng(1), 8)
    rows = []
    for busy in (False, True):
        for count in (1, 2):
            seconds = _score_rate(count, archs, busy)
            rows.append({"other_core": "busy" if busy else "idle", "threads": count, "s_per_arch": seconds})
            print(rows[-1])
    results["threads"] = rows
    save(results, "threads")


def _run(args: list[str], cwd: Path, pythonpath: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hwbcnet", *args], cwd=cwd, check=True,
                   env={**os.environ, "PYTHONPATH": str(pythonpath)})
    return time.perf_counter() - started


def time_searches(results: dict) -> None:
    """The default search end to end (a fresh process, as a user runs it), and the full search's scoring rate (its
    first 3 generations, 150 archs; its 2,000-arch default would take 2,000 / rate)."""
    out = ROOT / WORK / "default" / "search.json"
    before_out = ROOT / WORK / "full-3-generations" / "search.json"
    for stale in (out, out.with_name("search.state.json"), before_out, before_out.with_name("search.state.json")):
        stale.unlink(missing_ok=True)
    wall = _run(["search", "-c", str(ROOT / CHECKPOINT), *BUDGET, "-o", str(out)], ROOT, ROOT)
    after = json.loads(out.read_text())
    before_wall = _run(["search", "-c", str(ROOT / CHECKPOINT), *BUDGET, "-o", str(before_out), *full_search(3)],
                       ROOT, ROOT)
    before = json.loads(before_out.read_text())
    results["time"] = {
        "after": {"wall_s": wall, "queries": after["queries"], "scoring": after["scoring"],
                  "evolution": after["evolution"], "arch": after["arch"]["code"], "score": after["score"]},
        "before": {"wall_s": before_wall, "queries": before["queries"], "archs_per_s": before["queries"] / before_wall,
                   "default_queries": 2000, "extrapolated_default_s": 2000 * before_wall / before["queries"]},
    }
    print(results["time"])
    save(results, "time")


def reference(seed: int, results: dict) -> None:
    """The full search on the same seed, resumable (about an hour on 2 cores)."""
    out = ROOT / WORK / f"reference-s{seed}" / "search.json"
    cpu = time.process_time()
    wall = _run(["search", "-c", str(ROOT / CHECKPOINT), *BUDGET, "-o", str(out), "--seed", str(seed), *full_search()],
                ROOT, ROOT)
    result = json.loads(out.read_text())
    results.setdefault("reference", {})[str(seed)] = {"arch": result["arch"]["code"], "score": result["score"],
                                                      "queries": result["queries"], "wall_s_last_piece": wall,
                                                      "history": result["history"], "cpu_s": time.process_time() - cpu}
    save(results, "reference")


def fast(seed: int, results: dict) -> None:
    out = ROOT / WORK / f"fast-s{seed}" / "search.json"
    for stale in (out, out.with_name("search.state.json")):
        stale.unlink(missing_ok=True)
    wall = _run(["search", "-c", str(ROOT / CHECKPOINT), *BUDGET, "-o", str(out), "--seed", str(seed)], ROOT, ROOT)
    result = json.loads(out.read_text())
    results.setdefault("fast", {})[str(seed)] = {"arch": result["arch"]["code"], "score": result["score"],
                                                 "queries": result["queries"], "wall_s": wall,
                                                 "top": result["top"], "history": result["history"]}
    save(results, "fast")


def cbm_predictor(results: dict) -> None:
    """Mean regret of prior-initialised evolution without and with the predictor screen (SCREENS x children) at
    equal oracle queries, Channel-Bench-Macro FLOPs windows, 20 seeds."""
    from hwbcnet.budgets import parse_budget
    from hwbcnet.costs.flops import flops_cost
    from hwbcnet.search.cbm_bench import SPACES, load_ground_truth
    from hwbcnet.search.constraints import Constraints
    from hwbcnet.search.evolution import EvolutionConfig, EvolutionSearch
    from hwbcnet.search.prior import fit_prior
    from hwbcnet.space import build_space

    rows = []
    for name in SPACES:
        truth = load_ground_truth(name)
        space = build_space(SPACES[name])
        all_archs = space.all_archs()
        accuracy = {tuple(a): truth[space.format_arch(a)]["mean"] for a in all_archs.tolist()}

        def oracle(archs):
            return np.array([accuracy[tuple(a)] for a in np.asarray(archs).tolist()])

        for flops in ("25%", "50%", "75%"):
            constraints = Constraints(space, [(flops_cost(space), parse_budget("flops", flops))])
            best = float(oracle(all_archs[constraints.legal(all_archs)]).max())
            prior = fit_prior(space, constraints, [], seed=0)
            for queries in (100, 200, 500):
                row = {"space": name, "flops": flops, "queries": queries}
                for screen in SCREENS:
                    config = EvolutionConfig(max_queries=queries, generations=queries // 50 + 2, screen=screen)
                    regrets = [best - EvolutionSearch(space, constraints, oracle, prior, config, seed=s).run().best_score
                               for s in range(20)]
                    row[f"regret_screen{screen}"] = float(np.mean(regrets))
                rows.append(row)
                print(row)
    results["cbm_predictor"] = rows
    save(results, "cbm_predictor")


def write_table(results: dict) -> None:
    parts = []
    if "profile" in results:
        prof = results["profile"]
        rows = [[r["layout"], r["bn_images"], r["val_images"], f"{1000 * r['activate_s']:.1f}",
                 f"{1000 * r['bn_s']:.0f}", f"{1000 * r['eval_s']:.0f}", f"{1000 * r['total_s']:.0f}"]
                for r in prof["rows"]]
        parts.append(
            f"Where the time goes (`--profile`): CPU time per arch, both paths ({', '.join(prof['paths'])}), one "
            f"thread, mean over {prof['archs']} archs of the 50 % FLOPs window. BN recalibration dominates; "
            "channels-last batches give the same scores up to float rounding in less time.\n\n" +
            markdown_table(["batches", "BN images", "val images", "activate ms", "BN recalibration ms",
                            "evaluation ms", "total ms"], rows))
    if "threads" in results:
        rows = [[r["other_core"], r["threads"], f"{r['s_per_arch']:.3f}"] for r in results["threads"]]
        parts.append("Threads (`--threads`, quiet machine; 'busy' = a helper process spinning on one core): wall "
                     "seconds per arch (2 BN batches, channels-last). `hwbcnet search` now picks one thread per "
                     "core that other processes leave idle (`--threads` overrides).\n\n" +
                     markdown_table(["other core", "threads", "s / arch"], rows))
    if "fidelity" in results:
        fid = results["fidelity"]
        rows = [[r["batches"], r["bn_images"], f"{r['s_per_arch']:.2f}", f"{r['spearman_all']:.2f}",
                 f"{r['spearman_best40']:.2f}", f"{r['bias']:+.2f} +- {r['spread']:.2f}", f"{r['best40_bias']:+.2f}"]
                for r in fid["rows"]]
        parts.append(
            f"Scoring fidelity (`--fidelity`): {fid['archs']} archs the full search scored (its 40 best and 40 "
            "others), re-scored with fewer BN recalibration batches; Spearman against the full scores (all, and among "
            "the 40 best, where a search chooses), score difference (pt, mean +- sd), wall seconds per arch (both "
            "paths, 2 threads, partly beside other jobs). Few batches do not just add noise: they read the best "
            "archs low and rank them in reverse, so a search on them climbs to another region. The "
            "default therefore scores every candidate with all the training images and buys the time back with "
            f"fewer, better-chosen candidates (population {DEFAULT_POPULATION}, predictor screen "
            f"{DEFAULT_SCREEN}).\n\n" +
            markdown_table(["BN batches", "BN images", "s / arch", "Spearman, all", "Spearman, 40 best",
                            "difference (pt)", "difference, 40 best (pt)"], rows))
    if "time" in results:
        t = results["time"]
        after, before = t["after"], t["before"]
        scoring = after["scoring"]
        parts.append(
            "End to end (`--time`, quiet machine, a fresh `python -m hwbcnet search -c SUPERNET --flops 50%` "
            "process):\n\n" + markdown_table(
                ["search", "archs scored", "archs / s", "wall time"],
                [["full search (the pre-change defaults: 20 BN batches per candidate, population 50 x 40 "
                  "generations, no screen)", f"{before['queries']} measured, 2,000 by default",
                  f"{before['archs_per_s']:.2f}",
                  f"{before['wall_s']:.0f} s for {before['queries']}; {before['extrapolated_default_s'] / 60:.0f} min "
                  "for the default 2,000 (extrapolated)"],
                 [f"default search ({scoring['bn_images']} BN images per candidate, population "
                  f"{after['evolution']['population']} x {after['evolution']['generations']} generations, predictor "
                  f"screen {after['evolution']['screen']}, " +
                  (f"the {scoring['rescored']} best re-scored with {scoring['final_bn_images']} images, "
                   if scoring["final_bn_images"] else "nothing to re-score, ") +
                  f"{scoring['threads']} thread(s))", after["queries"],
                  f"{scoring['archs_per_s']:.2f}", f"{after['wall_s']:.0f} s ({after['wall_s'] / 60:.1f} min)"]]))
    if "reference" in results and "fast" in results:
        rows, notes = [], []
        for seed, ref in sorted(results["reference"].items()):
            fast_result = results["fast"].get(seed)
            if fast_result is None:
                continue
            rows.append([seed, ref["arch"], f"{ref['score']:.2f}", ref["queries"], fast_result["arch"],
                         f"{fast_result['score']:.2f}", fast_result["queries"],
                         f"{fast_result['score'] - ref['score']:+.2f}",
                         "yes" if fast_result["score"] >= ref["score"] - 0.1 else "NO"])
            if ref.get("partial"):
                notes.append(f"seed {seed}: the full search was {ref['partial']}; more generations can only raise "
                             "its pick's score")
        unmatched = [f"seed {seed}: {r['arch']} {r['score']:.2f} ({r['queries']} archs)"
                     for seed, r in sorted(results["fast"].items()) if seed not in results["reference"]]
        if unmatched:
            notes.append("the default search on seeds without a full search (none was run for lack of time) picks "
                         + ", ".join(unmatched))
        val_images = results.get("time", {}).get("after", {}).get("scoring", {}).get("val_images")
        resolution = (f" One validation image moves a two-path score by {100 / val_images / 2:.3f} pt "
                      f"({val_images} images per path)." if val_images else "")
        parts.append("Quality (`--reference SEED`, `--fast SEED`): the pick of the full search and of the default "
                     "search, same seed, both scored with all 1,258 training images for BN. Target: within 0.1 pt."
                     + resolution +
                     (" " + "; ".join(notes) + "." if notes else "") + "\n\n" +
                     markdown_table(["seed", "full search pick", "score", "archs", "fast search pick", "score", "archs",
                                     "difference (pt)", "within 0.1 pt"], rows))
    if "cbm_predictor" in results:
        screened = [screen for screen in SCREENS[1:] if f"regret_screen{screen}" in results["cbm_predictor"][0]]
        rows = [[r["space"], r["flops"], r["queries"], f"{r['regret_screen1']:.4f}",
                 *(f"{r[f'regret_screen{screen}']:.4f}" for screen in screened)] for r in results["cbm_predictor"]]
        no_worse = "; ".join(
            f"screen {screen}: no worse in "
            f"{sum(r[f'regret_screen{screen}'] <= r['regret_screen1'] for r in results['cbm_predictor'])} of "
            f"{len(rows)} settings" for screen in screened)
        parts.append(
            "Predictor screen on Channel-Bench-Macro (`--cbm-predictor`): mean regret (pp, ground-truth oracle) of "
            "prior-initialised evolution without and with the screen (SCREEN x children drawn, the additive ridge "
            "predictor picks which the oracle scores), equal oracle queries, FLOPs windows [0.8, 1] x budget, seeds "
            f"0-19 ({no_worse}).\n\n" +
            markdown_table(["space", "FLOPs", "queries", "regret, no screen",
                            *(f"regret, screen {screen}" for screen in screened)], rows))
    body = ((f"Code: {results['measured_at']}\n\n" if results.get("measured_at") else "") +
            "`python benchmarks/search_speed.py` (steps in its docstring; raw results `benchmarks/results/"
            "search_speed.json`). Supernet: resnet20 bcnetv2 on digits (`hwbcnet train --model resnet20 --data digits "
            "--epochs 10`; N = 8, m = 2, 32 px, 12 width variables). Machine: the 2-core development VM.\n\n" +
            "\n".join(parts))
    write_section(SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", action="store_true")
    parser.add_argument("--time", action="store_true")
    parser.add_argument("--reference", type=int, metavar="SEED")
    parser.add_argument("--fast", type=int, metavar="SEED")
    parser.add_argument("--cbm-predictor", action="store_true")
    parser.add_argument("--fidelity", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    os.chdir(ROOT)
    results = load_results()
    if args.profile:
        profile(results)
    if args.threads:
        threads(results)
    if args.time:
        time_searches(results)
    if args.reference is not None:
        reference(args.reference, results)
    if args.fast is not None:
        fast(args.fast, results)
    if args.cbm_predictor:
        cbm_predictor(results)
    if args.fidelity:
        fidelity(results)
    if args.table:
        write_table(results)


if __name__ == "__main__":
    main()
