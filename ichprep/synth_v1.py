"""Version 1 of the synthetic corpus (``ichprep synth --version 1``), kept so that old corpora stay reproducible.

A deterministic synthetic RSNA-like head-CT corpus, written as real DICOM files.

Each study is one axial series through an ellipsoidal head: air, scalp, skull (bone), brain with
grey/white contrast, lateral ventricles, and, in about half the studies, hemorrhages whose place and
shape follow the subtype, at realistic contrast (blood 60-80 HU against 25-40 HU brain). A lesion spans a
run of slices, growing and shrinking along z; some of its slices are faint (4-10 HU above the tissue
around them: most slices near the run's ends, 12% inside it) while their neighbours are clear, so a
slice alone does not always show it and context along z matters, as in real scans:

* epidural: a biconvex lens against the inner table of the skull;
* subdural: a thin crescent along the inner table;
* subarachnoid: thin streaks in the interhemispheric fissure and sulci;
* intraparenchymal: a round clot inside the brain, away from the ventricles;
* intraventricular: blood layering in the posterior part of a lateral ventricle.

Encodings as in the real data (chosen per series): 16-bit signed with intercept -1024 and padding
outside the scan circle; 12-bit unsigned with intercept -1024 and multi-valued WindowCenter/Width; and
a few series with the RSNA 12-bit defect (two's-complement values declared unsigned, intercept > -100).
A few slices are RLE Lossless or JPEG 2000 Lossless compressed. Labels are written in the challenge's
long format. Identifiers look like RSNA's (``ID_`` + hex), which pydicom warns are not valid UIDs.
"""

from __future__ import annotations

import os

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from ichprep.labels import SUBTYPES
from ichprep.synthio import (CorpusTally, SeriesWriter, encode, hex_id, patient_of, series_encoding,
                             synthetic_patients)

__all__ = ["write_corpus"]

SIZE = 512
PIXEL_MM = 0.48828125  # 250 mm field of view / 512
_HEMORRHAGE_HU = (60.0, 80.0)
_FAINT_AT_ENDS, _FAINT_INSIDE = 0.6, 0.12  # chance that a lesion's slice is faint, near its run's ends / inside
_FAINT_EXCESS_HU = (4.0, 10.0)  # a faint slice's blood above the tissue it lies in


_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_X = (_X - SIZE / 2 + 0.5) * PIXEL_MM
_Y = (_Y - SIZE / 2 + 0.5) * PIXEL_MM
_R_FOV = SIZE / 2 * PIXEL_MM


def _ellipse(cx, cy, ax, ay, angle=0.0):
    """Normalised radius^2 of the ellipse (1 on its border) at every pixel."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _X - cx, _Y - cy
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    return u * u + v * v


def _study_plan(rng: np.random.Generator, cfg) -> dict:
    subtypes: list[str] = []
    if rng.random() < cfg.hemorrhage_fraction:
        k = 1 if rng.random() < 0.65 else 2
        subtypes = [str(s) for s in rng.choice(SUBTYPES[:5], size=k, replace=False)]
    lesions = []
    for st in subtypes:
        center = rng.uniform(0.35, 0.65)
        half = rng.uniform(0.12, 0.25)
        lesions.append(dict(
            subtype=st, z0=center - half, z1=center + half,
            angle=rng.uniform(0, 2 * np.pi), side=rng.choice([-1.0, 1.0]),
            size=rng.uniform(0.8, 1.2), hu=rng.uniform(*_HEMORRHAGE_HU), seed=int(rng.integers(1 << 30)),
        ))
    return dict(
        head_a=rng.uniform(68, 78), head_b=rng.uniform(88, 98), tilt=rng.uniform(-0.08, 0.08),
        grey=rng.uniform(36, 42), white=rng.uniform(24, 30), lesions=lesions,
    )


def _slice_hu(plan: dict, t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU image at relative height t in [0, 1], and the label 6-vector."""
    hu = np.full((SIZE, SIZE), -1000.0, np.float32)
    prof = max(0.0, 1.0 - ((t - 0.45) / 0.62) ** 2) ** 0.5
    a, b = plan["head_a"] * prof, plan["head_b"] * prof
    labels = np.zeros(6, np.uint8)
    if a < 8:
        hu += rng.normal(0, 4, hu.shape).astype(np.float32)
        return hu, labels
    tilt = plan["tilt"]
    scalp = _ellipse(0, 0, a + 5, b + 5, tilt)
    outer = _ellipse(0, 0, a, b, tilt)
    inner = _ellipse(0, 0, a - 6, b - 6, tilt)
    hu[scalp <= 1] = 30.0
    hu[outer <= 1] = 1100.0
    brain = inner <= 1
    # grey matter rim, white matter core
    core = _ellipse(0, 0, (a - 6) * 0.78, (b - 6) * 0.78, tilt) <= 1
    hu[brain] = plan["grey"]
    hu[brain & core] = plan["white"]
    # interhemispheric fissure (CSF)
    fissure = brain & (np.abs(_X * np.cos(tilt) + _Y * np.sin(tilt)) < 1.2) & (_ellipse(0, 0, a, b * 0.9, tilt) <= 1)
    hu[fissure] = 8.0
    vent = np.zeros_like(brain)
    if 0.35 < t < 0.65:
        vs = np.sin((t - 0.35) / 0.3 * np.pi)
        for side in (-1.0, 1.0):
            e = _ellipse(side * 7 * vs, -4, 5 * vs + 1, 22 * vs + 2, side * 0.25 + tilt)
            vent |= (e <= 1) & brain
        hu[vent] = 5.0
    for les in plan["lesions"]:
        if not les["z0"] <= t <= les["z1"]:
            continue
        lrng = np.random.default_rng(les["seed"])
        k = np.sqrt(max(0.0, 1 - ((t - (les["z0"] + les["z1"]) / 2) / ((les["z1"] - les["z0"]) / 2)) ** 2))
        if k < 0.2:
            continue
        st, ang, sz = les["subtype"], les["angle"], les["size"] * k
        ux, uy = np.cos(ang), np.sin(ang)
        if st == "epidural":  # lens against the inner table
            rx, ry = (a - 6) * ux * 0.93, (b - 6) * uy * 0.93
            mask = (_ellipse(rx, ry, 5 * sz + 1, 20 * sz + 2, ang) <= 1) & brain
        elif st == "subdural":  # thin crescent along the inner table
            ring = (inner <= 1) & (_ellipse(0, 0, a - 6 - 4 * sz - 1, b - 6 - 4 * sz - 1, tilt) > 1)
            dirn = (_X * ux + _Y * uy) / np.maximum(np.hypot(_X, _Y), 1e-3)
            mask = ring & (dirn > np.cos(0.6 + 0.4 * sz))
        elif st == "subarachnoid":  # streaks: fissure plus a few sulcal lines near the cortex
            mask = fissure & (np.abs(_Y - 20 * uy) < 25 * sz)
            for _ in range(3):
                th = ang + lrng.uniform(-0.8, 0.8)
                r0 = lrng.uniform(0.75, 0.9)
                cx, cy = (a - 6) * r0 * np.cos(th), (b - 6) * r0 * np.sin(th)
                mask |= (_ellipse(cx, cy, 0.9, 9 * sz + 2, th) <= 1) & brain
        elif st == "intraparenchymal":  # round clot in the white matter, off the ventricles
            rx, ry = 28 * ux * les["side"], 30 * uy
            mask = (_ellipse(rx, ry, 9 * sz + 2, 7 * sz + 2, ang) <= 1) & brain & ~vent
        else:  # intraventricular: posterior part of a ventricle
            mask = vent & (_Y > 2) & ((_X * les["side"]) > 0)
        # Some slices of a lesion are faint: near-isodense, a few HU above the tissue around them (partial
        # volume at the ends of its run, clot density varying inside it) while their neighbours are clear.
        faint = rng.random() < (_FAINT_AT_ENDS if k < 0.45 else _FAINT_INSIDE)
        if mask.sum() >= 15:
            noise = lrng.normal(0, 3, int(mask.sum())).astype(np.float32)
            hu[mask] = (hu[mask] + rng.uniform(*_FAINT_EXCESS_HU) if faint else les["hu"]) + noise
            labels[SUBTYPES.index(st)] = 1
    labels[5] = labels[:5].max()
    hu += rng.normal(0, 4, hu.shape).astype(np.float32)
    return hu, labels


def _encode(hu: np.ndarray, encoding: str) -> tuple[np.ndarray, dict]:
    return encode(hu, encoding, (_X * _X + _Y * _Y) > _R_FOV * _R_FOV)


def write_corpus(out_dir: str | os.PathLike, cfg, progress=None) -> dict:
    """Write ``out_dir/dicom/*.dcm`` and ``out_dir/labels.csv``; return a summary dict."""
    out_dir = os.fspath(out_dir)
    dicom_dir = os.path.join(out_dir, "dicom")
    os.makedirs(dicom_dir, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    patients = synthetic_patients(rng, cfg.studies)
    n_patients = len(patients)
    tally = CorpusTally(cfg, progress)
    for s in range(cfg.studies):
        plan = _study_plan(rng, cfg)
        pid, pname = patient_of(s, patients, rng)
        study_uid, series_uid = f"ID_{hex_id(rng, 10)}", f"ID_{hex_id(rng, 10)}"
        encoding = series_encoding(s)
        tally.series(encoding)
        z_base = float(rng.uniform(-200, 100))
        order = rng.permutation(cfg.slices)  # files are not written in z order
        writer = SeriesWriter(study_uid, series_uid, pid, pname, PIXEL_MM)
        for k in order:
            t = (k + 0.5) / cfg.slices
            hu, lab = _slice_hu(plan, t, rng)
            raw, tags = _encode(hu, encoding)
            sop = f"ID_{hex_id(rng, 9)}"
            compress = None
            if rng.random() < cfg.compressed_fraction:
                compress = RLELossless if rng.random() < 0.5 else JPEG2000Lossless
            writer.write(os.path.join(dicom_dir, f"{sop}.dcm"), raw, tags, sop, z_base + 5.0 * k, compress)
            tally.slice(sop, lab, compress is not None)
    return tally.finish(out_dir, dicom_dir, n_patients)
