"""Atomic file writing, below every package (``datasets``, ``karyogram``, ``karyotyping`` all write through it).

Every output file of this project is written through :func:`atomic_write` (temp file in the same folder,
fsync, rename), so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_save_figure", "atomic_torch_save", "atomic_write", "atomic_write_image", "atomic_write_json"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception the temp file is removed and ``path`` is left as it was.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, **({"indent": 1} | kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically: a kill during the write leaves the previous file intact."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def atomic_save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically; the format follows the file extension."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, **kwargs)


def atomic_write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write a uint8 grey or RGB image (PNG/JPEG by extension) atomically."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., ::-1]  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(Path(path).suffix or ".png", np.ascontiguousarray(a))
    if not ok:
        raise OSError(f"{path}: could not encode image")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())
