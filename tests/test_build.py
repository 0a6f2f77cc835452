import os
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest
import zarr

from conftest import F16_TOL, PYDICOM_CT, pydicom_ct_path, reference_channels
from ichprep.build import BuildConfig, build
from ichprep.pixels import fit_size
from ichprep.errors import IncompleteStoreError, StoreExistsError
from ichprep.labels import read_labels, type_codes
from ichprep.store import SCHEMA_VERSION, open_store
from ichprep.windows import parse_windows

SCHEMA = {
    "labels": ("uint8", 2), "type": ("uint8", 1), "position_z": ("float32", 1), "hu_min": ("float32", 1),
    "hu_max": ("float32", 1), "status": ("uint8", 1), "window_center": ("float32", 1), "window_width": ("float32", 1),
}


def _build(src, out, labels=None, preset="cnn", workers=0, **kw):
    cfg = BuildConfig(source=src, out=str(out), labels=labels, windows=parse_windows(preset),
                      preset=preset, workers=workers, salt="test-salt", shard_slices=kw.pop("shard_slices", 16), **kw)
    return build(cfg)


@pytest.fixture(scope="module")
def rnn_store(synth_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "rnn.zarr"
    res = _build(synth_corpus["dicom_dir"], out, synth_corpus["labels"], preset="rnn", workers=0)
    return str(out), res


def test_store_opens_with_plain_zarr_and_follows_schema(rnn_store, synth_corpus):
    url, res = rnn_store
    g = zarr.open_group(url, mode="r")
    n = 60
    assert res.written == n and res.rejected == 0
    img = g["images"]
    assert img.dtype == np.float16 and img.shape == (n, 512, 512, 10)
    assert img.chunks == (1, 512, 512, 10) and img.shards == (16, 512, 512, 10)
    for name, (dtype, ndim) in SCHEMA.items():
        assert g[name].dtype == np.dtype(dtype) and g[name].ndim == ndim and g[name].shape[0] == n, name
    for name in ("sop_uid", "study_uid", "series_uid", "patient"):
        assert g[name].shape == (n,) and isinstance(str(g[name][0]), str) and g[name][:].dtype.kind == "T"
    a = g.attrs["ichprep"]
    assert a["complete"] is True and a["schema_version"] == SCHEMA_VERSION and a["window_names"][0] == "default"
    assert a["fixed"]["rsna_12bit_pixel_representation"] == 10  # one defect series of 10 slices


def test_rows_ordered_by_study_series_z(rnn_store):
    g = zarr.open_group(rnn_store[0], mode="r")
    keys = list(zip(g["study_uid"][:], g["series_uid"][:], g["position_z"][:]))
    assert keys == sorted(keys)
    study = g["study_uid"][:]
    changes = np.flatnonzero(study[1:] != study[:-1])
    assert len(changes) == 5  # 6 studies, each contiguous


def test_every_channel_of_every_slice_equals_reference(rnn_store, synth_corpus):
    g = zarr.open_group(rnn_store[0], mode="r")
    windows = parse_windows("rnn")
    sops = g["sop_uid"][:]
    images = g["images"][:]
    for i, sop in enumerate(sops):
        ref = reference_channels(os.path.join(synth_corpus["dicom_dir"], f"{sop}.dcm"), windows)
        diff = np.abs(images[i].astype(np.float64) - ref.astype(np.float64)).max()
        assert diff <= F16_TOL, (i, sop, diff)


def test_labels_and_types_follow_the_csv(rnn_store, synth_corpus):
    g = zarr.open_group(rnn_store[0], mode="r")
    table = read_labels(synth_corpus["labels"])
    expected = np.stack([table.by_sop[s] for s in g["sop_uid"][:]])
    np.testing.assert_array_equal(g["labels"][:], expected)
    np.testing.assert_array_equal(g["type"][:], type_codes(expected))
    assert (g["type"][:] < 32).any(), "the corpus must contain hemorrhages"


def test_one_and_two_workers_give_identical_arrays(synth_corpus, tmp_path, rnn_store):
    a = tmp_path / "w1.zarr"
    b = tmp_path / "w2.zarr"
    _build(synth_corpus["dicom_dir"], a, synth_corpus["labels"], preset="rnn", workers=1)
    _build(synth_corpus["dicom_dir"], b, synth_corpus["labels"], preset="rnn", workers=2)
    ga, gb, g0 = (zarr.open_group(str(p), mode="r") for p in (a, b, rnn_store[0]))
    for name in ("images", "labels", "type", "sop_uid", "study_uid", "series_uid", "patient", "position_z",
                 "hu_min", "hu_max", "status"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
        np.testing.assert_array_equal(ga[name][:], g0[name][:], err_msg=name)


def test_task_size_leaves_tasks_for_every_worker():
    from ichprep.executor import TASKS_PER_WORKER, task_size

    assert TASKS_PER_WORKER == 8
    assert task_size(16_384, 2, 256, 4096) == 1024  # 16 header tasks: 8 per worker
    assert task_size(4_096, 2, 256, 4096) == 256  # never below the least
    assert task_size(752_803, 8, 256, 4096) == 4096  # never above the most
    assert task_size(86, 2, 1, 4) == 4 and task_size(40, 2, 1, 4) == 2 and task_size(4, 2, 1, 4) == 1
    assert task_size(100, 0, 1, 4) == 4  # no workers counts as one


def test_shrinking_groups_end_in_single_items():
    from ichprep.executor import shrinking_groups

    # 86 shards, 2 workers, at most 4 a task: 19 of 4 (76), then ceil(remaining / 4) of the 10 left
    groups = shrinking_groups(list(range(86)), 2, 4)
    assert [len(g) for g in groups] == [4] * 19 + [3, 2, 2, 1, 1, 1]
    assert sum(groups, []) == list(range(86))  # every shard once, in order
    assert shrinking_groups(list(range(5)), 2, 4) == [[0, 1], [2], [3], [4]]  # ceil(5 / 4), then ones
    assert shrinking_groups([], 2, 4) == []
    assert [len(g) for g in shrinking_groups(list(range(9)), 0, 4)] == [4, 3, 1, 1]  # no workers counts as one


def test_grouped_shard_tasks_on_two_workers_equal_the_inline_build(synth_corpus, tmp_path, monkeypatch):
    """One-slice shards on 2 workers: 60 shards in tasks of at most 3 (60 // (8 * 2)), shrinking to single
    shards at the end, each shard still marked done on its own; the arrays equal an inline build's (one
    shard a task)."""
    import contextlib

    import ichprep.build as build_module

    seen = {}  # workers -> the shard groups handed to the pixel pass
    real_executor = build_module.executor

    @contextlib.contextmanager
    def recording_executor(workers, *args, **kw):
        with real_executor(workers, *args, **kw) as run:
            def recording_run(fn, arglists, on_result):
                if fn is build_module.process_shards:
                    seen[workers] = [list(a[1]) for a in arglists]
                return run(fn, arglists, on_result)
            recording_run.workers = run.workers
            yield recording_run

    monkeypatch.setattr(build_module, "executor", recording_executor)
    a, b = tmp_path / "inline.zarr", tmp_path / "grouped.zarr"
    _build(synth_corpus["dicom_dir"], a, synth_corpus["labels"], workers=0, shard_slices=1)
    res = _build(synth_corpus["dicom_dir"], b, synth_corpus["labels"], workers=2, shard_slices=1)
    assert res.shards_total == res.shards_run == 60
    assert seen[0] == [[i] for i in range(60)]
    assert sum(seen[2], []) == list(range(60))
    assert [len(g) for g in seen[2]] == [3] * 18 + [2, 1, 1, 1, 1]  # ceil(remaining / 4) at the end
    ga, gb = (zarr.open_group(str(p), mode="r") for p in (a, b))
    for name in ("images", "hu_min", "hu_max", "status", "shard_done", "sop_uid"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    assert gb["shard_done"][:].all()


def test_real_series_builds_without_labels(real_series, tmp_path):
    out = tmp_path / "real.zarr"
    res = _build(real_series, out, preset="rnn", workers=0)
    assert res.written == 32 and res.unlabelled == 0
    g, info = open_store(str(out))
    assert (g["labels"][:] == 255).all() and (g["type"][:] == 0).all()
    z = g["position_z"][:]
    assert np.all(np.diff(z) > 0)
    images = g["images"][:]
    for i, sop in enumerate(g["sop_uid"][:]):  # every channel of every real slice
        ref = reference_channels(os.path.join(real_series, f"{sop}.dcm"), parse_windows("rnn"))
        assert np.abs(images[i].astype(np.float64) - ref.astype(np.float64)).max() <= F16_TOL, sop
    assert info.attrs["pydicom_warnings"]["Invalid value for VR UI"] >= 96


def test_pydicom_ct_files_build_with_padding(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in PYDICOM_CT:
        os.symlink(pydicom_ct_path(name), src / name)
    out = tmp_path / "p.zarr"
    windows = "brain:40/80,bone:600/2800,full:full"
    cfg = BuildConfig(source=str(src), out=str(out), windows=parse_windows(windows), preset=None,
                      on_size="pad", workers=0, salt="s")
    res = build(cfg)
    sops = {}
    for name in sorted(PYDICOM_CT):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sops.setdefault(str(pydicom.dcmread(pydicom_ct_path(name), stop_before_pixels=True).SOPInstanceUID), name)
    # some of these files share a SOPInstanceUID (one image in several encodings): the first is kept
    assert res.written == len(sops) and res.reject_reasons == {"duplicate": len(PYDICOM_CT) - len(sops)}, res.summary()
    g = zarr.open_group(str(out), mode="r")
    rows = {s: i for i, s in enumerate(g["sop_uid"][:])}
    for sop, name in sops.items():
        ref = reference_channels(pydicom_ct_path(name), parse_windows(windows))
        h, w = ref.shape[:2]
        y, x = (512 - h) // 2, (512 - w) // 2
        got = g["images"][rows[sop]][y:y + h, x:x + w]
        assert np.abs(got.astype(np.float64) - ref.astype(np.float64)).max() <= F16_TOL, name


def test_fit_size_against_hand_values():
    img = np.arange(4, dtype=np.float32).reshape(2, 2)
    padded = fit_size(img, "pad", size=4)
    np.testing.assert_array_equal(padded, [[0, 0, 0, 0], [0, 0, 1, 0], [0, 2, 3, 0], [0, 0, 0, 0]])
    big = np.arange(36, dtype=np.float32).reshape(6, 6)
    np.testing.assert_array_equal(fit_size(big, "pad", size=4), big[1:5, 1:5])
    # bilinear 2x downscale with centres aligned: each output is the mean of a 2x2 block
    np.testing.assert_allclose(fit_size(big, "resize", size=3), big.reshape(3, 2, 3, 2).mean(axis=(1, 3)))


def test_rerun_is_noop_and_other_params_refuse(rnn_store, synth_corpus):
    url, _ = rnn_store
    res = _build(synth_corpus["dicom_dir"], url, synth_corpus["labels"], preset="rnn")
    assert res.already_complete
    with pytest.raises(StoreExistsError, match="--overwrite"):
        _build(synth_corpus["dicom_dir"], url, synth_corpus["labels"], preset="cnn")


def test_incomplete_store_says_so(synth_corpus, tmp_path):
    out = tmp_path / "inc.zarr"
    _build(synth_corpus["dicom_dir"], out, synth_corpus["labels"])
    g = zarr.open_group(str(out), mode="r+")
    a = dict(g.attrs["ichprep"])
    a["complete"] = False
    g.attrs["ichprep"] = a
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_store(str(out))


def test_import_ichprep_does_not_import_tensorflow():
    code = "import sys, ichprep, ichprep.build, ichprep.cli, ichprep.store, ichprep.synth, ichtrain; " \
           "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_reuse_freed_memory_applies_on_glibc():
    import platform

    from ichprep.executor import reuse_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert reuse_freed_memory() is expected
