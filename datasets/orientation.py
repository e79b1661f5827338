"""Orientation classes for the detector: each chromosome's long-axis angle, binned (issue 24, item 3).

With ``SegConfig.orientation_bins = K`` the detector's classes are K bins of the long-axis angle in [0, 180)
degrees: bin ``k`` (label ``k + 1``; 0 is the background) covers ``[k * 180 / K, (k + 1) * 180 / K)``. Angles are
measured counter-clockwise as displayed (x to the right, y up the screen) from the image's x axis, the same
sense as :class:`datasets.transforms.Rot90` and :class:`datasets.transforms.FreeRotation`.

The labels are computed from the final masks, as the last step of the training and validation transforms
(:class:`OrientationLabels`), so they follow every flip, rotation, scale and crop exactly.
:func:`remap_bins` says what a flip or quarter turn does to the labels without the masks (the tests check that
the two agree).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from karyogram.labels import NUM_CLASSES

from .record import KaryoRecord

__all__ = [
    "BIN_OPS",
    "MAX_BINS",
    "OrientationLabels",
    "angle_bins",
    "long_axis_angle",
    "orientation_labels",
    "remap_bins",
]

#: the operations :func:`remap_bins` knows: left-right flip, top-bottom flip, a quarter turn counter-clockwise
BIN_OPS = ("hflip", "vflip", "rot90")
#: the most bins: a record's labels must stay within the chromosome classes' range 0..24 (``KaryoRecord.validate``)
MAX_BINS = NUM_CLASSES


def long_axis_angle(mask: np.ndarray) -> float:
    """The direction of a mask's long axis, degrees in [0, 180), counter-clockwise as displayed from the x axis.

    The principal axis of the mask's pixel coordinates (second central moments, as PCA): for a chromosome, the
    line it lies along. A mask without a long axis (a disc) gets whatever direction the moments give.

    Args:
        mask: bool/uint8 [H, W], one instance.

    Returns:
        the angle in degrees, or NaN for an empty mask.
    """
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return float("nan")
    x = xs - xs.mean()
    y = ys - ys.mean()
    mu20, mu02, mu11 = float((x * x).mean()), float((y * y).mean()), float((x * y).mean())
    # the major axis in image coordinates (y down) is at 0.5 * atan2(2 mu11, mu20 - mu02); y up flips its sign
    theta = -0.5 * math.degrees(math.atan2(2.0 * mu11, mu20 - mu02))
    theta %= 180.0
    return 0.0 if theta >= 180.0 else theta  # -1e-17 % 180 rounds to 180.0


def angle_bins(angles: np.ndarray, k: int) -> np.ndarray:
    """Angles in degrees (any real value, taken modulo 180) -> labels int64 in 1..k (bin ``i`` is label ``i + 1``)."""
    _check_bins(k)
    a = np.mod(np.asarray(angles, np.float64), 180.0)
    if np.isnan(a).any():
        raise ValueError("an angle is NaN (an empty mask has no long axis)")
    return (np.minimum(np.floor(a * k / 180.0), k - 1) + 1).astype(np.int64)


def orientation_labels(masks: np.ndarray, k: int) -> np.ndarray:
    """Each instance's orientation label: the bin of its long axis (:func:`long_axis_angle`).

    Args:
        masks: bool/uint8 [N, H, W].
        k: number of bins (``SegConfig.orientation_bins``).

    Returns:
        int64 [N] in 1..k.

    Raises:
        ValueError: ``k`` < 2, masks not [N, H, W], or an empty mask (its index is named).
    """
    _check_bins(k)
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {m.shape}")
    angles = np.array([long_axis_angle(mi) for mi in m], np.float64)
    empty = np.flatnonzero(np.isnan(angles))
    if len(empty):
        raise ValueError(f"instance(s) {empty.tolist()} have an empty mask: no long axis to bin")
    return angle_bins(angles, k)


def remap_bins(labels: np.ndarray, k: int, op: str) -> np.ndarray:
    """What a flip or quarter turn of the image does to orientation labels 1..k.

    * ``hflip`` and ``vflip`` mirror an angle: ``a -> 180 - a``, so bin ``i`` becomes bin ``k - 1 - i``. This is
      exact except for an angle exactly on a bin edge (the bins are half-open), which the mirror moves onto the
      other side of the edge.
    * ``rot90`` (a quarter turn counter-clockwise as displayed, ``np.rot90``) adds 90 degrees: bin ``i`` becomes
      ``(i + k / 2) mod k``, exact for every angle; it needs an even ``k``.

    Args:
        labels: int [N] in 1..k.

    Returns:
        int64 [N] in 1..k.
    """
    _check_bins(k)
    lab = np.asarray(labels, np.int64)
    if lab.size and (lab.min() < 1 or lab.max() > k):
        raise ValueError(f"orientation labels must lie in 1..{k}, got {lab.min()}..{lab.max()}")
    i = lab - 1
    if op in ("hflip", "vflip"):
        return (k - 1 - i) + 1
    if op == "rot90":
        if k % 2:
            raise ValueError(f"a quarter turn maps bins onto bins only for an even number of bins, got {k}")
        return (i + k // 2) % k + 1
    raise ValueError(f"unknown op {op!r}: choose one of {', '.join(BIN_OPS)}")


def _check_bins(k: int) -> None:
    if int(k) != k or not 2 <= k <= MAX_BINS:
        raise ValueError(f"the number of orientation bins must be an integer in 2..{MAX_BINS}, got {k}")


class OrientationLabels:
    """Transform: set every instance's label to its orientation bin (:func:`orientation_labels`), from its mask.

    The last step of the detector's record transforms when ``SegConfig.orientation_bins`` is on, so that the
    labels are those of the final (flipped, rotated, scaled, cropped) masks.

    Args:
        k: number of bins.
        dataset: the dataset's name, for the error of a record without masks.
    """

    def __init__(self, k: int, *, dataset: str = "the dataset") -> None:
        _check_bins(k)
        self.k = int(k)
        self.dataset = dataset

    def __call__(self, rec: KaryoRecord, rng: np.random.Generator | None = None) -> KaryoRecord:
        where = rec.meta.get("path") or rec.image_id or "a record"
        if rec.masks is None:
            raise ValueError(
                f"{self.dataset}: {where} has no instance masks; orientation bins are measured on each chromosome's "
                "mask (a box has no long axis): train this dataset without --orientation-bins, or give it masks"
            )
        try:
            labels = orientation_labels(rec.masks, self.k)
        except ValueError as exc:
            raise ValueError(f"{self.dataset}: {where}: {exc}") from None
        return replace(rec, labels=labels)  # the image and masks are shared, not copied

    def __repr__(self) -> str:
        return f"OrientationLabels(k={self.k})"
