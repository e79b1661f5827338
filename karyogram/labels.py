"""Chromosome class ids, names, CIL names and Denver groups: the one place that owns them.

Class ids follow torchvision's detection convention: 0 is background / unknown (class-agnostic),
1..22 are the autosomes, 23 is X and 24 is Y.

>>> name_of(23), id_of("X"), id_of("A1"), id_of("chr21"), denver_group(21)
('X', 23, 1, 21, 'G')
"""

from __future__ import annotations

NUM_CLASSES = 24
UNKNOWN = 0
X_ID = 23
Y_ID = 24
#: the autosomes' ids, 1..22
AUTOSOMES: tuple[int, ...] = tuple(range(1, X_ID))

#: names indexed by ``id - 1``: "1".."22", "X", "Y"
CLASS_NAMES: tuple[str, ...] = tuple(str(i) for i in AUTOSOMES) + ("X", "Y")

#: Denver group of each chromosome id (ISCN): A 1-3, B 4-5, C 6-12 and X, D 13-15, E 16-18,
#: F 19-20, G 21-22 and Y.
_GROUP_RANGES = {"A": (1, 3), "B": (4, 5), "C": (6, 12), "D": (13, 15), "E": (16, 18), "F": (19, 20), "G": (21, 22)}
DENVER_GROUPS: dict[int, str] = {i: g for g, (a, b) in _GROUP_RANGES.items() for i in range(a, b + 1)}
DENVER_GROUPS[X_ID] = "C"
DENVER_GROUPS[Y_ID] = "G"

#: the CIL:54816 annotation names ("A1", "B4", "C7", "D13", "E16", "F19", "G21", "X", "Y")
CIL_NAMES: tuple[str, ...] = tuple(f"{DENVER_GROUPS[i]}{i}" for i in AUTOSOMES) + ("X", "Y")


class UnknownClassError(ValueError):
    """A class name or id that is not a human chromosome 1-22, X or Y."""


def _build_lookup() -> dict[str, int]:
    table: dict[str, int] = {}
    for cid in range(1, NUM_CLASSES + 1):
        name = CLASS_NAMES[cid - 1]
        for alias in (name, CIL_NAMES[cid - 1], f"chr{name}", f"chromosome{name}", f"chromosome_{name}", f"chr_{name}"):
            table[alias.lower()] = cid
    table["23"] = X_ID
    table["24"] = Y_ID
    return table


_LOOKUP = _build_lookup()


def id_of(name: str | int) -> int:
    """Class id 1..24 of a chromosome name.

    Accepts "1".."22", "X", "Y", "23"/"24" (X/Y as numbers, BioImLab and M-FISH style), CIL names
    ("A1", "G21"), "chr7", "chromosome 7", case-insensitive, surrounding spaces ignored; an int in
    1..24 is returned as is.

    Raises:
        UnknownClassError: for anything else (e.g. "Z", "-1", 119).
    """
    if isinstance(name, bool):
        raise UnknownClassError(f"unknown chromosome class {name!r}")
    if isinstance(name, int):
        if 1 <= name <= NUM_CLASSES:
            return name
        raise UnknownClassError(f"chromosome class id {name} is outside 1..{NUM_CLASSES}")
    key = str(name).strip().lower().replace(" ", "")
    if key in _LOOKUP:
        return _LOOKUP[key]
    raise UnknownClassError(
        f"unknown chromosome class name {name!r}: expected 1-22, X, Y (or 23/24) or a CIL name such as A1, G21"
    )


def name_of(class_id: int) -> str:
    """Name ("1".."22", "X", "Y") of a class id 1..24; "?" for 0 (unknown)."""
    if class_id == UNKNOWN:
        return "?"
    if not 1 <= int(class_id) <= NUM_CLASSES:
        raise UnknownClassError(f"chromosome class id {class_id} is outside 1..{NUM_CLASSES}")
    return CLASS_NAMES[int(class_id) - 1]


def denver_group(class_id: int) -> str:
    """Denver group letter A-G of a class id 1..24."""
    if int(class_id) not in DENVER_GROUPS:
        raise UnknownClassError(f"chromosome class id {class_id} is outside 1..{NUM_CLASSES}")
    return DENVER_GROUPS[int(class_id)]
