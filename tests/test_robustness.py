"""Real-world defects, rejects with reasons, crash-safe resume, verify, stats and privacy."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pydicom
import pytest
import zarr

from ichprep.build import BuildConfig, build
from ichprep.cli import main
from ichprep.errors import REJECT_REASONS
from ichprep.synth import SynthConfig, write_corpus
from ichprep.windows import parse_windows

ARRAYS = ("images", "labels", "type", "sop_uid", "study_uid", "series_uid", "patient", "position_z",
          "hu_min", "hu_max", "status", "shard_done", "file_key")


def _good_files(synth_corpus, k):
    files = sorted(glob.glob(os.path.join(synth_corpus["dicom_dir"], "*.dcm")))
    out = []
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1":
            out.append((f, ds))
        if len(out) == k:
            return out
    raise AssertionError("not enough uncompressed synthetic files")


def _save(ds, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=False)


def _make_defects(folder, synth_corpus):
    """One file per defect class; returns {filename: expected reason}."""
    good = _good_files(synth_corpus, 16)
    expected = {}
    for f, _ in good[:6]:
        shutil.copy(f, folder)
    (folder / "notes.txt").write_text("not a dicom file")
    expected["notes.txt"] = "not_dicom"
    data = open(good[6][0], "rb").read()
    (folder / "cut.dcm").write_bytes(data[: len(data) * 6 // 10])
    expected["cut.dcm"] = "truncated"

    def variant(i, name, reason, change):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(good[i][0])
            ds.SOPInstanceUID = f"ID_defect{i}"
            change(ds)
        _save(ds, folder / name)
        expected[name] = reason

    variant(7, "nopix.dcm", "no_pixel_data", lambda ds: delattr(ds, "PixelData"))
    variant(8, "mr.dcm", "not_ct", lambda ds: setattr(ds, "Modality", "MR"))
    variant(9, "frames.dcm", "multi_frame", lambda ds: setattr(ds, "NumberOfFrames", 2))
    variant(10, "huge.dcm", "bad_dimensions", lambda ds: setattr(ds, "Rows", 60000))
    variant(11, "noslope.dcm", "missing_tag", lambda ds: delattr(ds, "RescaleSlope"))

    def weird_syntax(ds):  # MPEG-2 video: pydicom has no decoder for it
        from pydicom.encaps import encapsulate
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
    variant(12, "weird_ts.dcm", "unsupported_transfer_syntax", weird_syntax)

    def broken_j2k(ds):  # claims JPEG 2000 but holds garbage: found only in the pixel pass
        from pydicom.encaps import encapsulate
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
    variant(13, "broken.dcm", "decode_failed", broken_j2k)

    def small(ds):  # a 256 x 256 slice: fixed by the size policy, not rejected
        arr = ds.pixel_array[::2, ::2].copy()
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
    variant(14, "small.dcm", None, small)
    del expected["small.dcm"]
    shutil.copy(good[0][0], folder / "copy_of_first.dcm")
    expected["copy_of_first.dcm"] = "duplicate"
    return expected


@pytest.mark.parametrize("workers", ["0", "2"])  # in-process, and a local cluster (rejects travel back)
def test_every_defect_class_is_rejected_with_its_reason(tmp_path, synth_corpus, capsys, workers):
    src = tmp_path / "src"
    src.mkdir()
    expected = _make_defects(src, synth_corpus)
    out = tmp_path / "s.zarr"
    rc = main(["build", str(src), "--out", str(out), "--preset", "rnn", "--workers", workers, "--quiet"])
    summary = capsys.readouterr().out
    assert rc == 0
    assert "7 written, 10 rejected" in summary and "1 truncated" in summary and "1 not_dicom" in summary
    g = zarr.open_group(str(out), mode="r")
    manifest = {r["file"]: r["reason"] for r in g.attrs["ichprep"]["rejects"]}
    messages = {r["file"]: r["message"] for r in g.attrs["ichprep"]["rejects"]}
    # a reject found in the pixel pass keeps its own message (the decoder's complaint), as header ones do
    assert messages["broken.dcm"].startswith("pixel data could not be decoded ("), messages["broken.dcm"]
    dup = [f for f, r in manifest.items() if r == "duplicate"]
    assert len(dup) == 1
    manifest["copy_of_first.dcm"] = manifest.pop(dup[0])  # either copy may be the one kept
    assert manifest == expected
    assert set(expected.values()) | {"ok"} <= set(REJECT_REASONS)
    # the undecodable file has a row with its status code and NaN range; everything else is usable
    status = g["status"][:]
    assert (status == REJECT_REASONS["decode_failed"]).sum() == 1
    assert np.isnan(g["hu_min"][:][status != 0]).all() and not np.isnan(g["hu_min"][:][status == 0]).any()
    assert not g["images"][:][status != 0].any()  # a rejected row's pixels are zeros, never stale memory
    assert g.attrs["ichprep"]["fixed"]["resized"] == 1
    assert g.attrs["ichprep"]["counts"]["written"] == 7
    # --strict makes any reject an error (exit 1)
    rc = main(["build", str(src), "--out", str(tmp_path / "strict.zarr"), "--workers", "0", "--quiet", "--strict"])
    assert rc == 1 and "--strict" in capsys.readouterr().err


def test_a_resumed_build_keeps_rejects_found_by_the_interrupted_run(tmp_path, synth_corpus, capsys):
    """A shard written before an interruption is not decoded again: its reject is still in the manifest,
    from the status array, with a message that says where it came from."""
    from ichprep import store as st

    src = tmp_path / "src"
    src.mkdir()
    _make_defects(src, synth_corpus)
    out = tmp_path / "s.zarr"
    args = ["build", str(src), "--out", str(out), "--shard-slices", "1", "--workers", "0", "--quiet"]
    assert main(args) == 0
    g = zarr.open_group(str(out), mode="r+")
    broken_row = int(np.flatnonzero(g["status"][:])[0])
    g["shard_done"][0 if broken_row else 1] = 0  # as if killed before that other shard was written
    st.set_attrs(g, {"complete": False})
    capsys.readouterr()
    assert main(args) == 0
    assert "[resumed]" in capsys.readouterr().out
    rejects = zarr.open_group(str(out), mode="r").attrs["ichprep"]["rejects"]
    broken = [r for r in rejects if r["file"] == "broken.dcm"]
    assert broken == [dict(file="broken.dcm", reason="decode_failed",
                           message="pixel data could not be used (found by an earlier run)")]
    assert len(rejects) == 10


@pytest.mark.parametrize("policy", ["resize", "pad", "reject"])
def test_size_policies(tmp_path, synth_corpus, policy):
    src = tmp_path / "src"
    src.mkdir()
    (f, ds), = _good_files(synth_corpus, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
        big = np.pad(arr, ((0, 256), (0, 0)), mode="edge")  # 768 x 512
        ds.Rows, ds.Columns = big.shape
        ds.PixelData = big.tobytes()
    _save(ds, src / "odd.dcm")
    shutil.copy(_good_files(synth_corpus, 2)[1][0], src)
    res = build(BuildConfig(source=str(src), out=str(tmp_path / "o.zarr"), windows=parse_windows("brain"),
                            on_size=policy, workers=0, salt="s"))
    if policy == "reject":
        assert res.written == 1 and res.reject_reasons == {"bad_size": 1}
    else:
        assert res.written == 2 and res.fixed[{"resize": "resized", "pad": "padded"}[policy]] == 1


def _build_cmd(src, out, labels, workers="0"):
    return [sys.executable, "-m", "ichprep.cli", "build", str(src), "--labels", str(labels), "--out", str(out),
            "--preset", "rnn", "--workers", workers, "--shard-slices", "4", "--salt", "fixed", "--quiet"]


@pytest.fixture(scope="module")
def resume_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    s = write_corpus(d, SynthConfig(studies=4, slices=16, seed=11, compressed_fraction=0.1))
    ref = d / "ref.zarr"
    subprocess.run(_build_cmd(s["dicom_dir"], ref, s["labels"]), check=True)
    return s, ref


def _shards_written(out):
    p = os.path.join(out, "shard_done", "c")
    return len(os.listdir(p)) if os.path.isdir(p) else 0


def _assert_same_store(a, b):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    attrs_a, attrs_b = dict(ga.attrs["ichprep"]), dict(gb.attrs["ichprep"])
    assert set(attrs_a.pop("timings")) == set(attrs_b.pop("timings"))  # wall times: the run's own
    assert attrs_a == attrs_b


@pytest.mark.parametrize("kill_after_shards", [0, 3, 9])
def test_kill_9_then_rerun_resumes_and_equals_uninterrupted(tmp_path, resume_corpus, kill_after_shards, capsys):
    s, ref = resume_corpus
    out = tmp_path / "k.zarr"
    proc = subprocess.Popen(_build_cmd(s["dicom_dir"], out, s["labels"]), start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (kill_after_shards == 0 and os.path.exists(out / "zarr.json")) or \
           (kill_after_shards and _shards_written(out) >= kill_after_shards):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = _shards_written(out)
    assert written < 16
    if os.path.exists(out / "zarr.json"):  # a killed build is never marked complete, and says so
        capsys.readouterr()
        rc = main(["info", str(out)])
        said = "".join(capsys.readouterr()).lower()
        assert rc in (0, 1) and "incomplete" in said
        assert main(["verify", str(out), "--quiet"]) == 1
    res = subprocess.run(_build_cmd(s["dicom_dir"], out, s["labels"]), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    if written:
        assert "[resumed]" in res.stdout
    _assert_same_store(out, ref)


def test_second_build_into_same_output_refuses(tmp_path, resume_corpus, capsys):
    s, _ = resume_corpus
    out = tmp_path / "busy.zarr"
    lock = str(out) + ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(lock, "w") as fh:
            fh.write(str(holder.pid))
        rc = main(["build", s["dicom_dir"], "--out", str(out), "--workers", "0", "--quiet"])
        assert rc == 1 and f"pid {holder.pid}" in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # a lock left by a dead process is taken over
    rc = main(["build", s["dicom_dir"], "--out", str(out), "--workers", "0", "--quiet"])
    assert rc == 0 and not os.path.exists(lock)


def test_verify_finds_corruption(tmp_path, resume_corpus, capsys):
    s, ref = resume_corpus
    out = tmp_path / "v.zarr"
    shutil.copytree(ref, out)
    assert main(["verify", str(out), "--source", s["dicom_dir"], "--sample", "4", "--quiet"]) == 0
    g = zarr.open_group(str(out), mode="r+")
    img = g["images"][8:12]
    img[1, 100, 100, 3] = 2.0  # out of range
    img[2] = np.float16(0.5)  # in range, but not what the file holds
    g["images"][8:12] = img
    lab = g["labels"][:]
    lab[0, 0] = 1 - lab[0, 0]
    g["labels"][:] = lab
    capsys.readouterr()
    rc = main(["verify", str(out), "--source", s["dicom_dir"], "--sample", "64", "--quiet"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "out-of-[0, 1] values in 1 slices, e.g. rows [9]" in text
    assert "type: 1 rows disagree" in text
    assert "row 10 (" in text and "differs from a fresh decode" in text


def test_stats_table_matches_labels(resume_corpus, capsys):
    s, ref = resume_corpus
    assert main(["stats", str(ref), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    g = zarr.open_group(str(ref), mode="r")
    types = g["type"][:]
    assert [r["count"] for r in d["table_3_1"]] == [int((types == t).sum()) for t in range(1, 33)]
    assert d["slices_per_series"] == {"min": 16, "median": 16.0, "max": 16} and d["series"] == 4
    assert main(["stats", str(ref)]) == 0
    assert "Table 3.1" in capsys.readouterr().out


def test_no_patient_identifying_data_in_store_or_output(tmp_path, capfd):
    d = tmp_path / "c"
    s = write_corpus(d, SynthConfig(studies=3, slices=5, seed=21))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(sorted(glob.glob(os.path.join(s["dicom_dir"], "*.dcm")))[0], stop_before_pixels=True)
    secrets_ = [str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate), str(ds.StudyDate),
                "SYNTHETIC^PATIENT"]
    out = tmp_path / "p.zarr"
    assert main(["build", s["dicom_dir"], "--labels", s["labels"], "--out", str(out), "--workers", "0"]) == 0
    main(["info", str(out)])
    main(["stats", str(out)])
    printed = "".join(capfd.readouterr())
    # every byte written, raw and decoded
    blobs = [printed.encode()]
    for root, _, files in os.walk(out):
        for f in files:
            blobs.append(open(os.path.join(root, f), "rb").read())
    g = zarr.open_group(str(out), mode="r")
    for name in ("sop_uid", "study_uid", "series_uid", "patient"):
        blobs.append("\n".join(str(x) for x in g[name][:]).encode())
    blobs.append(json.dumps(dict(g.attrs)).encode())
    hay = b"\n".join(blobs)
    for secret in secrets_:
        assert secret.encode() not in hay, secret
    assert len(set(g["patient"][:])) >= 2


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigterm_exits_143_releases_the_lock_leaves_no_workers_and_resumes(tmp_path, resume_corpus, workers):
    s, ref = resume_corpus
    out = tmp_path / "t.zarr"
    cmd = _build_cmd(s["dicom_dir"], out, s["labels"])
    cmd[cmd.index("--workers") + 1] = workers
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _shards_written(out) < 3:
        time.sleep(0.002)
    assert proc.poll() is None, "the build finished before it could be stopped"
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # the main process only, as a scheduler or `kill` would
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert time.monotonic() - t0 < 30
    assert err.strip().count("\n") == 0 and "terminated" in err and "Traceback" not in err
    assert not os.path.exists(str(out) + ".lock")
    time.sleep(1.0)
    ps = subprocess.run(["ps", "-e", "-o", "sid=,pid="], capture_output=True, text=True).stdout.split("\n")
    left = [line for line in ps if line.split() and line.split()[0] == str(proc.pid)]
    assert not left, f"processes of the stopped build remain: {left}"
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    _assert_same_store(out, ref)


def _mount_tmpfs(path, size_kib):
    path.mkdir(exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_disk_full_is_one_line_then_resumes_to_the_same_store(tmp_path, resume_corpus, workers):
    """With a local cluster too (issue 32, item 9): Dask's own 'Compute Failed' tracebacks stay quiet."""
    s, ref = resume_corpus
    size_kib = sum(f.stat().st_size for f in ref.rglob("*") if f.is_file()) // 1024
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, max(64, size_kib // 2))  # room for about half of the store
    try:
        out = mnt / "full.zarr"
        cmd = _build_cmd(s["dicom_dir"], out, s["labels"], workers)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip().count("\n") == 0 and "no space left" in res.stderr, res.stderr
        assert f"device of {str(out)!r}" in res.stderr and "MiB free" in res.stderr, res.stderr
        assert "the build needs about" in res.stderr and "MiB more to finish" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and not os.path.exists(str(out) + ".lock")
        subprocess.run(["mount", "-o", f"remount,size={size_kib * 4}k", str(mnt)], check=True)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        _assert_same_store(out, ref)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_an_append_that_fills_the_disk_is_one_line_then_a_rerun_finishes_it(tmp_path, resume_corpus):
    """Issue 34: an append into a disk too small for it behaves as a build does: one line, exit 1, the store's
    own slices kept, and the same command finishes it once there is room."""
    import shutil

    s, ref = resume_corpus
    first = tmp_path / "first"
    first.mkdir()
    files = sorted(os.listdir(s["dicom_dir"]))
    for name in files[:len(files) // 4]:
        shutil.copy2(os.path.join(s["dicom_dir"], name), first / name)
    size_kib = sum(f.stat().st_size for f in ref.rglob("*") if f.is_file()) // 1024
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, max(64, size_kib // 2))  # room for the first quarter, not for the rest
    try:
        out = mnt / "grow.zarr"
        assert subprocess.run(_build_cmd(first, out, s["labels"]), capture_output=True).returncode == 0
        append = _build_cmd(s["dicom_dir"], out, s["labels"]) + ["--append"]
        res = subprocess.run(append, capture_output=True, text=True, timeout=300)
        assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
        assert "no space left" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not os.path.exists(str(out) + ".lock")
        subprocess.run(["mount", "-o", f"remount,size={size_kib * 4}k", str(mnt)], check=True)
        res = subprocess.run(append, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        verify = subprocess.run([sys.executable, "-m", "ichprep.cli", "verify", str(out), "--source",
                                 s["dicom_dir"], "--sample", "64", "--quiet"], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        g = zarr.open_group(str(out), mode="r")
        assert g.attrs["ichprep"]["counts"]["written"] == zarr.open_group(str(ref), mode="r").attrs["ichprep"]["counts"]["written"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_jpeg_2000_frame_declaring_more_pixels_than_rows_x_columns_is_refused_before_decoding(synth_corpus, tmp_path):
    """Issue 32, item 3: a J2K codestream whose SIZ declares 16384 x 16384 under a 512 x 512 header is rejected
    (bad_dimensions) before a decoder allocates for it: the build's peak RSS stays that of a clean build."""
    import shutil
    import struct
    import subprocess
    import sys

    import pydicom

    from ichprep.decode import codestream_size

    bomb = None
    for name in sorted(os.listdir(synth_corpus["dicom_dir"])):
        path = os.path.join(synth_corpus["dicom_dir"], name)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless:
            bomb = path
            break
    assert bomb is not None, "the test corpus holds JPEG 2000 slices"
    clean, bombed = tmp_path / "clean", tmp_path / "bombed"
    for d in (clean, bombed):
        d.mkdir()
    plain = [n for n in sorted(os.listdir(synth_corpus["dicom_dir"])) if os.path.join(synth_corpus["dicom_dir"], n) != bomb][:6]
    for n in plain:
        for d in (clean, bombed):
            shutil.copy(os.path.join(synth_corpus["dicom_dir"], n), d / n)
    data = bytearray(open(bomb, "rb").read())
    at = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, at + 8, 16384, 16384)  # Xsiz, Ysiz
    (bombed / "ID_bomb.dcm").write_bytes(bytes(data))
    assert codestream_size(pydicom.dcmread(bombed / "ID_bomb.dcm").PixelData) == (16384, 16384)

    def peak_rss_kib(src, out):
        proc = subprocess.Popen([sys.executable, "-m", "ichprep.cli", "build", str(src), "--out", str(out),
                                 "--workers", "0", "--quiet", "--salt", "s"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        out_text = proc.stdout.read().decode()
        return os.waitstatus_to_exitcode(status), usage.ru_maxrss, out_text

    rc0, rss0, _ = peak_rss_kib(clean, tmp_path / "c.zarr")
    rc1, rss1, text = peak_rss_kib(bombed, tmp_path / "b.zarr")
    assert rc0 == 0 and rc1 == 0, text
    assert "1 rejected" in text and "bad_dimensions" in text, text
    assert rss1 <= 1.2 * rss0, (rss0, rss1)
    import zarr

    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    rejects = g.attrs["ichprep"]["rejects"]
    assert any(r["reason"] == "bad_dimensions" and "16384 x 16384" in r["message"] for r in rejects), rejects


def test_a_forged_uid_is_rejected_with_its_reason_so_predict_never_writes_it(synth_corpus, tmp_path):
    """Issue 32, item 1: a SOPInstanceUID 'ID_a,1\\n=cmd|x' would add forged rows and a formula to the CSV;
    predict builds its store with this same build, so a rejected file never reaches a submission."""
    import shutil
    import warnings

    import pydicom
    import zarr

    from ichprep.cli import main as ichprep_main

    src = tmp_path / "src"
    src.mkdir()
    names = sorted(os.listdir(synth_corpus["dicom_dir"]))[:4]
    for n in names:
        shutil.copy(os.path.join(synth_corpus["dicom_dir"], n), src / n)
    for n, uid, kw in ((names[0], "ID_a,1\n=cmd|x", "SOPInstanceUID"), (names[1], "=1+2", "SeriesInstanceUID"),
                       (names[2], "1." * 70 + "1", "StudyInstanceUID")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(src / n)
            setattr(ds, kw, uid)
            ds.save_as(src / n)
    assert ichprep_main(["build", str(src), "--out", str(tmp_path / "s.zarr"), "--workers", "0", "--quiet",
                         "--salt", "s"]) == 0
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    rejects = g.attrs["ichprep"]["rejects"]
    assert sorted(r["reason"] for r in rejects) == ["bad_uid"] * 3
    messages = " ".join(r["message"] for r in rejects)
    assert "SOPInstanceUID (0008,0018) is 'ID_a,1\\n=cmd|x'" in messages and "\n" not in messages
    assert g["sop_uid"].shape[0] == 1
