"""Accuracy of the chromosome features: centromere, centromere index, polarity, relative length.

(a) Synthetic spreads (``datasets.synthetic``, exact centromeres and p directions): centromere position
    error (fraction of the length, measured along our centre line), CI mean absolute error against
    the generator's CI, polarity accuracy (our p end vs ``record.p_dir``), overall and by CI band.
(b) Real CIL:54816 images (``datasets.voc.VOCDataset``, masks derived from boxes): per-class median
    measured CI and relative length against ``karyogram.reference``; plot to ``docs/ci_per_class.png``.

Prints a table and, last, one JSON line. Example (short run)::

    python benchmarks/features_accuracy.py --n-synthetic 4 --n-real 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from features.geometry import resample_line  # noqa: E402
from features.triad import spread_features  # noqa: E402
from karyogram.labels import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from karyogram.reference import centromere_indices, relative_lengths  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-synthetic", type=int, default=4, help="synthetic spreads (0 = skip part a)")
    p.add_argument("--seed", type=int, default=0, help="synthetic generation seed")
    p.add_argument("--n-real", type=int, default=50, help="CIL images (0 = skip part b)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cil54816"), help="CIL:54816 folder")
    p.add_argument("--plot", default=str(ROOT / "docs" / "ci_per_class.png"), help="per-class plot ('' = none)")
    return p


def _pos_on_line(line: np.ndarray, xy: np.ndarray) -> float:
    """Fraction of the length of ``line`` [K, 2] at the point nearest to ``xy``."""
    pts = resample_line(line, 201)
    return float(np.argmin(np.linalg.norm(pts - xy[None], axis=1)) / 200.0)


def synthetic_part(n: int, seed: int) -> dict:
    from datasets.synthetic import SyntheticDataset

    ds = SyntheticDataset(None, "all", n=n, seed=seed, val_fraction=0.0)
    ref_ci = centromere_indices()
    rows = []  # (label, pos_err, ci_true, ci_est, polarity_ok, polarity_conf, centromere_conf)
    for i in range(len(ds)):
        rec = ds[i]
        _, feats = spread_features(rec.image, rec.masks)
        for j, f in enumerate(feats):
            c, pd = rec.centromeres[j], rec.p_dir[j]
            if not (np.isfinite(c).all() and np.isfinite(pd).all()) or f.length_px <= 0:
                continue
            true_pos = _pos_on_line(f.centerline, c)
            # our p direction: from our centromere towards our p end
            v = f.p_end_xy - f.centromere_xy
            ok = float(np.dot(v, pd)) > 0
            rows.append(
                (
                    int(rec.labels[j]),
                    abs(f.centromere_pos - true_pos),
                    float(ref_ci[rec.labels[j] - 1]),
                    f.centromere_index,
                    ok,
                    f.polarity_conf,
                    f.centromere_conf,
                )
            )
    a = np.array(rows, dtype=np.float64).reshape(-1, 7)
    out: dict = {"instances": len(a), "spreads": len(ds)}
    if not len(a):
        return out
    lab, perr, cit, cie, pok, pconf = a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5]
    out.update(
        centromere_pos_err_median=float(np.median(perr)),
        centromere_pos_err_mean=float(perr.mean()),
        centromere_within_5pct=float((perr <= 0.05).mean()),
        ci_mae=float(np.abs(cie - cit).mean()),
        polarity_acc=float(pok.mean()),
    )
    for name, sel in (
        ("ci<0.3", cit < 0.3),
        ("0.3<=ci<0.4", (cit >= 0.3) & (cit < 0.4)),
        ("ci>=0.4", cit >= 0.4),
        ("polarity_conf>=0.5", pconf >= 0.5),
    ):
        if sel.any():
            out[f"polarity_acc[{name}]"] = float(pok[sel].mean())
            out[f"ci_mae[{name}]"] = float(np.abs(cie - cit)[sel].mean())
            out[f"fraction[{name}]"] = float(sel.mean())
    per_class = {}
    for cid in range(1, NUM_CLASSES + 1):
        s = lab == cid
        if s.any():
            per_class[CLASS_NAMES[cid - 1]] = {
                "n": int(s.sum()),
                "ci_ref": round(float(cit[s][0]), 3),
                "ci_median": round(float(np.median(cie[s])), 3),
                "polarity_acc": round(float(pok[s].mean()), 3),
            }
    out["per_class"] = per_class
    return out


def real_part(root: str, n: int, plot: str) -> dict:
    from datasets.voc import VOCDataset

    if not Path(root).is_dir():
        return {"skipped": f"no data at {root}"}
    ds = VOCDataset(root, "all", derive=True)
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False).tolist())
    ci = {c: [] for c in range(1, NUM_CLASSES + 1)}
    rl = {c: [] for c in range(1, NUM_CLASSES + 1)}
    col_rl = None
    for i in pick:
        rec = ds[i]
        if rec.masks is None or len(rec) == 0:
            continue
        x, feats = spread_features(rec.image, rec.masks)
        if col_rl is None:
            from features.triad import FEATURE_NAMES

            col_rl = FEATURE_NAMES.index("rel_length")
        for j, f in enumerate(feats):
            c = int(rec.labels[j])
            if 1 <= c <= NUM_CLASSES and f.length_px > 0:
                ci[c].append(f.centromere_index)
                rl[c].append(float(x[j, col_rl]))
    ref_ci, ref_rl = centromere_indices(), relative_lengths()
    med_ci = np.array([np.median(ci[c]) if ci[c] else np.nan for c in range(1, NUM_CLASSES + 1)])
    med_rl = np.array([np.median(rl[c]) if rl[c] else np.nan for c in range(1, NUM_CLASSES + 1)])
    ok = np.isfinite(med_ci)
    out = {
        "images": len(pick),
        "instances": int(sum(len(v) for v in ci.values())),
        "ci_median_abs_err_vs_ref": float(np.nanmean(np.abs(med_ci - ref_ci))),
        "ci_corr_vs_ref": float(np.corrcoef(med_ci[ok], ref_ci[ok])[0, 1]) if ok.sum() > 2 else float("nan"),
        "rel_length_median_abs_err_vs_ref": float(np.nanmean(np.abs(med_rl - ref_rl))),
        "rel_length_corr_vs_ref": float(np.corrcoef(med_rl[ok], ref_rl[ok])[0, 1]) if ok.sum() > 2 else float("nan"),
        "per_class": {
            CLASS_NAMES[c - 1]: {
                "n": len(ci[c]),
                "ci_ref": round(float(ref_ci[c - 1]), 3),
                "ci_median": round(float(med_ci[c - 1]), 3),
                "rel_len_ref": round(float(ref_rl[c - 1]), 4),
                "rel_len_median": round(float(med_rl[c - 1]), 4),
            }
            for c in range(1, NUM_CLASSES + 1)
            if ci[c]
        },
    }
    if plot:
        _plot(ci, rl, ref_ci, ref_rl, plot, len(pick))
        out["plot"] = plot
    return out


def _plot(ci: dict, rl: dict, ref_ci: np.ndarray, ref_rl: np.ndarray, path: str, n_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datasets.io import atomic_save_figure

    ids = list(range(1, NUM_CLASSES + 1))
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for ax, data, ref, what in (
        (axes[0], ci, ref_ci, "centromere index p/(p+q)"),
        (axes[1], rl, ref_rl, "relative length"),
    ):
        vals = [data[c] if data[c] else [np.nan] for c in ids]
        ax.boxplot(vals, positions=ids, widths=0.6, showfliers=False)
        ax.plot(ids, ref, "r_", markersize=18, mew=2.5, label="reference (ISCN 850)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    axes[1].set_xticks(ids, CLASS_NAMES)
    axes[1].set_xlabel("chromosome")
    axes[0].set_title(f"Measured vs reference, CIL:54816 ({n_images} images, masks derived from boxes)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict:
    if args.n_synthetic < 0 or args.n_real < 0:
        raise ValueError("--n-synthetic and --n-real must be >= 0")
    t0 = time.time()
    result: dict = {}
    if args.n_synthetic:
        s = synthetic_part(args.n_synthetic, args.seed)
        result["synthetic"] = s
        print(f"== synthetic: {s.get('spreads')} spreads, {s.get('instances')} chromosomes")
        for k, v in s.items():
            if k not in ("per_class", "spreads", "instances"):
                print(f"  {k:32s} {v:.4f}")
        print("  class  n  ci_ref ci_med polarity")
        for k, v in s.get("per_class", {}).items():
            print(f"  {k:>5s} {v['n']:3d}  {v['ci_ref']:.3f}  {v['ci_median']:.3f}  {v['polarity_acc']:.3f}")
    if args.n_real:
        r = real_part(args.data, args.n_real, args.plot)
        result["real"] = r
        print(f"== real CIL: {r.get('images')} images, {r.get('instances')} chromosomes {r.get('skipped', '')}")
        for k, v in r.items():
            if isinstance(v, float):
                print(f"  {k:36s} {v:.4f}")
        print("  class  n  ci_ref ci_med  rl_ref rl_med")
        for k, v in r.get("per_class", {}).items():
            print(
                f"  {k:>5s} {v['n']:3d}  {v['ci_ref']:.3f}  {v['ci_median']:.3f}  {v['rel_len_ref']:.4f} {v['rel_len_median']:.4f}"
            )
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
