"""Dataset statistics for any registry format: images, instances, per-class counts, sizes, skips.

Usage::

    python -m datasets.stats --format voc --root ../shared/data/cil54816 [--split all] [--plots DIR]

Prints a readable summary, then, as its last stdout line, one JSON object with at least
``{"images": N, "instances": M, "per_class": {"1": .., ..., "X": .., "Y": ..}}``.
For ``voc`` masks are not derived (``derive=False``) unless ``--derive`` is given, so the box statistics are
fast; mask statistics are reported when the records carry masks.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from karyogram.labels import CLASS_NAMES

from . import DATASETS, build_dataset
from .io import atomic_save_figure


def _summary(values: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "min": float(a.min()),
        "mean": round(float(a.mean()), 3),
        "median": float(np.median(a)),
        "max": float(a.max()),
    }


def compute_stats(dataset, *, progress: bool | None = None) -> dict[str, Any]:
    """Statistics of a :class:`datasets.base.RecordDataset` (every record is loaded once).

    Returns a dict: ``images``, ``instances``, ``per_class`` (counts by name "1".."22", "X", "Y", plus
    "unknown" for label 0 when present), ``instances_per_image`` / ``box_width`` / ``box_height`` /
    ``box_area`` (px, px, px²) / ``mask_area`` (px²) / ``image_height`` / ``image_width`` summaries
    (n, min, mean, median, max), ``skipped`` (counts by reason from the loader and the records) and
    ``raw`` (the per-image and per-instance lists, for plotting; not JSON-serialised by the CLI).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    per_class: Counter[str] = Counter({n: 0 for n in CLASS_NAMES})
    per_image, widths, heights, mask_areas, img_h, img_w = [], [], [], [], [], []
    skipped: Counter[str] = Counter()
    for i in tqdm(range(len(dataset)), desc="records", disable=not progress):
        rec = dataset[i]
        per_image.append(len(rec))
        img_h.append(rec.height)
        img_w.append(rec.width)
        for lab in rec.labels.tolist():
            per_class[CLASS_NAMES[lab - 1] if lab > 0 else "unknown"] += 1
        if len(rec):
            widths.extend((rec.boxes[:, 2] - rec.boxes[:, 0]).tolist())
            heights.extend((rec.boxes[:, 3] - rec.boxes[:, 1]).tolist())
            if rec.masks is not None:
                mask_areas.extend(rec.masks.reshape(len(rec), -1).sum(1).tolist())
    # the loader counts what it skipped, at index time (files) and while loading (instances)
    skipped.update(getattr(dataset, "skipped", Counter()))
    for reason, n in getattr(dataset, "derive_counts", Counter()).items():
        if reason == "ellipse_fallback" and n:
            skipped["derived masks: ellipse fallback (boxes)"] += int(n)
    w, h = np.asarray(widths), np.asarray(heights)
    return {
        "images": len(per_image),
        "instances": int(sum(per_image)),
        "per_class": dict(per_class),
        "instances_per_image": _summary(per_image),
        "image_height": _summary(img_h),
        "image_width": _summary(img_w),
        "box_width": _summary(w),
        "box_height": _summary(h),
        "box_area": _summary(w * h),
        "mask_area": _summary(mask_areas),
        "skipped": dict(skipped),
        "raw": {"instances_per_image": per_image, "box_width": widths, "box_height": heights, "mask_area": mask_areas},
    }


def format_summary(stats: dict[str, Any], title: str = "") -> str:
    """A readable multi-line summary of :func:`compute_stats` output."""

    def fmt(s: dict[str, float]) -> str:
        if not s.get("n"):
            return "-"
        return f"min {s['min']:.0f}  mean {s['mean']:.1f}  median {s['median']:.0f}  max {s['max']:.0f}  (n={s['n']})"

    lines = [title] if title else []
    lines.append(f"images     {stats['images']}")
    lines.append(f"instances  {stats['instances']}")
    lines.append(f"per image  {fmt(stats['instances_per_image'])}")
    lines.append(f"image h    {fmt(stats['image_height'])}")
    lines.append(f"image w    {fmt(stats['image_width'])}")
    lines.append(f"box w px   {fmt(stats['box_width'])}")
    lines.append(f"box h px   {fmt(stats['box_height'])}")
    lines.append(f"box area   {fmt(stats['box_area'])}")
    lines.append(f"mask area  {fmt(stats['mask_area'])}")
    pc = stats["per_class"]
    lines.append("per class  " + "  ".join(f"{k}:{v}" for k, v in pc.items()))
    if stats["skipped"]:
        lines.append("skipped    " + "; ".join(f"{k}: {v}" for k, v in stats["skipped"].items()))
    else:
        lines.append("skipped    none")
    return "\n".join(lines)


def save_plots(stats: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write instances_per_image.png, per_class.png and sizes.png into ``out_dir`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = stats["raw"]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ipi = raw["instances_per_image"]
    if ipi:
        ax.hist(ipi, bins=np.arange(min(ipi), max(ipi) + 2) - 0.5)
    ax.set_xlabel("instances per image")
    ax.set_ylabel("images")
    fig.tight_layout()
    paths.append(out / "instances_per_image.png")
    atomic_save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = list(stats["per_class"])
    ax.bar(names, [stats["per_class"][n] for n in names])
    ax.set_xlabel("class")
    ax.set_ylabel("instances")
    fig.tight_layout()
    paths.append(out / "per_class.png")
    atomic_save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    if raw["box_width"]:
        axes[0].scatter(raw["box_width"], raw["box_height"], s=2, alpha=0.3)
    axes[0].set_xlabel("box width (px)")
    axes[0].set_ylabel("box height (px)")
    if raw["mask_area"]:
        axes[1].hist(raw["mask_area"], bins=50)
        axes[1].set_xlabel("mask area (px²)")
    else:
        areas = np.asarray(raw["box_width"]) * np.asarray(raw["box_height"])
        if areas.size:
            axes[1].hist(areas, bins=50)
        axes[1].set_xlabel("box area (px²)")
    axes[1].set_ylabel("instances")
    fig.tight_layout()
    paths.append(out / "sizes.png")
    atomic_save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)
    return paths


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Statistics of a chromosome dataset", add_help=True)
    p.add_argument("--format", required=True, choices=sorted(DATASETS), help="dataset format (registry name)")
    p.add_argument("--root", default=None, help="dataset folder (or annotation file, for formats that use one)")
    p.add_argument("--split", default="all", choices=("train", "val", "test", "all"))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--derive", action="store_true", help="voc: derive masks from boxes (slow) to get mask sizes")
    p.add_argument("--plots", default=None, help="folder to write instances_per_image.png, per_class.png, sizes.png")
    p.add_argument("--quiet-warnings", action="store_true", help="hide per-file skip warnings (counts are still shown)")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed}
    if args.format == "voc":
        kw["derive"] = bool(args.derive)
    with warnings.catch_warnings():
        if args.quiet_warnings:
            warnings.simplefilter("ignore")
        ds = build_dataset(args.format, args.root, args.split, **kw)
        stats = compute_stats(ds)
    print(format_summary(stats, title=f"{args.format} {args.root} split={args.split}"))
    if args.plots:
        for p in save_plots(stats, args.plots):
            print(f"wrote {p}")
    public = {k: v for k, v in stats.items() if k != "raw"}
    print(json.dumps(public))
    return public


if __name__ == "__main__":
    main(get_args_parser().parse_args())
