"""Orientation classes for the detector (issue 24, item 3): bins of the long axis, their remapping under flips and
quarter turns, the warm start from a class-agnostic detector, the cross-bin suppression, the trainer's flag and a
checkpoint with bins through the unchanged pipeline API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.orientation import OrientationLabels, angle_bins, long_axis_angle, orientation_labels, remap_bins
from datasets.record import KaryoRecord, masks_to_boxes
from datasets.transforms import Compose, FreeRotation, HorizontalFlip, Rot90, VerticalFlip
from karyotyping.detection import SCORE_THRESH, detect_soft, merge_orientation_bins
from models.segmentation import SegConfig, build_segmentation_model, save_weights

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_SEG, SHIPPED_CLS = ROOT / "weights" / "segmentation.pt", ROOT / "weights" / "classifier.pt"
# a tiny detector: few proposals, light heads, so a forward pass takes milliseconds on a shared CPU
TINY = dict(
    backbone="resnet18_fpn",
    agnostic=True,
    min_size=96,
    max_size=96,
    rpn_pre_nms_top_n_test=40,
    rpn_post_nms_top_n_test=12,
    box_detections_per_img=100,
    box_head_dim=64,
    mask_head_layers=(32, 32),
)


def _rod(shape: tuple[int, int], centre: tuple[float, float], angle: float, length: float, width: float) -> np.ndarray:
    """uint8 mask of a filled ellipse along ``angle`` degrees (counter-clockwise as displayed) through ``centre``."""
    m = np.zeros(shape, np.uint8)
    # cv2 turns clockwise as displayed (y down): the opposite sense
    cv2.ellipse(m, (round(centre[0] * 16), round(centre[1] * 16)), (round(length * 8), round(width * 8)), -angle,
                0, 360, 1, -1, cv2.LINE_8, 4)  # fmt: skip
    return m


def _record(masks: np.ndarray) -> KaryoRecord:
    h, w = masks.shape[1:]
    image = np.where(masks.any(0), 0.3, 0.9).astype(np.float32)
    return KaryoRecord(
        image=image,
        boxes=masks_to_boxes(masks),
        labels=np.ones(len(masks), np.int64),
        masks=masks,
        meta={"image_id": "rods", "path": "rods.png"},
    )


def _rods_off_edges(k: int, n: int, seed: int, shape=(96, 112)) -> np.ndarray:
    """``n`` separate rods at random angles at least 4 degrees from every edge of ``k`` bins."""
    rng = np.random.default_rng(seed)
    masks, width = [], 180.0 / k
    cols = 4
    for i in range(n):
        while True:
            a = float(rng.uniform(0, 180))
            if 4.0 < a % width < width - 4.0:
                break
        cx = 14 + (i % cols) * 28
        cy = 16 + (i // cols) * 32
        masks.append(_rod(shape, (cx, cy), a, 24, 5))
    return np.stack(masks)


# ---------------------------------------------------------------------------------------------- the labels
@pytest.mark.parametrize("angle", [0.0, 12.0, 45.0, 80.0, 90.0, 117.0, 135.0, 172.0])
def test_long_axis_angle_of_rods(angle):
    m = _rod((80, 80), (40, 40), angle, 50, 6)
    got = long_axis_angle(m)
    assert 0.0 <= got < 180.0
    assert min(abs(got - angle), 180 - abs(got - angle)) < 1.0, (angle, got)
    assert math.isnan(long_axis_angle(np.zeros((8, 8), np.uint8)))


def test_angle_bins_half_open_and_validation():
    assert angle_bins(np.array([0.0, 44.99, 45.0, 90.0, 179.99, 180.0, -1.0]), 4).tolist() == [1, 1, 2, 3, 4, 1, 4]
    assert angle_bins(np.array([22.4, 22.5]), 8).tolist() == [1, 2]
    with pytest.raises(ValueError, match="2..24"):
        angle_bins(np.array([1.0]), 1)
    with pytest.raises(ValueError, match=r"instance\(s\) \[1\] have an empty mask"):
        orientation_labels(np.stack([_rod((40, 40), (20, 20), 30, 20, 4), np.zeros((40, 40), np.uint8)]), 4)


@pytest.mark.parametrize("k", [4, 8])
def test_remap_bins_agrees_with_the_transformed_masks(k):
    """Flips mirror the angle, a quarter turn adds 90 degrees: the labels recomputed from the transformed masks
    are the remapped ones, for every rod."""
    rec = _record(_rods_off_edges(k, 12, seed=k))
    before = orientation_labels(rec.masks, k)
    assert len(set(before.tolist())) >= 3  # the rods cover several bins
    for op, tf in (("hflip", HorizontalFlip()), ("vflip", VerticalFlip()), ("rot90", Rot90(1))):
        after = orientation_labels(tf(rec).masks, k)
        np.testing.assert_array_equal(remap_bins(before, k, op), after, err_msg=op)
    # three quarter turns = the remap applied three times; a flip twice is the identity
    three = orientation_labels(Rot90(3)(rec).masks, k)
    np.testing.assert_array_equal(remap_bins(remap_bins(remap_bins(before, k, "rot90"), k, "rot90"), k, "rot90"), three)
    np.testing.assert_array_equal(remap_bins(remap_bins(before, k, "hflip"), k, "hflip"), before)
    assert not np.array_equal(remap_bins(before, k, "rot90"), before)


def test_remap_bins_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="even number of bins"):
        remap_bins(np.array([1, 2]), 5, "rot90")
    with pytest.raises(ValueError, match="unknown op 'rot45'"):
        remap_bins(np.array([1]), 4, "rot45")
    with pytest.raises(ValueError, match="1..4"):
        remap_bins(np.array([5]), 4, "hflip")


def test_orientation_labels_transform_runs_last_and_follows_a_free_rotation():
    """As the last step after a rotation, the labels are the bins of the rotated rods' angles."""
    angles = [10.0, 60.0, 100.0, 170.0]  # the last one turns past 180 degrees
    masks = np.stack(
        [_rod((120, 120), (30 + 60 * (i % 2), 30 + 60 * (i // 2)), a, 30, 5) for i, a in enumerate(angles)]
    )
    rec = _record(masks)
    tf = Compose([FreeRotation(angle=25.0, expand=True), OrientationLabels(4, dataset="rods")])
    out = tf(rec, np.random.default_rng(0))
    assert out.labels.tolist() == angle_bins(np.array(angles) + 25.0, 4).tolist() == [1, 2, 3, 1]
    assert out.masks is not None and len(out) == 4
    no_masks = KaryoRecord(image=rec.image, boxes=rec.boxes, labels=rec.labels, masks=None, meta=dict(rec.meta))
    with pytest.raises(ValueError, match=r"^mfish: rods.png has no instance masks"):
        OrientationLabels(4, dataset="mfish")(no_masks)


# ---------------------------------------------------------------------------------------------- config
def test_config_bins_validated_and_stored():
    c = SegConfig(agnostic=True, orientation_bins=4)
    assert c.num_classes == 5
    assert SegConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    old = SegConfig(agnostic=True).to_dict()
    del old["orientation_bins"]  # a checkpoint written before the field existed
    assert SegConfig.from_dict(old).orientation_bins == 0 and SegConfig.from_dict(old).num_classes == 2
    with pytest.raises(ValueError, match="orientation_bins=4 needs agnostic=True"):
        SegConfig(agnostic=False, orientation_bins=4)
    for bad in (1, 25, 2.5, True):
        with pytest.raises(ValueError, match="orientation_bins must be 0"):
            SegConfig(agnostic=True, orientation_bins=bad)
    with pytest.raises(ValueError, match="num_classes=2 does not match agnostic=True, orientation_bins=8"):
        SegConfig(agnostic=True, orientation_bins=8, num_classes=2)


# ---------------------------------------------------------------------------------------------- warm start
def _agnostic_file(tmp_path: Path, *, fg_bias: float = 3.0, mask_bias: float = 4.0) -> tuple[torch.nn.Module, Path]:
    """A random tiny agnostic detector made confident (foreground bias) with full masks, saved with save_weights."""
    torch.manual_seed(0)
    cfg = SegConfig(**TINY)
    model = build_segmentation_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += fg_bias
        model.roi_heads.mask_predictor.mask_fcn_logits.bias[1] += mask_bias
    path = tmp_path / "agnostic.pt"
    save_weights(model, cfg, path)
    return model, path


def test_warm_start_copies_the_chromosome_class_into_every_bin(tmp_path, capsys):
    agn, path = _agnostic_file(tmp_path)
    k = 4
    binned = build_segmentation_model(SegConfig(**TINY, orientation_bins=k, pretrained_path=str(path))).eval()
    assert "copied into 4 orientation bins" in capsys.readouterr().out
    assert binned.roi_heads.box_predictor.cls_score.out_features == k + 1
    assert binned.roi_heads.mask_predictor.mask_fcn_logits.out_channels == k + 1
    torch.manual_seed(1)
    x = torch.randn(50, 64) * 3
    with torch.no_grad():
        logits_a, deltas_a = agn.roi_heads.box_predictor(x)
        logits_b, deltas_b = binned.roi_heads.box_predictor(x)
        feat = torch.randn(50, 32, 14, 14)
        masks_a, masks_b = agn.roi_heads.mask_predictor(feat), binned.roi_heads.mask_predictor(feat)
    p_a, p_b = logits_a.softmax(1), logits_b.softmax(1)
    # the summed foreground probability is the agnostic one; each bin holds a k-th of it
    torch.testing.assert_close(p_b[:, 1:].sum(1), p_a[:, 1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p_b[:, 1:], p_a[:, 1:2].expand(-1, k) / k, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p_b[:, 0], p_a[:, 0], atol=1e-6, rtol=1e-5)
    # every bin regresses the same box and draws the same mask as the chromosome class
    d_a, d_b = deltas_a.view(50, 2, 4), deltas_b.view(50, k + 1, 4)
    torch.testing.assert_close(d_b[:, 0], d_a[:, 0])
    for b in range(1, k + 1):
        torch.testing.assert_close(d_b[:, b], d_a[:, 1])
        torch.testing.assert_close(masks_b[:, b], masks_a[:, 1])
    # the rest of the model is the agnostic one
    sa, sb = agn.state_dict(), binned.state_dict()
    for name in ("backbone.body.conv1.weight", "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight"):
        torch.testing.assert_close(sb[name], sa[name])


def test_warm_start_finds_the_agnostic_detections_through_detect_soft(tmp_path):
    """Before any training, the K-bin model gives the agnostic model's boxes, scores and masks: each agnostic
    detection comes out in every bin with a k-th of its score, and the cross-bin suppression sums them back."""
    agn, path = _agnostic_file(tmp_path)
    binned = build_segmentation_model(SegConfig(**TINY, orientation_bins=4, pretrained_path=str(path))).eval()
    img = np.full((96, 96), 0.9, np.float32)
    img[10:70, 20:28] = 0.3
    img[50:58, 40:90] = 0.35
    a = detect_soft(agn, img, score_thresh=SCORE_THRESH)
    b = detect_soft(binned, img, score_thresh=SCORE_THRESH)
    assert len(a["scores"]) >= 3
    assert b["labels"].tolist() == [1] * len(b["labels"])
    assert len(b["scores"]) == len(a["scores"])
    torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(b["scores"], a["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(b["masks"], a["masks"], atol=1e-4, rtol=0)
    # without the suppression the same model reports every chromosome four times, a quarter of its score each
    from models.segmentation import predict

    raw = predict(binned, [img], score_thresh=SCORE_THRESH / 4)[0]
    assert len(raw["scores"]) == 4 * len(a["scores"])
    assert sorted(set(raw["labels"].tolist())) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- cross-bin suppression
def _dets(masks: list[np.ndarray], labels: list[int], scores: list[float]) -> dict[str, torch.Tensor]:
    m = np.stack(masks).astype(np.float32)
    return {
        "boxes": torch.from_numpy(masks_to_boxes(np.stack(masks))),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "masks": torch.from_numpy(0.1 + 0.8 * m)[:, None],  # probabilities: 0.9 inside, 0.1 outside
    }


def test_one_chromosome_in_two_adjacent_bins_becomes_one():
    rod = _rod((64, 64), (32, 32), 44.0, 40, 6)
    near = np.roll(rod, 1, axis=1)  # the same chromosome, one pixel over, found in the next bin
    out = merge_orientation_bins(_dets([rod, near], [2, 3], [0.45, 0.40]))
    assert out["labels"].tolist() == [1]
    assert out["scores"].tolist() == pytest.approx([0.85])  # the bins' probabilities summed
    np.testing.assert_array_equal(out["masks"][0, 0].numpy() > 0.5, rod.astype(bool))
    out_max = merge_orientation_bins(_dets([rod, near], [2, 3], [0.45, 0.40]), combine="max")
    assert out_max["scores"].tolist() == pytest.approx([0.45]) and len(out_max["labels"]) == 1
    # one piece per other bin counts (two in bin 3 add the better one), and the sum is capped at 1
    three = merge_orientation_bins(_dets([rod, near, np.roll(rod, 1, axis=0)], [2, 3, 3], [0.5, 0.3, 0.2]))
    assert three["scores"].tolist() == pytest.approx([0.8])
    capped = merge_orientation_bins(_dets([rod, near], [2, 3], [0.7, 0.6]))
    assert capped["scores"].tolist() == pytest.approx([1.0])
    with pytest.raises(ValueError, match="combine must be one of"):
        merge_orientation_bins(_dets([rod], [2], [0.5]), combine="mean")


def test_crossing_chromosomes_with_coinciding_boxes_are_both_kept():
    """An X: two rods at 45 and 135 degrees through one centre share only the crossing; their boxes coincide."""
    a = _rod((64, 64), (32, 32), 45.0, 50, 6)
    b = _rod((64, 64), (32, 32), 135.0, 50, 6)
    boxes = masks_to_boxes(np.stack([a, b]))
    assert np.abs(boxes[0] - boxes[1]).max() <= 1  # box NMS alone could not tell them apart
    out = merge_orientation_bins(_dets([a, b], [1, 3], [0.9, 0.8]))
    assert out["labels"].tolist() == [1, 1]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_array_equal(out["masks"][1, 0].numpy() > 0.5, b.astype(bool))
    # within one bin the model's own NMS has decided: the suppression leaves it alone
    same_bin = merge_orientation_bins(_dets([a, a], [2, 2], [0.9, 0.8]))
    assert len(same_bin["scores"]) == 2
    empty = merge_orientation_bins(_dets([a], [2], [0.9]) | {k: v[:0] for k, v in _dets([a], [2], [0.9]).items()})
    assert len(empty["scores"]) == 0


# ---------------------------------------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def shipped_with_bins(tmp_path_factory) -> Path:
    """The shipped detector warm-started into 4 orientation bins, saved as an inference file."""
    from datasets.io import load_torch_file

    cfg = dict(load_torch_file(SHIPPED_SEG)["config"])
    cfg.update(orientation_bins=4, num_classes=None, pretrained_path=str(SHIPPED_SEG))
    config = SegConfig.from_dict(cfg)
    path = tmp_path_factory.mktemp("bins") / "segmentation_bins4.pt"
    save_weights(build_segmentation_model(config), config, path, half=True)
    return path


def test_a_checkpoint_with_bins_runs_through_the_unchanged_pipeline(shipped_with_bins):
    """The shipped detector and its 4-bin warm start find the same chromosomes in a real cell, through the
    pipeline's own API (the bins live in the checkpoint's config), and the prediction is a karyotype."""
    from karyotyping.core import KaryotypePipeline
    from models.segmentation import load_segmentation_checkpoint

    model, cfg = load_segmentation_checkpoint(shipped_with_bins)
    assert cfg.orientation_bins == 4 and cfg.num_classes == 5 and cfg.pretrained_path is None
    image = cv2.imread(str(ROOT / "examples" / "cil_104023.jpg"), cv2.IMREAD_GRAYSCALE)[150:470, 200:600]
    grey = image.astype(np.float32) / 255.0
    shipped = KaryotypePipeline(SHIPPED_SEG, SHIPPED_CLS, device="cpu")
    binned = KaryotypePipeline(shipped_with_bins, SHIPPED_CLS, device="cpu")
    seg_a, seg_b = shipped.segment(grey), binned.segment(grey)
    assert len(seg_a) >= 5 and len(seg_b) == len(seg_a)
    assert seg_b.labels.tolist() == [0] * len(seg_b)  # unassigned before the karyotype assignment
    np.testing.assert_allclose(seg_b.boxes, seg_a.boxes, atol=0.5)
    np.testing.assert_allclose(seg_b.scores, seg_a.scores, atol=2e-3)  # the file is float16
    pred = binned.run(image, name="crop")
    assert pred.count == len(pred.labels) > 0
    assert ((pred.labels >= 0) & (pred.labels <= 24)).all() and (pred.labels > 0).any()
    assert pred.karyotype and pred.probs.shape == (pred.count, 24)


# ---------------------------------------------------------------------------------------------- the trainer
def _train_args(out: Path, *extra: str):
    from train_segmentation import get_args_parser

    flags = ["--smoke", "--agnostic", "--orientation-bins", "4", "--output-dir", str(out), "--no-progress"]
    return get_args_parser().parse_args([*flags, *extra])


def test_trainer_targets_are_the_bins_of_the_final_masks():
    from datasets.base import DetectionView
    from train_segmentation import build_datasets, check_args

    args = _train_args(Path("unused"))
    train, val = build_datasets(args, check_args(args))
    for ds in (train, val):
        rec = ds[0]
        assert len(rec) > 0 and set(rec.labels.tolist()) <= {1, 2, 3, 4}
        np.testing.assert_array_equal(rec.labels, orientation_labels(rec.masks, 4))
    torch.manual_seed(3)
    image, target = DetectionView(train, agnostic=False)[0]
    assert target["labels"].tolist() == orientation_labels(target["masks"].numpy(), 4).tolist()
    assert len(set(target["labels"].tolist())) > 1


def test_trainer_smoke_with_bins_trains_validates_and_resumes(tmp_path):
    import engine
    from models.segmentation import load_segmentation_checkpoint
    from train_segmentation import main

    flags = ["--epochs", "2", "--max-steps-per-epoch", "1", "--eval-every", "2", "--warmup-steps", "0"]
    res_a = main(_train_args(tmp_path / "a", *flags, "--keep-checkpoints"))
    assert res_a["last_epoch"] == 1
    v = res_a["history"][1]["val_bbox_AP50"]  # class-agnostic AP of the merged detections
    assert v is None or v == -1 or 0.0 <= v <= 1.0
    ck = engine.load_checkpoint(tmp_path / "a" / "last.pth")
    assert ck["config"]["orientation_bins"] == 4 and ck["config"]["num_classes"] == 5
    res_b = main(_train_args(tmp_path / "b", *flags, "--resume", str(tmp_path / "a" / "epoch_000.pth")))
    assert res_b["start_epoch"] == 1 and [h["epoch"] for h in res_b["history"]] == [1]
    ck_b = engine.load_checkpoint(tmp_path / "b" / "last.pth")
    for k, w in ck["model"].items():
        torch.testing.assert_close(ck_b["model"][k], w, msg=lambda m, k=k: f"{k}: {m}")
    model, cfg = load_segmentation_checkpoint(tmp_path / "a" / "last.pth")
    assert cfg.orientation_bins == 4 and model.roi_heads.box_predictor.cls_score.out_features == 5
    # the same run without the bins cannot resume it
    from train_segmentation import get_args_parser

    plain = get_args_parser().parse_args(
        ["--smoke", "--agnostic", "--output-dir", str(tmp_path / "c"), "--resume", str(tmp_path / "a" / "last.pth")]
    )
    with pytest.raises(ValueError, match="orientation_bins=4"):
        main(plain)


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--no-agnostic", "--orientation-bins", "4"], "--orientation-bins needs --agnostic"),
        (["--agnostic", "--orientation-bins", "1"], "--orientation-bins must be 0 .off. or in 2..24"),
    ],
)
def test_trainer_bad_bin_flags(tmp_path, extra, msg):
    from train_segmentation import get_args_parser, main

    base = ["--smoke", "--output-dir", str(tmp_path / "run")]
    args = get_args_parser().parse_args([*base, *extra])
    with pytest.raises(ValueError, match=msg):
        main(args)
    assert not (tmp_path / "run").exists()
