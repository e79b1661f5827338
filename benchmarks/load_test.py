"""Load test: the whole pipeline over a folder of N small synthetic spreads, watching throughput and memory.

    python benchmarks/load_test.py --n 200 --size 256 --threads 1
    python benchmarks/load_test.py --n 200 --seg-weights weights/segmentation.pt --cls-weights weights/classifier.pt

Without weights, tiny untrained models are built (``--smoke`` sizes); they detect nothing, so with
``--gt-detections`` (default on when no weights are given) the segmentation stage is replaced by the
spread's ground truth, and features, classification, assignment and rendering run on ~46
chromosomes per image. Prints images/s and the resident memory (VmRSS from /proc/self/status) every
``--every`` images, then one JSON line: first/last/max RSS and the RSS slope in MB per 100 images
(a least-squares fit over the samples after the first), so memory staying flat can be shown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_weights(d: Path) -> tuple[Path, Path]:
    import torch

    from models import classifier, segmentation

    torch.manual_seed(0)
    scfg = segmentation.SegConfig(backbone="resnet18_fpn", min_size=256, max_size=256, box_detections_per_img=100)
    segmentation.save_weights(segmentation.build_segmentation_model(scfg), scfg, d / "seg.pth")
    ccfg = classifier.ClsConfig(crop_height=32, crop_width=16)
    classifier.save_weights(classifier.build_classifier(ccfg), ccfg, d / "cls.pth")
    return d / "seg.pth", d / "cls.pth"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of images")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--every", type=int, default=20, help="report every this many images")
    ap.add_argument("--seg-weights", type=Path, default=None)
    ap.add_argument("--cls-weights", type=Path, default=None)
    ap.add_argument(
        "--gt-detections",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replace segmentation by the ground truth (default: on without --seg-weights)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None, help="write images and outputs here instead of a temp folder")
    args = ap.parse_args()

    import cv2
    import torch

    torch.set_num_threads(args.threads)
    from datasets.synthetic import SyntheticConfig, generate_spread
    from karyotyping.core import KaryotypePipeline
    from karyotyping.export import write_outputs

    work = Path(tempfile.mkdtemp(prefix="karyo_load_")) if args.keep is None else args.keep
    (work / "in").mkdir(parents=True, exist_ok=True)
    seg_w, cls_w = args.seg_weights, args.cls_weights
    if seg_w is None or cls_w is None:
        seg_w, cls_w = make_weights(work)
    gt = args.gt_detections if args.gt_detections is not None else args.seg_weights is None

    cfg = SyntheticConfig(scale=(args.size * 0.8, args.size * 1.0), debris=(0, 3))
    records = {}
    t0 = time.perf_counter()
    for i in range(args.n):
        rec = generate_spread(np.random.default_rng(i), cfg, None, size=(args.size, args.size), image_id=f"s{i:04d}")
        p = work / "in" / f"s{i:04d}.png"
        img8 = np.clip(rec.image * 255 + 0.5, 0, 255).astype(np.uint8)
        cv2.imwrite(str(p), img8)
        if gt:
            rec.image = img8.astype(np.float32) / 255.0
            rec.labels[:] = 0
            rec.scores = np.ones(len(rec), np.float32)
            records[p.name] = (rec.boxes, rec.masks, rec.scores, rec.labels)
    print(f"generated {args.n} images of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s -> {work / 'in'}")

    pipe = KaryotypePipeline(seg_w, cls_w, device=args.device)
    current: dict[str, str] = {}
    if gt:
        from datasets.record import KaryoRecord

        def segment(self, image):  # ground-truth detections instead of the (untrained) model
            b, m, s, lab = records[current["name"]]
            return KaryoRecord(image=image, boxes=b.copy(), labels=lab.copy(), masks=m.copy(), scores=s.copy())

        KaryotypePipeline.segment = segment

    out = work / "out"
    samples: list[tuple[int, float]] = [(0, rss_mb())]
    print(f"images 0: RSS {samples[0][1]:.1f} MB (models loaded, gt_detections={gt}, threads={args.threads})")
    files = sorted((work / "in").glob("*.png"))
    n_chrom = 0
    t_start = t_last = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, f in enumerate(files, start=1):
            current["name"] = f.name
            res = pipe.process(f)
            write_outputs(res, out)
            n_chrom += res.count
            if k % args.every == 0 or k == len(files):
                now = time.perf_counter()
                r = rss_mb()
                samples.append((k, r))
                span = k - samples[-2][0]
                print(
                    f"images {k}: {span / (now - t_last):.2f} images/s (last {span}), "
                    f"{k / (now - t_start):.2f} overall, RSS {r:.1f} MB",
                    flush=True,
                )
                t_last = now
    wall = time.perf_counter() - t_start
    xs = np.array([s[0] for s in samples[1:]], float)
    ys = np.array([s[1] for s in samples[1:]], float)
    slope = float(np.polyfit(xs, ys, 1)[0] * 100) if len(xs) >= 2 else float("nan")
    summary = {
        "n": len(files),
        "size": args.size,
        "threads": args.threads,
        "gt_detections": gt,
        "chromosomes_per_image": round(n_chrom / max(1, len(files)), 1),
        "wall_s": round(wall, 1),
        "images_per_s": round(len(files) / wall, 3),
        "rss_first_mb": round(samples[1][1], 1),
        "rss_last_mb": round(samples[-1][1], 1),
        "rss_max_mb": round(max(s[1] for s in samples), 1),
        "rss_after_load_mb": round(samples[0][1], 1),
        "rss_slope_mb_per_100_images": round(slope, 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
