"""``ichtrain compare``: runs side by side on the same held-out patients, with bootstrap intervals.

Each run is evaluated on the split (``ichtrain.evaluate``, calibrated outputs); runs whose split holds
other slices are refused. Cross-validation folders (``ichtrain cv``) are compared on their pooled
out-of-fold predictions (every patient once, cross-fitted calibration: ``ichtrain.cv.pooled_out_of_fold``),
the figures to trust on small cohorts; their folds must hold the same slices. Intervals: 95% percentile bootstrap over patients (a patient's slices are
resampled together, since they are not independent), with the same resamples for every run, so the
paired difference to the first run has its own interval.
"""

from __future__ import annotations

import html
import json
import os

import numpy as np

from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES
from ichtrain.metrics import paired_bootstrap
from ichtrain.run import RunDir, read_record
from ichtrain.testtime import tta_tag

__all__ = ["compare"]


def compare(runs: list[str], split: str = "test", bootstrap: int = 1000, out: str | None = None,
            seed: int = 0, tta: str | None = None) -> dict:
    """Evaluate ``runs`` on ``split`` (cv folders: on their pooled out-of-fold predictions) and write
    ``out``/compare-SPLIT.json and .html (default: beside the first run; SPLIT is ``oof`` for cv folders).
    ``tta``: every run judged with these test-time views (None: each with its own), calibrated with them.
    Returns the comparison."""
    from ichtrain.cv import is_cv_folder
    from ichtrain.stack import is_stack_folder

    if len(runs) < 2:
        raise UsageError(f"Expected at least two runs to compare. Received: {len(runs)}")
    if not 10 <= bootstrap <= 100_000:
        raise UsageError(f"Expected --bootstrap in [10, 100000] resamples. Received: {bootstrap}")
    kinds = [is_cv_folder(r) or is_stack_folder(r) for r in runs]
    if any(kinds) and not all(kinds):
        raise UsageError("Compare runs with runs, or cv and stack folders with cv and stack folders: a run's split "
                         "and a cv folder's "
                         f"out-of-fold slices are other patients. Received: {', '.join(runs)}")
    tag = "" if tta is None else f"-tta-{tta_tag(tta)}"  # refuses an unknown mode before any work
    if tta is not None and any(is_stack_folder(r) for r in runs):
        raise UsageError("--tta judges runs and cv folders with other test-time views; a stack folder's stacker "
                         f"learned from its cv folder's own. Received: tta={tta!r} with a stack folder")
    if all(kinds):
        split, (y, preds, groups, models) = "oof", _out_of_fold(runs, tta)
    else:
        y, preds, groups, models = _on_split(runs, split, tta)
    table = [dict(run=run, model=model, **row)
             for run, model, row in zip(runs, models, paired_bootstrap(y, preds, groups, bootstrap, seed))]
    result = dict(split=split, slices=int(len(y)), patients=int(np.unique(groups).size), bootstrap=bootstrap,
                  runs=table, tta=tta)
    folder = out or runs[0]
    os.makedirs(folder, exist_ok=True)
    result["json"] = os.path.join(folder, f"compare-{split}{tag}.json")
    with open(result["json"], "w") as fh:
        json.dump(result, fh, indent=2)
    result["html"] = _write_html(result, os.path.join(folder, f"compare-{split}{tag}.html"))
    return result


def _out_of_fold(cv_dirs: list[str], tta: str | None = None):
    """(labels, calibrated out-of-fold predictions per folder, patient groups, model names), rows aligned."""
    from ichtrain.cv import fold_dirs, pooled_out_of_fold
    from ichtrain.stack import is_stack_folder, stack_cv_dir, stacked_out_of_fold

    pooled = [stacked_out_of_fold(d) if is_stack_folder(d) else pooled_out_of_fold(d, tta=tta) for d in cv_dirs]
    orders = [np.argsort(pl["rows"], kind="stable") for pl in pooled]  # each folder's rows in store order
    first = pooled[0]["rows"][orders[0]]
    for d, pl, order in zip(cv_dirs[1:], pooled[1:], orders[1:]):
        if not np.array_equal(pl["rows"][order], first):
            raise UsageError(f"Folder {d!r} holds other out-of-fold slices than {cv_dirs[0]!r} (another store, "
                             "salt or labels): compare cv folders of one store only.")
    preds = [pl["p"][order] for pl, order in zip(pooled, orders)]
    models = [_model_name(read_record(fold_dirs(stack_cv_dir(d))[0])) + " (cv, stacked)" if is_stack_folder(d)
              else _model_name(read_record(fold_dirs(d)[0])) + " (cv)" for d in cv_dirs]
    return pooled[0]["y"][orders[0]].astype(np.float32), preds, pooled[0]["groups"][orders[0]], models


def _on_split(runs: list[str], split: str, tta: str | None = None):
    """(labels, calibrated predictions per run, patient groups, model names) of ``runs`` on ``split``."""
    from ichtrain.data import run_stream
    from ichtrain.evaluate import evaluate, tta_label

    configs, digests = [], []
    for run in runs:  # refuse before any work
        configs.append(read_record(run))
        digests.append(configs[-1].get("split", {}).get("digest", {}).get(split))
        if digests[-1] != digests[0] or digests[-1] is None:
            raise UsageError(f"Run {run!r} holds other {split} slices than {runs[0]!r} (another store, salt, "
                             "seed or fractions): compare runs of one split only.")
    preds = []
    for run, cfg in zip(runs, configs):
        evaluate(run, split, tta=tta)  # calibrated predictions on the split, saved beside the run
        with np.load(RunDir(run).predictions(tta_label(cfg, split, tta, run)[1])) as d:
            preds.append((d["y_true"], d["y_prob"], d["rows"]))
    y, _, rows = preds[0]
    groups = run_stream(configs[0]).groups[rows].astype(str)
    return y, [p for _, p, _ in preds], groups, [_model_name(c) for c in configs]


def _model_name(c: dict) -> str:
    extra = f" k={c['neighbours']}" if c.get("neighbours") else ""
    return (c.get("backbone") if c["model"] == "backbone" else c["model"]) + extra


COLUMNS = (("weighted_log_loss", "weighted log loss"), ("weighted_log_loss_minus_first", "minus the first run"),
           ("auc_any", "AUC any"), ("sensitivity_any", "sens any @0.5"), ("specificity_any", "spec any @0.5"))


def metric_text(m: dict) -> str:
    """A metric and its interval, as text."""
    if m["value"] is None:
        return "n/a"
    ci = m["ci"]
    return f"{m['value']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _split_title(split: str) -> str:
    return "pooled out-of-fold predictions" if split == "oof" else f"{split} split"


def _write_html(result: dict, path: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(t)}</th>" for _, t in COLUMNS)
    body = "".join(f"<tr><th>{esc(r['run'])} ({esc(r['model'])})</th>" + "".join(f"<td>{esc(metric_text(r[k]))}</td>"
                                                                                  for k, _ in COLUMNS) + "</tr>"
                   for r in result["runs"])
    labels = "".join(f"<tr><th>{esc(r['run'])}</th>" + "".join(f"<td>{esc(metric_text(r['auc_' + n]))}</td>" for n in SUBTYPES)
                     + "</tr>" for r in result["runs"])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>ichtrain compare</title><style>"
            "body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Runs on the {esc(_split_title(result['split']))}</h1><p>{result['slices']} slices of {result['patients']} "
            f"patients; 95% intervals from {result['bootstrap']} bootstrap resamples of patients (the same for "
            "every run).</p>"
            f"<table><tr><th>run</th>{head}</tr>{body}</table><h2>ROC-AUC per label</h2><table><tr><th>run</th>"
            + "".join(f"<th>{n}</th>" for n in SUBTYPES) + f"</tr>{labels}</table></body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
