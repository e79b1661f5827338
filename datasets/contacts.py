"""Synthetic contacts with exact truth: isolated chromosomes pasted so that they touch or cross another.

What the detector gets wrong is chromosomes in contact (docs/results.md, "Missed and false chromosomes"), and
where two touch or cross, masks derived from boxes are least right (docs/data.md). Here an isolated chromosome
of the record (its mask, grown by :data:`TOUCH_PX`, meets no other mask and not the image border) is copied,
turned by a random angle and laid onto the spread so that it crosses a randomly chosen chromosome (a random
pixel of each meet; no more than :data:`MAX_SHARED` of either under the other) or touches it (moved out along the line from the target's centre until only its rim
overlaps). Bright-field absorbance multiplies, so the pasted chromosome's transmission (its pixels over the
background level) multiplies the spread's: where two overlap, the image is darker, as on a slide. The truth is
exact by construction: the pasted chromosome's mask is its source mask moved, every other mask is unchanged,
and the pixels where two overlap belong to both.
"""

from __future__ import annotations

import cv2
import numpy as np

from .derive_masks import contact_kinds
from .record import KaryoRecord

__all__ = ["ContactPaste", "isolated_instances"]

#: an instance is isolated when its mask grown by this many pixels meets no other mask and not the border
TOUCH_PX = 3
#: a pasted chromosome must keep this fraction of its pixels inside the image
MIN_INSIDE = 0.9
#: a source is at least this fraction of the record's median instance area (no debris, no fragments)
MIN_AREA_FRACTION = 0.3
#: placements tried per paste before it is given up
TRIES = 8
#: at most this fraction of the smaller of two chromosomes lies under the other (an X, not one along the other)
MAX_SHARED = 0.35


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k)


def isolated_instances(masks: np.ndarray, *, px: int = TOUCH_PX) -> np.ndarray:
    """bool [N]: each mask, grown by ``px`` pixels, meets no other mask and not the image border.

    >>> m = np.zeros((3, 30, 30), np.uint8); m[0, 5:10, 5:10] = 1; m[1, 5:10, 11:15] = 1; m[2, 20:25, 20:25] = 1
    >>> isolated_instances(m).tolist()
    [False, False, True]
    """
    n, h, w = masks.shape
    out = np.array([k == "isolated" for k in contact_kinds(masks, gap=px)], bool).reshape(n)
    for i in np.flatnonzero(out):  # not at the border either, and not empty
        ys, xs = np.nonzero(masks[i])
        out[i] = len(ys) > 0 and ys.min() >= px and xs.min() >= px and ys.max() < h - px and xs.max() < w - px
    return out


def _background_level(image: np.ndarray, masks: np.ndarray) -> float:
    """The grey level of the slide: the median of the pixels under no mask (all pixels if none is free)."""
    free = ~masks.astype(bool).any(0)
    return float(np.median(image[free])) if free.any() else float(np.median(image))


def _turned(patch_t: np.ndarray, patch_m: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """A transmission patch and its mask turned by ``angle`` degrees about their centre, on a canvas that holds
    the whole turned patch (transmission 1 and mask 0 outside)."""
    h, w = patch_m.shape
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    c, s = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = int(np.ceil(h * s + w * c)) + 2, int(np.ceil(h * c + w * s)) + 2
    rot[0, 2] += (nw - w) / 2
    rot[1, 2] += (nh - h) / 2
    t = cv2.warpAffine(patch_t, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=1.0)
    m = cv2.warpAffine(patch_m, rot, (nw, nh), flags=cv2.INTER_NEAREST, borderValue=0)
    return np.clip(t, 0.0, 1.0), m


def _place(mask: np.ndarray, top: int, left: int, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``mask`` laid at (top, left) on a canvas of ``shape``; and the fraction of its pixels that fall inside."""
    h, w = shape
    out = np.zeros(shape, np.uint8)
    ph, pw = mask.shape
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + ph, h), min(left + pw, w)
    total = int(mask.sum())
    if y1 <= y0 or x1 <= x0 or total == 0:
        return out, 0.0
    out[y0:y1, x0:x1] = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    return out, float(out.sum()) / total


class ContactPaste:
    """Paste up to ``max_pastes`` isolated chromosomes of a record so that each crosses or touches another.

    Args:
        max_pastes: pastes per record, each drawn with probability ``p`` (at most this many).
        p: probability of each paste.
        cross: probability that a paste crosses its target (else it touches it).
        margin: a touching chromosome is moved out until it clears its target, then back by this many pixels
            (0: edge to edge; 1: a rim of about a pixel belongs to both).

    Records without masks or without an isolated source pass unchanged. Centromeres and p-arm directions of
    pasted chromosomes are unknown (NaN); their labels are their sources' labels.
    """

    def __init__(self, max_pastes: int = 2, *, p: float = 0.7, cross: float = 0.5, margin: int = 1) -> None:
        if max_pastes < 1:
            raise ValueError(f"ContactPaste: max_pastes must be >= 1, got {max_pastes}")
        if not (0.0 <= p <= 1.0 and 0.0 <= cross <= 1.0):
            raise ValueError(f"ContactPaste: p and cross are probabilities, got {p}, {cross}")
        self.max_pastes, self.p, self.cross, self.margin = int(max_pastes), float(p), float(cross), int(margin)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        if rec.masks is None or len(rec) < 2:
            return rec
        out = rec.copy()
        for _ in range(self.max_pastes):
            if rng.random() < self.p:
                out = self._paste_one(out, rng)
        return out

    def _paste_one(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        masks = rec.masks
        areas = masks.reshape(len(rec), -1).sum(1)
        big = areas >= MIN_AREA_FRACTION * float(np.median(areas))
        sources = np.flatnonzero(isolated_instances(masks) & big)
        if not len(sources):
            return rec
        src = int(rng.choice(sources))
        targets = np.flatnonzero(big & (np.arange(len(rec)) != src))
        if not len(targets):
            return rec
        bg = max(_background_level(rec.image, masks), 1e-3)
        ys, xs = np.nonzero(masks[src])
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        # the source's transmission: its own pixels over the slide's level, 1 outside its mask (grown by a pixel
        # so that its soft edge comes along)
        edge = _grow(masks[src], 1)[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1].astype(bool)
        trans = np.ones(edge.shape, np.float32)
        trans[edge] = np.clip(rec.image[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1][edge] / bg, 0.0, 1.0)
        src_mask = masks[src, y0 - 1 : y1 + 1, x0 - 1 : x1 + 1]
        h, w = rec.height, rec.width
        for _ in range(TRIES):
            t_patch, m_patch = _turned(trans, src_mask, float(rng.uniform(0.0, 360.0)))
            if not m_patch.any():
                continue
            tgt = int(rng.choice(targets))
            placed = self._position(m_patch, masks[tgt], rng)
            if placed is None:
                continue
            top, left = placed
            new_mask, inside = _place(m_patch, top, left, (h, w))
            if inside < MIN_INSIDE or _too_shared(new_mask, masks, areas):
                continue
            t_full = np.ones((h, w), np.float32)
            ph, pw = m_patch.shape
            ya, xa, yb, xb = max(top, 0), max(left, 0), min(top + ph, h), min(left + pw, w)
            t_full[ya:yb, xa:xb] = t_patch[ya - top : yb - top, xa - left : xb - left]
            image = np.clip(rec.image * t_full, 0.0, 1.0).astype(np.float32)
            return _appended(rec, image, new_mask, src)
        return rec

    def _position(self, m_patch: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
        """(top, left) of the turned source so that it crosses or touches ``target``; None if it cannot."""
        core_t = cv2.erode(target, np.ones((3, 3), np.uint8))
        ty, tx = np.nonzero(core_t if core_t.any() else target)
        if not len(ty):
            return None
        if rng.random() < self.cross:  # a pixel of each meet: an X (or a T) through both
            core_s = cv2.erode(m_patch, np.ones((3, 3), np.uint8))
            sy, sx = np.nonzero(core_s if core_s.any() else m_patch)
            i, j = int(rng.integers(len(ty))), int(rng.integers(len(sy)))
            return int(ty[i] - sy[j]), int(tx[i] - sx[j])
        # touch: start centred on a random target pixel, move out along the line from the target's centre (or a
        # random direction) until the two overlap by no more than the rim
        cy, cx = ty.mean(), tx.mean()
        i = int(rng.integers(len(ty)))
        d = np.array([ty[i] - cy, tx[i] - cx], np.float64)
        if np.hypot(*d) < 1.0:
            a = rng.uniform(0.0, 2 * np.pi)
            d = np.array([np.sin(a), np.cos(a)])
        d /= np.hypot(*d)
        ph, pw = m_patch.shape
        start_top, start_left = float(ty[i]) - ph / 2, float(tx[i]) - pw / 2
        span = float(max(ph, pw) + np.ptp(ty) + np.ptp(tx))
        hit = target.astype(bool)
        for step in range(int(span) + 1):
            placed, _ = _place(m_patch, round(start_top + d[0] * step), round(start_left + d[1] * step), hit.shape)
            if not (placed.astype(bool) & hit).any():  # just clear of the target: back by the rim
                back = max(step - self.margin, 0)
                return round(start_top + d[0] * back), round(start_left + d[1] * back)
        return None


def _too_shared(new: np.ndarray, masks: np.ndarray, areas: np.ndarray) -> bool:
    """Whether ``new`` shares more than :data:`MAX_SHARED` of itself or of any existing mask with it."""
    ys, xs = np.nonzero(new)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    shared = (masks[:, y0:y1, x0:x1].astype(bool) & new[y0:y1, x0:x1].astype(bool)).reshape(len(masks), -1).sum(1)
    smaller = np.minimum(areas, len(ys)).astype(np.float64)
    return bool((shared > MAX_SHARED * np.maximum(smaller, 1)).any())


def _appended(rec: KaryoRecord, image: np.ndarray, mask: np.ndarray, src: int) -> KaryoRecord:
    """``rec`` with ``image`` and one more instance: ``mask``, the source's label, unknown centromere."""
    out = rec.copy()
    out.image = image
    out.masks = np.concatenate([rec.masks, mask[None]], 0)
    out.labels = np.concatenate([rec.labels, rec.labels[src : src + 1]])
    ys, xs = np.nonzero(mask)
    # its tight box, grown by the annotation's margin where the record's boxes carry one (as datasets.transforms
    # makes every box of such a record), inside the image
    m = float(rec.meta.get("box_margin") or 0.0)
    box = np.array([[xs.min() - m, ys.min() - m, xs.max() + 1 + m, ys.max() + 1 + m]], np.float32)
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, rec.width)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, rec.height)
    out.boxes = np.concatenate([rec.boxes.astype(np.float32), box], 0)
    if rec.centromeres is not None:
        out.centromeres = np.concatenate([rec.centromeres, np.full((1, 2), np.nan, np.float32)], 0)
    if rec.p_dir is not None:
        out.p_dir = np.concatenate([rec.p_dir, np.full((1, 2), np.nan, np.float32)], 0)
    if rec.scores is not None:
        out.scores = np.concatenate([rec.scores, np.ones(1, np.float32)])
    return out
