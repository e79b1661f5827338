"""Karyotype-level plausibility of a set of predicted chromosome labels, without ground truth.

Sanity score (a fraction in [0, 1]; 1.0 exactly for a normal 46,XX or 46,XY):

    sanity_score = count_term * pairing_term * sex_term

with, over the labels in 1..24 only (label 0 = unassigned is ignored everywhere but reported as
``n_unassigned``):

* ``count_term   = exp(-|n - 46| / 2)``, n = number of labelled chromosomes (ids 1..24): each
  chromosome too many or too few multiplies the score by exp(-1/2) ≈ 0.607.
* ``pairing_term = (number of autosomes 1..22 with exactly two copies) / 22``: every autosome with a
  wrong copy number (0, 1, 3, ...) costs 1/22 of the term.
* ``sex_term``, with x = copies of X (23) and y = copies of Y (24):
  1.0 if (x, y) is (2, 0) or (1, 1) (46,XX / 46,XY);
  0.5 if x + y is 1 or 3 (45,X; 47,XXY; 47,XYY; 47,XXX: real, but abnormal);
  0.25 otherwise (no sex chromosome, YY without X, four or more).

Examples: 46,XY -> 1; 47,XY,+21 -> exp(-1/2) * 21/22; 45,X -> exp(-1/2) * 0.5; 46,XY with one
chromosome 1 labelled 3 (one 1, three 3s) -> 20/22.

The score says how plausible the labelling is as a karyotype; a true aneuploidy also lowers it, so it
flags cells for review rather than measuring accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from karyogram.labels import AUTOSOMES, CLASS_NAMES, NUM_CLASSES, X_ID, Y_ID

__all__ = ["sanity_score", "sanity_terms", "NORMAL_COUNT"]

#: chromosomes in a normal human somatic cell
NORMAL_COUNT = 46


def _check_labels(labels: Any) -> np.ndarray:
    a = np.asarray(labels).reshape(-1)
    if a.size == 0:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids 0..{NUM_CLASSES}, got dtype {a.dtype}")
    if a.min() < 0 or a.max() > NUM_CLASSES:
        raise ValueError(f"labels must be in 0..{NUM_CLASSES} (0 = unassigned), got {sorted(set(a.tolist()))}")
    return a.astype(np.int64)


def sanity_terms(labels: Any) -> dict[str, Any]:
    """Every term of the sanity score of predicted labels int[N] (ids 0..24; see the module docstring).

    Returns:
        dict with ``n_labelled`` (ids 1..24), ``n_unassigned`` (id 0), ``n_x``, ``n_y``,
        ``copies`` ({name: copies} for "1".."22", "X", "Y"), ``abnormal_autosomes`` (names of autosomes
        without exactly two copies), ``count_term``, ``pairing_term``, ``sex_term`` and ``score``.
    """
    a = _check_labels(labels)
    counts = np.bincount(a, minlength=NUM_CLASSES + 1)
    n = int(counts[1:].sum())
    n_x, n_y = int(counts[X_ID]), int(counts[Y_ID])
    autosome_copies = counts[1:X_ID]
    n_paired = int((autosome_copies == 2).sum())
    count_term = math.exp(-abs(n - NORMAL_COUNT) / 2)
    pairing_term = n_paired / len(AUTOSOMES)
    if (n_x, n_y) in ((2, 0), (1, 1)):
        sex_term = 1.0
    elif n_x + n_y in (1, 3):
        sex_term = 0.5
    else:
        sex_term = 0.25
    return {
        "n_labelled": n,
        "n_unassigned": int(counts[0]),
        "n_x": n_x,
        "n_y": n_y,
        "copies": {name: int(counts[i + 1]) for i, name in enumerate(CLASS_NAMES)},
        "abnormal_autosomes": [CLASS_NAMES[i] for i in range(len(AUTOSOMES)) if autosome_copies[i] != 2],
        "count_term": count_term,
        "pairing_term": pairing_term,
        "sex_term": sex_term,
        "score": count_term * pairing_term * sex_term,
    }


def sanity_score(labels: Any) -> float:
    """Plausibility in [0, 1] of predicted labels int[N] as a karyotype; 1.0 for 46,XX and 46,XY.

    >>> normal_xy = [c for c in range(1, 23) for _ in range(2)] + [23, 24]
    >>> sanity_score(normal_xy)
    1.0
    """
    return float(sanity_terms(labels)["score"])
