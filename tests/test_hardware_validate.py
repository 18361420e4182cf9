import onnx
import pytest

from hardware_fakes import FakeBackend, fast_profile
from hwbcnet.hardware.cells import enumerate_cells
from hwbcnet.hardware.lut import Lut
from hwbcnet.hardware.timing import summarize
from hwbcnet.costs.calibration import accuracy, calibrate_lut, validate_lut
from hwbcnet.hardware.report import lut_heatmap, lut_summary
from hwbcnet.space import build_space

A_MS, B = 0.25, 1.5


def conv_ms(c_out: int) -> float:
    return 0.001 * c_out


class ConvCountingBackend(FakeBackend):
    """End-to-end 'latency' of an exported model = A + B * sum over its convolutions of conv_ms(out channels)."""

    def measure(self, onnx_bytes, profile, policy=None):
        self.calls += 1
        model = onnx.load_from_string(onnx_bytes)
        shapes = {init.name: init.dims for init in model.graph.initializer}
        total = sum(conv_ms(shapes[node.input[1]][0]) for node in model.graph.node if node.op_type == "Conv")
        return summarize([A_MS + B * total] * 50, 0.05)


@pytest.fixture(scope="module")
def space():
    return build_space("resnet20", bins=4)


@pytest.fixture
def lut(space, tmp_path):
    profile = fast_profile()
    lut = Lut.new(tmp_path / "lut.json", space, profile, {"device": "fake-cpu"})
    for cell in enumerate_cells(space):
        lut.cells[lut.key(cell)] = {"median_ms": conv_ms(cell.c_out) if cell.kind == "conv" else 0.0,
                                    "stable": cell.kind == "conv"}
    lut.save()
    return lut


def test_calibration_recovers_a_and_b_from_measured_subnets(space, lut):
    profile = fast_profile()
    backend = ConvCountingBackend()
    calibration = calibrate_lut(space, profile, lut.path, samples=4, repeats=2, backend=backend, progress=False)
    assert backend.calls == 8
    assert (calibration["a_ms"], calibration["b"]) == pytest.approx((A_MS, B))
    assert calibration["n"] == 4 and calibration["fitted_on"][0]["arch"] == space.format_arch(space.full_arch())
    assert Lut.load(lut.path).calibration["b"] == pytest.approx(B)

    report = validate_lut(space, profile, lut.path, samples=5, repeats=1, backend=backend, progress=False,
                          plot=lut.path.parent / "validate.png")
    assert report["calibrated"] and report["mdape"] == pytest.approx(0.0, abs=1e-9)
    assert report["within10"] == 1.0 and report["spearman"] == pytest.approx(1.0)
    assert len(report["rows"]) == 5 and (lut.path.parent / "validate.png").stat().st_size > 0


def test_accuracy_metrics_are_exact():
    metrics = accuracy([1.0, 2.25, 3.5, 8.0], [1.0, 2.0, 4.0, 8.0])
    assert metrics["mdape"] == 6.25  # errors 0, 12.5, 12.5, 0 %
    assert (metrics["within5"], metrics["within10"]) == (0.5, 0.5)
    assert metrics["spearman"] == pytest.approx(1.0) and metrics["kendall"] == pytest.approx(1.0)


def test_summary_and_heatmap(space, lut, tmp_path):
    summary = lut_summary(Lut.load(lut.path))
    cells = enumerate_cells(space)
    assert summary["cells"] == len(cells) and summary["incomplete_cells"] == 0
    assert summary["unstable_cells"] == sum(c.kind != "conv" for c in cells)
    assert summary["by_kind"]["conv"]["max_ms"] == pytest.approx(0.064)
    assert summary["slowest"][0]["median_ms"] == pytest.approx(0.064)
    png = lut_heatmap(Lut.load(lut.path), tmp_path / "heat.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_validation_with_calibration_measured_in_the_same_rounds(space, lut):
    """`lut validate --calibrate k`: the fit uses k extra subnets measured interleaved with the validation ones."""
    profile = fast_profile()
    backend = ConvCountingBackend()
    assert Lut.load(lut.path).calibration is None
    report = validate_lut(space, profile, lut.path, samples=5, repeats=2, calibrate=4, backend=backend,
                          progress=False)
    assert backend.calls == (5 + 4) * 2
    assert report["calibrated_together"] == 4 and len(report["rows"]) == 5
    assert report["mdape"] == pytest.approx(0.0, abs=1e-9)
    stored = Lut.load(lut.path).calibration
    assert (stored["a_ms"], stored["b"]) == pytest.approx((A_MS, B)) and stored["n"] == 4
