"""What the per-chunk crc32c costs (schema 3), measured in one run on one store's own shards.

For every slice of the first shards of STORE: the codec's encode and decode alone, and the CRC-32C of the
encoded bytes (computed once when writing, checked once when reading). Reports ms per slice and the
checksum's share of encode and of decode: what the build and the stream pay for detecting bit rot.

Usage: python benchmarks/checksum.py STORE [--shards 8] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(url: str, shards: int = 8, repeat: int = 5) -> dict:
    import google_crc32c
    import zarr

    from ichprep import shardio, shardread

    images = zarr.open_group(url, mode="r")["images"]
    reader = shardread.shard_reader(images)
    if reader is None:
        raise SystemExit(f"{url}: not a store of ichprep's shard layout")
    codec, checksummed = shardio._chain(images.metadata.codecs[0].codecs)
    S = reader.rows_per_shard
    n_shards = min(shards, -(-images.shape[0] // S))
    slices = np.concatenate([np.asarray(images[s * S:(s + 1) * S]) for s in range(n_shards)])
    encode = bytes if codec is shardio._RAW else codec.encode
    chunks = [encode(x) for x in slices]
    out = np.empty(slices.shape[1:], slices.dtype)

    def decode_all():
        for c in chunks:
            if codec is shardio._RAW:
                out.reshape(-1).view(np.uint8)[:] = np.frombuffer(c, np.uint8)
            else:
                codec.decode(c, out=out)

    n = len(chunks)
    t_encode = _best(lambda: [encode(x) for x in slices], repeat) / n
    t_decode = _best(decode_all, repeat) / n
    t_crc = _best(lambda: [google_crc32c.value(c) for c in chunks], repeat) / n
    name = "none" if codec is shardio._RAW else type(codec).__name__
    return dict(store=url, slices=n, checksummed=bool(checksummed), codec=name,
                kib_per_slice=round(sum(map(len, chunks)) / n / 1024, 1),
                encode_ms=round(t_encode * 1e3, 4), decode_ms=round(t_decode * 1e3, 4), crc32c_ms=round(t_crc * 1e3, 4),
                crc_share_of_encode=round(t_crc / (t_encode + t_crc), 4),
                crc_share_of_decode=round(t_crc / (t_decode + t_crc), 4))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args(argv)
    r = measure(a.store, a.shards, a.repeat)
    print(f"{r['store']}: {r['slices']} slices, codec {r['codec']}, {r['kib_per_slice']} KiB/slice encoded")
    print(f"  encode {r['encode_ms']:.3f} ms, decode {r['decode_ms']:.3f} ms, crc32c {r['crc32c_ms']:.4f} ms per slice")
    print(f"  crc32c share: {100 * r['crc_share_of_encode']:.1f}% of encode + crc, "
          f"{100 * r['crc_share_of_decode']:.1f}% of decode + crc")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
