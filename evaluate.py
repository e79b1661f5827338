"""Score a checkpoint (or the whole pipeline) on a dataset split with the metrics of the field.

    # segmentation: COCO box/mask AP (24-class and class-agnostic), PQ, AJI
    python evaluate.py --stage seg --dataset voc --data-root ../shared/data/cil54816 --split val \
        --seg-weights weights/segmentation.pt --out runs/eval_seg
    # identification on ground-truth instances: per-crop argmax vs karyotype assignment vs rule-based
    python evaluate.py --stage cls --dataset voc --data-root ../shared/data/cil54816 --split val \
        --cls-weights weights/classifier.pt --out runs/eval_cls
    # the whole pipeline against ground truth (predicted instances matched to true ones at IoU 0.5)
    python evaluate.py --stage full --dataset voc --data-root ../shared/data/cil54816 --split val --out runs/eval_full

It prints a readable table and, as its LAST stdout line, one JSON object with every figure; it also writes
``metrics.json``, ``confusion_*.png`` and ``per_class_*.png`` into ``--out``. Splits are the data layer's
deterministic ones (``--val-fraction``, ``--split-seed``), the same the trainers use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from inference_pipeline import DEFAULT_CLS_WEIGHTS, DEFAULT_SEG_WEIGHTS, PipelineError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("Data")
    d.add_argument("--dataset", required=True, help="voc | coco | yolo | mfish | labelme | synthetic | crops")
    d.add_argument("--data-root", type=Path, default=None, help="dataset folder (not needed for synthetic)")
    d.add_argument("--split", default="val", choices=("train", "val", "test", "all"))
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--split-seed", type=int, default=0)
    d.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images of the split (0 = all)")
    d.add_argument("--synthetic-n", type=int, default=50, help="images of the synthetic dataset")
    d.add_argument("--karyotypes", nargs="*", default=None, help="synthetic karyotypes to draw (ISCN strings)")
    m = p.add_argument_group("Models")
    m.add_argument("--stage", required=True, choices=("seg", "cls", "full"))
    m.add_argument("--seg-weights", type=Path, default=DEFAULT_SEG_WEIGHTS)
    m.add_argument("--cls-weights", type=Path, default=DEFAULT_CLS_WEIGHTS)
    m.add_argument("--score-thresh", type=float, default=0.05, help="detection threshold for AP (seg stage)")
    m.add_argument("--pipeline-score-thresh", type=float, default=0.5, help="detection threshold of the full pipeline")
    h = p.add_argument_group("Output / hardware")
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--device", default="auto")
    h.add_argument("--quiet", action="store_true")
    return p


def _dataset(args: argparse.Namespace):
    from datasets import build_dataset

    kw: dict[str, Any] = {"val_fraction": args.val_fraction, "seed": args.split_seed}
    if args.dataset == "synthetic":
        kw["n"] = args.synthetic_n
        if args.karyotypes:
            kw["karyotypes"] = args.karyotypes
    elif args.data_root is None:
        raise PipelineError(f"--data-root is required for --dataset {args.dataset}")
    ds = build_dataset(args.dataset, args.data_root, args.split, **kw)
    n = len(ds) if not args.max_images else min(args.max_images, len(ds))
    return ds, n


def _iter(ds, n: int, quiet: bool, desc: str):
    from tqdm import tqdm

    for i in tqdm(range(n), desc=desc, disable=quiet):
        yield ds[i]


# ---------------------------------------------------------------------------- stages
def evaluate_seg(args: argparse.Namespace) -> dict[str, Any]:
    """COCO AP for boxes and masks, 24-class (if the model has classes) and class-agnostic; PQ and AJI."""
    from metrics.detection import coco_evaluate
    from metrics.matching import aggregated_jaccard_index, matching_dataset, panoptic_quality_all
    from models.segmentation import load_segmentation_checkpoint, predict

    from engine import resolve_device

    device = resolve_device(args.device)
    model, cfg = load_segmentation_checkpoint(args.seg_weights, device)
    model.eval()
    ds, n = _dataset(args)
    gts, preds = [], []
    import torch

    from datasets.record import KaryoRecord

    with torch.no_grad():
        for rec in _iter(ds, n, args.quiet, "segmenting"):
            out = predict(model, [rec.image], score_thresh=args.score_thresh, device=device)[0]
            masks = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            pred = KaryoRecord(
                image=rec.image,
                boxes=out["boxes"].cpu().numpy(),
                labels=out["labels"].cpu().numpy(),
                masks=masks,
                scores=out["scores"].cpu().numpy(),
                meta={"image_id": rec.image_id},
            )
            gts.append(rec)
            preds.append(pred)
    res: dict[str, Any] = {"images": n, "stage": "seg", "model_agnostic": bool(cfg.agnostic)}
    agn = coco_evaluate(gts, preds, agnostic=True)
    res.update({f"agnostic_{k}": v for k, v in agn.items() if not isinstance(v, dict)})
    if not cfg.agnostic and all((g.labels > 0).all() for g in gts):
        res.update({k: v for k, v in coco_evaluate(gts, preds, agnostic=False).items()})
    else:
        res.update({k: v for k, v in agn.items() if not isinstance(v, dict)})
    # instance matching on the kept detections (pipeline threshold)
    t_masks, p_masks = [], []
    for g, p in zip(gts, preds):
        keep = p.scores >= args.pipeline_score_thresh
        t_masks.append(g.masks if g.masks is not None else np.zeros((0, g.height, g.width), np.uint8))
        p_masks.append(p.masks[keep])
    m = matching_dataset(t_masks, p_masks, thresh=0.5)
    res.update(
        {
            "precision@0.5": m.precision,
            "recall@0.5": m.recall,
            "f1@0.5": m.f1,
            "PQ_all": float(panoptic_quality_all(t_masks, p_masks)),
            "AJI": float(np.mean([aggregated_jaccard_index(t, p) for t, p in zip(t_masks, p_masks)])),
            "count_error_mean_abs": float(np.mean([abs(len(p) - len(t)) for t, p in zip(t_masks, p_masks)])),
            "gt_masks_derived": bool(any(g.masks_derived for g in gts)),
        }
    )
    return res


def _gt_instances(ds, n: int, quiet: bool):
    """Per cell: (features, instance features, crops, labels) of the ground-truth instances."""
    from features.triad import oriented_crop, spread_features

    cells = []
    for rec in _iter(ds, n, quiet, "features"):
        keep = rec.labels > 0
        if rec.masks is None or not keep.any():
            continue
        rec = rec.select(keep)
        x, feats = spread_features(rec.image, rec.masks)
        cells.append((x, feats, [oriented_crop(f) for f in feats], rec.labels.copy()))
    return cells


def evaluate_cls(args: argparse.Namespace) -> dict[str, Any]:
    """Identification on ground-truth instances: (a) per-crop argmax, (b) karyotype assignment, (c) rule-based."""
    from karyogram.assign import argmax_labels, assign_karyotype, rule_based_labels
    from metrics.identification import identification_metrics, plot_confusion, plot_per_class
    from metrics.karyotype import sanity_score

    from engine import resolve_device
    from models.classifier import load_classifier_checkpoint, predict_proba

    device = resolve_device(args.device)
    model, cfg = load_classifier_checkpoint(args.cls_weights, device)
    model.eval()
    ds, n = _dataset(args)
    cells = _gt_instances(ds, n, args.quiet)
    true, methods = [], {"argmax": [], "assignment": [], "rule_based": []}
    for x, feats, crops, labels in cells:
        probs = np.asarray(predict_proba(model, cfg, crops, x))
        lengths = np.array([f.length_px for f in feats])
        ci = np.array([f.centromere_index for f in feats])
        true.append(labels)
        methods["argmax"].append(np.asarray(argmax_labels(probs)))
        methods["assignment"].append(np.asarray(assign_karyotype(probs, lengths=lengths, centromere_index=ci).labels))
        methods["rule_based"].append(np.asarray(rule_based_labels(lengths, ci)))
    res: dict[str, Any] = {"images": len(cells), "stage": "cls", "chromosomes": int(sum(len(t) for t in true))}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pred in methods.items():
        m = identification_metrics(true, pred)
        res[f"{name}_accuracy"] = m["accuracy"]
        res[f"{name}_cell_exact_rate"] = m["cell_exact_rate"]
        res[f"{name}_macro_F1"] = m.get("macro_F1")
        res[f"{name}_sanity_score"] = float(np.mean([sanity_score(p) for p in pred])) if pred else 0.0
        plot_confusion(np.asarray(m["confusion"]), args.out / f"confusion_{name}.png")
        plot_per_class(m["per_class"], args.out / f"per_class_{name}.png")
        if name == "assignment":
            res["per_class"] = m["per_class"]
    res["accuracy"] = res["assignment_accuracy"]
    res["cell_exact_rate"] = res["assignment_cell_exact_rate"]
    res["sanity_score"] = res["assignment_sanity_score"]
    return res


def evaluate_full(args: argparse.Namespace) -> dict[str, Any]:
    """The whole pipeline vs ground truth: predicted instances matched to true ones at IoU 0.5."""
    import tempfile

    from metrics.identification import identification_metrics, plot_confusion, plot_per_class
    from metrics.karyotype import sanity_score
    from metrics.matching import (
        aggregated_jaccard_index,
        iou_matrix,
        matching_dataset,
        multiclass_panoptic_quality,
        panoptic_quality_all,
    )
    from scipy.optimize import linear_sum_assignment

    from datasets.io import atomic_write_image
    from inference_pipeline import KaryotypePipeline

    pipe = KaryotypePipeline(
        args.seg_weights, args.cls_weights, device=args.device, score_thresh=args.pipeline_score_thresh
    )
    ds, n = _dataset(args)
    true_l, pred_l, t_masks, p_masks, t_lab, p_lab, sanity, count_err = [], [], [], [], [], [], [], []
    has_classes = True
    with tempfile.TemporaryDirectory() as tmp:
        for i, rec in enumerate(_iter(ds, n, args.quiet, "pipeline")):
            path = Path(tmp) / f"img{i}.png"
            atomic_write_image(path, np.round(rec.image * 255).astype(np.uint8))
            r = pipe.process(path)
            pr = r.record
            gm = rec.masks if rec.masks is not None else np.zeros((0, rec.height, rec.width), np.uint8)
            t_masks.append(gm)
            p_masks.append(pr.masks)
            t_lab.append(rec.labels)
            p_lab.append(pr.labels)
            has_classes &= bool((rec.labels > 0).all())
            sanity.append(sanity_score(pr.labels))
            count_err.append(abs(int((pr.labels > 0).sum()) - len(rec)))
            # identification: each true chromosome gets the label of its matched prediction (0 if missed)
            lab = np.zeros(len(rec), np.int64)
            if len(rec) and len(pr):
                iou = iou_matrix(gm, pr.masks)
                rows, cols = linear_sum_assignment(-iou)
                for a, b in zip(rows, cols):
                    if iou[a, b] >= 0.5:
                        lab[a] = pr.labels[b]
            true_l.append(rec.labels)
            pred_l.append(lab)
    m = matching_dataset(t_masks, p_masks, thresh=0.5)
    res: dict[str, Any] = {
        "images": n,
        "stage": "full",
        "precision@0.5": m.precision,
        "recall@0.5": m.recall,
        "f1@0.5": m.f1,
        "PQ_all": float(panoptic_quality_all(t_masks, p_masks)),
        "AJI": float(np.mean([aggregated_jaccard_index(t, p) for t, p in zip(t_masks, p_masks)])) if n else 0.0,
        "sanity_score": float(np.mean(sanity)) if n else 0.0,
        "count_error_mean_abs": float(np.mean(count_err)) if n else 0.0,
    }
    if has_classes:
        mpq, _ = multiclass_panoptic_quality(t_masks, t_lab, p_masks, p_lab)
        ident = identification_metrics(true_l, pred_l)
        args.out.mkdir(parents=True, exist_ok=True)
        plot_confusion(np.asarray(ident["confusion"]), args.out / "confusion_full.png")
        plot_per_class(ident["per_class"], args.out / "per_class_full.png")
        res.update({"mPQ": float(mpq), "accuracy": ident["accuracy"], "cell_exact_rate": ident["cell_exact_rate"]})
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
    res.update({"dataset": args.dataset, "split": args.split, "command": " ".join(sys.argv)})
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "metrics.json", res)
    _print_table(res)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}))
    return res


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (PipelineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
