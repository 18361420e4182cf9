import gzip
import json
from importlib import resources

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hwbcnet.costs.flops import flops_cost, params_cost
from hwbcnet.space import MODELS, build_space
from hwbcnet.supernet.extract import build_standalone


@pytest.mark.parametrize("space_name,model", [("resnet", "cbm-resnet"), ("mobilenet", "cbm-mobilenet")])
def test_flops_and_params_equal_channel_bench_macro_for_all_archs(space_name, model):
    with resources.files("hwbcnet.resources").joinpath(f"cbm/{space_name}.json.gz").open("rb") as handle:
        truth = json.loads(gzip.decompress(handle.read()))
    assert len(truth) == 16384
    space = build_space(model)
    codes = list(truth)
    archs = np.array([[int(c) for c in code] for code in codes])
    np.testing.assert_array_equal(np.round(flops_cost(space)(archs)).astype(np.int64), [truth[c]["flops"] for c in codes])
    np.testing.assert_array_equal(np.round(params_cost(space)(archs)).astype(np.int64), [truth[c]["params"] for c in codes])


SMALL = {"resnet50": dict(resolution=64, width_mult=0.25), "vgg16": dict(width_mult=0.25),
         "cbm-resnet": dict(width_mult=0.25), "cbm-mobilenet": dict(width_mult=0.25)}


@pytest.mark.parametrize("name", list(MODELS))
def test_analytic_flops_and_params_match_extracted_subnets(name, rng):
    space = build_space(name, **SMALL.get(name, {}))
    for arch in space.random_archs(rng, 2):
        model = build_standalone(space, arch).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, space.resolution, space.resolution))
        counted_macs = counter.get_total_flops() // 2  # flop_counter counts a multiply-accumulate as 2 FLOPs
        assert flops_cost(space)(arch[None])[0] == counted_macs
        assert params_cost(space)(arch[None])[0] == sum(p.numel() for p in model.parameters())


def test_full_model_costs(rng):
    space = build_space("resnet20")
    assert flops_cost(space).full == pytest.approx(40.55e6, rel=0.01)  # ResNet-20 with projection shortcuts
    assert params_cost(space)(space.full_arch()[None])[0] == sum(p.numel() for p in space.build_template().parameters())
