"""``ichprep`` command line: build | synth | info | verify | stats | preview | demo.

``main(argv) -> int`` is the entry point (tests call it in-process). Exit codes: 0 success, 1 a
problem found (e.g. a failing check), 2 bad input (a flag, a CSV, a path), with one line on stderr
that names the problem and the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ichprep import __version__
from ichprep.cliutil import EXIT_OK, EXIT_PROBLEM, UsageErrorParser, console_entry, run_main
from ichprep.errors import UsageError
from ichprep.pixels import SIZE_POLICIES
from ichprep.store import CODECS
from ichprep.windows import PRESETS


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="folder of DICOM slices (searched recursively; every file is tried, "
                                  "files that cannot be used are recorded with a reason)")
    p.add_argument("--out", required=True, help="output store: a local path or an fsspec URL (memory://, s3://...)")
    p.add_argument("--labels", help="label CSV in the challenge's long format (ID,Label with rows "
                                    "ID_<sop>_<subtype>); optional, e.g. for a store used only for prediction")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="cnn: one full-range channel (per-slice min-max of HU); rnn: the 10 windows of the "
                        "report's Table 2.1 in its order, 'default' from the file's tags; hu: one int16 channel "
                        "of Hounsfield units, lossless for integer slope/intercept, windowed when read "
                        "('ichtrain fit --windows'), so one store serves every windowing. Default: cnn")
    g.add_argument("--windows", help="any list of windows instead of a preset, e.g. "
                                     "'brain:40/80,subdural:80/200,bone:600/2800' (name:center/width; a "
                                     "Table 2.1 name alone; name:default; name:full)")
    p.add_argument("--on-size", choices=SIZE_POLICIES, default=None,
                   help="slices that are not 512x512 (269 in the RSNA data): resize (bilinear, keeps the "
                        "whole field of view; the default), pad (centre pad/crop), or reject (recorded)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                   help="local Dask worker processes (default: the number of cores, at most 8; forked on "
                        "Linux, so they start in ~0.1 s); 1 (or 0) runs in this process without starting a cluster")
    p.add_argument("--scheduler", help="address of an existing Dask distributed scheduler (tcp://HOST:PORT); "
                                       "its workers read the DICOMs and write the store themselves; its "
                                       "dashboard address is printed when it has one")
    p.add_argument("--dashboard", nargs="?", const=":8787", metavar="ADDRESS",
                   help="serve the local cluster's Dask dashboard (default address :8787; :0 picks a free port) "
                        "and print its link; needs bokeh (pip install 'ichprep[dashboard]')")
    p.add_argument("--shard-slices", type=int, default=None,
                   help="slices per shard: the unit of work and of storage (default 48: a cnn shard's 24 MiB "
                        "buffers stay under glibc's mmap ceiling and are reused, ~16%% faster than 64)")
    p.add_argument("--codec", default=None, choices=CODECS,
                   help="image compression (default auto: blosc-lz4+shuffle for one float16 channel, zstd-1 for "
                        "several, blosc-lz4+shuffle for hu too; measured in docs/performance.md)")
    p.add_argument("--salt", help="secret that keys the PatientID hashes (and so the splits). Default: "
                                  "ICHPREP_SALT, else the file ICHPREP_SALT_FILE or ~/.config/ichprep/salt, made "
                                  "once per user (0600): every store of the same DICOMs gets the same patient keys")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store built with other parameters (never a non-store folder)")
    p.add_argument("--append", action="store_true",
                   help="add to the complete store --out the slices of DICOM_DIR it does not hold (by "
                        "SOPInstanceUID; files it knows are skipped unread) as a new generation, without "
                        "rewriting its shards; a stored slice with other pixels is rejected as 'changed'. The "
                        "layout options default to the store's. Rerun to finish an interrupted append")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file was rejected")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    p = UsageErrorParser(prog="ichprep", description="Head-CT DICOM slices -> a chunked Zarr store of windowed float16 "
                                            "images, labels and per-slice metadata.")
    p.add_argument("--version", action="version", version=f"ichprep {__version__}")
    p.add_argument("--debug", action="store_true", help="also print the traceback of an error (or ICHPREP_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageErrorParser)
    sub.required = True
    b = sub.add_parser("build", help="decode a folder of DICOMs into a store",
                       description="Decode a folder of DICOM slices in parallel (Dask), convert to HU, window "
                                   "(Numba kernel) and write a Zarr v3 store of 512x512 float16 slices. "
                                   "Rerunning an interrupted build resumes it.")
    _add_build_args(b)
    _add_synth(sub)
    _add_store_commands(sub)
    return p


def _add_synth(sub) -> None:
    s = sub.add_parser("synth", help="write a synthetic RSNA-like corpus (DICOM + labels.csv)",
                       description="Write OUT/dicom/*.dcm and OUT/labels.csv: whole series of synthetic head CT "
                                   "with hemorrhages, in the encodings of the real data. Version 2 (the default) "
                                   "cuts a procedural 3-D head as a scanner does: series from below the skull base "
                                   "(orbits, sinuses, petrous bones, mastoid air cells, posterior fossa) to the "
                                   "vertex; cortex with gyri and sulci, grey and white matter, ventricles and "
                                   "cisterns that widen with age; skull with diploe; heads of varied size, "
                                   "position and tilt on a headrest; partial volume through 5-mm (or 3-mm) "
                                   "slices and textured (not white) scanner noise; mimics of blood in negatives "
                                   "as in positives (calcified pineal gland, choroid plexus, basal ganglia, falx "
                                   "and carotids, dense venous sinuses, the Hounsfield bar); epidural lenses, "
                                   "subdural crescents (acute, subacute, chronic), subarachnoid blood in sulci "
                                   "and cisterns, parenchymal clots with oedema and mass effect, blood in the "
                                   "ventricles, alone or together. Labels come from the blood drawn in each "
                                   "slice. Version 1 is the earlier ellipse phantom, kept so that old corpora "
                                   "stay reproducible. The same options give byte-identical files. OUT must be "
                                   "new, empty or an earlier corpus (which is replaced).")
    s.add_argument("out", help="output folder (new, empty, or an earlier corpus)")
    s.add_argument("--studies", type=int, default=20, help="number of studies (one series each; default 20)")
    s.add_argument("--slices", type=int, default=32, help="slices per series, 4..1000 (default 32: 5-mm slices "
                                                          "from the skull base to the vertex)")
    s.add_argument("--seed", type=int, default=0, help="random seed (>= 0); the same seed gives the same files")
    s.add_argument("--hemorrhage-fraction", type=float, default=0.5, help="fraction of studies with a bleed "
                                                                          "(default 0.5)")
    s.add_argument("--version", type=int, default=2, choices=(1, 2), dest="synth_version",
                   help="2: the anatomical phantom (default); 1: the earlier ellipse phantom")
    s.add_argument("--quiet", action="store_true")


def _add_store_commands(sub) -> None:
    """info, verify, stats, preview and demo: what reads a store."""
    i = sub.add_parser("info", help="summarise a store", description="Slices, windows, per-type counts, "
                                                                     "size on disk and compression ratio.")
    i.add_argument("store")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    v = sub.add_parser("verify", help="check a store (schema, completeness, values, labels; optionally vs its source)",
                       description="Check the schema, completeness, every chunk's crc32c checksum, that every value "
                                   "is finite and in [0, 1] (hu: in its slice's range), that labels and types agree; "
                                   "with --source, re-decode a random sample of slices by pydicom + numpy (not the "
                                   "build's fast path) and compare. Exit 1 on any problem, listing what and where. "
                                   "--repair --source DICOM_DIR rebuilds the damaged shards (and only those), then "
                                   "checks again.")
    v.add_argument("store")
    v.add_argument("--source", help="the DICOM folder the store was built from")
    v.add_argument("--sample", type=int, default=16, help="slices to re-decode with --source (default 16)")
    v.add_argument("--seed", type=int, default=0, help="seed for choosing the sample")
    v.add_argument("--repair", action="store_true",
                   help="rebuild damaged shards from --source (the files are found by SOPInstanceUID)")
    v.add_argument("--quiet", action="store_true")
    t = sub.add_parser("stats", help="Table 3.1 for this store, rejects, fixed defects, slices per series",
                       description="The report's Table 3.1 (type, count, the six flags) for this store, rejects by "
                                   "reason, fixed defects by kind, and slices per series.")
    t.add_argument("store")
    t.add_argument("--json", action="store_true", help="print JSON instead of text")
    t.add_argument("--plot", help="also write a PNG: per-type counts (log scale), rejects by reason, slices per series")
    pv = sub.add_parser("preview", help="a slice's channels side by side, or its series neighbours (PNG)",
                        description="Draw one slice from the store (values as stored, not recomputed): every "
                                    "channel with its window name (the ten Table 2.1 windows for rnn stores, like "
                                    "the report's figure 2.1), its labels and type in the title. --series shows "
                                    "the neighbouring slices of the same series in z order instead.")
    pv.add_argument("store")
    which = pv.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, help="row number (default 0)")
    which.add_argument("--sop", help="SOPInstanceUID, e.g. ID_000000e27")
    which.add_argument("--type", type=int, dest="type_code", help="a Table 3.1 type: the middle slice of that type")
    pv.add_argument("--series", action="store_true", help="show the slice's series neighbours instead")
    pv.add_argument("--neighbours", type=int, default=3, help="with --series: slices on each side (default 3)")
    pv.add_argument("--channel", type=int, default=0, help="with --series: which channel to show (default 0)")
    pv.add_argument("--windows", metavar="SPEC", help="an hu store only: the windows to draw, as ichprep build takes "
                                                     "them (cnn, rnn or a list; default rnn)")
    pv.add_argument("--out", required=True, help="PNG path")
    d = sub.add_parser("demo", help="synth + build + info on a small synthetic corpus",
                       description="The quick start: write a synthetic corpus, build a cnn store from it and "
                                   "summarise it.")
    d.add_argument("out", nargs="?", default="ichprep-demo", help="folder for everything (default ichprep-demo)")
    d.add_argument("--studies", type=int, default=20)
    d.add_argument("--slices", type=int, default=32)
    d.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8))


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error becomes one line on stderr and an exit code (``ichprep.cliutil``)."""
    return run_main("ichprep", argv, _dispatch)


def _dispatch(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


def console_main() -> None:
    console_entry(main)


def _cmd_build(args) -> int:
    from ichprep.build import BuildConfig, build
    from ichprep.executor import warm_up_kernels
    from ichprep.windows import parse_windows, windows_from_list

    layout = _append_layout(args) if args.append else {}
    if args.windows is not None or args.preset is not None or not layout:
        spec = args.windows if args.windows is not None else (args.preset or "cnn")  # '' is a bad spec, not "none"
        windows, preset = parse_windows(spec), None if args.windows is not None else (args.preset or "cnn")
    else:  # an append without windows: the store's
        windows, preset = windows_from_list(layout["windows"]), layout.get("preset")
    cfg = BuildConfig(
        source=args.source, out=args.out, labels=args.labels, windows=windows, preset=preset,
        on_size=_given(args.on_size, layout.get("on_size"), "resize"),
        shard_slices=_given(args.shard_slices, layout.get("shard_slices"), 48),
        codec=_given(args.codec, layout.get("codec"), "auto"), workers=args.workers, scheduler=args.scheduler,
        dashboard=args.dashboard,
        salt=args.salt,
        overwrite=args.overwrite, strict=args.strict,
    )
    console = None if args.quiet else sys.stderr
    if args.scheduler is None:  # this process (or its forked workers) will window: it is ichprep's own
        warm_up_kernels(skip_blas_probe=True)
    if args.append:
        from ichprep.append import append

        result = append(cfg, console=console)
    else:
        result = build(cfg, console=console)
    print(f"{cfg.out}: {result.summary()}")
    return EXIT_OK


def _given(value, store_value, default):
    """An option's value: as given, else (an append) the store's, else the default."""
    if value is not None:
        return value
    return store_value if store_value is not None else default


def _append_layout(args) -> dict:
    """The layout of the store an append adds to (its windows, preset, size policy, shard size, codec)."""
    from ichprep import store as st

    if args.overwrite:
        raise UsageError("--append adds to a store and --overwrite replaces it: pass one of them")
    if "://" not in args.out and not os.path.exists(args.out):
        raise UsageError(f"--append adds to an existing store, and there is none at {args.out!r}: build it first "
                         "(the same command without --append)")
    _, info = st.read_info(args.out)
    return dict(info.params, preset=info.preset)


def _cmd_synth(args) -> int:
    from ichprep.progress import ProgressBar
    from ichprep.synth import SynthConfig, write_corpus

    cfg = SynthConfig(studies=args.studies, slices=args.slices, seed=args.seed,
                      hemorrhage_fraction=args.hemorrhage_fraction, version=args.synth_version)
    bar = ProgressBar(None if args.quiet else sys.stderr, "synth", cfg.studies * cfg.slices)
    summary = write_corpus(args.out, cfg, progress=bar)
    bar.close()
    print(f"{args.out}: {summary['slices']} slices in {summary['studies']} studies of {summary['patients']} "
          f"patients ({summary['positive']} with hemorrhage, {summary['compressed']} compressed) -> "
          f"{summary['dicom_dir']}, {summary['labels']}")
    return EXIT_OK


def info_dict(url: str) -> dict:
    from ichprep import store as st
    from ichprep.labels import TYPE_TABLE

    _, info = st.read_info(url)
    raw_bytes = info.n * info.image_size ** 2 * info.channels * 2
    on_disk = st.size_on_disk(url)
    image_disk = st.size_on_disk(os.path.join(url, "images")) if on_disk is not None else None
    return dict(
        store=url, complete=info.complete, slices=info.n, channels=info.channels,
        dtype="int16 Hounsfield units" if info.hu else "float16", schema_version=info.schema_version,
        preset=info.preset, windows=[w.spec() for w in info.windows], size_policy=info.size_policy,
        shard_slices=info.shard_slices, codec=info.params.get("codec"), counts=info.counts,
        type_counts=info.type_counts, rejects=len(info.rejects), fixed=info.fixed, timings=info.timings,
        salt_fingerprint=info.salt_fingerprint, size_on_disk=on_disk,
        compression_ratio=(raw_bytes / image_disk) if image_disk else None,
        type_table={t: TYPE_TABLE[t] for t in TYPE_TABLE},
        generations=st.generations(info.attrs),
    )


def _cmd_info(args) -> int:
    d = info_dict(args.store)
    if args.json:
        d.pop("type_table")
        print(json.dumps(d, indent=2))
        return EXIT_OK
    print(f"store        {d['store']}" + ("" if d["complete"] else "   ** INCOMPLETE: build or append not finished; "
                                                          "rerun it to resume **"))
    print(f"slices       {d['slices']} x 512 x 512 x {d['channels']} {d['dtype']}")
    print(f"preset       {d['preset'] or 'custom'}: " + ("windowed when read ('ichtrain fit --windows')"
                                                         if d["preset"] == "hu" else ", ".join(d["windows"])))
    print(f"sizes        {d['size_policy']} (non-512 slices); shards of {d['shard_slices']} slices; codec {d['codec']}")
    c = d["counts"]
    if c:
        print(f"counts       {c.get('written', 0)} written, {c.get('rejected', 0)} rejected, "
              f"{c.get('unlabelled', 0)} unlabelled")
    if len(d["generations"]) > 1:
        print(f"generations  {len(d['generations'])} (appends; usable slices after each: "
              + ", ".join(str(x["written"]) for x in d["generations"]) + ")")
    if d["fixed"]:
        print("fixed        " + ", ".join(f"{v} {k}" for k, v in d["fixed"].items() if v))
    if d["salt_fingerprint"]:
        print(f"patient keys salt fingerprint {d['salt_fingerprint']} (stores with the same one split alike)")
    if d["size_on_disk"] is not None:
        ratio = f", images compressed {d['compression_ratio']:.1f}x" if d["compression_ratio"] else ""
        print(f"on disk      {d['size_on_disk'] / 2**20:,.1f} MiB{ratio}")
    if d["timings"]:
        print("last build   " + ", ".join(f"{k} {v:.1f} s" for k, v in d["timings"].items()) + " (wall time per phase)")
    if d["type_counts"]:
        print("type counts  (report Table 3.1; EPD ITP ITV SBC SBD ANY)")
        for t, nslices in sorted(d["type_counts"].items()):
            flags = " ".join(str(f) for f in d["type_table"][t]) if t in d["type_table"] else "unlabelled"
            print(f"  {t:>3}  {nslices:>8}  {flags}")
    return EXIT_OK


def _cmd_verify(args) -> int:
    from ichprep.verify import verify

    if args.sample < 1:
        raise UsageError(f"Expected --sample >= 1. Received: sample={args.sample}")
    if args.repair and not args.source:
        raise UsageError("--repair rebuilds damaged shards from their DICOM files: pass --source DICOM_DIR")
    console = None if args.quiet else sys.stderr
    rep = verify(args.store, source=args.source, sample=args.sample, seed=args.seed, console=console)
    for p in rep.problems:
        print(f"PROBLEM {p}")
    if args.repair:
        from ichprep.repair import repair_shards, shard_rows

        done = repair_shards(args.store, args.source, rep.damaged_shards, console)  # and any interrupted repair's
        if done:
            print(f"repaired {len(done)} shard(s): {shard_rows(args.store, done)}")
            rep = verify(args.store, source=args.source, sample=args.sample, seed=args.seed, console=console)
            for p in rep.problems:
                print(f"PROBLEM {p}")
        elif rep.problems:
            print("nothing to repair from the DICOMs: the problems above are not in shards")
    checked = ", ".join(f"{k}={v}" for k, v in rep.checked.items())
    print(f"{args.store}: {'OK' if rep.ok else f'{len(rep.problems)} problem(s)'}" + (f" ({checked})" if checked else ""))
    return EXIT_OK if rep.ok else EXIT_PROBLEM


def stats_dict(url: str) -> dict:
    return _store_stats(url)[0]


def _store_stats(url: str):
    """(the stats dict, slices per series as an array): one read of the store serves text, JSON and plot."""
    from collections import Counter

    import numpy as np

    from ichprep import store as st
    from ichprep.labels import TYPE_TABLE

    g, info = st.read_info(url)
    types = st.column(g, "type")
    ok = st.column(g, "status") == 0
    tc = Counter(int(t) for t in types[ok])
    series = st.column(g, "series_uid")
    _, per_series = np.unique(series, return_counts=True)
    return dict(
        store=url, complete=info.complete, slices=int(ok.sum()),
        table_3_1=[dict(type=t, count=tc.get(t, 0), flags=list(TYPE_TABLE[t])) for t in range(1, 33)],
        unlabelled=tc.get(0, 0),
        rejects_by_reason=dict(Counter(r["reason"] for r in info.rejects)),
        fixed=info.fixed,
        series=int(per_series.size),
        slices_per_series=dict(min=int(per_series.min()), median=float(np.median(per_series)),
                               max=int(per_series.max())) if per_series.size else {},
    ), per_series


def _cmd_preview(args) -> int:
    from ichprep.plots import preview

    r = preview(args.store, args.out, index=args.index, sop=args.sop, type_code=args.type_code,
                series=args.series, neighbours=args.neighbours, channel=args.channel, windows=args.windows)
    print(f"{r['out']}: row {r['row']}, {r['panels']} panels")
    return EXIT_OK


def _writable_file(path: str, flag: str) -> None:
    """Refuse, before any work, an output file whose folder is missing or that is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise UsageError(f"Expected {flag} a file in an existing folder. Received: {path!r} "
                         + ("(a folder)" if os.path.isdir(path) else f"({folder} does not exist)"))


def _cmd_stats(args) -> int:
    if args.plot:
        _writable_file(args.plot, "--plot")
    d, per_series = _store_stats(args.store)
    if args.plot:
        from ichprep.plots import stats_plot

        stats_plot(d, per_series, args.plot)
    if args.json:
        print(json.dumps(d, indent=2))
        return EXIT_OK
    if not d["complete"]:
        print("** INCOMPLETE store: its build has not finished; figures cover what is written **")
    print(f"{d['store']}: {d['slices']} usable slices in {d['series']} series")
    print("Table 3.1 for this store")
    print(" type    count  EPD ITP ITV SBC SBD ANY")
    for row in d["table_3_1"]:
        print(f"  {row['type']:>3} {row['count']:>8}   " + "   ".join(str(f) for f in row["flags"]))
    if d["unlabelled"]:
        print(f"  unlabelled {d['unlabelled']}")
    rj = d["rejects_by_reason"]
    print("rejects      " + (", ".join(f"{n} {r}" for r, n in sorted(rj.items(), key=lambda x: -x[1])) or "none"))
    fx = {k: v for k, v in d["fixed"].items() if v}
    print("fixed        " + (", ".join(f"{v} {k}" for k, v in fx.items()) or "none"))
    sp = d["slices_per_series"]
    if sp:
        print(f"per series   min {sp['min']}, median {sp['median']:g}, max {sp['max']} slices")
    return EXIT_OK


def _cmd_demo(args) -> int:
    out = args.out
    data = os.path.join(out, "data")
    store = os.path.join(out, "cnn.zarr")
    steps = [
        ["synth", data, "--studies", str(args.studies), "--slices", str(args.slices), "--seed", "0"],
        ["build", os.path.join(data, "dicom"), "--labels", os.path.join(data, "labels.csv"), "--out", store,
         "--preset", "cnn", "--workers", str(args.workers)],
        ["info", store],
        ["verify", store, "--source", os.path.join(data, "dicom"), "--sample", "8", "--quiet"],
    ]
    if os.path.isdir(os.path.join(data, "dicom")):
        steps = steps[1:]  # the corpus is deterministic: reuse it
        print(f"demo: reusing {data}")
    for step in steps:
        print("demo: ichprep " + " ".join(step), flush=True)
        rc = main(step)
        if rc != EXIT_OK:
            return rc
    print(f"demo: done. The store is {store}; open it with zarr.open_group({store!r}).")
    return EXIT_OK


_COMMANDS = {"build": _cmd_build, "synth": _cmd_synth, "info": _cmd_info, "verify": _cmd_verify,
             "stats": _cmd_stats, "preview": _cmd_preview, "demo": _cmd_demo}

if __name__ == "__main__":
    console_main()
