"""Pictures of a store: slice previews (the report's figures 2.1/2.2) and statistics plots.

Values are read from the store, never recomputed. matplotlib is imported lazily (Agg backend).
"""

from __future__ import annotations

import numpy as np

from ichprep import store as st
from ichprep.errors import MissingDependencyError, UsageError
from ichprep.labels import TYPE_TABLE

__all__ = ["preview", "stats_plot", "find_row"]

_SHORT = ("EPD", "ITP", "ITV", "SBC", "SBD", "ANY")


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("Plots need matplotlib, which is not installed here: install it with "
                                     "pip install 'ichprep[plots]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def find_row(g, index: int | None = None, sop: str | None = None, type_code: int | None = None) -> int:
    n = st.images(g).shape[0]
    if sop is not None:
        hits = np.flatnonzero(st.column(g, "sop_uid") == sop)
        if not hits.size:
            raise UsageError(f"No slice with SOP {sop!r} in the store. Received: --sop {sop}")
        return int(hits[0])
    if type_code is not None:
        if type_code not in TYPE_TABLE and type_code != 0:
            raise UsageError(f"Expected --type in 0..32 (Table 3.1). Received: --type {type_code}")
        hits = np.flatnonzero(st.column(g, "type") == type_code)
        if not hits.size:
            raise UsageError(f"No slice of type {type_code} in the store (see 'ichprep stats').")
        return int(hits[len(hits) // 2])
    index = 0 if index is None else index
    if not 0 <= index < n:
        raise UsageError(f"Expected --index in [0, {n - 1}]. Received: --index {index}")
    return index


def _title(g, i: int) -> str:
    lab = st.column(g, "labels", i)
    t = int(st.column(g, "type", i))
    if (lab == 255).all():
        flags = "unlabelled"
    else:
        present = [s for s, v in zip(_SHORT[:5], lab[:5]) if v]
        flags = ", ".join(present) if present else "no hemorrhage"
    return f"row {i}  {g['sop_uid'][i]}  type {t}: {flags}"


def preview(url: str, out: str, index: int | None = None, sop: str | None = None, type_code: int | None = None,
            series: bool = False, neighbours: int = 3, channel: int = 0, windows: str | None = None) -> dict:
    """Write a PNG: the slice's channels side by side with their window names, or with ``series`` its
    neighbours in the same series in z order (one channel). An hu store is drawn in ``windows`` (default
    the ten of Table 2.1), applied as the training stream applies them."""
    g, info = st.read_info(url)
    i = find_row(g, index, sop, type_code)
    read = _read_windows(g, info, windows)
    names = [w.name for w in (read.windows if read else info.windows)]
    C = len(names)

    def slice_at(r):
        img = np.asarray(st.images(g)[r])
        if read:
            img = read(r, img[..., 0], np.empty(img.shape[:2] + (C,), np.float16))
        return img.astype(np.float32)
    plt = _plt()
    if series:
        if not 0 <= channel < C:
            raise UsageError(f"Expected --channel in [0, {C - 1}]. Received: --channel {channel}")
        ser = st.column(g, "series_uid")
        rows = np.flatnonzero(ser == ser[i])  # contiguous and in z order (the store's row order)
        pos = int(np.searchsorted(rows, i))
        rows = rows[max(0, pos - neighbours):pos + neighbours + 1]
        panels = [(slice_at(r)[..., channel], f"row {r}  z {float(st.column(g, 'position_z', r)):.1f}"
                   + ("  (this)" if r == i else "")) for r in rows]
        suptitle = f"{_title(g, i)}\nseries neighbours, window {names[channel]}"
    else:
        img = slice_at(i)
        panels = [(img[..., c], names[c]) for c in range(C)]
        suptitle = _title(g, i)
    cols = min(5, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.4 * rows_n + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (im, name) in zip(axes.ravel(), panels):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)
    return dict(row=i, panels=len(panels), out=out)


def _read_windows(g, info, spec: str | None):
    """The windows an hu store is drawn in (None for a windowed store; ``spec`` there is refused)."""
    from ichprep.readwindows import ReadWindows
    from ichprep.windows import parse_read_windows

    if not info.hu:
        if spec:
            raise UsageError(f"--windows draws an hu store; {info.url!r} holds windows "
                             f"{', '.join(w.spec() for w in info.windows)} already. Received: --windows {spec}")
        return None
    return ReadWindows(parse_read_windows(spec or "rnn"), st.column(g, "window_center"), st.column(g, "window_width"),
                       st.column(g, "status") == 0)


def stats_plot(stats: dict, per_series: np.ndarray, out: str) -> dict:
    """Three panels from ``ichprep stats``' figures: per-type counts (Table 3.1 order, log scale), rejects
    by reason, slices per series."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw=dict(width_ratios=(3, 1.3, 1.3)))
    ax = axes[0]
    rows = stats["table_3_1"]
    ax.bar([str(r["type"]) for r in rows], [r["count"] for r in rows], color="tab:blue")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("type (report Table 3.1)")
    ax.set_ylabel("slices (log scale)")
    ax.set_title(f"slices per type ({stats['slices']} usable, {stats['unlabelled']} unlabelled)")
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[1]
    rejects = sorted(stats["rejects_by_reason"].items(), key=lambda kv: -kv[1])
    if rejects:
        reasons, counts = zip(*rejects)
        ax.barh(reasons, counts, color="tab:red")
    else:
        ax.text(0.5, 0.5, "no rejects", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"rejects by reason ({sum(n for _, n in rejects)})")
    ax = axes[2]
    ax.hist(per_series, bins=min(30, max(1, len(set(per_series.tolist())))), color="tab:green")
    ax.set_xlabel("slices in the series")
    ax.set_ylabel("series")
    ax.set_title(f"slices per series ({per_series.size} series)")
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)
    return dict(out=out, panels=3)
