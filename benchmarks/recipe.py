"""Which parts of the winners' recipe pay, on the same held-out patients: augmentation, test-time flips, head crops.

For each split seed, ``ichtrain fit`` the baseline plain and with each variant (``--augment light``, ``--tta
flip``, ``--crop head``, all three), then ``ichtrain compare`` them on the test patients: weighted log loss of the calibrated outputs
and its paired difference to the plain run with a 95% bootstrap interval over patients, and AUC(any). A part
earns its place in ``--recipe`` defaults only where its difference is below zero across seeds.

    python benchmarks/recipe.py [--studies 60] [--seeds 0,1,2] [--epochs 10] [--json out.json]

About 2 minutes per fit on 2 CPU cores at the defaults (5 fits per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {"plain": [], "augment": ["--augment", "light"], "tta": ["--tta", "flip"], "crop": ["--crop", "head"],
            "all": ["--augment", "light", "--tta", "flip", "--crop", "head"]}


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
                       "--windows", "brain:40/80", "--salt", args.salt, "--quiet"])
    common = ["--epochs", str(args.epochs), "--image-size", str(args.image_size), "--split", args.split, "--quiet"]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        runs = {name: os.path.join(work, f"seed{seed}-{name}") for name in VARIANTS}
        for name, extra in VARIANTS.items():
            _run(ichtrain, ["fit", store, "--out", runs[name], "--seed", str(seed), *common, *extra])
        res = compare(list(runs.values()), "test")
        row = dict(seed=seed, patients=res["patients"], slices=res["slices"], seconds=round(time.perf_counter() - t0))
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
    for name in VARIANTS:
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
    p.add_argument("--work", help="keep the corpus, store and runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ichtrain-recipe-") as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        res = measure(work, a)
    import numpy as np

    for name in VARIANTS:
        d = [r[name]["weighted_log_loss_minus_first"]["value"] for r in res["seeds"]]
        print(f"{name:12s} mean wll minus plain over seeds {np.mean(d):+.4f} ({', '.join(f'{x:+.3f}' for x in d)})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
