"""What the scanner adds to a rendered phantom slice (``ichprep synth`` version 2): the 2x upsampling of the
render grid to 512x512, and noise with the texture of filtered back-projection (not white). Kernels take
arrays and scalars only; the Python functions plan and validate.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["finish_slice", "noise_bank"]


@njit(cache=True, nogil=True, inline="always")
def _across(render, left, right, t, y, dst):
    """Source row y interpolated along x into ``dst``."""
    for j in range(dst.shape[0]):
        dst[j] = render[y, left[j]] * (1 - t[j]) + render[y, right[j]] * t[j]


@njit(cache=True, nogil=True)
def _finish_kernel(render, noise, oy, ox, flip, sd, out):
    """Upsample ``render`` 2x (bilinear, pixel centres aligned) into ``out`` and add ``sd`` x a window of the
    noise bank at (oy, ox), flipped left-right when ``flip``. Each source row is interpolated along x once, into
    one of two rows kept (output rows use source rows in order, two at a time)."""
    n = out.shape[0]
    m = render.shape[0]
    left, right = np.empty(n, np.int64), np.empty(n, np.int64)
    t = np.empty(n, np.float64)
    for j in range(n):
        fx = (j + 0.5) / 2.0 - 0.5
        ix = int(math.floor(fx))
        t[j] = fx - ix
        left[j], right[j] = max(ix, 0), min(ix + 1, m - 1)
    kept = np.empty((2, n), np.float64)  # source rows kept_y[0] and kept_y[1], interpolated along x
    kept_y = np.full(2, -1, np.int64)
    for i in range(n):
        fy = (i + 0.5) / 2.0 - 0.5
        iy = int(math.floor(fy))
        ty = fy - iy
        y0, y1 = max(iy, 0), min(iy + 1, m - 1)
        for y in (y0, y1):
            if kept_y[0] != y and kept_y[1] != y:
                slot = 0 if kept_y[0] != y0 and kept_y[0] != y1 else 1
                _across(render, left, right, t, y, kept[slot])
                kept_y[slot] = y
        a0 = kept[0] if kept_y[0] == y0 else kept[1]
        a1 = kept[0] if kept_y[0] == y1 else kept[1]
        dst = out[i]
        if flip:  # a reversed view of the bank's row, not a test per pixel
            row = noise[oy + i, ox:ox + n][::-1]
        else:
            row = noise[oy + i, ox:ox + n]
        for j in range(n):
            dst[j] = a0[j] * (1 - ty) + a1[j] * ty + sd * row[j]


def finish_slice(render: np.ndarray, noise: np.ndarray, rng: np.random.Generator, sd: float) -> np.ndarray:
    """The 512x512 slice: ``render`` (256x256) upsampled, plus ``sd`` HU of the bank's textured noise."""
    n = render.shape[0] * 2
    out = np.empty((n, n), np.float32)
    oy, ox = (int(v) for v in rng.integers(0, noise.shape[0] - n + 1, 2))
    _finish_kernel(np.ascontiguousarray(render, np.float32), noise, oy, ox, bool(rng.random() < 0.5),
                   np.float32(sd), out)
    return out


def noise_bank(rng: np.random.Generator, size: int = 768, peak: float = 0.14, width: float = 0.09) -> np.ndarray:
    """Unit-variance CT-like noise (size x size float32): white noise shaped in frequency by a ramp times a
    Gaussian roll-off (filtered back-projection's noise power spectrum), peaking near ``peak`` cycles/pixel."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    fr = np.hypot(f[:, None], f[None, :])
    shape = fr * np.exp(-0.5 * ((fr - peak) / width) ** 2)
    noise = np.fft.ifft2(np.fft.fft2(white) * np.sqrt(shape)).real
    return (noise / noise.std()).astype(np.float32)
