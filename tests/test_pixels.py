"""The pixel path (header -> raw -> kernel) against pydicom's own functions plus plain numpy."""

import glob
import os
import warnings
from collections import Counter

import numpy as np
import pydicom
import pytest

from conftest import F16_TOL, PYDICOM_CT, first_value, pydicom_ct_path, reference_channels, reference_hu
from ichprep.pixels import hu_float
from ichprep.decode import ReadBuffer, read_raw
from ichprep.kernels import channel_params, window_slice
from ichprep.errors import RejectError
from ichprep.headerbytes import walk_header as _walk_header
from ichprep.scan import hash_patient, read_header
from ichprep.windows import WINDOW_TABLE, Window

ALL = WINDOW_TABLE + (Window("full", "full"),)


def _pipeline(path, windows):
    h = read_header(path, salt="t", warning_counts=Counter())
    raw = read_raw(h)
    out, a, b = window_slice(raw, h.slope, h.effective_intercept, h.fix12,
                             *channel_params(windows, h.window_center, h.window_width))
    return h, raw, out, a, b


def _assert_close(out, ref):
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    assert diff.max() <= F16_TOL, f"max diff {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


def test_real_series_fast_path_equals_pydicom(real_series):
    files = sorted(glob.glob(os.path.join(real_series, "*.dcm")))
    assert len(files) == 32
    for f in files:
        h = read_header(f, "t", Counter())
        assert h.transfer_syntax == "1.2.840.10008.1.2.1" and h.bits_stored == 12 and h.pixel_representation == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(read_raw(h), pydicom.dcmread(f).pixel_array)


def test_reused_read_buffer_gives_pydicom_values(real_series, synth_corpus):
    """One ReadBuffer across files of different sizes and encodings (12-bit masking done in place in it):
    each result equals pydicom's pixel_array."""
    files = sorted(glob.glob(os.path.join(synth_corpus["dicom_dir"], "*.dcm")))
    files = [pydicom_ct_path("CT_small.dcm")] + files + sorted(glob.glob(os.path.join(real_series, "*.dcm")))
    buf = ReadBuffer()
    for f in files:
        h = read_header(f, "t", Counter())
        got = read_raw(h, buf).copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.testing.assert_array_equal(got, pydicom.dcmread(f).pixel_array, err_msg=f)


def test_real_series_every_window_equals_reference(real_series):
    files = sorted(glob.glob(os.path.join(real_series, "*.dcm")))
    for f in files:
        h, raw, out, a, b = _pipeline(f, ALL)
        _assert_close(out, reference_channels(f, ALL))
        hu = reference_hu(f)
        assert (a, b) == (hu.min(), hu.max())
        assert h.window_multi  # multi-valued WindowCenter in this data; first value used


def test_real_series_header_counts_uid_warnings_instead_of_raising(real_series):
    # pytest turns warnings into errors here: reading must not emit them, only count them.
    counts = Counter()
    f = sorted(glob.glob(os.path.join(real_series, "*.dcm")))[0]
    h = read_header(f, "salt", counts)
    assert counts["Invalid value for VR UI"] >= 3
    assert h.sop_uid.startswith("ID_") and len(h.patient) == 16 and not h.patient.startswith("ID_")


@pytest.mark.parametrize("name", PYDICOM_CT)
def test_pydicom_ct_files_every_window_equals_reference(name):
    path = pydicom_ct_path(name)
    windows = tuple(w for w in ALL if w.kind != "default")
    h, raw, out, a, b = _pipeline(path, windows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(raw, pydicom.dcmread(path).pixel_array)
    _assert_close(out, reference_channels(path, windows))


def test_synthetic_corpus_all_encodings_equal_reference(synth_corpus):
    files = sorted(glob.glob(os.path.join(synth_corpus["dicom_dir"], "*.dcm")))
    seen = Counter()
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        kind = (ds.file_meta.TransferSyntaxUID.name, int(ds.BitsStored), int(ds.PixelRepresentation),
                float(ds.RescaleIntercept) > -100)
        if seen[kind] >= 3:
            continue
        seen[kind] += 1
        h, raw, out, a, b = _pipeline(f, ALL)
        _assert_close(out, reference_channels(f, ALL))
    syntaxes = {k[0] for k in seen}
    assert {"Explicit VR Little Endian", "RLE Lossless", "JPEG 2000 Image Compression (Lossless Only)"} <= syntaxes
    assert any(k[3] for k in seen), "the corpus must contain RSNA 12-bit defect slices"
    assert any(k[1] == 16 and k[2] == 1 for k in seen) and any(k[1] == 12 and not k[3] for k in seen)


def test_synthetic_rsna_defect_gives_true_hu(synth_corpus):
    """The 12-bit fix recovers the HU the synthesiser planted: air -1000 and brain tissue ~20-45."""
    for f in sorted(glob.glob(os.path.join(synth_corpus["dicom_dir"], "*.dcm"))):
        h = read_header(f, "t", Counter())
        if h.fix12:
            hu = hu_float(read_raw(h), h.slope, h.effective_intercept, h.fix12)
            assert hu.min() >= -1000 - 1 and np.median(hu[200:300, 200:300]) > 0
            assert hu.max() > 500  # skull
            return
    pytest.fail("no defect slice found")


def _pydicom_header(path, salt):
    """Every SliceHeader field from pydicom's converted values, and how many UID warnings pydicom gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixel_offset = fp.tell()
        opt = lambda kw: first_value(ds[kw].value) if kw in ds and ds[kw].value not in (None, "") else None  # noqa: E731
        vm = lambda kw: ds[kw].VM if kw in ds else 0  # noqa: E731
        fields = dict(sop_uid=str(ds.SOPInstanceUID), study_uid=str(ds.get("StudyInstanceUID", "")),
                      series_uid=str(ds.get("SeriesInstanceUID", "")),
                      patient=hash_patient(str(ds.get("PatientID", "") or ""), salt),
                      position_z=float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else None,
                      rows=int(ds.Rows), columns=int(ds.Columns), bits_allocated=int(ds.BitsAllocated),
                      bits_stored=int(ds.BitsStored), pixel_representation=int(ds.PixelRepresentation),
                      slope=opt("RescaleSlope"), intercept=opt("RescaleIntercept"),
                      window_center=opt("WindowCenter"), window_width=opt("WindowWidth"),
                      window_multi=vm("WindowCenter") > 1 or vm("WindowWidth") > 1, pixel_offset=pixel_offset,
                      transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
    uid_warnings = sum(str(w.message).startswith("Invalid value for VR UI") for w in caught)
    return fields, uid_warnings


def _header_files(real_series, synth_corpus):
    files = sorted(glob.glob(os.path.join(real_series, "*.dcm")))
    files += sorted(glob.glob(os.path.join(synth_corpus["dicom_dir"], "*.dcm")))
    return files + [pydicom_ct_path(name) for name in PYDICOM_CT]


def test_header_fields_equal_pydicom_values(real_series, synth_corpus):
    """read_header converts the raw elements itself (faster than pydicom's element conversion): every field,
    and the count of pydicom's UID warnings, equal what pydicom's converted dataset gives, on the real series,
    the synthetic corpus (explicit/implicit VR, RLE, JPEG 2000, multi-valued windows) and pydicom's CT files."""
    for f in _header_files(real_series, synth_corpus):
        counts = Counter()
        h = read_header(f, "salt", counts)
        ref, uid_warnings = _pydicom_header(f, "salt")
        got = {k: getattr(h, k) for k in ref}
        if ref["position_z"] is None:
            assert np.isnan(got.pop("position_z")), f
            ref.pop("position_z")
        assert got == ref, f
        assert counts["Invalid value for VR UI"] == uid_warnings, f


def test_header_walk_reads_the_plain_files_itself(real_series, synth_corpus):
    """The fast walk is what runs on the real series and the synthetic corpus (explicit and implicit VR,
    compressed syntaxes), not the pydicom fallback; the test above checks what it reads."""
    files = _header_files(real_series, synth_corpus)[:-len(PYDICOM_CT)]
    assert all(_walk_header(f) is not None for f in files)


def _variant(tmp_path, source, name, change, implicit=False):
    """The first real slice, changed by ``change(ds)`` and written again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(sorted(glob.glob(os.path.join(source, "*.dcm")))[0])
        change(ds)
        if implicit:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        out = str(tmp_path / f"{name}.dcm")
        ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("name,change,implicit,walks", [
    ("plain", lambda ds: None, False, True),
    ("implicit", lambda ds: None, True, True),
    ("sequence_undefined_length", lambda ds: _add_sequence(ds), True, False),
    ("sequence_explicit", lambda ds: _add_sequence(ds), False, False),
    ("latin1_patient", lambda ds: _set(ds, SpecificCharacterSet="ISO_IR 100", PatientID="Gr\u00fcn"), False, False),
    ("un_vr", None, False, False),
    ("long_header", lambda ds: _set(ds, ImageComments="x" * 20000), False, False),
    ("multi_window", lambda ds: _set(ds, WindowCenter=[40, 600], WindowWidth=[80, 2800]), False, True),
    ("no_position", lambda ds: delattr(ds, "ImagePositionPatient"), False, True),
])
def test_header_walk_falls_back_to_pydicom_for_anything_unusual(tmp_path, real_series, name, change, implicit, walks):
    path = _variant(tmp_path, real_series, name, change or (lambda ds: None), implicit)
    if name == "un_vr":
        _rewrite_as_un(path, b"\x28\x00\x53\x10")  # RescaleSlope as VR UN (pydicom would write DS)
    assert (_walk_header(path) is not None) == walks
    counts = Counter()
    h = read_header(path, "salt", counts)
    ref, uid_warnings = _pydicom_header(path, "salt")
    got = {k: getattr(h, k) for k in ref}
    if ref["position_z"] is None:
        assert np.isnan(got.pop("position_z"))
        ref.pop("position_z")
    assert got == ref
    assert counts["Invalid value for VR UI"] == uid_warnings


def _set(ds, **values):
    for k, v in values.items():
        setattr(ds, k, v)


def _add_sequence(ds):
    item = pydicom.Dataset()
    item.CodeValue = "113691"
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True


def _rewrite_as_un(path, tag_bytes):
    """Re-encode one short-form explicit VR element as VR UN (2 reserved bytes, 4-byte length)."""
    data = open(path, "rb").read()
    i = data.index(tag_bytes)
    length = int.from_bytes(data[i + 6:i + 8], "little")
    element = tag_bytes + b"UN\0\0" + length.to_bytes(4, "little") + data[i + 8:i + 8 + length]
    open(path, "wb").write(data[:i] + element + data[i + 8 + length:])


def test_big_endian_header_falls_back_to_pydicom():
    # Explicit VR big endian: the raw bytes are not little-endian, pydicom converts them (Modality MR here).
    with pytest.raises(RejectError) as exc:
        read_header(pydicom_ct_path("MR_small_bigendian.dcm"), "salt", Counter())
    assert exc.value.reason == "not_ct" and "'MR'" in exc.value.message


def test_header_cut_anywhere_is_a_reject_never_a_crash(tmp_path, real_series):
    data = open(sorted(glob.glob(os.path.join(real_series, "*.dcm")))[0], "rb").read()
    path = str(tmp_path / "cut.dcm")
    for cut in list(range(0, 1200, 5)) + [len(data) - 1]:
        with open(path, "wb") as fp:
            fp.write(data[:cut])
        with pytest.raises(RejectError) as exc:
            read_header(path, "salt", Counter())
        assert exc.value.reason in ("not_dicom", "truncated", "no_pixel_data"), (cut, exc.value.reason)
