"""Reading what ``inference_pipeline.py`` wrote for one image, as the pipeline core's typed result.

A cell is a :class:`karyotyping.KaryotypePrediction` read back from its ``<stem>.json``
(:func:`karyotyping.export.from_json_dict`, the reader beside the JSON's writer), plus the JSON object
itself, which a reviewed copy keeps field for field. This module is the only one of the review app that reads the
pipeline's files; before handing a document to the core it checks what the core does not (the schema
version, ids in order, classes in range, masks of the image's size), so that every problem is a
:class:`CellError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import DataError
from karyogram.labels import NUM_CLASSES

#: versions of the pipeline's per-image JSON this app understands (the JSON has no version field yet:
#: an absent ``schema_version`` means 1, the layout of ``inference_pipeline.py`` today)
PIPELINE_SCHEMA_VERSIONS = (1,)
#: keys every pipeline result must have, and every chromosome entry
_TOP_KEYS = ("image", "width", "height", "karyotype", "sex", "sanity_score", "chromosomes")
_CHROM_KEYS = ("id", "label", "score", "probs", "confidence", "box", "mask", "length_px", "centromere_index",
               "centromere_xy", "polarity_ok", "pair", "flags")  # fmt: skip


class CellError(DataError):
    """A result file that cannot be reviewed: missing, corrupt, of another version or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(path, problem)
        self.path = Path(path)


@dataclass
class Cell:
    """One pipeline result.

    Attributes:
        stem: the file stem (``<stem>.json``).
        path: the JSON file.
        data: the JSON object as read (a reviewed copy keeps every field of it).
        prediction: the typed result (labels, pairs, flags, probabilities, masks at the original resolution).
    """

    stem: str
    path: Path
    data: dict[str, Any]
    prediction: Any  # karyotyping.KaryotypePrediction

    @property
    def image(self) -> str:
        """The source image as recorded by the pipeline (may be relative to where it ran)."""
        return str(self.prediction.image)

    @property
    def width(self) -> int:
        return int(self.prediction.width)

    @property
    def height(self) -> int:
        return int(self.prediction.height)

    @property
    def labels(self) -> list[int]:
        return [int(v) for v in self.prediction.labels]

    @property
    def pair_of(self) -> list[int]:
        return [int(v) for v in self.prediction.pair_of]

    @property
    def flags(self) -> list[list[str]]:
        return [list(f) for f in self.prediction.flags]

    def __len__(self) -> int:
        return len(self.prediction)


def read_json(path: str | os.PathLike, hint: str = "run the pipeline on its image again") -> Any:
    """Parse a JSON file; :class:`CellError` for a missing, empty or corrupt one (``hint``: what to do)."""
    from datasets.coco import load_json

    try:
        return load_json(path)
    except DataError as exc:
        raise CellError(path, f"{exc.problem}; {hint}") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def check_result(data: Any, p: Path) -> None:
    """What :func:`karyotyping.export.from_json_dict` takes on trust, checked with the file's name."""
    if not isinstance(data, dict):
        raise CellError(p, f"a pipeline result must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if version not in PIPELINE_SCHEMA_VERSIONS:
        known = ", ".join(map(str, PIPELINE_SCHEMA_VERSIONS))
        raise CellError(
            p,
            f"schema_version {version!r} is not one this review app reads ({known}); "
            "use the review app of the same version as the pipeline that wrote it",
        )
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise CellError(p, f"not a pipeline result: missing key(s) {', '.join(missing)}")
    w, h = data["width"], data["height"]
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        raise CellError(p, f"width/height must be positive integers, got {w!r} x {h!r}")
    chroms = data["chromosomes"]
    if not isinstance(chroms, list):
        raise CellError(p, f"'chromosomes' must be a list, got {type(chroms).__name__}")
    for i, c in enumerate(chroms):
        where = f"chromosomes[{i}]"
        if not isinstance(c, dict):
            raise CellError(p, f"{where} must be an object")
        miss = [k for k in _CHROM_KEYS if k not in c]
        if miss:
            raise CellError(p, f"{where} lacks {', '.join(miss)}")
        if c["id"] != i:
            raise CellError(p, f"{where} has id {c['id']!r}; ids must be 0..N-1 in order")
        lab = c["label"]
        if not isinstance(lab, int) or isinstance(lab, bool) or not 0 <= lab <= NUM_CLASSES:
            raise CellError(p, f"{where}: label must be an integer 0..{NUM_CLASSES}, got {lab!r}")
        box = c["box"]
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            raise CellError(p, f"{where}: box must be [x1, y1, x2, y2] numbers, got {box!r}")
        m = c["mask"]
        if not (isinstance(m, dict) and isinstance(m.get("counts"), str) and m.get("size") == [h, w]):
            raise CellError(p, f"{where}: mask must be a compressed RLE of size [{h}, {w}]")
        if not (isinstance(c["flags"], list) and all(isinstance(f, str) for f in c["flags"])):
            raise CellError(p, f"{where}: flags must be a list of strings")
        pair = c["pair"]
        if pair is not None and not (isinstance(pair, int) and 0 <= pair < len(chroms) and pair != i):
            raise CellError(p, f"{where}: pair must be null or another chromosome's id, got {pair!r}")
        probs = c["probs"]
        if not (isinstance(probs, list) and len(probs) == NUM_CLASSES and all(_number(v) for v in probs)):
            raise CellError(p, f"{where}: probs must be {NUM_CLASSES} numbers")


def image_warnings(data: dict[str, Any], p: Path) -> list[str]:
    """The pipeline's warnings about the image itself (``image_checks.out_of_range``: contrast, chromosome
    width or scale outside what the models were trained on); [] when the file has no ``image_checks``
    (written before the pipeline checked images).

    Raises:
        CellError: ``image_checks`` is there but not an object, or ``out_of_range`` not a list of strings.
    """
    checks = data.get("image_checks")
    if checks is None:
        return []
    if not isinstance(checks, dict):
        raise CellError(p, f"'image_checks' must be an object, got {type(checks).__name__}")
    out = checks.get("out_of_range", [])
    if not (isinstance(out, list) and all(isinstance(m, str) for m in out)):
        raise CellError(p, f"'image_checks.out_of_range' must be a list of strings, got {out!r}")
    return list(out)


def parse_cell(data: Any, path: str | os.PathLike) -> Cell:
    """Check a pipeline result object (as read from ``path``) and read it as the core's typed result."""
    from karyotyping.export import from_json_dict

    p = Path(path)
    check_result(data, p)
    try:
        pred = from_json_dict(data)
    except (ValueError, TypeError) as exc:
        raise CellError(p, f"not a pipeline result the core can read: {exc}") from None
    return Cell(stem=p.stem, path=p, data=data, prediction=pred)


def load_cell(path: str | os.PathLike) -> Cell:
    """Read and check the pipeline's ``<stem>.json``.

    Raises:
        CellError: missing, empty, corrupt, of another schema version, or not a pipeline result.
    """
    return parse_cell(read_json(path), path)


def mask_area(rle: dict[str, Any]) -> int:
    """Pixels of a compressed COCO RLE as the pipeline writes it."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
