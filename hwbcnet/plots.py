"""PNG plots a user can open (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def pareto_png(path: str | Path, scores: np.ndarray, costs: dict[str, np.ndarray], chosen: int,
               windows: dict[str, tuple[float, float]], title: str) -> Path:
    """Score against each cost for every evaluated arch; the chosen arch is marked and budget windows shaded."""
    names = list(costs)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = costs[name]
        ax.scatter(values, scores, s=10, alpha=0.5, label="evaluated")
        order = np.argsort(values)
        front, best = [], -np.inf
        for i in order:  # upper-left Pareto front: best score at or below each cost
            if scores[i] > best:
                best = scores[i]
                front.append(i)
        ax.plot(values[front], scores[front], "g-", lw=1, label="Pareto front")
        ax.scatter([values[chosen]], [scores[chosen]], s=120, marker="*", c="red", label="chosen", zorder=3)
        if name in windows:
            ax.axvspan(*windows[name], color="orange", alpha=0.15, label="budget window")
        ax.set_xlabel(name)
        ax.set_ylabel("score (val. accuracy %)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_png(fig, path)
