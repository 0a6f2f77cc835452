"""Head boxes (ichprep.headbox) and head crops in the stream, against plain numpy references."""

import json
import os

import numpy as np
import pytest

from ichprep.headbox import BLOCK, HU_TISSUE, block_means, head_box, hu_head_box, square_box
from ichtrain.cli import main


def _scipy_box(means, level, shape):
    """Reference: scipy.ndimage's 3x3 binary opening and (4-connected) labelling of the block grid, the largest
    region (the first on a tie), its bounds in pixels; the whole slice without one."""
    from scipy import ndimage

    h, w = shape
    tissue = ndimage.binary_opening(means > level, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(tissue)
    if n == 0:
        return 0, 0, h, w
    ys, xs = np.nonzero(labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    return (int(ys.min()) * BLOCK, int(xs.min()) * BLOCK, min(h, (int(ys.max()) + 1) * BLOCK),
            min(w, (int(xs.max()) + 1) * BLOCK))


def _dicom_hu(path):
    """Float HU of a DICOM by pydicom's own modality LUT (after the RSNA 12-bit fix where a file has it)."""
    import warnings

    import pydicom
    from pydicom.pixels import apply_modality_lut

    from ichprep.pixels import fix_rsna_12bit, is_rsna_12bit_defect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
        if is_rsna_12bit_defect(int(ds.BitsStored), int(ds.PixelRepresentation), float(ds.RescaleIntercept)):
            return str(ds.SOPInstanceUID), fix_rsna_12bit(raw).astype(np.float64) * float(ds.RescaleSlope) - 1000.0
        return str(ds.SOPInstanceUID), np.asarray(apply_modality_lut(raw, ds), np.float64)


def _drawn_head(n=512, cy=280, cx=240, ry=170, rx=130, rest=True):
    y, x = np.mgrid[0:n, 0:n]
    img = np.zeros((n, n), np.float32)
    img[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = 0.5
    if rest:  # a thin headrest arc below the head, not touching it, and a vertical support at the side
        r = np.hypot(y - cy, x - cx)
        img[(np.abs(r - (ry + 25)) < 1.5) & (y > cy)] = 1.0
        img[40:480, 500:502] = 1.0
    return img


def test_block_means_are_tile_means():
    img = np.random.default_rng(0).random((64, 72)).astype(np.float32)
    np.testing.assert_allclose(block_means(img), img.reshape(8, 8, 9, 8).mean(axis=(1, 3)), rtol=1e-6)


def test_the_head_box_holds_the_head_not_its_headrest():
    y0, x0, y1, x1 = head_box(_drawn_head(), 0.1)
    assert abs(y0 - (280 - 170)) <= 8 and abs(y1 - (280 + 170 + 1)) <= 8
    assert abs(x0 - (240 - 130)) <= 8 and abs(x1 - (240 + 130 + 1)) <= 8
    assert head_box(np.zeros((64, 64), np.float32), 0.1) == (0, 0, 64, 64)


def test_square_boxes_keep_the_aspect_and_add_the_margin():
    b = square_box((100, 200, 300, 300), (512, 512), margin=0.1)  # 200 tall, 100 wide
    side = 200 * 1.2
    np.testing.assert_allclose((b[2] - b[0]) * 511 + 1, side, rtol=1e-5)
    np.testing.assert_allclose((b[3] - b[1]) * 511 + 1, side, rtol=1e-5)
    np.testing.assert_allclose(((b[0] + b[2]) / 2) * 511 + 0.5, 200, rtol=1e-5)  # centred on the box


def _reference_crop(img, box, size):
    """Plain numpy: bilinear samples of a (2 size)^2 grid spanning the box (normalised to pixel centres), 0
    outside the image, then the mean of each 2x2 block."""
    h, w = img.shape
    n = 2 * size
    ys = box[0] * (h - 1) + np.arange(n) * (box[2] - box[0]) * (h - 1) / (n - 1)
    xs = box[1] * (w - 1) + np.arange(n) * (box[3] - box[1]) * (w - 1) / (n - 1)
    out = np.zeros((n, n))
    for i, yy in enumerate(ys):
        for j, xx in enumerate(xs):
            if not (0 <= yy <= h - 1 and 0 <= xx <= w - 1):
                continue
            y0, x0 = int(np.floor(yy)), int(np.floor(xx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ty, tx = yy - y0, xx - x0
            out[i, j] = ((img[y0, x0] * (1 - tx) + img[y0, x1] * tx) * (1 - ty)
                         + (img[y1, x0] * (1 - tx) + img[y1, x1] * tx) * ty)
    return out.reshape(size, 2, size, 2).mean(axis=(1, 3))


def test_a_cropped_stream_is_each_slice_cut_to_its_head(brain_store, brain_seed):
    import zarr

    from ichtrain.data import StoreStream

    s = StoreStream(brain_store, fractions=(0.6, 0.2, 0.2), seed=brain_seed)
    size = 24
    rows = s.splits["val"][:4]
    xs = np.concatenate([x.numpy() for x, _ in s.dataset("val", batch_size=4, image_size=size, crop="head",
                                                         rows=rows)])
    images = zarr.open_group(brain_store, mode="r")["images"]
    for x, row in zip(xs, np.sort(rows)):
        img = np.asarray(images[int(row)][..., 0], np.float32)
        box = square_box(head_box(img, 0.1), img.shape)
        np.testing.assert_allclose(x[..., 0], _reference_crop(img, box, size), atol=2e-3)
        assert box[2] - box[0] < 0.95  # the synthetic heads leave air around them: a real crop


def test_fit_with_head_crops_records_them_and_every_reader_crops(brain_store, brain_seed, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
                 "--epochs", "1", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--crop", "head",
                 "--quiet"]) == 0
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["crop"] == "head"
    from ichtrain.run import input_options

    assert input_options(cfg)["crop"] == "head" and input_options(cfg, training=True)["crop"] == "head"
    assert main(["evaluate", run, "--split", "val"]) == 0
    assert main(["fit", brain_store, "--out", str(tmp_path / "x"), "--crop", "brain", "--quiet"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_compiled_head_box_is_scipys_opening_and_largest_region():
    rng = np.random.default_rng(4)
    for _ in range(400):
        grid = rng.random((rng.integers(3, 24), rng.integers(3, 24))) < rng.uniform(0.2, 0.95)
        img = np.kron(grid, np.ones((BLOCK, BLOCK))).astype(np.float32)
        img += rng.normal(0, 0.01, img.shape).astype(np.float32)
        assert head_box(img, 0.5) == _scipy_box(block_means(img), 0.5, img.shape)
    head = _drawn_head()
    assert head_box(head, 0.1) == _scipy_box(block_means(head), 0.1, head.shape)


def test_a_build_stores_each_slices_head_box_found_on_its_hu(synth_corpus, brain_store, tmp_path):
    """Every usable row's stored box is the reference box of the file's HU (pydicom's modality LUT, numpy
    block means, scipy's opening and labelling), in a windowed and in an hu store alike; verify checks them."""
    import zarr

    from ichprep import store as st
    from ichprep.build import BuildConfig, build
    from ichprep.verify import verify
    from ichprep.windows import parse_windows

    hu = str(tmp_path / "hu.zarr")
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=hu, windows=parse_windows("hu"), preset="hu",
                      workers=0, salt="s", shard_slices=8))
    want = {}
    for name in sorted(os.listdir(synth_corpus["dicom_dir"])):
        sop, values = _dicom_hu(os.path.join(synth_corpus["dicom_dir"], name))
        means = values.reshape(64, BLOCK, 64, BLOCK).mean(axis=(1, 3))
        want[sop] = _scipy_box(means, HU_TISSUE, values.shape)
    for url in (brain_store, hu):
        g = zarr.open_group(url, mode="r")
        boxes, sops, status = st.head_boxes(g), st.column(g, "sop_uid"), st.column(g, "status")
        assert boxes.shape == (len(sops), 4) and (status == 0).all()
        assert {s: tuple(int(v) for v in b) for s, b in zip(sops, boxes)} == want
        assert not verify(url).problems
    assert len({b for b in want.values()}) > 5  # heads of several sizes and places, not one box
    g = zarr.open_group(hu, mode="r+")
    g[st.HEAD_BOX][3, 2] = 600  # a bottom below the image
    problems = verify(hu).problems
    assert problems == ["head boxes: 1 usable rows without a box inside the image"], problems


def test_hu_head_box_applies_the_rsna_fix_and_the_rescale():
    rng = np.random.default_rng(2)
    hu = np.full((128, 128), -1000.0)
    hu[30:90, 40:100] = rng.uniform(-50, 80, (60, 60))  # a head
    hu[110:112, 10:120] = 300  # a thin table, cut off by the opening
    h = np.rint(hu).astype(np.int64)
    stored = np.where(h < 0, h + 4096, h).astype(np.uint16)  # the RSNA defect: HU as 12-bit two's complement
    want = _scipy_box(h.reshape(16, 8, 16, 8).mean(axis=(1, 3)), HU_TISSUE, hu.shape)
    assert hu_head_box(stored, 1.0, -1000.0, True) == want
    assert want[0] in (24, 32) and want[2] in (88, 96)  # the head, without the table
    scaled = np.rint((hu + 1024) / 0.5).astype(np.int16)  # slope 0.5, intercept -1024
    assert hu_head_box(scaled, 0.5, -1024.0, False) == hu_head_box(stored, 1.0, -1000.0, True)


def test_a_stream_crops_to_the_stored_boxes_and_an_old_store_refuses_them(brain_store, brain_seed, tmp_path):
    import shutil

    import zarr

    from ichprep import store as st
    from ichprep.errors import UsageError
    from ichtrain.data import StoreStream

    s = StoreStream(brain_store, fractions=(0.6, 0.2, 0.2), seed=brain_seed)
    size, rows = 24, s.splits["val"][:4]
    xs = np.concatenate([x.numpy() for x, _ in s.dataset("val", batch_size=4, image_size=size, crop="head",
                                                         boxes="store", rows=rows)])
    g = zarr.open_group(brain_store, mode="r")
    stored = st.head_boxes(g)
    for x, row in zip(xs, np.sort(rows)):
        img = np.asarray(g["images"][int(row)][..., 0], np.float32)
        box = square_box(tuple(int(v) for v in stored[int(row)]), img.shape)
        np.testing.assert_allclose(x[..., 0], _reference_crop(img, box, size), atol=2e-3)
    old = tmp_path / "old.zarr"  # the same store as one from before schema 5: no box columns
    shutil.copytree(brain_store, old)
    shutil.rmtree(old / st.HEAD_BOX)
    attrs = json.loads((old / "zarr.json").read_text())
    attrs["attributes"]["ichprep"]["schema_version"] = 4
    (old / "zarr.json").write_text(json.dumps(attrs))
    s = StoreStream(str(old), fractions=(0.6, 0.2, 0.2), seed=brain_seed)
    with pytest.raises(UsageError, match="stores no head boxes"):
        s.dataset("val", crop="head", boxes="store")
    assert s.dataset("val", batch_size=4, image_size=size, crop="head", rows=rows) is not None  # found as read
