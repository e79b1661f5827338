"""Instance masks derived from bounding boxes on banded metaphase images (boxes-only sources such as CIL:54816).

The rule, box by box:

1. The image is smoothed (Gaussian, ``sigma`` px) and, for dark-on-light images (G-banding), each box's
   neighbourhood (the box grown by a quarter of its size) is thresholded with Otsu's method. The threshold is
   never allowed above the global Otsu threshold of the image plus a little, so a box that is almost all
   chromosome still separates chromosome from background. The foreground is closed (3x3) and its holes filled.
2. Inside the box grown by ``margin`` px, the connected component (8-connectivity) that best fills the box is
   kept: the one maximising ``pixels inside the box x (x-extent / box width) x (y-extent / box height)``,
   i.e. a component that spans the box (as an annotated chromosome does) beats a neighbour's corner poking in.
3. If no component covers at least ``min_fill`` of the box, an ellipse inscribed in the box is used instead
   and counted (``stats["ellipse_fallback"]``).
4. Pixels claimed by several boxes (touching or crossing chromosomes) are given to exactly one box:
   a shared pixel is first *seeded* to the box whose centre it is clearly nearest to, in box-normalised
   Chebyshev distance ``max(|x - cx| / (w / 2), |y - cy| / (h / 2))`` (a margin of ``0.25`` over the next
   claimant); pixels that only one box claims are seeds of that box. Then every box grows from its seeds,
   one pixel ring per step and all boxes at once, into the shared pixels that it claims: a shared pixel goes
   to the box whose own (connected) chromosome reaches it first. Anything still unreached goes to the nearest
   box centre. The output masks are therefore disjoint.
5. Only with ``crossings="axis"``: where two chromosomes cross, the crossing belongs to both, and each one's arms
   to it alone. Each box claiming shared pixels gets a straight axis across it: of its two
   diagonals and two mid-lines (each ``inset`` px inside the box's ends: half a chromosome's width plus the
   boxes' margin around their chromosomes), the one along which the smoothed image is darkest. A shared pixel
   then belongs to every claimant whose axis passes within half a chromosome width of it (the width from the
   distance transform of the image's foreground: twice its mean), and where no axis passes that close it keeps
   the owner rule 4 gave it. The masks may then overlap at crossings, as the true masks of crossing
   chromosomes do. On the ADIR M-FISH slides, whose masks are annotated pixel by pixel with crossings shared,
   masks derived from their boxes match their true masks at IoU >= 0.5 for 94.8 % of the chromosomes that
   cross another (84.5 % with the default rule) and 98.1 % of all (95.0 %), on the val slides
   (``benchmarks/derived_vs_true_masks.py``; the rule's two choices, ``inset`` and the width, were picked on
   the train slides: there 87.2 % against 58.2 % of the crossing ones).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "CROSSING_RULES",
    "box_margin",
    "contact_kinds",
    "derive_masks",
    "ellipse_mask",
    "otsu_threshold",
    "outward_margins",
]

#: how pixels claimed by several boxes are shared out (rules 4 and 5 of the module docstring)
CROSSING_RULES = ("nearest", "axis")


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu threshold of float values in [0, 1] (256 bins; the middle of a plateau of maxima)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.5
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * centers)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 / total - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    # the middle of the plateau of maxima (two-level images have a flat maximum between their levels)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[int(best[0])] + edges[int(best[-1]) + 1]) / 2


def ellipse_mask(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] mask of the ellipse inscribed in ``box`` (x1, y1, x2, y2 pixels)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    yy, xx = np.ogrid[:height, :width]
    cx, cy = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5
    rx, ry = max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0).astype(np.uint8)


def _int_box(box: np.ndarray, height: int, width: int, grow: float = 0.0) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    xa = max(0, int(np.floor(x1 - grow)))
    ya = max(0, int(np.floor(y1 - grow)))
    xb = min(width, int(np.ceil(x2 + grow)))
    yb = min(height, int(np.ceil(y2 + grow)))
    return xa, ya, xb, yb


def derive_masks(
    image: np.ndarray,
    boxes: np.ndarray,
    *,
    dark_objects: bool = True,
    margin: int = 3,
    sigma: float = 1.0,
    min_fill: float = 0.08,
    crossings: str = "nearest",
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Derive one chromosome mask per box by thresholding inside the box (see the module docstring for the rule).

    Args:
        image: grey image float32 [H, W] in [0, 1].
        boxes: float32 [N, 4] ``x1, y1, x2, y2`` in pixels.
        dark_objects: True when chromosomes are darker than the background (G-banding, bright-field); False
            for bright-on-dark (fluorescence, Q-banding).
        margin: pixels a mask may extend beyond its box (annotations are often a pixel or two tight).
        sigma: Gaussian smoothing in pixels before thresholding.
        min_fill: a component must cover at least this fraction of the box area, otherwise the ellipse
            inscribed in the box is used.
        crossings: "nearest" (default): every pixel goes to one box, the masks are disjoint (rule 4);
            "axis": the crossing of two chromosomes goes to both, the masks may overlap (rule 5).
        stats: optional dict; ``stats["ellipse_fallback"]`` and ``stats["shared_pixels"]`` are incremented.

    Returns:
        uint8 [N, H, W] masks in {0, 1}, pairwise disjoint with ``crossings="nearest"``.

    Raises:
        ValueError: ``image`` is not 2-D, or ``crossings`` is not one of :data:`CROSSING_RULES`.

    >>> img = np.ones((40, 40), np.float32); img[10:30, 18:22] = 0.2
    >>> m = derive_masks(img, np.array([[16, 8, 24, 32]], np.float32))
    >>> int(m.sum()), int(m[0, 10:30, 18:22].min())
    (80, 1)
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 2:
        raise ValueError(f"derive_masks needs a 2-D grey image, got shape {img.shape}")
    if crossings not in CROSSING_RULES:
        raise ValueError(f"derive_masks: crossings must be one of {CROSSING_RULES}, got {crossings!r}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    h, w = img.shape
    n = len(boxes)
    out = np.zeros((n, h, w), np.uint8)
    if stats is not None:
        stats.setdefault("ellipse_fallback", 0)
        stats.setdefault("shared_pixels", 0)
    if n == 0:
        return out
    # work on "darkness": chromosomes high
    dark = 1.0 - img if dark_objects else img.copy()
    if sigma > 0:
        dark = cv2.GaussianBlur(dark, (0, 0), sigma)
    # global reference threshold over the union of the boxes' neighbourhoods
    union = np.zeros((h, w), bool)
    for b in boxes:
        xa, ya, xb, yb = _int_box(b, h, w, grow=0.25 * max(b[2] - b[0], b[3] - b[1]))
        union[ya:yb, xa:xb] = True
    t_global = otsu_threshold(dark[union])
    kernel = np.ones((3, 3), np.uint8)
    fallback = 0
    for i, b in enumerate(boxes):
        bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
        if bw <= 0 or bh <= 0:
            continue
        nx1, ny1, nx2, ny2 = _int_box(b, h, w, grow=0.25 * max(bw, bh))
        neigh = dark[ny1:ny2, nx1:nx2]
        t = otsu_threshold(neigh)
        # a box that is nearly all chromosome has an Otsu split *inside* the chromosome: clamp to the image's
        t = min(t, t_global + 0.05)
        contrast = float(neigh.max() - neigh.min())
        xa, ya, xb, yb = _int_box(b, h, w, grow=margin)
        crop = dark[ya:yb, xa:xb]
        fg = (crop > t).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
        best = None
        if contrast > 0.05 and fg.any():
            nlab, lab, st, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
            # pixels inside the box proper (not the margin)
            bx1, by1, bx2, by2 = _int_box(b, h, w)
            inner = np.zeros_like(fg, bool)
            inner[by1 - ya : by2 - ya, bx1 - xa : bx2 - xa] = True
            counts = np.bincount(lab[inner], minlength=nlab).astype(np.float64)
            counts[0] = 0
            span_x = np.minimum(st[:, cv2.CC_STAT_WIDTH], bw) / bw
            span_y = np.minimum(st[:, cv2.CC_STAT_HEIGHT], bh) / bh
            score = counts * span_x * span_y
            k = int(np.argmax(score))
            if k > 0 and counts[k] >= min_fill * bw * bh:
                best = ndimage.binary_fill_holes(lab == k)
        if best is None:
            fallback += 1
            out[i] = ellipse_mask(b, h, w)
        else:
            out[i, ya:yb, xa:xb] = best
    if stats is not None:
        stats["ellipse_fallback"] += fallback
    # rule 5 needs, from before rule 4, only who claimed each shared pixel and the foreground
    claims = _claims(out) if crossings == "axis" else None
    _resolve_shared(out, boxes, stats)
    if claims is not None:
        _share_crossings(out, claims, boxes, dark)
    return out


def _claims(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ys, xs, claimed, fg)``: the pixels several ``masks`` [N, H, W] claim, which masks claim each (bool
    [N, len(xs)]), and the union of the masks (uint8 [H, W])."""
    count = masks.sum(0, dtype=np.uint16)
    ys, xs = np.nonzero(count > 1)
    return ys, xs, masks[:, ys, xs] > 0, (count > 0).astype(np.uint8)


def _segment_distance(xx: np.ndarray, yy: np.ndarray, seg: tuple[float, float, float, float]) -> np.ndarray:
    """Distance (px) of the points (xx, yy) to the segment ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = seg
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
    return np.hypot(xx - (x0 + t * vx), yy - (y0 + t * vy))


def _box_axis(dark: np.ndarray, box: np.ndarray, inset: float) -> tuple[float, float, float, float]:
    """The straight axis across ``box`` (pixel centres; its two diagonals and two mid-lines, ends ``inset`` px
    inside the box) along which ``dark`` (chromosomes high) has the highest mean."""
    h, w = dark.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    ix = min(inset, max(0.0, (x2 - x1 - 1) / 2))
    iy = min(inset, max(0.0, (y2 - y1 - 1) / 2))
    xa, xb, ya, yb = x1 + ix, x2 - 1 - ix, y1 + iy, y2 - 1 - iy
    cx, cy = (xa + xb) / 2, (ya + yb) / 2
    best, best_mean = (xa, ya, xb, yb), -np.inf
    t = np.linspace(0.0, 1.0, 50)
    for seg in ((xa, ya, xb, yb), (xb, ya, xa, yb), (xa, cy, xb, cy), (cx, ya, cx, yb)):
        xs = np.clip(np.round(seg[0] + t * (seg[2] - seg[0])).astype(int), 0, w - 1)
        ys = np.clip(np.round(seg[1] + t * (seg[3] - seg[1])).astype(int), 0, h - 1)
        mean = float(dark[ys, xs].mean())
        if mean > best_mean:
            best, best_mean = seg, mean
    return best


def _share_crossings(
    masks: np.ndarray,
    claims: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    boxes: np.ndarray,
    dark: np.ndarray,
) -> None:
    """Rule 5 of the module docstring, in place: ``masks`` [N, H, W] are the disjoint masks of rule 4,
    ``claims`` what :func:`_claims` said of the masks before it (each box's whole component)."""
    ys, xs, claimed, fg = claims
    if not len(xs):
        return
    half_width = 2.0 * float(cv2.distanceTransform(fg, cv2.DIST_L2, 3)[fg > 0].mean())
    inset = half_width + box_margin(boxes, masks)
    ids = np.flatnonzero(claimed.any(1))
    px, py = xs.astype(np.float64), ys.astype(np.float64)
    near = np.zeros((len(ids), len(xs)), bool)
    for k, j in enumerate(ids):
        axis = _box_axis(dark, boxes[j], inset)
        near[k] = claimed[j] & (_segment_distance(px, py, axis) <= half_width)
    near_any = near.any(0)
    for k, j in enumerate(ids):
        masks[j, ys, xs] = near[k] | ((masks[j, ys, xs] > 0) & ~near_any)


def _axis_distance(mask: np.ndarray, count: np.ndarray, box: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Distance (px) of the points (xx, yy) to a chromosome's axis: the principal axis of the pixels that only
    this mask claims (all its pixels if those are few), through their centroid, clipped to the box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    xa, ya, xb, yb = _int_box(box, *mask.shape, grow=4)
    m = mask[ya:yb, xa:xb] > 0
    own = m & (count[ya:yb, xa:xb] == 1)
    pts = own if own.sum() >= max(10, 0.3 * m.sum()) else m
    py, px = np.nonzero(pts)
    if len(px) < 2:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        return np.hypot(xx - cx, yy - cy)
    px = px + xa
    py = py + ya
    cx, cy = px.mean(), py.mean()
    cov = np.cov(np.stack([px - cx, py - cy]))
    evals, evecs = np.linalg.eigh(cov)
    ux, uy = evecs[:, -1]
    # the axis segment: the line through (cx, cy) along (ux, uy), clipped to the box
    ts = []
    for a, u, lo, hi in ((cx, ux, x1, x2 - 1), (cy, uy, y1, y2 - 1)):
        if abs(u) > 1e-6:
            ts.extend(sorted(((lo - a) / u, (hi - a) / u)))
        else:
            ts.extend((-np.inf, np.inf))
    t_lo = max(ts[0], ts[2])
    t_hi = min(ts[1], ts[3])
    if not t_lo <= t_hi:
        t_lo = t_hi = 0.0
    t = np.clip((xx - cx) * ux + (yy - cy) * uy, t_lo, t_hi)
    return np.hypot(xx - (cx + t * ux), yy - (cy + t * uy))


def _resolve_shared(masks: np.ndarray, boxes: np.ndarray, stats: dict[str, Any] | None) -> None:
    """Make ``masks`` [N, H, W] disjoint in place (rule 4 of the module docstring)."""
    n, h, w = masks.shape
    count = masks.sum(0, dtype=np.uint16)
    shared = count > 1
    if not shared.any():
        return
    if stats is not None:
        stats["shared_pixels"] += int(shared.sum())
    # work on the bounding region of each cluster of shared pixels
    nlab, lab, st, _ = cv2.connectedComponentsWithStats(shared.astype(np.uint8), connectivity=8)
    seed_margin = 2.0  # pixels
    kernel = np.ones((3, 3), np.uint8)
    pad = 2
    for c in range(1, nlab):
        x, y, cw, ch = st[c, :4]
        xa, ya = max(0, x - pad), max(0, y - pad)
        xb, yb = min(w, x + cw + pad), min(h, y + ch + pad)
        sh = lab[ya:yb, xa:xb] == c
        ids = np.flatnonzero(masks[:, ya:yb, xa:xb][:, sh].any(1))
        if len(ids) < 2:
            continue
        # the shared pixels of this cluster and their claimants' masks, cropped to the cluster's surroundings;
        # grow from a wider window so a chromosome's exclusive pixels just outside the crop seed it
        g = max(cw, ch) + pad
        xa2, ya2 = max(0, x - g), max(0, y - g)
        xb2, yb2 = min(w, x + cw + g), min(h, y + ch + g)
        sub = masks[ids, ya2:yb2, xa2:xb2].astype(bool)
        shw = np.zeros(sub.shape[1:], bool)
        shw[ya - ya2 : yb - ya2, xa - xa2 : xb - xa2] = sh
        yy, xx = np.mgrid[ya2:yb2, xa2:xb2]
        d = np.stack([_axis_distance(masks[j], count, boxes[j], xx, yy) for j in ids])
        d = np.where(sub, d, np.inf)
        order = np.sort(d, axis=0)
        nearest = np.argmin(d, axis=0)
        with np.errstate(invalid="ignore"):
            clear = (order[1] - order[0]) > seed_margin
        # assignment: -1 = undecided; exclusive pixels (and other clusters' pixels) fixed to their claimant
        owner = np.full(shw.shape, -1, np.int32)
        for k in range(len(ids)):
            owner[sub[k] & ~shw] = k
        seed = shw & clear
        owner[seed] = nearest[seed]
        todo = shw & (owner < 0)
        while todo.any():
            grew = False
            new_owner = owner.copy()
            for k in range(len(ids)):
                reach = cv2.dilate((owner == k).astype(np.uint8), kernel).astype(bool) & todo & sub[k]
                reach &= new_owner < 0
                if reach.any():
                    new_owner[reach] = k
                    grew = True
            owner = new_owner
            todo = shw & (owner < 0)
            if not grew:
                owner[todo] = nearest[todo]
                break
        for k, j in enumerate(ids):
            region = masks[j, ya2:yb2, xa2:xb2]
            region[shw & (owner != k)] = 0


def contact_kinds(masks: np.ndarray, gap: int = 2) -> list[str]:
    """How each of the true (possibly overlapping) ``masks`` [N, H, W] lies among the others: "crossing" when it
    shares pixels with another mask, "touching" when another comes within ``gap`` px of it, else "isolated".

    >>> m = np.zeros((3, 20, 20), np.uint8); m[0, 2:18, 9:11] = 1; m[1, 9:11, 2:18] = 1; m[2, 2:4, 12:18] = 1
    >>> contact_kinds(m)
    ['crossing', 'crossing', 'touching']
    """
    m = np.asarray(masks) > 0
    if not len(m):
        return []
    count = m.sum(0, dtype=np.uint16)
    kernel = np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)
    kinds = []
    for j in range(len(m)):
        if (m[j] & (count > 1)).any():
            kinds.append("crossing")
            continue
        near = cv2.dilate(m[j].astype(np.uint8), kernel).astype(bool)
        kinds.append("touching" if (near & ((count - m[j]) > 0)).any() else "isolated")
    return kinds


def outward_margins(boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """How far each annotated box [N, 4] stands outside its mask's tight box, per side: float32 [N, 4]
    (left, top, right, bottom; negative where the mask reaches past the box)."""
    from .record import masks_to_boxes

    tight = masks_to_boxes(masks)
    return np.concatenate([tight[:, :2] - boxes[:, :2], boxes[:, 2:] - tight[:, 2:]], 1).astype(np.float32)


def box_margin(boxes: np.ndarray, masks: np.ndarray) -> float:
    """How far annotated ``boxes`` [N, 4] stand out from the tight boxes of their ``masks`` [N, H, W]: the
    median of :func:`outward_margins` over instances and sides, in pixels (0 for no instances).

    CIL's boxes are drawn a few pixels outside the chromosome (median 5 px a side), while masks derived from
    them are tight; ``datasets.transforms`` keep that margin when a transform recomputes boxes from masks.
    """
    if not len(boxes):
        return 0.0
    return float(max(0.0, np.median(outward_margins(boxes, masks))))
