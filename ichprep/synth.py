"""A deterministic synthetic RSNA-like head-CT corpus, written as real DICOM files with labels.

Version 2 renders each study from a procedural 3-D head (``ichprep.anatomy``,
``ichprep.phantom``) and cuts it as a scanner does:

* **the series**: axial slices from below the skull base to the vertex, 5 mm thick (3 mm in some series),
  so the lower third of a series shows orbits, sinuses, petrous bones, mastoid air cells and the posterior
  fossa, and the top shows the vertex, cut tangentially through bone;
* **the head in the scanner**: size (children included), position off the image centre, rotation in the
  plane, pitch and roll of the cut, on a curved headrest with foam, side supports and sometimes the table;
* **the reconstruction**: pixel spacing (field of view) per series, partial volume through the slice
  thickness, ~1 mm in-plane resolution, and noise of 2.5-7 HU whose texture follows filtered
  back-projection's noise power spectrum (not white), the reconstruction circle padded;
* **anatomy, mimics and lesions**: see ``ichprep.anatomy``. Labels come from the blood actually drawn in
  each slice (at least a few mm^2), so a lesion's first and last slices are faint, partial-volumed, as in
  real scans.

Version 3 (the default) is version 2 with the lower head of ``ichprep.lowerhead`` (the face and neck of
the lowest cuts drawn as they are, not as even muscle) and heads and noise spread as the real slices show them.
Version 1 (``--version 1``, ``ichprep.synth_v1``) is the earlier ellipse phantom; every version stays
reproducible byte for byte. Encodings as in the real data (chosen per series): 16-bit signed with intercept -1024
and padding outside the scan circle; 12-bit unsigned with intercept -1024 and multi-valued
WindowCenter/Width; a few series with the RSNA 12-bit defect. A few slices are RLE Lossless or JPEG 2000
Lossless compressed. The same configuration gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from ichprep.anatomy import plan_study
from ichprep.errors import UsageError
from ichprep.acquisition import finish_slice, noise_bank
from ichprep.phantom import make_field, render_plane
from ichprep.synthio import (CORPUS_MARKER, ENCODINGS, CorpusTally, SeriesWriter, encode, hex_id, patient_of,
                             series_encoding, synthetic_patients)

__all__ = ["SynthConfig", "write_corpus", "ENCODINGS", "VERSIONS", "SIZE"]

VERSIONS = (1, 2, 3)
SIZE = 512
_RENDER = SIZE // 2  # the phantom is drawn at half resolution (~1 mm), then upsampled: CT's own resolution
# Smallest blood area (mm^2) for a slice to carry the subtype's label, about what a reader sees at 5 mm: thin
# blood in sulci and ventricles is counted by the share of its pixels it fills.
_MIN_BLOOD_MM2 = np.array([25.0, 20.0, 15.0, 20.0, 30.0])
# Per positive study: how many subtypes, and how likely each is (RSNA: subdural and subarachnoid the most
# frequent, epidural rare, intraventricular mostly with intraparenchymal).
_N_SUBTYPES = ((1, 0.55), (2, 0.3), (3, 0.12), (4, 0.03))
_SUBTYPE_WEIGHT = {"epidural": 0.05, "intraparenchymal": 0.22, "intraventricular": 0.15, "subarachnoid": 0.28,
                   "subdural": 0.30}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Validated on construction (``UsageError`` names the field and the value)."""

    studies: int = 20
    slices: int = 32
    seed: int = 0
    hemorrhage_fraction: float = 0.5
    compressed_fraction: float = 0.05
    version: int = 3

    def __post_init__(self) -> None:
        for name, lo, hi in (("studies", 1, 100_000), ("slices", 4, 1000), ("seed", 0, 2**63 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise UsageError(f"Expected {name} an integer in [{lo}, {hi}]. Received: {name}={v!r}")
        for name in ("hemorrhage_fraction", "compressed_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise UsageError(f"Expected {name} a number in [0, 1]. Received: {name}={v!r}")
        if self.version not in VERSIONS:
            raise UsageError(f"Expected version one of {list(VERSIONS)}. Received: version={self.version!r}")
        if self.studies * self.slices > 10_000_000:
            raise UsageError(f"Expected at most 10,000,000 slices in all. Received: studies={self.studies}, "
                             f"slices={self.slices} ({self.studies * self.slices:,})")


def prepare_folder(out_dir: str) -> str:
    """Make ``out_dir/dicom`` ready for a corpus; an earlier corpus there (it holds the marker file) is
    replaced, any other non-empty folder is refused."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"Expected a folder for the corpus. Received: {out_dir!r}, which is a file")
    dicom_dir = os.path.join(out_dir, "dicom")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(os.path.join(out_dir, CORPUS_MARKER)):
            found = ", ".join(sorted(os.listdir(out_dir))[:4])
            raise UsageError(f"{out_dir} is not empty and holds no earlier ichprep synth corpus (found: {found}); "
                             "write the corpus into an empty or new folder")
        if os.path.isdir(dicom_dir):
            for name in os.listdir(dicom_dir):  # the earlier corpus's own files only
                if name.startswith("ID_") and name.endswith(".dcm"):
                    os.remove(os.path.join(dicom_dir, name))
    os.makedirs(dicom_dir, exist_ok=True)
    return dicom_dir


def write_corpus(out_dir: str | os.PathLike, cfg: SynthConfig, progress=None) -> dict:
    """Write ``out_dir/dicom/*.dcm`` and ``out_dir/labels.csv``; return a summary dict.

    Args:
        out_dir: a new or empty folder, or one that holds an earlier corpus (replaced).
        cfg: what to generate.
        progress: an object with ``update(done, total)``, called after each slice.

    Raises:
        UsageError: ``out_dir`` is a file, or a non-empty folder that is not a corpus.
    """
    out_dir = os.fspath(out_dir)
    dicom_dir = prepare_folder(out_dir)
    with open(os.path.join(out_dir, CORPUS_MARKER), "w") as fh:
        json.dump({"ichprep_synth": asdict(cfg)}, fh)
    if cfg.version == 1:
        from ichprep import synth_v1

        summary = synth_v1.write_corpus(out_dir, cfg, progress)
    else:
        summary = _write_anatomical_corpus(out_dir, dicom_dir, cfg, progress)
    summary["version"] = cfg.version
    return summary


def _subtypes(rng: np.random.Generator, fraction: float) -> list[str]:
    if rng.random() >= fraction:
        return []
    k = int(rng.choice([n for n, _ in _N_SUBTYPES], p=[p for _, p in _N_SUBTYPES]))
    names = list(_SUBTYPE_WEIGHT)
    w = np.array([_SUBTYPE_WEIGHT[n] for n in names])
    chosen = [str(n) for n in rng.choice(names, size=k, replace=False, p=w / w.sum())]
    if chosen == ["intraventricular"] and rng.random() < 0.6:
        chosen.append("intraparenchymal")
    return chosen


def _write_anatomical_corpus(out_dir: str, dicom_dir: str, cfg: SynthConfig, progress) -> dict:
    """Versions 2 and 3: the anatomical phantom (their seed sequences differ by the version)."""
    root = np.random.SeedSequence([cfg.seed, cfg.version])
    corpus_rng = np.random.default_rng(root.spawn(1)[0])
    banks = [noise_bank(corpus_rng, peak=p) for p in (0.07, 0.09, 0.12)]
    patients = synthetic_patients(corpus_rng, cfg.studies)
    n_patients = len(patients)
    tally = CorpusTally(cfg, progress)
    for s, study_seed in enumerate(root.spawn(cfg.studies + 1)[1:]):
        rng = np.random.default_rng(study_seed)
        pid, pname = patient_of(s, patients, rng)
        encoding = series_encoding(s)
        tally.series(encoding)
        for sop, lab, compressed in _write_series(rng, cfg, dicom_dir, encoding, pid, pname, banks):
            tally.slice(sop, lab, compressed)
    return tally.finish(out_dir, dicom_dir, n_patients)


@dataclass(frozen=True)
class _Scanner:
    """How one series was acquired and reconstructed."""

    pixel_mm: float
    half_thickness: float
    noise_sd: float
    bank: int
    pose: tuple  # yaw, u0, v0, roll slope, pitch slope
    window: tuple[str, str]


# How heads lie and scanners add noise, by version (same draws, other spreads). Version 3's were set against
# benchmarks/realism.py's property table (two corpus seeds): heads turned, moved off centre and tilted out of the
# cut a little more (the real slices' tilt, centre offset and oblique vertex cuts), noise a little lower.
# ``start``: where the series begins, mm from the anatomy's lowest cut.
_POSE_SPREAD = {2: dict(yaw=0.09, u=7.0, v=10.0, roll=0.035, pitch=0.07, noise=(2.0, 5.5), start=(-12.0, 12.0)),
                3: dict(yaw=0.11, u=9.0, v=12.0, roll=0.06, pitch=0.10, noise=(1.8, 5.0), start=(-18.0, 8.0))}


def _scanner(rng: np.random.Generator, version: int) -> _Scanner:
    spread = _POSE_SPREAD[version]
    pixel = 0.48828125 if rng.random() < 0.55 else float(rng.uniform(0.40, 0.60))
    half = 2.5 if rng.random() < 0.8 else 1.5
    yaw = rng.normal(0, spread["yaw"]) if rng.random() < 0.8 else rng.uniform(-0.4, 0.4)
    pose = (float(yaw), float(rng.normal(0, spread["u"])), float(rng.normal(-4, spread["v"])),
            float(math.tan(rng.normal(0, spread["roll"]))), float(math.tan(rng.normal(0.0, spread["pitch"]))))
    window = (("40", "80"), ("35", "135"), ("40", "150"), ("30", "110"))[int(rng.integers(4))]
    return _Scanner(pixel, half, float(rng.uniform(*spread["noise"])), int(rng.integers(3)), pose, window)


def _headrest(rng: np.random.Generator, scanner: _Scanner, head_half_width: float) -> np.ndarray:
    """Air, and what lies outside the head: a curved headrest, its foam, side supports, sometimes the table
    (the render grid, image coordinates)."""
    n, px = _RENDER, scanner.pixel_mm * 2
    c = (np.arange(n) + 0.5) * px - n * px / 2
    v, u = np.meshgrid(c, c, indexing="ij")
    img = np.full((n, n), -1000.0, np.float32)
    yaw, u0, v0 = scanner.pose[:3]
    r_cradle = head_half_width + rng.uniform(8.0, 30.0)
    cu, cv = u0 + rng.normal(0, 4), v0 + rng.uniform(-25.0, 5.0)
    r = np.hypot(u - cu, v - cv)
    below = (v - cv) > -rng.uniform(0.0, 0.5) * r_cradle  # the lower part of the circle
    if rng.random() < 0.75:
        img[below & (r < r_cradle) & (r > r_cradle - rng.uniform(4.0, 12.0))] = rng.uniform(-920.0, -700.0)  # foam
        for k in range(int(rng.integers(1, 3))):
            rr = r_cradle + k * rng.uniform(3.0, 10.0)
            img[below & (np.abs(r - rr) < rng.uniform(0.5, 1.2))] = rng.uniform(80.0, 400.0)
    if rng.random() < 0.3:
        for side in (-1.0, 1.0):
            x = cu + side * rng.uniform(head_half_width + 15.0, head_half_width + 40.0)
            img[(np.abs(u - x) < rng.uniform(0.5, 1.0)) & (v > cv - rng.uniform(20, 60)) & (v < cv + 60)] = \
                rng.uniform(100.0, 350.0)
    if rng.random() < 0.15:
        top = cv + r_cradle + rng.uniform(10.0, 40.0)
        img[(v > top) & (v < top + rng.uniform(4.0, 12.0))] = rng.uniform(100.0, 300.0)
    return img


def _write_series(rng: np.random.Generator, cfg: SynthConfig, dicom_dir: str, encoding: str, pid: str, pname: str,
                  banks: list[np.ndarray]):
    """Render and write one study's series; yields (sop, labels, compressed) per slice."""
    anatomy = plan_study(rng, _subtypes(rng, cfg.hemorrhage_fraction), cfg.version)
    field, grad = make_field(rng)
    scanner = _scanner(rng, cfg.version)
    study_uid, series_uid = f"ID_{hex_id(rng, 10)}", f"ID_{hex_id(rng, 10)}"
    background = _headrest(rng, scanner, head_half_width=float(anatomy.prims[0, 3]))
    yaw, u0, v0, gx, gy = scanner.pose
    cos, sin = math.cos(yaw), math.sin(yaw)
    z_start = anatomy.z_bottom + rng.uniform(*_POSE_SPREAD[cfg.version]["start"])
    spacing = (anatomy.z_top + rng.uniform(-8.0, 3.0) - z_start) / cfg.slices
    z_base = float(rng.uniform(-200, 100))
    px_render = scanner.pixel_mm * 2
    area_mm2 = px_render * px_render
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    c = (SIZE - 1) / 2
    outside = (xx - c) ** 2 + (yy - c) ** 2 > (SIZE / 2) ** 2
    writer = SeriesWriter(study_uid, series_uid, pid, pname, round(scanner.pixel_mm, 8),
                          origin=round(-scanner.pixel_mm * SIZE / 2, 4), thickness=f"{2 * scanner.half_thickness:g}")
    for k in rng.permutation(cfg.slices):  # files are not written in z order
        z = z_start + (k + 0.5) * spacing
        pose = np.array([cos, sin, -sin, cos, -(cos * u0 + sin * v0), sin * u0 - cos * v0, z, gx, gy])
        img, blood = render_plane(anatomy.prims, pose, scanner.half_thickness, px_render, field, grad, background)
        hu = finish_slice(img, banks[scanner.bank], rng, scanner.noise_sd)
        lab = np.zeros(6, np.uint8)
        lab[:5] = blood * area_mm2 >= _MIN_BLOOD_MM2
        lab[5] = lab[:5].max()
        raw, tags = encode(hu, encoding, outside, scanner.window)
        sop = f"ID_{hex_id(rng, 9)}"
        compress = None
        if rng.random() < cfg.compressed_fraction:
            compress = RLELossless if rng.random() < 0.5 else JPEG2000Lossless
        writer.write(os.path.join(dicom_dir, f"{sop}.dcm"), raw, tags, sop, z_base + spacing * k, compress)
        yield sop, lab, compress is not None

