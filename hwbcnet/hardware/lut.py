"""The LUT file: per-cell latencies of one model's width space on one device, with provenance and calibration.

Path convention: `lut/<device>/<model>-<resolution>-b<batch>.json`. JSON, written atomically after every measured
cell (so a killed `hwbcnet profile` resumes where it stopped). Layout (schema_version 1, see docs/lut-format.md):

    {
      "kind": "hwbcnet.lut", "schema_version": 1,
      "device": "cpu",                           # profile name
      "settings": {"backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1,
                   "optimization_level": "all"}, # what the numbers depend on; checked on load
      "settings_tag": "b1 fp32 ort-t1-all",      # appended to every cell key
      "profile": {...},                          # the full device profile used (timing policy included)
      "model": "resnet20", "resolution": 32, "batch": 1,
      "space": {"fingerprint": "...", "bins": 8, "min_bins": 2, "width_mult": 1.0, "num_classes": 10},
      "provenance": {"device": "Intel(R) Xeon(R) ...", "runtime_versions": {...}, "precision": "fp32",
                     "threads": 1, "clock_state": {...}, "date": "..."},
      "measurement": {"method": "...", "branches": [1, 4], "passes": 2},
      "cells": {"conv k3 s1 p1 bn relu 16->16 32x32 | b1 fp32 ort-t1-all":
                  {"median_ms": ..., "p10_ms", "p25_ms", "p75_ms", "p90_ms", "iqr_ms", "n", "stable",
                   "outliers", "isolated_ms", "intercept_ms", "passes_ms": [...]}},
      "partial": {key: [pass record, ...]},      # cells with fewer passes than required (resume state)
      "calibration": {"a_ms": ..., "b": ..., "n": 12, "fitted_on": [...], "residuals": {...}, "date": ...,
                      "provenance": {"source": ..., "load_average": [...], ...}, "history": [earlier fits]} | null,
      "build": {"measure_seconds": ...}
    }

`median_ms` is the cell's per-copy time (differential slope, median over passes); p10..p90 describe its spread.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Iterable

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.fileio import NUMBER, atomic_write_json, check_fields, read_json
from hwbcnet.hardware.cells import CellKey, lut_key
from hwbcnet.hardware.profiles import Profile

KIND = "hwbcnet.lut"
SCHEMA_VERSION = 1
METHOD = ("differential: slope of median time over models with k parallel copies of the cell; add cells minus the "
          "same models without the add; median over passes in shuffled order")
_FIELDS = {"device": str, "settings": dict, "settings_tag": str, "model": str, "resolution": int, "batch": int,
           "space": dict, "provenance": dict, "cells": dict, "partial": dict, "calibration": (dict, type(None))}
_QUANTILES = ("p10_ms", "p25_ms", "p75_ms", "p90_ms")


def lut_path(device: str, model: str, resolution: int, batch: int, root: str | Path = "lut") -> Path:
    return Path(root) / device / f"{model}-{resolution}-b{batch}.json"


def _space_record(space) -> dict:
    record = {"fingerprint": space.fingerprint(), "bins": space.bins, "min_bins": space.min_bins,
              "width_mult": getattr(space, "width_mult", 1.0), "num_classes": getattr(space, "num_classes", None)}
    if hasattr(space, "describe"):  # how to rebuild the space (model source, kwargs, --fixed, divisor)
        record["description"] = space.describe()
    return record


def finalize_passes(passes: list[dict]) -> dict:
    """A cell's entry from its pass records: the median over passes of each statistic."""
    def med(name):
        return float(np.median([record[name] for record in passes]))

    entry = {"median_ms": med("ms")}
    entry.update({name: med(name) for name in _QUANTILES})
    entry["iqr_ms"] = entry["p75_ms"] - entry["p25_ms"]
    entry.update(
        n=int(sum(record["n"] for record in passes)),
        stable=all(record["stable"] for record in passes),
        outliers=int(sum(record["outliers"] for record in passes)),
        isolated_ms=med("isolated_ms"),
        intercept_ms=med("intercept_ms"),
        passes_ms=[record["ms"] for record in passes],
    )
    return entry


class Lut:
    def __init__(self, path: str | Path, data: dict):
        self.path = Path(path)
        self.data = data

    @classmethod
    def new(cls, path: str | Path, space, profile: Profile, provenance: dict) -> "Lut":
        return cls(path, {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "device": profile.name,
            "settings": profile.settings(),
            "settings_tag": profile.settings_tag(),
            "profile": profile.to_json(),
            "model": space.model,
            "resolution": int(space.resolution),
            "batch": profile.batch,
            "space": _space_record(space),
            "provenance": provenance,
            "measurement": {"method": METHOD, "branches": list(profile.branches), "passes": profile.passes},
            "cells": {},
            "partial": {},
            "calibration": None,
            "build": {"measure_seconds": 0.0},
        })

    @classmethod
    def load(cls, path: str | Path, *, space=None, profile: Profile | None = None) -> "Lut":
        """Read a LUT; with `space`/`profile`, refuse one built for another model, resolution, width space, device
        or settings."""
        path = Path(path)
        data = check_fields(read_json(path, kind=KIND, schema_version=SCHEMA_VERSION), _FIELDS, path)
        if data["calibration"] is not None:
            check_fields(data["calibration"], {"a_ms": NUMBER, "b": NUMBER, "n": int, "residuals": dict}, path,
                         "calibration.")
        for key, entry in data["cells"].items():
            check_fields(entry, {"median_ms": NUMBER}, path, f"cells[{key!r}].")
        lut = cls(path, data)
        if space is not None:
            lut.check_space(space)
        if profile is not None:
            lut.check_profile(profile)
        return lut

    def check_space(self, space) -> None:
        data, path = self.data, self.path
        if data["model"] != space.model or data["resolution"] != space.resolution:
            raise HwbcnetError(f"{path}: LUT is for {data['model']} at {data['resolution']} px, not {space.model} at "
                               f"{space.resolution} px; pass the LUT of this model or profile it")
        if data["space"].get("fingerprint") != space.fingerprint():
            recorded = data["space"].get("description") or {}
            divisor = recorded.get("channel_divisor", 1)
            hint = (f"; it has channel divisor {divisor} and this space {space.channel_divisor}: use the same "
                    "--channel-divisor to train, profile and search" if divisor != getattr(space, "channel_divisor", 1)
                    else "")
            raise HwbcnetError(
                f"{path}: LUT was built for another width space of {space.model} (bins {data['space'].get('bins')}, "
                f"min {data['space'].get('min_bins')}, fingerprint {data['space'].get('fingerprint')}){hint}; "
                "profile this space into a new file (--out) or delete the old one")

    def check_profile(self, profile: Profile) -> None:
        data, path = self.data, self.path
        if data["device"] != profile.name:
            raise HwbcnetError(f"{path}: LUT was measured on device {data['device']!r}, not {profile.name!r}")
        if data["settings"] != profile.settings():
            raise HwbcnetError(f"{path}: LUT was measured with settings {data['settings']}, but device {profile.name} "
                               f"now has {profile.settings()}; re-profile into a new file")

    # ------------------------------------------------------------------------------------------------- cells

    @property
    def settings_tag(self) -> str:
        return self.data["settings_tag"]

    @property
    def cells(self) -> dict[str, dict]:
        return self.data["cells"]

    @property
    def partial(self) -> dict[str, list[dict]]:
        return self.data["partial"]

    def key(self, cell: CellKey) -> str:
        return lut_key(cell, self.settings_tag)

    def value_ms(self, cell: CellKey) -> float:
        entry = self.cells.get(self.key(cell))
        if entry is None:
            raise HwbcnetError(f"cell {cell} is missing from {self.path}; run `hwbcnet profile` to measure it")
        return float(entry["median_ms"])

    def missing(self, cells: Iterable[CellKey]) -> list[CellKey]:
        return [cell for cell in cells if self.key(cell) not in self.cells]

    def add_pass(self, cell: CellKey, record: dict, passes: int) -> None:
        """Store one pass of a cell; once it has `passes` of them it becomes a finished cell entry."""
        key = self.key(cell)
        records = self.partial.pop(key, []) + [record]
        if len(records) >= passes:
            self.cells[key] = finalize_passes(records)
        else:
            self.partial[key] = records

    def passes_done(self, cell: CellKey, passes: int) -> int:
        key = self.key(cell)
        return passes if key in self.cells else len(self.partial.get(key, []))

    # ------------------------------------------------------------------------------------------- calibration

    @property
    def calibration(self) -> dict | None:
        return self.data.get("calibration")

    def set_calibration(self, a_ms: float, b: float, fitted_on: list[dict], residuals: dict,
                        provenance: dict | None = None) -> None:
        """Store a new fit. `provenance` says what produced it (source command, machine load, ...); the fits it
        replaces are kept, newest last, in `history` (without their points)."""
        previous = self.data.get("calibration")
        history = []
        if previous:
            history = previous.get("history", []) + [
                {key: previous.get(key) for key in ("a_ms", "b", "n", "residuals", "date", "provenance")}]
        self.data["calibration"] = {
            "a_ms": float(a_ms), "b": float(b), "n": len(fitted_on), "fitted_on": fitted_on, "residuals": residuals,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "provenance": provenance or {}, "history": history,
        }

    def save(self) -> Path:
        return atomic_write_json(self.path, self.data)
