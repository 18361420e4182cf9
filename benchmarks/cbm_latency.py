"""Latency-constrained Channel-Bench-Macro (issue 11, part 1): does a LUT-guided search give a better model *at the
device's latency* than a FLOPs-guided search or uniform width scaling?

For each space (resnet, mobilenet) the cbm model's LUT on --device is calibrated afresh (12 subnets, 3 interleaved
rounds, as `hwbcnet lut calibrate --repeats 3`), then for each latency budget (30/50/70 % of the full model's
predicted latency) `run_cbm_latency_bench` runs every method with 500 ground-truth queries x 5 seeds and times every
distinct pick end to end on the device (5 interleaved rounds, median) together with the window's best candidates.

Run on a quiet machine, one space per invocation (each ~10 minutes; results are saved per setting and a finished
setting is skipped when the script runs again):
    python benchmarks/cbm_latency.py --spaces resnet       # then --spaces mobilenet; then --table to write the docs
    python benchmarks/cbm_latency.py --quick               # one budget, 100 queries, 2 seeds; prints only
LUTs: --lut-dir (default runs/bench/lut), built with `hwbcnet profile --device cpu --model cbm-<space> --out ...`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _report import RESULTS, markdown_table, write_section

from hwbcnet.costs.calibration import calibrate_lut
from hwbcnet.fileio import atomic_write_json, read_json
from hwbcnet.hardware.lut import lut_path
from hwbcnet.hardware.profiles import load_profile
from hwbcnet.search.cbm_bench import LOOP_METHOD, SPACES, run_cbm_latency_bench
from hwbcnet.space import build_space

SECTION = "Latency-constrained Channel-Bench-Macro"
RESULT_FILE = RESULTS / "cbm_latency.json"
KIND = "hwbcnet.bench-cbm-latency"
BUDGETS = ["30%", "50%", "70%"]
COMPARED = ("flops-evolution-prior", "uniform")  # what the LUT-guided pick must beat


def load_results() -> dict:
    if RESULT_FILE.exists():
        return read_json(RESULT_FILE, kind=KIND, schema_version=1)
    return {"kind": KIND, "schema_version": 1, "settings": {}}


def run_space(space_name: str, args, results: dict) -> None:
    profile = load_profile(args.device)
    space = build_space(SPACES[space_name], resolution=profile.resolution)
    path = lut_path(profile.name, space.slug, space.resolution, profile.batch, root=args.lut_dir)
    budgets = BUDGETS[1:2] if args.quick else BUDGETS
    todo = [b for b in budgets if args.quick or f"{space_name} {b}" not in results["settings"]]
    if not todo:
        return
    started = time.perf_counter()
    calibration = calibrate_lut(space, profile, path, samples=12, repeats=3, progress=not args.quiet)
    print(f"{space.model}: calibrated T = {calibration['a_ms']:.4f} + {calibration['b']:.4f} x sum "
          f"({time.perf_counter() - started:.0f} s)")
    for budget in todo:
        started = time.perf_counter()
        result = run_cbm_latency_bench(space_name, budget, args.device, str(path),
                                       queries=100 if args.quick else 500, seeds=2 if args.quick else 5,
                                       repeats=3 if args.quick else 5, candidates=10, progress=not args.quiet)
        result["seconds"] = time.perf_counter() - started
        print(f"{space_name} {budget}: {result['seconds']:.0f} s")
        for name, method in result["methods"].items():
            print(f"  {name:36s} acc {method['acc_mean']:.2f} hit {method['hit_rate']:.2f} "
                  f"ratio {method['ratio_mean']:.3f} regret {method['regret_mean']:.3f}")
        if not args.quick:
            results["settings"][f"{space_name} {budget}"] = result
            results.pop("measured_at_commit", None)  # a new setting: the note no longer covers every one
            atomic_write_json(RESULT_FILE, results)


def _fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def _verdicts(outcome: dict) -> str:
    return f"better in {outcome['better']}, tied in {outcome['tied']}, worse in {outcome['worse']}"


def _range(values: list[float]) -> str:
    return f"{min(values):+.2f}..{max(values):+.2f}" if values else "-"


def _latency_flops_agreement(results: dict) -> str:
    """Spearman rho between the LUT-predicted latency and the FLOPs of all archs of each space: how good a proxy
    FLOPs are on this device (from the LUTs the settings ran on, where they are at hand)."""
    from scipy.stats import spearmanr

    from hwbcnet.costs.flops import flops_cost
    from hwbcnet.costs.latency import latency_cost_for

    parts = []
    for space_name, model in SPACES.items():
        setting = next((v for v in results["settings"].values() if v["space"] == space_name), None)
        if setting is None or not Path(setting["lut"]).is_file():
            continue
        space = build_space(model)
        archs = space.all_archs()
        rho = spearmanr(latency_cost_for(space, setting["device"], setting["lut"])(archs), flops_cost(space)(archs))
        parts.append(f"{space_name} {rho.statistic:.4f}")
    if not parts:
        return ""
    return (f"Rank agreement of LUT-predicted latency and FLOPs over all 16,384 archs on this device (Spearman): "
            f"{', '.join(parts)}. ")


def write_table(results: dict) -> None:
    rows, lut_hits, lut_runs, under, over, missed, gaps = [], 0, 0, 0, 0, [], {c: [] for c in COMPARED}
    loop_hits, loop_runs, loop_over = 0, 0, 0
    outcomes = {c: {"better": 0, "tied": 0, "worse": 0} for c in COMPARED}
    settings = results["settings"]
    for key in [f"{s} {b}" for s in SPACES for b in BUDGETS if f"{s} {b}" in settings]:
        result = settings[key]
        best = result["best_in_window"]
        lut = result["methods"]["lut-evolution-prior"]
        lut_hits += sum(p["hit"] for p in lut["picks"])
        lut_runs += len(lut["picks"])
        under += sum(p["ratio"] < result["lower"] for p in lut["picks"])
        misses = sum(not p["hit"] for p in lut["picks"])
        if misses:
            missed.append(f"{key} ({misses})")
        over += sum(p["ratio"] > 1 for p in lut["picks"])
        loop = result["methods"].get(LOOP_METHOD)
        if loop is not None:
            loop_hits += sum(p["hit"] for p in loop["picks"])
            loop_runs += len(loop["picks"])
            loop_over += sum(p["ratio"] > 1 for p in loop["picks"])
        for compared in COMPARED:
            other = result["methods"].get(compared)
            mine = lut["acc_within_mean"]
            theirs = None if other is None else other["acc_within_mean"]  # None: no pick within budget
            if mine is None:
                verdict = "tied" if theirs is None else "worse"
            elif theirs is None or mine > theirs + 0.005:  # GT means are reported to 0.01 pt
                verdict = "better"
            else:
                verdict = "tied" if abs(mine - theirs) <= 0.005 else "worse"
            outcomes[compared][verdict] += 1
            if mine is not None and theirs is not None:
                gaps[compared].append(mine - theirs)
        for name, method in result["methods"].items():
            rows.append([result["space"], result["latency_budget"], f"{result['budget_ms']:.3f}",
                         f"{best['acc']:.2f}{'' if best['confirmed'] else ' (LUT)'}", name,
                         f"{method['acc_mean']:.2f}", _fmt(method["acc_within_mean"]),
                         f"{method['ratio_mean']:.3f} ({method['ratio_min']:.3f}-{method['ratio_max']:.3f})",
                         f"{100 * method['hit_rate']:.0f}", f"{100 * method['within_rate']:.0f}",
                         f"{method['regret_mean']:.3f}"])
    count = len([k for k in settings])
    table = markdown_table(["space", "budget", "budget ms", "best in window (%)", "method", "GT acc (%)",
                            "GT acc, picks within budget (%)", "measured / budget mean (min-max)", "hit %",
                            "within budget %", "regret (pp)"], rows)
    drift = ", ".join(f"{k} {v['drift']['measured_over_predicted_median']:.3f}" for k, v in settings.items())
    margins = ", ".join(f"{k} {100 * v['margin']:.1f} %" for k, v in settings.items())
    body = (
        (f"Code: {results['measured_at_commit']}. " if results.get("measured_at_commit") else "") +
        "`python benchmarks/cbm_latency.py --spaces resnet`, then `--spaces mobilenet`, then `--table` (quiet machine; "
        "full results in `benchmarks/results/cbm_latency.json`); the same as `hwbcnet bench cbm --space S --latency B "
        "--device cpu --seeds 5 --repeats 5`. Device: `cpu` (ONNX Runtime, 1 thread) on the 2-core development VM. "
        "The LUT of each cbm model was calibrated right before its settings ran (12 subnets, 3 interleaved rounds). "
        "Budget B = the fraction of the full arch's predicted latency. Every method gets 500 ground-truth queries "
        "per seed, seeds 0-4: `lut-evolution-*` search the LUT window [0.9 B, (1 - margin) B] (margin = the "
        "guard band derived from the calibration's residuals, `--margin auto`), from the latency prior, from "
        "uniform draws, with the accuracy-predictor screen (4x children), and without the guard band; "
        f"`{LOOP_METHOD}` is the prior-initialised search's evaluated archs through the loop of `hwbcnet search "
        "--verify` (measure the pick; on a miss refit and correct the prediction, re-rank, search again; at most 3 "
        "picks; each seed on its own copy of the calibrated LUT); "
        "`flops-evolution-prior` searches [0.9, 1] x the same fraction of the full FLOPs (a user without a LUT); "
        "`lut-random` samples the LUT window (all of it where it holds fewer archs than the queries); `uniform` is the widest uniform width predicted within B. Every "
        "distinct pick was exported to ONNX and timed on the device, 5 interleaved rounds, median. "
        "hit = measured within [0.9 B, B]; regret = the window's best GT accuracy minus the pick's, where the "
        "window's best is found from the LUT over all 16,384 archs (the 10 most accurate predicted within 5 % of "
        "[0.9 B, B]) and confirmed by timing them: the most accurate one that measures inside [0.9 B, B] ('(LUT)' "
        "where none did and the LUT's best is shown).\n\n" + table +
        f"\nLUT-guided pick (`lut-evolution-prior`), GT accuracy among picks that measure within budget, vs the FLOPs "
        f"proxy: {_verdicts(outcomes['flops-evolution-prior'])} of {count} settings; vs uniform width: "
        f"{_verdicts(outcomes['uniform'])}. Its picks hit [0.9 B, B] in {lut_hits} of {lut_runs} runs "
        f"({100 * lut_hits / max(lut_runs, 1):.0f} %; target >= 95 %); of the misses {under} measured under the "
        f"window (faster than predicted, still within budget) and {over} over budget; misses by setting: "
        f"{', '.join(missed) or 'none'}. LUT minus FLOPs-proxy accuracy ranges {_range(gaps['flops-evolution-prior'])} "
        f"pt over the settings, LUT minus uniform {_range(gaps['uniform'])} pt. " +
        (f"Through the `--verify` loop the picks hit in {loop_hits} of {loop_runs} runs "
         f"({100 * loop_hits / loop_runs:.0f} %), {loop_over} over budget. " if loop_runs else "") +
        _latency_flops_agreement(results) +
        f"Guard bands: {margins}. "
        f"Calibration subnets "
        f"re-timed with the picks measured {drift} x their prediction (the machine's drift since calibration).\n")
    print(table)
    write_section(SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="*", default=[], choices=list(SPACES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lut-dir", type=Path, default=Path("runs/bench/lut"))
    parser.add_argument("--table", action="store_true", help="write the docs table from the saved results")
    parser.add_argument("--quick", action="store_true", help="one budget, fewer queries/seeds; nothing saved")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    results = load_results()
    for space_name in args.spaces or ([] if args.table else list(SPACES)):
        run_space(space_name, args, results)
    if args.table and not args.quick:
        write_table(results)


if __name__ == "__main__":
    main()
