"""Training-time augmentation of whole batches (test-time augmentation: :mod:`ichtrain.testtime`).

An augmentation is a spec: ``none``, ``light``, ``strong`` or a list ``flip=0.5,rotate=10,scale=0.1,shift=0.05,
contrast=0.1,brightness=0.05,noise=0.02``:

* ``flip``: probability of a left-right flip (heads are near-symmetric; bleeds occur on either side);
* ``rotate`` (degrees), ``scale`` (relative), ``shift`` (fraction of the image): one random affine map per
  slice, bilinear, the border filled with 0 (air in every window);
* ``contrast``, ``brightness``: a random gain ``1 +- contrast`` about the window's middle and an offset
  ``+- brightness``, clipped to [0, 1]: on windowed values this is a jitter of the window's width and centre;
* ``noise``: Gaussian noise of this standard deviation (window units), clipped to [0, 1].

Augmentations run per batch in the stream's TensorFlow map (compiled kernels on whole batches, no per-slice
Python), after the resize, seeded by the run's seed, the epoch it starts from and the batch's index: a run
and its resume draw the same maps. Evaluation streams are never augmented. Where the windows are computed in
the model (an hu store on a GPU, :mod:`ichtrain.graphwindows`), the same maps run in the model instead, as the
layer after the windows (:func:`augment_layer`; training calls only): batch ``j`` of a fit gets the maps the
reader would have given it, and the host only streams the stored HU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from numba import njit

from ichprep.errors import UsageError

__all__ = ["AugmentSpec", "parse_augment", "augment_batch", "augment_images", "augment_layer", "affine_images"]

_LIMITS = {"flip": (0.0, 1.0), "rotate": (0.0, 45.0), "scale": (0.0, 0.5), "shift": (0.0, 0.3),
           "contrast": (0.0, 0.5), "brightness": (0.0, 0.5), "noise": (0.0, 0.2)}


@dataclass(frozen=True)
class AugmentSpec:
    flip: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = _LIMITS[f.name]
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise UsageError(f"Expected augment part {f.name} a number in [{lo:g}, {hi:g}]. Received: {f.name}={v!r}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def to_string(self) -> str:
        """The canonical spec (what a run records): ``none`` or the non-zero parts in a fixed order."""
        parts = [f"{k}={v:g}" for k, v in asdict(self).items() if v]
        return ",".join(parts) if parts else "none"


PRESETS = {
    "none": AugmentSpec(),
    "light": AugmentSpec(flip=0.5, rotate=8.0, scale=0.08, shift=0.04, contrast=0.05, brightness=0.03),
    "strong": AugmentSpec(flip=0.5, rotate=15.0, scale=0.15, shift=0.08, contrast=0.1, brightness=0.05, noise=0.02),
}


def parse_augment(spec: str | None) -> AugmentSpec:
    """``none`` / ``light`` / ``strong`` / ``name=value,...`` -> AugmentSpec; a bad part is a UsageError naming it."""
    if spec is None:
        return PRESETS["none"]
    text = str(spec).strip()
    if text in PRESETS:
        return PRESETS[text]
    values = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name not in _LIMITS:
            raise UsageError(f"Expected --augment none, light, strong or name=value parts ({', '.join(_LIMITS)}). "
                             f"Received: part {part.strip()!r} of {text!r}")
        if name in values:
            raise UsageError(f"Expected each --augment part once. Received: {name} twice in {text!r}")
        try:
            values[name] = float(value)
        except ValueError:
            raise UsageError(f"Expected a number for --augment part {name}. Received: {name}={value!r}") from None
    return AugmentSpec(**values)


@njit(cache=True, nogil=True)
def _affine_kernel(images, maps, out):
    """``out[k, y, x]`` = bilinear ``images[k]`` at (a0 x + a1 y + a2, b0 x + b1 y + b2), ``maps[k]`` = (a0, a1,
    a2, b0, b1, b2), a corner outside the image counting 0: TensorFlow's ImageProjectiveTransformV3 (bilinear,
    constant fill 0) in its float32 arithmetic, compiled for the CPU, where that op costs ~12 ns a pixel."""
    b, h, w, c = images.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    for k in range(b):
        a0, a1, a2, b0, b1, b2 = maps[k, 0], maps[k, 1], maps[k, 2], maps[k, 3], maps[k, 4], maps[k, 5]
        for y in range(h):
            ay, by = a1 * np.float32(y), b1 * np.float32(y)
            for x in range(w):
                sx = a0 * np.float32(x) + ay + a2
                sy = b0 * np.float32(x) + by + b2
                fx, fy = np.floor(sx), np.floor(sy)
                x0, y0 = int(fx), int(fy)
                wx1, wy1 = sx - fx, sy - fy
                wx0, wy0 = (fx + one) - sx, (fy + one) - sy
                if 0 <= x0 and x0 + 1 < w and 0 <= y0 and y0 + 1 < h:  # inside: no corner is filled
                    for ch in range(c):
                        top = wx0 * images[k, y0, x0, ch] + wx1 * images[k, y0, x0 + 1, ch]
                        bottom = wx0 * images[k, y0 + 1, x0, ch] + wx1 * images[k, y0 + 1, x0 + 1, ch]
                        out[k, y, x, ch] = wy0 * top + wy1 * bottom
                    continue
                in_x0, in_x1 = 0 <= x0 < w, 0 <= x0 + 1 < w
                in_y0, in_y1 = 0 <= y0 < h, 0 <= y0 + 1 < h
                for ch in range(c):
                    v00 = images[k, y0, x0, ch] if in_y0 and in_x0 else zero
                    v01 = images[k, y0, x0 + 1, ch] if in_y0 and in_x1 else zero
                    v10 = images[k, y0 + 1, x0, ch] if in_y1 and in_x0 else zero
                    v11 = images[k, y0 + 1, x0 + 1, ch] if in_y1 and in_x1 else zero
                    out[k, y, x, ch] = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)


def affine_images(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """(b, H, W, C) float32 images under (b, 6) affine maps (:func:`_affine_kernel`)."""
    images = np.ascontiguousarray(images, np.float32)
    out = np.empty_like(images)
    _affine_kernel(images, np.ascontiguousarray(maps, np.float32), out)
    return out


def augment_batch(images, spec: AugmentSpec, seed, compiled: bool = False):
    """``images`` (b, H, W, C) float in [0, 1], augmented per slice by ``spec``; ``seed``: a (2,) int tensor.
    ``compiled``: the affine map by :func:`affine_images` (the reader on a CPU) instead of TensorFlow's op (the
    model's layer, on an accelerator); the values agree within float32 rounding (tested)."""
    import tensorflow as tf

    dtype = images.dtype
    x = tf.cast(images, tf.float32)
    b = tf.shape(x)[0]
    h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)

    def uniform(k, lo, hi):
        return tf.random.stateless_uniform((b,), seeds[k], lo, hi)

    if spec.rotate or spec.scale or spec.shift or spec.flip:
        angle = uniform(0, -spec.rotate, spec.rotate) * (math.pi / 180.0)
        zoom = 1.0 + uniform(1, -spec.scale, spec.scale)
        tx, ty = uniform(2, -spec.shift, spec.shift) * w, uniform(3, -spec.shift, spec.shift) * h
        mirror = tf.where(uniform(4, 0.0, 1.0) < spec.flip, -1.0, 1.0)
        # the inverse map (output pixel -> input pixel) about the image centre: x_in = A (x_out - c) + c - t
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        cx, cy = (w - 1) / 2, (h - 1) / 2
        a0, a1 = cos * mirror, -sin
        b0, b1 = sin * mirror, cos
        a2 = cx - a0 * cx - a1 * cy - tx
        b2 = cy - b0 * cx - b1 * cy - ty
        if compiled:
            maps = tf.stack([a0, a1, a2, b0, b1, b2], axis=1)
            x = tf.ensure_shape(tf.numpy_function(affine_images, [x, maps], tf.float32, stateful=False), x.shape)
        else:
            zeros = tf.zeros_like(a0)
            transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
            x = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
                                                      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    if spec.contrast or spec.brightness:
        gain = 1.0 + uniform(5, -spec.contrast, spec.contrast)
        offset = uniform(6, -spec.brightness, spec.brightness)
        x = tf.clip_by_value((x - 0.5) * gain[:, None, None, None] + 0.5 + offset[:, None, None, None], 0.0, 1.0)
    if spec.noise:
        x = tf.clip_by_value(x + tf.random.stateless_normal(tf.shape(x), seeds[7], stddev=spec.noise), 0.0, 1.0)
    return tf.cast(x, dtype)


def augment_images(images, spec: AugmentSpec, seed: int, index, sequence: bool, compiled: bool = False):
    """Batch ``index`` of a stream augmented with seed (``seed``, ``index``); window sequences (b, C, H, W, 1)
    get one map per slice, shared by its windows. ``compiled``: see :func:`augment_batch`."""
    import tensorflow as tf

    s = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    if sequence:
        x = tf.transpose(tf.squeeze(images, -1), (0, 2, 3, 1))
        return tf.expand_dims(tf.transpose(augment_batch(x, spec, s, compiled), (0, 3, 1, 2)), -1)
    return augment_batch(images, spec, s, compiled)


@functools.cache  # one class however many layers are made
def _augment_layer_class():
    import keras

    class Augment(keras.layers.Layer):
        """Training batches augmented as the reader augments them: the ``j``-th training call of the layer
        gets :func:`augment_images` with index ``j`` (a step counter kept in the layer); other calls pass
        the batch through."""

        def __init__(self, spec: str, seed: int, sequence: bool, **kwargs):
            super().__init__(dtype="float32", **kwargs)  # the reader's float32 arithmetic, never autocast
            self.spec = parse_augment(spec)
            self.seed = int(seed)
            self.sequence = bool(sequence)
            self.batches = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                           name="batches", aggregation="only_first_replica")

        def call(self, images, training=None):
            if not training:
                return images
            out = augment_images(images, self.spec, self.seed, self.batches.value, self.sequence)
            self.batches.assign_add(1)
            return out

        def get_config(self):
            return dict(super().get_config(), spec=self.spec.to_string(), seed=self.seed, sequence=self.sequence)

    return Augment


def augment_layer(spec: str, seed: int, sequence: bool, **kwargs):
    """A Keras layer that augments training batches by ``spec``, seeded as the reader's stream is (``seed``,
    then each training call's index); Keras is imported only when one is made."""
    return _augment_layer_class()(spec, seed, sequence, **kwargs)
