"""Accuracy of ua, bcnet and bcnetv2 supernets on digits: full and minimum width, left/right path and their average.

    python benchmarks/principles_digits.py [--quick] [--epochs 8] [--resolution 32] [--seeds 0 1]

Each principle trains the same model with the same recipe (`hwbcnet train` defaults: SGD 0.05 cosine, batch 32); the
validation split is carved from the training data. Writes benchmarks/results/principles_digits.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch of 5 steps at 16 px (checks the script runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "principles_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from hwbcnet.api import width_accuracy
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    rows = []
    for seed in args.seeds:
        for principle in ("ua", "bcnet", "bcnetv2"):
            config = TrainConfig(model=args.model, data="digits", principle=principle, seed=seed,
                                 resolution=16 if args.quick else args.resolution, epochs=1 if args.quick else args.epochs,
                                 batch_size=32, lr=0.05, max_steps_per_epoch=5 if args.quick else None)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                result = train_supernet(config, folder, progress=False)
                seconds = time.perf_counter() - started
                for row in width_accuracy(result.supernet, "digits"):
                    rows.append({"principle": principle, "seed": seed, "min_bins": result.space.min_bins,
                                 "train_seconds": seconds, **row})
                    print(json.dumps(rows[-1]), flush=True)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "epochs": args.epochs, "resolution": args.resolution,
                                        "rows": rows}, indent=1))
        write_report(rows, args)
    print(f"{'principle':9} {'width':5} {'left':>6} {'right':>6} {'avg':>6}")
    for row in rows:
        print(f"{row['principle']:9} {row['width']:5} {row['left']:6.2f} {row.get('right', float('nan')):6.2f} "
              f"{row['score']:6.2f}")


def write_report(rows: list[dict], args) -> None:
    import numpy as np

    from _report import markdown_table, write_section

    table = []
    for principle in ("ua", "bcnet", "bcnetv2"):
        for width in ("full", "min"):
            picked = [r for r in rows if r["principle"] == principle and r["width"] == width]
            mean = {key: np.mean([r[key] for r in picked]) if key in picked[0] else None
                    for key in ("left", "right", "score")}
            table.append([principle, picked[0]["min_bins"], width, picked[0]["arch"],
                          f"{mean['left']:.2f}", "-" if mean["right"] is None else f"{mean['right']:.2f}",
                          f"{mean['score']:.2f}"])
    seconds = np.mean([r["train_seconds"] for r in rows])
    write_section("Supernet principles on digits", (
        f"`python benchmarks/principles_digits.py --seeds {' '.join(map(str, args.seeds))}`: {args.model} at "
        f"{args.resolution} px, {args.epochs} epochs, batch 32, SGD 0.05 cosine, N=8 bins (m=1 for ua and bcnet, m=2 "
        f"for bcnetv2, as `hwbcnet train` defaults). Validation accuracy (%) after per-path BN recalibration, mean over "
        f"{len(args.seeds)} seeds; `min` is every variable at m bins (so bcnetv2's smallest width is larger than the "
        f"others'). ua trains 4 paths per step (sandwich rule), bcnet/bcnetv2 2. Mean training time "
        f"{seconds:.0f} s per run on one core.\n\n"
        + markdown_table(["principle", "m", "width", "arch", "left", "right", "avg"], table)))


if __name__ == "__main__":
    main()
