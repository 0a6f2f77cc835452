"""Writing synthetic slices as DICOM files with the tags RSNA files carry, and the label CSV.

Shared by every version of ``ichprep synth``: the encodings of the real data (16-bit signed with intercept
-1024 and padding outside the scan circle; 12-bit unsigned with multi-valued window tags; the RSNA 12-bit
defect), RSNA-like ``ID_`` identifiers, and the challenge's long label format.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from numba import njit
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from ichprep.labels import SUBTYPES

__all__ = ["ENCODINGS", "hex_id", "synthetic_patients", "patient_of", "series_encoding", "encode",
           "SeriesWriter", "write_labels", "CORPUS_MARKER", "CorpusTally"]

ENCODINGS = ("signed16", "unsigned12", "rsna12defect")
# A corpus folder holds this file, so that a rerun into it may overwrite it and nothing else is.
CORPUS_MARKER = "ichprep-synth.json"


def hex_id(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[d] for d in rng.integers(0, 16, n))


def synthetic_patients(rng: np.random.Generator, studies: int) -> list[tuple[str, str]]:
    """(PatientID, PatientName) of a corpus: 0.8 patients a study, so some patients have two studies."""
    n = max(1, int(round(studies * 0.8)))
    return [(f"ID_{hex_id(rng, 8)}", f"SYNTHETIC^PATIENT{i:04d}") for i in range(n)]


def patient_of(study: int, patients: list, rng: np.random.Generator) -> tuple[str, str]:
    """The first studies take one patient each, the rest a random one again."""
    n = len(patients)
    return patients[study % n] if study < n else patients[int(rng.integers(n))]


def series_encoding(study: int) -> str:
    """As in the real data: half the series 16-bit signed, most others 12-bit unsigned, a tenth the RSNA defect."""
    return ENCODINGS[0] if study % 2 == 0 else (ENCODINGS[2] if study % 10 == 5 else ENCODINGS[1])


@njit(cache=True, nogil=True)
def _encode_kernel(hu, outside, defect, add, lo, hi, pad, out):
    """``out`` = the stored values of float32 HU: rint, then ``defect`` (the RSNA 12-bit two's complement of HU
    clipped to [-1000, 3095]) or ``clip(h + add, lo, hi)``; ``pad`` outside the reconstruction circle. One pass
    where numpy took six (tested equal to the numpy formulas)."""
    n_rows, n_cols = hu.shape
    for i in range(n_rows):
        for j in range(n_cols):
            h = int(np.rint(hu[i, j]))
            if defect:
                h = -1000 if outside[i, j] else min(max(h, -1000), 3095)
                out[i, j] = h + 4096 if h < 0 else h
            else:
                out[i, j] = pad if outside[i, j] else min(max(h + add, lo), hi)


def encode(hu: np.ndarray, encoding: str, outside: np.ndarray,
           window: tuple[str, str] = ("40", "80")) -> tuple[np.ndarray, dict]:
    """Stored values and the pixel-module tags for one slice of HU; ``outside`` marks the pixels beyond the
    scanner's reconstruction circle (padding). ``window`` is the (center, width) the file declares."""
    hu = np.ascontiguousarray(hu)  # float32 (version 2) or float64 (version 1): rint in its own precision
    outside = np.ascontiguousarray(outside, np.bool_)
    c, w = window
    if encoding == "signed16":
        raw = np.empty(hu.shape, np.int16)
        _encode_kernel(hu, outside, False, 1024, -32768, 32767, -2000, raw)
        return raw, dict(BitsStored=16, HighBit=15, PixelRepresentation=1, RescaleIntercept="-1024",
                         RescaleSlope="1", WindowCenter=c, WindowWidth=w)
    raw = np.empty(hu.shape, np.uint16)
    if encoding == "unsigned12":
        _encode_kernel(hu, outside, False, 1024, 0, 4095, 0, raw)
        cc, ww = f"{int(c):05d}", f"{int(w):05d}"
        return raw, dict(BitsStored=12, HighBit=11, PixelRepresentation=0, RescaleIntercept="-1024",
                         RescaleSlope="1", WindowCenter=[cc, cc], WindowWidth=[ww, ww])
    # RSNA defect: 12-bit two's complement of HU, declared unsigned, intercept > -100.
    _encode_kernel(hu, outside, True, 0, 0, 0, 0, raw)
    cc, ww = f"{int(c) - 4:05d}", f"{int(w):05d}"
    return raw, dict(BitsStored=12, HighBit=11, PixelRepresentation=0, RescaleIntercept="1", RescaleSlope="1",
                     WindowCenter=[cc, cc], WindowWidth=[ww, ww])


class SeriesWriter:
    """Writes the slices of one series. The tags they share are set once, on a dataset each uncompressed slice
    reuses (setting pydicom elements, each validated, was half a slice's writing time); a compressed slice
    gets a dataset of its own, as compressing rewrites the pixel module."""

    def __init__(self, study: str, series: str, pid: str, pname: str, pixel_mm: float, origin: float = -125.0,
                 thickness: str | None = None):
        self._series = (study, series, pid, pname, pixel_mm, origin, thickness)
        self._template: Dataset | None = None
        self._template_key = None
        self._bytes: list[bytes] | None = None  # the template's file cut around its four per-slice elements
        self._meta_len = 0
        self._pixel_vr = "OW"

    def write(self, path, raw: np.ndarray, tags: dict, sop: str, z: float, compress=None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our RSNA-style 'ID_' UIDs are deliberately not valid UIs
            if compress is not None:
                ds = _slice_dataset(raw, tags, sop, z, *self._series)
                ds.compress(compress, raw, generate_instance_uid=False)
            else:
                key = (raw.shape, tuple(sorted((k, str(v)) for k, v in tags.items())))
                if key != self._template_key:
                    self._template, self._template_key = _slice_dataset(raw, tags, sop, z, *self._series), key
                    self._bytes = None
                if self._write_from_bytes(path, raw, sop, z):
                    return
                ds = self._template
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.SOPInstanceUID = sop
                ds.ImagePositionPatient = self._position(z)
                ds.PixelData = raw.tobytes()
                if self._bytes is None:
                    self._keep_bytes(path, ds)
                    return
            ds.save_as(path, enforce_file_format=True)

    def _position(self, z: float) -> list[float]:
        return [self._series[5], self._series[5], round(z, 4)]

    def _keep_bytes(self, path, ds: Dataset) -> None:
        """Write the template's first slice with pydicom's writer and keep its file cut around the four
        elements that change from slice to slice (each slice's own is then encoded in their place)."""
        pixels = correct_ambiguous_vr_element(ds[_PIXELS], ds, True)  # OB or OW, as the writer decides it
        encoded = [_encode_element(e) for e in (ds.file_meta[_MEDIA_SOP], ds[_SOP], ds[_POSITION], pixels)]
        buf = DicomBytesIO()
        ds.save_as(buf, enforce_file_format=True)
        whole, parts, at = buf.getvalue(), [], 0
        for chunk in encoded:
            start = whole.index(chunk, at)
            parts.append(whole[at:start])
            at = start + len(chunk)
        parts.append(whole[at:])
        self._bytes, self._meta_len, self._pixel_vr = parts, len(encoded[0]), pixels.VR
        with open(path, "wb") as fh:
            fh.write(whole)

    def _write_from_bytes(self, path, raw: np.ndarray, sop: str, z: float) -> bool:
        """Write the slice as the template's bytes with its four changing elements encoded in place, as
        pydicom's writer encodes them (tested byte for byte against it), without setting and re-encoding them
        through pydicom (~1 ms of a slice). False (pydicom writes it) before the template's first slice is
        kept, or where the meta group would change length."""
        if self._bytes is None:
            return False
        uid = _ui_element(_MEDIA_SOP, sop)
        if len(uid) != self._meta_len:  # the meta group's length element would differ
            return False
        position = "\\".join(str(DSfloat(v)) for v in self._position(z)).encode("ascii")
        pixels = raw.tobytes()
        out = [self._bytes[0], uid, self._bytes[1], _ui_element(_SOP, sop), self._bytes[2],
               _short_element(_POSITION, b"DS", position + b" " * (len(position) % 2)), self._bytes[3],
               _long_header(_PIXELS, self._pixel_vr, len(pixels)), pixels, self._bytes[4]]
        with open(path, "wb") as fh:
            fh.write(b"".join(out))
        return True


def _tag_bytes(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")


def _short_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """An explicit VR little endian element with a 2-byte length (UI, DS)."""
    return _tag_bytes(tag) + vr + len(value).to_bytes(2, "little") + value


def _ui_element(tag: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    return _short_element(tag, b"UI", value + b"\x00" * (len(value) % 2))


def _long_header(tag: int, vr: str, length: int) -> bytes:
    """The header of an element with a 4-byte length (OB, OW): tag, VR, two reserved bytes, length."""
    return _tag_bytes(tag) + vr.encode("ascii") + b"\x00\x00" + length.to_bytes(4, "little")


_MEDIA_SOP, _SOP, _POSITION, _PIXELS = 0x00020003, 0x00080018, 0x00200032, 0x7FE00010


def _encode_element(elem) -> bytes:
    """One element as pydicom's writer encodes it in explicit VR little endian."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_data_element(buf, elem)
    return buf.getvalue()


def _slice_dataset(raw, tags, sop, z, study, series, pid, pname, pixel_mm, origin, thickness) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.Modality = "CT"
    ds.PatientName = pname
    ds.PatientID = pid
    ds.PatientBirthDate = "19470101"
    ds.StudyDate = "20190101"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = ""
    ds.ImagePositionPatient = [origin, origin, round(z, 4)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if thickness is not None:
        ds.SliceThickness = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = raw.shape
    ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.BitsAllocated = 16
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = raw.tobytes()
    return ds


class CorpusTally:
    """What a corpus writer has written: rows for the label CSV, counts, slices per encoding, progress."""

    def __init__(self, cfg, progress=None):
        self.cfg, self.progress = cfg, progress
        self.rows: list[tuple[str, np.ndarray]] = []
        self.counts = {"slices": 0, "compressed": 0, "positive": 0}
        self.by_encoding = {e: 0 for e in ENCODINGS}

    def series(self, encoding: str) -> None:
        self.by_encoding[encoding] += self.cfg.slices

    def slice(self, sop: str, labels: np.ndarray, compressed: bool) -> None:
        self.rows.append((sop, labels))
        self.counts["slices"] += 1
        self.counts["compressed"] += bool(compressed)
        self.counts["positive"] += int(labels[5])
        if self.progress is not None:
            self.progress.update(self.counts["slices"], self.cfg.studies * self.cfg.slices)

    def finish(self, out_dir: str, dicom_dir: str, patients: int) -> dict:
        """Write the label CSV; the corpus's summary."""
        labels = os.path.join(out_dir, "labels.csv")
        write_labels(labels, self.rows)
        return dict(self.counts, studies=self.cfg.studies, patients=patients, encodings=self.by_encoding,
                    dicom_dir=dicom_dir, labels=labels)


def write_labels(path: str | os.PathLike, rows: list[tuple[str, np.ndarray]]) -> None:
    """The challenge's long format: a header, then ``ID_<sop>_<subtype>,0|1`` for the six labels of each slice."""
    with open(path, "w", newline="") as fh:
        fh.write("ID,Label\n")
        for sop, lab in sorted(rows, key=lambda r: r[0]):
            for name, v in zip(SUBTYPES, lab):
                fh.write(f"{sop}_{name},{int(v)}\n")
