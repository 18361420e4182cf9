"""The README's main job end to end (fewer steps through options, the same code path), then the CLI's
hardware and deployment commands on its outputs."""

import json
import os
import shutil

import pytest

from cli_runner import run_cli
from hwbcnet.cli import main
from hwbcnet.export.onnx_export import read_export_metadata
from hwbcnet.hardware.backends.tensorrt import gpu_available


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    with pytest.raises(SystemExit) as exit_:
        main(["quickstart", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "4", "--generations", "1"])
    assert exit_.value.code in (0, None)
    return out


@pytest.mark.timeout(600)
def test_quickstart_outputs_and_cache(quickstart_dir, capsys):
    out = quickstart_dir
    for name in ("supernet.pt", "search.json", "search-pareto.png", "subnet.pt", "model.onnx",
                 "lut/cpu/resnet20-32-b1.json"):
        assert (out / name).is_file(), name
    search = json.loads((out / "search.json").read_text())
    assert {b["cost"] for b in search["budgets"]} == {"latency", "flops"}
    for budget in search["budgets"]:
        value = search["costs"]["latency_ms" if budget["cost"] == "latency" else budget["cost"]]
        assert budget["low"] <= value <= budget["high"]
    lut = json.loads((out / "lut/cpu/resnet20-32-b1.json").read_text())
    assert lut["calibration"] is not None
    # a second run reuses every stage: no file is rewritten
    stamps = {p: os.stat(out / p).st_mtime_ns for p in ("supernet.pt", "subnet.pt", "model.onnx",
                                                        "lut/cpu/resnet20-32-b1.json", "search.json")}
    code, stdout, _ = run_cli(["quickstart", "--out", out, "--epochs", "1", "--max-steps-per-epoch", "4",
                               "--generations", "1"], capsys)
    assert code == 0 and "cached" in stdout and "quickstart result" in stdout
    assert {p: os.stat(out / p).st_mtime_ns for p in stamps} == stamps


def test_info_predicts_latency_from_the_lut(quickstart_dir, capsys):
    lut = quickstart_dir / "lut/cpu/resnet20-32-b1.json"
    code, stdout, err = run_cli(["info", "--model", "resnet20", "--resolution", 32, "--bins", 4, "--min-bins", 2,
                                 "--device", "cpu", "--lut", lut, "--arch", "full", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout)
    search = json.loads((quickstart_dir / "search.json").read_text())
    full_latency = next(b for b in search["budgets"] if b["cost"] == "latency")["high"] / 0.75
    assert result["latency_ms"] == pytest.approx(full_latency)


def test_lut_show_writes_heatmap(quickstart_dir, capsys, tmp_path):
    lut = quickstart_dir / "lut/cpu/resnet20-32-b1.json"
    code, stdout, err = run_cli(["lut", "show", "--device", "cpu", "--model", "resnet20", "--resolution", 32,
                                 "--bins", 4, "--min-bins", 2, "--lut", lut, "--heatmap", tmp_path / "h.png", "--json"],
                                capsys)
    assert code == 0, err
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(stdout)["heatmap"] == str(tmp_path / "h.png")


def test_lut_for_another_space_is_refused(quickstart_dir, capsys):
    lut = quickstart_dir / "lut/cpu/resnet20-32-b1.json"
    code, _, err = run_cli(["info", "--model", "resnet20", "--resolution", 32, "--device", "cpu", "--lut", lut], capsys)
    assert code == 2 and err.count("\n") == 1


def test_verify_strict_exit_codes(quickstart_dir, capsys):
    onnx_file = quickstart_dir / "model.onnx"
    code, stdout, _ = run_cli(["verify", "--device", "cpu", "--model", onnx_file, "--budget", "10s", "--strict",
                               "--json"], capsys)
    result = json.loads(stdout)
    assert code == 0 and result["within_budget"] and result["measured_ms"] > 0
    # no LUT given: the prediction recorded at export (the search's) is reported
    search = json.loads((quickstart_dir / "search.json").read_text())
    assert result["predicted_ms"] == pytest.approx(search["costs"]["latency_ms"])
    code, _, _ = run_cli(["verify", "--device", "cpu", "--model", onnx_file, "--budget", "1us", "--strict"], capsys)
    assert code == 1
    code, _, _ = run_cli(["verify", "--device", "cpu", "--model", onnx_file, "--budget", "1us"], capsys)
    assert code == 0


def test_export_commands(quickstart_dir, capsys, tmp_path):
    code, stdout, err = run_cli(["export", "--subnet", quickstart_dir / "subnet.pt", "--onnx", tmp_path / "m.onnx",
                                 "--dynamic-batch", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["onnx"]["max_abs_diff"] < 1e-4
    for args, needle in [([], "--search"), (["--from-onnx", tmp_path / "m.onnx", "--onnx", tmp_path / "x.onnx"],
                                            "give only --from-onnx"),
                         (["--subnet", quickstart_dir / "subnet.pt", "--fp16"], "add --trt")]:
        code, _, err = run_cli(["export", *args], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.skipif(gpu_available(), reason="checks the message of a machine without TensorRT")
def test_export_trt_without_onnx_on_a_machine_without_tensorrt(quickstart_dir, capsys, tmp_path):
    """`hwbcnet export --search S --trt` as typed: the ONNX lands next to search.json, then the one-line
    missing-TensorRT error says how to build the engine where the GPU is."""
    search = shutil.copy(quickstart_dir / "search.json", tmp_path / "search.json")
    code, _, err = run_cli(["export", "--search", search, "--trt"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "pip install tensorrt-cu12" in err and f"the ONNX model is at {tmp_path / 'search.onnx'}" in err
    assert "hwbcnet export --from-onnx search.onnx --trt" in err
    assert read_export_metadata(tmp_path / "search.onnx")["arch_code"] == json.loads(search.read_text())["arch"]["code"]


def test_devices_json(capsys):
    code, stdout, _ = run_cli(["devices", "--json"], capsys)
    profiles = json.loads(stdout)
    assert code == 0 and {"cpu", "gpu", "jetson-orin-nano", "jetson-orin-nx", "jetson-orin-agx", "ort-cuda-fp16",
                          "ort-cuda-fp32"} <= set(profiles)
    assert profiles["gpu"]["channel_divisor"] == 8
    assert profiles["cpu"]["threads"] == 1


def test_unknown_device(capsys):
    code, _, err = run_cli(["profile", "--device", "tpu", "--model", "resnet20"], capsys)
    assert code == 2 and "tpu" in err


def test_verify_warnings_say_why_a_model_is_over_the_budget_its_pick_met():
    from hwbcnet.quickstart import verify_warnings

    quiet = {"load_warning": None, "speed_warning": None, "within_budget": True, "speed_comparable": True}
    assert verify_warnings(quiet, "met") == []
    slow = {**quiet, "within_budget": False, "speed_comparable": False, "speed_warning": "the device runs 25 % slower"}
    assert verify_warnings(slow, "met") == ["the device runs 25 % slower"]  # the speed check already says why
    edge = verify_warnings({**quiet, "within_budget": False}, "met")
    assert len(edge) == 1 and "on a device at its calibrated speed: the pick sits at the budget's edge" in edge[0]
    unchecked = verify_warnings({**quiet, "within_budget": False, "speed_comparable": None}, "met")
    assert len(unchecked) == 1 and "speed probably changed" in unchecked[0]
    assert verify_warnings({**quiet, "within_budget": False}, "unmet") == []  # the loop's own message said it
    busy = verify_warnings({**quiet, "load_warning": "the machine is busier"}, "met")
    assert busy == ["the machine is busier"]
