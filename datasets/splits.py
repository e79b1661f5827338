"""Deterministic train/val/test splits by image, slide or cell.

Splits are made over *groups* (an image, a slide, a cell), so that images of one slide or crops of one
cell never end up on both sides. Groups are ordered by a seeded hash of their name (stable across
machines and Python versions, unlike ``hash()``), and the first ``round(test_fraction * G)`` go to
test, the next ``round(val_fraction * G)`` to val and the rest to train.
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
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if n >= 3:  # keep at least one training group
        n_val = min(n_val, n - n_test - 1)
    out = {}
    for i, g in enumerate(uniq):
        out[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
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
