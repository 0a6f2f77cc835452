"""``ichtrain cv``: patient-grouped K-fold cross-validation of one fit configuration.

Small cohorts (tens to hundreds of patients) make one 10% test split noise. Fold k's test split is fold
k, its val split (calibration) fold k + 1, the rest train (:func:`ichtrain.data.fold_rows`); every
labelled slice is out-of-fold exactly once, so the pooled out-of-fold predictions are scored as one set.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os

import numpy as np

from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES
from ichtrain.metrics import roc_auc, weighted_log_loss

__all__ = ["cross_validate"]


def _scores(y: np.ndarray, p: np.ndarray) -> dict:
    out = {"weighted_log_loss": weighted_log_loss(y, p)}
    for j, name in enumerate(SUBTYPES):
        out[f"auc_{name}"] = roc_auc(y[:, j], p[:, j])
    return out


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
        with np.load(os.path.join(cfg.out, "predictions-test.npz")) as d:
            ys.append(d["y_true"])
            ps.append(d["y_prob"])
        per_fold.append(dict(fold=k, slices=res["slices"], **_scores(ys[-1], ps[-1]),
                             constant_prior=res["calibration"]["constant_prior_weighted_log_loss"]))
    keys = [k for k in per_fold[0] if k not in ("fold", "slices")]
    summary = {}
    for key in keys:
        v = np.array([f[key] for f in per_fold if f[key] is not None], np.float64)
        summary[key] = dict(mean=float(v.mean()) if v.size else None, sd=float(v.std(ddof=1)) if v.size > 1 else None)
    y, p = np.concatenate(ys), np.concatenate(ps)
    result = dict(folds=folds, model=base.model, slices=int(len(y)), per_fold=per_fold, summary=summary,
                  pooled=_scores(y, p))
    result["json"] = os.path.join(base.out, "cv.json")
    with open(result["json"], "w") as fh:
        json.dump(result, fh, indent=2)
    result["html"] = _write_html(result, os.path.join(base.out, "cv.html"))
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
