"""Copy-paste of whole chromosomes between spreads (simple copy-paste, Ghiasi et al., CVPR 2021).

:class:`CopyPaste` is a paired transform like those of :mod:`datasets.transforms`, with a memory: it
keeps a bank of chromosomes cut out of the spreads it has seen (image patch and mask, with their label,
centromere and p-arm direction) and pastes a few of them into each new spread before adding some of the
new spread's own chromosomes to the bank. The bank needs no second image read per sample, so the
augmentation costs milliseconds; each DataLoader worker fills its own bank.

Pasting follows bright-field absorption: a pasted chromosome multiplies the image by its own
transmission (patch / its spread's background), so on empty background it looks as it did in its own
spread, and where it lies over another chromosome the overlap is darker than either, as where two
chromosomes cross on a slide. The pasted chromosome lies on top: the pixels it covers leave the masks
below it, and an instance left with less than ``min_visible`` of its area is dropped, as
:class:`datasets.transforms.RandomCrop` drops a sliver.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .record import KaryoRecord, masks_to_boxes
from .transforms import grown_mask_boxes

__all__ = ["CopyPaste"]


@dataclass
class _Cutout:
    transmission: np.ndarray  # float32 [h, w]: image / background inside the mask, 1 outside
    mask: np.ndarray  # uint8 [h, w]
    label: int
    centromere: np.ndarray  # float32 [2]: (x, y) in the patch, NaN when unknown
    p_dir: np.ndarray  # float32 [2], NaN when unknown


def _background_level(image: np.ndarray, union: np.ndarray) -> float:
    """The spread's background: the median of the pixels outside every mask (of the whole image if none)."""
    bg = image[~union] if (~union).any() else image.ravel()
    return max(float(np.median(bg)), 1e-3)


class CopyPaste:
    """Paste up to ``max_paste`` chromosomes from earlier spreads into each training spread.

    Args:
        max_paste: the number pasted is drawn from ``1..max_paste`` (once the bank holds any).
        bank_size: chromosomes kept; once full, new ones replace random old ones.
        per_spread: chromosomes of each spread added to the bank.
        max_overlap: a paste position is accepted when at most this fraction of the pasted mask lies on
            existing masks and the rest lies on background (its median at least 0.85 of the background
            level, so not on a nucleus or debris); up to ``tries`` random positions, no paste when none fits.
        min_visible: an instance partly covered by a pasted one is kept while this fraction of it is seen.
        tries: random positions tried per pasted chromosome.

    Records without masks pass through unchanged (a box alone cannot be cut out).
    """

    def __init__(
        self,
        max_paste: int = 4,
        *,
        bank_size: int = 256,
        per_spread: int = 4,
        max_overlap: float = 0.1,
        min_visible: float = 0.3,
        tries: int = 8,
    ) -> None:
        if max_paste < 1 or bank_size < 1 or per_spread < 1 or tries < 1:
            raise ValueError("CopyPaste: max_paste, bank_size, per_spread and tries must be >= 1")
        if not (0.0 <= max_overlap <= 1.0 and 0.0 <= min_visible <= 1.0):
            raise ValueError("CopyPaste: max_overlap and min_visible must lie in [0, 1]")
        self.max_paste, self.bank_size, self.per_spread = int(max_paste), int(bank_size), int(per_spread)
        self.max_overlap, self.min_visible, self.tries = float(max_overlap), float(min_visible), int(tries)
        self.bank: list[_Cutout] = []

    def __repr__(self) -> str:
        return (
            f"CopyPaste(max_paste={self.max_paste}, bank_size={self.bank_size}, per_spread={self.per_spread}, "
            f"max_overlap={self.max_overlap}, min_visible={self.min_visible})"
        )

    # ------------------------------------------------------------------ the bank
    def _cut(self, rec: KaryoRecord, i: int, bg: float) -> _Cutout:
        x1, y1, x2, y2 = (int(v) for v in masks_to_boxes(rec.masks[i : i + 1])[0])
        mask = np.ascontiguousarray(rec.masks[i, y1:y2, x1:x2])
        patch = rec.image[y1:y2, x1:x2] / bg
        transmission = np.where(mask > 0, np.clip(patch, 0.0, 1.0), 1.0).astype(np.float32)
        c = np.full(2, np.nan, np.float32) if rec.centromeres is None else rec.centromeres[i] - (x1, y1)
        d = np.full(2, np.nan, np.float32) if rec.p_dir is None else rec.p_dir[i].copy()
        return _Cutout(transmission, mask, int(rec.labels[i]), np.asarray(c, np.float32), np.asarray(d, np.float32))

    def _remember(self, rec: KaryoRecord, bg: float, rng: np.random.Generator) -> None:
        """Add up to ``per_spread`` whole chromosomes of ``rec`` (none touching the image border)."""
        m = rec.masks
        inside = ~(m[:, 0].any(1) | m[:, -1].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1))
        inside &= m.reshape(len(rec), -1).any(1)
        idx = np.flatnonzero(inside)
        for i in rng.permutation(idx)[: self.per_spread]:
            cut = self._cut(rec, int(i), bg)
            if len(self.bank) < self.bank_size:
                self.bank.append(cut)
            else:
                self.bank[int(rng.integers(self.bank_size))] = cut

    # ------------------------------------------------------------------ pasting
    @staticmethod
    def _turned(cut: _Cutout, k: int, flip: bool) -> _Cutout:
        """The cutout turned by ``k`` quarter turns (counter-clockwise, as np.rot90) after a left-right flip."""
        t, m = cut.transmission, cut.mask
        c, d = cut.centromere.astype(np.float64), cut.p_dir.astype(np.float64)
        if flip:
            t, m = t[:, ::-1], m[:, ::-1]
            c, d = np.array([t.shape[1] - 1 - c[0], c[1]]), np.array([-d[0], d[1]])
        for _ in range(k):
            w = t.shape[1]
            t, m = np.rot90(t), np.rot90(m)
            c, d = np.array([c[1], w - 1 - c[0]]), np.array([d[1], -d[0]])
        return _Cutout(
            np.ascontiguousarray(t), np.ascontiguousarray(m), cut.label, c.astype(np.float32), d.astype(np.float32)
        )

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        if rec.masks is None:
            return rec
        masks = rec.masks
        union = masks.any(0) if len(rec) else np.zeros((rec.height, rec.width), bool)
        bg = _background_level(rec.image, union)
        out = rec
        if self.bank:
            out = self._paste(rec, union, bg, rng)
        if len(rec):
            self._remember(rec, bg, rng)
        return out

    def _paste(self, rec: KaryoRecord, union: np.ndarray, bg: float, rng: np.random.Generator) -> KaryoRecord:
        h, w = rec.height, rec.width
        image = rec.image.copy()
        masks = list(rec.masks.copy())
        full = np.array([m.sum() for m in masks], np.float64)
        labels = list(rec.labels)
        cents = list(rec.centromeres) if rec.centromeres is not None else [np.full(2, np.nan, np.float32)] * len(rec)
        dirs = list(rec.p_dir) if rec.p_dir is not None else [np.full(2, np.nan, np.float32)] * len(rec)
        union = union.copy()
        pasted = 0
        for _ in range(int(rng.integers(1, self.max_paste + 1))):
            cut = self._turned(self.bank[int(rng.integers(len(self.bank)))], int(rng.integers(4)), rng.random() < 0.5)
            ph, pw = cut.mask.shape
            if ph > h or pw > w:
                continue
            area = float(cut.mask.sum())
            for _try in range(self.tries):
                y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
                pm = cut.mask > 0
                if (union[y0 : y0 + ph, x0 : x0 + pw] & pm).sum() > self.max_overlap * area:
                    continue
                # not onto what is dark but unannotated (a nucleus, debris): the chromosome would vanish there
                free = pm & ~union[y0 : y0 + ph, x0 : x0 + pw]
                if not free.any() or np.median(image[y0 : y0 + ph, x0 : x0 + pw][free]) >= 0.85 * bg:
                    break
            else:
                continue
            # a soft edge (the mask blurred by ~0.7 px) so that the paste leaves no hard outline
            alpha = cv2.GaussianBlur(pm.astype(np.float32), (0, 0), 0.7)
            alpha = np.maximum(alpha, pm)
            win = image[y0 : y0 + ph, x0 : x0 + pw]
            win *= 1.0 - alpha * (1.0 - cut.transmission)
            for m in masks:  # the pasted chromosome lies on top
                m[y0 : y0 + ph, x0 : x0 + pw][pm] = 0
            new = np.zeros((h, w), np.uint8)
            new[y0 : y0 + ph, x0 : x0 + pw] = pm
            masks.append(new)
            full = np.append(full, area)
            labels.append(cut.label)
            cents.append(cut.centromere + np.array([x0, y0], np.float32))
            dirs.append(cut.p_dir)
            union[y0 : y0 + ph, x0 : x0 + pw] |= pm
            pasted += 1
        if not pasted:
            return rec
        stack = np.stack(masks).astype(np.uint8)
        seen = stack.reshape(len(stack), -1).sum(1)
        boxes = masks_to_boxes(stack)
        if "box_margin" in rec.meta:  # annotated boxes (see datasets.transforms._finish): the untouched stay
            boxes = grown_mask_boxes(stack, rec.meta["box_margin"])
            n0 = len(rec)
            same = seen[:n0] == full[:n0]
            boxes[:n0][same] = rec.boxes[same]
        with np.errstate(invalid="ignore", divide="ignore"):
            keep = (seen > 0) & (seen >= self.min_visible * full)
        out = KaryoRecord(
            image=np.clip(image, 0.0, 1.0).astype(np.float32),
            boxes=boxes.astype(np.float32),
            labels=np.asarray(labels, rec.labels.dtype),
            masks=stack,
            masks_derived=rec.masks_derived,
            centromeres=None if rec.centromeres is None else np.stack(cents).astype(np.float32),
            p_dir=None if rec.p_dir is None else np.stack(dirs).astype(np.float32),
            scores=None,
            meta=dict(rec.meta, copy_paste=pasted),
        )
        return out.select(keep) if not keep.all() else out
