"""ichtrain models, metrics, fit / evaluate / predict end to end on a tiny store."""

import csv
import json
import os
import re
import shutil
import time

import numpy as np
import pytest

from ichprep.errors import UsageError
from ichtrain.cli import main


def test_report_parameter_counts_at_512():
    from ichtrain.models import build_model

    assert build_model("cnn", 512, l2=0.01).count_params() == 1_527_130
    assert build_model("cnn-described", 512, l2=0.01).count_params() == 264_330
    with pytest.raises(ValueError, match="image_size >= 512"):
        build_model("cnn-described", 256)


def test_the_2_5d_baseline_shares_one_encoder_over_its_slices_in_z_order(tmp_path):
    import keras

    from ichtrain.models import build_model

    m = build_model("baseline", 64, channels=6, l2=1e-4, neighbours=1)  # 3 slices of 2 windows each
    assert build_model("baseline", 128, channels=3, l2=1e-4, neighbours=1).count_params() == 122_630
    assert m.name == "Baseline25D"
    x = np.random.default_rng(2).random((2, 64, 64, 6)).astype(np.float32)
    encoder = m.get_layer("slice_features").layer
    per_slice = keras.Model(m.input, m.get_layer("slice_features").output)(x)  # (2, 3 slices, features)
    for s in range(3):  # slice s is channels 2s, 2s+1 (what the stream delivers), read by the shared encoder
        np.testing.assert_allclose(per_slice[:, s], encoder(x[..., 2 * s:2 * s + 2], training=False),
                                   rtol=1e-5, atol=1e-6)
    other = x.copy()
    other[..., [0, 1, 4, 5]] = np.random.default_rng(3).random((2, 64, 64, 4))
    # untrained, the neighbours weigh nothing: the model starts as the one-slice baseline on the centre slice
    np.testing.assert_allclose(m(other, training=False), m(x, training=False), rtol=1e-6, atol=1e-7)
    context = m.get_layer("context_dense")
    context.set_weights([np.random.default_rng(4).normal(0, 0.1, w.shape) for w in context.get_weights()])
    swapped = x[..., [4, 5, 2, 3, 0, 1]]  # z-1 and z+1 exchanged: once trained, the head tells them apart
    assert not np.allclose(m(x, training=False), m(swapped, training=False))
    m.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "m.keras", compile=False)(x, training=False),
                               m(x, training=False), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the 3 slices"):
        build_model("baseline", 64, channels=4, neighbours=1)


def test_models_reload_from_keras_file_with_same_outputs(tmp_path):
    import keras

    from ichtrain.models import build_model, compile_model

    for name, shape in (("baseline", (2, 64, 64, 1)), ("rnn", (2, 10, 64, 64, 1))):
        m = compile_model(build_model(name, 64))
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        path = tmp_path / f"{name}.keras"
        m.save(path)
        again = keras.models.load_model(path, compile=False)
        np.testing.assert_allclose(m.predict(x, verbose=0), again.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
        assert m.output_shape == (None, 6)


def test_models_take_float16_batches_as_the_float32_values_they_hold():
    """On a GPU the stream hands over float16 (input_options) and the model casts on the device: the
    outputs must be those of the same values given as float32."""
    from ichtrain.models import build_model, compile_model

    m = compile_model(build_model("baseline", 64, channels=3))
    x16 = np.random.default_rng(1).random((2, 64, 64, 3)).astype(np.float16)
    np.testing.assert_allclose(np.asarray(m(x16, training=False)), np.asarray(m(x16.astype(np.float32), training=False)),
                               rtol=1e-6, atol=1e-6)


def test_fit_resume_evaluate_predict(brain_store, brain_seed, synth_corpus, tmp_path, capsys):
    run = str(tmp_path / "run")
    args = ["fit", brain_store, "--out", run, "--model", "baseline", "--image-size", "64", "--batch-size", "8",
            "--epoch-size", "16", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]
    assert main(args + ["--epochs", "2"]) == 0
    for f in ("config.json", "log.csv", "model.keras", "state.json", "checkpoints/last.keras",
              "checkpoints/epoch-002.keras"):
        assert os.path.exists(os.path.join(run, f)), f
    assert "trained 2 epochs" in capsys.readouterr().out
    assert main(args + ["--epochs", "3"]) == 0  # resumes after epoch 2
    assert "trained 1 epochs (3 done, resumed)" in capsys.readouterr().out
    with open(os.path.join(run, "log.csv")) as fh:
        log = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in log] == [0, 1, 2]
    # cosine from --lr 1e-3 to 5% of it at the last epoch of 2, then of 3 (hand values), as Adam ran them
    np.testing.assert_allclose([float(r["learning_rate"]) for r in log], [1e-3, 5e-5, 5e-5], rtol=1e-5)
    assert main(args + ["--epochs", "3", "--lr", "0.5"]) == 2  # another configuration into the same run
    assert "another configuration" in capsys.readouterr().err
    big = args[:args.index("--epoch-size")] + args[args.index("--epoch-size") + 2:]  # an epoch = the train split
    big[big.index("--batch-size") + 1] = "4096"
    assert main(big + ["--out", str(tmp_path / "big")]) == 2  # not one whole batch: refused, no run folder left
    err = capsys.readouterr().err
    assert "fewer than --batch-size 4096" in err and err.count("\n") == 1 and not (tmp_path / "big").exists()

    assert main(["evaluate", run, "--split", "val", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["slices"] > 0 and set(res["labels"]) == {"epidural", "intraparenchymal", "intraventricular",
                                                       "subarachnoid", "subdural", "any"}
    assert res["weighted_log_loss"] > 0 and len(res["thresholds"]) == 21
    c = res["calibration"]
    assert res["calibrated"] and c["weighted_log_loss"] == res["weighted_log_loss"]
    assert c["constant_prior_weighted_log_loss"] > 0 and set(c["labels"]["any"]) >= {"ece", "reliability"}
    cal = json.load(open(os.path.join(run, "calibration.json")))
    saved = np.load(os.path.join(run, "predictions-val.npz"))
    z = np.log(np.clip(saved["y_prob_raw"], 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(saved["y_prob_raw"], 1e-7, 1 - 1e-7))
    expected = 1 / (1 + np.exp(-(np.array(cal["scale"]) * (z + np.array(cal["offset"])) + np.array(cal["shift"]))))
    np.testing.assert_allclose(saved["y_prob"], expected, rtol=1e-5, atol=1e-7)
    # the natural prior is the train split's label rate (smoothed by half a slice)
    import zarr

    from ichtrain.data import StoreStream

    g = zarr.open_group(brain_store, mode="r")
    train = StoreStream(brain_store, fractions=(0.6, 0.2, 0.2), seed=brain_seed).splits["train"]
    labels = np.asarray(g["labels"][:], np.float64)[train]
    np.testing.assert_allclose(cal["natural_prior"], (labels.sum(0) + 0.5) / (len(train) + 1), rtol=1e-9)
    for name in ("val-sensitivity-fallout.png", "val-specificity-missrate.png"):
        png = open(os.path.join(run, "plots", name), "rb").read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    src = tmp_path / "dicoms"
    shutil.copytree(synth_corpus["dicom_dir"], src)
    (src / "broken.dcm").write_bytes(b"garbage")
    out_csv = tmp_path / "sub" / "submission.csv"
    assert main(["predict", run, str(src), "--out", str(out_csv)]) == 0
    captured = capsys.readouterr()
    assert "broken.dcm" in captured.err and "1 files could not be read" in captured.out
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 60 * 6
    ids = {r["ID"].rsplit("_", 1)[0] for r in rows}
    assert ids == {f[:-4] for f in os.listdir(synth_corpus["dicom_dir"])}
    assert all(0.0 <= float(r["Label"]) <= 1.0 for r in rows)
    # predict writes the calibrated probabilities: for the val slices, those evaluate saved
    by_id = {r["ID"]: float(r["Label"]) for r in rows}
    sop = np.asarray(g["sop_uid"][:], dtype=object)
    for k, row in enumerate(saved["rows"][:8]):
        assert by_id[f"{sop[row]}_any"] == pytest.approx(float(saved["y_prob"][k, 5]), abs=2e-6)
    assert [r["ID"].rsplit("_", 1)[1] for r in rows[:6]] == ["epidural", "intraparenchymal", "intraventricular",
                                                            "subarachnoid", "subdural", "any"]


@pytest.mark.parametrize("argv,match", [
    (["fit", "{store}", "--out", "{tmp}/r", "--model", "vgg"], "invalid choice"),
    (["fit", "{store}", "--out", "{tmp}/r", "--split", "0.5,0.5"], "three fractions"),
    (["fit", "{store}", "--out", "{tmp}/r", "--model", "rnn"], "one channel"),
    (["evaluate", "{tmp}/nothing"], "No run"),
])
def test_bad_input_exit_2(argv, match, brain_store, tmp_path, capsys):
    argv = [a.format(store=brain_store, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("ichtrain: error:")


def test_a_fit_that_diverges_stops_names_it_and_keeps_no_nan_checkpoint(brain_store, brain_seed, tmp_path):
    """Found by the 2,000-example flag fuzz: --l2 1.6e20 trained to NaN and failed in calibration with a
    numpy warning. Such values are refused now (--lr and --l2 at most 1); a run that still diverges stops at
    the first NaN batch, saves no checkpoint of it, writes no model or calibration, and says what to change."""
    from ichtrain.fit import FitConfig, fit

    with pytest.raises(UsageError, match=r"--lr in \(0, 1\] and --l2 in \[0, 1\]"):
        FitConfig(store=brain_store, out=str(tmp_path / "x"), l2=1.6e20)
    cfg = FitConfig(store=brain_store, out=str(tmp_path / "run"), image_size=32, batch_size=4, epoch_size=8,
                    epochs=2, fractions=(0.6, 0.2, 0.2), seed=brain_seed)
    object.__setattr__(cfg, "l2", 1.6e20)  # past the validation: what a diverging run looks like
    with pytest.raises(UsageError, match=r"Training diverged: the loss became nan in the run's epoch (\d).*lower --lr "
                                         "or --l2") as info:
        fit(cfg, verbose=0)
    diverged = int(re.search(r"epoch (\d)", str(info.value)).group(1))
    run = tmp_path / "run"
    assert not (run / "model.keras").exists() and not (run / "calibration.json").exists()
    assert not (run / "checkpoints" / f"epoch-{diverged:03d}.keras").exists()  # no checkpoint of a NaN epoch
    done = json.loads((run / "state.json").read_text())["epochs_done"] if (run / "state.json").exists() else 0
    assert done == diverged - 1


def test_fit_that_fails_mid_epoch_exits_with_one_line(brain_store, tmp_path):
    """A read error inside model.fit (a damaged shard) ends the process: exit 1, one stderr line, no hang."""
    import glob
    import subprocess
    import sys

    store = tmp_path / "damaged.zarr"
    shutil.copytree(brain_store, store)
    shards = sorted(glob.glob(str(store / "images" / "c" / "**" / "*"), recursive=True))
    shards = [s for s in shards if os.path.isfile(s)]
    assert shards, "no image shard files found"
    for s in shards:  # every shard: whichever block the sampler reads first fails
        data = bytearray(open(s, "rb").read())
        data[: len(data) // 2] = os.urandom(len(data) // 2)
        open(s, "wb").write(bytes(data))
    cmd = [sys.executable, "-c", "from ichtrain.cli import console_main; console_main()", "fit", str(store),
           "--out", str(tmp_path / "run"), "--model", "baseline", "--image-size", "64", "--batch-size", "8",
           "--epoch-size", "16", "--epochs", "1", "--quiet"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ichtrain:")]
    assert len(lines) == 1 and lines[0].startswith("ichtrain: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "could not read slices" in lines[0] and "ichprep verify" in lines[0]
    assert time.monotonic() - t0 < 120


def test_evaluate_refuses_a_store_whose_split_changed(synth_corpus, tmp_path, capsys):
    from ichprep.cli import main as ichprep_main

    store, run = str(tmp_path / "s.zarr"), str(tmp_path / "run")
    build = ["build", synth_corpus["dicom_dir"], "--labels", synth_corpus["labels"], "--out", store, "--windows",
             "brain", "--workers", "0", "--shard-slices", "16", "--quiet"]
    assert ichprep_main(build + ["--salt", "first"]) == 0
    assert main(["fit", store, "--out", run, "--image-size", "32", "--epochs", "1", "--epoch-size", "8",
                 "--batch-size", "8", "--split", "0.4,0.3,0.3", "--quiet"]) == 0
    recorded = json.load(open(os.path.join(run, "config.json")))["split"]
    assert sum(recorded["slices"].values()) == 60 and set(recorded["digest"]) == {"train", "val", "test"}
    assert main(["evaluate", run, "--split", "train"]) == 0
    capsys.readouterr()

    assert ichprep_main(build + ["--salt", "second", "--overwrite"]) == 0  # same DICOMs, other patient keys
    assert main(["evaluate", run, "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another salt" in err and err.startswith("ichtrain: error:")

    labels = tmp_path / "fewer.csv"  # the same salt, but a patient's slices lose their labels
    rows = open(synth_corpus["labels"]).read().splitlines()
    labels.write_text("\n".join(rows[: len(rows) // 2]) + "\n")
    build[build.index("--labels") + 1] = str(labels)
    assert ichprep_main(build + ["--salt", "first", "--overwrite"]) == 0
    assert main(["evaluate", run, "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "slices or labels are not those" in err and "slices" in err


@pytest.mark.parametrize("backbone,channels", [("efficientnetb0", 1),
                                               pytest.param("resnet50", 3, marks=pytest.mark.slow),  # 9 s
                                               pytest.param("densenet121", 5, marks=pytest.mark.slow)])  # 30 s
def test_backbones_load_a_weights_file_and_reload(backbone, channels, tmp_path):
    """A weights file the test writes (random ImageNet-shaped weights) is what the backbone starts from;
    the whole model saves and reloads with the same outputs."""
    import keras

    from ichtrain.models import BACKBONES, build_model

    cls = getattr(keras.applications, BACKBONES[backbone][0])
    donor = cls(include_top=False, weights=None, pooling="avg", input_shape=(32, 32, 3))
    path = tmp_path / f"{backbone}.weights.h5"
    donor.save_weights(path)
    m = build_model("backbone", 32, channels, 1e-4, backbone=backbone, weights=str(path))
    inner = m.get_layer(donor.name)
    for a, b in zip(inner.weights, donor.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(0).random((2, 32, 32, channels)).astype(np.float32)
    m.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(m.predict(x, verbose=0), again.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert m.output_shape == (None, 6) and m.input_shape == (None, 32, 32, channels)


def _backbone_fit(brain_store, brain_seed, run):
    return ["fit", brain_store, "--out", run, "--model", "backbone", "--image-size", "32", "--epochs", "1",
            "--epoch-size", "16", "--batch-size", "8", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]


@pytest.mark.slow  # 35-45 s (an EfficientNet's train step traced on CPU); its models load and reload below
def test_backbone_fit_cli(brain_store, brain_seed, tmp_path):
    run = str(tmp_path / "run")
    assert main(_backbone_fit(brain_store, brain_seed, run) + ["--weights", "none"]) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["backbone"] == "efficientnetb0" and cfg["weights"] is None
    assert os.path.isfile(os.path.join(run, "calibration.json"))


def test_backbone_fit_refuses_a_missing_weights_file(brain_store, brain_seed, tmp_path, capsys):
    run = str(tmp_path / "r2")
    assert main(_backbone_fit(brain_store, brain_seed, run) + ["--weights", str(tmp_path / "missing.h5")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert not os.path.exists(run)


@pytest.mark.parametrize("flag, fragment", [
    (["--epochs", "0"], "--epochs an integer >= 1"),
    (["--l2", "nan"], "--l2 in [0, 1]"),
    (["--l2", "1.6e20"], "--l2 in [0, 1]"),
    (["--lr", "inf"], "--lr in (0, 1]"),
    (["--lr", "0"], "--lr in (0, 1]"),
    (["--alpha", "nan"], "--alpha a number in [0, 1]"),
    (["--seed", "-1"], "--seed an integer in [0, 2**32)"),
    (["--image-size", "0"], "--image-size an integer in [32, 1024]"),
    (["--image-size", "-1"], "--image-size an integer in [32, 1024]"),
    (["--image-size", "100000"], "--image-size an integer in [32, 1024]"),
    (["--weights", "/no/such/file.h5"], "not a file"),
    (["--split", "nan,0.1,0.1"], "finite --split"),
])
def test_bad_values_exit_2_before_the_run_folder_is_made(brain_store, tmp_path, capsys, flag, fragment):
    """Issue 32, items 4 and 5: every value checked before the disk is touched; none silently replaced."""
    out = tmp_path / "run"
    assert main(["fit", brain_store, "--out", str(out), "--quiet", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not out.exists()


def test_a_second_fit_into_a_run_folder_in_use_is_refused(brain_store, brain_seed, tmp_path, capsys):
    """Issue 32, item 2: two fits into one --out both ran, interleaving log.csv. The run folder has a lock as
    builds do (RUN.lock with the pid; a dead holder's lock is taken over)."""
    import signal
    import subprocess
    import sys

    from conftest import default_signals

    run = str(tmp_path / "run")
    args = ["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
            "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", "from ichtrain.cli import console_main; console_main()",
                             *args, "--epochs", "400"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(run, "state.json")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the first fit has trained an epoch: it holds the lock
    assert proc.poll() is None and os.path.exists(run + ".lock")
    assert main(args + ["--epochs", "400"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"Another ichtrain fit (pid {proc.pid}) is writing" in err[0], err
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not os.path.exists(run + ".lock")
    with open(run + ".lock", "w") as fh:  # a lock left by a process that is gone is taken over
        fh.write("999999999")
    assert main(args + ["--epochs", "2"]) == 0


def test_tensorflow_warnings_reach_each_tests_own_stderr(capsys):
    """A TensorFlow warning goes to the stderr of the test that runs, never to a closed capture of an earlier one
    (tests/conftest.py's root handler; CI once saw '--- Logging error ---' in a fine-tuning test's stderr)."""
    import logging

    import tensorflow  # noqa: F401

    logging.getLogger("tensorflow").warning("a warning for this test")
    err = capsys.readouterr().err
    assert "a warning for this test" in err and "Logging error" not in err
