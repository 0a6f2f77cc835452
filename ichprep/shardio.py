"""The hand-written shard writer: whole shard objects encoded here, byte-identical to what zarr writes.

Why: zarr's write path (zarr-python's or the zarrs pipeline) copies each shard several times. Each inner
chunk goes through the numcodecs codec zarr would use, in row order, followed by the index of (offset,
length) uint64 pairs and its crc32c, as the Zarr v3 sharding spec lays it out; tests check the objects
against zarr-python's writer byte for byte, for every codec. Layouts this module does not know are left
to zarr.
"""

from __future__ import annotations

import os

import numpy as np
import zarr

from ichprep.errors import DamagedShardError, StoreError
from ichprep.store import HEAD_BOX, HU_MAX, HU_MIN, SHARD_DONE, STATUS, fast_codec_pipeline

__all__ = ["shard_encoder", "shard_reader", "ShardReader", "Shard", "DirectShard", "chunk_encoder", "write_shard"]

_BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}
_NO_INDEX = np.uint64(2**64 - 1)  # the sharding spec's "empty chunk" offset and length
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


_RAW = "raw"  # a chain of the bytes codec alone: chunks are the little-endian values themselves


_CRC32C = {"name": "crc32c"}


def _chain(codecs):
    """(numcodecs codec, checksummed) behind a chain [bytes (little-endian), at most one of blosc/zstd,
    optionally crc32c last] -- zarr's BloscCodec and ZstdCodec are numcodecs' Blosc and Zstd built from
    the same configuration -- with ``_RAW`` for no compressor; None for any other chain."""
    import numcodecs

    chain = [c.to_dict() for c in codecs]
    checksummed = bool(chain) and chain[-1] == _CRC32C
    if checksummed:
        chain = chain[:-1]
    if not chain or chain[0]["name"] != "bytes" or chain[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    if len(chain) == 1:
        return _RAW, checksummed
    if len(chain) != 2:
        return None
    name, cfg = chain[1]["name"], chain[1].get("configuration", {})
    if name == "blosc":
        return numcodecs.Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=_BLOSC_SHUFFLE[cfg["shuffle"]],
                               blocksize=cfg.get("blocksize", 0), typesize=cfg.get("typesize")), checksummed
    if name == "zstd":
        return numcodecs.Zstd(level=cfg["level"], checksum=cfg.get("checksum", False)), checksummed
    return None


def _crc32c_tail(data) -> bytes:
    """The 4 bytes Zarr's crc32c codec appends: the CRC-32C of ``data``, little-endian."""
    import google_crc32c

    return int(google_crc32c.value(data)).to_bytes(4, "little")


def _compressor(codecs):
    """``compress(array) -> bytes`` as zarr encodes a chunk with ``codecs``; None for chains not known."""
    known = _chain(codecs)
    if known is None:
        return None
    codec, checksummed = known
    compress = bytes if codec is _RAW else codec.encode
    if not checksummed:
        return compress

    def compress_and_sum(values) -> bytes:
        chunk = compress(values)
        return chunk + _crc32c_tail(chunk)

    return compress_and_sum


def _image_layout(image_array: zarr.Array):
    """(rows per shard, inner codec chain) when ``image_array`` has the layout
    ``ichprep.store.create_store`` makes -- Zarr v3, one shard codec with its index at the end guarded by
    crc32c, one float16 (or, for hu stores, int16) slice per inner chunk -- else None."""
    meta = image_array.metadata
    if getattr(meta, "zarr_format", None) != 3 or len(meta.codecs) != 1 or \
            type(meta.codecs[0]).__name__ != "ShardingCodec":
        return None
    sharding = meta.codecs[0]
    if getattr(sharding.index_location, "value", None) != "end" or \
            [c.to_dict() for c in sharding.index_codecs] != [_BYTES_LE, {"name": "crc32c"}]:
        return None
    if tuple(sharding.chunk_shape) != (1, *image_array.shape[1:]) or \
            tuple(meta.chunk_grid.chunk_shape[1:]) != tuple(image_array.shape[1:]) or \
            np.dtype(image_array.dtype) not in (np.float16, np.int16):
        return None
    return meta.chunk_grid.chunk_shape[0], sharding.codecs


def shard_encoder(image_array: zarr.Array):
    """A function ``encode(images) -> bytes`` giving the whole shard object of ``image_array`` for
    ``images`` (its rows, one inner chunk each), or None when the array's layout is not the one
    ``ichprep.store.create_store`` makes (then the caller lets zarr write)."""
    try:
        import google_crc32c  # zarr's own dependency for its crc32c codec
    except ImportError:
        return None
    layout = _image_layout(image_array)
    if layout is None:
        return None
    rows_per_shard, codecs = layout
    known = _chain(codecs)
    if known is None:
        return None
    compress = bytes if known[0] is _RAW else known[0].encode
    checksummed = known[1]
    little = np.dtype(image_array.dtype).newbyteorder("<")

    def encode(images: np.ndarray) -> bytes:
        images = np.ascontiguousarray(images, dtype=little)
        index = np.full((rows_per_shard, 2), _NO_INDEX, dtype="<u8")  # rows past the array's end stay empty
        parts, offset = [], 0
        for i in range(images.shape[0]):
            chunk = compress(images[i])
            parts.append(chunk)
            if checksummed:  # the checksum as its own part: no copy of the chunk to append 4 bytes
                parts.append(_crc32c_tail(chunk))
            index[i] = offset, len(chunk) + 4 * checksummed
            offset += len(chunk) + 4 * checksummed
        index_bytes = index.tobytes()
        parts += [index_bytes, _crc32c_tail(index_bytes)]
        return b"".join(parts)

    return encode


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
        row = self.first_row + i
        try:
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
        except _ChecksumMismatch:
            raise DamagedShardError(f"{self._where}: row {row} (slice {i} of shard {self.number}) fails its "
                                    "crc32c checksum: the shard is damaged", self.number, row) from None
        except Exception as exc:
            raise DamagedShardError(f"{self._where}: row {row} (slice {i} of shard {self.number}) cannot be "
                                    f"decoded ({exc}); the shard is damaged", self.number, row) from None


class _ChecksumMismatch(Exception):
    pass


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

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        self.close()

    def decode_into(self, i: int, out: np.ndarray) -> None:
        """As :meth:`Shard.decode_into`: a chunk failing its crc32c, or not the size of a slice, raises
        DamagedShardError naming the row and the shard."""
        offset, length = (int(v) for v in self.index[i])
        if offset == int(_NO_INDEX) and length == int(_NO_INDEX):
            out[...] = 0  # a chunk never written reads as the fill value, as zarr reads it
            return
        row = self.first_row + i
        tail = bytearray(4 * self._checksummed)
        try:
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
        except _ChecksumMismatch:
            raise DamagedShardError(f"{self._where}: row {row} (slice {i} of shard {self.number}) fails its "
                                    "crc32c checksum: the shard is damaged", self.number, row) from None
        except Exception as exc:
            raise DamagedShardError(f"{self._where}: row {row} (slice {i} of shard {self.number}) cannot be "
                                    f"decoded ({exc}); the shard is damaged", self.number, row) from None


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
        root = getattr(image_array.store_path.store, "root", None)  # a local store's folder
        # Uncompressed slices of a local store are read from the file into their batch (DirectShard)
        self._folder = os.path.join(str(root), image_array.store_path.path) if root is not None and \
            codec is _RAW and hasattr(os, "preadv") else None

    def fetch(self, shard: int) -> Shard | DirectShard:
        """Shard ``shard``'s object; a missing object or an index failing its checksum raises StoreError
        naming the shard and its rows."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        S = self.rows_per_shard
        key = self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))
        if self._folder is not None:
            return self._fetch_direct(shard, os.path.join(self._folder, key))
        buf = sync((self.array.store_path / key).get(prototype=default_buffer_prototype()))
        if buf is None:
            raise DamagedShardError(f"{self._where}: shard {shard} ({self._rows(shard)}) is missing", shard)
        data = buf.as_numpy_array().view(np.uint8).reshape(-1)
        index = self._index(shard, data[-(16 * S + 4):], data.size)
        return Shard(shard, data[:-(16 * S + 4)], index, self._codec, self._where, shard * S, self.checksummed)

    def _rows(self, shard: int) -> str:
        S = self.rows_per_shard
        return f"rows {shard * S}..{min((shard + 1) * S, self.array.shape[0]) - 1}"

    def _index(self, shard: int, tail: np.ndarray, size: int) -> np.ndarray:
        """The shard index from the object's last 16 S + 4 bytes (``tail``), its checksum checked."""
        import google_crc32c

        if size < 16 * self.rows_per_shard + 4:
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
            want = min(size, 16 * self.rows_per_shard + 4)
            tail = np.frombuffer(os.pread(fd, want, size - want), np.uint8)
            index = self._index(shard, tail, size)
        except BaseException:
            os.close(fd)
            raise
        return DirectShard(shard, fd, size - tail.size, index, self._where, shard * self.rows_per_shard,
                           self.checksummed)


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


def chunk_encoder(array: zarr.Array):
    """``encode(values) -> bytes`` for one whole chunk of an unsharded ``array`` chunked along its rows only
    (1-D, or 2-D with whole rows per chunk; a last, shorter chunk is padded with the fill value, as zarr stores
    edge chunks), or None for other layouts: a shard's small per-slice arrays without zarr's per-write overhead."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or array.ndim not in (1, 2) or \
            any(type(c).__name__ == "ShardingCodec" for c in meta.codecs):
        return None
    chunk_shape = tuple(meta.chunk_grid.chunk_shape)
    if chunk_shape[1:] != tuple(array.shape[1:]):
        return None
    compress = _compressor(meta.codecs)
    if compress is None:
        return None
    dtype = np.dtype(array.dtype).newbyteorder("<")
    fill = array.fill_value

    def encode(values: np.ndarray) -> bytes:
        chunk = np.full(chunk_shape, fill, dtype)
        chunk[:len(values)] = values
        return compress(chunk)

    return encode


def _open_arrays(g: zarr.Group, names: list[str]) -> dict[str, zarr.Array]:
    """The arrays ``names`` of ``g``, their metadata read together: one round trip to zarr's event loop, which
    on a busy core costs ~1.5 ms, more than writing a small column."""
    import asyncio

    from zarr.core.sync import sync

    async def open_all():
        return await asyncio.gather(*(g._async_group.getitem(name) for name in names))

    return {name: zarr.Array(a) for name, a in zip(names, sync(open_all()))}


def _put_objects(objects: list[tuple[zarr.Array, tuple[int, ...], bytes]]) -> None:
    """Write whole chunk (or shard) objects (array, chunk coordinates, bytes) together, in one round trip."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def put_all():
        await asyncio.gather(*((a.store_path / a.metadata.encode_chunk_key(coords)).set(
            default_buffer_prototype().buffer.from_bytes(data)) for a, coords, data in objects))

    if objects:
        sync(put_all())


def write_shard(g: zarr.Group, shard: int, images: np.ndarray, hu_min, hu_max, status, head_box=None) -> None:
    """Write one whole shard (images and its per-slice chunks; ``head_box`` (n, 4): the head box column of a
    store that has one), then mark it done.

    A misaligned write is an error: partial-shard writes from concurrent tasks lose data in Zarr v3
    (zarr-python #3514, #3682).
    """
    columns = [(HU_MIN, hu_min), (HU_MAX, hu_max), (STATUS, status)] + \
        ([(HEAD_BOX, head_box)] if head_box is not None else [])
    arrays = _open_arrays(g, ["images", SHARD_DONE] + [name for name, _ in columns])
    image_array = arrays["images"]
    S = image_array.shards[0]
    n = image_array.shape[0]
    start, stop = shard * S, min((shard + 1) * S, n)
    if images.shape[0] != stop - start:
        raise StoreError(f"Shard {shard} holds rows [{start}, {stop}); got {images.shape[0]} slices")
    objects = []
    encode = shard_encoder(image_array)
    if encode is not None:
        objects.append((image_array, (shard,) + (0,) * (image_array.ndim - 1), encode(images)))
    else:
        with fast_codec_pipeline():
            g["images"][start:stop] = images
    for name, values in columns:
        objects += _row_objects(arrays[name], shard, start, stop, values)
    _put_objects(objects)  # all of them before the mark: done means all written
    _put_objects(_row_objects(arrays[SHARD_DONE], shard, shard, shard + 1, np.ones(1, np.uint8)))


def _row_objects(array: zarr.Array, chunk: int, start: int, stop: int, values) -> list:
    """Rows [start, stop) of a row-chunked array, exactly its chunk number ``chunk``: the chunk object to write,
    or nothing where zarr writes them itself (here, now)."""
    encode = chunk_encoder(array)
    if encode is not None and array.chunks[0] * chunk == start and stop == min(array.shape[0], start + array.chunks[0]):
        return [(array, (chunk,) + (0,) * (array.ndim - 1), encode(np.asarray(values)))]
    array[start:stop] = values
    return []
