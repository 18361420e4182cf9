"""A latency prediction corrected by archs measured on the device (the latency loop's second and later rounds).

A LUT's additive prediction errs per arch, and the error is shared by similar archs (the same slow cell shapes, the
same fused-kernel choices), so a global refit of the calibration cannot remove it: after a pick measured 13 % under
its prediction, the next best arch is usually its neighbour and misses the same way. Here each candidate's prediction
is scaled by the measured / predicted ratio of the measured archs nearest to it, by inverse-squared-distance
weighting (Shepard) with a prior weight on ratio 1 at distance V (one bin per width variable on average):

    corrected(a) = base(a) x (1 + sum_i w_i r_i) / (1 + sum_i w_i)
    w_i = (V / d(a, a_i))^2,   r_i = measured_i / base(a_i)

so a measured arch is predicted as measured (d = 0), an arch one bin per variable away gets half its neighbour's
correction, and an arch far from every measurement keeps the LUT's prediction. d is the L1 distance in bins.
"""

from __future__ import annotations

import numpy as np

from hwbcnet.costs.base import Cost


class NeighbourCorrected:
    """`base` (a Cost) scaled by the ratios of measured archs near each candidate; same name and unit."""

    def __init__(self, base: Cost, measured_archs: np.ndarray, measured_ms: np.ndarray):
        self.base, self.name, self.unit = base, base.name, base.unit
        self.archs = np.atleast_2d(np.asarray(measured_archs, dtype=np.int64))
        self.ratios = np.asarray(measured_ms, dtype=np.float64) / base(self.archs)
        self.scale = float(self.archs.shape[1])  # V: the distance at which a measurement weighs as much as the prior
        if hasattr(base, "expectation"):  # the search prior aims with the LUT's own expectation
            self.expectation = base.expectation

    def ratio(self, archs: np.ndarray) -> np.ndarray:
        archs = np.atleast_2d(np.asarray(archs, dtype=np.int64))
        distance = np.abs(archs[:, None, :] - self.archs[None, :, :]).sum(-1).astype(np.float64)  # (n, M)
        exact = distance == 0
        weights = (self.scale / np.maximum(distance, 1e-12)) ** 2
        ratio = (1.0 + weights @ self.ratios) / (1.0 + weights.sum(1))
        hit = exact.any(1)
        ratio[hit] = self.ratios[exact[hit].argmax(1)]
        return ratio

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        return self.base(archs) * self.ratio(archs)
