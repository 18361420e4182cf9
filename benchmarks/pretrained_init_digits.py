"""Pretrained initialisation of a bcnetv2 supernet (--weights) vs random init, on digits.

    python benchmarks/pretrained_init_digits.py [--quick] [--model resnet20] [--seeds 0 1]

1. Train the plain model (full width, no supernet) on digits: the "pretrained" state_dict a user would bring.
2. Build a bcnetv2 supernet (B = N+m groups) from it (cyclic extension, hwbcnet/supernet/supernet.py) and from
   random init; score the left and right paths at full and minimum width (validation accuracy after per-path
   BatchNorm recalibration) right after initialisation and after one epoch of supernet training.
Writes benchmarks/results/pretrained_init_digits.json and the "Pretrained initialisation" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def train_plain(space, data, epochs: int, seed: int, steps: int | None) -> dict:
    """SGD (Nesterov 0.9, lr 0.05 cosine, wd 5e-4, batch 32) on the full-width model, as `hwbcnet train` trains."""
    torch.manual_seed(seed)
    model = space.build_template()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    per_epoch = min(len(data.train) // 32, steps or 10**9)
    total, step = epochs * per_epoch, 0
    for epoch in range(epochs):
        model.train()
        for index, (images, labels) in enumerate(data.loader("train", 32, shuffle=True, seed=seed * 1000 + epoch,
                                                             drop_last=True)):
            if index >= per_epoch:
                break
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * 0.05 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    correct = total_images = 0
    with torch.no_grad():
        for images, labels in data.loader("val", 256):
            correct += int((model(images).argmax(1) == labels).sum())
            total_images += len(labels)
    return {"state_dict": model.state_dict(), "val_accuracy": 100.0 * correct / total_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="a few steps at 16 px (checks the script runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pretrained_init_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from hwbcnet.api import width_accuracy
    from hwbcnet.data import load_data
    from hwbcnet.space import build_space
    from hwbcnet.supernet.supernet import SuperNet
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    resolution = 16 if args.quick else args.resolution
    steps = 3 if args.quick else None
    rows, pretrained_accuracy = [], {}
    for seed in args.seeds:
        data = load_data("digits", resolution, seed=seed)
        space = build_space(args.model, resolution=resolution)
        started = time.perf_counter()
        plain = train_plain(space, data, 1 if args.quick else args.pretrain_epochs, seed, steps)
        pretrained_accuracy[seed] = plain["val_accuracy"]
        print(f"seed {seed}: plain {args.model} val {plain['val_accuracy']:.2f} % "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(folder) / "pretrained.pt"
            torch.save(plain["state_dict"], weights)
            for init in ("random", "pretrained"):
                torch.manual_seed(seed)
                supernet = SuperNet(space, "bcnetv2", weights=plain["state_dict"] if init == "pretrained" else None)
                stages = [("initialised", supernet)]
                config = TrainConfig(model=args.model, data="digits", principle="bcnetv2", resolution=resolution,
                                     epochs=1, batch_size=32, lr=0.05, seed=seed, max_steps_per_epoch=steps,
                                     weights=str(weights) if init == "pretrained" else None)
                trained = train_supernet(config, Path(folder) / init, progress=False)
                stages.append(("after 1 epoch", trained.supernet))
                for stage, net in stages:
                    for row in width_accuracy(net, "digits", seed=seed):
                        rows.append({"seed": seed, "init": init, "stage": stage, **row})
                        print(json.dumps(rows[-1]), flush=True)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "resolution": resolution, "pretrained_val":
                                        pretrained_accuracy, "rows": rows}, indent=1))
        write_report(rows, pretrained_accuracy, args)
    for row in rows:
        print(f"{row['init']:10} {row['stage']:14} {row['width']:4} left {row['left']:6.2f} right {row['right']:6.2f}")


def write_report(rows: list[dict], pretrained_accuracy: dict, args) -> None:
    import numpy as np

    from _report import markdown_table, write_section

    table = []
    for stage in ("initialised", "after 1 epoch"):
        for width in ("full", "min"):
            for init in ("random", "pretrained"):
                picked = [r for r in rows if r["stage"] == stage and r["width"] == width and r["init"] == init]
                table.append([stage, width, init, f"{np.mean([r['left'] for r in picked]):.2f}",
                              f"{np.mean([r['right'] for r in picked]):.2f}", f"{np.mean([r['score'] for r in picked]):.2f}"])
    plain = np.mean(list(pretrained_accuracy.values()))
    write_section("Pretrained initialisation (bcnetv2, digits)", (
        f"`python benchmarks/pretrained_init_digits.py --seeds {' '.join(map(str, args.seeds))}`: {args.model} at "
        f"{args.resolution} px, N = 8, m = 2 (B = 10 groups per variable). The pretrained weights are the plain "
        f"model trained for {args.pretrain_epochs} epochs on digits (SGD 0.05 cosine, batch 32; val accuracy "
        f"{plain:.2f} %). `--weights` fills every variable's enlarged width cyclically (supernet channel i = model "
        "channel i mod C), so both full-width paths compute the pretrained model exactly; the minimum width keeps "
        "the model's first (left) or rotated last (right) 2 of 8 groups. Validation accuracy (%) after per-path "
        f"BatchNorm recalibration, mean over {len(args.seeds)} seed(s); one epoch = one pass of complementary "
        "training (SGD 0.05 cosine over that epoch).\n\n"
        + markdown_table(["stage", "width", "init", "left", "right", "avg"], table)))


if __name__ == "__main__":
    main()
