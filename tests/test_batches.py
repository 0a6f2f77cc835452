"""ichtrain/batches.py: whole batches from shard objects, and the shards announced ahead of their use."""

import numpy as np

from ichtrain.batches import HINT_AHEAD, BatchAssembler


class _Shard:
    def __init__(self, shard, S):
        self.first, self.nbytes = shard * S, S

    def decode_into(self, i, out):
        out[...] = self.first + i  # each slice holds its row number


def _assembler(rows, S=4, B=3, hint=None, repeat=False):
    rows = np.asarray(rows, np.int64)
    return BatchAssembler(rows[:, None], np.zeros((len(rows), 6), np.float32), S, (2, 2, 1), B,
                          lambda s: _Shard(s, S), budget_bytes=1000, hint=hint, repeat=repeat)


def test_batches_hold_their_rows_and_the_next_batches_shards_are_announced_once():
    rows = [0, 5, 9, 13, 2, 17, 21, 6, 25, 29, 1, 14, 18, 30]  # 14 samples: 5 batches of 3 (the last of 2)
    seen = []
    a = _assembler(rows, hint=seen.append)
    img, _ = a.batch(0)
    assert img[:, 0, 0, 0].tolist() == rows[:3]  # the slices themselves
    shards = [sorted(set(r // 4 for r in rows[3 * k:3 * k + 3])) for k in range(5)]
    assert seen == [s for k in range(1, 1 + HINT_AHEAD) for s in shards[k]]  # batches 1..4, in order
    seen.clear()
    a.batch(1)
    assert seen == []  # batch 5 does not exist: nothing more to announce
    seen.clear()
    b = _assembler(rows, hint=seen.append)
    b.batch(3)  # a later batch first (parallel readers): only the batches after it
    assert seen == shards[4]
    seen.clear()
    b.batch(2)
    assert seen == []  # announced already
    np.testing.assert_array_equal(_assembler(rows).batch(4)[0], b.batch(4)[0])  # hints change no value


def test_a_repeated_stream_announces_batches_past_its_end():
    seen = []
    a = _assembler([0, 4, 8, 12], B=2, hint=seen.append, repeat=True)  # batches cycle: {0, 1}, {2, 3}, ...
    a.batch(0)
    assert seen == [2, 3, 0, 1, 2, 3, 0, 1]


def test_a_local_store_hints_its_shard_files_and_others_do_not(brain_store):
    from ichtrain.data import StoreStream

    stream = StoreStream(brain_store, fractions=(1.0, 0.0, 0.0))
    hint = stream._hinter()
    assert hint is not None
    hint(0)  # the object exists: no error
    hint(10**6)  # no such object: nothing (a missing object is reported when it is read)


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


def test_a_hint_asks_for_every_byte_of_the_shard_object_a_window_at_a_time(brain_store, monkeypatch):
    """One WILLNEED call reads at most the device's read-ahead window from its offset: the hint covers the whole
    object in calls of at most HINT_STEP bytes."""
    import os

    from ichtrain import reading
    from ichtrain.data import StoreStream

    monkeypatch.setattr(reading, "HINT_STEP", 4096)
    calls = []
    monkeypatch.setattr(reading.os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n, advice)))
    stream = StoreStream(brain_store, fractions=(1.0, 0.0, 0.0))
    stream._hinter()(0)
    path = os.path.join(brain_store, "images", "c", "0", "0", "0", "0")
    size = os.path.getsize(path)
    assert size > 3 * 4096 and all(a == os.POSIX_FADV_WILLNEED and 0 < n <= 4096 for _, n, a in calls)
    covered = sorted((off, off + n) for off, n, _ in calls)
    assert covered[0][0] == 0 and covered[-1][1] == size
    assert all(b == c for (_, b), (c, _) in zip(covered, covered[1:]))  # no gap, no overlap
