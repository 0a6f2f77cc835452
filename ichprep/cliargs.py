"""The ``ichprep`` command line's arguments: every subcommand, flag, choice and help text
(:mod:`ichprep.cli` runs them)."""

from __future__ import annotations

import argparse
import os

from ichprep import __version__
from ichprep.cliutil import UsageErrorParser
from ichprep.pixels import SIZE_POLICIES
from ichprep.store import CODECS
from ichprep.windows import PRESETS

__all__ = ["parser"]


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


def parser() -> argparse.ArgumentParser:
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
                                   "with hemorrhages, in the encodings of the real data. Versions 2 and 3 (the "
                                   "default) cut a procedural 3-D head as a scanner does: series from below the skull base "
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
                                   "slice. Version 3 draws the face and neck of the lowest cuts as they are "
                                   "(fat under the skin and between the muscles, the jaw, the pharynx's air, the "
                                   "occipital bone as a plate around the foramen magnum) where version 2 drew even "
                                   "muscle; a model trained on it stops reading real skull-base cuts as bleeds. "
                                   "Version 1 is the earlier ellipse phantom. Old versions stay reproducible. The same options give byte-identical files. OUT must be "
                                   "new, empty or an earlier corpus (which is replaced).")
    s.add_argument("out", help="output folder (new, empty, or an earlier corpus)")
    s.add_argument("--studies", type=int, default=20, help="number of studies (one series each; default 20)")
    s.add_argument("--slices", type=int, default=32, help="slices per series, 4..1000 (default 32: 5-mm slices "
                                                          "from the skull base to the vertex)")
    s.add_argument("--seed", type=int, default=0, help="random seed (>= 0); the same seed gives the same files")
    s.add_argument("--hemorrhage-fraction", type=float, default=0.5, help="fraction of studies with a bleed "
                                                                          "(default 0.5)")
    s.add_argument("--version", type=int, default=3, choices=(1, 2, 3), dest="synth_version",
                   help="3: the anatomical phantom with the face and neck of real low cuts (default); "
                        "2: the same before them (docs/realism.md); 1: the earlier ellipse phantom")
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
