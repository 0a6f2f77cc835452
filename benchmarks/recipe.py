"""Which parts of the winners' recipe pay, on the same held-out patients: augmentation, test-time views, head crops.

On an hu store (so that windows are a choice too), for each split seed, ``ichtrain fit`` the baseline plain
(brain window) and with each variant of ``--set`` (parts: ``--augment light``, ``--tta flip``, ``--crop head``,
all three; windows: tta+crop, and tta+crop on the brain, subdural and bone windows), then ``ichtrain compare`` them on the test patients: weighted log loss of the calibrated outputs
and its paired difference to the plain run with a 95% bootstrap interval over patients, and AUC(any). A part
earns its place in ``--recipe`` defaults only where its difference is below zero across seeds.

``--set tta`` fits each variant once (plain; three windows with head crops) and judges the same weights with each
test-time view set (``ichtrain evaluate --tta none|flip|flip+crop``, each calibrated with its views): the views'
own effect, free of the training noise between two fits.

    python benchmarks/recipe.py [--set parts|windows|tta] [--studies 60] [--seeds 0,1,2] [--epochs 10] [--cv K]
                                [--json out.json]

About 2 minutes per fit on 2 CPU cores at the defaults (5 fits per seed with --set parts, 3 with windows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BRAIN = ["--windows", "brain:40/80"]
THREE = ["--windows", "brain:40/80,subdural:80/200,bone:600/2800"]
# Each variant's options; the store is an hu store, so every variant names its windows.
VARIANT_SETS = {
    "parts": {"plain": BRAIN, "augment": BRAIN + ["--augment", "light"], "tta": BRAIN + ["--tta", "flip"],
              "crop": BRAIN + ["--crop", "head"], "all": BRAIN + ["--augment", "light", "--tta", "flip", "--crop", "head"]},
    "windows": {"plain": BRAIN, "tta+crop": BRAIN + ["--tta", "flip", "--crop", "head"],
                "tta+crop+3windows": THREE + ["--tta", "flip", "--crop", "head"]},
    "tta": {"plain": BRAIN, "3windows+crop": THREE + ["--crop", "head"]},
}
TTA_JUDGED = ("none", "flip", "flip+crop")  # --set tta: each fit judged with each of these views


def _run(main, argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise SystemExit(f"{' '.join(argv[:2])} failed with exit {code}")


def measure(work: str, args) -> dict:
    from ichprep.cli import main as ichprep
    from ichtrain.cli import main as ichtrain
    from ichtrain.compare import compare

    src, store = os.path.join(work, "dicom"), os.path.join(work, "store.zarr")
    if not os.path.isdir(store):
        _run(ichprep, ["synth", src, "--studies", str(args.studies), "--slices", str(args.slices), "--seed",
                       str(args.corpus_seed), "--quiet"])
        _run(ichprep, ["build", os.path.join(src, "dicom"), "--out", store, "--labels", os.path.join(src, "labels.csv"),
                       "--preset", "hu", "--salt", args.salt, "--quiet"])
    common = ["--epochs", str(args.epochs), "--image-size", str(args.image_size), "--quiet"]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        kind = f"cv{args.cv}" if args.cv else "seed"
        runs = {name: os.path.join(work, f"{kind}{seed}-{name}") for name in args.variants}
        for name, extra in args.variants.items():
            how = ["cv", store, "--folds", str(args.cv)] if args.cv else ["fit", store, "--split", args.split]
            _run(ichtrain, [*how, "--out", runs[name], "--seed", str(seed), *common, *extra])
        judged = [(name, None) for name in runs] if args.set != "tta" else \
            [(f"{name} tta={mode}", mode) for name in runs for mode in TTA_JUDGED]
        if args.set == "tta":
            res = _judge_views(runs, bootstrap=1000, cv=bool(args.cv))
        else:
            res = compare(list(runs.values()), "test")
        row = dict(seed=seed, patients=res["patients"], slices=res["slices"], seconds=round(time.perf_counter() - t0),
                   variants=[name for name, _ in judged])
        for (name, _), r in zip(judged, res["runs"]):
            row[name] = {k: r[k] for k in ("weighted_log_loss", "weighted_log_loss_minus_first", "auc_any")}
        rows.append(row)
        print(_line(row, "its view-less self" if args.set == "tta" else "plain"), flush=True)
    return dict(studies=args.studies, slices=args.slices, corpus_seed=args.corpus_seed, epochs=args.epochs,
                image_size=args.image_size, split=args.split, seeds=rows)


def _judge_views(runs: dict, bootstrap: int, cv: bool = False) -> dict:
    """Each run on its test patients (a cv folder: its pooled out-of-fold predictions) with each of
    :data:`TTA_JUDGED`, paired against the same run without views: rows in the order of ``runs`` then the
    views, as ``compare`` gives them."""
    import numpy as np

    from ichtrain.cv import pooled_out_of_fold
    from ichtrain.data import run_stream
    from ichtrain.evaluate import evaluate, tta_label
    from ichtrain.metrics import paired_bootstrap
    from ichtrain.run import RunDir, read_record

    table = []
    for run in runs.values():
        preds = []
        for mode in TTA_JUDGED:
            if cv:
                pooled = pooled_out_of_fold(run, tta=mode)
                y, groups = pooled["y"], pooled["groups"]
                preds.append(pooled["p"])
                continue
            cfg = read_record(run)
            evaluate(run, "test", tta=mode)
            with np.load(RunDir(run).predictions(tta_label(cfg, "test", mode, run)[1])) as d:
                y, rows = d["y_true"], d["rows"]
                preds.append(d["y_prob"])
            groups = run_stream(cfg).groups[rows].astype(str)
        table += paired_bootstrap(y, preds, groups, bootstrap)
    return dict(patients=int(np.unique(groups).size), slices=int(len(y)), runs=table)


def _v(m: dict, signed: bool = False) -> str:
    """A value with its 95% interval; '-' where it is undefined (an AUC without a positive)."""
    if m["value"] is None:
        return "-"
    text = f"{m['value']:+.3f}" if signed else f"{m['value']:.3f}"
    return text + (f" [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]" if m.get("ci") else "")


def _line(row: dict, first: str = "plain") -> str:
    parts = [f"seed {row['seed']} ({row['patients']} test patients, {row['slices']} slices, {row['seconds']} s)"]
    for name in row["variants"]:
        r = row[name]
        parts.append(f"  {name:12s} wll {_v(r['weighted_log_loss'])}  minus {first} "
                     f"{_v(r['weighted_log_loss_minus_first'], signed=True)}  AUC(any) {_v(dict(r['auc_any'], ci=None))}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=60)
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--corpus-seed", type=int, default=11)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--split", default="0.7,0.15,0.15")
    p.add_argument("--salt", default="recipe")
    p.add_argument("--set", default="parts", choices=tuple(VARIANT_SETS),
                   help="parts: plain, --augment light, --tta flip, --crop head, all three; windows: plain, tta+crop, "
                        "tta+crop with the brain/subdural/bone windows; tta: plain and three windows with head crops, "
                        "each judged with --tta none, flip and flip+crop")
    p.add_argument("--cv", type=int, default=0, metavar="K",
                   help="run each variant as 'ichtrain cv --folds K' (one per seed) and judge the pooled out-of-fold "
                        "predictions, every patient once, instead of one split's test patients")
    p.add_argument("--work", help="keep the corpus, store and runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    a.variants = VARIANT_SETS[a.set]
    with tempfile.TemporaryDirectory(prefix="ichtrain-recipe-") as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        res = measure(work, a)
    import numpy as np

    for name in res["seeds"][0]["variants"]:
        d = [r[name]["weighted_log_loss_minus_first"]["value"] for r in res["seeds"]]
        first = "itself without views" if a.set == "tta" else "plain"
        print(f"{name:12s} mean wll minus {first} over seeds {np.mean(d):+.4f} ({', '.join(f'{x:+.3f}' for x in d)})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
