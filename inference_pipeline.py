"""Metaphase image(s) -> chromosomes segmented, identified, paired, karyogram and ISCN karyotype.

    python inference_pipeline.py                          # the bundled example with the shipped weights
    python inference_pipeline.py --image cell.tif --out results/
    python inference_pipeline.py --input-dir slides/ --out results/ --device cuda
    torchrun --nproc_per_node=4 inference_pipeline.py --input-dir big_folder/ --out results/   # sharded

For every image ``<stem>`` it writes ``<stem>.json``, ``<stem>_karyogram.png`` and ``<stem>_overlay.png``;
for a folder also ``coco_results.json`` (COCO results format, all images) and ``summary.json`` (which
files were processed, which failed and why). The exit status is non-zero only when no image could be
processed (or, with ``--strict``, when any failed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_SEG_WEIGHTS = ROOT / "weights" / "segmentation.pt"
DEFAULT_CLS_WEIGHTS = ROOT / "weights" / "classifier.pt"
DEFAULT_EXAMPLE = ROOT / "examples" / "cil_104023.jpg"
#: images whose longer side exceeds this are downscaled for processing (outputs are mapped back)
DEFAULT_MAX_SIDE = 2048
#: defaults of --score-thresh and --mask-overlap, chosen on the CIL val split (README, "The whole pipeline")
DEFAULT_SCORE_THRESH = 0.3
DEFAULT_MASK_OVERLAP = 0.4


class PipelineError(RuntimeError):
    """A problem the user must fix (missing weights, CUDA asked for but absent, ...)."""


@dataclass
class ImageResult:
    """Everything the pipeline found in one image (coordinates in the original image's pixels)."""

    json: dict[str, Any]
    record: Any  # datasets.record.KaryoRecord at processing resolution, with final labels
    crops: list[np.ndarray] = field(default_factory=list)
    centromere_rows: list[float] = field(default_factory=list)


@contextmanager
def _timer(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


class KaryotypePipeline:
    """Segmentation model + classifier + karyotype assignment, loaded once and applied per image.

    Args:
        seg_weights: segmentation checkpoint (models.segmentation format).
        cls_weights: classifier checkpoint (models.classifier format).
        device: "auto", "cpu", "cuda" or "cuda:N".
        score_thresh: minimum detection score kept.
        mask_overlap: drop a detection when more than this fraction of its mask is covered by better-scoring
            ones (duplicates, fragments; see :func:`models.segmentation.suppress_overlapping_masks`); 1 = off.
        max_side: images with a longer side are downscaled to it for processing (warned).
    """

    def __init__(
        self,
        seg_weights: str | os.PathLike,
        cls_weights: str | os.PathLike,
        *,
        device: str = "auto",
        score_thresh: float = DEFAULT_SCORE_THRESH,
        mask_overlap: float = DEFAULT_MASK_OVERLAP,
        max_side: int = DEFAULT_MAX_SIDE,
    ) -> None:

        from engine import resolve_device
        from models.classifier import load_classifier_checkpoint
        from models.segmentation import load_segmentation_checkpoint

        for what, p in (("segmentation", seg_weights), ("classifier", cls_weights)):
            if not Path(p).is_file():
                raise PipelineError(
                    f"{what} weights not found: {p}. Pass --{'seg' if what == 'segmentation' else 'cls'}-weights PATH "
                    "(a checkpoint written by train_segmentation.py / train_classification.py) or restore the "
                    "shipped files in weights/."
                )
        if not 0.0 <= score_thresh <= 1.0:
            raise PipelineError(f"--score-thresh must be in [0, 1], got {score_thresh}")
        if not 0.0 < mask_overlap <= 1.0:
            raise PipelineError(f"--mask-overlap must be in (0, 1], got {mask_overlap}")
        try:
            self.device = resolve_device(device)
        except ValueError as exc:
            raise PipelineError(str(exc)) from None
        try:  # a truncated, empty or foreign weights file: a message, not a traceback
            self.seg_model, self.seg_config = load_segmentation_checkpoint(seg_weights, self.device)
            self.cls_model, self.cls_config = load_classifier_checkpoint(cls_weights, self.device)
        except (ValueError, FileNotFoundError) as exc:
            raise PipelineError(f"{exc}. Pass a checkpoint written by the training scripts.") from None
        self.seg_model.eval()
        self.cls_model.eval()
        self.score_thresh = score_thresh
        self.mask_overlap = mask_overlap
        self.max_side = max_side
        self.seg_weights = str(seg_weights)
        self.cls_weights = str(cls_weights)
        from karyogram.assign import config_for_classifier

        # priors only for the evidence the classifier has not seen already (see config_for_classifier)
        self.assign_config = config_for_classifier(self.cls_config.feature_groups)

    # ------------------------------------------------------------------ stages
    def segment(self, image: np.ndarray):
        """Image float32 [H, W] -> KaryoRecord of detections (masks uint8 [M, H, W], scores, labels)."""
        from datasets.record import KaryoRecord
        from models.segmentation import predict, suppress_overlapping_masks

        out = predict(self.seg_model, [image], score_thresh=self.score_thresh, device=self.device)[0]
        masks = (
            (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            if len(out["scores"])
            else np.zeros((0, *image.shape), np.uint8)
        )
        scores = out["scores"].cpu().numpy()
        # empty masks go; duplicates and fragments of a better detection go (descending score order kept)
        keep = suppress_overlapping_masks(masks, scores, self.mask_overlap)
        return KaryoRecord(
            image=image,
            boxes=out["boxes"].cpu().numpy()[keep],
            labels=np.zeros(len(keep), np.int64),
            masks=masks[keep],
            scores=scores[keep],
        )

    # ------------------------------------------------------------------ one image
    def process(self, image_path: str | os.PathLike) -> ImageResult:
        """Run the whole pipeline on one image file."""
        from datasets.io import read_image
        from features.triad import FEATURE_NAMES
        from karyogram.assign import assign_karyotype
        from karyogram.labels import name_of
        from metrics.karyotype import sanity_score

        timings: dict[str, float] = {}
        path = Path(image_path)
        notes: list[str] = []
        with _timer(timings, "load"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                full = read_image(path)
            notes += [str(w.message) for w in caught]
            height, width = full.shape
            scale = 1.0
            image = full
            if max(height, width) > self.max_side:
                import cv2

                scale = self.max_side / max(height, width)
                image = cv2.resize(full, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
                msg = f"{path}: {width}x{height} image downscaled to {image.shape[1]}x{image.shape[0]} for processing"
                warnings.warn(msg, stacklevel=2)
                notes.append(msg)
            del full
        with _timer(timings, "segmentation"):
            rec = self.segment(image)
        n = len(rec)
        with _timer(timings, "features"):
            from features.triad import spread_features

            x, feats = spread_features(image, rec.masks) if n else (np.zeros((0, len(FEATURE_NAMES)), np.float32), [])
        with _timer(timings, "classification"):
            from datasets.instances import tight_crop
            from models.classifier import predict_proba

            # exactly the crops the classifier was trained on (straightened, p arm up, trimmed to the mask)
            crops = [tight_crop(f) for f in feats]
            probs = (
                np.asarray(predict_proba(self.cls_model, self.cls_config, crops, x), np.float32)
                if n
                else np.zeros((0, 24), np.float32)
            )
        with _timer(timings, "assignment"):
            lengths = np.array([f.length_px for f in feats], np.float64)
            ci = np.array([f.centromere_index for f in feats], np.float64)
            res = assign_karyotype(
                probs,
                lengths=lengths if n else None,
                centromere_index=ci if n else None,
                config=self.assign_config,
            )
        rec.labels = np.asarray(res.labels, np.int64)
        rows = [float(getattr(f, "centromere_row", 0.0)) for f in feats]

        inv = 1.0 / scale
        chromosomes = []
        for i in range(n):
            f = feats[i]
            mask = rec.masks[i]
            if scale != 1.0:
                import cv2

                mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            lab = int(res.labels[i])
            pair = int(res.pair_of[i]) if res.pair_of is not None and res.pair_of[i] >= 0 else None
            chromosomes.append(
                {
                    "id": i,
                    "label": lab,
                    "name": name_of(lab),  # "?" when unassigned
                    "score": round(float(rec.scores[i]), 4),
                    "probs": [round(float(p), 5) for p in probs[i]],
                    "confidence": round(float(res.confidence[i]), 4),
                    "box": [round(float(v) * inv, 2) for v in rec.boxes[i]],
                    "mask": _rle(mask),
                    "length_px": round(float(f.length_px) * inv, 2),
                    "centromere_index": round(float(f.centromere_index), 4),
                    "centromere_xy": [round(float(v) * inv, 2) for v in f.centromere_xy],
                    "polarity_ok": bool(f.polarity_conf >= 0.5),
                    "pair": pair,
                    "flags": list(res.flags[i]),
                }
            )
        labels_final = np.asarray(res.labels)
        out = {
            "image": str(path),
            "width": int(width),
            "height": int(height),
            "processing_scale": round(scale, 6),
            "karyotype": res.iscn if n else None,
            "sex": res.sex if n else None,
            "count": int((labels_final > 0).sum()),
            "detections": int(n),
            "sanity_score": round(float(sanity_score(labels_final)), 4),
            "chromosomes": chromosomes,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "models": {"segmentation": self.seg_weights, "classifier": self.cls_weights},
            "notes": notes + ([] if n else ["no chromosome found in this image"]),
        }
        return ImageResult(json=out, record=rec, crops=crops, centromere_rows=rows)

    def write_outputs(self, result: ImageResult, out_dir: Path, *, fmt: str = "png") -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>_karyogram.<fmt>`` and ``<stem>_overlay.<fmt>`` (atomically)."""
        from datasets.io import atomic_write_json
        from karyogram.render import render_karyogram

        stem = Path(result.json["image"]).stem
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rec = result.record
        flags = [c["flags"] for c in result.json["chromosomes"]]
        pair_of = [c["pair"] if c["pair"] is not None else -1 for c in result.json["chromosomes"]]
        title = result.json["karyotype"] or "no chromosomes found"
        paths = {
            "karyogram": render_karyogram(
                result.crops,
                result.centromere_rows,
                rec.labels,
                pair_of=pair_of,
                flags=flags,
                title=f"{title}   ({stem})",
                path=out_dir / f"{stem}_karyogram.{fmt}",
            ),
            "overlay": _write_overlay(rec.image, rec.masks, rec.labels, flags, out_dir / f"{stem}_overlay.{fmt}"),
        }
        result.json["timings_s"]["rendering"] = round(time.perf_counter() - t0, 4)
        paths["json"] = out_dir / f"{stem}.json"
        atomic_write_json(paths["json"], result.json)
        return paths


def _write_overlay(image: np.ndarray, masks: np.ndarray, labels: np.ndarray, flags: list, path: Path) -> Path:
    """The annotated spread at ``path``: PNG directly; SVG/PDF embed the same raster at its pixel size
    (OpenCV cannot encode vector formats, and a vector overlay of thousands of mask contours is no use)."""
    from karyogram.render import render_overlay

    if path.suffix.lower() == ".png":
        return render_overlay(image, masks, labels, flags=flags, path=path)
    import tempfile

    import cv2
    from matplotlib.figure import Figure

    from datasets.io import atomic_save_figure

    with tempfile.TemporaryDirectory() as tmp:
        png = render_overlay(image, masks, labels, flags=flags, path=Path(tmp) / "overlay.png")
        rgb = cv2.imread(str(png), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = rgb.shape[:2]
    dpi = 100
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    fig.figimage(rgb, 0, 0, origin="upper")
    atomic_save_figure(fig, path, dpi=dpi)
    return path


def coco_results_of(result: ImageResult, image_id: int) -> list[dict[str, Any]]:
    """COCO results-format entries (bbox xywh, category 1..24, score, RLE) of one image's chromosomes.

    Unassigned chromosomes (label 0) are left out. ``score`` is the detection score times the
    assignment confidence of the chromosome's label (the detector is class-agnostic, so the class
    evidence comes from the classifier + karyotype assignment); ``evaluate.py --stage full`` scores
    its system-level 24-class AP with the same product.
    """
    out = []
    for c in result.json["chromosomes"]:
        if not c["label"]:
            continue
        x1, y1, x2, y2 = c["box"]
        out.append(
            {
                "image_id": image_id,
                "file_name": Path(result.json["image"]).name,
                "category_id": c["label"],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": round(float(c["score"]) * float(c.get("confidence", 1.0)), 6),
                "segmentation": c["mask"],
            }
        )
    return out


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
    m.add_argument(
        "--score-thresh", type=float, default=DEFAULT_SCORE_THRESH, help="minimum detection score of a chromosome"
    )
    m.add_argument(
        "--mask-overlap",
        type=float,
        default=DEFAULT_MASK_OVERLAP,
        help="drop a detection whose mask is more than this fraction covered by better ones (1 = off)",
    )
    m.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="downscale larger images to this side")
    h = p.add_argument_group("Hardware")
    h.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    h.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _shard(files: list[Path]) -> tuple[list[Path], int, int]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return files[rank::world], rank, world


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from datasets.io import IMAGE_EXTENSIONS, atomic_write_json, list_images

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
        mask_overlap=args.mask_overlap,
        max_side=args.max_side,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    done, failed, coco = [], [], []
    bar = tqdm(files, desc=f"images (rank {rank})" if world > 1 else "images", disable=args.quiet or len(files) < 2)
    for k, path in enumerate(bar):
        try:
            result = pipe.process(path)
            paths = pipe.write_outputs(result, args.out, fmt=args.format)
        except Exception as exc:  # one bad file must not stop a folder of good ones
            if args.strict:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            failed.append({"image": str(path), "reason": reason})
            print(f"[skip] {path}: {reason}", file=sys.stderr)
            if os.environ.get("KARYO_DEBUG"):
                traceback.print_exc()
            continue
        done.append({"image": str(path), "json": str(paths["json"]), "karyotype": result.json["karyotype"]})
        coco += coco_results_of(result, image_id=1 + rank + k * world)  # 1-based, as datasets.coco
        if len(files) == 1:
            kt = result.json["karyotype"] or "none (no chromosome found)"
            print(f"karyotype: {kt}  ({result.json['count']} chromosomes, {result.json['detections']} detections)")
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
