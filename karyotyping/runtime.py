"""Where a process runs: the one ``--device`` resolver, and torchrun's rank variables.

Every entry point (both trainers, ``inference_pipeline.py``, ``evaluate.py``, the benchmarks) turns its
``--device`` flag into a :class:`torch.device` here, so a process started by ``torchrun`` lands on its own
GPU (``cuda:$LOCAL_RANK``) whichever script it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["RankInfo", "env_rank", "resolve_device"]


@dataclass(frozen=True)
class RankInfo:
    """torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (0 / 1 / 0 in a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def env_rank() -> RankInfo:
    """This process's place in a torchrun launch, read from the environment (no process group needed).

    >>> env_rank() == RankInfo() or "RANK" in os.environ
    True
    """
    return RankInfo(_env_int("RANK", 0), max(1, _env_int("WORLD_SIZE", 1)), _env_int("LOCAL_RANK", 0))


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """Turn a ``--device`` flag into a torch device.

    Args:
        name: "auto" (CUDA if available, else CPU), "cpu", "cuda" (``cuda:<local_rank>``) or "cuda:N"
            (exactly that GPU).
        local_rank: the GPU "auto" and "cuda" pick; None reads torchrun's ``LOCAL_RANK`` (0 without torchrun),
            so every process of ``torchrun --nproc_per_node=N`` gets its own GPU.

    Raises:
        ValueError: an unknown name, or CUDA asked for on a machine without a usable CUDA device.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if local_rank is None:
        local_rank = env_rank().local_rank
    name = str(name).strip().lower()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(f"cuda:{local_rank % max(1, torch.cuda.device_count())}")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu or --device auto"
            )
        index = local_rank
        if name.startswith("cuda:"):
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--device {name}: expected cuda:N with an integer N") from None
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: needs GPU {index} but only {torch.cuda.device_count()} CUDA device(s) are visible"
                + (" (LOCAL_RANK picks the GPU under torchrun)" if not name.startswith("cuda:") else "")
            )
        return torch.device(f"cuda:{index}")
    raise ValueError(f"unknown --device {name!r}: use auto, cpu, cuda or cuda:N")
