"""Numba kernels for the pixel path, and the validating wrappers around them.

Kernels (``_<op>_kernel``) take contiguous arrays and scalars only, write into a preallocated ``out``,
never allocate, never raise and never validate. The public wrappers below check dtypes and shapes,
allocate when asked and call the kernel. Every kernel also runs as plain Python under
``NUMBA_DISABLE_JIT=1`` (tests do so), and each has a plain numpy reference in the tests.

Why a hand-written float32 -> float16 conversion: Numba has no float16 arithmetic on CPU, and
``ndarray.astype(np.float16)`` on a separate float32 buffer costs ~0.45 ms per 512x512 channel (more
than the windowing itself). Converting by bits inside the kernel, rounding to nearest even exactly as
numpy does, writes float16 straight into the shard buffer with no temporaries beyond one row.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np
from numba import njit

from ichprep.pixels import RSNA_FIX_MODULUS, RSNA_FIX_OFFSET  # numba freezes globals as constants

__all__ = [
    "without_blas_probe",
    "float32_to_float16",
    "window_slice",
    "channel_params",
    "hu_slice",
    "RSNA_FIX_OFFSET",
]


@contextlib.contextmanager
def without_blas_probe():
    """Context for a process's first Numba compile or cache load, skipping Numba's BLAS probe.

    That first load imports ``numba.np.arraymath``, which imports ``scipy.linalg`` (where SciPy is
    installed; numpy.f2py comes with it) only to learn whether BLAS can back ``np.correlate`` and
    ``np.convolve``; ichprep's kernels use neither. Measured here: the first kernel load 0.54-0.65 s ->
    0.18 s. Hiding SciPy's BLAS module for that moment makes Numba take its plain loops for those two
    functions in this process (``np.dot`` and ``np.linalg`` still import SciPy when they compile). Use
    it only in processes that are ichprep's own (the ``ichprep`` command and its workers)."""
    key = "scipy.linalg.cython_blas"
    if key in sys.modules or "numba.np.arraymath" in sys.modules:  # probed already, or SciPy loaded
        yield
        return
    sys.modules[key] = None  # ``import`` of a None entry raises ImportError: Numba's "no BLAS"
    try:
        yield
    finally:
        if key in sys.modules and sys.modules[key] is None:
            del sys.modules[key]


@njit(cache=True, nogil=True)
def _f16_bits(b):
    """IEEE binary32 bit pattern (as uint32 value in an int64) -> binary16 bits, round half to even."""
    sign = (b >> 16) & 0x8000
    exp = (b >> 23) & 0xFF
    mant = b & 0x7FFFFF
    if exp == 0xFF:  # inf or NaN; keep NaN quiet
        if mant != 0:
            return sign | 0x7E00
        return sign | 0x7C00
    e = exp - 112  # rebias 127 -> 15
    if e >= 31:
        return sign | 0x7C00
    if e <= 0:  # float16 subnormal or zero
        if e < -10:
            return sign
        mant = mant | 0x800000
        shift = 14 - e
        half = mant >> shift
        rem = mant & ((1 << shift) - 1)
        halfway = 1 << (shift - 1)
        if rem > halfway or (rem == halfway and (half & 1) == 1):
            half += 1
        return sign | half
    half = sign | (e << 10) | (mant >> 13)
    rem = mant & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (half & 1) == 1):
        half += 1  # a carry into the exponent is the correct rounding (up to inf)
    return half


@njit(cache=True, nogil=True)
def _float32_to_float16_kernel(src_bits, out_bits):
    for i in range(src_bits.shape[0]):
        out_bits[i] = _f16_bits(np.int64(src_bits[i]))


_F16_MIN_NORMAL = np.float32(2.0**-14)
_TWO24 = np.float32(2.0**24)
_TWO23 = np.float32(2.0**23)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@njit(cache=True, nogil=True, inline="always")
def _unit_f16_bits(v, b):
    """float16 bits of a float32 ``v`` in [0, 1] whose bit pattern is ``b`` (see the kernel below)."""
    normal = ((b + 0xFFF + ((b >> 13) & 1)) >> 13) - 0x1C000
    sub = np.int64((v * _TWO24 + _TWO23) - _TWO23)
    return normal if v >= _F16_MIN_NORMAL else sub


@njit(cache=True, nogil=True, inline="always")
def _pixel_hu(value, fix12, slope, intercept):
    """One raw value -> HU in float32 (the 12-bit fix first, when asked)."""
    r = np.float32(value)
    if fix12:
        r += np.float32(RSNA_FIX_OFFSET)
        if r >= np.float32(RSNA_FIX_MODULUS):
            r -= np.float32(RSNA_FIX_MODULUS)
    return r * slope + intercept


@njit(cache=True, nogil=True, inline="always")
def _hu_range(raw, fix12, slope, intercept):
    """(min, max) HU of a slice in float32: the range of the (fixed) raw values, mapped to HU. In the raw
    dtype, so LLVM vectorises the min/max reduction (a float64 conversion per pixel here cost as much as
    the window kernel's pass 2 for one channel)."""
    H = raw.shape[0]
    W = raw.shape[1]
    if fix12:  # 12-bit values: the fixed range lies in [0, 4095]
        rmin = np.int64(RSNA_FIX_MODULUS - 1)
        rmax = np.int64(0)
        for y in range(H):
            for x in range(W):
                r = np.int64(raw[y, x]) + RSNA_FIX_OFFSET
                if r >= RSNA_FIX_MODULUS:
                    r -= RSNA_FIX_MODULUS
                rmin = min(rmin, r)
                rmax = max(rmax, r)
    else:
        rmin = raw[0, 0]
        rmax = raw[0, 0]
        for y in range(H):
            for x in range(W):
                rmin = min(rmin, raw[y, x])
                rmax = max(rmax, raw[y, x])
    a = np.float32(rmin) * slope + intercept
    b = np.float32(rmax) * slope + intercept
    return min(a, b), max(a, b)


@njit(cache=True, nogil=True)
def _window_slice_kernel(raw, slope, intercept, fix12, params, is_full, out_bits, v_row, stats):
    """Rescale + 12-bit fix + windowing + [0, 1] scaling + float16, for one 2-D slice.

    raw: (H, W) integer or float array. params: (2, C) float32, rows lo and scale (= 1 / width);
    the kernel overwrites the columns of full-range channels with the slice's own HU min and
    1 / (max - min). is_full: (C,) uint8. out_bits: (H, W * C) uint16 (float16 bits, channel-last).
    v_row: (W * C,) float32 scratch. stats: (2,) float32 receives HU min and max.
    Each channel: v = clip((hu - lo) * scale, 0, 1).

    float16 by bits, for v in [0, 1] only (no sign, inf or NaN), branch-light so LLVM vectorises it:
    normal range, add 0xFFF plus the kept LSB (round half to even), drop 13 bits and rebias; subnormal
    range (k * 2**-24), v * 2**24 + 2**23 rounds k to nearest even in float32 arithmetic.
    """
    H = raw.shape[0]
    W = raw.shape[1]
    C = params.shape[1]
    hu_min, hu_max = _hu_range(raw, fix12, slope, intercept)  # pass 1
    stats[0] = hu_min
    stats[1] = hu_max
    full_scale = _ZERO
    if hu_max > hu_min:
        full_scale = _ONE / (hu_max - hu_min)
    for c in range(C):
        if is_full[c]:
            params[0, c] = hu_min
            params[1, c] = full_scale
    lo = params[0]
    scale = params[1]
    v_bits = v_row.view(np.uint32)
    if C == 1:
        # One channel (the cnn preset): the same arithmetic without the channel loop, which LLVM
        # vectorises (docs/performance.md); the general loop below cannot, its channel count is a run-time value.
        lo0 = lo[0]
        scale0 = scale[0]
        for y in range(H):
            for x in range(W):
                v_row[x] = min(max((_pixel_hu(raw[y, x], fix12, slope, intercept) - lo0) * scale0, _ZERO), _ONE)
            row = out_bits[y]
            for x in range(W):
                row[x] = _unit_f16_bits(v_row[x], np.int64(v_bits[x]))
        return
    # Pass 2: pixel-major (channels innermost) so stores into the channel-last row are sequential.
    for y in range(H):
        for x in range(W):
            hu = _pixel_hu(raw[y, x], fix12, slope, intercept)
            for c in range(C):
                v_row[x * C + c] = min(max((hu - lo[c]) * scale[c], _ZERO), _ONE)
        row = out_bits[y]
        for i in range(W * C):
            row[i] = _unit_f16_bits(v_row[i], np.int64(v_bits[i]))


_INT16_LO = np.float32(-32768.0)
_INT16_HI = np.float32(32767.0)


@njit(cache=True, nogil=True)
def _hu_slice_kernel(raw, slope, intercept, fix12, integer, out, stats):
    """Rescale + 12-bit fix -> HU rounded to nearest (half to even) and clipped to int16, for one 2-D
    slice. out: (H, W) int16. stats: (3,) float32 receives HU min and max (rounded, before clipping) and
    the number of pixels clipped. ``integer``: slope and intercept are integers, and the HU are computed
    in int64 (exact); otherwise in float32, then rounded.

    Pass 1 is the window kernel's range pass (rounding is monotonic, so the rounded range is the range's
    rounding); pass 2 clips only when that range leaves int16, so the common loop is a multiply-add LLVM
    vectorises."""
    H = raw.shape[0]
    W = raw.shape[1]
    lo, hi = _hu_range(raw, fix12, slope, intercept)
    hu_min = np.rint(lo)
    hu_max = np.rint(hi)
    stats[0] = hu_min
    stats[1] = hu_max
    inside = hu_min >= _INT16_LO and hu_max <= _INT16_HI
    clipped = 0
    islope = np.int64(slope)
    icept = np.int64(intercept)
    for y in range(H):
        row = out[y]
        if integer and inside and not fix12:
            for x in range(W):
                row[x] = np.int16(np.int64(raw[y, x]) * islope + icept)
        else:
            for x in range(W):
                if integer:
                    r = np.int64(raw[y, x])
                    if fix12:
                        r += RSNA_FIX_OFFSET
                        if r >= RSNA_FIX_MODULUS:
                            r -= RSNA_FIX_MODULUS
                    hu = np.float32(r * islope + icept)
                else:
                    hu = np.rint(_pixel_hu(raw[y, x], fix12, slope, intercept))
                if not inside:
                    clipped += (hu < _INT16_LO) + (hu > _INT16_HI)
                    hu = min(max(hu, _INT16_LO), _INT16_HI)
                row[x] = np.int16(hu)
    stats[2] = clipped


def float32_to_float16(values: np.ndarray) -> np.ndarray:
    """Convert float32 values to float16 with the kernel (same results as ``astype(np.float16)``)."""
    src = np.ascontiguousarray(values, dtype=np.float32).ravel()
    out = np.empty(src.shape, dtype=np.uint16)
    _float32_to_float16_kernel(src.view(np.uint32), out)
    return out.view(np.float16).reshape(np.shape(values))


def channel_params(windows, center: float | None, width: float | None):
    """Per-channel (lo, scale, is_full) arrays for one slice.

    ``center``/``width`` are the slice's own WindowCenter/WindowWidth (used by ``default`` channels).
    """
    C = len(windows)
    lo = np.zeros(C, np.float32)
    scale = np.zeros(C, np.float32)
    is_full = np.zeros(C, np.uint8)
    for i, w in enumerate(windows):
        if w.kind == "full":
            is_full[i] = 1
            continue
        if w.kind == "default":
            if center is None or width is None or not width > 0:
                raise ValueError(
                    f"Window {w.name!r} takes the file's WindowCenter/WindowWidth (0028,1050/1051), "
                    f"which are missing or invalid. Received: center={center!r}, width={width!r}"
                )
            c, wd = float(center), float(width)
        else:
            c, wd = w.center, w.width
        lo[i] = c - wd / 2.0
        scale[i] = 1.0 / wd
    return lo, scale, is_full


def window_slice(
    raw: np.ndarray,
    slope: float,
    intercept: float,
    fix12: bool,
    lo: np.ndarray,
    scale: np.ndarray,
    is_full: np.ndarray,
    out: np.ndarray | None = None,
    row_scratch: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float]:
    """Window one 2-D slice into float16 ``out`` of shape (H, W, C); returns (out, hu_min, hu_max).

    ``intercept`` is the effective one (-1000 when ``fix12``; see :mod:`ichprep.decode`).
    """
    if raw.ndim != 2:
        raise ValueError(f"Expected a 2-D raw slice, got shape {raw.shape}")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"Expected an integer or float raw slice, got dtype {raw.dtype}")
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"Expected finite rescale slope/intercept. Received: slope={slope!r}, intercept={intercept!r}")
    lo = np.ascontiguousarray(lo, np.float32)
    scale = np.ascontiguousarray(scale, np.float32)
    is_full = np.ascontiguousarray(is_full, np.uint8)
    if not (lo.shape == scale.shape == is_full.shape) or lo.ndim != 1 or lo.size == 0:
        raise ValueError(f"Expected lo, scale, is_full of one shape (C,), got {lo.shape}, {scale.shape}, {is_full.shape}")
    H, W = raw.shape
    C = lo.shape[0]
    if out is None:
        out = np.empty((H, W, C), np.float16)
    if out.shape != (H, W, C) or out.dtype != np.float16 or not out.flags.c_contiguous:
        raise ValueError(f"Expected a C-contiguous float16 out of shape {(H, W, C)}, got {out.dtype} {out.shape}")
    if row_scratch is None or row_scratch.shape != (W * C,) or row_scratch.dtype != np.float32:
        row_scratch = np.empty(W * C, np.float32)
    stats = np.empty(2, np.float32)
    _window_slice_kernel(
        np.ascontiguousarray(raw), np.float32(slope), np.float32(intercept), bool(fix12),
        np.stack([lo, scale]), is_full, out.view(np.uint16).reshape(H, W * C), row_scratch, stats,
    )
    return out, float(stats[0]), float(stats[1])


def hu_slice(raw: np.ndarray, slope: float, intercept: float, fix12: bool,
             out: np.ndarray | None = None) -> tuple[np.ndarray, float, float, int]:
    """Hounsfield units of one 2-D slice as int16 ``out`` (H, W): the modality LUT after the 12-bit fix,
    rounded to the nearest HU and clipped to int16 (never wrapped). Returns (out, hu_min, hu_max,
    pixels clipped); hu_min/hu_max are the rounded range before clipping."""
    if raw.ndim != 2:
        raise ValueError(f"Expected a 2-D raw slice, got shape {raw.shape}")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"Expected an integer or float raw slice, got dtype {raw.dtype}")
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"Expected finite rescale slope/intercept. Received: slope={slope!r}, intercept={intercept!r}")
    if out is None:
        out = np.empty(raw.shape, np.int16)
    if out.shape != raw.shape or out.dtype != np.int16 or not out.flags.c_contiguous:
        raise ValueError(f"Expected a C-contiguous int16 out of shape {raw.shape}, got {out.dtype} {out.shape}")
    stats = np.empty(3, np.float32)
    integer = float(slope).is_integer() and float(intercept).is_integer() and raw.dtype.kind in "iu"
    _hu_slice_kernel(np.ascontiguousarray(raw), np.float32(slope), np.float32(intercept), bool(fix12), integer, out,
                     stats)
    return out, float(stats[0]), float(stats[1]), int(stats[2])
