"""The measuring scripts of benchmarks/ and experiments/ on small inputs with known answers (and the training-throughput
benchmark refusing CUDA where there is none)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_throughput_child_measures_a_step():
    mod = _load()
    args = mod.get_args_parser().parse_args(
        ["--dataset", "synthetic", "--synthetic-spreads", "2", "--set", "min_size=96", "max_size=96",
         "rpn_post_nms_top_n_train=100", "--steps", "1", "--warmup", "0", "--workers", "0", "--child", "cpu,0"]
    )  # fmt: skip
    assert mod.model_config(args).min_size == 96 and mod.model_config(args).backbone  # the shipped file's model
    res = mod.run_child(args)
    assert res["device"] == "cpu" and res["amp_dtype"] == "float32" and res["steps"] == 1
    assert res["images_per_s"] > 0 and math.isfinite(res["images_per_s"])
    assert res["peak_rss_mib"] > 100


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_train_throughput_cuda_without_cuda_is_an_error(capsys):
    rc = _load().main(["--dataset", "synthetic", "--bench-device", "cuda"])
    assert rc == 2 and "CUDA is not available" in capsys.readouterr().err


def test_box_margin_benchmark_on_a_known_margin(tmp_path, capsys):
    import cv2
    import numpy as np

    spec = importlib.util.spec_from_file_location("box_margin", ROOT / "experiments" / "box_margin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "JEPG").mkdir()
    (tmp_path / "annotations").mkdir()
    for k in range(2):
        img = np.full((80, 100), 230, np.uint8)
        img[10:50, 20 + 30 * k : 30 + 30 * k] = 60  # a dark rod, 10 x 40 px
        cv2.imwrite(str(tmp_path / "JEPG" / f"s{k}.png"), img)
        x1, x2 = 20 + 30 * k - 4, 30 + 30 * k + 4 - 1  # VOC boxes are inclusive: 4 px outside the rod
        (tmp_path / "annotations" / f"s{k}.xml").write_text(
            f"<annotation><object><name>1</name><bndbox><xmin>{x1}</xmin><ymin>6</ymin><xmax>{x2}</xmax>"
            "<ymax>53</ymax></bndbox></object></annotation>"
        )
    res = mod.main(mod.get_args_parser().parse_args(["--data-root", str(tmp_path), "--split", "all"]))
    assert res["images"] == 2 and res["boxes"] == 2
    assert res["margin_px_p5_p25_p50_p75_p95"][2] == pytest.approx(4.0, abs=1.0)
    assert res["iou_tight_median"] < 0.75 < res["iou_grown_median"]
    assert "| the mask's tight box |" in capsys.readouterr().out


def test_tune_mask_overlap_on_perfect_detections(monkeypatch, capsys):
    """With the true masks as the detector's output, every threshold row scores F1 1 and count error 0."""
    import hashlib

    import numpy as np

    import karyotyping.detection as detection
    from datasets import build_dataset

    spec = importlib.util.spec_from_file_location("tune_mask_overlap", ROOT / "benchmarks" / "tune_mask_overlap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ds = build_dataset("synthetic", None, "val", val_fraction=0.1, seed=0)
    truth = {hashlib.sha1(ds[i].image.tobytes()).hexdigest(): ds[i].masks for i in range(2)}

    def detect_soft(model, image, *, score_thresh, device=None):
        m = torch.from_numpy(truth[hashlib.sha1(image.tobytes()).hexdigest()].astype(np.float32))
        return {"boxes": torch.zeros(len(m), 4), "labels": torch.ones(len(m), dtype=torch.int64),
                "scores": torch.full((len(m),), 0.9), "masks": 0.8 * m[:, None]}  # fmt: skip

    monkeypatch.setattr(detection, "detect_soft", detect_soft)
    from types import SimpleNamespace

    model = SimpleNamespace(roi_heads=SimpleNamespace(nms_thresh=0.5))
    monkeypatch.setattr("models.segmentation.load_segmentation_checkpoint", lambda path, device: (model, None))
    argv = ["--dataset", "synthetic", "--data-root", "none", "--max-images", "2", "--mask-thresh", "0.4", "0.5",
            "--exclusive", "off", "on", "--trim", "off", "on", "--score-thresh", "0.5", "--thresholds", "1.0",
            "0.5", "--box-nms", "0.5", "0.65"]  # fmt: skip
    assert mod.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert len(rows) == 2 * 2 * 2 * 2 * 2 and {r[2] for r in rows} == {r[3] for r in rows} == {"on", "off"}
    assert {r[0] for r in rows} == {"0.50", "0.65"} and model.roi_heads.nms_thresh == 0.65  # each NMS value set
    assert all(float(r[8]) == 1.0 and float(r[10]) == 0.0 for r in rows)  # F1 and count error
    with pytest.raises(SystemExit, match="validation split"):
        mod.main(["--dataset", "synthetic", "--split", "test"])


def test_errors_by_shape_bins_the_trainer_val_errors(tmp_path, capsys):
    """Errors placed on the most irregular masks show up in width_cv's top quintile; a foreign cache is refused."""
    import json
    from collections import Counter

    import numpy as np

    from datasets.instances import save_instance_cache
    from features.triad import FEATURE_NAMES

    spec = importlib.util.spec_from_file_location("errors_by_shape", ROOT / "experiments" / "errors_by_shape.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = 50
    feats = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    feats[:, FEATURE_NAMES.index("width_cv")] = np.arange(n) / n
    labels = np.arange(n) % 24
    arrays = {"crops": np.zeros((n, 8, 8), np.uint8), "features": feats, "labels": labels,
              "cell": np.zeros(n, np.int64), "lengths": np.ones(n, np.float32),
              "centromere": np.full(n, 0.4, np.float32), "image_ids": np.asarray(["a"])}  # fmt: skip
    save_instance_cache(tmp_path / "val.npz", arrays, key="k", skipped=Counter())
    probs = np.eye(24)[labels]
    probs[45:] = np.eye(24)[(labels[45:] + 1) % 24]  # the 5 most irregular chromosomes are wrong
    np.savez(tmp_path / "val_probs.npz", probs=probs, labels=labels, cell=np.zeros(n))
    assert mod.main(["--val-probs", str(tmp_path / "val_probs.npz"), "--cache", str(tmp_path / "val.npz"),
                     "--features", "width_cv"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = out["features"]["width_cv"]
    assert [r["error_rate"] for r in rows] == [0.0, 0.0, 0.0, 0.0, 0.5] and rows[-1]["share_of_errors"] == 1.0
    np.savez(tmp_path / "other.npz", probs=probs[:10], labels=labels[:10], cell=np.zeros(10))
    with pytest.raises(SystemExit, match="was not made on"):
        mod.main(["--val-probs", str(tmp_path / "other.npz"), "--cache", str(tmp_path / "val.npz")])
    with pytest.raises(SystemExit, match="--bins"):
        mod.main(["--val-probs", str(tmp_path / "val_probs.npz"), "--cache", str(tmp_path / "val.npz"), "--bins", "0"])
    with pytest.raises(SystemExit, match="unknown feature"):
        mod.main(["--val-probs", str(tmp_path / "val_probs.npz"), "--cache", str(tmp_path / "val.npz"),
                  "--features", "colour"])  # fmt: skip


def test_merged_masks_finds_a_mask_that_holds_two_chromosomes(monkeypatch, tmp_path, capsys):
    """A fake detector that returns the first two true chromosomes as one mask: one merged mask, drawn."""
    import hashlib

    import numpy as np

    import karyotyping.detection as detection
    from datasets import build_dataset

    spec = importlib.util.spec_from_file_location("merged_masks", ROOT / "experiments" / "merged_masks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ds = build_dataset("synthetic", None, "val")
    truth = {hashlib.sha1(ds[0].image.tobytes()).hexdigest(): ds[0].masks}

    def detect_soft(model, image, *, score_thresh, device=None):
        t = truth[hashlib.sha1(image.tobytes()).hexdigest()].astype(np.float32)
        m = torch.from_numpy(np.concatenate([np.maximum(t[0], t[1])[None], t[2:]]))
        return {"boxes": torch.zeros(len(m), 4), "labels": torch.ones(len(m), dtype=torch.int64),
                "scores": torch.linspace(0.99, 0.9, len(m)), "masks": 0.8 * m[:, None]}  # fmt: skip

    monkeypatch.setattr(detection, "detect_soft", detect_soft)
    monkeypatch.setattr("models.segmentation.load_segmentation_checkpoint", lambda path, device: (None, None))
    out = tmp_path / "merged.png"
    argv = ["--dataset", "synthetic", "--data-root", "none", "--max-images", "1", "--out", str(out)]
    assert mod.main(argv) == 0
    assert "1 kept masks hold half or more of two or more true chromosomes" in capsys.readouterr().out
    assert out.is_file() and not (tmp_path / "merged.tmp.png").exists()
    with pytest.raises(SystemExit, match="validation split"):
        mod.main(["--dataset", "synthetic", "--split", "test"])


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_derived_vs_true_masks_on_the_mfish_fixture(capsys):
    mod = _load_benchmark("derived_vs_true_masks")
    fixtures = ROOT / "tests" / "fixtures"
    argv = ["--data-root", str(fixtures / "mfish"), "--split", "all"]
    res = mod.main(mod.get_args_parser().parse_args(argv))
    assert res["images"] == 1 and res["chromosomes"] == 51
    for rule in ("nearest", "axis"):
        s = res["rules"][rule]
        assert s["all"]["n"] == s["isolated"]["n"] + s["touching"]["n"] + s["crossing"]["n"] == 51
        assert s["crossing"]["n"] == 16 and 0.0 <= s["all"]["mean_iou"] <= 1.0
    # on this slide the isolated chromosomes get the same masks under either rule, the crossing ones fit better with "axis"
    assert res["rules"]["axis"]["isolated"] == res["rules"]["nearest"]["isolated"]
    assert res["rules"]["axis"]["crossing"]["mean_iou"] > res["rules"]["nearest"]["crossing"]["mean_iou"]
    assert "| axis | crossing | 16 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no true pixel masks"):
        mod.main(
            mod.get_args_parser().parse_args(
                ["--dataset", "voc", "--data-root", str(fixtures / "cil"), "--split", "all"]
            )
        )
    with pytest.raises(SystemExit, match="unknown"):
        mod.main(mod.get_args_parser().parse_args([*argv, "--rules", "middle"]))


def test_show_derived_masks_compares_the_crossing_rules(tmp_path, capsys):
    import cv2
    import numpy as np

    mod = _load_benchmark("show_derived_masks")
    (tmp_path / "JEPG").mkdir()
    (tmp_path / "annotations").mkdir()
    img = np.full((100, 100), 230, np.uint8)
    cv2.line(img, (20, 15), (78, 85), 60, 9)  # two rods crossing in an X
    cv2.line(img, (78, 18), (22, 82), 60, 9)
    cv2.imwrite(str(tmp_path / "JEPG" / "x.png"), img)
    objects = "".join(
        f"<object><name>{k}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        "</bndbox></object>"
        for k, (x1, y1, x2, y2) in enumerate([(11, 6, 87, 94), (13, 9, 87, 91)], start=1)
    )
    (tmp_path / "annotations" / "x.xml").write_text(f"<annotation>{objects}</annotation>")
    out = tmp_path / "crossings.png"
    argv = ["--root", str(tmp_path), "--ids", "x", "--crossings", "compare", "--out", str(out)]
    mod.main(mod.get_args_parser().parse_args(argv))
    assert out.stat().st_size > 0 and "(1 crossings)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not in"):
        mod.main(mod.get_args_parser().parse_args([*argv[:2], "--ids", "nope", *argv[4:]]))


def _load_script(rel: str):
    name = Path(rel).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (ROOT / "weights" / "segmentation.pt").is_file(), reason="shipped weights/ not present")
def test_robustness_runs_variants_and_inverted_equals_original(tmp_path, capsys):
    """The bundled CIL cell through the pipeline as it is, inverted and at half the resolution: one row each,
    the inverted one exactly the original's (the pipeline inverts it back), a table and robustness.json."""
    import json

    mod = _load_script("benchmarks/robustness.py")
    argv = ["--data-root", str(ROOT / "tests" / "fixtures" / "cil"), "--split", "train", "--val-fraction", "0",
            "--max-images", "1", "--variants", "original", "inverted", "scale_0.5", "--out", str(tmp_path),
            "--quiet"]  # fmt: skip
    res = mod.main(mod.get_args_parser().parse_args(argv))["variants"]
    assert set(res) == {"original", "inverted", "scale_0.5"}
    for k in ("f1@0.5", "accuracy", "count_exact_rate", "fragments_per_true", "out_of_range_rate"):
        assert res["inverted"][k] == res["original"][k], k
    assert res["original"]["f1@0.5"] > 0.5 and res["scale_0.5"]["f1@0.5"] > 0.5
    assert "| scale_0.5 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "robustness.json").read_text())["variants"]["original"]["images"] == 1


def test_robustness_scale_estimate_follows_resampling(tmp_path):
    mod = _load_script("benchmarks/robustness.py")
    argv = ["--data-root", str(ROOT / "tests" / "fixtures" / "cil"), "--split", "train", "--val-fraction", "0",
            "--scale-estimate", "--out", str(tmp_path)]  # fmt: skip
    res = mod.main(mod.get_args_parser().parse_args(argv))
    assert res["calibration"]["images"] == 1 and 5 < res["calibration"]["reference_width_px"] < 40
    est = res["scale_estimate"]
    for name in ("scale_0.5", "scale_0.35", "scale_2", "scale_3"):
        assert est[name]["median_ratio"] == pytest.approx(1.0, abs=0.15), name


# ---------------------------------------------------------------------------------------------- the review loop
#: the rods of the review loop's known cell: (end, end) in (x, y) pixels, 8 px wide, and the true class of each
_LOOP_RODS = {
    0: (((20, 20), (20, 110)), 1),  # found, labelled 2: relabel
    1: (((50, 20), (50, 110)), 3),  # found and right
    2: (((80, 60), (170, 60)), 4),  # 2 and 3 cross and are found as one instance: separate
    3: (((125, 15), (125, 105)), 5),
    4: (((200, 20), (200, 110)), 6),  # 4 and 5 touch and are found as one: cut
    5: (((209, 20), (209, 110)), 7),
    6: (((245, 20), (245, 110)), 8),  # missed: draw
    7: (((20, 160), (130, 160)), 9),  # found as two pieces: redraw
}


def _review_loop():
    """benchmarks/review_loop.py as a module (registered in sys.modules: its dataclasses need it)."""
    import sys

    if "review_loop" not in sys.modules:
        spec = importlib.util.spec_from_file_location("review_loop", ROOT / "benchmarks" / "review_loop.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["review_loop"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["review_loop"]


def _loop_case():
    """A cell with one case of each correction: true masks and labels, the predicted ones (ids 0-7: the
    relabelled, the right one, the crossing pair, the touching pair, two pieces of one rod, a speck of
    debris, a duplicate piece of a found rod), and the expected corrections."""
    import cv2
    import numpy as np

    shape = (220, 300)

    def rod(ends):
        m = np.zeros(shape, np.uint8)
        cv2.line(m, *ends, 1, thickness=8)
        return m

    true = np.stack([rod(e) for e, _ in _LOOP_RODS.values()])
    labels = np.array([k for _, k in _LOOP_RODS.values()])
    k5 = np.ones((5, 5), np.uint8)
    piece = lambda x0, x1: rod(((x0, 160), (x1, 160)))  # noqa: E731
    speck = np.zeros(shape, np.uint8)
    cv2.circle(speck, (280, 200), 6, 1, -1)
    dup = np.zeros(shape, np.uint8)
    dup[30:50] = true[1][30:50]
    pred = np.stack([true[0], true[1], cv2.dilate(true[2] | true[3], k5), cv2.dilate(true[4] | true[5], k5),
                     piece(20, 60), piece(90, 130), speck, dup])  # fmt: skip
    pred_labels = np.array([2, 3, 4, 6, 9, 9, 0, 3])
    assert (true[2] & true[3]).any() and not (true[4] & true[5]).any()  # the crossing shares pixels, the touch none
    expected = {"relabel": 1, "delete": 2, "cut": 1, "separate": 1, "redraw": 1, "draw": 1}
    return true, labels, pred, pred_labels, expected


def test_review_loop_plans_the_corrections_of_a_known_cell():
    mod = _review_loop()
    true, labels, pred, pred_labels, expected = _loop_case()
    plan = mod.plan_corrections(true, labels, pred, pred_labels)
    assert dict(plan.counts) == expected
    assert plan.keep == {0: 0, 1: 1} and plan.relabel == [0]
    assert sorted(plan.delete) == [6, 7] and sorted(plan.replace) == [2, 3, 4, 5]
    assert plan.draw == {2: "separate", 3: "separate", 4: "cut", 5: "cut", 6: "draw", 7: "redraw"}


@pytest.mark.skipif(not (ROOT / "weights" / "classifier.pt").is_file(), reason="shipped weights/ not present")
def test_review_loop_reviewer_saves_the_truth_through_the_app(tmp_path):
    """The simulated reviewer corrects the known cell through the review app's own code (Delete, Draw, moves,
    save): reviewed_coco.json then holds exactly the true chromosomes with their classes."""
    import json

    import numpy as np

    from datasets import build_dataset
    from datasets.io import atomic_write_image
    from metrics.matching import iou_matrix
    from review.store import ResultsFolder
    from tests.review_fixtures import _result_json

    mod = _review_loop()
    true, labels, pred, pred_labels, expected = _loop_case()
    image = np.where(pred.any(0) | true.any(0), 0.3, 0.95).astype(np.float32)
    image[true.any(0) & ((np.arange(image.shape[1])[None, :] // 9) % 3 == 0)] = 0.15  # bands
    atomic_write_image(tmp_path / "cell.png", np.round(image * 255).astype(np.uint8))
    n = len(pred)
    data = _result_json(tmp_path / "cell.png", pred, pred_labels.tolist(), [[] for _ in range(n)], [-1] * n,
                        [0.9] * n, [None] * n)  # fmt: skip
    (tmp_path / "cell.json").write_text(json.dumps(data))
    out = mod.review_cell(ResultsFolder(tmp_path), "cell", true, labels)
    assert out["counts"] == expected and out["draw_refused"] == 0
    assert len(out["drawn_iou"]) == 6 and min(out["drawn_iou"]) > 0.85  # 2 + 2 + 1 + 1 rods drawn
    ops = [e["op"] for e in out["edits"]]
    assert ops.count("debris") == 6 and ops.count("draw") == 6
    reviewed = json.loads((tmp_path / "cell.reviewed.json").read_text())["review"]
    assert reviewed["status"] == "accepted" and reviewed["reviewer"] == mod.REVIEWER
    rec = build_dataset("coco", tmp_path / "reviewed_coco.json", "all")[0]
    assert len(rec) == len(true)  # the speck, the duplicate and the replaced instances are gone
    iou = iou_matrix(true, rec.masks)
    match = iou.argmax(1)
    assert sorted(match.tolist()) == list(range(len(true))) and iou.max(1).min() > 0.85
    assert rec.labels[match].tolist() == labels.tolist()


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "weights" / "segmentation.pt").is_file(), reason="shipped weights/ not present")
def test_review_loop_smoke_runs_the_loop_end_to_end(tmp_path):
    """--smoke: a synthetic pool cell reviewed and saved by the app's code, both models fine-tuned on it (one step
    each, with a synthetic replay) and, as the control, on the replay alone; the pipeline measured before and
    after; the new weights load and differ from the start."""
    import json

    import torch

    from datasets import build_dataset
    from models.classifier import load_classifier_members, read_classifier_file
    from models.segmentation import load_segmentation_checkpoint

    mod = _review_loop()
    res = mod.main(mod.get_args_parser().parse_args(
        ["--smoke", "--ks", "0", "1", "--max-eval", "1", "--out", str(tmp_path), "--quiet"]))  # fmt: skip
    assert list(res["runs"]) == ["before", "K=0", "K=1"]  # K = 0: the control, replay alone
    assert res["runs"]["K=0"]["finetune"]["reviewed_repeat"] == 0 and res["runs"]["K=0"]["review"]["cells"] == 0
    for run in res["runs"].values():
        assert 0.0 <= run["nearest"]["f1@0.5"] <= 1.0 and run["nearest"]["images"] == 1
    review = res["runs"]["K=1"]["review"]
    assert review["cells"] == 1 and review["draw_refused"] == 0
    coco = build_dataset("coco", tmp_path / "k1" / "results" / "reviewed_coco.json", "all")
    assert len(coco) == 1 and len(coco[0]) == review["true_chromosomes"]  # one instance per true chromosome
    ft = res["runs"]["K=1"]["finetune"]
    assert ft["reviewed_repeat"] == 2 and ft["cpu_s"]["seg"] > 0
    start, _ = load_segmentation_checkpoint(ROOT / "weights" / "segmentation.pt", "cpu")
    tuned, _ = load_segmentation_checkpoint(ft["seg"], "cpu")
    a, b = start.state_dict(), tuned.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    assert len(load_classifier_members(ft["cls"], "cpu")) == 2
    m0, _ = read_classifier_file(tmp_path / "members" / "classifier_member0.pt")
    t0 = torch.load(tmp_path / "k1" / "cls0" / "last.pth", map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(m0[k].float(), t0[k].float()) for k in m0 if k in t0)
    assert (tmp_path / "table.md").is_file() and "| K=1 |" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["config"]["pool_cells"] == 1


def test_crossings_before_after_finds_the_touching_crossing_pairs():
    """Four bars: an X (90 degrees), a parallel pair touching side by side, a bar alone; only the X is a pair."""
    import cv2
    import numpy as np

    spec = importlib.util.spec_from_file_location("cba", ROOT / "experiments" / "crossings_before_after.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def bar(angle: float, centre: tuple[int, int]) -> np.ndarray:
        m = np.zeros((120, 120), np.uint8)
        cv2.fillPoly(m, [np.round(cv2.boxPoints((centre, (30, 4), -angle))).astype(np.int32)], 1)
        return m

    masks = np.stack([bar(0, (30, 30)), bar(90, (30, 30)), bar(90, (80, 30)), bar(90, (85, 30)), bar(45, (90, 95))])
    assert mod.crossing_pairs(masks, 30.0) == [(0, 1)]
    assert mod.crossing_pairs(masks, 0.0) == [(0, 1), (2, 3)]
