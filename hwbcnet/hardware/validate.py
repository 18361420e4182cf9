"""Calibrate and validate a LUT against end-to-end measurements of whole random subnets, and summarise a LUT.

Subnets are built standalone (random weights: latency does not depend on them), exported to ONNX (opset 17) in the
profile's precision and timed with the same backend settings as the LUT cells. This machine class is noisy, so
each model is measured `repeats` times, interleaved (round r measures every model once, in a fresh shuffled order)
and its value is the median over rounds.
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import numpy as np

from hwbcnet.costs.latency import LatencyCost, fit_calibration
from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.backends.base import Backend, get_backend
from hwbcnet.hardware.cells import CellKey
from hwbcnet.hardware.lut import Lut, lut_path
from hwbcnet.hardware.profiles import Profile

OPSET = 17


def export_onnx(model, resolution: int, batch: int, precision: str) -> bytes:
    """ONNX bytes of a torch model (TorchScript exporter, opset 17, BatchNorm folded in eval mode); fp16 models
    are exported with fp16 weights, input and output."""
    import torch

    model = model.eval()
    example = torch.randn(batch, 3, resolution, resolution)
    if precision == "fp16":
        model, example = model.half(), example.half()
    # `dynamo` exists from torch 2.5 on (default True from 2.9); older versions only have the TorchScript exporter.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation notices
        torch.onnx.export(model, (example,), buffer, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], **legacy)
    return buffer.getvalue()


def _subnet_onnx(space, profile: Profile, arch) -> bytes:
    from hwbcnet.supernet.extract import build_standalone

    return export_onnx(build_standalone(space, arch), space.resolution, profile.batch, profile.precision)


def measure_archs(space, profile: Profile, archs: np.ndarray, *, repeats: int = 1, seed: int = 0,
                  backend: Backend | None = None, progress: bool = True) -> np.ndarray:
    """End-to-end latency (ms) of each arch: median over `repeats` interleaved rounds. Returns (n, repeats)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    backend = backend or get_backend(profile.backend)
    models = [_subnet_onnx(space, profile, arch) for arch in archs]
    rng = np.random.default_rng(seed)
    times = np.empty((len(models), repeats))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress) as bar:
        task = bar.add_task(f"timing {len(models)} {space.model} subnets on {profile.name}", total=times.size)
        for round_index in range(repeats):
            for i in rng.permutation(len(models)):
                times[i, round_index] = backend.measure(models[i], profile, profile.model_timing).median
                bar.advance(task)
    return times


def _load(space, profile: Profile, path: str | Path | None) -> Lut:
    path = Path(path) if path else lut_path(profile.name, space.model, space.resolution, profile.batch)
    return Lut.load(path, space=space, profile=profile)


def calibrate_lut(space, profile: Profile, path: str | Path | None = None, *, samples: int = 12, seed: int = 0,
                  repeats: int = 1, backend: Backend | None = None, progress: bool = True) -> dict:
    """Measure `samples` subnets (the full and the minimum arch plus random ones), fit T = a + b * sum of cells by
    least squares and store it in the LUT. Returns the calibration record."""
    if samples < 3:
        raise HwbcnetError("calibration needs at least 3 measured subnets")
    lut = _load(space, profile, path)
    cost = LatencyCost(space, lut)
    archs = np.concatenate([space.full_arch()[None], space.min_arch()[None],
                            space.random_archs(np.random.default_rng(seed), samples - 2)])
    measured = np.median(measure_archs(space, profile, archs, repeats=repeats, seed=seed, backend=backend,
                                       progress=progress), axis=1)
    sums = cost.cell_sum(archs)
    if np.unique(sums).size < 2:
        raise HwbcnetError(f"the {space.model} space gives every calibration subnet the same predicted latency; "
                           "calibration needs a space with more than one width per variable")
    a, b, residuals = fit_calibration(sums, measured)
    fitted_on = [{"arch": space.format_arch(arch), "cell_sum_ms": float(s), "measured_ms": float(m)}
                 for arch, s, m in zip(archs, sums, measured)]
    lut.set_calibration(a, b, fitted_on, residuals)
    lut.save()
    return lut.calibration


def accuracy(predicted, measured) -> dict:
    """Median absolute % error, share within +-5 % and +-10 %, Spearman rho and Kendall tau."""
    from scipy import stats

    predicted = np.asarray(predicted, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    error = 100.0 * np.abs(predicted - measured) / measured
    return {
        "mdape": float(np.median(error)),
        "within5": float(np.mean(error <= 5.0)),
        "within10": float(np.mean(error <= 10.0)),
        "spearman": float(stats.spearmanr(predicted, measured)[0]),
        "kendall": float(stats.kendalltau(predicted, measured)[0]),
    }


def validate_lut(space, profile: Profile, path: str | Path | None = None, *, samples: int = 50, seed: int = 1,
                 repeats: int = 3, plot: str | Path | None = None, backend: Backend | None = None,
                 progress: bool = True) -> dict:
    """Predict and measure `samples` random subnets. Returns the accuracy metrics, per-sample rows and, with
    `plot`, the path of a predicted-vs-measured PNG. Uses the calibration when the LUT has one."""
    lut = _load(space, profile, path)
    cost = LatencyCost(space, lut)
    archs = space.random_archs(np.random.default_rng(seed), samples)
    times = measure_archs(space, profile, archs, repeats=repeats, seed=seed, backend=backend, progress=progress)
    measured = np.median(times, axis=1)
    predicted = cost(archs)
    report = {"model": space.model, "device": profile.name, "lut": str(lut.path), "samples": samples,
              "repeats": repeats, "calibrated": cost.calibrated, **accuracy(predicted, measured)}
    report["rows"] = [
        {"arch": space.format_arch(arch), "predicted_ms": float(p), "measured_ms": float(m),
         "error_pct": float(100.0 * (p - m) / m), "measured_rounds_ms": [float(t) for t in row]}
        for arch, p, m, row in zip(archs, predicted, measured, times)
    ]
    if plot:
        report["plot"] = str(plot_predicted_vs_measured(predicted, measured, report, plot))
    return report


def plot_predicted_vs_measured(predicted, measured, report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    low, high = float(min(np.min(predicted), np.min(measured))), float(max(np.max(predicted), np.max(measured)))
    line = np.array([low * 0.95, high * 1.05])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.9", label="±10 %")
    ax.plot(line, line, color="0.4", linewidth=1)
    ax.scatter(measured, predicted, s=14)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)" + ("" if report.get("calibrated") else ", uncalibrated"))
    ax.set_title(f"{report['model']} on {report['device']}: MdAPE {report['mdape']:.1f} %, "
                 f"±10 % {100 * report['within10']:.0f} %, ρ {report['spearman']:.3f}", fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ lut show


def lut_summary(lut: Lut) -> dict:
    """Counts, stability, per-kind totals, the slowest cells and the calibration of a LUT."""
    data = lut.data
    cells = lut.cells
    by_kind: dict[str, dict] = {}
    for key, entry in cells.items():
        group = by_kind.setdefault(CellKey.parse(key).kind, {"cells": 0, "unstable": 0, "median_ms": []})
        group["cells"] += 1
        group["unstable"] += not entry["stable"]
        group["median_ms"].append(entry["median_ms"])
    for group in by_kind.values():
        values = group.pop("median_ms")
        group["min_ms"], group["max_ms"] = min(values), max(values)
    slowest = sorted(cells.items(), key=lambda item: -item[1]["median_ms"])[:5]
    provenance = data["provenance"]
    return {
        "path": str(lut.path),
        "device": data["device"],
        "model": data["model"],
        "resolution": data["resolution"],
        "batch": data["batch"],
        "settings": data["settings"],
        "measured_on": provenance.get("device"),
        "runtime_versions": provenance.get("runtime_versions"),
        "date": provenance.get("date"),
        "cells": len(cells),
        "incomplete_cells": len(lut.partial),
        "unstable_cells": sum(not entry["stable"] for entry in cells.values()),
        "by_kind": by_kind,
        "slowest": [{"cell": key.split(" | ")[0], "median_ms": entry["median_ms"]} for key, entry in slowest],
        "calibration": None if lut.calibration is None else
        {name: lut.calibration[name] for name in ("a_ms", "b", "n", "residuals")},
        "measure_seconds": data.get("build", {}).get("measure_seconds"),
    }


def lut_heatmap(lut: Lut, path: str | Path, max_panels: int = 6) -> Path:
    """A PNG with one heat map of cell latency over (c_in, c_out) per convolution shape (kernel, stride,
    activation, size), for the shapes with the most cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, dict[tuple[int, int], float]] = {}
    for key, entry in lut.cells.items():
        cell = CellKey.parse(key)
        if cell.kind == "conv":
            shape = (cell.kernel, cell.stride, cell.depthwise, cell.act, cell.h, cell.w)
            groups.setdefault(shape, {})[(cell.c_in, cell.c_out)] = entry["median_ms"]
    if not groups:
        raise HwbcnetError(f"{lut.path}: no measured convolution cells to draw")
    shown = sorted(groups, key=lambda shape: -len(groups[shape]))[:max_panels]
    columns = min(3, len(shown))
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, shape in zip(axes.flat, shown):
        values = groups[shape]
        c_ins = sorted({c for c, _ in values})
        c_outs = sorted({c for _, c in values})
        grid = np.full((len(c_outs), len(c_ins)), np.nan)
        for (c_in, c_out), ms in values.items():
            grid[c_outs.index(c_out), c_ins.index(c_in)] = ms * 1000.0
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(c_ins)), c_ins, rotation=90, fontsize=6)
        ax.set_yticks(range(len(c_outs)), c_outs, fontsize=6)
        kernel, stride, depthwise, act, h, w = shape
        ax.set_title(f"{'dw ' if depthwise else ''}conv k{kernel} s{stride} {act or ''} @{h}x{w}", fontsize=9)
        ax.set_xlabel("c_in")
        ax.set_ylabel("c_out")
        fig.colorbar(image, ax=ax, label="µs")
    fig.suptitle(f"{lut.data['model']} on {lut.data['device']} ({lut.settings_tag})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
