"""``ichprep`` command line: build | synth | info | verify | stats | preview | demo.

``main(argv) -> int`` is the entry point (tests call it in-process). Exit codes: 0 success, 1 a
problem found (e.g. a failing check), 2 bad input (a flag, a CSV, a path), with one line on stderr
that names the problem and the fix.
"""

from __future__ import annotations

import json
import os
import sys

from ichprep.cliargs import parser
from ichprep.cliutil import EXIT_OK, EXIT_PROBLEM, console_entry, run_main
from ichprep.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error becomes one line on stderr and an exit code (``ichprep.cliutil``)."""
    return run_main("ichprep", argv, _dispatch)


def _dispatch(argv: list[str]) -> int:
    args = parser().parse_args(argv)
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
    from ichprep.diskspace import size_on_disk
    from ichprep.labels import TYPE_TABLE

    _, info = st.read_info(url)
    raw_bytes = info.n * info.image_size ** 2 * info.channels * 2
    on_disk = size_on_disk(url)
    image_disk = size_on_disk(os.path.join(url, "images")) if on_disk is not None else None
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
