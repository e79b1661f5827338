"""Speed and memory of the inference pipeline, per stage and per image (batch size 1).

For each device it loads the models once (``model_load_s``), processes one warm-up image (not counted),
then every image of ``--images`` through :class:`inference_pipeline.KaryotypePipeline` exactly as the CLI
does (``process`` + ``write_outputs`` into a temporary folder). Reported per image: the pipeline's own
``timings_s`` (load = reading the file, segmentation, features, classification, assignment, rendering),
their total, the process peak resident memory (``ru_maxrss``, MiB, a high-water mark for the whole
process) and, on CUDA, ``torch.cuda.max_memory_allocated`` (MiB, reset per image); for the folder,
images/s = images / wall time of the timed loop. Prints a table and, last, one JSON line.

    python benchmarks/pipeline_speed.py                                  # bundled example x3, cpu (+cuda)
    python benchmarks/pipeline_speed.py --weights-dir weights --images slides/ --device cpu cuda
    python benchmarks/pipeline_speed.py --synthetic 3 --synthetic-size 768   # stages after segmentation
                                                                             # timed on 46 true instances

Without the default weights (weights/segmentation.pt, weights/classifier.pt) or the files given, it says
so and trains smoke checkpoints on the fly (``--smoke`` of both trainers); their results are labelled
"untrained smoke weights": such a detector finds nothing, so features / classification / assignment
then take no time. ``--synthetic N`` times those stages anyway: the detector still runs (and is timed) on
synthetic spreads, but its output is replaced by the spread's true instances (labels hidden).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from karyotyping.core import (  # noqa: E402
    DEFAULT_CLS_WEIGHTS,
    DEFAULT_MAX_SIDE,
    DEFAULT_SEG_WEIGHTS,
    KaryotypePipeline,
    PipelineError,
    add_pipeline_args,
    pipeline_options,
)
from karyotyping.detection import SCORE_THRESH as DEFAULT_SCORE_THRESH  # noqa: E402
from karyotyping.export import write_outputs  # noqa: E402

DEFAULT_EXAMPLE = ROOT / "examples" / "cil_104023.jpg"

STAGES = ("load", "segmentation", "features", "classification", "assignment", "rendering")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Input")
    g.add_argument("--images", nargs="*", type=Path, default=None, help="a folder and/or image files")
    g.add_argument("--repeat", type=int, default=3, help="copies of the bundled example when --images is not given")
    g.add_argument("--synthetic", type=int, default=0, help="N synthetic spreads with true instances (see above)")
    g.add_argument("--synthetic-size", type=int, default=768, help="side of the synthetic spreads, pixels")
    g.add_argument("--format", choices=("png", "svg", "pdf"), default="png", help="karyogram/overlay format")
    m = p.add_argument_group("Models")
    m.add_argument("--weights-dir", type=Path, default=None, help="folder with segmentation.pt and classifier.pt")
    m.add_argument("--seg-weights", type=Path, default=None, help=f"default {DEFAULT_SEG_WEIGHTS}")
    m.add_argument("--cls-weights", type=Path, default=None, help=f"default {DEFAULT_CLS_WEIGHTS}")
    m.add_argument("--score-thresh", type=float, default=DEFAULT_SCORE_THRESH)
    m.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE)
    add_pipeline_args(m)
    h = p.add_argument_group("Hardware")
    h.add_argument("--device", nargs="+", default=None, help="devices to time (default: cpu, and cuda if available)")
    h.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    h.add_argument("--smoke-dir", type=Path, default=None, help="where to train fallback smoke weights (default temp)")
    return p


# ---------------------------------------------------------------------------------------------- inputs
def _image_files(args: argparse.Namespace) -> list[Path]:
    from datasets.io import IMAGE_EXTENSIONS, list_images

    if not args.images:
        if not DEFAULT_EXAMPLE.is_file():
            raise PipelineError(f"bundled example {DEFAULT_EXAMPLE} is missing; pass --images")
        return [DEFAULT_EXAMPLE] * max(1, args.repeat)
    files: list[Path] = []
    for p in args.images:
        if p.is_dir():
            files += list_images(p)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            raise PipelineError(f"--images {p}: not an image file ({', '.join(IMAGE_EXTENSIONS)}) or folder")
    if not files:
        raise PipelineError(f"--images {' '.join(map(str, args.images))}: no image files found")
    return files


def _synthetic_files(n: int, size: int, folder: Path) -> tuple[list[Path], dict[str, Any]]:
    """Write N synthetic spreads as 8-bit PNGs; returns the files and {file name: ground-truth record}."""
    import cv2

    from datasets.synthetic import generate_spread

    files, truth = [], {}
    for i in range(n):
        rec = generate_spread(np.random.default_rng((7, i)), None, None, size=(size, size), image_id=f"syn{i}")
        path = folder / f"synthetic_{i:03d}.png"
        cv2.imwrite(str(path), np.round(rec.image * 255).astype(np.uint8))
        files.append(path)
        truth[path.name] = rec
    return files, truth


class _TrueInstancePipeline(KaryotypePipeline):
    """Runs (and so times) the detector, then hands on the image's true instances instead."""

    truth: dict[str, Any] = {}
    current: str = ""

    def segment(self, image: np.ndarray):
        super().segment(image)
        rec = self.truth[self.current].copy()
        if rec.image.shape != image.shape:
            raise PipelineError(
                f"{self.current}: processed at {image.shape}, truth at {rec.image.shape}; raise --max-side"
            )
        rec.labels[:] = 0
        rec.scores = np.ones(len(rec), np.float32)
        return rec

    def process(self, image_path):
        self.current = Path(image_path).name
        return super().process(image_path)


# ---------------------------------------------------------------------------------------------- weights
def _weights(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, str]:
    """(seg, cls, label): the weights to time and how to describe them."""
    if args.weights_dir is not None:
        seg = args.seg_weights or args.weights_dir / "segmentation.pt"
        cls = args.cls_weights or args.weights_dir / "classifier.pt"
    else:
        seg = args.seg_weights or DEFAULT_SEG_WEIGHTS
        cls = args.cls_weights or DEFAULT_CLS_WEIGHTS
    missing = [p for p in (seg, cls) if not Path(p).is_file()]
    if not missing:
        return Path(seg), Path(cls), "trained weights"
    print(f"weights not found: {', '.join(map(str, missing))}")
    print("falling back to smoke weights trained on the fly (2 steps): UNTRAINED SMOKE WEIGHTS, they detect nothing")
    out = args.smoke_dir or tmp / "smoke"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for script, sub in (("train_segmentation.py", "seg"), ("train_classification.py", "cls")):
        if (out / sub / "last.pth").is_file():
            continue
        cmd = [sys.executable, str(ROOT / script), "--smoke", "--output-dir", str(out / sub)]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise PipelineError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return out / "seg" / "last.pth", out / "cls" / "last.pth", "untrained smoke weights"


# ---------------------------------------------------------------------------------------------- timing
def _maxrss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if platform.system() != "Darwin" else kb / 2**20  # KiB on Linux, bytes on macOS


def _bench_device(device: str, files: list[Path], args, seg: Path, cls: Path, truth: dict | None) -> dict[str, Any]:
    import torch

    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    cls_ = _TrueInstancePipeline if truth is not None else KaryotypePipeline
    if truth is not None:
        _TrueInstancePipeline.truth = truth
    pipe = cls_(
        seg,
        cls,
        device=device,
        score_thresh=args.score_thresh,
        max_side=args.max_side,
        **pipeline_options(args),
    )
    if cuda:
        torch.cuda.synchronize(pipe.device)
    load_s = time.perf_counter() - t0
    per_image = []
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        write_outputs(pipe.process(files[0]), out, fmt=args.format)  # warm-up, not counted
        if cuda:
            torch.cuda.synchronize(pipe.device)
        t_loop = time.perf_counter()
        for f in files:
            if cuda:
                torch.cuda.reset_peak_memory_stats(pipe.device)
            r = pipe.process(f)
            write_outputs(r, out, fmt=args.format)
            if cuda:
                torch.cuda.synchronize(pipe.device)
            t = {k: float(r.timings_s.get(k, 0.0)) for k in STAGES}
            row = {
                "image": str(f),
                "size_hw": [r.height, r.width],
                "processing_scale": round(r.processing_scale, 6),
                "detections": len(r),
                "timings_s": t,
                "total_s": sum(t.values()),
                "peak_rss_mib": round(_maxrss_mib(), 1),
            }
            if cuda:
                row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(pipe.device) / 2**20, 1)
            per_image.append(row)
        wall = time.perf_counter() - t_loop
    med = {k: statistics.median(r["timings_s"][k] for r in per_image) for k in STAGES}
    res = {
        "device": str(pipe.device),
        "model_load_s": round(load_s, 3),
        "images": len(per_image),
        "images_per_s": round(len(per_image) / wall, 4) if wall > 0 else None,
        "median_stage_s": {k: round(v, 4) for k, v in med.items()},
        "median_total_s": round(statistics.median(r["total_s"] for r in per_image), 4),
        "mean_detections": float(np.mean([r["detections"] for r in per_image])),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in per_image),
        "per_image": per_image,
    }
    if cuda:
        res["cuda_max_allocated_mib"] = max(r["cuda_max_allocated_mib"] for r in per_image)
        res["gpu"] = torch.cuda.get_device_name(pipe.device)
    return res


def _print_table(results: list[dict[str, Any]], header: dict[str, Any]) -> None:
    print()
    for k, v in header.items():
        print(f"{k:22s} {v}")
    cols = [*STAGES, "total"]
    print()
    print(f"{'median s / image':18s}" + "".join(f"{c:>15s}" for c in cols))
    for r in results:
        vals = [r["median_stage_s"][k] for k in STAGES] + [r["median_total_s"]]
        print(f"{r['device']:18s}" + "".join(f"{v:15.4f}" for v in vals))
    print()
    print(
        f"{'device':18s}{'model load s':>15s}{'images/s':>15s}{'peak RSS MiB':>15s}{'CUDA peak MiB':>15s}{'detections':>15s}"
    )
    for r in results:
        cuda_peak = r.get("cuda_max_allocated_mib")
        print(
            f"{r['device']:18s}{r['model_load_s']:15.3f}{r['images_per_s']:15.3f}{r['peak_rss_mib']:15.1f}"
            f"{(f'{cuda_peak:15.1f}' if cuda_peak is not None else f'{chr(45):>15s}')}{r['mean_detections']:15.1f}"
        )


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seg, cls, label = _weights(args, tmp)
        truth = None
        if args.synthetic:
            files, truth = _synthetic_files(args.synthetic, args.synthetic_size, tmp)
            source = f"{args.synthetic} synthetic spreads, {args.synthetic_size} px, detector output replaced by true instances"
        else:
            files = _image_files(args)
            source = (
                f"bundled example {DEFAULT_EXAMPLE.name} x{len(files)}" if not args.images else f"{len(files)} image(s)"
            )
        results = [_bench_device(d, files, args, seg, cls, truth) for d in devices]
    sizes = sorted({tuple(r["size_hw"]) for res in results for r in res["per_image"]})
    header = {
        "weights": f"{label} (seg {seg}, cls {cls})",
        "images": source,
        "image size (HxW)": ", ".join(f"{h}x{w}" for h, w in sizes),
        "batch size": 1,
        "torch threads": args.threads,
        "torch": torch.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
    }
    _print_table(results, header)
    summary = {
        "benchmark": "pipeline_speed",
        "weights": label,
        "seg_weights": str(seg),
        "cls_weights": str(cls),
        "images_source": source,
        "image_sizes_hw": [list(s) for s in sizes],
        "batch_size": 1,
        "threads": args.threads,
        "torch": torch.__version__,
        "results": [{k: v for k, v in r.items() if k != "per_image"} for r in results],
        "per_image": {r["device"]: r["per_image"] for r in results},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (PipelineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
