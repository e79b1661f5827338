"""Reading what ``inference_pipeline.py`` wrote for one image: the one place that knows its JSON layout.

The review app reads a cell through :func:`load_cell` only, so when the pipeline core's typed result
(``KaryotypePrediction`` with its own to/from JSON) lands, this module is what switches to it.

Every problem is a :class:`CellError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import DataError

#: versions of the pipeline's per-image JSON this app understands (the JSON has no version field yet:
#: an absent ``schema_version`` means 1, the layout of ``inference_pipeline.py`` today)
PIPELINE_SCHEMA_VERSIONS = (1,)
#: keys every pipeline result must have, and every chromosome entry
_TOP_KEYS = ("image", "width", "height", "karyotype", "count", "sanity_score", "chromosomes")
_CHROM_KEYS = ("id", "label", "box", "mask", "flags", "pair")


class CellError(DataError):
    """A result file that cannot be reviewed: missing, corrupt, of another version or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(path, problem)
        self.path = Path(path)


@dataclass
class Chromosome:
    """One instance as the pipeline found it (pixels of the original image)."""

    id: int
    label: int  # 1..24, 0 unassigned
    box: list[float]  # x1, y1, x2, y2
    mask: dict[str, Any]  # COCO compressed RLE {"size": [H, W], "counts": str}
    flags: list[str]
    pair: int | None
    confidence: float | None = None
    probs: list[float] | None = None
    centromere_xy: list[float] | None = None


@dataclass
class Cell:
    """One pipeline result: the image it came from and its chromosomes.

    Attributes:
        stem: the file stem (``<stem>.json``).
        path: the JSON file.
        data: the whole JSON object as read (kept so that a reviewed copy keeps every field).
        image: the source image path as recorded by the pipeline (may be relative to where it ran).
    """

    stem: str
    path: Path
    data: dict[str, Any]
    image: str
    width: int
    height: int
    chromosomes: list[Chromosome] = field(default_factory=list)

    @property
    def labels(self) -> list[int]:
        return [c.label for c in self.chromosomes]

    @property
    def pair_of(self) -> list[int]:
        return [-1 if c.pair is None else int(c.pair) for c in self.chromosomes]


def read_json(path: str | os.PathLike, hint: str = "run the pipeline on its image again") -> Any:
    """Parse a JSON file; :class:`CellError` for a missing, empty or corrupt one (``hint``: what to do)."""
    from datasets.coco import load_json

    try:
        return load_json(path)
    except DataError as exc:
        raise CellError(path, f"{exc.problem}; {hint}") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def parse_cell(data: Any, path: str | os.PathLike) -> Cell:
    """Validate a pipeline result object (as read from ``path``) and return it as a :class:`Cell`."""
    p = Path(path)
    if not isinstance(data, dict):
        raise CellError(p, f"a pipeline result must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if version not in PIPELINE_SCHEMA_VERSIONS:
        raise CellError(
            p,
            f"schema_version {version!r} is not one this review app reads ({', '.join(map(str, PIPELINE_SCHEMA_VERSIONS))}); "
            "use the review app of the same version as the pipeline that wrote it",
        )
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise CellError(p, f"not a pipeline result: missing key(s) {', '.join(missing)}")
    w, h = data["width"], data["height"]
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        raise CellError(p, f"width/height must be positive integers, got {w!r} x {h!r}")
    chroms_in = data["chromosomes"]
    if not isinstance(chroms_in, list):
        raise CellError(p, f"'chromosomes' must be a list, got {type(chroms_in).__name__}")
    chroms: list[Chromosome] = []
    for i, c in enumerate(chroms_in):
        where = f"chromosomes[{i}]"
        if not isinstance(c, dict):
            raise CellError(p, f"{where} must be an object")
        miss = [k for k in _CHROM_KEYS if k not in c]
        if miss:
            raise CellError(p, f"{where} lacks {', '.join(miss)}")
        if c["id"] != i:
            raise CellError(p, f"{where} has id {c['id']!r}; ids must be 0..N-1 in order")
        lab = c["label"]
        if not isinstance(lab, int) or isinstance(lab, bool) or not 0 <= lab <= 24:
            raise CellError(p, f"{where}: label must be an integer 0..24, got {lab!r}")
        box = c["box"]
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            raise CellError(p, f"{where}: box must be [x1, y1, x2, y2] numbers, got {box!r}")
        m = c["mask"]
        if not (isinstance(m, dict) and isinstance(m.get("counts"), str) and m.get("size") == [h, w]):
            raise CellError(p, f"{where}: mask must be a compressed RLE of size [{h}, {w}]")
        if not (isinstance(c["flags"], list) and all(isinstance(f, str) for f in c["flags"])):
            raise CellError(p, f"{where}: flags must be a list of strings")
        pair = c["pair"]
        if pair is not None and not (isinstance(pair, int) and 0 <= pair < len(chroms_in) and pair != i):
            raise CellError(p, f"{where}: pair must be null or another chromosome's id, got {pair!r}")
        probs = c.get("probs")
        if probs is not None and not (isinstance(probs, list) and len(probs) == 24 and all(_number(v) for v in probs)):
            raise CellError(p, f"{where}: probs must be 24 numbers")
        cen = c.get("centromere_xy")
        cen = [float(v) for v in cen] if isinstance(cen, list) and len(cen) == 2 and all(map(_number, cen)) else None
        conf = c.get("confidence")
        chroms.append(
            Chromosome(
                id=i,
                label=lab,
                box=[float(v) for v in box],
                mask=m,
                flags=list(c["flags"]),
                pair=pair,
                confidence=float(conf) if _number(conf) else None,
                probs=None if probs is None else [float(v) for v in probs],
                centromere_xy=cen,
            )
        )
    return Cell(
        stem=p.stem,
        path=p,
        data=data,
        image=str(data["image"]),
        width=w,
        height=h,
        chromosomes=chroms,
    )


def load_cell(path: str | os.PathLike) -> Cell:
    """Read and validate the pipeline's ``<stem>.json``.

    Raises:
        CellError: missing, empty, corrupt, of another schema version, or not a pipeline result.
    """
    return parse_cell(read_json(path), path)


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """uint8 [H, W] of a compressed COCO RLE as the pipeline writes it."""
    from pycocotools import mask as mask_utils

    return np.ascontiguousarray(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def mask_area(rle: dict[str, Any]) -> int:
    """Pixels of a compressed COCO RLE."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
