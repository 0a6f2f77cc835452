"""It learns: a held-out patient split of a synthetic corpus at realistic lesion contrast (slow)."""

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
    corpus = write_corpus(tmp_path / "c", SynthConfig(studies=40, slices=24, seed=5, hemorrhage_fraction=0.7))
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
