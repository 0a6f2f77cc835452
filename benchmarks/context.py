"""Does context along z pay? One slice, 2.5D neighbours and the series model on the same held-out patients.

For each split seed: ``ichtrain fit`` the baseline on one slice (k = 0) and with neighbours (k = 1),
``ichtrain embed`` the k = 0 run, ``ichtrain fit --model series`` on those embeddings (started as the
slice model, the default, and with ``--series-init scratch``), then ``ichtrain compare`` the four on the
test patients (calibrated outputs, 95% bootstrap intervals over
patients), next to the constant predictor of the train split's label rates. Prints one table and the
issue-18 ratios (mean over seeds): series / slice weighted log loss (target <= 0.8, AUC(any) no worse) and
whether 2.5D lies between the two or better.

    python benchmarks/context.py [--studies 60] [--seeds 0,1,2] [--epochs 8] [--json out.json]

About 10 minutes per seed on 2 CPU cores at the defaults (the 2.5D fit is most of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# slice: one slice; k1: 2.5D; series: the BiGRU started as the slice model (the default); series_scratch:
# the BiGRU with its head learnt afresh (--series-init scratch)
RUNS = ("slice", "k1", "series", "series_scratch")


def _run(main, argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise SystemExit(f"{' '.join(argv[:2])} failed with exit {code}")


def measure(work: str, studies: int, slices: int, corpus_seed: int, seeds: list[int], epochs: int,
            image_size: int, split: str, series_epochs: int, batch_size: int = 32, salt: str = "context",
            synth_version: int = 3) -> dict:
    from ichprep.cli import main as ichprep
    from ichtrain.cli import main as ichtrain
    from ichtrain.compare import compare

    src, store = os.path.join(work, "dicom"), os.path.join(work, "store.zarr")
    if not os.path.isdir(store):
        _run(ichprep, ["synth", src, "--studies", str(studies), "--slices", str(slices), "--seed", str(corpus_seed),
                       "--hemorrhage-fraction", "0.5", "--version", str(synth_version)])
        _run(ichprep, ["build", os.path.join(src, "dicom"), "--out", store, "--labels", os.path.join(src, "labels.csv"),
                       "--windows", "brain:40/80", "--salt", salt, "--quiet"])
    common = ["--epochs", str(epochs), "--image-size", str(image_size), "--split", split, "--batch-size",
              str(batch_size), "--quiet"]
    per_seed = []
    for seed in seeds:
        t0 = time.perf_counter()
        runs = {name: os.path.join(work, f"seed{seed}-{name}") for name in RUNS}
        _run(ichtrain, ["fit", store, "--out", runs["slice"], "--model", "baseline", "--seed", str(seed), *common])
        _run(ichtrain, ["fit", store, "--out", runs["k1"], "--model", "baseline", "--neighbours", "1",
                        "--seed", str(seed), *common])
        emb = os.path.join(work, f"seed{seed}-emb.zarr")
        _run(ichtrain, ["embed", runs["slice"], "--out", emb, "--quiet"])
        for name, init in (("series", "slice"), ("series_scratch", "scratch")):
            _run(ichtrain, ["fit", store, "--out", runs[name], "--model", "series", "--embeddings", emb,
                            "--epochs", str(series_epochs), "--series-init", init, "--quiet"])
        res = compare(list(runs.values()), "test")
        with open(os.path.join(runs["slice"], "eval-test.json")) as fh:  # written by compare's evaluate
            prior = json.load(fh)["calibration"]["constant_prior_weighted_log_loss"]
        row = dict(seed=seed, patients=res["patients"], slices=res["slices"], prior=prior,
                   seconds=round(time.perf_counter() - t0, 1))
        for name, r in zip(runs, res["runs"]):
            row[name] = {k: r[k] for k in ("weighted_log_loss", "auc_any")}
        per_seed.append(row)
        print(_line(row), flush=True)
    return dict(studies=studies, slices_per_series=slices, corpus_seed=corpus_seed, epochs=epochs,
                batch_size=batch_size,
                image_size=image_size, split=split, series_epochs=series_epochs, seeds=per_seed,
                summary=summarise(per_seed))


def _fmt(m: dict) -> str:
    """A value with its interval; '-' where it is undefined (an AUC on a split without a positive)."""
    ci = m["ci"]
    if m["value"] is None:
        return "-"
    return f"{m['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _line(row: dict) -> str:
    return (f"seed {row['seed']} ({row['patients']} test patients, {row['slices']} slices, {row['seconds']} s): "
            f"prior {row['prior']:.3f}; " + "; ".join(f"{n} wll {_fmt(row[n]['weighted_log_loss'])} AUC "
                                                    f"{_fmt(dict(row[n]['auc_any'], ci=None))}" for n in RUNS))


def summarise(per_seed: list[dict]) -> dict:
    """Means over seeds and the issue-18 targets."""
    import numpy as np

    def mean(name, key):
        values = [r[name][key]["value"] for r in per_seed]
        return float(np.mean([v for v in values if v is not None])) if any(v is not None for v in values) \
            else float("nan")

    out = {"prior_wll": float(np.mean([r["prior"] for r in per_seed]))}
    for name in RUNS:
        out[f"{name}_wll"], out[f"{name}_auc_any"] = mean(name, "weighted_log_loss"), mean(name, "auc_any")
    out["series_over_slice_wll"] = out["series_wll"] / out["slice_wll"]
    out["series_target_met"] = out["series_over_slice_wll"] <= 0.8 and out["series_auc_any"] >= out["slice_auc_any"]
    out["k1_between_or_better"] = out["k1_wll"] <= out["slice_wll"]
    out["every_run_beats_prior"] = all(r[n]["weighted_log_loss"]["value"] < r["prior"]
                                       for r in per_seed for n in RUNS)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=60)
    p.add_argument("--slices", type=int, default=24, help="slices per series (default 24)")
    p.add_argument("--corpus-seed", type=int, default=11)
    p.add_argument("--seeds", default="0,1,2", help="split seeds, comma-separated (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=8, help="slice-model epochs (default 8)")
    p.add_argument("--series-epochs", type=int, default=60)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--salt", default="context", help="the store's patient-hash key: it places patients in splits, "
                                                       "so the same salt gives the same test patients anywhere")
    p.add_argument("--split", default="0.7,0.15,0.15")
    p.add_argument("--synth-version", type=int, default=3, choices=(1, 2, 3),
                   help="the synthetic corpus's version (default 3; 2: the corpus of the measurements before "
                        "2026-12-07; 1: the ellipse phantom of those before 2026-12-06)")
    p.add_argument("--work", help="keep the corpus, store and runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="ichtrain-context-") as tmp:
        work = a.work or tmp
        os.makedirs(work, exist_ok=True)
        res = measure(work, a.studies, a.slices, a.corpus_seed, seeds, a.epochs, a.image_size, a.split,
                      a.series_epochs, a.batch_size, a.salt, a.synth_version)
    s = res["summary"]
    print(f"mean over seeds {seeds}: prior {s['prior_wll']:.3f}; slice {s['slice_wll']:.3f} (AUC {s['slice_auc_any']:.3f}); "
          f"2.5D k=1 {s['k1_wll']:.3f} (AUC {s['k1_auc_any']:.3f}); series {s['series_wll']:.3f} "
          f"(AUC {s['series_auc_any']:.3f}); series from scratch {s['series_scratch_wll']:.3f} "
          f"(AUC {s['series_scratch_auc_any']:.3f})")
    print(f"series / slice wll {s['series_over_slice_wll']:.2f} (target <= 0.8, AUC no worse: "
          f"{'met' if s['series_target_met'] else 'NOT met'}); 2.5D between or better: "
          f"{'yes' if s['k1_between_or_better'] else 'NO'}; every run beats the prior: "
          f"{'yes' if s['every_run_beats_prior'] else 'NO'}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
