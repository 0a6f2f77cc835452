"""It learns: held-out patients of synthetic corpora (slow).

The AUC >= 0.9 tests use version 1 of the corpus, whose lesions are the only bright structures inside the
skull: they check that the trainer learns an unambiguous signal. Version 2 (the default: anatomy, mimics,
partial volume, subtle lesions) is as hard as real slices for a small model; its test checks that a model
trained on it ranks held-out patients' slices and does not invent bleeds in real slices."""

import json
import os

import pytest

from ichprep.build import BuildConfig, build
from ichprep.synth import SynthConfig, write_corpus
from ichprep.windows import parse_windows
from ichtrain.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("windows,model,epochs,size", [("brain:40/80", "baseline", 8, 128), ("rnn", "rnn", 8, 64)])
def test_model_reaches_auc_0_9_for_any_on_held_out_patients(tmp_path, windows, model, epochs, size):
    corpus = write_corpus(tmp_path / "c", SynthConfig(studies=40, slices=24, seed=5, hemorrhage_fraction=0.7,
                                                      version=1))
    store = str(tmp_path / "s.zarr")
    build(BuildConfig(source=corpus["dicom_dir"], out=store, labels=corpus["labels"],
                      windows=parse_windows(windows), preset=None, workers=2, salt="s"))
    run = str(tmp_path / "run")
    assert main(["fit", store, "--out", run, "--model", model, "--image-size", str(size), "--epochs", str(epochs),
                 "--split", "0.7,0.15,0.15", "--quiet"]) == 0
    assert main(["evaluate", run, "--split", "test"]) == 0
    res = json.load(open(os.path.join(run, "eval-test.json")))
    assert res["labels"]["any"]["roc_auc"] >= 0.9, res["labels"]["any"]
    # calibrated probabilities: better than predicting the train split's label rates for every slice
    c = res["calibration"]
    assert c["weighted_log_loss"] < c["constant_prior_weighted_log_loss"], c


@pytest.mark.slow
def test_series_model_beats_its_slice_model_on_held_out_patients(tmp_path):
    corpus = write_corpus(tmp_path / "c", SynthConfig(studies=40, slices=24, seed=8, hemorrhage_fraction=0.5,
                                                      version=1))
    store = str(tmp_path / "s.zarr")
    build(BuildConfig(source=corpus["dicom_dir"], out=store, labels=corpus["labels"],
                      windows=parse_windows("brain:40/80"), preset=None, workers=2, salt="s"))
    slice_run, series_run, emb = (str(tmp_path / n) for n in ("slice", "series", "emb.zarr"))
    assert main(["fit", store, "--out", slice_run, "--image-size", "128", "--epochs", "8", "--split", "0.6,0.2,0.2",
                 "--quiet"]) == 0
    assert main(["embed", slice_run, "--out", emb, "--quiet"]) == 0
    assert main(["fit", store, "--out", series_run, "--model", "series", "--embeddings", emb, "--quiet"]) == 0
    results = {}
    for run in (slice_run, series_run):
        assert main(["evaluate", run, "--split", "test"]) == 0
        results[run] = json.load(open(os.path.join(run, "eval-test.json")))
    a, b = results[slice_run], results[series_run]
    assert b["weighted_log_loss"] < a["weighted_log_loss"], (a["weighted_log_loss"], b["weighted_log_loss"])
    assert b["weighted_log_loss"] < b["calibration"]["constant_prior_weighted_log_loss"]


@pytest.mark.slow
def test_a_model_trained_on_the_default_corpus_ranks_held_out_slices_and_does_not_call_real_slices_bleeds(
        tmp_path, real_series):
    import csv

    import numpy as np

    corpus = write_corpus(tmp_path / "c", SynthConfig(studies=60, slices=24, seed=41, version=3))
    store = str(tmp_path / "s.zarr")
    build(BuildConfig(source=corpus["dicom_dir"], out=store, labels=corpus["labels"],
                      windows=parse_windows("brain:40/80"), preset=None, workers=2, salt="tr"))
    run = str(tmp_path / "run")
    assert main(["fit", store, "--out", run, "--image-size", "128", "--epochs", "12", "--quiet"]) == 0
    assert main(["evaluate", run, "--split", "test"]) == 0
    res = json.load(open(os.path.join(run, "eval-test.json")))
    assert res["labels"]["any"]["roc_auc"] >= 0.65, res["labels"]["any"]
    # the 32 vendored real slices (one patient, no labels): no sea of invented bleeds (version 1's model: 0.97)
    out = str(tmp_path / "real.csv")
    assert main(["predict", run, real_series, "--out", out]) == 0
    with open(out) as fh:
        p_any = np.array([float(r["Label"]) for r in csv.DictReader(fh) if r["ID"].endswith("_any")])
    assert p_any.size == 32 and p_any.mean() < 0.3, p_any.mean()
