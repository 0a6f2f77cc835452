import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from ichprep.synth import SynthConfig, write_corpus

DATA = Path(__file__).resolve().parent / "data"  # vendored: see tests/data/README.md


class _CurrentStderr(logging.StreamHandler):
    """A root handler that writes to whatever ``sys.stderr`` is when a record comes (pytest swaps it per test).
    TensorFlow, imported by whichever test comes first, gives its logger a handler bound to the ``sys.stderr`` of
    that moment -- a capture closed when that test ends, so every later TensorFlow warning printed '--- Logging
    error ---' and a traceback into some other test's stderr -- unless the root logger has a handler already."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the live stream is always used
        pass


def _not_an_unclosed_aiohttp_session(record: logging.LogRecord) -> bool:
    """s3fs instances of the S3 tests keep aiohttp sessions that asyncio reports ('Unclosed client session') when
    the garbage collector finds them: during whichever test comes next, as a stray stderr line."""
    return not (record.name == "asyncio" and record.getMessage().startswith(("Unclosed client session",
                                                                              "Unclosed connector")))


_handler = _CurrentStderr()
_handler.setLevel(logging.WARNING)
_handler.addFilter(_not_an_unclosed_aiohttp_session)
logging.getLogger().addHandler(_handler)
REAL_SERIES_GZ = DATA / "rsna-test-series"
REPORT = DATA / "report-table-3.1.txt"

# CT images shipped with pydicom's test data (pydicom-data), with their transfer syntaxes.
PYDICOM_CT = [
    "CT_small.dcm",  # Explicit VR LE, 128x128, 16-bit signed
    "693_UNCR.dcm",  # Explicit VR LE, 512x512, 14-bit
    "693_J2KR.dcm",  # JPEG 2000 lossless
    "693_J2KI.dcm",  # JPEG 2000 lossy
    "bad_sequence.dcm",  # JPEG lossless (process 14, SV1), 12-bit unsigned
    "J2K_pixelrep_mismatch.dcm",  # JPEG 2000 lossless, pixel representation differs from the codestream
]


def pydicom_ct_path(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:  # a missing fixture fails, it never passes silently
        raise FileNotFoundError(f"pydicom test file {name} not found: install the 'pydicom-data' package")
    return path


def reference_hu(path) -> np.ndarray:
    """HU from pydicom's own functions: pixel_array then apply_modality_lut (PS3.3 C.11.1), after the
    RSNA 12-bit fix where it applies (docs/design.md)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        if ds.BitsStored == 12 and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) > -100:
            arr = arr.astype(np.int64) + 1000
            arr[arr >= 4096] -= 4096
            ds.RescaleIntercept = -1000
        return apply_modality_lut(arr, ds).astype(np.float64)


def first_value(v):
    return float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)


def reference_channels(path, windows) -> np.ndarray:
    """(H, W, C) float16: a plain numpy clip-and-scale of reference_hu for each window."""
    hu = reference_hu(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    out = []
    for w in windows:
        if w.kind == "full":
            lo, hi = hu.min(), hu.max()
        elif w.kind == "default":
            c, wd = first_value(ds.WindowCenter), first_value(ds.WindowWidth)
            lo, hi = c - wd / 2, c + wd / 2
        else:
            lo, hi = w.center - w.width / 2, w.center + w.width / 2
        out.append((np.clip(hu, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(hu))
    return np.stack(out, axis=-1).astype(np.float16)


# float16 spacing just below 1.0 is 2**-11: the fused float32 kernel and the float64 reference may
# round to neighbouring float16 values, never further apart.
F16_TOL = 2.0**-11 + 1e-7


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = write_corpus(out, SynthConfig(studies=6, slices=10, seed=3, compressed_fraction=0.25,
                                            hemorrhage_fraction=0.8))
    return summary


@pytest.fixture(scope="session")
def brain_store(synth_corpus, tmp_path_factory):
    """The synthetic corpus built in-process into a one-window (brain) store of 8-slice shards."""
    from ichprep.build import BuildConfig, build
    from ichprep.windows import parse_windows

    url = str(tmp_path_factory.mktemp("brain") / "brain.zarr")
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=url, labels=synth_corpus["labels"],
                      windows=parse_windows("brain"), preset=None, workers=0, salt="s", shard_slices=8))
    return url


@pytest.fixture(scope="session")
def real_series(tmp_path_factory):
    """The 32 vendored real RSNA slices, decompressed into a session folder of .dcm files."""
    import gzip

    files = sorted(REAL_SERIES_GZ.glob("*.dcm.gz"))
    if len(files) != 32:
        raise FileNotFoundError(f"expected the 32 real test slices in {REAL_SERIES_GZ}, found {len(files)}")
    out = tmp_path_factory.mktemp("rsna-test-series")
    for f in files:
        (out / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    return str(out)


@pytest.fixture(scope="session", autouse=True)
def private_salt_file(tmp_path_factory):
    """Builds without --salt use a salt file made for this test session, never the user's own."""
    import os

    path = tmp_path_factory.mktemp("config") / "ichprep-salt"
    old = {k: os.environ.pop(k, None) for k in ("ICHPREP_SALT", "ICHPREP_SALT_FILE")}
    os.environ["ICHPREP_SALT_FILE"] = str(path)
    yield path
    os.environ.pop("ICHPREP_SALT_FILE", None)
    for k, v in old.items():
        if v is not None:
            os.environ[k] = v


def default_signals() -> None:
    """``preexec_fn`` for a child a test will signal: SIGINT back to its default disposition. A shell starts
    background jobs (``cmd &``, nohup, cron-like runners) with SIGINT ignored, children inherit that, and a
    process that starts with SIGINT ignored keeps ignoring it, as it should; the test's child must not
    depend on how the suite was started."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


def nonempty_split_seed(url, fractions=SPLIT_FRACTIONS, by="patient") -> int:
    """The first seed whose hash-bucket splits of the store at ``url`` are all non-empty: the test corpora
    hold five patients, so some seeds leave a split empty (which is what hash buckets do)."""
    from ichtrain.data import StoreStream, split_rows

    s = StoreStream(url, fractions=fractions, by=by)
    for seed in range(1000):
        if all(v.size for v in split_rows(s.groups, s.usable, fractions, seed).values()):
            return seed
    raise AssertionError(f"no seed below 1000 gives three non-empty splits of {url}")


@pytest.fixture(scope="session")
def brain_seed(brain_store) -> int:
    return nonempty_split_seed(brain_store)


@pytest.fixture(scope="session")
def cv_dir(brain_store, tmp_path_factory):
    """A 3-fold cv folder of the brain store (1 epoch a fold, --tta flip); tests may add files, never change any."""
    from ichtrain.cli import main

    out = tmp_path_factory.mktemp("cv") / "cv"
    assert main(["cv", brain_store, "--folds", "3", "--out", str(out), "--image-size", "32", "--epochs", "1",
                 "--epoch-size", "16", "--batch-size", "8", "--tta", "flip", "--quiet"]) == 0
    return out


@pytest.fixture
def moto(monkeypatch):
    """A real S3 API on localhost (moto's server) with one bucket, ``state["url"]``; credentials and endpoint
    reach botocore (and every process started from here) the way a user's would: AWS_* variables.
    ``state["stop"]()`` / ``state["start"]()`` take the server down and bring it back on the same port
    (its buckets live in this process, so they survive)."""
    import contextlib

    import boto3
    import s3fs
    from moto import server as moto_server  # the test extra: moto[server], s3fs

    state = {"server": moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)}
    state["server"].start()
    host, port = state["server"].get_host_and_port()
    for k, v in dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                     AWS_ENDPOINT_URL=f"http://{host}:{port}").items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="ichprep-test")
    s3fs.S3FileSystem.clear_instance_cache()  # instances cached by earlier tests point at their servers

    def start():
        state["server"] = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        state["server"].start()

    state.update(url="s3://ichprep-test", stop=lambda: state["server"].stop(), start=start)
    yield state
    with contextlib.suppress(Exception):
        state["server"].stop()
    s3fs.S3FileSystem.clear_instance_cache()  # nothing later may reach this server through a cached instance
