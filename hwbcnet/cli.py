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
    with DistContext.from_environment() as dist:
        result = train_supernet(config, out, resume=resume, dist=dist)
        if dist is None or dist.rank == 0:
            from hwbcnet.api import width_accuracy_table

            width_accuracy_table(result.supernet, config, dist=dist)
            from hwbcnet.reporting import console

            console.print(f"checkpoint: {result.checkpoint}")


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, prog_name="hwbcnet")
    except HwbcnetError as exc:
        print(f"hwbcnet: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("hwbcnet: interrupted", file=sys.stderr)
        sys.exit(130)
