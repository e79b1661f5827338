"""Metaphase image(s) -> chromosomes segmented, identified, paired, karyogram and ISCN karyotype.

    python inference_pipeline.py                          # the bundled example with the shipped weights
    python inference_pipeline.py --image cell.tif --out results/
    python inference_pipeline.py --input-dir slides/ --out results/ --device cuda
    torchrun --nproc_per_node=4 inference_pipeline.py --input-dir big_folder/ --out results/   # sharded

For every image ``<stem>`` it writes ``<stem>.json``, ``<stem>_karyogram.png`` and ``<stem>_overlay.png``;
for a folder also ``coco_results.json`` (COCO results format, all images) and ``summary.json`` (which
files were processed, which failed and why). The exit status is non-zero only when no image could be
processed (or, with ``--strict``, when any failed).

Before detection each image is checked (:mod:`karyotyping.image_checks`): a light-on-dark image is inverted, an
image whose chromosomes are wider or narrower than the training images' is resized to their scale, and every
reason to distrust the result (a scale or contrast outside the training range, a count far from 46, an
implausible karyotype) is printed as a ``[warning]`` line and written in the JSON's ``image_checks.out_of_range``
and ``summary.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from karyotyping.core import (
    DEFAULT_CLS_WEIGHTS,
    DEFAULT_MAX_SIDE,
    DEFAULT_SEG_WEIGHTS,
    KaryotypePipeline,
    PipelineError,
    add_pipeline_args,
    pipeline_options,
)
from karyotyping.detection import SCORE_THRESH

DEFAULT_EXAMPLE = Path(__file__).resolve().parent / "examples" / "cil_104023.jpg"


# ---------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Input / output")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--image", type=Path, help="one image file (default: the bundled CIL example)")
    src.add_argument("--input-dir", type=Path, help="a folder of images (png, jpg, tif, bmp)")
    g.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: outputs/)")
    g.add_argument("--format", choices=("png", "svg", "pdf"), default="png", help="karyogram/overlay format")
    g.add_argument("--strict", action="store_true", help="stop with an error at the first image that fails")
    m = p.add_argument_group("Models")
    m.add_argument("--seg-weights", type=Path, default=DEFAULT_SEG_WEIGHTS)
    m.add_argument("--cls-weights", type=Path, default=DEFAULT_CLS_WEIGHTS)
    m.add_argument("--score-thresh", type=float, default=SCORE_THRESH, help="minimum detection score of a chromosome")
    add_pipeline_args(m)
    m.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="downscale larger images to this side")
    h = p.add_argument_group("Hardware")
    h.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    h.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _shard(files: list[Path]) -> tuple[list[Path], int, int]:
    from karyotyping.runtime import env_rank

    r = env_rank()
    return files[r.rank :: r.world_size], r.rank, r.world_size


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from datasets.io import IMAGE_EXTENSIONS, atomic_write_json, list_images
    from karyotyping.export import coco_results, write_outputs

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.input_dir is not None:
        if not args.input_dir.is_dir():
            raise PipelineError(f"--input-dir {args.input_dir} is not a folder")
        files = list_images(args.input_dir)
        ignored = sorted(
            p.name for p in args.input_dir.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS
        )
        if not files:
            raise PipelineError(f"--input-dir {args.input_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        files = [args.image or DEFAULT_EXAMPLE]
        ignored = []
        if not files[0].exists():
            raise PipelineError(f"image not found: {files[0]}")
    files, rank, world = _shard(files)
    pipe = KaryotypePipeline(
        args.seg_weights,
        args.cls_weights,
        device=args.device,
        score_thresh=args.score_thresh,
        **pipeline_options(args),
        max_side=args.max_side,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    done, failed, coco = [], [], []
    bar = tqdm(files, desc=f"images (rank {rank})" if world > 1 else "images", disable=args.quiet or len(files) < 2)
    for k, path in enumerate(bar):
        try:
            pred = pipe.process(path)
            paths = write_outputs(pred, args.out, fmt=args.format)
        except Exception as exc:  # one bad file must not stop a folder of good ones
            if args.strict:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            failed.append({"image": str(path), "reason": reason})
            print(f"[skip] {path}: {reason}", file=sys.stderr)
            if os.environ.get("KARYO_DEBUG"):
                traceback.print_exc()
            continue
        outside = list(pred.image_checks.out_of_range) if pred.image_checks is not None else []
        for msg in outside:  # a karyotype the models could not make must not be trusted: say so on the terminal
            print(f"[warning] {path}: outside what the models were trained on: {msg}", file=sys.stderr)
        done.append(
            {"image": str(path), "json": str(paths["json"]), "karyotype": pred.karyotype, "out_of_range": outside}
        )
        coco += coco_results(pred, image_id=1 + rank + k * world)  # 1-based, as datasets.coco
        if len(files) == 1:
            kt = pred.karyotype or "none (no chromosome found)"
            print(f"karyotype: {kt}  ({pred.count} chromosomes, {len(pred)} detections)")
            for kind in ("json", "karyogram", "overlay"):
                print(f"  {kind:9s} {paths[kind]}")
    suffix = f".rank{rank}" if world > 1 else ""
    if args.input_dir is not None:
        atomic_write_json(args.out / f"coco_results{suffix}.json", coco)
        summary = {"processed": done, "failed": failed, "ignored_non_images": ignored}
        atomic_write_json(args.out / f"summary{suffix}.json", summary)
        print(f"{len(done)} processed, {len(failed)} failed, {len(ignored)} non-image files ignored -> {args.out}")
        if failed:
            print(f"failures listed in {args.out / f'summary{suffix}.json'}")
    if not done:
        print("error: no image could be processed", file=sys.stderr)
        return 1
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from datasets.errors import DataError

        if isinstance(exc, DataError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(cli())
