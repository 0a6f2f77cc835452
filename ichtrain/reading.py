"""How a :class:`ichtrain.data.StoreStream` turns shard objects into tf.data batches: the shard fetchers,
read-ahead hints, the tf.data graphs around the per-batch reads, and the per-batch shaping (head crop, resize,
layout) in TensorFlow. TensorFlow is imported inside the functions that build graphs.
"""

from __future__ import annotations

import os

import numpy as np

from ichprep.errors import UsageError
from ichprep.shardread import local_object_path
from ichtrain.crop import crop_to_boxes

__all__ = ["series_bounds", "read_ahead_hinter", "zarr_shard_fetcher", "hu_pipeline", "window_pipeline",
           "check_reading", "batch_shaper"]


def series_bounds(study: np.ndarray, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first row of its series and the row after its last (int64): a store is ordered by study,
    series and z, so each series is a contiguous run; neighbour reads clip to it and never mix two series."""
    starts = np.flatnonzero(np.r_[True, (series[1:] != series[:-1]) | (study[1:] != study[:-1])])
    run_of = np.cumsum(np.isin(np.arange(series.size), starts)) - 1
    ends = np.r_[starts[1:], series.size]
    return starts[run_of].astype(np.int64), ends[run_of].astype(np.int64)


# Linux reads at most max(read_ahead_kb, max_sectors_kb) per WILLNEED call from its offset (force_page_cache_ra):
# one call for a whole 24 MiB shard object read its first 8 MiB here. Calls a step apart cover the object.
HINT_STEP = 512 << 10


def read_ahead_hinter(images):
    """``hint(shard)``: ask the kernel to start reading a shard object of a local store ahead of its use
    (``posix_fadvise(WILLNEED)``; its pages then arrive while earlier batches decode). None where the store
    is not a local folder or the platform has no posix_fadvise."""
    path = local_object_path(images)
    if path is None or not hasattr(os, "posix_fadvise"):
        return None

    def hint(shard: int) -> None:
        try:
            fd = os.open(path(shard), os.O_RDONLY)
        except OSError:
            return  # a missing object is reported when it is read
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, HINT_STEP):  # one call reads at most the device's read-ahead window
                os.posix_fadvise(fd, offset, min(HINT_STEP, size - offset), os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    return hint


def zarr_shard_fetcher(images, shard_slices: int):
    """``fetch(shard)`` -> a shard's rows read by zarr, for stores of a layout ichprep's shard reader does not
    read."""
    S = shard_slices

    class Decoded:
        def __init__(self, shard):
            self.block = np.asarray(images[shard * S:(shard + 1) * S])
            self.nbytes = self.block.nbytes

        def decode_into(self, i, out):
            out[...] = self.block[i]

    return Decoded


def hu_pipeline(batch, assembler, b, dims: tuple[int, int, int], parallel_reads: int):
    """tf.data batches ((hu (b, H, H, M) int16, params (b, M, 3, C) float32), labels) from ``batch(j)`` ->
    (hu, params, labels); ``dims`` = (H, M, C)."""
    import tensorflow as tf

    full, M, C = dims

    def load(j):
        hu, params, lab = tf.numpy_function(batch, [j], (tf.int16, tf.float32, tf.float32), stateful=False)
        hu.set_shape((b, full, full, M))
        params.set_shape((b, M, 3, C))
        lab.set_shape((b, 6))
        return (hu, params), lab

    ds = tf.data.Dataset.range(2**62 if assembler.repeat else assembler.n_batches)
    return ds.map(load, num_parallel_calls=max(1, parallel_reads), deterministic=True).prefetch(2)


def window_pipeline(read, assembler, b, read_dtype: str, image_shape: tuple, shape, parallel_reads: int):
    """tf.data batches from ``read(j)`` -> (images of ``image_shape`` per sample, labels, head boxes), each
    then shaped by ``shape`` (:func:`batch_shaper`); not prefetched (the caller may map further)."""
    import tensorflow as tf

    def load(j):
        img, lab, boxes = tf.numpy_function(read, [j], (tf.as_dtype(read_dtype), tf.float32, tf.float32),
                                            stateful=False)
        img.set_shape((b,) + tuple(image_shape))
        lab.set_shape((b, 6))
        return img, lab, boxes

    ds = tf.data.Dataset.range(2**62 if assembler.repeat else assembler.n_batches)  # repeat: indices cycle
    ds = ds.map(load, num_parallel_calls=max(1, parallel_reads), deterministic=True)
    return ds.map(shape, num_parallel_calls=2)  # two converted batches in flight: bounded memory


def check_reading(dtype: str, batch_size: int, neighbours, sequence: bool, max_neighbours: int) -> None:
    """Refuse (UsageError) a read the stream cannot deliver."""
    if dtype not in ("float16", "float32"):
        raise UsageError(f"Expected dtype float16 or float32. Received: dtype={dtype!r}")
    if batch_size < 1:
        raise UsageError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")
    if not isinstance(neighbours, int) or not 0 <= neighbours <= max_neighbours:
        raise UsageError(f"Expected neighbours an integer in [0, {max_neighbours}]. Received: neighbours={neighbours!r}")
    if neighbours and sequence:
        raise UsageError("Neighbour slices become extra channels of a one-slice model; a window sequence (rnn) "
                         f"cannot take them. Received: neighbours={neighbours} with a sequence stream")


def batch_shaper(full: int, size: int, C: int, planar: bool, sequence: bool, crop_head: bool, dtype: str):
    """``shape(img, lab, boxes) -> (img, lab)`` on whole batches, in TensorFlow (its cast is ~4x numpy's): the
    head crop, the resize to ``size`` and the layout the model takes, from a batch read (b, C, H, W) planar or
    (b, H, W, C)."""
    import tensorflow as tf

    def shape(img, lab, boxes):
        if crop_head:
            img = crop_to_boxes(img, boxes, size, planar)
        if planar:  # (b, C, H, W): resize each plane, then the layout the model takes
            if size != full and not crop_head:
                img = tf.image.resize(tf.reshape(tf.cast(img, tf.float32), (-1, full, full, 1)), (size, size),
                                      method="area")
            img = tf.reshape(tf.cast(img, dtype), (-1, C, size, size, 1) if sequence else (-1, size, size, 1))
            return img, lab
        if size != full and not crop_head:
            img = tf.image.resize(tf.cast(img, tf.float32), (size, size), method="area")
        img = tf.cast(img, dtype)
        if sequence:
            img = tf.expand_dims(tf.transpose(img, (0, 3, 1, 2)), -1)
        return img, lab

    return shape
