"""Reading images of any kind into one grey float image, and reading checkpoint files safely.

The atomic file writers (:func:`atomic_write` and friends) live in :mod:`fileio`, below every package; they
are re-exported here for the loaders and scripts that write through ``datasets.io``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fileio import atomic_save_figure, atomic_torch_save, atomic_write, atomic_write_image, atomic_write_json

from .errors import ImageReadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnsafeCheckpointError",
    "atomic_save_figure",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_image",
    "atomic_write_json",
    "list_images",
    "load_torch_file",
    "read_image",
    "to_grey_float",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def to_grey_float(arr: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Convert an 8/16-bit or float image array (H×W, H×W×1, H×W×3 or H×W×4) to grey float32 in [0, 1].

    RGB(A) is reduced to luminance (ITU-R 601 weights, alpha dropped). 16-bit images are scaled by
    65535, floats are clipped to [0, 1] if they already lie there, otherwise min-max stretched.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3]
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16:
            a = a.astype(np.float32) / 65535.0
        else:
            a = a.astype(np.float32)
        a = a @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(a, 0.0, 1.0).astype(np.float32)
    if a.ndim != 2:
        raise ImageReadError(path, f"expected a 2-D grey or 3-channel image, got an array of shape {a.shape}")
    if a.size == 0:
        raise ImageReadError(path, "image has zero pixels")
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ImageReadError(path, "image contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return a
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    raise ImageReadError(path, f"unsupported pixel type {a.dtype}")


def read_image(path: str | os.PathLike, *, max_side: int | None = None) -> np.ndarray:
    """Read an image file (PNG, JPEG, TIFF, BMP; 8- or 16-bit; grey, RGB or RGBA) as grey float32 [H, W] in [0, 1].

    Args:
        path: the image file.
        max_side: if given and the image's longer side exceeds it, the image is downscaled (area
            interpolation) so that the longer side equals ``max_side``, with a warning.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, or of an unusable shape.
    """
    import cv2

    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file does not exist")
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not an image file")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    arr = None
    if p.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            arr = tifffile.imread(str(p))
        except Exception:  # fall back to OpenCV/PIL below; tifffile is optional
            arr = None
    if arr is None:
        data = np.fromfile(str(p), dtype=np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            except cv2.error:  # e.g. a header claiming more than CV_IO_MAX_IMAGE_PIXELS; PIL decides below
                arr = None
        if arr is not None and arr.ndim == 3 and arr.shape[2] >= 3:
            arr = arr[..., [2, 1, 0]] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]
    if arr is None:
        try:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                arr = np.asarray(im)
        except Exception as exc:
            raise ImageReadError(p, f"not a readable image (truncated, corrupt or wrong format): {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim > 3 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageReadError(p, f"image has shape {arr.shape}: multi-page or multi-plane images are not supported")
    img = to_grey_float(arr, p)
    h, w = img.shape
    if h < 2 or w < 2:
        raise ImageReadError(p, f"image is only {w}x{h} pixels")
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        warnings.warn(
            f"{p}: {w}x{h} image downscaled to {nw}x{nh} (longer side limited to {max_side} px)", stacklevel=2
        )
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return img


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension) directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class UnsafeCheckpointError(ValueError):
    """A checkpoint or weights file holds Python objects other than tensors and plain values: refused unread."""


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, containers and plain values only, never code.

    Every checkpoint and weights file of this project is read here. Our files hold state dicts, configs and
    args as plain dicts, and the ``torch.__version__`` string (allowed explicitly). A file whose pickle names
    any other Python object (e.g. one whose ``__reduce__`` would run a command) is refused before anything
    in it runs: labs exchange weights files, and unpickling a foreign one would run its code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file asks for Python objects that a weights file does not need.
        ValueError: the file is not a readable torch file (truncated, empty, another format).
    """
    import pickle

    import torch
    from torch.torch_version import TorchVersion

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found")
    try:
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UnsafeCheckpointError(
                f"{p}: refused to load: the file holds Python objects other than tensors and plain values "
                f"(it names {found.group(1)}). A checkpoint from this project never does; opening it could run code from whoever "
                "made it. Use a checkpoint written by the training scripts (or re-save the state dict alone)."
            ) from None
        raise ValueError(f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    except Exception as exc:
        raise ValueError(f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
