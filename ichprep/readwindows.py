"""Windows applied when an ``hu`` store is read: the build's own compiled kernel, run on stored HU.

An ``hu`` store keeps one int16 channel of Hounsfield units; a reader (``ichtrain``'s stream, ``ichprep
preview``) asks for any windows (the ``cnn`` full range, the ten ``rnn`` windows, a list) and gets what a
store built with those windows holds: the same kernel (:func:`ichprep.kernels.window_slice`) with slope 1
and intercept 0 on the stored HU gives the same float32 arithmetic and the same float16 rounding, so the
values are bit-identical for every 512 x 512 slice with integer slope and intercept (all RSNA files).
Resized slices differ by the rounding of their resampled HU to whole units (at most 0.5 HU before
windowing).

Why the kernel and not tf.data ops: windowing in TensorFlow on the host computes float32 tensors of all C
windows and then casts them, several passes over C x 1 MiB per slice; the kernel writes float16 straight
into the batch buffer in one pass, in reader threads (it releases the GIL).

Planar output (:meth:`ReadWindows.planar`): the rnn reads a slice's windows as a sequence, (C, H, W), and a
channel-last batch had to be transposed by TensorFlow afterwards (a pass over 10 MiB per slice as float16,
and another for the float32 cast). The planar kernel writes each window as its own plane, in float16 or
straight in float32 (the float16-rounded value, so both dtypes read the same numbers a windowed store holds),
and one window at a time, which LLVM vectorises as it does the build's one-channel loop.

Channel-last output (:meth:`ReadWindows.__call__`) through a table: a slice's windowed values are a function
of its HU value alone (and of its HU range, for full-range windows), and a slice holds far fewer distinct HU
values (a few thousand) than pixels (262,144). So the build's kernel windows each value of the slice's
range once, into a (values, C) table, and each pixel copies its row of the table: the same bits as the
kernel on every pixel (tested), at about a third of the time for ten windows.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ichprep.errors import UsageError
from ichprep.kernels import _hu_range, _unit_f16_bits, channel_params, window_slice
from ichprep.windows import Window

__all__ = ["ReadWindows"]


_ZERO, _ONE = np.float32(0.0), np.float32(1.0)
# float16 bits -> float32 for every value in [0, 1] (bits 0 .. 0x3C00): exact, and 60 KiB, so it stays in cache
_UNIT_F16_TO_F32 = np.arange(0x3C01, dtype=np.uint16).view(np.float16).astype(np.float32)
# the kernel's unused output: empty, so it writes the other (only its first dimension is read)
_NO_OUT16, _NO_OUT32 = np.empty((0, 0, 0), np.uint16), np.empty((0, 0, 0), np.float32)


@njit(cache=True, nogil=True)
def _planar_windows_kernel(hu, lo, scale, is_full, out16, out32, lut, v_row):
    """Windows of one (H, W) int16 HU slice as planes: out16 (C, H, W) uint16 (float16 bits), or, when it is
    empty, out32 (C, H, W) float32 holding the same float16-rounded values. lo/scale/is_full: (C,) as for
    the build's kernel (full-range channels take the slice's own HU min and max). v_row: (W,) float32."""
    H = hu.shape[0]
    W = hu.shape[1]
    C = lo.shape[0]
    hu_min, hu_max = _hu_range(hu, False, _ONE, _ZERO)
    full_scale = _ONE / (hu_max - hu_min) if hu_max > hu_min else _ZERO
    v_bits = v_row.view(np.uint32)
    wide = out16.shape[0] == 0
    for c in range(C):
        lo_c = hu_min if is_full[c] else lo[c]
        scale_c = full_scale if is_full[c] else scale[c]
        for y in range(H):
            for x in range(W):  # the build kernel's arithmetic: (hu * 1 + 0 - lo) * scale, clipped
                v_row[x] = min(max((np.float32(hu[y, x]) - lo_c) * scale_c, _ZERO), _ONE)
            if wide:
                row32 = out32[c, y]
                for x in range(W):
                    row32[x] = lut[_unit_f16_bits(v_row[x], np.int64(v_bits[x]))]
            else:
                row16 = out16[c, y]
                for x in range(W):
                    row16[x] = _unit_f16_bits(v_row[x], np.int64(v_bits[x]))


@njit(cache=True, nogil=True)
def _int16_range(hu):
    lo = hu[0, 0]
    hi = hu[0, 0]
    for y in range(hu.shape[0]):
        for x in range(hu.shape[1]):
            lo = min(lo, hu[y, x])
            hi = max(hi, hu[y, x])
    return np.int64(lo), np.int64(hi)


@njit(cache=True, nogil=True)
def _table_gather_kernel(hu, base, table, out):
    """out[y, x, :] = table[hu[y, x] - base, :] (table and out: the same words, e.g. two float16 per uint32).
    Rows of 1 to 5 words are copied word by word, unrolled (a loop over a run-time row length ran 2.4x
    slower for ten windows); longer rows by the loop."""
    K = table.shape[1]
    H, W = hu.shape
    for y in range(H):
        row = out[y]
        if K == 5:
            for x in range(W):
                t = table[np.int64(hu[y, x]) - base]
                o = row[x]
                o[0] = t[0]
                o[1] = t[1]
                o[2] = t[2]
                o[3] = t[3]
                o[4] = t[4]
        elif K == 3:
            for x in range(W):
                t = table[np.int64(hu[y, x]) - base]
                o = row[x]
                o[0] = t[0]
                o[1] = t[1]
                o[2] = t[2]
        elif K == 1:
            for x in range(W):
                row[x, 0] = table[np.int64(hu[y, x]) - base, 0]
        else:
            for x in range(W):
                t = table[np.int64(hu[y, x]) - base]
                o = row[x]
                for k in range(K):
                    o[k] = t[k]


class ReadWindows:
    """``windows`` applied to an hu store's slices. ``center``/``width``: the store's window_center /
    window_width columns (a ``default`` window reads each slice's own); ``usable``: rows that must have
    them (rejected rows never do)."""

    def __init__(self, windows: tuple[Window, ...], center: np.ndarray, width: np.ndarray,
                 usable: np.ndarray | None = None):
        if not windows or any(w.kind == "hu" for w in windows):
            raise UsageError(f"Expected windows to apply to Hounsfield units. Received: {[w.spec() for w in windows]}")
        self.windows = tuple(windows)
        self.channels = len(windows)
        n = len(center)
        self._center = np.asarray(center, np.float64)
        self._width = np.asarray(width, np.float64)
        self._fixed = channel_params(self.windows, 0.0, 1.0) if not any(w.kind == "default" for w in windows) else None
        self._fixed_stacked = np.stack(self._fixed).astype(np.float32) if self._fixed is not None else None
        if self._fixed is None:
            need = np.ones(n, bool) if usable is None else np.asarray(usable, bool)
            bad = need & ~(np.isfinite(self._center) & np.isfinite(self._width) & (self._width > 0))
            if bad.any():
                name = next(w.name for w in windows if w.kind == "default")
                raise UsageError(f"Window {name!r} takes each file's WindowCenter/WindowWidth, which {int(bad.sum())} "
                                 f"of {int(need.sum())} slices lack; use fixed windows (e.g. brain:40/80) instead")

    def params(self, row: int):
        """(lo, scale, is_full) of one row (see :func:`ichprep.kernels.channel_params`)."""
        if self._fixed is not None:
            return self._fixed
        return channel_params(self.windows, float(self._center[row]), float(self._width[row]))

    def params_batch(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 3, C) float32: each row's (lo, scale, is_full) stacked, for windows applied in a model's
        graph (:class:`ichtrain.graphwindows.HUWindows`), which takes full-range bounds from the slice itself."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if self._fixed is not None:
            return np.broadcast_to(self._fixed_stacked, (rows.size,) + self._fixed_stacked.shape).copy()
        out = np.empty((rows.size, 3, self.channels), np.float32)
        for i, row in enumerate(rows.tolist()):
            out[i] = self.params(row)  # (lo, scale, is_full): three (C,) arrays stacked as rows
        return out

    def __call__(self, row: int, hu: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
        """Windows of stored slice ``row`` (``hu``: its (H, W) int16 HU) into ``out``, (H, W, C) float16 whose
        last axis is contiguous (a view of a wider array's channels, e.g. one neighbour slice's, will do): by a
        table of the slice's HU values where it has fewer of them than a quarter of its pixels, else per pixel."""
        params = self.params(row)
        if out.shape != hu.shape + (self.channels,) or out.dtype != np.float16 or out.strides[-1] != 2:
            raise ValueError(f"Expected a float16 out of shape {hu.shape + (self.channels,)} with a contiguous last "
                             f"axis. Received: {out.dtype} {out.shape}, strides {out.strides}")
        # one window into a whole slice: the per-pixel kernel, which LLVM vectorises, is as fast as a table
        if hu.dtype == np.int16 and hu.ndim == 2 and hu.flags.c_contiguous and (self.channels > 1 or not out.flags.c_contiguous):
            lo, hi = _int16_range(hu)
            if hi - lo + 1 <= hu.size // 4:
                values = np.arange(lo, hi + 1, dtype=np.int16).reshape(1, -1)  # the same range: same full windows
                table = window_slice(values, 1.0, 0.0, False, *params)[0][0]  # (values, C) float16
                pairs = self.channels % 2 == 0 and out.flags.c_contiguous  # two float16 a word where aligned
                word = np.uint32 if pairs else np.uint16
                _table_gather_kernel(hu, lo, table.view(word), out.view(word))
                return out
        if out.flags.c_contiguous:
            window_slice(hu, 1.0, 0.0, False, *params, out=out, row_scratch=scratch)
        else:
            out[...] = window_slice(hu, 1.0, 0.0, False, *params, row_scratch=scratch)[0]
        return out

    def planar(self, row: int, hu: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
        """Windows of stored slice ``row`` into ``out``, (C, H, W) float16 or float32: window c is plane c, the
        values those of :meth:`__call__` (float32 ones are its float16 values, widened)."""
        H, W = hu.shape
        if hu.dtype != np.int16 or not hu.flags.c_contiguous:
            raise ValueError(f"Expected a C-contiguous int16 HU slice. Received: {hu.dtype} {hu.shape}")
        if out.shape != (self.channels, H, W) or out.dtype not in (np.float16, np.float32) or not out.flags.c_contiguous:
            raise ValueError(f"Expected a C-contiguous float16 or float32 out of shape {(self.channels, H, W)}. "
                             f"Received: {out.dtype} {out.shape}")
        if scratch is None or scratch.shape != (W,) or scratch.dtype != np.float32:
            scratch = np.empty(W, np.float32)
        lo, scale, is_full = self.params(row)
        if out.dtype == np.float16:
            _planar_windows_kernel(hu, lo, scale, is_full, out.view(np.uint16), _NO_OUT32, _UNIT_F16_TO_F32, scratch)
        else:
            _planar_windows_kernel(hu, lo, scale, is_full, _NO_OUT16, out, _UNIT_F16_TO_F32, scratch)
        return out
