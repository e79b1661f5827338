"""Tests of the foundation: labels, the record type, image reading, atomic writes and splits."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from datasets import DataError, ImageReadError, KaryoRecord, build_dataset
from datasets.io import atomic_write, atomic_write_json, read_image, to_grey_float
from datasets.record import boxes_to_masks, masks_to_boxes
from datasets.splits import assign_splits, select_split
from datasets.transforms import RandomCrop
from karyogram.labels import CIL_NAMES, CLASS_NAMES, UnknownClassError, denver_group, id_of, name_of


# ----------------------------------------------------------------------------- labels
def test_class_names_and_cil_names():
    assert len(CLASS_NAMES) == 24 and CLASS_NAMES[0] == "1" and CLASS_NAMES[22:] == ("X", "Y")
    assert CIL_NAMES[:3] == ("A1", "A2", "A3") and CIL_NAMES[3] == "B4" and CIL_NAMES[6] == "C7"
    assert CIL_NAMES[12] == "D13" and CIL_NAMES[15] == "E16" and CIL_NAMES[18] == "F19" and CIL_NAMES[20] == "G21"
    for i, n in enumerate(CIL_NAMES, start=1):
        assert id_of(n) == i
        assert name_of(i) == CLASS_NAMES[i - 1]


@pytest.mark.parametrize(
    "name,cid", [("1", 1), ("22", 22), ("x", 23), ("Y", 24), ("23", 23), ("24", 24), ("chr7", 7), (" G21 ", 21), (5, 5)]
)
def test_id_of_aliases(name, cid):
    assert id_of(name) == cid


@pytest.mark.parametrize("bad", ["Z", "-1", "119", "0", "", "A4", -1, 119, 0, True])
def test_id_of_rejects_unknown(bad):
    with pytest.raises(UnknownClassError):
        id_of(bad)


def test_denver_groups():
    assert [denver_group(i) for i in (1, 4, 6, 13, 16, 19, 21, 23, 24)] == list("ABCDEFGCG")
    assert name_of(0) == "?"
    with pytest.raises(UnknownClassError):
        name_of(25)


# ----------------------------------------------------------------------------- record
def _record(n=2, h=20, w=30):
    masks = np.zeros((n, h, w), np.uint8)
    masks[0, 2:8, 3:10] = 1
    if n > 1:
        masks[1, 10:18, 15:20] = 1
    return KaryoRecord(
        image=np.ones((h, w), np.float32), boxes=masks_to_boxes(masks), labels=np.arange(1, n + 1), masks=masks
    )


def test_record_boxes_and_target():
    rec = _record().validate()
    np.testing.assert_array_equal(rec.boxes, [[3, 2, 10, 8], [15, 10, 20, 18]])
    t = rec.to_target()
    assert t["boxes"].shape == (2, 4) and t["labels"].tolist() == [1, 2]
    assert t["masks"].shape == (2, 20, 30) and t["area"].tolist() == [42.0, 40.0]
    assert rec.to_target(agnostic=True)["labels"].tolist() == [1, 1]
    assert rec.image_tensor().shape == (1, 20, 30)
    assert rec.label_map().max() == 2


def test_record_without_chromosomes_gives_an_empty_target():
    """A spread (or a training crop) with no annotated chromosome is a valid negative: an empty crop and target, not a crash
    (seg_c8 stopped at its second epoch on one: numpy cannot infer the -1 of reshape(0, -1))."""
    empty = _record().select(np.array([False, False]))
    for agnostic in (True, False):
        t = empty.to_target(agnostic=agnostic)
        assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 20, 30)
        assert t["area"].shape == (0,) and t["iscrowd"].shape == (0,)
    cropped = RandomCrop(16)(empty, np.random.default_rng(0))  # the training path: crop, then target
    assert len(cropped) == 0 and cropped.to_target(agnostic=True)["masks"].shape == (0, 16, 16)


def test_record_select_and_validate_errors():
    rec = _record()
    sub = rec.select([1])
    assert len(sub) == 1 and sub.labels.tolist() == [2] and sub.masks.shape == (1, 20, 30)
    assert len(rec.select(np.array([False, False]))) == 0
    bad = rec.copy()
    bad.labels[0] = 119
    with pytest.raises(DataError, match="119"):
        bad.validate()
    bad = rec.copy()
    bad.boxes[0, 2] = bad.boxes[0, 0]
    with pytest.raises(DataError, match="degenerate"):
        bad.validate()


def test_unknown_labels_refused_for_24_class_target():
    rec = _record()
    rec.labels[:] = 0
    with pytest.raises(DataError, match="agnostic"):
        rec.to_target()
    assert rec.to_target(agnostic=True)["labels"].tolist() == [1, 1]


def test_boxes_to_masks_roundtrip():
    boxes = np.array([[1, 2, 5, 7], [0, 0, 3, 3]], np.float32)
    m = boxes_to_masks(boxes, 10, 10)
    np.testing.assert_array_equal(masks_to_boxes(m), boxes)


# ----------------------------------------------------------------------------- images
def test_read_image_8bit_16bit_rgb(tmp_path):
    g8 = np.arange(100, dtype=np.uint8).reshape(10, 10) * 2
    cv2.imwrite(str(tmp_path / "g8.png"), g8)
    np.testing.assert_allclose(read_image(tmp_path / "g8.png"), g8 / 255.0, atol=1e-6)
    g16 = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    np.testing.assert_allclose(read_image(tmp_path / "g16.png"), g16 / 65535.0, atol=1e-6)
    rgb = np.dstack([g8, g8, g8])
    cv2.imwrite(str(tmp_path / "rgb.jpg"), rgb, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert read_image(tmp_path / "rgb.jpg").shape == (10, 10)
    import tifffile

    tifffile.imwrite(tmp_path / "g16.tif", g16)
    np.testing.assert_allclose(read_image(tmp_path / "g16.tif"), g16 / 65535.0, atol=1e-6)


def test_read_image_downscale_warns(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((40, 80), np.uint8))
    with pytest.warns(UserWarning, match="downscaled"):
        img = read_image(tmp_path / "big.png", max_side=20)
    assert img.shape == (10, 20)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_read_image_bad_files(tmp_path, content):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(p)


def test_read_image_truncated_and_missing(tmp_path):
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageReadError, match="trunc.png"):
        read_image(p)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.tif")


def test_to_grey_float_rejects_bad_shapes():
    with pytest.raises(ImageReadError):
        to_grey_float(np.zeros((2, 3, 5, 6)))
    with pytest.raises(ImageReadError, match="NaN"):
        to_grey_float(np.array([[np.nan, 1.0]]))


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_leaves_old_file_on_error(tmp_path):
    p = tmp_path / "out.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write('{"half": ')
            raise RuntimeError("killed")
    assert p.read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [q.name for q in tmp_path.iterdir()] == ["out.json"]
    assert p.stat().st_mode & 0o044, "outputs must be readable by others, like any file a user writes"


# ----------------------------------------------------------------------------- splits
def test_splits_deterministic_and_disjoint():
    groups = [f"cell{i}" for i in range(100)]
    a = assign_splits(groups, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert a == assign_splits(list(reversed(groups)), val_fraction=0.1, test_fraction=0.2, seed=3)
    vals = list(a.values())
    assert vals.count("val") == 10 and vals.count("test") == 20 and vals.count("train") == 70
    assert a != assign_splits(groups, val_fraction=0.1, test_fraction=0.2, seed=4)


def test_test_split_leaves_val_membership_unchanged():
    groups = [f"img{i}" for i in range(1000)]
    before = assign_splits(groups, val_fraction=0.1, seed=0)
    after = assign_splits(groups, val_fraction=0.1, test_fraction=0.1, seed=0)
    val = {g for g, s in before.items() if s == "val"}
    assert val == {g for g, s in after.items() if s == "val"} and len(val) == 100
    test = {g for g, s in after.items() if s == "test"}
    assert len(test) == 100 and all(before[g] == "train" for g in test)  # taken out of the training groups


def test_select_split_by_group_keeps_groups_together():
    items = list(range(30))
    groups = [f"slide{i // 3}" for i in items]
    tr = select_split(items, groups, "train", val_fraction=0.2)
    va = select_split(items, groups, "val", val_fraction=0.2)
    assert sorted(tr + va) == items and len(va) == 6
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    with pytest.raises(ValueError, match="unknown split"):
        select_split(items, groups, "dev")


def test_build_dataset_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("pascal", os.devnull)
