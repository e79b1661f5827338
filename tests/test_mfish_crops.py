"""ADIR M-FISH and single-chromosome crop loaders."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import build_dataset
from datasets.crops import CellCropDataset, CropDataset, crop_mask, parse_bioimlab_name
from datasets.errors import DataError, ImageReadError
from datasets.mfish import MFISHDataset, instances_from_label_map, read_label_map
from tests.conftest import FIXTURES, shared_path


# ---------------------------------------------------------------- M-FISH: hand-built label maps
def test_overlap_pixels_belong_to_both_touching_chromosomes():
    lm = np.zeros((20, 30), np.uint8)
    lm[2:18, 5:9] = 7  # a vertical chromosome 7 ...
    lm[8:12, 9:12] = 255  # ... crossing with a chromosome 12 through a 3x4 overlap blob
    lm[8:12, 12:25] = 12
    lm[8:12, 1:5] = 12  # the other arm of 12, on the far side of 7 (touching 7 only)
    masks, labels, dropped = instances_from_label_map(lm, min_area=5)
    assert labels.tolist() == [7, 12, 12] and dropped == 0
    seven, left12, right12 = masks  # components in raster order: the left arm of 12 comes first
    assert seven[8:12, 9:12].all() and right12[8:12, 9:12].all()  # overlap in both it touches
    assert not left12[8:12, 9:12].any()  # the left arm does not touch the overlap blob
    assert seven.sum() == 16 * 4 + 12 and right12.sum() == 4 * 13 + 12 and left12.sum() == 16


def test_small_components_are_dropped_and_counted():
    lm = np.zeros((10, 10), np.uint8)
    lm[1:8, 1:4] = 3  # 21 px
    lm[8, 8] = 5  # 1 px
    masks, labels, dropped = instances_from_label_map(lm, min_area=20)
    assert labels.tolist() == [3] and dropped == 1 and masks[0].sum() == 21


def test_diagonal_pixels_are_one_component_8_connectivity():
    lm = np.zeros((6, 6), np.uint8)
    for i in range(6):
        lm[i, i] = 1
    _, labels, _ = instances_from_label_map(lm, min_area=1)
    assert labels.tolist() == [1]


def test_read_label_map_signed_minus_one_is_overlap(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.zeros((8, 8), np.int16)
    a[2, 2] = -1
    a[3, 3] = 24
    tifffile.imwrite(tmp_path / "xK.tif", a)
    lm = read_label_map(tmp_path / "xK.tif")
    assert lm[2, 2] == 255 and lm[3, 3] == 24 and lm.dtype == np.uint8
    a[4, 4] = 99
    tifffile.imwrite(tmp_path / "yK.tif", a)
    with pytest.raises(ImageReadError, match="99"):
        read_label_map(tmp_path / "yK.tif")


# ---------------------------------------------------------------- M-FISH fixture (real pair)
def test_mfish_fixture_record():
    ds = MFISHDataset(FIXTURES / "mfish")
    assert len(ds) == 1
    rec = ds[0]
    assert rec.meta["group"] == "P11" and rec.meta["karyotype"] == "XY" and rec.meta["sex"] == "XY"
    assert rec.meta["polarity"] == "dark" and rec.meta["inverted"] and not rec.masks_derived
    assert set(rec.labels.tolist()) <= set(range(1, 25)) and {23, 24} <= set(rec.labels.tolist())
    assert 40 <= len(rec) <= 60
    lm = read_label_map(FIXTURES / "mfish" / "P11__XY" / "P1104XYK.tif")
    # every labelled pixel is in a mask of its own class (components under min_area excepted)
    for c in range(1, 25):
        covered = rec.masks[rec.labels == c].any(0) if (rec.labels == c).any() else np.zeros(lm.shape, bool)
        assert (lm == c).sum() - (covered & (lm == c)).sum() < 20 * 3
    # overlap pixels (this map has some) are shared by at least two masks where they touch two chromosomes
    ov = lm == 255
    assert ov.any() and (rec.masks.sum(0)[ov] >= 2).mean() > 0.5
    # inverted DAPI: chromosomes darker than the background
    fg = rec.masks.any(0)
    assert rec.image[fg].mean() < rec.image[~fg].mean()
    raw = MFISHDataset(FIXTURES / "mfish", invert=False)[0]
    np.testing.assert_allclose(raw.image, 1 - rec.image, atol=1e-6)
    assert raw.meta["polarity"] == "bright"


def test_mfish_unreadable_and_unpaired_are_skipped(tmp_path):
    src = FIXTURES / "mfish" / "P11__XY"
    good = tmp_path / "P11__XY"
    shutil.copytree(src, good)
    bad = tmp_path / "A05__21"
    bad.mkdir()
    (bad / "A0501XXD.tif").write_bytes(b"II*\x00garbage")
    shutil.copy(src / "P1104XYK.tif", bad / "A0501XXK.tif")
    (bad / "A0502XXD.tif").write_bytes(cv2.imencode(".tif", np.zeros((5, 5), np.uint8))[1].tobytes())
    with pytest.warns(UserWarning):
        ds = MFISHDataset(tmp_path)
    assert len(ds) == 1
    assert ds.skipped["unreadable image (truncated or corrupt)"] == 1
    assert ds.skipped["no …K.tif class map beside the DAPI image"] == 1


def test_mfish_empty_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no mfish samples"):
        MFISHDataset(tmp_path)


# ---------------------------------------------------------------- crops
@pytest.mark.parametrize(
    "name, expected",
    [
        ("1 10a.bmp", ("1", 10, "a")),
        ("1 10b.bmp", ("1", 10, "b")),
        ("3 23.bmp", ("3", 23, "")),
        ("119 24.bmp", ("119", 24, "")),
        ("12 1A.BMP", ("12", 1, "a")),
        ("1 25a.bmp", None),
        ("1 0a.bmp", None),
        ("1_10a.bmp", None),
        ("foo.bmp", None),
        ("1 10c.bmp", None),
    ],
)
def test_bioimlab_name_parsing(name, expected):
    assert parse_bioimlab_name(name) == expected


def test_bioimlab_fixture_crops():
    ds = CropDataset(FIXTURES / "bioimlab")
    assert len(ds) == 6
    recs = [ds[i] for i in range(len(ds))]
    assert sorted(int(r.labels[0]) for r in recs) == [1, 1, 21, 22, 23, 24]
    for r in recs:
        assert len(r) == 1 and r.meta["group"] == "10" and r.meta["inverted"] and r.meta["polarity"] == "dark"
        m = r.masks[0].astype(bool)
        # BioImLab background is exactly 0 (white after inversion): the mask is every non-background pixel
        raw = cv2.imread(r.meta["path"], cv2.IMREAD_GRAYSCALE)
        assert (m == (raw > 0)).mean() > 0.97
        x1, y1, x2, y2 = r.boxes[0]
        ys, xs = np.nonzero(m)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert r.image[m].mean() < r.image[~m].mean()


def test_bioimlab_cells_one_record_per_cell_with_exact_crops():
    single = CropDataset(FIXTURES / "bioimlab")
    by_file = {Path(single[i].meta["path"]).name: single[i] for i in range(len(single))}
    ds = build_dataset("crops_cells", FIXTURES / "bioimlab", per_row=4, gap=5)
    assert len(ds) == 1
    rec = ds[0]
    assert len(rec) == 6 and rec.meta["group"] == "10" and rec.meta["sex"] == "XY"
    assert sorted(rec.labels.tolist()) == [1, 1, 21, 22, 23, 24]
    assert rec.masks.sum(axis=0).max() == 1  # crops never overlap on the canvas
    for k, f in enumerate(rec.meta["files"]):
        one = by_file[Path(f).name]
        assert int(one.labels[0]) == int(rec.labels[k])
        x1, y1, x2, y2 = (int(v) for v in rec.boxes[k])
        ox1, oy1, ox2, oy2 = (int(v) for v in one.boxes[0])
        assert (x2 - x1, y2 - y1) == (ox2 - ox1, oy2 - oy1)  # same mask size, only moved
        assert rec.masks[k].sum() == one.masks[0].sum()
        assert np.allclose(rec.image[y1:y2, x1:x2], one.image[oy1:oy2, ox1:ox2])
    assert (rec.image[:5] == 1.0).all() and (rec.image[:, :5] == 1.0).all()  # white gap around the crops
    assert rec.image[rec.masks.sum(axis=0) == 0].mean() > 0.99
    assert rec.boxes[:, :2].min() >= 5  # the gap is kept at the border


def test_bioimlab_cells_bad_names_skipped_and_bad_layout_args(tmp_path):
    img = np.zeros((30, 20), np.uint8)
    img[5:25, 8:12] = 200
    (tmp_path / "3").mkdir()
    for name in ("3 1a.bmp", "3 1b.bmp", "notes.bmp"):
        cv2.imwrite(str(tmp_path / "3" / name), img)
    with pytest.warns(UserWarning, match="notes.bmp"):
        ds = CellCropDataset(tmp_path)
    assert len(ds) == 1 and len(ds[0]) == 2 and "sex" not in ds[0].meta
    with pytest.raises(ValueError, match="per_row"):
        CellCropDataset(tmp_path, per_row=0)


def test_crops_by_folder_and_bad_names(tmp_path):
    img = np.zeros((30, 20), np.uint8)
    img[5:25, 8:12] = 200
    for folder, name in (("X", "a.png"), ("7", "b.png"), ("chr21", "c.png"), ("notaclass", "d.png")):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / name), img)
    with pytest.warns(UserWarning, match="d.png"):
        ds = build_dataset("crops", tmp_path)
    assert sorted(int(ds[i].labels[0]) for i in range(len(ds))) == [7, 21, 23]
    assert ds.skipped["file name is not '<cell> <class><a|b>' and folder is not a class name"] == 1
    rec = ds[0]
    assert rec.masks[0].sum() == 80 and rec.boxes[0].tolist() == [8, 5, 12, 25]


def test_crop_mask_dark_on_light_otsu():
    img = np.full((30, 20), 0.9, np.float32) + np.random.default_rng(0).normal(0, 0.02, (30, 20)).astype(np.float32)
    img[5:25, 8:12] = 0.2
    m = crop_mask(img, bright_objects=False)
    assert m[5:25, 8:12].all() and m.sum() <= 80 + 10


def test_truncated_crop_raises_naming_file(tmp_path):
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "4 2a.bmp").write_bytes(b"BM\x00\x01")
    ds = CropDataset(tmp_path)
    with pytest.raises(ImageReadError, match="4 2a.bmp"):
        ds[0]


# ---------------------------------------------------------------- real data
@pytest.mark.realdata
def test_realdata_mfish_samples():
    root = shared_path("mfish")
    with pytest.warns(UserWarning):  # the EX folders have DAPI images without class maps
        ds = MFISHDataset(root)
    assert len(ds) >= 100
    groups = {str(it[0].parent.name)[:3] for it in ds.items}
    assert len(groups) > 10
    for i in (0, len(ds) // 2):
        rec = ds[i]
        assert rec.image.shape == (517, 645) and 30 <= len(rec) <= 80


@pytest.mark.realdata
def test_realdata_bioimlab_samples():
    root = shared_path("bioimlab")
    ds = CropDataset(root, "val", val_fraction=0.2)
    train = CropDataset(root, "train", val_fraction=0.2)
    cells_val = {it[2] for it in ds.items}
    cells_train = {it[2] for it in train.items}
    assert cells_val and cells_train and not cells_val & cells_train
    for i in (0, len(ds) - 1):
        rec = ds[i]
        assert len(rec) == 1 and 1 <= rec.labels[0] <= 24 and rec.masks[0].sum() > 20


@pytest.mark.realdata
def test_realdata_bioimlab_cells_split_matches_single_crops():
    root = shared_path("bioimlab")
    cells = CellCropDataset(root, "val", val_fraction=0.2)
    crops = CropDataset(root, "val", val_fraction=0.2)
    assert {c for c, _ in cells.items} == {it[2] for it in crops.items}
    rec = cells[0]
    assert 40 <= len(rec) <= 47 and rec.meta.get("sex") in ("XX", "XY")
