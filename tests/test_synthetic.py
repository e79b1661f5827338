"""The synthetic metaphase generator: karyotype parsing, determinism, geometry of every instance, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets import build_dataset
from datasets.record import masks_to_boxes
from datasets.synthetic import (
    SyntheticConfig,
    SyntheticDataset,
    generate_spread,
    get_args_parser,
    main,
    parse_karyotype,
)
from karyogram.reference import centromere_indices, relative_lengths

SIZE = (420, 420)


@pytest.fixture(scope="module")
def spread():
    return generate_spread(np.random.default_rng(7), None, "47,XX,+21", size=SIZE, image_id="t7")


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "iscn, n, counts",
    [
        ("46,XY", 46, {23: 1, 24: 1, 1: 2, 21: 2}),
        ("46,XX", 46, {23: 2, 24: 0}),
        ("47,XX,+21", 47, {21: 3, 23: 2}),
        ("47,XY,+13", 47, {13: 3, 24: 1}),
        ("47,XX,+18", 47, {18: 3}),
        ("45,X", 45, {23: 1, 24: 0}),
        ("47,XXY", 47, {23: 2, 24: 1}),
        ("45,XY,-22", 45, {22: 1}),
    ],
)
def test_parse_karyotype(iscn, n, counts):
    k = parse_karyotype(iscn)
    assert len(k.ids) == n
    for cid, c in counts.items():
        assert k.ids.count(cid) == c, (iscn, cid)
    assert k.sex == iscn.split(",")[1]


@pytest.mark.parametrize("bad", ["47,XX", "46,XX,t(9;22)", "XX", "46,XQ", "46,XX,+25", ""])
def test_parse_karyotype_rejects(bad):
    with pytest.raises(ValueError):
        parse_karyotype(bad)


# ---------------------------------------------------------------------------------------------- one spread
def test_determinism():
    a = generate_spread(np.random.default_rng(3), None, "46,XY", size=(300, 340))
    b = generate_spread(np.random.default_rng(3), None, "46,XY", size=(300, 340))
    c = generate_spread(np.random.default_rng(4), None, "46,XY", size=(300, 340))
    for name in ("image", "boxes", "labels", "masks", "centromeres", "p_dir"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)


def test_spread_instances(spread):
    r = spread.validate()
    assert r.image.shape == SIZE and r.image.dtype == np.float32
    assert 0.0 <= r.image.min() and r.image.max() <= 1.0
    assert np.allclose(r.image * 255, np.round(r.image * 255), atol=1e-3)  # 8-bit levels, as the PNG
    assert len(r) == 47 and int((r.labels == 21).sum()) == 3 and int((r.labels == 23).sum()) == 2
    assert r.masks_derived is False
    assert r.meta["karyotype"] == "47,XX,+21" and r.meta["sex"] == "XX" and r.meta["source"] == "synthetic"
    assert r.meta["image_id"] == r.meta["group"] == "t7"
    areas = r.masks.reshape(len(r), -1).sum(1)
    assert (areas > 20).all()
    np.testing.assert_array_equal(r.boxes, masks_to_boxes(r.masks))
    # background light, chromosomes dark
    fg = r.masks.any(0)
    assert np.median(r.image[~fg]) > 0.8 and np.median(r.image[fg]) < 0.6


def test_centromere_inside_mask_and_unit_pdir(spread):
    r = spread
    assert np.isfinite(r.centromeres).all() and np.isfinite(r.p_dir).all()
    xy = np.round(r.centromeres).astype(int)
    assert all(r.masks[i, y, x] for i, (x, y) in enumerate(xy))
    np.testing.assert_allclose(np.linalg.norm(r.p_dir, axis=1), 1.0, atol=1e-5)


def test_pdir_points_to_short_arm(spread):
    """Mask pixels on the p_dir side of the centromere make up about CI of the chromosome."""
    r = spread
    ys, xs = np.mgrid[0 : r.height, 0 : r.width]
    frac = np.zeros(len(r))
    for i in range(len(r)):
        m = r.masks[i] > 0
        v = (xs[m] - r.centromeres[i, 0]) * r.p_dir[i, 0] + (ys[m] - r.centromeres[i, 1]) * r.p_dir[i, 1]
        frac[i] = (v > 0).mean()
    ci = centromere_indices()[r.labels - 1]
    acro = np.isin(r.labels, [13, 14, 15])
    meta = np.isin(r.labels, [1, 3, 19, 20])
    assert frac[acro].mean() < 0.3 < frac[meta].mean()
    assert np.corrcoef(frac, ci)[0, 1] > 0.7


def test_sizes_follow_reference(spread):
    r = spread
    areas = r.masks.reshape(len(r), -1).sum(1).astype(float)
    mean_area = np.array([areas[r.labels == c].mean() for c in range(1, 23)])
    assert np.corrcoef(mean_area, relative_lengths()[:22])[0, 1] > 0.9
    assert mean_area[0] > 2 * mean_area[20]  # chromosome 1 vs 21
    # chromosome 1 about 60-140 px long at the default scale (width ~ 0.14-0.19 of it)
    w = r.meta["width_px"]
    assert 5 <= w <= 30 and 50 <= mean_area[0] / w <= 170


def test_crossing_overlaps_belong_to_both():
    cfg = SyntheticConfig(p_cross=1.0, p_touch=0.0, nuclei_mean=0.0)
    r = generate_spread(np.random.default_rng(1), cfg, "46,XX", size=(380, 380))
    m = r.masks.reshape(len(r), -1).astype(np.int32)
    inter = m @ m.T
    np.fill_diagonal(inter, 0)
    assert inter.sum() > 0  # some pairs cross: their shared pixels are in both masks
    cfg = SyntheticConfig(p_cross=0.0, p_touch=0.0, nuclei_mean=0.0, spread_fill=(0.05, 0.05))
    r = generate_spread(np.random.default_rng(1), cfg, "46,XX", size=(700, 700))
    m = r.masks.reshape(len(r), -1).astype(np.int32)
    inter = m @ m.T
    np.fill_diagonal(inter, 0)
    assert inter.sum() == 0


# ---------------------------------------------------------------------------------------------- dataset
def test_dataset_lazy_deterministic_and_split():
    cfg = SyntheticConfig(image_size=(260, 300))
    ds = SyntheticDataset(None, n=6, seed=5, config=cfg, karyotypes=["45,X", "47,XXY"])
    assert len(ds) == 6
    a, b = ds[2], ds[2]
    np.testing.assert_array_equal(a.image, b.image)
    assert a.meta["karyotype"] in ("45,X", "47,XXY") and len(a) == int(a.meta["karyotype"][:2])
    assert a.meta["seed"] == [5, 2] and a.image_id == "synthetic_s5_000002"
    tr = SyntheticDataset(None, "train", n=6, seed=5, config=cfg, val_fraction=0.34)
    va = SyntheticDataset(None, "val", n=6, seed=5, config=cfg, val_fraction=0.34)
    assert sorted(tr.items + va.items) == list(range(6)) and len(va.items) == 2
    ds2 = build_dataset("synthetic", None, "all", n=2, seed=5, config=cfg)
    assert len(ds2) == 2
    with pytest.raises(ValueError):
        SyntheticDataset(None, n=2, karyotypes=["46,XX,+99"])


def test_cli_byte_identical(tmp_path):
    outs = []
    for d in ("a", "b"):
        args = get_args_parser().parse_args(
            [
                "--out",
                str(tmp_path / d),
                "--n",
                "2",
                "--seed",
                "3",
                "--size",
                "260",
                "--karyotypes",
                "47,XY,+13",
                "--quiet",
            ]
        )
        outs.append(main(args))
    assert outs[0].read_bytes() == outs[1].read_bytes()
    for name in ("synthetic_s3_000000.png", "synthetic_s3_000001.png"):
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()
    coco = json.loads(outs[0].read_text())
    assert [im["id"] for im in coco["images"]] == [1, 2]
    assert len(coco["annotations"]) == 94 and sorted({a["id"] for a in coco["annotations"]}) == list(range(1, 95))
    assert all(im["karyotype"] == "47,XY,+13" for im in coco["images"])
    # the files read back give the generated records
    from datasets.coco import COCODataset
    from datasets.io import read_image

    rec = SyntheticDataset(None, n=2, seed=3, config=SyntheticConfig(image_size=(260, 260)), karyotypes=["47,XY,+13"])[
        1
    ]
    back = COCODataset(tmp_path / "a")
    got = [g for g in (back[i] for i in range(len(back))) if g.meta["file_name"].endswith("000001.png")][0]
    np.testing.assert_array_equal(read_image(tmp_path / "a/images/synthetic_s3_000001.png"), rec.image)
    np.testing.assert_array_equal(got.image, rec.image)
    order = np.lexsort((rec.centromeres[:, 0], rec.labels))
    order_g = np.lexsort((got.centromeres[:, 0], got.labels))
    np.testing.assert_array_equal(got.labels[order_g], rec.labels[order])
    np.testing.assert_array_equal(got.masks[order_g], rec.masks[order])
    np.testing.assert_allclose(got.centromeres[order_g], rec.centromeres[order], atol=1e-4)
    np.testing.assert_allclose(got.p_dir[order_g], rec.p_dir[order], atol=1e-4)
