"""Embeddings and the series model: ichtrain embed, fit --model series, evaluate and predict."""

import csv
import json
import os

import numpy as np
import pytest
import zarr

from ichtrain.cli import main


@pytest.fixture(scope="module")
def slice_run(brain_store, brain_seed, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("slice") / "run")
    assert main(["fit", brain_store, "--out", run, "--image-size", "32", "--epochs", "1", "--epoch-size", "16",
                 "--batch-size", "8", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]) == 0
    return run


def test_embeddings_are_the_layer_before_the_head_and_resume(slice_run, brain_store, tmp_path, capsys):
    import keras

    emb = str(tmp_path / "emb.zarr")
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    g = zarr.open_group(emb, mode="r")
    e = g["embeddings"][:]
    store = zarr.open_group(brain_store, mode="r")
    assert e.shape == (60, 64) and e.dtype == np.float16
    # an independent reference: area-downscale in numpy, run the model up to the head's input
    model = keras.models.load_model(os.path.join(slice_run, "model.keras"), compile=False)
    feats = keras.Model(model.input, model.get_layer("labels").input)
    imgs = store["images"][:8].astype(np.float32).reshape(8, 32, 16, 32, 16, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(e[:8].astype(np.float32), np.asarray(feats(imgs)), rtol=2e-2, atol=2e-2)
    # an interrupted run (a block not done) is finished by the same command, with the same values
    g2 = zarr.open_group(emb, mode="r+")
    g2["block_done"][0] = False
    g2["embeddings"][:8] = np.zeros((8, 64), np.float16)
    capsys.readouterr()
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    assert "1 blocks run" in capsys.readouterr().out
    np.testing.assert_array_equal(zarr.open_group(emb, mode="r")["embeddings"][:], e)


def test_series_model_fits_evaluates_and_predicts_from_dicoms(slice_run, brain_store, synth_corpus, tmp_path, capsys):
    emb = str(tmp_path / "emb.zarr")
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    run = str(tmp_path / "series")
    assert main(["fit", brain_store, "--out", run, "--model", "series", "--embeddings", emb, "--epochs", "3",
                 "--quiet"]) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    slice_cfg = json.load(open(os.path.join(slice_run, "config.json")))
    assert cfg["split"] == slice_cfg["split"]  # the slice run's patients, nothing else
    assert os.path.isfile(os.path.join(run, "calibration.json"))
    capsys.readouterr()
    assert main(["evaluate", run, "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["slices"] == slice_cfg["split"]["slices"]["test"] and res["model"] == "series"
    out_csv = tmp_path / "sub.csv"
    assert main(["predict", run, synth_corpus["dicom_dir"], "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 60 * 6 and all(0 <= float(r["Label"]) <= 1 for r in rows)


def test_series_fit_resumes_from_its_checkpoint(slice_run, brain_store, tmp_path, capsys):
    emb = str(tmp_path / "emb.zarr")
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    run = str(tmp_path / "series")
    fit = ["fit", brain_store, "--out", run, "--model", "series", "--embeddings", emb, "--quiet", "--epochs"]
    assert main(fit + ["2"]) == 0
    first_log = open(os.path.join(run, "log.csv")).read().splitlines()
    assert len(first_log) == 3 and json.load(open(os.path.join(run, "state.json"))) == {"epochs_done": 2}
    capsys.readouterr()
    assert main(fit + ["2"]) == 0
    assert "already trained" in capsys.readouterr().out
    os.remove(os.path.join(run, "calibration.json"))  # stopped after its last checkpoint: finishes, trains nothing
    assert main(fit + ["2"]) == 0
    assert os.path.isfile(os.path.join(run, "calibration.json")) and "(2 done, resumed)" in capsys.readouterr().out
    assert main(fit + ["4"]) == 0
    assert "trained 2 epochs (4 done, resumed)" in capsys.readouterr().out
    log = open(os.path.join(run, "log.csv")).read().splitlines()
    assert log[:3] == first_log and [r.split(",")[0] for r in log[1:]] == ["0", "1", "2", "3"]
    assert json.load(open(os.path.join(run, "state.json"))) == {"epochs_done": 4}


def test_a_series_of_one_slice_and_mismatched_embeddings(slice_run, brain_store, synth_corpus, tmp_path, capsys):
    from ichprep.build import BuildConfig, build
    from ichprep.windows import parse_windows
    from ichtrain.series import build_series_model

    m = build_series_model(8)
    assert m.predict(np.ones((1, 1, 8), np.float32), verbose=0).shape == (1, 1, 6)
    emb = str(tmp_path / "emb.zarr")
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    other = str(tmp_path / "other.zarr")  # the same DICOMs in 16-slice shards: same rows, so it matches...
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=other, labels=synth_corpus["labels"],
                      windows=parse_windows("brain"), preset=None, workers=0, salt="s", shard_slices=16))
    half = str(tmp_path / "half")  # ...while a store of other DICOMs does not
    os.makedirs(half)
    for f in sorted(os.listdir(synth_corpus["dicom_dir"]))[:30]:
        os.link(os.path.join(synth_corpus["dicom_dir"], f), os.path.join(half, f))
    small = str(tmp_path / "small.zarr")
    build(BuildConfig(source=half, out=small, labels=synth_corpus["labels"], windows=parse_windows("brain"),
                      preset=None, workers=0, salt="s", shard_slices=8))
    capsys.readouterr()
    assert main(["fit", small, "--out", str(tmp_path / "r"), "--model", "series", "--embeddings", emb]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ichtrain: error:") and err.count("\n") == 1
    assert main(["fit", brain_store, "--out", str(tmp_path / "r2"), "--model", "series"]) == 2
    assert "--embeddings" in capsys.readouterr().err


def test_compare_runs_on_the_same_patients_with_patient_bootstrap(slice_run, brain_store, tmp_path,
                                                                    capsys):
    from ichtrain.metrics import weighted_log_loss

    emb = str(tmp_path / "emb.zarr")
    series = str(tmp_path / "series")
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    assert main(["fit", brain_store, "--out", series, "--model", "series", "--embeddings", emb, "--epochs", "2",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", slice_run, series, "--bootstrap", "50", "--out", str(tmp_path / "cmp"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in res["runs"]] == [slice_run, series] and res["patients"] >= 1
    first, second = res["runs"]
    assert first["weighted_log_loss_minus_first"]["value"] == 0.0
    saved = np.load(os.path.join(series, "predictions-test.npz"))
    assert second["weighted_log_loss"]["value"] == pytest.approx(weighted_log_loss(saved["y_true"], saved["y_prob"]))
    lo, hi = second["weighted_log_loss"]["ci"]
    assert lo <= hi and os.path.isfile(tmp_path / "cmp" / "compare-test.html")
    other = tmp_path / "other"  # a run whose recorded test split holds other slices
    import shutil

    shutil.copytree(slice_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["split"]["digest"]["test"] = "0" * 32
    (other / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["compare", slice_run, str(other), "--bootstrap", "20"]) == 2
    assert "other test slices" in capsys.readouterr().err


def test_series_model_starts_as_the_calibrated_slice_head(slice_run, brain_store, tmp_path):
    """--series-init slice: untrained, each step's output is the calibrated slice model's (a numpy
    reference: the slice head's weights, then Calibration.apply), whatever the rest of the series holds;
    once its context weights move, the neighbours count."""
    import keras

    from ichtrain.calibration import Calibration
    from ichtrain.series import build_series_model, calibrated_head

    model = keras.models.load_model(os.path.join(slice_run, "model.keras"), compile=False)
    w, b = model.get_layer("labels").get_weights()
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 5, w.shape[0])).astype(np.float32)
    raw = 1 / (1 + np.exp(-(x.reshape(-1, w.shape[0]).astype(np.float64) @ w + b)))
    want = Calibration.load(slice_run).apply(raw).reshape(2, 5, 6)
    m = build_series_model(w.shape[0], 16, calibrated_head(slice_run))
    np.testing.assert_allclose(np.asarray(m(x)), want, rtol=1e-4, atol=1e-5)
    other = x.copy()
    other[:, [0, 1, 3, 4]] = rng.normal(0, 1, (2, 4, w.shape[0]))
    np.testing.assert_allclose(np.asarray(m(other))[:, 2], want[:, 2], rtol=1e-4, atol=1e-5)
    ctx = m.get_layer("context_logits")
    ctx.set_weights([rng.normal(0, 0.5, ctx.get_weights()[0].shape), ctx.get_weights()[1]])
    assert np.abs(np.asarray(m(other))[:, 2] - np.asarray(m(x))[:, 2]).max() > 1e-3
    with pytest.raises(ValueError, match="kernel"):
        build_series_model(w.shape[0] + 1, 16, calibrated_head(slice_run))


def test_series_init_and_schedule_are_recorded_and_checked(slice_run, brain_store, tmp_path, capsys):
    emb = str(tmp_path / "emb.zarr")
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    run = str(tmp_path / "series")
    fit = ["fit", brain_store, "--out", run, "--model", "series", "--embeddings", emb, "--quiet", "--epochs", "3"]
    assert main(fit) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert (cfg["init"], cfg["lr_schedule"]) == ("slice", "cosine")
    log = [line.split(",") for line in open(os.path.join(run, "log.csv")).read().splitlines()[1:]]
    assert [float(r[3]) for r in log] == pytest.approx([1e-3, 1e-3 * 0.525, 5e-5])  # cosine, floor 5% of --lr
    capsys.readouterr()
    assert main(fit + ["--series-init", "scratch"]) == 2  # another configuration in the same folder
    assert "another configuration" in capsys.readouterr().err
    for key in ("init", "lr_schedule"):  # a run from before these fields: it was scratch at a constant rate
        cfg.pop(key)
    json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
    assert main(fit + ["--series-init", "scratch", "--lr-schedule", "constant"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert main(["fit", brain_store, "--out", str(tmp_path / "s"), "--series-init", "slice", "--quiet"]) == 2
    assert "--series-init is read by --model series only" in capsys.readouterr().err
