"""Fine-tuning (``fit --init RUN|MODEL.keras --freeze-epochs N``): the starting weights, checked against the
model the run builds, and the encoder held still while the head alone trains."""

from __future__ import annotations

import os

from ichprep.errors import UsageError
from ichtrain.run import load_keras, load_run

__all__ = ["initial_weights", "freeze_encoder"]


def _init_path(init: str) -> str:
    """The model file of ``--init``: a run folder's model (or its last checkpoint), or a .keras file."""
    if os.path.isdir(init):
        return load_run(init)[1]
    if os.path.isfile(init) and init.endswith(".keras"):
        return init
    raise UsageError(f"Expected --init a run folder or a .keras file. Received: {init!r}, which is "
                     f"{'not a .keras file' if os.path.exists(init) else 'missing'}")


def initial_weights(cfg, size: int, in_channels: int, windows: int) -> list:
    """The weights of ``--init``, checked against the model this run builds: the same input, the same layers
    and weight shapes, six outputs; any difference is refused (one line naming both) before training."""
    from ichtrain.models import build_model

    source = load_keras(_init_path(cfg.init))
    target = build_model(cfg.model, size, in_channels, cfg.l2, windows=windows, bn_momentum=cfg.bn_momentum,
                         backbone=cfg.backbone, weights=None, neighbours=cfg.neighbours)
    got = [tuple(w.shape) for w in source.weights]
    want = [tuple(w.shape) for w in target.weights]
    src_in, dst_in = tuple(source.inputs[0].shape[1:]), tuple(target.inputs[0].shape[1:])
    if src_in != dst_in or got != want or tuple(source.outputs[0].shape[1:]) != (6,):
        raise UsageError(f"--init {cfg.init!r} is a model of input {src_in} and {len(got)} weights "
                         f"({source.name}); this run builds {cfg.model} of input {dst_in} and {len(want)} weights: "
                         "fine-tune with the same --model, --image-size, windows and --neighbours")
    return source.get_weights()


def _leaf_layers(model) -> list:
    out = []
    for layer in model.layers:
        out.extend(_leaf_layers(layer) if getattr(layer, "layers", None) else [layer])
    return out


def freeze_encoder(model, frozen: bool) -> None:
    """Every layer but the last one with weights (the head) still while ``frozen`` (a still BatchNorm also keeps
    its statistics: Keras runs it in inference mode)."""
    with_weights = [layer for layer in _leaf_layers(model) if layer.weights]
    for layer in with_weights[:-1]:
        layer.trainable = not frozen
