"""Tracer coverage over the torchvision and timm CNN zoos (issue 9, item 7).

For every torchvision classification CNN (vision transformers and hybrids, vit_*, swin_* and maxvit_t, are out of
scope) and a selection of timm CNNs, built with 10 classes through hwbcnet's model sources (`torchvision:NAME`,
`timm:NAME`, random init) at a modest resolution, check:

  trace     build_space traces the model into a width space (bins 8, min bins 2), probe verification included;
  slicing   the BCNetV2 supernet's sliced forward equals the standalone pruned model (build_standalone with the
            path's weights), for the full, the min and one random arch, left and right path;
  flops     the analytic MACs (hwbcnet.costs.flops) equal torch's FlopCounterMode (flops / 2) on those standalone
            models;
  params    the analytic parameter count equals the standalone models' parameter numels;
  onnx      the min and the random arch's standalone models exported with hwbcnet's ONNX conversion (BatchNorm
            folded) have the arch's channel counts in every Conv/Gemm weight and give PyTorch's logits in ONNX
            Runtime.

So that the comparisons see every channel, the supernet's conv/linear weights are re-initialised variance-preserving
(Kaiming normal), per-channel parameters (norm affines, biases, layer scales) drawn from U(0.5, 1.5), and before each
comparison the norm statistics are set by one train-mode forward at that arch and path (momentum 1): every layer's
activations are then O(1), so a channel sliced from the wrong place changes the logits. Tolerances are relative to
the largest logit: 1e-4 for PyTorch vs PyTorch and for ONNX Runtime.

Each model runs in a subprocess with a time limit (a crash or a hang costs one row, not the run). This needs
torchvision and timm, which CI cannot import; run it in the benchmark venv (README of issue 9):

    PYTHONPATH=. /work/venv-tv/bin/python benchmarks/zoo_coverage.py            # all models, ~1 h on one core
    PYTHONPATH=. /work/venv-tv/bin/python benchmarks/zoo_coverage.py --only timm:resnet18 torchvision:alexnet

Writes benchmarks/results/zoo_coverage.json and the "Tracer coverage (torchvision, timm)" section of
docs/benchmarks.md (--only / --quick runs print the table and write nothing).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import gc
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

RESOLUTION = 64
# Models checked at another resolution, and why: 299-style Inception nets need at least 75 px; VGG and AlexNet pool
# their last map to 7x7 (6x6) before the classifier, which torch's ONNX exporter only writes when the map is a
# multiple of that (224 px), at 64 px the export fails ("adaptive_avg_pool2d: output size not a factor of input").
# timm's VGG pre-logits (ConvMlp) pools a map smaller than 7x7 up to 7x7 the same way.
RESOLUTIONS = {"torchvision:inception_v3": 75, "timm:inception_v3": 75, "torchvision:alexnet": 224,
               "timm:vgg16_bn": 224,
               **{f"torchvision:vgg{depth}{bn}": 224 for depth in (11, 13, 16, 19) for bn in ("", "_bn")}}
EXCLUDED_PREFIXES = ("vit_", "swin_", "maxvit")  # transformers / hybrids: out of scope for a CNN width search
# CNNs in scope that this machine cannot check, and why: they are rows of the table, counted as not passing.
NOT_RUN = {"torchvision:regnet_y_128gf": "not run: 644 M parameters (2.6 GB in fp32); with the traced model, "
                                        "the BCNetV2 supernet and standalone copies held at once, the check ran out "
                                        "of the 18 GB address space a model's process gets on the shared 23 GB "
                                        "machine"}
TIMM_MODELS = [
    "resnet18", "resnet18d", "resnet50", "resnext50_32x4d", "seresnet50", "res2net50_26w_4s", "gernet_s",
    "repvgg_a2", "mobileone_s0", "cspresnet50", "cspdarknet53", "dla34", "dpn68", "densenet121", "vgg16_bn",
    "inception_v3", "xception41", "selecsls42b", "ese_vovnet19b_dw", "hrnet_w18_small", "convnext_atto",
    "efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0", "efficientnetv2_rw_t", "tinynet_a",
    "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100", "mnasnet_100", "semnasnet_100",
    "fbnetc_100", "hardcorenas_a", "mixnet_s", "lcnet_050", "ghostnet_100", "rexnet_100", "regnetx_002",
    "regnety_004",
]
TOLERANCE = 1e-4  # relative to the largest logit
TIMEOUT_S = 900
MEMORY_GB = 18  # address-space limit of a model's process (the machine is shared; regnet_y_128gf peaks at 12 GB resident)
ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "benchmarks" / "results" / "zoo_coverage.json"
SECTION = "Tracer coverage (torchvision, timm)"
CHECKS = ("trace", "slicing", "flops", "params", "onnx")


def model_list() -> list[str]:
    import torchvision

    names = [f"torchvision:{name}" for name in torchvision.models.list_models(module=torchvision.models)
             if not name.startswith(EXCLUDED_PREFIXES)]
    return names + [f"timm:{name}" for name in TIMM_MODELS]


# ------------------------------------------------------------------------------------------------------ worker


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _initialise(supernet, generator) -> None:
    """Variance-preserving weights and non-trivial per-channel parameters (see the module docstring)."""
    import torch
    from torch import nn

    weights = set()
    with torch.no_grad():
        for module in supernet.modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                weights.add(id(module.weight))
        for parameter in supernet.parameters():
            if id(parameter) not in weights and parameter.numel() == max(parameter.shape, default=1):
                parameter.uniform_(0.5, 1.5, generator=generator)  # a per-channel vector


def _calibrate(supernet, images) -> None:
    """Norm statistics of the active arch and path from one train-mode forward (momentum 1)."""
    import torch
    from torch import nn

    norms = [m for m in supernet.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [m.momentum for m in norms]
    for module in norms:
        module.momentum = 1.0
    supernet.train()
    with torch.no_grad():
        supernet(images)
    supernet.eval()
    for module, momentum in zip(norms, saved):
        module.momentum = momentum


def _relative_diff(output, reference) -> float:
    return float((output - reference).abs().max() / max(1.0, float(reference.abs().max())))


def _count(model, resolution: int) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def _onnx_diff(model, space, arch, images) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch

    from hwbcnet.export.onnx_export import expected_weight_channels, onnx_initializer_channels
    from hwbcnet.supernet.onnx import INPUT_NAME, OUTPUT_NAME, torch_to_onnx

    onnx_model = torch_to_onnx(model, space.resolution, batch=len(images), dynamic_batch=False)
    found = onnx_initializer_channels(onnx_model)
    wrong = [f"{name}: {found.get(name, ('missing',))[:2]} instead of {want}"
             for name, want in expected_weight_channels(space, arch).items() if found.get(name, ())[:2] != want]
    if wrong:
        raise AssertionError(f"ONNX weights lack the arch's channels ({wrong[0]})")
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    output = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    with torch.no_grad():
        reference = model(images)
    return _relative_diff(torch.from_numpy(np.asarray(output)), reference)


def _trace_with_way_out(spec: str, resolution: int, row: dict):
    """build_space; when it refuses an op and names the --fixed glob that gets past it, retry with that glob (as a
    user would), recording it in row["fixed"] and the first refusal in row["refusal"]."""
    import re

    import torch

    from hwbcnet.errors import HwbcnetError
    from hwbcnet.space import build_space

    fixed: list[str] = []
    while True:
        try:
            torch.manual_seed(0)
            return build_space(spec, resolution=resolution, bins=8, min_bins=2, fixed=fixed)
        except HwbcnetError as exc:
            suggested = re.search(r"--fixed '([^']+)'", str(exc))
            if suggested is None or suggested.group(1) in fixed or len(fixed) >= 3:
                raise
            row.setdefault("refusal", _first_line(exc))
            fixed.append(suggested.group(1))
            row["fixed"] = list(fixed)


def check_model(spec: str) -> dict:
    """Run every check on one model; the result row of the JSON file. A check that raises is failed with the
    exception's first line; the checks after it still run where they can."""
    import warnings

    import numpy as np
    import torch

    from hwbcnet.costs.flops import flops_cost, params_cost
    from hwbcnet.supernet.extract import build_standalone
    from hwbcnet.supernet.supernet import SuperNet

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    resolution = RESOLUTIONS.get(spec, RESOLUTION)
    row = {"model": spec, "source": spec.partition(":")[0], "resolution": resolution,
           "checks": {check: None for check in CHECKS}, "variables": None, "pinned": [], "failure": None,
           "seconds": {}}
    failures: dict[str, str] = {}
    started = time.perf_counter()

    def fail(check: str, reason: str) -> None:
        row["checks"][check] = False
        failures.setdefault(check, reason)

    try:
        space = _trace_with_way_out(spec, resolution, row)
        row["checks"]["trace"] = True
        row["variables"] = space.num_vars
        row["pinned"] = list(space.traced.pinned)
        flops, params = flops_cost(space), params_cost(space)
        row["params_full"], row["macs_full"] = int(round(params.full)), int(round(flops.full))
    except Exception as exc:  # noqa: BLE001 - every failure is a row of the table
        fail("trace", _first_line(exc))
    row["seconds"]["trace"] = round(time.perf_counter() - started, 2)

    if row["checks"]["trace"]:
        generator = torch.Generator().manual_seed(zlib.crc32(spec.encode()))
        rng = np.random.default_rng(zlib.crc32(spec.encode()))
        images = torch.randn(4, 3, resolution, resolution, generator=generator)
        archs = {"full": space.full_arch(), "min": space.min_arch(), "random": space.random_archs(rng, 1)[0]}
        slicing, onnx, to_export = {}, {}, {}
        supernet = None
        try:
            supernet = SuperNet(space, "bcnetv2")
            _initialise(supernet, generator)
        except Exception as exc:  # noqa: BLE001
            fail("slicing", f"building the supernet: {_first_line(exc)}")
            archs = {}
        for arch_name, arch in archs.items():
            for path in supernet.principle.paths:
                try:
                    supernet.activate(arch, path)
                    _calibrate(supernet, images)
                    standalone = build_standalone(space, arch, supernet, path).eval()
                    with torch.no_grad():
                        slicing[f"{arch_name} arch, {path} path"] = _relative_diff(supernet(images), standalone(images))
                except Exception as exc:  # noqa: BLE001
                    fail("slicing", f"{arch_name} arch, {path} path: {_first_line(exc)}")
                    continue
                if path != "left":
                    continue
                try:
                    macs, numel = _count(standalone, resolution)
                    want_macs, want_params = int(round(flops(arch[None])[0])), int(round(params(arch[None])[0]))
                    if macs != want_macs:
                        fail("flops", f"{arch_name} arch: {want_macs:,} MACs analytic, {macs:,} counted by torch")
                    if numel != want_params:
                        fail("params", f"{arch_name} arch: {want_params:,} params analytic, {numel:,} in the model")
                except Exception as exc:  # noqa: BLE001
                    fail("flops", f"{arch_name} arch: {_first_line(exc)}")
                if arch_name != "full":  # the pruned models are what `hwbcnet export` writes
                    to_export[arch_name] = (standalone, arch)
                del standalone
        del supernet  # exporting a big model needs the memory (regnet_y_128gf: 2.6 GB of weights)
        gc.collect()
        for arch_name, (standalone, arch) in to_export.items():
            try:
                onnx[arch_name] = _onnx_diff(standalone, space, arch, images[:2])
            except Exception as exc:  # noqa: BLE001
                fail("onnx", f"{arch_name} arch: {_first_line(exc)}")
        for check, diffs in (("slicing", slicing), ("onnx", onnx)):
            if diffs:
                worst = max(diffs, key=diffs.get)
                row[f"max_{check}_diff"] = diffs[worst]
                if diffs[worst] > TOLERANCE:
                    fail(check, f"{worst}: outputs differ by {diffs[worst]:.2g} (relative to the largest logit)")
        for check in CHECKS:
            if row["checks"][check] is None and archs:
                row["checks"][check] = True
    row["seconds"]["total"] = round(time.perf_counter() - started, 2)
    row["failure"] = next((f"{check}: {failures[check]}" for check in CHECKS if check in failures), None)
    row["passed"] = all(row["checks"][check] for check in CHECKS)
    return row


# ------------------------------------------------------------------------------------------------------ driver


def run_isolated(spec: str, timeout: float) -> dict:
    """check_model in a fresh interpreter (memory of a big model is returned; a hang or crash is one failed row)."""
    started = time.perf_counter()
    import resource

    def limit_memory():
        limit = MEMORY_GB << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    command = [sys.executable, __file__, "--worker", spec]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        return _failed_row(spec, f"timeout: more than {timeout:.0f} s", started)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return _failed_row(spec, f"crash: exit code {done.returncode} ({tail[:300]})", started)
    return json.loads(lines[-1])


def _failed_row(spec: str, reason: str, started: float) -> dict:
    return {"model": spec, "source": spec.partition(":")[0], "resolution": RESOLUTIONS.get(spec, RESOLUTION),
            "checks": {check: False for check in CHECKS}, "variables": None, "pinned": [], "failure": reason,
            "passed": False, "seconds": {"total": round(time.perf_counter() - started, 2)}}


def _not_run_row(spec: str) -> dict:
    row = _failed_row(spec, NOT_RUN[spec], time.perf_counter())
    row["checks"] = {check: None for check in CHECKS}
    return row


def _merged(new_rows: list[dict], elapsed: float) -> tuple[list[dict], float]:
    """The stored rows with these models' rows replaced (in model_list order), and the wall time of a whole run
    (the stored one, less the replaced rows' time, plus this run's)."""
    stored = json.loads(RESULTS_JSON.read_text())
    fresh = {row["model"]: row for row in new_rows}
    old = {row["model"]: row for row in stored["models"]}
    order = [spec for spec in model_list() if spec in old or spec in fresh]
    replaced = sum(old[spec]["seconds"]["total"] for spec in fresh if spec in old)
    return [fresh.get(spec, old.get(spec)) for spec in order], stored["elapsed_s"] - replaced + elapsed


def _mark(value) -> str:
    return "-" if value is None else ("pass" if value else "**FAIL**")


def _pinned_summary(row: dict) -> str:
    """How many channel sources are pinned, by reason (the tracer's reasons, without node names)."""
    if not row["pinned"]:
        return "0"
    counts: dict[str, int] = {}
    for reason in row["pinned"]:
        text = reason.split(": ", 2)[-1]
        kind = ("reshape (channel shuffle)" if "reshapes channels" in text else
                "constant-size split" if "splits channels" in text else
                "fixed channel slice" if "selects channels" in text else
                "add of differently concatenated channels" if "differently concatenated" in text else text[:60])
        counts[kind] = counts.get(kind, 0) + 1
    return f"{len(row['pinned'])}: " + ", ".join(f"{kind} x{n}" for kind, n in counts.items())


def report(rows: list[dict], elapsed: float, settings: dict) -> str:
    from _report import markdown_table

    lines = [
        f"`PYTHONPATH=. python benchmarks/zoo_coverage.py` in a venv with torch {settings['torch']}, torchvision "
        f"{settings['torchvision']}, timm {settings['timm']} (CI cannot import those; full results in "
        "`benchmarks/results/zoo_coverage.json`). Every torchvision classification CNN (vision transformers and "
        f"hybrids excluded) and {settings['timm_models']} timm CNNs, random init, 10 classes, "
        f"{RESOLUTION} px (299-style Inception nets at their minimum, 75 px; VGG and AlexNet, torchvision's and "
        "timm's, at 224 px, where torch's ONNX exporter can write their 7x7 (6x6) adaptive pooling, which it refuses "
        "for a smaller map), bins 8, "
        "min bins 2. Checks: **trace** (width space, probe verification included; when the tracer refuses an op, "
        "the run retries with the `--fixed` glob its error names, as a user would, and the table says so); "
        "**slicing**: the BCNetV2 supernet's sliced forward equals the standalone pruned model for the full, min "
        "and one random arch on both paths (variance-preserving weights, norm statistics set per arch and path, so "
        "every channel reaches the logits); **flops** / **params**: the analytic MACs and parameter count equal "
        "torch's FlopCounterMode and the standalone models' numels (full, min, random arch); **onnx**: the min and "
        "random arch's pruned models, exported as `hwbcnet export` does, carry the arch's channels and match "
        "PyTorch in ONNX Runtime. Tolerance 1e-4 relative to the largest logit. *Variables*: the searchable width "
        "variables; *pinned*: channel sources kept at full width, by the reason the tracer records (the model "
        "passes when everything else slices exactly).",
        "",
    ]
    summary = []
    for source in ("torchvision", "timm", None):
        group = [row for row in rows if source is None or row["source"] == source]
        if group:
            passed = [row for row in group if row["passed"]]
            plain = [row for row in passed if not row.get("fixed")]
            summary.append([source or "all", f"{len(plain)}/{len(group)}", f"{len(passed)}/{len(group)} "
                            f"({100 * len(passed) / len(group):.0f} %)"])
    lines.append(markdown_table(["models", "pass all checks as is", "pass all checks (with --fixed where "
                                 "the error says so)"], summary))
    failures = [row for row in rows if not row["passed"] or row.get("fixed")]
    if failures:
        lines.append("Failures and refusals:\n")
        lines.append(markdown_table(["model", "reason"], [
            [f"`{row['model']}`", row["failure"] if not row["passed"] else
             f"refused: {row['refusal']}; passes with `--fixed {' '.join(row['fixed'])}`"] for row in failures]))
    table = []
    for row in rows:
        table.append([f"`{row['model']}`" + (f" `--fixed {' '.join(row['fixed'])}`" if row.get("fixed") else ""),
                      row["resolution"], "-" if row["variables"] is None else row["variables"],
                      _pinned_summary(row), *(_mark(row["checks"][check]) for check in CHECKS),
                      f"{row['seconds']['total']:.0f}"])
    lines.append(markdown_table(["model", "px", "variables", "pinned", *CHECKS, "s"], table))
    lines.append(f"Wall time {elapsed / 60:.0f} min on one core of the shared 2-core machine (each model in its own "
                 f"process, limits {TIMEOUT_S} s and {MEMORY_GB} GB).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="these model specs only (prints, writes nothing unless --merge)")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace those models' rows in the results JSON and rewrite the docs table")
    parser.add_argument("--quick", action="store_true", help="five small models (prints, writes nothing)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per model")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(check_model(args.worker)), flush=True)
        return 0
    if args.merge and not args.only:
        parser.error("--merge needs --only MODEL ...")
    import timm
    import torch
    import torchvision

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    models = args.only or (["torchvision:resnet18", "torchvision:squeezenet1_1", "torchvision:shufflenet_v2_x0_5",
                            "timm:mobilenetv3_small_100", "timm:ghostnet_100"] if args.quick else model_list())
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    rows, started = [], time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn()) as progress:
        task = progress.add_task("zoo coverage", total=len(models))
        for spec in models:
            progress.update(task, description=f"{spec:40s}")
            row = _not_run_row(spec) if spec in NOT_RUN else run_isolated(spec, args.timeout)
            rows.append(row)
            status = "pass" if row["passed"] else f"FAIL {row['failure']}"
            progress.console.print(f"{spec:40s} vars={row['variables']} pinned={len(row['pinned'])} "
                                   f"{row['seconds']['total']:.0f}s {status}")
            progress.advance(task)
    elapsed = time.perf_counter() - started
    settings = {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
                "resolution": RESOLUTION, "resolutions": RESOLUTIONS, "bins": 8, "min_bins": 2,
                "principle": "bcnetv2", "tolerance": TOLERANCE, "timeout_s": args.timeout,
                "timm_models": len(TIMM_MODELS)}
    if args.merge:
        rows, elapsed = _merged(rows, elapsed)
    body = report(rows, elapsed, settings)
    if (args.only and not args.merge) or args.quick:
        print(body)
        return 0 if all(row["passed"] for row in rows) else 1
    from _report import write_section

    from hwbcnet.fileio import atomic_write_bytes

    payload = {"settings": settings, "elapsed_s": round(elapsed, 1), "models": rows}
    atomic_write_bytes(RESULTS_JSON, (json.dumps(payload, indent=1) + "\n").encode())
    write_section(SECTION, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
