"""How far a VOC set's annotated boxes stand outside the masks derived from them (CIL val split by default).

The detector's evaluation scores boxes against the annotations, while masks derived from the boxes
(``datasets/derive_masks.py``) are tight around the chromosome; a detector trained on the masks' tight
boxes is scored as missing where the two differ. This prints the outward margin per side (pixels), the
IoU between each annotated box and its mask's tight box, and the IoU of the annotated box with the tight
box grown by the image's median margin (what ``datasets.transforms`` trains on after a rotation).

    python experiments/box_margin.py --max-images 20

Prints a Markdown table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    p.add_argument("--split", default="val")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=20)
    return p


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


def main(args: argparse.Namespace) -> dict:
    from datasets.derive_masks import box_margin, outward_margins
    from datasets.record import masks_to_boxes
    from datasets.voc import VOCDataset

    if not Path(args.data_root).is_dir():
        raise SystemExit(f"error: --data-root {args.data_root} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = VOCDataset(args.data_root, args.split, val_fraction=args.val_fraction, seed=args.split_seed)
        n = len(ds) if args.max_images is None else min(args.max_images, len(ds))
        margins, iou_tight, iou_grown, per_image = [], [], [], []
        for i in range(n):
            rec = ds[i]
            if not len(rec):
                continue
            tight = masks_to_boxes(rec.masks)
            out = outward_margins(rec.boxes, rec.masks)
            m = box_margin(rec.boxes, rec.masks)
            margins.append(out.ravel())
            per_image.append(m)
            iou_tight.append(_iou(rec.boxes, tight))
            iou_grown.append(_iou(rec.boxes, tight + np.array([-m, -m, m, m], np.float32)))
    mg, it, ig = (np.concatenate(x) for x in (margins, iou_tight, iou_grown))
    res = {
        "images": len(per_image),
        "boxes": int(len(it)),
        "margin_px_p5_p25_p50_p75_p95": [float(v) for v in np.percentile(mg, [5, 25, 50, 75, 95])],
        "image_median_margin_px_min_max": [float(min(per_image)), float(max(per_image))],
        "iou_tight_median": float(np.median(it)),
        "iou_tight_below_0.75": float((it < 0.75).mean()),
        "iou_tight_below_0.5": float((it < 0.5).mean()),
        "iou_grown_median": float(np.median(ig)),
        "iou_grown_below_0.75": float((ig < 0.75).mean()),
        "iou_grown_below_0.5": float((ig < 0.5).mean()),
    }
    print(f"{res['images']} images, {res['boxes']} boxes of {args.data_root} ({args.split})\n")
    print("| annotated box vs | median IoU | IoU < 0.75 | IoU < 0.5 |\n| --- | --- | --- | --- |")
    print(
        f"| the mask's tight box | {res['iou_tight_median']:.3f} | {res['iou_tight_below_0.75']:.1%} | {res['iou_tight_below_0.5']:.1%} |"
    )
    print(
        f"| tight box + the image's median margin | {res['iou_grown_median']:.3f} | {res['iou_grown_below_0.75']:.1%} | {res['iou_grown_below_0.5']:.1%} |"
    )
    p = res["margin_px_p5_p25_p50_p75_p95"]
    print(f"\nmargin per side (px), 5/25/50/75/95th percentiles: {' / '.join(f'{v:g}' for v in p)}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
