"""``ichtrain`` command line: fit | evaluate | predict. ``main(argv) -> int``; exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ichprep.cliutil import UsageErrorParser, console_entry, run_main
from ichprep.errors import UsageError
from ichtrain.augment import TTA_MODES
from ichtrain.catalog import BACKBONES, MODELS, SERIES_INITS, SERIES_MODEL
from ichtrain.crop import CROPS
from ichtrain.distribute import STRATEGIES
from ichtrain.graphwindows import WINDOWS_ON
from ichtrain.schedule import LR_SCHEDULES
from ichtrain.splits import SPLIT_BY, SPLIT_NAMES


def _fractions(text: str) -> tuple:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"Expected --split like 0.8,0.1,0.1. Received: {text!r}") from None
    if len(parts) != 3:
        raise UsageError(f"Expected three fractions for train,val,test. Received: {text!r}")
    return parts


def _parser() -> argparse.ArgumentParser:
    p = UsageErrorParser(prog="ichtrain", description="Train and evaluate the reference study's models on an ichprep store, "
                                              "and predict a submission CSV from DICOMs.")
    p.add_argument("--debug", action="store_true", help="also print the traceback of an error (or ICHPREP_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageErrorParser)
    sub.required = True
    f = sub.add_parser("fit", help="train a model on a store", description=(
        "Train on the store's train split (by patient), weighted by type; validate on the val split each epoch. "
        "Writes RUN_DIR/config.json, checkpoints/ (every epoch), log.csv, tensorboard/ and model.keras. "
        "Rerunning with the same RUN_DIR resumes after the last finished epoch."))
    _add_fit_arguments(f)
    v = sub.add_parser("cv", help="patient-grouped K-fold cross-validation of one fit configuration",
                       description="Fit the configuration once per fold (fold k is the test split, fold k+1 the val "
                                   "split for calibration, the rest train; patients are dealt round-robin by "
                                   "their hash), evaluate each on its test fold, and write OUT/cv.json and "
                                   "OUT/cv.html: per metric mean and sd over folds and the pooled out-of-fold "
                                   "metrics. Folds go to OUT/fold-K; rerunning resumes. --split is not used.")
    v.add_argument("--folds", type=int, default=5, help="number of folds (>= 3; default 5)")
    _add_fit_arguments(v)
    m = sub.add_parser("embed", help="per-slice features of a trained slice model, for --model series",
                       description="Write each usable slice's features (the layer before the head of RUN's slice "
                                   "model) as float16 (N, D) to a Zarr group keyed to the store's rows and "
                                   "sop_uid. Batched, with a progress bar, resumable: rerun the same command "
                                   "after an interruption. The store is never modified.")
    m.add_argument("run")
    m.add_argument("store", nargs="?", help="default: the store RUN was trained on")
    m.add_argument("--out", required=True, help="embeddings folder (EMB.zarr)")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--quiet", action="store_true")
    e = sub.add_parser("evaluate", help="metrics and plots for a run", description=(
        "Per-label sensitivity, specificity, fall-out and miss rate at 0.5 and across thresholds, ROC-AUC, and "
        "the challenge's weighted log loss; writes RUN_DIR/eval-SPLIT.json and plots/SPLIT-*.png."))
    e.add_argument("run")
    e.add_argument("--split", default="val", choices=SPLIT_NAMES + ("new",),
                   help="the run's split (read at the store generation it trained on), or new: the labelled slices "
                        "a grown store gained since (ichprep build --append), of patients outside the run's train "
                        "and val splits (default val)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--json", action="store_true", help="print the metrics JSON")
    k = sub.add_parser("stack", help="a series model over a cv folder's out-of-fold predictions, judged on them",
                       description="Train a bidirectional GRU that reads each series' out-of-fold logits (and their "
                                   "differences to the neighbouring slices) in z order, starting as the cv folder's "
                                   "calibrated ensemble. It is cross-fitted over the cv folder's own folds and "
                                   "scored on the pooled out-of-fold predictions against the cv folder's, with a "
                                   "paired bootstrap over patients; a final stacker trained on every fold is saved "
                                   "for 'ichtrain predict STACK_DIR DICOM_DIR'. Writes STACK_DIR/stack.json, "
                                   "oof.npz and model.keras; 'evaluate' and 'compare' take the folder as they take "
                                   "a cv folder. Takes seconds to minutes: rerunning replaces it.")
    k.add_argument("cv_dir", metavar="CV_DIR")
    k.add_argument("--out", metavar="STACK_DIR", help="default CV_DIR/stack")
    k.add_argument("--epochs", type=int, default=30, help="per stacker (default 30, cosine learning rate)")
    k.add_argument("--units", type=int, default=16, help="GRU units (default 16)")
    k.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--bootstrap", type=int, default=1000, help="patient resamples for the intervals (default 1000)")
    k.add_argument("--json", action="store_true", help="print stack.json")
    k.add_argument("--quiet", action="store_true")
    c = sub.add_parser("compare", help="runs side by side on the same held-out patients, with intervals",
                       description="Evaluate every RUN on the same split (refused if their splits differ) and write "
                                   "one table and one HTML page: weighted log loss, its difference to the first run, "
                                   "ROC-AUC per label, sensitivity and specificity of 'any' at 0.5, each with a 95% "
                                   "bootstrap interval over patients (the same resamples for every run). Given "
                                   "'ichtrain cv' folders instead of runs, compares their pooled out-of-fold "
                                   "predictions (every patient once; --split is not used): on small cohorts the "
                                   "figures to trust. Stack folders ('ichtrain stack') compare with cv folders of "
                                   "the same store.")
    c.add_argument("runs", nargs="+", metavar="RUN|CV_DIR|STACK_DIR")
    c.add_argument("--split", default="test", choices=SPLIT_NAMES)
    c.add_argument("--bootstrap", type=int, default=1000, help="patient resamples (default 1000)")
    c.add_argument("--out", help="folder for compare-SPLIT.json/.html (default: the first run)")
    c.add_argument("--json", action="store_true", help="print the comparison JSON")
    _add_use_commands(sub)
    return p


def _add_use_commands(sub) -> None:
    """demo, predict, explain and export: what uses a trained run."""
    d = sub.add_parser("demo", help="the whole pipeline on synthetic data: synth, build, fit, evaluate, predict",
                       description="Write a synthetic corpus, build a brain-window store (ichprep), train the "
                                   "baseline CNN for a few epochs, evaluate it on the held-out test patients "
                                   "(metrics and plots), and predict a submission CSV for a second, unseen "
                                   "synthetic corpus. Everything goes under OUT.")
    d.add_argument("out", nargs="?", default="ichtrain-demo", help="folder for everything (default ichtrain-demo)")
    d.add_argument("--studies", type=int, default=20)
    d.add_argument("--slices", type=int, default=32)
    d.add_argument("--epochs", type=int, default=6)
    d.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    r = sub.add_parser("predict", help="DICOM folder -> submission CSV", description=(
        "Preprocess DICOM_DIR with the very same ichprep build the training store used, run the model, and "
        "write ID,Label rows ID_<sop>_<subtype> for all six labels of every slice that decoded. Files that "
        "could not be read are listed on stderr and counted."))
    r.add_argument("run")
    r.add_argument("dicom_dir")
    r.add_argument("--out", required=True, help="submission CSV path")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--batch-size", type=int, default=32)
    g = sub.add_parser("explain", help="Grad-CAM of one slice: where the model looks for a label (PNG)",
                       description="Draw one slice of RUN's store as the model sees it, beside the Grad-CAM heat map "
                                   "of --label (the last convolutional feature map's channels weighted by the "
                                   "label's gradient), with the run's calibrated probabilities in the title. "
                                   "One-slice convolutional models only (baseline, cnn, backbone).")
    g.add_argument("run")
    g.add_argument("--sop", required=True, help="SOPInstanceUID of a slice in the run's store, e.g. ID_000000e27")
    g.add_argument("--label", default="any", help="epidural, intraparenchymal, intraventricular, subarachnoid, "
                                                  "subdural or any (default)")
    g.add_argument("--out", required=True, help="PNG path")
    x = sub.add_parser("export", help="a standalone TensorFlow SavedModel: int16 HU in, calibrated probabilities out",
                       description="Write RUN as a SavedModel whose function 'serve' takes a batch of int16 Hounsfield-"
                                   "unit slices (b, 512, 512) -- as an hu store holds them -- and returns (b, 6) "
                                   "calibrated probabilities: the run's windows, resize, model, test-time flip and "
                                   "calibration inside; loadable with TensorFlow alone (tf.saved_model.load(DIR)"
                                   ".serve(hu)). Runs with default windows, neighbours, head crops or the series "
                                   "model are refused.")
    x.add_argument("run")
    x.add_argument("--out", required=True, help="export folder (must not exist, unless --overwrite)")
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out (nothing else)")


def _add_fit_arguments(f: argparse.ArgumentParser) -> None:
    """The options of one training configuration (fit, and each fold of cv)."""
    f.add_argument("store")
    f.add_argument("--out", required=True, help="run folder")
    f.add_argument("--model", default="baseline",
                   choices=(*MODELS, SERIES_MODEL),
                   help="cnn: the report's listing (1,527,130 parameters at 512); cnn-described: section 4.2 "
                        "(264,330); rnn: shared window encoder + GRU (needs an rnn store); baseline: small and "
                        "fast (default); backbone: a Keras application (--backbone, --weights); series: a "
                        "bidirectional GRU over each series' slice embeddings (--embeddings, from 'ichtrain embed')")
    f.add_argument("--embeddings", metavar="EMB.zarr", help="--model series: the slice embeddings to read")
    f.add_argument("--series-init", choices=SERIES_INITS,
                   help="--model series: slice (default) starts as the slice run's calibrated head plus a context "
                        "term whose weights start at zero, so training adds only what the series tells; scratch "
                        "learns its head from the embeddings afresh")
    f.add_argument("--backbone", default="efficientnetb0", choices=tuple(BACKBONES),
                   help="the Keras application of --model backbone (default efficientnetb0); a one-window store "
                        "is repeated to three channels, other counts mixed to three by a learned 1x1 convolution")
    f.add_argument("--weights", default="imagenet", metavar="imagenet|none|PATH",
                   help="initial backbone weights: imagenet (downloaded by Keras once, then cached), none "
                        "(random), or a weights file such as Keras' *_notop.h5 (default imagenet)")
    f.add_argument("--epochs", type=int, help="default 10 (series: 60; it trains in under a minute)")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--image-size", type=int, help="input size (on-the-fly downscale); default 512 for the "
                                                  "report's CNNs, 128 for baseline, 64 for rnn, 224 for backbone")
    f.add_argument("--l2", type=float, default=1e-4, help="L2 on kernels and biases (report: 0.01; default 1e-4)")
    f.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    f.add_argument("--lr-schedule", default="cosine", choices=LR_SCHEDULES,
                   help="cosine (default): --lr at the first epoch, annealed to 5%% of it at the last, so the "
                        "model a run keeps (its last epoch) has settled; constant: --lr throughout")
    f.add_argument("--bn-momentum", type=float, default=0.99,
                   help="BatchNorm momentum of the report's CNNs (Keras default 0.99, as in the listing); 0.9 "
                        "suits short runs (baseline and rnn always use 0.9)")
    f.add_argument("--alpha", type=float, default=0.5,
                   help="per-type sampling exponent: weight = count**-alpha (0 natural, 1 balanced; default 0.5)")
    f.add_argument("--epoch-size", type=int, help="slices drawn per epoch (default: the train split's size)")
    f.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)")
    f.add_argument("--split-by", default="patient", choices=SPLIT_BY)
    f.add_argument("--seed", type=int, default=0, help="places patients in splits (hash buckets) and seeds sampling")
    _add_input_arguments(f)


def _add_input_arguments(f: argparse.ArgumentParser) -> None:
    """How a run reads its store (windows, neighbours, crops, augmentation, TTA), its start and its devices."""
    f.add_argument("--windows", metavar="SPEC",
                   help="an hu store only (ichprep build --preset hu): the windows applied as slices are read, "
                        "as ichprep build takes them: cnn (the full range), rnn (the ten Table 2.1 windows) or a list "
                        "such as 'brain:40/80,subdural:80/200,bone:600/2800'. Slice models take C windows as C "
                        "channels, rnn as a sequence. Default: rnn for --model rnn, else cnn")
    f.add_argument("--windows-on", default="auto", choices=WINDOWS_ON,
                   help="an hu store only: where its windows are computed. reader: on the host, in the stream's "
                        "reader threads; model: the stored int16 HU go to the device (2 bytes a pixel, whatever the "
                        "windows) and the model's first layer windows them, same values; auto (default): model "
                        "when a GPU trains, else reader. Evaluation and prediction always pick auto")
    f.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="2.5D context for the slice models: also feed slices z-K .. z+K of the series (the series' "
                        "end slice repeats at its ends; default 0). baseline reads each slice with one shared "
                        "encoder and its head sees them side by side; the other slice models take them as channels")
    f.add_argument("--recipe", choices=tuple(RECIPES),
                   help="a preset of the options below, from what measurably helped on held-out patients "
                        "(docs/training.md): winners = --tta flip --crop head, and on an hu store the windows "
                        "brain:40/80,subdural:80/200,bone:600/2800 as channels (--augment light did not help at 10 "
                        "epochs and is not in it). Options given explicitly win")
    f.add_argument("--augment", default=None, metavar="none|light|strong|SPEC",
                   help="training-time augmentation of each batch (never of evaluation): light = flip=0.5, "
                        "rotate=8, scale=0.08, shift=0.04, contrast=0.05, brightness=0.03; strong adds noise=0.02 and "
                        "doubles the rest; or a list such as 'flip=0.5,rotate=10,noise=0.01' (parts: flip "
                        "probability, rotate degrees, scale and shift fractions, contrast and brightness jitter of "
                        "the window, noise sd). Seeded by --seed; recorded in the run (default none)")
    f.add_argument("--init", metavar="RUN|MODEL.keras",
                   help="fine-tune: start from another run's weights (its model.keras, or its last checkpoint) or a "
                        ".keras file, e.g. a model trained on synthetic data or at another site; the model must be the "
                        "same (--model, --image-size, windows, --neighbours), or fit refuses before training")
    f.add_argument("--freeze-epochs", type=int, default=0, metavar="N",
                   help="with --init: train only the head (the last layer) for the first N epochs, then everything "
                        "(with a fresh optimizer; default 0)")
    f.add_argument("--crop", default=None, choices=CROPS,
                   help="head: every reader of the run (training, calibration, evaluate, predict) crops each slice to a "
                        "square around its head (the largest tissue region, 8%% margin) before the resize, so the "
                        "pixels hold brain, not air and headrest (default none)")
    f.add_argument("--tta", default=None, choices=TTA_MODES,
                   help="test-time augmentation: flip also predicts each slice flipped left-right and averages the "
                        "two in logit space; the run's calibration, evaluate and predict all use it (default none)")
    f.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute strategy. default: one device. mirrored: every local GPU (synchronous). "
                        "multi-worker: one process per machine, each started with the same arguments and its own "
                        "TF_CONFIG (cluster and task index); --out must be a folder every worker sees; each "
                        "worker reads its own share of every epoch. --batch-size is the global batch.")
    f.add_argument("--quiet", action="store_true")


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error becomes one line on stderr and an exit code (``ichprep.cliutil``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_main("ichtrain", argv, _dispatch)


def _dispatch(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command != "demo":  # the demo's first steps are ichprep's; TensorFlow comes with its fit
        from ichtrain._tf import import_tensorflow

        import_tensorflow()
    commands = {"fit": _fit, "cv": _cv, "embed": _embed, "evaluate": _evaluate, "compare": _compare, "predict": _predict,
                "stack": _stack, "export": _export, "explain": _explain, "demo": _demo}
    return commands[args.command](args)


def console_main() -> None:
    console_entry(main)


def _fit(args) -> int:
    from ichtrain.fit import fit

    if args.model == "series":
        return _fit_series(args)
    cfg = _fit_config(args)
    res = fit(cfg, verbose=0 if args.quiet else 2)
    from ichtrain.run import RunDir

    run = RunDir(args.out)
    print(f"{args.out}: {_trained(res)} ({res['epochs_done']} done{', resumed' if res['resumed'] else ''}); "
          f"model {run.model}, log {run.log}")
    return 0


def _trained(res: dict) -> str:
    return "nothing to do: already trained" if res["trained"] == 0 else f"trained {res['trained']} epochs"


def _fit_series(args) -> int:
    from ichtrain.series import SERIES_EPOCHS, SeriesFitConfig, fit_series

    if not args.embeddings:
        raise UsageError("--model series reads slice embeddings: pass --embeddings EMB.zarr (made by "
                         "'ichtrain embed SLICE_RUN --out EMB.zarr').")
    for flag in ("augment", "tta", "recipe", "crop", "init", "freeze_epochs"):
        if getattr(args, flag):
            name = flag.replace("_", "-")
            raise UsageError(f"--{name} is for slice models; --model series reads slice embeddings. Received: "
                             f"--{name} {getattr(args, flag)}")
    cfg = SeriesFitConfig(store=args.store, embeddings=args.embeddings, out=args.out,
                          epochs=SERIES_EPOCHS if args.epochs is None else args.epochs,
                          batch_size=min(args.batch_size, 8), learning_rate=args.lr, lr_schedule=args.lr_schedule,
                          init=args.series_init or "slice")
    res = fit_series(cfg, verbose=0 if args.quiet else 2)
    print(f"{args.out}: {_trained(res)} ({res['epochs_done']} done{', resumed' if res['resumed'] else ''}); series model {os.path.join(args.out, 'model.keras')} on the split of "
          f"the slice run that made {args.embeddings}")
    return 0


def _embed(args) -> int:
    from ichprep.progress import ProgressBar
    from ichtrain.series import embed

    bar = ProgressBar(None if args.quiet else sys.stderr, "embed", 0, unit="slices")
    res = embed(args.run, args.out, store=args.store, batch_size=args.batch_size, progress=bar)
    bar.close()
    print(f"{res['out']}: {res['embedded']} of {res['rows']} rows embedded ({res['dim']} features, float16; "
          f"{res['blocks_run']} blocks run)")
    return 0


def _stack(args) -> int:
    from ichprep.progress import ProgressBar
    from ichtrain.stack import StackConfig, stack

    cfg = StackConfig(cv_dir=args.cv_dir, out=args.out, epochs=args.epochs, units=args.units, learning_rate=args.lr,
                      seed=args.seed, bootstrap=args.bootstrap)
    bar = ProgressBar(None if args.quiet else sys.stderr, "stack", 0, unit="stackers")
    res = stack(cfg, progress=bar)
    bar.close()
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    from ichtrain.compare import metric_text

    print(f"{res['slices']} out-of-fold slices of {res['patients']} patients in {res['series']} series, "
          f"{res['folds']} folds; 95% intervals over {cfg.bootstrap} patient resamples")
    for name, row in (("cv ensemble (pooled Platt)", res["ensemble"]), ("stacked over series", res["stacked"])):
        print(f"  {name:<27} weighted log loss {metric_text(row['weighted_log_loss'])}, "
              f"AUC(any) {metric_text(row['auc_any'])}")
    print(f"  stacked - ensemble: {metric_text(res['stacked']['weighted_log_loss_minus_first'])} "
          f"(constant prior {res['constant_prior']:.4f})")
    print(f"  stack {cfg.folder}: model.keras (for 'ichtrain predict'), {res['json']}")
    return 0


def _compare(args) -> int:
    from ichtrain.compare import COLUMNS, metric_text, compare

    res = compare(args.runs, args.split, args.bootstrap, args.out)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    where = "out-of-fold" if res["split"] == "oof" else args.split
    print(f"{res['slices']} {where} slices of {res['patients']} patients; 95% intervals over "
          f"{res['bootstrap']} patient resamples")
    for r in res["runs"]:
        print(f"  {r['run']} ({r['model']})")
        for key, title in COLUMNS:
            print(f"      {title:<22} {metric_text(r[key])}")
    print(f"  table {res['json']}; page {res['html']}")
    return 0


# Presets of fit options (``--recipe``): what each part adds is measured in docs/training.md.
# winners: --tta flip and --crop head lowered the held-out loss on 3 of 3 and 2 of 3 split seeds; --augment light
# did not at 10 epochs (mean +0.003), so it is left out (benchmarks/recipe.py, docs/training.md).
RECIPES = {"winners": dict(tta="flip", crop="head", hu_windows="brain:40/80,subdural:80/200,bone:600/2800")}


def _recipe_options(args) -> dict:
    """augment, tta and windows after ``--recipe``: explicit options win, then the recipe, then the defaults."""
    recipe = RECIPES.get(args.recipe or "", {})
    windows = args.windows
    if windows is None and "hu_windows" in recipe and args.model != "rnn":
        from ichtrain.fit import is_hu_store

        try:
            windows = recipe["hu_windows"] if is_hu_store(args.store) else None
        except Exception:  # noqa: BLE001 -- an unreadable store is refused, with its reason, by fit itself
            windows = None
    return dict(augment=args.augment or recipe.get("augment", "none"), tta=args.tta or recipe.get("tta", "none"),
                crop=args.crop or recipe.get("crop", "none"), windows=windows, recipe=args.recipe, init=args.init,
                freeze_epochs=args.freeze_epochs)


def _fit_config(args, **overrides):
    from ichtrain.fit import FitConfig

    if args.embeddings or args.series_init:
        raise UsageError(f"--{'embeddings' if args.embeddings else 'series-init'} is read by --model series only.")
    overrides = dict(_recipe_options(args), **overrides)
    return FitConfig(store=args.store, out=args.out, model=args.model, epochs=10 if args.epochs is None else args.epochs,
                     batch_size=args.batch_size, image_size=args.image_size, l2=args.l2, learning_rate=args.lr,
                     lr_schedule=args.lr_schedule, alpha=args.alpha, epoch_size=args.epoch_size, split_by=args.split_by,
                     fractions=_fractions(args.split), seed=args.seed, bn_momentum=args.bn_momentum,
                     strategy=args.strategy, neighbours=args.neighbours, backbone=args.backbone,
                     windows_on=args.windows_on, weights=None if args.weights.lower() == "none" else args.weights,
                     **overrides)


def _cv(args) -> int:
    from ichtrain.cv import cross_validate

    if args.model == "series":
        raise UsageError("cv cross-validates slice models; --model series trains on a slice run's embeddings.")
    res = cross_validate(_fit_config(args), args.folds, verbose=0 if args.quiet else 2)
    s = res["summary"]
    print(f"{args.out}: {res['folds']} folds of {res['model']}, {res['slices']} out-of-fold slices")
    for key in ("weighted_log_loss", "constant_prior", "auc_any"):
        m = s[key]
        mean = "n/a" if m["mean"] is None else f"{m['mean']:.4f}"
        sd = "" if m["sd"] is None else f" ± {m['sd']:.4f}"
        pooled = res["pooled"].get(key)
        print(f"  {key:<18} {mean}{sd} over folds" + (f"; pooled {pooled:.4f}" if pooled is not None else ""))
    print(f"  table {res['json']}; page {res['html']}")
    return 0


def _evaluate(args) -> int:
    from ichtrain.cv import evaluate_cv, is_cv_folder
    from ichtrain.evaluate import evaluate

    from ichtrain.stack import evaluate_stack, is_stack_folder

    stacked = is_stack_folder(args.run)
    cv = stacked or is_cv_folder(args.run)
    if cv and args.split == "new":
        raise UsageError("--split new evaluates one run on the slices appended since it trained; a cv folder's "
                         "folds cover every patient: evaluate one of its fold runs (CV_DIR/fold-K)")
    if stacked:
        res = evaluate_stack(args.run)
    else:
        res = evaluate_cv(args.run) if cv else evaluate(args.run, args.split, args.batch_size)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "plots"}, indent=2))
        return 0
    c = res["calibration"]
    if cv:
        how = ("stacked over series, cross-fitted over the folds" if stacked
               else "each calibrated on the other folds' out-of-fold predictions")
        print(f"{args.run}: pooled out-of-fold predictions of {res['folds']} folds ({res['slices']} slices, "
              f"{res['patients']} patients), {how}: weighted "
              f"log loss {res['weighted_log_loss']:.4f} (constant prior {c['constant_prior_weighted_log_loss']:.4f})")
    else:
        kind = "calibrated" if res["calibrated"] else "uncalibrated: the run has no calibration.json"
        print(f"{args.run} on {args.split} ({res['slices']} slices): weighted log loss {res['weighted_log_loss']:.4f} "
              f"({kind}; constant prior {c['constant_prior_weighted_log_loss']:.4f}, raw model "
              f"{c['raw_weighted_log_loss']:.4f})")
    print(f"  {'label':<17} {'AUC':>6} {'sens':>6} {'spec':>6} {'fall-out':>8} {'miss':>6}  {'ECE':>6} "
          f"{'mean p':>6} {'rate':>6}  (rates at 0.5)")
    for name, m in res["labels"].items():
        a, cl = m["at_0_5"], c["labels"][name]
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
        print(f"  {name:<17} {fmt(m['roc_auc'])} {fmt(a['sensitivity'])} {fmt(a['specificity'])} "
              f"  {fmt(a['fall_out'])} {fmt(a['miss_rate'])}  {fmt(cl['ece'])} {fmt(cl['mean_prob'])} "
              f"{fmt(cl['rate'])}")
    print(f"  metrics {res['json']}" + ("" if cv else f"; plots {', '.join(res['plots'])}; report {res['report']}"))
    return 0


def _predict(args) -> int:
    from ichtrain.predict import predict

    res = predict(args.run, args.dicom_dir, args.out, workers=args.workers, batch_size=args.batch_size)
    print(f"{res['out']}: {res['slices']} slices predicted ({res['slices'] * 6} rows), {res['rejected']} files "
          "could not be read")
    return 0


def _explain(args) -> int:
    from ichtrain.saliency import explain_slice

    res = explain_slice(args.run, args.sop, args.label, args.out)
    print(f"{res['out']}: row {res['row']} ({res['sop']}), {res['label']} {res['probability']:.3f} (calibrated)")
    return 0


def _export(args) -> int:
    from ichtrain.export import export

    res = export(args.run, args.out, overwrite=args.overwrite)
    print(f"{res['out']}: SavedModel of {res['model']} ({res['input']} -> {len(res['output'])} calibrated "
          f"probabilities; windows {', '.join(w['name'] for w in res['windows'])}, {res['image_size']} px, TTA "
          f"{res['tta']}); load with tf.saved_model.load('{res['out']}').serve(hu)")
    return 0


# The demo's patient keys (and so its splits) are the same on every machine, not keyed by the user's salt.
DEMO_SALT = "ichtrain-demo"


def _demo(args) -> int:
    from ichprep.cli import main as ichprep_main

    out = args.out
    data, unseen = os.path.join(out, "data"), os.path.join(out, "unseen")
    store, run = os.path.join(out, "brain.zarr"), os.path.join(out, "run")
    submission = os.path.join(out, "submission.csv")
    steps = [
        ("ichprep", ["synth", data, "--studies", str(args.studies), "--slices", str(args.slices), "--seed", "0"]),
        ("ichprep", ["synth", unseen, "--studies", "2", "--slices", str(args.slices), "--seed", "1"]),
        ("ichprep", ["build", os.path.join(data, "dicom"), "--labels", os.path.join(data, "labels.csv"), "--out",
                     store, "--windows", "brain:40/80", "--workers", str(args.workers), "--salt", DEMO_SALT]),
        ("ichprep", ["info", store]),
        ("ichprep", ["verify", store, "--source", os.path.join(data, "dicom"), "--sample", "8", "--quiet"]),
        ("ichprep", ["stats", store, "--plot", os.path.join(out, "stats.png")]),
        ("ichprep", ["preview", store, "--type", "TYPE", "--series", "--out", os.path.join(out, "preview.png")]),
        ("ichtrain", ["fit", store, "--out", run, "--model", "baseline", "--image-size", "128",
                      "--epochs", str(args.epochs), "--split", "0.6,0.2,0.2", "--quiet"]),
        ("ichtrain", ["evaluate", run, "--split", "test"]),
        ("ichtrain", ["predict", run, os.path.join(unseen, "dicom"), "--out", submission]),
    ]
    for tool, argv in steps:
        if argv[0] == "synth" and os.path.isdir(os.path.join(argv[1], "dicom")):
            print(f"demo: reusing {argv[1]} (synthetic corpora are deterministic)")
            continue
        if "TYPE" in argv:  # the series of the corpus's most frequent bleed
            argv = [str(_most_frequent_bleed_type(store)) if a == "TYPE" else a for a in argv]
        print(f"demo: {tool} {' '.join(argv)}", flush=True)
        rc = (ichprep_main if tool == "ichprep" else main)(argv)
        if rc != 0:
            return rc
    print(f"demo: done. Store {store} (stats.png, preview.png beside it); run {run} (model.keras, log.csv, "
          f"eval-test.json, plots/*.png, report.html); submission {submission}")
    return 0


def _most_frequent_bleed_type(url: str) -> int:
    """The Table 3.1 type (1..31) with the most slices in the store; 32 (no hemorrhage) if it has none."""
    import numpy as np

    from ichprep import store as st

    types = st.column(st.open_store(url)[0], "type")
    counts = np.bincount(types, minlength=33)[1:32]
    return int(np.argmax(counts)) + 1 if counts.any() else 32


if __name__ == "__main__":
    console_main()
