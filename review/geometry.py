"""The geometry of the reviewer's segmentation edits: masks in, masks out, nothing else.

Every function takes and returns uint8 masks [H, W] of one image and points ``(x, y)`` in that image's
pixels (pixel centres at integer coordinates), and raises :class:`GeometryError` with a sentence the
reviewer can act on when the gesture does not do what it is for (a cut that splits nothing, an outline
that crosses itself, ...).

* :func:`cut`: a line (polyline) across a mask splits it; the pixels on the line go to the side they
  touch, so no pixel is lost.
* :func:`separate`: the path of one chromosome through a crossing: the mask's pixels within the
  chromosome's half-width of the path become the new instance, the rest stays, and the crossing pixels
  (where the rest's arms meet across the path) belong to both, as the training truth's axis rule has it.
* :func:`join`: two masks into one, bridged across a small gap.
* :func:`outline_mask`: a drawn outline, filled; :func:`brush_mask`: a brush stroke.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: an instance smaller than this (pixels) is a sliver, not a chromosome: a cut or erase leaving one is refused
MIN_PIECE_PX = 12
#: two masks may be joined when the gap between them is at most this many times their width
JOIN_GAP_WIDTHS = 1.5
#: a separating path must run inside the mask for at least this fraction of its length
SEPARATE_MIN_INSIDE = 0.5
#: the most points one gesture may have (a stroke across a 4000-pixel image, drawn point by point, has fewer)
MAX_POINTS = 20000
#: outlines are simplified to this tolerance (pixels) before they are checked and filled
OUTLINE_TOLERANCE_PX = 0.5


class GeometryError(ValueError):
    """A gesture that cannot make the edit it is for (the message says why and what to do)."""


def points_of(pts: object, what: str, *, at_least: int = 2) -> np.ndarray:
    """``pts`` (a JSON list of ``[x, y]``) as float64 [K, 2] with consecutive repeats removed.

    Raises:
        GeometryError: not a list of pairs of finite numbers, or fewer than ``at_least`` distinct points.
    """
    ok = isinstance(pts, (list, tuple)) and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in p)
        for p in pts
    )
    if not ok:
        raise GeometryError(f"the {what} must be a list of [x, y] points, got {str(pts)[:80]}")
    a = np.asarray(pts, np.float64).reshape(-1, 2)
    if len(a):
        keep = np.ones(len(a), bool)
        keep[1:] = np.any(np.abs(np.diff(a, axis=0)) > 1e-9, axis=1)
        a = a[keep]
    if len(a) < at_least:
        raise GeometryError(f"the {what} needs at least {at_least} distinct points, got {len(a)}")
    if len(a) > MAX_POINTS:
        raise GeometryError(f"the {what} has {len(a)} points, more than {MAX_POINTS}: draw it in fewer")
    return a


def _inside(pts: np.ndarray, shape: tuple[int, int], what: str) -> None:
    h, w = shape
    bad = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
    if bad.any():
        x, y = pts[np.flatnonzero(bad)[0]]
        raise GeometryError(
            f"the {what} leaves the image at ({x:.0f}, {y:.0f}) (the image is {w} x {h}): keep it inside"
        )


def _int_pts(pts: np.ndarray) -> np.ndarray:
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def line_mask(pts: np.ndarray, shape: tuple[int, int], thickness: int = 1) -> np.ndarray:
    """uint8 [H, W]: the polyline ``pts`` drawn 4-connected (``thickness`` 1), which no 8-connected region
    crosses without touching it."""
    out = np.zeros(shape, np.uint8)
    cv2.polylines(out, [_int_pts(pts)], False, 1, thickness=thickness, lineType=cv2.LINE_4)
    return out


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of ``mask``, largest first, each uint8 [H, W]."""
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    comps = [(lab == k) for k in range(1, n)]
    comps.sort(key=lambda c: -int(c.sum()))
    return [c.astype(np.uint8) for c in comps]


def _give_to_nearest(pixels: np.ndarray, parts: list[np.ndarray]) -> None:
    """Add each pixel of ``pixels`` to the part nearest to it (in place)."""
    if not parts or not pixels.any():
        return
    lab = np.zeros(pixels.shape, np.int32)
    for k, p in enumerate(parts, start=1):
        lab[p > 0] = k
    from scipy import ndimage

    _, (iy, ix) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
    owner = lab[iy, ix]
    for k, p in enumerate(parts, start=1):
        p[(pixels > 0) & (owner == k)] = 1


def cut(mask: np.ndarray, line: np.ndarray) -> list[np.ndarray]:
    """Split ``mask`` along the polyline ``line``.

    The line is drawn 4-connected; the mask's pixels off it fall into 8-connected sides, each side of at
    least :data:`MIN_PIECE_PX` pixels one piece (smaller bits and the pixels on the line go to the nearest
    piece).

    Returns:
        the pieces, largest first (two or more), uint8 [H, W] each, together exactly the mask's pixels.

    Raises:
        GeometryError: the line does not cross the mask from side to side.
    """
    m = (mask > 0).astype(np.uint8)
    on = line_mask(line, m.shape) & m
    comps = _components(m & (1 - on))
    pieces = [c for c in comps if c.sum() >= MIN_PIECE_PX]
    if len(pieces) < 2:
        raise GeometryError(
            "the line does not cut this chromosome in two: draw it across the whole width, from outside to outside"
        )
    rest = m & (1 - sum(pieces).clip(0, 1).astype(np.uint8))
    _give_to_nearest(rest, pieces)
    return pieces


def mask_width(mask: np.ndarray) -> float:
    """The width of a chromosome mask (pixels): twice the largest distance from its border."""
    from scipy import ndimage

    m = np.pad((mask > 0).astype(np.uint8), 1)
    return 2.0 * float(ndimage.distance_transform_edt(m).max())


def join(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One mask of two: their union, bridged where they come closest by a band as wide as the thinner.

    Raises:
        GeometryError: the gap between them exceeds :data:`JOIN_GAP_WIDTHS` times the thinner's width.
    """
    from scipy import ndimage

    a, b = (a > 0).astype(np.uint8), (b > 0).astype(np.uint8)
    width = max(1.0, min(mask_width(a), mask_width(b)))
    dist, (iy, ix) = ndimage.distance_transform_edt(a == 0, return_indices=True)
    db = np.where(b > 0, dist, np.inf)
    k = int(np.argmin(db))
    gap = float(db.flat[k])
    if gap > JOIN_GAP_WIDTHS * width:
        raise GeometryError(
            f"these two are {gap:.0f} px apart, more than {JOIN_GAP_WIDTHS:g} x their width ({width:.0f} px): "
            "only pieces of one chromosome that nearly touch can be joined"
        )
    out = a | b
    if gap > 1.5:  # not touching: bridge the gap
        y, x = np.unravel_index(k, a.shape)
        p, q = (int(x), int(y)), (int(ix[y, x]), int(iy[y, x]))
        cv2.line(out, p, q, 1, thickness=max(1, int(round(width))), lineType=cv2.LINE_8)
    return out


def path_band(path: np.ndarray, shape: tuple[int, int], half_width: float) -> np.ndarray:
    """uint8 [H, W]: the pixels within ``half_width`` of the polyline ``path``."""
    from scipy import ndimage

    line = line_mask(path, shape)
    return (ndimage.distance_transform_edt(line == 0) <= half_width).astype(np.uint8)


def separate(mask: np.ndarray, path: np.ndarray, half_width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Take the chromosome whose centre line is ``path`` out of a mask of several crossing ones.

    Args:
        mask: uint8 [H, W], two (or more) chromosomes found as one.
        path: float [K, 2] the reviewer's line along one chromosome, through the crossing.
        half_width: the chromosome's half width (pixels); default: the median distance from the mask's
            border along the path (inside the mask), which is the half width away from the crossing.

    Returns:
        ``(new, rest)`` uint8 [H, W]: ``new`` the pixels of the mask within ``half_width`` (+0.5) of the
        path; ``rest`` the others plus the crossing, i.e. the pixels of ``new`` between two parts of the
        rest that face each other across the path (the convex hull of their pixels next to ``new``): they
        belong to both. Where only the end of the other chromosome lies on the path's (no part of it on
        the far side), it is taken to reach the path (how far it goes is not known; on synthetic crossings
        half-way errs least): those pixels belong to both.

    Raises:
        GeometryError: the path runs mostly outside the mask, or takes all of it, or leaves nothing but
            slivers.
    """
    from scipy import ndimage

    m = (mask > 0).astype(np.uint8)
    line = line_mask(path, m.shape)
    on = line > 0
    inside = float((m[on] > 0).mean()) if on.any() else 0.0
    if inside < SEPARATE_MIN_INSIDE:
        raise GeometryError(
            f"the path runs inside this mask for only {100 * inside:.0f} % of its length: draw it along the middle "
            "of one chromosome, through the crossing"
        )
    if half_width is None:
        d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        half_width = float(np.median(d[on & (m > 0)]))
    hw = max(1.0, float(half_width)) + 0.5
    new = m & path_band(path, m.shape, hw)
    rest0 = m & (1 - new)
    parts = [c for c in _components(rest0) if c.sum() >= MIN_PIECE_PX]
    if not parts:
        raise GeometryError("the path takes the whole mask: nothing is left to separate it from")
    slivers = rest0 & (1 - sum(parts).clip(0, 1).astype(np.uint8))
    new = new | slivers  # bits of the chromosome's own edge outside the band stay with it
    rest0 = rest0 & (1 - slivers)
    crossing = np.zeros_like(m)
    paired: set[int] = set()
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            b = _bridge(parts[i], parts[j], new, path)
            if b.any():
                paired |= {i, j}
                crossing |= b
    for k, part in enumerate(parts):
        if k not in paired:  # an end lying on the chromosome: taken to reach its middle
            crossing |= _reach(part, new, hw + 1.0)
    rest = rest0 | crossing
    if new.sum() < MIN_PIECE_PX:
        raise GeometryError("the path picks out only a sliver: draw it along the middle of one chromosome")
    return new, rest


def _side(pt: np.ndarray, path: np.ndarray) -> float:
    """The sign of the side of ``path`` that the point ``pt`` is on (by the nearest segment)."""
    a, b = path[:-1], path[1:]
    ab = b - a
    t = np.clip(((pt - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    k = int(np.argmin(np.hypot(*(a + t[:, None] * ab - pt).T)))
    d = pt - a[k]
    return float(np.sign(ab[k, 0] * d[1] - ab[k, 1] * d[0]))


def _bridge(p: np.ndarray, q: np.ndarray, band: np.ndarray, path: np.ndarray) -> np.ndarray:
    """The pixels of ``band`` between two parts of the rest that face each other across the path: the
    convex hull of their pixels that touch the band (nothing when both are on one side of the path)."""
    ring = cv2.dilate(band, np.ones((3, 3), np.uint8))
    ends = [np.argwhere((x > 0) & (ring > 0))[:, ::-1].astype(np.float64) for x in (p, q)]
    if not all(len(e) for e in ends) or _side(ends[0].mean(0), path) * _side(ends[1].mean(0), path) >= 0:
        return np.zeros_like(band)
    hull = cv2.convexHull(np.concatenate(ends).astype(np.int32))
    out = np.zeros_like(band)
    cv2.fillConvexPoly(out, hull, 1)
    return out & band


def _reach(part: np.ndarray, band: np.ndarray, depth: float) -> np.ndarray:
    """The pixels of ``band`` that ``part`` (which touches it from one side only) covers if it goes on ``depth``
    pixels into it, in the direction from its centre to where it meets the band."""
    ring = cv2.dilate(band, np.ones((3, 3), np.uint8))
    ends = np.argwhere((part > 0) & (ring > 0))[:, ::-1].astype(np.float64)
    if len(ends) < 2:
        return np.zeros_like(band)
    u = ends.mean(0) - np.argwhere(part > 0)[:, ::-1].mean(0)
    u /= max(float(np.hypot(*u)), 1e-9)
    hull = cv2.convexHull(np.concatenate([ends, ends + depth * u]).astype(np.int32))
    out = np.zeros_like(band)
    cv2.fillConvexPoly(out, hull, 1)
    return out & band


def check_outline(pts: np.ndarray, shape: tuple[int, int], what: str = "outline") -> None:
    """Refuse an outline that leaves the image or crosses itself.

    Raises:
        GeometryError: naming where.
    """
    if len(pts) < 3:
        raise GeometryError(f"the {what} needs at least 3 points, got {len(pts)}")
    _inside(pts, shape, what)
    k = len(pts)
    a = pts
    b = np.roll(pts, -1, axis=0)  # segment i: a[i] -> b[i], the last one closes the outline
    for i in range(k):
        j = np.arange(i + 2, k)
        if i == 0:
            j = j[j != k - 1]  # the closing segment is adjacent to the first
        if not len(j):
            continue
        p, r = a[i], b[i] - a[i]
        q, s = a[j], b[j] - a[j]
        den = r[0] * s[:, 1] - r[1] * s[:, 0]
        qp = q - p
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (qp[:, 0] * s[:, 1] - qp[:, 1] * s[:, 0]) / den
            u = (qp[:, 0] * r[1] - qp[:, 1] * r[0]) / den
        hit = (np.abs(den) > 1e-12) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
        if hit.any():
            x, y = p + t[np.flatnonzero(hit)[0]] * r
            raise GeometryError(f"the {what} crosses itself near ({x:.0f}, {y:.0f}): draw it as one loop")


def outline_mask(pts: np.ndarray, shape: tuple[int, int], what: str = "outline") -> np.ndarray:
    """uint8 [H, W]: the inside of a closed outline (simplified to :data:`OUTLINE_TOLERANCE_PX`, then checked
    with :func:`check_outline`).

    Raises:
        GeometryError: the outline leaves the image, crosses itself, or encloses less than
            :data:`MIN_PIECE_PX` pixels.
    """
    if len(pts) > 3:
        pts = cv2.approxPolyDP(pts.astype(np.float32).reshape(-1, 1, 2), OUTLINE_TOLERANCE_PX, True)
        pts = pts.reshape(-1, 2).astype(np.float64)
    check_outline(pts, shape, what)
    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [_int_pts(pts)], 1, lineType=cv2.LINE_8)
    if out.sum() < MIN_PIECE_PX:
        raise GeometryError(f"the {what} encloses only {int(out.sum())} pixels: draw around the whole chromosome")
    return out


def brush_mask(path: np.ndarray, shape: tuple[int, int], radius: float) -> np.ndarray:
    """uint8 [H, W]: the pixels within ``radius`` of the stroke ``path`` (one point: a disc)."""
    if len(path) == 1:
        path = np.concatenate([path, path])
    return path_band(path, shape, max(0.5, float(radius)))


def polyline_inside(pts: Sequence[Sequence[float]] | np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    """:func:`points_of` and refuse points outside the image."""
    a = points_of(pts, what)
    _inside(a, shape, what)
    return a
