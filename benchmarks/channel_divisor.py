"""Device-friendly widths on a device: how much odd channel counts cost, and how often a LUT says a wider layer is
faster than a narrower one (non-monotone), with and without a channel divisor.

    python benchmarks/channel_divisor.py [--device cpu] [--models resnet20 mobilenetv2] [--divisors 8 16] [--quick]

A. Odd vs aligned widths per layer: for every distinct conv shape of the model (kernel, stride, size, groups,
   activation) and up to --points aligned output widths m (multiples of the smallest divisor), the cell with m
   output channels and the cell with m - 1 (depthwise: both sides) are measured in the same pass (the profile's
   differential method, median over passes in shuffled order). Ratio = time(m - 1) / time(m): above 1, one channel
   fewer made the layer slower. Reported separately for m a multiple of each divisor.
B. Non-monotone LUT entries: the LUT of the model's default space (N = 8) is built with divisor 1 and with each
   divisor; over every pair of cells of one layer that differ only in one width (adjacent widths), the share where
   the wider cell is measured faster (strictly, and by more than 5 %).
Writes benchmarks/results/channel_divisor_<device>.json and the "Channel divisor" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _shape_key(cell):
    return (cell.kernel, cell.stride, cell.padding, cell.h, cell.w, cell.group_width, cell.bn, cell.act)


def odd_vs_aligned(space, profile, backend, divisor: int, points: int, seed: int) -> list[dict]:
    """Part A for one model: one row per conv shape."""
    from hwbcnet.hardware.cells import enumerate_cells
    from hwbcnet.hardware.profiler import measure_cell

    full = {}
    for cell in enumerate_cells(space):  # the widest cell of every conv shape
        if cell.kind == "conv":
            key = _shape_key(cell)
            if key not in full or (cell.c_in, cell.c_out) > (full[key].c_in, full[key].c_out):
                full[key] = cell
    jobs = []
    for key, cell in full.items():
        aligned = [m for m in range(2 * divisor, cell.c_out + 1, divisor)]
        step = max(1, len(aligned) // points)
        for m in aligned[::step][:points]:
            for width in (m, m - 1):
                if cell.group_width == 1:
                    probe = replace(cell, c_in=width, c_out=width)
                else:
                    probe = replace(cell, c_out=width)
                jobs.append((key, m, width, probe))
    times: dict = {}
    rng = np.random.default_rng(seed)
    for _ in range(profile.passes):
        for index in rng.permutation(len(jobs)):
            key, m, width, probe = jobs[index]
            times.setdefault((key, m, width), []).append(measure_cell(backend, probe, profile)["ms"])
    rows = []
    for key, cell in full.items():
        ratios = {m: np.median(times[(key, m, m - 1)]) / np.median(times[(key, m, m)])
                  for (k, m, width) in times if k == key and width == m}
        if ratios:
            kernel = f"{cell.kernel[0]}x{cell.kernel[1]}"
            kind = "dw" if cell.group_width == 1 else "conv"
            values = np.array(list(ratios.values()))
            rows.append({"layer": f"{kind} k{kernel} s{cell.stride[0]} {cell.h}x{cell.w} c_in {cell.c_in}",
                         "points": len(values), "median_ratio": float(np.median(values)),
                         "slower_share": float(np.mean(values > 1.0)), "max_ratio": float(values.max()),
                         "ratios": {str(m): float(r) for m, r in ratios.items()}})
    return rows


def non_monotone(lut, space) -> dict:
    """Part B: adjacent-width pairs of one layer where the wider cell is faster."""
    from hwbcnet.hardware.cells import enumerate_cells

    values = {cell: lut.value_ms(cell) for cell in enumerate_cells(space)}
    groups: dict = {}
    for cell in values:
        groups.setdefault((cell.kind, _shape_key(cell), cell.c_mid, cell.parts), []).append(cell)
    pairs = faster = faster5 = 0
    for cells in groups.values():
        for fixed_axis, moving in (("c_in", "c_out"), ("c_out", "c_in")):
            lines: dict = {}
            for cell in cells:
                lines.setdefault(getattr(cell, fixed_axis), []).append(cell)
            for line in lines.values():
                line.sort(key=lambda c: getattr(c, moving))
                for narrow, wide in zip(line, line[1:]):
                    if getattr(wide, moving) == getattr(narrow, moving):
                        continue
                    pairs += 1
                    faster += values[wide] < values[narrow]
                    faster5 += values[wide] < 0.95 * values[narrow]
    return {"pairs": pairs, "wider_faster": faster / max(pairs, 1), "wider_faster_5pct": faster5 / max(pairs, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--divisors", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--points", type=int, default=6, help="aligned widths per conv shape in part A")
    parser.add_argument("--quick", action="store_true", help="resnet20 at N=4, 2 points (checks the script runs)")
    args = parser.parse_args()

    from hwbcnet.hardware.backends import get_backend
    from hwbcnet.hardware.profiler import build_lut
    from hwbcnet.hardware.profiles import load_profile
    from hwbcnet.space import build_space

    profile = load_profile(args.device)
    backend = get_backend(profile.backend)
    models = ["resnet20"] if args.quick else args.models
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for model in models:
            started = time.perf_counter()
            bins = 4 if args.quick else None
            space = build_space(model, bins=bins, resolution=profile.resolution)
            part_a = odd_vs_aligned(space, profile, backend, min(args.divisors), 2 if args.quick else args.points,
                                    seed=0)
            part_b = {}
            for divisor in (1, *args.divisors):
                aligned = build_space(model, bins=bins, resolution=profile.resolution, channel_divisor=divisor)
                lut = build_lut(aligned, profile, Path(folder) / f"{model}-d{divisor}.json", progress=False)
                part_b[divisor] = {"cells": len(lut.cells), **non_monotone(lut, aligned)}
            results.append({"model": model, "layers": part_a, "non_monotone": part_b,
                            "seconds": time.perf_counter() - started})
            print(json.dumps(results[-1], indent=1), flush=True)
    if not args.quick:
        from _report import RESULTS

        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"channel_divisor_{profile.name}.json").write_text(json.dumps(results, indent=1))
        write_report(results, args, profile.name, profile.passes)


def write_report(results: list[dict], args, device: str, passes: int) -> None:
    from _report import markdown_table, write_section

    import numpy as np

    rows_a = [[r["model"], layer["layer"], layer["points"], f"{layer['median_ratio']:.3f}",
               f"{100 * layer['slower_share']:.0f} %", f"{layer['max_ratio']:.2f}"]
              for r in results for layer in r["layers"]]
    by_divisor = []
    for r in results:
        for divisor in args.divisors:
            ratios = [value for layer in r["layers"] for m, value in layer["ratios"].items() if int(m) % divisor == 0]
            if ratios:
                by_divisor.append([r["model"], divisor, len(ratios), f"{np.median(ratios):.3f}",
                                   f"{100 * np.mean(np.array(ratios) > 1.0):.0f} %"])
    rows_b = [[r["model"], divisor, stats["cells"], stats["pairs"], f"{100 * stats['wider_faster']:.1f} %",
               f"{100 * stats['wider_faster_5pct']:.1f} %"]
              for r in results for divisor, stats in r["non_monotone"].items()]
    write_section(f"Channel divisor ({device})", (
        f"`python benchmarks/channel_divisor.py --device {device} --models {' '.join(args.models)} --divisors "
        f"{' '.join(map(str, args.divisors))}`. A: per conv shape of the model (32 px, the profile's differential "
        f"cell timing, median of {passes} passes in shuffled order), the time with m - 1 output channels over the "
        f"time with m (m a multiple of {min(args.divisors)}; depthwise: both sides); above 1, one channel fewer made "
        "the layer slower. First summarised over all shapes by the divisor m is a multiple of, then per shape. B: the "
        f"model's default space (N = 8) profiled with channel divisor 1 and {', '.join(map(str, args.divisors))}; "
        "over adjacent-width cell pairs of one layer, the share where the wider cell is measured faster.\n\n"
        + markdown_table(["model", "m a multiple of", "widths", "median time(m-1)/time(m)", "m-1 slower"], by_divisor)
        + "\n" + markdown_table(["model", "conv shape", "widths", "median time(m-1)/time(m)", "m-1 slower",
                                 "max ratio"], rows_a)
        + "\n" + markdown_table(["model", "divisor", "cells", "adjacent pairs", "wider faster", "wider faster by > 5 %"],
                                rows_b)))


if __name__ == "__main__":
    main()
