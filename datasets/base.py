"""Common base of every loader: indexing, splitting, error handling and paired transforms."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .record import KaryoRecord
from .splits import select_split

#: a paired transform: takes a record and a numpy Generator, returns the transformed record
Transform = Callable[[KaryoRecord, np.random.Generator], KaryoRecord]


class RecordDataset(torch.utils.data.Dataset):
    """A torch Dataset of :class:`KaryoRecord`.

    Subclasses implement :meth:`index` (list the samples and the group each belongs to, cheaply, without
    reading images) and :meth:`load` (read one sample into a record).

    Args:
        root: the dataset folder (or file, for formats whose root is an annotation file).
        split: "train", "val", "test" or "all"; the split is made by group (image, slide or cell).
        val_fraction / test_fraction / seed: how the split is made (see :mod:`datasets.splits`).
        transforms: optional paired transform ``(record, rng) -> record`` applied on every access.
    """

    source = "base"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "all",
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        transforms: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(self.root, f"{self.source} dataset root does not exist")
        self.split = split
        self.transforms = transforms
        self.skipped: Counter[str] = Counter()
        items, groups = self.index()
        if len(items) == 0:
            raise DataError(self.root, f"no {self.source} samples found (is this the right folder and format?)")
        self.items = select_split(
            items, groups, split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
        if len(self.items) == 0:
            raise DataError(self.root, f"split {split!r} of {len(items)} {self.source} samples is empty")

    # -- to implement ------------------------------------------------------------------
    def index(self) -> tuple[Sequence[Any], Sequence[str]]:
        """Return (items, groups): one item per sample (e.g. a file path) and its split group name."""
        raise NotImplementedError

    def load(self, item: Any) -> KaryoRecord:
        """Read one item into a record."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> KaryoRecord:
        rec = self.load(self.items[i]).validate()
        if self.transforms is not None:
            # drawn from torch's RNG so that torch.manual_seed and per-worker seeding govern augmentation
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            rec = self.transforms(rec, rng).validate()
        return rec

    def skip(self, path: str | os.PathLike, reason: str, n: int = 1) -> None:
        """Count and warn about ``n`` skipped instances or files."""
        self.skipped[reason] += n
        warnings.warn(f"{path}: skipped {n} ({reason})", stacklevel=2)


class DetectionView(torch.utils.data.Dataset):
    """(image FloatTensor[1, H, W], target dict) pairs for torchvision detection models."""

    def __init__(self, dataset: torch.utils.data.Dataset, *, agnostic: bool = False) -> None:
        self.dataset = dataset
        self.agnostic = agnostic

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        rec = self.dataset[i]
        return rec.image_tensor(), rec.to_target(agnostic=self.agnostic, index=i)
