"""Constraint evaluation throughput (issue 3, item 8): archs per second that `Constraints.legal` checks on one core,
for FLOPs alone, FLOPs + params, and FLOPs + latency (the LUT predictor, fed a synthetic table: its speed does not
depend on the numbers in the cells). Target: >= 20k archs/s.

    python benchmarks/throughput.py            # 4 models x batches of 1k and 100k archs; writes docs/benchmarks.md
    python benchmarks/throughput.py --quick    # 2 models, 1k archs; prints only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy/torch start their thread pools

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import RESULTS, markdown_table, write_section

from hwbcnet.budgets import parse_budget
from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.costs.latency import LatencyCost
from hwbcnet.fileio import atomic_write_json
from hwbcnet.hardware.cells import enumerate_cells
from hwbcnet.hardware.lut import Lut
from hwbcnet.hardware.profiles import load_profile
from hwbcnet.search.constraints import Constraints
from hwbcnet.space.space import build_space

SECTION = "Constraint evaluation throughput"
TARGET = 20_000


def synthetic_latency(space, folder: Path) -> LatencyCost:
    """A LatencyCost over a LUT whose every cell holds a made-up time (the predictor's speed is what is measured)."""
    lut = Lut.new(folder / f"{space.model}.json", space, load_profile("cpu"), {"device": "synthetic"})
    rng = np.random.default_rng(0)
    for cell in enumerate_cells(space):
        lut.cells[lut.key(cell)] = {"median_ms": float(rng.uniform(0.001, 0.1)), "stable": True}
    return LatencyCost(space, lut)


def cost_sets(space, folder: Path) -> dict:
    """name -> [(cost, budget text)]; one more cost (e.g. a new hardware predictor) is one more entry here."""
    flops, params, latency = flops_cost(space), params_cost(space), synthetic_latency(space, folder)
    full_ms = float(latency(space.full_arch()[None])[0])
    return {"flops": [(flops, "50%")],
            "flops+params": [(flops, "50%"), (params, "50%")],
            "flops+latency": [(flops, "50%"), (latency, f"{0.5 * full_ms:.6f}ms")]}


def archs_per_second(constraints: Constraints, archs: np.ndarray, batch: int, repeats: int) -> float:
    """Best of `repeats` timings (the best is the least disturbed by other load) of `legal` over all `archs` in calls
    of `batch` archs each: one call for a whole batch, or one call per arch as the evolution checks its children."""
    constraints.legal(archs[:10])  # warm caches and lazy tables
    chunks = [archs[i:i + batch] for i in range(0, len(archs), batch)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for chunk in chunks:
            constraints.legal(chunk)
        best = min(best, time.perf_counter() - started)
    return len(archs) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 models, batches up to 1k archs, nothing written")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = ["resnet20", "cbm-resnet"] if args.quick else ["resnet20", "mobilenetv2", "resnet50", "cbm-resnet"]
    batches = [1, 1_000] if args.quick else [1, 1_000, 100_000]
    repeats = 3 if args.quick else 7

    rows, records = [], []
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            space = build_space(model)
            for set_name, pairs in cost_sets(space, Path(folder)).items():
                constraints = Constraints(space, [(cost, parse_budget(cost.name, text)) for cost, text in pairs])
                for batch in batches:
                    archs = space.random_archs(np.random.default_rng(0), max(batch, 1_000))
                    rate = archs_per_second(constraints, archs, batch, repeats)
                    records.append({"model": model, "costs": set_name, "batch": batch, "archs_per_s": rate})
                    rows.append([model, space.num_vars, len(space.layers), set_name, f"{batch:,}", f"{rate:,.0f}",
                                 "yes" if rate >= TARGET else "NO"])
    table = markdown_table(["model", "width vars", "layers", "costs", "batch", "archs/s (1 core)",
                            f">= {TARGET // 1000}k"], rows)
    print(table)
    if args.quick:
        return
    atomic_write_json(RESULTS / "throughput.json", {"kind": "hwbcnet.bench-throughput", "schema_version": 1,
                                                    "cpu": platform.processor() or platform.machine(),
                                                    "repeats": repeats, "results": records})
    body = ("`python benchmarks/throughput.py` (raw numbers: `benchmarks/results/throughput.json`). Archs per second "
            "that `Constraints.legal` checks, over uniformly random archs of the model's default space (budgets 50% of "
            "the full model), in calls of `batch` archs each; batch 1 = 1,000 calls of one arch, as "
            f"`EvolutionSearch._accept` checks every child. Best of {repeats} runs, one core (`OMP_NUM_THREADS=1`, "
            "`torch.set_num_threads(1)`) on a shared 2-core machine, so other load can only lower the numbers. "
            "FLOPs and params are quadratic forms in the channel counts; latency is the LUT predictor "
            "(`LatencyCost`) over a synthetic table with every cell of the space.\n\n" + table)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
