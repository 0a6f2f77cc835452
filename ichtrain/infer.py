"""One inference loop: a model's outputs on a split or rows of a store, in row order, with the run's TTA.

Used by fit (calibration), evaluate, embed, predict, compare and cv; probabilities and features are the same
loop over the stream with a different model (a slice model, or its layers up to the head).
"""

from __future__ import annotations

import numpy as np

from ichtrain.graphwindows import model_windows
from ichtrain.logits import mean_in_logits
from ichtrain.testtime import tta_views

__all__ = ["model_outputs", "predict_rows", "features_of", "feature_model", "mean_in_logits"]



def model_outputs(model, stream, batch_size: int = 32, split: str | None = None, rows=None, tta: str = "none",
                  **inputs) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n, 6) float32, outputs (n, D) float32) of ``model`` on a split or explicit ``rows`` of
    ``stream``, in row order. ``inputs``: how the model reads the store (:func:`ichtrain.run.input_options`);
    ``tta``: the views of each batch whose outputs are averaged in logit space (probabilities only;
    :mod:`ichtrain.testtime`)."""
    ds = stream.dataset(split or "test", batch_size=batch_size, weighted=False, rows=rows, **inputs)
    windows = model_windows(stream, inputs)  # None, unless the windows are applied where the model runs
    ys, outs = [], []
    with stream.guard():
        for x, y in ds:
            if windows is not None:
                x = windows(list(x))
            views = [np.asarray(model(v, training=False), np.float32) for v in tta_views(x, tta)]
            outs.append(views[0] if len(views) == 1 else mean_in_logits(*views))
            ys.append(y.numpy())
    if not ys:
        return np.zeros((0, 6), np.float32), np.zeros((0, int(model.output_shape[-1])), np.float32)
    return np.concatenate(ys), np.concatenate(outs)


def predict_rows(model, stream, batch_size: int = 32, split: str | None = None, rows=None, tta: str = "none",
                 **inputs) -> tuple[np.ndarray, np.ndarray]:
    """(y_true (n, 6), y_prob (n, 6)), float32, of a slice model: :func:`model_outputs` of its six outputs."""
    return model_outputs(model, stream, batch_size, split=split, rows=rows, tta=tta, **inputs)


def feature_model(model):
    """The slice model up to the layer before its six-output head."""
    import keras

    return keras.Model(model.input, model.get_layer("labels").input)


def features_of(features, stream, rows, inputs: dict, batch_size: int = 64) -> np.ndarray:
    """(len(rows), D) float32 outputs of ``features`` (:func:`feature_model`) on ``rows`` (sorted), in row order."""
    return model_outputs(features, stream, batch_size, rows=rows, **inputs)[1]
