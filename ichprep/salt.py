"""The secret that keys patient hashes: one per user (or per project), so that every store built from the
same DICOMs holds the same patient keys, and with them the same train/val/test splits.

Resolution, first match wins: an explicit salt (``--salt``), ``ICHPREP_SALT``, the file named by
``ICHPREP_SALT_FILE``, else ``$XDG_CONFIG_HOME/ichprep/salt`` (``~/.config/ichprep/salt``). A missing file
is created once with 256 random bits, readable by its owner only (0600); a team shares one by pointing
``ICHPREP_SALT_FILE`` at a project file. Stores record :func:`salt_fingerprint`, never the salt: two
stores with equal fingerprints were keyed alike, and the fingerprint cannot be turned back into the salt.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass

from ichprep.errors import UsageError

__all__ = ["ResolvedSalt", "resolve_salt", "salt_fingerprint", "default_salt_path"]

_FINGERPRINT_CONTEXT = b"ichprep salt fingerprint v1"


@dataclass(frozen=True)
class ResolvedSalt:
    value: str
    source: str  # "--salt", "ICHPREP_SALT", or the file's path

    @property
    def fingerprint(self) -> str:
        return salt_fingerprint(self.value)


def salt_fingerprint(salt: str) -> str:
    """16 hex digits identifying ``salt`` (a keyed BLAKE2b of a constant: it reveals nothing of the salt)."""
    key = hashlib.blake2b(salt.encode("utf-8"), digest_size=32).digest()  # any length of salt -> a 32-byte key
    return hashlib.blake2b(_FINGERPRINT_CONTEXT, digest_size=8, key=key).hexdigest()


def default_salt_path() -> str:
    if os.environ.get("ICHPREP_SALT_FILE"):
        return os.path.expanduser(os.environ["ICHPREP_SALT_FILE"])
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "ichprep", "salt")


def _read_salt_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise UsageError(f"Cannot read the salt file {path!r} ({exc.strerror}); fix its permissions, or pass "
                         "--salt / set ICHPREP_SALT.") from None
    if not value:
        raise UsageError(f"The salt file {path!r} is empty; delete it to have a new one made, or write a "
                         "secret into it.")
    return value


def _create_salt_file(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and never replaces: two builds starting together agree on one salt
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def resolve_salt(explicit: str | None = None) -> ResolvedSalt:
    """The salt to key patient hashes with (see the module docstring), creating the user's file if needed."""
    if explicit is not None:
        if not explicit:
            raise UsageError("Expected a non-empty --salt. Received: an empty string")
        return ResolvedSalt(explicit, "--salt")
    if os.environ.get("ICHPREP_SALT"):
        return ResolvedSalt(os.environ["ICHPREP_SALT"], "ICHPREP_SALT")
    path = default_salt_path()
    if not os.path.exists(path):
        try:
            _create_salt_file(path)
        except OSError as exc:
            raise UsageError(f"Cannot create the salt file {path!r} ({exc.strerror}); set ICHPREP_SALT_FILE to "
                             "a writable path, or pass --salt / set ICHPREP_SALT.") from None
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not os.environ.get("ICHPREP_SALT_FILE"):
        os.chmod(path, 0o600)  # the user's own file: keep it private (a shared project file is left alone)
    return ResolvedSalt(_read_salt_file(path), path)
