"""ichtrain export: a SavedModel loaded by plain TensorFlow (ichprep and ichtrain unimportable) in a fresh process
gives the probabilities ichtrain predict writes for the same DICOMs."""

import csv
import os
import subprocess
import sys
import warnings

import numpy as np
import pydicom

from ichtrain.cli import main

_LOAD = """
import sys
sys.modules["ichprep"] = None  # neither package may be needed to load or run the export
sys.modules["ichtrain"] = None
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
hu = np.load(sys.argv[2])
np.save(sys.argv[3], m.serve(tf.constant(hu)).numpy())
"""


def _hu(path):
    """int16 HU as an hu store holds them: pixel_array, the RSNA 12-bit fix, the modality LUT."""
    from ichprep.pixels import fix_rsna_12bit, is_rsna_12bit_defect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        raw, intercept = ds.pixel_array, float(ds.RescaleIntercept)
        if is_rsna_12bit_defect(int(ds.BitsStored), int(ds.PixelRepresentation), intercept):
            raw, intercept = fix_rsna_12bit(raw), -1000.0
        return str(ds.SOPInstanceUID), np.rint(raw.astype(np.float64) * float(ds.RescaleSlope) + intercept).astype(np.int16)


def test_an_export_matches_predict_in_a_fresh_process_without_this_package(brain_store, brain_seed, synth_corpus,
                                                                         tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["fit", brain_store, "--out", run, "--image-size", "32", "--batch-size", "8", "--epoch-size", "16",
                 "--epochs", "1", "--split", "0.6,0.2,0.2", "--seed", str(brain_seed), "--tta", "flip+crop",
                 "--quiet"]) == 0
    out = str(tmp_path / "export")
    assert main(["export", run, "--out", out]) == 0
    assert "SavedModel of baseline" in capsys.readouterr().out
    assert main(["predict", run, synth_corpus["dicom_dir"], "--out", str(tmp_path / "sub.csv")]) == 0
    with open(tmp_path / "sub.csv") as fh:
        rows = list(csv.DictReader(fh))
    want = {}
    for r in rows:
        sop, label = r["ID"].rsplit("_", 1)
        want.setdefault(sop, {})[label] = float(r["Label"])
    files = sorted(os.listdir(synth_corpus["dicom_dir"]))[:12]
    sops, hus = zip(*(_hu(os.path.join(synth_corpus["dicom_dir"], f)) for f in files))
    np.save(tmp_path / "hu.npy", np.stack(hus))
    res = subprocess.run([sys.executable, "-c", _LOAD, out, str(tmp_path / "hu.npy"), str(tmp_path / "p.npy")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(tmp_path / "p.npy")
    names = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
    expected = np.array([[want[s][n] for n in names] for s in sops])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # the CSV's six decimals


def test_export_refuses_an_existing_folder_and_runs_it_cannot_carry(brain_store, brain_seed, tmp_path, capsys):
    run = str(tmp_path / "run")
    common = ["--image-size", "32", "--batch-size", "8", "--epoch-size", "16", "--epochs", "1", "--split",
              "0.6,0.2,0.2", "--seed", str(brain_seed), "--quiet"]
    assert main(["fit", brain_store, "--out", run, *common]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", run, "--out", str(mine)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", run, "--out", str(mine), "--overwrite"]) == 2
    assert "never overwritten" in capsys.readouterr().err and (mine / "notes.txt").exists()
    good = str(tmp_path / "good")
    assert main(["export", run, "--out", good]) == 0 and main(["export", run, "--out", good, "--overwrite"]) == 0
    cropped = str(tmp_path / "cropped")
    assert main(["fit", brain_store, "--out", cropped, "--crop", "head", *common]) == 0
    capsys.readouterr()
    assert main(["export", cropped, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head crop" in err[0]
