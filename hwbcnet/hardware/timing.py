"""Timing statistics (deploy.md section 5): warm-up, >= 50 samples and a minimum duration, median as the value,
quantiles and IQR as its spread, Tukey outliers counted (never dropped), a stability gate with re-measurement, and
the least-squares line used by differential measurement (time of k copies of a cell = intercept + slope * k)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.profiles import TimingPolicy

# A collection loop stops here even if min_time_ms is not reached (a slow model still gets >= repeats samples).
MAX_SAMPLES_FACTOR = 20


@dataclass(frozen=True)
class TimingStats:
    """Statistics of one set of samples (milliseconds). Quantiles use linear interpolation (numpy's default)."""

    n: int
    median: float
    mean: float
    min: float
    p10: float
    p25: float
    p75: float
    p90: float
    iqr: float
    iqr_rel: float  # IQR / median: the CPU stability measure (CoV is dominated by outliers on shared machines)
    outliers: int  # samples outside [p25 - 1.5 IQR, p75 + 1.5 IQR]
    stable: bool  # iqr_rel <= the gate threshold
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def to_json(self, with_samples: bool = False) -> dict:
        data = asdict(self)
        data.pop("samples")
        if with_samples:
            data["samples"] = list(self.samples)
        return data


def summarize(samples_ms, threshold: float) -> TimingStats:
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.ndim != 1 or samples.size == 0:
        raise HwbcnetError("no timing samples were collected")
    p10, p25, median, p75, p90 = (float(v) for v in np.percentile(samples, [10, 25, 50, 75, 90]))
    iqr = p75 - p25
    iqr_rel = iqr / median if median > 0 else float("inf")
    outliers = int(np.count_nonzero((samples < p25 - 1.5 * iqr) | (samples > p75 + 1.5 * iqr)))
    return TimingStats(
        n=int(samples.size),
        median=median,
        mean=float(samples.mean()),
        min=float(samples.min()),
        p10=p10,
        p25=p25,
        p75=p75,
        p90=p90,
        iqr=iqr,
        iqr_rel=iqr_rel,
        outliers=outliers,
        stable=bool(iqr_rel <= threshold),
        samples=tuple(float(v) for v in samples),
    )


def collect(timed_run: Callable[[], float], policy: TimingPolicy, clock: Callable[[], int] = time.perf_counter_ns) -> np.ndarray:
    """Warm up, then collect samples. `timed_run` executes the model once (or a batch of launches) and returns its
    time in ms. Warm-up lasts at least `warmup_runs` runs and `warmup_ms`; sampling at least `repeats` samples
    and `min_time_ms` of measured time, capped at MAX_SAMPLES_FACTOR x repeats samples."""
    start = clock()
    runs = 0
    while runs < policy.warmup_runs or (clock() - start) / 1e6 < policy.warmup_ms:
        timed_run()
        runs += 1
    samples: list[float] = []
    total = 0.0
    limit = MAX_SAMPLES_FACTOR * policy.repeats
    while len(samples) < policy.repeats or (total < policy.min_time_ms and len(samples) < limit):
        sample = timed_run()
        samples.append(sample)
        total += sample
    return np.asarray(samples)


def measure_stable(timed_run: Callable[[], float], policy: TimingPolicy) -> tuple[TimingStats, int]:
    """Collect and apply the stability gate: re-measure up to `max_remeasure` times while unstable and keep the
    attempt with the smallest IQR/median. Returns (stats, attempts)."""
    best: TimingStats | None = None
    attempts = 0
    while attempts <= policy.max_remeasure:
        attempts += 1
        stats = summarize(collect(timed_run, policy), policy.stability_threshold)
        if best is None or stats.iqr_rel < best.iqr_rel:
            best = stats
        if best.stable:
            break
    return best, attempts


def fit_line(x, y) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x. Used for differential measurement (y = time of a model
    with x copies of a cell: the slope is the per-copy time without the fixed per-run overhead) and calibration."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.unique(x).size < 2:
        raise HwbcnetError("a line fit needs at least two distinct x values")
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)

