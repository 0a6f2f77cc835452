"""Hostile input, table-driven (issue 32): each case is an input, the exit code, a fragment of the one line on
stderr, and what must (not) exist afterwards. No traceback, ever."""

import json
import os
import shutil

import pytest

from ichprep.cli import main as ichprep
from ichtrain.cli import main as ichtrain


@pytest.fixture(scope="module")
def trained(brain_store, brain_seed, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("hostile") / "run")
    assert ichtrain(["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
                     "--epochs", "1", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]) == 0
    return run


def _copy_run(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _labels(tmp_path, encoding):
    path = tmp_path / f"labels-{encoding}.csv"
    path.write_bytes("ID,Label\nID_café_any,1\n".encode(encoding))
    return str(path)


CASES = [
    # (name, tool, argv builder(ctx) -> argv, exit, fragment, must not exist (relative to tmp_path))
    ("info of a missing store", ichprep, lambda c: ["info", "/no/such.zarr"], 2, "No store at '/no/such.zarr'", None),
    ("verify of a missing store", ichprep, lambda c: ["verify", "/no/such.zarr"], 2, "No store at", None),
    ("fit on a missing store", ichtrain, lambda c: ["fit", "/no/such.zarr", "--out", str(c["tmp"] / "r")], 2,
     "No store at", "r"),
    ("stats plot into a missing folder", ichprep, lambda c: ["stats", c["store"], "--plot", "/missing/x.png"], 2,
     "/missing does not exist", None),
    ("labels in Latin-1", ichprep, lambda c: ["build", c["src"], "--out", str(c["tmp"] / "s.zarr"), "--labels",
                                              _labels(c["tmp"], "latin-1"), "--quiet"], 2, "is not UTF-8 text", "s.zarr"),
    ("labels in UTF-16", ichprep, lambda c: ["build", c["src"], "--out", str(c["tmp"] / "s.zarr"), "--labels",
                                             _labels(c["tmp"], "utf-16"), "--quiet"], 2, "is not UTF-8 text", "s.zarr"),
    ("a damaged config.json", ichtrain, lambda c: ["evaluate", c["damaged_config"]], 2, "config.json is damaged", None),
    ("image_size 'abc' in config.json", ichtrain, lambda c: ["evaluate", c["abc_config"]], 2, "image_size is 'abc'",
     None),
    ("a truncated model.keras", ichtrain, lambda c: ["evaluate", c["truncated_model"]], 2,
     "is not a readable Keras model", None),
    ("predict into a folder", ichtrain, lambda c: ["predict", c["run"], c["src"], "--out", str(c["tmp"])], 2,
     "which is a folder", None),
]


@pytest.mark.parametrize("name, tool, argv, code, fragment, absent", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_the_right_exit(name, tool, argv, code, fragment, absent, trained, brain_store,
                                                      synth_corpus, tmp_path, capsys):
    damaged = _copy_run(trained, tmp_path / "d")
    (damaged / "config.json").write_text("{not json")
    abc = _copy_run(trained, tmp_path / "a")
    cfg = json.loads((abc / "config.json").read_text())
    (abc / "config.json").write_text(json.dumps(dict(cfg, image_size="abc")))
    cut = _copy_run(trained, tmp_path / "t")
    data = (cut / "model.keras").read_bytes()
    (cut / "model.keras").write_bytes(data[: len(data) // 3])
    ctx = dict(tmp=tmp_path, store=brain_store, src=synth_corpus["dicom_dir"], run=trained,
               damaged_config=str(damaged), abc_config=str(abc), truncated_model=str(cut))
    capsys.readouterr()
    assert tool(argv(ctx)) == code, name
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, (name, err)
    assert "PROBLEM" not in out, (name, out)
    if absent:
        assert not (tmp_path / absent).exists(), name


@pytest.mark.parametrize("spec", ["x:0/" + "1" + "0" * 50, "x:0/0." + "0" * 45 + "1", "x:1" + "0" * 30 + "/80"])
def test_windows_the_float32_kernels_cannot_represent_exit_2(synth_corpus, tmp_path, capsys, spec):
    out = tmp_path / "s.zarr"
    assert ichprep(["build", synth_corpus["dicom_dir"], "--out", str(out), "--windows", spec, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "width in [0.01, 200000] HU" in err[0] and not out.exists(), err


def test_slices_with_values_no_store_can_hold_are_rejected_and_the_store_verifies(synth_corpus, tmp_path, capsys):
    """Issue 32, item 6: RescaleSlope 1e37 (infinite HU) and WindowWidth 1e-30 (a 'default' window of nothing)
    were built into stores marked complete that their own verify rejected."""
    import warnings

    import pydicom
    import zarr

    src = tmp_path / "src"
    src.mkdir()
    names = sorted(os.listdir(synth_corpus["dicom_dir"]))[:5]
    for n in names:
        shutil.copy(os.path.join(synth_corpus["dicom_dir"], n), src / n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src / names[0])
        ds.RescaleSlope = "1e37"
        ds.save_as(src / names[0])
        ds = pydicom.dcmread(src / names[1])
        ds.WindowWidth = "1e-30"
        ds.save_as(src / names[1])
    out = str(tmp_path / "s.zarr")
    assert ichprep(["build", str(src), "--out", out, "--preset", "rnn", "--workers", "0", "--quiet", "--salt", "s"]) == 0
    rejects = {r["file"].split(os.sep)[-1]: r for r in zarr.open_group(out, mode="r").attrs["ichprep"]["rejects"]}
    assert rejects[names[0]]["reason"] == "missing_tag" and "1e37" in rejects[names[0]]["message"]
    assert rejects[names[1]]["reason"] == "no_window" and "1e-30" in rejects[names[1]]["message"]
    capsys.readouterr()
    assert ichprep(["verify", out, "--source", str(src), "--sample", "3", "--quiet"]) == 0, capsys.readouterr().out


def test_a_store_inside_its_own_source_folder_does_not_scan_itself(synth_corpus, tmp_path, capsys):
    """Issue 32, item 10: a rebuild into SRC/store.zarr scanned the store's own files (27 not_dicom)."""
    src = tmp_path / "src"
    shutil.copytree(synth_corpus["dicom_dir"], src)
    out = str(src / "store.zarr")
    for _ in range(2):  # the second run resumes, with the first's store inside the source
        assert ichprep(["build", str(src), "--out", out, "--workers", "0", "--quiet", "--salt", "s"]) == 0
    assert " 0 rejected" in capsys.readouterr().out


def test_salts_that_share_their_first_64_bytes_key_patients_differently():
    from ichprep.salt import salt_fingerprint
    from ichprep.scan import hash_patient

    a, b = "x" * 64 + "a", "x" * 64 + "b"
    assert hash_patient("ID_1", a) != hash_patient("ID_1", b)
    assert salt_fingerprint(a) != salt_fingerprint(b)
    short = "a short salt"  # salts of up to 64 bytes key as they always did: existing stores keep their keys
    import hashlib

    assert hash_patient("ID_1", short) == hashlib.blake2b(b"ID_1", digest_size=8, key=short.encode()).hexdigest()


def test_a_store_keeps_no_path_of_the_source_or_labels(synth_corpus, tmp_path):
    import zarr

    out = str(tmp_path / "s.zarr")
    assert ichprep(["build", synth_corpus["dicom_dir"], "--labels", synth_corpus["labels"], "--out", out,
                    "--workers", "0", "--quiet", "--salt", "s"]) == 0
    attrs = json.dumps(dict(zarr.open_group(out, mode="r").attrs))
    for path in (synth_corpus["dicom_dir"], synth_corpus["labels"], str(tmp_path)):
        assert path not in attrs


def test_a_local_cluster_without_dashboard_starts_none_and_says_nothing_about_port_8787(synth_corpus, tmp_path):
    """Issue 32, item 9: with another process on :8787, a build without --dashboard printed Dask's three-line
    'Port 8787 is already in use' warning."""
    import socket
    import subprocess
    import sys

    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", 8787))
        sock.listen()
    except OSError:
        pass  # someone else holds it already: the same situation
    try:
        res = subprocess.run([sys.executable, "-m", "ichprep.cli", "build", synth_corpus["dicom_dir"], "--out",
                              str(tmp_path / "s.zarr"), "--workers", "2", "--quiet", "--salt", "s"],
                             capture_output=True, text=True, timeout=300)
    finally:
        sock.close()
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_a_deflated_file_builds_and_pixel_representation_2_is_rejected(real_series, tmp_path, capsys):
    """Issue 32, item 7: a valid Deflated Explicit VR file was rejected as no_pixel_data; PixelRepresentation 2
    was built, and verify --source then failed with a generic ValueError."""
    import warnings

    import pydicom
    import zarr
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    src = tmp_path / "src"
    src.mkdir()
    files = sorted(os.listdir(real_series))[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(os.path.join(real_series, files[0]))
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(src / files[0], enforce_file_format=True)
        ds = pydicom.dcmread(os.path.join(real_series, files[1]))
        ds.PixelRepresentation = 2
        ds.save_as(src / files[1])
    shutil.copy(os.path.join(real_series, files[2]), src / files[2])
    out = str(tmp_path / "s.zarr")
    assert ichprep(["build", str(src), "--out", out, "--workers", "0", "--quiet", "--salt", "s"]) == 0
    rejects = zarr.open_group(out, mode="r").attrs["ichprep"]["rejects"]
    assert [(r["file"], r["reason"]) for r in rejects] == [(files[1], "bad_dimensions")]
    assert "PixelRepresentation (0028,0103) is 2" in rejects[0]["message"]
    capsys.readouterr()
    assert ichprep(["verify", out, "--source", str(src), "--sample", "2", "--quiet"]) == 0, capsys.readouterr().out


def test_training_on_an_unlabelled_store_or_from_a_keras_model_as_weights_says_why(real_series, trained, tmp_path,
                                                                                   capsys):
    """Issue 32, item 8: an unlabelled store said 'lower --batch-size'; --weights MODEL.keras printed 266 lines."""
    store = str(tmp_path / "unlabelled.zarr")
    assert ichprep(["build", real_series, "--out", store, "--windows", "brain", "--workers", "0", "--quiet",
                    "--salt", "s"]) == 0
    capsys.readouterr()
    assert ichtrain(["fit", store, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no labelled slices" in err[0] and "--labels" in err[0], err
    assert ichtrain(["fit", store, "--out", str(tmp_path / "b"), "--model", "backbone", "--weights",
                     os.path.join(trained, "model.keras"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine-tune from it with --init" in err[0], err
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists()


def test_a_store_rebuilt_or_removed_under_a_stream_is_said_so_not_called_damaged(brain_store, brain_seed, tmp_path):
    """Issue 32, item 8: a fit broken by an --overwrite rebuild of its store advised 'verify --repair'."""
    from ichprep.errors import StoreError
    from ichtrain.data import StoreStream

    store = tmp_path / "s.zarr"
    shutil.copytree(brain_store, store)
    stream = StoreStream(str(store), fractions=(0.6, 0.2, 0.2), seed=brain_seed)
    ds = stream.dataset("train", batch_size=4, epoch_size=8, image_size=32, shuffle_mb=0.001)
    shutil.rmtree(store)  # what an --overwrite rebuild does first
    with pytest.raises(Exception):
        with stream.guard():
            for _ in ds:
                pass
    assert isinstance(stream.read_failure, StoreError)
    message = str(stream.read_failure)
    assert "was removed or is being rebuilt since this stream opened it" in message and "--repair" not in message


def _encapsulated(frame: bytes) -> bytes:
    """Encapsulated pixel data by hand (PS3.5 A.4): an empty basic offset table item, then one fragment."""
    import struct

    frame += b"\0" * (len(frame) % 2)
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", 0) + b"\xfe\xff\x00\xe0" + struct.pack("<I", len(frame)) + frame


@pytest.mark.parametrize("frame, declared", [
    # JPEG 2000 codestream: SOC, SIZ (Lsiz 47, Rsiz 0, Xsiz 700, Ysiz 600, offsets 0, 0)
    (b"\xff\x4f\xff\x51\x00\x2f\x00\x00" + bytes.fromhex("000002bc 00000258 00000000 00000000") + b"\0" * 40, (600, 700)),
    # the same in the JP2 file format (signature box, then the codestream box's contents)
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x40jp2c" + b"\xff\x4f\xff\x51\x00\x2f\x00\x00"
     + bytes.fromhex("000002bc 00000258 00000004 00000008") + b"\0" * 40, (592, 696)),
    # JPEG: SOI, an APP0 segment of 16 bytes, SOF0 (P 8, Y 600, X 700)
    (b"\xff\xd8\xff\xe0\x00\x10" + b"J" * 14 + b"\xff\xc0\x00\x11\x08\x02\x58\x02\xbc" + b"\0" * 20, (600, 700)),
    # RLE: a header of segment offsets, then bytes that hold SOI + SOF and SOC + SIZ by chance, far into the
    # frame: not a header (a real RLE slice of the synthetic corpus was once rejected that way)
    (b"\x02\x00\x00\x00\x40\x00\x00\x00" + b"\x11" * 1000 + b"\xff\xd8\xff\xc0\x00\x11\x08\xc3\xc5\xc6\xc7"
     + b"\x22" * 500 + b"\xff\x4f\xff\x51\x00\x2f\x00\x00" + b"\xff" * 24, None),
], ids=["jpeg-2000", "jp2", "jpeg", "rle-holding-markers-by-chance"])
def test_a_frame_header_is_read_where_the_frame_begins_never_found_inside_it(frame, declared):
    """What ``decode.codestream_size`` reports (the size the build refuses when it exceeds Rows x Columns),
    by hand-built frames."""
    from ichprep.decode import codestream_size

    assert codestream_size(_encapsulated(frame)) == declared
    assert codestream_size(frame) is None  # not encapsulated: no items, no frame
