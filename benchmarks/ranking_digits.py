"""Supernet ranking experiment on digits (issue 3, item 7): how well do ua, bcnet and bcnetv2 supernets rank archs?

1. A mini ground truth: `--archs` distinct archs drawn uniformly (fixed seed) from a small space, each trained from
   scratch as a standalone pruned model (fresh init, same recipe for all) with `--gt-seeds` training seeds; the GT is
   the mean validation accuracy. Cached in benchmarks/results/ranking_digits_gt.json and resumable (archs already
   trained are skipped), so a killed run continues where it stopped.
2. Supernets of every principle trained with equal compute: the same number of forward/backward passes. `ua` (the
   AutoSlim sandwich rule) makes 4 passes per step (full, min, 2 random), bcnet/bcnetv2 make 2 (a width and its
   complement), so the bc supernets train for twice the epochs of ua (same batch size, same LR schedule shape).
3. Every GT arch scored by every supernet (BN recalibration on the training images, validation accuracy; bc = mean of
   the left and right paths), then Kendall tau and Spearman rho against the GT, per supernet seed.

All three supernets use the same space with m = 1 (widths 1..N bins for every variable), so every GT arch is valid in
all of them; bcnetv2 with m = 1 means B = N + 1 groups per variable.

    python benchmarks/ranking_digits.py          # the full experiment (~20 min, one core); writes docs/benchmarks.md
    python benchmarks/ranking_digits.py --quick  # a smoke run (< 1 min) in a temporary folder; prints only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pool

import argparse
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _report import RESULTS, ROOT, markdown_table, write_section
from scipy.stats import kendalltau, spearmanr

from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.data import load_data
from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import atomic_write_json, read_json
from hwbcnet.space.space import build_space
from hwbcnet.supernet.extract import build_standalone
from hwbcnet.supernet.principles import get_principle
from hwbcnet.training.scoring import EvalData, score_arch
from hwbcnet.training.trainer import TrainConfig, load_supernet, train_supernet

SECTION = "Supernet ranking on digits"
GT_KIND = "hwbcnet.ranking-digits-gt"
RESULT_KIND = "hwbcnet.ranking-digits"
PRINCIPLES = ("ua", "bcnet", "bcnetv2")
PASSES_PER_STEP = {"ua": 4, "bcnet": 2, "bcnetv2": 2}
WINDOW = (0.4, 0.5)  # the FLOPs window (fractions of the full model) of a `--flops 50%` search


@dataclass(frozen=True)
class Setup:
    """Everything the GT depends on; a cached GT file made with another setup is refused."""

    model: str = "cbm-resnet"
    width_mult: float = 1 / 32  # channels 8 / 16: narrow enough that width decides accuracy on digits
    resolution: int = 8  # the digits' native size
    bins: int = 4
    min_bins: int = 1
    archs: int = 100
    arch_seed: int = 0
    gt_epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4


def make_space(setup: Setup):
    return build_space(setup.model, bins=setup.bins, min_bins=setup.min_bins, resolution=setup.resolution,
                       width_mult=setup.width_mult)


def sample_archs(space, count: int, seed: int) -> np.ndarray:
    """`count` distinct archs, uniform over the space, in draw order."""
    rng, picked, seen = np.random.default_rng(seed), [], set()
    while len(picked) < count:
        arch = space.random_archs(rng, 1)[0]
        if tuple(arch) not in seen:
            seen.add(tuple(arch))
            picked.append(arch)
    return np.array(picked)


def split_tensors(splits, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images, labels); digits needs no augmentation, so one stack serves every epoch."""
    dataset = splits.dataset(split)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), dataset.labels


def train_from_scratch(space, arch, setup: Setup, seed: int, train, held_out: dict) -> dict:
    """{split: accuracy %} on the held-out splits of the standalone pruned model after the fixed recipe: SGD (Nesterov
    momentum, weight decay) with a per-step cosine LR, the same as supernet training."""
    torch.manual_seed(seed)
    model = build_standalone(space, arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=setup.lr, momentum=setup.momentum,
                                weight_decay=setup.weight_decay, nesterov=True)
    images, labels = train
    steps_per_epoch = len(images) // setup.batch_size
    total = steps_per_epoch * setup.gt_epochs
    order = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    for _ in range(setup.gt_epochs):
        permutation = torch.randperm(len(images), generator=order)
        for i in range(steps_per_epoch):
            index = permutation[i * setup.batch_size:(i + 1) * setup.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * setup.lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    with torch.no_grad():
        return {split: 100.0 * float((model(x).argmax(1) == y).float().mean()) for split, (x, y) in held_out.items()}


def build_ground_truth(setup: Setup, gt_seeds: int, path: Path, log) -> dict:
    space = make_space(setup)
    archs = sample_archs(space, setup.archs, setup.arch_seed)
    if path.exists():
        gt = read_json(path, kind=GT_KIND, schema_version=1)
        if gt["setup"] != asdict(setup):
            raise HwbcnetError(f"{path} was made with another setup ({gt['setup']}); delete it to rebuild")
    else:
        gt = {"kind": GT_KIND, "schema_version": 1, "setup": asdict(setup), "archs": {}}
    splits = load_data("digits", setup.resolution)
    train = split_tensors(splits, "train")
    held_out = {split: split_tensors(splits, split) for split in ("val", "test")}
    gt["held_out_images"] = {split: len(labels) for split, (_, labels) in held_out.items()}
    started = time.perf_counter()
    for index, arch in enumerate(archs):
        code = space.format_arch(arch)
        record = gt["archs"].setdefault(code, {"accuracy": {}})
        todo = [s for s in range(gt_seeds) if str(s) not in record["accuracy"]]
        for seed in todo:
            t0 = time.perf_counter()
            record["accuracy"][str(seed)] = train_from_scratch(space, arch, setup, seed, train, held_out)
            record.setdefault("seconds", {})[str(seed)] = round(time.perf_counter() - t0, 2)
        if todo:
            atomic_write_json(path, gt)  # after every arch: a killed run loses at most one arch's training
            accs = {s: round(a["val"], 1) for s, a in record["accuracy"].items()}
            log(f"GT {index + 1}/{len(archs)} {code}: val acc per seed {accs} ({time.perf_counter() - started:.0f} s)")
    return gt


def train_and_score(setup: Setup, principle: str, seed: int, ua_epochs: int, out_dir: Path, archs: np.ndarray,
                    max_steps: int | None, log) -> dict:
    """Train (or reuse a finished) supernet and score every arch; {"left": [...], ["right": [...],] "score": [...]}."""
    epochs = ua_epochs * PASSES_PER_STEP["ua"] // PASSES_PER_STEP[principle]
    config = TrainConfig(model=setup.model, data="digits", principle=principle, bins=setup.bins,
                         min_bins=setup.min_bins, resolution=setup.resolution, width_mult=setup.width_mult,
                         epochs=epochs, batch_size=setup.batch_size, lr=setup.lr, momentum=setup.momentum,
                         weight_decay=setup.weight_decay, seed=seed, max_steps_per_epoch=max_steps)
    torch.manual_seed(seed)
    checkpoint = out_dir / "supernet.pt"
    result = train_supernet(config, out_dir, resume=checkpoint.exists(), progress=False)
    supernet, payload = load_supernet(result.checkpoint)
    train_s = sum(epoch["seconds"] for epoch in payload["history"])  # also right for a checkpoint trained earlier
    splits = load_data("digits", setup.resolution, seed=seed)
    eval_data = EvalData.from_splits(splits, batch_size=128, calibration_batches=10, seed=0)
    t0 = time.perf_counter()
    scores: dict[str, list[float]] = {}
    for arch in archs:
        for key, value in score_arch(supernet, arch, eval_data).items():
            scores.setdefault(key, []).append(value)
    score_s = time.perf_counter() - t0
    log(f"{principle} seed {seed}: {epochs} epochs x {payload['step'] // max(epochs, 1)} steps, "
        f"train {train_s:.0f} s, score {score_s:.0f} s")
    return {"principle": principle, "seed": seed, "epochs": epochs, "steps": payload["step"],
            "passes": payload["step"] * PASSES_PER_STEP[principle], "train_seconds": round(train_s, 1),
            "score_seconds": round(score_s, 1),
            "train_macs": payload["step"] * setup.batch_size * macs_per_step(supernet.space, principle),
            "scores": scores}


def macs_per_step(space, principle: str, ua_random_widths: int = 2) -> float:
    """Expected forward MACs per image of one training step (exact: averaged over every arch of the small space)."""
    cost, archs = flops_cost(space), space.all_archs()
    if principle == "ua":  # full + min + random widths
        return float(cost(space.full_arch()[None])[0] + cost(space.min_arch()[None])[0]
                     + ua_random_widths * cost(archs).mean())
    rule = get_principle(principle)
    complement = np.array([0] + [rule.complement(c, space.bins, space.min_bins) for c in range(1, space.bins + 1)])
    return float((cost(archs) + cost(complement[archs])).mean())


def correlations(scores, truth) -> dict:
    return {"kendall_tau": float(kendalltau(scores, truth)[0]), "spearman_rho": float(spearmanr(scores, truth)[0])}


def beyond_flops(scores: np.ndarray, truth: np.ndarray, relative_flops: np.ndarray) -> float:
    """Kendall tau of the residuals of scores and GT after a quadratic fit on log FLOPs each."""
    x = np.log(relative_flops)

    def residual(y):
        return y - np.polyval(np.polyfit(x, y, 2), x)

    return float(kendalltau(residual(scores), residual(truth))[0])


def mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 12 archs, tiny training, temporary folder")
    parser.add_argument("--gt-seeds", type=int, default=3, help="from-scratch training seeds per arch")
    parser.add_argument("--supernet-seeds", type=int, default=3)
    parser.add_argument("--ua-epochs", default="15,45",
                        help="compute budgets as ua epochs, comma-separated; bcnet/bcnetv2 get twice as many")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="ranking_digits_") as work:
            experiment(Setup(archs=12, gt_epochs=1), Path(work) / "gt.json", Path(work), gt_seeds=2, net_seeds=1,
                       ua_epochs=[1], max_steps=4, write=False)
    else:
        experiment(Setup(), RESULTS / "ranking_digits_gt.json", ROOT / "runs" / "ranking_digits", args.gt_seeds,
                   args.supernet_seeds, [int(e) for e in args.ua_epochs.split(",")], max_steps=None, write=True)


def experiment(setup: Setup, gt_path: Path, runs: Path, gt_seeds: int, net_seeds: int, ua_epochs: list[int],
               max_steps: int | None, write: bool) -> None:
    """GT (cached in `gt_path`), supernets (checkpoints under `runs`), rank correlations; with `write`, the results
    JSON and the docs section."""
    log = lambda message: print(message, flush=True)  # noqa: E731
    started = time.perf_counter()
    space = make_space(setup)
    archs = sample_archs(space, setup.archs, setup.arch_seed)
    gt = build_ground_truth(setup, gt_seeds, gt_path, log)
    gt_seconds = sum(sum(gt["archs"][space.format_arch(a)]["seconds"].values()) for a in archs)
    accuracy = [[gt["archs"][space.format_arch(a)]["accuracy"][str(s)] for s in range(gt_seeds)] for a in archs]
    counts = gt["held_out_images"]
    # GT = accuracy on val and test together (539 images rather than 270: half the sampling noise), mean over seeds
    held_out = np.array([[(counts["val"] * acc["val"] + counts["test"] * acc["test"]) / (counts["val"] + counts["test"])
                          for acc in seeds] for seeds in accuracy])
    truth = held_out.mean(1)
    # the test split alone never touches supernet scoring (which uses val): a check that sharing val inflates nothing
    truth_test = np.array([[acc["test"] for acc in seeds] for seeds in accuracy]).mean(1)
    pairs = [(i, j) for i in range(gt_seeds) for j in range(i + 1, gt_seeds)]
    noise = [correlations(held_out[:, i], held_out[:, j]) for i, j in pairs]

    flops = flops_cost(space)
    relative_flops = flops(archs) / flops.full
    in_window = (relative_flops >= WINDOW[0]) & (relative_flops <= WINDOW[1])

    def metrics(scores) -> dict:
        scores = np.asarray(scores, dtype=np.float64)
        return {**correlations(scores, truth), "tau_test_gt": float(kendalltau(scores, truth_test)[0]),
                "tau_window": float(kendalltau(scores[in_window], truth[in_window])[0]),
                "tau_beyond_flops": beyond_flops(scores, truth, relative_flops)}

    runs_out = []
    for epochs in ua_epochs:
        for principle in PRINCIPLES:
            for seed in range(net_seeds):
                run = train_and_score(setup, principle, seed, epochs, runs / f"{principle}-e{epochs}-s{seed}", archs,
                                      max_steps, log)
                run.update(ua_epochs=epochs, vs_gt=metrics(run["scores"]["score"]),
                           left_vs_gt=metrics(run["scores"]["left"]))
                runs_out.append(run)
    baselines = {"flops": metrics(flops(archs)), "params": metrics(params_cost(space)(archs))}

    def cell(values) -> str:
        return mean_std(values) if len(values) > 1 else f"{values[0]:.3f}"

    rows = []
    if noise:
        rows.append([f"one GT seed vs another ({len(pairs)} pairs)", "-", "-", "-",
                     cell([n["kendall_tau"] for n in noise]), cell([n["spearman_rho"] for n in noise]), "-", "-", "-"])
    for name, m in baselines.items():
        rows.append([f"{name} of the arch (no training)", "-", "-", "-", f"{m['kendall_tau']:.3f}",
                     f"{m['spearman_rho']:.3f}", "-", f"{m['tau_window']:.3f}",
                     "-" if name == "flops" else f"{m['tau_beyond_flops']:.3f}"])
    for epochs in ua_epochs:
        for principle in PRINCIPLES:
            mine = [r for r in runs_out if r["principle"] == principle and r["ua_epochs"] == epochs]
            first = mine[0]

            def over(key, metric, mine=mine):
                return cell([r[key][metric] for r in mine])

            rows.append([principle, f"{first['epochs']} x {first['steps'] // max(first['epochs'], 1)}",
                         first["passes"], f"{first['train_macs'] / 1e9:.1f}", over("vs_gt", "kendall_tau"),
                         over("vs_gt", "spearman_rho"), over("left_vs_gt", "kendall_tau"),
                         over("vs_gt", "tau_window"), over("vs_gt", "tau_beyond_flops")])
    table = markdown_table(["scorer", "epochs x steps", "fwd/bwd passes", "training GMACs (fwd)",
                            "Kendall tau", "Spearman rho", "tau, left path only",
                            f"tau in the {WINDOW[1]:.0%} FLOPs window ({int(in_window.sum())} archs)",
                            "tau beyond FLOPs"], rows)
    elapsed = time.perf_counter() - started
    print(table)
    print(f"GT: mean held-out acc {truth.mean():.2f} % (range {truth.min():.2f}..{truth.max():.2f}); "
          f"{gt_seconds:.0f} s of from-scratch training in the cache; this run {elapsed:.0f} s")
    if not write:
        return
    atomic_write_json(RESULTS / "ranking_digits.json", {
        "kind": RESULT_KIND, "schema_version": 1, "setup": asdict(setup), "gt_seeds": gt_seeds,
        "ua_epochs": ua_epochs, "flops_window": WINDOW, "archs": [space.format_arch(a) for a in archs],
        "gt_mean": truth.tolist(), "gt_test_mean": truth_test.tolist(), "gt_seed_pairs": pairs, "gt_noise": noise,
        "baselines": baselines, "supernets": runs_out, "seconds": round(elapsed, 1),
        "gt_training_seconds": round(gt_seconds, 1)})
    test_only = {p: np.mean([r["vs_gt"]["tau_test_gt"] for r in runs_out if r["principle"] == p]) for p in PRINCIPLES}
    body = ("`python benchmarks/ranking_digits.py` (full results, per seed: `benchmarks/results/ranking_digits.json`; "
            "the cached ground truth: `benchmarks/results/ranking_digits_gt.json`).\n\n"
            f"Space: `{setup.model}` at width_mult {setup.width_mult:g} (channels "
            f"{sorted({v.channels for v in space.variables})}), {setup.resolution} px, N = {setup.bins}, m = "
            f"{setup.min_bins} ({space.num_vars} variables, {space.size} archs), for all three principles "
            f"(bcnetv2 with m = 1 has B = N + 1 = {setup.bins + 1} groups). "
            "Data: digits (train 1258 / val 270 / test 269).\n\n"
            f"Ground truth: {setup.archs} distinct archs drawn uniformly (seed {setup.arch_seed}), each trained "
            f"from scratch as a standalone pruned model for {setup.gt_epochs} epochs (SGD, Nesterov momentum "
            f"{setup.momentum}, lr {setup.lr} cosine per step, weight decay {setup.weight_decay}, batch "
            f"{setup.batch_size}) with {gt_seeds} seeds; GT = accuracy on the val and test splits together "
            f"(539 images), mean over the seeds ({truth.mean():.2f} %, range {truth.min():.2f}..{truth.max():.2f}). "
            "The first row is the GT's own noise: one training seed against another (the 3-seed mean is less noisy, "
            "but no scorer can be expected to reach much above it). Supernet scores use the val split only; against "
            "a test-only GT, which shares no images with them, the mean taus are "
            + ", ".join(f"{p} {t:.3f}" for p, t in test_only.items()) + ".\n\n"
            "Supernets, equal compute = equal forward/backward passes: ua (sandwich: full, min, 2 random, in-place "
            "distillation) makes 4 passes per step, bcnet and bcnetv2 (a width and its complement) make 2 per step "
            f"and train twice the epochs ({' and '.join(str(e) for e in ua_epochs)} ua epochs). In multiply-adds ua "
            "still costs more per pass (its full-width pass), see the GMACs column. Same batch, lr, schedule and "
            "weight decay as the GT recipe. Scores: BN recalibrated on the 1258 training images, accuracy on the val "
            f"split; bc = mean of the left and right paths. Mean ± std over {net_seeds} supernet seeds.\n\n"
            f"Columns: `tau in the FLOPs window` ranks only the archs a `--flops {WINDOW[1]:.0%}` search compares "
            f"(FLOPs in [{WINDOW[0]:.0%}, {WINDOW[1]:.0%}] of the full model); `tau beyond FLOPs` is the Kendall tau "
            "of what is left of scores and GT after a quadratic fit on log FLOPs (how well a scorer ranks archs "
            "beyond what their FLOPs already say).\n\n" + table +
            f"\nCompute, one core: {gt_seconds / 60:.1f} min of from-scratch GT training (cached), "
            f"{sum(r['train_seconds'] for r in runs_out) / 60:.1f} min of supernet training (checkpoints reused by "
            f"later runs), {sum(r['score_seconds'] for r in runs_out) / 60:.1f} min of scoring; this run took "
            f"{elapsed / 60:.1f} min.")
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
