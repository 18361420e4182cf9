"""`hwbcnet quickstart`: the whole loop on the bundled digits data, each stage cached in its output folder.

train a small bcnetv2 supernet -> build the CPU LUT and calibrate it -> search under a latency and a FLOPs budget,
then time the pick on the device and, on a miss, correct the LUT calibration and choose again (`search --verify`) ->
extract and fine-tune -> export ONNX -> verify the measured latency against prediction and budget.
A second run reuses every finished stage (the supernet checkpoint, the LUT, search.json, subnet.pt, model.onnx).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hwbcnet.reporting import console, table


@dataclass
class QuickstartConfig:
    out: Path = Path("runs/quickstart")
    model: str = "resnet20"
    data: str = "digits"
    resolution: int = 32  # CIFAR-size inputs; digits are upsampled from 8x8
    bins: int = 4
    min_bins: int = 2
    epochs: int = 8
    finetune_epochs: int = 3
    device: str = "cpu"
    latency: str = "75%"  # of the full-width model's predicted latency
    flops: str = "60%"
    population: int = 10
    generations: int = 5
    calibration_samples: int = 10
    max_steps_per_epoch: int | None = None  # CI uses a cap: the same code path, fewer steps


def _stage(name: str) -> float:
    console.rule(f"[bold]{name}")
    return time.perf_counter()


def run_quickstart(config: QuickstartConfig = QuickstartConfig()) -> dict:
    from hwbcnet.export.onnx_export import export_onnx, load_export_source, read_export_metadata
    from hwbcnet.export.verify import verify
    from hwbcnet.fileio import file_sha256
    from hwbcnet.hardware.lut import Lut, lut_path
    from hwbcnet.hardware.profiler import build_lut
    from hwbcnet.hardware.profiles import load_profile
    from hwbcnet.costs.calibration import calibrate_lut
    from hwbcnet.search.defaults import DEFAULT_SCREEN
    from hwbcnet.search.evolution import EvolutionConfig
    from hwbcnet.search.extract import extract_subnet, finetune_subnet, load_subnet
    from hwbcnet.search.runner import load_search, run_search
    from hwbcnet.training.checkpoint import load_checkpoint
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    started = _stage("1/6 train a bcnetv2 supernet on digits")
    checkpoint = out / "supernet.pt"
    profile = load_profile(config.device)
    # the LUT and the checkpoint must describe one space: train with the device's channel divisor
    train_config = TrainConfig(model=config.model, data=config.data, principle="bcnetv2", bins=config.bins,
                               channel_divisor=profile.channel_divisor,
                               min_bins=config.min_bins, resolution=config.resolution, epochs=config.epochs,
                               batch_size=32, lr=0.05, max_steps_per_epoch=config.max_steps_per_epoch)
    if checkpoint.exists() and load_checkpoint(checkpoint).get("finished"):
        console.print(f"cached: {checkpoint}")
    else:
        train_supernet(train_config, out, resume=checkpoint.exists())
    timings["train"] = time.perf_counter() - started

    started = _stage(f"2/6 latency LUT on device '{config.device}' (measures only missing cells)")
    space = train_config.resolved_space(10)
    lut_file = lut_path(profile.name, space.slug, space.resolution, profile.batch, root=out / "lut")
    build_lut(space, profile, lut_file)
    if Lut.load(lut_file, space=space, profile=profile).calibration is None:
        calibrate_lut(space, profile, lut_file, samples=config.calibration_samples, repeats=2)
    calibration = Lut.load(lut_file).calibration
    console.print(f"LUT {lut_file}: T = {calibration['a_ms']:.4f} ms + {calibration['b']:.3f} x sum(cells)")
    timings["lut"] = time.perf_counter() - started

    started = _stage(f"3/6 search: latency <= {config.latency}, FLOPs <= {config.flops}")
    search_file = out / "search.json"
    evolution = EvolutionConfig.of_population(config.population, generations=config.generations, top_k=5,
                                              screen=DEFAULT_SCREEN)
    if search_file.exists() and load_search(search_file)["checkpoint"]["sha256"] == file_sha256(checkpoint):
        console.print(f"cached: {search_file}")
        result = load_search(search_file)
        result["pareto_png"] = str(search_file.with_name(search_file.stem + "-pareto.png"))
    else:
        result = run_search(checkpoint, search_file, latency=config.latency, flops=config.flops, device=config.device,
                            lut_path=lut_file, evolution=evolution, verify=True)  # a short search
    timings["search"] = time.perf_counter() - started

    started = _stage("4/6 extract and fine-tune the subnet")
    subnet_file = out / "subnet.pt"
    cached = (subnet_file.exists() and
              load_subnet(subnet_file)[3].get("source", {}).get("search_sha256") == file_sha256(search_file))
    if cached:
        console.print(f"cached: {subnet_file}")
    else:
        extract_subnet(search_file, subnet_file)
        finetune_subnet(subnet_file, epochs=config.finetune_epochs)
    subnet = load_subnet(subnet_file)[3]
    timings["extract"] = time.perf_counter() - started

    started = _stage("5/6 export ONNX")
    onnx_file = out / "model.onnx"
    subnet_sha = file_sha256(subnet_file)
    if onnx_file.exists() and read_export_metadata(onnx_file).get("source_sha256") == subnet_sha:
        console.print(f"cached: {onnx_file}")
    else:
        source = load_export_source(subnet_file)
        report = export_onnx(source.model, source.space, source.arch, onnx_file,
                             metadata={**source.metadata, "device": config.device,
                                       "predicted_latency_ms": result["costs"]["latency_ms"]})
        console.print(f"{onnx_file}: max |ONNX Runtime - PyTorch| = {report.max_abs_diff:.2e}")
    timings["export"] = time.perf_counter() - started

    started = _stage("6/6 verify on the device")
    budget_ms = next(b["high"] for b in load_search(search_file)["budgets"] if b["cost"] == "latency")
    verified = verify(onnx_file, config.device, budget_ms=budget_ms, lut_path=lut_file)
    timings["verify"] = time.perf_counter() - started

    verification = result.get("verification") or {}
    summary = {
        "arch": result["arch"]["code"], "verification": verification.get("status"),
        "verification_rounds": len(verification.get("rounds", [])),
        "flops": result["costs"]["flops"], "params": result["costs"]["params"],
        "predicted_ms": verified["predicted_ms"], "measured_ms": verified["measured_ms"], "budget_ms": budget_ms,
        "within_budget": verified["within_budget"], "device_speed_ratio": verified["speed_ratio"],
        "supernet_score": result["score"],
        "val_accuracy": subnet["accuracy"]["val"], "test_accuracy": subnet["accuracy"]["test"],
        "pareto_png": result["pareto_png"], "onnx": str(onnx_file),
        "seconds": timings,
    }
    console.print(table("quickstart result", ["metric", "value"], [
        ["arch (bins per variable)", summary["arch"]], ["FLOPs (MACs)", f"{summary['flops']:,}"],
        ["params", f"{summary['params']:,}"],
        ["latency predicted / measured", f"{summary['predicted_ms']:.3f} / {summary['measured_ms']:.3f} ms"],
        ["latency budget", f"{budget_ms:.3f} ms ({'within' if summary['within_budget'] else 'OVER'})"],
        ["search --verify", f"{summary['verification']} after {summary['verification_rounds']} round(s)"],
        ["supernet score (val %)", f"{summary['supernet_score']:.2f}"],
        ["fine-tuned accuracy val / test %", f"{summary['val_accuracy']:.2f} / {summary['test_accuracy']:.2f}"],
        ["Pareto plot", summary["pareto_png"]], ["ONNX model", summary["onnx"]],
        ["time per stage (s)", ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]], justify_numbers=False))
    for message in verify_warnings(verified, summary["verification"]):
        console.print(f"[yellow]warning: {message}[/yellow]")
    return summary


def verify_warnings(verified: dict, loop_status: str | None) -> list[str]:
    """What the user should hear after `verify`: its load and speed warnings, and, for a model over budget whose
    pick the loop had measured within it, why (the device's speed changed, or the pick sits at the budget's edge)."""
    messages = [warning for warning in (verified["load_warning"], verified["speed_warning"]) if warning]
    if verified["within_budget"] is False and loop_status == "met":
        if verified["speed_comparable"]:  # the device runs as calibrated: the pick itself sits at the budget's edge
            messages.append("the exported model measures over its budget although its pick measured within it, on "
                            "a device at its calibrated speed: the pick sits at the budget's edge; search again "
                            "with `hwbcnet search ... --verify --verify-headroom 0.03`")
        elif verified["speed_comparable"] is None:  # no speed check ran
            messages.append("the exported model measures over its budget although its pick measured within it: the "
                            "machine's speed probably changed between the two measurements; run `hwbcnet verify` "
                            "again on a quiet machine, or search again with --verify")
    return messages
