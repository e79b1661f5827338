"""What kind of image is this? Polarity, chromosome scale and contrast, measured before detection.

The models were trained on one lab's images (CIL:54816: G-banded, dark chromosomes on a light background,
chromosomes about :data:`REFERENCE_WIDTH_PX` pixels wide). Another lab's camera gives another magnification, a
fluorescence or inverted display gives bright chromosomes on a dark background. The pipeline core
(:class:`karyotyping.core.KaryotypePipeline`) therefore

1. recognises the polarity (:func:`detect_polarity`) and turns a light-on-dark image to dark-on-light;
2. measures the chromosomes' width (:func:`estimate_chromosome_width`) and brings the image to the models'
   scale (:func:`processing_factor`), mapping every result back to the original pixels;
3. says when an image is outside what the models know (:func:`out_of_range`): a scale it cannot measure or
   that needed a large correction, a faint image, a count far from 46, an implausible karyotype.

Everything here is plain image analysis (OpenCV), a few hundredths of a second on a CIL image.

>>> import numpy as np
>>> img = np.ones((200, 200), np.float32)
>>> img[50:150, 60:74] = 0.2          # one dark rod 14 px wide
>>> detect_polarity(img)
'dark-on-light'
>>> round(estimate_chromosome_width(img))
14
>>> detect_polarity(1.0 - img)
'light-on-dark'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

__all__ = [
    "COUNT_RANGE",
    "MIN_CONTRAST",
    "MIN_SANITY",
    "POLARITIES",
    "REFERENCE_WIDTH_PX",
    "SCALE_RANGE",
    "SCALE_TOLERANCE",
    "ImageChecks",
    "detect_polarity",
    "estimate_chromosome_width",
    "grey_range",
    "out_of_range",
    "processing_factor",
]

#: polarity names: what the pipeline's models expect, and the other one (fluorescence, DAPI, inverted display)
POLARITIES = ("dark-on-light", "light-on-dark")
#: median chromosome width (pixels) that :func:`estimate_chromosome_width` measures on CIL:54816's own images
#: (the models' training data), at their own resolution: 16.0 px on 150 images of our train split (5-95 %:
#: 12.8-20.0 px); ``python benchmarks/robustness.py --calibrate`` measures it again
REFERENCE_WIDTH_PX = 16.0
#: no rescaling while the measured width is within this factor of the reference. One lab's cells vary about that
#: much at one magnification (CIL: 1-99 % of our val images within 1.5x; condensation and staining, not the
#: microscope), while another lab's magnification differs by more; the detector learnt CIL's cells as they are.
#: At 1.25, 11 of the 100 val images were rescaled and the untransformed figures on 20 of them fell a little
#: (F1 0.857 -> 0.854); at 1.5 none is (``benchmarks/robustness.py``, docs/results.md)
SCALE_TOLERANCE = 1.5
#: the range of processing factors the detector was trained to tolerate (0.3x to 3x of CIL, the scale jitter of
#: ``train_segmentation.py --scale-jitter`` on top); a larger correction is made but flagged
SCALE_RANGE = (1.0 / 3.5, 3.5)
#: below this spread of grey values (99th - 1st percentile, image in [0, 1]) an image is too faint to trust
MIN_CONTRAST = 0.2
#: a count of chromosomes outside this range is flagged (a metaphase has 46; 45-47 are the common anomalies)
COUNT_RANGE = (35, 57)
#: a karyotype whose :func:`metrics.karyotype.sanity_score` is below this is flagged
MIN_SANITY = 0.05

#: grey levels of the analysis (the image is smoothed and thresholded at 8 bits)
_LEVELS = 255
#: connected foreground pieces smaller than this (pixels at the analysis scale) are noise, not chromosomes
_MIN_PIECE_PX = 6
#: the width is measured where chromosomes are about this wide (pixels): at other sizes the distance transform's
#: quantisation and the threshold's blur bias it, so the image is resampled to it first
_MEASURE_AT_PX = 14.0
#: a larger image is measured after shrinking its longer side to this many pixels
_MAX_MEASURE_SIDE = 2048
#: Gaussian smoothing (pixels) before the threshold
_BLUR_SIGMA = 1.5


@dataclass
class ImageChecks:
    """What :class:`karyotyping.core.KaryotypePipeline` measured of an image before detection.

    Attributes:
        polarity: the image's polarity as given (one of :data:`POLARITIES`).
        inverted: the image was inverted for the models (it was light-on-dark).
        chromosome_width_px: median chromosome width in the original image's pixels (None: not measurable).
        width_source: "measured" or "given" (``--chromosome-width``).
        processing_scale: processing pixels per original pixel (1 = the image's own pixels).
        contrast: 99th - 1st percentile of the grey values (image in [0, 1]).
        out_of_range: messages, one per reason why the image is outside what the models were trained on.
    """

    polarity: str = "dark-on-light"
    inverted: bool = False
    chromosome_width_px: float | None = None
    width_source: str = "measured"
    processing_scale: float = 1.0
    contrast: float = 1.0
    out_of_range: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``image_checks`` block of the pipeline's JSON)."""
        d = asdict(self)
        if d["chromosome_width_px"] is not None:
            d["chromosome_width_px"] = round(float(d["chromosome_width_px"]), 3)
        d["processing_scale"] = round(float(d["processing_scale"]), 6)
        d["contrast"] = round(float(d["contrast"]), 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageChecks:
        """Read :meth:`to_dict` back (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def grey_range(image: np.ndarray) -> tuple[float, float, float]:
    """(1st percentile, median, 99th percentile) of a grey image in [0, 1], on a subsample for speed."""
    step = max(1, int(np.sqrt(image.size / 250_000)))
    lo, med, hi = np.percentile(image[::step, ::step], [1, 50, 99])
    return float(lo), float(med), float(hi)


def detect_polarity(image: np.ndarray) -> str:
    """``"dark-on-light"`` (G-banded bright field, the models' kind) or ``"light-on-dark"`` (fluorescence, DAPI,
    an inverted display) for a grey image float [H, W] in [0, 1].

    The background covers most of a metaphase image, so the median grey value is the background's: it lies
    nearer the bright end of the image's range on a light background and nearer the dark end on a dark one.
    """
    lo, med, hi = grey_range(image)
    if hi - lo < 1e-6:
        return POLARITIES[0]
    return POLARITIES[0] if (med - lo) / (hi - lo) >= 0.5 else POLARITIES[1]


def _width_here(image: np.ndarray) -> float | None:
    """Median width (pixels) of the dark objects of a dark-on-light image, at its own resolution: twice the
    median distance to the background along the objects' centre lines (the distance transform's ridges)."""
    u8 = np.round(np.clip(image, 0.0, 1.0) * _LEVELS).astype(np.uint8)
    # smoothed enough that a pale band does not cut a chromosome in the threshold (a strongly banded CIL cell was
    # measured at 0.44x its width with a 3x3 blur), little enough to keep its width at the 14 px of the measure
    u8 = cv2.GaussianBlur(u8, (0, 0), _BLUR_SIGMA)
    _, fg = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return None
    big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= _MIN_PIECE_PX) + 1
    if not len(big):
        return None
    fg = np.isin(lab, big).astype(np.uint8)
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ridge = (dist > 0) & (dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8)))
    if not ridge.any():
        return None
    return float(2.0 * np.median(dist[ridge]))


def estimate_chromosome_width(image: np.ndarray, *, iterations: int = 2) -> float | None:
    """Median chromosome width in pixels of a dark-on-light metaphase image float [H, W] in [0, 1].

    Measured once at the image's own resolution, then again after resampling the image so that its
    chromosomes are about 14 px wide (at most ``iterations`` times), so the figure does not depend on the
    magnification (on 50 CIL val images resampled to 0.35x-3x, the measure follows the resampling within
    about 5 % for most images; ``benchmarks/robustness.py --scale-estimate``). None when the image has no
    foreground to measure (blank, a single grey level).
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"estimate_chromosome_width needs a grey image of at least 8x8 pixels, got {img.shape}")
    shrink = min(1.0, _MAX_MEASURE_SIDE / max(img.shape))
    if shrink < 1.0:  # a huge image is first measured smaller (the measure follows the resolution): memory, time
        size = (max(8, round(img.shape[1] * shrink)), max(8, round(img.shape[0] * shrink)))
        w = estimate_chromosome_width(cv2.resize(img, size, interpolation=cv2.INTER_AREA), iterations=iterations)
        return None if w is None else w * img.shape[1] / size[0]
    width = _width_here(img)
    for _ in range(iterations):
        if width is None or width <= 0:
            return None
        f = _MEASURE_AT_PX / width
        if abs(f - 1.0) < 0.1:
            break
        f = float(np.clip(f, 0.1, 10.0))
        size = (max(8, round(img.shape[1] * f)), max(8, round(img.shape[0] * f)))
        interp = cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA
        there = _width_here(np.clip(cv2.resize(img, size, interpolation=interp), 0.0, 1.0))
        width = None if there is None else there * img.shape[1] / size[0]
    return width


def processing_factor(width_px: float | None, *, tolerance: float = SCALE_TOLERANCE) -> float:
    """The factor that brings chromosomes ``width_px`` wide to the models' scale (:data:`REFERENCE_WIDTH_PX`);
    1 while the width is within ``tolerance`` of it (or unknown)."""
    if width_px is None or width_px <= 0:
        return 1.0
    f = REFERENCE_WIDTH_PX / float(width_px)
    return 1.0 if 1.0 / tolerance <= f <= tolerance else f


def out_of_range(
    checks: ImageChecks,
    *,
    count: int | None = None,
    sanity: float | None = None,
    factor_wanted: float | None = None,
) -> list[str]:
    """Messages saying why an image is outside what the models were trained on (empty: nothing seen).

    Args:
        checks: the measurements before detection.
        count: the number of chromosomes the pipeline assigned (None: not known yet).
        sanity: :func:`metrics.karyotype.sanity_score` of the karyotype (None: not known yet).
        factor_wanted: the scale correction the measure asked for, before any cap (None: as applied).
    """
    msgs: list[str] = []
    f = checks.processing_scale if factor_wanted is None else factor_wanted
    if checks.chromosome_width_px is None:
        msgs.append("the chromosome scale could not be measured (no dark objects on a lighter background)")
    elif not SCALE_RANGE[0] <= f <= SCALE_RANGE[1]:
        msgs.append(
            f"chromosomes {checks.chromosome_width_px:.1f} px wide: {f:.2f}x the models' scale was needed "
            f"(trained for {SCALE_RANGE[0]:.2f}x-{SCALE_RANGE[1]:.1f}); give --chromosome-width if the measure is wrong"
        )
    if checks.contrast < MIN_CONTRAST:
        msgs.append(
            f"faint image: grey values span {checks.contrast:.2f} of the range (models trained on >= {MIN_CONTRAST})"
        )
    if count is not None and not COUNT_RANGE[0] <= count <= COUNT_RANGE[1]:
        msgs.append(f"{count} chromosomes found, far from 46 (expected {COUNT_RANGE[0]}-{COUNT_RANGE[1]})")
    if sanity is not None and count and sanity < MIN_SANITY:
        msgs.append(f"implausible karyotype (sanity score {sanity:.3f} < {MIN_SANITY})")
    return msgs
