"""Defaults of `hwbcnet search` that decide how long it takes (measured in docs/benchmarks.md, "Search speed").

Kept apart from the runner so that the command line can show them without importing torch."""

# Every candidate is scored at full BN fidelity: with 2 BN batches (256 images) the scores ranked 80 archs of a
# resnet20 digits search with Spearman 0.33 against the full scorer (-0.45 among its 40 best, which read 1.0 pt low
# on average), so a search on them climbs to another region. Fewer, better-chosen candidates buy the time back: a
# small population and a strong accuracy-predictor screen (docs/benchmarks.md, "Search speed").
DEFAULT_POPULATION = 20
DEFAULT_GENERATIONS = 8
DEFAULT_SCREEN = 8  # children drawn per scored child: the accuracy-predictor screen
DEFAULT_BN_BATCHES = 20  # BN recalibration batches (of 128 training images) per candidate: all 1,258 of digits
FINAL_BN_BATCHES = 20  # for re-scoring the final candidates when the search itself scores with fewer (--bn-batches)
# Candidates re-scored at that fidelity: the best by search score. Low-fidelity scores tie and reorder the top archs
# (one validation image is 0.19 pt), so the top-10 alone can miss the best arch the search has seen.
FINAL_RESCORE = 30
