"""ichtrain cv: pooled out-of-fold predictions, their cross-fitted calibration, and the folds as one ensemble."""

import json
import shutil

import numpy as np
import pytest

from ichtrain.cli import main


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
    assert "cv and stack folders with cv and stack folders" in capsys.readouterr().err
    path = shuffled / "fold-1" / "predictions-test.npz"
    with np.load(path) as d:
        arrays = dict(d)
    np.savez_compressed(path, **{name: a[1:] for name, a in arrays.items()})  # one slice fewer
    assert main(["compare", str(cv_dir), str(shuffled), "--bootstrap", "50", "--out", str(tmp_path / "cmp2")]) == 2
    assert "other out-of-fold slices" in capsys.readouterr().err


def test_stack_features_are_each_slices_logits_and_their_differences_to_its_neighbours():
    """Reference: a plain loop over each series in z order, neighbours repeated at the ends."""
    from ichtrain.stack import stack_features

    z = np.random.default_rng(3).normal(size=(9, 6)).astype(np.float32)
    groups = [np.array([4, 0, 7]), np.array([2]), np.array([1, 3, 5, 6, 8])]
    got = stack_features(z, groups)
    for g in groups:
        for i, row in enumerate(g):
            prev, nxt = g[max(i - 1, 0)], g[min(i + 1, len(g) - 1)]
            np.testing.assert_allclose(got[row], np.concatenate([z[row], z[row] - z[prev], z[row] - z[nxt]]))


def test_an_untrained_stacker_is_the_platt_calibrated_ensemble():
    """The stacker's own-slice head is the Platt map a z + b on the first six features and its context term
    starts at zero: before training its output is sigmoid(a z + b), whatever the neighbours."""
    from ichtrain.calibration import sigmoid
    from ichtrain.series import build_series_model
    from ichtrain.stack import FEATURES, _head, stack_features

    rng = np.random.default_rng(5)
    a, b = rng.uniform(0.5, 1.5, 6), rng.normal(size=6)
    z = rng.normal(scale=2, size=(7, 6)).astype(np.float32)
    x = stack_features(z, [np.arange(7)])
    model = build_series_model(FEATURES, 4, _head(a, b))
    got = np.asarray(model(x[None], training=False))[0]
    np.testing.assert_allclose(got, sigmoid(a * z + b), rtol=2e-5, atol=1e-6)


def test_stack_is_cross_fitted_scored_like_the_cv_folder_and_used_by_evaluate_compare_predict(
        cv_dir, synth_corpus, tmp_path, capsys, monkeypatch):
    stack_dir = tmp_path / "stack"
    assert main(["stack", str(cv_dir), "--out", str(stack_dir), "--epochs", "1", "--units", "4",
                 "--bootstrap", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "60 out-of-fold slices" in out and "stacked - ensemble" in out
    res = json.loads((stack_dir / "stack.json").read_text())
    reported = json.loads((cv_dir / "cv.json").read_text())["pooled"]["weighted_log_loss"]
    assert res["ensemble"]["weighted_log_loss"]["value"] == pytest.approx(reported, rel=1e-5)
    with np.load(stack_dir / "oof.npz") as d:
        y, p, rows = d["y_true"], d["y_prob"], d["rows"]
    assert rows.tolist() == list(range(60))  # every labelled slice once, in store order
    from ichtrain.metrics import weighted_log_loss

    assert res["stacked"]["weighted_log_loss"]["value"] == pytest.approx(weighted_log_loss(y, p), rel=1e-6)
    assert res["stacked"]["weighted_log_loss_minus_first"]["value"] == pytest.approx(
        weighted_log_loss(y, p) - reported, rel=1e-4, abs=1e-6)

    assert main(["evaluate", str(stack_dir)]) == 0
    assert "stacked over series" in capsys.readouterr().out
    assert json.loads((stack_dir / "eval-oof.json").read_text())["weighted_log_loss"] == pytest.approx(
        weighted_log_loss(y, p), rel=1e-6)
    assert main(["compare", str(cv_dir), str(stack_dir), "--bootstrap", "50", "--out", str(tmp_path / "cmp")]) == 0
    first, second = json.loads((tmp_path / "cmp" / "compare-oof.json").read_text())["runs"]
    assert second["model"] == "baseline (cv, stacked)"
    assert second["weighted_log_loss"]["value"] == pytest.approx(weighted_log_loss(y, p), rel=1e-6)
    assert first["weighted_log_loss"]["value"] == pytest.approx(reported, rel=1e-5)

    csv = tmp_path / "stacked.csv"
    assert main(["predict", str(stack_dir), synth_corpus["dicom_dir"], "--out", str(csv)]) == 0
    got = _read(csv)
    assert got.shape == (60, 6) and np.isfinite(got).all() and ((got > 0) & (got < 1)).all()
    capsys.readouterr()
    for argv in (["predict", str(stack_dir), synth_corpus["dicom_dir"], "--out", str(csv), "--tta", "none"],
                 ["evaluate", str(stack_dir), "--tta", "none"], ["compare", str(cv_dir), str(stack_dir), "--tta", "none"]):
        assert main(argv) == 2  # the stacker learned from the folds' own views: others are refused, in one line
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "stack folder" in err[0], err

    # cross-fitted: fold 0's labels turned upside down change what the stackers of folds 1 and 2 learn, and not
    # one of fold 0's own stacked predictions (its stacker trained on the other folds only)
    import ichtrain.cv as cv
    from ichtrain.stack import StackConfig, stack

    real = cv.pooled_out_of_fold
    pooled = real(str(cv_dir))

    def flipped(cv_dir, folds=None):
        out = real(cv_dir, folds)
        out["y"] = np.where(out["fold"][:, None] == 0, 1 - out["y"], out["y"])
        return out

    monkeypatch.setattr(cv, "pooled_out_of_fold", flipped)
    stack(StackConfig(str(cv_dir), out=str(tmp_path / "flipped"), epochs=1, units=4, bootstrap=10))
    monkeypatch.undo()
    with np.load(tmp_path / "flipped" / "oof.npz") as d:
        assert np.array_equal(d["rows"], rows)
        fold0 = np.isin(rows, pooled["rows"][pooled["fold"] == 0])
        np.testing.assert_array_equal(d["y_prob"][fold0], p[fold0])
        assert not np.allclose(d["y_prob"][~fold0], p[~fold0])

    capsys.readouterr()
    assert main(["stack", str(cv_dir / "fold-0"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Expected a cv folder" in err[0], err
    assert main(["stack", str(cv_dir), "--epochs", "0", "--quiet"]) == 2
    assert "--epochs an integer >= 1" in capsys.readouterr().err
