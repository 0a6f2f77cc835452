"""What defines a build (:class:`BuildConfig`, self-validating; ``params()`` is what a resume must match) and
what it reports (:class:`BuildResult`), with the digests a store keeps instead of paths."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from ichprep import store as st
from ichprep.errors import UsageError
from ichprep.pixels import SIZE_POLICIES
from ichprep.windows import Window, parse_windows, windows_to_list

__all__ = ["BuildConfig", "BuildResult", "path_digest", "file_key", "same_params"]


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines a build. Validates itself; ``params()`` is what a resume must match."""

    source: str
    out: str
    labels: str | None = None
    windows: tuple[Window, ...] = field(default_factory=lambda: parse_windows("cnn"))
    preset: str | None = "cnn"
    on_size: str = "resize"
    # 48 x 512 KiB = 24 MiB for cnn: shard buffers stay under glibc's 32 MiB mmap ceiling (see
    # reuse_freed_memory); 64 made them exactly 32 MiB, each mapped and faulted in afresh.
    shard_slices: int = 48
    codec: str = "auto"
    workers: int = 2
    scheduler: str | None = None
    dashboard: str | None = None  # address of a local cluster's Dask dashboard (":8787"); None: none
    salt: str | None = None
    overwrite: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if self.on_size not in SIZE_POLICIES:
            raise UsageError(f"Expected --on-size one of {', '.join(SIZE_POLICIES)}. Received: on_size={self.on_size!r}")
        if not isinstance(self.shard_slices, int) or not 1 <= self.shard_slices <= 4096:
            raise UsageError(f"Expected --shard-slices an integer in [1, 4096]. Received: shard_slices={self.shard_slices!r}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 256:
            raise UsageError(f"Expected --workers an integer in [0, 256] (0 = run in this process). Received: workers={self.workers!r}")
        if self.codec not in st.CODECS:
            raise UsageError(f"Expected --codec one of {', '.join(st.CODECS)}. Received: codec={self.codec!r}")
        if not self.windows:
            raise UsageError("Expected at least one window. Received: windows=()")
        if self.dashboard is not None and self.scheduler:
            raise UsageError("--dashboard starts a local cluster's dashboard; an existing scheduler (--scheduler) "
                             "serves its own. Received both.")

    def params(self) -> dict:
        """Parameters that define the store's content (not how it is computed). The source folder and label
        file are recorded as digests of their absolute paths, never the paths: folders named after patients
        would carry names into the store."""
        return dict(
            source=path_digest(self.source),
            labels=path_digest(self.labels) if self.labels else None,
            windows=windows_to_list(self.windows),
            on_size=self.on_size,
            shard_slices=self.shard_slices,
            codec=self.codec,
        )


@dataclass
class BuildResult:
    out: str
    written: int = 0
    rejected: int = 0
    reject_reasons: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    shards_total: int = 0
    shards_run: int = 0
    resumed: bool = False
    already_complete: bool = False
    seconds: float = 0.0
    unlabelled: int = 0
    labels_without_file: int = 0
    warnings: dict = field(default_factory=dict)
    # Wall seconds of this run's phases: start (listing, output checks, workers up), headers (the header
    # pass), prepare (ordering, labels, creating the store), pixels (the pixel pass), finish (workers
    # down, manifest).
    timings: dict = field(default_factory=dict)
    # An append: the slices it added (None for a build), the store's generation after it, files it skipped as
    # known (their key in the store) or found the same (another key, the same slice).
    added: int | None = None
    generation: int = 0
    known: int = 0

    def summary(self) -> str:
        if self.already_complete:
            return f"{self.out}: already complete ({self.written} slices); nothing to do (use --overwrite to rebuild)"
        parts = [f"{self.written} written, {self.rejected} rejected"]
        if self.added is not None:
            parts = [(f"{self.added} slices added as generation {self.generation} ({self.written} usable in the "
                      "store)" if self.added else f"nothing new: generation {self.generation} stays"
                      f" ({self.written} usable)") + f", {self.known} files known, {self.rejected} rejected"]
        if self.reject_reasons:
            parts[-1] += ": " + ", ".join(f"{n} {r}" for r, n in sorted(self.reject_reasons.items(), key=lambda x: -x[1]))
        if self.fixed:
            parts.append("fixed: " + ", ".join(f"{n} {k}" for k, n in sorted(self.fixed.items())))
        if self.unlabelled:
            parts.append(f"{self.unlabelled} without labels")
        if self.labels_without_file:
            parts.append(f"{self.labels_without_file} labelled slices not found in the source")
        if self.warnings:
            parts.append("pydicom warnings: " + ", ".join(f"{n}x {k!r}" for k, n in self.warnings.items()))
        done = self.written if self.added is None else self.added  # an append's rate: of the slices it added
        rate = done / self.seconds if self.seconds > 0 else 0.0
        phases = ", ".join(f"{k} {self.timings[k]:.1f} s" for k in ("headers", "pixels") if k in self.timings)
        parts.append(f"{self.seconds:.1f} s ({rate:,.0f} slices/s" + (f"; {phases}" if phases else "") + ")"
                     + (" [resumed]" if self.resumed else ""))
        return "; ".join(parts)


def path_digest(path: str) -> str:
    """A digest of an absolute path (``path:`` + 16 hex digits): equal paths match, the path is not kept."""
    return "path:" + hashlib.blake2b(os.path.abspath(path).encode("utf-8"), digest_size=8).hexdigest()


def file_key(relpath: str, size: int, mtime_ns: int) -> int:
    """A row's ``file_key``: a 64-bit digest of its file's path under the source, size and modification time
    (never 0, the column's fill). An append skips the files whose key the store holds without opening them;
    the path itself is not kept."""
    text = f"{relpath}\0{int(size)}\0{int(mtime_ns)}"
    key = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")
    return key or 1


def same_params(recorded: dict, cfg: BuildConfig) -> bool:
    """A resume's check; stores of earlier versions recorded the paths themselves."""
    old = dict(recorded)
    for key in ("source", "labels"):
        if isinstance(old.get(key), str) and not old[key].startswith("path:"):
            old[key] = path_digest(old[key])
    return old == cfg.params()
