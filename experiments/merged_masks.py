"""Draw the pipeline's merged masks next to the true masks they swallowed: what "lost_merged" looks like.

Runs the detector and the pipeline's instance selection (:func:`karyotyping.masks.keep_instances`, the
pipeline's default thresholds) on the first images of a split, finds each kept mask that holds half or more of
two or more true chromosomes (:func:`metrics.matching.error_breakdown` counts those chromosomes as
``lost_merged``), and draws it (red, left) beside the true masks it holds (one colour each, with their
annotated boxes, right). Use a validation split.

    python experiments/merged_masks.py --max-images 12 --out docs/merged_masks.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from karyotyping.core import DEFAULT_SEG_WEIGHTS  # noqa: E402
from karyotyping.detection import SCORE_THRESH  # noqa: E402

COLOURS = [(0, 120, 255), (0, 170, 0), (255, 0, 200), (200, 120, 0), (0, 200, 200)]  # BGR, one per true mask


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="voc")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=12)
    p.add_argument("--max-tiles", type=int, default=24, help="merged masks drawn (pairs of tiles), at most")
    p.add_argument("--tile", type=int, default=150, help="tile size in pixels")
    p.add_argument("--seg-weights", default=str(DEFAULT_SEG_WEIGHTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="merged_masks.png", help="PNG to write")
    return p


def _tile(image: np.ndarray, box: tuple[int, int, int, int], masks, colours, boxes, size: int) -> np.ndarray:
    import cv2

    x0, y0, x1, y1 = box
    rgb = cv2.cvtColor((image[y0:y1, x0:x1] * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for k, (m, c) in enumerate(zip(masks, colours)):
        cs, _ = cv2.findContours(m[y0:y1, x0:x1].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, c, 1)
        if boxes is not None:
            b = np.round(boxes[k]).astype(int) - [x0, y0, x0, y0]
            cv2.rectangle(rgb, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), c, 1)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_NEAREST)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    from datasets import build_dataset
    from fileio import atomic_write_image
    from karyotyping.detection import binarize_masks, detect_soft
    from karyotyping.masks import keep_instances
    from karyotyping.runtime import resolve_device
    from metrics.matching import held_fraction
    from models.segmentation import load_segmentation_checkpoint

    if args.split == "test":
        sys.exit("error: look at a validation split, never at the test split")
    ds = build_dataset(args.dataset, args.data_root, args.split)
    device = resolve_device(args.device)
    model, _ = load_segmentation_checkpoint(args.seg_weights, device)
    pairs, n_merged = [], 0
    for i in range(min(args.max_images, len(ds))):
        rec = ds[i]
        if rec.masks is None or len(rec) == 0:
            continue
        out = detect_soft(model, rec.image, score_thresh=SCORE_THRESH, device=device)
        m = binarize_masks(out["masks"], *rec.image.shape)  # the pipeline's defaults (MaskConfig)
        _, kept = keep_instances(m, out["scores"].numpy(), out["masks"], rec.image)
        if not len(kept):
            continue
        held = held_fraction(rec.masks, kept)
        for k in range(len(kept)):
            inside = np.flatnonzero(held[:, k] >= 0.5)
            if len(inside) < 2:
                continue
            n_merged += 1
            ys, xs = np.nonzero(kept[k] | rec.masks[inside].any(0))
            h, w = rec.image.shape
            box = (max(xs.min() - 8, 0), max(ys.min() - 8, 0), min(xs.max() + 9, w), min(ys.max() + 9, h))
            if len(pairs) < args.max_tiles:
                left = _tile(rec.image, box, [kept[k]], [(0, 0, 255)], None, args.tile)
                cols = [COLOURS[j % len(COLOURS)] for j in range(len(inside))]
                right = _tile(rec.image, box, rec.masks[inside], cols, rec.boxes[inside], args.tile)
                pairs.append(np.hstack([left, np.full((args.tile, 4, 3), 255, np.uint8), right]))
    print(f"{n_merged} kept masks hold half or more of two or more true chromosomes ({args.max_images} images)")
    if not pairs:
        return 0
    per_row = 4
    blank = np.full_like(pairs[0], 255)
    while len(pairs) % per_row:
        pairs.append(blank)
    gap = np.full((pairs[0].shape[0], 12, 3), 255, np.uint8)
    rows = [
        np.hstack([x for p in pairs[j : j + per_row] for x in (p, gap)][:-1]) for j in range(0, len(pairs), per_row)
    ]
    atomic_write_image(args.out, np.vstack(rows)[..., ::-1])  # the tiles are BGR (OpenCV); it takes RGB
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
