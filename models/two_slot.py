"""A two-slot detection head: each region proposal predicts up to two chromosomes (issue 24 item 7).

The idea is CrowdDet's ("Detection in Crowded Scenes: One Proposal, Multiple Predictions", Chu et al., CVPR 2020),
written here for torchvision's Mask R-CNN: where two chromosomes touch or cross, one proposal box covers both, and a
head with one answer per proposal must either draw one of them (and the other is lost) or draw the pair (the merge
the pipeline sees). With two slots, the proposal can name both.

* **Predictor** (:class:`TwoSlotPredictor`): for each proposal, two (background, chromosome) score pairs and two
  class-agnostic box regressions. The mask predictor keeps its shape: its 2 output channels (background and
  chromosome in a class-agnostic Mask R-CNN) become one mask per slot.
* **Training** (:class:`TwoSlotRoIHeads`): the proposals are the RPN's, the true boxes and the union box of every
  two true boxes that meet (:func:`pair_boxes`); the sampler's 128 per image, plus up to a quarter as many more
  that hold two chromosomes (:data:`PAIR_PROPOSAL_SHARE`; the RPN, trained on single chromosomes, offers few of
  them). Each sampled proposal is given the two true chromosomes its box overlaps most: the first at IoU >= the
  foreground threshold (0.5), the second at IoU >= :data:`SECOND_FG_IOU` (0.4; a missing second one is
  background). CrowdDet asks 0.5 of both; touching chromosomes' boxes overlap less than crowded people's, and a
  proposal on two side-by-side chromosomes of one size meets each at IoU 0.5 at best. The loss is the EMD loss: of
  the two ways of giving those two targets to the two slots, the cheaper one (classification + box) is the one
  trained, so the slots need no fixed order. Each foreground slot's mask is trained on its own chromosome's mask in
  the proposal's box.
* **Inference**: every proposal gives two detections. Set NMS: two detections from the same proposal never suppress
  each other (they are meant to be two chromosomes), any others do as in plain NMS. Each detection's mask is read
  from its own slot's channel on its own refined box. Every label is 1: the pipeline stays class-agnostic.
* **Warm start** (:func:`agnostic_to_two_slot`): a class-agnostic detector's head is copied into slot 0 and into
  slot 1's box and mask; slot 1's classifier starts at zero (probability 0.5 everywhere, below the pipeline's score
  threshold), so that the warm start finds the agnostic detector's chromosomes in slot 0 and slot 1 learns from
  nothing when a proposal holds a second chromosome. (A copy with a lowered bias does not learn: AdamW moves a bias
  by about the learning rate a step, and a first run with the bias 6 lower ended with slot 1 below 0.18 everywhere.)

Public API: :class:`TwoSlotPredictor`, :class:`TwoSlotRoIHeads`, :func:`make_two_slot`, :func:`agnostic_to_two_slot`,
:func:`set_nms`, :func:`emd_loss`, :func:`pair_boxes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.ops import box_iou, remove_small_boxes

#: slots per proposal
SLOTS = 2
#: a proposal's second chromosome is a training target for the second slot at box IoU >= this
SECOND_FG_IOU = 0.4
#: proposals holding two chromosomes added to each image's sampled ones, as a share of the sampler's batch
PAIR_PROPOSAL_SHARE = 0.25


class TwoSlotPredictor(nn.Module):
    """Scores and boxes for two chromosomes per proposal.

    ``forward(x)`` with x Float[N, D] (or [N, D, 1, 1]) returns ``(logits Float[N, 2, 2], deltas Float[N, 2, 4])``:
    per slot, (background, chromosome) logits and the box regression of that slot's chromosome. The parameter names
    (``cls_score``, ``bbox_pred``) are torchvision's, so checkpoints read like a Fast R-CNN predictor's.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, SLOTS * 2)
        self.bbox_pred = nn.Linear(in_channels, SLOTS * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x).view(-1, SLOTS, 2), self.bbox_pred(x).view(-1, SLOTS, 4)


def agnostic_to_two_slot(state: Mapping[str, Any]) -> dict[str, Any]:
    """A class-agnostic detector's weights (2 classes) warm-starting a two-slot head.

    ``cls_score`` (rows background, chromosome) is copied into slot 0, slot 1's rows are zero (probability 0.5);
    ``bbox_pred``'s chromosome rows (4..7) into both slots; the mask predictor's chromosome channel into both output
    channels. Other tensors are passed on unchanged.

    Raises:
        ValueError: a head tensor does not have the class-agnostic shape.
    """
    box, mask = "roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits."

    def both(v: torch.Tensor, rows: slice) -> torch.Tensor:
        return torch.cat([v[rows], v[rows]], 0)

    def first(v: torch.Tensor) -> torch.Tensor:  # cls_score: slot 0 the agnostic classifier, slot 1 undecided
        return torch.cat([v, torch.zeros_like(v)], 0)

    # name -> (rows of a class-agnostic head, the two-slot tensor made from it)
    spec = {
        box + "cls_score.weight": (2, first),
        box + "cls_score.bias": (2, first),
        box + "bbox_pred.weight": (8, lambda v: both(v, slice(4, 8))),
        box + "bbox_pred.bias": (8, lambda v: both(v, slice(4, 8))),
        mask + "weight": (2, lambda v: both(v, slice(1, 2))),
        mask + "bias": (2, lambda v: both(v, slice(1, 2))),
    }
    out = dict(state)
    for name, (rows, make) in spec.items():
        v = state.get(name)
        if v is None:
            continue
        if v.shape[0] != rows:
            raise ValueError(f"{name}: expected {rows} rows (a class-agnostic head), got {tuple(v.shape)}")
        out[name] = make(v)
    return out


def pair_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """The union box of every two boxes that overlap or touch: Float[P, 4] (xyxy), for ``boxes`` Float[G, 4].

    Added to the training proposals (as torchvision adds the true boxes): a box on two chromosomes is what a
    one-slot detector draws as one merged chromosome, and the RPN offers too few of them for the second slot to learn.
    """
    if len(boxes) < 2:
        return boxes.new_zeros((0, 4))
    i, j = torch.triu_indices(len(boxes), len(boxes), 1, device=boxes.device)
    a, b = boxes[i], boxes[j]
    meet = (a[:, 0] <= b[:, 2]) & (b[:, 0] <= a[:, 2]) & (a[:, 1] <= b[:, 3]) & (b[:, 1] <= a[:, 3])
    a, b = a[meet], b[meet]
    return torch.cat([torch.minimum(a[:, :2], b[:, :2]), torch.maximum(a[:, 2:], b[:, 2:])], 1)


def set_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS in which two boxes of the same group (the same proposal) never suppress each other.

    Args:
        boxes: Float[N, 4] xyxy. scores: Float[N]. groups: Int[N], the proposal each box comes from.
        iou_thresh: a box is suppressed by a higher-scoring kept box of another group with IoU > this.

    Returns:
        Int64[K] indices of the kept boxes, by descending score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes[order], boxes[order])
    g = groups[order]
    over = (iou > iou_thresh) & (g[:, None] != g[None, :])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def emd_loss(
    logits: torch.Tensor, deltas: torch.Tensor, fg: torch.Tensor, reg_targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The EMD loss of a two-slot head: each proposal is trained on the cheaper of its two slot assignments.

    Args:
        logits: Float[N, 2, 2] per slot (background, chromosome) logits.
        deltas: Float[N, 2, 4] per slot box regressions.
        fg: Bool[N, 2]: target a (column 0) and target b (column 1) are chromosomes (False: background).
        reg_targets: Float[N, 2, 4] the regression targets of targets a and b.

    Returns:
        ``(loss_classifier, loss_box_reg, swap)``: the classification loss (mean over proposals of the two slots'
        cross-entropies), the box loss (smooth L1, beta 1/9, summed over foreground slots, divided by N, as
        torchvision's ``fastrcnn_loss``), and Bool[N]: True where slot 0 took target b and slot 1 target a.
    """
    n = logits.shape[0]
    if n == 0:
        zero = logits.sum() * 0 + deltas.sum() * 0
        return zero, zero, torch.zeros(0, dtype=torch.bool, device=logits.device)
    labels = fg.long()
    # a background target's regression is never used (and is not finite where an image has no chromosome)
    reg_targets = torch.where(fg[..., None], reg_targets, 0.0)

    def cost(order: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        cls = sum(F.cross_entropy(logits[:, s], labels[:, t], reduction="none") for s, t in enumerate(order))
        box = sum(
            torch.where(
                fg[:, t], F.smooth_l1_loss(deltas[:, s], reg_targets[:, t], beta=1 / 9, reduction="none").sum(1), 0.0
            )
            for s, t in enumerate(order)
        )
        return cls, box

    cls_ab, box_ab = cost((0, 1))
    cls_ba, box_ba = cost((1, 0))
    swap = (cls_ba + box_ba).detach() < (cls_ab + box_ab).detach()
    cls = torch.where(swap, cls_ba, cls_ab)
    box = torch.where(swap, box_ba, box_ab)
    return cls.mean(), box.sum() / n, swap


class TwoSlotRoIHeads(RoIHeads):
    """torchvision's :class:`RoIHeads` with a two-slot box predictor (see the module docstring).

    Built by :func:`make_two_slot` from a class-agnostic Mask R-CNN's heads; keeps their pooling, heads, sampler,
    thresholds and box coder. ``forward`` has torchvision's signature and outputs (losses ``loss_classifier``,
    ``loss_box_reg``, ``loss_mask`` in training; ``boxes``, ``labels`` (all 1), ``scores``, ``masks`` Float[M, 1, 28,
    28] per image in eval mode).
    """

    # ---------------------------------------------------------------------------------------------- training
    def _sample(self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]):
        """Sampled proposals with their two targets: (proposals, gt index Int[n, 2], fg Bool[n, 2], reg Float[n, 2, 4])."""
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        out_props, out_idx, out_fg, out_reg = [], [], [], []
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        proposals = self.add_gt_proposals(proposals, [torch.cat([g, pair_boxes(g)]) for g in gt_boxes])
        fg_thresh = self.proposal_matcher.high_threshold
        bg_thresh = self.proposal_matcher.low_threshold
        sampler_labels = []
        matches = []
        for props, gt in zip(proposals, gt_boxes):
            n = len(props)
            idx = torch.zeros((n, SLOTS), dtype=torch.int64, device=device)
            fg = torch.zeros((n, SLOTS), dtype=torch.bool, device=device)
            label = torch.zeros(n, dtype=torch.int64, device=device)
            if len(gt):
                iou = box_iou(gt, props)  # [G, n]
                k = min(SLOTS, len(gt))
                vals, top = iou.topk(k, dim=0)  # [k, n]
                idx[:, :k] = top.T
                fg[:, 0] = vals[0] >= fg_thresh
                if k > 1:
                    fg[:, 1] = fg[:, 0] & (vals[1] >= SECOND_FG_IOU)
                best = vals[0]
                label[best < bg_thresh] = 0
                label[(best >= bg_thresh) & (best < fg_thresh)] = -1
                label[best >= fg_thresh] = 1
            sampler_labels.append(label)
            matches.append((idx, fg))
        pos, neg = self.fg_bg_sampler(sampler_labels)
        for props, gt, (idx, fg), p, q in zip(proposals, gt_boxes, matches, pos, neg):
            # the sampler's proposals, and up to PAIR_PROPOSAL_SHARE as many again of those that hold two chromosomes
            n_pairs = int(self.fg_bg_sampler.batch_size_per_image * PAIR_PROPOSAL_SHARE)
            pairs = torch.where(fg[:, 1] & ~(p | q))[0]
            pairs = pairs[torch.randperm(len(pairs), device=device)[:n_pairs]]
            keep = torch.cat([torch.where(p | q)[0], pairs])
            props, idx, fg = props[keep], idx[keep], fg[keep]
            if len(gt):
                matched = gt[idx.reshape(-1)]
            else:
                matched = torch.zeros((len(idx) * SLOTS, 4), dtype=dtype, device=device)
            reg = self.box_coder.encode_single(matched, props.repeat_interleave(SLOTS, dim=0)).view(-1, SLOTS, 4)
            out_props.append(props)
            out_idx.append(idx)
            out_fg.append(fg)
            out_reg.append(reg)
        return out_props, out_idx, out_fg, out_reg

    def _mask_loss(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
        slot_gt: list[torch.Tensor],
        fg: list[torch.Tensor],
    ) -> torch.Tensor:
        """Mask BCE of every foreground slot, each on its own chromosome's mask in the proposal's box."""
        mask_props, which_slot, which_gt, which_row = [], [], [], []
        row0 = 0
        for props, g, f in zip(proposals, slot_gt, fg):
            pos = torch.where(f.any(1))[0]
            mask_props.append(props[pos])
            f_pos, g_pos = f[pos], g[pos]
            rows, slots = torch.where(f_pos)
            which_row.append(rows + row0)
            which_slot.append(slots)
            which_gt.append(g_pos[rows, slots])
            row0 += len(pos)
        feats = self.mask_head(self.mask_roi_pool(features, mask_props, image_shapes))
        logits = self.mask_predictor(feats)  # [P, 2, M, M]
        m = logits.shape[-1]
        mask_targets = []
        start = 0
        for props, t, rows, gts in zip(mask_props, targets, which_row, which_gt):
            boxes = props[rows - start] if len(rows) else props[:0]
            mask_targets.append(project_masks_on_boxes(t["masks"], boxes, gts, m))
            start += len(props)
        target = torch.cat(mask_targets)
        if target.numel() == 0:
            return logits.sum() * 0
        picked = logits[torch.cat(which_row), torch.cat(which_slot)]
        return F.binary_cross_entropy_with_logits(picked, target)

    # ---------------------------------------------------------------------------------------------- inference
    def _detections(self, logits, deltas, proposals, image_shapes):
        """Per image: (boxes Float[M, 4], scores Float[M], slots Int[M]) after the score threshold and set NMS."""
        scores = F.softmax(logits, -1)[..., 1]  # [N, 2]
        boxes = self.box_coder.decode(deltas.reshape(len(deltas), -1), proposals)  # [N, 2, 4]
        counts = [len(p) for p in proposals]
        out = []
        for b, s, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            n = len(b)
            b = b.reshape(-1, 4)
            h, w = shape
            b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
            s = s.reshape(-1)
            group = torch.arange(n, device=b.device).repeat_interleave(SLOTS)
            slot = torch.arange(SLOTS, device=b.device).repeat(n)
            keep = torch.where(s > self.score_thresh)[0]
            keep = keep[remove_small_boxes(b[keep], min_size=1e-2)]
            b, s, group, slot = b[keep], s[keep], group[keep], slot[keep]
            keep = set_nms(b, s, group, self.nms_thresh)[: self.detections_per_img]
            out.append((b[keep], s[keep], slot[keep]))
        return out

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training")
            proposals, slot_gt, fg, reg = self._sample(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        logits, deltas = self.box_predictor(box_features)
        if self.training:
            cls_loss, box_loss, swap = emd_loss(logits, deltas, torch.cat(fg), torch.cat(reg))
            # the slot each target went to: swap the pair where the cheaper assignment was b -> slot 0
            counts = [len(p) for p in proposals]
            slot_gt = [torch.where(sw[:, None], g.flip(1), g) for g, sw in zip(slot_gt, swap.split(counts))]
            fg = [torch.where(sw[:, None], f.flip(1), f) for f, sw in zip(fg, swap.split(counts))]
            losses = {"loss_classifier": cls_loss, "loss_box_reg": box_loss}
            losses["loss_mask"] = self._mask_loss(features, proposals, image_shapes, targets, slot_gt, fg)
            return [], losses
        result = []
        dets = self._detections(logits, deltas, proposals, image_shapes)
        feats = self.mask_head(self.mask_roi_pool(features, [d[0] for d in dets], image_shapes))
        probs = self.mask_predictor(feats).sigmoid()
        start = 0
        for b, s, slot in dets:
            m = probs[start : start + len(b)]
            start += len(b)
            result.append(
                {
                    "boxes": b,
                    "labels": torch.ones(len(b), dtype=torch.int64, device=b.device),
                    "scores": s,
                    "masks": m[torch.arange(len(b), device=b.device), slot][:, None],
                }
            )
        return result, {}


def make_two_slot(model: nn.Module) -> nn.Module:
    """Give a class-agnostic Mask R-CNN a two-slot head, in place (returns ``model``).

    The RoI heads become :class:`TwoSlotRoIHeads` (the same pooling, heads, sampler and thresholds) and the box
    predictor a :class:`TwoSlotPredictor` with fresh weights (:func:`agnostic_to_two_slot` warm-starts it from a
    class-agnostic file); the mask predictor must have 2 output channels (one mask per slot).

    Raises:
        ValueError: the model's mask predictor does not have 2 output channels (not class-agnostic).
    """
    heads = model.roi_heads
    n_mask = heads.mask_predictor.mask_fcn_logits.out_channels
    if n_mask != SLOTS:
        raise ValueError(f"a two-slot head needs a mask predictor with {SLOTS} output channels, got {n_mask}")
    in_features = heads.box_predictor.cls_score.in_features
    heads.__class__ = TwoSlotRoIHeads
    heads.box_predictor = TwoSlotPredictor(in_features)
    return model
