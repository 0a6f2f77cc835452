"""Where a slice model looks: Grad-CAM (Selvaraju et al., 2017) over its last convolutional feature map.

For a label, the gradient of its output with respect to each channel of the last 4-D feature map, averaged
over the map, weighs that channel; the weighted sum, rectified, upsampled to the input and scaled to [0, 1],
is the heat map. Models whose encoder runs once per window or neighbour (rnn, the 2.5D baseline) have no
single 4-D map and are refused.
"""

from __future__ import annotations

import numpy as np

from ichprep.errors import UsageError
from ichprep.labels import SUBTYPES

__all__ = ["feature_layer", "grad_cam", "explain_slice"]


def feature_layer(model):
    """The last top-level layer whose output is a 4-D feature map (a Keras application counts as one)."""
    maps = [layer for layer in model.layers[1:] if len(layer.output.shape) == 4 and layer.output.shape[-1] > 3]
    if not maps:
        raise UsageError(f"{model.name} has no 4-D feature map to explain (its encoder runs once per window or "
                         "slice): Grad-CAM needs a one-slice convolutional model (baseline, cnn, backbone)")
    return maps[-1]


def grad_cam(model, x: np.ndarray, label: int) -> np.ndarray:
    """(b, H, W) heat maps in [0, 1] of output ``label`` for inputs ``x`` (b, H, W, C)."""
    import keras
    import tensorflow as tf

    layer = feature_layer(model)
    probe = keras.Model(model.inputs, [layer.output, model.output])
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        maps, out = probe(x, training=False)
        score = out[:, label]
    grads = tape.gradient(score, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[..., None]
    cam = tf.image.resize(cam, x.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    return np.where(peak[:, None, None] > 0, cam / np.maximum(peak, 1e-12)[:, None, None], 0.0).astype(np.float32)


def explain_slice(run_dir: str, sop: str, label: str, out_png: str) -> dict:
    """Draw slice ``sop`` of the run's store with the Grad-CAM of ``label`` over it, and its probabilities."""
    from ichtrain.calibration import Calibration
    from ichtrain.data import run_stream
    from ichtrain.run import input_options, load_keras, load_run

    if label not in SUBTYPES:
        raise UsageError(f"Expected --label one of {', '.join(SUBTYPES)}. Received: {label!r}")
    cfg, path = load_run(run_dir)
    if cfg["model"] in ("rnn", "series") or int(cfg["neighbours"]):
        raise UsageError(f"Grad-CAM explains one-slice convolutional models; {run_dir!r} is {cfg['model']}"
                         + (" with neighbours" if int(cfg["neighbours"]) else ""))
    stream = run_stream(cfg)
    hits = np.flatnonzero(stream.sop_uids == sop)
    if not hits.size:
        raise UsageError(f"No slice {sop!r} in {stream.url}: give a SOPInstanceUID of the run's store")
    row = int(hits[0])
    inputs = dict(input_options(cfg), windows_on="reader")
    x = np.concatenate([b.numpy() for b, _ in stream.dataset("test", batch_size=1, rows=np.array([row]), **inputs)])
    model = load_keras(path)
    j = SUBTYPES.index(label)
    heat = grad_cam(model, x, j)[0]
    p = np.asarray(model(x, training=False), np.float32)
    cal = Calibration.load(run_dir)
    p = cal.apply(p) if cal is not None else p
    _draw(x[0, ..., 0], heat, p[0], label, sop, out_png)
    return dict(row=row, sop=sop, label=label, probability=float(p[0, j]), out=out_png)


def _draw(img: np.ndarray, heat: np.ndarray, p: np.ndarray, label: str, sop: str, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(img, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    for ax in axes:
        ax.axis("off")
    axes[1].set_title(f"Grad-CAM: {label}")
    fig.suptitle(f"{sop}: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(SUBTYPES, p)), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
