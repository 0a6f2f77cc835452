"""Whole batches assembled in the reader: sampled, shuffled and decoded straight into one batch buffer.

Why not tf.data's unbatch -> shuffle -> batch: each of those touches every slice in Python-free C++, but
each copies it, and the float16 -> float32 cast and the buffers' fresh pages cost more; one core
delivered ~400 slices/s where reading and decompressing the same shards alone ran at ~2,200/s
(benchmarks/stream.py, docs/performance.md). Here a batch is one Python call: the rows of its samples
are known in advance (:func:`delivery_order`), the shard objects they lie in are fetched whole
(compressed, one store call each, kept in a small cache) and each slice is decompressed straight into
its place in a 64-byte-aligned batch buffer, which TensorFlow then takes without copying.

Shuffling. Weighted epochs are drawn with replacement (``ichtrain.data.sample_epoch``); the draws are
grouped by shard, the shards put in random order, and consecutive shards pooled into windows whose draws
are permuted: each batch mixes several shards (patients), and only the shard objects of about two
windows are held at a time.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["shard_groups", "delivery_order", "aligned_empty", "BatchAssembler"]

ALIGN = 64  # TensorFlow takes a numpy array without copying it when its data is aligned to this
HINT_AHEAD = 4  # batches whose shard objects are announced for reading ahead


def shard_groups(sorted_rows: np.ndarray, shard_slices: int) -> list[tuple[int, np.ndarray]]:
    """Sorted rows grouped by the shard they lie in: (shard, its rows), in shard order."""
    rows = np.asarray(sorted_rows, np.int64)
    if rows.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(rows // shard_slices)) + 1
    return [(int(g[0]) // shard_slices, g) for g in np.split(rows, cuts)]


def delivery_order(sorted_rows: np.ndarray, shard_slices: int, pool_shards: int,
                   rng: np.random.Generator | None) -> np.ndarray:
    """Rows in the order they are delivered. ``rng`` None: as given (evaluation). Otherwise shards in
    random order, pooled ``pool_shards`` at a time, the draws of each pool permuted. Pooling by shards
    (not by rows) bounds the shard objects a pool needs, so the reader's cache holds them all (pooled by
    rows, evicted shards were fetched again: docs/performance.md)."""
    rows = np.asarray(sorted_rows, np.int64)
    if rng is None or rows.size == 0:
        return rows
    groups = [g for _, g in shard_groups(rows, shard_slices)]
    order = rng.permutation(len(groups))
    step = max(1, int(pool_shards))
    parts = [rng.permutation(np.concatenate([groups[k] for k in order[i:i + step]]))
             for i in range(0, len(order), step)]
    return np.concatenate(parts)


def _aligned_view(raw: np.ndarray, shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + n].view(dtype).reshape(shape)


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``ALIGN``-byte boundary."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return _aligned_view(np.empty(n + ALIGN, np.uint8), shape, dtype)


class _BufferPool:
    """Batch buffers handed to TensorFlow and reused once nothing holds them any more (TensorFlow keeps a
    reference to each array it took without copying, and drops it with the tensor): fresh pages for
    every batch cost more than the copy they replace."""

    def __init__(self, shape: tuple[int, ...], dtype, keep: int = 16):
        self.shape, self.dtype, self.keep = shape, dtype, keep
        self._nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize + ALIGN
        self._raw: list[np.ndarray] = []  # the memory owners: every view of one (a batch) refers to it
        self._lock = threading.Lock()

    def take(self) -> np.ndarray:
        with self._lock:
            for raw in self._raw:
                # references: the list's, the loop variable's and getrefcount's argument: no view lives
                if sys.getrefcount(raw) <= 3:
                    return _aligned_view(raw, self.shape, self.dtype)
            raw = np.empty(self._nbytes, np.uint8)
            if len(self._raw) < self.keep:
                self._raw.append(raw)
            return _aligned_view(raw, self.shape, self.dtype)


class _ShardCache:
    """Shard objects fetched once and kept while batches still need them, within ``budget`` bytes
    (objects in use by a batch being assembled are never dropped)."""

    def __init__(self, fetch, uses: dict[int, int], budget: int):
        self._fetch, self._total, self._budget = fetch, dict(uses), budget
        self._left = dict(uses)
        self._held: OrderedDict[int, object] = OrderedDict()
        self._pins: dict[int, int] = {}
        self._loading: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def acquire(self, shard: int):
        while True:
            with self._lock:
                if shard in self._held:
                    self._held.move_to_end(shard)
                    self._pins[shard] = self._pins.get(shard, 0) + 1
                    return self._held[shard]
                event = self._loading.get(shard)
                if event is None:
                    event = self._loading[shard] = threading.Event()
                    break
            event.wait()
        try:
            obj = self._fetch(shard)
        finally:
            with self._lock:
                del self._loading[shard]
            event.set()
        with self._lock:
            self._held[shard] = obj
            self._pins[shard] = self._pins.get(shard, 0) + 1
            if self._left.get(shard, 0) <= 0:  # fetched again (a repeated stream): a new round of uses
                self._left[shard] = self._total.get(shard, 1)
            self._trim()
        return obj

    def release(self, shard: int) -> None:
        with self._lock:
            self._pins[shard] -= 1
            self._left[shard] = self._left.get(shard, 1) - 1
            if self._left[shard] <= 0 and not self._pins[shard]:
                self._held.pop(shard, None)
            self._trim()

    def _trim(self) -> None:
        size = sum(o.nbytes for o in self._held.values())
        for shard in list(self._held):
            if size <= self._budget:
                break
            if not self._pins.get(shard):
                size -= self._held.pop(shard).nbytes


class BatchAssembler:
    """Batch ``j`` of a delivery order: ``images`` (b, H, W, M * C) float16 and ``labels`` (b, 6) float32.

    ``sources``: (n, M) store rows per sample (M = 2k + 1 neighbour slices, channels of slice z-k first).
    ``fetch(shard)`` returns an object with ``decode_into(i, out)`` and ``nbytes`` (a
    :class:`ichprep.shardread.Shard`). ``slice_shape``: (H, W, C) of one delivered slice. ``window``: None
    (slices are delivered as stored: float16, or int16 for an hu store whose windows the model applies,
    :mod:`ichtrain.graphwindows`), or ``window(row, hu, out)`` writing the C float16 windows of a stored
    int16 HU slice (an hu store; :class:`ichprep.readwindows.ReadWindows`). ``repeat``: batch
    indices run on forever and every batch is full (the order is cycled). ``planar`` (with ``window``, one
    slice per sample): images are (b, C, H, W) in ``dtype`` (float16 or float32), each window its own plane,
    written by ``window.planar`` -- the rnn's sequence layout, and for C = 1 the same bytes as channel-last.
    """

    def __init__(self, sources: np.ndarray, labels: np.ndarray, shard_slices: int, slice_shape: tuple[int, ...],
                 batch_size: int, fetch, budget_bytes: int, drop_remainder: bool = False, repeat: bool = False,
                 window=None, planar: bool = False, dtype=np.float16, hint=None, ahead: int = HINT_AHEAD):
        self.sources = np.asarray(sources, np.int64).reshape(len(sources), -1)
        self.labels = np.asarray(labels, np.float32)
        self.S, self.B = int(shard_slices), int(batch_size)
        self.slice_shape = tuple(slice_shape)
        self.window = window
        self.repeat = repeat
        n = len(self.sources)
        self.n_batches = (n // self.B) if (drop_remainder or repeat) else -(-n // self.B)
        M = self.sources.shape[1]
        h, w, c = self.slice_shape
        self.planar = bool(planar)
        if self.planar and (window is None or M != 1):
            raise ValueError("planar batches are windows of an hu store, one slice per sample")
        dtype = np.dtype(dtype)
        if not (dtype == np.float16 or (dtype == np.float32 and self.planar) or (dtype == np.int16 and window is None)):
            raise ValueError("Expected dtype float16 (float32 for planar batches, int16 for an hu store's slices "
                             f"as stored). Received: {dtype}")
        self.dtype = dtype
        self._pool = _BufferPool((self.B, c, h, w) if self.planar else (self.B, h, w, M * c), dtype)
        shards, counts = np.unique(self._batch_shards_all(), return_counts=True)
        self._cache = _ShardCache(fetch, dict(zip(shards.tolist(), counts.tolist())), budget_bytes)
        self._hint, self._ahead = hint, int(ahead)
        self._hinted_upto = -1  # batches whose shards were announced to the storage (see _announce)
        self._hint_lock = threading.Lock()

    def _announce(self, j: int) -> None:
        """Tell the storage which shard objects batches j+1 .. j+ahead will read (``hint(shard)``: a local
        store asks the kernel to read the file ahead), so a cold read of the next shards overlaps this batch's
        decoding instead of waiting for each whole object in turn."""
        if self._hint is None:
            return
        with self._hint_lock:
            first, last = max(self._hinted_upto + 1, j + 1), j + self._ahead
            if last < first:
                return
            self._hinted_upto = last
        for k in range(first, last + 1):
            if not self.repeat and k >= self.n_batches:
                break
            for s in np.unique(self.sources[self.positions(k)] // self.S).tolist():
                self._hint(s)

    def positions(self, j: int) -> np.ndarray:
        n = len(self.sources)
        pos = np.arange(j * self.B, (j + 1) * self.B)
        return pos % n if self.repeat else pos[pos < n]

    def _batch_shards_all(self) -> np.ndarray:
        """Every (batch, shard) need of one pass, flattened to the shard numbers (for use counts)."""
        if not len(self.sources):
            return np.zeros(0, np.int64)
        batch = np.arange(len(self.sources)) // self.B
        shard = self.sources // self.S
        pairs = np.unique(np.stack([np.repeat(batch, shard.shape[1]), shard.reshape(-1)], 1), axis=0)
        return pairs[:, 1]

    def batch(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        pos = self.positions(int(j))
        src = self.sources[pos]  # (b, M)
        b, M = src.shape
        buf = self._pool.take()
        out = buf[:b]
        shards = np.unique(src // self.S).tolist()
        self._announce(int(j))
        held = {}
        try:
            for s in shards:
                held[s] = self._cache.acquire(s)
            h, w, c = self.slice_shape
            scratch = np.empty(self.slice_shape, self.dtype) if M > 1 else None
            if self.window is not None:
                hu = np.empty((h, w, 1), np.int16)
                row_scratch = np.empty(w * c, np.float32)
            if self.planar:
                for i in range(b):
                    row = int(src[i, 0])
                    held[row // self.S].decode_into(row % self.S, hu)
                    self.window.planar(row, hu[:, :, 0], out[i], row_scratch[:w])
                return out, self.labels[pos]
            for i in range(b):
                for m in range(M):
                    row = int(src[i, m])
                    shard = held[row // self.S]
                    if self.window is None:
                        dest = out[i] if M == 1 else scratch
                        shard.decode_into(row % self.S, dest)
                        if M > 1:  # neighbour slices interleave along channels: decoded, then placed
                            out[i, :, :, m * c:(m + 1) * c] = scratch
                    else:  # windowed straight into the slice's channels (a strided view when M > 1)
                        shard.decode_into(row % self.S, hu)
                        self.window(row, hu[:, :, 0], out[i, :, :, m * c:(m + 1) * c], row_scratch)
        finally:
            for s in held:
                self._cache.release(s)
        return out, self.labels[pos]
