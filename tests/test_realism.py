"""ichprep.realism measures what it says on drawings whose answers are known, and benchmarks/realism.py runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ichprep.realism import BANDS, band_of, measure_slice, series_correlation

PX = 0.5  # mm per pixel


def _head(n=512, a=70.0, b=90.0, angle_deg=0.0, shift=(0.0, 0.0), bone_mm=6.0, brain_hu=35.0, noise=0.0, seed=0):
    """An elliptical head (a, b: semi-axes in mm) with a bone ring of ``bone_mm``, brain inside, air outside."""
    c = (np.arange(n) - (n - 1) / 2) * PX
    y, x = np.meshgrid(c, c, indexing="ij")
    t = math.radians(angle_deg)
    xr = (x - shift[0]) * math.cos(t) + (y - shift[1]) * math.sin(t)
    yr = -(x - shift[0]) * math.sin(t) + (y - shift[1]) * math.cos(t)
    outer = (xr / a) ** 2 + (yr / b) ** 2 <= 1
    inner = (xr / (a - bone_mm)) ** 2 + (yr / (b - bone_mm)) ** 2 <= 1
    hu = np.full((n, n), -1000.0, np.float32)
    hu[outer] = 1200.0
    hu[inner] = brain_hu
    if noise:
        hu += np.random.default_rng(seed).normal(0, noise, hu.shape).astype(np.float32)
    return hu, x, y


def test_head_area_centre_tilt_and_skull_thickness_of_a_drawn_head():
    hu, _, _ = _head(a=70, b=90, angle_deg=12, shift=(15.0, -8.0), bone_mm=6.0)
    m = measure_slice(hu, PX)
    assert m.head_area_cm2 == pytest.approx(math.pi * 7.0 * 9.0, rel=0.02)
    assert m.centre_offset_mm == pytest.approx(math.hypot(15, 8), abs=1.0)
    assert m.tilt_deg == pytest.approx(12, abs=1.5)
    assert m.skull_thickness_mm == pytest.approx(6.0, rel=0.2)  # along rays; the ellipse makes it ~6-6.5
    assert m.brain_area_cm2 == pytest.approx(math.pi * 6.4 * 8.4, rel=0.05)
    assert m.internal_air_cm2 == 0 and not m.skull_base and not m.vertex
    bone_share = 1 - (6.4 * 8.4) / (7.0 * 9.0)
    assert m.band_fractions[4] == pytest.approx(bone_share, abs=0.01)
    assert m.band_fractions[2] == pytest.approx(1 - bone_share, abs=0.01)


def test_air_cells_mark_the_skull_base_and_a_small_head_the_vertex():
    hu, x, y = _head()
    hu[(x - 10) ** 2 + (y + 50) ** 2 < 12 ** 2] = -950.0  # a sinus: 4.5 cm^2 of air deep in the head
    assert measure_slice(hu, PX).skull_base
    small, _, _ = _head(a=40, b=50, bone_mm=8)
    m = measure_slice(small, PX)
    assert m.vertex and not m.skull_base


def test_bright_spots_are_counted_inside_the_brain_not_in_the_skull():
    hu, x, y = _head()
    for cx, cy in ((0, 0), (20, 10), (-25, -30)):
        hu[(x - cx) ** 2 + (y - cy) ** 2 < 2.0 ** 2] = 200.0  # three calcifications of ~12 mm^2
    hu[(x - 0.3) ** 2 + (y - 5) ** 2 < 0.3 ** 2] = 200.0  # a single pixel: noise, not a spot
    assert measure_slice(hu, PX).bright_spots == 3


def test_noise_sd_and_texture():
    white, _, _ = _head(noise=5.0, seed=1)
    m = measure_slice(white, PX)
    # a 2-mm Gaussian smoothing removes nearly all of white noise
    assert m.noise_sd_hu == pytest.approx(5.0, rel=0.1)
    from scipy import ndimage

    hu, _, _ = _head()
    n = np.random.default_rng(2).normal(0, 1, hu.shape)
    coarse = ndimage.gaussian_filter(n, 1.5)
    coarse = (coarse / coarse.std() * 5.0).astype(np.float32)
    textured = measure_slice(hu + coarse, PX)
    assert textured.noise_freq_per_mm < 0.6 * m.noise_freq_per_mm  # correlated noise sits lower in frequency


def test_nothing_to_measure_gives_nans_not_errors():
    m = measure_slice(np.full((64, 64), -1000.0, np.float32), PX)
    assert m.head_area_cm2 == 0 and math.isnan(m.skull_thickness_mm) and not m.skull_base
    with pytest.raises(ValueError, match="2-D"):
        measure_slice(np.zeros((2, 2, 2)), PX)


def test_bands_and_series_correlation():
    assert band_of(np.array([-1000, -100, 35, 150, 800], np.float32)).tolist() == [0, 1, 2, 3, 4]
    assert len(BANDS) == 5
    hu, _, _ = _head(noise=3.0, seed=3)
    same = series_correlation([hu, hu.copy()])
    other, _, _ = _head(noise=3.0, seed=4)
    assert same == pytest.approx(1.0) and series_correlation([hu, other]) < same


def test_ks_distance_matches_scipy():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from realism import ks_distance
    finally:
        sys.path.pop(0)
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1.2, 200)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic)


def test_realism_benchmark_runs_and_reports(tmp_path, real_series):
    """Tiny: the vendored real series against a small synthetic corpus, features only (no timing)."""
    out = tmp_path / "realism.json"
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "realism.py"
    res = subprocess.run([sys.executable, str(bench), "--real", real_series, "--series", real_series,
                          "--studies", "3", "--slices", "8", "--sample", "24", "--no-cnn", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["property"] for r in report["table"]]
    assert "head_area_cm2" in names and "fraction skull base" in names and len(names) >= 18
    assert report["real"] == 32 and report["synthetic"] == 24
    auc = report["discriminator"]["features"]["auc"]
    assert 0.0 <= auc <= 1.0 and "discriminator (features)" in res.stdout
