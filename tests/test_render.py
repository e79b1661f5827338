"""Karyogram and overlay rendering: files written, layout rules checked on pixels, upright crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from karyogram.render import PALETTE, class_colour, render_karyogram, render_overlay

TRUTH_46XY = [k for k in range(1, 23) for _ in (0, 1)] + [23, 24]


def rod_crops(labels, rng):
    """Upright grey rods (white background) with a length following the class, centromere at 40 %."""
    crops, rows = [], []
    for k in labels:
        h = int(30 + 100 * (1 - min(k, 22) / 23))
        c = np.ones((h + 4, 16), np.float32)
        c[2:-2, 3:-3] = rng.uniform(0.2, 0.6)
        crops.append(c)
        rows.append(0.4 * h)
    return crops, rows


def test_karyogram_png_and_svg(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array(TRUTH_46XY + [0, 0])  # two unassigned pieces at the bottom
    crops, rows = rod_crops(np.where(labels > 0, labels, 21), rng)
    pair_of = np.full(labels.size, -1)
    for a in range(0, 44, 2):
        pair_of[a], pair_of[a + 1] = a + 1, a
    flags = [[] for _ in labels]
    flags[3] = ["low_confidence"]
    flags[-1] = ["unassigned", "suspected_split"]
    out = render_karyogram(crops, rows, labels, pair_of=pair_of, flags=flags, path=tmp_path / "k.png")
    img = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 300
    border = np.concatenate(
        [img[:5].reshape(-1, 3), img[-5:].reshape(-1, 3), img[:, :5].reshape(-1, 3), img[:, -5:].reshape(-1, 3)]
    )
    assert border.min() >= 250  # white margins
    assert (img < 100).any()  # something dark was drawn
    red = (img[..., 2] > 180) & (img[..., 1] < 90) & (img[..., 0] < 90)  # BGR: flag outline + legend
    assert red.sum() > 50
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file

    svg = render_karyogram(crops, rows, labels, flags=flags, title="46,XY", path=tmp_path / "k.svg")
    text = svg.read_text()
    assert "<svg" in text and "46,XY" in text
    assert text.count("<image") >= labels.size
    pdf = render_karyogram(crops, rows, labels, path=tmp_path / "k.pdf")
    assert pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="suffix"):
        render_karyogram(crops, rows, labels, path=tmp_path / "k.gif")
    with pytest.raises(ValueError, match="entries"):
        render_karyogram(crops, rows[:-1], labels, path=tmp_path / "k.png")


def test_centromeres_of_a_row_aligned(tmp_path):
    """Two crops of different heights and centromere rows: their black centromere bands land on one line."""
    c1 = np.full((100, 20), 0.7, np.float32)
    c1[30:33] = 0.0
    c2 = np.full((60, 20), 0.7, np.float32)
    c2[50:53] = 0.0
    out = render_karyogram([c1, c2], [31.0, 51.0], [1, 2], title="", path=tmp_path / "a.png", dpi=100,
                           scale_px_per_unit=1.0)  # fmt: skip
    g = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    dark = (g < 60).sum(axis=1)
    baseline = int(np.flatnonzero(dark > 150)[0])  # the row of baselines (5 slots of row 1)
    rows = np.flatnonzero(dark[:baseline] > 0)
    assert rows.size >= 2
    # both bands on the same rows: every dark row holds both crops' band (~2 x 20 px), none only one
    assert dark[rows].max() >= 36 and (dark[rows] >= 30).sum() >= 2
    assert not ((dark[rows] >= 12) & (dark[rows] <= 24)).any()
    # and the same scale: crop 1 is 100 px tall in the output (grey pixels in its column span)
    cols = np.flatnonzero(((g > 150) & (g < 200)).sum(axis=0) > 90)
    assert cols.size >= 15


def test_overlay(tmp_path):
    H, W = 120, 160
    img = np.ones((H, W), np.float32)
    masks = np.zeros((3, H, W), np.uint8)
    masks[0, 10:60, 20:32] = 1
    masks[1, 20:50, 80:90] = 1
    masks[2, 90:96, 120:126] = 1
    img[masks.any(0) > 0] = 0.3
    out = render_overlay(img, masks, [1, 23, 0], flags=[[], [], ["unassigned"]], path=tmp_path / "o.png")
    rgb = cv2.imread(str(out), cv2.IMREAD_COLOR)[..., ::-1]
    assert rgb.shape == (H, W, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    # tinted by the class palette: inside mask 0 the colour leans to PALETTE[0] (red), mask 1 to X's colour
    m0 = rgb[40:45, 22:24].reshape(-1, 3).mean(0)
    assert m0[0] > m0[1] + 20 and m0[0] > m0[2] + 20
    assert class_colour(23) == PALETTE[22] and class_colour(0) == (150, 150, 150)
    grey = rgb[92:94, 122:124].reshape(-1, 3).astype(int)
    assert np.abs(grey - grey.mean(1, keepdims=True)).max() <= 3  # unassigned is grey
    with pytest.raises(ValueError, match="masks"):
        render_overlay(img, masks[:2], [1, 2, 3], path=tmp_path / "bad.png")


def test_long_title_stays_inside_the_image(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array(TRUTH_46XY)
    crops, rows = rod_crops(labels, rng)
    title = "35,X,-3,-9,-11,-12,-12,-14,-16,-20,-21,-22 (a long karyotype string, cell_0001)"
    out = render_karyogram(crops, rows, labels, title=title, path=tmp_path / "k.png")
    img = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    top = img[: img.shape[0] // 12]
    assert (top < 100).any()  # the title was drawn
    assert top[:, :3].min() >= 250 and top[:, -3:].min() >= 250  # and not cut at the left or right edge
