"""Per-type weighted sampling of a split (see :mod:`ichtrain.data`): weights ``count_t ** -alpha``.

Per-type weights ``w_t ∝ count_t ** -alpha`` over the split's Table 3.1 types (alpha 0: natural frequencies;
1: every type equally likely; default 0.5, a compromise that still shows the rare types often without
repeating the 12 slices of type 1 thousands of times). An epoch is ``epoch_size`` slices (default: the split's
size) drawn **with replacement** with probability ``w_t / sum`` per slice; evaluation streams
(``weighted=False``) read every slice once, in order.
"""

from __future__ import annotations

import numpy as np

from ichprep.errors import UsageError

__all__ = ["type_weights", "sample_epoch", "ALPHA_MAX"]

ALPHA_MAX = 1.0  # balanced types; beyond it a rarer type would outweigh a commoner one


def type_weights(types: np.ndarray, alpha: float) -> dict[int, float]:
    """Per-type weight ``count_t ** -alpha``, normalised so per-slice probabilities sum to 1."""
    if not 0.0 <= alpha <= ALPHA_MAX:
        raise UsageError(f"Expected alpha in [0, 1] (0 natural frequencies, 1 balanced). Received: alpha={alpha}")
    t, counts = np.unique(types, return_counts=True)
    w = counts.astype(np.float64) ** -alpha
    z = float((w * counts).sum())
    return {int(a): float(b / z) for a, b in zip(t, w)}


def sample_epoch(rows: np.ndarray, types: np.ndarray, alpha: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows drawn with replacement, P(row) ∝ weight of its type."""
    w = type_weights(types, alpha)
    p = np.array([w[int(t)] for t in types], np.float64)
    p /= p.sum()
    return rows[rng.choice(len(rows), size=size, replace=True, p=p)]
