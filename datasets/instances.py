"""Per-chromosome samples for the classifier, made from any dataset of spreads (or of single crops).

:class:`InstanceDataset` walks a dataset of :class:`~datasets.record.KaryoRecord` once and, for every
spread, makes the features and crops of its chromosomes with :func:`features.crops.make_crops`, the one
crop maker the pipeline uses too: the features on the whole spread (so the "scale" features are relative to
the cell the chromosome came from), and each chromosome's crop (straightened along its centre line, or
turned to its long axis: the crop mode; p arm up, white background) fitted into a fixed
``crop_height x crop_width`` box (aspect ratio kept, padded with white), so every chromosome fills the box;
its size relative to the cell is carried by the "scale" features. Everything is kept as arrays:

=================== ======================== ==============================================
array               shape / dtype            meaning
=================== ======================== ==============================================
``crops``           uint8 [M, H, W]          fitted crops (``make_crops``' x 255, rounded), 255 = white
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

from features.crops import MIN_AREA, CropSpec, check_crop_mode
from karyogram.labels import NUM_CLASSES

from .io import atomic_write

CACHE_VERSION = 1

_ARRAY_KEYS = ("crops", "features", "labels", "cell", "lengths", "centromere", "image_ids")


# ---------------------------------------------------------------------------------------------- crops
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
def spread_instances(
    rec: Any, height: int, width: int, *, crop_mode: str = "straight"
) -> tuple[dict[str, np.ndarray], Counter]:
    """Samples of one spread: features on the whole spread, crops and labels of its labelled chromosomes.

    Args:
        rec: a :class:`~datasets.record.KaryoRecord` with masks.
        height / width: crop box in pixels.
        crop_mode: one of :data:`features.crops.CROP_MODES`.

    Returns:
        (arrays, skipped): arrays ``crops`` uint8 [m, H, W], ``features`` float32 [m, F_all],
        ``labels`` int64 [m] (0..23), ``lengths`` / ``centromere`` float32 [m]; ``skipped`` counts the
        instances left out by reason.
    """
    arrays, skipped = spread_instances_by_mode(rec, {crop_mode: (height, width)})
    arrays["crops"] = arrays.pop("crops_by_mode")[crop_mode]
    return arrays, skipped


def spread_instances_by_mode(rec: Any, specs: Mapping[str, tuple[int, int]]) -> tuple[dict[str, Any], Counter]:
    """:func:`spread_instances` with the crops of several crop modes, the features measured once.

    The features and crops are :func:`features.crops.make_crops`' for the record's masks and boxes, exactly what
    the pipeline gives its classifiers for the same masks (the fitted crops rounded to uint8). Left out: masks
    under ``MIN_AREA`` pixels ("degenerate mask"; measured with the others, but, like in the pipeline, they do
    not set the spread's scale), chromosomes of unknown class (label 0; they do set the scale) and instances
    without a centre line (no crop in any mode).

    Args:
        specs: crop mode (:data:`features.crops.CROP_MODES`) -> ``(height, width)`` of its crop box.

    Returns:
        (arrays, skipped) as :func:`spread_instances`, with ``crops_by_mode`` (mode -> uint8 [m, h, w]) in place
        of ``crops``; every mode holds the same m instances.
    """
    from features.crops import make_crops
    from features.triad import FEATURE_NAMES

    crop_specs = {mode: CropSpec(int(h), int(w), check_crop_mode(mode)) for mode, (h, w) in specs.items()}
    skipped: Counter = Counter()
    empty = {
        "crops_by_mode": {mode: np.zeros((0, s.height, s.width), np.uint8) for mode, s in crop_specs.items()},
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
    image = rec.image
    if rec.meta.get("polarity") == "bright":  # fluorescence left un-inverted by its loader: make it dark on light
        image = 1.0 - image
    made = make_crops(image, rec.masks, crop_specs.values(), boxes=rec.boxes)
    skipped["degenerate mask"] += int((~made.measured).sum())
    ok = made.ok
    keep = []
    for i in np.flatnonzero(made.measured):
        if rec.labels[i] <= 0:
            skipped["unknown class (label 0)"] += 1
        elif not ok[i]:
            skipped["no centre line (degenerate mask)"] += 1
        else:
            keep.append(i)
    skipped = +skipped  # (no zero counts)
    if not keep:
        return empty, skipped
    keep_a = np.asarray(keep)
    return {
        "crops_by_mode": {
            mode: np.round(made.fitted[s][keep_a] * 255.0).astype(np.uint8) for mode, s in crop_specs.items()
        },
        "features": made.features[keep_a],
        "labels": rec.labels[keep_a].astype(np.int64) - 1,
        "lengths": np.array([made.infos[i].length_px for i in keep], np.float32),
        "centromere": np.array([made.infos[i].centromere_index for i in keep], np.float32),
    }, skipped


class _SpreadJob(torch.utils.data.Dataset):
    """Wraps the record dataset so that DataLoader workers compute spreads in parallel."""

    def __init__(self, ds: Any, height: int, width: int, crop_mode: str = "straight") -> None:
        self.ds, self.height, self.width, self.crop_mode = ds, height, width, crop_mode

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, str, dict[str, np.ndarray], Counter]:
        rec = self.ds[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-instance warnings are counted instead
            arrays, skipped = spread_instances(rec, self.height, self.width, crop_mode=self.crop_mode)
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


def cache_key(ds: Any, height: int, width: int, crop_mode: str = "straight") -> str:
    """Hex key of (dataset description, crop size and mode, feature names, cache version)."""
    from features.triad import FEATURE_NAMES

    desc = {
        "dataset": _describe(ds),
        "crop": [height, width],
        "min_area": MIN_AREA,
        "features": list(FEATURE_NAMES),
        "version": CACHE_VERSION,
    }
    if crop_mode != "straight":  # (the key of a straight cache is the one it had before crop modes existed)
        desc["crop_mode"] = crop_mode
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def cache_file_name(
    dataset: str,
    root: str,
    split: str,
    *,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    limit: int | None,
    synthetic_spreads: int,
    crop_height: int,
    crop_width: int,
    crop_mode: str = "straight",
) -> str:
    """The file name of the instance cache of one split of one dataset (under the trainer's ``--cache-dir``).

    It names what chooses the spreads (dataset, a hash of the resolved root, split, fractions, split seed, the
    ``--max-*-spreads`` limit, the synthetic count) and the crop box, so that runs of other splits or crops
    do not overwrite each other's caches; what is inside is checked by :func:`cache_key` on reading. Names of
    caches written before test splits and crop modes existed stay valid (those parts appear only when set).

    >>> cache_file_name("voc", "none", "val", val_fraction=0.1, test_fraction=0.0, split_seed=0, limit=None,
    ...                 synthetic_spreads=40, crop_height=96, crop_width=32)
    'voc-140bedbf-val-vf0.1-s0-maxall-96x32.npz'
    """
    tag = hashlib.sha256(str(Path(root).resolve() if root != "none" else root).encode()).hexdigest()[:8]
    n = "all" if limit is None else str(limit)
    extra = f"-n{synthetic_spreads}" if dataset == "synthetic" else ""
    if test_fraction > 0:  # a test split takes groups out of train (val is unchanged)
        extra += f"-tf{test_fraction:g}"
    if crop_mode != "straight":
        extra += f"-{crop_mode}"
    return f"{dataset}-{tag}-{split}-vf{val_fraction:g}-s{split_seed}-max{n}{extra}-{crop_height}x{crop_width}.npz"


def compute_instances(
    ds: Any,
    *,
    crop_height: int = CropSpec.height,
    crop_width: int = CropSpec.width,
    workers: int = 0,
    progress: bool = True,
    desc: str = "instances",
    crop_mode: str = "straight",
) -> tuple[dict[str, np.ndarray], Counter]:
    """Run :func:`spread_instances` over every record of ``ds``; returns the concatenated arrays and skip counts."""
    from tqdm.auto import tqdm

    from features.triad import FEATURE_NAMES

    job = _SpreadJob(ds, crop_height, crop_width, check_crop_mode(crop_mode))
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
        crop_height: int = CropSpec.height,
        crop_width: int = CropSpec.width,
        cache_path: str | os.PathLike | None = None,
        transforms: Any = None,
        workers: int = 0,
        progress: bool = True,
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
            arrays = self._load_or_compute(record_dataset, workers=workers, progress=progress, desc=desc)
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
        if m and (self.labels.min() < 0 or self.labels.max() >= NUM_CLASSES):
            raise ValueError(
                f"labels must be 0..{NUM_CLASSES - 1} (class id - 1), got {self.labels.min()}..{self.labels.max()}"
            )

    def _load_or_compute(self, ds: Any, *, workers: int, progress: bool, desc: str) -> dict[str, np.ndarray]:
        key = cache_key(ds, self.crop_height, self.crop_width, self.crop_mode)
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
        return np.bincount(self.labels, minlength=NUM_CLASSES).astype(np.int64)

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
    "cache_file_name",
    "cache_key",
    "compute_instances",
    "concat_instances",
    "load_instance_cache",
    "save_instance_cache",
    "spread_instances",
    "spread_instances_by_mode",
]
