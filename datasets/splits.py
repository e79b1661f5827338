"""Deterministic train/val/test splits by image, slide or cell.

Splits are made over *groups* (an image, a slide, a cell), so that images of one slide or crops of one
cell never end up on both sides. Groups are ordered by a seeded hash of their name (stable across
machines and Python versions, unlike ``hash()``), and the first ``round(val_fraction * G)`` go to
val, the next ``round(test_fraction * G)`` to test and the rest to train. Val comes first so that adding a
test split never changes the val split's membership (the val split every figure was chosen on stays the
same); the test groups come out of the former training groups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLITS = ("train", "val", "test", "all")


def _key(group: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_splits(
    groups: Sequence[str], *, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, str]:
    """Map each distinct group name to "train", "val" or "test".

    >>> s = assign_splits([str(i) for i in range(10)], val_fraction=0.2, seed=0)
    >>> sorted(s.values()).count("val")
    2
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) and sum below 1"
        )
    uniq = sorted(set(map(str, groups)), key=lambda g: _key(g, seed))
    n = len(uniq)
    n_val = round(val_fraction * n)
    n_test = round(test_fraction * n)
    if n >= 3:  # keep at least one training group (the test split gives way first, then val)
        n_val = min(n_val, n - 1)
        n_test = min(n_test, n - n_val - 1)
    out = {}
    for i, g in enumerate(uniq):
        out[g] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def select_split(
    items: Sequence,
    groups: Sequence[str],
    split: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> list:
    """The items whose group falls in ``split`` ("train", "val", "test" or "all"), in their original order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if len(items) != len(groups):
        raise ValueError("items and groups differ in length")
    if split == "all":
        return list(items)
    table = assign_splits(groups, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return [it for it, g in zip(items, groups) if table[str(g)] == split]


def add_split_args(group, *, max_images: int = 0) -> None:
    """A benchmark's cells: ``--split``, ``--val-fraction``, ``--split-seed`` and ``--max-images`` (the first N
    images of the split, 0 = all; default ``max_images``) on an argparse parser or group."""
    group.add_argument("--split", default="val", choices=("train", "val", "test"))
    group.add_argument("--val-fraction", type=float, default=0.1)
    group.add_argument("--split-seed", type=int, default=0)
    group.add_argument(
        "--max-images",
        type=int,
        default=max_images,
        help=f"the first N images of the split (0 = all; default {max_images})",
    )
