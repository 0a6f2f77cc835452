"""Calibrated probabilities, in plain numpy: a run's outputs should estimate natural frequencies.

Two steps per label, both on logits ``z = logit(p)``:

1. **Prior shift.** Weighted sampling trains on a label prior ``q`` (the label's share under the type
   weights) instead of the natural prior ``pi`` of the train split. If sampling changes only the mix of
   labels (``p(x | y)`` unchanged), Bayes' rule gives the natural-prior logit ``z + logit(pi) - logit(q)``
   (Saerens et al., 2002). The offset is computed from the weights alone, so it applies even without a
   validation split.
2. **Platt scaling** on the val split: ``a * z_shifted + b`` with ``(a, b)`` minimising the log loss
   against Platt's smoothed targets (``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``), each val patient
   weighing one in total, plus a ridge ``ridge * ((a - 1)^2 + b^2)`` toward the identity (worth one
   patient), so that a val split of a few patients (or one without positives) cannot learn its own
   prevalence instead of the population's.

Also here: the expected calibration error and the reliability curve, and the constant-prior predictor
every calibrated model must beat.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import sys

import numpy as np

from ichprep.errors import StoreError
from ichtrain.infer import predict_rows
from ichtrain.logits import logit, sigmoid
from ichtrain.run import RunDir, write_atomic
from ichtrain.sampling import type_weights

__all__ = ["Calibration", "prior_shift_offsets", "fit_platt", "fit_calibration", "group_weights",
           "expected_calibration_error", "reliability", "constant_prior", "logit", "sigmoid", "calibrate_run",
           "fit_run_calibration"]

# The ridge toward the identity map, worth one val patient: the best of 1, 3 and 10 on held-out patients
# (docs/training.md has the runs); weighing slices instead of patients let a few val patients' prevalence win.
PLATT_RIDGE = 1.0
# The smallest Platt slope: a val split whose outputs run against its labels (a few odd patients) makes the
# map nearly constant instead of reversing the ranking the model learned on many more patients.
MIN_SCALE = 0.05


def prior_shift_offsets(labels: np.ndarray, sample_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset, natural prior, sampled prior) per label for train ``labels`` (n, L) drawn with per-slice
    probabilities proportional to ``sample_weights`` (n,). Priors are smoothed by half a count so that a
    label without positives gives a finite offset."""
    y = np.asarray(labels, np.float64)
    w = np.asarray(sample_weights, np.float64)
    n = y.shape[0]
    natural = (y.sum(0) + 0.5) / (n + 1.0)
    w = w / w.sum() * n  # the same total count as the split: the smoothing weighs the same in both
    sampled = ((w[:, None] * y).sum(0) + 0.5) / (n + 1.0)
    return logit(natural) - logit(sampled), natural, sampled


def fit_platt(z: np.ndarray, y: np.ndarray, ridge: float = 1.0, weights: np.ndarray | None = None,
              iterations: int = 50) -> tuple[float, float]:
    """(a, b) minimising sum w BCE(sigmoid(a z + b), t) + ridge ((a - 1)^2 + b^2), t Platt's smoothed
    targets, w per-slice weights (default 1); Newton's method with backtracking (the objective is convex)."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y, np.float64) > 0.5
    if z.size == 0:
        return 1.0, 0.0
    w = np.ones(z.size) if weights is None else np.asarray(weights, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def objective(a, b):
        u = a * z + b  # BCE with logits: log(1 + e^u) - t u
        return float((w * (np.logaddexp(0.0, u) - t * u)).sum() + ridge * ((a - 1) ** 2 + b ** 2))

    a, b = 1.0, 0.0
    current = objective(a, b)
    for _ in range(iterations):
        p = sigmoid(a * z + b)
        r = w * (p - t)
        grad = np.array([(r * z).sum() + 2 * ridge * (a - 1), r.sum() + 2 * ridge * b])
        s = w * p * (1 - p)
        hess = np.array([[(s * z * z).sum() + 2 * ridge, (s * z).sum()],
                         [(s * z).sum(), s.sum() + 2 * ridge]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:  # backtracking: a full Newton step can overshoot far from the optimum
            trial = objective(a - scale * step[0], b - scale * step[1])
            if trial <= current:
                break
            scale /= 2
        else:
            break
        a, b, current = a - scale * step[0], b - scale * step[1], trial
        if np.abs(scale * step).max() < 1e-10:
            break
    if a < MIN_SCALE:  # a calibration map never reverses the model's ranking: fix a, refit b alone
        a = MIN_SCALE
        for _ in range(iterations):
            p = sigmoid(a * z + b)
            step = ((w * (p - t)).sum() + 2 * ridge * b) / ((w * p * (1 - p)).sum() + 2 * ridge)
            b -= step
            if abs(step) < 1e-10:
                break
    return float(a), float(b)


@dataclass(frozen=True)
class Calibration:
    """A run's map from raw model probabilities to calibrated ones (stored as RUN/calibration.json)."""

    offset: tuple[float, ...]  # prior-shift logit offset per label
    scale: tuple[float, ...]  # Platt a per label (1 without a val split)
    shift: tuple[float, ...]  # Platt b per label (0 without a val split)
    natural_prior: tuple[float, ...]  # the train split's label rates: the constant-prior predictor
    sampled_prior: tuple[float, ...]
    val_slices: int = 0
    method: str = "prior-shift+platt"

    def __post_init__(self) -> None:
        for name in ("offset", "scale", "shift", "natural_prior", "sampled_prior"):
            v = np.asarray(getattr(self, name), np.float64)
            if v.shape != (6,) or not np.isfinite(v).all():
                raise ValueError(f"Expected {name} six finite numbers. Received: {getattr(self, name)!r}")

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, 6) float32 from raw model outputs (n, 6)."""
        z = logit(p) + np.asarray(self.offset)
        return sigmoid(np.asarray(self.scale) * z + np.asarray(self.shift)).astype(np.float32)

    def save(self, run_dir: str) -> str:
        path = RunDir(run_dir).calibration
        write_atomic(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, run_dir: str) -> "Calibration | None":
        path = RunDir(run_dir).calibration
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as fh:
                d = json.load(fh)
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path} is damaged ({exc}); delete it and rerun 'ichtrain fit' with the same "
                             "arguments to recompute it") from None


def group_weights(groups) -> np.ndarray:
    """1 / (slices of the slice's patient): every patient weighs one in total. A patient's slices are far
    from independent, so a val split's evidence grows with its patients, not its slices."""
    _, inverse, counts = np.unique(np.asarray(groups).astype(str), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def fit_calibration(train_labels: np.ndarray, sample_weights: np.ndarray, val_labels: np.ndarray | None,
                    val_prob: np.ndarray | None, val_groups=None, ridge: float = PLATT_RIDGE) -> Calibration:
    """The prior shift from the train split and its sampling weights, then Platt per label on val, each
    val patient weighing one (``val_groups``; None: each slice weighs one)."""
    offset, natural, sampled = prior_shift_offsets(train_labels, sample_weights)
    scale, shift = np.ones(6), np.zeros(6)
    n_val = 0 if val_labels is None else int(len(val_labels))
    if n_val:
        z = logit(val_prob) + offset
        w = None if val_groups is None else group_weights(val_groups)
        for j in range(6):
            scale[j], shift[j] = fit_platt(z[:, j], val_labels[:, j], ridge=ridge, weights=w)
    return Calibration(tuple(offset.tolist()), tuple(scale.tolist()), tuple(shift.tolist()),
                       tuple(natural.tolist()), tuple(sampled.tolist()), val_slices=n_val)


def constant_prior(prior, n: int) -> np.ndarray:
    """The constant predictor: every slice gets the train split's label rates."""
    return np.broadcast_to(np.asarray(prior, np.float32), (n, len(prior))).copy()


def reliability(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> dict:
    """Per equal-width probability bin: slice count, mean prediction, observed rate (None where empty)."""
    y = np.asarray(y_true, np.float64)
    p = np.asarray(y_prob, np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / count
        rate = np.bincount(idx, weights=y, minlength=bins) / count
    return dict(count=count.tolist(), mean_prob=[None if c == 0 else float(v) for c, v in zip(count, mean_p)],
                rate=[None if c == 0 else float(v) for c, v in zip(count, rate)])


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> float:
    """sum over bins of (bin share) * |observed rate - mean prediction|, equal-width bins."""
    r = reliability(y_true, y_prob, bins)
    n = max(1, sum(r["count"]))
    return float(sum(c / n * abs(rt - mp) for c, mp, rt in zip(r["count"], r["mean_prob"], r["rate"]) if c))


def calibrate_run(run_dir: str, stream, model, inputs: dict, alpha: float, batch_size: int = 64,
                  tta: str = "none") -> Calibration:
    """Fit and save the run's calibration (:func:`fit_run_calibration`)."""
    cal = fit_run_calibration(stream, model, inputs, alpha, batch_size, tta)
    cal.save(run_dir)
    return cal


def fit_run_calibration(stream, model, inputs: dict, alpha: float, batch_size: int = 64,
                        tta: str = "none") -> Calibration:
    """A run's calibration (:mod:`ichtrain.calibration`): the prior shift of the train split's sampling weights,
    then Platt scaling per label on the model's val predictions with the views of ``tta``."""
    train = stream.splits["train"]
    weight = type_weights(stream.types[train], alpha)
    sample_weights = np.array([weight[int(t)] for t in stream.types[train]])
    val_y = val_p = None
    if stream.splits["val"].size:
        val_y, val_p = predict_rows(model, stream, batch_size, split="val", tta=tta, **inputs)
    else:
        print("ichtrain: warning: the val split is empty, so probabilities are corrected for the sampling "
              "weights only (no Platt scaling)", file=sys.stderr)
    return fit_calibration(stream.labels[train], sample_weights, val_y, val_p,
                           val_groups=stream.groups[stream.splits["val"]])
