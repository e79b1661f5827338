"""Single-chromosome crops labelled by file name (BioImLab) or by folder name.

Two layouts are recognised, file by file:

* BioImLab: ``<root>/<cell>/<cell> <class><a|b>.bmp``, class 1-22, 23 = X, 24 = Y (``"1 10a.bmp"``,
  ``"3 23.bmp"``); the split group is the cell (the folder name).
* By folder: ``<root>/<class name>/<anything>.<image ext>`` where the folder is a class name that
  :func:`karyogram.labels.id_of` accepts ("1".."22", "X", "Y", "chr7", "A1"); the split group is the file stem.

Each crop becomes a record with one instance: its mask is the thresholded crop (the largest 8-connected
component, holes filled) and its box the mask's bounding box. BioImLab crops are Q-banded, white on a black
(pre-masked, exactly 0) background. ``invert=True`` (default) turns bright-on-dark crops into dark-on-light
like G-banding; ``meta["polarity"]`` says what the record's image is and ``meta["inverted"]`` whether it was
inverted. Files whose names parse as neither layout are skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from karyogram.labels import UnknownClassError, id_of

from .base import RecordDataset
from .derive_masks import _otsu
from .io import IMAGE_EXTENSIONS, read_image
from .record import KaryoRecord, masks_to_boxes

_BIOIMLAB = re.compile(r"^(?P<cell>\w+)\s+(?P<cls>\d{1,2})(?P<copy>[ab]?)$", re.IGNORECASE)


def parse_bioimlab_name(name: str) -> tuple[str, int, str] | None:
    """Parse a BioImLab crop name: ``"1 10a.bmp"`` -> ("1", 10, "a"); None if it does not match or class is not 1..24.

    >>> parse_bioimlab_name("1 10a.bmp"), parse_bioimlab_name("3 23.bmp"), parse_bioimlab_name("3 25a.bmp")
    (('1', 10, 'a'), ('3', 23, ''), None)
    """
    m = _BIOIMLAB.match(Path(name).stem.strip())
    if m is None:
        return None
    cls = int(m["cls"])
    if not 1 <= cls <= 24:
        return None
    return m["cell"], cls, m["copy"].lower()


def crop_mask(image: np.ndarray, *, bright_objects: bool) -> np.ndarray:
    """Mask uint8 [H, W] of the one chromosome in a crop.

    A pre-masked crop (its commonest border value is its minimum "object" value, and at least a fifth of its
    pixels and half its border equal it exactly, like BioImLab's black 0) is thresholded at "different from the
    background"; otherwise at Otsu's threshold. The largest 8-connected component is kept
    and its holes filled. An all-uniform crop gives an empty mask.
    """
    img = np.asarray(image, np.float32)
    obj = img if bright_objects else 1.0 - img
    border = np.concatenate([obj[0], obj[-1], obj[:, 0], obj[:, -1]])
    vals, counts = np.unique(border, return_counts=True)
    bg = float(vals[np.argmax(counts)])
    if np.mean(obj == bg) >= 0.2 and np.mean(border == bg) >= 0.5 and bg == float(obj.min()):
        fg = obj > bg
    else:
        fg = obj > _otsu(cv2.GaussianBlur(obj, (0, 0), 0.7).ravel())
    fg = fg.astype(np.uint8)
    if not fg.any():
        return fg
    n, lab, st, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    k = 1 + int(np.argmax(st[1:, cv2.CC_STAT_AREA]))
    return ndimage.binary_fill_holes(lab == k).astype(np.uint8)


class CropDataset(RecordDataset):
    """Single-chromosome crops (BioImLab or one folder per class), one record with one instance each.

    Args:
        root: the crops folder (see the module docstring).
        split: "train", "val", "test" or "all"; split by cell (BioImLab) or file.
        invert: make bright-on-dark crops dark-on-light (default True). Polarity is detected per crop from its
            border (a dark border means bright objects).
        **kw: passed to :class:`datasets.base.RecordDataset`.
    """

    source = "crops"

    def __init__(self, root, split: str = "all", *, invert: bool = True, **kw) -> None:
        self.invert = invert
        super().__init__(root, split, **kw)

    def index(self) -> tuple[list[tuple[Path, int, str]], list[str]]:
        """Items are (file, class id, cell); names that parse as neither layout are skipped and counted."""
        items, groups = [], []
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            parsed = parse_bioimlab_name(f.name)
            if parsed is not None:
                cell, cls, _ = parsed
                group = f.parent.name if f.parent != self.root else cell
            else:
                try:
                    cls = id_of(f.parent.name) if f.parent != self.root else None
                except UnknownClassError:
                    cls = None
                if cls is None:
                    self.skip(f, "file name is not '<cell> <class><a|b>' and folder is not a class name")
                    continue
                group = f.stem
            items.append((f, cls, group))
            groups.append(group)
        return items, groups

    def load(self, item: tuple[Path, int, str]) -> KaryoRecord:
        path, cls, group = item
        image = read_image(path)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        bright = float(np.median(border)) < float(np.mean(image))
        mask = crop_mask(image, bright_objects=bright)
        skipped: dict[str, Any] = {}
        if not mask.any():
            # nothing separable from the background: the whole crop is the chromosome
            mask = np.ones_like(mask)
            skipped["uniform crop, whole-image mask"] = 1
            self.skip(path, "crop is uniform; its mask is the whole crop")
        inverted = self.invert and bright
        if inverted:
            image = 1.0 - image
        masks = mask[None]
        meta = {
            "source": self.source,
            "image_id": f"{group}/{path.stem}",
            "path": str(path),
            "group": group,
            "polarity": "bright" if (bright and not inverted) else "dark",
            "inverted": inverted,
            "skipped": skipped,
        }
        return KaryoRecord(image=image, boxes=masks_to_boxes(masks), labels=np.array([cls]), masks=masks, meta=meta)
