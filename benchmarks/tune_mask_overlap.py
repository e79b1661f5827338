"""Choose the pipeline's ``--mask-overlap`` (and ``--score-thresh``, and the mask threshold) on a validation split.

Runs the detector once per image (as the pipeline does, at the lowest detection score asked for), then for
each detection score threshold applies :func:`karyotyping.masks.suppress_overlapping_masks` at each
overlap threshold and prints, against the true instances (IoU 0.5): precision, recall, F1, PQ_all, the
mean absolute count error and the mean number of instances kept. Use a validation split, never a test split.

    python benchmarks/tune_mask_overlap.py --seg-weights weights/segmentation.pt --max-images 30
    python benchmarks/tune_mask_overlap.py --score-thresh 0.3 0.4 0.5 --thresholds 0.5 --max-images 30
    python benchmarks/tune_mask_overlap.py --mask-thresh 0.4 0.5 --max-images 30
    python benchmarks/tune_mask_overlap.py --exclusive off on --max-images 30
    python benchmarks/tune_mask_overlap.py --trim off on --max-images 30
    python benchmarks/tune_mask_overlap.py --box-nms 0.5 0.6 0.7 --max-images 30

``--box-nms`` values replace the detector's own box NMS IoU threshold (``box_nms_thresh`` of its config,
0.5 unless it was trained with another) in turn; each one runs the detector again.

``--mask-thresh`` values (the probability a mask pixel must exceed) binarize the same soft masks in turn;
``--exclusive on`` then gives each pixel that several kept detections claim to the surest of them, as the
pipeline does (:func:`karyotyping.masks.exclusive_masks`); ``--trim on`` then keeps only each mask's
chromosome pixels by the image's own contrast (:func:`karyotyping.masks.trim_to_foreground`).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from karyotyping.core import DEFAULT_SEG_WEIGHTS  # noqa: E402
from karyotyping.detection import SCORE_THRESH  # noqa: E402
from karyotyping.masks import MaskConfig  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="voc")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cil54816"))
    p.add_argument("--split", default="val")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=30)
    p.add_argument("--seg-weights", default=str(DEFAULT_SEG_WEIGHTS))
    p.add_argument("--score-thresh", type=float, nargs="+", default=[SCORE_THRESH], help="detection score threshold(s)")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],
        help="--mask-overlap values to try (1 = off)",
    )
    p.add_argument(
        "--mask-thresh", type=float, nargs="+", default=[MaskConfig().mask_thresh], help="mask probability threshold(s)"
    )
    p.add_argument(
        "--exclusive",
        nargs="+",
        choices=("on", "off"),
        default=["on"],
        help="exclusive masks after the suppression (the pipeline's default: on)",
    )
    p.add_argument(
        "--trim",
        nargs="+",
        choices=("on", "off"),
        default=["on"],
        help="trim the masks to the image's foreground at the end (the pipeline's default: on)",
    )
    p.add_argument(
        "--box-nms",
        type=float,
        nargs="+",
        default=None,
        help="the detector's box NMS IoU threshold(s) (default: the one in its config)",
    )
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from datasets import build_dataset
    from karyotyping.detection import binarize_masks, detect_soft
    from karyotyping.masks import keep_instances
    from karyotyping.runtime import resolve_device
    from metrics.matching import matching_dataset, panoptic_quality_all
    from models.segmentation import load_segmentation_checkpoint

    if args.split == "test":
        sys.exit("error: choose thresholds on a validation split, never on the test split")
    for mt in args.mask_thresh:
        if not 0.0 < mt < 1.0:
            sys.exit(f"error: --mask-thresh {mt} must lie in (0, 1)")
    for v in args.box_nms or []:
        if not 0.0 < v <= 1.0:
            sys.exit(f"error: --box-nms {v} must lie in (0, 1]")
    ds = build_dataset(args.dataset, args.data_root, args.split, val_fraction=args.val_fraction, seed=args.split_seed)
    device = resolve_device(args.device)
    model, _ = load_segmentation_checkpoint(args.seg_weights, device)
    # the detector once per image (and NMS value) at the lowest score asked for; soft masks kept as float16
    truth, images, records = [], [], []
    n = min(args.max_images, len(ds)) if args.max_images else len(ds)
    for i in range(n):
        rec = ds[i]
        if rec.masks is not None:
            records.append(rec)
            truth.append(rec.masks)
            images.append(rec.image)
    nms_values = args.box_nms or [model.roi_heads.nms_thresh]
    print(
        f"{'nms':>4} {'mask':>5} {'excl':>4} {'trim':>4} {'score':>6} {'mask-overlap':>12} {'precision':>9} {'recall':>7} "
        f"{'F1':>6} {'PQ_all':>7} {'count err':>9} {'kept':>6}"
    )
    for nms in nms_values:
        model.roi_heads.nms_thresh = nms
        dets = []
        for rec in records:
            out = detect_soft(model, rec.image, score_thresh=min(args.score_thresh), device=device)
            dets.append((out["masks"][:, 0].half(), out["scores"].numpy()))
        for mt in args.mask_thresh:
            binary = [(binarize_masks(p, *t.shape[1:], mt), p, s) for (p, s), t in zip(dets, truth)]
            for ex, tr in itertools.product(args.exclusive, args.trim):
                for st in sorted(args.score_thresh):
                    for th in args.thresholds:
                        pred = []
                        for (m, p, s), image in zip(binary, images):
                            above = s >= st
                            m, p, s2 = m[above], p[above], s[above]
                            cfg = MaskConfig(
                                mask_thresh=mt, mask_overlap=th, exclusive_masks=ex == "on", trim_masks=tr == "on"
                            )
                            pred.append(keep_instances(m, s2, p, image, cfg)[1])
                        r = matching_dataset(truth, pred, thresh=0.5)
                        count = np.mean([abs(len(p) - len(t)) for p, t in zip(pred, truth)])
                        kept = np.mean([len(p) for p in pred])
                        pq = panoptic_quality_all(truth, pred)
                        print(
                            f"{nms:>4.2f} {mt:>5.2f} {ex:>4} {tr:>4} {st:>6.2f} {th:>12.2f} {r.precision:>9.3f} "
                            f"{r.recall:>7.3f} {r.f1:>6.3f} {pq:>7.3f} {count:>9.1f} {kept:>6.1f}",
                            flush=True,
                        )
        del dets
    print(f"{len(truth)} images of {args.dataset}/{args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
