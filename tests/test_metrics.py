"""Metrics on hand-drawn masks with exactly known answers (shifted squares, merged predictions, known karyotypes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets.record import KaryoRecord
from metrics import (
    aggregated_jaccard_index,
    box_iou,
    coco_evaluate,
    identification_metrics,
    iou_matrix,
    matching,
    matching_dataset,
    matching_masks,
    multiclass_panoptic_quality,
    panoptic_quality_all,
    plot_confusion,
    plot_per_class,
    sanity_score,
    sanity_terms,
)

H = W = 40


def squares(spec: list[tuple[int, int, int, int]], h: int = H, w: int = W) -> np.ndarray:
    """Stacked masks uint8 [N, h, w] of rectangles given as (y, x, height, width)."""
    out = np.zeros((len(spec), h, w), np.uint8)
    for i, (y, x, hh, ww) in enumerate(spec):
        out[i, y : y + hh, x : x + ww] = 1
    return out


def record(spec, labels, scores=None, with_masks=True) -> KaryoRecord:
    masks = squares(spec)
    boxes = np.array([[x, y, x + ww, y + hh] for (y, x, hh, ww) in spec], np.float32).reshape(-1, 4)
    return KaryoRecord(
        image=np.zeros((H, W), np.float32),
        boxes=boxes,
        labels=np.asarray(labels, np.int64),
        masks=masks if with_masks else None,
        scores=None if scores is None else np.asarray(scores, np.float32),
    )


def label_map(masks: np.ndarray, ids=None) -> np.ndarray:
    out = np.zeros(masks.shape[1:], np.int32)
    for i, m in enumerate(masks):
        out[m > 0] = i + 1 if ids is None else ids[i]
    return out


# ------------------------------------------------------------------------------------------ matching
SQ = [(0, 0, 10, 10)]
SQ_SHIFT5 = [(0, 5, 10, 10)]  # IoU with SQ: 50 / 150 = 1/3


def test_iou_matrix_and_box_iou_shifted_squares():
    assert iou_matrix(squares(SQ), squares(SQ_SHIFT5))[0, 0] == pytest.approx(1 / 3, abs=1e-15)
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])[0].tolist() == pytest.approx(
        [1 / 3, 1.0, 0.0]
    )
    assert iou_matrix(squares([]), squares(SQ)).shape == (0, 1)


@pytest.mark.parametrize("form", ["label_map", "masks"])
def test_shifted_square_threshold(form):
    t, p = squares(SQ), squares(SQ_SHIFT5)
    fn = matching_masks if form == "masks" else matching
    if form == "label_map":
        t, p = label_map(t), label_map(p, ids=[9])  # non-sequential ids are fine
    m = fn(t, p, thresh=0.5)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert m.precision == m.recall == m.f1 == m.panoptic_quality == 0.0
    m = fn(t, p, thresh=0.3)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    assert m.f1 == 1.0
    assert m.mean_matched_score == pytest.approx(1 / 3)
    assert m.panoptic_quality == pytest.approx(1 / 3)


def test_criteria_iot_iop():
    t = squares([(0, 0, 10, 10)])
    p = squares([(0, 0, 10, 20)])  # contains the true square: IoU 1/2, IoT 1, IoP 1/2
    assert matching_masks(t, p, 0.6, "iou").tp == 0
    assert matching_masks(t, p, 0.6, "iot").tp == 1
    assert matching_masks(t, p, 0.6, "iop").tp == 0
    assert matching(label_map(t), label_map(p), 0.6, "iot").mean_matched_score == 1.0


def test_perfect_prediction_is_exactly_one_with_overlaps():
    # two overlapping chromosomes (a cross): a label map would lose the shared pixels, stacked masks do not
    t = squares([(10, 0, 4, 30), (0, 12, 30, 4), (30, 30, 5, 5)])
    m = matching_masks(t, t.copy())
    for k in ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score", "panoptic_quality"):
        assert getattr(m, k) == 1.0, k
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert aggregated_jaccard_index(t, t, "plain") == aggregated_jaccard_index(t, t, "plus") == 1.0
    assert panoptic_quality_all([t], [t]) == 1.0


def test_empty_cases():
    t = squares(SQ)
    empty = squares([])
    m = matching_masks(t, empty)
    assert (m.tp, m.fp, m.fn, m.precision, m.recall, m.f1, m.panoptic_quality) == (0, 0, 1, 0.0, 0.0, 0.0, 0.0)
    m = matching_masks(empty, t)
    assert (m.tp, m.fp, m.fn, m.precision, m.recall, m.panoptic_quality) == (0, 1, 0, 0.0, 0.0, 0.0)
    m = matching_masks(empty, empty)
    assert (m.precision, m.recall, m.accuracy, m.f1, m.panoptic_quality) == (1.0, 1.0, 1.0, 1.0, 1.0)
    z = np.zeros((H, W), np.int32)
    assert matching(z, z).panoptic_quality == 1.0
    assert matching(label_map(t), z).recall == 0.0
    assert aggregated_jaccard_index(empty, empty) == 1.0
    assert aggregated_jaccard_index(t, empty) == 0.0
    assert aggregated_jaccard_index(empty, t) == 0.0


def test_matching_dataset_sums_not_averages():
    perfect = squares([(0, 0, 10, 10), (20, 20, 10, 10)])
    imgs_t = [perfect, squares(SQ)]
    imgs_p = [perfect.copy(), squares(SQ_SHIFT5)]
    m = matching_dataset(imgs_t, imgs_p, thresh=0.3)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (3, 0, 0, 3, 3)
    assert m.panoptic_quality == pytest.approx((2 + 1 / 3) / 3)  # 7/9: pooled IoU over pooled counts
    m = matching_dataset(imgs_t, imgs_p, thresh=0.3, by_image=True)
    assert m.panoptic_quality == pytest.approx((1 + 1 / 3) / 2)  # 2/3: mean of per-image PQ
    # label maps work too
    m = matching_dataset([label_map(x) for x in imgs_t], [label_map(x) for x in imgs_p], thresh=0.5)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert panoptic_quality_all(imgs_t, imgs_p) == pytest.approx(2 / (2 + 0.5 + 0.5))


def test_aggregated_jaccard_index_plain_vs_plus():
    # A = cols 0-9, B = cols 10-19; P covers both (merge), Q = cols 10-13 (a piece of B); 2 rows high.
    # IoU: A-P 1/2, B-P 1/2, B-Q 8/20 = 0.4.
    # plain: A->P, B->P: (20 + 20) / (40 + 40 + |Q| 8) = 40/88 = 5/11
    # plus (one-to-one, max sum IoU): A-P, B-Q: (20 + 8) / (40 + 20) = 7/15
    t = squares([(0, 0, 2, 10), (0, 10, 2, 10)], h=2, w=20)
    p = squares([(0, 0, 2, 20), (0, 10, 2, 4)], h=2, w=20)
    assert aggregated_jaccard_index(t, p, variant="plain") == pytest.approx(5 / 11, abs=1e-15)
    assert aggregated_jaccard_index(t, p, variant="plus") == pytest.approx(7 / 15, abs=1e-15)
    assert aggregated_jaccard_index(t, p) == aggregated_jaccard_index(t, p, "plus")
    # a true instance with no overlap adds its area to the denominator: 28 / (60 + 4)
    t2 = squares([(0, 0, 2, 10), (0, 10, 2, 10), (0, 30, 2, 2)], h=2, w=40)
    p2 = squares([(0, 0, 2, 20), (0, 10, 2, 4)], h=2, w=40)
    assert aggregated_jaccard_index(t2, p2) == pytest.approx(28 / 64, abs=1e-15)


def test_multiclass_panoptic_quality_two_classes():
    # image 1: class 1 perfect; class 2 shifted by 2 px (IoU 80/120 = 2/3) plus an extra class-2 prediction;
    #          a class-0 (unknown) prediction is ignored.
    # image 2: one class-1 chromosome, not found (FN).
    # PQ_1 = (1 + 0) / (1 + 0 + 1/2) = 2/3;  PQ_2 = (2/3) / (1 + 1/2 + 0) = 4/9;  mPQ = (2/3 + 4/9) / 2 = 5/9
    t1 = squares([(0, 0, 10, 10), (20, 0, 10, 10)])
    p1 = squares([(0, 0, 10, 10), (20, 2, 10, 10), (0, 25, 5, 5), (30, 30, 5, 5)])
    t2 = squares([(5, 5, 10, 10)])
    p2 = squares([])
    mpq, per_class = multiclass_panoptic_quality([t1, t2], [[1, 2], [1]], [p1, p2], [[1, 2, 2, 0], []])
    assert set(per_class) == {"1", "2"}
    assert per_class["1"] == pytest.approx(2 / 3)
    assert per_class["2"] == pytest.approx(4 / 9)
    assert mpq == pytest.approx(5 / 9)
    # perfect and empty
    assert multiclass_panoptic_quality([t1], [[1, 24]], [t1], [[1, 24]]) == (1.0, {"1": 1.0, "Y": 1.0})
    assert multiclass_panoptic_quality([], [], [], []) == (1.0, {})


def test_matching_validation():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="shape"):
        matching(a, np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="integer"):
        matching(a.astype(float), a)
    with pytest.raises(ValueError, match="negative"):
        matching(a - 1, a)
    with pytest.raises(ValueError, match="criterion"):
        matching(a, a, criterion="dice")
    with pytest.raises(ValueError, match="thresh"):
        matching(a, a, thresh=0)
    with pytest.raises(ValueError, match="pixels"):
        matching_masks(squares(SQ), squares(SQ, h=20, w=20))
    with pytest.raises(ValueError, match="variant"):
        aggregated_jaccard_index(squares(SQ), squares(SQ), "kumar")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(1, 6), st.integers(1, 6)), max_size=4))
def test_self_match_property(spec):
    t = squares(spec, h=16, w=16)
    m = matching_masks(t, t)
    assert m.panoptic_quality == 1.0 and m.f1 == 1.0
    iou = iou_matrix(t, t)
    assert np.allclose(iou, iou.T) and np.all(np.diag(iou) == 1.0)


# ------------------------------------------------------------------------------------------ detection (COCO)
GT_SPEC = [(0, 0, 10, 10), (20, 20, 10, 10)]


def test_coco_perfect_prediction_is_exactly_one():
    gt = record(GT_SPEC, [1, 23])
    pred = record(GT_SPEC, [1, 23], scores=[0.9, 0.8])
    res = coco_evaluate([gt], [pred])
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert res[k] == 1.0, k
    assert res["per_class_bbox_AP50"] == {"1": 1.0, "X": 1.0}
    assert res["segm_gt_from_boxes"] == 0.0
    # gt without masks: filled boxes stand in, and the result says so
    res = coco_evaluate([record(GT_SPEC, [1, 23], with_masks=False)], [pred])
    assert res["segm_AP50"] == 1.0 and res["segm_gt_from_boxes"] == 1.0


def test_coco_known_partial_ap_and_labels():
    gt = record(GT_SPEC, [1, 23])
    # the higher-scoring detection is shifted by 5 px (IoU 1/3: a false positive), the other is right:
    # precision 1/2 for recall 0..0.5 (51 of the 101 recall points), nothing beyond -> AP = 25.5/101
    pred = record([(0, 5, 10, 10), (20, 20, 10, 10)], [1, 23], scores=[0.9, 0.8])
    res = coco_evaluate([gt], [pred], agnostic=True)
    assert res["bbox_AP50"] == pytest.approx(25.5 / 101, abs=1e-12)
    assert res["segm_AP"] == pytest.approx(25.5 / 101, abs=1e-12)
    assert "per_class_bbox_AP50" not in res
    # with classes: class 1 is missed entirely (AP50 0), X found (AP50 1) -> mean 0.5
    res = coco_evaluate([gt], [pred], iou_types=("bbox",))
    assert res["per_class_bbox_AP50"] == {"1": 0.0, "X": 1.0}
    assert res["bbox_AP50"] == 0.5
    assert "segm_AP" not in res
    # a correct box with the wrong class counts for nothing
    res = coco_evaluate([gt], [record(GT_SPEC, [2, 23], scores=[0.9, 0.8])], iou_types=("bbox",))
    assert res["per_class_bbox_AP50"] == {"1": 0.0, "X": 1.0}


def test_coco_empty():
    gt = record(GT_SPEC, [1, 23])
    empty = record([], [])
    res = coco_evaluate([gt], [empty])
    assert res["bbox_AP"] == 0.0 and res["segm_AP50"] == 0.0
    # an image without gt adds only false positives; images are paired by position
    assert coco_evaluate([gt, empty], [record(GT_SPEC, [1, 1]), empty], agnostic=True)["segm_AP50"] == 1.0
    assert math.isnan(coco_evaluate([empty], [empty])["bbox_AP"])  # nothing to find: undefined
    with pytest.raises(ValueError, match="agnostic"):
        coco_evaluate([record(GT_SPEC, [0, 1])], [gt])
    with pytest.raises(ValueError, match="records"):
        coco_evaluate([gt], [])


def test_coco_more_than_100_detections_per_image():
    # 120 true squares in one image, each detected exactly: the default cap of 300 keeps all of them
    spec = [(3 * (i // 12), 3 * (i % 12), 2, 2) for i in range(120)]
    gt = record(spec, [1] * 120)
    pred = record(spec, [1] * 120, scores=np.linspace(1, 0.5, 120))
    assert coco_evaluate([gt], [pred], agnostic=True, iou_types=("bbox",))["bbox_AP50"] == 1.0
    capped = coco_evaluate([gt], [pred], agnostic=True, iou_types=("bbox",), max_dets=(1, 10, 100))
    assert capped["bbox_AP50"] < 1.0


def test_detections_to_record():
    """The one conversion of a detector's output into a record (karyotyping.detection), masks at > 0.5."""
    torch = pytest.importorskip("torch")
    from karyotyping.detection import detections_to_record
    from karyotyping.masks import MaskConfig

    thresh = MaskConfig().mask_thresh

    probs = torch.zeros(2, 1, H, W)
    probs[0, 0, 0:10, 0:10] = 0.9
    probs[1, 0, 20:30, 20:30] = 0.6
    probs[1, 0, 0:2, 0:2] = thresh - 0.05  # below the threshold
    probs[1, 0, 2:4, 0:2] = thresh  # at the threshold: not foreground
    out = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
        "labels": torch.tensor([1, 23]),
        "scores": torch.tensor([0.9, 0.8]),
        "masks": probs,
    }
    src = record(GT_SPEC, [1, 23])
    rec = detections_to_record(out, src.image, meta={"image_id": "cell-7"})
    assert rec.masks.dtype == np.uint8 and rec.masks.shape == (2, H, W)
    assert rec.masks.sum() == 200 and rec.image_id == "cell-7" and rec.image is src.image
    assert rec.labels.tolist() == [1, 23] and rec.scores.tolist() == pytest.approx([0.9, 0.8])
    assert coco_evaluate([src], [rec])["segm_AP50"] == 1.0
    empty_out = {k: v[:0] for k, v in out.items()}
    rec = detections_to_record(empty_out, np.zeros((H, W), np.float32))
    assert len(rec) == 0 and rec.masks.shape == (0, H, W)
    # another threshold: the faint pixels of instance 1 join it, the 0.6 ones leave at 0.7
    assert detections_to_record(out, src.image, mask_thresh=thresh - 0.1).masks[1].sum() == 100 + 8
    assert detections_to_record(out, src.image, mask_thresh=0.7).masks.sum() == 100
    with pytest.raises(ValueError, match="mask threshold"):
        detections_to_record(out, src.image, mask_thresh=1.0)


# ------------------------------------------------------------------------------------------ identification
def test_identification_hand_example(tmp_path):
    true = [np.array([1, 1, 2, 23]), np.array([1, 2, 24, 0])]
    pred = [np.array([1, 1, 2, 23]), np.array([2, 2, 0, 5])]
    r = identification_metrics(true, pred)
    assert r["n_chromosomes"] == 7 and r["n_cells"] == 2  # the true-0 chromosome is not evaluated
    assert r["accuracy"] == pytest.approx(5 / 7)
    assert r["cell_exact_rate"] == 0.5
    cm = r["confusion"]
    assert cm.shape == (25, 25) and cm.sum() == 8
    assert (cm[1, 1], cm[2, 2], cm[23, 23], cm[1, 2], cm[24, 0], cm[0, 5]) == (2, 2, 1, 1, 1, 1)
    pc = r["per_class"]
    assert set(pc) == {"1", "2", "X", "Y"}
    assert pc["1"] == pytest.approx({"accuracy": 2 / 3, "precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert pc["2"] == pytest.approx({"accuracy": 1.0, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert pc["Y"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["macro_F1"] == pytest.approx((0.8 + 0.8 + 1.0 + 0.0) / 4)
    perfect = identification_metrics([np.arange(1, 25)], [np.arange(1, 25)])
    assert perfect["accuracy"] == perfect["macro_F1"] == perfect["cell_exact_rate"] == 1.0
    with pytest.raises(ValueError, match="cell 0"):
        identification_metrics([np.array([1, 2])], [np.array([1])])
    with pytest.raises(ValueError, match="0..24"):
        identification_metrics([np.array([25])], [np.array([1])])
    plot_confusion(cm, tmp_path / "cm.png")
    plot_per_class(pc, tmp_path / "per_class.png")
    for name in ("cm.png", "per_class.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_crop_scores_known_values():
    from metrics.identification import per_crop_scores

    flat = np.full((4, 24), 1 / 24, np.float32)
    labels = np.array([0, 5, 23, 7])
    # uniform probabilities: -log(1/24) whatever the smoothing; argmax is class index 0
    for s in (0.0, 0.1):
        r = per_crop_scores(flat, labels, label_smoothing=s)
        assert r["loss"] == pytest.approx(np.log(24), rel=1e-6) and r["accuracy"] == 0.25
    sure = np.full((2, 24), 0.01 / 23, np.float32)
    sure[0, 3] = sure[1, 4] = 0.99
    r = per_crop_scores(sure, np.array([3, 5]), label_smoothing=0.1)
    want = 0.9 * np.mean([-np.log(0.99), -np.log(0.01 / 23)]) - 0.1 * np.mean(np.log(sure), axis=1).mean()
    assert r == pytest.approx({"accuracy": 0.5, "loss": want}, rel=1e-5)
    empty = per_crop_scores(np.zeros((0, 24), np.float32), np.zeros(0, np.int64))
    assert np.isnan(empty["accuracy"]) and np.isnan(empty["loss"])


def test_write_instance_outputs(tmp_path):
    from types import SimpleNamespace

    from metrics.identification import write_instance_outputs

    labels = np.array([0, 1, 22, 0])  # class ids 1, 2, X, 1
    inst = SimpleNamespace(
        labels=labels,
        cell=np.array([0, 0, 1, 1]),
        lengths=np.array([10.0, 9.0, 8.0, 7.0], np.float32),
        centromere=np.array([0.5, 0.4, 0.3, 0.2], np.float32),
        image_ids=np.array(["a", "b"]),
    )
    probs = np.eye(24, dtype=np.float32)[[0, 1, 22, 2]]  # the last chromosome called 3
    m = write_instance_outputs(tmp_path, inst, probs)
    assert m["accuracy"] == 0.75 and m["cell_exact_rate"] == 0.5
    z = np.load(tmp_path / "val_probs.npz")
    assert z["class_ids"].tolist() == [1, 2, 23, 1] and z["image_ids"].tolist() == ["a", "b"]
    assert np.array_equal(z["probs"], probs) and np.array_equal(z["centromere_index"], inst.centromere)
    assert json.loads((tmp_path / "per_class.json").read_text())["confusion"][1][3] == 1
    for name in ("confusion.png", "per_class.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ karyotype sanity
def normal(sex: str) -> list[int]:
    return [c for c in range(1, 23) for _ in range(2)] + [23 if s == "X" else 24 for s in sex]


def test_sanity_score_exact_values():
    e = math.exp(-0.5)
    assert sanity_score(normal("XY")) == 1.0
    assert sanity_score(normal("XX")) == 1.0
    assert sanity_score(normal("XY") + [0, 0]) == 1.0  # unassigned instances are ignored
    assert sanity_score(normal("XY") + [21]) == e * (21 / 22) * 1.0  # 47,XY,+21
    assert sanity_score(normal("X")) == e * 1.0 * 0.5  # 45,X
    assert sanity_score(normal("XXY")) == e * 1.0 * 0.5  # 47,XXY
    swapped = normal("XY")
    swapped[swapped.index(1)] = 3  # one chromosome 1 called 3: one 1, three 3s
    assert sanity_score(swapped) == 20 / 22
    assert sanity_score(normal("")) == math.exp(-1.0) * 1.0 * 0.25  # 44 autosomes, no sex chromosome
    assert sanity_score([]) == 0.0
    t = sanity_terms(swapped + [0])
    assert t["abnormal_autosomes"] == ["1", "3"] and t["n_unassigned"] == 1 and t["n_labelled"] == 46
    assert (t["count_term"], t["pairing_term"], t["sex_term"]) == (1.0, 20 / 22, 1.0)
    assert t["copies"]["3"] == 3 and t["copies"]["Y"] == 1
    with pytest.raises(ValueError, match="0..24"):
        sanity_score([1, 25])


def test_coco_evaluate_on_encoded_records_equals_records():
    """An evaluation loop may keep each record as RLE (encode_record): the figures do not change."""
    from metrics.detection import encode_record

    gt = [record(GT_SPEC, [1, 23]), record([], [])]
    pred = [record(GT_SPEC, [1, 1], scores=[0.9, 0.4]), record(GT_SPEC[:1], [2], scores=[0.3])]
    for agnostic in (True, False):
        direct = coco_evaluate(gt, pred, agnostic=agnostic)
        enc = coco_evaluate([encode_record(g) for g in gt], [encode_record(p) for p in pred], agnostic=agnostic)
        assert enc == direct
    boxes_only = record(GT_SPEC, [1, 23])
    boxes_only.masks = None
    assert encode_record(boxes_only).masks_from_boxes and not encode_record(gt[0]).masks_from_boxes
    assert coco_evaluate([encode_record(boxes_only)], [pred[0]], agnostic=True)["segm_gt_from_boxes"] == 1.0


def test_error_by_quantile_known_bins():
    from metrics.identification import error_by_quantile

    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, np.nan, 0.9])
    wrong = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1], bool)  # the NaN row (wrong) is left out
    rows = error_by_quantile(values, wrong, bins=3)
    assert [r["n"] for r in rows] == [3, 3, 3]
    assert [round(r["error_rate"], 3) for r in rows] == [0.0, 0.333, 0.667]
    assert [round(r["share_of_errors"], 3) for r in rows] == [0.0, 0.333, 0.667]
    assert rows[0]["lo"] == pytest.approx(0.1) and rows[-1]["hi"] == pytest.approx(0.9)
    assert error_by_quantile(np.array([np.nan]), np.array([True])) == []
    with pytest.raises(ValueError, match="entries"):
        error_by_quantile(np.zeros(3), np.zeros(2, bool))


def test_error_breakdown_known_fates():
    """Three true squares: one matched with the right label, one whose box is found but whose mask is a
    sliver (box IoU 1, mask IoU 0.25), one with nothing near it; a false positive elsewhere changes nothing."""
    from metrics.matching import error_breakdown

    t = np.zeros((3, 40, 40), np.uint8)
    t[0, 0:8, 0:8] = 1
    t[1, 20:28, 0:8] = 1
    t[2, 30:38, 30:38] = 1
    tb = np.array([[0, 0, 8, 8], [0, 20, 8, 28], [30, 30, 38, 38]], float)
    p = np.zeros((3, 40, 40), np.uint8)
    p[0, 0:8, 0:8] = 1
    p[1, 20:28, 0:2] = 1  # a quarter of the second square
    p[2, 0:8, 30:38] = 1  # a false positive
    pb = np.array([[0, 0, 8, 8], [0, 20, 8, 28], [30, 0, 38, 8]], float)
    out = error_breakdown(t, tb, p, pb, np.array([3, 5, 7]), np.array([3, 5, 9]))
    lost = {"lost_merged": 0, "lost_merged_into_found": 0, "lost_split": 0, "lost_uncovered": 2}
    lost |= {f"lost_merged_{k}": 0 for k in ("parallel", "oblique", "crossing", "alone")}
    assert out == {"true": 3, "found": 1, "mask_failed": 1, "missed": 1, "right": 1, "wrong": 0, **lost}
    out = error_breakdown(t, tb, p, pb, np.array([4, 5, 7]), np.array([3, 5, 9]))
    assert out["right"] == 0 and out["wrong"] == 1
    empty = error_breakdown(t, tb, p[:0], pb[:0])
    assert empty == {"true": 3, "found": 0, "mask_failed": 0, "missed": 3, **lost, "lost_uncovered": 3}


def test_instance_fates_name_every_kind_of_false_detection():
    """Four true bars A-D: A found, B and C taken in by one mask (a merge), D cut in two pieces; besides them a
    second mask inside A (a duplicate), a mask half on A and half on D's gap (off the masks), a blob far away."""
    from metrics.matching import instance_fates

    t = np.zeros((4, 60, 60), np.uint8)
    t[0, 0:20, 0:6] = 1  # A
    t[1, 0:20, 20:26] = 1  # B
    t[2, 0:20, 28:34] = 1  # C, beside B
    t[3, 30:50, 0:6] = 1  # D
    tb = np.array([[0, 0, 6, 20], [20, 0, 26, 20], [28, 0, 34, 20], [0, 30, 6, 50]], float)
    p = np.zeros((6, 60, 60), np.uint8)
    p[0, 0:20, 0:6] = 1  # A
    p[1, 0:20, 20:34] = 1  # B + C
    p[2, 2:12, 1:5] = 1  # inside A again
    p[3, 30:37, 0:6] = 1  # top of D
    p[4, 42:50, 0:6] = 1  # bottom of D
    p[5, 50:60, 50:60] = 1  # nowhere
    pb = np.array([[0, 0, 6, 20], [20, 0, 34, 20], [1, 2, 5, 12], [0, 30, 6, 37], [0, 42, 6, 50], [50, 50, 60, 60]])
    f = instance_fates(t, tb, p, pb)
    assert f.true_fate.tolist() == ["found", "lost_merged", "lost_merged", "lost_split"]
    assert f.matched_to.tolist() == [0, -1, -1, -1] and f.into.tolist() == [-1, 1, 1, -1]
    assert f.false_kind.tolist() == ["", "merge", "duplicate", "piece", "piece", "background"]
    assert f.box_seen.tolist() == [True, False, False, False]
    # a mask across the gap between B and C: 80 % on chromosome pixels, but 40 % in each
    off = np.zeros((1, 60, 60), np.uint8)
    off[0, 0:5, 22:32] = 1
    assert instance_fates(t, tb, off, np.array([[22, 0, 32, 5]])).false_kind.tolist() == ["off_mask"]


def test_merged_chromosomes_split_by_the_angle_to_their_partner():
    """Bars of 3 x 30 px: a parallel pair side by side in one mask, an X (90 degrees) in one mask, a pair at
    20 degrees in one mask (each pair's mask a little wider than the pair), and a bar alone in a mask four times its
    size (no partner): each merged one gets its pair's kind, and the kinds add up to lost_merged."""
    import cv2

    from metrics.matching import error_breakdown

    def bar(angle: float, centre: tuple[int, int]) -> np.ndarray:
        m = np.zeros((200, 200), np.uint8)
        box = cv2.boxPoints((centre, (30, 3), -angle))  # y down: -angle is counter-clockwise as displayed
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
        return m

    bars = [bar(90, (20, 30)), bar(90, (24, 30)), bar(0, (80, 30)), bar(90, (80, 30)), bar(0, (30, 120)),
            bar(20, (30, 126)), bar(45, (130, 130))]  # fmt: skip
    t = np.stack(bars)
    tb = np.array([cv2.boundingRect(m) for m in t], float)
    tb[:, 2:] += tb[:, :2]
    groups = [(0, 1), (2, 3), (4, 5)]
    grow = np.ones((5, 5), np.uint8)
    p = np.stack(
        [cv2.dilate(np.clip(t[a] + t[b], 0, 1), grow) for a, b in groups]
        + [cv2.dilate(t[6], np.ones((9, 9), np.uint8))]
    )
    pb = np.array([cv2.boundingRect(m) for m in p], float)
    pb[:, 2:] += pb[:, :2]
    out = error_breakdown(t, tb, p, pb)
    assert out["lost_merged"] == 7 and out["found"] == 0
    assert out["lost_merged_parallel"] == 2 and out["lost_merged_crossing"] == 2
    assert out["lost_merged_oblique"] == 2 and out["lost_merged_alone"] == 1
    assert sum(out[f"lost_merged_{k}"] for k in ("parallel", "oblique", "crossing", "alone")) == out["lost_merged"]


def test_error_breakdown_where_the_lost_pixels_went():
    """Two neighbours in one predicted mask (each IoU 0.44: both merged), a square in two pieces (IoU 0.375
    each, 0.75 together: split), and a small one inside the mask of its matched neighbour (merged into found)."""
    from metrics.matching import error_breakdown

    t = np.zeros((5, 40, 60), np.uint8)
    t[0, 0:8, 0:8] = 1  # B
    t[1, 0:8, 8:16] = 1  # C, beside B
    t[2, 20:28, 0:8] = 1  # D
    t[3, 20:28, 30:38] = 1  # E
    t[4, 20:28, 38:40] = 1  # F, a sliver beside E
    tb = np.array([[0, 0, 8, 8], [8, 0, 16, 8], [0, 20, 8, 28], [30, 20, 38, 28], [38, 20, 40, 28]], float)
    p = np.zeros((4, 40, 60), np.uint8)
    p[0, 0:8, 0:18] = 1  # B + C + 16 px more
    p[1, 20:28, 0:3] = 1  # a piece of D
    p[2, 20:28, 4:7] = 1  # another piece of D
    p[3, 20:28, 30:40] = 1  # E + F
    pb = np.array([[0, 0, 18, 8], [0, 20, 3, 28], [4, 20, 7, 28], [30, 20, 40, 28]], float)
    out = error_breakdown(t, tb, p, pb)
    assert out["found"] == 1  # E (IoU 0.8)
    assert out["lost_merged"] == 3 and out["lost_merged_into_found"] == 1  # B, C and F (F in E's mask)
    assert out["lost_split"] == 1 and out["lost_uncovered"] == 0  # D
    assert out["found"] + out["lost_merged"] + out["lost_split"] + out["lost_uncovered"] == out["true"]
