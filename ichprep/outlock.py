"""One build at a time into an output: ``<out>.lock``; a dead writer's lock is taken over.

Local outputs: the lock file, created with O_EXCL, holds the writer's pid. ``s3://`` outputs: the lock
object, holding the writer's host and pid (taken over only from a dead process on the same host), is created with a
conditional put (``If-None-Match: *``), which S3 has honoured since 2024 (and moto's server does); an
S3-compatible store that ignores the header cannot stop two builds, and other object stores (gcs://, az://)
are not locked at all (docs/cluster.md says so)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Iterator

from ichprep.errors import StoreError, UsageError

__all__ = ["output_lock"]


@contextlib.contextmanager
def output_lock(out: str, what: str = "build") -> Iterator[None]:
    """Refuse a second writer into the same output while one runs (``<out>.lock``; see the module docstring
    for which outputs are locked); ``what`` names the writer in the message. A lock left by a dead process is
    taken over."""
    if out.startswith("s3://"):
        with _s3_lock(out):
            yield
        return
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
                raise StoreError(f"Another {what} (pid {pid}) is writing {out!r}; wait for it, or remove "
                                 f"{lock!r} if that process is gone.") from None
            os.unlink(lock)
        except OSError as exc:
            raise UsageError(f"Cannot write the output {out!r} ({exc.strerror or exc}). Choose a writable --out.") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


@contextlib.contextmanager
def _s3_lock(out: str) -> Iterator[None]:
    import fsspec

    fs = fsspec.filesystem("s3")
    bucket, _, key = out.removeprefix("s3://").rstrip("/").partition("/")
    key += ".lock"
    where = f"s3://{bucket}/{key}"
    for attempt in range(2):
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=json.dumps(_holder()).encode(), IfNoneMatch="*")
            break
        except FileExistsError:  # 412 Precondition Failed: another build holds it
            try:
                held = json.loads(fs.cat(where))
            except (OSError, ValueError):
                held = {}
            if attempt == 0 and held.get("host") == socket.gethostname() and held.get("pid") and \
                    not _alive(int(held["pid"])):
                fs.rm(where)
                continue
            raise StoreError(f"Another build (pid {held.get('pid', '?')} on {held.get('host', 'another host')}) is "
                             f"writing {out!r}; wait for it, or remove {where!r} if that build is gone.") from None
        except OSError as exc:
            raise StoreError(f"Cannot create the lock {where!r} for the output ({exc}). Check the bucket and "
                             "credentials, or choose another --out.") from None
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the connection may be what failed: keep the build's own error
            fs.rm(where)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
