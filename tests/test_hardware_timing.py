import numpy as np
import pytest

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.profiles import TimingPolicy
from hwbcnet.hardware.timing import collect, fit_line, measure_stable, summarize


def test_statistics_are_exact():
    stats = summarize(np.arange(1, 101, dtype=float), threshold=1.0)
    assert (stats.n, stats.median, stats.mean, stats.min) == (100, 50.5, 50.5, 1.0)
    assert (stats.p10, stats.p25, stats.p75, stats.p90) == pytest.approx((10.9, 25.75, 75.25, 90.1))
    assert stats.iqr == pytest.approx(49.5)
    assert stats.iqr_rel == pytest.approx(49.5 / 50.5)
    assert stats.outliers == 0 and stats.stable


def test_tukey_outliers_and_stability_gate():
    samples = [10.0] * 46 + [10.2, 9.8, 30.0, 1.0]
    stats = summarize(samples, threshold=0.05)
    assert stats.median == 10.0 and stats.iqr == 0.0
    assert stats.outliers == 4  # everything off the constant is outside p25 - 1.5 IQR .. p75 + 1.5 IQR
    assert stats.stable
    noisy = summarize([1.0, 2.0] * 25, threshold=0.05)
    assert noisy.iqr_rel == pytest.approx(1.0 / 1.5) and not noisy.stable


def test_summarize_refuses_empty():
    with pytest.raises(HwbcnetError):
        summarize([], 0.05)


def test_collect_respects_warmup_runs_repeats_and_min_time():
    ticks = iter(range(0, 10**12, 1_000_000))  # a fake clock advancing 1 ms per call
    calls = []

    def run():
        calls.append(1)
        return 2.0

    policy = TimingPolicy(warmup_runs=3, warmup_ms=0.0, repeats=50, min_time_ms=150.0)
    samples = collect(run, policy, clock=lambda: next(ticks))
    assert len(samples) == 75  # 50 repeats would be 100 ms; 150 ms of 2-ms samples needs 75
    assert len(calls) == 3 + 75


def test_unstable_measurement_is_repeated_and_best_attempt_kept():
    # Each attempt: one warm-up run, then 50 samples. Attempt 1 has IQR/median 1.0, attempt 2 0.4, both > 0.05.
    values = iter([0.0] + [1.0, 3.0] * 25 + [0.0] + [1.0, 1.5] * 25 + [0.0] + [2.0] * 50)
    policy = TimingPolicy(warmup_runs=1, warmup_ms=0.0, repeats=50, min_time_ms=0.0, max_remeasure=1)
    stats, attempts = measure_stable(lambda: next(values), policy)
    assert attempts == 2 and not stats.stable
    assert stats.median == pytest.approx(1.25)
    policy = TimingPolicy(warmup_runs=1, warmup_ms=0.0, repeats=50, min_time_ms=0.0, max_remeasure=5)
    stats, attempts = measure_stable(lambda: next(values), policy)
    assert attempts == 1 and stats.stable and stats.median == 2.0


def test_fit_line_recovers_slope_and_intercept():
    intercept, slope = fit_line([1, 2, 4], [0.05 + 0.03 * k for k in (1, 2, 4)])
    assert (intercept, slope) == pytest.approx((0.05, 0.03))
    with pytest.raises(HwbcnetError):
        fit_line([1, 1], [2, 3])
