import json
import os

import pytest
import zarr

from ichprep.cli import main


def test_synth_build_info_in_process(tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["synth", str(data), "--studies", "2", "--slices", "6", "--seed", "1", "--quiet"]) == 0
    assert len(os.listdir(data / "dicom")) == 12
    out = tmp_path / "s.zarr"
    rc = main(["build", str(data / "dicom"), "--labels", str(data / "labels.csv"), "--out", str(out),
               "--windows", "brain:40/80,subdural:80/200,bone:600/2800", "--workers", "0", "--quiet"])
    assert rc == 0
    assert "12 written, 0 rejected" in capsys.readouterr().out
    assert zarr.open_group(str(out), mode="r")["images"].shape == (12, 512, 512, 3)
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["slices"] == 12 and info["windows"] == ["brain:40/80", "subdural:80/200", "bone:600/2800"]
    assert sum(info["type_counts"].values()) == 12 and info["compression_ratio"] > 1
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "type counts" in text and "on disk" in text


def test_synth_is_deterministic(tmp_path):
    for d in ("a", "b"):
        assert main(["synth", str(tmp_path / d), "--studies", "1", "--slices", "4", "--seed", "7", "--quiet"]) == 0
    fa = sorted(os.listdir(tmp_path / "a" / "dicom"))
    assert fa == sorted(os.listdir(tmp_path / "b" / "dicom"))
    for f in fa:
        assert (tmp_path / "a" / "dicom" / f).read_bytes() == (tmp_path / "b" / "dicom" / f).read_bytes()
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (tmp_path / "b" / "labels.csv").read_bytes()


@pytest.mark.parametrize("argv,match", [
    (["build", "/nonexistent/dir", "--out", "X"], "DICOM folder not found"),
    (["build", "{empty}", "--out", "X"], "is empty"),
    (["build", "{data}", "--out", "X", "--preset", "bogus"], "invalid choice"),
    (["build", "{data}", "--out", "X", "--windows", "brain:40"], "Malformed window"),
    (["build", "{data}", "--out", "X", "--labels", "{badcsv}"], "expected the header 'ID,Label'"),
    (["build", "{data}", "--out", "X", "--shard-slices", "0"], "shard-slices"),
    (["build", "{data}"], "--out"),
    (["info", "/nonexistent.zarr"], "No store"),
    (["build", "{data}", "--out", "/proc/ichprep-test/out.zarr"], "Cannot write the output"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, match, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.dcm").write_bytes(b"not dicom")
    bad = tmp_path / "bad.csv"
    bad.write_text("Id;Label\n")
    argv = [a.format(empty=tmp_path / "empty", data=data, badcsv=bad) for a in argv]
    argv = [str(tmp_path / "X") if a == "X" else a for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 or (argv[0] == "info" and rc in (1, 2))
    assert match in err and err.count("\n") == 1 and err.startswith("ichprep: error:")
    assert not (tmp_path / "X").exists(), "nothing a user could mistake for a result"


def test_build_into_foreign_folder_refuses(tmp_path, capsys, synth_corpus):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    rc = main(["build", synth_corpus["dicom_dir"], "--out", str(foreign), "--workers", "0", "--overwrite", "--quiet"])
    assert rc == 2 and "not an ichprep store" in capsys.readouterr().err
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--labels", "--preset", "--windows", "--on-size", "--workers", "--scheduler",
                 "--shard-slices", "--codec", "--salt", "--overwrite", "--strict", "--quiet"):
        assert flag in text


def test_wrapped_library_errors_become_one_plain_line():
    from ichprep.cliutil import _describe

    tf_like = RuntimeError("{{function_node __wrapped__IteratorGetNext_device_/job:localhost}} Error in "
                           "user-defined function: ValueError: bad block\nTraceback (most recent call last):\n"
                           '  File "x.py", line 1\nValueError: bad block\n')
    message, code = _describe(tf_like)
    assert code == 1 and "\n" not in message and "Traceback" not in message and "function_node" not in message
    assert message.startswith("RuntimeError: Error in user-defined function: ValueError: bad block")
    assert _describe(OSError(28, "No space left on device", "/x/y"))[0].startswith("no space left")


def test_salt_resolution_order_and_the_private_file(tmp_path, monkeypatch):
    import hashlib

    from ichprep.errors import UsageError
    from ichprep.salt import resolve_salt, salt_fingerprint

    path = tmp_path / "cfg" / "salt"
    monkeypatch.setenv("ICHPREP_SALT_FILE", str(path))
    monkeypatch.delenv("ICHPREP_SALT", raising=False)
    first = resolve_salt(None)
    assert first.source == str(path) and path.stat().st_mode & 0o777 == 0o600
    assert resolve_salt(None).value == first.value == path.read_text().strip()  # made once, then reused
    monkeypatch.setenv("ICHPREP_SALT", "from-env")
    assert resolve_salt(None).value == "from-env" and resolve_salt("given").value == "given"
    # the fingerprint is a keyed hash of a constant: independent of how it is computed here, not the salt
    key = hashlib.blake2b(b"given", digest_size=32).digest()
    assert salt_fingerprint("given") == hashlib.blake2b(b"ichprep salt fingerprint v1", digest_size=8,
                                                        key=key).hexdigest()
    assert salt_fingerprint("given") != salt_fingerprint("given!") and "given" not in salt_fingerprint("given")
    with pytest.raises(UsageError, match="non-empty"):
        resolve_salt("")
    monkeypatch.delenv("ICHPREP_SALT")
    path.write_text("")
    with pytest.raises(UsageError, match="is empty"):
        resolve_salt(None)


def test_ichprep_runs_without_tensorflow_or_matplotlib(tmp_path, synth_corpus):
    """The preprocessing side needs neither (a lean install); a command that does says which extra to add."""
    import subprocess
    import sys

    blocker = ("import sys; [sys.modules.__setitem__(m, None) for m in ('tensorflow', 'keras', 'matplotlib')]; "
               "from {mod} import main; sys.exit(main(sys.argv[1:]))")
    store = str(tmp_path / "s.zarr")

    def run(mod, *argv):
        return subprocess.run([sys.executable, "-c", blocker.format(mod=mod), *argv], capture_output=True,
                              text=True, timeout=300)

    p = run("ichprep.cli", "build", synth_corpus["dicom_dir"], "--labels", synth_corpus["labels"], "--out", store,
            "--preset", "cnn", "--workers", "2", "--quiet")
    assert p.returncode == 0, p.stderr
    for argv in (["info", store], ["verify", store, "--quiet"], ["stats", store]):
        p = run("ichprep.cli", *argv)
        assert p.returncode == 0, (argv, p.stderr)
    p = run("ichprep.cli", "stats", store, "--plot", str(tmp_path / "s.png"))
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "ichprep[plots]" in p.stderr
    p = run("ichtrain.cli", "fit", store, "--out", str(tmp_path / "run"))
    assert p.returncode == 1 and "ichprep[train]" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_an_empty_window_spec_is_refused_not_read_as_the_default(synth_corpus, tmp_path, capsys):
    """Issue 32, item 5: --windows '' used to build a cnn store."""
    out = tmp_path / "s.zarr"
    assert main(["build", synth_corpus["dicom_dir"], "--out", str(out), "--windows", "", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Received: ''" in err[0] and not out.exists()
