"""inference_pipeline.py end to end: CLI, output files, the JSON schema, input kinds and user errors.

Weights are untrained smoke-size checkpoints (:func:`make_smoke_weights`, once per session). An untrained detector finds
nothing, so the non-empty path replaces ``KaryotypePipeline.segment`` by the ground truth of a synthetic
spread (labels hidden, scores 1): everything after segmentation then runs for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import inference_pipeline as ip
from karyotyping.core import KaryotypePipeline, PipelineError
from karyotyping.export import from_json_dict, to_json_dict
from karyotyping.masks import MaskConfig

SIZE = (320, 352)  # (H, W) of the synthetic test spread

TOP_KEYS = {
    "image",
    "width",
    "height",
    "karyotype",
    "sex",
    "count",
    "sanity_score",
    "chromosomes",
    "timings_s",
}
CHROM_KEYS = {
    "id",
    "label",
    "name",
    "score",
    "probs",
    "box",
    "mask",
    "length_px",
    "centromere_index",
    "centromere_xy",
    "polarity_ok",
    "pair",
    "flags",
}


# ---------------------------------------------------------------------------------------------- fixtures
def make_smoke_weights(root: Path) -> tuple[Path, Path]:
    """Untrained smoke-size checkpoints in the shipped-weights format (``save_weights``), as
    ``train_segmentation.py --smoke`` / ``train_classification.py --smoke`` configure them (resnet18
    backbones, 128 px detector input, 32x16 crops, all features). Built directly, not trained: two
    training steps change nothing a test can see (the detector finds nothing either way) and the
    trainers cost 20-60 s on a loaded 2-core machine. Cached per pytest session under ``root``."""
    from features.triad import feature_names
    from models import classifier, segmentation

    seg, cls = root / "segmentation.pt", root / "classifier.pt"
    if seg.is_file() and cls.is_file():
        return seg, cls
    import torch

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    scfg = segmentation.SegConfig(
        backbone="resnet18_fpn", min_size=128, max_size=128, box_detections_per_img=100, box_batch_size_per_image=64
    )
    scfg.rpn_pre_nms_top_n_test, scfg.rpn_post_nms_top_n_test = 200, 100
    segmentation.save_weights(segmentation.build_segmentation_model(scfg), scfg, seg)
    names = list(feature_names("all"))
    ccfg = classifier.ClsConfig(
        arch="resnet18",
        crop_height=32,
        crop_width=16,
        n_features=len(names),
        feature_groups="all",
        feature_names=names,
        feature_mean=[0.0] * len(names),
        feature_std=[1.0] * len(names),
    )
    classifier.save_weights(classifier.build_classifier(ccfg), ccfg, cls)
    return seg, cls


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    """(segmentation, classifier) untrained smoke checkpoints, shared by the session's test files."""
    return make_smoke_weights(tmp_path_factory.getbasetemp() / "smoke_weights")


@pytest.fixture(scope="module")
def spread():
    from datasets.synthetic import generate_spread

    return generate_spread(np.random.default_rng(11), None, "46,XY", size=SIZE, image_id="pipe")


@pytest.fixture(scope="module")
def spread_png(spread, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "cell.png"
    assert cv2.imwrite(str(p), np.round(spread.image * 255).astype(np.uint8))
    return p


@pytest.fixture
def gt_segment(monkeypatch, spread):
    """Replace the detector by the spread's ground truth (labels hidden)."""

    def segment(self, image):
        assert image.shape == spread.image.shape
        r = spread.copy()
        r.labels[:] = 0
        r.scores = np.ones(len(r), np.float32)
        return r

    monkeypatch.setattr(KaryotypePipeline, "segment", segment)


@pytest.fixture(autouse=True)
def _restore_grad():
    import torch

    grad = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(grad)  # the pipeline switches autograd off for the process


def _args(weights, *extra: str) -> list[str]:
    return ["--seg-weights", str(weights[0]), "--cls-weights", str(weights[1]), "--device", "cpu", "--quiet", *extra]


# ---------------------------------------------------------------------------------------------- schema
def _check_schema(d: dict, width: int, height: int) -> None:
    from pycocotools import mask as mask_utils

    assert TOP_KEYS <= set(d), TOP_KEYS - set(d)
    assert (d["width"], d["height"]) == (width, height)
    assert isinstance(d["count"], int) and d["count"] == sum(c["label"] > 0 for c in d["chromosomes"])
    assert 0.0 <= d["sanity_score"] <= 1.0
    assert d["karyotype"] is None or isinstance(d["karyotype"], str)
    assert all(isinstance(v, float) and v >= 0 for v in d["timings_s"].values())
    for stage in ("load", "segmentation", "features", "classification", "assignment", "rendering"):
        assert stage in d["timings_s"], stage
    ids = [c["id"] for c in d["chromosomes"]]
    assert ids == list(range(len(ids)))
    for c in d["chromosomes"]:
        assert CHROM_KEYS <= set(c), CHROM_KEYS - set(c)
        assert isinstance(c["label"], int) and 0 <= c["label"] <= 24
        assert isinstance(c["name"], str) and c["name"]
        assert 0.0 <= c["score"] <= 1.0
        assert len(c["probs"]) == 24 and abs(sum(c["probs"]) - 1.0) < 1e-3
        assert all(p >= 0 for p in c["probs"])
        x1, y1, x2, y2 = c["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        m = mask_utils.decode({"size": c["mask"]["size"], "counts": c["mask"]["counts"].encode("ascii")})
        assert m.shape == (height, width) and m.any()
        assert c["length_px"] > 0
        assert 0.0 <= c["centromere_index"] <= 0.5
        assert len(c["centromere_xy"]) == 2
        assert isinstance(c["polarity_ok"], bool)
        assert c["pair"] is None or (isinstance(c["pair"], int) and c["pair"] in ids and c["pair"] != c["id"])
        assert isinstance(c["flags"], list) and all(isinstance(f, str) for f in c["flags"])


# ---------------------------------------------------------------------------------------------- tests
def test_cli_whole_pipeline_untrained(weights, spread_png, tmp_path, capsys):
    out = tmp_path / "out"
    assert ip.cli(_args(weights, "--image", str(spread_png), "--out", str(out))) == 0
    stdout = capsys.readouterr().out
    files = [out / "cell.json", out / "cell_karyogram.png", out / "cell_overlay.png"]
    for f in files:
        assert f.is_file() and f.stat().st_size > 0
        assert str(f) in stdout  # the user is told where the outputs are
    assert "karyotype:" in stdout
    kg = cv2.imread(str(files[1]), cv2.IMREAD_UNCHANGED)
    assert kg is not None and kg.size > 0
    d = json.loads(files[0].read_text())
    _check_schema(d, SIZE[1], SIZE[0])


def test_non_empty_path(weights, spread_png, gt_segment, tmp_path, capsys):
    out = tmp_path / "out"
    assert ip.cli(_args(weights, "--image", str(spread_png), "--out", str(out))) == 0
    stdout = capsys.readouterr().out
    d = json.loads((out / "cell.json").read_text())
    _check_schema(d, SIZE[1], SIZE[0])
    assert len(d["chromosomes"]) == 46
    assert d["count"] in (46, 47)
    assert isinstance(d["karyotype"], str) and d["karyotype"].startswith(str(d["count"]))
    assert d["karyotype"] in stdout
    assert 0.0 <= d["sanity_score"] <= 1.0
    by_id = {c["id"]: c for c in d["chromosomes"]}
    n_paired = 0
    for c in d["chromosomes"]:
        if c["pair"] is not None:
            n_paired += 1
            assert by_id[c["pair"]]["pair"] == c["id"]  # pairs are symmetric
            assert by_id[c["pair"]]["label"] == c["label"]
    assert n_paired > 0
    # masks come back at the image size and match the ground truth they were given
    from pycocotools import mask as mask_utils

    c0 = d["chromosomes"][0]
    m0 = mask_utils.decode({"size": c0["mask"]["size"], "counts": c0["mask"]["counts"].encode("ascii")})
    assert m0.sum() > 0
    png = cv2.imread(str(out / "cell_overlay.png"), cv2.IMREAD_COLOR)
    assert png.shape[:2] == SIZE


@pytest.mark.parametrize("kind", ["grey8", "grey16", "rgb"])
def test_input_kinds(weights, spread, gt_segment, tmp_path, kind):
    img = spread.image
    if kind == "grey8":
        arr, name = np.round(img * 255).astype(np.uint8), "a.png"
    elif kind == "grey16":
        arr, name = np.round(img * 65535).astype(np.uint16), "b.tif"
    else:
        g = np.round(img * 255).astype(np.uint8)
        arr, name = np.stack([g, g, g], axis=-1), "c.jpg"
    path = tmp_path / name
    assert cv2.imwrite(str(path), arr)
    pipe = KaryotypePipeline(weights[0], weights[1], device="cpu")
    res = to_json_dict(pipe.process(path))
    assert (res["width"], res["height"]) == (SIZE[1], SIZE[0])
    assert len(res["chromosomes"]) == 46


def test_input_dir_coco_and_summary(weights, spread_png, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "one.png").write_bytes(spread_png.read_bytes())
    g = cv2.imread(str(spread_png), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(src / "two.tif"), (g.astype(np.uint16) * 257))
    (src / "broken.png").write_bytes(b"not a png")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert ip.cli(_args(weights, "--input-dir", str(src), "--out", str(out))) == 0
    coco = json.loads((out / "coco_results.json").read_text())
    assert isinstance(coco, list)
    for r in coco:
        assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r)
        assert 1 <= r["category_id"] <= 24 and len(r["bbox"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(p["image"]).name for p in summary["processed"]) == ["one.png", "two.tif"]
    assert [Path(p["image"]).name for p in summary["failed"]] == ["broken.png"]
    assert summary["ignored_non_images"] == ["notes.txt"]
    assert (out / "one.json").is_file() and (out / "two.json").is_file()


def test_input_dir_coco_results_non_empty(weights, spread_png, gt_segment, tmp_path):
    from pycocotools.coco import COCO

    from datasets.coco import records_to_coco
    from datasets.record import KaryoRecord

    src = tmp_path / "in"
    src.mkdir()
    (src / "cell.png").write_bytes(spread_png.read_bytes())
    out = tmp_path / "out"
    assert ip.cli(_args(weights, "--input-dir", str(src), "--out", str(out))) == 0
    coco = json.loads((out / "coco_results.json").read_text())
    d = json.loads((out / "cell.json").read_text())
    assert len(coco) == d["count"] > 0
    for r in coco:
        assert 0.0 <= r["score"] <= 1.0
    # loadable by pycocotools as results against a ground truth with the same image id
    gt = KaryoRecord(image=np.zeros(SIZE, np.float32), boxes=np.zeros((0, 4)), labels=np.zeros(0, np.int64))
    gt_json = records_to_coco([gt], ["cell.png"])
    for im in gt_json["images"]:
        im["id"] = coco[0]["image_id"]
    c = COCO()
    c.dataset = gt_json
    c.createIndex()
    dt = c.loadRes([{k: v for k, v in r.items() if k != "file_name"} for r in coco])
    assert len(dt.getAnnIds()) == len(coco)


def test_missing_weights_exit_2(weights, spread_png, tmp_path, capsys):
    missing = tmp_path / "nope" / "segmentation.pt"
    argv = ["--seg-weights", str(missing), "--cls-weights", str(weights[1]), "--image", str(spread_png)]
    assert ip.cli([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err


def test_cuda_without_cuda_exit_2(weights, spread_png, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv = ["--seg-weights", str(weights[0]), "--cls-weights", str(weights[1]), "--device", "cuda"]
    assert ip.cli([*argv, "--image", str(spread_png), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "CUDA" in err and "--device cpu" in err


def test_missing_image_exit_2(weights, tmp_path, capsys):
    assert ip.cli(_args(weights, "--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "o"))) == 2
    assert "none.png" in capsys.readouterr().err


def test_format_svg(weights, spread_png, gt_segment, tmp_path):
    out = tmp_path / "out"
    assert ip.cli(_args(weights, "--image", str(spread_png), "--out", str(out), "--format", "svg")) == 0
    for name in ("cell_karyogram.svg", "cell_overlay.svg"):
        text = (out / name).read_text()
        assert "<svg" in text[:2000]
    assert (out / "cell.json").is_file()


def test_pipeline_leaves_autograd_alone(weights):
    """Loading the pipeline must not switch off gradients for the rest of the process (training after it)."""
    import torch

    KaryotypePipeline(*weights, device="cpu")
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("modes", [("straight",), ("axis",), ("straight", "axis")])
def test_classifier_sees_exactly_the_training_inputs(
    weights, spread, spread_png, gt_segment, monkeypatch, modes, tmp_path
):
    """The pipeline's crops and features for the true instances are those the trainer caches for them, in
    each classifier's crop mode (one classifier, or an ensemble of one per mode); the karyogram gets the
    straightened crops whatever the modes."""
    import dataclasses

    import models.classifier as mc
    from datasets.instances import spread_instances

    if modes != ("straight",):
        model, cfg = mc.load_classifier_checkpoint(weights[1], "cpu")
        members = [(model, dataclasses.replace(cfg, crop_mode=m)) for m in modes]
        if len(members) == 1:
            mc.save_weights(*members[0], tmp_path / "classifier.pt")
        else:
            mc.save_ensemble(members, tmp_path / "classifier.pt")
        weights = (weights[0], tmp_path / "classifier.pt")

    seen = []
    real = mc.predict_proba

    def spy(model, config, crops, features=None, **kw):
        seen.append(
            {
                "mode": config.crop_mode,
                "crops": mc.prepare_crops(crops, config),
                "features": np.asarray(features),
                "flip": kw.get("flip"),
            }
        )
        return real(model, config, crops, features, **kw)

    monkeypatch.setattr(mc, "predict_proba", spy)
    from karyotyping.core import FLIP_TTA

    pipe = KaryotypePipeline(weights[0], weights[1], device="cpu")
    pred = pipe.process(spread_png)
    assert [s["mode"] for s in seen] == list(modes)
    assert all(s["flip"] is FLIP_TTA for s in seen)  # the default, chosen for the shipped classifier
    cfg = pipe.cls_config
    rec = spread.copy()
    rec.image = cv2.imread(str(spread_png), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0  # the 8-bit file
    for s in seen:
        train, _ = spread_instances(rec, cfg.crop_height, cfg.crop_width, crop_mode=s["mode"])
        assert len(train["crops"]) == len(s["crops"]) == len(spread)
        np.testing.assert_allclose(s["crops"], train["crops"] / 255.0, atol=1 / 255 + 1e-6)
        np.testing.assert_allclose(s["features"], train["features"], rtol=1e-5, atol=1e-5)
    straight, _ = spread_instances(rec, cfg.crop_height, cfg.crop_width)
    shown = mc.prepare_crops(pred.crops, cfg)  # what the karyogram lays out
    np.testing.assert_allclose(shown, straight["crops"] / 255.0, atol=1 / 255 + 1e-6)
    seen.clear()
    KaryotypePipeline(weights[0], weights[1], device="cpu", flip_tta=not FLIP_TTA).process(spread_png)
    assert seen and all(s["flip"] is (not FLIP_TTA) for s in seen)


# ---------------------------------------------------------------------------------------------- the core
def test_core_runs_on_an_in_memory_16bit_array(weights, spread, gt_segment, monkeypatch):
    """KaryotypePipeline.run: a uint16 array in, a typed KaryotypePrediction out, no file opened or written."""
    import builtins
    import io

    from karyotyping.core import KaryotypePrediction

    pipe = KaryotypePipeline(weights[0], weights[1], device="cpu")
    arr = np.round(spread.image * 65535).astype(np.uint16)

    def no_disk(*a, **kw):
        raise AssertionError(f"the core touched the disk: open{a}")

    monkeypatch.setattr(builtins, "open", no_disk)
    monkeypatch.setattr(io, "open", no_disk)
    monkeypatch.setattr(cv2, "imread", no_disk)
    monkeypatch.setattr(cv2, "imwrite", no_disk)
    pred = pipe.run(arr, name="in-memory")
    monkeypatch.undo()
    assert isinstance(pred, KaryotypePrediction)
    n = len(spread)
    assert len(pred) == n and (pred.width, pred.height) == (SIZE[1], SIZE[0]) and pred.processing_scale == 1.0
    assert pred.masks.shape == (n, *SIZE) and pred.masks.dtype == np.uint8
    assert pred.probs.shape == (n, 24) and pred.features.shape[0] == n
    assert pred.scores.dtype == np.float32 and pred.boxes.shape == (n, 4)
    assert pred.labels.shape == (n,) and pred.count == int((pred.labels > 0).sum())
    assert pred.karyotype and pred.karyotype == pred.assignment.iscn
    np.testing.assert_array_equal(pred.masks, spread.masks)  # the (ground-truth) instances, at full resolution


def test_prediction_json_round_trip(weights, spread, gt_segment):
    """to_json_dict -> from_json_dict -> to_json_dict gives the same document (what the review app reads)."""
    pipe = KaryotypePipeline(weights[0], weights[1], device="cpu")
    pred = pipe.run(spread.image, name="cell.png")
    doc = json.loads(json.dumps(to_json_dict(pred)))
    back = from_json_dict(doc)
    assert to_json_dict(back) == doc
    np.testing.assert_array_equal(back.masks, pred.masks)
    np.testing.assert_array_equal(back.labels, pred.labels)
    with pytest.raises(ValueError, match="missing key"):
        from_json_dict({k: v for k, v in doc.items() if k != "chromosomes"})


def test_core_downscales_and_maps_back(weights, spread, monkeypatch, tmp_path):
    """An image larger than max_side is processed downscaled; boxes and masks come back in original pixels, the
    overlay is drawn at the processing scale."""
    from datasets.record import KaryoRecord
    from karyotyping.export import write_outputs

    pipe = KaryotypePipeline(weights[0], weights[1], device="cpu", max_side=176)  # SIZE / 2
    seen = {}

    def segment(self, image):
        seen["shape"] = image.shape
        m = np.zeros((1, *image.shape), np.uint8)
        m[0, 40:80, 50:60] = 1
        return KaryoRecord(image=image, boxes=[[50, 40, 60, 80]], labels=[0], masks=m, scores=[0.9])

    monkeypatch.setattr(KaryotypePipeline, "segment", segment)
    with pytest.warns(UserWarning, match="downscaled"):
        pred = pipe.run(spread.image)
    assert seen["shape"] == (160, 176) and pred.processing_scale == pytest.approx(0.5)
    np.testing.assert_allclose(pred.boxes[0], [100, 80, 120, 160])
    assert pred.masks.shape == (1, *SIZE) and pred.masks[0, 80:160, 100:120].all() and pred.masks.sum() == 80 * 20
    assert pred.record.image.shape == SIZE  # one record, at the original resolution
    overlay = write_outputs(pred, tmp_path)["overlay"]
    assert cv2.imread(str(overlay)).shape[:2] == (160, 176)


def test_resize_masks_shrinking_undoes_enlarging():
    """Masks mapped to the original resolution come back at the processing scale pixel for pixel (the overlay's)."""
    from karyotyping.core import resize_masks

    rng = np.random.default_rng(0)
    for h, w, big_h, big_w in [(433, 600, 619, 857), (349, 483, 619, 857), (50, 70, 101, 141)]:
        m = (rng.random((2, h, w)) > 0.5).astype(np.uint8)
        up = resize_masks(m, big_h, big_w)
        assert up.shape == (2, big_h, big_w) and (resize_masks(up, h, w) == m).all()
    assert resize_masks(m, h, w) is m


def test_mask_config_owns_the_mask_flags():
    """The CLI's mask flags default to MaskConfig's values and map into one MaskConfig; it is frozen."""
    import dataclasses

    from karyotyping.core import pipeline_options

    parse = ip.get_args_parser().parse_args
    assert pipeline_options(parse([]))["masks"] == MaskConfig()
    opts = pipeline_options(parse(["--smooth-masks", "--no-trim-masks", "--mask-overlap", "0.5"]))
    assert opts["masks"] == MaskConfig(smooth_masks=True, trim_masks=False, mask_overlap=0.5)
    assert set(opts) == {"masks", "polarity", "chromosome_width", "auto_scale"}
    with pytest.raises(PipelineError, match="--mask-overlap"):
        pipeline_options(parse(["--mask-overlap", "0"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        MaskConfig().mask_thresh = 0.5


def test_segment_exclusive_masks_and_mask_thresh(weights, monkeypatch, capsys, tmp_path):
    """segment(): masks at --mask-thresh, suppression, then shared pixels to the surest detection (or not)."""
    import torch

    import karyotyping.detection as detection

    h = w = 32
    prob = torch.zeros(3, 1, h, w)
    prob[0, 0, 2:30, 10:14] = 0.9  # vertical chromosome
    prob[1, 0, 12:16, 0:32] = 0.8  # horizontal one crossing it
    prob[1, 0, 12:16, 10:14] = 0.95  # ... surer of the crossing than the vertical one
    prob[2, 0, 0:2, 0:2] = 0.45  # a faint speck: kept at 0.4, gone at 0.5
    out = {
        "boxes": torch.tensor([[10.0, 2, 14, 30], [0, 12, 32, 16], [0, 0, 2, 2]]),
        "labels": torch.ones(3, dtype=torch.int64),
        "scores": torch.tensor([0.99, 0.9, 0.8]),
        "masks": prob,
    }
    monkeypatch.setattr(detection, "detect_soft", lambda *a, **k: out)
    image = np.ones((h, w), np.float32)

    def segment(**masks):
        return KaryotypePipeline(*weights, device="cpu", masks=MaskConfig(**masks)).segment(image)

    on = segment(trim_masks=False, mask_overlap=1.0)
    assert len(on) == 3 and on.masks.sum(0).max() == 1 and on.labels.tolist() == [0, 0, 0]
    assert on.masks[1, 12:16, 10:14].all() and not on.masks[0, 12:16, 10:14].any()
    off = segment(trim_masks=False, mask_overlap=1.0, exclusive_masks=False)
    assert off.masks.sum(0).max() == 2 and off.masks[0, 12:16, 10:14].all()
    assert len(segment(trim_masks=False, mask_overlap=1.0, mask_thresh=0.5)) == 2
    # a detection left without a pixel goes: instance 1 covers all of a fully crossed duplicate
    dup = dict(out, masks=torch.stack([prob[1], prob[1] * 0.5, prob[2]]))
    monkeypatch.setattr(detection, "detect_soft", lambda *a, **k: dup)
    assert len(segment(trim_masks=False, mask_overlap=1.0)) == 2
    # the default trims the masks to the image's foreground: nothing is left on a blank image, and on one where
    # the two chromosomes are dark they stay, exclusive, without the rim of background
    monkeypatch.setattr(detection, "detect_soft", lambda *a, **k: out)
    assert len(segment(mask_overlap=1.0)) == 0
    dark = image.copy()
    dark[2:30, 11:13] = 0.3
    dark[13:15, 0:32] = 0.3
    trimmed = KaryotypePipeline(*weights, device="cpu", masks=MaskConfig(mask_overlap=1.0)).segment(dark)
    assert len(trimmed) >= 2 and trimmed.masks.sum(0).max() == 1
    assert trimmed.masks[0, 2:30, 11:13].sum() + trimmed.masks[1, 2:30, 11:13].sum() == 2 * 28
    assert trimmed.masks[:2].sum() < on.masks[:2].sum()  # part of the rims went (1-px smoothing keeps some)
    with pytest.raises(ValueError, match="--mask-thresh"):
        MaskConfig(mask_thresh=1.0)
    with pytest.raises(PipelineError, match="MaskConfig"):
        KaryotypePipeline(*weights, device="cpu", masks={"mask_thresh": 0.5})
    assert ip.cli(_args(weights, "--mask-thresh", "0", "--out", str(tmp_path / "o"))) == 2
    assert "--mask-thresh" in capsys.readouterr().err
    # flip TTA is a flag of evaluate.py only (issue 26 item 6): the inference CLI refuses it, keeps the default
    assert not hasattr(ip.get_args_parser().parse_args([]), "flip_tta")
    with pytest.raises(SystemExit):
        ip.get_args_parser().parse_args(["--flip-tta"])
    import evaluate
    from karyotyping.core import FLIP_TTA

    parse = evaluate.get_args_parser().parse_args
    need = ["--stage", "cls", "--dataset", "synthetic", "--out", str(tmp_path / "e")]
    assert parse(need).flip_tta is FLIP_TTA and parse([*need, "--flip-tta"]).flip_tta is True
    assert parse([*need, "--no-flip-tta"]).flip_tta is False
