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
from .derive_masks import otsu_threshold
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
        fg = obj > otsu_threshold(cv2.GaussianBlur(obj, (0, 0), 0.7).ravel())
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
        image, mask, bright, inverted, skipped = self._crop(path)
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

    def _crop(self, path: Path) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
        """(image, mask, bright objects?, inverted?, skipped counts) of one crop file."""
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
        return image, mask, bright, inverted, skipped


class CellCropDataset(CropDataset):
    """The crops of one cell laid out side by side on one canvas: one record per cell, one instance per crop.

    Classification by the whole cell needs what a single crop cannot give: lengths, areas and darkness
    relative to the cell's other chromosomes (the ``scale`` features) and the karyotype-level assignment.
    BioImLab crops come from one metaphase per cell at one magnification, so their relative sizes are real.
    Crops are placed in rows of ``per_row`` in file order with a ``gap`` of background between them (the
    canvas is the background of the dark-on-light crops, 1.0, or 0.0 with ``invert=False``); boxes and masks
    are exact. The sex is ``XY`` when the cell has a class-24 crop, ``XX`` when it has 46 crops and two X.
    Files whose names do not parse as BioImLab (``<cell> <class><a|b>``) are skipped and counted.

    Args:
        root, split, invert, **kw: as :class:`CropDataset` (split by cell).
        per_row: crops per row of the canvas.
        gap: background pixels around every crop.
    """

    source = "crops_cells"

    def __init__(self, root, split: str = "all", *, per_row: int = 12, gap: int = 8, **kw) -> None:
        if per_row < 1 or gap < 0:
            raise ValueError(f"per_row must be >= 1 and gap >= 0, got {per_row}, {gap}")
        self.per_row, self.gap = int(per_row), int(gap)
        super().__init__(root, split, **kw)

    def index(self) -> tuple[list[tuple[str, list[tuple[Path, int]]]], list[str]]:
        """Items are (cell, [(file, class id), ...]) with the cell's files in name order."""
        cells: dict[str, list[tuple[Path, int]]] = {}
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            parsed = parse_bioimlab_name(f.name)
            if parsed is None:
                self.skip(f, "file name is not '<cell> <class><a|b>' (BioImLab); crops_cells needs cells")
                continue
            cell = f.parent.name if f.parent != self.root else parsed[0]
            cells.setdefault(cell, []).append((f, parsed[1]))
        items = sorted(cells.items())
        return items, [c for c, _ in items]

    def load(self, item: tuple[str, list[tuple[Path, int]]]) -> KaryoRecord:
        cell, members = item
        crops = [self._crop(path) for path, _ in members]
        g = self.gap
        rows = [crops[i : i + self.per_row] for i in range(0, len(crops), self.per_row)]
        row_h = [max(c[0].shape[0] for c in row) + g for row in rows]
        width = max(sum(c[0].shape[1] + g for c in row) for row in rows) + g
        height = sum(row_h) + g
        inverted_any = any(c[3] for c in crops)
        background = 1.0 if (inverted_any or not any(c[2] for c in crops)) else 0.0
        image = np.full((height, width), background, np.float32)
        masks = np.zeros((len(crops), height, width), np.uint8)
        skipped: dict[str, int] = {}
        k, y = 0, g
        for row, h in zip(rows, row_h):
            x = g
            for crop, mask, _, _, sk in row:
                ch, cw = crop.shape
                image[y : y + ch, x : x + cw] = crop
                masks[k, y : y + ch, x : x + cw] = mask
                for key, v in sk.items():
                    skipped[key] = skipped.get(key, 0) + v
                x += cw + g
                k += 1
            y += h
        labels = np.array([cls for _, cls in members], np.int64)
        meta: dict[str, Any] = {
            "source": self.source,
            "image_id": cell,
            "path": str(members[0][0].parent),
            "group": cell,
            "files": [str(p) for p, _ in members],
            "polarity": "dark" if background == 1.0 else "bright",
            "inverted": inverted_any,
            "skipped": skipped,
        }
        if (labels == 24).any():
            meta["sex"] = "XY"
        elif len(labels) == 46 and int((labels == 23).sum()) == 2:
            meta["sex"] = "XX"
        return KaryoRecord(image=image, boxes=masks_to_boxes(masks), labels=labels, masks=masks, meta=meta)
