"""The supernet checkpoint (DIR/supernet.pt), schema version 1.

A `torch.save`d dict of plain Python values and tensors, loadable with `torch.load(..., weights_only=True)`:

    kind            "hwbcnet.supernet"
    schema_version  1
    config          the TrainConfig as a dict (model, data, principle, bins, min_bins, resolution, width_mult, ...)
    space           WidthSpace.describe() and `space_fingerprint`
    epoch, step     completed epochs and optimizer steps; `planned_steps` = epochs x steps per epoch
    state_dict      the supernet's weights and BatchNorm buffers (parameter names of the traced model, "net." prefix)
    optimizer       SGD state_dict; `sampler` the width sampler's RNG state
    loss_records    [[loss, [bins per variable]], ...] lowest path-averaged losses, ascending (the search prior)
    history         per-epoch {"epoch", "loss", "images_per_s", "seconds"}
    finished        True once all planned steps ran

Written atomically after every epoch, so a killed run resumes from the last finished epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import atomic_torch_save

KIND = "hwbcnet.supernet"
SCHEMA_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    return atomic_torch_save(path, {"kind": KIND, "schema_version": SCHEMA_VERSION, **payload})


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"{path}: checkpoint not found; train one with `hwbcnet train --out DIR`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise HwbcnetError(f"{path}: unreadable checkpoint ({type(exc).__name__}); it is corrupt or not a "
                           "hwbcnet supernet checkpoint") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise HwbcnetError(f"{path}: not a hwbcnet supernet checkpoint")
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise HwbcnetError(f"{path}: checkpoint schema {payload.get('schema_version')} is not supported (expected "
                           f"{SCHEMA_VERSION})")
    return payload
