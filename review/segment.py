"""Segmentation edits, made on the server: a gesture on the spread in, one edit (:mod:`review.edits`) out.

The reviewer's gesture (a cut line, a path through a crossing, two instances to join, a drawn outline, an
erased stroke) becomes new masks (:mod:`review.geometry`); each new instance is measured and classified
by the pipeline's own code (:func:`karyotyping.identify.measure_and_classify`: the spread's features,
the classifier members on their crops), only the new ones (the others keep their probabilities); then the
cell's assignment is recomputed (:func:`karyogram.assign.assign_karyotype`) with the reviewer's own labels
kept: a chromosome the reviewer moved or swapped keeps its class, one the reviewer unassigned or marked
"not a chromosome" stays out. The edit carries the new masks (compressed RLE, as the pipeline's JSON), their
probabilities and measurements, and every label after it, so that replaying it needs no model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from karyogram.labels import NUM_CLASSES

from .edits import REMOVED, CellState
from .geometry import (
    MIN_PIECE_PX,
    GeometryError,
    brush_mask,
    cut,
    join,
    line_mask,
    outline_mask,
    points_of,
    polyline_inside,
    separate,
)

TOOLS = ("cut", "join", "separate", "draw", "erase")
#: the largest brush radius an erase takes (pixels)
MAX_BRUSH_RADIUS = 50.0


def decode(rle: dict[str, Any]) -> np.ndarray:
    """uint8 [H, W] of a compressed RLE as the pipeline writes it."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(np.uint8)


def box_of(mask: np.ndarray) -> list[float]:
    """``[x1, y1, x2, y2]`` of a mask's pixels (x2, y2 one past the last)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class Identifier:
    """The classifier members and the assignment's configuration, loaded on first use (seconds) and kept.

    Args:
        weights: the classifier file; None: the pipeline's default (``weights/classifier.pt``).
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        self.weights = weights
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        """``(members, assign_config)``; :class:`GeometryError` naming the file when it cannot be read."""
        with self._lock:
            if self._loaded is None:
                from karyogram.assign import config_for_classifier
                from karyotyping.core import DEFAULT_CLS_WEIGHTS
                from models.classifier import load_classifier_members

                path = Path(self.weights or DEFAULT_CLS_WEIGHTS)
                try:
                    members = load_classifier_members(path, "cpu")
                except (OSError, ValueError) as exc:
                    msg = f"the classifier {path} cannot be read ({exc}): segmentation edits need it"
                    raise GeometryError(msg) from None
                self._loaded = (members, config_for_classifier(members[0][1].feature_groups))
            return self._loaded


_IDENTIFIERS: dict[str, Identifier] = {}
_IDENTIFIERS_LOCK = threading.Lock()


def identifier_for(weights: str | Path | None) -> Identifier:
    """One :class:`Identifier` per classifier file in this process (its models are loaded once)."""
    with _IDENTIFIERS_LOCK:
        return _IDENTIFIERS.setdefault(str(weights), Identifier(weights))


def _instance_masks(loaded: Any, state: CellState) -> list[np.ndarray | None]:
    """Every instance's mask by id (None for a removed one)."""
    pipe = loaded.cell.prediction.masks
    n = state.n_pipeline
    out: list[np.ndarray | None] = [pipe[i] if state.alive[i] else None for i in range(n)]
    out += [decode(a["mask"]) if state.alive[n + k] else None for k, a in enumerate(state.added)]
    return out


def _editable(state: CellState) -> list[int]:
    """Instances a gesture may change: present and not marked "not a chromosome"."""
    return [i for i in range(len(state.labels)) if state.alive[i] and not state.debris[i]]


def _geometry(tool: str, params: dict[str, Any], masks: list[np.ndarray | None], state: CellState, shape):
    """``(removed ids, new masks, sources, message)`` of a gesture; :class:`GeometryError` when it does nothing."""
    editable = _editable(state)
    if tool == "cut":
        line = polyline_inside(params.get("line"), shape, "cut line")
        on = line_mask(line, shape) > 0
        touched = [i for i in editable if (masks[i][on] > 0).any()]
        if not touched:
            raise GeometryError("the cut line crosses no chromosome: draw it across the one to cut")
        removed, new, src, why = [], [], [], None
        for i in touched:
            try:
                pieces = cut(masks[i], line)
            except GeometryError as exc:
                why = why or exc
                continue
            removed.append(i)
            new += pieces
            src += [[i]] * len(pieces)
        if not removed:
            raise why  # type: ignore[misc]
        return removed, new, src, f"cut {', '.join(f'#{i}' for i in removed)} into {len(new)}"
    if tool == "separate":
        path = polyline_inside(params.get("path"), shape, "path")
        on = line_mask(path, shape) > 0
        inside = {i: int((masks[i][on] > 0).sum()) for i in editable}
        if not inside or max(inside.values()) == 0:
            raise GeometryError("the path crosses no chromosome: draw it along one chromosome, through the crossing")
        i = max(inside, key=lambda j: inside[j])
        hw = params.get("half_width")
        if hw is not None and not (isinstance(hw, (int, float)) and 0.5 <= hw <= 100):
            raise GeometryError(f"half_width must be a number of pixels in [0.5, 100], got {hw!r}")
        new, rest = separate(masks[i], path, hw)
        return [i], [rest, new], [[i], [i]], f"separated a chromosome from #{i} (the crossing belongs to both)"
    if tool == "join":
        ids = params.get("ids")
        if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(v, int) for v in ids) and ids[0] != ids[1]):
            raise GeometryError(f"join needs two different chromosomes, got {ids!r}")
        for i in ids:
            if i not in editable:
                raise GeometryError(f"chromosome {i} cannot be joined: it is removed or marked 'not a chromosome'")
        return ids, [join(masks[ids[0]], masks[ids[1]])], [ids], f"joined #{ids[0]} and #{ids[1]}"
    if tool == "draw":
        out = outline_mask(points_of(params.get("outline"), "outline", at_least=3), shape)
        return [], [out], [[]], "drew a chromosome"
    if tool == "erase":
        if params.get("outline") is not None:
            region = outline_mask(points_of(params.get("outline"), "erase outline", at_least=3), shape, "erase outline")
        else:
            stroke = points_of(params.get("stroke"), "brush stroke", at_least=1)
            r = params.get("radius")
            if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0.5 <= r <= MAX_BRUSH_RADIUS):
                raise GeometryError(f"the brush radius must be 0.5..{MAX_BRUSH_RADIUS:g} pixels, got {r!r}")
            region = brush_mask(stroke, shape, r)
        hit = [i for i in editable if (masks[i] & region).any()]
        if not hit:
            raise GeometryError("nothing to erase there: the stroke touches no chromosome")
        new, src = [], []
        for i in hit:
            left = masks[i] & (1 - region)
            if left.sum() >= MIN_PIECE_PX:
                new.append(left)
                src.append([i])
        gone = len(hit) - len(new)
        return hit, new, src, f"erased pixels of {len(hit)} chromosome(s)" + (f", {gone} gone" if gone else "")
    raise GeometryError(f"unknown tool {tool!r}: use one of {', '.join(TOOLS)}")


def _work(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, scale: float, inverted: bool = False):
    """Image, masks and boxes as the pipeline's models saw them: at its processing resolution (``scale`` of the
    original, resampled as :meth:`karyotyping.core.KaryotypePipeline.prepare` does) and, for a light-on-dark image
    the pipeline inverted (``inverted``), inverted too."""
    if inverted:
        image = 1.0 - image
    if scale == 1.0:
        return image, masks, boxes
    import cv2

    h, w = image.shape
    size = (round(w * scale), round(h * scale))
    img = np.clip(cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC), 0.0, 1.0)
    ms = np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]) if len(masks) else masks
    return img, ms, boxes * scale


def reassign(
    probs: np.ndarray,
    lengths: np.ndarray,
    ci: np.ndarray,
    state_labels: list[int],
    active: list[int],
    locked: list[int],
    config: Any,
) -> tuple[list[int], list[int], list[list[str]]]:
    """The assignment of the ``active`` instances (:func:`karyogram.assign.assign_karyotype`), the ``locked``
    ones (a subset of them) held to their class in ``state_labels``.

    Returns:
        labels, pair (-1 none) and flags, one per instance (the others keep their label, no pair, no flag).
    """
    from karyogram.assign import assign_karyotype

    m = len(state_labels)
    labels, pair, flags = list(state_labels), [-1] * m, [[] for _ in range(m)]
    if not active:
        return labels, pair, flags
    p = np.asarray(probs[active], np.float64).copy()
    pos = {i: k for k, i in enumerate(active)}
    for i in locked:  # the reviewer's class, as sure as a probability can be
        p[pos[i]] = 1e-9
        p[pos[i], state_labels[i] - 1] = 1.0
    res = assign_karyotype(p, lengths=lengths[active], centromere_index=ci[active], config=config)
    for k, i in enumerate(active):
        labels[i] = int(res.labels[k])
        pair[i] = int(active[res.pair_of[k]]) if res.pair_of[k] >= 0 else -1
        flags[i] = list(res.flags[k])
    for i in locked:
        labels[i] = state_labels[i]
    return labels, pair, flags


def make_edit(
    loaded: Any, state: CellState, tool: str, params: dict[str, Any], identifier: Identifier
) -> tuple[dict[str, Any], str]:
    """The edit a gesture makes on a cell in ``state`` (module docstring) and a sentence saying what it did.

    Args:
        loaded: the cell with its image (:class:`review.store.LoadedCell`).
        tool: one of :data:`TOOLS`; params: its gesture (``line``, ``path`` [+ ``half_width``], ``ids``,
            ``outline``, ``stroke`` + ``radius``), in the image's pixels.

    Raises:
        GeometryError: the gesture makes no edit (a cut that splits nothing, an outline that crosses
            itself, a join of two instances far apart, ...); nothing changes.
    """
    from datasets.coco import encode_mask
    from karyotyping.identify import measure_and_classify

    if tool not in TOOLS:
        raise GeometryError(f"unknown tool {tool!r}: use one of {', '.join(TOOLS)}")
    cell = loaded.cell
    pred = cell.prediction
    shape = (cell.height, cell.width)
    masks = _instance_masks(loaded, state)
    removed, new_masks, sources, what = _geometry(tool, params, masks, state, shape)
    n = len(state.labels)
    ids_after = [i for i in range(n) if state.alive[i] and i not in removed]
    stack = np.stack([masks[i] for i in ids_after] + list(new_masks)).astype(np.uint8)
    boxes = np.array(
        [pred.boxes[i] if i < state.n_pipeline else state.added[i - state.n_pipeline]["box"] for i in ids_after]
        + [box_of(m) for m in new_masks],
        np.float64,
    ).reshape(-1, 4)
    scale = float(pred.processing_scale)
    inverted = bool(pred.image_checks is not None and pred.image_checks.inverted)
    img, work_masks, work_boxes = _work(loaded.image, stack, boxes, scale, inverted)
    members, config = identifier.load()
    which = list(range(len(ids_after), len(stack)))
    found = measure_and_classify(members, img, work_masks, work_boxes, which=which)
    added = []
    for k, (m, src) in enumerate(zip(new_masks, sources)):
        f = found.feats[which[k]]
        added.append(
            {
                "mask": encode_mask(m),
                "probs": [round(float(v), 5) for v in found.probs[k]],
                "box": box_of(m),
                "length_px": round(float(f.length_px) / scale, 2),
                "centromere_index": round(float(f.centromere_index), 4),
                "centromere_xy": [round(float(v) / scale, 2) for v in f.centromere_xy],
                "polarity_ok": bool(f.polarity_conf >= 0.5),
                "from": src,
            }
        )
    # the assignment over every instance after the edit, the reviewer's own labels kept
    m_all = n + len(added)
    probs = np.concatenate(
        [pred.probs, np.array([a["probs"] for a in state.added + added], np.float64).reshape(-1, NUM_CLASSES)]
    )
    lengths = np.concatenate([pred.length_px, [a["length_px"] for a in state.added + added]]).astype(np.float64)
    ci = np.concatenate([pred.centromere_index, [a["centromere_index"] for a in state.added + added]])
    gone = set(removed)
    # a piece keeps the reviewer's class of what it came from only when it is the same chromosome (erase)
    inherit = [tool == "erase" and state.touched[src[0]] for src in sources]
    labels0 = list(state.labels) + [state.labels[src[0]] if inh else 0 for src, inh in zip(sources, inherit)]
    touched = list(state.touched) + inherit
    alive = [a and i not in gone for i, a in enumerate(state.alive)] + [True] * len(added)
    debris = list(state.debris) + [False] * len(added)
    active = [i for i in range(m_all) if alive[i] and not debris[i] and not (touched[i] and labels0[i] == 0)]
    locked = [i for i in active if touched[i]]
    labels, pair, flags = reassign(probs, lengths, np.asarray(ci, np.float64), labels0, active, locked, config)
    flags = [[REMOVED] if not alive[i] else f for i, f in enumerate(flags)]
    edit = {
        "op": tool,
        **{k: params[k] for k in ("line", "path", "half_width", "ids", "outline", "stroke", "radius") if k in params},
        "removed": sorted(removed),
        "added": added,
        "before": list(state.labels),
        "after": {"labels": labels, "pair": pair, "flags": flags, "touched": touched},
    }
    new_ids = list(range(n, m_all))
    return edit, f"{what}: new {', '.join(f'#{i}' for i in new_ids) if new_ids else 'none'}"
