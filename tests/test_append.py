"""``ichprep build --append`` (ichprep/append.py) and store generations (issue 34): new studies become new
shards without a byte of the existing shard objects changing; known files are skipped, a stored slice with
other pixels is rejected as ``changed``; an interrupted append says so and a rerun finishes it."""

import hashlib
import json
import os
import shutil
import warnings
from collections import defaultdict
from unittest import mock

import numpy as np
import pydicom
import pytest
import zarr

from ichprep import store as st
from ichprep.cli import main as ichprep
from ichprep.errors import REJECT_REASONS

S = 8  # slices per shard: the first part's 30 slices end mid-shard, so the append leaves a gap


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A synthetic corpus split by study: ``first`` (three studies), ``all`` (the same files and three more,
    modification times kept), the labels, and a full build of ``all`` to compare with."""
    root = tmp_path_factory.mktemp("append")
    # version 2, seed 5: its first three studies are three patients (a run's three splits each need one)
    assert ichprep(["synth", str(root / "syn"), "--studies", "6", "--slices", "10", "--seed", "5", "--version", "2",
                    "--quiet"]) == 0
    by_study = defaultdict(list)
    for name in sorted(os.listdir(root / "syn" / "dicom")):
        path = root / "syn" / "dicom" / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom on the RSNA-style ID_ UIDs
            by_study[pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID].append(path)
    (root / "first").mkdir()
    (root / "all").mkdir()
    for k, study in enumerate(sorted(by_study)):
        for path in by_study[study]:
            if k < 3:
                shutil.copy2(path, root / "first" / path.name)
            shutil.copy2(path, root / "all" / path.name)
    labels = str(root / "syn" / "labels.csv")
    full = str(root / "full.zarr")
    assert ichprep(["build", str(root / "all"), "--out", full, "--labels", labels, "--shard-slices", str(S),
                    "--workers", "0", "--salt", "s", "--quiet"]) == 0
    return dict(root=root, first=str(root / "first"), all=str(root / "all"), labels=labels, full=full)


def _build_first(parts, out, *extra) -> None:
    assert ichprep(["build", parts["first"], "--out", out, "--labels", parts["labels"], "--shard-slices", str(S),
                    "--workers", "0", "--salt", "s", "--quiet", *extra]) == 0


def _append(parts, out, *extra, source=None) -> int:
    return ichprep(["build", source or parts["all"], "--out", out, "--labels", parts["labels"], "--append",
                    "--workers", "0", "--salt", "s", "--quiet", *extra])


def _shard_digests(url) -> dict:
    """Every image shard object's md5 (zarr.json, the array's metadata, changes with its shape)."""
    root = os.path.join(url, "images", "c")
    return {os.path.relpath(os.path.join(d, f), root): hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def _rows_by_sop(url) -> dict:
    g = zarr.open_group(url, mode="r")
    sops, status = st.column(g, "sop_uid"), st.column(g, "status")
    return {s: i for i, s in enumerate(sops) if status[i] == 0}


def test_an_append_adds_new_shards_only_and_equals_a_full_build(parts, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    _build_first(parts, out)
    before = _shard_digests(out)
    g0, info0 = st.open_store(out)
    assert info0.n == 30 and info0.generation == 1
    capsys.readouterr()
    assert _append(parts, out) == 0
    said = capsys.readouterr().out
    assert "30 slices added as generation 2 (60 usable in the store), 30 files known, 0 rejected" in said, said
    after = _shard_digests(out)
    assert all(after[k] == v for k, v in before.items())  # not a byte of an existing shard object changed
    assert len(after) == len(before) + 4  # rows 32..61: four new shards of 8
    g, info = st.open_store(out)
    assert info.generation == 2 and info.rows_at(1) == 30 and info.rows_at(2) == info.n == 62
    status = st.column(g, "status")
    assert (status[30:32] == REJECT_REASONS["gap"]).all() and (status[:30] == 0).all() and (status[32:] == 0).all()
    assert st.column(g, "sop_uid")[30:32].tolist() == ["", ""]
    # every slice equals its row in a full build of the same files, labels and metadata included
    full = zarr.open_group(parts["full"], mode="r")
    mine, theirs = _rows_by_sop(out), _rows_by_sop(parts["full"])
    assert set(mine) == set(theirs) and len(mine) == 60
    order = sorted(mine)
    a, b = [mine[s] for s in order], [theirs[s] for s in order]
    np.testing.assert_array_equal(g["images"].oindex[a], full["images"].oindex[b])
    for name in ("labels", "type", "study_uid", "series_uid", "patient", "position_z", "hu_min", "hu_max"):
        np.testing.assert_array_equal(st.column(g, name)[a], st.column(full, name)[b], err_msg=name)
    assert info.counts["written"] == 60 and info.counts["rows"] == 62
    assert info.type_counts == st.open_store(parts["full"])[1].type_counts
    # series stay contiguous: each new series is one run of rows
    series = st.column(g, "series_uid")[32:]
    assert len(set(series)) == int((series[1:] != series[:-1]).sum()) + 1
    assert ichprep(["verify", out, "--source", parts["all"], "--sample", "64", "--quiet"]) == 0
    assert ichprep(["info", out]) == 0 and "generations  2" in capsys.readouterr().out


def test_known_files_are_skipped_touched_ones_compared_changed_ones_rejected(parts, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    _build_first(parts, out)
    assert _append(parts, out) == 0
    capsys.readouterr()
    assert _append(parts, out) == 0  # nothing new: every file known by its key, none opened
    assert "nothing new: generation 2 stays (60 usable), 60 files known, 0 rejected" in capsys.readouterr().out
    copy = tmp_path / "copy"
    shutil.copytree(parts["all"], copy)  # new paths and times: every key new, every slice the same
    victim = sorted(os.listdir(copy))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(copy / victim)
        pixels = ds.pixel_array.copy()
        pixels[:8, :8] = pixels.max()  # the same SOPInstanceUID with other pixels
        ds.PixelData = pixels.tobytes()
        ds.save_as(copy / victim)
    before = _shard_digests(out)
    assert _append(parts, out, source=str(copy)) == 0
    said = capsys.readouterr().out
    assert "nothing new" in said and "59 files known, 1 rejected" in said, said
    g, info = st.open_store(out)
    assert info.generation == 2 and _shard_digests(out) == before
    changed = [r for r in info.rejects if r["reason"] == "changed"]
    assert len(changed) == 1 and changed[0]["file"] == victim and "pixels" in changed[0]["message"]
    assert info.counts["rejected"] == 1
    assert _append(parts, out, source=str(copy)) == 0  # the same reject again is counted once
    assert st.open_store(out)[1].counts["rejected"] == 1


def test_an_append_the_store_cannot_take_is_one_line_exit_2(parts, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    _build_first(parts, out)
    capsys.readouterr()
    assert _append(parts, out, "--preset", "hu") == 2
    assert "its layout differs (windows" in capsys.readouterr().err
    assert _append(parts, out, "--shard-slices", "16") == 2
    assert "shard_slices: store 8, asked 16" in capsys.readouterr().err
    assert _append(parts, out, "--overwrite") == 2
    assert _append(parts, str(tmp_path / "none.zarr")) == 2
    assert "there is none at" in capsys.readouterr().err
    g = zarr.open_group(out, mode="r+")  # an unfinished build: finish it first
    st.set_attrs(g, {"complete": False})
    assert _append(parts, out) == 2
    assert "unfinished build: finish it first" in capsys.readouterr().err
    st.set_attrs(g, {"complete": True, "schema_version": 3})  # a store from before appends
    assert _append(parts, out) == 2
    assert "schema version 3" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["metadata", "pixels"])
def test_an_interrupted_append_says_so_and_a_rerun_finishes_it(parts, tmp_path, capsys, where):
    out = str(tmp_path / "s.zarr")
    _build_first(parts, out)
    import ichprep.append as append_module

    target = ("write_metadata", st) if where == "metadata" else ("_pixel_pass", append_module)
    original = getattr(target[1], target[0])
    calls = []

    def crash(*args, **kwargs):
        if where == "pixels":  # some shards written, then the crash
            calls.append(1)
            original(*args, **kwargs)
        raise OSError(5, "simulated I/O error")

    with mock.patch.object(target[1], target[0], crash):
        assert _append(parts, out) == 1
    capsys.readouterr()
    assert ichprep(["verify", out, "--quiet"]) == 1
    with pytest.raises(Exception, match="an append into it has not finished"):
        st.open_store(out)
    assert ichprep(["build", parts["first"], "--out", out, "--labels", parts["labels"], "--workers", "0",
                    "--salt", "s", "--quiet"]) == 2  # a plain build does not take over an append
    assert "append into" in capsys.readouterr().err
    assert _append(parts, out) == 0
    said = capsys.readouterr().out
    assert "30 slices added as generation 2" in said, said
    assert ichprep(["verify", out, "--source", parts["all"], "--sample", "64", "--quiet"]) == 0
    mine, theirs = _rows_by_sop(out), _rows_by_sop(parts["full"])
    order = sorted(mine)
    assert order == sorted(theirs)
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["images"].oindex[[mine[s] for s in order]],
                                  zarr.open_group(parts["full"], mode="r")["images"].oindex[[theirs[s] for s in order]])


def test_a_run_keeps_its_generation_after_an_append(parts, tmp_path, capsys):
    """A run trained before an append evaluates on the same rows after it (the same figures), resumes on them,
    and a new run trains on the grown store."""
    from ichtrain.cli import main as ichtrain

    from ichtrain.splits import split_rows

    out, run = str(tmp_path / "s.zarr"), str(tmp_path / "run")
    _build_first(parts, out)
    g = zarr.open_group(out, mode="r")
    patients = st.column(g, "patient")
    seed = next(k for k in range(200)  # a seed that gives each split of the first three studies a patient
                if all(v.size for v in split_rows(patients, np.ones(patients.size, bool), (0.4, 0.3, 0.3), k).values()))
    args = ["fit", out, "--out", run, "--image-size", "32", "--batch-size", "4", "--epoch-size", "8",
            "--split", "0.4,0.3,0.3", "--seed", str(seed), "--quiet"]
    assert ichtrain(args + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert ichtrain(["evaluate", run, "--split", "test", "--json"]) == 0
    before = capsys.readouterr().out
    assert ichtrain(["evaluate", run, "--split", "new"]) == 2  # nothing appended yet
    assert "No new slices to evaluate" in capsys.readouterr().err
    assert _append(parts, out) == 0
    capsys.readouterr()
    assert ichtrain(["evaluate", run, "--split", "test", "--json"]) == 0
    assert capsys.readouterr().out == before  # the rows of generation 1, the same patients in the same split
    assert ichtrain(["evaluate", run, "--split", "new", "--json"]) == 0  # the appended patients, none seen
    new = json.loads(capsys.readouterr().out)
    g2 = zarr.open_group(out, mode="r")
    seen = set()
    record = json.load(open(os.path.join(run, "config.json")))
    from ichtrain.data import run_stream

    old_stream = run_stream(record)
    for name in ("train", "val"):
        seen |= set(old_stream.groups[old_stream.splits[name]].tolist())
    groups = st.column(g2, "patient")
    expected = [i for i in range(32, 62) if groups[i] not in seen]  # rows after the gap, patients never seen
    assert new["split"] == "new" and new["slices"] == len(expected) > 0 and new["store_generation"] == 2
    assert np.load(os.path.join(run, "predictions-new.npz"))["rows"].tolist() == expected
    assert ichtrain(args + ["--epochs", "2"]) == 0  # a resume trains on the rows it started on
    assert "resumed" in capsys.readouterr().out
    assert json.load(open(os.path.join(run, "config.json")))["store_generation"] == 1
    grown = str(tmp_path / "grown")
    assert ichtrain(args[:3] + [grown] + args[4:] + ["--epochs", "1"]) == 0
    record = json.load(open(os.path.join(grown, "config.json")))
    assert record["store_generation"] == 2
    assert sum(record["split"]["slices"].values()) > sum(json.load(open(os.path.join(run, "config.json")))["split"]["slices"].values())


def test_stored_rows_are_found_by_uid_and_a_gap_matches_nothing():
    from ichprep.append import _rows_of_sops

    stored = np.array(["a", "b", "", "c"], dtype=object)
    assert _rows_of_sops(stored, ["c", "x", "", "a"]) == {"c": 3, "a": 0}
    assert _rows_of_sops(stored, []) == {} and _rows_of_sops(stored, [""]) == {}


def test_a_damaged_shard_holding_gap_rows_is_repaired(parts, tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    _build_first(parts, out)
    assert _append(parts, out) == 0
    g = zarr.open_group(out, mode="r")
    images, status = g["images"][:], st.column(g, "status")
    shard = os.path.join(out, "images", "c", "3", "0", "0", "0")  # rows 24..31: six slices, then the gap 30, 31
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 3] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    assert ichprep(["verify", out, "--quiet"]) == 1
    capsys.readouterr()
    assert ichprep(["verify", out, "--source", parts["all"], "--repair", "--quiet"]) == 0, capsys.readouterr().err
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(g["images"][:], images)
    np.testing.assert_array_equal(st.column(g, "status"), status)
    assert ichprep(["verify", out, "--source", parts["all"], "--sample", "64", "--quiet"]) == 0


def test_a_small_append_reads_in_this_process_a_large_one_on_the_cluster(parts, tmp_path, monkeypatch):
    """Fewer new files than INLINE_BELOW are read without starting a local cluster (its start costs what one
    core decodes meanwhile); with the threshold lowered the same append runs on the two workers asked for, and
    both stores are the same."""
    import ichprep.append as ap

    asked = []
    real = ap.executor

    def spy(workers, *args, **kwargs):
        asked.append(workers)
        return real(workers, *args, **kwargs)

    monkeypatch.setattr(ap, "executor", spy)
    stores = []
    for threshold in (ap.INLINE_BELOW, 1):
        monkeypatch.setattr(ap, "INLINE_BELOW", threshold)
        out = str(tmp_path / f"s{threshold}.zarr")
        _build_first(parts, out)
        assert ichprep(["build", parts["all"], "--out", out, "--labels", parts["labels"], "--append", "--workers", "2",
                        "--salt", "s", "--quiet"]) == 0
        stores.append(zarr.open_group(out, mode="r"))
    assert asked == [0, 2]
    assert np.array_equal(st.column(stores[0], "sop_uid"), st.column(stores[1], "sop_uid"))
    assert np.array_equal(stores[0]["images"][:], stores[1]["images"][:])
