from pathlib import Path

import pytest

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.profiles import list_profiles, load_profile

REPO = Path(__file__).resolve().parents[1]


def test_shipped_profiles_load_and_match_repository_copies():
    names = [profile.name for profile in list_profiles()]
    assert {"cpu", "gpu", "jetson-orin-nano", "jetson-orin-nx", "jetson-orin-agx", "ort-cuda-fp16",
            "ort-cuda-fp32"} <= set(names)
    assert "jetson-xavier-nx" not in names  # retired: Xavier stops at TensorRT 8.5 (see test_nvidia)
    for path in (REPO / "profiles").glob("*.toml"):
        assert (REPO / "hwbcnet/resources/profiles" / path.name).read_text() == path.read_text()


def test_cpu_profile_settings():
    cpu = load_profile("cpu")
    assert (cpu.backend, cpu.precision, cpu.batch, cpu.threads, cpu.optimization_level) == ("onnxruntime", "fp32", 1, 1, "all")
    assert cpu.cell_timing.repeats >= 50 and cpu.passes >= 2
    assert cpu.settings() == {"backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1,
                              "optimization_level": "all"}
    assert cpu.settings_tag() == "b1 fp32 ort-t1-all"


def test_jetson_profile_expects_power_mode_and_locked_clocks():
    nano = load_profile("jetson-orin-nano")
    assert (nano.backend, nano.precision, nano.locked_clocks) == ("tensorrt", "fp16", True)
    assert nano.power_mode and nano.settings()["cuda_graphs"] is False


def test_unknown_name_lists_known_devices():
    with pytest.raises(HwbcnetError, match="known devices: .*cpu.*gpu.*, or jetson / gpu for this machine's own"):
        load_profile("tpu")


@pytest.mark.parametrize("name, divisor", [("cpu", "auto"), ("cpu-2t", "auto"), ("gpu", 8), ("jetson-orin-nano", 8),
                                           ("jetson-orin-nx", 8), ("jetson-orin-agx", 8), ("ort-cuda-fp16", 8),
                                           ("ort-cuda-fp32", 1)])
def test_channel_divisor_defaults(name, divisor):
    from hwbcnet.hardware.backends.onnxruntime import nchwc_block_size

    profile = load_profile(name)
    divisor = nchwc_block_size() if divisor == "auto" else divisor  # ONNX Runtime's NCHWc block on this CPU
    assert profile.channel_divisor == divisor and profile.to_json()["channel_divisor"] == divisor
    assert "channel_divisor" not in profile.settings()  # a width-space default, not a measurement setting


def test_ort_cuda_profiles():
    fp16, fp32 = load_profile("ort-cuda-fp16"), load_profile("ort-cuda-fp32")
    assert (fp16.backend, fp16.precision, fp32.precision) == ("onnxruntime-cuda", "fp16", "fp32")
    assert fp16.settings() == {"backend": "onnxruntime-cuda", "precision": "fp16", "batch": 1, "threads": 1,
                               "optimization_level": "all"}
    assert fp16.settings_tag() == "b1 fp16 ortcuda-t1-all"


def test_user_toml_by_path(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text('name = "board"\nbackend = "onnxruntime"\nprecision = "fp32"\nbatch = 2\nthreads = 4\n'
                    'resolution = 64\n[timing]\nbranches = [1, 2, 4]\n[timing.cell]\nrepeats = 60\n')
    profile = load_profile(str(path))
    assert (profile.name, profile.batch, profile.threads, profile.resolution) == ("board", 2, 4, 64)
    assert profile.branches == (1, 2, 4) and profile.cell_timing.repeats == 60


@pytest.mark.parametrize("text, message", [
    ("name = [", "not valid TOML"),
    ('name = "x"\nbackend = "onnxruntime"\n', "missing precision, batch"),
    ('name = "x"\nbackend = "tflite"\nprecision = "fp32"\nbatch = 1\n', "backend 'tflite'"),
    ('name = "x"\nbackend = "onnxruntime"\nprecision = "fp32"\nbatch = 1\n[timing.cell]\nrepeats = 10\n', "at least 50"),
    ('name = "x"\nbackend = "onnxruntime"\nprecision = "fp32"\nbatch = 1\n[timing.cell]\nrepats = 60\n', "unknown keys"),
    ('name = "x"\nbackend = "tensorrt"\nprecision = "fp16"\nbatch = 1\nchannel_divisor = 0\n', "channel_divisor = 0"),
    ('name = "x"\nbackend = "tensorrt"\nprecision = "fp16"\nbatch = 1\nchannel_divisor = 2.5\n', "whole number"),
    ('name = "x"\nbackend = "tensorrt"\nprecision = "fp16"\nbatch = 1\nchannel_divisor = true\n', "whole number"),
])
def test_bad_profiles_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(HwbcnetError, match=message):
        load_profile(path)
