"""The `hwbcnet` command line: a thin typer layer over the Python API (see README for a tour).

Every option is declared through a value type of hwbcnet/cli_options.py, which checks it when the command line is
parsed (read the convention at the top of that module before adding an option); bad values end in one line and
exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from hwbcnet.cli_options import (ARCH, CALIB, DATA, DEVICE, MARGIN, MODEL, MODEL_KWARGS, MODULE_GLOB, Budget,
                                 Choice, ExistingFile, Float, Int, OutputDir, OutputFile)
from hwbcnet.errors import HwbcnetError, MissingRuntimeError
from hwbcnet.search.defaults import (DEFAULT_BN_BATCHES, DEFAULT_GENERATIONS, DEFAULT_POPULATION, DEFAULT_SCREEN,
                                     FINAL_BN_BATCHES, FINAL_RESCORE)

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on click
    from click import exceptions as click_exceptions


class _OneLineValueErrors(TyperGroup):
    """typer's own errors about option values (no value after an option, a value given to a flag, a missing
    option) as the same one-line HwbcnetError as the validators'. Unknown options and commands keep typer's usage
    message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click_exceptions.MissingParameter as exc:
            help_text = getattr(exc.param, "help", None)
            raise HwbcnetError(f"missing option {_option_name(exc.param)}" + (f": {help_text}" if help_text else "")) \
                from None
        except click_exceptions.BadParameter as exc:  # a converter other than ours (a contract violation)
            raise HwbcnetError(f"{_option_name(exc.param)}: {exc.message}") from None
        except click_exceptions.BadOptionUsage as exc:
            reason = ("expected a value after it" if "requires an argument" in exc.message else
                      "a flag takes no value" if "does not take a value" in exc.message else exc.message.rstrip("."))
            raise HwbcnetError(f"{exc.option_name}: {reason}") from None


def _option_name(param) -> str:
    return max(getattr(param, "opts", None) or [getattr(param, "name", "?")], key=len)


app = typer.Typer(cls=_OneLineValueErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Hardware-aware channel-width search with BCNet/BCNetV2 supernets.")

# Value types shared by several options
RESOLUTION = Int(8, 2048)
SEED = Int(0, 2**32 - 1)
EPOCHS = Int(1, 10_000)
BATCH_SIZE = Int(1, 65_536)
LEARNING_RATE = Float(0, 10, min_open=True)
LOWER = Float(0, 1, max_open=True)
MAX_STEPS = Int(1, 10**9)
REPEATS = Int(1, 1_000)
CHECKPOINT = ExistingFile(".pt", ".pth")
SUBNET = ExistingFile(".pt", ".pth")
SEARCH_RESULT = ExistingFile(".json")
LUT_FILE = ExistingFile(".json")

ModelOpt = MODEL.option(..., "--model", "-m", help="Built-in name (`hwbcnet models`), torchvision:NAME, timm:NAME, "
                        "package.module:factory or path/to/file.py:factory.")
ModelKwargsOpt = MODEL_KWARGS.option(None, "--model-kwargs", help="JSON keyword arguments of the model's factory, "
                                     "e.g. '{\"width_mult\": 0.5}'.")
FixedOpt = MODULE_GLOB.option(None, "--fixed", help="Keep modules matching this glob at full width (repeatable), e.g. "
                        "'features.0.*'.")
ChannelDivisorOpt = Int(1, 1024).option(None, "--channel-divisor", help="Every width a multiple of this (the full "
                                        "width stays exact). Default: the device profile's (8 for TensorRT fp16), "
                                        "else 1.")
BinsOpt = Int(2, 64).option(None, "--bins", help="N: bins per width variable (default: the model's).")
MinBinsOpt = Int(1, 64).option(None, "--min-bins", help="m: minimum width in bins (default: the model's; 1 for "
                               "ua/bcnet).")
ResolutionOpt = RESOLUTION.option(None, "--resolution", help="Input resolution in pixels (default: the model's).")
WidthMultOpt = Float(0.05, 4).option(1.0, "--width-mult", help="Width multiplier of the full model.")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
MaxStepsOpt = MAX_STEPS.option(None, "--max-steps-per-epoch", help="Cap steps (quick runs).")
DeviceOpt = DEVICE.option(..., "--device", "-d", help="Device profile name (see `hwbcnet devices`), jetson or gpu for "
                          "this machine's own, or a .toml path.")
LutOpt = LUT_FILE.option(None, "--lut", help="LUT file (default: lut/<device>/<model>-<resolution>-b<batch>.json).")


def _space(model, bins=None, min_bins=None, resolution=None, width_mult=1.0, num_classes=10, model_kwargs=None,
           fixed=None, channel_divisor=None):
    from hwbcnet.space import build_space

    return build_space(model, bins=bins, min_bins=min_bins, resolution=resolution, width_mult=width_mult,
                       num_classes=num_classes, model_kwargs=model_kwargs, fixed=tuple(fixed or ()),
                       channel_divisor=1 if channel_divisor is None else channel_divisor)


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
    console.print("Also: --model torchvision:NAME | timm:NAME (when installed) | package.module:factory | "
                  "path/to/file.py:factory, with --model-kwargs JSON.")


@app.command()
def info(
    model: str = ModelOpt,
    model_kwargs: Optional[str] = ModelKwargsOpt,
    fixed: Optional[List[str]] = FixedOpt,
    channel_divisor: Optional[int] = ChannelDivisorOpt,
    arch: Optional[str] = ARCH.option(None, "--arch", "-a", help="Arch code, comma list, full, min, or a JSON file."),
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    device: Optional[str] = DEVICE.option(None, "--device", "-d", help="Also predict latency from this device's LUT."),
    lut: Optional[Path] = LutOpt,
    as_json: bool = JsonOpt,
):
    """Widths per variable, FLOPs, params (and predicted latency with --device) of an arch (default: full width)."""
    from hwbcnet.api import describe_arch

    if device is not None:  # the LUT's space: at the resolution the device profile fixes, if it fixes one
        _, space = _device_space(device, model, bins, min_bins, resolution, width_mult, model_kwargs, fixed, channel_divisor)
    else:
        space = _space(model, bins, min_bins, resolution, width_mult, model_kwargs=model_kwargs, fixed=fixed,
                       channel_divisor=channel_divisor)
    result = describe_arch(space, "full" if arch is None else arch, device=device, lut_path=lut)
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
    for reason in result["pinned"]:
        console.print(f"[yellow]pinned at full width[/yellow] {reason}")
    if result["untimed"]:
        console.print(f"[yellow]not timed by LUT cells[/yellow] (the calibration absorbs them): "
                      f"{', '.join(result['untimed'][:8])}{' ...' if len(result['untimed']) > 8 else ''}")


@app.command()
def train(
    model: str = ModelOpt,
    model_kwargs: Optional[str] = ModelKwargsOpt,
    fixed: Optional[List[str]] = FixedOpt,
    channel_divisor: Optional[int] = ChannelDivisorOpt,
    data: str = DATA.option("digits", "--data", help="digits | cifar10:<dir> | imagefolder:<dir> | synthetic[:n]"),
    supernet: str = Choice("ua", "bcnet", "bcnetv2").option("bcnetv2", "--supernet", help="Slicing principle."),
    epochs: int = EPOCHS.option(10, "--epochs", help="Training epochs."),
    out: Path = OutputDir().option(..., "--out", help="Output folder; the checkpoint is OUT/supernet.pt."),
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    batch_size: int = BATCH_SIZE.option(32, "--batch-size", help="Global batch (split evenly over torchrun "
                                        "processes)."),
    lr: float = LEARNING_RATE.option(0.05, "--lr", help="Peak learning rate (cosine schedule)."),
    weight_decay: float = Float(0, 1, max_open=True).option(5e-4, "--weight-decay", help="SGD weight decay."),
    seed: int = SEED.option(0, "--seed", help="Seed of initialisation, width draws and batch order."),
    max_steps_per_epoch: Optional[int] = MaxStepsOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/supernet.pt."),
    weights: Optional[Path] = ExistingFile(".pt", ".pth", ".safetensors").option(
        None, "--weights", help="Initialise the supernet from a state_dict of the model (.pt/.pth, or .safetensors "
        "with the safetensors package)."),
    device: Optional[str] = DEVICE.option(None, "--device", "-d", help="The device you will search for: its "
                                          "profile's channel divisor shapes the width space (as `profile --device` "
                                          "does)."),
):
    """Train a slimmable supernet (left/right paths, complementary widths; sandwich rule for ua)."""
    from hwbcnet.space.models.sources import parse_model_source
    from hwbcnet.training.distributed import DistContext
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    source = parse_model_source(model, model_kwargs)
    if channel_divisor is None and device is not None:
        from hwbcnet.hardware.profiles import load_profile

        channel_divisor = load_profile(device).channel_divisor
    config = TrainConfig(model=source.spec, data=data, principle=supernet, bins=bins, min_bins=min_bins,
                         resolution=resolution, width_mult=width_mult, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, seed=seed, max_steps_per_epoch=max_steps_per_epoch,
                         model_kwargs=source.kwargs, fixed=tuple(fixed or ()),
                         channel_divisor=1 if channel_divisor is None else channel_divisor,
                         weights=str(weights) if weights else None)
    from hwbcnet.api import width_accuracy_table
    from hwbcnet.reporting import console

    with DistContext.from_environment() as dist:
        result = train_supernet(config, out, resume=resume, dist=dist)
        width_accuracy_table(result.supernet, config, dist=dist)  # every rank scores its shard
        if dist is None or dist.rank == 0:
            console.print(f"checkpoint: {result.checkpoint}")


@app.command()
def search(
    checkpoint: Path = CHECKPOINT.option(..., "--checkpoint", "-c", help="Supernet checkpoint (DIR/supernet.pt)."),
    out: Path = OutputFile(".json").option(..., "--out", "-o", help="Result file, e.g. DIR/search.json."),
    flops: Optional[str] = Budget("flops").option(None, "--flops", help="FLOPs budget: 50% of full, or 300M."),
    params: Optional[str] = Budget("params").option(None, "--params", help="Params budget: 2M or 40%."),
    latency: Optional[str] = Budget("latency").option(None, "--latency", help="Latency budget: 10ms, 800us or 60% "
                                                      "(needs --device)."),
    device: Optional[str] = DEVICE.option(None, "--device", "-d", help="Device profile whose LUT predicts latency."),
    lut: Optional[Path] = LutOpt,
    lower: float = LOWER.option(0.8, "--lower", help="Legal window is \\[lower x budget, budget] for every cost."),
    margin: str = MARGIN.option("auto", "--margin", help="Latency guard band: keep predicted latency <= (1 - margin) "
                                "x budget. auto = 1.645 x the robust spread (1.4826 x median) of the LUT "
                                "calibration's relative residuals (0 when uncalibrated); or a percentage such as 3%, "
                                "or 0."),
    init: str = Choice("prior", "random").option("prior", "--init", help="Initial population."),
    population: int = Int(2, 10_000).option(DEFAULT_POPULATION, "--population", help="Archs per generation."),
    generations: int = Int(1, 10_000).option(DEFAULT_GENERATIONS, "--generations", help="Generations of the "
                                             "evolution."),
    top_k: int = Int(1, 1_000).option(10, "--top-k", help="Elite archive size (parents of the next generation)."),
    screen: int = Int(1, 100).option(DEFAULT_SCREEN, "--screen", help="Draw SCREEN x the children per generation and "
                                     "let an accuracy predictor fitted on the scores so far choose which ones the "
                                     "supernet scores (1 = off)."),
    seed: int = SEED.option(0, "--seed", help="Seed of the search."),
    calibration_batches: int = Int(1, 10_000).option(DEFAULT_BN_BATCHES, "--bn-batches", help="Training batches (of "
                                                     "128) for per-path BN recalibration while searching."),
    final_calibration_batches: int = Int(1, 10_000).option(FINAL_BN_BATCHES, "--final-bn-batches", help="BN batches "
                                                           "for re-scoring the final candidates (--rescore); the "
                                                           "pick is the best of them."),
    rescore: int = Int(1, 10_000).option(FINAL_RESCORE, "--rescore", help="Archs with the best search scores (the "
                                         "top-k at least) re-scored with --final-bn-batches at the end."),
    threads: Optional[int] = Int(1, 1_024).option(None, "--threads", help="Torch CPU threads for scoring (default: "
                                                  "one per core; 1 is faster when another job keeps a core busy)."),
    verify: bool = typer.Option(False, "--verify", help="Export and time the pick on --device; on a miss refit the "
                                "LUT calibration, re-rank and re-search (exit code 1 if the budget cannot be met)."),
    verify_rounds: int = Int(1, 100).option(3, "--verify-rounds", help="With --verify: picks measured at most."),
    verify_repeats: int = REPEATS.option(3, "--verify-repeats", help="With --verify: interleaved timing rounds per "
                                         "model."),
    verify_headroom: float = Float(0, 0.1, max_open=True).option(
        0.01, "--verify-headroom", help="With --verify: accept a pick measured at most (1 - HEADROOM) x budget (a "
        "median repeats within about 1 % on a quiet CPU)."),
):
    """Evolutionary width search under budgets, scored by the supernet (resumable)."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.evolution import EvolutionConfig
    from hwbcnet.search.latency_loop import LoopConfig
    from hwbcnet.search.runner import run_search
    from hwbcnet.training.distributed import DistContext

    evolution = EvolutionConfig.of_population(population, generations=generations, top_k=top_k, screen=screen)
    with DistContext.from_environment() as dist:
        result = run_search(checkpoint, out, flops=flops, params=params, latency=latency, device=device, lut_path=lut,
                            lower=lower, margin=margin, init=init, evolution=evolution, seed=seed,
                            calibration_batches=calibration_batches,
                            final_calibration_batches=final_calibration_batches, rescore=rescore, threads=threads,
                            verify=verify,
                            loop=LoopConfig(rounds=verify_rounds, repeats=verify_repeats, headroom=verify_headroom),
                            dist=dist)
    if dist is not None and dist.rank != 0:
        return
    cost_cols = ["flops", "params"] + (["latency_ms"] if "latency_ms" in result["costs"] else [])
    rows = [[i + 1, t["code"], t["score"], *[t["costs"][c] for c in cost_cols]] for i, t in enumerate(result["top"])]
    console.print(table(f"top-{len(rows)} ({', '.join(b['cost'] + ' <= ' + b['budget'] for b in result['budgets'])})",
                        ["rank", "arch", "score", *cost_cols], rows))
    scoring = result["scoring"]
    console.print(f"scored {scoring['queries_this_run']} archs in {scoring['search_seconds']:.0f} s "
                  f"({scoring['archs_per_s'] or 0:.2f} archs/s), total {scoring['seconds']:.0f} s")
    verification = result.get("verification")
    if verification is not None:
        console.print(table("latency verification", ["round", "arch", "predicted ms", "measured ms", "budget ms",
                                                     "status"],
                            [[r["round"], r["arch"], r["predicted_ms"], r["measured_ms"], r["budget_ms"], r["status"]]
                             for r in verification["rounds"]]))
    console.print(f"chosen {result['arch']['code']}  score {result['score']:.2f}  -> {out}  (plot {result['pareto_png']})")
    if verification is not None and verification["status"] != "met":
        console.print(f"[red]hwbcnet: {verification['message']}[/red]")
        raise typer.Exit(1)


@app.command()
def extract(
    search_result: Path = SEARCH_RESULT.option(..., "--search", "-s", help="search.json from `hwbcnet search`."),
    out: Path = OutputFile(".pt", ".pth").option(..., "--out", "-o", help="Subnet file, e.g. DIR/subnet.pt."),
    path: Optional[str] = Choice("left", "right").option(None, "--path", help="Supernet path to inherit (default: "
                                                         "the higher-scoring one)."),
):
    """Build the standalone pruned model with weights inherited from the supernet."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.extract import extract_subnet

    subnet = extract_subnet(search_result, out, path)
    console.print(table(f"subnet {subnet['arch']['code']} ({subnet['path']} path) -> {out}", ["split", "accuracy %"],
                        [[k, v] for k, v in subnet["accuracy"].items()]))


@app.command()
def finetune(
    subnet: Path = SUBNET.option(..., "--subnet", help="subnet.pt from `hwbcnet extract`."),
    out: Optional[Path] = OutputFile(".pt", ".pth").option(None, "--out", "-o", help="Output (default: overwrite "
                                                           "--subnet atomically)."),
    data: Optional[str] = DATA.option(None, "--data", help="Data spec (default: the one it was searched on)."),
    epochs: int = EPOCHS.option(5, "--epochs", help="Fine-tuning epochs."),
    batch_size: int = BATCH_SIZE.option(32, "--batch-size", help="Batch size."),
    lr: float = LEARNING_RATE.option(0.01, "--lr", help="Peak learning rate (cosine schedule)."),
    seed: int = SEED.option(0, "--seed", help="Seed of the batch order."),
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
    space: str = Choice("resnet", "mobilenet").option("resnet", "--space", help="Channel-Bench-Macro space."),
    flops: Optional[str] = Budget("flops").option(None, "--flops", help="FLOPs budget (default 50%); not with "
                                                  "--latency."),
    latency: Optional[str] = Budget("latency").option(None, "--latency", help="Latency budget, e.g. 50% or 4ms: the "
                                                      "latency bench on --device (evolution under the LUT vs a FLOPs "
                                                      "proxy vs uniform width vs random, every pick timed on the "
                                                      "device)."),
    device: Optional[str] = DEVICE.option(None, "--device", "-d", help="With --latency: the device profile."),
    lut: Optional[Path] = LUT_FILE.option(None, "--lut", help="With --latency: the calibrated LUT of the cbm model "
                                          "(default: lut/<device>/cbm-<space>-32-b1.json)."),
    margin: str = MARGIN.option("auto", "--margin", help="With --latency: guard band of the LUT-guided searches "
                                "(auto, a percentage, or 0; see `hwbcnet search --help`)."),
    repeats: int = REPEATS.option(5, "--repeats", help="With --latency: interleaved timing rounds per pick (median)."),
    candidates: int = Int(1, 1_000).option(10, "--candidates", help="With --latency: most accurate archs measured to "
                                           "confirm the window's optimum."),
    queries: int = Int(1, 1_000_000).option(500, "--queries", help="Oracle queries per method and seed."),
    seeds: Optional[int] = Int(1, 1_000).option(None, "--seeds", help="Seeds per method (default 10; 5 with "
                                                "--latency)."),
    lower: Optional[float] = LOWER.option(None, "--lower", help="Window \\[lower x budget, budget] (default 0.8; 0.9 "
                                          "with --latency, the hit window)."),
    checkpoint: Optional[Path] = CHECKPOINT.option(None, "--checkpoint", help="A cbm-* supernet: rank all archs with "
                                                   "it."),
    limit: Optional[int] = Int(2, 1_000_000).option(None, "--limit", help="With --checkpoint: score only this many "
                                                    "random archs."),
    as_json: bool = JsonOpt,
):
    """Channel-Bench-Macro with the ground truth as oracle: search methods under a FLOPs or a latency budget."""
    from hwbcnet.reporting import console, table
    from hwbcnet.search.cbm_bench import run_cbm_bench, run_cbm_latency_bench, supernet_ranking

    if latency is not None:
        if flops is not None:
            raise HwbcnetError("--flops and --latency are exclusive: the latency bench gives its FLOPs-proxy search "
                               "the latency budget's fraction of the full model")
        if device is None:
            raise HwbcnetError("--latency needs --device (the device whose LUT predicts and whose runtime measures)")
        seeds = 5 if seeds is None else seeds
        result = run_cbm_latency_bench(space, latency, device, str(lut) if lut else None, queries=queries, seeds=seeds,
                                       lower=0.9 if lower is None else lower, margin=margin, repeats=repeats,
                                       candidates=candidates, progress=not as_json)
        if as_json:
            print(json.dumps(result))
            return
        best = result["best_in_window"]
        rows = [[m, v["acc_mean"], v["acc_within_mean"] if v["acc_within_mean"] is not None else "-",
                 f"{v['ratio_mean']:.3f} ({v['ratio_min']:.3f}..{v['ratio_max']:.3f})", f"{100 * v['hit_rate']:.0f} %",
                 f"{100 * v['within_rate']:.0f} %", v["regret_mean"]] for m, v in result["methods"].items()]
        console.print(table(f"CBM {space} on {result['device']}, latency <= {latency} = {result['budget_ms']:.3f} ms "
                            f"(guard band {100 * result['margin']:.1f} %), {queries} queries x {seeds} seeds; best in "
                            f"[0.9, 1] x budget {best['acc']:.2f} % ({'confirmed' if best['confirmed'] else 'LUT only'})",
                            ["method", "GT acc %", "GT acc within budget %", "measured / budget", "hit",
                             "within budget", "regret"], rows))
        console.print(f"machine drift since calibration: calibration subnets measure "
                      f"{result['drift']['measured_over_predicted_median']:.3f} x their prediction")
        return
    seeds = 10 if seeds is None else seeds
    flops = flops or "50%"
    result = run_cbm_bench(space, flops, queries, seeds, 0.8 if lower is None else lower)
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


def _device_space(device: str, model: str, bins, min_bins, resolution, width_mult, model_kwargs=None, fixed=None,
                  channel_divisor=None):
    """The device profile and the width space at the profile's resolution (when it fixes one) and channel divisor
    (unless given)."""
    from hwbcnet.hardware.profiles import load_profile

    profile = load_profile(device)
    if resolution is None and profile.resolution is not None:
        resolution = profile.resolution
    if channel_divisor is None:
        channel_divisor = profile.channel_divisor
    return profile, _space(model, bins, min_bins, resolution, width_mult, model_kwargs=model_kwargs, fixed=fixed,
                           channel_divisor=channel_divisor)



@app.command()
def devices(as_json: bool = JsonOpt):
    """List the device profiles (shipped in profiles/; pass your own with --device path/to/own.toml)."""
    from hwbcnet.hardware.profiles import list_profiles
    from hwbcnet.reporting import console, table

    profiles = list_profiles()
    if as_json:
        print(json.dumps({p.name: p.to_json() for p in profiles}))
        return
    rows = [[p.name, p.backend, p.precision, p.batch, p.threads if p.backend != "tensorrt" else "-",
             p.resolution or "model", p.channel_divisor, p.description] for p in profiles]
    console.print(table("device profiles", ["name", "backend", "precision", "batch", "threads", "resolution",
                                             "channel divisor", "description"], rows, justify_numbers=False))
    console.print("--device jetson / --device gpu pick this machine's own profile: on a Jetson the jetson-* profile "
                  "of its module; elsewhere gpu is the gpu profile and jetson an error.")


@app.command()
def profile(
    device: str = DeviceOpt,
    model: str = ModelOpt,
    model_kwargs: Optional[str] = ModelKwargsOpt,
    fixed: Optional[List[str]] = FixedOpt,
    channel_divisor: Optional[int] = ChannelDivisorOpt,
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    out: Optional[Path] = OutputFile(".json").option(None, "--out", "-o", help="LUT file (default: "
                                                     "lut/<device>/<model>-<res>-b<batch>.json)."),
    seed: int = SEED.option(0, "--seed", help="Seed of the shuffled measurement order."),
):
    """Time every cell the model's width space can produce on the device into a LUT (resumable: rerun after a kill)."""
    from hwbcnet.hardware.profiler import build_lut
    from hwbcnet.hardware.report import lut_summary
    from hwbcnet.reporting import console, table

    prof, space = _device_space(device, model, bins, min_bins, resolution, width_mult, model_kwargs, fixed, channel_divisor)
    lut = build_lut(space, prof, out, seed=seed)
    summary = lut_summary(lut)
    console.print(table(f"LUT {lut.path}", ["metric", "value"], [[k, v] for k, v in summary.items()
                                                                 if not isinstance(v, (dict, list))],
                        justify_numbers=False))


lut_app = typer.Typer(no_args_is_help=True, help="Calibrate, validate and inspect latency LUTs.")
app.add_typer(lut_app, name="lut")


@lut_app.command("calibrate")
def lut_calibrate(
    device: str = DeviceOpt,
    model: str = ModelOpt,
    model_kwargs: Optional[str] = ModelKwargsOpt,
    fixed: Optional[List[str]] = FixedOpt,
    channel_divisor: Optional[int] = ChannelDivisorOpt,
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    lut: Optional[Path] = LutOpt,
    samples: int = Int(3, 10_000).option(12, "--samples", help="Measured subnets (full, min and random ones)."),
    repeats: int = REPEATS.option(1, "--repeats", help="Interleaved measurement rounds per subnet (median)."),
    seed: int = SEED.option(0, "--seed", help="Seed of the random subnets."),
):
    """Fit the per-device calibration T = a + b * sum(cells) on measured subnets and store it in the LUT."""
    from hwbcnet.costs.calibration import calibrate_lut
    from hwbcnet.reporting import console

    prof, space = _device_space(device, model, bins, min_bins, resolution, width_mult, model_kwargs, fixed, channel_divisor)
    cal = calibrate_lut(space, prof, lut, samples=samples, repeats=repeats, seed=seed)
    console.print(f"calibration: T = {cal['a_ms']:.4f} ms + {cal['b']:.4f} x sum(cells)  "
                  f"(fit median |error| {cal['residuals']['median_abs_pct']:.2f} %, on {len(cal['fitted_on'])} subnets)")


@lut_app.command("validate")
def lut_validate(
    device: str = DeviceOpt,
    model: str = ModelOpt,
    model_kwargs: Optional[str] = ModelKwargsOpt,
    fixed: Optional[List[str]] = FixedOpt,
    channel_divisor: Optional[int] = ChannelDivisorOpt,
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    lut: Optional[Path] = LutOpt,
    samples: int = Int(3, 100_000).option(50, "--samples", help="Random subnets to predict and measure."),
    repeats: int = REPEATS.option(3, "--repeats", help="Interleaved measurement rounds per subnet (median)."),
    calibrate: int = Int(3, 10_000, also=(0,)).option(0, "--calibrate", help="Refit the calibration on this many "
                                                      "extra subnets measured in the same rounds (robust to a "
                                                      "machine whose speed drifts between runs)."),
    seed: int = SEED.option(1, "--seed", help="Seed of the random subnets."),
    plot: Optional[Path] = OutputFile(".png").option(None, "--plot", help="Predicted-vs-measured PNG (default: next "
                                                     "to the LUT)."),
    as_json: bool = JsonOpt,
):
    """Measure random subnets end to end and compare with the LUT prediction (MdAPE, +-5/10 %, Spearman, Kendall)."""
    from hwbcnet.hardware.lut import lut_path as default_lut_path
    from hwbcnet.costs.calibration import validate_lut

    prof, space = _device_space(device, model, bins, min_bins, resolution, width_mult, model_kwargs, fixed, channel_divisor)
    path = lut or default_lut_path(prof.name, space.slug, space.resolution, prof.batch)
    plot = plot or Path(path).with_name(Path(path).stem + "-validate.png")
    report = validate_lut(space, prof, path, samples=samples, repeats=repeats, seed=seed, calibrate=calibrate,
                          plot=plot, progress=not as_json)
    if as_json:
        print(json.dumps(report))
        return
    from hwbcnet.reporting import console, table

    console.print(table(f"{model} on {prof.name}: {samples} random subnets ({'calibrated' if report['calibrated'] else 'uncalibrated'})",
                        ["metric", "value"],
                        [["median |error| %", report["mdape"]], ["within +-5 %", f"{100 * report['within5']:.0f} %"],
                         ["within +-10 %", f"{100 * report['within10']:.0f} %"], ["Spearman rho", report["spearman"]],
                         ["Kendall tau", report["kendall"]], ["plot", report["plot"]]], justify_numbers=False))


@lut_app.command("show")
def lut_show(
    device: str = DeviceOpt,
    model: str = ModelOpt,
    model_kwargs: Optional[str] = ModelKwargsOpt,
    fixed: Optional[List[str]] = FixedOpt,
    channel_divisor: Optional[int] = ChannelDivisorOpt,
    bins: Optional[int] = BinsOpt,
    min_bins: Optional[int] = MinBinsOpt,
    resolution: Optional[int] = ResolutionOpt,
    width_mult: float = WidthMultOpt,
    lut: Optional[Path] = LutOpt,
    heatmap: Optional[Path] = OutputFile(".png").option(None, "--heatmap", help="Heat-map PNG (default: next to "
                                                        "the LUT)."),
    as_json: bool = JsonOpt,
):
    """Summarise a LUT and write a latency heat-map PNG (cell time over input x output widths per layer)."""
    from hwbcnet.hardware.lut import Lut
    from hwbcnet.hardware.lut import lut_path as default_lut_path
    from hwbcnet.hardware.report import lut_heatmap, lut_summary

    prof, space = _device_space(device, model, bins, min_bins, resolution, width_mult, model_kwargs, fixed, channel_divisor)
    path = lut or default_lut_path(prof.name, space.slug, space.resolution, prof.batch)
    table_ = Lut.load(path, space=space, profile=prof)
    summary = lut_summary(table_)
    summary["heatmap"] = str(lut_heatmap(table_, heatmap or Path(path).with_name(Path(path).stem + "-heatmap.png")))
    if as_json:
        print(json.dumps(summary))
        return
    from hwbcnet.reporting import console, table

    console.print(table(f"LUT {path}", ["metric", "value"],
                        [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in summary.items()],
                        justify_numbers=False))


@app.command()
def export(
    search_result: Optional[Path] = SEARCH_RESULT.option(None, "--search", "-s", help="search.json (extracts the "
                                                         "subnet)."),
    subnet: Optional[Path] = SUBNET.option(None, "--subnet", help="subnet.pt from `extract` or `finetune`."),
    from_onnx: Optional[Path] = ExistingFile(".onnx").option(None, "--from-onnx", help="Build a TensorRT engine from "
                                                             "this ONNX file (exported elsewhere: needs neither torch "
                                                             "nor the supernet here)."),
    onnx_path: Optional[Path] = OutputFile(".onnx").option(None, "--onnx", help="Output ONNX file (default: next to "
                                                           "the --search/--subnet file, same name with .onnx)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Symbolic batch dimension."),
    batch: Optional[int] = Int(1, 4096).option(None, "--batch", help="Batch size (default: 1; with --from-onnx the "
                                               "model's fixed batch, else the device profile's)."),
    # 17: TensorRT 10 and INT8 Q/DQ need it; 20: the newest opset of torch's TorchScript exporter
    opset: int = Int(17, 20).option(17, "--opset", help="ONNX opset."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine (needs TensorRT and a GPU)."),
    engine: Optional[Path] = OutputFile().option(None, "--engine", help="Engine path (default: the ONNX path with "
                                                 ".engine)."),
    fp16: bool = typer.Option(False, "--fp16", help="TensorRT fp16 engine."),
    int8: bool = typer.Option(False, "--int8", help="TensorRT INT8 engine through Q/DQ nodes."),
    calib: str = CALIB.option("digits", "--calib", help="INT8 calibration images: a data spec or a folder."),
    calib_images: int = Int(1, 1_000_000).option(512, "--calib-images", help="INT8 calibration images to use."),
    device: Optional[str] = DEVICE.option(None, "--device", "-d", help="Device profile for the engine: its "
                                          "precision (unless --fp16/--int8), batch and timing cache; `jetson`/`gpu`: "
                                          "this machine's."),
    timing_cache: Optional[Path] = OutputFile().option(None, "--timing-cache", help="TensorRT timing cache (read "
                                                       "and updated)."),
    as_json: bool = JsonOpt,
):
    """Export the searched subnet: physically pruned ONNX (checked against PyTorch), optionally a TensorRT engine;
    or, with --from-onnx, build the engine on the target from an ONNX file exported elsewhere."""
    from hwbcnet.reporting import console

    sources = [name for name, value in (("--search", search_result), ("--subnet", subnet), ("--from-onnx", from_onnx))
               if value is not None]
    if len(sources) != 1:
        raise HwbcnetError("give exactly one of --search DIR/search.json, --subnet DIR/subnet.pt or --from-onnx "
                           "model.onnx")
    if fp16 and int8:
        raise HwbcnetError("choose one of --fp16 and --int8")
    if from_onnx is not None and onnx_path is not None:
        raise HwbcnetError("--from-onnx reads its ONNX file and --onnx names one to write: give only --from-onnx")
    trt = trt or from_onnx is not None  # an ONNX file exported elsewhere is only read to build its engine
    if (fp16 or int8 or device) and not trt:
        raise HwbcnetError("--fp16/--int8/--device choose the TensorRT engine: add --trt")
    result = {}
    if from_onnx is None:
        from hwbcnet.export.onnx_export import default_onnx_path, export_onnx, load_export_source

        onnx_path = onnx_path or default_onnx_path(search_result or subnet)
        source = load_export_source(search_result or subnet)
        report = export_onnx(source.model, source.space, source.arch, onnx_path, dynamic_batch=dynamic_batch,
                             batch=batch or 1, opset=opset, metadata=source.metadata)
        result["onnx"] = report.to_json()
        if not as_json:
            console.print(f"ONNX {onnx_path}: opset {report.opset}, max |ONNX Runtime - PyTorch| = "
                          f"{report.max_abs_diff:.2e} on {report.compared_images} {report.compared_on} images")
    if trt:
        from hwbcnet.export.tensorrt_export import export_tensorrt

        onnx_file = from_onnx or onnx_path
        precision = "fp16" if fp16 else "int8" if int8 else None
        try:
            sidecar = export_tensorrt(onnx_file, engine, precision=precision, calib=calib, calib_images=calib_images,
                                      timing_cache=timing_cache, device_profile=device, batch=batch)
        except MissingRuntimeError as exc:
            if from_onnx is not None:
                raise
            # The ONNX file is written: say how to build its engine on the machine that has the GPU.
            raise MissingRuntimeError(f"{exc}; the ONNX model is at {onnx_file}: copy it to the target and run "
                                      f"`hwbcnet export --from-onnx {onnx_file.name} --trt` there") from None
        result["tensorrt"] = sidecar
        if not as_json:
            console.print(f"TensorRT {sidecar['precision']} engine {sidecar['engine']} next to {onnx_file} "
                          f"(TensorRT {sidecar['tensorrt_version']}, {sidecar['gpu']})")
    if as_json:
        print(json.dumps(result))


@app.command()
def verify(
    device: str = DeviceOpt,
    model: Path = ExistingFile().option(
        ..., "--model", "-m", help="Exported ONNX model, or a TensorRT engine (.engine) built by `hwbcnet export "
        "--trt` (timed as it is, on a tensorrt device)."),
    budget: Optional[str] = Budget("latency", absolute=True).option(None, "--budget", help="Latency budget, e.g. "
                                                                     "10ms."),
    lut: Optional[Path] = LutOpt,
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when the measurement exceeds the budget."),
    repeats: int = REPEATS.option(3, "--repeats", help="Timing passes; the median pass counts (one pass on a shared "
                                  "machine can be 10 % off)."),
    speed_check: int = Int(0, 20).option(3, "--speed-check", help="Subnets of the LUT's calibration re-timed between "
                                         "the passes, to tell whether the device runs at its calibrated speed (0: "
                                         "off; ONNX Runtime devices)."),
    as_json: bool = JsonOpt,
):
    """Measure an exported model or engine with the device profile's settings: measured vs LUT-predicted vs budget."""
    from hwbcnet.export.verify import verify as verify_model

    result = verify_model(model, device, budget_ms=budget, lut_path=lut, strict=strict, repeats=repeats,
                          speed_check=speed_check)
    if as_json:
        print(json.dumps(result))
    else:
        from hwbcnet.reporting import console, table

        predicted = f"{result['predicted_ms']:.3f} ms" if result["predicted_ms"] is not None else result["predicted_note"]
        passes = ", ".join(f"{ms:.3f}" for ms in result["rounds_ms"])
        rows = [["measured (median)", f"{result['measured_ms']:.3f} ms (p10 {result['p10_ms']:.3f}, p90 {result['p90_ms']:.3f})"],
                ["pass medians", f"{passes} ms"],
                ["LUT predicted", predicted]]
        if result["error_pct"] is not None:
            rows.append(["prediction error", f"{result['error_pct']:+.1f} %"])
        if result["budget_ms"] is not None:
            rows.append(["budget", f"{result['budget_ms']:.3f} ms ({'within' if result['within_budget'] else 'OVER'})"])
        if result["speed_ratio"] is not None:
            rows.append(["device speed vs LUT calibration",
                         f"{result['speed_ratio']:.3f} x the calibrated time ({result['speed_note']})"])
            rows.append(["measured at the calibrated speed", f"{result['measured_at_calibrated_speed_ms']:.3f} ms"])
        else:
            rows.append(["device speed check", result["speed_note"]])
        console.print(table(f"verify {model} on {result['device']}", ["metric", "value"], rows, justify_numbers=False))
        if not result["stable"]:
            console.print("[yellow]warning: the measurement was unstable (busy machine?); repeat it[/yellow]")
        for warning in (result["load_warning"], result["speed_warning"]):
            if warning:
                console.print(f"[yellow]warning: {warning}[/yellow]")
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def quickstart(
    out: Path = OutputDir().option(Path("runs/quickstart"), "--out", "-o", help="Output folder (each stage is "
                                   "cached here)."),
    epochs: int = EPOCHS.option(8, "--epochs", help="Supernet training epochs."),
    max_steps_per_epoch: Optional[int] = MaxStepsOpt,
    generations: int = Int(1, 10_000).option(5, "--generations", help="Search generations."),
    resolution: int = RESOLUTION.option(32, "--resolution", help="Input resolution (digits are upsampled from 8x8)."),
    device: str = DEVICE.option("cpu", "--device", "-d", help="Device profile for the LUT and verification."),
):
    """The whole loop on the bundled digits data: train, LUT, search (latency + FLOPs), extract, export, verify."""
    from hwbcnet.quickstart import QuickstartConfig, run_quickstart

    run_quickstart(QuickstartConfig(out=out, epochs=epochs, max_steps_per_epoch=max_steps_per_epoch,
                                    generations=generations, resolution=resolution, device=device))


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (a message may quote a file's name)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, prog_name="hwbcnet")
    except HwbcnetError as exc:
        print(f"hwbcnet: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("hwbcnet: interrupted", file=sys.stderr)
        sys.exit(130)
