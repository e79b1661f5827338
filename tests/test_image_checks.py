"""Images from any lab: polarity, the chromosome-width estimate, the processing scale and the out-of-range warnings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synthetic import generate_spread
from karyotyping.image_checks import (
    COUNT_RANGE,
    REFERENCE_WIDTH_PX,
    SCALE_TOLERANCE,
    ImageChecks,
    detect_polarity,
    estimate_chromosome_width,
    out_of_range,
    processing_factor,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cil_104023.jpg"
WEIGHTS = (ROOT / "weights" / "segmentation.pt", ROOT / "weights" / "classifier.pt")


def _rods(width: int) -> tuple[np.ndarray, float]:
    """Dark rods ``8 * width`` long on a light background, one per quadrant at four angles, and their true mean
    width in pixels (area / length: OpenCV's filled polygons include their edges, about a pixel wider)."""
    size = 24 * width
    img = np.full((size, size), 0.9, np.float32)
    for k, angle in enumerate((0, 35, 90, 120)):
        c = (size / 4 + size / 2 * (k % 2), size / 4 + size / 2 * (k // 2))
        box = cv2.boxPoints((c, (8 * width, width), angle)).astype(np.int32)
        cv2.fillConvexPoly(img, box, 0.25)
    return img, float((img < 0.5).sum() / (4 * 8 * width))


@pytest.mark.parametrize("width", [4, 9, 14, 30])
def test_width_of_drawn_rods_is_known(width):
    img, true_width = _rods(width)
    assert estimate_chromosome_width(img) == pytest.approx(true_width, rel=0.1)


@pytest.fixture(scope="module")
def spread():
    return generate_spread(np.random.default_rng(3), None, "46,XY", size=(500, 600))


@pytest.mark.parametrize("f", [0.4, 0.6, 1.7, 2.5])
def test_width_follows_the_resolution_of_a_synthetic_spread(spread, f):
    base = estimate_chromosome_width(spread.image)
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    img = np.clip(cv2.resize(spread.image, None, fx=f, fy=f, interpolation=interp), 0, 1)
    assert estimate_chromosome_width(img) == pytest.approx(base * f, rel=0.1)


def test_polarity_of_bright_field_and_fluorescence(spread):
    assert detect_polarity(spread.image) == "dark-on-light"
    assert detect_polarity(1.0 - spread.image) == "light-on-dark"
    assert detect_polarity(np.full((20, 20), 0.5, np.float32)) == "dark-on-light"  # blank: nothing to invert


def test_blank_image_has_no_width_and_is_flagged():
    assert estimate_chromosome_width(np.full((50, 50), 0.7, np.float32)) is None
    msgs = out_of_range(ImageChecks(chromosome_width_px=None, contrast=0.0))
    assert any("could not be measured" in m for m in msgs) and any("faint" in m for m in msgs)
    with pytest.raises(ValueError, match="8x8"):
        estimate_chromosome_width(np.zeros((4, 4), np.float32))


def test_processing_factor_keeps_cil_sizes_and_corrects_others():
    assert processing_factor(REFERENCE_WIDTH_PX) == 1.0
    assert processing_factor(REFERENCE_WIDTH_PX * 1.2) == 1.0  # within CIL's own spread: left alone
    assert processing_factor(REFERENCE_WIDTH_PX / 2) == pytest.approx(2.0)
    assert processing_factor(REFERENCE_WIDTH_PX * 3) == pytest.approx(1 / 3)
    assert processing_factor(None) == 1.0
    assert processing_factor(REFERENCE_WIDTH_PX * 1.5, tolerance=2.0) == 1.0
    assert SCALE_TOLERANCE > 1


def test_out_of_range_messages():
    ok = ImageChecks(chromosome_width_px=REFERENCE_WIDTH_PX, processing_scale=1.0, contrast=0.6)
    assert out_of_range(ok, count=46, sanity=1.0) == []
    assert out_of_range(ok, count=COUNT_RANGE[0] - 1, sanity=1.0)[0].startswith(f"{COUNT_RANGE[0] - 1} chromosomes")
    assert "implausible" in out_of_range(ok, count=46, sanity=0.0)[0]
    far = ImageChecks(chromosome_width_px=2.0, processing_scale=7.8, contrast=0.6)
    assert "7.80x" in out_of_range(far)[0]
    d = far.to_dict()
    assert ImageChecks.from_dict(json.loads(json.dumps(d))) == ImageChecks(**d)


# ------------------------------------------------------------------------ the pipeline with the shipped models
needs_weights = pytest.mark.skipif(not all(p.is_file() for p in WEIGHTS), reason="shipped weights/ not present")


@pytest.fixture(scope="module")
def pipe():
    from karyotyping.core import KaryotypePipeline

    return KaryotypePipeline(*WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def example():
    return cv2.imread(str(EXAMPLE), cv2.IMREAD_GRAYSCALE)


@needs_weights
@pytest.mark.parametrize("variant", ["inverted", "0.4x", "2.5x"])
def test_same_karyotype_at_other_sizes_and_polarity(pipe, example, variant):
    """The bundled CIL cell, inverted, gives the original's count and karyotype; at 0.4x or 2.5x the resolution
    (without the checks: 11 chromosomes at 0.4x, see below) about the original's count and the same sex."""
    base = pipe.run(example)
    if variant == "inverted":
        img = 255 - example
    else:
        f = float(variant[:-1])
        img = cv2.resize(example, None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    pred = pipe.run(img, name=variant)
    if variant == "inverted":  # the pipeline inverts it back: the very same result
        assert (pred.count, pred.karyotype) == (base.count, base.karyotype)
    else:  # resampled twice (by the test, then back by the pipeline): the same cell within the models' precision
        assert abs(pred.count - base.count) <= 2 and pred.sex == base.sex
    assert pred.image_checks.out_of_range == []
    assert pred.masks.shape[1:] == img.shape  # every result in the given image's own pixels
    if variant == "inverted":
        assert pred.image_checks.inverted and any("inverted" in n for n in pred.notes)
    else:
        assert pred.image_checks.processing_scale == pytest.approx(1 / f, rel=0.15)
        assert pred.boxes[:, 2].max() <= img.shape[1] + 1


@needs_weights
def test_without_the_checks_a_small_image_is_lost_and_flagged(example, tmp_path, capsys):
    """The failure the checks prevent, and what a user sees when the models are out of their range."""
    import inference_pipeline

    small = cv2.resize(example, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)
    p = tmp_path / "small.png"
    cv2.imwrite(str(p), small)
    rc = inference_pipeline.cli(["--image", str(p), "--out", str(tmp_path / "o"), "--no-auto-scale", "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "[warning]" in err and "far from 46" in err
    js = json.loads((tmp_path / "o" / "small.json").read_text())
    assert js["image_checks"]["processing_scale"] == 1.0 and js["image_checks"]["out_of_range"]
    # a user who knows the calibration states it: the image is scaled from that width, not measured
    rc = inference_pipeline.cli(["--image", str(p), "--out", str(tmp_path / "o2"), "--chromosome-width", "5.6"])
    js = json.loads((tmp_path / "o2" / "small.json").read_text())
    assert rc == 0 and js["image_checks"]["width_source"] == "given"
    assert js["image_checks"]["processing_scale"] == pytest.approx(REFERENCE_WIDTH_PX / 5.6, rel=1e-3)
    assert js["count"] >= COUNT_RANGE[0]


@needs_weights
def test_bad_check_flags_fail_clearly(tmp_path, capsys):
    import inference_pipeline

    assert inference_pipeline.cli(["--chromosome-width", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--chromosome-width must be in [1, 500]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses an unknown polarity itself
        inference_pipeline.get_args_parser().parse_args(["--polarity", "sideways"])
