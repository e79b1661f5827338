"""Medial axis (centre line) of one chromosome mask, and straightening along it.

Method of :func:`centerline`:

1. crop the mask to its box (+ margin), smooth it slightly (Gaussian blur, threshold 0.5) so that
   ragged outlines do not sprout skeleton spurs;
2. skeletonize (``skimage.morphology.skeletonize``) and turn the skeleton into an 8-connected graph
   (edge weights 1 or sqrt(2) px);
3. choose the path: among the skeleton end points (degree 1) every pair is scored by its geodesic
   length divided by ``1 + 0.35 * turning`` (total absolute turning angle in radians of the smoothed
   path). Spurs lose because they are short, and at a crossing of two chromosomes the straight
   continuation beats the 90 degree turn. A skeleton without end points (a ring) or with very many
   uses the longest geodesic path (two Dijkstra sweeps);
4. smooth the pixel path (Gaussian, sigma ~2 px), trim each end by about half the local width (the
   skeleton forks towards the corners there) and extend it straight along its end direction until it
   leaves the mask, so the polyline length is the full chromosome length;
5. resample at 1 px spacing.

Blobs and tiny masks (skeleton shorter than the mask's width) fall back to the major axis of the
mask's second moments, extended to the boundary both ways. An empty mask gives ``float32[0, 2]``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.morphology import skeletonize

__all__ = [
    "centerline",
    "line_length",
    "resample_line",
    "resample_profile",
    "straighten",
    "straighten_cover",
    "tangents",
    "width_profile",
]

_MAX_ENDPOINTS = 12
_TURN_PENALTY = 0.35


# ---------------------------------------------------------------------------------------------- helpers
def line_length(line: np.ndarray) -> float:
    """Polyline length in pixels of ``line`` float[K, 2] (0.0 for K < 2)."""
    line = np.asarray(line, np.float64).reshape(-1, 2)
    if len(line) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(line, axis=0), axis=1).sum())


def resample_line(line: np.ndarray, n: int) -> np.ndarray:
    """``n`` points float32[n, 2] equally spaced in arc length along ``line`` [K, 2], ends kept.

    A line of one point (or zero length) is repeated; ``n <= 0`` or an empty line gives ``[0, 2]``.
    """
    line = np.asarray(line, np.float64).reshape(-1, 2)
    if n <= 0 or len(line) == 0:
        return np.zeros((0, 2), np.float32)
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if len(line) == 1 or s[-1] <= 1e-9:
        return np.repeat(line[:1], n, axis=0).astype(np.float32)
    keep = np.concatenate([[True], seg > 1e-9])
    s, pts = s[keep], line[keep]
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], 1).astype(np.float32)


def tangents(line: np.ndarray) -> np.ndarray:
    """Unit tangents float32[K, 2] of ``line`` [K, 2] (central differences; (1, 0) where undefined)."""
    line = np.asarray(line, np.float64).reshape(-1, 2)
    if len(line) < 2:
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(line), 1))
    t = np.gradient(line, axis=0)
    n = np.linalg.norm(t, axis=1, keepdims=True)
    bad = n[:, 0] < 1e-9
    t = np.where(n > 1e-9, t / np.maximum(n, 1e-9), 0.0)
    if bad.any():
        t[bad] = (1.0, 0.0)
    return t.astype(np.float32)


def _inside(mask: np.ndarray, p: np.ndarray) -> bool:
    x, y = int(np.floor(p[0] + 0.5)), int(np.floor(p[1] + 0.5))
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])


def _march(
    mask: np.ndarray, start: np.ndarray, direction: np.ndarray, max_dist: float, step: float = 0.25
) -> np.ndarray:
    """Walk from ``start`` along unit ``direction`` while inside ``mask``; return the boundary point.

    The boundary is taken half a step before the first sample whose nearest pixel is background, i.e.
    at the pixel edge (a rod covering pixel centres 0..99 ends at -0.5 and 99.5: length 100).
    """
    d = direction / max(float(np.linalg.norm(direction)), 1e-9)
    p = np.asarray(start, np.float64)
    if not _inside(mask, p):
        return p
    t = 0.0
    while t < max_dist:
        q = p + (t + step) * d
        if not _inside(mask, q):
            return p + (t + 0.5 * step) * d
        t += step
    return p + t * d


def _moment_axis(mask: np.ndarray) -> np.ndarray:
    """Major axis of the mask's second moments, extended to the boundary: float32[K, 2] (x, y)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((0, 2), np.float32)
    c = np.array([xs.mean(), ys.mean()])
    if len(xs) == 1:
        # one pixel: a unit segment across it (length 1 px)
        return np.array([[c[0], c[1] - 0.5], [c[0], c[1] + 0.5]], np.float32)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    w, v = np.linalg.eigh(cov + 1e-9 * np.eye(2))
    d = v[:, int(np.argmax(w))]
    if abs(d[1]) >= abs(d[0]):  # deterministic orientation: top to bottom, else left to right
        d = d if d[1] > 0 else -d
    else:
        d = d if d[0] > 0 else -d
    start = c
    if not _inside(mask, start):  # centroid outside (ring, crescent): start from the nearest mask pixel
        k = int(np.argmin((xs - c[0]) ** 2 + (ys - c[1]) ** 2))
        start = np.array([xs[k], ys[k]], np.float64)
    diag = float(np.hypot(*mask.shape)) + 2
    a = _march(mask, start, -d, diag)
    b = _march(mask, start, d, diag)
    n = max(2, int(np.ceil(np.linalg.norm(b - a))) + 1)
    return resample_line(np.stack([a, b]), n)


def _skeleton_graph(skel: np.ndarray) -> tuple[np.ndarray, object]:
    """Pixel coordinates int[M, 2] (y, x) of the skeleton and its sparse 8-neighbour distance graph."""
    ys, xs = np.nonzero(skel)
    idx = -np.ones(skel.shape, np.int64)
    idx[ys, xs] = np.arange(len(ys))
    rows, cols, w = [], [], []
    h, wd = skel.shape
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < wd)
        j = np.full(len(ys), -1)
        j[ok] = idx[ny[ok], nx[ok]]
        ok = j >= 0
        rows.append(np.arange(len(ys))[ok])
        cols.append(j[ok])
        w.append(np.full(ok.sum(), np.hypot(dy, dx)))
    r, c, ww = np.concatenate(rows), np.concatenate(cols), np.concatenate(w)
    m = len(ys)
    g = coo_matrix((np.concatenate([ww, ww]), (np.concatenate([r, c]), np.concatenate([c, r]))), shape=(m, m)).tocsr()
    return np.stack([ys, xs], 1), g


def _path(pred: np.ndarray, a: int, b: int) -> list[int]:
    out = [b]
    while out[-1] != a and pred[out[-1]] >= 0:
        out.append(int(pred[out[-1]]))
    return out[::-1]


def _smooth_path(pts: np.ndarray, sigma: float) -> np.ndarray:
    if len(pts) < 3 or sigma <= 0:
        return pts.astype(np.float64)
    return ndimage.gaussian_filter1d(pts.astype(np.float64), sigma, axis=0, mode="nearest")


def _turning(pts: np.ndarray, spacing: float = 5.0) -> float:
    """Total absolute turning angle (radians) of a polyline sampled every ``spacing`` px."""
    n = int(line_length(pts) / spacing) + 1
    if n < 3:
        return 0.0
    q = resample_line(pts, n).astype(np.float64)
    d = np.diff(q, axis=0)
    ang = np.arctan2(d[:, 1], d[:, 0])
    da = np.angle(np.exp(1j * np.diff(ang)))
    return float(np.abs(da).sum())


def _skeleton_path(mask: np.ndarray, dist: np.ndarray) -> np.ndarray | None:
    """Best end-to-end skeleton path as float[K, 2] (x, y) pixel centres, or None if no skeleton."""
    skel = skeletonize(mask > 0)
    if skel.sum() < 2:
        return None
    pix, g = _skeleton_graph(skel)
    deg = np.diff(g.indptr)
    # use the largest connected piece of the skeleton only
    comp, _ = ndimage.label(skel, structure=np.ones((3, 3)))
    lab = comp[pix[:, 0], pix[:, 1]]
    big = np.bincount(lab).argmax()
    ends = np.flatnonzero((deg == 1) & (lab == big))
    nodes = np.flatnonzero(lab == big)
    if 2 <= len(ends) <= _MAX_ENDPOINTS:
        dmat, pred = dijkstra(g, indices=ends, return_predecessors=True)
        best, best_score = None, -np.inf
        for i in range(len(ends)):
            for j in range(i + 1, len(ends)):
                length = dmat[i, ends[j]]
                if not np.isfinite(length):
                    continue
                p = pix[_path(pred[i], ends[i], ends[j])][:, ::-1]
                score = length / (1.0 + _TURN_PENALTY * _turning(_smooth_path(p, 2.0)))
                if score > best_score:
                    best, best_score = p, score
        if best is not None:
            return best.astype(np.float64)
    # ring / many branches: longest geodesic path by two sweeps
    d0 = dijkstra(g, indices=int(nodes[0]))
    d0[~np.isfinite(d0)] = -1
    a = int(np.argmax(d0))
    d1, pred = dijkstra(g, indices=a, return_predecessors=True)
    d1[~np.isfinite(d1)] = -1
    b = int(np.argmax(d1))
    return pix[_path(pred, a, b)][:, ::-1].astype(np.float64)


def _orient(line: np.ndarray) -> np.ndarray:
    """Deterministic direction: start at the top end (smaller y), ties by smaller x."""
    if len(line) >= 2:
        a, b = line[0], line[-1]
        if (b[1] < a[1] - 1e-6) or (abs(b[1] - a[1]) <= 1e-6 and b[0] < a[0]):
            return line[::-1].copy()
    return line


# ---------------------------------------------------------------------------------------------- API
def centerline(mask: np.ndarray) -> np.ndarray:
    """Ordered medial axis of one chromosome mask, from one end to the other.

    Args:
        mask: uint8/bool [H, W], nonzero = chromosome (one instance; only its largest connected
            component is used).

    Returns:
        float32 [K, 2] ``(x, y)`` image coordinates (pixel centres are integers), spaced 1 px apart,
        whose polyline length is the chromosome length in pixels (ends reach the mask boundary).
        Oriented to start at the upper end (smaller y). ``[0, 2]`` for an empty mask; a 1-pixel mask
        gives a 1 px segment.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or not m.any():
        return np.zeros((0, 2), np.float32)
    m = m > 0
    lab, n = ndimage.label(m, structure=np.ones((3, 3)))
    if n > 1:
        m = lab == (np.bincount(lab.ravel())[1:].argmax() + 1)
    ys, xs = np.nonzero(m)
    pad = 4
    y0, x0 = max(0, ys.min() - pad), max(0, xs.min() - pad)
    y1, x1 = min(m.shape[0], ys.max() + pad + 1), min(m.shape[1], xs.max() + pad + 1)
    crop = m[y0:y1, x0:x1]
    off = np.array([x0, y0], np.float64)
    area = int(crop.sum())

    # smoothing for the skeleton only (the boundary marching uses the true mask)
    dist = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    half_w = float(dist.max())
    if area >= 30 and half_w >= 2:
        sm = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 1.0) > 0.5
        sm &= crop
        if sm.sum() < 0.8 * area:
            sm = crop
    else:
        sm = crop
    path = _skeleton_path(sm, dist) if area >= 6 else None
    if path is None or line_length(path) < max(2.0, 1.0 * half_w):
        line = _moment_axis(crop)
        return _orient(line + off).astype(np.float32) if len(line) else line

    p = _smooth_path(path, 2.0 if len(path) > 8 else 0.0)
    # trim each end by ~ the local half width (skeleton forks towards corners near the ends)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    total = s[-1]

    def local_hw(pt: np.ndarray) -> float:
        yy = int(np.clip(round(pt[1]), 0, crop.shape[0] - 1))
        xx = int(np.clip(round(pt[0]), 0, crop.shape[1] - 1))
        return float(dist[yy, xx])

    trim = min(0.3 * total, max(local_hw(p[0]), local_hw(p[-1]), 1.0))
    keep = (s >= trim) & (s <= total - trim)
    if keep.sum() >= 2:
        p = p[keep]
    diag = float(np.hypot(*crop.shape)) + 2
    look = min(max(2.0, 1.5 * half_w), 0.25 * line_length(p) + 1.0)

    def end_dir(q: np.ndarray) -> np.ndarray:
        # direction from the point ``look`` px inside the line to its end
        ss = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(q, axis=0), axis=1))])
        k = int(np.searchsorted(ss, ss[-1] - look))
        k = min(max(k, 0), len(q) - 2)
        d = q[-1] - q[k]
        return d if np.linalg.norm(d) > 1e-9 else q[-1] - q[-2]

    head = _march(crop, p[0], end_dir(p[::-1]), diag)
    tail = _march(crop, p[-1], end_dir(p), diag)
    full = np.concatenate([head[None], p, tail[None]])
    n = max(2, int(np.ceil(line_length(full))) + 1)
    out = resample_line(full, n).astype(np.float64) + off
    return _orient(out).astype(np.float32)


def straighten(
    image: np.ndarray,
    mask: np.ndarray,
    line: np.ndarray,
    *,
    width: int = 32,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a chromosome along its centre line into an upright strip.

    Row ``i`` samples the normal to ``line`` at arc length ``i`` (rows are 1 px apart when
    ``length`` is None, else ``length`` rows spread evenly from the first to the last point);
    columns are 1 px apart, centred on the line, left = the normal ``(-t_y, t_x)`` side.

    Args:
        image: float32 [H, W] grey, chromosomes dark on light.
        mask: uint8 [H, W] instance mask.
        line: float32 [K, 2] ``(x, y)`` centre line (first row = ``line[0]``).
        width: strip width in pixels (columns).
        length: number of rows, or None for the natural length ``round(line length) + 1``.

    Returns:
        ``(strip float32[L, width], strip_mask uint8[L, width])``; strip pixels outside the mask are
        1.0 (white). An empty line gives ``[0, width]`` arrays (or ``length`` white rows if given).
    """
    width = max(1, int(width))
    line = np.asarray(line, np.float64).reshape(-1, 2)
    img = np.asarray(image, np.float32)
    msk = (np.asarray(mask) > 0).astype(np.uint8)
    if len(line) == 0 or img.ndim != 2 or img.size == 0:
        n = 0 if length is None else max(0, int(length))
        return np.ones((n, width), np.float32), np.zeros((n, width), np.uint8)
    n = int(round(line_length(line))) + 1 if length is None else max(1, int(length))
    pts = resample_line(line, n).astype(np.float64)
    tan = tangents(resample_line(line, max(n, 2)))[:n].astype(np.float64) if n > 1 else tangents(line)[:1]
    if n > 2:  # smooth tangents over a few px so the normals do not jitter on pixel steps
        tan = ndimage.gaussian_filter1d(tan, 2.0, axis=0, mode="nearest")
        tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
    nrm = np.stack([-tan[:, 1], tan[:, 0]], 1)
    off = np.arange(width, dtype=np.float64) - (width - 1) / 2.0
    mx = (pts[:, None, 0] + off[None, :] * nrm[:, None, 0]).astype(np.float32)
    my = (pts[:, None, 1] + off[None, :] * nrm[:, None, 1]).astype(np.float32)
    strip = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)
    smask = cv2.remap(msk, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    strip = np.where(smask > 0, strip, 1.0).astype(np.float32)
    return strip, smask.astype(np.uint8)


def width_profile(strip_mask: np.ndarray, strip_cover: np.ndarray | None = None) -> np.ndarray:
    """Chromosome width in pixels at each row of a straightened mask: float32[L].

    The width of a row is the length of the run of mask pixels that contains the centre column (or,
    if the centre pixel is background, the run nearest to it), so a neighbouring part of the same
    bent chromosome seen across the bend is not counted. With ``strip_cover`` (float [L, W], the mask
    resampled with linear interpolation, see :func:`straighten_cover`) the width is the sum of the
    coverage over that run widened by 1 px each side: sub-pixel, without the 1 px steps of a
    nearest-neighbour mask. Rows without mask pixels give 0.
    """
    sm = np.asarray(strip_mask) > 0
    if sm.ndim != 2 or sm.shape[0] == 0:
        return np.zeros((0,), np.float32)
    cover = None if strip_cover is None else np.asarray(strip_cover, np.float64)
    L, W = sm.shape
    c = (W - 1) / 2.0
    out = np.zeros(L, np.float32)
    for i in range(L):
        cols = np.flatnonzero(sm[i])
        if len(cols) == 0:
            continue
        # split into runs, pick the one containing / nearest the centre
        breaks = np.flatnonzero(np.diff(cols) > 1)
        starts = np.concatenate([[cols[0]], cols[breaks + 1]])
        ends = np.concatenate([cols[breaks], [cols[-1]]])
        dist = np.maximum(0.0, np.maximum(starts - c, c - ends))
        k = int(np.argmin(dist))
        if cover is not None and cover.shape == sm.shape:
            out[i] = float(cover[i, max(0, starts[k] - 1) : ends[k] + 2].sum())
        else:
            out[i] = ends[k] - starts[k] + 1
    return out


def straighten_cover(mask: np.ndarray, line: np.ndarray, *, width: int = 32) -> np.ndarray:
    """The mask resampled along ``line`` like :func:`straighten` but with linear interpolation:
    float32 [L, width] coverage in [0, 1] (for sub-pixel widths)."""
    m = (np.asarray(mask) > 0).astype(np.float32)
    cov, _ = straighten(1.0 - m, np.ones_like(m, np.uint8), line, width=width)
    return np.clip(1.0 - cov, 0.0, 1.0).astype(np.float32)


def resample_profile(p: np.ndarray, n: int = 64) -> np.ndarray:
    """Linear resampling of a 1-D profile float[L] to ``n`` points (ends kept): float32[n].

    Empty input gives zeros; a single value is repeated.
    """
    p = np.asarray(p, np.float64).reshape(-1)
    if n <= 0:
        return np.zeros((0,), np.float32)
    if len(p) == 0:
        return np.zeros(n, np.float32)
    if len(p) == 1:
        return np.full(n, p[0], np.float32)
    return np.interp(np.linspace(0, len(p) - 1, n), np.arange(len(p)), p).astype(np.float32)
