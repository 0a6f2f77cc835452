"""Load (issue 19): a 16,384-slice build on a local cluster of 2 workers, one worker killed every ~5 s,
completes with a store identical to an undisturbed build's, and memory stays flat. Slow (several minutes,
~8 GB of DICOMs in the temporary folder): ``python -m pytest -m slow tests/test_load_slow.py``."""

import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zarr

from ichprep.synth import SynthConfig, write_corpus

pytestmark = pytest.mark.slow

SLICES, COPIES = 16_384, 32  # 512 synthetic slices, each replicated as 32 new series
KILL_EVERY_S = 5.0


def _build(src, out, workers):
    return [sys.executable, "-m", "ichprep.cli", "build", src, "--out", out, "--workers", str(workers),
            "--salt", "fixed", "--quiet"]


def test_a_16k_build_with_a_worker_killed_every_5_s_completes_identical_with_flat_memory(tmp_path):
    import psutil

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from ingest import replicate

    base = write_corpus(tmp_path / "base", SynthConfig(studies=16, slices=SLICES // COPIES // 16, seed=19))
    src = replicate(base["dicom_dir"], str(tmp_path / "dicom"), COPIES)
    assert len(os.listdir(src)) == SLICES
    calm = str(tmp_path / "calm.zarr")
    assert subprocess.run(_build(src, calm, 2), capture_output=True, timeout=3600).returncode == 0

    out = str(tmp_path / "load.zarr")
    proc = psutil.Popen(_build(src, out, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kills, rss = [], []  # (time, MiB of the build's own process, MiB of it and its workers together)
    stop = threading.Event()

    def watch():
        next_kill = time.monotonic() + KILL_EVERY_S
        while not stop.is_set():
            try:
                children = [c for c in proc.children() if c.is_running()]
                own = proc.memory_info().rss / 2**20
                total = own + sum(c.memory_info().rss for c in children) / 2**20
                rss.append((time.monotonic(), own, total))
                workers = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
                if time.monotonic() >= next_kill and workers and os.path.isdir(os.path.join(out, "shard_done")):
                    victim = random.Random(len(kills)).choice(workers)
                    victim.kill()
                    kills.append(victim.pid)
                    next_kill = time.monotonic() + KILL_EVERY_S
            except psutil.Error:
                pass
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out_text, err_text = proc.communicate(timeout=3600)
    stop.set()
    watcher.join()
    assert proc.returncode == 0, err_text[-3000:]
    assert len(kills) >= 3, f"only {len(kills)} workers were killed: the build ended too soon to test anything"
    a, b = zarr.open_group(calm, mode="r"), zarr.open_group(out, mode="r")
    for name in ("labels", "type", "sop_uid", "hu_min", "hu_max", "status", "shard_done"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    S = a["images"].shards[0]
    for lo in range(0, SLICES, S):  # shard by shard: 16k slices do not fit in memory twice
        np.testing.assert_array_equal(a["images"][lo:lo + S].view(np.uint16), b["images"][lo:lo + S].view(np.uint16))
    t = np.array([r[0] for r in rss])
    own, total = np.array([r[1] for r in rss]), np.array([r[2] for r in rss])
    half = t >= t[0] + (t[-1] - t[0]) / 2
    print(f"\nload: {len(kills)} workers killed; build process RSS peak {own[~half].max():.0f} MiB (first half) vs "
          f"{own[half].max():.0f} MiB (second half); with workers {total[~half].max():.0f} vs {total[half].max():.0f} MiB; "
          f"{out_text.strip()}")
    assert own[half].max() <= own[~half].max() * 1.2 + 50, "the build process's memory grows"
    assert total[half].max() <= total[~half].max() * 1.2 + 100, "the build's memory grows"
