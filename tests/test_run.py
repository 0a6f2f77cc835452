"""ichtrain.run: the run folder's names, its record read back with older runs' defaults, the same-run check,
the resume point and the atomic writers (no TensorFlow needed)."""

import json
import os

import numpy as np
import pytest

from ichprep.errors import UsageError
from ichtrain.infer import mean_in_logits
from ichtrain.run import OLD_RUN_DEFAULTS, RunDir, load_run, read_record, same_run, save_atomic, write_atomic


def test_every_file_of_a_run_is_named_inside_its_folder(tmp_path):
    run = RunDir(str(tmp_path))
    paths = [run.config, run.state, run.model, run.log, run.calibration, run.last, run.tensorboard,
             run.epoch_checkpoint(3), run.worker_model(1), run.evaluation("val"), run.predictions("test")]
    assert len(set(paths)) == len(paths)
    assert all(os.path.dirname(p).startswith(str(tmp_path)) for p in paths)
    # the names older runs were written with: a rename would orphan every run folder already made
    assert [os.path.relpath(p, tmp_path) for p in paths] == [
        "config.json", "state.json", "model.keras", "log.csv", "calibration.json",
        os.path.join("checkpoints", "last.keras"), "tensorboard", os.path.join("checkpoints", "epoch-003.keras"),
        os.path.join("worker-1", "model.keras"), "eval-val.json", "predictions-test.npz"]


def test_an_old_record_reads_with_the_defaults_of_its_time(tmp_path):
    old = {"model": "baseline", "image_size": 64, "store": "s.zarr", "epochs": 3}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = read_record(str(tmp_path))
    assert cfg["lr_schedule"] == "constant" and cfg["augment"] == "none" and cfg["tta"] == "none"
    assert cfg["neighbours"] == 0 and cfg["crop"] == "none" and cfg["size_policy"] == "resize"
    assert {k: cfg[k] for k in old} == old  # what the record says wins
    new = dict(old, lr_schedule="cosine")
    (tmp_path / "config.json").write_text(json.dumps(new))
    assert read_record(str(tmp_path))["lr_schedule"] == "cosine"


@pytest.mark.parametrize("text, fragment", [
    ("{", "is damaged"),
    ("[]", "not a run record"),
    ('{"model": "baseline", "image_size": "abc"}', "image_size is 'abc'"),
    ('{"model": "baseline", "image_size": true}', "image_size is True"),
])
def test_a_damaged_record_is_a_usage_error_naming_the_file(tmp_path, text, fragment):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UsageError, match=fragment) as info:
        read_record(str(tmp_path))
    assert "config.json" in str(info.value)


def test_a_run_without_record_or_model_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(UsageError, match="no config.json.*ichtrain fit"):
        load_run(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model": "baseline", "image_size": 64}))
    with pytest.raises(UsageError, match="no model yet"):
        load_run(str(tmp_path))
    os.makedirs(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "last.keras").write_bytes(b"x")
    assert load_run(str(tmp_path))[1] == str(tmp_path / "checkpoints" / "last.keras")
    (tmp_path / "model.keras").write_bytes(b"x")  # the final model wins over the checkpoint
    assert load_run(str(tmp_path))[1] == str(tmp_path / "model.keras")


def test_a_resume_may_change_how_a_run_runs_not_what_it_learns():
    base = {"model": "baseline", "epochs": 5, "seed": 1, "out": "a", "strategy": "default", "lr_schedule": "cosine"}
    assert same_run(base, dict(base, epochs=9, out="b", strategy="mirrored", windows_on="model"))
    assert not same_run(base, dict(base, seed=2))
    assert not same_run(base, dict(base, augment="light"))
    # a record from before an option existed meant its default then
    old = {k: v for k, v in base.items() if k != "lr_schedule"}
    assert same_run(old, dict(base, lr_schedule=OLD_RUN_DEFAULTS["lr_schedule"]))
    assert not same_run(old, base)


def test_the_resume_point_needs_both_the_state_and_its_checkpoint(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.epochs_done() == 0
    run.write_state(4)
    assert json.loads(open(run.state).read()) == {"epochs_done": 4}
    assert run.epochs_done() == 0  # no checkpoint: nothing to resume from
    os.makedirs(run.checkpoints)
    open(run.last, "wb").close()
    assert run.epochs_done() == 4
    run.write_record({"model": "baseline", "image_size": 64})
    assert run.read_raw_record() == {"model": "baseline", "image_size": 64}
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json", "state.json"]  # no .tmp left


def test_atomic_writers_leave_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "f.txt")
    write_atomic(path, "old")

    class Exploding:
        def save(self, p):
            with open(p, "w") as fh:
                fh.write("half")
            raise OSError("No space left on device")

    target = str(tmp_path / "m.keras")
    write_atomic(target, "good model")
    with pytest.raises(OSError):
        save_atomic(Exploding(), target)
    assert open(target).read() == "good model"
    assert open(path).read() == "old"

    class Fine:
        def save(self, p):
            with open(p, "w") as fh:
                fh.write("new model")

    save_atomic(Fine(), target)
    assert open(target).read() == "new model"


def test_views_are_averaged_in_logit_space():
    rng = np.random.default_rng(0)
    p, q = rng.uniform(0.01, 0.99, (50, 6)).astype(np.float32), rng.uniform(0.01, 0.99, (50, 6)).astype(np.float32)
    logit = lambda v: np.log(v / (1 - v))  # noqa: E731
    want = 1 / (1 + np.exp(-(logit(p.astype(np.float64)) + logit(q.astype(np.float64))) / 2))
    np.testing.assert_allclose(mean_in_logits(p, q), want, rtol=1e-6)
    assert mean_in_logits(np.array([[0.0]]), np.array([[1.0]]))[0, 0] == pytest.approx(0.5)  # clipped, finite
