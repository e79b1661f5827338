"""Paired augmentations: every transform moves the image, boxes, masks, centromeres and p_dir together.

A transform is a callable ``(record, rng: np.random.Generator) -> record`` (see :data:`datasets.base.Transform`).
Coordinates follow the project convention: points (centromeres) have integer pixel centres (pixel
column ``j`` is at ``x = j``); boxes are ``x1 = first column, x2 = last column + 1``. Geometric
transforms recompute boxes from the masks when there are masks (or transform the box corners and take
their bounding box when there are none), drop instances whose mask (or box) vanishes from every array
at once, and mark centromeres that leave the image as unknown (NaN, with their p_dir). Photometric
transforms touch the image only and keep it in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import cv2
import numpy as np

from .record import KaryoRecord, masks_to_boxes

__all__ = [
    "BrightnessContrastGamma",
    "Compose",
    "FreeRotation",
    "GaussianBlur",
    "GaussianNoise",
    "HorizontalFlip",
    "JpegQuality",
    "LAB_VARIANTS",
    "LocalContrast",
    "RandomCrop",
    "RandomScale",
    "ResizeLongest",
    "ScaleBy",
    "ScaleCrop",
    "Sharpen",
    "Rot90",
    "VerticalFlip",
    "affine_record",
    "default_train_transforms",
    "detector_transforms",
    "lab_train_transforms",
]


# ---------------------------------------------------------------------------------------------- helpers
def _finish(rec: KaryoRecord, *, boxes_moved: bool = False) -> KaryoRecord:
    """Recompute boxes from masks, drop vanished instances, NaN centromeres outside the image.

    A record whose boxes were annotated around derived masks carries the annotation's margin in
    ``meta["box_margin"]`` (pixels, see :func:`box_margin`): its boxes become the masks' tight boxes grown by
    that margin, so that the detector learns the annotators' boxes and not the masks' tight ones. With
    ``boxes_moved`` the transform has already moved such boxes exactly (a resize, a crop): they are only
    clipped to the image.
    """
    margin = rec.meta.get("box_margin")
    if rec.masks is not None:
        keep = rec.masks.reshape(len(rec), -1).any(1) if len(rec) else np.zeros(0, bool)
        if margin is None:
            rec.boxes = masks_to_boxes(rec.masks)
        else:
            if boxes_moved:
                rec.boxes = _clip_boxes(rec.boxes, rec.width, rec.height)
            else:
                rec.boxes = grown_mask_boxes(rec.masks, float(margin))
            keep &= (rec.boxes[:, 2] - rec.boxes[:, 0] >= 1) & (rec.boxes[:, 3] - rec.boxes[:, 1] >= 1)
    else:
        b = rec.boxes = _clip_boxes(rec.boxes, rec.width, rec.height)
        keep = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
    if rec.centromeres is not None and len(rec):
        c = rec.centromeres
        out = ~((c[:, 0] >= -0.5) & (c[:, 0] <= rec.width - 0.5) & (c[:, 1] >= -0.5) & (c[:, 1] <= rec.height - 0.5))
        out &= np.isfinite(c).all(1)
        c[out] = np.nan
        if rec.p_dir is not None:
            rec.p_dir[out] = np.nan
    if not keep.all():
        rec = rec.select(keep)
    return rec


def grown_mask_boxes(masks: np.ndarray, margin: float) -> np.ndarray:
    """The tight boxes of ``masks`` [N, H, W] grown by ``margin`` pixels a side, clipped to the image."""
    m = float(margin)
    boxes = masks_to_boxes(masks) + np.array([-m, -m, m, m], np.float32)
    return _clip_boxes(boxes, masks.shape[2], masks.shape[1])


def _clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    b = np.asarray(boxes, np.float32).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def _warp_masks(masks: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour affine warp of masks uint8 [N, H, W] by the 2x3 matrix ``m`` to ``size`` = (W', H')."""
    n = masks.shape[0]
    out = np.zeros((n, size[1], size[0]), np.uint8)
    for i in range(0, n, 4):  # OpenCV warps up to 4 channels at a time
        chunk = np.ascontiguousarray(np.moveaxis(masks[i : i + 4], 0, -1))
        w = cv2.warpAffine(chunk, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out[i : i + 4] = np.moveaxis(w.reshape(size[1], size[0], -1), -1, 0)
    return out


def _background(image: np.ndarray) -> float:
    """Fill value for uncovered canvas: the median of the image's border pixels."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return float(np.median(border))


def affine_record(
    rec: KaryoRecord, m: np.ndarray, size: tuple[int, int], *, interpolation: int = cv2.INTER_LINEAR
) -> KaryoRecord:
    """Apply the 2x3 affine matrix ``m`` (pixel-centre coordinates, as OpenCV) to a whole record.

    Args:
        rec: the record.
        m: float [2, 3]; maps input ``(x, y)`` to output ``m @ (x, y, 1)``.
        size: output ``(width, height)`` in pixels.
        interpolation: for the image (masks always use nearest neighbour).
    """
    m = np.asarray(m, np.float64)
    img = cv2.warpAffine(
        rec.image, m, size, flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=_background(rec.image)
    )
    out = replace(rec, image=np.clip(img, 0.0, 1.0).astype(np.float32), meta=dict(rec.meta))
    a = m[:, :2]
    if rec.masks is not None:
        out.masks = _warp_masks(rec.masks, m, size)
    else:
        b = rec.boxes.astype(np.float64)
        # box corners in pixel-centre coordinates: the outer edges are at x1 - 0.5 and x2 - 0.5
        xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0]], 1) - 0.5
        ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]], 1) - 0.5
        tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] + 0.5
        ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] + 0.5
        out.boxes = np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], 1).astype(np.float32)
    if rec.centromeres is not None:
        c = rec.centromeres.astype(np.float64)
        out.centromeres = (c @ a.T + m[:, 2]).astype(np.float32)
    if rec.p_dir is not None:
        d = rec.p_dir.astype(np.float64) @ a.T
        with np.errstate(invalid="ignore", divide="ignore"):
            d = d / np.linalg.norm(d, axis=1, keepdims=True)
        out.p_dir = d.astype(np.float32)
    return _finish(out)


# ---------------------------------------------------------------------------------------------- geometric
class HorizontalFlip:
    """Mirror left-right: ``x -> W - 1 - x`` for points, ``dx -> -dx`` for p_dir."""

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        w = rec.width
        out = rec.copy()
        out.image = np.ascontiguousarray(rec.image[:, ::-1])
        if rec.masks is not None:
            out.masks = np.ascontiguousarray(rec.masks[:, :, ::-1])
        out.boxes[:, [0, 2]] = w - rec.boxes[:, [2, 0]]
        if out.centromeres is not None:
            out.centromeres[:, 0] = w - 1 - rec.centromeres[:, 0]
        if out.p_dir is not None:
            out.p_dir[:, 0] = -rec.p_dir[:, 0]
        return out


class VerticalFlip:
    """Mirror top-bottom: ``y -> H - 1 - y`` for points, ``dy -> -dy`` for p_dir."""

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        h = rec.height
        out = rec.copy()
        out.image = np.ascontiguousarray(rec.image[::-1])
        if rec.masks is not None:
            out.masks = np.ascontiguousarray(rec.masks[:, ::-1])
        out.boxes[:, [1, 3]] = h - rec.boxes[:, [3, 1]]
        if out.centromeres is not None:
            out.centromeres[:, 1] = h - 1 - rec.centromeres[:, 1]
        if out.p_dir is not None:
            out.p_dir[:, 1] = -rec.p_dir[:, 1]
        return out


class Rot90:
    """Rotate by ``k`` quarter turns counter-clockwise as displayed (``np.rot90``); ``k=None`` draws 1..3."""

    def __init__(self, k: int | None = None) -> None:
        self.k = k

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        if self.k is None:
            if rng is None:
                raise ValueError("Rot90(k=None) draws k from rng; pass a numpy Generator")
            k = int(rng.integers(1, 4))
        else:
            k = int(self.k) % 4
        out = rec.copy()
        for _ in range(k):
            out = self._once(out)
        return out

    @staticmethod
    def _once(rec: KaryoRecord) -> KaryoRecord:
        # np.rot90: new[i, j] = old[j, W-1-i]  =>  (x, y) -> (y, W - 1 - x)
        w = rec.width
        out = rec.copy()
        out.image = np.ascontiguousarray(np.rot90(rec.image))
        if rec.masks is not None:
            out.masks = np.ascontiguousarray(np.rot90(rec.masks, axes=(1, 2)))
        b = rec.boxes
        out.boxes = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], 1).astype(np.float32)
        if rec.centromeres is not None:
            c = rec.centromeres
            out.centromeres = np.stack([c[:, 1], w - 1 - c[:, 0]], 1).astype(np.float32)
        if rec.p_dir is not None:
            d = rec.p_dir
            out.p_dir = np.stack([d[:, 1], -d[:, 0]], 1).astype(np.float32)
        return out


class FreeRotation:
    """Rotate by an angle drawn uniformly from ``[-max_deg, max_deg]`` (positive = counter-clockwise as displayed).

    Args:
        max_deg: largest rotation, degrees.
        expand: grow the canvas so nothing is cut off (default); otherwise keep ``H x W`` and drop
            instances that leave it.
        angle: a fixed angle in degrees instead of a random one (for tests and inference).
    """

    def __init__(self, max_deg: float = 180.0, *, expand: bool = True, angle: float | None = None) -> None:
        self.max_deg = float(max_deg)
        self.expand = expand
        self.angle = angle

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        if self.angle is not None:
            ang = float(self.angle)
        else:
            if rng is None:
                raise ValueError("FreeRotation draws its angle from rng; pass a numpy Generator or angle=")
            ang = float(rng.uniform(-self.max_deg, self.max_deg))
        h, w = rec.height, rec.width
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        m = cv2.getRotationMatrix2D((cx, cy), ang, 1.0)
        if self.expand:
            c, s = abs(math.cos(math.radians(ang))), abs(math.sin(math.radians(ang)))
            nw, nh = int(math.ceil(w * c + h * s - 1e-6)), int(math.ceil(w * s + h * c - 1e-6))
            m[0, 2] += (nw - 1) / 2.0 - cx
            m[1, 2] += (nh - 1) / 2.0 - cy
        else:
            nw, nh = w, h
        return affine_record(rec, m, (nw, nh))


def _resize(rec: KaryoRecord, nw: int, nh: int) -> KaryoRecord:
    """Resize a record to ``nw x nh`` pixels (area interpolation when shrinking, linear when growing)."""
    h, w = rec.height, rec.width
    if (nw, nh) == (w, h):
        return rec.copy()
    sx, sy = nw / w, nh / h
    interp = cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR
    out = rec.copy()
    out.image = np.clip(cv2.resize(rec.image, (nw, nh), interpolation=interp), 0, 1).astype(np.float32)
    if rec.masks is not None:
        out.masks = np.zeros((len(rec), nh, nw), np.uint8)
        for i in range(0, len(rec), 4):
            chunk = np.ascontiguousarray(np.moveaxis(rec.masks[i : i + 4], 0, -1))
            r = cv2.resize(chunk, (nw, nh), interpolation=cv2.INTER_NEAREST)
            out.masks[i : i + 4] = np.moveaxis(r.reshape(nh, nw, -1), -1, 0)
    if rec.masks is None or "box_margin" in rec.meta:
        out.boxes = rec.boxes * np.array([sx, sy, sx, sy], np.float32)
    if "box_margin" in rec.meta:
        out.meta["box_margin"] = float(rec.meta["box_margin"]) * (sx + sy) / 2.0
    if rec.centromeres is not None:
        # pixel centre x maps to (x + 0.5) * sx - 0.5, as in cv2.resize
        out.centromeres = ((rec.centromeres + 0.5) * np.array([sx, sy], np.float32) - 0.5).astype(np.float32)
    if rec.p_dir is not None:
        d = rec.p_dir * np.array([sx, sy], np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.p_dir = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    return _finish(out, boxes_moved=True)


def fixed_scale_factor(height: int, width: int, scale: float, max_side: int | None = None) -> float:
    """The factor an image of ``height x width`` is resized by at a fixed ``scale``, the longer side capped at
    ``max_side`` pixels (the data pipeline's and the detector's ``FixedScaleTransform``'s one rule)."""
    return scale if max_side is None else min(scale, max_side / max(height, width))


def _scale_record(rec: KaryoRecord, f: float) -> KaryoRecord:
    """Resize by ``f`` and record the factor (times any earlier one) in ``meta["resize_factor"]``."""
    out = _resize(rec, max(1, round(rec.width * f)), max(1, round(rec.height * f)))
    out.meta["resize_factor"] = f * float(rec.meta.get("resize_factor", 1.0))
    return out


class RandomScale:
    """Resize the whole record by a factor drawn uniformly from ``[lo, hi]`` (same factor both axes)."""

    def __init__(self, lo: float = 0.8, hi: float = 1.25) -> None:
        if not 0 < lo <= hi:
            raise ValueError(f"RandomScale({lo}, {hi}): need 0 < lo <= hi")
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        f = self.lo if rng is None or self.lo == self.hi else float(rng.uniform(self.lo, self.hi))
        nw, nh = max(1, round(rec.width * f)), max(1, round(rec.height * f))
        return _resize(rec, nw, nh)


class ResizeLongest:
    """Resize so that the longer side is ``max_side`` pixels (only shrinking unless ``upscale``)."""

    def __init__(self, max_side: int, *, upscale: bool = False) -> None:
        if max_side < 8:
            raise ValueError(f"ResizeLongest({max_side}): max_side must be at least 8 px")
        self.max_side = int(max_side)
        self.upscale = upscale

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        long = max(rec.width, rec.height)
        if long == self.max_side or (long < self.max_side and not self.upscale):
            return rec.copy()
        return _scale_record(rec, self.max_side / long)


class ScaleBy:
    """Resize by one fixed factor (the detector's processing scale: one scale for every spread).

    The longer side is capped at ``max_side`` pixels, as the detector's own transform caps it.
    """

    def __init__(self, factor: float, max_side: int | None = None) -> None:
        if not factor > 0:
            raise ValueError(f"ScaleBy({factor}): the factor must be > 0")
        self.factor = float(factor)
        self.max_side = max_side

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        return _scale_record(rec, fixed_scale_factor(rec.height, rec.width, self.factor, self.max_side))


class RandomCrop:
    """A random ``size x size`` window of the record (a smaller side is kept whole).

    Instances cut by the window keep their visible part when at least ``min_visible`` of their area
    (mask pixels, or box area without masks) lies inside it; the rest are dropped, so a sliver at the
    edge of a crop does not teach the detector a fragment. Centromeres outside the window become unknown.
    """

    def __init__(self, size: int, min_visible: float = 0.3) -> None:
        if size < 16:
            raise ValueError(f"RandomCrop({size}): the crop must be at least 16 px")
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"RandomCrop: min_visible must be in [0, 1], got {min_visible}")
        self.size = int(size)
        self.min_visible = float(min_visible)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        h, w = rec.height, rec.width
        ch, cw = min(self.size, h), min(self.size, w)
        if (ch, cw) == (h, w):
            return rec.copy()
        y0 = int(rng.integers(0, h - ch + 1)) if rng is not None else (h - ch) // 2
        x0 = int(rng.integers(0, w - cw + 1)) if rng is not None else (w - cw) // 2
        small = {k: (None if getattr(rec, k) is None else getattr(rec, k).copy()) for k in ("p_dir", "scores")}
        out = replace(rec, image=np.ascontiguousarray(rec.image[y0 : y0 + ch, x0 : x0 + cw]), meta=dict(rec.meta))
        out.boxes, out.labels, out.p_dir, out.scores = (
            rec.boxes.copy(),
            rec.labels.copy(),
            small["p_dir"],
            small["scores"],
        )
        if rec.masks is not None:
            full = rec.masks.sum(axis=(1, 2), dtype=np.float64)
            out.masks = np.ascontiguousarray(rec.masks[:, y0 : y0 + ch, x0 : x0 + cw])
            seen = out.masks.sum(axis=(1, 2))
            if "box_margin" in rec.meta:  # annotated boxes move with the window (and are clipped to it)
                out.boxes = (rec.boxes - np.array([x0, y0, x0, y0], np.float32)).astype(np.float32)
        else:
            b = rec.boxes.astype(np.float64)
            full = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            out.boxes = (rec.boxes - np.array([x0, y0, x0, y0], np.float32)).astype(np.float32)
            c = out.boxes.astype(np.float64)
            seen = (np.clip(c[:, 2], 0, cw) - np.clip(c[:, 0], 0, cw)).clip(0) * (
                np.clip(c[:, 3], 0, ch) - np.clip(c[:, 1], 0, ch)
            ).clip(0)
        if rec.centromeres is not None:
            out.centromeres = (rec.centromeres - np.array([x0, y0], np.float32)).astype(np.float32)
        out.meta["crop_offset"] = (x0, y0)
        with np.errstate(invalid="ignore", divide="ignore"):
            keep = (seen > 0) & (seen >= self.min_visible * full)
        if len(rec) and not keep.all():
            out = out.select(keep)
        return _finish(out, boxes_moved=True)


class ScaleCrop:
    """Crop first, then scale: a random window of the record brought to ``size x size`` pixels at a scale of
    ``factor`` times a random jitter (drawn log-uniformly from ``jitter``).

    The same result as :class:`ScaleBy` then :class:`RandomCrop`, but only the window's pixels and the
    masks that reach into it are resized, not every full-size mask: on a CIL spread (46 masks of ~1,000 px)
    this is what a training step's loader spent most of its time on. ``max_side`` caps the longer side of
    the whole scaled record, as the detector's own transform caps it. With a jitter the detector sees
    chromosomes at other sizes than CIL's, so that it tolerates a scale estimate that misses.
    """

    def __init__(
        self,
        factor: float,
        size: int,
        *,
        jitter: tuple[float, float] = (1.0, 1.0),
        max_side: int | None = None,
        min_visible: float = 0.3,
    ) -> None:
        if not factor > 0:
            raise ValueError(f"ScaleCrop: the factor must be > 0, got {factor}")
        lo, hi = (float(v) for v in jitter)
        if not 0 < lo <= hi:
            raise ValueError(f"ScaleCrop: jitter must be 0 < lo <= hi, got {jitter}")
        if size < 16:
            raise ValueError(f"ScaleCrop({size}): the crop must be at least 16 px")
        self.factor, self.size, self.jitter, self.max_side = float(factor), int(size), (lo, hi), max_side
        self.min_visible = float(min_visible)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        lo, hi = self.jitter
        j = lo if rng is None or lo == hi else math.exp(float(rng.uniform(math.log(lo), math.log(hi))))
        f = fixed_scale_factor(rec.height, rec.width, self.factor * j, self.max_side)
        window = max(16, round(self.size / f))  # the window in the record's own pixels
        rec = RandomCrop(window, self.min_visible)(rec, rng)
        return _scale_record(rec, f)


# ---------------------------------------------------------------------------------------------- photometric
class BrightnessContrastGamma:
    """``image -> clip((image ** gamma - 0.5) * contrast + 0.5 + brightness, 0, 1)`` with random factors.

    Args:
        brightness: shift drawn from ``[-brightness, brightness]`` (image units).
        contrast: factor drawn from ``[1 - contrast, 1 + contrast]``.
        gamma: ``log(gamma)`` drawn from ``[-gamma, gamma]``.
    """

    def __init__(self, brightness: float = 0.1, contrast: float = 0.2, gamma: float = 0.2) -> None:
        self.brightness, self.contrast, self.gamma = float(brightness), float(contrast), float(gamma)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        b = rng.uniform(-self.brightness, self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        g = math.exp(rng.uniform(-self.gamma, self.gamma))
        img = np.power(np.clip(rec.image, 0, 1), g)
        img = (img - 0.5) * c + 0.5 + b
        return replace(rec, image=np.clip(img, 0, 1).astype(np.float32), meta=dict(rec.meta))


class GaussianBlur:
    """Gaussian blur with sigma drawn from ``[lo, hi]`` pixels."""

    def __init__(self, lo: float = 0.3, hi: float = 1.5) -> None:
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        s = float(rng.uniform(self.lo, self.hi))
        img = cv2.GaussianBlur(rec.image, (0, 0), s) if s > 0 else rec.image.copy()
        return replace(rec, image=np.clip(img, 0, 1).astype(np.float32), meta=dict(rec.meta))


class GaussianNoise:
    """Additive Gaussian noise with standard deviation drawn from ``[lo, hi]`` (image units)."""

    def __init__(self, lo: float = 0.0, hi: float = 0.03) -> None:
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        s = float(rng.uniform(self.lo, self.hi))
        img = rec.image + s * rng.standard_normal(rec.image.shape).astype(np.float32)
        return replace(rec, image=np.clip(img, 0, 1).astype(np.float32), meta=dict(rec.meta))


def _with_image(rec: KaryoRecord, image: np.ndarray) -> KaryoRecord:
    return replace(rec, image=np.clip(image, 0, 1).astype(np.float32), meta=dict(rec.meta))


def _clahe(image: np.ndarray, clip: float, tiles: int = 8) -> np.ndarray:
    u8 = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(u8).astype(np.float32) / 255.0


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    u8 = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


class LocalContrast:
    """CLAHE (contrast-limited adaptive histogram equalisation) with a random clip limit: the strong local
    contrast and band contrast some labs' processing gives."""

    def __init__(self, clip: tuple[float, float] = (1.0, 4.0), tiles: int = 8) -> None:
        self.clip, self.tiles = (float(clip[0]), float(clip[1])), int(tiles)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        return _with_image(rec, _clahe(rec.image, float(rng.uniform(*self.clip)), self.tiles))


class Sharpen:
    """Unsharp masking (``image + a * (image - blur(image, sigma))``): sharper edges and stronger bands."""

    def __init__(self, amount: tuple[float, float] = (0.3, 1.5), sigma: tuple[float, float] = (1.0, 3.0)) -> None:
        self.amount, self.sigma = (float(amount[0]), float(amount[1])), (float(sigma[0]), float(sigma[1]))

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        a, s = float(rng.uniform(*self.amount)), float(rng.uniform(*self.sigma))
        img = rec.image + a * (rec.image - cv2.GaussianBlur(rec.image, (0, 0), s))
        return replace(rec, image=np.clip(img, 0, 1).astype(np.float32), meta=dict(rec.meta))


class JpegQuality:
    """JPEG compression at a random quality in ``[lo, hi]`` (8-bit round trip through OpenCV's codec)."""

    def __init__(self, lo: int = 20, hi: int = 90) -> None:
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"JpegQuality({lo}, {hi}): need 1 <= lo <= hi <= 100")
        self.lo, self.hi = int(lo), int(hi)

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        return _with_image(rec, _jpeg(rec.image, int(rng.integers(self.lo, self.hi + 1))))


#: the ways another lab's images differ from CIL's, each a deterministic transform of a record (image and
#: annotations together): ``benchmarks/robustness.py`` runs the whole pipeline on each
LAB_VARIANTS: dict[str, Callable[[KaryoRecord], KaryoRecord]] = {
    "original": lambda r: r,
    "inverted": lambda r: _with_image(r, 1.0 - r.image),
    "scale_0.5": lambda r: ScaleBy(0.5)(r),
    "scale_0.35": lambda r: ScaleBy(0.35)(r),
    "scale_2": lambda r: ScaleBy(2.0)(r),
    "scale_3": lambda r: ScaleBy(3.0)(r),
    "clahe": lambda r: _with_image(r, _clahe(r.image, 3.0)),
    "gamma_2.2": lambda r: _with_image(r, np.power(np.clip(r.image, 0, 1), 2.2)),
    "gamma_0.5": lambda r: _with_image(r, np.power(np.clip(r.image, 0, 1), 0.5)),
    "jpeg_30": lambda r: _with_image(r, _jpeg(r.image, 30)),
    "blur_2": lambda r: _with_image(r, cv2.GaussianBlur(r.image, (0, 0), 2.0)),
}


# ---------------------------------------------------------------------------------------------- composition
class Compose:
    """Apply ``transforms`` in order, each with its probability (default 1 for all).

    >>> t = Compose([HorizontalFlip(), VerticalFlip()], [0.5, 0.5])
    """

    def __init__(self, transforms: Sequence, probabilities: Sequence[float] | None = None) -> None:
        self.transforms = list(transforms)
        self.probabilities = (
            [1.0] * len(self.transforms) if probabilities is None else [float(p) for p in probabilities]
        )
        if len(self.probabilities) != len(self.transforms):
            raise ValueError(f"{len(self.transforms)} transforms but {len(self.probabilities)} probabilities")
        if any(not 0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError(f"probabilities {self.probabilities} must lie in [0, 1]")

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator) -> KaryoRecord:
        for t, p in zip(self.transforms, self.probabilities):
            if p >= 1.0 or rng.random() < p:
                rec = t(rec, rng)
        return rec


def default_train_transforms(max_side: int | None = None) -> Compose:
    """The training augmentation: flips, quarter turns, small free rotation, scale, photometric jitter.

    ``max_side`` (optional) appends :class:`ResizeLongest` for reduced-size (CPU) training.
    """
    ts: list = [
        HorizontalFlip(),
        VerticalFlip(),
        Rot90(),
        FreeRotation(20.0),
        RandomScale(0.8, 1.2),
        BrightnessContrastGamma(0.08, 0.2, 0.2),
        GaussianBlur(0.3, 1.2),
        GaussianNoise(0.0, 0.02),
    ]
    ps = [0.5, 0.5, 0.5, 0.3, 0.5, 0.8, 0.3, 0.3]
    if max_side is not None:
        ts.append(ResizeLongest(max_side))
        ps.append(1.0)
    return Compose(ts, ps)


def lab_train_transforms() -> Compose:
    """The augmentation for images from any lab (after :class:`ScaleCrop`): flips, quarter turns, small free
    rotation, and what differs between labs' cameras and stainings: gamma (0.45-2.2), contrast, local contrast
    (CLAHE), band sharpening, blur, noise and JPEG compression. Polarity is not augmented: the pipeline turns a
    light-on-dark image to dark-on-light before the detector (:mod:`karyotyping.image_checks`)."""
    ts: list = [
        HorizontalFlip(),
        VerticalFlip(),
        Rot90(),
        FreeRotation(20.0),
        BrightnessContrastGamma(0.1, 0.35, 0.8),
        LocalContrast((1.0, 4.0)),
        Sharpen(),
        GaussianBlur(0.3, 2.0),
        GaussianNoise(0.0, 0.04),
        JpegQuality(20, 90),
    ]
    return Compose(ts, [0.5, 0.5, 0.5, 0.3, 0.8, 0.25, 0.2, 0.3, 0.3, 0.25])


def detector_transforms(
    *,
    augment: bool = True,
    resize_longest: int | None = None,
    fixed_scale: float | None = None,
    max_size: int = 1333,
    crop_size: int | None = None,
    lab_augment: bool = False,
    scale_jitter: tuple[float, float] = (1.0, 1.0),
    contact_paste: int = 0,
) -> tuple[Compose | None, Compose | ResizeLongest | None]:
    """The detector trainer's (train, val) record transforms.

    Args:
        augment: :func:`default_train_transforms` on training records.
        resize_longest: shrink every record to this longer side when loading (train and val).
        fixed_scale: the model's ``SegConfig.fixed_scale``: training records are scaled by it here (the model
            skips its own resize in training), val records stay as they are (the model scales them).
        max_size: the model's cap on the longer side, applied with ``fixed_scale``.
        crop_size: with ``fixed_scale``, random square crops of training records of this many pixels.
        lab_augment: with ``fixed_scale`` and ``crop_size``: crop first then scale (:class:`ScaleCrop`, the scale
            jittered by ``scale_jitter``), then :func:`lab_train_transforms` instead of the default augmentation.
        scale_jitter: (lo, hi) factors around ``fixed_scale`` for ``lab_augment`` (log-uniform).
        contact_paste: with ``lab_augment``: after the crop, up to this many isolated chromosomes pasted to touch
            or cross another (:class:`datasets.contacts.ContactPaste`); 0 = none.
    """
    if fixed_scale is not None and resize_longest is not None:
        raise ValueError("fixed_scale and resize_longest both set the scale: give one")
    if crop_size is not None and fixed_scale is None:
        raise ValueError("crop_size needs fixed_scale")
    if contact_paste < 0 or (contact_paste and not lab_augment):
        raise ValueError(f"contact_paste needs lab_augment and must be >= 0, got {contact_paste}")
    if lab_augment:
        if fixed_scale is None or crop_size is None or resize_longest is not None:
            raise ValueError("lab_augment needs fixed_scale and crop_size (and no resize_longest)")
        if not augment:
            raise ValueError("lab_augment needs augment")
        steps_lab: list = [ScaleCrop(fixed_scale, crop_size, jitter=scale_jitter, max_side=max_size)]
        if contact_paste:
            from .contacts import ContactPaste

            steps_lab.append(ContactPaste(contact_paste))
        steps_lab.append(lab_train_transforms())
        return Compose(steps_lab), None
    resize = None
    val_tf: ResizeLongest | None = None
    if resize_longest:
        resize = val_tf = ResizeLongest(resize_longest)
    if fixed_scale is not None:
        resize = ScaleBy(fixed_scale, max_size)
    steps: list = [t for t in (resize, default_train_transforms() if augment else None) if t is not None]
    if crop_size is not None:
        steps.append(RandomCrop(crop_size))
    train_tf = Compose(steps) if steps else None
    return train_tf, val_tf
