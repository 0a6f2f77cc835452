"""A DICOM header's few wanted elements read straight from the file's bytes (the header pass's fast path), and
their raw values converted without building pydicom DataElements. Anything out of the ordinary is left to
pydicom (:mod:`ichprep.scan`).
"""

from __future__ import annotations

import os
import struct

from pydicom.dataelem import RawDataElement
from pydicom.valuerep import VALIDATORS

__all__ = ["ELEMENTS", "IMPLICIT_LE", "element_values", "convert", "walk_header"]


# The elements read, with the VR PS3.6 gives them. Their raw bytes are converted here: pydicom builds and
# validates a DataElement on every access, half a header's time; parsing the file stays pydicom's.
ELEMENTS = {
    "SOPInstanceUID": (0x00080018, "UI"), "Modality": (0x00080060, "CS"), "PatientID": (0x00100020, "LO"),
    "StudyInstanceUID": (0x0020000D, "UI"), "SeriesInstanceUID": (0x0020000E, "UI"),
    "ImagePositionPatient": (0x00200032, "DS"), "SamplesPerPixel": (0x00280002, "US"),
    "NumberOfFrames": (0x00280008, "IS"), "Rows": (0x00280010, "US"), "Columns": (0x00280011, "US"),
    "BitsAllocated": (0x00280100, "US"), "BitsStored": (0x00280101, "US"), "PixelRepresentation": (0x00280103, "US"),
    "WindowCenter": (0x00281050, "DS"), "WindowWidth": (0x00281051, "DS"),
    "RescaleIntercept": (0x00281052, "DS"), "RescaleSlope": (0x00281053, "DS"),
}


def element_values(ds, problems: list[str]) -> dict:
    """keyword -> value for :data:`ELEMENTS` (absent or empty: None). Strings as pydicom gives them; US as
    int; DS/IS as a str, or a list of str when multi-valued. UIDs are checked with pydicom's own validator
    and its message recorded in ``problems`` (what pydicom would have warned). An element that is not raw,
    little-endian bytes of the expected VR (big-endian syntax, VR UN, non-ASCII text) is left to pydicom."""
    out = {}
    for kw, (tag, vr) in ELEMENTS.items():
        elem = ds.get_item(tag)
        if elem is None:
            out[kw] = None
            continue
        raw = elem.value if isinstance(elem, RawDataElement) else None
        if raw is not None and elem.is_little_endian and elem.VR in (None, vr) and (vr == "US" or raw.isascii()):
            out[kw] = convert(raw, vr, problems)
        else:
            value = ds[tag].value  # pydicom's conversion (and its warnings, counted by the caller)
            out[kw] = None if value is None or value == "" else value
    return out


def convert(raw: bytes, vr: str, problems: list[str]):
    """Little-endian raw bytes of one element (US, or ASCII text of DS, IS, UI, CS, LO) -> its value."""
    if vr == "US":
        return int.from_bytes(raw[:2], "little") if len(raw) >= 2 else None
    text = raw.decode("ascii").strip(" \0")
    if vr in ("DS", "IS"):
        parts = [p.strip() for p in text.split("\\")]
        return None if not text else parts[0] if len(parts) == 1 else parts
    if vr == "UI" and text:
        valid, msg = VALIDATORS["UI"]("UI", text)
        if not valid:
            problems.append(msg)
    return text or None


# The explicit-VR walk below: VRs whose length field is 4 bytes (after 2 reserved), PS3.5 7.1.2.
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
_WANTED = {tag: (kw, vr) for kw, (tag, vr) in ELEMENTS.items()}
_TRANSFER_SYNTAX_TAG = 0x00020010
_PIXEL_DATA_TAG = 0x7FE00010
IMPLICIT_LE = "1.2.840.10008.1.2"
# Data sets the walk leaves to pydicom: explicit VR big endian and deflated explicit VR little endian.
# Implicit VR little endian is walked; every other syntax encodes its data set as explicit VR little endian.
_NOT_WALKED = frozenset(("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"))
_HEAD_BYTES = 16384


def walk_header(path: str):
    """The fast path of the header pass: ``(values, transfer_syntax, pixel_offset, size)`` read straight from
    the file's bytes, or None whenever anything is out of the ordinary (then pydicom reads the file).

    An RSNA header is ~20 elements in ~700 bytes, which this walk reads several times faster than
    ``dcmread`` (docs/performance.md). It accepts only the plain case:
    preamble and ``DICM``, file meta of explicit VR little endian, a data set of explicit (or implicit) VR
    little endian whose top-level elements all have defined lengths, in ascending tag order, up to
    PixelData within the first 16 KiB; wanted elements must carry the VR PS3.6 gives them. Anything else
    (sequences of undefined length, a VR that does not match, big endian, deflate, a longer header)
    returns None.
    """
    unpack_from = struct.unpack_from
    try:
        with open(path, "rb") as fp:
            head = fp.read(_HEAD_BYTES)
            size = os.fstat(fp.fileno()).st_size
    except OSError:
        return None
    if len(head) < 140 or head[128:132] != b"DICM":
        return None
    raw: dict[int, bytes] = {}
    pos, end, explicit, syntax, last = 132, len(head), True, None, -1
    while pos + 8 <= end:
        group, element = unpack_from("<HH", head, pos)
        tag = group << 16 | element
        if tag <= last:
            return None
        last = tag
        if group != 2 and syntax is None:  # leaving the file meta: how is the data set encoded?
            ts = raw.get(_TRANSFER_SYNTAX_TAG)
            if ts is None or not ts.isascii():
                return None
            syntax = ts.decode("ascii").strip(" \0")
            if syntax in _NOT_WALKED:
                return None
            explicit = syntax != IMPLICIT_LE
        if tag == _PIXEL_DATA_TAG:
            return raw, syntax, pos, size
        if explicit:
            vr = head[pos + 4:pos + 6]
            if vr in _SHORT_VRS:
                length, start = unpack_from("<H", head, pos + 6)[0], pos + 8
            elif vr in _LONG_VRS and pos + 12 <= end:
                length, start = unpack_from("<I", head, pos + 8)[0], pos + 12
            else:
                return None
        else:
            vr = None
            length, start = unpack_from("<I", head, pos + 4)[0], pos + 8
        if length == 0xFFFFFFFF or start + length > end:
            return None
        want = _WANTED.get(tag)
        if want is not None or tag == _TRANSFER_SYNTAX_TAG:
            value = head[start:start + length]
            if (vr is not None and want is not None and vr != want[1].encode()) or \
                    (want is not None and want[1] != "US" and not value.isascii()):
                return None  # another VR (UN, say), or text pydicom must decode with the file's character set
            raw[tag] = value
        pos = start + length
    return None
