"""How far ``ichprep synth`` is from real head CT: per-property distances and a discriminator's AUC.

Real slices: ``--real`` (default ``../shared/data/rsna-unlabelled``: 252 slices of 216 patients, many
scanners) and ``--series`` (default ``../shared/data/rsna-test-series``: one whole series, for the
correlation of neighbouring slices). Synthetic slices: a corpus written for the run (``--version``,
``--studies``, ``--slices``, ``--seed``) or ``--synthetic DIR``.

Both sides are read the same way (pydicom's ``pixel_array`` and the modality LUT, the RSNA 12-bit fix)
and measured by ``ichprep.realism``. The table gives, per property, the real median beside the synthetic
one, their relative difference and the two-sample Kolmogorov-Smirnov distance between the per-slice
values; a property passes when the medians are within 25% or the KS distance is below 0.2. Tissue
histograms inside the head are compared per HU band (KS on pooled pixel values). Then two discriminators
learn to tell real from synthetic slices, grouped by patient (no patient on both sides of a fold), 5-fold,
and report the pooled out-of-fold ROC-AUC (0.5 = indistinguishable) with a 95% bootstrap interval over
patients: a logistic regression on the properties, and a small CNN on three windows of the slice at
128x128 (brain 40/80, subdural 80/200, bone 600/2800).

    python benchmarks/realism.py [--version 2] [--studies 60] [--slices 32] [--seed 0] [--sample 252]
                                 [--real DIR] [--series DIR] [--synthetic DIR] [--no-cnn] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")


def load_hu(path: str) -> tuple[np.ndarray, float, str, float, str]:
    """HU (float32), pixel spacing, patient, z and series of one file, by pydicom's general path."""
    import pydicom

    from ichprep.pixels import fix_rsna_12bit, is_rsna_12bit_defect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RSNA's 'ID_' UIDs are not valid UIs, and pydicom says so
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
        intercept = float(ds.RescaleIntercept)
        if is_rsna_12bit_defect(int(ds.BitsStored), int(ds.PixelRepresentation), intercept):
            raw, intercept = fix_rsna_12bit(raw), -1000.0
        hu = raw.astype(np.float32) * np.float32(float(ds.RescaleSlope)) + np.float32(intercept)
        return (hu, float(ds.PixelSpacing[0]), str(ds.get("PatientID", "")), float(ds.ImagePositionPatient[2]),
                str(ds.SeriesInstanceUID))


def _files(folder: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.dcm"), recursive=True))
    if not files:
        raise SystemExit(f"realism.py: no .dcm files in {folder}; pass --real/--series/--synthetic DIR")
    return files


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (the largest gap between the empirical CDFs)."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if a.size == 0 or b.size == 0:
        return math.nan
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / a.size
                               - np.searchsorted(b, grid, side="right") / b.size)))


def measure(files: list[str], label: str) -> dict:
    """Per-slice properties, band pixel samples and discriminator inputs of ``files``."""
    from ichprep.realism import BANDS, band_of, head_mask, measure_slice

    rng = np.random.default_rng(0)
    rows, patients, series, zs, images = [], [], [], [], []
    band_pixels: list[list[np.ndarray]] = [[] for _ in BANDS]
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        hu, px, patient, z, ser = load_hu(f)
        m = measure_slice(hu, px)
        rows.append(m)
        patients.append(patient)
        series.append(ser)
        zs.append(z)
        head = head_mask(hu, px)
        v = hu[head]
        if v.size:
            b = band_of(v)
            for k in range(len(BANDS)):
                vk = v[b == k]
                if vk.size:
                    band_pixels[k].append(rng.choice(vk, size=min(vk.size, 400), replace=False))
        images.append(_thumbnail(hu))
        if (i + 1) % 50 == 0:
            print(f"  {label}: {i + 1}/{len(files)} slices measured ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return dict(rows=rows, patients=np.array(patients), series=np.array(series), z=np.array(zs),
                bands=[np.concatenate(b) if b else np.zeros(0) for b in band_pixels], images=np.stack(images))


def _thumbnail(hu: np.ndarray) -> np.ndarray:
    """(128, 128, 3) float32: brain 40/80, subdural 80/200, bone 600/2800, 4x4 block means of 512x512."""
    from ichprep.pixels import fit_size

    img = fit_size(hu.astype(np.float32), "resize")
    small = img.reshape(128, 4, 128, 4).mean(axis=(1, 3))
    out = []
    for c, w in ((40, 80), (80, 200), (600, 2800)):
        lo = c - w / 2
        out.append(np.clip((small - lo) / w, 0, 1))
    return np.stack(out, -1).astype(np.float32)


def series_correlations(files: list[str], max_series: int = 8) -> list[float]:
    """The neighbour-slice correlation of up to ``max_series`` whole series among ``files``."""
    import pydicom

    from ichprep.realism import series_correlation

    names: dict[str, list[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in files:
            names.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID), []).append(f)
    by_series: dict[str, list[tuple[float, np.ndarray]]] = {}
    for ser in sorted(names)[:max_series]:
        for f in names[ser]:
            hu, _, _, z, _ = load_hu(f)
            by_series.setdefault(ser, []).append((z, hu))
    out = []
    for slices in by_series.values():
        if len(slices) >= 4:
            slices.sort(key=lambda t: t[0])
            out.append(series_correlation([h for _, h in slices]))
    return out


def property_table(real: dict, synth: dict) -> list[dict]:
    from ichprep.realism import PROPERTIES

    table = []
    for p in PROPERTIES:
        r = np.array([getattr(m, p) for m in real["rows"]], float)
        s = np.array([getattr(m, p) for m in synth["rows"]], float)
        table.append(_row(p, r, s))
    for p in ("skull_base", "vertex"):
        r = np.array([getattr(m, p) for m in real["rows"]], float)
        s = np.array([getattr(m, p) for m in synth["rows"]], float)
        rm, sm = float(r.mean()), float(s.mean())
        rel = abs(sm / rm - 1) if rm > 0 else math.nan
        table.append(dict(property=f"fraction {p.replace('_', ' ')}", real=rm, synthetic=sm, relative=rel,
                          ks=math.nan, ok=bool(rel <= 0.25)))
    return table


def _row(name: str, r: np.ndarray, s: np.ndarray) -> dict:
    rm, sm = float(np.nanmedian(r)) if np.isfinite(r).any() else math.nan, \
        float(np.nanmedian(s)) if np.isfinite(s).any() else math.nan
    rel = abs(sm / rm - 1) if rm not in (0.0,) and np.isfinite(rm) and np.isfinite(sm) else math.nan
    ks = ks_distance(r, s)
    ok = bool((np.isfinite(rel) and rel <= 0.25) or (np.isfinite(ks) and ks < 0.2))
    return dict(property=name, real=rm, synthetic=sm, relative=rel, ks=ks, ok=ok)


def band_table(real: dict, synth: dict) -> list[dict]:
    from ichprep.realism import BANDS

    rows = []
    rf = np.nanmean(np.array([m.band_fractions for m in real["rows"]], float), axis=0)
    sf = np.nanmean(np.array([m.band_fractions for m in synth["rows"]], float), axis=0)
    for k, (name, lo, hi) in enumerate(BANDS):
        ks = ks_distance(real["bands"][k], synth["bands"][k])
        rel = abs(sf[k] / rf[k] - 1) if rf[k] > 0 else math.nan
        rows.append(dict(property=f"HU {name} ({lo:g}..{hi:g}): share of head / KS", real=float(rf[k]),
                         synthetic=float(sf[k]), relative=rel, ks=ks, ok=bool(ks < 0.2 or rel <= 0.25)))
    return rows


def _features(d: dict) -> np.ndarray:
    from ichprep.realism import PROPERTIES

    x = np.array([[getattr(m, p) for p in PROPERTIES] + list(m.band_fractions) for m in d["rows"]], float)
    return x


def _grouped_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(uniq.size)
    fold_of = {g: i % k for i, g in zip(range(uniq.size), uniq[order])}
    return np.array([fold_of[g] for g in groups])


def _logistic(x: np.ndarray, y: np.ndarray, xt: np.ndarray, l2: float = 1.0, steps: int = 500) -> np.ndarray:
    mu, sd = np.nanmean(x, 0), np.nanstd(x, 0) + 1e-9
    fill = lambda a: np.where(np.isfinite(a), (a - mu) / sd, 0.0)  # noqa: E731 (missing -> the mean)
    a, at = fill(x), fill(xt)
    w, b = np.zeros(a.shape[1]), 0.0
    for _ in range(steps):  # gradient descent on the mean log loss with an L2 penalty
        p = 1 / (1 + np.exp(-(a @ w + b)))
        w -= 0.5 * (a.T @ (p - y) / len(y) + l2 * w / len(y))
        b -= 0.5 * float((p - y).mean())
    return 1 / (1 + np.exp(-(at @ w + b)))


def _bootstrap_auc(y, p, groups, n=1000, seed=0) -> list[float]:
    from ichtrain.metrics import roc_auc

    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    idx_of = {g: np.nonzero(groups == g)[0] for g in uniq}
    aucs = []
    for _ in range(n):
        pick = np.concatenate([idx_of[g] for g in rng.choice(uniq, uniq.size)])
        a = roc_auc(y[pick], p[pick])
        if a is not None:
            aucs.append(a)
    return [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]


def discriminate(real: dict, synth: dict, use_cnn: bool, seed: int = 0) -> dict:
    from ichtrain.metrics import roc_auc

    y = np.concatenate([np.ones(len(real["rows"])), np.zeros(len(synth["rows"]))])
    groups = np.concatenate([np.char.add("r", real["patients"].astype(str)), np.char.add("s", synth["patients"].astype(str))])
    folds = _grouped_folds(groups, 5, seed)
    out = {}
    x = np.concatenate([_features(real), _features(synth)])
    p = np.zeros(len(y))
    for k in range(5):
        tr, te = folds != k, folds == k
        p[te] = _logistic(x[tr], y[tr], x[te])
    out["features"] = dict(auc=roc_auc(y, p), interval=_bootstrap_auc(y, p, groups))
    if use_cnn:
        imgs = np.concatenate([real["images"], synth["images"]])
        p = np.zeros(len(y))
        for k in range(5):
            tr, te = folds != k, folds == k
            p[te] = _cnn_fold(imgs[tr], y[tr], imgs[te], seed + k)
        out["cnn"] = dict(auc=roc_auc(y, p), interval=_bootstrap_auc(y, p, groups))
    return out


def _cnn_fold(x, y, xt, seed: int) -> np.ndarray:
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential([keras.Input(x.shape[1:])] + [
        layer for f in (16, 32, 64, 64) for layer in (layers.Conv2D(f, 3, padding="same", activation="relu"),
                                                       layers.MaxPooling2D())
    ] + [layers.GlobalAveragePooling2D(), layers.Dropout(0.3), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    flip = x[:, :, ::-1]  # left-right flips: the side of the head tells nothing
    model.fit(np.concatenate([x, flip]), np.concatenate([y, y]), batch_size=32, epochs=12, verbose=0)
    return model.predict(xt, verbose=0)[:, 0]


def _sample(files: list[str], n: int, seed: int) -> list[str]:
    if n >= len(files):
        return files
    return sorted(np.random.default_rng(seed).choice(files, n, replace=False).tolist())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", default=os.path.join(SHARED, "rsna-unlabelled"))
    ap.add_argument("--series", default=os.path.join(SHARED, "rsna-test-series"))
    ap.add_argument("--synthetic", help="a corpus folder (else one is written for the run)")
    ap.add_argument("--version", type=int, default=3)
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=252, help="synthetic slices measured (default 252, as many as real)")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN discriminator (no TensorFlow)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        corpus = args.synthetic
        if corpus is None:
            from ichprep.synth import SynthConfig, write_corpus

            corpus = os.path.join(work, "corpus")
            t0 = time.perf_counter()
            s = write_corpus(corpus, SynthConfig(studies=args.studies, slices=args.slices, seed=args.seed,
                                                 version=args.version))
            rate = s["slices"] / (time.perf_counter() - t0)
            print(f"synthetic corpus: version {args.version}, {s['slices']} slices, {rate:.0f} slices/s", file=sys.stderr)
        synth_files = _files(corpus)
        real = measure(_files(args.real), "real")
        synth = measure(_sample(synth_files, args.sample, args.seed), "synthetic")
        real_z = series_correlations(_files(args.series))
        synth_z = series_correlations(synth_files)
    table = property_table(real, synth) + band_table(real, synth)
    rz, sz = float(np.nanmean(real_z)), float(np.nanmean(synth_z))
    table.append(dict(property="neighbour-slice correlation (brain window)", real=rz, synthetic=sz,
                      relative=abs(sz / rz - 1), ks=math.nan, ok=bool(abs(sz / rz - 1) <= 0.25)))
    disc = discriminate(real, synth, not args.no_cnn)
    _print(table, disc, len(real["rows"]), len(synth["rows"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(version=args.version, table=table, discriminator=disc, real=len(real["rows"]),
                           synthetic=len(synth["rows"])), fh, indent=1)
    return 0


def _print(table, disc, n_real, n_synth) -> None:
    print(f"\n{n_real} real slices against {n_synth} synthetic (median per slice; KS: per-slice values)\n")
    print(f"{'property':58s} {'real':>9s} {'synthetic':>10s} {'rel.':>6s} {'KS':>6s}  ok")
    for r in table:
        f = lambda v: "     -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"  # noqa: E731
        print(f"{r['property']:58s} {r['real']:9.3f} {r['synthetic']:10.3f} {f(r['relative'])} {f(r['ks'])}  "
              f"{'yes' if r['ok'] else 'NO'}")
    print(f"\n{sum(r['ok'] for r in table)} of {len(table)} properties within 25% or KS < 0.2")
    for k, v in disc.items():
        lo, hi = v["interval"]
        print(f"discriminator ({k}): held-out AUC {v['auc']:.3f} [{lo:.3f}, {hi:.3f}] (0.5 = indistinguishable)")


if __name__ == "__main__":
    sys.exit(main())
