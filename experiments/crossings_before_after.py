"""The same val crossings through the whole pipeline with two detectors: the before/after picture of issue 24.

Finds, in the first images of a split (truth derived with the axis rule, where a crossing's two masks are
right), every pair of true chromosomes that touch or cross (their masks, grown by 2 px, meet) at an angle of
``--min-angle`` degrees or more between their long axes. Runs the whole pipeline on each image with the
``--before`` detector and with the ``--after`` one, and counts the pairs whose two members are both found
(matched one to one at mask IoU 0.5, as ``evaluate.py --stage full`` matches them). Draws the pairs where the two
detectors differ first, then the others: the truth (one colour per member), then each detector's final masks
that hold 30 % or more of a member (one colour per instance), each tile captioned with how many of the two it
found. Use a validation split.

    python experiments/crossings_before_after.py --after runs/seg_c5/last.pth --out docs/crossings_before_after.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from karyotyping.core import DEFAULT_SEG_WEIGHTS  # noqa: E402

#: contour colours (RGB), one per member or predicted instance of a tile
COLOURS = [(255, 60, 0), (0, 110, 255), (0, 170, 0), (220, 0, 200), (200, 140, 0), (0, 190, 190)]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=30)
    p.add_argument("--before", default=str(DEFAULT_SEG_WEIGHTS), help="detector of the left column (shipped)")
    p.add_argument("--after", required=True, help="detector of the right column")
    p.add_argument("--min-angle", type=float, default=30.0, help="pairs whose long axes differ by this much or more")
    p.add_argument("--max-tiles", type=int, default=12, help="pairs drawn, at most")
    p.add_argument("--tile", type=int, default=160, help="tile size in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="crossings_before_after.png", help="PNG to write")
    return p


def crossing_pairs(masks: np.ndarray, min_angle: float) -> list[tuple[int, int]]:
    """Pairs of instances whose masks, grown by 2 px, meet and whose long axes differ by ``min_angle`` or more."""
    import cv2

    from datasets.orientation import long_axis_angle

    grown = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) for m in masks]).astype(bool)
    angles = [long_axis_angle(m) for m in masks]
    out = []
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            if not (grown[i] & grown[j]).any():
                continue
            d = abs(angles[i] - angles[j]) % 180.0
            if min(d, 180.0 - d) >= min_angle:
                out.append((i, j))
    return out


def _tile(image: np.ndarray, box, masks, caption: str, size: int) -> np.ndarray:
    import cv2

    x0, y0, x1, y1 = box
    rgb = cv2.cvtColor((np.clip(image[y0:y1, x0:x1], 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    scale = size / max(x1 - x0, y1 - y0)
    rgb = cv2.resize(rgb, (round((x1 - x0) * scale), round((y1 - y0) * scale)), interpolation=cv2.INTER_CUBIC)
    for k, m in enumerate(masks):
        crop = cv2.resize(m[y0:y1, x0:x1].astype(np.uint8), rgb.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        cs, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, COLOURS[k % len(COLOURS)], 2)
    canvas = np.full((size + 18, size, 3), 255, np.uint8)
    canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
    cv2.putText(canvas, caption, (3, size + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    from datasets import build_dataset
    from fileio import atomic_write_image
    from karyotyping.core import KaryotypePipeline
    from metrics.matching import held_fraction, instance_fates

    if args.split == "test":
        sys.exit("error: look at a validation split, never at the test split")
    for w in (args.before, args.after):
        if not Path(w).is_file():
            sys.exit(f"error: detector weights not found: {w}")
    ds = build_dataset("voc", args.data_root, args.split, crossings="axis")
    pipes = [KaryotypePipeline(w, device=args.device) for w in (args.before, args.after)]
    rows, both = [], np.zeros(2, int)  # rows: (differs, [tiles]); both: pairs with both members found
    n_pairs = 0
    for i in range(min(args.max_images, len(ds))):
        rec = ds[i]
        if rec.masks is None or len(rec) < 2:
            continue
        pairs = crossing_pairs(rec.masks, args.min_angle)
        if not pairs:
            continue
        preds = [p.run(rec.image, name=rec.image_id or None) for p in pipes]
        fates = [instance_fates(rec.masks, rec.boxes, p.masks, p.boxes).true_fate for p in preds]
        held = [held_fraction(rec.masks, p.masks) if len(p.masks) else np.zeros((len(rec), 0)) for p in preds]
        h, w = rec.image.shape
        for a, b in pairs:
            n_pairs += 1
            found = [int(f[a] == "found") + int(f[b] == "found") for f in fates]
            both += np.array(found) == 2
            ys, xs = np.nonzero(rec.masks[a] | rec.masks[b])
            pad = 10
            box = (
                max(xs.min() - pad, 0),
                max(ys.min() - pad, 0),
                min(xs.max() + pad + 1, w),
                min(ys.max() + pad + 1, h),
            )
            tiles = [_tile(rec.image, box, rec.masks[[a, b]], f"{rec.image_id}: truth", args.tile)]
            for name, p, hf, n_found in zip(("before", "after"), preds, held, found):
                near = np.flatnonzero((hf[[a, b]] >= 0.3).any(0)) if hf.shape[1] else []
                tiles.append(_tile(rec.image, box, p.masks[near], f"{name}: {n_found}/2 found", args.tile))
            rows.append((found[0] != found[1], tiles))
    print(f"{n_pairs} touching or crossing pairs (>= {args.min_angle:g} degrees) in {args.max_images} images")
    print(f"both members found: before {both[0]} ({both[0] / max(n_pairs, 1):.1%}), after {both[1]} "
          f"({both[1] / max(n_pairs, 1):.1%})")  # fmt: skip
    summary = {"pairs": n_pairs, "both_found_before": int(both[0]), "both_found_after": int(both[1])}
    if not rows:
        print(json.dumps(summary))
        return 0
    rows.sort(key=lambda r: not r[0])  # the pairs where the detectors differ first (stable: image order kept)
    gap = np.full((rows[0][1][0].shape[0], 6, 3), 255, np.uint8)
    lines = [np.hstack([x for t in tiles for x in (t, gap)][:-1]) for _, tiles in rows[: args.max_tiles]]
    per_row = 2  # two pairs side by side
    sep = np.full((lines[0].shape[0], 20, 3), 255, np.uint8)
    while len(lines) % per_row:
        lines.append(np.full_like(lines[0], 255))
    grid = [np.hstack([lines[j], sep, lines[j + 1]]) for j in range(0, len(lines), per_row)]
    atomic_write_image(args.out, np.vstack(grid))
    print(f"wrote {args.out}")
    print(json.dumps(summary | {"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
