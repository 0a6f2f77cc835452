"""A store that outgrows memory (issue 34): ~150,000 real slices in an hu store, grown 10k slices at a time.

The first window is an ``ichprep build``, each later one an ``ichprep build --append`` of the next ~10k
slices: the real files of ``--data`` copied as new series and studies (see ingest.replicate), written just
before their window and deleted after it, so the sources never hold more than one window (150k DICOMs are
~75 GB; the store is what must outgrow memory). Each window is timed as a whole command (start-up included)
with its peak RSS; at the end ``ichprep verify`` reads every shard. Reported: slices/s per window (flat
within 10% is the target), peak RSS per window, the store's size against the machine's memory, verify's time.

Usage: python benchmarks/scale.py [--data ../shared/data/rsna-unlabelled] [--slices 150000] [--window 10000]
       [--workers 2] [--preset hu] [--work DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import _files, _run, replicate, write_report  # noqa: E402  (the benchmarks folder is not a package)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "rsna-unlabelled")


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None) -> int:
    import psutil

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="a folder of real DICOMs (default ../shared/data/rsna-unlabelled)")
    p.add_argument("--slices", type=int, default=150_000, help="slices in the final store (default 150,000)")
    p.add_argument("--window", type=int, default=10_000, help="slices per build or append (default 10,000)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))
    p.add_argument("--preset", default="hu")
    p.add_argument("--work", help="scratch folder (default a new one under the temp folder); needs the store's size")
    p.add_argument("--keep", action="store_true", help="keep the store")
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args(argv)
    os.environ.setdefault("ICHPREP_SALT", "scale-benchmark")
    work = tempfile.mkdtemp(prefix="ichprep-scale-", dir=a.work)
    per_file = len(_files(a.data))
    copies = math.ceil(a.window / per_file)
    windows = math.ceil(a.slices / (copies * per_file))
    store = os.path.join(work, "store.zarr")
    cli = [sys.executable, "-m", "ichprep.cli", "build", "--workers", str(a.workers), "--quiet"]
    rows, t_start = [], time.monotonic()
    try:
        for w in range(windows):
            src = os.path.join(work, "src")
            t = time.monotonic()
            replicate(a.data, src, copies, first=w * copies)
            made = time.monotonic() - t
            n = len(_files(src))
            cmd = cli + [src, "--out", store] + (["--preset", a.preset] if w == 0 else ["--append"])
            wall, peak, out = _run(cmd, None)
            shutil.rmtree(src)
            size = _size(store)
            with open(os.path.join(store, "zarr.json")) as fh:  # the command's own phases (start, headers, pixels)
                phases = json.load(fh)["attributes"]["ichprep"].get("timings", {})
            rows.append(dict(window=w + 1, slices=n, seconds=round(wall, 2), slices_per_s=round(n / wall, 1),
                             peak_rss_mib=round(peak / 2**20, 1), store_gib=round(size / 2**30, 2),
                             sources_s=round(made, 1), phases=phases))
            print(f"window {w + 1}/{windows}: {n} slices in {wall:.1f} s ({n / wall:,.0f}/s), peak RSS "
                  f"{peak / 2**20:,.0f} MiB, store {size / 2**30:.1f} GiB (sources made in {made:.0f} s); phases "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()), flush=True)
        t = time.monotonic()
        verify_wall, verify_peak, verify_out = _run([sys.executable, "-m", "ichprep.cli", "verify", store, "--quiet"], None)
        rates = [r["slices_per_s"] for r in rows]
        later = rates[1:] or rates  # the appends: the first window is a build (its own start-up and store creation)
        report = dict(data=a.data, preset=a.preset, workers=a.workers, windows=rows,
                      total_slices=sum(r["slices"] for r in rows), store_gib=rows[-1]["store_gib"],
                      memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
                      rate_spread=round(max(later) / min(later), 3), rss_spread=round(
                          max(r["peak_rss_mib"] for r in rows[1:] or rows) / min(r["peak_rss_mib"] for r in rows[1:] or rows), 3),
                      verify_s=round(verify_wall, 1), verify_peak_rss_mib=round(verify_peak / 2**20, 1),
                      verify=verify_out.strip().splitlines()[-1] if verify_out.strip() else "OK",
                      wall_s=round(time.monotonic() - t_start, 1))
        print(json.dumps(report, indent=2))
        print(f"{report['total_slices']:,} slices, store {report['store_gib']} GiB on a {report['memory_gib']} GiB "
              f"machine; appends' slices/s max/min {report['rate_spread']}x (target <= 1.1x), peak RSS max/min "
              f"{report['rss_spread']}x; verify {report['verify_s']} s")
        write_report(a.json, report)
        return 0
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
