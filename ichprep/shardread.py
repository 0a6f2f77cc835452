"""The shard reader: whole shard objects (or, for an uncompressed local store, single slices) read and checked
here, each slice decoded straight into the caller's buffer. The objects are those :mod:`ichprep.shardio` writes
(the Zarr v3 sharding layout: inner chunks in row order, then the index of (offset, length) pairs and its
crc32c); layouts it does not know are read through zarr by the callers."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import zarr

from ichprep.errors import DamagedShardError
from ichprep.shardio import _NO_INDEX, _RAW, _chain, _crc32c_tail, _image_layout

__all__ = ["shard_reader", "ShardReader", "Shard", "DirectShard", "local_object_path"]


class _ChecksumMismatch(Exception):
    pass


@contextlib.contextmanager
def _slice_errors(where: str, shard: int, i: int, row: int):
    """Any failure to decode slice i of a shard, as DamagedShardError naming the row and the shard."""
    try:
        yield
    except _ChecksumMismatch:
        raise DamagedShardError(f"{where}: row {row} (slice {i} of shard {shard}) fails its crc32c checksum: the "
                                "shard is damaged", shard, row) from None
    except Exception as exc:
        raise DamagedShardError(f"{where}: row {row} (slice {i} of shard {shard}) cannot be decoded ({exc}); the "
                                "shard is damaged", shard, row) from None


class Shard:
    """One shard object as read: its bytes and its index; :meth:`decode_into` fills a caller's buffer."""

    def __init__(self, number: int, data: np.ndarray, index: np.ndarray, codec, where: str, first_row: int = 0,
                 checksummed: bool = False):
        self.number, self.data, self.index, self._codec, self._where = number, data, index, codec, where
        self.first_row, self._checksummed = first_row, checksummed

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def decode_into(self, i: int, out: np.ndarray) -> None:
        """Slice ``i`` of this shard (0-based inside it) into ``out``, a C-contiguous array of one slice's
        shape and the array's dtype: decompressed straight into it, no intermediate array. A chunk that
        fails its crc32c raises StoreError naming the row and the shard, before any byte is decoded."""
        offset, length = (int(v) for v in self.index[i])
        if offset == int(_NO_INDEX) and length == int(_NO_INDEX):
            out[...] = 0  # a chunk never written reads as the fill value, as zarr reads it
            return
        with _slice_errors(self._where, self.number, i, self.first_row + i):
            if offset + length > self.data.size:
                raise ValueError(f"chunk bytes {offset}..{offset + length} lie past the object's end ({self.data.size})")
            raw = self.data[offset:offset + length]
            if self._checksummed:
                if length < 4 or _crc32c_tail(raw[:-4]) != raw[-4:].tobytes():
                    raise _ChecksumMismatch()
                raw, length = raw[:-4], length - 4
            if self._codec is _RAW:
                if length != out.nbytes:
                    raise ValueError(f"chunk of {length} bytes where a slice has {out.nbytes}")
                out.reshape(-1).view(np.uint8)[:] = raw
            else:
                self._codec.decode(raw, out=out)


class DirectShard:
    """One shard object of an uncompressed store on a local disk, read slice by slice: :meth:`decode_into`
    reads a slice's bytes from the file straight into the caller's buffer (one copy, the kernel's; the whole
    object read first, then copied out, was two) and checks its crc32c there. Holds the file open until
    collected or :meth:`close`. ``nbytes`` is the object's size, as if held: the reader's cache counts it so."""

    def __init__(self, number: int, fd: int, size: int, index: np.ndarray, where: str, first_row: int,
                 checksummed: bool):
        self.number, self._fd, self._size, self.index, self._where = number, fd, size, index, where
        self.first_row, self._checksummed = first_row, checksummed

    @property
    def nbytes(self) -> int:
        return self._size

    def close(self, _close=os.close) -> None:  # bound now: at interpreter exit the os module may be gone
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _close(fd)

    def __del__(self):
        with contextlib.suppress(OSError):
            self.close()

    def decode_into(self, i: int, out: np.ndarray) -> None:
        """As :meth:`Shard.decode_into`: a chunk failing its crc32c, or not the size of a slice, raises
        DamagedShardError naming the row and the shard."""
        offset, length = (int(v) for v in self.index[i])
        if offset == int(_NO_INDEX) and length == int(_NO_INDEX):
            out[...] = 0  # a chunk never written reads as the fill value, as zarr reads it
            return
        tail = bytearray(4 * self._checksummed)
        with _slice_errors(self._where, self.number, i, self.first_row + i):
            if length != out.nbytes + len(tail) or offset + length > self._size:
                raise ValueError(f"chunk bytes {offset}..{offset + length} where a slice has {out.nbytes} bytes "
                                 f"and the object {self._size}")
            dest = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)  # read into, never a copy
            values = dest.reshape(-1).view(np.uint8)
            got = os.preadv(self._fd, [values, tail] if tail else [values], offset)
            if got != length:
                raise ValueError(f"read {got} of the chunk's {length} bytes")
            if tail and _crc32c_tail(values) != bytes(tail):
                raise _ChecksumMismatch()
            if dest is not out:
                out[...] = dest


class ShardReader:
    """Reads whole shard objects of an images array, one store call each (local or remote: through the
    array's own zarr store), and checks each index's crc32c. The training stream decodes single slices
    from them straight into its batch buffers; zarr decodes a span into a new array, which the stream
    then had to copy again."""

    def __init__(self, image_array: zarr.Array, rows_per_shard: int, codec, checksummed: bool = False):
        self.array, self.rows_per_shard, self._codec = image_array, int(rows_per_shard), codec
        self.checksummed = checksummed
        self.slice_shape = tuple(image_array.shape[1:])
        self._where = str(image_array.store_path)
        self._tail = 16 * self.rows_per_shard + 4  # the index of (offset, length) pairs and its crc32c
        # Uncompressed slices of a local store are read from the file into their batch (DirectShard)
        self._local_path = local_object_path(image_array) if codec is _RAW and hasattr(os, "preadv") else None

    def fetch(self, shard: int) -> Shard | DirectShard:
        """Shard ``shard``'s object; a missing object or an index failing its checksum raises StoreError
        naming the shard and its rows."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        if self._local_path is not None:
            return self._fetch_direct(shard, self._local_path(shard))
        key = self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))
        buf = sync((self.array.store_path / key).get(prototype=default_buffer_prototype()))
        if buf is None:
            raise DamagedShardError(f"{self._where}: shard {shard} ({self._rows(shard)}) is missing", shard)
        data = buf.as_numpy_array().view(np.uint8).reshape(-1)
        index = self._index(shard, data[-self._tail:], data.size)
        return Shard(shard, data[:-self._tail], index, self._codec, self._where, shard * self.rows_per_shard,
                     self.checksummed)

    def _rows(self, shard: int) -> str:
        S = self.rows_per_shard
        return f"rows {shard * S}..{min((shard + 1) * S, self.array.shape[0]) - 1}"

    def _index(self, shard: int, tail: np.ndarray, size: int) -> np.ndarray:
        """The shard index from the object's last 16 S + 4 bytes (``tail``), its checksum checked."""
        import google_crc32c

        if size < self._tail:
            raise DamagedShardError(f"{self._where}: shard {shard} ({self._rows(shard)}) is truncated ({size} bytes)",
                                    shard)
        index_bytes = tail[:-4].tobytes()
        if int(google_crc32c.value(index_bytes)) != int.from_bytes(tail[-4:].tobytes(), "little"):
            raise DamagedShardError(f"{self._where}: shard {shard} ({self._rows(shard)}): its index fails its crc32c "
                                    "checksum; the shard is damaged", shard)
        return np.frombuffer(index_bytes, dtype="<u8").reshape(self.rows_per_shard, 2)

    def _fetch_direct(self, shard: int, path: str) -> DirectShard:
        """The shard's index only, from the end of its file, which stays open for :class:`DirectShard`."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise DamagedShardError(f"{self._where}: shard {shard} ({self._rows(shard)}) is missing", shard) from None
        try:
            size = os.fstat(fd).st_size
            want = min(size, self._tail)
            tail = np.frombuffer(os.pread(fd, want, size - want), np.uint8)
            index = self._index(shard, tail, size)
        except BaseException:
            os.close(fd)
            raise
        return DirectShard(shard, fd, size - tail.size, index, self._where, shard * self.rows_per_shard,
                           self.checksummed)


def local_object_path(image_array: zarr.Array):
    """``path(shard)``: the file holding shard ``shard``'s object, where the array lies in a local folder; None
    for other stores (remote ones are read through zarr)."""
    root = getattr(image_array.store_path.store, "root", None)
    if root is None:
        return None
    folder = os.path.join(str(root), image_array.store_path.path)
    key, rest = image_array.metadata.encode_chunk_key, (0,) * (image_array.ndim - 1)
    return lambda shard: os.path.join(folder, key((int(shard),) + rest))


def shard_reader(image_array: zarr.Array) -> ShardReader | None:
    """A :class:`ShardReader` for ``image_array``, or None when its layout is not the one
    ``ichprep.store.create_store`` makes (then read through zarr)."""
    try:
        import google_crc32c  # noqa: F401
    except ImportError:
        return None
    layout = _image_layout(image_array)
    known = _chain(layout[1]) if layout else None
    if known is None:
        return None
    return ShardReader(image_array, layout[0], *known)
