"""datasets/copy_paste.py: pasting whole chromosomes between spreads, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.copy_paste import CopyPaste, _Cutout
from datasets.record import KaryoRecord
from datasets.transforms import Compose, detector_transforms

BG = 0.9


def _spread(rects, h=64, w=64, bg=BG, value=0.45, centromeres=True):
    """Background ``bg``; each rect (x1, y1, x2, y2) a dark rod of ``value``, one instance each, label i + 1."""
    img = np.full((h, w), bg, np.float32)
    masks = np.zeros((len(rects), h, w), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        img[y1:y2, x1:x2] = value
        masks[i, y1:y2, x1:x2] = 1
    boxes = np.array(rects, np.float32).reshape(-1, 4)
    c = d = None
    if centromeres:
        c = np.array([[(x1 + x2 - 1) / 2, y1 + 2] for x1, y1, x2, y2 in rects], np.float32).reshape(-1, 2)
        d = np.tile(np.array([[0.0, -1.0]], np.float32), (len(rects), 1))
    labels = np.arange(1, len(rects) + 1, dtype=np.int64)
    return KaryoRecord(image=img, boxes=boxes, labels=labels, masks=masks, centromeres=c, p_dir=d).validate()


def test_the_first_spread_fills_the_bank_and_passes_unchanged():
    cp = CopyPaste(2)
    rec = _spread([(10, 10, 16, 30), (0, 40, 20, 46)])  # the second touches the left border: not banked
    out = cp(rec, np.random.default_rng(0))
    assert out is rec and len(cp.bank) == 1
    cut = cp.bank[0]
    assert cut.mask.shape == (20, 6) and cut.mask.all() and cut.label == 1
    np.testing.assert_allclose(cut.transmission, 0.5, atol=1e-6)  # 0.45 on a background of 0.9
    np.testing.assert_allclose(cut.centromere, [2.5, 2.0])  # in the patch's pixels


def test_a_paste_on_background_multiplies_by_the_transmission():
    cp = CopyPaste(1, max_overlap=0.0)
    cp(_spread([(10, 10, 16, 30)]), np.random.default_rng(0))
    target = _spread([(2, 2, 8, 8)], bg=0.8, value=0.3)
    out = cp(target, np.random.default_rng(1))
    assert len(out) == 2 and out.meta["copy_paste"] == 1
    new = out.masks[1] > 0
    assert new.sum() == 120 and out.labels[1] == 1
    x1, y1, x2, y2 = out.boxes[1]
    assert {x2 - x1, y2 - y1} == {6.0, 20.0}  # turned by some quarter turns, still 6 x 20
    np.testing.assert_allclose(out.image[new], 0.8 * 0.5, atol=1e-6)
    np.testing.assert_array_equal(out.masks[0], target.masks[0])  # no overlap allowed: the old one is whole
    far = np.ones_like(new)
    far[max(0, int(y1) - 3) : int(y2) + 3, max(0, int(x1) - 3) : int(x2) + 3] = False
    far &= target.masks[0] == 0
    np.testing.assert_array_equal(out.image[far], target.image[far])  # untouched away from the paste
    # the pasted centromere lands 2 px inside one short end, on the rod's axis
    c = out.centromeres[1]
    assert new[int(round(c[1])), int(round(c[0]))]
    end_dist = min(c[0] - x1, x2 - 1 - c[0]) if x2 - x1 == 20 else min(c[1] - y1, y2 - 1 - c[1])
    assert end_dist == pytest.approx(2.0)
    # p_dir still points from the centromere to that near end
    assert np.isclose(np.linalg.norm(out.p_dir[1]), 1.0)
    tip = c + 2.0 * out.p_dir[1]
    assert tip[0] in (x1, x2 - 1) or tip[1] in (y1, y2 - 1)


def test_a_pasted_chromosome_lies_on_top():
    seen_kept = seen_dropped = False
    for seed in range(30):
        cp = CopyPaste(1, max_overlap=1.0, min_visible=0.3)
        nan2 = np.full(2, np.nan, np.float32)
        cp.bank.append(_Cutout(np.full((10, 10), 0.5, np.float32), np.ones((10, 10), np.uint8), 7, nan2, nan2))
        target = _spread([(0, 0, 10, 10)], h=10, w=20)  # a square instance fills the left half
        out = cp(target, np.random.default_rng(seed))
        pasted = out.masks[-1] > 0
        x0 = int(np.flatnonzero(pasted.any(0))[0])  # the paste covers columns x0 .. x0 + 9
        old = target.masks[0] > 0
        np.testing.assert_allclose(out.image[old & pasted], 0.45 * 0.5, atol=1e-6)  # the overlap is darker
        if x0 >= 3:  # 30 % or more of the square stays visible: kept, without the covered pixels
            assert out.labels.tolist() == [1, 7]
            np.testing.assert_array_equal(out.masks[0] > 0, old & ~pasted)
            assert out.boxes[0].tolist() == [0.0, 0.0, float(x0), 10.0]
            seen_kept = True
        else:
            assert out.labels.tolist() == [7]
            seen_dropped = True
    assert seen_kept and seen_dropped


def test_no_paste_onto_a_dark_unannotated_region():
    pasted = 0
    for seed in range(20):
        cp = CopyPaste(1, max_overlap=0.0, tries=20)
        cp(_spread([(10, 10, 16, 30)]), np.random.default_rng(0))
        target = _spread([], h=40, w=40)
        target.image[:, :16] = 0.3  # a nucleus over the left 40 %, not annotated
        out = cp(target, np.random.default_rng(seed))
        for m in out.masks:  # most of each pasted rod lies on the bright background
            pasted += 1
            assert np.median(target.image[m > 0]) == pytest.approx(BG)
    assert pasted >= 10


def test_records_without_masks_and_reproducibility():
    cp = CopyPaste(3)
    rec = _spread([(10, 10, 16, 30)])
    boxes_only = KaryoRecord(image=rec.image, boxes=rec.boxes, labels=rec.labels)
    assert cp(boxes_only, np.random.default_rng(0)) is boxes_only and not cp.bank
    spreads = [_spread([(5 + 3 * k, 10, 11 + 3 * k, 30), (30, 5 + 2 * k, 36, 25 + 2 * k)]) for k in range(5)]
    runs = []
    for _ in range(2):
        t, rng = CopyPaste(3), np.random.default_rng(4)
        runs.append([t(s, rng) for s in spreads])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert any(r.meta.get("copy_paste") for r in runs[0])
    with pytest.raises(ValueError):
        CopyPaste(0)
    with pytest.raises(ValueError):
        CopyPaste(2, max_overlap=1.5)


def test_detector_transforms_paste_last():
    train_tf, _ = detector_transforms(fixed_scale=0.5, crop_size=64, copy_paste=3)
    assert isinstance(train_tf, Compose) and isinstance(train_tf.transforms[-1], CopyPaste)
    assert train_tf.transforms[-1].max_paste == 3
    train_tf, _ = detector_transforms(fixed_scale=0.5, crop_size=64)
    assert not any(isinstance(t, CopyPaste) for t in train_tf.transforms)


@pytest.mark.parametrize("argv", [["--copy-paste", "-1"], ["--copy-paste", "2", "--no-augment"]])
def test_trainer_refuses_bad_copy_paste_flags(argv, tmp_path):
    import train_segmentation

    args = train_segmentation.get_args_parser().parse_args(
        ["--smoke", "--device", "cpu", "--output-dir", str(tmp_path / "r"), *argv]
    )
    with pytest.raises(ValueError, match="--copy-paste"):
        train_segmentation.main(args)
    assert not (tmp_path / "r").exists()


def test_trainer_smoke_with_copy_paste(tmp_path):
    import train_segmentation

    args = train_segmentation.get_args_parser().parse_args(
        ["--smoke", "--fixed-scale", "0.8", "--crop-size", "96", "--copy-paste", "3", "--device", "cpu"]
        + ["--workers", "0", "--output-dir", str(tmp_path), "--no-progress"]
    )
    roots = train_segmentation.check_args(args)
    train, _ = train_segmentation.build_datasets(args, roots)
    assert isinstance(train.transforms.transforms[-1], CopyPaste)
    summary = train_segmentation.main(args)
    assert (tmp_path / "last.pth").is_file() and summary["last_epoch"] == 0


def test_annotated_boxes_stay_and_pasted_ones_get_the_margin():
    cp = CopyPaste(1, max_overlap=0.0)
    cp(_spread([(10, 10, 16, 30)]), np.random.default_rng(0))
    target = _spread([(2, 2, 8, 8)], bg=0.8, value=0.3)
    target.boxes[0] = [0.0, 0.0, 10.0, 11.0]  # annotated a little loosely
    target.meta["box_margin"] = 2.0
    out = cp(target, np.random.default_rng(1))
    assert len(out) == 2
    np.testing.assert_array_equal(out.boxes[0], [0.0, 0.0, 10.0, 11.0])
    ys, xs = np.nonzero(out.masks[1])
    grown = np.array([xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3], np.float32)
    np.testing.assert_allclose(out.boxes[1], np.clip(grown, 0, 64))  # clipped to the image
