"""Where a build's tasks run: a Dask cluster (local by default, or the user's), or inline; and how big
they are. Tasks are plain functions of picklable arguments; this module knows nothing of DICOM or Zarr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
from typing import Callable, Iterator, TextIO

import numpy as np

from ichprep.errors import UsageError
from ichprep.kernels import channel_params, hu_slice, window_slice, without_blas_probe
from ichprep.windows import parse_windows

__all__ = ["executor", "task_size", "shrinking_groups", "reuse_freed_memory", "local_start_method",
           "warm_up_kernels", "SCAN_BATCH", "SHARDS_PER_TASK_MAX", "TASKS_PER_WORKER"]

# Task sizes: each Dask task costs the parent process milliseconds of CPU, and the parent shares the cores
# with the workers, so tasks are as large as still leaves ~TASKS_PER_WORKER per worker thread; the pixel
# pass's last tasks shrink to single shards (see shrinking_groups), so that the workers finish together.
SCAN_BATCH = (256, 4096)  # files per header-pass task: at least, at most (a file takes ~0.1 ms)
SHARDS_PER_TASK_MAX = 4  # shards per pixel-pass task (a 48-slice cnn shard takes ~85 ms on one core)
TASKS_PER_WORKER = 8


def task_size(items: int, workers: int, least: int, most: int) -> int:
    """Items per task: ``items / (TASKS_PER_WORKER * workers)`` clamped to [least, most]."""
    return max(least, min(most, items // (TASKS_PER_WORKER * max(workers, 1))))


def shrinking_groups(items: list, workers: int, most: int) -> list[list]:
    """``items`` in order, cut into tasks of ``ceil(remaining / (2 * workers))`` items, at most ``most``:
    full-size tasks while much remains, then smaller ones, the last ones single items, so that the
    workers finish together. (With equal 4-shard tasks, one of two workers sat idle for the last ~0.2 s
    of a 4.3 s pixel pass, waiting for the other's final task.)"""
    groups, i = [], 0
    while i < len(items):
        size = max(1, min(most, -(-(len(items) - i) // (2 * max(workers, 1)))))
        groups.append(items[i:i + size])
        i += size
    return groups


@functools.cache  # process-wide setting: once per process is enough
def reuse_freed_memory() -> bool:
    """glibc only: serve blocks up to 32 MiB from the heap and keep up to 256 MiB of freed heap for reuse.

    By default glibc maps every block of 32 MiB or more afresh and unmaps it when freed, so each shard's
    buffers came back as new page faults (the gain is in docs/performance.md). Applied to processes ichprep owns
    (an in-process build, local-cluster workers) and to a process that opens an ``ichtrain`` stream, never to the
    workers of a cluster the user brings (``--scheduler``). Returns whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def local_start_method() -> str:
    """How a local cluster starts its worker processes: ``fork`` on Linux, Dask's setting elsewhere.

    A spawned worker imports Dask, ichprep, zarr and numba and loads the compiled kernels afresh: with
    two workers that cost ~1.5 s to start the cluster, ~0.7 s before the first tasks ran and ~0.6 s to
    close it (4.4 s of CPU), more than a 4,096-slice build's pixel pass gains from the second core.
    Forked workers inherit all of it: 0.11 s, 0.04 s and 0.03 s. The process forking holds no locks
    the workers need (zarr resets its I/O loop after a fork; ichprep starts no threads of its own); a
    process that has loaded TensorFlow (``ichtrain predict``) spawns instead, as TensorFlow's thread pools
    are not safe to fork."""
    if sys.platform.startswith("linux") and "tensorflow" not in sys.modules:
        return "fork"
    import dask
    import distributed  # noqa: F401  (registers the distributed.* config defaults)

    return dask.config.get("distributed.worker.multiprocessing-method")


def warm_up_kernels(skip_blas_probe: bool = False) -> None:
    """Load the compiled window kernel (from numba's cache) for the common raw dtypes; the first call in a
    process costs ~0.2-0.6 s, later ones nothing. ``skip_blas_probe``: see :func:`without_blas_probe`."""
    with without_blas_probe() if skip_blas_probe else contextlib.nullcontext():
        for dtype in (np.uint16, np.int16):
            for preset in ("cnn", "rnn"):
                window_slice(np.zeros((2, 2), dtype), 1.0, 0.0, False, *channel_params(parse_windows(preset), 40, 80))
            hu_slice(np.zeros((2, 2), dtype), 1.0, 0.0, False)


def debug_logging() -> bool:
    """Whether --debug (or ICHPREP_DEBUG) asked for libraries' own logs and tracebacks."""
    return os.environ.get("ICHPREP_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def executor(workers: int, scheduler: str | None, console: TextIO | None,
              dashboard: str | None = None) -> Iterator[Callable]:
    """Yields ``run(fn, arglists, on_result)``: runs fn(*args) for each args, calling
    ``on_result(args, value)`` as each finishes (in completion order). A task that fails raises here.
    On a cluster, a task whose value is None (the scheduler reports its type) is not fetched: a fetch
    costs this process ~1.5 ms of CPU, and it shares the cores with the workers. The dashboard's address
    is written to ``console`` when one runs."""
    if dashboard is not None:
        try:
            import bokeh  # noqa: F401  (Dask's dashboard is a bokeh server)
        except ImportError:
            raise UsageError("--dashboard needs bokeh: pip install 'ichprep[dashboard]' (or bokeh>=3.1)") from None
    elif scheduler is None and workers <= 1:  # one worker: no cluster (its start and per-task costs buy nothing)
        def run_inline(fn, arglists, on_result):
            for args in arglists:
                on_result(args, fn(*args))
        run_inline.workers = 0  # no Dask worker threads: everything runs here
        yield run_inline
        return
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"Cannot reach the Dask scheduler at {scheduler!r} ({exc}). Start it, or omit --scheduler.") from None
    else:
        start_method = local_start_method()
        with dask.config.set({"distributed.worker.multiprocessing-method": start_method}):
            if start_method == "fork":
                warm_up_kernels()  # loaded once here, inherited by every forked worker
            # No --dashboard: no dashboard, and the scheduler's HTTP server on a free port (by default it takes
            # :8787 and warns when another Dask holds it). Dask's own logging of a task's failure (a full
            # traceback per worker) stays quiet: the failure reaches the user as one line; --debug shows it.
            cluster = LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True,
                                   dashboard_address=dashboard,
                                   scheduler_kwargs=None if dashboard is not None else {"dashboard_address": ":0"},
                                   silence_logs=logging.ERROR if debug_logging() else logging.CRITICAL)
        client = Client(cluster)
    if console is not None and (scheduler or dashboard is not None):
        where = f"scheduler {scheduler}" if scheduler else f"a local cluster of {max(workers, 1)} workers"
        link = client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None
        console.write(f"dask: using {where}" + (f", dashboard {link}" if link else ", no dashboard") + "\n")
        console.flush()

    def run_dask(fn, arglists, on_result):
        futures = [client.submit(fn, *args, pure=False) for args in arglists]
        args_of = {fut.key: args for fut, args in zip(futures, arglists)}
        try:
            for fut in as_completed(futures):
                if fut.status == "finished" and fut.type is type(None):
                    value = None  # known without fetching it
                else:
                    value = fut.result()  # raises the task's error (or CancelledError)
                on_result(args_of[fut.key], value)
                fut.release()
        finally:
            for f in futures:
                f.cancel()

    # Worker threads that run tasks at once (a --scheduler cluster's workers may have several each).
    run_dask.workers = max(1, sum(client.nthreads().values()))
    try:
        yield run_dask
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
