"""The one record type that carries a metaphase image and its chromosome instances through the pipeline.

Loaders, the synthetic generator and the segmentation model all produce a :class:`KaryoRecord`, so every
later stage (features, classifier, karyotype assignment, metrics, rendering) works on real data,
synthetic data and predictions alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from karyogram.labels import NUM_CLASSES

from .errors import AnnotationError


@dataclass
class KaryoRecord:
    """A metaphase image and its N chromosome instances.

    Attributes:
        image: grey image, float32 [H, W], values in [0, 1] (chromosomes dark on light for G-banding;
            fluorescence images are kept as they are and flagged by ``meta["polarity"] = "bright"``).
        boxes: float32 [N, 4], ``x1, y1, x2, y2`` in pixels (x2 > x1, y2 > y1), inside the image.
        labels: int64 [N], 1..22 autosomes, 23 = X, 24 = Y, 0 = unknown / class-agnostic.
        masks: uint8 [N, H, W] in {0, 1}, or None when the source has boxes only and no mask was derived.
        masks_derived: True when the masks were derived from boxes (not annotated pixel masks).
        centromeres: float32 [N, 2] ``(x, y)`` pixels, NaN rows where unknown; None if the source has none.
        p_dir: float32 [N, 2] unit vector ``(dx, dy)`` from the centromere towards the end of the p arm,
            NaN rows where unknown; None if the source has none.
        scores: float32 [N] detection scores for predictions; None for ground truth.
        meta: free metadata. Keys used by the project: ``source`` (loader name), ``image_id`` (str),
            ``path`` (image file), ``karyotype`` (ISCN string when known), ``sex`` ("XX"/"XY"/...),
            ``group`` (slide or cell the image belongs to, for splitting), ``skipped`` (counts of
            instances a loader skipped, by reason).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    masks_derived: bool = False
    centromeres: np.ndarray | None = None
    p_dir: np.ndarray | None = None
    scores: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=np.uint8)
            if self.masks.ndim == 2 and len(self.labels) == 0:
                self.masks = self.masks.reshape(0, *self.image.shape[:2])
        for name in ("centromeres", "p_dir"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, np.asarray(v, dtype=np.float32).reshape(-1, 2))
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def image_id(self) -> str:
        return str(self.meta.get("image_id", ""))

    def validate(self) -> KaryoRecord:
        """Check shapes, dtypes and value ranges; raise :class:`AnnotationError` naming the record's path."""
        path = self.meta.get("path")
        n = len(self)
        if self.image.ndim != 2:
            raise AnnotationError(path, f"image must be 2-D grey [H, W], got shape {self.image.shape}")
        if self.boxes.shape != (n, 4):
            raise AnnotationError(path, f"boxes shape {self.boxes.shape} does not match {n} labels")
        if n and not np.all((self.labels >= 0) & (self.labels <= NUM_CLASSES)):
            bad = sorted(set(self.labels[(self.labels < 0) | (self.labels > NUM_CLASSES)].tolist()))
            raise AnnotationError(path, f"labels {bad} outside 0..{NUM_CLASSES}")
        if n and not np.all((self.boxes[:, 2] > self.boxes[:, 0]) & (self.boxes[:, 3] > self.boxes[:, 1])):
            raise AnnotationError(path, "degenerate box (x2 <= x1 or y2 <= y1)")
        if self.masks is not None and self.masks.shape != (n, self.height, self.width):
            raise AnnotationError(path, f"masks shape {self.masks.shape} != {(n, self.height, self.width)}")
        for name in ("centromeres", "p_dir"):
            v = getattr(self, name)
            if v is not None and v.shape != (n, 2):
                raise AnnotationError(path, f"{name} shape {v.shape} != {(n, 2)}")
        if self.scores is not None and self.scores.shape != (n,):
            raise AnnotationError(path, f"scores shape {self.scores.shape} != {(n,)}")
        return self

    # ------------------------------------------------------------------ editing
    def select(self, keep: np.ndarray | list[int] | list[bool]) -> KaryoRecord:
        """A new record with only the instances in ``keep`` (indices or a boolean mask)."""
        k = np.asarray(keep)
        if k.dtype != np.bool_:
            k = k.astype(np.int64)

        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[k]

        return replace(
            self,
            boxes=self.boxes[k],
            labels=self.labels[k],
            masks=sub(self.masks),
            centromeres=sub(self.centromeres),
            p_dir=sub(self.p_dir),
            scores=sub(self.scores),
            meta=dict(self.meta),
        )

    def copy(self) -> KaryoRecord:
        def c(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a.copy()

        return replace(
            self,
            image=self.image.copy(),
            boxes=self.boxes.copy(),
            labels=self.labels.copy(),
            masks=c(self.masks),
            centromeres=c(self.centromeres),
            p_dir=c(self.p_dir),
            scores=c(self.scores),
            meta=dict(self.meta),
        )

    def boxes_from_masks(self) -> np.ndarray:
        """Tight xyxy boxes [N, 4] of the masks (x2/y2 exclusive, i.e. last pixel + 1)."""
        if self.masks is None:
            raise AnnotationError(self.meta.get("path"), "record has no masks")
        return masks_to_boxes(self.masks)

    def label_map(self) -> np.ndarray:
        """Instance label map int32 [H, W]: 0 background, i+1 for instance i (later instances win overlaps)."""
        out = np.zeros((self.height, self.width), np.int32)
        if self.masks is not None:
            for i, m in enumerate(self.masks):
                out[m > 0] = i + 1
        return out

    # ------------------------------------------------------------------ torch conversion
    def image_tensor(self):
        """The image as a torch float32 tensor [1, H, W]."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.image))[None]

    def to_target(self, *, agnostic: bool = False, index: int = 0) -> dict[str, Any]:
        """The target dict torchvision's Mask R-CNN expects.

        Returns ``boxes`` FloatTensor[N, 4], ``labels`` Int64Tensor[N] (all 1 when ``agnostic``),
        ``masks`` UInt8Tensor[N, H, W] (box-filled if the record has none), ``image_id`` int,
        ``area`` FloatTensor[N] (mask pixels), ``iscrowd`` Int64Tensor[N] zeros.
        """
        import torch

        n = len(self)
        masks = self.masks
        if masks is None:
            masks = boxes_to_masks(self.boxes, self.height, self.width)
        labels = np.ones(n, np.int64) if agnostic else self.labels
        if not agnostic and n and (labels <= 0).any():
            raise AnnotationError(
                self.meta.get("path"), "unknown (0) labels cannot train a 24-class model; use agnostic"
            )
        return {
            "boxes": torch.from_numpy(np.ascontiguousarray(self.boxes)).float(),
            "labels": torch.from_numpy(np.ascontiguousarray(labels)).long(),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "image_id": int(index),
            "area": torch.from_numpy(masks.sum(axis=(1, 2), dtype=np.float32)),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes float32 [N, 4] (x1, y1, x2+1, y2+1) of binary masks [N, H, W]; zeros for empty masks."""
    n = masks.shape[0]
    out = np.zeros((n, 4), np.float32)
    for i in range(n):
        ys = np.flatnonzero(masks[i].any(1))
        xs = np.flatnonzero(masks[i].any(0))
        if len(xs):
            out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def blank_image(height: int, width: int) -> np.ndarray:
    """A stand-in ``image`` (float32 zeros [H, W]) for a record whose pixels are not at hand, e.g. a prediction read
    back from its JSON document, which holds geometry only; read-only and of zero stride, so it costs no memory."""
    return np.broadcast_to(np.float32(0.0), (int(height), int(width)))


def boxes_to_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Filled-box masks uint8 [N, H, W] (used only where no better mask exists)."""
    n = len(boxes)
    out = np.zeros((n, height, width), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes)):
        xa, ya = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        xb, yb = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        out[i, ya:yb, xa:xb] = 1
    return out
