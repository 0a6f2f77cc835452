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

Kernels take arrays and scalars only (``_<op>_kernel``); the Python functions below plan and validate.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ichprep.wavefield import FIELD_MM, FIELD_N, make_field, sulcus_mm, trilinear  # noqa: F401 (re-exported)

__all__ = ["N_COLUMNS", "Material", "FIELD_N", "FIELD_MM", "make_field", "render_plane"]

# Columns of the primitive table (float64, one row per primitive).
CX, CY, CZ, AX, AY, AZ, COS, SIN, ZMIN, ZMAX, MAT, VAL, VAL2, LABEL, CLIP, P1, P2, P3, P4, P5, ZEXP = range(21)
N_COLUMNS = 21


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


@njit(cache=True, nogil=True, inline="always")
def _clamp01(v):
    return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)


@njit(cache=True, nogil=True, inline="always")
def _coverage(p, k, x, y, z, half, px, need_depth, deep):
    """Fraction of the slab [z - half, z + half] at (x, y) inside primitive k, softened by half a pixel in the
    plane; also returns the primitive's local coordinates (u, v: mm along its axes) and, when asked, the depth
    (mm below its surface, the cut planes included). ``deep``: the slab lies inside wherever 1 - r2 >= deep (a
    bound the caller holds for a whole row, which spares most pixels the power of a dome's chord)."""
    dx, dy = x - p[k, CX], y - p[k, CY]
    lu = dx * p[k, COS] + dy * p[k, SIN]
    lv = -dx * p[k, SIN] + dy * p[k, COS]
    ax, ay, az = p[k, AX], p[k, AY], p[k, AZ]
    r2 = (lu / ax) ** 2 + (lv / ay) ** 2
    amin = min(ax, ay)
    if r2 >= 1.0 + 2.0 * px / amin:
        return 0.0, lu, lv, 0.0
    soft = 1.0
    inner = 1.0 - 1.5 * px / amin
    if r2 > inner * inner or inner <= 0.0:  # near the rim: soften by the in-plane distance to it
        r = math.sqrt(r2)
        radial = math.sqrt(dx * dx + dy * dy)
        edge = radial * (1.0 / r - 1.0) if r > 1e-6 else amin
        soft = _clamp01(edge / px + 0.5)
        if soft <= 0.0:
            return 0.0, lu, lv, 0.0
    cz, zmin, zmax = p[k, CZ], p[k, ZMIN], p[k, ZMAX]
    lo_s, hi_s = z - half, z + half
    zexp = p[k, ZEXP]  # the shape along z: |w|^zexp + r2 <= 1 (2: an ellipsoid; more: a flatter dome)
    if lo_s >= zmin and hi_s <= zmax and 1.0 - r2 >= deep:
        cov = soft  # the slab lies inside the primitive here (most of its pixels), no chord needed
    else:
        if zexp == 2.0:
            chord2 = az * az * max(1.0 - min(r2, 0.9999), 0.0)
        else:
            hc0 = az * max(1.0 - min(r2, 0.9999), 0.0) ** (1.0 / zexp)
            chord2 = hc0 * hc0
        if lo_s >= zmin and hi_s <= zmax and (lo_s - cz) ** 2 <= chord2 and (hi_s - cz) ** 2 <= chord2:
            cov = soft
        else:
            hc = math.sqrt(chord2)
            top = min(min(cz + hc, zmax), hi_s)
            bot = max(max(cz - hc, zmin), lo_s)
            if top <= bot:
                return 0.0, lu, lv, 0.0
            cov = (top - bot) / (2.0 * half) * soft
    depth = 0.0
    if need_depth:  # distance below the surface F = r2 + |w|^zexp = 1, to first order: (1 - F) / |grad F|
        w = (z - cz) / az
        aw = abs(w)
        wz = aw * aw if zexp == 2.0 else aw ** zexp
        dwz = zexp * wz / aw if aw > 0.0 else 0.0  # d|w|^zexp/d|w|, with one power
        gx, gy, gz = 2.0 * lu / (ax * ax), 2.0 * lv / (ay * ay), dwz / az
        grad_len = math.sqrt(gx * gx + gy * gy + gz * gz)
        depth = (1.0 - r2 - wz) / grad_len if grad_len > 1e-9 else min(amin, az)
        depth = min(depth, min(z - zmin, zmax - z))
    return cov, lu, lv, depth


@njit(cache=True, nogil=True, inline="always")
def _material_value(p, k, cur, x, y, z, lu, lv, depth, field, grad):
    """The value primitive k puts at this point (over ``cur``), and the weight of its own label there."""
    m = int(p[k, MAT])
    val, val2 = p[k, VAL], p[k, VAL2]
    if m == 0:  # CONST
        if val2 != 0.0:
            return val + val2 * trilinear(field, x * 1.3 + 50.0, y * 1.3, z * 1.3), 1.0
        return val, 1.0
    if m == 1 or m == 2:  # BRAIN, CEREBELLUM
        csf_surface = p[k, P2]
        half_width = p[k, P3]
        if m == 1:
            s = sulcus_mm(field, grad, x, y, z, 1.0)
            cortex = 2.7
        else:
            s = sulcus_mm(field, grad, x, y, z, 2.5)
            cortex = 1.6
        if depth < csf_surface:
            return CSF_HU, 1.0
        d = depth - csf_surface
        # sulci open and close along their length, and reach up to P1 mm deep: a slow field modulates both
        m = _clamp01(trilinear(field, x * 0.31 + 23.0, y * 0.31, z * 0.31) * 0.8 + 0.5)
        in_folds = _clamp01((p[k, P1] * (0.5 + 0.6 * m) - d) / 2.0 + 0.5)
        csf = _clamp01((half_width * (0.15 + 1.5 * m) - s) / 0.8 + 0.5) * in_folds
        grey = max(_clamp01((cortex - d) / 1.2 + 0.5), _clamp01((half_width + cortex - s) / 1.2 + 0.5) * in_folds)
        v = val2 + (val - val2) * grey
        return v + (CSF_HU - v) * csf, 1.0
    if m == 3:  # DIPLOE
        return val + val2 * trilinear(field, x * 1.7 + 11.0, y * 1.7, z * 1.7), 1.0
    if m == 4:  # AIR_CELLS
        s = sulcus_mm(field, grad, x + 7.0, y, z, 2.8)
        septa = _clamp01((0.45 - s) / 0.4 + 0.5)
        return val + (val2 - val) * septa, 1.0
    if m == 5:  # FILL_CSF: blood replaces what is as dark as CSF
        if p[k, P1] > -1e8 and lv < p[k, P1]:
            return cur, 0.0
        w = _clamp01((val2 - cur) / 12.0) * _clamp01((cur + 40.0) / 20.0)  # CSF, not fat or air
        return cur + (val - cur) * w, w
    if m == 6:  # CRESCENT along the surface
        ang = math.atan2(lv, lu)
        dang = abs((ang - p[k, P5] + math.pi) % (2.0 * math.pi) - math.pi)
        az_ = max(0.0, 1.0 - ((z - p[k, P3]) / p[k, P4]) ** 2)
        thick = p[k, P1] * math.sqrt(max(0.0, 1.0 - (dang / p[k, P2]) ** 2) * az_)
        w = _clamp01((thick - depth) / 0.8 + 0.5) if thick > 0.3 else 0.0
        return cur + (val - cur) * w, w
    # ADD
    return cur + val, 0.0


@njit(cache=True, nogil=True, inline="always")
def _row_depth_bound(p, k, z0, gx, gy, r00, r01, r10, r11, bx, by, v, ja, jb, c, px, half):
    """For pixels ja..jb of the row at v: a bound B with |w|^zexp <= B at both faces of every pixel's slab
    (w = (z - cz) / az; z is affine along the row, so its extremes are at the ends). 2 when none holds."""
    z_a = z0 + gx * (r00 * ((ja + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((ja + 0.5) * px - c) + r11 * v + by)
    z_b = z0 + gx * (r00 * ((jb + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((jb + 0.5) * px - c) + r11 * v + by)
    w = max(abs(min(z_a, z_b) - half - p[k, CZ]), abs(max(z_a, z_b) + half - p[k, CZ])) / p[k, AZ]
    if w >= 1.0:
        return 2.0
    return w ** p[k, ZEXP] + 1e-9


@njit(cache=True, nogil=True, inline="always")
def _pixel_box(p, k, pose, c, px, half, zlo, zhi, n_rows, n_cols):
    """Rows and columns (i_lo, i_hi, j_lo, j_hi) that primitive k can touch; an empty box when the slab misses
    it."""
    if p[k, CZ] - p[k, AZ] > zhi + half or p[k, CZ] + p[k, AZ] < zlo - half:
        return 0, -1, 0, -1
    if p[k, ZMIN] > zhi + half or p[k, ZMAX] < zlo - half:
        return 0, -1, 0, -1
    r00, r01, r10, r11, bx, by = pose[0], pose[1], pose[2], pose[3], pose[4], pose[5]
    det = r00 * r11 - r01 * r10
    ext = max(p[k, AX], p[k, AY]) + 2.0 * px
    i_lo, i_hi, j_lo, j_hi = n_rows, -1, n_cols, -1
    for sx in (-1.0, 1.0):  # the head-coordinate box's corners, back to pixels
        for sy in (-1.0, 1.0):
            hx = p[k, CX] + sx * ext - bx
            hy = p[k, CY] + sy * ext - by
            u = (r11 * hx - r01 * hy) / det
            v = (-r10 * hx + r00 * hy) / det
            jf = (u + c) / px - 0.5
            i_f = (v + c) / px - 0.5
            j_lo = min(j_lo, int(math.floor(jf)))
            j_hi = max(j_hi, int(math.ceil(jf)))
            i_lo = min(i_lo, int(math.floor(i_f)))
            i_hi = max(i_hi, int(math.ceil(i_f)))
    return max(i_lo, 0), min(i_hi, n_rows - 1), max(j_lo, 0), min(j_hi, n_cols - 1)


@njit(cache=True, nogil=True, inline="always")
def _row_roots(p, k, pose, v, level):
    """Where along the row at v primitive k's r2 (squared radius in its axes' units) is below ``level``: along a
    row its local coordinates are affine in u, so r2(u) = qa u^2 + qb u + qc. Returns (u_lo, u_hi), empty
    (u_lo > u_hi) when nowhere."""
    r00, r01, r10, r11, bx, by = pose[0], pose[1], pose[2], pose[3], pose[4], pose[5]
    cs, sn = p[k, COS], p[k, SIN]
    ia, ib = 1.0 / p[k, AX], 1.0 / p[k, AY]
    du = (r00 * cs + r10 * sn) * ia  # d(lu/ax)/du
    dv = (-r00 * sn + r10 * cs) * ib  # d(lv/ay)/du
    x0 = r01 * v + bx - p[k, CX]  # head coordinates at u = 0, relative to the centre
    y0 = r11 * v + by - p[k, CY]
    e0 = (x0 * cs + y0 * sn) * ia
    f0 = (-x0 * sn + y0 * cs) * ib
    qa = du * du + dv * dv
    qb = 2.0 * (du * e0 + dv * f0)
    qc = e0 * e0 + f0 * f0 - level
    disc = qb * qb - 4.0 * qa * qc
    if disc < 0.0 or qa <= 0.0:
        return 1.0, -1.0
    root = math.sqrt(disc)
    return (-qb - root) / (2.0 * qa), (-qb + root) / (2.0 * qa)


@njit(cache=True, nogil=True, inline="always")
def _row_span(p, k, pose, v, c, px, j_lo, j_hi):
    """Columns ja..jb of the row at v that primitive k's ellipse (grown by two pixels) can touch; ja > jb when
    none."""
    u_lo, u_hi = _row_roots(p, k, pose, v, 1.0 + 2.0 * px / min(p[k, AX], p[k, AY]))
    if u_lo > u_hi:
        return 0, -1
    return max(j_lo, int(math.floor((u_lo + c) / px - 0.5))), min(j_hi, int(math.ceil((u_hi + c) / px - 0.5)))


@njit(cache=True, nogil=True, inline="always")
def _row_span_in_slab(p, k, pose, v, c, px, j_lo, j_hi, half):
    """:func:`_row_span` narrowed to the pixels whose slab can meet primitive k. ``_coverage`` is 0 unless the
    chord at the pixel reaches the slab, min(r2, 0.9999) < 1 - w^zexp with w the slab's nearest distance to the
    centre in units of AZ, and the slab meets [ZMIN, ZMAX]. Along a row z is affine, so the nearest w over the
    row bounds every pixel's: r2 below that level is a narrower ellipse on the same row. Near a primitive's top
    or bottom most of its in-plane span lies there; none of the pixels cut away had any coverage."""
    ja, jb = _row_span(p, k, pose, v, c, px, j_lo, j_hi)
    if ja > jb:
        return ja, jb
    r00, r01, r10, r11, bx, by, z0, gx, gy = pose[0], pose[1], pose[2], pose[3], pose[4], pose[5], pose[6], pose[7], pose[8]
    z_a = z0 + gx * (r00 * ((ja + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((ja + 0.5) * px - c) + r11 * v + by)
    z_b = z0 + gx * (r00 * ((jb + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((jb + 0.5) * px - c) + r11 * v + by)
    lo, hi = min(z_a, z_b) - half, max(z_a, z_b) + half  # every pixel's slab lies in [lo, hi]
    if hi <= p[k, ZMIN] or lo >= p[k, ZMAX]:
        return 0, -1
    cz = p[k, CZ]
    w = max(0.0, max(lo - cz, cz - hi)) / p[k, AZ]
    if w >= 1.0:
        return 0, -1
    level = 1.0 - w ** p[k, ZEXP]
    if level >= 0.9999:  # the clamp in _coverage: no narrower bound here
        return ja, jb
    u_lo, u_hi = _row_roots(p, k, pose, v, level * (1.0 + 1e-9) + 1e-9)  # a hair wider: rounding never cuts
    if u_lo > u_hi:
        return 0, -1
    return max(ja, int(math.floor((u_lo + c) / px - 0.5))), min(jb, int(math.ceil((u_hi + c) / px - 0.5)))


@njit(cache=True, nogil=True)
def _seal_kernel(p, pose, half, px, zlo, zhi, seal):
    """``seal[i, j]``: the last primitive that surely covers pixel (i, j) whole with a value of its own (a wide
    one whose material ignores what lies below, no clip, no label), or -1. What is painted before it there
    cannot show. Per row this is an interval: where the slab lies inside the primitive (``_row_depth_bound``)
    away from its rim, less a pixel at each end so that ``_coverage`` gives exactly 1 on all of it."""
    n_rows, n_cols = seal.shape
    c = n_cols * px / 2.0
    r00, r01, r10, r11, bx, by, z0, gx, gy = pose[0], pose[1], pose[2], pose[3], pose[4], pose[5], pose[6], pose[7], pose[8]
    for k in range(p.shape[0]):
        amin = min(p[k, AX], p[k, AY])
        if int(p[k, MAT]) > 4 or int(p[k, CLIP]) >= 0 or int(p[k, LABEL]) >= 0 or amin < SEAL_MM:
            continue
        inner = 1.0 - 1.5 * px / amin
        i_lo, i_hi, j_lo, j_hi = _pixel_box(p, k, pose, c, px, half, zlo, zhi, n_rows, n_cols)
        for i in range(i_lo, i_hi + 1):
            v = (i + 0.5) * px - c
            ja, jb = _row_span(p, k, pose, v, c, px, j_lo, j_hi)
            if ja > jb:
                continue
            deep = _row_depth_bound(p, k, z0, gx, gy, r00, r01, r10, r11, bx, by, v, ja, jb, c, px, half)
            if deep > 1.0:
                continue
            z_a = z0 + gx * (r00 * ((ja + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((ja + 0.5) * px - c) + r11 * v + by)
            z_b = z0 + gx * (r00 * ((jb + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((jb + 0.5) * px - c) + r11 * v + by)
            if min(z_a, z_b) - half < p[k, ZMIN] or max(z_a, z_b) + half > p[k, ZMAX]:
                continue
            u_lo, u_hi = _row_roots(p, k, pose, v, min(inner * inner, 1.0 - deep) - 1e-9)
            if u_lo > u_hi:
                continue
            sa = max(ja, int(math.ceil((u_lo + c) / px - 0.5)) + 1)
            sb = min(jb, int(math.floor((u_hi + c) / px - 0.5)) - 1)
            for j in range(sa, sb + 1):
                seal[i, j] = k


@njit(cache=True, nogil=True)
def _render_kernel(p, pose, half, px, field, grad, out, label_area, seal, use_seal):
    """Paint primitives p (rows in order) over ``out`` (the render grid, HU, float32). Pixel (i, j) lies at
    image position (u, v) = ((j + 0.5) px - c, (i + 0.5) px - c) mm, c = half the field of view, and at head
    coordinates x = pose[0] u + pose[1] v + pose[4], y = pose[2] u + pose[3] v + pose[5],
    z = pose[6] + pose[7] x + pose[8] y. ``label_area[s]`` gains the area (pixels) of label s's blood. A pixel
    is painted only from its ``seal`` on (``_seal_kernel``; the painting of the hidden layers was most of the
    time), except by primitives with a label, whose area counts wherever they lie."""
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
    if use_seal:
        _seal_kernel(p, pose, half, px, zlo, zhi, seal)
    for k in range(p.shape[0]):
        i_lo, i_hi, j_lo, j_hi = _pixel_box(p, k, pose, c, px, half, zlo, zhi, n_rows, n_cols)
        clip = int(p[k, CLIP])
        label = int(p[k, LABEL])
        mat = int(p[k, MAT])
        need_depth = mat == 1 or mat == 2 or mat == 6
        for i in range(i_lo, i_hi + 1):
            v = (i + 0.5) * px - c
            if use_seal:
                ja, jb = _row_span_in_slab(p, k, pose, v, c, px, j_lo, j_hi, half)
            else:
                ja, jb = _row_span(p, k, pose, v, c, px, j_lo, j_hi)
            if ja > jb:
                continue
            deep = _row_depth_bound(p, k, z0, gx, gy, r00, r01, r10, r11, bx, by, v, ja, jb, c, px, half)
            for j in range(ja, jb + 1):
                if seal[i, j] > k and label < 0:
                    continue
                u = (j + 0.5) * px - c
                x = r00 * u + r01 * v + bx
                y = r10 * u + r11 * v + by
                z = z0 + gx * x + gy * y
                cov, lu, lv, depth = _coverage(p, k, x, y, z, half, px, need_depth, deep)
                if cov <= 0.0:
                    continue
                if clip >= 0:
                    c2, a, b, d2 = _coverage(p, clip, x, y, z, half, px, False, 2.0)
                    cov *= c2
                    if cov <= 0.0:
                        continue
                cur = out[i, j]
                val, w = _material_value(p, k, cur, x, y, z, lu, lv, depth, field, grad)
                out[i, j] = cur + (val - cur) * cov
                if label >= 0:
                    label_area[label] += cov * w


def render_plane(prims: np.ndarray, pose: np.ndarray, half_mm: float, px_mm: float, field: np.ndarray,
                 grad: np.ndarray, background: np.ndarray, skip_hidden: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``prims`` over a copy of ``background`` (float32 HU on the render grid, pixels of ``px_mm``)
    seen through ``pose`` (9 numbers, see ``_render_kernel``); returns the image and the area (render pixels)
    of each of the 5 subtypes' blood. ``skip_hidden=False`` paints every layer (the reference the skipping
    is tested against: both give the same image)."""
    if prims.ndim != 2 or prims.shape[1] != N_COLUMNS:
        raise ValueError(f"Expected a primitive table (n, {N_COLUMNS}). Received: shape={prims.shape}")
    pose = np.ascontiguousarray(pose, np.float64)
    if pose.shape != (9,):
        raise ValueError(f"Expected a pose of 9 numbers. Received: shape={pose.shape}")
    out = np.array(background, dtype=np.float32, copy=True, order="C")
    area = np.zeros(5, np.float64)
    seal = np.full(out.shape, -1, np.int32)
    _render_kernel(np.ascontiguousarray(prims, np.float64), pose, float(half_mm), float(px_mm), field, grad, out, area,
                   seal, bool(skip_hidden))
    return out, area
