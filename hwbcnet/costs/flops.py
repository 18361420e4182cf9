"""Exact FLOPs (multiply-accumulates of conv and linear layers, as Channel-Bench-Macro counts them) and parameter
counts (conv/linear weights and biases plus BatchNorm affine parameters), vectorised over many archs.

Every term is a product of at most two channel counts, so a cost is the quadratic form x^T Q x over
x = [channels of each variable..., 1]. Q is built once from the traced layers; evaluating n archs is one
(n, V+1) gather and a matrix product.
"""

from __future__ import annotations

import numpy as np

from hwbcnet.space.layers import Layer
from hwbcnet.space.space import WidthSpace


def _layer_terms(layer: Layer, counting: str) -> list[tuple[int | None, int | None, float]]:
    """(a, b, coefficient) terms of one layer, cost = coef * x[a] * x[b], where a/b is a variable index or None for
    the constant 1. A fixed channel count (input image, classes) is folded into the coefficient."""

    def side(var: int | None, fixed_channels: int) -> tuple[int | None, float]:
        return (var, 1.0) if var is not None else (None, float(fixed_channels))

    (a, ka), (b, kb) = side(layer.in_var, layer.in_channels), side(layer.out_var, layer.out_channels)
    H, W = layer.out_hw
    if layer.kind == "conv":
        area = layer.kernel * layer.kernel
        if layer.depthwise:  # one filter per channel: linear in the channels
            per_channel = area * H * W if counting == "flops" else area + layer.bias + 2 * layer.bn
            return [(None, b, per_channel * kb)]
        terms = [(a, b, area * (H * W if counting == "flops" else 1) * ka * kb)]
        if counting == "params":
            terms.append((None, b, (layer.bias + 2 * layer.bn) * kb))
        return terms
    if layer.kind == "linear":
        terms = [(a, b, ka * kb)]
        if counting == "params" and layer.bias:
            terms.append((None, b, kb))
        return terms
    return []  # adds and pools carry no MACs or parameters


class QuadraticCost:
    """A cost that is a sum of channel products, e.g. FLOPs or params. Implements hwbcnet.costs.base.Cost."""

    def __init__(self, space: WidthSpace, name: str, unit: str, counting: str):
        self.space, self.name, self.unit = space, name, unit
        V = space.num_vars
        Q = np.zeros((V + 1, V + 1))
        for layer in space.layers:
            for a, b, coef in _layer_terms(layer, counting):
                Q[V if a is None else a, V if b is None else b] += coef
        self.Q = Q
        self.full = float(self(space.full_arch())[0])

    def expectation(self, probs):
        """Exact E[x^T Q x] (torch scalar, differentiable) for independent widths drawn from probs (V, N-m+1)."""
        import torch

        channels = torch.as_tensor(self.space.channel_table()[:, self.space.min_bins:], dtype=probs.dtype)
        mean = (probs * channels).sum(1)
        second = (probs * channels**2).sum(1)
        Q = torch.as_tensor(self.Q, dtype=probs.dtype)
        x = torch.cat([mean, torch.ones(1, dtype=probs.dtype)])
        # the diagonal needs E[x_i^2], not E[x_i]^2
        return x @ Q @ x + (torch.diagonal(Q)[: self.space.num_vars] * (second - mean**2)).sum()

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        x = self.space.arch_channels(np.asarray(archs)).astype(np.float64)
        x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        return ((x @ self.Q) * x).sum(axis=1)  # not einsum(optimize=True): its path search costs ~40 us per call


def flops_cost(space: WidthSpace) -> QuadraticCost:
    return QuadraticCost(space, "flops", "MACs", "flops")


def params_cost(space: WidthSpace) -> QuadraticCost:
    return QuadraticCost(space, "params", "params", "params")
