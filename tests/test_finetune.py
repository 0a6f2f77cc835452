"""fit --init RUN [--freeze-epochs N]: fine-tuning from another run's weights, refused where the models differ."""

import os

import numpy as np

from ichtrain.cli import main


def _weights(path):
    import keras

    return keras.models.load_model(path, compile=False).get_weights()


def test_fine_tuning_starts_from_the_source_and_freezes_all_but_the_head(brain_store, brain_seed, tmp_path, capsys):
    common = ["--image-size", "32", "--batch-size", "8", "--epoch-size", "16", "--split", "0.6,0.2,0.2", "--seed",
              str(brain_seed), "--quiet"]
    source = str(tmp_path / "source")
    assert main(["fit", brain_store, "--out", source, "--epochs", "1", *common]) == 0
    tuned = str(tmp_path / "tuned")
    assert main(["fit", brain_store, "--out", tuned, "--epochs", "2", "--init", source, "--freeze-epochs", "1",
                 *common]) == 0
    assert "trained 2 epochs (2 done)" in capsys.readouterr().out  # both stages count, and nothing was resumed
    src = _weights(os.path.join(source, "model.keras"))
    frozen = _weights(os.path.join(tuned, "checkpoints", "epoch-001.keras"))
    final = _weights(os.path.join(tuned, "model.keras"))
    # after the frozen epoch: everything but the head (the last kernel and bias) is the source's, bit for bit
    for a, b in zip(src[:-2], frozen[:-2]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(src[-2:], frozen[-2:]))
    assert any(not np.array_equal(a, b) for a, b in zip(src[:-2], final[:-2]))  # then everything trained
    assert main(["fit", brain_store, "--out", tuned, "--epochs", "3", "--init", source, "--freeze-epochs", "1",
                 *common]) == 0  # resumes in the second stage
    assert "trained 1 epochs (3 done, resumed)" in capsys.readouterr().out


def test_another_shape_is_refused_before_a_run_folder_is_made(brain_store, tmp_path, capsys):
    source = str(tmp_path / "source")
    base = ["--batch-size", "8", "--epoch-size", "16", "--epochs", "1", "--split", "0.6,0.2,0.2", "--quiet"]
    assert main(["fit", brain_store, "--out", source, "--image-size", "32", *base]) == 0
    out = tmp_path / "other"
    assert main(["fit", brain_store, "--out", str(out), "--image-size", "48", "--init", source, *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input (32, 32, 1)" in err[0] and "input (48, 48, 1)" in err[0], err
    assert not out.exists()
    for argv, fragment in ((["--freeze-epochs", "1", "--epochs", "2"], "pass --init RUN"),
                           (["--init", str(tmp_path / "nowhere")], "missing"),
                           (["--init", source, "--freeze-epochs", "1", "--epochs", "1"], "in [0, --epochs)")):
        assert main(["fit", brain_store, "--out", str(out), "--image-size", "32", *base, *argv]) == 2
        assert fragment in capsys.readouterr().err
        assert not out.exists()
