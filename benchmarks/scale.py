"""A store that outgrows memory (issue 34): ~150,000 real slices in an hu store, grown 10k slices at a time.

The first window is an ``ichprep build``, each later one an ``ichprep build --append`` of the next ~10k
slices: the real files of ``--data`` copied as new series and studies (see ingest.replicate), written just
before their window and deleted after it, so the sources never hold more than one window (150k DICOMs are
~75 GB; the store is what must outgrow memory). Each window is timed as a whole command (start-up included)
with its peak RSS and CPU time; at the end ``ichprep verify`` reads every shard. Reported: slices/s per window
(flat within 10% is the target), peak RSS per window, the store's size against the machine's memory, verify's
time.

The machine is shared, and slower or faster by more than the target's 10% from one hour to the next, so the
trend of the appends' slices/s with the store's rows (least squares on its log) is reported as the change from
the first append to the last, with a 95% bootstrap interval over windows: flat is a change near 0 with a narrow
interval. ``--control`` also builds each window's sources into a fresh store just before and just after the
window's command, and reports the *relative rate* (the two controls' mean wall time over the window's) and its
trend. On this machine the controls did not hold still (docs/performance.md): the fresh build run first after
a window's sources were written took a median 1.32x (up to 1.81x) the time of the one after the append, and the
fresh builds sped up by half over an hour while the appends did not change.

Usage: python benchmarks/scale.py [--data ../shared/data/rsna-unlabelled] [--slices 150000] [--window 10000]
       [--workers 2] [--preset hu] [--work DIR] [--control] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import _build_timings, _files, _run, replicate, write_report  # noqa: E402  (the benchmarks folder is not a package)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "rsna-unlabelled")


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _rows(store: str) -> int:
    """Rows the store holds (its ``sop_uid`` column's length, from its metadata)."""
    with open(os.path.join(store, "sop_uid", "zarr.json")) as fh:
        return int(json.load(fh)["shape"][0])


def _timed(cmd) -> tuple[float, float, str, float]:
    """(wall s, peak RSS bytes, stdout, CPU s of the command and its workers) of a whole command."""
    os.sync()  # no writes pending from what came before (a window's sources are ~5 GB) to slow the command
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, peak, out = _run(cmd, None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command waited for its workers: theirs count
    return wall, peak, out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _spread(values: list[float]) -> float | None:
    return round(max(values) / min(values), 3) if values else None


def trend(rows_before: list[int], values: list[float], draws: int = 2000, seed: int = 0) -> dict | None:
    """The change of ``values`` (a rate per window) from the first window's store size to the last's, by least
    squares on its log against the store's rows, with a 95% bootstrap interval over windows (pairs resampled):
    flat is a change near 0 whose interval is narrow. None for fewer than 3 windows."""
    import numpy as np

    x, y = np.asarray(rows_before, float), np.log(np.asarray(values, float))
    if len(x) < 3 or np.ptp(x) == 0:
        return None
    span = x.max() - x.min()

    def change(i):
        if np.ptp(x[i]) == 0:
            return np.nan
        return float(np.expm1(np.polyfit(x[i], y[i], 1)[0] * span))

    rng = np.random.default_rng(seed)
    boot = np.array([change(rng.integers(0, len(x), len(x))) for _ in range(draws)])
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return dict(change=round(change(np.arange(len(x))), 4), ci95=[round(float(lo), 4), round(float(hi), 4)],
                windows=len(x), rows_from=int(x.min()), rows_to=int(x.max()))


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
    p.add_argument("--control", action="store_true",
                   help="also build each window's sources into a fresh store before and after the window (3x the time)")
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args(argv)
    os.environ.setdefault("ICHPREP_SALT", "scale-benchmark")
    per_file = len(_files(a.data)) if os.path.isdir(a.data) else 0
    if per_file == 0:
        p.error(f"--data {a.data!r} holds no .dcm files: pass a folder of real DICOM slices")
    work = tempfile.mkdtemp(prefix="ichprep-scale-", dir=a.work)
    copies = math.ceil(a.window / per_file)
    windows = math.ceil(a.slices / (copies * per_file))
    store, src = os.path.join(work, "store.zarr"), os.path.join(work, "src")
    cli = [sys.executable, "-m", "ichprep.cli", "build", "--workers", str(a.workers), "--quiet"]
    rows, t_start = [], time.monotonic()

    def control_build() -> tuple[float, float]:
        control = os.path.join(work, "control.zarr")
        c_wall, _, _, c_cpu = _timed(cli + [src, "--out", control, "--preset", a.preset])
        shutil.rmtree(control)
        return c_wall, c_cpu

    try:
        for w in range(windows):
            t = time.monotonic()
            replicate(a.data, src, copies, first=w * copies)
            made = time.monotonic() - t
            n = len(_files(src))
            cmd = cli + [src, "--out", store] + (["--preset", a.preset] if w == 0 else ["--append"])
            rows_before = _rows(store) if w else 0
            before = control_build() if a.control else None
            wall, peak, out, cpu = _timed(cmd)
            size = _size(store)
            phases = _build_timings(store)  # the command's own phases (start, headers, pixels)
            row = dict(window=w + 1, slices=n, rows_before=rows_before, seconds=round(wall, 2), slices_per_s=round(n / wall, 1),
                       cpu_ms_per_slice=round(1000 * cpu / n, 3), peak_rss_mib=round(peak / 2**20, 1),
                       store_gib=round(size / 2**30, 2), sources_s=round(made, 1), phases=phases)
            if a.control:
                after = control_build()
                row.update(control_seconds=[round(before[0], 2), round(after[0], 2)],
                           control_cpu_ms_per_slice=round(1000 * (before[1] + after[1]) / (2 * n), 3),
                           relative_rate=round((before[0] + after[0]) / 2 / wall, 3))
            shutil.rmtree(src)
            rows.append(row)
            print(f"window {w + 1}/{windows}: {n} slices in {wall:.1f} s ({n / wall:,.0f}/s, {row['cpu_ms_per_slice']:.2f} "
                  f"ms CPU per slice), peak RSS {peak / 2**20:,.0f} MiB, store {size / 2**30:.1f} GiB (sources made in "
                  f"{made:.0f} s); phases " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
                  + (f"; control builds {row['control_seconds'][0]:.1f} and {row['control_seconds'][1]:.1f} s, relative "
                     f"rate {row['relative_rate']:.3f}"
                     if a.control else ""), flush=True)
        t = time.monotonic()
        verify_wall, verify_peak, verify_out = _run([sys.executable, "-m", "ichprep.cli", "verify", store, "--quiet"], None)
        later = rows[1:] or rows  # the appends: the first window is a build (its own start-up and store creation)
        report = dict(data=a.data, preset=a.preset, workers=a.workers, windows=rows,
                      total_slices=sum(r["slices"] for r in rows), store_gib=rows[-1]["store_gib"],
                      memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
                      rate_spread=_spread([r["slices_per_s"] for r in later]),
                      rate_trend=trend([r["rows_before"] for r in later], [r["slices_per_s"] for r in later]),
                      relative_rate_spread=_spread([r["relative_rate"] for r in later if "relative_rate" in r]),
                      relative_rate_trend=trend([r["rows_before"] for r in later], [r["relative_rate"] for r in later])
                      if a.control else None,
                      cpu_per_slice_spread=_spread([r["cpu_ms_per_slice"] for r in later]),
                      rss_spread=_spread([r["peak_rss_mib"] for r in later]),
                      verify_s=round(verify_wall, 1), verify_peak_rss_mib=round(verify_peak / 2**20, 1),
                      verify=verify_out.strip().splitlines()[-1] if verify_out.strip() else "OK",
                      wall_s=round(time.monotonic() - t_start, 1))
        print(json.dumps(report, indent=2))
        print(f"{report['total_slices']:,} slices, store {report['store_gib']} GiB on a {report['memory_gib']} GiB "
              f"machine; appends' slices/s max/min {report['rate_spread']}x (target <= 1.1x), CPU per slice "
              f"{report['cpu_per_slice_spread']}x; " + "".join(
                  f"{what} from the first append to the last {tr['change']:+.1%} [{tr['ci95'][0]:+.1%}, {tr['ci95'][1]:+.1%}]; "
                  for what, tr in (("slices/s", report["rate_trend"]), ("relative rate", report["relative_rate_trend"])) if tr) +
              f"peak RSS max/min {report['rss_spread']}x; verify {report['verify_s']} s")
        write_report(a.json, report)
        return 0
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
