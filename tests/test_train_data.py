"""ichtrain.data: the store stream (its splits, weighted plans and tf.data batches) against the store's own values."""

import numpy as np
import pytest
import zarr

from ichprep.build import BuildConfig, build
from ichprep.errors import IncompleteStoreError, UsageError
from ichprep.windows import parse_windows
from ichtrain.data import StoreStream

from conftest import SPLIT_FRACTIONS, nonempty_split_seed


@pytest.fixture(scope="module")
def stores(synth_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    out = {}
    for preset in ("cnn", "rnn"):
        url = str(d / f"{preset}.zarr")
        build(BuildConfig(source=synth_corpus["dicom_dir"], out=url, labels=synth_corpus["labels"],
                          windows=parse_windows(preset), preset=preset, workers=0, salt="s", shard_slices=8))
        out[preset] = url
    out["seed"] = nonempty_split_seed(out["cnn"])
    return out


def test_stores_of_one_corpus_split_alike_without_a_salt(synth_corpus, tmp_path, private_salt_file):
    """cnn, rnn and brain stores built (no --salt) from the same DICOMs hold the same patient keys and give
    the same splits; the store records the salt's fingerprint and never the salt."""
    from ichprep.salt import salt_fingerprint

    urls = {}
    for preset in ("cnn", "rnn", "brain"):
        urls[preset] = str(tmp_path / f"{preset}.zarr")
        build(BuildConfig(source=synth_corpus["dicom_dir"], out=urls[preset], labels=synth_corpus["labels"],
                          windows=parse_windows(preset), preset=None, workers=0, shard_slices=16))
    assert private_salt_file.stat().st_mode & 0o777 == 0o600
    salt = private_salt_file.read_text().strip()
    assert len(salt) == 64
    fingerprints = set()
    splits = {}
    for preset, url in urls.items():
        s = StoreStream(url, fractions=(0.5, 0.25, 0.25), seed=3)
        fingerprints.add(s.info.attrs["salt_fingerprint"])
        sop = np.asarray(zarr.open_group(url, mode="r")["sop_uid"][:], dtype=object)
        splits[preset] = {k: sorted(sop[v]) for k, v in s.splits.items()}
        text = "".join(open(p, errors="ignore").read() for p in __import__("glob").glob(url + "/**/zarr.json",
                                                                                      recursive=True))
        assert salt not in text
    assert fingerprints == {salt_fingerprint(salt)}
    assert splits["cnn"] == splits["rnn"] == splits["brain"]


def test_store_stream_splits_by_patient(stores):
    s = StoreStream(stores["cnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"])
    g = zarr.open_group(stores["cnn"], mode="r")
    patient = np.asarray(g["patient"][:], dtype=object)
    sides = [set(patient[s.splits[k]]) for k in ("train", "val", "test")]
    assert all(sides) and not (sides[0] & sides[1] | sides[0] & sides[2] | sides[1] & sides[2])
    assert sum(v.size for v in s.splits.values()) == 60


def test_unweighted_stream_equals_store_values_cnn(stores):
    s = StoreStream(stores["cnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"])
    ds = s.dataset("val", batch_size=4, dtype="float16")
    spec = ds.element_spec
    assert tuple(spec[0].shape[1:]) == (512, 512, 1) and spec[0].dtype.name == "float16"
    assert tuple(spec[1].shape[1:]) == (6,) and spec[1].dtype.name == "float32"
    imgs, labs = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    g = zarr.open_group(stores["cnn"], mode="r")
    rows = s.splits["val"]
    np.testing.assert_array_equal(np.concatenate(imgs), g["images"][:][rows])
    np.testing.assert_array_equal(np.concatenate(labs), g["labels"][:][rows].astype(np.float32))


def test_rnn_stream_is_a_window_sequence_and_downscales(stores):
    s = StoreStream(stores["rnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"])
    x, y = next(iter(s.dataset("test", batch_size=2)))
    assert x.shape == (2, 10, 512, 512, 1) and x.dtype.name == "float32"
    g = zarr.open_group(stores["rnn"], mode="r")
    first = s.splits["test"][0]
    np.testing.assert_array_equal(x.numpy()[0, :, :, :, 0], np.moveaxis(g["images"][first], -1, 0).astype(np.float32))
    small = next(iter(s.dataset("test", batch_size=2, image_size=128)))[0]
    assert small.shape == (2, 10, 128, 128, 1)
    ref = g["images"][first].astype(np.float32).reshape(128, 4, 128, 4, 10).mean(axis=(1, 3))
    np.testing.assert_allclose(small.numpy()[0, :, :, :, 0], np.moveaxis(ref, -1, 0), atol=1e-5)


def test_weighted_train_stream_draws_the_plan(stores):
    s = StoreStream(stores["cnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"])
    plan = s.plan("train", alpha=1.0, epoch_size=50, epoch=0)
    assert sum(len(r) for _, r in plan) == 50
    assert all((r // s.shard_slices == sh).all() for sh, r in plan)
    assert set(np.concatenate([r for _, r in plan])) <= set(s.splits["train"])
    n = sum(int(x.shape[0]) for x, _ in s.dataset("train", batch_size=8, alpha=1.0, epoch_size=50, epochs=2))
    assert n == 100
    assert s.plan("train", epoch=1)[0][1].tolist() != s.plan("train", epoch=0)[0][1].tolist() or len(plan) == 1


def test_incomplete_store_refused(stores, tmp_path):
    import shutil

    url = str(tmp_path / "inc.zarr")
    shutil.copytree(stores["cnn"], url)
    g = zarr.open_group(url, mode="r+")
    a = dict(g.attrs["ichprep"])
    a["complete"] = False
    g.attrs["ichprep"] = a
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        StoreStream(url)


@pytest.mark.parametrize("split,weighted", [("train", True), ("val", False)])
def test_sharded_plans_partition_the_epoch(stores, split, weighted):
    """Pipelines i of n (one per training worker) together draw exactly the one-pipeline epoch, each a
    near-equal share, and none feeds a draw another one feeds."""
    s = StoreStream(stores["cnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"])

    def rows(shard):
        plan = s.plan(split, weighted, alpha=0.5, epoch_size=53, epoch=3, shard=shard)
        assert all((r // s.shard_slices == sh).all() for sh, r in plan)  # blocks never cross a shard
        return np.concatenate([r for _, r in plan])

    whole = rows((0, 1))
    for n in (2, 3):
        parts = [rows((i, n)) for i in range(n)]
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(whole))
        assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
    with pytest.raises(UsageError, match="shard"):
        s.plan(split, weighted, shard=(2, 2))


@pytest.mark.parametrize("k", [1, 2])
def test_neighbour_slices_are_the_series_own_clipped_at_its_ends(stores, k):
    s = StoreStream(stores["cnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"])
    g = zarr.open_group(stores["cnn"], mode="r")
    images = g["images"][:]
    series = np.asarray(g["series_uid"][:], dtype=object)
    rows = s.splits["val"]
    x = np.concatenate([b.numpy() for b, _ in s.dataset("val", batch_size=4, dtype="float16", neighbours=k)])
    assert x.shape == (rows.size, 512, 512, 2 * k + 1)
    for i, r in enumerate(rows):
        same = np.flatnonzero(series == series[r])  # a plain reference: this series' rows, in z order
        for j, d in enumerate(range(-k, k + 1)):
            want = same[np.clip(np.searchsorted(same, r) + d, 0, same.size - 1)]
            np.testing.assert_array_equal(x[i, :, :, j], images[want, :, :, 0], err_msg=f"row {r} offset {d}")
    with pytest.raises(UsageError, match="window sequence"):
        StoreStream(stores["rnn"], fractions=SPLIT_FRACTIONS).dataset("val", neighbours=1)


def test_a_slice_model_trains_on_a_many_window_store_with_neighbours(stores, tmp_path, capsys):
    """baseline on the 10-window store: its windows (times three neighbour slices) are the channels."""
    import json

    from ichtrain.cli import main

    run = tmp_path / "run"
    assert main(["fit", stores["rnn"], "--out", str(run), "--model", "baseline", "--image-size", "32",
                 "--epochs", "1", "--epoch-size", "16", "--batch-size", "8", "--neighbours", "1", "--split",
                 "0.6,0.2,0.2", "--seed", str(stores["seed"]), "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["neighbours"] == 1
    import keras

    assert keras.models.load_model(run / "model.keras").input_shape == (None, 32, 32, 30)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    test_rows = StoreStream(stores["rnn"], fractions=SPLIT_FRACTIONS, seed=stores["seed"]).splits["test"]
    assert json.loads(capsys.readouterr().out)["slices"] == test_rows.size
    assert main(["fit", stores["rnn"], "--out", str(tmp_path / "r2"), "--model", "rnn", "--neighbours", "1"]) == 2
