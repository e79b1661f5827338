"""The "axis" crop mode: the image turned to the chromosome's long axis, p arm up, not masked."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from datasets.instances import cache_key, spread_instances
from features.crops import CROP_MODES, CropSpec, axis_crop, make_crops
from models.classifier import ClsConfig


def _bar(angle_deg: float, *, size: int = 160, length: int = 90, width: int = 14):
    """A dark bar on white, centred, turned by ``angle_deg``, with a darker blob at its start end.

    Returns (image, mask, box, centre line from the blob end to the other end).
    """
    img = np.ones((size, size), np.float32)
    c = np.array([size / 2.0, size / 2.0])
    t = np.deg2rad(angle_deg)
    u = np.array([np.cos(t), np.sin(t)])
    a, b = c - u * length / 2.0, c + u * length / 2.0
    mask = np.zeros((size, size), np.uint8)
    cv2.line(mask, tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b), 1, width)
    img[mask > 0] = 0.5
    blob = a + u * 8.0
    cv2.circle(img, tuple(int(round(v)) for v in blob), 5, 0.05, -1)
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    line = np.linspace(a, b, 50).astype(np.float32)
    return img, mask, box, line


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0])
@pytest.mark.parametrize("p_at_start", [True, False])
def test_axis_crop_stands_the_bar_up_with_the_p_end_on_top(angle, p_at_start):
    img, mask, box, line = _bar(angle)
    f = SimpleNamespace(centerline=line if p_at_start else line[::-1], p_at_start=p_at_start)
    crop = axis_crop(img, box, mask, f)
    h, w = crop.shape
    assert h > 2.5 * w  # the long axis runs down the rows
    dark = crop < 0.75
    rows = np.flatnonzero(dark.any(1))
    assert rows[-1] - rows[0] + 1 >= 0.9 * 90  # the whole bar's length
    cols = np.flatnonzero(dark.any(0))
    assert abs((cols[0] + cols[-1]) / 2.0 - (w - 1) / 2.0) <= 2.0  # centred across
    blob_row = np.argwhere(crop < 0.2)[:, 0].mean()
    assert blob_row < h / 3.0  # the p end (the blob's end) on top


def test_axis_crop_shows_the_whole_chromosome_for_a_fragment_of_its_mask():
    """The pixels come from the box, not the mask: half a mask still gives the whole bar, unmasked."""
    img, mask, box, line = _bar(30.0)
    half = mask.copy()
    ys, xs = np.nonzero(half)
    half[ys[xs > np.median(xs)], xs[xs > np.median(xs)]] = 0  # keep one half of the bar
    f = SimpleNamespace(centerline=line, p_at_start=True)
    crop = axis_crop(img, box, half, f, min_width=21.0)
    rows = np.flatnonzero((crop < 0.75).any(1))
    assert rows[-1] - rows[0] + 1 >= 0.9 * 90
    assert crop.shape[1] >= 21  # at least min_width wide
    assert (crop > 0.99).any() and ((crop > 0.4) & (crop < 0.6)).any()  # bar and white background both there


def test_axis_crop_is_the_same_wherever_the_chromosome_lies_and_for_a_bool_mask():
    """The mask's pixels are read over its own extent only (speed): a bar moved within a larger image gives the
    same crop, also when its mask comes as bool."""
    img, mask, box, line = _bar(30.0)
    f = SimpleNamespace(centerline=line, p_at_start=True)
    ref = axis_crop(img, box, mask, f)
    dy, dx = 37, 91
    big = np.ones((img.shape[0] + 80, img.shape[1] + 120), np.float32)
    big[dy : dy + img.shape[0], dx : dx + img.shape[1]] = img
    big_mask = np.zeros(big.shape, bool)
    big_mask[dy : dy + img.shape[0], dx : dx + img.shape[1]] = mask > 0
    g = SimpleNamespace(centerline=line + np.array([dx, dy], np.float32), p_at_start=True)
    moved = axis_crop(big, box + np.array([dx, dy, dx, dy]), big_mask, g)
    np.testing.assert_allclose(moved, ref, atol=1e-4)  # (interpolation weights round a little differently)


def test_axis_crop_of_an_empty_instance_is_empty():
    img, mask, box, line = _bar(0.0)
    f = SimpleNamespace(centerline=np.zeros((0, 2), np.float32), p_at_start=True)
    assert axis_crop(img, box, mask, f).shape == (0, 0)
    f = SimpleNamespace(centerline=line, p_at_start=True)
    assert axis_crop(img, box, np.zeros_like(mask), f).shape == (0, 0)


def test_crop_modes_are_checked_and_keep_the_straight_cache_key():
    assert CROP_MODES == ("straight", "axis")
    with pytest.raises(ValueError, match="crop mode 'bent'"):
        CropSpec(mode="bent")
    with pytest.raises(ValueError, match="crop mode 'bent'"):
        ClsConfig(crop_mode="bent")
    assert ClsConfig.from_dict({"arch": "resnet18"}).crop_mode == "straight"  # checkpoints from before the field
    ds = [SimpleNamespace(image=np.zeros((2, 2)), labels=np.zeros(1), masks=None)]
    assert cache_key(ds, 96, 32) == cache_key(ds, 96, 32, crop_mode="straight")
    assert cache_key(ds, 96, 32, crop_mode="axis") != cache_key(ds, 96, 32)


def test_spread_instances_axis_mode_same_instances_other_pixels():
    from datasets.synthetic import generate_spread

    rec = generate_spread(np.random.default_rng(3), None, "46,XX", size=(384, 384), image_id="ax")
    a, _ = spread_instances(rec, 48, 16)
    b, _ = spread_instances(rec, 48, 16, crop_mode="axis")
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_allclose(a["features"], b["features"])
    assert b["crops"].shape == a["crops"].shape
    assert not np.array_equal(a["crops"], b["crops"])
    # unmasked: an axis crop keeps the spread's background grey around the chromosome, a straight one is
    # white outside the mask; both are dark along the middle
    assert (b["crops"][:, :, [0, -1]] < 250).mean() > (a["crops"][:, :, [0, -1]] < 250).mean()


def test_both_modes_leave_out_the_same_degenerate_instances(monkeypatch):
    """An instance without a straightened crop has no axis crop either (all white in every spec), so an
    ensemble's modes agree; the karyogram still gets a crop of it (its mask turned upright)."""
    import dataclasses

    import features.crops as fc
    from datasets.synthetic import generate_spread

    rec = generate_spread(np.random.default_rng(5), None, "46,XY", size=(384, 384), image_id="deg")
    real = fc.spread_features

    def no_strip_for_3(image, masks):
        x, infos = real(image, masks)
        infos[3] = dataclasses.replace(
            infos[3], straightened=np.zeros((0, 32), np.float32), straightened_mask=np.zeros((0, 32), np.uint8)
        )
        return x, infos

    monkeypatch.setattr(fc, "spread_features", no_strip_for_3)
    specs = [CropSpec(48, 16, "straight"), CropSpec(48, 16, "axis")]
    made = make_crops(rec.image, rec.masks, specs, boxes=rec.boxes)
    assert made.ok.tolist() == [i != 3 for i in range(len(rec))]
    for s in specs:
        assert (made.fitted[s][3] == 1.0).all() and all(
            (made.fitted[s][i] < 1.0).any() for i in range(len(rec)) if i != 3
        )
    assert made.shown[3].shape[0] > 2 * made.shown[3].shape[1]  # the upright mask


def test_spread_instances_by_mode_measures_once_and_equals_the_single_mode_calls():
    from datasets.instances import spread_instances_by_mode
    from datasets.synthetic import generate_spread

    rec = generate_spread(np.random.default_rng(5), None, "46,XY", size=(384, 384), image_id="bm")
    both, skipped = spread_instances_by_mode(rec, {"straight": (48, 16), "axis": (40, 20)})
    a, sa = spread_instances(rec, 48, 16)
    b, sb = spread_instances(rec, 40, 20, crop_mode="axis")
    assert skipped == sa == sb
    np.testing.assert_array_equal(both["crops_by_mode"]["straight"], a["crops"])
    np.testing.assert_array_equal(both["crops_by_mode"]["axis"], b["crops"])
    for k in ("features", "labels", "lengths", "centromere"):
        np.testing.assert_array_equal(both[k], a[k])
    with pytest.raises(ValueError, match="crop mode 'bent'"):
        spread_instances_by_mode(rec, {"bent": (48, 16)})
