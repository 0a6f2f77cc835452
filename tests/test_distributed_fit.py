"""ichtrain fit --strategy: TF_CONFIG checking, mirrored in-process, and two CPU workers on localhost."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ichprep.errors import UsageError
from ichtrain.cli import main as ichtrain_main
from ichtrain.distribute import worker_role


def _tf_config(ports, index):
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def test_worker_role_reads_tf_config():
    assert worker_role("default").chief and worker_role("mirrored").workers == 1
    two = {"worker": ["a:1", "b:2"]}
    w1 = worker_role("multi-worker", {"TF_CONFIG": json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}})})
    assert (w1.task_type, w1.task_id, w1.workers, w1.chief) == ("worker", 1, 2, False)
    w0 = worker_role("multi-worker", {"TF_CONFIG": json.dumps({"cluster": two, "task": {"type": "worker", "index": 0}})})
    assert w0.chief  # no chief task: worker 0 is the chief
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    w0c = worker_role("multi-worker", {"TF_CONFIG": json.dumps({"cluster": with_chief,
                                                                "task": {"type": "worker", "index": 0}})})
    assert not w0c.chief and w0c.workers == 2
    with pytest.raises(UsageError, match="TF_CONFIG, which is not set"):
        worker_role("multi-worker", {})
    with pytest.raises(UsageError, match="not a cluster spec.*Received: '\\{oops'"):
        worker_role("multi-worker", {"TF_CONFIG": "{oops"})
    with pytest.raises(UsageError, match="task worker:5 is not in its cluster"):
        worker_role("multi-worker", {"TF_CONFIG": json.dumps({"cluster": two, "task": {"type": "worker", "index": 5}})})


def test_multi_worker_without_tf_config_is_a_usage_error(brain_store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    rc = ichtrain_main(["fit", brain_store, "--out", str(tmp_path / "run"), "--strategy", "multi-worker"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "TF_CONFIG" in err and not (tmp_path / "run").exists()


def test_mirrored_strategy_trains_in_process(brain_store, tmp_path, capsys):
    run = tmp_path / "run"
    rc = ichtrain_main(["fit", brain_store, "--out", str(run), "--strategy", "mirrored", "--image-size", "32",
                        "--epochs", "1", "--epoch-size", "16", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "strategy mirrored (1 replica, 1 worker" in out
    assert (run / "model.keras").is_file() and json.loads((run / "config.json").read_text())["strategy"] == "mirrored"


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _two_workers(store, run, epochs):
    ports = _free_ports(2)
    argv = [sys.executable, "-m", "ichtrain.cli", "fit", store, "--out", str(run), "--strategy", "multi-worker",
            "--image-size", "32", "--epochs", str(epochs), "--epoch-size", "32", "--batch-size", "8"]
    procs = [subprocess.Popen(argv, env=dict(os.environ, TF_CONFIG=_tf_config(ports, i), TF_CPP_MIN_LOG_LEVEL="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _weights(path):
    import keras

    return keras.models.load_model(path).get_weights()


@pytest.mark.slow  # 29-33 s: two TensorFlow processes; the mirrored strategy above trains distributed in-process
def test_two_cpu_workers_train_in_sync_and_resume(brain_store, tmp_path):
    """Two `ichtrain fit --strategy multi-worker` processes on localhost (TF_CONFIG, gRPC collectives): both
    finish, the chief writes the run, and the other worker's replica -- trainable weights and synchronised
    BatchNorm statistics -- equals the chief's exactly. A rerun with more epochs resumes on both."""
    run = tmp_path / "run"
    outs = _two_workers(brain_store, run, epochs=1)
    assert "this is worker 0" in outs[0] and "4 steps/epoch of 8 slices" in outs[0]
    chief, other = _weights(run / "model.keras"), _weights(run / "worker-1" / "model.keras")
    assert len(chief) == len(other) and all(np.array_equal(a, b) for a, b in zip(chief, other))
    assert json.loads((run / "state.json").read_text()) == {"epochs_done": 1}
    assert not (run / "worker-1" / "checkpoints").exists()  # only the chief writes checkpoints and logs

    outs = _two_workers(brain_store, run, epochs=2)
    assert all("trained 1 epochs (2 done, resumed)" in o for o in outs), [o[-500:] for o in outs]
    chief2, other2 = _weights(run / "model.keras"), _weights(run / "worker-1" / "model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(chief2, other2))
    assert any(not np.array_equal(a, b) for a, b in zip(chief, chief2))  # the second epoch trained
    assert len((run / "log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
