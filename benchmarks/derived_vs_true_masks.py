"""Masks derived from boxes against true pixel masks, by how each chromosome lies (isolated, touching, crossing).

CIL:54816 has boxes only, so the detector trains on, and is scored against, masks that
``datasets/derive_masks.py`` derives from the boxes. How good are those masks? A set with true pixel masks
answers it: take its true boxes, derive masks from them with each crossing rule (``--rules``), and compare each
derived mask with its true mask (IoU). The ADIR M-FISH slides (the default) annotate every pixel and give the
pixels where two chromosomes cross to both (``datasets/mfish.py``); their DAPI images, inverted, are dark
chromosomes on a light background like the G-banded ones, without bands.

    python benchmarks/derived_vs_true_masks.py --split val

Prints a Markdown table (per rule and kind: chromosomes, mean IoU, IoU >= 0.5, IoU >= 0.7) and, last, one JSON
line. Data: ADIR M-FISH image set #1, © 2000 Advanced Digital Imaging Research (free use with notice).
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

KINDS = ("isolated", "touching", "crossing", "all")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mfish", help="a loader with true pixel masks: mfish, coco, labelme, yolo")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mfish"))
    p.add_argument("--split", default="val", choices=("train", "val", "test", "all"))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=0, help="only the first N images of the split (0 = all)")
    p.add_argument("--rules", nargs="+", default=["nearest", "axis"], help="crossing rules of derive_masks")
    return p


def _summary(kinds: np.ndarray, ious: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for kind in KINDS:
        s = ious if kind == "all" else ious[kinds == kind]
        out[kind] = {
            "n": int(len(s)),
            "mean_iou": float(s.mean()) if len(s) else float("nan"),
            "iou_ge_0.5": float((s >= 0.5).mean()) if len(s) else float("nan"),
            "iou_ge_0.7": float((s >= 0.7).mean()) if len(s) else float("nan"),
        }
    return out


def main(args: argparse.Namespace) -> dict:
    from datasets import build_dataset
    from datasets.derive_masks import CROSSING_RULES, contact_kinds, derive_masks

    bad = [r for r in args.rules if r not in CROSSING_RULES]
    if bad:
        raise SystemExit(f"error: --rules {' '.join(bad)}: unknown (choose from {', '.join(CROSSING_RULES)})")
    if not Path(args.data_root).is_dir():
        raise SystemExit(f"error: --data-root {args.data_root} does not exist")
    kw = {"val_fraction": args.val_fraction, "seed": args.split_seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loaders' per-file skip warnings (small components, ...)
        try:
            ds = build_dataset(args.dataset, args.data_root, args.split, **kw)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        n = len(ds) if not args.max_images else min(args.max_images, len(ds))
        kinds: list[str] = []
        ious: dict[str, list[float]] = {r: [] for r in args.rules}
        images = 0
        for i in range(n):
            rec = ds[i]
            if not len(rec):
                continue
            if rec.masks is None or rec.masks_derived:
                raise SystemExit(f"error: --dataset {args.dataset} has no true pixel masks to compare with")
            true = rec.masks > 0
            images += 1
            kinds += contact_kinds(true)
            dark = rec.meta.get("polarity", "dark") != "bright"
            for rule in args.rules:
                der = derive_masks(rec.image, rec.boxes, dark_objects=dark, crossings=rule) > 0
                inter = (der & true).sum((1, 2))
                union = (der | true).sum((1, 2))
                ious[rule] += list(inter / np.maximum(union, 1))
    k = np.asarray(kinds)
    res = {
        "dataset": args.dataset,
        "data_root": str(args.data_root),
        "split": args.split,
        "images": images,
        "chromosomes": len(kinds),
        "rules": {r: _summary(k, np.asarray(v, np.float64)) for r, v in ious.items()},
    }
    print(f"{images} images, {len(kinds)} chromosomes of {args.data_root} ({args.dataset}, {args.split})\n")
    print("| rule | kind | chromosomes | mean IoU | IoU ≥ 0.5 | IoU ≥ 0.7 |\n| --- | --- | --- | --- | --- | --- |")
    for rule, summary in res["rules"].items():
        for kind, s in summary.items():
            print(
                f"| {rule} | {kind} | {s['n']} | {s['mean_iou']:.3f} | {s['iou_ge_0.5']:.1%} | {s['iou_ge_0.7']:.1%} |"
            )
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
