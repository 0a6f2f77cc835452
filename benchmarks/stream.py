"""Streaming benchmark: slices/s delivered to a consumer that only touches each batch, in one run.

Contenders (each in its own process, on the same stores / the same DICOMs, warm page cache, each pinned
to one core unless ``--unpinned``: the figures are per core):
  floor         contiguous shard reads + decompression in a loop, nothing else: what no stream can beat
  npy_loop      what users pick instead of a store: per-slice float16 ``.npy`` files, ``np.load`` of 32
                drawn at random, ``np.stack`` into a batch (the loop a per-slice file cache runs)
  naive_tfdata  tf.data.Dataset.from_generator over the DICOM files: per slice dcmread + pixel_array +
                HU + min-max (cnn) or the 10 windows (rnn) -- what people do when they skip preprocessing
  zarr_loop     plain zarr indexing in a Python loop: images[i] for shuffled i, stacked into batches
  ichtrain      ichtrain.data.StoreStream(...).dataset("train"), float32 batches: weighted sampling,
                shard reads, tf.data
  ichtrain_f16  the same, float16 batches (what an accelerator is handed; it casts on the device)
  ichtrain_k1, ichtrain_k2  float32 with neighbours=1 / 2 (2.5D: slices z-k .. z+k as channels; cnn only)
  ichtrain_cnn, ichtrain_rnn (+ _f16)  an hu store read with windows applied in the reader (host)
  hu_to_model   an hu store read for windows in the model (``windows_on="model"``): the stored int16 slices
                and each row's window bounds, what crosses to the accelerator whatever the windows
  hu_model_cpu  the same, with the model's windowing layer (cnn window) run on this CPU per batch: what
                ``--windows-on model`` costs where no accelerator takes the layer (why ``auto`` picks reader)
  ichtrain_last, ichtrain_rnn_last (+ _f16)  ten windows as the channels of one image (rnn / hu store)
  three_k0_f16, three_k1_f16, three_k2_f16  the winners' inputs from an hu store: three windows (brain,
                subdural, bone) as channels, with k neighbour slices each side; ichtrain_cnn_k1_f16 and
                ichtrain_cnn_k2_f16 one window with neighbours: each against ichtrain_cnn_f16 is its stream cost
  disk          (``--cold`` only) the store's image files read whole, in order, 1 MiB at a time: what the
                disk gives sequentially (``dd`` of the shard files), as slices/s
With ``--cold`` every contender starts with the store (and the .npy files, and the DICOMs) dropped from the
page cache (written back, then ``posix_fadvise(DONTNEED)``), so each reads from the disk, as a store larger
than memory is read.
Stores: ``cnn`` (default codec), ``cnn-none`` (``--codec none``: the .npy loop's uncompressed peer), ``rnn``.
Each reports slices/s and RSS at the start, middle and end of the epoch (memory must stay flat). The clock
starts after each contender's first ``WARMUP_BATCHES`` batches (pipeline start-up, paid once per run).

Usage: python benchmarks/stream.py [--slices 1024] [--preset cnn|rnn|hu|rnn,hu|both] [--batch-size 32]
       [--data DIR [--replicate K]] [--unpinned] [--json out.json]
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

THREE_WINDOWS = "brain:40/80,subdural:80/200,bone:600/2800"  # the winners' windows (--recipe winners)
WINDOWS = [(40, 80), (50, 130), (75, 215), (100, 300), (20, 350), (40, 375), (60, 400), (600, 2800), (32, 8)]


def _rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# Batches consumed before the clock starts, by every contender alike: a stream's first batch waits for its
# pipeline to start (~90 ms for ichtrain's, 15% of a 2,048-slice run at one core), which is start-up, not
# throughput; a training run pays it once.
WARMUP_BATCHES = 4


def _warmup_slices(batch):
    return WARMUP_BATCHES * batch


def _consume(batches, n_target, warmup=0):
    """Touch each batch; return slices seen after the first ``warmup`` slices, the seconds they took, RSS
    samples at start / middle / end, and the CPU seconds the process spent meanwhile (all its threads)."""
    batches = iter(batches)
    skipped = 0
    while skipped < warmup:
        x, _ = next(batches)
        skipped += int((x[0] if isinstance(x, tuple) else x).shape[0])
    seen, rss, t0, c0 = 0, [_rss_mib()], time.perf_counter(), time.process_time()
    for x, _ in batches:
        seen += int((x[0] if isinstance(x, tuple) else x).shape[0])
        if len(rss) == 1 and seen >= n_target // 2:
            rss.append(_rss_mib())
        if seen >= n_target:
            break
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss.append(_rss_mib())
    return seen, dt, rss, cpu


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
    return _consume(ds, n, _warmup_slices(batch))


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

    return _consume(batches(), n, _warmup_slices(batch))


def run_floor(store, dicom, preset, batch, n):
    """Whole shards in random order, decoded into one array each: the read + decompress floor."""
    import numpy as np
    import zarr

    from ichprep.store import fast_codec_pipeline

    with fast_codec_pipeline():  # the pipeline the stream reads with
        a = zarr.open_group(store, mode="r")["images"]
    S = a.shards[0]
    order = np.random.default_rng(0).permutation(-(-a.shape[0] // S))

    def batches():
        i = 0
        while True:
            lo = int(order[i % len(order)]) * S
            yield np.asarray(a[lo:lo + S]), None
            i += 1

    return _consume(batches(), n, _warmup_slices(batch))


def run_npy_loop(store, dicom, preset, batch, n):
    """Batches of ``batch`` per-slice .npy files drawn at random (the files :func:`export_npy` wrote)."""
    import numpy as np

    files = sorted(glob.glob(os.path.join(store + ".npy", "*.npy")))
    rng = np.random.default_rng(0)

    def batches():
        while True:
            yield np.stack([np.load(files[i]) for i in rng.integers(0, len(files), batch)]), None

    return _consume(batches(), n, _warmup_slices(batch))


def run_disk(store, dicom, preset, batch, n):
    """The store's image files read whole, in name order, 1 MiB at a time; slices = the store's slices."""
    import zarr

    n_slices = zarr.open_group(store, mode="r")["images"].shape[0]
    files = sorted(f for f in glob.glob(os.path.join(store, "images", "**"), recursive=True) if os.path.isfile(f))
    rss, t0, c0 = [_rss_mib()], time.perf_counter(), time.process_time()
    for k, f in enumerate(files):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(1 << 20):
                pass
        if k == len(files) // 2:
            rss.append(_rss_mib())
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss.append(_rss_mib())
    return n_slices, dt, rss, cpu


def evict(paths) -> int:
    """Drop every file under ``paths`` from the page cache (written back first: only clean pages are dropped);
    returns the bytes dropped."""
    dropped = 0
    for root in paths:
        files = glob.glob(os.path.join(root, "**"), recursive=True) if os.path.isdir(root) else [root]
        for f in files:
            if not os.path.isfile(f):
                continue
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return dropped


def export_npy(store):
    """One float16 .npy file per slice of ``store`` (the per-slice cache people write), beside it."""
    import numpy as np
    import zarr

    a = zarr.open_group(store, mode="r")["images"]
    out = store + ".npy"
    os.makedirs(out, exist_ok=True)
    for i in range(a.shape[0]):
        np.save(os.path.join(out, f"{i:07d}.npy"), np.asarray(a[i]))


def run_ichtrain(store, dicom, preset, batch, n, neighbours=0, dtype="float32", windows=None, windows_on="reader",
                 layer=False, channels_last=False, readahead=True, image_size=None, augment=None):
    from ichtrain.data import StoreStream

    if not readahead:  # the stream without its read-ahead hints (StoreStream._hinter), to measure what they give
        StoreStream._hinter = lambda self: None

    s = StoreStream(store, fractions=(1.0, 0.0, 0.0), windows=windows)  # windows: an hu store's, read-time
    warmup = _warmup_slices(batch)
    ds = s.dataset("train", batch_size=batch, epoch_size=n + warmup, alpha=0.5, neighbours=neighbours, dtype=dtype,
                   sequence=False if (neighbours or channels_last) else None, windows_on=windows_on,
                   image_size=image_size, augment=augment)
    if layer:  # the windowing layer's work on this CPU, as a model's first layer would run it
        from ichtrain.graphwindows import hu_windows_layer

        windows_layer = hu_windows_layer(s.info.image_size, sequence=s.channels > 1)
        ds = ds.map(lambda x, y: (windows_layer(x), y))
    return _consume(ds, n, warmup)


RUNNERS = {"floor": run_floor, "disk": run_disk, "npy_loop": run_npy_loop, "naive_tfdata": run_naive_tfdata,
           "zarr_loop": run_zarr_loop, "ichtrain": run_ichtrain,
           "ichtrain_f16": functools.partial(run_ichtrain, dtype="float16"),
           "ichtrain_f16_noahead": functools.partial(run_ichtrain, dtype="float16", readahead=False),
           # 2.5D: each sample with k slices of its series each side as extra channels (one-slice stores)
           "ichtrain_k1": functools.partial(run_ichtrain, neighbours=1),
           "ichtrain_k2": functools.partial(run_ichtrain, neighbours=2),
           # an hu store read with windows applied per slice as it is decoded
           "ichtrain_cnn": functools.partial(run_ichtrain, windows="cnn"),
           "ichtrain_cnn_f16": functools.partial(run_ichtrain, windows="cnn", dtype="float16"),
           "ichtrain_rnn": functools.partial(run_ichtrain, windows="rnn"),
           "ichtrain_rnn_f16": functools.partial(run_ichtrain, windows="rnn", dtype="float16"),
           # ten windows as the channels of one image (a backbone or baseline on ten windows), not a sequence
           "ichtrain_last": functools.partial(run_ichtrain, channels_last=True),
           "ichtrain_last_f16": functools.partial(run_ichtrain, channels_last=True, dtype="float16"),
           "ichtrain_rnn_last": functools.partial(run_ichtrain, windows="rnn", channels_last=True),
           "ichtrain_rnn_last_f16": functools.partial(run_ichtrain, windows="rnn", channels_last=True, dtype="float16"),
           # the winners' inputs from an hu store: three windows as channels, with k neighbour slices each side
           # (float16, channels (2k + 1) x windows); one window with neighbours is ichtrain_cnn_k*
           **{f"three_k{k}_f16": functools.partial(run_ichtrain, windows=THREE_WINDOWS, neighbours=k, dtype="float16",
                                                  channels_last=True) for k in (0, 1, 2)},
           **{f"ichtrain_cnn_k{k}_f16": functools.partial(run_ichtrain, windows="cnn", neighbours=k, dtype="float16")
              for k in (1, 2)},
           # training augmentation (--augment light) at a training size, against the same stream without it
           **{f"ichtrain_128{aug}{suffix}": functools.partial(run_ichtrain, image_size=128, dtype=dtype,
                                                            augment="light" if aug else None)
              for aug in ("", "_light") for suffix, dtype in (("", "float32"), ("_f16", "float16"))},
           # windows in the model's graph: the host hands over int16 HU (and, for the cpu one, runs the layer)
           "hu_to_model": functools.partial(run_ichtrain, windows="cnn", windows_on="model"),
           "hu_model_cpu": functools.partial(run_ichtrain, windows="cnn", windows_on="model", layer=True)}
# Which contenders run on which store: the .npy files hold the uncompressed store's slices.
PLAN = {"cnn": ("floor", "naive_tfdata", "zarr_loop", "ichtrain", "ichtrain_f16", "ichtrain_k1", "ichtrain_k2",
                "ichtrain_128", "ichtrain_128_light", "ichtrain_128_f16", "ichtrain_128_light_f16"),
        "cnn-none": ("floor", "npy_loop", "ichtrain", "ichtrain_f16", "ichtrain_f16_noahead"),
        "rnn": ("floor", "naive_tfdata", "zarr_loop", "ichtrain", "ichtrain_f16", "ichtrain_last", "ichtrain_last_f16"),
        "hu": ("floor", "ichtrain_cnn", "ichtrain_cnn_f16", "ichtrain_rnn", "ichtrain_rnn_f16", "ichtrain_rnn_last",
               "ichtrain_rnn_last_f16", "hu_to_model", "hu_model_cpu", "ichtrain_cnn_k1_f16", "ichtrain_cnn_k2_f16",
               "three_k0_f16", "three_k1_f16", "three_k2_f16")}


def _labels_for(dicom, path):
    """A label CSV for real files that have none: the benchmark needs a train split, not true labels."""
    import csv
    import warnings

    import numpy as np
    import pydicom

    rng = np.random.default_rng(0)
    subtypes = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
    with warnings.catch_warnings(), open(path, "w", newline="") as fh:
        warnings.simplefilter("ignore")
        w = csv.writer(fh)
        w.writerow(["ID", "Label"])
        for f in sorted(glob.glob(os.path.join(dicom, "*.dcm"))):
            sop = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
            hit = rng.random(5) < 0.05
            for name, v in zip(subtypes, list(hit) + [hit.any()]):
                w.writerow([f"{sop}_{name}", int(v)])
    return path


def _child(name, store, dicom, preset, a):
    cmd = [sys.executable, os.path.abspath(__file__), "--slices", str(a.n_child), "--batch-size",
           str(a.batch_size), "--child", name, store, dicom, preset]

    def pin():
        if not a.unpinned:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    res = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin)
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["slices_per_s"] = round(r["slices"] / r["seconds"], 1)
    return r


def _contenders(text: str) -> tuple:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in RUNNERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected contenders among {', '.join(RUNNERS)}; got {text!r}")
    return names


def _presets(text: str) -> str:
    if text != "both" and not set(text.split(",")) <= {"cnn", "rnn", "hu"}:
        raise argparse.ArgumentTypeError(f"expected cnn, rnn, hu, a comma list of them, or both; got {text!r}")
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=1024, help="synthetic corpus size, and slices each contender "
                                                             "delivers (default 1024)")
    p.add_argument("--preset", default="both", type=_presets,
                   help="stores to build and read: cnn, rnn, hu, a comma list such as rnn,hu (the ten-window "
                        "ratios), or both: every one (default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", help="a folder of real DICOMs instead of the synthetic corpus (random labels are made)")
    p.add_argument("--replicate", type=int, default=1, help="with --data: copies of every file, each a new series")
    p.add_argument("--unpinned", action="store_true", help="let each contender use every core (default: one core)")
    p.add_argument("--cold", action="store_true",
                   help="drop the store, .npy files and DICOMs from the page cache before every contender, and add "
                        "the 'disk' contender (the image files read in order): reads as from a store larger than "
                        "memory (Linux)")
    p.add_argument("--contenders", type=_contenders, metavar="NAME,...",
                   help=f"run only these contenders on each store (of {', '.join(RUNNERS)}; default: every one)")
    p.add_argument("--json", help="write results here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:  # child mode: NAME STORE DICOM PRESET
        name, store, dicom, preset = a.child
        seen, dt, rss, cpu = RUNNERS[name](store, dicom, preset, a.batch_size, a.slices)
        print(json.dumps(dict(slices=seen, seconds=dt, rss_mib=[round(r, 1) for r in rss],
                              cpu_share=round(cpu / dt, 2))))
        return 0
    work = tempfile.mkdtemp(prefix="ichprep-stream-")
    try:
        if a.data:
            dicom = a.data
            if a.replicate > 1:
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                from ingest import replicate

                dicom = replicate(a.data, os.path.join(work, "replicated"), a.replicate)
            labels = _labels_for(dicom, os.path.join(work, "labels.csv"))
        else:
            corpus = os.path.join(work, "corpus")
            subprocess.run([sys.executable, "-m", "ichprep.cli", "synth", corpus, "--studies",
                            str(max(1, a.slices // 32)), "--slices", "32", "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
            dicom, labels = os.path.join(corpus, "dicom"), os.path.join(corpus, "labels.csv")
        stores = [s for s in PLAN if a.preset == "both" or s.split("-")[0] in a.preset.split(",")]
        results = {}
        for kind in stores:
            preset = kind.split("-")[0]
            store = os.path.join(work, f"{kind}.zarr")
            subprocess.run([sys.executable, "-m", "ichprep.cli", "build", dicom, "--labels", labels, "--out", store,
                            "--preset", preset, "--quiet", "--salt", "bench"]
                           + (["--codec", "none"] if kind.endswith("-none") else []),
                           check=True, stdout=subprocess.DEVNULL)
            if "npy_loop" in PLAN[kind]:
                export_npy(store)
            if not a.cold:
                for f in glob.glob(os.path.join(dicom, "*.dcm")) + glob.glob(os.path.join(store, "**"), recursive=True):
                    if os.path.isfile(f):  # a warm page cache for every contender
                        with open(f, "rb") as fh:
                            fh.read()
            plan = PLAN[kind] + (("disk",) if a.cold else ())
            for name in (n for n in plan if a.contenders is None or n in a.contenders):
                if a.cold:
                    evict([store, store + ".npy", dicom])
                a.n_child = a.slices if name != "naive_tfdata" or preset == "cnn" else a.slices // 2
                r = results[f"{kind}/{name}"] = _child(name, store, dicom, preset, a)
                print(f"  {kind}/{name:<13} {r['slices_per_s']:>8.1f} slices/s  CPU {r['cpu_share']:.2f} of the time  "
                      f"RSS {r['rss_mib']}", file=sys.stderr)
        ratios = _ratios(results)
        n = len(glob.glob(os.path.join(dicom, "*.dcm")))
        print(f"\nStreaming benchmark: {n} slices, {a.slices} per contender, batch {a.batch_size}, "
              f"{'all cores' if a.unpinned else 'one core each'} ({os.cpu_count()} on the machine)"
              f"{', cold: every contender reads from the disk' if a.cold else ', warm page cache'}\n")
        # CPU: the process's CPU seconds (all threads) over the wall time: near 1 on one core, CPU-bound
        print("| contender | slices/s | / floor | CPU / time | RSS MiB start / middle / end |")
        print("|---|---|---|---|---|")
        for k, r in results.items():
            floor = results.get(k.split("/")[0] + "/floor", {}).get("slices_per_s")
            rel = f"{r['slices_per_s'] / floor:.2f}" if floor else ""
            rss = " / ".join(str(x) for x in r["rss_mib"])
            print(f"| {k} | {r['slices_per_s']} | {rel} | {r['cpu_share']} | {rss} |")
        print()
        for k, v in ratios.items():
            print(f"  {k}: {v}")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(dict(slices=a.slices, batch_size=a.batch_size, pinned=not a.unpinned, cold=a.cold, results=results,
                               ratios=ratios), fh, indent=2)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ratios(results):
    """The issue's targets as ratios of contenders measured in this run."""
    def r(num, den):
        if num in results and den in results:
            return round(results[num]["slices_per_s"] / results[den]["slices_per_s"], 2)
        return None

    out = {
        "cnn: ichtrain / naive_tfdata (target >= 5)": r("cnn/ichtrain", "cnn/naive_tfdata"),
        "cnn: ichtrain / zarr_loop": r("cnn/ichtrain", "cnn/zarr_loop"),
        "cold cnn: ichtrain_f16 / the disk's sequential read": r("cnn/ichtrain_f16", "cnn/disk"),
        "cold cnn-none: ichtrain_f16 / the disk's sequential read": r("cnn-none/ichtrain_f16", "cnn-none/disk"),
        "cold hu: ichtrain_cnn_f16 / the disk's sequential read": r("hu/ichtrain_cnn_f16", "hu/disk"),
        "cnn-none: ichtrain_f16 / npy_loop (target >= 0.8)": r("cnn-none/ichtrain_f16", "cnn-none/npy_loop"),
        "cnn-none: ichtrain_f16 / without read-ahead hints": r("cnn-none/ichtrain_f16",
                                                               "cnn-none/ichtrain_f16_noahead"),
        "cnn-none: ichtrain / npy_loop": r("cnn-none/ichtrain", "cnn-none/npy_loop"),
        "cnn: ichtrain_f16 / floor (target >= 0.8)": r("cnn/ichtrain_f16", "cnn/floor"),
        # what --augment light leaves of the stream at 128 px (target: costs <= 25%, so >= 0.75)
        "cnn: 128 px light augmentation / none (target >= 0.75)": r("cnn/ichtrain_128_light", "cnn/ichtrain_128"),
        "cnn: 128 px light augmentation / none, f16 (target >= 0.75)": r("cnn/ichtrain_128_light_f16",
                                                                          "cnn/ichtrain_128_f16"),
        "cnn: ichtrain / floor": r("cnn/ichtrain", "cnn/floor"),
        "rnn: ichtrain / naive_tfdata": r("rnn/ichtrain", "rnn/naive_tfdata"),
        "rnn: ichtrain_f16 / floor": r("rnn/ichtrain_f16", "rnn/floor"),
        "hu: ten windows / rnn store's stream (target >= 3)": r("hu/ichtrain_rnn", "rnn/ichtrain"),
        "hu: ten windows f16 / rnn store's f16": r("hu/ichtrain_rnn_f16", "rnn/ichtrain_f16"),
        "hu: ten windows / rnn naive_tfdata (target >= 5)": r("hu/ichtrain_rnn", "rnn/naive_tfdata"),
        # what any stream of the rnn store could at best deliver: its shards read and decompressed, nothing else
        "hu: ten windows f16 / rnn store's floor": r("hu/ichtrain_rnn_f16", "rnn/floor"),
        "hu: ten windows channels-last / rnn store's channels-last (target >= 1)": r("hu/ichtrain_rnn_last",
                                                                                     "rnn/ichtrain_last"),
        "hu: ten windows channels-last f16 / rnn store's channels-last f16 (target >= 1)": r(
            "hu/ichtrain_rnn_last_f16", "rnn/ichtrain_last_f16"),
        # what the winners' inputs cost the stream: each against one window without neighbours, float16
        **{f"hu: {name} / one window (stream cost)": r(f"hu/{name}", "hu/ichtrain_cnn_f16")
           for name in ("ichtrain_cnn_k1_f16", "ichtrain_cnn_k2_f16", "three_k0_f16", "three_k1_f16", "three_k2_f16")},
        "hu: cnn windows / cnn store's stream (target >= 0.8)": r("hu/ichtrain_cnn", "cnn/ichtrain"),
        "hu: cnn windows f16 / cnn store's f16": r("hu/ichtrain_cnn_f16", "cnn/ichtrain_f16"),
        # windows in the model: what the host delivers to an accelerator, against the cnn store's f16 stream
        "hu: to the model (int16) / cnn store's f16 (target >= 0.8)": r("hu/hu_to_model", "cnn/ichtrain_f16"),
        "hu: to the model / ten windows f16 from the rnn store": r("hu/hu_to_model", "rnn/ichtrain_f16"),
        "hu: model's layer on this CPU / cnn windows f16 in the reader": r("hu/hu_model_cpu", "hu/ichtrain_cnn_f16"),
    }
    return {k: v for k, v in out.items() if v is not None}


if __name__ == "__main__":
    sys.exit(main())
