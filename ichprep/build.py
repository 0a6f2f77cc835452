"""``ichprep build``: scan -> order -> plan shards -> Dask tasks of whole shards -> finalise.

The unit of work is one whole shard: a task decodes, windows and writes every slice of its shards (one
to four, see :func:`task_size`), so no two tasks ever write the same shard file. A build is resumable:
each shard is marked done after it is written, a rerun of the same command skips those, and the store
is marked complete only in the last step.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from ichprep import __version__
from ichprep import lifecycle as lc
from ichprep import store as st
from ichprep.errors import (
    REASON_NAMES,
    IchprepError,
    IncompleteStoreError,
    SourceError,
    StoreExistsError,
    StrictRejectError,
)
from ichprep.executor import (
    SCAN_BATCH,
    SHARDS_PER_TASK_MAX,
    executor,
    shrinking_groups,
    task_size,
)
from ichprep.buildconfig import BuildConfig, BuildResult, file_key, same_params
from ichprep.diskspace import disk_full_error
from ichprep.labels import UNLABELLED, inconsistent_any, read_labels, type_codes
from ichprep.outlock import output_lock
from ichprep.progress import ProgressBar
from ichprep.salt import resolve_salt
from ichprep.scan import SliceHeader, list_source, scan_batch
from ichprep.shards import process_shards
from ichprep.windows import is_hu, windows_to_list

__all__ = ["BuildConfig", "BuildResult", "build", "file_key"]

log = logging.getLogger("ichprep")


# --------------------------------------------------------------------------------------------
# The build


def _relpath(path: str, root: str) -> str:
    """``path`` under ``root``. A listed path starts with its folder, so a prefix cut gives it: os.path.relpath,
    which normalises both paths on every call, took 0.4 s per 16k files."""
    prefix = os.path.join(root, "")
    if path.startswith(prefix):
        return path[len(prefix):]
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
        if not st.is_store_folder(out):
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
    if st.appending(info.attrs):
        raise StoreExistsError(f"An append into {out!r} was interrupted: rerun it ('ichprep build DICOM_DIR --out "
                               f"{out} --append' with its folder) to finish it, or pass --overwrite to rebuild")
    if not same_params(info.params, cfg):
        raise StoreExistsError(f"Output {out!r} holds a store built with other parameters; pass --overwrite "
                               "to replace it, or choose another --out.")
    return ("complete" if info.complete else "resume"), g


@dataclass
class _Rows:
    """The ordered, de-duplicated slices of a build and their labels: the store's rows."""

    headers: list[SliceHeader]
    labels: np.ndarray  # (n, 6) uint8, UNLABELLED where the CSV has no row
    types: np.ndarray  # Table 3.1 codes
    unlabelled: int
    without_file: list[str]  # label SOPs with no file

    @property
    def sops(self) -> list[str]:
        return [h.sop_uid for h in self.headers]


def _header_pass(cfg: BuildConfig, paths: list[str], salt: str, run, console) -> tuple[list, list, Counter]:
    """Phase 1: every file's header, in tasks of many files: (headers, rejects, pydicom warning counts)."""
    headers: list[SliceHeader] = []
    rejects: list[tuple[str, str, str]] = []
    warns: Counter = Counter()
    needs_default = any(w.kind == "default" for w in cfg.windows)
    bar = ProgressBar(console, "scan ", len(paths), unit="files")
    batch = task_size(len(paths), run.workers, *SCAN_BATCH)
    batches = [(paths[i:i + batch], salt, needs_default, cfg.on_size) for i in range(0, len(paths), batch)]

    def on_scan(_, res):
        headers.extend(res[0])
        rejects.extend(res[1])
        warns.update(res[2])
        bar.update(len(headers) + len(rejects))

    run(scan_batch, batches, on_scan)
    bar.close()
    return headers, rejects, warns


def _order_rows(cfg: BuildConfig, headers: list[SliceHeader], rejects: list, labels) -> _Rows:
    """Phases 2-3: rows ordered by (study, series, z, sop), a repeated SOP keeping its first file (the
    others join ``rejects``), and their labels."""
    headers = sorted(headers, key=lambda h: (h.study_uid, h.series_uid, np.isnan(h.position_z),
                                             0.0 if np.isnan(h.position_z) else h.position_z, h.sop_uid, h.path))
    seen: dict[str, str] = {}
    unique = []
    for h in headers:
        if h.sop_uid in seen:
            rejects.append((h.path, "duplicate", f"SOPInstanceUID {h.sop_uid} also in {_relpath(seen[h.sop_uid], cfg.source)}"))
        else:
            seen[h.sop_uid] = h.path
            unique.append(h)
    if not unique:
        raise SourceError(f"No usable DICOM slices in {cfg.source!r}: {len(rejects)} files rejected "
                          f"({_reason_counts(rejects)}).")
    sops = [h.sop_uid for h in unique]
    if labels is not None:
        lab, unlabelled = labels.lookup(sops)
        present = set(sops)
        without_file = sorted(s for s in labels.by_sop if s not in present)
    else:
        lab, unlabelled, without_file = np.full((len(sops), 6), UNLABELLED, np.uint8), len(sops), []
    return _Rows(unique, lab, type_codes(lab), int(unlabelled), without_file)


def _open_store(cfg: BuildConfig, mode: str, g, rows: _Rows, salt_fingerprint: str):
    """Phase 4: create the store with its metadata, or reopen the one being resumed: (group, done shards)."""
    n = len(rows.headers)
    if mode == "resume":
        if list(st.column(g, "sop_uid")) != rows.sops:
            raise StoreExistsError(f"The files in {cfg.source!r} changed since {cfg.out!r} was started; "
                                   "pass --overwrite to rebuild from scratch.")
        g = st.open_for_write(cfg.out)
        return g, st.done_shards(g)
    attrs = dict(ichprep_version=__version__, preset=cfg.preset, windows=windows_to_list(cfg.windows),
                 window_names=[w.name for w in cfg.windows], size_policy=cfg.on_size, params=cfg.params(),
                 salt_fingerprint=salt_fingerprint)
    g = st.create_store(cfg.out, n, len(cfg.windows), cfg.shard_slices, cfg.codec, attrs, hu=is_hu(cfg.windows))
    h = rows.headers
    st.write_metadata(g, rows.sops, [x.study_uid for x in h], [x.series_uid for x in h], [x.patient for x in h],
                      [x.position_z for x in h], rows.labels, rows.types,
                      [x.window_center for x in h], [x.window_width for x in h],
                      file_key=[file_key(_relpath(x.path, cfg.source), x.file_size, x.mtime_ns) for x in h])
    return g, np.zeros(-(-n // cfg.shard_slices), bool)


def _pixel_pass(cfg: BuildConfig, run, headers: list[SliceHeader], done: np.ndarray, console) -> tuple[list, dict]:
    """Phase 5: tasks of whole shards not yet done: (the shards run, path -> why a slice was rejected)."""
    S, n = cfg.shard_slices, len(headers)
    todo = [int(s) for s in np.flatnonzero(~done)]
    wl = windows_to_list(cfg.windows)
    local_cluster = cfg.scheduler is None  # in-process or a local cluster ichprep started
    per_task = 1 if run.workers == 0 else task_size(len(todo), run.workers, 1, SHARDS_PER_TASK_MAX)
    tasks = [(cfg.out, group, [headers[s * S:(s + 1) * S] for s in group], wl, cfg.on_size, st.IMAGE_SIZE, local_cluster)
             for group in shrinking_groups(todo, run.workers, per_task)]
    bar = ProgressBar(console, "build", n, unit="slices")
    finished = [sum(min(S, n - s * S) for s in np.flatnonzero(done))]  # slices already written
    reject_messages: dict[str, str] = {}

    def on_shard(args, shard_rejects):
        finished[0] += sum(len(h) for h in args[2])
        bar.update(finished[0])
        for path, reason, message in shard_rejects or ():
            reject_messages[path] = message

    run(process_shards, tasks, on_shard)
    bar.close()
    return todo, reject_messages


def _finalise(cfg: BuildConfig, g, rows: _Rows, header_rejects: list, reject_messages: dict, labels,
              warns: Counter, timings: dict) -> list:
    """Phase 6: rejects from the status array (complete across resumes), counts and attrs; the store is
    marked complete last. Returns every reject as (file, reason, message)."""
    status = st.column(g, "status")
    headers = rows.headers
    pixel_rejects = []
    for i in np.flatnonzero(status):  # a shard written by an earlier, interrupted run left no message
        message = reject_messages.get(headers[i].path, "pixel data could not be used (found by an earlier run)")
        pixel_rejects.append((_relpath(headers[i].path, cfg.source), REASON_NAMES[int(status[i])], message))
    all_rejects = header_rejects + pixel_rejects
    ok = status == 0
    counts = dict(written=int(ok.sum()), rows=len(headers), rejected=len(all_rejects), unlabelled=rows.unlabelled,
                  labels_without_file=len(rows.without_file), inconsistent_any=int(inconsistent_any(rows.labels).sum()),
                  duplicate_label_rows=labels.duplicate_rows if labels else 0,
                  incomplete_label_slices=len(labels.incomplete) if labels else 0)
    st.set_attrs(g, dict(
        counts=counts,
        type_counts={str(k): v for k, v in sorted(Counter(int(t) for t in rows.types[ok]).items())},
        rejects=[dict(file=f, reason=r, message=m) for f, r, m in all_rejects],
        fixed=dict(_fixes(cfg, headers, g)),
        pydicom_warnings=dict(warns),
        labels_without_file=rows.without_file[:1000],
        timings={k: round(v, 3) for k, v in timings.items()},  # this run's (a resumed build: the last run's)
        complete=True,
    ))
    lc.forget_repair(g)  # a resumed build finished an interrupted repair's shards too
    return all_rejects


def _fixes(cfg: BuildConfig, headers: list[SliceHeader], g, rows=None) -> Counter:
    """Slices changed to be usable, by kind. hu stores: ``hu_rounded`` (a non-integer slope or intercept:
    HU rounded to the nearest unit) and ``hu_clipped`` (HU outside int16, clipped: the stored hu_min/hu_max
    keep the range before clipping, so this count survives a resumed build)."""
    fixed = Counter()
    fixed["rsna_12bit_pixel_representation"] = sum(h.fix12 for h in headers)
    fixed["multi_valued_window"] = sum(h.window_multi for h in headers)
    fixed["resized" if cfg.on_size == "resize" else "padded"] = sum(
        (h.rows, h.columns) != (st.IMAGE_SIZE, st.IMAGE_SIZE) for h in headers)
    if is_hu(cfg.windows):
        fixed["hu_rounded"] = sum(not (float(h.slope).is_integer() and float(h.effective_intercept).is_integer())
                                  for h in headers)
        lo, hi = st.hu_range(g, rows)  # the rows of ``headers`` (all, for a build)
        fixed["hu_clipped"] = int(((lo < -32768) | (hi > 32767)).sum())
    return fixed


def build(cfg: BuildConfig, console: TextIO | None = None) -> BuildResult:
    """Run a whole build: DICOM files in ``cfg.source`` to the store at ``cfg.out``, resumable.

    Args:
        cfg: what to build (``BuildConfig``: source, out, windows or preset, labels, size policy, workers or
            scheduler, shard size, codec, salt, overwrite).
        console: receives progress bars and messages for a person (None: silent).

    Returns:
        BuildResult: counts, rejects with reasons, fixed defects, timings (``summary()`` for one line).

    Raises:
        UsageError: bad options or a bad labels CSV (before any work).
        StoreExistsError: ``cfg.out`` holds another build or something that is not a store.
        StoreError: the store cannot be written (full disk, another build holds its lock).
    """
    t0 = time.monotonic()
    labels, paths, salt = read_inputs(cfg)
    with disk_full_as_store_error(cfg.out):
        return _build(cfg, console, t0, labels, paths, salt)


def read_inputs(cfg: BuildConfig) -> tuple:
    """What a build or an append reads before any work: (labels or None, the source's files, the salt). A bad
    CSV or source fails here."""
    labels = read_labels(cfg.labels) if cfg.labels else None
    store_paths = () if "://" in cfg.out else (cfg.out, cfg.out.rstrip(os.sep) + ".lock")  # a store inside its source
    return labels, list_source(cfg.source, skip=store_paths), resolve_salt(cfg.salt)


@contextlib.contextmanager
def disk_full_as_store_error(out: str):
    """A full disk under a build or an append becomes the one line that says how much more it needs."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC and not isinstance(exc, IchprepError):
            raise disk_full_error(out) from None
        raise


def _build(cfg: BuildConfig, console, t0: float, labels, paths: list[str], salt) -> BuildResult:
    result = BuildResult(out=cfg.out)
    with output_lock(cfg.out):
        mode, g = _prepare_output(cfg)
        if mode == "complete":
            result.already_complete = True
            result.written = int(st.get_attrs(g).get("counts", {}).get("written", 0))
            return result
        timings = result.timings
        with executor(cfg.workers, cfg.scheduler, console, cfg.dashboard) as run:
            timings["start"] = time.monotonic() - t0
            t = time.monotonic()
            headers, rejects, warns = _header_pass(cfg, paths, salt.value, run, console)
            timings["headers"] = time.monotonic() - t
            rows = _order_rows(cfg, headers, rejects, labels)
            header_rejects = [(_relpath(p, cfg.source), r, m) for p, r, m in rejects]
            g, done = _open_store(cfg, mode, g, rows, salt.fingerprint)
            result.resumed = mode == "resume"
            t = time.monotonic()
            timings["prepare"] = t - t0 - timings["start"] - timings["headers"]
            todo, reject_messages = _pixel_pass(cfg, run, rows.headers, done, console)
            timings["pixels"] = time.monotonic() - t
        all_rejects = _finalise(cfg, g, rows, header_rejects, reject_messages, labels, warns, timings)
        result.written = int(st.get_attrs(g)["counts"]["written"])
        result.rejected = len(all_rejects)
        result.reject_reasons = dict(Counter(r for _, r, _ in all_rejects))
        result.fixed = {k: v for k, v in st.get_attrs(g)["fixed"].items() if v}
        result.shards_total = len(done)
        result.shards_run = len(todo)
        result.unlabelled = rows.unlabelled if labels is not None else 0
        result.labels_without_file = len(rows.without_file)
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
