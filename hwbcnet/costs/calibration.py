"""Calibrate and validate a latency LUT against end-to-end measurements of whole random subnets.

Subnets are built standalone (random weights: latency does not depend on them), exported to ONNX
(hwbcnet.supernet.onnx) in the
profile's precision and timed with the same backend settings as the LUT cells. This machine class is noisy, so
each model is measured `repeats` times, interleaved (round r measures every model once, in a fresh shuffled order)
and its value is the median over rounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwbcnet.costs.latency import LatencyCost, fit_calibration
from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.backends.base import Backend, get_backend
from hwbcnet.hardware.lut import Lut, lut_path
from hwbcnet.hardware.machine import machine_conditions
from hwbcnet.hardware.profiles import Profile


def subnet_onnx(space, profile: Profile, arch) -> bytes:
    """The arch's standalone model (random weights: latency does not depend on them) as the profile will run it."""
    from hwbcnet.supernet.extract import build_standalone
    from hwbcnet.supernet.onnx import to_fp16, torch_to_onnx

    model = torch_to_onnx(build_standalone(space, arch), space.resolution, profile.batch, dynamic_batch=False)
    return (to_fp16(model) if profile.precision == "fp16" else model).SerializeToString()


def measure_archs(space, profile: Profile, archs: np.ndarray, *, repeats: int = 1, seed: int = 0,
                  backend: Backend | None = None, progress: bool = True) -> np.ndarray:
    """End-to-end latency (ms) of each arch: median over `repeats` interleaved rounds. Returns (n, repeats)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    backend = backend or get_backend(profile.backend)
    models = [subnet_onnx(space, profile, arch) for arch in archs]
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
    path = Path(path) if path else lut_path(profile.name, space.slug, space.resolution, profile.batch)
    return Lut.load(path, space=space, profile=profile)


def _calibration_archs(space, samples: int, seed: int) -> np.ndarray:
    """The full and the minimum arch plus random ones: the fit spans the whole latency range."""
    if samples < 3:
        raise HwbcnetError("calibration needs at least 3 measured subnets")
    return np.concatenate([space.full_arch()[None], space.min_arch()[None],
                           space.random_archs(np.random.default_rng(seed), samples - 2)])


def _store_calibration(lut: Lut, space, archs: np.ndarray, sums: np.ndarray, measured: np.ndarray, source: str,
                       conditions: dict, point_sources: list[str] | None = None, provenance: dict | None = None) -> dict:
    if np.unique(sums).size < 2:
        raise HwbcnetError(f"the {space.model} space gives every calibration subnet the same predicted latency; "
                           "calibration needs a space with more than one width per variable")
    a, b, residuals = fit_calibration(sums, measured)
    fitted_on = [{"arch": space.format_arch(arch), "cell_sum_ms": float(s), "measured_ms": float(m)}
                 for arch, s, m in zip(archs, sums, measured)]
    for point, point_source in zip(fitted_on, point_sources or []):
        point["source"] = point_source
    lut.set_calibration(a, b, fitted_on, residuals, {"source": source, **conditions, **(provenance or {})})
    lut.save()
    return lut.calibration


def refit_calibration(lut: Lut, space, archs: np.ndarray, measured_ms: np.ndarray, point_sources: list[str],
                      conditions: dict, provenance: dict) -> dict:
    """Replace the LUT's calibration by a fit on fresh end-to-end measurements (e.g. calibration subnets and a
    search's picks, measured in the same interleaved rounds under `conditions`, see machine_conditions); the fit it
    replaces stays in its history."""
    sums = LatencyCost(space, lut).cell_sum(archs)
    return _store_calibration(lut, space, archs, sums, np.asarray(measured_ms, dtype=np.float64),
                              provenance.get("source", "refit"), conditions, point_sources, provenance)


def anchor_archs(space, lut: Lut, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` subnets that span the latency range, for re-measuring a calibration: the archs the LUT's
    calibration was fitted on (evenly spaced by their cell sum, the ends kept), or the full, the minimum and random
    archs when it has none."""
    calibration = lut.calibration
    if not calibration or not calibration.get("fitted_on"):
        return _calibration_archs(space, count, seed)
    points = sorted(calibration["fitted_on"], key=lambda point: point["cell_sum_ms"])
    archs, seen = [], set()
    for index in np.unique(np.linspace(0, len(points) - 1, min(count, len(points))).round().astype(int)):
        arch = space.parse_arch(points[index]["arch"])
        if tuple(arch) not in seen:
            seen.add(tuple(arch))
            archs.append(arch)
    return np.array(archs, dtype=np.int64)


def prediction_margin(calibration: dict | None, z: float = 1.645) -> float:
    """A guard band for latency budgets from the calibration's own error: z x a robust spread of its relative
    residuals, 1.4826 x the median of |measured - fitted| / measured over the points it was fitted on (the normal
    sigma for normal errors). Robust, because the line T = a + b x sum often misses the smallest arch by tens of
    percent (a tiny model is all fixed overhead) while no budget sits there. z = 1.645 leaves ~5 % of picks at the
    top of a search window over budget when the errors are normal. 0 for an uncalibrated LUT or a fit on fewer
    than 3 points."""
    points = (calibration or {}).get("fitted_on") or []
    if len(points) < 3:
        return 0.0
    sums = np.array([point["cell_sum_ms"] for point in points])
    measured = np.array([point["measured_ms"] for point in points])
    relative = (measured - (calibration["a_ms"] + calibration["b"] * sums)) / measured
    return float(z * 1.4826 * np.median(np.abs(relative)))


def calibrate_lut(space, profile: Profile, path: str | Path | None = None, *, samples: int = 12, seed: int = 0,
                  repeats: int = 1, backend: Backend | None = None, progress: bool = True) -> dict:
    """Measure `samples` subnets (the full and the minimum arch plus random ones), fit T = a + b * sum of cells by
    least squares and store it in the LUT. Returns the calibration record."""
    archs = _calibration_archs(space, samples, seed)
    lut = _load(space, profile, path)
    conditions = machine_conditions()
    measured = np.median(measure_archs(space, profile, archs, repeats=repeats, seed=seed, backend=backend,
                                       progress=progress), axis=1)
    return _store_calibration(lut, space, archs, LatencyCost(space, lut).cell_sum(archs), measured, "lut calibrate",
                              conditions)


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
                 repeats: int = 3, calibrate: int = 0, plot: str | Path | None = None, backend: Backend | None = None,
                 progress: bool = True) -> dict:
    """Predict and measure `samples` random subnets. Returns the accuracy metrics, per-sample rows and, with
    `plot`, the path of a predicted-vs-measured PNG. Uses the LUT's calibration; with `calibrate` = k > 0, first
    refits it on k more subnets measured in the same interleaved rounds as the validation subnets, so that a machine
    whose speed drifts between a calibration run and a validation run (shared VMs: 3-10 % within minutes, measured)
    does not bias the comparison; the new calibration is stored in the LUT."""
    lut = _load(space, profile, path)
    cost = LatencyCost(space, lut)
    archs = space.random_archs(np.random.default_rng(seed), samples)
    calibration_archs = _calibration_archs(space, calibrate, seed + 1000) if calibrate else archs[:0]
    conditions = machine_conditions()
    times = measure_archs(space, profile, np.concatenate([calibration_archs, archs]), repeats=repeats, seed=seed,
                          backend=backend, progress=progress)
    measured = np.median(times, axis=1)
    if calibrate:
        _store_calibration(lut, space, calibration_archs, cost.cell_sum(calibration_archs), measured[:calibrate],
                           "lut validate --calibrate", conditions)
        cost = LatencyCost(space, lut)
        times, measured = times[calibrate:], measured[calibrate:]
    predicted = cost(archs)
    report = {"model": space.model, "device": profile.name, "lut": str(lut.path), "samples": samples,
              "repeats": repeats, "calibrated": cost.calibrated, "calibrated_together": calibrate,
              **accuracy(predicted, measured)}
    report["rows"] = [
        {"arch": space.format_arch(arch), "predicted_ms": float(p), "measured_ms": float(m),
         "error_pct": float(100.0 * (p - m) / m), "measured_rounds_ms": [float(t) for t in row]}
        for arch, p, m, row in zip(archs, predicted, measured, times)
    ]
    if plot:
        report["plot"] = str(plot_predicted_vs_measured(predicted, measured, report, plot))
    return report


def plot_predicted_vs_measured(predicted, measured, report: dict, path: str | Path) -> Path:
    from hwbcnet.plots import plt, save_png

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
    return save_png(fig, path, dpi=120)
