"""Bit rot and source faults (issue 19): real damage to real files, never mocks.

A flipped byte anywhere in a store is an error that names where it is (the stream, ``ichprep verify``),
never silently wrong pixels; ``ichprep verify --repair --source`` rebuilds the damaged shards, and only
those, to exactly what an undamaged build wrote.
"""

import glob
import os
import shutil

import fsspec
import numpy as np
import pytest
import zarr

from ichprep.cli import main
from ichprep.store import SCHEMA_VERSION
from ichprep.synth import SynthConfig, write_corpus

S = 4  # rows per shard in these stores
ARRAYS = ("images", "labels", "type", "sop_uid", "study_uid", "series_uid", "patient", "position_z",
          "window_center", "window_width", "hu_min", "hu_max", "status", "shard_done", "file_key")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    s = write_corpus(d, SynthConfig(studies=3, slices=8, seed=5, compressed_fraction=0.2))
    ref = d / "ref.zarr"
    assert main(["build", s["dicom_dir"], "--labels", s["labels"], "--out", str(ref), "--workers", "0",
                 "--shard-slices", str(S), "--salt", "fixed", "--quiet"]) == 0
    return s, ref


def _copy(ref, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(ref, out)
    return out


def _object(store, array, chunk):
    """The file of chunk (or shard) ``chunk`` of a 1-D array, or of the images array."""
    if array == "images":
        return os.path.join(store, "images", "c", str(chunk), "0", "0", "0")
    return os.path.join(store, array, "c", str(chunk))


def _flip(path, offset):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def _same_files(a, b):
    """Every file of store ``a`` byte-identical to ``b``'s, the group's attributes included."""
    files_a = sorted(os.path.relpath(p, a) for p in glob.glob(os.path.join(a, "**"), recursive=True) if os.path.isfile(p))
    files_b = sorted(os.path.relpath(p, b) for p in glob.glob(os.path.join(b, "**"), recursive=True) if os.path.isfile(p))
    assert files_a == files_b
    for rel in files_a:
        assert open(os.path.join(a, rel), "rb").read() == open(os.path.join(b, rel), "rb").read(), rel


def _offset(shard_file, where):
    """A byte of a shard object: the middle of slice 1's compressed bytes, its crc32c, the index, the
    index's crc32c (the Zarr v3 sharding layout: chunks, then (offset, length) uint64 pairs, then 4 bytes)."""
    data = open(shard_file, "rb").read()
    index = np.frombuffer(data[-(16 * S + 4):-4], "<u8").reshape(S, 2)
    offset, length = (int(v) for v in index[1])
    return {"chunk data": offset + length // 2, "chunk checksum": offset + length - 2,
            "index": len(data) - 4 - 16 * S + 16 + 3, "index checksum": len(data) - 2}[where]


def test_every_chunk_of_a_new_store_ends_in_its_crc32c(corpus):
    _, ref = corpus
    g = zarr.open_group(str(ref), mode="r")
    assert g.attrs["ichprep"]["schema_version"] == SCHEMA_VERSION
    for name in ARRAYS:
        chain = g[name].metadata.codecs
        if name == "images":
            chain = chain[0].codecs  # the inner chunks of the shard
        assert chain[-1].to_dict() == {"name": "crc32c"}, name


@pytest.mark.parametrize("where", ["chunk data", "chunk checksum", "index", "index checksum"])
def test_a_flipped_byte_in_a_shard_is_found_by_verify_and_repaired_to_the_same_store(corpus, tmp_path, capsys, where):
    s, ref = corpus
    store = _copy(ref, tmp_path)
    shard_file = _object(store, "images", 1)
    _flip(shard_file, _offset(shard_file, where))
    with pytest.raises(Exception):  # zarr's own reader (the independent check) refuses the rows too
        zarr.open_group(str(store), mode="r")["images"][4:8]
    capsys.readouterr()
    assert main(["verify", str(store), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "shard 1" in out and ("rows 4..7" in out or "row 5" in out) and "checksum" in out, out
    assert main(["verify", str(store), "--repair", "--source", s["dicom_dir"], "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "repaired 1 shard(s): rows 4..7" in out and out.strip().endswith(")") and "OK" in out, out
    _same_files(store, ref)


def test_the_stream_raises_naming_shard_and_row_and_reads_the_other_shards(corpus, tmp_path):
    from ichprep.errors import DamagedShardError
    from ichtrain.data import StoreStream

    _, ref = corpus
    store = _copy(ref, tmp_path)
    shard_file = _object(store, "images", 2)
    _flip(shard_file, _offset(shard_file, "chunk data"))  # row 9: slice 1 of shard 2
    stream = StoreStream(str(store))
    with pytest.raises(DamagedShardError) as caught, stream.guard():
        for _ in stream.dataset(rows=np.arange(stream.n), batch_size=4):
            pass
    message = str(caught.value)
    assert "row 9 (slice 1 of shard 2)" in message and "crc32c" in message and "--repair" in message, message
    assert caught.value.shard == 2 and caught.value.row == 9
    # the undamaged shards read exactly what the undamaged store holds
    rows = np.r_[0:8, 12:stream.n]
    got = np.concatenate([x.numpy() for x, _ in StoreStream(str(store)).dataset(rows=rows, batch_size=4)])
    want = zarr.open_group(str(ref), mode="r")["images"][:].astype(np.float32)[rows]
    np.testing.assert_array_equal(got, want)


def test_damaged_per_shard_columns_are_repaired_and_whole_store_columns_named(corpus, tmp_path, capsys):
    s, ref = corpus
    store = _copy(ref, tmp_path)
    _flip(_object(store, "hu_min", 3), 2)
    _flip(_object(store, "shard_done", 0), 0)
    capsys.readouterr()
    assert main(["verify", str(store), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "hu_min: shard 3 (rows 12..15) fails its crc32c checksum" in out, out
    assert "shard_done: shard 0's mark fails its crc32c checksum" in out, out
    assert main(["verify", str(store), "--repair", "--source", s["dicom_dir"], "--quiet"]) == 0
    assert "repaired 2 shard(s): rows 0..3, 12..15" in capsys.readouterr().out
    _same_files(store, ref)
    # a whole-store column (labels) cannot come from the DICOMs: named, and the fix said
    _flip(os.path.join(store, "labels", "c", "0", "0"), 5)
    assert main(["verify", str(store), "--repair", "--source", s["dicom_dir"], "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "labels: fails its crc32c checksum" in out and "--overwrite" in out and "nothing to repair" in out, out
    from ichprep.errors import StoreError
    from ichtrain.data import StoreStream

    with pytest.raises(StoreError, match="the labels column fails its crc32c checksum: the store is damaged"):
        StoreStream(str(store))


# -- source faults: files that change or go away between the header and the pixel pass ---------------------


def test_files_that_change_or_vanish_between_the_passes_are_rejects_with_their_reason(corpus, tmp_path, monkeypatch):
    import ichprep.build as build_module
    from ichprep.build import BuildConfig, build

    s, ref = corpus
    src = tmp_path / "dicom"
    shutil.copytree(s["dicom_dir"], src)
    files = sorted(glob.glob(str(src / "*.dcm")))
    shrunk, rewritten, vanished, now_a_folder, denied = files[1], files[6], files[9], files[13], files[17]
    original_pixel_pass = build_module._pixel_pass

    def faults_then_pixel_pass(*args, **kwargs):  # the files change after their headers were read
        data = open(shrunk, "rb").read()
        open(shrunk, "wb").write(data[:len(data) - 1000])
        data = bytearray(open(rewritten, "rb").read())
        data[-2000:-1000] = bytes(1000)  # same size, other pixels
        open(rewritten, "wb").write(bytes(data))
        os.utime(rewritten, ns=(os.stat(rewritten).st_atime_ns, os.stat(rewritten).st_mtime_ns + 10**9))
        os.unlink(vanished)
        os.unlink(now_a_folder)
        os.mkdir(now_a_folder)
        os.chmod(denied, 0)  # no effect for root, who reads anything: checked below
        return original_pixel_pass(*args, **kwargs)

    monkeypatch.setattr(build_module, "_pixel_pass", faults_then_pixel_pass)
    out = str(tmp_path / "s.zarr")
    result = build(BuildConfig(source=str(src), out=out, labels=s["labels"], workers=0, shard_slices=S, salt="fixed"))
    by_file = {r["file"]: r for r in zarr.open_group(out, mode="r").attrs["ichprep"]["rejects"]}
    expected = {os.path.basename(shrunk): "changed", os.path.basename(rewritten): "changed",
                os.path.basename(vanished): "unreadable", os.path.basename(now_a_folder): "unreadable"}
    if os.geteuid() != 0:
        expected[os.path.basename(denied)] = "unreadable"
    assert {f: r["reason"] for f, r in by_file.items()} == expected, by_file
    assert "size" in by_file[os.path.basename(shrunk)]["message"]
    assert "modification time" in by_file[os.path.basename(rewritten)]["message"]
    assert result.written == 24 - len(expected) and result.reject_reasons.get("changed") == 2
    # every other slice is exactly the undamaged build's; the rejected rows are kept, marked, zero
    got, want = zarr.open_group(out, mode="r"), zarr.open_group(str(ref), mode="r")
    assert list(got["sop_uid"][:]) == list(want["sop_uid"][:])
    ok = got["status"][:] == 0
    assert int((~ok).sum()) == len(expected)
    np.testing.assert_array_equal(got["images"][:][ok].view(np.uint16), want["images"][:][ok].view(np.uint16))
    assert not got["images"][:][~ok].any()


def test_a_fifo_in_the_source_is_rejected_never_waited_on(corpus, tmp_path):
    import subprocess
    import sys

    s, _ = corpus
    src = tmp_path / "dicom"
    shutil.copytree(s["dicom_dir"], src)
    os.mkfifo(src / "pipe.dcm")
    out = tmp_path / "s.zarr"
    proc = subprocess.run([sys.executable, "-m", "ichprep.cli", "build", str(src), "--out", str(out), "--workers", "0",
                           "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rejects = zarr.open_group(str(out), mode="r").attrs["ichprep"]["rejects"]
    assert [(r["file"], r["reason"]) for r in rejects] == [("pipe.dcm", "unreadable")]
    assert "not a regular file" in rejects[0]["message"]


# -- readers at once -------------------------------------------------------------------------------------

_READER = r"""
import hashlib, json, sys
import numpy as np
from ichtrain.data import StoreStream

def read_hashes(url, order):
    stream = StoreStream(url)
    out = {"rows": [], "epoch": []}
    with stream.guard():
        for x, _ in stream.dataset(rows=np.array(order), batch_size=4, dtype="float16"):
            out["rows"] += [hashlib.sha256(a.tobytes()).hexdigest() for a in x.numpy()]
        for x, y in stream.dataset("train", batch_size=4, epoch_size=32, dtype="float16"):
            out["epoch"] += [hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest() for a, b in zip(x.numpy(), y.numpy())]
    return out

if __name__ == "__main__":
    print(json.dumps(read_hashes(sys.argv[1], json.loads(sys.argv[2]))))
"""


def _read_at_once(url, order, processes):
    """What each of ``processes`` processes, started together, reads (hashes of every slice delivered)."""
    import json
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _READER, url, json.dumps([int(i) for i in order])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _check_readers(url, n):
    import hashlib

    order = np.sort(np.random.default_rng(3).choice(n, size=n * 2 // 3, replace=False))  # delivered in row order
    scope = {"__name__": "reader"}
    exec(_READER, scope)
    alone = scope["read_hashes"](url, order)  # one process: this one
    together = _read_at_once(url, order, 4)
    images = zarr.open_group(url, mode="r")["images"]
    want = [hashlib.sha256(np.ascontiguousarray(images[int(i)]).tobytes()).hexdigest() for i in order]
    assert alone["rows"] == want  # one process reads what zarr reads
    assert len(alone["epoch"]) == 32
    for r in together:  # four at once read exactly what one reads, slice for slice
        assert r == alone


def test_four_processes_streaming_one_local_store_read_what_one_reads(corpus):
    _, ref = corpus
    _check_readers(str(ref), 24)


@pytest.mark.slow  # 25-30 s; the local store's case (the same readers) runs by default
def test_four_processes_streaming_one_s3_store_read_what_one_reads(corpus, moto):
    s, _ = corpus
    url = f"{moto['url']}/readers.zarr"
    assert main(["build", s["dicom_dir"], "--labels", s["labels"], "--out", url, "--workers", "0",
                 "--shard-slices", str(S), "--salt", "fixed", "--quiet"]) == 0
    _check_readers(url, 24)


_SLOW_BUILD = r"""
import sys, time
import ichprep.shards as shards
from ichprep.cli import main
original = shards.process_shard
def slow(*args, **kwargs):
    time.sleep(1.0)
    return original(*args, **kwargs)
shards.process_shard = slow
sys.exit(main(sys.argv[1:]))
"""


def test_a_reader_opened_while_a_build_writes_refuses(corpus, tmp_path, capsys):
    import subprocess
    import sys
    import time

    from ichprep.errors import IncompleteStoreError
    from ichtrain.cli import main as ichtrain_main
    from ichtrain.data import StoreStream

    import tensorflow  # noqa: F401 -- loaded before the build starts: fit's import must not outlast it

    s, _ = corpus
    out = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, "build", s["dicom_dir"], "--labels", s["labels"],
                             "--out", str(out), "--workers", "0", "--shard-slices", str(S), "--quiet"])
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(out / "shard_done" / "c" / "0") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before a reader could try"
        with pytest.raises(IncompleteStoreError, match="incomplete"):
            StoreStream(str(out))
        capsys.readouterr()
        assert ichtrain_main(["fit", str(out), "--out", str(tmp_path / "run"), "--epochs", "1", "--epoch-size", "8",
                              "--batch-size", "8", "--image-size", "32", "--quiet"]) == 1
        assert "incomplete" in capsys.readouterr().err
        assert proc.poll() is None, "the build finished while the reader tried: the check proved nothing"
    finally:
        assert proc.wait(timeout=120) == 0
    StoreStream(str(out))  # once finished, it opens


# -- object stores: one writer, and a connection that drops ----------------------------------------------


_HELD_BUILD = r"""
import os, sys, time
import ichprep.shards as shards
from ichprep.cli import main
original, go = shards.process_shard, os.environ["HELD_BUILD_GO"]
def held(*args, **kwargs):  # the first shard waits (at most 60 s) until the test says go: the lock stays held
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
    return original(*args, **kwargs)
shards.process_shard = held
sys.exit(main(sys.argv[1:]))
"""


def test_two_builds_into_one_s3_url_the_second_refuses(corpus, moto, capsys, tmp_path):
    import subprocess
    import sys
    import time

    s, _ = corpus
    url = f"{moto['url']}/two.zarr"
    build = ["build", s["dicom_dir"], "--labels", s["labels"], "--out", url, "--workers", "0", "--shard-slices",
             str(S), "--salt", "fixed", "--quiet"]
    go = tmp_path / "go"  # a handshake, not a race with a slowed build: a loaded machine cannot end it early
    first = subprocess.Popen([sys.executable, "-c", _HELD_BUILD, *build], stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, HELD_BUILD_GO=str(go)))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    deadline = time.monotonic() + 120
    while not fs.exists(url.removeprefix("s3://") + ".lock") and time.monotonic() < deadline:  # taken first thing
        time.sleep(0.05)
        fs.invalidate_cache()
    assert first.poll() is None, "the first build finished before the second started"
    capsys.readouterr()
    assert main(build) == 1
    err = capsys.readouterr().err
    said = [ln for ln in err.splitlines() if ln.startswith("ichprep")]  # (aiohttp may warn of sessions GC'd)
    assert len(said) == 1 and f"pid {first.pid}" in said[0] and f"{url}.lock" in said[0], err
    go.touch()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    fs.invalidate_cache()
    assert not fs.exists(url.removeprefix("s3://") + ".lock")  # released
    assert main(["verify", url, "--quiet"]) == 0


@pytest.mark.slow  # ~30 s, most of it the client's retries giving up on the dead endpoint
def test_a_dropped_connection_mid_upload_is_one_line_then_resumes(corpus, moto, tmp_path):
    import subprocess
    import sys
    import time

    s, ref = corpus
    url = f"{moto['url']}/drop.zarr"
    build = [sys.executable, "-c", _SLOW_BUILD, "build", s["dicom_dir"], "--labels", s["labels"], "--out", url,
             "--workers", "0", "--shard-slices", str(S), "--salt", "fixed", "--quiet"]
    proc = subprocess.Popen(build, stderr=subprocess.PIPE, text=True)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    deadline = time.monotonic() + 120
    while not fs.exists(url.removeprefix("s3://") + "/shard_done/c/0") and time.monotonic() < deadline:
        time.sleep(0.05)
        fs.invalidate_cache()
    assert proc.poll() is None
    moto["stop"]()
    t0 = time.monotonic()
    err = proc.communicate(timeout=300)[1]
    lines = [ln for ln in err.splitlines() if ln.startswith("ichprep")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "lost the connection to the storage service" in lines[0] and "rerun the same command" in lines[0], lines[0]
    waited = time.monotonic() - t0
    moto["start"]()
    res = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got, want = zarr.open_group(url, mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
    assert waited < 120, f"the build took {waited:.0f} s to give up on a dead endpoint"


# -- Ctrl-C and SIGTERM in each phase ---------------------------------------------------------------------

_SLOW_PHASES = r"""
import sys, time
import ichprep.scan as scan, ichprep.shards as shards, ichprep.build as build
from ichprep.cli import main
slow_scan, slow_shard = scan.scan_batch, shards.process_shards
def scan_batch(*args, **kwargs):
    time.sleep(3.0)
    return slow_scan(*args, **kwargs)
def process_shards(*args, **kwargs):
    time.sleep(0.3)
    return slow_shard(*args, **kwargs)
build.scan_batch, build.process_shards = scan_batch, process_shards
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signame,phase,workers", [("SIGINT", "headers", "0"), ("SIGINT", "pixels", "2"),
                                                   ("SIGTERM", "headers", "2")])
def test_a_signal_in_each_phase_exits_at_once_releases_everything_and_resumes(corpus, tmp_path, signame, phase,
                                                                               workers):
    import signal
    import subprocess
    import sys
    import time

    s, ref = corpus
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-c", _SLOW_PHASES, "build", s["dicom_dir"], "--labels", s["labels"], "--out", str(out),
           "--workers", workers, "--shard-slices", str(S), "--salt", "fixed", "--quiet"]
    from conftest import default_signals

    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    lock, deadline = str(out) + ".lock", time.monotonic() + 120
    if phase == "headers":  # the lock is taken before the header pass, the store created after it
        while not os.path.exists(lock) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        in_phase = not os.path.exists(out / "zarr.json")
    else:
        while not os.path.exists(out / "shard_done" / "c" / "0") and time.monotonic() < deadline:
            time.sleep(0.01)
        in_phase = True
    assert proc.poll() is None and in_phase, f"the build left the {phase} phase before the signal"
    t0 = time.monotonic()
    os.kill(proc.pid, getattr(signal, signame))  # the main process only, as a terminal or a scheduler sends it
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[signame], err
    assert time.monotonic() - t0 < 20
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "rerun the same command" in lines[0], err
    assert not os.path.exists(lock)
    time.sleep(1.0)
    ps = subprocess.run(["ps", "-e", "-o", "sid=,pid="], capture_output=True, text=True).stdout.splitlines()
    assert not [ln for ln in ps if ln.split() and ln.split()[0] == str(proc.pid)], "worker processes remain"
    res = subprocess.run(cmd[:3] + cmd[3:], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got, want = zarr.open_group(str(out), mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)


def test_an_interrupted_repair_says_so_and_a_rerun_finishes_it(corpus, tmp_path, capsys, monkeypatch):
    import ichprep.repair as repair_module

    s, ref = corpus
    store = _copy(ref, tmp_path)
    for shard in (1, 4):
        _flip(_object(store, "images", shard), _offset(_object(store, "images", shard), "chunk data"))
    real, calls = repair_module.process_shards, []

    def dies_on_the_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(repair_module, "process_shards", dies_on_the_second)
    assert main(["verify", str(store), "--repair", "--source", s["dicom_dir"], "--quiet"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["verify", str(store), "--quiet"]) == 1
    assert "a repair of shards [1, 4] was interrupted" in capsys.readouterr().out
    with pytest.raises(Exception, match="incomplete"):  # readers refuse it meanwhile
        from ichtrain.data import StoreStream

        StoreStream(str(store))
    assert main(["verify", str(store), "--repair", "--source", s["dicom_dir"], "--quiet"]) == 0
    assert "repaired 2 shard(s): rows 4..7, 16..19" in capsys.readouterr().out
    _same_files(store, ref)


def test_the_signal_tests_pass_when_the_suite_starts_with_sigint_ignored(tmp_path):
    """As from a background job (``pytest &``), nohup or a CI runner: a new session, SIGINT ignored, no stdin.
    The SIGINT case above must still see its build exit 130."""
    import signal
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    launcher = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "os.execv(sys.executable, [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', "
                "'-o', 'addopts=', '-p', 'no:benchmark', '--rootdir', sys.argv[1], sys.argv[2], '-k', "
                "'SIGINT-headers-0'])")
    target = os.path.join(tests, "test_faults.py") + "::test_a_signal_in_each_phase_exits_at_once_releases_everything_and_resumes"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # a run of its own, not a worker
    res = subprocess.run(["setsid", sys.executable, "-c", launcher, os.path.dirname(tests), target],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                         env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]
