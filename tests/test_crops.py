"""features.crops: the one crop maker of the classifier (training and pipeline), the karyogram and the review app."""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest

from datasets.instances import InstanceDataset, spread_instances_by_mode
from datasets.synthetic import generate_spread
from features.crops import CROP_MODES, MIN_AREA, CropSpec, make_crops, upright_crop
from models.classifier import ClsConfig

SPECS = {"straight": (48, 16), "axis": (40, 20)}


def _rod(angle_deg: float, *, size: int = 200, length: float = 100.0, width: float = 14.0, grey: float = 0.4):
    """A grey ``length`` x ``width`` rod on white, centred, its long axis at ``angle_deg`` from the x axis."""
    img = np.ones((size, size), np.float32)
    mask = np.zeros((size, size), np.uint8)
    rect = ((size / 2.0, size / 2.0), (length, width), float(angle_deg))
    cv2.fillPoly(mask, [cv2.boxPoints(rect).astype(np.int32)], 1)
    img[mask > 0] = grey
    return img, mask


def _with_speck(rec):
    """The record's masks and boxes with a 3x3 speck (under MIN_AREA) added where no chromosome lies."""
    free = np.argwhere(~rec.masks.any(0))
    y, x = (int(v) for v in free[len(free) // 2])
    speck = np.zeros((1, *rec.masks.shape[1:]), np.uint8)
    speck[0, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = 1
    assert 0 < speck.sum() < MIN_AREA
    box = np.array([[max(x - 1, 0), max(y - 1, 0), x + 2, y + 2]], np.float32)
    return np.concatenate([rec.masks, speck]), np.concatenate([rec.boxes, box])


def _pipeline_inputs(monkeypatch, members, image, masks, boxes):
    """What :func:`karyotyping.identify.measure_and_classify` hands the classifiers: (crops by key, features)."""
    import models.classifier as mc
    from karyotyping.identify import measure_and_classify

    seen = {}

    def spy(members_, crops, features=None, **kw):
        seen["crops"], seen["features"] = crops, np.asarray(features)
        return np.full((len(features), 24), 1 / 24, np.float32)

    monkeypatch.setattr(mc, "predict_members", spy)
    found = measure_and_classify(members, image, masks, boxes)
    return found, seen["crops"], seen["features"]


def test_crop_spec_is_the_one_home_of_the_crop_box():
    assert CropSpec() == CropSpec(96, 32, "straight")
    assert ClsConfig().crop_spec == CropSpec()
    for name, attr in (("crop_height", "height"), ("crop_width", "width")):
        assert inspect.signature(InstanceDataset).parameters[name].default == getattr(CropSpec(), attr)
    assert ClsConfig(crop_height=40, crop_width=20, crop_mode="axis").crop_spec == CropSpec(40, 20, "axis")
    with pytest.raises(ValueError, match="crop mode 'bent'"):
        CropSpec(mode="bent")
    with pytest.raises(ValueError, match="at least 1x1"):
        CropSpec(0, 32)


@pytest.mark.parametrize("angle", [0.0, 35.0, 90.0, 150.0])
@pytest.mark.parametrize("mode", CROP_MODES)
def test_a_rod_at_a_known_angle_gives_an_upright_crop_of_the_spec_size_with_the_rod_centred(angle, mode):
    img, mask = _rod(angle)
    spec = CropSpec(96, 32, mode)
    made = make_crops(img, mask[None], [spec])
    crop = made.fitted[spec][0]
    assert crop.shape == (96, 32) and crop.dtype == np.float32 and made.ok.tolist() == [True]
    dark = crop < 0.7
    rows = np.flatnonzero(dark.any(1))
    mid = dark[40:56]  # the rod's middle rows: 15 px across (as rasterised), scaled by about 96 / 100
    assert rows[-1] - rows[0] + 1 > 5 * np.median(mid.sum(1))  # upright: the long axis runs down the rows
    assert 11 <= np.median(mid.sum(1)) <= 16
    cols = np.nonzero(mid)[1]
    assert abs((rows[0] + rows[-1]) / 2.0 - 47.5) <= 1.5 and abs(cols.mean() - 15.5) <= 1.0  # centred
    assert abs(float(np.median(crop[dark])) - 0.4) < 0.05  # the rod's grey
    if mode == "straight":  # trimmed to the mask: the rod fills the box's height
        assert rows[0] <= 1 and rows[-1] >= 94
    # the karyogram's crop: the straightened rod at the image's scale (its turned ends jag a few pixels wider)
    h, w = made.shown[0].shape
    assert 98 <= h <= 106 and 15 <= w <= 24
    assert 0 <= made.centromere_rows[0] <= h - 1


def test_the_training_path_and_the_pipeline_path_get_the_same_crops_and_features(monkeypatch):
    from review.imagery import chromosome_crops

    rec = generate_spread(np.random.default_rng(11), None, "46,XX", size=(384, 384), image_id="same")
    train, skipped = spread_instances_by_mode(rec, SPECS)
    assert not skipped and len(train["labels"]) == len(rec)
    members = [(None, ClsConfig(crop_height=h, crop_width=w, crop_mode=mode)) for mode, (h, w) in SPECS.items()]
    found, crops, features = _pipeline_inputs(monkeypatch, members, rec.image, rec.masks, rec.boxes)
    np.testing.assert_array_equal(features, train["features"])
    for _, cfg in members:
        got = crops[cfg.crop_spec]
        assert got.shape == (len(rec), cfg.crop_height, cfg.crop_width)
        np.testing.assert_array_equal(np.round(got * 255.0).astype(np.uint8), train["crops_by_mode"][cfg.crop_mode])
    # the karyogram (pipeline) and the review app lay out the same crops
    for shown, crop in zip(found.crops, chromosome_crops(rec.image, rec.masks)):
        np.testing.assert_array_equal(shown, crop.image)


def test_a_speck_under_min_area_changes_no_other_instance_on_either_path(monkeypatch):
    """The skew removed: a mask under MIN_AREA pixels does not set the spread's scale (count, ranks, medians, the
    axis crops' width) in the pipeline either, so the other instances' inputs are those the trainer made."""
    rec = generate_spread(np.random.default_rng(12), None, "46,XY", size=(384, 384), image_id="speck")
    n = len(rec)
    masks, boxes = _with_speck(rec)
    specs = [CropSpec(h, w, mode) for mode, (h, w) in SPECS.items()]
    clean = make_crops(rec.image, rec.masks, specs, boxes=rec.boxes)
    specked = make_crops(rec.image, masks, specs, boxes=boxes)
    assert specked.measured.tolist() == [True] * n + [False]
    np.testing.assert_array_equal(specked.features[:n], clean.features)
    assert np.isfinite(specked.features[n]).all()
    for s in specs:
        np.testing.assert_array_equal(specked.fitted[s][:n], clean.fitted[s])
    # the trainer leaves the speck out and keeps the others' arrays as they were
    rec_s = rec.copy()
    rec_s.masks, rec_s.boxes, rec_s.labels = masks, boxes, np.concatenate([rec.labels, [5]])
    train, skipped = spread_instances_by_mode(rec_s, SPECS)
    assert skipped == {"degenerate mask": 1}
    np.testing.assert_array_equal(train["features"], clean.features)
    # the pipeline classifies the speck too, with the others' inputs unchanged
    members = [(None, ClsConfig(crop_height=h, crop_width=w, crop_mode=mode)) for mode, (h, w) in SPECS.items()]
    _, crops, features = _pipeline_inputs(monkeypatch, members, rec.image, masks, boxes)
    assert len(features) == n + 1
    np.testing.assert_array_equal(features[:n], train["features"])
    for s in specs:
        np.testing.assert_array_equal(np.round(crops[s][:n] * 255.0).astype(np.uint8), train["crops_by_mode"][s.mode])


def test_make_crops_of_no_instance_and_of_an_empty_mask():
    img = np.ones((40, 40), np.float32)
    made = make_crops(img, np.zeros((0, 40, 40), np.uint8), [CropSpec(32, 16)])
    assert made.features.shape[0] == 0 and made.fitted[CropSpec(32, 16)].shape == (0, 32, 16) and not made.shown
    made = make_crops(img, np.zeros((1, 40, 40), np.uint8), [CropSpec(32, 16), CropSpec(32, 16, "axis")])
    assert made.ok.tolist() == [False] and made.measured.tolist() == [False]
    assert all((f == 1.0).all() for f in made.fitted.values()) and made.shown[0].size > 0


def test_upright_crop_without_centromere_is_upright_and_white():
    img, mask = _rod(35.0, length=100.0, width=14.0)
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    crop = upright_crop(img, mask, box)[0]
    assert crop.dtype == np.float32 and crop.ndim == 2
    h, w = crop.shape
    assert 95 <= h <= 112 and 12 <= w <= 26  # principal axis vertical, no scaling
    assert crop[0, 0] == 1.0 and crop[-1, -1] == 1.0  # white background
    assert abs(float(crop[h // 2, w // 2]) - 0.4) < 0.05


def test_upright_crop_puts_p_arm_up():
    H, W = 160, 160
    img = np.ones((H, W), np.float32)
    mask = np.zeros((H, W), np.uint8)
    mask[80:90, 20:140] = 1  # horizontal rod, p end at the right (x = 140)
    img[mask > 0] = 0.6
    img[80:90, 130:140] = 0.05  # a dark cap at the p end
    cen = (110.0, 85.0)  # CI = 30 / 120 = 0.25 from the p end
    crop, row = upright_crop(img, mask, centromere=cen, p_dir=(1.0, 0.0))
    h = crop.shape[0]
    dark_rows = np.flatnonzero((crop < 0.2).any(axis=1))
    assert dark_rows.max() < h / 3  # the p end is at the top
    assert row is not None and abs(row - (2 + 30)) <= 2  # pad 2 + 30 px from the p end
    # without p_dir, the centromere alone decides: the short arm goes up
    crop2, row2 = upright_crop(img, mask, centromere=cen)
    assert row2 < crop2.shape[0] / 2
