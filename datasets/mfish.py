"""ADIR / PSI M-FISH image set #1: DAPI images with per-pixel chromosome class maps.

Layout::

    <root>/<slide>__<karyotype code>/<slide><nn><code>D.tif   DAPI plane, 8-bit grey (fluorescence)
    <root>/<slide>__<karyotype code>/<slide><nn><code>K.tif   class map: 0 background, 1-22, 23 X, 24 Y,
                                                              255 (= -1) overlap of two chromosomes
    <root>/README.TXT   (licence notice; must travel with every copy)

Instances are the 8-connected components of each class. Overlap pixels (255) belong to *every*
chromosome they touch: each connected blob of overlap pixels is added to every component that touches
it (dilation by one pixel), so the masks of two crossing chromosomes share the crossing. Touching homologues
of one class merge into one component (the map cannot separate them). Components smaller than ``min_area``
pixels are dropped and counted.

DAPI is bright chromosomes on a dark background. With ``invert=True`` (the default) the image is inverted
to dark-on-light like the G-banded images the rest of the pipeline expects; ``meta["polarity"]`` says what the
record's image is ("dark" objects after inversion, "bright" without) and ``meta["inverted"]`` whether it
was inverted. DAPI shows no G-bands, so these images teach shape and segmentation, not banding.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from karyogram.labels import NUM_CLASSES

from .base import RecordDataset
from .errors import ImageReadError
from .io import read_image
from .record import KaryoRecord, masks_to_boxes

OVERLAP = 255


def read_label_map(path: str | Path) -> np.ndarray:
    """Read an M-FISH ``…K.tif`` class map as uint8 [H, W] (0, 1..24, 255 overlap; -1 is mapped to 255).

    Raises:
        ImageReadError: the file is missing, empty, unreadable, or its channels disagree.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise ImageReadError(p, "label map file is missing or empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:  # e.g. a header claiming more pixels than OpenCV accepts; tifffile decides below
            arr = None
    if arr is None:
        try:
            import tifffile

            arr = tifffile.imread(str(p))
        except Exception as exc:
            raise ImageReadError(p, f"not a readable label map (truncated or corrupt?): {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[2], 3))):
            raise ImageReadError(p, "label map has differing colour channels; expected one class id per pixel")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ImageReadError(p, f"label map has shape {arr.shape}, expected [H, W]")
    if np.issubdtype(arr.dtype, np.signedinteger):
        arr = np.where(arr < 0, OVERLAP, arr)
    if arr.max() > NUM_CLASSES and not np.all((arr <= NUM_CLASSES) | (arr == OVERLAP)):
        bad = sorted(set(np.unique(arr[(arr > NUM_CLASSES) & (arr != OVERLAP)]).tolist()))[:5]
        raise ImageReadError(p, f"label map has values {bad} outside 0..{NUM_CLASSES} and {OVERLAP}")
    return arr.astype(np.uint8)


def instances_from_label_map(label_map: np.ndarray, *, min_area: int = 20) -> tuple[np.ndarray, np.ndarray, int]:
    """Chromosome instances of a class map (rule in the module docstring).

    Args:
        label_map: uint8 [H, W], 0 background, 1..24 classes, 255 overlap.
        min_area: components with fewer pixels (before adding overlap pixels) are dropped.

    Returns:
        (masks uint8 [N, H, W], labels int64 [N], number of dropped small components).

    >>> m = np.zeros((5, 7), np.uint8); m[2, 0:3] = 1; m[2, 3] = 255; m[2, 4:7] = 2
    >>> masks, labels, dropped = instances_from_label_map(m, min_area=1)
    >>> labels.tolist(), masks.sum((1, 2)).tolist(), int(masks[:, 2, 3].sum()), dropped
    ([1, 2], [4, 4], 2, 0)
    """
    lm = np.asarray(label_map)
    h, w = lm.shape
    overlap = (lm == OVERLAP).astype(np.uint8)
    n_ov, ov_lab = cv2.connectedComponents(overlap, connectivity=8) if overlap.any() else (1, None)
    kernel = np.ones((3, 3), np.uint8)
    masks, labels = [], []
    dropped = 0
    for c in range(1, NUM_CLASSES + 1):
        cls = (lm == c).astype(np.uint8)
        if not cls.any():
            continue
        n, lab, st, _ = cv2.connectedComponentsWithStats(cls, connectivity=8)
        for k in range(1, n):
            if st[k, cv2.CC_STAT_AREA] < min_area:
                dropped += 1
                continue
            m = (lab == k).astype(np.uint8)
            if ov_lab is not None:
                x, y, bw, bh = st[k, :4]
                ya, yb, xa, xb = max(0, y - 1), min(h, y + bh + 1), max(0, x - 1), min(w, x + bw + 1)
                ring = cv2.dilate(m[ya:yb, xa:xb], kernel).astype(bool)
                touched = np.unique(ov_lab[ya:yb, xa:xb][ring])
                touched = touched[touched > 0]
                if len(touched):
                    m[np.isin(ov_lab, touched)] = 1
            masks.append(m)
            labels.append(c)
    if not masks:
        return np.zeros((0, h, w), np.uint8), np.zeros(0, np.int64), dropped
    return np.stack(masks), np.asarray(labels, np.int64), dropped


class MFISHDataset(RecordDataset):
    """ADIR M-FISH DAPI images with chromosome instance masks and 24-class labels.

    Args:
        root: the folder of ``<slide>__<code>/`` subfolders.
        split: "train", "val", "test" or "all"; split by slide (the folder's first three characters, e.g. "A01").
        invert: invert the DAPI image to dark chromosomes on a light background (default True).
        min_area: drop instance components smaller than this many pixels (counted in ``skipped``).
        **kw: passed to :class:`datasets.base.RecordDataset`.

    Records: exact (annotated) masks, ``meta`` with source "mfish", image_id, path, label_path, group
    (slide), karyotype (the two-character code, e.g. "XY", "21"), sex ("XY"/"XX" for the normal codes),
    polarity, inverted, skipped.
    """

    source = "mfish"

    def __init__(self, root, split: str = "all", *, invert: bool = True, min_area: int = 20, **kw) -> None:
        self.invert = invert
        self.min_area = min_area
        super().__init__(root, split, **kw)

    def index(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        """Pair each ``…D.tif`` with its ``…K.tif``; unreadable or unpaired files are skipped and counted."""
        items, groups = [], []
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders and any(self.root.glob("*K.tif")):
            folders = [self.root]
        for folder in folders:
            for d in sorted(folder.glob("*D.tif")):
                k = d.with_name(d.name[:-5] + "K.tif")
                if not k.is_file():
                    self.skip(f"{d} (expected {k.name})", "no …K.tif class map beside the DAPI image")
                    continue
                bad = None
                for f in (d, k):
                    if f.stat().st_size == 0:
                        bad = (f, "empty image file")
                        break
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            ok = cv2.imdecode(np.fromfile(str(f), np.uint8), cv2.IMREAD_UNCHANGED) is not None
                        except cv2.error:  # e.g. a header claiming more pixels than OpenCV accepts
                            ok = False
                    if not ok:
                        bad = (f, "unreadable image (truncated or corrupt)")
                        break
                if bad:
                    self.skip(*bad)
                    continue
                items.append((d, k))
                groups.append(folder.name[:3])
        return items, groups

    def load(self, item: tuple[Path, Path]) -> KaryoRecord:
        d_path, k_path = item
        image = read_image(d_path)
        lm = read_label_map(k_path)
        if lm.shape != image.shape:
            raise ImageReadError(
                k_path,
                f"class map is {lm.shape[1]}x{lm.shape[0]} but {d_path.name} is {image.shape[1]}x{image.shape[0]}",
            )
        masks, labels, dropped = instances_from_label_map(lm, min_area=self.min_area)
        skipped: dict[str, Any] = {}
        if dropped:
            skipped["small component"] = dropped
            self.skip(k_path, f"component smaller than {self.min_area} px", dropped)
        if self.invert:
            image = 1.0 - image
        folder = d_path.parent.name
        code = folder[-2:] if "__" in folder else d_path.name[5:7]
        meta = {
            "source": self.source,
            "image_id": d_path.name[:-5],
            "path": str(d_path),
            "label_path": str(k_path),
            "group": folder[:3],
            "karyotype": code,
            "polarity": "dark" if self.invert else "bright",
            "inverted": self.invert,
            "stain": "DAPI",
            "skipped": skipped,
        }
        if code in ("XY", "XX"):
            meta["sex"] = code
        return KaryoRecord(image=image, boxes=masks_to_boxes(masks), labels=labels, masks=masks, meta=meta)
