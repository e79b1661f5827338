"""Measure and classify the instances of one spread, as the pipeline does between segmentation and assignment.

:func:`measure_and_classify` is the middle of :meth:`karyotyping.core.KaryotypePipeline._identify`
(:func:`features.crops.make_crops`: features over the whole spread and every member's crops, the very ones the
trainer makes for the same masks; then each classifier member on its own crops) for any masks, e.g. the ones a
reviewer has cut, joined or drawn (``review/``). ``which`` classifies only some instances: the others' features
still count, as the spread's scale, for the ones classified.
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
        crops: the N crops the karyogram lays out (:attr:`features.crops.Crops.shown`: straightened, p arm up,
            at the cell's pixel scale; a mask without a centre line turned upright).
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
        timings: seconds are added to its ``"features"`` (measuring and cutting the crops) and
            ``"classification"`` (the classifiers) entries.
    """
    import time

    from features.crops import make_crops
    from features.triad import FEATURE_NAMES
    from karyogram.labels import NUM_CLASSES
    from models.classifier import predict_members

    n = len(masks)
    idx = np.arange(n) if which is None else np.asarray(list(which), np.int64).reshape(-1)
    if n == 0:
        if timings is not None:  # nothing to measure or classify: the stages took no time, and say so
            timings.setdefault("features", 0.0)
            timings.setdefault("classification", 0.0)
        return Identified(
            np.zeros((0, len(FEATURE_NAMES)), np.float32), [], [], idx, np.zeros((0, NUM_CLASSES), np.float32)
        )
    t0 = time.perf_counter()
    # each classifier gets exactly the crops it was trained on (its config's crop spec), over all instances: the
    # spread's scale and the axis crops' minimum width come from every measured instance
    made = make_crops(image, masks, [c.crop_spec for _, c in members], boxes=boxes)
    t1 = time.perf_counter()
    chosen = {spec: crops[idx] for spec, crops in made.fitted.items()}
    probs = (
        np.asarray(predict_members(members, chosen, made.features[idx], flip=flip), np.float32)
        if len(idx)
        else np.zeros((0, NUM_CLASSES), np.float32)
    )
    if timings is not None:
        timings["features"] = timings.get("features", 0.0) + t1 - t0
        timings["classification"] = timings.get("classification", 0.0) + time.perf_counter() - t1
    return Identified(made.features, made.infos, made.shown, idx, probs)
