"""Appending to a store against rebuilding it (issue 34): ``ichprep build --append`` of ~10% new studies into
a store of real slices replicated to ~16k slices, against a full rebuild of the same files, in the same run.

The corpus: every real file of ``--data`` copied ``--base`` times as new series and studies (the base store),
then ``--new`` more copies (the new studies); ``all/`` holds the base files (hard links: the same paths, sizes
and times, so the append knows them by their keys) and the new ones. Each round times, as whole commands
(start-up included), a full build of ``all/`` and an append of ``all/`` to a copy of the base store. After the
first append: every existing shard object byte-identical, ``ichprep verify`` OK, and the split of the base
store's patients unchanged (the generation-1 split digest, and each old patient's split at the new generation).

Usage: python benchmarks/append.py [--data ../shared/data/rsna-unlabelled] [--base 64] [--new 7] [--rounds 2]
       [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import _build_timings, _files, _run, replicate, write_report  # noqa: E402  (the benchmarks folder is not a package)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "rsna-unlabelled")


def _labels(files: list[str], path: str) -> str:
    """A labels CSV for every file (named ``<SOPInstanceUID>.dcm`` by the replication): random labels, ~15%
    with a hemorrhage, so that the splits hold patients."""
    import numpy as np

    from ichprep.labels import SUBTYPES

    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        fh.write("ID,Label\n")
        for f in files:
            sop = os.path.splitext(os.path.basename(f))[0]
            sub = (rng.random(5) < 0.04).astype(int)
            for name, v in zip(SUBTYPES, list(sub) + [int(sub.any())]):
                fh.write(f"{sop}_{name},{v}\n")
    return path


def _phases(store: str, wall: float) -> dict:
    """Where an append's wall time went: the phases the command timed itself (its ``start`` runs from the append's
    first step to the cluster's start, ``headers``, ``pixels``; stored in the store's attributes), and ``other``:
    the rest of the whole command (Python's start, imports, the compiled kernels' load, the finish)."""
    timed = {k: round(v, 3) for k, v in _build_timings(store).items()}
    return dict(timed, other=round(wall - sum(timed.values()), 3))


def _shard_digests(store: str) -> dict:
    root = os.path.join(store, "images", "c")
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
    return out


def _splits_kept(store: str) -> dict:
    """The base patients' splits: generation 1 read from the grown store has the base store's split digest,
    and at generation 2 every old patient is in the split it was in."""
    import numpy as np

    from ichtrain.data import StoreStream

    old = StoreStream(store, generation=1)
    new = StoreStream(store)
    place = {}
    for name, rows in old.splits.items():
        for g in set(old.groups[rows].tolist()):
            place[g] = name
    moved = sum(place.get(g) not in (None, name) for name, rows in new.splits.items() for g in set(new.groups[rows].tolist()))
    return dict(generation_1_digest=old.split_record()["digest"], old_patients=len(place), old_patients_moved=int(moved),
                new_rows=int(np.sum(new.readable) - np.sum(old.readable)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="a folder of real DICOMs (default ../shared/data/rsna-unlabelled)")
    p.add_argument("--base", type=int, default=64, help="copies of every file in the base store (default 64)")
    p.add_argument("--new", type=int, default=7, help="further copies appended (default 7: ~11%% more)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args(argv)
    os.environ.setdefault("ICHPREP_SALT", "append-benchmark")
    work = tempfile.mkdtemp(prefix="ichprep-append-")
    try:
        base, new, every = (os.path.join(work, x) for x in ("base", "new", "all"))
        replicate(a.data, base, a.base)
        replicate(a.data, new, a.new, first=a.base)
        os.makedirs(every)
        for d in (base, new):
            for f in _files(d):
                os.link(f, os.path.join(every, os.path.basename(f)))
        labels = _labels(_files(every), os.path.join(work, "labels.csv"))
        n_base, n_new = len(_files(base)), len(_files(new))
        build = [sys.executable, "-m", "ichprep.cli", "build", "--workers", str(a.workers), "--quiet", "--labels", labels]
        base_store = os.path.join(work, "base.zarr")
        base_wall, _, _ = _run(build + [base, "--out", base_store], None)
        print(f"base store: {n_base} slices in {base_wall:.1f} s; appending {n_new} ({n_new / n_base:.1%})", flush=True)
        before = _shard_digests(base_store)
        rebuild, appended, peaks, phases, checks = [], [], [], [], {}
        for r in range(a.rounds):
            full = os.path.join(work, f"full{r}.zarr")
            os.sync()  # each command starts with no other writes pending (a copied store's pages are ~5 GB)
            wall, peak, _ = _run(build + [every, "--out", full], None)
            rebuild.append(wall)
            shutil.rmtree(full)
            grown = os.path.join(work, f"grown{r}.zarr")
            shutil.copytree(base_store, grown)
            os.sync()
            wall, peak, out = _run(build + [every, "--out", grown, "--append"], None)
            appended.append(wall)
            peaks.append(round(peak / 2**20, 1))
            phases.append(_phases(grown, wall))
            print(f"round {r + 1}: rebuild {rebuild[-1]:.1f} s, append {wall:.1f} s ({wall / rebuild[-1]:.3f}x; "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in phases[-1].items()) + ")", flush=True)
            if r == 0:
                after = _shard_digests(grown)
                checks["existing_shards"] = len(before)
                checks["existing_shards_changed"] = sum(after.get(k) != v for k, v in before.items())
                checks["new_shards"] = len(after) - len(before)
                res = _run([sys.executable, "-m", "ichprep.cli", "verify", grown, "--quiet"], None)
                checks["verify"] = "OK" if res is not None else "failed"
                checks.update(_splits_kept(grown))
                from ichtrain.data import StoreStream

                checks["base_digest_equal"] = checks["generation_1_digest"] == StoreStream(base_store).split_record()["digest"]
                checks.pop("generation_1_digest")
                checks["summary"] = out.strip().splitlines()[-1] if out.strip() else ""
            shutil.rmtree(grown)
        report = dict(data=a.data, base_slices=n_base, new_slices=n_new, workers=a.workers, rounds=a.rounds,
                      rebuild_s=rebuild, append_s=appended, append_peak_rss_mib=peaks, append_phases_s=phases,
                      ratio_median=statistics.median(x / y for x, y in zip(appended, rebuild)),
                      append_new_slices_per_s=statistics.median(n_new / x for x in appended), checks=checks)
        print(json.dumps(report, indent=2))
        print(f"append / rebuild: {report['ratio_median']:.3f}x (target <= 0.15x); existing shards changed: "
              f"{checks['existing_shards_changed']} of {checks['existing_shards']}; old patients moved: "
              f"{checks['old_patients_moved']}; generation-1 split digest equal to the base store's: "
              f"{checks['base_digest_equal']}; verify {checks['verify']}")
        write_report(a.json, report)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
