"""Per-chromosome samples for the classifier, made from any dataset of spreads (or of single crops).

:class:`InstanceDataset` walks a dataset of :class:`~datasets.record.KaryoRecord` once and, for every
spread, computes :func:`features.triad.spread_features` on the whole spread (so the "scale" features
are relative to the cell the chromosome came from) and the straightened crop of every chromosome
(:func:`features.triad.oriented_crop`: p arm up, white background), trimmed to the chromosome
(:func:`tight_crop`) and fitted into a fixed ``crop_height x crop_width`` box (aspect ratio kept,
padded with white), so every chromosome fills the box; its size relative to the cell is carried by
the "scale" features. Everything is kept as arrays:

=================== ======================== ==============================================
array               shape / dtype            meaning
=================== ======================== ==============================================
``crops``           uint8 [M, H, W]          fitted crops, 255 = white background
``features``        float32 [M, F_all]       every :data:`features.triad.FEATURE_NAMES` column
``labels``          int64 [M]                0..23 = class id - 1
``cell``            int64 [M]                index of the spread in the source dataset
``lengths``         float32 [M]              chromosome length along its axis (pixels)
``centromere``      float32 [M]              centromere index p / (p + q) as estimated by the features
``image_ids``       str [n_cells]            ``meta["image_id"]`` of each spread
=================== ======================== ==============================================

All feature columns are stored, so one cache serves every ``--features`` ablation; the group is
selected when a sample is read. Computing ~46k instances of CIL:54816 takes a while, so the arrays are
cached in an ``.npz`` file (written atomically) keyed by a hash of the source dataset and the crop
size; a cache whose key differs is recomputed.

Single-chromosome crop datasets (``crops``: one instance per record) work the same way, but each
crop is then a "cell" of one chromosome, so the per-cell scale features degenerate (relative length
and area are 1 for every crop): train such data with ``--features geometry`` or ``texture``, or
accept that the scale columns carry no information.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_write

CACHE_VERSION = 1
#: instances whose mask has fewer pixels than this are skipped as degenerate
MIN_AREA = 12

_ARRAY_KEYS = ("crops", "features", "labels", "cell", "lengths", "centromere", "image_ids")


# ---------------------------------------------------------------------------------------------- crops
def fit_crop(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``crop`` float [h, w] (white background 1.0) into float32 [height, width] keeping its aspect ratio.

    The crop is scaled by ``min(height / h, width / w)`` (up or down) and centred on a white (1.0) canvas.

    >>> fit_crop(np.zeros((40, 10), np.float32), 96, 32).shape
    (96, 32)
    """
    import cv2

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


class CropAugment:
    """Random augmentation of one fitted crop float32 [H, W] (white background 1.0), shape kept.

    Rotation by a small angle, scaling, left-right flip (never up-down: that
    would swap the p and q arms), and brightness / contrast changes applied to the darkness
    ``1 - crop`` so that the background stays white.

    Args:
        rotation: maximum rotation in degrees.
        scale: (min, max) zoom factor.
        hflip: probability of a left-right flip.
        brightness: maximum darkness offset added to chromosome pixels.
        contrast: maximum relative change of darkness (factor in ``[1 - contrast, 1 + contrast]``).
    """

    def __init__(
        self,
        *,
        rotation: float = 8.0,
        scale: tuple[float, float] = (0.9, 1.1),
        hflip: float = 0.5,
        brightness: float = 0.08,
        contrast: float = 0.2,
    ) -> None:
        self.rotation, self.scale, self.hflip = rotation, scale, hflip
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        h, w = crop.shape
        angle = rng.uniform(-self.rotation, self.rotation)
        zoom = rng.uniform(*self.scale)
        m = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), angle, zoom)
        flip = rng.random() < self.hflip
        out = cv2.warpAffine(crop, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)
        if flip:
            out = out[:, ::-1]
        d = 1.0 - out
        fg = d > 0.02
        d = (
            d * rng.uniform(1.0 - self.contrast, 1.0 + self.contrast)
            + rng.uniform(-self.brightness, self.brightness) * fg
        )
        return np.ascontiguousarray(np.clip(1.0 - d, 0.0, 1.0), dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"CropAugment(rotation={self.rotation}, scale={self.scale}, hflip={self.hflip}, "
            f"brightness={self.brightness}, contrast={self.contrast})"
        )


# ---------------------------------------------------------------------------------------------- computing
def tight_crop(f: Any) -> np.ndarray:
    """The straightened strip of one instance, p arm up, trimmed to the rows and columns its mask covers.

    Args:
        f: :class:`features.triad.InstanceFeatures`.

    Returns:
        float32 [h, w], white (1.0) outside the chromosome; ``[0, 0]`` for an empty instance.
    """
    from features.triad import oriented_crop

    crop = np.asarray(oriented_crop(f), np.float32)
    m = np.asarray(f.straightened_mask)
    if not f.p_at_start:
        m = m[::-1]
    if crop.ndim != 2 or crop.size == 0 or m.shape != crop.shape or not m.any():
        return np.zeros((0, 0), np.float32)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    # the strip is a fixed 32 px wide whatever the chromosome's width: trim it so that fitting into
    # the crop box scales every chromosome to fill the box (its size is in the "scale" features)
    return np.ascontiguousarray(crop[rows[0] : rows[-1] + 1, max(cols[0] - 1, 0) : cols[-1] + 2])


#: how a chromosome is cut out for the classifier: "straight" (:func:`tight_crop`: the strip along its centre
#: line, white outside its mask) or "axis" (:func:`axis_crop`: the image turned to its long axis, unmasked)
CROP_MODES = ("straight", "axis")


def check_crop_mode(crop_mode: str) -> str:
    """``crop_mode`` if it is one of :data:`CROP_MODES`, else a ValueError naming them."""
    if crop_mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop_mode!r}: choose one of {', '.join(CROP_MODES)}")
    return crop_mode


def axis_crop(image: np.ndarray, box: np.ndarray, mask: np.ndarray, f: Any, *, min_width: float = 0.0) -> np.ndarray:
    """The image around one instance, turned so that its long axis is vertical, p arm up, *not* masked.

    Unlike :func:`tight_crop`, the pixels do not depend on the mask's outline: where two chromosomes cross
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
    import cv2

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
    half_len = float(np.abs(corners @ u).max()) + 2.0
    box_half_w = float(np.abs(corners @ nrm).max())
    mask_half_w = float(np.abs((pts + 0.5 - c) @ nrm).max())
    half_w = min(max(mask_half_w, min_width / 2.0), box_half_w) + 2.0
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


def instance_crops(
    image: np.ndarray,
    boxes: np.ndarray,
    masks: np.ndarray,
    infos: Sequence[Any],
    mode: str = "straight",
    straight: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """The classifier's crop of each instance (``infos[i]`` measured on ``masks[i]``) in crop ``mode``.

    ``"straight"``: :func:`tight_crop`; ``"axis"``: :func:`axis_crop`, at least 1.5x the median chromosome
    width of the instances given wide. Empty crops (``[0, 0]``) mark degenerate instances, the same ones in
    every mode (an instance without a straightened crop has no axis crop either), so that the crops of two
    modes (an ensemble's members) describe the same chromosomes. ``straight``: the instances' straight crops
    when the caller has them already (they are not cut again).
    """
    check_crop_mode(mode)
    if straight is None:
        straight = [tight_crop(f) for f in infos]
    if mode == "straight":
        return list(straight)
    widths = [float(f.mean_width_px) for f in infos if f.length_px > 0]
    min_w = 1.5 * float(np.median(widths)) if widths else 0.0
    return [
        axis_crop(image, b, m, f, min_width=min_w) if s.size else np.zeros((0, 0), np.float32)
        for b, m, f, s in zip(boxes, masks, infos, straight)
    ]


def spread_instances(
    rec: Any, height: int, width: int, *, min_area: int = MIN_AREA, crop_mode: str = "straight"
) -> tuple[dict[str, np.ndarray], Counter]:
    """Samples of one spread: features on the whole spread, crops and labels of its labelled chromosomes.

    Args:
        rec: a :class:`~datasets.record.KaryoRecord` with masks.
        height / width: crop box in pixels.
        min_area: masks with fewer pixels are skipped as degenerate.
        crop_mode: one of :data:`CROP_MODES` (see :func:`instance_crops`).

    Returns:
        (arrays, skipped): arrays ``crops`` uint8 [m, H, W], ``features`` float32 [m, F_all],
        ``labels`` int64 [m] (0..23), ``lengths`` / ``centromere`` float32 [m]; ``skipped`` counts the
        instances left out by reason.
    """
    arrays, skipped = spread_instances_by_mode(rec, {crop_mode: (height, width)}, min_area=min_area)
    arrays["crops"] = arrays.pop("crops_by_mode")[crop_mode]
    return arrays, skipped


def spread_instances_by_mode(
    rec: Any, specs: Mapping[str, tuple[int, int]], *, min_area: int = MIN_AREA
) -> tuple[dict[str, Any], Counter]:
    """:func:`spread_instances` with the crops of several crop modes, the features measured once.

    Args:
        specs: crop mode (:data:`CROP_MODES`) -> ``(height, width)`` of its crop box.

    Returns:
        (arrays, skipped) as :func:`spread_instances`, with ``crops_by_mode`` (mode -> uint8 [m, h, w]) in place
        of ``crops``; every mode holds the same m instances (:func:`instance_crops`).
    """
    from features.triad import FEATURE_NAMES, spread_features

    for mode in specs:
        check_crop_mode(mode)
    skipped: Counter = Counter()
    empty = {
        "crops_by_mode": {mode: np.zeros((0, h, w), np.uint8) for mode, (h, w) in specs.items()},
        "features": np.zeros((0, len(FEATURE_NAMES)), np.float32),
        "labels": np.zeros(0, np.int64),
        "lengths": np.zeros(0, np.float32),
        "centromere": np.zeros(0, np.float32),
    }
    n = len(rec)
    if n == 0:
        return empty, skipped
    if rec.masks is None:
        skipped["no masks"] += n
        return empty, skipped
    area = rec.masks.reshape(n, -1).sum(1, dtype=np.int64)
    ok = area >= min_area
    if (~ok).any():
        skipped["degenerate mask"] += int((~ok).sum())
    # unknown-class chromosomes still belong to the cell: they take part in the per-spread scale features
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return empty, skipped
    image = rec.image
    if rec.meta.get("polarity") == "bright":  # fluorescence left un-inverted by its loader: make it dark on light
        image = 1.0 - image
    feats, infos = spread_features(image, rec.masks[idx])
    feats = np.asarray(feats, np.float32)
    straight = [tight_crop(f) for f in infos]
    all_crops = {mode: instance_crops(image, rec.boxes[idx], rec.masks[idx], infos, mode, straight) for mode in specs}
    keep = []
    for j, i in enumerate(idx):
        if rec.labels[i] <= 0:
            skipped["unknown class (label 0)"] += 1
            continue
        if any(all_crops[mode][j].size == 0 for mode in specs):  # (empty in every mode alike)
            skipped["no centre line (degenerate mask)"] += 1
            continue
        keep.append(j)
    if not keep:
        return empty, skipped
    keep_a = np.asarray(keep)
    crops_by_mode = {
        mode: np.stack([np.round(fit_crop(all_crops[mode][j], h, w) * 255.0).astype(np.uint8) for j in keep])
        for mode, (h, w) in specs.items()
    }
    return {
        "crops_by_mode": crops_by_mode,
        "features": feats[keep_a],
        "labels": rec.labels[idx[keep_a]].astype(np.int64) - 1,
        "lengths": np.array([infos[j].length_px for j in keep], np.float32),
        "centromere": np.array([infos[j].centromere_index for j in keep], np.float32),
    }, skipped


class _SpreadJob(torch.utils.data.Dataset):
    """Wraps the record dataset so that DataLoader workers compute spreads in parallel."""

    def __init__(self, ds: Any, height: int, width: int, min_area: int, crop_mode: str = "straight") -> None:
        self.ds, self.height, self.width, self.min_area = ds, height, width, min_area
        self.crop_mode = crop_mode

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, str, dict[str, np.ndarray], Counter]:
        rec = self.ds[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-instance warnings are counted instead
            arrays, skipped = spread_instances(
                rec, self.height, self.width, min_area=self.min_area, crop_mode=self.crop_mode
            )
        return i, rec.image_id or str(i), arrays, skipped


def _identity(x: Any) -> Any:
    return x


def _describe(ds: Any) -> dict[str, Any]:
    """What identifies a record dataset for the cache key (class, root, split, sample list)."""
    if isinstance(ds, torch.utils.data.Subset):
        return {"subset": list(map(int, ds.indices)), "of": _describe(ds.dataset)}
    d: dict[str, Any] = {"class": type(ds).__name__, "len": len(ds)}
    if isinstance(ds, (list, tuple)):  # records in memory: hash their content
        h = hashlib.sha256()
        for r in ds:
            for a in (r.image, r.labels, r.masks):
                if a is not None:
                    h.update(np.ascontiguousarray(a).tobytes())
        d["content"] = h.hexdigest()
        return d
    for a in ("source", "root", "split", "seed", "n"):
        v = getattr(ds, a, None)
        if v is not None:
            d[a] = str(v)
    items = getattr(ds, "items", None)
    if items is not None:
        d["items"] = hashlib.sha256(repr(list(items)).encode()).hexdigest()
    return d


def cache_key(ds: Any, height: int, width: int, min_area: int = MIN_AREA, crop_mode: str = "straight") -> str:
    """Hex key of (dataset description, crop size and mode, feature names, cache version)."""
    from features.triad import FEATURE_NAMES

    desc = {
        "dataset": _describe(ds),
        "crop": [height, width],
        "min_area": min_area,
        "features": list(FEATURE_NAMES),
        "version": CACHE_VERSION,
    }
    if crop_mode != "straight":  # (the key of a straight cache is the one it had before crop modes existed)
        desc["crop_mode"] = crop_mode
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def compute_instances(
    ds: Any,
    *,
    crop_height: int = 96,
    crop_width: int = 32,
    min_area: int = MIN_AREA,
    workers: int = 0,
    progress: bool = True,
    desc: str = "instances",
    crop_mode: str = "straight",
) -> tuple[dict[str, np.ndarray], Counter]:
    """Run :func:`spread_instances` over every record of ``ds``; returns the concatenated arrays and skip counts."""
    from tqdm.auto import tqdm

    from features.triad import FEATURE_NAMES

    job = _SpreadJob(ds, crop_height, crop_width, min_area, check_crop_mode(crop_mode))
    loader = torch.utils.data.DataLoader(job, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity)
    parts: list[dict[str, np.ndarray]] = []
    cells: list[np.ndarray] = []
    image_ids = [""] * len(ds)
    skipped: Counter = Counter()
    for i, image_id, arrays, sk in tqdm(loader, total=len(job), desc=desc, disable=not progress, unit="spread"):
        image_ids[i] = image_id
        skipped.update(sk)
        parts.append(arrays)
        cells.append(np.full(len(arrays["labels"]), i, np.int64))
    out: dict[str, np.ndarray] = {}
    for k, shape, dt in (
        ("crops", (0, crop_height, crop_width), np.uint8),
        ("features", (0, len(FEATURE_NAMES)), np.float32),
        ("labels", (0,), np.int64),
        ("lengths", (0,), np.float32),
        ("centromere", (0,), np.float32),
    ):
        out[k] = np.concatenate([p[k] for p in parts]) if parts else np.zeros(shape, dt)
    out["cell"] = np.concatenate(cells) if cells else np.zeros(0, np.int64)
    out["image_ids"] = np.asarray(image_ids, dtype=str)
    return out, skipped


def save_instance_cache(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, key: str, skipped: Counter) -> None:
    """Write the arrays, the key and the skip counts to ``path`` (.npz, atomic)."""
    with atomic_write(path, "wb") as f:
        np.savez(
            f,
            **{k: arrays[k] for k in _ARRAY_KEYS},
            key=np.asarray(key),
            skipped=np.asarray(json.dumps(dict(skipped))),
        )


def load_instance_cache(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str, Counter]:
    """Read an instance cache written by :func:`save_instance_cache`: (arrays, key, skipped)."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in (*_ARRAY_KEYS, "key") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: not an instance cache (missing {missing}); delete it to recompute")
        arrays = {k: z[k] for k in _ARRAY_KEYS}
        key = str(z["key"])
        skipped = Counter(json.loads(str(z["skipped"]))) if "skipped" in z.files else Counter()
    return arrays, key, skipped


# ---------------------------------------------------------------------------------------------- dataset
class InstanceDataset(torch.utils.data.Dataset):
    """Per-chromosome samples ``(crop FloatTensor[1, H, W], features FloatTensor[F], label int 0..23)``.

    Args:
        record_dataset: a dataset of :class:`~datasets.record.KaryoRecord` with masks (spreads, or
            single-chromosome crops), e.g. ``build_dataset("voc", root, "train")``; may be None when
            ``arrays`` is given.
        feature_groups: which feature columns a sample carries ("none", "geometry", "scale",
            "texture", "all"; see :func:`features.triad.select_features`); "none" gives F = 0.
        crop_height / crop_width: crop box in pixels.
        cache_path: ``.npz`` file for the computed arrays; reused when its key matches, else (re)written.
        transforms: per-sample crop augmentation ``(crop float32[H, W], rng) -> crop`` such as
            :class:`CropAugment`; None for evaluation.
        workers: DataLoader workers computing spreads in parallel (0: in this process).
        progress: show a tqdm bar while computing.
        arrays: precomputed arrays (see the module table); skips computing and caching.

    Attributes:
        crops, features, labels, cell, lengths, centromere, image_ids: the arrays of the module table.
        selected: float32 [M, F] the selected feature columns.
        skipped: Counter of instances left out, by reason (label 0, degenerate mask, no masks, ...).
    """

    def __init__(
        self,
        record_dataset: Any = None,
        *,
        feature_groups: str = "all",
        crop_height: int = 96,
        crop_width: int = 32,
        cache_path: str | os.PathLike | None = None,
        transforms: Any = None,
        workers: int = 0,
        progress: bool = True,
        min_area: int = MIN_AREA,
        arrays: dict[str, np.ndarray] | None = None,
        desc: str = "instances",
        crop_mode: str = "straight",
    ) -> None:
        from features.triad import select_features

        self.crop_height, self.crop_width = int(crop_height), int(crop_width)
        self.crop_mode = check_crop_mode(crop_mode)
        self.feature_groups = feature_groups
        self.transforms = transforms
        self.skipped: Counter = Counter()
        self.cache_path = None if cache_path is None else Path(cache_path)
        if arrays is None:
            if record_dataset is None:
                raise ValueError("InstanceDataset needs a record dataset or precomputed arrays")
            arrays = self._load_or_compute(
                record_dataset, min_area=min_area, workers=workers, progress=progress, desc=desc
            )
        self._set_arrays(arrays)
        # validates the group name, and "none" gives [M, 0]
        self.selected = np.ascontiguousarray(select_features(self.features, feature_groups), dtype=np.float32)
        if self.skipped:
            total = sum(self.skipped.values())
            detail = ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items()))
            warnings.warn(f"{desc}: skipped {total} instances ({detail})", stacklevel=2)

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        crops = np.asarray(arrays["crops"])
        if crops.ndim != 3 or crops.shape[1:] != (self.crop_height, self.crop_width):
            raise ValueError(f"crops have shape {crops.shape}, expected [M, {self.crop_height}, {self.crop_width}]")
        self.crops = crops
        self.features = np.asarray(arrays["features"], np.float32)
        self.labels = np.asarray(arrays["labels"], np.int64)
        self.cell = np.asarray(arrays["cell"], np.int64)
        self.lengths = np.asarray(arrays["lengths"], np.float32)
        self.centromere = np.asarray(arrays["centromere"], np.float32)
        self.image_ids = np.asarray(arrays["image_ids"], dtype=str)
        m = len(self.labels)
        for k in ("crops", "features", "cell", "lengths", "centromere"):
            if len(getattr(self, k)) != m:
                raise ValueError(f"instance array {k!r} has {len(getattr(self, k))} rows, labels have {m}")
        if m and (self.labels.min() < 0 or self.labels.max() > 23):
            raise ValueError(f"labels must be 0..23 (class id - 1), got {self.labels.min()}..{self.labels.max()}")

    def _load_or_compute(
        self, ds: Any, *, min_area: int, workers: int, progress: bool, desc: str
    ) -> dict[str, np.ndarray]:
        key = cache_key(ds, self.crop_height, self.crop_width, min_area, self.crop_mode)
        p = self.cache_path
        if p is not None and p.exists():
            try:
                arrays, stored, skipped = load_instance_cache(p)
            except (ValueError, OSError, KeyError) as exc:
                warnings.warn(f"{p}: unreadable instance cache ({exc}); recomputing", stacklevel=3)
            else:
                if stored == key:
                    self.skipped = skipped
                    return arrays
                warnings.warn(f"{p}: instance cache was made for other data or settings; recomputing", stacklevel=3)
        arrays, self.skipped = compute_instances(
            ds,
            crop_height=self.crop_height,
            crop_width=self.crop_width,
            min_area=min_area,
            workers=workers,
            progress=progress,
            desc=desc,
            crop_mode=self.crop_mode,
        )
        if p is not None:
            save_instance_cache(p, arrays, key=key, skipped=self.skipped)
        return arrays

    # -- views ------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return int(self.selected.shape[1])

    @property
    def n_cells(self) -> int:
        return len(self.image_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _ARRAY_KEYS}

    def class_counts(self) -> np.ndarray:
        """int64 [24]: instances per class (index = class id - 1)."""
        return np.bincount(self.labels, minlength=24).astype(np.int64)

    def sample_weights(self) -> np.ndarray:
        """float64 [M]: 1 / (instances of the sample's class), for class-balanced sampling."""
        counts = self.class_counts().astype(np.float64)
        return 1.0 / np.maximum(counts[self.labels], 1.0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        crop = self.crops[i].astype(np.float32) / 255.0
        if self.transforms is not None:
            # drawn from torch's RNG so that torch.manual_seed and per-worker seeding govern augmentation
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            crop = self.transforms(crop, rng)
        return (
            torch.from_numpy(np.ascontiguousarray(crop))[None],
            torch.from_numpy(self.selected[i]),
            int(self.labels[i]),
        )


def concat_instances(datasets: Sequence[InstanceDataset], *, transforms: Any = None) -> InstanceDataset:
    """One :class:`InstanceDataset` of several (e.g. CIL + M-FISH); cell indices are renumbered to stay distinct."""
    if not datasets:
        raise ValueError("concat_instances needs at least one dataset")
    if len(datasets) == 1 and transforms is datasets[0].transforms:
        return datasets[0]
    first = datasets[0]
    for d in datasets[1:]:
        if (d.crop_height, d.crop_width, d.feature_groups, d.crop_mode) != (
            first.crop_height,
            first.crop_width,
            first.feature_groups,
            first.crop_mode,
        ):
            raise ValueError("datasets to concatenate differ in crop size, crop mode or feature groups")
    offset, cells = 0, []
    for d in datasets:
        cells.append(d.cell + offset)
        offset += d.n_cells
    arrays = {k: np.concatenate([getattr(d, k) for d in datasets]) for k in _ARRAY_KEYS if k != "cell"}
    arrays["cell"] = np.concatenate(cells)
    out = InstanceDataset(
        arrays=arrays,
        feature_groups=first.feature_groups,
        crop_height=first.crop_height,
        crop_width=first.crop_width,
        transforms=transforms,
        crop_mode=first.crop_mode,
    )
    for d in datasets:
        out.skipped.update(d.skipped)
    return out


class DistributedWeightedSampler(torch.utils.data.Sampler[int]):
    """Class-balanced sampling with replacement, split across DDP ranks.

    Every rank draws the same ``num_samples`` indices (``torch.multinomial`` with a generator seeded by
    ``seed + epoch``; call :meth:`set_epoch` each epoch) and keeps every ``world_size``-th one from
    ``rank``, so the ranks see disjoint shares of one balanced draw.
    """

    def __init__(
        self,
        weights: Sequence[float],
        *,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, np.float64))
        if self.weights.ndim != 1 or len(self.weights) == 0 or not (self.weights >= 0).all() or self.weights.sum() <= 0:
            raise ValueError("weights must be a non-empty 1-D array of non-negative values with a positive sum")
        total = len(self.weights) if num_samples is None else int(num_samples)
        self.num_samples = -(-total // world_size)  # per rank, rounded up
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples * self.world_size, replacement=True, generator=g)
        return iter(idx[self.rank :: self.world_size].tolist())


__all__ = [
    "CropAugment",
    "DistributedWeightedSampler",
    "InstanceDataset",
    "cache_key",
    "compute_instances",
    "concat_instances",
    "CROP_MODES",
    "axis_crop",
    "check_crop_mode",
    "fit_crop",
    "instance_crops",
    "load_instance_cache",
    "save_instance_cache",
    "spread_instances",
    "spread_instances_by_mode",
    "tight_crop",
]
