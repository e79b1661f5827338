"""Karyotype-level assignment: the identity of every chromosome decided for the whole cell at once.

A per-crop classifier repeats labels (three "1"s, no "2") and confuses look-alikes. A cell, however, has
a known shape: two of each autosome, XX or XY, and lengths that rank within the cell. This module turns
per-instance class probabilities (plus, when available, lengths and centromere indices) into the most
probable *karyotype* by a global assignment of instances to chromosome slots.

The model, in nats (all costs are negative log-likelihoods up to a constant)
---------------------------------------------------------------------------
For instance ``i`` and class ``k`` the *fit cost* is::

    C[i, k] = w_class  * -log(max(p[i, k], p_min))
            + w_length * min(cap, 0.5 * ((log(L_i / s) - log(r_k)) / sigma_log_length) ** 2)
            + w_ci     * min(cap, 0.5 * ((ci_i - c_k) / sigma_ci(k)) ** 2)

with ``r_k`` = :func:`karyogram.reference.relative_lengths` (haploid autosomal sum 1), ``c_k`` =
:func:`karyogram.reference.centromere_indices`, ``sigma_ci`` wider for acrocentric chromosomes (their short
arm is often unseen), and ``s`` the cell's scale in pixels per relative-length unit. ``s`` starts as
``sum(L) / T_h`` (``T_h`` = the expected total relative length of the hypothesis, e.g. 2 + 2 r_X for XX)
and is then re-estimated from the assigned instances only (``sum L / sum r_label``), so debris and extra
pieces do not bias it. Missing ``lengths``/``centromere_index`` (or NaN entries) switch those terms off.

For each sex hypothesis ``h`` (XY, XX, X, XXY, XXX, XYY) the slots are two per autosome plus the sex
slots of ``h``; further, ``extra_slots_per_class`` *extra* slots per autosome, and "unassigned". The
total cost of a labelling is::

    sum C[i, label_i] over instances in normal slots
  + sum (C[i, label_i] + extra_cost) over instances in extra slots (trisomies)
  + sum u_i over unassigned instances                              (debris, nuclei, fragments)
  + missing_cost * (# empty normal slots)                           (monosomies, missed chromosomes)
  + hypothesis_prior[h]

with ``u_i = unassigned_cost + unassigned_peak_weight * log(24 max_k p_ik)``: leaving out an instance the
classifier calls clearly *some* chromosome costs more than leaving out one with flat probabilities.
It is minimised exactly with :func:`scipy.optimize.linear_sum_assignment` on a rectangular matrix
``N x (slots + extra slots + N)`` (filling a normal slot earns ``-missing_cost``, which turns the empty-slot
penalty into a per-column bonus). The hypothesis of least total cost wins (an extra sex chromosome costs
its prior, set equal to ``extra_cost``). Consequences of the defaults, classifier term only:

* a third copy is reported (+21) when ``-log p + 6 < 4 + 1.5 log(24 p)``, i.e. p > 0.33 for its class
  (clear evidence), with a margin of ~2.6 nats (confidence ~0.93) at p = 0.95;
* flat-probability pieces cost 3.2 nats in any slot and 4 unassigned: they fill an otherwise empty slot
  only when their length fits it (``C < missing_cost + u_i``), and tiny debris (length term capped at 10)
  stays unassigned.

Confidence
----------
``confidence[i]`` is a min-marginal posterior of the chosen label: for the chosen label and the
``confidence_alternatives`` next-best classes of instance ``i`` (plus "unassigned"), the whole assignment
is re-solved with instance ``i`` forced to that alternative; with ``delta_a`` the increase of the total
cost, ``confidence = 1 / (1 + sum_a exp(-delta_a))``. It accounts for the rest of the cell (a crop whose
alternative slot is already taken by two confident homologs is confident even if its own probabilities
are split).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from .iscn import iscn_string
from .labels import AUTOSOMES, NUM_CLASSES, X_ID, Y_ID, denver_group
from .reference import centromere_indices, chromosome_table, relative_lengths

#: sex hypotheses: name -> (number of X slots, number of Y slots)
SEX_HYPOTHESES: dict[str, tuple[int, int]] = {
    "XY": (1, 1),
    "XX": (2, 0),
    "X": (1, 0),
    "XXY": (2, 1),
    "XXX": (3, 0),
    "XYY": (1, 2),
    "XXYY": (2, 2),
}

FLAGS = ("low_confidence", "unpaired", "extra", "unassigned", "suspected_overlap", "suspected_split")

_BIG = 1e9


@dataclass
class AssignConfig:
    """Weights and penalties of the karyotype assignment (all costs in nats).

    Attributes:
        p_min: classifier probabilities are clipped to at least this (caps -log p at 13.8 nats).
        w_class: weight of the classifier term -log p.
        w_length: weight of the relative-length term.
        sigma_log_length: std of log(observed / expected relative length); 0.2 is ~20 % length spread
            (differential condensation, bending, measurement of the medial axis).
        w_ci: weight of the centromere-index term.
        sigma_ci: std of the centromere index for meta- and submetacentric chromosomes (wide: measured CIs
            are noisy).
        sigma_ci_acrocentric: std of the centromere index for acrocentrics (13-15, 21, 22, Y), softer.
        term_cap: each length / CI term is capped at this many nats, so one bad measurement cannot veto a
            confident classifier.
        missing_cost: cost of an empty normal slot (a chromosome absent from the cell: monosomy or missed
            by segmentation).
        extra_cost: cost of an instance in an extra slot (a third copy of an autosome), on top of its fit.
        unassigned_cost: cost of leaving an instance unassigned ("not a chromosome": debris, nuclei,
            fragments, clusters) when its probabilities are flat.
        unassigned_peak_weight: the unassigned cost of instance i grows with the classifier's confidence
            that it is *some* chromosome: ``unassigned_cost + unassigned_peak_weight * log(24 max_k p_ik)``
            (+0 for flat probabilities, +4.7 nats for max p = 0.95), so clear chromosomes are not dropped
            and a confident third copy is a confident trisomy.
        extra_slots_per_class: extra slots per autosome (1 allows trisomies, 2 tetrasomies).
        sex_hypotheses: hypotheses tried, names of :data:`SEX_HYPOTHESES`.
        hypothesis_prior: prior cost of each hypothesis; normal XX/XY are free; an additional sex
            chromosome costs like an autosomal extra copy; 45,X less than an empty slot (so a cell with
            one X and nothing Y-like is named 45,X).
        scale_iterations: re-estimations of the length scale from the assigned instances.
        confidence_alternatives: number of next-best classes re-solved for each instance's confidence.
        low_confidence: instances with confidence below this are flagged "low_confidence".
        overlap_length_ratio: an instance this many times longer than expected for its class, with low
            confidence, is flagged "suspected_overlap".
        overlap_length_ratio_sure: above this ratio "suspected_overlap" regardless of confidence.
        split_tolerance: relative tolerance when matching summed piece lengths to an expected length
            ("suspected_split"; unassigned pieces summing to two empty slots: "suspected_overlap").
    """

    p_min: float = 1e-6
    w_class: float = 1.0
    w_length: float = 1.0
    sigma_log_length: float = 0.20
    w_ci: float = 1.0
    sigma_ci: float = 0.08
    sigma_ci_acrocentric: float = 0.15
    term_cap: float = 10.0
    missing_cost: float = 4.0
    extra_cost: float = 6.0
    unassigned_cost: float = 4.0
    unassigned_peak_weight: float = 1.5
    extra_slots_per_class: int = 1
    sex_hypotheses: tuple[str, ...] = ("XY", "XX", "X", "XXY", "XXX", "XYY")
    hypothesis_prior: dict[str, float] = field(
        default_factory=lambda: {"XY": 0.0, "XX": 0.0, "X": 2.0, "XXY": 6.0, "XXX": 6.0, "XYY": 6.0, "XXYY": 12.0}
    )
    scale_iterations: int = 2
    confidence_alternatives: int = 3
    low_confidence: float = 0.8
    overlap_length_ratio: float = 1.5
    overlap_length_ratio_sure: float = 2.0
    split_tolerance: float = 0.2


@dataclass
class KaryotypeResult:
    """The karyotype of one cell.

    Attributes:
        labels: int64 [N] class id per instance, 1..24, 0 = unassigned.
        pairs: list of 24 tuples; ``pairs[k - 1]`` holds the instance indices labelled ``k`` (homologs in
            normal slots first, then extra copies).
        pair_of: int64 [N] index of the homolog paired with each instance, -1 if none (unassigned, extra
            copies, single chromosomes, X and Y of a male).
        sex: sex chromosomes of the assigned labels, X's then Y's ("XY", "XX", "X", "XXY", ...; "" if none).
        hypothesis: the sex hypothesis of least cost (its slots; normally equal to ``sex``).
        iscn: ISCN numerical karyotype of the labels (:func:`karyogram.iscn.iscn_string`).
        confidence: float64 [N] in [0, 1], min-marginal posterior of each label (module docstring).
        flags: per instance, a list among :data:`FLAGS`.
        count: number of assigned instances (the ISCN count).
        hypothesis_costs: total cost (nats) of each sex hypothesis tried.
        scale: cell scale in pixels per relative-length unit (NaN when no lengths were given).
        cost_matrix: float64 [N, 24] fit costs C[i, k] at the chosen hypothesis' scale.
    """

    labels: np.ndarray
    pairs: list[tuple[int, ...]]
    pair_of: np.ndarray
    sex: str
    hypothesis: str
    iscn: str
    confidence: np.ndarray
    flags: list[list[str]]
    count: int
    hypothesis_costs: dict[str, float]
    scale: float = float("nan")
    cost_matrix: np.ndarray | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (lists and plain numbers)."""
        return {
            "iscn": self.iscn,
            "sex": self.sex,
            "hypothesis": self.hypothesis,
            "count": self.count,
            "labels": self.labels.tolist(),
            "pair_of": self.pair_of.tolist(),
            "pairs": [list(p) for p in self.pairs],
            "confidence": [round(float(c), 4) for c in self.confidence],
            "flags": self.flags,
            "hypothesis_costs": {k: round(float(v), 4) for k, v in self.hypothesis_costs.items()},
            "scale": None if not np.isfinite(self.scale) else float(self.scale),
        }


# ----------------------------------------------------------------------------------------------- inputs
def _check_inputs(
    probs: np.ndarray, lengths: np.ndarray | None, ci: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"probs must be float [N, {NUM_CLASSES}] (classes 1..24 in columns 0..23), got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or (p < 0).any():
        raise ValueError("probs must be finite and non-negative")
    s = p.sum(axis=1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / NUM_CLASSES)
    n = p.shape[0]
    out = []
    for name, v in (("lengths", lengths), ("centromere_index", ci)):
        if v is None:
            out.append(None)
            continue
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if a.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) like probs, got {a.shape}")
        if name == "lengths":
            if (a[np.isfinite(a)] < 0).any():
                raise ValueError(f"lengths must be positive (pixels), got min {np.nanmin(a)}")
            # a zero length is a degenerate measurement (a one-pixel mask): no length evidence, like NaN
            a = np.where(a == 0, np.nan, a)
        out.append(a)
    return p, out[0], out[1]


def _expected_total(nx: int, ny: int) -> float:
    r = relative_lengths()
    return 2.0 * float(r[: len(AUTOSOMES)].sum()) + nx * float(r[X_ID - 1]) + ny * float(r[Y_ID - 1])


def _fit_costs(
    p: np.ndarray, lengths: np.ndarray | None, ci: np.ndarray | None, scale: float, cfg: AssignConfig
) -> np.ndarray:
    """Fit cost C [N, 24] in nats (module docstring)."""
    c = cfg.w_class * -np.log(np.clip(p, cfg.p_min, 1.0))
    if lengths is not None and np.isfinite(scale) and scale > 0:
        z = (np.log(lengths / scale)[:, None] - np.log(relative_lengths())[None, :]) / cfg.sigma_log_length
        t = np.minimum(cfg.term_cap, 0.5 * z**2)
        c = c + cfg.w_length * np.where(np.isfinite(t), t, 0.0)
    if ci is not None:
        tab = chromosome_table()
        sig = np.array(
            [
                cfg.sigma_ci_acrocentric if tab[k].type == "acrocentric" else cfg.sigma_ci
                for k in range(1, NUM_CLASSES + 1)
            ]
        )
        z = (ci[:, None] - centromere_indices()[None, :]) / sig[None, :]
        t = np.minimum(cfg.term_cap, 0.5 * z**2)
        c = c + cfg.w_ci * np.where(np.isfinite(t), t, 0.0)
    return c


# ----------------------------------------------------------------------------------------------- solver
@dataclass
class _Problem:
    slot_class: np.ndarray  # int [S]: class of each column (0 = unassigned column)
    slot_kind: np.ndarray  # int [S]: 0 normal, 1 extra, 2 unassigned
    n_normal: int
    prior: float


def _build_problem(n: int, nx: int, ny: int, cfg: AssignConfig, prior: float) -> _Problem:
    normal = [k for k in AUTOSOMES for _ in (0, 1)] + [X_ID] * nx + [Y_ID] * ny
    extra = [k for k in AUTOSOMES for _ in range(cfg.extra_slots_per_class)]
    cls = np.array(normal + extra + [0] * n, dtype=np.int64)
    kind = np.array([0] * len(normal) + [1] * len(extra) + [2] * n, dtype=np.int64)
    return _Problem(cls, kind, len(normal), prior)


def _unassigned_costs(p_max: np.ndarray, cfg: AssignConfig) -> np.ndarray:
    """Cost [N] of leaving each instance unassigned, from its largest class probability [N]."""
    return cfg.unassigned_cost + cfg.unassigned_peak_weight * np.log(np.maximum(NUM_CLASSES * p_max, 1.0))


def _matrix(cost: np.ndarray, p_max: np.ndarray, prob: _Problem, cfg: AssignConfig) -> np.ndarray:
    n = cost.shape[0]
    a = np.empty((n, prob.slot_class.size))
    normal = prob.slot_kind == 0
    extra = prob.slot_kind == 1
    a[:, normal] = cost[:, prob.slot_class[normal] - 1] - cfg.missing_cost
    a[:, extra] = cost[:, prob.slot_class[extra] - 1] + cfg.extra_cost
    a[:, prob.slot_kind == 2] = _unassigned_costs(p_max, cfg)[:, None]
    return a


def _solve(a: np.ndarray, prob: _Problem, cfg: AssignConfig) -> tuple[np.ndarray, float]:
    """Column of each instance [N] and the total cost (including empty-slot penalties and prior)."""
    rows, cols = linear_sum_assignment(a)
    total = float(a[rows, cols].sum())
    if total >= _BIG / 2:
        return cols, float("inf")
    col_of = np.empty(a.shape[0], dtype=np.int64)
    col_of[rows] = cols
    return col_of, total + cfg.missing_cost * prob.n_normal + prob.prior


def _labels_of(col_of: np.ndarray, prob: _Problem) -> np.ndarray:
    return prob.slot_class[col_of].astype(np.int64)


# ----------------------------------------------------------------------------------------------- main
def config_for_classifier(feature_groups: str, **overrides) -> AssignConfig:
    """Assignment weights suited to a classifier that was trained on ``feature_groups``.

    A classifier that already sees the relative length ("scale" features) or the centromere index
    ("geometry"/"centromere" features) has that evidence in its probabilities; adding the length or
    centromere-index prior again counts it twice, and with measured (noisy) lengths and CIs it hurt: on the
    CIL val split (first 50 cells, shipped ``--features all`` classifier) the per-chromosome accuracy was
    88.5 % with both priors off, 87.6 % with the length prior at weight 0.5 and 80.4 % with the defaults
    (40 cells). So the priors are switched off for the evidence the classifier already has; a
    classifier without those features (``--features none``/``texture``) keeps them.
    """
    groups = set(str(feature_groups).replace("+", " ").split())
    if "all" in groups:
        groups = {"scale", "geometry", "texture"}
    kw: dict = {}
    if "scale" in groups:
        kw["w_length"] = 0.0
    if groups & {"geometry", "centromere"}:
        kw["w_ci"] = 0.0
    kw.update(overrides)
    return replace(AssignConfig(), **kw)


def assign_karyotype(
    probs: np.ndarray,
    *,
    lengths: np.ndarray | None = None,
    centromere_index: np.ndarray | None = None,
    config: AssignConfig | None = None,
) -> KaryotypeResult:
    """Assign every instance of one cell to a chromosome slot, jointly (module docstring for the model).

    Args:
        probs: float [N, 24] classifier probabilities, column ``k - 1`` for class ``k`` (rows are
            renormalised to sum 1).
        lengths: float [N] chromosome lengths in pixels (medial axis), NaN where unknown; None: no length
            term.
        centromere_index: float [N] p / (p + q) in [0, 0.5], NaN where unknown; None: no CI term.
        config: weights and penalties (:class:`AssignConfig`).

    Returns:
        :class:`KaryotypeResult`.

    >>> import numpy as np
    >>> truth = np.array([k for k in range(1, 23) for _ in (0, 1)] + [23, 24])
    >>> p = np.full((46, 24), 0.01); p[np.arange(46), truth - 1] = 0.9
    >>> assign_karyotype(p).iscn
    '46,XY'
    """
    cfg = config or AssignConfig()
    p, lengths, ci = _check_inputs(probs, lengths, centromere_index)
    n = p.shape[0]
    if n == 0:
        return KaryotypeResult(
            np.zeros(0, np.int64), [() for _ in range(NUM_CLASSES)], np.zeros(0, np.int64), "", "", "", np.zeros(0),
            [], 0, {},
        )  # fmt: skip
    use_len = lengths is not None and bool(np.isfinite(lengths).any())

    best = None
    costs: dict[str, float] = {}
    for h in cfg.sex_hypotheses:
        if h not in SEX_HYPOTHESES:
            raise ValueError(f"unknown sex hypothesis {h!r}; known: {sorted(SEX_HYPOTHESES)}")
        nx, ny = SEX_HYPOTHESES[h]
        prob = _build_problem(n, nx, ny, cfg, cfg.hypothesis_prior.get(h, 0.0))
        scale = float(np.nansum(lengths) / _expected_total(nx, ny)) if use_len else float("nan")
        for it in range(cfg.scale_iterations + 1):
            c = _fit_costs(p, lengths, ci, scale, cfg)
            a = _matrix(c, p.max(axis=1), prob, cfg)
            col_of, total = _solve(a, prob, cfg)
            if not use_len or it == cfg.scale_iterations:
                break
            lab = _labels_of(col_of, prob)
            ok = (lab > 0) & np.isfinite(lengths)
            if ok.any():
                scale = float(lengths[ok].sum() / relative_lengths()[lab[ok] - 1].sum())
        costs[h] = total
        if best is None or total < best[0] - 1e-9:
            best = (total, h, prob, scale, c, a, col_of)

    total, hyp, prob, scale, c, a, col_of = best
    labels = _labels_of(col_of, prob)
    kinds = prob.slot_kind[col_of]
    confidence = _confidence(a, prob, labels, c, total, cfg)

    # pairs and pair_of
    pairs: list[tuple[int, ...]] = []
    pair_of = np.full(n, -1, dtype=np.int64)
    for k in range(1, NUM_CLASSES + 1):
        normal = [i for i in np.flatnonzero((labels == k) & (kinds == 0))]
        normal.sort(key=lambda i: c[i, k - 1])
        extra = [i for i in np.flatnonzero((labels == k) & (kinds == 1))]
        pairs.append(tuple(int(i) for i in normal + extra))
        if len(normal) >= 2 and k != Y_ID:
            pair_of[normal[0]], pair_of[normal[1]] = normal[1], normal[0]

    nxa, nya = int((labels == X_ID).sum()), int((labels == Y_ID).sum())
    sex = "X" * nxa + "Y" * nya
    flags = _flags(labels, kinds, confidence, pair_of, sex, lengths if use_len else None, scale, prob, col_of, cfg)
    return KaryotypeResult(
        labels=labels,
        pairs=pairs,
        pair_of=pair_of,
        sex=sex,
        hypothesis=hyp,
        iscn=iscn_string(labels),
        confidence=confidence,
        flags=flags,
        count=int((labels > 0).sum()),
        hypothesis_costs=costs,
        scale=scale,
        cost_matrix=c,
    )


def _confidence(
    a: np.ndarray, prob: _Problem, labels: np.ndarray, c: np.ndarray, total: float, cfg: AssignConfig
) -> np.ndarray:
    """Min-marginal posterior of each instance's label (module docstring)."""
    n = a.shape[0]
    conf = np.ones(n)
    for i in range(n):
        k = int(labels[i])
        order = [int(j) + 1 for j in np.argsort(c[i]) if int(j) + 1 != k][: cfg.confidence_alternatives]
        alts = order + ([0] if k != 0 else [])
        s = 0.0
        for alt in alts:
            forced = a.copy()
            forced[i, prob.slot_class != alt] = _BIG
            _, t = _solve(forced, prob, cfg)
            if np.isfinite(t):
                s += float(np.exp(-max(t - total, 0.0)))
        conf[i] = 1.0 / (1.0 + s)
    return conf


def _flags(
    labels: np.ndarray,
    kinds: np.ndarray,
    conf: np.ndarray,
    pair_of: np.ndarray,
    sex: str,
    lengths: np.ndarray | None,
    scale: float,
    prob: _Problem,
    col_of: np.ndarray,
    cfg: AssignConfig,
) -> list[list[str]]:
    n = labels.size
    flags: list[list[str]] = [[] for _ in range(n)]
    counts = np.bincount(labels, minlength=NUM_CLASSES + 1)
    for i in range(n):
        k = int(labels[i])
        if k == 0:
            flags[i].append("unassigned")
            continue
        if conf[i] < cfg.low_confidence:
            flags[i].append("low_confidence")
        if kinds[i] == 1:
            flags[i].append("extra")
        elif (k < X_ID and counts[k] == 1) or (k == X_ID and sex == "X"):
            flags[i].append("unpaired")
    if lengths is None or not np.isfinite(scale):
        return flags
    r = relative_lengths()
    exp_len = scale * r  # expected pixel length of each class [24]
    tol = cfg.split_tolerance
    # empty normal slots: the classes (with multiplicity) that are missing
    filled = np.zeros(prob.slot_class.size, bool)
    filled[col_of] = True
    empty = [int(k) for k, f, kd in zip(prob.slot_class, filled, prob.slot_kind) if kd == 0 and not f]
    unassigned = [i for i in range(n) if labels[i] == 0 and np.isfinite(lengths[i])]

    def add(i: int, f: str) -> None:
        if f not in flags[i]:
            flags[i].append(f)

    for i in range(n):
        k = int(labels[i])
        if k > 0 and np.isfinite(lengths[i]):
            ratio = lengths[i] / exp_len[k - 1]
            if ratio > cfg.overlap_length_ratio_sure or (
                ratio > cfg.overlap_length_ratio and conf[i] < cfg.low_confidence
            ):
                add(i, "suspected_overlap")
    for i in unassigned:
        if lengths[i] > (1 + tol) * exp_len[0]:  # longer than any chromosome 1
            add(i, "suspected_overlap")

    # explanations of the unassigned instances by lengths, each with its relative error:
    #   split:   two unassigned pieces summing to an empty slot, or an unassigned piece completing an
    #            assigned one that is too short for its class;
    #   overlap: one unassigned instance as long as two empty slots together.
    # Accepted greedily by error, each instance and each empty slot used at most once.
    cands: list[tuple[float, str, tuple[int, ...], tuple[int, ...]]] = []
    for ai, i in enumerate(unassigned):
        for j in unassigned[ai + 1 :]:
            for e, k in enumerate(empty):
                x = exp_len[k - 1]
                cands.append((abs(lengths[i] + lengths[j] - x) / x, "suspected_split", (i, j), (e,)))
        for j in range(n):
            k = int(labels[j])
            if k > 0 and np.isfinite(lengths[j]) and lengths[j] < 0.75 * exp_len[k - 1]:
                x = exp_len[k - 1]
                cands.append((abs(lengths[i] + lengths[j] - x) / x, "suspected_split", (i, j), ()))
        for ea in range(len(empty)):
            for eb in range(ea + 1, len(empty)):
                x = exp_len[empty[ea] - 1] + exp_len[empty[eb] - 1]
                cands.append((abs(lengths[i] - x) / x, "suspected_overlap", (i,), (ea, eb)))
    used_i: set[int] = set()
    used_e: set[int] = set()
    for err, f, inst, slots in sorted(cands, key=lambda t: t[0]):
        if err > tol:
            break
        if used_i.intersection(inst) or used_e.intersection(slots):
            continue
        used_i.update(inst)
        used_e.update(slots)
        for i in inst:
            add(i, f)
    return flags


# ----------------------------------------------------------------------------------------------- baselines
def argmax_labels(probs: np.ndarray) -> np.ndarray:
    """Per-crop baseline: int64 [N] = argmax of each row of probs [N, 24], plus 1 (class ids 1..24)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must be float [N, {NUM_CLASSES}], got shape {p.shape}")
    return (np.argmax(p, axis=1) + 1).astype(np.int64)


def _group_order() -> list[str]:
    return ["A", "B", "C", "D", "E", "F", "G"]


def rule_based_labels(
    lengths: np.ndarray,
    centromere_index: np.ndarray | None = None,
    sex: str | None = None,
    *,
    sigma_log_length: float = 0.15,
    sigma_ci: float = 0.05,
) -> np.ndarray:
    """The classic morphometric karyotyper (length and centromere index only, no classifier).

    The instances are sorted by length (longest first) and cut, in that order, into consecutive blocks
    of the sizes of the Denver groups A..G under the sex (A: 6 = 1-3 twice, B: 4, C: 14 + X's, D: 6,
    E: 6, F: 4, G: 4 + Y's). Within a block, the chromosomes are matched to the group's slots by a
    minimum-cost assignment on ``0.5 z_len^2 + 0.5 z_ci^2`` (length relative to the cell total, CI vs
    the reference). Instances beyond the number of slots (the shortest) are left 0.

    Args:
        lengths: float [N] lengths in pixels.
        centromere_index: float [N] CI in [0, 0.5] (NaN where unknown) or None (length only).
        sex: "XX", "XY" (or another of :data:`SEX_HYPOTHESES`); None tries XX and XY and keeps the
            better fit.
        sigma_log_length, sigma_ci: spreads of the two terms.

    Returns:
        int64 [N] class ids (0 for instances beyond the slot count and for instances whose length is 0
        or NaN).
    """
    ln = np.asarray(lengths, dtype=np.float64).reshape(-1)
    n = ln.size
    ci = None if centromere_index is None else np.asarray(centromere_index, dtype=np.float64).reshape(-1)
    if ci is not None and ci.shape != (n,):
        raise ValueError(f"centromere_index must have shape ({n},), got {ci.shape}")
    if (ln[np.isfinite(ln)] < 0).any():
        raise ValueError("rule_based_labels needs non-negative lengths (pixels)")
    measured = np.isfinite(ln) & (ln > 0)
    if not measured.all():
        # instances without a usable length (degenerate masks) cannot be placed by length: left 0
        out = np.zeros(n, dtype=np.int64)
        if measured.any():
            out[measured] = rule_based_labels(
                ln[measured],
                None if ci is None else ci[measured],
                sex=sex,
                sigma_log_length=sigma_log_length,
                sigma_ci=sigma_ci,
            )
        return out
    hyps = [sex] if sex is not None else ["XX", "XY"]
    best: tuple[float, np.ndarray] | None = None
    r, cref = relative_lengths(), centromere_indices()
    for h in hyps:
        if h not in SEX_HYPOTHESES:
            raise ValueError(f"unknown sex {h!r}; known: {sorted(SEX_HYPOTHESES)}")
        nx, ny = SEX_HYPOTHESES[h]
        slots = [k for k in AUTOSOMES for _ in (0, 1)] + [X_ID] * nx + [Y_ID] * ny
        by_group = {g: [k for k in slots if denver_group(k) == g] for g in _group_order()}
        order = np.argsort(-ln, kind="stable")
        scale = ln.sum() / _expected_total(nx, ny)
        labels = np.zeros(n, dtype=np.int64)
        total = 0.0
        pos = 0
        for g in _group_order():
            gs = by_group[g]
            idx = order[pos : pos + len(gs)]
            pos += len(gs)
            if idx.size == 0:
                break
            cls = np.array(gs)
            cost = 0.5 * ((np.log(ln[idx] / scale)[:, None] - np.log(r[cls - 1])[None, :]) / sigma_log_length) ** 2
            if ci is not None:
                z = 0.5 * ((ci[idx][:, None] - cref[cls - 1][None, :]) / sigma_ci) ** 2
                cost = cost + np.where(np.isfinite(z), z, 0.0)
            rr, cc = linear_sum_assignment(cost)
            labels[idx[rr]] = cls[cc]
            total += float(cost[rr, cc].sum())
        if best is None or total < best[0]:
            best = (total, labels)
    return best[1]
