"""Series context: per-slice embeddings of a trained slice model, and a bidirectional GRU over each series.

What lifted every top RSNA 2019 solution: a radiologist reads a series, not a slice. ``embed`` writes each
usable slice's features (the layer before a slice model's head) to a Zarr array keyed to the store's rows;
the series model reads each series' embeddings in z order (the store's row order) and gives six outputs
per slice. It trains on whole series (batched by length, so nothing is padded), with the challenge's
weighted log loss, on the slice run's own split, so its val and test patients are unseen by both models.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from ichprep.errors import UsageError
from ichprep.outlock import output_lock
from ichtrain.calibration import Calibration, fit_calibration
from ichtrain.catalog import SERIES_INITS
from ichtrain.infer import feature_model, features_of
from ichtrain.metrics import CHALLENGE_WEIGHTS, weighted_log_loss
from ichtrain.run import RunDir, input_options, load_keras, load_run, save_atomic, write_atomic
from ichtrain.schedule import LR_SCHEDULES, MAX_RATE, learning_rate_at

__all__ = ["embed", "open_embeddings", "build_series_model", "fit_series", "SeriesFitConfig", "series_rows",
           "predict_series", "series_batches", "challenge_loss", "train_series_epoch"]

EMBED_BLOCK = 512  # rows per embedding chunk: the unit of resume
CHECKPOINT_SECONDS = 10.0  # the series model checkpoints at most this often (an epoch takes a fraction of a second)
SERIES_EPOCHS = 60  # on a cosine schedule: as good as or better than 30 on held-out patients (docs/training.md)
# What a series run recorded before these fields existed: such a run still resumes as what it was.
OLD_SERIES_DEFAULTS = {"lr_schedule": "constant", "init": "scratch"}


def _sop_digest(sops) -> str:
    h = hashlib.blake2b(digest_size=16)
    for s in sops:
        h.update(str(s).encode("ascii", "replace") + b"\n")
    return h.hexdigest()


def embed(run_dir: str, out: str, store: str | None = None, batch_size: int = 64, progress=None) -> dict:
    """Write ``out`` (a Zarr group): ``embeddings`` (N, D) float16 for every row of the store whose pixels
    are usable (zeros elsewhere), resumable by blocks of EMBED_BLOCK rows. The store is never modified; a second
    embed into ``out`` while one runs is refused (``OUT.lock``)."""
    with output_lock(out, "ichtrain embed"):
        return _embed(run_dir, out, store, batch_size, progress)


def _embed(run_dir: str, out: str, store: str | None, batch_size: int, progress) -> dict:
    import zarr

    from ichtrain.data import run_stream

    cfg, model_path = load_run(run_dir)
    if cfg["model"] == "series":
        raise UsageError(f"{run_dir!r} is a series run; embed a slice model's run (baseline, cnn, backbone).")
    if cfg["model"] == "rnn":
        raise UsageError("embed reads slice models (baseline, cnn, cnn-described, backbone); --model rnn reads "
                         "window sequences.")
    features = feature_model(load_keras(model_path))
    url = store or cfg["store"]
    stream = run_stream(cfg, url)
    sops = stream.sop_uids
    identity = dict(run=os.path.abspath(run_dir), store=url, rows=int(stream.n), sop_digest=_sop_digest(sops),
                    dim=int(features.output_shape[-1]))
    n_blocks = -(-stream.n // EMBED_BLOCK)
    if os.path.isdir(out) and os.listdir(out):
        try:
            g = zarr.open_group(out, mode="r+")
            old = dict(g.attrs.get("ichtrain_embeddings", {}))
        except Exception:  # noqa: BLE001 -- anything that is not our group
            old = {}
        if {k: old.get(k) for k in identity} != identity:
            raise UsageError(f"{out!r} holds something else (not the embeddings of this run and store); choose "
                             "another --out.")
    else:
        g = zarr.open_group(out, mode="w")
        g.create_array("embeddings", shape=(stream.n, identity["dim"]), chunks=(EMBED_BLOCK, identity["dim"]),
                       dtype="float16", fill_value=0)
        g.create_array("block_done", shape=(n_blocks,), chunks=(max(1, n_blocks),), dtype="bool", fill_value=False)
        g.attrs["ichtrain_embeddings"] = dict(identity, complete=False)
    emb, done = g["embeddings"], g["block_done"]
    readable = np.flatnonzero(stream.readable)
    todo = [b for b in range(n_blocks) if not done[b]]
    for k, b in enumerate(todo):
        lo, hi = b * EMBED_BLOCK, min((b + 1) * EMBED_BLOCK, stream.n)
        rows = readable[(readable >= lo) & (readable < hi)]
        block = np.zeros((hi - lo, identity["dim"]), np.float16)
        if rows.size:
            block[rows - lo] = features_of(features, stream, rows, input_options(cfg), batch_size)
        emb[lo:hi] = block
        done[b] = True
        if progress is not None:
            progress.update(hi, stream.n)
    g.attrs["ichtrain_embeddings"] = dict(identity, complete=True)
    return dict(out=out, rows=int(stream.n), embedded=int(readable.size), dim=identity["dim"], blocks_run=len(todo))


def _embeddings_group(path: str):
    """(the embeddings group, its attrs), or a UsageError when ``path`` holds none."""
    import zarr

    try:
        g = zarr.open_group(path, mode="r")
        return g, dict(g.attrs["ichtrain_embeddings"])
    except Exception:  # noqa: BLE001
        raise UsageError(f"{path!r} is not an embeddings store: make one with 'ichtrain embed RUN --out {path}'.") from None


def open_embeddings(path: str, stream) -> tuple[np.ndarray, dict]:
    """(embeddings (N, D) float32, their attrs) checked against ``stream``'s store: same rows, same SOPs."""
    g, attrs = _embeddings_group(path)
    if not attrs.get("complete"):
        raise UsageError(f"The embeddings in {path!r} are incomplete: rerun the same 'ichtrain embed' to finish them.")
    sops = stream.sop_uids
    if attrs["rows"] != stream.n:
        raise UsageError(f"The embeddings in {path!r} have {attrs['rows']} rows and the store {stream.url!r} has "
                         f"{stream.n}: they were made from another store.")
    if attrs["sop_digest"] != _sop_digest(sops):
        raise UsageError(f"The embeddings in {path!r} do not match the store {stream.url!r}: its sop_uid column "
                         "differs (another store, or a rebuilt one); rerun 'ichtrain embed'.")
    return np.asarray(g["embeddings"][:], np.float32), attrs


def series_rows(stream, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` (sorted) cut into their series, each in z order (the store's row order)."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(stream.series_lo[rows])) + 1
    return np.split(rows, cuts)


def series_batches(groups: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of ``groups`` in batches of series of one length each: no padding, so no mask (Keras'
    Bidirectional GRU drops masks), and a series of any length, one slice included, is read whole."""
    by_len: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_len.setdefault(len(g), []).append(i)
    return [idx[k:k + batch_size] for _, idx in sorted(by_len.items()) for k in range(0, len(idx), batch_size)]


def build_series_model(dim: int, units: int = 64, head: tuple[np.ndarray, np.ndarray] | None = None):
    """Steps of ``dim`` features (a series' slices in z order) -> Dense -> bidirectional GRU -> six sigmoid
    outputs per step, from the step's own features concatenated with its context.

    ``head`` (kernel (dim, 6), bias (6,)): the slice model's calibrated head. The output is then
    ``sigmoid(head(x) + context(x))`` with the context term's weights starting at zero, so the untrained
    series model *is* the calibrated slice model and training adds only what the series tells (as the 2.5D
    baseline's neighbours do); without it, one head learns from the embeddings afresh."""
    import keras
    from keras import layers

    inp = keras.Input((None, dim), name="series")
    h = layers.Dense(units, activation="relu")(inp)
    h = layers.Dropout(0.2)(h)
    ctx = layers.Bidirectional(layers.GRU(units, return_sequences=True))(h)
    z = layers.Concatenate()([h, ctx])
    if head is None:
        out = layers.Dense(6, activation="sigmoid", name="labels", dtype="float32")(z)
        return keras.Model(inp, out, name="SeriesGRU")
    kernel, bias = (np.asarray(a, np.float32) for a in head)
    if kernel.shape != (dim, 6) or bias.shape != (6,):
        raise ValueError(f"Expected a head of kernel ({dim}, 6) and bias (6,). Received: {kernel.shape}, {bias.shape}")
    own = layers.Dense(6, name="slice_logits", dtype="float32")
    context = layers.Dense(6, name="context_logits", dtype="float32", kernel_initializer="zeros")(z)
    out = layers.Activation("sigmoid", name="labels", dtype="float32")(layers.Add()([own(inp), context]))
    own.set_weights([kernel, bias])  # set, not an initializer: a saved model's config stays free of arrays
    return keras.Model(inp, out, name="SeriesGRU")


def calibrated_head(slice_run: str) -> tuple[np.ndarray, np.ndarray]:
    """The slice run's head as one Dense on its features, calibration folded in: its logit ``W x + b`` maps
    to ``a (W x + b + offset) + shift`` per label, i.e. kernel ``W a`` and bias ``a (b + offset) + shift``."""
    _, model_path = load_run(slice_run)
    kernel, bias = load_keras(model_path).get_layer("labels").get_weights()
    cal = Calibration.load(slice_run)
    if cal is None:
        raise UsageError(f"The slice run {slice_run!r} has no calibration.json: rerun its 'ichtrain fit' to finish it.")
    a, offset, shift = (np.asarray(v, np.float64) for v in (cal.scale, cal.offset, cal.shift))
    return (kernel * a).astype(np.float32), (a * (bias + offset) + shift).astype(np.float32)


def challenge_loss():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable("ichtrain")
    def challenge_bce(y_true, y_pred):
        """The challenge's per-slice weighted log loss (any weighted 2)."""
        w = ops.convert_to_tensor(CHALLENGE_WEIGHTS.tolist(), dtype=y_pred.dtype)
        p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        bce = -(y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
        return ops.sum(bce * w, axis=-1) / float(CHALLENGE_WEIGHTS.sum())

    return challenge_bce


def train_series_epoch(model, x: np.ndarray, labels: np.ndarray, groups: list[np.ndarray], batches: list[list[int]],
                       rng: np.random.Generator) -> list[float]:
    """One epoch of ``model`` over whole series: ``batches`` (from :func:`series_batches`) in an order drawn
    from ``rng`` (seeded by the epoch, so a resumed fit draws the same); each step's inputs are the rows
    ``groups[i]`` of ``x`` and ``labels``. Returns the batches' losses."""
    losses = []
    for b in rng.permutation(len(batches)):
        idx = batches[b]
        xb = np.stack([x[groups[i]] for i in idx])
        yb = np.stack([labels[groups[i]] for i in idx])
        losses.append(float(np.asarray(model.train_on_batch(xb, yb)).ravel()[0]))
    return losses


def predict_series(model, emb: np.ndarray, groups: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """(sum of group sizes, 6) probabilities, groups concatenated in order."""
    by_index = {}
    for idx in series_batches(groups, batch_size):
        p = np.asarray(model(np.stack([emb[groups[i]] for i in idx]), training=False), np.float32)
        by_index.update(zip(idx, p))
    return np.concatenate([by_index[i] for i in range(len(groups))]) if groups else np.zeros((0, 6), np.float32)


@dataclass(frozen=True)
class SeriesFitConfig:
    store: str
    embeddings: str
    out: str
    epochs: int = SERIES_EPOCHS
    batch_size: int = 8
    learning_rate: float = 1e-3
    units: int = 64
    lr_schedule: str = "cosine"  # as the slice models' (ichtrain.schedule)
    init: str = "slice"  # slice: start as the slice run's calibrated head plus a zero context term; scratch

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"Expected --lr-schedule one of {', '.join(LR_SCHEDULES)}. Received: {self.lr_schedule!r}")
        if self.init not in SERIES_INITS:
            raise UsageError(f"Expected --series-init one of {', '.join(SERIES_INITS)}. Received: {self.init!r}")
        for name in ("epochs", "batch_size", "units"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"Expected {name} an integer >= 1. Received: {name}={v!r}")
        if not 0 < self.learning_rate <= MAX_RATE:
            raise UsageError(f"Expected --lr in (0, {MAX_RATE:g}]. Received: lr={self.learning_rate}")


def fit_series(cfg: SeriesFitConfig, verbose: int = 0) -> dict:
    """Train the series model on the train split of the slice run that made the embeddings (its split,
    recorded and checked), calibrate it on val, and save the run like ``fit`` does (a second fit into the same
    run folder is refused while one runs)."""
    with output_lock(cfg.out, "ichtrain fit"):
        return _fit_series(cfg, verbose)


def _fit_series(cfg: SeriesFitConfig, verbose: int) -> dict:
    import keras

    from ichtrain.data import run_stream

    slice_run = _embeddings_group(cfg.embeddings)[1]["run"]  # read through zarr: local or remote
    slice_cfg, _ = load_run(slice_run)
    stream = run_stream(slice_cfg, cfg.store)
    stream.check_split(slice_cfg.get("split"), f"the slice run {slice_run!r}")
    emb, _ = open_embeddings(cfg.embeddings, stream)
    record = dict(asdict(cfg), model="series", slice_run=slice_run, split_by=slice_cfg["split_by"],
                  fractions=slice_cfg["fractions"], seed=slice_cfg["seed"], fold=slice_cfg.get("fold"),
                  split=stream.split_record(),
                  image_size=None, windows=slice_cfg["windows"], size_policy=slice_cfg.get("size_policy", "resize"))
    run = RunDir(cfg.out)
    old = run.read_raw_record()
    if old is not None:
        old = {**OLD_SERIES_DEFAULTS, **old}
        if {k: v for k, v in old.items() if k != "epochs"} != {k: v for k, v in record.items() if k != "epochs"}:
            raise UsageError(f"{cfg.out!r} holds a run with another configuration; choose another --out.")
    first_epoch = run.epochs_done()  # 0 for a run from before checkpoints: it is trained again
    if first_epoch >= cfg.epochs and os.path.isfile(run.model) and Calibration.load(cfg.out) is not None:
        return dict(epochs_done=first_epoch, trained=0, resumed=True)
    # (stopped after its last checkpoint but before model.keras and calibration.json: those are made below)
    run.write_record(record)
    train_groups = series_rows(stream, stream.splits["train"])
    if not train_groups:
        raise UsageError(stream.empty_split_reason("train"))
    labels = stream.labels.astype(np.float32)
    val_groups = series_rows(stream, stream.splits["val"])
    seed = int(slice_cfg["seed"])
    keras.utils.set_random_seed(seed + first_epoch)
    loss = challenge_loss()  # registered before a checkpoint that names it is loaded
    if first_epoch:
        model = keras.models.load_model(run.last)  # optimizer state included: training goes on where it stopped
    else:
        head = calibrated_head(slice_run) if cfg.init == "slice" else None
        model = build_series_model(emb.shape[1], cfg.units, head)
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss)
    batches = series_batches(train_groups, cfg.batch_size)
    log = _log_lines(run.log, first_epoch)
    saved = time.monotonic()
    for epoch in range(first_epoch, cfg.epochs):
        rate = learning_rate_at(cfg, epoch)
        model.optimizer.learning_rate.assign(rate)
        losses = train_series_epoch(model, emb, labels, train_groups, batches, np.random.default_rng([seed, epoch]))
        val_loss = ""
        if val_groups:
            val_loss = f"{weighted_log_loss(labels[np.concatenate(val_groups)], predict_series(model, emb, val_groups)):.6f}"
        log.append(f"{epoch},{np.mean(losses):.6f},{val_loss},{rate:.6g}")
        if verbose:
            print(f"series epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.4f}"
                  + (f", val weighted log loss {val_loss}" if val_loss else ""), flush=True)
        if epoch + 1 == cfg.epochs or time.monotonic() - saved >= CHECKPOINT_SECONDS:
            _series_checkpoint(run, model, log, epoch + 1)
            saved = time.monotonic()
    save_atomic(model, run.model)
    val_y = val_p = None
    if val_groups:
        val_p = predict_series(model, emb, val_groups)
        val_y = stream.labels[np.concatenate(val_groups)].astype(np.float32)
    train = stream.splits["train"]  # the series model saw natural frequencies: no prior shift
    fit_calibration(stream.labels[train], np.ones(train.size), val_y, val_p,
                    val_groups=stream.groups[stream.splits["val"]]).save(cfg.out)
    return dict(epochs_done=max(cfg.epochs, first_epoch), trained=max(0, cfg.epochs - first_epoch),
                resumed=first_epoch > 0)


def _log_lines(path: str, epochs_done: int) -> list[str]:
    """log.csv's header and its first ``epochs_done`` epochs (lines of later, unsaved epochs are dropped)."""
    lines = ["epoch,loss,val_loss,learning_rate"]
    if epochs_done and os.path.isfile(path):
        with open(path) as fh:
            lines += fh.read().splitlines()[1:epochs_done + 1]
    return lines


def _series_checkpoint(run: RunDir, model, log: list[str], epochs_done: int) -> None:
    """The model (with its optimizer), the log and the epoch count, each replaced whole: a run stopped at any
    moment resumes from the last checkpoint."""
    os.makedirs(run.checkpoints, exist_ok=True)
    save_atomic(model, run.last)
    write_atomic(run.log, "\n".join(log) + "\n")
    run.write_state(epochs_done)
