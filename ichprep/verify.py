"""``ichprep verify``: check a store against its schema, its own invariants and (optionally) its source.

The re-decode check uses the *general* path on purpose -- pydicom's ``pixel_array`` and
``apply_modality_lut`` (PS3.3 C.11.1), then a plain numpy clip-and-scale -- not the build's fast path,
so a kernel bug cannot hide behind itself.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from ichprep import lifecycle as lc
from ichprep import store as st
from ichprep.errors import DamagedShardError, IchprepError, MissingStoreError
from ichprep.labels import UNLABELLED, type_codes
from ichprep.progress import ProgressBar
from ichprep.windows import Window, is_hu

__all__ = ["verify", "VerifyReport", "reference_slice", "find_sources", "tolerance"]

# The build computes in float32 and rounds to float16; the float64 reference may land on the
# neighbouring float16 value (2**-11 apart just below 1.0), never further.
TOLERANCE = 2.0**-11 + 1e-6


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    # Shards whose objects or per-shard chunks are missing, fail a checksum, hold values out of range or
    # differ from the source: what ``ichprep verify --repair`` rebuilds.
    damaged_shards: set = field(default_factory=set)
    # Whole-store columns that cannot be read (a chunk failing its checksum): not repairable from DICOMs.
    damaged_columns: list = field(default_factory=list)
    # Rows some of whose data could not be read at all (reported once; not checked further).
    unreadable_rows: set = field(default_factory=set)

    def unreadable(self, shard: int, lo: int, hi: int, rows=None) -> None:
        self.damaged_shards.add(shard)
        self.unreadable_rows.update(range(lo, hi) if rows is None else rows)

    @property
    def ok(self) -> bool:
        return not self.problems


def reference_slice(path: str, windows: tuple[Window, ...], on_size: str = "resize",
                    size: int = st.IMAGE_SIZE) -> np.ndarray:
    """(size, size, C) float64 in [0, 1] by the general path: pydicom + plain numpy (for an hu store:
    (size, size, 1) HU, rounded and clipped to int16 as the store keeps them)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from ichprep.pixels import RSNA_FIX_OFFSET, first_value, fit_size, fix_rsna_12bit, is_rsna_12bit_defect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        if is_rsna_12bit_defect(int(ds.BitsStored), int(ds.PixelRepresentation), float(ds.RescaleIntercept)):
            arr = fix_rsna_12bit(arr)
            ds.RescaleIntercept = -RSNA_FIX_OFFSET
        hu = apply_modality_lut(arr, ds).astype(np.float64)
    hu = fit_size(hu.astype(np.float32), on_size, size).astype(np.float64) if hu.shape != (size, size) else hu
    if is_hu(windows):  # an hu store: HU to the nearest unit, int16 range
        return np.clip(np.rint(hu), -32768, 32767)[..., None]
    out = []
    for w in windows:
        if w.kind == "full":
            lo, hi = hu.min(), hu.max()
        elif w.kind == "default":
            c, wd = first_value(ds.get("WindowCenter")), first_value(ds.get("WindowWidth"))
            lo, hi = c - wd / 2, c + wd / 2
        else:
            lo, hi = w.center - w.width / 2, w.center + w.width / 2
        out.append((np.clip(hu, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(hu))
    return np.stack(out, axis=-1)


def tolerance(info: st.StoreInfo) -> float:
    """How far a stored slice may lie from :func:`reference_slice`: hu stores hold whole units, exactly (1 HU
    where slices were resized: resampling in float32 may round apart); windowed ones one float16 step."""
    return (1.0 if info.fixed.get("resized") else 0.0) if info.hu else TOLERANCE


def find_sources(source: str, sops: list[str]) -> dict[str, str]:
    """SOP -> file. RSNA names files ``<sop>.dcm``; other files are found by a header scan."""
    from collections import Counter

    from ichprep.errors import RejectError
    from ichprep.scan import list_source, read_header

    paths = list_source(source)
    by_name = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    found = {s: by_name[s] for s in sops if s in by_name}
    missing = set(sops) - set(found)
    if missing:
        for p in paths:
            try:
                h = read_header(p, "", Counter())
            except RejectError:
                continue
            if h.sop_uid in missing:
                found[h.sop_uid] = p
                missing.discard(h.sop_uid)
                if not missing:
                    break
    return found


def verify(url: str, source: str | None = None, sample: int = 16, seed: int = 0,
           console: TextIO | None = None) -> VerifyReport:
    rep = VerifyReport()
    try:
        g, info = st.read_info(url)
    except MissingStoreError:
        raise  # nothing to verify: the user's input, one line on stderr
    except IchprepError as exc:
        rep.problems.append(f"schema: {exc}")
        return rep
    n = info.n
    if not info.complete:
        done = st.done_shards(g)
        if lc.repairing_shards(info.attrs):
            rep.problems.append(f"incomplete: a repair of shards {lc.repairing_shards(info.attrs)} was interrupted; rerun "
                                "'ichprep verify STORE --repair --source DICOM_DIR' to finish it")
        else:
            rep.problems.append(f"incomplete: the build has not finished ({int(done.sum())}/{done.size} shards "
                                "written); rerun the same 'ichprep build' command to resume")
    # Schema details.
    img = st.images(g)
    expected = (n, info.image_size, info.image_size, info.channels)
    dtype = np.int16 if info.hu else np.float16
    if img.shape != expected or img.dtype != dtype:
        rep.problems.append(f"images: expected {np.dtype(dtype)} {expected}, found {img.dtype} {img.shape}")
    for name in st.META_ARRAYS_V1 + st.SHARD_ARRAYS:
        if g[name].shape[0] != n:
            rep.problems.append(f"{name}: {g[name].shape[0]} rows, expected {n}")
    if rep.problems and not info.complete:
        return rep
    S = img.shards[0] if img.shards else img.chunks[0]
    n_shards = -(-n // S)
    done = _done_shards(g, n_shards, rep)
    # Every whole-store column read in full (each chunk checked against its crc32c), then labels and type.
    names = (st.META_ARRAYS if info.schema_version >= 2 else st.META_ARRAYS_V1) + \
        ((st.FILE_KEY,) if info.schema_version >= st.APPENDABLE_VERSION else ())
    columns = {name: _column(g, name, rep) for name in names}
    if columns["labels"] is not None and columns["type"] is not None:  # else reported as unreadable
        _check_labels(columns["labels"], columns["type"], rep)
    status = _shard_column(g, st.STATUS, S, n, rep, missing=255)
    hu_min, hu_max = _shard_column(g, st.HU_MIN, S, n, rep), _shard_column(g, st.HU_MAX, S, n, rep)
    ok = status == 0
    trusted = ok & ~np.isin(np.arange(n), sorted(rep.unreadable_rows))  # unreadable rows: reported already
    if info.complete and (np.isnan(hu_min[trusted]).any() or np.isnan(hu_max[trusted]).any()):
        rep.problems.append(f"hu_min/hu_max: NaN in {int((np.isnan(hu_min) & trusted).sum())} rows marked ok")
    if info.complete and (hu_min[trusted] > hu_max[trusted]).any():
        rep.problems.append("hu_min/hu_max: min above max")
    counts = info.counts
    if info.complete and counts.get("written") != int(ok.sum()):
        rep.problems.append(f"counts: attrs say {counts.get('written')} written, status says {int(ok.sum())}")
    _check_values(img, info, done, ok, (hu_min, hu_max), S, rep, console)
    _check_head_boxes(g, info, S, trusted, rep)
    rep.checked["checksums"] = info.schema_version >= st.CHECKSUMMED_VERSION
    rep.checked.update(slices=n, shards_done=int(done.sum()), shards=int(done.size))
    if source is not None and "sop_uid" not in rep.damaged_columns:
        _compare_with_source(img, info, source, columns["sop_uid"], ok & np.repeat(done, S)[:n], S, sample, seed, rep)
    return rep


def _check_values(img, info, done: np.ndarray, ok: np.ndarray, hu_bounds: tuple, S: int, rep: VerifyReport,
                  console) -> None:
    """Every written slice's checksum, and every value finite and in [0, 1] (hu: in its slice's recorded
    range), shard by shard; bad rows and their shards go to ``rep``."""
    n = info.n
    hu_min, hu_max = hu_bounds
    bar = ProgressBar(console, "check", n)
    bad_rows: list[int] = []
    read_shard = _shard_blocks(img, S, n, rep)
    for s in range(done.size):
        if not done[s]:
            continue
        lo, hi = s * S, min(n, (s + 1) * S)
        block, readable = read_shard(s)
        if block is None:
            continue
        if info.hu:  # stored HU lie in each slice's recorded (clipped) range
            flat = block.reshape(block.shape[0], -1).astype(np.float32)
            inside = (flat.min(1) >= np.clip(hu_min[lo:hi], -32768, 32767)) & \
                     (flat.max(1) <= np.clip(hu_max[lo:hi], -32768, 32767))
            inside |= ~ok[lo:hi]
            finite = True
        else:
            finite = np.isfinite(block).all(axis=(1, 2, 3))
            inside = ((block >= 0) & (block <= 1)).all(axis=(1, 2, 3))
        wrong = lo + np.flatnonzero(~(finite & inside) & readable)
        if wrong.size:
            rep.damaged_shards.add(s)
        bad_rows.extend(wrong.tolist())
        bar.update(hi)
    bar.close()
    if bad_rows:
        what = "HU outside the slice's hu_min..hu_max" if info.hu else "non-finite or out-of-[0, 1] values"
        rep.problems.append(f"images: {what} in {len(bad_rows)} slices, e.g. rows {bad_rows[:10]}")


def _column(g, name: str, rep: VerifyReport):
    """A whole-store column, or None (reported) when a chunk of it cannot be read."""
    try:
        return st.column(g, name)
    except Exception as exc:  # zarr: ValueError / RuntimeError for a failed checksum, codec errors
        rep.damaged_columns.append(name)
        rep.problems.append(f"{name}: {st.why_unreadable(exc)}; the column is damaged and "
                            "cannot be rebuilt from the DICOMs: rebuild the store with --overwrite")
        return None


def _check_head_boxes(g, info, S: int, trusted: np.ndarray, rep: VerifyReport) -> None:
    """A store of schema 5 holds every usable slice's head box inside the image (top < bottom, left < right)."""
    if info.schema_version < st.HEAD_BOX_VERSION and st.HEAD_BOX not in g:
        return  # an older store, or one appended to as one: boxes are found when read
    if st.HEAD_BOX not in g or g[st.HEAD_BOX].shape != (info.n, 4):
        rep.problems.append(f"{st.HEAD_BOX}: missing or not ({info.n}, 4)")
        return
    top, left, bottom, right = _shard_column(g, st.HEAD_BOX, S, info.n, rep, missing=-1).T
    size = info.image_size
    fine = (0 <= top) & (top < bottom) & (bottom <= size) & (0 <= left) & (left < right) & (right <= size)
    trusted = trusted & ~np.isin(np.arange(info.n), sorted(rep.unreadable_rows))
    if info.complete and (trusted & ~fine).any():
        rep.problems.append(f"head boxes: {int((trusted & ~fine).sum())} usable rows without a box inside the image")


def _shard_column(g, name: str, S: int, n: int, rep: VerifyReport, missing=np.nan) -> np.ndarray:
    """A per-shard column (one chunk per shard; 1-D, or rows of a few values as the head box): a chunk that
    cannot be read reads as ``missing`` and marks its shard damaged."""
    try:
        return st.column(g, name)
    except Exception:
        pass
    arr = g[name]
    values = np.full((n,) + tuple(arr.shape[1:]), missing, dtype=arr.dtype)
    for s in range(-(-n // S)):
        lo, hi = s * S, min(n, (s + 1) * S)
        try:
            values[lo:hi] = arr[lo:hi]
        except Exception as exc:
            rep.unreadable(s, lo, hi)
            rep.problems.append(f"{name}: shard {s} (rows {lo}..{hi - 1}) {st.why_unreadable(exc)}")
    return values


def _done_shards(g, n_shards: int, rep: VerifyReport) -> np.ndarray:
    """Which shards the build marked written; a mark that cannot be read counts as written and damaged."""
    try:
        return st.done_shards(g)
    except Exception:
        pass
    done = np.ones(n_shards, bool)
    for s in range(n_shards):
        try:
            done[s] = bool(g[st.SHARD_DONE][s])
        except Exception as exc:
            rep.damaged_shards.add(s)  # the slices themselves are checked as usual
            rep.problems.append(f"shard_done: shard {s}'s mark {st.why_unreadable(exc)}")
    return done


def _shard_blocks(img, S: int, n: int, rep: VerifyReport):
    """``read(shard) -> (block, readable rows)``: the shard's slices and which of them decoded (a slice
    failing its checksum is reported by row, the others still checked); (None, None) when the shard object
    itself is missing or damaged. Every problem found marks the shard damaged."""
    from ichprep.shardread import shard_reader

    reader = shard_reader(img)

    def read(s: int):
        lo, hi = s * S, min(n, (s + 1) * S)
        if reader is None:  # a layout ichprep does not write: zarr reads (and checks) the whole shard
            try:
                return np.asarray(img[lo:hi]), np.ones(hi - lo, bool)
            except Exception as exc:
                rep.unreadable(s, lo, hi)
                rep.problems.append(f"images: shard {s} (rows {lo}..{hi - 1}) {st.why_unreadable(exc)}")
                return None, None
        try:
            shard = reader.fetch(s)
        except DamagedShardError as exc:
            rep.unreadable(s, lo, hi)
            rep.problems.append(f"images: {exc}")
            return None, None
        block = np.zeros((hi - lo, *img.shape[1:]), img.dtype)
        readable = np.ones(hi - lo, bool)
        for i in range(hi - lo):
            try:
                shard.decode_into(i, block[i])
            except DamagedShardError:
                readable[i] = False
        if not readable.all():
            rows = (lo + np.flatnonzero(~readable)).tolist()
            rep.unreadable(s, lo, hi, rows)
            rep.problems.append(f"images: shard {s} (rows {lo}..{hi - 1}): {len(rows)} slices fail their checksum "
                                f"or cannot be decoded, rows {rows[:10]}")
        return block, readable

    return read


def _check_labels(labels: np.ndarray, types: np.ndarray, rep: VerifyReport) -> None:
    """Label values 0, 1 or 255 (unlabelled), whole rows unlabelled or none, and each type code its labels'."""
    bad = ~np.isin(labels, (0, 1, UNLABELLED))
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        rep.problems.append(f"labels: values other than 0, 1, 255 in rows {rows[:10].tolist()}")
    partial = (labels == UNLABELLED).any(axis=1) & ~(labels == UNLABELLED).all(axis=1)
    if partial.any():
        rep.problems.append(f"labels: partly unlabelled rows {np.flatnonzero(partial)[:10].tolist()}")
    mismatch = np.flatnonzero(type_codes(labels) != types)
    if mismatch.size:
        rep.problems.append(f"type: {mismatch.size} rows disagree with their labels (Table 3.1), e.g. rows "
                            f"{mismatch[:10].tolist()}")


def _compare_with_source(img, info, source: str, sop_column, written: np.ndarray, S: int, sample: int, seed: int,
                         rep: VerifyReport) -> None:
    """Re-decode a random sample of the written, usable rows from their DICOM files (found by SOPInstanceUID
    in ``source``) by the reference path, and compare."""
    n = info.n
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(written & ~np.isin(np.arange(n), sorted(rep.unreadable_rows)))
    rows = np.sort(rng.choice(candidates, size=min(sample, candidates.size), replace=False))
    sops = [str(x) for x in sop_column]
    where = find_sources(source, [sops[i] for i in rows])
    compared = 0
    for i in rows:
        path = where.get(sops[i])
        if path is None:
            rep.problems.append(f"source: no file for row {i} ({sops[i]}) in {source!r}")
            continue
        ref = reference_slice(path, info.windows, info.size_policy, info.image_size)
        diff = np.abs(np.asarray(img[i], np.float64) - ref)
        compared += 1
        if diff.max() > tolerance(info):
            rep.damaged_shards.add(int(i) // S)
            c = int(np.unravel_index(diff.argmax(), diff.shape)[-1])
            rep.problems.append(f"source: row {i} ({os.path.basename(path)}) differs from a fresh decode by "
                                f"{diff.max():.4g} in channel {c} ({info.windows[c].name})")
    rep.checked["compared_with_source"] = compared
