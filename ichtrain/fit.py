"""``ichtrain fit``: train a model on a store, checkpoint every epoch, resume on rerun."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ichprep.errors import UsageError

__all__ = ["FitConfig", "fit", "load_run"]

CONFIG = "config.json"
STATE = "state.json"


@dataclass(frozen=True)
class FitConfig:
    store: str
    out: str
    model: str = "baseline"
    epochs: int = 10
    batch_size: int = 32
    image_size: int | None = None  # default: the model's natural size
    l2: float = 1e-4
    learning_rate: float = 1e-3
    alpha: float = 0.5
    epoch_size: int | None = None
    split_by: str = "patient"
    fractions: tuple = (0.8, 0.1, 0.1)
    seed: int = 0
    bn_momentum: float = 0.99  # the report's CNNs only

    def __post_init__(self) -> None:
        from ichtrain.models import MODELS

        if self.model not in MODELS:
            raise UsageError(f"Expected --model one of {', '.join(MODELS)}. Received: model={self.model!r}")
        for name, lo in (("epochs", 1), ("batch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise UsageError(f"Expected --{name.replace('_', '-')} an integer >= {lo}. Received: {name}={v!r}")
        if self.epoch_size is not None and self.epoch_size < self.batch_size:
            raise UsageError(f"Expected --epoch-size >= --batch-size. Received: epoch_size={self.epoch_size}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise UsageError(f"Expected --bn-momentum in [0, 1). Received: bn_momentum={self.bn_momentum}")
        if not self.learning_rate > 0 or self.l2 < 0:
            raise UsageError(f"Expected --lr > 0 and --l2 >= 0. Received: lr={self.learning_rate}, l2={self.l2}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))

    def resolved_image_size(self, store_size: int = 512) -> int:
        if self.image_size:
            return self.image_size
        # rnn at 64: ten encoder passes per slice; 8 epochs of 960 slices take ~3.5 min on 2 CPU cores.
        return {"cnn": 512, "cnn-described": 512, "rnn": 64, "baseline": 128}[self.model] if store_size >= 512 else store_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d


def _same_run(old: dict, new: dict) -> bool:
    keys = set(old) | set(new)
    return all(old.get(k) == new.get(k) for k in keys if k not in ("epochs", "out"))


def load_run(run_dir: str) -> tuple[dict, str]:
    """(config dict, path of the best model to use: final model, else the last checkpoint)."""
    cfg_path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(cfg_path):
        raise UsageError(f"No run at {run_dir!r} (no {CONFIG}): train one with 'ichtrain fit'.")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    for name in ("model.keras", os.path.join("checkpoints", "last.keras")):
        p = os.path.join(run_dir, name)
        if os.path.isfile(p):
            return cfg, p
    raise UsageError(f"Run {run_dir!r} has no model yet (no model.keras or checkpoint): rerun 'ichtrain fit'.")


def fit(cfg: FitConfig, verbose: int = 1) -> dict:
    import keras
    import tensorflow as tf

    from ichtrain.data import StoreStream
    from ichtrain.models import build_model, compile_model

    stream = StoreStream(cfg.store, by=cfg.split_by, fractions=cfg.fractions, seed=cfg.seed)
    store_size = int(stream.info.attrs["image_size"])
    size = cfg.resolved_image_size(store_size)
    if cfg.model == "rnn" and stream.channels < 2:
        raise UsageError(f"--model rnn reads a sequence of windows; the store {cfg.store!r} has one channel. "
                         "Build it with --preset rnn.")
    os.makedirs(os.path.join(cfg.out, "checkpoints"), exist_ok=True)
    cfg_path = os.path.join(cfg.out, CONFIG)
    record = dict(cfg.to_dict(), image_size=size, channels=stream.channels, window_names=stream.window_names,
                  windows=stream.info.attrs["windows"], size_policy=stream.info.attrs.get("size_policy", "resize"))
    first_epoch = 0
    last = os.path.join(cfg.out, "checkpoints", "last.keras")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as fh:
            old = json.load(fh)
        if not _same_run(old, record):
            raise UsageError(f"{cfg.out!r} holds a run with another configuration; choose another --out.")
        if os.path.isfile(last) and os.path.isfile(os.path.join(cfg.out, STATE)):
            with open(os.path.join(cfg.out, STATE)) as fh:
                first_epoch = int(json.load(fh)["epochs_done"])
    with open(cfg_path, "w") as fh:
        json.dump(record, fh, indent=2)
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    if first_epoch >= cfg.epochs:
        return dict(epochs_done=first_epoch, resumed=True, trained=0)
    if first_epoch > 0:
        model = keras.models.load_model(last)
    else:
        model = compile_model(build_model(cfg.model, size, stream.channels if cfg.model != "rnn" else 1,
                                          cfg.l2, windows=stream.channels, bn_momentum=cfg.bn_momentum),
                              cfg.learning_rate)
    epoch_size = cfg.epoch_size or int(stream.splits["train"].size)
    steps = max(1, epoch_size // cfg.batch_size)
    train = stream.dataset("train", batch_size=cfg.batch_size, alpha=cfg.alpha, epoch_size=epoch_size,
                           epochs=cfg.epochs, first_epoch=first_epoch, image_size=size, drop_remainder=True)
    val = stream.dataset("val", batch_size=cfg.batch_size, image_size=size) if stream.splits["val"].size else None

    class _State(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # after the checkpoints of this epoch are on disk
            with open(os.path.join(cfg.out, STATE), "w") as fh:
                json.dump({"epochs_done": epoch + 1}, fh)

    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(cfg.out, "checkpoints", "epoch-{epoch:03d}.keras")),
        keras.callbacks.ModelCheckpoint(last),
        keras.callbacks.CSVLogger(os.path.join(cfg.out, "log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(cfg.out, "tensorboard"), write_graph=False),
        _State(),
    ]
    history = model.fit(train, epochs=cfg.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
                        validation_data=val, callbacks=callbacks, verbose=verbose, shuffle=False)
    model.save(os.path.join(cfg.out, "model.keras"))
    return dict(epochs_done=cfg.epochs, resumed=first_epoch > 0, trained=cfg.epochs - first_epoch,
                history={k: [float(x) for x in v] for k, v in history.history.items()})
