"""A store on a real S3 API (moto's server on localhost): built by two Dask workers, read back by ichtrain."""

import numpy as np
import pytest
import zarr

from ichprep.build import BuildConfig, build
from ichprep.cli import main as ichprep_main
from ichprep.store import META_ARRAYS, SHARD_ARRAYS
from ichprep.windows import parse_windows
from ichtrain.cli import main as ichtrain_main
from ichtrain.data import StoreStream

from conftest import SPLIT_FRACTIONS, nonempty_split_seed

ARRAYS = ("images", *META_ARRAYS, *SHARD_ARRAYS)


@pytest.fixture
def s3(moto):
    """conftest's moto server: its one bucket."""
    return moto["url"]


def test_build_on_s3_equals_local_and_trains(s3, synth_corpus, tmp_path, capsys):
    kw = dict(source=synth_corpus["dicom_dir"], labels=synth_corpus["labels"], windows=parse_windows("brain"),
              preset=None, salt="s", shard_slices=8)
    local = str(tmp_path / "local.zarr")
    build(BuildConfig(out=local, workers=0, **kw))
    url = f"{s3}/stores/brain.zarr"
    res = build(BuildConfig(out=url, workers=2, **kw))  # a local cluster: the worker processes write to S3
    assert res.written == 60
    ga, gb = zarr.open_group(local, mode="r"), zarr.open_group(url, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    assert dict(ga.attrs)["ichprep"]["complete"] and dict(gb.attrs)["ichprep"]["complete"]

    assert ichprep_main(["verify", url, "--quiet"]) == 0
    stream = StoreStream(url, fractions=SPLIT_FRACTIONS, seed=nonempty_split_seed(url))
    x, _ = next(iter(stream.dataset("val", batch_size=4, dtype="float16")))
    np.testing.assert_array_equal(x.numpy(), ga["images"][:][stream.splits["val"][:4]])
    capsys.readouterr()
    run = tmp_path / "run"
    assert ichtrain_main(["fit", url, "--out", str(run), "--image-size", "32", "--epochs", "1", "--epoch-size", "16",
                          "--batch-size", "8", "--quiet"]) == 0
    assert (run / "model.keras").is_file()
