"""COCO loader and writer on small hand-made files with known answers."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from datasets.coco import COCODataset, encode_mask, records_to_coco, records_to_coco_results
from datasets.errors import AnnotationError, DataError
from datasets.io import atomic_write_json
from datasets.record import KaryoRecord, masks_to_boxes

H, W = 20, 30


def _write_image(path, h=H, w=W, value=200):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w), value, np.uint8))


def _cats(names):
    return [{"id": i, "name": n} for i, n in names]


def _coco(tmp_path, anns, cats=None, images=None, name="annotations.json", image_files=("a.png",)):
    for fn in image_files:
        _write_image(tmp_path / "images" / fn)
    data = {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "annotations": anns,
        "categories": cats if cats is not None else _cats([(1, "1"), (2, "X"), (3, "A3"), (7, "chr7")]),
    }
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def _rect(x1, y1, x2, y2):
    m = np.zeros((H, W), np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def _uncompressed(m):
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros)."""
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def test_polygon_and_both_rle_kinds_decode_exactly(tmp_path):
    m_unc = _rect(10, 2, 14, 9)
    m_cmp = _rect(20, 10, 28, 18)
    anns = [
        # polygon of the square [2,6]x[3,8]: pycocotools fills pixels 2..5 x 3..7 (known from its rasteriser)
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 3, 6, 3, 6, 8, 2, 8]], "bbox": [2, 3, 4, 5]},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _uncompressed(m_unc)},
        {"id": 3, "image_id": 1, "category_id": 3, "segmentation": encode_mask(m_cmp), "bbox": [20, 10, 8, 8]},
        {"id": 4, "image_id": 1, "category_id": 7, "bbox": [0, 15, 5, 3]},
    ]
    ds = COCODataset(_coco(tmp_path, anns))
    assert len(ds) == 1 and ds.skipped == {}
    rec = ds[0]
    assert rec.labels.tolist() == [1, 23, 3, 7]
    assert rec.masks.shape == (4, H, W)
    from pycocotools import mask as mu

    poly = mu.decode(mu.merge(mu.frPyObjects([[2.0, 3, 6, 3, 6, 8, 2, 8]], H, W)))
    np.testing.assert_array_equal(rec.masks[0], poly)
    assert poly[3:8, 2:6].all() and poly.sum() == 20
    np.testing.assert_array_equal(rec.masks[1], m_unc)
    np.testing.assert_array_equal(rec.masks[2], m_cmp)
    np.testing.assert_array_equal(rec.masks[3], _rect(0, 15, 5, 18))
    assert rec.masks_derived  # one instance had a box only
    np.testing.assert_allclose(rec.boxes[0], [2, 3, 6, 8])
    np.testing.assert_allclose(rec.boxes[1], [10, 2, 14, 9])  # no bbox: tight box of the mask
    np.testing.assert_allclose(rec.boxes[3], [0, 15, 5, 18])
    assert rec.meta["source"] == "coco" and rec.meta["image_id"] == "1"
    assert rec.centromeres is None and rec.p_dir is None


def test_autokary_bad_labels_skipped_with_exact_counts(tmp_path):
    good = {"image_id": 1, "segmentation": encode_mask(_rect(1, 1, 5, 5))}
    anns = (
        [{**good, "id": i, "category_id": 1} for i in range(3)]
        + [{**good, "id": 10 + i, "category_id": -1} for i in range(4)]
        + [{**good, "id": 20 + i, "category_id": 119} for i in range(2)]
        + [{**good, "id": 30, "category_id": 50}]  # a category that names no chromosome
        + [{"id": 40, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 4]}]  # degenerate box
        + [{"id": 41, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 2, 2]]}]  # 2-point polygon
    )
    cats = _cats([(1, "1"), (50, "nucleus")])
    with pytest.warns(UserWarning) as rec_w:
        ds = COCODataset(_coco(tmp_path, anns, cats=cats))
    assert ds.skipped["category_id -1 is not among the categories"] == 4
    assert ds.skipped["category_id 119 is not among the categories"] == 2
    assert ds.skipped["category_id 50 is not a chromosome class"] == 1
    assert sum(ds.skipped.values()) == 9
    text = " ".join(str(w.message) for w in rec_w)
    assert "annotations.json" in text and "-1" in text and "119" in text
    rec = ds[0]
    assert rec.labels.tolist() == [1, 1, 1]


def test_agnostic_and_id_fallback_categories(tmp_path):
    m = encode_mask(_rect(1, 1, 5, 5))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "segmentation": m},
        {"id": 2, "image_id": 1, "category_id": 9, "segmentation": m},
    ]
    cats = _cats([(5, "chromosome"), (9, "class_9")])
    with pytest.warns(UserWarning, match="ids used as classes"):
        ds = COCODataset(_coco(tmp_path, anns, cats=cats))
    assert ds[0].labels.tolist() == [0, 9]


def _record(rng_seed=0, derived=False):
    img = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    masks = np.stack([_rect(1, 1, 6, 9), _rect(4, 5, 12, 8), _rect(20, 2, 29, 19)])
    masks[0, 1, 1] = 0  # not a plain rectangle
    boxes = masks_to_boxes(masks)
    return KaryoRecord(
        image=img,
        boxes=boxes,
        labels=np.array([1, 23, 24]),
        masks=masks if not derived else None,
        centromeres=np.array([[3, 4], [np.nan, np.nan], [24.5, 10]], np.float32),
        p_dir=np.array([[0, -1], [np.nan, np.nan], [1, 0]], np.float32),
        meta={"karyotype": "46,XY", "sex": "XY"},
    )


def test_write_then_load_round_trip(tmp_path):
    rec = _record()
    _write_image(tmp_path / "images" / "s1.png")
    out = tmp_path / "annotations.json"
    atomic_write_json(out, records_to_coco([rec], ["s1.png"]))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]][-2:] == ["X", "Y"]
    assert data["categories"][0]["supercategory"] == "A" and data["categories"][22]["supercategory"] == "C"
    assert isinstance(data["annotations"][0]["segmentation"]["counts"], str)
    assert data["annotations"][0]["area"] == float(rec.masks[0].sum())
    assert "centromere" not in data["annotations"][1]
    back = COCODataset(tmp_path)[0]
    np.testing.assert_array_equal(back.masks, rec.masks)
    np.testing.assert_array_equal(back.labels, rec.labels)
    np.testing.assert_allclose(back.boxes, rec.boxes)
    np.testing.assert_allclose(back.centromeres, rec.centromeres)
    np.testing.assert_allclose(back.p_dir, rec.p_dir)
    assert not back.masks_derived
    assert back.meta["karyotype"] == "46,XY" and back.meta["sex"] == "XY"


def test_a_file_updated_image_by_image(tmp_path):
    """records_to_coco's image ids, per-image keys and rounding, merged by coco_document (as the review app does)."""
    from datasets.coco import coco_document

    rec = _record()
    rec.boxes = rec.boxes + np.float32(0.123456)
    rec.p_dir = np.array([[0.6, -0.8], [np.nan, np.nan], [1 / 3, 2 / 3]], np.float32)
    first = records_to_coco([rec], ["a.png"])
    part = records_to_coco([rec], ["b.png"], image_ids=[7], image_info=[{"reviewer": "ana"}], decimals=2)
    assert part["images"] == [
        {"id": 7, "file_name": "b.png", "width": W, "height": H, "karyotype": "46,XY", "sex": "XY", "reviewer": "ana"}
    ]
    a = part["annotations"][0]
    assert a["image_id"] == 7 and a["bbox"] == [1.12, 1.12, 5.0, 8.0] and a["p_dir"] == [0.6, -0.8]
    assert part["annotations"][2]["p_dir"] == [0.33333, 0.66667] and a["centromere"] == [3.0, 4.0]
    doc = coco_document(first["images"] + part["images"], first["annotations"] + part["annotations"], info={"x": 1})
    assert list(doc) == ["info", "images", "annotations", "categories"]
    assert [im["id"] for im in doc["images"]] == [1, 7]
    assert [a["id"] for a in doc["annotations"]] == list(range(1, 7))
    assert {c["id"] for c in doc["categories"]} == set(range(1, 25))  # no unknown (0) label: no "chromosome"
    atomic_write_json(tmp_path / "annotations.json", doc)
    _write_image(tmp_path / "images" / "a.png")
    _write_image(tmp_path / "images" / "b.png")
    ds = COCODataset(tmp_path)
    assert len(ds) == 2 and ds[1].image_id == "7"
    np.testing.assert_allclose(ds[1].boxes, rec.boxes, atol=0.005)


def test_round_trip_boxes_only_stays_derived(tmp_path):
    rec = _record(derived=True)
    _write_image(tmp_path / "x.png")
    atomic_write_json(tmp_path / "gt.json", records_to_coco([rec], ["x.png"]))
    back = COCODataset(tmp_path / "gt.json")[0]
    assert back.masks_derived
    np.testing.assert_allclose(back.boxes, rec.boxes)
    np.testing.assert_array_equal(back.masks[2], _rect(20, 2, 29, 19))


def test_results_format_scores_perfect_with_cocoeval(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rec = _record()
    gt = COCO()
    gt.dataset = records_to_coco([rec], ["s1.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            pred = rec.copy()
            pred.scores = np.array([0.9, 0.8, 0.7], np.float32)
            res = records_to_coco_results([pred], [1])
            assert [r["score"] for r in res] == pytest.approx([0.9, 0.8, 0.7])
            dt = gt.loadRes(res)
            ev = COCOeval(gt, dt, "segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_annotations_folder_layout_and_group_key(tmp_path):
    (tmp_path / "annotations").mkdir()
    images = [{"id": i, "file_name": f"im{i}.png", "width": W, "height": H, "slide": f"s{i // 2}"} for i in range(6)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 3, 3]} for i in range(6)]
    _coco(
        tmp_path,
        anns,
        images=images,
        name="annotations/instances_all.json",
        image_files=[f"im{i}.png" for i in range(6)],
    )
    tr = COCODataset(tmp_path, "train", group_key="slide", val_fraction=0.34)
    va = COCODataset(tmp_path, "val", group_key="slide", val_fraction=0.34)
    assert len(tr) + len(va) == 6 and len(va) == 2
    slides_tr = {it["group"] for it in tr.items}
    slides_va = {it["group"] for it in va.items}
    assert not slides_tr & slides_va


def test_missing_images_are_counted_then_all_missing_is_an_error(tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}, {"id": 3, "file_name": "gone2.png"}]
    with pytest.warns(UserWarning, match="gone.png"):
        ds = COCODataset(_coco(tmp_path, [], images=images))
    assert len(ds) == 1 and sum(v for k, v in ds.skipped.items() if "missing" in k) == 2
    assert len(ds[0]) == 0 and ds[0].masks.shape == (0, H, W)
    (tmp_path / "images" / "a.png").unlink()
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no coco samples"):
        COCODataset(tmp_path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [', "truncated JSON"),
        ("[1, 2]", "JSON object"),
        ('{"images": [], "categories": []}', "'annotations'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "file_name"),
        (
            '{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "1"}],'
            ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": "1,2,3,4"}]}',
            "bbox",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "1"}],'
            ' "annotations": [{"id": 1, "image_id": 1, "category_id": "1"}]}',
            "category_id must be an integer",
        ),
    ],
)
def test_malformed_files_raise_annotation_error_naming_the_file(tmp_path, text, problem):
    _write_image(tmp_path / "a.png")
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=problem) as ei:
        COCODataset(p)
    assert str(p) in str(ei.value)


def test_bad_segmentation_and_size_mismatch_at_load(tmp_path):
    rle = encode_mask(np.zeros((5, 5), np.uint8))
    p = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle}])
    with pytest.raises(AnnotationError, match="does not match the image size") as ei:
        COCODataset(p)[0]
    assert "annotations.json" in str(ei.value)
    images = [{"id": 1, "file_name": "a.png", "width": W + 1, "height": H}]
    p = _coco(tmp_path, [], images=images)
    with pytest.raises(AnnotationError, match="in the JSON but"):
        COCODataset(p)[0]


def test_empty_decoded_mask_skipped_once(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(np.zeros((H, W), np.uint8))},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": encode_mask(_rect(0, 0, 2, 2))},
    ]
    ds = COCODataset(_coco(tmp_path, anns))
    with pytest.warns(UserWarning, match="empty segmentation"):
        r = ds[0]
    assert len(r) == 1 and r.meta["skipped"] == {"empty segmentation": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ds[0]  # second access: no new warning, count unchanged
    assert ds.skipped["empty segmentation"] == 1


def test_several_json_files_need_ann_file(tmp_path):
    _coco(tmp_path, [], name="one.json")
    _coco(tmp_path, [], name="two.json")
    with pytest.raises(DataError, match="ann_file"):
        COCODataset(tmp_path)
    assert len(COCODataset(tmp_path, ann_file="two.json")) == 1


def test_unknown_labels_round_trip_as_agnostic(tmp_path):
    rec = _record()
    rec.labels[1] = 0
    _write_image(tmp_path / "s.png")
    atomic_write_json(tmp_path / "gt.json", records_to_coco([rec], ["s.png"]))
    from datasets import build_dataset

    back = build_dataset("coco", tmp_path / "gt.json")[0]
    assert back.labels.tolist() == [1, 0, 24]
