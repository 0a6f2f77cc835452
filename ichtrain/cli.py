"""``ichtrain`` command line: fit | evaluate | predict. ``main(argv) -> int``; exit 2 on bad input."""

from __future__ import annotations

import json
import os
import sys

from ichprep.cliutil import console_entry, run_main
from ichprep.errors import UsageError
from ichtrain.cliargs import RECIPES, parser


def _fractions(text: str) -> tuple:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"Expected --split like 0.8,0.1,0.1. Received: {text!r}") from None
    if len(parts) != 3:
        raise UsageError(f"Expected three fractions for train,val,test. Received: {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error becomes one line on stderr and an exit code (``ichprep.cliutil``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_main("ichtrain", argv, _dispatch)


def _dispatch(argv: list[str]) -> int:
    args = parser().parse_args(argv)
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

    res = compare(args.runs, args.split, args.bootstrap, args.out, tta=args.tta)
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
        if args.tta is not None:
            raise UsageError("--tta judges runs and cv folders with other test-time views; a stack folder's stacker "
                             f"learned from its cv folder's own. Received: tta={args.tta!r} with {args.run!r}")
        res = evaluate_stack(args.run)
    else:
        res = evaluate_cv(args.run, args.tta) if cv else evaluate(args.run, args.split, args.batch_size, args.tta)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "plots"}, indent=2))
        return 0
    c = res["calibration"]
    if cv:
        how = ("stacked over series, cross-fitted over the folds" if stacked
               else "each calibrated on the other folds' out-of-fold predictions")
        print(f"{args.run}: pooled out-of-fold predictions of {res['folds']} folds ({res['slices']} slices, "
              f"{res['patients']} patients" + (f", test-time views {res['tta']}" if res.get("tta") else "")
              + f"), {how}: weighted "
              f"log loss {res['weighted_log_loss']:.4f} (constant prior {c['constant_prior_weighted_log_loss']:.4f})")
    else:
        kind = "calibrated" if res["calibrated"] else "uncalibrated: the run has no calibration.json"
        kind += f", test-time views {res['tta']}"
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

    res = predict(args.run, args.dicom_dir, args.out, workers=args.workers, batch_size=args.batch_size, tta=args.tta)
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
