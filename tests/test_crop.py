"""Head boxes (ichprep.headbox) and head crops in the stream, against plain numpy references."""

import json
import os

import numpy as np

from ichprep.headbox import block_means, head_box, square_box
from ichtrain.cli import main


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
