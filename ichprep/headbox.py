"""The head's box in a slice: where the brain is, so that a reader can crop to it before downscaling.

At 128-256 px a whole 512x512 slice spends most of its pixels on air, the table and the headrest. The box
is the bounding box of the largest connected region of tissue, found on a coarse grid (blocks of 8x8
pixels, ~4 mm): tissue where a block's mean is above a level, after a 3x3 opening that cuts the thin arcs of
the headrest and table off the head, the regions 4-connected (scipy.ndimage's binary_opening and label, which
the tests hold the compiled kernel to). A slice without tissue gets the whole image.

``ichprep build`` stores each slice's box on its HU (:func:`hu_head_box`: tissue above :data:`HU_TISSUE`,
skin, fat, brain and bone; air and the table's foam below), so a reader crops without finding it; on a store
from before (schema < 5) a reader finds it on the windowed slice (:func:`head_box`, level 0.1 of a window).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ichprep.pixels import RSNA_FIX_MODULUS, RSNA_FIX_OFFSET

__all__ = ["BLOCK", "HU_TISSUE", "head_box", "hu_head_box", "block_means", "square_box"]

BLOCK = 8
HU_TISSUE = -300.0  # a block mean above this is tissue: fat (-100) and skin count, air (-1000) and foam do not


@njit(cache=True, nogil=True)
def _block_means_kernel(img, block, out):
    n_rows, n_cols = out.shape
    for bi in range(n_rows):
        for bj in range(n_cols):
            s = 0.0
            for i in range(bi * block, (bi + 1) * block):
                for j in range(bj * block, (bj + 1) * block):
                    s += img[i, j]
            out[bi, bj] = s / (block * block)


def block_means(img: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Means of ``block`` x ``block`` tiles of a 2-D slice (float32; the edge that does not fill a tile is left out)."""
    img = np.ascontiguousarray(img)
    if img.ndim != 2:
        raise ValueError(f"Expected a 2-D slice. Received: shape={img.shape}")
    out = np.empty((img.shape[0] // block, img.shape[1] // block), np.float32)
    _block_means_kernel(img, block, out)
    return out


@njit(cache=True, nogil=True)
def _hu_tissue_kernel(raw, fix12, slope, intercept, level, block, columns, tissue):
    """``tissue[bi, bj]`` = 1 where a block's mean HU, ``slope`` x its mean raw value (after the RSNA 12-bit
    fix when ``fix12``) + ``intercept``, is above ``level``. Each band of ``block`` rows is summed per column
    into ``columns`` (contiguous adds, which LLVM vectorises; int64 for integer raw values, so exact, float64
    for float ones), then in groups of ``block`` columns."""
    n_rows, n_cols = tissue.shape
    width = n_cols * block
    for bi in range(n_rows):
        columns[:] = 0
        for i in range(bi * block, (bi + 1) * block):
            if fix12:
                for j in range(width):
                    w = np.int64(raw[i, j]) + RSNA_FIX_OFFSET
                    columns[j] += w - RSNA_FIX_MODULUS if w >= RSNA_FIX_MODULUS else w
            else:
                for j in range(width):
                    columns[j] += raw[i, j]
        for bj in range(n_cols):
            s = columns[bj * block]
            for j in range(bj * block + 1, (bj + 1) * block):
                s += columns[j]
            tissue[bi, bj] = 1 if slope * (s / (block * block)) + intercept > level else 0


@njit(cache=True, nogil=True)
def _open3(tissue):
    """The 3x3 binary opening of a uint8 grid, outside the grid empty: erosion then dilation, each by a row
    segment then a column segment (the square is their product, so the result is the square's)."""
    n, m = tissue.shape
    a = np.zeros((n, m), np.uint8)
    b = np.zeros((n, m), np.uint8)
    for i in range(n):  # erosion along rows, then along columns (a border cell has an empty neighbour)
        for j in range(1, m - 1):
            a[i, j] = tissue[i, j - 1] & tissue[i, j] & tissue[i, j + 1]
    for i in range(1, n - 1):
        for j in range(m):
            b[i, j] = a[i - 1, j] & a[i, j] & a[i + 1, j]
    for i in range(n):  # dilation along rows, then along columns
        for j in range(m):
            a[i, j] = b[i, j] | (b[i, j - 1] if j > 0 else 0) | (b[i, j + 1] if j < m - 1 else 0)
    for i in range(n):
        for j in range(m):
            b[i, j] = a[i, j] | (a[i - 1, j] if i > 0 else 0) | (a[i + 1, j] if i < n - 1 else 0)
    return b


@njit(cache=True, nogil=True)
def _largest_region_kernel(tissue, box):
    """``box`` = (row0, col0, row1, col1), end-exclusive, of the largest 4-connected region of ``tissue``
    (uint8) after a 3x3 binary opening (:func:`_open3`), the first such region in raster order on a tie;
    (0, 0, 0, 0) when there is none."""
    n, m = tissue.shape
    opened = _open3(tissue)
    labels = np.zeros((n, m), np.int32)
    stack = np.empty(n * m, np.int64)
    best = 0
    box[0], box[1], box[2], box[3] = 0, 0, 0, 0
    label = 0
    for i in range(n):
        for j in range(m):
            if opened[i, j] == 0 or labels[i, j] != 0:
                continue
            label += 1
            labels[i, j] = label
            top, left, bottom, right, size, sp = i, j, i, j, 0, 0
            stack[sp] = i * m + j
            sp += 1
            while sp > 0:
                sp -= 1
                a, b = stack[sp] // m, stack[sp] % m
                size += 1
                top, bottom, left, right = min(top, a), max(bottom, a), min(left, b), max(right, b)
                for da, db in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    c, d = a + da, b + db
                    if 0 <= c < n and 0 <= d < m and opened[c, d] == 1 and labels[c, d] == 0:
                        labels[c, d] = label
                        stack[sp] = c * m + d
                        sp += 1
            if size > best:
                best = size
                box[0], box[1], box[2], box[3] = top, left, bottom + 1, right + 1


def _box_of(tissue: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel box of the largest region of a uint8 block grid of ``tissue``; the whole slice without one."""
    box = np.zeros(4, np.int64)
    _largest_region_kernel(tissue, box)
    h, w = shape
    if box[2] == 0:
        return 0, 0, h, w
    return (int(box[0]) * BLOCK, int(box[1]) * BLOCK, min(h, int(box[2]) * BLOCK), min(w, int(box[3]) * BLOCK))


def head_box(img: np.ndarray, level: float) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive pixel bounds of the largest tissue region of a 2-D slice (block means
    above ``level``); the whole slice where it holds none."""
    return _box_of((block_means(img) > level).astype(np.uint8), img.shape)


def hu_head_box(raw: np.ndarray, slope: float, intercept: float, fix12: bool) -> tuple[int, int, int, int]:
    """:func:`head_box` of a raw slice's HU at :data:`HU_TISSUE`: the box ``ichprep build`` stores. A block's
    mean HU is ``slope`` x its mean raw value (after the 12-bit fix) + ``intercept``, the raw values summed
    exactly (integers) or in float64."""
    raw = np.ascontiguousarray(raw)
    if raw.ndim != 2 or raw.dtype.kind not in "iuf":
        raise ValueError(f"Expected a 2-D integer or float slice. Received: {raw.dtype} {raw.shape}")
    integer = raw.dtype.kind in "iu"
    tissue = np.empty((raw.shape[0] // BLOCK, raw.shape[1] // BLOCK), np.uint8)
    columns = np.empty(tissue.shape[1] * BLOCK, np.int64 if integer else np.float64)
    _hu_tissue_kernel(raw, bool(fix12) and integer, float(slope), float(intercept), HU_TISSUE, BLOCK, columns, tissue)
    return _box_of(tissue, raw.shape)


def square_box(box: tuple[int, int, int, int], shape: tuple[int, int], margin: float = 0.08) -> np.ndarray:
    """A square around ``box`` with ``margin`` of its side on each side (the aspect kept, so nothing is
    stretched), as normalised (y0, x0, y1, x1) of an image of ``shape`` (may reach past its edges)."""
    y0, x0, y1, x1 = box
    side = max(y1 - y0, x1 - x0) * (1 + 2 * margin)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    h, w = shape
    # crop_and_resize's normalised coordinates: 0 and 1 are the centres of the first and last pixel
    top, left, bottom, right = cy - side / 2, cx - side / 2, cy + side / 2 - 1, cx + side / 2 - 1
    return np.array([top / (h - 1), left / (w - 1), bottom / (h - 1), right / (w - 1)], np.float32)
