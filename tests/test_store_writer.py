"""ichprep writes image shards itself (shardio.shard_encoder): the objects must be what zarr writes."""

import os

import numpy as np
import pytest
import zarr

from ichprep import shardio, shardread
from ichprep import store as st


def _images(n, channels, seed=0):
    rng = np.random.default_rng(seed)
    # CT-like: a constant background (compresses) around noisy tissue values (does not)
    x = np.zeros((n, 512, 512, channels), np.float32)
    x[:, 96:416, 96:416, :] = rng.random((n, 320, 320, channels))
    return (x * 0.9 + 0.05).astype(np.float16)


def _two_stores(tmp_path, n, channels, shard_slices, codec):
    ours = st.create_store(str(tmp_path / "ours.zarr"), n, channels, shard_slices, codec, {})
    theirs = st.create_store(str(tmp_path / "zarr.zarr"), n, channels, shard_slices, codec, {})
    return ours, theirs


@pytest.mark.parametrize("codec,channels", [("blosc-lz4", 1), ("blosc-zstd", 1), ("zstd", 10), ("none", 2),
                                            ("auto", 1), ("auto", 10)])
def test_shard_objects_equal_zarr_python_writes_byte_for_byte(tmp_path, codec, channels):
    n, S = 7, 3  # two whole shards and a last one with a single row
    ours, theirs = _two_stores(tmp_path, n, channels, S, codec)
    images = _images(n, channels)
    assert shardio.shard_encoder(ours["images"]) is not None, "the layout create_store makes must take the fast path"
    hu_min = np.linspace(-1024, -900, n).astype(np.float32)
    hu_max = np.linspace(1000, 3000, n).astype(np.float32)
    status = np.arange(1, n + 1, dtype=np.uint8)  # nonzero: zarr leaves all-fill chunks unwritten
    for shard in range(3):
        rows = slice(shard * S, min(n, (shard + 1) * S))
        shardio.write_shard(ours, shard, images[rows], hu_min[rows], hu_max[rows], status[rows])
        # zarr-python's own writer: the reference
        for name, values in (("images", images), ("hu_min", hu_min), ("hu_max", hu_max), ("status", status)):
            theirs[name][rows] = values[rows]
        theirs["shard_done"][shard] = 1
    for shard in range(3):
        for rel in (os.path.join("images", "c", str(shard), "0", "0", "0"), os.path.join("hu_min", "c", str(shard)),
                    os.path.join("hu_max", "c", str(shard)), os.path.join("status", "c", str(shard)),
                    os.path.join("shard_done", "c", str(shard))):
            with open(tmp_path / "ours.zarr" / rel, "rb") as a, open(tmp_path / "zarr.zarr" / rel, "rb") as b:
                assert a.read() == b.read(), f"{rel} differs from zarr's"
    back = zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")
    np.testing.assert_array_equal(back["images"][:].view(np.uint16), images.view(np.uint16))
    np.testing.assert_array_equal(back["hu_min"][:], hu_min)
    np.testing.assert_array_equal(back["status"][:], status)


def test_all_zero_slice_reads_back_equal(tmp_path):
    """zarr leaves an all-fill inner chunk out of the shard; ichprep stores it: same array either way."""
    ours, theirs = _two_stores(tmp_path, 4, 1, 4, "auto")
    images = _images(4, 1)
    images[2] = 0  # a rejected slice
    shardio.write_shard(ours, 0, images, np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.uint8))
    theirs["images"][:] = images
    a = zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")["images"][:]
    b = zarr.open_group(str(tmp_path / "zarr.zarr"), mode="r")["images"][:]
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_other_layouts_fall_back_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    unsharded = g.create_array("a", shape=(4, 512, 512, 1), chunks=(1, 512, 512, 1), dtype="float16")
    two_rows = g.create_array("b", shape=(4, 512, 512, 1), chunks=(2, 512, 512, 1), shards=(4, 512, 512, 1),
                              dtype="float16")
    index_first = g.create_array("c", shape=(4, 512, 512, 1), chunks=(1, 512, 512, 1), shards=(4, 512, 512, 1),
                                 dtype="float16", compressors=None)
    assert shardio.shard_encoder(unsharded) is None
    assert shardio.shard_encoder(two_rows) is None
    assert shardio.shard_encoder(index_first) is not None  # same layout as ichprep's, no compressor
    gzip = g.create_array("d", shape=(4, 512, 512, 1), chunks=(1, 512, 512, 1), shards=(4, 512, 512, 1),
                          dtype="float16", compressors=zarr.codecs.GzipCodec())
    assert shardio.shard_encoder(gzip) is None


def test_store_info_is_typed_and_columns_read_back(tmp_path, synth_corpus):
    from ichprep.build import BuildConfig, build
    from ichprep.errors import SchemaError
    from ichprep.windows import parse_windows

    url = str(tmp_path / "s.zarr")
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=url, labels=synth_corpus["labels"],
                      windows=parse_windows("brain"), preset=None, workers=0, salt="s", shard_slices=16))
    g, info = st.open_store(url)
    raw = dict(zarr.open_group(url, mode="r").attrs["ichprep"])  # the attrs as zarr stores them
    assert info.to_attrs() == raw and info.image_size == raw["image_size"] == 512
    assert info.shard_slices == 16 and info.window_names == ["brain"] and info.salt_fingerprint == raw["salt_fingerprint"]
    assert info.type_counts == {int(k): v for k, v in raw["type_counts"].items()} and len(info.rejects) == 0
    sop = st.column(g, "sop_uid")
    assert sop.dtype == object and list(sop) == [str(x) for x in zarr.open_group(url, mode="r")["sop_uid"][:]]
    np.testing.assert_array_equal(st.column(g, "labels", slice(3, 5)), zarr.open_group(url, mode="r")["labels"][3:5])
    with pytest.raises(SchemaError, match="Expected a store column"):
        st.column(g, "images")


@pytest.mark.parametrize("compressors", [None, (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)])
def test_stores_without_chunk_checksums_still_write_and_read(tmp_path, compressors):
    """Stores of schema 1-2 have no crc32c in their chunk chains: the shard writer and reader still take
    them, byte for byte what zarr writes and reads."""
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    kw = dict(shape=(3, 512, 512, 1), chunks=(1, 512, 512, 1), shards=(3, 512, 512, 1), dtype="float16",
              compressors=compressors, fill_value=0)
    ours, theirs = g.create_array("ours", **kw), g.create_array("theirs", **kw)
    images = _images(3, 1, seed=4)
    encode = shardio.shard_encoder(ours)
    assert encode is not None
    theirs[:] = images
    with open(tmp_path / "old.zarr" / "theirs" / "c" / "0" / "0" / "0" / "0", "rb") as fh:
        assert encode(images) == fh.read()
    reader = shardread.shard_reader(theirs)
    assert reader is not None and not reader.checksummed
    shard, out = reader.fetch(0), np.empty((512, 512, 1), np.float16)
    for i in range(3):
        shard.decode_into(i, out)
        np.testing.assert_array_equal(out.view(np.uint16), images[i].view(np.uint16))


def _none_store(tmp_path, n=7, S=3, channels=1):
    g = st.create_store(str(tmp_path / "none.zarr"), n, channels, S, "none", {})
    images = _images(n, channels, seed=3)
    for shard in range(-(-n // S)):
        rows = slice(shard * S, min(n, (shard + 1) * S))
        k = rows.stop - rows.start
        shardio.write_shard(g, shard, images[rows], np.zeros(k, np.float32), np.zeros(k, np.float32),
                            np.ones(k, np.uint8))
    return g["images"], images


def test_an_uncompressed_local_store_is_read_slice_by_slice_into_the_callers_buffer_as_zarr_reads_it(tmp_path):
    images_array, images = _none_store(tmp_path)
    reader = shardread.shard_reader(images_array)
    back = zarr.open_group(str(tmp_path / "none.zarr"), mode="r")["images"][:]
    for shard in range(3):
        obj = reader.fetch(shard)
        assert isinstance(obj, shardread.DirectShard) and obj.nbytes > 0
        for i in range(min(3, 7 - 3 * shard)):
            out = np.full(images.shape[1:], np.nan, np.float16)
            obj.decode_into(i, out)
            np.testing.assert_array_equal(out.view(np.uint16), back[3 * shard + i].view(np.uint16))
            strided = np.full((512, 512, 2), np.nan, np.float16)[:, :, :1]  # not contiguous: still filled
            obj.decode_into(i, strided)
            np.testing.assert_array_equal(strided.view(np.uint16), images[3 * shard + i].view(np.uint16))
    obj = reader.fetch(0)
    fd = obj._fd
    del obj  # the file it held open is closed with it
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_damaged_or_missing_object_of_an_uncompressed_store_names_its_shard_and_row(tmp_path):
    from ichprep.errors import DamagedShardError

    images_array, _ = _none_store(tmp_path)
    reader = shardread.shard_reader(images_array)
    path = tmp_path / "none.zarr" / "images" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[512 * 512 * 2 + 4 + 1000] ^= 0xFF  # a byte of slice 1 of shard 1: row 4
    path.write_bytes(bytes(data))
    obj = reader.fetch(1)
    obj.decode_into(0, np.empty((512, 512, 1), np.float16))  # row 3 is intact
    with pytest.raises(DamagedShardError, match=r"row 4 \(slice 1 of shard 1\) fails its crc32c"):
        obj.decode_into(1, np.empty((512, 512, 1), np.float16))
    path.write_bytes(bytes(data[:-10]))  # the index's end cut off
    with pytest.raises(DamagedShardError, match="shard 1 .*index fails its crc32c"):
        reader.fetch(1)
    path.write_bytes(bytes(data[:20]))
    with pytest.raises(DamagedShardError, match=r"shard 1 \(rows 3..5\) is truncated"):
        reader.fetch(1)
    path.unlink()
    with pytest.raises(DamagedShardError, match=r"shard 1 \(rows 3..5\) is missing"):
        reader.fetch(1)
