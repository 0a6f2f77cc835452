"""Test-time views (flip, centre crop) against plain numpy, and judging a run or cv folder with other views."""

import json
import os

import numpy as np
import pytest

from ichtrain.cli import main


def _numpy_resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Plain numpy bilinear resize of (H, W) with half-pixel centres (TensorFlow 2's tf.image.resize, no
    antialiasing): source coordinate (i + 0.5) * in / out - 0.5, neighbours clamped to the image."""
    def axis(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        lo = np.floor(src)
        frac = src - lo
        return np.clip(lo, 0, n_in - 1).astype(int), np.clip(lo + 1, 0, n_in - 1).astype(int), frac

    y0, y1, fy = axis(img.shape[0], out_h)
    x0, x1, fx = axis(img.shape[1], out_w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def _numpy_centre_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    h, w = img.shape
    mh, mw = int(round(h * (1 - fraction) / 2)), int(round(w * (1 - fraction) / 2))
    return _numpy_resize_bilinear(img[mh:h - mh, mw:w - mw], h, w)


def test_centre_crop_equals_a_numpy_crop_and_bilinear_resize_for_images_and_sequences():
    import tensorflow as tf

    from ichtrain.testtime import TTA_CROP, centre_crop

    rng = np.random.default_rng(0)
    images = rng.random((2, 40, 40, 3)).astype(np.float32)
    got = centre_crop(tf.constant(images)).numpy()
    assert got.shape == images.shape and got.dtype == np.float32
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[b, :, :, c], _numpy_centre_crop(images[b, :, :, c], TTA_CROP), atol=1e-5)
    sequences = rng.random((2, 4, 32, 32, 1)).astype(np.float16)  # the rnn's window sequences, float16
    got = centre_crop(tf.constant(sequences), 0.5).numpy()
    assert got.shape == sequences.shape and got.dtype == np.float16
    for c in range(4):
        np.testing.assert_allclose(got[1, c, :, :, 0].astype(np.float64),
                                   _numpy_centre_crop(sequences[1, c, :, :, 0].astype(np.float32), 0.5), atol=1e-3)
    # the crop keeps whole pixels: at 0.5 of 32, rows 8..23 fill the image
    assert abs(float(got[1, 0, 16, 16, 0]) - float(sequences[1, 0, 16, 16, 0])) < 0.5


def test_views_are_the_batch_its_mirror_and_the_mirrored_crop():
    import tensorflow as tf

    from ichprep.errors import UsageError
    from ichtrain.testtime import centre_crop, tta_tag, tta_views

    x = tf.constant(np.random.default_rng(1).random((2, 16, 16, 1)).astype(np.float32))
    assert len(tta_views(x, "none")) == 1
    a, b = tta_views(x, "flip")
    np.testing.assert_array_equal(b.numpy(), x.numpy()[:, :, ::-1])
    views = tta_views(x, "flip+crop")
    assert len(views) == 4
    np.testing.assert_array_equal(views[3].numpy(), centre_crop(x).numpy()[:, :, ::-1])
    seq = tf.constant(np.random.default_rng(2).random((2, 3, 8, 8, 1)).astype(np.float32))
    np.testing.assert_array_equal(tta_views(seq, "flip")[1].numpy(), seq.numpy()[:, :, :, ::-1])
    assert tta_tag("flip+crop") == "flip-crop"
    with pytest.raises(UsageError, match="Received: tta='rot90'"):
        tta_views(x, "rot90")


@pytest.fixture(scope="module")
def crop_run(brain_store, brain_seed, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("tta") / "run")
    assert main(["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
                 "--epochs", "1", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--tta", "flip+crop",
                 "--quiet"]) == 0
    return run


def test_flip_and_crop_predictions_are_the_logit_mean_of_four_numpy_views(crop_run):
    import keras

    from ichtrain.data import run_stream
    from ichtrain.infer import predict_rows
    from ichtrain.run import input_options, read_record
    from ichtrain.testtime import TTA_CROP

    cfg = read_record(crop_run)
    assert cfg["tta"] == "flip+crop"
    model = keras.models.load_model(os.path.join(crop_run, "model.keras"))
    stream = run_stream(cfg)
    _, p = predict_rows(model, stream, 8, split="val", tta="flip+crop", **input_options(cfg))
    xs = np.concatenate([x.numpy() for x, _ in stream.dataset("val", batch_size=8, weighted=False,
                                                              **input_options(cfg))]).astype(np.float32)
    crops = np.stack([np.stack([_numpy_centre_crop(img[:, :, c], TTA_CROP) for c in range(img.shape[-1])], -1)
                      for img in xs]).astype(np.float32)
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    want = np.mean([logit(np.asarray(model(v, training=False), np.float64))
                    for v in (xs, xs[:, :, ::-1], crops, crops[:, :, ::-1])], axis=0)
    np.testing.assert_allclose(logit(p.astype(np.float64)), want, atol=2e-3)


def test_evaluate_with_other_views_refits_the_calibration_and_keeps_the_runs_files(crop_run, capsys):
    """With the run's own views, evaluate reads its calibration.json; the refit is the same procedure (it
    reproduces that file), and with other views it writes SPLIT-tta-MODE files beside the run's own."""
    from ichtrain.calibration import Calibration, fit_run_calibration
    from ichtrain.data import run_stream
    from ichtrain.run import input_options, load_keras, load_run, read_record

    cfg = read_record(crop_run)
    saved = Calibration.load(crop_run)
    refit = fit_run_calibration(run_stream(cfg), load_keras(load_run(crop_run)[1]), input_options(cfg), cfg["alpha"],
                                tta="flip+crop")
    np.testing.assert_allclose(refit.scale, saved.scale, atol=1e-6)
    np.testing.assert_allclose(refit.shift, saved.shift, atol=1e-6)
    assert main(["evaluate", crop_run, "--split", "test", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["tta"] == "flip+crop" and own["json"].endswith("eval-test.json")
    assert main(["evaluate", crop_run, "--split", "test", "--tta", "none", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["tta"] == "none" and plain["json"].endswith("eval-test-tta-none.json")
    assert json.load(open(os.path.join(crop_run, "eval-test.json")))["tta"] == "flip+crop"  # not replaced
    assert os.path.isfile(os.path.join(crop_run, "report-tta-none.html"))
    with np.load(os.path.join(crop_run, "predictions-test-tta-none.npz")) as d, \
            np.load(os.path.join(crop_run, "predictions-test.npz")) as e:
        np.testing.assert_array_equal(d["rows"], e["rows"])
        assert not np.allclose(d["y_prob_raw"], e["y_prob_raw"])  # other views, other outputs
        cal = Calibration.load(crop_run)
        assert not np.allclose(d["y_prob"], cal.apply(d["y_prob_raw"]))  # its own calibration, not the run's


def test_compare_and_evaluate_a_cv_folder_with_other_views(cv_dir, crop_run, tmp_path, capsys):
    from ichtrain.compare import compare
    from ichtrain.cv import pooled_out_of_fold

    assert main(["evaluate", str(cv_dir), "--tta", "flip+crop", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tta"] == "flip+crop" and res["json"].endswith("eval-oof-tta-flip-crop.json") and res["slices"] == 60
    for k in range(3):  # each fold's test patients predicted anew, the fold's own file kept
        with np.load(cv_dir / f"fold-{k}" / "predictions-test-tta-flip-crop.npz") as d, \
                np.load(cv_dir / f"fold-{k}" / "predictions-test.npz") as e:
            np.testing.assert_array_equal(np.sort(d["rows"]), np.sort(e["rows"]))
    own = pooled_out_of_fold(str(cv_dir))
    assert own["label"] == "oof" and own["tta"] == "flip"
    cmp = compare([str(cv_dir), str(cv_dir)], tta="none", bootstrap=10, out=str(tmp_path))
    assert cmp["tta"] == "none" and cmp["json"].endswith("compare-oof-tta-none.json")
    assert cmp["runs"][1]["weighted_log_loss_minus_first"]["value"] == 0.0


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "RUN", "--tta", "rot90"], "invalid choice"),
    (["compare", "RUN", "RUN", "--tta", "flip+rot"], "invalid choice"),
])
def test_a_bad_tta_exits_2_with_one_line(crop_run, capsys, argv, fragment):
    assert main([crop_run if a == "RUN" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert fragment in err[-1]


def test_predict_with_other_views_writes_what_evaluate_gives_with_them(crop_run, synth_corpus, tmp_path, capsys):
    """predict --tta none on the training DICOMs: each test slice's probabilities are those of evaluate --tta
    none (the same views, the same refitted calibration), not the run's own flip+crop ones."""
    import csv

    from ichtrain.data import run_stream
    from ichtrain.run import read_record

    assert main(["evaluate", crop_run, "--split", "test", "--tta", "none"]) == 0
    assert main(["evaluate", crop_run, "--split", "test"]) == 0  # the run's own views
    assert main(["predict", crop_run, synth_corpus["dicom_dir"], "--out", str(tmp_path / "sub.csv"),
                 "--tta", "none"]) == 0
    capsys.readouterr()
    got = {}
    with open(tmp_path / "sub.csv") as fh:
        for r in csv.DictReader(fh):
            sop, label = r["ID"].rsplit("_", 1)
            got.setdefault(sop, {})[label] = float(r["Label"])
    sops = run_stream(read_record(crop_run)).sop_uids
    from ichprep.labels import SUBTYPES

    for name, atol in (("predictions-test-tta-none.npz", 2e-6), ("predictions-test.npz", None)):
        with np.load(os.path.join(crop_run, name)) as d:
            want, rows = d["y_prob"], d["rows"]
        mine = np.array([[got[sops[r]][s] for s in SUBTYPES] for r in rows])
        if atol:
            np.testing.assert_allclose(mine, want, atol=atol)
        else:  # the run's own views give other probabilities
            assert np.abs(mine - want).max() > 1e-4


@pytest.mark.slow
def test_predict_a_cv_folder_with_other_views(cv_dir, synth_corpus, tmp_path):
    """A cv folder's ensemble is refitted with the views (its folds' test patients predicted with them): the
    submission differs from the one with the folds' own views. (A stack folder refuses other views: test_cv.)"""
    def read(path):
        with open(path) as fh:
            return np.array([float(line.rsplit(",", 1)[1]) for line in fh.read().splitlines()[1:]])

    own, other = tmp_path / "own.csv", tmp_path / "other.csv"
    assert main(["predict", str(cv_dir), synth_corpus["dicom_dir"], "--out", str(own)]) == 0
    assert main(["predict", str(cv_dir), synth_corpus["dicom_dir"], "--out", str(other), "--tta", "flip+crop"]) == 0
    a, b = read(own), read(other)
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4 and ((b > 0) & (b < 1)).all()
