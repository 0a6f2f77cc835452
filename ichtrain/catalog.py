"""The names of what ichtrain trains: slice models, Keras-application backbones and series-model starts.
Plain data, no Keras: the CLI offers them as choices and configs validate against them before TensorFlow
is imported; :mod:`ichtrain.models` builds them."""

from __future__ import annotations

__all__ = ["MODELS", "SERIES_MODEL", "BACKBONES", "SERIES_INITS"]

MODELS = ("cnn", "cnn-described", "rnn", "baseline", "backbone")  # the slice models
SERIES_MODEL = "series"  # the GRU over each series' slice embeddings (ichtrain.series)
# name -> (keras.applications class, input scaling: the family's preprocess_input, on [0, 1] windows)
BACKBONES = {
    "efficientnetb0": ("EfficientNetB0", "efficientnet"),  # rescales and normalises [0, 255] inputs itself
    "resnet50": ("ResNet50", "caffe"),  # [0, 255] minus the ImageNet channel means
    "densenet121": ("DenseNet121", "torch"),  # [0, 1] standardised by the ImageNet means and deviations
}
SERIES_INITS = ("slice", "scratch")
