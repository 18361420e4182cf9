"""The one seam between the search and what an architecture costs (OFA's efficiency-predictor idea).

A cost is a callable over a batch of architectures (an int array of shape (n, V): bins per width variable) that
returns one float per architecture. The search sees only this interface, so FLOPs, params and the latency LUT are
interchangeable and a user can plug in their own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Cost(Protocol):
    name: str  # "flops", "params", "latency", ...
    unit: str  # "MACs", "params", "ms"

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        """archs: int array (n, V) of bins. Returns float64 array (n,)."""
        ...


# Optional: a cost may also define `expectation(probs) -> torch scalar`, its exact expected value when each variable's
# width is drawn independently from probs (a (V, N-m+1) torch tensor over widths m..N). The search prior then aims
# that cost at its budget; costs without it are enforced by the legality window alone.
