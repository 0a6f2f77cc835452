"""Evaluation metrics in plain numpy (no TensorFlow): threshold sweeps, ROC-AUC, the challenge metric."""

from __future__ import annotations

import numpy as np

from ichprep.labels import SUBTYPES

__all__ = ["confusion_rates", "roc_auc", "weighted_log_loss", "CHALLENGE_WEIGHTS", "paired_bootstrap", "scores"]

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


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    """The weighted log loss and each label's ROC-AUC (``auc_<label>``)."""
    out = {"weighted_log_loss": weighted_log_loss(y, p)}
    for j, name in enumerate(SUBTYPES):
        out[f"auc_{name}"] = roc_auc(y[:, j], p[:, j])
    return out


def _headline(y: np.ndarray, p: np.ndarray) -> dict:
    """:func:`scores` and the sensitivity and specificity of ``any`` at 0.5 (what compare tabulates)."""
    out = scores(y, p)
    r = confusion_rates(y[:, 5], p[:, 5], np.array([0.5]))
    out["sensitivity_any"] = float(r["sensitivity"][0])
    out["specificity_any"] = float(r["specificity"][0])
    return out


def _interval(values) -> list | None:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else None


def paired_bootstrap(y: np.ndarray, preds: list[np.ndarray], groups: np.ndarray, bootstrap: int = 1000,
                     seed: int = 0) -> list[dict]:
    """Per prediction array, each metric's value and 95% percentile interval over ``bootstrap`` resamples of
    the patients ``groups`` (the same resamples for every array), and the weighted log loss minus the first
    array's with the interval of that paired difference."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(uniq.size)]
    rng = np.random.default_rng(seed)
    samples = [np.concatenate([members[k] for k in rng.integers(0, uniq.size, uniq.size)]) for _ in range(bootstrap)]
    table, boot_wll = [], []
    for p in preds:
        point = _headline(y, p)
        boots = [_headline(y[idx], p[idx]) for idx in samples]
        boot_wll.append(np.array([b["weighted_log_loss"] for b in boots]))
        table.append({k: dict(value=v, ci=_interval([b[k] for b in boots])) for k, v in point.items()})
    for row, wll in zip(table, boot_wll):
        row["weighted_log_loss_minus_first"] = dict(value=row["weighted_log_loss"]["value"]
                                                    - table[0]["weighted_log_loss"]["value"],
                                                    ci=_interval(wll - boot_wll[0]))
    return table
