"""--model sources: built-in names, torchvision:/timm: (missing here), package.module:factory, file.py:factory,
--model-kwargs; the source is recorded in every file a later command reads, and a changed model is refused."""

import json
import textwrap

import pytest

from cli_runner import run_cli
from hwbcnet.errors import HwbcnetError
from hwbcnet.space import build_space, space_from_description
from hwbcnet.space.models.sources import parse_model_source

USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10, width=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.SiLU())
            self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(2 * width), nn.Hardswish())
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1))

    def build(num_classes=10, width=16):
        return Net(num_classes, width)

    def not_a_model(num_classes=10):
        return 3

    def broken(num_classes=10):
        raise ValueError("boom")
''')


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODEL)
    return path


def _forget_loaded_models():
    import sys

    from hwbcnet.space import space as space_module

    space_module._trace_cached.cache_clear()
    for name in [n for n in sys.modules if n.startswith("hwbcnet_user_model_")]:
        del sys.modules[name]


def test_file_factory_with_kwargs_is_traced_and_rebuilt_from_its_description(model_file):
    space = build_space(f"{model_file}:build", model_kwargs={"width": 8}, resolution=16, num_classes=7)
    assert [v.channels for v in space.variables] == [8, 16]
    assert space.model_kwargs == {"width": 8} and space.slug.startswith("my_models-build-")
    again = space_from_description(json.loads(json.dumps(space.describe())))
    assert again.fingerprint() == space.fingerprint()
    assert build_space(f"{model_file}:build", resolution=16, num_classes=7).fingerprint() != space.fingerprint()


def test_module_factory(model_file, monkeypatch):
    monkeypatch.syspath_prepend(str(model_file.parent))
    space = build_space("my_models:build", resolution=16)
    assert space.num_vars == 2 and space.resolution == 16


@pytest.mark.parametrize("spec,kwargs,message", [
    ("torchvision:resnet18", None, "torchvision models need torchvision"),
    ("timm:resnet18", None, "timm models need timm"),
    ("FILE:not_a_model", None, "returned int, not a torch.nn.Module"),
    ("FILE:broken", None, "building it failed .ValueError: boom"),
    ("FILE:missing", None, "has no callable 'missing'"),
    ("nowhere/model.py:build", None, "not found"),
    ("no_such_package_xyz:build", None, "cannot import no_such_package_xyz"),
    ("resnet20x", None, "--model 'resnet20x': unknown model; use a built-in name"),
    ("FILE:build", '{"width": ', "not valid JSON"),
    ("FILE:build", '{"num_classes": 3}', "num_classes comes from the data"),
    ("resnet20", '{"depth": 3}', "takes no keyword arguments"),
])
def test_bad_model_sources_are_one_line_errors(model_file, spec, kwargs, message):
    with pytest.raises(HwbcnetError, match=message) as error:
        build_space(spec.replace("FILE", str(model_file)), model_kwargs=kwargs, resolution=16)
    assert "\n" not in str(error.value)


def test_source_syntax_is_checked_without_importing():
    assert parse_model_source("timm:resnet18").kind == "timm"
    assert parse_model_source("a.b.c:make").kind == "module"
    assert parse_model_source("x/y.py:make").kind == "file"
    with pytest.raises(HwbcnetError, match="expected timm:NAME"):
        parse_model_source("timm:")


def test_user_model_through_train_search_extract_export_and_changed_model_refused(model_file, tmp_path, capsys):
    spec = f"{model_file}:build"
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--model", spec, "--model-kwargs", '{"width": 8}', "--resolution", 16,
                            "--data", "digits", "--epochs", 1, "--max-steps-per-epoch", 3, "--out", out], capsys)
    assert code == 0, err
    code, _, err = run_cli(["search", "-c", out / "supernet.pt", "--flops", "70%", "--population", 4,
                            "--generations", 1, "--bn-batches", 2, "-o", out / "search.json"], capsys)
    assert code == 0, err
    search = json.loads((out / "search.json").read_text())
    assert search["space"]["model"] == spec and search["space"]["model_kwargs"] == {"width": 8}
    code, _, err = run_cli(["extract", "--search", out / "search.json", "--out", out / "subnet.pt"], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["export", "--subnet", out / "subnet.pt", "--onnx", out / "model.onnx", "--json"],
                                capsys)
    assert code == 0, err
    metadata = json.loads(stdout)["onnx"]["metadata"]
    assert metadata["space"]["model"] == spec and metadata["space"]["model_kwargs"] == {"width": 8}

    model_file.write_text(USER_MODEL.replace("2 * width", "3 * width"))  # the user edits the model afterwards
    _forget_loaded_models()  # a new `hwbcnet` process would load the file afresh
    code, _, err = run_cli(["search", "-c", out / "supernet.pt", "--flops", "70%", "-o", out / "again.json"], capsys)
    assert code == 2 and "changed" in err and err.count("\n") == 1
