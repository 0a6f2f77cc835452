"""``ichtrain predict``: DICOM folder -> the very same ichprep build -> model -> submission CSV."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile

import numpy as np

from ichprep.build import BuildConfig, build
from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES
from ichprep.windows import windows_from_list
from ichtrain.calibration import Calibration
from ichtrain.evaluate import tta_label
from ichtrain.infer import feature_model, features_of, predict_rows
from ichtrain.logits import logit
from ichtrain.run import input_options, load_keras, load_run

__all__ = ["predict"]


def predict(run_dir: str, dicom_dir: str, out_csv: str, workers: int = 1, batch_size: int = 32,
            stream_err=None, tta: str | None = None) -> dict:
    """Predict a submission CSV (``ID,Label`` rows ``ID_<sop>_<subtype>``) for the DICOMs in ``dicom_dir``.

    Args:
        run_dir: a run folder (``ichtrain fit``), a cv folder (its folds averaged in logit space) or a stack
            folder (``ichtrain stack``: that average read along each series by the stacker).
        dicom_dir: the DICOM files, preprocessed by the same ``ichprep build`` as the run's store.
        out_csv: the CSV to write (its folder is made).
        workers: Dask workers of that build.
        batch_size: slices per model call.
        stream_err: where the files that could not be read are listed (default stderr).
        tta: test-time views other than the run's own (:mod:`ichtrain.testtime`): the run's calibration is then
            refitted with them on its val split (a cv folder's on its folds' test patients), before any build.

    Returns:
        dict: ``slices`` predicted, ``rejected`` files, ``out`` and the build's summary.

    Raises:
        UsageError: no such run, ``out_csv`` is a folder, a run without a model.
    """
    from ichtrain.data import StoreStream

    from ichtrain.cv import FoldEnsemble, fold_dirs, is_cv_folder
    from ichtrain.stack import is_stack_folder, stack_cv_dir, stack_probabilities

    stream_err = sys.stderr if stream_err is None else stream_err  # bound now: tests replace sys.stderr
    if os.path.isdir(out_csv):  # refused before any work, not after it
        raise UsageError(f"Expected --out a CSV file path. Received: {out_csv!r}, which is a folder")
    ensemble = stack_dir = None
    if is_stack_folder(run_dir):  # a stack folder: its cv folder's fold models, then the stacker over each series
        stack_dir, run_dir = run_dir, stack_cv_dir(run_dir)
    if is_cv_folder(run_dir):  # a cv folder: its fold models, averaged (ichtrain.cv.FoldEnsemble)
        ensemble = FoldEnsemble.load(run_dir)
        members = fold_dirs(run_dir, len(ensemble.folds))
        cfg, model_path = load_run(members[0])
    else:
        cfg, model_path = load_run(run_dir)
    model = load_keras(model_path)
    mode, label = tta_label(cfg, "val", tta, run_dir)
    if stack_dir is not None and label != "val":
        raise UsageError("--tta predicts with other test-time views; a stack folder's stacker learned from its cv "
                         f"folder's own. Received: tta={tta!r} with {stack_dir!r}")
    calibration, ensemble = _calibrations(run_dir, cfg, model, ensemble, None if label == "val" else mode)
    if calibration is None and ensemble is None:
        print(f"ichtrain: warning: {run_dir} has no calibration.json; writing the model's raw probabilities "
              "(rerun 'ichtrain fit' with the same arguments to calibrate it)", file=stream_err)
    with tempfile.TemporaryDirectory(prefix="ichtrain-predict-") as tmp:
        store = os.path.join(tmp, "predict.zarr")
        # The training store's windows and size policy: the same preprocessing, by the same code.
        result = build(BuildConfig(source=dicom_dir, out=store, windows=windows_from_list(cfg["windows"]),
                                   preset=None, on_size=cfg["size_policy"], workers=workers,
                                   salt=secrets.token_hex(16)))  # a throwaway store: its patient keys are unused
        stream = StoreStream(store, fractions=(1.0, 0.0, 0.0))
        ok = np.flatnonzero(stream.readable)
        sops = stream.sop_uids
        if stack_dir is not None:
            from ichtrain.series import series_rows

            z = np.mean([_fold_logits(d, stream, ok, batch_size, mode) for d in members], axis=0)
            probs = stack_probabilities(stack_dir, z, [np.searchsorted(ok, g) for g in series_rows(stream, ok)])
        elif ensemble is not None:
            probs = ensemble.apply([_fold_logits(d, stream, ok, batch_size, mode) for d in members])
        elif cfg["model"] == "series":  # DICOMs -> store -> slice model -> embeddings -> series model
            probs = _series_probs(cfg, model, stream, ok, batch_size)
        else:
            _, probs = predict_rows(model, stream, batch_size, rows=ok, tta=mode, **input_options(cfg))
        if calibration is not None:
            probs = calibration.apply(probs)
        rejects = stream.info.rejects
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    with open(out_csv, "w") as fh:
        fh.write("ID,Label\n")
        for sop, p in zip(sops[ok], probs):
            for name, v in zip(SUBTYPES, p):
                fh.write(f"{sop}_{name},{float(v):.6f}\n")
    for r in rejects:
        print(f"ichtrain: could not read {r['file']}: {r['reason']} ({r['message']})", file=stream_err)
    return dict(slices=int(ok.size), rejected=len(rejects), out=out_csv, build=result.summary())


def _calibrations(run_dir: str, cfg: dict, model, ensemble, other: str | None):
    """(the run's calibration, the cv folder's ensemble): as saved, or refitted with the views ``other`` than
    the run's own (before any build: a missing training store is said before the DICOMs are read)."""
    calibration = Calibration.load(run_dir)
    if other is None:
        return calibration, ensemble
    if ensemble is not None:
        from ichtrain.cv import pooled_out_of_fold

        return calibration, pooled_out_of_fold(run_dir, len(ensemble.folds), tta=other)["ensemble"]
    from ichtrain.calibration import fit_run_calibration
    from ichtrain.data import run_stream

    return fit_run_calibration(run_stream(cfg), model, input_options(cfg), cfg["alpha"], tta=other), ensemble


def _fold_logits(fold_dir: str, stream, ok: np.ndarray, batch_size: int, tta: str) -> np.ndarray:
    """One fold model's raw logits on the rows ``ok`` with the views ``tta``, plus its prior-shift offset."""
    cfg, path = load_run(fold_dir)
    _, p = predict_rows(load_keras(path), stream, batch_size, rows=ok, tta=tta, **input_options(cfg))
    cal = Calibration.load(fold_dir)
    return logit(p) + (np.asarray(cal.offset) if cal is not None else 0.0)


def _series_probs(cfg: dict, model, stream, ok: np.ndarray, batch_size: int) -> np.ndarray:
    from ichtrain.series import predict_series, series_rows

    slice_cfg, slice_path = load_run(cfg["slice_run"])
    features = feature_model(load_keras(slice_path))
    emb = np.zeros((stream.n, int(features.output_shape[-1])), np.float32)
    emb[ok] = features_of(features, stream, ok, input_options(slice_cfg), batch_size)
    return predict_series(model, emb, series_rows(stream, ok))
