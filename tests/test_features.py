"""Known-answer tests of features/: centre line length, straightening, centromere, polarity, triad."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from features.centromere import locate_centromere
from features.crops import straight_crop
from features.geometry import centerline, line_length, straighten, width_profile
from features.texture import band_stats, density_profile
from features.triad import (
    FEATURE_GROUPS,
    FEATURE_NAMES,
    feature_names,
    instance_features,
    select_features,
    spread_features,
)


def rect_mask(length: float, width: float, angle: float, size: int = 200) -> np.ndarray:
    """A filled rectangle ``length`` x ``width`` px rotated by ``angle`` (radians) about the image centre."""
    m = np.zeros((size, size), np.uint8)
    c = np.array([size / 2, size / 2])
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    pts = np.array([c - d * length / 2 - n * width / 2, c + d * length / 2 - n * width / 2])
    pts = np.concatenate([pts, pts[::-1] + n * width])
    cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, shift=4)
    return m


def chromosome(
    length: float = 120,
    width: float = 16,
    cpos: float = 0.3,
    depth: float = 0.45,
    angle: float = 0.4,
    size: int = 240,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, mask and the image position of the start (s=0) end of a rod with rounded tips and a
    constriction at fraction ``cpos`` of its length from that end; dark banded chromosome on white."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = np.array([size / 2, size / 2])
    d = np.array([np.cos(angle), np.sin(angle)])
    u = (xx - c[0]) * d[0] + (yy - c[1]) * d[1]
    v = -(xx - c[0]) * d[1] + (yy - c[1]) * d[0]
    s = u / length + 0.5
    half = width / 2 * (1 - depth * np.exp(-0.5 * ((s - cpos) * length / (0.35 * width)) ** 2))
    tip = np.clip(np.minimum(s, 1 - s) * length / (width / 2), 0, 1)
    half = half * np.sqrt(np.clip(1 - (1 - tip) ** 2, 0, 1))
    m = ((s >= 0) & (s <= 1) & (np.abs(v) <= half)).astype(np.uint8)
    img = np.where(m > 0, 0.45 + 0.2 * np.sin(s * 40), 0.95).astype(np.float32)
    return img, m, c - d * length / 2


# ------------------------------------------------------------------------------------ centre line
@pytest.mark.parametrize("angle", [0.0, 0.3, np.pi / 4, 1.2, 2.0])
def test_straight_rod_length(angle):
    m = rect_mask(100, 12, angle)
    line = centerline(m)
    assert line.dtype == np.float32 and line.shape[1] == 2
    assert abs(line_length(line) - 100) <= 3
    # every centre-line point lies inside (or on the edge of) the mask
    xs, ys = np.round(line[:, 0]).astype(int), np.round(line[:, 1]).astype(int)
    assert m[np.clip(ys, 0, 199), np.clip(xs, 0, 199)].mean() > 0.95


@pytest.mark.parametrize("sweep", [0.5 * np.pi, 0.75 * np.pi])
def test_arc_length(sweep):
    yy, xx = np.mgrid[0:300, 0:300]
    r = np.hypot(xx - 150, yy - 150)
    th = np.arctan2(yy - 150, xx - 150)
    radius, w = 80, 14
    m = ((np.abs(r - radius) <= w / 2) & (th > 0) & (th < sweep)).astype(np.uint8)
    line = centerline(m)
    assert abs(line_length(line) - radius * sweep) <= 0.03 * radius * sweep
    # points follow the arc's mid radius
    rr = np.hypot(line[:, 0] - 150, line[:, 1] - 150)
    assert np.median(np.abs(rr - radius)) < 1.5


def test_crossing_keeps_straight_path():
    """Two crossed rods: the centre line goes straight through the crossing, not round the corner."""
    m = np.maximum(rect_mask(140, 12, 0.0, 240), rect_mask(100, 12, np.pi / 2, 240))
    line = centerline(m)
    assert abs(line_length(line) - 140) <= 0.03 * 140
    assert np.ptp(line[:, 1]) < 6  # horizontal


def test_degenerate_masks():
    empty = np.zeros((50, 50), np.uint8)
    assert centerline(empty).shape == (0, 2)
    one = empty.copy()
    one[20, 30] = 1
    ln = centerline(one)
    assert len(ln) >= 2 and np.isfinite(ln).all() and line_length(ln) == pytest.approx(1.0)
    yy, xx = np.mgrid[0:80, 0:80]
    ring = ((np.hypot(xx - 40, yy - 40) < 25) & (np.hypot(xx - 40, yy - 40) > 15)).astype(np.uint8)
    border = np.zeros((60, 60), np.uint8)
    border[0:8, 0:45] = 1  # touches two image borders
    blob = np.zeros((40, 40), np.uint8)
    cv2.circle(blob, (20, 20), 9, 1, -1)
    for m in (one, ring, border, blob):
        ln = centerline(m)
        assert np.isfinite(ln).all() and len(ln) >= 2
        f = instance_features(np.full(m.shape, 0.9, np.float32) - 0.5 * m, m)
        vals = [f.length_px, f.centromere_index, f.centromere_conf, f.polarity_conf, f.aspect_ratio]
        assert np.isfinite(vals).all()
        assert 0 <= f.centromere_index <= 0.5
    assert abs(line_length(centerline(border)) - 45) <= 2
    f = instance_features(np.ones((30, 30), np.float32), np.zeros((30, 30), np.uint8))
    assert f.length_px == 0 and f.centromere_index == 0.5 and f.centromere_conf == 0


# ------------------------------------------------------------------------------------ straightening
def test_straighten_shapes_and_content():
    m = rect_mask(100, 12, 0.6)
    img = np.where(m > 0, 0.3, 0.9).astype(np.float32)
    line = centerline(m)
    strip, smask = straighten(img, m, line, width=32)
    assert strip.shape == smask.shape and strip.shape[1] == 32
    assert abs(strip.shape[0] - 101) <= 3 and strip.dtype == np.float32 and smask.dtype == np.uint8
    assert np.all(strip[smask == 0] == 1.0)
    assert np.allclose(strip[5:-5, 12:20], 0.3, atol=0.02)  # inside: the chromosome's grey
    assert np.median(strip[smask > 0]) == pytest.approx(0.3, abs=0.02)
    wp = width_profile(smask)
    assert abs(np.median(wp) - 12) <= 1.5
    strip2, smask2 = straighten(img, m, line, width=20, length=64)
    assert strip2.shape == (64, 20) and smask2.shape == (64, 20)
    e, em = straighten(img, m, np.zeros((0, 2), np.float32), width=16)
    assert e.shape == (0, 16) and em.shape == (0, 16)


def test_straighten_first_row_is_line_start():
    img = np.full((100, 100), 0.9, np.float32)
    m = np.zeros((100, 100), np.uint8)
    m[20:80, 45:56] = 1
    img[20:30, 45:56] = 0.1  # dark top end
    img[30:80, 45:56] = 0.6
    line = np.array([[50, 20], [50, 79]], np.float32)
    strip, _ = straighten(img, m, line, width=11)
    assert strip[2, 5] < 0.2 and strip[-3, 5] > 0.5
    strip_r, _ = straighten(img, m, line[::-1], width=11)
    assert strip_r[-3, 5] < 0.2


# ------------------------------------------------------------------------------------ centromere
@pytest.mark.parametrize("cpos", [0.15, 0.3, 0.42, 0.7])
@pytest.mark.parametrize("angle", [0.0, 1.1, 2.5])
def test_centromere_position_and_polarity(cpos, angle):
    img, m, start = chromosome(cpos=cpos, angle=angle)
    f = instance_features(img, m)
    # the line may run either way: express the truth from the line's start
    truth = cpos if np.linalg.norm(f.centerline[0] - start) < np.linalg.norm(f.centerline[-1] - start) else 1 - cpos
    assert abs(f.length_px - 120) <= 0.03 * 120
    assert abs(f.centromere_pos - truth) <= 0.05
    assert f.centromere_index == pytest.approx(min(truth, 1 - truth), abs=0.05)
    # p arm = the shorter arm = the end nearer the constriction
    assert f.p_at_start == (truth < 0.5)
    direction = np.array([np.cos(angle), np.sin(angle)])
    p_end = start if cpos < 0.5 else start + 120 * direction
    assert np.linalg.norm(f.p_end_xy - p_end) < 10
    assert np.linalg.norm(f.centromere_xy - (start + cpos * 120 * direction)) < 6
    assert f.centromere_conf > 0.5
    assert f.p_arm_len_px + f.q_arm_len_px == pytest.approx(f.length_px)
    # the straight crop: p arm up, centromere at centromere_row: the narrowest row near it
    crop = straight_crop(f)
    assert f.straightened.shape[0] - 2 <= crop.shape[0] <= f.straightened.shape[0]  # trimmed to the mask
    assert crop.shape[1] < f.straightened.shape[1]
    row = int(round(f.centromere_row))
    assert row < crop.shape[0] / 2
    w = (crop < 1.0).sum(1)
    assert w[row] < np.median(w)


@pytest.mark.parametrize("angle", [0.0, 0.7])
def test_instance_features_do_not_depend_on_where_the_chromosome_lies(angle):
    """Measured on the mask's neighbourhood only: the same chromosome anywhere in a larger image (here
    near a corner and far inside) gives the same figures, and its points move with it."""
    img, m, _ = chromosome(angle=angle)
    ref = instance_features(img, m)
    for dy, dx, size in ((0, 0, 240), (150, 310, 700)):
        big_img = np.full((size, size + 100), 0.95, np.float32)
        big_m = np.zeros(big_img.shape, np.uint8)
        big_img[dy : dy + 240, dx : dx + 240], big_m[dy : dy + 240, dx : dx + 240] = img, m
        f = instance_features(big_img, big_m)
        assert np.allclose(f.centerline, ref.centerline + [dx, dy], atol=1e-3)
        assert np.allclose(f.centromere_xy, ref.centromere_xy + [dx, dy], atol=1e-3)
        assert f.length_px == pytest.approx(ref.length_px, abs=1e-3)
        assert f.straightened.shape == ref.straightened.shape
        assert np.allclose(f.width_profile, ref.width_profile, atol=0.05)
        assert np.allclose(f.density_profile, ref.density_profile, atol=0.01)
        assert f.centromere_pos == pytest.approx(ref.centromere_pos, abs=0.01) and f.area_px == ref.area_px


def test_locate_centromere_profiles():
    n = 64
    x = np.linspace(0, 1, n)
    w = 10 - 5 * np.exp(-0.5 * ((x - 0.25) / 0.03) ** 2)
    est = locate_centromere(w)
    assert est.pos == pytest.approx(0.25, abs=0.02) and est.p_at_start and est.conf > 0.9
    est = locate_centromere(w[::-1])
    assert est.pos == pytest.approx(0.75, abs=0.02) and not est.p_at_start
    # metacentric: low polarity confidence
    w = 10 - 5 * np.exp(-0.5 * ((x - 0.49) / 0.03) ** 2)
    assert locate_centromere(w).polarity_conf < 0.2
    # tapering tips alone are not a centromere
    flat = np.minimum(1, np.minimum(x, 1 - x) / 0.1) * 10
    est = locate_centromere(flat)
    assert est.conf == 0 and est.ci == 0.5
    assert locate_centromere(np.zeros(3)).ci == 0.5
    assert locate_centromere(np.full(64, np.nan)).conf == 0


# ------------------------------------------------------------------------------------ texture
def test_density_profile_and_bands():
    strip = np.ones((100, 20), np.float32)
    smask = np.zeros((100, 20), np.uint8)
    smask[:, 4:16] = 1
    rows = np.arange(100)
    strip[:, 4:16] = (0.5 + 0.3 * np.sign(np.sin((rows + 5) / 100 * 2 * np.pi * 5)))[:, None]
    p = density_profile(strip, smask, n=64)
    assert p.shape == (64,) and p.min() >= 0.15 and p.max() <= 0.85
    bs = band_stats(p)
    assert bs.n_bands == 5
    assert bs.range == pytest.approx(0.6, abs=0.1)
    assert band_stats(np.full(64, 0.3)).n_bands == 0
    assert density_profile(strip, np.zeros_like(smask)).tolist() == [0.0] * 64


# ------------------------------------------------------------------------------------ triad
def test_feature_vector_order_groups_and_scale():
    imgs, masks = [], []
    for i, (length, cpos) in enumerate([(120, 0.3), (60, 0.45), (90, 0.2)]):
        img, m, _ = chromosome(length=length, cpos=cpos, angle=0.3 * i, size=160)
        imgs.append(img)
        masks.append(m)
    image = np.min(np.stack(imgs), 0)
    masks = np.stack(masks + [np.zeros_like(masks[0])])  # + an empty instance
    x, feats = spread_features(image, masks)
    assert x.shape == (4, len(FEATURE_NAMES)) and x.dtype == np.float32 and np.isfinite(x).all()
    assert len(feats) == 4 and len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    col = {n: j for j, n in enumerate(FEATURE_NAMES)}
    # rank: 120 longest, 60 shortest non-empty, empty instance shortest of all
    assert x[0, col["length_rank"]] == 1.0 and x[3, col["length_rank"]] == 0.0
    assert x[1, col["length_rank"]] < x[2, col["length_rank"]]
    # the empty instance (under MIN_AREA pixels) does not set the spread's scale: N = 3
    total = sum(f.length_px for f in feats)
    assert x[0, col["rel_length"]] == pytest.approx(2 * 3 / 46 * feats[0].length_px / total, rel=1e-5)
    np.testing.assert_array_equal(spread_features(image, masks[:3])[0], x[:3])  # as if it were not there
    assert x[2, col["centromere_index"]] == pytest.approx(0.2, abs=0.05)
    # stable: the same input gives the same vector
    x2, _ = spread_features(image, masks)
    np.testing.assert_array_equal(x, x2)
    assert spread_features(image, masks[:0])[0].shape == (0, len(FEATURE_NAMES))


def test_select_features_groups():
    x = np.arange(3 * len(FEATURE_NAMES), dtype=np.float32).reshape(3, -1)
    assert select_features(x, "none").shape == (3, 0)
    assert select_features(x, "all").shape == x.shape
    for g in ("geometry", "scale", "texture", "centromere"):
        assert select_features(x, g).shape == (3, len(FEATURE_GROUPS[g]))
        assert feature_names(g) == [n for n in FEATURE_NAMES if n in FEATURE_GROUPS[g]]
    assert set(FEATURE_GROUPS["centromere"]) <= set(FEATURE_GROUPS["geometry"])
    assert sum(len(FEATURE_GROUPS[g]) for g in ("geometry", "scale", "texture")) == len(FEATURE_NAMES)
    gs = select_features(x, "geometry+scale")
    assert gs.shape[1] == len(FEATURE_GROUPS["geometry"]) + len(FEATURE_GROUPS["scale"])
    j = FEATURE_NAMES.index("rel_length")
    assert select_features(x, "scale")[:, 0].tolist() == x[:, j].tolist()
    with pytest.raises(ValueError):
        select_features(x, "colour")
    with pytest.raises(ValueError):
        select_features(x[:, :5], "all")
