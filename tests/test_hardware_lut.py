import json

import numpy as np
import pytest

from hardware_fakes import FakeBackend, TinySpace, fast_profile, per_copy_ms
from hwbcnet.costs.base import Cost
from hwbcnet.costs.latency import LatencyCost, fit_calibration
from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.cells import CellKey, arch_cells, enumerate_cells, needs_baseline
from hwbcnet.hardware.lut import Lut, lut_path
from hwbcnet.hardware.profiler import build_lut


def _models_per_cell(cell, profile):
    return len(profile.branches) * (2 if needs_baseline(cell) else 1)


@pytest.fixture
def built(tmp_path):
    space, profile = TinySpace(), fast_profile()
    lut = build_lut(space, profile, tmp_path / "tiny.json", progress=False, backend=FakeBackend())
    return space, profile, lut


def test_build_measures_every_cell_with_exact_differential_values(built):
    space, profile, lut = built
    cells = enumerate_cells(space)
    assert len(lut.cells) == len(cells) and not lut.partial
    conv = CellKey("conv", 8, 12, 8, 8, kernel=3, stride=2, padding=1, bn=True, act="relu")
    entry = lut.cells[lut.key(conv)]
    assert entry["median_ms"] == pytest.approx(0.012)  # the fake's per-copy cost; the 0.01 ms overhead is removed
    assert entry["intercept_ms"] == pytest.approx(0.01)
    assert entry["isolated_ms"] == pytest.approx(0.022)
    assert entry["n"] == 2 * len(profile.branches) * 50 and len(entry["passes_ms"]) == 2
    add = CellKey("add", 6, 6, 4, 4, act="relu")
    assert lut.value_ms(add) == pytest.approx(0.006)  # conv+add minus the conv baseline
    reloaded = Lut.load(lut.path, space=space, profile=profile)
    assert reloaded.data["provenance"]["device"] == "fake-cpu"
    assert reloaded.data["measurement"]["branches"] == [1, 4]


def test_resume_after_a_kill_loses_nothing_and_repeats_nothing(tmp_path):
    space, profile = TinySpace(), fast_profile()
    cells = enumerate_cells(space)
    calls_total = profile.passes * sum(_models_per_cell(c, profile) for c in cells)
    reference = build_lut(space, profile, tmp_path / "ref.json", progress=False, backend=FakeBackend())
    for fail_at in np.random.default_rng(0).integers(2, calls_total, size=4):
        path = tmp_path / f"killed-{fail_at}.json"
        with pytest.raises(KeyboardInterrupt):
            build_lut(space, profile, path, progress=False, backend=FakeBackend(fail_at=int(fail_at)))
        saved = Lut.load(path, space=space, profile=profile)
        remaining = sum((profile.passes - saved.passes_done(c, profile.passes)) * _models_per_cell(c, profile)
                        for c in cells)
        assert 0 < remaining < calls_total
        resumed_backend = FakeBackend()
        resumed = build_lut(space, profile, path, progress=False, backend=resumed_backend)
        assert resumed_backend.calls == remaining  # only the unfinished cell-passes were measured
        assert {k: v["median_ms"] for k, v in resumed.cells.items()} == pytest.approx(
            {k: v["median_ms"] for k, v in reference.cells.items()})
        rerun = FakeBackend()
        build_lut(space, profile, path, progress=False, backend=rerun)
        assert rerun.calls == 0


def test_predictor_returns_exact_sums_of_known_cells(tmp_path):
    space, profile = TinySpace(), fast_profile()
    lut = Lut.new(tmp_path / "known.json", space, profile, {"device": "x"})
    rng = np.random.default_rng(1)
    known = {}
    for cell in enumerate_cells(space):
        known[cell] = float(rng.uniform(0.001, 1.0))
        lut.cells[lut.key(cell)] = {"median_ms": known[cell], "stable": True}
    cost = LatencyCost(space, lut)
    assert isinstance(cost, Cost) and (cost.name, cost.unit) == ("latency", "ms")
    archs = np.concatenate([space.random_archs(rng, 200), space.full_arch()[None], space.min_arch()[None]])
    expected = np.array([sum(known[c] for c in arch_cells(space, arch)) for arch in archs])
    np.testing.assert_allclose(cost(archs), expected, rtol=1e-12)
    lut.set_calibration(0.5, 2.0, [], {})
    np.testing.assert_allclose(LatencyCost(space, lut)(archs), 0.5 + 2.0 * expected, rtol=1e-12)
    with pytest.raises(HwbcnetError, match="outside|must lie"):
        cost(np.full((1, space.num_vars), space.bins + 1))


def test_missing_cells_are_an_error_listing_them(built):
    space, _, lut = built
    dropped = [CellKey("add", 4, 4, 4, 4, act="relu"), CellKey("linear", 6, 10, 1, 1, bias=True)]
    for cell in dropped:
        del lut.cells[lut.key(cell)]
    with pytest.raises(HwbcnetError) as error:
        LatencyCost(space, lut)
    message = str(error.value)
    assert message.startswith("2 cells missing from") and "hwbcnet profile" in message
    assert all(str(cell) in message for cell in dropped)


def test_calibration_fit_recovers_known_a_and_b():
    sums = np.array([1.0, 2.0, 3.5, 5.0, 8.0])
    a, b, residuals = fit_calibration(sums, 0.3 + 1.2 * sums)
    assert (a, b) == pytest.approx((0.3, 1.2))
    assert residuals["rmse_ms"] == pytest.approx(0.0, abs=1e-12)


def test_lut_path_convention():
    assert str(lut_path("cpu", "resnet20", 32, 1)) == "lut/cpu/resnet20-32-b1.json"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(kind="hwbcnet.arch"), "expected a hwbcnet.lut file"),
    (lambda d: d.update(schema_version=99), "schema version 99"),
    (lambda d: d.pop("cells"), "corrupt"),
    (lambda d: d["cells"].update({"conv k1 s1 p0 1->1 1x1 | b1": {"stable": True}}), "corrupt"),
])
def test_corrupt_files_are_refused(built, mutate, message):
    space, profile, lut = built
    data = json.loads(lut.path.read_text())
    mutate(data)
    lut.path.write_text(json.dumps(data))
    with pytest.raises(HwbcnetError, match=message):
        Lut.load(lut.path, space=space, profile=profile)


def test_truncated_file_is_refused(built):
    _, _, lut = built
    lut.path.write_text(lut.path.read_text()[:200])
    with pytest.raises(HwbcnetError, match="not valid JSON"):
        Lut.load(lut.path)


def test_foreign_files_are_refused(built):
    space, profile, lut = built
    with pytest.raises(HwbcnetError, match="measured on device 'cpu', not 'gpu'"):
        Lut.load(lut.path, profile=fast_profile(name="gpu"))
    with pytest.raises(HwbcnetError, match="settings"):
        Lut.load(lut.path, profile=fast_profile(threads=2))
    other_model = TinySpace()
    other_model.model = "resnet20"
    with pytest.raises(HwbcnetError, match="for tiny at 8 px, not resnet20"):
        Lut.load(lut.path, space=other_model)
    with pytest.raises(HwbcnetError, match="another width space"):
        Lut.load(lut.path, space=TinySpace(bins=8))
    with pytest.raises(HwbcnetError, match="another width space"):
        build_lut(TinySpace(bins=8), profile, lut.path, progress=False, backend=FakeBackend())


def test_resume_on_another_machine_is_refused(built):
    space, profile, lut = built

    class OtherMachine(FakeBackend):
        def environment(self, profile):
            return {**super().environment(profile), "device": "other-cpu"}

    with pytest.raises(HwbcnetError, match="device"):
        build_lut(space, profile, lut.path, progress=False, backend=OtherMachine())


def test_fake_backend_cost_model():
    import onnx
    from hwbcnet.hardware.cells import cell_onnx

    model = onnx.load_from_string(cell_onnx(CellKey("add", 6, 6, 4, 4, act="relu"), 1, "fp32", copies=2))
    assert per_copy_ms(model) == pytest.approx(0.012)


def test_expected_latency_matches_monte_carlo(tmp_path):
    """LatencyCost.expectation (what the search prior aims at a latency budget) is the exact mean under independent
    per-variable width distributions."""
    import torch

    from hwbcnet.search.prior import sample_from_prior

    space, profile = TinySpace(), fast_profile()
    lut = Lut.new(tmp_path / "known.json", space, profile, {"device": "x"})
    rng = np.random.default_rng(2)
    for cell in enumerate_cells(space):
        lut.cells[lut.key(cell)] = {"median_ms": float(rng.uniform(0.001, 1.0)), "stable": True}
    lut.set_calibration(0.25, 1.5, [], {})
    cost = LatencyCost(space, lut)
    probs = rng.dirichlet(np.ones(space.bins - space.min_bins + 1), size=space.num_vars)
    expected = float(cost.expectation(torch.as_tensor(probs)))
    draws = sample_from_prior(space, probs, rng, 200_000)
    assert cost(draws).mean() == pytest.approx(expected, rel=5e-3)
