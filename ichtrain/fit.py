"""``ichtrain fit``: train a model on a store, checkpoint every epoch, resume on rerun."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import asdict, dataclass

from ichprep.errors import UsageError
from ichprep.outlock import output_lock
from ichprep.windows import windows_to_list
from ichtrain.augment import parse_augment
from ichtrain.testtime import check_tta
from ichtrain.calibration import Calibration, calibrate_run
from ichtrain.catalog import BACKBONES, MODELS
from ichtrain.crop import check_crop
from ichtrain.distribute import STRATEGIES, WorkerRole, fix_keras_multi_worker, make_strategy, worker_role
from ichtrain.finetune import freeze_encoder, initial_weights
from ichtrain.graphwindows import check_windows_on, reading_model, resolve_windows_on
from ichtrain.run import RunDir, input_options, load_run, read_record, same_run, save_atomic
from ichtrain.sampling import ALPHA_MAX
from ichtrain.schedule import LR_SCHEDULES, MAX_RATE, learning_rate_at

__all__ = ["FitConfig", "fit", "worker_role", "STRATEGIES", "open_stream", "is_hu_store"]

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # a model's input side: below 32 the encoders pool to nothing, above 1024 no store


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
    lr_schedule: str = "cosine"  # cosine: from learning_rate down to LR_FLOOR of it at the last epoch; constant
    alpha: float = 0.5
    epoch_size: int | None = None
    split_by: str = "patient"
    fractions: tuple = (0.8, 0.1, 0.1)
    seed: int = 0
    bn_momentum: float = 0.99  # the report's CNNs only
    strategy: str = "default"  # tf.distribute: default (one device), mirrored (local GPUs), multi-worker
    neighbours: int = 0  # 2.5D: slices z-k .. z+k of the series as extra channels (slice models)
    fold: tuple | None = None  # (fold, folds): K-fold splits (ichtrain cv) instead of fractions
    backbone: str = "efficientnetb0"  # --model backbone only
    weights: str | None = "imagenet"  # --model backbone only: "imagenet", a weights file, or None (random)
    windows: str | None = None  # an hu store only: windows applied when read (default: rnn for rnn, else cnn)
    windows_on: str = "auto"  # an hu store only: reader (host), model (first layer), auto (model on a GPU)
    augment: str = "none"  # training batches only (ichtrain.augment); recorded canonically
    tta: str = "none"  # test-time augmentation of every prediction of the run, calibration included
    recipe: str | None = None  # the --recipe that chose augment, tta and windows (recorded; they are explicit)
    crop: str = "none"  # head: every reader of the run crops each sample to its head before the resize
    init: str | None = None  # start from another run's (or a .keras file's) weights: fine-tuning
    freeze_epochs: int = 0  # with init: train only the last layer for this many epochs first

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"Expected --strategy one of {', '.join(STRATEGIES)}. Received: strategy={self.strategy!r}")

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
        if not (0 < self.learning_rate <= MAX_RATE) or not (0 <= self.l2 <= MAX_RATE):
            raise UsageError(f"Expected --lr in (0, {MAX_RATE:g}] and --l2 in [0, {MAX_RATE:g}]. Received: "
                             f"lr={self.learning_rate}, l2={self.l2}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and 0.0 <= self.alpha <= ALPHA_MAX):
            raise UsageError(f"Expected --alpha a number in [0, {ALPHA_MAX:g}] (0 natural frequencies, 1 balanced types). "
                             f"Received: alpha={self.alpha!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UsageError(f"Expected --seed an integer in [0, 2**32). Received: seed={self.seed!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE):
            raise UsageError(f"Expected --image-size an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]. "
                             f"Received: image_size={self.image_size!r}")
        if self.weights not in ("imagenet", None) and not os.path.isfile(self.weights):
            raise UsageError(f"Expected --weights imagenet, none or a weights file. Received: {self.weights!r}, "
                             "which is not a file")
        if isinstance(self.weights, str) and self.weights.endswith(".keras"):
            raise UsageError(f"--weights takes a Keras application's weights file (*.h5, such as Keras' *_notop.h5); "
                             f"{self.weights!r} is a whole model: fine-tune from it with --init")

        check_windows_on(self.windows_on)
        object.__setattr__(self, "augment", parse_augment(self.augment).to_string())
        check_tta(self.tta)
        check_crop(self.crop)
        if not isinstance(self.freeze_epochs, int) or not 0 <= self.freeze_epochs < self.epochs:
            raise UsageError(f"Expected --freeze-epochs an integer in [0, --epochs). Received: "
                             f"freeze_epochs={self.freeze_epochs!r}, epochs={self.epochs}")
        if self.freeze_epochs and not self.init:
            raise UsageError("--freeze-epochs keeps pretrained layers still: pass --init RUN with it")
        if self.freeze_epochs and self.strategy != "default":
            raise UsageError(f"--freeze-epochs trains in two stages on one device. Received: strategy={self.strategy!r}")
        if self.init is not None:
            object.__setattr__(self, "init", os.path.abspath(self.init))
        if self.crop != "none" and self.windows_on == "model":
            raise UsageError("--crop runs in the stream's reader: use --windows-on reader (or auto) with it. "
                             f"Received: crop={self.crop!r}, windows_on='model'")
        if self.tta != "none" and self.model == "series":
            raise UsageError("--tta flips slices: the series model reads embeddings. Received: tta with --model series")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"Expected --lr-schedule one of {', '.join(LR_SCHEDULES)}. Received: {self.lr_schedule!r}")
        if not isinstance(self.neighbours, int) or not 0 <= self.neighbours <= 4:
            raise UsageError(f"Expected --neighbours an integer in [0, 4]. Received: neighbours={self.neighbours!r}")
        if self.neighbours and self.model == "rnn":
            raise UsageError("--neighbours adds slices as channels of a one-slice model; --model rnn reads a "
                             "window sequence. Use it with baseline or cnn.")
        if self.backbone not in BACKBONES:
            raise UsageError(f"Expected --backbone one of {', '.join(BACKBONES)}. Received: backbone={self.backbone!r}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if not all(math.isfinite(f) for f in self.fractions):
            raise UsageError(f"Expected finite --split fractions. Received: {self.fractions!r}")
        if self.fold is not None:
            object.__setattr__(self, "fold", tuple(int(v) for v in self.fold))

    def resolved_image_size(self, store_size: int = 512) -> int:
        if self.image_size:
            return self.image_size
        # rnn at 64: it runs its encoder once per window, ten times per slice.
        natural = {"cnn": 512, "cnn-described": 512, "rnn": 64, "baseline": 128, "backbone": 224}[self.model]
        return natural if store_size >= 512 else store_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        d["fold"] = list(self.fold) if self.fold else None
        return d


def _open_run(cfg: FitConfig, record: dict, stream, role: WorkerRole) -> int:
    """Refuse a run folder that holds another configuration or split; write the record (chief); return the
    epochs already done (every worker reads the chief's state in a shared run folder, so all resume from
    the same epoch and weights)."""
    run = RunDir(cfg.out)
    if role.chief:
        os.makedirs(run.checkpoints, exist_ok=True)
        old = run.read_raw_record()
        if old is not None:
            stream.check_split(old.get("split"), f"the run in {cfg.out!r}")
            if not same_run(old, record):
                raise UsageError(f"{cfg.out!r} holds a run with another configuration; choose another --out.")
    first_epoch = run.epochs_done()
    if role.chief:
        run.write_record(record)
    return first_epoch


def augment_seed(cfg: FitConfig, first_epoch: int) -> int:
    """The augmentation seed of a fit that starts at ``first_epoch``: the same maps for a run and its resume;
    other epochs draw others."""
    return cfg.seed * 1_000_003 + first_epoch


def _pipelines(cfg: FitConfig, stream, strategy, record: dict, epoch_size: int, first_epoch: int):
    """(train, val or None, val_steps or None): one pipeline, or one per worker under a distribution
    strategy, each batched per replica and reading its own share of every epoch."""
    val_size = int(stream.splits["val"].size)
    inputs = input_options(record, training=True)
    common = dict(inputs, drop_remainder=True)
    augment = dict(augment=cfg.augment, augment_seed=augment_seed(cfg, first_epoch))
    if resolve_windows_on(inputs["windows_on"], stream) == "model":
        augment = {}  # the training model's layer after the windows augments (graphwindows.reading_model)
    if cfg.strategy == "default":
        train = stream.dataset("train", batch_size=cfg.batch_size, alpha=cfg.alpha, epoch_size=epoch_size,
                               epochs=cfg.epochs, first_epoch=first_epoch, **common, **augment)
        return train, (stream.dataset("val", batch_size=cfg.batch_size, **inputs) if val_size else None), None

    def train_fn(ctx):  # one input pipeline per worker, batched per replica
        return stream.dataset("train", batch_size=ctx.get_per_replica_batch_size(cfg.batch_size), alpha=cfg.alpha,
                              epoch_size=epoch_size, epochs=cfg.epochs, first_epoch=first_epoch,
                              shard=(ctx.input_pipeline_id, ctx.num_input_pipelines), **common, **augment)

    def val_fn(ctx):  # cycled, so every worker can run the same number of validation steps
        return stream.dataset("val", batch_size=ctx.get_per_replica_batch_size(cfg.batch_size), repeat=True,
                              shard=(ctx.input_pipeline_id, ctx.num_input_pipelines), **common)

    train = strategy.distribute_datasets_from_function(train_fn)
    val_steps = val_size // cfg.batch_size
    val = strategy.distribute_datasets_from_function(val_fn) if val_steps else None
    return train, val, (val_steps or None)


def open_stream(cfg: FitConfig):
    """The store's stream for ``cfg``, refusing before any training a model that cannot read its windows."""
    from ichtrain.data import StoreStream

    windows = cfg.windows
    if windows is None and is_hu_store(cfg.store):
        windows = "rnn" if cfg.model == "rnn" else "cnn"
    stream = StoreStream(cfg.store, by=cfg.split_by, fractions=cfg.fractions, seed=cfg.seed, fold=cfg.fold,
                         windows=windows, generation=_resumed_generation(cfg.out))
    if cfg.model == "rnn" and stream.channels < 2:
        fix = ("pass --windows rnn (or two or more windows)" if stream.info.hu else
               "build it with --preset rnn, or --preset hu and read it with --windows rnn")
        raise UsageError(f"--model rnn reads a sequence of windows; the store {cfg.store!r} gives one channel "
                         f"({stream.window_names[0]}): {fix}.")
    return stream


def _resumed_generation(out: str) -> int | None:
    """The store generation a run in ``out`` trained on (a resume reads the same rows after an append), or
    None for a new run (the latest)."""
    if not RunDir(out).has_record():
        return None
    try:
        return read_record(out).get("store_generation")
    except UsageError:
        return None  # a damaged record is refused, naming it, when the run is opened


def is_hu_store(url: str) -> bool:
    from ichprep import store as st

    return st.read_info(url)[1].hu


def fit(cfg: FitConfig, verbose: int = 1) -> dict:
    """Train ``cfg.model`` on ``cfg.store``; resumable. Returns epochs done/trained and the history.

    Under ``--strategy mirrored|multi-worker`` ``batch_size`` is the global batch (split over replicas) and
    each worker's input pipeline reads its own disjoint share of every epoch's draws (``StoreStream.plan``).
    Only the chief writes the run folder (and holds its lock, ``RUN.lock``: a second fit into it is refused);
    another worker saves its final replica to ``worker-<i>/``.

    Args:
        cfg: the run (``FitConfig``, validated when made: store, out, model, epochs, ..., see ``ichtrain fit
            --help``); its record goes to ``cfg.out/config.json`` (:mod:`ichtrain.run`).
        verbose: Keras' verbosity (0 silent, 1 a progress bar, 2 a line per epoch).

    Returns:
        dict: ``epochs_done``, ``trained`` (epochs this call), ``resumed``, and ``history`` (Keras' metrics per
        epoch of this call).

    Raises:
        UsageError: a bad configuration, or a run folder holding another configuration.
        StoreError: another fit is writing the run folder.
    """
    role = worker_role(cfg.strategy)  # before TensorFlow: a bad TF_CONFIG is a usage error
    with output_lock(cfg.out, "ichtrain fit") if role.chief else contextlib.nullcontext():
        return _fit(cfg, verbose, role)


def _fit(cfg: FitConfig, verbose: int, role: WorkerRole) -> dict:
    import keras
    import tensorflow as tf

    from ichtrain.models import compile_model

    strategy = make_strategy(cfg.strategy)  # first TF work: MultiWorkerMirroredStrategy must precede any op
    replicas = int(strategy.num_replicas_in_sync)
    distributed = cfg.strategy != "default"
    if cfg.batch_size % replicas:
        raise UsageError(f"Expected --batch-size (the global batch) divisible by the {replicas} replicas in sync. "
                         f"Received: batch_size={cfg.batch_size}")
    stream = open_stream(cfg)
    windows_in_model = resolve_windows_on(cfg.windows_on, stream) == "model"  # refused here on a windowed store
    windows_in_model = windows_in_model and cfg.crop == "none"  # head boxes are found by the reader
    if not stream.usable.any():
        raise UsageError(f"The store {cfg.store!r} holds no labelled slices with usable pixels (built without "
                         "--labels?): build it with --labels CSV to train on it")
    epoch_size = cfg.epoch_size or int(stream.splits["train"].size)
    if epoch_size < cfg.batch_size:  # batches are whole: not one would be drawn (refused before the run is made)
        raise UsageError(f"The train split holds {epoch_size} slices, fewer than --batch-size {cfg.batch_size}: "
                         "lower --batch-size, or pass --epoch-size (slices drawn per epoch) >= it")
    store_size = stream.info.image_size
    size = cfg.resolved_image_size(store_size)
    record = dict(cfg.to_dict(), image_size=size, channels=stream.channels, window_names=stream.window_names,
                  windows=windows_to_list(stream.windows), store_layout="hu" if stream.info.hu else "windows",
                  size_policy=stream.info.size_policy,
                  replicas=replicas, workers=role.workers, split=stream.split_record(),
                  store_generation=stream.generation,
                  head_boxes="store" if stream.info.has_head_boxes else "read")  # the build's, where it stored them
    in_channels = 1 if cfg.model == "rnn" else stream.channels * (2 * cfg.neighbours + 1)
    initial = initial_weights(cfg, size, in_channels, stream.channels) if cfg.init else None  # before the folder
    if cfg.freeze_epochs and windows_in_model:
        raise UsageError("--freeze-epochs trains the model itself: pass --windows-on reader with it")
    first_epoch = _open_run(cfg, record, stream, role)
    run = RunDir(cfg.out)
    verbose = verbose if role.chief else 0
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    if first_epoch >= cfg.epochs:
        if role.chief and Calibration.load(cfg.out) is None:  # trained, but stopped before calibrating
            calibrate_run(cfg.out, stream, keras.models.load_model(load_run(cfg.out)[1]), input_options(record),
                          cfg.alpha, tta=cfg.tta)
        return dict(epochs_done=first_epoch, resumed=True, trained=0)
    with strategy.scope():
        model = _start_model(cfg, run, first_epoch, size, in_channels, stream.channels, distributed, initial)
        train_model = model  # windows in the model: trained inside a wrapper whose first layer applies them
        if windows_in_model:
            train_model = compile_model(reading_model(model, stream, input_options(record, training=True),
                                                      cfg.augment, augment_seed(cfg, first_epoch)),
                                        optimizer=model.optimizer)
    if cfg.strategy == "multi-worker":
        fix_keras_multi_worker(train_model, strategy)
    if verbose:
        print(f"fit: {cfg.model} at {size}x{size}, {epoch_size // cfg.batch_size} steps/epoch of {cfg.batch_size} "
              f"slices, strategy {cfg.strategy} ({replicas} replica{'s' * (replicas > 1)}, {role.workers} worker"
              f"{'s' * (role.workers > 1)}; this is {role.task_type} {role.task_id})"
              + ("; windows computed in the model's first layer" if windows_in_model else "")
              + (" and augmentation in the next" if windows_in_model and cfg.augment != "none" else ""), flush=True)
    history = _train(cfg, model, train_model, _callbacks(cfg, run, model, role), stream, strategy, record,
                     epoch_size, first_epoch, verbose)
    if role.chief:
        save_atomic(model, run.model)
        calibrate_run(cfg.out, stream, model, input_options(record), cfg.alpha, tta=cfg.tta)
    else:  # the replica's weights: equal to the chief's after synchronous training (the test checks it)
        os.makedirs(os.path.dirname(run.worker_model(role.task_id)), exist_ok=True)
        model.save(run.worker_model(role.task_id))
    return dict(epochs_done=cfg.epochs, resumed=first_epoch > 0, trained=cfg.epochs - first_epoch,
                history=history)


def _start_model(cfg: FitConfig, run: RunDir, first_epoch: int, size: int, in_channels: int, windows: int,
                 distributed: bool, initial: list | None):
    """The compiled model training starts from: the resume point's (its optimizer included), else a new one
    (with ``--init``'s weights). With ``--freeze-epochs``, frozen as the stage of ``first_epoch`` needs."""
    import keras

    from ichtrain.models import build_model, compile_model

    if first_epoch > 0:
        model = keras.models.load_model(run.last)
        if cfg.freeze_epochs:  # the stage this epoch belongs to (a checkpoint keeps the flags it was saved with)
            freeze_encoder(model, first_epoch < cfg.freeze_epochs)
            compile_model(model, cfg.learning_rate)
        return model
    model = build_model(cfg.model, size, in_channels, cfg.l2, windows=windows, bn_momentum=cfg.bn_momentum,
                        sync_bn=distributed, backbone=cfg.backbone, weights=cfg.weights, neighbours=cfg.neighbours)
    if initial is not None:
        model.set_weights(initial)
    if cfg.freeze_epochs:
        freeze_encoder(model, True)
    return compile_model(model, cfg.learning_rate)


def _callbacks(cfg: FitConfig, run: RunDir, model, role: WorkerRole) -> list:
    """The learning-rate schedule (every worker: their optimizer steps stay in sync), then on the chief the
    checkpoints (the model itself, never a windowing wrapper; then the state), the CSV log and TensorBoard."""
    import keras

    class _Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not math.isfinite(float((logs or {}).get("loss", 0.0))):
                return  # a diverged epoch (TerminateOnNaN stopped it) is not a resume point
            save_atomic(model, run.epoch_checkpoint(epoch + 1))
            save_atomic(model, run.last)
            run.write_state(epoch + 1)

    # the schedule first, so the rate it sets is in the logs the CSV logger writes
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: learning_rate_at(cfg, epoch))
    if not role.chief:
        return [schedule, keras.callbacks.TerminateOnNaN()]
    return [schedule, keras.callbacks.TerminateOnNaN(), _Checkpoint(), keras.callbacks.CSVLogger(run.log, append=True),
            keras.callbacks.TensorBoard(run.tensorboard, write_graph=False)]


def _train(cfg: FitConfig, model, train_model, callbacks: list, stream, strategy, record: dict, epoch_size: int,
           first_epoch: int, verbose: int) -> dict:
    """Train from ``first_epoch`` to ``cfg.epochs`` (with ``--freeze-epochs``: the head alone first, then
    everything with a fresh optimizer); returns the history of this call's epochs."""
    from ichtrain.models import compile_model

    start = first_epoch
    steps = epoch_size // cfg.batch_size
    train, val, val_steps = _pipelines(cfg, stream, strategy, record, epoch_size, first_epoch)
    common = dict(steps_per_epoch=steps, validation_data=val, validation_steps=val_steps, callbacks=callbacks,
                  verbose=verbose, shuffle=False)
    history = {}
    with stream.guard():  # an error mid-epoch stops the readers first, and names a damaged shard
        if cfg.freeze_epochs and first_epoch < cfg.freeze_epochs:  # stage 1: the last layer alone
            frozen, _, _ = _pipelines(dataclasses.replace(cfg, epochs=cfg.freeze_epochs, freeze_epochs=0), stream,
                                      strategy, record, epoch_size, first_epoch)
            history = train_model.fit(frozen, epochs=cfg.freeze_epochs, initial_epoch=first_epoch, **common).history
            freeze_encoder(model, False)
            compile_model(model, cfg.learning_rate)  # a new optimizer for the layers that join
            first_epoch = cfg.freeze_epochs
            train, _, _ = _pipelines(cfg, stream, strategy, record, epoch_size, first_epoch)
        later = train_model.fit(train, epochs=cfg.epochs, initial_epoch=first_epoch, **common).history
    history = {k: [float(x) for x in history.get(k, [])] + [float(x) for x in v] for k, v in later.items()}
    bad = [i for i, v in enumerate(history.get("loss", [])) if not math.isfinite(v)]
    if bad:
        raise UsageError(f"Training diverged: the loss became {history['loss'][bad[0]]} in the run's epoch "
                         f"{start + bad[0] + 1} (lr={cfg.learning_rate}, l2={cfg.l2}); lower --lr or --l2 and "
                         f"train into another --out (the last finite epoch's checkpoint stays in {cfg.out!r})")
    return history
