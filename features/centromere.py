"""Centromere (primary constriction), centromere index and polarity from the width and density profiles.

Method (:func:`locate_centromere`), on profiles indexed from the start of the centre line:

1. The width profile (pixels) is smoothed (Gaussian, sigma = 1.5 % of the length) and divided by the
   chromosome's typical width (median over the central 70 %).
2. For every position ``i`` in ``[margin, 1 - margin]`` of the length, the *valley depth* is
   ``min(max(w[:i]), max(w[i:])) - w[i]``: how far the width dips below the shoulders on *both*
   sides. The tapering tips therefore score nothing (there is no shoulder beyond a tip), while the
   primary constriction, with the two chromatid pairs bulging on both sides, scores highest.
3. Only where the width shows no clear constriction (valley shallower than ``strong_depth``, e.g.
   masks derived from boxes or blurred outlines), the density profile (mean darkness) adds the same
   valley depth computed on darkness divided by its mean, weighted by ``density_weight`` (the
   centromere is usually a pale, narrow region in G-banding; pale G-negative bands are common too,
   so a clear outline constriction is never overruled by the bands).
4. The best position is refined to sub-sample precision by a parabola through its neighbours.
5. Acrocentric rule: the satellite stalk and the tiny p arm make one end region (5-20 % of the
   length) clearly narrower than the other, and the centromere, right next to that end, shows no
   valley with a shoulder beyond it. When that end asymmetry exceeds both ``acro_min`` and the best
   width valley, the narrower end is the p arm and the centromere is put where the width first
   reaches 90 % of the typical width (CI clipped to 0.05..0.25); position confidence is halved.
6. The p arm is by definition the shorter one: ``CI = min(pos, 1 - pos)`` and ``p_at_start = pos < 0.5``.
   For acrocentrics this is the end the constriction lies near.

Confidences: ``centromere_conf = clip(depth / 0.2)`` (a constriction 20 % narrower than the shoulders
is certain); ``polarity_conf = centromere_conf * clip(|pos - 0.5| / 0.1)`` (near-metacentric
chromosomes have an uncertain polarity whatever the constriction). Without any valley the
centromere is put at the middle (``CI = 0.5``) with both confidences 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["CentromereEstimate", "locate_centromere"]


@dataclass(frozen=True)
class CentromereEstimate:
    """Where the centromere lies along a chromosome.

    Attributes:
        pos: fraction of the length from the start of the centre line (0..1).
        ci: centromere index p / (p + q) = min(pos, 1 - pos), in [0, 0.5].
        p_at_start: True when the (shorter) p arm lies at the start of the centre line.
        depth: valley depth of the constriction, relative to the typical width (0 = none).
        conf: confidence in the position, [0, 1].
        polarity_conf: confidence in ``p_at_start``, [0, 1].
    """

    pos: float
    ci: float
    p_at_start: bool
    depth: float
    conf: float
    polarity_conf: float


def _valley_depth(v: np.ndarray) -> np.ndarray:
    """``min(max(v[:i+1]), max(v[i:])) - v[i]`` for every i (>= 0)."""
    left = np.maximum.accumulate(v)
    right = np.maximum.accumulate(v[::-1])[::-1]
    return np.minimum(left, right) - v


def _acrocentric(ws: np.ndarray, n: int, valley: float, acro_min: float) -> CentromereEstimate | None:
    """Acrocentric estimate from the end asymmetry of the relative width ``ws``, or None."""
    a, b = max(1, int(round(0.05 * n))), max(2, int(round(0.2 * n)))
    head, tail = float(ws[a:b].mean()), float(ws[n - b : n - a].mean())
    asym = abs(head - tail)
    if asym < max(acro_min, valley):
        return None
    p_start = head < tail
    prof = ws if p_start else ws[::-1]
    reach = np.flatnonzero(prof[: n // 2] >= 0.9 * float(np.median(ws[n // 4 : 3 * n // 4])))
    k = int(reach[0]) if len(reach) else b
    ci = float(np.clip(k / (n - 1), 0.05, 0.25))
    conf = float(np.clip(asym / 0.25, 0.0, 1.0))
    pos = ci if p_start else 1.0 - ci
    return CentromereEstimate(pos, ci, p_start, float(valley), 0.5 * conf, conf)


def locate_centromere(
    width: np.ndarray,
    density: np.ndarray | None = None,
    *,
    margin: float = 0.08,
    density_weight: float = 0.3,
    strong_depth: float = 0.08,
    acro_min: float = 0.1,
) -> CentromereEstimate:
    """Estimate the centromere from profiles along the centre line.

    Args:
        width: float [n] chromosome width in pixels at n evenly spaced positions from the start.
        density: optional float [n] mean darkness (0..1) at the same positions.
        margin: fraction of the length at each end that cannot hold the centromere.
        density_weight: weight of the density valley relative to the width valley.
        strong_depth: a width valley at least this deep (relative to the typical width) is used
            alone; the density profile only helps where the outline shows no clear constriction.
        acro_min: smallest end asymmetry (relative width difference of the two end regions) that
            can make the chromosome acrocentric (see the module docstring).

    Returns:
        :class:`CentromereEstimate`; the middle with zero confidence for profiles shorter than 5
        points, flat profiles or non-finite input.
    """
    w = np.asarray(width, np.float64).reshape(-1)
    n = len(w)
    default = CentromereEstimate(0.5, 0.5, True, 0.0, 0.0, 0.0)
    if n < 5 or not np.all(np.isfinite(w)) or w.max() <= 0:
        return default
    sigma = max(0.6, 0.015 * n)
    lo_c, hi_c = int(0.15 * n), max(int(0.15 * n) + 1, int(np.ceil(0.85 * n)))
    typ = float(np.median(w[lo_c:hi_c]))
    if typ <= 0:
        typ = float(w.max())
    ws = ndimage.gaussian_filter1d(w / typ, sigma, mode="nearest")
    score = _valley_depth(ws)
    wdepth = score.copy()
    pos_grid = np.arange(n) / (n - 1)
    allowed = (pos_grid >= margin) & (pos_grid <= 1 - margin)
    strong = allowed.any() and float(wdepth[allowed].max()) >= strong_depth
    if density is not None and density_weight > 0 and not strong:
        d = np.asarray(density, np.float64).reshape(-1)
        if len(d) == n and np.all(np.isfinite(d)) and d.mean() > 1e-6:
            ds = ndimage.gaussian_filter1d(d / d.mean(), sigma, mode="nearest")
            score = score + density_weight * _valley_depth(ds)
    if not allowed.any():
        return default
    acro = _acrocentric(ws, n, float(wdepth[allowed].max()), acro_min)
    if acro is not None:
        return acro
    s = np.where(allowed, score, -np.inf)
    i = int(np.argmax(s))
    if not np.isfinite(s[i]) or s[i] <= 1e-6:
        return default
    # sub-sample refinement
    frac = 0.0
    if 0 < i < n - 1 and np.isfinite(s[i - 1]) and np.isfinite(s[i + 1]):
        den = s[i - 1] - 2 * s[i] + s[i + 1]
        if den < -1e-12:
            frac = float(np.clip(0.5 * (s[i - 1] - s[i + 1]) / den, -0.5, 0.5))
    pos = float(np.clip((i + frac) / (n - 1), 0.0, 1.0))
    depth = float(max(wdepth[i], 0.0))
    conf = float(np.clip(s[i] / 0.2, 0.0, 1.0))
    ci = min(pos, 1.0 - pos)
    pol = float(conf * np.clip(abs(pos - 0.5) / 0.1, 0.0, 1.0))
    return CentromereEstimate(pos, float(ci), bool(pos < 0.5), depth, conf, pol)
