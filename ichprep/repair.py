"""``ichprep verify --repair --source DICOM_DIR``: rebuild the damaged shards of a store, and only those.

A shard is rebuilt as a build writes it (:func:`ichprep.shards.process_shards`, the same decode, windows
and writer), from the files whose SOPInstanceUIDs its rows hold. While it runs the store says it is
incomplete (readers refuse it) and the shards being rebuilt are marked not done, so a repair that is
interrupted leaves a store that says so; rerunning the repair finishes it (the shards still to do are kept
in the store's attributes).
"""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from ichprep import lifecycle as lc
from ichprep import store as st
from ichprep.errors import IchprepError, RejectError, StoreError, UsageError
from ichprep.outlock import output_lock
from ichprep.progress import ProgressBar
from ichprep.scan import read_header
from ichprep.shards import process_shards
from ichprep.windows import windows_to_list

__all__ = ["repair_shards", "pending_repair", "shard_rows"]



def pending_repair(url: str) -> list[int]:
    """Shards an interrupted repair of ``url`` left to rebuild (empty when none)."""
    try:
        g, info = st.read_info(url)
    except IchprepError:
        return []
    if info.complete:  # finished since (a rerun of the build resumes those shards too)
        return []
    return lc.repairing_shards(st.get_attrs(g))


def repair_shards(url: str, source: str, shards, console: TextIO | None = None) -> list[int]:
    """Rebuild ``shards`` of the store at ``url`` from the DICOM files in ``source``; returns the shards
    rebuilt. Every file must be found (by SOPInstanceUID) and still read as the slice it was: otherwise
    StoreError, before anything is written."""
    from ichprep.verify import find_sources

    shards = sorted({int(s) for s in shards} | set(pending_repair(url)))
    if not shards:
        return []
    g, info = st.read_info(url)
    if not (info.complete or lc.repairing_shards(st.get_attrs(g))):
        raise UsageError(f"{url!r} is incomplete: its build has not finished; rerun the same 'ichprep build' "
                         "command to resume it instead of repairing it")
    S, n = st.images(g).shards[0], info.n
    try:
        sops = [str(x) for x in st.column(g, "sop_uid")]
    except Exception as exc:
        raise StoreError(f"{url!r}: the sop_uid column cannot be read ({exc}), so the files of the damaged "
                         "shards cannot be found: rebuild the store with --overwrite") from None
    rows = {s: range(s * S, min(n, (s + 1) * S)) for s in shards}
    gap = lc.gap_rows(info.attrs, S)  # rows an append left empty: no file to find, written empty again
    wanted = [sops[i] for s in shards for i in rows[s] if i not in gap]
    where = find_sources(source, wanted)
    missing = [sop for sop in wanted if sop not in where]
    if missing:
        raise StoreError(f"Cannot repair {url!r}: {len(missing)} slices of the damaged shards have no file in "
                         f"{source!r} (e.g. {missing[0]}). Pass the folder the store was built from.")
    headers = {}
    for s in shards:
        headers[s] = []
        for i in rows[s]:
            if i in gap:
                headers[s].append(None)
                continue
            try:
                h = read_header(where[sops[i]], "", Counter())  # the salt only names patients, not needed here
            except RejectError as exc:
                raise StoreError(f"Cannot repair {url!r}: the file of row {i} ({where[sops[i]]}) no longer reads "
                                 f"({exc.reason}: {exc.message}); the source changed since the build") from None
            headers[s].append(h)
    with output_lock(url):
        g = st.open_for_write(url)
        lc.begin_repair(g, shards)
        bar = ProgressBar(console, "repair", len(shards), unit="shards")
        for k, s in enumerate(shards):
            process_shards(url, [s], [headers[s]], windows_to_list(info.windows), info.size_policy, info.image_size)
            bar.update(k + 1)
        bar.close()
        try:
            lc.end_repair(g, int((st.column(g, "status") == 0).sum()))
        except StoreError as exc:
            raise StoreError(f"{url!r}: {exc}") from None
    return shards


def shard_rows(url: str, shards) -> str:
    """'rows a..b, c..d' of ``shards`` of the store at ``url`` (for messages)."""
    g, info = st.read_info(url)
    S, n = st.images(g).shards[0], info.n
    parts = [f"{s * S}..{min(n, (s + 1) * S) - 1}" for s in sorted(shards)]
    return "rows " + ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "")

