"""The head's box in a slice: where the brain is, so that a reader can crop to it before downscaling.

At 128-256 px a whole 512x512 slice spends most of its pixels on air, the table and the headrest. The box
is the bounding box of the largest connected region of tissue, found on a coarse grid (blocks of 8x8
pixels, ~4 mm): tissue where a block's mean is above a level (above -500 HU on an hu store; above 0.1 of
a window, whose air and fat are 0), after a 3x3 opening that cuts the thin arcs of the headrest and table
off the head. A slice without tissue gets the whole image.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["BLOCK", "head_box", "block_means", "square_box"]

BLOCK = 8


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


def head_box(img: np.ndarray, level: float) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), end-exclusive pixel bounds of the largest tissue region of a 2-D slice; the whole slice
    where it holds none."""
    from scipy import ndimage

    h, w = img.shape
    tissue = block_means(img) > level
    tissue = ndimage.binary_opening(tissue, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(tissue)
    if n == 0:
        return 0, 0, h, w
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return (int(ys.min()) * BLOCK, int(xs.min()) * BLOCK, min(h, (int(ys.max()) + 1) * BLOCK),
            min(w, (int(xs.max()) + 1) * BLOCK))


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
