"""Header pass: one :class:`SliceHeader` per usable file, or a :class:`~ichprep.errors.RejectError`.

Only the tags the store needs are kept; nothing identifying leaves this module except a salted hash
of PatientID. Tags read (PS3.3 C.7 / C.7.6.3 / C.8.2.1 / C.11.2):

===========================  ===========  =================================================
keyword                      tag          use
===========================  ===========  =================================================
SOPInstanceUID               (0008,0018)  row id (``ID_...`` in RSNA data)
Modality                     (0008,0060)  must be CT (absent is accepted)
PatientID                    (0010,0020)  salted hash only
StudyInstanceUID             (0020,000D)  ordering, splits
SeriesInstanceUID            (0020,000E)  ordering
ImagePositionPatient         (0020,0032)  third value orders slices in a series
NumberOfFrames               (0028,0008)  must be 1
SamplesPerPixel              (0028,0002)  must be 1
Rows, Columns                (0028,0010/0011)
BitsAllocated, BitsStored    (0028,0100/0101)
PixelRepresentation          (0028,0103)  0 unsigned, 1 two's complement
WindowCenter, WindowWidth    (0028,1050/1051)  first value when multi-valued
RescaleIntercept/Slope       (0028,1052/1053)  required (PS3.3 C.11.1.1.2 modality LUT)
===========================  ===========  =================================================
"""

from __future__ import annotations

import hashlib
import math
import dataclasses
import os
import re
import stat
import struct
import warnings
from collections import Counter
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ichprep.errors import RejectError, SourceError
from ichprep.headerbytes import ELEMENTS, IMPLICIT_LE, convert, element_values, walk_header
from ichprep.pixels import IMAGE_SIZE, RSNA_FIX_OFFSET, first_value as _first, is_rsna_12bit_defect
from ichprep.windows import usable_window

__all__ = ["SliceHeader", "read_header", "hash_patient", "list_source", "scan_batch", "MAX_DIMENSION", "UNCOMPRESSED_LE",
           "is_rsna_12bit_defect"]

MAX_DIMENSION = 4096  # refuse larger Rows/Columns before allocating anything
MIN_DIMENSION = 16
UNCOMPRESSED_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


@dataclass(frozen=True)
class SliceHeader:
    """What the store needs from one file's header. No names, dates or raw patient IDs."""

    path: str
    sop_uid: str
    study_uid: str
    series_uid: str
    patient: str  # salted hash of PatientID
    position_z: float
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    slope: float
    intercept: float  # as in the file; see fix12
    window_center: float | None
    window_width: float | None
    transfer_syntax: str
    pixel_offset: int  # file offset of the PixelData element (uncompressed fast path)
    fix12: bool  # RSNA 12-bit defect: two's-complement values declared unsigned
    window_multi: bool = False  # WindowCenter/WindowWidth had several values (first one used)
    # The file as the header pass saw it: the pixel pass rejects it as ``changed`` if it differs.
    file_size: int = -1
    mtime_ns: int = 0

    @property
    def effective_intercept(self) -> float:
        return -float(RSNA_FIX_OFFSET) if self.fix12 else self.intercept


def hash_patient(patient_id: str, salt: str) -> str:
    """Salted BLAKE2b of PatientID (0010,0020), 16 hex digits. Empty ID -> ``''``."""
    if not patient_id:
        return ""
    return hashlib.blake2b(patient_id.encode("utf-8"), digest_size=8, key=salt_key(salt)).hexdigest()


def salt_key(salt: str) -> bytes:
    """BLAKE2b's key (at most 64 bytes) from the whole salt: itself when it fits, else its 64-byte digest, so
    two salts that share their first 64 bytes give different patient keys (as they give different
    fingerprints)."""
    raw = salt.encode("utf-8")
    return raw if len(raw) <= 64 else hashlib.blake2b(raw, digest_size=64).digest()


def read_header(path: str, salt: str, warning_counts: Counter | None = None) -> SliceHeader:
    """Read one file's header. Raises :class:`RejectError` with a reason code when it is unusable.

    pydicom's warnings (every RSNA ``ID_`` UID triggers "Invalid value for VR UI") are counted into
    ``warning_counts`` by their first words instead of being shown.
    """
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = _read_header(path, salt, problems)
    if warning_counts is not None:
        for message in problems + [str(w.message) for w in caught]:
            warning_counts[_warning_key(message)] += 1
    return header


_DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_SLOPE, MAX_INTERCEPT = 1_000.0, 100_000.0  # RescaleSlope / RescaleIntercept a slice may have


def _warning_key(message: str) -> str:
    # "Invalid value for VR UI: 'ID_4d28912ba6'. Please see ..." -> "Invalid value for VR UI"
    return message.split(":")[0].split(" - ")[0][:80]


def _read_header(path: str, salt: str, problems: list[str]) -> SliceHeader:
    try:
        seen = os.stat(path)
    except OSError as exc:
        raise RejectError("unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(seen.st_mode):  # opening a FIFO would wait for a writer forever
        raise RejectError("unreadable", "not a regular file (a FIFO, socket or device)")
    header = _header_of(path, salt, problems)
    return dataclasses.replace(header, file_size=seen.st_size, mtime_ns=seen.st_mtime_ns)


def _header_of(path: str, salt: str, problems: list[str]) -> SliceHeader:
    walked = walk_header(path)
    if walked is not None:
        raw, tsyntax, pixel_offset, size = walked
        v = {kw: convert(raw[tag], vr, problems) if raw.get(tag) else None for kw, (tag, vr) in ELEMENTS.items()}
    else:
        ds, pixel_offset, size = _read_with_pydicom(path)
        v = element_values(ds, problems)
        meta = getattr(ds, "file_meta", None)
        tsyntax = (meta.get("TransferSyntaxUID") if meta is not None else None) or IMPLICIT_LE
    return _slice_header(path, salt, v, UID(tsyntax), pixel_offset, size)


def _read_with_pydicom(path: str):
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixel_offset = fp.tell()
    except InvalidDicomError as exc:
        raise RejectError("not_dicom", f"not a DICOM file (no DICM preamble): {exc}") from None
    except (EOFError, ValueError, KeyError, OverflowError, TypeError, struct.error) as exc:
        raise RejectError("truncated", f"header could not be parsed ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise RejectError("unreadable", f"cannot read file: {exc}") from None
    except Exception as exc:  # pydicom raises many types on damaged files; one file never stops a build
        raise RejectError("unreadable", f"pydicom could not parse the header ({type(exc).__name__}: {exc})") from None
    if "SOPInstanceUID" not in ds and "PixelData" not in ds and "Rows" not in ds:
        raise RejectError("not_dicom", "no SOPInstanceUID (0008,0018), Rows or PixelData: not an image")
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
        # the data set is one deflate stream: where the file ends says nothing about where PixelData is
        if not _has_pixel_data(path):
            _no_pixel_data()
        return ds, 0, size
    if pixel_offset >= size:
        _no_pixel_data()
    return ds, pixel_offset, size


def _no_pixel_data():
    raise RejectError("no_pixel_data", "no PixelData (7FE0,0010) element")


def _has_pixel_data(path: str) -> bool:
    """Whether a deflated data set holds PixelData (read whole: the pixels are inside the deflate stream)."""
    try:
        return "PixelData" in pydicom.dcmread(path)
    except Exception:  # noqa: BLE001 -- a damaged stream: no usable pixels
        return False


# A UID is written into stores, manifests, reports and submission rows. DICOM's are digits and dots (PS3.5 9.1),
# RSNA's "ID_" and hex, and real files carry others (pydicom's own test data: 64 hex digits); what must never
# pass is what could forge a CSV row or a spreadsheet formula: separators, quotes, spaces, control characters,
# a leading '=', '+', '-' or '@'.
_SAFE_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,127}")


def _checked_uid(value: str, keyword: str, tag: str) -> str:
    uid = value.rstrip("\x00 ")
    if uid and not _SAFE_ID.fullmatch(uid):
        raise RejectError("bad_uid", f"{keyword} {tag} is {uid[:80]!r}: a UID may hold letters, digits, '.', '_' and "
                                     "'-' (starting with a letter or digit), at most 128 of them")
    return uid


def _rescale(v: dict) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (PS3.3 C.11.1.1.2); beyond MAX_SLOPE / MAX_INTERCEPT no stored value maps
    to a float32 HU in int16's range (a blank or infinite slice)."""
    slope, intercept = _first(v["RescaleSlope"]), _first(v["RescaleIntercept"])
    if slope is None or intercept is None or slope == 0 or not (math.isfinite(slope) and math.isfinite(intercept)) \
            or abs(slope) > MAX_SLOPE or abs(intercept) > MAX_INTERCEPT:
        raise RejectError(
            "missing_tag",
            f"RescaleSlope/RescaleIntercept (0028,1053/1052) unusable: {v['RescaleSlope']!r}/{v['RescaleIntercept']!r}",
        )
    return slope, intercept


def _check_pixel_data(tsyntax: UID, expected: int, pixel_offset: int, size: int) -> None:
    """Uncompressed pixels that fit in the file, or a decoder for the transfer syntax."""
    if str(tsyntax) in UNCOMPRESSED_LE:
        element_header = 8 if str(tsyntax) == IMPLICIT_LE else 12  # tag, (VR, reserved,) length
        if size - pixel_offset - element_header < expected:
            raise RejectError(
                "truncated",
                f"PixelData (7FE0,0010) needs {expected} bytes; the file ends "
                f"{size - pixel_offset - element_header} bytes after its value starts",
            )
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise RejectError("unsupported_transfer_syntax",
                          f"no pixel decoder for transfer syntax {tsyntax} ({tsyntax.name})") from None
    if not decoder.is_available:
        raise RejectError("unsupported_transfer_syntax",
                          f"transfer syntax {tsyntax.name}: no decoding plugin installed (install pylibjpeg plugins)")


def _uids(v: dict, path: str) -> tuple[str, str, str]:
    """SOP, study and series UIDs, checked; a missing SOP UID is the file's name, if that is a plain name."""
    if v["SOPInstanceUID"]:
        sop = _checked_uid(str(v["SOPInstanceUID"]), "SOPInstanceUID", "(0008,0018)")
    else:
        sop = os.path.splitext(os.path.basename(path))[0]
        if not _SAFE_ID.fullmatch(sop):
            raise RejectError("bad_uid", f"SOPInstanceUID (0008,0018) is missing and the file name {sop[:80]!r} cannot "
                                         "stand for it (letters, digits, '_', '.', '-' only)")
    study = _checked_uid(str(v["StudyInstanceUID"] or ""), "StudyInstanceUID", "(0020,000D)")
    series = _checked_uid(str(v["SeriesInstanceUID"] or ""), "SeriesInstanceUID", "(0020,000E)")
    return sop, study, series


def _slice_header(path: str, salt: str, v: dict, tsyntax: UID, pixel_offset: int, size: int) -> SliceHeader:
    modality = str(v["Modality"] or "CT").upper()
    if modality != "CT":
        raise RejectError("not_ct", f"Modality (0008,0060) is {modality!r}, expected 'CT'")
    frames = _first(v["NumberOfFrames"]) or 1
    if frames != 1:
        raise RejectError("multi_frame", f"NumberOfFrames (0028,0008) is {v['NumberOfFrames']}, expected 1")
    for kw, tag in (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"), ("BitsAllocated", "(0028,0100)"),
                    ("RescaleIntercept", "(0028,1052)"), ("RescaleSlope", "(0028,1053)")):
        if v[kw] is None:
            raise RejectError("missing_tag", f"{kw} {tag} is missing (PS3.3 C.7.6.3 / C.11.1.1.2)")
    rows, cols = int(v["Rows"]), int(v["Columns"])
    if not (MIN_DIMENSION <= rows <= MAX_DIMENSION and MIN_DIMENSION <= cols <= MAX_DIMENSION):
        raise RejectError(
            "bad_dimensions",
            f"Rows x Columns (0028,0010/0011) = {rows} x {cols}, outside [{MIN_DIMENSION}, {MAX_DIMENSION}]",
        )
    spp = int(v["SamplesPerPixel"] or 1)
    if spp != 1:
        raise RejectError("bad_dimensions", f"SamplesPerPixel (0028,0002) is {spp}, expected 1 (greyscale)")
    bits_allocated = int(v["BitsAllocated"])
    bits_stored = int(v["BitsStored"] or bits_allocated)
    pixel_rep = int(v["PixelRepresentation"] or 0)
    if pixel_rep not in (0, 1):
        raise RejectError("bad_dimensions", f"PixelRepresentation (0028,0103) is {pixel_rep}: expected 0 (unsigned) or "
                                            "1 (two's complement), PS3.3 C.7.6.3.1.9")
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise RejectError(
            "bad_dimensions",
            f"BitsAllocated/BitsStored (0028,0100/0101) = {bits_allocated}/{bits_stored}, expected 8 or 16 allocated",
        )
    slope, intercept = _rescale(v)
    _check_pixel_data(tsyntax, rows * cols * (bits_allocated // 8), pixel_offset, size)
    sop, study, series = _uids(v, path)
    ipp = v["ImagePositionPatient"]
    ipp = [ipp] if isinstance(ipp, (str, int, float)) else list(ipp or ())
    z = _first(ipp[2]) if len(ipp) >= 3 else None
    return SliceHeader(
        path=path,
        sop_uid=sop,
        study_uid=study,
        series_uid=series,
        patient=hash_patient(str(v["PatientID"] or ""), salt),
        position_z=float("nan") if z is None else z,
        rows=rows,
        columns=cols,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=pixel_rep,
        slope=slope,
        intercept=intercept,
        window_center=_first(v["WindowCenter"]),
        window_width=_first(v["WindowWidth"]),
        transfer_syntax=str(tsyntax),
        pixel_offset=pixel_offset,
        fix12=is_rsna_12bit_defect(bits_stored, pixel_rep, intercept),
        window_multi=_is_multi(v["WindowCenter"]) or _is_multi(v["WindowWidth"]),
    )


def _is_multi(value) -> bool:
    return value is not None and not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__len__") and len(value) > 1


def list_source(source: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Every regular, non-hidden file under ``source`` (recursively), sorted; the folders ``skip`` (a store
    being written inside its own source, and its lock) are left out."""
    if not os.path.isdir(source):
        raise SourceError(f"DICOM folder not found: {source!r}. Pass an existing folder of .dcm files.")
    skipped = {os.path.abspath(s) for s in skip}
    paths = []
    for dirpath, dirnames, files in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.abspath(os.path.join(dirpath, d)) not in skipped)
        paths.extend(os.path.join(dirpath, f) for f in files if not f.startswith(".")
                     and os.path.abspath(os.path.join(dirpath, f)) not in skipped)
    if not paths:
        raise SourceError(f"DICOM folder {source!r} is empty: nothing to build.")
    return sorted(paths)


def scan_batch(paths: list[str], salt: str, needs_default: bool, on_size: str):
    headers: list[SliceHeader] = []
    rejects: list[tuple[str, str, str]] = []
    warns: Counter = Counter()
    for p in paths:
        try:
            h = read_header(p, salt, warns)
            if needs_default and (h.window_center is None or h.window_width is None
                                  or not usable_window(h.window_center, h.window_width)):
                raise RejectError("no_window", "WindowCenter/WindowWidth (0028,1050/1051) missing or outside "
                                               f"what a window can be ({h.window_center!r}/{h.window_width!r}), "
                                               "and the windows include 'default'")
            if on_size == "reject" and (h.rows, h.columns) != (IMAGE_SIZE, IMAGE_SIZE):
                raise RejectError("bad_size", f"{h.rows} x {h.columns} is not {IMAGE_SIZE} x {IMAGE_SIZE} "
                                              "(--on-size reject)")
            headers.append(h)
        except RejectError as exc:
            rejects.append((p, exc.reason, exc.message))
    return headers, rejects, warns
