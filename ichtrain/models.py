"""The reference study's models (Keras 3), plus a small fast baseline.

* ``cnn`` -- the CNN exactly as coded in the report's listing (``ConvNet_Updated``): five
  conv/pool/BatchNorm units (unit 6 commented out), Flatten, Dense 1024-512-256-128-6.
  1,527,130 parameters at 512x512x1.
* ``cnn-described`` -- units 1-7 as section 4.2 describes them, unit 6 included (two valid 5x5
  convolutions, 16 and 32 filters, then BatchNorm; Flatten gives 128), Dense 512-256-128-6.
  264,330 parameters at 512x512x1.
* ``rnn`` -- the ten window images as a sequence: one small CNN encoder shared by every window
  (TimeDistributed), a GRU over the sequence in Table 2.1 order, max-pooled over its outputs, Dense 6.
  The report shows no code for it; a shared encoder keeps the parameter count independent of the number
  of windows, and a GRU is the cheaper of the two usual recurrent cells for a ten-step sequence.
* ``baseline`` -- four convolutions with BatchNorm and global average pooling: small and fast. With
  neighbour slices (2.5D, ``neighbours=k``) one such encoder, shared, reads each of the 2k + 1 slices and the
  head reads the centre slice's features plus what the neighbours' add (late fusion; the neighbours' weights
  start at zero, so it starts as the one-slice model): stacking neighbours as input channels of one small
  network trained from scratch learned less than the slice alone (docs/training.md).
* ``backbone`` -- a Keras application (EfficientNetB0, ResNet50, DenseNet121), ImageNet-pretrained
  (``weights="imagenet"``), from a weights file, or random (``None``), on three input channels: a one-channel
  store is repeated, three windows are used as they are, any other count is mixed to three by a learned
  1x1 convolution; each family's own input scaling is applied to the [0, 1] windows (times 255 where it
  expects pixels); global average pooling, dropout 0.2, six sigmoid outputs. What every top RSNA 2019
  solution started from.

All: ReLU inside, 6 sigmoid outputs, Glorot-uniform kernel and bias initialisers (as in the report),
L2 on kernels and biases (``l2``; the report's Keras ``l2()`` default is 0.01), Adam, mean binary
cross-entropy over the six labels.
"""

from __future__ import annotations

import keras
from keras import layers

from ichprep.errors import UsageError
from ichtrain.catalog import BACKBONES, MODELS

__all__ = ["MODELS", "BACKBONES", "build_model", "compile_model"]

_CAFFE_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _weight_options(l2: float) -> dict:
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    return dict(kernel_initializer="glorot_uniform", bias_initializer="glorot_uniform",
                kernel_regularizer=reg, bias_regularizer=reg)


def _conv(filters, k, l2, padding="same", name=None):
    return layers.Conv2D(filters, (k, k), padding=padding, activation="relu", name=name, **_weight_options(l2))


def _report_units(x, l2: float, with_unit6: bool, bn_momentum: float = 0.99, sync_bn: bool = False):
    # Units 1-3: 'same' convolutions, 2x2/2 max pooling, BatchNorm.
    for kernels in ((3, 3, 3), (3, 3, 5), (5, 5, 5)):
        for filters, k in zip((4, 8, 16), kernels):
            x = _conv(filters, k, l2)(x)
        x = layers.MaxPool2D((2, 2), strides=(2, 2))(x)
        x = layers.BatchNormalization(momentum=bn_momentum, synchronized=sync_bn)(x)
    # Units 4-5: 'valid' 5x5 convolutions, 2x2 pooling, BatchNorm.
    for filters in ((4, 8), (8, 8)):
        for f in filters:
            x = _conv(f, 5, l2, padding="valid")(x)
        x = layers.MaxPool2D((2, 2))(x)
        x = layers.BatchNormalization(momentum=bn_momentum, synchronized=sync_bn)(x)
    if with_unit6:  # unit 6: no pooling
        x = _conv(16, 5, l2, padding="valid")(x)
        x = _conv(32, 5, l2, padding="valid")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, synchronized=sync_bn)(x)
    return layers.Flatten()(x)


def _head(x, units, l2):
    for u in units:
        x = layers.Dense(u, activation="relu", **_weight_options(l2))(x)
    # float32 outputs even under a mixed-precision policy (GPU), so the sigmoid and loss stay exact.
    return layers.Dense(6, activation="sigmoid", name="labels", dtype="float32", **_weight_options(l2))(x)


def _encoder(inp, l2, filters=(16, 32, 64), sync_bn: bool = False):
    x = inp
    for f in filters:
        x = _conv(f, 3, l2)(x)
        # momentum 0.9, not Keras' 0.99: short CPU runs take a few hundred steps, too few for 0.99's moving
        # statistics to leave their initial values, which made inference outputs nearly constant.
        x = layers.BatchNormalization(momentum=0.9, synchronized=sync_bn)(x)
        x = layers.MaxPool2D((2, 2))(x)
    x = _conv(filters[-1] * 2, 3, l2)(x)
    return layers.GlobalAveragePooling2D()(x)


def _backbone(backbone: str, image_size: int, channels: int, weights: str | None, l2: float) -> keras.Model:
    import os

    if backbone not in BACKBONES:
        raise UsageError(f"Expected --backbone one of {', '.join(BACKBONES)}. Received: backbone={backbone!r}")
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise UsageError(f"--weights is 'imagenet', 'none' or a weights file; {weights!r} is not a file.")
    cls, scaling = BACKBONES[backbone]
    inp = keras.Input((image_size, image_size, channels), name="image")
    x = inp
    if channels == 1:  # one window: the same image in the three channels ImageNet filters expect
        x = layers.Concatenate(name="repeat_to_3")([x, x, x])
    elif channels != 3:
        x = layers.Conv2D(3, 1, name="mix_to_3", **_weight_options(l2))(x)
    if scaling in ("efficientnet", "caffe"):
        x = layers.Rescaling(255.0, name="to_pixels")(x)
    if scaling == "caffe":
        x = layers.Normalization(mean=list(_CAFFE_MEAN), variance=[1.0, 1.0, 1.0], name="caffe_means")(x)
    elif scaling == "torch":
        x = layers.Normalization(mean=list(_TORCH_MEAN), variance=[s * s for s in _TORCH_STD], name="torch_norm")(x)
    try:
        base = getattr(keras.applications, cls)(include_top=False, weights=weights, pooling="avg",
                                                input_shape=(image_size, image_size, 3))
    except Exception as exc:  # noqa: BLE001 -- a failed download or a mismatched file surfaces as many types
        if weights == "imagenet":
            raise UsageError(f"Could not get the ImageNet weights of {cls} ({type(exc).__name__}: {exc}); on a "
                             "machine without internet pass --weights PATH to a downloaded weights file, or "
                             "--weights none for random initialisation.") from None
        raise UsageError(f"Could not load --weights {weights!r} into {cls}: {exc}") from None
    x = base(x)
    x = layers.Dropout(0.2, name="head_dropout")(x)
    out = layers.Dense(6, activation="sigmoid", name="labels", dtype="float32", **_weight_options(l2))(x)
    return keras.Model(inp, out, name=f"Backbone_{cls}")


def build_model(name: str, image_size: int = 512, channels: int = 1, l2: float = 0.01, windows: int = 10,
                bn_momentum: float = 0.99, sync_bn: bool = False, backbone: str = "efficientnetb0",
                weights: str | None = None, neighbours: int = 0) -> keras.Model:
    """The named model for inputs (image_size, image_size, channels), or (windows, size, size, 1) for rnn.

    ``neighbours=k``: the channels are 2k + 1 slices of ``channels // (2k + 1)`` windows each, slice z-k first
    (what ``StoreStream.dataset(neighbours=k)`` gives); the baseline then shares one encoder over the slices,
    the other slice models take them as channels.

    ``bn_momentum`` applies to the report's CNNs (their listing leaves Keras' default, 0.99); the baseline
    and the RNN use 0.9 (see ``_encoder``). ``sync_bn``: BatchNorm statistics over the global batch of a
    tf.distribute strategy (otherwise each replica keeps its own moving statistics and they diverge)."""
    if name not in MODELS:
        raise UsageError(f"Expected a model in {', '.join(MODELS)}. Received: model={name!r}")
    if not isinstance(image_size, int) or image_size < 32:
        raise UsageError(f"Expected image_size an integer >= 32. Received: image_size={image_size!r}")
    if name in ("cnn", "cnn-described"):
        # The listing's valid convolutions shrink the map: 512 -> 10x10 before Flatten (as coded) and
        # -> 2x2 after unit 6 (as described); smaller inputs run out of pixels.
        minimum = 512 if name == "cnn-described" else 256
        if image_size < minimum:
            raise UsageError(f"{name} needs image_size >= {minimum}. Received: image_size={image_size}")
        inp = keras.Input((image_size, image_size, channels), name="image")
        if name == "cnn":
            x = _report_units(inp, l2, with_unit6=False, bn_momentum=bn_momentum, sync_bn=sync_bn)
            out = _head(x, (1024, 512, 256, 128), l2)
        else:
            x = _report_units(inp, l2, with_unit6=True, bn_momentum=bn_momentum, sync_bn=sync_bn)
            out = _head(x, (512, 256, 128), l2)
        return keras.Model(inp, out, name="ConvNet_Updated" if name == "cnn" else "ConvNet_Described")
    if name == "backbone":
        return _backbone(backbone, image_size, channels, weights, l2)
    if name == "baseline":
        inp = keras.Input((image_size, image_size, channels), name="image")
        if not neighbours:
            x = _encoder(inp, l2, filters=(16, 32, 64), sync_bn=sync_bn)
            return keras.Model(inp, _head(x, (64,), l2), name="Baseline")
        slices = 2 * neighbours + 1
        if channels % slices:
            raise UsageError(f"Expected channels a multiple of the {slices} slices of neighbours={neighbours}. "
                             f"Received: channels={channels}")
        per_slice = channels // slices
        frame = keras.Input((image_size, image_size, per_slice))
        encoder = keras.Model(frame, _encoder(frame, l2, filters=(16, 32, 64), sync_bn=sync_bn), name="slice_encoder")
        x = layers.Reshape((image_size, image_size, slices, per_slice))(inp)
        x = layers.Permute((3, 1, 2, 4), name="slices")(x)  # (slices, H, W, windows), slice z-k first
        feats = layers.TimeDistributed(encoder, name="slice_features")(x)  # (slices, features) in z order
        centre = feats[:, neighbours]
        context = layers.Flatten()(layers.Concatenate(axis=1)([feats[:, :neighbours], feats[:, neighbours + 1:]]))
        # The neighbours' weights start at zero: the model starts as the one-slice baseline and learns what
        # the neighbours add (weighed alike from the start, their lesions acted as label noise: docs/training.md).
        from_centre = layers.Dense(64, name="centre_dense", **_weight_options(l2))(centre)
        from_context = layers.Dense(64, use_bias=False, name="context_dense",
                                    **dict(_weight_options(l2), kernel_initializer="zeros"))(context)
        h = layers.Activation("relu")(layers.Add()([from_centre, from_context]))
        out = layers.Dense(6, activation="sigmoid", name="labels", dtype="float32", **_weight_options(l2))(h)
        return keras.Model(inp, out, name="Baseline25D")
    inp = keras.Input((windows, image_size, image_size, 1), name="windows")
    frame = keras.Input((image_size, image_size, 1))
    encoder = keras.Model(frame, _encoder(frame, l2, filters=(16, 32, 64), sync_bn=sync_bn),
                          name="window_encoder")
    x = layers.TimeDistributed(encoder)(inp)
    x = layers.GRU(64, kernel_initializer="glorot_uniform", bias_initializer="glorot_uniform",
                   return_sequences=True)(x)
    # Max over the GRU's outputs, not its last state: the informative windows (default, brain) come first
    # in Table 2.1 order, and the last state alone had to carry them through eight nearly blank windows.
    x = layers.GlobalMaxPooling1D()(x)
    out = _head(x, (32,), l2)
    return keras.Model(inp, out, name="WindowRNN")


def compile_model(model: keras.Model, learning_rate: float = 1e-3, optimizer=None) -> keras.Model:
    """``optimizer``: one already in use (a model trained through a wrapper keeps its own optimizer's state)."""
    model.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate), loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(multi_label=True, num_labels=6, name="auc")])
    return model
