"""Labels: the challenge's long-format CSV and the report's Table 3.1 type codes.

The CSV has a header ``ID,Label`` and one row per (slice, subtype): ``ID_<sop>_<subtype>,0|1``.
Per slice this gives a 6-vector in :data:`SUBTYPES` order; ``any`` is the last element.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from ichprep.errors import LabelsError

__all__ = [
    "SUBTYPES",
    "UNLABELLED",
    "NO_TYPE",
    "TYPE_TABLE",
    "type_codes",
    "LabelTable",
    "read_labels",
]

SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
UNLABELLED = 255  # label value for a slice the CSV does not mention
NO_TYPE = 0  # type code of an unlabelled slice (Table 3.1 uses 1..32)

# Report Table 3.1: type -> (EPD, ITP, ITV, SBC, SBD, ANY). 32 = no hemorrhage.
TYPE_TABLE: dict[int, tuple[int, int, int, int, int, int]] = {
    1: (1, 0, 1, 1, 0, 1), 2: (1, 0, 1, 0, 1, 1), 3: (1, 1, 1, 0, 1, 1), 4: (1, 1, 1, 1, 1, 1),
    5: (1, 0, 1, 1, 1, 1), 6: (1, 1, 1, 1, 0, 1), 7: (1, 0, 1, 0, 0, 1), 8: (1, 1, 1, 0, 0, 1),
    9: (1, 1, 0, 1, 1, 1), 10: (1, 1, 0, 1, 0, 1), 11: (1, 1, 0, 0, 1, 1), 12: (1, 0, 0, 1, 1, 1),
    13: (1, 0, 0, 1, 0, 1), 14: (1, 1, 0, 0, 0, 1), 15: (1, 0, 0, 0, 1, 1), 16: (0, 1, 1, 0, 1, 1),
    17: (0, 1, 1, 1, 1, 1), 18: (0, 0, 1, 1, 1, 1), 19: (0, 0, 1, 0, 1, 1), 20: (1, 0, 0, 0, 0, 1),
    21: (0, 1, 1, 1, 0, 1), 22: (0, 1, 0, 1, 1, 1), 23: (0, 1, 0, 0, 1, 1), 24: (0, 0, 1, 1, 0, 1),
    25: (0, 1, 0, 1, 0, 1), 26: (0, 0, 0, 1, 1, 1), 27: (0, 1, 1, 0, 0, 1), 28: (0, 0, 1, 0, 0, 1),
    29: (0, 1, 0, 0, 0, 1), 30: (0, 0, 0, 1, 0, 1), 31: (0, 0, 0, 0, 1, 1), 32: (0, 0, 0, 0, 0, 0),
}


def _build_lookup() -> np.ndarray:
    # Index: the five subtype flags as bits (epidural = bit 4 ... subdural = bit 0).
    lut = np.zeros(32, dtype=np.uint8)
    for code, flags in TYPE_TABLE.items():
        bits = 0
        for f in flags[:5]:
            bits = (bits << 1) | f
        lut[bits] = code
    if np.any(lut == 0):  # every combination of five flags must have a type
        raise AssertionError("Table 3.1 does not cover all 32 combinations")
    return lut


_TYPE_LUT = _build_lookup()


def type_codes(labels: np.ndarray) -> np.ndarray:
    """Table 3.1 type code per row of an (N, 6) uint8 label array; :data:`NO_TYPE` for unlabelled rows.

    The type follows the five subtype flags; ``any`` is checked separately (see
    :func:`inconsistent_any`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != 6:
        raise ValueError(f"Expected labels of shape (N, 6), got {labels.shape}")
    sub = labels[:, :5].astype(np.intp)
    bits = (sub[:, 0] << 4) | (sub[:, 1] << 3) | (sub[:, 2] << 2) | (sub[:, 3] << 1) | sub[:, 4]
    unlabelled = np.any(labels == UNLABELLED, axis=1)
    out = _TYPE_LUT[np.where(unlabelled, 0, bits & 31)]
    out[unlabelled] = NO_TYPE
    return out.astype(np.uint8)


def inconsistent_any(labels: np.ndarray) -> np.ndarray:
    """Rows whose ``any`` flag disagrees with the five subtype flags (labelled rows only)."""
    labels = np.asarray(labels)
    labelled = ~np.any(labels == UNLABELLED, axis=1)
    return labelled & (labels[:, 5] != labels[:, :5].max(axis=1))


@dataclass
class LabelTable:
    """Per-slice labels read from a CSV, keyed by SOP id (``ID_xxxxxxxxx``)."""

    by_sop: dict[str, np.ndarray]
    path: str
    duplicate_rows: int = 0  # identical repeated rows, collapsed
    incomplete: list[str] = field(default_factory=list)  # slices missing some subtype rows

    def lookup(self, sops: list[str]) -> tuple[np.ndarray, int]:
        """(N, 6) uint8 for ``sops`` (UNLABELLED where absent) and the count of absent ones."""
        out = np.full((len(sops), 6), UNLABELLED, dtype=np.uint8)
        missing = 0
        for i, sop in enumerate(sops):
            v = self.by_sop.get(sop)
            if v is None:
                missing += 1
            else:
                out[i] = v
        return out, missing


def read_labels(path: str | os.PathLike) -> LabelTable:
    """Read a long-format label CSV (``ID,Label`` header; ``ID_<sop>_<subtype>,0|1`` rows).

    Identical duplicate rows collapse; a conflicting duplicate, a bad header, an unknown subtype or a
    label other than 0/1 raises :class:`LabelsError` naming the line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LabelsError(f"Label CSV not found: {path!r}. Pass --labels PATH to an existing CSV, or omit it.")
    try:
        return _read_labels(path)
    except UnicodeDecodeError as exc:
        raise LabelsError(f"Label CSV {path!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                          "(the challenge's CSV is plain ASCII)") from None


def _read_labels(path: str) -> LabelTable:
    sub_index = {s: i for i, s in enumerate(SUBTYPES)}
    # sop -> [bitmask of subtypes seen, six labels]: plain lists, made into one array at the end (a numpy
    # vector per slice and an item set per row were half the parse)
    entries: dict[str, list[int]] = {}
    duplicates = 0
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise LabelsError(f"Label CSV {path!r} is empty: expected a header 'ID,Label' and rows.")
        if [h.strip() for h in header] != ["ID", "Label"]:
            raise LabelsError(
                f"Label CSV {path!r} line 1: expected the header 'ID,Label' (the challenge's long "
                f"format). Received: {','.join(header)!r}"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise LabelsError(f"Label CSV {path!r} line {lineno}: expected 2 fields. Received: {row!r}")
            ident, value = row[0].strip(), row[1].strip()
            sop, sep, subtype = ident.rpartition("_")
            j = sub_index.get(subtype)
            if not sep or j is None or not sop.startswith("ID_"):
                raise LabelsError(
                    f"Label CSV {path!r} line {lineno}: expected an ID like 'ID_<sop>_<subtype>' with "
                    f"subtype one of {', '.join(SUBTYPES)}. Received: {ident!r}"
                )
            if value == "1":
                v = 1
            elif value == "0":
                v = 0
            else:
                raise LabelsError(f"Label CSV {path!r} line {lineno}: labels must be 0 or 1. Received: {value!r} for {ident}")
            entry = entries.get(sop)
            if entry is None:
                entry = entries[sop] = [0, 0, 0, 0, 0, 0, 0]
            if entry[0] & (1 << j):
                if entry[j + 1] != v:
                    raise LabelsError(
                        f"Label CSV {path!r} line {lineno}: conflicting duplicate for {ident} "
                        f"(earlier {entry[j + 1]}, now {v}). Remove one of the rows."
                    )
                duplicates += 1
                continue
            entry[0] |= 1 << j
            entry[j + 1] = v
    incomplete = sorted(s for s, e in entries.items() if e[0] != 0b111111)
    complete = [s for s, e in entries.items() if e[0] == 0b111111]  # a slice with only some subtypes is not labelled
    values = np.array([entries[s][1:] for s in complete], dtype=np.uint8).reshape(-1, 6)
    return LabelTable(by_sop=dict(zip(complete, values)), path=path, duplicate_rows=duplicates, incomplete=incomplete)
