"""Realistic synthetic G-banded metaphase spreads with exact masks, classes, centromeres and polarity.

Each spread is drawn from one :class:`numpy.random.Generator`, so the same seed gives the same image.
The model of one chromosome (all lengths in pixels, coordinates with integer pixel centres):

* a smooth centre line of length ``L = scale * relative_length`` (reference ISCN length, with a small
  per-chromosome condensation jitter): straight, a circular arc, or an arc with one smooth kink;
* two sister chromatids: tubes of radius ``r(s)`` at ``+-off(s)`` either side of the centre line, each
  with a round telomere cap; a faint groove between them; both pinched together at the centromere
  (arc length ``CI * L`` from the p end, CI the reference centromere index) and thinned at stalks;
* an optical density along the centre line from the ISCN G-bands of :func:`karyogram.reference.bands`
  (gpos density 25..100 darker, gneg light, gvar dark, acen and stalk pale), smoothed by the band
  resolution.

The spread: chromosomes placed in an elliptical region (largest first) without touching, except a few
deliberately touching or crossing pairs (overlap pixels belong to both masks); round, textured
interphase nuclei near the edge and small debris specks (neither is an instance); transmitted light
``I = background * illumination * exp(-OD)``, optical blur, the bright rim that capture software's
sharpening leaves around objects, Poisson-like and Gaussian noise, and 8-bit quantisation.

Run ``python -m datasets.synthetic --out DIR --n 100`` to write a COCO-format dataset.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree
from scipy.special import erf

from karyogram.labels import AUTOSOMES, NUM_CLASSES, X_ID, Y_ID
from karyogram.reference import bands, centromere_indices, relative_lengths

from .base import RecordDataset, Transform
from .record import KaryoRecord, masks_to_boxes
from .splits import select_split

__all__ = [
    "ParsedKaryotype",
    "SyntheticConfig",
    "SyntheticDataset",
    "generate_spread",
    "get_args_parser",
    "main",
    "parse_karyotype",
]

NORMAL_KARYOTYPES: tuple[str, ...] = ("46,XX", "46,XY")


# ---------------------------------------------------------------------------------------------- karyotype
class ParsedKaryotype(NamedTuple):
    """A numerical ISCN karyotype: ``ids`` the class id of every chromosome (sorted), ``sex`` e.g. "XXY"."""

    iscn: str
    ids: tuple[int, ...]
    sex: str


def parse_karyotype(iscn: str) -> ParsedKaryotype:
    """Parse a numerical ISCN karyotype such as "46,XY", "47,XX,+21", "45,X", "47,XXY", "45,XX,-22".

    Only whole-chromosome gains (``+N``, ``+X``) and losses (``-N``) are understood; structural
    rearrangements (``t(...)``, ``del(...)``) are refused.

    >>> k = parse_karyotype("47,XY,+21")
    >>> len(k.ids), k.ids.count(21), k.sex
    (47, 3, 'XY')

    Raises:
        ValueError: the string is not of that form, or its count disagrees with the chromosomes listed.
    """
    text = str(iscn).strip().replace(" ", "")
    parts = text.split(",")
    if len(parts) < 2 or not parts[0].isdigit():
        raise ValueError(f"karyotype {iscn!r}: expected ISCN like '46,XX', '47,XY,+21' or '45,X'")
    count = int(parts[0])
    sex = parts[1].upper()
    if not re.fullmatch(r"[XY]+", sex):
        raise ValueError(
            f"karyotype {iscn!r}: sex chromosomes {parts[1]!r} must be letters X and Y (e.g. XX, XY, X, XXY)"
        )
    ids = [i for i in AUTOSOMES for _ in range(2)]
    ids += [X_ID if c == "X" else Y_ID for c in sex]
    for tok in parts[2:]:
        m = re.fullmatch(r"([+-])(\d{1,2}|[XYxy])", tok)
        if not m:
            raise ValueError(
                f"karyotype {iscn!r}: cannot read {tok!r}; only numerical changes like +21, -22 or +X are supported"
            )
        sign, name = m.groups()
        cid = X_ID if name.upper() == "X" else Y_ID if name.upper() == "Y" else int(name)
        if not 1 <= cid <= NUM_CLASSES:
            raise ValueError(f"karyotype {iscn!r}: chromosome {name!r} is not 1-22, X or Y")
        if sign == "+":
            ids.append(cid)
        else:
            if cid not in ids:
                raise ValueError(f"karyotype {iscn!r}: cannot remove chromosome {name}, none is left")
            ids.remove(cid)
    if len(ids) != count:
        raise ValueError(f"karyotype {iscn!r}: says {count} chromosomes but lists {len(ids)}")
    return ParsedKaryotype(text, tuple(sorted(ids)), sex)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class SyntheticConfig:
    """How synthetic spreads look. Ranges ``(lo, hi)`` are sampled uniformly per spread (or per object).

    Attributes:
        image_size: height and width, each drawn from this range, pixels.
        scale: pixels per unit relative length (haploid autosomal length = 1); chromosome 1 (0.0887) is
            then 98..169 px long for the default (1100, 1900); CIL:54816 chromosome 1 boxes
            have a median diagonal of 165 px in images of median size 775 px, as in CIL:54816.
        width_ratio: chromatid-pair width as a fraction of chromosome 1's length (CIL: ~0.15).
        length_jitter: relative standard deviation of each chromosome's length (uneven condensation).
        band_resolutions: ISCN band resolutions (400, 550, 850) to choose from per spread.
        band_blur: along-axis smoothing of the band profile, as a fraction of the width.
        p_straight / p_kink: fraction of chromosomes drawn straight / with one smooth kink (others: arc).
        max_bend_deg: largest total bend of an arc or kink, degrees.
        p_touch / p_cross: probability that a chromosome is placed touching / crossing another.
        spread_fill: fraction of the spread's ellipse covered by chromosome pixels.
        nuclei_mean: mean number of interphase nuclei (Poisson); nucleus_radius as a fraction of chr 1 length.
        debris: range of the number of debris specks.
        background: background transmission (0..1, 1 = white).
        od_light / od_dark: optical density of a G-negative / fully G-positive band at a chromatid's core.
        blur_sigma: optical PSF (Gaussian sigma, px). halo: strength of the bright sharpening rim.
        noise_std: noise standard deviation at full transmission. illumination: relative unevenness.
        karyotypes: ISCN strings drawn from (uniformly) when ``generate_spread`` is given none.
    """

    image_size: tuple[int, int] = (600, 1000)
    scale: tuple[float, float] = (1100.0, 1900.0)
    width_ratio: tuple[float, float] = (0.13, 0.17)
    length_jitter: float = 0.07
    band_resolutions: tuple[int, ...] = (400, 550, 850)
    band_blur: tuple[float, float] = (0.06, 0.14)
    p_straight: float = 0.25
    p_kink: float = 0.3
    max_bend_deg: float = 110.0
    p_touch: float = 0.12
    p_cross: float = 0.05
    spread_fill: tuple[float, float] = (0.09, 0.18)
    nuclei_mean: float = 0.8
    nucleus_radius: tuple[float, float] = (0.35, 0.75)
    debris: tuple[int, int] = (20, 150)
    background: tuple[float, float] = (0.9, 1.02)
    od_light: tuple[float, float] = (0.25, 0.5)
    od_dark: tuple[float, float] = (1.1, 1.7)
    blur_sigma: tuple[float, float] = (0.6, 1.3)
    halo: tuple[float, float] = (0.0, 0.9)
    noise_std: tuple[float, float] = (0.006, 0.025)
    illumination: tuple[float, float] = (0.0, 0.08)
    karyotypes: tuple[str, ...] = NORMAL_KARYOTYPES

    def __post_init__(self) -> None:
        lo, hi = self.image_size
        if not 64 <= lo <= hi:
            raise ValueError(f"image_size {self.image_size} must be (lo, hi) with 64 <= lo <= hi")
        for r in self.band_resolutions:
            if r not in (400, 550, 850):
                raise ValueError(f"band resolution {r} must be 400, 550 or 850")
        for k in self.karyotypes:
            parse_karyotype(k)


# ---------------------------------------------------------------------------------------------- one chromosome
@dataclass
class _Chromosome:
    """One rendered chromosome in local pixel coordinates (patch origin ``x0, y0`` is integer)."""

    label: int
    x0: int
    y0: int
    mask: np.ndarray  # bool [h, w]
    od: np.ndarray  # float32 [h, w]
    centromere: np.ndarray  # float64 [2] (x, y) local coords
    p_dir: np.ndarray  # float64 [2]
    line: np.ndarray = field(repr=False)  # float64 [K, 2] centre line (local coords), p end first


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _band_profile(cid: int, resolution: int, s_frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band density (0..100) and width factor (stalks thin) at fractions ``s_frac`` of the length from pter."""
    bs = bands(resolution)[cid]
    edges = np.array([b.stop for b in bs])
    idx = np.clip(np.searchsorted(edges, np.clip(s_frac, 0, 1), side="right"), 0, len(bs) - 1)
    dens = np.array([b.density for b in bs])[idx]
    stalk = np.array([b.stain == "stalk" for b in bs])[idx]
    return dens.astype(np.float64), np.where(stalk, 0.45, 1.0)


def _render_chromosome(
    rng: np.random.Generator,
    cid: int,
    length: float,
    width: float,
    cfg: SyntheticConfig,
    resolution: int,
    od_range: tuple[float, float],
) -> _Chromosome:
    """Draw the geometry and the optical density of one chromosome of ``length`` x ``width`` pixels."""
    L, W = float(length), float(width)
    ds = 0.5
    m = W  # straight extension of the centre line past both ends, for the round caps
    s = np.arange(-m, L + m + ds, ds)
    u = np.clip(s, 0.0, L) / L
    # heading: random rotation + arc + optional smooth kink (bending only inside [0, L])
    theta = rng.uniform(-math.pi, math.pi)
    kind = rng.random()
    maxb = math.radians(cfg.max_bend_deg)
    if kind < cfg.p_straight or L < 2.5 * W:
        bend = rng.normal(0.0, 0.06)
        heading = theta + bend * (u - 0.5)
    elif kind < cfg.p_straight + cfg.p_kink:
        arc = rng.normal(0.0, 0.25)
        amp = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0) * maxb
        sk = rng.uniform(0.25, 0.75) * L
        sig = max(0.6 * W * abs(amp), 0.5 * W)
        kink = 0.5 * (1.0 + erf((u * L - sk) / (sig * math.sqrt(2.0))))
        heading = theta + arc * (u - 0.5) + amp * kink
    else:
        arc = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.0) * min(maxb, 1.2 * L / W)
        heading = theta + arc * (u - 0.5)
    t = np.stack([np.cos(heading), np.sin(heading)], 1)
    line = np.concatenate([[[0.0, 0.0]], np.cumsum(t[:-1] * ds, 0)])
    nrm = np.stack([-t[:, 1], t[:, 0]], 1)

    # width profile: chromatid radius r(s) and offset off(s); pinched at the centromere, thin at stalks
    ci = float(centromere_indices()[cid - 1])
    sc = ci * L
    sep = rng.uniform(0.3, 0.55)  # chromatid offset / chromatid radius
    h0 = 0.5 * W  # half width of the pair
    r0 = h0 / (1.0 + sep)
    off0 = sep * r0
    g_c = np.exp(-0.5 * ((s - sc) / (0.3 * W)) ** 2)
    depth = rng.uniform(0.1, 0.25)  # relative narrowing of the pair at the centromere
    dens, stalk = _band_profile(cid, resolution, s / L)
    stalk = gaussian_filter1d(stalk, 0.15 * W / ds, mode="nearest")
    off_s = off0 * (1.0 - 0.7 * g_c) * stalk
    r_s = h0 * (1.0 - depth * g_c) * stalk - off_s
    # band optical density along the axis, smoothed by the resolution of the preparation
    blur = _u(rng, cfg.band_blur) * W * (1.0 + (550.0 / resolution - 0.65) * 0.5)
    dens = gaussian_filter1d(dens, max(blur, 0.5) / ds, mode="nearest") / 100.0
    od_lo, od_hi = od_range
    gamma = rng.uniform(0.8, 1.2)
    od_s = (od_lo + (od_hi - od_lo) * dens**gamma) * rng.uniform(0.9, 1.1)
    groove = rng.uniform(0.1, 0.25) * (1.0 - g_c)

    # pixels of the local patch and their (s, d) coordinates relative to the centre line
    inside = (s >= 0) & (s <= L)
    lo = np.floor(line[inside].min(0) - W / 2 - 2).astype(int)
    hi = np.ceil(line[inside].max(0) + W / 2 + 2).astype(int)
    xs, ys = np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    dist, idx = cKDTree(line).query(pts, distance_upper_bound=W)
    sel = np.flatnonzero(np.isfinite(dist))  # only pixels within W of the centre line can be inside
    idx = idx[sel]
    vec = pts[sel] - line[idx]
    sp = s[idx] + (vec * t[idx]).sum(1)
    dp = (vec * nrm[idx]).sum(1)
    r = np.maximum(np.interp(sp, s, r_s), 1e-6)
    off = np.interp(sp, s, off_s)
    e2 = np.maximum(0.0, np.maximum(r0 - sp, sp - (L - r0))) ** 2  # past a chromatid's cap centre
    body = np.zeros(len(sel))
    inside_k = np.zeros(len(sel), bool)
    for k in (-1.0, 1.0):
        uu2 = ((dp - k * off) ** 2 + e2) / r**2
        body = np.maximum(body, np.clip(1.0 - uu2, 0.0, 1.0) ** 0.3 * rng.uniform(0.93, 1.07))
        inside_k |= uu2 < 1.0
    gr = 1.0 - np.interp(sp, s, groove) * np.exp(-0.5 * (dp / (0.09 * W)) ** 2)
    shape = (len(ys), len(xs))
    grain = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(0.8, W / 10)).ravel()
    grain *= rng.uniform(0.05, 0.14) / max(float(grain.std()), 1e-6)
    inmask = np.zeros(len(pts), bool)
    inmask[sel] = inside_k
    od = np.zeros(len(pts))
    od[sel] = np.where(inside_k, body * gr * np.interp(sp, s, od_s) * (1.0 + grain[sel]), 0.0)
    cen = np.array([np.interp(sc, s, line[:, 0]), np.interp(sc, s, line[:, 1])])
    j = int(np.clip(np.searchsorted(s, sc), 1, len(s) - 1))
    tan = line[j] - line[j - 1]
    pdir = -tan / np.linalg.norm(tan)
    return _Chromosome(
        label=cid,
        x0=int(lo[0]),
        y0=int(lo[1]),
        mask=inmask.reshape(shape),
        od=od.reshape(shape).astype(np.float32),
        centromere=cen,
        p_dir=pdir,
        line=line[inside],
    )


# ---------------------------------------------------------------------------------------------- spread
def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field float32 [h, w] in about [-1, 1] (cubic upsampling of a cells x cells grid)."""
    g = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _add_nucleus(rng: np.random.Generator, od: np.ndarray, forbid: np.ndarray, radius: float) -> None:
    """Add one textured interphase nucleus (not an instance), centred near the image border."""
    h, w = od.shape
    side = rng.integers(4)
    along = rng.uniform(0.05, 0.95)
    inset = rng.uniform(-0.4, 0.9) * radius
    cx, cy = [(along * w, inset), (along * w, h - inset), (inset, along * h), (w - inset, along * h)][side]
    ax = radius * rng.uniform(0.85, 1.15)
    ay = radius * rng.uniform(0.85, 1.15)
    x0, x1 = int(max(0, cx - ax - 4)), int(min(w, cx + ax + 5))
    y0, y1 = int(max(0, cy - ay - 4)), int(min(h, cy + ay + 5))
    if x1 <= x0 or y1 <= y0:
        return
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    rr = np.sqrt(((gx - cx) / ax) ** 2 + ((gy - cy) / ay) ** 2)
    edge = np.clip((1.0 - rr) * radius / 3.0, 0.0, 1.0)
    ph, pw = y1 - y0, x1 - x0
    tex = 0.6 * _smooth_field(rng, ph, pw, max(3, int(radius / 8))) + 0.4 * _smooth_field(
        rng, ph, pw, max(4, int(radius / 3))
    )
    od[y0:y1, x0:x1] += edge * rng.uniform(1.0, 1.8) * (1.0 + 0.25 * tex)
    forbid[y0:y1, x0:x1] |= rr < 1.15


def _place(
    rng: np.random.Generator,
    ch: _Chromosome,
    occ: np.ndarray,
    near: np.ndarray,
    placed: list[tuple[_Chromosome, int, int]],
    ellipse: tuple[float, float, float, float],
    cfg: SyntheticConfig,
) -> tuple[int, int]:
    """Choose an integer translation for ``ch`` (patch inside the image); see the module docstring."""
    H, W = occ.shape
    ph, pw = ch.mask.shape
    m = ch.mask
    area = int(m.sum())
    cx, cy, rx, ry = ellipse
    mc = np.array([ch.x0 + pw / 2.0, ch.y0 + ph / 2.0])

    def clip(tx: float, ty: float) -> tuple[int, int]:
        tx = int(round(min(max(tx, -ch.x0), W - pw - ch.x0)))
        ty = int(round(min(max(ty, -ch.y0), H - ph - ch.y0)))
        return tx, ty

    def overlap(a: np.ndarray, tx: int, ty: int) -> int:
        x, y = ch.x0 + tx, ch.y0 + ty
        return int(np.count_nonzero(a[y : y + ph, x : x + pw] & m))

    mode = rng.random()
    if placed and mode < cfg.p_cross:
        for _ in range(30):
            other, otx, oty = placed[rng.integers(len(placed))]
            q = other.line[rng.integers(len(other.line))] + (otx, oty)
            tx, ty = clip(*(q - ch.centromere + rng.normal(0, 2, 2)))
            ov_all = overlap(occ, tx, ty)
            x, y = ch.x0 + tx, ch.y0 + ty
            om = np.zeros_like(occ[y : y + ph, x : x + pw])
            oy, ox = other.y0 + oty - y, other.x0 + otx - x
            oh, ow = other.mask.shape
            ya, yb, xa, xb = max(0, oy), min(ph, oy + oh), max(0, ox), min(pw, ox + ow)
            if ya < yb and xa < xb:
                om[ya:yb, xa:xb] = other.mask[ya - oy : yb - oy, xa - ox : xb - ox]
            ov_j = int(np.count_nonzero(om & m))
            if 0 < ov_j == ov_all and ov_j < 0.35 * area:
                return tx, ty
    elif placed and mode < cfg.p_cross + cfg.p_touch:
        for _ in range(10):
            other, otx, oty = placed[rng.integers(len(placed))]
            start = other.line[len(other.line) // 2] + (otx, oty) - (ch.line[len(ch.line) // 2])
            ang = rng.uniform(0, 2 * math.pi)
            step = np.array([math.cos(ang), math.sin(ang)])
            for k in range(0, int(max(pw, ph) + max(other.mask.shape)), 2):
                tx, ty = clip(*(start + k * step))
                if overlap(occ, tx, ty) == 0:
                    if k > 0 and overlap(near, tx, ty) < 0.5 * area:
                        return tx, ty
                    break
    # normal placement: inside the spread's ellipse, not touching anything
    for attempt in range(150):
        relax = attempt >= 80
        a, rr = rng.uniform(0, 2 * math.pi), math.sqrt(rng.random()) * (1.5 if relax else 1.0)
        p = np.array([cx + rx * rr * math.cos(a), cy + ry * rr * math.sin(a)])
        tx, ty = clip(*(p - mc))
        if overlap(near if not relax else occ, tx, ty) == 0:
            return tx, ty
    # crowded: anywhere in the image with the least overlap
    best, best_ov = (0, 0), None
    for _ in range(60):
        tx, ty = clip(rng.uniform(-ch.x0, W - pw - ch.x0), rng.uniform(-ch.y0, H - ph - ch.y0))
        ov = overlap(occ, tx, ty)
        if best_ov is None or ov < best_ov:
            best, best_ov = (tx, ty), ov
        if ov == 0:
            break
    return best


def _or_into(dst: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """``dst[y:y+h, x:x+w] |= patch``, clipped to ``dst``."""
    h, w = patch.shape
    ya, yb, xa, xb = max(0, y), min(dst.shape[0], y + h), max(0, x), min(dst.shape[1], x + w)
    if ya < yb and xa < xb:
        dst[ya:yb, xa:xb] |= patch[ya - y : yb - y, xa - x : xb - x]


def generate_spread(
    rng: np.random.Generator,
    config: SyntheticConfig | None = None,
    karyotype: str | None = None,
    *,
    image_id: str | None = None,
    size: tuple[int, int] | None = None,
) -> KaryoRecord:
    """Generate one G-banded metaphase spread.

    Args:
        rng: the only source of randomness (same state -> identical record).
        config: appearance parameters (default :class:`SyntheticConfig`).
        karyotype: numerical ISCN string ("46,XY", "47,XX,+21", "45,X", ...); default one drawn from
            ``config.karyotypes``.
        image_id: stored in ``meta["image_id"]`` and ``meta["group"]``; default "synthetic".
        size: ``(H, W)`` in pixels instead of drawing it from ``config.image_size``.

    Returns:
        a validated :class:`KaryoRecord`: image float32 [H, W] in [0, 1] (8-bit levels, dark chromosomes
        on light background), exact masks uint8 [N, H, W] (``masks_derived`` False), labels int64 [N]
        (sorted), boxes [N, 4], centromeres float32 [N, 2] ``(x, y)`` on the centre line at ``CI * L``
        from the p end, p_dir float32 [N, 2] unit vectors toward the p-arm end, meta with ``source``,
        ``image_id``, ``karyotype``, ``sex``, ``group``, ``seed``, ``scale_px`` (px per unit relative
        length), ``width_px`` and ``band_resolution``.
    """
    cfg = config or SyntheticConfig()
    kt = parse_karyotype(karyotype if karyotype is not None else str(rng.choice(list(cfg.karyotypes))))
    if size is None:
        H = int(rng.integers(cfg.image_size[0], cfg.image_size[1] + 1))
        Wimg = int(rng.integers(cfg.image_size[0], cfg.image_size[1] + 1))
    else:
        H, Wimg = int(size[0]), int(size[1])
    scale = _u(rng, cfg.scale)
    rel = relative_lengths()
    len1 = scale * rel[0]
    # keep the longest chromosome well inside small images
    if len1 > 0.3 * min(H, Wimg):
        scale *= 0.3 * min(H, Wimg) / len1
        len1 = scale * rel[0]
    width = max(6.0, _u(rng, cfg.width_ratio) * len1)
    resolution = int(rng.choice(list(cfg.band_resolutions)))
    od_range = (_u(rng, cfg.od_light), _u(rng, cfg.od_dark))

    chroms = []
    for cid in kt.ids:
        L = scale * rel[cid - 1] * float(np.clip(rng.normal(1.0, cfg.length_jitter), 0.75, 1.25))
        L = max(L, 1.6 * width)
        w = width * rng.uniform(0.93, 1.07)
        chroms.append(_render_chromosome(rng, cid, L, w, cfg, resolution, od_range))

    od = np.zeros((H, Wimg), np.float32)
    forbid = np.zeros((H, Wimg), bool)
    for _ in range(int(rng.poisson(cfg.nuclei_mean))):
        _add_nucleus(rng, od, forbid, _u(rng, cfg.nucleus_radius) * len1)

    # the spread: an ellipse whose area holds the chromosomes at the drawn fill fraction
    area = sum(float(c.mask.sum()) for c in chroms)
    r_eq = math.sqrt(area / _u(rng, cfg.spread_fill) / math.pi)
    aspect = rng.uniform(0.8, 1.25)
    rx = min(r_eq * math.sqrt(aspect), 0.46 * Wimg)
    ry = min(r_eq / math.sqrt(aspect), 0.46 * H)
    cx = Wimg / 2 + rng.uniform(-0.08, 0.08) * Wimg
    cy = H / 2 + rng.uniform(-0.08, 0.08) * H

    occ = np.zeros((H, Wimg), bool)
    near = forbid.copy()
    gap = max(2, int(round(0.15 * width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
    placed: list[tuple[_Chromosome, int, int]] = []
    order = sorted(range(len(chroms)), key=lambda i: -chroms[i].mask.sum())
    n = len(chroms)
    masks = np.zeros((n, H, Wimg), np.uint8)
    cents = np.zeros((n, 2), np.float32)
    pdirs = np.zeros((n, 2), np.float32)
    for i in order:
        ch = chroms[i]
        tx, ty = _place(rng, ch, occ, near, placed, (cx, cy, rx, ry), cfg)
        x, y = ch.x0 + tx, ch.y0 + ty
        ph, pw = ch.mask.shape
        sl = (slice(y, y + ph), slice(x, x + pw))
        occ[sl] |= ch.mask
        dil = cv2.dilate(np.pad(ch.mask.astype(np.uint8), gap), kernel).astype(bool)
        _or_into(near, dil, x - gap, y - gap)
        od[sl] += ch.od
        masks[i][sl] = ch.mask
        cents[i] = ch.centromere + (tx, ty)
        pdirs[i] = ch.p_dir
        placed.append((ch, tx, ty))

    # debris specks (not instances) and faint background blotches
    for _ in range(int(rng.integers(cfg.debris[0], cfg.debris[1] + 1))):
        c = (int(rng.integers(0, Wimg)), int(rng.integers(0, H)))
        cv2.circle(od, c, int(rng.choice([1, 1, 1, 2, 2, 3])), float(rng.uniform(0.1, 0.8)), -1, cv2.LINE_AA)
    od += 0.02 * np.clip(_smooth_field(rng, H, Wimg, 40), 0, None) ** 3 * rng.uniform(0.5, 2.0)

    # image formation
    illum = 1.0 + _u(rng, cfg.illumination) * _smooth_field(rng, H, Wimg, 3)
    img = _u(rng, cfg.background) * illum * np.exp(-od)
    img = cv2.GaussianBlur(img, (0, 0), _u(rng, cfg.blur_sigma))
    halo = _u(rng, cfg.halo)
    if halo > 0:
        img = img + halo * (img - cv2.GaussianBlur(img, (0, 0), 0.22 * width))
    sd = _u(rng, cfg.noise_std)
    noise = rng.standard_normal((H, Wimg)).astype(np.float32)
    img = (
        img
        + sd * np.sqrt(np.clip(img, 0.0, None)) * noise
        + 0.3 * sd * rng.standard_normal((H, Wimg)).astype(np.float32)
    )
    img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0

    seed = None
    seq = getattr(rng.bit_generator, "seed_seq", None)
    if seq is not None and getattr(seq, "entropy", None) is not None:
        ent = seq.entropy
        seed = [int(v) for v in ent] if isinstance(ent, Sequence) else int(ent)
    iid = image_id if image_id is not None else "synthetic"
    rec = KaryoRecord(
        image=img,
        boxes=masks_to_boxes(masks),
        labels=np.array([c.label for c in chroms], np.int64),
        masks=masks,
        masks_derived=False,
        centromeres=cents,
        p_dir=pdirs,
        meta={
            "source": "synthetic",
            "image_id": iid,
            "karyotype": kt.iscn,
            "sex": kt.sex,
            "group": iid,
            "seed": seed,
            "scale_px": float(scale),
            "width_px": float(width),
            "band_resolution": resolution,
        },
    )
    return rec.validate()


# ---------------------------------------------------------------------------------------------- dataset
class SyntheticDataset(RecordDataset):
    """Lazily generated spreads: sample ``i`` comes from ``np.random.default_rng((seed, i))``.

    Args:
        root: unused (synthetic data has no folder); may be None.
        split: "train", "val", "test" or "all", made over image ids with :func:`datasets.splits.select_split`.
        n: number of spreads before splitting.
        seed: generation seed; also the split seed.
        config: appearance (:class:`SyntheticConfig`).
        karyotypes: ISCN strings drawn uniformly per spread (default ``config.karyotypes``: 46,XX / 46,XY).
        transforms: paired augmentation ``(record, rng) -> record``.
        val_fraction / test_fraction: split fractions.
    """

    source = "synthetic"

    def __init__(
        self,
        root: Any = None,
        split: str = "all",
        *,
        n: int = 100,
        seed: int = 0,
        config: SyntheticConfig | None = None,
        karyotypes: Sequence[str] | None = None,
        transforms: Transform | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
    ) -> None:
        from collections import Counter

        if n < 1:
            raise ValueError(f"n={n}: a synthetic dataset needs at least one spread")
        self.root = None if root is None else Path(root)
        self.split = split
        self.transforms = transforms
        self.skipped: Counter[str] = Counter()
        self.seed = int(seed)
        self.n = int(n)
        self.config = config or SyntheticConfig()
        self.karyotypes = tuple(karyotypes) if karyotypes else tuple(self.config.karyotypes)
        for k in self.karyotypes:
            parse_karyotype(k)
        items, groups = self.index()
        self.items = select_split(
            items, groups, split, val_fraction=val_fraction, test_fraction=test_fraction, seed=self.seed
        )
        if not self.items:
            raise ValueError(f"split {split!r} of {n} synthetic spreads is empty; use a larger n")

    def image_id(self, i: int) -> str:
        return f"synthetic_s{self.seed}_{i:06d}"

    def index(self) -> tuple[list[int], list[str]]:
        items = list(range(self.n))
        return items, [self.image_id(i) for i in items]

    def load(self, item: int) -> KaryoRecord:
        rng = np.random.default_rng((self.seed, int(item)))
        kt = str(self.karyotypes[int(rng.integers(len(self.karyotypes)))])
        rec = generate_spread(rng, self.config, kt, image_id=self.image_id(int(item)))
        rec.meta["seed"] = [self.seed, int(item)]
        return rec


# ---------------------------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write synthetic G-banded metaphases as PNG images + COCO annotations.")
    p.add_argument("--out", required=True, help="output folder (images/ and annotations.json are written there)")
    p.add_argument("--n", type=int, default=100, help="number of spreads")
    p.add_argument("--seed", type=int, default=0, help="generation seed (same seed, same files)")
    p.add_argument("--karyotypes", nargs="+", default=None, help="ISCN strings drawn per spread, e.g. 46,XX 47,XY,+21")
    p.add_argument("--size", type=int, default=None, help="fixed square image size in px (default 600-1000 random)")
    p.add_argument("--band-resolution", type=int, choices=(400, 550, 850), default=None, help="fixed band resolution")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(args: argparse.Namespace) -> Path:
    """Generate ``args.n`` spreads into ``args.out``; returns the annotation file's path."""
    from tqdm import tqdm

    from .coco import coco_document, records_to_coco
    from .io import atomic_write_image, atomic_write_json

    if args.n < 1:
        raise ValueError(f"--n {args.n}: need at least one spread")
    if args.size is not None and args.size < 64:
        raise ValueError(f"--size {args.size}: images must be at least 64 px")
    kw: dict[str, Any] = {}
    if args.size is not None:
        kw["image_size"] = (args.size, args.size)
    if args.band_resolution is not None:
        kw["band_resolutions"] = (args.band_resolution,)
    cfg = SyntheticConfig(**kw)
    ds = SyntheticDataset(None, "all", n=args.n, seed=args.seed, config=cfg, karyotypes=args.karyotypes)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # converted one record at a time (a spread's masks take ~40 MB), numbered as records_to_coco numbers a list
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in tqdm(range(len(ds)), desc="synthetic spreads", disable=args.quiet):
        rec = ds[i]
        name = f"images/{rec.image_id}.png"
        atomic_write_image(out / name, np.round(rec.image * 255.0).astype(np.uint8))
        part = records_to_coco([rec], [name], image_ids=[i + 1])
        images += part["images"]
        anns += part["annotations"]
    ann = out / "annotations.json"
    atomic_write_json(ann, coco_document(images, anns))
    atomic_write_json(
        out / "synthetic_config.json",
        {"seed": args.seed, "n": args.n, "karyotypes": list(ds.karyotypes), "config": asdict(cfg)},
    )
    print(f"wrote {len(ds)} synthetic spreads: {out / 'images'} and {ann}")
    return ann


if __name__ == "__main__":
    main(get_args_parser().parse_args())
