"""How far synthetic CT slices are from real ones: per-slice properties measured the same way on both.

Every measure takes one slice in Hounsfield units (a 2-D float array) and its pixel spacing in mm, and
works on anything: a blank slice, a slice of air, a skull base full of bone and air cells. The
properties are what a radiologist would name when telling a phantom from a patient:

* the head: area, centre offset from the image centre, tilt of its long axis, the table and headrest
  outside it;
* the skull: thickness along rays from the head's centre (the outermost bone run);
* the cut level: air cells and bone inside the head (skull base), a small head (vertex);
* tissue: HU histograms inside the head by band, and the brain's own histogram;
* noise: its standard deviation and texture (the centre of mass of the noise power spectrum, in cycles
  per mm: white noise sits high, real reconstructions lower) in flat brain tissue;
* bright spots: components above 60 HU inside the brain, away from the skull (blood, and its mimics:
  calcified pineal gland, choroid plexus, falx).

``benchmarks/realism.py`` compares the two populations property by property and trains a discriminator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SliceMeasures", "measure_slice", "head_mask", "brain_mask", "BANDS", "band_of",
           "series_correlation", "PROPERTIES"]

# Tissue bands inside the head (HU): air cells, fat, soft tissue and brain, dense tissue and calcium, bone.
BANDS = (("air", -1100.0, -200.0), ("fat", -200.0, -20.0), ("soft", -20.0, 100.0), ("dense", 100.0, 300.0),
         ("bone", 300.0, 4000.0))
BRIGHT_HU = 60.0  # above brain and CSF; blood (50-90 HU acute) and calcium are above it
BONE_HU = 300.0
_HEAD_HU = -300.0  # soft tissue and bone against air (-1000) and foam (-900 .. -600)


@dataclass(frozen=True)
class SliceMeasures:
    """One slice's properties (NaN where a property does not apply, e.g. no head in the slice)."""

    head_area_cm2: float
    centre_offset_mm: float
    tilt_deg: float
    skull_thickness_mm: float
    internal_air_cm2: float
    bone_fraction: float
    brain_area_cm2: float
    noise_sd_hu: float
    noise_freq_per_mm: float
    bright_spots: float
    outside_objects_cm2: float
    band_fractions: tuple[float, ...]
    skull_base: bool
    vertex: bool


PROPERTIES = ("head_area_cm2", "centre_offset_mm", "tilt_deg", "skull_thickness_mm", "internal_air_cm2",
              "bone_fraction", "brain_area_cm2", "noise_sd_hu", "noise_freq_per_mm", "bright_spots",
              "outside_objects_cm2")


def band_of(hu: np.ndarray) -> np.ndarray:
    """Band index (0..4 as in BANDS) of every value."""
    edges = np.array([b[2] for b in BANDS[:-1]], np.float32)
    return np.searchsorted(edges, hu, side="right")


def head_mask(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The head: the largest connected region above -300 HU after an opening of ~3 mm, which cuts the thin
    arcs of the table and headrest away from it, with its holes (air cells, sinuses) filled."""
    tissue = hu > _HEAD_HU
    if not tissue.any():
        return tissue
    radius = max(1, int(round(1.5 / pixel_mm)))
    opened = ndimage.binary_opening(tissue, structure=_disc(radius))
    labels, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = ndimage.sum_labels(opened, labels, index=np.arange(1, n + 1))
    head = labels == (int(np.argmax(sizes)) + 1)
    head = ndimage.binary_dilation(head, structure=_disc(radius)) & tissue  # back to its own edge
    return ndimage.binary_fill_holes(head)


def brain_mask(hu: np.ndarray, head: np.ndarray, pixel_mm: float) -> np.ndarray:
    """The intracranial soft tissue: the largest region of -20..100 HU inside the head, eroded by ~1 mm
    (cutting it from the scalp and from the partial-volume edge of bone), with its holes filled."""
    soft = head & (hu > -20) & (hu < 100)
    if not soft.any():
        return soft
    core = ndimage.binary_erosion(soft, structure=_disc(max(1, int(round(1.0 / pixel_mm)))))
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros_like(soft)
    sizes = ndimage.sum_labels(core, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))


def _disc(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y) <= radius * radius


def _tilt_and_centre(mask: np.ndarray, pixel_mm: float) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    h, w = mask.shape
    offset = math.hypot(cy - (h - 1) / 2, cx - (w - 1) / 2) * pixel_mm
    cov = np.cov(np.stack([xs - cx, ys - cy]).astype(np.float64))
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, int(np.argmax(evals))]  # (x, y) of the long axis
    angle = math.degrees(math.atan2(major[0], major[1]))  # 0 = the long axis runs up-down (front to back)
    angle = (angle + 90.0) % 180.0 - 90.0
    return abs(angle), offset


def _skull_thickness(hu: np.ndarray, head: np.ndarray, pixel_mm: float, rays: int = 72) -> float:
    """Median length of the outermost bone run along rays from the head's centroid (mm)."""
    ys, xs = np.nonzero(head)
    cy, cx = ys.mean(), xs.mean()
    steps = np.arange(0, max(hu.shape), 0.5)
    runs = []
    for a in np.linspace(0, 2 * np.pi, rays, endpoint=False):
        yy = np.rint(cy + steps * math.sin(a)).astype(int)
        xx = np.rint(cx + steps * math.cos(a)).astype(int)
        inside = (yy >= 0) & (yy < hu.shape[0]) & (xx >= 0) & (xx < hu.shape[1])
        yy, xx = yy[inside], xx[inside]
        on_head = head[yy, xx]
        if not on_head.any():
            continue
        last = int(np.nonzero(on_head)[0][-1])  # the head's edge along this ray
        bone = hu[yy[: last + 1], xx[: last + 1]] > BONE_HU
        if not bone.any():
            continue
        idx = np.nonzero(bone)[0]
        end = idx[-1]
        # walk back from the outermost bone sample while it stays bone (allowing one-sample gaps: diploe)
        start = end
        while start > 0 and (bone[start - 1] or (start > 1 and bone[start - 2])):
            start -= 1
        runs.append((end - start + 1) * 0.5 * pixel_mm)
    return float(np.median(runs)) if len(runs) >= rays // 4 else math.nan


def _noise(hu: np.ndarray, brain: np.ndarray, pixel_mm: float, patch: int = 32) -> tuple[float, float]:
    """Noise in flat brain tissue: the standard deviation of what a 2-mm Gaussian smoothing removes, and the
    centroid frequency (cycles/mm) of the power spectrum of plane-detrended patches that lie inside the
    brain, away from its edges, within 0..80 HU."""
    if brain.sum() < patch * patch:
        return math.nan, math.nan
    deep = ndimage.binary_erosion(brain, structure=_disc(max(1, int(round(6.0 / pixel_mm)))))
    flat = deep & (hu > 0) & (hu < 80)
    if flat.sum() < patch * patch:
        return math.nan, math.nan
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma=2.0 / pixel_mm)
    sd = float(np.std((hu - smooth)[flat]))
    # patches on a grid, kept where the whole patch is flat brain
    h, w = hu.shape
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float64)
    design = np.stack([np.ones(patch * patch), yy.ravel(), xx.ravel()], axis=1)
    power = np.zeros((patch, patch))
    n = 0
    for y0 in range(0, h - patch + 1, patch // 2):
        for x0 in range(0, w - patch + 1, patch // 2):
            if not flat[y0:y0 + patch, x0:x0 + patch].all():
                continue
            p = hu[y0:y0 + patch, x0:x0 + patch].astype(np.float64).ravel()
            coef, *_ = np.linalg.lstsq(design, p, rcond=None)
            r = (p - design @ coef).reshape(patch, patch)
            power += np.abs(np.fft.fft2(r)) ** 2
            n += 1
    if n == 0:
        return sd, math.nan
    f = np.fft.fftfreq(patch, d=pixel_mm)
    fr = np.hypot(f[:, None], f[None, :])
    power[0, 0] = 0.0
    return sd, float((fr * power).sum() / max(power.sum(), 1e-12))


def _bright_spots(hu: np.ndarray, brain: np.ndarray, pixel_mm: float) -> int:
    """Components above BRIGHT_HU inside the brain, at least ~2 mm from its edge (the skull's partial
    volume), of at least ~1 mm^2."""
    if not brain.any():
        return 0
    inner = ndimage.binary_erosion(brain, structure=_disc(max(1, int(round(2.0 / pixel_mm)))))
    bright = inner & (hu > BRIGHT_HU)
    labels, n = ndimage.label(bright)
    if n == 0:
        return 0
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1)) * pixel_mm * pixel_mm
    return int((sizes >= 1.0).sum())


def measure_slice(hu: np.ndarray, pixel_mm: float) -> SliceMeasures:
    """Every property of one slice of Hounsfield units (2-D) with square pixels of ``pixel_mm``."""
    hu = np.asarray(hu, np.float32)
    if hu.ndim != 2:
        raise ValueError(f"Expected a 2-D slice. Received: shape={hu.shape}")
    px2 = pixel_mm * pixel_mm / 100.0  # cm^2 per pixel
    head = head_mask(hu, pixel_mm)
    nan = math.nan
    tissue_outside = (hu > _HEAD_HU) & ~head
    outside = float(tissue_outside.sum() * px2)
    if head.sum() * px2 < 5.0:  # no head (air, a scout-like end slice)
        return SliceMeasures(float(head.sum() * px2), nan, nan, nan, 0.0, nan, 0.0, nan, nan, 0.0, outside,
                             tuple([nan] * len(BANDS)), False, False)
    tilt, offset = _tilt_and_centre(head, pixel_mm)
    values = hu[head]
    fractions = np.bincount(band_of(values), minlength=len(BANDS)) / values.size
    # air cells and sinuses: air deeper than ~4 mm inside the head (edges of skin and hair are not counted)
    deep_head = ndimage.binary_erosion(head, structure=_disc(max(1, int(round(4.0 / pixel_mm)))))
    internal_air = float((deep_head & (hu < -400)).sum() * px2)
    brain = brain_mask(hu, head, pixel_mm)
    sd, freq = _noise(hu, brain, pixel_mm)
    area = float(head.sum() * px2)
    bone_fraction = float(fractions[4])
    # skull base: sinuses, mastoid cells and orbits' air, or a large cut that is mostly bone; the vertex is a
    # small cut without them (tangential to the skull there, so mostly bone too)
    skull_base = internal_air >= 2.0 or (bone_fraction > 0.3 and area >= 120.0)
    return SliceMeasures(
        head_area_cm2=area, centre_offset_mm=offset, tilt_deg=tilt,
        skull_thickness_mm=_skull_thickness(hu, head, pixel_mm), internal_air_cm2=internal_air,
        bone_fraction=bone_fraction, brain_area_cm2=float(brain.sum() * px2), noise_sd_hu=sd,
        noise_freq_per_mm=freq, bright_spots=float(_bright_spots(hu, brain, pixel_mm)),
        outside_objects_cm2=outside, band_fractions=tuple(float(f) for f in fractions),
        skull_base=bool(skull_base), vertex=bool(not skull_base and area < 120.0),
    )


def series_correlation(slices: list[np.ndarray]) -> float:
    """Mean Pearson correlation of adjacent slices of one series (in z order), in the brain window 0..80 HU,
    over the pixels where either slice holds head tissue."""
    rs = []
    for a, b in zip(slices[:-1], slices[1:]):
        m = (a > _HEAD_HU) | (b > _HEAD_HU)
        if m.sum() < 100:
            continue
        x, y = np.clip(a[m], 0, 80), np.clip(b[m], 0, 80)
        if x.std() == 0 or y.std() == 0:
            continue
        rs.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(rs)) if rs else math.nan
