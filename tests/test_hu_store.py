"""The hu store (issue 17): int16 Hounsfield units stored once, windows applied when read.

References are independent of the code under test: pydicom's own modality LUT (conftest.reference_hu)
for the stored HU, and stores built with the windows baked in (the build's windowing path) for the
windows the stream applies."""

import json
import os

import numpy as np
import pytest

from conftest import nonempty_split_seed, reference_hu
from ichprep import store as st
from ichprep.diskspace import size_on_disk
from ichprep.build import BuildConfig, build
from ichprep.cli import main as ichprep_main
from ichprep.errors import SchemaError, UsageError
from ichprep.kernels import hu_slice
from ichprep.windows import parse_windows

THREE = "brain:40/80,subdural:80/200,bone:600/2800"


@pytest.fixture(scope="module")
def stores(synth_corpus, tmp_path_factory):
    """hu, cnn, rnn and three-window stores of the same DICOMs (same salt: the same splits)."""
    root = tmp_path_factory.mktemp("hu")
    out = {}
    for name, spec, preset in (("hu", "hu", "hu"), ("cnn", "cnn", "cnn"), ("rnn", "rnn", "rnn"), ("three", THREE, None)):
        out[name] = str(root / f"{name}.zarr")
        build(BuildConfig(source=synth_corpus["dicom_dir"], out=out[name], labels=synth_corpus["labels"],
                          windows=parse_windows(spec), preset=preset, workers=0, salt="s", shard_slices=8))
    return out


def test_hu_slice_matches_numpy_rounding_and_clips_never_wraps():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 4096, (64, 48)).astype(np.uint16)
    for slope, intercept, fix12 in ((1.0, -1024.0, False), (1.0, -1000.0, True), (0.37, -1024.25, False),
                                    (20.0, -1024.0, False)):
        x = raw.astype(np.int64)
        if fix12:
            x = x + 1000
            x[x >= 4096] -= 4096
        ref = np.rint(x * np.float64(slope) + intercept)
        out, lo, hi, clipped = hu_slice(raw, slope, intercept, fix12)
        assert out.dtype == np.int16
        assert np.array_equal(out, np.clip(ref, -32768, 32767)), (slope, intercept)
        assert (lo, hi) == (ref.min(), ref.max())
        assert clipped == int(((ref < -32768) | (ref > 32767)).sum())
    assert clipped > 0  # the slope-20 case leaves int16: clipped to 32767, not wrapped negative


def test_hu_store_holds_pydicoms_hu_exactly(stores, synth_corpus):
    g, info = st.open_store(stores["hu"])
    assert info.hu and st.images(g).dtype == np.int16 and info.channels == 1
    from ichprep.verify import find_sources

    sops = list(st.column(g, "sop_uid"))
    files = find_sources(synth_corpus["dicom_dir"], sops)
    assert len(files) == len(sops)
    images = np.asarray(st.images(g)[:])
    for i, sop in enumerate(sops):
        ref = reference_hu(files[sop])
        assert np.array_equal(images[i, :, :, 0], np.rint(ref)), sop
    wc = st.column(g, "window_center")
    assert np.isfinite(wc).all()  # every synthetic file has WindowCenter: 'default' works at read time
    assert info.fixed.get("hu_clipped", 0) == 0


def test_hu_store_is_smaller_than_the_cnn_store(stores):
    assert size_on_disk(os.path.join(stores["hu"], "images")) < size_on_disk(os.path.join(stores["cnn"], "images"))


@pytest.mark.parametrize("windows, other, neighbours, sequence, dtype, size", [
    ("cnn", "cnn", 0, False, "float16", None), ("rnn", "rnn", 0, False, "float16", None),
    (THREE, "three", 0, False, "float16", None), (THREE, "three", 1, False, "float16", None),
    ("cnn", "cnn", 2, False, "float16", None), (THREE, "three", 2, False, "float32", 64),
    # planes written straight in the asked dtype (the rnn's sequence, one window): no transpose, no cast
    ("rnn", "rnn", 0, True, "float16", None), ("rnn", "rnn", 0, True, "float32", None),
    ("cnn", "cnn", 0, False, "float32", None), ("rnn", "rnn", 0, True, "float32", 64),
    (THREE, "three", 0, True, "float32", None)])
def test_windows_in_the_stream_equal_a_windowed_store(stores, windows, other, neighbours, sequence, dtype, size):
    from ichtrain.data import StoreStream

    a = StoreStream(stores["hu"], windows=windows)
    b = StoreStream(stores[other])
    assert a.window_names == b.window_names and a.channels == b.channels
    assert np.array_equal(a.splits["train"], b.splits["train"])
    kw = dict(batch_size=8, weighted=False, dtype=dtype, neighbours=neighbours, sequence=sequence, image_size=size)
    seen = 0
    for (xa, ya), (xb, yb) in zip(a.dataset("train", **kw), b.dataset("train", **kw)):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype
        assert np.array_equal(xa.numpy(), xb.numpy())  # the build's kernel on stored HU: bit-identical
        assert np.array_equal(ya.numpy(), yb.numpy())
        seen += len(xa)
    assert seen == a.splits["train"].size


def test_window_spec_on_a_windowed_store_is_refused_naming_its_windows(stores):
    from ichtrain.data import StoreStream

    with pytest.raises(UsageError, match="holds windows brain:40/80"):
        StoreStream(stores["three"], windows="cnn")
    with pytest.raises(UsageError, match="hu"):
        StoreStream(stores["hu"], windows="hu")


def test_old_schema_hu_store_gets_a_clear_message(stores, tmp_path):
    import shutil

    import zarr

    copy = str(tmp_path / "old.zarr")
    shutil.copytree(stores["hu"], copy)
    g = zarr.open_group(copy, mode="r+")
    attrs = dict(g.attrs["ichprep"], schema_version=1)
    g.attrs["ichprep"] = attrs
    with pytest.raises(SchemaError, match="rebuild it with 'ichprep build --preset hu'"):
        st.open_store(copy)


def test_cli_hu_info_verify_preview_and_fit_refusals(stores, tmp_path, capsys, synth_corpus):
    assert ichprep_main(["info", stores["hu"], "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["preset"] == "hu" and d["dtype"].startswith("int16") and d["schema_version"] == st.SCHEMA_VERSION
    assert ichprep_main(["verify", stores["hu"], "--source", synth_corpus["dicom_dir"]]) == 0
    capsys.readouterr()
    assert ichprep_main(["stats", stores["hu"], "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["slices"] == st.open_store(stores["hu"])[1].n and {"hu_rounded", "hu_clipped"} <= set(d["fixed"])
    assert ichprep_main(["preview", stores["hu"], "--windows", THREE, "--out", str(tmp_path / "p.png")]) == 0
    assert "3 panels" in capsys.readouterr().out
    assert ichprep_main(["preview", stores["cnn"], "--windows", "rnn", "--out", str(tmp_path / "q.png")]) == 2
    assert "holds windows full:full" in capsys.readouterr().err

    from ichtrain.cli import main as ichtrain_main

    rc = ichtrain_main(["fit", stores["cnn"], "--out", str(tmp_path / "r1"), "--windows", "rnn", "--epochs", "1"])
    assert rc == 2 and "holds windows full:full" in capsys.readouterr().err
    rc = ichtrain_main(["fit", stores["hu"], "--out", str(tmp_path / "r2"), "--model", "rnn", "--windows", "cnn",
                        "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--windows rnn" in err and "Traceback" not in err


@pytest.mark.parametrize("store, windows", [("three", None), ("hu", THREE)])
def test_baseline_takes_three_windows_as_channels_and_predicts(stores, tmp_path, capsys, store, windows):
    """The issue's crash: a three-window store and --model baseline. Now C windows are C channels, from a
    windowed store or an hu store read with those windows; evaluate reads the run's windows back."""
    from ichtrain.cli import main as ichtrain_main

    run = str(tmp_path / "run")
    args = ["fit", stores[store], "--out", run, "--model", "baseline", "--image-size", "64", "--epochs", "1",
            "--batch-size", "8", "--epoch-size", "16", "--split", "0.6,0.2,0.2",
            "--seed", str(nonempty_split_seed(stores[store]))] + (["--windows", windows] if windows else [])
    assert ichtrain_main(args) == 0, capsys.readouterr().err
    cfg = json.loads(open(os.path.join(run, "config.json")).read())
    assert cfg["channels"] == 3 and cfg["window_names"] == ["brain", "subdural", "bone"]
    assert cfg["store_layout"] == ("hu" if store == "hu" else "windows")
    assert ichtrain_main(["evaluate", run, "--split", "test"]) == 0, capsys.readouterr().err


def test_hu_build_of_defective_files_keeps_every_usable_slice_and_verifies(tmp_path, synth_corpus, capsys):
    """The robustness folder (truncated, not DICOM, undecodable, duplicate, non-512 slices ...) as an hu
    store: a slice without window tags is usable here (no window is applied at build time), the resized
    one is counted, and verify's fresh decode agrees."""
    from test_robustness import _make_defects

    src = tmp_path / "src"
    src.mkdir()
    expected = _make_defects(src, synth_corpus)
    out = str(tmp_path / "hu.zarr")
    assert ichprep_main(["build", str(src), "--out", out, "--preset", "hu", "--workers", "0", "--quiet"]) == 0
    g, info = st.open_store(out)
    status = st.column(g, "status")
    assert info.fixed["resized"] == 1 and info.counts["written"] == int((status == 0).sum())
    assert info.counts["written"] >= 7 and info.counts["rejected"] <= len(expected)
    assert not np.asarray(st.images(g)[:])[status != 0].any()  # a rejected row is zeros
    capsys.readouterr()
    assert ichprep_main(["verify", out, "--source", str(src), "--sample", "64"]) == 0, capsys.readouterr()


# -- windows in the model's graph (--windows-on model): the stored int16 HU go to the device --------------
@pytest.mark.parametrize("windows, other, neighbours, sequence, size", [
    ("cnn", "cnn", 0, False, None), ("rnn", "rnn", 0, True, None), (THREE, "three", 0, False, None),
    (THREE, "three", 1, False, None), ("rnn", "rnn", 0, True, 32), ("cnn", "cnn", 1, False, 32)])
def test_windows_in_the_model_equal_a_windowed_store(stores, windows, other, neighbours, sequence, size):
    """hu_windows_layer over the model-mode stream against the windowed store's own slices (the build's kernel), at
    float32: bit-identical at full size; resized, the same area resize of the same float16 values."""
    from ichtrain.data import StoreStream
    from ichtrain.graphwindows import hu_windows_layer

    a = StoreStream(stores["hu"], windows=windows)
    b = StoreStream(stores[other])
    kw = dict(batch_size=8, weighted=False, neighbours=neighbours, sequence=sequence)
    layer = hu_windows_layer(size or a.info.image_size, sequence)
    seen = 0
    for ((hu, params), ya), (xb, yb) in zip(a.dataset("train", windows_on="model", **kw),
                                           b.dataset("train", dtype="float32", image_size=size, **kw)):
        assert hu.dtype == np.int16 and hu.shape[-1] == 2 * neighbours + 1
        assert params.shape[1:] == (2 * neighbours + 1, 3, a.channels)
        xa = layer([hu, params]).numpy()
        assert xa.shape == tuple(xb.shape) and xa.dtype == np.float32
        if size is None:
            assert np.array_equal(xa, xb.numpy())
        else:  # resize kernels may sum in another order: within a float32 rounding of values in [0, 1]
            np.testing.assert_allclose(xa, xb.numpy(), rtol=0, atol=1e-6)
        assert np.array_equal(ya.numpy(), yb.numpy())
        seen += len(xa)
    assert seen == a.splits["train"].size


@pytest.mark.parametrize("windows, sequence", [(THREE, False), ("rnn", True)])
def test_augmentation_in_the_model_gives_the_batches_the_reader_augments(stores, windows, sequence):
    """Windows in the model, then the augment layer: its j-th training call gives batch j of the reader's
    augmented stream (same seed), within a float32 rounding; calls that are not training pass the batch
    through and do not count. The first three batches (each a fresh draw of maps)."""
    from ichtrain.augment import augment_layer
    from ichtrain.data import StoreStream
    from ichtrain.graphwindows import hu_windows_layer

    a = StoreStream(stores["hu"], windows=windows)
    kw = dict(batch_size=8, weighted=False, image_size=32, sequence=sequence)
    windows_layer = hu_windows_layer(32, sequence)
    augment = augment_layer("strong", 7, sequence)
    moved = 0
    for _, ((hu, params), ya), (xb, yb), (x0, _) in zip(
            range(3), a.dataset("train", windows_on="model", **kw),
            a.dataset("train", windows_on="reader", dtype="float32", augment="strong", augment_seed=7, **kw),
            a.dataset("train", windows_on="reader", dtype="float32", **kw)):
        windowed = windows_layer([hu, params])
        np.testing.assert_array_equal(augment(windowed, training=False).numpy(), windowed.numpy())
        xa = augment(windowed, training=True).numpy()
        np.testing.assert_allclose(xa, xb.numpy(), rtol=0, atol=1e-5)
        assert np.array_equal(ya.numpy(), yb.numpy())
        moved += int(np.abs(xa - x0.numpy()).max() > 0.05)
    assert int(augment.batches.numpy()) == 3  # the training calls only
    assert moved >= 2  # the maps changed the batches (a pass-through would fail above)


def test_windows_on_model_needs_an_hu_store_and_a_known_place(stores, tmp_path, capsys):
    from ichtrain.cli import main as ichtrain_main
    from ichtrain.data import StoreStream

    with pytest.raises(UsageError, match="holds windows brain:40/80"):
        StoreStream(stores["three"]).dataset("train", windows_on="model")
    with pytest.raises(UsageError, match="Received: 'gpu'"):
        StoreStream(stores["hu"]).dataset("train", windows_on="gpu")
    rc = ichtrain_main(["fit", stores["three"], "--out", str(tmp_path / "r"), "--windows-on", "model"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds windows brain:40/80" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r")  # refused before a run folder is made
    assert ichtrain_main(["fit", stores["hu"], "--out", str(tmp_path / "r"), "--windows-on", "gpu"]) == 2
    assert "argument --windows-on: invalid choice: 'gpu'" in capsys.readouterr().err


def test_fit_with_windows_in_the_model_trains_saves_the_model_and_reads_both_ways(stores, tmp_path, capsys,
                                                                                  synth_corpus):
    """A run trained with the windows in its graph saves the plain model (it reads a reader's windows), its
    predictions through either path agree, and a resumed run continues it."""
    from ichtrain.cli import main as ichtrain_main
    from ichtrain.data import run_stream
    from ichtrain.infer import predict_rows
    from ichtrain.run import input_options, load_keras, load_run

    run = str(tmp_path / "run")
    args = ["fit", stores["hu"], "--out", run, "--model", "baseline", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--epoch-size", "16", "--split", "0.6,0.2,0.2", "--windows", THREE,
            "--windows-on", "model", "--augment", "light", "--seed", str(nonempty_split_seed(stores["hu"]))]
    assert ichtrain_main(args) == 0
    assert "windows computed in the model's first layer and augmentation in the next" in capsys.readouterr().out
    cfg, path = load_run(run)
    assert cfg["windows_on"] == "model" and cfg["augment"] != "none" and os.path.isfile(os.path.join(run, "checkpoints", "epoch-001.keras"))
    model = load_keras(path)
    assert model.input_shape == (None, 32, 32, 3)  # the saved model takes windows: no windowing layer in it
    stream = run_stream(cfg)
    inputs = input_options(cfg)
    _, p_reader = predict_rows(model, stream, 8, split="test", **dict(inputs, windows_on="reader"))
    _, p_model = predict_rows(model, stream, 8, split="test", **dict(inputs, windows_on="model"))
    assert p_reader.shape == (stream.splits["test"].size, 6)
    np.testing.assert_allclose(p_model, p_reader, rtol=0, atol=1e-5)
    # test-time views are taken after the windows, wherever those are computed
    _, q_reader = predict_rows(model, stream, 8, split="test", tta="flip+crop", **dict(inputs, windows_on="reader"))
    _, q_model = predict_rows(model, stream, 8, split="test", tta="flip+crop", **dict(inputs, windows_on="model"))
    np.testing.assert_allclose(q_model, q_reader, rtol=0, atol=1e-5)
    assert np.abs(q_model - p_model).max() > 1e-4
    args[args.index("--epochs") + 1] = "2"
    assert ichtrain_main(args) == 0, capsys.readouterr().err  # resumes epoch 2 through the wrapper
    assert os.path.isfile(os.path.join(run, "checkpoints", "epoch-002.keras"))
    assert len(open(os.path.join(run, "log.csv")).read().strip().splitlines()) == 3
    assert ichtrain_main(["evaluate", run, "--split", "test"]) == 0, capsys.readouterr().err
    out_csv = tmp_path / "submission.csv"  # raw DICOMs -> a store of the run's three windows -> the model
    assert ichtrain_main(["predict", run, synth_corpus["dicom_dir"], "--out", str(out_csv)]) == 0
    rows = open(out_csv).read().strip().splitlines()[1:]
    assert len(rows) == 6 * len(os.listdir(synth_corpus["dicom_dir"]))


def test_windows_in_the_model_take_each_slices_own_default_window(stores, synth_corpus, tmp_path):
    """``default`` windows are per row (each file's WindowCenter/Width): the bounds travel with each batch."""
    from ichtrain.data import StoreStream
    from ichtrain.graphwindows import hu_windows_layer

    spec = "default,brain:40/80"
    ref = str(tmp_path / "default.zarr")
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=ref, labels=synth_corpus["labels"],
                      windows=parse_windows(spec), preset=None, workers=0, salt="s", shard_slices=8))
    a, b = StoreStream(stores["hu"], windows=spec), StoreStream(ref)
    centers = st.column(a._g, "window_center")[a.splits["train"]]
    assert np.unique(centers).size > 1  # the synthetic files carry several windows: per-row bounds matter
    layer = hu_windows_layer(a.info.image_size, sequence=False)
    kw = dict(batch_size=8, weighted=False, sequence=False)
    for ((hu, params), _), (xb, _) in zip(a.dataset("train", windows_on="model", **kw),
                                         b.dataset("train", dtype="float32", **kw)):
        assert np.array_equal(layer([hu, params]).numpy(), xb.numpy())
