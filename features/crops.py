"""Every crop of a chromosome, from one function: :func:`make_crops` ``(image, masks, specs, boxes) -> Crops``.

The classifier (training, its instance cache, ``evaluate.py --stage cls``, the pipeline), the karyogram and the
review app all take their crops from :func:`make_crops`, so that a classifier sees at inference exactly the
inputs it was trained on. One call measures the spread once (:func:`features.triad.spread_features`: the
feature triad, the per-spread scale set by the instances of at least :data:`~features.triad.MIN_AREA` pixels)
and cuts, per instance:

* the **straight** crop: the strip along the centre line, p arm up, white outside the mask, trimmed to the mask
  (plus :data:`STRAIGHT_MARGIN` px each side across), at the cell's pixel scale;
* the **axis** crop: the image turned to the mask's long axis, p arm up, *not* masked (:func:`axis_crop`);
* each :class:`CropSpec`'s **fitted** crop: the straight or axis crop scaled into the spec's
  ``height x width`` box, aspect ratio kept, padded white (:func:`fit_crop`): what a classifier takes;
* the **shown** crop the karyogram and the review app lay out: the straight crop, or for an instance without a
  centre line the mask turned upright (:func:`upright_crop`), with its centromere row.

:class:`CropSpec`'s defaults are the one home of the classifier's crop box (96 x 32 pixels, straight). An
instance without a centre line (a degenerate mask) has an empty straight crop and so an empty crop in every mode,
and its fitted crops are all white ("nothing there"); the trainer leaves such instances out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .triad import FEATURE_NAMES, MIN_AREA, InstanceFeatures, spread_features

__all__ = ["CROP_MODES", "MIN_AREA", "CropSpec", "Crops", "check_crop_mode", "fit_crop", "make_crops"]

#: how a chromosome is cut out for the classifier: "straight" (the strip along its centre line, white outside
#: its mask) or "axis" (:func:`axis_crop`: the image turned to its long axis, unmasked)
CROP_MODES = ("straight", "axis")
#: white columns kept each side of the mask across a straight crop
STRAIGHT_MARGIN = 1
#: pixels added each side of an axis crop's window, along and across
AXIS_MARGIN = 2.0
#: an axis crop is at least this many times the spread's median chromosome width wide
AXIS_MIN_WIDTH = 1.5
#: white pixels around an upright crop
UPRIGHT_PAD = 2


def check_crop_mode(crop_mode: str) -> str:
    """``crop_mode`` if it is one of :data:`CROP_MODES`, else a ValueError naming them."""
    if crop_mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop_mode!r}: choose one of {', '.join(CROP_MODES)}")
    return crop_mode


@dataclass(frozen=True)
class CropSpec:
    """A classifier's crop: how the chromosome is cut out (``mode``) and the box it is fitted into.

    >>> CropSpec()
    CropSpec(height=96, width=32, mode='straight')
    """

    height: int = 96
    width: int = 32
    mode: str = "straight"

    def __post_init__(self) -> None:
        check_crop_mode(self.mode)
        if int(self.height) < 1 or int(self.width) < 1:
            raise ValueError(f"crop box {self.height}x{self.width} must be at least 1x1 pixels")


@dataclass
class Crops:
    """What :func:`make_crops` made for the N instances of one spread.

    Attributes:
        features: float32 [N, len(features.triad.FEATURE_NAMES)] the feature triad.
        infos: the N :class:`features.triad.InstanceFeatures`.
        measured: bool [N] masks of at least ``MIN_AREA`` pixels: the instances that set the spread's scale.
        straight: N straight crops float32 [h, w] (p arm up, white outside the mask, the cell's pixel scale);
            ``[0, 0]`` for an instance without a centre line.
        fitted: :class:`CropSpec` -> float32 [N, height, width] in [0, 1], the crops each spec's classifier takes
            (all white for an instance without a centre line).
        shown: N crops the karyogram lays out (the straight crop, else the mask upright; never empty).
        centromere_rows: N rows of the centromere in ``shown``.
    """

    features: np.ndarray
    infos: list[InstanceFeatures]
    measured: np.ndarray
    straight: list[np.ndarray]
    fitted: dict[CropSpec, np.ndarray]
    shown: list[np.ndarray]
    centromere_rows: list[float]

    @property
    def ok(self) -> np.ndarray:
        """bool [N]: the instances with a crop (a centre line), the same in every mode."""
        return np.array([c.size > 0 for c in self.straight], bool)


def make_crops(
    image: np.ndarray,
    masks: np.ndarray,
    specs: Iterable[CropSpec] = (),
    *,
    boxes: np.ndarray | None = None,
) -> Crops:
    """Features and every crop of the instances of one spread (module docstring).

    Args:
        image: float32 [H, W] grey in [0, 1], chromosomes dark on light.
        masks: [N, H, W] every instance of the spread (the scale features and the axis crops' minimum width
            are measured over those of at least ``MIN_AREA`` pixels).
        specs: the :class:`CropSpec` s to fit crops for (e.g. one per classifier member); none for the shown
            crops alone.
        boxes: float [N, 4] ``x0, y0, x1, y1`` of each instance (the axis crops' windows); default the masks'
            bounding boxes.
    """
    img = np.asarray(image, np.float32)
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    specs = tuple(dict.fromkeys(specs))
    n = masks.shape[0] if masks.ndim == 3 else 0
    x, infos = spread_features(img, masks)
    measured = np.array([f.area_px >= MIN_AREA for f in infos], bool).reshape(n)
    straight = [straight_crop(f) for f in infos]
    by_mode = {"straight": straight}
    if any(s.mode == "axis" for s in specs):
        if boxes is None:
            boxes = np.array([_box_of(m) for m in masks], np.float64).reshape(n, 4)
        widths = [float(f.mean_width_px) for f, ok in zip(infos, measured) if ok and f.length_px > 0]
        min_w = AXIS_MIN_WIDTH * float(np.median(widths)) if widths else 0.0
        by_mode["axis"] = [
            axis_crop(img, b, m, f, min_width=min_w) if s.size else np.zeros((0, 0), np.float32)
            for b, m, f, s in zip(np.asarray(boxes, np.float64).reshape(n, 4), masks, infos, straight)
        ]
    fitted = {}
    for spec in specs:
        out = np.ones((n, int(spec.height), int(spec.width)), np.float32)
        for i, c in enumerate(by_mode[spec.mode]):
            if c.size:
                out[i] = fit_crop(c, int(spec.height), int(spec.width))
        fitted[spec] = out
    shown, rows = [], []
    for m, f, c in zip(masks, infos, straight):
        row = float(f.centromere_row)
        if c.size == 0:
            c, r = upright_crop(img, m)
            row = float(r) if r is not None else 0.5 * (c.shape[0] - 1)
        shown.append(np.clip(c, 0.0, 1.0).astype(np.float32))
        rows.append(float(np.clip(row, 0, c.shape[0] - 1)))
    return Crops(
        np.asarray(x, np.float32).reshape(n, len(FEATURE_NAMES)), infos, measured, straight, fitted, shown, rows
    )


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = cv2.boundingRect(np.asarray(mask).astype(np.uint8, copy=False))
    return x, y, x + w, y + h


# ---------------------------------------------------------------------------------------------- the cutters
def fit_crop(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``crop`` float [h, w] (white background 1.0) into float32 [height, width] keeping its aspect ratio.

    The crop is scaled by ``min(height / h, width / w)`` (up or down) and centred on a white (1.0) canvas.

    >>> fit_crop(np.zeros((40, 10), np.float32), 96, 32).shape
    (96, 32)
    """
    a = np.asarray(crop, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"crop must be a non-empty 2-D array, got shape {a.shape}")
    h, w = a.shape
    s = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    r = cv2.resize(a, (nw, nh), interpolation=interp)
    out = np.ones((height, width), np.float32)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = np.clip(r, 0.0, 1.0)
    return out


def straight_crop(f: InstanceFeatures) -> np.ndarray:
    """The straightened strip of one instance, p arm up, trimmed to the rows and columns its mask covers.

    Returns:
        float32 [h, w], white (1.0) outside the chromosome; ``[0, 0]`` for an instance without a centre line.
        Its row ``f.centromere_row`` is the centromere.
    """
    crop = np.asarray(f.straightened if f.p_at_start else f.straightened[::-1], np.float32)
    m = np.asarray(f.straightened_mask if f.p_at_start else f.straightened_mask[::-1])
    if crop.ndim != 2 or crop.size == 0 or m.shape != crop.shape or not m.any():
        return np.zeros((0, 0), np.float32)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    # the strip is a fixed 32 px wide whatever the chromosome's width: trim it so that fitting into
    # the crop box scales every chromosome to fill the box (its size is in the "scale" features)
    c0, c1 = max(cols[0] - STRAIGHT_MARGIN, 0), cols[-1] + 1 + STRAIGHT_MARGIN
    return np.ascontiguousarray(crop[rows[0] : rows[-1] + 1, c0:c1])


def axis_crop(image: np.ndarray, box: np.ndarray, mask: np.ndarray, f: Any, *, min_width: float = 0.0) -> np.ndarray:
    """The image around one instance, turned so that its long axis is vertical, p arm up, *not* masked.

    Unlike the straight crop, the pixels do not depend on the mask's outline: where two chromosomes cross
    or touch, a derived (or predicted) mask is often a fragment of the chromosome or takes in part of the
    neighbour, and the straightened strip then shows a piece or a chimera. Here the mask only gives the
    direction of the long axis (its second moments) and, with its centre line, which end is the p arm;
    the window is the instance's box seen along that axis.

    Args:
        image: float32 [H, W] grey, chromosomes dark on light.
        box: ``(x0, y0, x1, y1)`` of the instance in ``image`` pixels.
        mask: uint8 [H, W] its mask.
        f: its :class:`features.triad.InstanceFeatures` (centre line and p-arm end).
        min_width: the window is at least this wide (pixels; e.g. 1.5x the spread's median chromosome
            width, so that a sliver of a mask still gets the whole chromosome's width).

    Returns:
        float32 [h, w] (white, 1.0, outside the image); ``[0, 0]`` for an empty instance. Rows run along the
        axis (row 0 at the p end), columns across it; the window covers the box's extent along the axis and
        the mask's extent across it (both about the box's centre), plus 2 px each side, at least
        ``min_width`` wide but never wider than the box across the axis.
    """
    line = np.asarray(getattr(f, "centerline", np.zeros((0, 2))), np.float64).reshape(-1, 2)
    m_u8 = np.asarray(mask).astype(np.uint8, copy=False)
    bx, by, bw, bh = cv2.boundingRect(m_u8)  # the mask's own extent: nonzero() over it, not the whole image
    ys, xs = np.nonzero(m_u8[by : by + bh, bx : bx + bw])
    ys, xs = ys + by, xs + bx
    if len(xs) < 2 or len(line) == 0:
        return np.zeros((0, 0), np.float32)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    cov = np.cov(pts, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    u = evecs[:, int(np.argmax(evals))]  # unit long axis (x, y)
    nrm = np.array([-u[1], u[0]])
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    c = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    p_end = line[0] if f.p_at_start else line[-1]
    if float((p_end - c) @ u) > 0:  # the p arm at the start of the axis: row 0
        u, nrm = -u, -nrm
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - c
    half_len = float(np.abs(corners @ u).max()) + AXIS_MARGIN
    box_half_w = float(np.abs(corners @ nrm).max())
    mask_half_w = float(np.abs((pts + 0.5 - c) @ nrm).max())
    half_w = min(max(mask_half_w, min_width / 2.0), box_half_w) + AXIS_MARGIN
    h, w = max(1, int(round(2 * half_len))), max(1, int(round(2 * half_w)))
    # output (col, row) -> image (x, y): centre of the window on the box centre
    m = np.array(
        [
            [nrm[0], u[0], c[0] - nrm[0] * (w - 1) / 2.0 - u[0] * (h - 1) / 2.0],
            [nrm[1], u[1], c[1] - nrm[1] * (w - 1) / 2.0 - u[1] * (h - 1) / 2.0],
        ],
        np.float64,
    )
    img = np.ascontiguousarray(image, np.float32)
    out = cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=1.0
    )
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def upright_crop(
    image: np.ndarray,
    mask: np.ndarray,
    box: Sequence[float] | np.ndarray | None = None,
    *,
    centromere: Sequence[float] | np.ndarray | None = None,
    p_dir: Sequence[float] | np.ndarray | None = None,
    pad: int = UPRIGHT_PAD,
) -> tuple[np.ndarray, float | None]:
    """The masked region rotated so that the mask's principal axis is vertical (for a mask without a centre line).

    Args:
        image: float32 [H, W] grey in [0, 1], dark chromosomes on light.
        mask: [H, W] nonzero on the chromosome.
        box: ``x1, y1, x2, y2`` pixels bounding the mask (speeds up large images), or None.
        centromere: ``(x, y)`` of the centromere in the image, or None.
        p_dir: ``(dx, dy)`` from the centromere towards the p-arm end, or None. With ``p_dir`` the p arm
            is put up; with only ``centromere`` the end nearer the centromere (the short arm) is put up.
        pad: white pixels around the result.

    Returns:
        ``(crop, centromere_row)``: crop float32 [h, w] in [0, 1], white (1.0) outside the mask; the row of
        the centromere in the crop (None when ``centromere`` is None). A bent chromosome stays bent.
    """
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask) > 0
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and mask {m.shape} must have the same shape [H, W]")
    if box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        x1, y1 = max(x1 - 2, 0), max(y1 - 2, 0)
        x2, y2 = min(x2 + 2, m.shape[1]), min(y2 + 2, m.shape[0])
    else:
        x1 = y1 = 0
        y2, x2 = m.shape
    sub_m = m[y1:y2, x1:x2]
    ys, xs = np.nonzero(sub_m)
    if ys.size == 0:
        return np.ones((1, 1), np.float32), None
    pts = np.stack([xs, ys], 1).astype(np.float64)
    c = pts.mean(0)
    cov = np.cov((pts - c).T) if ys.size > 1 else np.eye(2)
    w_, v_ = np.linalg.eigh(cov)
    v = v_[:, int(np.argmax(w_))]  # principal axis (dx, dy), unit
    cen = None if centromere is None else np.asarray(centromere, np.float64) - (x1, y1)
    if p_dir is not None and np.all(np.isfinite(p_dir)):
        if float(np.dot(v, np.asarray(p_dir, np.float64))) > 0:  # v must point away from the p arm (down)
            v = -v
    elif cen is not None and np.all(np.isfinite(cen)):
        proj = (pts - c) @ v
        if float((cen - c) @ v) > 0.5 * (proj.min() + proj.max()):  # centromere in the lower half: flip
            v = -v
    elif v[1] < 0:
        v = -v
    rot = np.array([[v[1], -v[0]], [v[0], v[1]]])  # rot @ v = (0, 1)
    q = (pts - c) @ rot.T
    lo = q.min(0) - pad
    hi = q.max(0) + pad
    out_w, out_h = int(np.ceil(hi[0] - lo[0])) + 1, int(np.ceil(hi[1] - lo[1])) + 1
    aff = np.hstack([rot, (-rot @ c - lo)[:, None]]).astype(np.float64)
    sub_i = img[y1:y2, x1:x2]
    fg = np.where(sub_m, sub_i, 1.0).astype(np.float32)
    crop = cv2.warpAffine(fg, aff, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=1.0)
    mw = cv2.warpAffine(sub_m.astype(np.float32), aff, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    crop = np.where(mw > 0.5, crop, 1.0).astype(np.float32)
    row = None
    if cen is not None and np.all(np.isfinite(cen)):
        row = float((aff[:, :2] @ cen + aff[:, 2])[1])
    return np.clip(crop, 0.0, 1.0), row
