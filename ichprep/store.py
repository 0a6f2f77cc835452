"""The store schema: the only module that knows array names, dtypes and chunking.

A store is a Zarr v3 group:

=============  =====================  ==========================================================
array          dtype, shape           meaning
=============  =====================  ==========================================================
images         float16 (N, H, W, C)   one inner chunk = one slice; shards of ``shard_slices``
labels         uint8 (N, 6)           epidural, intraparenchymal, intraventricular, subarachnoid,
                                      subdural, any; 255 = unlabelled
type           uint8 (N,)             Table 3.1 type (1..32, 32 = no hemorrhage); 0 = unlabelled
sop_uid        string (N,)            SOPInstanceUID (``ID_...`` in RSNA data)
study_uid      string (N,)            StudyInstanceUID
series_uid     string (N,)            SeriesInstanceUID
patient        string (N,)            salted hash of PatientID; never the raw ID
position_z     float32 (N,)           ImagePositionPatient[2] (NaN if absent)
hu_min, hu_max float32 (N,)           slice HU range before normalisation (NaN: pixels unusable)
status         uint8 (N,)             0 = ok, else a reject code (``errors.REJECT_REASONS``)
shard_done     uint8 (n_shards,)      build bookkeeping: 1 when the shard's pixels are written
=============  =====================  ==========================================================

Rows are ordered by (study, series, position_z, sop). Group attribute ``ichprep`` holds the schema
version, the windows, build parameters, counts and the reject manifest; ``complete`` turns true only
in the build's final step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from ichprep.errors import IncompleteStoreError, SchemaError, StoreError, UsageError
from ichprep.pixels import IMAGE_SIZE  # the schema's slice size, defined with the pixel code
from ichprep.windows import Window, windows_from_list

__all__ = [
    "SCHEMA_VERSION",
    "IMAGE_SIZE",
    "CODECS",
    "StoreInfo",
    "create_store",
    "open_store",
    "open_for_write",
    "read_info",
    "write_metadata",
    "write_shard",
    "done_shards",
    "set_attrs",
]

SCHEMA_VERSION = 1
ATTRS_KEY = "ichprep"
META_ARRAYS = ("sop_uid", "study_uid", "series_uid", "patient", "position_z", "labels", "type")
SHARD_ARRAYS = ("hu_min", "hu_max", "status")
CODECS = ("auto", "blosc-lz4", "blosc-zstd", "zstd", "none")


def _compressors(codec: str, channels: int):
    """Image codec. ``auto``: blosc-lz4 + byte shuffle for one channel (float16 full-range slices
    compress ~1.9x at ~2,600 slices/s), zstd level 1 for several windows (~25x: clipped windows are
    mostly 0 or 1, and zstd is also faster there). Measured in DESIGN.md."""
    if codec == "auto":
        codec = "blosc-lz4" if channels == 1 else "zstd"
    if codec == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2),)
    if codec == "blosc-zstd":
        return (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2),)
    if codec == "zstd":
        return (ZstdCodec(level=1),)
    if codec == "none":
        return None
    raise UsageError(f"Expected --codec one of {', '.join(CODECS)}. Received: codec={codec!r}")


def fast_codec_pipeline():
    """Context in which arrays opened use the Rust ``zarrs`` codec pipeline, when installed.

    Measured here, one pinned core, whole 64-slice shards: blosc-lz4 one-channel writes 489 -> 775
    slices/s, zstd-1 ten-window writes 73 -> 150 slices/s (builds now write shards themselves, see
    :func:`shard_encoder`; this remains the path for reads and for layouts that encoder does not take).
    The config is read when an array is opened, so open the array inside the context. Unsupported cases
    fall back to zarr-python's own pipeline.
    """
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return contextlib.nullcontext()
    return zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def _meta_compressors():
    return (ZstdCodec(level=3),)


def create_store(url: str, n: int, channels: int, shard_slices: int, codec: str, attrs: dict,
                 image_size: int = IMAGE_SIZE) -> zarr.Group:
    """Create an empty store (overwriting whatever is at ``url``) with every array of the schema."""
    if n < 1:
        raise UsageError(f"Expected at least one slice to store. Received: n={n}")
    S = int(shard_slices)
    # The group's zarr.json is written once, attributes included: a build killed while creating the
    # arrays leaves a store that says it is incomplete, never an anonymous group.
    first = dict(attrs, schema_version=SCHEMA_VERSION, complete=False, n=n, channels=channels,
                 shard_slices=S, image_size=image_size)
    g = zarr.open_group(url, mode="w", zarr_format=3, attributes={ATTRS_KEY: first})
    g.create_array("images", shape=(n, image_size, image_size, channels),
                   chunks=(1, image_size, image_size, channels), shards=(S, image_size, image_size, channels),
                   dtype="float16", compressors=_compressors(codec, channels), fill_value=0.0)
    g.create_array("labels", shape=(n, 6), chunks=(max(n, 1), 6), dtype="uint8", fill_value=255,
                   compressors=_meta_compressors())
    g.create_array("type", shape=(n,), chunks=(n,), dtype="uint8", fill_value=0, compressors=_meta_compressors())
    for name in ("sop_uid", "study_uid", "series_uid", "patient"):
        g.create_array(name, shape=(n,), chunks=(n,), dtype=str, compressors=_meta_compressors())
    g.create_array("position_z", shape=(n,), chunks=(n,), dtype="float32", fill_value=float("nan"),
                   compressors=_meta_compressors())
    # Written by the shard tasks: one chunk per shard, so no two tasks touch one chunk.
    for name, dtype, fill in (("hu_min", "float32", float("nan")), ("hu_max", "float32", float("nan")),
                              ("status", "uint8", 0)):
        g.create_array(name, shape=(n,), chunks=(S,), dtype=dtype, fill_value=fill, compressors=_meta_compressors())
    n_shards = -(-n // S)
    g.create_array("shard_done", shape=(n_shards,), chunks=(1,), dtype="uint8", fill_value=0, compressors=None)
    return g


def set_attrs(g: zarr.Group, values: dict) -> None:
    """Merge ``values`` into the group's ``ichprep`` attribute (written once, as one JSON document)."""
    current = dict(g.attrs.get(ATTRS_KEY, {}))
    current.update(values)
    g.attrs[ATTRS_KEY] = current


def get_attrs(g: zarr.Group) -> dict:
    return dict(g.attrs.get(ATTRS_KEY, {}))


def write_metadata(g: zarr.Group, sop, study, series, patient, position_z, labels, types) -> None:
    g["sop_uid"][:] = np.asarray(sop, dtype=object).astype(str)
    g["study_uid"][:] = np.asarray(study, dtype=object).astype(str)
    g["series_uid"][:] = np.asarray(series, dtype=object).astype(str)
    g["patient"][:] = np.asarray(patient, dtype=object).astype(str)
    g["position_z"][:] = np.asarray(position_z, dtype=np.float32)
    g["labels"][:] = np.asarray(labels, dtype=np.uint8)
    g["type"][:] = np.asarray(types, dtype=np.uint8)


def open_for_write(url: str) -> zarr.Group:
    return zarr.open_group(url, mode="r+", zarr_format=3)


_BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}
_NO_INDEX = np.uint64(2**64 - 1)  # the sharding spec's "empty chunk" offset and length
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _compressor(codecs):
    """``compress(array) -> bytes`` for a codec chain [bytes (little-endian), at most one of blosc/zstd],
    as zarr encodes it (zarr's BloscCodec and ZstdCodec are numcodecs' Blosc and Zstd built from the same
    configuration); None for any other chain."""
    import numcodecs

    chain = [c.to_dict() for c in codecs]
    if not chain or chain[0]["name"] != "bytes" or chain[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    if len(chain) == 1:
        return bytes
    if len(chain) != 2:
        return None
    name, cfg = chain[1]["name"], chain[1].get("configuration", {})
    if name == "blosc":
        return numcodecs.Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=_BLOSC_SHUFFLE[cfg["shuffle"]],
                               blocksize=cfg.get("blocksize", 0), typesize=cfg.get("typesize")).encode
    if name == "zstd":
        return numcodecs.Zstd(level=cfg["level"], checksum=cfg.get("checksum", False)).encode
    return None


def shard_encoder(image_array: zarr.Array):
    """A function ``encode(images) -> bytes`` giving the whole shard object of ``image_array`` for
    ``images`` (its rows, one inner chunk each), or None when the array's layout is not the one this
    module creates (then the caller lets zarr write).

    Why: zarr's write path (zarr-python's or the zarrs pipeline) copies each shard several times; on
    one core zarrs took ~9.8 ms per ten-window slice where zstd-1 itself takes ~3.7 ms (1.98 vs ~1.3 ms
    per cnn slice with blosc-lz4). Here each inner chunk goes through the numcodecs codec zarr would
    use, in morton order (for one-row inner chunks: row order), followed by the index of (offset,
    length) uint64 pairs and its crc32c, as the Zarr v3 sharding spec lays it out. Tests check the
    objects against zarr-python's writer byte for byte, for every codec."""
    try:
        import google_crc32c  # zarr's own dependency for its crc32c codec
    except ImportError:
        return None
    meta = image_array.metadata
    if getattr(meta, "zarr_format", None) != 3 or len(meta.codecs) != 1 or \
            type(meta.codecs[0]).__name__ != "ShardingCodec":
        return None
    sharding = meta.codecs[0]
    if getattr(sharding.index_location, "value", None) != "end" or \
            [c.to_dict() for c in sharding.index_codecs] != [_BYTES_LE, {"name": "crc32c"}]:
        return None
    rows_per_shard = meta.chunk_grid.chunk_shape[0]
    if tuple(sharding.chunk_shape) != (1, *image_array.shape[1:]) or \
            tuple(meta.chunk_grid.chunk_shape[1:]) != tuple(image_array.shape[1:]) or \
            np.dtype(image_array.dtype) != np.float16:
        return None
    compress = _compressor(sharding.codecs)
    if compress is None:
        return None

    def encode(images: np.ndarray) -> bytes:
        images = np.ascontiguousarray(images, dtype="<f2")
        index = np.full((rows_per_shard, 2), _NO_INDEX, dtype="<u8")  # rows past the array's end stay empty
        parts, offset = [], 0
        for i in range(images.shape[0]):
            chunk = compress(images[i])
            index[i] = offset, len(chunk)
            offset += len(chunk)
            parts.append(chunk)
        index_bytes = index.tobytes()
        parts += [index_bytes, int(google_crc32c.value(index_bytes)).to_bytes(4, "little")]
        return b"".join(parts)

    return encode


def chunk_encoder(array: zarr.Array):
    """``encode(values) -> bytes`` for one whole chunk of a 1-D, unsharded ``array`` (a last, shorter
    chunk is padded with the fill value, as zarr stores edge chunks), or None for other layouts.
    Four zarr-python writes of a shard's small per-slice arrays cost ~8 ms per shard; these cost ~0.1."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or array.ndim != 1 or \
            any(type(c).__name__ == "ShardingCodec" for c in meta.codecs):
        return None
    compress = _compressor(meta.codecs)
    if compress is None:
        return None
    rows = meta.chunk_grid.chunk_shape[0]
    dtype = np.dtype(array.dtype).newbyteorder("<")
    fill = array.fill_value

    def encode(values: np.ndarray) -> bytes:
        chunk = np.full(rows, fill, dtype)
        chunk[:len(values)] = values
        return compress(chunk)

    return encode


def _write_object(array: zarr.Array, chunk_coords: tuple[int, ...], data: bytes) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    key = array.metadata.encode_chunk_key(chunk_coords)
    sync((array.store_path / key).set(default_buffer_prototype().buffer.from_bytes(data)))


def write_shard(g: zarr.Group, shard: int, images: np.ndarray, hu_min, hu_max, status) -> None:
    """Write one whole shard (images and its per-slice chunks), then mark it done.

    A misaligned write is an error: partial-shard writes from concurrent tasks lose data in Zarr v3
    (zarr-python #3514, #3682).
    """
    image_array = g["images"]
    S = image_array.shards[0]
    n = image_array.shape[0]
    start, stop = shard * S, min((shard + 1) * S, n)
    if images.shape[0] != stop - start:
        raise StoreError(f"Shard {shard} holds rows [{start}, {stop}); got {images.shape[0]} slices")
    encode = shard_encoder(image_array)
    if encode is not None:
        _write_object(image_array, (shard,) + (0,) * (image_array.ndim - 1), encode(images))
    else:
        with fast_codec_pipeline():
            g["images"][start:stop] = images
    for name, values in (("hu_min", hu_min), ("hu_max", hu_max), ("status", status)):
        _write_rows(g[name], shard, start, stop, values)
    _write_rows(g["shard_done"], shard, shard, shard + 1, np.ones(1, np.uint8))  # last: done means all written


def _write_rows(array: zarr.Array, chunk: int, start: int, stop: int, values) -> None:
    """Rows [start, stop) of a 1-D array, exactly its chunk number ``chunk``."""
    encode = chunk_encoder(array)
    if encode is not None and array.chunks[0] * chunk == start and stop == min(array.shape[0], start + array.chunks[0]):
        _write_object(array, (chunk,), encode(np.asarray(values)))
    else:
        array[start:stop] = values


def done_shards(g: zarr.Group) -> np.ndarray:
    return np.asarray(g["shard_done"][:], dtype=bool)


@dataclass(frozen=True)
class StoreInfo:
    url: str
    n: int
    channels: int
    windows: tuple[Window, ...]
    attrs: dict

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))


def open_store(url: str, require_complete: bool = True) -> tuple[zarr.Group, StoreInfo]:
    """Open a store read-only and check its schema. An unfinished store raises
    :class:`IncompleteStoreError` unless ``require_complete`` is false."""
    if "://" not in str(url) and not os.path.exists(url):
        raise StoreError(f"No store at {url!r}: build one with 'ichprep build'.")
    try:
        g = zarr.open_group(url, mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise SchemaError(f"{url!r} is not a Zarr v3 group written by ichprep ({type(exc).__name__}: {exc})") from None
    attrs = get_attrs(g)
    if not attrs:
        raise SchemaError(f"{url!r} is a Zarr group but has no '{ATTRS_KEY}' attributes: not an ichprep store")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"Store {url!r} has schema version {version!r}; this ichprep reads version {SCHEMA_VERSION}")
    missing = [a for a in ("images", *META_ARRAYS, *SHARD_ARRAYS, "shard_done") if a not in g]
    if missing and not attrs.get("complete"):
        raise IncompleteStoreError(f"Store {url!r} is incomplete: its build stopped while creating it. "
                                   "Rerun the same 'ichprep build' command to start it again.")
    if missing:
        raise SchemaError(f"Store {url!r} lacks arrays {missing}")
    info = StoreInfo(url=str(url), n=int(attrs["n"]), channels=int(attrs["channels"]),
                     windows=windows_from_list(attrs["windows"]), attrs=attrs)
    if require_complete and not info.complete:
        done = int(done_shards(g).sum())
        total = g["shard_done"].shape[0]
        raise IncompleteStoreError(
            f"Store {url!r} is incomplete: its build has not finished ({done}/{total} shards written). "
            "Rerun the same 'ichprep build' command to resume it."
        )
    return g, info


def read_info(url: str) -> tuple[zarr.Group, StoreInfo]:
    """Open for inspection: incomplete stores are allowed (callers say so)."""
    return open_store(url, require_complete=False)


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
