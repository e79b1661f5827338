"""Box and mask AP of one detector when spreads are processed at different scales, on the CIL val split.

"fit" is the model's own input transform (e.g. the shipped detector: longest side resized to 640 px);
a number F replaces it by one fixed scale for every spread (``models.segmentation.FixedScaleTransform``:
each image resized by F of its own pixels, the longest side capped at ``--max-size``). The weights stay
the same, so this shows what the scale alone does to a model trained at another one; a model trained at
a fixed scale (``train_segmentation.py --fixed-scale``) is the fair comparison.

    python experiments/eval_scale.py --seg-weights weights/segmentation.pt --scales fit 0.6 0.75 0.9

Prints a Markdown table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seg-weights", default=str(ROOT / "weights" / "segmentation.pt"))
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    p.add_argument("--split", default="val")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--scales", nargs="+", default=["fit", "0.6", "0.75", "0.9"], help="'fit' or factors")
    p.add_argument("--max-size", type=int, default=1333, help="longest side cap of the fixed scales (pixels)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    return p


def main(args: argparse.Namespace) -> list[dict]:
    import torch

    from datasets import build_dataset
    from karyotyping.detection import evaluate_detection
    from models.segmentation import FixedScaleTransform, load_segmentation_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = load_segmentation_checkpoint(args.seg_weights, "cpu")
    own = model.transform
    ds = build_dataset("voc", args.data_root, args.split, val_fraction=args.val_fraction, seed=args.split_seed)
    n = len(ds) if args.max_images is None else min(args.max_images, len(ds))
    rows = []
    for s in args.scales:
        if s == "fit":
            model.transform = own
        else:
            model.transform = FixedScaleTransform(float(s), args.max_size, [cfg.image_mean], [cfg.image_std])
        t0 = time.perf_counter()
        m = evaluate_detection(model, ds, "cpu", agnostic=cfg.agnostic, max_images=n)
        dt = (time.perf_counter() - t0) / max(n, 1)
        rows.append({"scale": s, "bbox_AP50": m["bbox_AP50"], "segm_AP50": m["segm_AP50"], "bbox_AP": m["bbox_AP"]})
        rows[-1]["s_per_image"] = dt
        print(f"scale {s}: box AP50 {m['bbox_AP50']:.3f} mask AP50 {m['segm_AP50']:.3f} ({dt:.2f} s/image)", flush=True)
    print(f"\n{args.seg_weights} ({cfg.backbone}), {args.split} split, {n} images\n")
    print("| scale | box AP50 | mask AP50 | box AP | s/image |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['scale']} | {r['bbox_AP50']:.3f} | {r['segm_AP50']:.3f} | {r['bbox_AP']:.3f} | {r['s_per_image']:.2f} |"
        )
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
