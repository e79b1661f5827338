"""Pictures of one cell for the review page and the re-rendered karyogram: the source image, the
chromosome crops (the pipeline's own straightened, p-arm-up crops), mask outlines and thumbnails."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .result import Cell, CellError

#: outline simplification for the browser (pixels of the original image)
CONTOUR_EPSILON_PX = 0.8


def find_image(cell: Cell, results_dir: Path, image_dirs: tuple[Path, ...] = ()) -> Path:
    """The source image of a cell (:func:`locate_image` of its recorded path)."""
    return locate_image(cell.image, cell.path, results_dir, image_dirs)


def locate_image(recorded: str, json_path: Path, results_dir: Path, image_dirs: tuple[Path, ...] = ()) -> Path:
    """The source image the pipeline recorded in ``json_path``: the path itself (absolute, or relative to the
    current folder or to the results folder), else a file of that name in one of ``image_dirs`` (the folders
    the user named with ``--images``). No other folder is searched: a file of the same name elsewhere (the
    results folder, ``reviewed_images/``) may be another slide's image.

    Raises:
        CellError: no such file (naming the recorded path and what to pass), or the name is found in several
            ``image_dirs`` (which one is meant is unknown).
    """
    rec = Path(recorded)
    direct = [rec] if rec.is_absolute() else [Path.cwd() / rec, results_dir / rec]
    for c in direct:
        if c.is_file():
            return c
    found = [d / rec.name for d in image_dirs if (d / rec.name).is_file()]
    if len(found) > 1:
        raise CellError(
            json_path,
            f"its source image {recorded!r} is missing, and a file named {rec.name} is in several --images folders "
            f"({', '.join(str(f.parent) for f in found)}): pass only the folder that holds this cell's image",
        )
    if found:
        return found[0]
    where = f"; not in the --images folder(s) {', '.join(map(str, image_dirs))} either" if image_dirs else ""
    raise CellError(
        json_path,
        f"its source image {recorded!r} is missing{where}; start review.py with --images FOLDER holding {rec.name} "
        "(files of the same name elsewhere are not used: they may be another slide's)",
    )


def read_grey(path: str | os.PathLike, cell: Cell) -> np.ndarray:
    """The source image as float32 [H, W] in [0, 1]; :class:`CellError` when its size is not the JSON's."""
    from datasets.errors import DataError
    from datasets.io import read_image

    try:
        img = read_image(path)
    except DataError as exc:
        raise CellError(cell.path, f"its source image cannot be read: {exc}") from None
    if img.shape != (cell.height, cell.width):
        raise CellError(
            cell.path,
            f"its source image {path} is {img.shape[1]}x{img.shape[0]} but the JSON says {cell.width}x{cell.height}",
        )
    return img


@dataclass
class Crop:
    """One chromosome upright (p arm up), white outside the mask, and its centromere row."""

    image: np.ndarray  # float32 [h, w] in [0, 1]
    centromere_row: float
    p_dir: tuple[float, float] | None  # unit (dx, dy) from the centromere towards the p-arm end


def chromosome_crops(image: np.ndarray, masks: np.ndarray) -> list[Crop]:
    """The crops the pipeline lays out in its karyogram (:attr:`features.crops.Crops.shown`: the straightened
    chromosome, or the mask turned upright for an instance too small to straighten)."""
    from features.crops import make_crops

    if len(masks) == 0:
        return []
    made = make_crops(image, masks)
    out = []
    for f, crop, row in zip(made.infos, made.shown, made.centromere_rows):
        p = np.asarray(f.p_end_xy, np.float64) - np.asarray(f.centromere_xy, np.float64)
        norm = float(np.hypot(*p))
        p_dir = (float(p[0] / norm), float(p[1] / norm)) if norm > 1e-6 and np.isfinite(norm) else None
        out.append(Crop(crop, row, p_dir))
    return out


def turned(crop: Crop) -> Crop:
    """The crop turned by 180 degrees (polarity reversed by the reviewer)."""
    h = crop.image.shape[0]
    p = None if crop.p_dir is None else (-crop.p_dir[0], -crop.p_dir[1])
    return Crop(np.ascontiguousarray(np.rot90(crop.image, 2)), float(h - 1 - crop.centromere_row), p)


def outlines(masks: np.ndarray) -> list[list[list[list[float]]]]:
    """Per instance, its outer contours as polygons ``[[x, y], ...]`` (pixel corners, for SVG)."""
    out = []
    for m in masks:
        cnts, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = []
        for c in cnts:
            c = cv2.approxPolyDP(c, CONTOUR_EPSILON_PX, True)
            if len(c) >= 3:
                polys.append([[float(x) + 0.5, float(y) + 0.5] for x, y in c[:, 0, :]])
        out.append(polys)
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """PNG of a float [h, w] grey image in [0, 1] (or a uint8 grey/RGB image)."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 3:
        a = a[..., ::-1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def thumbnail_png(path: str | os.PathLike, side: int = 160) -> bytes:
    """A PNG thumbnail (longer side ``side`` pixels) of an image file written by the pipeline."""
    data = np.fromfile(str(path), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    h, w = img.shape[:2]
    s = side / max(h, w)
    if s < 1:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes()
