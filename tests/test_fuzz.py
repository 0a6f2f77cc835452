"""Fuzzing the promises (issue 32): DICOM headers and CLI values drawn by Hypothesis.

For any header a build exits 0, 1 or 2 with at most one line on stderr, raises no warning a user would see,
never prints a traceback, holds at most 4x the memory (peak RSS) of a build of a normal file, and a store it
marks complete passes ``verify --source``. For any fit flag value,
fit exits 0 or 2 with one line and leaves no run folder behind a refusal. The default run draws a bounded
number of examples; ``-m slow`` draws 2,000 of each.
"""

import importlib
import io
import os
import shutil
import tempfile
import threading
import warnings
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ichprep.cli import main as ichprep

_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
FAST, SLOW = settings(max_examples=30, **_SETTINGS), settings(max_examples=2000, **_SETTINGS)

_NUMBERS = st.one_of(st.sampled_from(["0", "1", "-1024", "1e37", "-1e37", "nan", "inf", "1e-30", "40", "80",
                                      "abc", "", "1\\2", "00040\\00080"]),
                     st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f)[:16]))
_HEADERS = st.fixed_dictionaries({
    "Rows": st.sampled_from([0, 1, 16, 511, 512, 513, 65535]),
    "Columns": st.sampled_from([0, 1, 16, 512, 700]),
    "BitsAllocated": st.sampled_from([8, 16, 32]),
    "BitsStored": st.integers(0, 17),
    "PixelRepresentation": st.integers(0, 2),
    "RescaleSlope": _NUMBERS,
    "RescaleIntercept": _NUMBERS,
    "WindowCenter": _NUMBERS,
    "WindowWidth": _NUMBERS,
    "SOPInstanceUID": st.one_of(st.text(max_size=80), st.sampled_from(["ID_1a2b", "1.2.3", "=1+1", "ID_a,1\n="])),
    "syntax": st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]),
    "pixels": st.sampled_from(["match", "short", "none"]),
})


def _write(template: str, h: dict, path: str) -> bool:
    """The template slice with the drawn header; False where pydicom itself cannot write it (not a case)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(template)
        try:
            for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
                setattr(ds, kw, h[kw])
            for kw in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
                setattr(ds, kw, h[kw])
            ds.SOPInstanceUID = h["SOPInstanceUID"]
            n = h["Rows"] * h["Columns"] * max(1, h["BitsAllocated"] // 8)
            if h["pixels"] == "none":
                del ds.PixelData
            elif n <= 4_000_000:
                ds.PixelData = (np.arange(n // 2 + 1, dtype=np.uint16).tobytes())[: n if h["pixels"] == "match" else n // 3]
            ds.file_meta.TransferSyntaxUID = h["syntax"]
            ds.save_as(path, enforce_file_format=True)
        except Exception:  # noqa: BLE001 -- pydicom refused to write these values: nothing to test
            return False
    return True


class _PeakRSS:
    """This process's peak resident memory (bytes) while the block runs, sampled every millisecond (Linux:
    /proc/self/statm; elsewhere ``peak`` stays None)."""

    def __enter__(self):
        self.peak, self._stop = None, threading.Event()
        if os.path.exists("/proc/self/statm"):
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        if self.peak is not None:
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        return False


def _build(src: str, store: str):
    with _PeakRSS() as rss:
        result = _run(["build", src, "--out", store, "--preset", "rnn", "--workers", "0", "--quiet", "--salt", "s"])
    return result, rss.peak


_NORMAL_PEAK = {}


def _normal_peak(template: str) -> int | None:
    """Peak RSS of this process building the unmodified template (beside itself, as the fuzzed builds do)."""
    if template not in _NORMAL_PEAK:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "src")
            os.mkdir(src)
            shutil.copy(template, os.path.join(src, "slice.dcm"))
            shutil.copy(template, os.path.join(src, "good.dcm"))
            peaks = [_build(src, os.path.join(tmp, f"s{k}.zarr"))[1] for k in range(2)]
        _NORMAL_PEAK[template] = None if None in peaks else max(peaks)
    return _NORMAL_PEAK[template]


def _run(argv):
    """ichprep in-process: exit code, stdout, stderr, and the warnings it raised (any would reach a user)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stdout(out), redirect_stderr(err):
        warnings.simplefilter("always")
        code = ichprep(argv)
    return code, out.getvalue(), err.getvalue(), [str(w.message)[:200] for w in caught]


def _check_header(template: str, h: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.mkdir(src)
        if not _write(template, h, os.path.join(src, "slice.dcm")):
            return
        shutil.copy(template, os.path.join(src, "good.dcm"))  # a usable slice beside it: the build goes on
        store = os.path.join(tmp, "s.zarr")
        normal = _normal_peak(template)
        (code, _, err, caught), peak = _build(src, store)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code in (0, 1, 2) and len(lines) <= 1 and "Traceback" not in err, (h, code, err)
        assert not caught, (h, caught)
        if normal is not None:
            assert peak <= 4 * normal, (h, f"peak RSS {peak / 2**20:.0f} MiB, a normal build's {normal / 2**20:.0f} MiB")
        if code == 0:
            code, out, err, caught = _run(["verify", store, "--source", src, "--sample", "2", "--quiet"])
            assert code == 0 and not caught, (h, out, err, caught)


@FAST
@given(h=_HEADERS)
def test_any_header_is_a_store_that_verifies_or_a_reject_never_a_crash(real_series, h):
    _check_header(os.path.join(real_series, sorted(os.listdir(real_series))[0]), h)


@pytest.mark.slow
@SLOW
@given(h=_HEADERS)
def test_any_header_2000_examples(real_series, h):
    _check_header(os.path.join(real_series, sorted(os.listdir(real_series))[0]), h)


_FLAGS = st.sampled_from(["--epochs", "--batch-size", "--image-size", "--l2", "--lr", "--alpha", "--seed",
                          "--epoch-size", "--neighbours", "--augment", "--freeze-epochs", "--split"])
_VALUES = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "1e400", "abc", "", "100000", "0.5", "1,2",
                                     "flip=2", "rotate=-1", "0.8,0.1,0.1", "nan,0.1,0.1"]),
                    st.integers(-5, 5).map(str), st.floats(allow_nan=True).map(repr))


@pytest.fixture(scope="module")
def keras_loaded():
    """TensorFlow raises the recursion limit when imported: before Hypothesis runs, not during an example."""
    import keras  # noqa: F401


def _stopping_early(callbacks):
    """fit's callbacks plus one that stops training after two batches: the fuzz checks what fit accepts and
    refuses, not how long a legitimate long run (``--epochs 100000``, ``--epoch-size 100000``) takes."""
    import keras

    class _StopSoon(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch >= 1:
                self.model.stop_training = True

    def wrapped(*args, **kwargs):
        return callbacks(*args, **kwargs) + [_StopSoon()]
    return wrapped


def _check_fit_flag(brain_store: str, flag: str, value: str) -> None:
    import keras

    from ichtrain.cli import main as ichtrain

    fit_module = importlib.import_module("ichtrain.fit")  # the package exports a function of the same name

    keras.backend.clear_session()  # each example's fit starts from a fresh graph: 2,000 in one process stay flat
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(fit_module, "_callbacks", _stopping_early(fit_module._callbacks)):
        run = os.path.join(tmp, "run")
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = ichtrain(["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "4",
                             "--epoch-size", "8", "--epochs", "1", "--split", "0.6,0.2,0.2", "--quiet", flag, value])
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        assert code in (0, 2) and "Traceback" not in err.getvalue(), (flag, value, code, err.getvalue())
        if code == 2:  # refused before any run folder exists, or a run that diverged (it names the fix)
            assert len(lines) == 1, (flag, value, err.getvalue())
            assert not os.path.exists(run) or "Training diverged" in lines[0], (flag, value, err.getvalue())


@settings(max_examples=6, **_SETTINGS)  # and two explicit ones; -m slow draws 2,000
@given(flag=_FLAGS, value=_VALUES)
@example(flag="--epochs", value="100000")  # a legitimate long run: accepted (the harness stops it early)
@example(flag="--alpha", value="2")  # found by the 2,000: accepted by the config, refused by the sampler
def test_any_fit_flag_value_is_a_run_or_one_line_exit_2_without_a_folder(keras_loaded, brain_store, flag, value):
    _check_fit_flag(brain_store, flag, value)


@pytest.mark.slow
@SLOW
@given(flag=_FLAGS, value=_VALUES)
def test_any_fit_flag_value_2000_examples(keras_loaded, brain_store, flag, value):
    _check_fit_flag(brain_store, flag, value)
