"""Detector output -> instance record, and the one detection-evaluation loop.

The owners of the detection score thresholds (everything else reads them here):

* :data:`SCORE_THRESH` (0.6): the pipeline's operating point, the lowest detection score of a chromosome it
  reports (``inference_pipeline.py --score-thresh``, ``evaluate.py --pipeline-score-thresh``); chosen on the
  CIL val split (README, "The whole pipeline").
* :data:`AP_SCORE_THRESH` (0.05): the lowest score kept when measuring AP (so the precision-recall curve is
  seen whole): the trainer's validation, ``evaluate.py --stage seg``.

The mask thresholds (the pipeline's ``mask_thresh`` 0.2, the AP's ``ap_mask_thresh`` 0.3, the orientation-bin
merge's ``bin_merge_iou`` 0.6 and ``bin_merge_mask_thresh`` 0.5) belong to :class:`karyotyping.masks.MaskConfig`,
with the steps that follow detection. Two crossing chromosomes found in two orientation bins share only the
crossing and are both kept.

:func:`detections_to_record` is the one conversion of a model's output into a :class:`KaryoRecord`;
:func:`detect` runs the model on one image in float32 (never under autocast: torchvision decodes boxes in the
head's dtype, and bf16 would quantise 500-1300 px coordinates to 4-8 px steps); :func:`detect_dataset` and
:func:`evaluate_detection` are the one evaluation loop used by the trainer, ``evaluate.py`` and
``benchmarks/tune_mask_overlap.py``. Under torchrun the loop is sharded over the ranks and merged (as
torchvision's references do), so no rank waits long in a barrier.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datasets.record import KaryoRecord
from karyotyping.masks import DEFAULT as MASKS

__all__ = [
    "AP_SCORE_THRESH",
    "SCORE_THRESH",
    "binarize_masks",
    "detect",
    "detect_dataset",
    "detect_soft",
    "detections_to_record",
    "evaluate_detection",
    "merge_orientation_bins",
    "orientation_bins_of",
]

SCORE_THRESH = 0.6
AP_SCORE_THRESH = 0.05
BIN_SCORE_COMBINE = ("sum", "max")


def binarize_masks(
    prob: torch.Tensor | np.ndarray, height: int, width: int, thresh: float = MASKS.mask_thresh
) -> np.ndarray:
    """Soft masks [M, 1, H, W] (or [M, H, W]) in [0, 1] -> uint8 [M, H, W], foreground where ``> thresh``."""
    if not 0.0 < thresh < 1.0:
        raise ValueError(f"the mask threshold must lie in (0, 1), got {thresh}")
    p = torch.as_tensor(prob)
    if p.ndim == 4:
        p = p[:, 0]
    if len(p) == 0:
        return np.zeros((0, height, width), np.uint8)
    return (p > thresh).to(torch.uint8).cpu().numpy()


def detections_to_record(
    out: dict[str, torch.Tensor],
    image: np.ndarray,
    *,
    meta: dict[str, Any] | None = None,
    mask_thresh: float = MASKS.mask_thresh,
) -> KaryoRecord:
    """One image's output of :func:`models.segmentation.predict` -> a prediction :class:`KaryoRecord`.

    Args:
        out: ``boxes`` [M, 4] xyxy pixels, ``labels`` [M], ``scores`` [M] (descending), ``masks`` [M, 1, H, W]
            probabilities.
        image: the image float32 [H, W] the detections belong to (kept by reference, not copied).

    Returns:
        a record with boxes, labels (1..24, or 1 for a class-agnostic model), unrounded float32 scores and
        binary masks uint8 [M, H, W] (:func:`binarize_masks` at ``mask_thresh``).
    """
    h, w = np.asarray(image).shape[:2]
    return KaryoRecord(
        image=image,
        boxes=out["boxes"].cpu().numpy(),
        labels=out["labels"].cpu().numpy(),
        masks=binarize_masks(out["masks"], h, w, mask_thresh),
        scores=out["scores"].cpu().numpy(),
        meta=dict(meta or {}),
    )


def merge_orientation_bins(
    out: dict[str, torch.Tensor],
    *,
    iou_thresh: float = MASKS.bin_merge_iou,
    mask_thresh: float = MASKS.bin_merge_mask_thresh,
    combine: str = "sum",
) -> dict[str, torch.Tensor]:
    """One detection per chromosome from a detector with orientation classes, every label set to 1.

    torchvision's NMS runs per class, so a chromosome whose angle lies near the edge of two bins can come out
    once in each. In descending score order, a detection suppresses the lower-scoring detections of *other*
    bins whose masks (probability above ``mask_thresh``) have an IoU above ``iou_thresh`` with its own (boxes
    whose masks' extents do not meet are never compared). Within one bin the model's NMS has decided already.

    The kept detection's score is, with ``combine``:

    * ``"sum"`` (default): its own plus, for each other bin, the best score it suppressed there, capped at 1. The
      bins' softmax probabilities of one proposal add up to its foreground probability, so this is the score the
      detector gives the chromosome whatever bin it is in: a chromosome split 0.45 / 0.45 between two bins is a
      0.9 chromosome, not a 0.45 one below :data:`SCORE_THRESH`. Pieces from different proposals can overlap
      (hence the cap); no calibration is measured here. A warm-started model
      (:func:`models.segmentation.agnostic_to_orientation_bins`) gets exactly its agnostic scores back.
    * ``"max"``: its own score.

    Args:
        out: one image's detections (:func:`models.segmentation.predict`): ``boxes`` [M, 4], ``labels`` [M] (the
            bins, 1..K), ``scores`` [M], ``masks`` [M, 1, H, W] probabilities.

    Returns:
        the kept detections in the same format, scores descending, ``labels`` all 1.
    """
    if combine not in BIN_SCORE_COMBINE:
        raise ValueError(f"combine must be one of {', '.join(BIN_SCORE_COMBINE)}, got {combine!r}")
    scores = out["scores"].detach().cpu().double().numpy()
    labels = out["labels"].detach().cpu().numpy()
    n = len(scores)
    if n == 0:
        return {**out, "labels": torch.ones_like(out["labels"])}
    binm = (out["masks"][:, 0] > mask_thresh).cpu().numpy()
    rows, cols = binm.any(2), binm.any(1)
    area = binm.sum((1, 2))
    nonempty = area > 0
    # each mask's extent [y0, y1) x [x0, x1)
    y0, y1 = rows.argmax(1), rows.shape[1] - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), cols.shape[1] - cols[:, ::-1].argmax(1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    new_scores = scores.copy()
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if not nonempty[i]:
            continue
        rest = order[a + 1 :]
        cand = rest[
            ~suppressed[rest]
            & nonempty[rest]
            & (labels[rest] != labels[i])
            & (np.maximum(y0[rest], y0[i]) < np.minimum(y1[rest], y1[i]))
            & (np.maximum(x0[rest], x0[i]) < np.minimum(x1[rest], x1[i]))
        ]
        best: dict[int, float] = {}
        for j in cand:
            ya, yb = max(y0[i], y0[j]), min(y1[i], y1[j])
            xa, xb = max(x0[i], x0[j]), min(x1[i], x1[j])
            inter = int(np.logical_and(binm[i, ya:yb, xa:xb], binm[j, ya:yb, xa:xb]).sum())
            if inter > iou_thresh * (area[i] + area[j] - inter):
                suppressed[j] = True
                best[int(labels[j])] = max(best.get(int(labels[j]), 0.0), float(scores[j]))
        if combine == "sum" and best:
            new_scores[i] = min(1.0, scores[i] + sum(best.values()))
    kept = torch.as_tensor(keep, dtype=torch.int64)
    merged = torch.as_tensor(new_scores[keep], dtype=out["scores"].dtype)
    resort = torch.argsort(merged, descending=True, stable=True)
    kept = kept[resort]
    return {
        "boxes": out["boxes"][kept],
        "labels": torch.ones(len(kept), dtype=out["labels"].dtype),
        "scores": merged[resort],
        "masks": out["masks"][kept],
    }


def orientation_bins_of(model: torch.nn.Module) -> int:
    """The model's ``SegConfig.orientation_bins`` (0 for a model without orientation classes or without a config)."""
    net = model.module if hasattr(model, "module") else model
    return int(getattr(getattr(net, "seg_config", None), "orientation_bins", 0) or 0)


@torch.no_grad()
def detect_soft(
    model: torch.nn.Module, image: np.ndarray, *, score_thresh: float, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """The model's own output for one grey image float32 [H, W], in float32 (autocast off), on the CPU.

    A model with orientation classes (``SegConfig.orientation_bins`` = K) runs at ``score_thresh / K`` so that
    a chromosome whose score is split between bins is seen whole; :func:`merge_orientation_bins` then keeps one
    detection per chromosome, with the bins' scores summed, and labels 1; those >= ``score_thresh`` are returned.
    From outside, every model is class-agnostic or has the 24 chromosome classes.

    Returns:
        ``boxes`` [M, 4], ``labels`` [M], ``scores`` [M] (descending, >= ``score_thresh``) and ``masks``
        [M, 1, H, W] probabilities (:func:`models.segmentation.predict`).
    """
    from models.segmentation import predict

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    bins = orientation_bins_of(model)
    # validation and inference always run in float32, also inside a training step's autocast region
    with torch.autocast(device_type=dev.type, enabled=False):
        out = predict(model, [image], score_thresh=score_thresh / bins if bins else score_thresh, device=dev)[0]
    out = {k: v.cpu() for k, v in out.items()}
    if bins:
        out = merge_orientation_bins(out)
        keep = out["scores"] >= score_thresh
        out = {k: v[keep] for k, v in out.items()}
    return out


def detect(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    score_thresh: float,
    device: torch.device | str | None = None,
    mask_thresh: float = MASKS.mask_thresh,
) -> KaryoRecord:
    """Detect and segment the chromosomes of one grey image float32 [H, W] (:func:`detect_soft`).

    Returns the detections with score >= ``score_thresh`` as a record (:func:`detections_to_record`).
    """
    return detections_to_record(
        detect_soft(model, image, score_thresh=score_thresh, device=device), image, mask_thresh=mask_thresh
    )


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def detect_dataset(
    model: torch.nn.Module,
    dataset: Sequence[KaryoRecord],
    device: torch.device | str,
    *,
    score_thresh: float,
    max_images: int | None = None,
    progress: bool = False,
    shard: bool = False,
) -> Iterator[tuple[int, KaryoRecord, KaryoRecord]]:
    """Yield ``(index, ground truth, prediction)`` for the dataset's records (the first ``max_images``).

    With ``shard`` (in a distributed run) this rank only sees the indices ``rank, rank + world, ...``.
    """
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    rank, world = _rank_world() if shard else (0, 1)
    indices: Sequence[int] = range(rank, n, world)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="detecting", dynamic_ncols=True, leave=False)
    for i in indices:
        gt = dataset[i]
        pred = detect(model, gt.image, score_thresh=score_thresh, device=device, mask_thresh=MASKS.ap_mask_thresh)
        pred.meta["image_id"] = gt.image_id or str(i)
        yield i, gt, pred


def evaluate_detection(
    model: torch.nn.Module,
    dataset: Sequence[KaryoRecord],
    device: torch.device | str,
    *,
    agnostic: bool,
    score_thresh: float = AP_SCORE_THRESH,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """COCO box and mask AP of a detection model on a dataset of :class:`KaryoRecord` (float32 inference).

    In a distributed run every rank must call it: each detects its share of the images, the shares are
    gathered and rank 0 scores them; every rank returns the same figures.

    Returns:
        the flat dict of :func:`metrics.detection.coco_evaluate` (``bbox_AP``, ``bbox_AP50``, ...,
        ``segm_AP50``, ...), values in [0, 1], or -1 where COCO has nothing to score.
    """
    from metrics.detection import coco_evaluate, encode_record

    net = model.module if hasattr(model, "module") else model
    rank, world = _rank_world()
    # each record is encoded as soon as it is detected (masks as RLE): a whole split fits in memory
    mine = [
        (i, encode_record(gt), encode_record(pred))
        for i, gt, pred in detect_dataset(
            net, dataset, device, score_thresh=score_thresh, max_images=max_images, progress=progress, shard=True
        )
    ]
    if world == 1:
        return coco_evaluate([g for _, g, _ in mine], [p for _, _, p in mine], agnostic=agnostic)
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, mine)
    del mine
    result: list[Any] = [None]
    if rank == 0:
        merged = sorted((t for s in shards for t in s), key=lambda t: t[0])
        result[0] = coco_evaluate([g for _, g, _ in merged], [p for _, _, p in merged], agnostic=agnostic)
    del shards
    dist.broadcast_object_list(result, src=0)
    return result[0]
