"""ISCN numerical karyotype strings: written from final labels and parsed back.

Only the *numerical* forms are in scope: the chromosome count, the sex chromosomes, and whole-chromosome
gains and losses (``46,XY``, ``47,XY,+21``, ``45,X``, ``47,XXY``, ``45,XX,-21``, ``48,XXYY``,
``48,XY,+13,+21``). Structural rearrangements (``t(9;22)``, ``del(5q)``, ``i(17q)``), mosaics
(``45,X/46,XX``) and cell counts (``[20]``) are refused with a ``ValueError``.

Two ways to write the sex chromosomes, both ISCN:

* constitutional (``sex=None``): the sex chromosomes are written as counted, X's then Y's
  (``47,XXY``, ``45,X``);
* relative to a known constitutional sex (``sex="XY"``): the sex field is that sex and the difference
  is written as gains/losses, as for acquired changes (``45,X,-Y``, ``47,XY,+X``).

>>> iscn_string([21, 21, 21] + [k for k in range(1, 21) for _ in (0, 1)] + [22, 22, 23, 24])
'47,XY,+21'
>>> parse_iscn("45,XX,-21")["losses"]
[21]
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from .labels import AUTOSOMES, X_ID, Y_ID

_SEX_RE = re.compile(r"^[XY]+$")
_CHANGE_RE = re.compile(r"^([+-])(\d{1,2}|X|Y)$")
_OUT_OF_SCOPE = (
    "only numerical ISCN karyotypes are supported (count, sex chromosomes, whole-chromosome gains/losses "
    "such as '47,XY,+21' or '45,X'); structural rearrangements (t(9;22), del, inv, i, der, ...), mosaics "
    "('/'), marker chromosomes and cell counts ('[20]') are out of scope"
)


def _sex_sort_key(c: str) -> int:
    return 0 if c == "X" else 1


def _autosome_changes(counts: Counter) -> list[str]:
    out: list[str] = []
    for k in AUTOSOMES:
        d = counts.get(k, 0) - 2
        out.extend([f"+{k}"] * max(d, 0) + [f"-{k}"] * max(-d, 0))
    return out


def iscn_string(labels: Iterable[int] | np.ndarray, sex: str | None = None) -> str:
    """The ISCN numerical karyotype of a cell from its final chromosome labels.

    Args:
        labels: int [N] class ids (1..22, 23 = X, 24 = Y); 0 (unassigned) is ignored.
        sex: ``None`` to write the sex chromosomes as counted (``"47,XXY"``); or the constitutional sex
            (``"XX"``, ``"XY"``) to write sex-chromosome differences from it as gains/losses
            (``"45,X,-Y"``, ``"47,XY,+X"``).

    Returns:
        ``count,sex[,changes]``: the count of all assigned chromosomes, the sex chromosomes (X's then
        Y's; omitted when there are none and ``sex`` is None), then the gains ``+N`` and losses ``-N``:
        sex-chromosome changes first, then autosomes sorted by number (``"48,XY,+13,+21"``; two extra
        copies are written twice: ``"48,XX,+21,+21"``).

    Raises:
        ValueError: a label outside 0..24, or ``sex`` not made of X and Y.
    """
    arr = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() > Y_ID):
        raise ValueError(f"labels must be 0..24 (0 = unassigned), got values {sorted(set(arr.tolist()))}")
    counts = Counter(int(v) for v in arr if v > 0)
    total = sum(counts.values())
    nx, ny = counts.get(X_ID, 0), counts.get(Y_ID, 0)
    parts = [str(total)]
    if sex is None:
        s = "X" * nx + "Y" * ny
        if s:
            parts.append(s)
    else:
        if not _SEX_RE.match(sex):
            raise ValueError(f"sex must be made of X and Y (e.g. 'XX', 'XY'), got {sex!r}")
        parts.append("".join(sorted(sex, key=_sex_sort_key)))
        for name, have, want in (("X", nx, sex.count("X")), ("Y", ny, sex.count("Y"))):
            d = have - want
            parts.extend([f"+{name}"] * max(d, 0) + [f"-{name}"] * max(-d, 0))
    parts.extend(_autosome_changes(counts))
    return ",".join(parts)


def parse_iscn(s: str) -> dict[str, Any]:
    """Parse a numerical ISCN karyotype (the forms :func:`iscn_string` writes).

    Returns:
        dict with ``count`` (int), ``sex`` (str of X/Y as written, ``""`` if none), ``gains`` and
        ``losses`` (sorted lists of class ids; 23 = X, 24 = Y for written ``+X``/``-Y``), and
        ``sex_chromosomes`` (the X/Y content after the changes, e.g. ``"X"`` for ``"45,X,-Y"`` given as
        ``"XY"`` minus Y).

    Raises:
        ValueError: anything that is not a numerical karyotype (the message quotes the string), or a count
            that disagrees with the sex chromosomes and changes.

    >>> parse_iscn("47,XXY")["sex"], parse_iscn("48,XY,+13,+21")["gains"]
    ('XXY', [13, 21])
    """
    if not isinstance(s, str):
        raise ValueError(f"ISCN karyotype must be a string, got {type(s).__name__}: {s!r}")
    text = s.strip().replace(" ", "")
    fields = text.split(",")
    if not fields or not fields[0].isdigit():
        raise ValueError(f"not an ISCN numerical karyotype: {s!r} (expected e.g. '46,XY'); {_OUT_OF_SCOPE}")
    count = int(fields[0])
    rest = fields[1:]
    sex = ""
    if rest and _SEX_RE.match(rest[0]):
        sex = rest[0]
        rest = rest[1:]
        if sex != "".join(sorted(sex, key=_sex_sort_key)):
            raise ValueError(f"ISCN karyotype {s!r}: sex chromosomes must be written X's first, then Y's")
    gains: list[int] = []
    losses: list[int] = []
    for f in rest:
        m = _CHANGE_RE.match(f)
        if not m:
            raise ValueError(f"cannot parse {f!r} in ISCN karyotype {s!r}; {_OUT_OF_SCOPE}")
        sign, what = m.groups()
        cid = X_ID if what == "X" else Y_ID if what == "Y" else int(what)
        if not 1 <= cid <= Y_ID:
            raise ValueError(f"chromosome {what!r} in ISCN karyotype {s!r} is not 1-22, X or Y")
        (gains if sign == "+" else losses).append(cid)
    nx = sex.count("X") + gains.count(X_ID) - losses.count(X_ID)
    ny = sex.count("Y") + gains.count(Y_ID) - losses.count(Y_ID)
    if nx < 0 or ny < 0:
        raise ValueError(f"ISCN karyotype {s!r} loses sex chromosomes it does not have")
    auto = 2 * len(AUTOSOMES) + sum(1 for g in gains if g < X_ID) - sum(1 for g in losses if g < X_ID)
    if auto + nx + ny != count:
        raise ValueError(
            f"ISCN karyotype {s!r}: count {count} disagrees with its content "
            f"({auto} autosomes + {nx} X + {ny} Y = {auto + nx + ny})"
        )
    return {
        "count": count,
        "sex": sex,
        "gains": sorted(gains),
        "losses": sorted(losses),
        "sex_chromosomes": "X" * nx + "Y" * ny,
    }


def labels_from_iscn(s: str) -> np.ndarray:
    """A canonical label multiset int64 [count] for a numerical ISCN karyotype (for tests and synthesis).

    >>> iscn_string(labels_from_iscn("47,XXY"))
    '47,XXY'
    """
    p = parse_iscn(s)
    counts = {k: 2 for k in AUTOSOMES}
    for g in p["gains"]:
        if g < X_ID:
            counts[g] += 1
    for g in p["losses"]:
        if g < X_ID:
            counts[g] -= 1
    if any(v < 0 for v in counts.values()):
        raise ValueError(f"ISCN karyotype {s!r} loses more copies of an autosome than a cell has")
    out = [k for k in AUTOSOMES for _ in range(counts[k])]
    out += [X_ID] * p["sex_chromosomes"].count("X") + [Y_ID] * p["sex_chromosomes"].count("Y")
    return np.asarray(out, dtype=np.int64)
