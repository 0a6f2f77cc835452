"""``ichtrain stack``: a series model over a cv folder's out-of-fold predictions (the 1st place's stacking).

The slice models of a cv folder see one slice (or a few neighbours) at a time. Their out-of-fold logits, read
along each series in z order, still tell what a radiologist reads from neighbouring slices: a bleed seen on
the slices above and below, one bright slice among clean ones. The stacker is the series model of
:mod:`ichtrain.series` (Dense, bidirectional GRU, six outputs per slice) on 18 features per slice: the six
prior-shifted out-of-fold logits, and their differences to the previous and the next slice (zero at a
series' ends). Its own-slice head starts as the pooled Platt map of the cv folder and its context term at
zero, so the untrained stacker *is* the calibrated fold ensemble; training adds what the series tells.

It is judged the way the cv folder is, on the same patients: cross-fitted over the cv folder's own folds
(fold k's slices are predicted by a stacker trained on the other folds' out-of-fold predictions, its head
started from a Platt map fitted on those folds), pooled, every patient once, against the cv folder's own
pooled out-of-fold predictions, with a paired bootstrap over patients. (Fold k's slice model never saw fold
k, but the other folds' slice models did, so the stacker's training inputs are not wholly independent of
fold k: the usual, small leak of stacking.) A final stacker trained on all folds' out-of-fold predictions is
saved for ``predict``, which feeds it the fold models' mean logit.

The stack folder (default CV_DIR/stack) holds ``stack.json`` (configuration, figures), ``model.keras`` and
``oof.npz`` (the cross-fitted predictions, which ``evaluate`` and ``compare`` read).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from ichprep.errors import UsageError
from ichprep.outlock import output_lock
from ichtrain.schedule import LR_SCHEDULES, MAX_RATE, learning_rate_at

__all__ = ["StackConfig", "stack", "stack_features", "is_stack_folder", "stacked_out_of_fold", "stack_probabilities",
           "stack_cv_dir", "evaluate_stack", "STACK_FILE"]

STACK_FILE = "stack.json"
OOF_FILE = "oof.npz"
MODEL_FILE = "model.keras"
FEATURES = 18  # six logits, their differences to the previous and to the next slice


@dataclass(frozen=True)
class StackConfig:
    cv_dir: str
    out: str | None = None  # default CV_DIR/stack
    epochs: int = 30
    batch_size: int = 8  # series per step
    units: int = 16
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    seed: int = 0
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "units"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"Expected --{name.replace('_', '-')} an integer >= 1. Received: {name}={v!r}")
        if self.epochs > 10_000:
            raise UsageError(f"Expected --epochs at most 10000 (the stacker converges in tens). Received: {self.epochs}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"Expected --seed an integer >= 0. Received: seed={self.seed!r}")
        if not 0 < self.learning_rate <= MAX_RATE:
            raise UsageError(f"Expected --lr in (0, {MAX_RATE:g}]. Received: lr={self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"Expected --lr-schedule one of {', '.join(LR_SCHEDULES)}. Received: {self.lr_schedule!r}")
        if not 10 <= self.bootstrap <= 100_000:
            raise UsageError(f"Expected --bootstrap in [10, 100000] resamples. Received: {self.bootstrap}")

    @property
    def folder(self) -> str:
        return self.out or os.path.join(self.cv_dir, "stack")


def stack_features(z: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """(n, 18) features of the slices ``groups`` index into ``z`` (n, 6): each slice's logits, then their
    differences to the previous and to the next slice of its series (zero at the ends)."""
    z = np.asarray(z, np.float32)
    out = np.zeros((len(z), FEATURES), np.float32)
    for g in groups:
        zg = z[g]
        prev = np.concatenate([zg[:1], zg[:-1]])
        after = np.concatenate([zg[1:], zg[-1:]])
        out[g] = np.concatenate([zg, zg - prev, zg - after], axis=1)
    return out


def is_stack_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STACK_FILE))


def _series_positions(stream, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` (sorted store rows) cut into series in z order, as positions into ``rows``."""
    from ichtrain.series import series_rows

    return [np.searchsorted(rows, g) for g in series_rows(stream, rows)]


def _head(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The own-slice head that is the Platt map ``a z + b`` on the first six features."""
    kernel = np.zeros((FEATURES, 6), np.float32)
    kernel[np.arange(6), np.arange(6)] = a
    return kernel, np.asarray(b, np.float32)


def _train(cfg: StackConfig, x: np.ndarray, y: np.ndarray, groups: list[np.ndarray], head, seed: int):
    import keras

    from ichtrain.series import build_series_model, challenge_loss, series_batches, train_series_epoch

    keras.utils.set_random_seed(seed)
    model = build_series_model(FEATURES, cfg.units, head)
    # not XLA: compiling the GRU took longer than training it (12 against 15 s for a first stack)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=challenge_loss(), jit_compile=False)
    batches = series_batches(groups, cfg.batch_size)
    for epoch in range(cfg.epochs):
        model.optimizer.learning_rate.assign(learning_rate_at(cfg, epoch))
        train_series_epoch(model, x, y, groups, batches, np.random.default_rng([seed, epoch]))
    return model


def stack(cfg: StackConfig, progress=None) -> dict:
    """Cross-fit the stacker over the cv folder's folds, train the final one on all of them, and write the stack
    folder. Returns stack.json's content. Rerunning replaces the folder's results (a second stack into the
    same folder while one runs is refused)."""
    from ichtrain.cv import fold_dirs, is_cv_folder

    if not is_cv_folder(cfg.cv_dir):
        raise UsageError(f"Expected a cv folder (made by 'ichtrain cv'). Received: {cfg.cv_dir!r}")
    fold_dirs(cfg.cv_dir)  # a missing fold is named before any work
    with output_lock(cfg.folder, "ichtrain stack"):
        return _stack(cfg, progress)


def _stack(cfg: StackConfig, progress) -> dict:
    from ichtrain.calibration import group_weights
    from ichtrain.metrics import paired_bootstrap
    from ichtrain.cv import fold_dirs, platt_per_label, pooled_out_of_fold
    from ichtrain.run import read_record, save_atomic
    from ichtrain.series import predict_series

    pooled = pooled_out_of_fold(cfg.cv_dir)
    order = np.argsort(pooled["rows"], kind="stable")
    rows, y, z = pooled["rows"][order], pooled["y"][order].astype(np.float32), pooled["z"][order]
    fold, patients, base = pooled["fold"][order], pooled["groups"][order], pooled["p"][order]
    first_fold = read_record(fold_dirs(cfg.cv_dir)[0])
    series = _series_positions(pooled["stream"], rows)
    x = stack_features(z, series)
    w = group_weights(patients)
    series_fold = np.array([fold[g[0]] for g in series])
    folds = int(fold.max()) + 1
    stacked = np.zeros_like(base)
    steps = folds + 1
    for k in range(folds):
        if progress is not None:
            progress.update(k, steps)
        train = [g for g, f in zip(series, series_fold) if f != k]
        test = [g for g, f in zip(series, series_fold) if f == k]
        others = fold != k
        head = _head(*platt_per_label(z[others], y[others], w[others]))
        model = _train(cfg, x, y, train, head, seed=cfg.seed * 1009 + k)
        stacked[np.concatenate(test)] = predict_series(model, x, test)
    if progress is not None:
        progress.update(folds, steps)
    ens = pooled["ensemble"]
    final = _train(cfg, x, y, series, _head(np.asarray(ens.scale), np.asarray(ens.shift)), seed=cfg.seed * 1009 + folds)
    os.makedirs(cfg.folder, exist_ok=True)
    save_atomic(final, os.path.join(cfg.folder, MODEL_FILE))
    tmp = os.path.join(cfg.folder, OOF_FILE + ".tmp.npz")
    np.savez(tmp, rows=rows, y_true=y, y_prob=stacked.astype(np.float32), groups=patients.astype(str))
    os.replace(tmp, os.path.join(cfg.folder, OOF_FILE))
    table = paired_bootstrap(y, [base, stacked], patients, cfg.bootstrap, seed=cfg.seed)
    config = asdict(cfg)
    config.update(cv_dir=os.path.abspath(cfg.cv_dir), out=os.path.abspath(cfg.folder))
    result = dict(config=config, folds=folds, slices=int(len(y)), series=len(series),
                  patients=int(np.unique(patients).size), model=first_fold["model"],
                  constant_prior=pooled["constant_prior"], ensemble=table[0], stacked=table[1])
    path = os.path.join(cfg.folder, STACK_FILE)
    with open(path + ".tmp", "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(path + ".tmp", path)
    if progress is not None:
        progress.update(steps, steps)
    return dict(result, json=path)


def _read(stack_dir: str) -> dict:
    try:
        with open(os.path.join(stack_dir, STACK_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{stack_dir!r} holds no readable {STACK_FILE} ({exc}); rerun 'ichtrain stack'") from None


def stacked_out_of_fold(stack_dir: str) -> dict:
    """The stack folder's cross-fitted out-of-fold predictions: y, p, groups, rows (store rows, sorted)."""
    _read(stack_dir)
    try:
        with np.load(os.path.join(stack_dir, OOF_FILE)) as f:
            return dict(y=f["y_true"], p=f["y_prob"], groups=f["groups"], rows=np.asarray(f["rows"], np.int64))
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{stack_dir!r} has no readable {OOF_FILE} ({exc}); rerun 'ichtrain stack'") from None


def evaluate_stack(stack_dir: str) -> dict:
    """The stack folder's cross-fitted out-of-fold figures (as ``evaluate`` reports a cv folder), written to
    STACK_DIR/eval-oof.json."""
    from ichtrain.cv import out_of_fold_report

    meta = _read(stack_dir)
    oof = stacked_out_of_fold(stack_dir)
    return out_of_fold_report(oof["y"], oof["p"], oof["groups"], meta["folds"], meta["constant_prior"],
                              "stacked over series, cross-fitted over the cv folder's folds",
                              os.path.join(stack_dir, "eval-oof.json"))


def stack_cv_dir(stack_dir: str) -> str:
    """The cv folder a stack folder was trained on."""
    cv_dir = _read(stack_dir)["config"]["cv_dir"]
    if not os.path.isdir(cv_dir):
        raise UsageError(f"The cv folder of {stack_dir!r}, {cv_dir!r}, is gone: the stack needs its fold models.")
    return cv_dir


def stack_probabilities(stack_dir: str, z: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """The final stacker's probabilities for slices with fold-mean prior-shifted logits ``z`` (n, 6), cut into
    series by ``groups`` (positions, z order)."""
    from ichtrain.run import load_keras
    from ichtrain.series import predict_series

    model = load_keras(os.path.join(stack_dir, MODEL_FILE))
    x = stack_features(z, groups)
    out = np.zeros((len(z), 6), np.float32)
    if groups:
        out[np.concatenate(groups)] = predict_series(model, x, groups)
    return out
