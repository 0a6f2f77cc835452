"""``ichtrain evaluate``: metrics (JSON) and the report's figure-5.x style plots (PNG) for a run."""

from __future__ import annotations

import json
import os

import numpy as np

from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES
from ichtrain.infer import predict_rows
from ichtrain.run import RunDir, input_options, load_keras, load_run, tta_of
from ichtrain.calibration import (Calibration, constant_prior, expected_calibration_error, fit_run_calibration,
                                  reliability)
from ichtrain.metrics import summarise, weighted_log_loss
from ichtrain.testtime import check_tta, tta_tag

__all__ = ["evaluate", "tta_label", "THRESHOLDS", "NEW"]

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 21), 4)


def _load(run_dir):
    cfg, model_path = load_run(run_dir)
    return cfg, load_keras(model_path)


# evaluate's split of the slices a grown store gained after the run's generation (``ichprep build --append``),
# of patients the run never saw in its train or val split: a prospective test.
NEW = "new"


def evaluate(run_dir: str, split: str = "val", batch_size: int = 32, tta: str | None = None) -> dict:
    """Evaluate a run on ``split``; writes eval-SPLIT.json, predictions-SPLIT.npz, the plots and report.html.

    ``tta``: test-time views other than the run's own (:mod:`ichtrain.testtime`); the run's calibration is then
    refitted on its val split with those views, and the files are named SPLIT-tta-MODE (report-tta-MODE.html)."""
    cfg, model = _load(run_dir)
    mode, label = tta_label(cfg, split, tta, run_dir)
    stream, rows, train_stream = _rows_of(cfg, run_dir, split)
    if cfg["model"] == "series":
        from ichtrain.series import open_embeddings, predict_series, series_rows

        groups = series_rows(stream, rows)
        p_raw = predict_series(model, open_embeddings(cfg["embeddings"], stream)[0], groups)
        y = stream.labels[np.concatenate(groups)].astype(np.float32)
    else:
        y, p_raw = predict_rows(model, stream, batch_size, rows=rows, tta=mode, **input_options(cfg))
    if label == split:
        cal = Calibration.load(run_dir)
    else:  # calibrated with the views it is judged with
        cal = fit_run_calibration(train_stream, model, input_options(cfg), cfg["alpha"], batch_size, tta=mode)
    p = cal.apply(p_raw) if cal is not None else p_raw
    result = summarise(y, p, THRESHOLDS)
    result.update(split=split, model=cfg["model"], store=cfg["store"], calibrated=cal is not None, tta=mode)
    result["calibration"] = calibration_summary(y, p, p_raw, cal, train_stream)
    result["store_generation"] = stream.generation
    out_json = RunDir(run_dir).evaluation(label)
    with open(out_json, "w") as fh:
        json.dump(result, fh, indent=2)
    result["plots"] = _plots(result, run_dir, label)
    result["json"] = out_json
    np.savez_compressed(RunDir(run_dir).predictions(label), y_true=y, y_prob=p, y_prob_raw=p_raw,
                        rows=rows)
    from ichtrain.report import write_report

    names = stream.window_names
    channel = names.index("brain") if "brain" in names else 0  # thumbnails in the most readable window
    explain = None if cfg["model"] == "series" else _explainer(model, stream, input_options(cfg))
    result["report"] = write_report(run_dir, result, stream.images, rows, y, p, channel, explain=explain,
                                    file_name="report.html" if label == split else f"report-tta-{tta_tag(mode)}.html")
    return result


def tta_label(cfg: dict, split: str, tta: str | None, run_dir: str) -> tuple[str, str]:
    """(the TTA mode to use, the name of ``split``'s files): ``split`` itself with the run's own TTA, else
    SPLIT-tta-MODE. Another TTA is refused for the series model (it reads embeddings, not slices)."""
    own = tta_of(cfg)
    mode = own if tta is None else check_tta(tta)
    if mode == own:
        return mode, split
    if cfg["model"] == "series":
        raise UsageError(f"--tta views slices; the series run {run_dir!r} reads embeddings. Received: tta={tta!r}")
    return mode, f"{split}-tta-{tta_tag(mode)}"


def _rows_of(cfg: dict, run_dir: str, split: str):
    """(the stream, the rows to evaluate, the stream of the run's own split) for ``split``: one of the run's
    splits, read at the run's store generation; or :data:`NEW`."""
    from ichtrain.data import run_stream

    stream = run_stream(cfg)
    stream.check_split(cfg.get("split"), f"the run {run_dir!r}")
    if split != NEW:
        if stream.splits[split].size == 0:
            raise UsageError(stream.empty_split_reason(split) + "; nothing to evaluate")
        return stream, stream.splits[split], stream
    latest = run_stream(dict(cfg, store_generation=None))
    seen = np.unique(stream.groups[np.concatenate([stream.splits["train"], stream.splits["val"]])].astype(str))
    first_new = stream.info.rows_at(stream.generation)
    rows = np.flatnonzero(latest.usable & (np.arange(latest.n) >= first_new) & ~np.isin(latest.groups.astype(str), seen))
    if rows.size == 0:
        raise UsageError(f"No new slices to evaluate: the run trained on generation {stream.generation} of "
                         f"{cfg['store']}, which is at generation {latest.generation}; --split new takes the labelled "
                         "slices added since (ichprep build --append) of patients outside the run's train and val splits")
    return latest, rows, stream


def _explainer(model, stream, inputs: dict):
    """``explain(rows, label) -> (images (n, H, W), heat maps (n, H, W))``: what the model saw of each row
    (its first channel) and the label's Grad-CAM over it; None for models without one 4-D feature map."""
    from ichprep.errors import UsageError
    from ichtrain.saliency import feature_layer, grad_cam

    if inputs.get("sequence") or int(inputs.get("neighbours") or 0):
        return None
    try:
        feature_layer(model)
    except UsageError:
        return None
    inputs = dict(inputs, windows_on="reader")

    def explain(rows, label: int):
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        x = np.concatenate([b.numpy() for b, _ in stream.dataset("test", batch_size=8, rows=rows[order], **inputs)])
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        x = x[back]
        return x[..., 0], grad_cam(model, x, label)

    return explain


def calibration_summary(y, p, p_raw, cal, stream) -> dict:
    """The calibrated, raw and constant-prior weighted log losses, and ECE and reliability per label."""
    prior = cal.natural_prior if cal is not None else stream.labels[stream.splits["train"]].mean(0)
    out = dict(weighted_log_loss=weighted_log_loss(y, p), raw_weighted_log_loss=weighted_log_loss(y, p_raw),
               constant_prior_weighted_log_loss=weighted_log_loss(y, constant_prior(prior, len(y))),
               train_prior=[float(v) for v in prior], labels={})
    for j, name in enumerate(SUBTYPES):
        out["labels"][name] = dict(ece=expected_calibration_error(y[:, j], p[:, j]),
                                   raw_ece=expected_calibration_error(y[:, j], p_raw[:, j]),
                                   mean_prob=float(p[:, j].mean()), rate=float(y[:, j].mean()),
                                   reliability=reliability(y[:, j], p[:, j]))
    return out


def _plots(result: dict, run_dir: str, split: str) -> list[str]:
    """Figures 5.1/5.3 (sensitivity and fall-out) and 5.2/5.4 (specificity and miss rate) per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    t = np.array(result["thresholds"])
    paths = []
    for pair, title in ((("sensitivity", "fall_out"), "Sensitivity and fall-out"),
                        (("specificity", "miss_rate"), "Specificity and miss rate")):
        fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True, sharey=True)
        for ax, name in zip(axes.ravel(), SUBTYPES):
            sweep = result["labels"][name]["sweep"]
            for key, style in zip(pair, ("-", "--")):
                vals = np.array([np.nan if v is None else v for v in sweep[key]], float)
                ax.plot(t, vals, style, label=key.replace("_", "-"))
            auc = result["labels"][name]["roc_auc"]
            ax.set_title(f"{name} (AUC {auc:.3f})" if auc is not None else f"{name} (AUC n/a)")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("threshold")
        axes[0, 0].legend(loc="center left")
        fig.suptitle(f"{title} on the {split} set ({result['slices']} slices, {result['model']})")
        fig.tight_layout()
        path = os.path.join(run_dir, "plots", f"{split}-{'-'.join(pair).replace('_', '')}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    paths.append(_reliability_plot(result, run_dir, split, plt))
    return paths


def _reliability_plot(result: dict, run_dir: str, split: str, plt) -> str:
    """Observed rate against mean prediction per probability bin, one panel per label."""
    c = result["calibration"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True, sharey=True)
    for ax, name in zip(axes.ravel(), SUBTYPES):
        lab = c["labels"][name]
        r = lab["reliability"]
        pts = [(m, v, n) for m, v, n in zip(r["mean_prob"], r["rate"], r["count"]) if n]
        ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect")
        if pts:
            m, v, n = map(np.array, zip(*pts))
            ax.plot(m, v, "-", color="C0")
            ax.scatter(m, v, s=12 + 120 * n / n.max(), color="C0", label="bins (size: slices)")
        ax.set_title(f"{name} (ECE {lab['ece']:.3f})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("mean predicted probability")
    for ax in axes[:, 0]:
        ax.set_ylabel("observed rate")
    axes[0, 0].legend(loc="upper left")
    kind = "calibrated" if result.get("calibrated") else "uncalibrated"
    fig.suptitle(f"Reliability on the {split} set ({result['slices']} slices, {result['model']}, {kind}); weighted "
                 f"log loss {c['weighted_log_loss']:.4f}, constant prior {c['constant_prior_weighted_log_loss']:.4f}")
    fig.tight_layout()
    path = os.path.join(run_dir, "plots", f"{split}-reliability.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
