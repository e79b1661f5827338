"""The feature triad of each chromosome instance: geometry (+ centromere), scale and texture.

:func:`instance_features` measures one instance (centre line, straightened strip, width and density
profiles, centromere, polarity, band contrast). :func:`spread_features` measures every instance of a
metaphase and adds the *scale* features, which judge each chromosome's size against the other
chromosomes of its own cell (magnification and condensation differ between cells, the proportions
do not). The feature vector has a fixed column order, :data:`FEATURE_NAMES`.

Groups (:data:`FEATURE_GROUPS`):

* ``"geometry"``: shape of the chromosome on its own, scale-free: aspect ratio, straightness, width
  variation and an 8-bin width profile (p arm first, divided by the mean width), **plus** the
  ``"centromere"`` group (centromere index, constriction depth, confidences). ``"centromere"`` is
  also a key of its own so it can be selected alone.
* ``"scale"``: length, arm lengths, area and width relative to the same spread.
* ``"texture"``: darkness and band contrast, and a 16-bin density profile (p arm first, zero mean,
  unit std).

Profiles in the vector are oriented with the p arm first (using the estimated polarity) so the same
chromosome gives the same vector whichever way it lay on the slide.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .centromere import locate_centromere
from .geometry import (
    centerline,
    line_length,
    resample_line,
    resample_profile,
    straighten,
    straighten_cover,
    width_profile,
)
from .texture import PROFILE_LEN, band_stats, density_profile, normalise_profile

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "InstanceFeatures",
    "feature_names",
    "feature_stats",
    "instance_features",
    "MIN_AREA",
    "select_features",
    "spread_features",
]

#: width of the stored straightened strip (pixels)
STRIP_WIDTH = 32
#: masks with fewer pixels than this are not measured as chromosomes: they do not set the spread's scale
#: (:func:`spread_features`), and the classifier's trainer leaves them out
MIN_AREA = 12
_N_WIDTH_BINS = 8
_N_DENS_BINS = 16

_CENTROMERE = ("centromere_index", "constriction_depth", "centromere_conf", "polarity_conf")
_GEOMETRY_OWN = ("aspect_ratio", "straightness", "width_cv") + tuple(f"width_{i:02d}" for i in range(_N_WIDTH_BINS))
_SCALE = (
    "rel_length",
    "length_rank",
    "rel_length_median",
    "rel_area",
    "rel_width",
    "rel_p_arm",
    "rel_q_arm",
)
_TEXTURE = ("darkness_mean", "rel_darkness", "band_std", "band_range", "n_bands") + tuple(
    f"dens_{i:02d}" for i in range(_N_DENS_BINS)
)

#: every feature column in order
FEATURE_NAMES: tuple[str, ...] = _GEOMETRY_OWN + _CENTROMERE + _SCALE + _TEXTURE

#: feature groups; "geometry" includes the "centromere" columns
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "geometry": _GEOMETRY_OWN + _CENTROMERE,
    "centromere": _CENTROMERE,
    "scale": _SCALE,
    "texture": _TEXTURE,
}


@dataclass
class InstanceFeatures:
    """Measurements of one chromosome instance (pixels unless said otherwise).

    Attributes:
        centerline: float32 [K, 2] ``(x, y)`` medial axis, 1 px spacing, from one end to the other.
        length_px: length of the centre line (pixels).
        width_profile: float32 [64] width (pixels) at 64 evenly spaced positions from the line's start.
        density_profile: float32 [64] mean darkness ``1 - image`` across the inner width (0..1).
        straightened: float32 [L, 32] strip along the line (row 0 = line start), white outside the mask.
        straightened_mask: uint8 [L, 32].
        area_px: mask area (pixels).
        aspect_ratio: length / mean width.
        straightness: end-to-end distance / length (1 = straight).
        mean_width_px: mean width over the central 70 % of the length.
        centromere_pos: centromere position as a fraction of the length from the line's start.
        centromere_xy: float32 [2] ``(x, y)`` of the centromere in the image.
        centromere_index: p / (p + q) in [0, 0.5].
        constriction_depth: depth of the primary constriction relative to the mean width.
        p_arm_len_px, q_arm_len_px: arm lengths (pixels).
        p_at_start: True when the p arm lies at the start of the centre line.
        centromere_conf, polarity_conf: confidences in [0, 1].
        darkness_mean, band_std, band_range: band contrast of the density profile (darkness units).
        n_bands: number of dark bands found in the density profile.
    """

    centerline: np.ndarray
    length_px: float
    width_profile: np.ndarray
    density_profile: np.ndarray
    straightened: np.ndarray
    straightened_mask: np.ndarray
    area_px: float
    aspect_ratio: float
    straightness: float
    mean_width_px: float
    centromere_pos: float
    centromere_xy: np.ndarray
    centromere_index: float
    constriction_depth: float
    p_arm_len_px: float
    q_arm_len_px: float
    p_at_start: bool
    centromere_conf: float
    polarity_conf: float
    darkness_mean: float
    band_std: float
    band_range: float
    n_bands: int
    extra: dict = field(default_factory=dict)

    @property
    def centromere_row(self) -> float:
        """Row of the centromere in the straightened strip turned p arm up (:func:`features.crops.make_crops`'
        straight crop), at its natural height."""
        n = self.straightened.shape[0]
        return float(self.centromere_index * max(n - 1, 0))

    @property
    def p_end_xy(self) -> np.ndarray:
        """float32 [2] ``(x, y)`` of the p-arm end of the centre line (centre of image if empty)."""
        if len(self.centerline) == 0:
            return np.zeros(2, np.float32)
        return self.centerline[0] if self.p_at_start else self.centerline[-1]

    def oriented(self, a: np.ndarray) -> np.ndarray:
        """A profile indexed from the line's start, re-indexed from the p-arm end."""
        return a if self.p_at_start else a[::-1].copy()


def _empty_features() -> InstanceFeatures:
    z = np.zeros(PROFILE_LEN, np.float32)
    return InstanceFeatures(
        centerline=np.zeros((0, 2), np.float32),
        length_px=0.0,
        width_profile=z.copy(),
        density_profile=z.copy(),
        straightened=np.ones((0, STRIP_WIDTH), np.float32),
        straightened_mask=np.zeros((0, STRIP_WIDTH), np.uint8),
        area_px=0.0,
        aspect_ratio=1.0,
        straightness=1.0,
        mean_width_px=0.0,
        centromere_pos=0.5,
        centromere_xy=np.zeros(2, np.float32),
        centromere_index=0.5,
        constriction_depth=0.0,
        p_arm_len_px=0.0,
        q_arm_len_px=0.0,
        p_at_start=True,
        centromere_conf=0.0,
        polarity_conf=0.0,
        darkness_mean=0.0,
        band_std=0.0,
        band_range=0.0,
        n_bands=0,
    )


def instance_features(image: np.ndarray, mask: np.ndarray) -> InstanceFeatures:
    """Measure one chromosome.

    Args:
        image: float32 [H, W] grey in [0, 1], chromosomes dark on light.
        mask: uint8 [H, W] mask of this instance.

    Returns:
        :class:`InstanceFeatures`; an empty mask gives zero length, CI 0.5 and zero confidences.
    """
    img = np.asarray(image, np.float32)
    full = np.asarray(mask) > 0
    if img.shape != full.shape or not full.any():
        return _empty_features()
    # work on the mask's box grown by more than any sample of the straightened strip can reach (half the
    # widest strip below, 2 * ceil(2 * half width) + 6 px, the half width being at most half the box's
    # short side): the same figures as on the whole image, without whole-image passes per chromosome
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    reach = max(STRIP_WIDTH // 2, int(min(rows[-1] - rows[0], cols[-1] - cols[0])) + 6) + 6
    oy, ox = max(0, int(rows[0]) - reach), max(0, int(cols[0]) - reach)
    img = img[oy : int(rows[-1]) + 1 + reach, ox : int(cols[-1]) + 1 + reach]
    m = full[oy : int(rows[-1]) + 1 + reach, ox : int(cols[-1]) + 1 + reach].astype(np.uint8)
    shift = np.array([ox, oy], np.float64)
    area = float(m.sum())
    line = centerline(m)
    length = line_length(line)
    if len(line) < 2 or length <= 0:
        f = _empty_features()
        f.area_px = area
        return f
    # measure on a strip wide enough for the whole chromosome, store the central STRIP_WIDTH columns
    from scipy import ndimage

    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    half_w = float(ndimage.distance_transform_edt(np.pad(m[y0:y1, x0:x1], 1)).max())
    wide = int(max(STRIP_WIDTH, 2 * np.ceil(2 * half_w) + 6))
    wide += (wide - STRIP_WIDTH) % 2
    strip_w, smask_w = straighten(img, m, line, width=wide)
    c0 = (wide - STRIP_WIDTH) // 2
    strip, smask = strip_w[:, c0 : c0 + STRIP_WIDTH].copy(), smask_w[:, c0 : c0 + STRIP_WIDTH].copy()

    wprof_raw = width_profile(smask_w, straighten_cover(m, line, width=wide))
    wprof = resample_profile(wprof_raw, PROFILE_LEN)
    dprof = density_profile(strip_w, smask_w, n=PROFILE_LEN)
    L = len(wprof_raw)
    core = wprof_raw[int(0.15 * L) : max(int(0.15 * L) + 1, int(np.ceil(0.85 * L)))]
    mean_w = float(core.mean()) if len(core) and core.mean() > 0 else max(area / length, 1.0)

    cen = locate_centromere(wprof, dprof)
    pts = resample_line(line, 101)
    k = cen.pos * 100
    i0 = int(np.clip(np.floor(k), 0, 99))
    t = k - i0
    cxy = ((1 - t) * pts[i0] + t * pts[i0 + 1] + shift).astype(np.float32)
    p_len = cen.ci * length
    bs = band_stats(dprof)
    chord = float(np.linalg.norm(line[-1] - line[0]))
    return InstanceFeatures(
        centerline=(line + shift).astype(np.float32),  # in the image's pixels
        length_px=float(length),
        width_profile=wprof,
        density_profile=dprof,
        straightened=strip,
        straightened_mask=smask,
        area_px=area,
        aspect_ratio=float(length / max(mean_w, 1e-6)),
        straightness=float(np.clip(chord / length, 0.0, 1.0)),
        mean_width_px=mean_w,
        centromere_pos=cen.pos,
        centromere_xy=cxy,
        centromere_index=cen.ci,
        constriction_depth=cen.depth,
        p_arm_len_px=float(p_len),
        q_arm_len_px=float(length - p_len),
        p_at_start=cen.p_at_start,
        centromere_conf=cen.conf,
        polarity_conf=cen.polarity_conf,
        darkness_mean=bs.mean,
        band_std=bs.std,
        band_range=bs.range,
        n_bands=bs.n_bands,
    )


def _own_row(f: InstanceFeatures) -> dict[str, float]:
    wp = f.oriented(f.width_profile)
    w8 = resample_profile(wp, _N_WIDTH_BINS) / max(f.mean_width_px, 1e-6) if f.length_px > 0 else np.zeros(8)
    n = len(f.width_profile)
    core = f.width_profile[int(0.15 * n) : int(np.ceil(0.85 * n))]
    wcv = float(core.std() / core.mean()) if len(core) and core.mean() > 0 else 0.0
    d16 = normalise_profile(resample_profile(f.oriented(f.density_profile), _N_DENS_BINS))
    row = {
        "aspect_ratio": f.aspect_ratio,
        "straightness": f.straightness,
        "width_cv": wcv,
        "centromere_index": f.centromere_index,
        "constriction_depth": f.constriction_depth,
        "centromere_conf": f.centromere_conf,
        "polarity_conf": f.polarity_conf,
        "darkness_mean": f.darkness_mean,
        "band_std": f.band_std,
        "band_range": f.band_range,
        "n_bands": float(f.n_bands),
    }
    row.update({f"width_{i:02d}": float(v) for i, v in enumerate(w8)})
    row.update({f"dens_{i:02d}": float(v) for i, v in enumerate(d16)})
    return row


def _safe_ratio(a: np.ndarray, b: float) -> np.ndarray:
    return a / b if b > 0 else np.zeros_like(a)


def spread_features(
    image: np.ndarray, masks: np.ndarray, *, min_area: int = MIN_AREA
) -> tuple[np.ndarray, list[InstanceFeatures]]:
    """Features of every chromosome of one metaphase.

    Scale features: each chromosome against the spread's *measured* instances, the N of them whose mask has at
    least ``min_area`` pixels (every instance when none has; a smaller mask is a speck, not a chromosome, and
    would shift the spread's count, ranks and medians):

    * ``rel_length`` = ``2 * (N / 46) * length / sum(lengths)``: on the scale of the reference's
      haploid relative length (a normal 46-chromosome spread sums to ~2 haploid sets); the ``N/46``
      keeps it comparable when chromosomes are missing or extra;
    * ``length_rank``: rank of the length among the measured instances in [0, 1] (0 shortest, 1 longest;
      0.5 if N=1; an instance below ``min_area``: the share of the others' ranks below its length);
    * ``rel_length_median`` = length / median length; ``rel_area`` = area / median area;
      ``rel_width`` = mean width / median mean width; ``rel_p_arm``, ``rel_q_arm`` = arm length /
      median length; ``rel_darkness`` = mean darkness / median mean darkness.

    Args:
        image: float32 [H, W] grey in [0, 1].
        masks: uint8 [N_all, H, W].
        min_area: the smallest mask (pixels) that sets the spread's scale (:data:`MIN_AREA`).

    Returns:
        ``(x float32[N_all, len(FEATURE_NAMES)], per-instance features)``, every value finite.
    """
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    n = masks.shape[0] if masks.ndim == 3 else 0
    feats = [instance_features(image, masks[i]) for i in range(n)]
    x = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    if n == 0:
        return x, feats
    length = np.array([f.length_px for f in feats], np.float64)
    area = np.array([f.area_px for f in feats], np.float64)
    width = np.array([f.mean_width_px for f in feats], np.float64)
    dark = np.array([f.darkness_mean for f in feats], np.float64)
    p_len = np.array([f.p_arm_len_px for f in feats], np.float64)
    q_len = np.array([f.q_arm_len_px for f in feats], np.float64)
    ref = area >= min_area  # the instances that set the spread's scale
    if not ref.any():
        ref[:] = True
    n_ref = int(ref.sum())
    med_len = float(np.median(length[ref]))
    rank = np.full(n, 0.5)
    if n_ref > 1:
        rank[ref] = np.argsort(np.argsort(length[ref], kind="stable"), kind="stable") / (n_ref - 1)
        below = np.searchsorted(np.sort(length[ref]), length[~ref], side="left")
        rank[~ref] = np.minimum(below / (n_ref - 1), 1.0)
    scale = {
        "rel_length": _safe_ratio(2.0 * (n_ref / 46.0) * length, float(length[ref].sum())),
        "length_rank": rank,
        "rel_length_median": _safe_ratio(length, med_len),
        "rel_area": _safe_ratio(area, float(np.median(area[ref]))),
        "rel_width": _safe_ratio(width, float(np.median(width[ref]))),
        "rel_p_arm": _safe_ratio(p_len, med_len),
        "rel_q_arm": _safe_ratio(q_len, med_len),
        "rel_darkness": _safe_ratio(dark, float(np.median(dark[ref]))),
    }
    col = {name: j for j, name in enumerate(FEATURE_NAMES)}
    for i, f in enumerate(feats):
        for k, v in _own_row(f).items():
            x[i, col[k]] = v
    for k, v in scale.items():
        x[:, col[k]] = v
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32), feats


def feature_names(groups: str = "all") -> list[str]:
    """Column names selected by ``groups``, in :data:`FEATURE_NAMES` order.

    ``groups`` is ``"none"`` (no columns), ``"all"``, a key of :data:`FEATURE_GROUPS` (``"geometry"``,
    ``"centromere"``, ``"scale"``, ``"texture"``) or several joined by ``"+"`` (``"geometry+scale"``).

    >>> feature_names("none"), feature_names("centromere")[:1]
    ([], ['centromere_index'])
    """
    g = str(groups).strip().lower()
    if g in ("none", ""):
        return []
    if g == "all":
        return list(FEATURE_NAMES)
    wanted: set[str] = set()
    for part in g.split("+"):
        part = part.strip()
        if part == "all":
            wanted.update(FEATURE_NAMES)
        elif part in FEATURE_GROUPS:
            wanted.update(FEATURE_GROUPS[part])
        elif part != "none":
            raise ValueError(
                f"unknown feature group {part!r}: use none, all or {', '.join(FEATURE_GROUPS)} (joined by '+')"
            )
    return [name for name in FEATURE_NAMES if name in wanted]


def select_features(x: np.ndarray, groups: str) -> np.ndarray:
    """Columns of ``x`` float32 [N, len(FEATURE_NAMES)] in ``groups`` (see :func:`feature_names`): [N, F']."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"feature matrix must be [N, {len(FEATURE_NAMES)}], got shape {x.shape}")
    col = {name: j for j, name in enumerate(FEATURE_NAMES)}
    idx = [col[name] for name in feature_names(groups)]
    return x[:, idx]


def feature_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and std of float32 [M, F] ignoring NaN (std 1 where a column is constant or all NaN): the
    standardisation a classifier's config keeps (``ClsConfig.feature_mean`` / ``feature_std``)."""
    if x.shape[1] == 0:
        return [], []
    finite = np.where(np.isfinite(x), x, np.nan).astype(np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column
        mean = np.nanmean(finite, axis=0)
        std = np.nanstd(finite, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
    return mean.tolist(), std.tolist()
