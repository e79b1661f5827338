"""Reading what ``inference_pipeline.py`` wrote for one image, as the pipeline core's typed result.

A cell is a :class:`karyotyping.KaryotypePrediction` read back from its ``<stem>.json``
(:func:`karyotyping.export.from_json_dict`, the reader beside the JSON's writer), plus the JSON object
itself, which a reviewed copy keeps field for field. This module is the only one of the review app that reads the
pipeline's files; the schema (its version, ids in order, classes in range, masks of the image's size) is checked
by the JSON's owner, :func:`karyotyping.export.check_json_dict`, and every problem becomes a :class:`CellError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets.errors import DataError


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


def check_result(data: Any, p: Path) -> None:
    """:func:`karyotyping.export.check_json_dict` (the schema's owner, beside the writer), its complaint a
    :class:`CellError` naming the file."""
    from karyotyping.export import check_json_dict

    try:
        check_json_dict(data)
    except ValueError as exc:
        raise CellError(p, str(exc)) from None


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
