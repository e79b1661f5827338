"""A reviewer's edits of one cell, applied to the pipeline's labels, and what follows from them.

An edit is a JSON object with its before/after values, so that the list of edits is the cell's whole
review history and any prefix of it is a valid state (undo = drop the last edit):

* ``{"op": "move", "id": i, "before": 7, "after": 9}``: chromosome ``i`` to class 9 (0 = unassigned);
* ``{"op": "swap", "ids": [i, j], "before": [7, 9], "after": [9, 7]}``: exchange two classes;
* ``{"op": "debris", "id": i, "before": false, "after": true}``: mark (or unmark) "not a chromosome"
  (nucleus, debris, stain): it leaves the karyotype and the training data;
* ``{"op": "flip", "id": i, "before": false, "after": true}``: the pipeline's polarity is wrong (the p
  arm is at the other end): the crop is turned by 180 degrees and the p-arm direction reversed;
* segmentation edits, ``{"op": "cut" | "join" | "separate" | "draw" | "erase", <the gesture>, "removed":
  [ids], "added": [instance, ...], "before": [label per id], "after": {"labels", "pair", "flags",
  "touched"}}``: the instances ``removed`` are gone, the ``added`` ones (each with its ``mask`` as the
  pipeline's JSON stores it, compressed RLE, its classifier ``probs`` and measurements) take the next ids,
  and every label, pair and model flag is the assignment recomputed after the edit (``after``), made by
  :mod:`review.segment` when the reviewer made the edit; replaying it needs no model. The gesture
  (``line``, ``path``, ``outline``, ``stroke`` + ``radius``, ``ids``) is kept for the record.

An edit whose ``before`` does not match the state it applies to is refused (:class:`EditError`): the
edits were made on another version of the cell.

The counts, the ISCN string (:func:`karyogram.iscn.iscn_string`), the sanity score
(:func:`metrics.karyotype.sanity_score`) and the flags that follow from the counts are recomputed here
for the browser (after every edit) and for the saved files alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from karyogram.iscn import iscn_string
from karyogram.labels import NUM_CLASSES, X_ID, Y_ID, name_of
from karyogram.render import karyogram_slots
from metrics.karyotype import sanity_score

#: edits that change the instances themselves (:mod:`review.segment` makes them)
SEG_OPS = ("cut", "join", "separate", "draw", "erase")
OPS = ("move", "swap", "debris", "flip", *SEG_OPS)
#: the flag of an instance a segmentation edit replaced (it is no longer shown or counted)
REMOVED = "removed"
#: flags of the pipeline about its own evidence: kept on a chromosome the reviewer did not relabel
MODEL_FLAGS = ("low_confidence", "suspected_overlap", "suspected_split")
NOT_CHROMOSOME = "not_chromosome"


class EditError(ValueError):
    """An edit that cannot apply (bad shape, unknown chromosome or class, before value out of date)."""


@dataclass
class CellState:
    """Labels of one cell after some edits.

    Instances are numbered as the pipeline numbered them, then the ones segmentation edits added, in
    order; an instance such an edit replaced stays in the lists with ``alive`` false.

    Attributes:
        labels: class id 0..24 per instance (0 = unassigned); a debris instance keeps its last label.
        debris: per instance, marked "not a chromosome".
        flipped: per instance, polarity reversed by the reviewer.
        touched: per instance, relabelled by the reviewer (moved or swapped to another class): its label is
            kept when a segmentation edit recomputes the assignment.
        alive: per instance, not replaced by a segmentation edit.
        added: the instances segmentation edits added (ids ``n_pipeline`` on), as the edits carry them.
        model_flags / pair_hint: the assignment's flags and pairs after the last segmentation edit (None:
            the pipeline's).
        size: ``[height, width]`` of the cell's masks (None: not checked).
    """

    labels: list[int]
    debris: list[bool]
    flipped: list[bool]
    touched: list[bool]
    alive: list[bool]
    added: list[dict[str, Any]]
    model_flags: list[list[str]] | None = None
    pair_hint: list[int] | None = None
    size: list[int] | None = None

    @classmethod
    def initial(cls, labels: list[int], size: list[int] | None = None) -> CellState:
        n = len(labels)
        return cls(list(labels), [False] * n, [False] * n, [False] * n, [True] * n, [], size=size)

    @property
    def n_pipeline(self) -> int:
        return len(self.labels) - len(self.added)

    def effective_labels(self) -> list[int]:
        """Labels with debris and removed instances as 0 (what the karyotype counts)."""
        return [0 if d or not a else k for k, d, a in zip(self.labels, self.debris, self.alive)]


def _index(v: Any, n: int, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
        raise EditError(f"{where}: chromosome id must be an integer 0..{n - 1}, got {v!r}")
    return v


def _class(v: Any, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= NUM_CLASSES:
        raise EditError(f"{where}: class must be an integer 0..{NUM_CLASSES} (0 = unassigned), got {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise EditError(f"{where}: before/after must be true or false, got {v!r}")
    return v


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_added(a: Any, size: list[int] | None, where: str) -> None:
    if not isinstance(a, dict):
        raise EditError(f"{where}: each added instance must be an object")
    m = a.get("mask")
    if not (isinstance(m, dict) and isinstance(m.get("counts"), str) and isinstance(m.get("size"), list)):
        raise EditError(f"{where}: an added instance needs its 'mask' as compressed RLE (size, counts)")
    if size is not None and m["size"] != list(size):
        raise EditError(f"{where}: an added mask is {m['size']}, the cell's masks are {list(size)}")
    probs = a.get("probs")
    if not (isinstance(probs, list) and len(probs) == NUM_CLASSES and all(_number(v) for v in probs)):
        raise EditError(f"{where}: an added instance needs 'probs', {NUM_CLASSES} numbers")
    for k in ("length_px", "centromere_index"):
        if not _number(a.get(k)):
            raise EditError(f"{where}: an added instance needs a number '{k}'")
    box = a.get("box")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        raise EditError(f"{where}: an added instance needs 'box' [x1, y1, x2, y2]")


def _apply_segmentation(state: CellState, edit: dict[str, Any], where: str) -> None:
    n = len(state.labels)
    op = edit["op"]
    removed, added, before, after = (edit.get(k) for k in ("removed", "added", "before", "after"))
    if not (isinstance(removed, list) and isinstance(added, list) and isinstance(after, dict)):
        raise EditError(f"{where}: a {op} edit needs 'removed' (ids), 'added' (instances) and 'after'")
    ids = [_index(v, n, where) for v in removed]
    if len(set(ids)) != len(ids):
        raise EditError(f"{where}: {op} removes an instance twice: {ids}")
    if before != state.labels:
        raise EditError(f"{where}: {op} was made on other labels than the cell has now (the cell changed: reload it)")
    gone = [i for i in ids if not state.alive[i]]
    if gone:
        raise EditError(f"{where}: {op} works on chromosome(s) {gone}, removed by an earlier edit (reload the cell)")
    for a in added:
        _check_added(a, state.size, where)
    m = n + len(added)
    labels, pair, flags, touched = (after.get(k) for k in ("labels", "pair", "flags", "touched"))
    ok = (
        isinstance(labels, list)
        and isinstance(pair, list)
        and isinstance(flags, list)
        and isinstance(touched, list)
        and len(labels) == len(pair) == len(flags) == len(touched) == m
    )
    if not ok:
        raise EditError(f"{where}: {op} needs 'after' with labels, pair, flags and touched for all {m} instances")
    labels = [_class(v, where) for v in labels]
    if not all(isinstance(v, int) and -1 <= v < m for v in pair):
        raise EditError(f"{where}: {op}: 'after.pair' must hold ids or -1")
    if not all(isinstance(f, list) and all(isinstance(x, str) for x in f) for f in flags):
        raise EditError(f"{where}: {op}: 'after.flags' must be lists of strings")
    if not all(isinstance(t, bool) for t in touched):
        raise EditError(f"{where}: {op}: 'after.touched' must be true or false per instance")
    for i in ids:
        state.alive[i] = False
    k = len(added)
    state.debris += [False] * k
    state.flipped += [False] * k
    state.alive += [True] * k
    state.added += added
    state.labels = labels
    state.touched = list(touched)
    state.model_flags = [list(f) for f in flags]
    state.pair_hint = list(pair)


def apply_edit(state: CellState, edit: Any, where: str = "edit") -> None:
    """Apply one edit in place; :class:`EditError` (state unchanged) when it does not fit ``state``."""
    n = len(state.labels)
    if not isinstance(edit, dict) or edit.get("op") not in OPS:
        raise EditError(f"{where}: an edit must be an object with 'op' one of {', '.join(OPS)}, got {edit!r}")
    op = edit["op"]
    if op in SEG_OPS:
        _apply_segmentation(state, edit, where)
        return
    for i in edit.get("ids", []) if isinstance(edit.get("ids"), list) else [edit.get("id")]:
        if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n and not state.alive[i]:
            raise EditError(f"{where}: chromosome {i} was removed by an earlier segmentation edit (reload the cell)")
    if op == "swap":
        ids = edit.get("ids")
        if not (isinstance(ids, list) and len(ids) == 2):
            raise EditError(f"{where}: swap needs 'ids': [i, j]")
        i, j = (_index(v, n, where) for v in ids)
        if i == j:
            raise EditError(f"{where}: swap needs two different chromosomes, got {i} twice")
        before, after = edit.get("before"), edit.get("after")
        if not (isinstance(before, list) and isinstance(after, list) and len(before) == len(after) == 2):
            raise EditError(f"{where}: swap needs 'before' and 'after' [class, class]")
        b = [_class(v, where) for v in before]
        a = [_class(v, where) for v in after]
        if b != [state.labels[i], state.labels[j]] or a != b[::-1]:
            raise EditError(
                f"{where}: swap of {i} and {j} expects classes {[name_of(v) for v in b]} but they are "
                f"{name_of(state.labels[i])} and {name_of(state.labels[j])} (the cell changed: reload it)"
            )
        if state.debris[i] or state.debris[j]:
            raise EditError(f"{where}: cannot swap a chromosome marked 'not a chromosome'; unmark it first")
        state.labels[i], state.labels[j] = a
        state.touched[i] = state.touched[j] = True
        return
    i = _index(edit.get("id"), n, where)
    if op == "move":
        b, a = _class(edit.get("before"), where), _class(edit.get("after"), where)
        if b != state.labels[i]:
            raise EditError(
                f"{where}: move of chromosome {i} expects class {name_of(b)} but it is {name_of(state.labels[i])} "
                "(the cell changed: reload it)"
            )
        if state.debris[i]:
            raise EditError(f"{where}: chromosome {i} is marked 'not a chromosome'; unmark it before moving it")
        state.labels[i] = a
        state.touched[i] = True
        return
    flags = state.debris if op == "debris" else state.flipped
    b, a = _bool(edit.get("before"), where), _bool(edit.get("after"), where)
    if b != flags[i] or a == b:
        raise EditError(f"{where}: {op} of chromosome {i} expects {b} -> {a} but it is {flags[i]} (reload the cell)")
    flags[i] = a


def apply_edits(labels: list[int], edits: Any, size: list[int] | None = None) -> CellState:
    """The state after ``edits`` (a list, in order) on the pipeline's ``labels`` (masks ``size`` [H, W])."""
    if not isinstance(edits, list):
        raise EditError(f"edits must be a list, got {type(edits).__name__}")
    state = CellState.initial(labels, size)
    for k, e in enumerate(edits):
        apply_edit(state, e, f"edit {k + 1}")
    return state


def pairs_of(labels: list[int], old_pair: list[int]) -> list[int]:
    """Homolog pairs after relabelling: a pipeline pair whose two members kept one class stays; the
    other members of a class are paired in id order. int [N], -1 = no partner."""
    n = len(labels)
    pair = [-1] * n
    for i, j in enumerate(old_pair):
        if 0 <= j < n and labels[i] > 0 and labels[i] == labels[j] and old_pair[j] == i:
            pair[i] = j
    for k in range(1, NUM_CLASSES + 1):
        free = [i for i in range(n) if labels[i] == k and pair[i] < 0]
        for a, b in zip(free[0::2], free[1::2]):
            pair[a], pair[b] = b, a
    return pair


def sex_of(labels: list[int]) -> str:
    """Sex chromosomes of labels, X's then Y's ("XY", "X", "XXY", ...)."""
    return "X" * labels.count(X_ID) + "Y" * labels.count(Y_ID)


def flags_of(state: CellState, pipeline_flags: list[list[str]], pair: list[int]) -> list[list[str]]:
    """Flags after the edits: "not_chromosome", "unassigned", "unpaired" (an autosome alone, or a lone X
    without Y), "extra" (a third or later copy: no partner in a class with more than two), and the
    pipeline's own doubts (:data:`MODEL_FLAGS`) on chromosomes the reviewer did not relabel."""
    eff = state.effective_labels()
    counts = [eff.count(k) for k in range(NUM_CLASSES + 1)]
    sex = sex_of(eff)
    model = state.model_flags if state.model_flags is not None else pipeline_flags
    out: list[list[str]] = []
    for i, k in enumerate(eff):
        if not state.alive[i]:
            out.append([REMOVED])
            continue
        if state.debris[i]:
            out.append([NOT_CHROMOSOME])
            continue
        if k == 0:
            out.append(["unassigned"])
            continue
        f = [] if state.touched[i] else [x for x in model[i] if x in MODEL_FLAGS]
        if pair[i] < 0 and counts[k] > 2:
            f.append("extra")
        elif (k < X_ID and counts[k] == 1) or (k == X_ID and sex == "X"):
            f.append("unpaired")
        out.append(f)
    return out


def n_flagged(flags: list[list[str]]) -> int:
    """Chromosomes with a flag that asks for a look (anything but "unassigned" and "not_chromosome")."""
    return sum(1 for f in flags if any(x not in ("unassigned", NOT_CHROMOSOME, REMOVED) for x in f))


def summary(state: CellState, pipeline_flags: list[list[str]], old_pair: list[int]) -> dict[str, Any]:
    """Everything the page shows and the reviewed JSON records about the cell after the edits.

    Returns:
        ``labels`` (effective, debris and removed 0), ``raw_labels`` (before that), ``alive``, ``debris``, ``flipped``, ``pair`` (-1 none), ``flags``,
        ``slots`` (:func:`karyogram.render.karyogram_slots`), ``karyotype`` (ISCN, None when no
        chromosome is labelled), ``sex``, ``count``, ``copies`` {name: n}, ``sanity_score``,
        ``n_flagged`` (:func:`n_flagged`), ``n_unassigned``, ``n_debris``.
    """
    eff = state.effective_labels()
    pair = pairs_of(eff, state.pair_hint if state.pair_hint is not None else old_pair)
    flags = flags_of(state, pipeline_flags, pair)
    count = sum(1 for k in eff if k > 0)
    return {
        "labels": eff,
        "raw_labels": list(state.labels),
        "alive": list(state.alive),
        "debris": list(state.debris),
        "flipped": list(state.flipped),
        "pair": pair,
        "flags": flags,
        "slots": karyogram_slots(eff, pair),
        "karyotype": iscn_string(eff) if count else None,
        "sex": sex_of(eff) if count else None,
        "count": count,
        "copies": {name_of(k): eff.count(k) for k in range(1, NUM_CLASSES + 1)},
        "sanity_score": round(float(sanity_score(eff)), 4),
        "n_flagged": n_flagged(flags),
        "n_unassigned": sum(1 for i, k in enumerate(eff) if k == 0 and not state.debris[i] and state.alive[i]),
        "n_debris": sum(state.debris),
    }
