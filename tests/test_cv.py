"""ichtrain cv: pooled out-of-fold predictions, their cross-fitted calibration, and the folds as one ensemble."""

import json
import shutil

import numpy as np
import pytest

from ichtrain.cli import main


@pytest.fixture(scope="module")
def cv_dir(brain_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    assert main(["cv", brain_store, "--folds", "3", "--out", str(out), "--image-size", "32", "--epochs", "1",
                 "--epoch-size", "16", "--batch-size", "8", "--tta", "flip", "--quiet"]) == 0
    return out


def _platt(z, y, w):
    from ichtrain.calibration import PLATT_RIDGE, fit_platt

    return np.array([fit_platt(z[:, j], y[:, j], ridge=PLATT_RIDGE, weights=w) for j in range(6)]).T


def test_cv_pools_out_of_fold_predictions_calibrated_on_the_other_folds(cv_dir, brain_store, capsys):
    """Reference: each fold's raw logits plus its prior shift, Platt fitted on the other folds' (each patient
    weighing one), applied to this fold; every labelled slice once."""
    from ichtrain.calibration import Calibration, group_weights, logit, sigmoid
    from ichtrain.data import run_stream
    from ichtrain.metrics import weighted_log_loss

    res = json.loads((cv_dir / "cv.json").read_text())
    zs, ys, ps, rows, groups = [], [], [], [], []
    for k in range(3):
        fold = cv_dir / f"fold-{k}"
        cfg = json.loads((fold / "config.json").read_text())
        assert cfg["tta"] == "flip"
        with np.load(fold / "predictions-test.npz") as d:
            zs.append(logit(d["y_prob_raw"]) + np.asarray(Calibration.load(str(fold)).offset))
            ys.append(d["y_true"]), ps.append(d["y_prob"]), rows.append(d["rows"])
            groups.append(run_stream(cfg).groups[d["rows"]].astype(str))
    assert sorted(np.concatenate(rows).tolist()) == list(range(60))  # every labelled slice out of fold once
    assert res["pooled_fold_calibrated"]["weighted_log_loss"] == pytest.approx(
        weighted_log_loss(np.concatenate(ys), np.concatenate(ps)))
    w = group_weights(np.concatenate(groups))
    cuts = np.cumsum([0, *[len(y) for y in ys]])
    want = []
    for k in range(3):
        keep = np.ones(cuts[-1], bool)
        keep[cuts[k]:cuts[k + 1]] = False
        a, b = _platt(np.concatenate(zs)[keep], np.concatenate(ys)[keep], w[keep])
        want.append(sigmoid(a * zs[k] + b))
    y = np.concatenate(ys)
    assert res["pooled"]["weighted_log_loss"] == pytest.approx(weighted_log_loss(y, np.concatenate(want)), rel=1e-5)
    per = [f["weighted_log_loss"] for f in res["per_fold"]]
    assert res["summary"]["weighted_log_loss"]["mean"] == pytest.approx(np.mean(per))
    ens = json.loads((cv_dir / "ensemble.json").read_text())
    a, b = _platt(np.concatenate(zs), y, w)
    np.testing.assert_allclose(ens["scale"], a, rtol=1e-6)
    np.testing.assert_allclose(ens["shift"], b, rtol=1e-6, atol=1e-9)
    assert ens["folds"] == ["fold-0", "fold-1", "fold-2"]
    assert (cv_dir / "cv.html").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(cv_dir)]) == 0
    out = capsys.readouterr().out
    assert "pooled out-of-fold predictions of 3 folds (60 slices" in out
    assert json.loads((cv_dir / "eval-oof.json").read_text())["weighted_log_loss"] == pytest.approx(
        res["pooled"]["weighted_log_loss"])
    assert main(["cv", brain_store, "--folds", "6", "--out", str(cv_dir.parent / "cv6")]) == 2
    assert "at least 6 patients" in capsys.readouterr().err


def test_predict_with_a_cv_folder_averages_its_folds_in_logit_space(cv_dir, synth_corpus, tmp_path, capsys):

    from ichtrain.calibration import sigmoid

    assert main(["predict", str(cv_dir), synth_corpus["dicom_dir"], "--out", str(tmp_path / "ens.csv")]) == 0
    fold_z = []
    for k in range(3):  # each fold alone, uncalibrated by predict: its calibrated output, back to the shifted logit
        assert main(["predict", str(cv_dir / f"fold-{k}"), synth_corpus["dicom_dir"], "--out",
                     str(tmp_path / f"f{k}.csv")]) == 0
        fold_z.append(_shifted_logits(cv_dir / f"fold-{k}", tmp_path / f"f{k}.csv"))
    ens = json.loads((cv_dir / "ensemble.json").read_text())
    want = sigmoid(np.asarray(ens["scale"]) * np.mean(fold_z, axis=0) + np.asarray(ens["shift"]))
    got = _read(tmp_path / "ens.csv")
    np.testing.assert_allclose(got, want, atol=2e-5)


def _read(path):
    import csv

    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return np.array([float(r["Label"]) for r in rows]).reshape(-1, 6)


def _shifted_logits(fold, path):
    """A fold's CSV is its own calibration applied to its raw output: undo the Platt step to get the raw logit
    plus the prior shift, the quantity the ensemble averages."""
    from ichtrain.calibration import Calibration, logit

    cal = Calibration.load(str(fold))
    return (logit(_read(path)) - np.asarray(cal.shift)) / np.asarray(cal.scale)


def test_a_cv_folder_with_a_missing_fold_is_named(cv_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(cv_dir, broken)
    shutil.rmtree(broken / "fold-1")
    assert main(["evaluate", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "misses fold 1" in err[0], err
    assert main(["predict", str(broken), str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    assert "misses fold 1" in capsys.readouterr().err


def test_compare_of_cv_folders_uses_pooled_out_of_fold_predictions_aligned_by_row(cv_dir, tmp_path, capsys):
    """Two cv folders compare on their pooled out-of-fold predictions. The second is the first with each fold's
    predictions stored in another row order: the same predictions, so the same figures and a difference of
    exactly 0; the first's loss is the one cv itself reported. Mixed inputs and other slices are refused."""
    shuffled = tmp_path / "shuffled"
    shutil.copytree(cv_dir, shuffled)
    rng = np.random.default_rng(0)
    for k in range(3):
        path = shuffled / f"fold-{k}" / "predictions-test.npz"
        with np.load(path) as d:
            arrays = dict(d)
        order = rng.permutation(len(arrays["rows"]))
        np.savez_compressed(path, **{name: a[order] for name, a in arrays.items()})
    capsys.readouterr()
    assert main(["compare", str(cv_dir), str(shuffled), "--bootstrap", "50", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "60 out-of-fold slices" in out
    result = json.loads((tmp_path / "cmp" / "compare-oof.json").read_text())
    first, second = result["runs"]
    reported = json.loads((cv_dir / "cv.json").read_text())["pooled"]["weighted_log_loss"]
    assert first["weighted_log_loss"]["value"] == pytest.approx(reported, rel=1e-5)
    assert second["weighted_log_loss"]["value"] == pytest.approx(first["weighted_log_loss"]["value"], rel=1e-6)
    assert second["weighted_log_loss_minus_first"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert second["weighted_log_loss_minus_first"]["ci"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert first["model"] == "baseline (cv)" and result["split"] == "oof"
    assert "pooled out-of-fold" in (tmp_path / "cmp" / "compare-oof.html").read_text()

    assert main(["compare", str(cv_dir), str(cv_dir / "fold-0")]) == 2
    assert "cv folders with cv folders" in capsys.readouterr().err
    path = shuffled / "fold-1" / "predictions-test.npz"
    with np.load(path) as d:
        arrays = dict(d)
    np.savez_compressed(path, **{name: a[1:] for name, a in arrays.items()})  # one slice fewer
    assert main(["compare", str(cv_dir), str(shuffled), "--bootstrap", "50", "--out", str(tmp_path / "cmp2")]) == 2
    assert "other out-of-fold slices" in capsys.readouterr().err
