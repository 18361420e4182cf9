"""Latency predicted from a LUT: the sum of the cells an arch executes, then the device's calibration
T = a + b * sum (fitted on measured whole models, stored in the LUT) when the LUT has one.

Vectorised: every layer gets a (N+1) x (N+1) table of cell times indexed by (input bins, output bins); fixed
channel counts are looked up at bin N. All tables are stacked into one flat array, so a batch of archs costs one
gather and one sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.cells import enumerate_cells, layer_cells
from hwbcnet.hardware.lut import Lut
from hwbcnet.hardware.timing import fit_line

_SHOW_MISSING = 8


class LatencyCost:
    name = "latency"
    unit = "ms"

    def __init__(self, space, lut: Lut):
        lut.check_space(space)
        missing = lut.missing(enumerate_cells(space))
        if missing:
            shown = ", ".join(str(cell) for cell in missing[:_SHOW_MISSING])
            more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
            raise HwbcnetError(
                f"{len(missing)} cells missing from {lut.path}: {shown}{more}; run `hwbcnet profile --device "
                f"{lut.data['device']} --model {space.model}` to measure them")
        self.space = space
        self.lut = lut
        size = space.bins + 1
        tables = np.full((len(space.layers), size, size), np.nan)
        for index, layer in enumerate(space.layers):
            for b_in, b_out, cell in layer_cells(layer, space):
                tables[index, b_in, b_out] = lut.value_ms(cell)
        self._flat = tables.ravel()
        self._layer_offset = np.arange(len(space.layers)) * size * size
        # Column V of an extended arch holds N for the layers whose channel counts are fixed.
        fixed = space.num_vars
        self._in_col = np.array([fixed if layer.in_var is None else layer.in_var for layer in space.layers])
        self._out_col = np.array([fixed if layer.out_var is None else layer.out_var for layer in space.layers])
        self._size = size
        calibration = lut.calibration
        self.a, self.b = (calibration["a_ms"], calibration["b"]) if calibration else (0.0, 1.0)

    @property
    def calibrated(self) -> bool:
        return self.lut.calibration is not None

    def cell_sum(self, archs) -> np.ndarray:
        """Uncalibrated sum of cell times (ms), float64 (n,)."""
        archs = np.atleast_2d(np.asarray(archs, dtype=np.int64))
        if archs.shape[1] != self.space.num_vars:
            raise HwbcnetError(f"archs have {archs.shape[1]} widths but {self.space.model} has "
                               f"{self.space.num_vars} width variables")
        if archs.size and (archs.min() < self.space.min_bins or archs.max() > self.space.bins):
            raise HwbcnetError(f"arch widths must lie in {self.space.min_bins}..{self.space.bins} bins")
        extended = np.concatenate([archs, np.full((archs.shape[0], 1), self.space.bins, dtype=np.int64)], axis=1)
        index = self._layer_offset + extended[:, self._in_col] * self._size + extended[:, self._out_col]
        return self._flat[index].sum(axis=1)

    def __call__(self, archs) -> np.ndarray:
        return self.a + self.b * self.cell_sum(archs)

    def expectation(self, probs):
        """Exact expected latency (torch scalar, differentiable) when each variable's width is drawn independently
        from probs (V, N-m+1) over m..N: per layer sum_ab p_in(a) p_out(b) T[a, b] (the diagonal where input and
        output are one variable). Lets the search prior aim at a latency budget."""
        import torch

        space, size = self.space, self._size
        full = torch.zeros(space.num_vars + 1, size, dtype=probs.dtype)
        full[: space.num_vars, space.min_bins:] = probs
        full[space.num_vars, space.bins] = 1.0  # fixed channel counts sit at bin N
        tables = torch.as_tensor(np.nan_to_num(self._flat.reshape(-1, size, size)), dtype=probs.dtype)
        p_in, p_out = full[self._in_col], full[self._out_col]
        same = torch.as_tensor(self._in_col == self._out_col)
        cross = torch.einsum("la,lab,lb->l", p_in, tables, p_out)
        diagonal = (p_in * torch.diagonal(tables, dim1=1, dim2=2)).sum(1)
        return self.a + self.b * torch.where(same, diagonal, cross).sum()


def fit_calibration(predicted_sums, measured_ms) -> tuple[float, float, dict]:
    """Least-squares T = a + b * sum. Returns (a, b, residual statistics of the fit in ms and %)."""
    predicted_sums = np.asarray(predicted_sums, dtype=np.float64)
    measured_ms = np.asarray(measured_ms, dtype=np.float64)
    a, b = fit_line(predicted_sums, measured_ms)
    residual = measured_ms - (a + b * predicted_sums)
    percent = 100.0 * np.abs(residual) / measured_ms
    return a, b, {"rmse_ms": float(np.sqrt(np.mean(residual ** 2))), "max_abs_ms": float(np.abs(residual).max()),
                  "median_abs_pct": float(np.median(percent)), "max_abs_pct": float(percent.max())}


def latency_cost_for(space, device: str, lut_path=None, root="lut") -> LatencyCost:
    """The LatencyCost of `space` on a device profile (a shipped name or a .toml path), reading its LUT from
    `lut_path` or the default lut/<device>/<model>-<resolution>-b<batch>.json."""
    from hwbcnet.hardware.lut import lut_path as default_lut_path
    from hwbcnet.hardware.profiles import load_profile

    profile = load_profile(device)
    path = lut_path or default_lut_path(profile.name, space.model, space.resolution, profile.batch, root)
    if not Path(path).is_file():
        raise HwbcnetError(f"no LUT at {path}; build it with `hwbcnet profile --device {device} --model {space.model}"
                           f"{'' if space.resolution is None else f' --resolution {space.resolution}'}`")
    return LatencyCost(space, Lut.load(path, space=space, profile=profile))
