"""Streaming benchmark: slices/s delivered to a consumer that only touches each batch, in one run.

Contenders (each in its own process, on the same store / the same DICOMs, warm page cache):
  naive_tfdata  tf.data.Dataset.from_generator over the DICOM files: per slice dcmread + pixel_array +
                HU + min-max (cnn) or the 10 windows (rnn) -- what people do when they skip preprocessing
  zarr_loop     plain zarr indexing in a Python loop: images[i] for shuffled i, stacked into batches
  ichtrain      ichtrain.data.StoreStream(...).dataset("train"): weighted sampling, shard reads, tf.data
  ichtrain_k1, ichtrain_k2  the same with neighbours=1 / 2 (2.5D: slices z-k .. z+k as channels; cnn only)
Each reports slices/s and RSS at the start, middle and end of the epoch (memory must stay flat).

Usage: python benchmarks/stream.py [--slices 1024] [--preset cnn|rnn|both] [--batch-size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

WINDOWS = [(40, 80), (50, 130), (75, 215), (100, 300), (20, 350), (40, 375), (60, 400), (600, 2800), (32, 8)]


def _rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _consume(batches, n_target):
    """Touch each batch; return slices seen and RSS samples at start / middle / end."""
    seen, rss, t0 = 0, [_rss_mib()], time.perf_counter()
    for x, _ in batches:
        seen += int(x.shape[0])
        if len(rss) == 1 and seen >= n_target // 2:
            rss.append(_rss_mib())
        if seen >= n_target:
            break
    dt = time.perf_counter() - t0
    rss.append(_rss_mib())
    return seen, dt, rss


def run_naive_tfdata(store, dicom, preset, batch, n):
    import warnings

    import numpy as np
    import pydicom
    import tensorflow as tf

    warnings.simplefilter("ignore")
    files = sorted(glob.glob(os.path.join(dicom, "*.dcm")))
    C = 10 if preset == "rnn" else 1

    def gen():
        i = 0
        while True:
            ds = pydicom.dcmread(files[i % len(files)])
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            if C == 1:
                img = ((hu - hu.min()) / max(hu.max() - hu.min(), 1e-6))[..., None]
            else:
                wc = ds.WindowCenter
                wc = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
                ww = ds.WindowWidth
                ww = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
                img = np.stack([(np.clip(hu, c - w / 2, c + w / 2) - (c - w / 2)) / w for c, w in [(wc, ww)] + WINDOWS], -1)
            yield img.astype(np.float32), np.zeros(6, np.float32)
            i += 1

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((512, 512, C), tf.float32), tf.TensorSpec((6,), tf.float32))).batch(batch).prefetch(2)
    return _consume(ds, n)


def run_zarr_loop(store, dicom, preset, batch, n):
    import numpy as np
    import zarr

    a = zarr.open_group(store, mode="r")["images"]
    lab = zarr.open_group(store, mode="r")["labels"][:]
    order = np.random.default_rng(0).permutation(a.shape[0])

    def batches():
        i = 0
        while True:
            idx = [order[(i + k) % len(order)] for k in range(batch)]
            yield np.stack([a[j] for j in idx]).astype(np.float32), lab[idx]
            i += batch

    return _consume(batches(), n)


def run_ichtrain(store, dicom, preset, batch, n, neighbours=0):
    from ichtrain.data import StoreStream

    s = StoreStream(store, fractions=(1.0, 0.0, 0.0))
    ds = s.dataset("train", batch_size=batch, epoch_size=n, alpha=0.5, neighbours=neighbours,
                   sequence=False if neighbours else None)
    return _consume(ds, n)


RUNNERS = {"naive_tfdata": run_naive_tfdata, "zarr_loop": run_zarr_loop, "ichtrain": run_ichtrain,
           # 2.5D: each sample with k slices of its series each side as extra channels (one-slice stores)
           "ichtrain_k1": functools.partial(run_ichtrain, neighbours=1),
           "ichtrain_k2": functools.partial(run_ichtrain, neighbours=2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=1024, help="synthetic corpus size (default 1024)")
    p.add_argument("--preset", choices=("cnn", "rnn", "both"), default="both")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", help="write results here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # child mode: NAME STORE DICOM PRESET
        name, store, dicom, preset = a.child
        seen, dt, rss = RUNNERS[name](store, dicom, preset, a.batch_size, a.slices)
        print(json.dumps(dict(slices=seen, seconds=dt, rss_mib=[round(r, 1) for r in rss])))
        return 0
    work = tempfile.mkdtemp(prefix="ichprep-stream-")
    try:
        studies = max(1, a.slices // 32)
        corpus = os.path.join(work, "corpus")
        subprocess.run([sys.executable, "-m", "ichprep.cli", "synth", corpus, "--studies", str(studies), "--slices",
                        "32", "--quiet"], check=True, stdout=subprocess.DEVNULL)
        dicom = os.path.join(corpus, "dicom")
        presets = ("cnn", "rnn") if a.preset == "both" else (a.preset,)
        results = {}
        for preset in presets:
            store = os.path.join(work, f"{preset}.zarr")
            subprocess.run([sys.executable, "-m", "ichprep.cli", "build", dicom, "--labels",
                            os.path.join(corpus, "labels.csv"), "--out", store, "--preset", preset, "--quiet"],
                           check=True, stdout=subprocess.DEVNULL)
            for f in glob.glob(os.path.join(dicom, "*.dcm")):
                open(f, "rb").read()
            for name in RUNNERS:
                if name.startswith("ichtrain_k") and preset != "cnn":
                    continue
                n = a.slices if name != "naive_tfdata" or preset == "cnn" else a.slices // 2
                res = subprocess.run([sys.executable, os.path.abspath(__file__), "--slices", str(n), "--batch-size",
                                      str(a.batch_size), "--child", name, store, dicom, preset],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r["slices_per_s"] = round(r["slices"] / r["seconds"], 1)
                results[f"{preset}/{name}"] = r
                print(f"  {preset}/{name:<13} {r['slices_per_s']:>8.1f} slices/s  RSS {r['rss_mib']}", file=sys.stderr)
        ratios = {}
        for preset in presets:
            base = results[f"{preset}/naive_tfdata"]["slices_per_s"]
            ratios[f"{preset}: ichtrain / naive_tfdata (target >= 5 for cnn)"] = round(
                results[f"{preset}/ichtrain"]["slices_per_s"] / base, 2)
            ratios[f"{preset}: ichtrain / zarr_loop"] = round(
                results[f"{preset}/ichtrain"]["slices_per_s"] / results[f"{preset}/zarr_loop"]["slices_per_s"], 2)
        print(f"\nStreaming benchmark: {a.slices} slices, batch {a.batch_size}, {os.cpu_count()} cores\n")
        print("| contender | slices/s | RSS MiB start / middle / end |")
        print("|---|---|---|")
        for k, r in results.items():
            print(f"| {k} | {r['slices_per_s']} | {' / '.join(str(x) for x in r['rss_mib'])} |")
        print()
        for k, v in ratios.items():
            print(f"  {k}: {v}")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(dict(slices=a.slices, batch_size=a.batch_size, results=results, ratios=ratios), fh, indent=2)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
