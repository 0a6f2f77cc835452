"""The ingest benchmark runs end to end on a tiny corpus (no timing assertions: tests are not benchmarks)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "ingest.py"


def test_ingest_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(BENCH), "--slices", "32", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["slices"] == 32
    expected = {"naive_a", "decode_b", "naive_10win", "build_cnn_1", "build_rnn_1", "build_cnn_2"}
    assert set(report["results"]) == expected
    for name, r in report["results"].items():
        assert r["slices_per_s"] > 0 and r["peak_rss_mib"] > 10, name
    assert report["results"]["build_rnn_1"]["compression"] > 1
    assert all(v is not None and v > 0 for v in report["ratios"].values())
    assert report["projection_full_dataset"]["build_cnn_1"]["disk_gib"] > 0
    assert "| build_cnn_1 |" in res.stdout


def test_stream_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "stream.json"
    bench = BENCH.parent / "stream.py"
    res = subprocess.run([sys.executable, str(bench), "--slices", "64", "--preset", "cnn", "--batch-size", "8",
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"cnn/naive_tfdata", "cnn/zarr_loop", "cnn/ichtrain"}
    for name, r in report["results"].items():
        assert r["slices"] >= 32 and r["slices_per_s"] > 0 and len(r["rss_mib"]) == 3, name
    assert all(v > 0 for v in report["ratios"].values())
