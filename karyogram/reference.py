"""The human G-band ideogram (GRCh38, NCBI/ISCN) as priors: relative lengths, centromere indices, bands.

Data files live in ``karyogram/resources`` (copied from ``../shared/reference`` with their SOURCES.txt).
Lengths and centromere indices are taken in ISCN drawing units (850-band resolution), which are
cytological lengths, closer to what a microscope shows than base pairs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .labels import NUM_CLASSES, id_of

RESOURCES = Path(__file__).resolve().parent / "resources"
RESOLUTIONS = (400, 550, 850)


@dataclass(frozen=True)
class ChromosomeReference:
    """Reference morphology of one chromosome.

    Attributes:
        class_id: 1..24.
        group: Denver group letter.
        type: "metacentric", "submetacentric" or "acrocentric".
        relative_length: ISCN length as a fraction of the haploid autosomal length (sum over 1..22 = 1).
        centromere_index: p / (p + q) in ISCN units.
        length_iscn: ISCN drawing units (850-band resolution).
    """

    class_id: int
    group: str
    type: str
    relative_length: float
    centromere_index: float
    length_iscn: float


@dataclass(frozen=True)
class Band:
    """One cytogenetic band; ``start``/``stop`` are fractions of the chromosome length from the p-arm end."""

    name: str
    arm: str
    start: float
    stop: float
    stain: str  # gneg, gpos, acen, gvar, stalk
    density: float  # 0..100 (G-positive staining density; gneg 0, gvar/stalk given a conventional value)


@lru_cache(maxsize=1)
def chromosome_table() -> dict[int, ChromosomeReference]:
    """Reference morphology of chromosomes 1..24 (id -> :class:`ChromosomeReference`)."""
    out: dict[int, ChromosomeReference] = {}
    with open(RESOURCES / "chromosome_reference_extended.csv", newline="") as f:
        for row in csv.DictReader(f):
            cid = id_of(row["chromosome"])
            out[cid] = ChromosomeReference(
                class_id=cid,
                group=row["group"],
                type=row["type"],
                relative_length=float(row["relative_length_pct_iscn850"]) / 100.0,
                centromere_index=float(row["centromere_index_iscn850"]),
                length_iscn=float(row["length_iscn850"]),
            )
    assert len(out) == NUM_CLASSES
    return out


def relative_lengths() -> np.ndarray:
    """float64 [24]: reference relative length of chromosome id i+1 (haploid autosomal sum = 1)."""
    t = chromosome_table()
    return np.array([t[i].relative_length for i in range(1, NUM_CLASSES + 1)])


def centromere_indices() -> np.ndarray:
    """float64 [24]: reference centromere index p/(p+q) of chromosome id i+1."""
    t = chromosome_table()
    return np.array([t[i].centromere_index for i in range(1, NUM_CLASSES + 1)])


_STAIN_DENSITY = {"gneg": 0.0, "acen": 15.0, "gvar": 80.0, "stalk": 5.0}


@lru_cache(maxsize=3)
def bands(resolution: int = 400) -> dict[int, tuple[Band, ...]]:
    """G-bands of each chromosome at ISCN ``resolution`` (400, 550 or 850), ordered from the p-arm end."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"band resolution must be one of {RESOLUTIONS}, got {resolution}")
    path = RESOURCES / f"ncbi_ideogram_9606_GCF_000001305.14_{resolution}_V1.tsv"
    rows: dict[int, list[tuple]] = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            chrom, arm, band, i0, i1, _b0, _b1, stain = parts[:8]
            dens = parts[8] if len(parts) > 8 else ""
            d = float(dens) if dens.strip() else _STAIN_DENSITY.get(stain, 0.0)
            rows.setdefault(id_of(chrom), []).append((f"{arm}{band}", arm, float(i0), float(i1), stain, d))
    out = {}
    for cid, rs in rows.items():
        rs.sort(key=lambda r: r[2])
        total = max(r[3] for r in rs)
        out[cid] = tuple(Band(n, a, s / total, e / total, st, d) for n, a, s, e, st, d in rs)
    return out
