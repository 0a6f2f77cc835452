"""One build at a time into a local output: ``<out>.lock`` holds the writer's pid; a dead writer's lock is
taken over."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ichprep.errors import StoreError, UsageError

__all__ = ["output_lock"]


@contextlib.contextmanager
def output_lock(out: str) -> Iterator[None]:
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
