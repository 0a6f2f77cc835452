"""A store's life after its build: appends (their record, the rows they add, the gap before them) and
repairs (the shards being rebuilt), each a few attribute and array writes ordered so that a crash at any point
leaves a store that says how to finish. The names these write are :mod:`ichprep.store`'s.
"""

from __future__ import annotations

import numpy as np
import zarr

from ichprep.errors import REJECT_REASONS, StoreError
from ichprep.store import (APPENDING, ATTRS_KEY, REPAIRING, SHARD_DONE, STATUS, generations, get_attrs,
                           row_arrays, set_attrs)

__all__ = ["gap_rows", "begin_append", "append_metadata_written", "cancel_append", "end_append", "clear_shard_done",
           "begin_repair", "end_repair", "forget_repair", "repairing_shards"]


def gap_rows(attrs: dict, shard_slices: int) -> set[int]:
    """The rows an append left empty: after each generation but the last, up to the next shard boundary."""
    gaps = set()
    for gen in generations(attrs)[:-1]:
        rows = int(gen["rows"])
        gaps.update(range(rows, -(-rows // shard_slices) * shard_slices))
    return gaps


def begin_append(g: zarr.Group, rows_before: int, start: int, n: int, generation: int) -> None:
    """Grow every per-row array to ``n`` rows (the new rows from ``start``, a shard boundary, so no existing
    shard object is rewritten; rows ``rows_before..start`` are a gap with status ``gap``) and mark the store
    incomplete with the append's record: a crash from here on leaves a store that says how to finish."""
    attrs = get_attrs(g)
    attrs.update({"complete": False, APPENDING: dict(rows_before=int(rows_before), start=int(start), n=int(n),
                                                      generation=int(generation), metadata=False)})
    g.attrs[ATTRS_KEY] = attrs
    _resize_rows(g, n)
    if start > rows_before:  # labels already read as unlabelled (their fill value), type as NO_TYPE (0)
        g[STATUS][rows_before:start] = np.full(start - rows_before, REJECT_REASONS["gap"], np.uint8)


def _resize_rows(g: zarr.Group, n: int) -> None:
    for name in row_arrays(g):
        g[name].resize((n,) + g[name].shape[1:])
    g["images"].resize((n,) + g["images"].shape[1:])
    S = g["images"].shards[0] if g["images"].shards else g["images"].chunks[0]
    g[SHARD_DONE].resize((-(-n // S),))


def append_metadata_written(g: zarr.Group) -> None:
    """The new rows' columns are written: a resumed append keeps them and finishes their shards."""
    attrs = get_attrs(g)
    attrs[APPENDING] = dict(attrs[APPENDING], metadata=True)
    g.attrs[ATTRS_KEY] = attrs


def cancel_append(g: zarr.Group) -> None:
    """Undo an append interrupted before its rows' columns were written: the store as it was, complete."""
    attrs = get_attrs(g)
    record = attrs.pop(APPENDING)
    _resize_rows(g, int(record["rows_before"]))
    attrs["complete"] = True
    g.attrs[ATTRS_KEY] = attrs


def end_append(g: zarr.Group, values: dict) -> None:
    """Merge the grown store's attributes (``values``: counts, rejects, ...), record the new generation and
    mark the store complete: the last write of an append."""
    attrs = get_attrs(g)
    record = attrs.pop(APPENDING)
    before = generations(attrs)  # from the store's rows and counts before this append
    attrs.update(values)
    written = int(attrs.get("counts", {}).get("written", 0))
    attrs["generations"] = before + [dict(generation=int(record["generation"]), rows=int(record["n"]),
                                          written=written)]
    attrs.update(n=int(record["n"]), complete=True)
    g.attrs[ATTRS_KEY] = attrs


def clear_shard_done(g: zarr.Group, shards) -> None:
    """Mark ``shards`` as not written (a repair rewrites them; a crash mid-repair leaves them to redo)."""
    for s in shards:
        g[SHARD_DONE][int(s)] = 0


def begin_repair(g: zarr.Group, shards) -> None:
    """Record that ``shards`` are being rebuilt: the store reads as incomplete until :func:`end_repair`, and
    an interrupted repair names them (:func:`repairing_shards`)."""
    set_attrs(g, {"complete": False, REPAIRING: [int(s) for s in shards]})
    clear_shard_done(g, shards)


def end_repair(g: zarr.Group, usable: int) -> None:
    """Mark a repair finished and the store complete again; StoreError (the store left incomplete) where the
    rebuilt store has another number of usable slices than its build wrote."""
    attrs = get_attrs(g)
    written = attrs.get("counts", {}).get("written")
    if usable != written:
        raise StoreError(f"after the repair {usable} slices are usable where the build wrote {written}; the "
                         "source changed since the build: rebuild the store with --overwrite")
    attrs.pop(REPAIRING, None)
    attrs["complete"] = True
    g.attrs[ATTRS_KEY] = attrs


def forget_repair(g: zarr.Group) -> None:
    """Drop an interrupted repair's record (a resumed build has rebuilt its shards)."""
    attrs = get_attrs(g)
    if attrs.pop(REPAIRING, None) is not None:
        g.attrs[ATTRS_KEY] = attrs


def repairing_shards(attrs: dict) -> list[int]:
    """The shards an interrupted repair left to rebuild, from a store's attributes (empty when none)."""
    return [int(s) for s in attrs.get(REPAIRING, [])]
