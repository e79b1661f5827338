"""Pascal-VOC loader (CIL:54816) and masks derived from boxes."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from datasets import build_dataset
from datasets.derive_masks import derive_masks, ellipse_mask
from datasets.errors import AnnotationError, DataError, ImageReadError
from datasets.voc import VOCDataset, parse_voc_xml
from tests.conftest import FIXTURES, shared_path

CIL = FIXTURES / "cil"


def _xml(filename: str, w: int, h: int, objects: list[tuple[str, tuple]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def _rods_image(h: int = 80, w: int = 100) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Light background, two dark vertical rods; returns uint8 image and their exact boxes (x1, y1, x2, y2)."""
    img = np.full((h, w), 235, np.uint8)
    img[10:60, 20:28] = 60
    img[15:70, 60:69] = 70
    return img, [(20, 10, 28, 60), (60, 15, 69, 70)]


def _make_voc(tmp_path, img: np.ndarray, objects, *, stem="im1", size=None, ext=".png", img_dir="JEPG"):
    (tmp_path / img_dir).mkdir(exist_ok=True)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / img_dir / f"{stem}{ext}"), img)
    h, w = img.shape[:2]
    sw, sh = size or (w, h)
    (tmp_path / "annotations" / f"{stem}.xml").write_text(_xml(f"{stem}{ext}", sw, sh, objects))
    return tmp_path


# ---------------------------------------------------------------- derive_masks
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_derive_masks_recovers_rods():
    img, boxes = _rods_image()
    masks = derive_masks(img.astype(np.float32) / 255, np.array(boxes, np.float32))
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        truth = np.zeros(img.shape, np.uint8)
        truth[y1:y2, x1:x2] = 1
        assert _iou(m.astype(bool), truth.astype(bool)) > 0.9


def test_derive_masks_touching_rods_split_between_boxes():
    # an L: a vertical rod and a horizontal rod touching at the corner; boxes overlap there
    img = np.full((60, 60), 0.9, np.float32)
    img[5:50, 10:18] = 0.25  # vertical
    img[42:50, 18:55] = 0.25  # horizontal, touching the vertical one
    boxes = np.array([[10, 5, 18, 50], [16, 42, 55, 50]], np.float32)
    st: dict = {}
    masks = derive_masks(img, boxes, stats=st)
    assert (masks.sum(0) <= 1).all()  # disjoint
    assert st["shared_pixels"] > 0
    v = np.zeros_like(masks[0])
    v[5:50, 10:18] = 1
    hz = np.zeros_like(masks[0])
    hz[42:50, 18:55] = 1
    assert _iou(masks[0].astype(bool), v.astype(bool)) > 0.85
    assert _iou(masks[1].astype(bool), hz.astype(bool)) > 0.85


def test_derive_masks_crossing_rods_each_keep_their_arms():
    img = np.full((80, 80), 0.9, np.float32)
    img[10:70, 36:44] = 0.3  # vertical
    img[36:44, 10:70] = 0.3  # horizontal, crossing in the middle
    boxes = np.array([[36, 10, 44, 70], [10, 36, 70, 44]], np.float32)
    masks = derive_masks(img, boxes)
    # the far ends of each arm belong to the right chromosome
    assert masks[0, 12:30, 38:42].all() and masks[0, 50:68, 38:42].all()
    assert masks[1, 38:42, 12:30].all() and masks[1, 38:42, 50:68].all()
    assert not masks[0, 38:42, 12:30].any() and not masks[1, 12:30, 38:42].any()


def _x_crossing():
    """Two rods crossing in an X, their boxes (4 px outside the rods) nearly the same, and their true masks."""
    img = np.full((100, 100), 0.9, np.float32)
    true = np.zeros((2, 100, 100), np.uint8)
    cv2.line(true[0], (20, 15), (78, 85), 1, 9)
    cv2.line(true[1], (78, 18), (22, 82), 1, 9)
    img[true.any(0)] = 0.3
    boxes = []
    for t in true:
        ys, xs = np.nonzero(t)
        boxes.append((xs.min() - 4, ys.min() - 4, xs.max() + 5, ys.max() + 5))
    return img, np.array(boxes, np.float32), true.astype(bool)


def _ious(masks, true):
    m = masks.astype(bool)
    return [(a & b).sum() / (a | b).sum() for a, b in zip(m, true)]


def test_derive_masks_axis_rule_gives_an_x_crossing_to_both_chromosomes():
    img, boxes, true = _x_crossing()
    nearest = derive_masks(img, boxes)
    assert min(_ious(nearest, true)) < 0.6  # the default rule gives the crossing and an arm to one box
    assert (nearest.sum(0) <= 1).all()
    axis = derive_masks(img, boxes, crossings="axis")
    assert min(_ious(axis, true)) > 0.9
    assert axis[0, 50, 50] and axis[1, 50, 50]  # the crossing belongs to both
    # far along each rod, only its own mask
    assert axis[0, 20, 25] and not axis[1, 20, 25] and axis[1, 78, 26] and not axis[0, 78, 26]


def test_derive_masks_axis_rule_leaves_masks_without_shared_pixels_alone():
    img, boxes = _rods_image()
    img = img.astype(np.float32) / 255
    assert np.array_equal(
        derive_masks(img, np.array(boxes, np.float32)), derive_masks(img, np.array(boxes, np.float32), crossings="axis")
    )
    with pytest.raises(ValueError, match="crossings must be one of"):
        derive_masks(img, np.array(boxes, np.float32), crossings="middle")


def test_voc_crossings_option_reaches_the_derived_masks():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nearest, axis = VOCDataset(CIL)[0], VOCDataset(CIL, crossings="axis")[0]
    assert (nearest.masks.sum(0) <= 1).all()
    assert (axis.masks.sum(0) > 1).any()  # this spread has crossing chromosomes
    same = [np.array_equal(a, b) for a, b in zip(nearest.masks, axis.masks)]
    assert 0 < sum(same) < len(same)
    with pytest.raises(ValueError, match="crossings must be one of"):
        VOCDataset(CIL, crossings="middle")


def test_derive_masks_ellipse_fallback_on_blank_image_is_counted():
    img = np.full((50, 50), 0.8, np.float32)
    boxes = np.array([[10, 10, 30, 40]], np.float32)
    st: dict = {}
    m = derive_masks(img, boxes, stats=st)
    assert st["ellipse_fallback"] == 1
    assert np.array_equal(m[0], ellipse_mask(boxes[0], 50, 50))


def test_derive_masks_bright_objects():
    img, boxes = _rods_image()
    inv = 1 - img.astype(np.float32) / 255
    m_dark = derive_masks(img.astype(np.float32) / 255, np.array(boxes, np.float32))
    m_bright = derive_masks(inv, np.array(boxes, np.float32), dark_objects=False)
    assert np.array_equal(m_dark, m_bright)


def test_derive_masks_46_boxes_on_1000px():
    """Every one of 46 drawn rods gets a non-empty mask inside its box (speed: benchmarks/show_derived_masks.py)."""
    rng = np.random.default_rng(0)
    img = np.full((1000, 1000), 0.9, np.float32)
    boxes = []
    for i in range(46):
        x, y = 30 + (i % 8) * 115, 40 + (i // 8) * 160
        x2, y2 = x + 20 + int(rng.integers(0, 40)), y + 60 + int(rng.integers(0, 60))
        cv2.line(img, (x + 6, y + 6), (x2 - 6, y2 - 6), 0.3, 12)
        boxes.append((x, y, x2, y2))
    masks = derive_masks(img, np.array(boxes, np.float32))
    assert masks.shape == (46, 1000, 1000) and all(m.any() for m in masks)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        ys, xs = np.nonzero(m)
        assert xs.min() >= x1 - 3 and xs.max() < x2 + 3 and ys.min() >= y1 - 3 and ys.max() < y2 + 3  # 3 px margin


# ---------------------------------------------------------------- fixtures (real CIL samples)
def test_cil_fixture_records():
    ds = VOCDataset(CIL)
    assert len(ds) == 2
    for i in range(2):
        rec = ds[i]
        xml = CIL / "annotations" / f"{rec.image_id}.xml"
        n_obj = len(ET.parse(xml).getroot().findall("object"))
        assert len(rec) == n_obj and n_obj >= 43
        assert rec.labels.min() >= 1 and rec.labels.max() <= 24
        assert rec.masks is not None and rec.masks_derived
        assert (rec.masks.sum(0) <= 1).all()
        areas = rec.masks.reshape(len(rec), -1).sum(1)
        assert (areas > 0).all()
        # derived masks cover dark pixels: chromosome darker than the rest of the image
        fg = rec.masks.any(0)
        assert rec.image[fg].mean() < rec.image[~fg].mean() - 0.3
        assert rec.meta["source"] == "voc" and rec.meta["group"] == rec.image_id
        assert rec.meta["karyotype"]["chromosome_number"] == "46"
        assert rec.meta["mask_fallbacks"] == 0


def test_cil_labels_match_xml_names():
    rec = VOCDataset(CIL, derive=False)[0]
    names = [o.findtext("name") for o in ET.parse(rec.meta["annotation"]).getroot().findall("object")]
    from karyogram.labels import id_of

    assert rec.labels.tolist() == [id_of(n) for n in names]
    assert rec.masks is None
    agn = VOCDataset(CIL, derive=False, class_agnostic=True)[0]
    assert (agn.labels == 0).all() and len(agn) == len(rec)


def test_registry_and_split_by_image():
    train = build_dataset("voc", CIL, "train", derive=False, val_fraction=0.5)
    val = build_dataset("voc", CIL, "val", derive=False, val_fraction=0.5)
    ids = {r.image_id for r in (train[0], val[0])}
    assert len(train) == len(val) == 1 and len(ids) == 2


# ---------------------------------------------------------------- bad input
def test_malformed_and_truncated_xml(tmp_path):
    img, boxes = _rods_image()
    root = _make_voc(tmp_path, img, [("A1", boxes[0])])
    xml = root / "annotations" / "im1.xml"
    xml.write_text("<annotation><object><name>A1</name>")  # truncated
    with pytest.raises(AnnotationError, match="im1.xml"):
        VOCDataset(root)[0]
    xml.write_text("this is not xml at all")
    with pytest.raises(AnnotationError, match="malformed"):
        parse_voc_xml(xml)
    xml.write_text("<html></html>")
    with pytest.raises(AnnotationError, match="annotation"):
        parse_voc_xml(xml)


def test_no_objects_gives_empty_record_with_warning(tmp_path):
    img, _ = _rods_image()
    root = _make_voc(tmp_path, img, [])
    with pytest.warns(UserWarning, match="no <object>"):
        rec = VOCDataset(root)[0]
    assert len(rec) == 0 and rec.masks.shape == (0, *img.shape)


def test_unknown_class_is_skipped_and_counted(tmp_path):
    img, boxes = _rods_image()
    root = _make_voc(tmp_path, img, [("A1", boxes[0]), ("Z9", boxes[1]), ("chromosomes", boxes[1])])
    ds = VOCDataset(root, derive=False)
    with pytest.warns(UserWarning, match="Z9"):
        rec = ds[0]
    assert rec.labels.tolist() == [1, 0]  # "chromosomes" = agnostic label 0
    assert ds.skipped["unknown class"] == 1
    assert rec.meta["skipped"] == {"unknown class": 1}


def test_boxes_outside_and_degenerate(tmp_path):
    img, _ = _rods_image()  # 100 x 80
    objs = [
        ("1", (-5, -3, 30, 40)),  # partly outside: clipped
        ("2", (90, 70, 130, 95)),  # partly outside: clipped
        ("3", (120, 10, 150, 40)),  # wholly outside: skipped
        ("X", (30, 30, 30, 50)),  # degenerate: skipped
        ("Y", (40, 50, 35, 60)),  # inverted: skipped
    ]
    root = _make_voc(tmp_path, img, objs)
    ds = VOCDataset(root, derive=False)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        rec = ds[0]
    assert rec.labels.tolist() == [1, 2]
    np.testing.assert_array_equal(rec.boxes, [[0, 0, 30, 40], [90, 70, 100, 80]])
    assert ds.skipped["box outside image"] == 1 and ds.skipped["degenerate box"] == 2
    assert rec.meta["skipped"]["box clipped"] == 2


def test_missing_image_is_skipped_at_index(tmp_path):
    img, boxes = _rods_image()
    root = _make_voc(tmp_path, img, [("1", boxes[0])])
    (root / "annotations" / "orphan.xml").write_text(_xml("orphan.jpg", 10, 10, [("1", (1, 1, 5, 5))]))
    with pytest.warns(UserWarning, match="orphan"):
        ds = VOCDataset(root, derive=False)
    assert len(ds) == 1 and ds.skipped["annotation without an image file"] == 1


def test_only_orphans_is_an_error(tmp_path):
    (tmp_path / "JEPG").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "a.xml").write_text(_xml("a.jpg", 10, 10, []))
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no voc samples"):
        VOCDataset(tmp_path)


def test_size_mismatch_uses_real_image(tmp_path):
    img, boxes = _rods_image()
    root = _make_voc(tmp_path, img, [("1", boxes[0])], size=(200, 160))
    with pytest.warns(UserWarning, match="using the real image size"):
        rec = VOCDataset(root)[0]
    assert rec.image.shape == img.shape and rec.masks.shape == (1, *img.shape)


def test_unreadable_and_truncated_images(tmp_path):
    img, boxes = _rods_image()
    root = _make_voc(tmp_path, img, [("1", boxes[0])], ext=".jpg")
    p = root / "JEPG" / "im1.jpg"
    data = p.read_bytes()
    p.write_bytes(data[:40])  # truncated JPEG
    with pytest.raises(ImageReadError, match="im1.jpg"):
        VOCDataset(root)[0]
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        VOCDataset(root)[0]


@pytest.mark.parametrize("kind", ["rgb", "uint16"])
def test_rgb_and_16bit_images(tmp_path, kind):
    img, boxes = _rods_image()
    if kind == "rgb":
        arr = np.stack([img] * 3, -1)
    else:
        arr = img.astype(np.uint16) * 257
    root = _make_voc(tmp_path, arr, [("1", boxes[0]), ("2", boxes[1])], img_dir="JPEGImages")
    rec = VOCDataset(root)[0]
    assert rec.image.shape == img.shape and rec.image.dtype == np.float32
    np.testing.assert_allclose(rec.image, img / 255.0, atol=2e-3)
    truth = np.zeros(img.shape, bool)
    truth[10:60, 20:28] = True
    assert _iou(rec.masks[0].astype(bool), truth) > 0.9


def test_missing_folders_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        VOCDataset(tmp_path / "nope")
    with pytest.raises(AnnotationError, match="annotation folder"):
        VOCDataset(tmp_path)


# ---------------------------------------------------------------- real data
@pytest.mark.realdata
def test_realdata_cil_index_and_samples():
    root = shared_path("cil54816")
    ds = VOCDataset(root)
    assert len(ds) == 1000
    for i in (0, 500, 999):
        rec = ds[i]
        assert 43 <= len(rec) <= 50
        assert (rec.masks.reshape(len(rec), -1).sum(1) > 0).all()
        assert (rec.masks.sum(0) <= 1).all()
        assert "karyotype" in rec.meta
