"""Paired augmentations keep image, masks, boxes, centromeres and p_dir aligned."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.record import KaryoRecord, masks_to_boxes
from datasets.synthetic import generate_spread
from datasets.transforms import (
    BrightnessContrastGamma,
    Compose,
    FreeRotation,
    GaussianBlur,
    GaussianNoise,
    HorizontalFlip,
    RandomScale,
    ResizeLongest,
    Rot90,
    VerticalFlip,
    default_train_transforms,
)

FIELDS = ("image", "boxes", "labels", "masks", "centromeres", "p_dir")


def _equal(a: KaryoRecord, b: KaryoRecord) -> None:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None and f in ("centromeres", "p_dir"):  # float32 round trips: W - 1 - (W - 1 - x)
            np.testing.assert_allclose(x, y, atol=1e-4, err_msg=f)
        elif x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f)


def _tiny() -> KaryoRecord:
    """One 3x2 instance in a 5x8 image; centromere at (3, 1), p arm to the right."""
    img = np.linspace(0, 1, 40, dtype=np.float32).reshape(5, 8)
    m = np.zeros((1, 5, 8), np.uint8)
    m[0, 1:3, 2:5] = 1
    return KaryoRecord(img, masks_to_boxes(m), [7], m, centromeres=[[3, 1]], p_dir=[[1, 0]]).validate()


@pytest.fixture(scope="module")
def spread() -> KaryoRecord:
    return generate_spread(np.random.default_rng(11), None, "46,XY", size=(300, 360))


def _check_aligned(r: KaryoRecord, tol_px: int = 1) -> None:
    r.validate()
    np.testing.assert_array_equal(r.boxes, masks_to_boxes(r.masks))
    assert r.masks.reshape(len(r), -1).any(1).all()
    ok = np.isfinite(r.centromeres).all(1)
    np.testing.assert_allclose(np.linalg.norm(r.p_dir[ok], axis=1), 1.0, atol=1e-5)
    for i in np.flatnonzero(ok):
        x, y = np.round(r.centromeres[i]).astype(int)
        win = r.masks[i, max(0, y - tol_px) : y + tol_px + 1, max(0, x - tol_px) : x + tol_px + 1]
        assert win.any(), f"centromere {i} ({x}, {y}) outside its mask"


def test_hflip_known_answer():
    r = HorizontalFlip()(_tiny())
    np.testing.assert_array_equal(r.boxes, [[3, 1, 6, 3]])
    np.testing.assert_array_equal(r.centromeres, [[4, 1]])
    np.testing.assert_array_equal(r.p_dir, [[-1, 0]])
    assert r.masks[0, 1, 4] == 1 and r.image[0, 7] == _tiny().image[0, 0]
    np.testing.assert_array_equal(r.boxes, masks_to_boxes(r.masks))


def test_vflip_known_answer():
    r = VerticalFlip()(_tiny())
    np.testing.assert_array_equal(r.boxes, [[2, 2, 5, 4]])
    np.testing.assert_array_equal(r.centromeres, [[3, 3]])
    np.testing.assert_array_equal(r.p_dir, [[1, 0]])
    np.testing.assert_array_equal(r.boxes, masks_to_boxes(r.masks))


def test_rot90_known_answer():
    t = _tiny()
    r = Rot90(1)(t)
    assert r.image.shape == (8, 5)
    np.testing.assert_array_equal(r.image, np.rot90(t.image))
    np.testing.assert_array_equal(r.centromeres, [[1, 4]])  # (x, y) -> (y, W - 1 - x)
    np.testing.assert_array_equal(r.p_dir, [[0, -1]])  # right -> up, as displayed
    np.testing.assert_array_equal(r.boxes, masks_to_boxes(r.masks))
    assert r.masks[0, 4, 1] == 1


def test_flips_and_rotations_invert(spread):
    rng = np.random.default_rng(0)
    _equal(HorizontalFlip()(HorizontalFlip()(spread, rng), rng), spread)
    _equal(VerticalFlip()(VerticalFlip()(spread, rng), rng), spread)
    r = spread
    for _ in range(4):
        r = Rot90(1)(r, rng)
        _check_aligned(r, 0)
    _equal(r, spread)
    _equal(Rot90(3)(Rot90(1)(spread)), spread)
    _check_aligned(HorizontalFlip()(spread), 0)


def test_free_rotation_90_equals_rot90(spread):
    a = FreeRotation(angle=90.0)(spread)
    b = Rot90(1)(spread)
    assert a.image.shape == b.image.shape
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.centromeres, b.centromeres, atol=1e-3)
    np.testing.assert_allclose(a.p_dir, b.p_dir, atol=1e-5)
    # box-only records: rotated corners give the same boxes
    nb = spread.copy()
    nb.masks = None
    a2 = FreeRotation(angle=90.0)(nb)
    np.testing.assert_allclose(a2.boxes, b.boxes, atol=1e-3)


@pytest.mark.parametrize("angle", [17.0, -133.0])
def test_free_rotation_keeps_alignment(spread, angle):
    r = FreeRotation(angle=angle)(spread)
    assert len(r) == len(spread)
    _check_aligned(r)
    # the rotated p_dir is the original turned by -angle in image coordinates (y down)
    th = np.deg2rad(angle)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    np.testing.assert_allclose(r.p_dir, spread.p_dir @ rot.T, atol=1e-5)
    # mask areas are preserved up to the nearest-neighbour resampling
    a0 = spread.masks.reshape(len(spread), -1).sum(1)
    a1 = r.masks.reshape(len(r), -1).sum(1)
    np.testing.assert_allclose(a1, a0, rtol=0.12)


def test_rotation_without_expand_drops_vanished_instances():
    img = np.ones((40, 40), np.float32)
    m = np.zeros((2, 40, 40), np.uint8)
    m[0, 0:3, 0:3] = 1  # corner: leaves the canvas at 45 degrees
    m[1, 18:23, 15:25] = 1  # centre: stays
    r = KaryoRecord(img, masks_to_boxes(m), [3, 5], m, centromeres=[[1, 1], [20, 20]], p_dir=[[1, 0], [0, 1]])
    out = FreeRotation(angle=45.0, expand=False)(r)
    assert out.image.shape == (40, 40)
    assert out.labels.tolist() == [5] and out.masks.shape == (1, 40, 40) and out.centromeres.shape == (1, 2)
    _check_aligned(out, 0)


def test_random_scale_and_resize_longest(spread):
    r = RandomScale(2.0, 2.0)(spread, np.random.default_rng(0))
    assert r.image.shape == (600, 720)
    np.testing.assert_allclose(r.centromeres, (spread.centromeres + 0.5) * 2 - 0.5, atol=1e-4)
    a0 = spread.masks.reshape(len(spread), -1).sum(1)
    np.testing.assert_allclose(r.masks.reshape(len(r), -1).sum(1), 4 * a0, rtol=1e-6)
    _check_aligned(r, 0)
    s = ResizeLongest(180)(spread)
    assert s.image.shape == (150, 180) and len(s) == len(spread)
    _check_aligned(s)
    assert ResizeLongest(1000)(spread).image.shape == spread.image.shape  # no upscaling by default


def test_photometric_touch_image_only(spread):
    rng = np.random.default_rng(2)
    same = BrightnessContrastGamma(0, 0, 0)(spread, rng)
    np.testing.assert_allclose(same.image, spread.image, atol=1e-6)
    for t in (BrightnessContrastGamma(0.2, 0.5, 0.5), GaussianBlur(1.0, 2.0), GaussianNoise(0.05, 0.1)):
        r = t(spread, rng)
        assert r.image.shape == spread.image.shape and 0 <= r.image.min() and r.image.max() <= 1
        assert not np.array_equal(r.image, spread.image)
        for f in FIELDS[1:]:
            np.testing.assert_array_equal(getattr(r, f), getattr(spread, f))


def test_compose_probabilities(spread):
    rng = np.random.default_rng(0)
    _equal(Compose([HorizontalFlip(), Rot90(1)], [0.0, 0.0])(spread, rng), spread)
    _equal(Compose([HorizontalFlip(), HorizontalFlip()])(spread, rng), spread)
    with pytest.raises(ValueError):
        Compose([HorizontalFlip()], [0.5, 0.5])
    with pytest.raises(ValueError):
        Compose([HorizontalFlip()], [1.5])


def test_default_train_transforms(spread):
    t = default_train_transforms(max_side=256)
    for seed in range(4):
        r = t(spread, np.random.default_rng(seed))
        assert max(r.image.shape) <= 256 and len(r) == len(spread)
        _check_aligned(r)


# ---------------------------------------------------------------------------------------------- annotated boxes
def _annotated(margin: float = 3.0) -> KaryoRecord:
    """Two rods with derived-style tight masks and annotated boxes ``margin`` px outside them."""
    from datasets.derive_masks import box_margin

    h, w = 60, 80
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 10:40, 10:18] = 1
    masks[1, 20:30, 40:70] = 1
    m = np.array([-margin, -margin, margin, margin], np.float32)
    boxes = masks_to_boxes(masks) + m
    boxes[1, 2] += 2.0  # annotators are not exact: this box stands out 5 px on its right
    rec = KaryoRecord(image=np.ones((h, w), np.float32), boxes=boxes, labels=np.array([1, 2]), masks=masks)
    rec.meta["box_margin"] = box_margin(rec.boxes, rec.masks)
    return rec.validate()


def test_box_margin_is_the_median_outward_distance():
    from datasets.derive_masks import box_margin

    rec = _annotated(3.0)
    assert rec.meta["box_margin"] == 3.0  # 7 sides at 3 px, one at 5 px
    assert box_margin(np.zeros((0, 4), np.float32), np.zeros((0, 5, 5), np.uint8)) == 0.0
    # boxes inside their masks' tight boxes give no negative margin
    assert box_margin(masks_to_boxes(rec.masks) + np.array([1, 1, -1, -1], np.float32), rec.masks) == 0.0


def test_transforms_keep_annotated_boxes_around_masks():
    from datasets.transforms import RandomCrop, ScaleBy

    rec = _annotated(3.0)
    flipped = HorizontalFlip()(rec)  # exact: the annotated boxes mirror
    np.testing.assert_allclose(flipped.boxes[:, [0, 2]], 80 - rec.boxes[:, [2, 0]])
    half = ScaleBy(0.5)(rec)  # exact: the annotated boxes scale, and so does the margin
    np.testing.assert_allclose(half.boxes, rec.boxes * 0.5)
    assert half.meta["box_margin"] == pytest.approx(1.5)
    turned = FreeRotation(angle=90.0)(rec)  # recomputed: the masks' tight boxes grown by the margin
    np.testing.assert_allclose(turned.boxes, masks_to_boxes(turned.masks) + np.array([-3, -3, 3, 3]), atol=1e-5)
    crop = RandomCrop(32)(rec, None)  # centre window x 24..56, y 14..46: the boxes move and are clipped
    assert crop.meta["crop_offset"] == (24, 14)
    np.testing.assert_allclose(crop.boxes, np.clip(rec.boxes[1] - [24, 14, 24, 14], 0, 32)[None])
    # without an annotation margin, boxes are the masks' tight boxes as before
    plain = rec.copy()
    del plain.meta["box_margin"]
    np.testing.assert_allclose(ScaleBy(0.5)(plain).boxes, masks_to_boxes(ScaleBy(0.5)(plain).masks))


def test_voc_records_carry_the_annotation_margin(tmp_path):
    import cv2

    from datasets.voc import VOCDataset

    (tmp_path / "JEPG").mkdir()
    (tmp_path / "annotations").mkdir()
    img = np.full((60, 80), 230, np.uint8)
    img[10:40, 10:18] = 60
    cv2.imwrite(str(tmp_path / "JEPG" / "a.jpg"), img)
    (tmp_path / "annotations" / "a.xml").write_text(
        "<annotation><size><width>80</width><height>60</height></size><object><name>1</name><bndbox>"
        "<xmin>6</xmin><ymin>6</ymin><xmax>22</xmax><ymax>44</ymax></bndbox></object></annotation>"
    )
    rec = VOCDataset(tmp_path, "all", val_fraction=0.0)[0]
    tight = masks_to_boxes(rec.masks)[0]
    assert rec.meta["box_margin"] == pytest.approx(np.median(np.abs(rec.boxes[0] - tight)))
    assert rec.meta["box_margin"] > 0


def test_scale_crop_matches_scale_then_crop_in_size_and_keeps_alignment(spread):
    from datasets.transforms import ScaleCrop

    rng = np.random.default_rng(0)
    for _ in range(5):
        out = ScaleCrop(0.5, 96)(spread, rng)
        assert out.image.shape == (96, 96)
        assert out.meta["resize_factor"] == pytest.approx(0.5, rel=0.02)
        _check_aligned(out, tol_px=2)
    # the jitter draws factors inside [lo, hi] x factor
    fs = [ScaleCrop(0.5, 64, jitter=(0.5, 2.0))(spread, rng).meta["resize_factor"] for _ in range(20)]
    assert 0.24 <= min(fs) and max(fs) <= 1.01 and max(fs) / min(fs) > 1.5
    with pytest.raises(ValueError, match="jitter"):
        ScaleCrop(0.5, 64, jitter=(2.0, 1.0))


@pytest.mark.parametrize("name", ["LocalContrast", "Sharpen", "JpegQuality"])
def test_lab_photometric_transforms_touch_only_the_image(spread, name):
    import datasets.transforms as T

    out = getattr(T, name)()(spread, np.random.default_rng(1))
    assert out.image.dtype == np.float32 and out.image.shape == spread.image.shape
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert not np.array_equal(out.image, spread.image)
    np.testing.assert_array_equal(out.masks, spread.masks)
    np.testing.assert_array_equal(out.boxes, spread.boxes)


def test_lab_augment_pipeline_and_its_preconditions(spread):
    from datasets.transforms import detector_transforms

    train, val = detector_transforms(fixed_scale=0.5, crop_size=96, lab_augment=True, scale_jitter=(0.8, 1.25))
    assert val is None
    out = train(spread, np.random.default_rng(3))
    out.validate()
    assert max(out.image.shape) <= 130  # a 96 px crop, maybe turned by the free rotation
    with pytest.raises(ValueError, match="lab_augment needs fixed_scale"):
        detector_transforms(fixed_scale=0.5, lab_augment=True)


def _rods(n_extra_touching: bool = False) -> KaryoRecord:
    """Three isolated dark rods (6 px wide) on a light slide, masks exact."""
    img = np.full((120, 120), 0.9, np.float32)
    masks = np.zeros((3, 120, 120), np.uint8)
    masks[0, 10:50, 20:26] = 1
    masks[1, 70:110, 20:26] = 1
    masks[2, 40:46, 60:100] = 1
    if n_extra_touching:
        masks[2, 40:46, 26:60] = 1  # the third reaches the first: none of the two is isolated
    for m in masks:
        img[m.astype(bool)] = 0.45
    return KaryoRecord(image=img, boxes=masks_to_boxes(masks), labels=np.array([1, 2, 3]), masks=masks)


@pytest.mark.parametrize("cross", [1.0, 0.0])
def test_contact_paste_lays_a_copy_across_or_against_another_with_exact_masks(cross):
    from datasets.contacts import MAX_SHARED, ContactPaste

    rec = _rods()
    out = ContactPaste(1, p=1.0, cross=cross)(rec, np.random.default_rng(5))
    out.validate()
    assert len(out) == 4 and np.array_equal(out.masks[:3], rec.masks)  # the others' masks are unchanged
    new = out.masks[3].astype(bool)
    assert abs(int(new.sum()) - 240) <= 24 and out.labels[3] in rec.labels  # a copy of a 240-px rod, turned
    # the image changes only under the pasted chromosome and its soft edge, never lighter, and the overlap is
    # darker than either
    import cv2

    near = cv2.dilate(new.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert np.array_equal(out.image[~near], rec.image[~near]) and (out.image <= rec.image + 1e-6).all()
    shared = new & rec.masks.astype(bool).any(0)
    if cross:
        assert shared.any() and shared.sum() <= MAX_SHARED * 240
        assert np.median(out.image[shared]) == pytest.approx(0.225, abs=0.01)  # 0.9 x (0.45 / 0.9)^2
    else:
        # touching: a rim of at most a few pixels' width belongs to both, and the two meet
        grown = cv2.dilate(new.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (grown & rec.masks.astype(bool).any(0)).any() and shared.sum() <= 3 * 8
    # the same seed gives the same record; a record whose chromosomes all touch gets nothing
    again = ContactPaste(1, p=1.0, cross=cross)(rec, np.random.default_rng(5))
    assert np.array_equal(again.image, out.image) and np.array_equal(again.masks, out.masks)
    crowded = _rods(n_extra_touching=True)
    crowded = crowded.select([0, 2])
    assert len(ContactPaste(2, p=1.0)(crowded, np.random.default_rng(0))) == 2


def test_contact_paste_in_the_lab_pipeline_and_its_preconditions(spread):
    from datasets.contacts import ContactPaste
    from datasets.transforms import detector_transforms

    train, _ = detector_transforms(fixed_scale=0.5, crop_size=128, lab_augment=True, contact_paste=2)
    assert any(isinstance(t, ContactPaste) for t in train.transforms)
    train(spread, np.random.default_rng(1)).validate()
    with pytest.raises(ValueError, match="contact_paste needs lab_augment"):
        detector_transforms(fixed_scale=0.5, crop_size=128, contact_paste=2)
