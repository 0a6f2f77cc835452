"""Windows applied in the model's graph: an hu store's int16 slices go to the device as stored.

Why. The reader's kernel (:mod:`ichprep.readwindows`) windows on the host, and then a float16 window batch
crosses to the accelerator: C x 2 bytes per pixel, and for the full-range cnn window the host's windowing pass
held the hu store's float16 stream at 0.40-0.70x the cnn store's (issue 17). Here the stream hands over the
stored int16 HU (2 bytes per pixel, whatever the windows) and each row's window bounds -- 1.19-1.30x the cnn
store's float16 stream, one core each (benchmarks/stream.py, ``hu_to_model``) -- and a first layer,
:func:`hu_windows_layer`, computes the windows (then any resize) where the model runs: on the accelerator when
there is one. On a CPU the layer is 0.22-0.35x the reader's kernel (``hu_model_cpu``), hence ``auto``.

Same values. The layer repeats the reader kernel's float32 arithmetic, ``clip((hu - lo) * scale, 0, 1)``
with full-range windows taking the slice's own min and max, and rounds to float16 as a windowed store
holds it; then the reader's resize (area, in float32). The tests check it bit for bit against cnn, rnn
and three-window stores on the CPU (resized: within 1e-6).

The saved model is unchanged: :func:`reading_model` wraps it for reading, and a run trained with windows in
the model is evaluated with windows in the reader (and back) by the same weights.

``windows_on``: ``reader`` (the host's kernel), ``model`` (this module), or ``auto``: ``model`` where a GPU
trains and the store is an hu store, else ``reader`` (on a CPU the reader's compiled kernel is the faster
of the two, and it overlaps the training step in reader threads).
"""

from __future__ import annotations

import functools

from ichprep.errors import UsageError

__all__ = ["WINDOWS_ON", "check_windows_on", "resolve_windows_on", "hu_windows_layer", "model_windows", "reading_model"]

WINDOWS_ON = ("auto", "reader", "model")


def check_windows_on(windows_on: str) -> None:
    """Refuse (UsageError) a ``windows_on`` that is none of :data:`WINDOWS_ON`."""
    if windows_on not in WINDOWS_ON:
        raise UsageError(f"Expected --windows-on one of {', '.join(WINDOWS_ON)}. Received: {windows_on!r}")


def resolve_windows_on(windows_on: str, stream) -> str:
    """``reader`` or ``model`` for ``stream`` (a :class:`ichtrain.data.StoreStream`)."""
    check_windows_on(windows_on)
    if stream.read_windows is None:  # a windowed store: its windows are stored, nothing to apply
        if windows_on == "model":
            raise UsageError(f"Windows are applied in the model only for an hu store (ichprep build --preset hu); "
                             f"{stream.url!r} holds windows {', '.join(w.spec() for w in stream.windows)} already. "
                             "Received: windows_on='model'")
        return "reader"
    if windows_on == "auto":
        import tensorflow as tf

        return "model" if tf.config.list_physical_devices("GPU") else "reader"
    return windows_on


@functools.cache  # one class however many layers are made
def _layer_class():
    import keras
    import tensorflow as tf

    class HUWindows(keras.layers.Layer):
        """[hu (b, H, W, M) int16, params (b, M, 3, C) float32] -> the windows a reader gives: (b, size, size,
        M * C) channel-last (slice z-k first, its C windows together), or (b, C, size, size, 1) for a
        ``sequence`` (M = 1). params[:, m] holds (lo, scale, is_full) per window
        (:meth:`ichprep.readwindows.ReadWindows.params_batch`)."""

        def __init__(self, image_size: int, sequence: bool, **kwargs):
            super().__init__(dtype="float32", **kwargs)  # the kernel's float32 arithmetic, never autocast
            self.image_size = int(image_size)
            self.sequence = bool(sequence)

        def call(self, inputs):
            hu, params = inputs
            x = tf.cast(hu, tf.float32)
            H, W, M = x.shape[1], x.shape[2], x.shape[3]
            C = params.shape[3]
            lo_hu, hi_hu = tf.reduce_min(x, axis=(1, 2)), tf.reduce_max(x, axis=(1, 2))  # (b, M)
            span = hi_hu - lo_hu
            full_scale = tf.where(span > 0, 1.0 / tf.where(span > 0, span, 1.0), 0.0)
            is_full = params[:, :, 2] > 0.5  # (b, M, C)
            lo = tf.where(is_full, lo_hu[..., None], params[:, :, 0])
            scale = tf.where(is_full, full_scale[..., None], params[:, :, 1])
            v = tf.clip_by_value((x[..., None] - lo[:, None, None]) * scale[:, None, None], 0.0, 1.0)
            v = tf.cast(tf.cast(v, tf.float16), tf.float32)  # (b, H, W, M, C), as a windowed store holds it
            size = self.image_size
            if self.sequence:  # one plane per window, resized plane by plane as the reader does
                v = tf.reshape(tf.transpose(v[:, :, :, 0, :], (0, 3, 1, 2)), (-1, H, W, 1))
                if size != H:
                    v = tf.image.resize(v, (size, size), method="area")
                return tf.reshape(v, (-1, C, size, size, 1))
            v = tf.reshape(v, (-1, H, W, M * C))
            if size != H:
                v = tf.image.resize(v, (size, size), method="area")
            return v

        def get_config(self):
            return dict(super().get_config(), image_size=self.image_size, sequence=self.sequence)

    return HUWindows


def hu_windows_layer(image_size: int, sequence: bool, **kwargs):
    """The windowing layer (see the module docstring); Keras is imported only when one is made."""
    return _layer_class()(image_size, sequence, **kwargs)


def model_windows(stream, inputs: dict):
    """The layer that windows ``stream.dataset(**inputs)``'s (hu, params) batches where the model reads them, or
    None where the reader applies the windows."""
    if resolve_windows_on(inputs.get("windows_on", "reader"), stream) != "model":
        return None
    sequence = inputs.get("sequence")
    sequence = stream.channels > 1 if sequence is None else bool(sequence)
    return hu_windows_layer(inputs.get("image_size") or stream.info.image_size, sequence, name="hu_windows")


def reading_model(model, stream, inputs: dict, augment: str = "none", augment_seed: int = 0):
    """``model`` as it reads ``stream.dataset(**inputs)``: itself when the reader applies the windows, else a
    model taking (hu, params) whose first layer windows them (the weights are ``model``'s own). ``augment``
    (windows in the model only): training batches are then augmented by the next layer, as the reader's stream
    seeded by ``augment_seed`` would augment them (:func:`ichtrain.augment.augment_layer`)."""
    import keras

    from ichtrain.augment import augment_layer, parse_augment

    windows = model_windows(stream, inputs)
    if windows is None:
        return model
    M = 2 * int(inputs.get("neighbours") or 0) + 1
    full = stream.info.image_size
    hu = keras.Input((full, full, M), dtype="int16", name="hu")
    params = keras.Input((M, 3, stream.channels), dtype="float32", name="window_params")
    x = windows([hu, params])
    if parse_augment(augment).active:
        x = augment_layer(augment, augment_seed, windows.sequence, name="augment")(x)
    return keras.Model([hu, params], model(x), name=f"{model.name}_windows_in_model")
