import numpy as np
import pytest

from hwbcnet.errors import HwbcnetError
from hwbcnet.space import MODELS, build_space


def test_resnet20_coupling_one_variable_per_stream_and_inner_conv():
    space = build_space("resnet20")
    # 3 residual streams (stem tied to stage 1) + 9 inner convs
    assert space.num_vars == 12
    names = [v.name for v in space.variables]
    assert sum(n.endswith("conv1.0") for n in names) == 9
    stream1 = space.variables[0]
    assert stream1.name == "stem.0"
    # the stem and every block output of stage 1 share the variable
    assert {"stem.0", "blocks.0.conv2.0", "blocks.1.conv2.0", "blocks.2.conv2.0"} <= set(stream1.members)
    stream2 = next(v for v in space.variables if "blocks.3.shortcut.0" in v.members)
    assert {"blocks.3.conv2.0", "blocks.4.conv2.0", "blocks.5.conv2.0"} <= set(stream2.members)
    assert [v.channels for v in space.variables if v.name.endswith("conv1.0")] == [16] * 3 + [32] * 3 + [64] * 3


def test_mobilenetv2_depthwise_follows_expansion_and_counts_match_bcnetv2():
    space = build_space("mobilenetv2")
    assert space.num_vars == 25  # as BCNetV2's traced MobileNetV2
    for index in range(1, 17):
        expand = next(v for v in space.variables if v.name == f"blocks.{index}.expand.0")
        assert f"blocks.{index}.depthwise.0" in expand.members
    for layer in space.layers:
        if layer.kind == "conv" and layer.group_width == 1:
            assert layer.inputs == layer.outputs and len(layer.axes) == 1


def test_resnet50_has_37_variables_and_classifier_is_fixed():
    space = build_space("resnet50", resolution=64)
    assert space.num_vars == 37
    fc = next(layer for layer in space.layers if layer.kind == "linear")
    assert fc.outputs.is_fixed and fc.outputs.size == 10


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_traces(name):
    space = build_space(name, resolution=64 if name == "resnet50" else None)
    assert space.num_vars > 0
    assert all(v.channels > 0 for v in space.variables)


def test_channel_rounding_is_ceil():
    space = build_space("resnet20", bins=6, min_bins=1)
    # C=16, N=6: c bins -> ceil(c*16/6)
    assert [int(space.channels(0, c)) for c in range(1, 7)] == [3, 6, 8, 11, 14, 16]


def test_cbm_code_and_json_round_trip():
    space = build_space("cbm-resnet")
    arch = space.parse_arch("4432214")
    assert arch.tolist() == [4, 4, 3, 2, 2, 1, 4]
    data = space.arch_to_json(arch)
    assert data["channels"]["stem.0"] == 256 and data["channels"]["blocks.3.conv1.0"] == 128
    assert space.arch_from_json(data).tolist() == arch.tolist()
    assert space.format_arch(arch) == "4432214"


@pytest.mark.parametrize("text", ["443221", "44322145", "4432215", "0432214", "abc", "4,4,x"])
def test_malformed_arch_is_rejected(text):
    space = build_space("cbm-resnet")
    with pytest.raises(HwbcnetError):
        space.parse_arch(text)


def test_unknown_model():
    with pytest.raises(HwbcnetError, match="unknown model"):
        build_space("resnet1000")


def test_random_archs_respect_min_bins(rng):
    space = build_space("resnet20", bins=8, min_bins=3)
    archs = space.random_archs(rng, 500)
    assert archs.min() == 3 and archs.max() == 8


def test_channel_divisor_keeps_widths_aligned_and_the_full_width_exact():
    space = build_space("mobilenetv2", channel_divisor=8)
    for v, variable in enumerate(space.variables):
        widths = space.channels(v, range(space.min_bins, space.bins + 1))
        assert widths[-1] == variable.channels
        assert all(int(k) % 8 == 0 for k in widths[:-1]) or variable.channels % 8
    plain = build_space("mobilenetv2")
    assert space.fingerprint() != plain.fingerprint() and space.describe()["channel_divisor"] == 8
    # C = 16 at N = 8 bins: ceil(c * 16 / 8) = 2c, rounded up to multiples of 8
    assert build_space("resnet20", channel_divisor=8).channels(0, range(1, 9)).tolist() == [8, 8, 8, 8, 16, 16, 16, 16]


def test_channel_divisor_supernet_slices_exactly():
    import torch

    from hwbcnet.supernet.extract import build_standalone
    from hwbcnet.supernet.supernet import SuperNet

    space = build_space("resnet20", resolution=16, channel_divisor=8)
    supernet = SuperNet(space, "bcnetv2").eval()
    assert supernet.ranges.full[0] == 24  # ceil(10 groups * 16 / 8) = 20, rounded up to 24
    x = torch.randn(2, 3, 16, 16)
    for arch in space.random_archs(np.random.default_rng(0), 2):
        for path in ("left", "right"):
            with torch.no_grad():
                torch.testing.assert_close(supernet.activate(arch, path)(x),
                                           build_standalone(space, arch, supernet, path).eval()(x))


def test_nchwc_block_size_follows_the_cpu_flags(monkeypatch, tmp_path):
    from pathlib import Path

    from hwbcnet.hardware.backends import onnxruntime as backend

    def cpuinfo(flags):
        path = tmp_path / flags.replace(" ", "_")
        path.write_text(f"processor : 0\nflags : fpu sse2 {flags}\n")
        return path

    original = Path.read_text
    for flags, block in (("avx avx2 avx512f", 16), ("avx avx2", 8), ("neon asimd", 1)):
        fake = cpuinfo(flags)
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: original(fake if str(self) == "/proc/cpuinfo"
                                                                               else self, *a, **k))
        assert backend.nchwc_block_size() == block


def test_device_profile_sets_the_default_divisor():
    from hwbcnet.cli import _device_space

    assert _device_space("gpu", "resnet20", None, None, None, 1.0)[1].channel_divisor == 8
    from hwbcnet.hardware.backends.onnxruntime import nchwc_block_size

    assert _device_space("cpu", "resnet20", None, None, None, 1.0)[1].channel_divisor == nchwc_block_size()
    assert _device_space("gpu", "resnet20", None, None, None, 1.0, channel_divisor=2)[1].channel_divisor == 2
