"""Mask post-processing of the pipeline core: from the detector's thresholded masks to the instances it keeps.

:class:`MaskConfig` owns every threshold and switch of it (and the two other mask thresholds of
:mod:`karyotyping.detection`: the evaluation's and the orientation-bin merge's), with their defaults; the CLI flags
(:func:`karyotyping.core.add_pipeline_args`) take their defaults from it, and the pipeline takes one
(``KaryotypePipeline(..., masks=MaskConfig(...))``).

:func:`keep_instances` runs the steps in order: (optionally) :func:`prefer_parts` (a detection that is the union of
others gives way to them), :func:`suppress_overlapping_masks` (duplicates and fragments of a better detection go),
:func:`exclusive_masks` (a pixel several instances claim goes to the surest), :func:`trim_to_foreground` (each mask
cut to the chromosome pixels by the image's own contrast) and, optionally, :func:`smooth_masks` (whole, smooth
masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "MASK_FLAGS",
    "MaskConfig",
    "exclusive_masks",
    "keep_instances",
    "prefer_parts",
    "smooth_masks",
    "suppress_overlapping_masks",
    "trim_to_foreground",
]


@dataclass(frozen=True)
class MaskConfig:
    """The thresholds and switches of the pipeline's mask post-processing, with their defaults (the one owner).

    ``mask_thresh`` and ``mask_overlap`` were chosen on the CIL val split with the pipeline's score threshold for
    the shipped detector (docs/training.md, "Choosing the pipeline's thresholds for a new detector").

    Attributes:
        mask_thresh: a pixel belongs to a detection when its mask probability is *above* this (low, because the
            masks are then trimmed to the image's foreground).
        mask_overlap: a detection goes when more than this fraction of its mask is covered by better-scoring ones
            (:func:`suppress_overlapping_masks`); 1 = off.
        exclusive_masks: a pixel that several kept detections claim goes to the one surest of it
            (:func:`exclusive_masks`), so instances share no pixel, as annotated.
        trim_masks: each mask keeps only its chromosome pixels, by one Otsu threshold of the image around the
            detections (:func:`trim_to_foreground`); a detection left empty goes.
        smooth_masks: after the trim, each mask closed and opened, its holes filled, its specks dropped
            (:func:`smooth_masks`).
        prefer_parts: a detection that is the union of two or more others gives way to them (:func:`prefer_parts`).
        trim_radius: pixels around the detections whose grey levels set the trim's threshold.
        smooth_radius: disk radius (pixels at the processing scale) of the smoothing's closing and opening.
        speck_fraction: the smoothing drops the pieces of a mask smaller than this fraction of its largest piece.
        part_inside, part_area, part_cover: :func:`prefer_parts`: a part lies ``part_inside`` of its pixels inside
            the whole, is at least ``part_area`` and at most ``1 - part_area`` of the whole's area, and the parts
            together cover ``part_cover`` of the whole.
        part_same_iou: two candidate parts are the same chromosome (only the better one counts) above this IoU.
        ap_mask_thresh: ``mask_thresh`` of the detector's own masks, untrimmed, when its AP is measured (the
            trainer's validation, ``evaluate.py --stage seg``); fixed, so that mask AP figures of different dates
            compare.
        bin_merge_iou, bin_merge_mask_thresh: a detector with orientation classes may find one chromosome in two
            bins; :func:`karyotyping.detection.merge_orientation_bins` takes two detections in different bins
            whose masks (probability above ``bin_merge_mask_thresh``) have an IoU above ``bin_merge_iou`` for one.

    Raises:
        ValueError: a value out of its range (named with its flag where it has one).
    """

    mask_thresh: float = 0.2
    mask_overlap: float = 0.8
    exclusive_masks: bool = True
    trim_masks: bool = True
    smooth_masks: bool = False
    prefer_parts: bool = False
    trim_radius: int = 15
    smooth_radius: int = 3
    speck_fraction: float = 0.15
    part_inside: float = 0.8
    part_area: float = 0.2
    part_cover: float = 0.7
    part_same_iou: float = 0.5
    ap_mask_thresh: float = 0.3
    bin_merge_iou: float = 0.6
    bin_merge_mask_thresh: float = 0.5

    def __post_init__(self) -> None:
        def name(f: str) -> str:
            return f"{f} (--{f.replace('_', '-')})" if f in MASK_FLAGS else f

        for f in ("mask_thresh", "ap_mask_thresh", "bin_merge_mask_thresh"):
            if not 0.0 < getattr(self, f) < 1.0:
                raise ValueError(f"{name(f)} must be in (0, 1), got {getattr(self, f)}")
        for f in ("mask_overlap", "speck_fraction", "part_inside", "part_cover", "part_same_iou", "bin_merge_iou"):
            if not 0.0 < getattr(self, f) <= 1.0:
                raise ValueError(f"{name(f)} must be in (0, 1], got {getattr(self, f)}")
        if not 0.0 <= self.part_area < 0.5:
            raise ValueError(f"part_area must be in [0, 0.5), got {self.part_area}")
        for f in ("trim_radius", "smooth_radius"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"{f} must be at least 1 pixel, got {getattr(self, f)}")


#: the :class:`MaskConfig` fields that :func:`karyotyping.core.add_pipeline_args` adds as flags of the same names
MASK_FLAGS = ("mask_overlap", "mask_thresh", "exclusive_masks", "trim_masks", "smooth_masks", "prefer_parts")
#: the defaults, for the steps' own keyword arguments
DEFAULT = MaskConfig()


def suppress_overlapping_masks(masks: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Mask-level non-maximum suppression: drop duplicates and fragments of a better-scoring instance.

    Box NMS misses them for elongated, bent or diagonal chromosomes: a fragment's box can lie inside a
    long chromosome's box with a low box IoU. Here, in descending score order, an instance is dropped
    when more than ``thresh`` of its own pixels are already covered by the instances kept so far;
    chromosomes that merely cross or touch share a small fraction of their pixels and are both kept.

    Args:
        masks: bool/uint8 [M, H, W].
        scores: float [M].
        thresh: fraction of an instance's area; >= 1 keeps every non-empty instance (no default: the pipeline's
            is :attr:`MaskConfig.mask_overlap`).

    Returns:
        int64 indices of the kept instances (never an empty mask), in descending score order.
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, np.float64)
    if len(masks) != len(scores):
        raise ValueError(f"{len(masks)} masks but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    covered = np.zeros(masks.shape[1:], bool)
    keep: list[int] = []
    for i in order:
        m = masks[i].astype(bool)
        area = int(m.sum())
        if area == 0:  # an empty mask is never an instance
            continue
        if thresh < 1.0 and np.logical_and(m, covered).sum() > thresh * area:
            continue
        keep.append(int(i))
        covered |= m
    return np.asarray(keep, np.int64)


def prefer_parts(masks: np.ndarray, scores: np.ndarray, config: MaskConfig = DEFAULT) -> np.ndarray:
    """Detections that are the union of two or more other detections go, so that the parts are kept instead.

    A mask that holds two touching or crossing chromosomes often scores higher than each of them, and the
    mask-overlap suppression then keeps it and drops them. Here a detection W goes when two or more other
    detections, each a different chromosome (pairwise mask IoU < ``part_same_iou``), lie inside it (at least
    ``part_inside`` of their pixels), each between ``part_area`` and ``1 - part_area`` of its area, and together
    cover ``part_cover`` of it (the fields of ``config``, a :class:`MaskConfig`). Run before
    :func:`suppress_overlapping_masks`.

    Args:
        masks: bool/uint8 [M, H, W]; scores: [M].

    Returns:
        int64 indices of the detections that stay, in their input order.
    """
    masks = np.asarray(masks).astype(bool)
    scores = np.asarray(scores, np.float64)
    m = len(masks)
    if m < 3:
        return np.arange(m, dtype=np.int64)
    from metrics.matching import overlap_counts

    inter, area, _ = overlap_counts(masks, masks)
    union = area[:, None] + area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    drop = np.zeros(m, bool)
    for w in range(m):
        if area[w] == 0:
            continue
        inside = np.divide(inter[:, w], area, out=np.zeros(m), where=area > 0)
        size = area / area[w]
        lo, hi = config.part_area, 1 - config.part_area
        cand = np.flatnonzero((inside >= config.part_inside) & (size >= lo) & (size <= hi) & ~drop)
        cand = cand[cand != w]
        parts: list[int] = []
        for c in cand[np.argsort(-scores[cand], kind="stable")]:
            if all(iou[c, q] < config.part_same_iou for q in parts):
                parts.append(int(c))
        if len(parts) >= 2 and (masks[parts].any(0) & masks[w]).sum() >= config.part_cover * area[w]:
            drop[w] = True
    return np.flatnonzero(~drop).astype(np.int64)


def exclusive_masks(masks: np.ndarray, prob: np.ndarray | torch.Tensor) -> np.ndarray:
    """Give every pixel that several instances claim to the one with the highest mask probability.

    Mask R-CNN predicts each instance's mask on its own, so the mask of a chromosome often takes in the part
    of a touching or crossing neighbour that lies inside its box, although the neighbour has its own, surer
    mask there. The annotations (and the masks derived from boxes) share no pixel between instances; this
    makes the predictions do the same. Pixels that one instance alone claims are left as they are.

    Args:
        masks: bool/uint8 [M, H, W] binary masks (already thresholded).
        prob: [M, H, W] or [M, 1, H, W] mask probabilities of the same instances; ties go to the earlier
            instance (the better-scoring one in the pipeline's order).

    Returns:
        uint8 [M, H, W] disjoint masks, each a subset of its input (an instance may come out empty).
    """
    masks = np.asarray(masks).astype(np.uint8, copy=True)
    p = prob.detach().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob)
    if p.ndim == 4:
        p = p[:, 0]
    if p.shape != masks.shape:
        raise ValueError(f"masks {masks.shape} and probabilities {p.shape} differ in shape")
    if len(masks) < 2:
        return masks
    ys, xs = np.nonzero(masks.sum(0, dtype=np.int32) > 1)
    if len(ys) == 0:
        return masks
    claim = masks[:, ys, xs].astype(bool)
    winner = np.where(claim, p[:, ys, xs], -np.inf).argmax(0)
    masks[:, ys, xs] = 0
    masks[winner, ys, xs] = 1
    return masks


def trim_to_foreground(image: np.ndarray, masks: np.ndarray, *, radius: int = DEFAULT.trim_radius) -> np.ndarray:
    """Keep only the pixels of each mask that are chromosome, not background, by the image's own contrast.

    Mask R-CNN's masks are predicted at 28 x 28 per box and thresholded, so their edges are soft and often
    take in a rim of background, or a light gap between two chromosomes. Here one threshold separates
    chromosome from background: Otsu's method (:func:`datasets.derive_masks.otsu_threshold`) on the smoothed
    image (Gaussian, 1 px) over the detections and ``radius`` px around them; the objects' polarity (dark on
    light, as G-banding, or bright on dark, as fluorescence) is whichever side the masks' own pixels lie on.
    Each mask keeps its foreground pixels (foreground closed 3 x 3) and then its enclosed holes, except
    pixels another mask holds. This is also how the masks of boxes-only annotations are derived
    (:mod:`datasets.derive_masks`), so predictions and training targets follow one rule.

    Args:
        image: float32 [H, W] grey in [0, 1], the image the masks belong to.
        masks: bool/uint8 [K, H, W].
        radius: pixels around the detections whose grey levels take part in the threshold.

    Returns:
        uint8 [K, H, W], each the foreground part of its input mask plus its enclosed holes that no other mask
        holds; pairwise disjoint when the input masks are (overlapping inputs keep their shared foreground).
        A mask with no foreground pixel comes out empty. When the masks leave no background within ``radius``
        of them, there is nothing to tell the polarity by and the masks are returned as they are.

    Raises:
        ValueError: the image is not float in [0, 1], or the masks do not match its shape.
    """
    import cv2
    from scipy import ndimage

    from datasets.derive_masks import otsu_threshold

    m = np.asarray(masks).astype(bool)
    raw = np.asarray(image)
    if not np.issubdtype(raw.dtype, np.floating) or (raw.size and float(np.nanmax(raw)) > 1.0 + 1e-6):
        raise ValueError(f"trim_to_foreground needs a float image in [0, 1], got {raw.dtype} (max {raw.max()})")
    img = raw.astype(np.float32, copy=False)
    if m.ndim != 3 or m.shape[1:] != img.shape:
        raise ValueError(f"masks {m.shape} do not match the image {img.shape}")
    out = np.zeros(m.shape, np.uint8)
    union = m.any(0)
    if not union.any():
        return out
    k = 2 * int(radius) + 1
    near = cv2.dilate(union.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    ring = near & ~union
    if not ring.any():  # the detections cover the whole image: no background to tell the polarity by
        return m.astype(np.uint8)
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    # dark objects when the masks' pixels are darker than the background around them
    dark = float(smooth[union].mean()) <= float(smooth[ring].mean())
    obj = 1.0 - smooth if dark else smooth
    fg = (obj > otsu_threshold(np.clip(obj[near], 0.0, 1.0))).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)).astype(bool)
    count = m.sum(0, dtype=np.int32)
    for i in range(len(m)):
        x, y, w, h = cv2.boundingRect(m[i].view(np.uint8))
        if w == 0:
            continue
        own = m[i, y : y + h, x : x + w]
        base = own & fg[y : y + h, x : x + w]
        holes = ndimage.binary_fill_holes(base) & ~base
        # a hole may be another chromosome lying across this one: its pixels stay its own
        others = (count[y : y + h, x : x + w] - own) > 0
        out[i, y : y + h, x : x + w] = base | (holes & ~others)
    return out


def smooth_masks(
    masks: np.ndarray,
    bounds: np.ndarray,
    *,
    radius: int = DEFAULT.smooth_radius,
    speck_fraction: float = DEFAULT.speck_fraction,
) -> np.ndarray:
    """Whole, smooth chromosome masks after the Otsu trim: each mask closed and opened with a disk of ``radius``
    px, its holes filled, and its pieces smaller than ``speck_fraction`` of its largest dropped, never reaching
    outside its own ``bounds`` mask (the detector's, before the trim) nor into a pixel another mask holds.

    The trim (:func:`trim_to_foreground`) leaves bites and holes where a chromosome has pale bands, and specks
    of a neighbour; the karyogram shows them as ragged chromosomes, and a bite that crosses the whole width
    cuts one chromosome into two pieces, of which only one can be the chromosome.

    Args:
        masks: uint8 [K, H, W] trimmed masks; bounds: bool/uint8 [K, H, W] the same instances before the trim.
        radius: disk radius in pixels (at the models' processing scale chromosomes are ~15 px wide).

    Returns:
        uint8 [K, H, W]; an empty input mask stays empty.
    """
    import cv2
    from scipy import ndimage

    m = np.asarray(masks).astype(np.uint8)
    b = np.asarray(bounds).astype(bool)
    if m.shape != b.shape:
        raise ValueError(f"masks {m.shape} and bounds {b.shape} differ in shape")
    out = np.zeros_like(m)
    if not len(m):
        return out
    count = m.sum(0, dtype=np.int32)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    pad = 2 * radius + 1
    h_img, w_img = m.shape[1:]
    for i in range(len(m)):
        x, y, w, h = cv2.boundingRect(m[i])
        if w == 0:
            continue
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(w_img, x + w + pad), min(h_img, y + h + pad)
        own = m[i, y0:y1, x0:x1]
        allowed = b[i, y0:y1, x0:x1] & ~((count[y0:y1, x0:x1] - own) > 0)
        sm = cv2.morphologyEx(own, cv2.MORPH_CLOSE, disk)
        sm = cv2.morphologyEx(sm, cv2.MORPH_OPEN, disk)
        sm = ndimage.binary_fill_holes(sm) & allowed
        if not sm.any():  # thinner than the disk: keep the trimmed mask as it was
            sm = own.astype(bool)
        lab, n = ndimage.label(sm)
        if n > 1:  # specks of a neighbour or of debris go; a piece of the chromosome cut off by a pale band stays
            sizes = np.bincount(lab.ravel())[1:]
            sm = np.isin(lab, 1 + np.flatnonzero(sizes >= speck_fraction * sizes.max()))
        out[i, y0:y1, x0:x1] = sm
    return out


def keep_instances(
    masks: np.ndarray,
    scores: np.ndarray,
    prob: np.ndarray | torch.Tensor,
    image: np.ndarray | None,
    config: MaskConfig = DEFAULT,
) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's instances from its detections, by ``config``: (with ``prefer_parts``) :func:`prefer_parts`,
    then :func:`suppress_overlapping_masks` at ``mask_overlap``, then (with ``exclusive_masks``)
    :func:`exclusive_masks`, then (with ``trim_masks``) :func:`trim_to_foreground` and (with ``smooth_masks``)
    :func:`smooth_masks`, dropping a detection left with no pixel.

    Args:
        masks: uint8 [M, H, W] binary masks (at ``config.mask_thresh``); scores: [M]; prob: their mask
            probabilities [M, (1,) H, W].
        image: float32 [H, W] in [0, 1] the masks belong to, for the trim (None only without ``trim_masks``).
        config: the thresholds and switches.

    Returns:
        ``(indices into the M detections, in descending score order; uint8 [K, H, W] their final masks)``.
    """
    if config.trim_masks and image is None:
        raise ValueError("trim_masks needs the image the masks belong to")
    if config.prefer_parts:
        cand = prefer_parts(masks, scores, config)
        keep = cand[suppress_overlapping_masks(np.asarray(masks)[cand], np.asarray(scores)[cand], config.mask_overlap)]
    else:
        keep = suppress_overlapping_masks(masks, scores, config.mask_overlap)
    kept = np.asarray(masks)[keep].astype(np.uint8)
    if config.exclusive_masks and len(keep) > 1:
        kept = exclusive_masks(kept, prob[torch.as_tensor(keep)] if isinstance(prob, torch.Tensor) else prob[keep])
    if config.trim_masks:
        bounds = kept
        kept = trim_to_foreground(image, kept, radius=config.trim_radius)
        if config.smooth_masks:
            kept = smooth_masks(kept, bounds, radius=config.smooth_radius, speck_fraction=config.speck_fraction)
    nonempty = kept.any(axis=(1, 2))
    return keep[nonempty], kept[nonempty]
