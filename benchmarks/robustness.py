"""Images from other labs: the whole pipeline on the val split transformed the ways their images differ.

Each val image (and its annotation, boxes and derived masks moved with it) is turned into every variant of
:data:`datasets.transforms.LAB_VARIANTS` (inverted, 0.35x-3x the resolution, CLAHE, gamma 2.2 and 0.5, JPEG
quality 30, blur); the pipeline core runs on each exactly as ``evaluate.py --stage full`` runs it
(:class:`metrics.pipeline.PipelineEvaluator`; the upscaled variants' results are compared in the original
image's pixels, mapped back by nearest neighbour, the downscaled ones in their own), and one table gives per
variant: F1 at IoU 0.5, the true
chromosomes right, count exact, fragments per true chromosome and how many cells were flagged out of range.

    python benchmarks/robustness.py --data-root ../shared/data/cil54816 --max-images 30 --out runs/robustness
    python benchmarks/robustness.py ... --no-auto-scale --polarity dark-on-light   # without the image checks
    python benchmarks/robustness.py --data-root ../shared/data/cil54816 --scale-estimate --out runs/scale_est

``--scale-estimate`` measures the chromosome-width estimate alone (no models): on each image at every scale
variant, the width it finds against the one it finds on the original image times the scale (within 10 %?), and
the length it implies (width x the train split's length/width ratio) against the true median chromosome
length (the annotated boxes' median diagonal). ``--calibrate`` prints :data:`karyotyping.image_checks.
REFERENCE_WIDTH_PX` and that ratio measured on the train split. Writes ``robustness.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.derive_masks import CROSSING_RULES  # noqa: E402
from datasets.splits import add_split_args  # noqa: E402
from datasets.transforms import LAB_VARIANTS  # noqa: E402
from karyotyping.core import DEFAULT_CLS_WEIGHTS, DEFAULT_SEG_WEIGHTS, add_pipeline_args, pipeline_options  # noqa: E402

SCALES = {"scale_0.5": 0.5, "scale_0.35": 0.35, "scale_2": 2.0, "scale_3": 3.0}
#: the columns of the table: (result key, heading, format)
COLUMNS = (
    ("f1@0.5", "F1@0.5", "{:.3f}"),
    ("accuracy", "right", "{:.1%}"),
    ("count_exact_rate", "count exact", "{:.0%}"),
    ("fragments_per_true", "fragments/true", "{:.3f}"),
    ("true_fragmented_rate", "cut in 2+", "{:.1%}"),
    ("out_of_range_rate", "flagged", "{:.0%}"),
    ("seconds_per_image", "s/image", "{:.2f}"),
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("Data")
    d.add_argument("--data-root", type=Path, required=True, help="a voc dataset (CIL:54816 layout)")
    add_split_args(d, max_images=0)
    d.add_argument("--derive-crossings", choices=CROSSING_RULES, default="nearest", help="true masks (evaluate.py)")
    d.add_argument("--variants", nargs="+", default=list(LAB_VARIANTS), choices=list(LAB_VARIANTS), help="default: all")
    m = p.add_argument_group("Models")
    m.add_argument("--seg-weights", type=Path, default=DEFAULT_SEG_WEIGHTS)
    m.add_argument("--cls-weights", type=Path, default=DEFAULT_CLS_WEIGHTS)
    add_pipeline_args(m)
    m.add_argument("--device", default="cpu")
    w = p.add_argument_group("What to measure")
    w.add_argument("--scale-estimate", action="store_true", help="the width estimate alone (no models)")
    w.add_argument("--calibrate", action="store_true", help="the reference width and length ratio on the train split")
    p.add_argument("--out", type=Path, required=True, help="folder for robustness.json")
    p.add_argument("--quiet", action="store_true")
    return p


def _dataset(args: argparse.Namespace, split: str):
    from datasets import build_dataset

    kw: dict[str, Any] = {"val_fraction": args.val_fraction, "seed": args.split_seed}
    if args.derive_crossings != "nearest":
        kw["crossings"] = args.derive_crossings
    ds = build_dataset("voc", args.data_root, split, derive=not (args.scale_estimate or args.calibrate), **kw)
    n = len(ds) if not args.max_images else min(args.max_images, len(ds))
    return ds, n


def _true_length(rec) -> float:
    """Median chromosome length of an annotated record: its boxes' median diagonal (pixels)."""
    b = np.asarray(rec.boxes, np.float64)
    return float(np.median(np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """The median width (:func:`karyotyping.image_checks.estimate_chromosome_width`) and length/width ratio on
    every 6th image of the train split."""
    from karyotyping.image_checks import estimate_chromosome_width

    ds, n = _dataset(args, "train")
    widths, ratios = [], []
    for i in range(0, n, 6):
        rec = ds[i]
        w = estimate_chromosome_width(rec.image)
        if w:
            widths.append(w)
            ratios.append(_true_length(rec) / w)
    return {
        "images": len(widths),
        "reference_width_px": float(np.median(widths)),
        "width_p5_p95": [float(v) for v in np.percentile(widths, [5, 95])],
        "length_per_width": float(np.median(ratios)),
    }


def scale_estimate(args: argparse.Namespace, length_per_width: float) -> dict[str, Any]:
    """How well the width estimate follows a change of resolution, and the length it implies against truth."""
    from karyotyping.image_checks import estimate_chromosome_width

    ds, n = _dataset(args, args.split)
    follow: dict[str, list[float]] = {k: [] for k in SCALES}
    length_err = []
    for i in range(n):
        rec = ds[i]
        w1 = estimate_chromosome_width(rec.image)
        if not w1:
            continue
        length_err.append(abs(w1 * length_per_width / _true_length(rec) - 1.0))
        for name, f in SCALES.items():
            w = estimate_chromosome_width(LAB_VARIANTS[name](rec).image)
            follow[name].append(np.nan if not w else w / (w1 * f))
    res: dict[str, Any] = {
        "images": len(length_err),
        "length_within_10pct_rate": float(np.mean(np.asarray(length_err) <= 0.1)),
        "length_median_rel_error": float(np.median(length_err)),
    }
    for name, r in follow.items():
        a = np.asarray(r)
        res[name] = {
            "within_10pct_rate": float(np.mean(np.abs(a - 1.0) <= 0.1)),
            "median_ratio": float(np.nanmedian(a)),
            "p10_p90": [float(v) for v in np.nanpercentile(a, [10, 90])],
        }
    return res


def robustness(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant through the whole pipeline; the figures of each."""
    from tqdm import tqdm

    from karyotyping.core import KaryotypePipeline
    from metrics.pipeline import PipelineEvaluator

    pipe = KaryotypePipeline(args.seg_weights, args.cls_weights, device=args.device, **pipeline_options(args))
    ds, n = _dataset(args, args.split)
    out: dict[str, Any] = {}
    # one variant at a time: an evaluator holds every image's masks until it computes its figures
    for v in args.variants:
        ev, flagged, seconds = PipelineEvaluator(), 0, 0.0
        for i in tqdm(range(n), desc=v, disable=args.quiet):
            rec = ds[i]
            var = LAB_VARIANTS[v](rec)
            t0 = time.perf_counter()
            pred = pipe.run(var.image, name=f"{rec.image_id}:{v}")
            seconds += time.perf_counter() - t0
            if SCALES.get(v, 1.0) > 1.0:  # compared in the original image's pixels
                pred, var = _shrink(pred, rec.width, rec.height), rec
            ev.process(var, pred)
            flagged += bool(pred.image_checks is not None and pred.image_checks.out_of_range)
        r = {k: val for k, val in ev.evaluate().items() if not isinstance(val, dict | list)}
        r["out_of_range_rate"] = flagged / max(n, 1)
        r["seconds_per_image"] = seconds / max(n, 1)
        out[v] = r
        if not args.quiet:
            print(_table({v: r}).splitlines()[-1], flush=True)
    return out


def _shrink(pred, width: int, height: int):
    """The prediction of an upscaled image mapped to the original image's ``width x height`` pixels."""
    import dataclasses

    import cv2

    rec = pred.record
    sx, sy = width / rec.width, height / rec.height
    masks = np.zeros((len(rec), height, width), np.uint8)
    for i in range(len(rec)):
        masks[i] = cv2.resize(rec.masks[i], (width, height), interpolation=cv2.INTER_NEAREST)
    image = cv2.resize(rec.image, (width, height), interpolation=cv2.INTER_AREA)
    boxes = rec.boxes * np.array([sx, sy, sx, sy])
    return dataclasses.replace(pred, record=dataclasses.replace(rec, image=image, masks=masks, boxes=boxes))


def _table(res: dict[str, dict[str, Any]]) -> str:
    head = f"| variant | {' | '.join(h for _, h, _ in COLUMNS)} |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for v, r in res.items():
        cells = [fmt.format(r[k]) if k in r and r[k] == r[k] else "-" for k, _, fmt in COLUMNS]
        lines.append(f"| {v} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from datasets.io import atomic_write_json

    if not args.data_root.is_dir():
        raise SystemExit(f"error: --data-root {args.data_root} is not a folder")
    res: dict[str, Any] = {"split": args.split, "derive_crossings": args.derive_crossings}
    if args.calibrate or args.scale_estimate:
        cal = calibrate(args)
        res["calibration"] = cal
        print(f"calibration on the train split: {cal}")
        if args.scale_estimate:
            res["scale_estimate"] = scale_estimate(args, cal["length_per_width"])
            print(res["scale_estimate"])
    else:
        res["variants"] = robustness(args)
        res["pipeline"] = {"polarity": args.polarity, "auto_scale": args.auto_scale, "seg": str(args.seg_weights)}
        print(_table(res["variants"]))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "robustness.json", res)
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
