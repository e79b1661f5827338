"""Score a checkpoint (or the whole pipeline) on a dataset split with the metrics of the field.

    # segmentation: COCO box/mask AP (24-class and class-agnostic), PQ, AJI
    python evaluate.py --stage seg --dataset voc --data-root ../shared/data/cil54816 --split val \
        --seg-weights weights/segmentation.pt --out runs/eval_seg
    # identification on ground-truth instances: per-crop argmax vs karyotype assignment vs rule-based
    python evaluate.py --stage cls --dataset voc --data-root ../shared/data/cil54816 --split val \
        --cls-weights weights/classifier.pt --out runs/eval_cls
    # the whole pipeline against ground truth (predicted instances matched to true ones at IoU 0.5), with the
    # system-level 24-class AP of its final labels (score = detection score x assignment confidence)
    python evaluate.py --stage full --dataset voc --data-root ../shared/data/cil54816 --split val --out runs/eval_full

It prints a readable table and, as its LAST stdout line, one JSON object with every figure; it also writes
``metrics.json``, ``confusion_*.png`` and ``per_class_*.png`` into ``--out``. Splits are the data layer's
deterministic ones (``--val-fraction``, ``--test-fraction``, ``--split-seed``), the same the trainers use:
``--split test --test-fraction F`` scores the groups a trainer run with ``--test-fraction F`` held out. ``--dataset synthetic``
draws ``--synthetic-n`` fresh spreads with ``--synthetic-seed`` (a seed no trainer uses, so all are unseen
and ``--split`` is ignored); ``--synthetic-size 384`` keeps them small.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from datasets.derive_masks import CROSSING_RULES
from karyotyping.core import (
    DEFAULT_CLS_WEIGHTS,
    DEFAULT_SEG_WEIGHTS,
    FLIP_TTA,
    PipelineError,
    add_pipeline_args,
    pipeline_options,
)
from karyotyping.detection import AP_SCORE_THRESH, SCORE_THRESH

#: generation seed of the synthetic evaluation spreads; the trainers generate theirs with --split-seed (0)
SYNTHETIC_EVAL_SEED = 20_240


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("Data")
    d.add_argument("--dataset", required=True, help="voc | coco | yolo | mfish | labelme | synthetic | crops")
    d.add_argument("--data-root", type=Path, default=None, help="dataset folder (not needed for synthetic)")
    d.add_argument("--split", default="val", choices=("train", "val", "test", "all"))
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="fraction of groups in the test split (as the trainers' --test-fraction; needed for --split test)",
    )
    d.add_argument("--split-seed", type=int, default=0)
    d.add_argument(
        "--derive-crossings",
        choices=CROSSING_RULES,
        default="nearest",
        help="voc: how the true masks derived from the boxes share crossing chromosomes: nearest (disjoint, the "
        "default and the README's figures) or axis (the crossing belongs to both; datasets/derive_masks.py rule 5)",
    )
    d.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images of the split (0 = all)")
    d.add_argument("--synthetic-n", type=int, default=50, help="images of the synthetic dataset")
    d.add_argument(
        "--synthetic-seed",
        type=int,
        default=SYNTHETIC_EVAL_SEED,
        help=f"generation seed of the synthetic spreads (default {SYNTHETIC_EVAL_SEED}, which no trainer uses: all "
        "--synthetic-n spreads are unseen and --split is ignored; give the trainers' --split-seed to evaluate "
        "their --split instead)",
    )
    d.add_argument(
        "--synthetic-size", type=int, default=0, help="synthetic image side in pixels (0 = generator default)"
    )
    d.add_argument("--karyotypes", nargs="*", default=None, help="synthetic karyotypes to draw (ISCN strings)")
    m = p.add_argument_group("Models")
    m.add_argument(
        "--stage",
        required=True,
        choices=("seg", "cls", "full"),
        help="seg: the detector's own output (masks at MaskConfig.ap_mask_thresh 0.3, untrimmed; the mask flags below do "
        "not apply); cls: the classifier on true instances (--flip-tta applies); full: the whole pipeline (all apply)",
    )
    m.add_argument("--seg-weights", type=Path, default=DEFAULT_SEG_WEIGHTS)
    m.add_argument("--cls-weights", type=Path, default=DEFAULT_CLS_WEIGHTS)
    m.add_argument(
        "--score-thresh", type=float, default=AP_SCORE_THRESH, help="lowest detection score kept for AP (seg stage)"
    )
    m.add_argument(
        "--pipeline-score-thresh",
        type=float,
        default=SCORE_THRESH,
        help="detection threshold of the full pipeline (default: the pipeline's)",
    )
    add_pipeline_args(m)
    m.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=FLIP_TTA,
        help="classify each chromosome's crop also upside down and average the two (cls and full stages; "
        f"default: {'on' if FLIP_TTA else 'off'}, the pipeline's; not a flag of inference_pipeline.py)",
    )
    h = p.add_argument_group("Output / hardware")
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--device", default="auto")
    h.add_argument("--quiet", action="store_true", help="no progress bars")
    h.add_argument("--no-plots", action="store_true", help="skip confusion_*.png / per_class_*.png (faster)")
    return p


def _dataset(args: argparse.Namespace):
    from datasets import build_dataset

    kw: dict[str, Any] = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    kw["seed"] = args.split_seed
    split = args.split
    if args.dataset == "synthetic":
        kw["n"] = args.synthetic_n
        kw["seed"] = args.synthetic_seed
        if args.synthetic_seed != args.split_seed:
            split = "all"  # spreads of a seed no trainer used: every one is held out
        if args.karyotypes:
            kw["karyotypes"] = args.karyotypes
        if args.synthetic_size:
            from datasets.synthetic import SyntheticConfig

            kw["config"] = SyntheticConfig(image_size=(args.synthetic_size, args.synthetic_size))
    elif args.data_root is None:
        raise PipelineError(f"--data-root is required for --dataset {args.dataset}")
    if args.derive_crossings != "nearest":
        if args.dataset != "voc":
            raise PipelineError(
                f"--derive-crossings applies to --dataset voc (masks derived from boxes), not {args.dataset}"
            )
        kw["crossings"] = args.derive_crossings
    args.resolved_split = split
    try:
        ds = build_dataset(args.dataset, args.data_root, split, **kw)
    except ValueError as exc:
        if split == "test" and args.test_fraction <= 0:  # (a YOLO data.yaml may list a test split of its own)
            raise PipelineError(
                f"{exc}. --split test needs --test-fraction > 0: the fraction of groups the trainers held out with "
                "their own --test-fraction (made by group after the val split, whose membership it leaves unchanged)"
            ) from None
        raise
    n = len(ds) if not args.max_images else min(args.max_images, len(ds))
    return ds, n


def _iter(ds, n: int, quiet: bool, desc: str):
    from tqdm import tqdm

    for i in tqdm(range(n), desc=desc, disable=quiet):
        yield ds[i]


# ---------------------------------------------------------------------------- stages
def evaluate_seg(args: argparse.Namespace) -> dict[str, Any]:
    """COCO AP for boxes and masks, 24-class (if the model has classes) and class-agnostic; PQ and AJI
    (:class:`metrics.pipeline.SegmentationEvaluator`)."""
    from karyotyping.detection import detect_dataset
    from karyotyping.runtime import resolve_device
    from metrics.pipeline import SegmentationEvaluator
    from models.segmentation import load_segmentation_checkpoint

    device = resolve_device(args.device)
    model, cfg = load_segmentation_checkpoint(args.seg_weights, device)
    ds, n = _dataset(args)
    ev = SegmentationEvaluator(args.pipeline_score_thresh, with_classes=not cfg.agnostic)
    for _, rec, pred in detect_dataset(
        model, ds, device, score_thresh=args.score_thresh, max_images=n, progress=not args.quiet
    ):
        ev.process(rec, pred)
    return {"images": n, "stage": "seg", "model_agnostic": bool(cfg.agnostic), **ev.evaluate()}


def _gt_instances(ds, n: int, quiet: bool, crop_specs: dict[str, tuple[int, int]]):
    """Per cell: (features, crops by mode, labels 1..24, lengths, centromere indices) of the labelled true instances.

    The very inputs the classifiers were trained on (:func:`datasets.instances.spread_instances`: features on
    the whole spread, the crops of each crop mode of ``crop_specs`` (mode -> (height, width)) fitted into
    that box), plus a Counter of the instances left out (degenerate masks, no class).
    """

    from datasets.instances import spread_instances_by_mode

    cells, skipped = [], Counter()
    for rec in _iter(ds, n, quiet, "features"):
        if rec.masks is None or not (rec.labels > 0).any():
            continue
        arrays, sk = spread_instances_by_mode(rec, crop_specs)  # features once, the same instances in every mode
        skipped.update(sk)
        if len(arrays["labels"]):
            cells.append(
                (
                    arrays["features"],
                    arrays["crops_by_mode"],
                    arrays["labels"] + 1,
                    arrays["lengths"],
                    arrays["centromere"],
                )
            )
    return cells, skipped


def evaluate_cls(args: argparse.Namespace) -> dict[str, Any]:
    """Identification on ground-truth instances: (a) per-crop argmax, (b) karyotype assignment, (c) rule-based."""
    from karyogram.assign import argmax_labels, assign_karyotype, config_for_classifier, rule_based_labels
    from karyotyping.runtime import resolve_device
    from metrics.pipeline import IdentificationEvaluator
    from models.classifier import load_classifier_members, predict_members

    device = resolve_device(args.device)
    members = load_classifier_members(args.cls_weights, device)  # one classifier, or an ensemble's
    assign_cfg = config_for_classifier(members[0][1].feature_groups)
    specs: dict[str, tuple[int, int]] = {}
    for _, c in members:
        specs.setdefault(c.crop_mode, (c.crop_height, c.crop_width))
    ds, n = _dataset(args)
    cells, skipped = _gt_instances(ds, n, args.quiet, specs)
    args.out.mkdir(parents=True, exist_ok=True)
    ev = IdentificationEvaluator(("argmax", "assignment", "rule_based"), plots_dir=None if args.no_plots else args.out)
    for x, crops, labels, lengths, ci in cells:
        probs = np.asarray(predict_members(members, crops, x, flip=args.flip_tta))
        assigned = assign_karyotype(probs, lengths=lengths, centromere_index=ci, config=assign_cfg).labels
        ev.process(
            labels,
            {
                "argmax": np.asarray(argmax_labels(probs)),
                "assignment": np.asarray(assigned),
                "rule_based": np.asarray(rule_based_labels(lengths, ci)),
            },
        )
    res: dict[str, Any] = {
        "images": len(cells),
        "stage": "cls",
        "chromosomes": int(sum(len(t) for t in ev.true)),
        "flip_tta": args.flip_tta,
    }
    res["instances_left_out"] = dict(skipped)  # degenerate true masks: not scored (the trainer skips them too)
    figures = ev.evaluate()
    res.update({k: v for k, v in figures.items() if not k.endswith("_per_class")})
    res["per_class"] = figures["assignment_per_class"]
    res["accuracy"] = res["assignment_accuracy"]
    res["cell_exact_rate"] = res["assignment_cell_exact_rate"]
    res["sanity_score"] = res["assignment_sanity_score"]
    res["iscn_exact_rate"] = res["assignment_iscn_exact_rate"]
    return res


def evaluate_full(args: argparse.Namespace) -> dict[str, Any]:
    """The whole pipeline vs ground truth, in the original image's pixels: every figure of
    :class:`metrics.pipeline.PipelineEvaluator` (instance matching, system and agnostic AP, identification, where
    the true chromosomes go, fragments, count and sanity), with the pipeline's settings beside them."""
    from karyotyping.core import KaryotypePipeline
    from metrics.pipeline import PipelineEvaluator

    pipe = KaryotypePipeline(
        args.seg_weights,
        args.cls_weights,
        device=args.device,
        score_thresh=args.pipeline_score_thresh,
        flip_tta=args.flip_tta,
        **pipeline_options(args),
    )
    ds, n = _dataset(args)
    ev = PipelineEvaluator(plots_dir=None if args.no_plots else args.out)
    # the pipeline core on each record's own image array: no file, no JSON, no rounding
    for rec in _iter(ds, n, args.quiet, "pipeline"):
        ev.process(rec, pipe.run(rec.image, name=rec.image_id or None))
    figures = ev.evaluate()
    res: dict[str, Any] = {"images": n, "stage": "full"}
    res.update(
        {
            "pipeline_score_thresh": args.pipeline_score_thresh,
            "pipeline_mask_overlap": args.mask_overlap,
            "pipeline_mask_thresh": args.mask_thresh,
            "pipeline_exclusive_masks": args.exclusive_masks,
            "pipeline_trim_masks": args.trim_masks,
            "pipeline_smooth_masks": args.smooth_masks,
            "pipeline_prefer_parts": args.prefer_parts,
            "pipeline_flip_tta": args.flip_tta,
            "pipeline_polarity": args.polarity,
            "pipeline_auto_scale": args.auto_scale,
            "ap_score": "detection score x assignment confidence (system_*); detection score (agnostic_*)",
        }
    )
    res.update(figures)
    return res


def _print_table(res: dict[str, Any]) -> None:
    print(f"{'metric':32s} value")
    print("-" * 44)
    for k, v in res.items():
        if isinstance(v, dict | list):
            continue
        print(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    from datasets.io import atomic_write_json

    if args.stage == "seg":
        res = evaluate_seg(args)
    elif args.stage == "cls":
        res = evaluate_cls(args)
    else:
        res = evaluate_full(args)
    res.update(
        {
            "dataset": args.dataset,
            "split": getattr(args, "resolved_split", args.split),
            "command": " ".join(sys.argv),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "metrics.json", res)
    _print_table(res)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}))
    return res


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (PipelineError, ValueError, FileNotFoundError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
