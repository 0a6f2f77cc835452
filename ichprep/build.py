"""``ichprep build``: scan -> order -> plan shards -> Dask tasks of whole shards -> finalise.

The unit of work is one whole shard: a task decodes, windows and writes every slice of its shards (one
to four, see :func:`task_size`), so no two tasks ever write the same shard file. A build is resumable:
each shard is marked done after it is written, a rerun of the same command skips those, and the store
is marked complete only in the last step.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO

import numpy as np

from ichprep import __version__
from ichprep import store as st
from ichprep.decode import ReadBuffer, read_raw
from ichprep.errors import (
    REASON_NAMES,
    REJECT_REASONS,
    IchprepError,
    IncompleteStoreError,
    RejectError,
    SourceError,
    StoreError,
    StoreExistsError,
    StrictRejectError,
    UsageError,
)
from ichprep.kernels import channel_params, window_slice, without_blas_probe
from ichprep.labels import UNLABELLED, inconsistent_any, read_labels, type_codes
from ichprep.progress import ProgressBar
from ichprep.salt import resolve_salt
from ichprep.scan import SliceHeader, read_header
from ichprep.windows import Window, parse_windows, windows_from_list, windows_to_list

__all__ = ["BuildConfig", "BuildResult", "build", "SIZE_POLICIES", "fit_size"]

SIZE_POLICIES = ("resize", "pad", "reject")
# Task sizes. A Dask task costs the parent process (scheduler, nannies, client) ~5 ms of CPU here and its
# worker a little more, and on a 2-core machine the parent shares the cores with the workers: on 16,384
# files the header pass took 1.17-1.48 s in 256-file tasks and 0.87-0.90 s in 1,024-file ones. Tasks are
# made as large as still leaves ~TASKS_PER_WORKER of them per worker thread; the pixel pass's last tasks
# shrink to single shards (see shrinking_groups), so that the workers finish together.
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


log = logging.getLogger("ichprep")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines a build. Validates itself; ``params()`` is what a resume must match."""

    source: str
    out: str
    labels: str | None = None
    windows: tuple[Window, ...] = field(default_factory=lambda: parse_windows("cnn"))
    preset: str | None = "cnn"
    on_size: str = "resize"
    # 48 x 512 KiB = 24 MiB for cnn: shard buffers stay under glibc's 32 MiB mmap ceiling (see
    # reuse_freed_memory); 64 made them exactly 32 MiB, each mapped and faulted in afresh.
    shard_slices: int = 48
    codec: str = "auto"
    workers: int = 2
    scheduler: str | None = None
    dashboard: str | None = None  # address of a local cluster's Dask dashboard (":8787"); None: none
    salt: str | None = None
    overwrite: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if self.on_size not in SIZE_POLICIES:
            raise UsageError(f"Expected --on-size one of {', '.join(SIZE_POLICIES)}. Received: on_size={self.on_size!r}")
        if not isinstance(self.shard_slices, int) or not 1 <= self.shard_slices <= 4096:
            raise UsageError(f"Expected --shard-slices an integer in [1, 4096]. Received: shard_slices={self.shard_slices!r}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 256:
            raise UsageError(f"Expected --workers an integer in [0, 256] (0 = run in this process). Received: workers={self.workers!r}")
        if self.codec not in st.CODECS:
            raise UsageError(f"Expected --codec one of {', '.join(st.CODECS)}. Received: codec={self.codec!r}")
        if not self.windows:
            raise UsageError("Expected at least one window. Received: windows=()")
        if self.dashboard is not None and self.scheduler:
            raise UsageError("--dashboard starts a local cluster's dashboard; an existing scheduler (--scheduler) "
                             "serves its own. Received both.")

    def params(self) -> dict:
        """Parameters that define the store's content (not how it is computed)."""
        return dict(
            source=os.path.abspath(self.source),
            labels=os.path.abspath(self.labels) if self.labels else None,
            windows=windows_to_list(self.windows),
            on_size=self.on_size,
            shard_slices=self.shard_slices,
            codec=self.codec,
        )


@dataclass
class BuildResult:
    out: str
    written: int = 0
    rejected: int = 0
    reject_reasons: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    shards_total: int = 0
    shards_run: int = 0
    resumed: bool = False
    already_complete: bool = False
    seconds: float = 0.0
    unlabelled: int = 0
    labels_without_file: int = 0
    warnings: dict = field(default_factory=dict)
    # Wall seconds of this run's phases: start (listing, output checks, workers up), headers (the header
    # pass), prepare (ordering, labels, creating the store), pixels (the pixel pass), finish (workers
    # down, manifest).
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        if self.already_complete:
            return f"{self.out}: already complete ({self.written} slices); nothing to do (use --overwrite to rebuild)"
        parts = [f"{self.written} written, {self.rejected} rejected"]
        if self.reject_reasons:
            parts[-1] += ": " + ", ".join(f"{n} {r}" for r, n in sorted(self.reject_reasons.items(), key=lambda x: -x[1]))
        if self.fixed:
            parts.append("fixed: " + ", ".join(f"{n} {k}" for k, n in sorted(self.fixed.items())))
        if self.unlabelled:
            parts.append(f"{self.unlabelled} without labels")
        if self.labels_without_file:
            parts.append(f"{self.labels_without_file} labelled slices not found in the source")
        if self.warnings:
            parts.append("pydicom warnings: " + ", ".join(f"{n}x {k!r}" for k, n in self.warnings.items()))
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        phases = ", ".join(f"{k} {self.timings[k]:.1f} s" for k in ("headers", "pixels") if k in self.timings)
        parts.append(f"{self.seconds:.1f} s ({rate:,.0f} slices/s" + (f"; {phases}" if phases else "") + ")"
                     + (" [resumed]" if self.resumed else ""))
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Source listing and the header pass


def list_source(source: str) -> list[str]:
    """Every regular, non-hidden file under ``source`` (recursively), sorted."""
    if not os.path.isdir(source):
        raise SourceError(f"DICOM folder not found: {source!r}. Pass an existing folder of .dcm files.")
    paths = []
    for dirpath, dirnames, files in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(os.path.join(dirpath, f) for f in files if not f.startswith("."))
    if not paths:
        raise SourceError(f"DICOM folder {source!r} is empty: nothing to build.")
    return sorted(paths)


def _scan_batch(paths: list[str], salt: str, needs_default: bool, on_size: str):
    headers: list[SliceHeader] = []
    rejects: list[tuple[str, str, str]] = []
    warns: Counter = Counter()
    for p in paths:
        try:
            h = read_header(p, salt, warns)
            if needs_default and (h.window_center is None or not (h.window_width or 0) > 0):
                raise RejectError("no_window", "WindowCenter/WindowWidth (0028,1050/1051) missing or invalid, "
                                               "and the windows include 'default'")
            if on_size == "reject" and (h.rows, h.columns) != (st.IMAGE_SIZE, st.IMAGE_SIZE):
                raise RejectError("bad_size", f"{h.rows} x {h.columns} is not {st.IMAGE_SIZE} x {st.IMAGE_SIZE} "
                                              "(--on-size reject)")
            headers.append(h)
        except RejectError as exc:
            rejects.append((p, exc.reason, exc.message))
    return headers, rejects, warns


# --------------------------------------------------------------------------------------------
# The pixel pass


def fit_size(img: np.ndarray, policy: str, size: int = st.IMAGE_SIZE) -> np.ndarray:
    """Bring a 2-D float32 HU slice to ``size`` x ``size``.

    ``resize``: bilinear (pixel centres aligned, as ``align_corners=False``), keeps the whole field of
    view. ``pad``: centre pad with the slice's minimum HU, centre crop where larger.
    """
    h, w = img.shape
    if (h, w) == (size, size):
        return img
    if policy == "pad":
        out = np.full((size, size), img.min(), np.float32)
        sy, sx = max(0, (h - size) // 2), max(0, (w - size) // 2)  # source crop start
        dy, dx = max(0, (size - h) // 2), max(0, (size - w) // 2)  # destination start
        ch, cw = min(h, size), min(w, size)
        out[dy:dy + ch, dx:dx + cw] = img[sy:sy + ch, sx:sx + cw]
        return out
    if policy == "resize":
        def coords(n_in):
            c = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
            c = np.clip(c, 0, n_in - 1)
            i0 = np.floor(c).astype(np.intp)
            i1 = np.minimum(i0 + 1, n_in - 1)
            return i0, i1, (c - i0).astype(np.float32)
        y0, y1, fy = coords(h)
        x0, x1, fx = coords(w)
        rows = img[y0] * (1 - fy)[:, None] + img[y1] * fy[:, None]
        return (rows[:, x0] * (1 - fx) + rows[:, x1] * fx).astype(np.float32)
    raise UsageError(f"Expected a size policy in {SIZE_POLICIES}. Received: {policy!r}")


def _hu_float(raw: np.ndarray, h: SliceHeader) -> np.ndarray:
    """Plain numpy HU (used only for the rare slices that need resizing or padding first)."""
    x = raw.astype(np.float32)
    if h.fix12:
        x = x + 1000
        x[x >= 4096] -= 4096
    return x * np.float32(h.slope) + np.float32(h.effective_intercept)


@functools.cache  # process-wide setting: once per process is enough
def reuse_freed_memory() -> bool:
    """glibc only: serve blocks up to 32 MiB from the heap and keep up to 256 MiB of freed heap for reuse.

    By default glibc maps every block of 32 MiB (a cnn shard buffer, and the copies zarrs makes of it) or
    more afresh and unmaps it when freed, so each shard's buffers came back as new pages: ~220 page
    faults per slice, a quarter of a one-core cnn build's time in system calls. Measured on 4,096 real
    slices, one pinned core, median of 3 pairs: wall time x0.84 and system time 4.7 -> 2.0 s (with
    48-slice shards, whose buffers fit under the 32 MiB that glibc allows), peak RSS 288 -> 309 MiB.
    Applied to processes ichprep owns (an in-process build, local-cluster workers), never to the workers
    of a cluster the user brings (``--scheduler``). Returns whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def _process_shards(url: str, shards: list[int], headers: list[list[SliceHeader]], windows_list: list[dict],
                    on_size: str, size: int, own_process: bool = False) -> list[tuple[str, str, str]] | None:
    """One pixel-pass task: :func:`_process_shard` for each of ``shards`` in turn (each marked done
    as it is written, so a task killed halfway leaves its finished shards done). Returns the shards'
    rejects, or None when there are none (then nothing travels back to the parent)."""
    rejects = []
    for shard, shard_headers in zip(shards, headers):
        rejects += _process_shard(url, shard, shard_headers, windows_list, on_size, size, own_process)
    return rejects or None


def _process_shard(url: str, shard: int, headers: list[SliceHeader], windows_list: list[dict],
                   on_size: str, size: int, own_process: bool = False) -> list[tuple[str, str, str]]:
    """Decode, window and write one whole shard. Runs on a Dask worker (or inline). A slice that cannot
    be used gets its reason code in the store's status array (which survives an interrupted build) and
    is returned as (path, reason, message). ``own_process``: the process is ichprep's (see
    :func:`reuse_freed_memory`)."""
    if own_process:
        reuse_freed_memory()
    windows = windows_from_list(windows_list)
    C = len(windows)
    n = len(headers)
    images = np.empty((n, size, size, C), np.float16)  # every row is written below (a reject's with zeros)
    hu_min = np.full(n, np.nan, np.float32)
    hu_max = np.full(n, np.nan, np.float32)
    status = np.zeros(n, np.uint8)
    rejects = []
    scratch = np.empty(size * C, np.float32)
    file_buffer = ReadBuffer()  # one for the whole shard
    for i, h in enumerate(headers):
        try:
            raw = read_raw(h, file_buffer)
            lo, scale, is_full = channel_params(windows, h.window_center, h.window_width)
            if raw.shape == (size, size):
                _, a, b = window_slice(raw, h.slope, h.effective_intercept, h.fix12, lo, scale, is_full,
                                       out=images[i], row_scratch=scratch)
            else:
                hu = fit_size(_hu_float(raw, h), on_size, size)
                _, a, b = window_slice(hu, 1.0, 0.0, False, lo, scale, is_full, out=images[i], row_scratch=scratch)
            hu_min[i], hu_max[i] = a, b
        except RejectError as exc:
            images[i] = 0
            status[i] = REJECT_REASONS[exc.reason]
            rejects.append((h.path, exc.reason, exc.message))
    g = st.open_for_write(url)
    st.write_shard(g, shard, images, hu_min, hu_max, status)
    return rejects


# --------------------------------------------------------------------------------------------
# Execution: a Dask cluster (local by default), or inline


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


@contextlib.contextmanager
def _executor(workers: int, scheduler: str | None, stream: TextIO | None,
              dashboard: str | None = None) -> Iterator[Callable]:
    """Yields ``run(fn, arglists, on_result)``: runs fn(*args) for each args, calling
    ``on_result(args, value)`` as each finishes (in completion order). A task that fails raises here.
    On a cluster, a task whose value is None (the scheduler reports its type) is not fetched: a fetch
    costs this process ~1.5 ms of CPU, and it shares the cores with the workers. The dashboard's address
    is written to ``stream`` when one runs."""
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
            cluster = LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True,
                                   dashboard_address=dashboard, silence_logs=logging.ERROR)
        client = Client(cluster)
    if stream is not None and (scheduler or dashboard is not None):
        where = f"scheduler {scheduler}" if scheduler else f"a local cluster of {max(workers, 1)} workers"
        link = client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None
        stream.write(f"dask: using {where}" + (f", dashboard {link}" if link else ", no dashboard") + "\n")
        stream.flush()

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


@contextlib.contextmanager
def _out_lock(out: str) -> Iterator[None]:
    """Refuse a second build into the same local output while one runs (``<out>.lock``, with the pid).
    A lock left by a dead process is taken over."""
    if "://" in out:
        yield
        return
    lock = os.path.abspath(out).rstrip(os.sep) + ".lock"
    for _ in range(2):
        try:
            os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            break
        except FileExistsError:
            try:
                pid = int(open(lock).read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise StoreError(f"Another build (pid {pid}) is writing {out!r}; wait for it, or remove "
                                 f"{lock!r} if that process is gone.") from None
            os.unlink(lock)
        except OSError as exc:
            raise UsageError(f"Cannot write the output {out!r} ({exc.strerror or exc}). Choose a writable --out.") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# The build


def _relpath(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


def _prepare_output(cfg: BuildConfig) -> tuple[str, object]:
    """Decide: 'create', 'resume' or 'complete' (with the open group for the latter two)."""
    out = cfg.out
    if "://" not in out and os.path.exists(out):
        if not os.path.isdir(out):
            raise StoreExistsError(f"Output {out!r} exists and is a file. Choose another --out.")
        if not os.listdir(out):
            return "create", None
        if not os.path.exists(os.path.join(out, "zarr.json")):
            raise StoreExistsError(f"Output {out!r} exists and is not an ichprep store; refusing to write "
                                   "into it (even with --overwrite). Choose another --out.")
    try:
        g, info = st.read_info(out)
    except IncompleteStoreError:  # killed while the store was being created: start again
        return "create", None
    except IchprepError:
        if "://" not in out and os.path.exists(out):
            raise StoreExistsError(f"Output {out!r} holds a Zarr store not written by this ichprep; refusing "
                                   "to overwrite it. Choose another --out.") from None
        return "create", None
    if cfg.overwrite:
        return "create", None
    if info.attrs.get("params") != cfg.params():
        raise StoreExistsError(f"Output {out!r} holds a store built with other parameters; pass --overwrite "
                               "to replace it, or choose another --out.")
    return ("complete" if info.complete else "resume"), g


def build(cfg: BuildConfig, stream: TextIO | None = None) -> BuildResult:
    """Run a whole build. ``stream`` receives progress and messages (None: silent)."""
    t0 = time.monotonic()
    result = BuildResult(out=cfg.out)
    labels = read_labels(cfg.labels) if cfg.labels else None  # a bad CSV fails before any work
    paths = list_source(cfg.source)
    resolved_salt = resolve_salt(cfg.salt)
    salt = resolved_salt.value
    needs_default = any(w.kind == "default" for w in cfg.windows)
    with _out_lock(cfg.out):
        mode, g = _prepare_output(cfg)
        if mode == "complete":
            result.already_complete = True
            result.written = int(st.get_attrs(g).get("counts", {}).get("written", 0))
            return result
        timings = result.timings
        reject_messages: dict[str, str] = {}  # path -> why the pixel pass could not use it
        with _executor(cfg.workers, cfg.scheduler, stream, cfg.dashboard) as run:
            timings["start"] = time.monotonic() - t0
            # 1. Header pass.
            headers: list[SliceHeader] = []
            rejects: list[tuple[str, str, str]] = []
            warns: Counter = Counter()
            bar = ProgressBar(stream, "scan ", len(paths), unit="files")
            batch = task_size(len(paths), run.workers, *SCAN_BATCH)
            batches = [(paths[i:i + batch], salt, needs_default, cfg.on_size) for i in range(0, len(paths), batch)]

            def on_scan(_, res):
                headers.extend(res[0])
                rejects.extend(res[1])
                warns.update(res[2])
                bar.update(len(headers) + len(rejects))

            t = time.monotonic()
            run(_scan_batch, batches, on_scan)
            bar.close()
            timings["headers"] = time.monotonic() - t
            # 2. Order rows by (study, series, z, sop); a repeated SOP keeps its first file.
            headers.sort(key=lambda h: (h.study_uid, h.series_uid, np.isnan(h.position_z),
                                        0.0 if np.isnan(h.position_z) else h.position_z, h.sop_uid, h.path))
            seen: dict[str, str] = {}
            unique = []
            for h in headers:
                if h.sop_uid in seen:
                    rejects.append((h.path, "duplicate", f"SOPInstanceUID {h.sop_uid} also in {_relpath(seen[h.sop_uid], cfg.source)}"))
                else:
                    seen[h.sop_uid] = h.path
                    unique.append(h)
            headers = unique
            if not headers:
                raise SourceError(f"No usable DICOM slices in {cfg.source!r}: {len(rejects)} files rejected "
                                  f"({_reason_counts(rejects)}).")
            sops = [h.sop_uid for h in headers]
            # 3. Labels.
            if labels is not None:
                lab, unlabelled = labels.lookup(sops)
                present = set(sops)
                without_file = sorted(s for s in labels.by_sop if s not in present)
            else:
                lab, unlabelled, without_file = np.full((len(sops), 6), UNLABELLED, np.uint8), len(sops), []
            types = type_codes(lab)
            S = cfg.shard_slices
            n = len(headers)
            n_shards = -(-n // S)
            header_rejects = [(_relpath(p, cfg.source), r, m) for p, r, m in rejects]
            fixed = Counter()
            fixed["rsna_12bit_pixel_representation"] = sum(h.fix12 for h in headers)
            fixed["multi_valued_window"] = sum(h.window_multi for h in headers)
            fixed["resized" if cfg.on_size == "resize" else "padded"] = sum(
                (h.rows, h.columns) != (st.IMAGE_SIZE, st.IMAGE_SIZE) for h in headers)
            # 4. Create (or reopen) the store.
            if mode == "resume":
                if list(g["sop_uid"][:]) != sops:
                    raise StoreExistsError(f"The files in {cfg.source!r} changed since {cfg.out!r} was started; "
                                           "pass --overwrite to rebuild from scratch.")
                g = st.open_for_write(cfg.out)
                done = st.done_shards(g)
                result.resumed = True
            else:
                attrs = dict(
                    ichprep_version=__version__,
                    preset=cfg.preset,
                    windows=windows_to_list(cfg.windows),
                    window_names=[w.name for w in cfg.windows],
                    size_policy=cfg.on_size,
                    params=cfg.params(),
                    salt_fingerprint=resolved_salt.fingerprint,
                )
                g = st.create_store(cfg.out, n, len(cfg.windows), S, cfg.codec, attrs)
                st.write_metadata(g, sops, [h.study_uid for h in headers], [h.series_uid for h in headers],
                                  [h.patient for h in headers], [h.position_z for h in headers], lab, types)
                done = np.zeros(n_shards, bool)
            # 5. Pixel pass: tasks of whole shards not yet done.
            todo = [int(s) for s in np.flatnonzero(~done)]
            wl = windows_to_list(cfg.windows)
            own = cfg.scheduler is None  # in-process or a local cluster ichprep started
            per_task = 1 if run.workers == 0 else task_size(len(todo), run.workers, 1, SHARDS_PER_TASK_MAX)
            groups = shrinking_groups(todo, run.workers, per_task)
            tasks = [(cfg.out, group, [headers[s * S:(s + 1) * S] for s in group], wl, cfg.on_size, st.IMAGE_SIZE,
                      own) for group in groups]
            bar = ProgressBar(stream, "build", n, unit="slices")
            finished = [sum(min(S, n - s * S) for s in np.flatnonzero(done))]  # slices already written

            def on_shard(args, shard_rejects):
                finished[0] += sum(len(h) for h in args[2])
                bar.update(finished[0])
                for path, reason, message in shard_rejects or ():
                    reject_messages[path] = message

            t = time.monotonic()
            timings["prepare"] = t - t0 - timings["start"] - timings["headers"]
            run(_process_shards, tasks, on_shard)
            bar.close()
            timings["pixels"] = time.monotonic() - t
        # 6. Finalise: rejects from the status array (complete even across resumes), counts, attrs.
        status = np.asarray(g["status"][:])
        pixel_rejects = []
        for i in np.flatnonzero(status):  # a shard written by an earlier, interrupted run left no message
            message = reject_messages.get(headers[i].path, "pixel data could not be used (found by an earlier run)")
            pixel_rejects.append((_relpath(headers[i].path, cfg.source), REASON_NAMES[int(status[i])], message))
        all_rejects = header_rejects + pixel_rejects
        ok = status == 0
        type_counts = Counter(int(t) for t in types[ok])
        counts = dict(written=int(ok.sum()), rows=n, rejected=len(all_rejects), unlabelled=int(unlabelled),
                      labels_without_file=len(without_file), inconsistent_any=int(inconsistent_any(lab).sum()),
                      duplicate_label_rows=labels.duplicate_rows if labels else 0,
                      incomplete_label_slices=len(labels.incomplete) if labels else 0)
        st.set_attrs(g, dict(
            counts=counts,
            type_counts={str(k): v for k, v in sorted(type_counts.items())},
            rejects=[dict(file=f, reason=r, message=m) for f, r, m in all_rejects],
            fixed=dict(fixed),
            pydicom_warnings=dict(warns),
            labels_without_file=without_file[:1000],
            timings={k: round(v, 3) for k, v in timings.items()},  # this run's (a resumed build: the last run's)
            complete=True,
        ))
        result.written = counts["written"]
        result.rejected = len(all_rejects)
        result.reject_reasons = dict(Counter(r for _, r, _ in all_rejects))
        result.fixed = {k: v for k, v in fixed.items() if v}
        result.shards_total = n_shards
        result.shards_run = len(todo)
        result.unlabelled = int(unlabelled) if labels is not None else 0
        result.labels_without_file = len(without_file)
        result.warnings = dict(warns)
        result.seconds = time.monotonic() - t0
        timings["finish"] = result.seconds - sum(timings.values())
        if cfg.strict and all_rejects:
            raise StrictRejectError(f"--strict: {len(all_rejects)} files rejected ({_reason_counts(all_rejects)}); "
                             f"the store at {cfg.out!r} is complete but a strict build fails on any reject.")
        return result


def _reason_counts(rejects) -> str:
    c = Counter(r for _, r, _ in rejects)
    return ", ".join(f"{n} {r}" for r, n in c.most_common()) or "none"
