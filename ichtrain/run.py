"""The run folder: every file a training run writes, named here once, and how a run is read back.

A run folder holds ``config.json`` (the run's record: its configuration and the split it trained on),
``state.json`` (epochs checkpointed), ``checkpoints/last.keras`` (the resume point, with its optimizer),
``model.keras`` (the final model), ``log.csv``, ``calibration.json`` and what evaluate writes
(``eval-SPLIT.json``, ``predictions-SPLIT.npz``, ``plots/``). ``fit`` and the series fit write it through
:class:`RunDir`; evaluate, compare, cv, predict, export and explain read it through :func:`load_run`, which
fills the defaults of runs written before an option existed, in one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ichprep.errors import UsageError

__all__ = ["RunDir", "load_run", "load_keras", "read_record", "input_options", "tta_of", "same_run",
           "save_atomic", "write_atomic", "OLD_RUN_DEFAULTS", "CONFIG", "STATE", "MODEL", "LOG", "CALIBRATION"]

CONFIG = "config.json"
STATE = "state.json"
MODEL = "model.keras"
LOG = "log.csv"
CALIBRATION = "calibration.json"
_CHECKPOINTS = "checkpoints"
_LAST = "last.keras"

# What a run record written before an option existed meant by its absence: a constant rate, no augmentation,
# no TTA, no crop, no fine-tuning, 2-D slices, windows applied wherever the device suits, the store's first
# generation (every store was one generation before appends), head boxes found as read (before stores held them).
OLD_RUN_DEFAULTS = {"lr_schedule": "constant", "augment": "none", "tta": "none", "recipe": None, "crop": "none",
                    "init": None, "freeze_epochs": 0, "neighbours": 0, "windows_on": "auto",
                    "size_policy": "resize", "fold": None, "store_generation": 1, "head_boxes": "read"}
# Options that change how a run is executed, not what it learns: a resume may change them.
_FREE = ("epochs", "out", "strategy", "replicas", "workers", "windows_on")


def write_atomic(path: str, text: str) -> None:
    """``text`` into ``path``, replaced whole: a reader never sees half a file, a crash leaves the old one."""
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def save_atomic(model, path: str) -> None:
    """``model.save(path)`` that never leaves a partial file at ``path`` (a process stopped mid-save left a
    checkpoint its resume could not read): written beside it, then renamed over it."""
    partial = path[: -len(".keras")] + ".partial.keras"
    model.save(partial)
    os.replace(partial, path)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder, and its small files read and written whole."""

    path: str

    @property
    def config(self) -> str:
        return os.path.join(self.path, CONFIG)

    @property
    def state(self) -> str:
        return os.path.join(self.path, STATE)

    @property
    def model(self) -> str:
        return os.path.join(self.path, MODEL)

    @property
    def log(self) -> str:
        return os.path.join(self.path, LOG)

    @property
    def calibration(self) -> str:
        return os.path.join(self.path, CALIBRATION)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, _CHECKPOINTS)

    @property
    def last(self) -> str:
        """The resume point: the last epoch's model with its optimizer."""
        return os.path.join(self.path, _CHECKPOINTS, _LAST)

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.path, "tensorboard")

    def epoch_checkpoint(self, epoch: int) -> str:
        """The model after ``epoch`` (1-based) epochs."""
        return os.path.join(self.path, _CHECKPOINTS, f"epoch-{epoch:03d}.keras")

    def worker_model(self, task_id: int) -> str:
        """Where a non-chief worker of a distributed fit keeps its replica."""
        return os.path.join(self.path, f"worker-{task_id}", MODEL)

    def evaluation(self, split: str) -> str:
        return os.path.join(self.path, f"eval-{split}.json")

    def predictions(self, split: str) -> str:
        return os.path.join(self.path, f"predictions-{split}.npz")

    def has_record(self) -> bool:
        return os.path.isfile(self.config)

    def best_model(self) -> str | None:
        """The final model, else the last checkpoint, else None."""
        for p in (self.model, self.last):
            if os.path.isfile(p):
                return p
        return None

    def epochs_done(self) -> int:
        """Epochs checkpointed: 0 unless both the state and the checkpoint it counts are there."""
        if os.path.isfile(self.last) and os.path.isfile(self.state):
            with open(self.state) as fh:
                return int(json.load(fh)["epochs_done"])
        return 0

    def write_state(self, epochs_done: int) -> None:
        write_atomic(self.state, json.dumps({"epochs_done": int(epochs_done)}))

    def write_record(self, record: dict) -> None:
        os.makedirs(self.path, exist_ok=True)
        write_atomic(self.config, json.dumps(record, indent=2))

    def read_raw_record(self) -> dict | None:
        """config.json as written (no defaults filled), or None where there is none."""
        if not self.has_record():
            return None
        with open(self.config) as fh:
            return json.load(fh)


def same_run(old: dict, new: dict) -> bool:
    """Whether a run folder's record ``old`` and a new run's ``new`` learn the same thing (a resume may change
    only how it runs: epochs, devices)."""
    old = {**OLD_RUN_DEFAULTS, **old}
    new = {**OLD_RUN_DEFAULTS, **new}
    return all(old.get(k) == new.get(k) for k in set(old) | set(new) if k not in _FREE)


def read_record(run_dir: str) -> dict:
    """A run's record with older runs' defaults filled in; a usage error naming the file where it is missing
    or damaged."""
    run = RunDir(run_dir)
    if not run.has_record():
        raise UsageError(f"No run at {run_dir!r} (no {CONFIG}): train one with 'ichtrain fit'.")
    try:
        cfg = run.read_raw_record()
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
            raise ValueError("not a run record")
        if not isinstance(cfg.get("image_size", 0), (int, type(None))) or isinstance(cfg.get("image_size"), bool):
            raise ValueError(f"image_size is {cfg.get('image_size')!r}")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run.config} is damaged ({exc}); it is the run's record: restore it, or train a new run "
                         "into another --out") from None
    return {**OLD_RUN_DEFAULTS, **cfg}


def load_run(run_dir: str) -> tuple[dict, str]:
    """(the run's record, path of the model to use: the final model, else the last checkpoint)."""
    cfg = read_record(run_dir)
    path = RunDir(run_dir).best_model()
    if path is None:
        raise UsageError(f"Run {run_dir!r} has no model yet (no {MODEL} or checkpoint): rerun 'ichtrain fit'.")
    return cfg, path


def load_keras(path: str):
    """A saved model, uncompiled: inference needs no optimizer, and the series model's loss function need
    not be registered to read it."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 -- Keras raises many types for a file it cannot read
        raise UsageError(f"{path} is not a readable Keras model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                         "a damaged checkpoint is remade by rerunning 'ichtrain fit' with the same arguments") from None


def input_options(run: dict, training: bool = False) -> dict:
    """How a run's model reads a store (``StoreStream.dataset`` keywords), from its record. Where a GPU
    trains, batches travel as float16 (the store's own values) and the model casts them on the device (the
    host's float32 conversion was the stream's largest cost). Where an hu store's windows are applied changes
    no value, so only training keeps the run's ``windows_on``; every other reader takes ``auto`` (the model's
    first layer on a GPU, :mod:`ichtrain.graphwindows`)."""
    import tensorflow as tf

    run = {**OLD_RUN_DEFAULTS, **run}
    dtype = "float16" if tf.config.list_physical_devices("GPU") else "float32"
    windows_on = run["windows_on"] if training else "auto"
    crop = run["crop"]
    if crop != "none" and windows_on == "auto":
        windows_on = "reader"  # head boxes are found in the reader's stream (augmentation runs in either place)
    return dict(image_size=run["image_size"], neighbours=int(run["neighbours"]),
                sequence=run["model"] == "rnn", dtype=dtype, windows_on=windows_on, crop=crop, boxes=run["head_boxes"])


def tta_of(run: dict) -> str:
    """The run's test-time augmentation (runs from before it: none)."""
    return run.get("tta", OLD_RUN_DEFAULTS["tta"])
