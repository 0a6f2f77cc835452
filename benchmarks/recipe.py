"""Which parts of the winners' recipe pay, on the same held-out patients: augmentation, test-time flips, head crops.

On an hu store (so that windows are a choice too), for each split seed, ``ichtrain fit`` the baseline plain
(brain window) and with each variant of ``--set`` (parts: ``--augment light``, ``--tta flip``, ``--crop head``,
all three; windows: tta+crop, and tta+crop on the brain, subdural and bone windows), then ``ichtrain compare`` them on the test patients: weighted log loss of the calibrated outputs
and its paired difference to the plain run with a 95% bootstrap interval over patients, and AUC(any). A part
earns its place in ``--recipe`` defaults only where its difference is below zero across seeds.

    python benchmarks/recipe.py [--set parts|windows] [--studies 60] [--seeds 0,1,2] [--epochs 10] [--json out.json]

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
}


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
    common = ["--epochs", str(args.epochs), "--image-size", str(args.image_size), "--split", args.split, "--quiet"]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        runs = {name: os.path.join(work, f"seed{seed}-{name}") for name in args.variants}
        for name, extra in args.variants.items():
            _run(ichtrain, ["fit", store, "--out", runs[name], "--seed", str(seed), *common, *extra])
        res = compare(list(runs.values()), "test")
        row = dict(seed=seed, patients=res["patients"], slices=res["slices"], seconds=round(time.perf_counter() - t0),
                   variants=list(runs))
        for name, r in zip(runs, res["runs"]):
            row[name] = {k: r[k] for k in ("weighted_log_loss", "weighted_log_loss_minus_first", "auc_any")}
        rows.append(row)
        print(_line(row), flush=True)
    return dict(studies=args.studies, slices=args.slices, corpus_seed=args.corpus_seed, epochs=args.epochs,
                image_size=args.image_size, split=args.split, seeds=rows)


def _v(m: dict, signed: bool = False) -> str:
    """A value with its 95% interval; '-' where it is undefined (an AUC without a positive)."""
    if m["value"] is None:
        return "-"
    text = f"{m['value']:+.3f}" if signed else f"{m['value']:.3f}"
    return text + (f" [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]" if m.get("ci") else "")


def _line(row: dict) -> str:
    parts = [f"seed {row['seed']} ({row['patients']} test patients, {row['slices']} slices, {row['seconds']} s)"]
    for name in row["variants"]:
        r = row[name]
        parts.append(f"  {name:12s} wll {_v(r['weighted_log_loss'])}  minus plain "
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
                        "tta+crop with the brain/subdural/bone windows")
    p.add_argument("--work", help="keep the corpus, store and runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    a.variants = VARIANT_SETS[a.set]
    with tempfile.TemporaryDirectory(prefix="ichtrain-recipe-") as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        res = measure(work, a)
    import numpy as np

    for name in a.variants:
        d = [r[name]["weighted_log_loss_minus_first"]["value"] for r in res["seeds"]]
        print(f"{name:12s} mean wll minus plain over seeds {np.mean(d):+.4f} ({', '.join(f'{x:+.3f}' for x in d)})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
