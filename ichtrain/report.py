"""One self-contained HTML report per evaluation: metrics, plots, training curves, a gallery.

Every image is embedded as a base64 PNG, so the file opens offline and can be mailed as it is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os

import numpy as np

from ichprep.labels import SUBTYPES
from ichtrain.run import RunDir

__all__ = ["write_report"]

GALLERY = 3  # most confident true and false positives shown per label


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(img2d: np.ndarray, size: int = 128) -> str:
    import matplotlib.pyplot as plt

    h = img2d.shape[0]
    f = max(1, h // size)
    small = img2d[: h // f * f, : h // f * f].reshape(h // f, f, h // f, f).mean(axis=(1, 3))
    buf = io.BytesIO()
    plt.imsave(buf, small, cmap="gray", vmin=0, vmax=1, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _logged(text: str | None) -> float:
    """A value of Keras' CSV log: NaN for NA (a metric with nothing to measure, such as an empty val split's)
    or a blank."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _curves(run_dir: str) -> str | None:
    path = RunDir(run_dir).log
    if not os.path.isfile(path):
        return None
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(path)))
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, keys in zip(axes, (("loss", "val_loss"), ("auc", "val_auc"))):
        for k in keys:
            values = [_logged(r.get(k)) for r in rows]
            if not all(math.isnan(v) for v in values):  # Keras logs NA for a metric of an empty val split
                ax.plot(epochs, values, marker="o", label=k)
        ax.set_xlabel("epoch")
        if ax.lines:  # a series run logs no AUC
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def _overlay(img2d: np.ndarray, heat: np.ndarray) -> str:
    """The model's view of a slice with its Grad-CAM heat map over it (jet, 40%), as an embedded PNG."""
    import matplotlib

    rgb = np.repeat(np.clip(img2d, 0, 1)[..., None], 3, axis=-1)
    jet = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    out = np.clip(0.6 * rgb + 0.4 * jet, 0.0, 1.0)
    buf = io.BytesIO()
    import matplotlib.pyplot as plt

    plt.imsave(buf, out, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(run_dir: str, result: dict, images, rows: np.ndarray, y_true: np.ndarray, y_prob: np.ndarray,
                 channel: int = 0, explain=None, file_name: str = "report.html") -> str:
    """Write ``run_dir/file_name`` and return its path. ``images`` is the store's images array; ``explain``
    (rows, label) -> (model views, Grad-CAM maps) adds each gallery slice's heat map beside it."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ichtrain report: {esc(result['model'])} on "
             f"{esc(result['split'])}</title><style>body{{font-family:sans-serif;margin:24px;max-width:1100px}}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{background:#eee}.g img{margin:2px;border:3px solid #080}.g img.fp{border-color:#c00}"
             "h2{margin-top:32px}</style></head><body>",
             f"<h1>{esc(result['model'])} on the {esc(result['split'])} split</h1>",
             f"<p>{result['slices']} slices from {esc(str(result['store']))}; weighted log loss "
             f"<b>{result['weighted_log_loss']:.4f}</b> (challenge metric, <i>any</i> weighted 2; "
             f"{'calibrated' if result.get('calibrated') else 'uncalibrated'}; test-time views: "
             f"{esc(result.get('tta', 'none'))}). A constant predictor of the train "
             f"split's label rates scores {result['calibration']['constant_prior_weighted_log_loss']:.4f}; the "
             f"model's raw outputs {result['calibration']['raw_weighted_log_loss']:.4f}.</p>",
             "<h2>Metrics at threshold 0.5</h2><table><tr><th>label</th><th>positives</th><th>ROC-AUC</th>"
             "<th>sensitivity</th><th>specificity</th><th>fall-out</th><th>miss rate</th><th>ECE</th>"
             "<th>mean prob</th><th>rate</th></tr>"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name in SUBTYPES:
        m, c = result["labels"][name], result["calibration"]["labels"][name]
        a = m["at_0_5"]
        parts.append(f"<tr><th>{name}</th><td>{m['positives']}</td><td>{fmt(m['roc_auc'])}</td>"
                     f"<td>{fmt(a['sensitivity'])}</td><td>{fmt(a['specificity'])}</td><td>{fmt(a['fall_out'])}</td>"
                     f"<td>{fmt(a['miss_rate'])}</td><td>{fmt(c['ece'])}</td><td>{fmt(c['mean_prob'])}</td>"
                     f"<td>{fmt(c['rate'])}</td></tr>")
    parts.append("</table><h2>Across thresholds (report figures 5.1-5.4) and reliability</h2>")
    for p in result.get("plots", []):
        with open(p, "rb") as fh:
            parts.append(f"<p><img alt='{esc(os.path.basename(p))}' style='max-width:100%' "
                         f"src='data:image/png;base64,{base64.b64encode(fh.read()).decode('ascii')}'></p>")
    curves = _curves(run_dir)
    parts.append("<h2>Training curves</h2>")
    parts.append(f"<p><img alt='training curves' src='data:image/png;base64,{curves}'></p>" if curves
                 else "<p>No training log.</p>")
    parts.append(f"<h2>Most confident true and false positives (up to {GALLERY} each; green frame = true, red = false"
                 + ("; each followed by the model's view with its Grad-CAM heat map" if explain is not None else "")
                 + ")</h2>")
    for j, name in enumerate(SUBTYPES):
        p, y = y_prob[:, j], y_true[:, j] > 0.5
        order = np.argsort(-p, kind="stable")
        tp = [k for k in order if y[k]][:GALLERY]
        fp = [k for k in order if not y[k]][:GALLERY]
        cells = []
        chosen = [(kind, k) for kind, ks in (("tp", tp), ("fp", fp)) for k in ks]
        views = explain([int(rows[k]) for _, k in chosen], j) if explain is not None and chosen else None
        for n, (kind, k) in enumerate(chosen):
            r = int(rows[k])
            img = np.asarray(images[r][..., channel], np.float32)
            cells.append(f"<img class='{kind}' title='row {r} p={p[k]:.3f}' alt='{kind} row {r}' "
                         f"src='data:image/png;base64,{_thumb(img)}'>")
            if views is not None:
                cells.append(f"<img class='{kind}' title='Grad-CAM of {name}, row {r}' alt='Grad-CAM row {r}' "
                             f"src='data:image/png;base64,{_overlay(views[0][n], views[1][n])}'>")
        parts.append(f"<h3>{name}</h3><div class='g'>" + ("".join(cells) or "<p>none</p>") + "</div>")
    parts.append("</body></html>")
    out = os.path.join(run_dir, file_name)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return out
