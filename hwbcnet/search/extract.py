"""From a search result to a standalone pruned model (DIR/subnet.pt) and its fine-tuning.

Weights are inherited from the supernet path that scored higher for the chosen arch (left or right; left for ua):
both paths hold exactly the arch's channel counts and were trained equally often, so the better-scoring one is the
better starting point. BatchNorm statistics are then recalibrated on training batches for the standalone model.

subnet.pt (a torch.save dict, weights_only-loadable), kind "hwbcnet.subnet", schema_version 1:
    space       WidthSpace.describe();  arch  the arch JSON (code, widths, channels)
    path        the supernet path the weights came from;  source  {search, checkpoint} paths and sha256
    state_dict  the standalone model's weights (module names of the traced model)
    data        data spec;  accuracy  {"val", "test"} now;  history  [{"stage", "epoch", "val", "test", ...}]
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import atomic_torch_save, file_sha256
from hwbcnet.space.space import space_from_description
from hwbcnet.supernet.extract import build_standalone

KIND = "hwbcnet.subnet"
SCHEMA_VERSION = 1


def _accuracy(model, loader) -> float:
    from hwbcnet.training.scoring import accuracy

    correct, total = accuracy(model, loader)
    return 100.0 * correct / max(total, 1)


def evaluate_subnet(model, splits) -> dict:
    return {"val": _accuracy(model, splits.loader("val", 256)), "test": _accuracy(model, splits.loader("test", 256))}


def extract_subnet(search_path: str | Path, out: str | Path, path: str | None = None, calibration_batches: int = 20) -> dict:
    from hwbcnet.data import load_data
    from hwbcnet.search.runner import load_search
    from hwbcnet.training.scoring import EvalData, recalibrate_bn
    from hwbcnet.training.trainer import load_supernet

    result = load_search(search_path)
    checkpoint = result["checkpoint"]["path"]
    if not Path(checkpoint).is_file():
        raise HwbcnetError(f"{search_path}: its supernet checkpoint {checkpoint} is missing")
    if file_sha256(checkpoint) != result["checkpoint"]["sha256"]:
        raise HwbcnetError(f"{checkpoint} changed since {search_path} was searched (sha256 differs); search again")
    supernet, payload = load_supernet(checkpoint)
    space = supernet.space
    arch = space.arch_from_json(result["arch"])
    paths = result.get("paths", {})
    if path is None:
        path = max(supernet.principle.paths, key=lambda p: paths.get(p, -1.0))
    if path not in supernet.principle.paths:
        raise HwbcnetError(f"--path {path!r}: the {supernet.principle.name} supernet has paths {supernet.principle.paths}")
    model = build_standalone(space, arch, supernet, path)
    splits = load_data(result["data"], space.resolution, seed=payload["config"]["seed"])
    recalibrate_bn(model, EvalData.from_splits(splits, calibration_batches=calibration_batches).calibration)
    accuracy = evaluate_subnet(model, splits)
    subnet = {
        "space": space.describe(), "arch": space.arch_to_json(arch), "path": path,
        "source": {"search": str(search_path), "search_sha256": file_sha256(search_path),
                   "checkpoint": checkpoint, "checkpoint_sha256": result["checkpoint"]["sha256"]},
        "state_dict": model.state_dict(), "data": result["data"], "accuracy": accuracy,
        "history": [{"stage": "extracted", **accuracy}], "costs": result["costs"],
        "device": result.get("device"),
    }
    save_subnet(out, subnet)
    return subnet


def save_subnet(path: str | Path, subnet: dict) -> Path:
    return atomic_torch_save(path, {"kind": KIND, "schema_version": SCHEMA_VERSION, **subnet})


def load_subnet(path: str | Path):
    """(model in eval mode, space, arch, payload) of a subnet.pt."""
    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"{path}: subnet file not found; create it with `hwbcnet extract`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HwbcnetError(f"{path}: unreadable subnet file ({type(exc).__name__}); it is corrupt") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND or payload.get("schema_version") != SCHEMA_VERSION:
        raise HwbcnetError(f"{path}: not a hwbcnet subnet file (schema {SCHEMA_VERSION})")
    space = space_from_description(payload["space"])
    arch = space.arch_from_json(payload["arch"])
    model = build_standalone(space, arch)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:  # missing/unexpected keys or other shapes: the model definition changed
        raise HwbcnetError(f"{path}: its weights no longer fit {space.model} (the model definition changed since it "
                           "was extracted); extract it again") from None
    return model.eval(), space, arch, payload


def finetune_subnet(subnet_path: str | Path, out: str | Path | None = None, *, data: str | None = None,
                    epochs: int = 5, batch_size: int = 32, lr: float = 0.01, weight_decay: float = 5e-4,
                    seed: int = 0, progress: bool = True) -> dict:
    """Train the extracted subnet further (SGD + cosine); returns accuracies before and after."""
    from hwbcnet.data import load_data

    model, space, arch, payload = load_subnet(subnet_path)
    data = data or payload["data"]
    splits = load_data(data, space.resolution, seed=seed)
    before = evaluate_subnet(model, splits)
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps_per_epoch = len(splits.train) // batch_size
    total = max(1, epochs * steps_per_epoch)
    history = list(payload.get("history", []))
    columns = [TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    step = 0
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("finetune", total=total, loss=float("nan"))
        for epoch in range(epochs):
            model.train()
            for images, labels in splits.loader("train", batch_size, shuffle=True, seed=seed * 1000 + epoch, drop_last=True):
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(task, advance=1, loss=loss.item())
            history.append({"stage": "finetune", "epoch": epoch + 1, **evaluate_subnet(model, splits)})
    after = evaluate_subnet(model.eval(), splits)
    payload.update(state_dict=model.state_dict(), accuracy=after, history=history, data=data)
    payload.pop("kind"), payload.pop("schema_version")
    save_subnet(out or subnet_path, payload)
    return {"before": before, "after": after, "epochs": epochs, "out": str(out or subnet_path)}
