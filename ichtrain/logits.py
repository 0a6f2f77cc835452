"""Probabilities and logits, in float64: one clip, one logit, one sigmoid for TTA, calibration and ensembles."""

from __future__ import annotations

import numpy as np

__all__ = ["EPS", "logit", "sigmoid", "mean_in_logits"]

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before a logit: float32 sigmoids reach 0 and 1


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def mean_in_logits(*probs: np.ndarray) -> np.ndarray:
    """The mean of probability arrays of one shape taken in logit space (how TTA views are averaged), float32."""
    return sigmoid(np.mean([logit(p) for p in probs], axis=0)).astype(np.float32)
