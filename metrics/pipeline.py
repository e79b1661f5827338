"""The evaluators: each stage and the whole pipeline against ground truth, in detectron2's shape
(``reset / process / evaluate``).

    ev = PipelineEvaluator()
    for rec in dataset:                                   # ground truth, a KaryoRecord
        ev.process(rec, pipe.run(rec.image))              # the pipeline's KaryotypePrediction
    figures = ev.evaluate()                               # {"f1@0.5": ..., "accuracy": ..., ...}

:class:`SegmentationEvaluator` scores the detector's own output (``evaluate.py --stage seg``),
:class:`IdentificationEvaluator` labels of true instances (``--stage cls``), :class:`PipelineEvaluator` the
whole pipeline (``--stage full``, ``benchmarks/robustness.py``, ``benchmarks/review_loop.py``), so that every
script's figures are the same figures. Every comparison is in the original image's pixels.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .matching import MATCH_IOU, _mask_overlap

__all__ = [
    "FRAGMENT_INSIDE",
    "IdentificationEvaluator",
    "PipelineEvaluator",
    "SegmentationEvaluator",
    "fragment_counts",
    "gt_masks",
    "instance_metrics",
    "true_count",
]

#: a predicted mask is a fragment of a true chromosome when at least this fraction of its pixels lies inside it
FRAGMENT_INSIDE = 0.5


def gt_masks(rec) -> tuple[np.ndarray, bool]:
    """Stacked ground-truth masks uint8 [N, H, W]; filled boxes where the source has none (flag True)."""
    from datasets.record import boxes_to_masks

    if rec.masks is not None:
        return rec.masks, False
    return boxes_to_masks(rec.boxes, rec.height, rec.width), len(rec) > 0


def true_count(rec) -> int | None:
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


def instance_metrics(t_masks: list[np.ndarray], p_masks: list[np.ndarray]) -> dict[str, float]:
    """Instance matching at :data:`metrics.matching.MATCH_IOU` summed over images (precision, recall, F1), PQ_all
    and mean AJI+ of lists of true and predicted masks uint8 [N_i, H_i, W_i], one item per image."""
    from .matching import aggregated_jaccard_index, matching_dataset, panoptic_quality_all

    m = matching_dataset(t_masks, p_masks, thresh=MATCH_IOU)
    return {
        "precision@0.5": m.precision,
        "recall@0.5": m.recall,
        "f1@0.5": m.f1,
        "PQ_all": float(panoptic_quality_all(t_masks, p_masks)),
        "AJI": float(np.mean([aggregated_jaccard_index(t, p) for t, p in zip(t_masks, p_masks)])),
    }


def fragment_counts(true_masks: np.ndarray, pred_masks: np.ndarray, inside: float = FRAGMENT_INSIDE) -> np.ndarray:
    """For each true chromosome, how many predicted masks lie mostly inside it (int [N]): 1 is one whole
    chromosome, 2 or more a chromosome cut into pieces (at a pale band, at a crossing), 0 one that is missed
    or merged into a larger mask.

    >>> t = np.zeros((1, 4, 8), np.uint8); t[0, 1:3, :] = 1
    >>> p = np.zeros((2, 4, 8), np.uint8); p[0, 1:3, :3] = 1; p[1, 1:3, 5:] = 1
    >>> fragment_counts(t, p).tolist()
    [2]
    """
    inter, _, area_p = _mask_overlap(true_masks, pred_masks)
    if not inter.size:
        return np.zeros(inter.shape[0], np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area_p[None, :] > 0, inter / area_p[None, :], 0.0)
    return (frac >= inside).sum(1).astype(np.int64)


class PipelineEvaluator:
    """Accumulates the whole pipeline's predictions against ground truth and computes every figure.

    * instance segmentation (every image with ground-truth instances): predicted instances matched one-to-one
      to true ones at mask IoU >= :data:`metrics.matching.MATCH_IOU` -> precision / recall / F1, PQ
      (class-agnostic), AJI+; fragments per true chromosome (:func:`fragment_counts`);
    * system-level detection AP: COCO box and mask AP of the pipeline's *final* output. The detector is
      class-agnostic; a chromosome's class comes from the classifier + karyotype assignment, so the 24-class
      ``system_{bbox,segm}_AP*`` score each assigned chromosome (label 1..24) with ``detection score x
      assignment confidence`` (unassigned chromosomes are left out). ``agnostic_{bbox,segm}_AP*`` score every
      kept detection with its detection score;
    * identification (images whose true instances all carry classes 1..24): each true chromosome gets the
      label of its matched prediction (0 if missed) -> accuracy, cell exact rate; mPQ;
    * where the true chromosomes go (:func:`metrics.matching.error_breakdown`): ``true_found_rate``,
      ``true_mask_failed_rate``, ``true_missed_rate``, ``true_lost_*_rate``, ``found_identification_accuracy``;
    * every image: count error |assigned count - true count| and the sanity score of the predicted labels.

    Args:
        plots_dir: where :meth:`evaluate` draws ``confusion_full.png`` and ``per_class_full.png`` (None: none).
    """

    def __init__(self, plots_dir=None) -> None:
        self.plots_dir = plots_dir
        self.reset()

    def reset(self) -> None:
        """Forget every image processed so far."""
        self.n_images = 0
        self.t_masks: list[np.ndarray] = []
        self.p_masks: list[np.ndarray] = []
        self.t_lab: list[np.ndarray] = []
        self.p_lab: list[np.ndarray] = []
        self.true_l: list[np.ndarray] = []
        self.pred_l: list[np.ndarray] = []
        self.sys_gt: list = []
        self.sys_pred: list = []
        self.agn_gt: list = []
        self.agn_pred: list = []
        self.sanity: list[float] = []
        self.count_err: list[int] = []
        self.fragments: list[np.ndarray] = []
        self.n_with_classes = 0
        self.boxes_only = False
        self.fate: Counter = Counter()

    def process(self, rec, pred) -> None:
        """Add one image: its ground truth ``rec`` (a :class:`datasets.record.KaryoRecord` at the original
        resolution) and the pipeline's :class:`karyotyping.core.KaryotypePrediction` of it."""
        from dataclasses import replace

        from scipy.optimize import linear_sum_assignment

        from .karyotype import sanity_score
        from .matching import error_breakdown, iou_matrix

        self.n_images += 1
        labels = pred.labels
        pm = pred.masks  # final instances at the original resolution
        self.sanity.append(sanity_score(labels))
        tc = true_count(rec)
        if tc is not None:
            self.count_err.append(abs(int((labels > 0).sum()) - tc))
        if not len(rec):
            return
        gm, from_boxes = gt_masks(rec)
        self.boxes_only |= from_boxes
        self.t_masks.append(gm)
        self.p_masks.append(pm)
        self.t_lab.append(rec.labels)
        self.p_lab.append(labels)
        self.fragments.append(fragment_counts(gm, pm))
        with_classes = bool((rec.labels > 0).all())
        self.fate.update(
            error_breakdown(
                gm, rec.boxes, pm, pred.boxes, rec.labels if with_classes else None, labels if with_classes else None
            )
        )
        self.agn_gt.append(rec)
        self.agn_pred.append(replace(pred.record, labels=np.ones(len(pm), np.int64)))
        if not with_classes:
            return  # instances without classes: segmentation metrics only
        self.n_with_classes += 1
        self.sys_gt.append(rec)
        self.sys_pred.append(pred.assigned())
        # identification: each true chromosome gets the label of its matched prediction (0 if missed)
        lab = np.zeros(len(rec), np.int64)
        if len(pm):
            iou = iou_matrix(gm, pm)
            rows, cols = linear_sum_assignment(-iou)
            for a, b in zip(rows, cols):
                if iou[a, b] >= MATCH_IOU:
                    lab[a] = labels[b]
        self.true_l.append(rec.labels)
        self.pred_l.append(lab)

    def evaluate(self) -> dict[str, Any]:
        """Every figure of the images processed so far (keys as ``evaluate.py --stage full`` prints them)."""
        from .detection import coco_evaluate
        from .identification import identification_metrics, plot_confusion, plot_per_class
        from .matching import multiclass_panoptic_quality

        ce, t_masks, p_masks, t_lab = self.count_err, self.t_masks, self.p_masks, self.t_lab
        res: dict[str, Any] = {
            "images": self.n_images,
            "images_with_instances": len(t_masks),
            "images_with_classes": self.n_with_classes,
            "sanity_score": float(np.mean(self.sanity)) if self.sanity else float("nan"),
            "count_error_mean_abs": float(np.mean(ce)) if ce else float("nan"),
            "count_exact_rate": float(np.mean([e == 0 for e in ce])) if ce else float("nan"),
        }
        if t_masks:
            res.update(instance_metrics(t_masks, p_masks))
            for k in ("found", "mask_failed", "missed", "lost_merged", "lost_merged_into_found", "lost_split",
                      "lost_uncovered", "lost_merged_parallel", "lost_merged_oblique", "lost_merged_crossing",
                      "lost_merged_alone"):  # fmt: skip
                res[f"true_{k}_rate"] = self.fate[k] / max(self.fate["true"], 1)
            if self.fate["right"] + self.fate["wrong"]:
                res["found_identification_accuracy"] = self.fate["right"] / (self.fate["right"] + self.fate["wrong"])
            frag = np.concatenate(self.fragments)
            res["fragments_per_true"] = float(frag.mean()) if len(frag) else float("nan")
            res["true_fragmented_rate"] = float((frag >= 2).mean()) if len(frag) else float("nan")
            res["gt_masks_from_boxes"] = self.boxes_only
            agn = coco_evaluate(self.agn_gt, self.agn_pred, agnostic=True)
            res.update({f"agnostic_{k}": v for k, v in agn.items() if not isinstance(v, dict)})
        if self.n_with_classes:
            sys_ap = coco_evaluate(self.sys_gt, self.sys_pred, agnostic=False)
            res.update({f"system_{k}": v for k, v in sys_ap.items()})
            full = [bool((lab > 0).all()) for lab in t_lab]
            tm = [t for t, f in zip(t_masks, full) if f]
            pm_ = [p for p, f in zip(p_masks, full) if f]
            pl = [p for p, f in zip(self.p_lab, full) if f]
            tl = [lab for lab, f in zip(t_lab, full) if f]
            mpq, mpq_per_class = multiclass_panoptic_quality(tm, tl, pm_, pl)
            ident = identification_metrics(self.true_l, self.pred_l)
            if self.plots_dir is not None:
                self.plots_dir.mkdir(parents=True, exist_ok=True)
                plot_confusion(np.asarray(ident["confusion"]), self.plots_dir / "confusion_full.png")
                plot_per_class(ident["per_class"], self.plots_dir / "per_class_full.png")
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


class SegmentationEvaluator:
    """The detector's own output against ground truth (``evaluate.py --stage seg``).

    COCO box and mask AP of every detection, class-agnostic, and 24-class when the model has classes and every
    true instance carries one; instance matching (precision, recall, F1 at :data:`metrics.matching.MATCH_IOU`),
    PQ_all, AJI+ and the mean count error of the detections at or above ``pipeline_score_thresh`` (the
    pipeline's operating point, before its selection).

    Args:
        pipeline_score_thresh: the score of the detections that the matching figures count.
        with_classes: the model predicts the 24 classes (not class-agnostic).
    """

    def __init__(self, pipeline_score_thresh: float, with_classes: bool = False) -> None:
        self.pipeline_score_thresh = float(pipeline_score_thresh)
        self.with_classes = bool(with_classes)
        self.reset()

    def reset(self) -> None:
        """Forget every image processed so far."""
        self.gts: list = []
        self.preds: list = []
        self.kept: list[np.ndarray] = []

    def process(self, rec, pred) -> None:
        """Add one image: its ground truth and the detector's :class:`datasets.record.KaryoRecord` of it."""
        from .detection import encode_record

        self.gts.append(rec)
        # AP needs every detection but only as RLE; the matching figures need the masks above the pipeline's
        # threshold only (keeping all of them at the AP threshold would take ~150 MB per CIL image)
        self.kept.append(pred.masks[pred.scores >= self.pipeline_score_thresh])
        self.preds.append(encode_record(pred))

    def evaluate(self) -> dict[str, Any]:
        """Every figure of the images processed so far (keys as ``evaluate.py --stage seg`` prints them)."""
        from .detection import coco_evaluate

        gts, preds = self.gts, self.preds
        res: dict[str, Any] = {}
        agn = coco_evaluate(gts, preds, agnostic=True)
        res.update({f"agnostic_{k}": v for k, v in agn.items() if not isinstance(v, dict)})
        if self.with_classes and all((g.labels > 0).all() for g in gts):
            res.update(coco_evaluate(gts, preds, agnostic=False))
        else:
            res.update({k: v for k, v in agn.items() if not isinstance(v, dict)})
        t_masks = [gt_masks(g)[0] for g in gts]
        res.update(instance_metrics(t_masks, self.kept))
        res.update(
            {
                "count_error_mean_abs": float(np.mean([abs(len(p) - len(t)) for t, p in zip(t_masks, self.kept)])),
                "pipeline_score_thresh": self.pipeline_score_thresh,  # the threshold of the matching figures
                "gt_masks_derived": bool(any(g.masks_derived for g in gts)),
                "gt_masks_from_boxes": bool(any(gt_masks(g)[1] for g in gts)),
            }
        )
        return res


class IdentificationEvaluator:
    """Labels given to true instances against their true labels, per labelling method (``--stage cls``).

    For each method: accuracy, cell exact rate, macro F1, mean sanity score and the rate of cells whose
    numerical ISCN karyotype written from the labels equals the true one; with ``plots_dir`` the confusion
    matrix and per-class figures of each (``confusion_<method>.png``, ``per_class_<method>.png``).

    Args:
        methods: the labelling methods' names, in the order their figures are reported.
        plots_dir: where to draw the plots (None: none).
    """

    def __init__(self, methods: tuple[str, ...], plots_dir=None) -> None:
        self.methods = tuple(methods)
        self.plots_dir = plots_dir
        self.reset()

    def reset(self) -> None:
        """Forget every cell processed so far."""
        self.true: list[np.ndarray] = []
        self.pred: dict[str, list[np.ndarray]] = {m: [] for m in self.methods}

    def process(self, true_labels: np.ndarray, predicted: dict[str, np.ndarray]) -> None:
        """Add one cell: its true labels 1..24 and each method's labels of the same instances."""
        if set(predicted) != set(self.methods):
            raise ValueError(f"labels for {sorted(predicted)} given, {sorted(self.methods)} expected")
        self.true.append(np.asarray(true_labels))
        for m in self.methods:
            self.pred[m].append(np.asarray(predicted[m]))

    def evaluate(self) -> dict[str, Any]:
        """``<method>_accuracy``, ``_cell_exact_rate``, ``_macro_F1``, ``_sanity_score``, ``_iscn_exact_rate`` of
        every method, and ``<method>_per_class`` (the per-class figures)."""
        from karyogram.iscn import iscn_string

        from .identification import identification_metrics, plot_confusion, plot_per_class
        from .karyotype import sanity_score

        def iscn(labels: np.ndarray) -> str:  # the numerical karyotype, unassigned (0) left out
            return iscn_string(labels[labels > 0])

        res: dict[str, Any] = {}
        for name, pred in self.pred.items():
            m = identification_metrics(self.true, pred)
            res[f"{name}_accuracy"] = m["accuracy"]
            res[f"{name}_cell_exact_rate"] = m["cell_exact_rate"]
            res[f"{name}_macro_F1"] = m.get("macro_F1")
            res[f"{name}_sanity_score"] = float(np.mean([sanity_score(p) for p in pred])) if pred else 0.0
            res[f"{name}_iscn_exact_rate"] = (
                float(np.mean([iscn(p) == iscn(t) for p, t in zip(pred, self.true)])) if pred else 0.0
            )
            res[f"{name}_per_class"] = m["per_class"]
            if self.plots_dir is not None:
                self.plots_dir.mkdir(parents=True, exist_ok=True)
                plot_confusion(np.asarray(m["confusion"]), self.plots_dir / f"confusion_{name}.png")
                plot_per_class(m["per_class"], self.plots_dir / f"per_class_{name}.png")
        return res
