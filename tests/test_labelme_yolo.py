"""LabelMe and YOLO loaders on small hand-made files with known answers."""

from __future__ import annotations

import base64
import json
import warnings

import cv2
import numpy as np
import pytest
import yaml

from datasets.errors import AnnotationError, DataError
from datasets.labelme import LabelMeDataset
from datasets.yolo import YOLODataset, label_path_of

H, W = 20, 40


def _png(path, h=H, w=W, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w), value, np.uint8)
    img[0, 0] = 0
    cv2.imwrite(str(path), img)
    return img


# ====================================================================================== LabelMe
def _poly(label, pts, kind="polygon"):
    return {"label": label, "points": pts, "shape_type": kind, "group_id": None, "flags": {}}


def _labelme(path, shapes, image_path="a.png", **extra):
    d = {
        "version": "5.2.1",
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }
    d.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def test_labelme_overlapping_polygons_share_pixels(tmp_path):
    _png(tmp_path / "a.png")
    shapes = [
        _poly("1", [[2, 2], [10, 2], [10, 6], [2, 6]]),
        _poly("X", [[6, 4], [14, 4], [14, 12], [6, 12]]),
        _poly("chromosome", [[20, 2], [24, 2], [24, 5], [20, 5]]),
        _poly("overlap", [[30, 10], [33, 10], [33, 12]]),
        _poly("nucleus", [[0, 0], [3, 0], [3, 3]]),
        _poly("2", [[0, 0], [1, 1]], kind="circle"),
    ]
    _labelme(tmp_path / "a.json", shapes)
    with pytest.warns(UserWarning) as w:
        ds = LabelMeDataset(tmp_path)
    assert "a.json" in str(w[0].message) and "nucleus" in " ".join(str(m.message) for m in w)
    assert ds.skipped == {"unknown label 'nucleus'": 1, "unsupported shape_type 'circle'": 1}
    rec = ds[0]
    assert rec.labels.tolist() == [1, 23, 0, 0]
    a = np.zeros((H, W), np.uint8)
    a[2:7, 2:11] = 1  # fillPoly includes the boundary pixels of integer vertices
    b = np.zeros((H, W), np.uint8)
    b[4:13, 6:15] = 1
    np.testing.assert_array_equal(rec.masks[0], a)
    np.testing.assert_array_equal(rec.masks[1], b)
    assert (rec.masks[0] & rec.masks[1]).sum() == 15  # x 6..10, y 4..6: belongs to both
    np.testing.assert_allclose(rec.boxes[:2], [[2, 2, 11, 7], [6, 4, 15, 13]])
    assert not rec.masks_derived
    assert rec.meta["source"] == "labelme" and rec.meta["image_id"] == "a"


def test_labelme_image_data_rectangle_and_subfolders(tmp_path):
    img = np.zeros((H, W), np.uint8)
    img[5:10, 5:10] = 255
    ok, buf = cv2.imencode(".png", img)
    data = base64.b64encode(buf.tobytes()).decode()
    _labelme(
        tmp_path / "sub" / "b.json",
        [_poly("Y", [[12, 8], [4, 3]], kind="rectangle")],
        image_path="missing.png",
        imageData=data,
    )
    rec = LabelMeDataset(tmp_path)[0]
    np.testing.assert_allclose(rec.image, img / 255.0)
    assert rec.labels.tolist() == [24] and rec.masks_derived
    assert rec.masks[0].sum() == 8 * 5 and rec.masks[0][3:8, 4:12].all()
    assert rec.meta["image_id"] == "sub/b"


def test_labelme_missing_images_and_size_mismatch(tmp_path):
    _png(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly("3", [[1, 1], [5, 1], [5, 5]])])
    _labelme(tmp_path / "b.json", [], image_path="gone.png")
    with pytest.warns(UserWarning, match="gone.png"):
        ds = LabelMeDataset(tmp_path)
    assert len(ds) == 1 and sum(ds.skipped.values()) == 1
    (tmp_path / "a.png").unlink()
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no labelme samples"):
        LabelMeDataset(tmp_path)
    _png(tmp_path / "c.png", h=H + 2)
    _labelme(tmp_path / "c.json", [], image_path="c.png")
    with pytest.warns(UserWarning):
        ds = LabelMeDataset(tmp_path)
    with pytest.raises(AnnotationError, match="do not match the image") as ei:
        ds[0]
    assert "c.json" in str(ei.value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ('{"shapes": [{"label": "1", "points": [[1, 2], [3', "truncated JSON"),
        ('{"imagePath": "a.png"}', "'shapes'"),
        ('{"shapes": {}, "imagePath": "a.png"}', "'shapes' must be a list"),
        ('{"shapes": [{"label": "1", "points": "1,2"}], "imagePath": "a.png"}', "'points'"),
        (
            '{"shapes": [{"label": "1", "points": [[1, 2], [3, 4]], "shape_type": "rectangle", '
            '"extra": 0}, {"label": "1", "points": [[1, 2]], "shape_type": "rectangle"}], "imagePath": "a.png"}',
            "rectangle needs 2 points",
        ),
    ],
)
def test_labelme_malformed_raises_naming_the_file(tmp_path, text, problem):
    _png(tmp_path / "a.png")
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(AnnotationError, match=problem) as ei:
        LabelMeDataset(tmp_path)
    assert "bad.json" in str(ei.value)


# ====================================================================================== YOLO
#: class names sorted as strings, as some exports write them
SORTED_NAMES = sorted([str(i) for i in range(1, 23)] + ["X", "Y"])


def _yolo(root, labels: dict[str, str], names=SORTED_NAMES, extra=None, sub="train"):
    root.mkdir(parents=True, exist_ok=True)
    y = {"names": names, "nc": len(names)} | (extra or {})
    (root / "data.yaml").write_text(yaml.safe_dump(y))
    for stem, text in labels.items():
        _png(root / "images" / sub / f"{stem}.png")
        if text is not None:
            lp = root / "labels" / sub / f"{stem}.txt"
            lp.parent.mkdir(parents=True, exist_ok=True)
            lp.write_text(text)
    return root


def test_yolo_string_sorted_names_map_by_name(tmp_path):
    assert SORTED_NAMES[:3] == ["1", "10", "11"] and SORTED_NAMES[11] == "2" and SORTED_NAMES[21] == "9"
    text = "\n".join(
        [
            "1 0.5 0.5 0.25 0.5",  # names[1] = '10' -> chromosome 10; box x 15..25, y 5..15
            "21 0.1 0.1 0.1 0.1",  # names[21] = '9' -> chromosome 9
            "22 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5",  # names[22] = 'X' polygon (4,2)-(12,10)
            "11 0.8 0.8 0.1 0.2",  # names[11] = '2'
            "",
        ]
    )
    ds = YOLODataset(_yolo(tmp_path, {"a": text}), use_yaml_splits=False)
    assert ds.class_ids[1] == 10 and ds.class_ids[21] == 9 and ds.class_ids[23] == 24
    rec = ds[0]
    assert rec.labels.tolist() == [10, 9, 23, 2]
    np.testing.assert_allclose(rec.boxes[0], [15, 5, 25, 15])
    assert rec.masks[0].sum() == 100 and rec.masks[0][5:15, 15:25].all()
    poly = np.zeros((H, W), np.uint8)
    poly[2:11, 4:13] = 1
    np.testing.assert_array_equal(rec.masks[2], poly)
    np.testing.assert_allclose(rec.boxes[2], [4, 2, 13, 11])
    assert rec.masks_derived and rec.meta["image_id"] == "images/train/a"
    assert ds.skipped == {}


def test_yolo_names_as_dict_and_flat_layout(tmp_path):
    names = {0: "chromosome", 1: 7, 2: "Y", 3: "junk"}
    root = tmp_path / "d"
    root.mkdir()
    (root / "data.yaml").write_text(yaml.safe_dump({"names": names}))
    _png(root / "images" / "x.png")
    (root / "labels").mkdir()
    (root / "labels" / "x.txt").write_text(
        "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n2 0.2 0.2 0.1 0.1\n3 0.5 0.5 0.1 0.1\n"
    )
    assert label_path_of(root / "images" / "x.png") == root / "labels" / "x.txt"
    with pytest.warns(UserWarning, match="junk"):
        ds = YOLODataset(root)
    assert ds[0].labels.tolist() == [0, 7, 24]
    assert ds.skipped == {"class 3 ('junk') is not a chromosome": 1}


def test_yolo_bad_lines_are_counted_and_clipped(tmp_path):
    text = "\n".join(
        [
            "0 1.1 0.5 0.4 0.2",  # x 0.9..1.3 -> clipped to 0.9..1.0: kept, box x 36..40
            "0 1.5 0.5 0.2 0.2",  # x 1.4..1.6 -> empty once clipped: skipped
            "30 0.5 0.5 0.1 0.1",  # class index outside names
            "3 0.5 0.5",  # line 4: wrong number of values
            "a b c d e",  # line 5: not numbers
            "2.5 0.5 0.5 0.1 0.1",  # line 6: non-integer class
            "5 0.1 0.1 0.2 0.2 0.3 0.3",  # collinear polygon: zero area
        ]
    )
    with pytest.warns(UserWarning) as w:
        ds = YOLODataset(_yolo(tmp_path, {"a": text}), use_yaml_splits=False)
    msgs = " ".join(str(m.message) for m in w)
    assert "a.txt" in msgs and "line 4" in msgs and "line 5" in msgs and "line 6" in msgs
    assert sum(ds.skipped.values()) == 6
    assert ds.skipped["class index 30 outside names (0..23)"] == 1
    assert ds.skipped["degenerate box (empty once clipped to the image)"] == 1
    assert ds.skipped["degenerate polygon (zero area once clipped to the image)"] == 1
    rec = ds[0]
    assert rec.labels.tolist() == [1]
    np.testing.assert_allclose(rec.boxes[0], [36, 8, 40, 12])


def test_yolo_missing_label_file_gives_empty_record(tmp_path):
    with pytest.warns(UserWarning, match="without a label file"):
        ds = YOLODataset(_yolo(tmp_path, {"a": None, "b": ""}), use_yaml_splits=False)
    assert ds.images_without_labels == 1
    recs = [ds[i] for i in range(len(ds))]
    assert [len(r) for r in recs] == [0, 0]
    assert recs[0].masks.shape == (0, H, W) and recs[0].meta["annotation"] is None


def test_yolo_yaml_splits_and_hash_splits(tmp_path):
    root = tmp_path / "ds"
    _yolo(
        root,
        {f"t{i}": "0 0.5 0.5 0.2 0.2" for i in range(4)},
        sub="train",
        extra={"train": "images/train", "val": "images/val"},
    )
    _yolo(root, {"v0": "23 0.5 0.5 0.2 0.2"}, sub="val", extra={"train": "images/train", "val": "images/val"})
    val = YOLODataset(root, "val")
    assert [it["id"] for it in val.items] == ["images/val/v0"] and val.split == "val"
    assert val[0].labels.tolist() == [24]
    assert len(YOLODataset(root, "train")) == 4
    assert len(YOLODataset(root, "all")) == 5
    with pytest.raises(DataError, match="no 'test'"):
        YOLODataset(root, "test")
    tr = YOLODataset(root, "train", use_yaml_splits=False, val_fraction=0.4)
    va = YOLODataset(root, "val", use_yaml_splits=False, val_fraction=0.4)
    assert len(tr) + len(va) == 5 and len(va) == 2


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("names: [1, 2\n", "invalid YAML"),
        ("nc: 2\n", "'names'"),
        ("names: [a, b]\nnc: 3\n", "nc=3"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_yolo_malformed_yaml_raises_naming_the_file(tmp_path, text, problem):
    _png(tmp_path / "images" / "a.png")
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(AnnotationError, match=problem) as ei:
        YOLODataset(tmp_path)
    assert "data.yaml" in str(ei.value)


def test_yolo_unreadable_label_file_and_missing_yaml(tmp_path):
    root = _yolo(tmp_path / "r", {"a": "0 0.5 0.5 0.1 0.1"})
    (root / "labels" / "train" / "a.txt").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(AnnotationError, match="not a UTF-8") as ei:
        YOLODataset(root)
    assert "a.txt" in str(ei.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="data.yaml not found"):
        YOLODataset(tmp_path / "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="does not exist"):
            YOLODataset(tmp_path / "nowhere")
