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
        help="seg: the detector's own output (masks at AP_MASK_THRESH 0.3, untrimmed; the mask flags below do "
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
    """COCO AP for boxes and masks, 24-class (if the model has classes) and class-agnostic; PQ and AJI."""
    from karyotyping.detection import detect_dataset
    from karyotyping.runtime import resolve_device
    from metrics.detection import coco_evaluate, encode_record
    from models.segmentation import load_segmentation_checkpoint

    device = resolve_device(args.device)
    model, cfg = load_segmentation_checkpoint(args.seg_weights, device)
    ds, n = _dataset(args)
    gts, preds, kept = [], [], []
    for _, rec, pred in detect_dataset(
        model, ds, device, score_thresh=args.score_thresh, max_images=n, progress=not args.quiet
    ):
        gts.append(rec)
        # AP needs every detection but only as RLE; the matching figures need the masks above the pipeline's
        # threshold only (keeping all of them at the AP threshold would take ~150 MB per CIL image)
        kept.append(pred.masks[pred.scores >= args.pipeline_score_thresh])
        preds.append(encode_record(pred))
    res: dict[str, Any] = {"images": n, "stage": "seg", "model_agnostic": bool(cfg.agnostic)}
    agn = coco_evaluate(gts, preds, agnostic=True)
    res.update({f"agnostic_{k}": v for k, v in agn.items() if not isinstance(v, dict)})
    if not cfg.agnostic and all((g.labels > 0).all() for g in gts):
        res.update({k: v for k, v in coco_evaluate(gts, preds, agnostic=False).items()})
    else:
        res.update({k: v for k, v in agn.items() if not isinstance(v, dict)})
    # instance matching on the kept detections (pipeline threshold)
    t_masks, p_masks = [_gt_masks(g)[0] for g in gts], kept
    res.update(_instance_metrics(t_masks, p_masks))
    res.update(
        {
            "count_error_mean_abs": float(np.mean([abs(len(p) - len(t)) for t, p in zip(t_masks, p_masks)])),
            "pipeline_score_thresh": args.pipeline_score_thresh,  # the threshold of the matching figures above
            "gt_masks_derived": bool(any(g.masks_derived for g in gts)),
            "gt_masks_from_boxes": bool(any(_gt_masks(g)[1] for g in gts)),
        }
    )
    return res


def _gt_instances(ds, n: int, quiet: bool, crop_specs: dict[str, tuple[int, int]]):
    """Per cell: (features, crops by mode, labels 1..24, lengths, centromere indices) of the labelled true instances.

    The very inputs the classifiers were trained on (:func:`datasets.instances.spread_instances`: features on
    the whole spread, the crops of each crop mode of ``crop_specs`` (mode -> (height, width)) fitted into
    that box), plus a Counter of the instances left out (degenerate masks, no class).
    """
    from collections import Counter

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
    from metrics.identification import identification_metrics, plot_confusion, plot_per_class
    from metrics.karyotype import sanity_score
    from models.classifier import load_classifier_members, predict_members

    device = resolve_device(args.device)
    members = load_classifier_members(args.cls_weights, device)  # one classifier, or an ensemble's
    assign_cfg = config_for_classifier(members[0][1].feature_groups)
    specs: dict[str, tuple[int, int]] = {}
    for _, c in members:
        specs.setdefault(c.crop_mode, (c.crop_height, c.crop_width))
    ds, n = _dataset(args)
    cells, skipped = _gt_instances(ds, n, args.quiet, specs)
    true, methods = [], {"argmax": [], "assignment": [], "rule_based": []}
    for x, crops, labels, lengths, ci in cells:
        probs = np.asarray(predict_members(members, crops, x, flip=args.flip_tta))
        true.append(labels)
        methods["argmax"].append(np.asarray(argmax_labels(probs)))
        res_a = assign_karyotype(probs, lengths=lengths, centromere_index=ci, config=assign_cfg)
        methods["assignment"].append(np.asarray(res_a.labels))
        methods["rule_based"].append(np.asarray(rule_based_labels(lengths, ci)))
    res: dict[str, Any] = {
        "images": len(cells),
        "stage": "cls",
        "chromosomes": int(sum(len(t) for t in true)),
        "flip_tta": args.flip_tta,
    }
    res["instances_left_out"] = dict(skipped)  # degenerate true masks: not scored (the trainer skips them too)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pred in methods.items():
        m = identification_metrics(true, pred)
        res[f"{name}_accuracy"] = m["accuracy"]
        res[f"{name}_cell_exact_rate"] = m["cell_exact_rate"]
        res[f"{name}_macro_F1"] = m.get("macro_F1")
        res[f"{name}_sanity_score"] = float(np.mean([sanity_score(p) for p in pred])) if pred else 0.0
        # the numerical karyotype (ISCN) written from the predicted labels, exactly equal to the true one
        res[f"{name}_iscn_exact_rate"] = (
            float(np.mean([_iscn(p) == _iscn(t) for p, t in zip(pred, true)])) if pred else 0.0
        )
        if not args.no_plots:
            plot_confusion(np.asarray(m["confusion"]), args.out / f"confusion_{name}.png")
            plot_per_class(m["per_class"], args.out / f"per_class_{name}.png")
        if name == "assignment":
            res["per_class"] = m["per_class"]
    res["accuracy"] = res["assignment_accuracy"]
    res["cell_exact_rate"] = res["assignment_cell_exact_rate"]
    res["sanity_score"] = res["assignment_sanity_score"]
    res["iscn_exact_rate"] = res["assignment_iscn_exact_rate"]
    return res


def _instance_metrics(t_masks: list[np.ndarray], p_masks: list[np.ndarray]) -> dict[str, float]:
    """Instance matching at IoU 0.5 summed over images (precision, recall, F1), PQ_all and mean AJI+."""
    from metrics.matching import aggregated_jaccard_index, matching_dataset, panoptic_quality_all

    m = matching_dataset(t_masks, p_masks, thresh=0.5)
    return {
        "precision@0.5": m.precision,
        "recall@0.5": m.recall,
        "f1@0.5": m.f1,
        "PQ_all": float(panoptic_quality_all(t_masks, p_masks)),
        "AJI": float(np.mean([aggregated_jaccard_index(t, p) for t, p in zip(t_masks, p_masks)])),
    }


def _iscn(labels: np.ndarray) -> str:
    """ISCN numerical karyotype of a cell's labels (unassigned 0 ignored)."""
    from karyogram.iscn import iscn_string

    a = np.asarray(labels)
    return iscn_string(a[a > 0])


def _true_count(rec) -> int | None:
    """Number of chromosomes in a ground-truth record: its instances, else the count of meta["karyotype"]."""
    if len(rec):
        return len(rec)
    kt = rec.meta.get("karyotype")
    if kt:
        from karyogram.iscn import parse_iscn

        try:
            return int(parse_iscn(str(kt))["count"])
        except ValueError:
            return None
    return None


def _gt_masks(rec) -> tuple[np.ndarray, bool]:
    """Stacked ground-truth masks uint8 [N, H, W]; filled boxes where the source has none (flag True)."""
    from datasets.record import boxes_to_masks

    if rec.masks is not None:
        return rec.masks, False
    return boxes_to_masks(rec.boxes, rec.height, rec.width), len(rec) > 0


def evaluate_full(args: argparse.Namespace) -> dict[str, Any]:
    """The whole pipeline vs ground truth, in the original image's pixels.

    * instance segmentation (every image with ground-truth instances): predicted instances matched
      one-to-one to true ones at IoU >= 0.5 -> precision / recall / F1, PQ (class-agnostic), AJI+;
    * system-level detection AP: COCO box and mask AP of the pipeline's *final* output. The detector is
      class-agnostic; a chromosome's class comes from the classifier + karyotype assignment, so the
      24-class ``system_{bbox,segm}_AP*`` score each assigned chromosome (label 1..24) with
      ``detection score x assignment confidence`` (the min-marginal posterior of its label; unassigned
      chromosomes are left out). ``agnostic_{bbox,segm}_AP*`` score every kept detection with its
      detection score. Both only see detections above ``--pipeline-score-thresh`` (the pipeline's
      operating point), so they are lower bounds of the detector's own AP (``--stage seg``);
    * identification (images whose true instances all carry classes 1..24): each true chromosome gets
      the label of its matched prediction (0 if missed) -> accuracy, cell exact rate; mPQ;
    * where the true chromosomes go (:func:`metrics.matching.error_breakdown`): the fractions ``true_found_rate``
      (matched at mask IoU 0.5), ``true_mask_failed_rate`` (a predicted box overlaps it at IoU 0.5 but no mask
      matches) and ``true_missed_rate`` (nothing there), summing to 1, and ``found_identification_accuracy``
      (right labels among the found ones, images with classes); so ``accuracy`` = found rate x that accuracy;
      and the lost ones by where their pixels went: ``true_lost_merged_rate`` (half or more inside one predicted
      mask; ``true_lost_merged_into_found_rate``: of those, in a mask matched to another chromosome),
      ``true_lost_split_rate`` (over several masks) and ``true_lost_uncovered_rate`` (mostly under none); found
      + these three = 1;
    * every image: count error |assigned count - true count| and the sanity score of the predicted labels.
      An image whose ground truth has instances without classes (labels 0), or only a karyotype in its
      metadata, contributes to these (and to the segmentation metrics when it has instances) only.
    """
    from scipy.optimize import linear_sum_assignment

    from datasets.record import KaryoRecord
    from karyotyping.core import KaryotypePipeline
    from metrics.detection import coco_evaluate
    from metrics.identification import identification_metrics, plot_confusion, plot_per_class
    from metrics.karyotype import sanity_score
    from metrics.matching import (
        error_breakdown,
        iou_matrix,
        multiclass_panoptic_quality,
    )

    pipe = KaryotypePipeline(
        args.seg_weights,
        args.cls_weights,
        device=args.device,
        score_thresh=args.pipeline_score_thresh,
        **pipeline_options(args),
    )
    ds, n = _dataset(args)
    # instance-level lists (images with ground-truth instances)
    t_masks, p_masks, t_lab, p_lab = [], [], [], []
    # class-level lists (images whose instances all carry classes)
    true_l, pred_l, sys_gt, sys_pred, agn_gt, agn_pred = [], [], [], [], [], []
    sanity, count_err, n_with_classes, boxes_only = [], [], 0, False
    fate: Counter = Counter()  # what became of the true chromosomes
    # the pipeline core on each record's own image array: no file, no JSON, no rounding
    for rec in _iter(ds, n, args.quiet, "pipeline"):
        pred = pipe.run(rec.image, name=rec.image_id or None)
        labels = pred.labels
        pm = pred.masks  # final instances at the original resolution
        det = pred.scores
        conf = pred.confidence
        sanity.append(sanity_score(labels))
        tc = _true_count(rec)
        if tc is not None:
            count_err.append(abs(int((labels > 0).sum()) - tc))
        if not len(rec):
            continue
        gm, from_boxes = _gt_masks(rec)
        boxes_only |= from_boxes
        t_masks.append(gm)
        p_masks.append(pm)
        t_lab.append(rec.labels)
        p_lab.append(labels)
        pboxes = pred.boxes
        with_classes = bool((rec.labels > 0).all())
        fate.update(
            error_breakdown(
                gm, rec.boxes, pm, pboxes, rec.labels if with_classes else None, labels if with_classes else None
            )
        )
        agn_gt.append(rec)
        agn_pred.append(KaryoRecord(image=rec.image, boxes=pboxes, labels=np.ones(len(pm), np.int64), masks=pm,
                                    scores=det))  # fmt: skip
        if not (rec.labels > 0).all():
            continue  # instances without classes: segmentation metrics only
        n_with_classes += 1
        keep = labels > 0
        sys_gt.append(rec)
        sys_pred.append(KaryoRecord(image=rec.image, boxes=pboxes[keep], labels=labels[keep], masks=pm[keep],
                                    scores=det[keep] * conf[keep]))  # fmt: skip
        # identification: each true chromosome gets the label of its matched prediction (0 if missed)
        lab = np.zeros(len(rec), np.int64)
        if len(pm):
            iou = iou_matrix(gm, pm)
            rows, cols = linear_sum_assignment(-iou)
            for a, b in zip(rows, cols):
                if iou[a, b] >= 0.5:
                    lab[a] = labels[b]
        true_l.append(rec.labels)
        pred_l.append(lab)
    res: dict[str, Any] = {
        "images": n,
        "stage": "full",
        "images_with_instances": len(t_masks),
        "images_with_classes": n_with_classes,
        "sanity_score": float(np.mean(sanity)) if sanity else float("nan"),
        "count_error_mean_abs": float(np.mean(count_err)) if count_err else float("nan"),
        "count_exact_rate": float(np.mean([e == 0 for e in count_err])) if count_err else float("nan"),
        "pipeline_score_thresh": args.pipeline_score_thresh,
        "pipeline_mask_overlap": args.mask_overlap,
        "pipeline_mask_thresh": args.mask_thresh,
        "pipeline_exclusive_masks": args.exclusive_masks,
        "pipeline_trim_masks": args.trim_masks,
        "pipeline_flip_tta": args.flip_tta,
        "ap_score": "detection score x assignment confidence (system_*); detection score (agnostic_*)",
    }
    if t_masks:
        res.update(_instance_metrics(t_masks, p_masks))
        for k in (
            "found",
            "mask_failed",
            "missed",
            "lost_merged",
            "lost_merged_into_found",
            "lost_split",
            "lost_uncovered",
        ):
            res[f"true_{k}_rate"] = fate[k] / max(fate["true"], 1)
        if fate["right"] + fate["wrong"]:
            res["found_identification_accuracy"] = fate["right"] / (fate["right"] + fate["wrong"])
        res["gt_masks_from_boxes"] = boxes_only
        agn = coco_evaluate(agn_gt, agn_pred, agnostic=True)
        res.update({f"agnostic_{k}": v for k, v in agn.items() if not isinstance(v, dict)})
    if n_with_classes:
        sys_ap = coco_evaluate(sys_gt, sys_pred, agnostic=False)
        res.update({f"system_{k}": v for k, v in sys_ap.items()})
        tm = [t for t, lab in zip(t_masks, t_lab) if (lab > 0).all()]
        pm_ = [p for p, lab in zip(p_masks, t_lab) if (lab > 0).all()]
        pl = [p for p, lab in zip(p_lab, t_lab) if (lab > 0).all()]
        tl = [lab for lab in t_lab if (lab > 0).all()]
        mpq, mpq_per_class = multiclass_panoptic_quality(tm, tl, pm_, pl)
        ident = identification_metrics(true_l, pred_l)
        args.out.mkdir(parents=True, exist_ok=True)
        if not args.no_plots:
            plot_confusion(np.asarray(ident["confusion"]), args.out / "confusion_full.png")
            plot_per_class(ident["per_class"], args.out / "per_class_full.png")
        res.update(
            {
                "mPQ": float(mpq),
                "per_class_PQ": mpq_per_class,
                "accuracy": ident["accuracy"],
                "cell_exact_rate": ident["cell_exact_rate"],
                "macro_F1": ident["macro_F1"],
                "per_class": ident["per_class"],
            }
        )
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
