"""The store schema: the only module that knows array names, dtypes and chunking.

A store is a Zarr v3 group:

=============  =====================  ==========================================================
array          dtype, shape           meaning
=============  =====================  ==========================================================
images         float16 (N, H, W, C)   one inner chunk = one slice; shards of ``shard_slices``;
               int16 (N, H, W, 1)     for the ``hu`` preset: Hounsfield units, windowed when read
labels         uint8 (N, 6)           epidural, intraparenchymal, intraventricular, subarachnoid,
                                      subdural, any; 255 = unlabelled
type           uint8 (N,)             Table 3.1 type (1..32, 32 = no hemorrhage); 0 = unlabelled
sop_uid        string (N,)            SOPInstanceUID (``ID_...`` in RSNA data)
study_uid      string (N,)            StudyInstanceUID
series_uid     string (N,)            SeriesInstanceUID
patient        string (N,)            salted hash of PatientID; never the raw ID
position_z     float32 (N,)           ImagePositionPatient[2] (NaN if absent)
window_center  float32 (N,)           the file's WindowCenter, first value (NaN if absent; schema 2)
window_width   float32 (N,)           the file's WindowWidth, first value (NaN if absent; schema 2)
hu_min, hu_max float32 (N,)           slice HU range before normalisation (NaN: pixels unusable)
status         uint8 (N,)             0 = ok, else a reject code (``errors.REJECT_REASONS``)
shard_done     uint8 (n_shards,)      build bookkeeping: 1 when the shard's pixels are written
=============  =====================  ==========================================================

Rows are ordered by (study, series, position_z, sop). Group attribute ``ichprep`` holds the schema
version, the windows, build parameters, counts and the reject manifest; ``complete`` turns true only
in the build's final step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from ichprep.chunkcodecs import CODECS, compressors, fast_codec_pipeline, meta_compressors  # noqa: F401 (re-exported)
from ichprep.errors import IncompleteStoreError, MissingStoreError, SchemaError, StoreError, UsageError
from ichprep.pixels import IMAGE_SIZE  # the schema's slice size, defined with the pixel code
from ichprep.windows import Window, is_hu, windows_from_list

__all__ = [
    "SCHEMA_VERSION",
    "IMAGE_SIZE",
    "CODECS",
    "StoreInfo",
    "COLUMNS",
    "column",
    "images",
    "create_store",
    "open_store",
    "open_for_write",
    "read_info",
    "write_metadata",
    "hu_range",
    "generations",
    "appending",
    "done_shards",
    "ROW_ARRAYS",
    "get_attrs",
    "is_store_folder",
    "SHARD_ARRAYS",
    "HEAD_BOX",
    "head_boxes",
    "row_arrays",
    "SHARD_DONE",
    "set_attrs",
    "why_unreadable",
]

# 2: the window_center / window_width columns and the int16 ``hu`` layout. 3: every chunk of every array
# ends in its crc32c (Zarr v3's crc32c codec last in each chain), so a flipped byte is an error, never a
# silently wrong value. Versions 1 and 2 (without checksums) are still read.
# 4: the file_key column (a digest of each row's file: its path under the source, size and modification
# time) and generations, so ``ichprep build --append`` adds new files without reading the known ones.
# 5: each slice's head box (ichprep.headbox.hu_head_box), an (n, 4) int16 column written with its shard, so a
# reader crops to the head without finding it. Appends to an older store keep its schema (no boxes).
SCHEMA_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
CHECKSUMMED_VERSION = 3
APPENDABLE_VERSION = 4
HEAD_BOX_VERSION = 5
ATTRS_KEY = "ichprep"
REPAIRING = "repairing"  # attribute: the shards a repair has started and not finished (ichprep.lifecycle)
APPENDING = "appending"  # attribute: an append begun and not finished (its rows, generation, progress)
FILE_KEY = "file_key"
META_ARRAYS_V1 = ("sop_uid", "study_uid", "series_uid", "patient", "position_z", "labels", "type")
META_ARRAYS = META_ARRAYS_V1 + ("window_center", "window_width")
HU_MIN, HU_MAX, STATUS = "hu_min", "hu_max", "status"
SHARD_ARRAYS = (HU_MIN, HU_MAX, STATUS)  # per-slice columns written by the shard tasks, one chunk per shard
# The head box of each slice (schema 5): (n, 4) int16 top, left, bottom, right pixel bounds, end-exclusive; -1
# where the slice is not usable. Written by the shard tasks like SHARD_ARRAYS, absent from older stores.
HEAD_BOX = "head_box"
ROW_ARRAYS = META_ARRAYS + (FILE_KEY,) + SHARD_ARRAYS  # every per-row array of schema 4 (an append grows them)
SHARD_DONE = "shard_done"  # per-shard build mark (1 when the shard's pixels are written), one chunk per shard


def create_store(url: str, n: int, channels: int, shard_slices: int, codec: str, attrs: dict,
                 image_size: int = IMAGE_SIZE, hu: bool = False) -> zarr.Group:
    """Create an empty store (overwriting whatever is at ``url``) with every array of the schema; ``hu``:
    int16 Hounsfield-unit images (one channel) instead of float16 windows."""
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
                   dtype="int16" if hu else "float16", compressors=compressors(codec, channels, hu),
                   fill_value=0)
    g.create_array("labels", shape=(n, 6), chunks=(max(n, 1), 6), dtype="uint8", fill_value=255,
                   compressors=meta_compressors())
    g.create_array("type", shape=(n,), chunks=(n,), dtype="uint8", fill_value=0, compressors=meta_compressors())
    for name in ("sop_uid", "study_uid", "series_uid", "patient"):
        g.create_array(name, shape=(n,), chunks=(n,), dtype=str, compressors=meta_compressors())
    g.create_array(FILE_KEY, shape=(n,), chunks=(n,), dtype="uint64", fill_value=0, compressors=meta_compressors())
    for name in ("position_z", "window_center", "window_width"):
        g.create_array(name, shape=(n,), chunks=(n,), dtype="float32", fill_value=float("nan"),
                       compressors=meta_compressors())
    # Written by the shard tasks: one chunk per shard, so no two tasks touch one chunk.
    for name, dtype, fill in ((HU_MIN, "float32", float("nan")), (HU_MAX, "float32", float("nan")),
                              (STATUS, "uint8", 0)):
        g.create_array(name, shape=(n,), chunks=(S,), dtype=dtype, fill_value=fill, compressors=meta_compressors())
    g.create_array(HEAD_BOX, shape=(n, 4), chunks=(S, 4), dtype="int16", fill_value=-1, compressors=meta_compressors())
    n_shards = -(-n // S)
    g.create_array(SHARD_DONE, shape=(n_shards,), chunks=(1,), dtype="uint8", fill_value=0,
                   compressors=(Crc32cCodec(),))
    return g


def set_attrs(g: zarr.Group, values: dict) -> None:
    """Merge ``values`` into the group's ``ichprep`` attribute (written once, as one JSON document)."""
    current = dict(g.attrs.get(ATTRS_KEY, {}))
    current.update(values)
    g.attrs[ATTRS_KEY] = current


def get_attrs(g: zarr.Group) -> dict:
    return dict(g.attrs.get(ATTRS_KEY, {}))


def write_metadata(g: zarr.Group, sop, study, series, patient, position_z, labels, types,
                   window_center=None, window_width=None, file_key=None, start: int = 0) -> None:
    """The per-row columns of rows ``start``, ``start + 1``, ... (the whole store for a build, the new rows
    for an append)."""
    rows = slice(start, start + len(sop))
    for name, values in (("sop_uid", sop), ("study_uid", study), ("series_uid", series), ("patient", patient)):
        g[name][rows] = np.asarray(values, dtype=object).astype(str)
    if file_key is not None:
        g[FILE_KEY][rows] = np.asarray(file_key, dtype=np.uint64)
    g["position_z"][rows] = np.asarray(position_z, dtype=np.float32)
    g["labels"][rows] = np.asarray(labels, dtype=np.uint8)
    g["type"][rows] = np.asarray(types, dtype=np.uint8)
    for name, values in (("window_center", window_center), ("window_width", window_width)):
        if values is not None:
            g[name][rows] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)


# -- Generations: a store grows by appends, each a new generation of rows after the last --------------------


def generations(attrs: dict) -> list[dict]:
    """Each generation's ``rows`` (the store's row count when it was complete) and ``written``; a store never
    appended to is one generation of all its rows."""
    recorded = attrs.get("generations")
    if recorded:
        return [dict(g) for g in recorded]
    return [dict(generation=1, rows=int(attrs.get("n", 0)), written=int(attrs.get("counts", {}).get("written", 0)))]


def appending(attrs: dict) -> dict | None:
    """An interrupted append's record (``rows_before``, ``start``, ``n``, ``generation``, ``metadata``), or None."""
    record = attrs.get(APPENDING)
    return dict(record) if record else None


def done_shards(g: zarr.Group, first: int = 0) -> np.ndarray:
    """Which shards are written, from shard ``first`` on (each mark is its own object: an append reads its
    new shards' marks only)."""
    return np.asarray(g[SHARD_DONE][first:], dtype=bool)


def open_for_write(url: str) -> zarr.Group:
    return zarr.open_group(url, mode="r+", zarr_format=3)


def is_store_folder(path: str) -> bool:
    """Whether the local folder ``path`` holds a Zarr group (what an existing --out must be to be written)."""
    return os.path.exists(os.path.join(path, "zarr.json"))


def hu_range(g: zarr.Group, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """(hu_min, hu_max) of every row (or ``rows``): each slice's HU range before normalisation (NaN: pixels
    unusable). One chunk per shard: a 150k-row store's columns are 6,300 objects, so an append reads its
    own rows only."""
    return column(g, HU_MIN, rows), column(g, HU_MAX, rows)


@dataclass(frozen=True)
class StoreInfo:
    """What a store's attributes say, typed. ``from_attrs`` reads them (checking the required keys);
    ``to_attrs`` gives them back as stored. ``attrs`` keeps the whole dict for fields added later."""

    url: str
    n: int
    channels: int
    windows: tuple[Window, ...]
    attrs: dict
    image_size: int = IMAGE_SIZE
    shard_slices: int = 0
    preset: str | None = None
    size_policy: str = "resize"
    salt_fingerprint: str | None = None
    counts: dict = field(default_factory=dict)
    type_counts: dict = field(default_factory=dict)
    rejects: tuple = ()
    fixed: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def window_names(self) -> list[str]:
        return [w.name for w in self.windows]

    @property
    def hu(self) -> bool:
        """An ``hu`` store: int16 Hounsfield units, windowed when read."""
        return is_hu(self.windows)

    @property
    def schema_version(self) -> int:
        return int(self.attrs.get("schema_version", SCHEMA_VERSION))

    @property
    def has_head_boxes(self) -> bool:
        """The store holds each slice's head box (schema 5; an append keeps an older store's schema)."""
        return self.schema_version >= HEAD_BOX_VERSION

    @property
    def generation(self) -> int:
        """The store's latest complete generation (1 until an append; an unfinished append's rows are not one)."""
        return len(generations(self.attrs))

    def rows_at(self, generation: int) -> int:
        """How many rows the store had at ``generation``; UsageError naming the generations it has."""
        known = generations(self.attrs)
        if not isinstance(generation, int) or not 1 <= generation <= len(known):
            raise UsageError(f"Expected a generation of {self.url!r} in 1..{len(known)}. Received: {generation!r}")
        return int(known[generation - 1]["rows"])

    @classmethod
    def from_attrs(cls, url: str, attrs: dict) -> "StoreInfo":
        missing = [k for k in ("n", "channels", "windows") if k not in attrs]
        if missing:
            raise SchemaError(f"Store {url!r} attributes lack {missing}: not a store this ichprep wrote")
        return cls(url=str(url), n=int(attrs["n"]), channels=int(attrs["channels"]),
                   windows=windows_from_list(attrs["windows"]), attrs=dict(attrs),
                   image_size=int(attrs.get("image_size", IMAGE_SIZE)), shard_slices=int(attrs.get("shard_slices", 0)),
                   preset=attrs.get("preset"), size_policy=attrs.get("size_policy", "resize"),
                   salt_fingerprint=attrs.get("salt_fingerprint"), counts=dict(attrs.get("counts", {})),
                   type_counts={int(k): int(v) for k, v in attrs.get("type_counts", {}).items()},
                   rejects=tuple(attrs.get("rejects", ())), fixed=dict(attrs.get("fixed", {})),
                   timings=dict(attrs.get("timings", {})), params=dict(attrs.get("params", {})))

    def to_attrs(self) -> dict:
        return dict(self.attrs)


# Per-row columns (one value per slice) and how they read back.
COLUMNS = META_ARRAYS + SHARD_ARRAYS + (FILE_KEY, HEAD_BOX)
_TEXT_COLUMNS = frozenset({"sop_uid", "study_uid", "series_uid", "patient"})


def column(g: zarr.Group, name: str, rows=None) -> np.ndarray:
    """One per-row column (all rows, or ``rows``): text columns as object arrays of str. A column newer
    than the store's schema reads as NaN (window_center/width of a version 1 store) or -1 (a head box before
    version 5)."""
    if name not in COLUMNS:
        raise SchemaError(f"Expected a store column, one of {', '.join(COLUMNS)}. Received: {name!r}")
    if name not in g and name not in META_ARRAYS_V1 + SHARD_ARRAYS:
        n = g["sop_uid"].shape[0]
        shape = n if rows is None else np.asarray(rows).shape
        if name == HEAD_BOX:
            return np.full(tuple(np.atleast_1d(shape)) + (4,), -1, np.int16)
        return np.zeros(shape, np.uint64) if name == FILE_KEY else np.full(shape, np.nan, np.float32)
    try:
        values = g[name][:] if rows is None else g[name][rows]
    except Exception as exc:
        raise StoreError(f"{g.store_path}: the {name} column {why_unreadable(exc)}: the store is damaged; run "
                         f"'ichprep verify {g.store_path}'") from None
    return np.asarray(values, dtype=object) if name in _TEXT_COLUMNS else np.asarray(values)


def row_arrays(g: zarr.Group) -> tuple[str, ...]:
    """Every per-row array the store has (:data:`ROW_ARRAYS`, and the head box from schema 5)."""
    return ROW_ARRAYS + ((HEAD_BOX,) if HEAD_BOX in g else ())


def head_boxes(g: zarr.Group) -> np.ndarray | None:
    """(n, 4) int16 head boxes (top, left, bottom, right; -1 for unusable slices), or None for a store from
    before they were stored (schema < 5, or appended to as one)."""
    return column(g, HEAD_BOX) if HEAD_BOX in g else None


def why_unreadable(exc: BaseException) -> str:
    """Why zarr could not read a chunk, in words: a failed checksum is said in several ways (zarr-python
    raises ValueError, zarrs RuntimeError)."""
    if "checksum" in str(exc).lower():
        return "fails its crc32c checksum"
    return f"cannot be read ({type(exc).__name__}: {exc})"


def images(g: zarr.Group) -> zarr.Array:
    """The (N, 512, 512, C) float16 image array, int16 (N, 512, 512, 1) for an hu store (read-only when
    ``g`` was opened by :func:`open_store`)."""
    return g["images"]


def open_store(url: str, require_complete: bool = True) -> tuple[zarr.Group, StoreInfo]:
    """Open a store read-only and check its schema. An unfinished store raises
    :class:`IncompleteStoreError` unless ``require_complete`` is false."""
    if "://" not in str(url) and not os.path.exists(url):
        raise MissingStoreError(f"No store at {url!r}: build one with 'ichprep build'.")
    try:
        g = zarr.open_group(url, mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for "not a group"
        raise SchemaError(f"{url!r} is not a Zarr v3 group written by ichprep ({type(exc).__name__}: {exc})") from None
    attrs = get_attrs(g)
    if not attrs:
        raise SchemaError(f"{url!r} is a Zarr group but has no '{ATTRS_KEY}' attributes: not an ichprep store")
    version = attrs.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise SchemaError(f"Store {url!r} has schema version {version!r}; this ichprep reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild it with this ichprep's 'ichprep build'")
    if version < 2 and attrs.get("preset") == "hu":
        raise SchemaError(f"Store {url!r} is an hu store of schema version {version}, written before hu stores "
                          f"had their layout (version 2): rebuild it with 'ichprep build --preset hu'")
    meta = (META_ARRAYS if version >= 2 else META_ARRAYS_V1) + ((FILE_KEY,) if version >= APPENDABLE_VERSION else ())
    missing = [a for a in ("images", *meta, *SHARD_ARRAYS, SHARD_DONE) if a not in g]
    if missing and not attrs.get("complete"):
        raise IncompleteStoreError(f"Store {url!r} is incomplete: its build stopped while creating it. "
                                   "Rerun the same 'ichprep build' command to start it again.")
    if missing:
        raise SchemaError(f"Store {url!r} lacks arrays {missing}")
    info = StoreInfo.from_attrs(url, attrs)
    if require_complete and not info.complete:
        done = int(done_shards(g).sum())
        total = g[SHARD_DONE].shape[0]
        if appending(attrs):
            raise IncompleteStoreError(
                f"Store {url!r} is incomplete: an append into it has not finished ({done}/{total} shards written). "
                "Rerun the same 'ichprep build --append' command to finish it.")
        raise IncompleteStoreError(
            f"Store {url!r} is incomplete: its build has not finished ({done}/{total} shards written). "
            "Rerun the same 'ichprep build' command to resume it."
        )
    return g, info


def read_info(url: str) -> tuple[zarr.Group, StoreInfo]:
    """Open for inspection: incomplete stores are allowed (callers say so)."""
    return open_store(url, require_complete=False)
