"""Codecs for a store's images, measured on real slices: size, encode and decode speed, one thread.

Each DICOM in DATA (default: the 252 real RSNA slices in ../shared/data/rsna-unlabelled) becomes the
int16 HU slice an ``hu`` store holds and the float16 full-range slice a ``cnn`` store holds (by ichprep's
own kernels); every codec then encodes and decodes each slice as one chunk, as the stores' shards hold
them (blosc and zstd at several levels, byte or bit shuffle, and a delta filter before them for int16).
Sizes are exact; speeds are the best of ``--repeat`` passes over all slices (the machine is shared).
Every codec's decode is checked to return the slice bit for bit.

    python benchmarks/codecs.py [--data DIR] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np


def _slices(data: str, limit: int | None):
    """(hu int16 list, cnn float16 list, files skipped) of the folder's readable 512 x 512 slices."""
    import pydicom

    from ichprep.kernels import channel_params, hu_slice, window_slice
    from ichprep.pixels import RSNA_FIX_OFFSET, is_rsna_12bit_defect
    from ichprep.windows import PRESETS

    full = channel_params(PRESETS["cnn"], None, None)
    hu, cnn, skipped = [], [], 0
    names = sorted(n for n in os.listdir(data) if n.endswith(".dcm"))[:limit]
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(os.path.join(data, name))
                raw = ds.pixel_array
            except Exception:  # noqa: BLE001 -- a file pydicom cannot decode is not a codec question
                skipped += 1
                continue
        if raw.shape != (512, 512):
            skipped += 1
            continue
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        fix12 = is_rsna_12bit_defect(int(ds.BitsStored), int(ds.PixelRepresentation), intercept)
        if fix12:
            intercept = -float(RSNA_FIX_OFFSET)  # the fix pairs with this intercept (ichprep.pixels)
        hu.append(hu_slice(raw, slope, intercept, fix12)[0])
        cnn.append(window_slice(raw, slope, intercept, fix12, *full)[0][:, :, 0])
    return hu, cnn, skipped


def _codecs():
    """name -> (numcodecs codec, applies to): the candidates."""
    from numcodecs import Blosc, Delta, Zstd

    out = {}
    for cname, levels in (("lz4", (1, 5, 9)), ("zstd", (1, 3)), ("lz4hc", (5,))):
        for shuffle, sname in ((Blosc.SHUFFLE, "shuffle"), (Blosc.BITSHUFFLE, "bitshuffle")):
            for level in levels:
                out[f"blosc-{cname}-{level} {sname}"] = (Blosc(cname=cname, clevel=level, shuffle=shuffle), "both")
    for level in (1, 3, 5):
        out[f"zstd-{level}"] = (Zstd(level=level), "both")
    for cname, level, shuffle, sname in (("lz4", 5, Blosc.BITSHUFFLE, "bitshuffle"), ("lz4", 5, Blosc.SHUFFLE, "shuffle"),
                                         ("zstd", 1, Blosc.BITSHUFFLE, "bitshuffle")):
        out[f"delta + blosc-{cname}-{level} {sname}"] = ([Delta(dtype="<i2"), Blosc(cname=cname, clevel=level,
                                                                                    shuffle=shuffle)], "hu")
    return out


def _encode(codec, a: np.ndarray) -> bytes:
    if isinstance(codec, list):
        for c in codec:
            a = c.encode(a)
        return bytes(a)
    return bytes(codec.encode(a))


def _decode(codec, b: bytes, like: np.ndarray) -> np.ndarray:
    if isinstance(codec, list):
        for c in reversed(codec):
            b = c.decode(b)
        return np.frombuffer(b, like.dtype).reshape(like.shape)
    return np.frombuffer(codec.decode(b), like.dtype).reshape(like.shape)


def measure(codec, slices: list[np.ndarray], repeat: int) -> dict:
    encoded = [_encode(codec, s) for s in slices]
    for s, e in zip(slices, encoded):
        if not np.array_equal(_decode(codec, e, s).view(np.uint16), s.view(np.uint16)):
            raise AssertionError("a codec did not return the slice it was given")
    enc = dec = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for s in slices:
            _encode(codec, s)
        enc = min(enc, time.perf_counter() - t)
        t = time.perf_counter()
        for s, e in zip(slices, encoded):
            _decode(codec, e, s)
        dec = min(dec, time.perf_counter() - t)
    raw = sum(s.nbytes for s in slices)
    stored = sum(len(e) for e in encoded)
    return dict(ratio=round(raw / stored, 3), kib_per_slice=round(stored / len(slices) / 1024, 1),
                encode_per_s=round(len(slices) / enc, 1), decode_per_s=round(len(slices) / dec, 1))


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "rsna-unlabelled"),
                   help="a folder of DICOM slices (default: ../shared/data/rsna-unlabelled)")
    p.add_argument("--limit", type=int, help="at most this many files")
    p.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts (default 3)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if not os.path.isdir(a.data):
        p.error(f"--data {a.data!r} is not a folder")
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    import numcodecs

    numcodecs.blosc.set_nthreads(1)  # one core, as each build or stream worker uses
    hu, cnn, skipped = _slices(a.data, a.limit)
    if not hu:
        p.error(f"no readable 512x512 DICOM slices in {a.data!r}")
    results = {}
    print(f"{len(hu)} real slices ({skipped} skipped), one thread, best of {a.repeat}\n", file=sys.stderr)
    print("| codec | hu ratio | hu KiB/slice | hu enc/s | hu dec/s | cnn ratio | cnn KiB/slice | cnn enc/s | cnn dec/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (codec, applies) in _codecs().items():
        r = results[name] = dict(hu=measure(codec, hu, a.repeat))
        if applies == "both":
            r["cnn"] = measure(codec, cnn, a.repeat)
        c = r.get("cnn", {})
        print(f"| {name} | {r['hu']['ratio']} | {r['hu']['kib_per_slice']} | {r['hu']['encode_per_s']} | "
              f"{r['hu']['decode_per_s']} | {c.get('ratio', '')} | {c.get('kib_per_slice', '')} | "
              f"{c.get('encode_per_s', '')} | {c.get('decode_per_s', '')} |", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(slices=len(hu), skipped=skipped, repeat=a.repeat, results=results), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
