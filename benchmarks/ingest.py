"""Ingest benchmark: ``ichprep build`` against what users write by hand, in one run, on the same files.

Every contender runs as its own process (the whole command, start-up included) after a warm-up read
of every file (warm page cache), and after ``sync`` so that no contender pays for writing back what the
one before it wrote. ``--rounds K`` runs every contender K times, round-robin, and reports the median
(these machines are shared: one run of a command swings +-20% from the next); each ratio is the median
over rounds of the two contenders' ratio within a round. Per-core contenders are pinned to one core
(``sched_setaffinity``, inherited by child processes such as Dask workers); the 2-worker build is not
pinned. Peak RSS is sampled for every process of a contender's tree (psutil) and the largest single
process is reported.

Contenders:
  naive_a      per slice: dcmread + pixel_array + HU + min-max in numpy + write the slice (float16) to a
               zarr array with zarr's default codec
  decode_b     dcmread + pixel_array only: the floor of any pydicom-based ingester
  naive_10win  per slice: decode + the 10 Table 2.1 windows in numpy to float16 (writes nothing)
  build_cnn_1  ichprep build --preset cnn --workers 1   (pinned to one core)
  build_cnn_2  ichprep build --preset cnn --workers 2   (unpinned; run right after build_cnn_1)
  build_rnn_1  ichprep build --preset rnn --workers 1   (pinned to one core)
  build_hu_1   ichprep build --preset hu --workers 1    (pinned to one core; int16 HU, windowed when read)

For the builds the table also gives the pixel pass alone (the build's own timing of it, in the store's
attributes): start-up and the header pass are a fixed cost that a larger corpus amortises.

Usage: python benchmarks/ingest.py [--slices 4096] [--rounds 3] [--data DIR [--labels CSV] [--replicate K]]
                                   [--json out.json]

``--replicate K`` (with ``--data``): K copies of every real file, each copy a new series (suffixed SOP,
series and study UIDs, everything else -- transfer syntax, pixel bytes, defects -- as in the original),
so a small real series is large enough to amortise start-up.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FULL_DATASET = 752_803


def _files(d):
    return sorted(glob.glob(os.path.join(d, "**", "*.dcm"), recursive=True))


# ---------------------------------------------------------------- naive contenders (run in a child)

def naive_a(src, out):
    import numpy as np
    import pydicom
    import warnings
    import zarr

    warnings.simplefilter("ignore")
    files = _files(src)
    z = zarr.create_array(out, shape=(len(files), 512, 512), chunks=(1, 512, 512), dtype="float16")
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        lo, hi = hu.min(), hu.max()
        if hu.shape == (512, 512):
            z[i] = ((hu - lo) / (hi - lo if hi > lo else 1)).astype(np.float16)


def decode_b(src, out):
    import pydicom
    import warnings

    warnings.simplefilter("ignore")
    for f in _files(src):
        pydicom.dcmread(f).pixel_array


WINDOWS = [(40, 80), (50, 130), (75, 215), (100, 300), (20, 350), (40, 375), (60, 400), (600, 2800), (32, 8)]


def naive_10win(src, out):
    import numpy as np
    import pydicom
    import warnings

    warnings.simplefilter("ignore")
    for f in _files(src):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        wc = ds.WindowCenter
        wc = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        ww = ds.WindowWidth
        ww = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        chans = []
        for c, w in [(wc, ww)] + WINDOWS:
            lo, hi = c - w / 2, c + w / 2
            chans.append((np.clip(hu, lo, hi) - lo) / (hi - lo))
        np.stack(chans, -1).astype(np.float16)


NAIVE = {"naive_a": naive_a, "decode_b": decode_b, "naive_10win": naive_10win}


# ---------------------------------------------------------------- driver

def _run(cmd, pin):
    import psutil

    def pin_core():
        if pin:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin_core)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max([peak] + [p.memory_info().rss for p in procs if p.is_running()])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, peak, out


def replicate(src, dst, copies, first=0):
    """``copies`` copies of every DICOM in ``src`` under ``dst``, as new series (see the module docstring):
    copies ``first``, ``first + 1``, ... (each copy's UIDs end in its number, so other numbers give other
    slices)."""
    import warnings

    import pydicom

    os.makedirs(dst, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RSNA's ID_ UIDs are not valid UIDs; they are kept in that style
        for f in _files(src):
            ds = pydicom.dcmread(f)
            sop, series, study = ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID
            for k in range(first, first + copies):
                ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = (f"{u}{k:04x}" for u in (sop, series, study))
                ds.save_as(os.path.join(dst, f"{ds.SOPInstanceUID}.dcm"), enforce_file_format=False)
    return dst


def write_report(path, report) -> None:
    """The benchmark's report as JSON at ``path`` (``--json``; nothing when None)."""
    if path:
        with open(path, "w") as fh:
            json.dump(report, fh, indent=2)


def _build_timings(store):
    """The build's own wall time per phase (``ichprep`` attributes of the store; {} if absent)."""
    try:
        with open(os.path.join(store, "zarr.json")) as fh:
            return json.load(fh).get("attributes", {}).get("ichprep", {}).get("timings", {})
    except (OSError, ValueError):
        return {}


def _store_size(path):
    total = 0
    for r, _, fs in os.walk(path):
        total += sum(os.path.getsize(os.path.join(r, f)) for f in fs)
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=4096, help="synthetic corpus size (default 4096: enough to amortise start-up)")
    p.add_argument("--data", help="a folder of real DICOMs instead of a synthetic corpus")
    p.add_argument("--labels", help="label CSV for --data")
    p.add_argument("--replicate", type=int, default=1, help="with --data: copies of every file, each a new series "
                                                               "(default 1: the files as they are)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every contender, round-robin; the median is "
                                                           "reported (default 3)")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--only", help="comma-separated contenders to run (default all)")
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be at least 1. Received: {a.rounds}")
    if a.contender:  # child mode
        NAIVE[a.contender](a.src, a.out)
        return 0
    work = tempfile.mkdtemp(prefix="ichprep-bench-")
    try:
        if a.data:
            src, labels = a.data, a.labels
            if a.replicate > 1:
                if labels:
                    p.error("--replicate makes new SOPInstanceUIDs, which a labels CSV cannot name; drop --labels")
                src = replicate(src, os.path.join(work, "replicated"), a.replicate)
        else:
            studies = max(1, a.slices // 32)
            subprocess.run([sys.executable, "-m", "ichprep.cli", "synth", os.path.join(work, "corpus"),
                            "--studies", str(studies), "--slices", "32", "--seed", "0", "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
            src, labels = os.path.join(work, "corpus", "dicom"), os.path.join(work, "corpus", "labels.csv")
        files = _files(src)
        n = len(files)
        for f in files:  # warm the page cache
            with open(f, "rb") as fh:
                fh.read()
        here = os.path.abspath(__file__)
        ichprep = [sys.executable, "-m", "ichprep.cli", "build", src, "--quiet", "--salt", "bench"]
        if labels:
            ichprep += ["--labels", labels]
        contenders = {
            "naive_a": ([sys.executable, here, "--contender", "naive_a", "--src", src, "--out", os.path.join(work, "a.zarr")], True, "a.zarr"),
            "decode_b": ([sys.executable, here, "--contender", "decode_b", "--src", src], True, None),
            "naive_10win": ([sys.executable, here, "--contender", "naive_10win", "--src", src], True, None),
            "build_cnn_1": (ichprep + ["--out", os.path.join(work, "cnn1.zarr"), "--preset", "cnn", "--workers", "1"], True, "cnn1.zarr"),
            "build_cnn_2": (ichprep + ["--out", os.path.join(work, "cnn2.zarr"), "--preset", "cnn", "--workers", "2"], False, "cnn2.zarr"),
            "build_rnn_1": (ichprep + ["--out", os.path.join(work, "rnn1.zarr"), "--preset", "rnn", "--workers", "1"], True, "rnn1.zarr"),
            "build_hu_1": (ichprep + ["--out", os.path.join(work, "hu1.zarr"), "--preset", "hu", "--workers", "1"], True, "hu1.zarr"),
        }
        only = set(a.only.split(",")) if a.only else set(contenders)
        runs = {name: [] for name in contenders if name in only}
        for rnd in range(a.rounds):
            for name in runs:
                cmd, pin, store = contenders[name]
                if store:
                    shutil.rmtree(os.path.join(work, store), ignore_errors=True)
                os.sync()  # the previous contender's writes are on disk before this one starts
                wall, peak, _ = _run(cmd, pin)
                run = dict(seconds=wall, peak=peak)
                if store:
                    run["size"] = _store_size(os.path.join(work, store))
                    if name.startswith("build"):
                        run["pixels_s"] = _build_timings(os.path.join(work, store)).get("pixels")
                runs[name].append(run)
                print(f"  round {rnd + 1}/{a.rounds} {name:<12} {n / wall:>8.1f} slices/s  peak RSS "
                      f"{peak / 2**20:>7.1f} MiB", file=sys.stderr)
        results = {}
        for name, rs in runs.items():
            walls = [r["seconds"] for r in rs]
            wall = statistics.median(walls)
            r = dict(seconds=round(wall, 3), slices_per_s=round(n / wall, 1),
                     slices_per_s_range=[round(n / max(walls), 1), round(n / min(walls), 1)],
                     rounds=len(rs), seconds_each_round=[round(w, 3) for w in walls],
                     peak_rss_mib=round(max(x["peak"] for x in rs) / 2**20, 1),
                     pinned=contenders[name][1])
            if "size" in rs[-1]:
                size = rs[-1]["size"]
                channels = 10 if "rnn" in name else 1
                r.update(store_mib=round(size / 2**20, 1), compression=round(n * 512 * 512 * channels * 2 / size, 2))
            pixels = [x["pixels_s"] for x in rs if x.get("pixels_s")]
            if pixels:
                r["pixel_pass_slices_per_s"] = round(n / statistics.median(pixels), 1)
            results[name] = r

        def ratio(x, y, key="seconds"):
            """Median over rounds of y's time / x's time in the same round (paired: a slow spell of the
            machine slows both in that round)."""
            if x not in runs or y not in runs or any(r.get(key) is None for r in runs[x] + runs[y]):
                return None
            return round(statistics.median(b[key] / a[key] for a, b in zip(runs[x], runs[y])), 2)

        ratios = {
            "build_cnn_1 / naive_a (target >= 3)": ratio("build_cnn_1", "naive_a"),
            "build_cnn_1 / decode_b (target >= 0.35)": ratio("build_cnn_1", "decode_b"),
            "build_rnn_1 / naive_10win (target >= 1.5)": ratio("build_rnn_1", "naive_10win"),
            "build_cnn_2 / build_cnn_1 (target >= 1.6)": ratio("build_cnn_2", "build_cnn_1"),
            "build_hu_1 / build_cnn_1 (target >= 1.0)": ratio("build_hu_1", "build_cnn_1"),
        }
        pixel_ratio = ratio("build_cnn_2", "build_cnn_1", "pixels_s")  # None unless both builds timed their pixel pass
        if pixel_ratio is not None:
            ratios["pixel pass only: build_cnn_2 / build_cnn_1"] = pixel_ratio
        projection = {}
        if "build_hu_1" in results and "build_cnn_1" in results:
            ratios["store bytes: build_hu_1 / build_cnn_1 (target <= 0.75)"] = round(
                results["build_hu_1"]["store_mib"] / results["build_cnn_1"]["store_mib"], 2)
        for name in ("build_cnn_1", "build_rnn_1", "build_hu_1"):
            if name in results:
                r = results[name]
                hours = FULL_DATASET / r["slices_per_s"] / 3600
                projection[name] = dict(hours_one_core=round(hours, 2),
                                        disk_gib=round(r["store_mib"] / n * FULL_DATASET / 1024, 1))
        data = "synthetic" if not a.data else f"{a.data} x{a.replicate}" if a.replicate > 1 else a.data
        report = dict(machine=dict(cpus=os.cpu_count(), python=platform.python_version(), platform=platform.platform()),
                      slices=n, data=data, rounds=a.rounds, results=results, ratios=ratios, projection_full_dataset=projection)
        print(f"\nIngest benchmark: {n} slices ({report['data']}), {os.cpu_count()} cores, "
              f"median of {a.rounds} round{'s' if a.rounds > 1 else ''}\n")
        print("| contender | slices/s | range | pixel pass slices/s | peak RSS MiB | store MiB | compression |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            lo, hi = r["slices_per_s_range"]
            print(f"| {name} | {r['slices_per_s']:.1f} | {lo:.0f}-{hi:.0f} | {r.get('pixel_pass_slices_per_s', '')} | "
                  f"{r['peak_rss_mib']:.0f} | {r.get('store_mib', '')} | {r.get('compression', '')} |")
        print()
        for k, v in ratios.items():
            print(f"  {k}: {v}")
        for k, v in projection.items():
            print(f"  full data set ({FULL_DATASET:,} slices) with {k}: {v['hours_one_core']} h on one core "
                  f"(÷ cores added), {v['disk_gib']} GiB")
        write_report(a.json, report)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
