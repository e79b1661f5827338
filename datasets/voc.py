"""Pascal-VOC XML + images (CIL:54816 "24 chromosomes" and "single chromosomes" sets).

Layout::

    <root>/JEPG/<id>.jpg            (sic, as CIL ships it; JPEGImages/ and images/ are accepted too)
    <root>/annotations/<id>.xml     (or Annotations/)
    <root>/normal.csv, number_abnormalities.csv, structural_abnormalities.csv   (optional, CIL)

Each XML names its image (``<filename>``), its ``<size>`` and one ``<object>`` per chromosome with a
``<name>`` (CIL names A1..G22, X, Y, or anything :func:`karyogram.labels.id_of` accepts; "chromosome(s)"
means class-agnostic, label 0) and a ``<bndbox>`` (xmin, ymin, xmax, ymax, pixels). VOC boxes are inclusive
pixel indices; they are stored as given, like torchvision's VOC reference, and clipped to the image.
Masks are derived from the boxes (:mod:`datasets.derive_masks`) unless ``derive=False``.
"""

from __future__ import annotations

import csv
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from karyogram.labels import UnknownClassError, id_of

from .base import RecordDataset
from .derive_masks import CROSSING_RULES, box_margin, derive_masks
from .errors import AnnotationError
from .io import IMAGE_EXTENSIONS, read_image
from .record import KaryoRecord

IMAGE_DIRS = ("JEPG", "JPEGImages", "images", "Images", "JPEG")
ANNOTATION_DIRS = ("annotations", "Annotations")
#: object names meaning "a chromosome of unknown class" (CIL single-chromosome set)
AGNOSTIC_NAMES = frozenset({"chromosome", "chromosomes", "chr", "object"})


def parse_voc_xml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one VOC annotation file.

    Returns:
        dict with ``filename`` (str or None), ``size`` ((width, height) or None) and ``objects``: a list of
        ``(name, (xmin, ymin, xmax, ymax))`` with float coordinates (None for an object whose box is missing
        or not numeric).

    Raises:
        AnnotationError: the file is not well-formed XML or its root is not ``<annotation>``.
    """
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(p, f"malformed XML ({exc}); re-export it or remove it from the folder") from None
    except OSError as exc:
        raise AnnotationError(p, f"cannot read annotation file: {exc}") from None
    if root.tag != "annotation":
        raise AnnotationError(p, f"root element is <{root.tag}>, expected <annotation> (is this Pascal-VOC?)")
    size = None
    sw, sh = root.findtext("size/width"), root.findtext("size/height")
    try:
        if sw is not None and sh is not None:
            size = (int(float(sw)), int(float(sh)))
    except (ValueError, OverflowError):  # "abc", "nan", "inf", "1e400"
        size = None
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        box = None
        if bb is not None:
            try:
                box = tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                box = None
        objects.append((name, box))
    fn = root.findtext("filename")
    return {"filename": fn.strip() if fn else None, "size": size, "objects": objects}


def _read_karyotype_tables(root: Path) -> dict[str, dict[str, str]]:
    """CIL's per-image CSVs: {image file stem: {"chromosome_number": "47", "description": ..., "table": ...}}."""
    out: dict[str, dict[str, str]] = {}
    for table in ("normal", "number_abnormalities", "structural_abnormalities"):
        p = root / f"{table}.csv"
        if not p.is_file():
            continue
        try:
            with open(p, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            warnings.warn(f"{p}: cannot read ({exc}); karyotype metadata from it is ignored", stacklevel=2)
            continue
        for row in rows[1:]:
            if not row or not row[0].strip():
                continue
            stem = Path(row[0].strip()).stem
            entry = out.setdefault(stem, {})
            entry["table"] = table if "table" not in entry else entry["table"] + "+" + table
            if len(row) > 1 and row[1].strip():
                entry["chromosome_number"] = row[1].strip()
            if len(row) > 2 and row[2].strip():
                entry["description"] = row[2].strip()
    return out


class VOCDataset(RecordDataset):
    """Pascal-VOC chromosome dataset (CIL:54816): one record per image, boxes + (derived) masks.

    Args:
        root: the folder holding the image and annotation folders (see the module docstring).
        split: "train", "val", "test" or "all"; split by image.
        derive: derive masks from the boxes (:func:`datasets.derive_masks.derive_masks`); if False,
            ``masks`` is None (fast, e.g. for statistics).
        class_agnostic: set every label to 0 (one "chromosome" class).
        crossings: how derived masks share the pixels of crossing chromosomes: "nearest" (disjoint masks) or
            "axis" (the crossing goes to both); :func:`datasets.derive_masks.derive_masks`.
        **kw: passed to :class:`datasets.base.RecordDataset` (val_fraction, test_fraction, seed, transforms).

    Records: ``meta`` has source "voc", image_id (file stem), path, group (= image id), ``karyotype``
    (e.g. ``{"chromosome_number": "47", "description": "X", "table": "number_abnormalities"}``) when the
    CIL CSVs list the image, ``mask_fallbacks`` (boxes given an ellipse mask) when masks are derived.
    """

    source = "voc"

    def __init__(
        self,
        root,
        split: str = "all",
        *,
        derive: bool = True,
        class_agnostic: bool = False,
        crossings: str = "nearest",
        **kw,
    ) -> None:
        if crossings not in CROSSING_RULES:
            raise ValueError(f"VOCDataset: crossings must be one of {CROSSING_RULES}, got {crossings!r}")
        self.derive = derive
        self.crossings = crossings
        self.class_agnostic = class_agnostic
        self.derive_counts: Counter[str] = Counter()
        root_p = Path(root)
        self._karyotypes = _read_karyotype_tables(root_p) if root_p.is_dir() else {}
        super().__init__(root, split, **kw)

    def _find_dir(self, names: tuple[str, ...]) -> Path | None:
        for n in names:
            if (self.root / n).is_dir():
                return self.root / n
        return None

    def index(self) -> tuple[list[tuple[Path, Path]], list[str]]:
        """Pair every ``annotations/<id>.xml`` with ``<image dir>/<id>.<ext>`` (no XML parsing)."""
        ann_dir = self._find_dir(ANNOTATION_DIRS)
        img_dir = self._find_dir(IMAGE_DIRS)
        if ann_dir is None:
            raise AnnotationError(self.root, f"no annotation folder (expected one of {', '.join(ANNOTATION_DIRS)})")
        if img_dir is None:
            raise AnnotationError(self.root, f"no image folder (expected one of {', '.join(IMAGE_DIRS)})")
        images: dict[str, Path] = {}
        for p in sorted(img_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                images.setdefault(p.stem, p)
        items, groups = [], []
        for xml in sorted(ann_dir.glob("*.xml")):
            img = images.get(xml.stem)
            if img is None:
                self.skip(f"{xml} (no {img_dir}/{xml.stem}.*)", "annotation without an image file")
                continue
            items.append((img, xml))
            groups.append(xml.stem)
        return items, groups

    def load(self, item: tuple[Path, Path]) -> KaryoRecord:
        img_path, xml_path = item
        ann = parse_voc_xml(xml_path)
        image = read_image(img_path)
        h, w = image.shape
        if ann["size"] is not None and ann["size"] != (w, h):
            warnings.warn(
                f"{xml_path}: <size> says {ann['size'][0]}x{ann['size'][1]} but {img_path.name} is {w}x{h}; "
                "using the real image size",
                stacklevel=2,
            )
        if not ann["objects"]:
            warnings.warn(f"{xml_path}: no <object> in this annotation (a record with zero chromosomes)", stacklevel=2)
        boxes, labels = [], []
        skipped: Counter[str] = Counter()
        for name, box in ann["objects"]:
            if box is None:
                skipped["missing or non-numeric bndbox"] += 1
                self.skip(f"{xml_path} (object {name!r})", "missing or non-numeric bndbox")
                continue
            if name.lower() in AGNOSTIC_NAMES:
                label = 0
            else:
                try:
                    label = id_of(name)
                except UnknownClassError:
                    skipped["unknown class"] += 1
                    self.skip(f"{xml_path} (name {name!r})", "unknown class")
                    continue
            x1, y1, x2, y2 = box
            if not (x2 > x1 and y2 > y1):
                skipped["degenerate box"] += 1
                self.skip(f"{xml_path} (box {box} of {name!r})", "degenerate box")
                continue
            c = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
            if c != (x1, y1, x2, y2):
                if not (c[2] > c[0] and c[3] > c[1]):
                    skipped["box outside image"] += 1
                    self.skip(f"{xml_path} (box {box} of {name!r}, image {w}x{h})", "box outside image")
                    continue
                skipped["box clipped"] += 1
            boxes.append(c)
            labels.append(0 if self.class_agnostic else label)
        boxes_a = np.asarray(boxes, np.float32).reshape(-1, 4)
        masks = None
        meta: dict[str, Any] = {
            "source": self.source,
            "image_id": xml_path.stem,
            "path": str(img_path),
            "annotation": str(xml_path),
            "group": xml_path.stem,
            "skipped": dict(skipped),
        }
        if xml_path.stem in self._karyotypes:
            meta["karyotype"] = dict(self._karyotypes[xml_path.stem])
        if self.derive:
            st: dict[str, Any] = {}
            masks = derive_masks(image, boxes_a, crossings=self.crossings, stats=st)
            meta["mask_fallbacks"] = st["ellipse_fallback"]
            # the annotated boxes stand a few pixels outside the derived masks: transforms keep that margin
            meta["box_margin"] = box_margin(boxes_a, masks)
            self.derive_counts["ellipse_fallback"] += st["ellipse_fallback"]
            self.derive_counts["boxes"] += len(boxes_a)
        return KaryoRecord(
            image=image,
            boxes=boxes_a,
            labels=np.asarray(labels, np.int64),
            masks=masks,
            masks_derived=self.derive,
            meta=meta,
        )
