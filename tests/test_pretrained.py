"""Pretrained weights (--weights): loading state_dict files and filling (enlarged) supernets with them."""

import numpy as np
import pytest
import torch

from hwbcnet.errors import HwbcnetError
from hwbcnet.space import build_space
from hwbcnet.supernet.extract import build_standalone
from hwbcnet.supernet.principles import LEFT, RIGHT
from hwbcnet.supernet.supernet import SuperNet
from hwbcnet.supernet.weights import load_weights

CASES = [("resnet20", dict(resolution=16)), ("mobilenetv3-small", dict(resolution=32)),
         ("efficientnet-b0", dict(resolution=32, width_mult=0.25))]


def _trained_like(space):
    """The user's model with non-trivial weights and BatchNorm statistics."""
    torch.manual_seed(1)
    model = space.build_template().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("principle", ["ua", "bcnet", "bcnetv2"])
@pytest.mark.parametrize("name,options", CASES)
def test_full_width_extraction_equals_the_pretrained_model(name, options, principle):
    space = build_space(name, min_bins=2 if principle == "bcnetv2" else 1, **options)
    model = _trained_like(space)
    supernet = SuperNet(space, principle, weights=model.state_dict()).eval()
    x = torch.randn(2, 3, space.resolution, space.resolution)
    with torch.no_grad():
        expected = model(x)
        for path in supernet.principle.paths:  # bcnetv2's right path is the model with its channels rotated
            standalone = build_standalone(space, space.full_arch(), supernet, path).eval()
            torch.testing.assert_close(standalone(x), expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(supernet.activate(space.full_arch(), path)(x), expected, rtol=1e-4, atol=1e-4)


def test_enlarged_channels_repeat_the_model_cyclically():
    space = build_space("resnet20", resolution=16)  # bcnetv2 default: N=8, m=2 -> 20 channels for C=16
    model = _trained_like(space)
    supernet = SuperNet(space, "bcnetv2", weights=model.state_dict())
    stem = supernet.net.get_submodule("stem.0").weight
    original = model.get_submodule("stem.0").weight
    assert stem.shape[0] == 20
    torch.testing.assert_close(stem[:16], original)
    torch.testing.assert_close(stem[16:], original[:4])
    left, right = supernet.path_ranges(space.min_arch(), LEFT), supernet.path_ranges(space.min_arch(), RIGHT)
    assert left[0] == (0, 4) and right[0] == (16, 20)


def test_weights_files_nested_prefixed_and_safetensors(tmp_path):
    space = build_space("resnet20", resolution=16)
    state = _trained_like(space).state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    loaded = load_weights(tmp_path / "ckpt.pth")
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = load_weights(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("content,message", [(b"not a checkpoint", "not a readable state_dict"),
                                             (None, "expected a state_dict")])
def test_unreadable_weights_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(HwbcnetError, match=message):
        load_weights(path)


def test_weights_of_another_model_are_refused_naming_the_tensor():
    space = build_space("resnet20", resolution=16)
    other = build_space("resnet20", resolution=16, num_classes=7).build_template().state_dict()
    with pytest.raises(HwbcnetError, match="shape mismatches, e.g. head.fc.weight"):
        SuperNet(space, "bcnetv2", weights=other)
    partial = dict(_trained_like(space).state_dict())
    partial.pop("stem.0.weight")
    with pytest.raises(HwbcnetError, match="lack 1 tensors of the model .e.g. stem.0.weight"):
        SuperNet(space, "bcnetv2", weights=partial)


def test_training_from_weights_records_them(tmp_path):
    from hwbcnet.training.checkpoint import load_checkpoint
    from hwbcnet.training.trainer import TrainConfig, train_supernet

    space = build_space("resnet20", resolution=16)
    torch.save(_trained_like(space).state_dict(), tmp_path / "model.pt")
    config = TrainConfig(model="resnet20", data="synthetic:200", resolution=16, epochs=1, batch_size=32,
                         max_steps_per_epoch=2, weights=str(tmp_path / "model.pt"))
    result = train_supernet(config, tmp_path / "run", progress=False)
    payload = load_checkpoint(result.checkpoint)
    assert payload["config"]["weights"] == str(tmp_path / "model.pt")
    assert len(payload["weights_sha256"]) == 64
    assert np.isfinite(payload["history"][0]["loss"])
