"""Latency predicted from a LUT: the sum of the cells an arch executes, then the device's calibration
T = a + b * sum (fitted on measured whole models, stored in the LUT) when the LUT has one.

Vectorised: a layer's cell depends on the sizes of at most two channel axes (Layer.axes: input and output
channels, or the channels and the reduced width of an SE gate), each a linear function of the variables' channel
counts. Every layer gets a table of cell times over the sizes its axes can reach; all tables are stacked into one
flat array and every axis into one value-to-position map, so a batch of archs costs one matrix product, two
gathers and a sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.hardware.cells import axis_values, cell_for_layer, enumerate_cells, layer_sizes, variable_choices
from hwbcnet.hardware.lut import Lut
from hwbcnet.hardware.timing import fit_line
from hwbcnet.space.layers import Layout

_SHOW_MISSING = 8


def _form(layout: Layout, V: int) -> np.ndarray:
    """The axis size as a vector over x = [channels of each variable..., 1]."""
    coef, constant = layout.coefficients()
    form = np.zeros(V + 1, dtype=np.int64)
    for var, value in coef.items():
        form[var] += value
    form[V] = constant
    return form


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
        V = space.num_vars
        choices = variable_choices(space)
        forms, self._axis_values, tables, offsets = [], [], [], []
        self._layer_axes: list[tuple[int, int | None]] = []
        position = 0
        for layer in space.layers:
            axes = layer.axes
            values = [axis_values(axis, choices) for axis in axes]
            table = np.full([len(v) for v in values] + [1] * (2 - len(values)), np.nan)
            for sizes in layer_sizes(layer, space, choices):
                index = tuple(int(np.searchsorted(v, size)) for v, size in zip(values, sizes))
                table[index + (0,) * (2 - len(index))] = lut.value_ms(cell_for_layer(layer, sizes))
            first = len(forms)
            for axis, axis_value in zip(axes, values):
                forms.append(_form(axis, V))
                self._axis_values.append(axis_value)
            self._layer_axes.append((first, first + 1 if len(axes) == 2 else None))
            tables.append(table)
            offsets.append(position)
            position += table.size
        self._forms = np.array(forms, dtype=np.int64).reshape(len(forms), V + 1)  # (axes, V+1)
        self._tables = tables
        self._flat = np.concatenate([t.ravel() for t in tables]) if tables else np.zeros(0)
        self._offsets = np.array(offsets, dtype=np.int64)
        self._strides = np.array([t.shape[1] for t in tables], dtype=np.int64)
        # value -> position maps, one per axis, stacked with offsets (-1: unreachable)
        sizes = [int(v.max()) + 1 for v in self._axis_values]
        self._map_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, int)
        value_map = np.full(sum(sizes), -1, dtype=np.int64)
        for offset, values in zip(self._map_offsets, self._axis_values):
            value_map[offset + values] = np.arange(len(values))
        self._value_map = value_map
        self._first_axis = np.array([a for a, _ in self._layer_axes], dtype=np.int64)
        self._second_axis = np.array([-1 if b is None else b for _, b in self._layer_axes], dtype=np.int64)
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
        if not self.space.layers:
            return np.zeros(archs.shape[0])
        x = np.concatenate([self.space.arch_channels(archs), np.ones((archs.shape[0], 1), dtype=np.int64)], axis=1)
        positions = self._value_map[self._map_offsets + x @ self._forms.T]  # (n, axes)
        first = positions[:, self._first_axis]
        second = np.where(self._second_axis >= 0, positions[:, np.maximum(self._second_axis, 0)], 0)
        return self._flat[self._offsets + first * self._strides + second].sum(axis=1)

    def __call__(self, archs) -> np.ndarray:
        return self.a + self.b * self.cell_sum(archs)

    def expectation(self, probs):
        """Expected latency (torch scalar, differentiable) when each variable's width is drawn independently from
        probs (V, N-m+1) over m..N. Exact for every layer whose two axes follow disjoint variables or one and the
        same variable (all convs, SE gates, adds, pools); axes that share some of several variables (rare: a
        concatenation feeding a layer that also writes one of its parts) are treated as independent. Lets the
        search prior aim at a latency budget."""
        import torch

        space = self.space
        channels = space.channel_table()[:, space.min_bins:]  # (V, widths)
        axis_probs = [_axis_distribution(self._forms[a], values, channels, probs)
                      for a, values in enumerate(self._axis_values)]
        total = torch.zeros((), dtype=probs.dtype)
        for layer, (first, second), table in zip(space.layers, self._layer_axes, self._tables):
            cells = torch.as_tensor(np.nan_to_num(table), dtype=probs.dtype)
            if second is None:
                total = total + axis_probs[first] @ cells[:, 0]
            else:
                total = total + axis_probs[first] @ cells @ axis_probs[second]
        return self.a + self.b * total


def _axis_distribution(form: np.ndarray, values: np.ndarray, channels: np.ndarray, probs):
    """P(axis size = values[i]) for independent widths: a convolution of the per-variable distributions."""
    import torch

    V = len(form) - 1
    lookup = {int(v): i for i, v in enumerate(values)}
    used = np.flatnonzero(form[:V])
    if len(used) <= 1:  # the common case: a fixed scatter of one variable's widths onto the sizes
        scatter = np.zeros((channels.shape[1], len(values)))
        for width in range(channels.shape[1]):
            size = int(form[V]) + (int(form[used[0]]) * int(channels[used[0], width]) if len(used) else 0)
            scatter[width, lookup[size]] = 1.0
        weights = probs[int(used[0])] if len(used) else torch.full((channels.shape[1],), 1.0 / channels.shape[1],
                                                                        dtype=probs.dtype)
        return weights @ torch.as_tensor(scatter, dtype=probs.dtype)
    dist = {int(form[V]): torch.ones((), dtype=probs.dtype)}
    for var in np.flatnonzero(form[:V]):
        step = {}
        for value, p in dist.items():
            for width, channel in enumerate(channels[var]):
                key = value + int(form[var]) * int(channel)
                step[key] = step.get(key, 0) + p * probs[var, width]
        dist = step
    out = torch.zeros(len(values), dtype=probs.dtype)
    for value, p in dist.items():
        out = out.index_add(0, torch.tensor([lookup[value]]), p.reshape(1))
    return out


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
    path = lut_path or default_lut_path(profile.name, space.slug, space.resolution, profile.batch, root)
    if not Path(path).is_file():
        raise HwbcnetError(f"no LUT at {path}; build it with `hwbcnet profile --device {device} --model {space.model}"
                           f"{'' if space.resolution is None else f' --resolution {space.resolution}'}`")
    return LatencyCost(space, Lut.load(path, space=space, profile=profile))
