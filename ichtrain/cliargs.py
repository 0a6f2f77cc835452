"""The ``ichtrain`` command line's arguments: every subcommand, flag, choice and help text
(:mod:`ichtrain.cli` runs them)."""

from __future__ import annotations

import argparse
import os

from ichprep.cliutil import UsageErrorParser
from ichtrain.testtime import TTA_MODES
from ichtrain.catalog import BACKBONES, MODELS, SERIES_INITS, SERIES_MODEL
from ichtrain.crop import CROPS
from ichtrain.distribute import STRATEGIES
from ichtrain.graphwindows import WINDOWS_ON
from ichtrain.schedule import LR_SCHEDULES
from ichtrain.splits import SPLIT_BY, SPLIT_NAMES

__all__ = ["parser", "RECIPES"]

# Presets of fit options (``--recipe``): what each part adds is measured in docs/training.md.
# winners: --crop head and three windows lowered the held-out loss; on the same weights the flip with a centre
# crop (flip+crop) was below no views in 7 of 8 split-seed and pooled out-of-fold comparisons (one by 0.0001) and
# below the flip alone in 7 of 8, which was below no views in 2; --augment light did not help at 10 epochs
# (mean +0.003), so it is left out (benchmarks/recipe.py, docs/training.md).
RECIPES = {"winners": dict(tta="flip+crop", crop="head", hu_windows="brain:40/80,subdural:80/200,bone:600/2800")}


def parser() -> argparse.ArgumentParser:
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
    e.add_argument("run", metavar="RUN|CV_DIR|STACK_DIR",
                   help="a run; a cv folder (its pooled out-of-fold predictions, calibrated cross-fitted); or a stack "
                        "folder ('ichtrain stack': its cross-fitted stacked predictions)")
    e.add_argument("--split", default="val", choices=SPLIT_NAMES + ("new",),
                   help="the run's split (read at the store generation it trained on), or new: the labelled slices "
                        "a grown store gained since (ichprep build --append), of patients outside the run's train "
                        "and val splits (default val)")
    e.add_argument("--batch-size", type=int, default=32)
    _add_tta_override(e)
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
    _add_tta_override(c)
    c.add_argument("--json", action="store_true", help="print the comparison JSON")
    _add_use_commands(sub)
    return p


def _add_tta_override(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", default=None, choices=TTA_MODES,
                   help="test-time views other than the run's own (fit --tta): flip, flip+crop (a centre crop of "
                        "0.85 and its mirror too) or none. The run's calibration is refitted on its val split with "
                        "them (a cv folder's on its folds' test patients, predicted anew); evaluate and compare name "
                        "their files SPLIT-tta-MODE. Default: the run's own")


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
    r.add_argument("run", metavar="RUN|CV_DIR|STACK_DIR",
                   help="a run; a cv folder (its fold models averaged in logit space, then its pooled calibration); "
                        "or a stack folder (that average read along each series by the stacker)")
    r.add_argument("dicom_dir")
    r.add_argument("--out", required=True, help="submission CSV path")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--batch-size", type=int, default=32)
    _add_tta_override(r)
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
                        "(docs/training.md): winners = --tta flip+crop --crop head, and on an hu store the windows "
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
                   help="test-time augmentation: flip also predicts each slice flipped left-right, flip+crop also a "
                        "centre crop of 0.85 of each side and its mirror, resized back; the views are averaged in logit "
                        "space, and the run's calibration, evaluate and predict all use them (default none)")
    f.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute strategy. default: one device. mirrored: every local GPU (synchronous). "
                        "multi-worker: one process per machine, each started with the same arguments and its own "
                        "TF_CONFIG (cluster and task index); --out must be a folder every worker sees; each "
                        "worker reads its own share of every epoch. --batch-size is the global batch.")
    f.add_argument("--quiet", action="store_true")
