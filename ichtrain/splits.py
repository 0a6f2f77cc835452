"""Train/val/test splits that stay put: hash buckets of patient keys, K folds, and the record a run keeps.

A group's (patient's) split is a pure function of its key, the seed and the fractions, so every store of
the same DICOMs (same salt) splits alike and adding patients moves no one.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ichprep.errors import UsageError

__all__ = ["SPLIT_NAMES", "SPLIT_BY", "split_buckets", "split_rows", "fold_rows", "split_record", "check_same_split"]

SPLIT_NAMES = ("train", "val", "test")
SPLIT_BY = ("patient", "study")  # the groups no split divides


def split_buckets(keys, seed: int = 0) -> np.ndarray:
    """A number in [0, 1) per key: the key's place, fixed by the key and the seed alone."""
    out = np.empty(len(keys), np.float64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(f"{int(seed)}\0{key}".encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def split_rows(groups: np.ndarray, usable: np.ndarray, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Rows per split such that no group (patient or study) is on two sides.

    Hash buckets: a group goes to train when its :func:`split_buckets` value is below the train fraction,
    to val below train + val, else to test. A group's split is a pure function of its key, the seed and
    the fractions: the same in every store of the same DICOMs (same salt), and unchanged when other
    groups are added or removed. Split sizes are therefore near, not exactly at, the fractions.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise UsageError(f"Expected three split fractions >= 0 summing to 1. Received: fractions={tuple(fractions)}")
    rows = np.flatnonzero(usable)
    keys = np.asarray(groups, dtype=object)[rows].astype(str)
    uniq, inverse = np.unique(keys, return_inverse=True)
    side = np.searchsorted(np.cumsum(fr)[:2], split_buckets(uniq, seed), side="right")
    return {name: rows[side[inverse] == k] for k, name in enumerate(SPLIT_NAMES)}


def fold_rows(groups: np.ndarray, usable: np.ndarray, folds: int, fold: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Patient-grouped K-fold: groups sorted by their :func:`split_buckets` value are dealt round-robin into
    ``folds`` folds (sizes within one group of each other); fold ``fold`` is the test split, the next one
    the val split, the rest train. Deterministic for the data and the seed."""
    if not (isinstance(folds, int) and folds >= 3 and isinstance(fold, int) and 0 <= fold < folds):
        raise UsageError(f"Expected folds >= 3 and 0 <= fold < folds. Received: folds={folds!r}, fold={fold!r}")
    rows = np.flatnonzero(usable)
    keys = np.asarray(groups, dtype=object)[rows].astype(str)
    uniq, inverse = np.unique(keys, return_inverse=True)
    if uniq.size < folds:
        raise UsageError(f"{folds} folds need at least {folds} patients (groups); the store's labelled slices "
                         f"have {uniq.size}. Use --folds {max(3, uniq.size)} or fewer, or more data.")
    of_group = np.empty(uniq.size, np.int64)
    of_group[np.argsort(split_buckets(uniq, seed), kind="stable")] = np.arange(uniq.size) % folds
    side = np.where(of_group == fold, 2, np.where(of_group == (fold + 1) % folds, 1, 0))
    return {name: rows[side[inverse] == k] for k, name in enumerate(SPLIT_NAMES)}


def split_record(splits: dict[str, np.ndarray], sop_uids: np.ndarray, groups: np.ndarray, **identity) -> dict:
    """What a run keeps of its split, to refuse a store whose split would differ: per split the slice and
    group counts and a digest of its sorted SOP Instance UIDs (order- and store-layout-independent)."""
    record = dict(identity, slices={}, groups={}, digest={})
    for name, rows in splits.items():
        h = hashlib.blake2b(digest_size=16)
        for uid in sorted(str(u) for u in np.asarray(sop_uids, dtype=object)[rows]):
            h.update(uid.encode("ascii", "replace") + b"\n")
        record["slices"][name] = int(rows.size)
        record["groups"][name] = int(np.unique(np.asarray(groups, dtype=object)[rows].astype(str)).size)
        record["digest"][name] = h.hexdigest()
    return record


def check_same_split(now: dict, recorded: dict, url: str, what: str) -> None:
    """Refuse (UsageError) when the split record ``now`` (of the store ``url``) differs from ``recorded`` (the
    one ``what`` was trained with), naming why: another salt, or other slices or labels."""
    if now["digest"] == recorded.get("digest"):
        return
    theirs, ours = recorded.get("salt_fingerprint"), now["salt_fingerprint"]
    if theirs != ours:
        cause = (f"its patient keys were made with another salt (fingerprint {ours}; the run's store had "
                 f"{theirs}): rebuild it with the salt of the run's store (--salt, ICHPREP_SALT or the "
                 "same salt file)")
    else:
        diff = ", ".join(f"{k} {recorded['slices'].get(k)} -> {now['slices'][k]} slices" for k in SPLIT_NAMES
                         if now["digest"][k] != recorded["digest"].get(k))
        cause = f"its slices or labels are not those the run was trained on ({diff})"
    raise UsageError(f"The split of {url} differs from the one {what} was trained with: {cause}. "
                     "Its test patients could include training patients, so it is refused.")
