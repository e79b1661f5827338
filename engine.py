"""Training and evaluation loops shared by both trainers (segmentation and classification).

Modelled on torchvision's ``references/detection/engine.py`` + ``utils.py``: the scripts
(``train_segmentation.py``, ``train_classification.py``) only wire things together; everything about
devices, distributed training (torchrun / DDP), seeding, mixed precision, learning-rate schedules,
checkpoints and logging lives here so both trainers behave the same way.

Conventions:

* Distributed runs are started with ``torchrun --nproc_per_node=N script.py ...``; :func:`init_distributed`
  reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``. Only rank 0 saves and logs; validation is sharded over
  the ranks and merged (:func:`karyotyping.detection.evaluate_detection`), so no rank idles in a barrier.
* Learning-rate schedules are stepped once per *optimizer step* (not per epoch), so a resumed run
  continues at exactly the same position of the schedule.
* Every file is written atomically (:mod:`datasets.io`): a killed run never leaves a half-written
  checkpoint or log line.
* Both trainers run one protocol (see "runs" below): :func:`resume_path` and :func:`restore` (``--resume
  auto|PATH``), :func:`write_run_info` (args.json, config.json, env.json), then per epoch
  :func:`begin_epoch` (RNGs from seed, rank and epoch), :func:`train_one_epoch` with the model's own
  :data:`TrainStep` (:func:`detection_step`, ``models.classifier.training_step``), the validation of its kind
  (:func:`evaluate_detection`, :func:`predict_dataset`), and :func:`end_epoch` (best.pth, last.pth,
  epoch_NNN.pth in that order, the log row, the printed line).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
import warnings
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datasets.io import atomic_torch_save, atomic_write, atomic_write_json, load_torch_file
from karyotyping.detection import evaluate_detection  # the one detection-evaluation loop (sharded under DDP)
from karyotyping.runtime import env_rank, resolve_device  # the one --device resolver (honours LOCAL_RANK)

__all__ = [
    "DistInfo",
    "MetricLogger",
    "ResumeState",
    "TrainStep",
    "amp_dtype",
    "autocast_context",
    "barrier",
    "begin_epoch",
    "build_lr_scheduler",
    "check_finite",
    "cleanup_distributed",
    "detection_collate",
    "detection_step",
    "end_epoch",
    "evaluate_detection",
    "gather_rows",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "make_scaler",
    "predict_dataset",
    "reduce_dict",
    "resolve_device",
    "restore",
    "resume_path",
    "save_checkpoint",
    "save_epoch",
    "seed_everything",
    "seed_worker",
    "shard_indices",
    "train_one_epoch",
    "unwrap_model",
    "write_run_info",
]

# ---------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly) distributed run.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes (1 in a single-process run).
        local_rank: rank on this machine; selects the GPU ``cuda:<local_rank>``.
        distributed: True when a process group was initialised (``world_size > 1``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False


def init_distributed(*, device: str = "auto") -> DistInfo:
    """Initialise ``torch.distributed`` from torchrun's environment variables, if present.

    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set by ``torchrun``. Without them this is a
    single-process run and nothing is initialised. Under torchrun a process group is initialised even
    for one process (as torchvision's references do), so ``torchrun --nproc_per_node=1`` runs the very
    DDP code paths of a multi-GPU run; ``WORLD_SIZE=1`` without torchrun's ``MASTER_ADDR`` stays a plain
    single process. The backend is NCCL when CUDA is used (``device`` is "auto"/"cuda*" and CUDA is
    available), gloo otherwise.

    Args:
        device: the ``--device`` flag of the trainer ("auto", "cpu", "cuda", "cuda:N").

    Returns:
        DistInfo for this process.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    env = env_rank()  # the one reader of torchrun's variables (a clear error for a non-integer value)
    rank, world_size, local_rank = env.rank, env.world_size, env.local_rank
    if world_size <= 1 and "MASTER_ADDR" not in os.environ:
        return DistInfo(rank=rank, world_size=1, local_rank=local_rank, distributed=False)
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    # torchrun's other ranks would flood the terminal with the same messages
    if rank != 0:
        import builtins

        builtin_print = builtins.print

        def quiet_print(*a: Any, force: bool = False, **kw: Any) -> None:
            if force:
                builtin_print(*a, **kw)

        builtins.print = quiet_print
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, distributed=True)


def cleanup_distributed() -> None:
    """Destroy the process group if one was initialised (call at the end of ``main``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _dist_on() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if _dist_on() else 1


def is_main_process() -> bool:
    """True on rank 0 (and always in a single-process run): the process that saves and logs."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all processes (no-op when not distributed)."""
    if _dist_on():
        dist.barrier()


def reduce_dict(values: Mapping[str, torch.Tensor], *, average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors over processes (for logging); identity when not distributed."""
    if get_world_size() < 2:
        return dict(values)
    with torch.no_grad():
        names = sorted(values)
        stacked = torch.stack([values[k].detach().float() for k in names])
        dist.all_reduce(stacked)
        if average:
            stacked /= get_world_size()
        return dict(zip(names, stacked))


def shard_indices(n: int) -> np.ndarray:
    """The indices of ``n`` samples this rank handles: ``rank, rank + world, ...`` (all of them when not distributed).

    Unlike ``DistributedSampler`` nothing is padded or repeated, so merging the shards gives every sample once.
    """
    return np.arange(get_rank(), n, get_world_size(), dtype=np.int64)


def gather_rows(indices: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Merge per-rank results: ``rows[i]`` belongs to sample ``indices[i]``; returns the full array [n, ...] on
    every rank (``all_gather_object``, which gloo and NCCL both carry). Identity when not distributed."""
    rows = np.asarray(rows)
    if get_world_size() < 2:
        out = np.zeros((n, *rows.shape[1:]), rows.dtype)
        out[np.asarray(indices, np.int64)] = rows
        return out
    shards: list[Any] = [None] * get_world_size()
    dist.all_gather_object(shards, (np.asarray(indices, np.int64), rows))
    out = np.zeros((n, *rows.shape[1:]), rows.dtype)
    seen = np.zeros(n, bool)
    for idx, r in shards:
        out[idx] = r
        seen[idx] = True
    if not seen.all():
        raise RuntimeError(f"gather_rows: {int((~seen).sum())} of {n} samples came back from no rank")
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel (``model_without_ddp``)."""
    return (
        model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model
    )


# ---------------------------------------------------------------------------------------------- splits


def add_test_fraction_argument(group: Any, *, default: float = 0.0) -> None:
    """The trainers' ``--test-fraction`` flag (``evaluate.py`` has the same one; see :mod:`datasets.splits`)."""
    group.add_argument(
        "--test-fraction",
        type=float,
        default=default,
        help="fraction of groups held out as a test split that no training or model selection sees (the val "
        f"split keeps its membership; default {default})",
    )


def check_test_fraction(val_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` unless ``0 <= test_fraction < 1`` and ``val_fraction + test_fraction < 1``."""
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"--test-fraction must be in [0, 1) with --val-fraction + --test-fraction < 1, got {test_fraction}"
        )


# ---------------------------------------------------------------------------------------------- devices, seeds


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank``; return the seed used.

    Different ranks get different seeds so that their augmentations differ (detectron2's habit).
    """
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    return s


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: seed NumPy and ``random`` in each worker from torch's seed.

    torch already gives each worker ``base_seed + worker_id``; NumPy and ``random`` would otherwise be
    copies of the parent's state in every worker (identical augmentations across workers).
    """
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


#: environment variable that forces the autocast dtype of ``--amp`` ("bfloat16" or "float16"), e.g. to test the
#: float16 + GradScaler path on a GPU that supports bfloat16 (``benchmarks/gpu_check.py`` does)
AMP_DTYPE_ENV = "KARYO_AMP_DTYPE"


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype used on ``device``: bfloat16 where the GPU supports it, else float16; None on CPU.

    ``$KARYO_AMP_DTYPE`` (``bfloat16`` | ``float16``) overrides the choice on CUDA.
    """
    if torch.device(device).type != "cuda":
        return None
    forced = os.environ.get(AMP_DTYPE_ENV, "").strip().lower()
    if forced:
        if forced not in ("bfloat16", "float16"):
            raise ValueError(f"${AMP_DTYPE_ENV}={forced!r}: use bfloat16 or float16")
        return getattr(torch, forced)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed-precision context: ``torch.autocast`` (bf16, or fp16 on older GPUs) on CUDA, ``nullcontext`` on CPU."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for float16 autocast on CUDA (bf16 and fp32 need none).

    A disabled scaler is returned otherwise, so the training loop can always call
    ``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()``.
    """
    use = bool(enabled) and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=use)


# ---------------------------------------------------------------------------------------------- LR schedule


def lr_factor(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    step_milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> float:
    """The multiplier of the base learning rate after ``step`` optimizer steps (see :func:`build_lr_scheduler`)."""
    if warmup_steps > 0 and step < warmup_steps:
        warm = (step + 1) / warmup_steps
    else:
        warm = 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        decay = min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        milestones = list(step_milestones) if step_milestones is not None else default_milestones(total_steps)
        decay = gamma ** bisect_right(sorted(milestones), step)
    else:
        raise ValueError(f"unknown schedule {schedule!r}: use 'cosine' or 'step'")
    return warm * decay


def default_milestones(total_steps: int) -> list[int]:
    """Step-schedule milestones at 2/3 and 8/9 of training (torchvision's 16 and 22 of 26 epochs, in steps)."""
    return [int(total_steps * 2 / 3), int(total_steps * 8 / 9)]


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    step_milestones: Sequence[int] | None = None,
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step LambdaLR: linear warmup, then cosine decay or step decay.

    After ``k`` calls of ``scheduler.step()`` the learning rate is ``base_lr * warm(k) * decay(k)`` with

    * ``warm(k) = (k + 1) / warmup_steps`` for ``k < warmup_steps``, else 1 (so the very first step
      runs at ``base_lr / warmup_steps`` and step ``warmup_steps - 1`` at the full rate);
    * cosine: ``decay(k) = min_factor + (1 - min_factor) * (1 + cos(pi * p)) / 2`` with
      ``p = clip((k - warmup_steps) / (total_steps - warmup_steps), 0, 1)``;
    * step: ``decay(k) = gamma ** (number of milestones <= k)``; milestones default to 2/3 and 8/9 of
      ``total_steps``.

    Args:
        optimizer: the optimizer whose groups' ``lr`` is the base rate.
        schedule: "cosine" or "step".
        total_steps: optimizer steps in the whole run (epochs x steps per epoch).
        warmup_steps: linear warmup length in optimizer steps (0: none).
        step_milestones: optimizer-step indices where the step schedule multiplies by ``gamma``.
        gamma: step-decay factor.
        min_factor: floor of the cosine decay as a fraction of the base rate.

    Raises:
        ValueError: unknown schedule or negative/zero step counts.
    """
    if schedule not in ("cosine", "step"):
        raise ValueError(f"unknown schedule {schedule!r}: use 'cosine' or 'step'")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    milestones = list(step_milestones) if step_milestones is not None else default_milestones(total_steps)

    def factor(step: int) -> float:
        return lr_factor(
            step,
            schedule=schedule,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            step_milestones=milestones,
            gamma=gamma,
            min_factor=min_factor,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------- checkpoints


def _jsonable(obj: Any) -> Any:
    """Plain-Python version of args/config (argparse Namespace, dataclass, Path) for a portable checkpoint."""
    import argparse

    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    args: Any,
    config: Any,
    best_metric: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a full training checkpoint atomically (call on rank 0 only).

    The file holds ``model`` (state dict of the unwrapped model), ``optimizer``, ``scheduler``,
    ``scaler``, ``epoch`` (the last *completed* epoch), ``args`` and ``config`` as plain dicts (so the
    model can be rebuilt from the file alone), ``best_metric``, ``torch_version`` and ``extra``.
    """
    ckpt = {
        "format": "karyotype-checkpoint/1",
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "args": _jsonable(args),
        "config": _jsonable(config),
        "best_metric": best_metric,
        "torch_version": str(torch.__version__),
        "extra": dict(extra) if extra else {},
    }
    atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or any dict with a ``model`` state dict).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        datasets.io.UnsafeCheckpointError: the file holds Python objects beyond tensors and plain values.
        ValueError: the file is not a readable torch checkpoint or has no ``model`` entry.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p} (check the path, or train first to create it)")
    ckpt = load_torch_file(p, map_location)  # weights_only: a foreign pickle is refused, never run
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{p}: not a training checkpoint (no 'model' entry; found {keys})")
    return ckpt


# ---------------------------------------------------------------------------------------------- runs
#
# Both trainers run the same protocol around their own model, data and one epoch's train/validate:
#
#     path = resume_path(args.resume, out_dir)           # --resume auto|PATH -> the checkpoint, or None
#     ...build model, optimizer, scheduler, scaler...
#     state = restore(ckpt, model=..., optimizer=..., scheduler=..., scaler=...)   # -> ResumeState
#     write_run_info(out_dir, args, config, device=..., world_size=..., seed=...)
#     for epoch in range(state.start_epoch, args.epochs):
#         begin_epoch(loader, epoch, seed)                # the RNGs of (seed, rank, epoch) only
#         stats = train_one_epoch(model, step, loader, optimizer, device, epoch, ...)   # step: the model's own
#         ...validate (evaluate_detection, or predict_dataset and the trainer's figures)...
#         end_epoch(out_dir, logger, row, message, is_best=..., keep=..., **checkpoint)


@dataclass
class ResumeState:
    """Where a run goes on: the first epoch to train, the best metric so far, the checkpoint's ``extra``.

    A fresh run is ``ResumeState()``: epoch 0, no best metric, nothing extra.
    """

    start_epoch: int = 0
    best_metric: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def resume_path(resume: str | None, out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint that ``--resume auto|PATH`` names, or None for a fresh run.

    ``auto`` is ``<out_dir>/last.pth`` when it exists; when it does not yet, the run starts at epoch 0 (and
    says so). Raises ``FileNotFoundError`` for a ``PATH`` that is not a file.
    """
    if resume is None:
        return None
    if resume == "auto":
        path = Path(out_dir) / "last.pth"
        if path.is_file():
            return path
        if is_main_process():
            print(f"--resume auto: no {path} yet, starting from epoch 0")
        return None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: checkpoint {path} does not exist")
    return path


def restore(
    ckpt: Mapping[str, Any] | None,
    *,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: torch.amp.GradScaler | None,
) -> ResumeState:
    """Load a :func:`save_checkpoint` file's states into the run's objects; the run goes on after its epoch.

    ``model`` (unwrapped; None when the caller built the model from the checkpoint already), ``optimizer``,
    ``scheduler`` and ``scaler`` take the checkpoint's entries of the same names where the file has them.
    No RNG state is stored or needed: every epoch's RNGs are seeded from (seed, rank, epoch) by
    :func:`begin_epoch`, so a resumed epoch draws what the uninterrupted one drew. ``ckpt=None`` is a fresh
    run: nothing is loaded.
    """
    if ckpt is None:
        return ResumeState()
    if model is not None:
        unwrap_model(model).load_state_dict(ckpt["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and ckpt.get(key):
            obj.load_state_dict(ckpt[key])
    return ResumeState(
        start_epoch=int(ckpt["epoch"]) + 1, best_metric=ckpt.get("best_metric"), extra=dict(ckpt.get("extra") or {})
    )


def write_run_info(
    out_dir: str | os.PathLike,
    args: Any,
    config: Any,
    *,
    device: torch.device,
    world_size: int,
    seed: int,
) -> None:
    """Write ``args.json`` (the flags), ``config.json`` (the model config) and ``env.json`` (versions, device,
    seeds, command, start time) into the run folder; on the main process only, rewritten at every (re)start.

    ``seed`` is this process's seed (:func:`seed_everything`'s return value, the flag's seed plus the rank).
    """
    if not is_main_process():
        return
    import platform

    out = Path(out_dir)
    device = torch.device(device)
    atomic_write_json(out / "args.json", _jsonable(args))
    atomic_write_json(out / "config.json", config.to_dict() if hasattr(config, "to_dict") else _jsonable(config))
    atomic_write_json(
        out / "env.json",
        {
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "cuda": torch.version.cuda,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": int(world_size),
            "seed": getattr(args, "seed", None),
            "seed_rank0": int(seed) - get_rank(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )


#: the epoch's stride in the per-epoch seed (a prime, so that (seed, epoch) pairs do not collide for small seeds)
EPOCH_SEED_STRIDE = 1_000_003


def begin_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Start ``epoch``: the sampler's permutation and the RNGs depend on (seed, rank, epoch) only, so a resumed
    epoch is the same epoch as the uninterrupted one.

    Sets the loader's sampler's epoch (when it has ``set_epoch``), seeds torch's global RNG (augmentations in
    the main process, the workers' base seed) and the loader's own generator when it has one, all with
    ``seed + EPOCH_SEED_STRIDE * epoch``; ``seed`` is :func:`seed_everything`'s return value (seed + rank).
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    s = int(seed) + EPOCH_SEED_STRIDE * int(epoch)
    torch.manual_seed(s)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(s)


def save_epoch(out_dir: str | os.PathLike, *, is_best: bool, keep: bool = False, **ckpt: Any) -> None:
    """Write an epoch's checkpoints (:func:`save_checkpoint`'s keywords): ``best.pth`` when ``is_best``, then
    ``last.pth``, then ``epoch_NNN.pth`` when ``keep``.

    best.pth comes before last.pth on purpose: a run killed between the two must not resume from a last.pth
    whose ``best_metric`` points at a best.pth that was never written.
    """
    out = Path(out_dir)
    if is_best:
        save_checkpoint(out / "best.pth", **ckpt)
    save_checkpoint(out / "last.pth", **ckpt)
    if keep:
        save_checkpoint(out / f"epoch_{int(ckpt['epoch']):03d}.pth", **ckpt)


def end_epoch(
    out_dir: str | os.PathLike,
    logger: MetricLogger,
    row: Mapping[str, Any],
    message: str,
    *,
    is_best: bool,
    keep: bool = False,
    **ckpt: Any,
) -> None:
    """Close an epoch: on the main process :func:`save_epoch`, log ``row`` (TensorBoard step = the epoch) and
    print ``message``; then every process waits for the others (:func:`barrier`)."""
    if is_main_process():
        save_epoch(out_dir, is_best=is_best, keep=keep, **ckpt)
        logger.log(row, step=int(ckpt["epoch"]))
        print(message)
    barrier()


# ---------------------------------------------------------------------------------------------- logging


class MetricLogger:
    """Append one row of metrics per call to ``log.csv`` and ``log.jsonl``, and to TensorBoard (``tb/``).

    Every line is appended and flushed at once, so a killed run keeps everything logged so far; on
    resume the files are appended to, never wiped. If a row brings new columns, ``log.csv`` is
    rewritten (atomically) from ``log.jsonl`` with the wider header. TensorBoard is optional: when
    ``torch.utils.tensorboard`` cannot be imported a warning is given and only CSV/JSONL are written.

    Args:
        output_dir: folder of the run.
        enabled: False on non-main ranks (then every call is a no-op).
        tensorboard: write TensorBoard scalars under ``output_dir/tb``.
    """

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.csv_path = self.dir / "log.csv"
        self.jsonl_path = self.dir / "log.jsonl"
        self.writer = None
        self._columns: list[str] | None = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), None)
            self._columns = list(header) if header else None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.dir / "tb"))
            except Exception as exc:  # tensorboard is optional
                warnings.warn(
                    f"TensorBoard logging disabled ({exc}); CSV and JSONL logs are still written", stacklevel=2
                )

    def log(self, row: Mapping[str, Any], *, step: int | None = None, prefix: str = "") -> None:
        """Append ``row`` (e.g. ``{"epoch": 3, "loss": 0.41, "val/bbox_AP50": 0.7}``)."""
        if not self.enabled:
            return
        clean = {k: _scalar(v) for k, v in row.items()}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
        keys = list(clean)
        if self._columns is None or any(k not in self._columns for k in keys):
            self._columns = (self._columns or []) + [k for k in keys if k not in (self._columns or [])]
            self._rewrite_csv()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(clean)
                f.flush()
        if self.writer is not None:
            s = step if step is not None else int(clean.get("epoch", 0) or 0)
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self.writer.add_scalar(prefix + k, v, s)
            self.writer.flush()

    def _rewrite_csv(self) -> None:
        rows = []
        if self.jsonl_path.exists():
            with open(self.jsonl_path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self._columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        with atomic_write(self.csv_path, "w") as f:
            f.write(buf.getvalue())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ---------------------------------------------------------------------------------------------- loops


def check_finite(loss_dict: Mapping[str, torch.Tensor | float]) -> None:
    """Stop training when a loss is NaN or infinite: print the loss dict and raise ``FloatingPointError``."""
    values = {k: float(v.detach().float().item() if isinstance(v, torch.Tensor) else v) for k, v in loss_dict.items()}
    total = sum(values.values())
    if not all(math.isfinite(v) for v in values.values()) or not math.isfinite(total):
        msg = "non-finite loss, stopping training: " + ", ".join(f"{k}={v}" for k, v in values.items())
        print(msg, file=sys.stderr)
        raise FloatingPointError(msg)


def detection_collate(batch: list) -> tuple[list, list]:
    """Collate ``(image, target)`` pairs into ``(list of images, list of targets)`` (torchvision style)."""
    return tuple(list(x) for x in zip(*batch)) if batch else ([], [])


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


#: what a model brings to :func:`train_one_epoch`: ``step(model, batch, device) -> (losses, sums)`` runs the
#: forward pass of one batch (under autocast) and returns its loss dict (scalar tensors, summed and
#: backpropagated) and the batch's sums for the epoch's figures (numbers or scalar tensors, read after the optimizer
#: step; e.g. ``{"correct": 7, "samples": 8}``)
TrainStep = Callable[
    [torch.nn.Module, Any, torch.device], tuple[Mapping[str, torch.Tensor], Mapping[str, float | torch.Tensor]]
]


def detection_step(
    model: torch.nn.Module, batch: Any, device: torch.device
) -> tuple[Mapping[str, torch.Tensor], dict[str, float]]:
    """The :data:`TrainStep` of a torchvision detection model: ``model(images, targets)`` in train mode returns its
    loss dict. ``batch`` is ``(images, targets)`` (see :func:`detection_collate`) or a list of ``(image, target)``
    pairs; images FloatTensor[1, H, W], targets as ``KaryoRecord.to_target``. No sums."""
    if isinstance(batch, list) and batch and isinstance(batch[0], (tuple, list)) and len(batch[0]) == 2:
        images, targets = detection_collate(batch)
    else:
        images, targets = batch
    images = [_to_device(im, device) for im in images]
    targets = [_to_device(t, device) for t in targets]
    return model(images, targets), {}


def train_one_epoch(
    model: torch.nn.Module,
    step: TrainStep,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    accum_steps: int = 1,
    max_steps: int | None = None,
    clip_grad_norm: float | None = None,
    progress: bool = True,
    log_every: int = 20,
) -> dict[str, float]:
    """One training epoch of any model: the model's own ``step`` (its forward pass and losses) inside one loop
    of autocast, gradient accumulation, scaling, clipping, optimizer and per-step schedule.

    Per batch: ``losses, sums = step(model, batch, device)`` under :func:`autocast_context`; the losses are
    averaged over the ranks and checked (:func:`check_finite`: a NaN on one rank stops every rank), their sum
    divided by ``accum_steps`` is backpropagated; every ``accum_steps`` batches (and at the end of the epoch)
    the optimizer steps, then the scheduler.

    Args:
        model: the model in train mode (possibly DDP-wrapped).
        step: its :data:`TrainStep` (:func:`detection_step`, ``models.classifier.training_step(criterion)``).
        loader: yields the batches ``step`` takes.
        optimizer / scheduler: the scheduler is stepped once per optimizer step.
        device: where to run.
        epoch: for the progress bar and the heartbeat.
        scaler: a GradScaler (see :func:`make_scaler`); None means no scaling.
        amp: run ``step`` under :func:`autocast_context`.
        accum_steps: gradient accumulation: one optimizer step every ``accum_steps`` batches (and
            at the end of the epoch).
        max_steps: stop after this many batches (smoke runs, debugging).
        clip_grad_norm: clip the global gradient norm to this value if given (0 or None: off).
        progress: tqdm bar (on the main process only).
        log_every: without a bar, print a one-line heartbeat every this many batches (0 = never).

    Returns:
        the mean of each loss over the batches seen (each batch's value averaged over the ranks; ``loss`` is
        the total), ``lr`` (after the last step), ``steps`` (batches), ``optimizer_steps``, ``time_s``, and
        each of ``step``'s sums totalled over the epoch and the ranks.

    Raises:
        FloatingPointError: a loss became NaN/inf (the loss dict is printed first).
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    model.train()
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    bar = None
    if progress and is_main_process():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False)
    sums: dict[str, float] = {}  # of each loss, over the batches
    loss_sum = 0.0  # of the total loss, over the batches
    totals: dict[str, float] = {}  # of step's sums
    n_batches = 0
    n_opt = 0
    t0 = time.time()
    optimizer.zero_grad(set_to_none=True)
    pending = 0
    for i, batch in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            break
        last_in_epoch = (total is not None and i + 1 == total) or (max_steps is not None and i + 1 == max_steps)
        do_step = (i + 1) % accum_steps == 0 or last_in_epoch
        # skip the gradient all-reduce on accumulation-only batches of a DDP model
        sync = contextlib.nullcontext() if do_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_context(device, amp):
                loss_dict, batch_sums = step(model, batch, device)
            losses = sum(loss_dict.values())
            logged = reduce_dict({k: v.detach() for k, v in loss_dict.items()})
            check_finite(logged)
            loss = losses / accum_steps
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        pending += 1
        if do_step:
            _optimizer_step(model, optimizer, scaler, clip_grad_norm)
            if scheduler is not None:
                scheduler.step()
            pending = 0
            n_opt += 1
        n_batches += 1
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        loss_sum += float(sum(float(v) for v in logged.values()))
        for k, v in batch_sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        elif log_every and is_main_process() and (i + 1) % log_every == 0:
            # background runs (nohup, --no-progress) still get a heartbeat in their log
            dt = (time.time() - t0) / n_batches
            print(
                f"epoch {epoch} step {i + 1}/{total if total is not None else '?'} "
                f"loss {loss_sum / n_batches:.4f} lr {optimizer.param_groups[0]['lr']:.2e} {dt:.2f} s/step",
                flush=True,
            )
    if pending:  # an iterable without len ended between optimizer steps
        _optimizer_step(model, optimizer, scaler, clip_grad_norm)
        if scheduler is not None:
            scheduler.step()
        n_opt += 1
    if bar is not None:
        bar.close()
    out = {k: v / max(1, n_batches) for k, v in sums.items()}
    out["loss"] = loss_sum / max(1, n_batches)
    out.update(
        lr=float(optimizer.param_groups[0]["lr"]),
        steps=n_batches,
        optimizer_steps=n_opt,
        time_s=time.time() - t0,
    )
    if totals:  # every rank's sums, added up (the same figures on every rank)
        reduced = reduce_dict(
            {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in totals.items()}, average=False
        )
        out.update({k: float(reduced[k]) for k in totals})
    return out


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    device: torch.device,
    predict: Callable[[torch.nn.Module, Any, torch.device], np.ndarray],
    *,
    batch_size: int,
    row_shape: tuple[int, ...],
    workers: int = 0,
) -> np.ndarray:
    """The rows ``predict(model, batch, device)`` gives (numpy [B, *row_shape]) for every sample of ``dataset``, in
    order, with the model in eval mode: the validation loop of a trainer whose figures need every sample.

    In a distributed run every rank must call it: each predicts its share (:func:`shard_indices`) and the shares
    are gathered (:func:`gather_rows`), so every rank returns the whole array and none waits for rank 0 in a
    barrier. ``row_shape`` is the shape of one row (a rank with no sample still needs it).
    """
    model.eval()
    idx = shard_indices(len(dataset))
    sub = torch.utils.data.Subset(dataset, idx.tolist())
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = [predict(model, batch, device) for batch in loader]
    mine = np.concatenate(out) if out else np.zeros((0, *row_shape), np.float32)
    return gather_rows(idx, mine, len(dataset))


def _optimizer_step(model, optimizer, scaler, clip_grad_norm) -> None:
    if scaler is not None:
        if clip_grad_norm:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
