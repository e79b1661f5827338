"""Karyogram and annotated-spread images, as a cytogeneticist prints them.

* :func:`render_karyogram`: the ISCN layout (rows 1-5 | 6-12, X | 13-18 | 19-22, Y), homologs side by
  side over a thin baseline with the class number under it, the centromeres of a row on one line, all
  crops at one scale, flagged chromosomes outlined in red with a code, unassigned instances in a strip
  at the bottom, the ISCN string as the title. PNG, SVG or PDF by the file suffix.
* :func:`render_overlay`: the spread with each mask tinted by its class (:data:`PALETTE`, the same
  colours as the karyogram's baselines), its contour and its name.

The karyogram's crops are made by :func:`features.crops.make_crops` (its ``shown`` crops), for the pipeline and
the review app alike. Every file is written atomically (:mod:`fileio`). This package imports no loader (``datasets``): the label
vocabulary (:mod:`karyogram.labels`) sits below the loaders, which import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fileio import atomic_save_figure, atomic_write_image

from .iscn import iscn_string
from .labels import NUM_CLASSES, X_ID, Y_ID, name_of

#: the standard karyogram rows (class ids)
LAYOUT: tuple[tuple[int, ...], ...] = (
    (1, 2, 3, 4, 5),
    (6, 7, 8, 9, 10, 11, 12, X_ID),
    (13, 14, 15, 16, 17, 18),
    (19, 20, 21, 22, Y_ID),
)

#: one RGB colour per class id 1..24 (index ``id - 1``); neighbours and look-alikes differ in hue
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 200, 200),
    (240, 50, 230), (150, 190, 20), (250, 140, 160), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (100, 160, 110), (128, 128, 0), (200, 150, 90), (0, 0, 128), (255, 200, 25), (110, 80, 200),
    (80, 90, 100), (205, 60, 0), (40, 110, 255), (180, 40, 120), (225, 60, 160), (20, 160, 230),
)  # fmt: skip
UNASSIGNED_COLOUR: tuple[int, int, int] = (150, 150, 150)

#: short codes drawn next to flagged chromosomes in the karyogram
FLAG_CODES: dict[str, str] = {
    "low_confidence": "?",
    "unpaired": "u",
    "extra": "+",
    "suspected_overlap": "ov",
    "suspected_split": "sp",
}
FLAG_WORDS: dict[str, str] = {
    "low_confidence": "low confidence",
    "unpaired": "unpaired",
    "extra": "extra copy",
    "suspected_overlap": "suspected overlap",
    "suspected_split": "suspected split",
}
_FORMATS = ("png", "svg", "pdf")
_FLAG_RED = "#d62728"


def class_colour(class_id: int) -> tuple[int, int, int]:
    """RGB (0-255) colour of a class id 1..24; grey for 0 (unassigned)."""
    return PALETTE[int(class_id) - 1] if 1 <= int(class_id) <= NUM_CLASSES else UNASSIGNED_COLOUR


def _check_lengths(n: int, **arrays: object) -> None:
    for name, a in arrays.items():
        if a is not None and len(a) != n:  # type: ignore[arg-type]
            raise ValueError(f"{name} has {len(a)} entries but there are {n} crops")  # type: ignore[arg-type]


def _slot_order(members: list[int], pair_of: np.ndarray | None) -> list[int]:
    """Homolog pairs first (each pair adjacent), then the others, stable in index order."""
    if pair_of is None:
        return sorted(members)
    out: list[int] = []
    for i in sorted(members):
        if i in out:
            continue
        j = int(pair_of[i])
        if j >= 0 and j in members and j not in out:
            out += [i, j]
    out += [i for i in sorted(members) if i not in out]
    return out


def karyogram_slots(
    labels: Sequence[int] | np.ndarray, pair_of: Sequence[int] | np.ndarray | None = None
) -> list[list[tuple[int, list[int]]]]:
    """The karyogram's layout as data (what :func:`render_karyogram` draws, for other front ends).

    Args:
        labels: int [N] class ids 1..24, 0 = unassigned (in no slot).
        pair_of: int [N] homolog of each instance (-1 if none), or None.

    Returns:
        the rows of :data:`LAYOUT`, each a list of ``(class id, instance indices in drawing order)``:
        homolog pairs side by side first, then the others, in index order.
    """
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    po = None if pair_of is None else np.asarray(pair_of, np.int64)
    return [[(k, _slot_order([int(i) for i in np.flatnonzero(lab == k)], po)) for k in row] for row in LAYOUT]


def render_karyogram(
    crops: Sequence[np.ndarray],
    centromere_rows: Sequence[float | None] | None,
    labels: Sequence[int] | np.ndarray,
    *,
    pair_of: Sequence[int] | np.ndarray | None = None,
    flags: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
    path: str | Path,
    dpi: int = 150,
    scale_px_per_unit: float | None = None,
) -> Path:
    """Draw a karyogram and write it (PNG, SVG or PDF by the suffix of ``path``).

    Args:
        crops: N upright crops float [h_i, w_i] in [0, 1], p arm up, white background, all at the cell's
            pixel scale (no per-crop resizing: relative lengths are kept).
        centromere_rows: N centromere rows (in crop pixels) or None entries / None for unknown (the
            crop's middle row is used).
        labels: int [N] class ids 1..24, 0 = unassigned (drawn in the bottom strip).
        pair_of: int [N] homolog of each instance (-1 if none): pairs are drawn next to each other.
        flags: per instance, flag names (:data:`FLAG_CODES`); flagged chromosomes get a red outline and
            a code, explained in a legend. "unassigned" needs no mark.
        title: the title; default the ISCN string of ``labels`` (:func:`karyogram.iscn.iscn_string`).
        path: output file, suffix .png, .svg or .pdf.
        dpi: output resolution (dots per inch; with the scale it sets the pixel size of the PNG).
        scale_px_per_unit: output pixels per crop pixel; default chosen so that the tallest crop is about
            180 output pixels tall (between 0.5 and 4).

    Returns:
        the written path.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise ValueError(f"{path}: karyogram format must be one of {_FORMATS} (by file suffix), got {fmt!r}")
    n = len(crops)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    _check_lengths(n, labels=lab, centromere_rows=centromere_rows, pair_of=pair_of, flags=flags)
    if lab.size and (lab.min() < 0 or lab.max() > NUM_CLASSES):
        raise ValueError(f"labels must be 0..{NUM_CLASSES}, got {sorted(set(lab.tolist()))}")
    cr = [np.clip(np.asarray(c, np.float32), 0.0, 1.0) for c in crops]
    for i, c in enumerate(cr):
        if c.ndim != 2 or c.size == 0:
            raise ValueError(f"crop {i} must be a non-empty 2-D grey array, got shape {c.shape}")
    cen = []
    for i, c in enumerate(cr):
        v = None if centromere_rows is None else centromere_rows[i]
        cen.append(float(v) if v is not None and np.isfinite(v) else 0.5 * (c.shape[0] - 1))
    po = None if pair_of is None else np.asarray(pair_of, np.int64)
    fl = [list(f) for f in flags] if flags is not None else [[] for _ in range(n)]
    marks = [[FLAG_CODES[f] for f in fl[i] if f in FLAG_CODES] for i in range(n)]

    # ---- geometry, in crop pixels (y down)
    widths = [c.shape[1] for c in cr]
    heights = [c.shape[0] for c in cr]
    typ_w = float(np.median(widths)) if n else 20.0
    typ_h = float(max(heights)) if n else 100.0
    gap_in = max(2.0, 0.35 * typ_w)  # between chromosomes of a slot
    cell_pad = max(6.0, 1.2 * typ_w)  # around a slot
    label_h = max(14.0, 1.0 * typ_w)  # room for the class number under the baseline
    mark_h = max(8.0, 0.5 * typ_w)  # room for flag codes above a chromosome
    members = {k: m for row in karyogram_slots(lab, po) for k, m in row}

    def slot_width(k: int) -> float:
        m = members[k]
        return sum(widths[i] for i in m) + gap_in * max(len(m) - 1, 0) if m else 2 * typ_w

    row_geo = []
    for row in LAYOUT:
        inst = [i for k in row for i in members[k]]
        above = max((cen[i] for i in inst), default=0.3 * typ_h)
        below = max((heights[i] - cen[i] for i in inst), default=0.3 * typ_h)
        natural = max(slot_width(k) for k in row) + cell_pad
        row_geo.append((row, above, below, natural))
    W = max(len(row) * natural for row, _, _, natural in row_geo)
    unassigned = [i for i in range(n) if lab[i] == 0]

    title_h = max(30.0, 1.6 * label_h)
    y = title_h
    placements: list[tuple[int, float, float]] = []  # (instance, x0, y0)
    baselines: list[tuple[int, float, float, float]] = []  # (class, x0, x1, y)
    for row, above, below, _ in row_geo:
        cell = W / len(row)
        cline = y + mark_h + above
        base_y = cline + below + 0.15 * typ_w
        for j, k in enumerate(row):
            sw = slot_width(k)
            x = j * cell + 0.5 * (cell - sw)
            for i in members[k]:
                placements.append((i, x, cline - cen[i]))
                x += widths[i] + gap_in
            half = 0.5 * max(sw, 2 * typ_w) + 0.15 * typ_w
            baselines.append((k, j * cell + 0.5 * cell - half, j * cell + 0.5 * cell + half, base_y))
        y = base_y + label_h + 0.5 * cell_pad
    strip_top = None
    if unassigned:
        strip_top = y + 0.3 * label_h
        y = strip_top + label_h
        x = cell_pad
        row_h = 0.0
        for i in unassigned:
            if x + widths[i] > W - cell_pad and x > cell_pad:
                x = cell_pad
                y += row_h + mark_h + gap_in
                row_h = 0.0
            placements.append((i, x, y + mark_h))
            x += widths[i] + 2 * gap_in
            row_h = max(row_h, heights[i])
        y += row_h + mark_h + gap_in
    used = sorted({f for i in range(n) for f in fl[i] if f in FLAG_CODES})
    legend_y = None
    if used:
        legend_y = y + 0.6 * label_h
        y = legend_y + 0.8 * label_h
    H = y + 0.3 * cell_pad

    # ---- drawing
    z = scale_px_per_unit if scale_px_per_unit is not None else float(np.clip(180.0 / max(typ_h, 1.0), 0.5, 4.0))
    fig = Figure(figsize=(W * z / dpi, H * z / dpi), dpi=dpi, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_axis_off()
    pt = 72.0 / dpi * z  # points per crop pixel
    fs_label = float(np.clip(0.75 * label_h * pt, 6, 40))
    fs_title = float(np.clip(0.7 * title_h * pt, 8, 60))
    fs_mark = float(np.clip(0.9 * mark_h * pt, 5, 30))
    raster = fmt == "png"
    if raster:
        # PNG: the crops are resampled to output pixels and pasted into one picture, drawn once (one image
        # element instead of one per chromosome: a third of the drawing time, the same picture)
        canvas = np.ones((max(1, round(H * z)), max(1, round(W * z))), np.float32)
        for i, x0, y0 in placements:
            h, w = cr[i].shape
            ow, oh = max(1, round(w * z)), max(1, round(h * z))
            c = cv2.resize(cr[i], (ow, oh), interpolation=cv2.INTER_AREA if z < 1 else cv2.INTER_LINEAR)
            cx, cy = round(x0 * z), round(y0 * z)
            win = canvas[cy : cy + oh, cx : cx + ow]
            np.minimum(win, c[: win.shape[0], : win.shape[1]], out=win)  # white backgrounds never hide ink
        ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, extent=(0, canvas.shape[1] / z, canvas.shape[0] / z, 0),
                  interpolation="nearest")  # fmt: skip
    for i, x0, y0 in placements:
        h, w = cr[i].shape
        if not raster:
            ax.imshow(cr[i], cmap="gray", vmin=0.0, vmax=1.0, extent=(x0, x0 + w, y0 + h, y0),
                      interpolation="antialiased")  # fmt: skip
        if marks[i]:
            ink = np.argwhere(cr[i] < 0.95)
            (r0, c0), (r1, c1) = (ink.min(0), ink.max(0)) if len(ink) else ((0, 0), (h - 1, w - 1))
            ax.add_patch(
                Rectangle((x0 + c0 - 1.5, y0 + r0 - 1.5), c1 - c0 + 3, r1 - r0 + 3, fill=False, ec=_FLAG_RED, lw=0.9)
            )
            ax.text(x0 + 0.5 * w, y0 + r0 - 2, " ".join(marks[i]), color=_FLAG_RED, fontsize=fs_mark,
                    ha="center", va="bottom")  # fmt: skip
    lw = max(0.6, 0.9 * z * 72.0 / dpi)
    for k, x0, x1, yb in baselines:
        ax.plot([x0, x1], [yb, yb], color="black", lw=lw, solid_capstyle="butt")
        col = np.array(class_colour(k)) / 255.0
        xm = 0.5 * (x0 + x1)
        ax.text(xm, yb + 0.15 * label_h, name_of(k), ha="center", va="top", fontsize=fs_label, color="black")
        ax.plot([xm - 0.25 * label_h, xm + 0.25 * label_h], [yb + 1.15 * label_h] * 2, color=col, lw=2 * lw)
    title_text = title if title is not None else iscn_string(lab)
    # a long karyotype must fit the width: bold DejaVu glyphs are ~0.62 em wide on average
    fs_title = max(4.0, min(fs_title, 0.95 * W * pt / (0.62 * max(len(title_text), 1))))
    ax.text(0.5 * W, 0.55 * title_h, title_text, ha="center", va="center",
            fontsize=fs_title, fontweight="bold", color="black")  # fmt: skip
    if strip_top is not None:
        ax.plot([cell_pad, W - cell_pad], [strip_top, strip_top], color="0.6", lw=lw, ls=(0, (4, 3)))
        ax.text(cell_pad, strip_top + 0.15 * label_h, f"unassigned ({len(unassigned)})", ha="left", va="top",
                fontsize=fs_label, color="0.35")  # fmt: skip
    if legend_y is not None:
        txt = "red outline = flagged:  " + ",   ".join(f"{FLAG_CODES[f]} {FLAG_WORDS[f]}" for f in used)
        ax.text(cell_pad, legend_y, txt, ha="left", va="center", fontsize=0.85 * fs_label, color=_FLAG_RED)
    # vector output: one image element per chromosome and real text (editable in Inkscape/Illustrator)
    with matplotlib.rc_context({"image.composite_image": False, "svg.fonttype": "none", "pdf.fonttype": 42}):
        atomic_save_figure(fig, path, dpi=dpi, facecolor="white")
    return path


# ----------------------------------------------------------------------------------------------- overlay
def render_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    flags: Sequence[Sequence[str]] | None = None,
    path: str | Path,
    alpha: float = 0.4,
) -> Path:
    """Draw the annotated spread: masks tinted by class, contours, names; written as PNG/JPEG.

    Args:
        image: float [H, W] grey in [0, 1].
        masks: uint8 [N, H, W] instance masks.
        labels: int [N] class ids 1..24, 0 = unassigned (grey, named "?").
        flags: per instance, flag names; flagged instances (other than plain "unassigned") get a red
            contour and a "*" after the name.
        path: output file (.png or .jpg).
        alpha: tint opacity.

    Returns:
        the written path; the image is RGB uint8 [H, W, 3].
    """
    path = Path(path)
    img = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if img.ndim != 2:
        raise ValueError(f"image must be grey [H, W], got shape {img.shape}")
    m = np.asarray(masks)
    lab = np.asarray(labels, np.int64).reshape(-1)
    if m.ndim != 3 or m.shape[1:] != img.shape or m.shape[0] != lab.size:
        raise ValueError(f"masks must be [N, H, W] = [{lab.size}, {img.shape[0]}, {img.shape[1]}], got {m.shape}")
    fl = [list(f) for f in flags] if flags is not None else [[] for _ in range(lab.size)]
    _check_lengths(lab.size, flags=fl)
    H, W = img.shape
    rgb = np.repeat((img * 255.0)[..., None], 3, axis=2)
    # each mask is handled inside its own bounding box (cv2.boundingRect of its pixels): the same pixels,
    # contours and label positions as whole-image passes, at a fraction of the cost
    parts = []  # (instance, x, y, its mask inside its box) for every non-empty mask
    for i in range(lab.size):
        x, y, bw, bh = cv2.boundingRect((m[i] > 0).view(np.uint8))
        if bw:
            parts.append((i, x, y, m[i, y : y + bh, x : x + bw] > 0))
    for i, x, y, mi in parts:
        win = rgb[y : y + mi.shape[0], x : x + mi.shape[1]]
        win[mi] = (1 - alpha) * win[mi] + alpha * np.array(class_colour(int(lab[i])), np.float32)
    out = np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
    thick = max(1, int(round(min(H, W) / 600)))
    font = cv2.FONT_HERSHEY_SIMPLEX
    fs = max(0.35, min(H, W) / 1400)
    texts = []
    for i, x, y, mi in parts:
        cnts, _ = cv2.findContours(mi.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x, y))
        marked = any(f != "unassigned" for f in fl[i])
        col = (214, 39, 40) if marked else class_colour(int(lab[i]))
        cv2.drawContours(out, cnts, -1, col, thick + (1 if marked else 0), cv2.LINE_AA)
        ys, xs = np.nonzero(mi)
        ys, xs = ys + y, xs + x
        # label at the mask pixel nearest the centroid (a bent chromosome's centroid can lie outside it)
        cy, cx = ys.mean(), xs.mean()
        j = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        texts.append((name_of(int(lab[i])) + ("*" if marked else ""), int(xs[j]), int(ys[j])))
    for s, x, y in texts:
        (tw, th), _ = cv2.getTextSize(s, font, fs, thick)
        org = (int(np.clip(x - tw // 2, 0, max(W - tw, 0))), int(np.clip(y + th // 2, th, H - 1)))
        cv2.putText(out, s, org, font, fs, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, s, org, font, fs, (255, 255, 255), thick, cv2.LINE_AA)
    atomic_write_image(path, out)
    return path
