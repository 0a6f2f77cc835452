"""The ingest benchmark runs end to end on a tiny corpus (no timing assertions: tests are not benchmarks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "ingest.py"


def test_ingest_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(BENCH), "--slices", "32", "--rounds", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["slices"] == 32 and report["rounds"] == 2
    expected = {"naive_a", "decode_b", "naive_10win", "build_cnn_1", "build_rnn_1", "build_cnn_2", "build_hu_1"}
    assert set(report["results"]) == expected
    for name, r in report["results"].items():
        assert r["slices_per_s"] > 0 and r["peak_rss_mib"] > 10 and r["rounds"] == 2, name
        lo, hi = r["slices_per_s_range"]
        assert lo <= r["slices_per_s"] <= hi, name  # the median of two runs lies between them
        # the build's own pixel-pass timing, read from the store: faster than the whole command
        assert (r.get("pixel_pass_slices_per_s", 0) > r["slices_per_s"]) == name.startswith("build"), name
    assert report["results"]["build_rnn_1"]["compression"] > 1
    assert all(v is not None and v > 0 for v in report["ratios"].values())
    assert report["projection_full_dataset"]["build_cnn_1"]["disk_gib"] > 0
    assert "| build_cnn_1 |" in res.stdout
    assert subprocess.run([sys.executable, str(BENCH), "--rounds", "0"], capture_output=True).returncode == 2


def test_stream_benchmark_runs_and_reports(tmp_path):
    """The stream and the .npy loop on both cnn stores (each contender is a process that imports TensorFlow:
    every one of them runs in the slow test below)."""
    out = tmp_path / "stream.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "stream.py"), "--slices", "64", "--preset", "cnn",
                          "--batch-size", "8", "--contenders", "ichtrain_f16,npy_loop", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"cnn/ichtrain_f16", "cnn-none/npy_loop", "cnn-none/ichtrain_f16"}
    for name, r in report["results"].items():
        assert r["slices"] >= 32 and r["slices_per_s"] > 0 and len(r["rss_mib"]) == 3, name
        assert 0 < r["cpu_share"] < 64, name  # CPU seconds over wall seconds: at most one per core
    assert set(report["ratios"]) == {"cnn-none: ichtrain_f16 / npy_loop (target >= 0.8)"}
    assert all(v > 0 for v in report["ratios"].values())
    bad = subprocess.run([sys.executable, str(BENCH.parent / "stream.py"), "--contenders", "floor,nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nope" in bad.stderr


@pytest.mark.slow
def test_stream_benchmark_runs_every_contender(tmp_path):
    out = tmp_path / "stream.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "stream.py"), "--slices", "64", "--preset", "cnn",
                          "--batch-size", "8", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"cnn/floor", "cnn/naive_tfdata", "cnn/zarr_loop", "cnn/ichtrain",
                                      "cnn/ichtrain_f16", "cnn/ichtrain_k1", "cnn/ichtrain_k2", "cnn/ichtrain_128",
                                      "cnn/ichtrain_128_light", "cnn/ichtrain_128_f16", "cnn/ichtrain_128_light_f16",
                                      "cnn-none/floor",
                                      "cnn-none/npy_loop", "cnn-none/ichtrain", "cnn-none/ichtrain_f16",
                                      "cnn-none/ichtrain_f16_noahead"}
    assert all(v > 0 for v in report["ratios"].values())


@pytest.mark.slow
def test_stream_benchmark_hu_store_reports_both_places_of_the_windows(tmp_path):
    out = tmp_path / "stream.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "stream.py"), "--slices", "64", "--preset", "hu",
                          "--batch-size", "8", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"hu/ichtrain_cnn_f16", "hu/hu_to_model", "hu/hu_model_cpu"} <= set(report["results"])
    assert report["ratios"]["hu: model's layer on this CPU / cnn windows f16 in the reader"] > 0


def test_replicated_real_series_keeps_pixels_and_makes_new_series(real_series, tmp_path):
    import importlib.util
    import warnings

    import pydicom

    spec = importlib.util.spec_from_file_location("ingest_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.replicate(real_series, str(tmp_path / "rep"), 2)
    originals, copies = bench._files(real_series), bench._files(out)
    assert len(copies) == 2 * len(originals)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("ignore")  # RSNA-style ID_ UIDs, read lazily
        src = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, originals)}
        got = list(map(pydicom.dcmread, copies))
        assert len({str(d.SOPInstanceUID) for d in got}) == len(got)
        assert len({str(d.SeriesInstanceUID) for d in got}) == 2 * len({str(d.SeriesInstanceUID) for d in src.values()})
        for d in got:
            o = src[str(d.SOPInstanceUID)[:-4]]
            assert d.PixelData == o.PixelData and d.file_meta.TransferSyntaxUID == o.file_meta.TransferSyntaxUID
            assert (d.BitsStored, d.PixelRepresentation, d.RescaleIntercept) == (o.BitsStored, o.PixelRepresentation,
                                                                                 o.RescaleIntercept)


def test_checksum_benchmark_runs_on_a_store(tmp_path, synth_corpus):
    from ichprep.cli import main

    store = tmp_path / "s.zarr"
    assert main(["build", synth_corpus["dicom_dir"], "--out", str(store), "--workers", "0", "--quiet"]) == 0
    out = tmp_path / "checksum.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "checksum.py"), str(store), "--shards", "1", "--repeat", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["checksummed"] and r["codec"] == "Blosc" and r["slices"] == 48
    assert r["encode_ms"] > 0 and r["decode_ms"] > 0 and r["crc32c_ms"] > 0
    assert 0 < r["crc_share_of_encode"] < 1 and 0 < r["crc_share_of_decode"] < 1


@pytest.mark.slow  # 30-40 s: it trains three models; benchmarks/context.py's own figures come from full runs
def test_context_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "context.json"
    bench = BENCH.parent / "context.py"
    res = subprocess.run([sys.executable, str(bench), "--studies", "10", "--slices", "4", "--seeds", "3",
                          "--epochs", "1", "--series-epochs", "2", "--image-size", "32", "--split", "0.5,0.25,0.25", "--batch-size", "4",
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    (seed,) = report["seeds"]
    assert seed["seed"] == 3 and seed["patients"] > 0 and 0 < seed["prior"] < 1
    for name in ("slice", "k1", "series", "series_scratch"):
        assert seed[name]["weighted_log_loss"]["value"] > 0, name
    s = report["summary"]
    assert s["series_over_slice_wll"] == s["series_wll"] / s["slice_wll"]
    assert "series / slice wll" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("which, variants, first", [
    ("windows", ["plain", "tta+crop", "tta+crop+3windows"], "plain"),
    ("tta", ["plain tta=none", "plain tta=flip", "plain tta=flip+crop", "3windows+crop tta=none",
             "3windows+crop tta=flip", "3windows+crop tta=flip+crop"], "itself without views"),
])
def test_recipe_benchmark_runs_and_reports(tmp_path, which, variants, first):
    out = tmp_path / "recipe.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "recipe.py"), "--set", which, "--studies", "10",
                          "--slices", "6", "--seeds", "3", "--epochs", "1", "--image-size", "32",
                          "--split", "0.5,0.25,0.25", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    row = report["seeds"][0]
    assert row["variants"] == variants
    assert row[variants[0]]["weighted_log_loss_minus_first"]["value"] == 0
    assert f"mean wll minus {first}" in res.stdout


def test_codecs_benchmark_checks_every_round_trip_and_reports(real_series, tmp_path):
    out = tmp_path / "codecs.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "codecs.py"), "--data", real_series, "--limit", "3",
                          "--repeat", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["slices"] == 3 and report["skipped"] == 0
    results = report["results"]
    assert "blosc-lz4-5 bitshuffle" in results and "delta + blosc-lz4-5 bitshuffle" in results
    for name, r in results.items():
        # int16 HU of real CT compress; ratio = raw bytes / stored bytes, the slices being 512 x 512 x 2 bytes
        assert 1.0 < r["hu"]["ratio"] < 20 and r["hu"]["kib_per_slice"] == pytest.approx(512.0 / r["hu"]["ratio"],
                                                                                           rel=0.01), name
        assert r["hu"]["encode_per_s"] > 0 and r["hu"]["decode_per_s"] > 0, name
    assert "cnn" not in results["delta + blosc-lz4-5 bitshuffle"]  # an int16 filter: hu only
    assert subprocess.run([sys.executable, str(BENCH.parent / "codecs.py"), "--data", str(tmp_path / "none")],
                          capture_output=True, timeout=60).returncode == 2


def test_evict_writes_back_and_drops_every_file_under_a_folder(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("stream_bench", BENCH.parent / "stream.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.bin").write_bytes(b"1" * 5000)
    (tmp_path / "a" / "y.bin").write_bytes(b"2" * 3000)
    (tmp_path / "z.bin").write_bytes(b"3" * 7)
    assert bench.evict([str(tmp_path / "a"), str(tmp_path / "z.bin"), str(tmp_path / "missing")]) == 8007
    assert (tmp_path / "a" / "b" / "x.bin").read_bytes() == b"1" * 5000  # nothing lost, only uncached


@pytest.mark.slow
def test_stream_benchmark_cold_mode_reads_from_the_disk(tmp_path):
    out = tmp_path / "stream.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "stream.py"), "--slices", "64", "--preset", "cnn",
                          "--batch-size", "8", "--cold", "--contenders", "disk,npy_loop,ichtrain_f16", "--json",
                          str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cold"] and {"cnn/disk", "cnn-none/disk", "cnn-none/npy_loop"} <= set(report["results"])
    assert report["ratios"]["cold cnn: ichtrain_f16 / the disk's sequential read"] > 0


def test_append_benchmark_runs_and_checks_the_store(real_series, tmp_path):
    out = tmp_path / "append.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "append.py"), "--data", real_series, "--base", "2",
                          "--new", "1", "--rounds", "1", "--workers", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["base_slices"] == 64 and report["new_slices"] == 32
    c = report["checks"]
    assert c["existing_shards"] > 0 and c["existing_shards_changed"] == 0 and c["new_shards"] > 0
    assert c["verify"] == "OK" and c["base_digest_equal"] and c["old_patients_moved"] == 0 and c["new_rows"] == 32
    assert 0 < report["ratio_median"] < 5
    (phases,) = report["append_phases_s"]  # the append's own phases and the rest add up to its wall time
    assert {"start", "headers", "pixels", "other"} <= set(phases) and phases["pixels"] > 0 and phases["other"] > 0
    assert sum(phases.values()) == pytest.approx(report["append_s"][0], abs=0.01)


def test_scale_benchmark_grows_a_store_by_appends_and_verifies_it(real_series, tmp_path):
    out = tmp_path / "scale.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "scale.py"), "--data", real_series, "--slices", "128",
                          "--window", "32", "--workers", "1", "--work", str(tmp_path), "--control", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [w["slices"] for w in report["windows"]] == [32] * 4 and report["total_slices"] == 128
    assert report["windows"][1]["phases"]["pixels"] > 0 and "OK" in report["verify"]
    for w in report["windows"]:  # each window's control builds: the same sources into a fresh store, before and after
        assert w["relative_rate"] == pytest.approx(sum(w["control_seconds"]) / 2 / w["seconds"], rel=0.02)  # rounded
        assert w["cpu_ms_per_slice"] > 0 and w["control_cpu_ms_per_slice"] > 0
    assert [w["rows_before"] for w in report["windows"]] == [0, 32, 80, 128]  # each append from a shard boundary (48)
    assert report["rate_trend"]["windows"] == 3 and report["relative_rate_trend"]["rows_to"] == 128
    assert report["relative_rate_spread"] >= 1 and report["cpu_per_slice_spread"] >= 1
    assert sorted(os.listdir(tmp_path)) == ["scale.json"]  # its scratch folder (sources, store) is removed


def test_scale_trend_recovers_a_known_slope_and_its_interval_covers_it():
    """benchmarks/scale.py's trend: a relative rate falling 20% over the store's rows is found as -20% exactly
    without noise, and inside its 95% interval with 2% noise; flat noise gives an interval around 0."""
    import numpy as np

    sys.path.insert(0, str(BENCH.parent))
    from scale import trend

    rows = np.arange(14) * 10_080 + 10_080
    exact = np.exp(np.log(0.8) * (rows - rows[0]) / (rows[-1] - rows[0]))
    t = trend(rows.tolist(), exact.tolist())
    assert t["change"] == pytest.approx(-0.2, abs=1e-4) and t["ci95"] == pytest.approx([-0.2, -0.2], abs=1e-3)
    noisy = exact * np.exp(np.random.default_rng(1).normal(0, 0.02, len(rows)))
    t = trend(rows.tolist(), noisy.tolist())
    assert t["ci95"][0] < -0.2 < t["ci95"][1] and t["ci95"][1] < 0
    flat = trend(rows.tolist(), np.exp(np.random.default_rng(2).normal(0, 0.02, len(rows))).tolist())
    assert flat["ci95"][0] < 0 < flat["ci95"][1]
    assert trend([1, 2], [1.0, 1.0]) is None  # two windows: no interval


def test_transfer_benchmark_reports_a_submission_by_cut_level(tmp_path):
    """``benchmarks/transfer.py --predictions``: each slice's cut level as ichprep.realism measures it, and the
    mean predicted ``any`` per level and overall, checked against numpy on the same submission."""
    import numpy as np

    from ichprep.realism import measure_slice
    from ichprep.synth import SynthConfig, write_corpus

    sys.path.insert(0, str(BENCH.parent))
    from realism import load_hu

    corpus = write_corpus(tmp_path / "c", SynthConfig(studies=1, slices=8, seed=2))
    names = sorted(f[:-4] for f in os.listdir(corpus["dicom_dir"]))
    p_any = np.random.default_rng(0).random(len(names)).round(4)
    sub = tmp_path / "sub.csv"
    sub.write_text("ID,Label\n" + "".join(f"{n}_{lab},{p if lab == 'any' else 0.0}\n" for n, p in zip(names, p_any)
                                          for lab in ("subdural", "any")))
    out = tmp_path / "t.json"
    res = subprocess.run([sys.executable, str(BENCH.parent / "transfer.py"), "--real", corpus["dicom_dir"],
                          "--predictions", str(sub), "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    base = np.array([measure_slice(*load_hu(os.path.join(corpus["dicom_dir"], n + ".dcm"))[:2]).skull_base
                     for n in names])
    assert r["slices"] == 8 and r["mean_any"] == round(float(p_any.mean()), 4)
    assert r["slices_by_level"]["skull_base"] == int(base.sum())
    if base.any():
        assert r["mean_any_by_level"]["skull_base"] == round(float(p_any[base].mean()), 4)
    assert r["skull_base_in_top_25"] == int(base.sum())  # 8 slices: all of them are in the top 25
    assert r["above_half"] == int((p_any > 0.5).sum())
