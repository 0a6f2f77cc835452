"""Test-time augmentation (TTA): the views of a windowed batch whose predictions are averaged in logit space.

* ``none``: the slice as it is.
* ``flip``: the slice and its mirror image (heads are near-symmetric; bleeds occur on either side).
* ``flip+crop``: those two, and the same two of a centre crop keeping :data:`TTA_CROP` of each side, resized
  back to the model's size (the 1st RSNA place predicted on a centre crop of 0.8 after random-crop training;
  the 2nd averaged the flips).

Views are averaged in logit space before calibration, and a run is calibrated with its own TTA
(``ichtrain fit --tta``); ``evaluate`` and ``compare`` with another ``--tta`` refit that calibration on the run's
val split with the views they use (:func:`ichtrain.calibration.fit_run_calibration`). The views are TensorFlow
ops on whole batches, after the windows and the resize, so they run where the model runs.
"""

from __future__ import annotations

from ichprep.errors import UsageError

__all__ = ["TTA_MODES", "TTA_CROP", "check_tta", "flip_width", "centre_crop", "tta_views", "tta_tag"]

TTA_MODES = ("none", "flip", "flip+crop")
# Of each side, what the crop views keep: 0.85 leaves a head-cropped slice (8% margin) its whole skull and cuts
# a whole-image slice's air and table; the 1st place's 0.8 followed random crops of 0.6-0.99 in training.
TTA_CROP = 0.85


def check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise UsageError(f"Expected --tta one of {', '.join(TTA_MODES)}. Received: tta={mode!r}")
    return mode


def tta_tag(mode: str) -> str:
    """``mode`` as a file-name part: ``flip+crop`` -> ``flip-crop``."""
    return check_tta(mode).replace("+", "-")


def flip_width(x):
    """A batch flipped left-right: (b, H, W, C) images, (b, C, H, W, 1) window sequences, or the model-mode pair
    (hu (b, H, W, M), params)."""
    import tensorflow as tf

    if isinstance(x, (tuple, list)):
        return (flip_width(x[0]),) + tuple(x[1:])
    return tf.reverse(x, axis=[2] if x.shape.rank == 4 else [3])


def centre_crop(x, fraction: float = TTA_CROP):
    """The centre ``fraction`` of each side of a windowed batch, (b, H, W, C) images or (b, C, H, W, 1) window
    sequences, resized back to (H, W) bilinearly (half-pixel centres), in ``x``'s dtype. The crop is whole
    pixels: round(H (1 - fraction) / 2) rows off the top and off the bottom, the same in width."""
    import tensorflow as tf

    sequence = x.shape.rank == 5
    h, w = int(x.shape[-3 if sequence else 1]), int(x.shape[-2 if sequence else 2])
    images = tf.reshape(x, (-1, h, w, 1)) if sequence else x
    mh, mw = int(round(h * (1 - fraction) / 2)), int(round(w * (1 - fraction) / 2))
    out = tf.image.resize(tf.cast(images[:, mh:h - mh, mw:w - mw, :], tf.float32), (h, w), method="bilinear")
    out = tf.cast(out, x.dtype)
    return tf.reshape(out, tf.shape(x)) if sequence else out


def tta_views(x, mode: str) -> list:
    """The views of a windowed batch ``x`` that ``mode`` averages, the batch itself first."""
    check_tta(mode)
    views = [x]
    if mode in ("flip", "flip+crop"):
        views.append(flip_width(x))
    if mode == "flip+crop":
        crop = centre_crop(x)
        views += [crop, flip_width(crop)]
    return views
