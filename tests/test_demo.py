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


@pytest.mark.skipif(not all(p.is_file() for p in WEIGHTS), reason="shipped weights not present in weights/")
def test_demo_on_bundled_example(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "inference_pipeline.py", "--out", str(out), "--device", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "karyotype:" in proc.stdout
    stem = "cil_104023"
    for suffix in (".json", "_karyogram.png", "_overlay.png"):
        assert (out / f"{stem}{suffix}").is_file(), suffix
    data = json.loads((out / f"{stem}.json").read_text())
    assert (data["width"], data["height"]) == (857, 619)
    assert 40 <= data["detections"] <= 50, f"{data['detections']} chromosomes found (the image has 46)"
    assert data["karyotype"] and data["karyotype"].split(",")[0].isdigit()
    assert cv2.imread(str(out / f"{stem}_karyogram.png")) is not None
    assert cv2.imread(str(out / f"{stem}_overlay.png")).shape[:2] == (619, 857)
