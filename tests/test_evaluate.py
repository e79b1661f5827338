"""evaluate.py: every --stage on a tiny synthetic set with the trainers' smoke weights.

The untrained detector finds nothing, so each stage is also run with ``KaryotypePipeline.segment``
replaced by the ground truth (labels hidden): segmentation metrics are then perfect by construction
and the identification figures are those of the smoke classifier + assignment.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import evaluate
from karyotyping.core import KaryotypePipeline
from tests.test_pipeline import weights  # noqa: F401  (module-scoped smoke checkpoints)

SYN = ["--dataset", "synthetic", "--synthetic-n", "2", "--synthetic-size", "256"]

SEG_KEYS = {"images", "bbox_AP50", "agnostic_bbox_AP50", "segm_AP50", "PQ_all", "AJI"}
CLS_KEYS = {
    "images",
    "accuracy",
    "cell_exact_rate",
    "argmax_accuracy",
    "assignment_accuracy",
    "rule_based_accuracy",
    "sanity_score",
}
FULL_KEYS = {
    "images",
    "PQ_all",
    "AJI",
    "accuracy",
    "mPQ",
    "sanity_score",
    "system_bbox_AP50",
    "system_segm_AP50",
    "agnostic_bbox_AP50",
    "count_error_mean_abs",
}


@pytest.fixture(autouse=True)
def _restore_grad():
    import torch

    grad = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(grad)


def _run(weights, tmp_path, capsys, stage: str, *extra: str) -> tuple[dict, dict]:  # noqa: F811
    out = tmp_path / f"eval_{stage}"
    argv = [*SYN, "--stage", stage, "--seg-weights", str(weights[0]), "--cls-weights", str(weights[1])]
    plots = "--plots" in extra
    extra = tuple(e for e in extra if e != "--plots") + (() if plots else ("--no-plots",))
    args = evaluate.get_args_parser().parse_args([*argv, "--out", str(out), "--device", "cpu", "--quiet", *extra])
    res = evaluate.main(args)
    assert isinstance(res, dict)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    line = json.loads(last)  # the last stdout line is one JSON object
    assert isinstance(line, dict)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["stage"] == stage and saved["images"] == res["images"]
    return res, line


def _gt_dataset(size: int = 256):
    """The records evaluate.py builds for SYN (same generator, seed and size)."""
    from datasets.synthetic import SyntheticConfig, SyntheticDataset

    ds = SyntheticDataset(
        None, "all", n=2, seed=evaluate.SYNTHETIC_EVAL_SEED, config=SyntheticConfig(image_size=(size, size))
    )
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def gt_segment(monkeypatch):
    """Detector replaced by the ground truth of whichever evaluation image it is given."""
    recs = _gt_dataset()

    def segment(self, image):
        for rec in recs:
            if rec.image.shape == image.shape and np.abs(rec.image - image).max() < 1.5 / 255:
                r = rec.copy()
                r.labels[:] = 0
                r.scores = np.ones(len(r), np.float32)
                r.image = image
                return r
        raise AssertionError("segment() given an image that is not one of the evaluation spreads")

    monkeypatch.setattr(KaryotypePipeline, "segment", segment)
    # the fake detector answers in the image's own pixels: no rescaling to the models' chromosome width
    monkeypatch.setattr("karyotyping.image_checks.processing_factor", lambda *a, **k: 1.0)


def test_seg_stage(weights, tmp_path, capsys):  # noqa: F811
    res, line = _run(weights, tmp_path, capsys, "seg", "--score-thresh", "0.5")  # few boxes: fast mask head
    assert SEG_KEYS <= set(line), SEG_KEYS - set(line)
    assert line["images"] == 2
    assert line["PQ_all"] == 0.0 and line["count_error_mean_abs"] > 40  # untrained: nothing found
    from karyotyping.detection import SCORE_THRESH

    assert line["pipeline_score_thresh"] == SCORE_THRESH  # the matching figures say their threshold


def test_cls_stage(weights, tmp_path, capsys):  # noqa: F811
    res, line = _run(weights, tmp_path, capsys, "cls", "--plots")
    assert CLS_KEYS <= set(line), CLS_KEYS - set(line)
    assert line["images"] == 2 and line["chromosomes"] >= 90
    for k in ("accuracy", "argmax_accuracy", "assignment_accuracy", "rule_based_accuracy", "sanity_score"):
        assert 0.0 <= line[k] <= 1.0
    for k in ("argmax_iscn_exact_rate", "assignment_iscn_exact_rate", "rule_based_iscn_exact_rate"):
        assert line[k] in (0.0, 0.5, 1.0)  # two cells: each ISCN string is right or wrong
    assert (tmp_path / "eval_cls" / "confusion_assignment.png").is_file()


def test_full_stage_untrained(weights, tmp_path, capsys):  # noqa: F811
    res, line = _run(weights, tmp_path, capsys, "full")
    assert FULL_KEYS <= set(line), FULL_KEYS - set(line)
    assert line["system_bbox_AP50"] == 0.0 and line["agnostic_bbox_AP50"] == 0.0
    assert line["true_missed_rate"] == 1.0 and line["true_found_rate"] == line["true_mask_failed_rate"] == 0.0
    assert "found_identification_accuracy" not in line  # nothing found


def test_full_stage_ground_truth_instances(weights, tmp_path, capsys, gt_segment):  # noqa: F811
    res, line = _run(weights, tmp_path, capsys, "full")
    assert FULL_KEYS <= set(line), FULL_KEYS - set(line)
    # perfect instances: agnostic detection and segmentation are exact
    assert line["PQ_all"] == pytest.approx(1.0)
    assert line["AJI"] == pytest.approx(1.0)
    assert line["agnostic_bbox_AP50"] == pytest.approx(1.0)
    assert line["agnostic_segm_AP50"] == pytest.approx(1.0)
    assert line["true_found_rate"] == 1.0 and line["true_missed_rate"] == line["true_mask_failed_rate"] == 0.0
    assert line["accuracy"] == pytest.approx(line["found_identification_accuracy"])  # all found
    # the 24-class system AP is bounded by identification; with perfect masks a chromosome is a true
    # positive exactly when its label is right
    assert 0.0 <= line["system_bbox_AP50"] <= 1.0 and 0.0 <= line["system_segm_AP50"] <= 1.0
    if line["accuracy"] == 0.0:
        assert line["system_bbox_AP50"] == 0.0
    assert 0.0 <= line["mPQ"] <= 1.0
    assert line["count_error_mean_abs"] <= 1.0  # 46 instances, assignment may leave one unassigned
    assert 0.0 <= line["sanity_score"] <= 1.0
    assert isinstance(res["per_class_PQ"], dict)


def test_full_stage_counts_without_classes(weights, tmp_path, capsys, gt_segment, monkeypatch):  # noqa: F811
    """Ground truth with instances but no classes (labels 0), and one with only a karyotype: no crash,
    count error and sanity score reported, no identification figures."""
    recs = _gt_dataset()
    a = recs[0].copy()
    a.labels[:] = 0
    b = recs[1].select(np.zeros(len(recs[1]), bool))  # no instances ...
    b.meta["karyotype"] = "46,XX"  # ... but a known count
    monkeypatch.setattr(evaluate, "_dataset", lambda args: ([a, b], 2))
    res, line = _run(weights, tmp_path, capsys, "full")
    assert line["images"] == 2 and line["images_with_classes"] == 0
    assert line["count_error_mean_abs"] == pytest.approx(np.mean([abs(46 - 46), abs(46 - 46)]), abs=1.0)
    assert 0.0 <= line["sanity_score"] <= 1.0
    assert "accuracy" not in line and "system_bbox_AP50" not in line and "mPQ" not in line
    assert line["true_found_rate"] == 1.0 and "found_identification_accuracy" not in line
    assert line["agnostic_bbox_AP50"] == pytest.approx(1.0)  # the image with instances is still scored
    assert not any(isinstance(v, float) and math.isnan(v) for k, v in line.items() if k != "ap_score")


# ---------------------------------------------------------------------------------------------- --split test
FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


def _write_formats(root, kind: str):
    """Three small synthetic spreads written as a ``kind`` dataset (coco, labelme or yolo) under ``root``."""
    import cv2
    import yaml

    from datasets.coco import records_to_coco
    from datasets.io import atomic_write_json
    from datasets.synthetic import SyntheticConfig, SyntheticDataset

    ds = SyntheticDataset(None, "all", n=3, seed=5, config=SyntheticConfig(image_size=(128, 128)))
    recs = [ds[i] for i in range(len(ds))]
    img_dir = root / ("images" if kind != "labelme" else "")
    img_dir.mkdir(parents=True, exist_ok=True)
    names = [f"s{i}.png" for i in range(len(recs))]
    for name, rec in zip(names, recs):
        assert cv2.imwrite(str(img_dir / name), np.round(rec.image * 255).astype(np.uint8))
    if kind == "coco":
        atomic_write_json(root / "annotations.json", records_to_coco(recs, names))
    elif kind == "yolo":
        order = sorted([str(i) for i in range(1, 23)] + ["X", "Y"])
        (root / "data.yaml").write_text(yaml.safe_dump({"names": order, "nc": 24}))
        (root / "labels").mkdir()
        for name, rec in zip(names, recs):
            lines = []
            for (x1, y1, x2, y2), lab in zip(rec.boxes, rec.labels):
                cx, cy, w, h = (x1 + x2) / 256, (y1 + y2) / 256, (x2 - x1) / 128, (y2 - y1) / 128
                lines.append(f"{order.index(['X', 'Y'][lab - 23] if lab > 22 else str(lab))} {cx} {cy} {w} {h}")
            (root / "labels" / name.replace(".png", ".txt")).write_text("\n".join(lines))
    else:  # labelme rectangles
        for name, rec in zip(names, recs):
            shapes = [
                {"label": str(int(lab)) if lab <= 22 else "XY"[lab - 23], "shape_type": "rectangle",
                 "points": [[float(b[0]), float(b[1])], [float(b[2]), float(b[3])]]}
                for b, lab in zip(rec.boxes, rec.labels)
            ]  # fmt: skip
            doc = {"shapes": shapes, "imagePath": name, "imageData": None, "imageHeight": 128, "imageWidth": 128}
            (root / name.replace(".png", ".json")).write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize(
    ("kind", "root", "fraction"),
    [
        ("voc", "cil", 0.5),
        ("mfish", "mfish", 0.6),
        ("crops", "bioimlab", 0.6),
        ("crops_cells", "bioimlab", 0.6),
        ("coco", None, 0.34),
        ("labelme", None, 0.34),
        ("yolo", None, 0.34),
        ("synthetic", None, 0.34),
    ],
)
def test_split_test_works_on_every_dataset_kind(kind, root, fraction, weights, tmp_path, capsys):  # noqa: F811
    """--split test --test-fraction F: a non-empty test split, disjoint from train and val, scored end to end."""
    if root is not None:
        data = FIXTURES / root
    elif kind != "synthetic":
        data = _write_formats(tmp_path / kind, kind)
    argv = ["--dataset", kind, "--split", "test", "--test-fraction", str(fraction), "--val-fraction", "0.1"]
    if kind == "synthetic":  # the trainers' own generation seed, so --split applies (not the unseen default)
        argv += ["--synthetic-n", "3", "--synthetic-size", "128", "--synthetic-seed", "0"]
    else:
        argv += ["--data-root", str(data)]
    argv += ["--stage", "seg", "--score-thresh", "0.5", "--max-images", "1", "--out", str(tmp_path / "e")]
    argv += ["--seg-weights", str(weights[0]), "--cls-weights", str(weights[1]), "--device", "cpu", "--quiet"]
    args = evaluate.get_args_parser().parse_args(argv)
    ds, n = evaluate._dataset(args)
    assert n == 1 and len(ds) >= 1
    from datasets import build_dataset

    kw = {"val_fraction": 0.1, "test_fraction": fraction, "seed": args.split_seed}
    if kind == "synthetic":
        kw |= {"n": 3, "config": __import__("datasets.synthetic").synthetic.SyntheticConfig(image_size=(128, 128))}
    root_arg = None if kind == "synthetic" else data
    test_ids = {r.image_id for r in (ds[i] for i in range(len(ds)))}
    for other in ("train", "val"):
        try:
            o = build_dataset(kind, root_arg, other, **kw)
        except ValueError:  # an empty split of a one-group fixture
            continue
        assert not test_ids & {o[i].image_id for i in range(len(o))}, f"{other} and test share images"
    res = evaluate.main(args)
    assert res["split"] == "test" and res["images"] == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split"] == "test"


def test_derive_crossings_is_for_voc_and_reaches_the_loader(tmp_path):
    base = ["--stage", "seg", "--out", str(tmp_path / "e"), "--derive-crossings", "axis"]
    args = evaluate.get_args_parser().parse_args(["--dataset", "mfish", "--data-root", str(FIXTURES / "mfish"), *base])
    with pytest.raises(evaluate.PipelineError, match="--derive-crossings applies to --dataset voc"):
        evaluate._dataset(args)
    args = evaluate.get_args_parser().parse_args(
        ["--dataset", "voc", "--data-root", str(FIXTURES / "cil"), "--split", "all", *base]
    )
    ds, n = evaluate._dataset(args)
    assert ds.crossings == "axis" and n == 2


def test_split_test_without_test_fraction_says_what_to_do(weights, tmp_path):  # noqa: F811
    argv = ["--dataset", "voc", "--data-root", str(FIXTURES / "cil"), "--split", "test", "--stage", "seg"]
    args = evaluate.get_args_parser().parse_args([*argv, "--out", str(tmp_path / "e")])
    with pytest.raises(evaluate.PipelineError, match="--test-fraction > 0"):
        evaluate._dataset(args)
