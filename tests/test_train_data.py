"""ichtrain.data: splits, per-type weights, and the tf.data stream against the store's own values."""

import numpy as np
import pytest
import zarr

from ichprep.build import BuildConfig, build
from ichprep.errors import IncompleteStoreError, UsageError
from ichprep.windows import parse_windows
from ichtrain.data import StoreStream, sample_epoch, split_buckets, split_rows, type_weights

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


def test_type_weights_formula():
    types = np.array([32] * 90 + [1] * 10)
    w = type_weights(types, 1.0)  # balanced: each type half the mass
    assert w[32] * 90 == pytest.approx(0.5) and w[1] * 10 == pytest.approx(0.5)
    w0 = type_weights(types, 0.0)  # natural frequencies
    assert w0[32] == pytest.approx(w0[1]) == pytest.approx(0.01)
    wh = type_weights(types, 0.5)  # count ** -0.5, normalised
    assert wh[1] / wh[32] == pytest.approx((10 / 90) ** -0.5)
    with pytest.raises(UsageError, match="alpha"):
        type_weights(types, 1.5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sampled_epoch_type_frequencies_match_weights(alpha):
    """Observed type shares of 200,000 draws are within 5 binomial standard deviations of
    P(type) = count_t ** (1 - alpha) / sum_u count_u ** (1 - alpha)."""
    rng = np.random.default_rng(0)
    counts = {32: 6000, 31: 300, 20: 80, 1: 5}
    types = np.concatenate([np.full(c, t) for t, c in counts.items()])
    rows = np.arange(types.size)
    n = 200_000
    drawn = sample_epoch(rows, types, alpha, n, rng)
    expected = {t: c ** (1 - alpha) for t, c in counts.items()}
    z = sum(expected.values())
    for t in counts:
        p = expected[t] / z
        observed = np.mean(types[drawn] == t)
        assert abs(observed - p) <= 5 * np.sqrt(p * (1 - p) / n), (t, observed, p)


def test_splits_disjoint_by_group_reproducible_and_exclude_unlabelled():
    groups = np.array([f"p{i // 7}" for i in range(1400)], dtype=object)
    usable = np.ones(1400, bool)
    usable[::13] = False
    a = split_rows(groups, usable, (0.6, 0.2, 0.2), seed=1)
    b = split_rows(groups, usable, (0.6, 0.2, 0.2), seed=1)
    c = split_rows(groups, usable, (0.6, 0.2, 0.2), seed=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    sets = [set(groups[a[k]]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    allrows = np.concatenate(list(a.values()))
    assert sorted(allrows) == sorted(np.flatnonzero(usable))
    # 200 groups: each lands in train with probability 0.6, so its share is within 4 binomial sd of 0.6
    assert abs(len(sets[0]) / 200 - 0.6) < 4 * np.sqrt(0.6 * 0.4 / 200)


def test_a_groups_split_is_its_hash_bucket_and_does_not_move_when_groups_are_added():
    keys = np.array([f"patient-{i}" for i in range(300)], dtype=object)
    # the bucket is an independent blake2b of "seed\0key", read as a 64-bit fraction
    import hashlib

    ref = [int.from_bytes(hashlib.blake2b(f"7\0{k}".encode(), digest_size=8).digest(), "big") / 2**64 for k in keys]
    np.testing.assert_array_equal(split_buckets(keys, 7), ref)
    expected = np.where(np.array(ref) < 0.7, "train", np.where(np.array(ref) < 0.85, "val", "test"))
    small = split_rows(keys[:100], np.ones(100, bool), (0.7, 0.15, 0.15), seed=7)
    large = split_rows(keys, np.ones(300, bool), (0.7, 0.15, 0.15), seed=7)
    for name in ("train", "val", "test"):
        assert set(keys[:100][small[name]]) == set(keys[large[name]]) & set(keys[:100])
        assert set(keys[large[name]]) == set(keys[expected == name])


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


def test_k_folds_are_patient_grouped_balanced_and_cover_every_slice_once():
    from ichtrain.data import fold_rows

    groups = np.array([f"p{i // 5}" for i in range(5 * 31)], dtype=object)
    usable = np.ones(groups.size, bool)
    tests = []
    for k in range(5):
        f = fold_rows(groups, usable, 5, k, seed=2)
        sides = [set(groups[f[n]]) for n in ("train", "val", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert len(sides[2]) in (6, 7) and len(sides[1]) in (6, 7)  # 31 patients dealt round-robin
        tests.append(f["test"])
    allrows = np.sort(np.concatenate(tests))
    np.testing.assert_array_equal(allrows, np.arange(groups.size))
    with pytest.raises(UsageError, match="at least 40 patients"):
        fold_rows(groups, usable, 40, 0)


def test_delivery_order_permutes_pools_of_shards_and_keeps_every_draw():
    from ichtrain.batches import delivery_order

    rng_rows = np.random.default_rng(3)
    rows = np.sort(rng_rows.choice(400, size=600, replace=True))  # draws with replacement, sorted
    assert np.array_equal(delivery_order(rows, 16, 3, None), rows)  # evaluation: as given
    out = delivery_order(rows, 16, 3, np.random.default_rng(0))
    assert np.array_equal(np.sort(out), rows)  # a permutation of the draws: none lost, none added
    assert np.array_equal(out, delivery_order(rows, 16, 3, np.random.default_rng(0)))  # reproducible
    # consecutive pools hold the draws of exactly 3 shards each (the last pool may hold fewer), every draw
    # of a shard inside its pool
    counts = {int(s): int((rows // 16 == s).sum()) for s in np.unique(rows // 16)}
    pools, pool, left = [], set(), 0
    for s in (out // 16).tolist():
        if s not in pool:
            assert len(pool) < 3 and all(s not in p for p in pools), "a shard's draws split across pools"
            pool.add(s)
            left += counts[s]
        left -= 1
        if left == 0 and len(pool) == 3:
            pools.append(pool)
            pool = set()
    pools += [pool] if pool else []
    assert set().union(*pools) == set(counts) and all(len(p) == 3 for p in pools[:-1])
    first = out[:sum(counts[s] for s in pools[0])] // 16
    assert len(set(first[:counts[int(first[0])]].tolist())) > 1  # a pool is mixed, not shard after shard
