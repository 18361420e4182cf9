"""The latency-constrained Channel-Bench-Macro bench on a fake device whose timings a calibrated LUT predicts
exactly (speed factor 1) or that drifted since the calibration."""

import numpy as np
import pytest

from hardware_fakes import ShiftingSpeedBackend, conv_lut, fast_profile
from hwbcnet.cli import main
from hwbcnet.costs.calibration import calibrate_lut
from hwbcnet.costs.latency import LatencyCost
from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.lut import Lut
from hwbcnet.search.cbm_bench import run_cbm_latency_bench
from hwbcnet.space import build_space


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    space = build_space("cbm-resnet")
    path = tmp_path_factory.mktemp("cbm") / "cbm-resnet.json"
    conv_lut(path, space, fast_profile())
    backend = ShiftingSpeedBackend()
    calibrate_lut(space, fast_profile(), path, samples=6, repeats=1, backend=backend, progress=False)
    return space, path, backend


def _bench(path, backend, **changes):
    options = dict(queries=60, seeds=1, repeats=1, candidates=3, margin="0", backend=backend, progress=False)
    options.update(changes)
    return run_cbm_latency_bench("resnet", "50%", "cpu", str(path), **options)


def test_picks_are_measured_and_scored_against_the_confirmed_optimum(calibrated):
    space, path, backend = calibrated
    backend.factor = 1.0
    result = _bench(path, backend)
    cost = LatencyCost(space, Lut.load(path))
    budget = 0.5 * float(cost(space.full_arch()[None])[0])
    assert result["budget_ms"] == pytest.approx(budget) and result["lower"] == 0.9
    assert set(result["methods"]) == {"lut-evolution-prior", "lut-evolution-random", "lut-evolution-prior+predictor",
                                      "lut-evolution-prior, no guard band", "flops-evolution-prior", "lut-random",
                                      "uniform", "lut-evolution-prior, --verify loop"}
    # on a device the LUT predicts exactly, the loop accepts the search's own pick
    assert (result["methods"]["lut-evolution-prior, --verify loop"]["picks"][0]["arch"]
            == result["methods"]["lut-evolution-prior"]["picks"][0]["arch"])
    best = result["best_in_window"]
    assert best["confirmed"] and 0.9 * budget <= best["measured_ms"] <= budget
    assert result["drift"]["measured_over_predicted_median"] == pytest.approx(1.0)
    for name, method in result["methods"].items():
        assert len(method["picks"]) == 1
        for pick in method["picks"]:
            arch = space.parse_arch(pick["arch"])
            assert pick["measured_ms"] == pytest.approx(float(cost(arch[None])[0]))  # the fake device = the LUT
            assert pick["ratio"] == pytest.approx(pick["measured_ms"] / budget)
            assert pick["hit"] == (0.9 * budget <= pick["measured_ms"] <= budget)
            assert pick["regret"] == pytest.approx(best["acc"] - pick["acc"])
        if name.startswith("lut-"):  # searched inside the predicted window, which the device confirms
            assert method["hit_rate"] == 1.0 and method["within_rate"] == 1.0
    uniform = space.parse_arch(result["methods"]["uniform"]["picks"][0]["arch"])
    assert len(set(uniform.tolist())) == 1 and cost(uniform[None])[0] <= budget
    assert cost(np.minimum(uniform + 1, space.bins)[None])[0] > budget or uniform[0] == space.bins


def test_a_machine_slower_than_its_calibration_shows_as_drift_and_misses_that_the_loop_corrects(calibrated):
    _, path, backend = calibrated
    backend.factor = 1.2
    before = path.read_bytes()
    result = _bench(path, backend)
    assert result["drift"]["measured_over_predicted_median"] == pytest.approx(1.2)
    lut_pick = result["methods"]["lut-evolution-prior"]["picks"][0]
    assert lut_pick["measured_ms"] == pytest.approx(1.2 * lut_pick["predicted_ms"]) and not lut_pick["within_budget"]
    # the loop measured the miss, refitted a copy of the LUT and found a pick that lies in the window
    loop_pick = result["methods"]["lut-evolution-prior, --verify loop"]["picks"][0]
    assert loop_pick["hit"]
    assert path.read_bytes() == before  # the user's LUT keeps its calibration


def test_random_search_in_a_window_smaller_than_its_queries_takes_the_whole_window(calibrated):
    """A noisy calibration's guard band can leave fewer archs in the window than the queries: random search then
    evaluates all of them (it used to draw forever) and returns the window's most accurate arch."""
    from hwbcnet.search.cbm_bench import _random_search, load_ground_truth
    from hwbcnet.search.constraints import Constraints
    from hwbcnet.budgets import parse_budget

    space, path, _ = calibrated
    cost = LatencyCost(space, Lut.load(path))
    truth = load_ground_truth("resnet")
    oracle = lambda archs: np.array([truth[space.format_arch(a)]["mean"] for a in archs])  # noqa: E731
    window = Constraints(space, [(cost, parse_budget("latency", "50%"))], 0.97)  # 418 archs
    legal = space.all_archs()[window.legal(space.all_archs())]
    assert 0 < len(legal) < 500
    arch, score = _random_search(space, window, oracle, 500, np.random.default_rng(0))
    assert score == pytest.approx(oracle(legal).max()) and window.legal(arch[None])[0]
    empty = Constraints(space, [(cost, parse_budget("latency", "0.001ms"))], 0.9)
    with pytest.raises(HwbcnetError, match="no arch of the space lies in the window"):
        _random_search(space, empty, oracle, 10, np.random.default_rng(0))


def test_bad_options(calibrated, capsys):
    _, path, backend = calibrated
    with pytest.raises(HwbcnetError, match="must be at least 1"):
        _bench(path, backend, repeats=0)
    for args, needle in ((["--latency", "50%"], "--device"), (["--latency", "50%", "--flops", "40%", "-d", "cpu"],
                                                               "exclusive")):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "cbm", *args])
        assert exit_.value.code == 2 and needle in capsys.readouterr().err
