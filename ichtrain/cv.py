"""``ichtrain cv``: patient-grouped K-fold cross-validation of one fit configuration.

Small cohorts (tens to hundreds of patients) make one 10% test split noise. Fold k's test split is fold
k, its val split (calibration) fold k + 1, the rest train (:func:`ichtrain.data.fold_rows`); every
labelled slice is out-of-fold exactly once, so the pooled out-of-fold predictions are scored as one set.

A fold's own calibration sees a fifth of the patients. The pooled figures are therefore calibrated on the
pooled out-of-fold predictions of the *other* folds (every patient once, none of the scored ones), and the
folder's ensemble (``ensemble.json``: the fold models' mean prior-shifted logit, then one Platt map per label
fitted on all out-of-fold predictions) is what ``evaluate`` and ``predict`` use on a cv folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
from dataclasses import dataclass

import numpy as np

from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES
from ichtrain.calibration import PLATT_RIDGE, Calibration, constant_prior, fit_platt, group_weights
from ichtrain.logits import logit, sigmoid
from ichtrain.metrics import scores, weighted_log_loss
from ichtrain.run import RunDir, read_record

__all__ = ["cross_validate", "pooled_out_of_fold", "evaluate_cv", "FoldEnsemble", "is_cv_folder", "fold_dirs",
           "platt_per_label", "out_of_fold_report"]

ENSEMBLE_FILE = "ensemble.json"


def cross_validate(base, folds: int = 5, verbose: int = 0) -> dict:
    """Fit ``base`` (a FitConfig; its ``out`` is the cv folder) once per fold into OUT/fold-K, evaluate
    each on its test fold, and write OUT/cv.json and OUT/cv.html: per metric mean and sd over folds, and
    the pooled out-of-fold metrics. Rerunning resumes (each fold's fit resumes)."""
    from ichtrain.data import StoreStream
    from ichtrain.evaluate import evaluate
    from ichtrain.fit import fit

    if not isinstance(folds, int) or folds < 3:
        raise UsageError(f"Expected --folds an integer >= 3. Received: folds={folds!r}")
    StoreStream(base.store, by=base.split_by, seed=base.seed, fold=(0, folds))  # too few patients: refused now
    per_fold, ys, ps = [], [], []
    for k in range(folds):
        cfg = dataclasses.replace(base, out=os.path.join(base.out, f"fold-{k}"), fold=(k, folds))
        fit(cfg, verbose=verbose)
        res = evaluate(cfg.out, "test")
        with np.load(RunDir(cfg.out).predictions("test")) as d:
            ys.append(d["y_true"])
            ps.append(d["y_prob"])
        per_fold.append(dict(fold=k, slices=res["slices"], **scores(ys[-1], ps[-1]),
                             constant_prior=res["calibration"]["constant_prior_weighted_log_loss"]))
    keys = [k for k in per_fold[0] if k not in ("fold", "slices")]
    summary = {}
    for key in keys:
        v = np.array([f[key] for f in per_fold if f[key] is not None], np.float64)
        summary[key] = dict(mean=float(v.mean()) if v.size else None, sd=float(v.std(ddof=1)) if v.size > 1 else None)
    y, p = np.concatenate(ys), np.concatenate(ps)
    pooled = pooled_out_of_fold(base.out, folds)
    pooled["ensemble"].save(base.out)
    result = dict(folds=folds, model=base.model, slices=int(len(y)), per_fold=per_fold, summary=summary,
                  pooled=dict(scores(pooled["y"], pooled["p"]), constant_prior=pooled["constant_prior"]),
                  pooled_fold_calibrated=scores(y, p))
    result["json"] = os.path.join(base.out, "cv.json")
    with open(result["json"], "w") as fh:
        json.dump(result, fh, indent=2)
    result["html"] = _write_html(result, os.path.join(base.out, "cv.html"))
    return result


def fold_dirs(cv_dir: str, folds: int | None = None) -> list[str]:
    """The fold runs of a cv folder, in order; a missing one is a UsageError naming it."""
    if folds is None:
        folds = 0
        while os.path.isdir(os.path.join(cv_dir, f"fold-{folds}")):
            folds += 1
        with contextlib.suppress(OSError, ValueError, KeyError):
            with open(os.path.join(cv_dir, "cv.json")) as fh:
                folds = max(folds, int(json.load(fh)["folds"]))
    out = []
    for k in range(folds):
        d = os.path.join(cv_dir, f"fold-{k}")
        if not RunDir(d).has_record():
            raise UsageError(f"{cv_dir!r} misses fold {k} ({d} holds no run): rerun 'ichtrain cv' with the same "
                             "arguments to finish it")
        out.append(d)
    if len(out) < 2:
        raise UsageError(f"{cv_dir!r} holds {len(out)} fold run(s): not a cv folder ('ichtrain cv' makes one)")
    return out


def is_cv_folder(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "fold-0")) and not RunDir(path).has_record()


@dataclass(frozen=True)
class FoldEnsemble:
    """A cv folder's fold models as one predictor: each fold's raw logits plus its prior-shift offset, averaged
    over folds, then one Platt map per label fitted on the pooled out-of-fold predictions (every patient once)."""

    folds: tuple[str, ...]  # the fold runs, relative to the cv folder
    scale: tuple[float, ...]
    shift: tuple[float, ...]
    natural_prior: tuple[float, ...]
    method: str = "fold-mean-logit+pooled-platt"

    def save(self, cv_dir: str) -> str:
        path = os.path.join(cv_dir, ENSEMBLE_FILE)
        with open(path + ".tmp", "w") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2)
        os.replace(path + ".tmp", path)
        return path

    @classmethod
    def load(cls, cv_dir: str) -> "FoldEnsemble":
        path = os.path.join(cv_dir, ENSEMBLE_FILE)
        if not os.path.isfile(path):
            raise UsageError(f"{cv_dir!r} has no {ENSEMBLE_FILE}: rerun 'ichtrain cv' with the same arguments")
        try:
            with open(path) as fh:
                d = json.load(fh)
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path} is damaged ({exc}); rerun 'ichtrain cv' with the same arguments") from None

    def apply(self, fold_logits: list[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities from each fold's prior-shifted logits (n, 6)."""
        z = np.mean(np.stack(fold_logits), axis=0)
        return sigmoid(np.asarray(self.scale) * z + np.asarray(self.shift)).astype(np.float32)


def platt_per_label(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.ones(6), np.zeros(6)
    for j in range(6):
        a[j], b[j] = fit_platt(z[:, j], y[:, j], ridge=PLATT_RIDGE, weights=w)
    return a, b


def pooled_out_of_fold(cv_dir: str, folds: int | None = None, tta: str | None = None) -> dict:
    """Every labelled slice's out-of-fold prediction, calibrated on the *other* folds' out-of-fold predictions
    (cross-fitted, so no slice's calibration saw it), with the ensemble's map fitted on all of them; and the
    constant-prior predictor of each fold's train split. Keys: y, p, z (the prior-shifted raw logits, before
    the Platt maps), fold (each slice's), groups, rows (the store's), constant_prior, ensemble, and stream (the
    folds' store, opened once: every fold of a cv folder reads the same store and groups), tta (the views) and
    label (``oof``, or ``oof-tta-MODE`` for views other than the folds' own: each fold's test patients are then
    predicted anew with them)."""
    from ichtrain.data import run_stream

    from ichtrain.evaluate import tta_label

    dirs = fold_dirs(cv_dir, folds)
    stream = run_stream(read_record(dirs[0]))
    mode, label = tta_label(read_record(dirs[0]), "oof", tta, dirs[0])
    zs, ys, gs, rows, priors = [], [], [], [], []
    for d in dirs:
        path = _fold_predictions(d, tta)
        if not os.path.isfile(path):
            raise UsageError(f"fold {d!r} has no out-of-fold predictions: rerun 'ichtrain cv' with the same arguments")
        cal = Calibration.load(d)
        with np.load(path) as f:
            # in row order: the calibration fits then see the same arrays however a file stored them (a copy
            # with its rows shuffled fitted Platt maps 1e-9 apart)
            order = np.argsort(np.asarray(f["rows"], np.int64), kind="stable")
            z = logit(f["y_prob_raw"][order]) + (np.asarray(cal.offset) if cal is not None else 0.0)
            zs.append(z)
            ys.append(f["y_true"][order].astype(np.float64))
            gs.append(stream.groups[f["rows"][order]].astype(str))
            rows.append(np.asarray(f["rows"], np.int64)[order])
        prior = cal.natural_prior if cal is not None else ys[-1].mean(0)
        priors.append(constant_prior(prior, len(ys[-1])))
    w_all = group_weights(np.concatenate(gs))
    cuts = np.cumsum([0] + [len(y) for y in ys])
    p = []
    for k in range(len(dirs)):
        others = np.ones(cuts[-1], bool)
        others[cuts[k]:cuts[k + 1]] = False
        a, b = platt_per_label(np.concatenate(zs)[others], np.concatenate(ys)[others], w_all[others])
        p.append(sigmoid(a * zs[k] + b))
    a, b = platt_per_label(np.concatenate(zs), np.concatenate(ys), w_all)
    y = np.concatenate(ys)
    ensemble = FoldEnsemble(tuple(os.path.relpath(d, cv_dir) for d in dirs), tuple(a.tolist()), tuple(b.tolist()),
                            tuple(np.concatenate(ys).mean(0).tolist()))
    return dict(y=y, p=np.concatenate(p).astype(np.float32), z=np.concatenate(zs),
                fold=np.repeat(np.arange(len(dirs)), np.diff(cuts)), groups=np.concatenate(gs),
                rows=np.concatenate(rows), ensemble=ensemble, stream=stream, tta=mode, label=label,
                constant_prior=weighted_log_loss(y, np.concatenate(priors)))


def _fold_predictions(fold_dir: str, tta: str | None) -> str:
    """The file of a fold's test predictions with the views ``tta`` (None: the fold's own, written by cv); other
    views are predicted now (the fold's model on its test patients: only the raw outputs are pooled)."""
    from ichtrain.evaluate import tta_label

    cfg = read_record(fold_dir)
    mode, label = tta_label(cfg, "test", tta, fold_dir)
    path = RunDir(fold_dir).predictions(label)
    if label != "test" and os.path.isfile(RunDir(fold_dir).predictions("test")):
        from ichtrain.data import run_stream
        from ichtrain.infer import predict_rows
        from ichtrain.run import input_options, load_keras, load_run

        stream = run_stream(cfg)
        rows = stream.splits["test"]
        y, p_raw = predict_rows(load_keras(load_run(fold_dir)[1]), stream, rows=rows, tta=mode, **input_options(cfg))
        np.savez_compressed(path, y_true=y, y_prob_raw=p_raw, rows=rows)
    return path


def evaluate_cv(cv_dir: str, tta: str | None = None) -> dict:
    """The pooled out-of-fold evaluation of a cv folder (as ``evaluate`` reports a run's split), written to
    CV_DIR/eval-oof.json (eval-oof-tta-MODE.json with test-time views other than the folds' own)."""
    pooled = pooled_out_of_fold(cv_dir, tta=tta)
    label = pooled["label"]
    result = out_of_fold_report(pooled["y"], pooled["p"], pooled["groups"], len(pooled["ensemble"].folds),
                                pooled["constant_prior"], "pooled out-of-fold Platt, cross-fitted over folds",
                                os.path.join(cv_dir, f"eval-{label}.json"), tta=pooled["tta"])
    return result


def out_of_fold_report(y: np.ndarray, p: np.ndarray, groups: np.ndarray, folds: int, constant_prior: float,
                       method: str, path: str, tta: str | None = None) -> dict:
    """``evaluate``'s figures for pooled out-of-fold predictions ``p`` (calibrated by ``method``), written to
    ``path``."""
    from ichtrain.calibration import expected_calibration_error
    from ichtrain.evaluate import THRESHOLDS
    from ichtrain.metrics import summarise

    result = summarise(y, p, THRESHOLDS)
    labels = {name: dict(ece=expected_calibration_error(y[:, j], p[:, j]), mean_prob=float(p[:, j].mean()),
                         rate=float(y[:, j].mean())) for j, name in enumerate(SUBTYPES)}
    result.update(split="out-of-fold", folds=folds, calibrated=True, patients=int(np.unique(groups).size), tta=tta,
                  calibration=dict(weighted_log_loss=result["weighted_log_loss"], labels=labels,
                                   constant_prior_weighted_log_loss=constant_prior, method=method))
    result["json"] = path
    with open(result["json"], "w") as fh:
        json.dump(result, fh, indent=2)
    return result


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _write_html(result: dict, path: str) -> str:
    keys = list(result["summary"])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = "".join(f"<tr><th>fold {f['fold']} ({f['slices']} slices)</th>" + "".join(f"<td>{_fmt(f[k])}</td>" for k in keys)
                   + "</tr>" for f in result["per_fold"])
    mean = "".join(f"<td>{_fmt(result['summary'][k]['mean'])} ± {_fmt(result['summary'][k]['sd'])}</td>" for k in keys)
    pooled = "".join(f"<td>{_fmt(result['pooled'].get(k))}</td>" for k in keys)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>ichtrain cv</title><style>body{font-family:"
            "sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
            f"text-align:right}}</style></head><body><h1>{result['folds']}-fold cross-validation of "
            f"{html.escape(result['model'])}</h1><p>{result['slices']} out-of-fold slices, grouped by patient.</p>"
            f"<table><tr><th></th>{head}</tr>{rows}<tr><th>mean ± sd</th>{mean}</tr>"
            f"<tr><th>pooled out-of-fold</th>{pooled}</tr></table></body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
