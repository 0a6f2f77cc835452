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

from ichprep import store as st
from ichprep.errors import IchprepError
from ichprep.labels import UNLABELLED, type_codes
from ichprep.progress import ProgressBar
from ichprep.windows import Window, is_hu

__all__ = ["verify", "VerifyReport", "reference_slice"]

# The build computes in float32 and rounds to float16; the float64 reference may land on the
# neighbouring float16 value (2**-11 apart just below 1.0), never further.
TOLERANCE = 2.0**-11 + 1e-6


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)

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


def _find_sources(source: str, sops: list[str]) -> dict[str, str]:
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
           stream: TextIO | None = None) -> VerifyReport:
    rep = VerifyReport()
    try:
        g, info = st.read_info(url)
    except IchprepError as exc:
        rep.problems.append(f"schema: {exc}")
        return rep
    n = info.n
    if not info.complete:
        done = st.done_shards(g)
        rep.problems.append(f"incomplete: the build has not finished ({int(done.sum())}/{done.size} shards written); "
                            "rerun the same 'ichprep build' command to resume")
    # Schema details.
    img = st.images(g)
    expected = (n, info.image_size, info.image_size, info.channels)
    dtype = np.int16 if info.hu else np.float16
    if img.shape != expected or img.dtype != dtype:
        rep.problems.append(f"images: expected {np.dtype(dtype)} {expected}, found {img.dtype} {img.shape}")
    for name in ("labels", "type", "sop_uid", "study_uid", "series_uid", "patient", "position_z",
                 "hu_min", "hu_max", "status"):
        if g[name].shape[0] != n:
            rep.problems.append(f"{name}: {g[name].shape[0]} rows, expected {n}")
    if rep.problems and not info.complete:
        return rep
    # Labels and type.
    labels = st.column(g, "labels")
    types = st.column(g, "type")
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
    status = st.column(g, "status")
    hu_min, hu_max = st.column(g, "hu_min"), st.column(g, "hu_max")
    ok = status == 0
    if info.complete and (np.isnan(hu_min[ok]).any() or np.isnan(hu_max[ok]).any()):
        rep.problems.append(f"hu_min/hu_max: NaN in {int((np.isnan(hu_min) & ok).sum())} rows marked ok")
    if info.complete and (hu_min[ok] > hu_max[ok]).any():
        rep.problems.append("hu_min/hu_max: min above max")
    counts = info.counts
    if info.complete and counts.get("written") != int(ok.sum()):
        rep.problems.append(f"counts: attrs say {counts.get('written')} written, status says {int(ok.sum())}")
    # Every value finite and in [0, 1], one shard at a time.
    S = img.shards[0] if img.shards else img.chunks[0]
    done = st.done_shards(g)
    bar = ProgressBar(stream, "check", n)
    bad_rows: list[int] = []
    for s in range(-(-n // S)):
        if not done[s]:
            continue
        lo, hi = s * S, min(n, (s + 1) * S)
        try:
            block = np.asarray(img[lo:hi])
        except Exception as exc:  # a damaged shard: say which, and go on with the others
            rep.problems.append(f"images: shard {s} (rows {lo}..{hi - 1}) cannot be read: {type(exc).__name__}: {exc}")
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
        bad_rows.extend((lo + np.flatnonzero(~(finite & inside))).tolist())
        bar.update(hi)
    bar.close()
    if bad_rows:
        what = "HU outside the slice's hu_min..hu_max" if info.hu else "non-finite or out-of-[0, 1] values"
        rep.problems.append(f"images: {what} in {len(bad_rows)} slices, e.g. rows {bad_rows[:10]}")
    rep.checked.update(slices=n, shards_done=int(done.sum()), shards=int(done.size))
    # Re-decode a sample from the source and compare.
    if source is not None:
        rng = np.random.default_rng(seed)
        candidates = np.flatnonzero(ok & np.repeat(done, S)[:n])
        rows = np.sort(rng.choice(candidates, size=min(sample, candidates.size), replace=False))
        sops = [str(x) for x in st.column(g, "sop_uid")]
        where = _find_sources(source, [sops[i] for i in rows])
        compared = 0
        for i in rows:
            path = where.get(sops[i])
            if path is None:
                rep.problems.append(f"source: no file for row {i} ({sops[i]}) in {source!r}")
                continue
            ref = reference_slice(path, info.windows, info.size_policy, info.image_size)
            diff = np.abs(np.asarray(img[i], np.float64) - ref)
            compared += 1
            # hu: whole units, exact -- a store with resized slices allows 1 HU (resampling in float32 may round apart)
            tolerance = (1.0 if info.fixed.get("resized") else 0.0) if info.hu else TOLERANCE
            if diff.max() > tolerance:
                c = int(np.unravel_index(diff.argmax(), diff.shape)[-1])
                rep.problems.append(f"source: row {i} ({os.path.basename(path)}) differs from a fresh decode by "
                                    f"{diff.max():.4g} in channel {c} ({info.windows[c].name})")
        rep.checked["compared_with_source"] = compared
    return rep
