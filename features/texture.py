"""Banding profile along the centre line and band-contrast statistics.

The density profile is the mean darkness ``1 - image`` over the inner part of the chromosome's width
in each row of the straightened strip (the inner ``inner`` fraction of the mask run around the centre,
so the pale, blurred outline does not dilute the bands), resampled to a fixed number of points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.signal import find_peaks

from .geometry import resample_profile

__all__ = ["BandStats", "band_stats", "density_profile", "normalise_profile"]

PROFILE_LEN = 64


def density_profile(
    strip: np.ndarray, strip_mask: np.ndarray, *, n: int = PROFILE_LEN, inner: float = 0.6
) -> np.ndarray:
    """Mean darkness along a straightened chromosome: float32[n] in [0, 1].

    Args:
        strip: float32 [L, W] straightened grey image (dark chromosome, white = 1.0 outside).
        strip_mask: uint8 [L, W] straightened mask.
        n: output length (the profile is linearly resampled from L rows).
        inner: fraction of each row's mask run (centred on the run's middle) that is averaged.

    Rows without mask pixels take the value of the nearest row that has some; a strip without any
    mask pixel gives zeros.
    """
    s = np.asarray(strip, np.float32)
    m = np.asarray(strip_mask) > 0
    if s.ndim != 2 or s.shape[0] == 0 or not m.any():
        return np.zeros(n, np.float32)
    dark = 1.0 - np.clip(s, 0.0, 1.0)
    L = s.shape[0]
    prof = np.full(L, np.nan)
    for i in range(L):
        cols = np.flatnonzero(m[i])
        if len(cols) == 0:
            continue
        a, b = cols[0], cols[-1]
        half = 0.5 * inner * (b - a + 1)
        mid = 0.5 * (a + b)
        lo, hi = int(np.floor(mid - half + 0.5)), int(np.ceil(mid + half - 0.5))
        sel = cols[(cols >= lo) & (cols <= hi)]
        if len(sel) == 0:
            sel = cols
        prof[i] = float(dark[i, sel].mean())
    good = np.isfinite(prof)
    if not good.all():
        idx = np.arange(L)
        prof = np.interp(idx, idx[good], prof[good])
    return resample_profile(prof, n)


def normalise_profile(p: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std copy of a profile float32[n] (zeros where the profile is flat)."""
    p = np.asarray(p, np.float64).reshape(-1)
    if len(p) == 0:
        return np.zeros(0, np.float32)
    sd = p.std()
    if not np.isfinite(sd) or sd < 1e-6:
        return np.zeros_like(p, np.float32)
    return ((p - p.mean()) / sd).astype(np.float32)


@dataclass(frozen=True)
class BandStats:
    """Band contrast of a density profile.

    Attributes:
        mean: mean darkness (0..1).
        std: standard deviation of the profile (darkness units).
        range: max - min of the lightly smoothed profile (darkness units).
        n_bands: number of dark bands (peaks with prominence >= max(0.01, 0.5 std)).
    """

    mean: float
    std: float
    range: float
    n_bands: int


def band_stats(profile: np.ndarray) -> BandStats:
    """Band contrast statistics of a density profile float[n]; zeros for an empty or flat profile."""
    p = np.asarray(profile, np.float64).reshape(-1)
    p = p[np.isfinite(p)]
    if len(p) < 3:
        return BandStats(float(p.mean()) if len(p) else 0.0, 0.0, 0.0, 0)
    sm = ndimage.gaussian_filter1d(p, 1.0, mode="nearest")
    sd = float(p.std())
    peaks, _ = find_peaks(sm, prominence=max(0.01, 0.5 * sd))
    return BandStats(float(p.mean()), sd, float(sm.max() - sm.min()), int(len(peaks)))
