"""Check the in-house zoo models against torchvision's builds of the same networks (issue 9, item 4).

For efficientnet-b0, mobilenetv3-large and mobilenetv3-small at width 1.0 and 0.5 (1000 classes): build torchvision's
model (random init, with random BatchNorm statistics so eval mode is not an identity), copy its state_dict into ours
tensor by tensor in order (each pair must agree in shape, parameter/buffer name and owning module type), then compare
  - structure: every conv/BN/linear/activation/pool/dropout with its hyper-parameters (stride, padding, groups,
    BN eps/momentum, ...), and the stochastic-depth probability of every residual block;
  - eval-mode outputs at 224 px (and 64 px, the smallest input that keeps the ImageNet strides);
  - one train-mode forward from the same seed (dropout, stochastic depth and BatchNorm batch statistics), and the
    BatchNorm running statistics it updates (this is what checks the momentum).
CI cannot import torchvision, so this runs in a separate environment:

    PYTHONPATH=. /work/venv-tv/bin/python benchmarks/zoo_reference_check.py   # from the repo root

Prints a markdown table; exits 1 if any check fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys
from collections import Counter

import torch
import torchvision
from _report import markdown_table
from torch import nn

from hwbcnet.space.models import zoo
from hwbcnet.space.models.common import StochasticDepth

TOLERANCE = 1e-6  # same ops in the same order: the outputs should agree to the last bit


def torchvision_efficientnet_b0(width_mult: float) -> nn.Module:
    """torchvision's efficientnet_b0 only builds width 1.0; other widths go through its config helper."""
    setting, last_channel = torchvision.models.efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=width_mult, depth_mult=1.0)
    return torchvision.models.efficientnet.EfficientNet(setting, dropout=0.2, last_channel=last_channel)


# name, width multiplier, torchvision's build, ours
MODELS = [
    (name, width, reference, ours)
    for width in (1.0, 0.5)
    for name, reference, ours in [
        ("efficientnet-b0", torchvision_efficientnet_b0, lambda w: zoo.EfficientNetB0(1000, w, 224)),
        ("mobilenetv3-large", lambda w: torchvision.models.mobilenet_v3_large(weights=None, width_mult=w),
         lambda w: zoo.MobileNetV3("large", 1000, w, 224)),
        ("mobilenetv3-small", lambda w: torchvision.models.mobilenet_v3_small(weights=None, width_mult=w),
         lambda w: zoo.MobileNetV3("small", 1000, w, 224)),
    ]
]


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.data = torch.rand(c, generator=generator) + 0.5
            module.bias.data = torch.randn(c, generator=generator) * 0.1
            module.running_mean = torch.randn(c, generator=generator) * 0.1
            module.running_var = torch.rand(c, generator=generator) + 0.5


def owners(model: nn.Module) -> dict[str, nn.Module]:
    """state_dict key -> the module holding that tensor."""
    modules = dict(model.named_modules())
    return {key: modules[key.rpartition(".")[0]] for key in model.state_dict()}


def copy_state(reference: nn.Module, ours: nn.Module) -> int:
    """Copy reference's state_dict into ours by position; every pair must match in shape, name and module type."""
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    if len(ref_state) != len(our_state):
        raise SystemExit(f"{len(ref_state)} reference tensors but {len(our_state)} of ours")
    ref_owner, our_owner = owners(reference), owners(ours)
    mapped = {}
    for (ref_key, tensor), our_key in zip(ref_state.items(), our_state):
        same_kind = type(ref_owner[ref_key]) is type(our_owner[our_key])
        if tensor.shape != our_state[our_key].shape or ref_key.rpartition(".")[2] != our_key.rpartition(".")[2] \
                or not same_kind:
            raise SystemExit(f"{ref_key} {tuple(tensor.shape)} does not line up with {our_key} "
                             f"{tuple(our_state[our_key].shape)}")
        mapped[our_key] = tensor
    ours.load_state_dict(mapped)
    return len(mapped)


def signature(module: nn.Module):
    """The hyper-parameters that define a leaf module's computation (None: a module with no effect)."""
    if isinstance(module, nn.Conv2d):
        return ("Conv2d", module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None)
    if isinstance(module, nn.BatchNorm2d):
        return ("BatchNorm2d", module.num_features, module.eps, module.momentum, module.affine)
    if isinstance(module, nn.Linear):
        return ("Linear", module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.Dropout):
        return ("Dropout", module.p) if module.p > 0 else None
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return ("AdaptiveAvgPool2d", module.output_size)
    if isinstance(module, (nn.Flatten, nn.Identity, StochasticDepth, torchvision.ops.StochasticDepth)):
        return None  # flatten is implicit in torchvision's forward; stochastic depth is compared per block below
    if isinstance(module, (nn.ReLU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid)):
        return (type(module).__name__,)
    raise SystemExit(f"no signature for {type(module).__name__}: extend the check")


def structure(model: nn.Module) -> Counter:
    leaves = [m for m in model.modules() if not list(m.children())]
    return Counter(filter(None, map(signature, leaves)))


def drop_probabilities(model: nn.Module) -> list[float]:
    """Stochastic-depth probability of every residual block that applies it, in order."""
    probs = []
    for module in model.modules():
        if isinstance(module, torchvision.models.efficientnet.MBConv) and module.use_res_connect:
            probs.append(module.stochastic_depth.p)
        elif isinstance(module, zoo.InvertedResidual) and module.use_residual:
            probs.append(module.drop_path.p if module.drop_path is not None else 0.0)
    return [round(p, 12) for p in probs if p > 0]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check(name: str, width: float, build_reference, build_ours) -> tuple[list, bool]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    reference, ours = build_reference(width), build_ours(width)
    randomize_batchnorm(reference, generator)
    copied = copy_state(reference, ours)
    same_structure = structure(reference) == structure(ours)
    same_drop = drop_probabilities(reference) == drop_probabilities(ours)
    reference.eval(), ours.eval()
    diffs = {}
    with torch.no_grad():
        for resolution in (224, 64):
            x = torch.randn(2, 3, resolution, resolution, generator=generator)
            ref_out, our_out = reference(x), ours(x)
            if ref_out.shape != our_out.shape:
                raise SystemExit(f"{name}: output {tuple(our_out.shape)} != torchvision's {tuple(ref_out.shape)}")
            diffs[resolution] = max_diff(ref_out, our_out)
        reference.train(), ours.train()
        x = torch.randn(4, 3, 224, 224, generator=generator)
        torch.manual_seed(2)
        ref_out = reference(x)
        torch.manual_seed(2)
        our_out = ours(x)
        diffs["train"] = max_diff(ref_out, our_out)
        diffs["buffers"] = max(max_diff(a.float(), b.float())
                               for a, b in zip(reference.state_dict().values(), ours.state_dict().values()))
    params = [sum(p.numel() for p in m.parameters()) for m in (reference, ours)]
    ok = (params[0] == params[1] and same_structure and same_drop and all(d <= TOLERANCE for d in diffs.values()))
    row = [name, width, f"{params[0]:,}", f"{params[1]:,}", copied, "yes" if same_structure else "NO",
           "yes" if same_drop else "NO", *(f"{diffs[k]:.1e}" for k in (224, 64, "train", "buffers")),
           "pass" if ok else "FAIL"]
    return row, ok


def main() -> int:
    torch.set_num_threads(1)
    rows, failures = [], []
    for name, width, build_reference, build_ours in MODELS:
        row, ok = check(name, width, build_reference, build_ours)
        rows.append(row)
        if not ok:
            failures.append(f"{name} x{width}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; max |ours - torchvision|, "
          f"tolerance {TOLERANCE:g}\n")
    print(markdown_table(["model", "width", "torchvision params", "our params", "tensors copied", "same layers",
                          "same stochastic depth", "eval 224 px", "eval 64 px", "train 224 px (seeded)",
                          "BN buffers after train", "result"], rows))
    if failures:
        print(f"FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
