"""Head crops in the stream: each sample cut to a square around its head before the resize.

Boxes come from :mod:`ichprep.headbox` (the largest tissue region of the centre slice, a margin, the aspect
kept): stored by the build (``store``: a store of schema 5, the box found on the slice's HU) or found on the
windowed slice as it is read (``read``: older stores; a run records which, so all its readers crop alike). The crop is read with TensorFlow's ``crop_and_resize`` to twice the target size (bilinear: at most
~2x decimation, so little aliasing), then an area resize halves it, as the uncropped stream's area resize
does. Every reader of a run crops alike (training, calibration, evaluation, prediction).
"""

from __future__ import annotations

import numpy as np

from ichprep.errors import UsageError
from ichprep.headbox import square_box

__all__ = ["CROPS", "BOX_SOURCES", "check_crop", "check_box_source", "crop_to_boxes", "head_boxes", "stored_head_boxes",
           "sample_boxes"]

CROPS = ("none", "head")
BOX_SOURCES = ("read", "store")


def check_crop(crop: str) -> str:
    if crop not in CROPS:
        raise UsageError(f"Expected --crop one of {', '.join(CROPS)}. Received: crop={crop!r}")
    return crop


def check_box_source(boxes: str, info) -> bool:
    """True, or a usage error: ``boxes`` is a source a store of ``info`` can give."""
    if boxes not in BOX_SOURCES:
        raise UsageError(f"Expected head boxes from one of {', '.join(BOX_SOURCES)}. Received: boxes={boxes!r}")
    if boxes == "store" and not info.has_head_boxes:
        raise UsageError(f"{info.url!r} (schema {info.schema_version}) stores no head boxes, and the run crops to "
                         "the boxes a build stores: rebuild the store with this ichprep, or train a run on this "
                         "store (it then finds the boxes as it reads)")
    return True


def crop_to_boxes(img, boxes, size: int, planar: bool):
    """(b, H, W, C) -> (b, size, size, C), or planar (b, C, H, W) -> (b, C, size, size): each sample's box."""
    import tensorflow as tf

    x = tf.cast(img, tf.float32)
    b = tf.shape(x)[0]
    if planar:  # every plane of a sample takes its box
        c = tf.shape(x)[1]
        x = tf.reshape(x, (-1, tf.shape(x)[2], tf.shape(x)[3], 1))
        index = tf.repeat(tf.range(b), c)
        boxes = tf.repeat(boxes, c, axis=0)
    else:
        index = tf.range(b)
    x = tf.image.crop_and_resize(x, boxes, index, (2 * size, 2 * size), method="bilinear", extrapolation_value=0.0)
    x = tf.image.resize(x, (size, size), method="area")
    if planar:
        x = tf.reshape(x, (b, -1, size, size))
    return x


def head_boxes(cache: dict, centre: np.ndarray, img: np.ndarray, planar: bool, channel: int) -> np.ndarray:
    """(b, 4) normalised head boxes of a batch whose samples' centre slices are the store rows ``centre``,
    found on channel ``channel`` of each sample in ``img`` (plane 0 when ``planar``); kept in ``cache`` per
    row, so a stream computes each once."""
    from ichprep.headbox import head_box

    out = np.empty((len(centre), 4), np.float32)
    for i, row in enumerate(centre):
        box = cache.get(int(row))
        if box is None:
            plane = img[i, 0] if planar else img[i, :, :, channel]
            box = cache[int(row)] = square_box(head_box(np.asarray(plane, np.float32), 0.1), plane.shape)
        out[i] = box
    return out


def stored_head_boxes(stored: np.ndarray, centre: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(b, 4) normalised head boxes of the store rows ``centre`` from the build's boxes ``stored`` (n, 4): top,
    left, bottom, right; a row without one (-1) takes the whole slice."""
    out = np.empty((len(centre), 4), np.float32)
    h, w = shape
    for i, row in enumerate(centre):
        box = tuple(int(v) for v in stored[int(row)])
        out[i] = square_box(box if box[0] >= 0 else (0, 0, h, w), shape)
    return out


def sample_boxes(boxes: str, stream, centre: np.ndarray, img: np.ndarray, planar: bool, channel: int) -> np.ndarray:
    """(b, 4) normalised head boxes of a batch from ``boxes``' source: the build's (``store``) or found on the
    batch's windowed slices and kept per row by ``stream`` (``read``)."""
    if boxes == "store":
        return stored_head_boxes(stream.stored_boxes, centre, img.shape[-2:] if planar else img.shape[1:3])
    return head_boxes(stream.found_boxes, centre, img, planar, channel)
