"""Store -> splits -> per-type weighted sampling -> tf.data.

Reads a store only through :mod:`ichprep.store`. TensorFlow is imported lazily (inside
:meth:`StoreStream.dataset`), so splits and sampling plans can be computed and tested without it.

Reading. One Python call per batch, never per slice (:mod:`ichtrain.batches`): the epoch's draws are
put in their delivery order up front (shards in random order, pooled a few shards at a time, the draws
of each pool permuted), each shard object is fetched whole and compressed, once, and each slice is
decompressed straight into its place in the batch buffer that TensorFlow then takes without a copy; the
cast to ``dtype`` (and any resize) runs per batch in TensorFlow. Memory: at most ``shuffle_mb`` MiB of
shard objects (two pools' worth) plus ~16 batch buffers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ichprep import store as st
from ichprep.diskspace import size_on_disk
from ichprep.errors import DamagedShardError, StoreError, UsageError
from ichprep.executor import reuse_freed_memory
from ichprep.labels import UNLABELLED
from ichprep.readwindows import ReadWindows
from ichprep.shardread import shard_reader
from ichprep.windows import Window, parse_read_windows
from ichtrain.augment import augment_images, parse_augment
from ichtrain.crop import check_box_source, check_crop, sample_boxes
from ichtrain.batches import BatchAssembler, delivery_order, shard_groups
from ichtrain.graphwindows import resolve_windows_on
from ichtrain.reading import (batch_shaper as _batch_shaper, check_reading, hu_pipeline, read_ahead_hinter,
                              series_bounds, window_pipeline, zarr_shard_fetcher)
from ichtrain.sampling import sample_epoch, type_weights  # noqa: F401 (re-exported)
from ichtrain.splits import SPLIT_BY, SPLIT_NAMES, fold_rows, split_buckets, split_record, split_rows  # noqa: F401 (re-exported)
from ichtrain.splits import check_same_split

__all__ = ["StoreStream", "split_rows", "split_buckets", "split_record", "fold_rows", "run_stream", "type_weights", "sample_epoch", "SPLIT_NAMES"]

MAX_NEIGHBOURS = 4  # 2.5D context: up to 4 slices each side (9 slices per sample)


def run_stream(run: dict, url: str | None = None) -> "StoreStream":
    """The stream of a run's store (or ``url``) with the run's split: its grouping, fractions or fold, seed."""
    fold = run.get("fold")
    url = url or run["store"]
    windows = None
    if run.get("windows") and st.read_info(url)[1].hu:  # an hu store: the windows the run's model reads
        windows = ",".join(Window.from_dict(d).spec() for d in run["windows"])
    return StoreStream(url, by=run["split_by"], fractions=tuple(run["fractions"]), seed=run["seed"],
                       fold=tuple(fold) if fold else None, windows=windows,
                       generation=run.get("store_generation") if url == run["store"] else None)


@dataclass
class StoreStream:
    """A complete store opened read-only for training: splits, sampling and tf.data pipelines.

    Args:
        url: the store (a local path or an fsspec URL); it must be complete (a finished build).
        by: the groups no split divides: ``patient`` (a slice without PatientID is its study's own) or
            ``study``.
        fractions: train, val, test shares of the groups, placed by hash buckets (``ichtrain.splits``).
        seed: moves the hash buckets, and seeds the sampling.
        fold: ``(k, folds)``: patient-grouped K-fold splits instead of ``fractions`` (fold k is test, k + 1 val).
        windows: an hu store only: the windows applied as slices are read (a preset or a list, as ``ichprep
            build --windows`` takes them; default ``cnn``, the full range).
        generation: the rows of this generation of a grown store (``ichprep build --append``) only; default
            the latest. A run keeps reading the generation it trained on: hash buckets keep each old patient
            in its split, and the new patients stay out of it.

    Raises:
        UsageError: a bad ``by``, ``fractions`` or ``windows``; too few groups for ``fold``.
        MissingStoreError, IncompleteStoreError, SchemaError: the store is missing, unfinished or not ichprep's.
    """

    url: str
    by: str = "patient"
    fractions: tuple = (0.8, 0.1, 0.1)
    seed: int = 0
    fold: tuple | None = None  # (fold, folds): patient-grouped K-fold splits instead of fractions (cv)
    windows: str | None = None  # an hu store only: the windows applied when read (default cnn: full range)
    generation: int | None = None  # rows of this generation of a grown store only (default: the latest)
    _g: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.by not in SPLIT_BY:
            raise UsageError(f"Expected split by one of {', '.join(SPLIT_BY)}. Received: by={self.by!r}")
        self._g, self.info = st.open_store(self.url, require_complete=True)
        reuse_freed_memory()  # each fetched shard object was a fresh mapping, faulted in: docs/performance.md
        g = self._g
        self.labels = st.column(g, "labels")
        self.types = st.column(g, "type")
        status = st.column(g, "status")
        labelled = ~(self.labels == UNLABELLED).any(axis=1)
        study = st.column(g, "study_uid")
        if self.by == "patient":  # a slice without PatientID is its study's own group
            patient = st.column(g, "patient")
            self.groups = np.where(patient == "", "study:" + study.astype(str), patient)
        else:
            self.groups = study
        self.labelled = labelled
        if self.generation is None:
            self.generation = self.info.generation
        in_generation = np.arange(status.size) < self.info.rows_at(self.generation)
        self.readable = (status == 0) & in_generation  # pixels usable (prediction reads these, labelled or not)
        self.usable = self.readable & labelled  # unlabelled slices never enter a split
        if self.fold is None:
            self.splits = split_rows(self.groups, self.usable, self.fractions, self.seed)
        else:
            self.splits = fold_rows(self.groups, self.usable, int(self.fold[1]), int(self.fold[0]), self.seed)
        self.sop_uids = st.column(g, "sop_uid")
        self.series_lo, self.series_hi = series_bounds(study, st.column(g, "series_uid"))  # neighbours clip to
        with st.fast_codec_pipeline():  # the codec pipeline is bound when the array is opened: open it once
            self.images = st.images(g)
        self._reader = shard_reader(self.images)  # None for a layout ichprep does not write: zarr reads it
        self.shard_slices = int(self.images.shards[0])
        self.n = self.info.n
        self.read_windows = self._read_windows(g)  # None: slices delivered as stored
        self.windows = self.read_windows.windows if self.read_windows else self.info.windows
        self.channels = len(self.windows)  # what a model sees per slice
        self.window_names = [w.name for w in self.windows]
        self._closed = threading.Event()
        self._reading = 0  # reads in flight (tf.data reader threads)
        self.found_boxes: dict[int, np.ndarray] = {}  # head boxes found per row (crop="head"), kept across epochs
        self._reading_lock = threading.Lock()
        self.read_failure: StoreError | None = None  # the first failed read, said plainly (see guard)

    @functools.cached_property
    def stored_boxes(self) -> np.ndarray:  # (n, 4): the build's head boxes, read when a stream first crops to them
        return st.head_boxes(self._g)

    def _read_windows(self, g) -> ReadWindows | None:
        """An hu store: the windows to apply as slices are read. Any other store holds its windows already, so
        asking for windows there is refused, naming the store's."""
        if not self.info.hu:
            if self.windows is not None:
                raise UsageError(f"Windows are applied when reading an hu store (ichprep build --preset hu); the store "
                                 f"{self.url!r} holds windows {', '.join(w.spec() for w in self.info.windows)} already. "
                                 f"Received: windows={self.windows!r}")
            return None
        return ReadWindows(parse_read_windows(self.windows or "cnn"), st.column(g, "window_center"),
                           st.column(g, "window_width"), self.readable)

    def split_record(self) -> dict:
        """This stream's split as a run records it (see :func:`split_record`)."""
        return split_record(self.splits, self.sop_uids, self.groups,
                            salt_fingerprint=self.info.salt_fingerprint, by=self.by, seed=self.seed,
                            fractions=[float(f) for f in self.fractions],
                            fold=list(self.fold) if self.fold else None)

    def check_split(self, recorded: dict | None, what: str) -> None:
        """Refuse (UsageError) when this stream's split differs from ``recorded`` (a run's), naming why."""
        if not recorded:
            return
        check_same_split(self.split_record(), recorded, self.url, what)

    def empty_split_reason(self, split: str) -> str:
        """Why ``split`` holds no slice, naming the real cause."""
        if not self.labelled.any():
            return (f"No slice of {self.url} is labelled (was it built without --labels?): splits hold "
                    "labelled slices only")
        n_groups = int(np.unique(self.groups[self.usable].astype(str)).size)
        k = SPLIT_NAMES.index(split)
        return (f"Split {split!r} is empty: {n_groups} {self.by}s are placed by hash buckets with fractions "
                f"{tuple(self.fractions)} and none fell in {split!r} (its fraction is {self.fractions[k]}); "
                "choose another --seed or larger fractions for it")

    @contextlib.contextmanager
    def guard(self):
        """Run a Keras loop over this stream's pipelines: on any error the stream is closed (see
        :meth:`close`), and a failed read surfaces as the StoreError that names its slices instead of
        TensorFlow's wrapped message."""
        try:
            yield self
        except BaseException as exc:
            self.close()
            if self.read_failure is not None and isinstance(exc, Exception):
                raise self.read_failure from exc
            raise

    def close(self, timeout: float = 5.0) -> None:
        """Stop every pipeline of this stream: reads not yet started fail at once, and this waits (GIL
        released) until those in flight have returned. Call it before dropping a pipeline that is still
        reading (an error mid-epoch): destroying a tf.data iterator while its reader threads wait for the
        GIL deadlocks the process."""
        self._closed.set()
        deadline = time.monotonic() + timeout
        while self._reading and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # let reader threads that just saw the flag leave Python

    # -- plans ---------------------------------------------------------------------------------
    def draws(self, split: str, weighted: bool = True, alpha: float = 0.5, epoch_size: int | None = None,
              epoch: int = 0, shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.random.Generator | None]:
        """One epoch's rows, sorted, and the generator that orders them (None when not weighted).

        ``shard=(i, n)``: input pipeline ``i`` of ``n`` (one per training worker) takes draws ``i::n`` of the
        epoch every pipeline computes identically (same seed), so the pipelines' draws are disjoint and
        together are exactly the one-pipeline epoch: no sample is fed twice per global step.
        """
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise UsageError(f"Expected shard (index, count) with 0 <= index < count. Received: shard={shard!r}")
        if split not in self.splits:
            raise UsageError(f"Expected split one of {SPLIT_NAMES}. Received: split={split!r}")
        rows = self.splits[split]
        if rows.size == 0:
            raise UsageError(self.empty_split_reason(split))
        if weighted:
            rng = np.random.default_rng([self.seed, epoch])
            drawn = np.sort(sample_epoch(rows, self.types[rows], alpha, epoch_size or rows.size, rng))
        else:
            rng = None
            drawn = rows
        if count > 1:
            drawn = drawn[index::count]
            if rng is not None:  # each pipeline orders its shards differently: the order is its own
                rng = np.random.default_rng([self.seed, epoch, index])
        return drawn, rng

    def plan(self, split: str, weighted: bool = True, alpha: float = 0.5, epoch_size: int | None = None,
             epoch: int = 0, shard: tuple[int, int] = (0, 1)) -> list[tuple[int, np.ndarray]]:
        """One epoch's draws (see :meth:`draws`) as blocks: (shard, sorted rows in it), one per shard, in the
        random order the stream reads them when weighted."""
        drawn, rng = self.draws(split, weighted, alpha, epoch_size, epoch, shard)
        blocks = shard_groups(drawn, self.shard_slices)
        if rng is not None:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        return blocks

    def _pool_shards(self, shuffle_mb: float) -> int:
        """Shards pooled and permuted together (see :func:`ichtrain.batches.delivery_order`): as many as fit
        twice in ``shuffle_mb`` (the shard cache's budget: a batch at a pool's edge needs two pools), at least
        two. A shard's size is its mean size on disk for a local store (compressed, as the cache holds it), else
        its decoded size."""
        n_shards = -(-self.n // self.shard_slices)
        on_disk = size_on_disk(os.path.join(str(self.url), "images"))
        shard_mb = (on_disk / n_shards if on_disk else
                    self.shard_slices * self.info.image_size ** 2 * self.info.channels * 2) / 2**20
        return max(2, int(shuffle_mb / (2 * max(shard_mb, 1e-3))))

    def neighbour_rows(self, rows: np.ndarray, neighbours: int) -> np.ndarray:
        """(len(rows), 2k + 1) rows z-k .. z+k of each row's own series; at a series' ends the end slice
        repeats."""
        rows = np.asarray(rows, np.int64)
        idx = rows[:, None] + np.arange(-neighbours, neighbours + 1)[None, :]
        return np.clip(idx, self.series_lo[rows][:, None], self.series_hi[rows][:, None] - 1)

    def _tracked_batch(self, assembler, j: int):
        """Batch ``j`` as a pipeline asks for it: refused once the stream is closed, counted while in flight
        (see :meth:`close`), and a failure kept, said plainly, for :meth:`guard`."""
        if self._closed.is_set():
            raise RuntimeError("the stream was closed")
        with self._reading_lock:
            self._reading += 1
        try:
            return assembler.batch(j)
        except Exception as exc:
            if self.read_failure is None:
                src = assembler.sources[assembler.positions(j)]
                changed = self._store_changed()
                if changed:  # rebuilt (--overwrite) or removed under this reader: no repair will help
                    self.read_failure = StoreError(
                        f"could not read slices {int(src.min())}..{int(src.max())} of {self.url}: the store {changed} "
                        "since this stream opened it; rerun the command on the store as it is now")
                elif isinstance(exc, DamagedShardError):  # names its shard and row already
                    self.read_failure = DamagedShardError(
                        f"could not read slices {int(src.min())}..{int(src.max())}: {exc}; run 'ichprep verify "
                        f"{self.url} --repair --source DICOM_DIR' to rebuild it", exc.shard, exc.row)
                else:
                    self.read_failure = StoreError(
                        f"could not read slices {int(src.min())}..{int(src.max())} of {self.url}: "
                        f"{type(exc).__name__}: {exc}; the store may be damaged: run 'ichprep verify {self.url}'")
            raise
        finally:
            with self._reading_lock:
                self._reading -= 1

    def _store_changed(self) -> str | None:
        """How the store differs from what this stream opened ('was rebuilt', 'was removed'), or None."""
        try:
            _, now = st.read_info(self.url)
        except StoreError:
            return "was removed or is being rebuilt"
        return None if now.attrs == self.info.attrs else "was rebuilt (its attributes changed)"

    def _hinter(self):
        return read_ahead_hinter(self.images) if self._reader is not None else None

    def _fetcher(self):
        return self._reader.fetch if self._reader is not None else zarr_shard_fetcher(self.images, self.shard_slices)

    # -- tf.data ---------------------------------------------------------------------------------
    def dataset(self, split: str = "train", batch_size: int = 32, weighted: bool | None = None, alpha: float = 0.5,
                epoch_size: int | None = None, epochs: int = 1, image_size: int | None = None,
                dtype: str = "float32", sequence: bool | None = None, shuffle_mb: float = 256.0,
                parallel_reads: int = 2, drop_remainder: bool = False, first_epoch: int = 0,
                rows: np.ndarray | None = None, shard: tuple[int, int] = (0, 1), repeat: bool = False,
                neighbours: int = 0, windows_on: str = "reader", augment: str | None = None, augment_seed: int = 0,
                crop: str = "none", boxes: str = "read"):
        """A ``tf.data.Dataset`` of (images, labels float32 (6,)) batches with static shapes.

        images: (H, W, C) for one-channel stores; (C, H, W, 1) -- the window sequence, Table 2.1 order --
        for multi-window stores (``sequence`` overrides). ``image_size`` downscales on the fly (area).
        ``weighted`` defaults to True for train and False otherwise (evaluation reads each slice once).
        ``rows`` streams exactly those rows, in ascending row order (prediction on unlabelled stores).
        ``first_epoch``: plans epochs ``first_epoch .. epochs - 1`` (resuming a run).
        ``shard=(i, n)``: this pipeline's part of every epoch (see :meth:`plan`); one per training worker.
        ``repeat``: cycle forever (validation under a multi-worker strategy; the caller sets the steps).
        ``neighbours=k`` (2.5D): each sample also carries the slices z-k .. z+k of its own series as channels,
        (H, W, (2k + 1) C) with slice z-k first; at a series' ends the end slice repeats (one-slice models
        only: not with ``sequence``).
        ``shuffle_mb``: at most this many MiB of compressed shard objects are held; weighted draws are
        permuted within pools of as many shards as half of it holds (at least two).
        ``parallel_reads``: batches assembled at once (decompression releases the GIL).
        ``windows_on`` (an hu store): ``reader`` applies the windows on the host; ``model`` delivers ((hu
        (b, H, W, 2k + 1) int16 as stored, window params (b, 2k + 1, 3, C) float32), labels) for a model whose
        first layer windows them (:mod:`ichtrain.graphwindows`; ``image_size`` and ``dtype`` are then that
        layer's business); ``auto``: ``model`` where a GPU trains.
        ``augment``: an augmentation spec applied to every batch after the resize (:mod:`ichtrain.augment`;
        training streams only), seeded by ``augment_seed`` and the batch's index; not with ``windows_on='model'``
        (the training model augments then: :func:`ichtrain.graphwindows.reading_model`).
        ``crop``: ``head`` crops each sample to a square around its centre slice's head (:mod:`ichtrain.crop`,
        ``boxes`` ``store`` or ``read``) before the resize; not with ``windows_on='model'``.
        """
        weighted = (split == "train") if weighted is None else weighted
        sequence = (self.channels > 1) if sequence is None else sequence
        check_reading(dtype, batch_size, neighbours, sequence, MAX_NEIGHBOURS)
        full = self.info.image_size
        size = image_size or full
        if rows is not None:
            order = np.sort(np.asarray(rows, np.int64))
        else:
            order = self._epochs_order(split, weighted, alpha, epoch_size, first_epoch, epochs, shard, shuffle_mb)
        sources = self.neighbour_rows(order, neighbours) if neighbours else order[:, None]
        whole = drop_remainder or repeat
        b = batch_size if whole else None
        spec = parse_augment(augment)
        crop_head = check_crop(crop) == "head" and check_box_source(boxes, self.info)
        if resolve_windows_on(windows_on, self) == "model":
            if spec.active or crop_head:
                raise UsageError("Augmentation and head crops run in the reader; they cannot follow windows computed "
                                 f"in the model. Received: augment={spec.to_string()!r}, crop={crop!r} with "
                                 f"windows_on={windows_on!r}")
            assembler = BatchAssembler(sources, self.labels[order], self.shard_slices, (full, full, 1), batch_size,
                                       self._fetcher(), int(shuffle_mb * 2**20), drop_remainder=drop_remainder,
                                       repeat=repeat, dtype="int16", hint=self._hinter())
            return self._hu_dataset(assembler, b, parallel_reads)
        # Windows read from an hu store as a sequence, or one window, are written as planes in the asked dtype
        # (see ichprep.readwindows): no transpose and no cast left for TensorFlow.
        planar = self.read_windows is not None and not neighbours and (sequence or self.channels == 1)
        read_dtype = dtype if planar else "float16"
        assembler = BatchAssembler(sources, self.labels[order], self.shard_slices, (full, full, self.channels),
                                   batch_size, self._fetcher(), int(shuffle_mb * 2**20),
                                   drop_remainder=drop_remainder, repeat=repeat, window=self.read_windows,
                                   planar=planar, dtype=read_dtype, hint=self._hinter())
        C = self.channels * (2 * neighbours + 1)

        def read(j):
            img, lab = self._tracked_batch(assembler, int(j))
            centre = assembler.sources[assembler.positions(int(j))][:, neighbours]
            return img, lab, (sample_boxes(boxes, self, centre, img, planar, neighbours * self.channels) if crop_head
                              else np.zeros((0, 4), np.float32))

        ds = window_pipeline(read, assembler, b, read_dtype, (C, full, full) if planar else (full, full, C),
                             _batch_shaper(full, size, C, planar, sequence, crop_head, dtype), parallel_reads)
        if spec.active:
            ds = ds.enumerate().map(lambda j, batch: (augment_images(batch[0], spec, augment_seed, j, sequence, True),
                                                      batch[1]), num_parallel_calls=2, deterministic=True)
        return ds.prefetch(2)

    def _epochs_order(self, split: str, weighted: bool, alpha: float, epoch_size, first_epoch: int, epochs: int,
                      shard: tuple[int, int], shuffle_mb: float) -> np.ndarray:
        """The rows epochs ``first_epoch .. epochs - 1`` deliver, in order: each epoch's draws pooled by shards."""
        parts, pool = [], self._pool_shards(shuffle_mb)
        for e in range(first_epoch, epochs):
            drawn, rng = self.draws(split, weighted, alpha, epoch_size, epoch=e, shard=shard)
            parts.append(delivery_order(drawn, self.shard_slices, pool, rng))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _hu_dataset(self, assembler, b, parallel_reads):
        """The ``windows_on='model'`` pipeline (see :meth:`dataset`): slices as stored, each row's window params."""
        M, C = assembler.sources.shape[1], self.channels

        def batch(j):
            hu, lab = self._tracked_batch(assembler, int(j))
            src = assembler.sources[assembler.positions(int(j))]
            return hu, self.read_windows.params_batch(src.reshape(-1)).reshape(len(src), M, 3, C), lab

        return hu_pipeline(batch, assembler, b, (self.info.image_size, M, C), parallel_reads)
