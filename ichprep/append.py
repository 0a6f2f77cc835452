"""``ichprep build --append``: add the files of a folder that a complete store does not hold yet.

A store grows by generations. An append lists the folder, skips every file whose key (a digest of its path
under the folder, size and modification time: the ``file_key`` column) the store knows, reads the headers of
the others, and writes the slices whose SOPInstanceUID is new as new rows after the last shard: no existing
shard object is rewritten (rows up to the next shard boundary are left as a ``gap``). A file whose
SOPInstanceUID is already stored but whose key is not (copied, touched or changed) is decoded and compared
with its row: the same slice is counted as known, another is rejected as ``changed`` (an append never replaces
a slice). The store reads as incomplete from the first write to the last, and a rerun of the same command
finishes an interrupted append (its new rows kept, their unwritten shards written).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TextIO

import numpy as np

from ichprep import lifecycle as lc
from ichprep import store as st
from ichprep.build import (
    BuildConfig,
    BuildResult,
    _fixes,
    _header_pass,
    _order_rows,
    _pixel_pass,
    _reason_counts,
    _relpath,
    disk_full_as_store_error,
    file_key,
    read_inputs,
)
from ichprep.errors import (
    REASON_NAMES,
    IncompleteStoreError,
    StoreError,
    StrictRejectError,
    UsageError,
)
from ichprep.executor import executor
from ichprep.labels import UNLABELLED, inconsistent_any
from ichprep.outlock import output_lock

__all__ = ["append"]

# What an append must share with the store (the params a build records, less where its files came from).
_LAYOUT = ("windows", "on_size", "shard_slices", "codec")


INLINE_BELOW = 512  # files to read: fewer are read in this process, without starting a local cluster

def append(cfg: BuildConfig, console: TextIO | None = None) -> BuildResult:
    """Add to the complete store ``cfg.out`` the slices of ``cfg.source`` it does not hold, as a new
    generation (or finish an interrupted append).

    Args:
        cfg: the append (``BuildConfig``): source, out, labels for the new slices, workers; its windows, size
            policy, shard size and codec must be the store's.
        console: receives progress bars (None: silent).

    Returns:
        BuildResult: ``written`` counts the store's usable slices after the append; ``shards_run`` the new
        shards; ``reject_reasons`` this append's rejects (``changed`` among them).

    Raises:
        UsageError: the store's layout differs, it is not complete, or it predates appends (schema < 4).
        StoreError: another build holds the store's lock, or the disk filled up (rerun to finish).
    """
    t0 = time.monotonic()
    labels, paths, salt = read_inputs(cfg)
    with disk_full_as_store_error(cfg.out), output_lock(cfg.out):
        return _append(cfg, console, t0, labels, paths, salt)


def _open(cfg: BuildConfig):
    """The store to append to, checked: (group, info, the interrupted append's record or None)."""
    unfinished = (f"{cfg.out!r} is an unfinished build: finish it first (rerun the same 'ichprep build' command "
                  "without --append), then append")
    try:
        g, info = st.read_info(cfg.out)
    except IncompleteStoreError:
        raise UsageError(unfinished) from None
    record = st.appending(info.attrs)
    if not info.complete and record is None:
        raise UsageError(unfinished)
    if info.schema_version < st.APPENDABLE_VERSION:
        raise UsageError(f"{cfg.out!r} has schema version {info.schema_version}, written before stores kept the "
                         f"file keys an append needs (version {st.APPENDABLE_VERSION}): rebuild it once with this "
                         "ichprep (--overwrite), then append")
    wanted = {k: cfg.params()[k] for k in _LAYOUT}
    have = {k: info.params.get(k) for k in _LAYOUT}
    differ = [k for k in _LAYOUT if wanted[k] != have[k]]
    if differ:
        said = "; ".join(f"{k}: store {have[k]!r}, asked {wanted[k]!r}" for k in differ)
        raise UsageError(f"Cannot append to {cfg.out!r}: its layout differs ({said}). Append with the store's "
                         "own --preset/--windows, --on-size, --shard-slices and --codec (leave them out to use them)")
    return st.open_for_write(cfg.out), info, record


def _keys(paths: list[str], source: str) -> list[str]:
    out = []
    for p in paths:
        s = os.stat(p)
        out.append(file_key(_relpath(p, source), s.st_size, s.st_mtime_ns))
    return out


def _append(cfg: BuildConfig, console, t0: float, labels, paths: list[str], salt) -> BuildResult:
    result = BuildResult(out=cfg.out)
    g, info, record = _open(cfg)
    if record is not None and not record["metadata"]:
        lc.cancel_append(g)  # stopped before its rows existed: start it again from the store as it was
        g, info, record = _open(cfg)
    # numpy arrays, not Python sets: a 150k-row store's keys and UIDs as Python objects grew an append's
    # peak RSS by ~0.27 KiB per stored row
    stored_keys = st.column(g, st.FILE_KEY)
    rows_before = record["rows_before"] if record else info.n
    pending = stored_keys[record["start"]:record["n"]] if record else stored_keys[:0]  # an interrupted append's rows
    keys = np.fromiter(_keys(paths, cfg.source), np.uint64, len(paths))
    todo = [paths[i] for i in np.flatnonzero(~np.isin(keys, stored_keys[:rows_before]))]
    result.known = len(paths) - len(todo)
    generation = record["generation"] if record else info.generation + 1
    # A few new files are read here: a local cluster's start (~0.5 s) costs what one core decodes in that time
    local_cluster = cfg.scheduler is None and cfg.dashboard is None
    workers = 0 if local_cluster and len(todo) < INLINE_BELOW else cfg.workers
    with executor(workers, cfg.scheduler, console, cfg.dashboard) as run:
        result.timings["start"] = time.monotonic() - t0
        t = time.monotonic()
        headers, rejects, warns = _header_pass(cfg, todo, salt.value, run, console) if todo else ([], [], Counter())
        result.timings["headers"] = time.monotonic() - t
        sops = st.column(g, "sop_uid") if headers else np.zeros(0, object)  # 16k UIDs take ~50 ms to read
        row_of = _rows_of_sops(sops[:rows_before], [h.sop_uid for h in headers])
        if record is not None:
            wanted = set(pending.tolist())
            by_key = {_key_of(h, cfg.source): h for h in headers}
            gone = [k for k in wanted if k not in by_key]
            if gone:
                raise StoreError(f"{len(gone)} files of the interrupted append into {cfg.out!r} are no longer in "
                                 f"{cfg.source!r} as they were: restore them and rerun the same command")
            headers = [h for h in headers if _key_of(h, cfg.source) not in wanted]
        suspects = [(h, row_of[h.sop_uid]) for h in headers if h.sop_uid in row_of]
        fresh = [h for h in headers if h.sop_uid not in row_of]
        rejects += _compare_known(g, info, suspects, cfg.source)
        result.known += len(suspects) - sum(r == "changed" for _, r, _ in rejects)
        if record is not None:
            start, n = record["start"], record["n"]
            new_headers = [by_key[k] for k in pending.tolist()]
            in_new = set(sops[start:n].tolist())  # files new since the interrupted append began: the next append's
            rejects += [(h.path, "duplicate", f"SOPInstanceUID {h.sop_uid} is also in a file of this append")
                        for h in fresh if h.sop_uid in in_new]
        elif not fresh:
            found = _new_rejects(info, [(_relpath(p, cfg.source), r, m) for p, r, m in rejects])
            return _nothing_new(cfg, g, info, result, found, t0)
        else:
            rows = _order_rows(cfg, fresh, rejects, labels)  # a repeated SOP among the new files joins rejects
            start = -(-info.n // info.shard_slices) * info.shard_slices
            n = start + len(rows.headers)
            lc.begin_append(g, info.n, start, n, generation)
            h = rows.headers
            st.write_metadata(g, rows.sops, [x.study_uid for x in h], [x.series_uid for x in h],
                              [x.patient for x in h], [x.position_z for x in h], rows.labels, rows.types,
                              [x.window_center for x in h], [x.window_width for x in h],
                              file_key=[_key_of(x, cfg.source) for x in h], start=start)
            lc.append_metadata_written(g)
            new_headers = h
        header_rejects = _new_rejects(info, [(_relpath(p, cfg.source), r, m) for p, r, m in rejects])
        first = start // info.shard_slices  # the store's own shards are written (a gap row has no file)
        done = np.concatenate([np.ones(first, bool), st.done_shards(g, first)])
        t = time.monotonic()
        todo_shards, reject_messages = _pixel_pass(cfg, run, [None] * start + list(new_headers), done, console)
        result.timings["pixels"] = time.monotonic() - t
    new_rejects = _finish(cfg, g, info, start, new_headers, header_rejects, reject_messages, generation,
                          result.timings)
    result.written = int(st.get_attrs(g)["counts"]["written"])
    result.added = result.written - int(info.counts.get("written", 0))  # _finish counted the new rows only
    result.generation = generation
    result.rejected = len(new_rejects)
    result.reject_reasons = dict(Counter(r for _, r, _ in new_rejects))
    result.shards_total, result.shards_run = len(done), len(todo_shards)
    result.resumed = record is not None
    result.warnings = dict(warns)
    result.seconds = time.monotonic() - t0
    if cfg.strict and new_rejects:
        raise StrictRejectError(f"--strict: {len(new_rejects)} files rejected ({_reason_counts(new_rejects)}); "
                                f"the store at {cfg.out!r} is complete but a strict append fails on any reject.")
    return result


def _rows_of_sops(stored: np.ndarray, wanted: list[str]) -> dict[str, int]:
    """The stored row of each of ``wanted`` the store holds (a gap row's empty UID matches nothing). A set of
    the few wanted UIDs and one pass over the stored ones: np.isin on object arrays compares Python strings
    pairwise (14 s for 10k against 140k UIDs)."""
    look_for = set(wanted) - {""}
    if not look_for:
        return {}
    return {s: i for i, s in enumerate(stored.tolist()) if s in look_for}


def _key_of(h, source: str) -> int:
    return file_key(_relpath(h.path, source), h.file_size, h.mtime_ns)


def _compare_known(g, info, suspects: list, source: str) -> list[tuple[str, str, str]]:
    """Files whose SOPInstanceUID the store holds under another file key: rejects (``changed``) for those whose
    header facts or pixels differ from their row; the others are the same slices (copied or touched)."""
    from ichprep.verify import reference_slice, tolerance

    rejects = []
    if not suspects:
        return rejects
    img = st.images(g)
    columns = {name: st.column(g, name) for name in ("study_uid", "series_uid", "patient", "position_z")}
    for h, row in suspects:
        said = dict(study_uid=h.study_uid, series_uid=h.series_uid, patient=h.patient)
        differ = [k for k, v in said.items() if str(columns[k][row]) != v]
        z = np.float32(h.position_z)
        if not (z == columns["position_z"][row] or (np.isnan(z) and np.isnan(columns["position_z"][row]))):
            differ.append("position_z")
        if not differ:
            try:
                ref = reference_slice(h.path, info.windows, info.size_policy, info.image_size)
            except Exception:  # pydicom cannot decode what the stored slice was built from: not that slice
                differ.append("pixels (they cannot be decoded)")
            else:
                if ref.shape != img.shape[1:] or np.abs(np.asarray(img[row], np.float64) - ref).max() > tolerance(info):
                    differ.append("pixels")
        if differ:
            rejects.append((h.path, "changed", f"SOPInstanceUID {h.sop_uid} is stored (row {row}) with other "
                                               f"{', '.join(differ)}; an append never replaces a slice: rebuild "
                                               "with --overwrite to take the new file"))
    return rejects


def _new_rejects(info, rejects: list) -> list:
    """Rejects not already recorded (the same file for the same reason): a file rejected by the build is
    read again by every append, and counted once."""
    seen = {(r.get("file"), r.get("reason")) for r in info.rejects}
    return [x for x in rejects if (x[0], x[1]) not in seen]


def _nothing_new(cfg, g, info, result: BuildResult, rejects: list, t0: float) -> BuildResult:
    """No new slice: the store is left as it is, but for new rejects (recorded, and counted)."""
    if rejects:  # new rejects are recorded even when no slice is added
        st.set_attrs(g, dict(rejects=list(info.rejects) + [dict(file=f, reason=r, message=m) for f, r, m in rejects],
                             counts=dict(info.counts, rejected=int(info.counts.get("rejected", 0)) + len(rejects))))
    result.written = int(info.counts.get("written", 0))
    result.added, result.generation = 0, info.generation
    result.rejected = len(rejects)
    result.reject_reasons = dict(Counter(r for _, r, _ in rejects))
    result.seconds = time.monotonic() - t0
    if cfg.strict and rejects:
        raise StrictRejectError(f"--strict: {len(rejects)} files rejected ({_reason_counts(rejects)})")
    return result


def _finish(cfg, g, info, start: int, headers: list, header_rejects: list, reject_messages: dict,
            generation: int, timings: dict) -> list:
    """The grown store's attributes, then the new generation and ``complete``; returns this append's rejects."""
    n = start + len(headers)
    new_status = st.column(g, "status", slice(start, n))  # the store's own rows are counted in its attributes
    pixel_rejects = [(_relpath(headers[i].path, cfg.source), REASON_NAMES[int(new_status[i])],
                      reject_messages.get(headers[i].path, "pixel data could not be used (found by an earlier run)"))
                     for i in np.flatnonzero(new_status)]
    rejects = header_rejects + pixel_rejects
    ok = new_status == 0
    new_labels, new_types = st.column(g, "labels", slice(start, n)), st.column(g, "type", slice(start, n))
    old = info.counts
    counts = dict(old, written=int(old.get("written", 0)) + int(ok.sum()), rows=n,
                  rejected=int(old.get("rejected", 0)) + len(rejects),
                  unlabelled=int(old.get("unlabelled", 0)) + int((new_labels == UNLABELLED).any(axis=1).sum()),
                  inconsistent_any=int(old.get("inconsistent_any", 0)) + int(inconsistent_any(new_labels).sum()))
    type_counts = Counter(info.type_counts) + Counter(int(t) for t in new_types[ok])
    fixed = Counter(info.fixed)
    for k, v in _fixes(cfg, headers, g, slice(start, n)).items():
        fixed[k] += v
    lc.end_append(g, dict(
        counts=counts,
        type_counts={str(k): v for k, v in sorted(type_counts.items())},
        rejects=list(info.rejects) + [dict(file=f, reason=r, message=m) for f, r, m in rejects],
        fixed=dict(fixed),
        timings={k: round(v, 3) for k, v in timings.items()},  # the last build's or append's
        appends=list(info.attrs.get("appends", [])) + [dict(generation=generation, source=cfg.params()["source"],
                                                            labels=cfg.params()["labels"])],
    ))
    return rejects
