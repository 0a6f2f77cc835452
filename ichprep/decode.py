"""Pixel bytes -> raw stored values, exactly as pydicom's ``pixel_array`` gives them.

Uncompressed little-endian files take a fast path: the file's bytes are read once and the pixel
values are a ``np.frombuffer`` view at the PixelData (7FE0,0010) offset found in the header pass, with
pydicom's own treatment of BitsStored (PS3.5 8.1.1): unsigned values are masked to BitsStored bits,
signed ones sign-extended from bit BitsStored - 1. Every other transfer syntax goes through pydicom's
decoders (pylibjpeg with the libjpeg, openjpeg and rle plugins).
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pydicom
from pydicom.encaps import generate_fragments

from ichprep.errors import RejectError
from ichprep.scan import UNCOMPRESSED_LE, SliceHeader

__all__ = ["ReadBuffer", "read_raw", "codestream_size", "first_fragment"]

_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _fast_offset(data: bytes, header: SliceHeader, nbytes: int) -> int | None:
    """Offset of the pixel values, or None if the element is not laid out as expected."""
    pos = header.pixel_offset
    if bytes(data[pos:pos + 4]) != _PIXEL_TAG:
        return None
    if header.transfer_syntax == "1.2.840.10008.1.2.1":  # explicit VR: tag, VR, 2 reserved, UL length
        vr = bytes(data[pos + 4:pos + 6])
        if vr in (b"OW", b"OB", b"UN"):
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
    else:  # implicit VR: tag, UL length
        (length,) = struct.unpack_from("<I", data, pos + 4)
        start = pos + 8
    if length < nbytes or length == 0xFFFFFFFF or start + nbytes > len(data):
        return None
    return start


class ReadBuffer:
    """Memory reused from file to file by :func:`read_raw`. A fresh 0.5 MB ``bytes`` per slice is a fresh
    mmap whose page faults cost more system time than the read itself. Replaced, never resized, when a
    file is larger (arrays returned earlier may still view the old one)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def read(self, fh) -> memoryview:
        size = os.fstat(fh.fileno()).st_size
        if len(self._buf) < size:
            self._buf = bytearray(max(size, len(self._buf) * 5 // 4))
        got = fh.readinto(memoryview(self._buf)[:size])
        return memoryview(self._buf)[:got]


def read_raw(header: SliceHeader, buffer: ReadBuffer | None = None) -> np.ndarray:
    """The stored pixel values of one slice, shape (Rows, Columns), integer dtype.

    ``buffer``: on the fast path the file is read into it and the result is a view of it, valid until the
    next read into the same buffer; without one, the result owns its memory.

    Raises :class:`RejectError` (``truncated`` / ``decode_failed``) when the pixels cannot be had.
    """
    rows, cols = header.rows, header.columns
    if header.transfer_syntax in UNCOMPRESSED_LE and header.bits_allocated == 16:
        with _open_unchanged(header) as fh:
            try:
                data = (buffer or ReadBuffer()).read(fh)  # writable: the 12-bit fix below works in place
            except OSError as exc:  # an I/O error of the disk or the network file system
                raise RejectError("unreadable", f"cannot read the file in the pixel pass: {exc.strerror or exc}") from None
        nbytes = rows * cols * 2
        start = _fast_offset(data, header, nbytes)
        if start is not None:
            signed = header.pixel_representation == 1
            arr = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=rows * cols, offset=start)
            arr = arr.reshape(rows, cols)
            bs = header.bits_stored
            if bs < 16:  # in place: the bytes are this call's own (a copy, or the caller's buffer)
                if signed:
                    shift = 16 - bs
                    np.left_shift(arr, shift, out=arr)
                    np.right_shift(arr, shift, out=arr)
                else:
                    np.bitwise_and(arr, np.uint16((1 << bs) - 1), out=arr)
            return arr
    return _read_with_pydicom(header)


def _open_unchanged(header: SliceHeader):
    """The file opened for reading, if it is still the file the header pass read: a file that cannot be
    opened now is ``unreadable``; one whose size or modification time differ is ``changed`` (its pixels
    may no longer belong to the header the store's row holds)."""
    try:
        fh = open(header.path, "rb")
        now = os.fstat(fh.fileno())
    except OSError as exc:
        raise RejectError("unreadable", f"cannot read the file in the pixel pass: {exc.strerror or exc}") from None
    if header.file_size >= 0 and (now.st_size, now.st_mtime_ns) != (header.file_size, header.mtime_ns):
        fh.close()
        what = f"size {header.file_size} -> {now.st_size} bytes" if now.st_size != header.file_size else \
            "modification time"
        raise RejectError("changed", f"the file changed between the header and pixel passes ({what})")
    return fh


_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7])
_SCAN = 1 << 16  # how much of the first fragment is read for its frame header


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # a JPEG 2000 codestream wrapped in the JP2 file format


def first_fragment(pixel_data: bytes) -> bytes:
    """The start (up to 64 KiB) of the first fragment of encapsulated pixel data, after its basic offset table
    item (PS3.5 A.4; pydicom's item reader); b"" where the items are not there."""
    try:
        items = generate_fragments(pixel_data)
        next(items)  # the basic offset table
        return next(items)[:_SCAN]
    except (StopIteration, ValueError):
        return b""


def codestream_size(pixel_data: bytes) -> tuple[int, int] | None:
    """(rows, columns) that an encapsulated first frame's own header declares: the JPEG 2000 SIZ marker (ISO
    15444-1 A.5.1: Xsiz, Ysiz less the image offsets) or a JPEG / JPEG-LS start-of-frame (ISO 10918-1 B.2.2,
    14495-1: Y, X). Read where the frame begins (SOC and SIZ, or SOI), never searched for in its body: the
    bytes of an RLE frame (which has no such header) once matched SOI by chance 58 KB in, and a valid RLE slice
    was rejected as declaring 50117 x 50887 pixels. None where the frame starts with neither."""
    head = first_fragment(pixel_data)
    at = 0 if head.startswith(b"\xff\x4f\xff\x51") else \
        head.find(b"\xff\x4f\xff\x51") if head.startswith(_JP2_SIGNATURE) else -1
    if at >= 0 and at + 24 <= len(head):
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", head, at + 8)
        return ysiz - yo, xsiz - xo
    if not head.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(head) and head[i] == 0xFF:  # marker segments, by their lengths, up to the frame header
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            y, x = struct.unpack_from(">HH", head, i + 5)
            return y, x
        (length,) = struct.unpack_from(">H", head, i + 2)
        i += 2 + length
    return None


def _check_codestream(ds, header: SliceHeader) -> None:
    """A compressed frame that declares more pixels than Rows x Columns is refused before any decoder
    allocates for it (a 140 KB file can declare 16384 x 16384)."""
    if not ds.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in ds:
        return
    size = codestream_size(ds.PixelData)
    # more pixels than the header's is the danger; fewer (or 0: JPEG's "defined later") is the decoder's to judge
    if size is not None and size[0] * size[1] > header.rows * header.columns:
        raise RejectError("bad_dimensions", f"the compressed frame declares {size[0]} x {size[1]} pixels under Rows "
                          f"x Columns (0028,0010/0011) {header.rows} x {header.columns}")


def _read_with_pydicom(header: SliceHeader) -> np.ndarray:
    try:
        with warnings.catch_warnings(), _open_unchanged(header) as fh:
            warnings.simplefilter("ignore")  # the header pass already counted them
            ds = pydicom.dcmread(fh)
            _check_codestream(ds, header)
            arr = ds.pixel_array
    except RejectError:
        raise
    except (EOFError, struct.error) as exc:
        raise RejectError("truncated", f"pixel data ends early ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # decoders raise many types; the reason is recorded, the build goes on
        raise RejectError("decode_failed", f"pixel data could not be decoded ({type(exc).__name__}: {exc})") from None
    if arr.shape != (header.rows, header.columns):
        raise RejectError(
            "decode_failed",
            f"decoded shape {arr.shape} does not match Rows x Columns {header.rows} x {header.columns}",
        )
    return arr
