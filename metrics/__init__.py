"""Metrics for every stage: detection AP (COCO), instance matching / PQ / AJI, identification, karyotype sanity."""

from .detection import coco_evaluate
from .identification import identification_metrics, plot_confusion, plot_per_class
from .karyotype import sanity_score, sanity_terms
from .matching import (
    Matching,
    aggregated_jaccard_index,
    box_iou,
    iou_matrix,
    matching,
    matching_dataset,
    matching_masks,
    multiclass_panoptic_quality,
    panoptic_quality_all,
)

__all__ = [
    "Matching",
    "aggregated_jaccard_index",
    "box_iou",
    "coco_evaluate",
    "identification_metrics",
    "iou_matrix",
    "matching",
    "matching_dataset",
    "matching_masks",
    "multiclass_panoptic_quality",
    "panoptic_quality_all",
    "plot_confusion",
    "plot_per_class",
    "sanity_score",
    "sanity_terms",
]
