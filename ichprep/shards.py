"""One pixel-pass task: decode, window and write whole shards (on a Dask worker, or inline).

The unit of work is one whole shard, so no two tasks ever write the same shard file (concurrent
partial-shard writes lose data in zarr-python 3); each shard is marked done as it is written.
"""

from __future__ import annotations

import numpy as np

from ichprep import store as st
from ichprep.decode import ReadBuffer, read_raw
from ichprep.errors import REJECT_REASONS, RejectError
from ichprep.executor import reuse_freed_memory
from ichprep.headbox import hu_head_box
from ichprep.kernels import channel_params, hu_slice, window_slice
from ichprep.pixels import fit_size, hu_float
from ichprep.scan import SliceHeader
from ichprep.shardio import write_shard
from ichprep.windows import is_hu, windows_from_list

__all__ = ["process_shards", "process_shard"]



def process_shards(url: str, shards: list[int], headers: list[list[SliceHeader]], windows_list: list[dict],
                    on_size: str, size: int, own_process: bool = False) -> list[tuple[str, str, str]] | None:
    """One pixel-pass task: :func:`process_shard` for each of ``shards`` in turn (each marked done
    as it is written, so a task killed halfway leaves its finished shards done). Returns the shards'
    rejects, or None when there are none (then nothing travels back to the parent)."""
    rejects = []
    for shard, shard_headers in zip(shards, headers):
        rejects += process_shard(url, shard, shard_headers, windows_list, on_size, size, own_process)
    return rejects or None


def process_shard(url: str, shard: int, headers: list[SliceHeader], windows_list: list[dict],
                   on_size: str, size: int, own_process: bool = False) -> list[tuple[str, str, str]]:
    """Decode, window and write one whole shard (a None header: a ``gap`` row, written empty). Runs on a Dask
    worker (or inline). A slice that cannot
    be used gets its reason code in the store's status array (which survives an interrupted build) and
    is returned as (path, reason, message). ``own_process``: the process is ichprep's (see
    :func:`reuse_freed_memory`)."""
    if own_process:
        reuse_freed_memory()
    windows = windows_from_list(windows_list)
    hu_store = is_hu(windows)
    C = len(windows)
    n = len(headers)
    g = st.open_for_write(url)
    # schema 5: each slice's head box (an append to an older store keeps its schema, so the attribute says it)
    boxes = np.full((n, 4), -1, np.int16) if st.get_attrs(g).get("schema_version", 0) >= st.HEAD_BOX_VERSION else None
    images = np.empty((n, size, size, C), np.int16 if hu_store else np.float16)  # every row written (a reject's: 0)
    hu_min = np.full(n, np.nan, np.float32)
    hu_max = np.full(n, np.nan, np.float32)
    status = np.zeros(n, np.uint8)
    rejects = []
    scratch = np.empty(size * C, np.float32)
    file_buffer = ReadBuffer()  # one for the whole shard
    for i, h in enumerate(headers):
        if h is None:  # a gap row an append left before its first shard: no file, nothing to decode
            images[i] = 0
            status[i] = REJECT_REASONS["gap"]
            continue
        try:
            raw = read_raw(h, file_buffer)
            rescale = (h.slope, h.effective_intercept, h.fix12)
            if raw.shape != (size, size):  # resampled in float32 HU first (an hu store's then rounded)
                raw, rescale = fit_size(hu_float(raw, *rescale), on_size, size), (1.0, 0.0, False)
            if hu_store:  # HU themselves, int16
                _, a, b, _ = hu_slice(raw, *rescale, out=images[i, :, :, 0])
            else:
                lo, scale, is_full = channel_params(windows, h.window_center, h.window_width)
                _, a, b = window_slice(raw, *rescale, lo, scale, is_full, out=images[i], row_scratch=scratch)
            hu_min[i], hu_max[i] = a, b
            if boxes is not None:
                boxes[i] = hu_head_box(raw, *rescale)
        except RejectError as exc:
            images[i] = 0
            status[i] = REJECT_REASONS[exc.reason]
            rejects.append((h.path, exc.reason, exc.message))
    write_shard(g, shard, images, hu_min, hu_max, status, boxes)
    return rejects
