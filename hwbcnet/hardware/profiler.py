"""Build a latency LUT: enumerate every cell a width space can produce, measure each on the device, write the file.

Each cell is measured once per pass; passes run over all cells in a fresh shuffled order (so slow drifts of the
machine spread over all cells instead of biasing one region of the space) and the cell's value is the median over
passes. A cell measurement is differential (see hardware/cells.py): models with k parallel copies for each k in
the profile's `branches`, time per copy = least-squares slope. The file is saved atomically after every cell-pass,
so a killed run resumes without losing or repeating any finished cell-pass.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.backends.base import Backend, get_backend
from hwbcnet.hardware.cells import CellKey, cell_onnx, enumerate_cells, needs_baseline
from hwbcnet.hardware.lut import Lut, lut_path
from hwbcnet.hardware.profiles import Profile
from hwbcnet.hardware.timing import TimingStats, fit_line

# Provenance fields that must agree before a resumed run may add cells to an existing LUT.
_SAME_MACHINE = ("backend", "device", "runtime_versions", "precision", "threads")


def _differential(backend: Backend, cell: CellKey, profile: Profile,
                  baseline: bool = False) -> tuple[float, float, list[TimingStats]]:
    """(intercept, slope, stats per copy count) of one cell from models with each of the profile's copy counts."""
    stats = [
        backend.measure(cell_onnx(cell, profile.batch, profile.precision, copies=k, baseline=baseline,
                                  shared_input=backend.shared_input_branches), profile, profile.cell_timing)
        for k in profile.branches
    ]
    intercept, slope = fit_line(profile.branches, [s.median for s in stats])
    return intercept, slope, stats


def measure_cell(backend: Backend, cell: CellKey, profile: Profile) -> dict:
    """One pass of one cell: its per-copy time and spread (ms). The spread is that of the largest model's samples,
    divided by its copy count, around the slope."""
    intercept, slope, stats = _differential(backend, cell, profile)
    all_stats = list(stats)
    if needs_baseline(cell):
        _, baseline_slope, baseline_stats = _differential(backend, cell, profile, baseline=True)
        slope -= baseline_slope
        all_stats += baseline_stats
    copies = max(profile.branches)
    largest = stats[profile.branches.index(copies)]
    record = {"ms": slope, "intercept_ms": intercept, "isolated_ms": stats[0].median / profile.branches[0]}
    for name in ("p10", "p25", "p75", "p90"):
        record[f"{name}_ms"] = slope + (getattr(largest, name) - largest.median) / copies
    record.update(
        n=sum(s.n for s in all_stats),
        outliers=sum(s.outliers for s in all_stats),
        # A slope <= 0 means the copies' cost drowned in noise: the value is kept but flagged.
        stable=all(s.stable for s in all_stats) and slope > 0,
    )
    return record


def _open_lut(path: Path, space, profile: Profile, environment: dict) -> Lut:
    if not path.exists():
        return Lut.new(path, space, profile, environment)
    lut = Lut.load(path, space=space, profile=profile)
    before = {name: lut.data["provenance"].get(name) for name in _SAME_MACHINE}
    now = {name: environment.get(name) for name in _SAME_MACHINE}
    if before != now and (lut.cells or lut.partial):
        changed = [name for name in _SAME_MACHINE if before[name] != now[name]]
        raise HwbcnetError(f"{path}: measured with other {', '.join(changed)} ({before}) than this machine has "
                           f"({now}); mixing them would corrupt the LUT: profile into a new file (--out)")
    return lut


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("cell-passes"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)


def build_lut(space, profile: Profile, path: str | Path | None = None, *, progress: bool = True,
              backend: Backend | None = None, seed: int = 0) -> Lut:
    """Measure every cell of `space` that `path` (default lut/<device>/<model>-<res>-b<batch>.json) lacks and
    return the finished LUT. Rerunning after an interruption measures only what is missing."""
    if profile.resolution is not None and profile.resolution != space.resolution:
        raise HwbcnetError(f"device {profile.name} runs at {profile.resolution} px but the space is built at "
                           f"{space.resolution} px; build the space with resolution={profile.resolution}")
    backend = backend or get_backend(profile.backend)
    path = Path(path) if path else lut_path(profile.name, space.slug, space.resolution, profile.batch)
    lut = _open_lut(path, space, profile, backend.environment(profile))
    cells = enumerate_cells(space)
    remaining = sum(profile.passes - lut.passes_done(cell, profile.passes) for cell in cells)
    with _progress(progress) as bar:
        task = bar.add_task(f"profiling {space.model} on {profile.name} ({len(cells)} cells x {profile.passes} passes)",
                            total=remaining)
        for pass_index in range(profile.passes):
            todo = [cell for cell in cells if lut.passes_done(cell, profile.passes) == pass_index]
            np.random.default_rng([seed, pass_index]).shuffle(todo)
            for cell in todo:
                start = time.perf_counter()
                record = measure_cell(backend, cell, profile)
                lut.add_pass(cell, record, profile.passes)
                lut.data["build"]["measure_seconds"] += time.perf_counter() - start
                lut.save()
                bar.advance(task)
    if not lut.path.exists():  # a space with no cells still gets its (empty) file
        lut.save()
    return lut


def measure_model(onnx_bytes: bytes, profile: Profile, backend: Backend | None = None) -> TimingStats:
    """End-to-end timing of a whole exported model with the profile's settings and model timing policy."""
    backend = backend or get_backend(profile.backend)
    return backend.measure(onnx_bytes, profile, profile.model_timing)
