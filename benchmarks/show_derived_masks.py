"""Overlay masks derived from boxes (datasets.derive_masks) on a few real CIL:54816 images.

    python benchmarks/show_derived_masks.py --root ../shared/data/cil54816 --out docs/derived_masks.png
    python benchmarks/show_derived_masks.py --crossings compare --out docs/crossing_masks.png

Each panel is a crop (``--crop`` px square, at the densest part of the spread) with every derived mask in its
own colour, its outline, and the annotated box as a thin grey rectangle. With ``--crossings compare``, each
row is instead one place where two derived masks share pixels under ``crossings="axis"``: the two
chromosomes' masks under the default rule (disjoint) and under the axis rule (the crossing belongs to both;
overlap purple). Data: CIL:54816, CC BY 4.0
(Tseng et al., Sci Data 10:104 (2023), doi:10.1038/s41597-023-02003-7).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.io import atomic_save_figure  # noqa: E402
from datasets.voc import VOCDataset  # noqa: E402


def overlay(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB uint8 [H, W, 3]: the grey image with each mask tinted in its own colour and outlined."""
    rgb = (np.stack([image] * 3, -1) * 255).astype(np.float32)
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, (len(masks), 3))
    for m, c in zip(masks, colours):
        sel = m > 0
        rgb[sel] = 0.55 * rgb[sel] + 0.45 * c
    out = rgb.astype(np.uint8)
    for m, c, b in zip(masks, colours, boxes):
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(v) for v in c // 2), 1)
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), (150, 150, 150), 1)
    return out


def densest_window(boxes: np.ndarray, h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """The ``size`` square window (clipped to the image) that contains the most box centres."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    best, best_xy = -1, (0, 0)
    for x0 in range(0, max(1, w - size + 1), 20):
        for y0 in range(0, max(1, h - size + 1), 20):
            n = int(((cx >= x0) & (cx < x0 + size) & (cy >= y0) & (cy < y0 + size)).sum())
            if n > best:
                best, best_xy = n, (x0, y0)
    x0, y0 = best_xy
    return x0, y0, min(w, x0 + size), min(h, y0 + size)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Show masks derived from CIL boxes", add_help=True)
    p.add_argument("--root", default="../shared/data/cil54816", help="CIL:54816 folder (Pascal-VOC layout)")
    p.add_argument("--ids", nargs="+", default=["1100694", "103081", "1056462"], help="image ids (file stems)")
    p.add_argument("--crop", type=int, default=300, help="side of the square crop shown per image (px)")
    p.add_argument(
        "--crossings",
        choices=("nearest", "axis", "compare"),
        default="nearest",
        help="the crossing rule of derive_masks; compare: each image's crossings under both rules side by side",
    )
    p.add_argument("--max-pairs", type=int, default=3, help="--crossings compare: crossings shown per image")
    p.add_argument("--out", default="docs/derived_masks.png")
    return p


def crossing_pairs(masks: np.ndarray, max_pairs: int, min_pixels: int = 30) -> list[tuple[int, int]]:
    """The two instances sharing each of the largest clusters of shared pixels of ``masks`` [N, H, W], largest first."""
    count = masks.sum(0, dtype=np.uint16)
    n, lab, st, _ = cv2.connectedComponentsWithStats((count > 1).astype(np.uint8), connectivity=8)
    pairs: list[tuple[int, int]] = []
    for c in np.argsort(-st[1:, cv2.CC_STAT_AREA]) + 1:
        if st[c, cv2.CC_STAT_AREA] < min_pixels or len(pairs) >= max_pairs:
            break
        ids = np.flatnonzero(masks[:, lab == c].any(1))
        pair = (int(ids[0]), int(ids[1]))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def pair_view(image: np.ndarray, masks: np.ndarray, pair: tuple[int, int], window) -> np.ndarray:
    """RGB uint8 crop of ``window`` (x0, y0, x1, y1): the pair's first mask tinted red, its second blue."""
    x0, y0, x1, y1 = window
    rgb = np.stack([image[y0:y1, x0:x1] * 255] * 3, -1).astype(np.float32)
    for j, colour in zip(pair, ((255, 0, 0), (0, 0, 255))):
        sel = masks[j, y0:y1, x0:x1] > 0
        rgb[sel] = 0.6 * rgb[sel] + 0.4 * np.array(colour, np.float32)
    return rgb.astype(np.uint8)


def compare_crossings(args: argparse.Namespace, plt) -> None:
    """The figure of ``--crossings compare``."""
    nearest, axis = VOCDataset(args.root), VOCDataset(args.root, crossings="axis")
    by_id = {item[1].stem: item for item in nearest.items}
    missing = [i for i in args.ids if i not in by_id]
    if missing:
        raise ValueError(f"image ids {missing} are not in {args.root}")
    rows = []
    for image_id in args.ids:
        a, b = nearest.load(by_id[image_id]), axis.load(by_id[image_id])
        for pair in crossing_pairs(b.masks, args.max_pairs):
            box = b.boxes[list(pair)]
            window = (
                int(max(0, box[:, 0].min() - 5)),
                int(max(0, box[:, 1].min() - 5)),
                int(min(b.width, box[:, 2].max() + 5)),
                int(min(b.height, box[:, 3].max() + 5)),
            )
            rows.append(
                (image_id, pair_view(a.image, a.masks, pair, window), pair_view(b.image, b.masks, pair, window))
            )
    if not rows:
        raise ValueError(f"no two derived masks share pixels in images {args.ids}")
    fig, axes = plt.subplots(len(rows), 2, figsize=(6, 3 * len(rows)), squeeze=False)
    for (image_id, left, right), (ax_l, ax_r) in zip(rows, axes):
        ax_l.imshow(left, interpolation="nearest")
        ax_r.imshow(right, interpolation="nearest")
        ax_l.set_title(f"CIL {image_id}: nearest (default)", fontsize=8)
        ax_r.set_title('crossings="axis"', fontsize=8)
        ax_l.axis("off")
        ax_r.axis("off")
    _save(fig, plt, "Two derived masks at a crossing: red, blue, both purple", args.out, (0, 0.015, 1, 0.98))
    print(f"wrote {args.out} ({len(rows)} crossings)")


def _save(fig, plt, title: str, out: str, rect: tuple[float, float, float, float]) -> None:
    """Title, CIL attribution, layout; written atomically."""
    fig.suptitle(title, fontsize=10)
    fig.text(
        0.5, rect[1] / 3, "Images: CIL:54816, CC BY 4.0, Tseng et al., Sci Data 10:104 (2023)", ha="center", fontsize=8
    )
    fig.tight_layout(rect=rect)
    atomic_save_figure(fig, out, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.crossings == "compare":
        compare_crossings(args, plt)
        return
    ds = VOCDataset(args.root, crossings=args.crossings)
    by_id = {item[1].stem: item for item in ds.items}
    missing = [i for i in args.ids if i not in by_id]
    if missing:
        raise ValueError(f"image ids {missing} are not in {args.root}")
    fig, axes = plt.subplots(1, len(args.ids), figsize=(5.2 * len(args.ids), 5.6))
    axes = np.atleast_1d(axes)
    for ax, image_id in zip(axes, args.ids):
        t = time.perf_counter()
        rec = ds.load(by_id[image_id])
        dt = time.perf_counter() - t
        x0, y0, x1, y1 = densest_window(rec.boxes, rec.height, rec.width, args.crop)
        ov = overlay(rec.image, rec.masks, rec.boxes)[y0:y1, x0:x1]
        ax.imshow(ov, interpolation="nearest")
        ax.set_title(
            f"CIL {image_id}: {len(rec)} boxes, {rec.meta['mask_fallbacks']} ellipse fallbacks\n"
            f"crop x {x0}-{x1}, y {y0}-{y1}; load + derive {dt:.2f} s",
            fontsize=9,
        )
        ax.axis("off")
    title = "Masks derived from bounding boxes (datasets/derive_masks.py); grey: annotated boxes"
    _save(fig, plt, title, args.out, (0, 0.03, 1, 0.95))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
