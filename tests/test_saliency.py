"""Grad-CAM (ichtrain.saliency) against the closed form of a conv -> global average pool -> dense model."""

import os

import numpy as np

from ichtrain.cli import main


def test_grad_cam_of_a_pooled_linear_head_is_its_weighted_feature_maps():
    """With GAP then Dense, d out_l / d A_c(i, j) = W[c, l] / (h w): the channel weights are W[:, l] / (h w) and
    the map is relu(sum_c W[c, l] A_c) / its peak (the bias and the sigmoid's slope cancel in the scaling)."""
    import keras

    from ichtrain.saliency import grad_cam

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 2))
    maps = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="features")(inp)
    out = keras.layers.Dense(6, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(maps))
    model = keras.Model(inp, out)
    x = np.random.default_rng(1).random((2, 16, 16, 2)).astype(np.float32)
    a = keras.Model(inp, maps)(x).numpy()
    w = model.layers[-1].get_weights()[0]  # (5, 6)
    nonzero = 0
    for label in range(6):
        ref = np.maximum((a * w[:, label]).sum(-1), 0)
        peak = ref.reshape(2, -1).max(1)[:, None, None]
        ref = np.divide(ref, peak, out=np.zeros_like(ref), where=peak > 0)  # an all-negative map stays 0
        nonzero += int((peak > 0).sum())
        np.testing.assert_allclose(grad_cam(model, x, label), ref, atol=1e-5)
    assert nonzero >= 4  # most maps are not trivially zero


def test_explain_draws_one_slice_and_the_report_shows_the_maps(brain_store, brain_seed, tmp_path, capsys):
    import zarr

    run = str(tmp_path / "run")
    assert main(["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
                 "--epochs", "1", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]) == 0
    sop = str(zarr.open_group(brain_store, mode="r")["sop_uid"][3])
    out = str(tmp_path / "x.png")
    assert main(["explain", run, "--sop", sop, "--label", "subdural", "--out", out]) == 0
    assert os.path.getsize(out) > 1000 and f"({sop}), subdural" in capsys.readouterr().out
    assert main(["explain", run, "--sop", "ID_nothing", "--out", out]) == 2
    assert "No slice 'ID_nothing'" in capsys.readouterr().err
    assert main(["explain", run, "--sop", sop, "--label", "bleed", "--out", out]) == 2
    assert main(["evaluate", run, "--split", "val"]) == 0
    page = open(os.path.join(run, "report.html")).read()
    assert "Grad-CAM heat map" in page and page.count("alt='Grad-CAM row") >= 1
