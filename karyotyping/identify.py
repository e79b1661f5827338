"""Measure and classify the instances of one spread, as the pipeline does between segmentation and assignment.

:func:`measure_and_classify` is the middle of :meth:`karyotyping.core.KaryotypePipeline._identify`
(features over the whole spread, the straightened crops, each classifier member on the crops of its mode)
for any masks, e.g. the ones a reviewer has cut, joined or drawn (``review/``). ``which`` classifies only
some instances: the others' features still count, as the spread's scale, for the ones classified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Identified:
    """What :func:`measure_and_classify` found.

    Attributes:
        x: float32 [N, len(features.triad.FEATURE_NAMES)] the feature triad of every instance.
        feats: the N :class:`features.triad.InstanceFeatures`.
        crops: the N straightened crops (p arm up; ``[0, 0]`` for a degenerate instance).
        which: int [K] the instances classified.
        probs: float32 [K, 24] their probabilities (column k - 1 for class k).
    """

    x: np.ndarray
    feats: list[Any]
    crops: list[np.ndarray]
    which: np.ndarray
    probs: np.ndarray


def measure_and_classify(
    members: Sequence[tuple[Any, Any]],
    image: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    *,
    which: Sequence[int] | None = None,
    flip: bool = False,
    timings: dict[str, float] | None = None,
) -> Identified:
    """Features, crops and class probabilities of the instances of one spread.

    Args:
        members: ``(model, config)`` pairs (:func:`models.classifier.load_classifier_members`).
        image: float32 [H, W] grey in [0, 1], at the processing resolution.
        masks: uint8 [N, H, W] every instance of the spread (the scale features need them all).
        boxes: float [N, 4] xyxy of each instance (the axis crops' windows), ``image`` pixels.
        which: the instances to classify (default all).
        flip: :func:`models.classifier.predict_members` ``flip``.
        timings: seconds are added to its ``"features"`` (measuring) and ``"classification"`` (crops and the
            classifiers) entries.
    """
    import time

    from datasets.instances import instance_crops, tight_crop
    from features.triad import FEATURE_NAMES, spread_features
    from models.classifier import predict_members

    n = len(masks)
    idx = np.arange(n) if which is None else np.asarray(list(which), np.int64).reshape(-1)
    if n == 0:
        if timings is not None:  # nothing to measure or classify: the stages took no time, and say so
            timings.setdefault("features", 0.0)
            timings.setdefault("classification", 0.0)
        return Identified(np.zeros((0, len(FEATURE_NAMES)), np.float32), [], [], idx, np.zeros((0, 24), np.float32))
    t0 = time.perf_counter()
    x, feats = spread_features(image, masks)
    t1 = time.perf_counter()
    # the straightened crops (p arm up, trimmed to the mask) go into the karyogram; each classifier gets exactly
    # the crops it was trained on: these, or the unmasked axis crops (its config's crop_mode)
    crops = [tight_crop(f) for f in feats]
    by_mode = {"straight": crops}
    for mode in sorted({c.crop_mode for _, c in members} - {"straight"}):
        # over all instances: the axis crops' minimum width is the spread's median chromosome width
        by_mode[mode] = instance_crops(image, boxes, masks, feats, mode, crops)
    chosen = {mode: [c[i] for i in idx] for mode, c in by_mode.items()}
    probs = (
        np.asarray(predict_members(members, chosen, x[idx], flip=flip), np.float32)
        if len(idx)
        else np.zeros((0, 24), np.float32)
    )
    if timings is not None:
        timings["features"] = timings.get("features", 0.0) + t1 - t0
        timings["classification"] = timings.get("classification", 0.0) + time.perf_counter() - t1
    return Identified(x, feats, crops, idx, probs)
