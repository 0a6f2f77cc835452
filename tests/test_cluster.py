"""An existing dask.distributed cluster: scheduler and workers started as separate processes on localhost."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import zarr

from ichprep import build as build_module
from ichprep.build import BuildConfig, build
from ichprep.cli import main as ichprep_main
from ichprep.windows import parse_windows
from conftest import SPLIT_FRACTIONS, nonempty_split_seed

ARRAYS = ("images", "labels", "type", "sop_uid", "study_uid", "series_uid", "patient", "position_z",
          "hu_min", "hu_max", "status")


def _dask(*args):
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0].replace("-", "_"), *args[1:]]


@pytest.fixture
def cluster(tmp_path):
    sched_file = str(tmp_path / "scheduler.json")
    procs = [subprocess.Popen(_dask("scheduler", "--scheduler-file", sched_file, "--port", "0", "--host", "127.0.0.1",
                                    "--dashboard-address", "127.0.0.1:0"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not os.path.exists(sched_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.load(open(sched_file))["address"]
    workers = [subprocess.Popen(_dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                      "--host", "127.0.0.1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    from distributed import Client

    with Client(address, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
    yield address, workers
    for p in workers + procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in workers + procs:
        try:
            p.wait(timeout=5)  # a dask process that has not left by then is killed: one took 20 s to (suite run)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _same(a, b):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)


def test_existing_cluster_build_equals_local_and_survives_a_killed_worker(cluster, synth_corpus, tmp_path,
                                                                         monkeypatch):
    address, workers = cluster
    kw = dict(source=synth_corpus["dicom_dir"], labels=synth_corpus["labels"], windows=parse_windows("rnn"),
              preset="rnn", salt="s", shard_slices=4)
    local = tmp_path / "local.zarr"
    build(BuildConfig(out=str(local), workers=0, **kw))
    remote = tmp_path / "remote.zarr"
    updates = []  # progress on a cluster: the bar hears of each shard as its task finishes on a worker
    update = build_module.ProgressBar.update
    monkeypatch.setattr(build_module.ProgressBar, "update",
                        lambda self, done, total=None: (updates.append((self.label, done)), update(self, done, total)))
    said = io.StringIO()
    build(BuildConfig(out=str(remote), scheduler=address, **kw), console=said)
    _same(local, remote)
    built = [d for label, d in updates if label == "build"]
    assert built == sorted(built) and len(set(built)) == 15 and built[-1] == 60  # 15 shards of 4 slices
    link = re.search(r"dask: using scheduler \S+, dashboard (http://\S+)", said.getvalue()).group(1)
    with urllib.request.urlopen(link, timeout=30) as page:  # the printed dashboard is served
        assert page.status == 200 and b"Dask" in page.read()
    monkeypatch.undo()
    # Kill one of the two workers while shards are being written: Dask reruns its tasks elsewhere.
    killed = tmp_path / "killed.zarr"
    import threading

    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", build(BuildConfig(out=str(killed), scheduler=address, **kw))))
    t.start()
    shard_dir = killed / "shard_done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (shard_dir.is_dir() and len(os.listdir(shard_dir)) >= 2):
        time.sleep(0.01)
    workers[0].kill()
    t.join(timeout=300)
    assert "r" in done and done["r"].written == 60
    _same(local, killed)


def test_fsspec_url_output_and_stream(synth_corpus, tmp_path):
    """A store written to an fsspec URL (memory://) equals a local one and streams into tf.data."""
    from ichtrain.data import StoreStream

    kw = dict(source=synth_corpus["dicom_dir"], labels=synth_corpus["labels"], windows=parse_windows("brain"),
              preset=None, salt="s", shard_slices=8, workers=0)
    local = tmp_path / "local.zarr"
    build(BuildConfig(out=str(local), **kw))
    url = f"memory://ichprep-tests/{tmp_path.name}/s.zarr"
    res = build(BuildConfig(out=url, **kw))
    assert res.written == 60
    ga, gb = zarr.open_group(str(local), mode="r"), zarr.open_group(url, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    stream = StoreStream(url, fractions=SPLIT_FRACTIONS, seed=nonempty_split_seed(url))
    x, y = next(iter(stream.dataset("val", batch_size=4, dtype="float16")))
    np.testing.assert_array_equal(x.numpy(), ga["images"][:][stream.splits["val"][:4]])


def test_local_cluster_dashboard_is_printed(synth_corpus, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    args = ["build", synth_corpus["dicom_dir"], "--out", out, "--windows", "brain", "--workers", "2"]
    assert ichprep_main([*args, "--dashboard", "127.0.0.1:0"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"dask: using a local cluster of 2 workers, dashboard http://127\.0\.0\.1:\d+/status", err), err
    assert ichprep_main([*args, "--dashboard", "--scheduler", "tcp://127.0.0.1:1", "--overwrite"]) == 2
    assert "--dashboard starts a local cluster's dashboard" in capsys.readouterr().err


def test_local_cluster_forks_on_linux_unless_tensorflow_is_loaded(monkeypatch):
    import sys

    from ichprep.executor import local_start_method

    if not sys.platform.startswith("linux"):
        pytest.skip("fork is used on Linux only")
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert local_start_method() == "fork"
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    assert local_start_method() != "fork"


def _square_or_fail(x):
    if x == 3:
        raise ValueError("task 3 failed on purpose")
    return x * x if x % 2 == 0 else None


@pytest.mark.parametrize("workers", [1, 2])
def test_executor_hands_back_args_and_values_and_fetches_no_none(workers, monkeypatch):
    """on_result gets each task's arguments and value; on a cluster a None value is known from the
    scheduler's report and never fetched; a task that fails still raises in the parent."""
    from distributed import Future

    fetched = []
    real_result = Future.result

    def counting_result(self, *a, **kw):
        value = real_result(self, *a, **kw)
        fetched.append(value)
        return value

    monkeypatch.setattr(Future, "result", counting_result)
    with build_module.executor(workers, None, None) as run:
        got = []
        run(_square_or_fail, [(0,), (1,), (2,), (5,)], lambda args, value: got.append((args, value)))
        assert sorted(got, key=lambda t: t[0]) == [((0,), 0), ((1,), None), ((2,), 4), ((5,), None)]
        if workers > 1:
            assert sorted(fetched) == [0, 4]
        with pytest.raises(ValueError, match="task 3 failed on purpose"):
            run(_square_or_fail, [(2,), (3,)], lambda args, value: None)


def test_build_records_phase_timings(synth_corpus, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    assert ichprep_main(["build", synth_corpus["dicom_dir"], "--out", out, "--windows", "brain", "--workers", "0",
                         "--quiet"]) == 0
    line = capsys.readouterr().out
    assert re.search(r"slices/s; headers \d+\.\d s, pixels \d+\.\d s\)", line), line
    timings = zarr.open_group(out, mode="r").attrs["ichprep"]["timings"]
    assert set(timings) == {"start", "headers", "prepare", "pixels"}
    assert all(v >= 0 for v in timings.values()) and timings["pixels"] > 0
    assert ichprep_main(["info", out]) == 0
    assert re.search(r"last build\s+start \d+\.\d s, headers", capsys.readouterr().out)
