"""Test doubles for the hardware layer: a tiny width space built from Layer records and a deterministic backend."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx

from hwbcnet.hardware.profiles import Profile, TimingPolicy
from hwbcnet.hardware.timing import summarize
from hwbcnet.space.layers import Layer, Layout, Segment


@dataclass
class Var:
    name: str
    channels: int


def _layout(var: int, channels: int) -> Layout:
    return Layout((Segment(var, channels),))


class TinySpace:
    """A WidthSpace look-alike: stem conv -> residual block (conv, conv, add) -> pool -> linear; 3 variables."""

    model = slug = "tiny"
    resolution = 8
    width_mult = 1.0
    num_classes = 10

    def __init__(self, bins: int = 4, min_bins: int = 2):
        self.bins, self.min_bins = bins, min_bins
        self.variables = [Var("stage", 8), Var("mid", 12), Var("unused_in_add", 8)]
        stage, mid, block = _layout(0, 8), _layout(1, 12), _layout(2, 8)
        self.layers = [
            Layer("stem", "conv", Layout.fixed(3), stage, (8, 8), (8, 8), kernel=(3, 3), padding=(1, 1), bn=True,
                  act="relu"),
            Layer("b.conv1", "conv", stage, mid, (8, 8), (4, 4), kernel=(3, 3), stride=(2, 2), padding=(1, 1), bn=True,
                  act="relu"),
            Layer("b.conv2", "conv", mid, block, (4, 4), (4, 4), kernel=(3, 3), padding=(1, 1), bn=True),
            Layer("b.dw", "conv", block, block, (4, 4), (4, 4), kernel=(3, 3), padding=(1, 1), group_width=1, bn=True,
                  act="relu6"),
            Layer("add", "add", block, block, (4, 4), (4, 4), act="relu"),
            Layer("pool", "pool", block, block, (4, 4), (1, 1), kernel=(4, 4), stride=(4, 4), pool="avg"),
            Layer("fc", "linear", block, Layout.fixed(10), (1, 1), (1, 1), bias=True),
        ]

    @property
    def num_vars(self) -> int:
        return len(self.variables)

    @property
    def choices(self) -> range:
        return range(self.min_bins, self.bins + 1)

    def channels(self, var: int, bins):
        return -(-np.asarray(bins) * self.variables[var].channels // self.bins)

    def channel_table(self) -> np.ndarray:
        return np.stack([self.channels(v, np.arange(self.bins + 1)) for v in range(self.num_vars)]).astype(np.int64)

    def arch_channels(self, archs) -> np.ndarray:
        archs = np.atleast_2d(archs)
        return self.channel_table()[np.arange(self.num_vars), archs]

    def fingerprint(self) -> str:
        return hashlib.sha256(f"tiny-{self.bins}-{self.min_bins}".encode()).hexdigest()[:16]

    def full_arch(self):
        return np.full(self.num_vars, self.bins, dtype=np.int64)

    def min_arch(self):
        return np.full(self.num_vars, self.min_bins, dtype=np.int64)

    def random_archs(self, rng, n):
        return rng.integers(self.min_bins, self.bins + 1, size=(n, self.num_vars), dtype=np.int64)

    def format_arch(self, arch) -> str:
        return "".join(str(int(c)) for c in arch)


def fast_profile(name: str = "cpu", **changes) -> Profile:
    policy = TimingPolicy(warmup_runs=1, warmup_ms=0.0, repeats=50, min_time_ms=0.0)
    base = dict(name=name, description="test", backend="onnxruntime", precision="fp32", batch=1, threads=1,
                passes=2, branches=(1, 4), cell_timing=policy, model_timing=policy)
    base.update(changes)
    return Profile(**base)


def per_copy_ms(model: onnx.ModelProto) -> float:
    """The fake cost of one branch: proportional to its output channels, doubled when it contains an Add."""
    channels = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    adds = sum(node.op_type == "Add" for node in model.graph.node) // len(model.graph.output)
    return 0.001 * channels * (1 + adds)


class FakeBackend:
    """Deterministic timings: 0.01 ms fixed overhead + copies x per_copy_ms. Counts calls; optionally raises
    on call number `fail_at` (1-based) to simulate a kill."""

    name = "fake"
    shared_input_branches = True

    def __init__(self, fail_at: int | None = None):
        self.calls = 0
        self.fail_at = fail_at

    def environment(self, profile) -> dict:
        return {"backend": "fake", "device": "fake-cpu", "runtime_versions": {"fake": "1"},
                "precision": profile.precision, "threads": profile.threads, "clock_state": {}, "date": "today"}

    def measure(self, onnx_bytes, profile, policy=None):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        model = onnx.load_from_string(onnx_bytes)
        value = 0.01 + len(model.graph.output) * per_copy_ms(model)
        samples = value * (1 + 0.001 * np.linspace(-1.0, 1.0, 50))  # median exactly `value`
        return summarize(samples, (policy or profile.model_timing).stability_threshold)


def conv_ms(c_out: int) -> float:
    """The fake time of one convolution: proportional to its output channels."""
    return 0.001 * c_out


class ShiftingSpeedBackend(FakeBackend):
    """End-to-end time of an exported model = a_ms + b * (sum of conv_ms over its convolutions), times a speed
    factor that the test changes at will (a machine that got slower or faster since its LUT was calibrated).
    A LUT whose conv cells hold conv_ms (see conv_lut) then predicts it exactly at factor 1 after calibration."""

    def __init__(self, a_ms: float = 0.25, b: float = 1.5, factor: float = 1.0):
        super().__init__()
        self.a_ms, self.b, self.factor = a_ms, b, factor

    def measure(self, onnx_bytes, profile, policy=None):
        self.calls += 1
        model = onnx.load_from_string(onnx_bytes)
        shapes = {init.name: init.dims for init in model.graph.initializer}
        total = sum(conv_ms(shapes[node.input[1]][0]) for node in model.graph.node if node.op_type == "Conv")
        return summarize([self.factor * (self.a_ms + self.b * total)] * 50, 0.05)


def conv_lut(path, space, profile):
    """A complete LUT of `space` whose conv cells take conv_ms(out channels) and every other cell 0 ms."""
    from hwbcnet.hardware.cells import enumerate_cells
    from hwbcnet.hardware.lut import Lut

    lut = Lut.new(path, space, profile, {"device": "fake-cpu", "clock_state": {"load_average": [0.1, 0.1, 0.1]}})
    for cell in enumerate_cells(space):
        lut.cells[lut.key(cell)] = {"median_ms": conv_ms(cell.c_out) if cell.kind == "conv" else 0.0, "stable": True}
    lut.save()
    return lut


class RegionalErrorBackend(ShiftingSpeedBackend):
    """ShiftingSpeedBackend, except that a model whose first convolution has `channels` output channels runs
    `region_factor` times the time: a per-arch error the additive LUT cannot see (a different kernel for that shape),
    shared by every arch in that region of the width space."""

    def __init__(self, channels: int, region_factor: float, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.region_factor = channels, region_factor

    def measure(self, onnx_bytes, profile, policy=None):
        timing = super().measure(onnx_bytes, profile, policy)
        model = onnx.load_from_string(onnx_bytes)
        shapes = {init.name: init.dims for init in model.graph.initializer}
        first = next(node for node in model.graph.node if node.op_type == "Conv")
        if shapes[first.input[1]][0] == self.channels:
            return summarize([self.region_factor * timing.median] * 50, 0.05)
        return timing
