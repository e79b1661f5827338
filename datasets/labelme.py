"""LabelMe JSON polygons: :class:`LabelMeDataset`.

The root is a folder of LabelMe ``*.json`` files (searched recursively; a single file also works). Each
file has ``shapes`` (``label``, ``points`` [[x, y], ...] pixels, ``shape_type`` "polygon" or
"rectangle"; a missing shape_type means polygon), ``imagePath`` relative to the JSON file, and
optionally ``imageData`` (base64 image bytes) used when the image file is missing.

Labels map through :func:`karyogram.labels.id_of` ("1".."22", "X", "Y", "A1", "chr7", ...). The labels
in :data:`AGNOSTIC_LABELS` ("chromosome", "overlap", "cluster", an empty label, ...) mean "a chromosome
of unknown class" and give label 0 (class-agnostic training). Any other label is skipped with a counted
warning, as are other shape types (circle, line, point) and polygons of fewer than 3 points.

Overlapping chromosomes: every polygon is its own instance, so pixels where two chromosomes cross
belong to both masks. Polygons are rasterised with ``cv2.fillPoly`` at rounded pixel coordinates;
rectangles become filled boxes and flag the record ``masks_derived=True``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from karyogram.labels import UnknownClassError, id_of

from .base import RecordDataset
from .coco import load_json
from .errors import AnnotationError, ImageReadError
from .io import read_image, to_grey_float
from .record import KaryoRecord, masks_to_boxes

#: LabelMe labels that mean "a chromosome of unknown class" (label 0), compared case-insensitively
AGNOSTIC_LABELS = frozenset(
    {"", "chromosome", "chromosomes", "chr", "overlap", "overlapping", "cluster", "unknown", "?"}
)

_SUPPORTED_SHAPES = ("polygon", "rectangle")


def _points(v: Any, path: Path, where: str) -> np.ndarray:
    if not isinstance(v, list) or not all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in p)
        for p in v
    ):
        raise AnnotationError(path, f"{where}: 'points' must be a list of [x, y] number pairs")
    try:
        pts = np.asarray(v, np.float64).reshape(-1, 2)
    except OverflowError:  # an integer beyond float range
        pts = np.full((1, 2), np.inf)
    if not np.isfinite(pts).all():
        raise AnnotationError(path, f"{where}: 'points' contain NaN or infinite values")
    return pts


def label_to_id(label: str) -> int | None:
    """Class id of a LabelMe label: 1..24, 0 for an agnostic label, None for anything else.

    >>> [label_to_id(n) for n in ("7", "Y", "overlap", "", "nucleus")]
    [7, 24, 0, 0, None]
    """
    key = str(label).strip().lower()
    if key in AGNOSTIC_LABELS:
        return 0
    try:
        return id_of(key)
    except UnknownClassError:
        return None


class LabelMeDataset(RecordDataset):
    """Chromosome instances from LabelMe polygon files.

    Args:
        root: a folder of LabelMe ``*.json`` files (recursive) or one such file.
        split, val_fraction, test_fraction, seed, transforms: as in :class:`~datasets.base.RecordDataset`.

    The split group is the JSON file's path relative to the root, without extension. Records carry
    ``meta``: ``source="labelme"``, ``image_id`` (that same relative stem), ``path`` (image file, or the
    JSON when the image came from ``imageData``), ``annotation`` (the JSON file), ``skipped``.
    """

    source = "labelme"

    def __init__(self, root: str | os.PathLike, split: str = "all", **kwargs: Any) -> None:
        self._load_warned: set[str] = set()
        super().__init__(root, split, **kwargs)

    def _files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        return sorted(
            p for p in self.root.rglob("*.json") if p.is_file() and not any(s.startswith(".") for s in p.parts)
        )

    def _parse(self, path: Path) -> dict[str, Any]:
        """Validate one LabelMe file; returns its shapes (label id, kind, points) and image location."""
        data = load_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(path, f"a LabelMe file must hold a JSON object, got {type(data).__name__}")
        if "shapes" not in data:
            raise AnnotationError(path, "missing key 'shapes' (is this a LabelMe file?)")
        shapes = data["shapes"]
        if not isinstance(shapes, list):
            raise AnnotationError(path, f"'shapes' must be a list, got {type(shapes).__name__}")
        image_path = data.get("imagePath")
        if image_path is not None and not isinstance(image_path, str):
            raise AnnotationError(path, f"'imagePath' must be a string, got {type(image_path).__name__}")
        has_data = isinstance(data.get("imageData"), str) and len(data["imageData"]) > 0
        img_file = None
        if image_path:
            rel = Path(image_path.replace("\\", "/"))
            for cand in (path.parent / rel, path.parent / rel.name):
                if cand.is_file():
                    img_file = cand
                    break
        if img_file is None and not has_data:
            raise FileNotFoundError(image_path or "(no imagePath)")
        size = None
        if isinstance(data.get("imageHeight"), int) and isinstance(data.get("imageWidth"), int):
            size = (data["imageHeight"], data["imageWidth"])

        out: list[tuple[int, str, np.ndarray]] = []
        unknown: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        for i, s in enumerate(shapes):
            where = f"shapes[{i}]"
            if not isinstance(s, dict) or "points" not in s:
                raise AnnotationError(path, f"{where} must be an object with 'label' and 'points'")
            label = s.get("label", "")
            if label is None:
                label = ""
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise AnnotationError(path, f"{where}: 'label' must be a string, got {label!r}")
            kind = s.get("shape_type") or "polygon"
            pts = _points(s["points"], path, where)
            if kind not in _SUPPORTED_SHAPES:
                reasons[f"unsupported shape_type {kind!r}"] += 1
                continue
            cid = label_to_id(str(label))
            if cid is None:
                unknown[str(label)] += 1
                continue
            if kind == "polygon" and len(pts) < 3:
                reasons["polygon with fewer than 3 points"] += 1
                continue
            if kind == "rectangle":
                if len(pts) != 2:
                    raise AnnotationError(path, f"{where}: a rectangle needs 2 points, got {len(pts)}")
                (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
                if x2 <= x1 or y2 <= y1:
                    reasons["degenerate rectangle"] += 1
                    continue
            out.append((cid, kind, pts))
        for lab, n in sorted(unknown.items()):
            self.skip(path, f"unknown label {lab!r}", n)
        for reason, n in reasons.items():
            self.skip(path, reason, n)
        return {"shapes": out, "image_file": img_file, "size": size}

    def index(self) -> tuple[list[dict[str, Any]], list[str]]:
        items, groups = [], []
        missing: list[str] = []
        base = self.root if self.root.is_dir() else self.root.parent
        for f in self._files():
            try:
                parsed = self._parse(f)
            except FileNotFoundError as exc:
                missing.append(f"{f.name} -> {exc}")
                continue
            stem = f.relative_to(base).with_suffix("").as_posix()
            items.append({"json": f, "id": stem, **parsed})
            groups.append(stem)
        if missing:
            shown = "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            self.skip(self.root, f"image missing and no imageData ({shown})", len(missing))
        return items, groups

    def _read_image(self, item: dict[str, Any]) -> tuple[np.ndarray, Path]:
        if item["image_file"] is not None:
            return read_image(item["image_file"]), item["image_file"]
        path = item["json"]
        data = load_json(path)
        try:
            raw = base64.b64decode(data["imageData"], validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ImageReadError(path, f"imageData is not valid base64: {exc}") from None
        try:
            arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
        except cv2.error:  # e.g. a header claiming more pixels than OpenCV accepts
            arr = None
        if arr is None:
            raise ImageReadError(path, "imageData does not decode to an image")
        if arr.ndim == 3 and arr.shape[2] >= 3:
            arr = arr[..., [2, 1, 0]] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]
        return to_grey_float(arr, path), path

    def load(self, item: dict[str, Any]) -> KaryoRecord:
        path = item["json"]
        image, img_path = self._read_image(item)
        h, w = image.shape
        if item["size"] is not None and item["size"] != (h, w):
            raise AnnotationError(
                path, f"imageHeight/imageWidth {item['size'][0]}x{item['size'][1]} do not match the image ({h}x{w})"
            )
        masks, labels = [], []
        derived = False
        local: Counter[str] = Counter()
        lim = 4 * max(h, w) + 64  # cv2.fillPoly near INT32_MIN takes tens of seconds
        for cid, kind, pts in item["shapes"]:
            if np.abs(pts).max() > lim:
                raise AnnotationError(path, f"{kind} points lie far outside the {w}x{h} image (|x| or |y| > {lim})")
            m = np.zeros((h, w), np.uint8)
            if kind == "rectangle":
                (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
                xa, ya = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
                xb, yb = min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2)))
                m[ya:yb, xa:xb] = 1
            else:
                cv2.fillPoly(m, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], 1)
            if not m.any():
                local["shape outside the image"] += 1
                continue
            derived |= kind == "rectangle"
            masks.append(m)
            labels.append(cid)
        if local and item["id"] not in self._load_warned:
            for reason, n in local.items():
                self.skip(path, reason, n)
        self._load_warned.add(item["id"])
        n = len(labels)
        mk = np.asarray(masks, np.uint8).reshape(n, h, w)
        return KaryoRecord(
            image=image,
            boxes=masks_to_boxes(mk),
            labels=np.asarray(labels, np.int64),
            masks=mk,
            masks_derived=derived,
            meta={
                "source": self.source,
                "image_id": item["id"],
                "path": str(img_path),
                "annotation": str(path),
                "group": item["id"],
                "skipped": dict(local),
            },
        )


__all__ = ["AGNOSTIC_LABELS", "LabelMeDataset", "label_to_id"]
