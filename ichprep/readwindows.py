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
"""

from __future__ import annotations

import numpy as np

from ichprep.errors import UsageError
from ichprep.kernels import channel_params, window_slice
from ichprep.windows import Window

__all__ = ["ReadWindows"]


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

    def __call__(self, row: int, hu: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
        """Windows of stored slice ``row`` (``hu``: its (H, W) int16 HU) into ``out``, (H, W, C) float16."""
        window_slice(hu, 1.0, 0.0, False, *self.params(row), out=out, row_scratch=scratch)
        return out
