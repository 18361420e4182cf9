"""Where a model comes from: `--model SPEC` with `--model-kwargs JSON`.

* a built-in name (`hwbcnet models`): resnet20, mobilenetv2, efficientnet-b0, ...;
* `torchvision:NAME` (torchvision.models.get_model) and `timm:NAME` (timm.create_model), random init, built with
  the data's number of classes, when that package imports;
* `package.module:factory` or `path/to/file.py:factory`: the user's own code; the factory is called with
  `num_classes=K` when it accepts it, plus the keyword arguments of --model-kwargs.

The spec and its kwargs are recorded in every file a later command reads (checkpoint, LUT, search.json, subnet,
ONNX metadata; see WidthSpace.describe), so later commands rebuild the same model without being told again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hwbcnet.errors import HwbcnetError

EXTERNAL_RESOLUTION = 224  # torchvision/timm/user models are ImageNet-style unless --resolution says otherwise
EXTERNAL_BINS, EXTERNAL_MIN_BINS = 8, 2
FORMS = "a built-in name (`hwbcnet models`), torchvision:NAME, timm:NAME, package.module:factory or path/to/file.py:factory"


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kwargs_json: str = "{}"  # canonical JSON of the factory's keyword arguments

    @property
    def kwargs(self) -> dict:
        return json.loads(self.kwargs_json)

    @property
    def kind(self) -> str:
        from hwbcnet.space.models import MODELS

        if self.spec in MODELS:
            return "builtin"
        prefix = self.spec.partition(":")[0]
        if prefix in ("torchvision", "timm"):
            return prefix
        return "file" if self.spec.partition(":")[0].endswith(".py") else "module"

    @property
    def slug(self) -> str:
        """A file-name-safe name: `timm-resnet18`, `my_models-build`."""
        text = self.spec
        if self.kind == "file":
            path, _, factory = text.rpartition(":")
            text = f"{Path(path).stem}-{factory}"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text.replace(":", "-")).strip("-")
        if self.kwargs:
            slug += "-" + hashlib.sha256(self.kwargs_json.encode()).hexdigest()[:8]
        return slug

    def build(self, num_classes: int, width_mult: float, resolution: int) -> nn.Module:
        from hwbcnet.space.models import MODELS

        kind = self.kind
        if kind == "builtin":
            if self.kwargs:
                raise HwbcnetError(f"--model-kwargs: built-in model {self.spec} takes no keyword arguments")
            return MODELS[self.spec].build(num_classes, width_mult, resolution)
        if width_mult != 1.0:
            raise HwbcnetError(f"--width-mult {width_mult}: only built-in models have a width multiplier; pass the "
                               f"factory's own argument in --model-kwargs")
        if kind == "torchvision":
            return _torchvision(self.spec.partition(":")[2], num_classes, self.kwargs)
        if kind == "timm":
            return _timm(self.spec.partition(":")[2], num_classes, self.kwargs)
        return _user_factory(self.spec, num_classes, self.kwargs, kind)

    def defaults(self) -> tuple[int, int, int]:
        """(resolution, bins, min_bins) when the command line does not set them."""
        from hwbcnet.space.models import MODELS

        if self.kind == "builtin":
            entry = MODELS[self.spec]
            return entry.resolution, entry.bins, entry.min_bins
        return EXTERNAL_RESOLUTION, EXTERNAL_BINS, EXTERNAL_MIN_BINS


def parse_model_source(spec: str, kwargs: dict | str | None = None) -> ModelSource:
    """Check the form of a --model spec (and --model-kwargs JSON) without importing anything heavy."""
    spec = (spec or "").strip()
    try:
        kwargs = parse_model_kwargs(kwargs)
    except ValueError as exc:
        raise HwbcnetError(f"--model-kwargs {kwargs!r}: {exc}") from None
    try:
        check_model_spec(spec)
    except ValueError as exc:
        raise HwbcnetError(f"--model {spec!r}: {exc}") from None
    return ModelSource(spec, json.dumps(kwargs, sort_keys=True))


def parse_model_kwargs(kwargs: dict | str | None) -> dict:
    """The factory's keyword arguments from --model-kwargs JSON (or a dict); a ValueError says what is allowed."""
    if kwargs is None:
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg}); expected an object such as '{{\"depth\": 18}}'") from None
    if not isinstance(kwargs, dict):
        raise ValueError("expected a JSON object such as '{\"depth\": 18}'")
    if "num_classes" in kwargs:
        raise ValueError("num_classes comes from the data; leave it out")
    return kwargs


_PYTHON_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def check_model_spec(spec: str) -> str:
    """`spec` when it is a built-in name or a well-formed model source: only the syntax, nothing is imported or read.
    A ValueError says what is allowed."""
    from hwbcnet.space.models import MODELS

    if spec in MODELS:
        return spec
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in ("torchvision", "timm"):
        # timm names carry tags: resnet50.a1_in1k
        if not re.fullmatch(r"[A-Za-z0-9_]+(?:[.\-][A-Za-z0-9_]+)*", rest):
            raise ValueError(f"expected {prefix}:NAME with a model name such as {prefix}:resnet18")
        return spec
    location, colon, factory = spec.rpartition(":")
    if colon:
        if not (re.fullmatch(_PYTHON_NAME, factory) and not keyword.iskeyword(factory)):
            raise ValueError(f"{factory!r} is not a Python name; expected {FORMS}")
        if location.endswith(".py"):
            return spec
        if re.fullmatch(rf"{_PYTHON_NAME}(\.{_PYTHON_NAME})*", location) and not any(
                keyword.iskeyword(part) for part in location.split(".")):
            return spec
    raise ValueError(f"unknown model; use {FORMS} (built-ins: {', '.join(sorted(MODELS))})")


def _missing_package(package: str, exc: BaseException) -> HwbcnetError:
    return HwbcnetError(f"{package} models need {package}, which does not import here ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); install it with `pip install {package}` "
                        "(a build that matches your torch)")


def _torchvision(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        import torchvision
    except Exception as exc:  # ImportError, or RuntimeError from a torchvision built for another torch
        raise _missing_package("torchvision", exc) from None
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = [n for n in names if n.startswith(name[:4])][:6]
        raise HwbcnetError(f"torchvision has no classification model {name!r}"
                           + (f"; close: {', '.join(close)}" if close else ""))
    return _call(f"torchvision:{name}", lambda: torchvision.models.get_model(name, weights=None,
                                                                             num_classes=num_classes, **kwargs))


def _timm(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        import timm
    except Exception as exc:
        raise _missing_package("timm", exc) from None
    if not timm.is_model(name):
        close = timm.list_models(f"{name[:5]}*")[:6]
        raise HwbcnetError(f"timm has no model {name!r}" + (f"; close: {', '.join(close)}" if close else ""))
    return _call(f"timm:{name}", lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs))


def _user_factory(spec: str, num_classes: int, kwargs: dict, kind: str) -> nn.Module:
    location, _, name = spec.rpartition(":")
    if kind == "file":
        module = _load_file(Path(location).expanduser())
    else:
        try:
            module = importlib.import_module(location)
        except Exception as exc:
            raise HwbcnetError(f"--model {spec!r}: cannot import {location} ({type(exc).__name__}: {exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise HwbcnetError(f"--model {spec!r}: {location} has no callable {name!r}")
    try:
        parameters = inspect.signature(factory).parameters
        takes_classes = "num_classes" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    except (TypeError, ValueError):
        takes_classes = False
    arguments = {**kwargs, **({"num_classes": num_classes} if takes_classes else {})}
    return _call(spec, lambda: factory(**arguments))


def _load_file(path: Path):
    if not path.is_file():
        raise HwbcnetError(f"--model: {path} not found")
    name = f"hwbcnet_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise HwbcnetError(f"--model: running {path} failed ({type(exc).__name__}: {exc})") from None
    return module


def _call(spec: str, build) -> nn.Module:
    try:
        model = build()
    except HwbcnetError:
        raise
    except Exception as exc:
        raise HwbcnetError(f"--model {spec}: building it failed ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(model, nn.Module):
        raise HwbcnetError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
