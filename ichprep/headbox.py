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
def _raw_block_sums_kernel(raw, fix12, block, columns, out):
    """Block sums of a raw slice's values (after the RSNA 12-bit fix when ``fix12``): each band of ``block``
    rows summed per column into ``columns`` (contiguous adds, which LLVM vectorises), then in groups of
    ``block`` columns. Exact for integer raw values (int64 sums), float64 sums for float ones."""
    n_rows, n_cols = out.shape
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
            out[bi, bj] = s


@njit(cache=True, nogil=True)
def _largest_region_kernel(tissue, opened, labels, stack, box):
    """``box`` = (row0, col0, row1, col1), end-exclusive, of the largest 4-connected region of ``tissue``
    (uint8) after a 3x3 binary opening (outside the grid counts as empty), the first such region in raster order
    on a tie; (0, 0, 0, 0) when there is none. ``opened``, ``labels``, ``stack``: scratch of the grid's size."""
    n, m = tissue.shape
    for i in range(n):  # erosion: a cell stays where its whole 3x3 neighbourhood is tissue
        for j in range(m):
            keep = 1
            for di in range(-1, 2):
                for dj in range(-1, 2):
                    a, b = i + di, j + dj
                    if a < 0 or a >= n or b < 0 or b >= m or tissue[a, b] == 0:
                        keep = 0
            labels[i, j] = keep
    for i in range(n):  # dilation of the eroded grid
        for j in range(m):
            hit = 0
            for di in range(-1, 2):
                for dj in range(-1, 2):
                    a, b = i + di, j + dj
                    if 0 <= a < n and 0 <= b < m and labels[a, b] == 1:
                        hit = 1
            opened[i, j] = hit
    labels[:, :] = 0
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


def _box_of(means: np.ndarray, level: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel box of the largest tissue region of a grid of block means; the whole slice without one."""
    tissue = (means > level).astype(np.uint8)
    n, m = tissue.shape
    box = np.zeros(4, np.int64)
    _largest_region_kernel(tissue, np.empty((n, m), np.uint8), np.empty((n, m), np.int32),
                           np.empty(n * m, np.int64), box)
    h, w = shape
    if box[2] == 0:
        return 0, 0, h, w
    return (int(box[0]) * BLOCK, int(box[1]) * BLOCK, min(h, int(box[2]) * BLOCK), min(w, int(box[3]) * BLOCK))


def head_box(img: np.ndarray, level: float) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive pixel bounds of the largest tissue region of a 2-D slice (block means
    above ``level``); the whole slice where it holds none."""
    return _box_of(block_means(img), level, img.shape)


def hu_head_box(raw: np.ndarray, slope: float, intercept: float, fix12: bool) -> tuple[int, int, int, int]:
    """:func:`head_box` of a raw slice's HU at :data:`HU_TISSUE`: the box ``ichprep build`` stores. A block's
    mean HU is ``slope`` x its mean raw value (after the 12-bit fix) + ``intercept``, the raw values summed
    exactly (integers) or in float64."""
    raw = np.ascontiguousarray(raw)
    if raw.ndim != 2 or raw.dtype.kind not in "iuf":
        raise ValueError(f"Expected a 2-D integer or float slice. Received: {raw.dtype} {raw.shape}")
    integer = raw.dtype.kind in "iu"
    dtype = np.int64 if integer else np.float64
    sums = np.empty((raw.shape[0] // BLOCK, raw.shape[1] // BLOCK), dtype)
    _raw_block_sums_kernel(raw, bool(fix12) and integer, BLOCK, np.empty(sums.shape[1] * BLOCK, dtype), sums)
    means = float(slope) * (sums / float(BLOCK * BLOCK)) + float(intercept)
    return _box_of(means, HU_TISSUE, raw.shape)


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
