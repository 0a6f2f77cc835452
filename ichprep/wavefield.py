"""The random-wave field of ``ichprep synth`` version 2: a periodic sum of plane waves whose zero set folds the
cortex into gyri and sulci (and, at other scales, the cerebellum's folia, diploe and air cells;
:mod:`ichprep.phantom` samples it with the compiled lookups below)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["FIELD_N", "FIELD_MM", "make_field", "trilinear", "trilinear_pair", "sulcus_mm"]

FIELD_N = 48  # the random-wave field: FIELD_N^3 samples, FIELD_MM apart, periodic
FIELD_MM = 4.0


def make_field(rng: np.random.Generator, waves: int = 12, wavelength_mm: float = 22.0) -> tuple[np.ndarray, np.ndarray]:
    """A periodic random-wave field (the sum of ``waves`` plane waves with random directions and phases at about
    one wavelength) and its gradient magnitude, both (FIELD_N,) * 3 float32. Its zero set is a labyrinth of
    sheets about half a wavelength apart: the sulci."""
    n = FIELD_N
    box = n * FIELD_MM
    k0 = box / wavelength_mm  # integer wave-vectors of about this length keep the field periodic
    ks = []
    while len(ks) < waves:
        v = rng.normal(size=3)
        v = np.rint(v / np.linalg.norm(v) * k0 * rng.uniform(0.8, 1.2))
        if np.linalg.norm(v) > 0:
            ks.append(v)
    ks = np.array(ks)
    phases = rng.uniform(0, 2 * np.pi, waves)
    g = np.arange(n) / n
    # each wave is separable, exp(i (2 pi k.g + phase)) = a(x) b(y) c(z): three short complex vectors per wave
    a = np.exp(1j * (2 * np.pi * ks[:, 0, None] * g + phases[:, None]))
    b = np.exp(1j * (2 * np.pi * ks[:, 1, None] * g))
    c = np.exp(1j * (2 * np.pi * ks[:, 2, None] * g))
    field = np.empty((n, n, n), np.float32)
    grad = np.empty((n, n, n), np.float32)
    _field_kernel(a, b, c, ks * (2 * np.pi / box), 1.0 / np.sqrt(waves / 2), field, grad)
    return field, grad


@njit(cache=True, nogil=True)
def _field_kernel(a, b, c, wavevectors, scale, field, grad_norm):
    """field = scale x sum over waves of Re(a[w, x] b[w, y] c[w, z]); grad_norm = the norm of its gradient, each
    wave contributing -Im(...) x wavevectors[w] (rad/mm)."""
    n = field.shape[0]
    ab = np.empty(a.shape[0], np.complex128)
    for x in range(n):
        for y in range(n):
            for w in range(a.shape[0]):  # a b c multiplies left to right: (a b) once per column, not per voxel
                ab[w] = a[w, x] * b[w, y]
            for z in range(n):
                f = gx = gy = gz = 0.0
                for w in range(a.shape[0]):
                    e = ab[w] * c[w, z]
                    f += e.real
                    gx -= e.imag * wavevectors[w, 0]
                    gy -= e.imag * wavevectors[w, 1]
                    gz -= e.imag * wavevectors[w, 2]
                field[x, y, z] = f * scale
                grad_norm[x, y, z] = math.sqrt(gx * gx + gy * gy + gz * gz) * scale


@njit(cache=True, nogil=True, inline="always")
def _cell(n, x, y, z):
    """The periodic grid cell of the point (x, y, z) mm: its corner indices and the weights within it."""
    fx, fy, fz = x / FIELD_MM, y / FIELD_MM, z / FIELD_MM
    ix, iy, iz = math.floor(fx), math.floor(fy), math.floor(fz)
    if n == FIELD_N:  # a constant divisor: the compiler multiplies instead of dividing (6 divisions were ~1/3 of a lookup)
        i0, j0, k0 = int(ix) % FIELD_N, int(iy) % FIELD_N, int(iz) % FIELD_N
    else:
        i0, j0, k0 = int(ix) % n, int(iy) % n, int(iz) % n
    i1 = i0 + 1 if i0 + 1 < n else 0
    j1 = j0 + 1 if j0 + 1 < n else 0
    k1 = k0 + 1 if k0 + 1 < n else 0
    return i0, j0, k0, i1, j1, k1, fx - ix, fy - iy, fz - iz


@njit(cache=True, nogil=True, inline="always")
def _blend(f, i0, j0, k0, i1, j1, k1, tx, ty, tz):
    c00 = f[i0, j0, k0] * (1 - tx) + f[i1, j0, k0] * tx
    c10 = f[i0, j1, k0] * (1 - tx) + f[i1, j1, k0] * tx
    c01 = f[i0, j0, k1] * (1 - tx) + f[i1, j0, k1] * tx
    c11 = f[i0, j1, k1] * (1 - tx) + f[i1, j1, k1] * tx
    return (c00 * (1 - ty) + c10 * ty) * (1 - tz) + (c01 * (1 - ty) + c11 * ty) * tz


@njit(cache=True, nogil=True, inline="always")
def trilinear(f, x, y, z):
    """The periodic field ``f`` at (x, y, z) mm, trilinearly."""
    i0, j0, k0, i1, j1, k1, tx, ty, tz = _cell(f.shape[0], x, y, z)
    return _blend(f, i0, j0, k0, i1, j1, k1, tx, ty, tz)


@njit(cache=True, nogil=True, inline="always")
def trilinear_pair(f, h, x, y, z):
    """:func:`trilinear` of two fields of one grid at one point, the cell found once."""
    i0, j0, k0, i1, j1, k1, tx, ty, tz = _cell(f.shape[0], x, y, z)
    return _blend(f, i0, j0, k0, i1, j1, k1, tx, ty, tz), _blend(h, i0, j0, k0, i1, j1, k1, tx, ty, tz)


@njit(cache=True, nogil=True, inline="always")
def sulcus_mm(field, grad, x, y, z, scale):
    """Distance (mm) to the field's zero set, the field sampled at ``scale`` x its frequency."""
    g, d = trilinear_pair(field, grad, x * scale, y * scale, z * scale)
    return abs(g) / max(d * scale, 1e-3)
