"""`hwbcnet search --verify` end to end on a tiny supernet, timed by a fake device that got slower since its LUT was
calibrated: the pick misses, the calibration is refitted, the search runs again under it, the next pick hits."""

import json

import pytest

from hardware_fakes import ShiftingSpeedBackend, conv_lut, fast_profile
from hwbcnet.cli import main
from hwbcnet.costs.calibration import calibrate_lut
from hwbcnet.costs.latency import LatencyCost
from hwbcnet.hardware.backends import base as backends_base
from hwbcnet.hardware.backends import get_backend
from hwbcnet.hardware.lut import Lut
from hwbcnet.training.trainer import TrainConfig, train_supernet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify-search")
    config = TrainConfig(model="resnet20", data="digits", principle="bcnetv2", resolution=16, width_mult=0.5, bins=4,
                         epochs=1, batch_size=32, max_steps_per_epoch=6)
    result = train_supernet(config, out, progress=False)
    return result.checkpoint, result.space


@pytest.fixture
def device(trained, tmp_path, monkeypatch):
    """A calibrated LUT of the supernet's space and the fake device standing in for ONNX Runtime."""
    _, space = trained
    backend = ShiftingSpeedBackend()
    conv_lut(tmp_path / "lut.json", space, fast_profile())
    calibrate_lut(space, fast_profile(), tmp_path / "lut.json", samples=6, repeats=1, backend=backend, progress=False)
    get_backend("onnxruntime")  # registers the real one first, which would otherwise replace the fake on first use
    monkeypatch.setitem(backends_base._INSTANCES, "onnxruntime", backend)
    return tmp_path / "lut.json", backend


def _search(checkpoint, lut, out, budget, capsys, *extra):
    """`budget`: ms, or a budget string such as "90%"."""
    code = 0
    try:
        main(["search", "-c", str(checkpoint), "-o", str(out), "--latency",
              budget if isinstance(budget, str) else f"{budget:.6f}ms", "--device", "cpu",
              "--lut", str(lut), "--lower", "0.92", "--margin", "0", "--population", "8", "--generations", "2",
              "--top-k", "3", "--bn-batches", "1", "--final-bn-batches", "2", "--verify", "--verify-repeats", "1",
              *extra])
    except SystemExit as exit_:
        code = exit_.code or 0
    return code, capsys.readouterr()


def test_a_miss_is_refitted_researched_and_met_and_an_unreachable_budget_exits_1(trained, device, tmp_path, capsys):
    checkpoint, space = trained
    lut, backend = device
    budget = 0.9 * float(LatencyCost(space, Lut.load(lut))(space.full_arch()[None])[0])
    backend.factor = 1.15
    code, captured = _search(checkpoint, lut, tmp_path / "search.json", budget, capsys)
    assert code == 0, captured.err
    result = json.loads((tmp_path / "search.json").read_text())
    verification = result["verification"]
    assert verification["status"] == "met" and [r["status"] for r in verification["rounds"]][-1] == "within"
    assert verification["rounds"][0]["status"] == "over" and verification["researched"] >= 1
    assert result["arch"]["code"] == verification["rounds"][-1]["arch"]
    # the pick's recorded latency comes from the refitted LUT, which now predicts the slower device
    assert result["costs"]["latency_ms"] == pytest.approx(verification["rounds"][-1]["measured_ms"])
    assert Lut.load(lut).calibration["b"] == pytest.approx(1.15 * backend.b)
    assert "latency verification" in captured.out

    # the machine slows down much more and only one round is allowed: exit code 1, the reason, the record kept
    backend.factor = 1.15 * 1.5
    code, captured = _search(checkpoint, lut, tmp_path / "again.json", budget, capsys, "--verify-rounds", "1")
    assert code == 1 and "not met after 1 verification round" in captured.out
    assert json.loads((tmp_path / "again.json").read_text())["verification"]["status"] == "unmet"


def test_a_percentage_budget_is_resolved_once_so_a_refit_cannot_move_it(trained, device, tmp_path, capsys):
    checkpoint, space = trained
    lut, backend = device
    budget = 0.9 * float(LatencyCost(space, Lut.load(lut))(space.full_arch()[None])[0])
    backend.factor = 1.15  # uniformly slower: 90 % of the refitted full model would be 15 % more ms
    code, captured = _search(checkpoint, lut, tmp_path / "search.json", "90%", capsys)
    assert code == 0, captured.err
    result = json.loads((tmp_path / "search.json").read_text())
    rounds = result["verification"]["rounds"]
    assert rounds[0]["status"] == "over" and rounds[-1]["status"] == "within" and len(rounds) >= 2
    assert [r["budget_ms"] for r in rounds] == pytest.approx([budget] * len(rounds))
    assert rounds[-1]["arch"] != rounds[0]["arch"] and rounds[-1]["measured_ms"] <= budget
    latency = next(b for b in result["budgets"] if b["cost"] == "latency")
    assert latency["budget"] == "90%" and latency["high"] == pytest.approx(budget)
