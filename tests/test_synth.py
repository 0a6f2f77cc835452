"""ichprep synth: the anatomical phantom (its kernel against plain numpy geometry), reproducibility of every
version, version 3's lower head, labels from the blood drawn, and what the command refuses."""

import hashlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

from ichprep.cli import main
from ichprep.errors import UsageError
from ichprep.phantom import N_COLUMNS, Material, make_field, render_plane
from ichprep.synth import SynthConfig, write_corpus


def _digest(corpus: str) -> str:
    h = hashlib.sha256()
    dicom = os.path.join(corpus, "dicom")
    for name in sorted(os.listdir(dicom)):
        h.update(name.encode())
        with open(os.path.join(dicom, name), "rb") as fh:
            h.update(fh.read())
    with open(os.path.join(corpus, "labels.csv"), "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()


# Version 1 as ichprep wrote it before version 2 existed (commit d242bd9): old corpora stay reproducible.
V1_DIGEST = "922e5dd2a4fa042d5b0c83aa4bdef7fec3e2e48c82a1b1d011c8e3ef72756c91"


def test_version_1_writes_the_same_bytes_as_before(tmp_path):
    write_corpus(tmp_path / "c", SynthConfig(studies=3, slices=5, seed=7, compressed_fraction=0.3, version=1))
    assert _digest(str(tmp_path / "c")) == V1_DIGEST


# Version 2 as ichprep wrote it before version 3 existed (commit 6602d65).
V2_DIGEST = "479778138238651b4ef1adb48afe536f06670d85b13e37baff6d71eaa70c92c9"


def test_version_2_writes_the_same_bytes_as_before(tmp_path):
    write_corpus(tmp_path / "c", SynthConfig(studies=2, slices=6, seed=4, compressed_fraction=0.3, version=2))
    assert _digest(str(tmp_path / "c")) == V2_DIGEST


def test_version_3s_low_cuts_hold_fat_air_and_bone_inside_the_head_where_version_2s_were_even_muscle():
    """The lowest cuts of a series (the atlas and the maxilla, ~1-2 cm above the series' start): version 2 drew
    an even oval of muscle around the atlas; version 3 draws subcutaneous fat, fat planes, the pharynx's air and
    the mandible inside it. Shares of the head's pixels by HU band, plain numpy on the rendered plane."""
    from ichprep.anatomy import plan_study

    def bands(version, seed):
        rng = np.random.default_rng(seed)
        anatomy = plan_study(rng, [], version)
        field, grad = make_field(rng)
        bg = np.full((192, 192), -1000.0, np.float32)
        img, _ = render_plane(anatomy.prims, np.array([1.0, 0, 0, 1, 0, 0, -54.0, 0, 0]), 2.5, 1.0, field, grad, bg)
        head = img > -300  # the head's soft tissue and bone
        inside = head.copy()  # the head with its holes (air, deep fat) filled, row by row between its edges
        for row in inside:
            cols = np.flatnonzero(row)
            if cols.size:
                row[cols[0]:cols[-1] + 1] = True
        n = inside.sum()
        return ((img >= -150) & (img < -30) & inside).sum() / n, ((img < -300) & inside).sum() / n, \
            ((img > 300) & inside).sum() / n

    for seed in range(3):
        fat2, air2, bone2 = bands(2, seed)
        fat3, air3, bone3 = bands(3, seed)
        assert fat3 > max(0.08, 4 * fat2), (seed, fat2, fat3)  # v2: only the partial volume at its edges
        assert air3 > air2 and bone3 > bone2, (seed, air2, air3, bone2, bone3)


def test_the_default_version_3_same_seed_same_bytes_other_seed_other_bytes_not_version_2s(tmp_path):
    cfg = SynthConfig(studies=2, slices=6, seed=4, compressed_fraction=0.3)
    assert cfg.version == 3
    write_corpus(tmp_path / "a", cfg)
    write_corpus(tmp_path / "b", cfg)
    write_corpus(tmp_path / "c", SynthConfig(studies=2, slices=6, seed=5))
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b")) != _digest(str(tmp_path / "c"))
    assert _digest(str(tmp_path / "a")) != V2_DIGEST


def _prim(c, a, mat=Material.CONST, val=100.0, label=-1, zmin=-1e9, zmax=1e9, clip=-1, p=(0, 0, 0, 0, 0)):
    row = np.zeros(N_COLUMNS)
    row[0:3], row[3:6] = c, a
    row[6], row[7], row[8], row[9] = 1.0, 0.0, zmin, zmax
    row[10], row[11], row[13], row[14] = mat, val, label, clip
    row[15:20] = p
    row[20] = 2.0
    return row


def _grid(n, px):
    c = (np.arange(n) + 0.5) * px - n * px / 2
    v, u = np.meshgrid(c, c, indexing="ij")
    return u, v


def test_a_sphere_covers_each_pixel_by_its_chord_through_the_slab():
    """Plain numpy reference: a pixel's value is the fraction of the slab [z - h, z + h] inside the sphere's
    chord at that pixel; away from the rim (where the kernel softens by half a pixel) they agree."""
    n, px, r, h = 64, 1.0, 20.0, 2.5
    field, grad = make_field(np.random.default_rng(0))
    for z in (0.0, 12.0, 18.5, 21.0):
        prims = np.stack([_prim((3.0, -2.0, 0.0), (r, r, r), val=1.0, label=1)])
        pose = np.array([1, 0, 0, 1, 0, 0, z, 0, 0], float)
        img, area = render_plane(prims, pose, h, px, field, grad, np.zeros((n, n), np.float32))
        u, v = _grid(n, px)
        rho2 = (u - 3.0) ** 2 + (v + 2.0) ** 2
        chord = np.sqrt(np.clip(r * r - rho2, 0, None))
        want = np.clip(np.minimum(chord, z + h) - np.maximum(-chord, z - h), 0, None) / (2 * h)
        away = np.abs(np.sqrt(rho2) - r) > 1.5 * px
        np.testing.assert_allclose(img[away], want[away], atol=2e-3)
        assert area[1] == pytest.approx(want.sum(), rel=0.05, abs=2.0)  # the label's area is what was drawn
        assert area[[0, 2, 3, 4]].sum() == 0


def test_the_pose_moves_rotates_and_tilts_the_head():
    """A long thin box-like ellipsoid seen through a pose: rotated 90 degrees it lies across the image; a pitch
    moves the cut along z with y."""
    n, px = 64, 1.0
    field, grad = make_field(np.random.default_rng(0))
    prims = np.stack([_prim((0, 0, 0), (3.0, 25.0, 30.0), val=1.0)])
    bg = np.zeros((n, n), np.float32)
    upright, _ = render_plane(prims, np.array([1, 0, 0, 1, 0, 0, 0, 0, 0.0]), 2.5, px, field, grad, bg)
    turned, _ = render_plane(prims, np.array([0, 1, -1, 0, 0, 0, 0, 0, 0.0]), 2.5, px, field, grad, bg)
    assert upright[:, 32].sum() > 40 and upright[32, :].sum() < 8  # the long axis runs down the image
    assert turned[32, :].sum() > 40 and turned[:, 32].sum() < 8
    shifted, _ = render_plane(prims, np.array([1, 0, 0, 1, 10.0, 0, 0, 0, 0.0]), 2.5, px, field, grad, bg)
    assert np.argmax(shifted[32]) == np.argmax(upright[32]) - 10  # x = u + 10: the object appears 10 px left
    tilted, _ = render_plane(prims, np.array([1, 0, 0, 1, 0, 0, 20.0, 0, 0.5]), 2.5, px, field, grad, bg)
    ys = np.nonzero(tilted[:, 32] > 0.5)[0]
    # z = 20 + y / 2 stays inside |z| < 30 only where y < 20 (rows above 52); upright it is inside all along
    assert ys.max() < 52 + 2 and ys.min() < 20
    assert upright[:, 32][ys].min() > 0.5


def test_blood_fills_only_csf_and_its_label_counts_what_it_filled():
    n, px = 48, 1.0
    field, grad = make_field(np.random.default_rng(1))
    csf = _prim((0, 0, 0), (8, 8, 20), val=8.0)
    bleed = _prim((0, 0, 0), (20, 20, 20), mat=Material.FILL_CSF, val=70.0, label=3, p=(-1e9, 0, 0, 0, 0))
    bleed[12] = 22.0  # fills what is darker than 22 HU
    bg = np.full((n, n), 35.0, np.float32)  # brain
    img, area = render_plane(np.stack([csf, bleed]), np.zeros(9) + np.array([1, 0, 0, 1, 0, 0, 0, 0, 0]), 2.5, px,
                             field, grad, bg)
    u, v = _grid(n, px)
    inside = u * u + v * v < 7 * 7
    outside = u * u + v * v > 9.5 * 9.5
    assert np.allclose(img[inside], 70.0) and np.allclose(img[outside], 35.0)
    assert area[3] == pytest.approx(np.pi * 64, rel=0.1)


def test_kernels_run_as_plain_python(tmp_path):
    """The phantom's kernels also run without Numba (NUMBA_DISABLE_JIT=1) and give the same image."""
    code = ("import numpy as np, sys; from ichprep.anatomy import plan_study; from ichprep.phantom import "
            "make_field, render_plane; rng = np.random.default_rng(3); a = plan_study(rng, ['subdural']); "
            "f, g = make_field(rng); img, area = render_plane(a.prims, np.array([1, 0, 0, 1, 0, 0, 40.0, 0, 0]), "
            "2.5, 8.0, f, g, np.full((32, 32), -1000, np.float32)); np.save(sys.argv[1], img)")
    for jit in ("0", "1"):
        env = dict(os.environ, NUMBA_DISABLE_JIT=jit)
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{jit}.npy")], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"), atol=1e-3)


def test_a_corpus_looks_like_a_series_from_skull_base_to_vertex(tmp_path):
    s = write_corpus(tmp_path / "c", SynthConfig(studies=3, slices=16, seed=2, hemorrhage_fraction=1.0))
    assert s["slices"] == 48 and s["version"] == 3 and s["positive"] > 0
    by_series: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in os.listdir(s["dicom_dir"]):
            ds = pydicom.dcmread(os.path.join(s["dicom_dir"], name))
            assert float(ds.SliceThickness) in (3.0, 5.0) and 0.39 < float(ds.PixelSpacing[0]) < 0.61
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    from ichprep.realism import measure_slice

    for slices in by_series.values():
        slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        first = [measure_slice(_hu(d), float(d.PixelSpacing[0])) for d in slices[:4]]
        middle = measure_slice(_hu(slices[8]), float(slices[8].PixelSpacing[0]))
        assert any(m.skull_base for m in first)  # the lower slices show the skull base
        assert middle.brain_area_cm2 > 60 and not middle.skull_base


def _hu(ds) -> np.ndarray:
    from ichprep.pixels import fix_rsna_12bit, is_rsna_12bit_defect

    raw, intercept = ds.pixel_array, float(ds.RescaleIntercept)
    if is_rsna_12bit_defect(int(ds.BitsStored), int(ds.PixelRepresentation), intercept):
        raw, intercept = fix_rsna_12bit(raw), -1000.0
    return raw.astype(np.float32) + intercept


@pytest.mark.parametrize("subtype", ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"])
def test_a_slice_is_labelled_where_its_blood_changed_the_pixels(subtype):
    """The same head rendered with and without its lesion: the slices whose label area reaches the threshold
    are those where the lesion changed the image over about that area, and no others."""
    from ichprep.anatomy import plan_study
    from ichprep.synth import _MIN_BLOOD_MM2

    k = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"].index(subtype)
    px = 1.0
    labelled = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        anatomy = plan_study(rng, [subtype])
        field, grad = make_field(rng)
        lesion = anatomy.prims[:, 13] >= 0
        bg = np.full((256, 256), -1000.0, np.float32)
        for z in np.arange(-40.0, 120.0, 5.0):
            pose = np.array([1, 0, 0, 1, 0, 0, z, 0, 0.0])
            with_blood, area = render_plane(anatomy.prims, pose, 2.5, px, field, grad, bg)
            without, _ = render_plane(anatomy.prims[~lesion], pose, 2.5, px, field, grad, bg)
            changed = float((np.abs(with_blood - without) > 3.0).sum()) * px * px
            assert area[[i for i in range(5) if i != k]].sum() == 0
            if area[k] * px * px >= _MIN_BLOOD_MM2[k]:
                labelled += 1
                assert changed >= 0.5 * _MIN_BLOOD_MM2[k], (seed, z, area[k], changed)
            else:
                assert changed <= 4 * _MIN_BLOOD_MM2[k], (seed, z, area[k], changed)
    assert labelled >= 3  # each subtype shows up on several slices


@pytest.mark.parametrize("argv, fragment", [
    (["--studies", "0"], "studies an integer in [1, 100000]"),
    (["--slices", "2"], "slices an integer in [4, 1000]"),
    (["--slices", "100000"], "slices an integer in [4, 1000]"),
    (["--seed", "-1"], "seed an integer"),
    (["--hemorrhage-fraction", "nan"], "hemorrhage_fraction a number in [0, 1]"),
    (["--hemorrhage-fraction", "1.5"], "hemorrhage_fraction a number in [0, 1]"),
    (["--version", "4"], "invalid choice"),
    (["--studies", "100000", "--slices", "1000"], "at most 10,000,000 slices"),
])
def test_impossible_sizes_and_counts_exit_2_with_one_line(tmp_path, capsys, argv, fragment):
    assert main(["synth", str(tmp_path / "c"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "c").exists()


def test_a_folder_that_is_not_a_corpus_is_refused_and_an_earlier_corpus_is_replaced(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["synth", str(mine), "--studies", "1", "--slices", "4", "--quiet"]) == 2
    assert "holds no earlier ichprep synth corpus (found: notes.txt)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and not (mine / "dicom").exists()
    corpus = tmp_path / "corpus"
    assert main(["synth", str(corpus), "--studies", "2", "--slices", "4", "--seed", "1", "--quiet"]) == 0
    first = set(os.listdir(corpus / "dicom"))
    assert main(["synth", str(corpus), "--studies", "1", "--slices", "4", "--seed", "2", "--quiet"]) == 0
    second = set(os.listdir(corpus / "dicom"))
    assert len(second) == 4 and not first & second  # the earlier corpus's files are gone, not mixed in
    with pytest.raises(UsageError, match="which is a file"):
        write_corpus(mine / "notes.txt", SynthConfig(studies=1, slices=4))


def test_the_painters_shortcuts_paint_the_same_image_and_areas_as_painting_every_layer_in_full():
    """The renderer skips what a wide opaque primitive hides, pixels whose slab misses a primitive, a dome's
    depth where a bound shows it deep enough, and the cortex's field lookups below its deepest fold; painting
    every layer and computing every pixel in full is the reference. Heads of every subtype, tilted and turned,
    from skull base to vertex, at the synth's render pixel, and a finer one (the cortex's shortcuts are
    checked on that many more pixels)."""
    from ichprep.anatomy import plan_study

    for seed, subtypes in enumerate([[], ["subdural"], ["epidural", "intraventricular"],
                                     ["intraparenchymal", "subarachnoid"], ["subdural", "subarachnoid"]]):
        rng = np.random.default_rng(100 + seed)
        anatomy = plan_study(rng, subtypes, 3 if seed >= 3 else 2)
        field, grad = make_field(rng)
        bg = np.full((128, 128), -1000.0, np.float32)
        yaw = rng.uniform(-0.3, 0.3)
        for z, px in zip(np.linspace(anatomy.z_bottom, anatomy.z_top, 9), (1.9, 0.9) * 5):
            pose = np.array([np.cos(yaw), np.sin(yaw), -np.sin(yaw), np.cos(yaw), rng.uniform(-10, 10),
                             rng.uniform(-10, 10), z, rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)])
            fast, fast_area = render_plane(anatomy.prims, pose, 2.5, px, field, grad, bg)
            every, every_area = render_plane(anatomy.prims, pose, 2.5, px, field, grad, bg, shortcuts=False)
            np.testing.assert_array_equal(fast, every)
            np.testing.assert_array_equal(fast_area, every_area)


def test_the_sulcus_field_and_its_gradient_match_the_plain_sum_of_plane_waves():
    """make_field's compiled separable sum against the textbook formula, sum of cos(k.x + phase), and its
    gradient's norm against that formula's derivative."""
    from ichprep.phantom import FIELD_MM, FIELD_N

    field, grad = make_field(np.random.default_rng(5), waves=6)
    # the same draws make_field takes: directions, then phases
    rng = np.random.default_rng(5)
    box, k0, ks = FIELD_N * FIELD_MM, FIELD_N * FIELD_MM / 22.0, []
    while len(ks) < 6:
        v = rng.normal(size=3)
        v = np.rint(v / np.linalg.norm(v) * k0 * rng.uniform(0.8, 1.2))
        if np.linalg.norm(v) > 0:
            ks.append(v)
    phases = rng.uniform(0, 2 * np.pi, 6)
    x = np.arange(FIELD_N) * FIELD_MM
    pos = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)  # (n, n, n, 3) mm
    angle = pos @ (np.array(ks).T * 2 * np.pi / box) + phases  # (n, n, n, waves)
    reference = np.cos(angle).sum(-1) / np.sqrt(6 / 2)
    np.testing.assert_allclose(field, reference, atol=1e-4)
    assert field.dtype == np.float32 and field.shape == (FIELD_N,) * 3
    # d/dx cos(k.x + phase) = -sin(k.x + phase) k, summed over the waves
    wavevectors = np.array(ks) * 2 * np.pi / box
    gradient = -np.sin(angle) @ wavevectors / np.sqrt(6 / 2)  # (n, n, n, 3)
    np.testing.assert_allclose(grad, np.linalg.norm(gradient, axis=-1), atol=1e-5)


def test_slices_written_from_the_template_bytes_equal_pydicoms_writer(tmp_path, monkeypatch):
    """A series' uncompressed slices after its first are the first one's bytes with four elements re-encoded
    (ichprep.synthio.SeriesWriter); pydicom's own writer, every slice from the dataset, gives the same files."""
    from ichprep import synthio

    cfg = SynthConfig(studies=2, slices=6, seed=9, compressed_fraction=0.3)
    write_corpus(tmp_path / "template", cfg)
    monkeypatch.setattr(synthio.SeriesWriter, "_write_from_bytes", lambda self, *args: False)
    write_corpus(tmp_path / "pydicom", cfg)
    assert _digest(str(tmp_path / "template")) == _digest(str(tmp_path / "pydicom"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encode_gives_the_plain_numpy_formulas_stored_values(dtype):
    """The compiled encoder against the formulas written out in numpy: rint (halves to even), the intercept,
    the clip to the stored range, the padding outside the circle, the RSNA defect's two's complement."""
    from ichprep.synthio import encode

    rng = np.random.default_rng(3)
    hu = rng.uniform(-3500, 36000, (64, 64)).astype(dtype)
    hu[0, :8] = np.array([-0.5, 0.5, 1.5, 2.5, -1000.5, 3095.5, -1024.5, 4071.5], dtype)
    outside = rng.random((64, 64)) < 0.2
    h = np.rint(hu).astype(np.int64)
    want = {"signed16": np.where(outside, -2000, np.clip(h + 1024, -32768, 32767)).astype(np.int16),
            "unsigned12": np.where(outside, 0, np.clip(h + 1024, 0, 4095)).astype(np.uint16)}
    d = np.where(outside, -1000, np.clip(h, -1000, 3095))
    want["rsna12defect"] = np.where(d < 0, d + 4096, d).astype(np.uint16)
    for encoding, expected in want.items():
        raw, _ = encode(hu, encoding, outside)
        assert raw.dtype == expected.dtype
        np.testing.assert_array_equal(raw, expected, err_msg=encoding)


def test_the_field_lookup_is_scipys_periodic_trilinear_interpolation():
    """wavefield.trilinear at points on both sides of the origin and beyond one period, against scipy's
    map_coordinates (order 1, wrapped grid), for the field's own size and another."""
    from scipy.ndimage import map_coordinates

    from ichprep.wavefield import FIELD_MM, FIELD_N, trilinear

    rng = np.random.default_rng(11)
    for n in (FIELD_N, 7):
        f = rng.normal(size=(n, n, n)).astype(np.float32)
        pts = rng.uniform(-2.5 * n * FIELD_MM, 2.5 * n * FIELD_MM, (500, 3))
        pts[:3] = [[0.0, 0.0, 0.0], [n * FIELD_MM, -FIELD_MM, 3 * FIELD_MM], [-1e-9, 0.5, n * FIELD_MM - 1e-9]]
        got = np.array([trilinear(f, *p) for p in pts])
        want = map_coordinates(f.astype(np.float64), (pts / FIELD_MM).T, order=1, mode="grid-wrap")
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"n={n}")


@pytest.mark.parametrize("flip", [False, True])
def test_finish_slice_is_a_bilinear_2x_upsampling_plus_a_window_of_the_noise_bank(flip):
    """acquisition.finish_slice against numpy: pixel centres aligned (source position (i + 0.5) / 2 - 0.5,
    clamped at the edges), plus sd x the bank's window at the offsets it draws, mirrored when it draws a flip."""
    from ichprep.acquisition import finish_slice

    rng = np.random.default_rng(4)
    render = rng.normal(0, 300, (64, 64)).astype(np.float32)
    bank = rng.normal(size=(200, 200)).astype(np.float32)
    for seed in range(40):  # until the generator draws the flip asked for
        draws = np.random.default_rng(seed)
        oy, ox = draws.integers(0, 200 - 128 + 1, 2)
        if (draws.random() < 0.5) == flip:
            break
    got = finish_slice(render, bank, np.random.default_rng(seed), 3.5)
    pos = (np.arange(128) + 0.5) / 2 - 0.5
    lo = np.floor(pos).astype(int)
    t = pos - lo
    a, b = np.clip(lo, 0, 63), np.clip(lo + 1, 0, 63)
    r = render.astype(np.float64)
    across = r[:, a] * (1 - t) + r[:, b] * t
    up = across[a] * (1 - t)[:, None] + across[b] * t[:, None]
    window = bank[oy:oy + 128, ox:ox + 128]
    want = up + 3.5 * (window[:, ::-1] if flip else window)
    assert got.shape == (128, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3)
