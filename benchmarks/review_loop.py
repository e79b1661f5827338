"""The review loop, measured (issue 25 item 5): does fine-tuning on a lab's corrected cells pay?

A simulated reviewer who knows the truth of K val cells makes the corrections a person would make in the
review app, through the app's own save path (:class:`review.store.ResultsFolder`: ``segment`` for a drawn
chromosome, ``save`` for the cell), so ``reviewed_coco.json`` is written by the same code as in the app.
Both models are then fine-tuned on those cells (``train_segmentation.py`` / ``train_classification.py`` run
as subprocesses, a fixed step budget, mixed with a replay sample of the original training data) and the whole
pipeline is measured (:class:`metrics.pipeline.PipelineEvaluator`) on the *other* val cells before and after.

    OMP_NUM_THREADS=1 python benchmarks/review_loop.py --out runs/review_loop            # K = 0 (control), 10, 30, 50
    OMP_NUM_THREADS=1 python benchmarks/review_loop.py --variant clahe --out runs/review_loop_clahe   # another lab
    python benchmarks/review_loop.py --plot runs/review_loop/results.json runs/review_loop_clahe/results.json \
        --plot-out docs/review_loop.png

**The cells.** The 100 val cells of CIL:54816 (``val_fraction 0.1``, seed 0; the test split is never read)
are split by a seeded hash of their name into a *pool* of ``--pool-n`` (50) that the reviewer may correct
and an *evaluation set* of the rest (50): every K is measured on the same 50 cells, and K cells are the
first K of the pool (K = 10 is part of K = 30). K = 100 would need more reviewed cells than val has left
beside the evaluation set; the train and test cells cannot stand in (the shipped models saw the train cells,
and the test split is kept for held-out figures), so the largest K is 50. K = 0 is the control: the same
fine-tuning with no reviewed cell (the replay sample alone), so that what the reviewed cells add is told apart
from what more training of any kind does.

**The reviewer** (:func:`plan_corrections`, :func:`review_cell`). The pipeline's instances are matched to the
true ones (masks derived from the boxes with the crossing in both, ``--derive-crossings axis``, as the app's
separate tool draws them) one to one at mask IoU >= :data:`metrics.matching.MATCH_IOU`. A matched instance is
kept (its mask as the pipeline drew it), relabelled when its class is wrong (*relabel*). An unmatched
instance is deleted (the app's Delete: "not a chromosome") when it holds no chromosome (*delete*: debris, a
nucleus, a duplicate or a piece of a chromosome found whole), or replaced by the true masks when it holds two
or more true chromosomes (*cut* when they touch, *separate* when they cross: the true masks share pixels) or
one chromosome badly (*redraw*: a piece of it, or it with a neighbour's part; a person would join, erase or
draw). A true chromosome no instance holds is drawn (*draw*). Replacing is done with the app's Delete and
Draw (the true mask's outline), which gives the true masks; a person with the cut and separate tools gets
nearly the same (docs/review.md: both masks of a separated crossing at IoU > 0.8 in 90 of 110). Each drawn
instance is measured and classified by the pipeline's code (the app's ``segment``); then every instance
whose label is not the true one is moved to it. The cell is saved "accepted" by "simulated reviewer".
Polarity (flip) is not corrected: the VOC truth has none.

**Fine-tuning** (:func:`finetune`). Each model goes on from the shipped file with a fresh AdamW cosine
schedule of a fixed number of steps (``--seg-steps``, ``--cls-steps``: the same compute for every K; the
CPU seconds are measured and reported), on the reviewed cells mixed about half and half with a replay sample
of ``--replay-n`` cells of ``cil54816_extra`` (training data of the shipped models, none of it val or test):
``reviewed_coco.json`` is given ``round(replay_n / K)`` times as ``--train-only-data``. The detector with
the shipped detector's model flags; each classifier member (``models.export --split``) with its own crop
mode and stem, the ensemble rebuilt with ``models.export --cls``. The last checkpoint of each is used (no
choice on any val cell).

``--variant NAME`` (one of :data:`datasets.transforms.LAB_VARIANTS` that does not enlarge the image) runs
the same loop on the val cells as another lab would send them: the reviewed and the evaluated cells are
both transformed (the replay sample is not). ``--smoke`` runs every step on two synthetic spreads with one
training step per model, in a minute or two (the test).

Writes ``results.json`` (every figure and count), ``results.csv`` (one row per K) and ``table.md`` into
``--out``; a finished K is not run again when the command is repeated.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.transforms import LAB_VARIANTS  # noqa: E402

#: variants whose images are not enlarged (their figures stay in their own pixels)
VARIANTS = tuple(v for v in LAB_VARIANTS if not v.startswith(("scale_2", "scale_3")))
#: correction kinds, in the order of the table
KINDS = ("relabel", "delete", "cut", "separate", "redraw", "draw")
#: the shipped detector's model flags (weights/MODEL_CARD.md), so that --pretrained loads all of it
SEG_MODEL_FLAGS = ("--backbone", "efficientnet_lite0_fpn", "--agnostic", "--fixed-scale", "0.75", "--crop-size", "512",
                   "--max-size", "1333", "--box-head-dim", "256", "--mask-head-layers", "128", "128",
                   "--roi-batch-size", "128", "--trainable-layers", "5", "--norm", "frozen")  # fmt: skip
#: figures of each run, as the table shows them: (key, heading, format)
COLUMNS = (
    ("f1@0.5", "F1@0.5", "{:.3f}"),
    ("accuracy", "true chromosomes right", "{:.1%}"),
    ("count_exact_rate", "count exact", "{:.0%}"),
    ("count_error_mean_abs", "mean count error", "{:.2f}"),
    ("true_found_rate", "found", "{:.1%}"),
    ("found_identification_accuracy", "found: right", "{:.1%}"),
)
REVIEWER = "simulated reviewer (truth)"


# ---------------------------------------------------------------------------------------------- the reviewer
@dataclass
class Plan:
    """The corrections of one cell (:func:`plan_corrections`).

    Attributes:
        keep: predicted id -> true index, the instances kept (matched at IoU >= MATCH_IOU).
        relabel: predicted ids kept whose pipeline label is not the true one.
        delete: predicted ids that hold no chromosome (marked "not a chromosome").
        replace: predicted ids replaced by the true masks they hold (merged pairs, bad masks).
        draw: true indices drawn, each with its kind ("cut", "separate", "redraw" or "draw").
        counts: corrections by kind (:data:`KINDS`): one per relabelled, deleted or drawn instance, and one cut or
            separate per merged instance.
    """

    keep: dict[int, int] = field(default_factory=dict)
    relabel: list[int] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    replace: list[int] = field(default_factory=list)
    draw: dict[int, str] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


def plan_corrections(
    true_masks: np.ndarray, true_labels: np.ndarray, pred_masks: np.ndarray, pred_labels: np.ndarray
) -> Plan:
    """What a person who knows the truth corrects in a cell (the module docstring's rules).

    Args:
        true_masks: uint8 [N, H, W] (a crossing may belong to two); true_labels: int [N], 1..24.
        pred_masks: uint8 [M, H, W], the pipeline's instances; pred_labels: int [M] (0 = unassigned).
    """
    from scipy.optimize import linear_sum_assignment

    from metrics.matching import MATCH_IOU, _mask_overlap

    plan = Plan()
    n, m = len(true_masks), len(pred_masks)
    inter, area_t, area_p = _mask_overlap(true_masks, pred_masks)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(inter > 0, inter / (area_t[:, None] + area_p[None, :] - inter), 0.0)
        held = np.where(area_t[:, None] > 0, inter / area_t[:, None], 0.0)  # of each true mask, in each prediction
        inside = np.where(area_p[None, :] > 0, inter / area_p[None, :], 0.0)  # of each prediction, in each true one
    if n and m:
        for t, p in zip(*linear_sum_assignment(-iou)):
            if iou[t, p] >= MATCH_IOU:
                plan.keep[int(p)] = int(t)
    found = set(plan.keep.values())
    for p in range(m):
        if p in plan.keep:
            if int(pred_labels[p]) != int(true_labels[plan.keep[p]]):
                plan.relabel.append(p)
            continue
        mostly = [t for t in range(n) if t not in found and held[t, p] >= 0.5]
        if len(mostly) >= 2:  # two or more chromosomes found as one
            crossing = any((true_masks[a] & true_masks[b]).any() for a in mostly for b in mostly if a < b)
            plan.counts["separate" if crossing else "cut"] += 1
            plan.replace.append(p)
            for t in mostly:
                plan.draw[t] = "separate" if crossing else "cut"
            continue
        owner = [int(np.argmax(inside[:, p]))] if n and inside[:, p].max() >= 0.5 else []
        bad = [t for t in mostly + owner if t not in found]
        if bad:  # one chromosome, badly: a piece of it, or it with more
            plan.replace.append(p)
            plan.draw.setdefault(bad[0], "redraw")
        else:  # debris, a nucleus, a duplicate or a piece of a chromosome found whole
            plan.delete.append(p)
    for t in range(n):
        if t not in found:
            plan.draw.setdefault(t, "draw")
    plan.counts["relabel"] = len(plan.relabel)
    plan.counts["delete"] = len(plan.delete)
    plan.counts["redraw"] = sum(1 for k in plan.draw.values() if k == "redraw")
    plan.counts["draw"] = sum(1 for k in plan.draw.values() if k == "draw")
    return plan


def outlines_of(mask: np.ndarray, *, hold: float = 0.95) -> list[list[list[float]]]:
    """Closed outlines a person would draw around a true chromosome with the app's Draw, to try in turn.

    A mask derived from boxes is ragged: specks, and sometimes two parts where a pale band or a crossing cut
    it. The outline goes around the mask closed with the smallest disc (radius 1, 3, 5, 7 or 9 px) after
    which one piece holds ``hold`` of its pixels (holes filled); then the same one pixel wider, as the app
    refuses an outline that touches itself at a one-pixel neck.
    """
    import cv2

    m = (mask > 0).astype(np.uint8)
    area = max(int(m.sum()), 1)
    for r in (1, 3, 5, 7, 9):
        closed = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
        n, lab, stats, _ = cv2.connectedComponentsWithStats(closed)
        if n < 2:
            return []
        piece = (lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        if (m & piece).sum() >= hold * area or r == 9:
            break
    out = []
    for shape in (piece, cv2.dilate(piece, np.ones((3, 3), np.uint8))):
        cs, _ = cv2.findContours(shape, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out.append([[float(x), float(y)] for x, y in max(cs, key=cv2.contourArea).reshape(-1, 2)])
    return out


def review_cell(folder, stem: str, true_masks: np.ndarray, true_labels: np.ndarray) -> dict[str, Any]:
    """Correct one cell of a results folder (:class:`review.store.ResultsFolder`) as :func:`plan_corrections`
    says, through the app's own code, and save it accepted.

    Returns:
        ``edits`` (the edit log saved), ``counts`` (by kind), ``draw_refused`` (true chromosomes whose outlines the
        app refused, left out), ``drawn_iou`` (each drawn mask's IoU with its true mask), ``moves``.
    """
    from review.segment import decode
    from review.store import ReviewError

    cell = folder.cell(stem)
    pred = cell.prediction
    plan = plan_corrections(true_masks, true_labels, pred.masks, np.asarray(cell.labels))
    edits: list[dict[str, Any]] = [
        {"op": "debris", "id": int(p), "before": False, "after": True} for p in sorted(plan.delete + plan.replace)
    ]
    target = {p: int(true_labels[t]) for p, t in plan.keep.items()}
    next_id, refused, drawn_iou = len(cell.labels), 0, []
    for t in sorted(plan.draw):
        for outline in outlines_of(true_masks[t]):
            try:
                edit, _ = folder.segment(stem, edits, "draw", {"outline": outline})
            except ReviewError:
                continue
            edits.append(edit)
            target[next_id] = int(true_labels[t])
            got = decode(edit["added"][0]["mask"]) > 0
            want = true_masks[t] > 0
            drawn_iou.append(float((got & want).sum() / max((got | want).sum(), 1)))
            next_id += 1
            break
        else:
            refused += 1
    labels = folder.state(stem, edits)["_state"].labels
    moves = 0
    for i, k in sorted(target.items()):
        if labels[i] != k:
            edits.append({"op": "move", "id": i, "before": int(labels[i]), "after": k})
            moves += 1
    folder.save(stem, edits, base_revision=0, reviewer=REVIEWER, status="accepted", confirmed=True)
    return {"edits": edits, "counts": dict(plan.counts), "draw_refused": refused, "drawn_iou": drawn_iou,
            "moves": moves}  # fmt: skip


# ---------------------------------------------------------------------------------------------- cells
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("Cells")
    d.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data" / "cil54816",
                   help="the voc dataset whose val split is reviewed and evaluated")  # fmt: skip
    d.add_argument("--pool-n", type=int, default=50, help="val cells the reviewer may correct; the rest are evaluated")
    d.add_argument("--ks", type=int, nargs="+", default=[0, 10, 30, 50], help="reviewed cells per run (0: control)")
    d.add_argument("--max-eval", type=int, default=0, help="evaluate only the first N evaluation cells (0 = all)")
    d.add_argument("--variant", default="original", choices=VARIANTS, help="the val cells as another lab sends them")
    t = p.add_argument_group("Fine-tuning")
    t.add_argument("--replay-root", type=Path, default=ROOT.parent / "shared" / "data" / "cil54816_extra",
                   help="voc training data of the shipped models, sampled as replay")  # fmt: skip
    t.add_argument(
        "--replay-n",
        type=int,
        default=150,
        help="replay cells mixed in (about half of every batch; enough for --seg-steps batches of 2)",
    )
    t.add_argument("--seg-steps", type=int, default=75, help="detector steps of 2 crops (the step budget)")
    t.add_argument("--cls-steps", type=int, default=30, help="steps of 128 crops per classifier member")
    t.add_argument("--seg-lr", type=float, default=1e-4)
    t.add_argument("--cls-lr", type=float, default=1e-4)
    t.add_argument("--seg-weights", type=Path, default=ROOT / "weights" / "segmentation.pt")
    t.add_argument("--cls-weights", type=Path, default=ROOT / "weights" / "classifier.pt")
    o = p.add_argument_group("Output")
    o.add_argument("--out", type=Path, default=ROOT / "runs" / "review_loop")
    o.add_argument("--smoke", action="store_true", help="two synthetic spreads, one step per model (the test)")
    o.add_argument("--plot", type=Path, nargs="+", help="only draw the curves of these results.json (--plot-out)")
    o.add_argument("--plot-out", type=Path, default=ROOT / "docs" / "review_loop.png")
    o.add_argument(
        "--components",
        action="store_true",
        help="also measure each fine-tuned model alone beside the shipped other one (which of the two moved)",
    )
    o.add_argument("--quiet", action="store_true")
    return p


def _order(name: str) -> str:
    return hashlib.sha256(f"review_loop:{name}".encode()).hexdigest()


@dataclass
class Cells:
    """The pool and evaluation cells: image ids, and per cell the reviewer's truth (axis) and the evaluation's
    truths (nearest, the README's figures; axis), with the image the pipeline sees and its file."""

    pool: list[Any]
    evaluation: list[Any]
    images: dict[str, Path]


def load_cells(args: argparse.Namespace) -> Cells:
    """The val split's cells (``--smoke``: synthetic), ordered by a seeded hash of their name and cut into the
    pool and the evaluation set; each a dict of ``id``, ``axis`` and ``nearest`` records (the variant applied)."""
    from datasets import build_dataset
    from datasets.io import atomic_write_image

    if args.smoke:
        from datasets.synthetic import SyntheticConfig

        cfg = SyntheticConfig(image_size=(384, 448), debris=(0, 2), nuclei_mean=0.0)
        ds = build_dataset("synthetic", None, "val", n=40, val_fraction=0.1, seed=0, config=cfg)
        views = {"axis": ds, "nearest": ds}
    else:
        views = {c: build_dataset("voc", args.data_root, "val", val_fraction=0.1, seed=0, crossings=c)
                 for c in ("axis", "nearest")}  # fmt: skip
    ids = [ds_id(views["axis"], i) for i in range(len(views["axis"]))]
    order = sorted(range(len(ids)), key=lambda i: _order(ids[i]))
    img_dir = args.out / "images"
    cells, images = [], {}
    for i in order:
        cell = {"id": ids[i]}
        for c, ds in views.items():
            cell[c] = LAB_VARIANTS[args.variant](ds[i])
        rec = cell["axis"]
        path = rec.meta.get("path")
        if args.variant != "original" or not path:  # the app reads the cell's image from a file
            path = img_dir / f"{ids[i]}.png"
            if not path.is_file():
                atomic_write_image(path, np.round(np.clip(rec.image, 0, 1) * 255).astype(np.uint8))
        images[ids[i]] = Path(path).resolve()
        cells.append(cell)
    pool_n = min(args.pool_n, len(cells) - 1)
    return Cells(cells[:pool_n], cells[pool_n:], images)


def ds_id(ds, i: int) -> str:
    """A record's image id without reading the image (a voc annotation's stem, a synthetic spread's name)."""
    item = ds.items[i]
    return Path(item[1]).stem if isinstance(item, tuple) else ds.image_id(item)


def read_pixels(path: Path) -> np.ndarray:
    """The image as the app reads it (grey float in [0, 1])."""
    from datasets.io import read_image

    return read_image(path)


# ---------------------------------------------------------------------------------------------- stages
def run_pipeline(seg: Path, cls: Path, cells: list[dict], images: dict[str, Path], out_dir: Path | None, quiet: bool):
    """The pipeline on each cell's image as the app will read it; the figures against both truths, and (with
    ``out_dir``) each cell's JSON as ``inference_pipeline.py`` writes it."""
    from tqdm import tqdm

    from karyotyping.core import KaryotypePipeline
    from karyotyping.export import write_outputs
    from metrics.pipeline import PipelineEvaluator

    pipe = KaryotypePipeline(seg, cls, device="cpu")
    evs = {"nearest": PipelineEvaluator(), "axis": PipelineEvaluator()}
    t0 = time.perf_counter()
    for cell in tqdm(cells, desc=f"pipeline {Path(seg).parent.name}", disable=quiet):
        path = images[cell["id"]]
        pred = pipe.run(read_pixels(path), name=str(path))
        if out_dir is not None:
            write_outputs(pred, out_dir, stem=cell["id"])
        for c, ev in evs.items():
            ev.process(cell[c], pred)
    res = {c: {k: v for k, v in ev.evaluate().items() if not isinstance(v, dict | list)} for c, ev in evs.items()}
    res["seconds"] = time.perf_counter() - t0
    return res


def review_pool(args: argparse.Namespace, cells: Cells) -> dict[str, Any]:
    """The pipeline's JSON of every pool cell (``pool/``), and the reviewer's edits of each (computed once, with a
    scratch copy of the folder): {id: review_cell's result}."""
    from review.store import ResultsFolder

    pool_dir = args.out / "pool"
    done = args.out / "pool_reviews.json"
    if done.is_file():
        return json.loads(done.read_text())
    before = run_pipeline(args.seg_weights, args.cls_weights, cells.pool, cells.images, pool_dir, args.quiet)
    scratch = args.out / "pool_scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(pool_dir, scratch)
    folder = ResultsFolder(scratch)
    reviews = {}
    for cell in cells.pool:
        rec = cell["axis"]
        reviews[cell["id"]] = review_cell(folder, cell["id"], rec.masks, rec.labels)
    shutil.rmtree(scratch)
    out = {"pipeline_on_pool": before, "cells": reviews}
    done.write_text(json.dumps(out))
    return out


def reviewed_folder(args: argparse.Namespace, k: int, cells: Cells, reviews: dict[str, Any]) -> Path:
    """``k<K>/results/``: the first K pool cells as the pipeline wrote them, each saved with its edits by the app's
    save path (:meth:`review.store.ResultsFolder.save`); returns its ``reviewed_coco.json``."""
    from review.store import COCO_NAME, ResultsFolder

    res = args.out / f"k{k}" / "results"
    coco = res / COCO_NAME
    if coco.is_file():
        return coco
    shutil.rmtree(res, ignore_errors=True)
    res.mkdir(parents=True)
    folder = ResultsFolder(res)
    for cell in cells.pool[:k]:
        shutil.copy2(args.out / "pool" / f"{cell['id']}.json", res / f"{cell['id']}.json")
        edits = reviews["cells"][cell["id"]]["edits"]
        folder.save(cell["id"], edits, base_revision=0, reviewer=REVIEWER, status="accepted", confirmed=True)
    return coco


def _run(cmd: list[str], log: Path) -> float:
    """Run a command (OMP_NUM_THREADS=1) with its output in ``log``; its CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed with exit status {r.returncode}; see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def replay_data(args: argparse.Namespace) -> tuple[str, str]:
    """``(dataset, root)`` of the replay sample: ``--replay-n`` cells of ``--replay-root`` chosen by a seeded hash,
    linked into a voc folder of their own (``--smoke``: synthetic spreads)."""
    if args.smoke:
        return "synthetic", "none"
    from datasets.voc import ANNOTATION_DIRS, IMAGE_DIRS

    dst = args.out / "replay"
    if (dst / "annotations").is_dir():
        return "voc", str(dst)
    src = args.replay_root
    ann = next(src / d for d in ANNOTATION_DIRS if (src / d).is_dir())
    img = next(src / d for d in IMAGE_DIRS if (src / d).is_dir())
    images = {p.stem: p for p in img.iterdir()}
    names = sorted((x.stem for x in ann.glob("*.xml") if x.stem in images), key=_order)[: args.replay_n]
    tmp = args.out / "replay.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("annotations", "JEPG"):
        (tmp / sub).mkdir(parents=True)
    for name in names:
        (tmp / "annotations" / f"{name}.xml").symlink_to((ann / f"{name}.xml").resolve())
        (tmp / "JEPG" / images[name].name).symlink_to(images[name].resolve())
    tmp.rename(dst)
    return "voc", str(dst)


def classifier_members(args: argparse.Namespace) -> list[tuple[Path, Any]]:
    """The start classifier's members as files of their own (``models.export --split``), with their configs."""
    from models.classifier import load_classifier_members, read_classifier_file

    d = args.out / "members"
    n = len(load_classifier_members(args.cls_weights, "cpu"))
    files = [d / f"classifier_member{i}.pt" for i in range(n)]
    if n == 1:
        files = [args.cls_weights]
    elif not all(f.is_file() for f in files):
        d.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "models.export", "--split", str(args.cls_weights), "--out", str(d)],
             args.out / "members.log")  # fmt: skip
    return [(f, read_classifier_file(f)[1]) for f in files]


def finetune(args: argparse.Namespace, k: int, coco: Path | None, replay: tuple[str, str]) -> dict[str, Any]:
    """Fine-tune both models on K reviewed cells + the replay sample; export them into ``k<K>/weights``.

    Returns the exported files and the CPU seconds of each trainer."""
    run = args.out / f"k{k}"
    weights = run / "weights"
    done = run / "finetune.json"
    if done.is_file():
        return json.loads(done.read_text())
    run.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    repeat = max(1, round(args.replay_n / k)) if k else 0
    reviewed = ["--train-only-data", "coco", str(coco)] * repeat if coco is not None else []
    data = ["--dataset", replay[0], "--data-root", replay[1], *reviewed]
    if args.smoke:
        data += ["--synthetic-spreads", "2"]
    log = run / "train.log"
    cpu: dict[str, float] = {}
    cpu["seg"] = _run([py, "train_segmentation.py", *data, *SEG_MODEL_FLAGS, "--val-fraction", "0", "--test-fraction", "0",
                       "--eval-every", "0", "--pretrained", str(args.seg_weights), "--optimizer", "adamw",
                       "--lr", str(args.seg_lr),
                       "--warmup-steps", "5", "--epochs", "1", "--max-steps-per-epoch", str(args.seg_steps),
                       "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--seed", "0",
                       "--output-dir", str(run / "seg")], log)  # fmt: skip
    members = []
    for i, (path, cfg) in enumerate(classifier_members(args)):
        flags = ["--features", cfg.feature_groups, "--arch", cfg.arch, "--stem", cfg.stem, "--crop-mode", cfg.crop_mode,
                 "--crop-height", str(cfg.crop_height), "--crop-width", str(cfg.crop_width)]  # fmt: skip
        small = ["--batch-size", "8", "--val-fraction", "0.5"] if args.smoke else ["--val-fraction", "0.1"]
        cpu[f"cls{i}"] = _run([py, "train_classification.py", *data, *flags, *small, "--max-val-spreads", "5", "--pretrained", str(path), "--lr", str(args.cls_lr),
                               "--warmup-epochs", "0.05", "--epochs", "1", "--steps-per-epoch", str(args.cls_steps),
                               "--workers", "0", "--device", "cpu", "--no-progress", "--seed", "0",
                               "--cache-dir", str(args.out / "cache"), "--output-dir", str(run / f"cls{i}")], log)  # fmt: skip
        members.append(str(run / f"cls{i}" / "last.pth"))
    cpu["export"] = _run([py, "-m", "models.export", "--seg", str(run / "seg" / "last.pth"), "--cls", *members,
                          "--out", str(weights)], log)  # fmt: skip
    out = {"seg": str(weights / "segmentation.pt"), "cls": str(weights / "classifier.pt"), "cpu_s": cpu,
           "reviewed_repeat": repeat}  # fmt: skip
    done.write_text(json.dumps(out))
    return out


def review_counts(reviews: dict[str, Any], cells: list[dict]) -> dict[str, Any]:
    """Corrections by kind over ``cells``, the edits saved, drawn masks' IoU with the truth, refused draws."""
    c: Counter = Counter()
    ious, refused, edits, moves, true_n = [], 0, 0, 0, 0
    for cell in cells:
        r = reviews["cells"][cell["id"]]
        c.update(r["counts"])
        ious += r["drawn_iou"]
        refused += r["draw_refused"]
        edits += len(r["edits"])
        moves += r["moves"]
        true_n += len(cell["axis"])
    return {"cells": len(cells), "true_chromosomes": true_n, **{k: c.get(k, 0) for k in KINDS}, "edits": edits,
            "moves": moves, "draw_refused": refused,
            "drawn_iou_median": float(np.median(ious)) if ious else None}  # fmt: skip


# ---------------------------------------------------------------------------------------------- report
def table(results: dict[str, Any], truth: str = "nearest", which: str = "runs") -> str:
    """The Markdown table: one row per run (before, then each K; ``which="components"``: each fine-tuned model
    alone), figures against the ``truth`` masks."""
    heads = ["run", *KINDS, "fine-tuning CPU min", *(h for _, h, _ in COLUMNS)]
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for name, r in results[which].items():
        rv = r.get("review") or {}
        cpu = r.get("finetune", {}).get("cpu_s")
        cells = [str(rv.get(k, "-")) for k in KINDS] + [f"{sum(cpu.values()) / 60:.1f}" if cpu else "-"]
        cells += [fmt.format(r[truth][key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(all_results: list[dict[str, Any]], path: Path) -> Path:
    """The curve: F1, the true chromosomes right and count exact against K (K = 0: the control), one line per
    results file (scenario), its shipped models' figures dashed in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.6))
    for n, results in enumerate(all_results):
        colour = f"C{n}"
        variant = results["config"]["variant"]
        runs = {int(k[2:]): r for k, r in results["runs"].items() if k.startswith("K=")}
        ks = sorted(runs)
        before = results["runs"]["before"]["nearest"]
        for ax, (key, head, _) in zip(axes, COLUMNS[:3]):
            ax.plot(ks, [runs[k]["nearest"][key] for k in ks], "o-", color=colour, label=f"{variant}: fine-tuned")
            ax.axhline(before[key], color=colour, ls="--", lw=1, label=f"{variant}: shipped models")
            ax.set_title(head, fontsize=10)
            ax.set_xlabel("reviewed cells K (0: replay only)")
            ax.set_xticks(sorted({*ax.get_xticks(), *ks}) if n else ks)
    for ax, (key, _, _) in zip(axes, COLUMNS[:3]):
        lo, hi = ax.get_ylim()
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.02 if key != "count_exact_rate" else 0.06)
        ax.set_ylim(mid - half, mid + half)
        if key != "f1@0.5":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0 if key == "count_exact_rate" else 1))
    axes[0].legend(fontsize=7, loc="lower right")
    n_eval = all_results[0]["config"]["eval_cells"]
    fig.suptitle(f"the review loop: the whole pipeline on {n_eval} val cells that were not reviewed (CIL:54816)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args: argparse.Namespace) -> dict[str, Any]:
    from datasets.io import atomic_write_json

    if args.plot is not None:
        return {"plot": str(plot([json.loads(f.read_text()) for f in args.plot], args.plot_out))}
    if args.smoke:
        args.pool_n, args.replay_n = min(args.pool_n, 1), 2
        args.seg_steps, args.cls_steps = min(args.seg_steps, 1), min(args.cls_steps, 1)
    if not args.smoke and args.replay_n // 2 < args.seg_steps:  # an epoch of K = 0 is replay_n / 2 batches
        raise SystemExit(f"error: --replay-n {args.replay_n} gives K = 0 fewer than --seg-steps {args.seg_steps} steps")
    args.out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(args)
    evaluation = cells.evaluation[: args.max_eval] if args.max_eval else cells.evaluation
    ks = sorted(set(args.ks))
    if any(k > len(cells.pool) for k in ks):
        raise SystemExit(f"error: K up to {max(ks)} needs a pool of as many cells; the pool has {len(cells.pool)}")
    res_path = args.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {"runs": {}}
    results["config"] = {
        "variant": args.variant, "pool_cells": len(cells.pool), "eval_cells": len(evaluation),
        "pool_ids": [c["id"] for c in cells.pool], "eval_ids": [c["id"] for c in evaluation],
        "replay_n": args.replay_n, "seg_steps": args.seg_steps, "cls_steps": args.cls_steps, "seg_lr": args.seg_lr,
        "cls_lr": args.cls_lr, "seg_weights": str(args.seg_weights), "cls_weights": str(args.cls_weights),
        "reviewer_truth": "axis", "command": " ".join(sys.argv),
    }  # fmt: skip
    reviews = review_pool(args, cells)
    replay = replay_data(args)

    def save() -> None:
        atomic_write_json(res_path, results)

    if "before" not in results["runs"]:
        results["runs"]["before"] = run_pipeline(args.seg_weights, args.cls_weights, evaluation, cells.images, None,
                                                 args.quiet)  # fmt: skip
        save()
    for k in ks:
        name = f"K={k}"
        if name in results["runs"]:
            continue
        coco = reviewed_folder(args, k, cells, reviews) if k else None
        ft = finetune(args, k, coco, replay)
        r = run_pipeline(Path(ft["seg"]), Path(ft["cls"]), evaluation, cells.images, None, args.quiet)
        results["runs"][name] = r | {"finetune": ft, "review": review_counts(reviews, cells.pool[:k])}
        save()
        if not args.quiet:
            print(table(results), flush=True)
    for k in ks if args.components else []:
        ft = results["runs"][f"K={k}"]["finetune"]
        for which, seg, cls in (("detector", ft["seg"], args.cls_weights), ("classifier", args.seg_weights, ft["cls"])):
            name = f"K={k}, {which} only"
            if name not in results.setdefault("components", {}):
                results["components"][name] = run_pipeline(Path(seg), Path(cls), evaluation, cells.images, None, True)
                save()
    results["pipeline_on_pool"] = reviews["pipeline_on_pool"]
    save()
    md = table(results)
    parts = [md, "axis truth:", table(results, "axis")]
    if results.get("components"):
        parts += ["each fine-tuned model beside the shipped other:", table(results, which="components")]
    (args.out / "table.md").write_text("\n\n".join(parts) + "\n")
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *KINDS, "cpu_s", *(f"{t}_{key}" for t in ("nearest", "axis") for key, _, _ in COLUMNS)])
        for name, r in results["runs"].items():
            rv = r.get("review") or {}
            cpu = r.get("finetune", {}).get("cpu_s")
            w.writerow([name, *(rv.get(k, "") for k in KINDS), round(sum(cpu.values()), 1) if cpu else "",
                        *(r[t][key] for t in ("nearest", "axis") for key, _, _ in COLUMNS)])  # fmt: skip
    print(md)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
