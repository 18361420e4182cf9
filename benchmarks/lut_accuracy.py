"""LUT accuracy on this machine: for each model, build the LUT, calibrate it, validate it against end-to-end
measurements of random subnets, and print MdAPE, share within +-10 %, Spearman and the LUT build time.

Run on a quiet machine (timing loops on shared cores are noisy):
    python benchmarks/lut_accuracy.py                       # resnet20, mobilenetv2, cbm-resnet on --device cpu
    python benchmarks/lut_accuracy.py --models resnet20 --bins 4 --calibrate 6 --samples 10 --repeats 1   # smoke
Targets (issue 4): >= 95 % of subnets within +-10 %, MdAPE <= 5 %, Spearman >= 0.95, resnet20 LUT <= 5 min.
LUTs go to --out (default a temporary folder, so a benchmark never mixes with the user's lut/ files).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hwbcnet.hardware.lut import lut_path
from hwbcnet.hardware.profiler import build_lut
from hwbcnet.hardware.profiles import load_profile
from hwbcnet.costs.calibration import calibrate_lut, validate_lut
from hwbcnet.space import build_space


def lut_file_calibration(path: Path) -> dict:
    from hwbcnet.hardware.lut import Lut

    return Lut.load(path).calibration


def run(model: str, args, out: Path) -> dict:
    profile = load_profile(args.device)
    space = build_space(model, bins=args.bins, resolution=profile.resolution or args.resolution,
                        channel_divisor=profile.channel_divisor if args.channel_divisor is None else args.channel_divisor)
    path = lut_path(profile.name, space.slug, space.resolution, profile.batch, root=out)
    start = time.perf_counter()
    lut = build_lut(space, profile, path, progress=not args.quiet)
    # measuring time summed over every (resumed) run that built this LUT; wall time of this run besides
    build_seconds = lut.data["build"]["measure_seconds"] or time.perf_counter() - start
    together = 0 if args.separate_phases else args.calibrate
    if args.separate_phases:  # as a user runs it: `lut calibrate`, then later `lut validate`
        calibrate_lut(space, profile, path, samples=args.calibrate, repeats=args.repeats, seed=0,
                      progress=not args.quiet)
    report = validate_lut(space, profile, path, samples=args.samples, repeats=args.repeats, seed=1,
                          calibrate=together, plot=out / f"{model}-validate.png", progress=not args.quiet)
    calibration = lut_file_calibration(path)
    return {
        "model": model, "device": profile.name, "bins": space.bins, "channel_divisor": space.channel_divisor,
        "cells": len(lut.cells),
        "unstable_cells": sum(not entry["stable"] for entry in lut.cells.values()),
        "lut_build_s": round(build_seconds, 1), "calibration": {"a_ms": calibration["a_ms"], "b": calibration["b"]},
        **{name: report[name] for name in ("samples", "repeats", "mdape", "within5", "within10", "spearman", "kendall")},
        "plot": report["plot"], "rows": report["rows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2", "cbm-resnet"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bins", type=int, default=None, help="bins per variable (default: the model's)")
    parser.add_argument("--resolution", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--channel-divisor", type=int, default=None, help="default: the device profile's")
    parser.add_argument("--calibrate", type=int, default=12, help="subnets measured for the calibration fit")
    parser.add_argument("--samples", type=int, default=50, help="random subnets measured for validation")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurement rounds per subnet")
    parser.add_argument("--out", type=Path, default=None, help="folder for LUTs and plots (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--separate-phases", action="store_true",
                        help="calibrate first, validate afterwards (a user's order; machine drift between the phases "
                             "then counts as prediction error) instead of measuring both sets in the same rounds")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hwbcnet-lut-bench-"))
    results = [run(model, args, out) for model in args.models]
    print(f"{'model':<12} {'cells':>6} {'build s':>8} {'MdAPE %':>8} {'±5 %':>6} {'±10 %':>6} {'Spearman':>9} {'Kendall':>8}")
    for r in results:
        print(f"{r['model']:<12} {r['cells']:>6} {r['lut_build_s']:>8.1f} {r['mdape']:>8.2f} {100 * r['within5']:>5.0f}% "
              f"{100 * r['within10']:>5.0f}% {r['spearman']:>9.3f} {r['kendall']:>8.3f}")
    print(json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in results], indent=1))
    write_report(results, args)


def write_report(results: list[dict], args) -> None:
    from _report import RESULTS, markdown_table, write_section

    RESULTS.mkdir(parents=True, exist_ok=True)
    mode = ("-separate-phases" if args.separate_phases else "") + (f"-{args.resolution}px" if args.resolution else "")
    (RESULTS / f"lut_accuracy_{args.device}{mode}.json").write_text(json.dumps(results, indent=1))
    rows = [[r["model"], r["bins"], r["channel_divisor"], r["cells"], r["unstable_cells"], f"{r['lut_build_s']:.0f}",
             f"{r['calibration']['a_ms']:.4f} + {r['calibration']['b']:.3f} x sum", f"{r['mdape']:.2f}",
             f"{100 * r['within5']:.0f}", f"{100 * r['within10']:.0f}", f"{r['spearman']:.3f}", f"{r['kendall']:.3f}"]
            for r in results]
    resolution = f" --resolution {args.resolution} --models {' '.join(args.models)}" if args.resolution else ""
    write_section(f"LUT accuracy ({args.device}{', separate phases' if args.separate_phases else ''}"
                  f"{f', {args.resolution} px' if args.resolution else ''})", (
        f"`python benchmarks/lut_accuracy.py --device {args.device}{resolution} --calibrate {args.calibrate} --samples "
        f"{args.samples} --repeats {args.repeats}{' --separate-phases' if args.separate_phases else ''}`: build the "
        f"LUT, fit T = a + b x sum(cells) on {args.calibrate} measured subnets (full, min, random) and predict "
        f"{args.samples} other random subnets measured end to end ({args.repeats} interleaved rounds, median); "
        + ("calibration measured first, validation afterwards. " if args.separate_phases else
           "calibration and validation subnets measured in the same interleaved rounds, so drift of the machine's "
           "speed between two phases does not count as prediction error (`hwbcnet lut validate --calibrate 12`). ")
        + f"Targets (issue 4): >= 95 % within +-10 %, "
        f"MdAPE <= 5 %, Spearman >= 0.95, resnet20 LUT <= 5 min. Machine: the 2-core development VM, ONNX Runtime "
        f"1 intra-op thread.\n\n"
        + markdown_table(["model", "N", "divisor", "cells", "unstable", "build s", "calibration (ms)", "MdAPE %", "within 5 %",
                          "within 10 %", "Spearman", "Kendall"], rows)))


if __name__ == "__main__":
    main()
