"""YOLO detection / segmentation labels with a ``data.yaml``: :class:`YOLODataset`.

Layout (Ultralytics standard)::

    root/data.yaml                  names: [...] or {0: name, ...}; optional path/train/val/test
    root/images/<split>/x.jpg  <->  root/labels/<split>/x.txt       (or flat images/ + labels/)

A label file holds one instance per line, all coordinates normalised to [0, 1] by the image size:

* ``cls cx cy w h``: a box; its mask is the filled box and the record is flagged ``masks_derived=True``;
* ``cls x1 y1 x2 y2 x3 y3 ...``: a polygon (3 points or more), rasterised with ``cv2.fillPoly``.

Class indices map to chromosomes **by name**: ``index -> names[index] -> id_of(name)``. Exports that
sort the names as strings ('1', '10', '11', ..., '19', '2', '20', '21', '22', '3', ..., '9', 'X', 'Y')
therefore load correctly (index 1 is chromosome 10, index 21 is chromosome 9). The name "chromosome"
gives label 0 (class-agnostic).

Skipped with a counted warning (:meth:`RecordDataset.skip`, naming the file and the line): class
indices outside ``names`` or naming no chromosome, malformed lines, and boxes or polygons that are
degenerate once clipped to [0, 1]. An image without a label file has no instances (with a warning).
A missing or malformed ``data.yaml`` or an unreadable label file raises :class:`AnnotationError`.

Splits: with ``use_yaml_splits=True`` (default) and ``split`` "train", "val" or "test", the images are
those of that entry of ``data.yaml`` (a folder, a list of folders or a ``.txt`` list of images). With
``use_yaml_splits=False``, or when ``data.yaml`` names no split at all, every image under
``root/images`` is split by a seeded hash of its path (see :mod:`datasets.splits`).
"""

from __future__ import annotations

import os
import reprlib  # YAML aliases can make a small file print as gigabytes
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from karyogram.labels import UnknownClassError, id_of

from .base import RecordDataset
from .errors import AnnotationError, DataError
from .io import IMAGE_EXTENSIONS, read_image
from .record import KaryoRecord, boxes_to_masks, masks_to_boxes

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
YOLO_SPLITS = ("train", "val", "test")
_AGNOSTIC = frozenset({"chromosome", "chromosomes"})


def find_yaml(root: str | os.PathLike) -> Path:
    """The ``data.yaml`` of a YOLO root (the file itself, a standard name, or the folder's only ``*.yaml``)."""
    r = Path(root)
    if r.is_file():
        return r
    for n in YAML_NAMES:
        if (r / n).is_file():
            return r / n
    ys = sorted([*r.glob("*.yaml"), *r.glob("*.yml")])
    if len(ys) == 1:
        return ys[0]
    if ys:
        raise DataError(r, f"several YAML files ({', '.join(p.name for p in ys)}): pass the one to use as root")
    raise AnnotationError(r / "data.yaml", "YOLO data.yaml not found (it must list the class names)")


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse data.yaml; :class:`AnnotationError` naming the file when it is empty or invalid."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not a UTF-8 text file ({exc.reason})") from None
    if not text.strip():
        raise AnnotationError(path, "file is empty (expected YAML with 'names')")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AnnotationError(path, f"invalid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise AnnotationError(path, f"must be a YAML mapping with 'names', got {type(data).__name__}")
    return data


def parse_names(data: dict[str, Any], path: Path) -> list[str]:
    """Class names by index from data.yaml's ``names`` (a list, or a dict {index: name})."""
    if "names" not in data:
        raise AnnotationError(path, "missing key 'names' (the class names by index)")
    names = data["names"]
    if isinstance(names, dict):
        try:
            table = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise AnnotationError(path, f"'names' keys must be class indices 0..n-1, got {list(names)!r}") from None
        if sorted(table) != list(range(len(table))):
            raise AnnotationError(path, f"'names' keys must be 0..{len(table) - 1}, got {sorted(table)}")
        names = [table[i] for i in range(len(table))]
    if not isinstance(names, list) or not names:
        raise AnnotationError(path, f"'names' must be a non-empty list or dict, got {names!r}")
    if not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
        raise AnnotationError(path, "'names' entries must be strings")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise AnnotationError(path, f"nc={reprlib.repr(nc)[:200]} but 'names' has {len(names)} entries")
    return [str(n) for n in names]


def name_to_id(name: str) -> int | None:
    """Class id of a YOLO class name: 1..24, 0 for "chromosome", None when it names no chromosome.

    >>> [name_to_id(n) for n in ("10", "X", "A3", "chromosome", "junk")]
    [10, 23, 3, 0, None]
    """
    if name.strip().lower() in _AGNOSTIC:
        return 0
    try:
        return id_of(name)
    except UnknownClassError:
        return None


def label_path_of(image: Path) -> Path:
    """``.../images/<sub>/x.jpg`` -> ``.../labels/<sub>/x.txt`` (last ``images`` folder), else ``x.txt`` beside it."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


class YOLODataset(RecordDataset):
    """Chromosome instances from YOLO txt labels (boxes or polygons) and a ``data.yaml``.

    Args:
        root: the dataset folder holding ``data.yaml`` (or the YAML file itself).
        split, val_fraction, test_fraction, seed, transforms: as in :class:`~datasets.base.RecordDataset`.
        use_yaml_splits: take "train"/"val"/"test" from the folders data.yaml lists (see the module
            docstring); False splits all images by hash.

    Attributes:
        names: class names by index from data.yaml; ``class_ids``: their class ids (None = skipped).

    Records carry ``meta``: ``source="yolo"``, ``image_id`` (image path relative to the root, without
    extension), ``path``, ``annotation`` (label file or None), ``group``, ``skipped``.
    """

    source = "yolo"

    def __init__(
        self, root: str | os.PathLike, split: str = "all", *, use_yaml_splits: bool = True, **kwargs: Any
    ) -> None:
        r = Path(root)
        if not r.exists():
            raise DataError(r, "yolo dataset root does not exist")
        self.yaml_path = find_yaml(r)
        self.base_dir = self.yaml_path.parent
        self.yaml = read_yaml(self.yaml_path)
        self.names = parse_names(self.yaml, self.yaml_path)
        self.class_ids = [name_to_id(n) for n in self.names]
        bad = [f"{i}:{n!r}" for i, n, c in zip(range(len(self.names)), self.names, self.class_ids) if c is None]
        if bad:
            warnings.warn(
                f"{self.yaml_path}: class names that are no chromosome, their instances will be skipped: {', '.join(bad)}",
                stacklevel=2,
            )
        listed = [s for s in YOLO_SPLITS if self.yaml.get(s)]
        self._yaml_split: str | None = None
        if use_yaml_splits and split in YOLO_SPLITS and listed:
            if split not in listed:
                raise DataError(
                    self.yaml_path,
                    f"data.yaml lists no {split!r} images (it has {', '.join(listed)}); "
                    "use one of those or use_yaml_splits=False for a hash split",
                )
            self._yaml_split = split
        super().__init__(self.base_dir, "all" if self._yaml_split else split, **kwargs)
        self.split = split

    # ------------------------------------------------------------------ index
    def _resolve_entry(self, entry: str) -> Path:
        base = self.base_dir
        p = self.yaml.get("path")
        if isinstance(p, str) and p:
            bp = Path(p)
            bp = bp if bp.is_absolute() else self.base_dir / bp
            if bp.exists():
                base = bp
        e = Path(entry)
        cands = [e] if e.is_absolute() else [base / e, self.base_dir / e]
        if not e.is_absolute():
            stripped = Path(*[s for s in e.parts if s not in ("..", ".")]) if e.parts else e
            cands.append(self.base_dir / stripped)  # Roboflow exports say ../train/images
        for c in cands:
            if c.exists():
                return c
        raise DataError(self.yaml_path, f"split entry {entry!r} not found (tried {', '.join(map(str, cands))})")

    def _split_images(self, split: str) -> list[Path]:
        entries = self.yaml[split]
        entries = [entries] if isinstance(entries, str) else entries
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise AnnotationError(
                self.yaml_path, f"{split!r} must be a path or a list of paths, got {reprlib.repr(entries)[:200]}"
            )
        out: list[Path] = []
        for e in entries:
            p = self._resolve_entry(e)
            if p.is_dir():
                out += _images_under(p)
            else:  # a .txt list of image paths
                try:
                    lines = p.read_text(encoding="utf-8").splitlines()
                except (UnicodeDecodeError, OSError) as exc:
                    raise AnnotationError(
                        p, f"{split!r} entry {e!r} is neither a folder nor a text list of images: {exc}"
                    ) from None
                for line in lines:
                    if line.strip():
                        q = Path(line.strip())
                        out.append(q if q.is_absolute() else (p.parent / q))
        others = [s for s in YOLO_SPLITS if s != split and self.yaml.get(s)]
        for s in others:
            if self.yaml[s] == self.yaml[split]:
                warnings.warn(
                    f"{self.yaml_path}: {split!r} and {s!r} list the same images; the split is not independent",
                    stacklevel=3,
                )
        return out

    def _parse_labels(self, path: Path) -> list[tuple[int, str, np.ndarray]]:
        """One label file -> [(class id, "box"|"polygon", normalised coords)], counting what it skips."""
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise AnnotationError(path, f"not a UTF-8 text label file ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise AnnotationError(path, f"cannot read label file: {exc.strerror}") from None
        out: list[tuple[int, str, np.ndarray]] = []
        reasons: Counter[str] = Counter()
        for lineno, line in enumerate(text.splitlines(), start=1):
            tok = line.split()
            if not tok:
                continue
            try:
                vals = np.array([float(t) for t in tok], np.float64)
            except ValueError:
                self.skip(path, f"malformed line {lineno}: non-numeric value in {line.strip()[:60]!r}")
                continue
            n = len(vals)
            if not np.isfinite(vals).all() or vals[0] < 0 or vals[0] != int(vals[0]):
                self.skip(path, f"malformed line {lineno}: class must be a non-negative integer, values finite")
                continue
            if not (n == 5 or (n >= 7 and n % 2 == 1)):
                self.skip(
                    path,
                    f"malformed line {lineno}: {n} values (expected 'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...')",
                )
                continue
            k = int(vals[0])
            if k >= len(self.names):
                reasons[f"class index {k} outside names (0..{len(self.names) - 1})"] += 1
                continue
            cid = self.class_ids[k]
            if cid is None:
                reasons[f"class {k} ({self.names[k]!r}) is not a chromosome"] += 1
                continue
            if n == 5:
                cx, cy, w, h = vals[1:]
                box = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0.0, 1.0)
                if w <= 0 or h <= 0 or box[2] <= box[0] or box[3] <= box[1]:
                    reasons["degenerate box (empty once clipped to the image)"] += 1
                    continue
                out.append((cid, "box", box))
            else:
                xy = np.clip(vals[1:].reshape(-1, 2), 0.0, 1.0)
                if _shoelace(xy) <= 1e-12:
                    reasons["degenerate polygon (zero area once clipped to the image)"] += 1
                    continue
                out.append((cid, "polygon", xy))
        for reason, n in reasons.items():
            self.skip(path, reason, n)
        return out

    def index(self) -> tuple[list[dict[str, Any]], list[str]]:
        if self._yaml_split is not None:
            images = self._split_images(self._yaml_split)
        elif (self.base_dir / "images").is_dir():
            images = _images_under(self.base_dir / "images")
        else:
            listed = [s for s in YOLO_SPLITS if self.yaml.get(s)]
            images = sorted({p for s in listed for p in self._split_images(s)})
        items, groups, no_label, gone = [], [], [], []
        for img in images:
            if not img.is_file():
                gone.append(str(img))
                continue
            lp = label_path_of(img)
            if lp.is_file():
                shapes = self._parse_labels(lp)
            else:
                no_label.append(img.name)
                shapes, lp = [], None
            try:
                rid = img.relative_to(self.base_dir).with_suffix("").as_posix()
            except ValueError:
                rid = img.with_suffix("").as_posix()
            items.append({"image": img, "labels": lp, "shapes": shapes, "id": rid})
            groups.append(rid)
        if gone:
            self.skip(self.yaml_path, f"listed image missing on disk ({', '.join(gone[:5])})", len(gone))
        if no_label:
            shown = ", ".join(no_label[:5]) + (" ..." if len(no_label) > 5 else "")
            warnings.warn(
                f"{self.base_dir}: {len(no_label)} image(s) without a label file, loaded with no chromosomes: {shown}",
                stacklevel=3,
            )
        self.images_without_labels = len(no_label)
        return items, groups

    # ------------------------------------------------------------------ load
    def load(self, item: dict[str, Any]) -> KaryoRecord:
        image = read_image(item["image"])
        h, w = image.shape
        scale = np.array([w, h], np.float64)
        boxes, masks, labels = [], [], []
        derived = False
        for cid, kind, coords in item["shapes"]:
            if kind == "box":
                box = (coords.reshape(2, 2) * scale).reshape(4).astype(np.float32)
                if not (box[2] > box[0] and box[3] > box[1]):
                    continue  # narrower than float32 resolution: nothing to draw
                m = boxes_to_masks(box[None], h, w)[0]
                derived = True
            else:
                m = np.zeros((h, w), np.uint8)
                cv2.fillPoly(m, [np.round(coords * scale).astype(np.int32).reshape(-1, 1, 2)], 1)
                if not m.any():
                    continue
                box = masks_to_boxes(m[None])[0]
            boxes.append(box)
            masks.append(m)
            labels.append(cid)
        n = len(labels)
        return KaryoRecord(
            image=image,
            boxes=np.asarray(boxes, np.float32).reshape(n, 4),
            labels=np.asarray(labels, np.int64),
            masks=np.asarray(masks, np.uint8).reshape(n, h, w),
            masks_derived=derived,
            meta={
                "source": self.source,
                "image_id": item["id"],
                "path": str(item["image"]),
                "annotation": None if item["labels"] is None else str(item["labels"]),
                "group": item["id"],
            },
        )


__all__ = ["YOLODataset", "find_yaml", "label_path_of", "name_to_id", "parse_names", "read_yaml"]
