"""Instance matching, panoptic quality and aggregated Jaccard index (after stardist's ``matching.py``).

Chromosomes overlap, so besides integer label maps (stardist's input) every function here also works
on *stacked binary masks* ``uint8 [N, H, W]``, one plane per instance, where a pixel may belong to
several instances.

Definitions used throughout (``score`` is IoU unless another criterion is chosen):

* IoU(a, b) = |a ∩ b| / |a ∪ b|; IoT = |a ∩ b| / |a| (over the true instance); IoP = |a ∩ b| / |b|
  (over the predicted instance); areas in pixels.
* Matching: one-to-one, optimal (Hungarian, ``scipy.optimize.linear_sum_assignment``): first the number
  of pairs with score >= ``thresh`` is maximised, then the sum of their scores. A pair is a true
  positive when its score >= ``thresh`` (the ``>=`` of COCO and stardist). For IoU and thresh >= 0.5 a
  true instance can overlap at most one prediction that much (except at exact equality), so the
  optimal matching is then the same as greedy matching.
* tp, fp = n_pred - tp, fn = n_true - tp; precision = tp / n_pred; recall = tp / n_true;
  accuracy = tp / (tp + fp + fn); f1 = 2 tp / (2 tp + fp + fn);
  mean_true_score = (sum of matched scores) / n_true; mean_matched_score = (sum of matched scores) / tp;
  panoptic_quality (Kirillov et al. 2019) = (sum of matched IoU) / (tp + fp/2 + fn/2)
  = SQ * RQ with SQ = mean_matched_score and RQ = f1.
* Empty inputs (0/0): when both ground truth and prediction are empty every ratio is 1.0 (nothing to
  find and nothing claimed: a perfect answer); when only one side is empty every 0/0 ratio is 0.0.
  So an empty prediction of a non-empty image scores precision = recall = f1 = PQ = 0, and a perfect
  prediction scores exactly 1.0 everywhere.
* Aggregation over images (:func:`matching_dataset`): tp, fp, fn, n_true, n_pred and the sum of matched
  scores are *summed* over images and the ratios computed once from the sums (micro average), not
  averaged per image, unless ``by_image=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from karyogram.labels import NUM_CLASSES, name_of

#: the IoU at which a predicted chromosome matches a true one, everywhere figures are computed (F1@0.5,
#: identification of found chromosomes, the error breakdown)
MATCH_IOU = 0.5

__all__ = [
    "MATCH_IOU",
    "Matching",
    "CRITERIA",
    "matching",
    "matching_masks",
    "matching_dataset",
    "iou_matrix",
    "overlap_counts",
    "box_iou",
    "held_fraction",
    "error_breakdown",
    "instance_fates",
    "InstanceFates",
    "TRUE_FATES",
    "FALSE_KINDS",
    "panoptic_quality_all",
    "multiclass_panoptic_quality",
    "aggregated_jaccard_index",
]


class Matching(NamedTuple):
    """Result of matching ground-truth instances to predicted instances (see the module docstring).

    ``tp``, ``fp``, ``fn``, ``n_true``, ``n_pred`` are counts (floats only for ``by_image`` averages);
    the others are fractions in [0, 1]; ``sum_matched_score`` is the sum of the true positives' scores.
    """

    criterion: str
    thresh: float
    fp: int
    tp: int
    fn: int
    precision: float
    recall: float
    accuracy: float
    f1: float
    n_true: int
    n_pred: int
    mean_true_score: float
    mean_matched_score: float
    panoptic_quality: float
    sum_matched_score: float


def _intersection_over_union(overlap: np.ndarray, area_true: np.ndarray, area_pred: np.ndarray) -> np.ndarray:
    union = area_true[:, None] + area_pred[None, :] - overlap
    return np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)


def _intersection_over_true(overlap: np.ndarray, area_true: np.ndarray, area_pred: np.ndarray) -> np.ndarray:
    den = np.broadcast_to(area_true[:, None], overlap.shape)
    return np.divide(overlap, den, out=np.zeros_like(overlap), where=den > 0)


def _intersection_over_pred(overlap: np.ndarray, area_true: np.ndarray, area_pred: np.ndarray) -> np.ndarray:
    den = np.broadcast_to(area_pred[None, :], overlap.shape)
    return np.divide(overlap, den, out=np.zeros_like(overlap), where=den > 0)


#: score of every (true, pred) pair from the overlap matrix [N, M] and the areas [N], [M] (pixels)
CRITERIA = {
    "iou": _intersection_over_union,
    "iot": _intersection_over_true,
    "iop": _intersection_over_pred,
}


def _ratio(num: float, den: float, both_empty: bool) -> float:
    """num / den, with 0/0 = 1.0 when ground truth and prediction are both empty and 0.0 otherwise."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _check_thresh_criterion(thresh: float, criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    if not 0.0 < float(thresh) <= 1.0:
        raise ValueError(f"thresh must be in (0, 1], got {thresh}")


def _from_counts(criterion: str, thresh: float, tp: float, n_true: float, n_pred: float, sum_score: float) -> Matching:
    """A :class:`Matching` from the counts and the sum of matched scores (the ratios of the module docstring)."""
    fp, fn = n_pred - tp, n_true - tp
    empty = n_true == 0 and n_pred == 0
    return Matching(
        criterion=criterion,
        thresh=float(thresh),
        fp=fp,
        tp=tp,
        fn=fn,
        precision=_ratio(tp, n_pred, empty),
        recall=_ratio(tp, n_true, empty),
        accuracy=_ratio(tp, tp + fp + fn, empty),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, empty),
        n_true=n_true,
        n_pred=n_pred,
        mean_true_score=_ratio(sum_score, n_true, empty),
        mean_matched_score=_ratio(sum_score, tp, empty),
        panoptic_quality=_ratio(sum_score, tp + fp / 2 + fn / 2, empty),
        sum_matched_score=float(sum_score),
    )


def _assign(scores: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one pairs (true_ind, pred_ind) with score >= thresh, from scores [N, M].

    Maximises the number of such pairs first, then the sum of their scores (stardist's cost:
    ``-(score >= thresh) - score / (2 * min(N, M))``; the second term sums to less than 1).
    """
    n, m = scores.shape
    if n == 0 or m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ok = scores >= thresh
    if not ok.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cost = -ok.astype(np.float64) - scores / (2 * min(n, m))
    ti, pi = linear_sum_assignment(cost)
    keep = ok[ti, pi]
    return ti[keep].astype(np.int64), pi[keep].astype(np.int64)


def _match_from_overlap(
    overlap: np.ndarray, area_true: np.ndarray, area_pred: np.ndarray, thresh: float, criterion: str
) -> Matching:
    scores = CRITERIA[criterion](overlap, area_true, area_pred)
    ti, pi = _assign(scores, thresh)
    sum_score = float(scores[ti, pi].sum()) if len(ti) else 0.0
    return _from_counts(criterion, thresh, len(ti), len(area_true), len(area_pred), sum_score)


# ---------------------------------------------------------------------------------------------- label maps
def _check_label_map(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"{name} must be an integer label map, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} has negative labels (min {y.min()}); labels are 0 (background) or positive ids")
    return y.astype(np.int64)


def _label_overlap(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlap [N, M] and areas [N], [M] (pixels) of the instances of two label maps (ids need not be sequential)."""
    t_ids, t_inv = np.unique(y_true.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(y_pred.ravel(), return_inverse=True)
    # make row/column 0 the background whether or not label 0 occurs
    t_off = 0 if (len(t_ids) and t_ids[0] == 0) else 1
    p_off = 0 if (len(p_ids) and p_ids[0] == 0) else 1
    nt, np_ = len(t_ids) + t_off, len(p_ids) + p_off
    hist = np.bincount((t_inv + t_off) * np_ + (p_inv + p_off), minlength=nt * np_).reshape(nt, np_)
    overlap = hist[1:, 1:].astype(np.float64)
    area_true = hist[1:, :].sum(1).astype(np.float64)
    area_pred = hist[:, 1:].sum(0).astype(np.float64)
    return overlap, area_true, area_pred


def matching(y_true: np.ndarray, y_pred: np.ndarray, thresh: float = 0.5, criterion: str = "iou") -> Matching:
    """Match the instances of two integer label maps int[H, W] (0 = background, any positive ids).

    Args:
        y_true: ground-truth label map.
        y_pred: predicted label map, same shape.
        thresh: a matched pair counts as a true positive when its score >= thresh (0 < thresh <= 1).
        criterion: ``"iou"``, ``"iot"`` (intersection over true) or ``"iop"`` (intersection over pred).

    Returns:
        :class:`Matching` (definitions in the module docstring).

    Two 10x10 squares, the prediction shifted by 5 pixels: IoU = 50 / 150 = 1/3.

    >>> t = np.zeros((20, 20), int); t[0:10, 0:10] = 1
    >>> p = np.zeros((20, 20), int); p[0:10, 5:15] = 7
    >>> m = matching(t, p, thresh=0.5); (m.tp, m.fp, m.fn)
    (0, 1, 1)
    >>> m = matching(t, p, thresh=0.3); (m.tp, round(m.panoptic_quality, 4), m.f1)
    (1, 0.3333, 1.0)
    """
    _check_thresh_criterion(thresh, criterion)
    y_true = _check_label_map(y_true, "y_true")
    y_pred = _check_label_map(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    return _match_from_overlap(*_label_overlap(y_true, y_pred), thresh, criterion)


# ---------------------------------------------------------------------------------------------- stacked masks
def _check_masks(masks: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(masks)
    if a.ndim != 3:
        raise ValueError(f"{name} must be stacked binary masks [N, H, W], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} must be binary (bool or integer 0/1) masks, got dtype {a.dtype}")
    return a


def _mask_boxes(flat_rows: np.ndarray, flat_cols: np.ndarray) -> np.ndarray:
    """[K, 4] ``y0, y1, x0, x1`` (half-open) of each mask from its any-over-columns / any-over-rows."""
    out = np.zeros((len(flat_rows), 4), np.int64)
    for k, (r, c) in enumerate(zip(flat_rows, flat_cols)):
        ys, xs = np.flatnonzero(r), np.flatnonzero(c)
        if len(ys):
            out[k] = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    return out


def _mask_overlap(true_masks: np.ndarray, pred_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersections float64 [N, M] and areas [N], [M] (pixels) of stacked binary masks.

    Exact integer counts. Only pairs whose masks' bounding boxes meet are intersected, each on the
    common part of the two boxes: a spread's ~46 x 46 pairs cost a few hundred small crops instead of
    whole-image passes.
    """
    t = _check_masks(true_masks, "true_masks")
    p = _check_masks(pred_masks, "pred_masks")
    if t.shape[1:] != p.shape[1:]:
        raise ValueError(f"true masks are {t.shape[1:]} pixels but pred masks are {p.shape[1:]}")
    n, m = t.shape[0], p.shape[0]
    tb, pb = t > 0, p > 0
    area_t = tb.sum((1, 2), dtype=np.int64).astype(np.float64) if n else np.zeros(0)
    area_p = pb.sum((1, 2), dtype=np.int64).astype(np.float64) if m else np.zeros(0)
    inter = np.zeros((n, m), np.float64)
    if n == 0 or m == 0:
        return inter, area_t, area_p
    bt = _mask_boxes(tb.any(2), tb.any(1))
    bp = _mask_boxes(pb.any(2), pb.any(1))
    y0 = np.maximum(bt[:, None, 0], bp[None, :, 0])
    y1 = np.minimum(bt[:, None, 1], bp[None, :, 1])
    x0 = np.maximum(bt[:, None, 2], bp[None, :, 2])
    x1 = np.minimum(bt[:, None, 3], bp[None, :, 3])
    for i, j in zip(*np.nonzero((y1 > y0) & (x1 > x0))):
        a, b, c, d = y0[i, j], y1[i, j], x0[i, j], x1[i, j]
        inter[i, j] = np.count_nonzero(tb[i, a:b, c:d] & pb[j, a:b, c:d])
    return inter, area_t, area_p


def overlap_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel intersections float64 [N, M] of stacked binary masks ``a`` [N, H, W] and ``b`` [M, H, W], and their
    areas [N], [M]; only pairs whose bounding boxes meet are intersected.

    >>> a = np.zeros((1, 4, 4), np.uint8); a[0, :2] = 1
    >>> [x.tolist() for x in overlap_counts(a, np.concatenate([a, 1 - a]))]
    [[[8.0, 0.0]], [8.0], [8.0, 8.0]]
    """
    return _mask_overlap(a, b)


def iou_matrix(true_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """Mask IoU float64 [N, M] between stacked binary masks [N, H, W] and [M, H, W] (0 where both are empty).

    >>> a = np.zeros((1, 4, 4), np.uint8); a[0, :2] = 1
    >>> b = np.zeros((1, 4, 4), np.uint8); b[0, 1:3] = 1
    >>> iou_matrix(a, b).round(4).tolist()
    [[0.3333]]
    """
    return _intersection_over_union(*_mask_overlap(true_masks, pred_masks))


def held_fraction(true_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
    """Fraction float64 [N, M] of each true mask's pixels that each predicted mask holds (0 for an empty true mask).

    >>> a = np.zeros((1, 4, 4), np.uint8); a[0, :2] = 1
    >>> b = np.zeros((1, 4, 4), np.uint8); b[0, 1:] = 1
    >>> held_fraction(a, b).tolist()
    [[0.5]]
    """
    return _intersection_over_true(*_mask_overlap(true_masks, pred_masks))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU float64 [N, M] of boxes a [N, 4] and b [M, 4] in ``x1, y1, x2, y2`` (continuous pixel coordinates).

    Area of a box = (x2 - x1) * (y2 - y1); 0 where both boxes have zero area.

    >>> box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]])).round(4).tolist()
    [[0.3333]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    for name, x in (("a", a), ("b", b)):
        if ((x[:, 2] < x[:, 0]) | (x[:, 3] < x[:, 1])).any():
            raise ValueError(f"boxes {name} must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return _intersection_over_union(inter, area_a, area_b)


#: what became of a true instance (:func:`instance_fates`)
TRUE_FATES = ("found", "lost_merged", "lost_split", "lost_uncovered")
#: what an unmatched predicted instance is (:func:`instance_fates`)
FALSE_KINDS = ("merge", "duplicate", "piece", "off_mask", "background")
#: merged chromosomes by the angle between their long axis and their partner's (issue 24: orientation classes can
#: only help the crossing ones), name -> [low, high) degrees; ``alone`` (no partner) is the fifth kind
MERGE_ANGLES = {"parallel": (0.0, 15.0), "oblique": (15.0, 30.0), "crossing": (30.0, 90.01)}
#: a merged chromosome's partner: another true instance the same predicted mask holds at least this much of
PARTNER_HELD = 0.3


class InstanceFates(NamedTuple):
    """Per instance of one image, what :func:`instance_fates` found.

    Attributes:
        true_fate: str [N], one of :data:`TRUE_FATES`.
        box_seen: bool [N], some predicted box overlaps the true box at IoU >= the threshold.
        matched_to: int [N], the predicted instance matched to each true one (-1: none).
        into: int [N], for ``lost_merged`` the predicted instance holding half or more of it (-1 otherwise).
        false_kind: str [M], one of :data:`FALSE_KINDS` for an unmatched predicted instance, ``""`` for a matched one.
        partner: int [N], for ``lost_merged`` the other true instance that its predicted mask holds most of, if it
            holds :data:`PARTNER_HELD` or more of it (-1 otherwise: no partner, e.g. one chromosome in a mask too
            large).
    """

    true_fate: np.ndarray
    box_seen: np.ndarray
    matched_to: np.ndarray
    into: np.ndarray
    false_kind: np.ndarray
    partner: np.ndarray


def instance_fates(
    true_masks: np.ndarray,
    true_boxes: np.ndarray,
    pred_masks: np.ndarray,
    pred_boxes: np.ndarray,
    thresh: float = MATCH_IOU,
) -> InstanceFates:
    """What became of each true instance of one image, and what each unmatched prediction is.

    True and predicted instances are matched one to one by mask IoU (the assignment of largest total IoU,
    pairs at IoU >= ``thresh``), as the F1 and identification figures match them. A true instance not matched
    is ``lost_merged`` (half or more of its pixels lie in one predicted mask: a mask that took it in with a
    neighbour, or the same chromosome in a mask too large), ``lost_split`` (not merged, but the predicted masks
    together hold half or more: pieces) or ``lost_uncovered`` (less than half of it lies under any predicted mask).

    An unmatched predicted instance is a ``merge`` (it holds half or more of two or more true instances), a
    ``duplicate`` (half or more of its pixels lie in one true instance that another prediction was matched to: the
    same chromosome twice, or a piece of a found one), a ``piece`` (half or more inside one true instance that no
    prediction was matched to: a fragment of a lost one), ``off_mask`` (on chromosome pixels, but no single true
    instance holds half of it) or ``background`` (less than half of it on any true instance: a nucleus, debris).

    >>> t = np.zeros((2, 8, 8), np.uint8); t[0, :4, :4] = 1; t[1, 4:, 4:] = 1
    >>> p = np.zeros((2, 8, 8), np.uint8); p[0, :4, :4] = 1; p[1, 4:, :3] = 1
    >>> f = instance_fates(t, np.array([[0, 0, 4, 4], [4, 4, 8, 8]]), p, np.array([[0, 0, 4, 4], [0, 4, 3, 8]]))
    >>> f.true_fate.tolist(), f.false_kind.tolist()
    (['found', 'lost_uncovered'], ['', 'background'])
    """
    from scipy.optimize import linear_sum_assignment

    n, m = len(true_masks), len(pred_masks)
    fate = np.full(n, "lost_uncovered", dtype=object)
    matched_to = np.full(n, -1, np.int64)
    into = np.full(n, -1, np.int64)
    partner = np.full(n, -1, np.int64)
    kind = np.full(m, "", dtype=object)
    if n and m:
        inter, area_t, area_p = _mask_overlap(true_masks, pred_masks)
        iou = _intersection_over_union(inter, area_t, area_p)
        rows, cols = linear_sum_assignment(-iou)
        for a, b in zip(rows, cols):
            if iou[a, b] >= thresh:
                fate[a], matched_to[a] = "found", b
        held = _intersection_over_true(inter, area_t, area_p)  # [N, M] fraction of each true held by each pred
        inside = _intersection_over_pred(inter, area_t, area_p)  # [N, M] fraction of each pred inside each true
        union = np.asarray(pred_masks).astype(bool).any(0)
        for a in np.flatnonzero((matched_to < 0) & (area_t > 0)):
            b = int(np.argmax(held[a]))
            if held[a, b] >= 0.5:
                fate[a], into[a] = "lost_merged", b
                others = held[:, b].copy()
                others[a] = -1.0
                if n > 1 and others.max() >= PARTNER_HELD:
                    partner[a] = int(np.argmax(others))
            elif np.count_nonzero(np.asarray(true_masks[a]).astype(bool) & union) >= 0.5 * area_t[a]:
                fate[a] = "lost_split"
        on_truth = _intersection_over_pred(
            *_mask_overlap(np.asarray(true_masks).astype(bool).any(0, keepdims=True).astype(np.uint8), pred_masks)
        )[0]
        found_pred = set(matched_to[matched_to >= 0].tolist())
        for b in range(m):
            if b in found_pred:
                continue
            a = int(np.argmax(inside[:, b]))
            if (held[:, b] >= 0.5).sum() >= 2:
                kind[b] = "merge"
            elif inside[a, b] >= 0.5:
                kind[b] = "duplicate" if matched_to[a] >= 0 else "piece"
            elif on_truth[b] >= 0.5:
                kind[b] = "off_mask"
            else:
                kind[b] = "background"
    elif m:
        kind[:] = "background"
    box_seen = np.zeros(n, bool)
    if n and len(pred_boxes):
        box_seen = (box_iou(true_boxes, pred_boxes) >= thresh).any(1)
    return InstanceFates(fate, box_seen, matched_to, into, kind, partner)


def merge_angle_kinds(true_masks: np.ndarray, fates: InstanceFates) -> np.ndarray:
    """Each merged true instance's kind by the angle between its long axis and its partner's.

    Args:
        true_masks: uint8 [N, H, W], the true instances :func:`instance_fates` was given.
        fates: its result.

    Returns:
        str [N]: a key of :data:`MERGE_ANGLES` or ``"alone"`` for a ``lost_merged`` instance, ``""`` otherwise.

    >>> t = np.zeros((3, 20, 20), np.uint8); t[0, 9:11, 2:18] = 1; t[1, 2:18, 9:11] = 1; t[2, 0:2, 0:2] = 1
    >>> p = np.zeros((1, 20, 20), np.uint8); p[0, 2:18, 2:18] = 1  # one mask over the X
    >>> f = instance_fates(t, np.array([[2, 9, 18, 11], [9, 2, 11, 18], [0, 0, 2, 2]]), p, np.array([[2, 2, 18, 18]]))
    >>> merge_angle_kinds(t, f).tolist()
    ['crossing', 'crossing', '']
    """
    from datasets.orientation import long_axis_angle

    out = np.full(len(fates.true_fate), "", dtype=object)
    for a in np.flatnonzero(fates.true_fate == "lost_merged"):
        c = int(fates.partner[a])
        if c < 0:
            out[a] = "alone"
            continue
        d = abs(long_axis_angle(true_masks[a]) - long_axis_angle(true_masks[c])) % 180.0
        d = min(d, 180.0 - d)
        out[a] = next(k for k, (lo, hi) in MERGE_ANGLES.items() if lo <= d < hi)
    return out


def error_breakdown(
    true_masks: np.ndarray,
    true_boxes: np.ndarray,
    pred_masks: np.ndarray,
    pred_boxes: np.ndarray,
    true_labels: np.ndarray | None = None,
    pred_labels: np.ndarray | None = None,
    thresh: float = MATCH_IOU,
) -> dict[str, int]:
    """Where a pipeline loses its chromosomes in one image: :func:`instance_fates` counted.

    Each true instance is ``found`` (matched), ``mask_failed`` (not matched, but some predicted *box* overlaps
    its box at IoU >= ``thresh``: the detector saw it, its mask is off), or ``missed``. With both label arrays,
    ``found`` ones are split into ``right`` and ``wrong`` (the matched prediction's label equals the true one or
    not). The ones not found are split by where their pixels went (``lost_merged``, ``lost_split``,
    ``lost_uncovered``, :func:`instance_fates`); ``lost_merged_into_found`` counts the merged ones whose mask is
    matched to another true instance, and ``lost_merged_<kind>`` splits the merged ones by the angle to their
    partner (:func:`merge_angle_kinds`: ``parallel``, ``oblique``, ``crossing``, or ``alone``).

    Args:
        true_masks / pred_masks: uint8 [N, H, W] / [M, H, W].
        true_boxes / pred_boxes: [N, 4] / [M, 4] ``x1, y1, x2, y2``.
        true_labels / pred_labels: int [N] / [M], or None.

    Returns:
        counts ``{"true", "found", "mask_failed", "missed", "lost_merged", "lost_merged_into_found", "lost_split",
        "lost_uncovered", "lost_merged_parallel", "lost_merged_oblique", "lost_merged_crossing",
        "lost_merged_alone"}`` (+ ``"right"``, ``"wrong"`` with labels); ``found + mask_failed + missed == true``,
        ``found + lost_merged + lost_split + lost_uncovered == true`` and the four ``lost_merged_<kind>`` sum to
        ``lost_merged``.

    >>> t = np.zeros((2, 8, 8), np.uint8); t[0, :4, :4] = 1; t[1, 4:, 4:] = 1
    >>> p = t[:1].copy(); p[0, :4, :2] = 0  # half of the first instance
    >>> tb = np.array([[0, 0, 4, 4], [4, 4, 8, 8]]); pb = np.array([[0, 0, 4, 4]])
    >>> r = error_breakdown(t, tb, p, pb)
    >>> [r[k] for k in ("true", "found", "mask_failed", "missed", "lost_uncovered")]
    [2, 1, 0, 1, 1]
    """
    f = instance_fates(true_masks, true_boxes, pred_masks, pred_boxes, thresh)
    found = f.true_fate == "found"
    matched_pred = np.zeros(len(pred_masks), bool)
    matched_pred[f.matched_to[found]] = True
    merged = f.true_fate == "lost_merged"
    out = {
        "true": len(found),
        "found": int(found.sum()),
        "mask_failed": int((~found & f.box_seen).sum()),
        "missed": int((~found & ~f.box_seen).sum()),
        "lost_merged": int(merged.sum()),
        "lost_merged_into_found": int(matched_pred[f.into[merged]].sum()),
        "lost_split": int((f.true_fate == "lost_split").sum()),
        "lost_uncovered": int((f.true_fate == "lost_uncovered").sum()),
    }
    kinds = merge_angle_kinds(true_masks, f)
    for k in (*MERGE_ANGLES, "alone"):
        out[f"lost_merged_{k}"] = int((kinds == k).sum())
    if true_labels is not None and pred_labels is not None:
        right = int((np.asarray(pred_labels)[f.matched_to[found]] == np.asarray(true_labels)[found]).sum())
        out.update(right=right, wrong=int(found.sum()) - right)
    return out


def matching_masks(
    true_masks: np.ndarray, pred_masks: np.ndarray, thresh: float = 0.5, criterion: str = "iou"
) -> Matching:
    """Like :func:`matching`, on stacked binary masks uint8 [N, H, W] and [M, H, W] (overlaps allowed)."""
    _check_thresh_criterion(thresh, criterion)
    return _match_from_overlap(*_mask_overlap(true_masks, pred_masks), thresh, criterion)


def _match_any(y_true: np.ndarray, y_pred: np.ndarray, thresh: float, criterion: str) -> Matching:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim == 2 and p.ndim == 2:
        return matching(t, p, thresh, criterion)
    if t.ndim == 3 and p.ndim == 3:
        return matching_masks(t, p, thresh, criterion)
    raise ValueError(f"expected two label maps [H, W] or two mask stacks [N, H, W], got shapes {t.shape}, {p.shape}")


def matching_dataset(
    list_true: Sequence[np.ndarray],
    list_pred: Sequence[np.ndarray],
    thresh: float = 0.5,
    criterion: str = "iou",
    by_image: bool = False,
) -> Matching:
    """Match image by image and aggregate over a dataset.

    Args:
        list_true / list_pred: per image either a label map int[H, W] or stacked masks uint8 [N, H, W]
            (both sides of an image in the same form).
        by_image: False (default): tp, fp, fn, n_true, n_pred and the sum of matched scores are summed
            over the images, then the ratios are computed once from those sums (each instance weighs
            the same). True: every field is the mean over images of the per-image value (each image
            weighs the same; counts become floats).
    """
    list_true, list_pred = list(list_true), list(list_pred)
    if len(list_true) != len(list_pred):
        raise ValueError(f"{len(list_true)} ground-truth images but {len(list_pred)} predicted images")
    _check_thresh_criterion(thresh, criterion)
    per_image = [_match_any(t, p, thresh, criterion) for t, p in zip(list_true, list_pred)]
    if by_image:
        if not per_image:
            return _from_counts(criterion, thresh, 0, 0, 0, 0.0)
        fields = {
            k: float(np.mean([getattr(r, k) for r in per_image]))
            for k in Matching._fields
            if k not in ("criterion", "thresh")
        }
        return Matching(criterion=criterion, thresh=float(thresh), **fields)
    return _from_counts(
        criterion,
        thresh,
        sum(r.tp for r in per_image),
        sum(r.n_true for r in per_image),
        sum(r.n_pred for r in per_image),
        sum(r.sum_matched_score for r in per_image),
    )


# ---------------------------------------------------------------------------------------------- PQ
def panoptic_quality_all(
    true_masks_list: Sequence[np.ndarray], pred_masks_list: Sequence[np.ndarray], thresh: float = 0.5
) -> float:
    """Class-agnostic panoptic quality over a dataset: every chromosome is one class "chromosome".

    PQ = (sum of matched IoU) / (TP + FP/2 + FN/2), matched at IoU >= 0.5, counts and IoU sums pooled over
    all images (see :func:`matching_dataset`). 1.0 when both sides are empty everywhere.
    """
    return matching_dataset(true_masks_list, pred_masks_list, thresh=thresh, criterion="iou").panoptic_quality


def multiclass_panoptic_quality(
    true_masks_list: Sequence[np.ndarray],
    true_labels_list: Sequence[np.ndarray],
    pred_masks_list: Sequence[np.ndarray],
    pred_labels_list: Sequence[np.ndarray],
    classes: Iterable[int] = range(1, NUM_CLASSES + 1),
    thresh: float = 0.5,
) -> tuple[float, dict[str, float]]:
    """Multi-class panoptic quality (mPQ, as the dataset-level mPQ+ of the CoNIC challenge).

    For each class c in ``classes``: in every image, the true instances labelled c are matched to the
    predicted instances labelled c (one-to-one, IoU >= ``thresh``); TP_c, FP_c, FN_c and the sum of
    matched IoU are summed over all images and PQ_c = sum IoU_c / (TP_c + FP_c/2 + FN_c/2). A class is
    *present* when it has at least one true or predicted instance in the dataset; mPQ is the mean of
    PQ_c over the present classes. Instances whose label is not in ``classes`` (e.g. 0, unknown) are
    ignored on both sides. With no present class at all mPQ = 1.0 (empty vs empty).

    Args:
        true_masks_list / pred_masks_list: per image, stacked binary masks uint8 [N, H, W] / [M, H, W].
        true_labels_list / pred_labels_list: per image, class ids int[N] / int[M] (1..22, 23 = X, 24 = Y).

    Returns:
        ``(mPQ, {class name: PQ_c})`` with only the present classes in the dict.
    """
    _check_thresh_criterion(thresh, "iou")
    n_img = len(true_masks_list)
    if not (len(true_labels_list) == len(pred_masks_list) == len(pred_labels_list) == n_img):
        raise ValueError("true_masks_list, true_labels_list, pred_masks_list and pred_labels_list differ in length")
    classes = [int(c) for c in classes]
    tp = dict.fromkeys(classes, 0)
    nt = dict.fromkeys(classes, 0)
    npred = dict.fromkeys(classes, 0)
    s_iou = dict.fromkeys(classes, 0.0)
    for i in range(n_img):
        tm = _check_masks(true_masks_list[i], f"true_masks_list[{i}]")
        pm = _check_masks(pred_masks_list[i], f"pred_masks_list[{i}]")
        tl = np.asarray(true_labels_list[i]).reshape(-1)
        pl = np.asarray(pred_labels_list[i]).reshape(-1)
        if len(tl) != len(tm) or len(pl) != len(pm):
            raise ValueError(
                f"image {i}: {len(tm)} true masks / {len(tl)} labels, {len(pm)} pred masks / {len(pl)} labels"
            )
        inter, at, ap = _mask_overlap(tm, pm)
        iou = _intersection_over_union(inter, at, ap)
        for c in classes:
            ti_c = np.flatnonzero(tl == c)
            pi_c = np.flatnonzero(pl == c)
            nt[c] += len(ti_c)
            npred[c] += len(pi_c)
            if len(ti_c) and len(pi_c):
                sub = iou[np.ix_(ti_c, pi_c)]
                a, b = _assign(sub, thresh)
                tp[c] += len(a)
                s_iou[c] += float(sub[a, b].sum())
    per_class: dict[str, float] = {}
    for c in classes:
        if nt[c] + npred[c] == 0:
            continue
        per_class[name_of(c)] = _from_counts("iou", thresh, tp[c], nt[c], npred[c], s_iou[c]).panoptic_quality
    if not per_class:
        return 1.0, per_class
    return float(np.mean(list(per_class.values()))), per_class


# ---------------------------------------------------------------------------------------------- AJI
def aggregated_jaccard_index(true_masks: np.ndarray, pred_masks: np.ndarray, variant: str = "plus") -> float:
    """Aggregated Jaccard index of one image's stacked binary masks [N, H, W] (true) and [M, H, W] (pred).

    ``variant="plain"`` (Kumar et al. 2017): each true instance G_i is paired with the prediction S_j of
    maximal IoU (if that IoU > 0); a prediction may be paired with several true instances.
    ``variant="plus"`` (AJI+, Graham et al. 2019, HoVer-Net): pairs are one-to-one, chosen by Hungarian
    matching maximising the summed IoU; pairs with IoU 0 are dropped. In both:

        AJI = sum over pairs |G_i ∩ S_j| / (sum over pairs |G_i ∪ S_j| + sum of |G| of unpaired true
              + sum of |S| of unpaired predictions)

    Areas are counted on the stacked masks, so overlapping chromosomes keep all their pixels.

    The project default is ``"plus"``: plain AJI lets one prediction that merges two overlapping or
    touching chromosomes be paired with both, so its area enters the denominator twice (over-penalising
    merges, and not comparable with the one-to-one matching of PQ and AP); AJI+ pairs one-to-one like
    every other metric here.

    Empty cases: both empty -> 1.0; exactly one side empty -> 0.0. A perfect prediction gives 1.0.
    """
    if variant not in ("plain", "plus"):
        raise ValueError(f"variant must be 'plain' or 'plus', got {variant!r}")
    inter, at, ap = _mask_overlap(true_masks, pred_masks)
    n, m = inter.shape
    if n == 0 and m == 0:
        return 1.0
    union = at[:, None] + ap[None, :] - inter
    iou = _intersection_over_union(inter, at, ap)
    if n and m:
        if variant == "plain":
            ti = np.arange(n)
            pi = iou.argmax(1)
        else:
            ti, pi = linear_sum_assignment(-iou)
        keep = iou[ti, pi] > 0
        ti, pi = ti[keep], pi[keep]
    else:
        ti = pi = np.zeros(0, np.int64)
    num = float(inter[ti, pi].sum())
    den = float(union[ti, pi].sum())
    den += float(at[np.setdiff1d(np.arange(n), ti)].sum())
    den += float(ap[np.setdiff1d(np.arange(m), pi)].sum())
    return num / den if den > 0 else 0.0
