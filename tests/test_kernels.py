import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from ichprep.kernels import channel_params, float32_to_float16, window_slice
from ichprep.windows import WINDOW_TABLE, Window, parse_windows


def test_float16_conversion_matches_numpy_on_random_bit_patterns():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    with np.errstate(all="ignore"):
        ref = x.astype(np.float16)
    got = float32_to_float16(x)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])


@settings(max_examples=300, deadline=None)
@given(hst.floats(width=32, allow_nan=False))
def test_float16_conversion_matches_numpy_property(v):
    x = np.array([v], np.float32)
    with np.errstate(all="ignore"):
        assert float32_to_float16(x).view(np.uint16)[0] == x.astype(np.float16).view(np.uint16)[0]


def _numpy_reference(raw, slope, intercept, fix12, windows, wc=None, ww=None):
    x = raw.astype(np.float64)
    if fix12:
        x = x + 1000
        x[x >= 4096] -= 4096
        intercept = -1000.0
    hu = x * slope + intercept
    chans = []
    for w in windows:
        if w.kind == "full":
            lo, hi = hu.min(), hu.max()
        elif w.kind == "default":
            lo, hi = wc - ww / 2, wc + ww / 2
        else:
            lo, hi = w.center - w.width / 2, w.center + w.width / 2
        chans.append((np.clip(hu, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(hu))
    return np.stack(chans, -1).astype(np.float16), hu.min(), hu.max()


def _check(raw, slope, intercept, fix12, windows, wc=40.0, ww=80.0):
    lo, scale, full = channel_params(windows, wc, ww)
    eff = -1000.0 if fix12 else intercept
    out, a, b = window_slice(raw, slope, eff, fix12, lo, scale, full)
    ref, rmin, rmax = _numpy_reference(raw, slope, intercept, fix12, windows, wc, ww)
    assert out.dtype == np.float16 and out.shape == raw.shape + (len(windows),)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    assert diff.max() <= 2.0**-11 + 1e-7, f"max diff {diff.max()}"
    assert a == pytest.approx(rmin, abs=1e-3) and b == pytest.approx(rmax, abs=1e-3)
    assert np.all((out >= 0) & (out <= 1))
    return out, ref


@pytest.mark.parametrize("dtype,lo,hi", [(np.int16, -2000, 3000), (np.uint16, 0, 4095)])
def test_window_slice_matches_numpy_all_ten_windows(dtype, lo, hi):
    rng = np.random.default_rng(1)
    raw = rng.integers(lo, hi, (64, 80)).astype(dtype)
    out, ref = _check(raw, 1.0, -1024.0, False, WINDOW_TABLE)
    # most values agree exactly, not just within a float16 step
    assert np.mean(out == ref) > 0.99


def _float32_reference(raw, slope, intercept, fix12, lo, scale, full):
    """The kernel's arithmetic in plain numpy float32, step by step: must agree bit for bit."""
    r = raw.astype(np.float32)
    if fix12:
        r = r + np.float32(1000)
        r = np.where(r >= np.float32(4096), r - np.float32(4096), r)
    hu = r * np.float32(slope) + np.float32(intercept)
    lo, scale = lo.astype(np.float32).copy(), scale.astype(np.float32).copy()
    a, b = hu.min(), hu.max()
    lo[full == 1] = a
    scale[full == 1] = np.float32(1) / (b - a) if b > a else np.float32(0)
    v = np.clip((hu[..., None] - lo) * scale, np.float32(0), np.float32(1))
    return v.astype(np.float16)


@pytest.mark.parametrize("preset", ["cnn", "rnn", "brain", "full,brain,bone"])
@pytest.mark.parametrize("fix12", [False, True])
def test_window_slice_is_bit_exact_to_float32_numpy(preset, fix12):
    """One channel takes its own vectorised loop, several the general one: both equal the float32 formula."""
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 4096, (48, 40)).astype(np.uint16)
    raw[0, :8] = [0, 1, 2, 4095, 3095, 3096, 999, 1000]  # around the 12-bit fix's wrap point
    lo, scale, full = channel_params(parse_windows(preset), 40, 80)
    intercept = -1000.0 if fix12 else -1024.0
    out, _, _ = window_slice(raw, 1.0, intercept, fix12, lo, scale, full)
    ref = _float32_reference(raw, 1.0, intercept, fix12, lo, scale, full)
    np.testing.assert_array_equal(out.view(np.uint16), ref.view(np.uint16))


def test_full_range_channel_is_per_slice_min_max():
    raw = np.array([[0, 100], [200, 400]], np.int16)
    out, _ = _check(raw, 1.0, -1024.0, False, (Window("full", "full"),))
    np.testing.assert_array_equal(out[..., 0], np.array([[0, 0.25], [0.5, 1.0]], np.float16))


def test_hand_computed_brain_window():
    # HU = raw - 1024; brain 40/80 -> [0, 80]; HU 40 -> 0.5, HU 20 -> 0.25, HU 100 -> 1, HU -5 -> 0
    raw = np.array([[1064, 1044, 1124, 1019]], np.int16)
    out, _, _ = window_slice(raw, 1.0, -1024.0, False, *channel_params(parse_windows("brain"), None, None))
    np.testing.assert_array_equal(out[0, :, 0], np.array([0.5, 0.25, 1.0, 0.0], np.float16))


def test_rsna_12bit_fix_and_non_integer_slope():
    rng = np.random.default_rng(2)
    hu_true = rng.integers(-1000, 3000, (32, 32))
    raw = np.where(hu_true < 0, hu_true + 4096, hu_true).astype(np.uint16)  # 12-bit two's complement
    out, ref = _check(raw, 1.0, 1.0, True, parse_windows("rnn")[1:] + (Window("full", "full"),))
    # after the fix, HU are the true values: brain window of HU 40 is 0.5
    raw2 = np.array([[40, 4096 - 960]], np.uint16)
    o, a, b = window_slice(raw2, 1.0, -1000.0, True, *channel_params(parse_windows("brain"), None, None))
    assert o[0, 0, 0] == np.float16(0.5) and a == -960 and b == 40
    _check(rng.integers(0, 4000, (16, 16)).astype(np.uint16), 0.5, -1024.5, False, WINDOW_TABLE)


def test_constant_slice_full_range_is_zero_not_nan():
    raw = np.full((8, 8), 1000, np.int16)
    out, a, b = window_slice(raw, 1.0, -1024.0, False, *channel_params((Window("full", "full"),), None, None))
    assert np.all(out == 0) and a == b == -24


def test_wrapper_validates():
    raw = np.zeros((4, 4), np.int16)
    lo, sc, fu = channel_params(parse_windows("brain"), None, None)
    with pytest.raises(ValueError, match="2-D"):
        window_slice(np.zeros(4, np.int16), 1.0, 0.0, False, lo, sc, fu)
    with pytest.raises(ValueError, match="finite"):
        window_slice(raw, float("nan"), 0.0, False, lo, sc, fu)
    with pytest.raises(ValueError, match="float16 out"):
        window_slice(raw, 1.0, 0.0, False, lo, sc, fu, out=np.zeros((4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="WindowCenter"):
        channel_params(parse_windows("rnn"), None, None)


def test_kernels_run_as_plain_python_with_jit_disabled():
    """The off switch: every kernel also runs uncompiled, and gives the same bits."""
    code = (
        "import numpy as np\n"
        "from ichprep.kernels import window_slice, channel_params, float32_to_float16\n"
        "from ichprep.windows import WINDOW_TABLE\n"
        "import numba; assert numba.config.DISABLE_JIT\n"
        "rng = np.random.default_rng(5)\n"
        "raw = rng.integers(0, 4095, (6, 7)).astype(np.uint16)\n"
        "o, a, b = window_slice(raw, 1.0, -1000.0, True, *channel_params(WINDOW_TABLE, 40, 80))\n"
        "x = rng.standard_normal(50).astype(np.float32)\n"
        "print(np.concatenate([o.view(np.uint16).ravel(), float32_to_float16(x).view(np.uint16)]).tolist())\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    plain = np.array(json.loads(res.stdout), np.uint16)
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 4095, (6, 7)).astype(np.uint16)
    o, _, _ = window_slice(raw, 1.0, -1000.0, True, *channel_params(WINDOW_TABLE, 40, 80))
    x = rng.standard_normal(50).astype(np.float32)
    jit = np.concatenate([o.view(np.uint16).ravel(), float32_to_float16(x).view(np.uint16)])
    np.testing.assert_array_equal(plain, jit)


BLAS_PROBE_SCRIPT = r"""
import importlib.util, sys
import numpy as np
from ichprep.kernels import channel_params, window_slice, without_blas_probe
from ichprep.windows import parse_windows

assert "numba.np.arraymath" not in sys.modules
with without_blas_probe():
    try:
        import scipy.linalg.cython_blas  # noqa: F401
        hidden = False
    except ImportError:
        hidden = True
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) * 40
    out, lo, hi = window_slice(raw, 1.0, -1024.0, False, *channel_params(parse_windows("brain"), None, None))
assert hidden, "scipy's BLAS module was importable inside the context"
assert sys.modules.get("scipy.linalg.cython_blas", "absent") is not None, "the hiding entry was left behind"
hu = raw.astype(np.float32) - 1024.0
ref = np.clip((hu - (40 - 40)) / 80, 0, 1).astype(np.float16)
assert np.array_equal(out[..., 0], ref) and (lo, hi) == (float(hu.min()), float(hu.max()))
if importlib.util.find_spec("scipy") is not None:  # SciPy works afterwards, and so does numba's np.dot
    import numba
    import scipy.linalg  # noqa: F401
    dot = numba.njit(lambda a, b: np.dot(a, b))
    assert np.allclose(dot(np.eye(3), np.arange(3.0)), np.arange(3.0))
print("ok")
"""


def test_first_kernel_load_without_the_blas_probe_is_correct_and_leaves_scipy_usable():
    res = subprocess.run([sys.executable, "-c", BLAS_PROBE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


@pytest.mark.parametrize("spec", ["rnn", "brain:40/80,subdural:80/200,bone:600/2800", "full,brain", "a:default,b:full",
                                  "brain,bone,full,subdural-min", "brain,bone,full,subdural-min,tissue-min,tissue-mid,grey-white"])
def test_windows_read_through_a_table_equal_the_kernel_on_every_pixel(spec, real_series):
    """ReadWindows' channel-last path windows each HU value of the slice once and copies the rows; the
    build's kernel run on every pixel is the reference: bit-identical, for real slices, a narrow range, one
    with every int16 value (the per-pixel path) and a constant slice, with fixed, full and default windows."""
    import pydicom

    from ichprep.readwindows import ReadWindows

    windows = parse_windows(spec)
    rng = np.random.default_rng(0)
    real = [np.rint(pydicom.pixels.apply_modality_lut(d.pixel_array, d)).astype(np.int16)
            for d in (pydicom.dcmread(os.path.join(real_series, f)) for f in sorted(os.listdir(real_series))[:3])]
    slices = real + [rng.integers(-40, 90, (64, 48)).astype(np.int16),
                     rng.integers(-32768, 32768, (64, 64)).astype(np.int16), np.full((32, 32), 17, np.int16)]
    reader = ReadWindows(windows, center=np.full(len(slices), 40.0), width=np.full(len(slices), 80.0))
    C = len(windows)
    for row, hu in enumerate(slices):
        got = np.empty(hu.shape + (C,), np.float16)
        reader(row, hu, got)
        want = window_slice(hu, 1.0, 0.0, False, *reader.params(row))[0]
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
        # into the middle slice's channels of a 3-slice sample (a strided view), the rest untouched
        wide = np.full(hu.shape + (3 * C,), -1.0, np.float16)
        reader(row, hu, wide[:, :, C:2 * C])
        np.testing.assert_array_equal(wide[:, :, C:2 * C].view(np.uint16), want.view(np.uint16))
        assert (wide[:, :, :C] == -1).all() and (wide[:, :, 2 * C:] == -1).all()
