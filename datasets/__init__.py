"""Data layer: one record type (:class:`KaryoRecord`) and a loader per dataset format.

``build_dataset(name, root, split, **kw)`` builds any of them by name:

=========== ============================================ =============================
name        format                                       class
=========== ============================================ =============================
voc         Pascal-VOC XML + images (CIL:54816)          :class:`datasets.voc.VOCDataset`
coco        COCO instance JSON (polygons, RLE)           :class:`datasets.coco.COCODataset`
labelme     LabelMe JSON polygons                        :class:`datasets.labelme.LabelMeDataset`
yolo        YOLO txt (boxes or polygons) + data.yaml     :class:`datasets.yolo.YOLODataset`
mfish       ADIR M-FISH ``…D.tif`` + ``…K.tif`` maps     :class:`datasets.mfish.MFISHDataset`
crops       single-chromosome crops (BioImLab)           :class:`datasets.crops.CropDataset`
crops_cells BioImLab crops of a cell on one canvas       :class:`datasets.crops.CellCropDataset`
synthetic   generated metaphases                         :class:`datasets.synthetic.SyntheticDataset`
=========== ============================================ =============================
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .errors import AnnotationError, DataError, ImageReadError
from .record import KaryoRecord

DATASETS: dict[str, tuple[str, str]] = {
    "voc": ("datasets.voc", "VOCDataset"),
    "coco": ("datasets.coco", "COCODataset"),
    "labelme": ("datasets.labelme", "LabelMeDataset"),
    "yolo": ("datasets.yolo", "YOLODataset"),
    "mfish": ("datasets.mfish", "MFISHDataset"),
    "crops": ("datasets.crops", "CropDataset"),
    "crops_cells": ("datasets.crops", "CellCropDataset"),
    "synthetic": ("datasets.synthetic", "SyntheticDataset"),
}


def dataset_class(name: str):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    module, cls = DATASETS[name]
    return getattr(importlib.import_module(module), cls)


def add_train_only_data_argument(group: Any) -> None:
    """The trainers' ``--train-only-data NAME ROOT`` flag (repeatable) on an argparse group."""
    group.add_argument(
        "--train-only-data",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "ROOT"),
        help="a dataset used whole for training, none of it held out (e.g. voc ../shared/data/cil54816_extra, "
        "so that the val split of --data-root stays as it is); may be repeated",
    )


def check_train_only_data(pairs: list[list[str]] | list[tuple[str, str]]) -> None:
    """Validate the trainers' ``--train-only-data NAME ROOT`` pairs (a known loader, an existing root)."""
    for name, root in pairs:
        if name not in DATASETS or name == "synthetic":
            raise ValueError(
                f"--train-only-data {name} {root}: unknown dataset {name!r} (one of {', '.join(DATASETS)})"
            )
        if not os.path.exists(root):
            raise ValueError(f"--train-only-data {name} {root}: {root} does not exist")


def build_dataset(name: str, root: str | os.PathLike | None, split: str = "all", **kwargs: Any):
    """Build the dataset ``name`` (see the table above) on ``root`` for ``split``."""
    return dataset_class(name)(root, split, **kwargs)


__all__ = [
    "DATASETS",
    "AnnotationError",
    "DataError",
    "ImageReadError",
    "KaryoRecord",
    "add_train_only_data_argument",
    "build_dataset",
    "check_train_only_data",
    "dataset_class",
]
