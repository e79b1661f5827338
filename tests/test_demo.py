"""The README's first command: `python inference_pipeline.py` with no arguments, on the bundled example.

Uses the shipped weights in weights/ and the bundled CIL image in examples/ (both in the repository).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = [ROOT / "weights" / "segmentation.pt", ROOT / "weights" / "classifier.pt"]
STEM = "cil_104023"

pytestmark = pytest.mark.skipif(not all(p.is_file() for p in WEIGHTS), reason="shipped weights not present in weights/")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "inference_pipeline.py", "--out", str(out), "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc, out


def test_demo_runs_and_writes_valid_outputs(demo):
    proc, out = demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "karyotype:" in proc.stdout and str(out / f"{STEM}_karyogram.png") in proc.stdout
    for suffix in (".json", "_karyogram.png", "_overlay.png"):
        assert (out / f"{STEM}{suffix}").is_file(), suffix
    data = json.loads((out / f"{STEM}.json").read_text())
    assert (data["width"], data["height"]) == (857, 619)
    assert data["detections"] == len(data["chromosomes"]) > 0
    assert data["karyotype"] and data["karyotype"].split(",")[0].isdigit()
    assert 0.0 <= data["sanity_score"] <= 1.0
    assert cv2.imread(str(out / f"{STEM}_karyogram.png")) is not None
    assert cv2.imread(str(out / f"{STEM}_overlay.png")).shape[:2] == (619, 857)


def test_demo_finds_40_to_50_chromosomes(demo):
    """The example has 46 chromosomes; issue 7 asks the shipped detector to find 40-50 of them."""
    proc, out = demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / f"{STEM}.json").read_text())
    assert 40 <= data["detections"] <= 50, f"{data['detections']} instances detected (the image has 46)"
