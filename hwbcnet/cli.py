"""The `hwbcnet` command line: a thin typer layer over the Python API (see README for a tour)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from hwbcnet.errors import HwbcnetError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Hardware-aware channel-width search with BCNet/BCNetV2 supernets.")

ModelOpt = typer.Option(..., "--model", "-m", help="Model name (see `hwbcnet models`).")
BinsOpt = typer.Option(None, "--bins", help="N: bins per width variable (default: the model's).")
MinBinsOpt = typer.Option(None, "--min-bins", help="m: minimum width in bins (default: the model's; 1 for ua/bcnet).")
ResolutionOpt = typer.Option(None, "--resolution", help="Input resolution in pixels (default: the model's).")
WidthMultOpt = typer.Option(1.0, "--width-mult", help="Width multiplier of the full model.")


def _space(model, bins=None, min_bins=None, resolution=None, width_mult=1.0, num_classes=10):
    from hwbcnet.space import build_space

    return build_space(model, bins=bins, min_bins=min_bins, resolution=resolution, width_mult=width_mult,
                       num_classes=num_classes)


@app.command()
def models():
    """List the models with their number of width variables and search-space size."""
    from hwbcnet.reporting import console, table
    from hwbcnet.space import MODELS, build_space

    rows = []
    for name, entry in MODELS.items():
        space = build_space(name)
        rows.append([name, space.num_vars, f"{space.bins}/{space.min_bins}", f"{space.size:.3g}", space.resolution,
                     entry.description])
    console.print(table("models", ["name", "width vars", "N/m", "space size", "resolution", "description"], rows))


@app.command()
def info(
    model: str = ModelOpt,
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Arch code, comma list, full, min, or a JSON file."),
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Also predict latency from this device's LUT."),
    lut: Optional[Path] = typer.Option(None, "--lut", help="LUT file (default: lut/<device>/<model>-<res>-b<batch>.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Widths per variable, FLOPs, params (and predicted latency with --device) of an arch (default: full width)."""
    from hwbcnet.api import describe_arch

    space = _space(model, bins, min_bins, resolution, width_mult)
    result = describe_arch(space, arch or "full", device=device, lut_path=lut)
    if as_json:
        print(json.dumps(result))
        return
    from hwbcnet.reporting import console, table

    rows = [[name, result["widths"][name], result["channels"][name], space.variables[i].channels]
            for i, name in enumerate(result["widths"])]
    console.print(table(f"{model} arch {result['code']}", ["variable", "bins", "channels", "full channels"], rows))
    summary = [["FLOPs (MACs)", f"{result['flops']:,}"], ["params", f"{result['params']:,}"]]
    if "latency_ms" in result:
        summary.append([f"latency ({device})", f"{result['latency_ms']:.3f} ms"])
    console.print(table("costs", ["metric", "value"], summary, justify_numbers=False))


@app.command()
def train(
    model: str = ModelOpt,
    data: str = typer.Option("digits", "--data", help="digits | cifar10:<dir> | imagefolder:<dir> | synthetic[:n]"),
    supernet: str = typer.Option("bcnetv2", "--supernet", help="Slicing principle: ua | bcnet | bcnetv2."),
    epochs: int = typer.Option(10, "--epochs"),
    out: Path = typer.Option(..., "--out", help="Output folder; the checkpoint is OUT/supernet.pt."),
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(0.05, "--lr"),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    seed: int = typer.Option(0, "--seed"),
    max_steps_per_epoch: Optional[int] = typer.Option(None, "--max-steps-per-epoch", help="Cap steps (quick runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/supernet.pt."),
):
    """Train a slimmable supernet (left/right paths, complementary widths; sandwich rule for ua)."""
    from hwbcnet.training.distributed import DistContext
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    config = TrainConfig(model=model, data=data, principle=supernet, bins=bins, min_bins=min_bins,
                         resolution=resolution, width_mult=width_mult, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, seed=seed, max_steps_per_epoch=max_steps_per_epoch)
    from hwbcnet.api import width_accuracy_table
    from hwbcnet.reporting import console

    with DistContext.from_environment() as dist:
        result = train_supernet(config, out, resume=resume, dist=dist)
        width_accuracy_table(result.supernet, config, dist=dist)  # every rank scores its shard
        if dist is None or dist.rank == 0:
            console.print(f"checkpoint: {result.checkpoint}")


@app.command()
def search(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Supernet checkpoint (DIR/supernet.pt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Result file, e.g. DIR/search.json."),
    flops: Optional[str] = typer.Option(None, "--flops", help="FLOPs budget: 50% of full, or 300M."),
    params: Optional[str] = typer.Option(None, "--params", help="Params budget: 2M or 40%."),
    latency: Optional[str] = typer.Option(None, "--latency", help="Latency budget: 10ms, 800us or 60% (needs --device)."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device profile whose LUT predicts latency."),
    lut: Optional[Path] = typer.Option(None, "--lut", help="LUT file (default: lut/<device>/<model>-<res>-b<batch>.json)."),
    lower: float = typer.Option(0.8, "--lower", help="Legal window is [lower x budget, budget] for every cost."),
    init: str = typer.Option("prior", "--init", help="Initial population: prior | random."),
    population: int = typer.Option(50, "--population"),
    generations: int = typer.Option(40, "--generations"),
    top_k: int = typer.Option(10, "--top-k"),
    seed: int = typer.Option(0, "--seed"),
    calibration_batches: int = typer.Option(20, "--bn-batches", help="Training batches for per-path BN recalibration."),
):
    """Evolutionary width search under budgets, scored by the supernet (resumable)."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.evolution import EvolutionConfig
    from hwbcnet.search.runner import run_search
    from hwbcnet.training.distributed import DistContext

    evolution = EvolutionConfig(population=population, generations=generations, top_k=top_k,
                                mutations=population // 2, crossovers=population - population // 2)
    with DistContext.from_environment() as dist:
        result = run_search(checkpoint, out, flops=flops, params=params, latency=latency, device=device, lut_path=lut,
                            lower=lower, init=init, evolution=evolution, seed=seed,
                            calibration_batches=calibration_batches, dist=dist)
    if dist is not None and dist.rank != 0:
        return
    cost_cols = ["flops", "params"] + (["latency_ms"] if "latency_ms" in result["costs"] else [])
    rows = [[i + 1, t["code"], t["score"], *[t["costs"][c] for c in cost_cols]] for i, t in enumerate(result["top"])]
    console.print(table(f"top-{len(rows)} ({', '.join(b['cost'] + ' <= ' + b['budget'] for b in result['budgets'])})",
                        ["rank", "arch", "score", *cost_cols], rows))
    console.print(f"chosen {result['arch']['code']}  score {result['score']:.2f}  -> {out}  (plot {result['pareto_png']})")


@app.command()
def extract(
    search_result: Path = typer.Option(..., "--search", "-s", help="search.json from `hwbcnet search`."),
    out: Path = typer.Option(..., "--out", "-o", help="Subnet file, e.g. DIR/subnet.pt."),
    path: Optional[str] = typer.Option(None, "--path", help="Supernet path to inherit: left | right (default: the "
                                       "higher-scoring one)."),
):
    """Build the standalone pruned model with weights inherited from the supernet."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.extract import extract_subnet

    subnet = extract_subnet(search_result, out, path)
    console.print(table(f"subnet {subnet['arch']['code']} ({subnet['path']} path) -> {out}", ["split", "accuracy %"],
                        [[k, v] for k, v in subnet["accuracy"].items()]))


@app.command()
def finetune(
    subnet: Path = typer.Option(..., "--subnet", help="subnet.pt from `hwbcnet extract`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output (default: overwrite --subnet atomically)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data spec (default: the one it was searched on)."),
    epochs: int = typer.Option(5, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(0.01, "--lr"),
    seed: int = typer.Option(0, "--seed"),
):
    """Fine-tune an extracted subnet and report accuracy before and after."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.extract import finetune_subnet

    result = finetune_subnet(subnet, out, data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    console.print(table("fine-tuning", ["split", "before %", "after %"],
                        [[k, result["before"][k], result["after"][k]] for k in result["before"]]))


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks of the search.")
app.add_typer(bench_app, name="bench")


@bench_app.command("cbm")
def bench_cbm(
    space: str = typer.Option("resnet", "--space", help="resnet | mobilenet"),
    flops: str = typer.Option("50%", "--flops"),
    queries: int = typer.Option(500, "--queries", help="Oracle queries per method and seed."),
    seeds: int = typer.Option(10, "--seeds"),
    lower: float = typer.Option(0.8, "--lower"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A cbm-* supernet: rank all archs with it."),
    limit: Optional[int] = typer.Option(None, "--limit", help="With --checkpoint: score only this many random archs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Channel-Bench-Macro: evolution (prior/random init) vs random search with the ground truth as oracle."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.cbm_bench import run_cbm_bench, supernet_ranking

    result = run_cbm_bench(space, flops, queries, seeds, lower)
    if checkpoint is not None:
        result["supernet_ranking"] = supernet_ranking(str(checkpoint), space, limit=limit)
    if as_json:
        print(json.dumps(result))
        return
    rows = [[m, v["acc_mean"], v["rank_mean"], v["regret_mean"], f"{v['wins_vs_random']}/{seeds}"]
            for m, v in result["methods"].items()]
    console.print(table(f"CBM {space}, FLOPs <= {flops} ({result['in_budget']} archs in window, best "
                        f"{result['best_in_budget']:.2f}%), {queries} queries x {seeds} seeds",
                        ["method", "GT acc %", "rank", "regret", "wins vs random"], rows))
    if "supernet_ranking" in result:
        r = result["supernet_ranking"]
        console.print(f"supernet ranking over {r['archs']} archs: Kendall tau {r['kendall_tau']:.3f}, "
                      f"Spearman rho {r['spearman_rho']:.3f}")


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, prog_name="hwbcnet")
    except HwbcnetError as exc:
        print(f"hwbcnet: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("hwbcnet: interrupted", file=sys.stderr)
        sys.exit(130)
