"""Errors that name the file and the problem, so a user can act on them."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data: an unreadable image, a malformed annotation, an unknown class, a missing file."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ImageReadError(DataError):
    """An image file that cannot be read or is not a usable microscope image."""


class AnnotationError(DataError):
    """An annotation file that is missing, malformed or inconsistent with its image."""
