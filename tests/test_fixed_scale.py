"""One scale for every spread: ScaleBy / RandomCrop in the data pipeline, FixedScaleTransform in the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.record import KaryoRecord
from datasets.transforms import RandomCrop, ScaleBy
from models.segmentation import FixedScaleTransform, SegConfig, build_segmentation_model


def _record(h: int = 200, w: int = 300) -> KaryoRecord:
    img = np.ones((h, w), np.float32)
    masks = np.zeros((3, h, w), np.uint8)
    masks[0, 10:50, 10:20] = 1  # top-left
    masks[1, 100:180, 200:215] = 1  # bottom-right
    masks[2, 90:110, 140:160] = 1  # centre, 400 px
    img[masks.any(0) > 0] = 0.3
    boxes = np.array([[10, 10, 20, 50], [200, 100, 215, 180], [140, 90, 160, 110]], np.float32)
    cen = np.array([[15, 30], [207, 140], [150, 100]], np.float32)
    return KaryoRecord(
        image=img, boxes=boxes, labels=np.array([1, 2, 3]), masks=masks, centromeres=cen, meta={"image_id": "t"}
    )


def test_scale_by_resizes_by_the_factor_and_caps_the_long_side():
    rec = _record()
    out = ScaleBy(0.5)(rec)
    assert (out.height, out.width) == (100, 150)
    np.testing.assert_allclose(out.boxes[2], [70, 45, 80, 55], atol=1)
    assert out.meta["resize_factor"] == pytest.approx(0.5)
    capped = ScaleBy(2.0, max_side=450)(rec)
    assert max(capped.height, capped.width) == 450
    with pytest.raises(ValueError):
        ScaleBy(0.0)


def test_random_crop_keeps_visible_instances_and_drops_slivers():
    rec = _record()
    crop = RandomCrop(100, min_visible=0.3)
    # a 100x100 window centred (no rng): x 100..200, y 50..150 holds the centre chromosome whole and
    # 0 pixels of the others
    out = crop(rec, None)
    assert (out.height, out.width) == (100, 100)
    assert out.labels.tolist() == [3]
    np.testing.assert_array_equal(out.boxes[0], [40, 40, 60, 60])
    np.testing.assert_allclose(out.centromeres[0], [50, 50])
    assert out.masks.shape == (1, 100, 100) and out.masks.sum() == 400
    assert out.meta["crop_offset"] == (100, 50)
    # the source is untouched
    assert len(rec) == 3 and rec.masks.shape == (3, 200, 300)


def test_random_crop_min_visible_decides_on_cut_instances():
    rec = _record()
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = RandomCrop(64, min_visible=0.3)(rec, rng)
        assert out.height == 64 and out.width == 64
        x0, y0 = out.meta["crop_offset"]
        for i, lab in enumerate(out.labels):
            full = rec.masks[lab - 1].sum()
            seen = rec.masks[lab - 1, y0 : y0 + 64, x0 : x0 + 64].sum()
            assert seen >= 0.3 * full and out.masks[i].sum() == seen
        # every instance with enough pixels inside is kept
        for lab in (1, 2, 3):
            seen = rec.masks[lab - 1, y0 : y0 + 64, x0 : x0 + 64].sum()
            assert (lab in out.labels.tolist()) == (seen > 0 and seen >= 0.3 * rec.masks[lab - 1].sum())
    # smaller than the crop: kept whole
    assert RandomCrop(500)(rec, rng).labels.tolist() == [1, 2, 3]


def test_fixed_scale_transform_scales_every_image_by_one_factor():
    t = FixedScaleTransform(0.5, 1000, [0.8], [0.2]).eval()
    images, _ = t([torch.rand(1, 700, 640), torch.rand(1, 3000, 1000)])
    assert images.image_sizes == [(350, 320), (1000, 333)]  # the second one capped at max_size
    t.train()
    t.prescaled_inputs = True
    target = {"boxes": torch.tensor([[1.0, 2, 30, 40]]), "labels": torch.tensor([1])}
    images, targets = t([torch.rand(1, 300, 200)], [target])
    assert images.image_sizes == [(300, 200)] and targets[0]["boxes"].tolist() == [[1.0, 2, 30, 40]]


def test_fixed_scale_model_returns_boxes_in_input_pixels():
    torch.manual_seed(0)
    cfg = SegConfig(backbone="resnet18_fpn", agnostic=True, fixed_scale=0.5, box_score_thresh=0.0)
    model = build_segmentation_model(cfg).eval()
    assert isinstance(model.transform, FixedScaleTransform)
    with torch.no_grad():
        out = model([torch.rand(1, 256, 320)])[0]
    assert out["masks"].shape[-2:] == (256, 320)
    if len(out["boxes"]):
        assert float(out["boxes"][:, 2].max()) <= 320 and float(out["boxes"][:, 3].max()) <= 256
    with pytest.raises(ValueError, match="fixed_scale"):
        SegConfig(fixed_scale=0.0)
    assert SegConfig.from_dict(cfg.to_dict()).fixed_scale == 0.5


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--fixed-scale", "0.75", "--resize-longest", "640"], "give one"),
        (["--fixed-scale", "0", "--crop-size", "256"], "--crop-size needs --fixed-scale"),  # on by default
        (["--crop-size", "32"], "at least 64 pixels"),
        (["--fixed-scale", "9"], "--fixed-scale must be"),
    ],
)
def test_trainer_refuses_bad_scale_flags(argv, match, tmp_path):
    import train_segmentation

    args = train_segmentation.get_args_parser().parse_args(
        ["--smoke", "--device", "cpu", "--output-dir", str(tmp_path), *argv]
    )
    with pytest.raises(ValueError, match=match):
        train_segmentation.main(args)


def test_trainer_smoke_at_fixed_scale_with_crops(tmp_path):
    import train_segmentation
    from models.segmentation import load_segmentation_checkpoint

    args = train_segmentation.get_args_parser().parse_args(
        ["--smoke", "--fixed-scale", "0.8", "--crop-size", "96", "--device", "cpu", "--workers", "0"]
        + ["--output-dir", str(tmp_path), "--no-progress"]
    )
    train_segmentation.main(args)
    _, cfg = load_segmentation_checkpoint(tmp_path / "last.pth")
    assert cfg.fixed_scale == pytest.approx(0.8)


def test_train_only_data_adds_a_whole_dataset_to_training_only(tmp_path):
    """--train-only-data: every image of that root trains, none is held out, the val split is unchanged."""
    import train_segmentation

    fixtures = str(Path(__file__).parent / "fixtures" / "cil")
    base = ["--dataset", "synthetic", "--synthetic-spreads", "10", "--device", "cpu", "--output-dir", str(tmp_path)]
    plain = train_segmentation.get_args_parser().parse_args(base)
    more = train_segmentation.get_args_parser().parse_args([*base, "--train-only-data", "voc", fixtures])
    train0, val0 = train_segmentation.build_datasets(plain, train_segmentation.check_args(plain))
    train1, val1 = train_segmentation.build_datasets(more, train_segmentation.check_args(more))
    assert len(train1) == len(train0) + 2 and len(val1) == len(val0)
    bad = train_segmentation.get_args_parser().parse_args([*base, "--train-only-data", "voc", str(tmp_path / "no")])
    with pytest.raises(ValueError, match="does not exist"):
        train_segmentation.check_args(bad)
