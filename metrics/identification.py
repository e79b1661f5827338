"""Chromosome identification metrics: how well matched chromosomes are given their class (1..22, X, Y).

Input is per cell (metaphase) a pair of equally long label arrays: the true class and the predicted
class of the same chromosomes (e.g. ground-truth instances and the prediction matched to each, or the
classifier run on ground-truth crops). Class ids follow :mod:`karyogram.labels`: 1..22, 23 = X,
24 = Y, 0 = unknown (true side) / unassigned (predicted side).

Definitions:

* A chromosome is *evaluated* when its true label is 1..24. Chromosomes with true label 0 appear in row
  0 of the confusion matrix only, and nowhere else.
* ``accuracy`` = (evaluated chromosomes with pred == true) / (evaluated chromosomes); a pred of 0
  (unassigned) is always wrong.
* Per class c: ``support`` = evaluated chromosomes of true class c; tp = those predicted c;
  ``precision`` = tp / (evaluated chromosomes predicted c); ``recall`` = tp / support;
  ``accuracy`` = recall (the per-class classification accuracy of the karyotyping literature, not
  the one-vs-rest accuracy, which true negatives would push to ~0.96 for every class);
  ``f1`` = 2 tp / (support + predicted c). A 0/0 ratio is 0.0. Only classes *present* (support > 0 or
  predicted at least once) are listed.
* ``macro_F1`` = mean F1 over the present classes.
* ``confusion`` int64 [25, 25]: row = true id 0..24, column = predicted id 0..24.
* ``cell_exact_rate`` = (cells with at least one evaluated chromosome, all of them right) / (cells with
  at least one evaluated chromosome).
* With no evaluated chromosome at all, every rate is 0.0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from karyogram.labels import CLASS_NAMES, NUM_CLASSES, name_of

__all__ = [
    "identification_metrics",
    "per_crop_scores",
    "plot_confusion",
    "plot_per_class",
    "write_instance_outputs",
]

#: axis labels of the confusion matrix: "?" (0), "1".."22", "X", "Y"
AXIS_NAMES: tuple[str, ...] = ("?",) + CLASS_NAMES


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b > 0 else 0.0


def identification_metrics(
    true_labels_per_cell: Sequence[np.ndarray], pred_labels_per_cell: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Identification scores of predicted chromosome classes (definitions in the module docstring).

    Args:
        true_labels_per_cell: per cell, true class ids int[N_k] in 0..24.
        pred_labels_per_cell: per cell, predicted class ids int[N_k] in 0..24, same order.

    Returns:
        dict with ``accuracy`` (float), ``per_class`` ({name: {accuracy, precision, recall, f1, support}}),
        ``macro_F1`` (float), ``confusion`` (int64 ndarray [25, 25]), ``cell_exact_rate`` (float),
        ``n_chromosomes`` (evaluated chromosomes, int), ``n_cells`` (all cells given, int).

    Raises:
        ValueError: different numbers of cells, a cell whose arrays differ in length, ids outside 0..24.
    """
    trues, preds = list(true_labels_per_cell), list(pred_labels_per_cell)
    if len(trues) != len(preds):
        raise ValueError(f"{len(trues)} cells of true labels but {len(preds)} cells of predicted labels")
    k = NUM_CLASSES + 1
    cm = np.zeros((k, k), np.int64)
    n_exact = n_scored_cells = 0
    for i, (t, p) in enumerate(zip(trues, preds)):
        t = np.asarray(t).reshape(-1)
        p = np.asarray(p).reshape(-1)
        if t.shape != p.shape:
            raise ValueError(f"cell {i}: {t.size} true labels but {p.size} predicted labels")
        if t.size and not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
            raise ValueError(f"cell {i}: labels must be integers, got {t.dtype} and {p.dtype}")
        for name, a in (("true", t), ("predicted", p)):
            if a.size and (a.min() < 0 or a.max() > NUM_CLASSES):
                raise ValueError(f"cell {i}: {name} labels must be in 0..{NUM_CLASSES}, got {sorted(set(a.tolist()))}")
        t, p = t.astype(np.int64), p.astype(np.int64)
        np.add.at(cm, (t, p), 1)
        ev = t > 0
        if ev.any():
            n_scored_cells += 1
            n_exact += int(np.all(t[ev] == p[ev]))
    scored = cm[1:]  # rows of evaluated chromosomes (true 1..24), all 25 predicted columns
    n_chrom = int(scored.sum())
    correct = int(np.trace(cm[1:, 1:]))
    per_class: dict[str, dict[str, float]] = {}
    for c in range(1, k):
        support = int(scored[c - 1].sum())
        predicted = int(scored[:, c].sum())
        if support == 0 and predicted == 0:
            continue
        tp = int(cm[c, c])
        recall = _div(tp, support)
        per_class[name_of(c)] = {
            "accuracy": recall,
            "precision": _div(tp, predicted),
            "recall": recall,
            "f1": _div(2 * tp, support + predicted),
            "support": support,
        }
    return {
        "accuracy": _div(correct, n_chrom),
        "per_class": per_class,
        "macro_F1": float(np.mean([v["f1"] for v in per_class.values()])) if per_class else 0.0,
        "confusion": cm,
        "cell_exact_rate": _div(n_exact, n_scored_cells),
        "n_chromosomes": n_chrom,
        "n_cells": len(trues),
    }


def per_crop_scores(probs: np.ndarray, labels: np.ndarray, *, label_smoothing: float = 0.0) -> dict[str, float]:
    """Per-crop ``accuracy`` and ``loss`` of class probabilities float [M, 24] against labels int [M] (class id - 1).

    ``loss`` is the cross-entropy with label smoothing ``label_smoothing`` (as ``nn.CrossEntropyLoss`` trains
    it): ``(1 - s) * mean(-log p_true) - s * mean over crops of the mean log p``, probabilities clamped at 1e-12.
    Both are NaN with no crop.
    """
    if len(labels) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    import torch

    s = label_smoothing
    logp = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    loss = torch.nn.functional.nll_loss(logp, torch.from_numpy(labels)) * (1 - s) - s * logp.mean(1).mean()
    return {"accuracy": float((probs.argmax(1) == labels).mean()), "loss": float(loss)}


def write_instance_outputs(out_dir: str | os.PathLike, instances: Any, probs: np.ndarray) -> dict[str, Any]:
    """The files of a classifier's probabilities float [M, 24] on a set of chromosomes, in ``out_dir``.

    ``instances`` is a :class:`datasets.instances.InstanceDataset` (its ``labels``, ``cell``, ``lengths``,
    ``centromere``, ``image_ids``). Writes ``val_probs.npz`` (the probabilities, labels, class ids, cell index,
    lengths, centromere index and image ids: everything karyotype-level assignment needs), ``per_class.json``
    (:func:`identification_metrics` over the cells), ``confusion.png`` and ``per_class.png``; returns the metrics.
    """
    from pathlib import Path

    from fileio import atomic_write, atomic_write_json

    out = Path(out_dir)
    pred_ids = probs.argmax(1).astype(np.int64) + 1
    true_ids = instances.labels + 1
    with atomic_write(out / "val_probs.npz", "wb") as f:
        np.savez(
            f,
            probs=probs.astype(np.float32),
            labels=instances.labels,
            class_ids=true_ids,
            cell=instances.cell,
            lengths=instances.lengths,
            centromere_index=instances.centromere,
            image_ids=instances.image_ids,
        )
    cells = np.unique(instances.cell)
    true_pc = [true_ids[instances.cell == c] for c in cells]
    pred_pc = [pred_ids[instances.cell == c] for c in cells]
    m = identification_metrics(true_pc, pred_pc)
    atomic_write_json(out / "per_class.json", _plain(m))
    plot_confusion(m["confusion"], out / "confusion.png")
    plot_per_class(m["per_class"], out / "per_class.png")
    return m


def _plain(obj: Any) -> Any:
    """``obj`` with str keys, lists for arrays and tuples, Python numbers for NumPy's (for JSON)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def plot_confusion(cm: np.ndarray, path: str | os.PathLike, normalize: bool = True) -> None:
    """Draw a confusion matrix int[25, 25] (rows true, columns predicted, ids 0..24) to an image file.

    ``normalize``: each row is divided by its sum (fraction of the true class given each prediction;
    empty rows stay 0). Written atomically; the format follows the file extension.
    """
    from matplotlib.figure import Figure

    from datasets.io import atomic_save_figure

    cm = np.asarray(cm)
    k = NUM_CLASSES + 1
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix must be [{k}, {k}] (ids 0..{NUM_CLASSES}), got shape {cm.shape}")
    data = cm.astype(np.float64)
    if normalize:
        rows = data.sum(1, keepdims=True)
        data = np.divide(data, rows, out=np.zeros_like(data), where=rows > 0)
    fig = Figure(figsize=(9, 8))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(1.0, float(data.max())))
    ax.set_xticks(range(k), AXIS_NAMES, fontsize=7)
    ax.set_yticks(range(k), AXIS_NAMES, fontsize=7)
    ax.set_xlabel("predicted class (? = unassigned)")
    ax.set_ylabel("true class (? = unknown)")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)


def plot_per_class(per_class: Mapping[str, Mapping[str, float]], path: str | os.PathLike) -> None:
    """Bar chart of precision, recall and F1 per class (the ``per_class`` of :func:`identification_metrics`).

    Classes are drawn in karyotype order 1..22, X, Y; absent classes are left out. Written atomically.
    """
    from matplotlib.figure import Figure

    from datasets.io import atomic_save_figure

    names = [n for n in CLASS_NAMES if n in per_class]
    unknown = sorted(set(per_class) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"unknown class names {unknown}; expected names among {CLASS_NAMES}")
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    for j, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (j - 1) * 0.27, [float(per_class[n][key]) for n in names], width=0.27, label=key)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("chromosome class")
    ax.set_ylabel("fraction")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)


def error_by_quantile(values: np.ndarray, wrong: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Error rate within each quantile bin of ``values`` (e.g. a shape feature of every chromosome).

    Args:
        values: float [N], one value per chromosome; NaN values are left out.
        wrong: bool [N], True where the chromosome was misclassified.
        bins: number of equal-count bins (quintiles by default).

    Returns:
        One dict per bin, lowest values first: ``lo`` / ``hi`` (the bin's value range), ``n`` (chromosomes),
        ``error_rate`` (fraction wrong; NaN for an empty bin) and ``share_of_errors`` (fraction of all the
        errors counted that fall in the bin). Ties at a bin edge go to the higher bin.

    >>> rows = error_by_quantile(np.arange(10.0), np.arange(10) >= 8, bins=2)
    >>> [(r["n"], r["error_rate"]) for r in rows]
    [(5, 0.0), (5, 0.4)]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.asarray(wrong, dtype=bool).ravel()
    if v.shape != w.shape:
        raise ValueError(f"values has {v.size} entries but wrong has {w.size}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    keep = np.isfinite(v)
    v, w = v[keep], w[keep]
    if v.size == 0:
        return []
    edges = np.quantile(v, np.linspace(0.0, 1.0, bins + 1))
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
    total = max(int(w.sum()), 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": n,
                "error_rate": float(w[sel].mean()) if n else float("nan"),
                "share_of_errors": float(w[sel].sum()) / total,
            }
        )
    return rows
