"""How much disk a store takes, and the one line a full disk gets (free space, and about what the build needs)."""

from __future__ import annotations

import os

from ichprep.errors import StoreError
from ichprep.store import done_shards, read_info

__all__ = ["size_on_disk", "disk_full_error"]


def size_on_disk(url: str) -> int | None:
    """Bytes under a local store directory (None for remote URLs)."""
    if "://" in str(url) and not str(url).startswith("file://"):
        return None
    root = str(url).removeprefix("file://")
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def disk_full_error(url: str) -> StoreError:
    """The one line for a full disk under the store at ``url``: the space free now and about how much more
    the build needs (from the shards written so far; before any, the uncompressed size as an upper bound)."""
    import shutil

    root = str(url).removeprefix("file://")
    try:
        free = f"{shutil.disk_usage(os.path.dirname(os.path.abspath(root)) or '.').free / 2**20:,.0f} MiB free"
    except OSError:
        free = "free space unknown"
    need = "more space"
    try:
        g, info = read_info(url)
        done = done_shards(g)
        written = size_on_disk(os.path.join(root, "images"))
        if done.any() and written:
            need = f"about {written / done.sum() * (~done).sum() / 2**20:,.0f} MiB more"
        else:
            need = f"at most {info.n * info.image_size ** 2 * info.channels * 2 / 2**20:,.0f} MiB"
    except Exception:  # the store itself may not have been created yet: say what is known
        pass
    return StoreError(f"no space left on the device of {url!r} ({free}); the build needs {need} to finish. "
                      "Free space (or choose another --out) and rerun the same command: finished shards are kept")
