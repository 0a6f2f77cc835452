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
IMAGE_SIZE = 512
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
    slices/s, zstd-1 ten-window writes 73 -> 150 slices/s. The config is read when an array is opened,
    so open the array inside the context. Unsupported cases fall back to zarr-python's own pipeline.
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


def write_shard(g: zarr.Group, shard: int, images: np.ndarray, hu_min, hu_max, status) -> None:
    """Write one whole shard (images and its per-slice chunks), then mark it done.

    A misaligned write is an error: partial-shard writes from concurrent tasks lose data in Zarr v3
    (zarr-python #3514, #3682).
    """
    with fast_codec_pipeline():
        image_array = g["images"]
        S = image_array.shards[0]
        n = image_array.shape[0]
        start, stop = shard * S, min((shard + 1) * S, n)
        if images.shape[0] != stop - start:
            raise StoreError(f"Shard {shard} holds rows [{start}, {stop}); got {images.shape[0]} slices")
        image_array[start:stop] = images
    g["hu_min"][start:stop] = hu_min
    g["hu_max"][start:stop] = hu_max
    g["status"][start:stop] = status
    g["shard_done"][shard] = 1  # last: a shard marked done has all its data


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
