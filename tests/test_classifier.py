"""Hybrid classifier, per-instance dataset and the classification trainer, on tiny known inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from datasets.instances import (
    CropAugment,
    DistributedWeightedSampler,
    InstanceDataset,
    concat_instances,
    spread_instances,
)
from datasets.record import KaryoRecord, masks_to_boxes
from engine import load_checkpoint
from features.crops import fit_crop
from features.triad import FEATURE_NAMES, feature_names
from models.classifier import (
    ClsConfig,
    build_classifier,
    load_classifier_checkpoint,
    predict_proba,
    restem,
    save_weights,
)

GROUPS = ("none", "geometry", "scale", "texture", "all")


def _config(groups: str = "all", **kw) -> ClsConfig:
    n = len(feature_names(groups))
    return ClsConfig(arch="resnet18", crop_height=32, crop_width=16, n_features=n, feature_groups=groups, **kw)


def _rod_spread(specs: list[tuple[int, int, int, int, int]], h: int = 120, w: int = 160) -> KaryoRecord:
    """A spread of banded rods: each spec is (label, x, y, length, width); vertical rods, dark bands on grey."""
    image = np.ones((h, w), np.float32)
    masks = np.zeros((len(specs), h, w), np.uint8)
    for i, (_, x, y, length, width) in enumerate(specs):
        masks[i, y : y + length, x : x + width] = 1
        rows = np.arange(length)
        band = np.where((rows // 4) % 2 == 0, 0.25, 0.6).astype(np.float32)
        image[y : y + length, x : x + width] = band[:, None]
    labels = [s[0] for s in specs]
    return KaryoRecord(image=image, boxes=masks_to_boxes(masks), labels=labels, masks=masks, meta={"image_id": "rods"})


SPECS = [(1, 10, 10, 60, 8), (5, 40, 10, 40, 7), (23, 70, 10, 50, 8), (0, 100, 10, 30, 6), (7, 130, 100, 1, 2)]


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("groups", ["none", "geometry"])
def test_forward_shapes(groups):
    cfg = _config(groups)
    model = build_classifier(cfg).eval()
    x = torch.rand(3, 1, 32, 16)
    f = torch.randn(3, cfg.n_features) if cfg.n_features else None
    with torch.no_grad():
        out = model(x, f)
    assert out.shape == (3, 24)
    assert (model.mlp is None) == (groups == "none")


def test_imagenet16_stem_takes_imagenet_weights_and_keeps_a_finer_map():
    """imagenet16 = the ImageNet stem without its max-pool: same weights, stride 16 instead of 32."""
    cfg = ClsConfig(
        arch="resnet18", crop_height=96, crop_width=32, stem="imagenet", n_features=0, feature_groups="none"
    )
    coarse = build_classifier(cfg).eval()
    fine_cfg = restem(cfg, "imagenet16")
    assert fine_cfg.stem == "imagenet16" and cfg.stem == "imagenet"
    fine = build_classifier(fine_cfg).eval()
    fine.load_state_dict(coarse.state_dict())  # strict: every weight fits
    maps = {}
    for name, model in (("coarse", coarse), ("fine", fine)):
        model.backbone.layer4.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o.shape[-2:]))
    x = torch.rand(2, 1, 96, 32)
    with torch.no_grad():
        a, b = coarse(x), fine(x)
    assert tuple(maps["coarse"]) == (3, 1) and tuple(maps["fine"]) == (6, 2)
    assert not torch.allclose(a, b)  # the pool is gone, so the same weights see a different input
    with pytest.raises(ValueError, match="differ in shape"):  # small's 3x3 conv cannot take the 7x7 weights
        restem(cfg, "small", "x.pth")
    with pytest.raises(ValueError, match="unknown"):
        restem(cfg, "huge")


def test_ablation_changes_model_input_size():
    sizes = {g: len(feature_names(g)) for g in GROUPS}
    assert sizes["none"] == 0
    assert sizes["all"] == len(FEATURE_NAMES) == sizes["geometry"] + sizes["scale"] + sizes["texture"]
    assert len(set(sizes.values())) == len(GROUPS)  # every ablation feeds a different number of features
    for g, n in sizes.items():
        model = build_classifier(_config(g))
        if n == 0:
            assert model.mlp is None
        else:
            assert model.mlp[0].in_features == n
            with pytest.raises(ValueError, match="features must be"):
                model.eval()(torch.rand(2, 1, 32, 16), torch.rand(2, n + 1))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="arch"):
        ClsConfig(arch="resnet101")
    with pytest.raises(ValueError, match="n_features"):
        ClsConfig(feature_groups="none", n_features=3)
    with pytest.raises(ValueError, match="feature_mean"):
        ClsConfig(feature_groups="scale", n_features=2, feature_mean=[0.0])


def test_predict_proba_rows_sum_to_one_and_select_columns():
    torch.manual_seed(0)
    cfg = _config("scale")
    model = build_classifier(cfg)
    rng = np.random.default_rng(0)
    crops = [
        rng.random((40, 12)).astype(np.float32),
        rng.random((20, 9)).astype(np.float32),
        np.ones((32, 16), np.float32),
    ]
    feats = rng.normal(size=(3, len(FEATURE_NAMES))).astype(np.float32)
    p = predict_proba(model, cfg, crops, feats)
    assert p.shape == (3, 24) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    # only the "scale" columns matter: changing any other column leaves the output unchanged
    other = [i for i, n in enumerate(FEATURE_NAMES) if n not in feature_names("scale")]
    feats2 = feats.copy()
    feats2[:, other] += 100.0
    np.testing.assert_allclose(predict_proba(model, cfg, crops, feats2), p, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        predict_proba(model, cfg, crops, None)


def test_predict_proba_flip_averages_the_upside_down_view():
    torch.manual_seed(0)
    cfg = _config("scale")
    model = build_classifier(cfg)
    rng = np.random.default_rng(1)
    crops = rng.random((5, cfg.crop_height, cfg.crop_width)).astype(np.float32)
    feats = rng.normal(size=(5, len(FEATURE_NAMES))).astype(np.float32)
    plain = predict_proba(model, cfg, crops, feats)
    upside_down = predict_proba(model, cfg, np.ascontiguousarray(crops[:, ::-1]), feats)
    assert not np.allclose(plain, upside_down, atol=1e-4)  # the model is not symmetric: the test can fail
    both = predict_proba(model, cfg, crops, feats, flip=True, batch_size=2)  # batches split the two views alike
    np.testing.assert_allclose(both, (plain + upside_down) / 2, atol=1e-5)
    np.testing.assert_allclose(both.sum(1), 1.0, atol=1e-5)


def test_checkpoint_rebuilds_without_flags(tmp_path):
    torch.manual_seed(0)
    cfg = _config("geometry", feature_mean=[0.5] * 15, feature_std=[2.0] * 15)
    model = build_classifier(cfg).eval()
    x, f = torch.rand(2, 1, 32, 16), torch.randn(2, 15)
    with torch.no_grad():
        ref = model(x, f)
    save_weights(model, cfg, tmp_path / "w.pth")
    save_weights(model, cfg, tmp_path / "w16.pth", half=True)
    m2, c2 = load_classifier_checkpoint(tmp_path / "w.pth")
    assert c2 == cfg
    with torch.no_grad():
        torch.testing.assert_close(m2(x, f), ref)
    m3, _ = load_classifier_checkpoint(tmp_path / "w16.pth")
    assert all(p.dtype == torch.float32 for p in m3.parameters())
    with torch.no_grad():
        torch.testing.assert_close(m3(x, f), ref, atol=0.05, rtol=0.05)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_classifier_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------- crops
def test_fit_crop_keeps_aspect_ratio_and_pads_white():
    crop = np.zeros((40, 10), np.float32)  # scale min(96/40, 32/10) = 2.4 -> 96 x 24, centred
    out = fit_crop(crop, 96, 32)
    assert out.shape == (96, 32)
    assert np.all(out[:, :4] == 1.0) and np.all(out[:, 28:] == 1.0)
    assert np.all(out[:, 4:28] == 0.0)


def test_augment_never_flips_p_and_q():
    crop = np.ones((32, 16), np.float32)
    crop[2:12, 3:8] = 0.2  # a dark p arm, top left
    aug = CropAugment(rotation=0.0, scale=(1.0, 1.0), hflip=1.0, brightness=0.0, contrast=0.0)
    out = aug(crop, np.random.default_rng(0))
    np.testing.assert_allclose(out, crop[:, ::-1], atol=1e-6)  # left-right only; the p arm stays up
    out2 = CropAugment()(crop, np.random.default_rng(1))
    assert out2.shape == crop.shape and out2[:16].mean() < out2[16:].mean()


# ---------------------------------------------------------------------------------------------- instances
def test_spread_instances_labels_and_skips():
    rec = _rod_spread(SPECS)
    arrays, skipped = spread_instances(rec, 32, 16)
    assert arrays["labels"].tolist() == [0, 4, 22]  # class id - 1, the unknown and the 1x2 speck skipped
    assert skipped == {"unknown class (label 0)": 1, "degenerate mask": 1}
    assert arrays["crops"].shape == (3, 32, 16) and arrays["crops"].dtype == np.uint8
    assert arrays["features"].shape == (3, len(FEATURE_NAMES))
    np.testing.assert_allclose(arrays["lengths"], [60, 40, 50], atol=3)
    # the long rod fills the crop's height: its dark-band pixels reach the top and bottom rows
    assert arrays["crops"][0][0].min() < 200 and arrays["crops"][0][-1].min() < 200


def test_instance_dataset_and_cache_round_trip(tmp_path, monkeypatch):
    spreads = [_rod_spread(SPECS), _rod_spread([(2, 10, 10, 55, 8), (24, 40, 10, 25, 6)])]
    cache = tmp_path / "c.npz"
    with pytest.warns(UserWarning, match="skipped 2 instances"):
        ds = InstanceDataset(
            spreads, feature_groups="scale", crop_height=32, crop_width=16, cache_path=cache, progress=False
        )
    assert len(ds) == 5 and ds.n_cells == 2 and cache.exists()
    assert ds.labels.tolist() == [0, 4, 22, 1, 23] and ds.cell.tolist() == [0, 0, 0, 1, 1]
    crop, feat, label = ds[4]
    assert crop.shape == (1, 32, 16) and crop.dtype == torch.float32 and 0 <= crop.min() <= crop.max() <= 1
    assert feat.shape == (len(feature_names("scale")),) and label == 23

    import datasets.instances as inst

    def boom(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(inst, "compute_instances", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = InstanceDataset(spreads, feature_groups="none", crop_height=32, crop_width=16, cache_path=cache)
    np.testing.assert_array_equal(again.crops, ds.crops)
    np.testing.assert_array_equal(again.features, ds.features)
    assert again.skipped == ds.skipped and again.n_features == 0
    # other crop size: the key differs and the arrays are recomputed
    with pytest.raises(AssertionError, match="cache should"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        InstanceDataset(spreads, crop_height=48, crop_width=16, cache_path=cache)

    both = concat_instances([ds, ds])
    assert len(both) == 10 and both.cell.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    w = both.sample_weights()
    assert np.isclose(w[both.labels == 0].sum(), w[both.labels == 23].sum())


def test_distributed_weighted_sampler_balances_and_splits():
    labels = np.array([0] * 90 + [1] * 10)
    w = 1.0 / np.bincount(labels)[labels]
    r0 = list(DistributedWeightedSampler(w, num_samples=4000, rank=0, world_size=2, seed=3))
    r1 = list(DistributedWeightedSampler(w, num_samples=4000, rank=1, world_size=2, seed=3))
    assert len(r0) == len(r1) == 2000
    share = np.mean(labels[np.array(r0 + r1)] == 1)
    assert 0.45 < share < 0.55  # balanced, although class 1 is 10 % of the data
    assert r0 != r1


# ---------------------------------------------------------------------------------------------- trainer
def _train(tmp_path, *extra):
    from train_classification import get_args_parser, main

    argv = ["--smoke", "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(get_args_parser().parse_args(argv + list(extra)))


@pytest.mark.slow
def test_smoke_training_resume_and_outputs(tmp_path):
    torch.set_num_threads(1)
    s1 = _train(tmp_path, "--features", "geometry", "--epochs", "1")
    run = tmp_path / "run"
    ck = load_checkpoint(run / "last.pth")
    assert ck["epoch"] == 0 and ck["config"]["n_features"] == len(feature_names("geometry"))
    assert ck["scheduler"]["last_epoch"] == 2  # 2 optimizer steps
    for name in (
        "best.pth",
        "log.csv",
        "log.jsonl",
        "per_class.json",
        "confusion.png",
        "per_class.png",
        "val_probs.npz",
    ):
        assert (run / name).exists(), name
    z = np.load(run / "val_probs.npz")
    assert z["probs"].shape[1] == 24 and len(z["probs"]) == len(z["labels"]) == len(z["cell"]) > 0
    np.testing.assert_allclose(z["probs"].sum(1), 1.0, atol=1e-4)
    assert 0.0 <= s1["best_val_accuracy"] <= 1.0

    s2 = _train(tmp_path, "--features", "geometry", "--epochs", "2", "--resume", "auto")
    ck = load_checkpoint(run / "last.pth")
    assert ck["epoch"] == 1 and ck["scheduler"]["last_epoch"] == 4  # continued, not restarted
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1] and s2["epochs"] == 2

    model, cfg = load_classifier_checkpoint(run / "best.pth")  # no flags needed
    assert cfg.feature_groups == "geometry" and cfg.crop_height == 32 and len(cfg.feature_mean) == cfg.n_features
    with pytest.raises(ValueError, match="--features"):
        _train(tmp_path, "--features", "scale", "--epochs", "3", "--resume", "auto")


@pytest.mark.slow
def test_pretrained_starts_from_weights_with_a_fresh_schedule(tmp_path):
    """--pretrained: weights and config from a classifier file, a new optimizer and schedule."""
    torch.set_num_threads(1)
    _train(tmp_path / "a", "--features", "scale", "--epochs", "1")
    src = tmp_path / "a" / "run" / "best.pth"
    first, cfg0 = load_classifier_checkpoint(src)
    # lr 1e-12: the weights can hardly move, so the new run's parameters are the ones it started from
    _train(tmp_path / "b", "--features", "scale", "--epochs", "1", "--pretrained", str(src), "--lr", "1e-12")
    ck = load_checkpoint(tmp_path / "b" / "run" / "last.pth")
    assert ck["epoch"] == 0 and ck["scheduler"]["last_epoch"] == 2  # a fresh schedule, not the source's
    assert ck["config"]["feature_mean"] == cfg0.feature_mean  # the source's feature standardisation
    params = dict(first.named_parameters())
    for k, v in ck["model"].items():
        if k in params:
            torch.testing.assert_close(v, params[k].detach(), atol=1e-8, rtol=0, msg=k)
    with pytest.raises(ValueError, match="--features"):
        _train(tmp_path / "c", "--features", "geometry", "--pretrained", str(src))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _train(tmp_path / "d", "--pretrained", str(tmp_path / "nope.pth"))
    # another stem whose weights fit (imagenet, the default, -> imagenet16: the same 7x7 conv, no pool) starts from
    # the same weights
    assert cfg0.stem == "imagenet"
    _train(tmp_path / "e", "--features", "scale", "--epochs", "1", "--pretrained", str(src), "--stem", "imagenet16")
    assert load_checkpoint(tmp_path / "e" / "run" / "last.pth")["config"]["stem"] == "imagenet16"
    with pytest.raises(ValueError, match="cannot take the weights"):  # the 3x3 conv of the small stem does not fit
        _train(tmp_path / "f", "--features", "scale", "--pretrained", str(src), "--stem", "small")
    with pytest.raises(ValueError, match="--stem"):  # resuming keeps the checkpoint's stem
        _train(tmp_path / "e", "--features", "scale", "--epochs", "2", "--resume", "auto", "--stem", "imagenet")
    # another crop mode starts from the same weights; resuming keeps the checkpoint's mode
    _train(tmp_path / "g", "--features", "scale", "--epochs", "1", "--pretrained", str(src), "--crop-mode", "axis")
    assert load_checkpoint(tmp_path / "g" / "run" / "last.pth")["config"]["crop_mode"] == "axis"
    assert any("-axis-" in p.name for p in (tmp_path / "g").rglob("*.npz"))  # its own instance cache
    with pytest.raises(ValueError, match="--crop-mode"):
        _train(tmp_path / "g", "--features", "scale", "--epochs", "2", "--resume", "auto")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--smoke", "--features", "colour"], "--features"),
        (["--smoke", "--arch", "resnet101"], "--arch"),
        (["--smoke", "--label-smoothing", "1.5"], "--label-smoothing"),
        (["--dataset", "voc", "mfish", "--data-root", "x"], "one root per"),
        (["--dataset", "nope", "--data-root", "x"], "unknown"),
        (["--smoke", "--resume", "/no/such/last.pth"], "does not exist"),
    ],
)
def test_bad_flags_fail_clearly(tmp_path, argv, match):
    from train_classification import get_args_parser, main

    with pytest.raises((ValueError, FileNotFoundError), match=match):
        main(get_args_parser().parse_args(argv + ["--output-dir", str(tmp_path / "r"), "--cache-dir", "none"]))


def test_empty_crop_is_white_not_an_error():
    """A degenerate instance (empty straightened crop) must not stop a whole spread from being classified."""
    from models.classifier import ClsConfig, prepare_crops

    cfg = ClsConfig(arch="resnet18", n_features=0, feature_groups="none", crop_height=32, crop_width=16)
    out = prepare_crops([np.zeros((0, 32), np.float32), np.zeros((10, 5), np.float32)], cfg)
    assert out.shape == (2, 32, 16)
    assert (out[0] == 1.0).all() and out[1].min() == 0.0
