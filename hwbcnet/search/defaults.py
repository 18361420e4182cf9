"""Defaults of `hwbcnet search` that decide how long it takes (measured in docs/benchmarks.md, "Search speed").

Kept apart from the runner so that the command line can show them without importing torch."""

DEFAULT_GENERATIONS = 8
DEFAULT_SCREEN = 4  # children drawn per scored child: the accuracy-predictor screen
DEFAULT_BN_BATCHES = 2  # BN recalibration batches (of 128 training images) per candidate while searching
FINAL_BN_BATCHES = 20  # for re-scoring the final candidates: every training image of the bundled digits (1,258)
# Candidates re-scored at that fidelity: the best by search score. At 2 BN batches the search's scores tie and
# reorder the top archs (one validation image is 0.19 pt), so the top-10 alone can miss the best arch it has seen.
FINAL_RESCORE = 30
