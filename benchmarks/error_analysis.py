"""Missed and false chromosomes: what the whole pipeline loses, what it finds that is not there, and why.

The pipeline core runs on the first ``--max-images`` cells of a split exactly as ``evaluate.py --stage full``
runs it; its final instances are matched to the truth by mask IoU (:func:`metrics.matching.instance_fates`).
Every true chromosome it does not find is described by what lies around it and what the detector made of it:

* its fate: taken into a neighbour's mask (``lost_merged``), found in pieces (``lost_split``), or mostly under
  no mask at all (``lost_uncovered``);
* what the detector proposed before the pipeline's selection (the raw detections down to ``--raw-score``): a
  raw box at IoU >= 0.5 with its box at a kept score (the selection or the mask lost it), only below the kept
  score, or none;
* whether it touches another true chromosome (within ``TOUCH_PX``), lies at the image edge, is small (under
  half the cell's median area) or faint (under ``FAINT`` of the cell's median darkness).

Every unmatched final instance is a ``merge``, ``duplicate``, ``piece``, ``off_mask`` or ``background`` one
(:data:`metrics.matching.FALSE_KINDS`), with its size against the cell's chromosomes (a nucleus is large) and
whether it lies at the edge. Two tables (printed, and written to ``error_analysis.json``) and two pictures
(``--pictures``: a crop of each lost chromosome and of each false instance, truth in green, the pipeline in red,
the instance in question in yellow).

    python benchmarks/error_analysis.py --data-root ../shared/data/cil54816 --max-images 30 \\
        --out runs/errors --pictures docs/
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.derive_masks import CROSSING_RULES, contact_kinds  # noqa: E402
from datasets.splits import add_split_args  # noqa: E402
from karyotyping.core import DEFAULT_CLS_WEIGHTS, DEFAULT_SEG_WEIGHTS, add_pipeline_args, pipeline_options  # noqa: E402

#: a true chromosome touches another when their masks come within this many pixels
TOUCH_PX = 3
#: a chromosome at the edge: its box within this many pixels of the image border
EDGE_PX = 4
#: faint: darker than the background by less than this fraction of the cell's median chromosome
FAINT = 0.6
#: small: under this fraction of the cell's median chromosome area; large (a nucleus): over LARGE times it
SMALL, LARGE = 0.5, 3.0
#: how many crops each picture shows at most
SHOW = 30


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("Data")
    d.add_argument("--data-root", type=Path, required=True, help="a voc dataset (CIL:54816 layout)")
    add_split_args(d, max_images=30)
    d.add_argument(
        "--derive-crossings", choices=CROSSING_RULES, default="axis", help="true masks (default: the axis rule)"
    )
    m = p.add_argument_group("Models")
    m.add_argument("--seg-weights", type=Path, default=DEFAULT_SEG_WEIGHTS)
    m.add_argument("--cls-weights", type=Path, default=DEFAULT_CLS_WEIGHTS)
    add_pipeline_args(m)
    m.add_argument("--device", default="cpu")
    m.add_argument("--raw-score", type=float, default=0.05, help="raw detections down to this score are looked at")
    p.add_argument("--out", type=Path, required=True, help="folder for error_analysis.json")
    p.add_argument("--pictures", type=Path, default=None, help="folder for lost_chromosomes.png, false_detections.png")
    p.add_argument("--quiet", action="store_true")
    return p


def _near_edge(box: np.ndarray, width: int, height: int) -> bool:
    x1, y1, x2, y2 = box
    return bool(x1 <= EDGE_PX or y1 <= EDGE_PX or x2 >= width - EDGE_PX or y2 >= height - EDGE_PX)


def describe_cell(rec, pred, raw_boxes: np.ndarray, raw_scores: np.ndarray, kept_score: float, true_masks):
    """Rows for one cell: each true chromosome not found, and each unmatched final instance (dicts)."""
    from metrics.matching import box_iou, instance_fates

    image = np.asarray(rec.image, np.float32)
    if image.ndim == 3:
        image = image.mean(-1)
    tm, pm = np.asarray(true_masks).astype(np.uint8), np.asarray(pred.masks).astype(np.uint8)
    fates = instance_fates(tm, rec.boxes, pm, pred.boxes)
    area_t = tm.reshape(len(tm), -1).sum(1).astype(np.float64)
    med_area = float(np.median(area_t)) if len(area_t) else 1.0
    anything = tm.astype(bool).any(0)
    background = float(np.median(image[~anything])) if (~anything).any() else 1.0
    dark = np.array([background - float(image[m.astype(bool)].mean()) if m.any() else 0.0 for m in tm])
    med_dark = float(np.median(dark)) if len(dark) else 1.0
    touching = np.array([k != "isolated" for k in contact_kinds(tm, gap=TOUCH_PX)], bool)
    iou_raw = box_iou(rec.boxes, raw_boxes) if len(raw_boxes) else np.zeros((len(tm), 0))
    lost = []
    for a in np.flatnonzero(fates.true_fate != "found"):
        cand = raw_scores[iou_raw[a] >= 0.5] if iou_raw.shape[1] else np.zeros(0)
        best = float(cand.max()) if len(cand) else 0.0
        raw = "raw box kept score" if best >= kept_score else ("raw box low score" if len(cand) else "no raw box")
        lost.append(
            {
                "image": rec.image_id,
                "index": int(a),
                "fate": str(fates.true_fate[a]),
                "raw": raw,
                "raw_best_score": best,
                "touching": bool(touching[a]),
                "edge": _near_edge(rec.boxes[a], rec.width, rec.height),
                "small": bool(area_t[a] < SMALL * med_area),
                "faint": bool(dark[a] < FAINT * med_dark),
                "box": [float(v) for v in rec.boxes[a]],
            }
        )
    false = []
    area_p = pm.reshape(len(pm), -1).sum(1).astype(np.float64)
    for b in np.flatnonzero(fates.false_kind != ""):
        false.append(
            {
                "image": rec.image_id,
                "index": int(b),
                "kind": str(fates.false_kind[b]),
                "score": float(pred.scores[b]),
                "edge": _near_edge(pred.boxes[b], rec.width, rec.height),
                "large": bool(area_p[b] > LARGE * med_area),
                "small": bool(area_p[b] < SMALL * med_area),
                "box": [float(v) for v in pred.boxes[b]],
            }
        )
    return lost, false, int(len(tm)), int(len(pm))


def _table(rows: list[dict], key: str, order: tuple[str, ...], flags: tuple[str, ...], total: int, of: str) -> str:
    head = f"| {key} | n | % of {of} | " + " | ".join(flags) + " |"
    lines = [head, "|" + " --- |" * (len(flags) + 3)]
    groups = [(k, [r for r in rows if r[key] == k]) for k in order] + [("all", rows)]
    for k, rs in groups:
        if not rs and k != "all":
            continue
        cells = [f"{sum(bool(r[f]) for r in rs) / max(len(rs), 1):.0%}" for f in flags]
        lines.append(f"| {k} | {len(rs)} | {len(rs) / max(total, 1):.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _raw_table(lost: list[dict], total: int) -> str:
    kinds = ("raw box kept score", "raw box low score", "no raw box")
    lines = ["| fate | " + " | ".join(kinds) + " |", "|" + " --- |" * (len(kinds) + 1)]
    for fate in ("lost_merged", "lost_split", "lost_uncovered"):
        rs = [r for r in lost if r["fate"] == fate]
        if rs:
            c = Counter(r["raw"] for r in rs)
            lines.append(f"| {fate} | " + " | ".join(f"{c[k]} ({c[k] / total:.1%})" for k in kinds) + " |")
    return "\n".join(lines)


def _tile(image: np.ndarray, true_masks, pred_masks, box, which: np.ndarray, size: int = 128) -> np.ndarray:
    """An RGB crop around ``box``: truth outlined in green, the pipeline in red, ``which`` in yellow."""
    import cv2

    h, w = image.shape
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * 0.5 + 20
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    a, b = int(max(cx - side, 0)), int(max(cy - side, 0))
    c, d = int(min(cx + side, w)), int(min(cy + side, h))
    grey = (np.clip(image[b:d, a:c], 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, -1)
    for masks, colour in ((true_masks, (0, 200, 0)), (pred_masks, (230, 30, 30)), (which[None], (255, 220, 0))):
        for m in masks:
            crop = np.ascontiguousarray(m[b:d, a:c].astype(np.uint8))
            if crop.any():
                contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(rgb, contours, -1, colour, 1)
    scale = size / max(rgb.shape[:2])
    rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))))
    tile = np.full((size, size, 3), 255, np.uint8)
    tile[: rgb.shape[0], : rgb.shape[1]] = rgb
    return tile


def _picture(tiles: list[tuple[np.ndarray, str]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from fileio import atomic_write

    cols = 6
    rows = max(1, int(np.ceil(len(tiles) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.25))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (tile, caption) in zip(np.atleast_1d(axes).ravel(), tiles):
        ax.imshow(tile)
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_write(path) as f:  # 64 colours: a fifth of the size, the outlines as drawn
        Image.open(buf).convert("RGB").quantize(64).save(f, format="png", optimize=True)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from datasets import build_dataset
    from datasets.io import to_grey_float
    from karyotyping.core import KaryotypePipeline
    from karyotyping.detection import detect_soft
    from metrics.pipeline import gt_masks

    pipe = KaryotypePipeline(args.seg_weights, args.cls_weights, device=args.device, **pipeline_options(args))
    kw: dict[str, Any] = {"val_fraction": args.val_fraction, "seed": args.split_seed}
    if args.derive_crossings != "nearest":
        kw["crossings"] = args.derive_crossings
    ds = build_dataset("voc", args.data_root, args.split, derive=True, **kw)
    n = len(ds) if not args.max_images else min(args.max_images, len(ds))
    lost: list[dict] = []
    false: list[dict] = []
    n_true = n_pred = 0
    lost_tiles: list[tuple[np.ndarray, str]] = []
    false_tiles: list[tuple[np.ndarray, str]] = []
    for i in tqdm(range(n), desc="cells", disable=args.quiet):
        rec = ds[i]
        pred = pipe.run(rec.image, name=rec.image_id)
        work, checks, _ = pipe.prepare(to_grey_float(rec.image, rec.image_id), rec.image_id, [])
        raw = detect_soft(pipe.seg_model, work, score_thresh=args.raw_score, device=args.device)
        raw_boxes = raw["boxes"].numpy().astype(np.float64) / checks.processing_scale
        tm, _ = gt_masks(rec)
        lo, fa, nt, np_ = describe_cell(rec, pred, raw_boxes, raw["scores"].numpy(), pipe.score_thresh, tm)
        lost += lo
        false += fa
        n_true, n_pred = n_true + nt, n_pred + np_
        if args.pictures is not None:
            image = to_grey_float(rec.image, rec.image_id)
            for r in lo:
                if len(lost_tiles) < SHOW:
                    tags = [t for t in ("touching", "edge", "small", "faint") if r[t]]
                    cap = f"{r['fate'].replace('lost_', '')}; {r['raw']}\n{' '.join(tags)}"
                    lost_tiles.append((_tile(image, tm, pred.masks, r["box"], tm[r["index"]]), cap))
            for r in fa:
                if len(false_tiles) < SHOW:
                    tags = [t for t in ("edge", "large", "small") if r[t]]
                    cap = f"{r['kind']} {r['score']:.2f}\n{' '.join(tags)}"
                    false_tiles.append((_tile(image, tm, pred.masks, r["box"], pred.masks[r["index"]]), cap))
    res = {
        "images": n,
        "true": n_true,
        "predicted": n_pred,
        "lost": lost,
        "false": false,
        "lost_table": _table(
            lost,
            "fate",
            ("lost_merged", "lost_split", "lost_uncovered"),
            ("touching", "edge", "small", "faint"),
            n_true,
            "true",
        ),
        "raw_table": _raw_table(lost, max(n_true, 1)),
        "false_table": _table(
            false,
            "kind",
            ("merge", "duplicate", "piece", "off_mask", "background"),
            ("edge", "large", "small"),
            n_pred,
            "detections",
        ),
    }
    if args.pictures is not None:
        what = f"{args.split} cells 1-{n}, {args.derive_crossings}-rule truth"
        _picture(lost_tiles, f"True chromosomes not found ({what}); green truth, red pipeline, yellow this one",
                 args.pictures / "lost_chromosomes.png")  # fmt: skip
        _picture(false_tiles, f"Unmatched detections ({what}); green truth, red pipeline, yellow this one",
                 args.pictures / "false_detections.png")  # fmt: skip
    return res


def main(args: argparse.Namespace) -> dict[str, Any]:
    from fileio import atomic_write_json

    if not args.data_root.is_dir():
        raise SystemExit(f"error: --data-root {args.data_root} is not a folder")
    res = analyse(args)
    res["pipeline"] = {"seg": str(args.seg_weights), "cls": str(args.cls_weights), "split": args.split}
    print(f"{res['images']} cells, {res['true']} true chromosomes, {res['predicted']} final instances\n")
    print("True chromosomes not found:\n" + res["lost_table"] + "\n")
    print("What the detector proposed for them (before the selection):\n" + res["raw_table"] + "\n")
    print("Unmatched final instances:\n" + res["false_table"])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "error_analysis.json", res)
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
