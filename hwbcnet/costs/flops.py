"""Exact FLOPs (multiply-accumulates of conv and linear layers, as Channel-Bench-Macro and torch's flop counter
count them) and parameter counts (every parameter of the model), vectorised over many archs.

Both come from the traced model: every conv/linear contributes coef x size(a) x size(b) MACs and every parameter
the product of its dims, where a size is a linear function of the variables' channel counts (a concatenation sums
its segments, a flattened map repeats them). So a cost is the quadratic form x^T Q x over
x = [channels of each variable..., 1]. Q is built once; evaluating n archs is one (n, V+1) gather and a matrix
product.
"""

from __future__ import annotations

import numpy as np

from hwbcnet.errors import HwbcnetError
from hwbcnet.space.layers import Layout
from hwbcnet.space.space import WidthSpace


def _linear_form(size: Layout | None, V: int) -> np.ndarray:
    """size as a vector over x = [channels..., 1] (None: the constant 1)."""
    form = np.zeros(V + 1)
    if size is None:
        form[V] = 1.0
        return form
    coef, constant = size.coefficients()
    for var, value in coef.items():
        form[var] += value
    form[V] += constant
    return form


def _product_matrix(factors, coef: float, V: int) -> np.ndarray:
    """coef x the product of `factors` (Layouts or ints, at most two of them channel-dependent) as a
    (V+1, V+1) matrix."""
    forms = []
    for factor in factors:
        if isinstance(factor, Layout) and not factor.is_fixed:
            forms.append(_linear_form(factor, V))
        else:
            coef *= factor.size if isinstance(factor, Layout) else int(factor)
    if len(forms) > 2:
        raise HwbcnetError(f"a tensor with {len(forms)} channel-dependent dims is not supported by the cost model")
    forms += [_linear_form(None, V)] * (2 - len(forms))
    return coef * np.outer(forms[0], forms[1])


class QuadraticCost:
    """A cost that is a sum of channel products, e.g. FLOPs or params. Implements hwbcnet.costs.base.Cost."""

    def __init__(self, space: WidthSpace, name: str, unit: str, counting: str):
        self.space, self.name, self.unit = space, name, unit
        V = space.num_vars
        Q = np.zeros((V + 1, V + 1))
        traced = space.traced
        if counting == "flops":
            for term in traced.macs:
                Q += _product_matrix([term.a] + ([term.b] if term.b is not None else []), term.coef, V)
        else:
            for tensor_name, tensor in traced.graph_module.named_parameters():
                spec = traced.params.get(tensor_name)
                Q += _product_matrix(spec.dims if spec is not None else tuple(tensor.shape), 1.0, V)
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
