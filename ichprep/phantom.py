"""A procedural 3-D head phantom rendered slice by slice: the anatomy of ``ichprep synth`` version 2.

A study is a table of primitives in head coordinates (mm; x to the patient's left, y posterior, z up, the
origin near the floor of the middle cranial fossa): ellipsoids (or domes flatter along z) cut by two
horizontal planes, each with a material. A slice is a plane through the head (tilted by the head's pitch and roll) and a slab of the
series' slice thickness around it. Every primitive covers a pixel by the fraction of the slab its chord
along z fills (so the ends of a structure along z and oblique surfaces are partial-volumed as in a 5-mm
CT slice), softened by half a pixel in the plane; primitives are painted in order, each blending its
value over what lies below.

Materials give texture: the cerebrum's cortex folds along the zero set of a random-wave field (gyri and
sulci, grey matter within ~2.7 mm of the CSF, white matter beneath), the cerebellum's folia are that
field at 2.5x its frequency, diploe and air cells (mastoid, ethmoid) use it at other scales, and blood
can replace the CSF of the sulci, cisterns and ventricles it lies in (subarachnoid, intraventricular) or
line the inner table in a crescent (subdural).

Kernels take arrays and scalars only (``_<op>_kernel``); the Python functions below plan and validate. Where a
slice's slab meets a primitive (coverage, and the spans that spare the painter most pixels) is
``ichprep.slabgeometry``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ichprep.slabgeometry import (AX, AY, CLIP, LABEL, MAT, N_COLUMNS, P1, P2, P3, P4, P5, VAL, VAL2, ZMAX, ZMIN,
                                   clamp01, coverage, pixel_box, primitive_shape, row_depth_bound, row_roots,
                                   row_span, row_span_in_slab)
from ichprep.wavefield import FIELD_MM, FIELD_N, make_field, sulcus_mm, trilinear  # noqa: F401 (re-exported)

__all__ = ["N_COLUMNS", "Material", "FIELD_N", "FIELD_MM", "make_field", "render_plane"]


class Material:
    CONST = 0  # VAL, plus VAL2 x the field (a faint texture)
    BRAIN = 1  # cortex from the field: VAL grey, VAL2 white; P1 sulcal depth, P2 surface CSF, P3 sulcus half-width
    CEREBELLUM = 2  # folia: VAL grey, VAL2 white core
    DIPLOE = 3  # VAL + VAL2 x the field at 1.7x frequency
    AIR_CELLS = 4  # honeycomb: VAL air, VAL2 septa
    FILL_CSF = 5  # blood VAL replaces what is darker than VAL2 (CSF); P1: only where local y > P1 (layering)
    CRESCENT = 6  # VAL within P1 mm of the surface, within angle P2 of direction P5, z within P4 of P3
    ADD = 7  # adds VAL


CSF_HU = 8.0
SEAL_MM = 55.0  # primitives this wide (mm, both axes) hide what lies below them: see _seal_kernel


_FOLD_FREE = 1.1  # sulci reach at most this x P1 deep (opening = 1 in _material_value)


@njit(cache=True, nogil=True, inline="always")
def _depth_enough(p, k):
    """A depth (mm) below which primitive k's material no longer depends on it: the cortex's fold-free core
    (see ``_material_value``; its grey term is 0 there too); 1e30 (always exact) for other materials."""
    m = int(p[k, MAT])
    if m == 1 or m == 2:
        return p[k, P2] + _FOLD_FREE * p[k, P1] + 2.0
    return 1e30


@njit(cache=True, nogil=True, inline="always")
def _material(p, k):
    """Primitive k's material and its parameters as scalars, read once per primitive (see ``primitive_shape``)."""
    return int(p[k, MAT]), p[k, VAL], p[k, VAL2], p[k, P1], p[k, P2], p[k, P3], p[k, P4], p[k, P5]


@njit(cache=True, nogil=True, inline="always")
def _material_value(mt, cur, x, y, z, lu, lv, depth, field, grad, shortcuts):
    """The value a primitive of material mt (``_material``) puts at this point (over ``cur``), and the weight
    of its own label there. ``shortcuts``: skip the field's lookups where they are multiplied by 0."""
    m, val, val2, p1, p2, p3, p4, p5 = mt
    if m == 0:  # CONST
        if val2 != 0.0:
            return val + val2 * trilinear(field, x * 1.3 + 50.0, y * 1.3, z * 1.3), 1.0
        return val, 1.0
    if m == 1 or m == 2:  # BRAIN, CEREBELLUM
        csf_surface = p2
        half_width = p3
        cortex = 2.7 if m == 1 else 1.6
        if depth < csf_surface:
            return CSF_HU, 1.0
        d = depth - csf_surface
        grey = clamp01((cortex - d) / 1.2 + 0.5)
        # deeper, in_folds (below) is 0 whatever the slow field's opening: the field is not read
        if not shortcuts or d < _FOLD_FREE * p1 + 1.0 + 1e-6:
            # sulci open and close along their length, and reach up to P1 mm deep: a slow field modulates both
            opening = clamp01(trilinear(field, x * 0.31 + 23.0, y * 0.31, z * 0.31) * 0.8 + 0.5)
            in_folds = clamp01((p1 * (0.5 + 0.6 * opening) - d) / 2.0 + 0.5)  # at most _FOLD_FREE x P1 deep
            if not shortcuts or in_folds > 0.0:  # else csf is 0 and grey its first term, as deeper
                s = sulcus_mm(field, grad, x, y, z, 1.0 if m == 1 else 2.5)
                csf = clamp01((half_width * (0.15 + 1.5 * opening) - s) / 0.8 + 0.5) * in_folds
                grey = max(grey, clamp01((half_width + cortex - s) / 1.2 + 0.5) * in_folds)
                v = val2 + (val - val2) * grey
                return v + (CSF_HU - v) * csf, 1.0
        return val2 + (val - val2) * grey, 1.0
    if m == 3:  # DIPLOE
        return val + val2 * trilinear(field, x * 1.7 + 11.0, y * 1.7, z * 1.7), 1.0
    if m == 4:  # AIR_CELLS
        s = sulcus_mm(field, grad, x + 7.0, y, z, 2.8)
        septa = clamp01((0.45 - s) / 0.4 + 0.5)
        return val + (val2 - val) * septa, 1.0
    if m == 5:  # FILL_CSF: blood replaces what is as dark as CSF
        if p1 > -1e8 and lv < p1:
            return cur, 0.0
        w = clamp01((val2 - cur) / 12.0) * clamp01((cur + 40.0) / 20.0)  # CSF, not fat or air
        return cur + (val - cur) * w, w
    if m == 6:  # CRESCENT along the surface
        ang = math.atan2(lv, lu)
        dang = abs((ang - p5 + math.pi) % (2.0 * math.pi) - math.pi)
        az_ = max(0.0, 1.0 - ((z - p3) / p4) ** 2)
        thick = p1 * math.sqrt(max(0.0, 1.0 - (dang / p2) ** 2) * az_)
        w = clamp01((thick - depth) / 0.8 + 0.5) if thick > 0.3 else 0.0
        return cur + (val - cur) * w, w
    # ADD
    return cur + val, 0.0


@njit(cache=True, nogil=True)
def _seal_kernel(p, pose, half, px, zlo, zhi, seal):
    """``seal[i, j]``: the last primitive that surely covers pixel (i, j) whole with a value of its own (a wide
    one whose material ignores what lies below, no clip, no label), or -1. What is painted before it there
    cannot show. Per row this is an interval: where the slab lies inside the primitive (``row_depth_bound``)
    away from its rim, less a pixel at each end so that ``coverage`` gives exactly 1 on all of it."""
    n_rows, n_cols = seal.shape
    c = n_cols * px / 2.0
    r00, r01, r10, r11, bx, by, z0, gx, gy = pose[0], pose[1], pose[2], pose[3], pose[4], pose[5], pose[6], pose[7], pose[8]
    for k in range(p.shape[0]):
        amin = min(p[k, AX], p[k, AY])
        if int(p[k, MAT]) > 4 or int(p[k, CLIP]) >= 0 or int(p[k, LABEL]) >= 0 or amin < SEAL_MM:
            continue
        inner = 1.0 - 1.5 * px / amin
        i_lo, i_hi, j_lo, j_hi = pixel_box(p, k, pose, c, px, half, zlo, zhi, n_rows, n_cols)
        for i in range(i_lo, i_hi + 1):
            v = (i + 0.5) * px - c
            ja, jb = row_span(p, k, pose, v, c, px, j_lo, j_hi)
            if ja > jb:
                continue
            deep = row_depth_bound(p, k, z0, gx, gy, r00, r01, r10, r11, bx, by, v, ja, jb, c, px, half)
            if deep > 1.0:
                continue
            z_a = z0 + gx * (r00 * ((ja + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((ja + 0.5) * px - c) + r11 * v + by)
            z_b = z0 + gx * (r00 * ((jb + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((jb + 0.5) * px - c) + r11 * v + by)
            if min(z_a, z_b) - half < p[k, ZMIN] or max(z_a, z_b) + half > p[k, ZMAX]:
                continue
            u_lo, u_hi = row_roots(p, k, pose, v, min(inner * inner, 1.0 - deep) - 1e-9)
            if u_lo > u_hi:
                continue
            sa = max(ja, int(math.ceil((u_lo + c) / px - 0.5)) + 1)
            sb = min(jb, int(math.floor((u_hi + c) / px - 0.5)) - 1)
            for j in range(sa, sb + 1):
                seal[i, j] = k


@njit(cache=True, nogil=True)
def _render_kernel(p, pose, half, px, field, grad, out, label_area, seal, shortcuts):
    """Paint primitives p (rows in order) over ``out`` (the render grid, HU, float32). Pixel (i, j) lies at
    image position (u, v) = ((j + 0.5) px - c, (i + 0.5) px - c) mm, c = half the field of view, and at head
    coordinates x = pose[0] u + pose[1] v + pose[4], y = pose[2] u + pose[3] v + pose[5],
    z = pose[6] + pose[7] x + pose[8] y. ``label_area[s]`` gains the area (pixels) of label s's blood. A pixel
    is painted only from its ``seal`` on (``_seal_kernel``; the painting of the hidden layers was most of the
    time), except by primitives with a label, whose area counts wherever they lie. All of these skips (the seal,
    the slab's span per row, a dome's depth bound, the cortex's lookups where they are multiplied by 0) are on
    when ``shortcuts``; without, every layer and every pixel is computed in full: the reference they are held to."""
    n_rows, n_cols = out.shape
    c = n_cols * px / 2.0
    r00, r01, r10, r11, bx, by, z0, gx, gy = pose[0], pose[1], pose[2], pose[3], pose[4], pose[5], pose[6], pose[7], pose[8]
    zlo, zhi = 1e30, -1e30
    for cu in (-c, c):  # the plane's z range over the image (z is affine in u, v)
        for cv in (-c, c):
            hx = r00 * cu + r01 * cv + bx
            hy = r10 * cu + r11 * cv + by
            zc = z0 + gx * hx + gy * hy
            zlo = min(zlo, zc)
            zhi = max(zhi, zc)
    if shortcuts:
        _seal_kernel(p, pose, half, px, zlo, zhi, seal)
    for k in range(p.shape[0]):
        i_lo, i_hi, j_lo, j_hi = pixel_box(p, k, pose, c, px, half, zlo, zhi, n_rows, n_cols)
        clip = int(p[k, CLIP])
        label = int(p[k, LABEL])
        mat = int(p[k, MAT])
        need_depth = mat == 1 or mat == 2 or mat == 6
        enough = _depth_enough(p, k) if shortcuts else 1e30
        shape = primitive_shape(p, k, px)
        clip_shape = primitive_shape(p, clip if clip >= 0 else k, px)
        material = _material(p, k)
        for i in range(i_lo, i_hi + 1):
            v = (i + 0.5) * px - c
            if shortcuts:
                ja, jb = row_span_in_slab(p, k, pose, v, c, px, j_lo, j_hi, half)
            else:
                ja, jb = row_span(p, k, pose, v, c, px, j_lo, j_hi)
            if ja > jb:
                continue
            deep = row_depth_bound(p, k, z0, gx, gy, r00, r01, r10, r11, bx, by, v, ja, jb, c, px, half)
            for j in range(ja, jb + 1):
                if seal[i, j] > k and label < 0:
                    continue
                u = (j + 0.5) * px - c
                x = r00 * u + r01 * v + bx
                y = r10 * u + r11 * v + by
                z = z0 + gx * x + gy * y
                cov, lu, lv, depth = coverage(shape, x, y, z, half, px, need_depth, deep, enough)
                if cov <= 0.0:
                    continue
                if clip >= 0:
                    c2, a, b, d2 = coverage(clip_shape, x, y, z, half, px, False, 2.0, 1e30)
                    cov *= c2
                    if cov <= 0.0:
                        continue
                cur = out[i, j]
                val, w = _material_value(material, cur, x, y, z, lu, lv, depth, field, grad, shortcuts)
                out[i, j] = cur + (val - cur) * cov
                if label >= 0:
                    label_area[label] += cov * w


def render_plane(prims: np.ndarray, pose: np.ndarray, half_mm: float, px_mm: float, field: np.ndarray,
                 grad: np.ndarray, background: np.ndarray, shortcuts: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``prims`` over a copy of ``background`` (float32 HU on the render grid, pixels of ``px_mm``)
    seen through ``pose`` (9 numbers, see ``_render_kernel``); returns the image and the area (render pixels)
    of each of the 5 subtypes' blood. ``shortcuts=False`` paints every layer and computes every pixel in full
    (the reference the shortcuts are tested against: both give the same image)."""
    if prims.ndim != 2 or prims.shape[1] != N_COLUMNS:
        raise ValueError(f"Expected a primitive table (n, {N_COLUMNS}). Received: shape={prims.shape}")
    pose = np.ascontiguousarray(pose, np.float64)
    if pose.shape != (9,):
        raise ValueError(f"Expected a pose of 9 numbers. Received: shape={pose.shape}")
    out = np.array(background, dtype=np.float32, copy=True, order="C")
    area = np.zeros(5, np.float64)
    seal = np.full(out.shape, -1, np.int32)
    _render_kernel(np.ascontiguousarray(prims, np.float64), pose, float(half_mm), float(px_mm), field, grad, out, area,
                   seal, bool(shortcuts))
    return out, area
