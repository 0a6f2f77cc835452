"""Plain numpy pixel arithmetic shared by the build, the kernels and ``ichprep verify``: the RSNA 12-bit
fix, HU, size conforming, and reading first values of multi-valued tags. No I/O and no compiled code.
"""

from __future__ import annotations

import math

import numpy as np

from ichprep.errors import UsageError

__all__ = ["RSNA_FIX_OFFSET", "RSNA_FIX_MODULUS", "is_rsna_12bit_defect", "fix_rsna_12bit", "hu_float",
           "SIZE_POLICIES", "IMAGE_SIZE", "fit_size", "first_value"]

# The RSNA 12-bit defect (docs/design.md, the pixel path): two's-complement HU stored as unsigned 12-bit values with an
# intercept > -100. The fix: x = raw + 1000; x[x >= 4096] -= 4096; intercept = -1000.
RSNA_FIX_OFFSET = 1000
RSNA_FIX_MODULUS = 4096
SIZE_POLICIES = ("resize", "pad", "reject")
IMAGE_SIZE = 512  # every slice of a store is IMAGE_SIZE x IMAGE_SIZE (ichprep.store re-exports it)


def is_rsna_12bit_defect(bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    """The RSNA defect (docs/design.md): BitsStored 12, PixelRepresentation 0, RescaleIntercept > -100."""
    return bits_stored == 12 and pixel_representation == 0 and intercept > -100


def fix_rsna_12bit(raw: np.ndarray) -> np.ndarray:
    """The stored values of a defective slice, fixed (int64; pair with intercept -RSNA_FIX_OFFSET)."""
    x = np.asarray(raw).astype(np.int64) + RSNA_FIX_OFFSET
    x[x >= RSNA_FIX_MODULUS] -= RSNA_FIX_MODULUS
    return x


def hu_float(raw: np.ndarray, slope: float, intercept: float, fix12: bool) -> np.ndarray:
    """Plain numpy HU, float32: the 12-bit fix when asked, then the modality LUT (``intercept`` is the
    effective one, -RSNA_FIX_OFFSET after the fix). The kernels' reference, and the path of slices that
    need resizing or padding first."""
    x = (fix_rsna_12bit(raw) if fix12 else raw).astype(np.float32)
    return x * np.float32(slope) + np.float32(intercept)


def fit_size(img: np.ndarray, policy: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bring a 2-D float32 HU slice to ``size`` x ``size``.

    ``resize``: bilinear (pixel centres aligned, as ``align_corners=False``), keeps the whole field of
    view. ``pad``: centre pad with the slice's minimum HU, centre crop where larger.
    """
    h, w = img.shape
    if (h, w) == (size, size):
        return img
    if policy == "pad":
        out = np.full((size, size), img.min(), np.float32)
        sy, sx = max(0, (h - size) // 2), max(0, (w - size) // 2)  # source crop start
        dy, dx = max(0, (size - h) // 2), max(0, (size - w) // 2)  # destination start
        ch, cw = min(h, size), min(w, size)
        out[dy:dy + ch, dx:dx + cw] = img[sy:sy + ch, sx:sx + cw]
        return out
    if policy == "resize":
        def coords(n_in):
            c = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
            c = np.clip(c, 0, n_in - 1)
            i0 = np.floor(c).astype(np.intp)
            i1 = np.minimum(i0 + 1, n_in - 1)
            return i0, i1, (c - i0).astype(np.float32)
        y0, y1, fy = coords(h)
        x0, x1, fx = coords(w)
        rows = img[y0] * (1 - fy)[:, None] + img[y1] * fy[:, None]
        return (rows[:, x0] * (1 - fx) + rows[:, x1] * fx).astype(np.float32)
    raise UsageError(f"Expected a size policy in {SIZE_POLICIES}. Received: {policy!r}")


def first_value(value) -> float | None:
    """First value of a possibly multi-valued DS/IS element, as float (None if absent or not finite)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
