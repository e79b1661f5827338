"""The MIN_AREA skew: the pipeline's identification of true chromosomes when specks set the spread's scale or not.

The trainer left masks under ``MIN_AREA`` pixels out before it measured the per-spread scale features (and the
axis crops' minimum width); the pipeline measured them over every mask it kept. This runs the pipeline's own
path, :func:`karyotyping.identify.measure_and_classify`, on every true mask of each cell with the shipped
classifier, and scores the instances the trainer keeps (labelled, at least ``MIN_AREA`` pixels, with a centre
line) as ``evaluate.py --stage cls`` does (per-crop argmax and the karyotype assignment over those instances).
Run it on the code before issue 26 item 2 and after (where the scale is set by the masks of at least
``MIN_AREA`` pixels in both): the difference is what the skew did to the pipeline's inputs.

``--pipeline`` runs the whole pipeline (shipped weights, its defaults) on each image instead and counts the
instances it keeps under ``MIN_AREA`` pixels (at its processing resolution), the only ones whose presence the
change can matter for; ``--save`` / ``--compare`` then hold each image's probabilities.

    python experiments/min_area_skew.py --data-root ../shared/data/cil54816 --save runs/min_area_skew_before.npz  # old code
    python experiments/min_area_skew.py --data-root ../shared/data/cil54816 --compare runs/min_area_skew_before.npz

Prints its figures and, last, one JSON line.
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

#: the trainer's smallest mask (pixels), before and after the change
MIN_AREA = 12


def get_args_parser() -> argparse.ArgumentParser:
    from datasets.splits import add_split_args

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="voc")
    p.add_argument("--data-root", required=True)
    p.add_argument("--cls-weights", default=str(ROOT / "weights/classifier.pt"))
    p.add_argument("--seg-weights", default=str(ROOT / "weights/segmentation.pt"))
    p.add_argument("--pipeline", action="store_true", help="the whole pipeline's own masks instead of the true ones")
    add_split_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--save", type=Path, help="write each scored instance's probabilities here (.npz)")
    g.add_argument("--compare", type=Path, help="compare the probabilities with a --save file of another run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    from datasets import build_dataset
    from karyogram.assign import argmax_labels, assign_karyotype, config_for_classifier
    from karyotyping.identify import measure_and_classify
    from metrics.identification import identification_metrics
    from models.classifier import load_classifier_members

    torch.set_num_threads(1)
    members = load_classifier_members(args.cls_weights, "cpu")
    assign_cfg = config_for_classifier(members[0][1].feature_groups)
    ds = build_dataset(args.dataset, args.data_root, args.split, val_fraction=args.val_fraction, seed=args.split_seed)
    n = len(ds) if args.max_images <= 0 else min(args.max_images, len(ds))
    if args.pipeline:
        return _pipeline(args, ds, n)
    true, by_argmax, by_assignment, saved = [], [], [], {}
    cells_with_specks, specks = 0, 0
    for k in range(n):
        rec = ds[k]
        if rec.masks is None or not (rec.labels > 0).any():
            continue
        area = (rec.masks.reshape(len(rec), -1) > 0).sum(1)
        found = measure_and_classify(members, rec.image, rec.masks, rec.boxes)
        straight = np.array([bool(np.asarray(f.straightened_mask).any()) for f in found.feats])
        keep = np.flatnonzero((area >= MIN_AREA) & (rec.labels > 0) & straight)
        small = int((area < MIN_AREA).sum())
        cells_with_specks += small > 0
        specks += small
        if not len(keep):
            continue
        probs = found.probs[keep]
        saved[rec.image_id or str(k)] = probs
        lengths = np.array([found.feats[i].length_px for i in keep], np.float64)
        ci = np.array([found.feats[i].centromere_index for i in keep], np.float64)
        true.append(rec.labels[keep].astype(np.int64))
        by_argmax.append(np.asarray(argmax_labels(probs)))
        res = assign_karyotype(probs, lengths=lengths, centromere_index=ci, config=assign_cfg)
        by_assignment.append(np.asarray(res.labels))
    out = {
        "cells": len(true),
        "chromosomes": int(sum(len(t) for t in true)),
        "masks_under_min_area": specks,
        "cells_with_masks_under_min_area": int(cells_with_specks),
        "argmax_accuracy": identification_metrics(true, by_argmax)["accuracy"],
        "assignment_accuracy": identification_metrics(true, by_assignment)["accuracy"],
        "assignment_cell_exact_rate": identification_metrics(true, by_assignment)["cell_exact_rate"],
    }
    _report(args, out, saved)
    return 0


def _pipeline(args: argparse.Namespace, ds, n: int) -> int:
    """The whole pipeline on each image: its instances under MIN_AREA, and its probabilities for --save/--compare."""
    from karyotyping.core import KaryotypePipeline

    pipe = KaryotypePipeline(args.seg_weights, args.cls_weights, device="cpu")
    saved, small_per_image, kept = {}, [], 0
    for k in range(n):
        rec = ds[k]
        pred = pipe.run(rec.image)
        # the features are measured at the processing resolution: the original masks' areas scaled there (the CIL
        # images are processed as they are, scale 1, so these are the same pixels)
        masks = pred.masks
        area = (masks.reshape(len(masks), -1) > 0).sum(1) * pred.processing_scale**2 if len(masks) else np.zeros(0)
        small_per_image.append(int((area < MIN_AREA).sum()))
        kept += len(area)
        saved[rec.image_id or str(k)] = np.asarray(pred.probs, np.float32)
    out = {
        "images": n,
        "instances_kept": kept,
        "instances_under_min_area": int(sum(small_per_image)),
        "images_with_instances_under_min_area": int(sum(c > 0 for c in small_per_image)),
    }
    _report(args, out, saved)
    return 0


def _report(args: argparse.Namespace, out: dict, saved: dict[str, np.ndarray]) -> None:
    """--save / --compare the probabilities, then print the figures and one JSON line."""
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save, **saved)
    if args.compare:
        with np.load(args.compare) as z:
            other = {key: z[key] for key in z.files}
        same_cells = [key for key in saved if key in other and other[key].shape == saved[key].shape]
        diffs = {key: float(np.abs(saved[key] - other[key]).max()) if saved[key].size else 0.0 for key in same_cells}
        flips = sum(int((saved[key].argmax(1) != other[key].argmax(1)).sum()) for key in same_cells if saved[key].size)
        out |= {
            "compared_cells": len(same_cells),
            "cells_whose_probabilities_changed": sum(d > 1e-6 for d in diffs.values()),
            "largest_probability_change": max(diffs.values(), default=0.0),
            "instances_whose_argmax_changed": flips,
        }
    for key, v in out.items():
        print(f"{key:36s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    raise SystemExit(main())
