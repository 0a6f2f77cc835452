"""The chunk codecs of a store: the image codec each ``--codec`` names (``auto`` chosen by measurement), the
metadata columns' codec, and the crc32c checksum that ends every chain (schema 3 on)."""

from __future__ import annotations

import contextlib

import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ichprep.errors import UsageError

__all__ = ["CODECS", "compressors", "image_codec", "meta_compressors", "fast_codec_pipeline"]

CODECS = ("auto", "blosc-lz4", "blosc-lz4-bitshuffle", "blosc-zstd", "zstd", "none")


def compressors(codec: str, channels: int, hu: bool = False) -> tuple:
    """Image codec, followed by the chunk checksum (see :func:`image_codec`)."""
    return (*image_codec(codec, channels, hu), Crc32cCodec())


def image_codec(codec: str, channels: int, hu: bool = False) -> tuple:
    """Image codec. ``auto``: blosc-lz4 + byte shuffle for one float16 channel and for int16 HU (the fastest
    to decode on real slices, at a few percent more bytes than bit shuffle), zstd level 1 for several windows
    (clipped windows are mostly 0 or 1); measurements in docs/performance.md (benchmarks/codecs.py)."""
    if codec == "auto":
        codec = "blosc-lz4" if hu or channels == 1 else "zstd"
    if codec == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2),)
    if codec == "blosc-lz4-bitshuffle":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=2),)
    if codec == "blosc-zstd":
        return (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2),)
    if codec == "zstd":
        return (ZstdCodec(level=1),)
    if codec == "none":
        return ()
    raise UsageError(f"Expected --codec one of {', '.join(CODECS)}. Received: codec={codec!r}")


def fast_codec_pipeline():
    """Context in which arrays opened use the Rust ``zarrs`` codec pipeline, when installed: faster reads
    (and writes of layouts ``ichprep.shardio`` does not take). The config is read when an array is
    opened, so open the array inside the context; unsupported cases fall back to zarr-python's pipeline.
    """
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return contextlib.nullcontext()
    return zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def meta_compressors():
    return (ZstdCodec(level=3), Crc32cCodec())
