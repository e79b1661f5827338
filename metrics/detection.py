"""COCO-style detection and instance-segmentation metrics (box and mask AP) through pycocotools.

Everything is built in memory (no JSON files): ground-truth and predicted :class:`KaryoRecord` lists are
turned into two ``pycocotools.coco.COCO`` objects and scored with ``COCOeval``.

Definitions (COCO, Lin et al. 2014):

* ``AP`` is the mean over the ten IoU thresholds 0.50:0.05:0.95 and over the categories that have at
  least one ground-truth instance of the 101-point interpolated precision at recall 0, 0.01, ..., 1.
* ``AP50`` / ``AP75`` are the same at a single IoU threshold of 0.50 / 0.75.
* IoU is box IoU for ``bbox`` and mask IoU (pixels) for ``segm``; a detection matches a ground truth
  when IoU >= threshold, greedily in order of decreasing score, each ground truth at most once.

All values are fractions in [0, 1]. A quantity with nothing to average over (no ground-truth instance
in any image) is returned as ``nan`` (pycocotools writes -1 there).

Detections per image: pycocotools' default ``maxDets=(1, 10, 100)`` keeps only the 100 highest-scoring
detections of each image. A human metaphase has 46 chromosomes (more with aneuploidy, polyploid cells
or debris), and a Mask R-CNN with a low score threshold emits many more candidates than that; a cap of
100 would silently drop low-scoring true positives and bias AP. We therefore evaluate with
``max_dets=(1, 10, 100, 300)`` by default and read AP at the last (largest) cap. We compute AP from
``COCOeval.eval["precision"]`` ourselves, because ``COCOeval.summarize`` hard-codes a cap of 100.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.coco import encode_masks
from datasets.record import KaryoRecord, boxes_to_masks
from karyogram.labels import NUM_CLASSES, name_of

__all__ = ["DEFAULT_MAX_DETS", "EncodedRecord", "coco_evaluate", "encode_record"]

#: detection caps per image used by :func:`coco_evaluate`; AP is read at the last one
DEFAULT_MAX_DETS: tuple[int, ...] = (1, 10, 100, 300)

_IOU_TYPES = ("bbox", "segm")


@dataclass
class EncodedRecord:
    """What AP needs of a :class:`KaryoRecord`, with its masks as COCO RLE: a few kB instead of N x H x W bytes.

    An evaluation loop encodes each record as soon as it is made (:func:`encode_record`), so a split of
    hundreds of images with ~150 detections each fits in memory; the ranks of a distributed evaluation send
    these to each other.
    """

    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None
    rles: list[dict[str, Any]]
    masks_from_boxes: bool
    image_id: str = ""

    def __len__(self) -> int:
        return int(len(self.labels))


def encode_record(rec: KaryoRecord | EncodedRecord) -> EncodedRecord:
    """Encode a record's masks (filled boxes when it has none, flagged ``masks_from_boxes``)."""
    if isinstance(rec, EncodedRecord):
        return rec
    filled = rec.masks is None
    masks = boxes_to_masks(rec.boxes, rec.height, rec.width) if filled else rec.masks
    if masks.shape != (len(rec), rec.height, rec.width):
        raise ValueError(
            f"record image_id={rec.image_id!r}: masks shape {masks.shape} != {(len(rec), rec.height, rec.width)}"
        )
    return EncodedRecord(
        height=rec.height,
        width=rec.width,
        boxes=rec.boxes,
        labels=rec.labels,
        scores=rec.scores,
        rles=encode_masks(masks),
        masks_from_boxes=filled and len(rec) > 0,
        image_id=rec.image_id,
    )


def _check_labels(rec: KaryoRecord | EncodedRecord, which: str, index: int, agnostic: bool) -> np.ndarray:
    labels = np.asarray(rec.labels, np.int64)
    if agnostic:
        return np.ones(len(labels), np.int64)
    bad = labels[(labels < 1) | (labels > NUM_CLASSES)]
    if len(bad):
        raise ValueError(
            f"{which} record {index} (image_id={rec.image_id!r}) has labels {sorted(set(bad.tolist()))} outside "
            f"1..{NUM_CLASSES}; class-aware AP needs a chromosome class on every instance: use agnostic=True"
        )
    return labels


def _build_coco(
    records: Sequence[KaryoRecord | EncodedRecord], *, is_gt: bool, agnostic: bool, need_segm: bool
) -> tuple[COCO, bool]:
    """An in-memory COCO object for ``records`` (image ids are list positions + 1; masks encoded one record
    at a time).

    Returns the COCO object and whether any record's masks were filled in from its boxes.
    """
    images, anns = [], []
    from_boxes = False
    ann_id = 1
    for i, rec in enumerate(records):
        img_id = i + 1
        images.append({"id": img_id, "height": rec.height, "width": rec.width})
        n = len(rec)
        if n == 0:
            continue
        labels = _check_labels(rec, "ground-truth" if is_gt else "predicted", i, agnostic)
        if rec.boxes.shape != (n, 4):
            raise ValueError(f"record {i} (image_id={rec.image_id!r}): boxes shape {rec.boxes.shape} != {(n, 4)}")
        if is_gt:
            scores = np.ones(n, np.float32)
        elif rec.scores is None:
            scores = np.ones(n, np.float32)  # no scores: every detection equally confident
        else:
            scores = np.asarray(rec.scores, np.float32)
            if scores.shape != (n,):
                raise ValueError(f"predicted record {i}: scores shape {scores.shape} != {(n,)}")
        rles: list[dict[str, Any]] | None = None
        areas = (rec.boxes[:, 2] - rec.boxes[:, 0]) * (rec.boxes[:, 3] - rec.boxes[:, 1])
        if need_segm:
            enc = encode_record(rec)
            from_boxes |= enc.masks_from_boxes
            rles = enc.rles
            areas = mask_utils.area(rles).astype(np.float64)
        for j in range(n):
            x1, y1, x2, y2 = (float(v) for v in rec.boxes[j])
            ann: dict[str, Any] = {
                "id": ann_id,
                "image_id": img_id,
                "category_id": int(labels[j]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(areas[j]),
                "iscrowd": 0,
            }
            if rles is not None:
                ann["segmentation"] = rles[j]
            if not is_gt:
                ann["score"] = float(scores[j])
            anns.append(ann)
            ann_id += 1
    cat_ids = [1] if agnostic else list(range(1, NUM_CLASSES + 1))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cat_ids]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, from_boxes


def _mean_valid(a: np.ndarray) -> float:
    """Mean of the entries > -1 (pycocotools marks undefined precision with -1); nan if there are none."""
    v = a[a > -1]
    if not v.size:
        return math.nan
    # pycocotools divides by (tp + fp + np.spacing(1)), so a perfect precision is 1 - 2e-16; rounding to
    # 12 decimals removes that artefact (AP's own resolution is far coarser) and makes perfect exactly 1.0
    return round(math.fsum(v.tolist()) / v.size, 12)


def coco_evaluate(
    gt: Sequence[KaryoRecord | EncodedRecord],
    pred: Sequence[KaryoRecord | EncodedRecord],
    *,
    agnostic: bool = False,
    iou_types: Sequence[str] = _IOU_TYPES,
    max_dets: Sequence[int] = DEFAULT_MAX_DETS,
) -> dict[str, Any]:
    """COCO box and mask AP of predictions against ground truth, image by image (list positions pair up).

    Args:
        gt: ground-truth records; ``labels`` 1..24 (or anything when ``agnostic``), ``masks`` uint8
            [N, H, W] or None (then the filled boxes stand in for the masks, and the result carries
            ``"segm_gt_from_boxes": 1.0``). Either list may hold :class:`EncodedRecord` instead.
        pred: one predicted record per ground-truth record, same image size; ``scores`` float32 [M]
            (None means 1.0 for every detection); ``masks`` None means filled boxes.
        agnostic: score detection only: every label becomes 1 (one "chromosome" category).
        iou_types: any of ``"bbox"``, ``"segm"``.
        max_dets: detection caps per image (ascending); AP is read at the last. See the module docstring.

    Returns:
        A flat dict: ``{t}_AP``, ``{t}_AP50``, ``{t}_AP75`` for each IoU type ``t`` (fractions; nan when no
        image has a ground-truth instance), ``segm_gt_from_boxes`` (1.0 or 0.0) when segm is evaluated,
        and, unless ``agnostic``, ``per_class_bbox_AP50`` (and ``per_class_segm_AP50``): ``{name: AP50}``
        for the classes ("1".."22", "X", "Y") that have at least one ground-truth instance.

    Raises:
        ValueError: lists of different lengths, image sizes that differ, unknown IoU types, labels
            outside 1..24 when not agnostic.
    """
    gt, pred = list(gt), list(pred)
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth records but {len(pred)} predicted records; pass one per image")
    for i, (g, p) in enumerate(zip(gt, pred)):
        if (g.height, g.width) != (p.height, p.width):
            raise ValueError(
                f"image {i} (image_id={g.image_id!r}): gt is {g.width}x{g.height}, pred {p.width}x{p.height}"
            )
    iou_types = tuple(iou_types)
    unknown = [t for t in iou_types if t not in _IOU_TYPES]
    if unknown or not iou_types:
        raise ValueError(f"iou_types must be a non-empty subset of {_IOU_TYPES}, got {iou_types}")
    max_dets = sorted(int(m) for m in max_dets)
    if not max_dets or max_dets[0] < 1:
        raise ValueError(f"max_dets must be positive integers, got {max_dets}")

    need_segm = "segm" in iou_types
    coco_gt, gt_from_boxes = _build_coco(gt, is_gt=True, agnostic=agnostic, need_segm=need_segm)
    coco_dt, _ = _build_coco(pred, is_gt=False, agnostic=agnostic, need_segm=need_segm)

    out: dict[str, Any] = {}
    for t in iou_types:
        ev = COCOeval(coco_gt, coco_dt, iouType=t)
        ev.params.imgIds = list(range(1, len(gt) + 1))
        ev.params.maxDets = list(max_dets)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
        if len(gt) == 0 or not ev.eval:
            prec = -np.ones((len(ev.params.iouThrs), 1, len(ev.params.catIds), 1, 1))
        else:
            prec = ev.eval["precision"]  # [T iou thresholds, R recall points, K classes, A areas, M caps]
        prec = prec[:, :, :, 0, -1]  # area "all", largest cap
        iou_thrs = np.asarray(ev.params.iouThrs)
        i50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
        i75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
        out[f"{t}_AP"] = _mean_valid(prec)
        out[f"{t}_AP50"] = _mean_valid(prec[i50])
        out[f"{t}_AP75"] = _mean_valid(prec[i75])
        if not agnostic:
            per_class = {}
            for k, cat in enumerate(ev.params.catIds):
                v = _mean_valid(prec[i50, :, k])
                if not math.isnan(v):
                    per_class[name_of(int(cat))] = v
            out[f"per_class_{t}_AP50"] = per_class
    if need_segm:
        out["segm_gt_from_boxes"] = 1.0 if gt_from_boxes else 0.0
    return out
