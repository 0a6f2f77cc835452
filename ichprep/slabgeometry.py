"""Where the slab of a slice meets a primitive of the phantom's table (``ichprep.phantom``): a primitive's
coverage of one pixel's slab, and the rows, columns and bounds that spare the painter most of its pixels. Inline
compiled helpers; ``phantom``'s kernels call them with the table's arrays and scalars."""

from __future__ import annotations

import math

from numba import njit

__all__ = ["N_COLUMNS", "clamp01", "primitive_shape", "coverage", "row_depth_bound", "pixel_box", "row_roots",
           "row_span", "row_span_in_slab"]

# Columns of the primitive table (float64, one row per primitive).
CX, CY, CZ, AX, AY, AZ, COS, SIN, ZMIN, ZMAX, MAT, VAL, VAL2, LABEL, CLIP, P1, P2, P3, P4, P5, ZEXP = range(21)
N_COLUMNS = 21


@njit(cache=True, nogil=True, inline="always")
def clamp01(v):
    return 0.0 if v < 0.0 else (1.0 if v > 1.0 else v)


@njit(cache=True, nogil=True, inline="always")
def primitive_shape(p, k, px):
    """Primitive k's geometry as scalars, with the rim's thresholds (r2 units): read once per primitive, not
    per pixel (the compiler cannot hoist loads of ``p`` past the painter's stores)."""
    ax, ay = p[k, AX], p[k, AY]
    amin = min(ax, ay)
    return (p[k, CX], p[k, CY], p[k, CZ], ax, ay, p[k, AZ], p[k, COS], p[k, SIN], p[k, ZMIN], p[k, ZMAX],
            p[k, ZEXP], amin, 1.0 + 2.0 * px / amin, 1.0 - 1.5 * px / amin)


@njit(cache=True, nogil=True, inline="always")
def coverage(g, x, y, z, half, px, need_depth, deep, enough):
    """Fraction of the slab [z - half, z + half] at (x, y) inside the primitive of shape g (``primitive_shape``),
    softened by half a pixel in the plane; also returns the primitive's local coordinates (u, v: mm along its
    axes) and, when asked, the depth (mm below its surface, the cut planes included). ``deep``: the slab lies
    inside wherever 1 - r2 >= deep (a bound the caller holds for a whole row, which spares most pixels the power
    of a dome's chord). ``enough``: a depth beyond which the material does not depend on it (the phantom's
    ``_depth_enough``); a dome's pixels surely that deep get ``enough`` without the power of their depth."""
    cx, cy, cz, ax, ay, az, cs, sn, zmin, zmax, zexp, amin, rim, inner = g
    dx, dy = x - cx, y - cy
    lu = dx * cs + dy * sn
    lv = -dx * sn + dy * cs
    r2 = (lu / ax) ** 2 + (lv / ay) ** 2
    if r2 >= rim:
        return 0.0, lu, lv, 0.0
    soft = 1.0
    if r2 > inner * inner or inner <= 0.0:  # near the rim: soften by the in-plane distance to it
        r = math.sqrt(r2)
        radial = math.sqrt(dx * dx + dy * dy)
        edge = radial * (1.0 / r - 1.0) if r > 1e-6 else amin
        soft = clamp01(edge / px + 0.5)
        if soft <= 0.0:
            return 0.0, lu, lv, 0.0
    lo_s, hi_s = z - half, z + half  # zexp, the shape along z: |w|^zexp + r2 <= 1 (2: an ellipsoid; more: a dome)
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
        if zexp > 2.0 and aw < 1.0 and min(min(z - zmin, zmax - z), min(amin, az)) >= enough:
            # for a dome |w|^zexp <= w^2 and its derivative zexp |w|^(zexp-1) <= zexp |w|: a lower bound on
            # the depth without a power
            gx, gy, gz = 2.0 * lu / (ax * ax), 2.0 * lv / (ay * ay), zexp * aw / az
            grad_up = math.sqrt(gx * gx + gy * gy + gz * gz)
            if grad_up > 1e-9 and (1.0 - r2 - aw * aw) / grad_up >= enough + 1e-6:
                return cov, lu, lv, enough
        wz = aw * aw if zexp == 2.0 else aw ** zexp
        dwz = zexp * wz / aw if aw > 0.0 else 0.0  # d|w|^zexp/d|w|, with one power
        gx, gy, gz = 2.0 * lu / (ax * ax), 2.0 * lv / (ay * ay), dwz / az
        grad_len = math.sqrt(gx * gx + gy * gy + gz * gz)
        depth = (1.0 - r2 - wz) / grad_len if grad_len > 1e-9 else min(amin, az)
        depth = min(depth, min(z - zmin, zmax - z))
    return cov, lu, lv, depth


@njit(cache=True, nogil=True, inline="always")
def row_depth_bound(p, k, z0, gx, gy, r00, r01, r10, r11, bx, by, v, ja, jb, c, px, half):
    """For pixels ja..jb of the row at v: a bound B with |w|^zexp <= B at both faces of every pixel's slab
    (w = (z - cz) / az; z is affine along the row, so its extremes are at the ends). 2 when none holds."""
    z_a = z0 + gx * (r00 * ((ja + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((ja + 0.5) * px - c) + r11 * v + by)
    z_b = z0 + gx * (r00 * ((jb + 0.5) * px - c) + r01 * v + bx) + gy * (r10 * ((jb + 0.5) * px - c) + r11 * v + by)
    w = max(abs(min(z_a, z_b) - half - p[k, CZ]), abs(max(z_a, z_b) + half - p[k, CZ])) / p[k, AZ]
    if w >= 1.0:
        return 2.0
    return w ** p[k, ZEXP] + 1e-9


@njit(cache=True, nogil=True, inline="always")
def pixel_box(p, k, pose, c, px, half, zlo, zhi, n_rows, n_cols):
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
def row_roots(p, k, pose, v, level):
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
def row_span(p, k, pose, v, c, px, j_lo, j_hi):
    """Columns ja..jb of the row at v that primitive k's ellipse (grown by two pixels) can touch; ja > jb when
    none."""
    u_lo, u_hi = row_roots(p, k, pose, v, 1.0 + 2.0 * px / min(p[k, AX], p[k, AY]))
    if u_lo > u_hi:
        return 0, -1
    return max(j_lo, int(math.floor((u_lo + c) / px - 0.5))), min(j_hi, int(math.ceil((u_hi + c) / px - 0.5)))


@njit(cache=True, nogil=True, inline="always")
def row_span_in_slab(p, k, pose, v, c, px, j_lo, j_hi, half):
    """:func:`row_span` narrowed to the pixels whose slab can meet primitive k. ``coverage`` is 0 unless the
    chord at the pixel reaches the slab, min(r2, 0.9999) < 1 - w^zexp with w the slab's nearest distance to the
    centre in units of AZ, and the slab meets [ZMIN, ZMAX]. Along a row z is affine, so the nearest w over the
    row bounds every pixel's: r2 below that level is a narrower ellipse on the same row. Near a primitive's top
    or bottom most of its in-plane span lies there; none of the pixels cut away had any coverage."""
    ja, jb = row_span(p, k, pose, v, c, px, j_lo, j_hi)
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
    if level >= 0.9999:  # the clamp in coverage: no narrower bound here
        return ja, jb
    u_lo, u_hi = row_roots(p, k, pose, v, level * (1.0 + 1e-9) + 1e-9)  # a hair wider: rounding never cuts
    if u_lo > u_hi:
        return 0, -1
    return max(ja, int(math.floor((u_lo + c) / px - 0.5))), min(jb, int(math.ceil((u_hi + c) / px - 0.5)))
