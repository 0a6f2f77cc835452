"""Does a model trained only on ``ichprep synth`` invent bleeds in real slices, and where (issue 30)?

For each ``--version``: a corpus (``--studies``, ``--slices``, ``--seed``), an ``ichprep build`` of it in the brain
window, ``ichtrain fit`` (baseline, 128 px, ``--epochs``, each of ``--fit-seeds``), then ``ichtrain predict`` on
the real unlabelled slices (``--real``, default ``../shared/data/rsna-unlabelled``). Reported per run: the mean
predicted ``any`` (about 14% of RSNA slices bleed), the slices above 0.5, and the mean by the cut's level as
``ichprep.realism`` measures it (skull base, vertex, between), with how many of the 25 highest-ranked slices lie
at the skull base. Real labels are not read: a model that ranks skull-base cuts first has learned that the
face is blood, which no label is needed to see. ``--predictions CSV ...`` only reports on existing submissions.

    python benchmarks/transfer.py [--version 2 3] [--fit-seeds 0 1] [--epochs 12] [--json out.json]
    python benchmarks/transfer.py --predictions a.csv b.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import write_report  # noqa: E402  (the benchmarks folder is not a package)
from realism import SHARED, _files, load_hu  # noqa: E402


def cut_levels(real: str) -> dict[str, str]:
    """Each real slice's level, keyed by its file name without ``.dcm``: skull_base, vertex or between."""
    from ichprep.realism import measure_slice

    out = {}
    for f in _files(real):
        hu, px = load_hu(f)[:2]
        m = measure_slice(hu, px)
        out[os.path.basename(f)[:-4]] = "skull_base" if m.skull_base else "vertex" if m.vertex else "between"
    return out


def report(predictions: str, levels: dict[str, str]) -> dict:
    with open(predictions) as fh:
        rows = list(csv.DictReader(fh))
    anyp = {r["ID"][:-4]: float(r["Label"]) for r in rows if r["ID"].endswith("_any")}
    ids = [i for i in anyp if i in levels]
    p = np.array([anyp[i] for i in ids])
    lv = np.array([levels[i] for i in ids])
    top = np.argsort(-p, kind="stable")[:25]
    return dict(predictions=predictions, slices=len(ids), mean_any=round(float(p.mean()), 4),
                above_half=int((p > 0.5).sum()),
                mean_any_by_level={k: round(float(p[lv == k].mean()), 4) for k in ("skull_base", "between", "vertex")
                                   if (lv == k).any()},
                slices_by_level={k: int((lv == k).sum()) for k in ("skull_base", "between", "vertex")},
                skull_base_in_top_25=int((lv[top] == "skull_base").sum()))


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")


def train_and_predict(version: int, fit_seed: int, a, work: str) -> str:
    corpus, store = os.path.join(work, f"v{version}"), os.path.join(work, f"v{version}.zarr")
    py = [sys.executable, "-m"]
    if not os.path.isdir(store):
        _run(py + ["ichprep.cli", "synth", corpus, "--studies", str(a.studies), "--slices", str(a.slices), "--seed",
                   str(a.seed), "--version", str(version), "--quiet"])
        _run(py + ["ichprep.cli", "build", os.path.join(corpus, "dicom"), "--out", store, "--labels",
                   os.path.join(corpus, "labels.csv"), "--windows", "brain", "--quiet"])
    run = os.path.join(work, f"v{version}-run{fit_seed}")
    _run(py + ["ichtrain.cli", "fit", store, "--out", run, "--epochs", str(a.epochs), "--seed", str(fit_seed),
               "--quiet"])
    out = os.path.join(work, f"v{version}-run{fit_seed}.csv")
    _run(py + ["ichtrain.cli", "predict", run, a.real, "--out", out])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", default=os.path.join(SHARED, "rsna-unlabelled"))
    ap.add_argument("--version", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--studies", type=int, default=60)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--seed", type=int, default=41, help="the corpus's seed (default 41)")
    ap.add_argument("--fit-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--predictions", nargs="+", help="report on these submissions instead of training")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    levels = cut_levels(a.real)
    results = []
    if a.predictions:
        results = [report(p, levels) for p in a.predictions]
    else:
        with tempfile.TemporaryDirectory(prefix="ichprep-transfer-") as work:
            for v in a.version:
                for s in a.fit_seeds:
                    r = report(train_and_predict(v, s, a, work), levels)
                    results.append(dict(r, version=v, fit_seed=s, predictions=None))
                    print(json.dumps(results[-1]), flush=True)
    for r in results:
        by = r["mean_any_by_level"]
        print(f"{r.get('version', r['predictions'])}: mean any {r['mean_any']:.3f} ({r['above_half']} above 0.5); "
              f"skull base {by.get('skull_base', float('nan')):.3f}, between {by.get('between', float('nan')):.3f}, "
              f"vertex {by.get('vertex', float('nan')):.3f}; skull-base cuts in the top 25: "
              f"{r['skull_base_in_top_25']} (of {r['slices_by_level']['skull_base']}/{r['slices']} slices)")
    write_report(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
