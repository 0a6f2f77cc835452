"""The hand-written shard writer: whole shard objects encoded here, byte-identical to what zarr writes.

Why: zarr's write path (zarr-python's or the zarrs pipeline) copies each shard several times. Each inner
chunk goes through the numcodecs codec zarr would use, in row order, followed by the index of (offset,
length) uint64 pairs and its crc32c, as the Zarr v3 sharding spec lays it out; tests check the objects
against zarr-python's writer byte for byte, for every codec. Layouts this module does not know are left
to zarr.
"""

from __future__ import annotations

import numpy as np
import zarr

from ichprep.errors import StoreError
from ichprep.store import HEAD_BOX, HU_MAX, HU_MIN, SHARD_DONE, STATUS, fast_codec_pipeline

__all__ = ["shard_encoder", "chunk_encoder", "write_shard"]

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
