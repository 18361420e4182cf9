import numpy as np
import pytest
import torch

from hwbcnet.space import MODELS, build_space
from hwbcnet.supernet.extract import build_standalone
from hwbcnet.supernet.principles import LEFT, RIGHT, get_principle
from hwbcnet.supernet.supernet import SuperNet
from hwbcnet.training.sampler import ComplementarySampler

SMALL = {"resnet50": dict(resolution=32, width_mult=0.25), "vgg16": dict(width_mult=0.25),
         "cbm-resnet": dict(width_mult=0.125), "cbm-mobilenet": dict(width_mult=0.125), "resnet56": dict(width_mult=0.5)}


def _randomize_batchnorm(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.parametrize("principle", ["ua", "bcnet", "bcnetv2"])
@pytest.mark.parametrize("name", list(MODELS))
def test_sliced_supernet_equals_standalone_model(name, principle, rng):
    torch.manual_seed(0)
    space = build_space(name, min_bins=2 if principle == "bcnetv2" else 1, **SMALL.get(name, {}))
    supernet = SuperNet(space, principle).eval()
    _randomize_batchnorm(supernet)
    x = torch.randn(2, 3, space.resolution, space.resolution)
    for arch in space.random_archs(rng, 2):
        for path in supernet.principle.paths:
            standalone = build_standalone(space, arch, supernet, path).eval()
            # real smaller tensors: every conv has the arch's channel counts
            channels = space.arch_channels(arch)[0]
            for module_name, spec in space.traced.modules.items():
                if spec.kind == "conv":
                    conv = standalone.get_submodule(module_name)
                    assert conv.out_channels == conv.weight.shape[0] == spec.out_layout.size_at(channels)
            with torch.no_grad():
                torch.testing.assert_close(supernet.activate(arch, path)(x), standalone(x), rtol=1e-5, atol=1e-5)


def test_bcnetv2_supernet_is_enlarged_to_n_plus_m_groups():
    space = build_space("resnet20", bins=8, min_bins=2)
    supernet = SuperNet(space, "bcnetv2")
    assert supernet.ranges.full[0] == 20  # 16 channels * (8+2)/8
    left = supernet.path_ranges(space.full_arch(), LEFT)[0]
    right = supernet.path_ranges(space.full_arch(), RIGHT)[0]
    assert left == (0, 16) and right == (4, 20)


def _group_visits(principle_name, bins, min_bins, pairs, rng):
    """Visits per group of one variable over `pairs` complementary pairs of draws."""
    principle = get_principle(principle_name)
    space = build_space("resnet20", bins=bins, min_bins=min_bins)
    sampler = ComplementarySampler(space, principle, seed=int(rng.integers(1 << 30)))
    visits = np.zeros((space.num_vars, principle.groups(bins, min_bins)), dtype=np.int64)
    for _ in range(2 * pairs):
        arch = sampler.next()
        for v, c in enumerate(arch):
            for path in principle.paths:
                a, b = principle.group_range(bins, min_bins, int(c), path)
                visits[v, a:b] += 1
    return visits


@pytest.mark.parametrize("principle,bins,min_bins", [("bcnet", 8, 1), ("bcnetv2", 8, 2), ("bcnetv2", 20, 4), ("bcnetv2", 4, 1)])
def test_complementary_pairs_visit_every_group_equally(principle, bins, min_bins, rng):
    visits = _group_visits(principle, bins, min_bins, pairs=40, rng=rng)
    for row in visits:
        assert row.min() == row.max(), row


def test_off_by_one_complement_would_break_fairness(rng, monkeypatch):
    """The BCNetV2 reference code's complement B-c-1 leaves groups unevenly visited; the test above must catch it."""
    principle_cls = type(get_principle("bcnetv2"))
    monkeypatch.setattr(principle_cls, "complement", lambda self, c, n, m: max(m, self.groups(n, m) - c - 1))
    visits = _group_visits("bcnetv2", 8, 2, pairs=40, rng=rng)
    assert any(row.min() != row.max() for row in visits)


def test_ua_is_skewed_towards_left_groups():
    # over one pass through all widths c in 1..N, group j is used N - j times
    principle, N = get_principle("ua"), 8
    visits = np.zeros(N, dtype=int)
    for c in range(1, N + 1):
        a, b = principle.group_range(N, 1, c, LEFT)
        visits[a:b] += 1
    assert visits.tolist() == [N - j for j in range(N)]


def test_one_pass_counts_match_spec_table():
    for name, N, m, expected in [("bcnet", 8, 1, 9), ("bcnetv2", 8, 2, 7), ("bcnetv2", 20, 7, 14)]:
        principle = get_principle(name)
        visits = np.zeros(principle.groups(N, m), dtype=int)
        for c in range(m, N + 1):
            for path in principle.paths:
                a, b = principle.group_range(N, m, c, path)
                visits[a:b] += 1
        assert visits.tolist() == [expected] * len(visits)
