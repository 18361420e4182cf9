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
    print(f"{'principle':9} {'width':5} {'left':>6} {'right':>6} {'avg':>6}")
    for row in rows:
        print(f"{row['principle']:9} {row['width']:5} {row['left']:6.2f} {row.get('right', float('nan')):6.2f} "
              f"{row['score']:6.2f}")


if __name__ == "__main__":
    main()
