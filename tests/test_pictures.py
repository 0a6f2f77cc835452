"""Previews, stats plots and the HTML evaluation report."""

import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import zarr
from matplotlib.image import imread

from ichprep.build import BuildConfig, build
from ichprep.cli import main
from ichprep.windows import parse_windows


@pytest.fixture(scope="module")
def rnn_store(synth_corpus, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("pic") / "rnn.zarr")
    build(BuildConfig(source=synth_corpus["dicom_dir"], out=url, labels=synth_corpus["labels"],
                      windows=parse_windows("rnn"), preset="rnn", workers=0, salt="s", shard_slices=8))
    return url


def test_preview_ten_windows_and_series(rnn_store, tmp_path, capsys):
    g = zarr.open_group(rnn_store, mode="r")
    positive = int(np.flatnonzero(g["type"][:] < 32)[0])
    out = tmp_path / "p.png"
    assert main(["preview", rnn_store, "--index", str(positive), "--out", str(out)]) == 0
    assert "10 panels" in capsys.readouterr().out
    img = imread(out)
    assert img.shape[1] > img.shape[0] > 300  # two rows of five panels
    # the panels show stored values: the brain-window panel is not blank
    assert img.std() > 0.05
    out2 = tmp_path / "s.png"
    assert main(["preview", rnn_store, "--sop", str(g["sop_uid"][positive]), "--series", "--neighbours", "2",
                 "--out", str(out2)]) == 0
    assert "5 panels" in capsys.readouterr().out
    assert main(["preview", rnn_store, "--type", "99", "--out", str(out2)]) == 2
    assert main(["preview", rnn_store, "--index", "100000", "--out", str(out2)]) == 2


def test_stats_plot(rnn_store, tmp_path, capsys):
    out = tmp_path / "stats.png"
    assert main(["stats", rnn_store, "--plot", str(out)]) == 0
    img = imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 3 * img.shape[0]  # three panels side by side


@pytest.fixture(scope="module")
def report(rnn_store, tmp_path_factory):
    from ichtrain.cli import main as train_main

    run = str(tmp_path_factory.mktemp("rep") / "run")
    assert train_main(["fit", rnn_store, "--out", run, "--model", "rnn", "--image-size", "32", "--epochs", "1",
                       "--batch-size", "8", "--epoch-size", "16", "--split", "0.5,0.25,0.25", "--quiet"]) == 0
    assert train_main(["evaluate", run, "--split", "val"]) == 0
    return os.path.join(run, "report.html")


def test_report_is_self_contained(report):
    text = open(report, encoding="utf-8").read()
    assert "weighted log loss" in text and "Training curves" in text and "<table>" in text
    assert not re.search(r"src=['\"](?!data:)", text), "every image is embedded"
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(pngs) >= 4  # two threshold plots, the curves, at least one gallery thumbnail
    for b in pngs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium'); "
                                             "the report's structure is still checked above")
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1100,1400",
                    "file://" + report], check=True, capture_output=True, timeout=120)
    img = imread(shot)
    assert img.shape[0] == 1400 and img.shape[1] == 1100
    assert img[..., :3].std() > 0.05, "screenshot is blank"


def test_training_curves_plot_a_log_whose_val_split_was_empty(tmp_path):
    """Keras logs NA for the metrics of an empty val split: the report's curves plot what was measured (the
    training loss and AUC) and leave the NA columns out, where the report once failed on float('NA')."""
    from ichtrain.report import _curves
    from ichtrain.run import RunDir

    run = RunDir(str(tmp_path / "run"))
    os.makedirs(os.path.dirname(run.log), exist_ok=True)
    with open(run.log, "w") as fh:
        fh.write("epoch,auc,learning_rate,loss,val_auc,val_learning_rate,val_loss\n"
                 "0,0.55,0.001,0.79,NA,NA,NA\n1,0.61,0.001,0.70,NA,NA,NA\n")
    png = _curves(str(tmp_path / "run"))
    assert png is not None and imread(io.BytesIO(base64.b64decode(png)), format="png").shape[2] in (3, 4)
