"""Evaluation metrics in plain numpy (no TensorFlow): threshold sweeps, ROC-AUC, the challenge metric."""

from __future__ import annotations

import numpy as np

from ichprep.labels import SUBTYPES

__all__ = ["confusion_rates", "roc_auc", "weighted_log_loss", "CHALLENGE_WEIGHTS"]

# RSNA 2019 challenge: weighted multi-label log loss, 'any' weighted 2, the five subtypes 1.
CHALLENGE_WEIGHTS = np.array([1, 1, 1, 1, 1, 2], np.float64)


def confusion_rates(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, fall-out and miss rate of one label at each threshold (predict 1 when
    prob >= threshold). NaN where a rate's denominator is zero."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, np.float64)
    pred = p[None, :] >= np.asarray(thresholds, np.float64)[:, None]
    tp = (pred & y).sum(1)
    fn = (~pred & y).sum(1)
    tn = (~pred & ~y).sum(1)
    fp = (pred & ~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
    return dict(sensitivity=sens, specificity=spec, fall_out=1 - spec, miss_rate=1 - sens)


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None without both classes."""
    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(np.asarray(y_prob, np.float64), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct value, ties averaged
    ranks = average_rank[inverse.ravel()]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def weighted_log_loss(y_true: np.ndarray, y_prob: np.ndarray, eps: float = 1e-15) -> float:
    """The challenge metric: per slice, sum_l w_l * BCE_l / sum_l w_l; averaged over slices."""
    y = np.asarray(y_true, np.float64)
    p = np.clip(np.asarray(y_prob, np.float64), eps, 1 - eps)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(((bce * CHALLENGE_WEIGHTS).sum(1) / CHALLENGE_WEIGHTS.sum()).mean())


def summarise(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray) -> dict:
    out = {"slices": int(len(y_true)), "weighted_log_loss": weighted_log_loss(y_true, y_prob), "labels": {}}
    at = int(np.argmin(np.abs(thresholds - 0.5)))
    for j, name in enumerate(SUBTYPES):
        r = confusion_rates(y_true[:, j], y_prob[:, j], thresholds)
        out["labels"][name] = dict(
            positives=int(y_true[:, j].sum()),
            roc_auc=roc_auc(y_true[:, j], y_prob[:, j]),
            at_0_5={k: _finite_or_none(v[at]) for k, v in r.items()},
            sweep={k: [_finite_or_none(x) for x in v] for k, v in r.items()},
        )
    out["thresholds"] = [float(t) for t in thresholds]
    return out


def _finite_or_none(x):
    x = float(x)
    return None if np.isnan(x) else x
