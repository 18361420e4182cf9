"""Channel-Bench-Macro search benchmark (issue 3, item 6): evolution with the FLOPs prior, evolution with a uniform
initial population, and random search, all with the benchmark's ground-truth mean accuracy as the oracle and the
same number of queries, for both spaces at 25%, 50% and 75% of the full model's FLOPs (window [0.8 x budget, budget]).

    python benchmarks/cbm_bench_table.py            # 500 queries, 10 seeds; writes docs/benchmarks.md
    python benchmarks/cbm_bench_table.py --quick    # 100 queries, 2 seeds, one budget per space; prints only
"""

from __future__ import annotations

import argparse
import time

from _report import RESULTS, markdown_table, write_section

from hwbcnet.fileio import atomic_write_json
from hwbcnet.search.cbm_bench import run_cbm_bench

SECTION = "Channel-Bench-Macro search"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer queries and seeds, nothing written")
    args = parser.parse_args()
    budgets = ["50%"] if args.quick else ["25%", "50%", "75%"]
    queries, seeds = (100, 2) if args.quick else (500, 10)

    rows, results = [], []
    started = time.perf_counter()
    for space in ("resnet", "mobilenet"):
        for flops in budgets:
            t0 = time.perf_counter()
            result = run_cbm_bench(space, flops, queries=queries, seeds=seeds)
            result["seconds"] = time.perf_counter() - t0
            results.append(result)
            for method, m in result["methods"].items():
                losses = seeds - m["wins_vs_random"] - m["ties_vs_random"]
                wins = "-" if method == "random" else f"{m['wins_vs_random']}/{m['ties_vs_random']}/{losses}"
                rows.append([space, flops, result["in_budget"], f"{result['best_in_budget']:.2f}", method,
                             f"{m['acc_mean']:.2f} ± {m['acc_std']:.2f}", f"{m['rank_mean']:.1f}",
                             f"{m['regret_mean']:.3f}", wins])
    table = markdown_table(["space", "FLOPs", "archs in window", "best in window (%)", "method",
                            "GT acc mean ± std (%)", "rank mean", "regret mean (pp)", "wins/ties/losses vs random"],
                           rows)
    print(table)
    print(f"{time.perf_counter() - started:.1f} s")
    if args.quick:
        return
    atomic_write_json(RESULTS / "cbm_bench.json", {"kind": "hwbcnet.bench-cbm-table", "schema_version": 1,
                                                   "queries": queries, "seeds": seeds, "results": results})
    body = (f"`python benchmarks/cbm_bench_table.py` ({queries} oracle queries per method and seed, "
            f"seeds 0..{seeds - 1}, FLOPs window [0.8 x budget, budget]; full results in `benchmarks/results/cbm_bench.json`). "
            "The oracle is the benchmark's ground-truth mean test accuracy over its training seeds; "
            "rank 1 = the best arch inside the window; regret = best in window minus the pick, in percentage points. "
            "`evolution-prior` starts from the FLOPs-only prior (no loss records), `evolution-random` from uniform "
            "draws; both run the default evolution (population 50, top-10, 25 mutations + 25 crossovers) until the "
            "query budget is spent. `random` draws distinct in-window archs uniformly.\n\n" + table +
            f"\nWall time for all settings: {time.perf_counter() - started:.0f} s on one core.")
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
