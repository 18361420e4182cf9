import numpy as np
import onnx
import pytest
import torch

from hwbcnet.costs.latency import LatencyCost
from hwbcnet.errors import HwbcnetError
from hwbcnet.export.onnx_export import export_onnx
from hwbcnet.export.verify import verify
from hwbcnet.hardware.cells import enumerate_cells
from hwbcnet.hardware.lut import Lut
from hwbcnet.hardware.profiles import load_profile
from hwbcnet.hardware.timing import summarize
from hwbcnet.space import build_space
from hwbcnet.supernet.extract import build_standalone

QUICK_CPU = """
name = "cpu"
backend = "onnxruntime"
precision = "fp32"
batch = 1
threads = 1
[timing.model]
warmup_runs = 2
warmup_ms = 0.0
repeats = 50
min_time_ms = 0.0
max_remeasure = 0
"""


class FixedBackend:
    """Returns the samples 1, 2, ..., 100 ms for every model: median 50.5, p10 10.9, p90 90.1."""

    name = "fixed"
    shared_input_branches = True

    def __init__(self):
        self.measured: list[bytes] = []

    def environment(self, profile):
        return {"device": "test machine"}

    def measure(self, onnx_bytes, profile, policy=None):
        self.measured.append(onnx_bytes)
        return summarize(np.arange(1.0, 101.0), 0.05)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    space = build_space("cbm-resnet")
    arch = space.parse_arch("1234432")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("verify")
    model = build_standalone(space, arch)
    export_onnx(model, space, arch, folder / "model.onnx", dynamic_batch=True,
                metadata={"device": "cpu", "predicted_latency_ms": 40.0})
    export_onnx(model, space, arch, folder / "b2.onnx", batch=2)
    return folder, space, arch


@pytest.fixture(autouse=True)
def no_luts_around(tmp_path, monkeypatch):
    """Default LUT paths are relative (lut/<device>/...): run where none exist unless a test makes one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def quick_cpu(tmp_path):
    path = tmp_path / "cpu.toml"
    path.write_text(QUICK_CPU)
    return load_profile(path)


def make_lut(path, space, profile, calibration=None):
    """A complete LUT whose i-th cell takes (i + 1) / 100 ms."""
    lut = Lut.new(path, space, profile, {"device": "test machine"})
    for index, cell in enumerate(enumerate_cells(space)):
        lut.cells[lut.key(cell)] = {"median_ms": (index + 1) / 100}
    if calibration:
        lut.set_calibration(*calibration, fitted_on=[], residuals={})
    lut.save()
    return lut


def test_budget_and_strict(exported):
    folder, space, arch = exported
    common = dict(backend=FixedBackend())
    result = verify(folder / "model.onnx", "cpu", budget_ms=60.0, strict=True, **common)
    assert (result["measured_ms"], result["p10_ms"], result["p90_ms"]) == pytest.approx((50.5, 10.9, 90.1), rel=1e-12)
    assert result["budget_ms"] == 60.0 and result["within_budget"] is True and result["failed"] is False
    over = verify(folder / "model.onnx", "cpu", budget_ms="50ms", strict=True, **common)
    assert over["budget_ms"] == 50.0 and over["within_budget"] is False and over["failed"] is True
    lenient = verify(folder / "model.onnx", "cpu", budget_ms="50ms", strict=False, **common)
    assert lenient["within_budget"] is False and lenient["failed"] is False
    unbudgeted = verify(folder / "model.onnx", "cpu", strict=True, **common)
    assert unbudgeted["within_budget"] is None and unbudgeted["failed"] is False
    assert result["device"] == "cpu" and result["device_name"] == "test machine"
    assert result["model"] == "cbm-resnet" and result["arch_code"] == "1234432"


def test_prediction_from_the_device_lut(exported, tmp_path):
    folder, space, arch = exported
    profile = load_profile("cpu")
    lut = make_lut(tmp_path / "lut.json", space, profile)
    expected = float(LatencyCost(space, lut)(arch[None])[0])
    result = verify(folder / "model.onnx", profile, lut_path=tmp_path / "lut.json", backend=FixedBackend())
    assert result["predicted_ms"] == pytest.approx(expected, rel=1e-12)
    assert result["predicted_note"] == f"LUT {tmp_path / 'lut.json'} (uncalibrated sum of cells)"
    assert result["error_pct"] == pytest.approx(100 * (expected - 50.5) / 50.5)

    make_lut(tmp_path / "calibrated.json", space, profile, calibration=(0.5, 2.0))
    calibrated = verify(folder / "model.onnx", profile, lut_path=tmp_path / "calibrated.json", backend=FixedBackend())
    assert calibrated["predicted_ms"] == pytest.approx(0.5 + 2.0 * expected, rel=1e-12)
    assert calibrated["predicted_note"].endswith("(calibrated)")


def test_default_lut_location_and_fallbacks(exported, tmp_path):
    folder, space, arch = exported
    # No LUT: the prediction recorded at export time for the same device is used.
    result = verify(folder / "model.onnx", "cpu", backend=FixedBackend())
    assert result["predicted_ms"] == 40.0
    assert result["predicted_note"] == "recorded at export time (no LUT at lut/cpu/cbm-resnet-32-b1.json)"
    assert result["error_pct"] == pytest.approx(100 * (40.0 - 50.5) / 50.5)
    # Another device without a LUT: no prediction, and the note says how to get one.
    gpu = verify(folder / "model.onnx", "cpu-2t", backend=FixedBackend())
    assert gpu["predicted_ms"] is None and gpu["error_pct"] is None
    assert "hwbcnet profile --device cpu-2t --model cbm-resnet" in gpu["predicted_note"]
    # The default LUT path is lut/<device>/<model>-<resolution>-b<batch>.json.
    make_lut(tmp_path / "lut" / "cpu" / "cbm-resnet-32-b1.json", space, load_profile("cpu"))
    assert verify(folder / "model.onnx", "cpu", backend=FixedBackend())["predicted_note"].startswith("LUT lut/cpu/")
    with pytest.raises(HwbcnetError, match="LUT not found"):
        verify(folder / "model.onnx", "cpu", lut_path=tmp_path / "missing.json", backend=FixedBackend())


def test_lut_of_other_settings_is_refused(exported, tmp_path):
    folder, space, arch = exported
    make_lut(tmp_path / "lut.json", space, load_profile("cpu-2t"))
    with pytest.raises(HwbcnetError, match="measured on device 'cpu-2t', not 'cpu'"):
        verify(folder / "model.onnx", "cpu", lut_path=tmp_path / "lut.json", backend=FixedBackend())


def test_tensorrt_profile_measures_the_fp16_static_model(exported):
    folder, *_ = exported
    backend = FixedBackend()
    verify(folder / "model.onnx", "gpu", backend=backend)
    measured = onnx.load_from_string(backend.measured[0])
    assert measured.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_value for d in measured.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]


def test_batch_mismatch_and_bad_budget(exported):
    folder, *_ = exported
    with pytest.raises(HwbcnetError, match="fixed batch of 2 but device cpu times batch 1"):
        verify(folder / "b2.onnx", "cpu", backend=FixedBackend())
    with pytest.raises(HwbcnetError, match="not a percentage"):
        verify(folder / "model.onnx", "cpu", budget_ms="50%", backend=FixedBackend())
    with pytest.raises(HwbcnetError, match="ONNX file not found"):
        verify(folder / "missing.onnx", "cpu", backend=FixedBackend())


def test_onnxruntime_measurement(exported, quick_cpu):
    folder, *_ = exported
    within = verify(folder / "model.onnx", quick_cpu, budget_ms="10s", strict=True)
    assert within["measured_ms"] > 0 and within["samples"] >= 50
    assert within["p10_ms"] <= within["measured_ms"] <= within["p90_ms"]
    assert within["within_budget"] is True and within["failed"] is False
    over = verify(folder / "model.onnx", quick_cpu, budget_ms="1us", strict=True)
    assert over["within_budget"] is False and over["failed"] is True
    assert over["settings"] == {"backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1,
                                "optimization_level": "all"}


class OnePassSlowBackend(FixedBackend):
    """Like FixedBackend, but one timing pass in three runs 10 % slow (another process woke up): 55.55 ms."""

    def measure(self, onnx_bytes, profile, policy=None):
        self.measured.append(onnx_bytes)
        slow = 1.1 if len(self.measured) % 3 == 1 else 1.0
        return summarize(slow * np.arange(1.0, 101.0), 0.05)


def test_the_median_of_repeated_passes_counts(exported):
    folder, _, _ = exported
    backend = OnePassSlowBackend()
    result = verify(folder / "model.onnx", "cpu", budget_ms="52ms", strict=True, backend=backend)
    assert len(backend.measured) == 3 and result["rounds_ms"] == pytest.approx([50.5, 50.5, 55.55])
    assert result["measured_ms"] == pytest.approx(50.5) and result["failed"] is False  # the slow pass does not count
    single = verify(folder / "model.onnx", "cpu", budget_ms="52ms", strict=True, repeats=1, backend=OnePassSlowBackend())
    assert single["measured_ms"] == pytest.approx(55.55) and single["failed"] is True
    with pytest.raises(HwbcnetError, match="--repeats 0"):
        verify(folder / "model.onnx", "cpu", repeats=0, backend=FixedBackend())
