"""Export trained checkpoints to small inference-only weight files (fp16), as shipped in ``weights/``.

    python -m models.export --seg runs/seg/best.pth --cls runs/cls/best.pth --out weights/

Writes ``segmentation.pt`` and ``classifier.pt`` (``{"model": fp16 state dict, "config": dict}``),
which :func:`models.segmentation.load_segmentation_checkpoint` and
:func:`models.classifier.load_classifier_checkpoint` read back as float32 models. Several ``--cls`` files
(e.g. one classifier per crop mode) make one ensemble ``classifier.pt`` (:func:`models.classifier.save_ensemble`:
int8 convolution and linear weights, so that two ResNet-18s fit in 23 MB), whose members' probabilities the
pipeline combines::

    python -m models.export --cls runs/cls_straight/best.pth runs/cls_axis/best.pth --out weights/

``--split`` does the reverse: each member of an ensemble file becomes a classifier file of its own
(``classifier_member0.pt``, ...; float32), which ``train_classification.py --pretrained`` can go on from::

    python -m models.export --split weights/classifier.pt --out runs/members/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seg", type=Path, help="segmentation checkpoint (train_segmentation.py last/best.pth)")
    p.add_argument(
        "--cls",
        type=Path,
        nargs="+",
        help="classifier checkpoint(s) (train_classification.py last/best.pth); two or more make an ensemble",
    )
    p.add_argument("--split", type=Path, help="an ensemble classifier file: write each member as a file of its own")
    p.add_argument("--out", type=Path, default=Path("weights"))
    p.add_argument(
        "--fp32", action="store_true", help="keep float32 (default: float16, half the size; int8 weights in ensembles)"
    )
    return p


def main(args: argparse.Namespace) -> list[Path]:
    from models import classifier, segmentation

    if args.seg is None and args.cls is None and args.split is None:
        raise ValueError("give --seg and/or --cls, or --split")
    written = []
    if args.split is not None:
        for i, (model, cfg) in enumerate(classifier.load_classifier_members(args.split, "cpu")):
            path = args.out / f"classifier_member{i}.pt"
            classifier.save_weights(model, cfg, path)
            written.append(path)
    if args.seg is not None:
        model, cfg = segmentation.load_segmentation_checkpoint(args.seg, "cpu")
        path = args.out / "segmentation.pt"
        segmentation.save_weights(model, cfg, path, half=not args.fp32)
        written.append(path)
    if args.cls is not None:
        members = [classifier.load_classifier_checkpoint(p, "cpu") for p in args.cls]
        path = args.out / "classifier.pt"
        if len(members) == 1:
            classifier.save_weights(*members[0], path, half=not args.fp32)
        else:
            classifier.save_ensemble(members, path, precision="float" if args.fp32 else "int8")
        written.append(path)
    for p in written:
        print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")
    return written


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
