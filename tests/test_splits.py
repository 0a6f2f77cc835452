"""ichtrain.splits: hash-bucket splits by group and patient-grouped K folds."""

import hashlib

import numpy as np
import pytest

from ichprep.errors import UsageError
from ichtrain.splits import fold_rows, split_buckets, split_rows


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
    ref = [int.from_bytes(hashlib.blake2b(f"7\0{k}".encode(), digest_size=8).digest(), "big") / 2**64 for k in keys]
    np.testing.assert_array_equal(split_buckets(keys, 7), ref)
    expected = np.where(np.array(ref) < 0.7, "train", np.where(np.array(ref) < 0.85, "val", "test"))
    small = split_rows(keys[:100], np.ones(100, bool), (0.7, 0.15, 0.15), seed=7)
    large = split_rows(keys, np.ones(300, bool), (0.7, 0.15, 0.15), seed=7)
    for name in ("train", "val", "test"):
        assert set(keys[:100][small[name]]) == set(keys[large[name]]) & set(keys[:100])
        assert set(keys[large[name]]) == set(keys[expected == name])


def test_k_folds_are_patient_grouped_balanced_and_cover_every_slice_once():
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
