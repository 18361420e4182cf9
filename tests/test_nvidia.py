"""`--device jetson` / `--device gpu`: Jetson detection from the device tree, /sys/devices/soc0 (containers) and
/etc/nv_tegra_release, the profile it picks, the errors off a Jetson and on unsupported modules; the Jetson image."""

import dataclasses
import re
from pathlib import Path

import pytest

from hardware_fakes import TinySpace, fast_profile
from hwbcnet.cli import main
from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware import nvidia
from hwbcnet.hardware.backends.tensorrt import TensorRTBackend
from hwbcnet.hardware.profiler import build_lut
from hwbcnet.hardware.profiles import jetson_profile_names, load_profile
from nvidia_fakes import FakeGpu, jetson_tree

REPO = Path(__file__).resolve().parents[1]
ORIN_NANO = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Make this machine look like the given file tree."""
    def become(**tree):
        monkeypatch.setattr(nvidia, "SYSTEM_ROOT", jetson_tree(tmp_path, **tree))
    return become


@pytest.mark.parametrize("tree, profile, source", [
    ({"model": ORIN_NANO + "\x00"}, "jetson-orin-nano", "/proc/device-tree/model"),
    ({"model": "NVIDIA Jetson AGX Orin Developer Kit"}, "jetson-orin-agx", "/proc/device-tree/model"),
    ({"model": "Jetson-AGX-Orin"}, "jetson-orin-agx", "/proc/device-tree/model"),
    ({"model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"}, "jetson-orin-nx",
     "/proc/device-tree/model"),
    # In a container /proc/device-tree is masked: the kernel's soc0 device repeats the model.
    ({"model": ORIN_NANO, "soc_machine": ORIN_NANO, "container": True}, "jetson-orin-nano",
     "/sys/devices/soc0/machine"),
])
def test_jetson_resolves_to_the_module_profile(machine, tree, profile, source):
    machine(**tree)
    info = nvidia.detect_jetson()
    assert info.source == source and info.l4t.startswith("# R36")
    resolved = load_profile("jetson")
    assert (resolved.name, resolved.resolved_from, resolved.backend) == (profile, "jetson", "tensorrt")
    assert load_profile("gpu").name == profile  # a Jetson's GPU is the Jetson
    assert resolved.settings() == load_profile(profile).settings()  # so its LUT is the named profile's


def test_off_a_jetson(machine):
    machine(l4t=None, pmode=None)
    assert nvidia.detect_jetson() is None
    with pytest.raises(HwbcnetError) as info:
        load_profile("jetson")
    message = str(info.value)
    assert "not a Jetson" in message and "\n" not in message
    assert message.endswith("jetson-orin-agx, jetson-orin-nano, jetson-orin-nx")
    gpu = load_profile("gpu")
    assert (gpu.name, gpu.resolved_from, gpu.backend) == ("gpu", None, "tensorrt")


@pytest.mark.parametrize("tree, message", [
    ({"model": "NVIDIA Jetson Xavier NX Developer Kit"}, "Jetson Xavier .* is not supported: .*JetPack is 5.1"),
    ({"model": "Jetson-AGX", "soc_id": "25"}, "Jetson Xavier"),
    ({"model": "NVIDIA Jetson Nano Developer Kit"}, "Jetson Nano, TX1 and TX2 are not supported"),
    ({"model": "NVIDIA Jetson AGX Thor Developer Kit"}, "no shipped profile for NVIDIA Jetson AGX Thor"),
    # A container that sees only the L4T release: the module cannot be told, so the user names it.
    ({"model": ORIN_NANO, "container": True}, r"module is unknown \(neither /proc/device-tree/model nor "
                                              r"/sys/devices/soc0/machine can be read here.*\); pass its profile by name: "
                                              r"jetson-orin-agx, jetson-orin-nano, jetson-orin-nx"),
    ({"soc_machine": "Seeed reComputer J4012", "soc_id": "35"}, "model string 'Seeed reComputer J4012' names no"),
])
def test_unsupported_or_unknown_modules(machine, tree, message):
    machine(**tree)
    with pytest.raises(HwbcnetError, match=message):
        load_profile("jetson")


def test_xavier_profile_is_retired_with_a_reason():
    assert "jetson-xavier-nx" not in jetson_profile_names()
    with pytest.raises(HwbcnetError, match="TensorRT 8.5 and Python 3.8"):
        load_profile("jetson-xavier-nx")


def test_power_mode_from_nvpmodel_files(tmp_path):
    root = jetson_tree(tmp_path, model=ORIN_NANO, pmode="0003")
    assert nvidia.nvpmodel_from_files(root) == "7W"
    assert nvidia.jetson_state(root)["power_mode"] == "7W"
    bare = jetson_tree(tmp_path / "bare", model=ORIN_NANO, pmode=None)
    mode, source = nvidia.power_mode(bare)
    assert mode is None and "mount /var/lib/nvpmodel/status" in source


# ------------------------------------------------------------------------------------------- Dockerfile.jetson


def test_jetson_image_recipe():
    """The fixes of the image that cannot be built here: the moved torch index (PEP 503 path), cuSPARSELt for the
    JetPack torch wheels, a cuda-python pinned to CUDA 12.6 whose runtime bindings are imported for real (not
    `import cuda`, a namespace package), and a documented docker run that gives hwbcnet the nvpmodel files."""
    text = (REPO / "Dockerfile.jetson").read_text()
    assert "pypi.jetson-ai-lab.dev" not in text and "pypi.jetson-ai-lab.io/jp6/cu126/+simple/" in text
    assert "libcusparselt0" in text and 'import torch; print' in text
    assert '"cuda-python>=12.6,<12.7"' in text and '"filelock' in text
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bimport [\w, ]*\bcuda\b(?![.\w])", commands) and "import_cudart()" in commands
    docs = (REPO / "docs/jetson.md").read_text()
    for mount in ("/var/lib/nvpmodel/status:/var/lib/nvpmodel/status:ro", "/etc/nvpmodel.conf:/etc/nvpmodel.conf:ro"):
        assert mount in text and mount in docs


# ----------------------------------------------------------------------------------------------------- use


def test_profile_on_a_jetson_writes_the_resolved_lut(machine, monkeypatch, tmp_path):
    """`hwbcnet profile --device jetson` inside a container on an Orin Nano: the LUT goes under the resolved
    profile's name, and its provenance names the request, the profile, the GPU and the module."""
    machine(model=ORIN_NANO, soc_machine=ORIN_NANO, container=True)
    FakeGpu().install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    quick = fast_profile().cell_timing
    profile = dataclasses.replace(load_profile("jetson"), cell_timing=quick, model_timing=quick)
    lut = build_lut(TinySpace(), profile, backend=TensorRTBackend(), progress=False)
    assert lut.path == Path("lut/jetson-orin-nano/tiny-8-b1.json") and lut.cells
    provenance = lut.data["provenance"]
    assert (provenance["requested_device"], provenance["profile"], provenance["device"]) == \
        ("jetson", "jetson-orin-nano", "Orin")
    assert provenance["clock_state"]["module"] == ORIN_NANO
    assert provenance["clock_state"]["power_mode"] == "MAXN_SUPER"  # from the mounted nvpmodel files
    assert provenance["clock_warnings"] == ["GPU clocks are not locked (sudo jetson_clocks)"]
    assert Path("lut/jetson-orin-nano/timing-trt10.3.0.30.cache").is_file()


def test_cli_device_jetson_off_a_jetson(machine, capsys):
    machine(l4t=None, pmode=None)
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--device", "jetson", "--model", "cbm-resnet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "not a Jetson" in err and "jetson-orin-agx, jetson-orin-nano, jetson-orin-nx" in err
