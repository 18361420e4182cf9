"""Summaries and heat maps of a LUT (`hwbcnet lut show`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.cells import CellKey
from hwbcnet.hardware.lut import Lut


def lut_summary(lut: Lut) -> dict:
    """Counts, stability, per-kind totals, the slowest cells and the calibration of a LUT."""
    data = lut.data
    cells = lut.cells
    by_kind: dict[str, dict] = {}
    for key, entry in cells.items():
        group = by_kind.setdefault(CellKey.parse(key).kind, {"cells": 0, "unstable": 0, "median_ms": []})
        group["cells"] += 1
        group["unstable"] += entry.get("stable") is False
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
        "unstable_cells": sum(entry.get("stable") is False for entry in cells.values()),
        "by_kind": by_kind,
        "slowest": [{"cell": key.split(" | ")[0], "median_ms": entry["median_ms"]} for key, entry in slowest],
        "calibration": None if lut.calibration is None else
        {name: lut.calibration[name] for name in ("a_ms", "b", "n", "residuals")},
        "measure_seconds": data["build"].get("measure_seconds") if isinstance(data.get("build"), dict) else None,
    }



def lut_heatmap(lut: Lut, path: str | Path, max_panels: int = 6) -> Path:
    """A PNG with one heat map of cell latency over (c_in, c_out) per convolution shape (kernel, stride,
    activation, size), for the shapes with the most cells."""
    from hwbcnet.plots import plt, save_png

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
    return save_png(fig, path)
