"""Every exception ichprep raises on purpose.

Each class inherits from :class:`IchprepError` *and* from the built-in it resembles, so callers can
catch either (``except ValueError`` keeps working). The CLI maps :class:`UsageError` to exit code 2.
"""

from __future__ import annotations

__all__ = [
    "IchprepError",
    "UsageError",
    "LabelsError",
    "WindowSpecError",
    "SourceError",
    "StrictRejectError",
    "MissingDependencyError",
    "StoreError",
    "StoreExistsError",
    "IncompleteStoreError",
    "MissingStoreError",
    "DamagedShardError",
    "SchemaError",
    "RejectError",
    "REJECT_REASONS",
]


class IchprepError(Exception):
    """Base class of all ichprep errors."""


class UsageError(IchprepError, ValueError):
    """Bad input from the user (a flag, a CSV, a window spec): the CLI prints one line, exits 2."""


class LabelsError(UsageError):
    """The label CSV cannot be used as it is."""


class WindowSpecError(UsageError):
    """A window preset or ``name:center/width`` spec is malformed."""


class SourceError(UsageError, FileNotFoundError):
    """The DICOM source folder is missing, empty or unreadable."""


class StrictRejectError(IchprepError):
    """``--strict``: the build finished, but some files were rejected."""


class MissingDependencyError(IchprepError, ImportError):
    """An optional dependency a command needs is not installed; the message names the extra to install."""


class StoreError(IchprepError, OSError):
    """A store cannot be created, opened or read as asked."""


class StoreExistsError(StoreError, UsageError):
    """The output already holds a store built with other parameters (use ``--overwrite``)."""


class MissingStoreError(StoreError, UsageError):
    """No store at the path or URL given: the user's input, so exit 2."""


class IncompleteStoreError(StoreError):
    """The store's build never finished: its data may be partial."""


class DamagedShardError(StoreError):
    """A shard object of a store is missing, truncated or fails a checksum. ``shard``: its number;
    ``row``: the first damaged row found, when known. ``ichprep verify --repair`` rebuilds such shards."""

    def __init__(self, message: str, shard: int, row: int | None = None) -> None:
        super().__init__(message)
        self.shard, self.row = shard, row


class SchemaError(StoreError, ValueError):
    """The store does not follow the schema this version of ichprep reads."""


# Reason codes for files (or slices) a build cannot use. The code is stored per row in the
# ``status`` array (0 = ok) and, with a message, in the reject manifest. Never renumber.
REJECT_REASONS: dict[str, int] = {
    "ok": 0,
    "not_dicom": 1,
    "truncated": 2,
    "no_pixel_data": 3,
    "unsupported_transfer_syntax": 4,
    "decode_failed": 5,
    "multi_frame": 6,
    "not_ct": 7,
    "bad_dimensions": 8,
    "missing_tag": 9,
    "bad_size": 10,
    "unreadable": 11,
    "no_window": 12,
    "duplicate": 13,
    "changed": 14,  # the file changed (size or modification time) between the header and pixel passes
    "bad_uid": 15,  # a UID with characters that could forge output rows (separators, quotes, controls)
    "gap": 16,  # no file: a row left empty so that an append's rows start on a shard boundary
}
REASON_NAMES: dict[int, str] = {v: k for k, v in REJECT_REASONS.items()}


class RejectError(IchprepError, ValueError):
    """One file cannot be used. ``reason`` is a key of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REJECT_REASONS or reason == "ok":
            raise ValueError(f"Expected a reject reason from REJECT_REASONS, got {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
