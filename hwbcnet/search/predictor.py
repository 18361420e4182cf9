"""Accuracy predictor that pre-screens evolution children before the expensive fitness scores them (OFA's
accuracy-predictor seam, used as an option).

The default predictor is an additive model: score ~ bias + sum over variables of an effect per (variable, width),
fitted by ridge regression on one-hot widths over every arch scored so far. It has V x (N - m + 1) coefficients,
fits in microseconds, and needs no more data than one generation provides; widths a variable was never scored at
get a zero effect (the ridge penalty), so the screen does not invent preferences it has no evidence for.
Any object with `fit(archs, scores)` and `predict(archs)` can take its place.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hwbcnet.errors import HwbcnetError


class AccuracyPredictor(Protocol):
    def fit(self, archs: np.ndarray, scores: np.ndarray) -> "AccuracyPredictor":
        ...

    def predict(self, archs: np.ndarray) -> np.ndarray:
        ...


class AdditiveRidgePredictor:
    """Ridge regression on one-hot widths (one block of N - m + 1 columns per variable)."""

    def __init__(self, space, alpha: float = 1.0):
        if alpha <= 0:
            raise HwbcnetError(f"predictor alpha {alpha}: must be positive")
        self.space, self.alpha = space, alpha
        self.coef: np.ndarray | None = None
        self.bias = 0.0

    def features(self, archs: np.ndarray) -> np.ndarray:
        archs = np.atleast_2d(np.asarray(archs, dtype=np.int64))
        width_choices = self.space.bins - self.space.min_bins + 1
        columns = np.arange(archs.shape[1]) * width_choices + (archs - self.space.min_bins)
        features = np.zeros((archs.shape[0], archs.shape[1] * width_choices))
        np.put_along_axis(features, columns, 1.0, axis=1)
        return features

    def fit(self, archs: np.ndarray, scores: np.ndarray) -> "AdditiveRidgePredictor":
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) == 0:
            raise HwbcnetError("the accuracy predictor needs at least one scored arch")
        X = self.features(archs)
        self.bias = float(scores.mean())
        gram = X.T @ X + self.alpha * np.eye(X.shape[1])
        self.coef = np.linalg.solve(gram, X.T @ (scores - self.bias))
        return self

    def predict(self, archs: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise HwbcnetError("fit the accuracy predictor before predicting")
        return self.bias + self.features(archs) @ self.coef
