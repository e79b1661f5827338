"""Huge-image benchmark: an 8000x8000 16-bit TIFF through the whole pipeline; wall time and peak RSS.

    python benchmarks/large_image.py                      # untrained tiny models: no detection
    python benchmarks/large_image.py --gt                 # ground-truth detections (46 chromosomes) mapped back
    python benchmarks/large_image.py --side 12000 --seg-weights weights/segmentation.pt --cls-weights weights/classifier.pt

The image is downscaled to ``--max-side`` (2048) for processing, with a warning; the JSON keeps the
original width/height and maps boxes, masks (RLE) and lengths back to it. With ``--gt`` the spread is
generated at the processing size, upscaled into the TIFF, and segmentation is replaced by its ground
truth, so the per-chromosome upscaling of masks to full size is measured too. Peak RSS is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (it includes the Python/torch baseline, printed first).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--max-side", type=int, default=2048)
    ap.add_argument("--gt", action="store_true", help="ground-truth detections instead of the model's")
    ap.add_argument("--seg-weights", type=Path, default=None)
    ap.add_argument("--cls-weights", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import cv2
    import tifffile
    import torch

    torch.set_num_threads(args.threads)
    from karyotyping.core import KaryotypePipeline
    from karyotyping.export import write_outputs

    work = Path(tempfile.mkdtemp(prefix="karyo_large_"))
    if args.seg_weights is None or args.cls_weights is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from load_test import make_weights

        args.seg_weights, args.cls_weights = make_weights(work)
    pipe = KaryotypePipeline(args.seg_weights, args.cls_weights, device="cpu", max_side=args.max_side)
    base = peak_mb()
    print(f"baseline peak RSS (python + torch + models): {base:.0f} MB")

    s = args.side
    rec = None
    if args.gt:
        from datasets.synthetic import generate_spread

        small = round(args.max_side * min(1.0, args.max_side / s) * s / args.max_side) if s > args.max_side else s
        rec = generate_spread(np.random.default_rng(0), None, "46,XY", size=(small, small))
        img = (cv2.resize(rec.image, (s, s), interpolation=cv2.INTER_LINEAR) * 65535).astype(np.uint16)
    else:
        img = np.linspace(20000, 60000, s, dtype=np.uint16)[None, :].repeat(s, 0)
        img[s // 3 : s // 3 + s // 12, s // 2 : s // 2 + s // 40] = 5000
    path = work / f"huge_{s}.tif"
    tifffile.imwrite(path, img)
    del img
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB, {s}x{s} uint16); peak RSS now {peak_mb():.0f} MB")
    if rec is not None:
        r = rec.copy()
        r.labels[:] = 0
        r.scores = np.ones(len(r), np.float32)

        def segment(self, image):
            assert image.shape == r.image.shape, (image.shape, r.image.shape)
            return r.copy()

        KaryotypePipeline.segment = segment

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pipe.process(path)
        paths = write_outputs(res, work / "out")
    wall = time.perf_counter() - t0
    js = json.loads(Path(paths["json"]).read_text())
    out = {
        "side": s,
        "gt_detections": args.gt,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_mb(), 0),
        "baseline_rss_mb": round(base, 0),
        "json_width": js["width"],
        "json_height": js["height"],
        "processing_scale": js["processing_scale"],
        "chromosomes": js["count"],
        "detections": js["detections"],
        "timings_s": js["timings_s"],
        "warned": any("downscaled" in str(w.message) for w in caught),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
