"""Training-time augmentation (against a plain numpy affine map) and test-time flips."""

import json
import math
import os

import numpy as np
import pytest

from ichprep.errors import UsageError
from ichtrain.augment import AugmentSpec, parse_augment
from ichtrain.cli import main


def test_specs_parse_to_canonical_strings_and_bad_parts_are_named():
    assert parse_augment("none").to_string() == "none" and not parse_augment(None).active
    assert parse_augment("light").to_string() == "flip=0.5,rotate=8,scale=0.08,shift=0.04,contrast=0.05,brightness=0.03"
    assert parse_augment(" noise=0.01 , flip=1").to_string() == "flip=1,noise=0.01"  # a fixed order
    for bad, fragment in (("flop=1", "part 'flop=1'"), ("rotate=90", "rotate a number in [0, 45]"),
                          ("noise=abc", "a number for --augment part noise"), ("flip=0.5,flip=1", "flip twice"),
                          ("scale=nan", "scale a number")):
        with pytest.raises(UsageError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            parse_augment(bad)


def _numpy_affine(img, a0, a1, a2, b0, b1, b2):
    """Plain numpy reference: out[y, x] = bilinear(img, (a0 x + a1 y + a2, b0 x + b1 y + b2)), 0 outside."""
    h, w = img.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx, sy = a0 * xs + a1 * ys + a2, b0 * xs + b1 * ys + b2
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    out = np.zeros((h, w))
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - np.abs(sx - xi)) * (1 - np.abs(sy - yi))
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += np.where(ok, img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)] * wgt, 0.0)
    return out


def test_the_affine_map_is_the_one_its_parameters_describe():
    """With a zero-width range every random draw is its bound: rotate by exactly r, flip always."""
    import tensorflow as tf

    from ichtrain.augment import augment_batch

    rng = np.random.default_rng(0)
    img = rng.random((1, 40, 48, 1)).astype(np.float32)
    flipped = augment_batch(tf.constant(img), AugmentSpec(flip=1.0), tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(flipped, img[:, :, ::-1])
    # rotate: the angle is TensorFlow's stateless draw from the first of the seed's eight splits
    seed = tf.constant([5, 6], tf.int64)
    out = augment_batch(tf.constant(img), AugmentSpec(rotate=8.0), seed).numpy()[0, :, :, 0]
    split = tf.random.experimental.stateless_split(seed, num=8)
    deg = float(tf.random.stateless_uniform((1,), split[0], -8.0, 8.0).numpy()[0])
    h, w = 40, 48
    cx, cy = (w - 1) / 2, (h - 1) / 2
    t = math.radians(deg)
    a0, a1, b0, b1 = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
    ref = _numpy_affine(img[0, :, :, 0], a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy)
    assert abs(deg) > 0.5
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("text", ["light", "strong", "flip=1", "rotate=45,scale=0.5,shift=0.3"])
def test_the_compiled_affine_map_is_tensorflows_op_and_the_numpy_formula(text):
    """The reader's compiled map (ichtrain.augment.affine_images) against TensorFlow's ImageProjectiveTransformV3,
    which the model's layer runs, on the same draws (borders and corners out of the image included), and
    against the plain numpy bilinear formula."""
    import tensorflow as tf

    from ichtrain.augment import affine_images, augment_batch

    rng = np.random.default_rng(len(text))
    img = rng.random((6, 37, 53, 3)).astype(np.float32)
    for k in range(3):
        seed = tf.constant([k, 11], tf.int64)
        op = augment_batch(tf.constant(img), parse_augment(text), seed).numpy()
        compiled = augment_batch(tf.constant(img), parse_augment(text), seed, compiled=True).numpy()
        np.testing.assert_allclose(compiled, op, rtol=0, atol=1e-6)
    maps = np.array([[0.9, -0.3, 6.0, 0.3, 0.9, -4.5], [-1.0, 0.0, 52.0, 0.0, 1.0, 0.0]], np.float32)
    out = affine_images(img[:2], maps)
    for i in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[i, :, :, c], _numpy_affine(img[i, :, :, c], *maps[i].astype(np.float64)),
                                       atol=1e-5)
    np.testing.assert_array_equal(out[1], img[1, :, ::-1])  # the mirror map is the mirror image


def test_intensity_and_noise_stay_in_the_window_and_the_same_seed_gives_the_same_batch():
    import tensorflow as tf

    from ichtrain.augment import augment_batch

    img = np.random.default_rng(1).random((8, 16, 16, 2)).astype(np.float32)
    spec = parse_augment("strong")
    a = augment_batch(tf.constant(img), spec, tf.constant([1, 2], tf.int64)).numpy()
    b = augment_batch(tf.constant(img), spec, tf.constant([1, 2], tf.int64)).numpy()
    c = augment_batch(tf.constant(img), spec, tf.constant([1, 3], tf.int64)).numpy()
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_a_training_stream_is_augmented_reproducibly(brain_store, brain_seed):
    from ichtrain.data import StoreStream

    s = StoreStream(brain_store, fractions=(0.6, 0.2, 0.2), seed=brain_seed)
    kw = dict(batch_size=8, image_size=32, epoch_size=16)
    plain = [x.numpy() for x, _ in s.dataset("train", **kw)]
    aug1 = [x.numpy() for x, _ in s.dataset("train", augment="flip=1", augment_seed=7, **kw)]
    aug2 = [x.numpy() for x, _ in s.dataset("train", augment="light", augment_seed=7, **kw)]
    aug3 = [x.numpy() for x, _ in s.dataset("train", augment="light", augment_seed=7, **kw)]
    for p, f in zip(plain, aug1):
        np.testing.assert_array_equal(f, p[:, :, ::-1])  # the same draws, each slice mirrored
    for a, b, p in zip(aug2, aug3, plain):
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - p).max() > 0.01


def test_fit_records_augment_and_tta_and_evaluates_with_the_flip(brain_store, brain_seed, tmp_path, capsys):
    """TTA flip: the run's predictions are the logit mean of the model on the slice and on its mirror."""
    import keras

    from ichtrain.data import run_stream
    from ichtrain.infer import predict_rows
    from ichtrain.run import input_options

    run = str(tmp_path / "run")
    args = ["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
            "--epochs", "1", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]
    assert main(args + ["--augment", "flip=0.5,rotate=5", "--tta", "flip"]) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["augment"] == "flip=0.5,rotate=5" and cfg["tta"] == "flip"
    assert main(args + ["--augment", "flip=0.5", "--tta", "flip"]) == 2  # another configuration
    assert "another configuration" in capsys.readouterr().err
    model = keras.models.load_model(os.path.join(run, "model.keras"))
    stream = run_stream(cfg)
    y, p = predict_rows(model, stream, 8, split="val", tta="flip", **input_options(cfg))
    _, p0 = predict_rows(model, stream, 8, split="val", **input_options(cfg))
    xs = np.concatenate([x.numpy() for x, _ in stream.dataset("val", batch_size=8, weighted=False,
                                                              **input_options(cfg))])
    p1 = np.asarray(model(xs[:, :, ::-1], training=False))
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    np.testing.assert_allclose(logit(p), (logit(p0) + logit(p1)) / 2, atol=1e-4)
    assert main(["evaluate", run, "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibrated"]


@pytest.mark.parametrize("flag, fragment", [(["--augment", "spin=1"], "part 'spin=1'"),
                                            (["--tta", "rotate"], "invalid choice"),
                                            (["--crop", "head", "--windows-on", "model"], "--windows-on reader")])
def test_bad_augment_and_tta_exit_2_before_a_run_folder_is_made(brain_store, tmp_path, capsys, flag, fragment):
    out = tmp_path / "run"
    assert main(["fit", brain_store, "--out", str(out), "--epochs", "1", "--quiet", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not out.exists()


def test_the_winners_recipe_fills_what_was_not_given(brain_store, synth_corpus, tmp_path, capsys):
    from ichprep.build import BuildConfig, build
    from ichprep.windows import parse_windows

    hu = str(tmp_path / "hu.zarr")
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=hu, labels=synth_corpus["labels"],
                      windows=parse_windows("hu"), preset="hu", workers=0, salt="s", shard_slices=8))
    common = ["--image-size", "32", "--batch-size", "8", "--epoch-size", "16", "--epochs", "1", "--split",
              "0.6,0.2,0.2", "--quiet"]
    assert main(["fit", hu, "--out", str(tmp_path / "a"), "--recipe", "winners", *common]) == 0
    a = json.load(open(tmp_path / "a" / "config.json"))
    assert (a["recipe"], a["augment"], a["tta"], a["crop"]) == ("winners", "none", "flip+crop", "head")
    assert a["head_boxes"] == "store"  # the build stored them: every reader of the run crops to those
    assert a["window_names"] == ["brain", "subdural", "bone"] and a["channels"] == 3
    assert main(["fit", brain_store, "--out", str(tmp_path / "b"), "--recipe", "winners", "--tta", "none",
                 "--augment", "flip=0.5", *common]) == 0
    b = json.load(open(tmp_path / "b" / "config.json"))
    assert (b["augment"], b["tta"], b["window_names"]) == ("flip=0.5", "none", ["brain"])  # explicit options win
    assert main(["fit", brain_store, "--out", str(tmp_path / "c"), "--recipe", "best", *common]) == 2
    assert "invalid choice" in capsys.readouterr().err
