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

from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import NUMBER, atomic_torch_save, check_fields, has_type, is_version, torch_load

KIND = "hwbcnet.supernet"
SCHEMA_VERSION = 1
_FIELDS = {"config": dict, "space": dict, "space_fingerprint": str, "state_dict": dict}  # what loading needs
_OPTIONAL = {"epoch": int, "step": int, "optimizer": dict, "sampler": dict, "loss_records": list, "history": list}
_CONFIG_FIELDS = {"principle": str, "seed": int}
_CONFIG_OPTIONAL = {"data": str}


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    return atomic_torch_save(path, {"kind": KIND, "schema_version": SCHEMA_VERSION, **payload})


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HwbcnetError(f"{path}: checkpoint not found; train one with `hwbcnet train --out DIR`")
    try:
        payload = torch_load(path)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise HwbcnetError(f"{path}: unreadable checkpoint ({type(exc).__name__}); it is corrupt or not a "
                           "hwbcnet supernet checkpoint") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise HwbcnetError(f"{path}: not a hwbcnet supernet checkpoint")
    if not is_version(payload.get("schema_version"), SCHEMA_VERSION):
        raise HwbcnetError(f"{path}: checkpoint schema {payload.get('schema_version')} is not supported (expected "
                           f"{SCHEMA_VERSION})")
    check_fields(payload, _FIELDS, path, optional=_OPTIONAL)
    check_fields(payload["config"], _CONFIG_FIELDS, path, "config.", optional=_CONFIG_OPTIONAL)
    for record in payload.get("loss_records", []):
        if not _is_loss_record(record):
            raise HwbcnetError(f"{path}: corrupt file, loss_records holds {str(record)[:80]}; re-create it")
    return payload


def _is_loss_record(record) -> bool:
    """[path-averaged loss, [bins per variable]] (LossRecords.to_list)."""
    return (isinstance(record, list) and len(record) == 2 and has_type(record[0], NUMBER)
            and isinstance(record[1], list) and all(has_type(c, int) for c in record[1]))


def recorded_data(payload: dict, path) -> str:
    """The data spec a checkpoint was trained on."""
    if "data" not in payload["config"]:
        raise HwbcnetError(f"{path}: the checkpoint records no data spec; it was not written by `hwbcnet train`")
    return payload["config"]["data"]
