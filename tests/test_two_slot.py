"""The two-slot head (issue 24 item 7): set NMS, the EMD loss's choice of assignment, the warm start from a
class-agnostic detector, a training step on a synthetic X crossing, the trainer's flag and a two-slot checkpoint
through the unchanged pipeline API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.record import masks_to_boxes
from karyotyping.detection import SCORE_THRESH, detect_soft
from models.segmentation import SegConfig, build_segmentation_model, load_segmentation_checkpoint, save_weights
from models.two_slot import (
    SECOND_FG_IOU,
    TwoSlotRoIHeads,
    agnostic_to_two_slot,
    emd_loss,
    pair_boxes,
    set_nms,
)
from tests.test_orientation import TINY, _agnostic_file, _rod


# ---------------------------------------------------------------------------------------------- set NMS
def test_set_nms_keeps_the_two_answers_of_one_proposal():
    box = [10.0, 10.0, 50.0, 50.0]
    boxes = torch.tensor([box, box, [11.0, 11.0, 51.0, 51.0], [60.0, 60.0, 80.0, 80.0]])
    scores = torch.tensor([0.9, 0.8, 0.85, 0.7])
    # boxes 0 and 1 are the two slots of one proposal (an X: the same box); box 2 is another proposal's copy
    keep = set_nms(boxes, scores, torch.tensor([0, 0, 1, 2]), 0.5)
    assert keep.tolist() == [0, 1, 3]
    # plain NMS (every box its own proposal) keeps one of the three coinciding boxes
    assert set_nms(boxes, scores, torch.arange(4), 0.5).tolist() == [0, 3]
    assert set_nms(boxes[:0], scores[:0], torch.arange(0), 0.5).tolist() == []


# ---------------------------------------------------------------------------------------------- the EMD loss
def test_emd_loss_trains_the_cheaper_assignment():
    fg = torch.tensor([[True, True], [True, False]])
    reg = torch.tensor([[[0.0] * 4, [1.0] * 4], [[0.5] * 4, [0.0] * 4]])
    # proposal 0: slot 0 predicts target b's box, slot 1 target a's -> the swapped assignment costs nothing for the
    # boxes; proposal 1: slot 0 is sure of background, slot 1 of a chromosome at target a's box -> swapped too
    logits = torch.tensor([[[0.0, 9.0], [0.0, 9.0]], [[9.0, 0.0], [0.0, 9.0]]])
    deltas = torch.stack([torch.stack([reg[0, 1], reg[0, 0]]), torch.stack([reg[1, 1], reg[1, 0]])])
    cls, box, swap = emd_loss(logits, deltas, fg, reg)
    assert swap.tolist() == [True, True]
    assert box.item() == pytest.approx(0.0, abs=1e-6)
    assert cls.item() == pytest.approx(2 * torch.nn.functional.softplus(torch.tensor(-9.0)).item(), rel=1e-3)
    # the same predictions in the given order cost more, and are not swapped
    cls2, box2, swap2 = emd_loss(logits.flip(1), deltas.flip(1), fg, reg)
    assert swap2.tolist() == [False, False]
    assert cls2.item() == pytest.approx(cls.item()) and box2.item() == pytest.approx(0.0, abs=1e-6)
    # unswapped, the cost is real: target a's box of proposal 0 against 1s in slot 0
    _, box3, _ = emd_loss(logits, torch.zeros_like(deltas), fg, reg)
    assert box3.item() > 1.0
    empty = emd_loss(logits[:0], deltas[:0], fg[:0], reg[:0])
    assert empty[0].item() == 0 and empty[2].numel() == 0


# ---------------------------------------------------------------------------------------------- warm start
def test_config_validated_and_stored():
    c = SegConfig(agnostic=True, two_slot=True)
    assert SegConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    old = SegConfig(agnostic=True).to_dict()
    del old["two_slot"]  # a file written before the field existed
    assert SegConfig.from_dict(old).two_slot is False
    for bad in (dict(agnostic=False), dict(agnostic=True, orientation_bins=4)):
        with pytest.raises(ValueError, match="two_slot needs agnostic=True and no orientation_bins"):
            SegConfig(**bad, two_slot=True)
    with pytest.raises(ValueError, match="expected 2 rows"):
        agnostic_to_two_slot({"roi_heads.box_predictor.cls_score.bias": torch.zeros(5)})


def test_warm_start_finds_the_agnostic_detections_in_slot_0(tmp_path, capsys):
    agn, path = _agnostic_file(tmp_path)
    two = build_segmentation_model(SegConfig(**TINY, two_slot=True, pretrained_path=str(path))).eval()
    assert "copied into both slots" in capsys.readouterr().out
    assert isinstance(two.roi_heads, TwoSlotRoIHeads)
    x = torch.randn(40, 64) * 3
    with torch.no_grad():
        la, da = agn.roi_heads.box_predictor(x)
        lb, db = two.roi_heads.box_predictor(x)
    torch.testing.assert_close(lb[:, 0], la)  # slot 0 is the agnostic head
    torch.testing.assert_close(db[:, 0], da[:, 4:8])
    torch.testing.assert_close(db[:, 1], da[:, 4:8])
    assert (lb[:, 1] == 0).all()  # slot 1 starts undecided: probability 0.5, below the pipeline's threshold
    img = np.full((96, 96), 0.9, np.float32)
    img[10:70, 20:28] = 0.3
    img[50:58, 40:90] = 0.35
    a = detect_soft(agn, img, score_thresh=SCORE_THRESH)
    b = detect_soft(two, img, score_thresh=SCORE_THRESH)
    assert len(a["scores"]) >= 3 and b["labels"].tolist() == [1] * len(b["labels"])
    # every agnostic detection is found with its box, score and mask (slot 0); slot 1 may add its doubts
    for box, score, mask in zip(a["boxes"], a["scores"], a["masks"]):
        i = int(torch.argmin((b["boxes"] - box).abs().sum(1)))
        torch.testing.assert_close(b["boxes"][i], box, atol=1e-3, rtol=0)
        assert b["scores"][i].item() == pytest.approx(score.item(), abs=1e-5)
        torch.testing.assert_close(b["masks"][i], mask, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- training
def test_pair_boxes_are_the_unions_of_boxes_that_meet():
    boxes = torch.tensor(
        [[0.0, 0.0, 20.0, 40.0], [20.0, 0.0, 40.0, 40.0], [10.0, 30.0, 30.0, 60.0], [70.0, 70, 90, 90]]
    )
    got = {tuple(b) for b in pair_boxes(boxes).tolist()}
    # 0 and 1 touch, 2 overlaps both, 3 meets none
    assert got == {(0.0, 0.0, 40.0, 40.0), (0.0, 0.0, 30.0, 60.0), (10.0, 0.0, 40.0, 60.0)}
    assert pair_boxes(boxes[:1]).shape == (0, 4) and pair_boxes(boxes[:0]).shape == (0, 4)


def test_a_proposal_on_two_touching_chromosomes_trains_both_slots():
    """Targets: the box on a side-by-side pair (IoU 0.5 with each) has two chromosomes, the box on one of them one,
    a box on neither none."""
    heads = build_segmentation_model(SegConfig(**TINY, two_slot=True)).roi_heads
    a, b = [0.0, 0.0, 20.0, 40.0], [20.0, 0.0, 40.0, 40.0]
    target = {"boxes": torch.tensor([a, b]), "labels": torch.ones(2, dtype=torch.int64),
              "masks": torch.zeros((2, 96, 96), dtype=torch.uint8)}  # fmt: skip
    pair, one, none, weak = [0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 20.0, 40.0], [60.0, 60.0, 80.0, 80.0], [0, 0, 30, 30.0]
    props, gt_idx, fg, reg = heads._sample([torch.tensor([pair, one, none, weak])], [target])
    rows = {tuple(p.tolist()): i for i, p in enumerate(props[0])}
    assert fg[0][rows[tuple(pair)]].tolist() == [True, True]
    assert sorted(gt_idx[0][rows[tuple(pair)]].tolist()) == [0, 1]
    assert fg[0][rows[tuple(one)]].tolist() == [True, False] and gt_idx[0][rows[tuple(one)]][0] == 0
    assert fg[0][rows[tuple(none)]].tolist() == [False, False]
    # 'weak' meets a at IoU 0.55 and b at 0.21: one chromosome, its neighbour below SECOND_FG_IOU
    assert SECOND_FG_IOU == 0.4 and fg[0][rows[tuple(weak)]].tolist() == [True, False]
    assert reg[0].shape == (len(props[0]), 2, 4)


def _x_crossing_target(shape=(96, 96)) -> tuple[torch.Tensor, dict[str, torch.Tensor], np.ndarray]:
    """An X of two rods through one centre (their boxes nearly coincide) and a lone rod; grey image and target."""
    a = _rod(shape, (40, 44), 45.0, 56, 7)
    b = _rod(shape, (40, 44), 135.0, 56, 7)
    c = _rod(shape, (80, 40), 90.0, 40, 7)
    masks = np.stack([a, b, c])
    image = np.where(masks.any(0), 0.3, 0.9).astype(np.float32)
    target = {
        "boxes": torch.from_numpy(masks_to_boxes(masks)).float(),
        "labels": torch.ones(3, dtype=torch.int64),
        "masks": torch.from_numpy(masks).to(torch.uint8),
    }
    return torch.from_numpy(image)[None], target, masks


def test_a_training_step_on_an_x_crossing_trains_both_slots():
    """Both members of the X fall to one proposal's two slots: the step gives both mask channels and both slots'
    classifiers a gradient, and the losses are torchvision's names."""
    torch.manual_seed(0)
    model = build_segmentation_model(SegConfig(**TINY, two_slot=True)).train()
    image, target, _ = _x_crossing_target()
    losses = model([image], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    heads = model.roi_heads
    g_cls = heads.box_predictor.cls_score.weight.grad.view(2, 2, -1)
    g_mask = heads.mask_predictor.mask_fcn_logits.weight.grad
    assert g_cls[0].abs().sum() > 0 and g_cls[1].abs().sum() > 0
    assert g_mask[0].abs().sum() > 0 and g_mask[1].abs().sum() > 0  # the X's proposals train both mask slots
    # an image without chromosomes trains the classifier on background only
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros((0, 96, 96), dtype=torch.uint8)}  # fmt: skip
    losses = model([torch.full((1, 96, 96), 0.9)], [empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    assert losses["loss_classifier"].item() > 0


class _SlotStub(torch.nn.Module):
    """A box predictor that sends each proposal's slot 0 to box ``a`` and slot 1 to box ``b`` (both sure), or
    (``kind="mask"``) a mask predictor whose channel 0 says "inside" and channel 1 "outside" everywhere."""

    LOGITS = torch.tensor([[-6.0, 6.0], [-6.0, 5.0]])

    def __init__(self, coder, a: torch.Tensor, b: torch.Tensor, proposal: torch.Tensor, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.deltas = coder.encode_single(torch.stack([a, b]), proposal[None].expand(2, 4))

    def forward(self, x: torch.Tensor):
        n = len(x)
        if self.kind == "box":
            return self.LOGITS.expand(n, 2, 2), self.deltas.expand(n, 2, 4)
        return torch.stack([torch.full(x.shape[-2:], 8.0), torch.full(x.shape[-2:], -8.0)]).expand(n, 2, -1, -1)


def test_an_x_in_one_proposal_comes_out_as_two_chromosomes_each_with_its_slots_mask():
    """Known answer through the heads' inference: one proposal on an X whose members' boxes nearly coincide; its two
    slots name the two members. Set NMS keeps both (plain NMS would keep one), each with its own refined box, its own
    score, label 1, and the mask of its own slot's channel."""
    from torchvision.ops import nms

    torch.manual_seed(0)
    model = build_segmentation_model(SegConfig(**TINY, two_slot=True)).eval()
    image, target, _ = _x_crossing_target()
    a, b = target["boxes"][0], target["boxes"][1]
    assert nms(target["boxes"][:2], torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    proposal = (a + b) / 2 + torch.tensor([-2.0, -2.0, 2.0, 2.0])
    heads = model.roi_heads
    heads.box_predictor = _SlotStub(heads.box_coder, a, b, proposal, "box")
    heads.mask_predictor = _SlotStub(heads.box_coder, a, b, proposal, "mask")
    with torch.no_grad():
        result, losses = heads(model.backbone(image[None]), [proposal[None]], [tuple(image.shape[-2:])])
    assert losses == {} and len(result) == 1
    out = result[0]
    assert out["labels"].tolist() == [1, 1]
    torch.testing.assert_close(out["boxes"], torch.stack([a, b]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["scores"], _SlotStub.LOGITS.softmax(-1)[:, 1])
    assert out["masks"].shape[:2] == (2, 1)
    assert (out["masks"][0] > 0.99).all() and (out["masks"][1] < 0.01).all()


# ---------------------------------------------------------------------------------------------- files and CLI
def test_a_two_slot_checkpoint_loads_and_runs_through_the_pipeline_api(tmp_path):
    from karyotyping.core import KaryotypePipeline

    ROOT = Path(__file__).resolve().parent.parent
    cfg = SegConfig(**TINY, two_slot=True)
    torch.manual_seed(0)
    path = tmp_path / "two_slot.pt"
    save_weights(build_segmentation_model(cfg), cfg, path, half=True)
    model, loaded = load_segmentation_checkpoint(path)
    assert loaded.two_slot and isinstance(model.roi_heads, TwoSlotRoIHeads)
    image, _, _ = _x_crossing_target()
    pipe = KaryotypePipeline(path, ROOT / "weights" / "classifier.pt", device="cpu")
    seg = pipe.segment(image[0].numpy())
    assert seg.labels.tolist() == [0] * len(seg)


def test_trainer_flag_refuses_classes(tmp_path):
    from train_segmentation import get_args_parser, main

    for extra in (["--no-agnostic"], ["--agnostic", "--orientation-bins", "4"]):
        args = get_args_parser().parse_args(["--smoke", "--two-slot", "--output-dir", str(tmp_path / "run"), *extra])
        with pytest.raises(ValueError, match="--two-slot needs --agnostic and no --orientation-bins"):
            main(args)
    assert not (tmp_path / "run").exists()


def test_trainer_smoke_with_two_slots_trains_and_resumes(tmp_path):
    import engine
    from train_segmentation import get_args_parser, main

    flags = ["--smoke", "--agnostic", "--two-slot", "--no-progress", "--epochs", "2", "--max-steps-per-epoch", "1",
             "--eval-every", "2", "--warmup-steps", "0"]  # fmt: skip
    res = main(get_args_parser().parse_args([*flags, "--output-dir", str(tmp_path / "a"), "--keep-checkpoints"]))
    assert res["last_epoch"] == 1
    assert engine.load_checkpoint(tmp_path / "a" / "last.pth")["config"]["two_slot"] is True
    plain = get_args_parser().parse_args(
        ["--smoke", "--agnostic", "--output-dir", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / "last.pth")]
    )
    with pytest.raises(ValueError, match="two_slot=True"):
        main(plain)
