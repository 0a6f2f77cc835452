"""``ichtrain export RUN --out DIR``: a TensorFlow SavedModel that stands alone.

The exported function takes a batch of int16 Hounsfield-unit slices, ``(b, 512, 512)``, as an hu store holds
them (after the modality LUT and the RSNA 12-bit fix), and returns ``(b, 6)`` calibrated probabilities
(epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any). Inside: the run's windows
(computed as the build's kernel computes them, rounded to float16 as a windowed store holds them:
:func:`ichtrain.graphwindows.hu_windows_layer`), the resize, the model, the run's test-time flip and its
calibration (prior shift, then Platt), all as TensorFlow ops. Loading needs TensorFlow alone::

    import tensorflow as tf
    m = tf.saved_model.load("DIR")
    probs = m.serve(hu_int16_batch)          # (b, 6) float32

Runs that need more than one slice's HU cannot be exported this way and are refused: ``default`` windows
(each file's own WindowCenter/Width), neighbour slices, head crops, the series model.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES
from ichprep.readwindows import ReadWindows  # noqa: F401 (documents where the params come from)
from ichprep.windows import windows_from_list
from ichtrain.calibration import Calibration
from ichtrain.run import load_keras, load_run, tta_of
from ichtrain.testtime import tta_views

__all__ = ["export", "SIZE"]

SIZE = 512


def _window_params(windows) -> np.ndarray:
    """(1, 3, C) float32: (lo, scale, is_full) per window, as the reader's kernel takes them."""
    from ichprep.kernels import channel_params

    lo, scale, is_full = channel_params(windows, None, None)
    return np.stack([np.asarray(lo, np.float32), np.asarray(scale, np.float32),
                     np.asarray(is_full, np.float32)])[None]


def _refuse(cfg: dict, run_dir: str) -> None:
    why = None
    if cfg["model"] == "series":
        why = "a series model reads whole series of slice embeddings"
    elif int(cfg["neighbours"]):
        why = f"it reads {2 * int(cfg['neighbours']) + 1} neighbouring slices per sample"
    elif cfg["crop"] != "none":
        why = "its head crop is found by a connected-component search outside TensorFlow"
    elif any(w.get("kind") == "default" for w in cfg.get("windows", [])):
        why = "its 'default' window is each file's own WindowCenter/Width, which an HU batch does not carry"
    if why:
        raise UsageError(f"Cannot export {run_dir!r} as a function of one slice's HU: {why}.")


def export(run_dir: str, out: str, overwrite: bool = False) -> dict:
    """Write the SavedModel of ``run_dir`` to ``out``; returns what was written.

    Raises:
        UsageError: ``out`` exists (without ``overwrite``) or is not an export, or the run cannot be exported.
    """
    import tensorflow as tf

    from ichtrain.graphwindows import hu_windows_layer

    cfg, model_path = load_run(run_dir)
    _refuse(cfg, run_dir)
    if os.path.exists(out):
        if not overwrite:
            raise UsageError(f"{out!r} exists: choose another --out, or pass --overwrite to replace an export there")
        if not os.path.isfile(os.path.join(out, "saved_model.pb")):
            raise UsageError(f"{out!r} is not an ichtrain export (no saved_model.pb): it is never overwritten")
        shutil.rmtree(out)
    model = load_keras(model_path)
    cal = Calibration.load(run_dir)
    windows = windows_from_list(cfg["windows"])
    params = tf.constant(_window_params(windows))
    sequence = cfg["model"] == "rnn"
    layer = hu_windows_layer(int(cfg["image_size"]), sequence, name="hu_windows")
    tta = tta_of(cfg)
    offset = tf.constant(np.asarray(cal.offset if cal else np.zeros(6)), tf.float32)
    scale = tf.constant(np.asarray(cal.scale if cal else np.ones(6)), tf.float32)
    shift = tf.constant(np.asarray(cal.shift if cal else np.zeros(6)), tf.float32)
    eps = 1e-7

    class Exported(tf.Module):
        def __init__(self):
            super().__init__()
            self.model, self.layer = model, layer

        @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE), tf.int16, name="hu")])
        def serve(self, hu):
            b = tf.shape(hu)[0]
            x = self.layer([hu[..., None], tf.tile(params[:, None], (b, 1, 1, 1))])
            z = 0.0
            views = tta_views(x, tta)
            for view in views:  # the run's test-time views, averaged in logit space
                p = tf.clip_by_value(tf.cast(self.model(view, training=False), tf.float32), eps, 1 - eps)
                z += (tf.math.log(p) - tf.math.log1p(-p)) / len(views)
            return tf.sigmoid(scale * (z + offset) + shift)

    module = Exported()
    tf.saved_model.save(module, out, signatures={"serving_default": module.serve})
    info = dict(run=os.path.abspath(run_dir), model=cfg["model"], input="int16 HU (b, 512, 512)",
                output=list(SUBTYPES), windows=cfg["windows"], image_size=cfg["image_size"], tta=tta_of(cfg),
                calibrated=cal is not None)
    with open(os.path.join(out, "ichtrain-export.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    return dict(info, out=out)
